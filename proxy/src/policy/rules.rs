//! Policy rules compiled from the `Policy` API type, and the decision.
//!
//! Semantics (DESIGN.md, "Policy"): default deny; every matching rule of
//! every Policy that names the caller counts, and the most restrictive action
//! wins (deny over requireApproval over allow); a multi-statement query takes
//! the most restrictive decision of its parts. The unit a rule is matched
//! against is one [`Access`] of a statement, see the [module
//! documentation](super).
//!
//! # Unqualified table names
//!
//! A statement's `orders` means whatever the session's `search_path` finds
//! first, which the classifier cannot know (the search path is the session's
//! and can change with `SET`, `set_config` or role defaults). So an
//! unqualified table matches a pattern's table part in *any* schema:
//! `orders` matches `public.orders`, `sales.orders` and `*.orders`. For deny
//! and requireApproval rules that is the safe side: they catch the statement
//! whichever schema it reaches. For allow rules it is the permissive side: an
//! allow rule on `public.orders` also allows `SELECT * FROM orders` when the
//! search path would find a `secret.orders` first. Keep allow rules safe by
//! pairing them with deny rules on schemas the caller must not reach, by not
//! allowing `session` (SET search_path) and `sideEffectFunction`
//! (set_config), or by having agents qualify their names.

use gatehouse_crds::common::Approvers;
use gatehouse_crds::policy::{Action, Operation, PolicySpec, SubjectKind};

use super::{Access, Classification, ClassifyError, Statement, TableRef};

/// The rule name a refusal carries when no rule allowed the statement.
pub const DEFAULT_DENY: &str = "default deny";

/// The name of the one rule of a Policy that does not compile (see
/// [`CompiledPolicy::compile_or_deny`]).
pub const INVALID_POLICY_RULE: &str = "invalid-policy";

/// SQLSTATE `insufficient_privilege`.
const INSUFFICIENT_PRIVILEGE: &str = "42501";
/// SQLSTATE `syntax_error`.
const SYNTAX_ERROR: &str = "42601";
/// SQLSTATE `statement_too_complex`, PostgreSQL's own for "stack depth limit
/// exceeded".
const STATEMENT_TOO_COMPLEX: &str = "54001";

/// The authenticated caller: a username plus groups, as the identity
/// validators produce it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// The username, for a Kubernetes ServiceAccount
    /// `system:serviceaccount:<namespace>:<name>`.
    pub username: String,
    /// The groups the caller belongs to.
    pub groups: Vec<String>,
}

/// Why a Policy could not be compiled. The CRD's validation rules prevent
/// most of these for Policies that come through the API server (not a bad
/// label selector); standalone configuration files are checked here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// A `connectionSelector` that is not a valid label selector.
    #[error("Policy {policy}: spec.connectionSelector is not a valid label selector: {message}")]
    BadSelector {
        /// The Policy.
        policy: String,
        /// What is wrong with it.
        message: String,
    },
    /// A ServiceAccount subject without a namespace.
    #[error("Policy {policy}: subject {name:?} of kind ServiceAccount needs a namespace")]
    MissingNamespace {
        /// The Policy.
        policy: String,
        /// The subject's name.
        name: String,
    },
    /// A table pattern that is not `schema.table`.
    #[error(
        "Policy {policy}, rule {rule}: table pattern {pattern:?} must be schema-qualified, as schema.table"
    )]
    BadTablePattern {
        /// The Policy.
        policy: String,
        /// The rule.
        rule: String,
        /// The pattern.
        pattern: String,
    },
    /// A requireApproval rule without approvers.
    #[error("Policy {policy}, rule {rule}: action requireApproval needs approvers")]
    MissingApprovers {
        /// The Policy.
        policy: String,
        /// The rule.
        rule: String,
    },
}

/// A caller a Policy applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SubjectMatcher {
    Username(String),
    Group(String),
    /// Every caller: the subjects of a Policy that does not compile, when
    /// the subjects themselves are what does not compile.
    Everyone,
}

