//! Classification of SQL statements from pg_query's parse tree.
//!
//! # Why a generic walk
//!
//! The dangerous part of a statement can hide anywhere the grammar accepts an
//! expression or a sub-query: the select list, `WHERE`, `FROM`, `ORDER BY`, a
//! CTE, `VALUES`, a function argument, a column default, a `RETURNING` list, a
//! window definition, a JSON or XML constructor... Hand-written visits of "the
//! places that matter" miss the ones nobody thought of (pg_query's own table
//! and function summaries skip several). So the classifier walks *every* child
//! of *every* node, through [`walk::for_each_child`](super::walk), which is
//! generated from pg_query's protobuf definitions and stops compiling when an
//! upgrade adds a field or a node type. Only the nodes that carry meaning are
//! handled by name (statements, table references, function calls, `INTO`,
//! locking clauses, CTE scopes); everything else is walked through. A node
//! the classifier does not know is therefore still searched for tables and
//! calls, and a statement kind it does not know fails closed.

use gatehouse_crds::policy::Operation;
use pg_query::protobuf as pb;
use pg_query::{NodeEnum, NodeRef};

use super::stack::{on_classifier_stack, running_low};
use super::walk::for_each_child;
use super::{
    Classification, ClassifyError, CopyFormat, ExecuteRef, FunctionRef, PreparedEffect, Statement,
    StatementBuilder, TableRef,
};

/// Classifies every statement of `sql` with the real PostgreSQL parser.
///
/// Fails closed: a text the parser rejects, a statement kind the classifier
/// does not know, and a few statements it refuses outright (see
/// [`ClassifyError`]) are errors, and the caller refuses the whole query.
///
/// `EXECUTE` is classified as [`Operation::Prepare`] with an [`ExecuteRef`];
/// [`PreparedStatements::resolve`](super::PreparedStatements::resolve) gives
/// it the class of the prepared statement.
///
/// Runs where the deepest tree PostgreSQL's parser produces fits on the
/// stack (see [`CLASSIFY_STACK_BYTES`](super::CLASSIFY_STACK_BYTES)); a text
/// nested more deeply than that parser accepts is [`ClassifyError::TooDeep`].
pub fn classify(sql: &str) -> Result<Classification, ClassifyError> {
    on_classifier_stack(|| classify_here(sql))?
}

/// [`classify`], on the current thread's stack. The parse tree is dropped
/// here too: dropping recurses as deep as the tree.
pub(crate) fn classify_here(sql: &str) -> Result<Classification, ClassifyError> {
    let parsed = parse(sql)?;
    let mut statements = Vec::with_capacity(parsed.stmts.len());
    for raw in &parsed.stmts {
        let node = raw
            .stmt
            .as_deref()
            .and_then(|n| n.node.as_ref())
            .ok_or(ClassifyError::Unsupported("empty statement"))?;
        statements.push(classify_statement(node.to_ref())?);
    }
    Ok(Classification { statements })
}

/// Parses `sql` into pg_query's protobuf tree.
fn parse(sql: &str) -> Result<pb::ParseResult, ClassifyError> {
    // After decoding, pg_query builds table and function summaries with code
    // that panics on trees it does not expect (its `cast!` macro). No input
    // may bring the proxy down, so a panic there is a refusal like any other
    // parse failure.
    match std::panic::catch_unwind(|| pg_query::parse(sql, pg_query::ParserOptions::DEFAULT)) {
        Ok(Ok(result)) => Ok(result.protobuf),
        Ok(Err(pg_query::Error::Parse(message))) if nested_too_deeply(&message) => {
            Err(ClassifyError::TooDeep(message))
        }
        Ok(Err(pg_query::Error::Parse(message))) => Err(ClassifyError::Parse(message)),
        Ok(Err(other)) => Err(ClassifyError::Parse(other.to_string())),
        Err(_) => Err(ClassifyError::Parse(
            "the parser failed on this statement".to_owned(),
        )),
    }
}

/// Whether a parse error is one of the parser's limits on nesting:
/// PostgreSQL's stack check, bison's stack (10,000 states), or
/// libpg_query's limit of 10,000 levels on the tree it serialises.
fn nested_too_deeply(message: &str) -> bool {
    message.starts_with("stack depth limit exceeded")
        || message.starts_with("memory exhausted")
        || message.starts_with("parse tree is nested too deeply")
}

/// Classifies one top-level statement.
pub(crate) fn classify_statement(node: NodeRef<'_>) -> Result<Statement, ClassifyError> {
    match node {
        NodeRef::ExplainStmt(explain) => classify_explain(explain),
        NodeRef::PrepareStmt(prepare) => classify_prepare(prepare),
        _ => match stmt_kind(node) {
            None => Err(ClassifyError::Unsupported("a node that is not a statement")),
            Some(Kind::NestedOnly(name)) => Err(ClassifyError::Unsupported(name)),
            Some(_) => {
                let mut walker = Walker::default();
                walker.visit(node);
                walker.finish()
            }
        },
    }
}

