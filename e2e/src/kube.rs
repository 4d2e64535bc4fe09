//! A real Kubernetes control plane: etcd and kube-apiserver on random loopback
//! ports, with static-token users, a service-account signing key and RBAC.
//! There is no kubelet and no controller-manager: the harness plays the kubelet
//! where a test needs one.

use std::{
    fmt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::process::Command;

use crate::{
    error::{Error, Result, StepExt},
    net::{free_port, wait_for_port},
    pki::{Pki, random_hex, service_account_key},
    process::{Process, Spawn},
    tools::Tools,
};

/// The audience Gatehouse proxies accept tokens for.
pub const AUDIENCE: &str = "gatehouse";

/// The static-token users of the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum User {
    /// `admin`, in `system:masters`.
    Admin,
    /// `alice`, an approver in group `dba`.
    Alice,
    /// `bob`, an approver in group `dba`.
    Bob,
    /// `carol`, who sends statements; also in `dba`, so that only the
    /// requester rule stops her approving her own requests.
    Requester,
    /// `nobody`: authenticated, with no rights.
    Nobody,
}

impl User {
    /// Every user.
    pub const ALL: [User; 5] = [User::Admin, User::Alice, User::Bob, User::Requester, User::Nobody];

    /// The username the API server sees.
    pub fn name(self) -> &'static str {
        match self {
            User::Admin => "admin",
            User::Alice => "alice",
            User::Bob => "bob",
            User::Requester => "carol",
            User::Nobody => "nobody",
        }
    }

    /// The user's groups.
    pub fn groups(self) -> &'static [&'static str] {
        match self {
            User::Admin => &["system:masters"],
            User::Alice | User::Bob => &["dba"],
            User::Requester => &["dba", "developers"],
            User::Nobody => &[],
        }
    }
}

impl fmt::Display for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A running etcd and kube-apiserver.
#[derive(Debug)]
pub struct ControlPlane {
    // Fields drop in order: the API server stops before etcd.
    apiserver: Process,
    etcd: Process,
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    /// The CA that signed the API server's certificate (PEM file).
    pub ca_file: PathBuf,
    /// The CA itself, to sign certificates for components under test.
    pub pki: Pki,
    dir: PathBuf,
    kubectl: PathBuf,
    /// The operator's kubeconfig, once its account exists.
    operator: tokio::sync::OnceCell<PathBuf>,
}

/// The operator's ServiceAccount as `config/rbac/operator` installs it: the
/// identity the admission policy lets decide ApprovalRequests.
pub const OPERATOR_NAMESPACE: &str = "gatehouse-system";
/// See [`OPERATOR_NAMESPACE`].
pub const OPERATOR_ACCOUNT: &str = "gatehouse-operator";

