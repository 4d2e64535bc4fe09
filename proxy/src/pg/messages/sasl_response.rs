//! SASLResponse (`p`): a later SASL message from the client.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use super::Message;
use crate::pg::Result;
use crate::pg::tag::frontend;
use crate::pg::wire::Reader;

/// A SASLResponse (for SCRAM, the client-final-message with its proof).
///
/// `Debug` shows the data's length only.
#[derive(Clone, PartialEq, Eq)]
pub struct SaslResponse {
    /// The mechanism's data: the whole payload.
    pub data: Bytes,
}

impl fmt::Debug for SaslResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslResponse")
            .field("data", &format_args!("<{} bytes>", self.data.len()))
            .finish()
    }
}

impl Message for SaslResponse {
    const TAG: u8 = frontend::PASSWORD;
    const NAME: &'static str = "SASLResponse";

    fn decode_payload(payload: Bytes) -> Result<Self> {
        Ok(Self {
            data: Reader::new(payload, Self::NAME).rest(),
        })
    }

    fn encode_payload(&self, dst: &mut BytesMut) -> Result<()> {
        dst.put_slice(&self.data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::messages::test_support::*;

    #[test]
    fn decodes_and_round_trips() {
        const WIRE: &[u8] = b"p\x00\x00\x00\x0ec=biws,r=x";
        let m: SaslResponse = decode(WIRE).unwrap();
        assert_eq!(m.data.as_ref(), b"c=biws,r=x");
        assert_eq!(round_trip(&m), WIRE);
        assert_eq!(format!("{m:?}"), "SaslResponse { data: <10 bytes> }");
    }
}
