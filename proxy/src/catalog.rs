//! The database's catalog, as the proxy reads it for itself: what every
//! function and operator a statement calls is (see
//! [`policy::judge_calls`](crate::policy::judge_calls) for the rule).
//!
//! The proxy opens one session of its own to the target, with its own
//! credential, read-only, and asks for the names statements call the first
//! time they appear and again once the answer is [`FRESH_FOR`] old. A name
//! the catalog does not hold is asked for again at its next use, so a
//! function created a moment ago is found; the answer is not kept. When the
//! catalog cannot be read, nothing is vouched for: every call counts as a
//! side effect until it can.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use postgres_types::{ToSql, Type};
use tokio_util::codec::Framed;

use crate::pg::messages::{Bind, DataRow, ErrorResponse, Execute, Format, Message, Parse, Query, Sync};
use crate::pg::{FrameCodec, StartupMessage, tag};
use crate::policy::{CatalogView, Classification, OperatorRow, Routine, Volatility, judge_calls};
use crate::server::Runtime;
use crate::session::upstream;
use crate::tls::ServerStream;

/// How long an answer from the catalog is used before it is asked again,
/// so that a function changed by someone else (`ALTER FUNCTION ...
/// VOLATILE`) is seen within this time.
pub const FRESH_FOR: Duration = Duration::from_secs(60);

/// How long a lookup may take before the calls it was for count as not
/// vouched for.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Every routine and operator of the names asked for, one row each.
///
/// `f` rows give the routine's argument count and how many of them have no
/// default, its own volatility followed by its aggregate support
/// functions' (PostgreSQL marks every aggregate IMMUTABLE whatever its
/// state function does), and its extension, for C and internal functions
/// only: only a superuser can create those, while the owner of a trusted
/// extension can add any SQL or PL/pgSQL function to it. Functions that
/// take an `internal` argument are left out: SQL cannot call them (index,
/// table-sample and planner support), and a column named like one
/// (`system`) is no call.
///
/// `o` rows give the volatility of the operator's function followed by its
/// negator's, its commutator's and the commutator's negator's: the planner
/// rewrites `NOT (a = b)` with the negator and may swap the sides with the
/// commutator, so they run where the statement names only the operator. A
/// shell operator (no function yet) has none.
///
/// Every name is schema-qualified: the session's search_path is set too,
/// but the query does not depend on it.
const LOOKUP_SQL: &str = "\
SELECT 'f', p.proname::pg_catalog.text, n.nspname::pg_catalog.text, p.pronargs::pg_catalog.text,
       (p.pronargs OPERATOR(pg_catalog.-) p.pronargdefaults)::pg_catalog.text,
       p.provolatile::pg_catalog.text || COALESCE((
           SELECT pg_catalog.string_agg(s.provolatile::pg_catalog.text, '')
           FROM pg_catalog.pg_proc s
           WHERE s.oid OPERATOR(pg_catalog.=) ANY (ARRAY[a.aggtransfn, a.aggfinalfn, a.aggcombinefn,
               a.aggserialfn, a.aggdeserialfn, a.aggmtransfn, a.aggminvtransfn, a.aggmfinalfn]::pg_catalog.oid[])), ''),
       CASE WHEN l.lanname OPERATOR(pg_catalog.=) ANY (ARRAY['c', 'internal']::pg_catalog.name[])
            THEN e.extname::pg_catalog.text END
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace
JOIN pg_catalog.pg_language l ON l.oid OPERATOR(pg_catalog.=) p.prolang
LEFT JOIN pg_catalog.pg_aggregate a ON a.aggfnoid OPERATOR(pg_catalog.=) p.oid
LEFT JOIN pg_catalog.pg_depend d ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
    AND d.objid OPERATOR(pg_catalog.=) p.oid AND d.deptype OPERATOR(pg_catalog.=) 'e'
LEFT JOIN pg_catalog.pg_extension e ON e.oid OPERATOR(pg_catalog.=) d.refobjid
WHERE p.proname::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[])
  AND NOT ('pg_catalog.internal'::pg_catalog.regtype::pg_catalog.oid OPERATOR(pg_catalog.=)
           ANY (p.proargtypes::pg_catalog.oid[]))
