//! Which function and operator calls are reads, by what the database's own
//! catalog says of them.
//!
//! A call is a read only when the proxy can vouch for it. The name alone
//! cannot: `purge_orders()`, an extension's `heap_force_kill()` and
//! `lower()` look alike in a statement. The upstream's catalog tells them
//! apart. For every function a name could resolve to, it knows
//! `pg_proc.provolatile`, and PostgreSQL refuses data-modifying commands
//! inside STABLE and IMMUTABLE SQL and PL/pgSQL functions. So a call is a read
//! when every routine its name could resolve to is
//!
//! * not on a [named list](super::functions) (built-ins and extension
//!   functions that act outside the tables whatever their volatility, such as
//!   `table_to_xml`, which is STABLE and reads any table by name), and
//! * STABLE or IMMUTABLE (for an aggregate: its support functions too, since
//!   PostgreSQL marks every aggregate IMMUTABLE whatever its state function
//!   does), or a volatile built-in (or extension function) on the short
//!   [harmless list](HARMLESS_VOLATILE).
//!
//! A name the catalog does not hold (a typo, a function created in an open
//! transaction, a catalog that could not be read) is not a read. Every
//! overload counts, whatever the arguments: resolving overloads needs the
//! argument types, and a volatile overload of a harmless name is rare enough
//! that refusing it is the better error. An unqualified name counts in every
//! schema, since the session's `search_path` can name any; never in a
//! temporary schema (`pg_temp_N`), which PostgreSQL does not search for
//! functions or operators unless the call names it.
//!
//! An operator is a call of its function (`pg_operator.oprcode`), judged the
//! same way. What the classifier cannot see stays for the read-only upstream
//! session to stop: functions called by views, triggers, casts, defaults and
//! sort orders, and non-volatile functions that call volatile ones.

use gatehouse_crds::policy::Operation;

use super::functions::{SideEffectGroup, side_effect_group};
use super::{Access, Classification, FunctionRef, SideEffectCall, Statement};

/// `pg_proc.provolatile`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Volatility {
    /// `i`: same result for the same arguments, no side effects.
    Immutable,
    /// `s`: reads the database, no data changes.
    Stable,
    /// `v`: may do anything.
    Volatile,
}

impl Volatility {
    /// From the catalog's code; an unknown code is volatile.
    pub fn from_code(code: char) -> Self {
        match code {
            'i' => Self::Immutable,
            's' => Self::Stable,
            _ => Self::Volatile,
        }
    }
}

/// One function, procedure or aggregate a name may resolve to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routine {
    /// Its schema.
    pub schema: String,
    /// How many arguments it declares (`pg_proc.pronargs`).
    pub arity: u16,
    /// How many of them have no default.
    pub required: u16,
    /// The worst volatility of the routine and, for an aggregate, of its
    /// support functions.
    pub volatility: Volatility,
    /// The extension it belongs to, if any.
    pub extension: Option<String>,
}

/// One operator a name may resolve to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorRow {
    /// Its schema.
    pub schema: String,
    /// The volatility of its function; `None` for a shell operator (no
    /// function yet).
    pub volatility: Option<Volatility>,
}

/// Why a call is not a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unvouched {
    /// A built-in or extension function on a named list.
    Listed(&'static SideEffectGroup),
    /// A volatile function (or an operator whose function is volatile).
    Volatile,
    /// No routine of that name is in the catalog.
    NotInCatalog,
    /// The catalog could not be read.
    CatalogUnavailable,
}

impl Unvouched {
    /// How a refusal's hint explains it.
    pub fn why(&self) -> &'static str {
        match self {
            Unvouched::Listed(group) => group.why,
            Unvouched::Volatile => "a VOLATILE function may change data or act outside the session",
            Unvouched::NotInCatalog => {
                "the database's catalog has no function of that name, so Gatehouse cannot tell what it does"
            }
            Unvouched::CatalogUnavailable => {
                "Gatehouse could not read the database's catalog to tell what it does"
            }
        }
    }
}

