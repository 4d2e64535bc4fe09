//! `kubectl gatehouse`: the kubectl plugin for approvers and security teams.
//!
//! [`approvals`] holds the approver's commands, against the Kubernetes API:
//! `pending` lists the ApprovalRequests waiting for reviews, `approve` and
//! `deny` add the caller's review.
//!
//! The recording commands read what the gateway recorded (see
//! `docs/recording-format.md`), from a local folder or an S3 bucket:
//!
//! - [`sessions`]: which sessions there are, filtered by connection, user
//!   and time;
//! - [`replay`]: one session's timeline as a person reads it;
//! - [`verify`]: whether a session is exactly what the gateway signed.
//!
//! [`cli`] holds the command line and [`run`](cli::run); [`recordings`]
//! finds sessions in a store; [`text`] keeps recorded text from steering
//! the terminal.
#![forbid(unsafe_code)]

pub use gatehouse_crds as api;

pub mod approvals;
pub mod cli;
pub mod recordings;
pub mod replay;
pub mod sessions;
pub mod text;
pub mod time;
pub mod verify;

use gatehouse_recording::{format::KeyError, store::StoreError, verify::VerifyError};

/// Why a command failed. [`Error::exit_code`] says how the process ends.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line or the environment does not say how to proceed.
    #[error("{0}")]
    Usage(String),
    /// The store could not be read.
    #[error("cannot read the recordings: {0}")]
    Store(#[from] StoreError),
    /// The public key could not be read.
    #[error("{0}")]
    Key(#[from] KeyError),
    /// No folder holds the session.
    #[error("session {session:?} not found in {store}")]
    NotFound {
        /// The session asked for.
        session: String,
        /// Where it was looked for.
        store: String,
    },
    /// More than one folder holds a session of that id.
    #[error("session {session} is in more than one folder ({}): name the folder instead", folders.join(", "))]
    Ambiguous {
        /// The session asked for.
        session: String,
        /// The folders.
        folders: Vec<String>,
    },
    /// The session does not verify.
    #[error("NOT VERIFIED: {0}")]
    NotVerified(#[from] VerifyError),
    /// The session verifies, but is filed elsewhere than its signed manifest
    /// says: a signed session copied into another session's place.
    #[error("NOT VERIFIED: the folder {folder} holds a session signed as {signed}")]
    Misfiled {
        /// The folder that was read.
        folder: String,
        /// Where the manifest says the session belongs.
        signed: String,
    },
    /// `replay --public-key` found the session unverified and was not told
    /// to show it anyway.
    #[error(
        "{0}\nThe timeline is not shown because it may not be what the gateway recorded; \
         pass --unverified to read it anyway."
    )]
    Refused(Box<Error>),
    /// The Kubernetes API could not be asked: no kubeconfig, no answer,
    /// credentials refused.
    #[error("{0}")]
    Kubernetes(String),
    /// The API server refused what was asked (RBAC, the admission policy,
    /// the CRD's validation); its message is written for people and shown as is.
    #[error("{0}")]
    NotAllowed(String),
    /// No ApprovalRequest of that name.
    #[error("ApprovalRequest {name} not found in namespace {namespace}")]
    RequestNotFound {
        /// The request asked for.
        name: String,
        /// Where it was looked for.
        namespace: String,
    },
    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

impl Error {
    /// The process's exit code: 1 when a session does not verify, or the
    /// API server refused a request or has no such ApprovalRequest; 2 for
    /// everything else (usage, key, store, a session that is not there, the
    /// Kubernetes API out of reach).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::NotVerified(_)
            | Error::Misfiled { .. }
            | Error::Refused(_)
            | Error::NotAllowed(_)
            | Error::RequestNotFound { .. } => 1,
            _ => 2,
        }
    }
}

/// The result of a command.
pub type Result<T, E = Error> = std::result::Result<T, E>;
