//! The relay: every client frame is forwarded as the bytes it arrived as,
//! except statements the policy refuses or holds; what the server sends back
//! goes through masking ([`crate::mask::stream`], which may add a Describe
//! before an Execute) and, when the session is recorded, onto its tape.
//!
//! A refused statement is not simply dropped. Its frame is replaced by a
//! statement that is certain to fail on the server at the same point (a call
//! of a function that cannot exist, named with a per-refusal nonce). The
//! server then does what PostgreSQL does with any failing statement: it skips
//! the rest of the extended-protocol pipeline up to Sync and marks an open
//! transaction block failed. When the server's error for that marker comes
//! back, the relay swaps it for the refusal (SQLSTATE 42501 with the policy,
//! rule and hint). So client and server always agree on where the session is,
//! without the proxy having to simulate PostgreSQL's state machine; nothing
//! the policy refused ever reaches the server.
//!
//! A statement that needs approval is held: a simple Query as it arrives, a
//! prepared statement at each Bind (when its values are known). The held
//! frame waits while the [`crate::approval`] machinery asks people; what the
//! server still sends for earlier statements flows on, and what the client
//! sends meanwhile waits behind the held frame, in order. Approved, the
//! frame goes on as it came; otherwise it is refused as above.

use std::{
    collections::{HashMap, VecDeque},
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use futures::{SinkExt, StreamExt};
use gatehouse_crds::common::Approvers;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{Notify, futures::Notified, mpsc},
    time::Instant,
};
use tokio_util::codec::Framed;

pub use crate::policy::Refusal;
use crate::{
    approval::{self, HoldEvent, Outcome},
    mask::{rows::Masker, stream::ResultMasking},
    metrics::{ApprovalOutcome, ByteDirection, Metrics},
    pg::{
        Frame, FrameCodec, ProtocolError,
        messages::{
            Bind, Close, ErrorResponse, Message, NoticeResponse, ParameterStatus, Parse, Query, Severity,
            Target, Terminate,
        },
        sqlstate, tag,
    },
    policy::Classification,
    record::Tape,
};

/// A statement the policy lets run only with approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    /// The Policy whose rule asks for approval.
    pub policy: String,
    /// The rule.
    pub rule: String,
    /// Who may approve.
    pub approvers: Approvers,
}

/// The policy's answer for a statement.
#[derive(Debug)]
pub enum Verdict {
    /// It runs.
    Run(Arc<Classification>),
    /// It runs once approved.
    Hold(Arc<Classification>, Need),
    /// It is refused.
    Refuse(Refusal),
}

/// What the relay asks the policy about a statement.
pub trait Judge {
    /// The verdict on `sql`.
    fn judge_sql(&mut self, sql: &str) -> impl Future<Output = Verdict> + Send;
    /// Whether a protocol-level FunctionCall may run.
    fn judge_function_call(&mut self) -> impl Future<Output = Result<(), Refusal>> + Send;
    /// Whether a Bind of `statement` may run, for a statement the session
    /// prepared in SQL (`PREPARE`), which shares its namespace with the
    /// Parse messages': a Bind of it runs it as `EXECUTE` would. Statements
    /// a Parse made were judged at the Parse.
    fn judge_bind(&mut self, statement: &str) -> impl Future<Output = Result<(), Refusal>> + Send {
        let _ = statement;
        async { Ok(()) }
    }
    /// Whether [`Judge::judge_bind`] has anything to judge (the session
    /// prepared a statement in SQL), so a Bind is worth decoding.
    fn judges_binds(&self) -> bool {
        false
    }
    /// The masker in force for the session now, if any.
    fn masker(&mut self) -> Option<Arc<Masker>> {
        None
    }
    /// Asks for approval of `sql` (for a prepared statement, with the
    /// parameter types its Parse fixed and the Bind's values); dropping the
    /// receiver withdraws the request.
    fn hold(
        &mut self,
        need: &Need,
        sql: &str,
        param_types: &[u32],
        bind: Option<&Bind>,
    ) -> mpsc::Receiver<HoldEvent> {
        let _ = (need, sql, param_types, bind);
        no_approver()
    }
}

/// A hold that fails at once: there is no one to ask.
pub fn no_approver() -> mpsc::Receiver<HoldEvent> {
    decided(Outcome::Failed("this proxy cannot ask for approvals".to_owned()))
}

/// A hold that ends at once with `outcome`.
pub fn decided(outcome: Outcome) -> mpsc::Receiver<HoldEvent> {
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.try_send(HoldEvent::Decided(outcome));
    rx
}

fn refusal_frame(refusal: &Refusal) -> Result<Frame, ProtocolError> {
    ErrorResponse::new(Severity::Error, refusal.sqlstate, refusal.message.clone())
        .with_hint(refusal.hint.clone())
        .to_frame()
}

/// How a relay ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The client said Terminate or hung up.
    ClientClosed,
    /// The server hung up.
    ServerClosed,
    /// The proxy closed an idle session (`limits.idleTimeout`).
    IdleTimeout,
    /// The server reported a parameter value under which statements could
    /// be read differently by the policy and the server (see [`super::params`]);
    /// the client was told why.
    UnsafeParameter,
}

/// Why a ParameterStatus frame ends the session, if it does: a setting
/// under which the policy could misread statements, or, in a `read_only`
/// session, one that is no longer read-only.
pub fn unsafe_parameter(frame: &Frame, read_only: bool) -> Option<String> {
    if frame.tag() != tag::backend::PARAMETER_STATUS {
        return None;
    }
    match ParameterStatus::decode(frame) {
        Ok(status) => super::params::check(&status.name, &status.value)
            .and_then(|()| match read_only {
                true => super::params::check_read_only(&status.name, &status.value),
                false => Ok(()),
            })
            .err(),
        Err(e) => Some(format!("the database sent a malformed ParameterStatus: {e}")),
    }
}

/// What the relay enforces and measures besides the policy.
#[derive(Debug, Clone, Copy)]
pub struct Settings<'a> {
    /// A session with no traffic for this long while the server owes no
    /// answer is closed with SQLSTATE 57P05; zero disables it.
    pub idle_timeout: Duration,
    /// Where bytes and statement durations are counted.
    pub metrics: &'a Metrics,
    /// Notified when the client sends a CancelRequest for this session: a
    /// held statement is withdrawn.
    pub cancel: Option<&'a Notify>,
    /// Whether the upstream session is read-only (no Policy lets the caller
    /// write): the server reporting it read-write closes the session.
    pub read_only: bool,
}

/// Frames the client may send while a statement is held before the relay
/// stops reading (and TCP pushes back).
const BACKLOG_FRAMES: usize = 256;

/// A response segment sent to the server and not yet answered with its
/// ReadyForQuery.
#[derive(Debug)]
struct Segment {
    /// Which segment of the session it is, counting from 0.
    id: u64,
    /// Refusal markers sent in it.
    markers: Vec<String>,
    /// When its first message arrived from the client.
    started: Instant,
    /// Whether the server answered any of it with an error (and so skipped
    /// the rest of it, up to its Sync).
    errored: bool,
}

/// A segment the server has answered: its id and whether it failed.
#[derive(Debug, Clone, Copy)]
struct Answered {
    id: u64,
    errored: bool,
}

/// Refusals waiting for the server's error on their marker, by nonce, and
/// the segments the server still owes an answer for.
#[derive(Debug, Default)]
struct Pending {
    markers: HashMap<String, Refusal>,
    /// Segments sent (a simple Query, a FunctionCall, or the extended-protocol
    /// messages up to a Sync): each ends with the server's ReadyForQuery,
    /// after which its unfired markers are moot.
    segments: VecDeque<Segment>,
    /// Markers of the segment the client is still sending.
    open: Vec<String>,
    /// When the segment the client is still sending began.
    open_since: Option<Instant>,
    /// The id of the segment the client is still sending.
    open_id: u64,
    /// Whether the server already answered part of that segment with an
    /// error (after a Flush).
    open_errored: bool,
}

