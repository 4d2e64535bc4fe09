//! Real client drivers (psycopg 3, node-postgres, pgx v5), pgbench, and
//! protocol edge cases through in-process proxies, against the real database.
//!
//! The drivers run one fixed scenario (e2e/drivers/README.md) directly and
//! through the proxy; the two JSON documents must be equal except for the
//! refusals' messages. The refused statement is a `DROP TABLE orders`, which
//! the app role may not run either (it owns nothing), so both sides refuse it
//! with 42501 at the same point and the rest of the session must be the same.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use gatehouse_e2e::{
    TestEnv,
    postgres::{APP_USER, DATABASE},
};
use gatehouse_proxy::config::ProxyConfig;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::OnceCell,
};
use tokio_postgres::{AsyncMessage, NoTls, error::SqlState};

use crate::proxy::{AGENT_TOKEN, agent, start_proxy};

/// An in-process proxy of this module's own.
struct Gate {
    port: u16,
}

/// The policy of the drivers and protocol proxy: reads, COPY out, and COPY in
/// to one scratch table. `prepare` (PREPARE, EXECUTE, DEALLOCATE) is needed by
/// psycopg, which sends `DEALLOCATE` for its prepared statements on rollback.
const EDGE_POLICY: &str = r#"
  - name: drivers-readonly
    spec:
      connectionSelector: {}
      subjects: [{kind: Group, name: agents}]
      rules:
        - {name: reads, match: {operations: [select, transaction, session, prepare, copyTo]}, action: allow}
        - {name: scratch-copy-in, match: {operations: [copyFrom], tables: [public.scratch_copy]}, action: allow}
        - {name: no-ddl, match: {operations: [ddl, truncate, copyProgram, privilege, role]}, action: deny}
"#;

/// The pgbench proxy's policy: reads only.
const BENCH_POLICY: &str = r#"
  - name: bench-readonly
    spec:
      connectionSelector: {}
      subjects: [{kind: Group, name: agents}]
      rules:
        - {name: reads, match: {operations: [select, transaction, session]}, action: allow}
"#;

/// The database `pgbench -i` fills.
const BENCH_DATABASE: &str = "bench";

static EDGE: OnceCell<Gate> = OnceCell::const_new();
static BENCH: OnceCell<Gate> = OnceCell::const_new();
static TIGHT: OnceCell<Gate> = OnceCell::const_new();
static DRIVERS: OnceCell<PathBuf> = OnceCell::const_new();

/// Starts a proxy for `database` with `policies` (YAML list items), after
/// `tune` had its say on the parsed configuration.
async fn start_gate(
    env: &TestEnv,
    name: &str,
    database: &str,
    policies: &str,
    tune: impl FnOnce(&mut ProxyConfig),
) -> anyhow::Result<Gate> {
    let started = start_proxy(env, &format!("proxy-{name}"), |port, creds| {
        let hash = hex::encode(Sha256::digest(AGENT_TOKEN.as_bytes()));
        let yaml = format!(
            r#"connection: {{namespace: e2e, name: {name}}}
listen: {{address: "127.0.0.1:{port}", allowPlaintext: true}}
admin: {{address: "127.0.0.1:0"}}
upstream:
  host: 127.0.0.1
  port: {pg}
  database: {database}
  tls: {{mode: disable}}
  credentials: {{usernameFile: {creds}/username, passwordFile: {creds}/password}}
auth:
  staticTokens:
    - {{sha256: {hash}, username: planner, groups: [agents]}}
policies:{policies}"#,
            pg = env.postgres.port,
            creds = creds.display(),
        );
        let mut config = ProxyConfig::from_yaml(&yaml)?;
        tune(&mut config);
        Ok(serde_norway::to_string(&config)?)
    })
    .await?;
    let port = started.port;
    Ok(Gate { port })
}

async fn edge(env: &TestEnv) -> anyhow::Result<&'static Gate> {
    EDGE.get_or_try_init(|| start_gate(env, "edge", DATABASE, EDGE_POLICY, |_| {}))
        .await
}

/// A proxy with short limits, for hostile clients.
async fn tight(env: &TestEnv) -> anyhow::Result<&'static Gate> {
    TIGHT
        .get_or_try_init(|| {
            start_gate(env, "tight", DATABASE, EDGE_POLICY, |config| {
                config.limits.startup_timeout = Duration::from_secs(1);
                config.limits.max_message_bytes = 64 << 10;
            })
        })
        .await
}

/// The superuser on `orders`, for setup and for checks behind the proxy's back.
async fn superuser(env: &TestEnv) -> anyhow::Result<tokio_postgres::Client> {
    Ok(env.postgres.superuser(DATABASE).await?)
}

async fn orders_count(env: &TestEnv) -> anyhow::Result<i64> {
    Ok(superuser(env)
        .await?
        .query_one("SELECT count(*) FROM orders", &[])
        .await?
        .get(0))
}

fn db_error(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => err.to_string(),
    }
}

/// Asserts that `result` is a Gatehouse refusal (42501, with a message that
/// could only come from the proxy).
fn ensure_refused<T>(result: Result<T, tokio_postgres::Error>, what: &str) -> anyhow::Result<()> {
    let Err(err) = result else {
        bail!("{what}: ran through the proxy");
    };
    let db = err
        .as_db_error()
        .with_context(|| format!("{what}: not a server error: {err}"))?;
    ensure!(
        db.code() == &SqlState::INSUFFICIENT_PRIVILEGE && db.message().contains("Gatehouse"),
        "{what}: expected a Gatehouse 42501, got {} {}",
        db.code().code(),
        db.message()
    );
    Ok(())
}

