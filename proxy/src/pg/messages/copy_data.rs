//! CopyData (`d`): a chunk of COPY data, in either direction.

use bytes::{BufMut, Bytes, BytesMut};

use super::Message;
use crate::pg::Result;
use crate::pg::tag::frontend;
use crate::pg::wire::Reader;

/// A CopyData message. Chunks need not align with rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyData {
    /// The data: the whole payload, a view into the frame.
    pub data: Bytes,
}

impl Message for CopyData {
    const TAG: u8 = frontend::COPY_DATA;
    const NAME: &'static str = "CopyData";

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
        const WIRE: &[u8] = b"d\x00\x00\x00\x0c1\tAlice\n";
        let c: CopyData = decode(WIRE).unwrap();
        assert_eq!(c.data.as_ref(), b"1\tAlice\n");
        assert_eq!(round_trip(&c), WIRE);
        round_trip(&CopyData { data: Bytes::new() });
    }
}