/// A `schema.table` pattern, `*` matching any run of characters in either
/// part.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TablePattern {
    schema: String,
    table: String,
}

impl TablePattern {
    fn matches(&self, table: &TableRef) -> bool {
        // An unqualified name could be in any schema: see the module docs.
        let schema_ok = table.schema.as_deref().is_none_or(|s| glob(&self.schema, s));
        schema_ok && glob(&self.table, &table.name)
    }
}

/// One compiled rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledRule {
    /// The rule's name.
    pub name: String,
    /// The operations it matches; empty matches every operation.
    pub operations: Vec<Operation>,
    tables: Vec<TablePattern>,
    /// What happens to a matching statement.
    pub action: Action,
    /// Who may approve, for `requireApproval`.
    pub approvers: Option<Approvers>,
}

impl CompiledRule {
    /// Whether the rule matches one access of a statement: its operation is
    /// among the rule's (or the rule names none), and its table matches a
    /// pattern (or the rule names none; a rule that names tables never
    /// matches an access without one).
    pub fn matches(&self, access: &Access) -> bool {
        let op_ok = self.operations.is_empty() || self.operations.contains(&access.operation);
        let table_ok = self.tables.is_empty()
            || access
                .table
                .as_ref()
                .is_some_and(|t| self.tables.iter().any(|p| p.matches(t)));
        op_ok && table_ok
    }
}

/// A Policy ready for decisions: who it names and its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledPolicy {
    /// The Policy's name.
    pub name: String,
    subjects: Vec<SubjectMatcher>,
    /// Its rules, in order.
    pub rules: Vec<CompiledRule>,
    /// Why the Policy as written cannot be used; it then denies everything
    /// ([`CompiledPolicy::denying`]).
    problem: Option<String>,
}

impl CompiledPolicy {
    /// Compiles the Policy `name` with spec `spec`.
    ///
    /// # Errors
    ///
    /// [`CompileError`] when the selector, a subject, pattern or rule is
    /// malformed.
    pub fn compile(name: impl Into<String>, spec: &PolicySpec) -> Result<Self, CompileError> {
        let name = name.into();
        // The operator applies the selector; one it cannot read is the
        // Policy's mistake all the same, whoever reads the Policy.
        kube::core::Selector::try_from(spec.connection_selector.clone()).map_err(|e| {
            CompileError::BadSelector {
                policy: name.clone(),
                message: e.to_string(),
            }
        })?;
        let subjects = compile_subjects(&name, spec)?;
        let mut rules = Vec::with_capacity(spec.rules.len());
        for r in &spec.rules {
            let mut tables = Vec::with_capacity(r.matches.tables.len());
            for pattern in &r.matches.tables {
                let parsed = pattern
                    .split_once('.')
                    .filter(|(s, t)| !s.is_empty() && !t.is_empty() && !t.contains('.'));
                let (schema, table) = parsed.ok_or_else(|| CompileError::BadTablePattern {
                    policy: name.clone(),
                    rule: r.name.clone(),
                    pattern: pattern.clone(),
                })?;
                tables.push(TablePattern {
                    schema: schema.to_owned(),
                    table: table.to_owned(),
                });
            }
            if r.action == Action::RequireApproval && r.approvers.is_none() {
                return Err(CompileError::MissingApprovers {
                    policy: name.clone(),
                    rule: r.name.clone(),
                });
            }
            rules.push(CompiledRule {
                name: r.name.clone(),
                operations: r.matches.operations.clone(),
                tables,
                action: r.action,
                approvers: r.approvers.clone(),
            });
        }
        Ok(Self {
            name,
            subjects,
            rules,
            problem: None,
        })
    }

    /// Compiles the Policy `name`, or, when it does not compile, the Policy
    /// that stands in for it until it is fixed ([`CompiledPolicy::denying`]).
    ///
    /// Dropping such a Policy would fail open: a typo in a restrictive one
    /// (`deny`, `requireApproval`) would leave a broader allow Policy alone
    /// in force.
    pub fn compile_or_deny(name: impl Into<String>, spec: &PolicySpec) -> Self {
        let name = name.into();
        match Self::compile(name.clone(), spec) {
            Ok(policy) => policy,
            Err(e) => Self::denying(name, spec, e.to_string()),
        }
    }