// ---------------------------------------------------------------- drivers

/// Installs the drivers (cached by their pins) and returns their folder.
pub(crate) async fn drivers_dir() -> anyhow::Result<&'static Path> {
    DRIVERS
        .get_or_try_init(|| async {
            let script = crate::repo().join("e2e/tools/drivers.sh");
            let out = tokio::process::Command::new("bash")
                .arg(&script)
                .stdin(Stdio::null())
                .output()
                .await
                .with_context(|| format!("run {}", script.display()))?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            match stdout.lines().last() {
                Some(dir) if out.status.success() => anyhow::Ok(PathBuf::from(dir.trim())),
                _ => bail!(
                    "installing the client drivers failed: bash {} exited with {}:\n{}",
                    script.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ),
            }
        })
        .await
        .map(PathBuf::as_path)
}

#[derive(Debug, Clone, Copy)]
enum Driver {
    Psycopg,
    NodePostgres,
    Pgx,
}

/// Where to connect and as whom.
struct Target<'a> {
    port: u16,
    user: &'a str,
    password: &'a str,
    database: &'a str,
}

async fn run_driver(driver: Driver, target: &Target<'_>) -> anyhow::Result<Value> {
    let dir = drivers_dir().await?;
    let scenarios = crate::repo().join("e2e/drivers");
    let mut command = match driver {
        Driver::Psycopg => {
            let mut c = tokio::process::Command::new(dir.join("py/bin/python"));
            c.arg(scenarios.join("python/scenario.py"));
            c
        }
        Driver::NodePostgres => {
            let mut c = tokio::process::Command::new("node");
            c.arg(scenarios.join("node/scenario.js"))
                .env("NODE_PATH", dir.join("node/node_modules"));
            c
        }
        Driver::Pgx => tokio::process::Command::new(dir.join("go/scenario")),
    };
    for name in [
        "PGSERVICE",
        "PGSERVICEFILE",
        "PGPASSFILE",
        "PGOPTIONS",
        "PGSSLROOTCERT",
    ] {
        command.env_remove(name);
    }
    command
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", target.port.to_string())
        .env("PGUSER", target.user)
        .env("PGPASSWORD", target.password)
        .env("PGDATABASE", target.database)
        .env("PGSSLMODE", "disable")
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .with_context(|| format!("{driver:?} scenario did not finish within 120 s"))?
        .with_context(|| format!("start the {driver:?} scenario"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "{driver:?} scenario on port {} failed ({}):\n{stdout}\n{}",
        target.port,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).with_context(|| format!("{driver:?} printed no JSON: {stdout}"))
}

/// Takes the refusals' messages out of a scenario document, checking each
/// refusal's SQLSTATE; the rest of the document must then match exactly.
fn take_refusals(doc: &mut Value, driver: Driver, side: &str) -> anyhow::Result<Vec<String>> {
    let mut messages = Vec::new();
    for (path, code) in [
        ("/tx/refused", "42501"),
        ("/tx/after", "25P02"),
        ("/ddl/refused", "42501"),
    ] {
        let error = doc
            .pointer_mut(path)
            .and_then(Value::as_object_mut)
            .with_context(|| format!("{driver:?} {side}: {path} did not fail"))?;
        let message = error
            .remove("message")
            .and_then(|m| m.as_str().map(str::to_owned))
            .with_context(|| format!("{driver:?} {side}: {path} has no message"))?;
        ensure!(
            error.get("code").and_then(Value::as_str) == Some(code),
            "{driver:?} {side}: {path} should be {code}: {error:?} {message}"
        );
        messages.push(message);
    }
    Ok(messages)
}

async fn driver_agrees_directly_and_through_the_proxy(env: &TestEnv, driver: Driver) -> anyhow::Result<()> {
    let gate = edge(env).await?;
    let direct = Target {
        port: env.postgres.port,
        user: APP_USER,
        password: &env.postgres.app_password,
        database: DATABASE,
    };
    let proxied = Target {
        port: gate.port,
        user: "planner",
        password: AGENT_TOKEN,
        database: "whatever-the-agent-asks",
    };
    let (direct, proxied) = tokio::try_join!(run_driver(driver, &direct), run_driver(driver, &proxied))?;
    let (mut direct, mut proxied) = (direct, proxied);
    let direct_messages = take_refusals(&mut direct, driver, "direct")?;
    let proxied_messages = take_refusals(&mut proxied, driver, "proxied")?;
    // Same role, same rows, same types, same transaction behaviour.
    ensure!(
        direct == proxied,
        "{driver:?}: direct and proxied runs differ:\ndirect:  {direct}\nproxied: {proxied}"
    );
    // The refusals differ in who refused: the server by ownership, the proxy by policy.
    ensure!(
        direct_messages[0].contains("must be owner") && direct_messages[2].contains("must be owner"),
        "{driver:?} direct refusals: {direct_messages:?}"
    );
    ensure!(
        proxied_messages[0].contains("drivers-readonly")
            && proxied_messages[0].contains("no-ddl")
            && proxied_messages[2].contains("drivers-readonly"),
        "{driver:?} proxied refusals do not name the policy: {proxied_messages:?}"
    );
    ensure!(
        direct_messages[1].contains("current transaction is aborted")
            && proxied_messages[1] == direct_messages[1],
        "{driver:?} 25P02 messages: {direct_messages:?} {proxied_messages:?}"
    );
    // And what both returned is right, not merely equal.
    let expect = |path: &str, value: Value| -> anyhow::Result<()> {
        let got = proxied.pointer(path);
        ensure!(
            got == Some(&value),
            "{driver:?}: {path} is {got:?}, expected {value}"
        );
        Ok(())
    };
    expect("/user", APP_USER.into())?;
    expect(
        "/prepared",
        serde_json::json!(["item-1", "item-7", "item-7", "item-14"]),
    )?;
    expect("/tx/after_rollback", 1.into())?;
    expect("/ddl/count_after", 1000.into())?;
    expect("/types/null", Value::Null)?;
    expect("/types/text", "Zürich – 🐘 日本語 ‘quotes’ \\ $1".into())?;
    expect("/types/bytea", "0001275c7f80ff".into())?;
    expect("/types/numeric", "-12345678901234567890.000123".into())?;
    expect("/types/timestamptz_ms", 1_709_210_096_789_i64.into())?;
    expect("/types/is_null", true.into())?;
    expect("/types/same", serde_json::json!([true, true, true, true]))?;
    let rows = proxied.pointer("/rows").and_then(Value::as_array);
    ensure!(
        rows.is_some_and(|r| r.len() == 25 && r[24] == serde_json::json!([25, "item-8", "shipped"])),
        "{driver:?}: rows {rows:?}"
    );
    // Customer 5 has orders 4, 104, ..., 904; those not divisible by 5 are open.
    let ids: Vec<i64> = proxied
        .pointer("/param_select")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.get(0).and_then(Value::as_i64))
        .collect();
    ensure!(
        ids == [4, 104, 204, 304, 404, 504, 604, 704, 804, 904],
        "{driver:?}: param_select ids {ids:?}"
    );
    if !matches!(driver, Driver::NodePostgres) {
        expect(
            "/copy",
            "1\titem-1\n2\titem-2\n3\titem-3\n4\titem-4\n5\titem-5\n".into(),
        )?;
    }
    ensure!(orders_count(env).await? == 1000, "orders lost rows");
    Ok(())
}

