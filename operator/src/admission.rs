//! Whether the admission policy that guards ApprovalRequests is in force.
//!
//! The ValidatingAdmissionPolicy `gatehouse-approvalrequests`
//! (`config/admission`, the chart) is what makes a review the reviewer's
//! own and keeps decisions to the operator and Consumed to the Connection's
//! proxy. Without it, anyone allowed to patch a request could write
//! `{"user": "bob"}` and meet `required: 2` alone. It goes missing on
//! clusters older than 1.30, when a GitOps tool syncs only part of
//! `config/`, or when someone deletes its binding or sets it to `Warn`.
//!
//! So the operator approves nothing unless the policy it ships is installed
//! as shipped (naming this operator's own username as the one that
//! decides), and some binding puts it in force with `Deny` for every
//! request. Anything else suspends approvals, with a reason that says what
//! to fix.

use std::sync::Arc;

use k8s_openapi::api::{
    admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding},
    authentication::v1::SelfSubjectReview,
};
use kube::{Api, Client, api::PostParams, runtime::reflector::Store};
use serde_json::Value;

/// The admission policy's name, as `config/admission` and the chart name it.
pub const POLICY_NAME: &str = "gatehouse-approvalrequests";

/// The policy as this operator ships it.
const SHIPPED: &str = include_str!("../../config/admission/approvalrequest-policy.yaml");

/// The operator's username in the shipped policy (its ServiceAccount as
/// `config/rbac/operator` installs it); the chart renders its own release's.
pub const SHIPPED_OPERATOR: &str = "system:serviceaccount:gatehouse-system:gatehouse-operator";

/// The policy's spec as this operator expects it installed, with
/// `operator` as the username that may decide.
///
/// # Errors
///
/// The shipped file does not parse: a build of this repository that broke it.
pub fn expected_spec(operator: &str) -> Result<Value, String> {
    let text = SHIPPED.replace(SHIPPED_OPERATOR, operator);
    let policy: Value =
        serde_norway::from_str(&text).map_err(|e| format!("the shipped admission policy: {e}"))?;
    Ok(policy.get("spec").cloned().unwrap_or(Value::Null))
}

/// The username the API server knows this operator by.
///
/// # Errors
///
/// The API server's refusal or an unreachable server.
pub async fn own_username(client: &Client) -> Result<String, kube::Error> {
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    Ok(review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .unwrap_or_default())
}

/// What the operator watches to know whether the policy is in force.
#[derive(Clone)]
pub struct Admission {
    /// The operator's own username, or why it is not known.
    operator: Result<String, String>,
    policies: Store<ValidatingAdmissionPolicy>,
    bindings: Store<ValidatingAdmissionPolicyBinding>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("operator", &self.operator)
            .finish_non_exhaustive()
    }
}

impl Admission {
    /// Watches through `policies` and `bindings` (reflector stores of the
    /// cluster's ValidatingAdmissionPolicies and their bindings).
    pub fn new(
        operator: Result<String, String>,
        policies: Store<ValidatingAdmissionPolicy>,
        bindings: Store<ValidatingAdmissionPolicyBinding>,
    ) -> Admission {
        Admission {
            operator,
            policies,
            bindings,
        }
    }

    /// `Ok` when the policy is in force as shipped; otherwise why not, as a
    /// sentence that says what to fix.
    pub fn in_force(&self) -> Result<(), String> {
        let operator = self.operator.as_ref().map_err(Clone::clone)?;
        let policy = self
            .policies
            .state()
            .into_iter()
            .find(|p| p.metadata.name.as_deref() == Some(POLICY_NAME));
        let bindings = self.bindings.state();
        check(policy.as_deref(), &bindings, &expected_spec(operator)?)
    }

    /// Waits until both stores have listed once.
    pub async fn ready(&self) {
        let _ = self.policies.wait_until_ready().await;
        let _ = self.bindings.wait_until_ready().await;
    }
}