/// Volatile built-ins (and extension functions of the same names) that
/// read, or change only the calling session's own state, and so are reads.
/// Each group says why.
pub const HARMLESS_VOLATILE: &[&str] = &[
    // Randomness and clocks: volatile only because each call differs.
    "random",
    "random_normal",
    "setseed",
    "gen_random_uuid",
    "uuidv4",
    "uuidv7",
    "clock_timestamp",
    "timeofday",
    // Waiting: occupies the session only, bounded by statement_timeout.
    "pg_sleep",
    "pg_sleep_for",
    "pg_sleep_until",
    // The session's own sequence values and query text, and a sequence's
    // last value (what SELECT last_value FROM seq shows).
    "currval",
    "lastval",
    "current_query",
    "pg_sequence_last_value",
    // Random bytes and UUIDs from extensions (uuid-ossp, pgcrypto).
    "uuid_generate_v1",
    "uuid_generate_v1mc",
    "uuid_generate_v4",
    "gen_random_bytes",
    // Sizes of relations, databases and tablespaces.
    "pg_relation_size",
    "pg_table_size",
    "pg_indexes_size",
    "pg_total_relation_size",
    "pg_database_size",
    "pg_tablespace_size",
    // Recovery state and WAL positions.
    "pg_is_in_recovery",
    "pg_is_wal_replay_paused",
    "pg_get_wal_replay_pause_state",
    "pg_last_wal_receive_lsn",
    "pg_last_wal_replay_lsn",
    "pg_last_xact_replay_timestamp",
    "pg_current_wal_lsn",
    "pg_current_wal_insert_lsn",
    "pg_current_wal_flush_lsn",
    // Locks, partitions and transactions, as the monitoring views show them.
    "pg_blocking_pids",
    "pg_safe_snapshot_blocking_pids",
    "pg_lock_status",
    "pg_partition_tree",
    "pg_partition_ancestors",
    "pg_xact_status",
    "txid_status",
    "pg_jit_available",
    "pg_notification_queue_usage",
    "pg_xact_commit_timestamp",
    "pg_last_committed_xact",
];

fn harmless_volatile(name: &str) -> bool {
    HARMLESS_VOLATILE.contains(&name)
}

/// PostgreSQL searches a temporary schema for functions and operators only
/// when a call names it.
fn is_temp_schema(schema: &str) -> bool {
    schema.starts_with("pg_temp_")
}

/// Whether an object in `schema` is one a call naming `wanted` (or no
/// schema) could resolve to.
fn in_scope(wanted: Option<&str>, schema: &str) -> bool {
    match wanted {
        None => !is_temp_schema(schema),
        // `pg_temp` is the session's own temporary schema, which the proxy
        // cannot tell from another session's: any of them.
        Some("pg_temp") => is_temp_schema(schema),
        Some(wanted) => wanted == schema,
    }
}

/// The verdict on a call of `call`, given every routine of its name.
///
/// # Errors
///
/// Why the call is not a read.
pub fn judge_function(call: &FunctionRef, routines: &[Routine]) -> Result<(), Unvouched> {
    let mut found = false;
    let mut volatile = false;
    for routine in routines
        .iter()
        .filter(|r| in_scope(call.schema.as_deref(), &r.schema))
    {
        found = true;
        // Built-ins, and extensions' functions (an extension installs
        // functions under the names of the built-ins it stands for, as
        // pgcrypto does gen_random_uuid): names mean what they say.
        let builtin = routine.schema == "pg_catalog" || routine.extension.is_some();
        if builtin && let Some(group) = side_effect_group(&call.name) {
            return Err(Unvouched::Listed(group));
        }
        volatile |= routine.volatility == Volatility::Volatile && !(builtin && harmless_volatile(&call.name));
    }
    match (found, volatile) {
        (false, _) => Err(Unvouched::NotInCatalog),
        (true, true) => Err(Unvouched::Volatile),
        (true, false) => Ok(()),
    }
}

/// The verdict on `call` as the last name of a qualified column reference
/// (`o.purge`, `(o).purge`): PostgreSQL reads it as a call of a function of
/// one argument, the row, when the row has no column of that name
/// (attribute notation). Only functions callable with one argument count
/// (the others having defaults), and a name no such function has is a
/// column.
///
/// # Errors
///
/// Why the call, if it is one, is not a read.
pub fn judge_attribute(call: &FunctionRef, routines: &[Routine]) -> Result<(), Unvouched> {
    let unary: Vec<Routine> = routines
        .iter()
        .filter(|r| r.arity >= 1 && r.required <= 1)
        .cloned()
        .collect();
    if unary.iter().any(|r| in_scope(call.schema.as_deref(), &r.schema)) {
        judge_function(call, &unary)
    } else {
        Ok(())
    }
}

