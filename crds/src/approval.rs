//! `ApprovalRequest`: a held statement waiting for people to decide.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
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
        name = "Decided By",
        type_ = "string",
        json_path = ".status.decidedBy",
        description = "The reviewers whose reviews decided it"
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
#[x_kube(validation = Rule::new("self.connection == oldSelf.connection && self.connectionUID == oldSelf.connectionUID && self.requester == oldSelf.requester && self.sessionID == oldSelf.sessionID && self.statement == oldSelf.statement && has(self.parameters) == has(oldSelf.parameters) && (!has(self.parameters) || self.parameters == oldSelf.parameters) && self.statementHash == oldSelf.statementHash && self.parametersHash == oldSelf.parametersHash && self.fingerprint == oldSelf.fingerprint && self.policy == oldSelf.policy && self.rule == oldSelf.rule && self.approvers == oldSelf.approvers && self.expiresAt == oldSelf.expiresAt").message("spec is immutable except spec.reviews"))]
#[x_kube(validation = Rule::new("!has(oldSelf.reviews) || (has(self.reviews) && oldSelf.reviews.all(o, self.reviews.exists(n, n == o)))").message("existing reviews cannot be changed or removed"))]
pub struct ApprovalRequestSpec {
    /// Name of the Connection the statement was sent to.
    #[x_kube(validation = Rule::new("size(self) > 0 && size(self) <= 253").message("connection must be 1 to 253 characters"))]
    pub connection: String,
    /// `metadata.uid` of that Connection: an approval never carries over to
    /// a Connection deleted and created again under the same name.
    #[serde(rename = "connectionUID")]
    #[x_kube(validation = Rule::new("size(self) > 0 && size(self) <= 128").message("connectionUID must be 1 to 128 characters"))]
    pub connection_uid: String,
    /// The authenticated caller that sent the statement.
    pub requester: Requester,
    /// The proxy session the statement belongs to.
    #[serde(rename = "sessionID")]
    #[x_kube(validation = Rule::new("size(self) > 0 && size(self) <= 64").message("sessionID must be 1 to 64 characters"))]
    pub session_id: String,
    /// The whole statement, exactly as it will run, except that secrets the
    /// built-in detectors find inside its literals and comments are masked.
    /// A statement that does not fit is refused, never shortened.
    #[x_kube(validation = Rule::new("size(self) > 0 && size(self) <= 65536").message("statement must be 1 to 65536 characters"))]
    pub statement: String,
    /// The values a prepared statement runs with (`$1` first), secrets
    /// masked. Empty for a statement sent as plain text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub parameters: Vec<Parameter>,
    /// SHA-256 (hex) of the statement's exact bytes and the parameter types
    /// it was prepared with. An approval covers only this statement.
    #[x_kube(validation = Rule::new("self.matches('^[0-9a-f]{64}$')").message("statementHash must be a SHA-256 in 64 lowercase hex digits"))]
    pub statement_hash: String,
    /// SHA-256 (hex) of the bound values and their formats. An approval
    /// covers only these values.
    #[x_kube(validation = Rule::new("self.matches('^[0-9a-f]{64}$')").message("parametersHash must be a SHA-256 in 64 lowercase hex digits"))]
    pub parameters_hash: String,
    /// pg_query's fingerprint of the statement: groups requests for the same
    /// kind of statement. It ignores values and never authorises anything.
    #[x_kube(validation = Rule::new("size(self) > 0 && size(self) <= 128").message("fingerprint must be 1 to 128 characters"))]
    pub fingerprint: String,
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

/// One value a held prepared statement is bound to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Parameter {
    /// The type the statement was prepared with (`int4`, `text`, ...), the
    /// type's OID when it is not a built-in one, or `unspecified` when the
    /// client left it to the server.
    #[serde(rename = "type")]
    #[schemars(length(max = 64))]
    pub type_name: String,
    /// How the client sent the value.
    pub format: ParameterFormat,
    /// The value, secrets masked: text as sent, a binary value decoded when
    /// its type is a known one and otherwise in hex (`\x...`). Absent for
    /// SQL NULL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16384))]
    pub value: Option<String>,
}

/// How a parameter value travels in the PostgreSQL protocol.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ParameterFormat {
    /// Text, as in SQL.
    Text,
    /// The type's binary form.
    Binary,
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
    /// The reviewer's groups that make them an approver of this request
    /// (those among `spec.approvers.groups`). The API server checks that the
    /// reviewer belongs to each; a reviewer listed in `spec.approvers.users`
    /// names none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(g, size(g) > 0 && size(g) <= 253)").message("reviews[].groups must be 1 to 253 characters each"))]
    pub groups: Vec<String>,
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

/// Observed state of an ApprovalRequest. The operator writes the decision;
/// the Connection's proxy writes only `Consumed`, or `Expired` when its
/// client gave up (the admission policy enforces both).
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
    /// The reviewers whose reviews decided it, e.g. `alice, bob`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// `Approved`, `Denied`, `Expired` and `Consumed`, each with a reason
    /// and the `observedGeneration` it was written for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// What the reviews of a request add up to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tally {
    /// A counted reviewer denied it.
    Denied {
        /// Who.
        by: String,
        /// Why, or "no reason given".
        reason: String,
    },
    /// Enough distinct counted reviewers approved it.
    Approved {
        /// Who, sorted.
        by: Vec<String>,
    },
    /// Not decided yet.
    Pending {
        /// Counted approvals so far, sorted.
        approvals: Vec<String>,
        /// How many are needed.
        required: usize,
    },
}

