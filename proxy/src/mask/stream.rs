//! Masking what the server sends a session: which result each DataRow
//! belongs to, and the errors, notices, notifications, function results and
//! COPY data around them.
//!
//! A DataRow does not say which result it belongs to. For a simple Query the
//! RowDescription just before it does. In the extended protocol an Execute's
//! rows come with no description unless the client asked for one with
//! Describe, so before each Execute the client did not just describe, the
//! proxy sends its own Describe of the portal and keeps the answer (its field
//! formats are those of the Bind). Answers are matched to requests by order:
//! PostgreSQL answers every message in order, and after an error skips to the
//! Sync, so an error drops what its segment still owed.
//!
//! A value that cannot be masked (too large to scan, unreadable for its
//! type) follows the masker's failure mode: `bestEffort` replaces it and
//! goes on; `strict` refuses the result. A refused result, and a malformed
//! row in either mode, becomes an ErrorResponse in place of the row, and the
//! rest of that segment's answers are withheld up to its ReadyForQuery,
//! since a client that got an error expects nothing else. The statement has
//! run on the server by then, and the error says so.
//!
//! Without a masker the session only keeps count of segments and of the
//! COPY statements it prepared, and forwards every frame as it came.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use bytes::{BufMut, Bytes, BytesMut};

use super::{
    Found,
    rows::{MaskError, MaskStats, Masked, Masker, Plan, UNSCANNED},
};
use crate::{
    api::policy::FailureMode,
    metrics::Metrics,
    pg::{
        Frame, ProtocolError,
        messages::{
            Bind, Close, CopyOutResponse, Describe, ErrorFields, ErrorResponse, Execute, Message,
            NoticeResponse, NotificationResponse, RowDescription, Severity, Target,
        },
        tag::{backend as be, frontend as fe},
    },
    policy::{Classification, CopyFormat},
};

/// Prepared COPY statements (and their portals) a session keeps track of;
/// beyond this the oldest is forgotten, and its output is refused rather
/// than sent unmasked.
const MAX_COPY_STATEMENTS: usize = 256;

/// Error fields that hold no text from the database's data: severity,
/// SQLSTATE, positions and the server's source location.
const PLAIN_FIELDS: &[u8] = b"SVCPpFLR";

/// Bytes of the masks put into COPY output: none may be a delimiter,
/// quote or escape byte, or the output would be misread.
const MASK_BYTES: &[u8] = b"[]:-abcdefghijklmnopqrstuvwxyz0123456789";

/// What a client message makes the server answer that masking must read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expecting {
    /// The client's Describe of a statement: ParameterDescription, then
    /// RowDescription or NoData, forwarded.
    StatementDescription,
    /// The client's Describe of a portal, forwarded; `plans` when an
    /// Execute of that portal follows it, so its rows are planned by it.
    PortalDescription { plans: bool },
    /// The proxy's own Describe of a portal before an Execute: read, not
    /// forwarded.
    Injected,
    /// The CopyOutResponse of an Execute of a COPY TO STDOUT.
    CopyOut(CopyFormat),
}

#[derive(Debug, Clone, Copy)]
struct Expect {
    /// The segment whose answers carry it.
    segment: u64,
    what: Expecting,
}

/// What to do with a frame from the server.
#[derive(Debug, Default)]
pub struct Reply {
    /// What the client gets, if anything.
    pub to_client: Option<Frame>,
    /// What the server gets (a CopyFail for a COPY FROM STDIN in a withheld
    /// segment), if anything.
    pub to_server: Option<Frame>,
}

impl Reply {
    fn forward(frame: Frame) -> Reply {
        Reply {
            to_client: Some(frame),
            to_server: None,
        }
    }

    fn withhold() -> Reply {
        Reply::default()
    }
}

