//! Masking against the real database, with psql, tokio-postgres (binary
//! format) and psycopg through the proxy. Each client connects through a
//! tap that keeps every byte the proxy sent it, and no secret may appear in
//! those bytes, raw or hex-encoded (bytea's text format).

use std::{
    path::Path,
    process::Stdio,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, bail, ensure};
use gatehouse_e2e::{
    TestEnv,
    kube::write_private,
    postgres::{APP_USER, DATABASE},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::OnceCell,
};
use tokio_postgres::error::SqlState;

use gatehouse_e2e::gateway::{ProxyProcess, config_head};

use crate::proxy::{AGENT_TOKEN, agent, psql, start_proxy};

/// A value holding a secret, and the secret: the bytes that must never
/// reach the client.
pub(crate) struct Planted {
    kind: &'static str,
    value: &'static str,
    secrets: &'static [&'static str],
}

/// One value per detector, written for this test (not the detectors' own
/// examples), with the secret inside ordinary text.
pub(crate) const PLANTED: &[Planted] = &[
    Planted {
        kind: "aws-access-key-id",
        value: "deploy with AKIAZ3MPLE7QX4RT2WVN from ci",
        secrets: &["AKIAZ3MPLE7QX4RT2WVN"],
    },
    Planted {
        kind: "aws-secret-access-key",
        value: "aws_secret_access_key = PtYgjmUhBel31iEl2hpChYgCfrL1spNxnyVmihA+",
        secrets: &["PtYgjmUhBel31iEl2hpChYgCfrL1spNxnyVmihA+"],
    },
    Planted {
        kind: "github-token",
        value: "git clone https://ghp_RIBXuDL7DxtpYlSXpfKtHF4vUCsMehGAkWvj@github.com/acme/app",
        secrets: &["ghp_RIBXuDL7DxtpYlSXpfKtHF4vUCsMehGAkWvj"],
    },
    Planted {
        kind: "github-app-token",
        value: "installation token ghs_wR4y9ojfljoQoaF1LlqsajAIxNKu8iS2G8NP expires soon",
        secrets: &["ghs_wR4y9ojfljoQoaF1LlqsajAIxNKu8iS2G8NP"],
    },
    Planted {
        kind: "github-fine-grained-token",
        value: "GH_TOKEN=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",
        secrets: &["7FAc9QeWJKY40uvSwMFLZD_e1f8rESQedUStPKR0CsTy4Qwb8DwkNhFdnXsiVpzz63FfkCzJr4i0B3JrTA"],
    },
    Planted {
        kind: "gitlab-token",
        value: "runner uses glpat-Q7m2Xk9Rt4Vw8Zp3Ln6Y",
        secrets: &["glpat-Q7m2Xk9Rt4Vw8Zp3Ln6Y"],
    },
    Planted {
        kind: "slack-token",
        value: "bot xoxb-1029384756-5647382910-Qw3Er5Ty7Ui9Op1As3Df5Gh7",
        secrets: &["5647382910-Qw3Er5Ty7Ui9Op1As3Df5Gh7"],
    },
    Planted {
        kind: "slack-webhook",
        value: "alerts to https://hooks.slack.com/services/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",
        secrets: &["B1A2B3C4D/Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2"],
    },
    Planted {
        kind: "stripe-key",
        value: "STRIPE_KEY=sk_live_Z8UzDzV8fUkkibjL5DZPjN0MEQ7wjJ",
        secrets: &["Z8UzDzV8fUkkibjL5DZPjN0MEQ7wjJ"],
    },
    Planted {
        kind: "google-api-key",
        value: "maps key AIzag6YYZYn9ZhyiA4uoRgnatmUdjAWtGSU8po_ in the app",
        secrets: &["AIzag6YYZYn9ZhyiA4uoRgnatmUdjAWtGSU8po_"],
    },
    Planted {
        kind: "openai-key",
        value: "OPENAI_API_KEY is sk-proj-DEEtfjgVvVqE1SkHbn88HxjSI6bWHtP3fS2qHx6kwXoIIXGv",
        secrets: &["DEEtfjgVvVqE1SkHbn88HxjSI6bWHtP3fS2qHx6kwXoIIXGv"],
    },
    Planted {
        kind: "anthropic-key",
        value: "claude: sk-ant-api03-OoNZYW2mZp0zVZomHFwUbbYrEqmSM9wCZ7Uw9xfo",
        secrets: &["OoNZYW2mZp0zVZomHFwUbbYrEqmSM9wCZ7Uw9xfo"],
    },
    Planted {
        kind: "npm-token",
        value: "publish with npm_goEmvnEN5N1aE6PwZPf1Qh6yYTWmE4lBYOvf",
        secrets: &["goEmvnEN5N1aE6PwZPf1Qh6yYTWmE4lBYOvf"],
    },
    Planted {
        kind: "jwt",
        value: "Authorization: Bearer eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJhZ2VudC03IiwiYXVkIjoiZ2F0ZWhvdXNlIn0.c2lnbmF0dXJlLW9mLXRoZS10b2tlbi1oZXJl",
        secrets: &[
            "eyJzdWIiOiJhZ2VudC03IiwiYXVkIjoiZ2F0ZWhvdXNlIn0",
            "c2lnbmF0dXJlLW9mLXRoZS10b2tlbi1oZXJl",
        ],
    },
    Planted {
        kind: "private-key",
        value: "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg4LVWM9nuwNSk3yByxZpYRTBnVJk5oxSNYxWvI9rXoAoGCCqGSM49\nAwEHoUQDQgAEq2s9Zr7m\n-----END EC PRIVATE KEY-----",
        secrets: &[
            "MHcCAQEEIBkg4LVWM9nuwNSk3yByxZpYRTBnVJk5oxSNYxWvI9rXoAoGCCqGSM49",
            "AwEHoUQDQgAEq2s9Zr7m",
        ],
    },
    Planted {
        kind: "connection-string-password",
        value: "DATABASE_URL=postgres://svc:Pg-Sup3r-S3cret@db.prod.internal:5432/app",
        secrets: &["Pg-Sup3r-S3cret"],
    },
    Planted {
        kind: "password-assignment",
        value: "smtp relay password=Gr33n-Tea-Leaves! port 587",
        secrets: &["Gr33n-Tea-Leaves!"],
    },
    Planted {
        kind: "payment-card",
        value: "card on file 4012 8888 8888 1881 exp 12/29",
        secrets: &["4012 8888 8888 1881"],
    },
    Planted {
        kind: "email",
        value: "escalate to mallory.ops@corp-example.com",
        secrets: &["mallory.ops@corp-example.com"],
    },
    Planted {
        kind: "iban",
        value: "refund to DE44 5001 0517 5407 3249 31 today",
        secrets: &["DE44 5001 0517 5407 3249 31"],
    },
    // How real tables hold secrets: escaped, encoded, under the key names
    // people use, in every form of connection string, wrapped.
    Planted {
        kind: "password-assignment",
        value: r#"{"settings": "{\"smtp\": {\"password\": \"Mv4-Lq\\\"x8Rt\"}}"}"#,
        secrets: &["Mv4-Lq", "x8Rt"],
    },
    Planted {
        kind: "connection-string-password",
        value: "next=https%3A%2F%2Fdeploy%3AHp7-Wq2zKx%40registry.internal%2Fv2",
        secrets: &["Hp7-Wq2zKx"],
    },
    Planted {
        kind: "slack-webhook",
        value: r#"{"hook": "https:\/\/hooks.slack.com\/services\/T01AB2CD3\/B04EF5GH6\/Kx8Lq2Wm9Rt4Vy7Zn3Pd"}"#,
        secrets: &["Kx8Lq2Wm9Rt4Vy7Zn3Pd"],
    },
    Planted {
        kind: "password-assignment",
        value: "POSTGRES_PASSWORD=Ry6-Qm2-Hx9\nPOSTGRES_USER=app",
        secrets: &["Ry6-Qm2-Hx9"],
    },
    Planted {
        kind: "password-assignment",
        value: "postgresql:\n  auth:\n    postgresPassword: \"Lp3 Wz8 ;Qa\"\n",
        secrets: &["Lp3 Wz8 ;Qa"],
    },
    Planted {
        kind: "password-assignment",
        value: "PGPASSWORD=Nd4kTq7x PGUSER=app psql -h db",
        secrets: &["Nd4kTq7x"],
    },
    Planted {
        kind: "password-assignment",
        value: "<datasource><user>app</user><password>Vw3 Kq8 Zx</password></datasource>",
        secrets: &["Vw3 Kq8 Zx"],
    },
    Planted {
        kind: "password-assignment",
        value: "module.exports = { host: 'db', user: 'app', pass: 'Hm2&Kq9;x' };",
        secrets: &["Hm2&Kq9;x"],
    },
    Planted {
        kind: "password-assignment",
        value: "env:\n- name: JWT_SECRET\n  value: jw7-Rq2-Lk9-Xs4\n",
        secrets: &["jw7-Rq2-Lk9-Xs4"],
    },
    Planted {
        kind: "password-assignment",
        value: "Server=db;User Id=sa;Password={Ab;c}}9Xy};Encrypt=true",
        secrets: &["Ab;c}}9Xy"],
    },
    Planted {
        kind: "password-assignment",
        value: "host=db user=app password='Lq 8 Wx-3' sslmode=require",
        secrets: &["Lq 8 Wx-3"],
    },
    Planted {
        kind: "connection-string-password",
        value: "cache at redis://:Rb5-Xq8-Tm2@cache.internal:6379/0",
        secrets: &["Rb5-Xq8-Tm2"],
    },
    Planted {
        kind: "connection-string-password",
        value: "DSN mysql://app:Pw@d:9Kz@db.internal/app",
        secrets: &["Pw@d:9Kz"],
    },
    Planted {
        kind: "oracle-connect-password",
        value: "sqlplus app/Orq7-Kx2@//db.internal:1521/ORCL",
        secrets: &["Orq7-Kx2"],
    },
    Planted {
        kind: "github-token",
        value: "token on two lines: ghp_Wr4pP3dT0k3nAbCdEf\nGhIjKlMnOpQrStUv1234",
        secrets: &["Wr4pP3dT0k3nAbCdEf", "GhIjKlMnOpQrStUv1234"],
    },
    // Service tokens only gitleaks' rules know, a Kubernetes Secret
    // manifest, and the Policy's own detector.
    Planted {
        kind: "twilio-api-key",
        value: "sms via twilio key SK7d2f9a4c1e8b3d6f0a5c2e9b7d4f1a3c8 today",
        secrets: &["SK7d2f9a4c1e8b3d6f0a5c2e9b7d4f1a3c8"],
    },
    Planted {
        kind: "sendgrid-api-token",
        value: "mail relay 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 set",
        secrets: &["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"],
    },
    Planted {
        kind: "shopify-access-token",
        value: "store app token 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 in config",
        secrets: &["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"],
    },
    Planted {
        kind: "huggingface-access-token",
        value: "model pull with 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 ok",
        secrets: &["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"],
    },
    Planted {
        kind: "kubernetes-secret",
        value: "apiVersion: v1\nkind: Secret\nmetadata:\n  name: app\ndata:\n  db.conf: UnQ3LVhxOS1MbTI=\n  blob: Wm1YLTk5LXRrbg==\n",
        secrets: &["UnQ3LVhxOS1MbTI=", "Wm1YLTk5LXRrbg=="],
    },
    Planted {
        kind: "acme-badge",
        value: "visitor badge BDG-7391-KMQT at desk",
        secrets: &["BDG-7391-KMQT"],
    },
];

