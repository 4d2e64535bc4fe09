//! Just-in-time approval: a statement whose decision is `requireApproval` is
//! held while an ApprovalRequest asks people to decide.
//!
//! The relay holds the statement's frame (a simple Query, or the Bind that
//! gives a held prepared statement its values) and asks an [`Approver`] for a
//! decision. The cluster's approver ([`ClusterApprover`]) finds or creates
//! the ApprovalRequest, tells the relay its name (the client gets a
//! NoticeResponse with the `kubectl patch` that approves it), waits up to
//! `approval.holdTimeout` for the operator to decide from the reviews,
//! counts the reviews again itself, and marks an approved request `Consumed`
//! before the statement runs, with the resourceVersion it read, so an
//! approval runs one statement once. A client that cancels or hangs up
//! drops the relay's end of the channel, and the approver withdraws the
//! request.
//!
//! An approval covers exactly what the approver saw ([`binding`]): the
//! statement's bytes and parameter types, its values, the requester and the
//! Connection's uid. A request is reused only for that very statement, so an
//! agent whose hold timed out runs its statement by sending it again once
//! the request is approved.

mod binding;
mod cluster;

use std::{fmt, time::Duration};

pub use binding::{
    Binding, MAX_PARAMETER_BYTES, MAX_PARAMETERS, MAX_STATEMENT_BYTES, MAX_VALUE_CHARS, Shown, binding,
    hidden, shown,
};
pub use cluster::{BINDING_LABEL, ClusterApprover};
use gatehouse_crds::common::Approvers;
use tokio::sync::mpsc;

use crate::{
    pg::sqlstate,
    policy::{Identity, Refusal},
};

/// What a held statement asks approval for.
#[derive(Debug, Clone)]
pub struct Ticket {
    /// The caller.
    pub requester: Identity,
    /// The session the statement came in.
    pub session: String,
    /// The statement and its parameters as approvers see them.
    pub shown: Shown,
    /// What the approval covers.
    pub binding: Binding,
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
    /// The statement cannot be held: it does not fit in an ApprovalRequest,
    /// or holds characters an approver would not see.
    Unshowable(Refusal),
    /// The request says Approved, but it is not one this proxy can trust:
    /// its reviews do not approve it, or it is not this statement's.
    Untrusted {
        /// The ApprovalRequest.
        name: String,
        /// What is wrong with it.
        message: String,
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
            | Outcome::Untrusted { name, .. }
            | Outcome::TimedOut { name, .. } => Some(name),
            Outcome::Cancelled { name } => name.as_deref(),
            Outcome::Unshowable(_) | Outcome::Failed(_) => None,
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
            Outcome::Unshowable(_) => "unshowable",
            Outcome::Untrusted { .. } => "untrusted",
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
            Outcome::Unshowable(refusal) => Some(refusal.clone()),
            Outcome::Untrusted { name, message } => refusal(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!("statement refused by Gatehouse: ApprovalRequest {name} {message}"),
                "the statement did not run; send it again to ask for a new approval, and tell the Connection's operators: something other than the approvers' reviews changed that request".to_owned(),
            ),
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
    // A group approver names the approver group they approve as, which the
    // API server checks they belong to; one listed by name names none.
    let groups = match approvers.groups.as_slice() {
        [] => String::new(),
        [one] => format!("\"groups\":[\"{one}\"],"),
        many => format!("\"groups\":[\"<one of: {}>\"],", many.join(", ")),
    };
    let hint = format!(
        "an approver approves with: kubectl patch approvalrequest {name} -n {namespace} --type=json \
         -p '[{{\"op\":\"add\",\"path\":\"/spec/reviews/-\",\"value\":{{\"user\":\"<their Kubernetes username>\",\
         {groups}\"decision\":\"Approved\",\"reason\":\"<why>\"}}}}]'{} (or kubectl gatehouse approve {name} -n {namespace})",
        if !approvers.groups.is_empty() && !approvers.users.is_empty() {
            " (an approver listed by name leaves out \"groups\")"
        } else {
            ""
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(
            hint.contains(r#""user":"<their Kubernetes username>","groups":["dba"],"decision":"Approved""#)
                && hint.contains("listed by name leaves out"),
            "a group approver is told to name the group: {hint}"
        );
    }
}
