//! Message type bytes. The same byte means different messages in the two
//! directions (`S` is Sync from the client and ParameterStatus from the
//! server), so the constants live in one module per direction.

/// A tag as people read it in logs and errors: the character when it is
/// printable ASCII, the hex value otherwise.
pub(crate) fn display(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}'", char::from(tag))
    } else {
        format!("0x{tag:02x}")
    }
}

/// Messages a client (frontend) sends once the startup packet is done.
pub mod frontend {
    /// Simple query.
    pub const QUERY: u8 = b'Q';
    /// Extended protocol: prepare a statement.
    pub const PARSE: u8 = b'P';
    /// Extended protocol: bind parameters to a statement, making a portal.
    pub const BIND: u8 = b'B';
    /// Extended protocol: run a portal.
    pub const EXECUTE: u8 = b'E';
    /// Extended protocol: describe a statement or portal.
    pub const DESCRIBE: u8 = b'D';
    /// Extended protocol: close a statement or portal.
    pub const CLOSE: u8 = b'C';
    /// Extended protocol: end of a pipeline.
    pub const SYNC: u8 = b'S';
    /// Extended protocol: ask the server to send what it has.
    pub const FLUSH: u8 = b'H';
    /// End of the session.
    pub const TERMINATE: u8 = b'X';
    /// PasswordMessage, SASLInitialResponse, SASLResponse and GSSResponse all
    /// share this tag; the authentication exchange says which one it is.
    pub const PASSWORD: u8 = b'p';
    /// Fast-path function call.
    pub const FUNCTION_CALL: u8 = b'F';
    /// COPY FROM STDIN data.
    pub const COPY_DATA: u8 = b'd';
    /// COPY FROM STDIN finished.
    pub const COPY_DONE: u8 = b'c';
    /// COPY FROM STDIN aborted by the client.
    pub const COPY_FAIL: u8 = b'f';
}

/// Messages a server (backend) sends.
pub mod backend {
    /// Every Authentication* request; a 32-bit code inside says which.
    pub const AUTHENTICATION: u8 = b'R';
    /// The process id and secret key a CancelRequest must present.
    pub const BACKEND_KEY_DATA: u8 = b'K';
    /// A run-time parameter's current value.
    pub const PARAMETER_STATUS: u8 = b'S';
    /// The server waits for the next query; carries the transaction status.
    pub const READY_FOR_QUERY: u8 = b'Z';
    /// An error.
    pub const ERROR_RESPONSE: u8 = b'E';
    /// A notice or warning.
    pub const NOTICE_RESPONSE: u8 = b'N';
    /// The columns of the rows that follow.
    pub const ROW_DESCRIPTION: u8 = b'T';
    /// One row.
    pub const DATA_ROW: u8 = b'D';
    /// A statement finished; carries its command tag.
    pub const COMMAND_COMPLETE: u8 = b'C';
    /// The query string was empty.
    pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
    /// A LISTEN channel was notified.
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    /// Parse succeeded.
    pub const PARSE_COMPLETE: u8 = b'1';
    /// Bind succeeded.
    pub const BIND_COMPLETE: u8 = b'2';
    /// Close succeeded.
    pub const CLOSE_COMPLETE: u8 = b'3';
    /// The described statement or portal returns no rows.
    pub const NO_DATA: u8 = b'n';
    /// Execute stopped at its row limit.
    pub const PORTAL_SUSPENDED: u8 = b's';
    /// The server is ready for COPY FROM STDIN data.
    pub const COPY_IN_RESPONSE: u8 = b'G';
    /// COPY TO STDOUT data follows.
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    /// Streaming replication copy in both directions.
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    /// COPY TO STDOUT data.
    pub const COPY_DATA: u8 = b'd';
    /// COPY TO STDOUT finished.
    pub const COPY_DONE: u8 = b'c';
    /// The parameter types of a described statement.
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    /// The result of a fast-path function call.
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
    /// The server supports an older minor version or lacks some options.
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
}
