//! The PostgreSQL gateway against the real database: psql and tokio-postgres
//! through an in-process proxy that holds the only credential.

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, ensure};
pub use gatehouse_e2e::gateway::{Proxy, start_proxy};
use gatehouse_e2e::{
    TestEnv,
    postgres::{APP_USER, DATABASE},
};
use tokio::sync::OnceCell;
use tokio_postgres::{NoTls, error::SqlState};

/// The token of the test agent (group `agents`).
pub const AGENT_TOKEN: &str = "e2e-agent-token-7c1d";

static PROXY: OnceCell<Proxy> = OnceCell::const_new();

/// The Policies of the gateway tests: agents read, never change the schema,
/// and need approval to write `public.orders`.
pub const POLICIES: &str = r#"policies:
  - name: agents-readonly
    spec:
      connectionSelector: {}
      subjects: [{kind: Group, name: agents}]
      rules:
        - {name: reads, match: {operations: [select, transaction, session]}, action: allow}
        - {name: no-ddl, match: {operations: [ddl, truncate, copyProgram, privilege, role]}, action: deny}
  - name: writes-need-approval
    spec:
      connectionSelector: {}
      subjects: [{kind: Group, name: agents}]
      rules:
        - name: orders-writes
          match: {operations: [insert, update, delete], tables: [public.orders]}
          action: requireApproval
          approvers: {groups: [dba], required: 1}
"#;

pub fn config_yaml(env: &TestEnv, port: u16, creds: &std::path::Path) -> String {
    let head = gatehouse_e2e::gateway::config_head(
        env,
        "orders-db",
        port,
        creds,
        AGENT_TOKEN,
        "planner",
        &["agents"],
    );
    format!("{head}admin: {{address: \"127.0.0.1:0\"}}\n{POLICIES}")
}

/// Starts the proxy in-process on first use.
pub async fn proxy(env: &TestEnv) -> anyhow::Result<&'static Proxy> {
    PROXY
        .get_or_try_init(|| start_proxy(env, "proxy", |port, creds| Ok(config_yaml(env, port, creds))))
        .await
}

/// A tokio-postgres client of the agent through the proxy on `port`.
pub async fn agent(port: u16, token: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("planner")
        .password(token)
        .dbname("whatever-the-agent-asks")
        .connect(NoTls)
        .await?;
    tokio::spawn(connection);
    Ok(client)
}

/// psql through the proxy; returns (success, stdout, stderr).
pub(crate) async fn psql(port: u16, token: &str, sql: &str) -> anyhow::Result<(bool, String, String)> {
    let out = tokio::process::Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=0",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "planner",
        ])
        .arg("orders")
        .env("PGPASSWORD", token)
        .env("PGSSLMODE", "prefer")
        .args(["-c", sql])
        .output()
        .await?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

pub async fn psql_reads_through_the_proxy_with_the_injected_credential(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    let proxy = proxy(&env).await?;
    let (ok, out, err) = psql(proxy.port, AGENT_TOKEN, "SELECT count(*) FROM orders").await?;
    ensure!(ok && out.trim() == "1000", "psql: {out} {err}");
    // The server sees the proxy's role, whatever user and database the agent named.
    let (_, out, _) = psql(
        proxy.port,
        AGENT_TOKEN,
        "SELECT current_user || '@' || current_database()",
    )
    .await?;
    ensure!(out.trim() == format!("{APP_USER}@{DATABASE}"), "{out}");
    Ok(())
}

