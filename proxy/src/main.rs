//! `gatehouse-proxy --config FILE` (standalone) or `gatehouse-proxy
//! --config-map NAME` (in a cluster, as the operator's Deployment runs it):
//! serves one Connection. Reloads the file, or the ConfigMap and the Secrets
//! it names (watched through the API), when they change; serves `/healthz`,
//! `/readyz` and `/metrics` on `admin.address`; drains on SIGTERM or Ctrl-C
//! (readiness fails first).

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use gatehouse_proxy::{
    admin, cluster,
    config::ProxyConfig,
    policy,
    server::{self, Runtime, Shared},
};

/// The Gatehouse proxy for PostgreSQL.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The configuration file (see config/proxy/standalone.yaml).
    #[arg(
        long,
        env = "GATEHOUSE_CONFIG",
        required_unless_present = "config_map",
        conflicts_with = "config_map"
    )]
    config: Option<PathBuf>,
    /// In a cluster: the ConfigMap (key `config.yaml`) the operator renders,
    /// read and watched through the API as the pod's ServiceAccount.
    #[arg(long)]
    config_map: Option<String>,
    /// The namespace of the ConfigMap and Secrets.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    /// Where the values of the Secrets the ConfigMap names are written (mode 0600).
    #[arg(long, default_value = "/var/run/gatehouse/secrets")]
    secrets_dir: PathBuf,
    /// Overrides `recording.spoolDirectory` (the pod's spool volume).
    #[arg(long, requires = "config_map")]
    spool_dir: Option<PathBuf>,
    /// Overrides `listen.address` (the pod's port).
    #[arg(long, requires = "config_map")]
    listen_address: Option<std::net::SocketAddr>,
    /// Overrides `admin.address` (the pod's probe and metrics port).
    #[arg(long, requires = "config_map")]
    admin_address: Option<std::net::SocketAddr>,
    /// How long open sessions may finish after SIGTERM.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    drain: Duration,
}

fn main() -> ExitCode {
    // Statements are classified on the runtime's threads, and a statement
    // nested as deeply as PostgreSQL accepts needs a deep stack for that
    // (see policy/stack.rs). The stack is reserved address space; memory is
    // used only as deep as a statement goes.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(policy::THREAD_STACK_BYTES)
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("gatehouse-proxy: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    // The Kubernetes client's TLS: ring, the provider the rest of the build uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (loaded, source) = match (&args.config, &args.config_map) {
        (Some(path), _) => (ProxyConfig::from_file(path).map(|c| (c, Vec::new())), None),
        (None, Some(name)) => {
            let source = match kube::Client::try_default().await {
                Ok(client) => cluster::Source {
                    client,
                    namespace: args.namespace.clone(),
                    config_map: name.clone(),
                    secrets_dir: args.secrets_dir.clone(),
                    overrides: cluster::Overrides {
                        listen: args.listen_address,
                        admin: args.admin_address,
                        spool: args.spool_dir.clone(),
                    },
                },
                Err(e) => {
                    eprintln!("gatehouse-proxy: cannot reach the Kubernetes API: {e}");
                    return ExitCode::FAILURE;
                }
            };
            (source.load().await, Some(source))
        }
        (None, None) => {
            eprintln!("gatehouse-proxy: --config FILE or --config-map NAME is required");
            return ExitCode::FAILURE;
        }
    };
    let (runtime, secrets) = match loaded.and_then(|(config, secrets)| Ok((Runtime::new(config)?, secrets))) {
        Ok(loaded) => loaded,
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
    if let Some(source) = &source {
        // In a cluster, statements that need approval are held and asked
        // for, bound to the Connection's uid; without it (a configuration
        // the operator did not render) they are refused.
        let connection = &shared.runtime().config.connection;
        match &connection.uid {
            Some(uid) => shared.set_approver(gatehouse_proxy::approval::ClusterApprover::new(
                source.client.clone(),
                &connection.namespace,
                &connection.name,
                uid,
            )),
            None => tracing::warn!(
                "the configuration names no connection.uid; statements that need approval are refused"
            ),
        }
    }
    if let Err(e) = shared.start_recording() {
        eprintln!("gatehouse-proxy: {e}");
        return ExitCode::FAILURE;
    }
    // The admin endpoint outlives the drain: /readyz says 503 meanwhile.
    tokio::spawn(admin::serve_admin(admin, shared.clone(), std::future::pending()));
    match (source, &args.config) {
        (Some(source), _) => {
            tokio::spawn(source.watch(shared.clone(), secrets));
        }
        (None, Some(path)) => {
            tokio::spawn(server::watch_config(
                path.clone(),
                shared.clone(),
                Duration::from_secs(1),
            ));
        }
        (None, None) => {}
    }
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
