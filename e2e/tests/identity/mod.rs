//! Caller identity through a real proxy: ServiceAccount tokens made by the
//! real API server (`kubectl create token`) and checked with its TokenReview,
//! and OIDC tokens checked against a JWKS file; psql and tokio-postgres
//! connect with them as their password, and the identity drives the Policy.
//!
//! The proxy reviews tokens as its own ServiceAccount, bound to ClusterRole
//! `system:auth-delegator`, through a kubeconfig holding that account's token.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail, ensure};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use gatehouse_e2e::{
    TestEnv, User,
    kube::{AUDIENCE, write_private},
    postgres::{APP_USER, DATABASE},
};
use gatehouse_proxy::{
    config::ProxyConfig,
    server::{self, Runtime, Shared},
};
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use serde_json::{Value, json};
use tokio::sync::OnceCell;
use tokio_postgres::{NoTls, error::SqlState};

use crate::proxy::start_proxy;

/// The namespace of this module's ServiceAccounts.
const NS: &str = "identity-e2e";
/// The OIDC issuer the proxy trusts.
const ISSUER: &str = "https://idp.identity-e2e.test";
/// The audience OIDC tokens must name.
const OIDC_AUDIENCE: &str = "orders-db";
/// The id of the OIDC signing key in the JWKS.
const KID: &str = "e2e-idp-1";
/// How long the proxy trusts an accepted ServiceAccount token without asking again.
const REVIEW_CACHE_TTL: &str = "2s";

/// The proxy of this module and the OIDC issuer's signing key.
struct IdentityProxy {
    port: u16,
    signing_key: EncodingKey,
}

static PROXY: OnceCell<IdentityProxy> = OnceCell::const_new();

async fn kubectl_ok(env: &TestEnv, args: &[&str]) -> anyhow::Result<String> {
    Ok(env
        .kube
        .kubectl_run(User::Admin, args, None)
        .await?
        .trim()
        .to_owned())
}

/// A token of ServiceAccount `sa` for `audience` (the API server's own when `None`).
async fn sa_token(env: &TestEnv, sa: &str, audience: Option<&str>) -> anyhow::Result<String> {
    let mut args = vec!["create", "token", sa, "-n", NS];
    if let Some(audience) = audience {
        args.extend(["--audience", audience]);
    }
    kubectl_ok(env, &args).await
}

/// A kubeconfig for the proxy's own ServiceAccount, which may create
/// TokenReviews and nothing else.
async fn proxy_kubeconfig(env: &TestEnv, dir: &Path) -> anyhow::Result<PathBuf> {
    kubectl_ok(env, &["create", "namespace", NS]).await?;
    for sa in ["gatehouse-proxy", "planner", "stranger"] {
        kubectl_ok(env, &["create", "serviceaccount", sa, "-n", NS]).await?;
    }
    kubectl_ok(
        env,
        &[
            "create",
            "clusterrolebinding",
            "identity-e2e-gatehouse-proxy",
            "--clusterrole=system:auth-delegator",
            &format!("--serviceaccount={NS}:gatehouse-proxy"),
        ],
    )
    .await?;
    let token = kubectl_ok(
        env,
        &["create", "token", "gatehouse-proxy", "-n", NS, "--duration=3h"],
    )
    .await?;
    let path = dir.join("kubeconfig");
    env.kube
        .write_token_kubeconfig(&path, "gatehouse-proxy", &token, NS)?;
    // The account may review tokens, and may not do anything else.
    let can = |verb: &'static str, resource: &'static str| {
        let path = path.clone();
        async move {
            let out = env
                .kube
                .kubectl(User::Admin)
                .arg("--kubeconfig")
                .arg(&path)
                .args(["auth", "can-i", verb, resource])
                .output()
                .await?;
            anyhow::Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        }
    };
    ensure!(can("create", "tokenreviews.authentication.k8s.io").await? == "yes");
    ensure!(can("get", "secrets").await? == "no");
    Ok(path)
}

