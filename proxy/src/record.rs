//! Session recording in the proxy: the process-wide [`Recorder`] (spool,
//! uploader, signing key) and each session's [`Tape`], which turns what the
//! relay forwards into events.
//!
//! Everything recorded is what the client saw: statement text masked with
//! every secret detector, results after the Policy's masking.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Instant,
};

use gatehouse_recording::{
    format::{Body, ConnectionRef, ErrorInfo, new_session_id, read_signing_key, session_folder},
    spool::{SessionInfo, SessionWriter, Spool, SpoolSettings},
    store::{S3Settings, Store},
    uploader::Uploader,
};

use crate::{
    api::connection::RecordingMode,
    config::ProxyConfig,
    identity::Identity,
    mask::Scanner,
    metrics::Metrics,
    pg::{
        Frame,
        messages::{
            Bind, CommandComplete, DataRow, ErrorResponse, Execute, Message, NoticeResponse, RowDescription,
        },
        tag::{backend as be, frontend as fe},
    },
    policy::Refusal,
};

/// The recording side of a proxy process.
#[derive(Debug)]
pub struct Recorder {
    spool: Arc<Spool>,
    mode: RecordingMode,
    connection: ConnectionRef,
    prefix: String,
    max_rows: u64,
    max_bytes: u64,
}

/// Why a session may not start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RecordingUnavailable(pub String);

impl Recorder {
    /// Opens the spool, closes what a killed proxy left in it, and starts
    /// the uploader; `None` when recording is off.
    pub fn start(config: &ProxyConfig, metrics: &Metrics) -> Result<Option<Arc<Recorder>>, String> {
        let settings = &config.recording;
        if settings.mode == RecordingMode::Off {
            return Ok(None);
        }
        let key_file = settings
            .signing_key_file
            .as_ref()
            .ok_or("recording.signingKeyFile is required unless recording.mode is off")?;
        let key = read_signing_key(key_file).map_err(|e| format!("recording.signingKeyFile: {e}"))?;
        let spool = Spool::open(SpoolSettings {
            dir: settings.spool_directory.clone(),
            max_bytes: settings.spool_max_bytes,
            chunk_bytes: settings.chunk_bytes,
            chunk_interval: settings.chunk_interval,
        })
        .map_err(|e| {
            format!(
                "recording.spoolDirectory {}: {e}",
                settings.spool_directory.display()
            )
        })?;
        let (store, prefix) = match &settings.s3 {
            Some(s3) => {
                let read = |what: &str, path: &std::path::Path| {
                    std::fs::read_to_string(path)
                        .map(|s| s.trim().to_owned())
                        .map_err(|e| format!("recording.s3.{what} {}: {e}", path.display()))
                };
                let store = Store::s3(&S3Settings {
                    endpoint: s3.endpoint.clone(),
                    region: s3.region.clone(),
                    bucket: s3.bucket.clone(),
                    path_style: s3.path_style,
                    access_key_id: read("accessKeyIdFile", &s3.access_key_id_file)?,
                    secret_access_key: read("secretAccessKeyFile", &s3.secret_access_key_file)?,
                });
                (store, s3.prefix.clone())
            }
            None => (Store::Local(settings.directory.clone()), String::new()),
        };
        let uploader = Uploader::new(spool.clone(), store, Arc::new(key), metrics.recording.clone());
        let recovered = uploader
            .recover()
            .map_err(|e| format!("recover the recording spool: {e}"))?;
        if recovered > 0 {
            tracing::info!(
                sessions = recovered,
                "recovered recordings a previous process left open"
            );
        }
        tokio::spawn(uploader.run());
        Ok(Some(Arc::new(Recorder {
            spool,
            mode: settings.mode,
            connection: ConnectionRef {
                namespace: config.connection.namespace.clone(),
                name: config.connection.name.clone(),
            },
            prefix,
            max_rows: settings.max_rows_per_statement,
            max_bytes: settings.max_bytes_per_statement,
        })))
    }

    /// Starts a session's tape, or says why the session may not run.
    pub fn begin(
        &self,
        identity: &Identity,
        client: String,
        tls: bool,
        shown: Arc<Scanner>,
    ) -> Result<Option<Tape>, RecordingUnavailable> {
        let required = self.mode == RecordingMode::Required;
        if required && self.spool.is_full() {
            return Err(RecordingUnavailable(format!(
                "Gatehouse cannot record new sessions now: its recording spool is full ({} bytes waiting for the \
                 recording store); recording is required on this Connection, so try again when the store is reachable",
                self.spool.used()
            )));
        }
        let session = new_session_id(std::time::SystemTime::now());
        let info = SessionInfo {
            session: session.clone(),
            folder: session_folder(&self.prefix, &self.connection, &session),
            connection: self.connection.clone(),
            user: identity.username.clone(),
        };
        let connect = Body::Connect {
            session: session.clone(),
            connection: self.connection.clone(),
            user: identity.username.clone(),
            groups: identity.groups.clone(),
            client,
            tls,
        };
        match self.spool.start(info, connect) {
            Ok(mut writer) => {
                writer.set_best_effort(!required);
                Ok(Some(Tape::new(
                    writer,
                    session,
                    self.max_rows,
                    self.max_bytes,
                    shown,
                )))
            }
            Err(e) if required => Err(RecordingUnavailable(format!(
                "Gatehouse cannot record this session ({e}); recording is required on this Connection"
            ))),
            Err(e) => {
                tracing::warn!(error = %e, "could not record a session; recording is bestEffort, so it runs unrecorded");
                Ok(None)
            }
        }
    }
}

