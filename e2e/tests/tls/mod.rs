//! TLS through the proxy, both sides: psql with sslmode require and
//! verify-full, mTLS identity from a client certificate, upstream TLS to the
//! suite's PostgreSQL, and the SSLRequest downgrade and injection cases.
//!
//! Each test starts its own in-process proxy with the TLS settings it needs.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context as _, ensure};
use gatehouse_e2e::{
    TestEnv,
    kube::write_private,
    pki::Pki,
    postgres::{APP_USER, DATABASE},
};
use gatehouse_proxy::{
    config::ProxyConfig,
    server::{self, Runtime, Shared},
};
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::OnceCell,
};
use tokio_postgres::{NoTls, error::SqlState};

/// The token of the test agent (group `agents`).
const AGENT_TOKEN: &str = "e2e-tls-agent-token-51f0";
/// The SSLRequest packet.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Certificates for the proxies under test, written once per run.
struct Files {
    dir: PathBuf,
    /// CA of the proxy's serving certificates.
    proxy_ca: PathBuf,
    /// CA whose client certificates are identities.
    client_ca: PathBuf,
}

impl Files {
    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

static FILES: OnceCell<Files> = OnceCell::const_new();

async fn files(env: &TestEnv) -> anyhow::Result<&'static Files> {
    FILES
        .get_or_try_init(|| async {
            let dir = env.path().join("tls-proxy");
            std::fs::create_dir_all(&dir)?;
            let write = |name: &str, cert: &gatehouse_e2e::pki::KeyedCert| -> anyhow::Result<()> {
                std::fs::write(dir.join(format!("{name}.crt")), &cert.cert)?;
                write_private(&dir.join(format!("{name}.key")), &cert.key)?;
                Ok(())
            };
            let proxy_ca = Pki::new("gatehouse-e2e-proxy-ca")?;
            write(
                "proxy",
                &proxy_ca.serving_cert("proxy", &["127.0.0.1", "localhost"])?,
            )?;
            write(
                "elsewhere",
                &proxy_ca.serving_cert("elsewhere", &["elsewhere.example"])?,
            )?;
            let client_ca = Pki::new("gatehouse-e2e-client-ca")?;
            write("ci-bot", &client_ca.client_cert("ci-bot", &["agents"])?)?;
            let stranger_ca = Pki::new("gatehouse-e2e-stranger-ca")?;
            write("stranger", &stranger_ca.client_cert("ci-bot", &["agents"])?)?;
            std::fs::write(dir.join("proxy-ca.crt"), &proxy_ca.ca_cert)?;
            std::fs::write(dir.join("client-ca.crt"), &client_ca.ca_cert)?;
            anyhow::Ok(Files {
                proxy_ca: dir.join("proxy-ca.crt"),
                client_ca: dir.join("client-ca.crt"),
                dir,
            })
        })
        .await
}

/// What a test proxy is configured with, as YAML flow mappings.
struct Settings {
    /// `listen` without `address`.
    listen: String,
    /// `upstream.tls`.
    upstream_tls: String,
    /// The upstream port; the suite's PostgreSQL unless a test has its own server.
    upstream_port: Option<u16>,
}

fn config_yaml(env: &TestEnv, port: u16, creds: &std::path::Path, settings: &Settings) -> String {
    let hash = hex::encode(Sha256::digest(AGENT_TOKEN.as_bytes()));
    format!(
        r#"connection: {{namespace: e2e, name: orders-db-tls}}
listen: {{address: "127.0.0.1:{port}", {listen}}}
admin: {{address: "127.0.0.1:0"}}
upstream:
  host: 127.0.0.1
  port: {pg}
  database: {DATABASE}
  tls: {upstream_tls}
  credentials: {{usernameFile: {creds}/username, passwordFile: {creds}/password}}
auth:
  staticTokens:
    - {{sha256: {hash}, username: planner, groups: [agents]}}
policies:
  - name: agents-readonly
    spec:
      connectionSelector: {{}}
      subjects: [{{kind: Group, name: agents}}]
      rules:
        - {{name: reads, match: {{operations: [select, transaction, session]}}, action: allow}}
        - {{name: no-ddl, match: {{operations: [ddl, truncate, copyProgram, privilege, role]}}, action: deny}}
"#,
        listen = settings.listen,
        upstream_tls = settings.upstream_tls,
        pg = settings.upstream_port.unwrap_or(env.postgres.port),
        creds = creds.display(),
    )
}