/// `EXPLAIN`: plain, it only plans its statement (class `explain`, every
/// table it names a read); with `ANALYZE`, it runs it and takes its class.
fn classify_explain(explain: &pb::ExplainStmt) -> Result<Statement, ClassifyError> {
    let inner = explain
        .query
        .as_deref()
        .and_then(|n| n.node.as_ref())
        .ok_or(ClassifyError::Unsupported("EXPLAIN without a statement"))?;
    let inner = classify_statement(inner.to_ref())?;
    let mut analyze = false;
    let mut constant_sensitive = false;
    for option in &explain.options {
        if let Some(NodeEnum::DefElem(def)) = &option.node
            && def.defname.eq_ignore_ascii_case("analyze")
        {
            match def.arg.as_deref().and_then(|a| a.node.as_ref()) {
                None => analyze = true,
                Some(arg) => {
                    // `ANALYZE off` and `ANALYZE 'off'` give the same tree, and
                    // the cache key does not see constants: such a
                    // classification is never shared.
                    constant_sensitive = true;
                    // Anything but a clear "false" runs the statement (an
                    // invalid value is an error in PostgreSQL; treating it as
                    // a run is the safe side).
                    analyze |= !is_false(arg);
                }
            }
        }
    }
    let mut b = StatementBuilder::default();
    if analyze {
        b.merge(&inner);
    } else {
        b.merge_planned(Operation::Explain, &inner);
    }
    if constant_sensitive {
        b.constant_sensitive();
    }
    Ok(b.finish())
}

/// Whether an option argument is a clear "false" for `defGetBoolean`.
fn is_false(arg: &NodeEnum) -> bool {
    match arg {
        NodeEnum::String(s) => s.sval.eq_ignore_ascii_case("false") || s.sval.eq_ignore_ascii_case("off"),
        NodeEnum::Integer(i) => i.ival == 0,
        NodeEnum::Boolean(b) => !b.boolval,
        _ => false,
    }
}

/// `PREPARE name AS ...`: class `prepare`, every table of the inner statement
/// a read; the inner statement's own classification is kept for `EXECUTE`.
fn classify_prepare(prepare: &pb::PrepareStmt) -> Result<Statement, ClassifyError> {
    let inner = prepare
        .query
        .as_deref()
        .and_then(|n| n.node.as_ref())
        .ok_or(ClassifyError::Unsupported("PREPARE without a statement"))?;
    let inner = classify_statement(inner.to_ref())?;
    let mut b = StatementBuilder::default();
    b.merge_planned(Operation::Prepare, &inner);
    // Parameter types can name types only; they are walked for completeness.
    let mut walker = Walker::default();
    for arg in &prepare.argtypes {
        if let Some(n) = &arg.node {
            walker.visit(n.to_ref());
        }
    }
    b.merge(&walker.finish()?);
    b.prepared(PreparedEffect::Prepare {
        name: prepare.name.clone(),
        statement: Box::new(inner),
    });
    Ok(b.finish())
}

