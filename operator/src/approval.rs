//! The ApprovalRequest controller: turns reviews into a decision, lapses
//! requests at `expiresAt`, records each decision as a Kubernetes Event, and
//! removes finished requests after the retention period.
//!
//! Phases: `Pending` → `Approved` (enough distinct approvals) or `Denied`
//! (any denial) or `Expired` (`expiresAt` passed first); an `Approved`
//! request not used by `expiresAt` becomes `Expired` too; the proxy sets
//! `Consumed` when the approved statement runs, or `Expired` when its client
//! gives up (withdrawn). Beside the phase, the conditions `Approved`,
//! `Denied`, `Expired` and `Consumed` say why, and `decidedBy` who.
//!
//! Who may add a review is the API server's business (the admission
//! policy); this controller still counts only reviews by the request's
//! approvers, never the requester's ([`ApprovalRequestSpec::tally`]), and
//! decides nothing while the admission policy is not in force
//! ([`crate::admission`]): a request stays Pending with the reason on its
//! `Approved` condition, and one that gained reviews meanwhile expires,
//! since those reviews were never checked. Status is written with the
//! object's resourceVersion, so a phase the proxy wrote meanwhile
//! (`Consumed`) is never overwritten.
//!
//! [`ApprovalRequestSpec::tally`]: gatehouse_crds::ApprovalRequestSpec::tally

use std::{sync::Arc, time::Duration};

use gatehouse_crds::{ApprovalRequest, ApprovalRequestStatus, Phase, Tally};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::{
    Api, Resource as _, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType},
    },
};

use crate::{
    Context, Error,
    conditions::{Verdict, merge},
};

/// How often a Pending request is looked at again while approvals are
/// suspended, so it is decided soon after the admission policy is back.
const SUSPENDED_RETRY: Duration = Duration::from_secs(5);

/// The operator's decision on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    /// The phase.
    pub phase: Phase,
    /// A sentence on it.
    pub message: String,
    /// Who decided it, when reviews did.
    pub decided_by: Option<String>,
    /// The conditions, in order.
    pub verdicts: Vec<Verdict>,
}

/// What the reviews, the clock and the admission policy (`admission`: `Ok`
/// in force, or why not) say the request is.
pub fn decide(request: &ApprovalRequest, now: Timestamp, admission: Result<(), &str>) -> Decided {
    let spec = &request.spec;
    let status = request.status.clone().unwrap_or_default();
    let message = status.message.clone().unwrap_or_default();
    let expired = spec.expired(now);
    let decided = |phase, message: String, decided_by: Option<String>, verdicts| Decided {
        phase,
        message,
        decided_by,
        verdicts,
    };
    match request.phase() {
        Phase::Consumed => {
            return decided(
                Phase::Consumed,
                message.clone(),
                status.decided_by,
                vec![
                    Verdict::ok("Approved", "Reviewed", approved_message(&message)),
                    Verdict::ok("Consumed", "Ran", message),
                ],
            );
        }
        Phase::Denied => {
            return decided(
                Phase::Denied,
                message.clone(),
                status.decided_by,
                vec![
                    Verdict::failed("Approved", "Denied", message.clone()),
                    Verdict::ok("Denied", "Reviewed", message),
                ],
            );
        }
        Phase::Expired => {
            // The reason given when it lapsed stays; the proxy withdraws
            // with a message of its own.
            let reason = status
                .conditions
                .iter()
                .find(|c| c.type_ == "Expired")
                .map(|c| c.reason.clone())
                .unwrap_or_else(|| {
                    if message.starts_with("withdrawn") {
                        "Withdrawn"
                    } else {
                        "Expired"
                    }
                    .to_owned()
                });
            let approved = status
                .conditions
                .iter()
                .any(|c| c.type_ == "Approved" && c.status == "True");
            let approval = if approved {
                Verdict::ok("Approved", "Reviewed", "approved, but not run")
            } else {
                Verdict::failed("Approved", &reason, message.clone())
            };
            return decided(
                Phase::Expired,
                message.clone(),
                status.decided_by,
                vec![approval, Verdict::ok("Expired", &reason, message)],
            );
        }
        Phase::Approved if expired => {
            let message = format!("approved but not run before it expired at {}", spec.expires_at.0);
            return decided(
                Phase::Expired,
                message.clone(),
                status.decided_by,
                vec![
                    Verdict::ok("Approved", "Reviewed", "approved, but not run"),
                    Verdict::ok("Expired", "Expired", message),
                ],
            );
        }
        Phase::Approved => {
            return decided(
                Phase::Approved,
                message.clone(),
                status.decided_by,
                vec![Verdict::ok("Approved", "Reviewed", message)],
            );
        }
        Phase::Pending => {}
    }
    let lapse = |message: String, reason: &str| {
        decided(
            Phase::Expired,
            message.clone(),
            None,
            vec![
                Verdict::failed("Approved", reason, message.clone()),
                Verdict::ok("Expired", reason, message),
            ],
        )
    };
    if let Err(why) = admission {
        if expired {
            return lapse(format!("expired at {}", spec.expires_at.0), "Expired");
        }
        if !spec.reviews.is_empty() {
            return lapse(
                format!(
                    "reviews were added while the admission policy was not in force, so the API server did not check who wrote them; \
                     send the statement again to ask anew ({why})"
                ),
                "AdmissionPolicyNotInForce",
            );
        }
        let message = format!("approvals are suspended: {why}");
        return decided(
            Phase::Pending,
            message.clone(),
            None,
            vec![Verdict::failed("Approved", "AdmissionPolicyNotInForce", message)],
        );
    }
    let ignored = ignored(request);
    match spec.tally() {
        Tally::Denied { by, reason } => {
            let message = format!("denied by {by}: {reason}");
            decided(
                Phase::Denied,
                message.clone(),
                Some(by),
                vec![
                    Verdict::failed("Approved", "Denied", message.clone()),
                    Verdict::ok("Denied", "Reviewed", message),
                ],
            )
        }
        Tally::Approved { by } => {
            let message = format!("approved by {}", by.join(", "));
            decided(
                Phase::Approved,
                message.clone(),
                Some(by.join(", ")),
                vec![Verdict::ok("Approved", "Reviewed", message)],
            )
        }
        Tally::Pending { approvals, required } if expired => lapse(
            format!(
                "expired at {} with {} of {required} approvals{ignored}",
                spec.expires_at.0,
                approvals.len()
            ),
            "Expired",
        ),
        Tally::Pending { approvals, required } => {
            let message = format!(
                "waiting for {} more approval(s){ignored}",
                required - approvals.len()
            );
            decided(
                Phase::Pending,
                message.clone(),
                None,
                vec![Verdict::failed("Approved", "WaitingForReviews", message)],
            )
        }
    }
}

