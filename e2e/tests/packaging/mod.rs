//! How Gatehouse is installed: the Helm chart (`charts/gatehouse`), kustomize
//! (`config/default`) and the images (`*/Dockerfile`).
//!
//! helm lints and renders the chart; its operator Deployment carries the
//! values as flags; kustomize builds the same RBAC and Deployment; both
//! apply to the real API server; and the operator's ServiceAccount, with the
//! chart's rules and nothing else, applies what the operator renders for a
//! Connection (passing Kubernetes' escalation checks for the proxy's Role
//! and the auth-delegator binding), takes the Lease and records an Event,
//! while anything beyond its rules is refused.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};
use gatehouse_crds::{ApprovalRequest, Connection, Policy};
use gatehouse_e2e::{TestEnv, User, tools::Tools};
use gatehouse_operator::{
    FIELD_MANAGER, ProxySettings, RecordingS3,
    render::{self, Names},
};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Secret, Service, ServiceAccount},
    rbac::v1::{ClusterRoleBinding, Role, RoleBinding},
};
use kube::{
    Api, Resource,
    api::{ListParams, Patch, PatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use serde::{Deserialize as _, Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

use crate::repo;

/// The chart, relative to the repository root.
const CHART: &str = "charts/gatehouse";
/// Where the least-privilege test installs the operator's objects.
const HOME: &str = "packaging-rbac";
/// Where that test's operator account applies a Connection's children.
const TENANT: &str = "packaging-tenant";

/// Runs helm (built by `e2e/tools/build.sh`) in the repository root; fails
/// unless it exits 0. Returns stdout.
async fn helm(args: &[&str]) -> anyhow::Result<String> {
    let helm = Tools::get()?.path("helm");
    let out = tokio::process::Command::new(&helm)
        .args(args)
        .current_dir(repo())
        // helm keeps caches and settings under HOME; none are wanted here.
        .env("HELM_CACHE_HOME", std::env::temp_dir().join("gatehouse-e2e-helm"))
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("gatehouse-e2e-helm"),
        )
        .env("HELM_DATA_HOME", std::env::temp_dir().join("gatehouse-e2e-helm"))
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("run {}", helm.display()))?;
    ensure!(
        out.status.success(),
        "helm {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Runs kubectl as `user`, or with `kubeconfig` when given, feeding `stdin`;
/// fails unless it exits 0. Returns stdout.
async fn kubectl(
    env: &TestEnv,
    kubeconfig: Option<&Path>,
    args: &[&str],
    stdin: Option<&str>,
) -> anyhow::Result<String> {
    let mut command = env.kube.kubectl(User::Admin);
    if let Some(path) = kubeconfig {
        // The last --kubeconfig wins.
        command.arg("--kubeconfig").arg(path);
    }
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn()?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.unwrap_or_default().as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    ensure!(
        out.status.success(),
        "kubectl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Every object of a multi-document YAML stream (empty documents left out).
fn documents(yaml: &str) -> anyhow::Result<Vec<Value>> {
    let mut objects = Vec::new();
    for document in serde_norway::Deserializer::from_str(yaml) {
        let value = Value::deserialize(document).context("parse a rendered document")?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(objects)
}

/// The one object of `kind` named `name`.
fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> anyhow::Result<&'a Value> {
    let mut found = objects
        .iter()
        .filter(|o| o["kind"] == kind && o["metadata"]["name"] == name);
    let object = found
        .next()
        .with_context(|| format!("no {kind} {name} among {}", summary(objects)))?;
    ensure!(found.next().is_none(), "two {kind}s named {name}");
    Ok(object)
}

/// `Kind/name` of each object, for messages.
fn summary(objects: &[Value]) -> String {
    objects
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap_or("?"),
                o["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The strings of a JSON array.
fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The chart rendered by `helm template` as release `release` in `namespace`.
async fn template(release: &str, namespace: &str, extra: &[&str]) -> anyhow::Result<Vec<Value>> {
    let mut args = vec!["template", release, CHART, "--namespace", namespace];
    args.extend(extra);
    documents(&helm(&args).await?)
}

/// The operator container of a rendered Deployment.
fn operator_container(deployment: &Value) -> anyhow::Result<&Value> {
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .context("the Deployment has no containers")?;
    ensure!(containers.len() == 1, "one container: {containers:?}");
    Ok(&containers[0])
}

pub async fn the_chart_lints_and_renders_its_values_into_the_operators_flags(
    _env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    helm(&["lint", "--strict", CHART]).await?;

    // Default values: no S3, so no S3 flags; recordings stay in the pod.
    let objects = template("gatehouse", "gatehouse-system", &[]).await?;
    let kinds: BTreeSet<String> = objects
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap_or("?"),
                o["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    let expected: BTreeSet<String> = [
        "ServiceAccount/gatehouse-operator",
        "ClusterRole/gatehouse-operator",
        "ClusterRoleBinding/gatehouse-operator",
        "Role/gatehouse-operator-lease",
        "RoleBinding/gatehouse-operator-lease",
        "Deployment/gatehouse-operator",
        "Service/gatehouse-operator-metrics",
        "ClusterRole/gatehouse-approver",
        "ClusterRole/gatehouse-editor",
        "ClusterRole/gatehouse-viewer",
        "ValidatingAdmissionPolicy/gatehouse-approvalrequests",
        "ValidatingAdmissionPolicyBinding/gatehouse-approvalrequests",
    ]
    .map(str::to_owned)
    .into();
    ensure!(kinds == expected, "the chart renders {kinds:?}, not {expected:?}");
    let deployment = find(&objects, "Deployment", "gatehouse-operator")?;
    ensure!(deployment["metadata"]["namespace"] == "gatehouse-system");
    ensure!(deployment["spec"]["replicas"] == 2, "two replicas by default");
    let pod = &deployment["spec"]["template"]["spec"];
    ensure!(pod["serviceAccountName"] == "gatehouse-operator");
    ensure!(pod["securityContext"]["runAsNonRoot"] == true, "{pod}");
    let container = operator_container(deployment)?;
    ensure!(
        container["image"] == "gatehouse-dev/gatehouse-operator:0.1.0",
        "{container}"
    );
    ensure!(
        strings(&container["args"])
            == [
                "--proxy-image=gatehouse-dev/gatehouse-proxy:0.1.0",
                "--recording-secret=gatehouse-recording",
                "--approval-retention=24h",
                "--health-address=0.0.0.0:8081",
                "--lease-namespace=gatehouse-system",
                "--lease-name=gatehouse-operator",
            ],
        "default args: {}",
        container["args"]
    );
    let security = &container["securityContext"];
    ensure!(
        security["runAsNonRoot"] == true
            && security["readOnlyRootFilesystem"] == true
            && security["allowPrivilegeEscalation"] == false
            && strings(&security["capabilities"]["drop"]) == ["ALL"],
        "non-root, read-only root, no capabilities: {security}"
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        ensure!(get["path"] == path && get["port"] == "health", "{probe}: {get}");
    }
    let ports = container["ports"].as_array().context("ports")?;
    ensure!(
        ports
            .iter()
            .any(|p| p["name"] == "health" && p["containerPort"] == 8081),
        "the health port: {ports:?}"
    );
    ensure!(
        container["resources"]["limits"]["memory"] == "256Mi",
        "{container}"
    );
    let env_names: Vec<&str> = container["env"]
        .as_array()
        .context("env")?
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    ensure!(
        env_names.contains(&"POD_NAME"),
        "the Lease identity: {env_names:?}"
    );
    let service = find(&objects, "Service", "gatehouse-operator-metrics")?;
    ensure!(
        service["spec"]["ports"][0]["name"] == "metrics" && service["spec"]["ports"][0]["port"] == 8080,
        "{service}"
    );
    ensure!(
        service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"],
        "the Service selects the operator's pods"
    );

    // Every value that shapes the operator, set.
    let dir = tempfile::tempdir()?;
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        r#"operator:
  image: {repository: images.example.test/gatehouse-operator, tag: "1.2.3", pullPolicy: Always}
  replicas: 3
  leaseName: gatehouse-leader
  approvalRetention: 7d
  healthPort: 9444
  logLevel: gatehouse_operator=debug
  resources: {requests: {cpu: 200m, memory: 128Mi}, limits: {memory: 512Mi}}
  nodeSelector: {disk: ssd}
  tolerations: [{key: dedicated, operator: Equal, value: gatehouse, effect: NoSchedule}]
  affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: zone, operator: In, values: [a]}]}]}}}
  podSecurityContext: {runAsNonRoot: true, runAsUser: 10001, fsGroup: 10001}
proxy:
  image: {repository: images.example.test/gatehouse-proxy, tag: "1.2.3"}
recording:
  secretName: team-recording
  s3: {bucket: recordings, endpoint: "http://minio.storage.svc:9000", region: eu-west-1, pathStyle: true, prefix: sessions/prod}
serviceAccount: {name: gatehouse-controller}
rbac: {userRoles: false}
metrics: {service: {enabled: false}}
"#,
    )?;
    let values = values.to_str().context("path")?;
    helm(&["lint", "--strict", CHART, "--values", values]).await?;
    let objects = template("gh", "platform", &["--values", values]).await?;
    ensure!(
        !objects.iter().any(|o| o["kind"] == "Service")
            && !objects
                .iter()
                .any(|o| o["metadata"]["name"] == "gatehouse-approver"),
        "metrics.service.enabled and rbac.userRoles turn their objects off: {}",
        summary(&objects)
    );
    let deployment = find(&objects, "Deployment", "gh-gatehouse-operator")?;
    ensure!(deployment["metadata"]["namespace"] == "platform");
    ensure!(deployment["spec"]["replicas"] == 3);
    let container = operator_container(deployment)?;
    ensure!(
        container["image"] == "images.example.test/gatehouse-operator:1.2.3"
            && container["imagePullPolicy"] == "Always",
        "{container}"
    );
    ensure!(
        strings(&container["args"])
            == [
                "--proxy-image=images.example.test/gatehouse-proxy:1.2.3",
                "--recording-secret=team-recording",
                "--recording-s3-bucket=recordings",
                "--recording-s3-endpoint=http://minio.storage.svc:9000",
                "--recording-s3-region=eu-west-1",
                "--recording-s3-path-style",
                "--recording-s3-prefix=sessions/prod",
                "--approval-retention=7d",
                "--health-address=0.0.0.0:9444",
                "--lease-namespace=platform",
                "--lease-name=gatehouse-leader",
            ],
        "args with S3: {}",
        container["args"]
    );
    ensure!(
        container["ports"]
            .as_array()
            .is_some_and(|p| p.len() == 1 && p[0]["containerPort"] == 9444),
        "{}",
        container["ports"]
    );
    ensure!(
        container["env"].as_array().is_some_and(|e| e
            .iter()
            .any(|v| v["name"] == "RUST_LOG" && v["value"] == "gatehouse_operator=debug")),
        "{}",
        container["env"]
    );
    ensure!(container["resources"]["requests"]["cpu"] == "200m");
    let pod = &deployment["spec"]["template"]["spec"];
    ensure!(pod["nodeSelector"] == json!({"disk": "ssd"}), "{pod}");
    ensure!(pod["tolerations"][0]["key"] == "dedicated", "{pod}");
    ensure!(pod["affinity"]["nodeAffinity"].is_object(), "{pod}");
    ensure!(pod["securityContext"]["runAsUser"] == 10001, "{pod}");
    ensure!(pod["serviceAccountName"] == "gatehouse-controller", "{pod}");
    find(&objects, "ServiceAccount", "gatehouse-controller")?;
    let binding = find(&objects, "ClusterRoleBinding", "gh-gatehouse-operator")?;
    ensure!(
        binding["subjects"]
            == json!([{"kind": "ServiceAccount", "name": "gatehouse-controller", "namespace": "platform"}]),
        "{binding}"
    );
    // The Lease Role names the Lease the operator is told to take.
    let lease = find(&objects, "Role", "gh-gatehouse-operator-lease")?;
    ensure!(
        lease["rules"].as_array().is_some_and(|rules| rules
            .iter()
            .any(|r| strings(&r["resourceNames"]) == ["gatehouse-leader"])),
        "{lease}"
    );
    // An existing ServiceAccount must be named.
    let refused = helm(&["template", "x", CHART, "--set", "serviceAccount.create=false"]).await;
    ensure!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("serviceAccount.name is required")),
        "{refused:?}"
    );
    Ok(())
}

