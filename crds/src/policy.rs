//! `Policy`: who may run what on which Connections, and what is masked.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::Approvers;

/// Desired state of a Policy: the Connections and callers it covers, its rules and its masking.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "gatehouse.dev",
    doc = "Rules for the Connections it selects. Default deny: a statement runs only when a rule of some Policy that selects the Connection and names the caller allows it. Every matching rule of every such Policy counts, and the most restrictive action wins (deny over requireApproval over allow). A Policy the proxy cannot compile denies everything to the callers it names until it is fixed.",
    version = "v1alpha1",
    kind = "Policy",
    plural = "policies",
    namespaced,
    status = "PolicyStatus",
    shortname = "gpol",
    category = "gatehouse",
    printcolumn(
        name = "Connections",
        type_ = "string",
        json_path = ".status.matchedConnections",
        description = "Connections this Policy applies to"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the Policy is valid and applied"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.rules.all(r, self.rules.exists_one(s, s.name == r.name))").message("rule names must be unique within a Policy"))]
pub struct PolicySpec {
    /// Selects Connections in this namespace by label. An empty selector (`{}`)
    /// selects every Connection in the namespace. So does one that is not a
    /// valid label selector, and the Policy is then invalid: it denies
    /// everything to the callers it names until it is fixed.
    pub connection_selector: LabelSelector,
    /// Callers this Policy applies to. A caller matches when its username or
    /// one of its groups matches a subject.
    #[schemars(length(min = 1, max = 64))]
    pub subjects: Vec<Subject>,
    /// Rules, each matching statements and choosing an action. A caller
    /// whom no allow or requireApproval rule lets write (matches an
    /// operation other than select, explain, session, transaction, prepare
    /// or copyTo; a rule without operations matches them all) gets a
    /// read-only database session, and may not turn it read-write.
    #[schemars(length(min = 1, max = 64))]
    pub rules: Vec<PolicyRule>,
    /// Masking of result columns and of secret-looking values, for the callers
    /// this Policy names. When several Policies name a caller, all their
    /// masking applies: every column rule and detector, and `strict` when any
    /// of them says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masking: Option<Masking>,
}

/// A caller a Policy applies to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.kind == 'ServiceAccount' ? has(self.__namespace__) : !has(self.__namespace__)").message("subjects[].namespace is required for kind ServiceAccount and not allowed for User or Group"))]
pub struct Subject {
    /// `ServiceAccount`, `User` or `Group`.
    pub kind: SubjectKind,
    /// Name of the ServiceAccount, user or group.
    #[x_kube(validation = Rule::new("size(self) > 0 && size(self) <= 253").message("subjects[].name must be 1 to 253 characters"))]
    pub name: String,
    /// Namespace of the ServiceAccount; only for kind `ServiceAccount`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("size(self) > 0 && size(self) <= 63").message("subjects[].namespace must be 1 to 63 characters"))]
    pub namespace: Option<String>,
}

/// Kind of a Policy subject.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum SubjectKind {
    /// A Kubernetes ServiceAccount, authenticated with a projected token.
    ServiceAccount,
    /// A user as the authenticator names it (OIDC subject, certificate CN, ...).
    User,
    /// A group the authenticated caller belongs to.
    Group,
}

/// One rule: which statements it matches and what happens to them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.action == 'requireApproval' ? has(self.approvers) : !has(self.approvers)").message("rules[].approvers is required for action requireApproval and not allowed otherwise"))]
pub struct PolicyRule {
    /// Name of the rule, unique within the Policy; it appears in refusals,
    /// ApprovalRequests and recordings.
    // The maxLength bounds the API server's cost estimate of the rules that
    // read names (this one and the uniqueness rule on the spec); without it
    // the API server refuses the CRD as too expensive.
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$')").message("rules[].name must be a DNS label: lower-case letters, digits and '-', at most 63 characters"))]
    pub name: String,
    /// Which statements the rule matches. Every field that is set must match;
    /// an empty match matches every statement.
    #[serde(default, rename = "match")]
    pub matches: StatementMatch,
    /// `allow`, `deny` or `requireApproval`.
    pub action: Action,
    /// Who may approve; only with `requireApproval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvers: Option<Approvers>,
}

