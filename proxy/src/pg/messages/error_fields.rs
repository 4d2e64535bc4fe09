//! The fields of an ErrorResponse or NoticeResponse.

use std::borrow::Cow;
use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::pg::wire::{Reader, put_cstr};
use crate::pg::{ProtocolError, Result};

/// Field type codes, as in the protocol's "Error and Notice Message Fields".
pub mod field {
    /// Severity, possibly localized.
    pub const SEVERITY: u8 = b'S';
    /// Severity, never localized (PostgreSQL 9.6 and later).
    pub const SEVERITY_NONLOCALIZED: u8 = b'V';
    /// SQLSTATE code.
    pub const CODE: u8 = b'C';
    /// Primary message.
    pub const MESSAGE: u8 = b'M';
    /// Detail.
    pub const DETAIL: u8 = b'D';
    /// Hint: what to do about it.
    pub const HINT: u8 = b'H';
    /// Position in the query string (1-based, in characters).
    pub const POSITION: u8 = b'P';
    /// Position in an internally generated query.
    pub const INTERNAL_POSITION: u8 = b'p';
    /// The internally generated query.
    pub const INTERNAL_QUERY: u8 = b'q';
    /// Context (call stack).
    pub const WHERE: u8 = b'W';
    /// Schema name.
    pub const SCHEMA: u8 = b's';
    /// Table name.
    pub const TABLE: u8 = b't';
    /// Column name.
    pub const COLUMN: u8 = b'c';
    /// Data type name.
    pub const DATA_TYPE: u8 = b'd';
    /// Constraint name.
    pub const CONSTRAINT: u8 = b'n';
    /// Source file.
    pub const FILE: u8 = b'F';
    /// Source line.
    pub const LINE: u8 = b'L';
    /// Source routine.
    pub const ROUTINE: u8 = b'R';
}

/// The severity of an error or notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends.
    Fatal,
    /// Every session of the server ends.
    Panic,
    /// A warning notice.
    Warning,
    /// A notice.
    Notice,
    /// A debugging notice.
    Debug,
    /// An informational notice.
    Info,
    /// A log notice.
    Log,
}

impl Severity {
    /// The non-localized name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "ERROR",
            Self::Fatal => "FATAL",
            Self::Panic => "PANIC",
            Self::Warning => "WARNING",
            Self::Notice => "NOTICE",
            Self::Debug => "DEBUG",
            Self::Info => "INFO",
            Self::Log => "LOG",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The fields of an error or notice, in wire order. Values stay bytes: a
/// server reports errors that happen before `client_encoding` is set in its
/// own encoding, and such an error must still reach the client. Field order
/// and unknown field types are kept, so masking can rewrite one value and
/// leave the rest as the server sent them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    fields: Vec<(u8, Bytes)>,
}

impl ErrorFields {
    /// The fields every error and notice carries: severity (localized and
    /// not), SQLSTATE code and message.
    pub fn new(severity: Severity, code: &str, message: impl Into<String>) -> Self {
        let severity = Bytes::from_static(severity.as_str().as_bytes());
        Self {
            fields: vec![
                (field::SEVERITY, severity.clone()),
                (field::SEVERITY_NONLOCALIZED, severity),
                (field::CODE, Bytes::copy_from_slice(code.as_bytes())),
                (field::MESSAGE, Bytes::from(message.into())),
            ],
        }
    }

