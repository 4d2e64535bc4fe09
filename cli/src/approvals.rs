//! The approver's commands: `pending`, `approve` and `deny`, against the
//! Kubernetes API as the caller (their kubeconfig; `KUBECONFIG` honoured).
//!
//! A review is the README's `kubectl patch`: a JSON patch appending the
//! caller's own review to `/spec/reviews`. Who may add it is for the API
//! server to decide (the ValidatingAdmissionPolicy of `config/admission`),
//! not for this plugin: a refusal is shown as the API server wrote it.

use std::{fmt, io::Write};

use gatehouse_crds::{ApprovalRequest, Decision, Phase, Review, Tally};
use k8s_openapi::{api::authentication::v1::SelfSubjectReview, jiff::Timestamp};
use kube::{
    Api, Client, ResourceExt as _,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

use crate::{Error, Result, text};

/// How many characters of a statement the table shows.
const STATEMENT_WIDTH: usize = 60;
/// How many characters of a requester's username the table shows.
const REQUESTER_WIDTH: usize = 48;

/// Which namespaces to look in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// One namespace.
    Namespace(String),
    /// Every namespace the caller may list.
    All,
}

/// A client as the caller: the kubeconfig's current context (`KUBECONFIG`
/// honoured) or, in a pod, its ServiceAccount.
pub async fn connect() -> Result<Client> {
    Client::try_default()
        .await
        .map_err(|e| Error::Kubernetes(format!("cannot reach the Kubernetes API: {e}")))
}

/// An API error as the command reports it: what the API server refused
/// (RBAC, the admission policy, validation) with its own message, which is
/// written for people; anything else as a connection error.
fn api_error(error: kube::Error) -> Error {
    match error {
        kube::Error::Api(status) if matches!(status.code, 403 | 404 | 409 | 422) => {
            Error::NotAllowed(status.message)
        }
        other => Error::Kubernetes(format!("the Kubernetes API failed: {other}")),
    }
}

/// Whether a request still waits for reviews. A request the operator has
/// not looked at yet has no phase: it is pending too.
pub fn is_pending(request: &ApprovalRequest) -> bool {
    matches!(
        request.status.as_ref().and_then(|s| s.phase),
        None | Some(Phase::Pending)
    )
}

/// The pending requests in `scope`, newest first.
pub async fn pending(client: &Client, scope: &Scope) -> Result<Vec<ApprovalRequest>> {
    let api: Api<ApprovalRequest> = match scope {
        Scope::Namespace(namespace) => Api::namespaced(client.clone(), namespace),
        Scope::All => Api::all(client.clone()),
    };
    let list = api.list(&ListParams::default()).await.map_err(api_error)?;
    let mut requests: Vec<ApprovalRequest> = list.items.into_iter().filter(is_pending).collect();
    newest_first(&mut requests);
    Ok(requests)
}

/// Sorts requests newest first; requests of the same second by namespace and name.
pub fn newest_first(requests: &mut [ApprovalRequest]) {
    requests.sort_by(|a, b| {
        b.metadata
            .creation_timestamp
            .cmp(&a.metadata.creation_timestamp)
            .then_with(|| a.namespace().cmp(&b.namespace()))
            .then_with(|| a.name_any().cmp(&b.name_any()))
    });
}

/// The distinct approvers who approved, counted as the operator and the
/// proxy count them: never the requester, never a reviewer outside the
/// request's approvers.
pub fn approvals(request: &ApprovalRequest) -> usize {
    match request.spec.tally() {
        Tally::Approved { by } => by.len(),
        Tally::Pending { approvals, .. } => approvals.len(),
        Tally::Denied { .. } => 0,
    }
}

/// How long until `expires`, short (`4m12s`), or `expired`.
pub fn expires_in(expires: Timestamp, now: Timestamp) -> String {
    let left = expires.as_second().saturating_sub(now.as_second());
    match u64::try_from(left) {
        Ok(seconds) if seconds > 0 => crate::time::short(std::time::Duration::from_secs(seconds)),
        _ => "expired".to_owned(),
    }
}

