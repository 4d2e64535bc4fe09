//! SASLInitialResponse (`p`): the chosen SASL mechanism and its first message.

use std::fmt;

use bytes::{Bytes, BytesMut};

use super::Message;
use crate::pg::Result;
use crate::pg::tag::frontend;
use crate::pg::wire::{Reader, put_cstr, put_value};

/// A SASLInitialResponse, which the proxy sends upstream to start
/// SCRAM-SHA-256 with the credential it holds.
///
/// `Debug` shows the data's length only.
#[derive(Clone, PartialEq, Eq)]
pub struct SaslInitialResponse {
    /// The mechanism, e.g. `SCRAM-SHA-256`.
    pub mechanism: String,
    /// The client-first-message; `None` when the mechanism has none.
    pub data: Option<Bytes>,
}

impl fmt::Debug for SaslInitialResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslInitialResponse")
            .field("mechanism", &self.mechanism)
            .field(
                "data",
                &self.data.as_ref().map(|d| format!("<{} bytes>", d.len())),
            )
            .finish()
    }
}

impl Message for SaslInitialResponse {
    const TAG: u8 = frontend::PASSWORD;
    const NAME: &'static str = "SASLInitialResponse";

    fn decode_payload(payload: Bytes) -> Result<Self> {
        let mut r = Reader::new(payload, Self::NAME);
        let mechanism = r.cstring()?;
        let data = r.value("data length")?;
        r.finish()?;
        Ok(Self { mechanism, data })
    }

    fn encode_payload(&self, dst: &mut BytesMut) -> Result<()> {
        put_cstr(dst, self.mechanism.as_bytes(), Self::NAME)?;
        put_value(dst, self.data.as_deref(), Self::NAME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::messages::test_support::*;

    /// libpq's SCRAM client-first-message.
    const WIRE: &[u8] = b"p\x00\x00\x00\x32SCRAM-SHA-256\x00\x00\x00\x00\x1cn,,n=,r=rOprNGfwEbeRWgbNEkqO";

    #[test]
    fn decodes_and_round_trips() {
        let m: SaslInitialResponse = decode(WIRE).unwrap();
        assert_eq!(m.mechanism, "SCRAM-SHA-256");
        assert_eq!(m.data.as_deref(), Some(&b"n,,n=,r=rOprNGfwEbeRWgbNEkqO"[..]));
        assert_eq!(round_trip(&m), WIRE);
        round_trip(&SaslInitialResponse {
            mechanism: "X".into(),
            data: None,
        });
        rejects_truncation_and_trailing::<SaslInitialResponse>(&WIRE[5..]);
        assert!(!format!("{m:?}").contains("rOpr"));
    }
}
