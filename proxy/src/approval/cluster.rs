//! The approver of a proxy in a cluster: ApprovalRequests in the
//! Connection's namespace, decided by the operator from approvers' reviews,
//! and checked again here before anything runs.
//!
//! The proxy trusts no request it did not check itself. A request it finds
//! or is told is Approved runs the statement only when it is this
//! Connection's (by name and uid), names this requester, this statement's
//! hashes and the Policy rule and approvers that hold it now, has not
//! expired, and its reviews, counted by the same rule the operator counts
//! them ([`ApprovalRequestSpec::tally`]), approve it. So a status that
//! another party wrote (without the admission policy, a compromised proxy of
//! another Connection could) runs nothing.

use std::{fmt, sync::Arc, time::Duration};

use gatehouse_crds::{ApprovalRequest, ApprovalRequestSpec, Phase, Tally, approval::Requester};
use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{OwnerReference, Time},
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams},
    runtime::wait::await_condition,
};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::{Approver, HoldEvent, Outcome, Ticket};

/// Label on every ApprovalRequest the proxy creates: a digest of what the
/// approval covers (Connection uid, requester, statement and values), so a
/// statement sent again finds its request with one indexed list. The label
/// only finds candidates; each is compared field by field.
pub const BINDING_LABEL: &str = "gatehouse.dev/binding";

/// The approver of one Connection's proxy.
#[derive(Clone)]
pub struct ClusterApprover {
    api: Api<ApprovalRequest>,
    namespace: String,
    scope: Scope,
}

impl fmt::Debug for ClusterApprover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterApprover")
            .field("namespace", &self.namespace)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// The Connection whose requests a proxy may act on.
#[derive(Debug, Clone)]
struct Scope {
    connection: String,
    uid: String,
}

impl ClusterApprover {
    /// Requests in `namespace` for Connection `connection`, whose
    /// `metadata.uid` is `uid`.
    pub fn new(client: kube::Client, namespace: &str, connection: &str, uid: &str) -> Arc<ClusterApprover> {
        Arc::new(ClusterApprover {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            scope: Scope {
                connection: connection.to_owned(),
                uid: uid.to_owned(),
            },
        })
    }

