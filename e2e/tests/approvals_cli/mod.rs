//! The approver's kubectl plugin against the real API server, and the
//! operator's `/metrics`.
//!
//! `kubectl gatehouse pending | approve | deny` runs as the built binary with
//! the KUBECONFIG of alice, bob or carol, against requests the proxy's
//! ServiceAccount created (see [`admission`](super::admission)): every
//! refusal is the API server's, shown as it wrote it. The operator may or
//! may not be running while these tests run, so they look at
//! `spec.reviews`, never at the phase.
//!
//! The operator binary itself runs as its own ServiceAccount (the chart's
//! rights, its Lease in gatehouse-system); `/metrics` on its metrics and
//! health addresses counts what it did, and says the admission policy is in
//! force.

use std::{path::PathBuf, process::Output, sync::Arc, time::Duration};

use anyhow::{Context as _, bail, ensure};
use gatehouse_e2e::{
    TestEnv, User,
    process::{Process, Spawn},
};
use serde_json::{Value, json};

use super::{
    admission::{Namespace, request},
    ops::Scrape,
};

/// A requester that is no person and no approver: an agent's ServiceAccount.
const AGENT: &str = "system:serviceaccount:agents:planner";

/// What a run of the plugin came to.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Fails unless the run exited 0; returns stdout.
    fn ok(self, what: &str) -> anyhow::Result<String> {
        ensure!(
            self.code == 0,
            "{what} exited {}:\n{}{}",
            self.code,
            self.stdout,
            self.stderr
        );
        Ok(self.stdout)
    }
}

/// `kubectl-gatehouse ARGS` with `KUBECONFIG=kubeconfig`, as a person runs it.
async fn plugin(kubeconfig: &std::path::Path, args: &[&str]) -> anyhow::Result<Run> {
    let out: Output = tokio::process::Command::new(gatehouse_e2e::workspace_binary("kubectl-gatehouse")?)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .kill_on_drop(true)
        .output()
        .await?;
    Ok(Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// A copy of `user`'s kubeconfig whose context's namespace is `namespace`,
/// so the plugin finds the requests without `-n`.
fn kubeconfig_in(env: &TestEnv, user: User, namespace: &str) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(env.kube.kubeconfig(user))?;
    ensure!(
        text.contains("namespace: default\n"),
        "unexpected kubeconfig:\n{text}"
    );
    let path = env.path().join(format!("kubeconfig-{user}-{namespace}"));
    gatehouse_e2e::kube::write_private(
        &path,
        &text.replace("namespace: default\n", &format!("namespace: {namespace}\n")),
    )?;
    Ok(path)
}

async fn kubectl(env: &TestEnv, args: &[&str]) -> anyhow::Result<String> {
    Ok(env.kube.kubectl_run(User::Admin, args, None).await?)
}

/// `spec.reviews` of `request`, as the API server holds them.
async fn reviews(env: &TestEnv, ns: &Namespace, request: &str) -> anyhow::Result<Value> {
    let text = kubectl(
        env,
        &[
            "get",
            "approvalrequest",
            request,
            "-n",
            &ns.name,
            "-o",
            "jsonpath={.spec.reviews}",
        ],
    )
    .await?;
    if text.trim().is_empty() {
        return Ok(json!([]));
    }
    Ok(serde_json::from_str(&text)?)
}

/// The table's line of request `name`.
fn line_of<'a>(table: &'a str, name: &str) -> anyhow::Result<&'a str> {
    table
        .lines()
        .find(|l| l.split_whitespace().any(|cell| cell == name))
        .with_context(|| format!("no line for {name} in\n{table}"))
}