/// The verdict on a use of operator `call`, given every operator of its name.
///
/// # Errors
///
/// Why the use is not a read.
pub fn judge_operator(call: &FunctionRef, operators: &[OperatorRow]) -> Result<(), Unvouched> {
    let mut found = false;
    for op in operators
        .iter()
        .filter(|o| in_scope(call.schema.as_deref(), &o.schema))
    {
        found = true;
        match op.volatility {
            Some(Volatility::Immutable | Volatility::Stable) => {}
            Some(Volatility::Volatile) | None => return Err(Unvouched::Volatile),
        }
    }
    if found {
        Ok(())
    } else {
        Err(Unvouched::NotInCatalog)
    }
}

/// What the catalog holds for the names a statement calls.
pub trait CatalogView {
    /// Every routine named `name` (empty when there is none); `None` when
    /// the catalog could not be read.
    fn routines(&self, name: &str) -> Option<&[Routine]>;
    /// Every operator named `name`, as [`routines`](Self::routines).
    fn operators(&self, name: &str) -> Option<&[OperatorRow]>;
}

/// `classification` with every statement's function and operator calls
/// judged against `view`: each call that is not a read is listed in
/// [`Statement::side_effect_functions`] and gives the statement the class
/// [`Operation::SideEffectFunction`].
pub fn judge_calls(classification: &Classification, view: &impl CatalogView) -> Classification {
    Classification {
        statements: classification
            .statements
            .iter()
            .map(|s| judge_statement(s, view))
            .collect(),
    }
}

fn judge_statement(stmt: &Statement, view: &impl CatalogView) -> Statement {
    let mut out = stmt.clone();
    out.calls_judged = true;
    // A call whose rows could not be read is not vouched for.
    let unvouched = |call: &FunctionRef, operator: bool, verdict: Option<Result<(), Unvouched>>| match verdict
        .unwrap_or(Err(Unvouched::CatalogUnavailable))
    {
        Ok(()) => None,
        Err(why) => Some(SideEffectCall {
            call: call.clone(),
            operator,
            why,
        }),
    };
    let functions = stmt
        .functions
        .iter()
        .filter_map(|c| unvouched(c, false, view.routines(&c.name).map(|r| judge_function(c, r))));
    let attributes = stmt
        .attribute_calls
        .iter()
        .filter_map(|c| unvouched(c, false, view.routines(&c.name).map(|r| judge_attribute(c, r))));
    let operators = stmt
        .operators
        .iter()
        .filter_map(|c| unvouched(c, true, view.operators(&c.name).map(|o| judge_operator(c, o))));
    out.side_effect_functions = functions.chain(attributes).chain(operators).collect();
    if !out.side_effect_functions.is_empty() {
        let op = Operation::SideEffectFunction;
        if !out.operations.contains(&op) {
            out.operations.push(op);
        }
        if !out
            .accesses
            .iter()
            .any(|a| a.operation == op && a.table.is_none())
        {
            out.accesses.push(Access {
                operation: op,
                table: None,
                write: false,
            });
        }
    }
    out
}

/// A real catalog for unit tests: every function and operator of a
/// PostgreSQL 15 server's `pg_catalog`, with the extensions dblink,
/// pg_surgery, pg_stat_statements, tablefunc, xml2, adminpack, pg_prewarm
/// and pgcrypto installed in `public` (dumped from the server that the
/// end-to-end tests run), plus what a test adds.
#[cfg(test)]
#[derive(Debug, Clone, Default)]
pub(crate) struct FixtureCatalog {
    functions: std::collections::HashMap<String, Vec<Routine>>,
    operators: std::collections::HashMap<String, Vec<OperatorRow>>,
}