    /// The Policy `name` that cannot be used as written, for `problem`: one
    /// rule, [`INVALID_POLICY_RULE`], that denies every access to the
    /// callers the Policy names, or to every caller when its subjects are
    /// what does not compile. Its refusals name the Policy and the problem.
    pub fn denying(name: impl Into<String>, spec: &PolicySpec, problem: impl Into<String>) -> Self {
        let name = name.into();
        let subjects = compile_subjects(&name, spec).unwrap_or_else(|_| vec![SubjectMatcher::Everyone]);
        Self {
            name,
            subjects,
            rules: vec![CompiledRule {
                name: INVALID_POLICY_RULE.to_owned(),
                // Empty: every operation, on any table or none.
                operations: Vec::new(),
                tables: Vec::new(),
                action: Action::Deny,
                approvers: None,
            }],
            problem: Some(problem.into()),
        }
    }

    /// Why the Policy as written cannot be used, when it cannot: it then
    /// denies everything to the callers it names.
    pub fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }

    /// Whether the Policy names the caller, by username or by a group.
    pub fn applies_to(&self, identity: &Identity) -> bool {
        self.subjects.iter().any(|s| match s {
            SubjectMatcher::Username(u) => *u == identity.username,
            SubjectMatcher::Group(g) => identity.groups.iter().any(|ig| ig == g),
            SubjectMatcher::Everyone => true,
        })
    }
}

/// The callers `spec` names.
fn compile_subjects(policy: &str, spec: &PolicySpec) -> Result<Vec<SubjectMatcher>, CompileError> {
    spec.subjects
        .iter()
        .map(|s| match s.kind {
            SubjectKind::ServiceAccount => {
                let ns = s
                    .namespace
                    .as_deref()
                    .ok_or_else(|| CompileError::MissingNamespace {
                        policy: policy.to_owned(),
                        name: s.name.clone(),
                    })?;
                Ok(SubjectMatcher::Username(format!(
                    "system:serviceaccount:{ns}:{}",
                    s.name
                )))
            }
            SubjectKind::User => Ok(SubjectMatcher::Username(s.name.clone())),
            SubjectKind::Group => Ok(SubjectMatcher::Group(s.name.clone())),
        })
        .collect()
}

/// What happens to a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// It runs. For an empty query (nothing to run), `policy` and `rule` are
    /// empty.
    Allow {
        /// The Policy whose rule allowed the (first) statement.
        policy: String,
        /// The rule.
        rule: String,
    },
    /// It is refused.
    Deny {
        /// The Policy whose rule denied it; empty for the default deny.
        policy: String,
        /// The rule, or [`DEFAULT_DENY`].
        rule: String,
        /// What the caller or an administrator can do about it.
        hint: String,
    },
    /// It waits for approval.
    RequireApproval {
        /// The Policy whose rule requires approval.
        policy: String,
        /// The rule.
        rule: String,
        /// Who may approve.
        approvers: Approvers,
    },
}

impl Decision {
    fn rank(&self) -> u8 {
        match self {
            Decision::Allow { .. } => 0,
            Decision::RequireApproval { .. } => 1,
            Decision::Deny { .. } => 2,
        }
    }

    /// The more restrictive of `self` and `other`; `self` on a tie, so the
    /// first statement or access that reached a level names it.
    fn worst(self, other: Decision) -> Decision {
        if other.rank() > self.rank() { other } else { self }
    }

