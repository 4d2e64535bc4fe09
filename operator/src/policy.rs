//! The Policy controller: which Connections each Policy selects, and whether
//! the proxy can compile it. A Policy the proxy cannot compile is rendered
//! into the configuration of every Connection it selects all the same: the
//! proxy then denies everything to the callers it names until it is fixed
//! (fail closed: leaving it out would let a broader Policy decide alone).
//! Its status says why; so do those Connections' statuses. Connections are
//! re-rendered by their own controller, which watches Policies.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use gatehouse_crds::{Connection, Policy, PolicyStatus};
use gatehouse_proxy::{
    config::{MaskingSettings, NamedPolicy},
    policy::PolicySet,
};
use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, ResourceExt,
    api::Patch,
    core::{Selector, SelectorExt},
    runtime::controller::Action,
};

use crate::{
    Context, Error,
    conditions::{Verdict, merge},
    connection::apply_params,
};

/// How often a Policy is looked at again without a change.
const RESYNC: Duration = Duration::from_secs(300);

/// Why the proxy cannot compile a Policy, or `None` when it can: its
/// selector, rules and subjects, column patterns and detectors, asked of
/// the proxy's own compiler with the settings the operator renders.
pub fn problem(name: &str, policy: &Policy) -> Option<String> {
    let named = NamedPolicy {
        name: name.to_owned(),
        spec: policy.spec.clone(),
    };
    match PolicySet::compile(&[named], &MaskingSettings::default()) {
        Ok(set) => set.invalid().next().map(|(_, problem)| problem.to_owned()),
        // The default settings have no key file to read; fail closed anyway.
        Err(e) => Some(e),
    }
}

fn selector(policy: &Policy) -> Result<Selector, String> {
    Selector::try_from(policy.spec.connection_selector.clone())
        .map_err(|e| format!("spec.connectionSelector is not a valid label selector: {e}"))
}

/// Whether `policy` selects Connections labelled `labels` in its namespace.
/// A selector that cannot be read selects them all: the Policy is invalid,
/// and an invalid Policy denies (fail closed).
fn selects_labels(policy: &Policy, labels: &BTreeMap<String, String>) -> bool {
    selector(policy).map_or(true, |s| s.matches(labels))
}

/// Whether `policy` selects `connection`: same namespace, labels matched.
pub fn selects(policy: &Policy, connection: &Connection) -> bool {
    policy.namespace() == connection.namespace() && selects_labels(policy, connection.labels())
}

/// The Policies that select a Connection.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Selected {
    /// Every one of them, sorted by name, for its configuration: the proxy
    /// compiles each, and one that does not compile denies.
    pub policies: Vec<NamedPolicy>,
    /// Those the proxy cannot compile, sorted by name, with why.
    pub invalid: Vec<(String, String)>,
}

/// The Policies that select `connection`.
pub fn selecting(policies: &[Arc<Policy>], connection: &Connection) -> Selected {
    let mut selected = BTreeMap::new();
    let mut invalid = Vec::new();
    for policy in policies.iter().filter(|p| selects(p, connection)) {
        let name = policy.name_any();
        if let Some(why) = problem(&name, policy) {
            invalid.push((name.clone(), why));
        }
        selected.insert(
            name.clone(),
            NamedPolicy {
                name,
                spec: policy.spec.clone(),
            },
        );
    }
    invalid.sort();
    Selected {
        policies: selected.into_values().collect(),
        invalid,
    }
}

/// The verdicts of a Policy's status: `Ready` and `Valid`.
fn verdicts(problem: Option<&str>, matched: usize) -> Vec<Verdict> {
    match problem {
        None => vec![
            Verdict::ok("Ready", "Applied", format!("applied to {matched} Connections")),
            Verdict::ok(
                "Valid",
                "Compiled",
                "the proxy compiles every rule, subject and masking pattern",
            ),
        ],
        Some(why) => vec![
            Verdict::failed(
                "Ready",
                "Invalid",
                format!(
                    "the proxy cannot compile it, so it denies everything to the callers it names on the \
                     Connections it selects ({matched}) until it is fixed: {why}"
                ),
            ),
            Verdict::failed("Valid", "Invalid", why),
        ],
    }
}

