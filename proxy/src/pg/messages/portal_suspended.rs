//! PortalSuspended (`s`): Execute reached its row limit; the portal can be run again for more.

super::empty_message!(
    /// A PortalSuspended message.
    PortalSuspended,
    crate::pg::tag::backend::PORTAL_SUSPENDED,
    "PortalSuspended"
);
