//! Who the caller is. A client presents a bearer token as its password; the
//! [`Authenticator`] turns it into an [`Identity`] (a username and groups)
//! that Policy subjects match against.
//!
//! Which validator decides:
//!
//! 1. a static token, looked up by its SHA-256 (standalone mode);
//! 2. a JWT whose `iss` is the configured OIDC issuer: [`OidcValidator`],
//!    against the keys of a JWKS file;
//! 3. any other JWT: Kubernetes TokenReview ([`TokenReviewer`]), when
//!    configured;
//! 4. anything else is refused.
//!
//! Refusals ([`AuthError`]) say what is wrong in words the caller can act on,
//! and never contain the token. mTLS arrives with the TLS work.

mod client_cert;
mod oidc;
mod static_tokens;
mod token_review;

use std::{path::PathBuf, sync::Arc};

use serde::Deserialize;

pub use client_cert::{ClientCertError, identity_from_certificate};
pub use oidc::OidcValidator;
pub use static_tokens::StaticTokens;
pub use token_review::{TokenReviewer, cache_ttl};

/// An authenticated caller: a username plus groups.
pub use crate::policy::Identity;
use crate::{config::Auth, pg::sqlstate};

/// Why a token was refused. The message never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token was presented.
    #[error("no token: connect with your Gatehouse token as the password")]
    Missing,
    /// No validator accepts the token: unknown, altered, badly signed, or
    /// from an issuer this Connection does not trust.
    #[error("the token is not valid for this Connection")]
    Rejected,
    /// The token was genuine but its `exp` has passed.
    #[error("the token has expired; get a new one")]
    Expired,
    /// The token's `nbf` is further in the future than the clock skew allows.
    #[error(
        "the token is not valid yet (its nbf is in the future); check the clocks of the issuer and the proxy"
    )]
    NotYetValid,
    /// The token was issued for another audience.
    #[error("the token was issued for another audience; this Connection accepts tokens for {expected}")]
    WrongAudience {
        /// The audiences accepted, quoted and joined with "or".
        expected: String,
    },
    /// A genuine token whose claims cannot name a caller.
    #[error("the token's claim {claim:?} must be {expected}")]
    BadClaim {
        /// The claim.
        claim: String,
        /// What it must be.
        expected: &'static str,
    },
    /// The verifier could not answer (the Kubernetes API server is down,
    /// slow, or refuses the proxy): the token may well be valid.
    #[error("cannot verify the token now: {verifier} did not answer; retry in a moment")]
    Unavailable {
        /// Who could not answer.
        verifier: &'static str,
    },
}

impl AuthError {
    /// The SQLSTATE the client sees: 28000 for a missing token, 28P01 for a
    /// wrong one (as PostgreSQL answers a wrong password), 57P03 when the
    /// verifier is unavailable.
    ///
    /// 57P03 (cannot_connect_now) is what PostgreSQL sends while it cannot
    /// take connections for a passing reason (starting up, in recovery);
    /// drivers and poolers treat it as "retry later", which is right here.
    /// A 28xxx code would tell the client its credential is wrong and make
    /// it give up or fetch a new token for nothing; 08006 (connection_failure)
    /// reads as a broken network path to the server.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            AuthError::Missing => sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            AuthError::Unavailable { .. } => sqlstate::CANNOT_CONNECT_NOW,
            AuthError::Rejected
            | AuthError::Expired
            | AuthError::NotYetValid
            | AuthError::WrongAudience { .. }
            | AuthError::BadClaim { .. } => sqlstate::INVALID_PASSWORD,
        }
    }

    fn wrong_audience(accepted: &[String]) -> AuthError {
        let expected = accepted
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(" or ");
        AuthError::WrongAudience { expected }
    }
}