impl ApprovalRequestSpec {
    /// Whether `review` counts: its user is not the requester, and is listed
    /// in `approvers.users` or names one of `approvers.groups`. The admission
    /// policy already refuses other reviews; both the operator, which
    /// decides, and the proxy, which checks the decision before it runs
    /// anything, count by this rule too, so a review that slipped past a
    /// missing policy never counts for more than it claims.
    pub fn counts(&self, review: &Review) -> bool {
        review.user != self.requester.username
            && (self.approvers.users.contains(&review.user)
                || review.groups.iter().any(|g| self.approvers.groups.contains(g)))
    }

    /// How many distinct approvals it needs (at least one).
    pub fn required(&self) -> usize {
        usize::try_from(self.approvers.required.max(1)).unwrap_or(1)
    }

    /// The decision the counted reviews make: any counted denial denies;
    /// `required` distinct counted approvals approve.
    pub fn tally(&self) -> Tally {
        let counted = self.reviews.iter().filter(|r| self.counts(r));
        if let Some(denial) = counted.clone().find(|r| r.decision == Decision::Denied) {
            return Tally::Denied {
                by: denial.user.clone(),
                reason: denial
                    .reason
                    .clone()
                    .filter(|r| !r.is_empty())
                    .unwrap_or_else(|| "no reason given".to_owned()),
            };
        }
        let mut approvals: Vec<String> = counted
            .filter(|r| r.decision == Decision::Approved)
            .map(|r| r.user.clone())
            .collect();
        approvals.sort_unstable();
        approvals.dedup();
        let required = self.required();
        if approvals.len() >= required {
            Tally::Approved { by: approvals }
        } else {
            Tally::Pending { approvals, required }
        }
    }

    /// Whether `now` is at or past `expiresAt`.
    pub fn expired(&self, now: Timestamp) -> bool {
        now >= self.expires_at.0
    }
}

impl ApprovalRequest {
    /// The phase in status, `Pending` when none is written yet.
    pub fn phase(&self) -> Phase {
        self.status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or(Phase::Pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(required: i32, reviews: serde_json::Value) -> ApprovalRequestSpec {
        serde_json::from_value(serde_json::json!({
            "connection": "orders-db",
            "connectionUID": "6b1c1b7e-2f0a-4c3e-9d51-0b7a2e9c4f10",
            "requester": {"username": "system:serviceaccount:agents:planner"},
            "sessionID": "s",
            "statement": "DELETE FROM orders WHERE id = 1",
            "statementHash": "0".repeat(64),
            "parametersHash": "1".repeat(64),
            "fingerprint": "f",
            "policy": "p",
            "rule": "r",
            "approvers": {"users": ["carol"], "groups": ["dba"], "required": required},
            "expiresAt": "2030-01-01T00:00:00Z",
            "reviews": reviews,
        }))
        .expect("spec")
    }

    #[test]
    fn only_listed_users_and_named_approver_groups_count() {
        let s = spec(
            1,
            serde_json::json!([
                {"user": "system:serviceaccount:agents:planner", "groups": ["dba"], "decision": "Approved"},
                {"user": "mallory", "decision": "Approved"},
                {"user": "mallory2", "groups": ["developers"], "decision": "Approved"},
            ]),
        );
        assert_eq!(
            s.tally(),
            Tally::Pending {
                approvals: vec![],
                required: 1
            },
            "the requester, a user outside the approvers and a group that is not an approver group never count"
        );
        let s = spec(
            2,
            serde_json::json!([
                {"user": "carol", "decision": "Approved"},
                {"user": "alice", "groups": ["dba"], "decision": "Approved"},
            ]),
        );
        assert_eq!(
            s.tally(),
            Tally::Approved {
                by: vec!["alice".into(), "carol".into()]
            }
        );
    }

    #[test]
    fn a_counted_denial_wins_and_an_uncounted_one_does_not() {
        let s = spec(
            1,
            serde_json::json!([
                {"user": "mallory", "decision": "Denied", "reason": "spite"},
                {"user": "alice", "groups": ["dba"], "decision": "Approved"},
            ]),
        );
        assert_eq!(
            s.tally(),
            Tally::Approved {
                by: vec!["alice".into()]
            }
        );
        let s = spec(
            2,
            serde_json::json!([
                {"user": "alice", "groups": ["dba"], "decision": "Approved"},
                {"user": "bob", "groups": ["dba"], "decision": "Denied"},
            ]),
        );
        assert_eq!(
            s.tally(),
            Tally::Denied {
                by: "bob".into(),
                reason: "no reason given".into()
            }
        );
    }

    #[test]
    fn expiry_is_at_expires_at() {
        let s = spec(1, serde_json::json!([]));
        assert!(!s.expired("2029-12-31T23:59:59Z".parse().expect("time")));
        assert!(s.expired("2030-01-01T00:00:00Z".parse().expect("time")));
    }
}