    /// Whether the query runs.
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

/// Decides `classification` for `identity` under `policies` (the compiled
/// Policies that select this connection).
///
/// A statement still carrying an unresolved `EXECUTE` (see
/// [`PreparedStatements::resolve`](super::PreparedStatements::resolve)) is
/// denied.
pub fn decide(policies: &[CompiledPolicy], identity: &Identity, classification: &Classification) -> Decision {
    let applicable: Vec<&CompiledPolicy> = policies.iter().filter(|p| p.applies_to(identity)).collect();
    let mut worst: Option<Decision> = None;
    for stmt in &classification.statements {
        let d = decide_statement(&applicable, identity, stmt);
        worst = Some(match worst {
            None => d,
            Some(w) => w.worst(d),
        });
        if matches!(worst, Some(Decision::Deny { .. })) {
            break;
        }
    }
    worst.unwrap_or_else(|| Decision::Allow {
        policy: String::new(),
        rule: String::new(),
    })
}

/// The operations that write nothing: reads, and what drivers send around
/// them. Every other operation writes, or may.
pub const READ_OPERATIONS: &[Operation] = &[
    Operation::Select,
    Operation::Explain,
    Operation::Session,
    Operation::Transaction,
    Operation::Prepare,
    Operation::CopyTo,
];

/// Whether `identity` may write under `policies` (the compiled Policies that
/// select this connection): some `allow` or `requireApproval` rule of a
/// Policy that names the caller matches an operation outside
/// [`READ_OPERATIONS`]. A rule that names no operation matches every one, so
/// it writes; `deny` rules never let anyone write.
///
/// A caller who may not write gets a read-only database session (see
/// [`read_only_refusal`]), so that PostgreSQL itself refuses a write the
/// classifier missed.
pub fn may_write(policies: &[CompiledPolicy], identity: &Identity) -> bool {
    write_rule(policies, identity).is_some()
}

/// The first rule that lets `identity` write (see [`may_write`]), with its
/// Policy.
pub fn write_rule<'a>(
    policies: &'a [CompiledPolicy],
    identity: &Identity,
) -> Option<(&'a CompiledPolicy, &'a CompiledRule)> {
    policies
        .iter()
        .filter(|p| p.applies_to(identity))
        .flat_map(|p| p.rules.iter().map(move |r| (p, r)))
        .find(|(_, r)| {
            matches!(r.action, Action::Allow | Action::RequireApproval)
                && (r.operations.is_empty() || r.operations.iter().any(|op| !READ_OPERATIONS.contains(op)))
        })
}

fn decide_statement(applicable: &[&CompiledPolicy], identity: &Identity, stmt: &Statement) -> Decision {
    if let Some(e) = stmt.executes.first() {
        return Decision::Deny {
            policy: String::new(),
            rule: DEFAULT_DENY.to_owned(),
            hint: format!(
                "prepared statement \"{}\" was not resolved against the session's prepared statements",
                e.name
            ),
        };
    }
    if !stmt.calls_judged && stmt.calls_anything() {
        // Whether a call is a read is the catalog's to say; nothing judged
        // it, so nothing vouches for it.
        return Decision::Deny {
            policy: String::new(),
            rule: DEFAULT_DENY.to_owned(),
            hint:
                "the statement's function and operator calls were not checked against the database's catalog"
                    .to_owned(),
        };
    }
    let mut worst: Option<Decision> = None;
    for access in &stmt.accesses {
        let d = decide_access(applicable, identity, stmt, access);
        worst = Some(match worst {
            None => d,
            Some(w) => w.worst(d),
        });
        if matches!(worst, Some(Decision::Deny { .. })) {
            break;
        }
    }
    worst.unwrap_or_else(|| Decision::Deny {
        policy: String::new(),
        rule: DEFAULT_DENY.to_owned(),
        hint: "the statement does nothing Gatehouse can match against a rule".to_owned(),
    })
}

