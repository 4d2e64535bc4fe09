//! One error type for everything that can go wrong reading or writing the
//! protocol. Every variant says what was wrong in words a client's developer
//! can act on, because it ends up in the ErrorResponse the proxy sends.

use std::io;

use super::limits::Direction;
use super::messages::{ErrorResponse, Severity};
use super::sqlstate;
use super::tag;

/// The result of decoding or encoding protocol data.
pub type Result<T, E = ProtocolError> = std::result::Result<T, E>;

/// A malformed, oversized or unexpected piece of protocol data, or the I/O
/// failure that interrupted it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),

    /// The peer closed the connection with part of a message unread.
    #[error("connection closed in the middle of a message")]
    UnexpectedEof,

    /// A message type that does not exist in this direction.
    #[error("invalid {direction} message type {}", tag::display(*tag))]
    UnknownMessageType {
        /// Who sent it.
        direction: Direction,
        /// The type byte.
        tag: u8,
    },

    /// A length word below 4 (it counts itself) or negative.
    #[error("invalid message length {len} for message type {}", tag::display(*tag))]
    InvalidLength {
        /// The type byte.
        tag: u8,
        /// The length word as sent.
        len: i32,
    },

    /// A length word above the limit for its message type.
    #[error("message of type {} is {len} bytes long, over the limit of {max} bytes", tag::display(*tag))]
    MessageTooLarge {
        /// The type byte.
        tag: u8,
        /// The length word as sent.
        len: u32,
        /// The limit for this type.
        max: u32,
    },

    /// A frame handed to the decoder of another message type.
    #[error("expected a {expected} message, got message type {}", tag::display(*found))]
    UnexpectedMessage {
        /// The message the caller asked for.
        expected: &'static str,
        /// The type byte of the frame it gave.
        found: u8,
    },

    /// The message ended before one of its fields did.
    #[error("insufficient data left in {message} message")]
    Truncated {
        /// Which message.
        message: &'static str,
    },

    /// The message went on after its last field.
    #[error("{message} message has {extra} bytes after its last field")]
    TrailingBytes {
        /// Which message.
        message: &'static str,
        /// How many bytes were left.
        extra: usize,
    },

    /// A string field that is not UTF-8. The proxy reads statements and
    /// identifiers as UTF-8 and refuses what it cannot read (fail closed).
    #[error("{message} message holds a string that is not valid UTF-8")]
    InvalidUtf8 {
        /// Which message.
        message: &'static str,
    },

    /// A field with a value the protocol does not allow (a negative count,
    /// an unknown format code or transaction status, ...).
    #[error("{message} message has an invalid {field}")]
    InvalidField {
        /// Which message.
        message: &'static str,
        /// Which field.
        field: &'static str,
    },

    /// A startup-phase packet whose length word is out of bounds.
    #[error("invalid length of startup packet: {len}")]
    InvalidStartupLength {
        /// The length word as sent.
        len: i32,
    },

    /// A startup packet asking for a protocol this proxy does not speak.
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.{}", super::startup::ProtocolVersion::LATEST.minor)]
    UnsupportedProtocolVersion {
        /// Requested major version.
        major: u16,
        /// Requested minor version.
        minor: u16,
    },

    /// A cancel key outside 4..=256 bytes.
    #[error("invalid length of cancel key: {len} bytes")]
    InvalidCancelKeyLength {
        /// The key length as sent.
        len: usize,
    },

    /// The same startup parameter twice. PostgreSQL takes the last one; the
    /// proxy refuses rather than risk reading another value than the server.
    #[error("startup parameter {name:?} given more than once")]
    DuplicateStartupParameter {
        /// The parameter name.
        name: String,
    },

    /// A value the proxy was asked to encode does not fit the protocol
    /// (a value over 2 GiB, more than 65535 items, an empty SASL mechanism
    /// name that would end the list early, ...).
    #[error("cannot encode {message} message: {reason}")]
    CannotEncode {
        /// Which message.
        message: &'static str,
        /// What does not fit.
        reason: &'static str,
    },

    /// A simple Query or FunctionCall sent after extended-protocol messages
    /// without a Sync between them. PostgreSQL skips it without an answer
    /// when an earlier message of the pipeline failed, so the proxy could no
    /// longer tell which answer belongs to which message (and so which
    /// prepared statement the server holds); it closes the session instead.
    #[error(
        "a {message} message inside an extended-query pipeline that has not ended with Sync; Gatehouse needs a Sync before it"
    )]
    UnsyncedPipeline {
        /// Which message.
        message: &'static str,
    },

    /// A string the proxy was asked to encode holds a NUL byte, which would
    /// end it early on the wire and desynchronise the peer.
    #[error("cannot encode {message} message: a string holds a NUL byte")]
    InteriorNul {
        /// Which message.
        message: &'static str,
    },
}