pub async fn pending_lists_what_waits_and_approve_adds_the_callers_own_review(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    let ns = Namespace::new(&env, "approvals-cli").await?;
    let two = || json!({"groups": ["dba"], "required": 2});
    ns.held(&request("held-delete", AGENT, two())).await?;
    // Creation times are to the second: the newer one a second later.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut update = request("held-update", AGENT, two());
    update["spec"]["statement"] = json!("UPDATE public.orders\n   SET status = 'void'\n WHERE id = $1");
    ns.held(&update).await?;
    // A decided request is not pending.
    ns.held(&request("decided", AGENT, two())).await?;
    // Denied as the operator decides it (only it may).
    let operator = env.kube.operator_kubeconfig().await?;
    let out = ns
        .set_status(
            crate::admission::As::Kubeconfig(operator),
            "decided",
            json!({"phase": "Denied", "message": "denied by bob: no"}),
        )
        .await?;
    ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // alice's kubeconfig names the namespace: no -n.
    let alice = kubeconfig_in(&env, User::Alice, &ns.name)?;
    let table = plugin(&alice, &["pending"]).await?.ok("alice's pending")?;
    let lines: Vec<&str> = table.lines().collect();
    ensure!(lines.len() == 3, "two pending requests expected:\n{table}");
    ensure!(
        lines[0].split_whitespace().collect::<Vec<_>>()
            == [
                "NAME",
                "CONNECTION",
                "REQUESTER",
                "STATEMENT",
                "APPROVALS",
                "EXPIRES",
                "IN"
            ],
        "header: {}",
        lines[0]
    );
    ensure!(
        lines[1].starts_with("held-update ") && lines[2].starts_with("held-delete "),
        "not newest first:\n{table}"
    );
    ensure!(
        lines[1].contains(" orders-db ")
            && lines[1].contains(AGENT)
            && lines[1].contains("UPDATE public.orders SET status = 'void' WHERE id = $1")
            && lines[1].contains(" 0/2 "),
        "held-update's line: {}",
        lines[1]
    );

    let json = plugin(&alice, &["pending", "-n", &ns.name, "-o", "json"])
        .await?
        .ok("pending -o json")?;
    let list: Value = serde_json::from_str(&json)?;
    let names: Vec<&str> = list["items"]
        .as_array()
        .context("no items")?
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    ensure!(names == ["held-update", "held-delete"], "{json}");

    // alice approves as herself: the review names her, as the API server knows her.
    let out = plugin(&alice, &["approve", "held-delete", "--reason", "ticket 812"])
        .await?
        .ok("alice's approve")?;
    ensure!(out == "approved held-delete as alice (1 of 2)\n", "{out:?}");
    ensure!(
        reviews(&env, &ns, "held-delete").await?
            == json!([{"user": "alice", "groups": ["dba"], "decision": "Approved", "reason": "ticket 812"}]),
        "reviews after alice's approval"
    );
    let table = plugin(&alice, &["pending"])
        .await?
        .ok("pending after the approval")?;
    ensure!(line_of(&table, "held-delete")?.contains(" 1/2 "), "{table}");

    // bob's is the second of two.
    let out = plugin(
        &env.kube.kubeconfig(User::Bob),
        &["approve", "held-delete", "-n", &ns.name],
    )
    .await?
    .ok("bob's approve")?;
    ensure!(out == "approved held-delete as bob (2 of 2)\n", "{out:?}");
    ensure!(
        reviews(&env, &ns, "held-delete").await?
            == json!([
                {"user": "alice", "groups": ["dba"], "decision": "Approved", "reason": "ticket 812"},
                {"user": "bob", "groups": ["dba"], "decision": "Approved"},
            ]),
        "reviews after bob's approval"
    );

    // Every namespace: the admin may list them all; alice may not.
    let admin = env.kube.kubeconfig(User::Admin);
    let table = plugin(&admin, &["pending", "-A"]).await?.ok("pending -A")?;
    ensure!(table.starts_with("NAMESPACE "), "{table}");
    ensure!(
        line_of(&table, "held-update")?.starts_with(&format!("{} ", ns.name)),
        "{table}"
    );
    let run = plugin(&alice, &["pending", "-A"]).await?;
    ensure!(
        run.code == 1 && run.stderr.contains("cannot list resource \"approvalrequests\""),
        "alice's pending -A: exit {}\n{}",
        run.code,
        run.stderr
    );
    Ok(())
}

