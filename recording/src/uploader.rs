//! The uploader: takes what sessions cut in the spool to the store.
//!
//! Each pass, for every session folder in the spool: compress its cut
//! chunks (`.jsonl` → `.jsonl.gz`, noting each in `chunks.jsonl` with its
//! digest and range), upload the compressed chunks and remove them, and once
//! the session has ended and nothing is left to upload, write its signed
//! manifest and remove its folder. Every step can be repeated after a crash
//! (gzip output and digests are deterministic, uploads replace), so a pass
//! interrupted anywhere is finished by the next. While the store is down,
//! passes fail and are retried with backoff; the spool keeps growing until
//! its limit.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use ed25519_dalek::SigningKey;
use prometheus_client::metrics::{counter::Counter, gauge::Gauge, histogram::Histogram};
use serde::{Deserialize, Serialize};

use crate::{
    chunk,
    format::{ChunkEntry, Event, FORMAT, MANIFEST, Manifest, line_hash},
    spool::{SessionInfo, Spool, cut_name, folder_size, write_synced},
    store::Store,
};

/// What the uploader reports.
#[derive(Debug, Clone)]
pub struct UploadMetrics {
    /// Bytes in the spool.
    pub spool_bytes: Gauge,
    /// Seconds per object upload.
    pub upload_seconds: Histogram,
    /// Failed uploads.
    pub upload_failures: Counter,
    /// Sessions whose manifest was written.
    pub sessions_uploaded: Counter,
}

impl UploadMetrics {
    /// Metrics with the upload histogram's buckets.
    pub fn new() -> UploadMetrics {
        UploadMetrics {
            spool_bytes: Gauge::default(),
            upload_seconds: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            upload_failures: Counter::default(),
            sessions_uploaded: Counter::default(),
        }
    }
}

impl Default for UploadMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A chunk as the spool knows it after compressing it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Indexed {
    #[serde(flatten)]
    entry: ChunkEntry,
    first_at: String,
    last_at: String,
    last_hash: String,
}

/// Moves a spool's sessions to a store.
#[derive(Debug, Clone)]
pub struct Uploader {
    spool: Arc<Spool>,
    store: Store,
    key: Arc<SigningKey>,
    metrics: UploadMetrics,
}

impl Uploader {
    /// An uploader signing manifests with `key`.
    pub fn new(spool: Arc<Spool>, store: Store, key: Arc<SigningKey>, metrics: UploadMetrics) -> Uploader {
        Uploader {
            spool,
            store,
            key,
            metrics,
        }
    }

    /// Closes what a killed proxy left: open chunks are cut at their last
    /// complete line, and sessions without an end are marked `recovered`.
    /// Call before any session starts.
    pub fn recover(&self) -> std::io::Result<usize> {
        let mut recovered = 0;
        for folder in session_folders(self.spool.dir())? {
            if folder.join("end.json").exists() {
                continue;
            }
            for entry in std::fs::read_dir(&folder)? {
                let path = entry?.path();
                if path.extension().is_some_and(|e| e == "part") {
                    let bytes = std::fs::read(&path)?;
                    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                    if complete == 0 {
                        std::fs::remove_file(&path)?;
                        self.spool.released(bytes.len() as u64);
                        continue;
                    }
                    if complete < bytes.len() {
                        std::fs::write(&path, &bytes[..complete])?;
                        self.spool.released((bytes.len() - complete) as u64);
                    }
                    std::fs::rename(&path, path.with_extension("jsonl"))?;
                }
            }
            let end = serde_json::json!({"end": "recovered"});
            write_synced(&folder.join("end.json"), end.to_string().as_bytes())?;
            recovered += 1;
        }
        Ok(recovered)
    }