/// What RBAC and ServiceAccount objects say, by `Kind namespace/name`: their
/// rules, role references, subjects and aggregation labels.
fn rbac_of(objects: &[Value]) -> BTreeMap<String, Value> {
    objects
        .iter()
        .filter(|o| {
            ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount"]
                .contains(&o["kind"].as_str().unwrap_or_default())
        })
        .map(|o| {
            let labels: BTreeMap<String, Value> = o["metadata"]["labels"]
                .as_object()
                .map(|l| {
                    l.iter()
                        .filter(|(k, _)| k.starts_with("rbac.authorization.k8s.io/"))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default();
            (
                format!(
                    "{} {}/{}",
                    o["kind"].as_str().unwrap_or_default(),
                    o["metadata"]["namespace"].as_str().unwrap_or_default(),
                    o["metadata"]["name"].as_str().unwrap_or_default()
                ),
                json!({"rules": o["rules"], "roleRef": o["roleRef"], "subjects": o["subjects"], "labels": labels}),
            )
        })
        .collect()
}

pub async fn kustomize_builds_config_default_with_the_charts_rbac_and_deployment(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    let default = repo().join("config/default");
    let built = documents(
        &kubectl(
            &env,
            None,
            &["kustomize", default.to_str().context("path")?],
            None,
        )
        .await?,
    )?;
    let chart = template("gatehouse", "gatehouse-system", &["--include-crds"]).await?;

    // The same permissions, object for object and rule for rule.
    let (ours, theirs) = (rbac_of(&built), rbac_of(&chart));
    ensure!(
        ours.keys().collect::<Vec<_>>() == theirs.keys().collect::<Vec<_>>(),
        "kustomize has {:?}, the chart {:?}",
        ours.keys(),
        theirs.keys()
    );
    for (key, rbac) in &ours {
        ensure!(
            rbac == &theirs[key],
            "{key} differs:\nconfig/default: {rbac:#}\nchart: {:#}",
            theirs[key]
        );
    }
    let operator_role = &ours["ClusterRole /gatehouse-operator"];
    ensure!(
        operator_role["rules"]
            .as_array()
            .is_some_and(|rules| rules.iter().any(|r| r["verbs"] == json!(["bind"])
                && strings(&r["resourceNames"]) == ["system:auth-delegator"])),
        "bind on system:auth-delegator only: {operator_role}"
    );

    // The same operator Deployment and metrics Service.
    let (ours, theirs) = (
        find(&built, "Deployment", "gatehouse-operator")?,
        find(&chart, "Deployment", "gatehouse-operator")?,
    );
    for field in ["replicas", "selector", "template"] {
        let (mut a, mut b) = (ours["spec"][field].clone(), theirs["spec"][field].clone());
        // Pod labels: the chart's version label aside, the same.
        if field == "template" {
            a["metadata"]["labels"]
                .as_object_mut()
                .map(|l| l.remove("app.kubernetes.io/version"));
            b["metadata"]["labels"]
                .as_object_mut()
                .map(|l| l.remove("app.kubernetes.io/version"));
        }
        ensure!(
            a == b,
            "Deployment spec.{field} differs:\nconfig/default: {a:#}\nchart: {b:#}"
        );
    }
    ensure!(ours["metadata"]["namespace"] == "gatehouse-system");
    let (ours, theirs) = (
        find(&built, "Service", "gatehouse-operator-metrics")?,
        find(&chart, "Service", "gatehouse-operator-metrics")?,
    );
    ensure!(ours["spec"] == theirs["spec"], "the metrics Services differ");

    // The CRDs and the admission policy come along, as in the chart.
    for crd in [
        "connections.gatehouse.dev",
        "policies.gatehouse.dev",
        "approvalrequests.gatehouse.dev",
    ] {
        ensure!(
            find(&built, "CustomResourceDefinition", crd)?["spec"]
                == find(&chart, "CustomResourceDefinition", crd)?["spec"],
            "CRD {crd} differs"
        );
    }
    for kind in ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"] {
        let (ours, theirs) = (
            find(&built, kind, "gatehouse-approvalrequests")?,
            find(&chart, kind, "gatehouse-approvalrequests")?,
        );
        ensure!(ours["spec"] == theirs["spec"], "{kind} differs");
        ensure!(
            ours["metadata"].get("namespace").is_none(),
            "the cluster-scoped {kind} got a namespace"
        );
    }
    find(&built, "Namespace", "gatehouse-system")?;

    // And the API server takes all of it (the namespace must exist for a dry run).
    let _ = kubectl(&env, None, &["create", "namespace", "gatehouse-system"], None).await;
    let applied = kubectl(
        &env,
        None,
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "-k",
            default.to_str().context("path")?,
        ],
        None,
    )
    .await?;
    ensure!(
        applied.contains("deployment.apps/gatehouse-operator serverside-applied (server dry run)"),
        "{applied}"
    );
    Ok(())
}