pub async fn the_requester_and_users_outside_the_approvers_are_refused_with_the_api_servers_message(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    let ns = Namespace::new(&env, "approvals-cli-refused").await?;
    // carol sent it, and carol is in dba, which may approve it.
    ns.held(&request(
        "carols",
        "carol",
        json!({"groups": ["dba"], "required": 1}),
    ))
    .await?;
    // RBAC lets nobody patch here: what stops nobody is the policy.
    ns.let_patch(User::Nobody).await?;

    let carol = env.kube.kubeconfig(User::Requester);
    let run = plugin(&carol, &["approve", "carols", "-n", &ns.name]).await?;
    ensure!(
        run.code == 1
            && run.stdout.is_empty()
            && run
                .stderr
                .contains("ValidatingAdmissionPolicy 'gatehouse-approvalrequests'")
            && run
                .stderr
                .contains("carol sent this statement and cannot review it; one of its other approvers must"),
        "carol approving her own request: exit {}\n{}{}",
        run.code,
        run.stdout,
        run.stderr
    );
    // The API server's message as is, not as an error of the plugin's.
    ensure!(!run.stderr.starts_with("error:"), "{}", run.stderr);

    let nobody = env.kube.kubeconfig(User::Nobody);
    let run = plugin(
        &nobody,
        &["approve", "carols", "-n", &ns.name, "--reason", "why not"],
    )
    .await?;
    ensure!(
        run.code == 1
            && run
                .stderr
                .contains("nobody is not among the approvers of this request (users: [], groups: [dba])"),
        "nobody approving: exit {}\n{}",
        run.code,
        run.stderr
    );
    let run = plugin(&nobody, &["deny", "carols", "-n", &ns.name, "--reason", "no"]).await?;
    ensure!(
        run.code == 1 && run.stderr.contains("nobody is not among the approvers"),
        "nobody denying: exit {}\n{}",
        run.code,
        run.stderr
    );
    ensure!(
        reviews(&env, &ns, "carols").await? == json!([]),
        "a refused review got in"
    );

    // A request that is not there.
    let alice = env.kube.kubeconfig(User::Alice);
    let run = plugin(&alice, &["approve", "no-such-request", "-n", &ns.name]).await?;
    ensure!(
        run.code == 1
            && run.stderr.contains(&format!(
                "ApprovalRequest no-such-request not found in namespace {}",
                ns.name
            )),
        "approving a missing request: exit {}\n{}",
        run.code,
        run.stderr
    );
    Ok(())
}