impl Pending {
    /// Whether the server may still be working for the client: a segment
    /// was sent without its ReadyForQuery back, or an extended-protocol
    /// pipeline was started without its Sync (an Execute and Flush run a
    /// statement without one). Such a session is never idle.
    fn server_owes_answer(&self) -> bool {
        !self.segments.is_empty() || self.open_since.is_some()
    }

    fn close_segment(&mut self) {
        let started = self.open_since.take().unwrap_or_else(Instant::now);
        self.segments.push_back(Segment {
            id: self.open_id,
            markers: std::mem::take(&mut self.open),
            started,
            errored: std::mem::take(&mut self.open_errored),
        });
        self.open_id += 1;
    }

    /// Notes that the server answered the segment it is working on with an
    /// error: the oldest one sent and not answered, or else the open one.
    fn errored(&mut self) {
        match self.segments.front_mut() {
            Some(segment) => segment.errored = true,
            None => self.open_errored = true,
        }
    }
}

/// Bytes relayed since the last flush, added to the shared counters once a
/// batch rather than per frame.
struct ByteCounts<'a> {
    metrics: &'a Metrics,
    to_server: u64,
    to_client: u64,
}

impl ByteCounts<'_> {
    fn flush(&mut self) {
        if self.to_server > 0 {
            self.metrics
                .bytes
                .get(ByteDirection::ClientToServer)
                .inc_by(std::mem::take(&mut self.to_server));
        }
        if self.to_client > 0 {
            self.metrics
                .bytes
                .get(ByteDirection::ServerToClient)
                .inc_by(std::mem::take(&mut self.to_client));
        }
    }
}

impl Drop for ByteCounts<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// A statement waiting for approval.
struct Holding<'a> {
    /// The held Query or Bind.
    frame: Frame,
    /// The Query's classification (for masking its results).
    classification: Option<Arc<Classification>>,
    /// The prepared statement a held Bind names; `None` for a Query.
    prepared: Option<String>,
    need: Need,
    events: mpsc::Receiver<HoldEvent>,
    /// The request, once the approver named it.
    request: Option<String>,
    /// Fires when the client cancels.
    cancelled: Option<Pin<Box<Notified<'a>>>>,
}

/// How a hold step went.
enum HoldStep {
    Event(HoldEvent),
    Cancelled,
}

impl Holding<'_> {
    async fn step(&mut self) -> HoldStep {
        let cancelled = async {
            match self.cancelled.as_mut() {
                Some(notified) => notified.as_mut().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = self.events.recv() => HoldStep::Event(event.unwrap_or_else(|| {
                HoldEvent::Decided(Outcome::Failed("the approval request ended without a decision".to_owned()))
            })),
            () = cancelled => HoldStep::Cancelled,
        }
    }
}

/// Awaits the hold's next step; never resolves without one.
async fn hold_step(holding: &mut Option<Holding<'_>>) -> HoldStep {
    match holding {
        Some(h) => h.step().await,
        None => std::future::pending().await,
    }
}

/// A prepared statement that needs approval at each Bind.
#[derive(Debug, Clone)]
struct HeldStatement {
    /// Its text.
    sql: String,
    /// The parameter types its Parse fixed (0: the server's choice).
    param_types: Vec<u32>,
    /// Why it needs approval.
    need: Need,
}

/// What the relay knows of a prepared statement name that needed
/// approval: what the server may run when a Bind names it.
///
/// The relay cannot simply forget a held statement when a Parse or Close of
/// its name goes by: PostgreSQL refuses to prepare a name twice, and after
/// an error it skips everything up to Sync, so the server may well keep the
/// held statement. What replaced it counts only once the server answered
/// the segment without an error, and for a Bind later in the same segment
/// (which the server runs only if everything before it succeeded).
#[derive(Debug, Clone)]
enum HeldName {
    /// The server has this statement, which needs approval, under the name.
    Held(HeldStatement),
    /// A Parse (`then`: the new statement, if it needs approval) or a Close
    /// (`None`) in segment `segment`, not answered yet.
    Replacing {
        segment: u64,
        then: Option<HeldStatement>,
    },
    /// The segment that replaced it failed: the server may have either
    /// statement, so a Bind of the name is refused until a Parse or Close
    /// of it succeeds.
    Unknown,
}

/// Prepared statement names that need approval (or did), by name.
type HeldStatements = HashMap<String, HeldName>;

/// One session's relay state.
struct Relay<'a, 's, C, S, J> {
    client: &'a mut Framed<C, FrameCodec>,
    server: &'a mut Framed<S, FrameCodec>,
    judge: &'a mut J,
    tape: Option<&'a mut Tape>,
    session_nonce: &'a str,
    settings: Settings<'s>,
    pending: Pending,
    results: ResultMasking,
    counter: u64,
    bytes: ByteCounts<'s>,
    holding: Option<Holding<'s>>,
    backlog: VecDeque<Frame>,
    held_statements: HeldStatements,
    last_batch: Instant,
}

/// What to do with a client frame.
enum Handled<'s> {
    /// Forward it, after the frame the masking sends first.
    Forward(Option<Frame>, Frame),
    /// Hold it for approval.
    Hold(Holding<'s>),
}

/// Relays between `client` and `server` until one side ends or the session
/// is idle for `settings.idle_timeout`.
///
/// Idleness costs no timer per frame: a batch only records when it was
/// handled, and the one timer, when it fires, moves itself to the last
/// batch's deadline if traffic came since.
pub async fn relay<C, S>(
    client: &mut Framed<C, FrameCodec>,
    server: &mut Framed<S, FrameCodec>,
    judge: &mut impl Judge,
    session_nonce: &str,
    settings: Settings<'_>,
    tape: Option<&mut Tape>,
) -> Result<Ended, ProtocolError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut relay = Relay {
        client,
        server,
        judge,
        tape,
        session_nonce,
        settings,
        pending: Pending::default(),
        results: ResultMasking::new(),
        counter: 0,
        bytes: ByteCounts {
            metrics: settings.metrics,
            to_server: 0,
            to_client: 0,
        },
        holding: None,
        backlog: VecDeque::new(),
        held_statements: HashMap::new(),
        last_batch: Instant::now(),
    };
    relay.run().await
}

