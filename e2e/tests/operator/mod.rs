//! The operator against the real API server: `kubectl apply` a Secret, a
//! Connection and Policies, and the children and statuses appear; a missing
//! Secret or an invalid Policy is reported where a person looks, and the
//! proxy denies an invalid Policy's subjects everything until it is fixed;
//! a restarted operator changes nothing.
//!
//! The operator runs in process (the library's `run`), as the admin user;
//! the harness writes the Deployment's status as a kubelet would.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use anyhow::{Context as _, bail, ensure};
use gatehouse_crds::{Connection, Policy};
use gatehouse_e2e::{TestEnv, User, kubelet::Pod};
use gatehouse_operator::{ProxySettings, RecordingS3};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Service, ServiceAccount},
        rbac::v1::{ClusterRoleBinding, Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::Condition,
};
use kube::{Api, Resource, api::Patch, api::PatchParams};
use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, OnceCell};

mod holds;
mod trust;
pub use holds::a_held_statement_runs_once_when_approved_and_only_as_approved;
pub use trust::{
    an_approval_covers_exactly_the_statement_shown,
    decisions_only_the_right_party_writes_are_rechecked_by_the_proxy,
};

/// The namespace of this module's objects.
const NS: &str = "operator-e2e";

/// The manifests a platform team applies.
const MANIFESTS: &str = r#"apiVersion: v1
kind: Secret
metadata: {name: orders-db-creds, namespace: operator-e2e}
stringData: {username: gatehouse_app, password: not-the-real-one}
---
apiVersion: v1
kind: Secret
metadata: {name: gatehouse-recording, namespace: operator-e2e}
stringData:
  signing-key.pem: "not read by the operator, only checked for"
  access-key-id: e2e
  secret-access-key: e2e
---
apiVersion: gatehouse.dev/v1alpha1
kind: Connection
metadata: {name: orders-db, namespace: operator-e2e, labels: {env: prod}}
spec:
  type: postgres
  target: {host: orders.db.svc, port: 5432, database: orders, tls: {mode: require}}
  credentialsRef: {name: orders-db-creds}
---
apiVersion: gatehouse.dev/v1alpha1
kind: Policy
metadata: {name: agents-readonly, namespace: operator-e2e}
spec:
  connectionSelector: {matchLabels: {env: prod}}
  subjects: [{kind: Group, name: agents}]
  rules:
    - {name: reads, match: {operations: [select]}, action: allow}
---
apiVersion: gatehouse.dev/v1alpha1
kind: Policy
metadata: {name: staging-only, namespace: operator-e2e}
spec:
  connectionSelector: {matchLabels: {env: staging}}
  subjects: [{kind: Group, name: agents}]
  rules:
    - {name: everything, match: {operations: [insert]}, action: allow}
---
# An invalid Policy denies everything to its subjects on the Connections it
# selects: it gets a Connection of its own, so orders-db stays Ready.
apiVersion: gatehouse.dev/v1alpha1
kind: Connection
metadata: {name: sandbox-db, namespace: operator-e2e, labels: {env: sandbox}}
spec:
  type: postgres
  target: {host: sandbox.db.svc, port: 5432, database: sandbox, tls: {mode: require}}
  credentialsRef: {name: orders-db-creds}
---
apiVersion: gatehouse.dev/v1alpha1
kind: Policy
metadata: {name: broken-mask, namespace: operator-e2e}
spec:
  connectionSelector: {matchLabels: {env: sandbox}}
  subjects: [{kind: Group, name: agents}]
  rules:
    - {name: reads, match: {operations: [select]}, action: allow}
  masking:
    columns: [{name: "(unclosed", strategy: redact}]
"#;

/// The in-process operator, which a test may restart.
struct Operator {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

static OPERATOR: OnceCell<Mutex<Operator>> = OnceCell::const_new();

/// Tests that change objects in [`NS`] hold it shared; the restart test
/// holds it alone, so that what it compares changes only by the operator.
static QUIET: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn settings(env: &TestEnv) -> gatehouse_operator::Settings {
    gatehouse_operator::Settings {
        proxy: proxy_settings(env),
        // Finished requests go 2 s after they expire, so the test sees it.
        approval_retention: Duration::from_secs(2),
    }
}

fn proxy_settings(env: &TestEnv) -> ProxySettings {
    ProxySettings {
        image: "gatehouse-proxy:e2e".into(),
        recording_secret: "gatehouse-recording".into(),
        recording_s3: Some(RecordingS3 {
            bucket: gatehouse_e2e::s3::BUCKET.into(),
            endpoint: Some(env.s3.endpoint.clone()),
            region: gatehouse_e2e::s3::REGION.into(),
            path_style: true,
            prefix: "sessions".into(),
        }),
    }
}

async fn start_operator(env: &TestEnv) -> anyhow::Result<Operator> {
    // As its own account: the admission policy lets only it decide.
    let client = env.kube.operator_client().await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(gatehouse_operator::run(client, settings(env), async move {
        let _ = stopped.await;
    }));
    Ok(Operator {
        stop: Some(stop),
        task: Some(task),
    })
}

impl Operator {
    async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .context("the operator did not stop within 30 s")??;
        }
        Ok(())
    }
}

/// The namespace, the manifests applied, the operator running.
async fn operator(env: &TestEnv) -> anyhow::Result<&'static Mutex<Operator>> {
    OPERATOR
        .get_or_try_init(|| async {
            kubectl(env, &["create", "namespace", NS], None).await?;
            kubectl(env, &["apply", "--server-side", "-f", "-"], Some(MANIFESTS)).await?;
            anyhow::Ok(Mutex::new(start_operator(env).await?))
        })
        .await
}

/// `kubectl` as the admin.
async fn kubectl(env: &TestEnv, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    Ok(env.kube.kubectl_run(User::Admin, args, stdin).await?)
}