/// How the classifier handles a statement node.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    /// A utility statement: the operation, and every table it names directly
    /// (outside a nested query) is changed with that operation.
    Utility(Operation),
    /// A utility statement with two classes.
    Utility2(Operation, Operation),
    Copy,
    Drop,
    Rename,
    Execute,
    Deallocate,
    Discard,
    Declare,
    Set,
    /// `EXPLAIN` and `PREPARE`: only at the top level.
    TopOnly(&'static str),
    /// Refused whatever the policy says.
    Refused(&'static str),
    /// Bodies of SQL functions and PL/pgSQL only: walked when nested, never a
    /// statement of their own.
    NestedOnly(&'static str),
}

/// The [`Kind`] of a statement node, `None` for a node that is not a
/// statement.
///
/// Every statement node of PostgreSQL's raw grammar is listed. A statement
/// node added by a future pg_query falls to `None`, which fails closed at the
/// top level and is walked through (tables and calls still found) when nested.
fn stmt_kind(node: NodeRef<'_>) -> Option<Kind> {
    use Operation::{
        Call, Ddl, Do, Maintenance, Privilege, Role, Select, Session, SideEffectFunction, Transaction,
        Truncate, TwoPhaseCommit, Update,
    };
    Some(match node {
        NodeRef::SelectStmt(_) => Kind::Select,
        NodeRef::InsertStmt(_) => Kind::Insert,
        NodeRef::UpdateStmt(_) => Kind::Update,
        NodeRef::DeleteStmt(_) => Kind::Delete,
        NodeRef::MergeStmt(_) => Kind::Merge,
        NodeRef::CopyStmt(_) => Kind::Copy,
        NodeRef::ExplainStmt(_) => Kind::TopOnly("EXPLAIN inside another statement"),
        NodeRef::PrepareStmt(_) => Kind::TopOnly("PREPARE inside another statement"),
        NodeRef::ExecuteStmt(_) => Kind::Execute,
        NodeRef::DeallocateStmt(_) => Kind::Deallocate,
        NodeRef::DeclareCursorStmt(_) => Kind::Declare,
        NodeRef::VariableSetStmt(_) => Kind::Set,
        NodeRef::DiscardStmt(_) => Kind::Discard,
        NodeRef::DropStmt(_) => Kind::Drop,
        NodeRef::RenameStmt(_) => Kind::Rename,

        // SHOW reads a setting; FETCH, MOVE and CLOSE read a cursor whose
        // query was classified when it was declared.
        NodeRef::VariableShowStmt(_) | NodeRef::FetchStmt(_) | NodeRef::ClosePortalStmt(_) => {
            Kind::Utility(Select)
        }
        NodeRef::TruncateStmt(_) => Kind::Utility(Truncate),
        // LOCK TABLE takes table locks, like SELECT ... FOR UPDATE takes row
        // locks: a write intent, whatever the mode.
        NodeRef::LockStmt(_) => Kind::Utility(Update),
        NodeRef::GrantStmt(_) | NodeRef::AlterDefaultPrivilegesStmt(_) => Kind::Utility(Privilege),
        // GRANT role TO role is a grant and a change of role membership.
        NodeRef::GrantRoleStmt(_) => Kind::Utility2(Privilege, Role),
        // DROP OWNED drops objects; REASSIGN OWNED hands them over.
        NodeRef::DropOwnedStmt(_) | NodeRef::ReassignOwnedStmt(_) => Kind::Utility2(Ddl, Privilege),
        NodeRef::CreateRoleStmt(_)
        | NodeRef::AlterRoleStmt(_)
        | NodeRef::AlterRoleSetStmt(_)
        | NodeRef::DropRoleStmt(_) => Kind::Utility(Role),
        // Two-phase commit acts beyond the session: a prepared transaction
        // outlives it, holding its locks, and COMMIT/ROLLBACK PREPARED
        // finish transactions other sessions prepared.
        NodeRef::TransactionStmt(t) if is_two_phase(t) => Kind::Utility(TwoPhaseCommit),
        NodeRef::TransactionStmt(_) | NodeRef::ConstraintsSetStmt(_) => Kind::Utility(Transaction),
        NodeRef::ListenStmt(_) | NodeRef::UnlistenStmt(_) => Kind::Utility(Session),
        // NOTIFY is pg_notify() in statement form.
        NodeRef::NotifyStmt(_) => Kind::Utility(SideEffectFunction),
        NodeRef::VacuumStmt(_)
        | NodeRef::ReindexStmt(_)
        | NodeRef::ClusterStmt(_)
        | NodeRef::CheckPointStmt(_)
        | NodeRef::RefreshMatViewStmt(_) => Kind::Utility(Maintenance),
        NodeRef::DoStmt(_) => Kind::Utility(Do),
        NodeRef::CallStmt(_) => Kind::Utility(Call),

        // LOAD loads a shared library into the server process, and ALTER
        // SYSTEM rewrites the server's configuration file (archive_command,
        // shared_preload_libraries, ...): both reach outside the database,
        // and no agent needs them.
        NodeRef::LoadStmt(_) => Kind::Refused("LOAD loads code into the server and is refused"),
        NodeRef::AlterSystemStmt(_) => {
            Kind::Refused("ALTER SYSTEM changes the server's configuration and is refused")
        }

        NodeRef::ReturnStmt(_) => Kind::NestedOnly("RETURN outside a function body"),
        NodeRef::PlassignStmt(_) => Kind::NestedOnly("PL/pgSQL assignment"),
        NodeRef::SetOperationStmt(_) => Kind::NestedOnly("SetOperationStmt"),
        NodeRef::RawStmt(_) => Kind::NestedOnly("RawStmt"),

        NodeRef::CreateTableAsStmt(_)
        | NodeRef::AlterTableStmt(_)
        | NodeRef::AlterDomainStmt(_)
        | NodeRef::CreateStmt(_)
        | NodeRef::DefineStmt(_)
        | NodeRef::CommentStmt(_)
        | NodeRef::IndexStmt(_)
        | NodeRef::CreateFunctionStmt(_)
        | NodeRef::AlterFunctionStmt(_)
        | NodeRef::RuleStmt(_)
        | NodeRef::ViewStmt(_)
        | NodeRef::CreateDomainStmt(_)
        | NodeRef::CreatedbStmt(_)
        | NodeRef::DropdbStmt(_)
        | NodeRef::CreateSeqStmt(_)
        | NodeRef::AlterSeqStmt(_)
        | NodeRef::CreateTrigStmt(_)
        | NodeRef::CreatePlangStmt(_)
        | NodeRef::CreateSchemaStmt(_)
        | NodeRef::AlterDatabaseStmt(_)
        | NodeRef::AlterDatabaseSetStmt(_)
        | NodeRef::AlterDatabaseRefreshCollStmt(_)
        | NodeRef::CreateConversionStmt(_)
        | NodeRef::CreateCastStmt(_)
        | NodeRef::CreateOpClassStmt(_)
        | NodeRef::CreateOpFamilyStmt(_)
        | NodeRef::AlterOpFamilyStmt(_)
        | NodeRef::CreateTableSpaceStmt(_)
        | NodeRef::DropTableSpaceStmt(_)
        | NodeRef::AlterTableSpaceOptionsStmt(_)
        | NodeRef::AlterTableMoveAllStmt(_)
        | NodeRef::AlterObjectDependsStmt(_)
        | NodeRef::AlterObjectSchemaStmt(_)
        | NodeRef::AlterOwnerStmt(_)
        | NodeRef::AlterOperatorStmt(_)
        | NodeRef::AlterTypeStmt(_)
        | NodeRef::CompositeTypeStmt(_)
        | NodeRef::CreateEnumStmt(_)
        | NodeRef::CreateRangeStmt(_)
        | NodeRef::AlterEnumStmt(_)
        | NodeRef::AlterTsdictionaryStmt(_)
        | NodeRef::AlterTsconfigurationStmt(_)
        | NodeRef::CreateFdwStmt(_)
        | NodeRef::AlterFdwStmt(_)
        | NodeRef::CreateForeignServerStmt(_)
        | NodeRef::AlterForeignServerStmt(_)
        | NodeRef::CreateUserMappingStmt(_)
        | NodeRef::AlterUserMappingStmt(_)
        | NodeRef::DropUserMappingStmt(_)
        | NodeRef::SecLabelStmt(_)
        | NodeRef::CreateForeignTableStmt(_)
        | NodeRef::ImportForeignSchemaStmt(_)
        | NodeRef::CreateExtensionStmt(_)
        | NodeRef::AlterExtensionStmt(_)
        | NodeRef::AlterExtensionContentsStmt(_)
        | NodeRef::CreateEventTrigStmt(_)
        | NodeRef::AlterEventTrigStmt(_)
        | NodeRef::ReplicaIdentityStmt(_)
        | NodeRef::CreatePolicyStmt(_)
        | NodeRef::AlterPolicyStmt(_)
        | NodeRef::CreateTransformStmt(_)
        | NodeRef::CreateAmStmt(_)
        | NodeRef::CreatePublicationStmt(_)
        | NodeRef::AlterPublicationStmt(_)
        | NodeRef::CreateSubscriptionStmt(_)
        | NodeRef::AlterSubscriptionStmt(_)
        | NodeRef::DropSubscriptionStmt(_)
        | NodeRef::CreateStatsStmt(_)
        | NodeRef::AlterStatsStmt(_)
        | NodeRef::AlterCollationStmt(_) => Kind::Utility(Ddl),
        _ => return None,
    })
}

/// Whether a transaction statement is part of two-phase commit.
fn is_two_phase(t: &pb::TransactionStmt) -> bool {
    use pb::TransactionStmtKind as K;
    [
        K::TransStmtPrepare,
        K::TransStmtCommitPrepared,
        K::TransStmtRollbackPrepared,
    ]
    .iter()
    .any(|k| *k as i32 == t.kind)
}

/// What the walker gives to a table reference it meets.
#[derive(Debug, Clone, Copy)]
struct Ctx {
    /// The operation of tables read in query positions: `select`, or the
    /// COPY class inside `COPY (query) TO`.
    read_op: Operation,
    /// Inside a utility statement's own clauses (outside any nested query):
    /// the operation every table named there gets, as a write.
    target: Option<Operation>,
    /// Inside the FROM clause of a SELECT with FOR UPDATE/SHARE: the tables
    /// read there are locked too.
    lock: bool,
}

impl Default for Ctx {
    fn default() -> Self {
        Ctx {
            read_op: Operation::Select,
            target: None,
            lock: false,
        }
    }
}

/// The recursive walk over one statement's tree.
#[derive(Debug, Default)]
struct Walker {
    b: StatementBuilder,
    ctx: Ctx,
    /// CTE names visible at this point, innermost last.
    ctes: Vec<Vec<String>>,
    /// How many statements enclose the current node.
    depth: u32,
    /// The first error met; the walk stops adding once it is set.
    error: Option<ClassifyError>,
}

impl Walker {
    fn finish(self) -> Result<Statement, ClassifyError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.b.finish()),
        }
    }

    fn fail(&mut self, error: ClassifyError) {
        if self.error.is_none() {
            self.error = Some(error);
        }
    }

    fn visit(&mut self, node: NodeRef<'_>) {
        if self.error.is_some() {
            return;
        }
        // The stack is sized for the deepest tree; this only fails closed
        // if a level of the walk ever costs more than measured there.
        if running_low() {
            self.fail(ClassifyError::TooDeep(
                "the walk of the parse tree ran short of stack".to_owned(),
            ));
            return;
        }
        match stmt_kind(node) {
            Some(kind) => {
                let saved = self.ctx;
                let top = self.depth == 0;
                self.depth += 1;
                self.statement(kind, node, top);
                self.depth -= 1;
                self.ctx = saved;
            }
            None => self.expression(node),
        }
    }

    fn children(&mut self, node: NodeRef<'_>) {
        for_each_child(node, &mut |_, child| self.visit(child));
    }

    fn children_except(&mut self, node: NodeRef<'_>, skip: &[&str]) {
        for_each_child(node, &mut |field, child| {
            if !skip.contains(&field) {
                self.visit(child);
            }
        });
    }

    fn expression(&mut self, node: NodeRef<'_>) {
        match node {
            NodeRef::RangeVar(rv) => self.range_var(rv),
            NodeRef::FuncCall(call) => {
                if let Some(f) = function_ref(&call.funcname) {
                    if f.name.eq_ignore_ascii_case("set_config") {
                        self.set_config(call);
                    }
                    self.b.function(f);
                }
                self.children(node);
            }
            // `o.f` and `(o).f` call `f(o)` when `o` has no column `f`.
            NodeRef::ColumnRef(column) if column.fields.len() >= 2 => {
                if let Some(NodeEnum::String(last)) = column.fields.last().and_then(|f| f.node.as_ref()) {
                    self.b.attribute_call(FunctionRef {
                        schema: None,
                        name: last.sval.clone(),
                    });
                }
                self.children(node);
            }
            NodeRef::AIndirection(indirection) => {
                for step in &indirection.indirection {
                    if let Some(NodeEnum::String(name)) = &step.node {
                        self.b.attribute_call(FunctionRef {
                            schema: None,
                            name: name.sval.clone(),
                        });
                    }
                }
                self.children(node);
            }
            // Operators are calls of their functions.
            NodeRef::AExpr(expr) => {
                for name in operator_names(expr) {
                    self.b.operator(name);
                }
                self.children(node);
            }
            NodeRef::SubLink(link) => {
                match function_ref(&link.oper_name) {
                    Some(op) => self.b.operator(op),
                    // `x IN (SELECT ...)` leaves the operator to the analyzer,
                    // which looks `=` up by name.
                    None if link.sub_link_type == pb::SubLinkType::AnySublink as i32 => {
                        self.b.operator(equals())
                    }
                    None => {}
                }
                self.children(node);
            }
            // `JOIN ... USING (c)` and `NATURAL JOIN` compare with `=`, looked
            // up by name.
            NodeRef::JoinExpr(join) if join.is_natural || !join.using_clause.is_empty() => {
                self.b.operator(equals());
                self.children(node);
            }
            NodeRef::SortBy(sort) => {
                if let Some(op) = function_ref(&sort.use_op) {
                    self.b.operator(op);
                }
                self.children(node);
            }
            // `CASE x WHEN y` compares with `=`.
            NodeRef::CaseExpr(case) if case.arg.is_some() => {
                self.b.operator(equals());
                self.children(node);
            }
            NodeRef::IntoClause(into) => {
                // SELECT ... INTO and CREATE TABLE ... AS create a table and fill it.
                if let Some(rel) = &into.rel {
                    self.b.access(Operation::Ddl, Some(table_ref(rel)), true);
                    self.b.access(Operation::Insert, Some(table_ref(rel)), true);
                }
                self.children_except(node, &["rel"]);
            }
            // The names in FOR UPDATE OF are aliases of FROM items, not table
            // references; the lock itself is handled by the SELECT.
            NodeRef::LockingClause(_) => {}
            // Statements that own a WITH clause walk it with its scope; this
            // is the fallback for any other owner: bodies walked, names not
            // treated as CTEs (so they count as tables, the safe side).
            NodeRef::WithClause(with) => self.walk_ctes(with, &[]),
            _ => self.children(node),
        }
    }

    fn range_var(&mut self, rv: &pb::RangeVar) {
        let table = table_ref(rv);
        if let Some(op) = self.ctx.target {
            self.b.access(op, Some(table), true);
            return;
        }
        if rv.schemaname.is_empty() && rv.catalogname.is_empty() && self.is_cte(&rv.relname) {
            return;
        }
        if self.ctx.lock {
            self.b.access(Operation::Update, Some(table.clone()), true);
        }
        self.b.access(self.ctx.read_op, Some(table), false);
    }

    fn is_cte(&self, name: &str) -> bool {
        self.ctes.iter().any(|scope| scope.iter().any(|n| n == name))
    }

    /// Walks the CTE bodies of `with`: a body sees the CTEs before it (all of
    /// them with RECURSIVE) and those of enclosing statements. `names` are
    /// the clause's CTE names, empty for the fallback.
    fn walk_ctes(&mut self, with: &pb::WithClause, names: &[String]) {
        for (i, cte) in with.ctes.iter().enumerate() {
            let visible = if with.recursive {
                names.to_vec()
            } else {
                names.get(..i).unwrap_or(names).to_vec()
            };
            self.ctes.push(visible);
            if let Some(n) = &cte.node {
                self.visit(n.to_ref());
            }
            self.ctes.pop();
        }
    }

    /// Walks the WITH clause of a statement and opens the scope of its CTE
    /// names for the rest of the statement; returns whether a scope was
    /// pushed.
    fn enter_with(&mut self, with: Option<&pb::WithClause>) -> bool {
        let Some(with) = with else { return false };
        let names: Vec<String> = with
            .ctes
            .iter()
            .filter_map(|n| match &n.node {
                Some(NodeEnum::CommonTableExpr(cte)) => Some(cte.ctename.clone()),
                _ => None,
            })
            .collect();
        self.walk_ctes(with, &names);
        self.ctes.push(names);
        true
    }

    fn exit_with(&mut self, pushed: bool) {
        if pushed {
            self.ctes.pop();
        }
    }

    fn statement(&mut self, kind: Kind, node: NodeRef<'_>, top: bool) {
        match (kind, node) {
            (Kind::Select, NodeRef::SelectStmt(s)) => self.select(s, node, top),
            (Kind::Insert, NodeRef::InsertStmt(s)) => {
                let upsert = s
                    .on_conflict_clause
                    .as_ref()
                    .is_some_and(|c| c.action == pb::OnConflictAction::OnconflictUpdate as i32);
                // INSERT ... ON CONFLICT DO UPDATE updates existing rows too.
                if upsert && let Some(rel) = &s.relation {
                    self.b.access(Operation::Update, Some(table_ref(rel)), true);
                }
                self.dml(
                    Operation::Insert,
                    node,
                    s.relation.as_ref(),
                    s.with_clause.as_ref(),
                );
            }
            (Kind::Update, NodeRef::UpdateStmt(s)) => {
                self.dml(
                    Operation::Update,
                    node,
                    s.relation.as_ref(),
                    s.with_clause.as_ref(),
                );
            }
            (Kind::Delete, NodeRef::DeleteStmt(s)) => {
                self.dml(
                    Operation::Delete,
                    node,
                    s.relation.as_ref(),
                    s.with_clause.as_ref(),
                );
            }
            (Kind::Merge, NodeRef::MergeStmt(s)) => {
                self.dml(
                    Operation::Merge,
                    node,
                    s.relation.as_ref(),
                    s.with_clause.as_ref(),
                );
            }
            (Kind::Copy, NodeRef::CopyStmt(s)) => self.copy(s, node),
            (Kind::Drop, NodeRef::DropStmt(s)) => {
                self.utility(Operation::Ddl, node);
                for table in dropped_relations(s) {
                    self.b.access(Operation::Ddl, Some(table), true);
                }
            }
            (Kind::Rename, NodeRef::RenameStmt(s)) => {
                let op = if s.rename_type == pb::ObjectType::ObjectRole as i32 {
                    Operation::Role
                } else {
                    Operation::Ddl
                };
                self.utility(op, node);
            }
            // The procedure CALL names is the class `call`, not a function
            // call; its arguments are walked like any expression.
            (Kind::Utility(op), NodeRef::CallStmt(call)) => {
                self.utility_except(op, node, &["funccall"]);
                if let Some(funccall) = &call.funccall {
                    self.children(NodeRef::FuncCall(funccall));
                }
            }
            (Kind::Utility(op), NodeRef::TransactionStmt(t)) => {
                if read_write_mode(&t.options) {
                    self.b.leaves_read_only(READ_WRITE_MODE);
                }
                self.utility(op, node);
            }
            (Kind::Utility(op), _) => self.utility(op, node),
            (Kind::Utility2(op, also), _) => {
                self.b.op(also);
                self.utility(op, node);
            }
            (Kind::Execute, NodeRef::ExecuteStmt(s)) => {
                self.b.op(Operation::Prepare);
                self.b.execute(ExecuteRef {
                    name: s.name.clone(),
                    runs: true,
                });
                self.children(node);
            }
            (Kind::Deallocate, NodeRef::DeallocateStmt(s)) => {
                // Forgetting a prepared statement reads and changes nothing;
                // drivers (psycopg after a rollback) send it unasked, so it is
                // a session operation rather than `prepare`.
                self.b.op(Operation::Session);
                self.b.prepared(if s.isall {
                    PreparedEffect::DeallocateAll
                } else {
                    PreparedEffect::Deallocate { name: s.name.clone() }
                });
            }
            (Kind::Discard, NodeRef::DiscardStmt(s)) => {
                self.b.op(Operation::Session);
                if s.target == pb::DiscardMode::DiscardAll as i32 {
                    // DISCARD ALL also resets the role (RESET SESSION
                    // AUTHORIZATION) and deallocates every prepared statement.
                    self.b.op(Operation::Role);
                    self.b.prepared(PreparedEffect::DeallocateAll);
                }
            }
            (Kind::Declare, _) => {
                // The cursor runs its query as FETCH asks for rows.
                self.b.op(Operation::Select);
                self.children(node);
            }
            (Kind::Set, NodeRef::VariableSetStmt(s)) => {
                self.variable_set(s);
                self.children(node);
            }
            (Kind::Refused(what), _) => self.fail(ClassifyError::Refused(what.to_owned())),
            (Kind::TopOnly(what), _) => self.fail(ClassifyError::Unsupported(what)),
            (Kind::NestedOnly(what), _) => {
                if top {
                    self.fail(ClassifyError::Unsupported(what));
                } else {
                    self.children(node);
                }
            }
            _ => self.fail(ClassifyError::Unsupported(
                "statement node of an unexpected shape",
            )),
        }
    }

    fn select(&mut self, s: &pb::SelectStmt, node: NodeRef<'_>, top: bool) {
        if top {
            self.b.op(Operation::Select);
        }
        self.ctx.target = None;
        let inherited_lock = self.ctx.lock;
        let locking = !s.locking_clause.is_empty();
        if locking {
            self.b.op(Operation::Update);
        }
        let pushed = self.enter_with(s.with_clause.as_ref());
        for_each_child(node, &mut |field, child| match field {
            "with_clause" | "locking_clause" => {}
            // FOR UPDATE/SHARE locks the rows of every table in FROM,
            // including those of sub-selects there (PostgreSQL applies it to
            // them). Over-approximation: `FOR UPDATE OF a` counts every FROM
            // table as locked, not only `a`.
            "from_clause" => {
                self.ctx.lock = inherited_lock || locking;
                self.visit(child);
            }
            "larg" | "rarg" => {
                self.ctx.lock = inherited_lock;
                self.visit(child);
            }
            _ => {
                self.ctx.lock = false;
                self.visit(child);
            }
        });
        self.exit_with(pushed);
    }

    fn dml(
        &mut self,
        op: Operation,
        node: NodeRef<'_>,
        relation: Option<&pb::RangeVar>,
        with: Option<&pb::WithClause>,
    ) {
        self.ctx.target = None;
        self.ctx.lock = false;
        // The target of INSERT, UPDATE, DELETE and MERGE is always a table,
        // never a CTE of the same name.
        match relation {
            Some(rel) => {
                self.b.access(op, Some(table_ref(rel)), true);
                // Writing pg_settings is set_config() through the view's
                // rules: it changes settings (role, search_path, how strings
                // are read) like SET does.
                if rel.relname == "pg_settings" {
                    self.b.function(FunctionRef {
                        schema: Some("pg_catalog".to_owned()),
                        name: "set_config".to_owned(),
                    });
                    self.b
                        .leaves_read_only("a write to pg_settings, which sets settings by name");
                }
            }
            None => self.b.op(op),
        }
        let pushed = self.enter_with(with);
        self.children_except(node, &["relation", "with_clause"]);
        self.exit_with(pushed);
    }

    fn utility(&mut self, op: Operation, node: NodeRef<'_>) {
        self.utility_except(op, node, &[]);
    }

    fn utility_except(&mut self, op: Operation, node: NodeRef<'_>, skip: &[&str]) {
        self.b.op(op);
        self.ctx = Ctx {
            read_op: Operation::Select,
            target: Some(op),
            lock: false,
        };
        self.children_except(node, skip);
    }

    fn copy(&mut self, s: &pb::CopyStmt, node: NodeRef<'_>) {
        let op = if s.is_program || !s.filename.is_empty() {
            Operation::CopyProgram
        } else if s.is_from {
            Operation::CopyFrom
        } else {
            Operation::CopyTo
        };
        // The tree cannot tell `FROM STDIN` from `FROM ''`: protobuf has no
        // null string, and both leave the filename empty. So whether a COPY
        // is `copyFrom` or `copyProgram` depends on a constant being empty,
        // and a COPY to or from a file, STDIN or STDOUT is never shared
        // through the cache (which would otherwise let `COPY t FROM ''` hand
        // its class to `COPY t FROM '/etc/passwd'`). `COPY t FROM ''` itself
        // is classified like STDIN; the server opens no file named ''.
        if !s.is_program {
            self.b.constant_sensitive();
        }
        self.b.op(op);
        if op == Operation::CopyTo {
            self.b.copy_out(copy_format(&s.options));
        }
        if let Some(rel) = &s.relation {
            self.b.access(op, Some(table_ref(rel)), s.is_from);
        }
        // The tables a `COPY (query) TO` reads are read by the COPY.
        self.ctx = Ctx {
            read_op: op,
            target: None,
            lock: false,
        };
        self.children_except(node, &["relation"]);
    }

    /// `set_config(name, value, is_local)` sets any setting by name; one
    /// that may name a read-only setting may turn a read-only session
    /// read-write. Looking at the name's value makes the classification
    /// constant-sensitive (`set_config('search_path', ...)` and
    /// `set_config('transaction_read_only', ...)` share a cache key).
    fn set_config(&mut self, call: &pb::FuncCall) {
        self.b.constant_sensitive();
        // The parser has decoded E'', U&'' and dollar-quoted strings.
        let name = match call
            .args
            .first()
            .and_then(|a| a.node.as_ref())
            .and_then(const_value)
        {
            // PostgreSQL compares setting names ignoring ASCII case, and
            // trims nothing; trimming here only errs on the safe side.
            Some(Value::Text(name)) => Some(name.trim()),
            _ => None,
        };
        match name {
            Some(n) if n.eq_ignore_ascii_case("default_transaction_read_only") => self
                .b
                .leaves_read_only("set_config of default_transaction_read_only"),
            Some(n) if n.eq_ignore_ascii_case("transaction_read_only") => {
                self.b.leaves_read_only("set_config of transaction_read_only");
            }
            Some(_) => {}
            // A column, a parameter, an expression, a cast, a named
            // argument, a number: it could be either name.
            None => self
                .b
                .leaves_read_only("set_config of a setting whose name is not a string constant"),
        }
    }

    fn variable_set(&mut self, s: &pb::VariableSetStmt) {
        let kind = pb::VariableSetKind::try_from(s.kind).unwrap_or(pb::VariableSetKind::Undefined);
        // GUC names are case-insensitive: SET "ROLE" = ... sets the role.
        let name = s.name.to_ascii_lowercase();
        match kind {
            // SET TRANSACTION SNAPSHOT imports a snapshot; its argument is
            // the snapshot's id, not a mode.
            pb::VariableSetKind::VarSetMulti if name == "transaction snapshot" => {}
            // SET TRANSACTION ..., SET SESSION CHARACTERISTICS AS TRANSACTION ...
            pb::VariableSetKind::VarSetMulti => {
                if read_write_mode(&s.args) {
                    self.b.leaves_read_only(READ_WRITE_MODE);
                }
            }
            pb::VariableSetKind::VarResetAll => {}
            // Whatever the value: a read-only session has no reason to touch
            // them, and the refusal then depends on no constant.
            _ => match name.as_str() {
                "default_transaction_read_only" => self
                    .b
                    .leaves_read_only("SET or RESET of default_transaction_read_only"),
                "transaction_read_only" => self.b.leaves_read_only("SET or RESET of transaction_read_only"),
                _ => {}
            },
        }
        let op = match kind {
            pb::VariableSetKind::VarSetMulti if name.starts_with("transaction") => Operation::Transaction,
            pb::VariableSetKind::VarSetMulti | pb::VariableSetKind::VarResetAll => Operation::Session,
            _ => match name.as_str() {
                "role" | "session_authorization" => Operation::Role,
                "standard_conforming_strings" => {
                    self.b.constant_sensitive();
                    if kind != pb::VariableSetKind::VarSetValue || !single_value(&s.args).is_some_and(is_true)
                    {
                        self.fail(ClassifyError::Refused(
                            "standard_conforming_strings may only be set to on: Gatehouse parses \
                             statements with it on, and with it off the server would read string \
                             literals differently"
                                .to_owned(),
                        ));
                    }
                    Operation::Session
                }
                "client_encoding" => {
                    self.b.constant_sensitive();
                    if kind != pb::VariableSetKind::VarSetValue || !single_value(&s.args).is_some_and(is_utf8)
                    {
                        self.fail(ClassifyError::Refused(
                            "client_encoding may only be set to UTF8: Gatehouse parses statements \
                             as UTF-8, and in other encodings the server would read them differently"
                                .to_owned(),
                        ));
                    }
                    Operation::Session
                }
                _ => Operation::Session,
            },
        };
        self.b.op(op);
    }
}

