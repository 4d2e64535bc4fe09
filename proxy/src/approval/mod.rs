//! Just-in-time approval: a statement whose decision is `requireApproval` is
//! held while an ApprovalRequest asks people to decide.
//!
//! The relay holds the statement's frame (a simple Query, or the Bind that
//! gives a held prepared statement its values) and asks an [`Approver`] for a
//! decision. The cluster's approver ([`ClusterApprover`]) finds or creates
//! the ApprovalRequest, tells the relay its name (the client gets a
//! NoticeResponse with the `kubectl patch` that approves it), waits up to
//! `approval.holdTimeout` for the operator to set its phase from the
//! reviews, and marks an approved request `Consumed` before the statement
//! runs, with the resourceVersion it read, so an approval runs one
//! statement once. A client that cancels or hangs up drops the relay's end
//! of the channel, and the approver withdraws the request.
//!
//! An approval covers exactly what the approver saw. [`binding`] names the
//! statement by pg_query's fingerprint with relation names in full (the
//! default fingerprint would let an approval of `orders_2024_01` cover
//! `orders_2024_02`) and hashes every value in it: the constants, which
//! the fingerprint ignores, and the Bind values. A request is reused only by
//! the same caller sending a statement with the same fingerprint and values
//! on the same Connection, so an agent whose hold timed out runs its
//! statement by sending it again once the request is approved.

use std::{fmt, sync::Arc, time::Duration};

use gatehouse_crds::{ApprovalRequest, ApprovalRequestSpec, Phase, approval::Requester, common::Approvers};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, ResourceExt,
    api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams},
    runtime::wait::await_condition,
};
use pg_query::protobuf::Token;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::{
    pg::{messages::Bind, sqlstate},
    policy::{Identity, Refusal},
};

/// Label on every ApprovalRequest the proxy creates: a digest of what the
/// approval covers (Connection, requester, fingerprint, values), so a
/// statement sent again finds its request with one indexed list.
pub const BINDING_LABEL: &str = "gatehouse.dev/binding";

/// pg_query's fingerprint of `sql` with relation names and schemas in full
/// (hex), and the SHA-256 (hex) of the values in it: its constants in order,
/// then the Bind's parameter values with their formats.
///
/// Text pg_query cannot read (it was classified, so this does not happen)
/// gets the SHA-256 of the text itself as its fingerprint.
pub fn binding(sql: &str, bind: Option<&Bind>) -> (String, String) {
    let options =
        pg_query::FingerprintOptions::RANGEVAR_PG17_COMPAT | pg_query::FingerprintOptions::FULL_RELNAME;
    let fingerprint = pg_query::fingerprint(sql, 0, options)
        .map(|f| f.hex)
        .unwrap_or_else(|_| hex::encode(Sha256::digest(sql.as_bytes())));
    let mut values = Sha256::new();
    // Every value is length-prefixed, so no two lists hash alike.
    let mut value = |kind: u8, bytes: Option<&[u8]>| {
        values.update([kind]);
        match bytes {
            Some(b) => {
                values.update((b.len() as u64).to_be_bytes());
                values.update(b);
            }
            None => values.update(u64::MAX.to_be_bytes()),
        }
    };
    match pg_query::scan_tokens(sql) {
        Ok(tokens) => {
            for token in tokens {
                let constant = matches!(
                    Token::try_from(token.token),
                    Ok(Token::Iconst
                        | Token::Fconst
                        | Token::Sconst
                        | Token::Usconst
                        | Token::Bconst
                        | Token::Xconst)
                );
                let range =
                    usize::try_from(token.start).unwrap_or(0)..usize::try_from(token.end).unwrap_or(0);
                if constant && let Some(text) = sql.as_bytes().get(range) {
                    value(b'c', Some(text));
                }
            }
        }
        // Unscannable text: its whole text stands for its values.
        Err(_) => value(b't', Some(sql.as_bytes())),
    }
    if let Some(bind) = bind {
        for (i, param) in bind.params.iter().enumerate() {
            value(
                if bind.param_format(i) == crate::pg::messages::Format::Binary {
                    b'b'
                } else {
                    b's'
                },
                param.as_deref(),
            );
        }
    }
    (fingerprint, hex::encode(values.finalize()))
}