/// Whether `policy` is installed as `expected` and one of `bindings` puts it
/// in force with `Deny` for every request.
pub fn check(
    policy: Option<&ValidatingAdmissionPolicy>,
    bindings: &[Arc<ValidatingAdmissionPolicyBinding>],
    expected: &Value,
) -> Result<(), String> {
    let apply = "apply config/admission (kubectl apply --server-side -k config/admission) or the Helm chart of this release";
    let Some(policy) = policy else {
        return Err(format!(
            "ValidatingAdmissionPolicy {POLICY_NAME} is not installed, so the API server does not check who reviews ApprovalRequests; {apply}"
        ));
    };
    let actual = serde_json::to_value(&policy.spec).unwrap_or(Value::Null);
    if let Err(path) = contains(expected, &actual, "spec") {
        return Err(format!(
            "ValidatingAdmissionPolicy {POLICY_NAME} differs from the one this operator ships at {path} (it must name this operator as the one that decides); {apply}"
        ));
    }
    if let Some(narrowed) = narrowed(&actual) {
        return Err(format!(
            "ValidatingAdmissionPolicy {POLICY_NAME} sets {narrowed}, which leaves requests unchecked; {apply}"
        ));
    }
    let ours: Vec<_> = bindings
        .iter()
        .filter(|b| b.spec.policy_name == POLICY_NAME)
        .collect();
    if ours.iter().any(|b| binding_problem(b).is_none()) {
        return Ok(());
    }
    let why: Vec<String> = ours
        .iter()
        .filter_map(|b| {
            binding_problem(b).map(|p| format!("{}: {p}", b.metadata.name.as_deref().unwrap_or_default()))
        })
        .collect();
    Err(if why.is_empty() {
        format!(
            "no ValidatingAdmissionPolicyBinding puts {POLICY_NAME} in force, so the API server does not check who reviews ApprovalRequests; {apply}"
        )
    } else {
        format!(
            "no ValidatingAdmissionPolicyBinding puts {POLICY_NAME} in force with validationActions [Deny] for every request ({}); {apply}",
            why.join("; ")
        )
    })
}

/// Why `binding` does not enforce the policy on every request, if it does not.
fn binding_problem(binding: &ValidatingAdmissionPolicyBinding) -> Option<String> {
    let spec = &binding.spec;
    let actions = &spec.validation_actions;
    if !actions.iter().any(|a| a == "Deny") {
        return Some(format!("validationActions {actions:?}, not Deny"));
    }
    if spec.param_ref.is_some() {
        return Some("it sets paramRef".to_owned());
    }
    let matched = serde_json::to_value(&spec.match_resources).unwrap_or(Value::Null);
    if matched.get("resourceRules").is_some_and(non_empty) {
        return Some("matchResources sets resourceRules".to_owned());
    }
    narrowed_resources(&matched).map(|n| format!("matchResources sets {n}"))
}

/// A field of a policy's spec that narrows which requests it checks.
fn narrowed(spec: &Value) -> Option<String> {
    if spec.get("matchConditions").is_some_and(non_empty) {
        return Some("matchConditions".to_owned());
    }
    if spec.get("paramKind").is_some_and(non_empty) {
        return Some("paramKind".to_owned());
    }
    let constraints = spec.get("matchConstraints").unwrap_or(&Value::Null);
    if let Some(n) = narrowed_resources(constraints) {
        return Some(format!("matchConstraints.{n}"));
    }
    // The shipped rules leave these out, so comparing with them cannot
    // tell: a rule for cluster-scoped objects only (ApprovalRequests are
    // namespaced) or for a few names matches (almost) nothing.
    let rules = constraints.get("resourceRules").and_then(Value::as_array);
    for (i, rule) in rules.into_iter().flatten().enumerate() {
        if rule.get("scope").is_some_and(|s| s != "*") {
            return Some(format!("matchConstraints.resourceRules[{i}].scope"));
        }
        if rule.get("resourceNames").is_some_and(non_empty) {
            return Some(format!("matchConstraints.resourceRules[{i}].resourceNames"));
        }
    }
    None
}