fn config_yaml(env: &TestEnv, port: u16, creds: &Path, kubeconfig: &Path, jwks: &Path) -> String {
    format!(
        r#"connection: {{namespace: e2e, name: identity-db}}
listen: {{address: "127.0.0.1:{port}", allowPlaintext: true}}
admin: {{address: "127.0.0.1:0"}}
upstream:
  host: 127.0.0.1
  port: {pg}
  database: {DATABASE}
  tls: {{mode: disable}}
  credentials: {{usernameFile: {creds}/username, passwordFile: {creds}/password}}
auth:
  tokenReview: {{audience: {AUDIENCE}, kubeconfigFile: {kubeconfig}, cacheTtl: {REVIEW_CACHE_TTL}}}
  oidc:
    issuer: {ISSUER}
    audiences: [{OIDC_AUDIENCE}]
    jwksFile: {jwks}
    usernameClaim: email
    groupsClaim: groups
    clockSkew: 30s
policies:
  - name: sa-planner
    spec:
      connectionSelector: {{}}
      subjects: [{{kind: ServiceAccount, name: planner, namespace: {NS}}}]
      rules:
        - {{name: reads, match: {{operations: [select, transaction, session]}}, action: allow}}
        - {{name: no-credentials, match: {{tables: [public.api_credentials]}}, action: deny}}
  - name: oidc-analysts
    spec:
      connectionSelector: {{}}
      subjects: [{{kind: Group, name: analysts}}]
      rules:
        - {{name: customers, match: {{operations: [select], tables: [public.customers]}}, action: allow}}
  - name: oidc-ana
    spec:
      connectionSelector: {{}}
      subjects: [{{kind: User, name: ana@example.com}}]
      rules:
        - {{name: orders, match: {{operations: [select], tables: [public.orders]}}, action: allow}}
"#,
        pg = env.postgres.port,
        creds = creds.display(),
        kubeconfig = kubeconfig.display(),
        jwks = jwks.display(),
    )
}

/// Starts this module's proxy in-process on first use.
async fn proxy(env: &TestEnv) -> anyhow::Result<&'static IdentityProxy> {
    PROXY
        .get_or_try_init(|| async {
            let dir = env.path().join("identity");
            std::fs::create_dir_all(&dir)?;
            let kubeconfig = proxy_kubeconfig(env, &dir).await?;

            let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let signing_key = EncodingKey::from_ec_der(&pair.serialize_der());
            let mut public = Jwk::from_encoding_key(&signing_key, Algorithm::ES256)?;
            public.common.key_id = Some(KID.into());
            let jwks = dir.join("jwks.json");
            std::fs::write(&jwks, json!({"keys": [public]}).to_string())?;

            let started = start_proxy(env, "identity", |port, creds| {
                Ok(config_yaml(env, port, creds, &kubeconfig, &jwks))
            })
            .await?;
            let port = started.port;
            anyhow::Ok(IdentityProxy { port, signing_key })
        })
        .await
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// An OIDC token signed with the issuer's key, `edit` applied to its claims.
fn oidc_token(
    proxy: &IdentityProxy,
    edit: impl FnOnce(&mut serde_json::Map<String, Value>),
) -> anyhow::Result<String> {
    let mut claims = serde_json::Map::new();
    claims.insert("iss".into(), json!(ISSUER));
    claims.insert("aud".into(), json!(OIDC_AUDIENCE));
    claims.insert("sub".into(), json!("u-0001"));
    claims.insert("email".into(), json!("ana@example.com"));
    claims.insert("groups".into(), json!(["analysts"]));
    claims.insert("iat".into(), json!(now()));
    claims.insert("exp".into(), json!(now() + 600));
    edit(&mut claims);
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(KID.into());
    Ok(jsonwebtoken::encode(
        &header,
        &Value::Object(claims),
        &proxy.signing_key,
    )?)
}

async fn connect(port: u16, token: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("agent")
        .password(token)
        .dbname(DATABASE)
        .connect(NoTls)
        .await?;
    tokio::spawn(connection);
    Ok(client)
}

/// psql through the proxy; returns (success, stdout, stderr).
async fn psql(port: u16, token: &str, sql: &str) -> anyhow::Result<(bool, String, String)> {
    let out = tokio::process::Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-w",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "agent",
        ])
        .arg(DATABASE)
        .env("PGPASSWORD", token)
        .env("PGSSLMODE", "prefer")
        .args(["-c", sql])
        .output()
        .await?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Connecting with `token` fails with `code` and a message containing
