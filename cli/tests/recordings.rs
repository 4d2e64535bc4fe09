//! The recording commands, run as the built binary against recordings
//! written with the recording crate's own primitives in a temporary folder:
//! what `sessions`, `replay` and `verify` print, and how they exit, for
//! intact, open, tampered and garbage recordings.
// The workspace allows unwrap in tests; clippy does not count an integration
// test's helpers as tests.
#![allow(clippy::unwrap_used)]

use std::{path::PathBuf, process::Command, time::Duration};

use ed25519_dalek::{SigningKey, pkcs8::EncodePublicKey as _, pkcs8::spki::der::pem::LineEnding};
use gatehouse_recording::{
    chunk,
    format::{
        Body, ChunkEntry, ConnectionRef, ErrorInfo, Event, FORMAT, MANIFEST, Manifest, chunk_name, genesis,
        key_id, line_hash, session_folder,
    },
    store::Store,
};

/// The closed session through shop/orders-db: statements, rows, a denial,
/// an error, a notice; 9 events in chunks of 4.
const ORDERS: &str = "20261128T175300Z-00000000000000a1";
/// A closed session through shop/analytics-db, by another user.
const ANALYTICS: &str = "20261128T190000Z-00000000000000b2";
/// A session through staging/orders-db still open: no manifest.
const OPEN: &str = "20261129T080000Z-00000000000000c3";

fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

fn other_key() -> SigningKey {
    SigningKey::from_bytes(&[9u8; 32])
}

/// A session to record.
struct Session {
    id: &'static str,
    namespace: &'static str,
    connection: &'static str,
    user: &'static str,
    /// What happened after `connect` (which is added).
    bodies: Vec<Body>,
    /// A disconnect and a signed manifest, or neither (still open).
    closed: bool,
}