/// The operator's templates (not the cluster-wide admission policy and
/// people's roles, which the suite installs itself) rendered as `release` in
/// `namespace`.
async fn render_operator(release: &str, namespace: &str) -> anyhow::Result<String> {
    helm(&[
        "template",
        release,
        CHART,
        "--namespace",
        namespace,
        "--show-only",
        "templates/operator-serviceaccount.yaml",
        "--show-only",
        "templates/operator-rbac.yaml",
        "--show-only",
        "templates/operator-deployment.yaml",
        "--show-only",
        "templates/operator-service.yaml",
    ])
    .await
}

/// Creates `namespace` and applies [`render_operator`] there as admin.
/// Returns the operator's name.
async fn install_operator(env: &TestEnv, release: &str, namespace: &str) -> anyhow::Result<String> {
    kubectl(env, None, &["create", "namespace", namespace], None).await?;
    let rendered = render_operator(release, namespace).await?;
    kubectl(env, None, &["apply", "--server-side", "-f", "-"], Some(&rendered)).await?;
    Ok(format!("{release}-gatehouse-operator"))
}

/// Removes the cluster-scoped objects of [`install_operator`].
async fn uninstall_operator(env: &TestEnv, operator: &str) -> anyhow::Result<()> {
    kubectl(
        env,
        None,
        &[
            "delete",
            "--ignore-not-found",
            &format!("clusterrolebinding/{operator}"),
            &format!("clusterrole/{operator}"),
        ],
        None,
    )
    .await
    .map(drop)
}

