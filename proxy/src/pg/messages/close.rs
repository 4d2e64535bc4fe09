//! Close (`C`): drop a prepared statement or a portal.

use bytes::{BufMut, Bytes, BytesMut};

use super::{Message, Target};
use crate::pg::Result;
use crate::pg::tag::frontend;
use crate::pg::wire::{Reader, put_cstr};

/// A Close message. The session tracks it so a statement's policy decision
/// is forgotten with the statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// A statement or a portal.
    pub target: Target,
    /// Its name; empty for the unnamed one.
    pub name: String,
}

impl Message for Close {
    const TAG: u8 = frontend::CLOSE;
    const NAME: &'static str = "Close";

    fn decode_payload(payload: Bytes) -> Result<Self> {
        let mut r = Reader::new(payload, Self::NAME);
        let target = Target::read(&mut r)?;
        let name = r.cstring()?;
        r.finish()?;
        Ok(Self { target, name })
    }

    fn encode_payload(&self, dst: &mut BytesMut) -> Result<()> {
        dst.put_u8(self.target.code());
        put_cstr(dst, self.name.as_bytes(), Self::NAME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::messages::test_support::*;

    #[test]
    fn decodes_and_round_trips() {
        const WIRE: &[u8] = b"C\x00\x00\x00\x08Pp1\x00";
        let c: Close = decode(WIRE).unwrap();
        assert_eq!(
            c,
            Close {
                target: Target::Portal,
                name: "p1".into()
            }
        );
        assert_eq!(round_trip(&c), WIRE);
        rejects_truncation_and_trailing::<Close>(&WIRE[5..]);
        assert!(Close::decode_payload(Bytes::from_static(b"s\0")).is_err());
    }
}