impl ProtocolError {
    /// The SQLSTATE a client should see for this error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Self::Io(_) | Self::UnexpectedEof => sqlstate::CONNECTION_FAILURE,
            Self::UnsupportedProtocolVersion { .. } => sqlstate::FEATURE_NOT_SUPPORTED,
            Self::InvalidUtf8 { .. } => sqlstate::CHARACTER_NOT_IN_REPERTOIRE,
            Self::CannotEncode { .. } | Self::InteriorNul { .. } => sqlstate::INTERNAL_ERROR,
            _ => sqlstate::PROTOCOL_VIOLATION,
        }
    }

    /// Whether the connection has to close. After a framing or startup error
    /// the byte stream can no longer be split into messages; after an error
    /// inside one well-framed message it still can, and PostgreSQL itself
    /// answers those with an ERROR and carries on.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            Self::UnexpectedMessage { .. }
                | Self::Truncated { .. }
                | Self::TrailingBytes { .. }
                | Self::InvalidUtf8 { .. }
                | Self::InvalidField { .. }
                | Self::CannotEncode { .. }
                | Self::InteriorNul { .. }
        )
    }

    /// The ErrorResponse to send the client: FATAL when the connection closes
    /// after it, ERROR otherwise.
    pub fn to_error_response(&self) -> ErrorResponse {
        let severity = if self.is_fatal() {
            Severity::Fatal
        } else {
            Severity::Error
        };
        ErrorResponse::new(severity, self.sqlstate(), self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::messages::Message;

    #[test]
    fn framing_errors_are_fatal_protocol_violations() {
        let err = ProtocolError::MessageTooLarge {
            tag: b'Q',
            len: 1 << 30,
            max: 1 << 26,
        };
        assert!(err.is_fatal());
        let response = err.to_error_response();
        assert_eq!(response.fields.severity().as_deref(), Some("FATAL"));
        assert_eq!(response.fields.code().as_deref(), Some("08P01"));
        assert_eq!(
            response.fields.message().as_deref(),
            Some("message of type 'Q' is 1073741824 bytes long, over the limit of 67108864 bytes")
        );
        assert!(response.to_frame().is_ok());
    }

    #[test]
    fn errors_inside_a_message_leave_the_session_usable() {
        let err = ProtocolError::Truncated { message: "Bind" };
        assert!(!err.is_fatal());
        let response = err.to_error_response();
        assert_eq!(response.fields.severity().as_deref(), Some("ERROR"));
        assert_eq!(response.fields.code().as_deref(), Some("08P01"));
        assert_eq!(
            response.fields.message().as_deref(),
            Some("insufficient data left in Bind message")
        );
    }

    #[test]
    fn sqlstates() {
        assert_eq!(
            ProtocolError::UnsupportedProtocolVersion { major: 2, minor: 0 }.sqlstate(),
            "0A000"
        );
        assert_eq!(
            ProtocolError::InvalidUtf8 { message: "Query" }.sqlstate(),
            "22021"
        );
        assert_eq!(ProtocolError::UnexpectedEof.sqlstate(), "08006");
        assert_eq!(
            ProtocolError::InteriorNul { message: "Query" }.sqlstate(),
            "XX000"
        );
        assert_eq!(ProtocolError::InvalidStartupLength { len: 3 }.sqlstate(), "08P01");
    }
}
