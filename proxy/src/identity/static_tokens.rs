//! Static tokens, configured by their SHA-256 so the configuration holds no
//! secret.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use super::{AuthError, Identity};
use crate::config::StaticToken;

/// The static tokens of a configuration, keyed by digest.
#[derive(Debug, Clone, Default)]
pub struct StaticTokens {
    by_digest: HashMap<[u8; 32], Identity>,
}

impl StaticTokens {
    /// Builds the table; entries whose hash is not 64 hex digits are skipped
    /// (the configuration check refuses them before this runs).
    pub fn new(tokens: &[StaticToken]) -> Self {
        let by_digest = tokens
            .iter()
            .filter_map(|t| {
                let mut digest = [0u8; 32];
                hex::decode_to_slice(&t.sha256, &mut digest).ok()?;
                Some((
                    digest,
                    Identity {
                        username: t.username.clone(),
                        groups: t.groups.clone(),
                    },
                ))
            })
            .collect();
        StaticTokens { by_digest }
    }

    /// The identity a token stands for. Looking up by digest means neither the
    /// table nor the comparison ever holds the token itself.
    pub fn validate(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_digest.get(&digest).cloned().ok_or(AuthError::Rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> StaticTokens {
        let sha256 = hex::encode(Sha256::digest(b"change-me-agent-token"));
        StaticTokens::new(&[StaticToken {
            sha256,
            username: "planner".into(),
            groups: vec!["agents".into()],
        }])
    }

    #[test]
    fn a_known_token_names_its_identity() {
        let id = table().validate("change-me-agent-token").unwrap();
        assert_eq!(
            id,
            Identity {
                username: "planner".into(),
                groups: vec!["agents".into()]
            }
        );
    }

    #[test]
    fn unknown_altered_and_missing_tokens_are_refused() {
        let t = table();
        assert_eq!(t.validate("change-me-agent-tokeN"), Err(AuthError::Rejected));
        assert_eq!(t.validate("change-me-agent-token "), Err(AuthError::Rejected));
        assert_eq!(t.validate(""), Err(AuthError::Missing));
        assert_eq!(AuthError::Rejected.sqlstate(), "28P01");
        assert_eq!(AuthError::Missing.sqlstate(), "28000");
    }

    #[test]
    fn errors_never_echo_the_token() {
        let err = table().validate("secret-looking-token").unwrap_err().to_string();
        assert!(!err.contains("secret-looking-token"));
    }
}