pub async fn psycopg_runs_the_same_scenario_directly_and_through_the_proxy(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    driver_agrees_directly_and_through_the_proxy(&env, Driver::Psycopg).await
}

pub async fn node_postgres_runs_the_same_scenario_directly_and_through_the_proxy(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    driver_agrees_directly_and_through_the_proxy(&env, Driver::NodePostgres).await
}

pub async fn pgx_runs_the_same_scenario_directly_and_through_the_proxy(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    driver_agrees_directly_and_through_the_proxy(&env, Driver::Pgx).await
}

// ---------------------------------------------------------------- pgbench

async fn bench(env: &TestEnv) -> anyhow::Result<&'static Gate> {
    BENCH
        .get_or_try_init(|| async {
            let admin = env.postgres.superuser("postgres").await?;
            admin
                .batch_execute(&format!("CREATE DATABASE {BENCH_DATABASE} OWNER {APP_USER}"))
                .await?;
            // Initialised directly, as the app role (which then owns the tables).
            let out = pgbench(
                env.postgres.port,
                APP_USER,
                &env.postgres.app_password,
                &["-i", "-s", "1", "-q"],
            )
            .await?;
            ensure!(out.0, "pgbench -i failed:\n{}\n{}", out.1, out.2);
            start_gate(env, "bench", BENCH_DATABASE, BENCH_POLICY, |_| {}).await
        })
        .await
}