/// Values that look like secrets to a careless eye and must arrive as they are.
const LOOK_ALIKES: &[&str] = &[
    "3f2b8c1e-9d4a-4e7b-a1c2-5d6e7f8a9b0c",
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "da39a3ee5e6b4b0d3255bfef95601890afd80709",
    "2026-11-28 14:39:21.123456+00",
    "2026-11-28T14:39:21Z",
    "order ORD-2026-000123 shipped",
    "password reset requested by the user",
    "token count: 42",
    "the secret ingredient is love",
    "AKIA-not-a-key",
    "sk-learn and risk-project-plan",
    "eyes.on.the.road",
    "call +1 415 555 0100",
    "1234567890123",
    "v1.22.3 at 10.0.12.7:5432",
    "https://example.com/docs?page=2",
    "c2VjcmV0LWJ1dC1qdXN0LWJhc2U2NA==",
    // Placeholders, references, prose and names about a secret.
    "password: incorrect",
    "the token expired at 10:00",
    "password=\nnext=1",
    "DB_PASSWORD=${DB_PASSWORD}",
    "api_key: <your-api-key>",
    "secret: ********",
    "max_tokens: 4096",
    "password_file: /run/secrets/db",
    r#"{"password": "<redacted>", "token_type": "bearer"}"#,
    "pass: process.env.DB_PASS,",
    "postgres://db.internal:5432/app?sslmode=require",
    "npm i @scope/pkg@1.2.3",
    r#"{"msg": "cache at C:\\Users\\app\\token_cache"}"#,
];

