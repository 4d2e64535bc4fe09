//! `make demo`: brings up the real control plane, PostgreSQL and S3, installs
//! the Gatehouse CRDs, RBAC and samples, prints what to type, and keeps
//! everything running until Ctrl-C.

use std::{path::Path, process::ExitCode};

use anyhow::Context as _;
use gatehouse_proxy::config::{NamedPolicy, ProxyConfig};
use sha2::{Digest, Sha256};

use gatehouse_e2e::{
    TestEnv, User, gateway,
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

    say("Adding a table of integrations that holds credentials, as real databases do");
    env.postgres
        .superuser(DATABASE)
        .await?
        .batch_execute(&format!(
            "CREATE TABLE integrations (name text, api_key text, notes text);
             INSERT INTO integrations VALUES
               ('stripe', 'sk_live_Z8UzDzV8fUkkibjL5DZPjN0MEQ7wjJ', 'rotated in November'),
               ('ci', 'ghp_RIBXuDL7DxtpYlSXpfKtHF4vUCsMehGAkWvj', 'old key AKIAZ3MPLE7QX4RT2WVN still in the runner');
             GRANT SELECT ON integrations TO {APP_USER};"
        ))
        .await
        .context("create the integrations table")?;

    say("Starting a Gatehouse proxy for the database, with the sample Policies");
    let proxy = start_proxy(&env, &root).await?;
    let agent_pgpass = env.path().join("agent-pgpass");
    write_private(&agent_pgpass, &format!("127.0.0.1:{proxy}:*:*:{AGENT_TOKEN}\n"))?;
    println!(
        "    The agent is ServiceAccount agents/planner with a token (static here, TokenReview in a cluster); the database credential stays with the proxy."
    );
    for (why, sql) in [
        (
            "a read: allowed by agents-readonly/reads",
            "SELECT count(*) AS orders FROM orders",
        ),
        (
            "credentials in a result: the api_key column is redacted by agents-readonly's column rule, the AWS key in notes by its detectors",
            "SELECT name, api_key, notes FROM integrations",
        ),
        (
            "a schema change: denied by agents-readonly/no-ddl",
            "DROP TABLE orders",
        ),
        (
            "a write to public.orders: requireApproval in writes-need-approval (holding it for approval arrives with the operator)",
            "DELETE FROM orders WHERE id = 1",
        ),
    ] {
        say(&format!("Agent session, {why}: {sql}"));
        let out = tokio::process::Command::new("psql")
            .args([
                "-X",
                "-h",
                "127.0.0.1",
                "-p",
                &proxy.to_string(),
                "-U",
                "planner",
                DATABASE,
                "-c",
                sql,
            ])
            .env("PGPASSFILE", &agent_pgpass)
            .env("PGSSLMODE", "disable")
            .output()
            .await
            .context("run psql")?;
        print!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

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
    println!(
        "    PGPASSFILE={} psql -h 127.0.0.1 -p {proxy} -U planner {DATABASE}     # the agent, through Gatehouse",
        agent_pgpass.display()
    );
    println!("\n    Logs and kubeconfigs: {}", env.path().display());
    println!("\nRunning. Press Ctrl-C to stop everything.");
    tokio::signal::ctrl_c().await?;
    say("Stopping");
    drop(env);
    Ok(())
}

/// The demo agent's token; only its SHA-256 is in the proxy's configuration.
const AGENT_TOKEN: &str = "demo-agent-token-change-me";

/// Starts an in-process proxy in front of the demo database, with the
/// Policies of `config/samples` as the operator would select them, and
/// returns its port.
async fn start_proxy(env: &TestEnv, root: &Path) -> anyhow::Result<u16> {
    let mut policies = Vec::new();
    for file in ["policy-readonly-agents.yaml", "policy-writes-need-approval.yaml"] {
        let path = root.join("config/samples").join(file);
        let policy: gatehouse_crds::Policy = serde_norway::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("read {}", path.display()))?;
        policies.push(NamedPolicy {
            name: policy.metadata.name.unwrap_or_default(),
            spec: policy.spec,
        });
    }
    let hash = hex::encode(Sha256::digest(AGENT_TOKEN.as_bytes()));
    let proxy = gateway::start_proxy(env, "proxy", |port, creds| {
        let mut config = ProxyConfig::from_yaml(&format!(
            r#"connection: {{namespace: {NAMESPACE}, name: orders-db}}
listen: {{address: "127.0.0.1:{port}", allowPlaintext: true}}
admin: {{address: "127.0.0.1:0"}}
upstream:
  host: 127.0.0.1
  port: {pg}
  database: {DATABASE}
  tls: {{mode: disable}}
  credentials: {{usernameFile: {creds}/username, passwordFile: {creds}/password}}
auth:
  staticTokens:
    - {{sha256: {hash}, username: "system:serviceaccount:agents:planner", groups: [system:serviceaccounts, "system:serviceaccounts:agents"]}}
"#,
            pg = env.postgres.port,
            creds = creds.display(),
        ))?;
        config.policies = policies;
        Ok(serde_norway::to_string(&config)?)
    })
    .await?;
    Ok(proxy.port)
}
