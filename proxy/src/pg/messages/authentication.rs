//! Authentication* (`R`): every authentication request and outcome a server
//! sends, told apart by a 32-bit code.

use bytes::{BufMut, Bytes, BytesMut};

use super::Message;
use crate::pg::Result;
use crate::pg::tag::backend;
use crate::pg::wire::{Reader, put_cstr};

/// The mechanism the proxy uses upstream when the server offers it.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// An authentication message. The proxy reads these from the upstream while
/// it logs in with the credential it holds, and sends CleartextPassword and
/// Ok to its own clients, which present a token as their password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    /// Authentication succeeded (code 0).
    Ok,
    /// Kerberos V5, long gone from PostgreSQL (code 2).
    KerberosV5,
    /// Send the password in clear text (code 3).
    CleartextPassword,
    /// Send `md5(md5(password || user) || salt)` (code 5).
    Md5Password {
        /// The salt.
        salt: [u8; 4],
    },
    /// Start GSSAPI (code 7).
    Gss,
    /// More GSSAPI or SSPI data (code 8).
    GssContinue {
        /// The token.
        data: Bytes,
    },
    /// Start SSPI (code 9).
    Sspi,
    /// Choose one of these SASL mechanisms (code 10).
    Sasl {
        /// Mechanism names, in the server's order of preference.
        mechanisms: Vec<String>,
    },
    /// A SASL challenge (code 11); for SCRAM the server-first-message.
    SaslContinue {
        /// The mechanism's data.
        data: Bytes,
    },
    /// The SASL outcome (code 12); for SCRAM the server-final-message,
    /// which proves the server knew the password too.
    SaslFinal {
        /// The mechanism's data.
        data: Bytes,
    },
}

impl Authentication {
    fn code(&self) -> i32 {
        match self {
            Self::Ok => 0,
            Self::KerberosV5 => 2,
            Self::CleartextPassword => 3,
            Self::Md5Password { .. } => 5,
            Self::Gss => 7,
            Self::GssContinue { .. } => 8,
            Self::Sspi => 9,
            Self::Sasl { .. } => 10,
            Self::SaslContinue { .. } => 11,
            Self::SaslFinal { .. } => 12,
        }
    }
}

impl Message for Authentication {
    const TAG: u8 = backend::AUTHENTICATION;
    const NAME: &'static str = "Authentication";

    fn decode_payload(payload: Bytes) -> Result<Self> {
        let mut r = Reader::new(payload, Self::NAME);
        let message = match r.i32()? {
            0 => Self::Ok,
            2 => Self::KerberosV5,
            3 => Self::CleartextPassword,
            5 => Self::Md5Password {
                salt: r.u32()?.to_be_bytes(),
            },
            7 => Self::Gss,
            8 => Self::GssContinue { data: r.rest() },
            9 => Self::Sspi,
            10 => {
                let mut mechanisms = Vec::new();
                loop {
                    let mechanism = r.cstring()?;
                    if mechanism.is_empty() {
                        break;
                    }
                    mechanisms.push(mechanism);
                }
                Self::Sasl { mechanisms }
            }
            11 => Self::SaslContinue { data: r.rest() },
            12 => Self::SaslFinal { data: r.rest() },
            _ => return Err(r.invalid("authentication request code")),
        };
        r.finish()?;
        Ok(message)
    }

    fn encode_payload(&self, dst: &mut BytesMut) -> Result<()> {
        dst.put_i32(self.code());
        match self {
            Self::Ok | Self::KerberosV5 | Self::CleartextPassword | Self::Gss | Self::Sspi => {}
            Self::Md5Password { salt } => dst.put_slice(salt),
            Self::GssContinue { data } | Self::SaslContinue { data } | Self::SaslFinal { data } => {
                dst.put_slice(data)
            }
            Self::Sasl { mechanisms } => {
                for mechanism in mechanisms {
                    if mechanism.is_empty() {
                        // An empty name is the list's terminator on the wire.
                        return Err(crate::pg::ProtocolError::CannotEncode {
                            message: Self::NAME,
                            reason: "an empty mechanism name",
                        });
                    }
                    put_cstr(dst, mechanism.as_bytes(), Self::NAME)?;
                }
                dst.put_u8(0);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::messages::test_support::*;

    #[test]
    fn decodes_what_postgres_sends() {
        assert_eq!(
            decode::<Authentication>(b"R\x00\x00\x00\x08\x00\x00\x00\x00").unwrap(),
            Authentication::Ok
        );
        assert_eq!(
            decode::<Authentication>(b"R\x00\x00\x00\x08\x00\x00\x00\x03").unwrap(),
            Authentication::CleartextPassword
        );
        assert_eq!(
            decode::<Authentication>(b"R\x00\x00\x00\x0c\x00\x00\x00\x05\x9a\x7d\x01\xfe").unwrap(),
            Authentication::Md5Password {
                salt: [0x9a, 0x7d, 0x01, 0xfe]
            }
        );
        let sasl = b"R\x00\x00\x00\x2a\x00\x00\x00\x0aSCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00";
        assert_eq!(
            decode::<Authentication>(sasl).unwrap(),
            Authentication::Sasl {
                mechanisms: vec!["SCRAM-SHA-256-PLUS".into(), SCRAM_SHA_256.into()]
            }
        );
        let cont = b"R\x00\x00\x00\x15\x00\x00\x00\x0br=abc,s=QSXCR";
        assert_eq!(
            decode::<Authentication>(cont).unwrap(),
            Authentication::SaslContinue {
                data: Bytes::from_static(b"r=abc,s=QSXCR")
            }
        );
    }

    #[test]
    fn every_variant_round_trips() {
        for message in [
            Authentication::Ok,
            Authentication::KerberosV5,
            Authentication::CleartextPassword,
            Authentication::Md5Password { salt: *b"salt" },
            Authentication::Gss,
            Authentication::GssContinue {
                data: Bytes::from_static(b"token"),
            },
            Authentication::Sspi,
            Authentication::Sasl {
                mechanisms: vec![SCRAM_SHA_256.into()],
            },
            Authentication::Sasl { mechanisms: vec![] },
            Authentication::SaslContinue {
                data: Bytes::from_static(b"r=1,s=2,i=4096"),
            },
            Authentication::SaslFinal {
                data: Bytes::from_static(b"v=abc"),
            },
        ] {
            round_trip(&message);
        }
        assert_eq!(
            round_trip(&Authentication::Ok),
            b"R\x00\x00\x00\x08\x00\x00\x00\x00"
        );
        assert!(
            Authentication::Sasl {
                mechanisms: vec![String::new()]
            }
            .to_frame()
            .is_err()
        );
    }

    #[test]
    fn refuses_bad_input() {
        rejects_truncation_and_trailing::<Authentication>(b"\x00\x00\x00\x05salt");
        rejects_truncation_and_trailing::<Authentication>(b"\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00");
        rejects_truncation_and_trailing::<Authentication>(b"\x00\x00\x00\x00");
        assert!(Authentication::decode_payload(Bytes::from_static(b"\x00\x00\x00\x06")).is_err());
        assert!(Authentication::decode_payload(Bytes::from_static(b"\xff\xff\xff\xff")).is_err());
    }
}
