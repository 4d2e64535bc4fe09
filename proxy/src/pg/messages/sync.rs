//! Sync (`S`): the end of an extended-protocol pipeline.

super::empty_message!(
    /// A Sync message: the server finishes the pipeline (committing an
    /// implicit transaction) and answers ReadyForQuery. The proxy decides on
    /// the buffered pipeline when it sees one.
    Sync,
    crate::pg::tag::frontend::SYNC,
    "Sync"
);
