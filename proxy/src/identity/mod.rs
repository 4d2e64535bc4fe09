//! Who the caller is. A client presents a bearer token as its password; a
//! validator turns it into an [`Identity`] (a username and groups) that Policy
//! subjects match against.
//!
//! Validators today: static tokens known by their SHA-256 (standalone mode).
//! Kubernetes TokenReview, OIDC and mTLS arrive with the gateway's auth work.

mod client_cert;
mod static_tokens;

pub use client_cert::{ClientCertError, identity_from_certificate};
pub use static_tokens::StaticTokens;

/// An authenticated caller: a username plus groups.
pub use crate::policy::Identity;

/// Why a token was refused. The message never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token was presented.
    #[error("no token: connect with your Gatehouse token as the password")]
    Missing,
    /// No validator accepts the token.
    #[error("the token is not valid for this Connection")]
    Rejected,
}

impl AuthError {
    /// The SQLSTATE the client sees: 28000 for a missing token,
    /// 28P01 for a wrong one (as PostgreSQL answers a wrong password).
    pub fn sqlstate(&self) -> &'static str {
        match self {
            AuthError::Missing => "28000",
            AuthError::Rejected => "28P01",
        }
    }
}
