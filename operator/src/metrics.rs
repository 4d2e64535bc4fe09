//! The operator's Prometheus metrics, served as OpenMetrics text on the
//! health address's `/metrics`.
//!
//! Labels take their values from small fixed sets ([`ControllerKind`],
//! [`ErrorReason`]), never from objects: no name, namespace or message, so
//! the series count does not grow with the cluster and reveals nothing of
//! it. Every series exists from the start, at zero, and each handle is
//! resolved once, here.
//!
//! kube-runtime keeps its queue to itself, so the queue depth counts what
//! the operator sees: reconciles running, and objects waiting to retry
//! after a failed reconcile (until their retry starts, or their object is
//! gone). Changes that the watches have seen and that wait for their turn,
//! and the periodic resyncs, are in kube-runtime's queue and not counted.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::Error;

/// The Content-Type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the reconcile duration histogram, in seconds: from a
/// status that needs no write to a Connection's nine server-side applies
/// against a slow API server.
const DURATION_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// One of the operator's controllers, the `controller` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControllerKind {
    /// Connections: the proxy's objects and the Connection's status.
    Connection,
    /// Policies: their status.
    Policy,
    /// ApprovalRequests: their phase, Events and removal.
    ApprovalRequest,
}

impl ControllerKind {
    /// Every controller, in the order of their metrics.
    pub const ALL: [ControllerKind; 3] = [
        ControllerKind::Connection,
        ControllerKind::Policy,
        ControllerKind::ApprovalRequest,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ControllerKind::Connection => "connection",
            ControllerKind::Policy => "policy",
            ControllerKind::ApprovalRequest => "approvalrequest",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a reconcile failed, the `reason` label: what the API server
/// answered, or why it was not asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorReason {
    /// 409: the object changed meanwhile (a compare-and-swap lost).
    Conflict,
    /// 401 or 403: the operator's own rights are missing.
    Forbidden,
    /// 404: an object was gone.
    NotFound,
    /// 400 or 422: the API server refused what the operator wrote.
    Invalid,
    /// Any other status from the API server (5xx, 429, ...).
    ApiError,
    /// The API server could not be reached or its answer not read.
    Unreachable,
    /// A namespaced kind came without a namespace.
    NoNamespace,
    /// Anything else (a finalizer the runtime refused, ...).
    Other,
}

impl ErrorReason {
    /// Every reason, in the order of their counters.
    pub const ALL: [ErrorReason; 8] = [
        ErrorReason::Conflict,
        ErrorReason::Forbidden,
        ErrorReason::NotFound,
        ErrorReason::Invalid,
        ErrorReason::ApiError,
        ErrorReason::Unreachable,
        ErrorReason::NoNamespace,
        ErrorReason::Other,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorReason::Conflict => "conflict",
            ErrorReason::Forbidden => "forbidden",
            ErrorReason::NotFound => "not_found",
            ErrorReason::Invalid => "invalid",
            ErrorReason::ApiError => "api_error",
            ErrorReason::Unreachable => "unreachable",
            ErrorReason::NoNamespace => "no_namespace",
            ErrorReason::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The reason of a reconcile's error.
    pub fn of(error: &Error) -> ErrorReason {
        use kube::runtime::finalizer::Error as Finalizer;
        match error {
            Error::Kube(e) => ErrorReason::of_kube(e),
            Error::NotNamespaced => ErrorReason::NoNamespace,
            Error::Finalizer(e) => match e.as_ref() {
                Finalizer::ApplyFailed(e) | Finalizer::CleanupFailed(e) => ErrorReason::of(e),
                Finalizer::AddFinalizer(e) | Finalizer::RemoveFinalizer(e) => ErrorReason::of_kube(e),
                _ => ErrorReason::Other,
            },
        }
    }

    fn of_kube(error: &kube::Error) -> ErrorReason {
        match error {
            kube::Error::Api(status) => match status.code {
                409 => ErrorReason::Conflict,
                401 | 403 => ErrorReason::Forbidden,
                404 => ErrorReason::NotFound,
                400 | 422 => ErrorReason::Invalid,
                _ => ErrorReason::ApiError,
            },
            kube::Error::HyperError(_)
            | kube::Error::Service(_)
            | kube::Error::ReadEvents(_)
            | kube::Error::RustlsTls(_)
            | kube::Error::SerdeError(_)
            | kube::Error::FromUtf8(_) => ErrorReason::Unreachable,
            _ => ErrorReason::Other,
        }
    }
}

/// What waits on one controller: the queue depth's parts.
#[derive(Debug, Default)]
struct Waiting {
    /// Reconciles running now.
    running: usize,
    /// Objects (`namespace/name`) whose reconcile failed and that wait to
    /// retry. Held in memory only; never a label.
    retrying: HashSet<String>,
}

/// One controller's metrics.
#[derive(Debug)]
struct PerController {
    reconciles: Counter,
    /// By [`ErrorReason::index`].
    errors: Vec<Counter>,
    duration: Histogram,
    queue_depth: Gauge,
    waiting: Mutex<Waiting>,
}

impl PerController {
    fn waiting(&self, change: impl FnOnce(&mut Waiting)) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut waiting);
        let depth = waiting.running.saturating_add(waiting.retrying.len());
        self.queue_depth.set(i64::try_from(depth).unwrap_or(i64::MAX));
    }
}

