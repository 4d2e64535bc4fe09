//! A Gatehouse proxy in front of the environment's PostgreSQL, for the
//! end-to-end tests and the demo: in process ([`start_proxy`]), or as the
//! `gatehouse-proxy` binary ([`ProxyProcess`]) when a test kills it.

use std::{path::PathBuf, time::Duration};

use gatehouse_proxy::{
    config::ProxyConfig,
    server::{self, Runtime, Shared},
};

use crate::{
    TestEnv,
    kube::write_private,
    net::{free_port, wait_for_port},
    postgres::{APP_USER, DATABASE},
    process::{Process, Spawn},
};

/// A started proxy.
#[derive(Debug)]
pub struct Proxy {
    /// Loopback port agents connect to.
    pub port: u16,
    /// The configuration file the proxy watches.
    pub config_file: PathBuf,
}

/// The part of a standalone configuration most test proxies share: the
/// Connection `e2e/<connection>`, a plaintext listener on loopback `port`,
/// the environment's PostgreSQL with the credential files in `creds`, and
/// one static token (by its SHA-256) for `username` in `groups`. Callers
/// append their own sections (policies, masking, recording, ...).
pub fn config_head(
    env: &TestEnv,
    connection: &str,
    port: u16,
    creds: &std::path::Path,
    token: &str,
    username: &str,
    groups: &[&str],
) -> String {
    use sha2::{Digest, Sha256};
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    format!(
        r#"connection: {{namespace: e2e, name: {connection}}}
listen: {{address: "127.0.0.1:{port}", allowPlaintext: true}}
upstream:
  host: 127.0.0.1
  port: {pg}
  database: {DATABASE}
  tls: {{mode: disable}}
  credentials: {{usernameFile: {creds}/username, passwordFile: {creds}/password}}
auth:
  staticTokens:
    - {{sha256: {hash}, username: {username}, groups: [{groups}]}}
"#,
        pg = env.postgres.port,
        creds = creds.display(),
        groups = groups.join(", "),
    )
}

/// The folder `name` in the run folder with the app user's credential in
/// files under `credentials/`, which it returns.
fn proxy_folder(env: &TestEnv, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = env.path().join(name);
    let creds = dir.join("credentials");
    std::fs::create_dir_all(&creds)?;
    write_private(&creds.join("username"), APP_USER)?;
    write_private(&creds.join("password"), &env.postgres.app_password)?;
    Ok((dir, creds))
}

/// The `gatehouse-proxy` binary as a child process, for tests that kill and
/// restart it.
#[derive(Debug)]
pub struct ProxyProcess {
    /// The running binary; its log is `proxy.log` in the proxy's folder.
    pub process: Process,
    /// Loopback port agents connect to.
    pub port: u16,
    /// Loopback port of the admin endpoint (`/metrics`, `/readyz`).
    pub admin: u16,
}

impl ProxyProcess {
    /// Starts the binary with its own folder `name` in the run folder, the
    /// app user's credential in files, and the configuration `config` writes
    /// for a listen port and the credential folder; an admin endpoint on
    /// loopback is added to it.
    pub async fn start(
        env: &TestEnv,
        name: &str,
        config: impl FnOnce(u16, &std::path::Path) -> anyhow::Result<String>,
    ) -> anyhow::Result<ProxyProcess> {
        let binary = crate::workspace_binary("gatehouse-proxy")?;
        let (dir, creds) = proxy_folder(env, name)?;
        let (port, admin) = (free_port()?, free_port()?);
        let config_file = dir.join("config.yaml");
        std::fs::write(
            &config_file,
            format!(
                "{}admin: {{address: \"127.0.0.1:{admin}\"}}\n",
                config(port, &creds)?
            ),
        )?;
        let step = format!("start gatehouse-proxy for {name}");
        let mut process = Spawn::new("gatehouse-proxy", binary, dir.join("proxy.log"))
            .args(["--config".as_ref(), config_file.as_os_str()])
            .start(&step)?;
        wait_for_port(&mut process, &step, port, Duration::from_secs(30)).await?;
        Ok(ProxyProcess { process, port, admin })
    }

    /// Starts the binary again with the same configuration and folders
    /// (after [`Process::kill`]), and waits for its port.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let step = "start gatehouse-proxy again";
        self.process.restart(step)?;
        wait_for_port(&mut self.process, step, self.port, Duration::from_secs(30)).await?;
        Ok(())
    }
}

/// Starts an in-process proxy with its own folder `name` in the run folder,
/// the app user's credential in files, and the configuration `config`
/// writes for a listen port and the credential folder. The proxy watches
/// its configuration file.
pub async fn start_proxy(
    env: &TestEnv,
    name: &str,
    config: impl FnOnce(u16, &std::path::Path) -> anyhow::Result<String>,
) -> anyhow::Result<Proxy> {
    let (dir, creds) = proxy_folder(env, name)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let config_file = dir.join("config.yaml");
    std::fs::write(&config_file, config(port, &creds)?)?;
    let runtime = Runtime::new(ProxyConfig::from_file(&config_file)?)?;
    let shared = Shared::new(runtime);
    shared.start_recording().map_err(anyhow::Error::msg)?;
    tokio::spawn(server::watch_config(
        config_file.clone(),
        shared.clone(),
        Duration::from_millis(200),
    ));
    tokio::spawn(server::serve(
        listener,
        shared,
        std::future::pending(),
        Duration::from_secs(1),
    ));
    Ok(Proxy { port, config_file })
}

/// Replaces a watched configuration file at once (a temporary file renamed
/// over it, as editors and mounted ConfigMaps do), so the watcher never
/// reads it half-written.
pub fn replace_config(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, contents)?;
    std::fs::rename(&partial, path)
}
