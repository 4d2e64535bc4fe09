//! Session recording against the real database and the harness's S3 server:
//! what an agent did arrives in the bucket, verifies against the gateway's
//! public key, replays as it happened, and holds no secret.

use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use anyhow::{Context as _, bail, ensure};
use ed25519_dalek::{
    SigningKey,
    pkcs8::{EncodePrivateKey, EncodePublicKey, spki::der::pem::LineEnding},
};
use gatehouse_e2e::{
    TestEnv,
    kube::write_private,
    s3::{BUCKET, REGION, S3},
};
use gatehouse_recording::{
    chunk,
    format::{Body, MANIFEST},
    store::{S3Settings, Store},
    verify::{Verified, VerifyError, verify},
};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use gatehouse_e2e::gateway::config_head;

use crate::proxy::{AGENT_TOKEN, agent, psql, start_proxy};

mod durability;
pub use durability::*;

/// The gateway's signing key in this test (its public half verifies).
pub(crate) fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&Sha256::digest(b"gatehouse e2e recording key").into())
}

/// The `recording:` section of a proxy that records to `s3` in `required`
/// mode, signed with [`signing_key`], spooling under `dir`, cutting chunks
/// at `chunk_bytes`. Writes the key and the S3 credentials into `dir`.
pub(crate) fn recording_yaml(dir: &Path, s3: &S3, chunk_bytes: u32) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)?;
    let key = dir.join("signing-key.pem");
    write_private(&key, &signing_key().to_pkcs8_pem(LineEnding::LF)?)?;
    write_private(&dir.join("access-key-id"), &s3.access_key)?;
    write_private(&dir.join("secret-access-key"), &s3.secret_key)?;
    Ok(format!(
        r#"recording:
  mode: required
  signingKeyFile: {key}
  spoolDirectory: {spool}
  chunkBytes: {chunk_bytes}
  s3:
    bucket: {BUCKET}
    endpoint: {endpoint}
    region: {REGION}
    pathStyle: true
    prefix: {PREFIX}
    accessKeyIdFile: {dir}/access-key-id
    secretAccessKeyFile: {dir}/secret-access-key
"#,
        key = key.display(),
        spool = dir.join("spool").display(),
        endpoint = s3.endpoint,
        dir = dir.display(),
    ))
}

/// The key prefix the test proxies record under.
pub(crate) const PREFIX: &str = "sessions";

/// The recordings bucket of `s3`, as the tests read it.
pub(crate) fn store(s3: &S3) -> Store {
    Store::s3(&S3Settings {
        endpoint: Some(s3.endpoint.clone()),
        region: REGION.into(),
        bucket: BUCKET.into(),
        path_style: true,
        access_key_id: s3.access_key.clone(),
        secret_access_key: s3.secret_key.clone(),
    })
}

struct Recorded {
    port: u16,
    store: Store,
}

static RECORDED: OnceCell<Recorded> = OnceCell::const_new();

/// A proxy recording to the harness's bucket, with the masking policy.
async fn recorded(env: &TestEnv) -> anyhow::Result<&'static Recorded> {
    RECORDED
        .get_or_try_init(|| async {
            crate::masking::fixture(env).await?;
            let dir = env.path().join("recording");
            let proxy = start_proxy(env, "recorded", |port, creds| {
                let head = config_head(
                    env,
                    "recorded-db",
                    port,
                    creds,
                    AGENT_TOKEN,
                    "planner",
                    &["agents"],
                );
                let recording = recording_yaml(&dir, &env.s3, 512)?;
                Ok(format!(
                    "{head}{recording}policies:{policy}      masking: {masking}\n",
                    policy = crate::masking::POLICY,
                    masking = crate::masking::DETECTING,
                ))
            })
            .await?;
            anyhow::Ok(Recorded {
                port: proxy.port,
                store: store(&env.s3),
            })
        })
        .await
}

/// Session folders of the Connection `e2e/<connection>` in the bucket with a manifest.
pub(crate) async fn finished(store: &Store, connection: &str) -> anyhow::Result<Vec<String>> {
    Ok(store
        .list(&format!("{PREFIX}/e2e/{connection}"))
        .await?
        .into_iter()
        .filter_map(|k| k.strip_suffix(&format!("/{MANIFEST}")).map(str::to_owned))
        .collect())
}

/// The objects of a session folder, by name.
pub(crate) async fn objects(store: &Store, folder: &str) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let mut objects = BTreeMap::new();
    for key in store.list(folder).await? {
        let name = key.rsplit('/').next().unwrap_or_default().to_owned();
        objects.insert(name, store.get(&key).await?.context("listed object vanished")?);
    }
    Ok(objects)
}