type OneLabel = [(&'static str, &'static str); 1];
type TwoLabels = [(&'static str, &'static str); 2];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// Every metric of the operator, and the registry that renders them.
/// Created once per process and shared through [`Context`](crate::Context).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// By [`ControllerKind::index`].
    controllers: Vec<PerController>,
    /// 1 while this replica holds the leader-election Lease, 0 otherwise.
    pub leader: Gauge,
    /// 1 while the ApprovalRequest admission policy is in force, 0 while
    /// approvals are suspended.
    admission_in_force: Gauge,
    /// How many of `invalid` there are.
    policies_invalid: Gauge,
    /// The Policies (`namespace/name`) the proxy cannot compile, as last
    /// seen. Held in memory only; never a label.
    invalid: Mutex<HashSet<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric, at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let reconciles = Family::<OneLabel, Counter>::default();
        let errors = Family::<TwoLabels, Counter>::default();
        let durations =
            Family::<OneLabel, Histogram, fn() -> Histogram>::new_with_constructor(duration_histogram);
        let depths = Family::<OneLabel, Gauge>::default();
        let controllers = ControllerKind::ALL
            .iter()
            .map(|kind| {
                let label = [("controller", kind.as_str())];
                PerController {
                    reconciles: reconciles.get_or_create_owned(&label),
                    errors: ErrorReason::ALL
                        .iter()
                        .map(|reason| {
                            errors.get_or_create_owned(&[
                                ("controller", kind.as_str()),
                                ("reason", reason.as_str()),
                            ])
                        })
                        .collect(),
                    duration: durations.get_or_create_owned(&label),
                    queue_depth: depths.get_or_create_owned(&label),
                    waiting: Mutex::default(),
                }
            })
            .collect();
        registry.register(
            "gatehouse_operator_reconciles",
            "Reconciles run, whatever their outcome, by controller",
            reconciles,
        );
        registry.register(
            "gatehouse_operator_reconcile_errors",
            "Reconciles that failed and will be retried, by controller and reason (what the API server \
             answered, or why it was not asked)",
            errors,
        );
        registry.register_with_unit(
            "gatehouse_operator_reconcile_duration",
            "Time one reconcile took, by controller",
            Unit::Seconds,
            durations,
        );
        registry.register(
            "gatehouse_operator_queue_depth",
            "Objects waiting on the controller that the operator can see: reconciles running plus \
             objects waiting to retry a failed reconcile. Watch events and periodic resyncs waiting \
             in kube-runtime's own queue are not counted (it does not expose them)",
            depths,
        );
        let leader = Gauge::default();
        registry.register(
            "gatehouse_operator_leader",
            "1 while this replica holds the leader-election Lease and reconciles, 0 while it waits",
            leader.clone(),
        );
        let admission_in_force = Gauge::default();
        registry.register(
            "gatehouse_operator_admission_policy_in_force",
            "1 while the ValidatingAdmissionPolicy gatehouse-approvalrequests is installed as shipped and \
             bound with Deny; 0 while it is not, and the operator approves nothing",
            admission_in_force.clone(),
        );
        let policies_invalid = Gauge::default();
        registry.register(
            "gatehouse_operator_policies_invalid",
            "Policies the proxy cannot compile; each denies everything to the callers it names on the \
             Connections it selects until it is fixed (their status says why)",
            policies_invalid.clone(),
        );
        Metrics {
            registry,
            controllers,
            leader,
            admission_in_force,
            policies_invalid,
            invalid: Mutex::default(),
        }
    }

    fn invalid(&self, change: impl FnOnce(&mut HashSet<String>)) {
        let mut invalid = self.invalid.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut invalid);
        self.policies_invalid
            .set(i64::try_from(invalid.len()).unwrap_or(i64::MAX));
    }

    /// The Policy `key` (`namespace/name`) was found to compile or not.
    pub fn policy_checked(&self, key: &str, invalid: bool) {
        self.invalid(|set| {
            if invalid {
                set.insert(key.to_owned());
            } else {
                set.remove(key);
            }
        });
    }

    /// `names` are every Policy in `namespace` now: the others are gone.
    pub fn policies_present(&self, namespace: &str, names: impl IntoIterator<Item = String>) {
        let present: HashSet<String> = names
            .into_iter()
            .map(|name| format!("{namespace}/{name}"))
            .collect();
        self.invalid(|set| {
            set.retain(|key| {
                key.split_once('/').is_none_or(|(ns, _)| ns != namespace) || present.contains(key)
            });
        });
    }

    /// Whether the ApprovalRequest admission policy is in force.
    pub fn admission_in_force(&self, in_force: bool) {
        self.admission_in_force.set(i64::from(in_force));
    }

    fn of(&self, controller: ControllerKind) -> &PerController {
        // Built from ControllerKind::ALL, so every index is present.
        &self.controllers[controller.index()]
    }

    /// A reconcile of the object `key` (`namespace/name`) begins: it no
    /// longer waits to retry. It is counted and timed when the returned
    /// guard drops.
    pub fn reconcile_started(self: &Arc<Self>, controller: ControllerKind, key: &str) -> Reconciling {
        self.of(controller).waiting(|w| {
            w.retrying.remove(key);
            w.running += 1;
        });
        Reconciling {
            metrics: self.clone(),
            controller,
            started: Instant::now(),
        }
    }

    /// A reconcile of `key` failed for `reason`; the object waits to retry.
    pub fn reconcile_failed(&self, controller: ControllerKind, reason: ErrorReason, key: String) {
        let per = self.of(controller);
        per.errors[reason.index()].inc();
        per.waiting(|w| {
            w.retrying.insert(key);
        });
    }

    /// The object `key` is gone: it no longer waits to retry, and a Policy
    /// no longer counts as invalid.
    pub fn forget(&self, controller: ControllerKind, key: &str) {
        self.of(controller).waiting(|w| {
            w.retrying.remove(key);
        });
        if controller == ControllerKind::Policy {
            self.policy_checked(key, false);
        }
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 << 10);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// A reconcile running; dropping it (the reconcile ended, or was
/// abandoned) counts and times it.
#[derive(Debug)]
#[must_use = "the reconcile counts as running only while this guard lives"]
pub struct Reconciling {
    metrics: Arc<Metrics>,
    controller: ControllerKind,
    started: Instant,
}

