//! The `masking` of Policies, compiled, and the [`Masker`] each caller gets.
//!
//! A Policy's masking applies to the callers it names, like its rules. When
//! several Policies name a caller, all their masking counts: every column
//! rule (a column several rules match gets the one that shows least: `null`,
//! then `redact`, `hash`, `partial`), every detector group, and `strict` when
//! any of them is strict. Maskers are built once per distinct set of
//! Policies and shared by the sessions it applies to.
//!
//! A Policy whose masking does not compile has none here: it denies its
//! callers everything instead ([`PolicySet`](crate::policy::PolicySet)).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use super::{
    Custom, Scanner,
    rows::{ColumnRule, Masker},
};
use crate::{
    api::policy::{FailureMode, MaskStrategy},
    config::{MaskingSettings, NamedPolicy},
    policy::{CompiledPolicy, Identity},
};

/// Longest compiled column-name pattern: a Policy cannot make the proxy
/// build a huge automaton.
const MAX_PATTERN_BYTES: usize = 1 << 20;

/// Shortest key the `hash` strategy accepts: shorter keys could be guessed.
const MIN_HASH_KEY_BYTES: usize = 16;

/// One Policy's masking, compiled.
#[derive(Debug, Clone)]
pub(crate) struct PolicyMasking {
    rules: Vec<ColumnRule>,
    /// Built-in detectors, as positions in [`DETECTORS`](super::DETECTORS).
    detectors: Vec<usize>,
    custom: Vec<Arc<Custom>>,
    failure_mode: FailureMode,
}

/// The masking of every Policy in a configuration, and the maskers built
/// from it so far.
#[derive(Debug)]
pub struct Maskers {
    /// Per Policy, in the configuration's order: its masking, if any.
    policies: Vec<Option<PolicyMasking>>,
    hash_key: Vec<u8>,
    scan_limit: usize,
    /// Maskers by the positions of the Policies they combine.
    built: Mutex<HashMap<Vec<usize>, Arc<Masker>>>,
    /// For text the proxy shows: see [`Scanner::shown`].
    shown: Arc<Scanner>,
}

impl PolicyMasking {
    /// How many detectors of its own the Policy defines.
    pub(crate) fn custom_detectors(&self) -> usize {
        self.custom.len()
    }
}