/// "; not counted: the requester's own review, mallory (not among the
/// approvers)", or nothing when every review counts.
fn ignored(request: &ApprovalRequest) -> String {
    let spec = &request.spec;
    let ignored: Vec<String> = spec
        .reviews
        .iter()
        .filter(|r| !spec.counts(r))
        .map(|r| {
            if r.user == spec.requester.username {
                format!("{} (the requester)", r.user)
            } else {
                format!("{} (not among the approvers)", r.user)
            }
        })
        .collect();
    if ignored.is_empty() {
        String::new()
    } else {
        format!("; not counted: {}", ignored.join(", "))
    }
}

/// The `Approved` condition's message of a request that ran.
fn approved_message(message: &str) -> String {
    message
        .split_once("; ran")
        .map_or(message, |(approved, _)| approved)
        .to_owned()
}

/// An Event note holds at most 1 KiB.
fn truncate_note(message: &str) -> String {
    let mut end = message.len().min(1024);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_owned()
}

/// Reconciles one ApprovalRequest.
pub async fn reconcile(request: Arc<ApprovalRequest>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = request.namespace().ok_or(Error::NotNamespaced)?;
    let name = request.name_any();
    let api: Api<ApprovalRequest> = Api::namespaced(ctx.client.clone(), &namespace);
    let now = Timestamp::now();
    let admission = ctx.admission.in_force();
    let decision = decide(
        &request,
        now,
        admission.as_ref().map(|_| ()).map_err(String::as_str),
    );
    ctx.metrics.admission_in_force(admission.is_ok());
    let previous = request.status.clone().unwrap_or_default();
    let status = ApprovalRequestStatus {
        observed_generation: request.metadata.generation,
        phase: Some(decision.phase),
        message: Some(decision.message.clone()),
        decided_by: decision.decided_by.clone(),
        conditions: merge(
            &previous.conditions,
            &decision.verdicts,
            request.metadata.generation,
            now,
        ),
    };
    let phase = decision.phase;
    if status != previous {
        // The resourceVersion makes this a compare-and-swap: a phase written
        // meanwhile (the proxy's Consumed) wins, and this reconcile runs again.
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": request.resource_version()},
            "status": status,
        });
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(Error::Kube)?;
        let suspended = admission.is_err()
            && !previous
                .conditions
                .iter()
                .any(|c| c.reason == "AdmissionPolicyNotInForce");
        let event = if previous.phase != Some(phase) {
            let (reason, type_) = match phase {
                Phase::Approved => ("Approved", EventType::Normal),
                Phase::Denied => ("Denied", EventType::Warning),
                Phase::Expired => ("Expired", EventType::Warning),
                Phase::Consumed => ("Consumed", EventType::Normal),
                Phase::Pending => ("Pending", EventType::Normal),
            };
            Some((reason, type_))
        } else if suspended {
            Some(("AdmissionPolicyNotInForce", EventType::Warning))
        } else {
            None
        };
        if let Some((reason, type_)) = event {
            let event = Event {
                type_,
                reason: reason.to_owned(),
                note: Some(truncate_note(&decision.message)),
                action: "Review".to_owned(),
                secondary: None,
            };
            if let Err(e) = ctx.recorder.publish(&event, &request.object_ref(&())).await {
                tracing::warn!(error = %e, request = %name, "could not record the Event");
            }
        }
    }
    if let Err(why) = &admission {
        tracing::warn!(request = %name, reason = %why, "approvals are suspended: the admission policy is not in force");
        if phase == Phase::Pending {
            return Ok(Action::requeue(SUSPENDED_RETRY));
        }
    }
    // What happens next on the clock: expiry, then removal after retention.
    let finished = matches!(phase, Phase::Denied | Phase::Expired | Phase::Consumed);
    let expires = request.spec.expires_at.0;
    let remove_at = expires
        .checked_add(SignedDuration::try_from(ctx.approval_retention).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX);
    if finished && now >= remove_at {
        match api.delete(&name, &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(Error::Kube(e)),
        }
        return Ok(Action::await_change());
    }
    let next = if finished { remove_at } else { expires };
    let wait = now.duration_until(next).unsigned_abs();
    Ok(Action::requeue(
        wait.clamp(Duration::from_millis(100), Duration::from_secs(3600)),
    ))
}