/// Every secret detector, and the personal-data ones `all` leaves out.
/// With the Policy's own detector for the `acme-badge` value.
pub(crate) const DETECTING: &str = r"{detectors: [all, card, email, iban], customDetectors: [{name: acme-badge, regex: '\bBDG-[0-9]{4}-[A-Z]{4}\b', keywords: [bdg-]}]}";
const LENIENT: &str = r"{detectors: [all, card, email, iban], failureMode: bestEffort, customDetectors: [{name: acme-badge, regex: '\bBDG-[0-9]{4}-[A-Z]{4}\b', keywords: [bdg-]}]}";

pub(crate) const POLICY: &str = r#"
  - name: agents-masked
    spec:
      connectionSelector: {}
      subjects: [{kind: Group, name: agents}]
      rules:
        - {name: reads, match: {operations: [select, transaction, session, prepare, copyTo]}, action: allow}
        - {name: key-inserts, match: {operations: [insert], tables: [public.api_keys]}, action: allow}
"#;

static FIXTURE: OnceCell<()> = OnceCell::const_new();
static DETECTING_PROXY: OnceCell<u16> = OnceCell::const_new();
static RULED: OnceCell<u16> = OnceCell::const_new();
static LENIENT_PROXY: OnceCell<u16> = OnceCell::const_new();