/// Starts an in-process proxy with `settings`; returns its port.
async fn proxy(env: &TestEnv, name: &str, settings: Settings) -> anyhow::Result<u16> {
    Ok(proxy_watching(env, name, settings).await?.0)
}

/// Like [`proxy`], with the configuration file watched; returns the port and the file.
async fn proxy_watching(env: &TestEnv, name: &str, settings: Settings) -> anyhow::Result<(u16, PathBuf)> {
    let dir = env.path().join(format!("tls-proxy-{name}"));
    let creds = dir.join("credentials");
    std::fs::create_dir_all(&creds)?;
    write_private(&creds.join("username"), APP_USER)?;
    write_private(&creds.join("password"), &env.postgres.app_password)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let config_file = dir.join("config.yaml");
    std::fs::write(&config_file, config_yaml(env, port, &creds, &settings))?;
    let runtime = Runtime::new(ProxyConfig::from_file(&config_file)?)?;
    let shared = Shared::new(runtime);
    tokio::spawn(server::watch_config(
        config_file.clone(),
        shared.clone(),
        Duration::from_millis(100),
    ));
    tokio::spawn(server::serve(
        listener,
        shared,
        std::future::pending(),
        Duration::from_secs(1),
    ));
    Ok((port, config_file))
}

/// A proxy that serves TLS with the certificate `cert` (`proxy` or
/// `elsewhere`), plaintext refused, upstream TLS verified.
async fn tls_proxy(env: &TestEnv, name: &str, cert: &str, client_ca: bool) -> anyhow::Result<u16> {
    let files = files(env).await?;
    let client_ca = if client_ca {
        format!(", clientCaFile: {}", files.client_ca.display())
    } else {
        String::new()
    };
    let settings = Settings {
        listen: format!(
            "allowPlaintext: false, tls: {{certFile: {}, keyFile: {}{client_ca}}}",
            files.path(&format!("{cert}.crt")),
            files.path(&format!("{cert}.key")),
        ),
        upstream_tls: format!(
            "{{mode: verify-full, caFile: {}}}",
            env.postgres.ca_file.display()
        ),
        upstream_port: None,
    };
    proxy(env, name, settings).await
}

/// A plaintext proxy (for tokio-postgres) with `upstream_tls`.
async fn plain_proxy(
    env: &TestEnv,
    name: &str,
    upstream_tls: String,
    upstream_port: Option<u16>,
) -> anyhow::Result<u16> {
    let settings = Settings {
        listen: "allowPlaintext: true".into(),
        upstream_tls,
        upstream_port,
    };
    proxy(env, name, settings).await
}

