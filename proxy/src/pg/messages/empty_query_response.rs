//! EmptyQueryResponse (`I`): The query string held no statement; sent instead of CommandComplete.

super::empty_message!(
    /// A EmptyQueryResponse message.
    EmptyQueryResponse,
    crate::pg::tag::backend::EMPTY_QUERY_RESPONSE,
    "EmptyQueryResponse"
);