#[cfg(test)]
mod tests {
    use gatehouse_crds::{ApprovalRequestSpec, Decision, Review};

    use super::*;

    const IN_FORCE: Result<(), &str> = Ok(());
    const MISSING: Result<(), &str> =
        Err("ValidatingAdmissionPolicy gatehouse-approvalrequests is not installed");

    fn request(required: i32, reviews: &[(&str, &[&str], Decision)]) -> ApprovalRequest {
        let spec: ApprovalRequestSpec = serde_json::from_value(serde_json::json!({
            "connection": "orders-db",
            "connectionUID": "6b1c1b7e-2f0a-4c3e-9d51-0b7a2e9c4f10",
            "requester": {"username": "carol"},
            "sessionID": "s",
            "statement": "DELETE FROM orders WHERE id = $1",
            "statementHash": "0".repeat(64),
            "parametersHash": "1".repeat(64),
            "fingerprint": "f",
            "policy": "p",
            "rule": "r",
            "approvers": {"groups": ["dba"], "required": required},
            "expiresAt": "2030-01-01T00:00:00Z",
        }))
        .expect("spec");
        let mut request = ApprovalRequest::new("r1", spec);
        request.spec.reviews = reviews
            .iter()
            .map(|(user, groups, decision)| Review {
                user: (*user).to_owned(),
                groups: groups.iter().map(|g| (*g).to_owned()).collect(),
                decision: *decision,
                reason: Some("ticket 812".into()),
            })
            .collect();
        request
    }

    fn at(text: &str) -> Timestamp {
        text.parse().expect("time")
    }

    fn condition(decided: &Decided, kind: &str) -> (bool, String) {
        let v = decided.verdicts.iter().find(|v| v.kind == kind).expect(kind);
        (v.ok, v.reason.clone())
    }

    const DBA: &[&str] = &["dba"];