/// Reconciles one Policy's status.
pub async fn reconcile(policy: Arc<Policy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = policy.namespace().ok_or(Error::NotNamespaced)?;
    let name = policy.name_any();
    let problem = problem(&name, &policy);
    // Their names and labels are all it needs: metadata only.
    let connections = Api::<Connection>::namespaced(ctx.client.clone(), &namespace)
        .list_metadata(&Default::default())
        .await
        .map_err(Error::Kube)?;
    ctx.metrics
        .policy_checked(&format!("{namespace}/{name}"), problem.is_some());
    // An invalid Policy is applied too, as a deny: it is listed.
    let mut matched: Vec<String> = connections
        .iter()
        .filter(|c| selects_labels(&policy, c.labels()))
        .map(|c| c.name_any())
        .collect();
    matched.sort();
    let verdicts = verdicts(problem.as_deref(), matched.len());
    let previous = policy.status.clone().unwrap_or_default();
    let status = PolicyStatus {
        observed_generation: policy.metadata.generation,
        matched_connections: matched,
        conditions: merge(
            &previous.conditions,
            &verdicts,
            policy.metadata.generation,
            Timestamp::now(),
        ),
    };
    if status != previous {
        let api: Api<Policy> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = serde_json::json!({
            "apiVersion": "gatehouse.dev/v1alpha1",
            "kind": "Policy",
            "status": status,
        });
        api.patch_status(&name, &apply_params(), &Patch::Apply(patch))
            .await
            .map_err(Error::Kube)?;
    }
    Ok(Action::requeue(RESYNC))
}

#[cfg(test)]
mod tests {
    use gatehouse_crds::{ConnectionSpec, PolicySpec};
    use gatehouse_proxy::policy::{Identity, classify, decide, refusal};

    use super::*;
    use crate::{
        conditions::ready,
        connection::{CONFIG_RENDERED, CREDENTIALS_RESOLVED, PROXY_AVAILABLE, policies_valid},
        render::{Names, ProxySettings},
    };

    fn connection(namespace: &str, labels: &[(&str, &str)]) -> Connection {
        let spec: ConnectionSpec = serde_norway::from_str(
            "type: postgres\ntarget: {host: orders.db.svc, database: orders}\ncredentialsRef: {name: orders-db-creds}\n",
        )
        .expect("spec");
        let mut connection = Connection::new("orders-db", spec);
        connection.metadata.namespace = Some(namespace.into());
        connection.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        connection
    }

    /// A Policy for group `agents` in `namespace` with `selector`, `rules`
    /// and `masking` (YAML flow mappings).
    fn policy(namespace: &str, name: &str, selector: &str, rules: &str, masking: &str) -> Arc<Policy> {
        let spec: PolicySpec = serde_norway::from_str(&format!(
            "connectionSelector: {selector}\nsubjects: [{{kind: Group, name: agents}}]\nrules: {rules}\n{masking}"
        ))
        .expect("policy");
        let mut policy = Policy::new(name, spec);
        policy.metadata.namespace = Some(namespace.into());
        Arc::new(policy)
    }

    const ALLOW_ALL: &str = "[{name: everything, action: allow}]";
    const DENY_WRITES: &str = "[{name: writes, match: {operations: [insert, update, delete]}, action: deny}]";

    fn fixture() -> Vec<Arc<Policy>> {
        vec![
            policy("team-a", "broad", "{matchLabels: {env: prod}}", ALLOW_ALL, ""),
            policy(
                "team-a",
                "writes-guarded",
                "{matchLabels: {env: prod}}",
                DENY_WRITES,
                "masking: {columns: [{name: \"(unclosed\", strategy: redact}]}",
            ),
            policy(
                "team-a",
                "bad-selector",
                "{matchExpressions: [{key: env, operator: Bogus}]}",
                DENY_WRITES,
                "",
            ),
            policy(
                "team-a",
                "staging",
                "{matchLabels: {env: staging}}",
                ALLOW_ALL,
                "",
            ),
            policy("team-b", "elsewhere", "{}", ALLOW_ALL, ""),
        ]
    }