    /// Adds (or replaces) the detail.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.set(field::DETAIL, detail.into());
        self
    }

    /// Adds (or replaces) the hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.set(field::HINT, hint.into());
        self
    }

    /// Adds (or replaces) any field.
    pub fn with(mut self, code: u8, value: impl Into<Bytes>) -> Self {
        self.set(code, value);
        self
    }

    /// Sets a field: replaces the first with `code`, or appends one.
    pub fn set(&mut self, code: u8, value: impl Into<Bytes>) {
        let value = value.into();
        match self.fields.iter_mut().find(|(c, _)| *c == code) {
            Some((_, v)) => *v = value,
            None => self.fields.push((code, value)),
        }
    }

    /// Removes every field with `code`.
    pub fn remove(&mut self, code: u8) {
        self.fields.retain(|(c, _)| *c != code);
    }

    /// The first value of a field, as sent.
    pub fn get(&self, code: u8) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_ref())
    }

    /// The first value of a field as text; bytes that are not UTF-8 become
    /// U+FFFD.
    pub fn get_str(&self, code: u8) -> Option<Cow<'_, str>> {
        self.get(code).map(String::from_utf8_lossy)
    }

    /// The severity, non-localized when the server sent that form.
    pub fn severity(&self) -> Option<Cow<'_, str>> {
        self.get_str(field::SEVERITY_NONLOCALIZED)
            .or_else(|| self.get_str(field::SEVERITY))
    }

    /// The SQLSTATE code.
    pub fn code(&self) -> Option<Cow<'_, str>> {
        self.get_str(field::CODE)
    }

    /// The primary message.
    pub fn message(&self) -> Option<Cow<'_, str>> {
        self.get_str(field::MESSAGE)
    }

    /// The detail.
    pub fn detail(&self) -> Option<Cow<'_, str>> {
        self.get_str(field::DETAIL)
    }

    /// The hint.
    pub fn hint(&self) -> Option<Cow<'_, str>> {
        self.get_str(field::HINT)
    }

    /// Every field, in order.
    pub fn iter(&self) -> impl Iterator<Item = (u8, &Bytes)> {
        self.fields.iter().map(|(c, v)| (*c, v))
    }

    /// Every field, in order, with its value open to rewriting (masking).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u8, &mut Bytes)> {
        self.fields.iter_mut().map(|(c, v)| (*c, v))
    }

    /// Reads the fields of a payload: code and string pairs up to a zero byte.
    pub(crate) fn read(r: &mut Reader) -> Result<Self> {
        let mut fields = Vec::new();
        loop {
            let code = r.u8()?;
            if code == 0 {
                return Ok(Self { fields });
            }
            fields.push((code, r.cstr_bytes()?));
        }
    }

    /// Writes the fields and the terminating zero byte.
    pub(crate) fn write(&self, dst: &mut BytesMut, message: &'static str) -> Result<()> {
        for (code, value) in &self.fields {
            if *code == 0 {
                // A zero code would end the list early on the wire.
                return Err(ProtocolError::InteriorNul { message });
            }
            dst.put_u8(*code);
            put_cstr(dst, value, message)?;
        }
        dst.put_u8(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_required_fields_in_order() {
        let fields = ErrorFields::new(Severity::Error, "42501", "denied")
            .with_hint("ask")
            .with_detail("why");
        let codes: Vec<u8> = fields.iter().map(|(c, _)| c).collect();
        assert_eq!(codes, b"SVCMHD");
        assert_eq!(fields.severity().as_deref(), Some("ERROR"));
        assert_eq!(fields.code().as_deref(), Some("42501"));
        assert_eq!(fields.message().as_deref(), Some("denied"));
        assert_eq!(fields.detail().as_deref(), Some("why"));
        assert_eq!(fields.hint().as_deref(), Some("ask"));
    }

    #[test]
    fn set_replaces_and_remove_removes() {
        let mut fields = ErrorFields::new(Severity::Notice, "00000", "a").with_detail("secret");
        fields.set(field::DETAIL, "masked");
        assert_eq!(fields.detail().as_deref(), Some("masked"));
        fields.remove(field::DETAIL);
        assert_eq!(fields.detail(), None);
        for (code, value) in fields.iter_mut() {
            if code == field::MESSAGE {
                *value = Bytes::from_static(b"b");
            }
        }
        assert_eq!(fields.message().as_deref(), Some("b"));
    }

    #[test]
    fn keeps_non_utf8_values() {
        let mut r = Reader::new(Bytes::from_static(b"Mr\xe9sum\xe9\0\0"), "test");
        let fields = ErrorFields::read(&mut r).unwrap();
        assert_eq!(fields.get(field::MESSAGE), Some(&b"r\xe9sum\xe9"[..]));
        assert_eq!(fields.message().as_deref(), Some("r\u{fffd}sum\u{fffd}"));
    }

    #[test]
    fn refuses_to_write_what_would_desynchronise_the_peer() {
        let fields = ErrorFields::new(Severity::Error, "XX000", "a\0b");
        assert!(fields.write(&mut BytesMut::new(), "test").is_err());
        let fields = ErrorFields::default().with(0, "x");
        assert!(fields.write(&mut BytesMut::new(), "test").is_err());
    }
}