/// A statement on one line: runs of white space (newlines too) as one
/// space, control and bidirectional characters escaped, cut to `width`.
pub fn one_line(statement: &str, width: usize) -> String {
    let joined = statement.split_whitespace().collect::<Vec<_>>().join(" ");
    text::cut(&text::line(&joined), width)
}

/// The `pending` table: a header and a line per request, columns aligned;
/// the namespace first with `all_namespaces`.
pub fn table(requests: &[ApprovalRequest], all_namespaces: bool, now: Timestamp) -> Vec<String> {
    let mut rows = Vec::with_capacity(requests.len() + 1);
    let mut header = vec![
        "NAME",
        "CONNECTION",
        "REQUESTER",
        "STATEMENT",
        "APPROVALS",
        "EXPIRES IN",
    ];
    if all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    rows.push(header.into_iter().map(str::to_owned).collect::<Vec<_>>());
    for request in requests {
        let spec = &request.spec;
        let mut row = vec![
            text::line(&request.name_any()),
            text::line(&spec.connection),
            text::cut(&text::line(&spec.requester.username), REQUESTER_WIDTH),
            one_line(&spec.statement, STATEMENT_WIDTH),
            format!("{}/{}", approvals(request), spec.approvers.required.max(1)),
            expires_in(spec.expires_at.0, now),
        ];
        if all_namespaces {
            row.insert(0, text::line(&request.namespace().unwrap_or_default()));
        }
        rows.push(row);
    }
    text::columns(&rows, "   ")
}

/// Prints the pending requests as a table, or says there are none.
pub fn print_table(
    requests: &[ApprovalRequest],
    scope: &Scope,
    now: Timestamp,
    out: &mut dyn Write,
) -> Result<()> {
    if requests.is_empty() {
        match scope {
            Scope::Namespace(namespace) => writeln!(
                out,
                "No pending ApprovalRequests in namespace {}.",
                text::line(namespace)
            )?,
            Scope::All => writeln!(out, "No pending ApprovalRequests in any namespace.")?,
        }
        return Ok(());
    }
    for line in table(requests, *scope == Scope::All, now) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// Prints the pending requests as a Kubernetes `List`, as `kubectl get -o json` does.
pub fn print_json(requests: &[ApprovalRequest], out: &mut dyn Write) -> Result<()> {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": requests});
    serde_json::to_writer_pretty(&mut *out, &list).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

/// Who the caller is, as the API server authenticates them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// What the admission policy compares a review's `user` with.
    pub username: String,
    /// What it checks a review's `groups` against.
    pub groups: Vec<String>,
}

/// The caller, as the API server authenticates them.
pub async fn whoami(client: &Client) -> Result<Caller> {
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(|e| match e {
            kube::Error::Api(status) => Error::Kubernetes(format!(
                "cannot tell who you are (SelfSubjectReview): {}",
                status.message
            )),
            other => Error::Kubernetes(format!("cannot tell who you are (SelfSubjectReview): {other}")),
        })?;
    let info = review.status.and_then(|s| s.user_info).unwrap_or_default();
    let username = info.username.filter(|name| !name.is_empty()).ok_or_else(|| {
        Error::Kubernetes(
            "the API server did not say who you are (SelfSubjectReview without a username)".into(),
        )
    })?;
    Ok(Caller {
        username,
        groups: info.groups.unwrap_or_default(),
    })
}

/// The body of the approver's patch: one JSON patch operation appending
/// `user`'s review (naming the approver `groups` they review as) to
/// `/spec/reviews`, exactly what the README's `kubectl patch --type=json`
/// sends.
pub fn review_patch(user: &str, groups: &[String], decision: Decision, reason: Option<&str>) -> Value {
    let review = Review {
        user: user.to_owned(),
        groups: groups.to_vec(),
        decision,
        reason: reason.map(str::to_owned),
    };
    json!([{"op": "add", "path": "/spec/reviews/-", "value": review}])
}

/// A review the API server let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reviewed {
    /// The request.
    pub name: String,
    /// Who reviewed.
    pub user: String,
    /// How.
    pub decision: Decision,
    /// Why.
    pub reason: Option<String>,
    /// Approvals counted now, this one included.
    pub approvals: usize,
    /// Approvals the request needs.
    pub required: i32,
}

