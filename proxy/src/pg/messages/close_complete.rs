//! CloseComplete (`3`): Close succeeded.

super::empty_message!(
    /// A CloseComplete message.
    CloseComplete,
    crate::pg::tag::backend::CLOSE_COMPLETE,
    "CloseComplete"
);
