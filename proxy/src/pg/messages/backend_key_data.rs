//! BackendKeyData (`K`): what a CancelRequest for this session must present.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use super::Message;
use crate::pg::startup::CANCEL_KEY_LEN;
use crate::pg::tag::backend;
use crate::pg::wire::Reader;
use crate::pg::{ProtocolError, Result};

/// A BackendKeyData message. The proxy keeps the upstream's and hands the
/// client one of its own, so a cancel goes through the proxy and an
/// upstream key never leaves it.
///
/// `Debug` shows the key's length only.
#[derive(Clone, PartialEq, Eq)]
pub struct BackendKeyData {
    /// The backend's process id.
    pub process_id: i32,
    /// The secret key: 4 bytes in protocol 3.0, up to 256 in 3.2.
    pub secret_key: Bytes,
}

impl fmt::Debug for BackendKeyData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendKeyData")
            .field("process_id", &self.process_id)
            .field("secret_key", &format_args!("<{} bytes>", self.secret_key.len()))
            .finish()
    }
}

impl Message for BackendKeyData {
    const TAG: u8 = backend::BACKEND_KEY_DATA;
    const NAME: &'static str = "BackendKeyData";

    fn decode_payload(payload: Bytes) -> Result<Self> {
        let mut r = Reader::new(payload, Self::NAME);
        let process_id = r.i32()?;
        let secret_key = r.rest();
        if !CANCEL_KEY_LEN.contains(&secret_key.len()) {
            return Err(ProtocolError::InvalidCancelKeyLength {
                len: secret_key.len(),
            });
        }
        Ok(Self {
            process_id,
            secret_key,
        })
    }

    fn encode_payload(&self, dst: &mut BytesMut) -> Result<()> {
        if !CANCEL_KEY_LEN.contains(&self.secret_key.len()) {
            return Err(ProtocolError::InvalidCancelKeyLength {
                len: self.secret_key.len(),
            });
        }
        dst.put_i32(self.process_id);
        dst.put_slice(&self.secret_key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::messages::test_support::*;

    #[test]
    fn decodes_and_round_trips() {
        const WIRE: &[u8] = b"K\x00\x00\x00\x0c\x00\x00\x30\x39\x1f\x2e\x3d\x4c";
        let k: BackendKeyData = decode(WIRE).unwrap();
        assert_eq!(k.process_id, 12345);
        assert_eq!(k.secret_key.as_ref(), b"\x1f\x2e\x3d\x4c");
        assert_eq!(round_trip(&k), WIRE);
        round_trip(&BackendKeyData {
            process_id: 1,
            secret_key: vec![7; 256].into(),
        });
        assert!(!format!("{k:?}").contains("31"));
    }

    #[test]
    fn refuses_keys_of_the_wrong_length() {
        assert!(BackendKeyData::decode_payload(Bytes::from_static(b"\x00\x00\x00\x01abc")).is_err());
        assert!(BackendKeyData::decode_payload(vec![0; 4 + 257].into()).is_err());
        assert!(
            BackendKeyData {
                process_id: 1,
                secret_key: Bytes::new()
            }
            .to_frame()
            .is_err()
        );
    }
}