impl Drop for Reconciling {
    fn drop(&mut self) {
        let per = self.metrics.of(self.controller);
        per.reconciles.inc();
        per.duration.observe(self.started.elapsed().as_secs_f64());
        per.waiting(|w| w.running = w.running.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line starting with `series ` in `text`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    }

    fn api(code: u16) -> Error {
        Error::Kube(kube::Error::Api(Box::new(kube::core::Status {
            code,
            ..Default::default()
        })))
    }

    #[test]
    fn every_series_is_exposed_at_zero_from_the_start() {
        let text = Metrics::new().render();
        for (series, value) in [
            (
                r#"gatehouse_operator_reconciles_total{controller="connection"}"#,
                0.0,
            ),
            (r#"gatehouse_operator_reconciles_total{controller="policy"}"#, 0.0),
            (
                r#"gatehouse_operator_reconciles_total{controller="approvalrequest"}"#,
                0.0,
            ),
            (
                r#"gatehouse_operator_reconcile_errors_total{controller="policy",reason="conflict"}"#,
                0.0,
            ),
            (
                r#"gatehouse_operator_reconcile_errors_total{controller="approvalrequest",reason="other"}"#,
                0.0,
            ),
            (
                r#"gatehouse_operator_reconcile_duration_seconds_count{controller="connection"}"#,
                0.0,
            ),
            (r#"gatehouse_operator_queue_depth{controller="connection"}"#, 0.0),
            ("gatehouse_operator_leader", 0.0),
            ("gatehouse_operator_policies_invalid", 0.0),
        ] {
            assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("gatehouse_operator_reconcile_errors_total{"))
                .count(),
            ControllerKind::ALL.len() * ErrorReason::ALL.len()
        );
    }

    #[test]
    fn reconciles_errors_and_waiting_objects_are_counted() {
        let metrics = Arc::new(Metrics::new());
        let connection = ControllerKind::Connection;
        let running = metrics.reconcile_started(connection, "team-a/orders-db");
        let other = metrics.reconcile_started(connection, "team-a/billing-db");
        let depth = r#"gatehouse_operator_queue_depth{controller="connection"}"#;
        assert_eq!(sample(&metrics.render(), depth), Some(2.0));
        drop(running);
        drop(other);
        metrics.reconcile_failed(connection, ErrorReason::Conflict, "team-a/orders-db".into());
        metrics.reconcile_failed(connection, ErrorReason::Conflict, "team-a/orders-db".into());
        metrics.leader.set(1);
        let text = metrics.render();
        for (series, value) in [
            (
                r#"gatehouse_operator_reconciles_total{controller="connection"}"#,
                2.0,
            ),
            (r#"gatehouse_operator_reconciles_total{controller="policy"}"#, 0.0),
            (
                r#"gatehouse_operator_reconcile_errors_total{controller="connection",reason="conflict"}"#,
                2.0,
            ),
            (
                r#"gatehouse_operator_reconcile_errors_total{controller="connection",reason="forbidden"}"#,
                0.0,
            ),
            (
                r#"gatehouse_operator_reconcile_duration_seconds_count{controller="connection"}"#,
                2.0,
            ),
            (
                r#"gatehouse_operator_reconcile_duration_seconds_bucket{le="+Inf",controller="connection"}"#,
                2.0,
            ),
            // One object waits to retry, however often it failed.
            (depth, 1.0),
            ("gatehouse_operator_leader", 1.0),
        ] {
            assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
        }
        // Its retry starts: running, no longer waiting; then done.
        let retry = metrics.reconcile_started(connection, "team-a/orders-db");
        assert_eq!(sample(&metrics.render(), depth), Some(1.0));
        drop(retry);
        assert_eq!(sample(&metrics.render(), depth), Some(0.0));
        // An object deleted while waiting is forgotten.
        metrics.reconcile_failed(connection, ErrorReason::NotFound, "team-a/gone".into());
        assert_eq!(sample(&metrics.render(), depth), Some(1.0));
        metrics.forget(connection, "team-a/gone");
        assert_eq!(sample(&metrics.render(), depth), Some(0.0));
    }

    #[test]
    fn invalid_policies_are_counted_until_fixed_or_gone() {
        let metrics = Metrics::new();
        let count = |m: &Metrics| sample(&m.render(), "gatehouse_operator_policies_invalid");
        metrics.policy_checked("team-a/typo", true);
        metrics.policy_checked("team-a/typo", true);
        metrics.policy_checked("team-a/bad-regex", true);
        metrics.policy_checked("team-b/typo", true);
        metrics.policy_checked("team-a/fine", false);
        assert_eq!(count(&metrics), Some(3.0), "each Policy once");
        // Fixed.
        metrics.policy_checked("team-a/bad-regex", false);
        assert_eq!(count(&metrics), Some(2.0));
        // Deleted: a listing of its namespace no longer has it; another
        // namespace's Policy of the same name stays.
        metrics.policies_present("team-a", ["fine".to_owned()]);
        assert_eq!(count(&metrics), Some(1.0));
        // Or the Policy controller finds it gone.
        metrics.forget(ControllerKind::Connection, "team-b/typo");
        assert_eq!(
            count(&metrics),
            Some(1.0),
            "a Connection of that name is not the Policy"
        );
        metrics.forget(ControllerKind::Policy, "team-b/typo");
        assert_eq!(count(&metrics), Some(0.0));
        // No name reaches the exposition.
        metrics.policy_checked("team-c/secret-name", true);
        assert!(!metrics.render().contains("secret-name"));
    }

    #[test]
    fn errors_map_to_fixed_reasons() {
        assert_eq!(ErrorReason::of(&api(409)), ErrorReason::Conflict);
        assert_eq!(ErrorReason::of(&api(403)), ErrorReason::Forbidden);
        assert_eq!(ErrorReason::of(&api(404)), ErrorReason::NotFound);
        assert_eq!(ErrorReason::of(&api(422)), ErrorReason::Invalid);
        assert_eq!(ErrorReason::of(&api(503)), ErrorReason::ApiError);
        assert_eq!(ErrorReason::of(&Error::NotNamespaced), ErrorReason::NoNamespace);
        let read = kube::Error::ReadEvents(std::io::Error::other("connection reset"));
        assert_eq!(ErrorReason::of(&Error::Kube(read)), ErrorReason::Unreachable);
        // Through the finalizer, the reason inside.
        let inner = kube::runtime::finalizer::Error::ApplyFailed(api(409));
        assert_eq!(
            ErrorReason::of(&Error::Finalizer(Box::new(inner))),
            ErrorReason::Conflict
        );
        let adding = kube::runtime::finalizer::Error::<Error>::AddFinalizer(kube::Error::Api(Box::new(
            kube::core::Status {
                code: 403,
                ..Default::default()
            },
        )));
        assert_eq!(
            ErrorReason::of(&Error::Finalizer(Box::new(adding))),
            ErrorReason::Forbidden
        );
    }
}
