//! Client-side checks of every CEL rule on the Gatehouse types, without a
//! cluster, using kube's CEL evaluator (the `cel` feature of kube).
//!
//! Each rule has an object that passes and one that fails, and every negative
//! test asserts that the only error is exactly the rule's message, so it proves
//! that rule, and no other, fired. `every_rule_has_a_negative_test` keeps the
//! list complete: a new rule in `crds/src` fails it until a test here names the
//! rule's message.
//!
//! The samples in `config/samples` and the invalid manifests the e2e suite
//! applies (`e2e/tests/invalid`) are checked here too.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use gatehouse_crds::{
    ApprovalRequest, Connection, Policy, Review,
    approval::Decision,
    policy::{Action, ColumnMask, MaskStrategy, Subject, SubjectKind},
};
use kube::{
    CustomResourceExt,
    core::cel::{ErrorKind, ValidationErrors, validate_cel, validate_cel_update},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

// ----------------------------------------------------------------------------
// Helpers

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The messages of the failed rules; panics on an error that is not a plain
/// rule failure (a compile or evaluation error would otherwise pass as a
/// rejection).
fn messages(result: Result<(), ValidationErrors>) -> Vec<String> {
    match result {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .iter()
            .map(|e| {
                assert_eq!(
                    e.kind,
                    ErrorKind::ValidationFailure,
                    "rule `{}` at {} did not evaluate cleanly: {}",
                    e.rule,
                    e.field_path,
                    e.message
                );
                e.message.clone()
            })
            .collect(),
    }
}

#[track_caller]
fn assert_valid<T: CustomResourceExt + Serialize>(obj: &T) {
    let errors = messages(validate_cel(obj));
    assert!(errors.is_empty(), "expected the object to pass, got {errors:#?}");
}

#[track_caller]
fn assert_rejected<T: CustomResourceExt + Serialize>(obj: &T, message: &str) {
    assert_eq!(
        messages(validate_cel(obj)),
        [message],
        "expected exactly one failed rule"
    );
}

#[track_caller]
fn assert_update_valid<T: CustomResourceExt + Serialize>(new: &T, old: &T) {
    let errors = messages(validate_cel_update(new, old));
    assert!(errors.is_empty(), "expected the update to pass, got {errors:#?}");
}

#[track_caller]
fn assert_update_rejected<T: CustomResourceExt + Serialize>(new: &T, old: &T, message: &str) {
    assert_eq!(
        messages(validate_cel_update(new, old)),
        [message],
        "expected exactly one failed rule"
    );
}

fn from_json<T: DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("test object deserializes")
}

/// A Connection with every optional part set, valid.
fn connection() -> Connection {
    from_json(json!({
        "apiVersion": "gatehouse.dev/v1alpha1",
        "kind": "Connection",
        "metadata": { "name": "orders-db" },
        "spec": {
            "type": "postgres",
            "target": {
                "host": "orders.db.svc",
                "port": 5432,
                "database": "orders",
                "tls": { "mode": "verify-full", "caSecretRef": { "name": "orders-ca" } }
            },
            "credentialsRef": { "name": "orders-db-creds" },
            "replicas": 2,
            "recording": { "mode": "required" },
            "approval": { "holdTimeout": "5m", "ttl": "1h" }
        }
    }))
}

/// A Policy with every kind of subject, rule and mask, valid.
fn policy() -> Policy {
    from_json(json!({
        "apiVersion": "gatehouse.dev/v1alpha1",
        "kind": "Policy",
        "metadata": { "name": "agents" },
        "spec": {
            "connectionSelector": { "matchLabels": { "env": "prod" } },
            "subjects": [
                { "kind": "ServiceAccount", "name": "planner", "namespace": "agents" },
                { "kind": "User", "name": "oidc:alice@example.com" },
                { "kind": "Group", "name": "sre" }
            ],
            "rules": [
                { "name": "reads", "match": { "operations": ["select"] }, "action": "allow" },
                {
                    "name": "orders-writes",
                    "match": { "operations": ["insert", "update", "delete"], "tables": ["public.orders", "sales.*"] },
                    "action": "requireApproval",
                    "approvers": { "users": ["alice"], "groups": ["dba"], "required": 2 }
                },
                { "name": "no-ddl", "match": { "operations": ["ddl"] }, "action": "deny" }
            ],
            "masking": {
                "columns": [
                    { "name": "(?i)password|token", "strategy": "redact" },
                    { "name": "card_number", "strategy": "partial", "keepLast": 4 }
                ],
                "detectors": ["all"],
                "customDetectors": [
                    { "name": "acme-token", "regex": "\\bacme_[A-Za-z0-9]{32}\\b", "keywords": ["acme_"] }
                ]
            }
        }
    }))
}