/// The tables: one row per planted secret in every text-like type, the
/// look-alikes, patrons for the column rules, and a unique key whose
/// violation echoes a secret.
pub(crate) async fn fixture(env: &TestEnv) -> anyhow::Result<()> {
    FIXTURE
        .get_or_try_init(|| async {
            let db = env.postgres.superuser(DATABASE).await?;
            db.batch_execute(&format!(
                "CREATE TABLE vault (id serial PRIMARY KEY, kind text, note text, label varchar(300), \
                                     doc json, docb jsonb, blob bytea);
                 CREATE TABLE lookalikes (id serial PRIMARY KEY, v text, vj jsonb);
                 CREATE TABLE api_keys (label text UNIQUE);
                 CREATE TABLE patrons (id int, email text, api_key varchar(100), ssn text, born date,
                                         profile jsonb, photo bytea, notes text);
                 GRANT SELECT ON vault, lookalikes, patrons TO {APP_USER};
                 GRANT SELECT, INSERT ON api_keys TO {APP_USER};"
            ))
            .await?;
            for p in PLANTED {
                db.execute(
                    "INSERT INTO vault (kind, note, label, doc, docb, blob) \
                     VALUES ($1, 'note: ' || $2, $2, json_build_object('v', $2::text), \
                             jsonb_build_object('v', $2::text, 'n', 1), convert_to($2, 'UTF8'))",
                    &[&p.kind, &p.value],
                )
                .await?;
            }
            for v in LOOK_ALIKES {
                db.execute(
                    "INSERT INTO lookalikes (v, vj) VALUES ($1, jsonb_build_object('v', $1::text))",
                    &[v],
                )
                .await?;
            }
            db.batch_execute(
                "CREATE FUNCTION shout(t text) RETURNS int LANGUAGE plpgsql STABLE
                   AS $f$ BEGIN RAISE NOTICE 'saw %', t; RETURN 1; END $f$;
                 INSERT INTO api_keys VALUES ('stripe sk_live_Z8UzDzV8fUkkibjL5DZPjN0MEQ7wjJ');
                 INSERT INTO patrons VALUES
                   (1, 'ada@example.com', 'key-one-plain', '123-45-6789', '1815-12-10',
                    '{\"tier\": \"gold\"}', '\\x0102', 'likes tea'),
                   (2, 'ada@example.com', 'key-two-plain', '987-65-4321', '1906-12-09',
                    '{\"tier\": \"silver\"}', NULL, 'AKIAZ3MPLE7QX4RT2WVN in notes');",
            )
            .await?;
            anyhow::Ok(())
        })
        .await?;
    Ok(())
}

/// Starts a proxy with the masking policy and `masking` as its block.
async fn masking_proxy(env: &TestEnv, name: &str, masking: &str, settings: &str) -> anyhow::Result<u16> {
    fixture(env).await?;
    let key = env.path().join(name).join("hash-key");
    std::fs::create_dir_all(env.path().join(name))?;
    write_private(&key, "e2e-masking-hmac-key-0123456789")?;
    let proxy = start_proxy(env, name, |port, creds| {
        let head = config_head(env, name, port, creds, AGENT_TOKEN, "planner", &["agents"]);
        Ok(format!(
            "{head}masking: {{hashKeyFile: {key}{settings}}}\npolicies:{POLICY}      masking: {masking}\n",
            key = key.display(),
        ))
    })
    .await?;
    Ok(proxy.port)
}

/// Detectors only, strict, the default scan limit.
async fn detecting(env: &TestEnv) -> anyhow::Result<u16> {
    DETECTING_PROXY
        .get_or_try_init(|| masking_proxy(env, "masking-detecting", DETECTING, ""))
        .await
        .copied()
}

/// Column rules and detectors.
async fn ruled(env: &TestEnv) -> anyhow::Result<u16> {
    const MASKING: &str = r#"
        detectors: [all]
        columns:
          - {name: "^email$", strategy: hash}
          - {name: "(?i)^api_?key$", strategy: redact}
          - {name: "^ssn$", strategy: partial, keepLast: 4}
          - {name: "^(born|profile|photo)$", strategy: redact}
          - {name: "^label$", strategy: null}"#;
    RULED
        .get_or_try_init(|| masking_proxy(env, "masking-ruled", MASKING, ""))
        .await
        .copied()
}

