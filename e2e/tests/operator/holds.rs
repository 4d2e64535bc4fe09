//! Just-in-time approval end to end: the operator's proxy (run by the
//! harness as its Deployment says, as its own ServiceAccount) holds an
//! agent's DELETE, creates the ApprovalRequest, tells the agent its name,
//! and runs the statement once when an approver's `kubectl patch` approves
//! it; the API server refuses the requester's own review, a review from
//! outside the approvers and a review after a denial; a denial reaches the
//! agent with its reason; a timed-out request stays open and covers only
//! the very statement it was made for; a cancel or a hang-up withdraws it;
//! and the recording of it all replays and verifies.

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, bail, ensure};
use gatehouse_crds::{ApprovalRequest, Connection, Phase};
use gatehouse_e2e::{
    TestEnv, User,
    agent::{self, Notices},
};
use kube::Api;

use super::{eventually, kubectl};

const NS: &str = "operator-holds";
const ROLE: &str = "holds_app";
const PASSWORD: &str = "holds-7d1c";
const AGENT: &str = "system:serviceaccount:operator-holds:planner";

/// The SQLSTATE and message of a failed statement.
pub(super) fn db_error(error: &tokio_postgres::Error) -> (String, String) {
    error.as_db_error().map_or_else(
        || (String::new(), error.to_string()),
        |e| {
            (
                e.code().code().to_owned(),
                format!("{} HINT: {}", e.message(), e.hint().unwrap_or_default()),
            )
        },
    )
}

/// `user`'s review of `name`, as the README's one `kubectl patch`.
pub(super) fn review_args<'a>(namespace: &'a str, name: &'a str, patch: &'a str) -> [&'a str; 8] {
    [
        "patch",
        "approvalrequest",
        name,
        "-n",
        namespace,
        "--type=json",
        "-p",
        patch,
    ]
}

/// `user`'s review naming `groups` (the approver groups they are in).
fn review_as(user: &str, groups: &[&str], decision: &str, reason: &str) -> String {
    serde_json::json!([{"op": "add", "path": "/spec/reviews/-", "value": {"user": user, "groups": groups, "decision": decision, "reason": reason}}])
        .to_string()
}

/// `user`'s review as a member of the approver group `dba`.
pub(super) fn review(user: &str, decision: &str, reason: &str) -> String {
    review_as(user, &["dba"], decision, reason)
}

/// Runs kubectl with `kubeconfig`; the output, whatever the exit status.
pub(super) async fn kubectl_as(
    env: &TestEnv,
    kubeconfig: &std::path::Path,
    args: &[&str],
) -> anyhow::Result<std::process::Output> {
    let mut command = env.kube.kubectl(User::Admin);
    // A later --kubeconfig wins over the one kubectl(User) set.
    command.arg("--kubeconfig").arg(kubeconfig).args(args);
    Ok(command.output().await?)
}

pub(super) fn refused_with(out: &std::process::Output, what: &str, message: &str) -> anyhow::Result<()> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "{what} was allowed");
    ensure!(
        stderr.contains("gatehouse-approvalrequests") && stderr.contains(message),
        "{what} was refused, but not by the admission policy with {message:?}: {stderr}"
    );
    Ok(())
}

pub(super) async fn phase(
    requests: &Api<ApprovalRequest>,
    name: &str,
    want: Phase,
) -> anyhow::Result<ApprovalRequest> {
    eventually(requests, name, |r| {
        (r.status.as_ref()?.phase? == want).then(|| r.clone())
    })
    .await
}

async fn count(db: &tokio_postgres::Client, table: &str, id: i32) -> anyhow::Result<i64> {
    Ok(db
        .query_one(
            &format!("SELECT count(*) FROM holds.{table} WHERE id = $1"),
            &[&id],
        )
        .await?
        .get(0))
}

pub async fn a_held_statement_runs_once_when_approved_and_only_as_approved(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    super::operator(&env).await?;
    // Decisions need the operator: its restart test waits for this one.
    let _operator_up = super::QUIET.read().await;
    let _admission = crate::ADMISSION.read().await;
    let superuser = env.postgres.superuser(gatehouse_e2e::postgres::DATABASE).await?;
    superuser
        .batch_execute(&format!(
            "CREATE SCHEMA holds;
             CREATE TABLE holds.orders_2024_01 (id int PRIMARY KEY, note text);
             CREATE TABLE holds.orders_2024_02 (id int PRIMARY KEY, note text);
             INSERT INTO holds.orders_2024_01 SELECT g, 'order ' || g FROM generate_series(1, 10) g;
             INSERT INTO holds.orders_2024_02 SELECT g, 'order ' || g FROM generate_series(1, 10) g;
             CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}';
             GRANT USAGE ON SCHEMA holds TO {ROLE};
             GRANT SELECT, DELETE ON ALL TABLES IN SCHEMA holds TO {ROLE};"
        ))
        .await?;
    crate::admission::install_roles(&env).await?;
    let manifests = format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: {NS}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: planner, namespace: {NS}}}
