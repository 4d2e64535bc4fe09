//! Recordings survive what production does to them: the S3 server going
//! away in the middle of many sessions, and the proxy killed with SIGKILL.
//! Both run the `gatehouse-proxy` binary, so its metrics are its own.

use std::{sync::Arc, time::Duration};

use anyhow::{bail, ensure};
use futures::future::try_join_all;
use gatehouse_e2e::{TestEnv, gateway::ProxyProcess, s3::S3};
use gatehouse_recording::{
    format::Body,
    store::Store,
    verify::{Verified, verify},
};

use super::{cli, finished, objects, recording_yaml, session_id, signing_key, store};
use crate::{
    ops::Scrape,
    proxy::{AGENT_TOKEN, POLICIES, agent},
};
use gatehouse_e2e::gateway::config_head;

/// Sessions of the outage test.
const SESSIONS: usize = 50;

/// A `gatehouse-proxy` process for Connection `e2e/<connection>` recording
/// to `s3` with chunks of 512 bytes, so chunks go up while sessions run.
async fn recording_proxy(env: &TestEnv, connection: &str, s3: &S3) -> anyhow::Result<ProxyProcess> {
    let dir = env.path().join(connection);
    ProxyProcess::start(env, connection, |port, creds| {
        let head = config_head(env, connection, port, creds, AGENT_TOKEN, "planner", &["agents"]);
        let recording = recording_yaml(&dir.join("recording"), s3, 512)?;
        Ok(format!("{head}{recording}{POLICIES}"))
    })
    .await
}