/// `expected`; the message shows no part of the token.
async fn refused(port: u16, token: &str, code: &SqlState, expected: &str) -> anyhow::Result<()> {
    let err = connect(port, token)
        .await
        .err()
        .with_context(|| format!("accepted a token that should fail with {expected:?}"))?;
    let db = err
        .as_db_error()
        .with_context(|| format!("not a server error: {err}"))?;
    ensure!(db.code() == code, "expected {code:?}, got {db:?}");
    ensure!(
        db.message().contains(expected),
        "expected {expected:?} in {:?}",
        db.message()
    );
    let shown = format!("{db:?} {err}");
    ensure_no_token_in(&shown, token)
}

/// No segment of `token` (a JWT's header, payload or signature) appears in `text`.
fn ensure_no_token_in(text: &str, token: &str) -> anyhow::Result<()> {
    ensure!(
        token.is_empty() || !text.contains(token),
        "the token appears in {text}"
    );
    for part in token.split('.').filter(|p| p.len() >= 8) {
        ensure!(!text.contains(part), "part of the token appears in {text}");
    }
    Ok(())
}

async fn count(client: &tokio_postgres::Client, table: &str) -> Result<i64, tokio_postgres::Error> {
    Ok(client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await?
        .get(0))
}

fn denied(result: Result<i64, tokio_postgres::Error>, policy_text: &str) -> anyhow::Result<()> {
    let err = result.err().context("the statement ran")?;
    let db = err
        .as_db_error()
        .with_context(|| format!("not a server error: {err}"))?;
    ensure!(db.code() == &SqlState::INSUFFICIENT_PRIVILEGE, "{db:?}");
    ensure!(
        db.message().contains(policy_text),
        "expected {policy_text:?} in {db:?}"
    );
    Ok(())
}

/// A JWT with one character of its signature changed.
fn alter_signature(token: &str) -> anyhow::Result<String> {
    let (head, signature) = token.rsplit_once('.').context("not a JWT")?;
    let mut sig: Vec<char> = signature.chars().collect();
    let mid = sig.len() / 2;
    sig[mid] = if sig[mid] == 'A' { 'B' } else { 'A' };
    Ok(format!("{head}.{}", sig.into_iter().collect::<String>()))
}

pub async fn service_account_tokens_are_reviewed_and_their_policy_applies(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    let proxy = proxy(&env).await?;
    let token = sa_token(&env, "planner", Some(AUDIENCE)).await?;
    let client = connect(proxy.port, &token).await?;
    ensure!(count(&client, "orders").await? == 1000, "orders");
    // Policy sa-planner names the ServiceAccount, so its deny rule applies.
    denied(
        count(&client, "api_credentials").await,
        "\"sa-planner\", rule \"no-credentials\"",
    )?;
    ensure!(count(&client, "customers").await? == 100, "the session went on");
    // The same token with psql, again (now from the proxy's cache).
    let (ok, out, err) = psql(
        proxy.port,
        &token,
        "SELECT current_user || '@' || current_database()",
    )
    .await?;
    ensure!(
        ok && out.trim() == format!("{APP_USER}@{DATABASE}"),
        "psql: {out} {err}"
    );

    // Another ServiceAccount of the same namespace: authenticated, but no
    // Policy names it, so everything is denied by default.
    let stranger = connect(proxy.port, &sa_token(&env, "stranger", Some(AUDIENCE)).await?).await?;
    denied(count(&stranger, "orders").await, "default deny")?;
    Ok(())
}

