//! `make bench`: pgbench `-S` TPS and latency against PostgreSQL directly,
//! through Gatehouse (the release proxy, policy on) and through Debian's
//! pgbouncer, all in one run on the same server; then the masking figures
//! (`bench/masking.rs`): the detectors' throughput on one core, a large
//! result's time with masking on and off, the proxy's memory while it
//! streams 1 GB. Prints the tables and the budget verdicts and writes them to
//! `$GATEHOUSE_CACHE/bench/last.json`.
//!
//! Run it built with `--release`: the in-process masking figures and the
//! client that reads the large results are measured in this binary.
//!
//! Environment: `BENCH_SECONDS` (each measured run, default 10),
//! `BENCH_WARMUP_SECONDS` (default 2), `BENCH_SCALE` (pgbench scale, default
//! 10), `BENCH_MASK_ROWS` (rows of the masking table, default 1000000),
//! `GATEHOUSE_PROXY_BIN` (default `$CARGO_TARGET_DIR/release/gatehouse-proxy`),
//! `GATEHOUSE_PGBOUNCER` (default `/usr/sbin/pgbouncer`).

// A binary's modules sit beside it, so the path is named.
#[path = "bench/masking.rs"]
mod masking;

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use ed25519_dalek::{
    SigningKey,
    pkcs8::{EncodePrivateKey, spki::der::pem::LineEnding},
};
use gatehouse_e2e::{
    bench::{DIRECT, Endpoint, Pgbench, Report, Row, default_scenarios, masking::MaskingReport},
    kube::write_private,
    net::{free_port, wait_for_port},
    pgbouncer::{Pgbouncer, PoolSpec},
    pki::random_hex,
    postgres::{APP_USER, Postgres},
    process::{Process, Spawn},
    tools::pg_program,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::io::Write as _;

/// The database pgbench fills; owned by the app role.
const DATABASE: &str = "bench";
/// The caller name Gatehouse's static token stands for.
const AGENT: &str = "bench-agent";
/// The group the static token gives it, which the policy names.
const GROUP: &str = "agents";
/// The file in a proxy's folder that holds its configuration.
const CONFIG_FILE: &str = "config.yaml";
/// The proxy Gatehouse is judged against.
const RIVAL: &str = "pgbouncer";
/// Gatehouse with its policy only.
const GATEHOUSE: &str = "gatehouse";
/// Gatehouse recording every session (to a local folder).
const RECORDING: &str = "gatehouse+rec";
/// The Gatehouse target the budget applies to: policy, masking and recording on.
const JUDGED: &str = "gatehouse+all";
/// TPS recording may cost at 10 clients (issue 5's aim).
const RECORDING_MAX_LOSS: f64 = 0.05;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match bench().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn env_number(name: &str, default: u32) -> anyhow::Result<u32> {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .with_context(|| format!("{name}={value} is not a whole number")),
        Err(_) => Ok(default),
    }
}

/// A server pgbench is pointed at; what keeps it running lives beside it.
struct Target {
    name: &'static str,
    endpoint: Endpoint,
}

async fn bench() -> anyhow::Result<()> {
    let seconds = env_number("BENCH_SECONDS", 10)?;
    let warm_up = env_number("BENCH_WARMUP_SECONDS", 2)?;
    let scale = env_number("BENCH_SCALE", 10)?;
    let mask_rows = env_number("BENCH_MASK_ROWS", 1_000_000)?;

    let dir = tempfile::Builder::new().prefix("gatehouse-bench-").tempdir()?;
    // PostgreSQL and pgbouncer run as another user when this is root.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))?;
    let result = run(dir.path(), seconds, warm_up, scale, mask_rows).await;
    if result.is_err() {
        // The error names logs in the run folder: keep them.
        let _ = dir.keep();
    }
    result
}

