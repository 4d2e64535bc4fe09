//! Query (`Q`): a simple-protocol query string, possibly several statements.

use bytes::{Bytes, BytesMut};

use super::Message;
use crate::pg::Result;
use crate::pg::tag::frontend;
use crate::pg::wire::{Reader, put_cstr};

/// A simple query. The text is what policy parses; it is refused when it is
/// not UTF-8 rather than guessed at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The SQL, one or more statements.
    pub sql: String,
}

impl Query {
    /// A query for `sql`.
    pub fn new(sql: impl Into<String>) -> Self {
        Self { sql: sql.into() }
    }
}

impl Message for Query {
    const TAG: u8 = frontend::QUERY;
    const NAME: &'static str = "Query";

    fn decode_payload(payload: Bytes) -> Result<Self> {
        let mut r = Reader::new(payload, Self::NAME);
        let sql = r.cstring()?;
        r.finish()?;
        Ok(Self { sql })
    }

    fn encode_payload(&self, dst: &mut BytesMut) -> Result<()> {
        put_cstr(dst, self.sql.as_bytes(), Self::NAME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::ProtocolError;
    use crate::pg::messages::test_support::*;

    #[test]
    fn decodes_psql_bytes() {
        let q: Query = decode(b"Q\x00\x00\x00\x0dSELECT 1\x00").unwrap();
        assert_eq!(q.sql, "SELECT 1");
    }

    #[test]
    fn round_trips() {
        assert_eq!(
            round_trip(&Query::new("SELECT 'é'; SELECT 2")).len(),
            1 + 4 + 21 + 1
        );
        round_trip(&Query::new(""));
    }

    #[test]
    fn refuses_bad_input() {
        rejects_truncation_and_trailing::<Query>(b"SELECT 1\0");
        let err = Query::decode_payload(Bytes::from_static(b"SELECT '\xff'\0")).unwrap_err();
        assert!(matches!(err, ProtocolError::InvalidUtf8 { message: "Query" }));
        assert_eq!(err.sqlstate(), "22021");
        assert!(!err.is_fatal());
        assert!(Query::new("a\0b").to_frame().is_err());
    }
}