/// Why the identity settings of a configuration cannot be put in force.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The JWKS file cannot be read or used.
    #[error("auth.oidc.jwksFile {path}: {reason}")]
    Jwks {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The kubeconfig for TokenReview cannot be read or parsed.
    #[error("auth.tokenReview.kubeconfigFile {path}: {reason}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The validators of one configuration, and the choice between them.
#[derive(Debug)]
pub struct Authenticator {
    static_tokens: StaticTokens,
    oidc: Option<OidcValidator>,
    token_review: Option<Arc<TokenReviewer>>,
}

impl Authenticator {
    /// Builds the validators of `auth`: reads the JWKS file and the
    /// kubeconfig now, so a configuration that cannot work is refused
    /// with the reason. The Kubernetes client itself is built on first use.
    pub fn new(auth: &Auth) -> Result<Authenticator, SetupError> {
        Ok(Authenticator {
            static_tokens: StaticTokens::new(&auth.static_tokens),
            oidc: auth.oidc.as_ref().map(OidcValidator::load).transpose()?,
            token_review: auth
                .token_review
                .as_ref()
                .map(|settings| TokenReviewer::new(settings.clone()).map(Arc::new))
                .transpose()?,
        })
    }

    /// Takes over the TokenReview client and its cache from the
    /// configuration this one replaces, when the TokenReview settings (and the
    /// kubeconfig file's content) are unchanged: a reload then neither drops
    /// the accepted tokens nor opens a new connection to the API server.
    /// When they changed, the new reviewer starts empty, because what the old
    /// one accepted was accepted for another audience or cluster.
    pub fn inherit(&mut self, previous: &Authenticator) {
        if let (Some(new), Some(old)) = (&self.token_review, &previous.token_review)
            && new.same_settings(old)
        {
            self.token_review = Some(old.clone());
        }
    }

    /// The identity `token` stands for.
    pub async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if let Ok(identity) = self.static_tokens.validate(token) {
            return Ok(identity);
        }
        // The issuer only routes the token to the validator that then checks
        // it in full; nothing else is trusted from the unverified payload.
        let Some(unverified) = Unverified::peek(token) else {
            return Err(AuthError::Rejected);
        };
        if let Some(oidc) = &self.oidc
            && unverified.iss.as_deref() == Some(oidc.issuer())
        {
            return oidc.validate(token);
        }
        match &self.token_review {
            Some(reviewer) => reviewer.validate(token, &unverified).await,
            None => Err(AuthError::Rejected),
        }
    }
}

/// The claims of a JWT read WITHOUT checking its signature. Used only to
/// choose a validator, to choose the words of a refusal, and (after the API
/// server accepted the token) to read its expiry; never to accept a caller.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Unverified {
    #[serde(default)]
    iss: Option<String>,
    #[serde(default, deserialize_with = "lenient_u64")]
    exp: Option<u64>,
    #[serde(default, deserialize_with = "string_or_list")]
    aud: Option<Vec<String>>,
    /// Present in every bound ServiceAccount token.
    #[serde(default, rename = "kubernetes.io")]
    kubernetes: Option<serde_json::Value>,
}

impl Unverified {
    /// The payload of `token` if it has the shape of a JWT with a JSON
    /// object as payload.
    pub(crate) fn peek(token: &str) -> Option<Unverified> {
        jsonwebtoken::dangerous::insecure_decode_claims::<Unverified>(token).ok()
    }

    /// Whether the token has the shape of a Kubernetes ServiceAccount token
    /// (bound, or a legacy Secret-based one).
    pub(crate) fn looks_like_kubernetes(&self) -> bool {
        self.kubernetes.is_some() || self.iss.as_deref() == Some("kubernetes/serviceaccount")
    }
}

fn lenient_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    // A non-numeric exp is no reason to fail the peek; it just is not known.
    let value = serde_json::Value::deserialize(d)?;
    Ok(value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u64)
    }))
}