async fn run(dir: &Path, seconds: u32, warm_up: u32, scale: u32, mask_rows: u32) -> anyhow::Result<()> {
    let proxy_binary = proxy_binary()?;
    let scenarios = default_scenarios();
    let clients = scenarios.iter().map(|s| s.clients).max().unwrap_or(1);
    let started = Instant::now();
    println!("Starting PostgreSQL (logs in {})", dir.display());
    let postgres = Postgres::start(&dir.join("postgres")).await?;
    let admin = postgres.superuser("postgres").await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {DATABASE} OWNER {APP_USER}"))
        .await
        .context("create the bench database")?;
    let server_version: String = admin.query_one("SHOW server_version", &[]).await?.get(0);
    drop(admin);
    let direct = Endpoint {
        port: postgres.port,
        user: APP_USER.to_owned(),
        password: postgres.app_password.clone(),
        database: DATABASE.to_owned(),
    };
    let pgbench = Pgbench::new(pg_program("pgbench")?, dir.join("pgbench"));
    std::fs::create_dir_all(dir.join("pgbench"))?;
    println!("Filling the pgbench tables (scale {scale})");
    blocking({
        let (pgbench, direct) = (pgbench.clone(), direct.clone());
        move || pgbench.initialise(&direct, scale)
    })
    .await?;

    println!(
        "Starting gatehouse-proxy ({}) three times (policy; + recording; + masking + recording) and pgbouncer",
        proxy_binary.display()
    );
    let (gatehouse, gatehouse_process) =
        start_gatehouse(&proxy_binary, &dir.join(GATEHOUSE), &postgres, Settings::POLICY).await?;
    let (recording, recording_process) = start_gatehouse(
        &proxy_binary,
        &dir.join(RECORDING),
        &postgres,
        Settings::RECORDING,
    )
    .await?;
    let (judged, judged_process) =
        start_gatehouse(&proxy_binary, &dir.join(JUDGED), &postgres, Settings::ALL).await?;
    let pgbouncer = Pgbouncer::start(
        &dir.join("pgbouncer"),
        &PoolSpec {
            upstream_port: postgres.port,
            database: DATABASE,
            user: APP_USER,
            password: &postgres.app_password,
            pool_size: clients as usize,
        },
    )
    .await?;
    let targets = [
        Target {
            name: DIRECT,
            endpoint: direct.clone(),
        },
        Target {
            name: GATEHOUSE,
            endpoint: gatehouse,
        },
        Target {
            name: RECORDING,
            endpoint: recording,
        },
        Target {
            name: JUDGED,
            endpoint: judged,
        },
        Target {
            name: RIVAL,
            endpoint: Endpoint {
                port: pgbouncer.port,
                ..direct.clone()
            },
        },
    ];

    // Targets take turns within each scenario, so drift on the shared machine hits all of them.
    let mut rows = Vec::new();
    for scenario in scenarios {
        for target in &targets {
            let label = format!(
                "{}-c{}-{}",
                target.name,
                scenario.clients,
                scenario.protocol.as_str()
            );
            println!("  {:<22} {}", scenario.name(), target.name);
            let measurement = blocking({
                let (pgbench, endpoint) = (pgbench.clone(), target.endpoint.clone());
                move || {
                    pgbench.warm_up(&endpoint, scenario, warm_up, &label)?;
                    pgbench.measure(&endpoint, scenario, seconds, &label)
                }
            })
            .await?;
            rows.push(Row {
                scenario,
                target: target.name.to_owned(),
                measurement,
                ratio_to_direct: None,
            });
        }
    }

    let mut report = Report::new(rows, JUDGED, RIVAL, seconds, scale, server_version);
    report.compare("recording", RECORDING, GATEHOUSE, RECORDING_MAX_LOSS);
    println!("\n{}", report.render());
    println!(
        "{GATEHOUSE}: policy only; {RECORDING}: policy and recording (required, to a local folder); \
         {JUDGED}: policy, masking ([all] detectors, a column rule) and recording."
    );
    // The masking part starts its own proxies; these would only share the cores.
    drop((gatehouse_process, recording_process, judged_process, pgbouncer));

    let masking = masking::run(dir, &proxy_binary, &postgres, &direct, u64::from(mask_rows)).await?;
    println!("\n{}", masking.render());
    drop(postgres);
    let connections = env_number("BENCH_CONNECTIONS", 1000)?;
    let operator = if connections == 0 {
        None
    } else {
        println!(
            "\nOperator: {connections} Connections, then Policy edits and approvals on a proxy the harness runs"
        );
        let bin = proxy_binary.parent().context("the proxy binary has no folder")?;
        let report = gatehouse_e2e::bench::operator::run(
            bin,
            connections as usize,
            env_number("BENCH_ROUNDS", 20)? as usize,
        )
        .await?;
        println!("\n{}", report.render());
        Some(report)
    };
    let json = write_json(&LastRun {
        pgbench: &report,
        masking: &masking,
        operator: operator.as_ref(),
    })?;
    println!(
        "Written to {}; the whole bench took {:.0} s.",
        json.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs blocking harness work (pgbench) off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> gatehouse_e2e::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    Ok(tokio::task::spawn_blocking(work).await??)
}

fn proxy_binary() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("GATEHOUSE_PROXY_BIN") {
        Some(path) => PathBuf::from(path),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| gatehouse_e2e::repo_root().join("target"), PathBuf::from)
            .join("release/gatehouse-proxy"),
    };
    anyhow::ensure!(
        path.is_file(),
        "{} does not exist: build it with `cargo build --release -p gatehouse-proxy` \
         (make bench does) or set GATEHOUSE_PROXY_BIN",
        path.display()
    );
    Ok(path)
}

/// What a Gatehouse target runs with besides its policy.
#[derive(Debug, Clone, Copy)]
struct Settings {
    masking: bool,
    recording: bool,
}

