//! Verification of a recorded session: the manifest's signature, each
//! chunk's digest, and the chain of events across chunks. Every failure
//! names the place: the chunk, the line, the event.

use std::collections::BTreeMap;

use ed25519_dalek::VerifyingKey;

use crate::{
    chunk,
    format::{Event, FORMAT, MANIFEST, Manifest, SignatureError, genesis, line_hash},
};

/// A session that verified: its manifest and its events in order.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The manifest.
    pub manifest: Manifest,
    /// Every event, in order.
    pub events: Vec<Event>,
}

/// Why a session does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// No manifest: the session is still open, or its proxy has not
    /// recovered it yet, or the manifest was removed.
    #[error(
        "{MANIFEST} is missing: the session is still open, not yet recovered, or its manifest was removed"
    )]
    NoManifest,
    /// The manifest is not JSON of the expected shape.
    #[error("{MANIFEST} does not parse: {0}")]
    ManifestParse(String),
    /// Another format.
    #[error("{MANIFEST} is in format {0:?}; this tool reads {FORMAT}")]
    Format(String),
    /// The signature does not hold.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// A chunk the manifest lists is not there.
    #[error("{0} is listed in the manifest but missing")]
    ChunkMissing(String),
    /// A chunk's bytes are not those the manifest signed.
    #[error("{name} was changed: its SHA-256 is {actual}, the manifest says {expected}")]
    ChunkChanged {
        /// The chunk.
        name: String,
        /// Its digest in the manifest.
        expected: String,
        /// Its digest now.
        actual: String,
    },
    /// A chunk that the manifest does not list (appended later).
    #[error("{0} is not listed in the manifest: it was added after the session was signed")]
    ChunkExtra(String),
    /// A chunk does not decompress or an event does not parse.
    #[error("{chunk} line {line}: {why}")]
    Unreadable {
        /// The chunk.
        chunk: String,
        /// The line (from 1).
        line: usize,
        /// Why.
        why: String,
    },
    /// An event is out of place: reordered, removed or inserted.
    #[error(
        "{chunk} line {line}: expected event {expected}, found event {found} (events were removed, reordered or inserted)"
    )]
    Sequence {
        /// The chunk.
        chunk: String,
        /// The line (from 1).
        line: usize,
        /// The seq that belongs there.
        expected: u64,
        /// The seq found.
        found: u64,
    },
    /// An event does not follow the one before it.
    #[error(
        "{chunk} line {line}: event {seq} does not follow the event before it (its prev hash does not match): an event was changed"
    )]
    Chain {
        /// The chunk.
        chunk: String,
        /// The line (from 1).
        line: usize,
        /// The event.
        seq: u64,
    },
    /// A chunk holds other events than the manifest says.
    #[error("{chunk} holds events {first} to {last}; the manifest says {expected_first} to {expected_last}")]
    ChunkRange {
        /// The chunk.
        chunk: String,
        /// Its first event.
        first: u64,
        /// Its last event.
        last: u64,
        /// The manifest's first.
        expected_first: u64,
        /// The manifest's last.
        expected_last: u64,
    },
    /// The events end elsewhere than the manifest says.
    #[error(
        "the session has {found} events ending in hash {found_hash}; the manifest says {expected} ending in {expected_hash}"
    )]
    Ending {
        /// Events found.
        found: u64,
        /// Events in the manifest.
        expected: u64,
        /// Hash of the last event found.
        found_hash: String,
        /// Hash in the manifest.
        expected_hash: String,
    },
}

