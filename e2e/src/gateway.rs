//! An in-process Gatehouse proxy in front of the environment's PostgreSQL,
//! for the end-to-end tests and the demo.

use std::{path::PathBuf, time::Duration};

use gatehouse_proxy::{
    config::ProxyConfig,
    server::{self, Runtime, Shared},
};

use crate::{
    TestEnv,
    kube::write_private,
    postgres::{APP_USER, DATABASE},
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

/// Starts an in-process proxy with its own folder `name` in the run folder,
/// the app user's credential in files, and the configuration `config`
/// writes for a listen port and the credential folder. The proxy watches
/// its configuration file.
pub async fn start_proxy(
    env: &TestEnv,
    name: &str,
    config: impl FnOnce(u16, &std::path::Path) -> anyhow::Result<String>,
) -> anyhow::Result<Proxy> {
    let dir = env.path().join(name);
    let creds = dir.join("credentials");
    std::fs::create_dir_all(&creds)?;
    write_private(&creds.join("username"), APP_USER)?;
    write_private(&creds.join("password"), &env.postgres.app_password)?;
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