/// What a held statement asks approval for.
#[derive(Debug, Clone)]
pub struct Ticket {
    /// The caller.
    pub requester: Identity,
    /// The session the statement came in.
    pub session: String,
    /// The statement with secrets masked, as approvers see it.
    pub statement: String,
    /// See [`binding`].
    pub fingerprint: String,
    /// See [`binding`].
    pub parameters_hash: String,
    /// The Policy and rule that asked for approval.
    pub policy: String,
    /// The rule.
    pub rule: String,
    /// Who may approve.
    pub approvers: Approvers,
    /// How long the statement waits.
    pub hold_timeout: Duration,
    /// How long the request stays valid.
    pub ttl: Duration,
}

/// What the approver tells the relay while a statement is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldEvent {
    /// The request exists; the client is told its name.
    Waiting {
        /// The ApprovalRequest.
        name: String,
        /// Its namespace.
        namespace: String,
        /// Whether it already existed (the statement was sent again).
        reused: bool,
        /// How long the statement waits.
        hold_timeout: Duration,
    },
    /// The hold is over.
    Decided(Outcome),
}

/// How a hold ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Approved and now Consumed: the statement runs.
    Approved {
        /// The ApprovalRequest.
        name: String,
        /// "approved by alice, bob".
        message: String,
    },
    /// A reviewer denied it.
    Denied {
        /// The ApprovalRequest.
        name: String,
        /// "denied by alice: reason".
        message: String,
    },
    /// It lapsed before enough approvals.
    Expired {
        /// The ApprovalRequest.
        name: String,
        /// The operator's sentence.
        message: String,
    },
    /// `holdTimeout` passed; the request stays open.
    TimedOut {
        /// The ApprovalRequest.
        name: String,
        /// How long the statement waited.
        waited: Duration,
    },
    /// The client cancelled the statement; the request is withdrawn.
    Cancelled {
        /// The ApprovalRequest, when it was made.
        name: Option<String>,
    },
    /// The request could not be made or read.
    Failed(String),
}

impl Outcome {
    /// The request, when there is one.
    pub fn request(&self) -> Option<&str> {
        match self {
            Outcome::Approved { name, .. }
            | Outcome::Denied { name, .. }
            | Outcome::Expired { name, .. }
            | Outcome::TimedOut { name, .. } => Some(name),
            Outcome::Cancelled { name } => name.as_deref(),
            Outcome::Failed(_) => None,
        }
    }

    /// How recordings name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Approved { .. } => "approved",
            Outcome::Denied { .. } => "denied",
            Outcome::Expired { .. } => "expired",
            Outcome::TimedOut { .. } => "timedOut",
            Outcome::Cancelled { .. } => "cancelled",
            Outcome::Failed(_) => "failed",
        }
    }

    /// The error the client gets instead of the statement's result, or
    /// `None` when it runs.
    pub fn refusal(&self) -> Option<Refusal> {
        let refusal = |sqlstate, message: String, hint: String| {
            Some(Refusal {
                sqlstate,
                message,
                hint,
                decision: "requireApproval",
            })
        };
        match self {
            Outcome::Approved { .. } => None,
            Outcome::Denied { name, message } => refusal(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!("statement refused by Gatehouse: ApprovalRequest {name} was {message}"),
                "a denied request stays denied; change the statement or talk to the reviewer".to_owned(),
            ),
            Outcome::Expired { name, message } => refusal(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!("statement refused by Gatehouse: ApprovalRequest {name} {message}"),
                "send the statement again to ask for a new approval".to_owned(),
            ),
            Outcome::TimedOut { name, waited } => refusal(
                sqlstate::QUERY_CANCELED,
                format!(
                    "canceling statement: ApprovalRequest {name} was not approved within Gatehouse's hold timeout ({})",
                    humantime::format_duration(*waited)
                ),
                "the request stays open until it expires; once it is approved, send the same statement again and it runs"
                    .to_owned(),
            ),
            Outcome::Cancelled { name } => Some(cancelled(name.as_deref())),
            Outcome::Failed(why) => refusal(
                sqlstate::CANNOT_CONNECT_NOW,
                format!("Gatehouse could not ask for approval: {why}"),
                "the statement did not run; try again, and if this persists tell the Connection's operators".to_owned(),
            ),
        }
    }
}