---
# Approvers (group dba) review; so may the planner and nobody, as far as
# RBAC goes, so that what refuses them is the admission policy.
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: reviewers, namespace: {NS}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: gatehouse-approver}}
subjects:
  - {{apiGroup: rbac.authorization.k8s.io, kind: Group, name: dba}}
  - {{apiGroup: rbac.authorization.k8s.io, kind: User, name: nobody}}
  - {{kind: ServiceAccount, name: planner, namespace: {NS}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: holds-db-creds, namespace: {NS}}}
stringData: {{username: {ROLE}, password: "{PASSWORD}"}}
---
{recording}---
apiVersion: gatehouse.dev/v1alpha1
kind: Connection
metadata: {{name: holds-db, namespace: {NS}, labels: {{env: holds}}}}
spec:
  type: postgres
  target: {{host: 127.0.0.1, port: {port}, database: {database}, tls: {{mode: disable}}}}
  credentialsRef: {{name: holds-db-creds}}
  approval: {{holdTimeout: 4s, ttl: 10m}}
---
apiVersion: gatehouse.dev/v1alpha1
kind: Policy
metadata: {{name: planner-writes, namespace: {NS}}}
spec:
  connectionSelector: {{matchLabels: {{env: holds}}}}
  subjects: [{{kind: ServiceAccount, name: planner, namespace: {NS}}}]
  rules:
    - {{name: reads, match: {{operations: [select]}}, action: allow}}
    - name: deletes
      match: {{operations: [delete], tables: ["holds.*"]}}
      action: requireApproval
      approvers: {{groups: [dba], required: 1}}
    - {{name: no-ddl, match: {{operations: [ddl]}}, action: deny}}
