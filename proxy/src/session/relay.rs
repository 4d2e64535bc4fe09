//! The relay: every client frame is forwarded as the bytes it arrived as,
//! except statements the policy refuses; what the server sends back goes
//! through masking ([`crate::mask::stream`], which may add a Describe before
//! an Execute) and, when the session is recorded, onto its tape.
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

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use futures::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::Instant,
};
use tokio_util::codec::Framed;

pub use crate::policy::Refusal;
use crate::{
    mask::{rows::Masker, stream::ResultMasking},
    metrics::{ByteDirection, Metrics},
    pg::{
        Frame, FrameCodec, ProtocolError,
        messages::{ErrorResponse, Message, ParameterStatus, Parse, Query, Severity, Terminate},
        sqlstate, tag,
    },
    policy::Classification,
    record::Tape,
};

/// What the relay asks the policy about a statement.
pub trait Judge {
    /// The classification of `sql` when it may run, or the refusal to show
    /// instead.
    fn judge_sql(&mut self, sql: &str) -> Result<Arc<Classification>, Refusal>;
    /// Whether a protocol-level FunctionCall may run.
    fn judge_function_call(&mut self) -> Result<(), Refusal>;
    /// The masker in force for the session now, if any.
    fn masker(&mut self) -> Option<Arc<Masker>> {
        None
    }
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

/// Why a ParameterStatus frame ends the session, if it does.
pub fn unsafe_parameter(frame: &Frame) -> Option<String> {
    if frame.tag() != tag::backend::PARAMETER_STATUS {
        return None;
    }
    match ParameterStatus::decode(frame) {
        Ok(status) => super::params::check(&status.name, &status.value).err(),
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
}

/// A response segment sent to the server and not yet answered with its
/// ReadyForQuery.
#[derive(Debug)]
struct Segment {
    /// Refusal markers sent in it.
    markers: Vec<String>,
    /// When its first message arrived from the client.
    started: Instant,
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
            markers: std::mem::take(&mut self.open),
            started,
        });
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
    mut tape: Option<&mut Tape>,
) -> Result<Ended, ProtocolError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut pending = Pending::default();
    let mut results = ResultMasking::new();
    let mut counter = 0u64;
    let mut bytes = ByteCounts {
        metrics: settings.metrics,
        to_server: 0,
        to_client: 0,
    };
    let idle_timeout = settings.idle_timeout;
    let mut last_batch = Instant::now();
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            frame = client.next() => {
                let Some(frame) = frame else { return Ok(Ended::ClientClosed) };
                let frame = frame?;
                let terminate = frame.tag() == tag::frontend::TERMINATE;
                if !pending.server_owes_answer() && starts_segment(frame.tag()) {
                    // Between round trips: a changed masking takes effect.
                    results.set_masker(judge.masker());
                }
                let (before, outgoing) = on_client(frame, judge, &mut pending, &mut results, tape.as_deref_mut(), || {
                    counter += 1;
                    format!("gatehouse_refused_{session_nonce}_{counter}")
                })?;
                // Feed without flushing while the client has more queued, so a
                // pipeline goes upstream in as few writes as it arrived in.
                if let Some(before) = before {
                    bytes.to_server += before.wire_len() as u64;
                    server.feed(before).await?;
                }
                bytes.to_server += outgoing.wire_len() as u64;
                server.feed(outgoing).await?;
                if terminate {
                    SinkExt::<Frame>::flush(server).await?;
                    return Ok(Ended::ClientClosed);
                }
                if client.read_buffer().is_empty() {
                    SinkExt::<Frame>::flush(server).await?;
                    bytes.flush();
                    last_batch = Instant::now();
                }
            }
            frame = server.next() => {
                let Some(frame) = frame else { return Ok(Ended::ServerClosed) };
                let frame = frame?;
                if let Some(why) = unsafe_parameter(&frame) {
                    tracing::warn!(reason = %why, "closing a session the policy can no longer read safely");
                    let fatal = ErrorResponse::new(Severity::Fatal, "0A000", format!("Gatehouse: {why}"));
                    client.send(fatal.to_frame()?).await?;
                    server.send(Terminate.to_frame()?).await?;
                    return Ok(Ended::UnsafeParameter);
                }
                let frame = on_server(frame, &mut pending, settings.metrics)?;
                let reply = results.on_server(frame, settings.metrics)?;
                if let Some(frame) = reply.to_server {
                    bytes.to_server += frame.wire_len() as u64;
                    server.send(frame).await?;
                }
                if let Some(frame) = reply.to_client {
                    if let Some(tape) = tape.as_deref_mut() {
                        tape.on_server(&frame);
                    }
                    bytes.to_client += frame.wire_len() as u64;
                    client.feed(frame).await?;
                }
                if server.read_buffer().is_empty() {
                    SinkExt::<Frame>::flush(client).await?;
                    bytes.flush();
                    last_batch = Instant::now();
                }
            }
            () = &mut idle, if !idle_timeout.is_zero() => {
                let now = Instant::now();
                if deadline(last_batch, idle_timeout) > now {
                    idle.as_mut().reset(deadline(last_batch, idle_timeout));
                } else if pending.server_owes_answer() {
                    // A long-running statement: look again a period later.
                    idle.as_mut().reset(deadline(now, idle_timeout));
                } else {
                    close_idle(client, server, idle_timeout).await?;
                    return Ok(Ended::IdleTimeout);
                }
            }
        }
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