/// psql on `host`:`port` with libpq settings `vars`; returns (success, stdout, stderr).
async fn psql(
    host: &str,
    port: u16,
    vars: &[(&str, &str)],
    sql: &str,
) -> anyhow::Result<(bool, String, String)> {
    let mut command = tokio::process::Command::new("psql");
    command
        .args([
            "-X",
            "-A",
            "-t",
            "-w",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            "VERBOSITY=verbose",
        ])
        .args(["-h", host, "-p", &port.to_string(), "-U", "planner", "orders"])
        .args(["-c", sql])
        .env_remove("PGPASSWORD")
        .env("PGCONNECT_TIMEOUT", "10");
    for (name, value) in vars {
        command.env(name, value);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .context("psql did not finish within 30 s")??;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

async fn agent(port: u16) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("planner")
        .password(AGENT_TOKEN)
        .dbname("orders")
        .connect(NoTls)
        .await?;
    tokio::spawn(connection);
    Ok(client)
}

const SSL_IN_USE: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

pub async fn psql_require_and_verify_full_read_through_the_proxy(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let files = files(&env).await?;
    let port = tls_proxy(&env, "verify", "proxy", false).await?;
    let root = files.proxy_ca.display().to_string();
    let require = [("PGPASSWORD", AGENT_TOKEN), ("PGSSLMODE", "require")];
    let (ok, out, err) = psql("127.0.0.1", port, &require, "SELECT count(*) FROM orders").await?;
    ensure!(ok && out.trim() == "1000", "sslmode=require: {out} {err}");
    for host in ["127.0.0.1", "localhost"] {
        let vars = [
            ("PGPASSWORD", AGENT_TOKEN),
            ("PGSSLMODE", "verify-full"),
            ("PGSSLROOTCERT", root.as_str()),
        ];
        let (ok, out, err) = psql(host, port, &vars, "SELECT count(*) FROM customers").await?;
        ensure!(
            ok && out.trim() == "100",
            "sslmode=verify-full on {host}: {out} {err}"
        );
    }
    // The upstream leg (verify-full against the harness CA) is TLS too.
    let (ok, out, err) = psql("127.0.0.1", port, &require, SSL_IN_USE).await?;
    ensure!(
        ok && out.trim() == "t",
        "pg_stat_ssl through the proxy: {out} {err}"
    );
    Ok(())
}

pub async fn plaintext_is_refused_unless_allowed(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let port = tls_proxy(&env, "no-plaintext", "proxy", false).await?;
    let vars = [("PGPASSWORD", AGENT_TOKEN), ("PGSSLMODE", "disable")];
    let (ok, _, err) = psql("127.0.0.1", port, &vars, "SELECT 1").await?;
    ensure!(
        !ok && err.contains("accepts TLS connections only") && err.contains("sslmode=require"),
        "{err}"
    );
    let err = agent(port).await.err().context("a plaintext client got in")?;
    ensure!(
        err.code() == Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{err}"
    );
    Ok(())
}

pub async fn verify_full_fails_on_a_proxy_certificate_for_another_name(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    let files = files(&env).await?;
    let port = tls_proxy(&env, "elsewhere", "elsewhere", false).await?;
    let root = files.proxy_ca.display().to_string();
    let vars = [
        ("PGPASSWORD", AGENT_TOKEN),
        ("PGSSLMODE", "verify-full"),
        ("PGSSLROOTCERT", root.as_str()),
    ];
    let (ok, _, err) = psql("127.0.0.1", port, &vars, "SELECT 1").await?;
    ensure!(
        !ok && err.contains("elsewhere.example") && err.contains("does not match"),
        "{err}"
    );
    // It is the name that fails: without verification the same proxy serves.
    let vars = [("PGPASSWORD", AGENT_TOKEN), ("PGSSLMODE", "require")];
    let (ok, out, err) = psql("127.0.0.1", port, &vars, "SELECT 1").await?;
    ensure!(ok && out.trim() == "1", "{out} {err}");
    Ok(())
}

pub async fn a_client_certificate_is_the_identity(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let files = files(&env).await?;
    let port = tls_proxy(&env, "mtls", "proxy", true).await?;
    let root = files.proxy_ca.display().to_string();
    let (cert, key) = (files.path("ci-bot.crt"), files.path("ci-bot.key"));
    // No password anywhere: psql -w would fail if one were asked for.
    let vars = [
        ("PGSSLMODE", "verify-full"),
        ("PGSSLROOTCERT", root.as_str()),
        ("PGSSLCERT", cert.as_str()),
        ("PGSSLKEY", key.as_str()),
    ];
    let (ok, out, err) = psql("127.0.0.1", port, &vars, "SELECT count(*) FROM orders").await?;
    ensure!(ok && out.trim() == "1000", "ci-bot's certificate: {out} {err}");
    // O=agents is the group the Policy names.
    let (ok, _, err) = psql("127.0.0.1", port, &vars, "DROP TABLE orders").await?;
    ensure!(
        !ok && err.contains("42501") && err.contains("agents-readonly") && err.contains("no-ddl"),
        "{err}"
    );
    // A certificate from another CA does not get in.
    let (cert, key) = (files.path("stranger.crt"), files.path("stranger.key"));
    let vars = [
        ("PGSSLMODE", "verify-full"),
        ("PGSSLROOTCERT", root.as_str()),
        ("PGSSLCERT", cert.as_str()),
        ("PGSSLKEY", key.as_str()),
        ("PGPASSWORD", AGENT_TOKEN),
    ];
    let (ok, _, err) = psql("127.0.0.1", port, &vars, "SELECT 1").await?;
    ensure!(!ok && err.contains("SSL error"), "{err}");
    // Without a certificate the token still works; without either, nothing does.
    let vars = [("PGSSLMODE", "require"), ("PGPASSWORD", AGENT_TOKEN)];
    let (ok, out, err) = psql("127.0.0.1", port, &vars, "SELECT 1").await?;
    ensure!(ok && out.trim() == "1", "token on the mTLS proxy: {out} {err}");
    let (ok, _, err) = psql("127.0.0.1", port, &[("PGSSLMODE", "require")], "SELECT 1").await?;
    ensure!(!ok && err.contains("password"), "{err}");
    Ok(())
}

pub async fn upstream_require_and_verify_full_reach_postgres_in_tls(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let files = files(&env).await?;
    let ca = env.postgres.ca_file.display().to_string();
    for (name, tls) in [
        ("up-require", "{mode: require}".to_owned()),
        ("up-verify", format!("{{mode: verify-full, caFile: {ca}}}")),
    ] {
        let port = plain_proxy(&env, name, tls, None).await?;
        let client = agent(port).await.with_context(|| format!("{name}: connect"))?;
        let ssl: bool = client.query_one(SSL_IN_USE, &[]).await?.get(0);
        ensure!(ssl, "{name}: the upstream session is not encrypted");
        let count: i64 = client.query_one("SELECT count(*) FROM orders", &[]).await?.get(0);
        ensure!(count == 1000, "{name}: orders has {count} rows");
    }
    // The proxy's CA did not sign PostgreSQL's certificate.
    let port = plain_proxy(
        &env,
        "up-wrong-ca",
        format!("{{mode: verify-full, caFile: {}}}", files.proxy_ca.display()),
        None,
    )
    .await?;
    let err = agent(port).await.err().context("a wrong CA was accepted")?;
    let db = err.as_db_error().context("not a server error")?;
    ensure!(
        db.code() == &SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION
            && db.message().contains("verify-full")
            && db.message().contains("caFile"),
        "{db:?}"
    );
    ensure!(
        !db.message().contains(&env.postgres.app_password),
        "credential leaked"
    );
    Ok(())
}

pub async fn upstream_require_never_falls_back_to_plaintext(env: Arc<TestEnv>) -> anyhow::Result<()> {
    // A "server" that refuses TLS, as a PostgreSQL with ssl=off does, and
    // records whatever the proxy sends after its answer.
    let server = TcpListener::bind("127.0.0.1:0").await?;
    let server_port = server.local_addr()?.port();
    let received = tokio::spawn(async move {
        let (mut conn, _) = server.accept().await?;
        let mut request = [0u8; 8];
        conn.read_exact(&mut request).await?;
        conn.write_all(b"N").await?;
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest)).await??;
        anyhow::Ok((request, rest))
    });
    let port = plain_proxy(&env, "up-refused", "{mode: require}".into(), Some(server_port)).await?;
    let err = agent(port).await.err().context("connected without TLS")?;
    let db = err.as_db_error().context("not a server error")?;
    ensure!(
        db.code() == &SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION
            && db.message().contains("does not accept TLS")
            && db.message().contains("upstream.tls.mode is require"),
        "{db:?}"
    );
    let (request, rest) = received.await??;
    ensure!(
        request == SSL_REQUEST,
        "the proxy sent {request:?} instead of an SSLRequest"
    );
    ensure!(rest.is_empty(), "the proxy went on in plaintext: {rest:?}");
    Ok(())
}

