//! The maximum length of each message type, per direction.
//!
//! A length word is the only thing that tells the proxy how much to buffer,
//! so it is checked against a limit for its message type before a single
//! payload byte is awaited. The limits follow PostgreSQL's own: the server's
//! for client messages (`postgres.c`, `PQ_SMALL_MESSAGE_LIMIT` and
//! `PQ_LARGE_MESSAGE_LIMIT`) and libpq's for server messages (30000 bytes
//! except for the types that may carry data), so no message a real server or
//! client sends is refused, and no peer makes the proxy hold more than that.
//! Fixed-size messages get their exact size. A type not listed for its
//! direction is refused outright (fail closed).

use std::fmt;

use super::tag::{backend as be, frontend as fe};

/// Who sent a message; the same tag byte means different messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to server.
    Frontend,
    /// Server to client.
    Backend,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Frontend => "frontend",
            Self::Backend => "backend",
        })
    }
}

/// Length of a message with nothing but its length word.
pub const EMPTY_MESSAGE_LEN: u32 = 4;

/// PostgreSQL's limit for the short client messages (Describe, Close,
/// Execute, CopyFail): `PQ_SMALL_MESSAGE_LIMIT`.
pub const SMALL_FRONTEND_MESSAGE_LEN: u32 = 10_000;

/// PostgreSQL's limit for authentication responses: `PG_MAX_AUTH_TOKEN_LENGTH`.
pub const AUTH_MESSAGE_LEN: u32 = 65_535;

/// libpq's limit for server messages that carry no data.
pub const SMALL_BACKEND_MESSAGE_LEN: u32 = 30_000;

/// The most PostgreSQL accepts in one client message (`PQ_LARGE_MESSAGE_LIMIT`,
/// `MaxAllocSize - 1`), and the most it can build into one server message.
pub const PG_LARGE_MESSAGE_LEN: u32 = 0x3fff_fffe;

/// Default limit for client messages that carry statements or data (Query,
/// Parse, Bind, FunctionCall, CopyData). Well above any real statement or
/// COPY chunk (libpq sends COPY data in chunks of at most 64 KiB), and it
/// bounds what one client can make the proxy buffer.
pub const DEFAULT_MAX_FRONTEND_MESSAGE_LEN: u32 = 64 << 20;

/// Default limit for server messages that carry data (DataRow, CopyData,
/// errors, ...): whatever the server can send, since refusing a row the
/// server produced would break a legitimate query.
pub const DEFAULT_MAX_BACKEND_MESSAGE_LEN: u32 = PG_LARGE_MESSAGE_LEN;

/// The largest limit that can be configured: the length word is an Int32.
pub const MAX_MESSAGE_LEN: u32 = i32::MAX as u32;

/// ReadyForQuery: the length word and one status byte.
const READY_FOR_QUERY_LEN: u32 = 5;

/// BackendKeyData: length, process id and a key of up to 256 bytes (protocol 3.2).
const BACKEND_KEY_DATA_LEN: u32 = 4 + 4 + 256;

/// ParameterDescription with the most parameters a statement can have.
const PARAMETER_DESCRIPTION_LEN: u32 = 4 + 2 + 4 * i16::MAX as u32;

/// Copy{In,Out,Both}Response with the most columns a count can say.
const COPY_RESPONSE_LEN: u32 = 4 + 1 + 2 + 2 * i16::MAX as u32;

/// The maximum length word of every message type one direction may send.
/// Checking one is a single array index, on the path of every frame.
#[derive(Clone)]
pub struct FrameLimits {
    direction: Direction,
    /// Indexed by tag; 0 means the tag is not a message in this direction.
    max: [u32; 256],
}

