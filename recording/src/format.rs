//! The recording format, version 1 (`gatehouse.recording/v1`); described for
//! readers outside Gatehouse in `docs/recording-format.md`.
//!
//! A session is a sequence of events, one JSON object per line. Each event
//! names the SHA-256 of the line before it (`prev`), the first one a digest
//! of the session id, so a changed, removed, reordered or inserted event
//! breaks the chain at that point. Events are cut into gzip-compressed
//! chunks, and a session closes with a manifest listing each chunk with its
//! SHA-256 and its events, signed with the gateway's ed25519 key.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The format's name and version, in every manifest.
pub const FORMAT: &str = "gatehouse.recording/v1";

/// The manifest's object name in a session's folder.
pub const MANIFEST: &str = "manifest.json";

/// The name of chunk `n` (from 1).
pub fn chunk_name(n: u32) -> String {
    format!("chunk-{n:06}.jsonl.gz")
}

/// One recorded event: its place in the session, when, the hash of the
/// event before it, and what happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the session, from 0.
    pub seq: u64,
    /// When, in RFC 3339 UTC with microseconds.
    pub at: String,
    /// Lower-case hex SHA-256 of the previous event's line (for event 0,
    /// [`genesis`] of the session id).
    pub prev: String,
    /// What happened.
    #[serde(flatten)]
    pub body: Body,
}

/// The Connection a session went through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionRef {
    /// Its namespace (`standalone` outside Kubernetes).
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// An error the client got, masked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// SQLSTATE.
    pub sqlstate: String,
    /// The message.
    pub message: String,
}

/// What an event records. Text that came from the database or the client
/// (statements, values, messages) is masked before it is recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    /// The session began.
    Connect {
        /// The session id.
        session: String,
        /// The Connection.
        connection: ConnectionRef,
        /// The caller's username.
        user: String,
        /// The caller's groups.
        groups: Vec<String>,
        /// The client's address and port.
        client: String,
        /// Whether the client used TLS.
        tls: bool,
    },
    /// A statement the client sent (a simple Query, or a Parse).
    Statement {
        /// Its number in the session, from 1.
        id: u64,
        /// The text, masked.
        text: String,
        /// `allow`, `deny` or `requireApproval`.
        decision: String,
        /// Why it was refused, when it was.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// How the hold of a `requireApproval` statement ended: for a simple
    /// Query before it runs or is refused, for a prepared statement at each
    /// Bind (each execution needs its own approval).
    Approval {
        /// The statement held.
        statement: u64,
        /// The ApprovalRequest, when one was made.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
        /// `approved` (it runs), `denied`, `expired`, `timedOut`,
        /// `cancelled` or `failed`.
        outcome: String,
        /// Who decided and why, or what went wrong.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// A result came back: a command completed or failed.
    Result {
        /// The statement it answers (0 when not known).
        statement: u64,
        /// The command tag (`SELECT 3`, `UPDATE 1`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tag: Option<String>,
        /// Rows the client received for it.
        rows: u64,
        /// The error the client got instead, masked.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ErrorInfo>,
        /// From the statement's first message to this answer, in microseconds.
        duration_us: u64,
    },
    /// Rows of a result as the client received them (masked), up to the
    /// configured cap per statement.
    Rows {
        /// The statement they answer.
        statement: u64,
        /// The column names.
        columns: Vec<String>,
        /// The values in text form (binary values as `\x` and hex); `null` for NULL.
        rows: Vec<Vec<Option<String>>>,
        /// More rows or bytes came than the cap records.
        #[serde(default)]
        truncated: bool,
    },
    /// A notice or warning the client got, masked.
    Notice {
        /// Its severity.
        severity: String,
        /// SQLSTATE.
        sqlstate: String,
        /// The message.
        message: String,
    },
    /// Events that could not be recorded (`recording.mode: bestEffort` with
    /// the spool full).
    Gap {
        /// How many.
        dropped: u64,
    },
    /// The session ended.
    Disconnect {
        /// Why: `client_closed`, `server_closed`, `idle_timeout`, `error`, ...
        reason: String,
    },
}

/// The `prev` of a session's first event: SHA-256 of the format name and
/// the session id, so a chunk cannot be moved from one session to another.
pub fn genesis(session: &str) -> String {
    hex::encode(Sha256::digest(format!("{FORMAT}:{session}").as_bytes()))
}

/// The hash the next event names as `prev`: SHA-256 of this event's line
/// (without its newline).
pub fn line_hash(line: &[u8]) -> String {
    hex::encode(Sha256::digest(line))
}

/// One chunk in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkEntry {
    /// The object name in the session's folder.
    pub name: String,
    /// Lower-case hex SHA-256 of the compressed object.
    pub sha256: String,
    /// Its size, compressed.
    pub bytes: u64,
    /// The `seq` of its first event.
    pub first_seq: u64,
    /// The `seq` of its last event.
    pub last_seq: u64,
}