/// How a `READ WRITE` transaction mode turns read-only off.
const READ_WRITE_MODE: &str = "a READ WRITE transaction mode";

/// Whether transaction options (of BEGIN, START TRANSACTION, SET
/// TRANSACTION, SET SESSION CHARACTERISTICS) set anything but a clear
/// `READ ONLY`: the grammar writes `READ WRITE` as `transaction_read_only`
/// 0. An option of another shape counts as read-write (the safe side).
fn read_write_mode(options: &[pb::Node]) -> bool {
    options.iter().any(|option| match &option.node {
        Some(NodeEnum::DefElem(def)) if def.defname.eq_ignore_ascii_case("transaction_read_only") => !def
            .arg
            .as_deref()
            .and_then(|a| a.node.as_ref())
            .and_then(const_value)
            .is_some_and(is_true),
        Some(NodeEnum::DefElem(_)) => false,
        _ => true,
    })
}

/// A constant value in a SET or option argument.
enum Value<'a> {
    Text(&'a str),
    Int(i32),
    Bool(bool),
}

/// The format a `COPY ... TO` writes in, from its options (the legacy
/// `CSV`, `BINARY` and `DELIMITER AS` forms parse into the same options).
fn copy_format(options: &[pb::Node]) -> CopyFormat {
    let mut format = "text";
    let (mut delimiter, mut quote, mut escape) = (None, None, None);
    for option in options {
        let Some(NodeEnum::DefElem(def)) = &option.node else {
            return CopyFormat::Unknown;
        };
        let value = def.arg.as_deref().and_then(|a| match a.node.as_ref()? {
            NodeEnum::String(s) => Some(s.sval.as_str()),
            _ => None,
        });
        // One byte, as PostgreSQL requires of these options.
        let byte = || match value.map(str::as_bytes) {
            Some([b]) => Some(*b),
            _ => None,
        };
        match def.defname.as_str() {
            "format" => format = value.unwrap_or(""),
            "delimiter" => delimiter = Some(byte()),
            "quote" => quote = Some(byte()),
            "escape" => escape = Some(byte()),
            _ => {}
        }
    }
    let pick = |set: Option<Option<u8>>, default: u8| match set {
        None => Some(default),
        Some(b) => b,
    };
    match format.to_ascii_lowercase().as_str() {
        "text" => match pick(delimiter, b'\t') {
            Some(delimiter) => CopyFormat::Text { delimiter },
            None => CopyFormat::Unknown,
        },
        "csv" => {
            let (Some(delimiter), Some(quote)) = (pick(delimiter, b','), pick(quote, b'"')) else {
                return CopyFormat::Unknown;
            };
            match pick(escape, quote) {
                Some(escape) => CopyFormat::Csv {
                    delimiter,
                    quote,
                    escape,
                },
                None => CopyFormat::Unknown,
            }
        }
        "binary" => CopyFormat::Binary,
        _ => CopyFormat::Unknown,
    }
}