fn decide_access(
    applicable: &[&CompiledPolicy],
    identity: &Identity,
    stmt: &Statement,
    access: &Access,
) -> Decision {
    let mut best: Option<(&CompiledPolicy, &CompiledRule)> = None;
    for policy in applicable {
        for rule in &policy.rules {
            if rule.matches(access)
                && best.is_none_or(|(_, b)| action_rank(rule.action) > action_rank(b.action))
            {
                best = Some((policy, rule));
            }
        }
    }
    let what = describe(stmt, access);
    match best {
        None => {
            let hint = if applicable.is_empty() {
                format!(
                    "no Policy for this connection names {} or one of its groups; add it to the subjects of a Policy with a rule that allows {what}",
                    identity.username
                )
            } else {
                format!(
                    "no rule allows {what} for {}; add a Policy rule with action allow (or requireApproval) that matches it",
                    identity.username
                )
            };
            Decision::Deny {
                policy: String::new(),
                rule: DEFAULT_DENY.to_owned(),
                hint,
            }
        }
        Some((policy, rule)) => match rule.action {
            Action::Allow => Decision::Allow {
                policy: policy.name.clone(),
                rule: rule.name.clone(),
            },
            Action::Deny => Decision::Deny {
                policy: policy.name.clone(),
                rule: rule.name.clone(),
                hint: match &policy.problem {
                    Some(problem) => format!(
                        "Policy {} is invalid, so it refuses every statement of the callers it names until it is fixed: {problem}",
                        policy.name
                    ),
                    None => format!(
                        "rule {} of Policy {} denies {what}; a deny rule wins over every allow rule, so only changing that rule lets this statement run",
                        rule.name, policy.name
                    ),
                },
            },
            Action::RequireApproval => Decision::RequireApproval {
                policy: policy.name.clone(),
                rule: rule.name.clone(),
                approvers: rule.approvers.clone().unwrap_or_default(),
            },
        },
    }
}

fn action_rank(action: Action) -> u8 {
    match action {
        Action::Allow => 0,
        Action::RequireApproval => 1,
        Action::Deny => 2,
    }
}

/// "delete on public.orders", "ddl", "sideEffectFunction (pg_read_file)".
fn describe(stmt: &Statement, access: &Access) -> String {
    let op = operation_name(access.operation);
    match &access.table {
        Some(t) => format!("{op} on {t}"),
        None if access.operation == Operation::SideEffectFunction
            && !stmt.side_effect_functions.is_empty() =>
        {
            let names: Vec<String> = stmt
                .side_effect_functions
                .iter()
                .map(ToString::to_string)
                .collect();
            format!("{op} ({})", names.join(", "))
        }
        None => op.to_owned(),
    }
}

/// The name of an operation as Policy rules spell it.
pub fn operation_name(op: Operation) -> &'static str {
    match op {
        Operation::Select => "select",
        Operation::Insert => "insert",
        Operation::Update => "update",
        Operation::Delete => "delete",
        Operation::Merge => "merge",
        Operation::Ddl => "ddl",
        Operation::Truncate => "truncate",
        Operation::CopyTo => "copyTo",
        Operation::CopyFrom => "copyFrom",
        Operation::CopyProgram => "copyProgram",
        Operation::Privilege => "privilege",
        Operation::Role => "role",
        Operation::Session => "session",
        Operation::Transaction => "transaction",
        Operation::TwoPhaseCommit => "twoPhaseCommit",
        Operation::Maintenance => "maintenance",
        Operation::Do => "do",
        Operation::Call => "call",
        Operation::Prepare => "prepare",
        Operation::Explain => "explain",
        Operation::SideEffectFunction => "sideEffectFunction",
        Operation::FunctionCall => "functionCall",
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it has swallowed up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

/// The fields of the ErrorResponse that refuses a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The SQLSTATE: `42501` (insufficient_privilege) for policy refusals,
    /// `42601` (syntax_error) for text the parser rejects.
    pub sqlstate: &'static str,
    /// The primary message, naming the Policy and rule.
    pub message: String,
    /// What would let the statement run.
    pub hint: String,
    /// The decision as recordings name it: `deny` or `requireApproval`.
    pub decision: &'static str,
}

