//! The ApprovalRequest controller: turns reviews into a phase, lapses
//! requests at `expiresAt`, records each decision as a Kubernetes Event, and
//! removes finished requests after the retention period.
//!
//! Phases: `Pending` → `Approved` (enough distinct approvals) or `Denied`
//! (any denial) or `Expired` (`expiresAt` passed first); an `Approved`
//! request not used by `expiresAt` becomes `Expired` too; the proxy sets
//! `Consumed` when the approved statement runs. Who may add a review is the
//! API server's business (the admission policy); this controller counts the
//! reviews the API server let in, and still never counts the requester.
//! Status is written with the object's resourceVersion, so a phase the proxy
//! wrote meanwhile (`Consumed`) is never overwritten.

use std::{sync::Arc, time::Duration};

use gatehouse_crds::{ApprovalRequest, ApprovalRequestStatus, Decision, Phase};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::{
    Api, Resource as _, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType},
    },
};

use crate::{Context, Error};

/// What the reviews and the clock say the phase is, with a sentence.
pub fn decide(request: &ApprovalRequest, now: Timestamp) -> (Phase, String) {
    let current = request
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or(Phase::Pending);
    let spec = &request.spec;
    let expired = now >= spec.expires_at.0;
    match current {
        Phase::Denied | Phase::Expired | Phase::Consumed => {
            let message = request
                .status
                .as_ref()
                .and_then(|s| s.message.clone())
                .unwrap_or_default();
            return (current, message);
        }
        Phase::Approved if expired => {
            return (
                Phase::Expired,
                format!("approved but not run before it expired at {}", spec.expires_at.0),
            );
        }
        Phase::Approved | Phase::Pending => {}
    }
    let counted = spec.reviews.iter().filter(|r| r.user != spec.requester.username);
    if let Some(denial) = counted.clone().find(|r| r.decision == Decision::Denied) {
        let reason = denial.reason.as_deref().unwrap_or("no reason given");
        return (Phase::Denied, format!("denied by {}: {reason}", denial.user));
    }
    let mut approvers: Vec<&str> = counted
        .filter(|r| r.decision == Decision::Approved)
        .map(|r| r.user.as_str())
        .collect();
    approvers.sort_unstable();
    approvers.dedup();
    let required = usize::try_from(spec.approvers.required.max(1)).unwrap_or(1);
    if approvers.len() >= required {
        return (Phase::Approved, format!("approved by {}", approvers.join(", ")));
    }
    if expired {
        return (
            Phase::Expired,
            format!(
                "expired at {} with {} of {required} approvals",
                spec.expires_at.0,
                approvers.len()
            ),
        );
    }
    (
        Phase::Pending,
        format!("waiting for {} more approval(s)", required - approvers.len()),
    )
}

/// Reconciles one ApprovalRequest.
pub async fn reconcile(request: Arc<ApprovalRequest>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = request.namespace().ok_or(Error::NotNamespaced)?;
    let name = request.name_any();
    let api: Api<ApprovalRequest> = Api::namespaced(ctx.client.clone(), &namespace);
    let now = Timestamp::now();
    let (phase, message) = decide(&request, now);
    let previous = request.status.clone().unwrap_or_default();
    if previous.phase != Some(phase) || previous.message.as_deref() != Some(message.as_str()) {
        let status = ApprovalRequestStatus {
            observed_generation: request.metadata.generation,
            phase: Some(phase),
            message: Some(message.clone()),
            conditions: previous.conditions.clone(),
        };
        // The resourceVersion makes this a compare-and-swap: a phase written
        // meanwhile (the proxy's Consumed) wins, and this reconcile runs again.
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": request.resource_version()},
            "status": status,
        });
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(Error::Kube)?;
        if previous.phase != Some(phase) {
            let (reason, type_) = match phase {
                Phase::Approved => ("Approved", EventType::Normal),
                Phase::Denied => ("Denied", EventType::Warning),
                Phase::Expired => ("Expired", EventType::Warning),
                Phase::Consumed => ("Consumed", EventType::Normal),
                Phase::Pending => ("Pending", EventType::Normal),
            };
            let event = Event {
                type_,
                reason: reason.to_owned(),
                note: Some(message.clone()),
                action: "Review".to_owned(),
                secondary: None,
            };
            if let Err(e) = ctx.recorder.publish(&event, &request.object_ref(&())).await {
                tracing::warn!(error = %e, request = %name, "could not record the Event");
            }
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
    use gatehouse_crds::{ApprovalRequestSpec, Review};

    use super::*;

    fn request(required: i32, reviews: &[(&str, Decision)]) -> ApprovalRequest {
        let spec: ApprovalRequestSpec = serde_json::from_value(serde_json::json!({
            "connection": "orders-db",
            "requester": {"username": "carol"},
            "sessionID": "s",
            "statement": "DELETE FROM orders WHERE id = $1",
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
            .map(|(user, decision)| Review {
                user: (*user).to_owned(),
                decision: *decision,
                reason: Some("ticket 812".into()),
            })
            .collect();
        request
    }

    fn at(text: &str) -> Timestamp {
        text.parse().expect("time")
    }

    #[test]
    fn reviews_become_a_phase() {
        let before = at("2029-12-31T00:00:00Z");
        assert_eq!(decide(&request(1, &[]), before).0, Phase::Pending);
        let approved = decide(&request(1, &[("alice", Decision::Approved)]), before);
        assert_eq!(approved, (Phase::Approved, "approved by alice".to_owned()));
        assert_eq!(
            decide(&request(2, &[("alice", Decision::Approved)]), before).0,
            Phase::Pending
        );
        assert_eq!(
            decide(
                &request(2, &[("alice", Decision::Approved), ("bob", Decision::Approved)]),
                before
            )
            .0,
            Phase::Approved
        );
        let denied = decide(
            &request(2, &[("alice", Decision::Approved), ("bob", Decision::Denied)]),
            before,
        );
        assert_eq!(denied, (Phase::Denied, "denied by bob: ticket 812".to_owned()));
    }

    #[test]
    fn the_requester_never_counts() {
        let before = at("2029-12-31T00:00:00Z");
        assert_eq!(
            decide(&request(1, &[("carol", Decision::Approved)]), before).0,
            Phase::Pending
        );
    }

    #[test]
    fn the_clock_lapses_requests_and_final_phases_stay() {
        let after = at("2030-01-01T00:00:01Z");
        assert_eq!(decide(&request(1, &[]), after).0, Phase::Expired);
        let mut approved = request(1, &[("alice", Decision::Approved)]);
        approved.status = Some(ApprovalRequestStatus {
            phase: Some(Phase::Approved),
            ..Default::default()
        });
        assert_eq!(
            decide(&approved, after).0,
            Phase::Expired,
            "approved but never run"
        );
        approved.status = Some(ApprovalRequestStatus {
            phase: Some(Phase::Consumed),
            message: Some("ran".into()),
            ..Default::default()
        });
        assert_eq!(decide(&approved, after), (Phase::Consumed, "ran".to_owned()));
    }
}