/// The single constant of a SET's argument list.
fn single_value(args: &[pb::Node]) -> Option<Value<'_>> {
    let [arg] = args else { return None };
    const_value(arg.node.as_ref()?)
}

/// The value of a constant node.
fn const_value(node: &NodeEnum) -> Option<Value<'_>> {
    match node {
        NodeEnum::AConst(c) => match c.val.as_ref()? {
            pb::a_const::Val::Sval(s) => Some(Value::Text(&s.sval)),
            pb::a_const::Val::Ival(i) => Some(Value::Int(i.ival)),
            pb::a_const::Val::Boolval(b) => Some(Value::Bool(b.boolval)),
            _ => None,
        },
        NodeEnum::String(s) => Some(Value::Text(&s.sval)),
        _ => None,
    }
}

fn is_true(value: Value<'_>) -> bool {
    match value {
        Value::Text(t) => ["on", "true", "yes", "1"]
            .iter()
            .any(|v| t.eq_ignore_ascii_case(v)),
        Value::Int(i) => i == 1,
        Value::Bool(b) => b,
    }
}

fn is_utf8(value: Value<'_>) -> bool {
    match value {
        // PostgreSQL ignores case and punctuation in encoding names.
        Value::Text(t) => {
            let clean: String = t
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .map(|c| c.to_ascii_lowercase())
                .collect();
            clean == "utf8" || clean == "unicode"
        }
        Value::Int(_) | Value::Bool(_) => false,
    }
}

