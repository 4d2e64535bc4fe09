//! The relay: every client frame is forwarded as the bytes it arrived as,
//! except statements the policy refuses.
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

use std::collections::{HashMap, VecDeque};

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;

use crate::pg::{
    Frame, FrameCodec, ProtocolError,
    messages::{ErrorResponse, Message, ParameterStatus, Parse, Query, Severity, Terminate},
    tag,
};
pub use crate::policy::Refusal;

/// What the relay asks the policy about a statement.
pub trait Judge {
    /// `Ok(())` to run `sql`, or the refusal to show instead.
    fn judge_sql(&mut self, sql: &str) -> Result<(), Refusal>;
    /// Whether a protocol-level FunctionCall may run.
    fn judge_function_call(&mut self) -> Result<(), Refusal>;
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

/// Refusals waiting for the server's error on their marker, by nonce.
#[derive(Debug, Default)]
struct Pending {
    markers: HashMap<String, Refusal>,
    /// Markers sent in each response segment (a simple Query, or the
    /// extended-protocol messages up to a Sync): a segment ends with the
    /// server's ReadyForQuery, after which its unfired markers are moot.
    segments: VecDeque<Vec<String>>,
    open: Vec<String>,
}

/// Relays between `client` and `server` until one side ends.
pub async fn relay<C, S>(
    client: &mut Framed<C, FrameCodec>,
    server: &mut Framed<S, FrameCodec>,
    judge: &mut impl Judge,
    session_nonce: &str,
) -> Result<Ended, ProtocolError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut pending = Pending::default();
    let mut counter = 0u64;
    loop {
        tokio::select! {
            frame = client.next() => {
                let Some(frame) = frame else { return Ok(Ended::ClientClosed) };
                let frame = frame?;
                let terminate = frame.tag() == tag::frontend::TERMINATE;
                let outgoing = on_client(frame, judge, &mut pending, || {
                    counter += 1;
                    format!("gatehouse_refused_{session_nonce}_{counter}")
                })?;
                // Feed without flushing while the client has more queued, so a
                // pipeline goes upstream in as few writes as it arrived in.
                server.feed(outgoing).await?;
                if terminate {
                    SinkExt::<Frame>::flush(server).await?;
                    return Ok(Ended::ClientClosed);
                }
                if client.read_buffer().is_empty() {
                    SinkExt::<Frame>::flush(server).await?;
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
                let frame = on_server(frame, &mut pending)?;
                client.feed(frame).await?;
                if server.read_buffer().is_empty() {
                    SinkExt::<Frame>::flush(client).await?;
                }
            }
        }
    }
}

fn marker_sql(marker: &str) -> String {
    format!("SELECT {marker}()")
}

fn on_client(
    frame: Frame,
    judge: &mut impl Judge,
    pending: &mut Pending,
    mut next_marker: impl FnMut() -> String,
) -> Result<Frame, ProtocolError> {
    let mut refuse = |refusal: Refusal, pending: &mut Pending| {
        let marker = next_marker();
        pending.markers.insert(marker.clone(), refusal);
        pending.open.push(marker.clone());
        marker
    };
    match frame.tag() {
        tag::frontend::QUERY => {
            let query = Query::decode(&frame)?;
            let out = match judge.judge_sql(&query.sql) {
                Ok(()) => frame,
                Err(refusal) => Query::new(marker_sql(&refuse(refusal, pending))).to_frame()?,
            };
            // A simple Query is a segment of its own.
            pending.segments.push_back(std::mem::take(&mut pending.open));
            Ok(out)
        }
        tag::frontend::PARSE => {
            let parse = Parse::decode(&frame)?;
            match judge.judge_sql(&parse.sql) {
                Ok(()) => Ok(frame),
                Err(refusal) => {
                    let marker = refuse(refusal, pending);
                    Parse {
                        statement: parse.statement,
                        sql: marker_sql(&marker),
                        param_types: Vec::new(),
                    }
                    .to_frame()
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
            pending.segments.push_back(std::mem::take(&mut pending.open));
            Ok(out)
        }
        tag::frontend::SYNC => {
            pending.segments.push_back(std::mem::take(&mut pending.open));
            Ok(frame)
        }
        _ => Ok(frame),
    }
}

fn on_server(frame: Frame, pending: &mut Pending) -> Result<Frame, ProtocolError> {
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
                for marker in segment {
                    pending.markers.remove(&marker);
                }
            }
            Ok(frame)
        }
        _ => Ok(frame),
    }
}
