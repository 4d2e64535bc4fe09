//! `make demo`: brings up the real control plane, PostgreSQL and S3, installs
//! the Gatehouse CRDs, RBAC and samples, prints what to type, and keeps
//! everything running until Ctrl-C.

use std::process::ExitCode;

use gatehouse_e2e::{
    TestEnv, User,
    kube::{run, write_private},
    postgres::{APP_USER, DATABASE},
    repo_root,
    s3::BUCKET,
};

const NAMESPACE: &str = "team-a";

#[tokio::main]
async fn main() -> ExitCode {
    match demo().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn say(step: &str) {
    println!("\n\x1b[1m==> {step}\x1b[0m");
}

async fn demo() -> anyhow::Result<()> {
    say("Starting etcd, kube-apiserver, PostgreSQL and an S3 server (versitygw) on loopback");
    let env = TestEnv::start().await?;
    let kube = &env.kube;
    let kubeconfig = kube.kubeconfig(User::Admin);
    println!("    API server  {}", kube.url);
    println!(
        "    PostgreSQL  127.0.0.1:{} (database {DATABASE})",
        env.postgres.port
    );
    println!("    S3          {} (bucket {BUCKET})", env.s3.endpoint);

    say("Installing the Gatehouse CRDs: kubectl apply --server-side -k config/crd");
    kube.install_crds().await?;
    let root = repo_root();
    say("Installing the approver and editor roles: kubectl apply --server-side -k config/rbac");
    run(
        "install RBAC",
        kube.kubectl(User::Admin)
            .args(["apply", "--server-side", "-k"])
            .arg(root.join("config/rbac")),
    )
    .await?;
    say(&format!(
        "Applying the samples into namespace {NAMESPACE}: kubectl apply --server-side -n {NAMESPACE} -k config/samples"
    ));
    run(
        "create the namespace",
        kube.kubectl(User::Admin).args(["create", "namespace", NAMESPACE]),
    )
    .await?;
    run(
        "apply the samples",
        kube.kubectl(User::Admin)
            .args(["apply", "--server-side", "-n", NAMESPACE, "-k"])
            .arg(root.join("config/samples")),
    )
    .await?;
    let table = run(
        "list",
        kube.kubectl(User::Admin)
            .args(["get", "gatehouse", "-n", NAMESPACE]),
    )
    .await?;
    say(&format!("kubectl get gatehouse -n {NAMESPACE}"));
    print!("{table}");

    // Credentials go into files, never onto the screen.
    let pgpass = env.path().join("pgpass");
    write_private(
        &pgpass,
        &format!(
            "127.0.0.1:{}:{DATABASE}:{APP_USER}:{}\n",
            env.postgres.port, env.postgres.app_password
        ),
    )?;

    say("Try it (in another terminal)");
    println!(
        "    export PATH={}:$PATH KUBECONFIG={}",
        gatehouse_e2e::tools::Tools::get()?.bin.display(),
        kubeconfig.display()
    );
    println!("    kubectl get gatehouse -n {NAMESPACE}");
    println!("    kubectl explain connection.spec.target");
    println!("    kubectl describe policy writes-need-approval -n {NAMESPACE}");
    println!("    kubectl get approvalrequests -n {NAMESPACE} -o wide");
    println!(
        "    kubectl --kubeconfig {} auth whoami     # approver alice, group dba",
        kube.kubeconfig(User::Alice).display()
    );
    println!(
        "    PGPASSFILE={} psql -h 127.0.0.1 -p {} -U {APP_USER} {DATABASE}",
        pgpass.display(),
        env.postgres.port
    );
    println!("\n    Logs and kubeconfigs: {}", env.path().display());
    println!("\nRunning. Press Ctrl-C to stop everything.");
    tokio::signal::ctrl_c().await?;
    say("Stopping");
    drop(env);
    Ok(())
}
