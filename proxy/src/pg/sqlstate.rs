//! SQLSTATE codes the proxy puts in the errors and notices it sends, named
//! as in PostgreSQL's `errcodes.txt` so they can be looked up there.

/// `00000` successful_completion: the code of a plain notice.
pub const SUCCESSFUL_COMPLETION: &str = "00000";
/// `01000` warning.
pub const WARNING: &str = "01000";
/// `08000` connection_exception.
pub const CONNECTION_EXCEPTION: &str = "08000";
/// `08006` connection_failure.
pub const CONNECTION_FAILURE: &str = "08006";
/// `08001` sqlclient_unable_to_establish_sqlconnection: the upstream cannot be reached.
pub const UNABLE_TO_ESTABLISH_CONNECTION: &str = "08001";
/// `08P01` protocol_violation: malformed or oversized messages.
pub const PROTOCOL_VIOLATION: &str = "08P01";
/// `0A000` feature_not_supported.
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// `22021` character_not_in_repertoire: text that is not valid UTF-8.
pub const CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";
/// `25P02` in_failed_sql_transaction.
pub const IN_FAILED_SQL_TRANSACTION: &str = "25P02";
/// `28000` invalid_authorization_specification.
pub const INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
/// `28P01` invalid_password.
pub const INVALID_PASSWORD: &str = "28P01";
/// `42501` insufficient_privilege: a statement refused by policy.
pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
/// `53300` too_many_connections.
pub const TOO_MANY_CONNECTIONS: &str = "53300";
/// `54000` program_limit_exceeded.
pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
/// `57014` query_canceled.
pub const QUERY_CANCELED: &str = "57014";
/// `57P01` admin_shutdown: the proxy is draining.
pub const ADMIN_SHUTDOWN: &str = "57P01";
/// `57P03` cannot_connect_now: a passing condition; the client should retry.
pub const CANNOT_CONNECT_NOW: &str = "57P03";
/// `57P05` idle_session_timeout.
pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
/// `XX000` internal_error.
pub const INTERNAL_ERROR: &str = "XX000";