/// The table a `RangeVar` names.
fn table_ref(rv: &pb::RangeVar) -> TableRef {
    TableRef {
        schema: (!rv.schemaname.is_empty()).then(|| rv.schemaname.clone()),
        name: rv.relname.clone(),
    }
}

/// The function a `FuncCall` names: the last name is the function, the one
/// before it the schema.
fn function_ref(names: &[pb::Node]) -> Option<FunctionRef> {
    let parts: Vec<&str> = names
        .iter()
        .filter_map(|n| match &n.node {
            Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect();
    let (name, rest) = parts.split_last()?;
    Some(FunctionRef {
        schema: rest.last().map(|s| (*s).to_owned()),
        name: (*name).to_owned(),
    })
}

/// The `=` operator, unqualified: the one the analyzer looks up by name.
fn equals() -> FunctionRef {
    FunctionRef {
        schema: None,
        name: "=".to_owned(),
    }
}

/// The operators an `A_Expr` uses. Most kinds name their operator (`IN`
/// names `=` or `<>`, `LIKE` names `~~`, `IS DISTINCT FROM` names `=`);
/// `BETWEEN` names only the keyword, and compares with `>=` and `<=` (or,
/// negated, `<` and `>`).
fn operator_names(expr: &pb::AExpr) -> Vec<FunctionRef> {
    use pb::AExprKind as K;
    let unqualified = |name: &str| FunctionRef {
        schema: None,
        name: name.to_owned(),
    };
    match K::try_from(expr.kind) {
        Ok(K::AexprBetween | K::AexprBetweenSym) => vec![unqualified(">="), unqualified("<=")],
        Ok(K::AexprNotBetween | K::AexprNotBetweenSym) => vec![unqualified("<"), unqualified(">")],
        _ => function_ref(&expr.name).into_iter().collect(),
    }
}

/// The relations a DROP names (DROP TABLE, VIEW, INDEX, ...; for DROP
/// TRIGGER, RULE and POLICY, the table they are on). Their names are lists
/// of strings, not `RangeVar`s, so the walk does not see them.
fn dropped_relations(s: &pb::DropStmt) -> Vec<TableRef> {
    use pb::ObjectType as O;
    let whole = [
        O::ObjectTable,
        O::ObjectView,
        O::ObjectMatview,
        O::ObjectIndex,
        O::ObjectSequence,
        O::ObjectForeignTable,
    ]
    .iter()
    .any(|t| *t as i32 == s.remove_type);
    let on_table = [O::ObjectTrigger, O::ObjectRule, O::ObjectPolicy]
        .iter()
        .any(|t| *t as i32 == s.remove_type);
    if !whole && !on_table {
        return Vec::new();
    }
    s.objects
        .iter()
        .filter_map(|o| match &o.node {
            Some(NodeEnum::List(list)) => {
                let mut parts: Vec<&str> = list
                    .items
                    .iter()
                    .filter_map(|i| match &i.node {
                        Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
                        _ => None,
                    })
                    .collect();
                if on_table {
                    parts.pop();
                }
                let (name, rest) = parts.split_last()?;
                Some(TableRef {
                    schema: rest.last().map(|s| (*s).to_owned()),
                    name: (*name).to_owned(),
                })
            }
            _ => None,
        })
        .collect()
}
