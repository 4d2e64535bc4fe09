//! The proxy's configuration: one document, read from a file in standalone
//! mode and rendered into a ConfigMap by the operator.
//!
//! Parsing is a pure function from text to [`ProxyConfig`] ([`ProxyConfig::from_yaml`]),
//! so it is tested without touching the file system. Secrets are never in this
//! document: the upstream credential and TLS keys are file paths (mounted
//! Secrets), and static tokens appear only as SHA-256 hashes.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use gatehouse_crds::{
    PolicySpec,
    connection::{RecordingMode, TlsMode},
};
use serde::{Deserialize, Serialize};

/// Why a configuration was refused. The last good configuration stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The document is not valid YAML for this schema.
    #[error("the configuration does not parse: {0}")]
    Parse(#[from] serde_norway::Error),
    /// The document parses but says something impossible.
    #[error("the configuration is invalid: {0}")]
    Invalid(String),
    /// The file could not be read.
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The whole proxy configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyConfig {
    /// Which Connection this proxy serves; names it in logs, metrics and recordings.
    pub connection: ConnectionName,
    /// Where agents connect.
    pub listen: Listen,
    /// Health, readiness and metrics endpoint.
    #[serde(default)]
    pub admin: Admin,
    /// The target database and the credential the proxy injects.
    pub upstream: Upstream,
    /// How callers prove who they are.
    pub auth: Auth,
    /// The Policies that apply to this Connection, already selected.
    #[serde(default)]
    pub policies: Vec<NamedPolicy>,
    /// Settings for the Policies' `masking`.
    #[serde(default)]
    pub masking: MaskingSettings,
    /// Session recording; off when absent.
    #[serde(default = "Recording::off")]
    pub recording: Recording,
    /// Limits that protect the proxy from slow or hostile clients.
    #[serde(default)]
    pub limits: Limits,
    /// Just-in-time approvals: how long a held statement waits, and how long
    /// its ApprovalRequest lives.
    #[serde(default)]
    pub approval: ApprovalSettings,
}

/// Timing of just-in-time approvals (the Connection's `spec.approval`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalSettings {
    /// How long a statement that needs approval is held before it is refused.
    #[serde(default = "default_hold_timeout", with = "humantime_serde")]
    pub hold_timeout: Duration,
    /// How long an ApprovalRequest stays valid.
    #[serde(default = "default_approval_ttl", with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for ApprovalSettings {
    fn default() -> Self {
        ApprovalSettings {
            hold_timeout: default_hold_timeout(),
            ttl: default_approval_ttl(),
        }
    }
}

fn default_hold_timeout() -> Duration {
    Duration::from_secs(300)
}

fn default_approval_ttl() -> Duration {
    Duration::from_secs(3600)
}

/// The Connection a proxy serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionName {
    /// Namespace of the Connection (`standalone` outside Kubernetes).
    pub namespace: String,
    /// Name of the Connection.
    pub name: String,
    /// `metadata.uid` of the Connection (rendered by the operator):
    /// ApprovalRequests are bound to it, so none carries over to a
    /// Connection deleted and created again under the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// The client-facing listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listen {
    /// Address and port, e.g. `0.0.0.0:5432`.
    pub address: SocketAddr,
    /// TLS for clients; required unless `allowPlaintext` is set.
    #[serde(default)]
    pub tls: Option<ServerTls>,
    /// Accept clients without TLS. Only for loopback or a trusted network:
    /// the caller's token crosses the wire as its password.
    #[serde(default)]
    pub allow_plaintext: bool,
}

/// A certificate and key the proxy presents, and optionally a CA for client certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTls {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// PEM CA bundle; when set, client certificates it signed authenticate (mTLS).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// The admin endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Admin {
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub address: SocketAddr,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            address: SocketAddr::from(([0, 0, 0, 0], 9090)),
        }
    }
}