pub async fn bytes_after_ssl_request_are_refused_and_the_proxy_survives(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    let files = files(&env).await?;
    let port = tls_proxy(&env, "injection", "proxy", false).await?;
    // SSLRequest and a StartupMessage in one write, as a man in the middle
    // would inject a plaintext startup before the handshake.
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await?;
    conn.write_all(&[&SSL_REQUEST[..], &startup_message()].concat())
        .await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
        .await
        .context("the proxy kept the connection open")??;
    ensure!(
        answer.first() == Some(&b'E'),
        "the proxy answered {:?}",
        String::from_utf8_lossy(&answer)
    );
    let text = String::from_utf8_lossy(&answer);
    ensure!(
        text.contains("08P01") && text.contains("unencrypted data after SSL request"),
        "{text}"
    );

    // A second SSLRequest inside TLS is a protocol error too.
    let config = tls_client(files, false)?;
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await?;
    conn.write_all(&SSL_REQUEST).await?;
    let mut byte = [0u8; 1];
    conn.read_exact(&mut byte).await?;
    ensure!(&byte == b"S", "the proxy answered {byte:?} to SSLRequest");
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(rustls_pki_types::ServerName::try_from("localhost")?, conn)
        .await?;
    tls.write_all(&SSL_REQUEST).await?;
    tls.flush().await?;
    let mut answer = Vec::new();
    // The proxy closes after its error; an abrupt close is fine too.
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await?;
    let text = String::from_utf8_lossy(&answer);
    ensure!(
        answer.first() == Some(&b'E') && text.contains("08P01") && text.contains("already encrypted"),
        "{text}"
    );

    // The proxy still serves.
    let vars = [("PGPASSWORD", AGENT_TOKEN), ("PGSSLMODE", "require")];
    let (ok, out, err) = psql("127.0.0.1", port, &vars, "SELECT 1").await?;
    ensure!(ok && out.trim() == "1", "{out} {err}");
    Ok(())
}

