//! `Connection`: one target database and the proxy that guards it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::SecretReference;

/// Desired state of a Connection: the target, its credential and how sessions are guarded.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "gatehouse.dev",
    doc = "A target that agents reach only through a Gatehouse proxy. The operator runs a proxy Deployment and Service for each Connection; the proxy alone holds the credential from `credentialsRef` and applies every Policy that selects it.",
    version = "v1alpha1",
    kind = "Connection",
    namespaced,
    status = "ConnectionStatus",
    shortname = "gconn",
    category = "gatehouse",
    printcolumn(
        name = "Type",
        type_ = "string",
        json_path = ".spec.type",
        description = "Protocol of the target"
    ),
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.target.host",
        description = "Host of the target"
    ),
    printcolumn(
        name = "Database",
        type_ = "string",
        json_path = ".spec.target.database",
        description = "Database on the target"
    ),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".status.endpoint",
        description = "Where agents connect"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the proxy serves"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.approval) || !has(self.approval.holdTimeout) || !has(self.approval.ttl) || duration(self.approval.holdTimeout) <= duration(self.approval.ttl)").message("approval.holdTimeout must not be longer than approval.ttl"))]
pub struct ConnectionSpec {
    /// Protocol of the target. `postgres` is the only protocol today.
    #[serde(rename = "type")]
    pub kind: ConnectionType,
    /// Where the proxy dials: host, port, database and TLS settings.
    pub target: Target,
    /// The Secret holding the credential the proxy injects upstream, with the
    /// keys `username` and `password`. Agents never see it.
    pub credentials_ref: SecretReference,
    /// Number of proxy replicas. Defaults to 1.
    #[serde(default = "default_replicas")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 50").message("replicas must be between 0 and 50"))]
    pub replicas: i32,
    /// Session recording. Defaults to `mode: required`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<Recording>,
    /// How long a statement that needs approval is held, and how long its
    /// ApprovalRequest lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalSettings>,
}

fn default_replicas() -> i32 {
    1
}

/// Protocol spoken by the target.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ConnectionType {
    /// PostgreSQL wire protocol, version 3.
    Postgres,
}

/// The database the proxy dials.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// DNS name or IP address of the target, for example `orders.db.svc`.
    #[x_kube(validation = Rule::new("size(self) > 0 && size(self) <= 253").message("target.host must be 1 to 253 characters"))]
    pub host: String,
    /// TCP port of the target. Defaults to 5432.
    #[serde(default = "default_port")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("target.port must be between 1 and 65535"))]
    pub port: i32,
    /// Database name the proxy connects to.
    #[x_kube(validation = Rule::new("size(self) > 0 && size(self) <= 63").message("target.database must be 1 to 63 characters"))]
    pub database: String,
    /// TLS between the proxy and the target. Defaults to `mode: verify-full`
    /// against the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TargetTls>,
}

fn default_port() -> i32 {
    5432
}

/// TLS settings for the upstream connection.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode != 'disable' || !has(self.caSecretRef)").message("tls.caSecretRef has no effect with mode disable; remove it or choose require or verify-full"))]
pub struct TargetTls {
    /// `disable` (plaintext), `require` (encrypted, server not verified) or
    /// `verify-full` (encrypted, certificate and host name verified).
    pub mode: TlsMode,
    /// A Secret with the key `ca.crt` holding the PEM CA bundle that signs the
    /// target's certificate. Without it, `verify-full` uses the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretReference>,
}

/// How the proxy secures its connection to the target.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Plaintext. Only for targets on a trusted network.
    Disable,
    /// Encrypted; the server certificate is not verified.
    Require,
    /// Encrypted; the certificate chain and the host name are verified.
    VerifyFull,
}

/// Session recording settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Recording {
    /// `required` refuses new sessions when recordings cannot be kept,
    /// `bestEffort` carries on and counts what it dropped, `off` records nothing.
    pub mode: RecordingMode,
}

/// Whether a session may run without a recording.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RecordingMode {
    /// Every session is recorded; new sessions are refused while the spool is full.
    #[default]
    Required,
    /// Sessions are recorded when possible; drops are counted in metrics.
    BestEffort,
    /// Nothing is recorded.
    Off,
}

/// Timing of just-in-time approvals on this Connection.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalSettings {
    /// How long the proxy holds a statement waiting for a decision before it
    /// refuses it, as a duration such as `5m`. Defaults to `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('24h')").message("approval.holdTimeout must be between 1s and 24h"))]
    pub hold_timeout: Option<String>,
    /// How long an ApprovalRequest stays valid after it is created, as a
    /// duration such as `1h`. Defaults to `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('168h')").message("approval.ttl must be between 1s and 168h"))]
    pub ttl: Option<String>,
}

/// Observed state of a Connection, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `service.namespace.svc:port` where agents connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Names of the Policies that apply to this Connection, an invalid one
    /// too (it denies everything to the callers it names until it is fixed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    /// Ready, CredentialsResolved, ConfigRendered, PoliciesValid and ProxyAvailable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