    /// An open request covering exactly `ticket`, or a new one.
    async fn find_or_create(&self, ticket: &Ticket) -> Result<(ApprovalRequest, bool), kube::Error> {
        let label = self.scope.binding_label(ticket);
        let now = Timestamp::now();
        let existing = self
            .api
            .list(&ListParams::default().labels(&format!("{BINDING_LABEL}={label}")))
            .await?;
        let open = existing.items.into_iter().find(|r| {
            self.scope.covers(r, ticket).is_ok()
                && matches!(r.phase(), Phase::Pending | Phase::Approved)
                && !r.spec.expired(now)
                && r.metadata.deletion_timestamp.is_none()
        });
        if let Some(request) = open {
            return Ok((request, true));
        }
        let ttl = jiff_duration(ticket.ttl);
        let request = ApprovalRequest {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}-", truncate(&self.scope.connection, 200))),
                labels: Some(
                    [
                        (BINDING_LABEL.to_owned(), label),
                        (
                            "app.kubernetes.io/managed-by".to_owned(),
                            "gatehouse-proxy".to_owned(),
                        ),
                    ]
                    .into(),
                ),
                // Goes with its Connection.
                owner_references: Some(vec![OwnerReference {
                    api_version: format!("{}/v1alpha1", gatehouse_crds::GROUP),
                    kind: "Connection".to_owned(),
                    name: self.scope.connection.clone(),
                    uid: self.scope.uid.clone(),
                    ..OwnerReference::default()
                }]),
                ..ObjectMeta::default()
            },
            spec: ApprovalRequestSpec {
                connection: self.scope.connection.clone(),
                connection_uid: self.scope.uid.clone(),
                requester: Requester {
                    username: ticket.requester.username.clone(),
                    groups: ticket.requester.groups.clone(),
                },
                session_id: truncate(&ticket.session, 64).to_owned(),
                // Whole: `shown` refused what does not fit.
                statement: ticket.shown.statement.clone(),
                parameters: ticket.shown.parameters.clone(),
                statement_hash: ticket.binding.statement_hash.clone(),
                parameters_hash: ticket.binding.parameters_hash.clone(),
                fingerprint: ticket.binding.fingerprint.clone(),
                policy: ticket.policy.clone(),
                rule: ticket.rule.clone(),
                approvers: ticket.approvers.clone(),
                expires_at: Time(now.saturating_add(ttl).unwrap_or(now)),
                reviews: Vec::new(),
            },
            status: None,
        };
        let created = self.api.create(&PostParams::default(), &request).await?;
        Ok((created, false))
    }

    /// Waits for the request to leave Pending.
    async fn decided(&self, name: &str) -> Result<ApprovalRequest, String> {
        let decided = |r: Option<&ApprovalRequest>| r.is_some_and(|r| r.phase() != Phase::Pending);
        match await_condition(self.api.clone(), name, decided).await {
            Ok(Some(request)) => Ok(request),
            Ok(None) => Err(format!(
                "ApprovalRequest {name} was deleted while the statement waited"
            )),
            Err(e) => Err(format!("cannot watch ApprovalRequest {name}: {e}")),
        }
    }

    /// What a decided request means for the held statement: a denial, an
    /// expiry, or, for an approved request this proxy's own checks accept,
    /// the statement runs once it is marked Consumed, with the
    /// resourceVersion it was read at: of two sessions holding the same
    /// request, one runs.
    async fn conclude(&self, request: &ApprovalRequest, ticket: &Ticket) -> Outcome {
        let name = request.name_any();
        let mut current = request.clone();
        for _ in 0..5 {
            let message = current
                .status
                .as_ref()
                .and_then(|s| s.message.clone())
                .unwrap_or_default();
            match current.phase() {
                Phase::Approved => {}
                Phase::Expired => {
                    let message = if message.is_empty() {
                        "expired".to_owned()
                    } else {
                        message
                    };
                    return Outcome::Expired { name, message };
                }
                Phase::Denied => return Outcome::Denied { name, message },
                Phase::Consumed => {
                    return Outcome::Failed(format!(
                        "ApprovalRequest {name} was already used by another session; send the statement again to ask for a new approval"
                    ));
                }
                Phase::Pending => {
                    return Outcome::Failed(format!("ApprovalRequest {name} is not approved yet"));
                }
            }
            let approved_by = match self.scope.verify(&current, ticket) {
                Ok(approved_by) => approved_by,
                Err(outcome) => {
                    tracing::warn!(
                        request = %name,
                        outcome = outcome.kind(),
                        "an ApprovalRequest marked Approved does not approve this statement; it does not run"
                    );
                    return outcome;
                }
            };
            let patch = serde_json::json!({
                "metadata": {"resourceVersion": current.metadata.resource_version},
                "status": {
                    "phase": "Consumed",
                    "message": format!("{approved_by}; ran once in session {}", ticket.session),
                },
            });
            match self
                .api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    return Outcome::Approved {
                        name,
                        message: approved_by,
                    };
                }
                Err(kube::Error::Api(e)) if e.code == 409 => match self.api.get(&name).await {
                    Ok(fresh) => current = fresh,
                    Err(e) => return Outcome::Failed(format!("cannot read ApprovalRequest {name}: {e}")),
                },
                Err(e) => {
                    return Outcome::Failed(format!(
                        "cannot mark ApprovalRequest {name} Consumed: {}",
                        api_message(&e)
                    ));
                }
            }
        }
        Outcome::Failed(format!(
            "ApprovalRequest {name} kept changing; send the statement again"
        ))
    }

    /// Withdraws a request its client gave up on, unless it is decided.
    async fn withdraw(&self, name: &str, why: &str) {
        for _ in 0..5 {
            let Ok(current) = self.api.get(name).await else {
                return;
            };
            if current.phase() != Phase::Pending {
                return;
            }
            let patch = serde_json::json!({
                "metadata": {"resourceVersion": current.metadata.resource_version},
                "status": {"phase": "Expired", "message": format!("withdrawn: {why}")},
            });
            match self
                .api
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    tracing::info!(request = name, reason = why, "approval request withdrawn");
                    return;
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => {
                    tracing::warn!(request = name, error = %e, "could not withdraw an approval request");
                    return;
                }
            }
        }
    }

    async fn run(self, ticket: Ticket, tx: mpsc::Sender<HoldEvent>) {
        let created = tokio::select! {
            created = self.find_or_create(&ticket) => created,
            () = tx.closed() => return,
        };
        let (request, reused) = match created {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "could not create an approval request");
                let _ = tx
                    .send(HoldEvent::Decided(Outcome::Failed(api_message(&e))))
                    .await;
                return;
            }
        };
        let name = request.name_any();
        tracing::info!(request = %name, reused, user = %ticket.requester.username, "statement held for approval");
        let waiting = HoldEvent::Waiting {
            name: name.clone(),
            namespace: self.namespace.clone(),
            reused,
            hold_timeout: ticket.hold_timeout,
        };
        if tx.send(waiting).await.is_err() {
            if !reused {
                self.withdraw(&name, "the client went away").await;
            }
            return;
        }
        let started = tokio::time::Instant::now();
        let decided = tokio::select! {
            decided = self.decided(&name) => decided,
            () = tokio::time::sleep(ticket.hold_timeout) => {
                let _ = tx.send(HoldEvent::Decided(Outcome::TimedOut { name, waited: started.elapsed() })).await;
                return;
            }
            () = tx.closed() => {
                self.withdraw(&name, "the client cancelled the statement or disconnected").await;
                return;
            }
        };
        let outcome = match decided {
            // Approved as the client left: the approval stays for a retry.
            Ok(request) if request.phase() == Phase::Approved && tx.is_closed() => return,
            Ok(request) => self.conclude(&request, &ticket).await,
            Err(why) => Outcome::Failed(why),
        };
        tracing::info!(
            request = outcome.request().unwrap_or_default(),
            outcome = outcome.kind(),
            "approval hold ended"
        );
        let _ = tx.send(HoldEvent::Decided(outcome)).await;
    }
}

