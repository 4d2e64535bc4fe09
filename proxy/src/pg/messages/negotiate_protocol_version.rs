//! NegotiateProtocolVersion (`v`): the server speaks an older minor version
//! than asked for, or does not know some `_pq_.` startup options.

use bytes::{BufMut, Bytes, BytesMut};

use super::Message;
use crate::pg::tag::backend;
use crate::pg::wire::{Reader, put_cstr};
use crate::pg::{ProtocolError, Result};

/// A NegotiateProtocolVersion message. The proxy sends one to a client that
/// asks for a newer 3.x version than it relays, and reads one from an
/// upstream that is older than what it asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiateProtocolVersion {
    /// The newest minor version of major version 3 supported.
    pub newest_minor: u32,
    /// The `_pq_.` options of the StartupMessage that were not recognised.
    pub unrecognized_options: Vec<String>,
}

impl Message for NegotiateProtocolVersion {
    const TAG: u8 = backend::NEGOTIATE_PROTOCOL_VERSION;
    const NAME: &'static str = "NegotiateProtocolVersion";

    fn decode_payload(payload: Bytes) -> Result<Self> {
        let mut r = Reader::new(payload, Self::NAME);
        let newest_minor = r.u32()?;
        let n = usize::try_from(r.i32()?).map_err(|_| r.invalid("option count"))?;
        let mut unrecognized_options = Vec::with_capacity(r.capacity(n, 1));
        for _ in 0..n {
            unrecognized_options.push(r.cstring()?);
        }
        r.finish()?;
        Ok(Self {
            newest_minor,
            unrecognized_options,
        })
    }

    fn encode_payload(&self, dst: &mut BytesMut) -> Result<()> {
        dst.put_u32(self.newest_minor);
        let n = i32::try_from(self.unrecognized_options.len()).map_err(|_| ProtocolError::CannotEncode {
            message: Self::NAME,
            reason: "too many options",
        })?;
        dst.put_i32(n);
        for option in &self.unrecognized_options {
            put_cstr(dst, option.as_bytes(), Self::NAME)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::messages::test_support::*;

    #[test]
    fn decodes_and_round_trips() {
        const WIRE: &[u8] = b"v\x00\x00\x00\x15\x00\x00\x00\x00\x00\x00\x00\x01_pq_.foo\x00";
        let v: NegotiateProtocolVersion = decode(WIRE).unwrap();
        assert_eq!(v.newest_minor, 0);
        assert_eq!(v.unrecognized_options, ["_pq_.foo"]);
        assert_eq!(round_trip(&v), WIRE);
        rejects_truncation_and_trailing::<NegotiateProtocolVersion>(&WIRE[5..]);
        assert!(
            NegotiateProtocolVersion::decode_payload(Bytes::from_static(b"\0\0\0\0\xff\xff\xff\xff"))
                .is_err()
        );
    }
}