impl<'s, C, S, J> Relay<'_, 's, C, S, J>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
    J: Judge,
{
    async fn run(&mut self) -> Result<Ended, ProtocolError> {
        let idle_timeout = self.settings.idle_timeout;
        let idle = tokio::time::sleep(idle_timeout);
        tokio::pin!(idle);
        loop {
            // What the client sent during a hold goes on once it ends, in order.
            if self.holding.is_none()
                && let Some(frame) = self.backlog.pop_front()
            {
                if let Some(ended) = self.on_client(frame).await? {
                    return Ok(ended);
                }
                continue;
            }
            let reading = self.backlog.len() < BACKLOG_FRAMES;
            tokio::select! {
                frame = self.client.next(), if reading => {
                    let Some(frame) = frame else { return Ok(Ended::ClientClosed) };
                    let frame = frame?;
                    if self.holding.is_some() {
                        if frame.tag() == tag::frontend::TERMINATE {
                            // Leaving mid-hold: the hold is dropped, which withdraws it.
                            self.server.send(frame).await?;
                            return Ok(Ended::ClientClosed);
                        }
                        self.backlog.push_back(frame);
                        continue;
                    }
                    if let Some(ended) = self.on_client(frame).await? {
                        return Ok(ended);
                    }
                }
                frame = self.server.next() => {
                    let Some(frame) = frame else { return Ok(Ended::ServerClosed) };
                    if let Some(ended) = self.on_server_frame(frame?).await? {
                        return Ok(ended);
                    }
                }
                step = hold_step(&mut self.holding) => {
                    self.on_hold_step(step).await?;
                }
                () = &mut idle, if !idle_timeout.is_zero() => {
                    let now = Instant::now();
                    if deadline(self.last_batch, idle_timeout) > now {
                        idle.as_mut().reset(deadline(self.last_batch, idle_timeout));
                    } else if self.pending.server_owes_answer() || self.holding.is_some() {
                        // A long-running or held statement: look again a period later.
                        idle.as_mut().reset(deadline(now, idle_timeout));
                    } else {
                        close_idle(self.client, self.server, idle_timeout).await?;
                        return Ok(Ended::IdleTimeout);
                    }
                }
            }
        }
    }

    fn next_marker(&mut self) -> String {
        self.counter += 1;
        format!("gatehouse_refused_{}_{}", self.session_nonce, self.counter)
    }

    /// Judges and forwards (or holds) one client frame.
    async fn on_client(&mut self, frame: Frame) -> Result<Option<Ended>, ProtocolError> {
        let terminate = frame.tag() == tag::frontend::TERMINATE;
        if !self.pending.server_owes_answer() && starts_segment(frame.tag()) {
            // Between round trips: a changed masking takes effect.
            self.results.set_masker(self.judge.masker());
        }
        match self.judged(frame).await? {
            Handled::Forward(before, outgoing) => {
                self.forward(before, outgoing).await?;
            }
            Handled::Hold(mut holding) => {
                if let Some(notify) = self.settings.cancel {
                    let mut notified = Box::pin(notify.notified());
                    // Registered now, so a cancel that comes before the
                    // next poll still counts.
                    notified.as_mut().enable();
                    holding.cancelled = Some(notified);
                }
                // The server gets what came before the held frame now.
                SinkExt::<Frame>::flush(self.server).await?;
                self.holding = Some(holding);
                return Ok(None);
            }
        }
        if terminate {
            SinkExt::<Frame>::flush(self.server).await?;
            return Ok(Some(Ended::ClientClosed));
        }
        if self.client.read_buffer().is_empty() && self.backlog.is_empty() {
            SinkExt::<Frame>::flush(self.server).await?;
            self.bytes.flush();
            self.last_batch = Instant::now();
        }
        Ok(None)
    }

    /// Sends a client frame (and the masking's frame before it) upstream,
    /// without flushing.
    async fn forward(&mut self, before: Option<Frame>, outgoing: Frame) -> Result<(), ProtocolError> {
        if let Some(before) = before {
            self.bytes.to_server += before.wire_len() as u64;
            self.server.feed(before).await?;
        }
        self.bytes.to_server += outgoing.wire_len() as u64;
        self.server.feed(outgoing).await
    }

    async fn on_server_frame(&mut self, frame: Frame) -> Result<Option<Ended>, ProtocolError> {
        if let Some(why) = unsafe_parameter(&frame, self.settings.read_only) {
            tracing::warn!(reason = %why, "closing a session the policy can no longer read safely");
            let fatal = ErrorResponse::new(Severity::Fatal, "0A000", format!("Gatehouse: {why}"));
            self.client.send(fatal.to_frame()?).await?;
            self.server.send(Terminate.to_frame()?).await?;
            return Ok(Some(Ended::UnsafeParameter));
        }
        let (frame, answered) = on_server(frame, &mut self.pending, self.settings.metrics)?;
        if let Some(answered) = answered
            && !self.held_statements.is_empty()
        {
            self.answered(answered);
        }
        let reply = self.results.on_server(frame, self.settings.metrics)?;
        if let Some(frame) = reply.to_server {
            self.bytes.to_server += frame.wire_len() as u64;
            self.server.send(frame).await?;
        }
        if let Some(frame) = reply.to_client {
            if let Some(tape) = self.tape.as_deref_mut() {
                tape.on_server(&frame);
            }
            self.bytes.to_client += frame.wire_len() as u64;
            self.client.feed(frame).await?;
        }
        if self.server.read_buffer().is_empty() {
            SinkExt::<Frame>::flush(self.client).await?;
            self.bytes.flush();
            self.last_batch = Instant::now();
        }
        Ok(None)
    }

    async fn on_hold_step(&mut self, step: HoldStep) -> Result<(), ProtocolError> {
        let outcome = match step {
            HoldStep::Event(HoldEvent::Waiting {
                name,
                namespace,
                reused,
                hold_timeout,
            }) => {
                let Some(holding) = self.holding.as_mut() else {
                    return Ok(());
                };
                holding.request = Some(name.clone());
                let (message, detail, hint) = approval::waiting_notice(
                    &name,
                    &namespace,
                    &holding.need.policy,
                    &holding.need.rule,
                    &holding.need.approvers,
                    hold_timeout,
                );
                let message = if reused {
                    format!("{message} (the request was made earlier for this same statement)")
                } else {
                    message
                };
                let notice = NoticeResponse::notice(message)
                    .with_detail(detail)
                    .with_hint(hint)
                    .to_frame()?;
                if let Some(tape) = self.tape.as_deref_mut() {
                    tape.on_server(&notice);
                }
                self.bytes.to_client += notice.wire_len() as u64;
                self.client.send(notice).await?;
                return Ok(());
            }
            HoldStep::Event(HoldEvent::Decided(outcome)) => outcome,
            HoldStep::Cancelled => Outcome::Cancelled {
                name: self.holding.as_ref().and_then(|h| h.request.clone()),
            },
        };
        let Some(holding) = self.holding.take() else {
            return Ok(());
        };
        self.settings.metrics.approvals.inc(ApprovalOutcome::of(&outcome));
        // Dropping the receiver withdraws a request still pending.
        drop(holding.events);
        if let Some(tape) = self.tape.as_deref_mut() {
            tape.approval(holding.prepared.as_deref(), &outcome);
        }
        let simple = holding.frame.tag() == tag::frontend::QUERY;
        let (outgoing, classification) = match outcome.refusal() {
            None => (holding.frame, holding.classification),
            Some(refusal) => {
                let marker = self.refuse(refusal);
                let frame = if simple {
                    Query::new(marker_sql(&marker)).to_frame()?
                } else {
                    // A Bind's stand-in: a Parse of the marker under its own
                    // name, failing where the Bind would have run.
                    Parse {
                        statement: marker.clone(),
                        sql: marker_sql(&marker),
                        param_types: Vec::new(),
                    }
                    .to_frame()?
                };
                (frame, None)
            }
        };
        let before = self.results.on_client(&outgoing, classification.as_deref())?;
        if let Some(tape) = self.tape.as_deref_mut() {
            tape.on_client(&outgoing);
        }
        if simple {
            self.pending.close_segment();
        }
        self.forward(before, outgoing).await?;
        SinkExt::<Frame>::flush(self.server).await?;
        self.bytes.flush();
        self.last_batch = Instant::now();
        Ok(())
    }

    /// The frame to forward for a client frame (a refused statement's
    /// marker in place of the statement, the masking's Describe before an
    /// Execute), or the hold of a statement that needs approval.
    async fn judged(&mut self, frame: Frame) -> Result<Handled<'s>, ProtocolError> {
        if self.pending.open_since.is_some() {
            // Skipped after an error earlier in the pipeline, these would get
            // no ReadyForQuery, and every answer after them would be taken
            // for the one before.
            match frame.tag() {
                tag::frontend::QUERY => return Err(ProtocolError::UnsyncedPipeline { message: "Query" }),
                tag::frontend::FUNCTION_CALL => {
                    return Err(ProtocolError::UnsyncedPipeline {
                        message: "FunctionCall",
                    });
                }
                _ => {}
            }
        }
        if self.pending.open_since.is_none() && starts_segment(frame.tag()) {
            self.pending.open_since = Some(Instant::now());
        }
        let (frame, classification) = match frame.tag() {
            tag::frontend::QUERY => {
                let query = Query::decode(&frame)?;
                let verdict = self.judge.judge_sql(&query.sql).await;
                let out = match verdict {
                    Verdict::Run(classification) => {
                        self.record_statement(None, &query.sql, Ok(()));
                        (frame, Some(classification))
                    }
                    Verdict::Hold(classification, need) => {
                        if let Some(tape) = self.tape.as_deref_mut() {
                            tape.held(None, &query.sql);
                        }
                        let events = self.judge.hold(&need, &query.sql, &[], None);
                        return Ok(Handled::Hold(Holding {
                            frame,
                            classification: Some(classification),
                            prepared: None,
                            need,
                            events,
                            request: None,
                            cancelled: None,
                        }));
                    }
                    Verdict::Refuse(refusal) => {
                        self.record_statement(None, &query.sql, Err(&refusal));
                        (Query::new(marker_sql(&self.refuse(refusal))).to_frame()?, None)
                    }
                };
                // A simple Query is a segment of its own.
                self.pending.close_segment();
                out
            }
            tag::frontend::PARSE => {
                let parse = Parse::decode(&frame)?;
                match self.judge.judge_sql(&parse.sql).await {
                    Verdict::Run(classification) => {
                        self.replace_held(&parse.statement, None);
                        self.record_statement(Some(&parse.statement), &parse.sql, Ok(()));
                        (frame, Some(classification))
                    }
                    Verdict::Hold(classification, need) => {
                        // Parsing runs nothing: the hold comes at each Bind,
                        // with the values.
                        if let Some(tape) = self.tape.as_deref_mut() {
                            tape.held(Some(&parse.statement), &parse.sql);
                        }
                        let held = HeldStatement {
                            sql: parse.sql.clone(),
                            param_types: parse.param_types.clone(),
                            need,
                        };
                        self.replace_held(&parse.statement, Some(held));
                        (frame, Some(classification))
                    }
                    Verdict::Refuse(refusal) => {
                        self.replace_held(&parse.statement, None);
                        self.record_statement(Some(&parse.statement), &parse.sql, Err(&refusal));
                        let marker = self.refuse(refusal);
                        let marker = Parse {
                            statement: parse.statement,
                            sql: marker_sql(&marker),
                            param_types: Vec::new(),
                        }
                        .to_frame()?;
                        (marker, None)
                    }
                }
            }
            tag::frontend::BIND if !self.held_statements.is_empty() || self.judge.judges_binds() => {
                let bind = Bind::decode(&frame)?;
                let open = self.pending.open_id;
                let judged = self.judge.judge_bind(&bind.statement).await;
                let held = match (judged, self.held_statements.get(&bind.statement)) {
                    (Ok(()), None) => None,
                    (Ok(()), Some(HeldName::Held(held))) => Some(held.clone()),
                    (Ok(()), Some(HeldName::Replacing { segment, then })) if *segment == open => then.clone(),
                    (judged, _) => {
                        let refusal = judged.err().unwrap_or_else(|| unknown_statement(&bind.statement));
                        let marker = self.refuse(refusal);
                        let stand_in = Parse {
                            statement: marker.clone(),
                            sql: marker_sql(&marker),
                            param_types: Vec::new(),
                        }
                        .to_frame()?;
                        let before = self.results.on_client(&stand_in, None)?;
                        if let Some(tape) = self.tape.as_deref_mut() {
                            tape.on_client(&stand_in);
                        }
                        return Ok(Handled::Forward(before, stand_in));
                    }
                };
                if let Some(held) = held {
                    let events = self
                        .judge
                        .hold(&held.need, &held.sql, &held.param_types, Some(&bind));
                    return Ok(Handled::Hold(Holding {
                        frame,
                        classification: None,
                        prepared: Some(bind.statement),
                        need: held.need,
                        events,
                        request: None,
                        cancelled: None,
                    }));
                }
                (frame, None)
            }
            tag::frontend::CLOSE if !self.held_statements.is_empty() => {
                let close = Close::decode(&frame)?;
                if close.target == Target::Statement {
                    self.replace_held(&close.name, None);
                }
                (frame, None)
            }
            tag::frontend::FUNCTION_CALL => {
                let out = match self.judge.judge_function_call().await {
                    Ok(()) => frame,
                    // A FunctionCall answers with a result and ReadyForQuery; a
                    // failing Query answers with an error and ReadyForQuery.
                    Err(refusal) => Query::new(marker_sql(&self.refuse(refusal))).to_frame()?,
                };
                self.pending.close_segment();
                (out, None)
            }
            tag::frontend::SYNC => {
                self.pending.close_segment();
                (frame, None)
            }
            _ => (frame, None),
        };
        let before = self.results.on_client(&frame, classification.as_deref())?;
        if let Some(tape) = self.tape.as_deref_mut() {
            tape.on_client(&frame);
        }
        Ok(Handled::Forward(before, frame))
    }

    /// A Parse (`then`: the new statement, when it needs approval) or Close
    /// (`None`) of prepared statement `name` in the open segment. A name
    /// that held nothing before holds the new statement at once (should the
    /// server refuse the Parse, what it keeps under the name did not need
    /// approval); one that held a statement is replaced only once the
    /// server confirms it ([`HeldName`]).
    fn replace_held(&mut self, name: &str, then: Option<HeldStatement>) {
        match self.held_statements.get_mut(name) {
            Some(entry) => {
                *entry = HeldName::Replacing {
                    segment: self.pending.open_id,
                    then,
                };
            }
            None => {
                if let Some(held) = then {
                    self.held_statements.insert(name.to_owned(), HeldName::Held(held));
                }
            }
        }
    }

    /// The server answered a segment: what it replaced is now in force, or,
    /// when it failed, unknown.
    fn answered(&mut self, answered: Answered) {
        self.held_statements.retain(|_, entry| {
            let HeldName::Replacing { segment, then } = entry else {
                return true;
            };
            if *segment != answered.id {
                return true;
            }
            *entry = match (answered.errored, then.take()) {
                (true, _) => HeldName::Unknown,
                (false, Some(held)) => HeldName::Held(held),
                (false, None) => return false,
            };
            true
        });
    }

    fn record_statement(&mut self, prepared: Option<&str>, sql: &str, verdict: Result<(), &Refusal>) {
        if let Some(tape) = self.tape.as_deref_mut() {
            tape.statement(prepared, sql, verdict);
        }
    }

    /// Puts a refusal in place: its marker, remembered until the server's
    /// error for it comes back.
    fn refuse(&mut self, refusal: Refusal) -> String {
        let marker = self.next_marker();
        self.pending.markers.insert(marker.clone(), refusal);
        self.pending.open.push(marker.clone());
        marker
    }
}