pub async fn service_account_tokens_for_another_audience_altered_or_deleted_are_refused(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    let proxy = proxy(&env).await?;
    let port = proxy.port;
    // A token for the API server's own audience.
    let other = sa_token(&env, "planner", None).await?;
    refused(
        port,
        &other,
        &SqlState::INVALID_PASSWORD,
        "issued for another audience; this Connection accepts tokens for \"gatehouse\"",
    )
    .await?;
    let (ok, _, stderr) = psql(port, &other, "SELECT 1").await?;
    ensure!(!ok && stderr.contains("another audience"), "{stderr}");
    ensure_no_token_in(&stderr, &other)?;

    let genuine = sa_token(&env, "planner", Some(AUDIENCE)).await?;
    refused(
        port,
        &alter_signature(&genuine)?,
        &SqlState::INVALID_PASSWORD,
        "the token is not valid for this Connection",
    )
    .await?;

    // A ServiceAccount that goes away: a token seen before it went is trusted
    // at most the cache time (plus the API server's own short cache); one
    // never seen is refused at once.
    kubectl_ok(&env, &["create", "serviceaccount", "ephemeral", "-n", NS]).await?;
    let seen = sa_token(&env, "ephemeral", Some(AUDIENCE)).await?;
    let unseen = sa_token(&env, "ephemeral", Some(AUDIENCE)).await?;
    connect(port, &seen).await.context("a fresh token was refused")?;
    kubectl_ok(&env, &["delete", "serviceaccount", "ephemeral", "-n", NS]).await?;
    refused(
        port,
        &unseen,
        &SqlState::INVALID_PASSWORD,
        "the token is not valid for this Connection",
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        match connect(port, &seen).await {
            Ok(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(500)).await,
            Ok(_) => bail!("a token of a deleted ServiceAccount still works after 40 s"),
            Err(e) => {
                ensure!(e.code() == Some(&SqlState::INVALID_PASSWORD), "{e}");
                break;
            }
        }
    }
    Ok(())
}

pub async fn oidc_claims_name_the_caller_and_drive_the_policy(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let proxy = proxy(&env).await?;
    // ana: group analysts (customers) and her own Policy (orders).
    let ana = connect(proxy.port, &oidc_token(proxy, |_| {})?).await?;
    ensure!(count(&ana, "customers").await? == 100, "customers");
    ensure!(count(&ana, "orders").await? == 1000, "orders");
    denied(count(&ana, "api_credentials").await, "default deny")?;
    // bob: only the group's Policy.
    let bob_token = oidc_token(proxy, |c| _ = c.insert("email".into(), json!("bob@example.com")))?;
    let bob = connect(proxy.port, &bob_token).await?;
    ensure!(count(&bob, "customers").await? == 100, "customers");
    denied(count(&bob, "orders").await, "default deny")?;
    // carol: no groups claim at all, so no group, so nothing.
    let carol = oidc_token(proxy, |c| {
        c.insert("email".into(), json!("carol@example.com"));
        c.remove("groups");
    })?;
    let (ok, _, err) = psql(proxy.port, &carol, "SELECT count(*) FROM customers").await?;
    ensure!(!ok && err.contains("default deny"), "{err}");
    let (ok, out, err) = psql(proxy.port, &bob_token, "SELECT count(*) FROM customers").await?;
    ensure!(ok && out.trim() == "100", "psql: {out} {err}");
    Ok(())
}