/// A rustls client that trusts the proxy CA, offering ALPN `postgresql` or none.
fn tls_client(files: &Files, alpn: bool) -> anyhow::Result<Arc<tokio_rustls::rustls::ClientConfig>> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&files.proxy_ca)? {
        roots.add(cert?)?;
    }
    let mut config = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    if alpn {
        config.alpn_protocols = vec![b"postgresql".to_vec()];
    }
    Ok(Arc::new(config))
}

/// A StartupMessage for user planner on orders.
fn startup_message() -> Vec<u8> {
    let body = b"\x00\x03\x00\x00user\x00planner\x00database\x00orders\x00\x00";
    let mut startup = (4 + body.len() as u32).to_be_bytes().to_vec();
    startup.extend_from_slice(body);
    startup
}

pub async fn direct_tls_needs_alpn_postgresql(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let files = files(&env).await?;
    let port = tls_proxy(&env, "direct", "proxy", false).await?;
    // psql 15 cannot do direct TLS (PostgreSQL 17's sslnegotiation=direct): a
    // rustls client opens with the handshake, then sends its startup.
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1")?;
    let conn = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut tls = tokio_rustls::TlsConnector::from(tls_client(files, true)?)
        .connect(name.clone(), conn)
        .await?;
    tls.write_all(&startup_message()).await?;
    tls.flush().await?;
    let mut head = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut head)).await??;
    // AuthenticationCleartextPassword: the token is asked for over TLS.
    ensure!(head == *b"R\0\0\0\x08\0\0\0\x03", "the proxy answered {head:?}");

    // Without ALPN the connection is refused.
    let conn = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut tls = tokio_rustls::TlsConnector::from(tls_client(files, false)?)
        .connect(name, conn)
        .await?;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await?;
    let text = String::from_utf8_lossy(&answer);
    ensure!(answer.first() == Some(&b'E') && text.contains("ALPN"), "{text}");
    Ok(())
}