/// Waits up to 20 s for `check` to pass on the object `name`.
async fn eventually<K, T>(api: &Api<K>, name: &str, check: impl Fn(&K) -> Option<T>) -> anyhow::Result<T>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut last = None;
    for _ in 0..200 {
        if let Some(object) = api.get_opt(name).await? {
            if let Some(found) = check(&object) {
                return Ok(found);
            }
            last = Some(object);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{name} did not reach the expected state within 20 s; last seen: {last:#?}")
}

/// The Secret `gatehouse-recording` of namespace `ns` as YAML: the S3
/// credentials and the suite's signing key, which a recording proxy reads.
fn recording_secret(env: &TestEnv, ns: &str) -> anyhow::Result<String> {
    use ed25519_dalek::pkcs8::{EncodePrivateKey as _, spki::der::pem::LineEnding};
    let key = crate::recording::signing_key().to_pkcs8_pem(LineEnding::LF)?;
    let key: String = key.lines().map(|l| format!("    {l}\n")).collect();
    Ok(format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: gatehouse-recording, namespace: {ns}}}\nstringData:\n  \
         access-key-id: \"{access}\"\n  secret-access-key: \"{secret}\"\n  signing-key.pem: |\n{key}",
        access = env.s3.access_key,
        secret = env.s3.secret_key,
    ))
}

/// Applies `manifests` as the admin, then plays the kubelet for Connection
/// `connection` of `ns`: waits for its proxy Deployment, runs the proxy as
/// the Deployment says, and waits until the Connection is Ready.
async fn apply_and_serve(env: &TestEnv, ns: &str, connection: &str, manifests: &str) -> anyhow::Result<Pod> {
    kubectl(env, &["apply", "--server-side", "-f", "-"], Some(manifests)).await?;
    let client = env.kube.client(User::Admin).await?;
    let proxy = format!("gatehouse-{connection}");
    eventually(&Api::<Deployment>::namespaced(client.clone(), ns), &proxy, |_| {
        Some(())
    })
    .await?;
    let pod = gatehouse_e2e::kubelet::run_deployment(env, ns, &proxy).await?;
    eventually(&Api::<Connection>::namespaced(client, ns), connection, |c| {
        condition(&c.status.as_ref()?.conditions, "Ready")
            .filter(|r| r.status == "True")
            .map(|_| ())
    })
    .await?;
    Ok(pod)
}

fn condition<'a>(conditions: &'a [Condition], kind: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == kind)
}

fn api<K>(env: &TestEnv, client: &kube::Client) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    let _ = env;
    Api::namespaced(client.clone(), NS)
}

/// The kubelet's part: the proxy Deployment reports its replicas available.
async fn report_available(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let status = serde_json::json!({"status": {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 1}});
    deployments
        .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await?;
    Ok(())
}

pub async fn a_connection_gets_its_proxy_children_and_a_ready_status(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    let _changing = QUIET.read().await;
    operator(&env).await?;
    let client = env.kube.client(User::Admin).await?;
    let connections: Api<Connection> = api(&env, &client);
    // Children, named after the Connection and owned by it.
    let config: Api<ConfigMap> = api(&env, &client);
    let rendered = eventually(&config, "gatehouse-orders-db", |cm| {
        cm.data.as_ref()?.get("config.yaml").cloned()
    })
    .await?;
    ensure!(
        rendered.contains("name: agents-readonly")
            && !rendered.contains("broken-mask")
            && !rendered.contains("staging-only"),
        "the selected, valid Policies only:\n{rendered}"
    );
    ensure!(
        !rendered.contains("not-the-real-one"),
        "no secret in the ConfigMap"
    );
    let owner = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        meta.owner_references.as_ref().is_some_and(|o| {
            o.iter()
                .any(|o| o.kind == "Connection" && o.name == "orders-db" && o.controller == Some(true))
        })
    };
    let sa: Api<ServiceAccount> = api(&env, &client);
    ensure!(owner(&sa.get("gatehouse-orders-db").await?.metadata));
    let role: Role = api(&env, &client).get("gatehouse-orders-db").await?;
    ensure!(owner(&role.metadata));
    let secrets_rule = role
        .rules
        .unwrap_or_default()
        .into_iter()
        .find(|r| r.resources.as_deref() == Some(&["secrets".to_owned()]))
        .context("a rule for Secrets")?;
    ensure!(
        secrets_rule.resource_names
            == Some(vec![
                "gatehouse-recording".to_owned(),
                "orders-db-creds".to_owned()
            ]),
        "the proxy reads its own Secrets only: {secrets_rule:?}"
    );
    let binding: RoleBinding = api(&env, &client).get("gatehouse-orders-db").await?;
    ensure!(owner(&binding.metadata));
    let delegator: ClusterRoleBinding = Api::all(client.clone())
        .get("gatehouse-operator-e2e-orders-db-auth-delegator")
        .await?;
    ensure!(delegator.role_ref.name == "system:auth-delegator");
    let service: Service = api(&env, &client).get("orders-db").await?;
    ensure!(owner(&service.metadata));
    let deployments: Api<Deployment> = api(&env, &client);
    let deployment = eventually(&deployments, "gatehouse-orders-db", |d| Some(d.clone())).await?;
    ensure!(owner(&deployment.metadata));
    let pod = deployment
        .spec
        .and_then(|s| s.template.spec)
        .context("a pod template")?;
    ensure!(pod.service_account_name.as_deref() == Some("gatehouse-orders-db"));
    let args = pod.containers[0].args.clone().unwrap_or_default();
    ensure!(
        args.windows(2)
            .any(|w| w == ["--config-map", "gatehouse-orders-db"]),
        "the proxy reads its ConfigMap: {args:?}"
    );

    // Not available until a proxy runs.
    let pending = eventually(&connections, "orders-db", |c| {
        let status = c.status.as_ref()?;
        let available = condition(&status.conditions, "ProxyAvailable")?;
        (available.status == "False").then(|| status.clone())
    })
    .await?;
    ensure!(pending.endpoint.as_deref() == Some("orders-db.operator-e2e.svc:5432"));
    ensure!(pending.policies == ["agents-readonly"], "{:?}", pending.policies);
    for kind in ["CredentialsResolved", "ConfigRendered"] {
        ensure!(
            condition(&pending.conditions, kind).is_some_and(|c| c.status == "True"),
            "{kind}: {:?}",
            pending.conditions
        );
    }
    report_available(&client, "gatehouse-orders-db").await?;
    eventually(&connections, "orders-db", |c| {
        let status = c.status.as_ref()?;
        condition(&status.conditions, "Ready")
            .filter(|r| r.status == "True")
            .map(|_| ())
    })
    .await?;
    // A child edited or deleted by hand is set back.
    kubectl(
        &env,
        &[
            "patch",
            "configmap",
            "gatehouse-orders-db",
            "-n",
            NS,
            "--type=merge",
            "-p",
            r#"{"data":{"config.yaml":"tampered: true"}}"#,
        ],
        None,
    )
    .await?;
    kubectl(&env, &["delete", "service", "orders-db", "-n", NS], None).await?;
    eventually(&config, "gatehouse-orders-db", |cm| {
        let text = cm.data.as_ref()?.get("config.yaml")?;
        (text.contains("name: agents-readonly") && !text.contains("tampered")).then_some(())
    })
    .await?;
    let services: Api<Service> = api(&env, &client);
    eventually(&services, "orders-db", |_| Some(())).await?;
    // The printer columns show it.
    let listed = kubectl(&env, &["get", "gconn", "-n", NS, "orders-db"], None).await?;
    ensure!(
        listed.contains("orders-db.operator-e2e.svc:5432") && listed.contains("True"),
        "{listed}"
    );
    Ok(())
}

