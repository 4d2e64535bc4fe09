//! `make demo`: the whole story, live, on loopback: the real control plane,
//! PostgreSQL and S3; the CRDs, roles and admission policy; the operator;
//! a Connection and the sample Policies applied with kubectl; the proxy the
//! operator's Deployment describes (the demo plays the kubelet); an agent
//! whose reads come back masked, whose DROP is denied and whose DELETE waits
//! until alice approves it with `kubectl patch`; then the session's
//! recording replayed and verified. Each step prints the command a user
//! would type. Everything keeps running until Ctrl-C.

use std::{path::Path, process::ExitCode, time::Duration};

use anyhow::{Context as _, bail};
use ed25519_dalek::{
    SigningKey,
    pkcs8::{EncodePrivateKey, EncodePublicKey, spki::der::pem::LineEnding},
};
use gatehouse_crds::{ApprovalRequest, Connection};
use gatehouse_e2e::{
    TestEnv, User,
    kube::{run, write_private},
    pki::random_hex,
    postgres::{APP_USER, DATABASE},
    repo_root,
    s3::{BUCKET, REGION},
};
use kube::Api;
use sha2::{Digest, Sha256};

const NAMESPACE: &str = "team-a";
/// The recordings' key prefix in the bucket.
const PREFIX: &str = "sessions";

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
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

/// Prints a command as a user would type it.
fn typed(command: &str) {
    println!("    $ {command}");
}

fn indent(text: &str) {
    for line in text.lines() {
        println!("    {line}");
    }
}

async fn demo() -> anyhow::Result<()> {
    say("Starting etcd, kube-apiserver, PostgreSQL and an S3 server (versitygw) on loopback");
    let env = TestEnv::start().await?;
    let kube = &env.kube;
    let root = repo_root();
    println!("    API server  {}", kube.url);
    println!(
        "    PostgreSQL  127.0.0.1:{} (database {DATABASE})",
        env.postgres.port
    );
    println!("    S3          {} (bucket {BUCKET})", env.s3.endpoint);

    say("Installing Gatehouse: CRDs, roles for people, and the admission policy that decides who may review");
    typed("kubectl apply --server-side -k config/crd");
    kube.install_crds().await?;
    typed("kubectl apply --server-side -k config/rbac");
    run(
        "install RBAC",
        kube.kubectl(User::Admin)
            .args(["apply", "--server-side", "-k"])
            .arg(root.join("config/rbac")),
    )
    .await?;
    typed("kubectl apply --server-side -k config/admission");
    kube.install_admission().await?;

    say(
        "Starting the operator (in a cluster: its Deployment from the Helm chart; here in this process, as its ServiceAccount)",
    );
    typed("kubectl apply --server-side -k config/rbac/operator");
    let operator = kube.operator_client().await?;
    let admin = kube.client(User::Admin).await?;
    let settings = gatehouse_operator::Settings {
        proxy: gatehouse_operator::ProxySettings {
            image: "gatehouse-proxy:demo".into(),
            recording_secret: "gatehouse-recording".into(),
            recording_s3: Some(gatehouse_operator::RecordingS3 {
                bucket: BUCKET.into(),
                endpoint: Some(env.s3.endpoint.clone()),
                region: REGION.into(),
                path_style: true,
                prefix: PREFIX.into(),
            }),
        },
        approval_retention: Duration::from_secs(24 * 3600),
    };
    tokio::spawn(gatehouse_operator::run(
        operator,
        settings,
        std::future::pending(),
    ));

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

    say(&format!(
        "A platform team applies the Connection, its Secrets and the sample Policies into {NAMESPACE}"
    ));
    // The signing key and the credential go through stdin, never onto the screen.
    let seed: [u8; 32] = Sha256::digest(random_hex(32)).into();
    let signing = SigningKey::from_bytes(&seed);
    let public_key = env.path().join("recording-public-key.pem");
    write_private(
        &public_key,
        &signing.verifying_key().to_public_key_pem(LineEnding::LF)?,
    )?;
    let key_pem = signing.to_pkcs8_pem(LineEnding::LF)?;
    let key_yaml: String = key_pem.lines().map(|l| format!("    {l}\n")).collect();
    let connection = std::fs::read_to_string(root.join("config/samples/connection.yaml"))?
        .replace("host: orders.db.svc", "host: 127.0.0.1")
        .replace("port: 5432", &format!("port: {}", env.postgres.port))
        .replace("database: orders", &format!("database: {DATABASE}"))
        .replace("mode: require\n", "mode: disable\n");
    let secrets = format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: orders-db-creds}}