impl Scope {
    /// The label value of what `ticket` covers.
    fn binding_label(&self, ticket: &Ticket) -> String {
        let mut digest = Sha256::new();
        for part in [
            self.uid.as_str(),
            ticket.requester.username.as_str(),
            ticket.binding.statement_hash.as_str(),
            ticket.binding.parameters_hash.as_str(),
        ] {
            digest.update((part.len() as u64).to_be_bytes());
            digest.update(part.as_bytes());
        }
        // A label value holds 63 characters; 160 bits are plenty to find it.
        hex::encode(&digest.finalize()[..20])
    }

    /// Why `request` is not the one `ticket` asks for, or `Ok` when it is:
    /// this Connection's, by name and uid; this requester; this statement
    /// and these values; the Policy rule and approvers that hold it now (a
    /// rule tightened since asks anew).
    fn covers(&self, request: &ApprovalRequest, ticket: &Ticket) -> Result<(), String> {
        let spec = &request.spec;
        let checks: [(&str, bool); 8] = [
            ("is for another Connection", spec.connection == self.connection),
            (
                "is for another Connection of the same name (another uid)",
                spec.connection_uid == self.uid,
            ),
            (
                "was asked by another requester",
                spec.requester.username == ticket.requester.username,
            ),
            (
                "covers another statement",
                spec.statement_hash == ticket.binding.statement_hash,
            ),
            (
                "covers other values",
                spec.parameters_hash == ticket.binding.parameters_hash,
            ),
            ("was asked by another Policy", spec.policy == ticket.policy),
            ("was asked by another rule", spec.rule == ticket.rule),
            (
                "names other approvers than the rule now does",
                spec.approvers == ticket.approvers,
            ),
        ];
        match checks.iter().find(|(_, ok)| !ok) {
            Some((why, _)) => Err((*why).to_owned()),
            None => Ok(()),
        }
    }

    /// What an Approved `request` means for `ticket`, counted here and not
    /// taken from its status: `Ok` with who approved it, or the outcome that
    /// refuses the statement.
    fn verify(&self, request: &ApprovalRequest, ticket: &Ticket) -> Result<String, Outcome> {
        let name = request.name_any();
        let untrusted = |message: String| Outcome::Untrusted {
            name: name.clone(),
            message,
        };
        self.covers(request, ticket).map_err(&untrusted)?;
        if request.spec.expired(Timestamp::now()) {
            return Err(Outcome::Expired {
                name: name.clone(),
                message: format!("expired at {}", request.spec.expires_at.0),
            });
        }
        match request.spec.tally() {
            Tally::Approved { by } => Ok(format!("approved by {}", by.join(", "))),
            Tally::Pending { approvals, required } => Err(untrusted(format!(
                "is marked Approved, but only {} of the {required} approvals it needs come from its approvers",
                approvals.len()
            ))),
            Tally::Denied { by, reason } => Err(untrusted(format!(
                "is marked Approved, but {by} denied it: {reason}"
            ))),
        }
    }
}

impl Approver for ClusterApprover {
    fn hold(&self, ticket: Ticket) -> mpsc::Receiver<HoldEvent> {
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(self.clone().run(ticket, tx));
        rx
    }
}

/// The API server's message (admission messages are written for people).
fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

