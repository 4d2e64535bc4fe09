//! The Gatehouse operator: reconciles Connection, Policy and ApprovalRequest
//! (group `gatehouse.dev`) into proxy Deployments, their configuration and
//! their permissions.
//!
//! The API types live in `gatehouse-crds`; the controllers arrive with the
//! operator issue and are not part of this crate yet.
#![forbid(unsafe_code)]

pub use gatehouse_crds as api;
