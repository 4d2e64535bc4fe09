//! ErrorResponse (`E`): an error, from the server or from the proxy.

use bytes::{Bytes, BytesMut};

use super::{ErrorFields, Message, Severity};
use crate::pg::Result;
use crate::pg::tag::backend;
use crate::pg::wire::Reader;

/// An ErrorResponse. The proxy builds one to refuse a statement (SQLSTATE
/// 42501 with a hint that says what would allow it) and to report a
/// protocol violation; it decodes the server's to mask their fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorResponse {
    /// The fields.
    pub fields: ErrorFields,
}

impl ErrorResponse {
    /// An error with severity, SQLSTATE code and message.
    pub fn new(severity: Severity, code: &str, message: impl Into<String>) -> Self {
        Self {
            fields: ErrorFields::new(severity, code, message),
        }
    }

    /// An ERROR: the statement fails, the session goes on.
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        Self::new(Severity::Error, code, message)
    }

    /// A FATAL error: the connection closes after it.
    pub fn fatal(code: &str, message: impl Into<String>) -> Self {
        Self::new(Severity::Fatal, code, message)
    }

    /// Adds the detail.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.fields = self.fields.with_detail(detail);
        self
    }

    /// Adds the hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.fields = self.fields.with_hint(hint);
        self
    }
}

impl Message for ErrorResponse {
    const TAG: u8 = backend::ERROR_RESPONSE;
    const NAME: &'static str = "ErrorResponse";

    fn decode_payload(payload: Bytes) -> Result<Self> {
        let mut r = Reader::new(payload, Self::NAME);
        let fields = ErrorFields::read(&mut r)?;
        r.finish()?;
        Ok(Self { fields })
    }

    fn encode_payload(&self, dst: &mut BytesMut) -> Result<()> {
        self.fields.write(dst, Self::NAME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::messages::field;
    use crate::pg::messages::test_support::*;

    /// PostgreSQL 15 answering `SELECT * FROM nope`.
    const WIRE: &[u8] =
        b"E\x00\x00\x00\x67SERROR\x00VERROR\x00C42P01\x00Mrelation \"nope\" does not exist\x00\
P15\x00Fparse_relation.c\x00L1392\x00RparserOpenTable\x00\x00";

    #[test]
    fn decodes_a_server_error() {
        let e: ErrorResponse = decode(WIRE).unwrap();
        assert_eq!(e.fields.severity().as_deref(), Some("ERROR"));
        assert_eq!(e.fields.code().as_deref(), Some("42P01"));
        assert_eq!(
            e.fields.message().as_deref(),
            Some("relation \"nope\" does not exist")
        );
        assert_eq!(e.fields.get_str(field::POSITION).as_deref(), Some("15"));
        assert_eq!(round_trip(&e), WIRE, "order and every field are kept");
        rejects_truncation_and_trailing::<ErrorResponse>(&WIRE[5..]);
    }

    #[test]
    fn builds_a_refusal() {
        let e = ErrorResponse::error(
            "42501",
            "DELETE on public.orders denied by policy agents/no-writes",
        )
        .with_hint("Ask for a rule that allows delete on public.orders.");
        let wire = round_trip(&e);
        assert!(wire.starts_with(b"E"));
        assert!(wire.ends_with(b"orders.\0\0"));
        assert_eq!(
            ErrorResponse::fatal("08P01", "x").fields.severity().as_deref(),
            Some("FATAL")
        );
    }
}