/// Runs pgbench against `port`; returns (success, stdout, stderr).
async fn pgbench(
    port: u16,
    user: &str,
    password: &str,
    args: &[&str],
) -> anyhow::Result<(bool, String, String)> {
    let program = gatehouse_e2e::tools::Tools::get()?.pg("pgbench");
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(&program)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", user])
            .args(args)
            .arg(BENCH_DATABASE)
            .env("PGPASSWORD", password)
            .env("PGSSLMODE", "disable")
            .env_remove("PGOPTIONS")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("pgbench did not finish within 120 s")?
    .with_context(|| format!("run {}", program.display()))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

pub async fn pgbench_select_only_runs_through_the_proxy_in_every_protocol(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    let gate = bench(&env).await?;
    for protocol in ["simple", "extended", "prepared"] {
        let (ok, out, err) = pgbench(
            gate.port,
            "planner",
            AGENT_TOKEN,
            &["-S", "-n", "-t", "200", "-c", "2", "--protocol", protocol],
        )
        .await?;
        ensure!(ok, "pgbench -S --protocol {protocol} failed:\n{out}\n{err}");
        ensure!(
            out.contains("number of transactions actually processed: 400/400"),
            "pgbench --protocol {protocol} did not process 400 transactions:\n{out}"
        );
        // pgbench 15 reports failed transactions on its own line; older ones do not.
        if let Some(line) = out
            .lines()
            .find(|l| l.starts_with("number of failed transactions"))
        {
            ensure!(line.contains(": 0 "), "pgbench --protocol {protocol}: {line}");
        }
    }
    Ok(())
}

pub async fn pgbench_tpcb_writes_are_refused_by_the_proxy(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let gate = bench(&env).await?;
    let before: i64 = env
        .postgres
        .superuser(BENCH_DATABASE)
        .await?
        .query_one("SELECT count(*) FROM pgbench_history", &[])
        .await?
        .get(0);
    let (ok, out, err) = pgbench(gate.port, "planner", AGENT_TOKEN, &["-n", "-t", "10", "-c", "1"]).await?;
    ensure!(!ok, "the TPC-B script ran through a read-only proxy:\n{out}");
    ensure!(
        err.contains("permission denied by Gatehouse") && err.contains("aborted"),
        "pgbench did not report the refusal:\n{out}\n{err}"
    );
    // The statement pgbench was refused is a 42501 for a driver too.
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(gate.port)
        .user("planner")
        .password(AGENT_TOKEN)
        .dbname(BENCH_DATABASE)
        .connect(NoTls)
        .await?;
    tokio::spawn(connection);
    ensure_refused(
        client
            .batch_execute("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1")
            .await,
        "pgbench's UPDATE",
    )?;
    let after: i64 = env
        .postgres
        .superuser(BENCH_DATABASE)
        .await?
        .query_one("SELECT count(*) FROM pgbench_history", &[])
        .await?
        .get(0);
    ensure!(after == before, "pgbench_history grew from {before} to {after}");
    Ok(())
}

// ---------------------------------------------------------------- protocol cases

pub async fn copy_in_and_out_through_the_proxy(env: Arc<TestEnv>) -> anyhow::Result<()> {
    use futures::{SinkExt as _, TryStreamExt as _};

    let gate = edge(&env).await?;
    superuser(&env)
        .await?
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS scratch_copy; CREATE TABLE scratch_copy (id int, body text); \
             GRANT SELECT, INSERT ON scratch_copy TO {APP_USER}"
        ))
        .await?;
    let client = agent(gate.port, AGENT_TOKEN).await?;
    let rows: String = (1..=500)
        .map(|i| format!("{i}\tline {i} with tab\\tand unicode é 🐘\n"))
        .collect();
    let sink = client.copy_in("COPY scratch_copy FROM STDIN").await?;
    futures::pin_mut!(sink);
    for chunk in rows.as_bytes().chunks(1000) {
        sink.send(bytes::Bytes::copy_from_slice(chunk)).await?;
    }
    let copied = sink.finish().await?;
    ensure!(copied == 500, "COPY FROM STDIN copied {copied} rows");
    let stream = client
        .copy_out("COPY (SELECT * FROM scratch_copy ORDER BY id) TO STDOUT")
        .await?;
    let back: Vec<bytes::Bytes> = stream.try_collect().await?;
    let back: Vec<u8> = back.concat();
    ensure!(back == rows.as_bytes(), "COPY TO STDOUT gave back other rows");
    // COPY elsewhere than the client is refused whatever its direction.
    ensure_refused(
        client.batch_execute("COPY scratch_copy TO PROGRAM 'id'").await,
        "COPY TO PROGRAM",
    )?;
    ensure_refused(
        client.batch_execute("COPY scratch_copy FROM '/etc/passwd'").await,
        "COPY FROM a file",
    )?;
    // COPY FROM STDIN into a table the policy does not open.
    ensure_refused(
        client.copy_in::<_, bytes::Bytes>("COPY orders FROM STDIN").await,
        "COPY INTO orders",
    )?;
    let count: i64 = client
        .query_one("SELECT count(*) FROM scratch_copy", &[])
        .await?
        .get(0);
    ensure!(count == 500, "scratch_copy has {count} rows");
    ensure!(orders_count(&env).await? == 1000, "orders lost rows");
    Ok(())
}