    /// Runs passes until the process ends: after each change in the spool,
    /// at least every second, and with backoff (up to 30 s) while the store
    /// fails.
    pub async fn run(self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let wake = self.spool.wake.notified();
            match self.pass().await {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    let _ = tokio::time::timeout(Duration::from_secs(1), wake).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "recording upload failed; the spool keeps the data");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
            self.metrics
                .spool_bytes
                .set(i64::try_from(self.spool.used()).unwrap_or(i64::MAX));
        }
    }

    /// One pass over every session in the spool.
    pub async fn pass(&self) -> Result<(), String> {
        let folders = session_folders(self.spool.dir()).map_err(|e| format!("read the spool: {e}"))?;
        let mut first_error = None;
        for folder in folders {
            if let Err(e) = self.session(&folder).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn session(&self, folder: &Path) -> Result<(), String> {
        let io = |what: &str, e: std::io::Error| format!("{}: {what}: {e}", folder.display());
        // Reading, compressing and fsyncing chunks waits on the disk and the
        // CPU for tens of milliseconds: off the runtime's workers, which
        // serve the sessions.
        let prepared = {
            let (this, folder) = (self.clone(), folder.to_path_buf());
            tokio::task::spawn_blocking(move || this.compress_cut(&folder))
                .await
                .map_err(|e| format!("compress chunks: {e}"))??
        };
        let Some((info, index)) = prepared else {
            return Ok(());
        };
        // Upload compressed chunks.
        for n in numbered(folder, "gz").map_err(|e| io("list", e))? {
            let name = crate::format::chunk_name(n);
            let path = folder.join(&name);
            let bytes = tokio::fs::read(&path).await.map_err(|e| io("read a chunk", e))?;
            let len = bytes.len() as u64;
            self.upload(&format!("{}/{name}", info.folder), bytes).await?;
            std::fs::remove_file(&path).map_err(|e| io("remove an uploaded chunk", e))?;
            self.spool.released(len);
        }
        // Close an ended session with nothing left to upload.
        let Ok(end) = std::fs::read(folder.join("end.json")) else {
            return Ok(());
        };
        if has_chunks_left(folder).map_err(|e| io("list", e))? {
            return Ok(());
        }
        let end: serde_json::Value =
            serde_json::from_slice(&end).map_err(|e| format!("{}: end.json: {e}", folder.display()))?;
        let reason = end["end"].as_str().unwrap_or("recovered").to_owned();
        let manifest = self.manifest(&info, &index, reason);
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
        self.upload(&format!("{}/{MANIFEST}", info.folder), json).await?;
        self.metrics.sessions_uploaded.inc();
        let size = folder_size(folder).unwrap_or(0);
        std::fs::remove_dir_all(folder).map_err(|e| io("remove the session folder", e))?;
        self.spool.released(size);
        Ok(())
    }

    async fn upload(&self, key: &str, bytes: Vec<u8>) -> Result<(), String> {
        let started = Instant::now();
        match self.store.put(key, bytes).await {
            Ok(()) => {
                self.metrics
                    .upload_seconds
                    .observe(started.elapsed().as_secs_f64());
                Ok(())
            }
            Err(e) => {
                self.metrics.upload_failures.inc();
                Err(e.to_string())
            }
        }
    }

    /// Reads a session folder's `session.json` and index, and compresses its
    /// cut chunks in order; `None` when the folder was created a moment ago.
    fn compress_cut(&self, folder: &Path) -> Result<Option<(SessionInfo, Vec<Indexed>)>, String> {
        let io = |what: &str, e: std::io::Error| format!("{}: {what}: {e}", folder.display());
        let info: SessionInfo = match std::fs::read(folder.join("session.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: session.json: {e}", folder.display()))?,
            // Created a moment ago; the next pass sees it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("session.json", e)),
        };
        let mut index = read_index(folder).map_err(|e| io("chunks.jsonl", e))?;
        for n in numbered(folder, "jsonl").map_err(|e| io("list", e))? {
            let path = folder.join(cut_name(n));
            let text = std::fs::read(&path).map_err(|e| io("read a chunk", e))?;
            if !index.iter().any(|i| i.entry.name == crate::format::chunk_name(n))
                && let Some(indexed) = self.compress(folder, n, &text).map_err(|e| io("compress", e))?
            {
                append_index(folder, &indexed).map_err(|e| io("chunks.jsonl", e))?;
                index.push(indexed);
            }
            std::fs::remove_file(&path).map_err(|e| io("remove a chunk", e))?;
            self.spool.released(text.len() as u64);
        }
        Ok(Some((info, index)))
    }

    /// Compresses a cut chunk; `None` when it holds no event.
    fn compress(&self, folder: &Path, n: u32, text: &[u8]) -> std::io::Result<Option<Indexed>> {
        let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
        let (Some(first), Some(last)) = (lines.first(), lines.last()) else {
            return Ok(None);
        };
        let parse = |line: &[u8]| serde_json::from_slice::<Event>(line).map_err(std::io::Error::other);
        let (first_event, last_event) = (parse(first)?, parse(last)?);
        let bytes = chunk::encode(lines.iter().copied())?;
        let name = crate::format::chunk_name(n);
        write_synced(&folder.join(&name), &bytes)?;
        self.spool.added(bytes.len() as u64);
        Ok(Some(Indexed {
            entry: ChunkEntry {
                name,
                sha256: line_hash(&bytes),
                bytes: bytes.len() as u64,
                first_seq: first_event.seq,
                last_seq: last_event.seq,
            },
            first_at: first_event.at,
            last_at: last_event.at,
            last_hash: line_hash(last),
        }))
    }

    fn manifest(&self, info: &SessionInfo, index: &[Indexed], end: String) -> Manifest {
        let mut manifest = Manifest {
            format: FORMAT.to_owned(),
            session: info.session.clone(),
            connection: info.connection.clone(),
            user: info.user.clone(),
            started: index.first().map(|i| i.first_at.clone()).unwrap_or_default(),
            ended: index.last().map(|i| i.last_at.clone()).unwrap_or_default(),
            end,
            events: index.last().map_or(0, |i| i.entry.last_seq + 1),
            last_hash: index
                .last()
                .map_or_else(|| crate::format::genesis(&info.session), |i| i.last_hash.clone()),
            chunks: index.iter().map(|i| i.entry.clone()).collect(),
            key_id: String::new(),
            signature: String::new(),
        };
        manifest.sign(&self.key);
        manifest
    }
}