/// `from + after`, or a far-off moment when a huge configured timeout
/// would overflow the clock.
fn deadline(from: Instant, after: Duration) -> Instant {
    from.checked_add(after)
        .unwrap_or_else(|| from + Duration::from_secs(30 * 365 * 24 * 3600))
}

/// Tells the client why its session ends, as PostgreSQL's own
/// idle_session_timeout does, and ends the server's backend cleanly.
async fn close_idle<C, S>(
    client: &mut Framed<C, FrameCodec>,
    server: &mut Framed<S, FrameCodec>,
    idle_timeout: Duration,
) -> Result<(), ProtocolError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let message = format!(
        "terminating connection due to idle timeout of Gatehouse (limits.idleTimeout = {})",
        humantime::format_duration(idle_timeout)
    );
    let fatal = ErrorResponse::new(Severity::Fatal, sqlstate::IDLE_SESSION_TIMEOUT, message).to_frame()?;
    // The server goes first: the client may hang up as soon as it reads the error.
    let upstream = server.send(Terminate.to_frame()?).await;
    let downstream = client.send(fatal).await;
    upstream?;
    downstream?;
    Ok(())
}

fn marker_sql(marker: &str) -> String {
    format!("SELECT {marker}()")
}

/// Whether a client message begins a response segment when none is open.
/// COPY FROM STDIN data belongs to the Query that started the COPY, and
/// Terminate ends the session.
fn starts_segment(tag: u8) -> bool {
    !matches!(
        tag,
        tag::frontend::COPY_DATA
            | tag::frontend::COPY_DONE
            | tag::frontend::COPY_FAIL
            | tag::frontend::TERMINATE
    )
}

