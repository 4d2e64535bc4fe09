//! The local spool: every event is written to disk first, then uploaded.
//!
//! A session has a folder in the spool (its store folder with `/` as `~`):
//!
//! - `session.json`: the store folder, connection and user, written at start;
//! - `chunk-NNNNNN.part`: the chunk being written, one JSON line per event,
//!   handed to the operating system at each round trip (so a killed proxy
//!   loses nothing it had answered) and fsynced when the chunk is cut;
//! - `chunk-NNNNNN.jsonl`: a cut chunk, for the uploader to compress;
//! - `end.json`: how the session ended, written last.
//!
//! The uploader ([`crate::uploader`]) compresses cut chunks, uploads them as
//! they come, and once `end.json` is there writes the signed manifest. A
//! proxy that starts finds what a killed one left and closes it the same
//! way, with `end: recovered`.

use std::{
    fs::File,
    io::{BufWriter, Write as _},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use serde::{Deserialize, Serialize};

use crate::format::{Body, ConnectionRef, Event, genesis, line_hash, timestamp};

/// Settings of the spool.
#[derive(Debug, Clone)]
pub struct SpoolSettings {
    /// The folder.
    pub dir: PathBuf,
    /// New sessions wait (`required`) or events are dropped (`bestEffort`)
    /// while the spool holds this much.
    pub max_bytes: u64,
    /// A chunk is cut when it holds this much (uncompressed)...
    pub chunk_bytes: u64,
    /// ...or is this old, so long sessions upload as they go.
    pub chunk_interval: Duration,
}

/// What a session's folder says about it, written at its start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The session id.
    pub session: String,
    /// Its folder in the store.
    pub folder: String,
    /// The Connection.
    pub connection: ConnectionRef,
    /// The caller.
    pub user: String,
}

/// How a session ended, written when it did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionEnd {
    /// The disconnect reason, or `recovered`.
    pub end: String,
    /// First event's time.
    pub started: String,
    /// Last event's time.
    pub ended: String,
    /// Number of events.
    pub events: u64,
    /// Hash of the last event's line.
    pub last_hash: String,
}

/// The spool shared by a proxy's sessions.
#[derive(Debug)]
pub struct Spool {
    settings: SpoolSettings,
    /// Bytes in the spool now (approximately: what was written, less what
    /// was uploaded and removed).
    used: AtomicU64,
    /// Woken when a chunk is cut or a session ends.
    pub(crate) wake: tokio::sync::Notify,
}

impl Spool {
    /// Opens (creating) the spool folder and counts what it holds.
    pub fn open(settings: SpoolSettings) -> std::io::Result<Arc<Spool>> {
        std::fs::create_dir_all(&settings.dir)?;
        let used = folder_size(&settings.dir)?;
        Ok(Arc::new(Spool {
            settings,
            used: AtomicU64::new(used),
            wake: tokio::sync::Notify::new(),
        }))
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.settings.dir
    }

    /// Bytes in the spool.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Whether the spool holds its maximum.
    pub fn is_full(&self) -> bool {
        self.used() >= self.settings.max_bytes
    }

    pub(crate) fn released(&self, bytes: u64) {
        let _ = self.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
            Some(u.saturating_sub(bytes))
        });
    }

    pub(crate) fn added(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Starts recording a session: its folder, `session.json`, and the
    /// `connect` event.
    pub fn start(self: &Arc<Self>, info: SessionInfo, connect: Body) -> std::io::Result<SessionWriter> {
        let dir = self.settings.dir.join(info.folder.replace('/', "~"));
        let json = serde_json::to_vec(&info).map_err(std::io::Error::other)?;
        blocking(|| {
            std::fs::create_dir_all(&dir)?;
            write_synced(&dir.join("session.json"), &json)
        })?;
        self.added(json.len() as u64);
        let prev = genesis(&info.session);
        let mut writer = SessionWriter {
            spool: self.clone(),
            dir,
            seq: 0,
            prev,
            chunk: 0,
            part: None,
            part_bytes: 0,
            part_since: Instant::now(),
            started: None,
            last_at: String::new(),
            dropped: 0,
            dropped_total: 0,
            best_effort: false,
        };
        writer.record(connect);
        Ok(writer)
    }
}

/// One session's events going to the spool.
#[derive(Debug)]
pub struct SessionWriter {
    spool: Arc<Spool>,
    dir: PathBuf,
    seq: u64,
    prev: String,
    /// The number of the chunk being written (from 1).
    chunk: u32,
    part: Option<BufWriter<File>>,
    part_bytes: u64,
    part_since: Instant,
    started: Option<String>,
    last_at: String,
    /// Events not written since the last `gap` event.
    dropped: u64,
    /// Events not written in the whole session.
    dropped_total: u64,
    best_effort: bool,
}