pub async fn the_rendered_chart_applies_to_the_api_server(env: Arc<TestEnv>) -> anyhow::Result<()> {
    // All of it, with S3, through the API server's validation and admission.
    let namespace = "packaging-dry";
    kubectl(&env, None, &["create", "namespace", namespace], None).await?;
    let rendered = helm(&[
        "template",
        "pack-dry",
        CHART,
        "--namespace",
        namespace,
        "--include-crds",
        "--set",
        "recording.s3.bucket=recordings,recording.s3.pathStyle=true,recording.s3.endpoint=http://s3.example.test:9000",
    ])
    .await?;
    let applied = kubectl(
        &env,
        None,
        // A dry run changes nothing, whoever applied these objects before.
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--dry-run=server",
            "-f",
            "-",
        ],
        Some(&rendered),
    )
    .await?;
    for object in [
        "customresourcedefinition.apiextensions.k8s.io/connections.gatehouse.dev",
        "clusterrole.rbac.authorization.k8s.io/pack-dry-gatehouse-operator",
        "validatingadmissionpolicy.admissionregistration.k8s.io/gatehouse-approvalrequests",
        "deployment.apps/pack-dry-gatehouse-operator",
        "role.rbac.authorization.k8s.io/pack-dry-gatehouse-operator-lease",
    ] {
        ensure!(
            applied.contains(&format!("{object} serverside-applied (server dry run)")),
            "{object} was not applied:\n{applied}"
        );
    }

    // The operator's objects, for real, in a namespace of their own.
    let operator = install_operator(&env, "pack-apply", "packaging-apply").await?;
    let result = async {
        let client = env.kube.client(User::Admin).await?;
        let deployment: Deployment = Api::namespaced(client.clone(), "packaging-apply")
            .get(&operator)
            .await?;
        let pod = deployment
            .spec
            .and_then(|s| s.template.spec)
            .context("a pod template")?;
        let container = pod.containers.first().context("a container")?;
        ensure!(
            container
                .args
                .as_ref()
                .is_some_and(|a| a.contains(&"--lease-namespace=packaging-apply".to_owned())),
            "{:?}",
            container.args
        );
        Api::<ServiceAccount>::namespaced(client.clone(), "packaging-apply")
            .get(&operator)
            .await?;
        Api::<Role>::namespaced(client.clone(), "packaging-apply")
            .get(&format!("{operator}-lease"))
            .await?;
        let binding: ClusterRoleBinding = Api::all(client.clone()).get(&operator).await?;
        ensure!(binding.role_ref.name == operator);
        // Applied again, nothing changes.
        let versions = || async {
            kubectl(
                &env,
                None,
                &[
                    "get",
                    "serviceaccount,clusterrole,clusterrolebinding,role,rolebinding,deployment,service",
                    "-n",
                    "packaging-apply",
                    "-l",
                    "app.kubernetes.io/instance=pack-apply",
                    "-o",
                    "jsonpath={.items[*].metadata.resourceVersion}",
                ],
                None,
            )
            .await
        };
        let before = versions().await?;
        ensure!(
            before.split(' ').count() == 7,
            "the release's seven objects: {before}"
        );
        let rendered = render_operator("pack-apply", "packaging-apply").await?;
        kubectl(
            &env,
            None,
            &["apply", "--server-side", "-f", "-"],
            Some(&rendered),
        )
        .await?;
        let after = versions().await?;
        ensure!(
            before == after,
            "a second apply changed objects ({before} → {after})"
        );
        anyhow::Ok(())
    }
    .await;
    uninstall_operator(&env, &operator).await?;
    result
}