pub async fn a_cancelled_query_gets_57014_and_the_session_goes_on(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let gate = edge(&env).await?;
    let client = agent(gate.port, AGENT_TOKEN).await?;
    let token = client.cancel_token();
    let started = Instant::now();
    let sleeper = tokio::spawn(async move {
        let result = client.batch_execute("SELECT pg_sleep(30)").await;
        (client, result)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel_query(NoTls).await?;
    let (client, result) = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .context("the cancelled query still ran after 10 s")??;
    let err = result.err().context("pg_sleep(30) finished despite the cancel")?;
    ensure!(
        err.code() == Some(&SqlState::QUERY_CANCELED),
        "{}",
        db_error(&err)
    );
    ensure!(
        started.elapsed() < Duration::from_secs(5),
        "the cancel took {:?}",
        started.elapsed()
    );
    let one: i32 = client.query_one("SELECT 1", &[]).await?.get(0);
    ensure!(one == 1, "the session does not answer after the cancel");
    Ok(())
}

pub async fn a_notification_arrives_through_the_proxy(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let gate = edge(&env).await?;
    let (client, mut connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(gate.port)
        .user("planner")
        .password(AGENT_TOKEN)
        .dbname("orders")
        .connect(NoTls)
        .await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    // LISTEN is a session operation (allowed); NOTIFY has a side effect on
    // other sessions (sideEffectFunction, which this policy does not allow).
    client.batch_execute("LISTEN gatehouse_e2e").await?;
    ensure_refused(
        client
            .batch_execute("NOTIFY gatehouse_e2e, 'from the agent'")
            .await,
        "NOTIFY",
    )?;
    ensure_refused(
        client
            .query("SELECT pg_notify('gatehouse_e2e', 'from the agent')", &[])
            .await,
        "pg_notify",
    )?;
    let direct = env.postgres.app().await?;
    direct
        .batch_execute("NOTIFY gatehouse_e2e, 'hello through the proxy ✓'")
        .await?;
    let (channel, payload) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .context("no notification within 5 s")?
        .context("the connection ended")?;
    ensure!(
        channel == "gatehouse_e2e" && payload == "hello through the proxy ✓",
        "{channel} {payload}"
    );
    ensure!(rx.try_recv().is_err(), "the refused NOTIFY was delivered");
    Ok(())
}

/// A hand-driven client: only for the cases no real client produces (a
/// FunctionCall, broken frames), where the client under test is the hostile one.
struct Raw {
    stream: TcpStream,
}

impl Raw {
    async fn connect(port: u16) -> anyhow::Result<Raw> {
        Ok(Raw {
            stream: TcpStream::connect(("127.0.0.1", port)).await?,
        })
    }

    /// A StartupMessage with protocol `version` and `params`.
    fn startup_packet(version: u32, params: &[(&str, &str)]) -> Vec<u8> {
        let mut body = version.to_be_bytes().to_vec();
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut packet = u32::try_from(body.len() + 4)
            .unwrap_or(u32::MAX)
            .to_be_bytes()
            .to_vec();
        packet.extend_from_slice(&body);
        packet
    }

    /// Startup and authentication with the agent token, up to ReadyForQuery.
    async fn login(port: u16, params: &[(&str, &str)]) -> anyhow::Result<Raw> {
        let mut raw = Raw::connect(port).await?;
        let mut all = vec![("user", "planner"), ("database", "orders")];
        all.extend_from_slice(params);
        raw.stream.write_all(&Self::startup_packet(196_608, &all)).await?;
        let (tag, body) = raw.read().await?.context("closed before authentication")?;
        ensure!(
            tag == b'R' && body == 3u32.to_be_bytes(),
            "expected a cleartext password request"
        );
        let mut password = AGENT_TOKEN.as_bytes().to_vec();
        password.push(0);
        raw.send(b'p', &password).await?;
        loop {
            match raw.read().await?.context("closed during startup")? {
                (b'Z', _) => return Ok(raw),
                (b'E', body) => bail!("startup failed: {:?}", error_fields(&body)),
                _ => {}
            }
        }
    }

    async fn send(&mut self, tag: u8, body: &[u8]) -> anyhow::Result<()> {
        let mut frame = vec![tag];
        frame.extend_from_slice(&u32::try_from(body.len() + 4)?.to_be_bytes());
        frame.extend_from_slice(body);
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    /// The next backend message; `None` when the proxy closed the connection.
    async fn read(&mut self) -> anyhow::Result<Option<(u8, Vec<u8>)>> {
        let read = async {
            let mut head = [0u8; 5];
            match self.stream.read_exact(&mut head).await {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(e.into()),
            }
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            ensure!((4..1 << 20).contains(&len), "backend frame length {len}");
            let mut body = vec![0u8; len - 4];
            self.stream.read_exact(&mut body).await?;
            anyhow::Ok(Some((head[0], body)))
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .context("no answer within 10 s")?
    }

    /// Reads up to ReadyForQuery; returns the messages before it.
    async fn until_ready(&mut self) -> anyhow::Result<Vec<(u8, Vec<u8>)>> {
        let mut seen = Vec::new();
        loop {
            match self.read().await?.context("closed before ReadyForQuery")? {
                (b'Z', _) => return Ok(seen),
                other => seen.push(other),
            }
        }
    }
}

/// The fields of an ErrorResponse body, as (code, value).
fn error_fields(body: &[u8]) -> Vec<(char, String)> {
    body.split(|b| *b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| (char::from(f[0]), String::from_utf8_lossy(&f[1..]).into_owned()))
        .collect()
}

fn error_code(body: &[u8]) -> Option<String> {
    error_fields(body)
        .into_iter()
        .find(|(k, _)| *k == 'C')
        .map(|(_, v)| v)
}

fn query_body(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    body
}

pub async fn a_function_call_message_is_refused(env: Arc<TestEnv>) -> anyhow::Result<()> {
    // No driver here sends FunctionCall (libpq's PQfn, used by its large-object
    // functions, is the last user), so it is sent by hand after a real startup.
    let gate = edge(&env).await?;
    let mut raw = Raw::login(gate.port, &[]).await?;
    let oid: u32 = superuser(&env)
        .await?
        .query_one("SELECT 'pg_backend_pid()'::regprocedure::oid", &[])
        .await?
        .get(0);
    let mut body = oid.to_be_bytes().to_vec();
    body.extend_from_slice(&0u16.to_be_bytes()); // argument format codes
    body.extend_from_slice(&0u16.to_be_bytes()); // no arguments
    body.extend_from_slice(&0u16.to_be_bytes()); // result format
    raw.send(b'F', &body).await?;
    let answer = raw.until_ready().await?;
    let error = answer
        .iter()
        .find(|(tag, _)| *tag == b'E')
        .with_context(|| format!("FunctionCall was not refused: {answer:?}"))?;
    ensure!(
        error_code(&error.1).as_deref() == Some("42501"),
        "FunctionCall: {:?}",
        error_fields(&error.1)
    );
    ensure!(
        !answer.iter().any(|(tag, _)| *tag == b'V'),
        "FunctionCall returned a result"
    );
    // The session goes on.
    raw.send(b'Q', &query_body("SELECT 41 + 1")).await?;
    let answer = raw.until_ready().await?;
    ensure!(
        answer
            .iter()
            .any(|(tag, body)| *tag == b'D' && body.ends_with(b"42")),
        "no row after the refused FunctionCall: {answer:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------- evasion

/// Statements that must not run for a read-only agent, however they are sent.
const EVASIONS: &[&str] = &[
    "WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT lo_import('/etc/passwd')",
    "SELECT set_config('role', 'postgres', false)",
    "SELECT * FROM orders FOR UPDATE",
    "EXPLAIN ANALYZE DELETE FROM orders",
    "DO $$ BEGIN DELETE FROM orders; END $$",
    "COPY orders TO PROGRAM 'id'",
    "PREPARE p AS DELETE FROM orders",
    "EXECUTE p",
    "SELECT id FROM orders WHERE pg_read_file('/etc/passwd') IS NOT NULL",
    "SELECT id FROM orders ORDER BY pg_read_file('/etc/passwd')",
    "SELECT length(pg_read_file('/etc/passwd'))",
    "SELECT coalesce(NULL, lo_import('/etc/passwd'))",
    "SELECT * FROM orders WHERE id IN (SELECT pg_terminate_backend(pid) FROM pg_stat_activity)",
    "SELECT upper(set_config('role', 'postgres', false))",
    "SELECT (SELECT count(*) FROM pg_ls_dir('.')) AS n",
    // Functions the database's catalog does not vouch for (e2e/sql/seed.sql):
    // a user's VOLATILE purge, in any position...
    "SELECT purge_orders()",
    "SELECT id FROM orders WHERE purge_orders() > 0",
    "SELECT public.purge_orders() AS n",
    // ...an aggregate and an operator that call it...
    "SELECT purge_all(id) FROM orders",
    "SELECT count(*) FROM orders WHERE id ### 1",
    // ...a function of the row, in attribute notation...
    "SELECT o.purge_order FROM orders o WHERE id = 1",
    "SELECT (o).purge_order FROM orders o WHERE id = 1",
    "SELECT o.purge_some FROM orders o WHERE id = 1",
    // ...an operator whose negator the planner puts in its place...
    "SELECT count(*) FROM orders WHERE NOT (id === 3)",
    // ...a STABLE built-in that takes a transaction id from the cluster...
    "SELECT txid_current()",
    // ...extensions' functions, one of them STABLE and running its text...
    "SELECT heap_force_kill('orders'::regclass, ARRAY['(0,1)']::tid[])",
    "SELECT pg_stat_statements_reset()",
    "SELECT * FROM crosstab('SELECT 1::text, 2::text, purge_orders()::text') AS t(a text, b text)",
    // ...built-ins no list named, and a name the catalog does not hold.
    "SELECT pg_nextoid('pg_class'::regclass, 'oid', 'pg_class_oid_index'::regclass)",
    "SELECT pg_export_snapshot()",
    "SELECT no_such_function()",
    // Two-phase commit finishes other sessions' prepared transactions; the
    // agent's rule for `transaction` does not cover it.
    "PREPARE TRANSACTION 'x'",
    "COMMIT PREPARED 'x'",
    "ROLLBACK PREPARED 'x'",
];

/// Whether `sql` can follow `PREPARE name AS`.
fn preparable(sql: &str) -> bool {
    let head = sql.trim_start().to_ascii_uppercase();
    ["SELECT", "WITH", "VALUES", "INSERT", "UPDATE", "DELETE", "MERGE"]
        .iter()
        .any(|k| head.starts_with(k))
}

pub async fn evasions_are_refused_over_the_extended_protocol(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let proxy = crate::proxy::proxy(&env).await?;
    let client = agent(proxy.port, AGENT_TOKEN).await?;
    for sql in EVASIONS {
        // Parse is refused...
        ensure_refused(client.prepare(sql).await, &format!("prepare {sql}"))?;
        // ...and so is Parse/Bind/Execute in one go.
        ensure_refused(client.query(*sql, &[]).await, &format!("query {sql}"))?;
    }
    // A parameter cannot smuggle a statement in: it is a value.
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM orders WHERE item = $1",
            &[&"x'; DELETE FROM orders; --"],
        )
        .await?
        .get(0);
    ensure!(n == 0, "{n}");
    ensure!(orders_count(&env).await? == 1000, "orders lost rows");
    Ok(())
}

pub async fn evasions_are_refused_over_the_simple_protocol_and_literals_are_not(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    let proxy = crate::proxy::proxy(&env).await?;
    let client = agent(proxy.port, AGENT_TOKEN).await?;
    for sql in EVASIONS {
        ensure_refused(client.batch_execute(sql).await, &format!("simple {sql}"))?;
        // Hidden behind comments and a harmless statement.
        let wrapped = format!("/* harmless */ SELECT 1; -- a comment\n{sql} /* trailing */");
        ensure_refused(client.batch_execute(&wrapped).await, &format!("simple {wrapped}"))?;
    }
    // Keywords inside comments, dollar-quoted and escaped literals are text.
    let allowed = [
        (
            "SELECT /* DROP TABLE orders */ count(*)::text FROM orders -- DELETE FROM orders",
            "1000",
        ),
        (
            "SELECT $$DELETE FROM orders; DROP TABLE orders$$",
            "DELETE FROM orders; DROP TABLE orders",
        ),
        (
            "SELECT $q$ COPY orders TO PROGRAM 'id' $q$",
            " COPY orders TO PROGRAM 'id' ",
        ),
        (
            "SELECT E'\\'; DELETE FROM orders; --'",
            "'; DELETE FROM orders; --",
        ),
        (
            "SELECT 'pg_read_file(''/etc/passwd'')'",
            "pg_read_file('/etc/passwd')",
        ),
    ];
    for (sql, expected) in allowed {
        let rows = client.simple_query(sql).await.context(sql)?;
        let value = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        });
        ensure!(value.as_deref() == Some(expected), "{sql} gave {value:?}");
    }
    ensure!(orders_count(&env).await? == 1000, "orders lost rows");
    Ok(())
}

/// Every evasion again through SQL-level PREPARE and EXECUTE, with a Policy
/// that lets the agent prepare. Preparing runs nothing, so a PREPARE may
/// pass (a side-effect call in it is refused at once: the planner may run
/// it); its EXECUTE is always refused.
pub async fn evasions_are_refused_through_prepare_and_execute(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let gate = edge(&env).await?;
    let client = agent(gate.port, AGENT_TOKEN).await?;
    let mut prepared = 0;
    for (i, sql) in EVASIONS.iter().filter(|s| preparable(s)).enumerate() {
        let prepare = format!("PREPARE ev{i} AS {sql}");
        match client.batch_execute(&prepare).await {
            Ok(()) => prepared += 1,
            refused => ensure_refused(refused, &prepare)?,
        }
        let execute = format!("EXECUTE ev{i}");
        ensure_refused(client.batch_execute(&execute).await, &execute)?;
        // Over the extended protocol too.
        ensure_refused(client.query(&execute, &[]).await, &format!("extended {execute}"))?;
    }
    ensure!(
        prepared > 0,
        "premise: the Policy lets some statements be prepared"
    );
    // The same, prepared and run in one query.
    let both = "PREPARE evboth AS SELECT purge_orders(); EXECUTE evboth";
    ensure_refused(client.batch_execute(both).await, both)?;
    ensure!(orders_count(&env).await? == 1000, "orders lost rows");
    Ok(())
}

/// What the catalog vouches for runs, including a function created after
/// the proxy started; what it does not is refused with a hint that says why.
pub async fn the_database_catalog_decides_which_calls_read(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let proxy = crate::proxy::proxy(&env).await?;
    let client = agent(proxy.port, AGENT_TOKEN).await?;
    let open: i64 = client.query_one("SELECT open_order_count()", &[]).await?.get(0);
    ensure!(open == 800, "open_order_count() gave {open}");
    let row = client
        .query_one(
            "SELECT pg_relation_size('orders') > 0, random() < 2, length(gen_random_uuid()::text)",
            &[],
        )
        .await?;
    ensure!(row.get::<_, bool>(0) && row.get::<_, bool>(1) && row.get::<_, i32>(2) == 36);

    // Unknown until created: refused, then found without a restart.
    let err = client
        .query_one("SELECT shipped_order_count()", &[])
        .await
        .expect_err("an unknown function ran");
    let db = err.as_db_error().context("not a server error")?;
    ensure!(
        db.code() == &SqlState::INSUFFICIENT_PRIVILEGE
            && db
                .hint()
                .is_some_and(|h| h.contains("not in the database's catalog")),
        "{db:?}"
    );
    let admin = env.postgres.superuser(DATABASE).await?;
    admin
        .batch_execute(
            "CREATE FUNCTION shipped_order_count() RETURNS bigint LANGUAGE sql STABLE \
             AS $$ SELECT count(*) FROM orders WHERE status = 'shipped' $$",
        )
        .await?;
    let shipped: i64 = client
        .query_one("SELECT shipped_order_count()", &[])
        .await?
        .get(0);
    ensure!(shipped == 200, "shipped_order_count() gave {shipped}");
    admin.batch_execute("DROP FUNCTION shipped_order_count()").await?;

    // The hint names the call and why it is refused.
    let err = client
        .query_one("SELECT purge_orders()", &[])
        .await
        .expect_err("purge ran");
    let db = err.as_db_error().context("not a server error")?;
    ensure!(
        db.hint().is_some_and(|h| h.contains("purge_orders [volatile]")),
        "{db:?}"
    );
    ensure!(orders_count(&env).await? == 1000, "orders lost rows");
    Ok(())
}

// ---------------------------------------------------------------- hostile clients

/// The proxy answers a well-behaved client (after a hostile one).
async fn still_serves(port: u16) -> anyhow::Result<()> {
    let client = agent(port, AGENT_TOKEN).await?;
    let n: i64 = client.query_one("SELECT count(*) FROM orders", &[]).await?.get(0);
    ensure!(n == 1000, "{n}");
    Ok(())
}

/// Waits for the proxy to close `raw`; returns what it said first.
async fn closed(raw: &mut Raw, within: Duration) -> anyhow::Result<Vec<(u8, Vec<u8>)>> {
    let deadline = Instant::now() + within;
    let mut said = Vec::new();
    loop {
        ensure!(Instant::now() < deadline, "still open after {within:?}: {said:?}");
        match raw.read().await {
            Ok(Some(message)) => said.push(message),
            Ok(None) => return Ok(said),
            Err(e) => {
                let reset = e
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset);
                ensure!(reset, "{e:#}");
                return Ok(said);
            }
        }
    }
}

pub async fn an_oversized_frame_is_refused_and_the_proxy_serves_the_next_client(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    let gate = tight(&env).await?;
    // After startup: a Query announcing 1 GiB.
    let mut raw = Raw::login(gate.port, &[]).await?;
    raw.stream.write_all(b"Q").await?;
    raw.stream.write_all(&(1u32 << 30).to_be_bytes()).await?;
    raw.stream.write_all(b"SELECT 1").await?;
    let said = closed(&mut raw, Duration::from_secs(5)).await?;
    ensure!(
        matches!(said.as_slice(), [(b'E', body)] if error_code(body).as_deref() == Some("08P01")),
        "expected FATAL 08P01 for a frame of 1 GiB: {said:?}"
    );
    // Just over the configured limit (64 KiB).
    let mut raw = Raw::login(gate.port, &[]).await?;
    let sql = format!("SELECT '{}'", "x".repeat(70 << 10));
    let _ = raw.send(b'Q', &query_body(&sql)).await;
    // The proxy closes with most of the frame unread, so the kernel may
    // answer with a reset that overtakes the FATAL: either is fine.
    let said = closed(&mut raw, Duration::from_secs(5)).await?;
    ensure!(
        said.iter()
            .all(|(tag, body)| *tag == b'E' && error_code(body).as_deref() == Some("08P01")),
        "unexpected answer to a frame over the limit: {said:?}"
    );
    // A startup packet announcing more than PostgreSQL's 10,000 bytes.
    let mut raw = Raw::connect(gate.port).await?;
    raw.stream.write_all(&(1u32 << 24).to_be_bytes()).await?;
    raw.stream.write_all(&196_608u32.to_be_bytes()).await?;
    let said = closed(&mut raw, Duration::from_secs(5)).await?;
    ensure!(
        matches!(said.as_slice(), [(b'E', body)] if error_code(body).as_deref() == Some("08P01")),
        "expected FATAL 08P01 for an oversized startup packet: {said:?}"
    );
    still_serves(gate.port).await
}

pub async fn a_slow_startup_is_closed_after_the_startup_timeout(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let gate = tight(&env).await?;
    let mut raw = Raw::connect(gate.port).await?;
    let packet = Raw::startup_packet(196_608, &[("user", "planner"), ("database", "orders")]);
    let started = Instant::now();
    // One byte every 300 ms, never the whole packet; the proxy allows 1 s.
    let mut closed_after = None;
    for byte in &packet[..packet.len() - 1] {
        if raw.stream.write_all(&[*byte]).await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(300), raw.stream.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed_after = Some(started.elapsed());
                break;
            }
            Ok(Ok(n)) => {
                // A FATAL before closing is fine; anything else is not.
                ensure!(buf[0] == b'E', "unexpected answer {:?}", &buf[..n]);
            }
        }
    }
    let closed_after = closed_after.context("a startup dribbled for the whole packet was never closed")?;
    ensure!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(4),
        "closed after {closed_after:?}, the startup timeout is 1 s"
    );
    still_serves(gate.port).await
}