#[cfg(test)]
impl FixtureCatalog {
    /// The dumped PostgreSQL 15 catalog.
    pub(crate) fn pg15() -> Self {
        let mut catalog = Self::default();
        for line in include_str!("testdata/pg15-catalog.tsv").lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            let [kind, name, schema, arity, required, volatility, extension] = fields[..] else {
                panic!("bad fixture line {line:?}");
            };
            let volatility = volatility.chars().next().map(Volatility::from_code);
            match kind {
                "f" => catalog.function(
                    name,
                    schema,
                    arity.parse().unwrap_or_default(),
                    required.parse().unwrap_or_default(),
                    volatility.unwrap_or(Volatility::Volatile),
                    extension,
                ),
                _ => catalog
                    .operators
                    .entry(name.to_owned())
                    .or_default()
                    .push(OperatorRow {
                        schema: schema.to_owned(),
                        volatility,
                    }),
            }
        }
        catalog
    }

    /// Adds a routine (`extension` empty for none).
    pub(crate) fn function(
        &mut self,
        name: &str,
        schema: &str,
        arity: u16,
        required: u16,
        volatility: Volatility,
        extension: &str,
    ) {
        self.functions.entry(name.to_owned()).or_default().push(Routine {
            schema: schema.to_owned(),
            arity,
            required,
            volatility,
            extension: (!extension.is_empty()).then(|| extension.to_owned()),
        });
    }

    /// Adds an operator.
    pub(crate) fn operator(&mut self, name: &str, schema: &str, volatility: Volatility) {
        self.operators
            .entry(name.to_owned())
            .or_default()
            .push(OperatorRow {
                schema: schema.to_owned(),
                volatility: Some(volatility),
            });
    }
}

#[cfg(test)]
impl CatalogView for FixtureCatalog {
    fn routines(&self, name: &str) -> Option<&[Routine]> {
        Some(self.functions.get(name).map_or(&[], |r| r.as_slice()))
    }