/// A statement whose results are awaited.
#[derive(Debug, Clone, Copy)]
struct Awaiting {
    id: u64,
    /// A simple Query answers with several results up to its ReadyForQuery;
    /// an Execute with one.
    simple: bool,
    segment: u64,
    since: Instant,
}

/// One session's recording.
#[derive(Debug)]
pub struct Tape {
    writer: SessionWriter,
    /// What masks the statements and messages it records (the
    /// configuration's when the session began): see [`Scanner::shown`].
    shown: Arc<Scanner>,
    session: String,
    next_id: u64,
    max_rows: u64,
    max_bytes: u64,
    /// Statement ids by prepared statement name, and by portal.
    prepared: HashMap<String, u64>,
    portals: HashMap<String, u64>,
    awaiting: VecDeque<Awaiting>,
    sent: u64,
    answered: u64,
    /// The rows of the result being received.
    columns: Vec<String>,
    rows: Vec<Vec<Option<String>>>,
    row_count: u64,
    row_bytes: u64,
    truncated: bool,
}

impl Tape {
    fn new(
        writer: SessionWriter,
        session: String,
        max_rows: u64,
        max_bytes: u64,
        shown: Arc<Scanner>,
    ) -> Tape {
        Tape {
            writer,
            shown,
            session,
            next_id: 1,
            max_rows,
            max_bytes,
            prepared: HashMap::new(),
            portals: HashMap::new(),
            awaiting: VecDeque::new(),
            sent: 0,
            answered: 0,
            columns: Vec::new(),
            rows: Vec::new(),
            row_count: 0,
            row_bytes: 0,
            truncated: false,
        }
    }

    /// The session id recordings file it under.
    pub fn session(&self) -> &str {
        &self.session
    }

    /// Records a statement the client sent with the policy's verdict:
    /// a simple Query's text (`prepared: None`), or a Parse's, with the name
    /// it prepares.
    pub fn statement(&mut self, prepared: Option<&str>, sql: &str, verdict: Result<(), &Refusal>) {
        match verdict {
            Ok(()) => self.record_statement(prepared, sql, "allow", None),
            Err(refusal) => self.record_statement(prepared, sql, refusal.decision, Some(refusal)),
        }
    }

    fn record_statement(
        &mut self,
        prepared: Option<&str>,
        sql: &str,
        decision: &str,
        refusal: Option<&Refusal>,
    ) {
        let id = self.next_id;
        self.next_id += 1;
        let reason = refusal.map(|r| crate::mask::text_in(&self.shown, &r.message).into_owned());
        self.writer.record(Body::Statement {
            id,
            text: crate::mask::statement_text_in(&self.shown, sql).into_owned(),
            decision: decision.to_owned(),
            reason,
        });
        match prepared {
            None => self.awaiting.push_back(Awaiting {
                id,
                simple: true,
                segment: self.sent,
                since: Instant::now(),
            }),
            Some(name) => {
                self.prepared.insert(name.to_owned(), id);
            }
        }
    }

    /// Records a statement held for approval (decision `requireApproval`,
    /// no reason yet); [`Tape::approval`] records how its hold ends.
    pub fn held(&mut self, prepared: Option<&str>, sql: &str) {
        self.record_statement(prepared, sql, "requireApproval", None);
    }

    /// Records how the hold of a statement ended: the last simple Query
    /// recorded (`prepared: None`), or the prepared statement a Bind names.
    pub fn approval(&mut self, prepared: Option<&str>, outcome: &crate::approval::Outcome) {
        let statement = match prepared {
            None => self.next_id.saturating_sub(1),
            Some(name) => self.prepared.get(name).copied().unwrap_or(0),
        };
        use crate::approval::Outcome;
        let message = match outcome {
            Outcome::Approved { message, .. }
            | Outcome::Denied { message, .. }
            | Outcome::Untrusted { message, .. }
            | Outcome::Expired { message, .. } => Some(message.clone()),
            Outcome::Unshowable(refusal) => Some(refusal.message.clone()),
            Outcome::TimedOut { waited, .. } => Some(format!(
                "not approved within {}",
                humantime::format_duration(*waited)
            )),
            Outcome::Cancelled { .. } => Some("the client cancelled the statement".to_owned()),
            Outcome::Failed(why) => Some(why.clone()),
        };
        self.writer.record(Body::Approval {
            statement,
            request: outcome.request().map(str::to_owned),
            outcome: outcome.kind().to_owned(),
            message: message.map(|m| crate::mask::text_in(&self.shown, &m).into_owned()),
        });
    }

