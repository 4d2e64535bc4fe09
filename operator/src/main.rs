//! `gatehouse-operator`: reconciles Connections, Policies and ApprovalRequests while it holds
//! the Lease `--lease-name` in `--lease-namespace` (two replicas are safe:
//! the other waits), serves `/healthz`, `/readyz` and `/metrics` on
//! `--health-address` and `/metrics` on `--metrics-address` (the `metrics`
//! port of the chart and `config/manager`),
//! logs JSON, and on SIGTERM lets reconciles in flight finish and releases
//! the Lease.

use std::{net::SocketAddr, process::ExitCode, sync::Arc};

use clap::Parser;
use gatehouse_operator::{ProxySettings, RecordingS3, metrics::Metrics};
use kube_lease_manager::{LeaseManagerBuilder, LeaseParams};

/// The Gatehouse operator.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The proxy image every Connection's Deployment runs.
    #[arg(long, env = "GATEHOUSE_PROXY_IMAGE")]
    proxy_image: String,
    /// The Secret, in each Connection's namespace, with the recording signing
    /// key (`signing-key.pem`) and, with S3, `access-key-id` and `secret-access-key`.
    #[arg(
        long,
        env = "GATEHOUSE_RECORDING_SECRET",
        default_value = "gatehouse-recording"
    )]
    recording_secret: String,
    /// The S3 bucket of recordings; without it proxies keep recordings in the pod.
    #[arg(long, env = "GATEHOUSE_RECORDING_S3_BUCKET")]
    recording_s3_bucket: Option<String>,
    /// The S3 endpoint URL, for servers other than AWS.
    #[arg(long, env = "GATEHOUSE_RECORDING_S3_ENDPOINT")]
    recording_s3_endpoint: Option<String>,
    /// The bucket's region.
    #[arg(long, env = "GATEHOUSE_RECORDING_S3_REGION", default_value = "us-east-1")]
    recording_s3_region: String,
    /// Path-style addressing (most S3-compatible servers).
    #[arg(long, env = "GATEHOUSE_RECORDING_S3_PATH_STYLE")]
    recording_s3_path_style: bool,
    /// The key prefix of recordings.
    #[arg(long, env = "GATEHOUSE_RECORDING_S3_PREFIX", default_value = "")]
    recording_s3_prefix: String,
    /// `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "GATEHOUSE_HEALTH_ADDRESS", default_value = "0.0.0.0:8081")]
    health_address: SocketAddr,
    /// `/metrics` for a scraper (the health address serves it too).
    #[arg(long, env = "GATEHOUSE_METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    metrics_address: SocketAddr,
    /// How long a finished ApprovalRequest (denied, expired or consumed) is
    /// kept after its `expiresAt`, for `kubectl get` and audits.
    #[arg(long, env = "GATEHOUSE_APPROVAL_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    approval_retention: std::time::Duration,
    /// The namespace of the leader-election Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "gatehouse-system")]
    lease_namespace: String,
    /// The leader-election Lease.
    #[arg(long, default_value = "gatehouse-operator")]
    lease_name: String,
    /// This replica's name in the Lease (the pod's name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
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
    // The Kubernetes client's TLS: ring, the provider the rest of the build uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "gatehouse-operator stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await?;
    let proxy = ProxySettings {
        image: args.proxy_image,
        recording_secret: args.recording_secret,
        recording_s3: args.recording_s3_bucket.map(|bucket| RecordingS3 {
            bucket,
            endpoint: args.recording_s3_endpoint,
            region: args.recording_s3_region,
            path_style: args.recording_s3_path_style,
            prefix: args.recording_s3_prefix,
        }),
    };
    let settings = gatehouse_operator::Settings {
        proxy,
        approval_retention: args.approval_retention,
    };
    let metrics = Arc::new(Metrics::new());
    let health = tokio::net::TcpListener::bind(args.health_address).await?;
    tokio::spawn(gatehouse_operator::health::serve(health, metrics.clone()));
    // The same answers on both: one server, two ports the manifests name.
    let scrape = tokio::net::TcpListener::bind(args.metrics_address).await?;
    tokio::spawn(gatehouse_operator::health::serve(scrape, metrics.clone()));

    let identity = args
        .identity
        .unwrap_or_else(|| format!("gatehouse-operator-{}", std::process::id()));
    let manager = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_parameters(
            LeaseParams::new(&identity, 15, 5).with_field_manager(gatehouse_operator::FIELD_MANAGER),
        )
        .build()
        .await?;
    let (mut leading, lease_task) = manager.watch().await;
    tracing::info!(%identity, lease = %args.lease_name, "waiting for the Lease");
    tokio::select! {
        changed = leading.wait_for(|leading| *leading) => { changed?; }
        () = shutdown_signal() => return Ok(()),
    }
    tracing::info!(%identity, "leading: reconciling Connections, Policies and ApprovalRequests");
    metrics.leader.set(1);
    let lost = {
        let mut leading = leading.clone();
        let metrics = metrics.clone();
        async move {
            let _ = leading.wait_for(|leading| !*leading).await;
            metrics.leader.set(0);
        }
    };
    let stop = async move {
        tokio::select! {
            () = shutdown_signal() => tracing::info!("shutdown requested; finishing reconciles in flight"),
            () = lost => tracing::warn!("lost the Lease; stopping"),
        }
    };
    gatehouse_operator::run_with_metrics(client, settings, metrics.clone(), stop).await;
    // Dropping the receiver ends the lease task, which releases the Lease.
    metrics.leader.set(0);
    drop(leading);
    let _ = lease_task.await;
    Ok(())
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
}