    fn operators(&self, name: &str) -> Option<&[OperatorRow]> {
        Some(self.operators.get(name).map_or(&[], |r| r.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(schema: Option<&str>, name: &str) -> FunctionRef {
        FunctionRef {
            schema: schema.map(str::to_owned),
            name: name.to_owned(),
        }
    }

    fn routine(schema: &str, volatility: Volatility, extension: Option<&str>) -> Routine {
        Routine {
            schema: schema.to_owned(),
            arity: 0,
            required: 0,
            volatility,
            extension: extension.map(str::to_owned),
        }
    }

    use Volatility::{Immutable, Stable, Volatile};

    #[test]
    fn a_call_is_a_read_only_when_every_overload_is() {
        let lower = [routine("pg_catalog", Immutable, None)];
        assert_eq!(judge_function(&call(None, "lower"), &lower), Ok(()));
        // One volatile overload among harmless ones: not a read.
        let mixed = [
            routine("pg_catalog", Immutable, None),
            routine("pg_catalog", Volatile, None),
        ];
        assert_eq!(
            judge_function(&call(None, "to_tsquery_ex"), &mixed),
            Err(Unvouched::Volatile)
        );
        // A user's volatile function, and a user's stable one.
        let purge = [routine("public", Volatile, None)];
        assert_eq!(
            judge_function(&call(None, "purge_orders"), &purge),
            Err(Unvouched::Volatile)
        );
        let report = [routine("reporting", Stable, None)];
        assert_eq!(judge_function(&call(None, "monthly_total"), &report), Ok(()));
        // No routine at all.
        assert_eq!(
            judge_function(&call(None, "nosuch"), &[]),
            Err(Unvouched::NotInCatalog)
        );
    }

    #[test]
    fn a_schema_narrows_the_overloads_and_temp_schemas_need_naming() {
        let both = [
            routine("pg_catalog", Stable, None),
            routine("evil", Volatile, None),
        ];
        // Unqualified, the session's search_path could reach `evil`.
        assert_eq!(judge_function(&call(None, "f"), &both), Err(Unvouched::Volatile));
        assert_eq!(judge_function(&call(Some("pg_catalog"), "f"), &both), Ok(()));
        assert_eq!(
            judge_function(&call(Some("other"), "f"), &both),
            Err(Unvouched::NotInCatalog)
        );
        // Another session's temporary function is never an unqualified
        // call's target, but may be `pg_temp.f`'s.
        let temp = [
            routine("pg_catalog", Stable, None),
            routine("pg_temp_3", Volatile, None),
        ];
        assert_eq!(judge_function(&call(None, "f"), &temp), Ok(()));
        assert_eq!(
            judge_function(&call(Some("pg_temp"), "f"), &temp),
            Err(Unvouched::Volatile)
        );
    }

    #[test]
    fn listed_names_count_for_builtins_and_extensions_only() {
        // table_to_xml is STABLE, and reads any table by name.
        let builtin = [routine("pg_catalog", Stable, None)];
        assert!(matches!(
            judge_function(&call(None, "table_to_xml"), &builtin),
            Err(Unvouched::Listed(g)) if g.name == "queries in strings"
        ));
        // tablefunc's crosstab runs its text argument; it is STABLE too.
        let ext = [routine("public", Stable, Some("tablefunc"))];
        assert!(matches!(
            judge_function(&call(None, "crosstab"), &ext),
            Err(Unvouched::Listed(_))
        ));
        // A user's own stable function that shares a listed prefix is a read.
        let own = [routine("reports", Stable, None)];
        assert_eq!(judge_function(&call(None, "lo_summary"), &own), Ok(()));
        assert_eq!(judge_function(&call(None, "dblink_status_report"), &own), Ok(()));
    }

    #[test]
    fn harmless_volatile_builtins_are_reads_and_look_alikes_are_not() {
        let builtin = [routine("pg_catalog", Volatile, None)];
        for name in [
            "random",
            "clock_timestamp",
            "gen_random_uuid",
            "currval",
            "pg_relation_size",
        ] {
            assert_eq!(judge_function(&call(None, name), &builtin), Ok(()), "{name}");
        }
        for name in [
            "pg_export_snapshot",
            "pg_stat_clear_snapshot",
            "pg_stat_force_next_flush",
        ] {
            assert_eq!(
                judge_function(&call(None, name), &builtin),
                Err(Unvouched::Volatile),
                "{name}"
            );
        }
        // A user's volatile `random` is not the built-in.
        let own = [routine("public", Volatile, None)];
        assert_eq!(
            judge_function(&call(None, "random"), &own),
            Err(Unvouched::Volatile)
        );
    }

    #[test]
    fn attribute_notation_counts_functions_of_one_argument_only() {
        let purge = Routine {
            arity: 1,
            required: 1,
            ..routine("public", Volatile, None)
        };
        assert_eq!(
            judge_attribute(&call(None, "purge_row"), std::slice::from_ref(&purge)),
            Err(Unvouched::Volatile)
        );
        // A column, not a function: nothing to judge.
        assert_eq!(judge_attribute(&call(None, "status"), &[]), Ok(()));
        // Functions of another arity cannot be called so.
        let nullary = routine("public", Volatile, None);
        assert_eq!(
            judge_attribute(&call(None, "purge_orders"), std::slice::from_ref(&nullary)),
            Ok(())
        );
        assert_eq!(
            judge_attribute(&call(None, "purge_row"), &[nullary, purge]),
            Err(Unvouched::Volatile)
        );
        let report = Routine {
            arity: 1,
            required: 1,
            ..routine("public", Stable, None)
        };
        assert_eq!(judge_attribute(&call(None, "total"), &[report]), Ok(()));
        // Extra arguments with defaults: callable with the row alone.
        let defaults = Routine {
            arity: 3,
            required: 1,
            ..routine("public", Volatile, None)
        };
        assert_eq!(
            judge_attribute(&call(None, "wr_row"), &[defaults]),
            Err(Unvouched::Volatile)
        );
        let two = Routine {
            arity: 2,
            required: 2,
            ..routine("public", Volatile, None)
        };
        assert_eq!(judge_attribute(&call(None, "pair"), &[two]), Ok(()));
    }

    #[test]
    fn operators_take_their_functions_volatility() {
        let eq = [OperatorRow {
            schema: "pg_catalog".into(),
            volatility: Some(Immutable),
        }];
        assert_eq!(judge_operator(&call(None, "="), &eq), Ok(()));
        let evil = [
            eq[0].clone(),
            OperatorRow {
                schema: "public".into(),
                volatility: Some(Volatile),
            },
        ];
        assert_eq!(judge_operator(&call(None, "="), &evil), Err(Unvouched::Volatile));
        assert_eq!(judge_operator(&call(Some("pg_catalog"), "="), &evil), Ok(()));
        let shell = [OperatorRow {
            schema: "public".into(),
            volatility: None,
        }];
        assert_eq!(
            judge_operator(&call(None, "###"), &shell),
            Err(Unvouched::Volatile)
        );
        assert_eq!(
            judge_operator(&call(None, "###"), &[]),
            Err(Unvouched::NotInCatalog)
        );
    }
}