pub async fn an_invalid_policy_is_reported_on_itself_and_on_the_connections_it_selects(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    operator(&env).await?;
    let client = env.kube.client(User::Admin).await?;
    let policies: Api<Policy> = api(&env, &client);
    let broken = eventually(&policies, "broken-mask", |p| {
        let status = p.status.as_ref()?;
        condition(&status.conditions, "Ready").map(|c| (c.clone(), status.matched_connections.clone()))
    })
    .await?;
    ensure!(
        broken.0.status == "False" && broken.0.reason == "Invalid",
        "{broken:?}"
    );
    ensure!(
        broken
            .0
            .message
            .contains("masking.columns[0].name is not a valid regular expression")
            && broken
                .0
                .message
                .contains("denies everything to the callers it names"),
        "the message says what to fix and what it does meanwhile: {}",
        broken.0.message
    );
    // Applied, as a deny, where it selects.
    ensure!(broken.1 == ["sandbox-db"], "{:?}", broken.1);
    let connections: Api<Connection> = api(&env, &client);
    let sandbox = eventually(&connections, "sandbox-db", |c| {
        let status = c.status.as_ref()?;
        let valid = condition(&status.conditions, "PoliciesValid")?.clone();
        let ready = condition(&status.conditions, "Ready")?.clone();
        Some((valid, ready, status.policies.clone()))
    })
    .await?;
    ensure!(
        sandbox.0.status == "False"
            && sandbox.0.reason == "PolicyInvalid"
            && sandbox.0.message.contains("Policy broken-mask is invalid")
            && sandbox.0.message.contains("not a valid regular expression")
            && sandbox
                .0
                .message
                .contains("denied everything on this Connection until it is fixed"),
        "{:?}",
        sandbox.0
    );
    ensure!(
        sandbox.1.status == "False" && sandbox.1.reason == "PolicyInvalid",
        "{:?}",
        sandbox.1
    );
    ensure!(sandbox.2 == ["broken-mask"], "{:?}", sandbox.2);
    let config: Api<ConfigMap> = api(&env, &client);
    let rendered = eventually(&config, "gatehouse-sandbox-db", |cm| {
        cm.data.as_ref()?.get("config.yaml").cloned()
    })
    .await?;
    ensure!(
        rendered.contains("name: broken-mask"),
        "rendered for the proxy to deny with:\n{rendered}"
    );
    let good = eventually(&policies, "agents-readonly", |p| {
        let status = p.status.as_ref()?;
        condition(&status.conditions, "Ready")
            .filter(|c| c.status == "True")
            .map(|_| status.matched_connections.clone())
    })
    .await?;
    ensure!(good == ["orders-db"], "{good:?}");
    let orders = eventually(&connections, "orders-db", |c| {
        condition(&c.status.as_ref()?.conditions, "PoliciesValid").cloned()
    })
    .await?;
    ensure!(orders.status == "True", "{orders:?}");
    let staging = eventually(&policies, "staging-only", |p| {
        let status = p.status.as_ref()?;
        condition(&status.conditions, "Ready").map(|_| status.matched_connections.clone())
    })
    .await?;
    ensure!(staging.is_empty(), "selects no Connection: {staging:?}");
    Ok(())
}

/// The namespace where an invalid Policy meets a real proxy.
const INVALID: &str = "operator-invalid";
/// Its database role and password.
const INVALID_ROLE: &str = "invalid_app";
const INVALID_PASSWORD: &str = "invalid-3e8a";

/// The SQLSTATE, message and hint of a failed statement.
fn refusal(error: &tokio_postgres::Error) -> (String, String, String) {
    error.as_db_error().map_or_else(
        || (String::new(), error.to_string(), String::new()),
        |e| {
            (
                e.code().code().to_owned(),
                e.message().to_owned(),
                e.hint().unwrap_or_default().to_owned(),
            )
        },
    )
}

