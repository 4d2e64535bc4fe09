//! CopyFail (`f`): the client aborts COPY FROM STDIN.

use bytes::{Bytes, BytesMut};

use super::Message;
use crate::pg::Result;
use crate::pg::tag::frontend;
use crate::pg::wire::{Reader, put_cstr};

/// A CopyFail message. The proxy sends one upstream itself when it must
/// abort a COPY the client started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFail {
    /// Why; the server puts it in its error.
    pub message: String,
}

impl Message for CopyFail {
    const TAG: u8 = frontend::COPY_FAIL;
    const NAME: &'static str = "CopyFail";

    fn decode_payload(payload: Bytes) -> Result<Self> {
        let mut r = Reader::new(payload, Self::NAME);
        let message = r.cstring()?;
        r.finish()?;
        Ok(Self { message })
    }

    fn encode_payload(&self, dst: &mut BytesMut) -> Result<()> {
        put_cstr(dst, self.message.as_bytes(), Self::NAME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::messages::test_support::*;

    #[test]
    fn decodes_and_round_trips() {
        const WIRE: &[u8] = b"f\x00\x00\x00\x0daborted\x00\x00";
        assert!(decode::<CopyFail>(WIRE).is_err(), "trailing byte");
        const GOOD: &[u8] = b"f\x00\x00\x00\x0caborted\x00";
        let c: CopyFail = decode(GOOD).unwrap();
        assert_eq!(c.message, "aborted");
        assert_eq!(round_trip(&c), GOOD);
        rejects_truncation_and_trailing::<CopyFail>(&GOOD[5..]);
    }
}
