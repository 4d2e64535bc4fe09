//! `kubectl gatehouse`: the kubectl plugin for approvers and security teams
//! (approve, deny, replay, verify). The commands arrive with the recording and
//! operator issues; this crate holds their place in the workspace.
#![forbid(unsafe_code)]

pub use gatehouse_crds as api;