impl Maskers {
    /// Compiles one Policy's masking, `None` when it has none.
    ///
    /// # Errors
    ///
    /// A message naming the Policy and the field: an invalid column
    /// pattern, an unknown detector, `hash` without `settings`' key.
    pub(crate) fn compile_policy(
        policy: &NamedPolicy,
        settings: &MaskingSettings,
    ) -> Result<Option<PolicyMasking>, String> {
        let Some(masking) = &policy.spec.masking else {
            return Ok(None);
        };
        let name = &policy.name;
        let detectors = super::resolve(&masking.detectors)
            .map_err(|e| format!("Policy {name}: masking.detectors: {e}"))?;
        let custom = masking
            .custom_detectors
            .iter()
            .enumerate()
            .map(|(i, d)| {
                Custom::new(&d.name, &d.regex, &d.keywords)
                    .map(Arc::new)
                    .map_err(|e| format!("Policy {name}: masking.customDetectors[{i}] ({}): {e}", d.name))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut rules = Vec::with_capacity(masking.columns.len());
        for (i, column) in masking.columns.iter().enumerate() {
            let pattern = regex::RegexBuilder::new(&column.name)
                .size_limit(MAX_PATTERN_BYTES)
                .build()
                .map_err(|e| {
                    format!("Policy {name}: masking.columns[{i}].name is not a valid regular expression: {e}")
                })?;
            let keep_last = match (column.strategy, column.keep_last) {
                (MaskStrategy::Partial, Some(n)) if (1..=16).contains(&n) => n as usize,
                (MaskStrategy::Partial, _) => {
                    return Err(format!(
                        "Policy {name}: masking.columns[{i}].keepLast must be between 1 and 16 for strategy partial"
                    ));
                }
                (_, None) => 0,
                (_, Some(_)) => {
                    return Err(format!(
                        "Policy {name}: masking.columns[{i}].keepLast is only allowed with strategy partial"
                    ));
                }
            };
            if column.strategy == MaskStrategy::Hash && settings.hash_key_file.is_none() {
                return Err(format!(
                    "Policy {name} masks a column with strategy hash, but masking.hashKeyFile is not set"
                ));
            }
            rules.push(ColumnRule {
                name: pattern,
                strategy: column.strategy,
                keep_last,
            });
        }
        Ok(Some(PolicyMasking {
            rules,
            detectors,
            custom,
            failure_mode: masking.failure_mode.unwrap_or(FailureMode::Strict),
        }))
    }

    /// The maskers of `policies` (each Policy's masking, in the
    /// configuration's order, from [`Maskers::compile_policy`]).
    ///
    /// # Errors
    ///
    /// The proxy's own settings: an unreadable or short key file, a zero
    /// scan limit.
    pub(crate) fn new(
        policies: Vec<Option<PolicyMasking>>,
        settings: &MaskingSettings,
    ) -> Result<Maskers, String> {
        let hash_key = match &settings.hash_key_file {
            Some(path) => {
                let key = std::fs::read(path)
                    .map_err(|e| format!("masking.hashKeyFile {}: {e}", path.display()))?;
                if key.len() < MIN_HASH_KEY_BYTES {
                    return Err(format!(
                        "masking.hashKeyFile {} holds {} bytes; the hash key needs at least {MIN_HASH_KEY_BYTES}",
                        path.display(),
                        key.len()
                    ));
                }
                key
            }
            None => Vec::new(),
        };
        if settings.scan_limit_bytes == 0 {
            return Err("masking.scanLimitBytes must be at least 1".into());
        }
        let custom: Vec<Arc<Custom>> = policies
            .iter()
            .flatten()
            .flat_map(|p| p.custom.iter().cloned())
            .collect();
        let shown = if custom.is_empty() {
            Scanner::all_secrets()
        } else {
            Arc::new(Scanner::shown(&custom))
        };
        Ok(Maskers {
            shown,
            policies,
            hash_key,
            scan_limit: settings.scan_limit_bytes,
            built: Mutex::new(HashMap::new()),
        })
    }

    /// The scanner for text the proxy shows (logs, recordings,
    /// ApprovalRequests): every built-in secret detector and every
    /// Policy's own, whichever callers the Policies name.
    pub fn shown(&self) -> &Arc<Scanner> {
        &self.shown
    }

    /// The masker for `identity`: `None` when no Policy naming it masks
    /// anything. `policies` are the compiled Policies of the same
    /// configuration, in the same order.
    pub fn for_identity(&self, policies: &[CompiledPolicy], identity: &Identity) -> Option<Arc<Masker>> {
        let applicable: Vec<usize> = policies
            .iter()
            .zip(&self.policies)
            .enumerate()
            .filter(|(_, (policy, masking))| masking.is_some() && policy.applies_to(identity))
            .map(|(i, _)| i)
            .collect();
        if applicable.is_empty() {
            return None;
        }
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(masker) = built.get(&applicable) {
            return Some(masker.clone());
        }
        let masker = Arc::new(self.combine(&applicable));
        built.insert(applicable, masker.clone());
        Some(masker)
    }

    fn combine(&self, applicable: &[usize]) -> Masker {
        let parts: Vec<&PolicyMasking> = applicable
            .iter()
            .filter_map(|&i| self.policies.get(i).and_then(Option::as_ref))
            .collect();
        let mut detectors: Vec<usize> = parts.iter().flat_map(|p| p.detectors.iter().copied()).collect();
        detectors.sort_unstable();
        detectors.dedup();
        let custom: Vec<Arc<Custom>> = parts.iter().flat_map(|p| p.custom.iter().cloned()).collect();
        let rules = parts.iter().flat_map(|p| p.rules.iter().cloned()).collect();
        let failure_mode = if parts.iter().any(|p| p.failure_mode == FailureMode::Strict) {
            FailureMode::Strict
        } else {
            FailureMode::BestEffort
        };
        let scanner = Scanner::with_ids(&detectors, &custom);
        Masker::new(
            scanner,
            rules,
            self.hash_key.clone(),
            self.scan_limit,
            failure_mode,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProxyConfig;

    fn config(policies: &str, masking: &str) -> ProxyConfig {
        ProxyConfig::from_yaml(&format!(
            r#"
connection: {{namespace: standalone, name: t}}
listen: {{address: "127.0.0.1:0", allowPlaintext: true}}
upstream:
  host: localhost
  database: app
  tls: {{mode: disable}}
  credentials: {{usernameFile: /u, passwordFile: /p}}
auth:
  staticTokens: [{{sha256: "{}", username: u}}]
{masking}
policies:
{policies}
"#,
            "0".repeat(64)
        ))
        .unwrap()
    }

    fn compile(config: &ProxyConfig) -> Result<(Vec<CompiledPolicy>, Maskers), String> {
        let set = crate::policy::PolicySet::compile(&config.policies, &config.masking)?;
        Ok((set.policies, set.maskers))
    }

    fn caller(name: &str, groups: &[&str]) -> Identity {
        Identity {
            username: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    const TWO: &str = r#"
- name: for-agents
  spec:
    connectionSelector: {}
    subjects: [{kind: Group, name: agents}]
    rules: [{name: r, match: {operations: [select]}, action: allow}]
    masking:
      detectors: [aws]
      columns: [{name: "^email$", strategy: partial, keepLast: 4}]
      failureMode: bestEffort
- name: for-bob
  spec:
    connectionSelector: {}
    subjects: [{kind: User, name: bob}]
    rules: [{name: r, match: {operations: [select]}, action: allow}]
    masking:
      detectors: [github]
      columns: [{name: "^email$", strategy: redact}]
- name: no-masking
  spec:
    connectionSelector: {}
    subjects: [{kind: User, name: carol}]
    rules: [{name: r, match: {operations: [select]}, action: allow}]
"#;

    #[test]
    fn a_caller_gets_the_masking_of_every_policy_naming_it() {
        let (policies, maskers) = compile(&config(TWO, "")).unwrap();
        assert!(maskers.for_identity(&policies, &caller("carol", &[])).is_none());
        let agent = maskers
            .for_identity(&policies, &caller("ann", &["agents"]))
            .unwrap();
        assert_eq!(agent.failure_mode, FailureMode::BestEffort);
        assert!(agent.scanner().mask(b"AKIAIOSFODNN7EXAMPLE").is_some());
        assert!(
            agent
                .scanner()
                .mask(b"ghp_1a2B3c4D5e6F7g8H9i0J1k2L3m4N5o6P7q8R")
                .is_none()
        );
        let bob = maskers
            .for_identity(&policies, &caller("bob", &["agents"]))
            .unwrap();
        assert_eq!(bob.failure_mode, FailureMode::Strict, "strict wins");
        assert!(bob.scanner().mask(b"AKIAIOSFODNN7EXAMPLE").is_some());
        assert!(
            bob.scanner()
                .mask(b"ghp_1a2B3c4D5e6F7g8H9i0J1k2L3m4N5o6P7q8R")
                .is_some()
        );
        // Built once per set of Policies.
        let again = maskers
            .for_identity(&policies, &caller("dan", &["agents"]))
            .unwrap();
        assert!(Arc::ptr_eq(&agent, &again));
    }

    /// A Policy's own detectors run for its callers only, beside the
    /// built-in ones, named by the Policy's name for them.
    #[test]
    fn a_policys_own_detectors_mask_for_its_callers() {
        let policies = r#"
- name: acme
  spec:
    connectionSelector: {}
    subjects: [{kind: Group, name: agents}]
    rules: [{name: r, match: {operations: [select]}, action: allow}]
    masking:
      detectors: [aws]
      customDetectors:
      - {name: acme-token, regex: "\\bacme_[A-Za-z0-9]{24}\\b", keywords: [ACME_]}
      - {name: acme-pin, regex: "(?i)badge_pin=([0-9]{6})", keywords: [badge_pin]}
- name: other
  spec:
    connectionSelector: {}
    subjects: [{kind: User, name: bob}]
    rules: [{name: r, match: {operations: [select]}, action: allow}]
    masking: {detectors: [aws]}
"#;
        let (policies, maskers) = compile(&config(policies, "")).unwrap();
        let agent = maskers
            .for_identity(&policies, &caller("ann", &["agents"]))
            .unwrap();
        let masked = |value: &str| {
            agent
                .scanner()
                .mask(value.as_bytes())
                .map(|m| String::from_utf8(m).unwrap())
        };
        assert_eq!(
            masked("token acme_Zx8Qw2Er4Ty6Ui8Op0As2Df4 in use").as_deref(),
            Some("token [masked:acme-token] in use")
        );
        assert_eq!(
            masked(r#"{"note": "Badge_PIN=482913; AKIAIOSFODNN7EXAMPLE"}"#).as_deref(),
            Some(r#"{"note": "Badge_PIN=[masked:acme-pin]; [masked:aws-access-key-id]"}"#)
        );
        assert_eq!(masked("acme_short and badge_pin=12"), None);
        let bob = maskers.for_identity(&policies, &caller("bob", &[])).unwrap();
        assert_eq!(bob.scanner().mask(b"acme_Zx8Qw2Er4Ty6Ui8Op0As2Df4"), None);
        let mut found = Vec::new();
        agent.scanner().find(b"acme_Zx8Qw2Er4Ty6Ui8Op0As2Df4", &mut found);
        assert_eq!(found[0].id, super::super::CUSTOM, "metrics count it as custom");
        // What the proxy shows itself (logs, recordings, ApprovalRequests)
        // is masked with every Policy's own detectors, whoever the caller.
        let sql = "SELECT * FROM t WHERE k = 'acme_Zx8Qw2Er4Ty6Ui8Op0As2Df4'";
        assert_eq!(
            crate::mask::statement_text_in(maskers.shown(), sql),
            "SELECT * FROM t WHERE k = '[masked:acme-token]'"
        );
        assert_eq!(
            crate::mask::statement_text(sql),
            sql,
            "premise: no built-in detector finds it"
        );
    }

    /// The Policies' own detectors are counted across the configuration:
    /// the Policy that goes over the limit denies its callers; none makes
    /// the proxy panic or drops a detector.
    #[test]
    fn too_many_detectors_of_their_own_deny_the_policy_that_exceeds() {
        use std::fmt::Write;
        let mut policies = String::new();
        for p in 0..9 {
            let detectors: String = (0..32)
                .map(|d| {
                    format!("{{name: c{p}-{d}, regex: 'tok{p}x{d}_[a-z]{{8}}', keywords: [tok{p}x{d}_]}},")
                })
                .collect();
            write!(
                policies,
                r#"
- name: p{p}
  spec:
    connectionSelector: {{}}
    subjects: [{{kind: User, name: u{p}}}]
    rules: [{{name: r, match: {{operations: [select]}}, action: allow}}]
    masking: {{detectors: [all], customDetectors: [{detectors}]}}
"#
            )
            .unwrap();
        }
        let (policies, maskers) = compile(&config(&policies, "")).unwrap();
        let problems: Vec<Option<&str>> = policies.iter().map(|p| p.problem()).collect();
        assert!(problems[..8].iter().all(Option::is_none), "{problems:?}");
        assert!(
            problems[8].is_some_and(|p| p.contains("more than 256 detectors of their own")),
            "{problems:?}"
        );
        assert_eq!(
            crate::mask::statement_text_in(maskers.shown(), "SELECT 'tok7x31_abcdefgh'"),
            "SELECT '[masked:c7-31]'"
        );
        let last = maskers.for_identity(&policies, &caller("u7", &[])).unwrap();
        assert!(last.scanner().mask(b"tok7x31_abcdefgh").is_some());
        assert!(maskers.for_identity(&policies, &caller("u8", &[])).is_none());
    }

    #[test]
    fn the_rule_that_shows_least_wins() {
        use crate::pg::messages::{DataRow, FieldDescription, Format, Message};
        let (policies, maskers) = compile(&config(TWO, "")).unwrap();
        let bob = maskers
            .for_identity(&policies, &caller("bob", &["agents"]))
            .unwrap();
        let field = FieldDescription {
            name: "email".into(),
            table_oid: 0,
            column_id: 0,
            type_oid: 25,
            type_size: -1,
            type_modifier: -1,
            format: Format::Text,
        };
        let plan = bob.plan(&[field], &[]);
        let mut raw = bytes::BytesMut::new();
        DataRow::encode_cells(&mut raw, [Some(b"ada@example.com")]).unwrap();
        let frame = crate::pg::Frame::from_raw(raw.freeze()).unwrap();
        let masked = bob.mask_row(&plan, &frame, &mut Default::default()).unwrap();
        let super::super::rows::Masked::Rewritten(frame) = masked else {
            panic!("not masked")
        };
        let row = DataRow::decode(&frame).unwrap();
        assert_eq!(row.cell(0), Some(Some(bytes::Bytes::from_static(b"[masked]"))));
    }

    #[test]
    fn bad_masking_makes_its_policy_deny_and_names_the_policy_and_field() {
        let compiled = |masking: &str, settings: &str| {
            let policies = format!(
                r#"
- name: p
  spec:
    connectionSelector: {{}}
    subjects: [{{kind: User, name: u}}]
    rules: [{{name: r, match: {{operations: [select]}}, action: allow}}]
    masking: {masking}
"#
            );
            compile(&config(&policies, settings))
        };
        // The Policy's own mistakes: it loads, denying its callers
        // everything, and masks nothing (nothing reaches them).
        for (masking, problem) in [
            (
                r#"{columns: [{name: "(", strategy: redact}]}"#,
                "Policy p: masking.columns[0].name is not a valid regular expression",
            ),
            ("{detectors: [awz]}", "unknown masking detector \"awz\""),
            (
                r#"{columns: [{name: "x", strategy: hash}]}"#,
                "masking.hashKeyFile is not set",
            ),
            (
                r#"{columns: [{name: "x", strategy: partial}]}"#,
                "keepLast must be between 1 and 16",
            ),
            (
                r#"{customDetectors: [{name: acme, regex: "acme_[a-z", keywords: [acme_]}]}"#,
                "Policy p: masking.customDetectors[0] (acme): regex is not a valid regular expression",
            ),
            (
                r#"{customDetectors: [{name: acme, regex: "acme_[a-z]*|", keywords: [acme_]}]}"#,
                "masking.customDetectors[0] (acme): regex matches empty text",
            ),
            (
                r#"{customDetectors: [{name: acme, regex: "ac[a-z]+", keywords: [ac]}]}"#,
                "keyword \"ac\" is shorter than 3 bytes",
            ),
            (
                r#"{customDetectors: [{name: acme, regex: "acme_[a-z]+", keywords: []}]}"#,
                "needs at least one keyword",
            ),
            (
                // The mask must stay valid in JSON, COPY and CSV; the CRD
                // checks the name too, a standalone configuration does not.
                r#"{customDetectors: [{name: 'a"b', regex: "acme_[a-z]+", keywords: [acme_]}]}"#,
                "must be 1 to 63 lower-case letters, digits and '-'",
            ),
        ] {
            let (policies, maskers) = compiled(masking, "").unwrap_or_else(|e| panic!("{masking}: {e}"));
            let found = policies[0].problem().unwrap_or_default();
            assert!(found.contains(problem), "{masking}: {found}");
            let u = caller("u", &[]);
            assert!(maskers.for_identity(&policies, &u).is_none(), "{masking}");
            let select = crate::policy::classify("SELECT 1").unwrap();
            let decision = crate::policy::decide(&policies, &u, &select);
            assert!(
                matches!(&decision, crate::policy::Decision::Deny { policy, hint, .. }
                    if policy == "p" && hint.contains(problem)),
                "{masking}: {decision:?}"
            );
        }
        // The proxy's settings are no Policy's: the configuration is refused.
        let e = compiled(
            r#"{columns: [{name: "x", strategy: hash}]}"#,
            "masking: {hashKeyFile: /nonexistent/key}",
        )
        .err()
        .unwrap_or_default();
        assert!(e.contains("/nonexistent/key"), "{e}");
        let short = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(short.path(), b"short").unwrap();
        let e = compiled(
            r#"{columns: [{name: "x", strategy: hash}]}"#,
            &format!("masking: {{hashKeyFile: {}}}", short.path().display()),
        )
        .err()
        .unwrap_or_default();
        assert!(e.contains("holds 5 bytes"), "{e}");
    }
}