/// A store of recorded sessions in a temporary folder, with the gateway's
/// public key (and another) as PEM files.
struct Recorded {
    dir: tempfile::TempDir,
    public_key: PathBuf,
    other_public_key: PathBuf,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Recorded {
    async fn new() -> Recorded {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        std::fs::create_dir(&keys).unwrap();
        let public_key = keys.join("gateway.pub");
        let other_public_key = keys.join("other.pub");
        for (key, path) in [(signing_key(), &public_key), (other_key(), &other_public_key)] {
            let pem = key.verifying_key().to_public_key_pem(LineEnding::LF).unwrap();
            std::fs::write(path, pem).unwrap();
        }
        let recorded = Recorded {
            public_key,
            other_public_key,
            dir,
        };
        for session in sessions() {
            recorded.record(&session).await;
        }
        recorded
    }

    fn store_dir(&self) -> PathBuf {
        self.dir.path().join("recordings")
    }

    fn store(&self) -> Store {
        Store::Local(self.store_dir())
    }

    /// Writes a session as the proxy does: chained events, gzip chunks of 4
    /// events, and (when closed) a signed manifest. Returns its folder key.
    async fn record(&self, session: &Session) -> String {
        let connection = ConnectionRef {
            namespace: session.namespace.into(),
            name: session.connection.into(),
        };
        let mut bodies = vec![Body::Connect {
            session: session.id.into(),
            connection: connection.clone(),
            user: session.user.into(),
            groups: vec!["agents".into(), "oncall".into()],
            client: "10.0.0.7:51234".into(),
            tls: true,
        }];
        bodies.extend(session.bodies.iter().cloned());
        if session.closed {
            bodies.push(Body::Disconnect {
                reason: "client_closed".into(),
            });
        }
        let start = gatehouse_recording::format::timestamp(start_of(session.id));
        let mut prev = genesis(session.id);
        let mut lines = Vec::new();
        let mut times = Vec::new();
        for (seq, body) in bodies.into_iter().enumerate() {
            let at = gatehouse_recording::format::timestamp(
                start_of(session.id) + Duration::from_millis(1500 * seq as u64),
            );
            let event = Event {
                seq: seq as u64,
                at: at.clone(),
                prev: prev.clone(),
                body,
            };
            let line = serde_json::to_vec(&event).unwrap();
            prev = line_hash(&line);
            lines.push(line);
            times.push(at);
        }
        let folder = session_folder("", &connection, session.id);
        let mut chunks = Vec::new();
        for (i, group) in lines.chunks(4).enumerate() {
            let bytes = chunk::encode(group.iter().map(Vec::as_slice)).unwrap();
            let name = chunk_name(i as u32 + 1);
            chunks.push(ChunkEntry {
                name: name.clone(),
                sha256: line_hash(&bytes),
                bytes: bytes.len() as u64,
                first_seq: (i * 4) as u64,
                last_seq: (i * 4 + group.len() - 1) as u64,
            });
            self.store()
                .put(&format!("{folder}/{name}"), bytes)
                .await
                .unwrap();
        }
        if session.closed {
            let mut manifest = Manifest {
                format: FORMAT.into(),
                session: session.id.into(),
                connection,
                user: session.user.into(),
                started: start,
                ended: times.last().cloned().unwrap(),
                end: "client_closed".into(),
                events: lines.len() as u64,
                last_hash: prev,
                chunks,
                key_id: String::new(),
                signature: String::new(),
            };
            manifest.sign(&signing_key());
            self.put_manifest(&folder, &manifest);
        }
        folder
    }

    fn path(&self, key: &str) -> PathBuf {
        self.store_dir().join(key)
    }

    fn manifest(&self, folder: &str) -> Manifest {
        serde_json::from_slice(&std::fs::read(self.path(&format!("{folder}/{MANIFEST}"))).unwrap()).unwrap()
    }

    fn put_manifest(&self, folder: &str, manifest: &Manifest) {
        let path = self.path(&format!("{folder}/{MANIFEST}"));
        std::fs::write(path, serde_json::to_vec_pretty(manifest).unwrap()).unwrap();
    }

    /// Runs the plugin on this store.
    fn run(&self, args: &[&str]) -> Run {
        run_with(&[&["--dir", self.store_dir().to_str().unwrap()], args].concat())
    }
}

fn run_with(args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_kubectl-gatehouse"))
        .args(args)
        .env_remove("GATEHOUSE_RECORDINGS_DIR")
        .env_remove("GATEHOUSE_S3_BUCKET")
        .env_remove("GATEHOUSE_RECORDING_PUBLIC_KEY")
        .output()
        .unwrap();
    Run {
        code: output.status.code().unwrap(),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

fn start_of(session: &str) -> std::time::SystemTime {
    let s = session;
    humantime::parse_rfc3339(&format!(
        "{}-{}-{}T{}:{}:{}Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    ))
    .unwrap()
}

fn sessions() -> Vec<Session> {
    vec![
        Session {
            id: ORDERS,
            namespace: "shop",
            connection: "orders-db",
            user: "planner",
            bodies: vec![
                Body::Statement {
                    id: 1,
                    text: "SELECT id, email\nFROM customers".into(),
                    decision: "allow".into(),
                    reason: None,
                },
                Body::Rows {
                    statement: 1,
                    columns: vec!["id".into(), "email".into()],
                    rows: vec![
                        vec![Some("1".into()), Some("a***@example.com".into())],
                        vec![Some("1002".into()), None],
                    ],
                    truncated: true,
                },
                Body::Result {
                    statement: 1,
                    tag: Some("SELECT 5".into()),
                    rows: 5,
                    error: None,
                    duration_us: 1_234,
                },
                Body::Statement {
                    id: 2,
                    text: "DROP TABLE customers".into(),
                    decision: "deny".into(),
                    reason: Some("Policy shop/agents denies DDL".into()),
                },
                Body::Statement {
                    id: 3,
                    text: "SELECT * FROM nope".into(),
                    decision: "allow".into(),
                    reason: None,
                },
                Body::Result {
                    statement: 3,
                    tag: None,
                    rows: 0,
                    error: Some(ErrorInfo {
                        sqlstate: "42P01".into(),
                        message: "relation \"nope\" does not exist".into(),
                    }),
                    duration_us: 450,
                },
                Body::Notice {
                    severity: "WARNING".into(),
                    sqlstate: "01000".into(),
                    message: "the \u{1b}[2Jdisk is almost full".into(),
                },
            ],
            closed: true,
        },
        Session {
            id: ANALYTICS,
            namespace: "shop",
            connection: "analytics-db",
            user: "analyst",
            bodies: vec![Body::Statement {
                id: 1,
                text: "SELECT 1".into(),
                decision: "allow".into(),
                reason: None,
            }],
            closed: true,
        },
        Session {
            id: OPEN,
            namespace: "staging",
            connection: "orders-db",
            user: "planner",
            bodies: vec![
                Body::Statement {
                    id: 1,
                    text: "UPDATE orders SET state = 'shipped' WHERE id = 7".into(),
                    decision: "requireApproval".into(),
                    reason: None,
                },
                Body::Approval {
                    statement: 1,
                    request: Some("approve-7f3a".into()),
                    outcome: "approved".into(),
                    message: Some("approved by alice".into()),
                },
            ],
            closed: false,
        },
    ]
}

fn orders_folder() -> String {
    format!("shop/orders-db/2026/11/28/{ORDERS}")
}

/// The session ids of a `sessions` listing, in order.
fn listed(run: &Run) -> Vec<String> {
    assert_eq!(run.code, 0, "{}", run.stderr);
    let mut lines = run.stdout.lines();
    assert!(lines.next().unwrap().starts_with("SESSION "), "{}", run.stdout);
    lines
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn sessions_are_listed_oldest_first() {
    let recorded = Recorded::new().await;
    let run = recorded.run(&["sessions"]);
    assert_eq!(listed(&run), [ORDERS, ANALYTICS, OPEN]);
    let columns: Vec<Vec<&str>> = run
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        columns[1],
        [
            ORDERS,
            "2026-11-28T17:53:00Z",
            "shop/orders-db",
            "planner",
            "client_closed",
            "9",
            "3"
        ]
    );
    // Without a manifest: open, events unknown, user from the connect event.
    assert_eq!(
        columns[3],
        [
            OPEN,
            "2026-11-29T08:00:00Z",
            "staging/orders-db",
            "planner",
            "open",
            "-",
            "1"
        ]
    );
}

#[tokio::test]
async fn sessions_are_filtered_by_connection_user_and_time() {
    let recorded = Recorded::new().await;
    let ids = |args: &[&str]| listed(&recorded.run(&[&["sessions"], args].concat()));
    assert_eq!(ids(&["--connection", "shop/orders-db"]), [ORDERS]);
    assert_eq!(ids(&["--connection", "orders-db"]), [ORDERS, OPEN]);
    assert_eq!(ids(&["--connection", "shop/analytics-db"]), [ANALYTICS]);
    assert_eq!(ids(&["--user", "planner"]), [ORDERS, OPEN]);
    assert_eq!(ids(&["--user", "analyst"]), [ANALYTICS]);
    assert_eq!(
        ids(&["--user", "planner", "--connection", "staging/orders-db"]),
        [OPEN]
    );
    // ORDERS ran from 17:53:00 to 17:53:12.
    assert_eq!(
        ids(&["--since", "2026-11-28T17:53:10Z"]),
        [ORDERS, ANALYTICS, OPEN]
    );
    assert_eq!(ids(&["--since", "2026-11-28T18:00:00Z"]), [ANALYTICS, OPEN]);
    assert_eq!(ids(&["--until", "2026-11-28T18:00:00Z"]), [ORDERS]);
    assert_eq!(
        ids(&[
            "--since",
            "2026-11-28T18:00:00Z",
            "--until",
            "2026-11-28T23:59:59Z"
        ]),
        [ANALYTICS]
    );
    let none = recorded.run(&["sessions", "--user", "nobody"]);
    assert_eq!((none.code, none.stdout.trim()), (0, "No sessions found."));
    let bad = recorded.run(&["sessions", "--since", "last tuesday"]);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("neither an RFC 3339"), "{}", bad.stderr);
}

#[tokio::test]
async fn replay_shows_the_verified_timeline() {
    let recorded = Recorded::new().await;
    let key = recorded.public_key.to_str().unwrap();
    let run = recorded.run(&["replay", ORDERS, "--public-key", key]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = &run.stdout;
    assert!(out.starts_with("session "), "{out}");
    let signer = key_id(&signing_key().verifying_key());
    for expected in [
        format!("session     {ORDERS}"),
        "user        planner (groups: agents, oncall)".into(),
        "client      10.0.0.7:51234 over TLS".into(),
        "ended       2026-11-28T17:53:12.000000Z (client_closed)".into(),
        format!("verified    yes: 9 events in 3 chunks, signed by key {signer}"),
        "connect     planner (groups: agents, oncall) from 10.0.0.7:51234 over TLS to shop/orders-db".into(),
        "statement   #1 allowed: SELECT id, email".into(),
        "FROM customers".into(),
        "rows        #1 recorded 2 rows:".into(),
        "id   | email".into(),
        "-----+-----------------".into(),
        "1    | a***@example.com".into(),
        "1002 | NULL".into(),
        "... (truncated)".into(),
        "result      #1 SELECT 5: 5 rows in 1.2 ms".into(),
        "statement   #2 DENIED: DROP TABLE customers".into(),
        "reason: Policy shop/agents denies DDL".into(),
        "result      #3 ERROR 42P01 (450 us): relation \"nope\" does not exist".into(),
        // The escape sequence in the notice is shown, not sent to the terminal.
        "notice      WARNING 01000: the \\u{1b}[2Jdisk is almost full".into(),
        "2026-11-28T17:53:12.000000Z  disconnect  client_closed".into(),
    ] {
        assert!(out.contains(&expected), "missing {expected:?} in\n{out}");
    }
    assert!(!out.contains('\u{1b}'), "{out}");
    // The events come in order.
    let at = |s: &str| out.find(s).unwrap();
    assert!(at("connect ") < at("#1 allowed") && at("#2 DENIED") < at("disconnect "));
    // The folder key finds it too.
    let by_folder = recorded.run(&["replay", &orders_folder(), "--public-key", key]);
    assert_eq!(by_folder.stdout, run.stdout);
}

#[tokio::test]
async fn replay_without_a_key_warns_at_the_top() {
    let recorded = Recorded::new().await;
    let run = recorded.run(&["replay", ORDERS]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.starts_with("WARNING: this timeline is NOT verified"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("#2 DENIED: DROP TABLE customers"));
    // An open session: no manifest, the events so far.
    let open = recorded.run(&["replay", OPEN]);
    assert_eq!(open.code, 0, "{}", open.stderr);
    assert!(
        open.stdout
            .contains("started     2026-11-29T08:00:00.000000Z\nended       open: no manifest"),
        "{}",
        open.stdout
    );
    assert!(
        open.stdout.contains("#1 HELD for approval: UPDATE orders"),
        "{}",
        open.stdout
    );
    assert!(
        open.stdout
            .contains("#1 approval approved: approved by alice (approve-7f3a), runs"),
        "{}",
        open.stdout
    );
}

#[tokio::test]
async fn replay_refuses_an_unverified_timeline_unless_asked() {
    let recorded = Recorded::new().await;
    let key = recorded.public_key.to_str().unwrap();
    let mut manifest = recorded.manifest(&orders_folder());
    manifest.user = "someone-else".into();
    recorded.put_manifest(&orders_folder(), &manifest);
    let refused = recorded.run(&["replay", ORDERS, "--public-key", key]);
    assert_eq!(refused.code, 1);
    assert_eq!(refused.stdout, "");
    assert!(
        refused
            .stderr
            .starts_with("NOT VERIFIED: the manifest's signature does not match"),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("pass --unverified"), "{}", refused.stderr);
    let shown = recorded.run(&["replay", ORDERS, "--public-key", key, "--unverified"]);
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    assert!(
        shown
            .stdout
            .starts_with("WARNING: NOT VERIFIED: the manifest's signature does not match"),
        "{}",
        shown.stdout
    );
    assert!(shown.stdout.contains("#2 DENIED: DROP TABLE customers"));
}

#[tokio::test]
async fn an_intact_session_verifies() {
    let recorded = Recorded::new().await;
    let key = recorded.public_key.to_str().unwrap();
    let run = recorded.run(&["verify", ORDERS, "--public-key", key]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout.trim(),
        format!(
            "verified: {ORDERS} — 9 events in 3 chunks, signed by key {}",
            key_id(&signing_key().verifying_key())
        )
    );
    let by_folder = recorded.run(&["verify", &orders_folder(), "--public-key", key]);
    assert_eq!(by_folder.stdout, run.stdout);
}

/// `verify ORDERS` after `tamper`: exit 1 and the message on stderr.
async fn not_verified(tamper: impl FnOnce(&Recorded)) -> String {
    let recorded = Recorded::new().await;
    tamper(&recorded);
    let run = recorded.run(&[
        "verify",
        ORDERS,
        "--public-key",
        recorded.public_key.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 1, "stdout {} stderr {}", run.stdout, run.stderr);
    assert_eq!(run.stdout, "");
    assert!(run.stderr.starts_with("NOT VERIFIED: "), "{}", run.stderr);
    run.stderr
}

#[tokio::test]
async fn a_changed_byte_names_the_chunk() {
    let e = not_verified(|r| {
        let path = r.path(&format!("{}/{}", orders_folder(), chunk_name(2)));
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        std::fs::write(&path, bytes).unwrap();
    })
    .await;
    assert!(e.contains("chunk-000002.jsonl.gz was changed"), "{e}");
}

#[tokio::test]
async fn a_removed_chunk_is_named() {
    let e = not_verified(|r| {
        std::fs::remove_file(r.path(&format!("{}/{}", orders_folder(), chunk_name(2)))).unwrap();
    })
    .await;
    assert!(
        e.contains("chunk-000002.jsonl.gz is listed in the manifest but missing"),
        "{e}"
    );
}

#[tokio::test]
async fn reordered_events_break_the_sequence() {
    // Two events swapped, the chunk re-sealed and the manifest re-signed (as
    // if by someone holding the key): the chain still tells.
    let e = not_verified(|r| {
        let folder = orders_folder();
        let path = r.path(&format!("{folder}/{}", chunk_name(1)));
        let mut lines = chunk::decode(&std::fs::read(&path).unwrap()).unwrap();
        lines.swap(1, 2);
        let bytes = chunk::encode(lines.iter().map(Vec::as_slice)).unwrap();
        let mut manifest = r.manifest(&folder);
        manifest.chunks[0].sha256 = line_hash(&bytes);
        manifest.chunks[0].bytes = bytes.len() as u64;
        manifest.sign(&signing_key());
        std::fs::write(&path, bytes).unwrap();
        r.put_manifest(&folder, &manifest);
    })
    .await;
    assert!(
        e.contains("chunk-000001.jsonl.gz line 2: expected event 1, found event 2"),
        "{e}"
    );
}

#[tokio::test]
async fn an_appended_chunk_is_named() {
    let e = not_verified(|r| {
        let folder = orders_folder();
        let last = std::fs::read(r.path(&format!("{folder}/{}", chunk_name(3)))).unwrap();
        std::fs::write(r.path(&format!("{folder}/{}", chunk_name(4))), last).unwrap();
    })
    .await;
    assert!(
        e.contains("chunk-000004.jsonl.gz is not listed in the manifest"),
        "{e}"
    );
}

#[tokio::test]
async fn a_manifest_that_does_not_parse_is_not_verified() {
    let e = not_verified(|r| {
        std::fs::write(
            r.path(&format!("{}/{MANIFEST}", orders_folder())),
            "{\"format\": 7",
        )
        .unwrap();
    })
    .await;
    assert!(e.contains("manifest.json does not parse"), "{e}");
}

#[tokio::test]
async fn a_session_copied_into_another_place_is_not_verified() {
    // A signed session copied into another Connection's folder verifies
    // byte for byte; its place does not.
    let recorded = Recorded::new().await;
    let copy = format!("shop/payments-db/2026/11/28/{ORDERS}");
    for name in [chunk_name(1), chunk_name(2), chunk_name(3), MANIFEST.into()] {
        let bytes = std::fs::read(recorded.path(&format!("{}/{name}", orders_folder()))).unwrap();
        recorded
            .store()
            .put(&format!("{copy}/{name}"), bytes)
            .await
            .unwrap();
    }
    let key = recorded.public_key.to_str().unwrap();
    let run = recorded.run(&["verify", &copy, "--public-key", key]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stderr.contains(&format!(
            "NOT VERIFIED: the folder {copy} holds a session signed as {}",
            orders_folder()
        )),
        "{}",
        run.stderr
    );
    // By id, the session is now in two places: the folder must be named.
    let run = recorded.run(&["verify", ORDERS, "--public-key", key]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("is in more than one folder"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn another_key_is_not_verified() {
    let recorded = Recorded::new().await;
    let run = recorded.run(&[
        "verify",
        ORDERS,
        "--public-key",
        recorded.other_public_key.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 1);
    let signer = key_id(&signing_key().verifying_key());
    let given = key_id(&other_key().verifying_key());
    assert!(
        run.stderr.contains(&format!(
            "NOT VERIFIED: the manifest was signed by key {signer}, not by the given key {given}"
        )),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn an_open_session_is_not_verified() {
    let recorded = Recorded::new().await;
    let run = recorded.run(&[
        "verify",
        OPEN,
        "--public-key",
        recorded.public_key.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("manifest.json is missing"), "{}", run.stderr);
}

#[tokio::test]
async fn usage_key_and_store_errors_exit_2() {
    let recorded = Recorded::new().await;
    let key = recorded.public_key.to_str().unwrap();
    let missing = recorded.run(&["verify", "20261128T000000Z-ffffffffffffffff", "--public-key", key]);
    assert_eq!(missing.code, 2);
    assert!(
        missing
            .stderr
            .contains("session \"20261128T000000Z-ffffffffffffffff\" not found in folder"),
        "{}",
        missing.stderr
    );
    let missing = recorded.run(&["replay", "shop/orders-db/2026/11/28/nothing-here"]);
    assert_eq!(missing.code, 2);
    assert!(missing.stderr.contains("not found"), "{}", missing.stderr);
    // A key file that is not there, or not a public key.
    let no_key = recorded.run(&["verify", ORDERS, "--public-key", "/nonexistent/key.pub"]);
    assert_eq!(no_key.code, 2);
    assert!(
        no_key.stderr.contains("cannot read /nonexistent/key.pub"),
        "{}",
        no_key.stderr
    );
    let manifest = recorded.path(&format!("{}/{MANIFEST}", orders_folder()));
    let not_key = recorded.run(&["verify", ORDERS, "--public-key", manifest.to_str().unwrap()]);
    assert_eq!(not_key.code, 2);
    assert!(
        not_key.stderr.contains("is not an ed25519 public key"),
        "{}",
        not_key.stderr
    );
    // No store, or two.
    let none = run_with(&["sessions"]);
    assert_eq!(none.code, 2);
    assert!(none.stderr.contains("no recordings store"), "{}", none.stderr);
    let both = recorded.run(&["sessions", "--s3-bucket", "recordings"]);
    assert_eq!(both.code, 2);
    assert!(both.stderr.contains("choose one store"), "{}", both.stderr);
    // A verify without a key is a usage error.
    let usage = recorded.run(&["verify", ORDERS]);
    assert_eq!(usage.code, 2);
    assert!(usage.stderr.contains("--public-key"), "{}", usage.stderr);
}

#[tokio::test]
async fn garbage_is_reported_never_a_panic() {
    let recorded = Recorded::new().await;
    let store = recorded.store();
    // Files outside the layout, a folder of garbage, a garbage manifest.
    store.put("README.txt", b"hello".to_vec()).await.unwrap();
    store
        .put("shop/x/notadate/11/28/s/chunk-000001.jsonl.gz", vec![0; 10])
        .await
        .unwrap();
    let garbage = "shop/orders-db/2026/11/30/20261130T000000Z-0000000000000bad";
    store
        .put(
            &format!("{garbage}/chunk-000001.jsonl.gz"),
            b"\x1f\x8bnot gzip".to_vec(),
        )
        .await
        .unwrap();
    store
        .put(&format!("{garbage}/{MANIFEST}"), vec![0xff, 0xfe, 0])
        .await
        .unwrap();
    store
        .put(&format!("{garbage}/junk.bin"), vec![1, 2, 3])
        .await
        .unwrap();
    let run = recorded.run(&["sessions"]);
    let ids = listed(&run);
    assert_eq!(ids.len(), 4, "{}", run.stdout);
    let line = run
        .stdout
        .lines()
        .find(|l| l.contains("0000000000000bad"))
        .unwrap();
    assert!(line.contains("manifest unreadable"), "{line}");
    let replay = recorded.run(&["replay", "20261130T000000Z-0000000000000bad"]);
    assert_eq!(replay.code, 0, "{}", replay.stderr);
    assert!(
        replay.stdout.contains("!! manifest.json does not parse"),
        "{}",
        replay.stdout
    );
    assert!(
        replay
            .stdout
            .contains("!! chunk-000001.jsonl.gz: not a gzip chunk"),
        "{}",
        replay.stdout
    );
    let key = recorded.public_key.to_str().unwrap();
    let verify = recorded.run(&["verify", "20261130T000000Z-0000000000000bad", "--public-key", key]);
    assert_eq!(verify.code, 1);
    assert!(
        verify.stderr.contains("manifest.json does not parse"),
        "{}",
        verify.stderr
    );
    // An extra object in an intact session is named.
    store
        .put(&format!("{}/notes.txt", orders_folder()), b"x".to_vec())
        .await
        .unwrap();
    let verify = recorded.run(&["verify", ORDERS, "--public-key", key]);
    assert_eq!(verify.code, 1);
    assert!(
        verify.stderr.contains("notes.txt is not listed in the manifest"),
        "{}",
        verify.stderr
    );
    // A name that would steer the terminal is shown escaped.
    std::fs::remove_file(recorded.path(&format!("{}/notes.txt", orders_folder()))).unwrap();
    store
        .put(&format!("{}/x\u{1b}[2J", orders_folder()), b"x".to_vec())
        .await
        .unwrap();
    let verify = recorded.run(&["verify", ORDERS, "--public-key", key]);
    assert_eq!(verify.code, 1);
    assert!(
        verify.stderr.contains("x\\u{1b}[2J is not listed"),
        "{}",
        verify.stderr
    );
    assert!(!verify.stderr.contains('\u{1b}'), "{}", verify.stderr);
}

#[test]
fn help_names_the_commands_and_the_exit_codes() {
    let run = run_with(&["--help"]);
    assert_eq!(run.code, 0);
    for expected in [
        "sessions",
        "replay",
        "verify",
        "--dir",
        "--s3-bucket",
        "AWS_SECRET_ACCESS_KEY",
        "Exit codes",
    ] {
        assert!(
            run.stdout.contains(expected),
            "missing {expected} in\n{}",
            run.stdout
        );
    }
}