/// The refusal for a decision, or `None` when it runs.
///
/// `requireApproval` is refused too, naming the approvers, where the proxy
/// cannot hold statements for approval (standalone, outside a cluster).
pub fn refusal(decision: &Decision) -> Option<Refusal> {
    match decision {
        Decision::Allow { .. } => None,
        Decision::Deny { policy, rule, hint } => Some(Refusal {
            sqlstate: INSUFFICIENT_PRIVILEGE,
            message: if policy.is_empty() {
                format!("permission denied by Gatehouse: {rule}")
            } else {
                format!("permission denied by Gatehouse Policy \"{policy}\", rule \"{rule}\"")
            },
            hint: hint.clone(),
            decision: "deny",
        }),
        Decision::RequireApproval {
            policy,
            rule,
            approvers,
        } => Some(Refusal {
            sqlstate: INSUFFICIENT_PRIVILEGE,
            message: format!(
                "statement requires approval under Gatehouse Policy \"{policy}\", rule \"{rule}\""
            ),
            hint: format!(
                "approval by {} of {} is required, and this proxy runs outside Kubernetes, where it cannot ask for approval; run it under the Gatehouse operator to have such statements held for approvers",
                approvers.required,
                describe_approvers(approvers)
            ),
            decision: "requireApproval",
        }),
    }
}

/// The refusal of a statement that could turn a read-only session
/// read-write (`how`, from [`Statement::leaves_read_only`]), in a session of
/// a caller no Policy lets write.
pub fn read_only_refusal(identity: &Identity, how: &str) -> Refusal {
    let reads: Vec<&str> = READ_OPERATIONS.iter().map(|op| operation_name(*op)).collect();
    Refusal {
        sqlstate: INSUFFICIENT_PRIVILEGE,
        message: format!(
            "permission denied by Gatehouse: this session is read-only because no Policy lets you write, \
             and this statement could turn that off ({how})"
        ),
        hint: format!(
            "no rule of a Policy naming {} allows (or holds for approval) an operation other than {}, so \
             Gatehouse opened the database session read-only (default_transaction_read_only on) and \
             refuses statements that could change that; leave the session read-only, or, to write, ask \
             for a Policy rule that allows the write and reconnect (a session is read-only or not from its start)",
            identity.username,
            reads.join(", ")
        ),
        decision: "deny",
    }
}

fn describe_approvers(approvers: &Approvers) -> String {
    let mut parts = Vec::new();
    if !approvers.groups.is_empty() {
        parts.push(format!("groups {}", approvers.groups.join(", ")));
    }
    if !approvers.users.is_empty() {
        parts.push(format!("users {}", approvers.users.join(", ")));
    }
    if parts.is_empty() {
        "the approvers".to_owned()
    } else {
        parts.join(" or ")
    }
}

/// The refusal for a text that could not be classified (fail closed).
pub fn refusal_for_error(error: &ClassifyError) -> Refusal {
    match error {
        ClassifyError::Parse(message) => Refusal {
            sqlstate: SYNTAX_ERROR,
            message: message.clone(),
            hint: "Gatehouse reads every statement with PostgreSQL's parser and refuses text it cannot parse"
                .to_owned(),
            decision: "deny",
        },
        ClassifyError::TooDeep(_) => Refusal {
            sqlstate: STATEMENT_TOO_COMPLEX,
            message: error.to_string(),
            hint: "PostgreSQL refuses such nesting too, at a few thousand levels; write long lists flat, \
                   with IN (...), ARRAY[...] or concat(...)"
                .to_owned(),
            decision: "deny",
        },
        ClassifyError::UnknownPrepared(name) => Refusal {
            sqlstate: INSUFFICIENT_PRIVILEGE,
            message: format!("permission denied by Gatehouse: {error}"),
            hint: format!("PREPARE \"{name}\" in this session, through Gatehouse, before executing it"),
            decision: "deny",
        },
        ClassifyError::Unsupported(_) | ClassifyError::Refused(_) => Refusal {
            sqlstate: INSUFFICIENT_PRIVILEGE,
            message: format!("permission denied by Gatehouse: {error}"),
            hint: "Gatehouse refuses statements it cannot classify; no Policy rule can allow this one"
                .to_owned(),
            decision: "deny",
        },
    }
}