/// The refusal a cancelled hold answers with, as PostgreSQL answers a cancel.
fn cancelled(request: Option<&str>) -> Refusal {
    Refusal {
        sqlstate: sqlstate::QUERY_CANCELED,
        message: "canceling statement due to user request".to_owned(),
        hint: match request {
            Some(name) => format!("Gatehouse withdrew ApprovalRequest {name}"),
            None => "the statement was waiting for approval and did not run".to_owned(),
        },
        decision: "requireApproval",
    }
}

/// The notice a client gets while its statement is held, with the one
/// command that approves it.
pub fn waiting_notice(
    name: &str,
    namespace: &str,
    ticket_policy: &str,
    rule: &str,
    approvers: &Approvers,
    hold: Duration,
) -> (String, String, String) {
    let message = format!(
        "Gatehouse is holding this statement for approval: ApprovalRequest {name} in namespace {namespace} \
         (Policy \"{ticket_policy}\", rule \"{rule}\"); waiting up to {}",
        humantime::format_duration(hold)
    );
    let detail = format!(
        "approvers: {} ({} required)",
        describe_approvers(approvers),
        approvers.required.max(1)
    );
    let hint = format!(
        "an approver approves with: kubectl patch approvalrequest {name} -n {namespace} --type=json \
         -p '[{{\"op\":\"add\",\"path\":\"/spec/reviews/-\",\"value\":{{\"user\":\"<their Kubernetes username>\",\
         \"decision\":\"Approved\",\"reason\":\"<why>\"}}}}]' (or kubectl gatehouse approve {name} -n {namespace})"
    );
    (message, detail, hint)
}

fn describe_approvers(approvers: &Approvers) -> String {
    let mut parts = Vec::new();
    if !approvers.users.is_empty() {
        parts.push(format!("users {}", approvers.users.join(", ")));
    }
    if !approvers.groups.is_empty() {
        parts.push(format!("groups {}", approvers.groups.join(", ")));
    }
    parts.join("; ")
}

/// Asks for approval of held statements.
pub trait Approver: Send + Sync + fmt::Debug {
    /// Starts asking; the relay reads events until [`HoldEvent::Decided`].
    /// Dropping the receiver before that withdraws the request.
    fn hold(&self, ticket: Ticket) -> mpsc::Receiver<HoldEvent>;
}

/// The approver of a proxy in a cluster: ApprovalRequests in the
/// Connection's namespace, decided by the operator from approvers' reviews.
#[derive(Clone)]
pub struct ClusterApprover {
    api: Api<ApprovalRequest>,
    namespace: String,
    connection: String,
}

impl fmt::Debug for ClusterApprover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterApprover")
            .field("namespace", &self.namespace)
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

impl ClusterApprover {
    /// Requests in `namespace` for `connection`.
    pub fn new(client: kube::Client, namespace: &str, connection: &str) -> Arc<ClusterApprover> {
        Arc::new(ClusterApprover {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            connection: connection.to_owned(),
        })
    }

    /// The label value of what `ticket` covers.
    fn binding_label(&self, ticket: &Ticket) -> String {
        let mut digest = Sha256::new();
        for part in [
            self.connection.as_str(),
            ticket.requester.username.as_str(),
            ticket.fingerprint.as_str(),
            ticket.parameters_hash.as_str(),
        ] {
            digest.update((part.len() as u64).to_be_bytes());
            digest.update(part.as_bytes());
        }
        // A label value holds 63 characters; 160 bits are plenty to find it.
        hex::encode(&digest.finalize()[..20])
    }

