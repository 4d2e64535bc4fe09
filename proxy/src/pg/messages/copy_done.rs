//! CopyDone (`c`): the end of COPY data, in either direction.

super::empty_message!(
    /// A CopyDone message.
    CopyDone,
    crate::pg::tag::frontend::COPY_DONE,
    "CopyDone"
);