/// One session's masking state.
#[derive(Debug, Default)]
pub struct ResultMasking {
    masker: Option<Arc<Masker>>,
    expect: VecDeque<Expect>,
    /// Segments the client ended (Query, FunctionCall, Sync): the number of
    /// the one it is sending.
    sent: u64,
    /// ReadyForQuerys received: the number of the segment being answered.
    answered: u64,
    /// Prepared statements that are COPY TO STDOUT, by name.
    copy_statements: HashMap<String, CopyFormat>,
    /// Portals bound to those.
    copy_portals: HashMap<String, CopyFormat>,
    /// The portal the client's last message described.
    described_portal: Option<String>,
    /// The plan of the result whose rows arrive now.
    plan: Option<Plan>,
    /// The format of the COPY TO STDOUT whose data arrives now.
    copy: Option<CopyFormat>,
    /// The rest of the segment being answered is withheld.
    withholding: bool,
    stats: MaskStats,
}

impl ResultMasking {
    /// State for a new session.
    pub fn new() -> ResultMasking {
        ResultMasking::default()
    }

    /// Whether masking is on.
    pub fn is_active(&self) -> bool {
        self.masker.is_some()
    }

    /// Puts a masker in force (or none). Only called while the server owes
    /// the session nothing, so no answer is read under another masker than
    /// the one its request was sent under.
    pub fn set_masker(&mut self, masker: Option<Arc<Masker>>) {
        let same = match (&self.masker, &masker) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.masker = masker;
            self.expect.clear();
        }
    }

    /// Notes a client frame about to be forwarded (for a refused statement,
    /// the marker that replaced it). `classification` is the policy's
    /// reading of an allowed Query or Parse. Returns a frame to send the
    /// server before it: the proxy's Describe before an Execute.
    pub fn on_client(
        &mut self,
        frame: &Frame,
        classification: Option<&Classification>,
    ) -> Result<Option<Frame>, ProtocolError> {
        let described = self.described_portal.take();
        let mut before = None;
        match frame.tag() {
            fe::QUERY => {
                if self.masker.is_some()
                    && let Some(classification) = classification
                {
                    for format in classification.statements.iter().filter_map(|s| s.copy_out) {
                        self.push(Expecting::CopyOut(format));
                    }
                }
                self.sent += 1;
            }
            fe::FUNCTION_CALL | fe::SYNC => self.sent += 1,
            fe::PARSE => {
                let copy = classification.and_then(|c| match c.statements.as_slice() {
                    [statement] => statement.copy_out,
                    _ => None,
                });
                if copy.is_some() || !self.copy_statements.is_empty() {
                    let name = statement_name(frame)?;
                    match copy {
                        Some(format) => remember(&mut self.copy_statements, name, format),
                        None => {
                            self.copy_statements.remove(&name);
                        }
                    }
                }
            }
            fe::BIND if !self.copy_statements.is_empty() || !self.copy_portals.is_empty() => {
                let bind = Bind::decode(frame)?;
                match self.copy_statements.get(&bind.statement).copied() {
                    Some(format) => remember(&mut self.copy_portals, bind.portal, format),
                    None => {
                        self.copy_portals.remove(&bind.portal);
                    }
                }
            }
            fe::CLOSE if !self.copy_statements.is_empty() || !self.copy_portals.is_empty() => {
                let close = Close::decode(frame)?;
                match close.target {
                    Target::Statement => self.copy_statements.remove(&close.name),
                    Target::Portal => self.copy_portals.remove(&close.name),
                };
            }
            fe::DESCRIBE if self.masker.is_some() => {
                let describe = Describe::decode(frame)?;
                match describe.target {
                    Target::Statement => self.push(Expecting::StatementDescription),
                    Target::Portal => {
                        self.push(Expecting::PortalDescription { plans: false });
                        self.described_portal = Some(describe.name);
                    }
                }
            }
            fe::EXECUTE if self.masker.is_some() => {
                let execute = Execute::decode(frame)?;
                let segment = self.sent;
                match self.expect.back_mut() {
                    Some(Expect {
                        segment: s,
                        what: Expecting::PortalDescription { plans },
                    }) if *s == segment && described.as_deref() == Some(execute.portal.as_str()) => {
                        *plans = true;
                    }
                    _ => {
                        self.push(Expecting::Injected);
                        before = Some(
                            Describe {
                                target: Target::Portal,
                                name: execute.portal.clone(),
                            }
                            .to_frame()?,
                        );
                    }
                }
                if let Some(format) = self.copy_portals.get(&execute.portal).copied() {
                    self.push(Expecting::CopyOut(format));
                }
            }
            _ => {}
        }
        Ok(before)
    }

    fn push(&mut self, what: Expecting) {
        self.expect.push_back(Expect {
            segment: self.sent,
            what,
        });
    }

    /// The first expectation of the segment being answered, if it is `what`.
    fn take_expected(&mut self, is: impl Fn(Expecting) -> bool) -> Option<Expecting> {
        let front = self.expect.front()?;
        if front.segment == self.answered && is(front.what) {
            return self.expect.pop_front().map(|e| e.what);
        }
        None
    }

    /// Drops what the segment being answered still owed: the server skips
    /// to its Sync after an error.
    fn drop_segment(&mut self) {
        while self.expect.front().is_some_and(|e| e.segment <= self.answered) {
            self.expect.pop_front();
        }
    }

    /// What to do with a frame from the server.
    pub fn on_server(&mut self, frame: Frame, metrics: &Metrics) -> Result<Reply, ProtocolError> {
        let tag = frame.tag();
        if tag == be::READY_FOR_QUERY {
            self.drop_segment();
            self.answered += 1;
            self.plan = None;
            self.copy = None;
            self.withholding = false;
            self.flush_stats(metrics);
            return Ok(Reply::forward(frame));
        }
        let Some(masker) = self.masker.clone() else {
            return Ok(Reply::forward(frame));
        };
        if self.withholding {
            return self.while_withholding(&masker, frame);
        }
        match tag {
            be::DATA_ROW => {
                let Some(plan) = &self.plan else {
                    return self.refuse(
                        "08P01",
                        "Gatehouse withheld a result row it could not place in a result".to_owned(),
                    );
                };
                match masker.mask_row(plan, &frame, &mut self.stats) {
                    Ok(Masked::Unchanged) => Ok(Reply::forward(frame)),
                    Ok(Masked::Rewritten(masked)) => Ok(Reply::forward(masked)),
                    Err(e) => {
                        let code = match e {
                            MaskError::TooLarge { .. } => "54000",
                            MaskError::Unreadable { .. } => "22000",
                            MaskError::Shape { .. } | MaskError::Protocol(_) => "08P01",
                        };
                        self.refuse(code, format!("Gatehouse withheld this result: {e}"))
                    }
                }
            }
            be::ROW_DESCRIPTION => {
                let expected = self.take_expected(|w| {
                    matches!(
                        w,
                        Expecting::StatementDescription
                            | Expecting::PortalDescription { .. }
                            | Expecting::Injected
                    )
                });
                let plans = match expected {
                    // A simple Query's result.
                    None => true,
                    Some(Expecting::PortalDescription { plans }) => plans,
                    Some(Expecting::Injected) => true,
                    Some(_) => false,
                };
                if plans {
                    let description = RowDescription::decode(&frame)?;
                    let formats: Vec<_> = description.fields.iter().map(|f| f.format).collect();
                    self.plan = Some(masker.plan(&description.fields, &formats));
                }
                Ok(match expected {
                    Some(Expecting::Injected) => Reply::withhold(),
                    _ => Reply::forward(frame),
                })
            }
            be::NO_DATA => {
                let expected = self.take_expected(|w| {
                    matches!(
                        w,
                        Expecting::StatementDescription
                            | Expecting::PortalDescription { .. }
                            | Expecting::Injected
                    )
                });
                self.plan = None;
                Ok(match expected {
                    Some(Expecting::Injected) => Reply::withhold(),
                    _ => Reply::forward(frame),
                })
            }
            be::COMMAND_COMPLETE | be::PORTAL_SUSPENDED | be::EMPTY_QUERY_RESPONSE => {
                self.plan = None;
                self.copy = None;
                Ok(Reply::forward(frame))
            }
            be::ERROR_RESPONSE => {
                self.drop_segment();
                self.plan = None;
                self.copy = None;
                let mut error = ErrorResponse::decode(&frame)?;
                Ok(Reply::forward(
                    match self.mask_fields(&masker, &mut error.fields) {
                        true => error.to_frame()?,
                        false => frame,
                    },
                ))
            }
            be::NOTICE_RESPONSE => self.mask_notice(&masker, frame),
            be::NOTIFICATION_RESPONSE => self.mask_notification(&masker, frame),
            be::FUNCTION_CALL_RESPONSE => self.mask_function_result(&masker, frame),
            be::COPY_OUT_RESPONSE => {
                let response = CopyOutResponse::decode(&frame)?;
                let expected = self
                    .take_expected(|w| matches!(w, Expecting::CopyOut(_)))
                    .map(|w| match w {
                        Expecting::CopyOut(format) => format,
                        _ => CopyFormat::Unknown,
                    })
                    .unwrap_or(CopyFormat::Unknown);
                match copy_refusal(&masker, expected, response.column_formats.len()) {
                    Some(why) => self.refuse("0A000", why),
                    None => {
                        self.copy = Some(expected);
                        Ok(Reply::forward(frame))
                    }
                }
            }
            be::COPY_DATA => match self.copy {
                Some(format) => self.mask_copy_data(&masker, format, frame),
                None => Ok(Reply::forward(frame)),
            },
            be::COPY_DONE => {
                self.copy = None;
                Ok(Reply::forward(frame))
            }
            _ => Ok(Reply::forward(frame)),
        }
    }

    /// A frame of a segment whose result was refused.
    fn while_withholding(&mut self, masker: &Masker, frame: Frame) -> Result<Reply, ProtocolError> {
        match frame.tag() {
            // Session state the client must keep in step with.
            be::PARAMETER_STATUS => Ok(Reply::forward(frame)),
            be::NOTICE_RESPONSE => self.mask_notice(masker, frame),
            be::NOTIFICATION_RESPONSE => self.mask_notification(masker, frame),
            // The client, told of an error, sends no COPY data: end it.
            be::COPY_IN_RESPONSE => Ok(Reply {
                to_client: None,
                to_server: Some(
                    crate::pg::messages::CopyFail {
                        message: "Gatehouse withheld an earlier result of this query".to_owned(),
                    }
                    .to_frame()?,
                ),
            }),
            be::ERROR_RESPONSE => {
                let mut error = ErrorResponse::decode(&frame)?;
                let fatal = matches!(error.fields.severity().as_deref(), Some("FATAL" | "PANIC"));
                if fatal {
                    // The session ends: the client should know why.
                    self.mask_fields(masker, &mut error.fields);
                    return Ok(Reply::forward(error.to_frame()?));
                }
                Ok(Reply::withhold())
            }
            _ => Ok(Reply::withhold()),
        }
    }

    /// Refuses the result being sent: the client gets this error, and
    /// nothing more of the segment but its ReadyForQuery.
    fn refuse(&mut self, code: &str, message: String) -> Result<Reply, ProtocolError> {
        self.stats.refused += 1;
        self.withholding = true;
        self.plan = None;
        self.copy = None;
        tracing::warn!(sqlstate = code, reason = %message, "refused a result that could not be masked");
        let error = ErrorResponse::new(Severity::Error, code, message)
            .with_detail(
                "The statement ran on the server; Gatehouse withheld its result and every later \
                 result up to the next synchronization point, so that nothing unmasked reaches the client.",
            )
            .with_hint(
                "Select fewer or smaller columns, or ask the Policy's owner about masking.failureMode \
                 and masking.scanLimitBytes.",
            );
        Ok(Reply::forward(error.to_frame()?))
    }

    /// Masks the text fields of an error or notice in place; whether any
    /// changed.
    fn mask_fields(&mut self, masker: &Masker, fields: &mut ErrorFields) -> bool {
        let mut changed = false;
        let rules = masker.has_column_rules();
        for (code, value) in fields.iter_mut() {
            if PLAIN_FIELDS.contains(&code) {
                continue;
            }
            if rules
                && code == crate::pg::messages::field::DETAIL
                && let Some(masked) = mask_key_detail(masker, value)
            {
                *value = masked;
                changed = true;
            }
            if let Some(masked) = masker.mask_text(value, &mut self.stats) {
                *value = Bytes::from(masked);
                changed = true;
            }
        }
        changed
    }

    fn mask_notice(&mut self, masker: &Masker, frame: Frame) -> Result<Reply, ProtocolError> {
        let mut notice = NoticeResponse::decode(&frame)?;
        Ok(Reply::forward(
            match self.mask_fields(masker, &mut notice.fields) {
                true => notice.to_frame()?,
                false => frame,
            },
        ))
    }

    fn mask_notification(&mut self, masker: &Masker, frame: Frame) -> Result<Reply, ProtocolError> {
        let mut notification = NotificationResponse::decode(&frame)?;
        match masker.mask_text(notification.payload.as_bytes(), &mut self.stats) {
            Some(masked) => {
                notification.payload = String::from_utf8_lossy(&masked).into_owned();
                Ok(Reply::forward(notification.to_frame()?))
            }
            None => Ok(Reply::forward(frame)),
        }
    }

    /// A FunctionCallResponse: an Int32 length (-1 for NULL) and the value.
    fn mask_function_result(&mut self, masker: &Masker, frame: Frame) -> Result<Reply, ProtocolError> {
        let payload = frame.payload();
        let value = match payload.split_first_chunk::<4>() {
            Some((len, value)) if i32::from_be_bytes(*len) >= 0 => value,
            _ => return Ok(Reply::forward(frame)),
        };
        match masker.mask_text(value, &mut self.stats) {
            Some(masked) => {
                let mut out = BytesMut::with_capacity(masked.len() + 4);
                out.put_i32(i32::try_from(masked.len()).unwrap_or(i32::MAX));
                out.put_slice(&masked);
                Ok(Reply::forward(Frame::new(be::FUNCTION_CALL_RESPONSE, &out)?))
            }
            None => Ok(Reply::forward(frame)),
        }
    }

    fn mask_copy_data(
        &mut self,
        masker: &Masker,
        format: CopyFormat,
        frame: Frame,
    ) -> Result<Reply, ProtocolError> {
        match mask_copy_row(masker, format, frame.payload(), &mut self.stats) {
            Ok(None) => Ok(Reply::forward(frame)),
            Ok(Some(row)) => Ok(Reply::forward(Frame::new(be::COPY_DATA, &row)?)),
            Err(e) => {
                let code = match e {
                    MaskError::TooLarge { .. } => "54000",
                    _ => "22000",
                };
                self.refuse(code, format!("Gatehouse withheld this COPY output: {e}"))
            }
        }
    }

    /// Adds what was counted since the last call to the metrics.
    fn flush_stats(&mut self, metrics: &Metrics) {
        if !self.stats.is_empty() {
            metrics.masking.add(&std::mem::take(&mut self.stats));
        }
    }
}

