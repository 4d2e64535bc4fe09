//! The Gatehouse proxy: the Layer-7 data plane between an agent and its
//! target. It authenticates the caller, injects the credential only it holds,
//! checks every statement against policy, masks results and records sessions.
//!
//! The data plane arrives with the PostgreSQL gateway issue; this crate holds
//! its place in the workspace.
#![forbid(unsafe_code)]

pub mod config;
pub mod identity;
pub mod pg;
pub mod policy;
pub mod server;
pub mod session;
pub mod tls;

pub use gatehouse_crds as api;