UNION ALL
SELECT 'o', o.oprname::pg_catalog.text, n.nspname::pg_catalog.text, NULL, NULL,
       p.provolatile::pg_catalog.text || COALESCE((
           SELECT pg_catalog.string_agg(q.provolatile::pg_catalog.text, '')
           FROM pg_catalog.pg_operator r
           JOIN pg_catalog.pg_proc q ON q.oid OPERATOR(pg_catalog.=) r.oprcode
           WHERE r.oid OPERATOR(pg_catalog.=) ANY (ARRAY[o.oprnegate, o.oprcom, c.oprnegate]::pg_catalog.oid[])), ''),
       NULL
FROM pg_catalog.pg_operator o
JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) o.oprnamespace
LEFT JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) o.oprcode
LEFT JOIN pg_catalog.pg_operator c ON c.oid OPERATOR(pg_catalog.=) o.oprcom
WHERE o.oprname::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($2::pg_catalog.text[])";

/// What the session runs once, before any lookup.
const SESSION_SQL: &str = "SET search_path = pg_catalog, pg_temp; SET statement_timeout = '5s'";

/// An answer kept with when it was given.
#[derive(Debug)]
struct Kept<T> {
    rows: Arc<[T]>,
    at: Instant,
}

#[derive(Debug, Default)]
struct Known {
    /// The target the answers are from: (host, port, database).
    target: Option<(String, u16, String)>,
    functions: HashMap<String, Kept<Routine>>,
    operators: HashMap<String, Kept<OperatorRow>>,
}

/// The proxy's view of the target's catalog, shared by every session.
#[derive(Debug, Default)]
pub struct Catalog {
    known: RwLock<Known>,
    /// The proxy's own session to the target, opened at the first lookup
    /// and again after a failure. Lookups take turns on it.
    session: tokio::sync::Mutex<Option<Framed<ServerStream, FrameCodec>>>,
}

/// The answers one judgement uses.
#[derive(Debug, Default)]
struct Answers {
    functions: HashMap<String, Arc<[Routine]>>,
    operators: HashMap<String, Arc<[OperatorRow]>>,
}

impl CatalogView for Answers {
    fn routines(&self, name: &str) -> Option<&[Routine]> {
        self.functions.get(name).map(|r| &**r)
    }

    fn operators(&self, name: &str) -> Option<&[OperatorRow]> {
        self.operators.get(name).map(|r| &**r)
    }
}