/// Matches a statement by what the PostgreSQL parser finds in it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatementMatch {
    /// Kinds of statement; any one matches. Empty matches every kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub operations: Vec<Operation>,
    /// Tables as `schema.table`; `*` matches any run of characters
    /// (`public.*`). A statement matches when it touches any of them. Empty
    /// matches statements on any table, and statements on none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    // The items' maxLength bounds the API server's cost estimate of the rule
    // below; without it the API server refuses the CRD as too expensive.
    #[schemars(length(max = 128), inner(length(max = 255)))]
    #[x_kube(validation = Rule::new("self.all(t, t.matches('^[^.]+[.][^.]+$'))").message("rules[].match.tables entries must be schema-qualified, as schema.table"))]
    pub tables: Vec<String>,
}

/// A class of statement, as the proxy's classifier names it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Operation {
    /// SELECT, VALUES, TABLE and SHOW without writes.
    Select,
    /// INSERT.
    Insert,
    /// UPDATE, and SELECT ... FOR UPDATE / FOR SHARE.
    Update,
    /// DELETE.
    Delete,
    /// MERGE.
    Merge,
    /// CREATE, ALTER, DROP, COMMENT and other schema changes.
    Ddl,
    /// TRUNCATE.
    Truncate,
    /// COPY ... TO STDOUT.
    CopyTo,
    /// COPY ... FROM STDIN.
    CopyFrom,
    /// COPY to or from a server file or program.
    CopyProgram,
    /// GRANT, REVOKE and default privileges.
    Privilege,
    /// CREATE/ALTER/DROP ROLE, SET ROLE and SET SESSION AUTHORIZATION.
    Role,
    /// SET, RESET, DISCARD, DEALLOCATE, LISTEN and other session settings.
    Session,
    /// BEGIN, COMMIT, ROLLBACK, SAVEPOINT, SET TRANSACTION, SET CONSTRAINTS.
    Transaction,
    /// Two-phase commit: PREPARE TRANSACTION, which leaves the transaction
    /// behind the session with its locks held, and COMMIT PREPARED and
    /// ROLLBACK PREPARED, which finish any prepared transaction, whichever
    /// session prepared it. Not matched by rules for `transaction`.
    TwoPhaseCommit,
    /// VACUUM, ANALYZE, REINDEX, CLUSTER, CHECKPOINT, REFRESH MATERIALIZED VIEW.
    Maintenance,
    /// DO blocks (anonymous code).
    Do,
    /// CALL of a procedure.
    Call,
    /// SQL-level PREPARE and EXECUTE (EXECUTE also takes its statement's class).
    Prepare,
    /// EXPLAIN without ANALYZE (EXPLAIN ANALYZE takes its inner statement's class).
    Explain,
    /// Calls of functions and operators the database's catalog does not
    /// vouch for as reads: volatile ones (a user's or a built-in's), names
    /// the catalog does not hold, and built-ins that act outside the tables
    /// (file access, dblink, ...); NOTIFY.
    SideEffectFunction,
    /// The protocol-level FunctionCall message.
    FunctionCall,
}

/// What happens to a matching statement.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    /// The statement runs.
    Allow,
    /// The statement is refused with SQLSTATE 42501.
    Deny,
    /// The statement is held until approvers approve it.
    RequireApproval,
}