/// bestEffort with a 1 MiB scan limit.
async fn lenient(env: &TestEnv) -> anyhow::Result<u16> {
    LENIENT_PROXY
        .get_or_try_init(|| masking_proxy(env, "masking-lenient", LENIENT, ", scanLimitBytes: 1048576"))
        .await
        .copied()
}

/// A TCP relay in front of a proxy that keeps every byte sent to clients.
struct Tap {
    port: u16,
    received: Arc<Mutex<Vec<u8>>>,
}

impl Tap {
    async fn to(target: u16) -> anyhow::Result<Tap> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let keep = received.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let keep = keep.clone();
                tokio::spawn(async move {
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let upstream = tokio::io::copy(&mut client_read, &mut server_write);
                    let downstream = async {
                        let mut buf = vec![0u8; 64 << 10];
                        loop {
                            let n = server_read.read(&mut buf).await?;
                            if n == 0 {
                                break;
                            }
                            keep.lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .extend_from_slice(&buf[..n]);
                            client_write.write_all(&buf[..n]).await?;
                        }
                        client_write.shutdown().await
                    };
                    let _ = tokio::join!(upstream, downstream);
                });
            }
        });
        Ok(Tap { port, received })
    }

    fn bytes(&self) -> Vec<u8> {
        self.received.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Fails naming every planted secret found in what clients received.
    fn assert_no_secret(&self) -> anyhow::Result<()> {
        let bytes = self.bytes();
        ensure!(bytes.len() > 1000, "the tap saw only {} bytes", bytes.len());
        let leaks = leaks(&bytes);
        if !leaks.is_empty() {
            let dump = std::env::temp_dir().join(format!("gatehouse-masking-leak-{}.bin", self.port));
            let _ = std::fs::write(&dump, &bytes);
            bail!(
                "secrets reached the client (every byte it received is in {}):\n{}",
                dump.display(),
                leaks.join("\n")
            );
        }
        Ok(())
    }
}