/// A server frame as the client gets it (a refusal in place of its
/// marker's error), and the segment it ends, if it is a ReadyForQuery.
fn on_server(
    frame: Frame,
    pending: &mut Pending,
    metrics: &Metrics,
) -> Result<(Frame, Option<Answered>), ProtocolError> {
    match frame.tag() {
        tag::backend::ERROR_RESPONSE => {
            pending.errored();
            if pending.markers.is_empty() {
                return Ok((frame, None));
            }
            let error = ErrorResponse::decode(&frame)?;
            let message = error.fields.message().unwrap_or_default();
            let fired = pending
                .markers
                .keys()
                .find(|m| message.contains(m.as_str()))
                .cloned();
            match fired.and_then(|m| pending.markers.remove(&m)) {
                Some(refusal) => Ok((refusal_frame(&refusal)?, None)),
                None => Ok((frame, None)),
            }
        }
        tag::backend::READY_FOR_QUERY => {
            let answered = pending.segments.pop_front().map(|segment| {
                for marker in segment.markers {
                    pending.markers.remove(&marker);
                }
                metrics
                    .statement_duration
                    .observe(segment.started.elapsed().as_secs_f64());
                Answered {
                    id: segment.id,
                    errored: segment.errored,
                }
            });
            Ok((frame, answered))
        }
        _ => Ok((frame, None)),
    }
}