pub async fn refused_statements_get_42501_and_the_session_goes_on(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let proxy = proxy(&env).await?;
    let client = agent(proxy.port, AGENT_TOKEN).await?;
    let err = client
        .batch_execute("DROP TABLE orders")
        .await
        .err()
        .context("DROP TABLE ran")?;
    let db = err.as_db_error().context("not a server error")?;
    ensure!(db.code() == &SqlState::INSUFFICIENT_PRIVILEGE, "{db:?}");
    ensure!(
        db.message().contains("agents-readonly") && db.message().contains("no-ddl"),
        "{}",
        db.message()
    );
    ensure!(db.hint().is_some(), "no hint in {db:?}");
    // requireApproval is refused until approvals arrive with the operator.
    let err = client
        .batch_execute("DELETE FROM orders WHERE id = 1")
        .await
        .err()
        .context("DELETE ran")?;
    let db = err.as_db_error().context("not a server error")?;
    ensure!(
        db.code() == &SqlState::INSUFFICIENT_PRIVILEGE && db.message().contains("orders-writes"),
        "{db:?}"
    );
    // The table is intact and the session still works.
    let count: i64 = client.query_one("SELECT count(*) FROM orders", &[]).await?.get(0);
    ensure!(count == 1000, "orders has {count} rows");
    // Multi-statement: the worst part decides, so nothing runs.
    let err = client
        .batch_execute("SELECT 1; DROP TABLE customers")
        .await
        .err()
        .context("ran")?;
    ensure!(err.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{err}");
    let count: i64 = client
        .query_one("SELECT count(*) FROM customers", &[])
        .await?
        .get(0);
    ensure!(count == 100, "customers has {count} rows");
    // A literal that contains a keyword is just a literal.
    let row = client
        .query_one("SELECT 'DROP TABLE orders; DELETE FROM orders' AS s", &[])
        .await?;
    ensure!(row.get::<_, String>(0).starts_with("DROP"), "literal changed");
    Ok(())
}

pub async fn a_refusal_inside_a_transaction_fails_it_on_both_sides(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let proxy = proxy(&env).await?;
    let client = agent(proxy.port, AGENT_TOKEN).await?;
    client.batch_execute("BEGIN").await?;
    client.query_one("SELECT 1", &[]).await?;
    let err = client
        .batch_execute("TRUNCATE orders")
        .await
        .err()
        .context("TRUNCATE ran")?;
    ensure!(err.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{err}");
    // As PostgreSQL itself would: the transaction is failed until it ends.
    let err = client
        .query_one("SELECT 1", &[])
        .await
        .err()
        .context("the failed transaction went on")?;
    ensure!(err.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION), "{err}");
    client.batch_execute("ROLLBACK").await?;
    client.query_one("SELECT 1", &[]).await?;
    Ok(())
}

pub async fn extended_protocol_decides_on_parse(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let proxy = proxy(&env).await?;
    let client = agent(proxy.port, AGENT_TOKEN).await?;
    let statement = client.prepare("SELECT item FROM orders WHERE id = $1").await?;
    let item: String = client.query_one(&statement, &[&7i64]).await?.get(0);
    ensure!(item == "item-7", "{item}");
    // Refused at Parse: nothing reaches the server.
    let err = client
        .prepare("DELETE FROM orders WHERE id = $1")
        .await
        .err()
        .context("prepared a DELETE")?;
    ensure!(err.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{err}");
    let err = client
        .execute("DELETE FROM orders WHERE id = $1", &[&1i64])
        .await
        .err()
        .context("ran a DELETE")?;
    ensure!(err.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{err}");
    // Pipelined queries keep their order and answers.
    let (a, b) = tokio::try_join!(
        client.query_one("SELECT count(*) FROM orders WHERE status = $1", &[&"shipped"]),
        client.query_one("SELECT count(*) FROM customers WHERE id <= $1", &[&10i64]),
    )?;
    ensure!(
        a.get::<_, i64>(0) == 200 && b.get::<_, i64>(0) == 10,
        "pipelined answers are off"
    );
    let count: i64 = client.query_one("SELECT count(*) FROM orders", &[]).await?.get(0);
    ensure!(count == 1000, "orders has {count} rows");
    Ok(())
}

pub async fn missing_and_altered_tokens_are_refused(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let proxy = proxy(&env).await?;
    let err = agent(proxy.port, "e2e-agent-token-7c1D")
        .await
        .err()
        .context("an altered token was accepted")?;
    ensure!(err.code() == Some(&SqlState::INVALID_PASSWORD), "{err}");
    let err = agent(proxy.port, "")
        .await
        .err()
        .context("an empty token was accepted")?;
    ensure!(
        err.code() == Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{err}"
    );
    let (ok, _, stderr) = psql(proxy.port, "wrong", "SELECT 1").await?;
    ensure!(!ok && stderr.contains("token is not valid"), "{stderr}");
    // The proxy's credential shows up nowhere the client can see.
    ensure!(!stderr.contains(&env.postgres.app_password), "credential leaked");
    Ok(())
}

pub async fn a_policy_change_applies_to_open_sessions(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let proxy = proxy(&env).await?;
    let client = agent(proxy.port, AGENT_TOKEN).await?;
    client
        .query_one("SELECT count(*) FROM api_credentials", &[])
        .await?;
    let original = std::fs::read_to_string(&proxy.config_file)?;
    // Deny every read of public.api_credentials from now on.
    let edited = original.replace(
        "        - {name: no-ddl,",
        "        - {name: no-credentials, match: {tables: [public.api_credentials]}, action: deny}\n        - {name: no-ddl,",
    );
    ensure!(edited != original, "the edit did not apply");
    gatehouse_e2e::gateway::replace_config(&proxy.config_file, &edited)?;
    let mut refused = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Err(e) = client
            .query_one("SELECT count(*) FROM api_credentials", &[])
            .await
        {
            ensure!(e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{e}");
            refused = true;
            break;
        }
    }
    // An invalid configuration keeps the last good one.
    gatehouse_e2e::gateway::replace_config(&proxy.config_file, "listen: [not, a, config]")?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let still = client
        .query_one("SELECT count(*) FROM api_credentials", &[])
        .await;
    gatehouse_e2e::gateway::replace_config(&proxy.config_file, &original)?;
    ensure!(refused, "the new rule was not enforced within 5 s");
    ensure!(
        still.is_err(),
        "an invalid configuration replaced the last good one"
    );
    // Back to the original: reads of api_credentials work again on the same session.
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if client
            .query_one("SELECT count(*) FROM api_credentials", &[])
            .await
            .is_ok()
        {
            return Ok(());
        }
    }
    anyhow::bail!("restoring the configuration did not restore reads")
}
