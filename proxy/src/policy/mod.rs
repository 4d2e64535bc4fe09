//! Statement policy: classify SQL with the real PostgreSQL parser, then decide
//! it against the compiled rules of the Policies that apply.
//!
//! The pieces, in the order a statement meets them:
//!
//! 1. [`ClassificationCache::classify`] looks the text up by a key built from
//!    PostgreSQL's own scanner, with every constant replaced by a placeholder
//!    ([`cache_key`]), and on a miss calls [`classify`].
//! 2. [`classify`] parses with `pg_query` and turns every statement into a
//!    [`Statement`]: its operation classes, the tables it reads and writes,
//!    the functions it calls and the built-ins with side effects among them.
//!    Anything that does not parse, or any statement kind the classifier does
//!    not know, is an error: the caller refuses it (fail closed).
//! 3. [`PreparedStatements::resolve`] gives `EXECUTE name` the class of the
//!    statement prepared under that name in the session.
//! 4. [`decide`] matches the result against [`CompiledPolicy`] rules, and
//!    [`refusal`] turns a refusal into the ErrorResponse fields.
//!
//! [`may_write`] tells a session at its start whether any rule lets its
//! caller write at all. A caller no rule lets write gets a read-only
//! database session, a second wall behind the classifier; statements that
//! could turn it off (marked [`Statement::leaves_read_only`]) are refused
//! there with [`read_only_refusal`].
//!
//! [`PolicySet`] compiles a configuration's Policies, rules and masking; a
//! Policy that does not compile denies everything to the callers it names
//! until it is fixed.
//!
//! # How rules meet statements
//!
//! A statement is split into *accesses*: one per (operation, table) pair it
//! performs, and one table-less access for each operation that touches no
//! table (`SET`, `BEGIN`, `SELECT 1`, a side-effect function call, ...).
//! Every access is decided on its own: the most restrictive matching rule of
//! every applicable Policy wins (deny over requireApproval over allow), and an
//! access no rule matches is denied by default. The statement takes the worst
//! decision of its accesses, and a multi-statement query the worst of its
//! statements. So an allow rule must cover everything a statement does: a rule
//! allowing `select` on `public.orders` does not allow a join that also reads
//! `secret.keys`, nor a `SELECT` that hides a `DELETE` in a writable CTE.
//! For deny and requireApproval rules this is the same as "the statement
//! touches any of the rule's tables"; for allow rules it is the safe reading.

mod cache;
mod catalog;
mod classify;
mod functions;
mod prepared;
mod rules;
mod set;
mod stack;
#[cfg(test)]
mod tests;
mod walk;

use std::collections::HashSet;
use std::fmt;

pub use gatehouse_crds::policy::Operation;

pub use cache::{CacheCounters, CacheStats, ClassificationCache, cache_key};
pub use catalog::{
    CatalogView, HARMLESS_VOLATILE, OperatorRow, Routine, Unvouched, Volatility, judge_attribute,
    judge_calls, judge_function, judge_operator,
};
pub use classify::classify;
pub use functions::{SIDE_EFFECT_GROUPS, SideEffectGroup, side_effect_group};
pub use prepared::{MAX_PREPARED_STATEMENTS, PreparedStatements};
pub use rules::{
    CompileError, CompiledPolicy, CompiledRule, DEFAULT_DENY, Decision, INVALID_POLICY_RULE, Identity,
    READ_OPERATIONS, Refusal, decide, may_write, operation_name, read_only_refusal, refusal,
    refusal_for_error, write_rule,
};
pub use set::PolicySet;
pub use stack::{CLASSIFY_STACK_BYTES, THREAD_STACK_BYTES};

/// Why a text could not be classified. Every variant means "refuse the
/// statement": the proxy never forwards what it could not classify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    /// The PostgreSQL parser rejected the text.
    #[error("{0}")]
    Parse(String),
    /// A statement kind the classifier does not know, or one that may not
    /// appear where it does.
    #[error("statement kind {0} is not supported by Gatehouse")]
    Unsupported(&'static str),
    /// A statement the classifier refuses whatever the policy says, because
    /// running it would make later classification unreliable or because it
    /// reaches outside the database.
    #[error("{0}")]
    Refused(String),
    /// A statement nested more deeply than PostgreSQL's parser, as
    /// libpg_query runs it, accepts: a chain of thousands of operators or
    /// nested calls, sub-queries or parentheses.
    #[error("statement nested too deeply for Gatehouse to classify: {0}")]
    TooDeep(String),
    /// `EXECUTE` of a prepared statement this session's proxy has not seen.
    #[error("prepared statement \"{0}\" is not known to Gatehouse in this session")]
    UnknownPrepared(String),
}