fn jiff_duration(d: Duration) -> k8s_openapi::jiff::SignedDuration {
    k8s_openapi::jiff::SignedDuration::try_from(d).unwrap_or(k8s_openapi::jiff::SignedDuration::MAX)
}

/// At most `max` bytes of `s`, cut at a character boundary: for names
/// (generateName, the session id), never for what an approver reads.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use gatehouse_crds::{Decision, Review, common::Approvers};

    use super::*;
    use crate::{
        approval::{binding, shown},
        policy::Identity,
    };

    const UID: &str = "6b1c1b7e-2f0a-4c3e-9d51-0b7a2e9c4f10";

    fn approver() -> Scope {
        Scope {
            connection: "orders-db".into(),
            uid: UID.into(),
        }
    }

    fn ticket(sql: &str) -> Ticket {
        Ticket {
            requester: Identity {
                username: "system:serviceaccount:agents:planner".into(),
                groups: vec![],
            },
            session: "s1".into(),
            shown: shown(&crate::mask::Scanner::all_secrets(), sql, &[], None).expect("shown"),
            binding: binding(sql, &[], None),
            policy: "writes".into(),
            rule: "deletes".into(),
            approvers: Approvers {
                users: vec![],
                groups: vec!["dba".into()],
                required: 1,
            },
            hold_timeout: Duration::from_secs(5),
            ttl: Duration::from_secs(3600),
        }
    }

    /// The request the proxy would create for `ticket`, approved by `reviews`.
    fn request(ticket: &Ticket, reviews: Vec<Review>) -> ApprovalRequest {
        let mut spec: ApprovalRequestSpec = serde_json::from_value(serde_json::json!({
            "connection": "orders-db",
            "connectionUID": UID,
            "requester": {"username": ticket.requester.username},
            "sessionID": "s1",
            "statement": ticket.shown.statement,
            "statementHash": ticket.binding.statement_hash,
            "parametersHash": ticket.binding.parameters_hash,
            "fingerprint": ticket.binding.fingerprint,
            "policy": "writes",
            "rule": "deletes",
            "approvers": {"groups": ["dba"], "required": 1},
            "expiresAt": "2099-01-01T00:00:00Z",
        }))
        .expect("spec");
        spec.reviews = reviews;
        let mut request = ApprovalRequest::new("orders-db-x1", spec);
        request.status = Some(gatehouse_crds::ApprovalRequestStatus {
            phase: Some(Phase::Approved),
            ..Default::default()
        });
        request
    }

    fn review(user: &str, groups: &[&str]) -> Review {
        Review {
            user: user.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            decision: Decision::Approved,
            reason: None,
        }
    }

    #[test]
    fn an_approved_status_without_approving_reviews_runs_nothing() {
        let approver = approver();
        let t = ticket("DELETE FROM orders WHERE id = 1");
        assert_eq!(
            approver.verify(&request(&t, vec![review("alice", &["dba"])]), &t),
            Ok("approved by alice".to_owned())
        );
        for reviews in [
            vec![],
            // Not an approver group, the requester, a user not listed.
            vec![review("mallory", &["developers"])],
            vec![review("system:serviceaccount:agents:planner", &["dba"])],
            vec![review("bob", &[])],
        ] {
            let outcome = approver.verify(&request(&t, reviews.clone()), &t);
            assert!(
                matches!(&outcome, Err(Outcome::Untrusted { message, .. }) if message.contains("0 of the 1")),
                "{reviews:?}: {outcome:?}"
            );
        }
    }

    #[test]
    fn a_request_of_another_connection_statement_or_rule_runs_nothing() {
        let approver = approver();
        let t = ticket("DELETE FROM orders WHERE archived = true");
        let good = request(&t, vec![review("alice", &["dba"])]);
        type Edit = fn(&mut ApprovalRequestSpec);
        let edits: [(Edit, &str); 6] = [
            (|s| s.connection = "billing-db".into(), "another Connection"),
            (|s| s.connection_uid = "0".into(), "another uid"),
            (|s| s.requester.username = "alice".into(), "another requester"),
            (
                |s| {
                    s.statement_hash =
                        super::super::binding("DELETE FROM orders WHERE archived = false", &[], None)
                            .statement_hash
                },
                "another statement",
            ),
            (|s| s.rule = "other".into(), "another rule"),
            (|s| s.approvers.required = 2, "other approvers"),
        ];
        for (edit, what) in edits {
            let mut r = good.clone();
            edit(&mut r.spec);
            assert!(
                matches!(approver.verify(&r, &t), Err(Outcome::Untrusted { ref message, .. }) if message.contains(what)),
                "{what}"
            );
        }
    }
}
