//! Parse (`P`): prepare a statement under a name (empty for the unnamed one).

use bytes::{BufMut, Bytes, BytesMut};

use super::Message;
use crate::pg::Result;
use crate::pg::tag::frontend;
use crate::pg::wire::{Reader, put_count, put_cstr};

/// A Parse message. Policy decides on it, before the server sees the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parse {
    /// The prepared statement's name; empty for the unnamed statement.
    pub statement: String,
    /// The SQL, a single statement.
    pub sql: String,
    /// Parameter type OIDs the client fixes; 0 leaves one to the server.
    pub param_types: Vec<u32>,
}

impl Message for Parse {
    const TAG: u8 = frontend::PARSE;
    const NAME: &'static str = "Parse";

    fn decode_payload(payload: Bytes) -> Result<Self> {
        let mut r = Reader::new(payload, Self::NAME);
        let statement = r.cstring()?;
        let sql = r.cstring()?;
        let n = r.count()?;
        let mut param_types = Vec::with_capacity(r.capacity(n, 4));
        for _ in 0..n {
            param_types.push(r.u32()?);
        }
        r.finish()?;
        Ok(Self {
            statement,
            sql,
            param_types,
        })
    }

    fn encode_payload(&self, dst: &mut BytesMut) -> Result<()> {
        put_cstr(dst, self.statement.as_bytes(), Self::NAME)?;
        put_cstr(dst, self.sql.as_bytes(), Self::NAME)?;
        put_count(
            dst,
            self.param_types.len(),
            Self::NAME,
            "more than 65535 parameter types",
        )?;
        for oid in &self.param_types {
            dst.put_u32(*oid);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::messages::test_support::*;

    /// tokio-postgres preparing `SELECT $1::int4` as statement `s0`.
    const WIRE: &[u8] = b"P\x00\x00\x00\x1ds0\x00SELECT $1::int4\x00\x00\x01\x00\x00\x00\x17";

    #[test]
    fn decodes_a_named_statement() {
        let p: Parse = decode(WIRE).unwrap();
        assert_eq!(p.statement, "s0");
        assert_eq!(p.sql, "SELECT $1::int4");
        assert_eq!(p.param_types, [23]);
    }

    #[test]
    fn round_trips() {
        let p = Parse {
            statement: String::new(),
            sql: "SELECT 1".into(),
            param_types: vec![],
        };
        round_trip(&p);
        assert_eq!(round_trip(&decode::<Parse>(WIRE).unwrap()), WIRE);
    }

    #[test]
    fn refuses_bad_input() {
        rejects_truncation_and_trailing::<Parse>(&WIRE[5..]);
        // A negative parameter count.
        assert!(Parse::decode_payload(Bytes::from_static(b"\0SELECT 1\0\xff\xff")).is_err());
        // A count larger than the bytes that follow.
        assert!(Parse::decode_payload(Bytes::from_static(b"\0SELECT 1\0\x7f\xff\0\0\0\0")).is_err());
    }
}