/// The frame to forward for a client frame, and one to send before it
/// (the masking's Describe before an Execute).
fn on_client(
    frame: Frame,
    judge: &mut impl Judge,
    pending: &mut Pending,
    results: &mut ResultMasking,
    mut tape: Option<&mut Tape>,
    next_marker: impl FnMut() -> String,
) -> Result<(Option<Frame>, Frame), ProtocolError> {
    let (frame, classification) = judged(frame, judge, pending, tape.as_deref_mut(), next_marker)?;
    let before = results.on_client(&frame, classification.as_deref())?;
    if let Some(tape) = tape {
        tape.on_client(&frame);
    }
    Ok((before, frame))
}

/// The frame to forward for a client frame (a refused statement's marker
/// in place of the statement), with the policy's classification of an
/// allowed Query or Parse.
fn judged(
    frame: Frame,
    judge: &mut impl Judge,
    pending: &mut Pending,
    mut tape: Option<&mut Tape>,
    mut next_marker: impl FnMut() -> String,
) -> Result<(Frame, Option<Arc<Classification>>), ProtocolError> {
    if pending.open_since.is_none() && starts_segment(frame.tag()) {
        pending.open_since = Some(Instant::now());
    }
    let mut refuse = |refusal: Refusal, pending: &mut Pending| {
        let marker = next_marker();
        pending.markers.insert(marker.clone(), refusal);
        pending.open.push(marker.clone());
        marker
    };
    match frame.tag() {
        tag::frontend::QUERY => {
            let query = Query::decode(&frame)?;
            let verdict = judge.judge_sql(&query.sql);
            if let Some(tape) = tape.as_deref_mut() {
                tape.statement(None, &query.sql, verdict.as_ref().map(drop));
            }
            let out = match verdict {
                Ok(classification) => (frame, Some(classification)),
                Err(refusal) => (
                    Query::new(marker_sql(&refuse(refusal, pending))).to_frame()?,
                    None,
                ),
            };
            // A simple Query is a segment of its own.
            pending.close_segment();
            Ok(out)
        }
        tag::frontend::PARSE => {
            let parse = Parse::decode(&frame)?;
            let verdict = judge.judge_sql(&parse.sql);
            if let Some(tape) = tape {
                tape.statement(Some(&parse.statement), &parse.sql, verdict.as_ref().map(drop));
            }
            match verdict {
                Ok(classification) => Ok((frame, Some(classification))),
                Err(refusal) => {
                    let marker = refuse(refusal, pending);
                    let marker = Parse {
                        statement: parse.statement,
                        sql: marker_sql(&marker),
                        param_types: Vec::new(),
                    }
                    .to_frame()?;
                    Ok((marker, None))
                }
            }
        }
        tag::frontend::FUNCTION_CALL => {
            let out = match judge.judge_function_call() {
                Ok(()) => frame,
                // A FunctionCall answers with a result and ReadyForQuery; a
                // failing Query answers with an error and ReadyForQuery.
                Err(refusal) => Query::new(marker_sql(&refuse(refusal, pending))).to_frame()?,
            };
            pending.close_segment();
            Ok((out, None))
        }
        tag::frontend::SYNC => {
            pending.close_segment();
            Ok((frame, None))
        }
        _ => Ok((frame, None)),
    }
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

fn on_server(frame: Frame, pending: &mut Pending, metrics: &Metrics) -> Result<Frame, ProtocolError> {
    match frame.tag() {
        tag::backend::ERROR_RESPONSE if !pending.markers.is_empty() => {
            let error = ErrorResponse::decode(&frame)?;
            let message = error.fields.message().unwrap_or_default();
            let fired = pending
                .markers
                .keys()
                .find(|m| message.contains(m.as_str()))
                .cloned();
            match fired.and_then(|m| pending.markers.remove(&m)) {
                Some(refusal) => refusal_frame(&refusal),
                None => Ok(frame),
            }
        }
        tag::backend::READY_FOR_QUERY => {
            if let Some(segment) = pending.segments.pop_front() {
                for marker in segment.markers {
                    pending.markers.remove(&marker);
                }
                metrics
                    .statement_duration
                    .observe(segment.started.elapsed().as_secs_f64());
            }
            Ok(frame)
        }
        _ => Ok(frame),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{DuplexStream, duplex};

    use super::*;
    use crate::pg::messages::{CommandComplete, ReadyForQuery, TransactionStatus};

    struct AllowAll;

    impl Judge for AllowAll {
        fn judge_sql(&mut self, _: &str) -> Result<Arc<Classification>, Refusal> {
            Ok(Arc::default())
        }
        fn judge_function_call(&mut self) -> Result<(), Refusal> {
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

    fn settings(metrics: &Metrics, idle: Duration) -> Settings<'_> {
        Settings {
            idle_timeout: idle,
            metrics,
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
