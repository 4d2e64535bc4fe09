//! Kubernetes ServiceAccount tokens, checked by the API server with a
//! TokenReview (`authentication.k8s.io/v1`), the way the API server's own
//! delegated authentication works.
//!
//! Accepted tokens are remembered, keyed by their SHA-256 (never the token),
//! until the token expires but at most `cacheTtl`, so a token bound to a
//! deleted Pod or ServiceAccount stops working within that time. Refusals are
//! not remembered: a token refused once is asked about again, which costs the
//! caller a round trip and gives an attacker nothing.

use std::{
    path::PathBuf,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::{
    Api,
    api::PostParams,
    config::{KubeConfigOptions, Kubeconfig},
};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use super::{AuthError, Identity, SetupError, Unverified};
use crate::config;

/// Accepted tokens remembered at most; the least used go first.
const CACHE_ENTRIES: usize = 10_000;
/// How long one TokenReview may take before the caller is told to retry.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
/// Who could not answer, in the words of [`AuthError::Unavailable`].
const VERIFIER: &str = "the Kubernetes API server";

/// An accepted token's identity and when to ask again.
#[derive(Debug, Clone)]
struct Accepted {
    identity: Identity,
    until: Instant,
}

/// The TokenReview validator: settings, a Kubernetes client built on first
/// use, and the cache of accepted tokens.
pub struct TokenReviewer {
    settings: config::TokenReview,
    /// The kubeconfig file's text, read with the configuration.
    kubeconfig: Option<(PathBuf, String)>,
    client: OnceCell<kube::Client>,
    accepted: quick_cache::sync::Cache<[u8; 32], Accepted>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("settings", &self.settings)
            .field("client_built", &self.client.initialized())
            .field("accepted", &self.accepted.len())
            .finish_non_exhaustive()
    }
}

impl TokenReviewer {
    /// A reviewer for `settings`; reads and parses the kubeconfig file now.
    pub fn new(settings: config::TokenReview) -> Result<TokenReviewer, SetupError> {
        let kubeconfig = match &settings.kubeconfig_file {
            None => None,
            Some(path) => {
                let failed = |reason: String| SetupError::Kubeconfig {
                    path: path.clone(),
                    reason,
                };
                let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
                Kubeconfig::from_yaml(&text).map_err(|e| failed(e.to_string()))?;
                Some((path.clone(), text))
            }
        };
        Ok(TokenReviewer {
            settings,
            kubeconfig,
            client: OnceCell::new(),
            accepted: quick_cache::sync::Cache::new(CACHE_ENTRIES),
        })
    }

    /// Whether `other` was built from the same settings and kubeconfig.
    pub fn same_settings(&self, other: &TokenReviewer) -> bool {
        self.settings == other.settings && self.kubeconfig == other.kubeconfig
    }