/// Every planted secret found in `bytes`, raw or hex-encoded.
pub(crate) fn leaks(bytes: &[u8]) -> Vec<String> {
    PLANTED
        .iter()
        .flat_map(|p| p.secrets.iter().map(move |s| (p.kind, *s)))
        .filter(|(_, secret)| {
            let hex = hex::encode(secret.as_bytes());
            contains(bytes, secret.as_bytes()) || contains(bytes, hex.as_bytes())
        })
        .map(|(kind, secret)| format!("{kind}: {secret}"))
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The masks psql printed must name every detector.
fn ensure_every_detector_masked(text: &str) -> anyhow::Result<()> {
    let missing: Vec<&str> = PLANTED
        .iter()
        .map(|p| p.kind)
        .filter(|kind| {
            // GitHub app tokens are found by the github-token detector.
            let detector = if *kind == "github-app-token" {
                "github-token"
            } else {
                kind
            };
            !text.contains(&format!("[masked:{detector}]"))
        })
        .collect();
    ensure!(missing.is_empty(), "no mask for {missing:?} in:\n{text}");
    Ok(())
}

pub async fn psql_gets_every_secret_masked_in_rows_copy_and_errors(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let tap = Tap::to(detecting(&env).await?).await?;
    let (ok, rows, err) = psql(
        tap.port,
        AGENT_TOKEN,
        "SELECT kind, note, label, doc, docb, blob FROM vault ORDER BY id",
    )
    .await?;
    ensure!(ok, "psql: {err}");
    ensure!(
        rows.lines().filter(|l| l.contains('|')).count() >= PLANTED.len(),
        "rows lost:\n{rows}"
    );
    ensure_every_detector_masked(&rows)?;
    // bytea in hex: the mask is there, hex-encoded.
    ensure!(
        rows.contains(&hex::encode("[masked:aws-access-key-id]")),
        "bytea not masked:\n{rows}"
    );
    for (sql, sep) in [
        ("COPY vault (kind, note, doc, blob) TO STDOUT", '\t'),
        ("COPY vault (kind, note, doc, blob) TO STDOUT (FORMAT csv)", ','),
    ] {
        let (ok, out, err) = psql(tap.port, AGENT_TOKEN, sql).await?;
        ensure!(ok, "{sql}: {err}");
        ensure_every_detector_masked(&out)?;
        // Rows and fields are intact: the first field of each row is a kind.
        let firsts: Vec<&str> = out
            .lines()
            .filter_map(|l| l.split(sep).next())
            .filter(|f| PLANTED.iter().any(|p| p.kind == *f))
            .collect();
        ensure!(firsts.len() == PLANTED.len(), "{sql} lost rows:\n{out}");
    }
    // A unique violation's detail echoes the value.
    let (_, _, err) = psql(
        tap.port,
        AGENT_TOKEN,
        "INSERT INTO api_keys VALUES ('stripe sk_live_Z8UzDzV8fUkkibjL5DZPjN0MEQ7wjJ')",
    )
    .await?;
    ensure!(
        err.contains("duplicate key value") && err.contains("[masked:stripe-key]"),
        "{err}"
    );
    tap.assert_no_secret()
}

/// Errors and notices that echo a value, and the proxy's own log of
/// the statements it refuses: every planted secret is masked in each.
pub async fn errors_notices_and_the_proxy_log_mask_every_secret(env: Arc<TestEnv>) -> anyhow::Result<()> {
    fixture(&env).await?;
    // The binary, so that its log is a file to read.
    let name = "masking-logged";
    let proxy = ProxyProcess::start(&env, name, |port, creds| {
        let head = config_head(&env, name, port, creds, AGENT_TOKEN, "planner", &["agents"]);
        Ok(format!("{head}policies:{POLICY}      masking: {DETECTING}\n"))
    })
    .await?;
    let tap = Tap::to(proxy.port).await?;

    // An error quotes the value that does not cast.
    let client = agent(tap.port, AGENT_TOKEN).await?;
    let mut messages = String::new();
    for id in 1..=PLANTED.len() as i32 {
        let err = client
            .query("SELECT note::int FROM vault WHERE id = $1", &[&id])
            .await
            .err()
            .context("a note cast to int")?;
        let db = err.as_db_error().context("not a server error")?;
        ensure!(db.code() == &SqlState::INVALID_TEXT_REPRESENTATION, "{db:?}");
        messages.push_str(db.message());
        messages.push('\n');
    }
    ensure_every_detector_masked(&messages)?;

    // A notice carries the value as the function raised it.
    let (ok, _, notices) = psql(tap.port, AGENT_TOKEN, "SELECT shout(note) FROM vault ORDER BY id").await?;
    ensure!(
        ok && notices.matches("NOTICE:").count() == PLANTED.len(),
        "{notices}"
    );
    ensure_every_detector_masked(&notices)?;
    tap.assert_no_secret()?;

    // Refused statements are logged with their text, masked with every
    // secret detector and the Policy's own (personal data is a result's
    // business, not the log's: a statement naming an e-mail address is
    // logged as written).
    for p in PLANTED {
        let sql = format!("DELETE FROM vault WHERE note = $q${}$q$", p.value);
        let err = client.batch_execute(&sql).await.err().context("a DELETE ran")?;
        ensure!(
            err.as_db_error().map(|e| e.code()) == Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{err:?}"
        );
    }
    let log_file = env.path().join(name).join("proxy.log");
    let log = std::fs::read_to_string(&log_file)?;
    ensure!(
        log.matches("statement refused").count() >= PLANTED.len(),
        "{} holds too few refusals:\n{log}",
        log_file.display()
    );
    let personal = ["payment-card", "email", "iban"];
    let leaked: Vec<String> = leaks(log.as_bytes())
        .into_iter()
        .filter(|leak| !personal.iter().any(|kind| leak.starts_with(&format!("{kind}: "))))
        .collect();
    ensure!(
        leaked.is_empty(),
        "secrets in {}:\n{}",
        log_file.display(),
        leaked.join("\n")
    );
    ensure!(
        log.contains("[masked:acme-badge]"),
        "the Policy's own detector did not mask the log"
    );
    Ok(())
}

pub async fn tokio_postgres_gets_binary_results_masked(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let tap = Tap::to(detecting(&env).await?).await?;
    let client = agent(tap.port, AGENT_TOKEN).await?;
    // The extended protocol, every column in binary.
    let rows = client
        .query(
            "SELECT kind, note, label, blob, docb::text AS docb_text FROM vault ORDER BY id",
            &[],
        )
        .await?;
    ensure!(rows.len() == PLANTED.len(), "{} rows", rows.len());
    for row in &rows {
        let kind: String = row.get("kind");
        let note: String = row.get("note");
        let label: String = row.get("label");
        let blob: Vec<u8> = row.get("blob");
        for value in [&note, &label, &String::from_utf8_lossy(&blob).into_owned()] {
            ensure!(value.contains("[masked:"), "{kind}: {value}");
        }
    }
    // jsonb in binary: decoded by a type that reads the raw bytes.
    let docs = client.query("SELECT docb FROM vault ORDER BY id", &[]).await?;
    for row in &docs {
        let raw: RawJsonb = row.get(0);
        ensure!(
            raw.0.first() == Some(&1),
            "jsonb version byte: {:?}",
            raw.0.first()
        );
        let doc: serde_json::Value = serde_json::from_slice(&raw.0[1..]).context("jsonb is still JSON")?;
        let value = doc["v"].as_str().unwrap_or_default();
        ensure!(value.contains("[masked:"), "{doc}");
    }
    // Arrays in binary have a layout of their own: one that holds a
    // secret goes as NULL, a clean one as it came.
    let arrays = client
        .query("SELECT ARRAY[note], ARRAY[kind] FROM vault ORDER BY id", &[])
        .await?;
    for row in &arrays {
        let notes: Option<Vec<String>> = row.get(0);
        let kinds: Option<Vec<String>> = row.get(1);
        ensure!(notes.is_none() && kinds.is_some(), "{notes:?} {kinds:?}");
    }
    // A prepared statement, described once and executed twice.
    let statement = client.prepare("SELECT note FROM vault WHERE kind = $1").await?;
    for kind in ["jwt", "private-key"] {
        let note: String = client.query_one(&statement, &[&kind]).await?.get(0);
        ensure!(note.contains(&format!("[masked:{kind}]")), "{note}");
    }
    tap.assert_no_secret()
}

/// The raw bytes of a jsonb value in binary format.
struct RawJsonb(Vec<u8>);

impl<'a> tokio_postgres::types::FromSql<'a> for RawJsonb {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawJsonb(raw.to_vec()))
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::JSONB
    }
}

