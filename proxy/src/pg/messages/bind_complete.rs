//! BindComplete (`2`): Bind succeeded.

super::empty_message!(
    /// A BindComplete message.
    BindComplete,
    crate::pg::tag::backend::BIND_COMPLETE,
    "BindComplete"
);