    /// Notes a client frame as forwarded (after [`Tape::statement`] for a
    /// Query or Parse).
    pub fn on_client(&mut self, frame: &Frame) {
        match frame.tag() {
            fe::BIND => {
                if let Ok(bind) = Bind::decode(frame) {
                    let id = self.prepared.get(&bind.statement).copied().unwrap_or(0);
                    self.portals.insert(bind.portal, id);
                }
            }
            fe::EXECUTE => {
                if let Ok(execute) = Execute::decode(frame) {
                    self.awaiting.push_back(Awaiting {
                        id: self.portals.get(&execute.portal).copied().unwrap_or(0),
                        simple: false,
                        segment: self.sent,
                        since: Instant::now(),
                    });
                }
            }
            fe::QUERY | fe::SYNC | fe::FUNCTION_CALL => self.sent += 1,
            _ => {}
        }
    }

    /// Notes a frame as the client gets it (after masking).
    pub fn on_server(&mut self, frame: &Frame) {
        match frame.tag() {
            be::ROW_DESCRIPTION => {
                if let Ok(description) = RowDescription::decode(frame) {
                    self.columns = description.fields.into_iter().map(|f| f.name).collect();
                }
            }
            be::DATA_ROW => self.row(frame),
            be::COMMAND_COMPLETE => {
                let tag = CommandComplete::decode(frame).ok().map(|c| c.tag);
                self.result(tag, None);
            }
            be::EMPTY_QUERY_RESPONSE | be::PORTAL_SUSPENDED => self.result(None, None),
            be::ERROR_RESPONSE => {
                if let Ok(error) = ErrorResponse::decode(frame) {
                    let info = ErrorInfo {
                        sqlstate: error.fields.code().unwrap_or_default().into_owned(),
                        message: error.fields.message().unwrap_or_default().into_owned(),
                    };
                    self.result(None, Some(info));
                }
            }
            be::NOTICE_RESPONSE => {
                if let Ok(notice) = NoticeResponse::decode(frame) {
                    self.writer.record(Body::Notice {
                        severity: notice.fields.severity().unwrap_or_default().into_owned(),
                        sqlstate: notice.fields.code().unwrap_or_default().into_owned(),
                        message: notice.fields.message().unwrap_or_default().into_owned(),
                    });
                }
            }
            be::READY_FOR_QUERY => {
                while self.awaiting.front().is_some_and(|a| a.segment <= self.answered) {
                    self.awaiting.pop_front();
                }
                self.answered += 1;
                self.writer.flush();
            }
            _ => {}
        }
    }

    fn row(&mut self, frame: &Frame) {
        self.row_count += 1;
        if self.truncated {
            return;
        }
        let Ok(row) = DataRow::decode(frame) else {
            return;
        };
        let size = frame.payload().len() as u64;
        if self.rows.len() as u64 >= self.max_rows || self.row_bytes + size > self.max_bytes {
            self.truncated = true;
            return;
        }
        self.row_bytes += size;
        self.rows.push(
            row.cells()
                .map(|cell| {
                    cell.map(|bytes| match std::str::from_utf8(&bytes) {
                        Ok(text) if !text.contains('\0') => text.to_owned(),
                        _ => format!("\\x{}", hex::encode(&bytes)),
                    })
                })
                .collect(),
        );
    }

    fn result(&mut self, tag: Option<String>, error: Option<ErrorInfo>) {
        let awaiting = self.awaiting.front().copied();
        let id = awaiting.map_or(0, |a| a.id);
        if self.row_count > 0 {
            self.writer.record(Body::Rows {
                statement: id,
                columns: std::mem::take(&mut self.columns),
                rows: std::mem::take(&mut self.rows),
                truncated: self.truncated,
            });
        }
        self.writer.record(Body::Result {
            statement: id,
            tag,
            rows: self.row_count,
            error,
            duration_us: awaiting.map_or(0, |a| {
                u64::try_from(a.since.elapsed().as_micros()).unwrap_or(u64::MAX)
            }),
        });
        self.columns.clear();
        self.rows.clear();
        self.row_count = 0;
        self.row_bytes = 0;
        self.truncated = false;
        if awaiting.is_some_and(|a| !a.simple) {
            self.awaiting.pop_front();
        }
    }

    /// Ends the recording; returns the events it dropped.
    pub fn finish(self, reason: &str) -> u64 {
        self.writer.finish(reason)
    }
}
