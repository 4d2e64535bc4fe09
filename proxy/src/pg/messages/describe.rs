//! Describe (`D`): ask for a statement's or portal's parameters and columns.

use bytes::{BufMut, Bytes, BytesMut};

use super::{Message, Target};
use crate::pg::Result;
use crate::pg::tag::frontend;
use crate::pg::wire::{Reader, put_cstr};

/// A Describe message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Describe {
    /// A statement or a portal.
    pub target: Target,
    /// Its name; empty for the unnamed one.
    pub name: String,
}

impl Message for Describe {
    const TAG: u8 = frontend::DESCRIBE;
    const NAME: &'static str = "Describe";

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
        const WIRE: &[u8] = b"D\x00\x00\x00\x08Ss0\x00";
        let d: Describe = decode(WIRE).unwrap();
        assert_eq!(
            d,
            Describe {
                target: Target::Statement,
                name: "s0".into()
            }
        );
        assert_eq!(round_trip(&d), WIRE);
        round_trip(&Describe {
            target: Target::Portal,
            name: String::new(),
        });
        rejects_truncation_and_trailing::<Describe>(&WIRE[5..]);
        assert!(Describe::decode_payload(Bytes::from_static(b"Xs0\0")).is_err());
    }
}