pub async fn oidc_tokens_expired_for_another_audience_issuer_or_altered_are_refused(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    let proxy = proxy(&env).await?;
    let port = proxy.port;
    let invalid = &SqlState::INVALID_PASSWORD;
    let expired = oidc_token(proxy, |c| _ = c.insert("exp".into(), json!(now() - 3600)))?;
    refused(port, &expired, invalid, "the token has expired; get a new one").await?;
    // Within the 30 s clock skew it still passes.
    connect(
        port,
        &oidc_token(proxy, |c| _ = c.insert("exp".into(), json!(now() - 10)))?,
    )
    .await?;
    let early = oidc_token(proxy, |c| _ = c.insert("nbf".into(), json!(now() + 600)))?;
    refused(port, &early, invalid, "the token is not valid yet").await?;
    let audience = oidc_token(proxy, |c| _ = c.insert("aud".into(), json!("another-db")))?;
    refused(
        port,
        &audience,
        invalid,
        "this Connection accepts tokens for \"orders-db\"",
    )
    .await?;
    // Another issuer is not trusted (it goes to TokenReview, which refuses it).
    let issuer = oidc_token(proxy, |c| {
        _ = c.insert("iss".into(), json!("https://evil.example.com"))
    })?;
    refused(
        port,
        &issuer,
        invalid,
        "the token is not valid for this Connection",
    )
    .await?;
    // The payload of a genuine token changed to name someone else.
    let genuine = oidc_token(proxy, |c| _ = c.insert("email".into(), json!("bob@example.com")))?;
    let parts: Vec<&str> = genuine.split('.').collect();
    let mut claims: Value = serde_json::from_slice(&B64.decode(parts.get(1).context("not a JWT")?)?)?;
    claims["email"] = json!("ana@example.com");
    let forged = format!("{}.{}.{}", parts[0], B64.encode(claims.to_string()), parts[2]);
    refused(
        port,
        &forged,
        invalid,
        "the token is not valid for this Connection",
    )
    .await?;
    refused(
        port,
        &alter_signature(&genuine)?,
        invalid,
        "the token is not valid for this Connection",
    )
    .await?;
    // Signed by another key under the issuer's kid.
    let stranger_key = EncodingKey::from_ec_der(
        &rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?.serialize_der(),
    );
    let impostor = IdentityProxy {
        port,
        signing_key: stranger_key,
    };
    refused(
        port,
        &oidc_token(&impostor, |_| {})?,
        invalid,
        "the token is not valid for this Connection",
    )
    .await?;
    // A claim that cannot name a caller.
    let posing = oidc_token(proxy, |c| {
        c.insert(
            "email".into(),
            json!(format!("system:serviceaccount:{NS}:planner")),
        );
    })?;
    refused(port, &posing, invalid, "the token's claim \"email\" must be").await?;

    // A JWKS file that does not parse refuses the configuration, naming the file.
    let dir = env.path().join("identity");
    let broken = dir.join("broken-jwks.json");
    std::fs::write(&broken, "{\"keys\": \"none\"}")?;
    let text = std::fs::read_to_string(dir.join("config.yaml"))?.replace(
        &dir.join("jwks.json").display().to_string(),
        &broken.display().to_string(),
    );
    let err = ProxyConfig::from_yaml(&text)
        .map_err(anyhow::Error::from)
        .and_then(|c| Runtime::new(c).map_err(anyhow::Error::from))
        .err()
        .context("a broken JWKS file was accepted")?
        .to_string();
    ensure!(
        err.contains("jwksFile") && err.contains("broken-jwks.json"),
        "{err}"
    );
    Ok(())
}

pub async fn no_token_is_refused_with_28000(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let proxy = proxy(&env).await?;
    refused(
        proxy.port,
        "",
        &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        "no token: connect with your Gatehouse token as the password",
    )
    .await?;
    // Not a JWT, not a static token: refused without asking anyone.
    refused(
        proxy.port,
        "just-a-password",
        &SqlState::INVALID_PASSWORD,
        "the token is not valid for this Connection",
    )
    .await
}

pub async fn an_unreachable_api_server_is_a_retry_not_a_refusal(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let proxy = proxy(&env).await?;
    let dir = env.path().join("identity");
    // The same configuration, but the kubeconfig points at a port nobody serves.
    let dead = format!("https://127.0.0.1:{}", gatehouse_e2e::net::free_port()?);
    let kubeconfig = std::fs::read_to_string(dir.join("kubeconfig"))?.replace(&env.kube.url, &dead);
    let unreachable = dir.join("kubeconfig-unreachable");
    write_private(&unreachable, &kubeconfig)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let text = std::fs::read_to_string(dir.join("config.yaml"))?
        .replace(
            &dir.join("kubeconfig").display().to_string(),
            &unreachable.display().to_string(),
        )
        .replace(&format!("127.0.0.1:{}", proxy.port), &format!("127.0.0.1:{port}"));
    ensure!(text.contains("kubeconfig-unreachable"), "the edit did not apply");
    let shared = Shared::new(Runtime::new(ProxyConfig::from_yaml(&text)?)?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(server::serve(
        listener,
        shared,
        async {
            let _ = stopped.await;
        },
        Duration::from_secs(1),
    ));

    let token = sa_token(&env, "planner", Some(AUDIENCE)).await?;
    let outcome = refused(
        port,
        &token,
        &SqlState::CANNOT_CONNECT_NOW,
        "cannot verify the token now: the Kubernetes API server did not answer; retry in a moment",
    )
    .await;
    // OIDC does not depend on the API server and still works.
    let oidc =
        async { anyhow::Ok(count(&connect(port, &oidc_token(proxy, |_| {})?).await?, "customers").await?) }
            .await;
    let _ = stop.send(());
    served.await?;
    outcome?;
    ensure!(oidc? == 100, "customers");
    Ok(())
}