pub async fn deny_needs_a_reason_records_it_and_decides(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let ns = Namespace::new(&env, "approvals-cli-deny").await?;
    ns.held(&request(
        "held-delete",
        AGENT,
        json!({"groups": ["dba"], "required": 2}),
    ))
    .await?;
    let bob = kubeconfig_in(&env, User::Bob, &ns.name)?;

    let run = plugin(&bob, &["deny", "held-delete"]).await?;
    ensure!(
        run.code == 2 && run.stderr.contains("--reason"),
        "deny without a reason: exit {}\n{}",
        run.code,
        run.stderr
    );
    let run = plugin(&bob, &["deny", "held-delete", "--reason", " "]).await?;
    ensure!(
        run.code == 2 && run.stderr.contains("deny needs a --reason"),
        "deny with a blank reason: exit {}\n{}",
        run.code,
        run.stderr
    );
    ensure!(reviews(&env, &ns, "held-delete").await? == json!([]));

    let out = plugin(
        &bob,
        &["deny", "held-delete", "--reason", "not during the freeze"],
    )
    .await?
    .ok("bob's deny")?;
    ensure!(
        out == "denied held-delete as bob: not during the freeze\n",
        "{out:?}"
    );
    ensure!(
        reviews(&env, &ns, "held-delete").await?
            == json!([{"user": "bob", "groups": ["dba"], "decision": "Denied", "reason": "not during the freeze"}]),
        "reviews after bob's denial"
    );
    // One denial decides.
    let alice = kubeconfig_in(&env, User::Alice, &ns.name)?;
    let run = plugin(&alice, &["approve", "held-delete"]).await?;
    ensure!(
        run.code == 1
            && run.stderr.contains(
                "this request is already Denied; no review can be added after a decision or expiry"
            ),
        "alice approving after a denial: exit {}\n{}",
        run.code,
        run.stderr
    );

    // An API server that does not answer is a connection error.
    let text = std::fs::read_to_string(&alice)?;
    let unreachable = env.path().join("kubeconfig-unreachable");
    gatehouse_e2e::kube::write_private(&unreachable, &text.replace(&env.kube.url, "https://127.0.0.1:9"))?;
    let run = plugin(&unreachable, &["approve", "held-delete"]).await?;
    ensure!(
        run.code == 2 && run.stderr.starts_with("error: "),
        "approve against no API server: exit {}\n{}",
        run.code,
        run.stderr
    );
    Ok(())
}

/// The operator binary, stopped (SIGTERM) on drop.
struct OperatorProcess {
    process: Process,
    health: u16,
    metrics: u16,
}

impl OperatorProcess {
    /// Starts `gatehouse-operator` as its own ServiceAccount with the in-process
    /// operator's settings (see `operator::settings`), so that both apply
    /// the same objects, and its Lease where its Role allows it.
    async fn start(env: &TestEnv) -> anyhow::Result<OperatorProcess> {
        let health = gatehouse_e2e::net::free_port()?;
        let metrics = gatehouse_e2e::net::free_port()?;
        let account = env.kube.operator_kubeconfig().await?.to_path_buf();
        let process = Spawn::new(
            "gatehouse-operator",
            gatehouse_e2e::workspace_binary("gatehouse-operator")?,
            env.path().join("gatehouse-operator-metrics.log"),
        )
        .args(["--proxy-image", "gatehouse-proxy:e2e"])
        .args(["--recording-secret", "gatehouse-recording"])
        .args(["--recording-s3-bucket", gatehouse_e2e::s3::BUCKET])
        .args(["--recording-s3-endpoint", &env.s3.endpoint])
        .args(["--recording-s3-region", gatehouse_e2e::s3::REGION])
        .args(["--recording-s3-path-style", "--recording-s3-prefix", "sessions"])
        .args(["--approval-retention", "2s"])
        .args(["--health-address", &format!("127.0.0.1:{health}")])
        .args(["--metrics-address", &format!("127.0.0.1:{metrics}")])
        .args([
            "--lease-namespace",
            gatehouse_e2e::kube::OPERATOR_NAMESPACE,
            "--lease-name",
            "gatehouse-operator",
        ])
        .args(["--identity", "metrics-e2e"])
        .env("KUBECONFIG", account.to_str().context("kubeconfig path")?)
        .start("start gatehouse-operator")?;
        Ok(OperatorProcess {
            process,
            health,
            metrics,
        })
    }