impl FrameLimits {
    /// Limits for what clients send. `max_message_len` bounds the messages
    /// that carry statements or data; it is clamped to what fits the
    /// protocol and is never below the small-message limit.
    pub fn frontend(max_message_len: u32) -> Self {
        let large = clamp(max_message_len);
        let mut limits = Self {
            direction: Direction::Frontend,
            max: [0; 256],
        };
        for tag in [fe::QUERY, fe::PARSE, fe::BIND, fe::FUNCTION_CALL, fe::COPY_DATA] {
            limits.set(tag, large);
        }
        for tag in [fe::EXECUTE, fe::DESCRIBE, fe::CLOSE, fe::COPY_FAIL] {
            limits.set(tag, SMALL_FRONTEND_MESSAGE_LEN);
        }
        limits.set(fe::PASSWORD, AUTH_MESSAGE_LEN);
        for tag in [fe::SYNC, fe::FLUSH, fe::TERMINATE, fe::COPY_DONE] {
            limits.set(tag, EMPTY_MESSAGE_LEN);
        }
        limits
    }

    /// Limits for what servers send; `max_message_len` bounds the messages
    /// that carry data (DataRow, CopyData, errors and notices, ...).
    pub fn backend(max_message_len: u32) -> Self {
        let large = clamp(max_message_len);
        let mut limits = Self {
            direction: Direction::Backend,
            max: [0; 256],
        };
        for tag in [
            be::DATA_ROW,
            be::ROW_DESCRIPTION,
            be::COPY_DATA,
            be::ERROR_RESPONSE,
            be::NOTICE_RESPONSE,
            be::NOTIFICATION_RESPONSE,
            be::FUNCTION_CALL_RESPONSE,
        ] {
            limits.set(tag, large);
        }
        for tag in [
            be::AUTHENTICATION,
            be::PARAMETER_STATUS,
            be::COMMAND_COMPLETE,
            be::NEGOTIATE_PROTOCOL_VERSION,
        ] {
            limits.set(tag, SMALL_BACKEND_MESSAGE_LEN);
        }
        for tag in [
            be::COPY_IN_RESPONSE,
            be::COPY_OUT_RESPONSE,
            be::COPY_BOTH_RESPONSE,
        ] {
            limits.set(tag, COPY_RESPONSE_LEN);
        }
        limits.set(be::PARAMETER_DESCRIPTION, PARAMETER_DESCRIPTION_LEN);
        limits.set(be::BACKEND_KEY_DATA, BACKEND_KEY_DATA_LEN);
        limits.set(be::READY_FOR_QUERY, READY_FOR_QUERY_LEN);
        for tag in [
            be::PARSE_COMPLETE,
            be::BIND_COMPLETE,
            be::CLOSE_COMPLETE,
            be::NO_DATA,
            be::PORTAL_SUSPENDED,
            be::EMPTY_QUERY_RESPONSE,
            be::COPY_DONE,
        ] {
            limits.set(tag, EMPTY_MESSAGE_LEN);
        }
        limits
    }

    fn set(&mut self, tag: u8, max: u32) {
        self.max[usize::from(tag)] = max;
    }

    /// Who sends the messages these limits are for.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// The largest length word allowed for `tag` (the length word counts
    /// itself, not the tag), or `None` when `tag` is no message in this
    /// direction.
    pub fn max_len(&self, tag: u8) -> Option<u32> {
        Some(self.max[usize::from(tag)]).filter(|&max| max != 0)
    }
}

impl Default for FrameLimits {
    /// The frontend limits with the default maximum: what a session reads
    /// from its client.
    fn default() -> Self {
        Self::frontend(DEFAULT_MAX_FRONTEND_MESSAGE_LEN)
    }
}

fn clamp(max_message_len: u32) -> u32 {
    max_message_len.clamp(SMALL_FRONTEND_MESSAGE_LEN, MAX_MESSAGE_LEN)
}

impl fmt::Debug for FrameLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let known: Vec<(char, u32)> = (0..=u8::MAX)
            .filter_map(|tag| self.max_len(tag).map(|max| (char::from(tag), max)))
            .collect();
        f.debug_struct("FrameLimits")
            .field("direction", &self.direction)
            .field("max", &known)
            .finish()
    }
}
