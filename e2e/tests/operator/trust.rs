//! Approvals that cannot be stretched, forged or trusted blindly, end to end
//! through the operator's proxy and the real API server:
//!
//! - an approval covers exactly the statement the approver saw: statements
//!   pg_query's fingerprint cannot tell apart are each held anew, and the
//!   approval stays for the one it was given to;
//! - a statement too large to show is refused, never cut; one with
//!   characters an approver cannot see, or an `EXECUTE` that hides what
//!   runs, is refused; the approver sees `WHERE(token=id)OR(true)` as SQL;
//! - another Connection's proxy cannot approve a request (the API server
//!   refuses it), and with the admission policy removed its forged status
//!   runs nothing; the operator approves nothing and says why, and expires
//!   what gained reviews meanwhile.

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, ensure};
use gatehouse_crds::{ApprovalRequest, Phase};
use gatehouse_e2e::{
    TestEnv, User,
    agent::{self, Notices},
    kubelet::Pod,
};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;

use super::{
    condition, eventually,
    holds::{db_error, kubectl_as, phase, review, review_args, session_held},
    kubectl,
};

/// A Connection whose proxy runs, a planner whose writes to `schema` need
/// one approval of group `dba`, and what a test needs to drive them.
struct Gate {
    ns: &'static str,
    schema: &'static str,
    /// The proxy's `postgres` port.
    port: u16,
    token: String,
    requests: Api<ApprovalRequest>,
    superuser: tokio_postgres::Client,
    _pod: Pod,
}