/// The target database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Upstream {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// Database name; the client's requested database is ignored.
    pub database: String,
    /// TLS to the target.
    pub tls: UpstreamTls,
    /// The credential the proxy injects, as files (a mounted Secret). Read
    /// for every new upstream connection, so a rotated Secret takes effect
    /// without a restart.
    pub credentials: CredentialFiles,
}

fn default_pg_port() -> u16 {
    5432
}

/// TLS settings towards the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamTls {
    /// `disable`, `require` or `verify-full`.
    pub mode: TlsMode,
    /// PEM CA bundle for `verify-full`; the system roots when absent.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// Where the injected credential is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialFiles {
    /// File holding the user name.
    pub username_file: PathBuf,
    /// File holding the password.
    pub password_file: PathBuf,
}

/// Identity validators; a caller is accepted by the first that recognises its token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Auth {
    /// Tokens known by their SHA-256 (standalone mode).
    #[serde(default)]
    pub static_tokens: Vec<StaticToken>,
    /// Kubernetes TokenReview of ServiceAccount tokens.
    #[serde(default)]
    pub token_review: Option<TokenReview>,
    /// OIDC JWTs checked against a JWKS.
    #[serde(default)]
    pub oidc: Option<Oidc>,
}

/// A static token, by hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticToken {
    /// Lower-case hex SHA-256 of the token (`printf %s "$TOKEN" | sha256sum`).
    pub sha256: String,
    /// The username the token stands for.
    pub username: String,
    /// The groups it stands for.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// Kubernetes TokenReview settings: ServiceAccount tokens (any JWT whose
/// issuer is not the OIDC issuer) are checked by the API server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenReview {
    /// The audience tokens must be issued for
    /// (`kubectl create token SA --audience gatehouse`).
    #[serde(default = "default_audience")]
    pub audience: String,
    /// A kubeconfig whose identity may create `tokenreviews`
    /// (ClusterRole `system:auth-delegator`), for a proxy outside the cluster
    /// and for tests. Unset: the in-cluster ServiceAccount, or `KUBECONFIG`.
    /// Read when the configuration is loaded, so a missing or broken file
    /// refuses the configuration.
    #[serde(default)]
    pub kubeconfig_file: Option<PathBuf>,
    /// The longest an accepted token is trusted without asking the API server
    /// again (never past the token's own expiry). It bounds how long a token
    /// of a deleted ServiceAccount or Pod keeps working; `0s` asks every time.
    #[serde(default = "default_review_cache_ttl", with = "humantime_serde")]
    pub cache_ttl: Duration,
}

fn default_audience() -> String {
    "gatehouse".to_owned()
}

fn default_review_cache_ttl() -> Duration {
    Duration::from_secs(600)
}

/// The longest `auth.tokenReview.cacheTtl` allowed.
pub const MAX_REVIEW_CACHE_TTL: Duration = Duration::from_secs(3600);

/// OIDC settings: JWTs whose `iss` is `issuer`, verified against a JWKS file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Oidc {
    /// Expected `iss`; JWTs with this issuer are checked here and nowhere else.
    pub issuer: String,
    /// Accepted `aud` values: a token must name at least one.
    pub audiences: Vec<String>,
    /// A JWKS document on disk (the issuer's public keys). Read when the
    /// configuration is loaded or reloaded; a file that does not parse, or
    /// holds no usable signing key, refuses the configuration. The algorithm
    /// of each key comes from the key (its `alg`, else its type and curve);
    /// HMAC (`HS*`) is accepted only for an `oct` key listed with an `HS*`
    /// `alg`, and never with a public key.
    pub jwks_file: PathBuf,
    /// Claim holding the username (a string).
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    /// Claim holding the groups (an array of strings; missing means none).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "default_skew", with = "humantime_serde")]
    pub clock_skew: Duration,
}

fn default_username_claim() -> String {
    "sub".to_owned()
}

fn default_groups_claim() -> String {
    "groups".to_owned()
}