/// The Connection the operator's account renders children for. It is never
/// stored: no running operator reconciles it, so every child is created by
/// the account under test.
fn tenant_connection(namespace: &str) -> anyhow::Result<Connection> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "gatehouse.dev/v1alpha1",
        "kind": "Connection",
        "metadata": {
            "name": "orders-db",
            "namespace": namespace,
            "uid": "6f1c2b8e-0d3a-4c55-9e21-7b0a9f3d5e10",
            "labels": {"env": "prod"},
        },
        "spec": {
            "type": "postgres",
            "target": {
                "host": "orders.db.svc",
                "port": 5432,
                "database": "orders",
                "tls": {"mode": "verify-full", "caSecretRef": {"name": "orders-db-ca"}},
            },
            "credentialsRef": {"name": "orders-db-creds"},
        },
    }))?)
}

/// Applies the namespaced `object` server-side as the operator does.
async fn apply_as<K>(client: &kube::Client, object: &K) -> anyhow::Result<()>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let meta = object.meta();
    let name = meta.name.clone().context("a name")?;
    let namespace = meta.namespace.clone().context("a namespace")?;
    Api::<K>::namespaced(client.clone(), &namespace)
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(object),
        )
        .await
        .with_context(|| format!("apply {} {namespace}/{name}", K::kind(&K::DynamicType::default())))?;
    Ok(())
}

/// Whether the API server refused `result` as forbidden, with `message`.
fn forbidden<T: std::fmt::Debug>(result: &kube::Result<T>, message: &str) -> bool {
    matches!(result, Err(kube::Error::Api(e)) if e.code == 403 && e.message.contains(message))
}

pub async fn the_operators_account_applies_a_connections_children_and_nothing_more(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    let operator = install_operator(&env, "pack-rbac", HOME).await?;
    let result = least_privilege(&env, &operator, HOME, TENANT).await;
    uninstall_operator(&env, &operator).await?;
    result
}

