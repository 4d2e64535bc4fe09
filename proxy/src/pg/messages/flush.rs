//! Flush (`H`): ask the server to send what it has buffered.

super::empty_message!(
    /// A Flush message: like Sync, a point where the proxy must have decided
    /// on everything buffered before it, but without ending the pipeline.
    Flush,
    crate::pg::tag::frontend::FLUSH,
    "Flush"
);