    /// Asks the API server about `token` (or remembers its answer).
    /// `unverified` is the token's payload read without checks; it only
    /// words a refusal and, once the API server accepted the token, gives
    /// its expiry.
    pub(crate) async fn validate(&self, token: &str, unverified: &Unverified) -> Result<Identity, AuthError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(identity) = self.recall(&key, Instant::now()) {
            return Ok(identity);
        }
        let status = self.review(token).await?;
        let audience = &self.settings.audience;
        let accepted = status.authenticated == Some(true)
            && status
                .audiences
                .as_ref()
                .is_some_and(|a| a.iter().any(|a| a == audience));
        let user = status.user.filter(|_| accepted);
        let Some(username) = user
            .as_ref()
            .and_then(|u| u.username.clone())
            .filter(|u| !u.is_empty())
        else {
            tracing::debug!(
                reason = status
                    .error
                    .as_deref()
                    .map(|e| redact(e, token))
                    .unwrap_or_default(),
                "TokenReview refused the token"
            );
            return Err(refusal(unverified, audience, unix_now()));
        };
        let identity = Identity {
            username,
            groups: user.and_then(|u| u.groups).unwrap_or_default(),
        };
        // exp is read from the unverified payload, but only now that the API
        // server has accepted this very token: it is the token's own expiry.
        if let Some(ttl) = cache_ttl(unverified.exp, unix_now(), self.settings.cache_ttl) {
            self.remember(key, identity.clone(), Instant::now() + ttl);
        }
        Ok(identity)
    }

    async fn review(&self, token: &str) -> Result<TokenReviewStatus, AuthError> {
        let unavailable = |what: &str, error: String| {
            tracing::warn!(error = %redact(&error, token), "{what}; telling the client to retry");
            AuthError::Unavailable { verifier: VERIFIER }
        };
        let client = self
            .client()
            .await
            .map_err(|e| unavailable("cannot build the Kubernetes client for TokenReview", e))?;
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: Some(vec![self.settings.audience.clone()]),
            },
            ..Default::default()
        };
        let created = tokio::time::timeout(
            REVIEW_TIMEOUT,
            Api::<TokenReview>::all(client).create(&PostParams::default(), &review),
        )
        .await
        .map_err(|_| {
            unavailable(
                "TokenReview timed out",
                format!("no answer within {REVIEW_TIMEOUT:?}"),
            )
        })?
        .map_err(|e| unavailable("TokenReview failed", e.to_string()))?;
        Ok(created.status.unwrap_or_default())
    }

    async fn client(&self) -> Result<kube::Client, String> {
        self.client
            .get_or_try_init(|| async {
                match &self.kubeconfig {
                    None => kube::Client::try_default().await.map_err(|e| e.to_string()),
                    Some((path, text)) => {
                        let failed = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
                        let kubeconfig = Kubeconfig::from_yaml(text).map_err(|e| failed(&e))?;
                        let config =
                            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                                .await
                                .map_err(|e| failed(&e))?;
                        kube::Client::try_from(config).map_err(|e| failed(&e))
                    }
                }
            })
            .await
            .cloned()
    }

    fn recall(&self, key: &[u8; 32], now: Instant) -> Option<Identity> {
        let hit = self.accepted.get(key)?;
        if hit.until > now {
            Some(hit.identity)
        } else {
            self.accepted.remove(key);
            None
        }
    }

    fn remember(&self, key: [u8; 32], identity: Identity, until: Instant) {
        self.accepted.insert(key, Accepted { identity, until });
    }
}

/// How long an accepted token may be remembered: until its `exp`, at most
/// `max`; `None` when it must not be (no time left, or caching is off). A
/// token without `exp` (a legacy Secret-based token) is remembered for `max`.
pub fn cache_ttl(exp: Option<u64>, now_unix: u64, max: Duration) -> Option<Duration> {
    let left = match exp {
        Some(exp) => Duration::from_secs(exp.checked_sub(now_unix)?),
        None => max,
    };
    Some(left.min(max)).filter(|ttl| !ttl.is_zero())
}

/// The words of a refusal. The API server says only "not authenticated";
/// the unverified payload of what looks like a ServiceAccount token tells the
/// caller what to fix. It cannot make a refusal an acceptance. Other JWTs
/// (say, from an OIDC issuer this Connection does not trust) are just not valid.
fn refusal(unverified: &Unverified, audience: &str, now_unix: u64) -> AuthError {
    if !unverified.looks_like_kubernetes() {
        return AuthError::Rejected;
    }
    if let Some(auds) = &unverified.aud
        && !auds.iter().any(|a| a == audience)
    {
        return AuthError::wrong_audience(&[audience.to_owned()]);
    }
    if unverified.exp.is_some_and(|exp| exp <= now_unix) {
        return AuthError::Expired;
    }
    AuthError::Rejected
}