async fn least_privilege(env: &TestEnv, operator: &str, home: &str, tenant: &str) -> anyhow::Result<()> {
    kubectl(env, None, &["create", "namespace", tenant], None).await?;
    kubectl(
        env,
        None,
        &["apply", "--server-side", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: orders-db-creds, namespace: {tenant}}}\nstringData: {{username: app, password: not-the-real-one}}\n"
        )),
    )
    .await?;
    let token = kubectl(
        env,
        None,
        &["create", "token", operator, "-n", home, "--duration=1h"],
        None,
    )
    .await?;
    let kubeconfig = env.path().join(format!("kubeconfig-{home}-{operator}"));
    env.kube
        .write_token_kubeconfig(&kubeconfig, operator, &token, home)?;
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&kubeconfig)?,
        &KubeConfigOptions::default(),
    )
    .await?;
    let client = kube::Client::try_from(config)?;

    // What the operator applies for a Connection, as the operator applies it:
    // the Role grants the proxy its Secrets and ApprovalRequests, which the
    // API server allows only to an account that holds them itself, and the
    // binding to system:auth-delegator needs `bind` on that ClusterRole.
    let connection = tenant_connection(tenant)?;
    let names = Names::new(tenant, "orders-db");
    let settings = ProxySettings {
        image: "gatehouse-proxy:e2e".into(),
        recording_secret: "gatehouse-recording".into(),
        recording_s3: Some(RecordingS3 {
            bucket: "recordings".into(),
            endpoint: Some("http://s3.example.test:9000".into()),
            region: "us-east-1".into(),
            path_style: true,
            prefix: String::new(),
        }),
    };
    let config = gatehouse_operator::config::render(&connection, &names, &[], &settings)?;
    let role = render::role(&connection, &names, &settings);
    apply_as(&client, &render::service_account(&connection, &names)).await?;
    apply_as(&client, &role).await?;
    apply_as(&client, &render::role_binding(&connection, &names)).await?;
    let delegator = render::auth_delegator(&names);
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch(
            &names.auth_delegator,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&delegator),
        )
        .await
        .context("apply the auth-delegator ClusterRoleBinding")?;
    apply_as(&client, &render::service(&connection, &names)).await?;
    apply_as(&client, &render::config_map(&connection, &names, config)).await?;
    apply_as(&client, &render::deployment(&connection, &names, &settings)).await?;
    // Applied again (an update, checked for escalation again): still allowed.
    apply_as(&client, &role).await?;
    let admin = env.kube.client(User::Admin).await?;
    let stored: Role = Api::namespaced(admin.clone(), tenant).get(&names.proxy).await?;
    ensure!(
        stored.rules == role.rules,
        "the proxy's Role as rendered: {:?}",
        stored.rules
    );
    ensure!(
        stored
            .rules
            .iter()
            .flatten()
            .any(|r| r.resources.as_deref() == Some(&["secrets".to_owned()])
                && r.resource_names.as_ref().is_some_and(|n| n.len() == 3)),
        "the Role names the credential, CA and recording Secrets: {:?}",
        stored.rules
    );
    Api::<RoleBinding>::namespaced(admin.clone(), tenant)
        .get(&names.proxy)
        .await?;
    Api::<ConfigMap>::namespaced(admin.clone(), tenant)
        .get(&names.proxy)
        .await?;
    Api::<Service>::namespaced(admin.clone(), tenant)
        .get(&names.connection)
        .await?;

    // What the controllers read: the Deployment's availability, a Secret's
    // keys, Secrets' metadata and the Gatehouse kinds in every namespace.
    Api::<Deployment>::namespaced(client.clone(), tenant)
        .get(&names.proxy)
        .await?;
    let secret = Api::<Secret>::namespaced(client.clone(), tenant)
        .get("orders-db-creds")
        .await?;
    ensure!(secret.data.is_some_and(|d| d.contains_key("password")));
    Api::<Secret>::all(client.clone())
        .list_metadata(&ListParams::default().limit(1))
        .await?;
    Api::<Connection>::all(client.clone())
        .list(&ListParams::default().limit(1))
        .await?;
    Api::<Policy>::all(client.clone())
        .list(&ListParams::default().limit(1))
        .await?;
    Api::<ApprovalRequest>::all(client.clone())
        .list(&ListParams::default().limit(1))
        .await?;
    let labelled = ListParams::default().labels("app.kubernetes.io/managed-by=gatehouse-operator");
    ensure!(
        Api::<ServiceAccount>::all(client.clone())
            .list(&labelled)
            .await?
            .items
            .iter()
            .any(|sa| sa.metadata.name.as_deref() == Some(names.proxy.as_str())),
        "the operator lists the children it applied"
    );

    // An Event, as the ApprovalRequest controller records one.
    let deployment: Deployment = Api::namespaced(client.clone(), tenant).get(&names.proxy).await?;
    Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some("packaging-e2e".into()),
        },
    )
    .publish(
        &Event {
            type_: EventType::Normal,
            reason: "PackagingCheck".into(),
            note: Some("recorded by the chart's operator account".into()),
            action: "Review".into(),
            secondary: None,
        },
        &deployment.object_ref(&()),
    )
    .await
    .context("record an Event")?;
    let events = kubectl(
        env,
        None,
        &[
            "get",
            "events.events.k8s.io",
            "-n",
            tenant,
            "-o",
            "jsonpath={.items[*].reason}",
        ],
        None,
    )
    .await?;
    ensure!(events.contains("PackagingCheck"), "events: {events}");

    // The Lease the chart names, in the release's namespace.
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), "gatehouse-operator")
        .with_namespace(home)
        .with_parameters(
            kube_lease_manager::LeaseParams::new("packaging-e2e", 15, 5).with_field_manager(FIELD_MANAGER),
        )
        .build()
        .await?;
    let (mut leading, lease_task) = manager.watch().await;
    tokio::time::timeout(Duration::from_secs(20), leading.wait_for(|leading| *leading))
        .await
        .context("the operator's account did not take the Lease within 20 s")??;
    drop(leading);
    let _ = tokio::time::timeout(Duration::from_secs(10), lease_task).await;

    // What the rules grant and withhold, as the API server's authorizer says.
    let can = |args: Vec<String>| {
        let kubeconfig = kubeconfig.clone();
        async move {
            let out = env
                .kube
                .kubectl(User::Admin)
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(["auth", "can-i"])
                .args(&args)
                .output()
                .await?;
            let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            ensure!(
                answer == "yes" || answer == "no",
                "kubectl auth can-i {}: {answer} {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            anyhow::Ok(answer == "yes")
        }
    };
    let words = |s: &str| {
        s.replace("{tenant}", tenant)
            .replace("{home}", home)
            .split(' ')
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    for granted in [
        "watch connections.gatehouse.dev -A",
        "patch connections.gatehouse.dev -n {tenant}",
        "patch connections.gatehouse.dev --subresource=status -n {tenant}",
        "patch policies.gatehouse.dev --subresource=status -n {tenant}",
        "delete approvalrequests.gatehouse.dev -n {tenant}",
        "patch approvalrequests.gatehouse.dev --subresource=status -n {tenant}",
        "watch secrets -A",
        "delete clusterrolebindings.rbac.authorization.k8s.io",
        // Whether an object holding a child's name is the operator's.
        "get clusterrolebindings.rbac.authorization.k8s.io",
        "get services -n {tenant}",
        "get rolebindings.rbac.authorization.k8s.io -n {tenant}",
        "bind clusterroles.rbac.authorization.k8s.io/system:auth-delegator",
        "create events.events.k8s.io -n {tenant}",
        "patch leases.coordination.k8s.io/gatehouse-operator -n {home}",
    ] {
        ensure!(can(words(granted)).await?, "the operator may not {granted}");
    }
    for withheld in [
        "delete namespaces",
        "create secrets -n {tenant}",
        "patch secrets -n {tenant}",
        "delete secrets -n {tenant}",
        "get pods -n {tenant}",
        "create pods -n {tenant}",
        "delete deployments.apps -n {tenant}",
        "update connections.gatehouse.dev -n {tenant}",
        "delete connections.gatehouse.dev -n {tenant}",
        "patch approvalrequests.gatehouse.dev -n {tenant}",
        "create tokenreviews.authentication.k8s.io",
        "create clusterroles.rbac.authorization.k8s.io",
        "escalate roles.rbac.authorization.k8s.io -n {tenant}",
        "bind clusterroles.rbac.authorization.k8s.io/cluster-admin",
        "get leases.coordination.k8s.io/another-lease -n {home}",
        "create leases.coordination.k8s.io -n {tenant}",
        "patch leases.coordination.k8s.io/gatehouse-operator -n {tenant}",
    ] {
        ensure!(!can(words(withheld)).await?, "the operator may {withheld}");
    }

    // And the API server refuses what the rules do not cover: a Role that
    // grants more than the operator holds, a binding to another ClusterRole,
    // a Secret.
    let mut greedy = role.clone();
    greedy.metadata.name = Some("gatehouse-greedy".into());
    greedy.metadata.owner_references = None;
    if let Some(rules) = greedy.rules.as_mut() {
        rules.push(k8s_openapi::api::rbac::v1::PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["pods".into()]),
            verbs: vec!["get".into()],
            ..Default::default()
        });
    }
    let refused = Api::<Role>::namespaced(client.clone(), tenant)
        .patch(
            "gatehouse-greedy",
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&greedy),
        )
        .await;
    ensure!(
        forbidden(
            &refused,
            "attempting to grant RBAC permissions not currently held"
        ),
        "a Role granting pods: {refused:?}"
    );
    let mut admin_binding = render::auth_delegator(&names);
    admin_binding.metadata.name = Some("gatehouse-packaging-cluster-admin".into());
    admin_binding.role_ref.name = "cluster-admin".into();
    let refused = Api::<ClusterRoleBinding>::all(client.clone())
        .patch(
            "gatehouse-packaging-cluster-admin",
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&admin_binding),
        )
        .await;
    ensure!(
        forbidden(
            &refused,
            "attempting to grant RBAC permissions not currently held"
        ),
        "a binding to cluster-admin: {refused:?}"
    );
    let refused = Api::<Secret>::namespaced(client.clone(), tenant)
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": "planted"}, "stringData": {"k": "v"}}))?,
        )
        .await;
    ensure!(
        forbidden(&refused, r#"cannot create resource "secrets""#),
        "creating a Secret: {refused:?}"
    );

    // The Connection's cleanup: its cluster-wide binding goes.
    Api::<ClusterRoleBinding>::all(client.clone())
        .delete(&names.auth_delegator, &Default::default())
        .await
        .context("delete the auth-delegator binding")?;
    Ok(())
}

