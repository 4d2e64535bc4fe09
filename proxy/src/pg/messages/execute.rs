//! Execute (`E`): run a bound portal.

use bytes::{BufMut, Bytes, BytesMut};

use super::Message;
use crate::pg::Result;
use crate::pg::tag::frontend;
use crate::pg::wire::{Reader, put_cstr};

/// An Execute message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execute {
    /// The portal; empty for the unnamed portal.
    pub portal: String,
    /// Rows to return before PortalSuspended; 0 (or less) for all.
    pub max_rows: i32,
}

impl Message for Execute {
    const TAG: u8 = frontend::EXECUTE;
    const NAME: &'static str = "Execute";

    fn decode_payload(payload: Bytes) -> Result<Self> {
        let mut r = Reader::new(payload, Self::NAME);
        let portal = r.cstring()?;
        let max_rows = r.i32()?;
        r.finish()?;
        Ok(Self { portal, max_rows })
    }

    fn encode_payload(&self, dst: &mut BytesMut) -> Result<()> {
        put_cstr(dst, self.portal.as_bytes(), Self::NAME)?;
        dst.put_i32(self.max_rows);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::messages::test_support::*;

    #[test]
    fn decodes_and_round_trips() {
        const WIRE: &[u8] = b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00";
        let e: Execute = decode(WIRE).unwrap();
        assert_eq!(
            e,
            Execute {
                portal: String::new(),
                max_rows: 0
            }
        );
        assert_eq!(round_trip(&e), WIRE);
        round_trip(&Execute {
            portal: "c1".into(),
            max_rows: 100,
        });
        rejects_truncation_and_trailing::<Execute>(&WIRE[5..]);
    }
}