/// A table as a statement names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableRef {
    /// The schema, when the statement qualifies the name; `None` for an
    /// unqualified name, which the session's `search_path` resolves.
    pub schema: Option<String>,
    /// The table name as PostgreSQL stores it (unquoted names in lower case).
    pub name: String,
}

impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A function as a statement names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FunctionRef {
    /// The schema, when the statement qualifies the name.
    pub schema: Option<String>,
    /// The function name as PostgreSQL stores it.
    pub name: String,
}

impl fmt::Display for FunctionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A function or operator call that is not a read, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideEffectCall {
    /// The function or operator as the statement names it.
    pub call: FunctionRef,
    /// Whether it is an operator.
    pub operator: bool,
    /// Why it is not a read.
    pub why: Unvouched,
}

impl fmt::Display for SideEffectCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.operator {
            f.write_str("operator ")?;
        }
        let why = match &self.why {
            Unvouched::Listed(group) => group.name,
            Unvouched::Volatile => "volatile",
            Unvouched::NotInCatalog => "not in the database's catalog",
            Unvouched::CatalogUnavailable => "catalog unavailable",
        };
        write!(f, "{} [{why}]", self.call)
    }
}

/// One thing a statement does: an operation, on a table or on none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The class of the operation.
    pub operation: Operation,
    /// The table, or `None` for an operation that touches no table.
    pub table: Option<TableRef>,
    /// Whether the table is changed (written, locked, altered, vacuumed...)
    /// rather than only read.
    pub write: bool,
}

/// A reference from a statement to a prepared statement of the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecuteRef {
    /// The prepared statement's name.
    pub name: String,
    /// `true` when the statement runs it (`EXECUTE`, `EXPLAIN ANALYZE
    /// EXECUTE`, `CREATE TABLE AS EXECUTE`), `false` when it only plans it
    /// (`EXPLAIN EXECUTE`).
    pub runs: bool,
}

/// What a statement does to the session's prepared statements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreparedEffect {
    /// `PREPARE name AS ...`: the classification of the inner statement.
    Prepare {
        /// The prepared statement's name.
        name: String,
        /// The inner statement, classified as if it ran.
        statement: Box<Statement>,
    },
    /// `DEALLOCATE name`.
    Deallocate {
        /// The prepared statement's name.
        name: String,
    },
    /// `DEALLOCATE ALL` and `DISCARD ALL`.
    DeallocateAll,
}

/// How a `COPY ... TO STDOUT` writes its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    /// The text format: fields split by `delimiter`, special bytes escaped
    /// with a backslash.
    Text {
        /// The field delimiter (a tab unless set).
        delimiter: u8,
    },
    /// CSV: fields split by `delimiter`, quoted with `quote`, a quote
    /// inside a quoted field preceded by `escape`.
    Csv {
        /// The field delimiter (a comma unless set).
        delimiter: u8,
        /// The quote byte (`"` unless set).
        quote: u8,
        /// The escape byte (the quote unless set).
        escape: u8,
    },
    /// The binary format.
    Binary,
    /// Options Gatehouse does not read (a format it does not know, say).
    Unknown,
}