/// Why a COPY TO STDOUT's output cannot be masked, if it cannot.
fn copy_refusal(masker: &Masker, format: CopyFormat, columns: usize) -> Option<String> {
    if masker.has_column_rules() {
        return Some(format!(
            "Gatehouse cannot apply column masking to COPY output ({columns} columns, named nowhere in it); \
             use SELECT, whose result names its columns"
        ));
    }
    match format {
        CopyFormat::Text { delimiter } if !MASK_BYTES.contains(&delimiter) => None,
        CopyFormat::Csv {
            delimiter,
            quote,
            escape,
        } if ![delimiter, quote, escape].iter().any(|b| MASK_BYTES.contains(b)) => None,
        CopyFormat::Binary => Some(
            "Gatehouse cannot mask COPY output in the binary format; use the text or CSV format".to_owned(),
        ),
        _ => Some(
            "Gatehouse cannot mask COPY output with these options; use the text or CSV format with \
             their default delimiter and quote"
                .to_owned(),
        ),
    }
}

/// Remembers a prepared COPY statement or portal, forgetting an arbitrary
/// one when full (its output is then refused, not sent unmasked).
fn remember(map: &mut HashMap<String, CopyFormat>, name: String, format: CopyFormat) {
    if map.len() >= MAX_COPY_STATEMENTS
        && !map.contains_key(&name)
        && let Some(old) = map.keys().next().cloned()
    {
        map.remove(&old);
    }
    map.insert(name, format);
}

