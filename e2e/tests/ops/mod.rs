//! The proxy's operations surface against the real database: the admin
//! endpoint (health, readiness, OpenMetrics) read over HTTP, the counters
//! moved by real clients, configuration reloads, the idle timeout seen from
//! tokio-postgres and pg_stat_activity, and the connection limit.
//!
//! Every test starts its own in-process proxy and admin endpoint, so its
//! counters move only with what the test does.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context as _, bail, ensure};
use gatehouse_e2e::{
    TestEnv,
    kube::write_private,
    postgres::{APP_USER, DATABASE},
};
use gatehouse_proxy::{
    admin,
    config::ProxyConfig,
    server::{self, Runtime, Shared},
};
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use tokio::{sync::oneshot, task::JoinHandle};
use tokio_postgres::{NoTls, error::SqlState};

/// The token of the test agent (group `agents`).
const AGENT_TOKEN: &str = "e2e-ops-agent-token-91fa";

/// Limits as the tests vary them.
struct Limits {
    max_connections: usize,
    idle_timeout: &'static str,
}

const DEFAULT_LIMITS: Limits = Limits {
    max_connections: 100,
    idle_timeout: "1h",
};

/// An in-process proxy with its admin endpoint; its tasks end with it.
struct OpsProxy {
    port: u16,
    admin: u16,
    config_file: PathBuf,
    shared: Arc<Shared>,
    drain: Option<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for OpsProxy {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn config_yaml(env: &TestEnv, port: u16, admin: u16, creds: &std::path::Path, limits: &Limits) -> String {
    let head = gatehouse_e2e::gateway::config_head(
        env,
        "orders-db",
        port,
        creds,
        AGENT_TOKEN,
        "planner",
        &["agents"],
    );
    format!(
        r#"{head}admin: {{address: "127.0.0.1:{admin}"}}
{policies}limits:
  maxConnections: {max}
  startupTimeout: 10s
  idleTimeout: {idle}
  maxMessageBytes: 1048576
"#,
        policies = crate::proxy::POLICIES,
        max = limits.max_connections,
        idle = limits.idle_timeout,
    )
}

/// Starts a proxy named `name` (its folder in the run folder) as `main.rs`
/// does: listener, admin endpoint, config watch.
async fn start(env: &TestEnv, name: &str, limits: &Limits) -> anyhow::Result<OpsProxy> {
    let dir = env.path().join(format!("ops-{name}"));
    let creds = dir.join("credentials");
    std::fs::create_dir_all(&creds)?;
    write_private(&creds.join("username"), APP_USER)?;
    write_private(&creds.join("password"), &env.postgres.app_password)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let admin = admin_listener.local_addr()?.port();
    let config_file = dir.join("config.yaml");
    std::fs::write(&config_file, config_yaml(env, port, admin, &creds, limits))?;
    let shared = Shared::new(Runtime::new(ProxyConfig::from_file(&config_file)?)?);
    let (drain, drained) = oneshot::channel::<()>();
    let tasks = vec![
        tokio::spawn(admin::serve_admin(
            admin_listener,
            shared.clone(),
            std::future::pending(),
        )),
        tokio::spawn(server::watch_config(
            config_file.clone(),
            shared.clone(),
            Duration::from_millis(200),
        )),
        tokio::spawn(server::serve(
            listener,
            shared.clone(),
            async {
                let _ = drained.await;
            },
            Duration::from_secs(30),
        )),
    ];
    Ok(OpsProxy {
        port,
        admin,
        config_file,
        shared,
        drain: Some(drain),
        tasks,
    })
}

/// A tokio-postgres session through the proxy, and its connection task.
async fn agent(
    port: u16,
    token: &str,
) -> Result<
    (
        tokio_postgres::Client,
        JoinHandle<Result<(), tokio_postgres::Error>>,
    ),
    tokio_postgres::Error,
> {
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("planner")
        .password(token)
        .dbname(DATABASE)
        .connect(NoTls)
        .await?;
    Ok((client, tokio::spawn(connection)))
}

/// An HTTP response: status, Content-Type and body.
struct HttpAnswer {
    status: u16,
    content_type: String,
    body: String,
}

/// `GET path` on the admin endpoint with hyper's HTTP/1 client.
async fn get(port: u16, path: &str) -> anyhow::Result<HttpAnswer> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, format!("127.0.0.1:{port}"))
        .body(String::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.into_body().collect().await?.to_bytes();
    Ok(HttpAnswer {
        status,
        content_type,
        body: String::from_utf8(body.to_vec())?,
    })
}

/// The metrics as the admin endpoint serves them.
pub(crate) struct Scrape(String);

impl Scrape {
    async fn take(proxy: &OpsProxy) -> anyhow::Result<Scrape> {
        Scrape::from_admin(proxy.admin).await
    }