/// Waits up to `timeout` for `count` finished sessions of `connection`.
async fn wait_for_sessions(
    store: &Store,
    connection: &str,
    count: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<String>> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let folders = finished(store, connection).await?;
        if folders.len() >= count {
            return Ok(folders);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{} of {count} sessions arrived within {timeout:?}", folders.len());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The statements a recording holds, in order, with their decisions.
fn statements(events: &[gatehouse_recording::format::Event]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match &e.body {
            Body::Statement { text, decision, .. } => Some((text.clone(), decision.clone())),
            _ => None,
        })
        .collect()
}

/// The statement session `n` runs in `phase`: it names both, so each
/// recording can be checked to hold exactly its own session.
fn statement(n: usize, phase: &str) -> String {
    format!("SELECT {n} AS session, '{phase}' AS phase")
}

/// Session `n` runs its statement for `phase` once in the simple protocol
/// and once in the extended one; all sessions at once.
async fn run(clients: &[tokio_postgres::Client], phase: &str) -> anyhow::Result<()> {
    try_join_all(clients.iter().enumerate().map(|(n, client)| async move {
        client.simple_query(&statement(n, phase)).await?;
        client.query_one(&statement(n, phase), &[]).await?;
        anyhow::Ok(())
    }))
    .await?;
    Ok(())
}

pub async fn an_s3_outage_during_50_concurrent_sessions_loses_no_recording(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    const CONNECTION: &str = "outage-db";
    // Its own S3 server: stopping the shared one would fail other tests.
    let mut s3 = S3::start(&env.path().join("s3-outage")).await?;
    let proxy = recording_proxy(&env, CONNECTION, &s3).await?;
    let mut clients = try_join_all((0..SESSIONS).map(|_| agent(proxy.port, AGENT_TOKEN))).await?;
    run(&clients, "before").await?;

    // The store goes away with every session open.
    s3.kill();
    run(&clients, "during").await?;
    // Half the sessions end while it is away: their recordings wait in the spool.
    let open = clients.split_off(SESSIONS / 2);
    drop(clients);
    let mut failures = 0.0;
    for _ in 0..100 {
        let scrape = Scrape::from_admin(proxy.admin).await?;
        failures = scrape.value("gatehouse_recording_upload_failures_total")?;
        if failures > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(failures > 0.0, "no upload failed while the S3 server was down");
    let spooled = Scrape::from_admin(proxy.admin)
        .await?
        .value("gatehouse_recording_spool_bytes")?;
    ensure!(spooled > 0.0, "the spool holds the recordings meanwhile");
    // New sessions are still served: the spool has room.
    let late = agent(proxy.port, AGENT_TOKEN).await?;
    late.simple_query(&statement(SESSIONS, "during")).await?;
    drop(late);

    s3.restart().await?;
    for (i, client) in open.iter().enumerate() {
        let n = SESSIONS / 2 + i;
        client.simple_query(&statement(n, "after")).await?;
    }
    drop(open);

    let store = store(&s3);
    let folders = wait_for_sessions(&store, CONNECTION, SESSIONS + 1, Duration::from_secs(90)).await?;
    ensure!(
        folders.len() == SESSIONS + 1,
        "{} sessions: {folders:?}",
        folders.len()
    );
    let key = signing_key().verifying_key();
    let mut seen = [false; SESSIONS + 1];
    for folder in &folders {
        let Verified { manifest, events } =
            verify(&objects(&store, folder).await?, &key).map_err(|e| anyhow::anyhow!("{folder}: {e}"))?;
        ensure!(manifest.end == "client_closed", "{folder} ended {}", manifest.end);
        let texts = statements(&events);
        let n = texts
            .first()
            .and_then(|(text, _)| text.strip_prefix("SELECT "))
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n <= SESSIONS)
            .ok_or_else(|| anyhow::anyhow!("{folder} holds {texts:?}"))?;
        ensure!(!seen[n], "session {n} recorded twice");
        seen[n] = true;
        let phases: &[&str] = match n {
            n if n == SESSIONS => &["during"],
            n if n < SESSIONS / 2 => &["before", "before", "during", "during"],
            _ => &["before", "before", "during", "during", "after"],
        };
        let expected: Vec<(String, String)> = phases
            .iter()
            .map(|phase| (statement(n, phase), "allow".to_owned()))
            .collect();
        ensure!(texts == expected, "session {n} recorded {texts:?}");
        ensure!(
            matches!(events.last().map(|e| &e.body), Some(Body::Disconnect { .. })),
            "session {n} ends with its disconnect"
        );
    }
    let scrape = Scrape::from_admin(proxy.admin).await?;
    for series in [
        "gatehouse_recording_events_dropped_total",
        "gatehouse_recording_sessions_refused_total",
    ] {
        ensure!(
            scrape.value(series)? == 0.0,
            "{series} must stay 0 in required mode"
        );
    }
    ensure!(scrape.value("gatehouse_recording_sessions_uploaded_total")? == (SESSIONS + 1) as f64);
    Ok(())
}

pub async fn a_proxy_killed_mid_session_uploads_its_recording_when_restarted(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    const CONNECTION: &str = "killed-db";
    let mut proxy = recording_proxy(&env, CONNECTION, &env.s3).await?;
    let client = agent(proxy.port, AGENT_TOKEN).await?;
    for n in 0..5 {
        client.simple_query(&statement(n, "before the kill")).await?;
    }
    ensure!(client.batch_execute("DROP TABLE orders").await.is_err());
    let store = store(&env.s3);
    ensure!(
        finished(&store, CONNECTION).await?.is_empty(),
        "no session is finished before the kill"
    );

    // As the OOM killer would: no drain, no goodbye, the spool as it was.
    proxy.process.kill();
    ensure!(
        client.simple_query("SELECT 'after the kill'").await.is_err(),
        "the session ends with the proxy"
    );
    proxy.restart().await?;

    let folders = wait_for_sessions(&store, CONNECTION, 1, Duration::from_secs(30)).await?;
    let [folder] = folders.as_slice() else {
        bail!("one recovered session expected: {folders:?}");
    };
    let Verified { manifest, events } =
        verify(&objects(&store, folder).await?, &signing_key().verifying_key())?;
    ensure!(
        manifest.end == "recovered",
        "the manifest says how it ended: {}",
        manifest.end
    );
    ensure!(matches!(events.first().map(|e| &e.body), Some(Body::Connect { user, .. }) if user == "planner"));
    let mut expected: Vec<(String, String)> = (0..5)
        .map(|n| (statement(n, "before the kill"), "allow".to_owned()))
        .collect();
    expected.push(("DROP TABLE orders".into(), "deny".into()));
    ensure!(statements(&events) == expected, "{:?}", statements(&events));
    let results = events
        .iter()
        .filter(|e| matches!(e.body, Body::Result { .. }))
        .count();
    ensure!(
        results == 6,
        "every statement before the kill has its result: {results}"
    );

    // The CLI agrees, and says how the session ended.
    let id = session_id(folder);
    let checked = cli(&env, &env.s3, &["verify", id]).await?;
    ensure!(checked.code == 0, "verify: {} {}", checked.stdout, checked.stderr);
    let replay = cli(&env, &env.s3, &["replay", id]).await?;
    ensure!(
        replay.code == 0 && replay.stdout.contains("(recovered)"),
        "replay: {} {}",
        replay.stdout,
        replay.stderr
    );
    // The restarted proxy serves and records new sessions.
    let client = agent(proxy.port, AGENT_TOKEN).await?;
    client.simple_query(&statement(9, "after the restart")).await?;
    drop(client);
    wait_for_sessions(&store, CONNECTION, 2, Duration::from_secs(30)).await?;
    Ok(())
}
