//! The Policy controller: which Connections each Policy selects, and whether
//! the proxy can compile it. An invalid Policy is reported in its own status
//! and left out of every Connection's configuration whole: never half-applied.
//! Connections are re-rendered by their own controller, which watches
//! Policies.

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

/// Why the proxy would refuse a Policy, or `None` when it compiles: its
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

/// Whether `policy` selects `connection`: same namespace, labels matched.
pub fn selects(policy: &Policy, connection: &Connection) -> bool {
    policy.namespace() == connection.namespace()
        && selector(policy).is_ok_and(|s| s.matches(connection.labels()))
}

/// The valid Policies that select `connection`, sorted by name, and the
/// names of the invalid ones that would.
pub fn selecting(policies: &[Arc<Policy>], connection: &Connection) -> (Vec<NamedPolicy>, Vec<String>) {
    let mut valid = BTreeMap::new();
    let mut invalid = Vec::new();
    for policy in policies.iter().filter(|p| selects(p, connection)) {
        let name = policy.name_any();
        if problem(&name, policy).is_some() {
            invalid.push(name);
        } else {
            valid.insert(
                name.clone(),
                NamedPolicy {
                    name,
                    spec: policy.spec.clone(),
                },
            );
        }
    }
    invalid.sort();
    (valid.into_values().collect(), invalid)
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
    let selector = selector(&policy);
    let mut matched: Vec<String> = connections
        .iter()
        .filter(|c| problem.is_none() && selector.as_ref().is_ok_and(|s| s.matches(c.labels())))
        .map(|c| c.name_any())
        .collect();
    matched.sort();
    let verdicts = match &problem {
        None => vec![
            Verdict::ok(
                "Ready",
                "Applied",
                format!("applied to {} Connections", matched.len()),
            ),
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
                format!("not applied to any Connection: {why}"),
            ),
            Verdict::failed("Valid", "Invalid", why.clone()),
        ],
    };
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
