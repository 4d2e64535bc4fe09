//! `gatehouse-proxy --config FILE`: serves one Connection from a configuration
//! file (standalone mode; under the operator the file is its ConfigMap).
//! Reloads the file when it changes; serves `/healthz`, `/readyz` and
//! `/metrics` on `admin.address`; drains on SIGTERM or Ctrl-C (readiness
//! fails first).

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use gatehouse_proxy::{
    admin,
    config::ProxyConfig,
    server::{self, Runtime, Shared},
};

/// The Gatehouse proxy for PostgreSQL.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The configuration file (see config/proxy/standalone.yaml).
    #[arg(long, env = "GATEHOUSE_CONFIG")]
    config: PathBuf,
    /// How long open sessions may finish after SIGTERM.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    drain: Duration,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let runtime = match ProxyConfig::from_file(&args.config).and_then(Runtime::new) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("gatehouse-proxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    let address = runtime.config.listen.address;
    let listener = match tokio::net::TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("gatehouse-proxy: cannot listen on {address}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let admin_address = runtime.config.admin.address;
    let admin = match tokio::net::TcpListener::bind(admin_address).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("gatehouse-proxy: cannot serve the admin endpoint on {admin_address}: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(%address, admin = %admin_address, "listening");
    let shared = Shared::new(runtime);
    if let Err(e) = shared.start_recording() {
        eprintln!("gatehouse-proxy: {e}");
        return ExitCode::FAILURE;
    }
    // The admin endpoint outlives the drain: /readyz says 503 meanwhile.
    tokio::spawn(admin::serve_admin(admin, shared.clone(), std::future::pending()));
    tokio::spawn(server::watch_config(
        args.config.clone(),
        shared.clone(),
        Duration::from_secs(1),
    ));
    server::serve(listener, shared, shutdown_signal(), args.drain).await;
    ExitCode::SUCCESS
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested; draining");
}