/// The parts of a Dockerfile the build depends on.
#[derive(Debug)]
struct Dockerfile {
    /// `-p` of `cargo build`.
    package: String,
    /// The `cargo build` line.
    build: String,
    /// The ENTRYPOINT's program.
    entrypoint: String,
    /// The COPY into the final stage.
    copy: String,
    /// The final stage's USER.
    user: String,
    /// Every instruction, continuation lines joined.
    text: String,
}

fn dockerfile(path: &Path) -> anyhow::Result<Dockerfile> {
    let raw = std::fs::read_to_string(path)?;
    // Instructions: comments out, continuation lines joined.
    let mut instructions: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in raw
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        match line.strip_suffix('\\') {
            Some(start) => current.push_str(start),
            None => {
                current.push_str(line);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    let stages: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, i)| i.starts_with("FROM "))
        .map(|(n, _)| n)
        .collect();
    ensure!(
        stages.len() >= 2,
        "{}: a builder and a runtime stage",
        path.display()
    );
    let last = &instructions[*stages.last().unwrap_or(&0)..];
    let build = instructions
        .iter()
        .find(|i| i.starts_with("RUN") && i.contains("cargo build"))
        .with_context(|| format!("{}: no cargo build", path.display()))?
        .clone();
    let words: Vec<&str> = build.split_whitespace().collect();
    let package = words
        .windows(2)
        .find(|w| w[0] == "-p" || w[0] == "--package")
        .map(|w| w[1].to_owned())
        .with_context(|| format!("{}: cargo build names no package", path.display()))?;
    let entrypoint = last
        .iter()
        .find_map(|i| i.strip_prefix("ENTRYPOINT "))
        .with_context(|| format!("{}: no ENTRYPOINT in the final stage", path.display()))?;
    let entrypoint: Vec<String> = serde_json::from_str(entrypoint)
        .with_context(|| format!("{}: ENTRYPOINT is not the exec form", path.display()))?;
    Ok(Dockerfile {
        package,
        build,
        entrypoint: entrypoint.first().cloned().context("an empty ENTRYPOINT")?,
        copy: last
            .iter()
            .find(|i| i.starts_with("COPY --from="))
            .with_context(|| {
                format!(
                    "{}: the final stage copies nothing from the builder",
                    path.display()
                )
            })?
            .clone(),
        user: last
            .iter()
            .rev()
            .find_map(|i| i.strip_prefix("USER "))
            .with_context(|| format!("{}: no USER in the final stage", path.display()))?
            .to_owned(),
        text: instructions.join("\n"),
    })
}