pub async fn an_invalid_policy_denies_its_subjects_through_the_proxy_until_fixed(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    operator(&env).await?;
    // The fix needs the operator: its restart test waits for this one.
    let _operator_up = QUIET.read().await;
    let superuser = env.postgres.superuser(gatehouse_e2e::postgres::DATABASE).await?;
    superuser
        .batch_execute(&format!(
            "CREATE ROLE {INVALID_ROLE} LOGIN PASSWORD '{INVALID_PASSWORD}'; GRANT SELECT ON ALL TABLES IN SCHEMA public TO {INVALID_ROLE};"
        ))
        .await?;
    // The planner and a reporter may do everything; the planner's writes
    // are to be denied by a second Policy.
    let manifests = format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: {INVALID}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: planner, namespace: {INVALID}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: reporter, namespace: {INVALID}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: invalid-db-creds, namespace: {INVALID}}}
stringData: {{username: {INVALID_ROLE}, password: "{INVALID_PASSWORD}"}}
---
{recording}---
apiVersion: gatehouse.dev/v1alpha1
kind: Connection
metadata: {{name: invalid-db, namespace: {INVALID}, labels: {{env: invalid}}}}
spec:
  type: postgres
  target: {{host: 127.0.0.1, port: {port}, database: {database}, tls: {{mode: disable}}}}
  credentialsRef: {{name: invalid-db-creds}}
---
apiVersion: gatehouse.dev/v1alpha1
kind: Policy
metadata: {{name: agents-everything, namespace: {INVALID}}}
spec:
  connectionSelector: {{matchLabels: {{env: invalid}}}}
  subjects:
    - {{kind: ServiceAccount, name: planner, namespace: {INVALID}}}
    - {{kind: ServiceAccount, name: reporter, namespace: {INVALID}}}
  rules:
    - {{name: everything, action: allow}}