fn default_skew() -> Duration {
    Duration::from_secs(60)
}

/// A Policy by name, as the operator selected it for this Connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamedPolicy {
    /// Name of the Policy object.
    pub name: String,
    /// Its spec (`connectionSelector` was already applied by the operator).
    pub spec: PolicySpec,
}

/// Settings of masking that are the proxy's, not a Policy's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MaskingSettings {
    /// The key of the `hash` strategy's HMAC-SHA-256 (a mounted Secret; at
    /// least 16 bytes). Required when a Policy uses `hash`: equal values
    /// must hash alike across proxies, and nobody without the key can test
    /// a guess.
    #[serde(default)]
    pub hash_key_file: Option<PathBuf>,
    /// The largest value the detectors scan, in bytes. A larger value
    /// follows the Policy's `failureMode`.
    #[serde(default = "default_scan_limit")]
    pub scan_limit_bytes: usize,
}

/// 16 MiB: far above any credential or document a detector looks for, and
/// small enough that scanning one value stays in the milliseconds.
fn default_scan_limit() -> usize {
    16 << 20
}

impl Default for MaskingSettings {
    fn default() -> Self {
        MaskingSettings {
            hash_key_file: None,
            scan_limit_bytes: default_scan_limit(),
        }
    }
}

/// Session recording. Without a `recording` block nothing is recorded (the
/// operator always writes one); with one, `mode` defaults to `required`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Recording {
    /// `required` (new sessions are refused while the spool is full),
    /// `bestEffort` (events are dropped and counted) or `off`.
    #[serde(default)]
    pub mode: RecordingMode,
    /// The ed25519 private key (PKCS#8 PEM, `openssl genpkey -algorithm
    /// ed25519`) that signs each session's manifest. Required unless `off`.
    #[serde(default)]
    pub signing_key_file: Option<PathBuf>,
    /// Where events go first.
    #[serde(default = "default_spool_directory")]
    pub spool_directory: PathBuf,
    /// The most the spool holds.
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
    /// Where recordings are kept without `s3`: a local folder.
    #[serde(default = "default_recordings_directory")]
    pub directory: PathBuf,
    /// An S3-compatible bucket for recordings.
    #[serde(default)]
    pub s3: Option<S3Store>,
    /// A chunk is cut and uploaded at this size (uncompressed)...
    #[serde(default = "default_chunk_bytes")]
    pub chunk_bytes: u64,
    /// ...or at this age, so long sessions upload as they go.
    #[serde(default = "default_chunk_interval", with = "humantime_serde")]
    pub chunk_interval: Duration,
    /// Result rows recorded per statement (all are counted).
    #[serde(default = "default_max_rows")]
    pub max_rows_per_statement: u64,
    /// Bytes of result rows recorded per statement.
    #[serde(default = "default_max_row_bytes")]
    pub max_bytes_per_statement: u64,
}

/// An S3-compatible bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct S3Store {
    /// The bucket.
    pub bucket: String,
    /// `https://...` of an S3-compatible server; AWS when absent.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The region.
    #[serde(default = "default_region")]
    pub region: String,
    /// Path-style addressing, which most S3-compatible servers want.
    #[serde(default)]
    pub path_style: bool,
    /// Prefix of every key.
    #[serde(default)]
    pub prefix: String,
    /// File holding the access key id (a mounted Secret).
    pub access_key_id_file: PathBuf,
    /// File holding the secret access key.
    pub secret_access_key_file: PathBuf,
}

impl Recording {
    /// No recording: what a configuration without a `recording` block means.
    pub fn off() -> Recording {
        Recording {
            mode: RecordingMode::Off,
            ..Recording::default()
        }
    }
}