pub async fn each_dockerfile_builds_a_binary_of_the_workspace(_env: Arc<TestEnv>) -> anyhow::Result<()> {
    let root = repo().canonicalize()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = tokio::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(&root)
        .output()
        .await
        .context("run cargo metadata")?;
    ensure!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: Value = serde_json::from_slice(&out.stdout)?;
    let packages = metadata["packages"].as_array().context("packages")?;
    let package = |name: &str| packages.iter().find(|p| p["name"] == name);
    // Whether `name` links libpg_query, directly or through workspace crates.
    fn needs_pg_query(packages: &[Value], name: &str, seen: &mut BTreeSet<String>) -> bool {
        if !seen.insert(name.to_owned()) {
            return false;
        }
        let Some(package) = packages.iter().find(|p| p["name"] == name) else {
            return false;
        };
        package["dependencies"].as_array().into_iter().flatten().any(|d| {
            d["kind"].is_null()
                && (d["name"] == "pg_query"
                    || (d["path"].is_string()
                        && needs_pg_query(packages, d["name"].as_str().unwrap_or_default(), seen)))
        })
    }

    let mut found: Vec<PathBuf> = std::fs::read_dir(&root)?
        .flatten()
        .map(|e| e.path().join("Dockerfile"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    let images: Vec<String> = found
        .iter()
        .map(|p| {
            p.parent()
                .and_then(Path::file_name)
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    ensure!(
        images == ["operator", "proxy"],
        "one Dockerfile per image: {images:?}"
    );
    for path in &found {
        let file = dockerfile(path)?;
        let shown = path.display();
        let package = package(&file.package)
            .with_context(|| format!("{shown}: the workspace has no package {}", file.package))?;
        ensure!(
            file.build.contains("--release") && file.build.contains("--locked"),
            "{shown}: {}",
            file.build
        );
        let bin = Path::new(&file.entrypoint)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bins: Vec<&str> = package["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| strings(&t["kind"]).iter().any(|k| k == "bin"))
            .filter_map(|t| t["name"].as_str())
            .collect();
        ensure!(
            bins.contains(&bin.as_str()),
            "{shown}: ENTRYPOINT {} is not a binary of {} ({bins:?})",
            file.entrypoint,
            file.package
        );
        ensure!(
            file.build.contains(&format!("target/release/{bin}")) && file.copy.ends_with(&file.entrypoint),
            "{shown}: the builder's {bin} is what the image runs ({} / {})",
            file.build,
            file.copy
        );
        ensure!(
            !["root", "0", "0:0"].contains(&file.user.as_str()),
            "{shown}: runs as {}",
            file.user
        );
        if needs_pg_query(packages, &file.package, &mut BTreeSet::new()) {
            ensure!(
                file.text.contains("libclang-dev"),
                "{shown}: {} links libpg_query, whose bindings need libclang in the builder",
                file.package
            );
        }
    }

    // The chart runs these two images.
    let values: Value =
        serde_norway::from_str(&std::fs::read_to_string(root.join(CHART).join("values.yaml"))?)?;
    for (image, bin) in [
        (&values["operator"]["image"]["repository"], "gatehouse-operator"),
        (&values["proxy"]["image"]["repository"], "gatehouse-proxy"),
    ] {
        ensure!(
            image.as_str().is_some_and(|r| r.rsplit('/').next() == Some(bin)),
            "the chart's image {image} is not {bin}"
        );
    }

    // The build context keeps the workspace.
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).context("a .dockerignore")?;
    let members: Vec<String> = strings(&metadata["workspace_members"])
        .iter()
        .filter_map(|id| {
            packages
                .iter()
                .find(|p| p["id"] == id.as_str())
                .and_then(|p| p["manifest_path"].as_str())
                .and_then(|m| {
                    Path::new(m)
                        .parent()?
                        .strip_prefix(&root)
                        .ok()?
                        .to_str()
                        .map(str::to_owned)
                })
        })
        .collect();
    ensure!(
        members.len() == packages.len(),
        "every member's folder: {members:?}"
    );
    for pattern in ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let pattern = pattern.trim_end_matches('/');
        for kept in members
            .iter()
            .map(String::as_str)
            .chain(["Cargo.toml", "Cargo.lock"])
        {
            if pattern == kept || pattern == "*" {
                bail!(".dockerignore leaves out {kept}, which the build needs");
            }
        }
    }
    Ok(())
}