/// The statement name of a Parse, read without copying its text.
fn statement_name(frame: &Frame) -> Result<String, ProtocolError> {
    let payload = frame.payload();
    let end = payload
        .iter()
        .position(|&b| b == 0)
        .ok_or(ProtocolError::Truncated { message: "Parse" })?;
    String::from_utf8(payload[..end].to_vec()).map_err(|_| ProtocolError::InvalidUtf8 { message: "Parse" })
}

/// A unique-violation's `Key (col, ...)=(value, ...)`: the values are
/// masked whole when a column rule matches one of the columns, since the
/// detail shows the column's value as it is stored.
///
/// A check or not-null violation's `Failing row contains (...)` lists the
/// whole row without naming columns, so with any column rule its values
/// are masked whole.
fn mask_key_detail(masker: &Masker, detail: &[u8]) -> Option<Bytes> {
    const FAILING_ROW: &[u8] = b"Failing row contains (";
    if detail.starts_with(FAILING_ROW) {
        let mut out = BytesMut::from(FAILING_ROW);
        out.put_slice(b"[masked]).");
        return Some(out.freeze());
    }
    let rest = detail.strip_prefix(b"Key (")?;
    let split = rest.windows(3).position(|w| w == b")=(")?;
    let columns = String::from_utf8_lossy(&rest[..split]);
    let masked = columns
        .split(',')
        .any(|c| masker.column_is_masked(c.trim().trim_matches('"')));
    if !masked {
        return None;
    }
    let values = &rest[split + 3..];
    let close = values.iter().rposition(|&b| b == b')')?;
    let mut out = BytesMut::with_capacity(detail.len());
    out.put_slice(&detail[..5 + split + 3]);
    out.put_slice(b"[masked]");
    out.put_slice(&values[close..]);
    Some(out.freeze())
}