/// The classification of one SQL statement.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Statement {
    /// Every operation class of the statement, distinct, in the order found.
    /// A `SELECT` with a writable `DELETE` CTE is both `select` and `delete`.
    pub operations: Vec<Operation>,
    /// Every (operation, table) pair, distinct; each operation of
    /// [`Statement::operations`] appears at least once, with `table: None`
    /// when it touches no table.
    pub accesses: Vec<Access>,
    /// Every function called, in any position, distinct.
    pub functions: Vec<FunctionRef>,
    /// The last names of qualified column references (`o.purge`,
    /// `(o).purge`), distinct: PostgreSQL calls a function of one argument
    /// by that name when the row has no such column (attribute notation).
    pub attribute_calls: Vec<FunctionRef>,
    /// Every operator used, in any position, distinct (`=` for `IN` and
    /// `CASE x WHEN`, `>=` and `<=` for `BETWEEN`, ...).
    pub operators: Vec<FunctionRef>,
    /// Whether [`judge_calls`] has judged the functions and operators
    /// against the database's catalog. [`decide`] refuses a statement that
    /// calls anything and was not judged.
    pub calls_judged: bool,
    /// The calls that are not reads, as [`judge_calls`] found them; when not
    /// empty, [`Operation::SideEffectFunction`] is among the operations.
    pub side_effect_functions: Vec<SideEffectCall>,
    /// Prepared statements this statement runs or explains. [`decide`]
    /// refuses a statement whose references [`PreparedStatements::resolve`]
    /// has not replaced.
    pub executes: Vec<ExecuteRef>,
    /// What the statement does to the session's prepared statements.
    pub prepared: Option<PreparedEffect>,
    /// For `COPY ... TO STDOUT`: how its rows are written, so that masking
    /// can read their fields.
    pub copy_out: Option<CopyFormat>,
    /// `true` when the classification looked at the value of a constant
    /// (`SET standard_conforming_strings = ...`, `EXPLAIN (ANALYZE off)`,
    /// `set_config('...', ...)`): such a classification is never shared
    /// through the cache, whose key ignores constants.
    pub constant_sensitive: bool,
    /// When running the statement may turn a read-only session read-write,
    /// how (for the refusal): a `SET` or `RESET` of
    /// `default_transaction_read_only` or `transaction_read_only`, a `READ
    /// WRITE` transaction mode, `set_config` of either name or of a name
    /// that is not a constant, a write to `pg_settings`. A session whose
    /// caller no Policy lets write refuses such statements (see
    /// [`may_write`]).
    pub leaves_read_only: Option<&'static str>,
}

impl Statement {
    /// Tables the statement reads without changing them.
    pub fn tables_read(&self) -> impl Iterator<Item = &TableRef> {
        self.accesses
            .iter()
            .filter(|a| !a.write)
            .filter_map(|a| a.table.as_ref())
    }

    /// Tables the statement writes, locks or alters.
    pub fn tables_written(&self) -> impl Iterator<Item = &TableRef> {
        self.accesses
            .iter()
            .filter(|a| a.write)
            .filter_map(|a| a.table.as_ref())
    }

    /// Whether the statement calls a function or operator, or names what
    /// may be a call in attribute notation.
    pub fn calls_anything(&self) -> bool {
        !(self.functions.is_empty() && self.operators.is_empty() && self.attribute_calls.is_empty())
    }

    /// Whether the statement has operation `op`.
    pub fn has(&self, op: Operation) -> bool {
        self.operations.contains(&op)
    }
}

/// The classification of a query text: one [`Statement`] per statement, in
/// order. An empty text (only whitespace, comments or semicolons) has none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Classification {
    /// The statements, in the order they run.
    pub statements: Vec<Statement>,
}

impl Classification {
    /// Every operation of every statement, distinct.
    pub fn operations(&self) -> Vec<Operation> {
        let mut out = Vec::new();
        for op in self.statements.iter().flat_map(|s| &s.operations) {
            if !out.contains(op) {
                out.push(*op);
            }
        }
        out
    }

    /// Whether some statement's classification depends on a constant's value.
    pub fn constant_sensitive(&self) -> bool {
        self.statements.iter().any(|s| s.constant_sensitive)
    }

    /// How some statement may turn a read-only session read-write, if one
    /// may (the first found).
    pub fn leaves_read_only(&self) -> Option<&'static str> {
        self.statements.iter().find_map(|s| s.leaves_read_only)
    }
}

/// Builds a [`Statement`], keeping its lists distinct.
#[derive(Debug, Default)]
pub(crate) struct StatementBuilder {
    stmt: Statement,
    seen_accesses: HashSet<(u8, Option<TableRef>, bool)>,
    seen_functions: HashSet<FunctionRef>,
    seen_operators: HashSet<FunctionRef>,
    seen_attributes: HashSet<FunctionRef>,
}

/// A stable small number per operation, for hashing (the API type derives
/// neither `Hash` nor `Ord`).
pub(crate) fn op_index(op: Operation) -> u8 {
    op as u8
}

impl StatementBuilder {
    pub(crate) fn op(&mut self, op: Operation) {
        if !self.stmt.operations.contains(&op) {
            self.stmt.operations.push(op);
        }
    }

    pub(crate) fn access(&mut self, operation: Operation, table: Option<TableRef>, write: bool) {
        self.op(operation);
        if self
            .seen_accesses
            .insert((op_index(operation), table.clone(), write))
        {
            self.stmt.accesses.push(Access {
                operation,
                table,
                write,
            });
        }
    }

