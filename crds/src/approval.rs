//! `ApprovalRequest`: a held statement waiting for people to decide.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::Approvers;

/// What is held and who may decide. Immutable except `reviews`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "gatehouse.dev",
    doc = "A statement the proxy holds until enough approvers approve it. The proxy creates it; approvers add a review with one `kubectl patch`; the API server checks who may review. Its spec never changes except by new reviews.",
    version = "v1alpha1",
    kind = "ApprovalRequest",
    namespaced,
    status = "ApprovalRequestStatus",
    shortname = "gapr",
    category = "gatehouse",
    printcolumn(
        name = "Connection",
        type_ = "string",
        json_path = ".spec.connection",
        description = "Connection the statement runs on"
    ),
    printcolumn(
        name = "Requester",
        type_ = "string",
        json_path = ".spec.requester.username",
        description = "Who sent the statement"
    ),
    printcolumn(
        name = "Rule",
        type_ = "string",
        json_path = ".spec.rule",
        description = "Policy rule that asked for approval"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Pending, Approved, Denied, Expired or Consumed"
    ),
    printcolumn(
        name = "Statement",
        type_ = "string",
        json_path = ".spec.statement",
        description = "The held statement, secrets masked",
        priority = 1
    ),
    printcolumn(
        name = "Expires",
        type_ = "string",
        json_path = ".spec.expiresAt",
        description = "When the request lapses"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.connection == oldSelf.connection && self.requester == oldSelf.requester && self.sessionID == oldSelf.sessionID && self.statement == oldSelf.statement && self.fingerprint == oldSelf.fingerprint && has(self.parametersHash) == has(oldSelf.parametersHash) && (!has(self.parametersHash) || self.parametersHash == oldSelf.parametersHash) && self.policy == oldSelf.policy && self.rule == oldSelf.rule && self.approvers == oldSelf.approvers && self.expiresAt == oldSelf.expiresAt").message("spec is immutable except spec.reviews"))]
#[x_kube(validation = Rule::new("!has(oldSelf.reviews) || (has(self.reviews) && oldSelf.reviews.all(o, self.reviews.exists(n, n == o)))").message("existing reviews cannot be changed or removed"))]
pub struct ApprovalRequestSpec {
    /// Name of the Connection the statement was sent to.
    #[x_kube(validation = Rule::new("size(self) > 0 && size(self) <= 253").message("connection must be 1 to 253 characters"))]
    pub connection: String,
    /// The authenticated caller that sent the statement.
    pub requester: Requester,
    /// The proxy session the statement belongs to.
    #[serde(rename = "sessionID")]
    #[x_kube(validation = Rule::new("size(self) > 0 && size(self) <= 64").message("sessionID must be 1 to 64 characters"))]
    pub session_id: String,
    /// The statement as the approver sees it, secrets masked.
    #[x_kube(validation = Rule::new("size(self) > 0 && size(self) <= 65536").message("statement must be 1 to 65536 characters"))]
    pub statement: String,
    /// Identity of the statement's shape; an approval covers only this.
    #[x_kube(validation = Rule::new("size(self) > 0 && size(self) <= 128").message("fingerprint must be 1 to 128 characters"))]
    pub fingerprint: String,
    /// Hash of the bound parameter values; an approval covers only these values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("size(self) <= 128").message("parametersHash must be at most 128 characters"))]
    pub parameters_hash: Option<String>,
    /// Name of the Policy whose rule asked for approval.
    #[x_kube(validation = Rule::new("size(self) > 0 && size(self) <= 253").message("policy must be 1 to 253 characters"))]
    pub policy: String,
    /// Name of the rule that asked for approval.
    #[x_kube(validation = Rule::new("size(self) > 0 && size(self) <= 63").message("rule must be 1 to 63 characters"))]
    pub rule: String,
    /// Who may approve, and how many approvals are required.
    pub approvers: Approvers,
    /// When the request lapses; after it, no review counts.
    pub expires_at: Time,
    /// Decisions by approvers, one per user. Add yours with `kubectl patch
    /// --type=json` appending to `/spec/reviews/-`; earlier reviews never
    /// change. Defaults to an empty list, so the append always applies.
    #[serde(default)]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["user".into()]))]
    pub reviews: Vec<Review>,
}

/// The caller that sent a held statement.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Requester {
    /// Authenticated username, e.g. `system:serviceaccount:agents:planner`.
    #[x_kube(validation = Rule::new("size(self) > 0 && size(self) <= 253").message("requester.username must be 1 to 253 characters"))]
    pub username: String,
    /// Groups of the caller.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub groups: Vec<String>,
}

/// One approver's decision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Review {
    /// The reviewer's Kubernetes username; the API server checks it is the
    /// user sending the patch.
    #[x_kube(validation = Rule::new("size(self) > 0 && size(self) <= 253").message("reviews[].user must be 1 to 253 characters"))]
    pub user: String,
    /// `Approved` or `Denied`.
    pub decision: Decision,
    /// Why; shown to the requester on denial and kept in the recording.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("size(self) <= 1024").message("reviews[].reason must be at most 1024 characters"))]
    pub reason: Option<String>,
}

/// A reviewer's decision.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum Decision {
    /// Run the statement.
    Approved,
    /// Refuse the statement.
    Denied,
}

/// Where an ApprovalRequest is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum Phase {
    /// Waiting for reviews.
    Pending,
    /// Enough approvers approved; the proxy may run the statement once.
    Approved,
    /// A reviewer denied it.
    Denied,
    /// It lapsed, or the caller withdrew it, before a decision.
    Expired,
    /// The approved statement ran.
    Consumed,
}

/// Observed state of an ApprovalRequest, written by the operator and the proxy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRequestStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pending, Approved, Denied, Expired or Consumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// A sentence on the last transition, e.g. who denied it and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Decided and the like, with reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