/// One row of COPY text or CSV output with the secrets in its fields
/// masked; `None` when it holds none.
///
/// Each field is scanned on its own, so a mask never swallows a delimiter,
/// and a secret's range is widened to whole escape sequences, so a mask
/// never leaves half of one to change how the bytes after it read.
pub fn mask_copy_row(
    masker: &Masker,
    format: CopyFormat,
    row: &[u8],
    stats: &mut MaskStats,
) -> Result<Option<Vec<u8>>, MaskError> {
    let fields = match format {
        CopyFormat::Text { delimiter } => text_fields(row, delimiter),
        CopyFormat::Csv {
            delimiter,
            quote,
            escape,
        } => csv_fields(row, delimiter, quote, escape),
        CopyFormat::Binary | CopyFormat::Unknown => {
            return Err(MaskError::Unreadable {
                column: 1,
                why: "COPY output in this format cannot be read",
            });
        }
    };
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut found = Vec::new();
    for (i, field) in fields.iter().enumerate() {
        let value = &row[field.range.clone()];
        if value.len() > masker.scan_limit {
            let error = MaskError::TooLarge {
                column: i + 1,
                len: value.len(),
                limit: masker.scan_limit,
            };
            if masker.failure_mode == FailureMode::Strict {
                return Err(error);
            }
            stats.unscannable_replaced += 1;
            let out = out.get_or_insert_with(|| Vec::with_capacity(row.len()));
            out.extend_from_slice(&row[copied..field.range.start]);
            out.extend_from_slice(UNSCANNED.as_bytes());
            copied = field.range.end;
            continue;
        }
        stats.cells_scanned += 1;
        stats.bytes_scanned += value.len() as u64;
        // bytea comes out as `\x` and hex (its backslash doubled in the
        // text format): the secret is in the decoded bytes.
        let bytea_prefix: &[u8] = match format {
            CopyFormat::Text { .. } => b"\\\\x",
            _ => b"\\x",
        };
        if let Some(digits) = value.strip_prefix(bytea_prefix)
            && let Ok(bytes) = hex::decode(digits)
        {
            masker.scanner().find(&bytes, &mut found);
            if !found.is_empty() {
                stats.found(&found);
                let out = out.get_or_insert_with(|| Vec::with_capacity(row.len()));
                out.extend_from_slice(&row[copied..field.range.start]);
                out.extend_from_slice(bytea_prefix);
                out.extend_from_slice(hex::encode(super::replace(&bytes, &found)).as_bytes());
                copied = field.range.end;
            }
            continue;
        }
        if matches!(format, CopyFormat::Csv { .. }) && !field.escapes.is_empty() {
            // Scan the field as CSV reads it (`""` is `"`), so a quoted
            // value inside it reads as quoted; each find maps back to whole
            // escape pairs.
            let view = super::views::View::pairs_collapsed(value, &field.escapes);
            masker.scanner().find(&view.text, &mut found);
            for f in &mut found {
                f.range = view.original(f.range.clone());
            }
        } else {
            masker.scanner().find(value, &mut found);
        }
        if found.is_empty() {
            continue;
        }
        stats.found(&found);
        let out = out.get_or_insert_with(|| Vec::with_capacity(row.len()));
        for f in widen(&found, &field.escapes, value.len()) {
            let start = field.range.start + f.range.start;
            out.extend_from_slice(&row[copied..start]);
            out.extend_from_slice(super::replacement(f.detector).as_bytes());
            copied = field.range.start + f.range.end;
        }
    }
    Ok(out.map(|mut out| {
        out.extend_from_slice(&row[copied..]);
        out
    }))
}