impl fmt::Display for Reviewed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, user) = (text::line(&self.name), text::line(&self.user));
        match self.decision {
            Decision::Approved => write!(
                f,
                "approved {name} as {user} ({} of {})",
                self.approvals,
                self.required.max(1)
            ),
            Decision::Denied => write!(
                f,
                "denied {name} as {user}: {}",
                text::line(self.reason.as_deref().unwrap_or("no reason given"))
            ),
        }
    }
}

/// Adds the caller's review to request `name` in `namespace`.
pub async fn review(
    client: &Client,
    namespace: &str,
    name: &str,
    decision: Decision,
    reason: Option<&str>,
) -> Result<Reviewed> {
    let caller = whoami(client).await?;
    let api: Api<ApprovalRequest> = Api::namespaced(client.clone(), namespace);
    let not_found = |e: kube::Error| match e {
        kube::Error::Api(status) if status.code == 404 => Error::RequestNotFound {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        },
        other => api_error(other),
    };
    // The caller reviews as a member of the request's approver groups they
    // belong to; the API server checks that they do.
    let current = api.get(name).await.map_err(not_found)?;
    let groups: Vec<String> = caller
        .groups
        .iter()
        .filter(|g| current.spec.approvers.groups.contains(g))
        .cloned()
        .collect();
    let body = review_patch(&caller.username, &groups, decision, reason);
    let patch = Patch::<()>::Json(
        serde_json::from_value(body)
            .map_err(|e| Error::Kubernetes(format!("cannot build the review patch: {e}")))?,
    );
    let request = api
        .patch(name, &PatchParams::default(), &patch)
        .await
        .map_err(not_found)?;
    Ok(Reviewed {
        name: request.name_any(),
        user: caller.username,
        decision,
        reason: reason.map(str::to_owned),
        approvals: approvals(&request),
        required: request.spec.approvers.required,
    })
}

#[cfg(test)]
mod tests {
    use gatehouse_crds::{ApprovalRequestSpec, ApprovalRequestStatus, Approvers, approval::Requester};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn request(namespace: &str, name: &str, created: &str, statement: &str) -> ApprovalRequest {
        let mut request = ApprovalRequest::new(
            name,
            ApprovalRequestSpec {
                connection: "orders-db".into(),
                connection_uid: "6b1c1b7e-2f0a-4c3e-9d51-0b7a2e9c4f10".into(),
                requester: Requester {
                    username: "system:serviceaccount:agents:planner".into(),
                    groups: vec![],
                },
                session_id: "3f9c2b7e".into(),
                statement: statement.into(),
                parameters: vec![],
                statement_hash: "0".repeat(64),
                parameters_hash: "1".repeat(64),
                fingerprint: "5e2c0ab1".into(),
                policy: "writes-need-approval".into(),
                rule: "orders-writes".into(),
                approvers: Approvers {
                    users: vec![],
                    groups: vec!["dba".into()],
                    required: 2,
                },
                expires_at: Time(at("2026-11-28T17:05:00Z")),
                reviews: vec![],
            },
        );
        request.metadata.namespace = Some(namespace.into());
        request.metadata.creation_timestamp = Some(Time(at(created)));
        request
    }

    fn review(user: &str, decision: Decision) -> Review {
        Review {
            user: user.into(),
            groups: vec!["dba".into()],
            decision,
            reason: None,
        }
    }

    #[test]
    fn the_table_lists_requests_newest_first_with_their_approvals() {
        let mut older = request(
            "team-a",
            "orders-db-a1",
            "2026-11-28T16:58:00Z",
            "DELETE FROM orders",
        );
        older.spec.reviews = vec![
            review("alice", Decision::Approved),
            // The requester never counts, whatever got in, nor a
            // reviewer outside the approvers.
            review("system:serviceaccount:agents:planner", Decision::Approved),
            Review {
                groups: vec![],
                ..review("mallory", Decision::Approved)
            },
        ];
        let newer = request(
            "team-b",
            "orders-db-b2",
            "2026-11-28T17:00:00Z",
            "UPDATE orders\n   SET status = $1\tWHERE id = $2",
        );
        let mut requests = vec![older, newer];
        newest_first(&mut requests);
        let now = at("2026-11-28T17:00:48Z");
        assert_eq!(
            table(&requests, false, now),
            [
                "NAME           CONNECTION   REQUESTER                              STATEMENT                                     APPROVALS   EXPIRES IN",
                "orders-db-b2   orders-db    system:serviceaccount:agents:planner   UPDATE orders SET status = $1 WHERE id = $2   0/2         4m12s",
                "orders-db-a1   orders-db    system:serviceaccount:agents:planner   DELETE FROM orders                            1/2         4m12s",
            ]
        );
        let all = table(&requests, true, at("2026-11-28T17:06:00Z"));
        assert!(all[0].starts_with("NAMESPACE   NAME "), "{all:?}");
        assert!(all[1].starts_with("team-b      orders-db-b2 "), "{all:?}");
        assert!(all[2].ends_with("1/2         expired"), "{all:?}");
    }