impl Settings {
    const POLICY: Settings = Settings {
        masking: false,
        recording: false,
    };
    const MASKING: Settings = Settings {
        masking: true,
        recording: false,
    };
    const RECORDING: Settings = Settings {
        masking: false,
        recording: true,
    };
    const ALL: Settings = Settings {
        masking: true,
        recording: true,
    };
}

/// Starts the release proxy with a standalone configuration: a static token for
/// group `agents`, a policy that allows reads (and masks, and records, as
/// `settings` say), the app role's credential in files.
async fn start_gatehouse(
    binary: &Path,
    dir: &Path,
    postgres: &Postgres,
    settings: Settings,
) -> anyhow::Result<(Endpoint, Process)> {
    let creds = dir.join("credentials");
    std::fs::create_dir_all(&creds)?;
    write_private(&creds.join("username"), APP_USER)?;
    write_private(&creds.join("password"), &postgres.app_password)?;
    let token = random_hex(24);
    let port = free_port()?;
    let config = dir.join(CONFIG_FILE);
    std::fs::write(
        &config,
        gatehouse_config(
            port,
            postgres.port,
            &creds,
            &hex::encode(Sha256::digest(&token)),
            settings.masking,
        ),
    )?;
    if settings.recording {
        let key = dir.join("signing-key.pem");
        let seed: [u8; 32] = Sha256::digest(random_hex(32)).into();
        write_private(&key, &SigningKey::from_bytes(&seed).to_pkcs8_pem(LineEnding::LF)?)?;
        let mut file = std::fs::OpenOptions::new().append(true).open(&config)?;
        write!(
            file,
            "recording:\n  mode: required\n  signingKeyFile: {}\n  spoolDirectory: {}\n  directory: {}\n",
            key.display(),
            dir.join("spool").display(),
            dir.join("recordings").display(),
        )?;
    }
    let step = "start gatehouse-proxy";
    let mut process = Spawn::new("gatehouse-proxy", binary, dir.join("proxy.log"))
        .args(["--config"])
        .args([&config])
        .start(step)?;
    wait_for_port(&mut process, step, port, Duration::from_secs(30)).await?;
    let endpoint = Endpoint {
        port,
        user: AGENT.to_owned(),
        password: token,
        database: DATABASE.to_owned(),
    };
    Ok((endpoint, process))
}

/// The masking of the policy under `spec:`: every secret detector, and a
/// column rule as a policy would have one.
const MASKING: &str = r#"      masking:
        detectors: [all]
        columns: [{name: "(?i)^(password|api_?key)$", strategy: redact}]
        failureMode: strict
"#;

fn gatehouse_config(
    port: u16,
    upstream_port: u16,
    creds: &Path,
    token_sha256: &str,
    masking: bool,
) -> String {
    let masking = if masking { MASKING } else { "" };
    format!(
        r#"connection: {{namespace: bench, name: bench-db}}
listen: {{address: "127.0.0.1:{port}", allowPlaintext: true}}
admin: {{address: "127.0.0.1:0"}}
upstream:
  host: 127.0.0.1
  port: {upstream_port}
  database: {DATABASE}
  tls: {{mode: disable}}
  credentials: {{usernameFile: {creds}/username, passwordFile: {creds}/password}}
auth:
  staticTokens:
    - {{sha256: {token_sha256}, username: {AGENT}, groups: [{GROUP}]}}
policies:
  - name: agents-read
    spec:
      connectionSelector: {{}}
      subjects: [{{kind: Group, name: {GROUP}}}]
      rules:
        - {{name: reads, match: {{operations: [select]}}, action: allow}}
        - {{name: no-ddl, match: {{operations: [ddl, truncate, copyProgram, privilege, role]}}, action: deny}}
{masking}"#,
        creds = creds.display(),
    )
}

/// What `last.json` holds: the pgbench report's fields, and the masking figures.
#[derive(Debug, Serialize)]
struct LastRun<'a> {
    #[serde(flatten)]
    pgbench: &'a Report,
    masking: &'a MaskingReport,
    operator: Option<&'a gatehouse_e2e::bench::operator::OperatorReport>,
}

fn write_json(report: &LastRun<'_>) -> anyhow::Result<PathBuf> {
    let cache = std::env::var_os("GATEHOUSE_CACHE").map_or_else(
        || {
            std::env::var_os("HOME")
                .map_or_else(|| PathBuf::from("."), PathBuf::from)
                .join(".cache/gatehouse")
        },
        PathBuf::from,
    );
    let folder = cache.join("bench");
    std::fs::create_dir_all(&folder)?;
    let path = folder.join("last.json");
    std::fs::write(&path, serde_json::to_string_pretty(report)? + "\n")?;
    Ok(path)
}