/// Verifies a session from its objects (name → bytes: the manifest and the
/// chunks, as listed in its folder) against the gateway's public key.
pub fn verify(objects: &BTreeMap<String, Vec<u8>>, key: &VerifyingKey) -> Result<Verified, VerifyError> {
    let manifest_bytes = objects.get(MANIFEST).ok_or(VerifyError::NoManifest)?;
    let manifest: Manifest =
        serde_json::from_slice(manifest_bytes).map_err(|e| VerifyError::ManifestParse(e.to_string()))?;
    if manifest.format != FORMAT {
        return Err(VerifyError::Format(manifest.format));
    }
    manifest.verify_signature(key)?;
    let listed: std::collections::BTreeSet<&str> = manifest.chunks.iter().map(|c| c.name.as_str()).collect();
    if let Some(extra) = objects
        .keys()
        .find(|name| name.as_str() != MANIFEST && !listed.contains(name.as_str()))
    {
        return Err(VerifyError::ChunkExtra(extra.clone()));
    }
    let mut events = Vec::new();
    let mut prev = genesis(&manifest.session);
    for entry in &manifest.chunks {
        let bytes = objects
            .get(&entry.name)
            .ok_or_else(|| VerifyError::ChunkMissing(entry.name.clone()))?;
        let actual = line_hash(bytes);
        if actual != entry.sha256 {
            return Err(VerifyError::ChunkChanged {
                name: entry.name.clone(),
                expected: entry.sha256.clone(),
                actual,
            });
        }
        let lines = chunk::decode(bytes).map_err(|why| VerifyError::Unreadable {
            chunk: entry.name.clone(),
            line: 0,
            why,
        })?;
        let first = events.len() as u64;
        for (i, line) in lines.iter().enumerate() {
            let place = |why: String| VerifyError::Unreadable {
                chunk: entry.name.clone(),
                line: i + 1,
                why,
            };
            let event: Event = serde_json::from_slice(line).map_err(|e| place(e.to_string()))?;
            let expected = events.len() as u64;
            if event.seq != expected {
                return Err(VerifyError::Sequence {
                    chunk: entry.name.clone(),
                    line: i + 1,
                    expected,
                    found: event.seq,
                });
            }
            if event.prev != prev {
                return Err(VerifyError::Chain {
                    chunk: entry.name.clone(),
                    line: i + 1,
                    seq: event.seq,
                });
            }
            prev = line_hash(line);
            events.push(event);
        }
        let last = (events.len() as u64).saturating_sub(1);
        if lines.is_empty() || first != entry.first_seq || last != entry.last_seq {
            return Err(VerifyError::ChunkRange {
                chunk: entry.name.clone(),
                first,
                last,
                expected_first: entry.first_seq,
                expected_last: entry.last_seq,
            });
        }
    }
    if events.len() as u64 != manifest.events || prev != manifest.last_hash {
        return Err(VerifyError::Ending {
            found: events.len() as u64,
            expected: manifest.events,
            found_hash: prev,
            expected_hash: manifest.last_hash.clone(),
        });
    }
    Ok(Verified { manifest, events })
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::format::{Body, ChunkEntry, ConnectionRef, chunk_name};

    const SESSION: &str = "20261128T175300Z-0011223344556677";

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[3u8; 32])
    }

    /// A signed session of `n` events in chunks of `per_chunk`.
    fn session(n: u64, per_chunk: usize) -> BTreeMap<String, Vec<u8>> {
        let mut prev = genesis(SESSION);
        let mut lines = Vec::new();
        for seq in 0..n {
            let event = Event {
                seq,
                at: format!("2026-11-28T17:53:{:02}.000000Z", seq % 60),
                prev: prev.clone(),
                body: Body::Notice {
                    severity: "NOTICE".into(),
                    sqlstate: "00000".into(),
                    message: format!("event {seq}"),
                },
            };
            let line = serde_json::to_vec(&event).unwrap();
            prev = line_hash(&line);
            lines.push(line);
        }
        let mut objects = BTreeMap::new();
        let mut chunks = Vec::new();
        for (i, group) in lines.chunks(per_chunk).enumerate() {
            let bytes = chunk::encode(group.iter().map(Vec::as_slice)).unwrap();
            let first = (i * per_chunk) as u64;
            chunks.push(ChunkEntry {
                name: chunk_name(i as u32 + 1),
                sha256: line_hash(&bytes),
                bytes: bytes.len() as u64,
                first_seq: first,
                last_seq: first + group.len() as u64 - 1,
            });
            objects.insert(chunk_name(i as u32 + 1), bytes);
        }
        let mut manifest = Manifest {
            format: FORMAT.into(),
            session: SESSION.into(),
            connection: ConnectionRef {
                namespace: "shop".into(),
                name: "orders-db".into(),
            },
            user: "planner".into(),
            started: "a".into(),
            ended: "b".into(),
            end: "client_closed".into(),
            events: n,
            last_hash: prev,
            chunks,
            key_id: String::new(),
            signature: String::new(),
        };
        manifest.sign(&key());
        objects.insert(MANIFEST.into(), serde_json::to_vec(&manifest).unwrap());
        objects
    }

    fn check(objects: &BTreeMap<String, Vec<u8>>) -> Result<Verified, VerifyError> {
        verify(objects, &key().verifying_key())
    }

    /// Rewrites chunk `name`'s lines and re-seals the chunk (so only the
    /// chain can tell), without re-signing the manifest.
    fn rewrite(objects: &mut BTreeMap<String, Vec<u8>>, name: &str, edit: impl FnOnce(&mut Vec<Vec<u8>>)) {
        let mut lines = chunk::decode(&objects[name]).unwrap();
        edit(&mut lines);
        objects.insert(
            name.into(),
            chunk::encode(lines.iter().map(Vec::as_slice)).unwrap(),
        );
    }

    #[test]
    fn an_intact_session_verifies() {
        let verified = check(&session(10, 4)).unwrap();
        assert_eq!(verified.events.len(), 10);
        assert_eq!(verified.manifest.chunks.len(), 3);
    }

    #[test]
    fn a_changed_byte_names_the_chunk() {
        let mut objects = session(10, 4);
        let chunk = objects.get_mut(&chunk_name(2)).unwrap();
        let middle = chunk.len() / 2;
        chunk[middle] ^= 1;
        let e = check(&objects).unwrap_err();
        assert!(
            matches!(&e, VerifyError::ChunkChanged { name, .. } if *name == chunk_name(2)),
            "{e}"
        );
    }

    #[test]
    fn removed_and_appended_chunks_are_named() {
        let mut objects = session(10, 4);
        objects.remove(&chunk_name(3));
        assert_eq!(
            check(&objects).unwrap_err(),
            VerifyError::ChunkMissing(chunk_name(3))
        );
        let mut objects = session(10, 4);
        objects.insert(chunk_name(4), objects[&chunk_name(3)].clone());
        assert_eq!(
            check(&objects).unwrap_err(),
            VerifyError::ChunkExtra(chunk_name(4))
        );
        let mut objects = session(10, 4);
        objects.remove(MANIFEST);
        assert_eq!(check(&objects).unwrap_err(), VerifyError::NoManifest);
    }

    #[test]
    fn the_chain_catches_what_the_digests_would_not() {
        // A re-sealed chunk with two events swapped, or one changed: the
        // digest catches it first; with the digest "fixed" too (an attacker
        // who rewrites the manifest cannot re-sign it) the signature does.
        let mut objects = session(10, 4);
        rewrite(&mut objects, &chunk_name(1), |lines| lines.swap(1, 2));
        assert!(matches!(
            check(&objects).unwrap_err(),
            VerifyError::ChunkChanged { .. }
        ));
        // The chain alone, as checked with digests matching: a swapped pair.
        let mut objects = session(10, 4);
        rewrite(&mut objects, &chunk_name(1), |lines| lines.swap(1, 2));
        let bytes = objects[&chunk_name(1)].clone();
        let mut manifest: Manifest = serde_json::from_slice(&objects[MANIFEST]).unwrap();
        manifest.chunks[0].sha256 = line_hash(&bytes);
        manifest.sign(&key());
        objects.insert(MANIFEST.into(), serde_json::to_vec(&manifest).unwrap());
        assert_eq!(
            check(&objects).unwrap_err(),
            VerifyError::Sequence {
                chunk: chunk_name(1),
                line: 2,
                expected: 1,
                found: 2
            }
        );
        // A changed message with its seq kept.
        let mut objects = session(10, 4);
        rewrite(&mut objects, &chunk_name(2), |lines| {
            lines[1] = String::from_utf8(lines[1].clone())
                .unwrap()
                .replace("event 5", "event X")
                .into_bytes();
        });
        let bytes = objects[&chunk_name(2)].clone();
        let mut manifest: Manifest = serde_json::from_slice(&objects[MANIFEST]).unwrap();
        manifest.chunks[1].sha256 = line_hash(&bytes);
        manifest.sign(&key());
        objects.insert(MANIFEST.into(), serde_json::to_vec(&manifest).unwrap());
        // Event 5 itself still has the right prev; event 6 no longer follows it.
        assert_eq!(
            check(&objects).unwrap_err(),
            VerifyError::Chain {
                chunk: chunk_name(2),
                line: 3,
                seq: 6
            }
        );
    }

    #[test]
    fn a_changed_manifest_fails_its_signature() {
        let mut objects = session(4, 4);
        let mut manifest: Manifest = serde_json::from_slice(&objects[MANIFEST]).unwrap();
        manifest.user = "someone-else".into();
        objects.insert(MANIFEST.into(), serde_json::to_vec(&manifest).unwrap());
        assert_eq!(
            check(&objects).unwrap_err(),
            VerifyError::Signature(SignatureError::Mismatch)
        );
        objects.insert(MANIFEST.into(), b"{not json".to_vec());
        assert!(matches!(
            check(&objects).unwrap_err(),
            VerifyError::ManifestParse(_)
        ));
    }

    #[test]
    fn garbage_chunks_are_errors_not_panics() {
        let mut objects = session(4, 4);
        let garbage = b"\x1f\x8b\x08\x00garbage".to_vec();
        let mut manifest: Manifest = serde_json::from_slice(&objects[MANIFEST]).unwrap();
        manifest.chunks[0].sha256 = line_hash(&garbage);
        manifest.sign(&key());
        objects.insert(chunk_name(1), garbage);
        objects.insert(MANIFEST.into(), serde_json::to_vec(&manifest).unwrap());
        assert!(matches!(
            check(&objects).unwrap_err(),
            VerifyError::Unreadable { .. }
        ));
    }
}