fn session_folders(spool: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut folders = Vec::new();
    for entry in std::fs::read_dir(spool)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            folders.push(entry.path());
        }
    }
    folders.sort();
    Ok(folders)
}

/// The chunk numbers of `chunk-NNNNNN.<ext>` files, in order.
fn numbered(folder: &Path, ext: &str) -> std::io::Result<Vec<u32>> {
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir(folder)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        let number = name
            .strip_prefix("chunk-")
            .and_then(|rest| rest.strip_suffix(&format!(".{ext}")))
            .and_then(|n| n.strip_suffix(".jsonl").unwrap_or(n).parse().ok());
        if let Some(n) = number {
            numbers.push(n);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

fn has_chunks_left(folder: &Path) -> std::io::Result<bool> {
    for entry in std::fs::read_dir(folder)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("chunk-")
            && (name.ends_with(".part") || name.ends_with(".jsonl") || name.ends_with(".gz"))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

fn read_index(folder: &Path) -> std::io::Result<Vec<Indexed>> {
    match std::fs::read(folder.join("chunks.jsonl")) {
        Ok(bytes) => Ok(bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            // A line cut short by a crash is redone from its chunk.
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

fn append_index(folder: &Path, indexed: &Indexed) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(indexed).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(folder.join("chunks.jsonl"))?;
    file.write_all(&line)?;
    file.sync_all()
}

#[cfg(test)]
mod tests;
