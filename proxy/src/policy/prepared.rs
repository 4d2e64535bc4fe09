//! The prepared statements of one session, so that `EXECUTE name` is decided
//! as the statement it runs.

use std::collections::HashMap;
use std::sync::Arc;

use gatehouse_crds::policy::Operation;

use super::{Classification, ClassifyError, PreparedEffect, Statement, StatementBuilder};

/// How many prepared statements a session may have recorded. Past it, new
/// names are not recorded, so `EXECUTE` of them is refused (fail closed);
/// the proxy's memory stays bounded whatever a client prepares.
pub const MAX_PREPARED_STATEMENTS: usize = 10_000;

/// How deep `EXECUTE` may chain through prepared statements (a protocol-level
/// statement may itself be `EXECUTE other`).
const MAX_EXECUTE_DEPTH: u8 = 4;

/// The prepared statements of one session, by name, each with the
/// classification of the statement it runs.
///
/// SQL-level `PREPARE` and protocol-level Parse share one namespace in
/// PostgreSQL (`EXECUTE` runs either), so the protocol layer records named
/// Parse messages here too, with [`PreparedStatements::insert`].
///
/// Record only what the server has accepted: [`PreparedStatements::resolve`]
/// is pure, and [`PreparedStatements::commit`] applies a statement's effect
/// once the server has run it. An entry the server does not have is harmless
/// (its `EXECUTE` fails on the server); an entry that differs from the
/// server's would not be, which is why an existing name is never overwritten
/// (PostgreSQL refuses to prepare a name twice, so the first one stays).
#[derive(Debug, Clone, Default)]
pub struct PreparedStatements {
    map: HashMap<String, Arc<Statement>>,
}

impl PreparedStatements {
    /// An empty set, as a new session has.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many prepared statements are recorded.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether none is recorded.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The classification recorded under `name`.
    pub fn get(&self, name: &str) -> Option<&Statement> {
        self.map.get(name).map(|s| &**s)
    }

    /// Records `statement` under `name` once the server has prepared it.
    /// Returns `false`, recording nothing, when the name is taken or the
    /// session has [`MAX_PREPARED_STATEMENTS`].
    pub fn insert(&mut self, name: impl Into<String>, statement: Statement) -> bool {
        let name = name.into();
        if self.map.contains_key(&name) || self.map.len() >= MAX_PREPARED_STATEMENTS {
            return false;
        }
        self.map.insert(name, Arc::new(statement));
        true
    }

    /// Forgets `name` (`DEALLOCATE name`, protocol Close). Returns whether it
    /// was recorded.
    pub fn remove(&mut self, name: &str) -> bool {
        self.map.remove(name).is_some()
    }

    /// Forgets every prepared statement (`DEALLOCATE ALL`, `DISCARD ALL`).
    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// The classification to decide: every `EXECUTE` (and `EXPLAIN
    /// EXECUTE`, `CREATE TABLE AS EXECUTE`) takes the class of the statement
    /// prepared under its name, as the session will have it when the
    /// statement runs, counting `PREPARE` and `DEALLOCATE` earlier in the same
    /// query. Nothing is recorded.
    ///
    /// # Errors
    ///
    /// [`ClassifyError::UnknownPrepared`] for a name the session does not
    /// have: the statement is refused.
    pub fn resolve(&self, classification: &Classification) -> Result<Classification, ClassifyError> {
        let mut view = View {
            base: &self.map,
            overlay: HashMap::new(),
            cleared: false,
        };
        let mut statements = Vec::with_capacity(classification.statements.len());
        for stmt in &classification.statements {
            statements.push(resolve_statement(stmt, &view, 0)?);
            if let Some(effect) = &stmt.prepared {
                view.apply(effect);
            }
        }
        Ok(Classification { statements })
    }

    /// Applies one statement's effect (`PREPARE`, `DEALLOCATE`, `DISCARD
    /// ALL`) once the server has run it successfully.
    pub fn commit(&mut self, statement: &Statement) {
        match &statement.prepared {
            Some(PreparedEffect::Prepare { name, statement }) => {
                self.insert(name.clone(), (**statement).clone());
            }
            Some(PreparedEffect::Deallocate { name }) => {
                self.remove(name);
            }
            Some(PreparedEffect::DeallocateAll) => self.clear(),
            None => {}
        }
    }

    /// [`resolve`](Self::resolve), then [`commit`](Self::commit) every
    /// statement: for a caller that forwards a query only when all of it is
    /// allowed and learns its outcome as a whole.
    ///
    /// # Errors
    ///
    /// As [`resolve`](Self::resolve); nothing is recorded then.
    pub fn apply(&mut self, classification: &Classification) -> Result<Classification, ClassifyError> {
        let resolved = self.resolve(classification)?;
        for stmt in &classification.statements {
            self.commit(stmt);
        }
        Ok(resolved)
    }
}

/// The recorded statements as a query sees them part-way through.
struct View<'a> {
    base: &'a HashMap<String, Arc<Statement>>,
    /// Names prepared (`Some`) or deallocated (`None`) earlier in the query.
    overlay: HashMap<String, Option<Statement>>,
    /// `DEALLOCATE ALL` earlier in the query.
    cleared: bool,
}

impl View<'_> {
    fn get(&self, name: &str) -> Option<&Statement> {
        match self.overlay.get(name) {
            Some(entry) => entry.as_ref(),
            None if self.cleared => None,
            None => self.base.get(name).map(|s| &**s),
        }
    }

    fn apply(&mut self, effect: &PreparedEffect) {
        match effect {
            PreparedEffect::Prepare { name, statement } => {
                if self.get(name).is_none() {
                    self.overlay.insert(name.clone(), Some((**statement).clone()));
                }
            }
            PreparedEffect::Deallocate { name } => {
                self.overlay.insert(name.clone(), None);
            }
            PreparedEffect::DeallocateAll => {
                self.overlay.clear();
                self.cleared = true;
            }
        }
    }
}

fn resolve_statement(stmt: &Statement, view: &View<'_>, depth: u8) -> Result<Statement, ClassifyError> {
    if stmt.executes.is_empty() {
        return Ok(stmt.clone());
    }
    if depth >= MAX_EXECUTE_DEPTH {
        return Err(ClassifyError::Unsupported(
            "EXECUTE chained through too many prepared statements",
        ));
    }
    let mut b = StatementBuilder::from_statement(stmt);
    b.clear_executes();
    // EXECUTE is class `prepare` only until it takes its statement's class.
    b.remove_op(Operation::Prepare);
    for e in &stmt.executes {
        let inner = view
            .get(&e.name)
            .ok_or_else(|| ClassifyError::UnknownPrepared(e.name.clone()))?;
        let inner = resolve_statement(inner, view, depth + 1)?;
        if e.runs {
            b.merge(&inner);
        } else {
            b.merge_planned(Operation::Explain, &inner);
        }
    }
    Ok(b.finish())
}
