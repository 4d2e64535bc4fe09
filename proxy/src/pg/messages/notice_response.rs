//! NoticeResponse (`N`): a notice or warning, from the server or the proxy.

use bytes::{Bytes, BytesMut};

use super::{ErrorFields, Message, Severity};
use crate::pg::Result;
use crate::pg::sqlstate;
use crate::pg::tag::backend;
use crate::pg::wire::Reader;

/// A NoticeResponse. The proxy sends one to tell a client that a statement
/// waits for approval and how to give it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoticeResponse {
    /// The fields.
    pub fields: ErrorFields,
}

impl NoticeResponse {
    /// A notice with severity, SQLSTATE code and message.
    pub fn new(severity: Severity, code: &str, message: impl Into<String>) -> Self {
        Self {
            fields: ErrorFields::new(severity, code, message),
        }
    }

    /// A plain NOTICE (SQLSTATE 00000).
    pub fn notice(message: impl Into<String>) -> Self {
        Self::new(Severity::Notice, sqlstate::SUCCESSFUL_COMPLETION, message)
    }

    /// A WARNING (SQLSTATE 01000).
    pub fn warning(message: impl Into<String>) -> Self {
        Self::new(Severity::Warning, sqlstate::WARNING, message)
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

impl Message for NoticeResponse {
    const TAG: u8 = backend::NOTICE_RESPONSE;
    const NAME: &'static str = "NoticeResponse";

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
    use crate::pg::messages::test_support::*;

    /// PostgreSQL 15 answering `DROP TABLE IF EXISTS nope`.
    const WIRE: &[u8] = b"N\x00\x00\x00\x6fSNOTICE\x00VNOTICE\x00C00000\x00\
Mtable \"nope\" does not exist, skipping\x00Ftablecmds.c\x00L1296\x00RDropErrorMsgNonExistent\x00\x00";

    #[test]
    fn decodes_and_round_trips() {
        let n: NoticeResponse = decode(WIRE).unwrap();
        assert_eq!(n.fields.severity().as_deref(), Some("NOTICE"));
        assert_eq!(
            n.fields.message().as_deref(),
            Some("table \"nope\" does not exist, skipping")
        );
        assert_eq!(round_trip(&n), WIRE);
        rejects_truncation_and_trailing::<NoticeResponse>(&WIRE[5..]);
    }

    #[test]
    fn builds_notices() {
        let n = NoticeResponse::notice("waiting for approval")
            .with_hint("kubectl patch ...")
            .with_detail("d");
        assert_eq!(n.fields.code().as_deref(), Some("00000"));
        round_trip(&n);
        assert_eq!(
            NoticeResponse::warning("w").fields.severity().as_deref(),
            Some("WARNING")
        );
    }
}