"#,
        recording = recording_secret(&env, INVALID)?,
        port = env.postgres.port,
        database = gatehouse_e2e::postgres::DATABASE,
    );
    // The API server takes the pattern (its CEL checks the length only);
    // the proxy's regular expression compiler does not.
    let guarded = |pattern: &str| {
        format!(
            r#"apiVersion: gatehouse.dev/v1alpha1
kind: Policy
metadata: {{name: writes-guarded, namespace: {INVALID}}}
spec:
  connectionSelector: {{matchLabels: {{env: invalid}}}}
  subjects: [{{kind: ServiceAccount, name: planner, namespace: {INVALID}}}]
  rules:
    - {{name: writes, match: {{operations: [insert, update, delete, merge, truncate]}}, action: deny}}
  masking:
    columns: [{{name: "{pattern}", strategy: redact}}]
"#
        )
    };
    let pod = apply_and_serve(&env, INVALID, "invalid-db", &manifests).await?;
    let port = pod.port("postgres")?;
    let admin = pod.port("admin")?;
    let client = env.kube.client(User::Admin).await?;
    let connections: Api<Connection> = Api::namespaced(client.clone(), INVALID);
    let policies: Api<Policy> = Api::namespaced(client.clone(), INVALID);
    let planner_token = env.kube.gateway_token(INVALID, "planner").await?;
    let reporter_token = env.kube.gateway_token(INVALID, "reporter").await?;
    let planner = agent(port, &planner_token).await?;
    planner
        .simple_query("SELECT count(*) FROM orders")
        .await
        .context("the broad Policy lets the planner read")?;

    // A restrictive Policy with a typo arrives: the proxy loads it, and
    // until it is fixed the planner may do nothing at all.
    kubectl(
        &env,
        &["apply", "--server-side", "-f", "-"],
        Some(&guarded("(unclosed")),
    )
    .await?;
    ensure!(
        within_10s(|| async { planner.simple_query("SELECT count(*) FROM orders").await.is_err() }).await,
        "the planner still reads 10 s after an invalid Policy named it"
    );
    for sql in [
        "SELECT count(*) FROM orders",
        "UPDATE orders SET status = status WHERE false",
    ] {
        let error = planner
            .simple_query(sql)
            .await
            .err()
            .with_context(|| format!("{sql} ran"))?;
        let (code, message, hint) = refusal(&error);
        ensure!(code == "42501", "{sql}: {code} {message}");
        ensure!(
            message.contains(r#"Policy "writes-guarded""#),
            "{sql}: the refusal names the Policy: {message}"
        );
        ensure!(
            hint.contains("not a valid regular expression") && hint.contains("until it is fixed"),
            "{sql}: the hint says why and for how long: {hint}"
        );
    }
    // The reporter is not named by it.
    let reporter = agent(port, &reporter_token).await?;
    reporter
        .simple_query("SELECT count(*) FROM orders")
        .await
        .context("an invalid Policy refused a caller it does not name")?;
    let connection = eventually(&connections, "invalid-db", |c| {
        let status = c.status.as_ref()?;
        let valid = condition(&status.conditions, "PoliciesValid").filter(|v| v.status == "False")?;
        let ready = condition(&status.conditions, "Ready")?;
        Some((valid.clone(), ready.clone()))
    })
    .await?;
    ensure!(
        connection.0.reason == "PolicyInvalid"
            && connection.0.message.contains("Policy writes-guarded is invalid")
            && connection.0.message.contains("not a valid regular expression"),
        "{:?}",
        connection.0
    );
    ensure!(
        connection.1.status == "False" && connection.1.reason == "PolicyInvalid",
        "{:?}",
        connection.1
    );
    let matched = eventually(&policies, "writes-guarded", |p| {
        let status = p.status.as_ref()?;
        condition(&status.conditions, "Ready")
            .filter(|c| c.reason == "Invalid")
            .map(|_| status.matched_connections.clone())
    })
    .await?;
    ensure!(matched == ["invalid-db"], "{matched:?}");
    let scrape = crate::ops::Scrape::from_admin(admin).await?;
    ensure!(
        scrape.value("gatehouse_policies_invalid")? == 1.0,
        "the proxy counts the invalid Policy"
    );

    // Fixed: the planner reads again on the same session, and its writes
    // meet the rule as written.
    kubectl(
        &env,
        &["apply", "--server-side", "-f", "-"],
        Some(&guarded("^secret$")),
    )
    .await?;
    ensure!(
        within_10s(|| async { planner.simple_query("SELECT count(*) FROM orders").await.is_ok() }).await,
        "the fixed Policy still denied the planner's reads after 10 s"
    );
    let error = planner
        .simple_query("UPDATE orders SET status = status WHERE false")
        .await
        .err()
        .context("the fixed Policy let a write run")?;
    let (code, message, _) = refusal(&error);
    ensure!(
        code == "42501" && message.contains(r#"Policy "writes-guarded", rule "writes""#),
        "{code} {message}"
    );
    eventually(&connections, "invalid-db", |c| {
        let status = c.status.as_ref()?;
        let valid = condition(&status.conditions, "PoliciesValid")?;
        let ready = condition(&status.conditions, "Ready")?;
        (valid.status == "True" && ready.status == "True").then_some(())
    })
    .await?;
    eventually(&policies, "writes-guarded", |p| {
        condition(&p.status.as_ref()?.conditions, "Ready")
            .filter(|c| c.status == "True")
            .map(|_| ())
    })
    .await?;
    let scrape = crate::ops::Scrape::from_admin(admin).await?;
    ensure!(scrape.value("gatehouse_policies_invalid")? == 0.0);
    drop(pod);
    Ok(())
}

pub async fn a_missing_secret_or_key_is_named_no_proxy_is_deployed_and_deletion_cleans_up(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    let _changing = QUIET.read().await;
    operator(&env).await?;
    let client = env.kube.client(User::Admin).await?;
    kubectl(
        &env,
        &["apply", "--server-side", "-f", "-"],
        Some(
            r#"apiVersion: gatehouse.dev/v1alpha1
kind: Connection
metadata: {name: lost-db, namespace: operator-e2e}
spec:
  type: postgres
  target: {host: lost.db.svc, database: lost}
  credentialsRef: {name: lost-db-creds}
"#,
        ),
    )
    .await?;
    let connections: Api<Connection> = api(&env, &client);
    let credentials = |c: &Connection| {
        let status = c.status.as_ref()?;
        condition(&status.conditions, "CredentialsResolved").cloned()
    };
    let missing = eventually(&connections, "lost-db", credentials).await?;
    ensure!(
        missing.status == "False"
            && missing.reason == "SecretNotFound"
            && missing.message.contains("Secret operator-e2e/lost-db-creds")
            && missing.message.contains("username, password"),
        "{missing:?}"
    );
    let deployments: Api<Deployment> = api(&env, &client);
    ensure!(
        deployments.get_opt("gatehouse-lost-db").await?.is_none(),
        "no proxy without its credential"
    );
    let ready = connections
        .get("lost-db")
        .await?
        .status
        .and_then(|s| condition(&s.conditions, "Ready").cloned())
        .context("Ready")?;
    ensure!(
        ready.status == "False" && ready.reason == "SecretNotFound",
        "{ready:?}"
    );

    // The Secret appears without its password: the key is named.
    kubectl(
        &env,
        &[
            "create",
            "secret",
            "generic",
            "lost-db-creds",
            "-n",
            NS,
            "--from-literal=username=app",
        ],
        None,
    )
    .await?;
    let keys = eventually(&connections, "lost-db", |c| {
        credentials(c).filter(|c| c.reason == "SecretKeysMissing")
    })
    .await?;
    ensure!(keys.message.contains("has no password"), "{keys:?}");
    ensure!(deployments.get_opt("gatehouse-lost-db").await?.is_none());

    // Deleted: its cluster-wide binding, which nothing owns, goes with it.
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let binding = "gatehouse-operator-e2e-lost-db-auth-delegator";
    ensure!(
        bindings.get_opt(binding).await?.is_some(),
        "the binding exists while the Connection does"
    );
    kubectl(
        &env,
        &[
            "delete",
            "connection",
            "lost-db",
            "-n",
            NS,
            "--wait=true",
            "--timeout=20s",
        ],
        None,
    )
    .await?;
    ensure!(connections.get_opt("lost-db").await?.is_none());
    ensure!(
        bindings.get_opt(binding).await?.is_none(),
        "the auth-delegator binding outlived its Connection"
    );
    Ok(())
}

/// Every resourceVersion of the operator's objects in the namespace.
pub async fn a_name_someone_else_holds_is_reported_and_left_alone(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let _changing = QUIET.read().await;
    operator(&env).await?;
    let client = env.kube.client(User::Admin).await?;
    let connection = |name: &str| {
        format!(
            "apiVersion: gatehouse.dev/v1alpha1
kind: Connection
metadata: {{name: {name}, namespace: {NS}}}
spec:
  type: postgres
  target: {{host: taken.db.svc, database: taken}}
  credentialsRef: {{name: orders-db-creds}}
"
        )
    };
    let connections: Api<Connection> = api(&env, &client);
    let taken = |what: &'static str| {
        move |c: &Connection| {
            let ready = condition(&c.status.as_ref()?.conditions, "Ready")?;
            (ready.status == "False" && ready.reason == "NameTaken" && ready.message.contains(what))
                .then(|| ready.message.clone())
        }
    };
    let delete = |name: &'static str| {
        let env = env.clone();
        async move {
            kubectl(
                &env,
                &[
                    "delete",
                    "connection",
                    name,
                    "-n",
                    NS,
                    "--wait=true",
                    "--timeout=20s",
                ],
                None,
            )
            .await
        }
    };
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let deployments: Api<Deployment> = api(&env, &client);

    // Someone else's ClusterRoleBinding holds the name the proxy's needs.
    let binding = "gatehouse-operator-e2e-taken-db-auth-delegator";
    kubectl(
        &env,
        &[
            "create",
            "clusterrolebinding",
            binding,
            "--clusterrole=view",
            "--user=carol",
        ],
        None,
    )
    .await?;
    kubectl(
        &env,
        &["apply", "--server-side", "-f", "-"],
        Some(&connection("taken-db")),
    )
    .await?;
    let message = eventually(&connections, "taken-db", taken("ClusterRoleBinding")).await?;
    ensure!(
        message.contains(&format!("ClusterRoleBinding {binding} already exists"))
            && message.contains("give the Connection another name"),
        "{message}"
    );
    let theirs = bindings.get(binding).await?;
    ensure!(
        theirs.role_ref.name == "view",
        "their binding is left as it was: {theirs:?}"
    );
    ensure!(
        deployments.get_opt("gatehouse-taken-db").await?.is_none(),
        "no proxy without its permissions"
    );
    // The Connection deleted, the binding it never made stays.
    delete("taken-db").await?;
    ensure!(
        bindings.get_opt(binding).await?.is_some(),
        "the finalizer deleted someone else's ClusterRoleBinding"
    );
    kubectl(&env, &["delete", "clusterrolebinding", binding], None).await?;

    // Someone else's Service holds a Connection's name.
    kubectl(
        &env,
        &[
            "create",
            "service",
            "clusterip",
            "taken-svc",
            "--tcp=80:8080",
            "-n",
            NS,
        ],
        None,
    )
    .await?;
    kubectl(
        &env,
        &["apply", "--server-side", "-f", "-"],
        Some(&connection("taken-svc")),
    )
    .await?;
    let message = eventually(&connections, "taken-svc", taken("Service")).await?;
    ensure!(
        message.contains("Service operator-e2e/taken-svc already exists"),
        "{message}"
    );
    let services: Api<Service> = api(&env, &client);
    let theirs = services.get("taken-svc").await?;
    ensure!(
        theirs.metadata.owner_references.is_none()
            && theirs
                .spec
                .as_ref()
                .and_then(|s| s.ports.as_ref())
                .is_some_and(|p| p.len() == 1 && p[0].port == 80),
        "their Service is left as it was: {theirs:?}"
    );
    ensure!(deployments.get_opt("gatehouse-taken-svc").await?.is_none());

    // The name freed, the Connection gets its children without a change of its own.
    kubectl(&env, &["delete", "service", "taken-svc", "-n", NS], None).await?;
    eventually(&deployments, "gatehouse-taken-svc", |_| Some(())).await?;
    let uid = connections.get("taken-svc").await?.metadata.uid;
    let ours = services.get("taken-svc").await?;
    ensure!(
        ours.metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| Some(&o.uid) == uid.as_ref()),
        "the Service is the Connection's now: {ours:?}"
    );
    delete("taken-svc").await?;
    ensure!(
        bindings
            .get_opt("gatehouse-operator-e2e-taken-svc-auth-delegator")
            .await?
            .is_none(),
        "the binding it made goes with it"
    );
    Ok(())
}