/// A field of a COPY row: where its content is, and where escape
/// sequences start in it (relative to the content).
#[derive(Debug, PartialEq, Eq)]
struct CopyField {
    range: std::ops::Range<usize>,
    escapes: Vec<usize>,
}

/// The fields of a text-format row: split at unescaped delimiters, the
/// final newline left out.
fn text_fields(row: &[u8], delimiter: u8) -> Vec<CopyField> {
    let end = row.strip_suffix(b"\n").map_or(row.len(), <[u8]>::len);
    let mut fields = Vec::new();
    let (mut start, mut escapes, mut i) = (0, Vec::new(), 0);
    while i < end {
        match row[i] {
            b'\\' => {
                escapes.push(i - start);
                i += 2;
                continue;
            }
            b if b == delimiter => {
                fields.push(CopyField {
                    range: start..i,
                    escapes: std::mem::take(&mut escapes),
                });
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    fields.push(CopyField {
        range: start..end.max(start),
        escapes,
    });
    fields
}

/// The fields of a CSV row: a quoted field's content is inside its quotes.
fn csv_fields(row: &[u8], delimiter: u8, quote: u8, escape: u8) -> Vec<CopyField> {
    let end = row
        .strip_suffix(b"\r\n")
        .or_else(|| row.strip_suffix(b"\n"))
        .map_or(row.len(), <[u8]>::len);
    let mut fields = Vec::new();
    let mut i = 0;
    loop {
        if i < end && row[i] == quote {
            let start = i + 1;
            let mut escapes = Vec::new();
            let mut j = start;
            while j < end {
                if row[j] == escape && j + 1 < end && (row[j + 1] == quote || row[j + 1] == escape) {
                    escapes.push(j - start);
                    j += 2;
                    continue;
                }
                if row[j] == quote {
                    break;
                }
                j += 1;
            }
            fields.push(CopyField {
                range: start..j.min(end),
                escapes,
            });
            // Past the closing quote, to the delimiter.
            i = j + 1;
            while i < end && row[i] != delimiter {
                i += 1;
            }
        } else {
            let start = i;
            while i < end && row[i] != delimiter {
                i += 1;
            }
            fields.push(CopyField {
                range: start..i,
                escapes: Vec::new(),
            });
        }
        if i >= end {
            break;
        }
        i += 1;
    }
    fields
}

/// The found ranges, widened so none starts or ends inside an escape
/// sequence (two bytes long in both formats), then merged.
fn widen(found: &[Found], escapes: &[usize], len: usize) -> Vec<Found> {
    let mut out: Vec<Found> = Vec::with_capacity(found.len());
    for f in found {
        let mut range = f.range.clone();
        if range.start > 0 && escapes.binary_search(&(range.start - 1)).is_ok() {
            range.start -= 1;
        }
        if range.end > 0 && escapes.binary_search(&(range.end - 1)).is_ok() {
            range.end = (range.end + 1).min(len);
        }
        match out.last_mut() {
            Some(last) if range.start <= last.range.end => last.range.end = last.range.end.max(range.end),
            _ => out.push(Found {
                range,
                detector: f.detector,
                id: f.id,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests;