/// An ApprovalRequest as the proxy creates it, with one review, valid.
fn approval_request() -> ApprovalRequest {
    from_json(json!({
        "apiVersion": "gatehouse.dev/v1alpha1",
        "kind": "ApprovalRequest",
        "metadata": { "name": "orders-db-7f3c9a2e" },
        "spec": {
            "connection": "orders-db",
            "connectionUID": "6b1c1b7e-2f0a-4c3e-9d51-0b7a2e9c4f10",
            "requester": {
                "username": "system:serviceaccount:agents:planner",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:agents"]
            },
            "sessionID": "3f9c2b7e-61a4-4d0b-9c55-0e8f2a1d7b40",
            "statement": "UPDATE public.orders SET status = $1 WHERE id = $2",
            "parameters": [
                { "type": "text", "format": "text", "value": "shipped" },
                { "type": "int4", "format": "binary", "value": "42" }
            ],
            "statementHash": "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
            "parametersHash": "fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9",
            "fingerprint": "5d41402abc4b2a76b9719d911017c592",
            "policy": "writes-need-approval",
            "rule": "orders-writes",
            "approvers": { "groups": ["dba"], "required": 1 },
            "expiresAt": "2030-01-15T10:05:00Z",
            "reviews": [{ "user": "alice", "groups": ["dba"], "decision": "Approved", "reason": "ticket 812" }]
        }
    }))
}

fn review(user: &str, decision: Decision, reason: Option<&str>) -> Review {
    Review {
        user: user.into(),
        groups: vec!["dba".into()],
        decision,
        reason: reason.map(Into::into),
    }
}

// ----------------------------------------------------------------------------
// Coverage of the rules themselves

