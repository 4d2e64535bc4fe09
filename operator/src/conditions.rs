//! Status conditions that change only when their meaning does: a condition
//! whose status, reason and message are unchanged keeps its
//! `lastTransitionTime`, so a reconcile that finds nothing new writes the
//! same status and the API server keeps the same resourceVersion.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

/// A condition's verdict and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `Ready`, `CredentialsResolved`, ...
    pub kind: &'static str,
    /// Whether it holds.
    pub ok: bool,
    /// A CamelCase reason.
    pub reason: String,
    /// A sentence a person can act on.
    pub message: String,
}

impl Verdict {
    /// A condition that holds.
    pub fn ok(kind: &'static str, reason: &str, message: impl Into<String>) -> Verdict {
        Verdict {
            kind,
            ok: true,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }

    /// A condition that does not hold.
    pub fn failed(kind: &'static str, reason: &str, message: impl Into<String>) -> Verdict {
        Verdict {
            kind,
            ok: false,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
}

/// The conditions for `verdicts`, keeping each unchanged condition of
/// `previous` as it was (its `lastTransitionTime` too), in the order of
/// `verdicts`.
pub fn merge(
    previous: &[Condition],
    verdicts: &[Verdict],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    verdicts
        .iter()
        .map(|verdict| {
            let status = if verdict.ok { "True" } else { "False" };
            let old = previous.iter().find(|c| c.type_ == verdict.kind);
            let same_status = old.is_some_and(|c| c.status == status);
            Condition {
                type_: verdict.kind.to_owned(),
                status: status.to_owned(),
                reason: verdict.reason.clone(),
                message: verdict.message.clone(),
                observed_generation: generation,
                last_transition_time: match old {
                    Some(old) if same_status => old.last_transition_time.clone(),
                    _ => Time(now),
                },
            }
        })
        .collect()
}

/// The `Ready` verdict: true when every other one is, else the first that is not.
pub fn ready(verdicts: &[Verdict], ready_message: &str) -> Verdict {
    match verdicts.iter().find(|v| !v.ok) {
        Some(failed) => Verdict::failed("Ready", &failed.reason, failed.message.clone()),
        None => Verdict::ok("Ready", "Ready", ready_message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unchanged_condition_keeps_its_transition_time() {
        let then: Timestamp = "2026-11-28T10:00:00Z".parse().expect("time");
        let now: Timestamp = "2026-11-28T11:00:00Z".parse().expect("time");
        let verdicts = [
            Verdict::ok("CredentialsResolved", "SecretFound", "found"),
            Verdict::failed("ProxyAvailable", "Unavailable", "0 of 1"),
        ];
        let first = merge(&[], &verdicts, Some(1), then);
        let again = merge(&first, &verdicts, Some(1), now);
        assert_eq!(first, again, "nothing changed, nothing written");
        let better = [
            verdicts[0].clone(),
            Verdict::ok("ProxyAvailable", "Available", "1 of 1"),
        ];
        let changed = merge(&first, &better, Some(2), now);
        assert_eq!(changed[0].last_transition_time, Time(then));
        assert_eq!(changed[1].last_transition_time, Time(now));
        assert_eq!(changed[1].observed_generation, Some(2));
    }

    #[test]
    fn ready_takes_the_first_failure() {
        let verdicts = [
            Verdict::ok("A", "Fine", "fine"),
            Verdict::failed("B", "SecretNotFound", "create it"),
            Verdict::failed("C", "Other", "later"),
        ];
        let ready = ready(&verdicts, "serving");
        assert!(!ready.ok);
        assert_eq!(
            (ready.reason.as_str(), ready.message.as_str()),
            ("SecretNotFound", "create it")
        );
        assert!(super::ready(&verdicts[..1], "serving").ok);
    }
}