stringData: {{username: {APP_USER}, password: "{password}"}}
---
apiVersion: v1
kind: Secret
metadata: {{name: gatehouse-recording}}
stringData:
  access-key-id: "{access}"
  secret-access-key: "{secret}"
  signing-key.pem: |
{key_yaml}"#,
        password = env.postgres.app_password,
        access = env.s3.access_key,
        secret = env.s3.secret_key,
    );
    for (command, args) in [
        (
            format!("kubectl create namespace {NAMESPACE}; kubectl create namespace agents"),
            vec![
                vec!["create", "namespace", NAMESPACE],
                vec!["create", "namespace", "agents"],
            ],
        ),
        (
            "kubectl create serviceaccount planner -n agents     # the agent".to_owned(),
            vec![vec!["create", "serviceaccount", "planner", "-n", "agents"]],
        ),
        (
            format!(
                "kubectl create rolebinding dba-approves --clusterrole=gatehouse-approver --group=dba -n {NAMESPACE}"
            ),
            vec![vec![
                "create",
                "rolebinding",
                "dba-approves",
                "--clusterrole=gatehouse-approver",
                "--group=dba",
                "-n",
                NAMESPACE,
            ]],
        ),
    ] {
        typed(&command);
        for a in args {
            env.kube.kubectl_run(User::Admin, &a, None).await?;
        }
    }
    typed(&format!(
        "kubectl apply --server-side -n {NAMESPACE} -f secrets.yaml     # the database credential and the recording key"
    ));
    env.kube
        .kubectl_run(
            User::Admin,
            &["apply", "--server-side", "-n", NAMESPACE, "-f", "-"],
            Some(&secrets),
        )
        .await?;
    typed(&format!(
        "kubectl apply --server-side -n {NAMESPACE} -f config/samples/connection.yaml     # target: the local PostgreSQL"
    ));
    env.kube
        .kubectl_run(
            User::Admin,
            &["apply", "--server-side", "-n", NAMESPACE, "-f", "-"],
            Some(&connection),
        )
        .await?;
    for policy in ["policy-readonly-agents.yaml", "policy-writes-need-approval.yaml"] {
        typed(&format!(
            "kubectl apply --server-side -n {NAMESPACE} -f config/samples/{policy}"
        ));
        let path = root.join("config/samples").join(policy);
        env.kube
            .kubectl_run(
                User::Admin,
                &[
                    "apply",
                    "--server-side",
                    "-n",
                    NAMESPACE,
                    "-f",
                    path.to_str().context("path")?,
                ],
                None,
            )
            .await?;
    }

    say("The operator renders the proxy: ServiceAccount, Role, ConfigMap, Deployment, Service");
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(admin.clone(), NAMESPACE);
    wait_for(|| async { Ok(deployments.get_opt("gatehouse-orders-db").await?.is_some()) }).await?;
    typed(&format!(
        "kubectl get deployment,service,configmap,serviceaccount,role -n {NAMESPACE} -l app.kubernetes.io/managed-by=gatehouse-operator"
    ));
    indent(
        &env.kube
            .kubectl_run(
                User::Admin,
                &[
                    "get",
                    "deployment,service,configmap,serviceaccount,role",
                    "-n",
                    NAMESPACE,
                    "-l",
                    "app.kubernetes.io/managed-by=gatehouse-operator",
                ],
                None,
            )
            .await?,
    );

    say(
        "The kubelet's part (played here): the proxy starts with the Deployment's args, as its ServiceAccount",
    );
    let pod = gatehouse_e2e::kubelet::run_deployment(&env, NAMESPACE, "gatehouse-orders-db").await?;
    let proxy = pod.port("postgres")?;
    let connections: Api<Connection> = Api::namespaced(admin.clone(), NAMESPACE);
    wait_for(|| async {
        Ok(connections.get("orders-db").await?.status.is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        }))
    })
    .await?;
    typed(&format!("kubectl get gatehouse -n {NAMESPACE}"));
    indent(
        &env.kube
            .kubectl_run(User::Admin, &["get", "gatehouse", "-n", NAMESPACE], None)
            .await?,
    );

    say("The agent gets a short-lived token for the gateway: nothing else to leak");
    typed("kubectl create token planner -n agents --audience gatehouse --duration 1h");
    let token = env.kube.gateway_token("agents", "planner").await?;
    let agent_pgpass = env.path().join("agent-pgpass");
    write_private(&agent_pgpass, &format!("127.0.0.1:{proxy}:*:*:{token}\n"))?;
    let psql = |sql: &str| {
        let mut command = tokio::process::Command::new("psql");
        command
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
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        command
    };
    for (why, sql) in [
        (
            "a read, allowed by agents-readonly/reads",
            "SELECT count(*) AS orders FROM orders",
        ),
        (
            "credentials in a result: api_key redacted by agents-readonly's column rule, the AWS key in notes by its detectors",
            "SELECT name, api_key, notes FROM integrations",
        ),
        (
            "a schema change, denied by agents-readonly/no-ddl",
            "DROP TABLE orders",
        ),
    ] {
        say(&format!("Agent: {why}"));
        typed(&format!("psql -h <proxy> -U planner {DATABASE} -c \"{sql}\""));
        let out = psql(sql).output().await.context("run psql")?;
        indent(&format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }

    say("Agent: a write to public.orders, which writes-need-approval holds until a dba approves it");
    let delete = "DELETE FROM orders WHERE id = 1";
    typed(&format!(
        "psql -h <proxy> -U planner {DATABASE} -c \"{delete}\"     # waits"
    ));
    let held = psql(delete).spawn().context("run psql")?;
    let requests: Api<ApprovalRequest> = Api::namespaced(admin.clone(), NAMESPACE);
    wait_for(|| async { Ok(!requests.list(&Default::default()).await?.items.is_empty()) }).await?;
    let name = requests
        .list(&Default::default())
        .await?
        .items
        .first()
        .map(kube::ResourceExt::name_any)
        .context("the request vanished")?;
    typed(&format!("kubectl get approvalrequests -n {NAMESPACE} -o wide"));
    indent(
        &env.kube
            .kubectl_run(
                User::Admin,
                &["get", "approvalrequests", "-n", NAMESPACE, "-o", "wide"],
                None,
            )
            .await?,
    );

    say("bob tries to approve as alice: the API server refuses it");
    let patch_as = |user: &str, reason: &str| {
        serde_json::json!([{"op": "add", "path": "/spec/reviews/-", "value": {"user": user, "groups": ["dba"], "decision": "Approved", "reason": reason}}])
            .to_string()
    };
    let forged = patch_as("alice", "looks fine");
    typed(&format!(
        "kubectl patch approvalrequest {name} -n {NAMESPACE} --type=json -p '{forged}'     # as bob"
    ));
    match env
        .kube
        .kubectl_run(
            User::Bob,
            &[
                "patch",
                "approvalrequest",
                &name,
                "-n",
                NAMESPACE,
                "--type=json",
                "-p",
                &forged,
            ],
            None,
        )
        .await
    {
        Ok(_) => bail!("bob's forged review was let in"),
        Err(e) => {
            let e = e.to_string();
            indent(e.split_once(" failed: ").map_or(e.as_str(), |(_, why)| why));
        }
    }

    say("alice (group dba) approves: the DELETE runs, once");
    let approve = patch_as("alice", "ticket OPS-1234");
    typed(&format!(
        "kubectl patch approvalrequest {name} -n {NAMESPACE} --type=json -p '{approve}'     # as alice"
    ));
    indent(
        &env.kube
            .kubectl_run(
                User::Alice,
                &[
                    "patch",
                    "approvalrequest",
                    &name,
                    "-n",
                    NAMESPACE,
                    "--type=json",
                    "-p",
                    &approve,
                ],
                None,
            )
            .await?,
    );
    let out = tokio::time::timeout(Duration::from_secs(30), held.wait_with_output())
        .await
        .context("the approved DELETE did not finish within 30 s")??;
    println!("    the agent's psql printed:");
    indent(&format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    typed(&format!("kubectl get approvalrequest {name} -n {NAMESPACE}"));
    indent(
        &env.kube
            .kubectl_run(
                User::Admin,
                &["get", "approvalrequest", &name, "-n", NAMESPACE],
                None,
            )
            .await?,
    );
    typed(&format!(
        "kubectl get events -n {NAMESPACE} --field-selector involvedObject.name={name}"
    ));
    indent(
        &env.kube
            .kubectl_run(
                User::Admin,
                &[
                    "get",
                    "events",
                    "-n",
                    NAMESPACE,
                    "--field-selector",
                    &format!("involvedObject.name={name}"),
                ],
                None,
            )
            .await?,
    );

    say("A security engineer replays the agent's sessions from S3 and verifies them");
    let cli = gatehouse_e2e::workspace_binary("kubectl-gatehouse")?;
    let recordings = |args: &[&str]| {
        let mut command = tokio::process::Command::new(&cli);
        command
            .args([
                "--s3-bucket",
                BUCKET,
                "--s3-endpoint",
                &env.s3.endpoint,
                "--s3-path-style",
                "--s3-prefix",
                PREFIX,
            ])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", &env.s3.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &env.s3.secret_key)
            .env("GATEHOUSE_RECORDING_PUBLIC_KEY", &public_key);
        command
    };
    let connection_ref = format!("{NAMESPACE}/orders-db");
    let mut listing = String::new();
    for _ in 0..100 {
        let out = recordings(&["sessions", "--connection", &connection_ref])
            .output()
            .await?;
        listing = String::from_utf8_lossy(&out.stdout).into_owned();
        // The held DELETE's session is the last of four.
        if listing.lines().skip(1).count() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    typed(&format!(
        "kubectl gatehouse sessions --connection {connection_ref}"
    ));
    indent(&listing);
    let last = listing
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().next())
        .context("no session recorded")?
        .to_owned();
    for sub in ["replay", "verify"] {
        typed(&format!("kubectl gatehouse {sub} {last}"));
        let out = recordings(&[sub, &last]).output().await?;
        indent(&format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }

    say("Try it (in another terminal)");
    println!(
        "    export PATH={}:{}:$PATH KUBECONFIG={}",
        gatehouse_e2e::tools::Tools::get()?.bin.display(),
        cli.parent().map(Path::display).context("bin folder")?,
        kube.kubeconfig(User::Admin).display()
    );
    println!("    kubectl get gatehouse -n {NAMESPACE}");
    println!("    kubectl explain connection.spec.approval");
    println!("    kubectl describe policy writes-need-approval -n {NAMESPACE}");
    println!(
        "    PGPASSFILE={} psql -h 127.0.0.1 -p {proxy} -U planner {DATABASE}     # the agent, through Gatehouse",
        agent_pgpass.display()
    );
    println!(
        "    kubectl --kubeconfig {} get approvalrequests -n {NAMESPACE}     # approver alice, group dba",
        kube.kubeconfig(User::Alice).display()
    );
    println!("\n    Logs and kubeconfigs: {}", env.path().display());
    println!("\nRunning. Press Ctrl-C to stop everything.");
    tokio::signal::ctrl_c().await?;
    say("Stopping");
    drop(pod);
    drop(env);
    Ok(())
}

/// Polls `check` every 100 ms for up to 30 s.
async fn wait_for<F, Fut>(mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    for _ in 0..300 {
        if check().await? {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("timed out after 30 s")
}