    /// A scrape of `/metrics` on the metrics address, once it answers.
    async fn scrape(&mut self) -> anyhow::Result<Scrape> {
        let mut last = None;
        for _ in 0..100 {
            self.process.ensure_running("scrape the operator's /metrics")?;
            match Scrape::from_admin(self.metrics).await {
                Ok(scrape) => return Ok(scrape),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the operator's /metrics did not answer within 10 s: {last:?}")
    }

    /// Waits up to 20 s for `check` to hold on a fresh scrape.
    async fn eventually(
        &mut self,
        what: &str,
        check: impl Fn(&Scrape) -> anyhow::Result<bool>,
    ) -> anyhow::Result<Scrape> {
        for _ in 0..200 {
            let scrape = self.scrape().await?;
            if check(&scrape)? {
                return Ok(scrape);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(self.process.log()).unwrap_or_default();
        bail!(
            "{what} did not happen within 20 s; the operator's log:\n{}",
            log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
        )
    }
}

const CONNECTIONS: &str = r#"gatehouse_operator_reconciles_total{controller="connection"}"#;

pub async fn the_operator_serves_metrics_counting_reconciles_while_it_leads(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    let ns = "approvals-cli-operator";
    kubectl(&env, &["create", "namespace", ns]).await?;
    let mut operator = OperatorProcess::start(&env).await?;
    let scrape = operator
        .eventually("leading", |s| Ok(s.value("gatehouse_operator_leader")? == 1.0))
        .await?;
    // As its own account, it finds the admission policy installed as shipped.
    operator
        .eventually("the admission policy in force", |s| {
            Ok(s.value("gatehouse_operator_admission_policy_in_force")? == 1.0)
        })
        .await?;
    // The health address serves the same metrics.
    let on_health = Scrape::from_admin(operator.health).await?;
    ensure!(
        on_health.value("gatehouse_operator_leader")? == 1.0,
        "the health address's /metrics"
    );
    for series in [
        r#"gatehouse_operator_reconcile_errors_total{controller="connection",reason="conflict"}"#,
        r#"gatehouse_operator_reconcile_duration_seconds_count{controller="policy"}"#,
        r#"gatehouse_operator_queue_depth{controller="approvalrequest"}"#,
    ] {
        scrape.value(series)?;
    }
    let holder = kubectl(
        &env,
        &[
            "get",
            "lease",
            "gatehouse-operator",
            "-n",
            gatehouse_e2e::kube::OPERATOR_NAMESPACE,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
    )
    .await?;
    ensure!(holder == "metrics-e2e", "the Lease is held by {holder:?}");

    // Whatever it reconciled at start (other tests' Connections), a new
    // Connection is reconciled once more at least.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = operator.scrape().await?.value(CONNECTIONS)?;
    let manifests = format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: orders-db-creds, namespace: {ns}}}
stringData: {{username: gatehouse_app, password: not-the-real-one}}
---
apiVersion: gatehouse.dev/v1alpha1
kind: Connection
metadata: {{name: orders-db, namespace: {ns}}}
spec:
  type: postgres
  target: {{host: orders.db.svc, port: 5432, database: orders}}
  credentialsRef: {{name: orders-db-creds}}
"#
    );
    let file = env.path().join(format!("{ns}.yaml"));
    std::fs::write(&file, manifests)?;
    kubectl(
        &env,
        &["apply", "--server-side", "-f", file.to_str().context("path")?],
    )
    .await?;
    let scrape = operator
        .eventually("a reconcile of the new Connection", |s| {
            Ok(s.value(CONNECTIONS)? > before)
        })
        .await?;
    ensure!(
        scrape.value(r#"gatehouse_operator_reconcile_duration_seconds_count{controller="connection"}"#)?
            > 0.0,
        "reconciles are counted but not timed"
    );
    // The Connection's status says the operator saw it.
    let mut status = String::new();
    for _ in 0..100 {
        status = kubectl(
            &env,
            &[
                "get",
                "connection",
                "orders-db",
                "-n",
                ns,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"CredentialsResolved\")].status}",
            ],
        )
        .await?;
        if !status.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(!status.is_empty(), "the Connection got no status");

    // Deleted while the operator runs, so that its finalizer goes.
    kubectl(
        &env,
        &["delete", "connection", "orders-db", "-n", ns, "--timeout=30s"],
    )
    .await?;
    operator.process.stop(Duration::from_secs(20));
    kubectl(&env, &["delete", "namespace", ns, "--wait=false"]).await?;
    Ok(())
}