    /// The metrics of the admin endpoint on `port`.
    pub(crate) async fn from_admin(port: u16) -> anyhow::Result<Scrape> {
        let answer = get(port, "/metrics").await?;
        ensure!(answer.status == 200, "/metrics answered {}", answer.status);
        Ok(Scrape(answer.body))
    }

    /// The value of one series, e.g. `gatehouse_statements_total{decision="allow"}`.
    pub(crate) fn value(&self, series: &str) -> anyhow::Result<f64> {
        self.0
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .with_context(|| format!("no series {series} in\n{}", self.0))?
            .parse()
            .with_context(|| format!("series {series} is not a number"))
    }
}

/// Waits up to 5 s for `check` to hold on a fresh scrape.
async fn eventually(
    proxy: &OpsProxy,
    what: &str,
    check: impl Fn(&Scrape) -> anyhow::Result<bool>,
) -> anyhow::Result<Scrape> {
    for _ in 0..50 {
        let scrape = Scrape::take(proxy).await?;
        if check(&scrape)? {
            return Ok(scrape);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "{what} did not happen within 5 s:\n{}",
        Scrape::take(proxy).await?.0
    )
}

pub async fn admin_endpoint_reports_health_readiness_and_counters(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let proxy = start(&env, "metrics", &DEFAULT_LIMITS).await?;
    let answer = get(proxy.admin, "/healthz").await?;
    ensure!(
        answer.status == 200,
        "/healthz answered {}: {}",
        answer.status,
        answer.body
    );
    // Ready once the listener task runs, which may be a moment after start.
    let mut ready = get(proxy.admin, "/readyz").await?;
    for _ in 0..50 {
        if ready.status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        ready = get(proxy.admin, "/readyz").await?;
    }
    ensure!(
        ready.status == 200,
        "/readyz answered {}: {}",
        ready.status,
        ready.body
    );
    ensure!(
        get(proxy.admin, "/nope").await?.status == 404,
        "an unknown path was served"
    );
    let answer = get(proxy.admin, "/metrics").await?;
    ensure!(
        answer.content_type == "application/openmetrics-text; version=1.0.0; charset=utf-8",
        "Content-Type {}",
        answer.content_type
    );
    ensure!(answer.body.ends_with("# EOF\n"), "no EOF marker");
    let before = Scrape(answer.body);

    let err = agent(proxy.port, "not-the-token")
        .await
        .err()
        .context("a wrong token was accepted")?;
    ensure!(err.code() == Some(&SqlState::INVALID_PASSWORD), "{err}");

    let (client, _connection) = agent(proxy.port, AGENT_TOKEN).await?;
    // The same statement with three literals: one parse, two cache hits.
    for n in 1..=3 {
        client.batch_execute(&format!("SELECT {n}")).await?;
    }
    for (sql, code) in [
        ("DROP TABLE orders", SqlState::INSUFFICIENT_PRIVILEGE),
        (
            "DELETE FROM orders WHERE id = 1",
            SqlState::INSUFFICIENT_PRIVILEGE,
        ),
        ("SELEC 1", SqlState::SYNTAX_ERROR),
    ] {
        let err = client.batch_execute(sql).await.err().context(sql)?;
        ensure!(err.code() == Some(&code), "{sql}: {err}");
    }
    // A statement's duration is observed when its ReadyForQuery passes the
    // proxy, which may be just after the client has its error: wait for it.
    let mut during = Scrape::take(&proxy).await?;
    for _ in 0..100 {
        let done = during.value("gatehouse_statement_duration_seconds_count")?
            - before.value("gatehouse_statement_duration_seconds_count")?;
        if done >= 6.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        during = Scrape::take(&proxy).await?;
    }
    let delta = |series: &str| -> anyhow::Result<f64> { Ok(during.value(series)? - before.value(series)?) };
    for (series, expected) in [
        (r#"gatehouse_statements_total{decision="allow"}"#, 3.0),
        (r#"gatehouse_statements_total{decision="deny"}"#, 1.0),
        (r#"gatehouse_statements_total{decision="require_approval"}"#, 1.0),
        (r#"gatehouse_statements_total{decision="unparseable"}"#, 1.0),
        ("gatehouse_parse_cache_hits_total", 2.0),
        ("gatehouse_parse_cache_misses_total", 4.0),
        (r#"gatehouse_sessions_total{outcome="started"}"#, 1.0),
        (r#"gatehouse_sessions_total{outcome="auth_refused"}"#, 1.0),
        (r#"gatehouse_auth_failures_total{reason="invalid_token"}"#, 1.0),
        (r#"gatehouse_auth_failures_total{reason="missing_token"}"#, 0.0),
        ("gatehouse_sessions_open", 1.0),
        // Six simple queries, six answers up to ReadyForQuery.
        ("gatehouse_statement_duration_seconds_count", 6.0),
    ] {
        let moved = delta(series)?;
        ensure!(
            moved == expected,
            "{series} moved by {moved}, expected {expected}"
        );
    }
    for direction in ["client_to_server", "server_to_client"] {
        let series = format!(r#"gatehouse_bytes_total{{direction="{direction}"}}"#);
        ensure!(delta(&series)? > 0.0, "no bytes counted {direction}");
    }
    // No label carries a user name, token or statement text.
    for secret in ["planner", AGENT_TOKEN, "not-the-token", "DROP", "orders"] {
        ensure!(!during.0.contains(secret), "{secret:?} appears in the metrics");
    }

    drop(client);
    eventually(&proxy, "the session closing", |s| {
        Ok(s.value("gatehouse_sessions_open")? == 0.0
            && s.value(r#"gatehouse_sessions_ended_total{reason="client_closed"}"#)? == 1.0)
    })
    .await?;
    Ok(())
}

pub async fn config_reloads_are_counted_and_an_invalid_one_changes_nothing(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    let proxy = start(&env, "reload", &DEFAULT_LIMITS).await?;
    let (client, _connection) = agent(proxy.port, AGENT_TOKEN).await?;
    let before = Scrape::take(&proxy).await?;
    let loaded_at = before.value("gatehouse_config_last_reload_success_timestamp_seconds")?;
    ensure!(loaded_at > 1.7e9, "no start-up load time: {loaded_at}");
    let original = std::fs::read_to_string(&proxy.config_file)?;

    gatehouse_e2e::gateway::replace_config(&proxy.config_file, "listen: [not, a, config]")?;
    let scrape = eventually(&proxy, "the invalid config being refused", |s| {
        Ok(s.value(r#"gatehouse_config_reloads_total{result="error"}"#)? == 1.0)
    })
    .await?;
    ensure!(
        scrape.value(r#"gatehouse_config_reloads_total{result="ok"}"#)? == 0.0,
        "an invalid config counted as loaded"
    );
    ensure!(
        scrape.value("gatehouse_config_last_reload_success_timestamp_seconds")? == loaded_at,
        "an invalid config moved the last success time"
    );
    // The last good policy applies: reads run, DDL is refused.
    let count: i64 = client
        .query_one("SELECT count(*) FROM api_credentials", &[])
        .await?
        .get(0);
    ensure!(count > 0, "api_credentials is empty");
    let err = client
        .batch_execute("DROP TABLE orders")
        .await
        .err()
        .context("DROP ran")?;
    ensure!(err.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{err}");

    // A valid config that denies reads of api_credentials.
    let edited = original.replace(
        "        - {name: no-ddl,",
        "        - {name: no-credentials, match: {tables: [public.api_credentials]}, action: deny}\n        - {name: no-ddl,",
    );
    ensure!(edited != original, "the edit did not apply");
    gatehouse_e2e::gateway::replace_config(&proxy.config_file, &edited)?;
    let scrape = eventually(&proxy, "the valid config being loaded", |s| {
        Ok(s.value(r#"gatehouse_config_reloads_total{result="ok"}"#)? == 1.0)
    })
    .await?;
    ensure!(
        scrape.value(r#"gatehouse_config_reloads_total{result="error"}"#)? == 1.0,
        "the error count moved"
    );
    ensure!(
        scrape.value("gatehouse_config_last_reload_success_timestamp_seconds")? > loaded_at,
        "the last success time did not move"
    );
    let err = client
        .query_one("SELECT count(*) FROM api_credentials", &[])
        .await
        .err()
        .context("the reloaded rule was not enforced")?;
    ensure!(err.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{err}");
    Ok(())
}

pub async fn an_idle_session_gets_57p05_and_its_backend_ends(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let limits = Limits {
        max_connections: 100,
        idle_timeout: "1s",
    };
    let proxy = start(&env, "idle", &limits).await?;
    let superuser = env.postgres.superuser(DATABASE).await?;
    let (client, connection) = agent(proxy.port, AGENT_TOKEN).await?;
    // Twice the idle timeout inside one statement: the server owes an
    // answer, so the session is not idle.
    client.batch_execute("SELECT pg_sleep(2)").await?;
    let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
    let present: i64 = superuser
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", &[&pid])
        .await?
        .get(0);
    ensure!(present == 1, "backend {pid} is not in pg_stat_activity");

    // Now idle: the proxy closes the session with 57P05.
    let ended = tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .context("the idle session was not closed within 5 s")??;
    let err = ended.err().context("the connection ended without an error")?;
    ensure!(err.code() == Some(&SqlState::IDLE_SESSION_TIMEOUT), "{err}");
    let message = err
        .as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_default();
    ensure!(
        message.contains("idle timeout of Gatehouse (limits.idleTimeout = 1s)"),
        "{message}"
    );
    ensure!(
        client.batch_execute("SELECT 1").await.is_err(),
        "the closed session still ran a query"
    );

    // The proxy ended its upstream backend too.
    let mut gone = false;
    for _ in 0..50 {
        let present: i64 = superuser
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", &[&pid])
            .await?
            .get(0);
        if present == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(gone, "backend {pid} is still in pg_stat_activity");
    let scrape = Scrape::take(&proxy).await?;
    ensure!(
        scrape.value(r#"gatehouse_sessions_ended_total{reason="idle_timeout"}"#)? == 1.0,
        "the idle close was not counted"
    );
    Ok(())
}

pub async fn a_third_connection_gets_53300_with_max_connections_2(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let limits = Limits {
        max_connections: 2,
        idle_timeout: "1h",
    };
    let proxy = start(&env, "max-connections", &limits).await?;
    let (first, _c1) = agent(proxy.port, AGENT_TOKEN).await?;
    let (second, _c2) = agent(proxy.port, AGENT_TOKEN).await?;
    let err = agent(proxy.port, AGENT_TOKEN)
        .await
        .err()
        .context("a third connection was served")?;
    ensure!(err.code() == Some(&SqlState::TOO_MANY_CONNECTIONS), "{err}");
    // The two sessions are unharmed.
    first.batch_execute("SELECT 1").await?;
    second.batch_execute("SELECT 1").await?;
    let scrape = Scrape::take(&proxy).await?;
    ensure!(
        scrape.value(r#"gatehouse_sessions_total{outcome="too_many"}"#)? == 1.0,
        "the refusal was not counted"
    );
    // A closed session frees its slot.
    drop(first);
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok((third, _c3)) = agent(proxy.port, AGENT_TOKEN).await {
            third.batch_execute("SELECT 1").await?;
            return Ok(());
        }
    }
    bail!("no slot came free after a session closed")
}

pub async fn a_drain_fails_readiness_first_and_open_sessions_go_on(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let mut proxy = start(&env, "drain", &DEFAULT_LIMITS).await?;
    let (client, _connection) = agent(proxy.port, AGENT_TOKEN).await?;
    ensure!(
        get(proxy.admin, "/readyz").await?.status == 200,
        "not ready before the drain"
    );
    ensure!(proxy.shared.is_ready(), "Shared disagrees with /readyz");
    proxy.drain.take().context("drained twice")?.send(()).ok();
    let mut unready = false;
    for _ in 0..50 {
        if get(proxy.admin, "/readyz").await?.status == 503 {
            unready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(unready, "/readyz still answers 200 while draining");
    ensure!(
        get(proxy.admin, "/healthz").await?.status == 200,
        "not alive while draining"
    );
    // The session opened before the drain finishes its work.
    let count: i64 = client.query_one("SELECT count(*) FROM orders", &[]).await?.get(0);
    ensure!(count == 1000, "orders has {count} rows");
    Ok(())
}