pub async fn a_client_vanishing_mid_pipeline_releases_its_backend(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let gate = tight(&env).await?;
    let name = format!("gatehouse-vanish-{}", std::process::id());
    let admin = superuser(&env).await?;
    let count = |name: String| {
        let admin = &admin;
        async move {
            let n: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                    &[&name],
                )
                .await?
                .get(0);
            anyhow::Ok(n)
        }
    };
    let mut raw = Raw::login(gate.port, &[("application_name", &name)]).await?;
    ensure!(
        count(name.clone()).await? == 1,
        "the upstream backend is not visible"
    );
    // Parse, Bind, Execute of an open transaction's statement, and no Sync.
    raw.send(b'P', b"\0BEGIN\0\0\0").await?;
    raw.send(b'B', b"\0\0\0\0\0\0\0\0").await?;
    raw.send(b'E', b"\0\0\0\0\0").await?;
    raw.send(b'P', b"\0SELECT count(*) FROM orders\0\0\0").await?;
    raw.send(b'B', b"\0\0\0\0\0\0\0\0").await?;
    raw.send(b'E', b"\0\0\0\0\0").await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(raw);
    for _ in 0..50 {
        if count(name.clone()).await? == 0 {
            return still_serves(gate.port).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the backend of a vanished client is still in pg_stat_activity after 5 s")
}

pub async fn an_unknown_protocol_version_gets_a_fatal_error(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let gate = tight(&env).await?;
    for version in [0x0004_0000u32, 0x0002_0000] {
        let mut raw = Raw::connect(gate.port).await?;
        raw.stream
            .write_all(&Raw::startup_packet(version, &[("user", "planner")]))
            .await?;
        let said = closed(&mut raw, Duration::from_secs(5)).await?;
        let (tag, body) = said
            .first()
            .with_context(|| format!("protocol {version:#x}: closed without a FATAL"))?;
        let fields = error_fields(body);
        ensure!(
            *tag == b'E'
                && fields.contains(&('S', "FATAL".to_owned()))
                && matches!(error_code(body).as_deref(), Some("08P01" | "0A000")),
            "protocol {version:#x}: {fields:?}"
        );
    }
    still_serves(gate.port).await
}