impl Default for Recording {
    fn default() -> Self {
        Recording {
            mode: RecordingMode::default(),
            signing_key_file: None,
            spool_directory: default_spool_directory(),
            spool_max_bytes: default_spool_max_bytes(),
            directory: default_recordings_directory(),
            s3: None,
            chunk_bytes: default_chunk_bytes(),
            chunk_interval: default_chunk_interval(),
            max_rows_per_statement: default_max_rows(),
            max_bytes_per_statement: default_max_row_bytes(),
        }
    }
}

fn default_spool_directory() -> PathBuf {
    PathBuf::from("/var/lib/gatehouse/spool")
}

fn default_recordings_directory() -> PathBuf {
    PathBuf::from("/var/lib/gatehouse/recordings")
}

fn default_spool_max_bytes() -> u64 {
    1 << 30
}

fn default_chunk_bytes() -> u64 {
    4 << 20
}

fn default_chunk_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_max_rows() -> u64 {
    100
}

fn default_max_row_bytes() -> u64 {
    64 << 10
}

fn default_region() -> String {
    "us-east-1".to_owned()
}

/// Limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Client connections served at once; more are refused with SQLSTATE 53300.
    pub max_connections: usize,
    /// Time a client has to finish TLS, startup and authentication.
    #[serde(with = "humantime_serde")]
    pub startup_timeout: Duration,
    /// A session with no traffic this long, while the server owes it no
    /// answer, is closed with SQLSTATE 57P05; zero disables the limit.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Largest message a client may send.
    pub max_message_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1000,
            startup_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(3600),
            max_message_bytes: 64 << 20,
        }
    }
}

impl ProxyConfig {
    /// Parses and checks a configuration document.
    pub fn from_yaml(text: &str) -> Result<ProxyConfig, ConfigError> {
        let config: ProxyConfig = serde_norway::from_str(text)?;
        config.check()?;
        Ok(config)
    }