/// A session's manifest: written when the session ends (or when a proxy
/// recovers what a killed one left), signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// The session id.
    pub session: String,
    /// The Connection.
    pub connection: ConnectionRef,
    /// The caller's username.
    pub user: String,
    /// The first event's time.
    pub started: String,
    /// The last event's time.
    pub ended: String,
    /// How the session ended (the disconnect reason), or `recovered` when a
    /// restarted proxy closed what a killed one left.
    pub end: String,
    /// The number of events.
    pub events: u64,
    /// [`line_hash`] of the last event.
    pub last_hash: String,
    /// The chunks, in order.
    pub chunks: Vec<ChunkEntry>,
    /// [`key_id`] of the key that signed it.
    pub key_id: String,
    /// Base64 ed25519 signature of [`Manifest::signed_bytes`].
    pub signature: String,
}

impl Manifest {
    /// The bytes the signature covers: the manifest as JSON with an empty
    /// signature.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut unsigned = self.clone();
        unsigned.signature.clear();
        // Serializing a struct of strings, numbers and lists cannot fail.
        serde_json::to_vec(&unsigned).unwrap_or_default()
    }

    /// Signs the manifest with `key`.
    pub fn sign(&mut self, key: &SigningKey) {
        use base64::Engine as _;
        self.key_id = key_id(&key.verifying_key());
        self.signature.clear();
        let signature = key.sign(&self.signed_bytes());
        self.signature = base64::engine::general_purpose::STANDARD.encode(signature.to_bytes());
    }

    /// Whether `key` signed exactly this manifest.
    pub fn verify_signature(&self, key: &VerifyingKey) -> Result<(), SignatureError> {
        use base64::Engine as _;
        if self.key_id != key_id(key) {
            return Err(SignatureError::OtherKey {
                signed_by: self.key_id.clone(),
                expected: key_id(key),
            });
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&self.signature)
            .map_err(|_| SignatureError::Malformed)?;
        let signature = Signature::from_slice(&bytes).map_err(|_| SignatureError::Malformed)?;
        key.verify(&self.signed_bytes(), &signature)
            .map_err(|_| SignatureError::Mismatch)
    }
}

/// Why a manifest's signature does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// Another key signed it.
    #[error("the manifest was signed by key {signed_by}, not by the given key {expected}")]
    OtherKey {
        /// The key id in the manifest.
        signed_by: String,
        /// The given key's id.
        expected: String,
    },
    /// The signature is not base64 of 64 bytes.
    #[error("the manifest's signature is not a base64 ed25519 signature")]
    Malformed,
    /// The signature does not match the content.
    #[error(
        "the manifest's signature does not match its content: the manifest was changed after it was signed"
    )]
    Mismatch,
}

/// A short, stable name for a public key: the first 16 hex digits of the
/// SHA-256 of its 32 bytes.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// Why a key file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not such a key.
    #[error("{path} is not an ed25519 {what} in PEM ({why})")]
    Parse {
        /// The file.
        path: String,
        /// What was expected.
        what: &'static str,
        /// Why.
        why: String,
    },
}

/// Reads an ed25519 private key in PKCS#8 PEM (`openssl genpkey -algorithm ed25519`).
pub fn read_signing_key(path: &std::path::Path) -> Result<SigningKey, KeyError> {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })?;
    SigningKey::from_pkcs8_pem(&text).map_err(|e| KeyError::Parse {
        path: path.display().to_string(),
        what: "private key (PKCS#8)",
        why: e.to_string(),
    })
}

/// Reads an ed25519 public key in SPKI PEM (`openssl pkey -pubout`).
pub fn read_verifying_key(path: &std::path::Path) -> Result<VerifyingKey, KeyError> {
    use ed25519_dalek::pkcs8::DecodePublicKey;
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })?;
    VerifyingKey::from_public_key_pem(&text).map_err(|e| KeyError::Parse {
        path: path.display().to_string(),
        what: "public key (SPKI)",
        why: e.to_string(),
    })
}