    #[test]
    fn invalid_policies_are_selected_and_named_with_why() {
        let selected = selecting(&fixture(), &connection("team-a", &[("env", "prod")]));
        let names: Vec<&str> = selected.policies.iter().map(|p| p.name.as_str()).collect();
        // The bad selector selects every Connection of its namespace.
        assert_eq!(names, ["bad-selector", "broad", "writes-guarded"]);
        let invalid: Vec<&str> = selected.invalid.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(invalid, ["bad-selector", "writes-guarded"]);
        assert!(
            selected.invalid[0]
                .1
                .contains("spec.connectionSelector is not a valid label selector"),
            "{:?}",
            selected.invalid
        );
        assert!(
            selected.invalid[1]
                .1
                .contains("masking.columns[0].name is not a valid regular expression"),
            "{:?}",
            selected.invalid
        );
        let staging = selecting(&fixture(), &connection("team-a", &[("env", "staging")]));
        let names: Vec<&str> = staging.policies.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["bad-selector", "staging"]);
        let elsewhere = selecting(&fixture(), &connection("team-b", &[]));
        assert_eq!(elsewhere.invalid, []);
        assert_eq!(elsewhere.policies.len(), 1);
    }

    #[test]
    fn the_rendered_configuration_makes_the_proxy_deny_for_an_invalid_policy() {
        let connection = connection("team-a", &[("env", "prod")]);
        let selected = selecting(&fixture(), &connection);
        let names = Names::new("team-a", "orders-db");
        let settings = ProxySettings {
            image: "gatehouse-proxy:test".into(),
            recording_secret: "gatehouse-recording".into(),
            recording_s3: None,
        };
        let text = crate::config::render(&connection, &names, &selected.policies, &settings).expect("render");
        // What the proxy reads, checked as the Connection controller does.
        let config = gatehouse_proxy::cluster::check(&text).expect("the proxy takes it");
        let set = PolicySet::compile(&config.policies, &config.masking).expect("compiles");
        let invalid: Vec<&str> = set.invalid().map(|(name, _)| name).collect();
        assert_eq!(invalid, ["bad-selector", "writes-guarded"]);
        let agent = Identity {
            username: "system:serviceaccount:agents:planner".into(),
            groups: vec!["agents".into()],
        };
        let select = classify("SELECT 1").expect("classify");
        let refused = refusal(&decide(&set.policies, &agent, &select)).expect("refused");
        assert_eq!(refused.sqlstate, "42501");
        assert!(
            refused.message.contains("Policy \"bad-selector\"") && refused.hint.contains("until it is fixed"),
            "{refused:?}"
        );
        // Their deny is for the callers they name: a caller no Policy names
        // meets the default deny, not theirs.
        let other = Identity {
            username: "carol".into(),
            groups: vec![],
        };
        let default = refusal(&decide(&set.policies, &other, &select)).expect("default deny");
        assert!(!default.message.contains("Policy"), "{default:?}");
    }

    #[test]
    fn an_invalid_policy_fails_its_connections_and_its_own_status() {
        let one = policies_valid(&[("writes-guarded".into(), "Policy writes-guarded: bad regex".into())]);
        assert!(!one.ok);
        assert_eq!(
            (one.kind, one.reason.as_str()),
            ("PoliciesValid", "PolicyInvalid")
        );
        assert_eq!(
            one.message,
            "Policy writes-guarded is invalid (Policy writes-guarded: bad regex); the callers it names are \
             denied everything on this Connection until it is fixed"
        );
        let two = policies_valid(&[("a".into(), "x".into()), ("b".into(), "y".into())]);
        assert!(
            two.message
                .contains("Policy a is invalid (x); Policy b is invalid (y)")
                && two
                    .message
                    .contains("the callers they name are denied everything")
                && two.message.contains("until they are fixed"),
            "{}",
            two.message
        );
        assert!(policies_valid(&[]).ok);
        // Ready says so when all else is well.
        let connection = [
            Verdict::ok(CREDENTIALS_RESOLVED, "SecretsFound", "found"),
            Verdict::ok(CONFIG_RENDERED, "Rendered", "rendered"),
            one.clone(),
            Verdict::ok(PROXY_AVAILABLE, "Available", "1 of 1"),
        ];
        let ready = ready(&connection, "serving");
        assert!(!ready.ok);
        assert_eq!(
            (ready.reason.as_str(), ready.message.as_str()),
            ("PolicyInvalid", one.message.as_str())
        );

        let own = verdicts(Some("Policy p: bad regex"), 2);
        assert!(own.iter().all(|v| !v.ok && v.reason == "Invalid"), "{own:?}");
        assert_eq!(
            own[0].message,
            "the proxy cannot compile it, so it denies everything to the callers it names on the Connections \
             it selects (2) until it is fixed: Policy p: bad regex"
        );
        assert_eq!(own[1].message, "Policy p: bad regex");
        assert!(verdicts(None, 2).iter().all(|v| v.ok));
    }

    #[test]
    fn problem_asks_the_proxys_compiler() {
        let fixture = fixture();
        assert_eq!(problem("broad", &fixture[0]), None);
        assert!(problem("writes-guarded", &fixture[1]).is_some_and(|p| p.contains("Policy writes-guarded")));
        // The operator renders no hash key: a hash column cannot be served.
        let hash = policy(
            "team-a",
            "hashed",
            "{}",
            ALLOW_ALL,
            "masking: {columns: [{name: email, strategy: hash}]}",
        );
        assert!(problem("hashed", &hash).is_some_and(|p| p.contains("masking.hashKeyFile is not set")));
    }
}