impl Gate {
    /// Namespace `ns`, Connection `gate-db` holding for `hold`, schema
    /// `schema` made by `tables` (SQL run as the superuser).
    async fn start(
        env: &TestEnv,
        ns: &'static str,
        schema: &'static str,
        hold: &str,
        tables: &str,
    ) -> anyhow::Result<Gate> {
        let role = format!("{schema}_app");
        let password = format!("{schema}-7d1c");
        let superuser = env.postgres.superuser(gatehouse_e2e::postgres::DATABASE).await?;
        superuser
            .batch_execute(&format!(
                "CREATE SCHEMA {schema};
                 {tables}
                 CREATE ROLE {role} LOGIN PASSWORD '{password}';
                 GRANT USAGE ON SCHEMA {schema} TO {role};
                 GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role};"
            ))
            .await?;
        crate::admission::install_roles(env).await?;
        let manifests = format!(
            r#"apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: planner, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: reviewers, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: gatehouse-approver}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: Group, name: dba}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: gate-db-creds, namespace: {ns}}}
stringData: {{username: {role}, password: "{password}"}}
---
apiVersion: gatehouse.dev/v1alpha1
kind: Connection
metadata: {{name: gate-db, namespace: {ns}, labels: {{gate: "yes"}}}}
spec:
  type: postgres
  target: {{host: 127.0.0.1, port: {port}, database: {database}, tls: {{mode: disable}}}}
  credentialsRef: {{name: gate-db-creds}}
  recording: {{mode: "off"}}
  approval: {{holdTimeout: {hold}, ttl: 10m}}
---
apiVersion: gatehouse.dev/v1alpha1
kind: Policy
metadata: {{name: planner-writes, namespace: {ns}}}
spec:
  connectionSelector: {{matchLabels: {{gate: "yes"}}}}
  subjects: [{{kind: ServiceAccount, name: planner, namespace: {ns}}}]
  rules:
    - {{name: reads, match: {{operations: [select, prepare]}}, action: allow}}
    - name: writes
      match: {{operations: [insert, update, delete], tables: ["{schema}.*"]}}
      action: requireApproval
      approvers: {{groups: [dba], required: 1}}
"#,
            port = env.postgres.port,
            database = gatehouse_e2e::postgres::DATABASE,
        );
        let pod = super::apply_and_serve(env, ns, "gate-db", &manifests).await?;
        let admin = env.kube.client(User::Admin).await?;
        Ok(Gate {
            ns,
            schema,
            port: pod.port("postgres")?,
            token: env.kube.gateway_token(ns, "planner").await?,
            requests: Api::namespaced(admin, ns),
            superuser,
            _pod: pod,
        })
    }

    async fn agent(&self) -> anyhow::Result<(tokio_postgres::Client, Notices)> {
        agent::connect(self.port, "planner", &self.token).await
    }

    /// Sends `sql` in a new session and returns once it is held: its
    /// request, the statement's task, and the session's notices.
    async fn hold(&self, sql: &'static str) -> anyhow::Result<(String, Statement, Notices)> {
        let (db, mut session) = self.agent().await?;
        let task = tokio::spawn(async move {
            let result = db.simple_query(sql).await.map(|_| 0);
            (db, result)
        });
        let (name, _) = session_held(&mut session, &task).await?;
        Ok((name, task, session))
    }

    /// The rows of `table`, as text, in order: what a write would change.
    async fn rows(&self, table: &str) -> anyhow::Result<String> {
        let row = self
            .superuser
            .query_one(
                &format!(
                    "SELECT coalesce(string_agg(t::text, ';' ORDER BY t::text), '') FROM {}.{table} t",
                    self.schema
                ),
                &[],
            )
            .await?;
        Ok(row.get(0))
    }

    /// alice's approval of `name`, as the README's kubectl patch.
    async fn approve(&self, env: &TestEnv, name: &str) -> anyhow::Result<()> {
        let patch = review("alice", "Approved", "ticket OPS-2");
        let out = kubectl_as(
            env,
            &env.kube.kubeconfig(User::Alice),
            &review_args(self.ns, name, &patch),
        )
        .await?;
        ensure!(
            out.status.success(),
            "alice's approval of {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

/// A statement sent in its own task: the session's client back, and how it went.
type Statement = tokio::task::JoinHandle<(tokio_postgres::Client, Result<u64, tokio_postgres::Error>)>;

/// Waits for `task`'s statement to end and returns its SQLSTATE and message.
async fn refusal<T>(
    task: tokio::task::JoinHandle<(T, Result<u64, tokio_postgres::Error>)>,
) -> anyhow::Result<(T, String, String)> {
    let (client, result) = tokio::time::timeout(Duration::from_secs(40), task)
        .await
        .context("the statement did not end within 40 s")??;
    let error = result.err().context("the statement ran")?;
    let (code, message) = db_error(&error);
    Ok((client, code, message))
}

/// One pair: statements one lossy fingerprint confuses, as a simple Query
/// or, with values, a prepared statement.
struct Pair {
    table: &'static str,
    approved: &'static str,
    other: &'static str,
    values: Option<(i32, i32)>,
}

async fn run(
    db: &tokio_postgres::Client,
    sql: &str,
    values: Option<(i32, i32)>,
) -> Result<u64, tokio_postgres::Error> {
    match values {
        Some((a, b)) => db.execute(sql, &[&a, &b]).await,
        None => db.simple_query(sql).await.map(|_| 0),
    }
}

/// Approves `pair.approved` after its hold times out, then sends
/// `pair.other`: it must be held under a request of its own and change
/// nothing; then `pair.approved`, sent again, runs under its approval.
async fn held_apart(env: &TestEnv, gate: &Gate, pair: &Pair) -> anyhow::Result<()> {
    let (db, mut session) = gate.agent().await?;
    let before = gate.rows(pair.table).await?;
    let (sql, values) = (pair.approved, pair.values);
    let task = tokio::spawn(async move {
        let result = run(&db, sql, values).await;
        (db, result)
    });
    let (approved, _) = session_held(&mut session, &task).await?;
    let (db, code, _) = refusal(task).await?;
    ensure!(code == "57014", "{sql}: the hold times out first ({code})");
    gate.approve(env, &approved).await?;
    phase(&gate.requests, &approved, Phase::Approved).await?;

    let (other, values) = (pair.other, pair.values);
    let task = tokio::spawn(async move {
        let result = run(&db, other, values).await;
        (db, result)
    });
    let (asked, notice) = session_held(&mut session, &task).await?;
    ensure!(
        asked != approved && !notice.contains("made earlier"),
        "{other:?} ran under the approval of {:?} ({approved})",
        pair.approved
    );
    let (db, code, _) = refusal(task).await?;
    ensure!(code == "57014", "{other}: {code}");
    ensure!(
        gate.rows(pair.table).await? == before,
        "{other:?} changed {} without an approval",
        pair.table
    );
    // The approval was not used up: the statement approved runs with it.
    run(&db, pair.approved, pair.values)
        .await
        .with_context(|| format!("{} sent again", pair.approved))?;
    let (reused, _) = session.held(Duration::from_secs(20)).await?;
    ensure!(
        reused == approved,
        "{} ran under {reused}, not {approved}",
        pair.approved
    );
    phase(&gate.requests, &approved, Phase::Consumed).await?;
    Ok(())
}

pub async fn an_approval_covers_exactly_the_statement_shown(env: Arc<TestEnv>) -> anyhow::Result<()> {
    super::operator(&env).await?;
    let _operator_up = super::QUIET.read().await;
    let _admission = crate::ADMISSION.read().await;
    let columns = "(id int PRIMARY KEY, customer_id int, archived bool, balance int, credit_limit int, \
                   from_acct int, to_acct int, a int)";
    let mut tables = String::new();
    for i in 1..=5 {
        tables.push_str(&format!(
            "CREATE TABLE bound.t{i} {columns};
             INSERT INTO bound.t{i} VALUES (1, 7, false, 10, 20, 1, 2, 0), (7, 42, true, 0, 0, 0, 0, 5), (42, 7, false, 0, 0, 0, 0, 7);"
        ));
    }
    tables.push_str(
        "CREATE TABLE bound.secrets (id text, token text); INSERT INTO bound.secrets VALUES ('a', 'b');",
    );
    let gate = Gate::start(&env, "approval-binding", "bound", "2s", &tables).await?;

    // 1. Each pair is held anew; they run side by side, each in its own session.
    let pairs = [
        Pair {
            table: "t1",
            approved: "DELETE FROM bound.t1 WHERE archived = true",
            other: "DELETE FROM bound.t1 WHERE archived = false",
            values: None,
        },
        Pair {
            table: "t2",
            approved: "DELETE FROM bound.t2 WHERE id=42 AND customer_id=7",
            other: "DELETE FROM bound.t2 WHERE customer_id=42 AND id=7",
            values: None,
        },
        Pair {
            table: "t3",
            approved: "UPDATE bound.t3 SET balance=0, credit_limit=100000 WHERE id = 1",
            other: "UPDATE bound.t3 SET credit_limit=0, balance=100000 WHERE id = 1",
            values: None,
        },
        Pair {
            table: "t4",
            approved: "INSERT INTO bound.t4(id, from_acct, to_acct) VALUES (100, 1, 2)",
            other: "INSERT INTO bound.t4(id, to_acct, from_acct) VALUES (100, 1, 2)",
            values: None,
        },
        Pair {
            table: "t5",
            approved: "UPDATE bound.t5 SET a=$1 WHERE id=$2",
            other: "UPDATE bound.t5 SET a=$2 WHERE id=$1",
            values: Some((42, 7)),
        },
    ];
    let results = futures::future::join_all(pairs.iter().map(|pair| held_apart(&env, &gate, pair))).await;
    for (pair, result) in pairs.iter().zip(results) {
        result.with_context(|| format!("{} / {}", pair.approved, pair.other))?;
    }

    // 2. What cannot be shown whole is refused, never cut.
    let (db, _notices) = gate.agent().await?;
    let before = gate.requests.list(&Default::default()).await?.items.len();
    let rows = gate.rows("t1").await?;
    let long = format!("DELETE FROM bound.t1 WHERE id=7{}OR true", " ".repeat(70 * 1024));
    let (code, message) = db_error(
        &db.simple_query(&long)
            .await
            .err()
            .context("a 70 KiB DELETE ran")?,
    );
    ensure!(
        code == "54000"
            && message.contains("too large to hold for approval")
            && message.contains("never shortens"),
        "the 70 KiB statement: {code} {message}"
    );
    let hidden = "DELETE FROM bound.t1 WHERE id = 7 /* \u{202E} */";
    let (code, message) = db_error(
        &db.simple_query(hidden)
            .await
            .err()
            .context("a hidden character ran")?,
    );
    ensure!(
        code == "42501" && message.contains("U+202E") && message.contains("would not see"),
        "a bidirectional override: {code} {message}"
    );
    // EXECUTE shows a name, not what runs: PREPARE is allowed, its EXECUTE
    // would need approval, and is refused rather than held.
    db.simple_query("PREPARE wipe AS DELETE FROM bound.t1 WHERE id = 7")
        .await?;
    let (code, message) = db_error(
        &db.simple_query("EXECUTE wipe")
            .await
            .err()
            .context("EXECUTE ran")?,
    );
    ensure!(
        code == "42501" && message.contains("runs a prepared statement (EXECUTE)"),
        "EXECUTE of a held statement: {code} {message}"
    );
    ensure!(
        gate.requests.list(&Default::default()).await?.items.len() == before,
        "a refused statement made an ApprovalRequest"
    );
    ensure!(gate.rows("t1").await? == rows, "nothing ran");

    // 3. The approver sees the structure, not a mask over it.
    let structure = "DELETE FROM bound.secrets WHERE(token=id)OR(true)";
    let (db, mut session) = gate.agent().await?;
    let task = tokio::spawn(async move {
        let result = db.simple_query(structure).await.map(|_| 0);
        (db, result)
    });
    let (name, _) = session_held(&mut session, &task).await?;
    let shown = gate.requests.get(&name).await?.spec.statement;
    ensure!(shown == structure, "the approver saw {shown:?}");
    let (_, code, _) = refusal(task).await?;
    ensure!(code == "57014", "{code}");
    Ok(())
}

pub async fn decisions_only_the_right_party_writes_are_rechecked_by_the_proxy(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    super::operator(&env).await?;
    let _operator_up = super::QUIET.read().await;
    let gate = Gate::start(
        &env,
        "approval-trust",
        "trusted",
        "30s",
        "CREATE TABLE trusted.t (id int PRIMARY KEY); INSERT INTO trusted.t SELECT generate_series(1, 5);",
    )
    .await?;
    let ns = gate.ns;
    // Another Connection of the namespace: the operator gives its proxy the
    // same rights on ApprovalRequests.
    kubectl(
        &env,
        &["apply", "--server-side", "-f", "-"],
        Some(&format!(
            r#"apiVersion: gatehouse.dev/v1alpha1
kind: Connection
metadata: {{name: other-db, namespace: {ns}}}
spec:
  type: postgres
  target: {{host: 127.0.0.1, port: 5432, database: other, tls: {{mode: disable}}}}
  credentialsRef: {{name: gate-db-creds}}
  recording: {{mode: "off"}}
"#
        )),
    )
    .await?;
    let admin = env.kube.client(User::Admin).await?;
    eventually(
        &Api::<ServiceAccount>::namespaced(admin, ns),
        "gatehouse-other-db",
        |_| Some(()),
    )
    .await?;
    let token = kubectl(
        &env,
        &["create", "token", "gatehouse-other-db", "-n", ns, "--duration=1h"],
        None,
    )
    .await?;
    let other = env.path().join("kubeconfig-approval-trust-other-db");
    env.kube
        .write_token_kubeconfig(&other, "gatehouse-other-db", &token, ns)?;
    let forge = |name: &str| {
        let name = name.to_owned();
        let other = other.clone();
        let env = env.clone();
        async move {
            kubectl_as(
                &env,
                &other,
                &[
                    "patch",
                    "approvalrequest",
                    &name,
                    "-n",
                    ns,
                    "--subresource=status",
                    "--type=merge",
                    "-p",
                    r#"{"status":{"phase":"Approved","message":"approved by alice"}}"#,
                ],
            )
            .await
        }
    };

    // 1. With the admission policy: the API server refuses another proxy's status write.
    let (first, task, _s1) = gate.hold("DELETE FROM trusted.t WHERE id = 1").await?;
    let out = forge(&first).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success()
            && stderr.contains("gatehouse-approvalrequests")
            && stderr.contains(&format!("not system:serviceaccount:{ns}:gatehouse-other-db")),
        "another Connection's proxy approving: {stderr}"
    );

    // 2. Without it (deleted, as a partial GitOps sync or an admin might):
    // the forged status gets in, and the proxy runs nothing on it.
    let removed = crate::ADMISSION.write().await;
    let result = async {
        kubectl(
            &env,
            &[
                "delete",
                "validatingadmissionpolicybinding",
                "gatehouse-approvalrequests",
            ],
            None,
        )
        .await?;
        let mut forged = false;
        for _ in 0..100 {
            if forge(&first).await?.status.success() {
                forged = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        ensure!(forged, "the API server kept refusing once the binding was gone");
        let (_, code, message) = refusal(task).await?;
        ensure!(
            code == "42501" && message.contains(&first) && message.contains("only 0 of the 1 approvals"),
            "the forged approval: {code} {message}"
        );
        ensure!(
            gate.rows("t").await? == "(1);(2);(3);(4);(5)",
            "the forged approval ran the DELETE"
        );

        // The operator approves nothing, says why, and expires a request
        // whose reviews nobody checked (alice writes one for bob too).
        let (second, task, _s2) = gate.hold("DELETE FROM trusted.t WHERE id = 2").await?;
        let suspended = eventually(&gate.requests, &second, |r| {
            let status = r.status.as_ref()?;
            condition(&status.conditions, "Approved")
                .filter(|c| c.reason == "AdmissionPolicyNotInForce")
                .cloned()
        })
        .await?;
        ensure!(
            suspended.status == "False" && suspended.message.contains("gatehouse-approvalrequests"),
            "{suspended:?}"
        );
        let alice = env.kube.kubeconfig(User::Alice);
        for user in ["bob", "alice"] {
            let patch = review(user, "Approved", "forged while the policy was away");
            let out = kubectl_as(&env, &alice, &review_args(ns, &second, &patch)).await?;
            ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        let lapsed = phase(&gate.requests, &second, Phase::Expired).await?;
        let status = lapsed.status.unwrap_or_default();
        ensure!(
            status
                .message
                .as_deref()
                .is_some_and(|m| m.contains("admission policy was not in force"))
                && condition(&status.conditions, "Expired")
                    .is_some_and(|c| c.reason == "AdmissionPolicyNotInForce"),
            "{status:?}"
        );
        let (_, code, message) = refusal(task).await?;
        ensure!(code == "42501" && message.contains(&second), "{code} {message}");
        ensure!(gate.rows("t").await? == "(1);(2);(3);(4);(5)", "nothing ran");
        anyhow::Ok(())
    }
    .await;
    env.kube.install_admission().await?;
    drop(removed);
    result?;

    // 3. The policy back, an approval by alice runs the statement.
    let (third, task, _s3) = gate.hold("DELETE FROM trusted.t WHERE id = 3").await?;
    gate.approve(&env, &third).await?;
    let (_, result) = tokio::time::timeout(Duration::from_secs(20), task).await??;
    result.context("the approved DELETE")?;
    ensure!(
        gate.rows("t").await? == "(1);(2);(4);(5)",
        "{}",
        gate.rows("t").await?
    );
    Ok(())
}