/// A selector, exclusion or resource rule in `matched` (MatchResources)
/// that leaves some requests out. A policy's own resource rules are checked
/// against what it ships (see [`narrowed`]); a binding's only ever narrow
/// (they are intersected with the policy's).
fn narrowed_resources(matched: &Value) -> Option<String> {
    for field in ["namespaceSelector", "objectSelector", "excludeResourceRules"] {
        if matched.get(field).is_some_and(non_empty) {
            return Some(field.to_owned());
        }
    }
    None
}

/// Whether a JSON value says anything: not null, `{}`, `[]` or a selector
/// without terms.
fn non_empty(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Array(items) => !items.is_empty(),
        Value::Object(map) => map.values().any(non_empty),
        _ => true,
    }
}

/// Whether `actual` holds everything of `expected` (fields the API server
/// adds as defaults may be there too; lists must match item for item), or
/// the path of the first difference.
fn contains(expected: &Value, actual: &Value, path: &str) -> Result<(), String> {
    match (expected, actual) {
        (Value::Object(want), Value::Object(have)) => {
            for (key, value) in want {
                contains(
                    value,
                    have.get(key).unwrap_or(&Value::Null),
                    &format!("{path}.{key}"),
                )?;
            }
            Ok(())
        }
        (Value::Array(want), Value::Array(have)) if want.len() == have.len() => want
            .iter()
            .zip(have)
            .enumerate()
            .try_for_each(|(i, (w, h))| contains(w, h, &format!("{path}[{i}]"))),
        (want, have) if want == have => Ok(()),
        _ => Err(path.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPERATOR: &str = "system:serviceaccount:gatehouse:gatehouse-operator";

    /// The shipped policy as the API server returns it (defaults added)
    /// for an operator of another release namespace.
    fn installed() -> ValidatingAdmissionPolicy {
        let text = SHIPPED.replace(SHIPPED_OPERATOR, OPERATOR);
        let mut policy: ValidatingAdmissionPolicy =
            serde_norway::from_str(&text).expect("the shipped policy");
        let spec = policy.spec.as_mut().expect("spec");
        let constraints = spec.match_constraints.as_mut().expect("matchConstraints");
        constraints.match_policy = Some("Equivalent".into());
        constraints.namespace_selector = Some(Default::default());
        constraints.object_selector = Some(Default::default());
        policy
    }

    /// The policy's resource rules, to edit.
    fn resource_rules(
        policy: &mut ValidatingAdmissionPolicy,
    ) -> &mut Vec<k8s_openapi::api::admissionregistration::v1::NamedRuleWithOperations> {
        policy
            .spec
            .as_mut()
            .and_then(|s| s.match_constraints.as_mut())
            .and_then(|m| m.resource_rules.as_mut())
            .expect("the shipped policy has resource rules")
    }

    fn binding(actions: &[&str]) -> Arc<ValidatingAdmissionPolicyBinding> {
        let yaml = format!(
            "metadata: {{name: gatehouse-approvalrequests}}\nspec: {{policyName: {POLICY_NAME}, validationActions: {actions:?}}}"
        );
        Arc::new(serde_norway::from_str(&yaml).expect("binding"))
    }

    fn expected() -> Value {
        expected_spec(OPERATOR).expect("expected")
    }

    #[test]
    fn the_shipped_policy_with_a_deny_binding_is_in_force() {
        assert_eq!(
            check(Some(&installed()), &[binding(&["Deny"])], &expected()),
            Ok(())
        );
        assert_eq!(
            check(
                Some(&installed()),
                &[binding(&["Warn"]), binding(&["Deny", "Audit"])],
                &expected()
            ),
            Ok(())
        );
    }

    #[test]
    fn a_missing_policy_or_binding_suspends_approvals() {
        let missing = check(None, &[binding(&["Deny"])], &expected()).expect_err("no policy");
        assert!(missing.contains("is not installed"), "{missing}");
        let unbound = check(Some(&installed()), &[], &expected()).expect_err("no binding");
        assert!(
            unbound.contains("no ValidatingAdmissionPolicyBinding"),
            "{unbound}"
        );
        let warn = check(Some(&installed()), &[binding(&["Warn", "Audit"])], &expected()).expect_err("warn");
        assert!(warn.contains("not Deny"), "{warn}");
    }

    #[test]
    fn an_edited_or_narrowed_policy_or_binding_suspends_approvals() {
        // Another operator named as the one that decides.
        let other = check(
            Some(&installed()),
            &[binding(&["Deny"])],
            &expected_spec("system:serviceaccount:x:y").expect("expected"),
        )
        .expect_err("another operator");
        assert!(
            other.contains("differs from the one this operator ships at spec.variables"),
            "{other}"
        );
        // A validation dropped.
        let mut edited = installed();
        edited
            .spec
            .as_mut()
            .expect("spec")
            .validations
            .as_mut()
            .expect("validations")
            .pop();
        let dropped = check(Some(&edited), &[binding(&["Deny"])], &expected()).expect_err("dropped");
        assert!(dropped.contains("spec.validations"), "{dropped}");
        // The status subresource no longer matched.
        let mut edited = installed();
        let rules = resource_rules(&mut edited);
        rules[0].resources = Some(vec!["approvalrequests".into()]);
        assert!(check(Some(&edited), &[binding(&["Deny"])], &expected()).is_err());
        // A condition or selector that leaves requests out.
        let mut edited = installed();
        edited.spec.as_mut().expect("spec").match_conditions = Some(vec![
            serde_json::from_value(serde_json::json!({"name": "never", "expression": "false"}))
                .expect("condition"),
        ]);
        let conditioned = check(Some(&edited), &[binding(&["Deny"])], &expected()).expect_err("condition");
        assert!(conditioned.contains("matchConditions"), "{conditioned}");
        let narrowed: Arc<ValidatingAdmissionPolicyBinding> = Arc::new(
            serde_norway::from_str(&format!(
                "metadata: {{name: b}}\nspec: {{policyName: {POLICY_NAME}, validationActions: [Deny], matchResources: {{namespaceSelector: {{matchLabels: {{team: a}}}}}}}}"
            ))
            .expect("binding"),
        );
        let out = check(Some(&installed()), &[narrowed], &expected()).expect_err("narrowed");
        assert!(out.contains("matchResources sets namespaceSelector"), "{out}");
    }

    /// Fields the shipped policy leaves out, so `contains` cannot see them,
    /// that still leave ApprovalRequests unchecked: a resource rule scoped
    /// to cluster-scoped objects (ApprovalRequests are namespaced) or to a
    /// few names, and a binding that only applies to other resources.
    #[test]
    fn a_rule_or_binding_narrowed_by_a_field_the_policy_leaves_out_suspends_approvals() {
        type Edit = fn(&mut k8s_openapi::api::admissionregistration::v1::NamedRuleWithOperations);
        let edits: [(Edit, &str); 2] = [
            (|r| r.scope = Some("Cluster".into()), "scope"),
            (|r| r.resource_names = Some(vec!["none".into()]), "resourceNames"),
        ];
        for (edit, field) in edits {
            let mut edited = installed();
            let rules = resource_rules(&mut edited);
            edit(&mut rules[0]);
            let out = check(Some(&edited), &[binding(&["Deny"])], &expected()).expect_err(field);
            assert!(out.contains(field), "{field}: {out}");
        }
        // As the API server returns it: scope "*" and no names narrow nothing.
        let mut defaulted = installed();
        let rules = resource_rules(&mut defaulted);
        rules[0].scope = Some("*".into());
        rules[0].resource_names = Some(Vec::new());
        assert_eq!(
            check(Some(&defaulted), &[binding(&["Deny"])], &expected()),
            Ok(())
        );

        let elsewhere: Arc<ValidatingAdmissionPolicyBinding> = Arc::new(
            serde_norway::from_str(&format!(
                "metadata: {{name: b}}\nspec: {{policyName: {POLICY_NAME}, validationActions: [Deny], matchResources: {{resourceRules: [{{apiGroups: [''], apiVersions: [v1], operations: [CREATE], resources: [configmaps]}}]}}}}"
            ))
            .expect("binding"),
        );
        let out = check(Some(&installed()), &[elsewhere], &expected()).expect_err("elsewhere");
        assert!(out.contains("matchResources sets resourceRules"), "{out}");
    }
}