pub async fn psycopg_gets_text_and_binary_results_masked(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let tap = Tap::to(detecting(&env).await?).await?;
    let dir = crate::drivers::drivers_dir().await?;
    let script = crate::repo().join("e2e/drivers/python/masking.py");
    let out = run_python(&dir.join("py/bin/python"), &script, tap.port).await?;
    let doc: serde_json::Value =
        serde_json::from_str(out.trim()).with_context(|| format!("not JSON: {out}"))?;
    for format in ["text", "binary"] {
        let rows = doc[format].as_array().context("no rows")?;
        ensure!(rows.len() == PLANTED.len(), "{format}: {} rows", rows.len());
        for row in rows {
            for column in ["note", "label", "doc", "docb", "blob"] {
                let value = row[column].as_str().unwrap_or_default();
                ensure!(value.contains("[masked:"), "{format} {column}: {value}");
            }
        }
    }
    tap.assert_no_secret()
}

async fn run_python(python: &Path, script: &Path, port: u16) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(python)
        .arg(script)
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", port.to_string())
        .env("PGUSER", "planner")
        .env("PGPASSWORD", AGENT_TOKEN)
        .env("PGDATABASE", "orders")
        .env("PGSSLMODE", "disable")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{} failed: {stdout}\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

pub async fn look_alikes_arrive_unchanged(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let port = detecting(&env).await?;
    let sql = "SELECT v, vj FROM lookalikes ORDER BY id";
    let (ok, through, err) = psql(port, AGENT_TOKEN, sql).await?;
    ensure!(ok, "{err}");
    let direct = env.postgres.app().await?;
    let mut expected = String::new();
    for row in direct.simple_query(sql).await? {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = row {
            expected.push_str(&format!(
                "{}|{}\n",
                row.get(0).unwrap_or_default(),
                row.get(1).unwrap_or_default()
            ));
        }
    }
    ensure!(
        through == expected,
        "through the proxy:\n{through}\ndirectly:\n{expected}"
    );
    // The same over the extended protocol in binary.
    let client = agent(port, AGENT_TOKEN).await?;
    let values: Vec<String> = client
        .query("SELECT v FROM lookalikes ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    ensure!(values == LOOK_ALIKES, "{values:?}");
    Ok(())
}

pub async fn column_rules_mask_by_name_and_keep_values_valid(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let port = ruled(&env).await?;
    let client = agent(port, AGENT_TOKEN).await?;
    let rows = client
        .query(
            "SELECT id, email, api_key, ssn, born, profile, photo, notes FROM patrons ORDER BY id",
            &[],
        )
        .await?;
    ensure!(rows.len() == 2);
    let emails: Vec<String> = rows.iter().map(|r| r.get("email")).collect();
    ensure!(
        emails[0] == emails[1] && emails[0].len() == 32 && emails[0].bytes().all(|b| b.is_ascii_hexdigit()),
        "hash: {emails:?}"
    );
    ensure!(!emails[0].contains("ada"), "{emails:?}");
    let keys: Vec<String> = rows.iter().map(|r| r.get("api_key")).collect();
    ensure!(keys == ["[masked]", "[masked]"], "{keys:?}");
    let ssn: Vec<String> = rows.iter().map(|r| r.get("ssn")).collect();
    ensure!(ssn == ["****6789", "****4321"], "{ssn:?}");
    // A date has no masked form: NULL, in binary as in text.
    let born: Vec<Option<chrono_free::Date>> = rows.iter().map(|r| r.get("born")).collect();
    ensure!(born.iter().all(Option::is_none), "born: {born:?}");
    let profile: RawJsonb = rows[0].get("profile");
    ensure!(profile.0 == b"\x01\"[masked]\"", "{:?}", profile.0);
    let photo: Option<Vec<u8>> = rows[0].get("photo");
    ensure!(photo.as_deref() == Some(&b"[masked]"[..]), "{photo:?}");
    ensure!(
        rows[1].get::<_, Option<Vec<u8>>>("photo").is_none(),
        "NULL stays NULL"
    );
    let notes: Vec<String> = rows.iter().map(|r| r.get("notes")).collect();
    ensure!(
        notes == ["likes tea", "[masked:aws-access-key-id] in notes"],
        "{notes:?}"
    );
    // The same values in text format through psql.
    let (ok, out, err) = psql(
        port,
        AGENT_TOKEN,
        "SELECT email, ssn, born, profile, photo FROM patrons ORDER BY id",
    )
    .await?;
    ensure!(ok, "{err}");
    let first = out.lines().next().unwrap_or_default();
    ensure!(
        first
            == format!(
                "{}|****6789||\"[masked]\"|\\x{}",
                emails[0],
                hex::encode("[masked]")
            ),
        "{out}"
    );
    // `null` turns any value into NULL; a column is matched by the name the
    // result gives it.
    let (_, out, _) = psql(port, AGENT_TOKEN, "SELECT label, label AS copied FROM api_keys").await?;
    ensure!(
        out.trim() == "|stripe [masked:stripe-key]",
        "label should be NULL and copied masked by its detector: {out:?}"
    );
    // COPY output names no columns: refused, and the session goes on.
    let err = client
        .copy_out("COPY patrons TO STDOUT")
        .await
        .err()
        .context("COPY with column rules ran")?;
    let db = err.as_db_error().context("not a server error")?;
    ensure!(db.code() == &SqlState::FEATURE_NOT_SUPPORTED, "{db:?}");
    ensure!(db.message().contains("use SELECT"), "{}", db.message());
    let one: i32 = client.query_one("SELECT 1", &[]).await?.get(0);
    ensure!(one == 1);
    Ok(())
}

pub async fn a_value_over_the_scan_limit_follows_the_failure_mode(env: Arc<TestEnv>) -> anyhow::Result<()> {
    // strict (the default): a 500 MB value is refused with 54000, and the
    // session goes on.
    let client = agent(detecting(&env).await?, AGENT_TOKEN).await?;
    let err = client
        .simple_query("SELECT 'before', repeat('x', 500 * 1024 * 1024) AS big")
        .await
        .err()
        .context("a 500 MB value passed unscanned")?;
    let db = err.as_db_error().context("not a server error")?;
    ensure!(db.code() == &SqlState::PROGRAM_LIMIT_EXCEEDED, "{db:?}");
    ensure!(
        db.message().contains("524288000 bytes in column 2")
            && db.message().contains("scan limit of 16777216"),
        "{}",
        db.message()
    );
    let one: i32 = client.query_one("SELECT 1", &[]).await?.get(0);
    ensure!(one == 1, "the session goes on");
    // bestEffort: the value is replaced, the row goes on.
    let client = agent(lenient(&env).await?, AGENT_TOKEN).await?;
    let row = client
        .query_one(
            "SELECT 'kept' AS small, repeat('AKIAZ3MPLE7QX4RT2WVN ', 100000) AS big",
            &[],
        )
        .await?;
    ensure!(row.get::<_, String>("small") == "kept");
    ensure!(
        row.get::<_, String>("big") == "[masked:unscanned]",
        "{}",
        row.get::<_, String>("big").len()
    );
    Ok(())
}

/// A date decoded without pulling in a date library: only whether it is NULL matters.
mod chrono_free {
    #[derive(Debug)]
    pub struct Date;

    impl<'a> tokio_postgres::types::FromSql<'a> for Date {
        fn from_sql(
            _: &tokio_postgres::types::Type,
            _: &'a [u8],
        ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
            Ok(Date)
        }

        fn accepts(ty: &tokio_postgres::types::Type) -> bool {
            *ty == tokio_postgres::types::Type::DATE
        }
    }
}