    #[test]
    fn statements_show_on_one_line_escaped_and_cut() {
        assert_eq!(one_line("SELECT\n  1", 60), "SELECT 1");
        assert_eq!(one_line("SELECT '\u{1b}[2J'", 60), "SELECT '\\u{1b}[2J'");
        assert_eq!(
            one_line(&format!("SELECT {}", "x".repeat(100)), 20)
                .chars()
                .count(),
            20
        );
        assert!(one_line(&format!("SELECT {}", "x".repeat(100)), 20).ends_with('…'));
    }

    #[test]
    fn only_undecided_requests_are_pending() {
        let mut r = request("team-a", "r", "2026-11-28T17:00:00Z", "DELETE FROM orders");
        assert!(is_pending(&r), "a request the operator has not seen yet");
        for (phase, pending) in [
            (Phase::Pending, true),
            (Phase::Approved, false),
            (Phase::Denied, false),
            (Phase::Expired, false),
            (Phase::Consumed, false),
        ] {
            r.status = Some(ApprovalRequestStatus {
                phase: Some(phase),
                ..Default::default()
            });
            assert_eq!(is_pending(&r), pending, "{phase:?}");
        }
    }

    #[test]
    fn the_patch_appends_the_callers_review_as_the_readme_does() {
        assert_eq!(
            review_patch("alice", &["dba".into()], Decision::Approved, Some("ticket 812")),
            serde_json::from_str::<Value>(
                r#"[{"op":"add","path":"/spec/reviews/-","value":{"user":"alice","groups":["dba"],"decision":"Approved","reason":"ticket 812"}}]"#
            )
            .unwrap_or_default()
        );
        assert_eq!(
            review_patch("oidc:bob@example.com", &[], Decision::Denied, None),
            json!([{"op": "add", "path": "/spec/reviews/-", "value": {"user": "oidc:bob@example.com", "decision": "Denied"}}])
        );
        // It is a JSON patch kube sends as application/json-patch+json.
        let patch: Result<Patch<()>, _> =
            serde_json::from_value(review_patch("alice", &[], Decision::Approved, None)).map(Patch::Json);
        assert!(
            matches!(patch, Ok(Patch::Json(ref p)) if p.0.len() == 1),
            "{patch:?}"
        );
    }

    #[test]
    fn outcomes_read_as_sentences() {
        let approved = Reviewed {
            name: "orders-db-x7k2p".into(),
            user: "alice".into(),
            decision: Decision::Approved,
            reason: None,
            approvals: 1,
            required: 2,
        };
        assert_eq!(approved.to_string(), "approved orders-db-x7k2p as alice (1 of 2)");
        let denied = Reviewed {
            decision: Decision::Denied,
            reason: Some("not during\nthe freeze".into()),
            ..approved
        };
        assert_eq!(
            denied.to_string(),
            "denied orders-db-x7k2p as alice: not during\\nthe freeze"
        );
    }

    #[test]
    fn refusals_keep_the_api_servers_message() {
        let status = |code: u16, message: &str| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                message: message.into(),
                ..Default::default()
            }))
        };
        let e = api_error(status(403, "carol sent this statement and cannot review it"));
        assert_eq!(e.to_string(), "carol sent this statement and cannot review it");
        assert_eq!(e.exit_code(), 1);
        let e = api_error(status(500, "etcd is sad"));
        assert_eq!(e.exit_code(), 2);
    }
}