    #[test]
    fn reviews_become_a_phase_with_conditions_and_who_decided() {
        let before = at("2029-12-31T00:00:00Z");
        let pending = decide(&request(1, &[]), before, IN_FORCE);
        assert_eq!(pending.phase, Phase::Pending);
        assert_eq!(
            condition(&pending, "Approved"),
            (false, "WaitingForReviews".into())
        );
        let approved = decide(
            &request(1, &[("alice", DBA, Decision::Approved)]),
            before,
            IN_FORCE,
        );
        assert_eq!(
            (
                approved.phase,
                approved.message.as_str(),
                approved.decided_by.as_deref()
            ),
            (Phase::Approved, "approved by alice", Some("alice"))
        );
        assert_eq!(condition(&approved, "Approved"), (true, "Reviewed".into()));
        assert_eq!(
            decide(
                &request(2, &[("alice", DBA, Decision::Approved)]),
                before,
                IN_FORCE
            )
            .phase,
            Phase::Pending
        );
        assert_eq!(
            decide(
                &request(
                    2,
                    &[
                        ("alice", DBA, Decision::Approved),
                        ("bob", DBA, Decision::Approved)
                    ]
                ),
                before,
                IN_FORCE
            )
            .phase,
            Phase::Approved
        );
        let denied = decide(
            &request(
                2,
                &[("alice", DBA, Decision::Approved), ("bob", DBA, Decision::Denied)],
            ),
            before,
            IN_FORCE,
        );
        assert_eq!(denied.message, "denied by bob: ticket 812");
        assert_eq!(condition(&denied, "Denied"), (true, "Reviewed".into()));
        assert_eq!(denied.decided_by.as_deref(), Some("bob"));
    }

    #[test]
    fn the_requester_and_reviewers_outside_the_approvers_never_count() {
        let before = at("2029-12-31T00:00:00Z");
        // Without the admission policy anyone who may patch could write
        // these; they never make up `required`.
        let forged = decide(
            &request(
                2,
                &[
                    ("carol", DBA, Decision::Approved),
                    ("mallory", &[], Decision::Approved),
                    ("bob", &["developers"], Decision::Approved),
                    ("alice", DBA, Decision::Approved),
                ],
            ),
            before,
            IN_FORCE,
        );
        assert_eq!(forged.phase, Phase::Pending);
        assert!(
            forged.message.contains("carol (the requester)")
                && forged.message.contains("mallory (not among the approvers)"),
            "{}",
            forged.message
        );
    }

    #[test]
    fn nothing_is_approved_while_the_admission_policy_is_not_in_force() {
        let before = at("2029-12-31T00:00:00Z");
        let suspended = decide(&request(1, &[]), before, MISSING);
        assert_eq!(suspended.phase, Phase::Pending);
        assert_eq!(
            condition(&suspended, "Approved"),
            (false, "AdmissionPolicyNotInForce".into())
        );
        assert!(
            suspended.message.contains("is not installed"),
            "{}",
            suspended.message
        );
        // A review written meanwhile was never checked: the request lapses.
        let reviewed = decide(
            &request(1, &[("alice", DBA, Decision::Approved)]),
            before,
            MISSING,
        );
        assert_eq!(reviewed.phase, Phase::Expired);
        assert_eq!(
            condition(&reviewed, "Expired"),
            (true, "AdmissionPolicyNotInForce".into())
        );
        // An approval decided while the policy was in force stands.
        let mut approved = request(1, &[("alice", DBA, Decision::Approved)]);
        approved.status = Some(ApprovalRequestStatus {
            phase: Some(Phase::Approved),
            message: Some("approved by alice".into()),
            ..Default::default()
        });
        assert_eq!(decide(&approved, before, MISSING).phase, Phase::Approved);
    }

    #[test]
    fn the_clock_lapses_requests_and_final_phases_stay() {
        let after = at("2030-01-01T00:00:01Z");
        assert_eq!(decide(&request(1, &[]), after, IN_FORCE).phase, Phase::Expired);
        let mut approved = request(1, &[("alice", DBA, Decision::Approved)]);
        approved.status = Some(ApprovalRequestStatus {
            phase: Some(Phase::Approved),
            ..Default::default()
        });
        assert_eq!(
            decide(&approved, after, IN_FORCE).phase,
            Phase::Expired,
            "approved but never run"
        );
        approved.status = Some(ApprovalRequestStatus {
            phase: Some(Phase::Consumed),
            message: Some("approved by alice; ran once in session s".into()),
            ..Default::default()
        });
        let consumed = decide(&approved, after, IN_FORCE);
        assert_eq!(
            (consumed.phase, consumed.message.as_str()),
            (Phase::Consumed, "approved by alice; ran once in session s")
        );
        assert_eq!(condition(&consumed, "Consumed"), (true, "Ran".into()));
        let mut withdrawn = request(1, &[]);
        withdrawn.status = Some(ApprovalRequestStatus {
            phase: Some(Phase::Expired),
            message: Some("withdrawn: the client cancelled the statement".into()),
            ..Default::default()
        });
        let withdrawn = decide(&withdrawn, at("2029-12-31T00:00:00Z"), IN_FORCE);
        assert_eq!(condition(&withdrawn, "Expired"), (true, "Withdrawn".into()));
    }
}
