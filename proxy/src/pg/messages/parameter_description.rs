//! ParameterDescription (`t`): the parameter types of a described statement.

use bytes::{BufMut, Bytes, BytesMut};

use super::Message;
use crate::pg::Result;
use crate::pg::tag::backend;
use crate::pg::wire::{Reader, put_count};

/// A ParameterDescription message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParameterDescription {
    /// The type OID of each parameter.
    pub type_oids: Vec<u32>,
}

impl Message for ParameterDescription {
    const TAG: u8 = backend::PARAMETER_DESCRIPTION;
    const NAME: &'static str = "ParameterDescription";

    fn decode_payload(payload: Bytes) -> Result<Self> {
        let mut r = Reader::new(payload, Self::NAME);
        let n = r.count()?;
        let mut type_oids = Vec::with_capacity(r.capacity(n, 4));
        for _ in 0..n {
            type_oids.push(r.u32()?);
        }
        r.finish()?;
        Ok(Self { type_oids })
    }

    fn encode_payload(&self, dst: &mut BytesMut) -> Result<()> {
        put_count(
            dst,
            self.type_oids.len(),
            Self::NAME,
            "more than 65535 parameters",
        )?;
        for oid in &self.type_oids {
            dst.put_u32(*oid);
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
        const WIRE: &[u8] = b"t\x00\x00\x00\x0e\x00\x02\x00\x00\x00\x17\x00\x00\x00\x19";
        let p: ParameterDescription = decode(WIRE).unwrap();
        assert_eq!(p.type_oids, [23, 25]);
        assert_eq!(round_trip(&p), WIRE);
        rejects_truncation_and_trailing::<ParameterDescription>(&WIRE[5..]);
        round_trip(&ParameterDescription {
            type_oids: vec![23; 40_000],
        });
    }
}