    /// Reads, parses and checks a configuration file.
    pub fn from_file(path: &std::path::Path) -> Result<ProxyConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |why: String| Err(ConfigError::Invalid(why));
        if self.listen.tls.is_none() && !self.listen.allow_plaintext {
            return invalid(
                "listen.tls is not set and listen.allowPlaintext is false: clients could not connect; \
                 configure a certificate or allow plaintext on a trusted network"
                    .into(),
            );
        }
        if self.auth.static_tokens.is_empty() && self.auth.token_review.is_none() && self.auth.oidc.is_none()
        {
            return invalid("auth names no validator: set staticTokens, tokenReview or oidc".into());
        }
        for (i, token) in self.auth.static_tokens.iter().enumerate() {
            let hex_ok = token.sha256.len() == 64
                && token
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hex_ok {
                return invalid(format!(
                    "auth.staticTokens[{i}].sha256 must be 64 lower-case hex digits (the SHA-256 of the token, never the token)"
                ));
            }
            if token.username.is_empty() {
                return invalid(format!("auth.staticTokens[{i}].username is empty"));
            }
        }
        if let Some(review) = &self.auth.token_review {
            if review.audience.is_empty() {
                return invalid("auth.tokenReview.audience is empty".into());
            }
            if review.cache_ttl > MAX_REVIEW_CACHE_TTL {
                return invalid(format!(
                    "auth.tokenReview.cacheTtl is {}; at most {} (a token of a deleted ServiceAccount works that long)",
                    humantime::format_duration(review.cache_ttl),
                    humantime::format_duration(MAX_REVIEW_CACHE_TTL)
                ));
            }
        }
        if let Some(oidc) = &self.auth.oidc {
            if oidc.issuer.is_empty() {
                return invalid("auth.oidc.issuer is empty".into());
            }
            if oidc.audiences.is_empty() || oidc.audiences.iter().any(String::is_empty) {
                return invalid("auth.oidc.audiences must list at least one non-empty audience".into());
            }
            if oidc.username_claim.is_empty() {
                return invalid("auth.oidc.usernameClaim is empty".into());
            }
        }
        if self.recording.mode != RecordingMode::Off && self.recording.signing_key_file.is_none() {
            return invalid(
                "recording.signingKeyFile is required unless recording.mode is off: every session's manifest is signed"
                    .into(),
            );
        }
        if let Some(s3) = &self.recording.s3
            && s3.bucket.is_empty()
        {
            return invalid("recording.s3.bucket is empty".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for policy in &self.policies {
            if !names.insert(&policy.name) {
                return invalid(format!("policy {} appears twice", policy.name));
            }
        }
        if let Some(tls) = &self.listen.tls {
            let empty = |p: &PathBuf| p.as_os_str().is_empty();
            if empty(&tls.cert_file) || empty(&tls.key_file) || tls.client_ca_file.as_ref().is_some_and(empty)
            {
                return invalid(
                    "listen.tls.certFile, keyFile and clientCaFile (when set) must be file paths".into(),
                );
            }
        }
        if self.upstream.tls.ca_file.is_some() && self.upstream.tls.mode != TlsMode::VerifyFull {
            return invalid(format!(
                "upstream.tls.caFile is used only with mode verify-full (mode {} does not verify the server certificate); \
                 remove caFile or set mode: verify-full",
                crate::tls::mode_name(self.upstream.tls.mode)
            ));
        }
        if self.upstream.tls.mode == TlsMode::VerifyFull
            && rustls_pki_types::ServerName::try_from(self.upstream.host.as_str()).is_err()
        {
            return invalid(format!(
                "upstream.host {:?} is neither a DNS name nor an IP address, so verify-full cannot check the certificate against it",
                self.upstream.host
            ));
        }
        if self.limits.max_connections == 0 || self.limits.max_message_bytes < 1024 {
            return invalid(
                "limits.maxConnections must be at least 1 and limits.maxMessageBytes at least 1024".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../config/proxy/standalone.yaml");

    #[test]
    fn the_documented_example_parses() {
        let config = ProxyConfig::from_yaml(EXAMPLE).unwrap();
        assert_eq!(config.connection.name, "orders-db");
        assert_eq!(config.upstream.tls.mode, TlsMode::Disable);
        assert_eq!(config.auth.static_tokens.len(), 1);
        assert_eq!(config.policies.len(), 2);
        assert_eq!(config.limits.startup_timeout, Duration::from_secs(10));
        assert_eq!(config.admin.address.port(), 9090);
    }

    fn example_with(edit: impl FnOnce(&mut ProxyConfig)) -> Result<ProxyConfig, ConfigError> {
        let mut config = ProxyConfig::from_yaml(EXAMPLE).unwrap();
        edit(&mut config);
        ProxyConfig::from_yaml(&serde_norway::to_string(&config).unwrap())
    }

    #[test]
    fn a_round_trip_keeps_everything() {
        let config = ProxyConfig::from_yaml(EXAMPLE).unwrap();
        assert_eq!(example_with(|_| {}).unwrap(), config);
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let text = EXAMPLE.replace("allowPlaintext:", "allowPlainText:");
        let err = ProxyConfig::from_yaml(&text).unwrap_err().to_string();
        assert!(err.contains("allowPlainText"), "{err}");
    }

    #[test]
    fn token_review_and_oidc_settings_are_checked() {
        let review = |c: &mut ProxyConfig| {
            c.auth.token_review = Some(TokenReview {
                audience: "gatehouse".into(),
                kubeconfig_file: None,
                cache_ttl: Duration::from_secs(600),
            })
        };
        let oidc = |c: &mut ProxyConfig| {
            c.auth.oidc = Some(Oidc {
                issuer: "https://issuer.example.com".into(),
                audiences: vec!["gatehouse".into()],
                jwks_file: "/etc/gatehouse/jwks.json".into(),
                username_claim: default_username_claim(),
                groups_claim: default_groups_claim(),
                clock_skew: default_skew(),
            })
        };
        let both = example_with(|c| {
            review(c);
            oidc(c);
        })
        .unwrap();
        assert_eq!(
            both.auth.token_review.map(|r| r.cache_ttl),
            Some(Duration::from_secs(600))
        );
        type Edit = fn(&mut ProxyConfig);
        let cases: [(&str, Edit); 4] = [
            ("cacheTtl is 2h", |c| {
                if let Some(r) = &mut c.auth.token_review {
                    r.cache_ttl = Duration::from_secs(7200)
                }
            }),
            ("tokenReview.audience is empty", |c| {
                if let Some(r) = &mut c.auth.token_review {
                    r.audience.clear()
                }
            }),
            ("at least one non-empty audience", |c| {
                if let Some(o) = &mut c.auth.oidc {
                    o.audiences.clear()
                }
            }),
            ("oidc.issuer is empty", |c| {
                if let Some(o) = &mut c.auth.oidc {
                    o.issuer.clear()
                }
            }),
        ];
        for (expected, edit) in cases {
            let err = example_with(|c| {
                review(c);
                oidc(c);
                edit(c);
            })
            .unwrap_err()
            .to_string();
            assert!(err.contains(expected), "expected {expected:?} in {err}");
        }
        // Defaults: audience gatehouse, ten minutes, claims sub and groups.
        let text = EXAMPLE.replace(
            "  staticTokens:",
            "  tokenReview: {}\n  oidc: {issuer: https://i.example, audiences: [a], jwksFile: /j}\n  staticTokens:",
        );
        let config = ProxyConfig::from_yaml(&text).unwrap();
        let review = config.auth.token_review.unwrap();
        assert_eq!(
            (review.audience.as_str(), review.cache_ttl),
            ("gatehouse", Duration::from_secs(600))
        );
        let oidc = config.auth.oidc.unwrap();
        assert_eq!(
            (oidc.username_claim.as_str(), oidc.groups_claim.as_str()),
            ("sub", "groups")
        );
    }

    #[test]
    fn impossible_settings_are_refused_with_a_reason() {
        type Edit = fn(&mut ProxyConfig);
        let cases: [(&str, Edit); 8] = [
            ("caFile is used only with mode verify-full", |c| {
                c.upstream.tls.mode = TlsMode::Require;
                c.upstream.tls.ca_file = Some("/ca.pem".into());
            }),
            ("allowPlaintext", |c| c.listen.allow_plaintext = false),
            ("auth names no validator", |c| c.auth.static_tokens.clear()),
            ("64 lower-case hex digits", |c| {
                c.auth.static_tokens[0].sha256 = "my-token".into()
            }),
            ("appears twice", |c| c.policies.push(c.policies[0].clone())),
            ("maxConnections", |c| c.limits.max_connections = 0),
            ("must be file paths", |c| {
                c.listen.tls = Some(ServerTls {
                    cert_file: "/cert.pem".into(),
                    key_file: "".into(),
                    client_ca_file: None,
                })
            }),
            ("neither a DNS name nor an IP address", |c| {
                c.upstream.tls.mode = TlsMode::VerifyFull;
                c.upstream.host = "db host".into();
            }),
        ];
        for (expected, edit) in cases {
            let err = example_with(edit).unwrap_err().to_string();
            assert!(err.contains(expected), "expected {expected:?} in {err}");
        }
    }

    #[test]
    fn tls_on_both_sides_is_accepted() {
        let config = example_with(|c| {
            c.listen.allow_plaintext = false;
            c.listen.tls = Some(ServerTls {
                cert_file: "/tls/tls.crt".into(),
                key_file: "/tls/tls.key".into(),
                client_ca_file: Some("/tls/clients-ca.crt".into()),
            });
            c.upstream.tls.mode = TlsMode::VerifyFull;
            c.upstream.tls.ca_file = Some("/tls/db-ca.crt".into());
        })
        .unwrap();
        assert_eq!(config.upstream.tls.mode, TlsMode::VerifyFull);
        example_with(|c| c.upstream.tls.mode = TlsMode::Require).unwrap();
    }
}