fn string_or_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(match value {
        serde_json::Value::String(s) => Some(vec![s]),
        serde_json::Value::Array(items) => Some(
            items
                .into_iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
        ),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_follow_postgresql() {
        assert_eq!(AuthError::Missing.sqlstate(), "28000");
        for e in [
            AuthError::Rejected,
            AuthError::Expired,
            AuthError::NotYetValid,
            AuthError::wrong_audience(&["gatehouse".into()]),
            AuthError::BadClaim {
                claim: "sub".into(),
                expected: "a string",
            },
        ] {
            assert_eq!(e.sqlstate(), "28P01", "{e}");
        }
        assert_eq!(
            AuthError::Unavailable {
                verifier: "the Kubernetes API server"
            }
            .sqlstate(),
            "57P03"
        );
    }

    #[test]
    fn the_wrong_audience_message_names_the_accepted_ones() {
        let e = AuthError::wrong_audience(&["gatehouse".into(), "db".into()]).to_string();
        assert_eq!(
            e,
            r#"the token was issued for another audience; this Connection accepts tokens for "gatehouse" or "db""#
        );
    }

    #[test]
    fn peeking_reads_issuer_expiry_and_audiences_of_any_shape() {
        let payload = |json: &str| {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            format!(
                "{}.{}.sig",
                b64.encode(br#"{"alg":"RS256"}"#),
                b64.encode(json.as_bytes())
            )
        };
        let u = Unverified::peek(&payload(r#"{"iss":"a","exp":12,"aud":"x"}"#)).unwrap();
        assert_eq!(
            (u.iss.as_deref(), u.exp, u.aud),
            (Some("a"), Some(12), Some(vec!["x".to_owned()]))
        );
        let u = Unverified::peek(&payload(r#"{"exp":"soon","aud":["x","y"]}"#)).unwrap();
        assert_eq!((u.iss, u.exp, u.aud.map(|a| a.len())), (None, None, Some(2)));
        assert!(Unverified::peek("not-a-jwt").is_none());
        assert!(Unverified::peek(&payload("[1,2]")).is_none());
    }

    #[test]
    fn a_reload_keeps_the_reviewer_unless_its_settings_change() {
        let review = |audience: &str| Auth {
            token_review: Some(crate::config::TokenReview {
                audience: audience.into(),
                kubeconfig_file: None,
                cache_ttl: std::time::Duration::from_secs(600),
            }),
            ..Auth::default()
        };
        let reviewer = |a: &Authenticator| a.token_review.clone().unwrap();
        let old = Authenticator::new(&review("gatehouse")).unwrap();
        let mut same = Authenticator::new(&review("gatehouse")).unwrap();
        assert!(!Arc::ptr_eq(&reviewer(&old), &reviewer(&same)));
        same.inherit(&old);
        assert!(Arc::ptr_eq(&reviewer(&old), &reviewer(&same)));
        let mut changed = Authenticator::new(&review("orders")).unwrap();
        changed.inherit(&old);
        assert!(!Arc::ptr_eq(&reviewer(&old), &reviewer(&changed)));
        // Dropping TokenReview from the configuration drops the reviewer.
        let mut none = Authenticator::new(&Auth::default()).unwrap();
        none.inherit(&old);
        assert!(none.token_review.is_none());
    }

    #[tokio::test]
    async fn empty_static_and_opaque_tokens() {
        use sha2::{Digest, Sha256};
        let auth = Auth {
            static_tokens: vec![crate::config::StaticToken {
                sha256: hex::encode(Sha256::digest(b"opaque-agent-token")),
                username: "planner".into(),
                groups: vec![],
            }],
            token_review: None,
            oidc: None,
        };
        let authenticator = Authenticator::new(&auth).unwrap();
        assert_eq!(authenticator.authenticate("").await, Err(AuthError::Missing));
        assert_eq!(
            authenticator
                .authenticate("opaque-agent-token")
                .await
                .unwrap()
                .username,
            "planner"
        );
        assert_eq!(
            authenticator.authenticate("opaque-agent-tokeN").await,
            Err(AuthError::Rejected)
        );
        // A JWT with no validator for it.
        assert_eq!(
            authenticator
                .authenticate("eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4In0.c2ln")
                .await,
            Err(AuthError::Rejected)
        );
    }
}