/// Why a lookup failed; said in the proxy's log (never holds a credential).
#[derive(Debug, thiserror::Error)]
enum LookupError {
    #[error(transparent)]
    Connect(#[from] upstream::UpstreamError),
    #[error(transparent)]
    Protocol(#[from] crate::pg::ProtocolError),
    #[error("the database answered the catalog lookup with SQLSTATE {code}: {message}")]
    Server { code: String, message: String },
    #[error("the database closed the proxy's catalog session")]
    Closed,
    #[error("the catalog lookup took longer than {LOOKUP_TIMEOUT:?}")]
    Timeout,
    #[error("the catalog lookup returned an unreadable row")]
    Row,
    #[error("cannot encode the names to look up: {0}")]
    Encode(String),
}

impl Catalog {
    /// `classification` with its calls judged against the target's catalog
    /// (see [`judge_calls`]). A classification that calls nothing comes
    /// back as it is.
    pub async fn judge(&self, runtime: &Runtime, classification: Classification) -> Classification {
        let mut functions = HashSet::new();
        let mut operators = HashSet::new();
        for stmt in &classification.statements {
            functions.extend(stmt.functions.iter().map(|f| f.name.as_str()));
            functions.extend(stmt.attribute_calls.iter().map(|f| f.name.as_str()));
            operators.extend(stmt.operators.iter().map(|o| o.name.as_str()));
        }
        if functions.is_empty() && operators.is_empty() {
            return classification;
        }
        let answers = self.answers(runtime, &functions, &operators).await;
        judge_calls(&classification, &answers)
    }

    /// The answers for `functions` and `operators`, from what is known and
    /// fresh, and from the catalog for the rest. A name whose lookup failed
    /// has no answer, which [`judge_calls`] takes as "catalog unavailable".
    async fn answers(
        &self,
        runtime: &Runtime,
        functions: &HashSet<&str>,
        operators: &HashSet<&str>,
    ) -> Answers {
        let upstream = &runtime.config.upstream;
        let target = (upstream.host.clone(), upstream.port, upstream.database.clone());
        let mut answers = Answers::default();
        let (mut missing_f, mut missing_o) = self.known_answers(&target, functions, operators, &mut answers);
        if missing_f.is_empty() && missing_o.is_empty() {
            return answers;
        }
        let mut session = self.session.lock().await;
        // Another session may have asked for the same names meanwhile.
        (missing_f, missing_o) = self.known_answers(&target, &missing_f, &missing_o, &mut answers);
        if missing_f.is_empty() && missing_o.is_empty() {
            return answers;
        }
        let looked_up = tokio::time::timeout(
            LOOKUP_TIMEOUT,
            lookup(&mut session, runtime, &missing_f, &missing_o),
        )
        .await
        .unwrap_or(Err(LookupError::Timeout));
        let (found_f, found_o) = match looked_up {
            Ok(found) => found,
            Err(error) => {
                // The session's state is unknown after a failure: a new one next time.
                *session = None;
                tracing::warn!(%error, "cannot read the database's catalog; calls of functions and operators it would vouch for are refused until it can");
                return answers;
            }
        };
        drop(session);
        let now = Instant::now();
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        if known.target.as_ref() != Some(&target) {
            *known = Known {
                target: Some(target),
                ..Known::default()
            };
        }
        for name in missing_f {
            let rows: Arc<[Routine]> = found_f.get(name).cloned().unwrap_or_default().into();
            // A name with no routine is not kept: it is asked again at its
            // next use, so that a function created since is found.
            if !rows.is_empty() {
                known.functions.insert(
                    name.to_owned(),
                    Kept {
                        rows: rows.clone(),
                        at: now,
                    },
                );
            }
            answers.functions.insert(name.to_owned(), rows);
        }
        for name in missing_o {
            let rows: Arc<[OperatorRow]> = found_o.get(name).cloned().unwrap_or_default().into();
            if !rows.is_empty() {
                known.operators.insert(
                    name.to_owned(),
                    Kept {
                        rows: rows.clone(),
                        at: now,
                    },
                );
            }
            answers.operators.insert(name.to_owned(), rows);
        }
        answers
    }

    /// Fills `answers` with what is known and fresh for `target`; returns the
    /// names still missing.
    fn known_answers<'n>(
        &self,
        target: &(String, u16, String),
        functions: &HashSet<&'n str>,
        operators: &HashSet<&'n str>,
        answers: &mut Answers,
    ) -> (HashSet<&'n str>, HashSet<&'n str>) {
        let known = self.known.read().unwrap_or_else(|p| p.into_inner());
        if known.target.as_ref() != Some(target) {
            return (functions.clone(), operators.clone());
        }
        let fresh = |at: Instant| at.elapsed() < FRESH_FOR;
        let mut missing_f = HashSet::new();
        for name in functions {
            match known.functions.get(*name) {
                Some(kept) if fresh(kept.at) => {
                    answers.functions.insert((*name).to_owned(), kept.rows.clone());
                }
                _ => {
                    missing_f.insert(*name);
                }
            }
        }
        let mut missing_o = HashSet::new();
        for name in operators {
            match known.operators.get(*name) {
                Some(kept) if fresh(kept.at) => {
                    answers.operators.insert((*name).to_owned(), kept.rows.clone());
                }
                _ => {
                    missing_o.insert(*name);
                }
            }
        }
        (missing_f, missing_o)
    }
}

type Found = (HashMap<String, Vec<Routine>>, HashMap<String, Vec<OperatorRow>>);

/// Looks `functions` and `operators` up, opening the session first if
/// there is none.
async fn lookup(
    session: &mut Option<Framed<ServerStream, FrameCodec>>,
    runtime: &Runtime,
    functions: &HashSet<&str>,
    operators: &HashSet<&str>,
) -> Result<Found, LookupError> {
    let conn = match session {
        Some(conn) => conn,
        None => session.insert(open(runtime).await?),
    };
    let array = |names: &HashSet<&str>| -> Result<bytes::Bytes, LookupError> {
        let names: Vec<&str> = names.iter().copied().collect();
        let mut buf = BytesMut::new();
        names
            .to_sql(&Type::TEXT_ARRAY, &mut buf)
            .map_err(|e| LookupError::Encode(e.to_string()))?;
        Ok(buf.freeze())
    };
    conn.send(
        Parse {
            statement: String::new(),
            sql: LOOKUP_SQL.to_owned(),
            param_types: vec![Type::TEXT_ARRAY.oid(), Type::TEXT_ARRAY.oid()],
        }
        .to_frame()?,
    )
    .await?;
    conn.send(
        Bind {
            portal: String::new(),
            statement: String::new(),
            param_formats: vec![Format::Binary],
            params: vec![Some(array(functions)?), Some(array(operators)?)],
            result_formats: vec![Format::Text],
        }
        .to_frame()?,
    )
    .await?;
    conn.send(
        Execute {
            portal: String::new(),
            max_rows: 0,
        }
        .to_frame()?,
    )
    .await?;
    conn.send(Sync.to_frame()?).await?;
    let mut found: Found = Default::default();
    let mut failed = None;
    loop {
        let frame = conn.next().await.ok_or(LookupError::Closed)??;
        match frame.tag() {
            tag::backend::DATA_ROW => {
                let row = DataRow::decode(&frame)?;
                read_row(&row, &mut found)?;
            }
            tag::backend::ERROR_RESPONSE => failed = Some(server_error(&frame)?),
            tag::backend::READY_FOR_QUERY => break,
            _ => {}
        }
    }
    match failed {
        Some(error) => Err(error),
        None => Ok(found),
    }
}

/// One row of [`LOOKUP_SQL`] into `found`.
fn read_row(row: &DataRow, found: &mut Found) -> Result<(), LookupError> {
    let cells: Vec<Option<String>> = row
        .cells()
        .map(|c| c.map(|b| String::from_utf8_lossy(&b).into_owned()))
        .collect();
    let [
        Some(kind),
        Some(name),
        Some(schema),
        arity,
        required,
        volatility,
        extension,
    ] = <[Option<String>; 7]>::try_from(cells).map_err(|_| LookupError::Row)?
    else {
        return Err(LookupError::Row);
    };
    // The worst of the codes given; none (a shell operator) is `None`.
    let worst = volatility
        .as_deref()
        .and_then(|codes| codes.chars().map(Volatility::from_code).max());
    match kind.as_str() {
        "f" => found.0.entry(name).or_default().push(Routine {
            schema,
            arity: arity.and_then(|a| a.parse().ok()).ok_or(LookupError::Row)?,
            required: required.and_then(|a| a.parse().ok()).ok_or(LookupError::Row)?,
            volatility: worst.unwrap_or(Volatility::Volatile),
            extension,
        }),
        "o" => found.1.entry(name).or_default().push(OperatorRow {
            schema,
            volatility: worst,
        }),
        _ => return Err(LookupError::Row),
    }
    Ok(())
}

fn server_error(frame: &crate::pg::Frame) -> Result<LookupError, LookupError> {
    let error = ErrorResponse::decode(frame)?;
    Ok(LookupError::Server {
        code: error.fields.code().map(|c| c.into_owned()).unwrap_or_default(),
        message: error.fields.message().map(|m| m.into_owned()).unwrap_or_default(),
    })
}

/// Opens the proxy's catalog session: the target, database and credential
/// of client sessions, read-only, with a search_path of pg_catalog only.
async fn open(runtime: &Runtime) -> Result<Framed<ServerStream, FrameCodec>, LookupError> {
    let startup = StartupMessage::new([
        ("application_name", "gatehouse catalog"),
        ("client_encoding", "UTF8"),
    ]);
    let session = upstream::connect(
        &runtime.config.upstream,
        runtime.upstream_tls.as_ref(),
        &startup,
        true,
    )
    .await?;
    let mut conn = session.conn;
    conn.send(Query::new(SESSION_SQL).to_frame()?).await?;
    let mut failed = None;
    loop {
        let frame = conn.next().await.ok_or(LookupError::Closed)??;
        match frame.tag() {
            tag::backend::ERROR_RESPONSE => failed = Some(server_error(&frame)?),
            tag::backend::READY_FOR_QUERY => break,
            _ => {}
        }
    }
    match failed {
        Some(error) => Err(error),
        None => Ok(conn),
    }
}