async fn versions(client: &kube::Client) -> anyhow::Result<BTreeMap<String, String>> {
    async fn of<K>(
        client: &kube::Client,
        kind: &str,
        out: &mut BTreeMap<String, String>,
    ) -> anyhow::Result<()>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let api: Api<K> = Api::namespaced(client.clone(), NS);
        for object in api.list(&Default::default()).await? {
            let meta = object.meta();
            out.insert(
                format!("{kind}/{}", meta.name.clone().unwrap_or_default()),
                meta.resource_version.clone().unwrap_or_default(),
            );
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    of::<Connection>(client, "Connection", &mut out).await?;
    of::<Policy>(client, "Policy", &mut out).await?;
    of::<ConfigMap>(client, "ConfigMap", &mut out).await?;
    of::<Deployment>(client, "Deployment", &mut out).await?;
    of::<Service>(client, "Service", &mut out).await?;
    of::<ServiceAccount>(client, "ServiceAccount", &mut out).await?;
    of::<Role>(client, "Role", &mut out).await?;
    of::<RoleBinding>(client, "RoleBinding", &mut out).await?;
    Ok(out)
}

pub async fn a_restarted_operator_changes_nothing_and_gitops_sees_no_diff(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    let _alone = QUIET.write().await;
    let operator = operator(&env).await?;
    let client = env.kube.client(User::Admin).await?;
    let connections: Api<Connection> = api(&env, &client);
    // Settled: the main Connection is Ready.
    let deployments: Api<Deployment> = api(&env, &client);
    eventually(&deployments, "gatehouse-orders-db", |_| Some(())).await?;
    report_available(&client, "gatehouse-orders-db").await?;
    eventually(&connections, "orders-db", |c| {
        condition(&c.status.as_ref()?.conditions, "Ready")
            .filter(|r| r.status == "True")
            .map(|_| ())
    })
    .await?;
    let mut operator = operator.lock().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = versions(&client).await?;
    operator.stop().await?;
    *operator = start_operator(&env).await?;
    // The new operator lists everything and reconciles every object once.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = versions(&client).await?;
    ensure!(
        before == after,
        "a restart changed objects:\nbefore {before:#?}\nafter {after:#?}"
    );
    // What GitOps applied is what is there.
    let diff = env
        .kube
        .kubectl(User::Admin)
        .args(["diff", "--server-side", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn();
    let mut diff = diff?;
    {
        use tokio::io::AsyncWriteExt as _;
        let mut input = diff.stdin.take().context("stdin")?;
        input.write_all(MANIFESTS.as_bytes()).await?;
    }
    let out = diff.wait_with_output().await?;
    ensure!(
        out.status.success(),
        "kubectl diff found changes:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

/// The namespace of the story: a Connection to the harness's PostgreSQL.
const STORY: &str = "operator-story";
/// The story's database role and its passwords before and after rotation.
const STORY_ROLE: &str = "story_app";
const FIRST_PASSWORD: &str = "story-first-5b1e";
const SECOND_PASSWORD: &str = "story-second-9c2d";

/// Whether `check` passes within 500 tries, 20 ms apart (10 s and more).
async fn within_10s<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..500 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Whether a new session through the proxy on `port` connects and reads.
async fn fresh_session_reads(port: u16, token: &str) -> bool {
    match agent(port, token).await {
        Ok(fresh) => fresh.simple_query("SELECT 1").await.is_ok(),
        Err(_) => false,
    }
}

async fn agent(port: u16, token: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("planner")
        .password(token)
        .dbname("orders")
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(connection);
    Ok(client)
}

pub async fn the_operators_proxy_serves_an_agent_follows_a_policy_edit_and_a_rotated_secret(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    operator(&env).await?;
    // A role of the story's own, so rotating its password leaves the rest of the suite alone.
    let superuser = env.postgres.superuser(gatehouse_e2e::postgres::DATABASE).await?;
    superuser
        .batch_execute(&format!(
            "CREATE ROLE {STORY_ROLE} LOGIN PASSWORD '{FIRST_PASSWORD}'; GRANT SELECT ON ALL TABLES IN SCHEMA public TO {STORY_ROLE};"
        ))
        .await?;
    let manifests = format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: {STORY}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: planner, namespace: {STORY}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: story-db-creds, namespace: {STORY}}}
stringData: {{username: {STORY_ROLE}, password: "{FIRST_PASSWORD}"}}
---
{recording}---
apiVersion: gatehouse.dev/v1alpha1
kind: Connection
metadata: {{name: story-db, namespace: {STORY}, labels: {{env: story}}}}
spec:
  type: postgres
  target: {{host: 127.0.0.1, port: {port}, database: {database}, tls: {{mode: disable}}}}
  credentialsRef: {{name: story-db-creds}}
---
apiVersion: gatehouse.dev/v1alpha1
kind: Policy
metadata: {{name: planner-reads, namespace: {STORY}}}
spec:
  connectionSelector: {{matchLabels: {{env: story}}}}
  subjects: [{{kind: ServiceAccount, name: planner, namespace: {STORY}}}]
  rules:
    - {{name: reads, match: {{operations: [select]}}, action: allow}}
  masking:
    detectors: [all]
    customDetectors:
      - {{name: acme-badge, regex: '\bBDG-[0-9]{{4}}-[A-Z]{{4}}\b', keywords: [bdg-]}}
"#,
        recording = recording_secret(&env, STORY)?,
        port = env.postgres.port,
        database = gatehouse_e2e::postgres::DATABASE,
    );
    // The harness plays the kubelet: the proxy runs as the Deployment says.
    let pod = apply_and_serve(&env, STORY, "story-db", &manifests).await?;
    let port = pod.port("postgres")?;

    let token = env.kube.gateway_token(STORY, "planner").await?;
    let session = agent(port, &token).await?;
    let who: String = session.query_one("SELECT current_user::text", &[]).await?.get(0);
    ensure!(who == STORY_ROLE, "the proxy injects its credential: {who}");
    // The Policy's own detector, checked by the API server and compiled
    // by the operator, masks in the proxy.
    let badge: String = session
        .query_one("SELECT 'badge BDG-4821-QXZW issued'::text", &[])
        .await?
        .get(0);
    ensure!(badge == "badge [masked:acme-badge] issued", "{badge}");
    ensure!(
        session
            .batch_execute("DELETE FROM orders WHERE false")
            .await
            .is_err(),
        "default deny: no rule allows a delete"
    );

    // A Policy edit reaches the open session through the operator and the ConfigMap watch.
    let started = std::time::Instant::now();
    kubectl(
        &env,
        &[
            "patch",
            "policy",
            "planner-reads",
            "-n",
            STORY,
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/rules/0/action","value":"deny"}]"#,
        ],
        None,
    )
    .await?;
    let mut refused = false;
    while started.elapsed() < Duration::from_secs(10) {
        if session.simple_query("SELECT 1").await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure!(refused, "the edited Policy was not enforced within 10 s");
    tracing::info!(elapsed = ?started.elapsed(), "policy edit enforced");
    // And back, for new sessions as well.
    kubectl(
        &env,
        &[
            "patch",
            "policy",
            "planner-reads",
            "-n",
            STORY,
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/rules/0/action","value":"allow"}]"#,
        ],
        None,
    )
    .await?;
    ensure!(
        within_10s(|| fresh_session_reads(port, &token)).await,
        "the restored Policy was not enforced within 10 s"
    );

    // Deleted, the Policy leaves the configuration: the open session is
    // back to default deny. Applied again, as GitOps would, it returns.
    kubectl(&env, &["delete", "policy", "planner-reads", "-n", STORY], None).await?;
    ensure!(
        within_10s(|| async { session.simple_query("SELECT 1").await.is_err() }).await,
        "the deleted Policy still allowed reads after 10 s"
    );
    kubectl(&env, &["apply", "--server-side", "-f", "-"], Some(&manifests)).await?;
    ensure!(
        within_10s(|| async { session.simple_query("SELECT 1").await.is_ok() }).await,
        "the Policy applied again was not enforced within 10 s"
    );

    // The credential rotates: the database password changes and the Secret
    // follows. Open sessions go on; new ones use the new password.
    superuser
        .batch_execute(&format!("ALTER ROLE {STORY_ROLE} PASSWORD '{SECOND_PASSWORD}'"))
        .await?;
    kubectl(
        &env,
        &[
            "patch",
            "secret",
            "story-db-creds",
            "-n",
            STORY,
            "--type=merge",
            "-p",
            &format!(r#"{{"stringData":{{"password":"{SECOND_PASSWORD}"}}}}"#),
        ],
        None,
    )
    .await?;
    ensure!(
        within_10s(|| fresh_session_reads(port, &token)).await,
        "no new session with the rotated credential within 10 s"
    );
    ensure!(
        session.simple_query("SELECT 2").await.is_ok(),
        "the session opened before the rotation goes on"
    );
    drop(pod);
    Ok(())
}

/// An ApprovalRequest the proxy of `orders-db` holds in the admission tests'
/// namespace shape, expiring `expires_in` from now.
fn held(name: &str, required: i32, expires_in: Duration) -> serde_json::Value {
    let mut request = crate::admission::request(
        name,
        "system:serviceaccount:agents:planner",
        serde_json::json!({"groups": ["dba"], "required": required}),
    );
    let expires = k8s_openapi::jiff::Timestamp::now()
        + k8s_openapi::jiff::SignedDuration::try_from(expires_in).unwrap_or_default();
    request["spec"]["expiresAt"] = serde_json::Value::String(
        expires
            .round(k8s_openapi::jiff::Unit::Second)
            .unwrap_or(expires)
            .to_string(),
    );
    request
}

/// `user`'s review as a member of the approver group `dba`.
fn review(user: User, decision: &str, reason: &str) -> serde_json::Value {
    serde_json::json!({"user": user.name(), "groups": ["dba"], "decision": decision, "reason": reason})
}

pub async fn approval_requests_are_decided_expire_leave_events_and_go(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    operator(&env).await?;
    let ns = crate::admission::Namespace::new(&env, "approvals-e2e").await?;
    let client = env.kube.client(User::Admin).await?;
    let requests: Api<gatehouse_crds::ApprovalRequest> = Api::namespaced(client.clone(), &ns.name);
    let phase = |name: &'static str| {
        let requests = requests.clone();
        async move {
            eventually(&requests, name, |r| {
                let status = r.status.as_ref()?;
                Some((status.phase?, status.message.clone().unwrap_or_default()))
            })
            .await
        }
    };
    for (name, required) in [("approve-me", 2), ("deny-me", 1), ("let-me-lapse", 1)] {
        let lifetime = if name == "let-me-lapse" {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(600)
        };
        ns.held(&held(name, required, lifetime)).await?;
    }
    ensure!(phase("approve-me").await?.0 == gatehouse_crds::Phase::Pending);

    // N of M: two approvers.
    allowed(
        ns.review(
            User::Alice,
            "approve-me",
            &[review(User::Alice, "Approved", "ticket 812")],
        )
        .await?,
    )?;
    ensure!(
        phase("approve-me").await?.0 == gatehouse_crds::Phase::Pending,
        "one of two approvals"
    );
    allowed(
        ns.review(
            User::Bob,
            "approve-me",
            &[review(User::Bob, "Approved", "looks right")],
        )
        .await?,
    )?;
    let approved = eventually(&requests, "approve-me", |r| {
        let status = r.status.as_ref()?;
        (status.phase == Some(gatehouse_crds::Phase::Approved)).then(|| status.clone())
    })
    .await?;
    ensure!(
        approved.message.as_deref() == Some("approved by alice, bob")
            && approved.decided_by.as_deref() == Some("alice, bob"),
        "{approved:?}"
    );
    // A condition as CertificateRequest and CSR have, for the generation it describes.
    let condition = condition(&approved.conditions, "Approved").context("an Approved condition")?;
    ensure!(
        condition.status == "True"
            && condition.reason == "Reviewed"
            && condition.observed_generation.is_some(),
        "{condition:?}"
    );
    // `kubectl get gapr` shows who decided.
    let listed = kubectl(&env, &["get", "gapr", "approve-me", "-n", &ns.name], None).await?;
    ensure!(
        listed.contains("DECIDED BY") && listed.contains("alice, bob"),
        "{listed}"
    );

    allowed(
        ns.review(
            User::Alice,
            "deny-me",
            &[review(User::Alice, "Denied", "not during the freeze")],
        )
        .await?,
    )?;
    let denied = eventually(&requests, "deny-me", |r| {
        let status = r.status.as_ref()?;
        (status.phase == Some(gatehouse_crds::Phase::Denied)).then(|| status.message.clone())
    })
    .await?;
    ensure!(
        denied.as_deref() == Some("denied by alice: not during the freeze"),
        "{denied:?}"
    );

    let lapsed = eventually(&requests, "let-me-lapse", |r| {
        let status = r.status.as_ref()?;
        (status.phase == Some(gatehouse_crds::Phase::Expired)).then(|| status.message.clone())
    })
    .await?;
    ensure!(lapsed.is_some_and(|m| m.contains("expired at")), "expired");

    // Each decision is an Event on its request.
    let events = kubectl(&env, &["get", "events", "-n", &ns.name, "-o", "json"], None).await?;
    let events: serde_json::Value = serde_json::from_str(&events)?;
    let reasons: Vec<(String, String)> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["regarding"]["name"]
                    .as_str()
                    .or(e["involvedObject"]["name"].as_str())
                    .unwrap_or_default()
                    .to_owned(),
                e["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    for expected in [
        ("approve-me", "Approved"),
        ("deny-me", "Denied"),
        ("let-me-lapse", "Expired"),
    ] {
        ensure!(
            reasons.iter().any(|(n, r)| n == expected.0 && r == expected.1),
            "no {expected:?} Event in {reasons:?}"
        );
    }
    // Finished requests go after the retention (2 s past expiry here); the
    // approved one waits for its statement.
    let mut gone = false;
    for _ in 0..100 {
        if requests.get_opt("let-me-lapse").await?.is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(gone, "the expired request outlived its retention");
    ensure!(requests.get_opt("approve-me").await?.is_some());
    Ok(())
}

fn allowed(out: std::process::Output) -> anyhow::Result<()> {
    ensure!(
        out.status.success(),
        "refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