/// `text` with any occurrence of `token` removed: errors of the Kubernetes
/// client are logged, and must never carry the token even if a server echoes it.
fn redact(text: &str, token: &str) -> String {
    text.replace(token, "<token>")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(600);

    #[test]
    fn the_cache_keeps_a_token_until_it_expires_but_no_longer_than_the_cap() {
        let now = 1_000_000;
        assert_eq!(cache_ttl(Some(now + 60), now, MAX), Some(Duration::from_secs(60)));
        assert_eq!(cache_ttl(Some(now + 3600), now, MAX), Some(MAX));
        assert_eq!(cache_ttl(None, now, MAX), Some(MAX));
        // Nothing left, or already past: not remembered.
        assert_eq!(cache_ttl(Some(now), now, MAX), None);
        assert_eq!(cache_ttl(Some(now - 5), now, MAX), None);
        assert_eq!(cache_ttl(Some(0), now, MAX), None);
        // Caching off.
        assert_eq!(cache_ttl(Some(now + 60), now, Duration::ZERO), None);
        assert_eq!(cache_ttl(None, now, Duration::ZERO), None);
    }

    fn reviewer() -> TokenReviewer {
        TokenReviewer::new(config::TokenReview {
            audience: "gatehouse".into(),
            kubeconfig_file: None,
            cache_ttl: MAX,
        })
        .unwrap()
    }

    #[test]
    fn remembered_identities_are_forgotten_when_their_time_is_up() {
        let reviewer = reviewer();
        let key: [u8; 32] = Sha256::digest(b"a-token").into();
        let identity = Identity {
            username: "system:serviceaccount:agents:planner".into(),
            groups: vec!["system:serviceaccounts".into()],
        };
        let start = Instant::now();
        reviewer.remember(key, identity.clone(), start + Duration::from_secs(60));
        assert_eq!(reviewer.recall(&key, start), Some(identity.clone()));
        assert_eq!(
            reviewer.recall(&key, start + Duration::from_secs(59)),
            Some(identity)
        );
        assert_eq!(reviewer.recall(&key, start + Duration::from_secs(60)), None);
        // Forgotten for good, not only hidden.
        assert_eq!(reviewer.recall(&key, start), None);
        let other: [u8; 32] = Sha256::digest(b"another-token").into();
        assert_eq!(reviewer.recall(&other, start), None);
    }

    #[test]
    fn refusals_say_what_to_fix_without_trusting_the_payload() {
        let now = 1_000_000;
        let peek = |aud: Option<&[&str]>, exp: Option<u64>| Unverified {
            iss: Some("https://kubernetes.default.svc".into()),
            exp,
            aud: aud.map(|a| a.iter().map(|s| s.to_string()).collect()),
            kubernetes: Some(serde_json::json!({"namespace": "agents"})),
        };
        assert!(matches!(
            refusal(&peek(Some(&["https://kubernetes.default.svc"]), Some(now + 60)), "gatehouse", now),
            AuthError::WrongAudience { expected } if expected == "\"gatehouse\""
        ));
        assert_eq!(
            refusal(&peek(Some(&["gatehouse"]), Some(now - 1)), "gatehouse", now),
            AuthError::Expired
        );
        assert_eq!(
            refusal(&peek(Some(&["x", "gatehouse"]), Some(now + 60)), "gatehouse", now),
            AuthError::Rejected
        );
        assert_eq!(refusal(&peek(None, None), "gatehouse", now), AuthError::Rejected);
        // Not a ServiceAccount token: no hint at all.
        let oidc = Unverified {
            iss: Some("https://idp.example.com".into()),
            kubernetes: None,
            ..peek(Some(&["orders"]), Some(now - 1))
        };
        assert_eq!(refusal(&oidc, "gatehouse", now), AuthError::Rejected);
    }

    #[test]
    fn settings_decide_whether_a_reload_keeps_the_reviewer() {
        let a = reviewer();
        assert!(a.same_settings(&reviewer()));
        let mut other = config::TokenReview {
            audience: "gatehouse".into(),
            kubeconfig_file: None,
            cache_ttl: MAX,
        };
        other.audience = "orders".into();
        assert!(!a.same_settings(&TokenReviewer::new(other).unwrap()));
    }

    #[test]
    fn a_missing_or_broken_kubeconfig_refuses_the_configuration() {
        let dir = std::env::temp_dir().join(format!("gatehouse-review-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let broken = dir.join("kubeconfig");
        std::fs::write(&broken, "clusters: {not: [a, list").unwrap();
        for path in [dir.join("missing"), broken] {
            let err = TokenReviewer::new(config::TokenReview {
                audience: "gatehouse".into(),
                kubeconfig_file: Some(path.clone()),
                cache_ttl: MAX,
            })
            .unwrap_err()
            .to_string();
            assert!(err.contains(&path.display().to_string()), "{err}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn redaction_removes_the_token() {
        assert_eq!(
            redact("bad token abc.def.ghi here", "abc.def.ghi"),
            "bad token <token> here"
        );
    }
}