pub async fn a_bad_certificate_file_refuses_the_configuration(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let files = files(&env).await?;
    let dir = env.path().join("tls-proxy-bad");
    std::fs::create_dir_all(&dir)?;
    let not_pem = dir.join("not-a-certificate.crt");
    std::fs::write(&not_pem, "hello\n")?;
    let creds = dir.join("credentials");
    let settings = Settings {
        listen: format!(
            "allowPlaintext: false, tls: {{certFile: {}, keyFile: {}}}",
            not_pem.display(),
            files.path("proxy.key"),
        ),
        upstream_tls: "{mode: disable}".into(),
        upstream_port: None,
    };
    let config = ProxyConfig::from_yaml(&config_yaml(&env, 1, &creds, &settings))?;
    let err = Runtime::new(config)
        .err()
        .context("a bad certificate file was accepted")?;
    let err = err.to_string();
    ensure!(
        err.contains("listen.tls.certFile") && err.contains("not-a-certificate.crt"),
        "{err}"
    );
    Ok(())
}

pub async fn a_reload_reads_new_certificate_files_and_a_bad_one_keeps_the_last(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    let files = files(&env).await?;
    let dir = env.path().join("tls-proxy-reload-certs");
    std::fs::create_dir_all(&dir)?;
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::copy(files.dir.join("proxy.crt"), &cert)?;
    std::fs::copy(files.dir.join("proxy.key"), &key)?;
    let settings = Settings {
        listen: format!(
            "allowPlaintext: false, tls: {{certFile: {}, keyFile: {}}}",
            cert.display(),
            key.display()
        ),
        upstream_tls: "{mode: disable}".into(),
        upstream_port: None,
    };
    let (port, config_file) = proxy_watching(&env, "reload", settings).await?;
    let root = files.proxy_ca.display().to_string();
    let vars = [
        ("PGPASSWORD", AGENT_TOKEN),
        ("PGSSLMODE", "verify-full"),
        ("PGSSLROOTCERT", root.as_str()),
    ];
    let verified = || async {
        let (ok, out, err) = psql("127.0.0.1", port, &vars, "SELECT 1").await?;
        anyhow::Ok((ok && out.trim() == "1", err))
    };
    let (ok, err) = verified().await?;
    ensure!(ok, "before the reload: {err}");

    // A renewed certificate (for another name), then a change of the file:
    // the reload serves the new certificate.
    std::fs::copy(files.dir.join("elsewhere.crt"), &cert)?;
    std::fs::copy(files.dir.join("elsewhere.key"), &key)?;
    let original = std::fs::read_to_string(&config_file)?;
    std::fs::write(&config_file, format!("{original}# renewed\n"))?;
    let mut renewed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (ok, err) = verified().await?;
        if !ok {
            ensure!(err.contains("elsewhere.example"), "{err}");
            renewed = true;
            break;
        }
    }
    ensure!(renewed, "the renewed certificate was not served within 5 s");

    // An unusable certificate file refuses the new version; the last good one stays.
    std::fs::write(&cert, "not a certificate\n")?;
    std::fs::write(&config_file, format!("{original}# broken\n"))?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let vars = [("PGPASSWORD", AGENT_TOKEN), ("PGSSLMODE", "require")];
    let (ok, out, err) = psql("127.0.0.1", port, &vars, "SELECT 1").await?;
    ensure!(
        ok && out.trim() == "1",
        "after a bad certificate file: {out} {err}"
    );
    Ok(())
}