/// What `kubectl-gatehouse` printed and how it exited.
pub(crate) struct CliRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `kubectl-gatehouse ARGS` against the bucket of `s3` as a security
/// engineer would: credentials and the gateway's public key from the
/// environment, never on the command line.
pub(crate) async fn cli(env: &TestEnv, s3: &S3, args: &[&str]) -> anyhow::Result<CliRun> {
    let public_key = env.path().join("recording-public-key.pem");
    if !public_key.exists() {
        std::fs::write(
            &public_key,
            signing_key().verifying_key().to_public_key_pem(LineEnding::LF)?,
        )?;
    }
    let output = tokio::process::Command::new(gatehouse_e2e::workspace_binary("kubectl-gatehouse")?)
        .args(["--s3-bucket", BUCKET, "--s3-endpoint", &s3.endpoint])
        .args(["--s3-path-style", "--s3-prefix", PREFIX])
        .args(args)
        .env("AWS_ACCESS_KEY_ID", &s3.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &s3.secret_key)
        .env("GATEHOUSE_RECORDING_PUBLIC_KEY", &public_key)
        .output()
        .await?;
    Ok(CliRun {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// The session id of a session folder: its last segment.
pub(crate) fn session_id(folder: &str) -> &str {
    folder.rsplit('/').next().unwrap_or(folder)
}

/// One test's sessions at a time, so each finds its own in the bucket.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `work`, then waits for exactly one new finished session.
async fn one_new_session<F: std::future::Future<Output = anyhow::Result<()>>>(
    store: &Store,
    work: F,
) -> anyhow::Result<String> {
    let _alone = ONE_AT_A_TIME.lock().await;
    let before = finished(store, "recorded-db").await?;
    work.await?;
    for _ in 0..100 {
        let new: Vec<String> = finished(store, "recorded-db")
            .await?
            .into_iter()
            .filter(|f| !before.contains(f))
            .collect();
        match new.as_slice() {
            [one] => return Ok(one.clone()),
            [] => tokio::time::sleep(Duration::from_millis(100)).await,
            more => bail!("several new sessions: {more:?}"),
        }
    }
    bail!("no recording arrived in the bucket within 10 s")
}

pub async fn a_session_arrives_verifies_and_replays_what_the_agent_did(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    let recorded = recorded(&env).await?;
    let folder = one_new_session(&recorded.store, async {
        let client = agent(recorded.port, AGENT_TOKEN).await?;
        // A simple query, a refused one, and one over the extended protocol.
        let rows = client
            .simple_query("SELECT kind, note FROM vault ORDER BY id")
            .await?;
        ensure!(format!("{rows:?}").contains("[masked:"));
        ensure!(client.batch_execute("DROP TABLE vault").await.is_err());
        let one: i32 = client.query_one("SELECT 1 AS one", &[]).await?.get(0);
        ensure!(one == 1);
        Ok(())
    })
    .await?;
    ensure!(
        folder.starts_with("sessions/e2e/recorded-db/20"),
        "filed under prefix, connection and date: {folder}"
    );
    let objects = objects(&recorded.store, &folder).await?;
    ensure!(
        objects.len() > 2,
        "chunks are cut at 512 bytes: {:?}",
        objects.keys()
    );
    let Verified { manifest, events } = verify(&objects, &signing_key().verifying_key())?;
    ensure!(
        manifest.user == "planner" && manifest.end == "client_closed",
        "{manifest:?}"
    );
    // The timeline: connect, the three statements with their decisions and results, disconnect.
    let mut statements = Vec::new();
    let mut results = Vec::new();
    let mut rows = 0;
    for event in &events {
        match &event.body {
            Body::Statement { text, decision, .. } => statements.push((text.clone(), decision.clone())),
            Body::Result { tag, error, .. } => {
                results.push((tag.clone(), error.as_ref().map(|e| e.sqlstate.clone())))
            }
            Body::Rows { rows: recorded, .. } => rows += recorded.len(),
            _ => {}
        }
    }
    ensure!(matches!(events.first().map(|e| &e.body), Some(Body::Connect { user, .. }) if user == "planner"));
    ensure!(
        matches!(events.last().map(|e| &e.body), Some(Body::Disconnect { reason }) if reason == "client_closed")
    );
    let expected = [
        ("SELECT kind, note FROM vault ORDER BY id", "allow"),
        ("DROP TABLE vault", "deny"),
        ("SELECT 1 AS one", "allow"),
    ];
    let seen: Vec<(&str, &str)> = statements.iter().map(|(t, d)| (t.as_str(), d.as_str())).collect();
    ensure!(seen == expected, "{statements:?}");
    let planted = crate::masking::PLANTED.len();
    ensure!(
        results
            == [
                (Some(format!("SELECT {planted}")), None),
                (None, Some("42501".into())),
                (Some("SELECT 1".into()), None),
            ],
        "{results:?}"
    );
    ensure!(rows == crate::masking::PLANTED.len() + 1, "{rows} rows recorded");
    // Nothing secret in any recorded byte, compressed or not.
    let mut plain = Vec::new();
    for (name, bytes) in &objects {
        plain.extend_from_slice(bytes);
        if name.ends_with(".gz") {
            for line in chunk::decode(bytes).map_err(anyhow::Error::msg)? {
                plain.extend_from_slice(&line);
            }
        }
    }
    let leaks = crate::masking::leaks(&plain);
    ensure!(leaks.is_empty(), "secrets in the recording: {leaks:?}");

    // What a security engineer sees with the CLI.
    let id = session_id(&folder);
    let listed = cli(
        &env,
        &env.s3,
        &["sessions", "--connection", "e2e/recorded-db", "--user", "planner"],
    )
    .await?;
    ensure!(
        listed.code == 0 && listed.stdout.contains(id),
        "sessions: {} {} {}",
        listed.code,
        listed.stdout,
        listed.stderr
    );
    let checked = cli(&env, &env.s3, &["verify", id]).await?;
    ensure!(
        checked.code == 0 && checked.stdout.starts_with(&format!("verified: {id}")),
        "verify: {} {} {}",
        checked.code,
        checked.stdout,
        checked.stderr
    );
    let replay = cli(&env, &env.s3, &["replay", id]).await?;
    ensure!(replay.code == 0, "replay: {} {}", replay.code, replay.stderr);
    let order: Vec<Option<usize>> = [
        "connect     planner",
        "allowed: SELECT kind, note FROM vault ORDER BY id",
        &format!("recorded {planted} rows:"),
        "DENIED: DROP TABLE vault",
        "ERROR 42501",
        "allowed: SELECT 1 AS one",
        "disconnect  client_closed",
    ]
    .iter()
    .map(|line| replay.stdout.find(line))
    .collect();
    ensure!(
        order.iter().all(Option::is_some) && order.is_sorted(),
        "the replay tells the session in order ({order:?}):\n{}",
        replay.stdout
    );
    let leaks = crate::masking::leaks(replay.stdout.as_bytes());
    ensure!(leaks.is_empty(), "secrets in the replay: {leaks:?}");
    Ok(())
}

pub async fn a_changed_removed_reordered_or_added_chunk_fails_verification_naming_it(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    let recorded = recorded(&env).await?;
    let folder = one_new_session(&recorded.store, async {
        let (ok, _, err) = psql(
            recorded.port,
            AGENT_TOKEN,
            "SELECT kind, label FROM vault ORDER BY id",
        )
        .await?;
        ensure!(ok, "{err}");
        Ok(())
    })
    .await?;
    let key = signing_key().verifying_key();
    let intact = objects(&recorded.store, &folder).await?;
    verify(&intact, &key)?;
    let second = intact
        .keys()
        .filter(|k| k.ends_with(".gz"))
        .nth(1)
        .context("a second chunk")?
        .clone();
    // One byte changed, in the bucket itself.
    let mut changed = intact[&second].clone();
    let middle = changed.len() / 2;
    changed[middle] ^= 0x01;
    recorded.store.put(&format!("{folder}/{second}"), changed).await?;
    let tampered = objects(&recorded.store, &folder).await?;
    match verify(&tampered, &key) {
        Err(VerifyError::ChunkChanged { name, .. }) if name == second => {}
        other => bail!("a changed byte in {second} gave {other:?}"),
    }
    let id = session_id(&folder);
    let checked = cli(&env, &env.s3, &["verify", id]).await?;
    ensure!(
        checked.code == 1 && checked.stderr.contains("NOT VERIFIED") && checked.stderr.contains(&second),
        "verify of a changed chunk: {} {} {}",
        checked.code,
        checked.stdout,
        checked.stderr
    );
    // Removed.
    let mut removed = intact.clone();
    removed.remove(&second);
    ensure!(verify(&removed, &key).err() == Some(VerifyError::ChunkMissing(second.clone())));
    // Reordered: the second and third chunks swapped, as an editor of the
    // bucket would have to; the first chunk out of place is named.
    let third = intact
        .keys()
        .filter(|k| k.ends_with(".gz"))
        .nth(2)
        .context("a third chunk")?
        .clone();
    let mut reordered = intact.clone();
    reordered.insert(second.clone(), intact[&third].clone());
    reordered.insert(third.clone(), intact[&second].clone());
    match verify(&reordered, &key) {
        Err(VerifyError::ChunkChanged { name, .. }) if name == second => {}
        other => bail!("swapped chunks gave {other:?}"),
    }
    // Appended.
    let mut appended = intact.clone();
    appended.insert("chunk-999999.jsonl.gz".into(), intact[&second].clone());
    ensure!(matches!(verify(&appended, &key), Err(VerifyError::ChunkExtra(_))));
    Ok(())
}
