//! Terminate (`X`): the client is leaving.

super::empty_message!(
    /// A Terminate message. The proxy sends one upstream when it closes a
    /// server connection, so the server ends the backend cleanly.
    Terminate,
    crate::pg::tag::frontend::TERMINATE,
    "Terminate"
);