    /// Records a function call; [`judge_calls`] decides whether it reads.
    pub(crate) fn function(&mut self, function: FunctionRef) {
        if self.seen_functions.insert(function.clone()) {
            self.stmt.functions.push(function);
        }
    }

    /// Records a name that may be a call in attribute notation.
    pub(crate) fn attribute_call(&mut self, name: FunctionRef) {
        if self.seen_attributes.insert(name.clone()) {
            self.stmt.attribute_calls.push(name);
        }
    }

    /// Records an operator use; [`judge_calls`] decides whether it reads.
    pub(crate) fn operator(&mut self, operator: FunctionRef) {
        if self.seen_operators.insert(operator.clone()) {
            self.stmt.operators.push(operator);
        }
    }

    pub(crate) fn execute(&mut self, execute: ExecuteRef) {
        if !self.stmt.executes.contains(&execute) {
            self.stmt.executes.push(execute);
        }
    }

    pub(crate) fn prepared(&mut self, effect: PreparedEffect) {
        self.stmt.prepared = Some(effect);
    }

    pub(crate) fn constant_sensitive(&mut self) {
        self.stmt.constant_sensitive = true;
    }

    /// Notes that the statement may turn read-only off, `how`; the first
    /// reason found is kept.
    pub(crate) fn leaves_read_only(&mut self, how: &'static str) {
        self.stmt.leaves_read_only.get_or_insert(how);
    }

    pub(crate) fn copy_out(&mut self, format: CopyFormat) {
        self.stmt.copy_out = Some(format);
    }

    /// Merges everything `other` does into this statement, unchanged.
    pub(crate) fn merge(&mut self, other: &Statement) {
        for op in &other.operations {
            self.op(*op);
        }
        for a in &other.accesses {
            self.access(a.operation, a.table.clone(), a.write);
        }
        for e in &other.executes {
            self.execute(e.clone());
        }
        self.merge_calls(other);
    }

    /// Merges `other` as a statement that is only planned, not run (plain
    /// `EXPLAIN`, `PREPARE`): every table it names becomes a read under
    /// `op`, its functions are kept, and its side-effect functions still
    /// count (conservatively: the planner may fold some calls).
    pub(crate) fn merge_planned(&mut self, op: Operation, other: &Statement) {
        self.op(op);
        for a in &other.accesses {
            if a.table.is_some() {
                self.access(op, a.table.clone(), false);
            }
        }
        for e in &other.executes {
            self.execute(ExecuteRef {
                name: e.name.clone(),
                runs: false,
            });
        }
        self.merge_calls(other);
    }

    fn merge_calls(&mut self, other: &Statement) {
        for f in &other.functions {
            self.function(f.clone());
        }
        for o in &other.operators {
            self.operator(o.clone());
        }
        for a in &other.attribute_calls {
            self.attribute_call(a.clone());
        }
        if other.constant_sensitive {
            self.constant_sensitive();
        }
        // Also for statements only planned (PREPARE, plain EXPLAIN): their
        // EXECUTE takes the prepared statement's own classification anyway,
        // and refusing to prepare such a statement is the clearer answer.
        if let Some(how) = other.leaves_read_only {
            self.leaves_read_only(how);
        }
    }

    /// Removes `op` from the operations, with its table-less access. Used
    /// when `EXECUTE` (class `prepare` until resolved) takes the class of the
    /// statement it runs.
    pub(crate) fn remove_op(&mut self, op: Operation) {
        self.stmt.operations.retain(|o| *o != op);
        self.stmt.accesses.retain(|a| a.operation != op);
        self.seen_accesses.retain(|(o, _, _)| *o != op_index(op));
    }

    pub(crate) fn clear_executes(&mut self) {
        self.stmt.executes.clear();
    }

    /// Finishes the statement: every operation gets at least one access.
    pub(crate) fn finish(mut self) -> Statement {
        let ops = self.stmt.operations.clone();
        for op in ops {
            if !self.stmt.accesses.iter().any(|a| a.operation == op) {
                self.access(op, None, false);
            }
        }
        self.stmt
    }

    /// Starts from an existing statement.
    pub(crate) fn from_statement(stmt: &Statement) -> Self {
        let mut b = StatementBuilder::default();
        b.merge(stmt);
        b.stmt.prepared = stmt.prepared.clone();
        b
    }
}
