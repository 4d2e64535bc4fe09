//! The proxy's Prometheus metrics, served as OpenMetrics text on the admin
//! endpoint's `/metrics`.
//!
//! Every label takes its value from a small fixed set (an enum here), never
//! from the wire: no user name, token, statement text or address, so a
//! hostile client cannot grow the series count or read anything out of it.
//! The counter of every label value exists from the start, so a rate is
//! defined before the first event and the hot path needs no label lookup:
//! each handle is resolved once, here.

use std::{
    sync::atomic::AtomicU64,
    time::{Duration, SystemTime},
};

use crate::mask::rows::MaskStats;
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

/// The Content-Type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the statement duration histogram, in seconds: from a
/// sub-millisecond point lookup to a minute-long report.
const DURATION_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A label value from a fixed set.
pub trait LabelValue: Copy + 'static {
    /// Every value, in the order of their counters.
    const ALL: &'static [Self];
    /// The label's name.
    const KEY: &'static str;
    /// The value as it appears in the exposition.
    fn as_str(self) -> &'static str;
    /// Position in [`ALL`](Self::ALL).
    fn index(self) -> usize;
}

/// Declares a label enum with its exposition strings.
macro_rules! label {
    ($(#[$doc:meta])* $name:ident, $key:literal { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl LabelValue for $name {
            const ALL: &'static [Self] = &[$($name::$variant),+];
            const KEY: &'static str = $key;
            fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

label!(
    /// How a client connection's startup ended; each accepted connection is
    /// counted once (and once more as `protocol_error` in the rare case that
    /// the refusal itself cannot be written).
    SessionOutcome, "outcome" {
        /// Authenticated and relayed to an upstream session.
        Started => "started",
        /// The token was missing or not valid.
        AuthRefused => "auth_refused",
        /// The upstream session could not be opened.
        UpstreamFailed => "upstream_failed",
        /// The client did not finish startup in `limits.startupTimeout`.
        StartupTimeout => "startup_timeout",
        /// Refused with 53300: `limits.maxConnections` sessions were open.
        TooMany => "too_many",
        /// The client broke the protocol during startup.
        ProtocolError => "protocol_error",
        /// Plaintext was refused (TLS required).
        TlsRequired => "tls_required",
        /// The connection carried a CancelRequest.
        CancelRequest => "cancel_request",
        /// The client hung up before a session began.
        ClientGone => "client_gone",
    }
);

label!(
    /// Why an established session ended.
    SessionEnd, "reason" {
        /// The client sent Terminate or hung up.
        ClientClosed => "client_closed",
        /// The server hung up.
        ServerClosed => "server_closed",
        /// Closed by `limits.idleTimeout`.
        IdleTimeout => "idle_timeout",
        /// A protocol or I/O error on either side.
        Error => "error",
    }
);

label!(
    /// What the policy decided about a statement.
    StatementDecision, "decision" {
        /// Forwarded to the server.
        Allow => "allow",
        /// Refused by a rule, the default deny or a statement the classifier refuses.
        Deny => "deny",
        /// Held for approval (refused where the proxy cannot ask: standalone).
        RequireApproval => "require_approval",
        /// Refused because PostgreSQL's parser rejects the text.
        Unparseable => "unparseable",
    }
);

label!(
    /// How the hold of a statement that needs approval ended.
    ApprovalOutcome, "outcome" {
        /// Approved: the statement ran.
        Approved => "approved",
        /// A reviewer denied it.
        Denied => "denied",
        /// The request lapsed.
        Expired => "expired",
        /// `holdTimeout` passed; the request stays open.
        TimedOut => "timed_out",
        /// The client cancelled or left; the request was withdrawn.
        Cancelled => "cancelled",
        /// The statement could not be shown to an approver (too large,
        /// or characters a person would not see); it was refused.
        Unshowable => "unshowable",
        /// The request said Approved, but its reviews or fields did not
        /// approve this statement; it was refused.
        Untrusted => "untrusted",
        /// The request could not be made or read.
        Failed => "failed",
    }
);

impl ApprovalOutcome {
    /// The label of `outcome`.
    pub fn of(outcome: &crate::approval::Outcome) -> Self {
        use crate::approval::Outcome;
        match outcome {
            Outcome::Approved { .. } => Self::Approved,
            Outcome::Denied { .. } => Self::Denied,
            Outcome::Expired { .. } => Self::Expired,
            Outcome::TimedOut { .. } => Self::TimedOut,
            Outcome::Cancelled { .. } => Self::Cancelled,
            Outcome::Unshowable(_) => Self::Unshowable,
            Outcome::Untrusted { .. } => Self::Untrusted,
            Outcome::Failed(_) => Self::Failed,
        }
    }
}

label!(
    /// Which way bytes crossed the proxy.
    ByteDirection, "direction" {
        /// From the client to the server.
        ClientToServer => "client_to_server",
        /// From the server to the client.
        ServerToClient => "server_to_client",
    }
);

label!(
    /// How a configuration reload went.
    ReloadResult, "result" {
        /// The new configuration is in force.
        Ok => "ok",
        /// The new configuration was refused; the last good one stays.
        Error => "error",
    }
);

label!(
    /// Why authentication failed.
    AuthFailure, "reason" {
        /// No token was presented.
        MissingToken => "missing_token",
        /// No validator accepts the token.
        InvalidToken => "invalid_token",
        /// The client answered the password request with another message.
        NotAPassword => "not_a_password",
        /// Any other validator failure.
        Other => "other",
    }
);

impl AuthFailure {
    /// The reason for a validator's refusal.
    pub fn of(error: &crate::identity::AuthError) -> AuthFailure {
        use crate::identity::AuthError;
        #[allow(unreachable_patterns)] // validators to come add variants
        match error {
            AuthError::Missing => AuthFailure::MissingToken,
            AuthError::Rejected => AuthFailure::InvalidToken,
            _ => AuthFailure::Other,
        }
    }
}

/// A counter per value of label `L`, registered as one family.
#[derive(Debug, Clone)]
pub struct Counters<L: LabelValue> {
    counters: Vec<Counter>,
    _label: std::marker::PhantomData<L>,
}

type LabelPair = [(&'static str, &'static str); 1];

impl<L: LabelValue> Counters<L> {
    fn register(registry: &mut Registry, name: &str, help: &str) -> Self {
        let family = Family::<LabelPair, Counter>::default();
        let counters = L::ALL
            .iter()
            .map(|value| family.get_or_create_owned(&[(L::KEY, value.as_str())]))
            .collect();
        registry.register(name, help, family);
        Counters {
            counters,
            _label: std::marker::PhantomData,
        }
    }

    /// The counter of `value`.
    pub fn get(&self, value: L) -> &Counter {
        // Built from L::ALL, so every index is present.
        &self.counters[value.index()]
    }

    /// Adds one for `value`.
    pub fn inc(&self, value: L) {
        self.get(value).inc();
    }
}

/// What masking did, across sessions.
#[derive(Debug)]
pub struct MaskingMetrics {
    cells_scanned: Counter,
    bytes_scanned: Counter,
    /// Per detector, indexed like [`DETECTORS`](crate::mask::DETECTORS),
    /// then one for every Policy's own detectors.
    by_detector: Vec<Counter>,
    /// Per strategy, indexed like [`MaskStats::by_rule`].
    by_rule: Vec<Counter>,
    unscannable_replaced: Counter,
    results_refused: Counter,
}

/// The strategies in the order of [`MaskStats::by_rule`].
const STRATEGIES: [&str; 4] = ["partial", "hash", "redact", "null"];

impl MaskingMetrics {
    fn register(registry: &mut Registry) -> Self {
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let counter = Counter::default();
            registry.register(name, help, counter.clone());
            counter
        };
        let cells_scanned = counter(
            registry,
            "gatehouse_mask_values_scanned",
            "Values (result cells, COPY fields, error fields, notification payloads) the secret detectors scanned",
        );
        let bytes_scanned = counter(
            registry,
            "gatehouse_mask_bytes_scanned",
            "Bytes the secret detectors scanned",
        );
        let detectors = Family::<LabelPair, Counter>::default();
        let by_detector = crate::mask::DETECTORS
            .iter()
            .map(|d| d.name)
            .chain([crate::mask::CUSTOM_LABEL])
            .map(|name| detectors.get_or_create_owned(&[("detector", name)]))
            .collect();
        registry.register(
            "gatehouse_mask_detector_values",
            "Values in which a detector masked a secret, by detector",
            detectors,
        );
        let rules = Family::<LabelPair, Counter>::default();
        let by_rule = STRATEGIES
            .iter()
            .map(|s| rules.get_or_create_owned(&[("strategy", s)]))
            .collect();
        registry.register(
            "gatehouse_mask_rule_values",
            "Values masked by a column rule, by strategy",
            rules,
        );
        let unscannable_replaced = counter(
            registry,
            "gatehouse_mask_unscannable_replaced",
            "Values that could not be scanned (too large, unreadable) and were replaced under failureMode bestEffort",
        );
        let results_refused = counter(
            registry,
            "gatehouse_mask_results_refused",
            "Results refused because a value could not be masked (failureMode strict, or a malformed row)",
        );
        MaskingMetrics {
            cells_scanned,
            bytes_scanned,
            by_detector,
            by_rule,
            unscannable_replaced,
            results_refused,
        }
    }

    /// Adds a session's counts.
    pub fn add(&self, stats: &MaskStats) {
        let add = |counter: &Counter, n: u64| {
            if n > 0 {
                counter.inc_by(n);
            }
        };
        add(&self.cells_scanned, stats.cells_scanned);
        add(&self.bytes_scanned, stats.bytes_scanned);
        for &(id, n) in &stats.by_detector {
            // A Policy's own detectors share the last counter.
            if let Some(counter) = self.by_detector.get(id).or_else(|| self.by_detector.last()) {
                add(counter, n);
            }
        }
        for (counter, n) in self.by_rule.iter().zip(stats.by_rule) {
            add(counter, n);
        }
        add(&self.unscannable_replaced, stats.unscannable_replaced);
        add(&self.results_refused, stats.refused);
    }
}

/// An open session in [`Metrics::sessions_open`]; dropping it closes it.
#[derive(Debug)]
#[must_use = "the session counts as open only while this guard lives"]
pub struct OpenSession(Gauge);

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Every metric of a proxy process, and the registry that renders them.
/// Created once per process and shared through [`Shared`](crate::server::Shared).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Sessions relaying now.
    pub sessions_open: Gauge,
    /// Accepted connections by startup outcome.
    pub sessions: Counters<SessionOutcome>,
    /// Established sessions by how they ended.
    pub sessions_ended: Counters<SessionEnd>,
    /// Statements by decision.
    pub statements: Counters<StatementDecision>,
    /// Holds for approval by how they ended.
    pub approvals: Counters<ApprovalOutcome>,
    /// Classifications answered from the cache.
    pub parse_cache_hits: Counter,
    /// Classifications that ran the parser.
    pub parse_cache_misses: Counter,
    /// Entries in the classification cache (set when rendering).
    parse_cache_entries: Gauge,
    /// Bytes relayed by direction.
    pub bytes: Counters<ByteDirection>,
    /// From a simple Query or an extended pipeline's first message to its ReadyForQuery.
    pub statement_duration: Histogram,
    /// Configuration reloads by result.
    pub config_reloads: Counters<ReloadResult>,
    /// When a configuration was last put in force, in seconds since the epoch.
    config_last_success: Gauge<f64, AtomicU64>,
    /// Policies of the configuration in force that do not compile.
    policies_invalid: Gauge,
    /// Authentication failures by reason.
    pub auth_failures: Counters<AuthFailure>,
    /// What masking did.
    pub masking: MaskingMetrics,
    /// The recording spool and uploads.
    pub recording: gatehouse_recording::uploader::UploadMetrics,
    /// Recording events dropped (`bestEffort` with the spool full); stays 0 in `required`.
    pub recording_events_dropped: Counter,
    /// Sessions refused because they could not be recorded (`required`).
    pub recording_sessions_refused: Counter,
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
        let sessions_open = Gauge::default();
        registry.register(
            "gatehouse_sessions_open",
            "Client sessions being relayed now",
            sessions_open.clone(),
        );
        let sessions = Counters::register(
            &mut registry,
            "gatehouse_sessions",
            "Accepted client connections by how their startup ended",
        );
        let sessions_ended = Counters::register(
            &mut registry,
            "gatehouse_sessions_ended",
            "Established sessions by how they ended",
        );
        let statements = Counters::register(
            &mut registry,
            "gatehouse_statements",
            "Statements judged by the policy, by decision",
        );
        let approvals = Counters::register(
            &mut registry,
            "gatehouse_approvals",
            "Statements held for approval, by how the hold ended",
        );
        let parse_cache_hits = Counter::default();
        registry.register(
            "gatehouse_parse_cache_hits",
            "Statement classifications answered from the cache",
            parse_cache_hits.clone(),
        );
        let parse_cache_misses = Counter::default();
        registry.register(
            "gatehouse_parse_cache_misses",
            "Statement classifications that ran PostgreSQL's parser",
            parse_cache_misses.clone(),
        );
        let parse_cache_entries = Gauge::default();
        registry.register(
            "gatehouse_parse_cache_entries",
            "Classifications held in the cache",
            parse_cache_entries.clone(),
        );
        let bytes = Counters::register(
            &mut registry,
            "gatehouse_bytes",
            "Protocol bytes relayed, by direction",
        );
        let statement_duration = Histogram::new(DURATION_BUCKETS);
        registry.register_with_unit(
            "gatehouse_statement_duration",
            "Time from a simple Query or an extended-protocol pipeline's first message to its ReadyForQuery",
            Unit::Seconds,
            statement_duration.clone(),
        );
        let config_reloads = Counters::register(
            &mut registry,
            "gatehouse_config_reloads",
            "Configuration file changes by whether they were put in force",
        );
        let config_last_success = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "gatehouse_config_last_reload_success_timestamp",
            "When a configuration was last put in force (start-up or reload), in seconds since the Unix epoch",
            Unit::Seconds,
            config_last_success.clone(),
        );
        let policies_invalid = Gauge::default();
        registry.register(
            "gatehouse_policies_invalid",
            "Policies of the configuration in force that do not compile; each denies every statement of \
             the callers it names until it is fixed (the log names them and why)",
            policies_invalid.clone(),
        );
        let auth_failures = Counters::register(
            &mut registry,
            "gatehouse_auth_failures",
            "Refused authentications by reason",
        );
        let masking = MaskingMetrics::register(&mut registry);
        let recording = gatehouse_recording::uploader::UploadMetrics::new();
        registry.register(
            "gatehouse_recording_spool_bytes",
            "Bytes of recordings in the local spool, waiting for the recording store",
            recording.spool_bytes.clone(),
        );
        registry.register_with_unit(
            "gatehouse_recording_upload_duration",
            "Time to upload one recording object",
            Unit::Seconds,
            recording.upload_seconds.clone(),
        );
        registry.register(
            "gatehouse_recording_upload_failures",
            "Recording uploads that failed (retried with backoff)",
            recording.upload_failures.clone(),
        );
        registry.register(
            "gatehouse_recording_sessions_uploaded",
            "Sessions whose recording is complete in the store (manifest written)",
            recording.sessions_uploaded.clone(),
        );
        let recording_events_dropped = Counter::default();
        registry.register(
            "gatehouse_recording_events_dropped",
            "Recording events dropped because the spool was full (bestEffort); 0 in required mode",
            recording_events_dropped.clone(),
        );
        let recording_sessions_refused = Counter::default();
        registry.register(
            "gatehouse_recording_sessions_refused",
            "Sessions refused because they could not be recorded (required mode)",
            recording_sessions_refused.clone(),
        );
        Metrics {
            approvals,
            masking,
            recording,
            recording_events_dropped,
            recording_sessions_refused,
            registry,
            sessions_open,
            sessions,
            sessions_ended,
            statements,
            parse_cache_hits,
            parse_cache_misses,
            parse_cache_entries,
            bytes,
            statement_duration,
            config_reloads,
            config_last_success,
            policies_invalid,
            auth_failures,
        }
    }

    /// Counts a session as open until the returned guard is dropped (also
    /// when its task is aborted at the end of a drain).
    pub fn session_open(&self) -> OpenSession {
        self.sessions_open.inc();
        OpenSession(self.sessions_open.clone())
    }

    /// Records a configuration put in force now.
    pub fn config_loaded(&self) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        self.config_last_success.set(now.as_secs_f64());
    }

    /// Records a configuration reload and its result.
    pub fn config_reloaded(&self, result: ReloadResult) {
        self.config_reloads.inc(result);
        if result == ReloadResult::Ok {
            self.config_loaded();
        }
    }

    /// Sets how many Policies of the configuration in force do not compile.
    pub fn set_policies_invalid(&self, count: usize) {
        self.policies_invalid
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Sets the gauges that are read rather than counted.
    pub fn set_parse_cache_entries(&self, entries: u64) {
        self.parse_cache_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 << 10);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
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

    /// A Policy's own detectors are counted under one label, whatever their
    /// names: the Policy author's names are not a metric's labels.
    #[test]
    fn detectors_are_counted_by_name_and_policies_own_as_custom() {
        use crate::mask::{CUSTOM, DETECTORS, Found};
        let metrics = Metrics::new();
        let twilio = DETECTORS.iter().position(|d| d.name == "twilio-api-key").unwrap();
        let found = |id| Found {
            range: 0..1,
            detector: "acme",
            id,
        };
        let mut stats = MaskStats::default();
        stats.found(&[found(CUSTOM), found(twilio), found(CUSTOM)]);
        metrics.masking.add(&stats);
        let text = metrics.render();
        for (series, value) in [
            (r#"gatehouse_mask_detector_values_total{detector="custom"}"#, 2.0),
            (
                r#"gatehouse_mask_detector_values_total{detector="twilio-api-key"}"#,
                1.0,
            ),
            (
                r#"gatehouse_mask_detector_values_total{detector="aws-access-key-id"}"#,
                0.0,
            ),
        ] {
            assert_eq!(sample(&text, series), Some(value), "{series}");
        }
        assert!(!text.contains("acme"), "{text}");
    }

    #[test]
    fn every_label_value_is_exposed_at_zero_from_the_start() {
        let text = Metrics::new().render();
        for (series, value) in [
            ("gatehouse_sessions_open", 0.0),
            (r#"gatehouse_sessions_total{outcome="started"}"#, 0.0),
            (r#"gatehouse_sessions_total{outcome="too_many"}"#, 0.0),
            (r#"gatehouse_statements_total{decision="allow"}"#, 0.0),
            (r#"gatehouse_statements_total{decision="unparseable"}"#, 0.0),
            (r#"gatehouse_bytes_total{direction="client_to_server"}"#, 0.0),
            ("gatehouse_parse_cache_hits_total", 0.0),
            ("gatehouse_parse_cache_misses_total", 0.0),
            ("gatehouse_statement_duration_seconds_count", 0.0),
            (r#"gatehouse_config_reloads_total{result="error"}"#, 0.0),
            ("gatehouse_policies_invalid", 0.0),
            (r#"gatehouse_auth_failures_total{reason="invalid_token"}"#, 0.0),
            ("gatehouse_mask_values_scanned_total", 0.0),
            (
                r#"gatehouse_mask_detector_values_total{detector="aws-access-key-id"}"#,
                0.0,
            ),
            (r#"gatehouse_mask_rule_values_total{strategy="redact"}"#, 0.0),
            ("gatehouse_mask_results_refused_total", 0.0),
        ] {
            assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        // OpenMetrics wants every family name once.
        let mut families: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        let count = families.len();
        families.sort_unstable();
        families.dedup();
        assert_eq!(families.len(), count, "a family is declared twice:\n{text}");
    }

    #[test]
    fn counts_show_under_their_label() {
        let metrics = Metrics::new();
        metrics.statements.inc(StatementDecision::Deny);
        metrics.statements.inc(StatementDecision::Deny);
        metrics.statements.inc(StatementDecision::RequireApproval);
        metrics.bytes.get(ByteDirection::ServerToClient).inc_by(1234);
        metrics.sessions_open.inc();
        metrics.statement_duration.observe(0.003);
        metrics.statement_duration.observe(2.0);
        metrics.config_reloaded(ReloadResult::Error);
        metrics.set_policies_invalid(2);
        let text = metrics.render();
        for (series, value) in [
            (r#"gatehouse_statements_total{decision="deny"}"#, 2.0),
            (r#"gatehouse_statements_total{decision="require_approval"}"#, 1.0),
            (r#"gatehouse_statements_total{decision="allow"}"#, 0.0),
            (r#"gatehouse_bytes_total{direction="server_to_client"}"#, 1234.0),
            ("gatehouse_sessions_open", 1.0),
            ("gatehouse_statement_duration_seconds_count", 2.0),
            ("gatehouse_statement_duration_seconds_sum", 2.003),
            (r#"gatehouse_statement_duration_seconds_bucket{le="0.005"}"#, 1.0),
            (r#"gatehouse_statement_duration_seconds_bucket{le="+Inf"}"#, 2.0),
            (r#"gatehouse_config_reloads_total{result="error"}"#, 1.0),
            (r#"gatehouse_config_reloads_total{result="ok"}"#, 0.0),
            ("gatehouse_config_last_reload_success_timestamp_seconds", 0.0),
            ("gatehouse_policies_invalid", 2.0),
        ] {
            assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
        }
        metrics.config_reloaded(ReloadResult::Ok);
        let stamp = sample(
            &metrics.render(),
            "gatehouse_config_last_reload_success_timestamp_seconds",
        )
        .unwrap_or_default();
        assert!(stamp > 1.7e9, "timestamp {stamp}");
    }

    #[test]
    fn auth_failures_map_to_fixed_reasons() {
        use crate::identity::AuthError;
        assert_eq!(AuthFailure::of(&AuthError::Missing), AuthFailure::MissingToken);
        assert_eq!(AuthFailure::of(&AuthError::Rejected), AuthFailure::InvalidToken);
    }
}