"#,
        recording = super::recording_secret(&env, NS)?,
        port = env.postgres.port,
        database = gatehouse_e2e::postgres::DATABASE,
    );
    let pod = super::apply_and_serve(&env, NS, "holds-db", &manifests).await?;
    let port = pod.port("postgres")?;
    let admin = env.kube.client(User::Admin).await?;
    let connections: Api<Connection> = Api::namespaced(admin.clone(), NS);
    let requests: Api<ApprovalRequest> = Api::namespaced(admin.clone(), NS);
    let token = env.kube.gateway_token(NS, "planner").await?;
    // The planner's own kubeconfig, with an API token (no gatehouse audience).
    let api_token = kubectl(
        &env,
        &["create", "token", "planner", "-n", NS, "--duration=1h"],
        None,
    )
    .await?;
    let planner_kubeconfig = env.path().join("kubeconfig-holds-planner");
    env.kube
        .write_token_kubeconfig(&planner_kubeconfig, "planner", &api_token, NS)?;
    let alice = env.kube.kubeconfig(User::Alice);
    let bob = env.kube.kubeconfig(User::Bob);
    let nobody = env.kube.kubeconfig(User::Nobody);

    // 1. A simple-protocol DELETE is held; the agent is told which request and how to approve it.
    let (db, mut session) = agent::connect(port, "planner", &token).await?;
    let first = "DELETE FROM holds.orders_2024_01 WHERE id = 1";
    let held = tokio::spawn(async move { db.simple_query(first).await.map(|_| db) });
    let (r1, notice) = session_held(&mut session, &held).await?;
    ensure!(
        notice.contains(&format!("kubectl patch approvalrequest {r1} -n {NS} --type=json")),
        "the notice gives the kubectl patch: {notice}"
    );
    let request = requests.get(&r1).await?;
    ensure!(
        request.spec.requester.username == AGENT,
        "requester: {:?}",
        request.spec.requester
    );
    ensure!(
        request.spec.statement == first,
        "statement: {}",
        request.spec.statement
    );
    ensure!(request.spec.connection == "holds-db" && request.spec.rule == "deletes");
    let connection = connections.get("holds-db").await?;
    ensure!(
        Some(&request.spec.connection_uid) == connection.metadata.uid.as_ref(),
        "bound to the Connection's uid: {}",
        request.spec.connection_uid
    );
    ensure!(
        request.spec.approvers.groups == ["dba"],
        "approvers: {:?}",
        request.spec.approvers
    );
    ensure!(
        request.spec.statement_hash.len() == 64 && request.spec.parameters_hash.len() == 64,
        "the statement and its values are bound by SHA-256"
    );
    ensure!(
        count(&superuser, "orders_2024_01", 1).await? == 1,
        "nothing ran while held"
    );

    // The requester, a user outside the approvers: refused by the API server.
    let own = review_as(AGENT, &[], "Approved", "my own");
    refused_with(
        &kubectl_as(&env, &planner_kubeconfig, &review_args(NS, &r1, &own)).await?,
        "the requester's own approval",
        "sent this statement and cannot review it",
    )?;
    let outsider = review_as("nobody", &[], "Approved", "looks fine");
    refused_with(
        &kubectl_as(&env, &nobody, &review_args(NS, &r1, &outsider)).await?,
        "an approval from outside the approvers",
        "is not among the approvers",
    )?;
    // alice approves: the DELETE runs, once, and the request is Consumed.
    let approve = review("alice", "Approved", "ticket OPS-1");
    let approved_at = std::time::Instant::now();
    let out = kubectl_as(&env, &alice, &review_args(NS, &r1, &approve)).await?;
    ensure!(
        out.status.success(),
        "alice's approval: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = tokio::time::timeout(Duration::from_secs(20), held)
        .await
        .context("the approved statement did not run within 20 s")??
        .context("the approved statement failed")?;
    tracing::info!(elapsed = ?approved_at.elapsed(), "approval patch to statement run");
    ensure!(
        count(&superuser, "orders_2024_01", 1).await? == 0,
        "the approved DELETE ran"
    );
    let consumed = phase(&requests, &r1, Phase::Consumed).await?;
    ensure!(
        consumed
            .status
            .and_then(|s| s.message)
            .is_some_and(|m| m.contains("approved by alice")),
        "the request says who approved"
    );

    // 2. A denial reaches the agent with its reason; a later approval is refused.
    let db2 = db;
    let held = tokio::spawn(async move {
        let result = db2
            .simple_query("DELETE FROM holds.orders_2024_01 WHERE id = 2")
            .await;
        (db2, result.err())
    });
    let (r2, _) = session_held(&mut session, &held).await?;
    let deny = review("alice", "Denied", "not during the freeze");
    let out = kubectl_as(&env, &alice, &review_args(NS, &r2, &deny)).await?;
    ensure!(
        out.status.success(),
        "alice's denial: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (db, error) = tokio::time::timeout(Duration::from_secs(20), held).await??;
    let (code, message) = db_error(&error.context("a denied statement ran")?);
    ensure!(
        code == "42501" && message.contains(&r2) && message.contains("not during the freeze"),
        "the denial: {code} {message}"
    );
    ensure!(
        count(&superuser, "orders_2024_01", 2).await? == 1,
        "the denied DELETE did not run"
    );
    let bob_after = review("bob", "Approved", "overruling");
    refused_with(
        &kubectl_as(&env, &bob, &review_args(NS, &r2, &bob_after)).await?,
        "bob's approval after the denial",
        "already Denied",
    )?;

    // 3. A hold times out; its request stays open and covers that statement
    // only: the same DELETE on orders_2024_02 (one pg_query's default
    // fingerprint does not tell apart) is held anew.
    let third = "DELETE FROM holds.orders_2024_01 WHERE id = 3";
    let db3 = db;
    let held = tokio::spawn(async move {
        let result = db3.simple_query(third).await;
        (db3, result.err())
    });
    let (r3, _) = session_held(&mut session, &held).await?;
    let (db, error) = tokio::time::timeout(Duration::from_secs(20), held).await??;
    let (code, message) = db_error(&error.context("a held statement ran unapproved")?);
    ensure!(
        code == "57014" && message.contains(&r3),
        "the timeout: {code} {message}"
    );
    let out = kubectl_as(&env, &alice, &review_args(NS, &r3, &approve)).await?;
    ensure!(
        out.status.success(),
        "alice's approval: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    phase(&requests, &r3, Phase::Approved).await?;

    let cancel = db.cancel_token();
    let db4 = db;
    let held = tokio::spawn(async move {
        let result = db4
            .simple_query("DELETE FROM holds.orders_2024_02 WHERE id = 3")
            .await;
        (db4, result.err())
    });
    let (r4, _) = session_held(&mut session, &held).await?;
    ensure!(
        r4 != r3,
        "orders_2024_02 got the approval of orders_2024_01 ({r3})"
    );
    // The agent gives up: a cancel withdraws the request.
    cancel.cancel_query(tokio_postgres::NoTls).await?;
    let (db, error) = tokio::time::timeout(Duration::from_secs(20), held).await??;
    let (code, message) = db_error(&error.context("a cancelled statement ran")?);
    ensure!(
        code == "57014" && message.contains(&r4),
        "the cancel: {code} {message}"
    );
    let withdrawn = phase(&requests, &r4, Phase::Expired).await?;
    ensure!(
        withdrawn
            .status
            .and_then(|s| s.message)
            .is_some_and(|m| m.contains("withdrawn")),
        "the cancelled request is withdrawn"
    );
    ensure!(
        count(&superuser, "orders_2024_02", 3).await? == 1,
        "orders_2024_02 untouched"
    );
    // The very statement approved runs at once when sent again.
    db.simple_query(third)
        .await
        .context("the approved statement sent again")?;
    let (reused, notice) = session.held(Duration::from_secs(20)).await?;
    ensure!(
        reused == r3 && notice.contains("made earlier"),
        "sent again, it used {reused}: {notice}"
    );
    ensure!(
        count(&superuser, "orders_2024_01", 3).await? == 0,
        "the approved DELETE ran"
    );
    phase(&requests, &r3, Phase::Consumed).await?;

    // 4. Extended protocol: held at the Bind, with its values for the approver.
    let db5 = db;
    let held = tokio::spawn(async move {
        let result = db5
            .execute("DELETE FROM holds.orders_2024_01 WHERE id = $1", &[&5i32])
            .await;
        (db5, result)
    });
    let (r5, _) = session_held(&mut session, &held).await?;
    let request = requests.get(&r5).await?;
    // tokio-postgres leaves the type to the server and sends the value binary.
    let shown: Vec<_> = request
        .spec
        .parameters
        .iter()
        .map(|p| (p.type_name.as_str(), p.value.as_deref()))
        .collect();
    ensure!(
        request.spec.statement == "DELETE FROM holds.orders_2024_01 WHERE id = $1"
            && shown == [("unspecified", Some("\\x00000005"))],
        "the approver sees the statement and its value: {} {shown:?}",
        request.spec.statement
    );
    let out = kubectl_as(
        &env,
        &bob,
        &review_args(NS, &r5, &review("bob", "Approved", "ok")),
    )
    .await?;
    ensure!(
        out.status.success(),
        "bob's approval: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (db, result) = tokio::time::timeout(Duration::from_secs(20), held).await??;
    ensure!(result? == 1, "the approved prepared DELETE deleted one row");

    // 5. A DROP is denied outright.
    let dropped = db.batch_execute("DROP TABLE holds.orders_2024_01").await;
    ensure!(
        dropped
            .as_ref()
            .err()
            .map(db_error)
            .is_some_and(|(code, _)| code == "42501"),
        "DROP: {dropped:?}"
    );

    // 6. An agent that hangs up mid-hold withdraws its request.
    let (db6, mut other) = agent::connect(port, "planner", &token).await?;
    let held = tokio::spawn(async move {
        db6.simple_query("DELETE FROM holds.orders_2024_01 WHERE id = 6")
            .await
            .map(drop)
    });
    let (r6, _) = session_held(&mut other, &held).await?;
    held.abort();
    other.connection.abort();
    drop(other);
    let withdrawn = phase(&requests, &r6, Phase::Expired).await?;
    ensure!(
        withdrawn
            .status
            .and_then(|s| s.message)
            .is_some_and(|m| m.contains("withdrawn")),
        "the abandoned request is withdrawn"
    );
    ensure!(
        count(&superuser, "orders_2024_01", 6).await? == 1,
        "the abandoned DELETE did not run"
    );

    // 7. The recording tells it: held, approved by alice through r1, and verifies.
    drop(db);
    session.connection.abort();
    let mut told = None;
    for _ in 0..100 {
        let listed = crate::recording::cli(
            &env,
            &env.s3,
            &["sessions", "--connection", &format!("{NS}/holds-db")],
        )
        .await?;
        for id in listed
            .stdout
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
        {
            let replay = crate::recording::cli(&env, &env.s3, &["replay", id]).await?;
            if replay.code == 0
                && replay
                    .stdout
                    .contains(&format!("approval approved: approved by alice ({r1})"))
            {
                told = Some((id.to_owned(), replay.stdout));
            }
        }
        if told.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let Some((id, replay)) = told else {
        bail!("no recording tells of {r1}'s approval")
    };
    for expected in [
        format!("HELD for approval: {first}"),
        format!("approval denied: denied by alice: not during the freeze ({r2}), REFUSED"),
        "approval timedOut".to_owned(),
        "approval cancelled".to_owned(),
    ] {
        ensure!(
            replay.contains(&expected),
            "the replay lacks {expected:?}:\n{replay}"
        );
    }
    let verified = crate::recording::cli(&env, &env.s3, &["verify", &id]).await?;
    ensure!(
        verified.code == 0,
        "verify: {} {}",
        verified.stdout,
        verified.stderr
    );
    drop(pod);
    Ok(())
}

/// The request of the statement `task` sends, once the proxy holds it; fails
/// if the task ends first.
pub(super) async fn session_held<T>(
    agent: &mut Notices,
    task: &tokio::task::JoinHandle<T>,
) -> anyhow::Result<(String, String)> {
    let held = agent.held(Duration::from_secs(20)).await;
    ensure!(
        !task.is_finished(),
        "the statement finished instead of being held"
    );
    held
}
