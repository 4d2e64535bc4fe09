//! The Gatehouse proxy: the Layer-7 data plane between an agent and its
//! target. It authenticates the caller, injects the credential only it holds,
//! checks every statement against policy, masks results and records sessions.
//!
//! PostgreSQL is the first protocol: `pg` is the wire codec, `policy` the
//! classifier and rules, `session` the relay, `server` the listener and
//! shared state, `mask` the secret detectors and result masking, `record`
//! session recording.
#![forbid(unsafe_code)]

pub mod admin;
pub mod approval;
pub mod catalog;
pub mod cluster;
pub mod config;
pub mod identity;
pub mod mask;
pub mod metrics;
pub mod pg;
pub mod policy;
pub mod record;
pub mod server;
pub mod session;
pub mod tls;

pub use gatehouse_crds as api;