/// Masking settings of a Policy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Masking {
    /// Result columns to mask, by the name the result gives them. A column
    /// several rules match gets the one that shows least (null, redact, hash,
    /// partial). COPY TO STDOUT names no columns, so with any column rule it
    /// is refused (use SELECT).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub columns: Vec<ColumnMask>,
    /// Built-in secret detectors run on every text value of results, errors,
    /// notices, notifications and COPY output: `all` (every secret detector),
    /// or groups: aws, github, gitlab, slack, stripe, google, openai,
    /// anthropic, npm, jwt, privateKey, connectionString, genericAssignment,
    /// kubernetes (Secret manifests), gitleaks (every rule imported from
    /// gitleaks), or one gitleaks rule by its id (e.g. twilio-api-key). Only
    /// when named: personal data (card, Luhn-checked; email; iban) and the
    /// gitleaks rules written for one kind of file or for any key/value
    /// (generic-api-key, hashicorp-tf-password, kubernetes-secret-yaml,
    /// nuget-config-password, freemius-secret-key).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub detectors: Vec<String>,
    /// This organisation's own token formats, found like the built-in
    /// detectors, in the same places, for the callers this Policy names.
    /// The proxy checks each regex when the Policy is applied; one that
    /// does not compile makes the Policy invalid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(d, self.exists_one(e, e.name == d.name))").message("masking.customDetectors[].name must be unique within a Policy"))]
    pub custom_detectors: Vec<CustomDetector>,
    /// What happens to a value that cannot be scanned (larger than the proxy's
    /// scan limit, or unreadable for its type): `strict` (the default) refuses
    /// the result with an error, `bestEffort` replaces the value with
    /// `[masked:unscanned]` and goes on. Neither passes it on unmasked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_mode: Option<FailureMode>,
}

/// A detector of an organisation's own token format.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomDetector {
    /// Shown in the mask, `[masked:<name>]`: lower-case letters, digits and
    /// `-`, 1 to 63 characters. Metrics count these detectors as `custom`.
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("masking.customDetectors[].name must be lower-case letters, digits and '-', starting and ending with a letter or digit"))]
    pub name: String,
    /// Regular expression (Rust `regex` syntax, matched on bytes; `\w`, `\d`
    /// and `\b` are ASCII) for the secret, for example
    /// `\bacme_[A-Za-z0-9]{32}\b`. With a capture group, group 1 is masked
    /// (`(?i)acme_key=([A-Za-z0-9]{32})`), or the whole match where group 1
    /// took no part; a group inside a repetition holds only its last
    /// repetition, so put the repetition inside the group. It must not
    /// match empty text.
    #[x_kube(validation = Rule::new("size(self) > 0 && size(self) <= 4096").message("masking.customDetectors[].regex must be 1 to 4096 characters"))]
    pub regex: String,
    /// The regex runs only on a value that contains one of these (ASCII
    /// case-insensitively), so most values cost nothing: pick literal text
    /// every secret holds, such as its prefix (`acme_`). 3 to 64 characters
    /// each.
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(validation = Rule::new("self.all(k, size(k) >= 3 && size(k) <= 64)").message("masking.customDetectors[].keywords must each be 3 to 64 characters"))]
    pub keywords: Vec<String>,
}

/// A column masking rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.strategy == 'partial' ? has(self.keepLast) : !has(self.keepLast)").message("masking.columns[].keepLast is required for strategy partial and not allowed otherwise"))]
pub struct ColumnMask {
    /// Regular expression matched against the column name, for example
    /// `(?i)password|token|secret`.
    #[x_kube(validation = Rule::new("size(self) > 0 && size(self) <= 1024").message("masking.columns[].name must be 1 to 1024 characters"))]
    pub name: String,
    /// `redact`, `partial` (keep the last characters), `hash` (keyed HMAC, so
    /// equal values still join) or `null`.
    pub strategy: MaskStrategy,
    /// With `partial`: how many trailing characters stay visible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 16").message("masking.columns[].keepLast must be between 1 and 16"))]
    pub keep_last: Option<i32>,
}

/// How a masked value is rewritten.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum MaskStrategy {
    /// Replace the value with a fixed marker.
    Redact,
    /// Keep only the last `keepLast` characters.
    Partial,
    /// Replace the value with a keyed HMAC of it.
    Hash,
    /// Replace the value with NULL.
    Null,
}

/// What the proxy does with a value it cannot scan.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum FailureMode {
    /// Refuse the result with a clear error.
    Strict,
    /// Replace the value with a marker, go on and count it.
    BestEffort,
}

/// Observed state of a Policy, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Names of the Connections this Policy selects. An invalid Policy
    /// applies to them too: it denies everything to the callers it names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matched_connections: Vec<String>,
    /// Ready and Valid, with the compiler's message when the Policy is
    /// invalid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