impl ControlPlane {
    /// Starts etcd and kube-apiserver under `dir` and waits for `/readyz`.
    pub async fn start(dir: &Path) -> Result<ControlPlane> {
        let tools = Tools::get()?;
        let pki_dir = dir.join("pki");
        std::fs::create_dir_all(&pki_dir).step("create the control-plane folder")?;

        let etcd_port = free_port()?;
        let etcd_peer_port = free_port()?;
        let mut etcd = Spawn::new("etcd", tools.path("etcd"), dir.join("etcd.log"))
            .args(["--name", "e2e", "--data-dir"])
            .args([dir.join("etcd")])
            .args([
                format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer_port}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer_port}"),
                format!("--initial-cluster=e2e=http://127.0.0.1:{etcd_peer_port}"),
                // Test data: durability across a machine crash is not wanted, speed is.
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ])
            .start("start etcd")?;
        wait_for_port(&mut etcd, "start etcd", etcd_port, Duration::from_secs(30)).await?;

        let pki = Pki::new("gatehouse-e2e-ca")?;
        let serving = pki.serving_cert(
            "kube-apiserver",
            &[
                "localhost",
                "127.0.0.1",
                "10.0.0.1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
        )?;
        let (sa_key, sa_pub) = service_account_key()?;
        let ca_file = pki_dir.join("ca.crt");
        let write = |name: &str, contents: &str| -> Result<PathBuf> {
            let path = pki_dir.join(name);
            write_private(&path, contents).step("write control-plane credentials")?;
            Ok(path)
        };
        write("ca.crt", &pki.ca_cert)?;
        let tls_cert = write("apiserver.crt", &serving.cert)?;
        let tls_key = write("apiserver.key", &serving.key)?;
        let sa_key = write("sa.key", &sa_key)?;
        let sa_pub = write("sa.pub", &sa_pub)?;

        // Static tokens: token,user,uid,"group1,group2".
        let tokens: Vec<(User, String)> = User::ALL.iter().map(|u| (*u, random_hex(24))).collect();
        let csv: String = tokens
            .iter()
            .map(|(u, t)| format!("{t},{},{},\"{}\"\n", u.name(), u.name(), u.groups().join(",")))
            .collect();
        let token_file = write("tokens.csv", &csv)?;

        let port = free_port()?;
        let url = format!("https://127.0.0.1:{port}");
        let step = "start kube-apiserver";
        let mut apiserver = Spawn::new(
            "kube-apiserver",
            tools.path("kube-apiserver"),
            dir.join("kube-apiserver.log"),
        )
        .args([
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            format!("--tls-cert-file={}", tls_cert.display()),
            format!("--tls-private-key-file={}", tls_key.display()),
            format!("--client-ca-file={}", ca_file.display()),
            format!("--token-auth-file={}", token_file.display()),
            "--authorization-mode=RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", sa_pub.display()),
            format!("--service-account-signing-key-file={}", sa_key.display()),
            "--api-audiences=https://kubernetes.default.svc".into(),
            // Room for a Service per Connection in `make bench`'s 1,000.
            "--service-cluster-ip-range=10.0.0.0/16".into(),
            "--enable-priority-and-fairness=false".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ])
        .start(step)?;
        wait_for_port(&mut apiserver, step, port, Duration::from_secs(60)).await?;

        let control_plane = ControlPlane {
            apiserver,
            etcd,
            url,
            ca_file,
            pki,
            dir: dir.to_owned(),
            kubectl: tools.path("kubectl"),
            operator: tokio::sync::OnceCell::new(),
        };
        for (user, token) in &tokens {
            control_plane.write_kubeconfig(*user, token)?;
        }
        let mut control_plane = control_plane;
        control_plane.wait_ready(step, Duration::from_secs(90)).await?;
        Ok(control_plane)
    }

    fn write_kubeconfig(&self, user: User, token: &str) -> Result<()> {
        self.write_token_kubeconfig(&self.kubeconfig(user), user.name(), token, "default")
            .step("write kubeconfigs")
    }

    /// Writes (mode 0600) a kubeconfig for this API server that
    /// authenticates as `name` with `token`, in `namespace`: a static user,
    /// or a ServiceAccount with a token from the TokenRequest API.
    pub fn write_token_kubeconfig(
        &self,
        path: &Path,
        name: &str,
        token: &str,
        namespace: &str,
    ) -> std::io::Result<()> {
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {url}\n    certificate-authority: {ca}\nusers:\n- name: {name}\n  user:\n    token: {token}\ncontexts:\n- name: {name}@e2e\n  context:\n    cluster: e2e\n    user: {name}\n    namespace: {namespace}\ncurrent-context: {name}@e2e\n",
            url = self.url,
            ca = self.ca_file.display(),
            token = token.trim(),
        );
        write_private(path, &kubeconfig)
    }

    /// The kubeconfig file of `user`.
    pub fn kubeconfig(&self, user: User) -> PathBuf {
        self.dir.join(format!("kubeconfig-{}", user.name()))
    }

    /// A client acting as `user`.
    pub async fn client(&self, user: User) -> Result<kube::Client> {
        let step = "build a Kubernetes client";
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig(user)).step(step)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .step(step)?;
        kube::Client::try_from(config).step(step)
    }

    /// A `kubectl` command acting as `user`.
    pub fn kubectl(&self, user: User) -> Command {
        let mut command = Command::new(&self.kubectl);
        command
            .arg("--kubeconfig")
            .arg(self.kubeconfig(user))
            .kill_on_drop(true);
        command
    }

    /// Runs `kubectl args` as `user`, with `input` on its stdin: its
    /// stdout, or an error naming the command with its stderr.
    pub async fn kubectl_run(&self, user: User, args: &[&str], input: Option<&str>) -> Result<String> {
        use tokio::io::AsyncWriteExt as _;
        let step = format!("kubectl {}", args.join(" "));
        let mut command = self.kubectl(user);
        command
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = command.spawn().step(&step)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.unwrap_or_default().as_bytes())
                .await
                .step(&step)?;
        }
        let out = child.wait_with_output().await.step(&step)?;
        if !out.status.success() {
            return Err(Error::step(
                &step,
                format!("failed: {}", String::from_utf8_lossy(&out.stderr).trim_end()),
            ));
        }
        String::from_utf8(out.stdout).step(&step)
    }

    /// A one-hour token of the ServiceAccount `service_account` in
    /// `namespace` for the audience `gatehouse`: what an agent shows the
    /// proxy (`kubectl create token ... --audience gatehouse`).
    pub async fn gateway_token(&self, namespace: &str, service_account: &str) -> Result<String> {
        let args = [
            "create",
            "token",
            service_account,
            "-n",
            namespace,
            "--audience",
            "gatehouse",
            "--duration=1h",
        ];
        Ok(self
            .kubectl_run(User::Admin, &args, None)
            .await?
            .trim()
            .to_owned())
    }

    /// A client acting as the operator's own ServiceAccount
    /// ([`OPERATOR_ACCOUNT`] in [`OPERATOR_NAMESPACE`]) with the rights of
    /// `config/rbac/operator`, which the first call applies as a user does:
    /// the operator runs with least privilege, and the admission policy
    /// knows it as the one that decides.
    pub async fn operator_client(&self) -> Result<kube::Client> {
        let path = self.operator_kubeconfig().await?;
        let step = "build the operator's client";
        let kubeconfig = Kubeconfig::read_from(path).step(step)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .step(step)?;
        kube::Client::try_from(config).step(step)
    }

    /// The operator's kubeconfig; see [`ControlPlane::operator_client`].
    pub async fn operator_kubeconfig(&self) -> Result<&Path> {
        let path = self
            .operator
            .get_or_try_init(|| async {
                let root = crate::repo_root();
                let namespace = root.join("config/manager/namespace.yaml");
                let rbac = root.join("config/rbac/operator");
                let (namespace, rbac) = (namespace.to_string_lossy(), rbac.to_string_lossy());
                self.kubectl_run(User::Admin, &["apply", "--server-side", "-f", &namespace], None)
                    .await?;
                self.kubectl_run(User::Admin, &["apply", "--server-side", "-k", &rbac], None)
                    .await?;
                let token = self
                    .kubectl_run(
                        User::Admin,
                        &[
                            "create",
                            "token",
                            OPERATOR_ACCOUNT,
                            "-n",
                            OPERATOR_NAMESPACE,
                            "--duration=24h",
                        ],
                        None,
                    )
                    .await?;
                let path = self.dir.join("kubeconfig-operator");
                self.write_token_kubeconfig(&path, OPERATOR_ACCOUNT, &token, OPERATOR_NAMESPACE)
                    .step("write the operator's kubeconfig")?;
                Ok::<_, Error>(path)
            })
            .await?;
        Ok(path)
    }

    /// Installs the Gatehouse CRDs as a user does (`kubectl apply --server-side
    /// -k config/crd`) and waits until they are Established.
    pub async fn install_crds(&self) -> Result<()> {
        let crd_dir = crate::repo_root().join("config/crd");
        run(
            "install the CRDs",
            self.kubectl(User::Admin)
                .args(["apply", "--server-side", "-k"])
                .arg(&crd_dir),
        )
        .await?;
        run(
            "wait for the CRDs to be Established",
            self.kubectl(User::Admin).args([
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/connections.gatehouse.dev",
                "crd/policies.gatehouse.dev",
                "crd/approvalrequests.gatehouse.dev",
            ]),
        )
        .await?;
        Ok(())
    }

    /// Installs the ValidatingAdmissionPolicy that decides who may create and
    /// review ApprovalRequests (`kubectl apply --server-side -k
    /// config/admission`) and waits until the API server enforces it: it
    /// loads policies a moment after they are written, so the wait probes with
    /// a server-side dry run of a create the policy refuses (admin is not a
    /// proxy).
    pub async fn install_admission(&self) -> Result<()> {
        let step = "install the admission policy";
        run(
            step,
            self.kubectl(User::Admin)
                .args(["apply", "--server-side", "-k"])
                .arg(crate::repo_root().join("config/admission")),
        )
        .await?;
        let probe = self.dir.join("admission-probe.json");
        std::fs::write(
            &probe,
            r#"{"apiVersion":"gatehouse.dev/v1alpha1","kind":"ApprovalRequest","metadata":{"name":"admission-probe"},"spec":{"connection":"probe","connectionUID":"probe","requester":{"username":"probe"},"sessionID":"probe","statement":"SELECT 1","statementHash":"0000000000000000000000000000000000000000000000000000000000000000","parametersHash":"0000000000000000000000000000000000000000000000000000000000000000","fingerprint":"probe","policy":"probe","rule":"probe","approvers":{"groups":["probe"]},"expiresAt":"2030-01-01T00:00:00Z"}}"#,
        )
        .step(step)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let output = self
                .kubectl(User::Admin)
                .args(["create", "--dry-run=server", "-n", "default", "-f"])
                .arg(&probe)
                .output()
                .await
                .step(step)?;
            let stderr = String::from_utf8_lossy(&output.stderr);
            if stderr.contains("ValidatingAdmissionPolicy 'gatehouse-approvalrequests'") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::step(
                    step,
                    format!("the policy was not enforced within 30s; the probe got: {stderr}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Fails when etcd or the API server has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.etcd.ensure_running("etcd")?;
        self.apiserver.ensure_running("kube-apiserver")
    }

    async fn wait_ready(&mut self, step: &str, timeout: Duration) -> Result<()> {
        let client = self.client(User::Admin).await?;
        let deadline = Instant::now() + timeout;
        loop {
            self.etcd.ensure_running(step)?;
            self.apiserver.ensure_running(step)?;
            let request = http::Request::get("/readyz").body(Vec::new()).step(step)?;
            let last = match client.request_text(request).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(body) => body,
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                return Err(self.apiserver.failure(
                    step,
                    &format!("/readyz did not answer ok within {timeout:?}; last answer: {last}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Process ids of etcd and the API server.
    pub fn pids(&self) -> Vec<u32> {
        [self.etcd.pid(), self.apiserver.pid()]
            .into_iter()
            .flatten()
            .collect()
    }
}

/// Writes a file only its owner can read.
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}

/// Runs a command to completion and returns its stdout, or an error naming the
/// command with its stderr.
pub async fn run(step: &str, command: &mut Command) -> Result<String> {
    let line = format!("{:?}", command.as_std());
    let output = command
        .output()
        .await
        .map_err(|e| Error::step(step, format!("{line}: {e}")))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(Error::step(
            step,
            format!(
                "{line} exited with {}:\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ),
        ))
    }
}
