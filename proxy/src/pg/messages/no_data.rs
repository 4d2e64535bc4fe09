//! NoData (`n`): The described statement or portal returns no rows.

super::empty_message!(
    /// A NoData message.
    NoData,
    crate::pg::tag::backend::NO_DATA,
    "NoData"
);