    /// An open request covering exactly `ticket`, or a new one.
    async fn find_or_create(&self, ticket: &Ticket) -> Result<(ApprovalRequest, bool), kube::Error> {
        let label = self.binding_label(ticket);
        let now = Timestamp::now();
        let existing = self
            .api
            .list(&ListParams::default().labels(&format!("{BINDING_LABEL}={label}")))
            .await?;
        let open = existing.items.into_iter().find(|r| {
            let spec = &r.spec;
            let phase = r.status.as_ref().and_then(|s| s.phase).unwrap_or(Phase::Pending);
            spec.connection == self.connection
                && spec.requester.username == ticket.requester.username
                && spec.fingerprint == ticket.fingerprint
                && spec.parameters_hash.as_deref() == Some(ticket.parameters_hash.as_str())
                && matches!(phase, Phase::Pending | Phase::Approved)
                && spec.expires_at.0 > now
                && r.metadata.deletion_timestamp.is_none()
        });
        if let Some(request) = open {
            return Ok((request, true));
        }
        let ttl = jiff_duration(ticket.ttl);
        let request = ApprovalRequest {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}-", truncate(&self.connection, 200))),
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
                ..ObjectMeta::default()
            },
            spec: ApprovalRequestSpec {
                connection: self.connection.clone(),
                requester: Requester {
                    username: ticket.requester.username.clone(),
                    groups: ticket.requester.groups.clone(),
                },
                session_id: truncate(&ticket.session, 64).to_owned(),
                statement: truncate(&ticket.statement, 65536).to_owned(),
                fingerprint: ticket.fingerprint.clone(),
                parameters_hash: Some(ticket.parameters_hash.clone()),
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
        let decided = |r: Option<&ApprovalRequest>| {
            r.and_then(|r| r.status.as_ref())
                .and_then(|s| s.phase)
                .is_some_and(|p| p != Phase::Pending)
        };
        match await_condition(self.api.clone(), name, decided).await {
            Ok(Some(request)) => Ok(request),
            Ok(None) => Err(format!(
                "ApprovalRequest {name} was deleted while the statement waited"
            )),
            Err(e) => Err(format!("cannot watch ApprovalRequest {name}: {e}")),
        }
    }

