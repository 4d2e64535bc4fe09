//! ParseComplete (`1`): Parse succeeded.

super::empty_message!(
    /// A ParseComplete message.
    ParseComplete,
    crate::pg::tag::backend::PARSE_COMPLETE,
    "ParseComplete"
);