/// The refusal of a Bind of a prepared statement that needed approval and
/// was then prepared again or closed, in a segment the server has not
/// answered yet or that failed: the relay cannot tell which statement the
/// server would run.
fn unknown_statement(name: &str) -> Refusal {
    let shown = if name.is_empty() {
        "the unnamed prepared statement".to_owned()
    } else {
        format!("prepared statement \"{name}\"")
    };
    Refusal {
        sqlstate: sqlstate::INSUFFICIENT_PRIVILEGE,
        message: format!(
            "statement refused by Gatehouse: {shown} needed approval, and the Parse or Close that replaced it failed or is not answered yet, so Gatehouse cannot tell which statement the server would run"
        ),
        hint: "wait for the answer to the Parse or Close (Sync), or Close the statement and Parse it again, then Bind it".to_owned(),
        decision: "requireApproval",
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{DuplexStream, duplex};

    use super::*;
    use crate::pg::messages::{CommandComplete, ReadyForQuery, TransactionStatus};

    struct AllowAll;

    impl Judge for AllowAll {
        async fn judge_sql(&mut self, _: &str) -> Verdict {
            Verdict::Run(Arc::default())
        }
        async fn judge_function_call(&mut self) -> Result<(), Refusal> {
            Ok(())
        }
    }

    type End = Framed<DuplexStream, FrameCodec>;

    /// The relay's client side and the client; the relay's server side and the server.
    fn link() -> (End, End, End, End) {
        let (a, b) = duplex(1 << 16);
        let (c, d) = duplex(1 << 16);
        (
            Framed::new(a, FrameCodec::frontend()),
            Framed::new(b, FrameCodec::backend()),
            Framed::new(c, FrameCodec::backend()),
            Framed::new(d, FrameCodec::frontend()),
        )
    }

    /// A read-only session whose server reports it read-write (a function
    /// called `set_config`) ends; other sessions may change it as they like.
    #[test]
    fn a_read_only_session_reported_read_write_ends() {
        let status = |value: &str| {
            ParameterStatus::new("default_transaction_read_only", value)
                .to_frame()
                .unwrap()
        };
        assert_eq!(unsafe_parameter(&status("off"), false), None);
        assert_eq!(unsafe_parameter(&status("on"), true), None);
        let why = unsafe_parameter(&status("off"), true).unwrap_or_default();
        assert!(why.contains("keeps read-only"), "{why}");
        let other = ParameterStatus::new("application_name", "off")
            .to_frame()
            .unwrap();
        assert_eq!(unsafe_parameter(&other, true), None);
    }

    fn settings(metrics: &Metrics, idle: Duration) -> Settings<'_> {
        Settings {
            idle_timeout: idle,
            metrics,
            cancel: None,
            read_only: false,
        }
    }

    /// The FATAL the client got and the Terminate the server got.
    async fn assert_closed_for_idleness(client: &mut End, server: &mut End, idle: &str) {
        let fatal = client.next().await.unwrap().unwrap();
        let error = ErrorResponse::decode(&fatal).unwrap();
        assert_eq!(
            error.fields.code().as_deref(),
            Some(sqlstate::IDLE_SESSION_TIMEOUT)
        );
        let message = error.fields.message().unwrap_or_default().into_owned();
        assert!(
            message.contains(&format!(
                "idle timeout of Gatehouse (limits.idleTimeout = {idle})"
            )),
            "{message}"
        );
        assert_eq!(error.fields.severity().as_deref(), Some("FATAL"));
        let terminate = server.next().await.unwrap().unwrap();
        assert_eq!(terminate.tag(), tag::frontend::TERMINATE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_without_traffic_is_closed_after_the_idle_timeout() {
        let metrics = Metrics::new();
        let (mut proxy_client, mut client, mut proxy_server, mut server) = link();
        let start = Instant::now();
        let ended = relay(
            &mut proxy_client,
            &mut proxy_server,
            &mut AllowAll,
            "t",
            settings(&metrics, Duration::from_secs(1)),
            None,
        )
        .await
        .unwrap();
        assert_eq!(ended, Ended::IdleTimeout);
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(1) && waited < Duration::from_millis(1100),
            "{waited:?}"
        );
        assert_closed_for_idleness(&mut client, &mut server, "1s").await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_statement_is_not_idle_and_idleness_counts_from_its_answer() {
        let metrics = Metrics::new();
        let (mut proxy_client, mut client, mut proxy_server, mut server) = link();
        let idle = Duration::from_secs(1);
        let mut judge = AllowAll;
        let relaying = relay(
            &mut proxy_client,
            &mut proxy_server,
            &mut judge,
            "t",
            settings(&metrics, idle),
            None,
        );
        let query = Query::new("SELECT pg_sleep(5)".to_owned()).to_frame().unwrap();
        let query_len = query.wire_len() as u64;
        let answer = [
            CommandComplete::new("SELECT 1").to_frame().unwrap(),
            ReadyForQuery::new(TransactionStatus::Idle).to_frame().unwrap(),
        ];
        let answer_len: u64 = answer.iter().map(|f| f.wire_len() as u64).sum();
        let script = async {
            // Traffic just before the deadline moves it.
            tokio::time::sleep(Duration::from_millis(800)).await;
            client.send(query).await.unwrap();
            assert_eq!(server.next().await.unwrap().unwrap().tag(), tag::frontend::QUERY);
            // The server works five idle periods long.
            tokio::time::sleep(Duration::from_secs(5)).await;
            for frame in answer {
                server.feed(frame).await.unwrap();
            }
            SinkExt::<Frame>::flush(&mut server).await.unwrap();
            let _complete = client.next().await.unwrap().unwrap();
            let ready = client.next().await.unwrap().unwrap();
            assert_eq!(ready.tag(), tag::backend::READY_FOR_QUERY);
            Instant::now()
        };
        let (ended, answered) = tokio::join!(relaying, script);
        assert_eq!(ended.unwrap(), Ended::IdleTimeout);
        let after_answer = answered.elapsed();
        assert!(
            after_answer >= idle && after_answer < idle + Duration::from_millis(100),
            "closed {after_answer:?} after the answer"
        );
        assert_closed_for_idleness(&mut client, &mut server, "1s").await;

        let text = metrics.render();
        let sample = |series: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse::<f64>().ok())
                .unwrap_or(-1.0)
        };
        assert_eq!(
            sample("gatehouse_statement_duration_seconds_count"),
            1.0,
            "{text}"
        );
        let seconds = sample("gatehouse_statement_duration_seconds_sum");
        assert!((5.0..5.1).contains(&seconds), "{seconds}");
        assert_eq!(
            sample(r#"gatehouse_bytes_total{direction="client_to_server"}"#),
            query_len as f64
        );
        assert_eq!(
            sample(r#"gatehouse_bytes_total{direction="server_to_client"}"#),
            answer_len as f64
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_unsynced_pipeline_is_not_idle() {
        let metrics = Metrics::new();
        let (mut proxy_client, mut client, mut proxy_server, mut server) = link();
        let mut judge = AllowAll;
        let relaying = relay(
            &mut proxy_client,
            &mut proxy_server,
            &mut judge,
            "t",
            settings(&metrics, Duration::from_secs(1)),
            None,
        );
        let parse = Parse {
            statement: String::new(),
            sql: "SELECT 1".to_owned(),
            param_types: Vec::new(),
        }
        .to_frame()
        .unwrap();
        let script = async {
            client.send(parse).await.unwrap();
            assert_eq!(server.next().await.unwrap().unwrap().tag(), tag::frontend::PARSE);
            tokio::time::sleep(Duration::from_secs(10)).await;
        };
        tokio::select! {
            ended = relaying => panic!("the relay ended: {ended:?}"),
            () = script => {}
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_idle_timeout_never_closes() {
        let metrics = Metrics::new();
        let (mut proxy_client, _client, mut proxy_server, _server) = link();
        let mut judge = AllowAll;
        let relaying = relay(
            &mut proxy_client,
            &mut proxy_server,
            &mut judge,
            "t",
            settings(&metrics, Duration::ZERO),
            None,
        );
        tokio::select! {
            ended = relaying => panic!("the relay ended: {ended:?}"),
            () = tokio::time::sleep(Duration::from_secs(24 * 3600)) => {}
        }
    }
}

#[cfg(test)]
mod hold_tests {
    use bytes::Bytes;
    use tokio::io::{DuplexStream, duplex};

    use super::*;
    use crate::pg::messages::{CommandComplete, Execute, Format, ReadyForQuery, Sync, TransactionStatus};

    /// A hold asked for: the statement, its parameter types, the Bind's
    /// values, and where the test sends the approver's events.
    type Asked = (
        String,
        Vec<u32>,
        Option<Vec<Option<Bytes>>>,
        mpsc::Sender<HoldEvent>,
    );

    /// Holds every statement that mentions `held`; the test decides.
    struct Holder {
        asked: mpsc::UnboundedSender<Asked>,
    }

    impl Judge for Holder {
        async fn judge_sql(&mut self, sql: &str) -> Verdict {
            if sql.contains("held") {
                Verdict::Hold(
                    Arc::default(),
                    Need {
                        policy: "writes".into(),
                        rule: "deletes".into(),
                        approvers: Approvers {
                            users: vec!["alice".into()],
                            groups: Vec::new(),
                            required: 1,
                        },
                    },
                )
            } else {
                Verdict::Run(Arc::default())
            }
        }
        async fn judge_function_call(&mut self) -> Result<(), Refusal> {
            Ok(())
        }
        /// `wipe` stands for a statement the session prepared in SQL that
        /// the Policy does not let run.
        async fn judge_bind(&mut self, statement: &str) -> Result<(), Refusal> {
            if statement == "wipe" {
                return Err(Refusal {
                    sqlstate: sqlstate::INSUFFICIENT_PRIVILEGE,
                    message: "refused: wipe".into(),
                    hint: String::new(),
                    decision: "requireApproval",
                });
            }
            Ok(())
        }
        fn judges_binds(&self) -> bool {
            true
        }
        fn hold(
            &mut self,
            _: &Need,
            sql: &str,
            param_types: &[u32],
            bind: Option<&Bind>,
        ) -> mpsc::Receiver<HoldEvent> {
            let (tx, rx) = mpsc::channel(2);
            self.asked
                .send((
                    sql.to_owned(),
                    param_types.to_vec(),
                    bind.map(|b| b.params.clone()),
                    tx,
                ))
                .unwrap();
            rx
        }
    }

    type End = Framed<DuplexStream, FrameCodec>;

    /// Settings without an idle timeout or a cancel.
    fn quiet(metrics: &Metrics) -> Settings<'_> {
        Settings {
            idle_timeout: Duration::ZERO,
            metrics,
            cancel: None,
            read_only: false,
        }
    }

    fn link() -> (End, End, End, End) {
        let (a, b) = duplex(1 << 16);
        let (c, d) = duplex(1 << 16);
        (
            Framed::new(a, FrameCodec::frontend()),
            Framed::new(b, FrameCodec::backend()),
            Framed::new(c, FrameCodec::backend()),
            Framed::new(d, FrameCodec::frontend()),
        )
    }

    fn waiting(name: &str) -> HoldEvent {
        HoldEvent::Waiting {
            name: name.into(),
            namespace: "shop".into(),
            reused: false,
            hold_timeout: Duration::from_secs(300),
        }
    }

    fn sql_of(frame: &Frame) -> String {
        Query::decode(frame).unwrap().sql
    }

    async fn answer(server: &mut End, tag: &str) {
        server
            .feed(CommandComplete::new(tag).to_frame().unwrap())
            .await
            .unwrap();
        server
            .send(ReadyForQuery::new(TransactionStatus::Idle).to_frame().unwrap())
            .await
            .unwrap();
    }

    /// Answers the marker the relay sends in place of a refused statement
    /// as PostgreSQL does (no such function); the marker's SQL.
    async fn answer_marker(server: &mut End) -> String {
        let marker = sql_of(&server.next().await.unwrap().unwrap());
        let function = marker.trim_start_matches("SELECT ").trim_end_matches("()");
        server
            .feed(
                ErrorResponse::new(
                    Severity::Error,
                    "42883",
                    format!("function {function}() does not exist"),
                )
                .to_frame()
                .unwrap(),
            )
            .await
            .unwrap();
        server
            .send(ReadyForQuery::new(TransactionStatus::Idle).to_frame().unwrap())
            .await
            .unwrap();
        marker
    }

    #[tokio::test]
    async fn a_held_query_waits_and_runs_once_approved_with_what_came_after_it_in_order() {
        let metrics = Metrics::new();
        let (mut proxy_client, mut client, mut proxy_server, mut server) = link();
        let (asked, mut asks) = mpsc::unbounded_channel();
        let mut judge = Holder { asked };
        let settings = quiet(&metrics);
        let relaying = relay(
            &mut proxy_client,
            &mut proxy_server,
            &mut judge,
            "t",
            settings,
            None,
        );
        let script = async {
            client
                .feed(Query::new("DELETE FROM held WHERE id = 1").to_frame().unwrap())
                .await
                .unwrap();
            client
                .send(Query::new("SELECT 2").to_frame().unwrap())
                .await
                .unwrap();
            let (sql, _, bind, decide) = asks.recv().await.unwrap();
            assert_eq!((sql.as_str(), bind), ("DELETE FROM held WHERE id = 1", None));
            decide.send(waiting("orders-db-abc")).await.unwrap();
            // The client hears which request holds it, and the server nothing yet.
            let notice = NoticeResponse::decode(&client.next().await.unwrap().unwrap()).unwrap();
            let message = notice.fields.message().unwrap().into_owned();
            assert!(
                message.contains("ApprovalRequest orders-db-abc in namespace shop"),
                "{message}"
            );
            assert!(
                notice
                    .fields
                    .hint()
                    .unwrap()
                    .contains("kubectl patch approvalrequest orders-db-abc -n shop")
            );
            assert!(
                tokio::time::timeout(Duration::from_millis(50), server.next())
                    .await
                    .is_err(),
                "nothing reaches the server while the statement is held"
            );
            decide
                .send(HoldEvent::Decided(Outcome::Approved {
                    name: "orders-db-abc".into(),
                    message: "approved by alice".into(),
                }))
                .await
                .unwrap();
            // Then the held statement and what followed it, in order.
            assert_eq!(
                sql_of(&server.next().await.unwrap().unwrap()),
                "DELETE FROM held WHERE id = 1"
            );
            assert_eq!(sql_of(&server.next().await.unwrap().unwrap()), "SELECT 2");
            answer(&mut server, "DELETE 1").await;
            answer(&mut server, "SELECT 1").await;
            let complete = client.next().await.unwrap().unwrap();
            assert_eq!(complete.tag(), tag::backend::COMMAND_COMPLETE);
            drop(client);
        };
        let (ended, ()) = tokio::join!(relaying, script);
        assert_eq!(ended.unwrap(), Ended::ClientClosed);
    }

    #[tokio::test]
    async fn a_denied_or_cancelled_hold_is_refused_and_never_reaches_the_server() {
        let metrics = Metrics::new();
        let cancel = Notify::new();
        let (mut proxy_client, mut client, mut proxy_server, mut server) = link();
        let (asked, mut asks) = mpsc::unbounded_channel();
        let mut judge = Holder { asked };
        let settings = Settings {
            idle_timeout: Duration::ZERO,
            metrics: &metrics,
            cancel: Some(&cancel),
            read_only: false,
        };
        let relaying = relay(
            &mut proxy_client,
            &mut proxy_server,
            &mut judge,
            "t",
            settings,
            None,
        );
        let script = async {
            // Denied: the marker goes to the server, the reviewer's reason to the client.
            client
                .send(Query::new("DELETE FROM held").to_frame().unwrap())
                .await
                .unwrap();
            let (_, _, _, decide) = asks.recv().await.unwrap();
            decide
                .send(HoldEvent::Decided(Outcome::Denied {
                    name: "orders-db-d".into(),
                    message: "denied by alice: not during the freeze".into(),
                }))
                .await
                .unwrap();
            let marker = answer_marker(&mut server).await;
            assert!(marker.starts_with("SELECT gatehouse_refused_t_"), "{marker}");
            let error = ErrorResponse::decode(&client.next().await.unwrap().unwrap()).unwrap();
            assert_eq!(error.fields.code().as_deref(), Some("42501"));
            let message = error.fields.message().unwrap().into_owned();
            assert!(
                message.contains("orders-db-d") && message.contains("not during the freeze"),
                "{message}"
            );
            assert_eq!(
                client.next().await.unwrap().unwrap().tag(),
                tag::backend::READY_FOR_QUERY
            );

            // Cancelled: the approver's channel closes (which withdraws the request).
            client
                .send(Query::new("DELETE FROM held").to_frame().unwrap())
                .await
                .unwrap();
            let (_, _, _, decide) = asks.recv().await.unwrap();
            decide.send(waiting("orders-db-c")).await.unwrap();
            let _notice = client.next().await.unwrap().unwrap();
            cancel.notify_waiters();
            decide.closed().await;
            answer_marker(&mut server).await;
            let error = ErrorResponse::decode(&client.next().await.unwrap().unwrap()).unwrap();
            assert_eq!(error.fields.code().as_deref(), Some("57014"));
            assert!(
                error
                    .fields
                    .hint()
                    .unwrap()
                    .contains("withdrew ApprovalRequest orders-db-c")
            );
            drop(client);
        };
        let (ended, ()) = tokio::join!(relaying, script);
        assert_eq!(ended.unwrap(), Ended::ClientClosed);
    }

    #[tokio::test]
    async fn a_prepared_statement_is_parsed_at_once_and_held_at_each_bind_with_its_values() {
        let metrics = Metrics::new();
        let (mut proxy_client, mut client, mut proxy_server, mut server) = link();
        let (asked, mut asks) = mpsc::unbounded_channel();
        let mut judge = Holder { asked };
        let settings = quiet(&metrics);
        let relaying = relay(
            &mut proxy_client,
            &mut proxy_server,
            &mut judge,
            "t",
            settings,
            None,
        );
        let script = async {
            let parse = Parse {
                statement: "d".into(),
                sql: "DELETE FROM held WHERE id = $1".into(),
                param_types: vec![23],
            };
            let bind = Bind {
                portal: String::new(),
                statement: "d".into(),
                param_formats: vec![Format::Text],
                params: vec![Some(Bytes::from_static(b"7"))],
                result_formats: Vec::new(),
            };
            let execute = Execute {
                portal: String::new(),
                max_rows: 0,
            };
            client.feed(parse.to_frame().unwrap()).await.unwrap();
            client.feed(bind.to_frame().unwrap()).await.unwrap();
            client.feed(execute.to_frame().unwrap()).await.unwrap();
            client.send(Sync.to_frame().unwrap()).await.unwrap();
            assert_eq!(server.next().await.unwrap().unwrap().tag(), tag::frontend::PARSE);
            let (sql, types, values, decide) = asks.recv().await.unwrap();
            assert_eq!(sql, "DELETE FROM held WHERE id = $1");
            assert_eq!(types, [23], "the Parse's types are bound too");
            assert_eq!(values, Some(vec![Some(Bytes::from_static(b"7"))]));
            decide
                .send(HoldEvent::Decided(Outcome::Approved {
                    name: "r".into(),
                    message: "approved by alice".into(),
                }))
                .await
                .unwrap();
            let tags: Vec<u8> = [
                server.next().await.unwrap().unwrap(),
                server.next().await.unwrap().unwrap(),
                server.next().await.unwrap().unwrap(),
            ]
            .iter()
            .map(Frame::tag)
            .collect();
            assert_eq!(
                tags,
                [tag::frontend::BIND, tag::frontend::EXECUTE, tag::frontend::SYNC]
            );
            drop(client);
        };
        let (ended, ()) = tokio::join!(relaying, script);
        assert_eq!(ended.unwrap(), Ended::ClientClosed);
    }
    /// What a server with one segment's worth of messages does: reads
    /// `frames` messages, then answers each with `answers` and
    /// ReadyForQuery.
    async fn serve(server: &mut End, frames: usize, answers: Vec<Frame>) -> Vec<u8> {
        let mut tags = Vec::new();
        for _ in 0..frames {
            tags.push(server.next().await.unwrap().unwrap().tag());
        }
        for frame in answers {
            server.feed(frame).await.unwrap();
        }
        server
            .send(ReadyForQuery::new(TransactionStatus::Idle).to_frame().unwrap())
            .await
            .unwrap();
        tags
    }

    fn parse(statement: &str, sql: &str) -> Frame {
        Parse {
            statement: statement.into(),
            sql: sql.into(),
            param_types: Vec::new(),
        }
        .to_frame()
        .unwrap()
    }

    fn bind(statement: &str) -> Frame {
        Bind {
            portal: String::new(),
            statement: statement.into(),
            param_formats: Vec::new(),
            params: Vec::new(),
            result_formats: Vec::new(),
        }
        .to_frame()
        .unwrap()
    }

    fn close(statement: &str) -> Frame {
        Close {
            target: Target::Statement,
            name: statement.into(),
        }
        .to_frame()
        .unwrap()
    }

    fn error(code: &str, message: &str) -> Frame {
        ErrorResponse::new(Severity::Error, code, message.to_owned())
            .to_frame()
            .unwrap()
    }

    fn parse_complete() -> Frame {
        crate::pg::messages::ParseComplete.to_frame().unwrap()
    }

    /// The server keeps a prepared statement that needs approval whenever
    /// a later Parse or Close of its name fails or is skipped (PostgreSQL
    /// refuses to prepare a name twice, and skips everything after an error
    /// up to Sync). A Bind of the name must then still be held for that
    /// statement, or refused: never run unheld, never held showing the
    /// approver the statement that did not replace it.
    #[tokio::test]
    async fn a_held_statement_the_server_kept_is_never_bound_unheld() {
        // The second segment, what the server reads of it, and its answer.
        type Second = fn() -> (Vec<Frame>, Vec<Frame>);
        let cases: [(&str, &str, Second); 4] = [
            ("a named statement prepared again", "d", || {
                (
                    vec![parse("d", "SELECT 1")],
                    vec![error("42P05", "prepared statement \"d\" already exists")],
                )
            }),
            (
                "a named statement prepared again as another held one",
                "d",
                || {
                    (
                        vec![parse("d", "DELETE FROM held WHERE id = 1")],
                        vec![error("42P05", "prepared statement \"d\" already exists")],
                    )
                },
            ),
            ("a Close skipped after an error", "d", || {
                (
                    vec![parse("x", "SELECT * FROM missing"), close("d")],
                    vec![error("42P01", "relation \"missing\" does not exist")],
                )
            }),
            ("the unnamed statement's Parse skipped after an error", "", || {
                (
                    vec![parse("x", "SELECT * FROM missing"), parse("", "SELECT 1")],
                    vec![error("42P01", "relation \"missing\" does not exist")],
                )
            }),
        ];
        for (case, name, second) in cases {
            let metrics = Metrics::new();
            let (mut proxy_client, mut client, mut proxy_server, mut server) = link();
            let (asked, mut asks) = mpsc::unbounded_channel();
            let mut judge = Holder { asked };
            let settings = Settings {
                idle_timeout: Duration::ZERO,
                metrics: &metrics,
                cancel: None,
                read_only: false,
            };
            let relaying = relay(
                &mut proxy_client,
                &mut proxy_server,
                &mut judge,
                "t",
                settings,
                None,
            );
            let script = async {
                // The server prepares the statement that needs approval.
                client.feed(parse(name, "DELETE FROM held")).await.unwrap();
                client.send(Sync.to_frame().unwrap()).await.unwrap();
                serve(&mut server, 2, vec![parse_complete()]).await;
                client.next().await.unwrap().unwrap();
                client.next().await.unwrap().unwrap();
                // A segment that leaves it in place on the server.
                let (frames, answers) = second();
                let count = frames.len() + 1;
                for frame in frames {
                    client.feed(frame).await.unwrap();
                }
                client.send(Sync.to_frame().unwrap()).await.unwrap();
                let tags = serve(&mut server, count, answers).await;
                assert_eq!(tags.last(), Some(&tag::frontend::SYNC), "{case}");
                // The client reads the error (perhaps the relay's refusal) and ReadyForQuery.
                loop {
                    let frame = client.next().await.unwrap().unwrap();
                    if frame.tag() == tag::backend::READY_FOR_QUERY {
                        break;
                    }
                }
                // Then binds the name: the server would run the held statement.
                client.feed(bind(name)).await.unwrap();
                client
                    .feed(
                        Execute {
                            portal: String::new(),
                            max_rows: 0,
                        }
                        .to_frame()
                        .unwrap(),
                    )
                    .await
                    .unwrap();
                client.send(Sync.to_frame().unwrap()).await.unwrap();
                tokio::select! {
                    frame = server.next() => {
                        let frame = frame.unwrap().unwrap();
                        assert_ne!(
                            frame.tag(),
                            tag::frontend::BIND,
                            "{case}: the held statement was bound without approval"
                        );
                    }
                    asked = asks.recv() => {
                        let (sql, ..) = asked.unwrap();
                        assert_eq!(
                            sql, "DELETE FROM held",
                            "{case}: the approver would see another statement than the one the server runs"
                        );
                    }
                }
                drop(client);
            };
            let (ended, ()) = tokio::join!(relaying, script);
            assert_eq!(ended.unwrap(), Ended::ClientClosed, "{case}");
        }
    }

    /// A simple Query the server would skip without an answer (after an
    /// error earlier in an unsynced pipeline) would make the relay take
    /// each later answer for the one before: the session closes instead.
    #[tokio::test]
    async fn a_query_inside_an_unsynced_pipeline_closes_the_session() {
        let metrics = Metrics::new();
        let (mut proxy_client, mut client, mut proxy_server, mut server) = link();
        let (asked, _asks) = mpsc::unbounded_channel();
        let mut judge = Holder { asked };
        let settings = quiet(&metrics);
        let relaying = relay(
            &mut proxy_client,
            &mut proxy_server,
            &mut judge,
            "t",
            settings,
            None,
        );
        let script = async {
            client.feed(parse("", "DELETE FROM held")).await.unwrap();
            client.send(Sync.to_frame().unwrap()).await.unwrap();
            serve(&mut server, 2, vec![parse_complete()]).await;
            client.feed(parse("x", "SELECT * FROM missing")).await.unwrap();
            client
                .send(Query::new("SELECT 1").to_frame().unwrap())
                .await
                .unwrap();
            client
        };
        let (ended, _client) = tokio::join!(relaying, script);
        assert!(
            matches!(ended, Err(ProtocolError::UnsyncedPipeline { message: "Query" })),
            "{ended:?}"
        );
    }

    /// A Bind the judge refuses (of a statement prepared in SQL) never
    /// reaches the server: a marker fails in its place.
    #[tokio::test]
    async fn a_bind_the_judge_refuses_is_refused() {
        let metrics = Metrics::new();
        let (mut proxy_client, mut client, mut proxy_server, mut server) = link();
        let (asked, _asks) = mpsc::unbounded_channel();
        let mut judge = Holder { asked };
        let settings = quiet(&metrics);
        let relaying = relay(
            &mut proxy_client,
            &mut proxy_server,
            &mut judge,
            "t",
            settings,
            None,
        );
        let script = async {
            client.feed(bind("wipe")).await.unwrap();
            client.send(Sync.to_frame().unwrap()).await.unwrap();
            let stand_in = Parse::decode(&server.next().await.unwrap().unwrap()).unwrap();
            assert!(
                stand_in.sql.starts_with("SELECT gatehouse_refused_t_"),
                "{stand_in:?}"
            );
            let function = stand_in.sql.trim_start_matches("SELECT ").trim_end_matches("()");
            server
                .send(error("42883", &format!("function {function}() does not exist")))
                .await
                .unwrap();
            let error = ErrorResponse::decode(&client.next().await.unwrap().unwrap()).unwrap();
            assert_eq!(error.fields.message().unwrap(), "refused: wipe");
            drop(client);
        };
        let (ended, ()) = tokio::join!(relaying, script);
        assert_eq!(ended.unwrap(), Ended::ClientClosed);
    }

    /// What replaces a held statement does, once the server has it: a
    /// Bind in the same segment as the Parse, or after the server
    /// answered it, runs unheld.
    #[tokio::test]
    async fn a_held_statement_replaced_on_the_server_no_longer_holds() {
        let metrics = Metrics::new();
        let (mut proxy_client, mut client, mut proxy_server, mut server) = link();
        let (asked, _asks) = mpsc::unbounded_channel();
        let mut judge = Holder { asked };
        let settings = quiet(&metrics);
        let relaying = relay(
            &mut proxy_client,
            &mut proxy_server,
            &mut judge,
            "t",
            settings,
            None,
        );
        let script = async {
            for name in ["", "d"] {
                client.feed(parse(name, "DELETE FROM held")).await.unwrap();
                client.send(Sync.to_frame().unwrap()).await.unwrap();
                serve(&mut server, 2, vec![parse_complete()]).await;
                client.next().await.unwrap().unwrap();
                client.next().await.unwrap().unwrap();
            }
            // The unnamed statement parsed again and bound in one segment.
            client.feed(parse("", "SELECT 1")).await.unwrap();
            client.feed(bind("")).await.unwrap();
            client.send(Sync.to_frame().unwrap()).await.unwrap();
            let tags = serve(&mut server, 3, vec![parse_complete()]).await;
            assert_eq!(
                tags,
                [tag::frontend::PARSE, tag::frontend::BIND, tag::frontend::SYNC]
            );
            client.next().await.unwrap().unwrap();
            client.next().await.unwrap().unwrap();
            // A named one closed, then bound once the server confirmed it.
            client.feed(close("d")).await.unwrap();
            client.send(Sync.to_frame().unwrap()).await.unwrap();
            serve(
                &mut server,
                2,
                vec![crate::pg::messages::CloseComplete.to_frame().unwrap()],
            )
            .await;
            client.next().await.unwrap().unwrap();
            client.next().await.unwrap().unwrap();
            client.feed(parse("d", "SELECT 2")).await.unwrap();
            client.send(Sync.to_frame().unwrap()).await.unwrap();
            serve(&mut server, 2, vec![parse_complete()]).await;
            client.next().await.unwrap().unwrap();
            client.next().await.unwrap().unwrap();
            client.send(bind("d")).await.unwrap();
            assert_eq!(server.next().await.unwrap().unwrap().tag(), tag::frontend::BIND);
            drop(client);
        };
        let (ended, ()) = tokio::join!(relaying, script);
        assert_eq!(ended.unwrap(), Ended::ClientClosed);
    }
}