impl SessionWriter {
    /// In `bestEffort`, events are dropped (and counted in a `gap` event)
    /// while the spool is full, instead of being written regardless.
    pub fn set_best_effort(&mut self, best_effort: bool) {
        self.best_effort = best_effort;
    }

    /// Events dropped so far and not yet reported in a `gap` event.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Events dropped in the whole session.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    /// Records an event. An I/O error drops it (counted like a full spool);
    /// the session goes on.
    pub fn record(&mut self, body: Body) {
        if self.best_effort && self.spool.is_full() {
            self.dropped += 1;
            self.dropped_total += 1;
            return;
        }
        if self.dropped > 0 {
            let dropped = std::mem::take(&mut self.dropped);
            if self.write(Body::Gap { dropped }).is_err() {
                self.dropped = dropped + 1;
                self.dropped_total += 1;
                return;
            }
        }
        if let Err(e) = self.write(body) {
            tracing::warn!(error = %e, folder = %self.dir.display(), "could not write a recording event");
            self.dropped += 1;
            self.dropped_total += 1;
        }
    }

    fn write(&mut self, body: Body) -> std::io::Result<()> {
        let at = timestamp(SystemTime::now());
        let event = Event {
            seq: self.seq,
            at: at.clone(),
            prev: self.prev.clone(),
            body,
        };
        let mut line = serde_json::to_vec(&event).map_err(std::io::Error::other)?;
        if self.part.is_none() {
            self.chunk += 1;
            let file = File::create(self.dir.join(part_name(self.chunk)))?;
            self.part = Some(BufWriter::with_capacity(64 << 10, file));
            self.part_bytes = 0;
            self.part_since = Instant::now();
        }
        let hash = line_hash(&line);
        line.push(b'\n');
        if let Some(part) = &mut self.part {
            part.write_all(&line)?;
        }
        self.part_bytes += line.len() as u64;
        self.spool.added(line.len() as u64);
        self.prev = hash;
        self.seq += 1;
        self.started.get_or_insert_with(|| at.clone());
        self.last_at = at;
        if self.part_bytes >= self.spool.settings.chunk_bytes
            || self.part_since.elapsed() >= self.spool.settings.chunk_interval
        {
            self.cut()?;
        }
        Ok(())
    }

    /// Hands what was recorded to the operating system: called at each
    /// round trip, so a killed proxy loses nothing the client had seen.
    pub fn flush(&mut self) {
        if let Some(part) = &mut self.part
            && let Err(e) = part.flush()
        {
            tracing::warn!(error = %e, "could not write a recording chunk");
        }
    }

    /// Cuts the chunk being written: flushed, fsynced, renamed for the uploader.
    fn cut(&mut self) -> std::io::Result<()> {
        let Some(part) = self.part.take() else {
            return Ok(());
        };
        let file = part.into_inner().map_err(|e| e.into_error())?;
        blocking(|| {
            file.sync_all()?;
            drop(file);
            std::fs::rename(
                self.dir.join(part_name(self.chunk)),
                self.dir.join(cut_name(self.chunk)),
            )
        })?;
        self.spool.wake.notify_one();
        Ok(())
    }

    /// Records the disconnect, cuts the last chunk and writes `end.json`;
    /// returns the events dropped in the session.
    pub fn finish(mut self, reason: &str) -> u64 {
        self.record(Body::Disconnect {
            reason: reason.to_owned(),
        });
        let end = SessionEnd {
            end: reason.to_owned(),
            started: self.started.clone().unwrap_or_default(),
            ended: self.last_at.clone(),
            events: self.seq,
            last_hash: self.prev.clone(),
        };
        let result = self.cut().and_then(|()| {
            let json = serde_json::to_vec(&end).map_err(std::io::Error::other)?;
            blocking(|| write_synced(&self.dir.join("end.json"), &json))
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, folder = %self.dir.display(), "could not close a recording");
        }
        self.spool.wake.notify_one();
        self.dropped_total
    }
}

/// Runs `work` that waits on the disk (fsync) from a session's task: on a
/// multi-threaded runtime the worker hands its other tasks on first, so
/// other sessions never wait for this one's disk; elsewhere it just runs.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

pub(crate) fn part_name(n: u32) -> String {
    format!("chunk-{n:06}.part")
}

pub(crate) fn cut_name(n: u32) -> String {
    format!("chunk-{n:06}.jsonl")
}

/// Writes a small file and fsyncs it, through a temporary name.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let partial = path.with_extension("tmp");
    let mut file = File::create(&partial)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&partial, path)
}

/// The bytes of every file under `dir`.
pub(crate) fn folder_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            folder_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