/// The folder of a session's objects under a prefix:
/// `<prefix>/<namespace>/<connection>/<yyyy>/<mm>/<dd>/<session>`, the date
/// being the session's start (UTC, from its id).
pub fn session_folder(prefix: &str, connection: &ConnectionRef, session: &str) -> String {
    // Session ids start with the start time: `20261128T175300Z-...`.
    let (y, m, d) = (
        session.get(0..4).unwrap_or("0000"),
        session.get(4..6).unwrap_or("00"),
        session.get(6..8).unwrap_or("00"),
    );
    let path = format!(
        "{}/{}/{y}/{m}/{d}/{session}",
        connection.namespace, connection.name
    );
    match prefix.trim_matches('/') {
        "" => path,
        prefix => format!("{prefix}/{path}"),
    }
}

/// A new session id: the start time (UTC, to the second) and 64 random bits,
/// so ids sort by time and never collide.
pub fn new_session_id(now: std::time::SystemTime) -> String {
    let stamp = humantime::format_rfc3339_seconds(now).to_string();
    // 2026-11-28T17:53:00Z -> 20261128T175300Z
    let compact: String = stamp.chars().filter(|c| *c != '-' && *c != ':').collect();
    format!("{compact}-{:016x}", rand::random::<u64>())
}

/// An RFC 3339 UTC time with microseconds.
pub fn timestamp(at: std::time::SystemTime) -> String {
    humantime::format_rfc3339_micros(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn manifest() -> Manifest {
        Manifest {
            format: FORMAT.into(),
            session: "20261128T175300Z-0011223344556677".into(),
            connection: ConnectionRef {
                namespace: "shop".into(),
                name: "orders-db".into(),
            },
            user: "planner".into(),
            started: "2026-11-28T17:53:00.000001Z".into(),
            ended: "2026-11-28T17:53:01.000001Z".into(),
            end: "client_closed".into(),
            events: 3,
            last_hash: "ab".repeat(32),
            chunks: vec![ChunkEntry {
                name: chunk_name(1),
                sha256: "cd".repeat(32),
                bytes: 100,
                first_seq: 0,
                last_seq: 2,
            }],
            key_id: String::new(),
            signature: String::new(),
        }
    }

    #[test]
    fn a_signed_manifest_verifies_and_any_change_breaks_it() {
        let mut m = manifest();
        m.sign(&key());
        m.verify_signature(&key().verifying_key()).unwrap();
        let mut changed = m.clone();
        changed.events = 4;
        assert_eq!(
            changed.verify_signature(&key().verifying_key()),
            Err(SignatureError::Mismatch)
        );
        let other = SigningKey::from_bytes(&[8u8; 32]);
        assert!(matches!(
            m.verify_signature(&other.verifying_key()),
            Err(SignatureError::OtherKey { .. })
        ));
        let mut garbled = m.clone();
        garbled.signature = "not base64!".into();
        assert_eq!(
            garbled.verify_signature(&key().verifying_key()),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn events_round_trip_with_their_kind() {
        let event = Event {
            seq: 1,
            at: "2026-11-28T17:53:00.000001Z".into(),
            prev: genesis("s"),
            body: Body::Statement {
                id: 1,
                text: "SELECT 1".into(),
                decision: "allow".into(),
                reason: None,
            },
        };
        let line = serde_json::to_string(&event).unwrap();
        assert!(line.contains(r#""kind":"statement""#), "{line}");
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), event);
    }

    #[test]
    fn sessions_are_filed_by_connection_and_start_date() {
        let connection = ConnectionRef {
            namespace: "shop".into(),
            name: "orders-db".into(),
        };
        let id = new_session_id(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_888_380));
        assert!(id.starts_with("20261128T"), "{id}");
        assert_eq!(
            session_folder("/rec/", &connection, &id),
            format!("rec/shop/orders-db/2026/11/28/{id}")
        );
        assert_eq!(
            session_folder("", &connection, &id),
            format!("shop/orders-db/2026/11/28/{id}")
        );
    }

    #[test]
    fn keys_are_read_from_openssl_pem() {
        use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey, spki::der::pem::LineEnding};
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("key.pem");
        let public = dir.path().join("key.pub");
        std::fs::write(&private, key().to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
        std::fs::write(
            &public,
            key().verifying_key().to_public_key_pem(LineEnding::LF).unwrap(),
        )
        .unwrap();
        assert_eq!(read_signing_key(&private).unwrap().to_bytes(), key().to_bytes());
        assert_eq!(read_verifying_key(&public).unwrap(), key().verifying_key());
        let e = read_verifying_key(&private).unwrap_err().to_string();
        assert!(e.contains("is not an ed25519 public key"), "{e}");
    }
}