    /// Marks an approved request Consumed, with the resourceVersion it was
    /// read at: of two sessions holding the same request, one runs.
    async fn consume(&self, request: &ApprovalRequest, session: &str) -> Outcome {
        let name = request.name_any();
        let mut current = request.clone();
        for _ in 0..5 {
            let status = current.status.clone().unwrap_or_default();
            let message = status.message.clone().unwrap_or_default();
            match status.phase.unwrap_or(Phase::Pending) {
                Phase::Approved if current.spec.expires_at.0 > Timestamp::now() => {}
                Phase::Approved | Phase::Expired => {
                    return Outcome::Expired {
                        name,
                        message: if message.is_empty() {
                            "expired".to_owned()
                        } else {
                            message
                        },
                    };
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
            let patch = serde_json::json!({
                "metadata": {"resourceVersion": current.metadata.resource_version},
                "status": {
                    "phase": "Consumed",
                    "message": format!("{message}; ran once in session {session}"),
                },
            });
            match self
                .api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Outcome::Approved { name, message },
                Err(kube::Error::Api(e)) if e.code == 409 => match self.api.get(&name).await {
                    Ok(fresh) => current = fresh,
                    Err(e) => return Outcome::Failed(format!("cannot read ApprovalRequest {name}: {e}")),
                },
                Err(e) => {
                    return Outcome::Failed(format!("cannot mark ApprovalRequest {name} Consumed: {e}"));
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
            let phase = current
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .unwrap_or(Phase::Pending);
            if phase != Phase::Pending {
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
            Ok(request) => {
                let status = request.status.clone().unwrap_or_default();
                let message = status.message.unwrap_or_default();
                match status.phase.unwrap_or(Phase::Pending) {
                    Phase::Approved => {
                        if tx.is_closed() {
                            // Approved as the client left: the approval stays for a retry.
                            return;
                        }
                        self.consume(&request, &ticket.session).await
                    }
                    Phase::Denied => Outcome::Denied { name, message },
                    Phase::Expired => Outcome::Expired { name, message },
                    Phase::Consumed | Phase::Pending => Outcome::Failed(format!(
                        "ApprovalRequest {name} was already used by another session; send the statement again to ask for a new approval"
                    )),
                }
            }
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

/// At most `max` bytes of `s`, cut at a character boundary.
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
    use bytes::Bytes;

    use super::*;
    use crate::pg::messages::Format;

    fn bind(values: &[Option<&str>]) -> Bind {
        Bind {
            portal: String::new(),
            statement: String::new(),
            param_formats: vec![Format::Text],
            params: values
                .iter()
                .map(|v| v.map(|s| Bytes::copy_from_slice(s.as_bytes())))
                .collect(),
            result_formats: Vec::new(),
        }
    }

    #[test]
    fn the_default_fingerprint_groups_partitions_and_the_binding_does_not() {
        let a = "DELETE FROM orders_2024_01 WHERE id = 5";
        let b = "DELETE FROM orders_2024_02 WHERE id = 5";
        // The premise: pg_query's default fingerprint cannot tell them apart.
        assert_eq!(
            pg_query::fingerprint(a, 0, 0).unwrap().hex,
            pg_query::fingerprint(b, 0, 0).unwrap().hex
        );
        assert_ne!(binding(a, None).0, binding(b, None).0);
        // Aliases and schemas do not hide the relation either.
        assert_ne!(
            binding("DELETE FROM orders_2024_01 o WHERE o.id = 5", None).0,
            binding("DELETE FROM orders_2024_02 o WHERE o.id = 5", None).0
        );
        assert_ne!(
            binding("DELETE FROM shop.orders WHERE id = 5", None).0,
            binding("DELETE FROM archive.orders WHERE id = 5", None).0
        );
    }

    #[test]
    fn constants_and_bind_values_are_covered_and_layout_is_not() {
        let (f1, p1) = binding("DELETE FROM orders WHERE id = 5", None);
        let (f2, p2) = binding("DELETE FROM orders WHERE id = 6", None);
        assert_eq!(f1, f2, "same shape");
        assert_ne!(p1, p2, "another value is another approval");
        let (f3, p3) = binding("delete  from orders\n where id = 5", None);
        assert_eq!(
            (f1.clone(), p1.clone()),
            (f3, p3),
            "spacing and case do not matter"
        );
        assert_ne!(
            binding("DELETE FROM orders WHERE note = 'a'", None).1,
            binding("DELETE FROM orders WHERE note = 'b'", None).1
        );

        let sql = "DELETE FROM orders WHERE id = $1";
        let one = binding(sql, Some(&bind(&[Some("1")])));
        assert_eq!(one, binding(sql, Some(&bind(&[Some("1")]))));
        assert_ne!(one.1, binding(sql, Some(&bind(&[Some("2")]))).1);
        assert_ne!(one.1, binding(sql, Some(&bind(&[None]))).1);
        assert_ne!(one.1, binding(sql, Some(&bind(&[Some("1"), Some("")]))).1);
        assert_ne!(
            binding(sql, Some(&bind(&[Some("ab"), Some("c")]))).1,
            binding(sql, Some(&bind(&[Some("a"), Some("bc")]))).1,
            "values are length-prefixed"
        );
    }

    #[test]
    fn outcomes_refuse_with_the_request_named() {
        let denied = Outcome::Denied {
            name: "orders-db-x1".into(),
            message: "denied by alice: not during the freeze".into(),
        }
        .refusal()
        .unwrap();
        assert_eq!(denied.sqlstate, "42501");
        assert!(denied.message.contains("orders-db-x1") && denied.message.contains("not during the freeze"));
        let timed_out = Outcome::TimedOut {
            name: "orders-db-x2".into(),
            waited: Duration::from_secs(2),
        }
        .refusal()
        .unwrap();
        assert_eq!(timed_out.sqlstate, "57014");
        assert!(timed_out.message.contains("orders-db-x2") && timed_out.message.contains("2s"));
        assert!(
            Outcome::Approved {
                name: "a".into(),
                message: String::new()
            }
            .refusal()
            .is_none()
        );
        let cancelled = Outcome::Cancelled {
            name: Some("r".into()),
        }
        .refusal()
        .unwrap();
        assert_eq!(cancelled.sqlstate, "57014");
        assert!(
            cancelled.hint.contains("withdrew ApprovalRequest r"),
            "{}",
            cancelled.hint
        );
    }

    #[test]
    fn the_notice_names_the_request_and_the_patch() {
        let approvers = Approvers {
            users: vec!["alice".into()],
            groups: vec!["dba".into()],
            required: 2,
        };
        let (message, detail, hint) = waiting_notice(
            "orders-db-x1",
            "shop",
            "writes",
            "deletes",
            &approvers,
            Duration::from_secs(300),
        );
        assert!(
            message.contains("ApprovalRequest orders-db-x1 in namespace shop"),
            "{message}"
        );
        assert!(message.contains("5m"), "{message}");
        assert_eq!(detail, "approvers: users alice; groups dba (2 required)");
        assert!(
            hint.contains("kubectl patch approvalrequest orders-db-x1 -n shop --type=json -p '[{\"op\":\"add\",\"path\":\"/spec/reviews/-\""),
            "{hint}"
        );
    }
}