/// Every `x-kubernetes-validations` message of every CRD, with its rule.
fn crd_rules() -> Vec<(String, String)> {
    fn walk(node: &Value, out: &mut Vec<(String, String)>) {
        match node {
            Value::Object(map) => {
                if let Some(Value::Array(rules)) = map.get("x-kubernetes-validations") {
                    for rule in rules {
                        out.push((
                            rule["message"]
                                .as_str()
                                .expect("every rule has a message")
                                .to_owned(),
                            rule["rule"].as_str().expect("every rule has a rule").to_owned(),
                        ));
                    }
                }
                map.values().for_each(|v| walk(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (_, crd) in gatehouse_crds::crds() {
        walk(&serde_json::to_value(&crd).expect("CRD serialises"), &mut out);
    }
    out
}

#[test]
fn every_rule_has_a_negative_test() {
    // The negative tests below spell each message out as a string literal, so
    // a rule whose message appears nowhere in this file has no test.
    let source = include_str!("cel.rs");
    let untested: Vec<_> = crd_rules()
        .into_iter()
        .filter(|(message, _)| !source.contains(&format!("\"{message}\"")))
        .collect();
    assert!(
        untested.is_empty(),
        "rules without a negative test in crds/tests/cel.rs: {untested:#?}"
    );
}

#[test]
fn the_fixtures_are_valid() {
    assert_valid(&connection());
    assert_valid(&policy());
    assert_valid(&approval_request());
}

// ----------------------------------------------------------------------------
// Connection

#[test]
fn connection_minimal_is_valid_with_defaults() {
    let c: Connection = from_json(json!({
        "apiVersion": "gatehouse.dev/v1alpha1",
        "kind": "Connection",
        "metadata": { "name": "orders-db" },
        "spec": {
            "type": "postgres",
            "target": { "host": "orders.db.svc", "database": "orders" },
            "credentialsRef": { "name": "orders-db-creds" }
        }
    }));
    assert_eq!(c.spec.target.port, 5432);
    assert_eq!(c.spec.replicas, 1);
    assert_valid(&c);
}

#[test]
fn connection_port_range() {
    for port in [1, 5432, 65535] {
        let mut c = connection();
        c.spec.target.port = port;
        assert_valid(&c);
    }
    for port in [0, -1, 65536] {
        let mut c = connection();
        c.spec.target.port = port;
        assert_rejected(&c, "target.port must be between 1 and 65535");
    }
}

#[test]
fn connection_replicas_range() {
    for replicas in [0, 1, 50] {
        let mut c = connection();
        c.spec.replicas = replicas;
        assert_valid(&c);
    }
    for replicas in [-1, 51] {
        let mut c = connection();
        c.spec.replicas = replicas;
        assert_rejected(&c, "replicas must be between 0 and 50");
    }
}

#[test]
fn connection_host_length() {
    let mut c = connection();
    c.spec.target.host = "h".repeat(253);
    assert_valid(&c);
    for host in [String::new(), "h".repeat(254)] {
        let mut c = connection();
        c.spec.target.host = host;
        assert_rejected(&c, "target.host must be 1 to 253 characters");
    }
}

#[test]
fn connection_database_length() {
    let mut c = connection();
    c.spec.target.database = "d".repeat(63);
    assert_valid(&c);
    for database in [String::new(), "d".repeat(64)] {
        let mut c = connection();
        c.spec.target.database = database;
        assert_rejected(&c, "target.database must be 1 to 63 characters");
    }
}

#[test]
fn secret_name_length() {
    let mut c = connection();
    c.spec.credentials_ref.name = "s".repeat(253);
    assert_valid(&c);
    for name in [String::new(), "s".repeat(254)] {
        let mut c = connection();
        c.spec.credentials_ref.name = name.clone();
        assert_rejected(&c, "secret name must be 1 to 253 characters");

        let mut c = connection();
        c.spec.target.tls.as_mut().expect("fixture has tls").ca_secret_ref =
            Some(gatehouse_crds::SecretReference { name });
        assert_rejected(&c, "secret name must be 1 to 253 characters");
    }
}

#[test]
fn tls_ca_secret_ref_not_with_mode_disable() {
    for mode in ["require", "verify-full"] {
        let mut c = connection();
        c.spec.target.tls = Some(from_json(
            json!({ "mode": mode, "caSecretRef": { "name": "orders-ca" } }),
        ));
        assert_valid(&c);
    }
    let mut c = connection();
    c.spec.target.tls = Some(from_json(json!({ "mode": "disable" })));
    assert_valid(&c);

    let mut c = connection();
    c.spec.target.tls = Some(from_json(
        json!({ "mode": "disable", "caSecretRef": { "name": "orders-ca" } }),
    ));
    assert_rejected(
        &c,
        "tls.caSecretRef has no effect with mode disable; remove it or choose require or verify-full",
    );
}

fn with_approval(hold_timeout: Option<&str>, ttl: Option<&str>) -> Connection {
    let mut c = connection();
    c.spec.approval = Some(from_json(json!({ "holdTimeout": hold_timeout, "ttl": ttl })));
    c
}

#[test]
fn hold_timeout_not_longer_than_ttl() {
    for (hold, ttl) in [
        (Some("5m"), Some("1h")),
        (Some("1h"), Some("1h")),
        (Some("90m"), Some("1h30m")),
        (Some("2h"), None),
        (None, Some("1s")),
        (None, None),
    ] {
        assert_valid(&with_approval(hold, ttl));
    }
    let mut c = connection();
    c.spec.approval = None;
    assert_valid(&c);

    for (hold, ttl) in [
        (Some("2h"), Some("1h")),
        (Some("61m"), Some("1h")),
        (Some("24h"), Some("23h59m59s")),
    ] {
        assert_rejected(
            &with_approval(hold, ttl),
            "approval.holdTimeout must not be longer than approval.ttl",
        );
    }
}

#[test]
fn hold_timeout_bounds() {
    for hold in ["1s", "30s", "24h"] {
        assert_valid(&with_approval(Some(hold), Some("168h")));
    }
    for hold in ["0s", "500ms", "24h1s", "-5m"] {
        assert_rejected(
            &with_approval(Some(hold), None),
            "approval.holdTimeout must be between 1s and 24h",
        );
    }
}

#[test]
fn malformed_durations_are_rejected() {
    // `duration()` cannot parse these, so each rule that reads them fails with
    // an evaluation error instead of its message; the API server likewise
    // answers "type conversion error ... evaluating rule: <message>".
    let c = with_approval(Some("5 minutes"), Some("1d"));
    let errors = validate_cel(&c).expect_err("malformed durations are rejected");
    let mut failed: Vec<_> = errors
        .iter()
        .map(|e| {
            assert_eq!(e.kind, ErrorKind::EvaluationError, "{e}");
            e.field_path.as_str()
        })
        .collect();
    failed.sort_unstable();
    assert_eq!(failed, ["spec", "spec.approval.holdTimeout", "spec.approval.ttl"]);
}

#[test]
fn ttl_bounds() {
    for ttl in ["1s", "1h", "168h"] {
        assert_valid(&with_approval(None, Some(ttl)));
    }
    for ttl in ["0s", "999ms", "168h1s", "200h"] {
        assert_rejected(
            &with_approval(None, Some(ttl)),
            "approval.ttl must be between 1s and 168h",
        );
    }
}

// ----------------------------------------------------------------------------
// Policy

#[test]
fn rule_names_unique() {
    let mut p = policy();
    let mut dup = p.spec.rules[0].clone();
    dup.action = Action::Deny;
    p.spec.rules.push(dup);
    assert_rejected(&p, "rule names must be unique within a Policy");
}

fn subject(kind: SubjectKind, namespace: Option<&str>) -> Policy {
    let mut p = policy();
    p.spec.subjects = vec![Subject {
        kind,
        name: "planner".into(),
        namespace: namespace.map(Into::into),
    }];
    p
}

#[test]
fn subject_namespace_only_for_service_accounts() {
    assert_valid(&subject(SubjectKind::ServiceAccount, Some("agents")));
    assert_valid(&subject(SubjectKind::User, None));
    assert_valid(&subject(SubjectKind::Group, None));

    let message =
        "subjects[].namespace is required for kind ServiceAccount and not allowed for User or Group";
    assert_rejected(&subject(SubjectKind::ServiceAccount, None), message);
    assert_rejected(&subject(SubjectKind::User, Some("agents")), message);
    assert_rejected(&subject(SubjectKind::Group, Some("agents")), message);
}

#[test]
fn subject_namespace_not_empty() {
    assert_valid(&subject(SubjectKind::ServiceAccount, Some("agents")));
    assert_rejected(
        &subject(SubjectKind::ServiceAccount, Some("")),
        "subjects[].namespace must be 1 to 63 characters",
    );
}

#[test]
fn approvers_required_reachable_by_users_alone() {
    let message = "approvers.required cannot exceed the number of users when no group is named";
    assert_valid(&with_approvers(
        json!({ "users": ["alice", "bob"], "required": 2 }),
    ));
    assert_valid(&with_approvers(
        json!({ "users": ["alice"], "groups": ["dba"], "required": 3 }),
    ));
    assert_rejected(
        &with_approvers(json!({ "users": ["alice"], "required": 2 })),
        message,
    );
}

#[test]
fn subject_name_length() {
    let mut p = policy();
    p.spec.subjects[2].name = "g".repeat(253);
    assert_valid(&p);
    for name in [String::new(), "g".repeat(254)] {
        let mut p = policy();
        p.spec.subjects[2].name = name;
        assert_rejected(&p, "subjects[].name must be 1 to 253 characters");
    }
}

#[test]
fn approvers_iff_require_approval() {
    // The fixture's rules: allow and deny without approvers, requireApproval with.
    assert_valid(&policy());
    let message = "rules[].approvers is required for action requireApproval and not allowed otherwise";

    let mut p = policy();
    p.spec.rules[1].approvers = None;
    assert_rejected(&p, message);

    for other in [0, 2] {
        let mut p = policy();
        p.spec.rules[other].approvers = p.spec.rules[1].approvers.clone();
        assert_rejected(&p, message);
    }
}

fn with_approvers(approvers: Value) -> Policy {
    let mut p = policy();
    p.spec.rules[1].approvers = Some(from_json(approvers));
    p
}

#[test]
fn approvers_name_a_user_or_group() {
    assert_valid(&with_approvers(json!({ "users": ["alice"] })));
    assert_valid(&with_approvers(json!({ "groups": ["dba"] })));
    for empty in [json!({}), json!({ "users": [], "groups": [], "required": 1 })] {
        assert_rejected(
            &with_approvers(empty),
            "approvers must name at least one user or group",
        );
    }
}

#[test]
fn approvers_required_at_least_one() {
    let p = with_approvers(json!({ "groups": ["dba"] }));
    assert_eq!(p.spec.rules[1].approvers.as_ref().map(|a| a.required), Some(1));
    assert_valid(&p);
    assert_valid(&with_approvers(json!({ "groups": ["dba"], "required": 3 })));
    for required in [0, -1] {
        assert_rejected(
            &with_approvers(json!({ "groups": ["dba"], "required": required })),
            "approvers.required must be at least 1",
        );
    }
}

#[test]
fn approver_user_and_group_names_length() {
    assert_valid(&with_approvers(
        json!({ "users": ["u".repeat(253)], "groups": ["g".repeat(253)] }),
    ));
    for bad in [String::new(), "x".repeat(254)] {
        assert_rejected(
            &with_approvers(json!({ "users": ["alice", bad] })),
            "approver usernames must be 1 to 253 characters",
        );
        assert_rejected(
            &with_approvers(json!({ "groups": [bad, "dba"] })),
            "approver groups must be 1 to 253 characters",
        );
    }
}

#[test]
fn rule_name_is_dns_label() {
    for name in ["a", "reads", "no-writes", "r2d2", "9lives", &"a".repeat(63)] {
        let mut p = policy();
        p.spec.rules[0].name = name.into();
        assert_valid(&p);
    }
    for name in [
        "",
        "Reads",
        "no_ddl",
        "-reads",
        "reads-",
        "no.ddl",
        "no ddl",
        &"a".repeat(64),
    ] {
        let mut p = policy();
        p.spec.rules[0].name = name.into();
        assert_rejected(
            &p,
            "rules[].name must be a DNS label: lower-case letters, digits and '-', at most 63 characters",
        );
    }
}

/// The schema node at `path` (property names; `[]` for list items) of a CRD.
fn schema_at(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    path: &[&str],
) -> Value {
    let mut node =
        serde_json::to_value(&crd.spec.versions[0].schema).expect("schema serialises")["openAPIV3Schema"]
            .take();
    for step in path {
        node = if *step == "[]" {
            node["items"].take()
        } else {
            node["properties"][*step].take()
        };
    }
    node
}

#[test]
fn policy_strings_read_by_rules_are_bounded() {
    // A real API server estimates the cost of every rule from maxItems and
    // maxLength and refuses the CRD when it is too high: without these bounds
    // (found by applying the CRD to kube-apiserver v1.36) the Policy CRD is
    // refused. kube's client-side evaluator does no cost estimate, so this
    // pins the bounds. With them, an over-long name or table fails the
    // schema's maxLength before any CEL rule runs.
    let crd = Policy::crd();
    let at = |path: &str| schema_at(&crd, &path.split('/').collect::<Vec<_>>());
    assert_eq!(at("spec/rules")["maxItems"], 64);
    assert_eq!(at("spec/rules/[]/name")["maxLength"], 63);
    assert_eq!(at("spec/rules/[]/match/tables")["maxItems"], 128);
    assert_eq!(at("spec/rules/[]/match/tables/[]")["maxLength"], 255);
}

#[test]
fn tables_are_schema_qualified() {
    for table in ["public.orders", "public.*", "*.orders", "sales.order_lines"] {
        let mut p = policy();
        p.spec.rules[1].matches.tables = vec![table.into()];
        assert_valid(&p);
    }
    for table in ["orders", "*", "db.public.orders", ".orders", "public.", ""] {
        let mut p = policy();
        p.spec.rules[1].matches.tables = vec!["public.orders".into(), table.into()];
        assert_rejected(
            &p,
            "rules[].match.tables entries must be schema-qualified, as schema.table",
        );
    }
}

fn with_mask(strategy: MaskStrategy, keep_last: Option<i32>) -> Policy {
    let mut p = policy();
    p.spec.masking.as_mut().expect("fixture masks").columns = vec![ColumnMask {
        name: "card_number".into(),
        strategy,
        keep_last,
    }];
    p
}

#[test]
fn keep_last_iff_partial() {
    assert_valid(&with_mask(MaskStrategy::Partial, Some(4)));
    for strategy in [MaskStrategy::Redact, MaskStrategy::Hash, MaskStrategy::Null] {
        assert_valid(&with_mask(strategy, None));
    }
    let message = "masking.columns[].keepLast is required for strategy partial and not allowed otherwise";
    assert_rejected(&with_mask(MaskStrategy::Partial, None), message);
    for strategy in [MaskStrategy::Redact, MaskStrategy::Hash, MaskStrategy::Null] {
        assert_rejected(&with_mask(strategy, Some(4)), message);
    }
}

#[test]
fn keep_last_range() {
    for keep in [1, 16] {
        assert_valid(&with_mask(MaskStrategy::Partial, Some(keep)));
    }
    for keep in [0, 17] {
        assert_rejected(
            &with_mask(MaskStrategy::Partial, Some(keep)),
            "masking.columns[].keepLast must be between 1 and 16",
        );
    }
}

#[test]
fn custom_detector_names_keywords_and_regex() {
    let with = |f: &dyn Fn(&mut gatehouse_crds::policy::CustomDetector)| {
        let mut p = policy();
        f(&mut p.spec.masking.as_mut().expect("fixture masks").custom_detectors[0]);
        p
    };
    assert_valid(&with(&|d| d.name = "a".repeat(63)));
    assert_valid(&with(&|d| d.keywords = vec!["abc".into(), "k".repeat(64)]));
    for name in ["Acme", "-acme", "acme-", "acme token", "acme_token"] {
        assert_rejected(
            &with(&|d| d.name = name.into()),
            "masking.customDetectors[].name must be lower-case letters, digits and '-', starting and ending with a letter or digit",
        );
    }
    for keyword in ["ab", "", &"k".repeat(65)] {
        assert_rejected(
            &with(&|d| d.keywords = vec!["acme_".into(), keyword.to_owned()]),
            "masking.customDetectors[].keywords must each be 3 to 64 characters",
        );
    }
    for regex in [String::new(), "a".repeat(4097)] {
        assert_rejected(
            &with(&|d| d.regex = regex.clone()),
            "masking.customDetectors[].regex must be 1 to 4096 characters",
        );
    }
    let mut p = policy();
    let masking = p.spec.masking.as_mut().expect("fixture masks");
    masking.custom_detectors.push(masking.custom_detectors[0].clone());
    assert_rejected(
        &p,
        "masking.customDetectors[].name must be unique within a Policy",
    );
}

#[test]
fn mask_column_name_length() {
    let mut p = policy();
    p.spec.masking.as_mut().expect("fixture masks").columns[0].name = "c".repeat(1024);
    assert_valid(&p);
    for name in [String::new(), "c".repeat(1025)] {
        let mut p = policy();
        p.spec.masking.as_mut().expect("fixture masks").columns[0].name = name;
        assert_rejected(&p, "masking.columns[].name must be 1 to 1024 characters");
    }
}

// ----------------------------------------------------------------------------
// ApprovalRequest: creation

/// Checks a string field's length rule: `max` characters pass, 0 and `max + 1` fail.
#[track_caller]
fn check_length(set: impl Fn(&mut ApprovalRequest, String), max: usize, message: &str) {
    let mut a = approval_request();
    set(&mut a, "x".repeat(max));
    assert_valid(&a);
    for value in [String::new(), "x".repeat(max + 1)] {
        let mut a = approval_request();
        set(&mut a, value);
        assert_rejected(&a, message);
    }
}

#[test]
fn approval_request_field_lengths() {
    check_length(
        |a, v| a.spec.connection = v,
        253,
        "connection must be 1 to 253 characters",
    );
    check_length(
        |a, v| a.spec.connection_uid = v,
        128,
        "connectionUID must be 1 to 128 characters",
    );
    check_length(
        |a, v| a.spec.requester.username = v,
        253,
        "requester.username must be 1 to 253 characters",
    );
    check_length(
        |a, v| a.spec.session_id = v,
        64,
        "sessionID must be 1 to 64 characters",
    );
    check_length(
        |a, v| a.spec.statement = v,
        65536,
        "statement must be 1 to 65536 characters",
    );
    check_length(
        |a, v| a.spec.fingerprint = v,
        128,
        "fingerprint must be 1 to 128 characters",
    );
    check_length(
        |a, v| a.spec.policy = v,
        253,
        "policy must be 1 to 253 characters",
    );
    check_length(|a, v| a.spec.rule = v, 63, "rule must be 1 to 63 characters");
    check_length(
        |a, v| a.spec.reviews[0].user = v,
        253,
        "reviews[].user must be 1 to 253 characters",
    );
}

#[test]
fn approval_request_optional_lengths() {
    // reason may be empty or absent, but not too long.
    let mut a = approval_request();
    a.spec.reviews[0].reason = None;
    a.spec.reviews[0].groups.clear();
    a.spec.parameters.clear();
    assert_valid(&a);
    let mut a = approval_request();
    a.spec.reviews[0].reason = Some(String::new());
    assert_valid(&a);
    let mut a = approval_request();
    a.spec.reviews[0].reason = Some("r".repeat(1024));
    assert_valid(&a);
    let mut a = approval_request();
    a.spec.reviews[0].reason = Some("r".repeat(1025));
    assert_rejected(&a, "reviews[].reason must be at most 1024 characters");
    let mut a = approval_request();
    a.spec.reviews[0].groups = vec![String::new()];
    assert_rejected(&a, "reviews[].groups must be 1 to 253 characters each");
}

#[test]
fn approval_request_hashes_are_sha256_hex() {
    for bad in [
        String::new(),
        "0".repeat(63),
        "0".repeat(65),
        "A".repeat(64),
        "g".repeat(64),
    ] {
        let mut a = approval_request();
        a.spec.statement_hash = bad.clone();
        assert_rejected(&a, "statementHash must be a SHA-256 in 64 lowercase hex digits");
        let mut a = approval_request();
        a.spec.parameters_hash = bad;
        assert_rejected(&a, "parametersHash must be a SHA-256 in 64 lowercase hex digits");
    }
}

#[test]
fn approval_request_approvers_rules_apply() {
    let mut a = approval_request();
    a.spec.approvers.groups.clear();
    assert_rejected(&a, "approvers must name at least one user or group");
    let mut a = approval_request();
    a.spec.approvers.required = 0;
    assert_rejected(&a, "approvers.required must be at least 1");
}

// ----------------------------------------------------------------------------
// ApprovalRequest: updates

#[test]
fn approval_request_unchanged_update_passes() {
    let old = approval_request();
    assert_update_valid(&old.clone(), &old);
}

#[test]
fn adding_a_review_passes() {
    let old = approval_request();
    let mut new = old.clone();
    new.spec
        .reviews
        .push(review("bob", Decision::Denied, Some("no ticket")));
    assert_update_valid(&new, &old);

    // The first review of a request that had none.
    let mut old = approval_request();
    old.spec.reviews.clear();
    let mut new = old.clone();
    new.spec.reviews.push(review("alice", Decision::Approved, None));
    assert_update_valid(&new, &old);
}

#[test]
fn status_and_metadata_may_change() {
    let old = approval_request();
    let mut new = old.clone();
    new.metadata.labels = Some([("gatehouse.dev/phase".to_owned(), "approved".to_owned())].into());
    new.status = Some(from_json(
        json!({ "phase": "Approved", "message": "approved by alice" }),
    ));
    assert_update_valid(&new, &old);
}

#[test]
fn spec_is_immutable_except_reviews() {
    let message = "spec is immutable except spec.reviews";
    type Edit = fn(&mut ApprovalRequest);
    let edits: [(&str, Edit); 15] = [
        ("statement", |a| {
            a.spec.statement = "DELETE FROM public.orders".into()
        }),
        ("connection", |a| a.spec.connection = "billing-db".into()),
        ("requester.username", |a| {
            a.spec.requester.username = "mallory".into()
        }),
        ("requester.groups", |a| a.spec.requester.groups.push("dba".into())),
        ("sessionID", |a| a.spec.session_id = "other-session".into()),
        ("fingerprint", |a| a.spec.fingerprint = "0".repeat(32)),
        ("connectionUID", |a| a.spec.connection_uid = "0".into()),
        ("statementHash", |a| a.spec.statement_hash = "0".repeat(64)),
        ("parametersHash", |a| a.spec.parameters_hash = "0".repeat(64)),
        ("a parameter's value", |a| {
            a.spec.parameters[0].value = Some("cancelled".into())
        }),
        ("parameters removed", |a| a.spec.parameters.clear()),
        ("policy", |a| a.spec.policy = "other".into()),
        ("rule", |a| a.spec.rule = "other".into()),
        ("approvers", |a| a.spec.approvers.required = 2),
        ("expiresAt", |a| {
            a.spec.expires_at = from_json(json!("2031-01-15T10:05:00Z"));
        }),
    ];
    for (what, edit) in edits {
        let old = approval_request();
        let mut new = old.clone();
        edit(&mut new);
        assert_ne!(new.spec, old.spec, "{what}: the edit changes the spec");
        let errors = messages(validate_cel_update(&new, &old));
        assert_eq!(errors, [message], "changing {what}");
    }

    // Adding parameters to a request that had none is a change too.
    let mut old = approval_request();
    old.spec.parameters.clear();
    let mut new = approval_request();
    new.spec.reviews = old.spec.reviews.clone();
    assert_update_rejected(&new, &old, message);
}

#[test]
fn existing_reviews_cannot_change() {
    let message = "existing reviews cannot be changed or removed";
    let mut old = approval_request();
    old.spec.reviews.push(review("bob", Decision::Approved, None));

    // Removed: one of two, or all.
    let mut new = old.clone();
    new.spec.reviews.remove(0);
    assert_update_rejected(&new, &old, message);
    let mut new = old.clone();
    new.spec.reviews.clear();
    assert_update_rejected(&new, &old, message);

    // Edited: decision, reason added, reason changed, reason removed.
    let mut new = old.clone();
    new.spec.reviews[0].decision = Decision::Denied;
    assert_update_rejected(&new, &old, message);
    let mut new = old.clone();
    new.spec.reviews[1].reason = Some("changed my mind".into());
    assert_update_rejected(&new, &old, message);
    let mut new = old.clone();
    new.spec.reviews[0].reason = Some("ticket 813".into());
    assert_update_rejected(&new, &old, message);
    let mut new = old.clone();
    new.spec.reviews[0].reason = None;
    assert_update_rejected(&new, &old, message);

    // Replaced by another user's review at the same place.
    let mut new = old.clone();
    new.spec.reviews[1] = review("carol", Decision::Approved, None);
    assert_update_rejected(&new, &old, message);

    // Reordering keeps every review as it was.
    let mut new = old.clone();
    new.spec.reviews.reverse();
    assert_update_valid(&new, &old);
}

// ----------------------------------------------------------------------------
// Manifests: config/samples and e2e/tests/invalid

/// Parses a manifest of a Gatehouse kind and runs its creation rules; `None`
/// for other kinds (Secret, Kustomization).
fn validate_manifest(path: &Path) -> Option<Result<Vec<String>, String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let doc: Value =
        serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
    if doc["apiVersion"] != "gatehouse.dev/v1alpha1" {
        return None;
    }
    fn run<T: DeserializeOwned + CustomResourceExt + Serialize>(text: &str) -> Result<Vec<String>, String> {
        let obj: T = serde_norway::from_str(text).map_err(|e| e.to_string())?;
        Ok(messages(validate_cel(&obj)))
    }
    Some(match doc["kind"].as_str() {
        Some("Connection") => run::<Connection>(&text),
        Some("Policy") => run::<Policy>(&text),
        Some("ApprovalRequest") => run::<ApprovalRequest>(&text),
        other => panic!("{}: unknown gatehouse.dev kind {other:?}", path.display()),
    })
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

#[test]
fn samples_are_valid() {
    let dir = repo_root().join("config/samples");
    let files = yaml_files(&dir);
    let mut kinds = BTreeSet::new();
    for path in &files {
        let text = std::fs::read_to_string(path).expect("sample readable");
        assert!(
            text.starts_with("# "),
            "{} must start with a comment saying what it shows",
            path.display()
        );
        let doc: Value = serde_norway::from_str(&text).expect("sample is YAML");
        assert!(
            doc["metadata"].get("namespace").is_none(),
            "{}: samples are applied with -n and carry no metadata.namespace",
            path.display()
        );
        if let Some(result) = validate_manifest(path) {
            kinds.insert(doc["kind"].as_str().expect("kind").to_owned());
            let errors = result.unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
            assert!(errors.is_empty(), "{} is rejected: {errors:#?}", path.display());
        }
    }
    assert_eq!(
        kinds,
        BTreeSet::from(["ApprovalRequest".into(), "Connection".into(), "Policy".into()])
    );

    // kustomization.yaml lists every other file.
    let kustomization: Value = serde_norway::from_str(
        &std::fs::read_to_string(dir.join("kustomization.yaml")).expect("kustomization.yaml"),
    )
    .expect("kustomization is YAML");
    let listed: BTreeSet<&str> = kustomization["resources"]
        .as_array()
        .expect("resources list")
        .iter()
        .map(|r| r.as_str().expect("resource is a file name"))
        .collect();
    let present: BTreeSet<String> = files
        .iter()
        .map(|p| p.file_name().expect("file name").to_string_lossy().into_owned())
        .filter(|name| name != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed,
        present.iter().map(String::as_str).collect(),
        "kustomization.yaml resources"
    );
}

#[test]
fn invalid_manifests_are_rejected_with_their_expected_message() {
    let files = yaml_files(&repo_root().join("e2e/tests/invalid"));
    assert!(
        files.len() >= 10,
        "expected at least 10 invalid manifests, found {}",
        files.len()
    );
    let mut expected_messages = BTreeSet::new();
    for path in &files {
        let text = std::fs::read_to_string(path).expect("readable");
        let mut lines = text.lines();
        let expect = lines
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{}: first line must be `# expect: <message>`", path.display()));
        assert!(
            lines.next().is_some_and(|l| l.starts_with("# why: ")),
            "{}: second line must be `# why: ...`",
            path.display()
        );
        assert!(
            crd_rules().iter().any(|(message, _)| message == expect),
            "{}: `{expect}` is not the message of any rule",
            path.display()
        );
        expected_messages.insert(expect.to_owned());
        let result =
            validate_manifest(path).unwrap_or_else(|| panic!("{}: not a gatehouse.dev kind", path.display()));
        let errors = result.unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
        // Exactly this rule fails, so the manifest tests one rule and the
        // e2e suite's containment check cannot pass on another rule's error.
        assert_eq!(errors, [expect], "{}: the rules that fail", path.display());
    }
    assert!(
        expected_messages.len() >= 10,
        "the invalid manifests should cover at least 10 distinct rules"
    );
}
