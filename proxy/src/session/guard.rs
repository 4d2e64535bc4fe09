//! The relay's judge: classifies each statement (through the shared cache),
//! resolves SQL-level `EXECUTE` against the session's `PREPARE`s, decides
//! it under the Policies in force at that moment, and asks for approval of
//! the statements that need it.

use std::sync::Arc;

use gatehouse_crds::policy::Operation;

use tokio::sync::mpsc;

use super::relay::{Judge, Need, Verdict};
use crate::{
    approval::{self, HoldEvent, Outcome, Ticket},
    identity::Identity,
    mask::rows::Masker,
    metrics::StatementDecision,
    pg::messages::Bind,
    policy::{self, Classification, ClassifyError, Decision, PreparedStatements, Refusal},
    server::{Runtime, Shared},
};

/// One session's judge.
#[derive(Debug)]
pub struct Guard {
    shared: Arc<Shared>,
    identity: Identity,
    /// The session id approval requests name.
    session: String,
    prepared: PreparedStatements,
    /// The masker of the configuration seen last, and that configuration.
    masker: Option<(Arc<Runtime>, Option<Arc<Masker>>)>,
    /// Whether the upstream session is read-only because no Policy lets the
    /// caller write: statements that could turn that off are refused.
    read_only: bool,
}

impl Guard {
    /// A judge for `identity`'s session.
    pub fn new(shared: Arc<Shared>, identity: Identity, session: String) -> Self {
        Guard {
            shared,
            identity,
            session,
            prepared: PreparedStatements::new(),
            masker: None,
            read_only: false,
        }
    }

    /// Keeps the session read-only (see [`policy::may_write`]): statements
    /// that could turn its upstream session read-write are refused.
    pub fn with_read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// The refusal of a statement that could turn a read-only session
    /// read-write. Before the Policies: whatever they allow, the session
    /// stays read-only.
    fn keep_read_only(&self, resolved: &Classification) -> Result<(), Refusal> {
        match resolved.leaves_read_only() {
            Some(how) if self.read_only => {
                self.shared.metrics().statements.inc(StatementDecision::Deny);
                Err(policy::read_only_refusal(&self.identity, how))
            }
            _ => Ok(()),
        }
    }

    /// `Ok(None)` when it runs, `Ok(Some(need))` when it runs once approved.
    /// A proxy that cannot ask for approval (outside a cluster) refuses
    /// what needs it.
    async fn decide(
        &mut self,
        classification: &Classification,
        can_hold: bool,
    ) -> Result<Option<Need>, Refusal> {
        let runtime = self.shared.runtime();
        let resolved = self
            .prepared
            .resolve(classification)
            .map_err(|e| self.refuse(&e))?;
        self.keep_read_only(&resolved)?;
        // Whether each function and operator call reads is the target's
        // catalog's to say, for the statement as it runs (after EXECUTE
        // took its prepared statement's calls).
        let resolved = self.shared.catalog().judge(&runtime, resolved).await;
        let decision = policy::decide(&runtime.policies, &self.identity, &resolved);
        self.shared.metrics().statements.inc(match decision {
            Decision::Allow { .. } => StatementDecision::Allow,
            Decision::Deny { .. } => StatementDecision::Deny,
            Decision::RequireApproval { .. } => StatementDecision::RequireApproval,
        });
        let need = match decision {
            Decision::RequireApproval { policy, .. } if runs_prepared(classification) => {
                return Err(Refusal {
                    sqlstate: crate::pg::sqlstate::INSUFFICIENT_PRIVILEGE,
                    message: format!(
                        "statement refused by Gatehouse: Policy {policy} holds it for approval, and its text runs a prepared statement (EXECUTE) an approver would not see"
                    ),
                    hint:
                        "send the statement itself instead of EXECUTE, so that the approver reads what runs"
                            .to_owned(),
                    decision: "requireApproval",
                });
            }
            Decision::RequireApproval {
                policy,
                rule,
                approvers,
            } if can_hold && self.shared.approver().is_some() => Some(Need {
                policy,
                rule,
                approvers,
            }),
            decision => {
                if let Some(refusal) = policy::refusal(&decision) {
                    return Err(refusal);
                }
                None
            }
        };
        // Record PREPARE/DEALLOCATE as the statement is forwarded. A
        // PREPARE that then fails on the server leaves a name the server
        // does not have; its EXECUTE fails there, so nothing runs unjudged.
        for statement in &classification.statements {
            self.prepared.commit(statement);
        }
        Ok(need)
    }

    /// The refusal of a statement that could not be classified or resolved,
    /// counted as unparseable when PostgreSQL's parser rejects it and as
    /// denied otherwise.
    fn refuse(&self, error: &ClassifyError) -> Refusal {
        self.shared.metrics().statements.inc(match error {
            ClassifyError::Parse(_) => StatementDecision::Unparseable,
            _ => StatementDecision::Deny,
        });
        policy::refusal_for_error(error)
    }
}

impl Judge for Guard {
    async fn judge_sql(&mut self, sql: &str) -> Verdict {
        let judged = match self.shared.classify(sql) {
            Err(e) => Err(self.refuse(&e)),
            Ok(classification) => self
                .decide(&classification, true)
                .await
                .map(|need| (classification, need)),
        };
        let runtime = self.shared.runtime();
        let shown = runtime.shown();
        match &judged {
            Ok((_, Some(need))) => tracing::info!(
                user = %self.identity.username,
                policy = %need.policy,
                rule = %need.rule,
                statement = %crate::mask::statement_text_in(shown, sql),
                "statement needs approval"
            ),
            Ok((_, None)) => tracing::debug!(
                user = %self.identity.username,
                statement = %crate::mask::statement_text_in(shown, sql),
                "statement allowed"
            ),
            Err(refusal) => tracing::info!(
                user = %self.identity.username,
                sqlstate = refusal.sqlstate,
                reason = %crate::mask::text_in(shown, &refusal.message),
                statement = %crate::mask::statement_text_in(shown, sql),
                "statement refused"
            ),
        }
        match judged {
            Ok((classification, None)) => Verdict::Run(classification),
            Ok((classification, Some(need))) => Verdict::Hold(classification, need),
            Err(refusal) => Verdict::Refuse(refusal),
        }
    }

    fn hold(
        &mut self,
        need: &Need,
        sql: &str,
        param_types: &[u32],
        bind: Option<&Bind>,
    ) -> mpsc::Receiver<HoldEvent> {
        let Some(approver) = self.shared.approver() else {
            return super::relay::no_approver();
        };
        let runtime = self.shared.runtime();
        let shown = match approval::shown(runtime.shown(), sql, param_types, bind) {
            Ok(shown) => shown,
            Err(refusal) => return super::relay::decided(Outcome::Unshowable(refusal)),
        };
        let config = &runtime.config.approval;
        let ticket = Ticket {
            requester: self.identity.clone(),
            session: self.session.clone(),
            shown,
            binding: approval::binding(sql, param_types, bind),
            policy: need.policy.clone(),
            rule: need.rule.clone(),
            approvers: need.approvers.clone(),
            hold_timeout: config.hold_timeout,
            ttl: config.ttl,
        };
        approver.hold(ticket)
    }

    fn masker(&mut self) -> Option<Arc<Masker>> {
        let runtime = self.shared.runtime();
        match &self.masker {
            Some((seen, masker)) if Arc::ptr_eq(seen, &runtime) => masker.clone(),
            _ => {
                let masker = runtime.masker_for(&self.identity);
                self.masker = Some((runtime, masker.clone()));
                masker
            }
        }
    }

    async fn judge_bind(&mut self, statement: &str) -> Result<(), Refusal> {
        if self.prepared.get(statement).is_none() {
            return Ok(());
        }
        // Decided as `EXECUTE statement`: never held (an approver would
        // not see what runs), refused unless the Policy allows it outright.
        let mut b = policy::StatementBuilder::default();
        b.op(Operation::Prepare);
        b.execute(policy::ExecuteRef {
            name: statement.to_owned(),
            runs: true,
        });
        let execute = Classification {
            statements: vec![b.finish()],
        };
        let decided = self.decide(&execute, false).await.map(drop);
        if let Err(refusal) = &decided {
            tracing::info!(
                user = %self.identity.username,
                sqlstate = refusal.sqlstate,
                reason = %crate::mask::text_in(self.shared.runtime().shown(), &refusal.message),
                prepared = %statement,
                "Bind of a statement prepared in SQL refused"
            );
        }
        decided
    }

    fn judges_binds(&self) -> bool {
        !self.prepared.is_empty()
    }

    async fn judge_function_call(&mut self) -> Result<(), Refusal> {
        let call = Classification {
            statements: vec![policy::Statement {
                operations: vec![Operation::FunctionCall],
                accesses: vec![policy::Access {
                    operation: Operation::FunctionCall,
                    table: None,
                    write: true,
                }],
                ..Default::default()
            }],
        };
        // A FunctionCall is never held: it names a function by OID, with
        // nothing an approver could read.
        self.decide(&call, false).await.map(drop)
    }
}

/// Whether `classification` runs a prepared statement by name (`EXECUTE`,
/// `EXPLAIN EXECUTE`, `CREATE TABLE AS EXECUTE`): its text does not show
/// what runs, so it is never held for approval.
fn runs_prepared(classification: &Classification) -> bool {
    classification.statements.iter().any(|s| !s.executes.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::ProxyConfig, server::Runtime};

    /// A proxy whose Policy lets agents prepare statements (`prepare`) and
    /// holds deletes from `public.orders` for approval.
    fn guard() -> Guard {
        let yaml = include_str!("../../../config/proxy/standalone.yaml").replace(
            "[select, transaction, session]",
            "[select, transaction, session, prepare]",
        );
        let config = ProxyConfig::from_yaml(&yaml).expect("config");
        let shared = Shared::new(Runtime::new(config).expect("runtime"));
        let identity = Identity {
            username: "planner".into(),
            groups: vec!["agents".into()],
        };
        Guard::new(shared, identity, "s".into())
    }

    fn refusal(verdict: Verdict) -> Option<Refusal> {
        match verdict {
            Verdict::Refuse(refusal) => Some(refusal),
            _ => None,
        }
    }

    /// In a read-only session, statements that could turn the database
    /// session read-write are refused before the Policies are asked (which
    /// allow SET and transactions here), with a refusal that says why.
    #[tokio::test]
    async fn a_read_only_session_refuses_what_would_turn_it_off() {
        let mut guard = guard().with_read_only(true);
        for sql in [
            "SET default_transaction_read_only = off",
            "SET LOCAL transaction_read_only TO off",
            "RESET default_transaction_read_only",
            "SET \"Default_Transaction_Read_Only\" TO DEFAULT",
            "BEGIN READ WRITE",
            "START TRANSACTION READ WRITE",
            "SET TRANSACTION READ WRITE",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
            "SELECT set_config('transaction_read_only', 'off', false)",
            "SELECT 1; SELECT upper(set_config(E'DEFAULT_TRANSACTION_READ_ONLY', 'off', false))",
            "PREPARE p AS SELECT set_config('default_transaction_read_only', 'off', false)",
            "EXPLAIN ANALYZE SELECT set_config($$transaction_read_only$$, 'off', false)",
        ] {
            let refusal = refusal(guard.judge_sql(sql).await).unwrap_or_else(|| panic!("{sql} ran"));
            assert_eq!(refusal.sqlstate, "42501", "{sql}");
            assert!(
                refusal
                    .message
                    .contains("this session is read-only because no Policy lets you write"),
                "{sql}: {refusal:?}"
            );
            assert!(refusal.hint.contains("planner"), "{sql}: {refusal:?}");
        }
        for sql in [
            "BEGIN",
            "SET TRANSACTION READ ONLY",
            "COMMIT",
            "BEGIN READ ONLY",
            "ROLLBACK",
            "SET search_path = public",
            "RESET ALL",
            "SELECT * FROM public.orders",
        ] {
            assert!(
                matches!(guard.judge_sql(sql).await, Verdict::Run(_)),
                "{sql} should run"
            );
        }
    }

    /// Without the wall (the caller may write), the same statements are
    /// the Policies' to decide: these Policies allow SET and transactions.
    #[tokio::test]
    async fn a_read_write_session_leaves_them_to_the_policies() {
        let mut guard = guard();
        for sql in [
            "SET default_transaction_read_only = off",
            "BEGIN READ WRITE",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        ] {
            assert!(
                matches!(guard.judge_sql(sql).await, Verdict::Run(_)),
                "{sql} should run"
            );
        }
        let refusal = refusal(
            guard
                .judge_sql("SELECT set_config('transaction_read_only', 'off', false)")
                .await,
        );
        assert!(
            refusal
                .is_some_and(|r| r.hint.contains("sideEffectFunction") && !r.message.contains("read-only")),
            "set_config is a side-effect function no rule allows"
        );
    }

    /// A Bind of a statement prepared in SQL is decided as its EXECUTE,
    /// through the same check. (Such a statement cannot have been prepared
    /// in a read-only session: its PREPARE is refused; here it is put in
    /// place by hand.)
    #[tokio::test]
    async fn a_bind_of_a_marked_statement_is_refused_in_a_read_only_session() {
        let mut guard = guard().with_read_only(true);
        let marked = policy::classify("SELECT set_config('default_transaction_read_only', 'off', false)")
            .expect("classifies")
            .statements
            .remove(0);
        assert!(guard.prepared.insert("marked", marked));
        let refusal = guard.judge_bind("marked").await.expect_err("refused");
        assert!(refusal.message.contains("read-only"), "{refusal:?}");
    }

    /// SQL-level PREPARE and protocol-level Bind share one namespace in
    /// PostgreSQL: a Bind names a statement that `PREPARE` made as readily
    /// as one a Parse made. Such a Bind runs the statement, so it is
    /// decided as `EXECUTE` of it would be.
    #[tokio::test]
    async fn a_bind_of_a_statement_prepared_in_sql_is_decided_as_its_execute() {
        let mut guard = guard();
        assert!(
            matches!(
                guard.judge_sql("PREPARE wipe AS DELETE FROM public.orders").await,
                Verdict::Run(_)
            ),
            "premise: preparing runs nothing, and the Policy allows it"
        );
        assert!(
            matches!(guard.judge_sql("EXECUTE wipe").await, Verdict::Refuse(_)),
            "premise: EXECUTE of it is refused (an approver would not see it)"
        );
        let refusal = guard
            .judge_bind("wipe")
            .await
            .expect_err("the Bind runs the DELETE");
        assert_eq!(refusal.sqlstate, "42501");
        assert!(refusal.message.contains("EXECUTE"), "{refusal:?}");

        assert!(matches!(
            guard
                .judge_sql("PREPARE look AS SELECT * FROM public.orders")
                .await,
            Verdict::Run(_)
        ));
        assert_eq!(guard.judge_bind("look").await, Ok(()), "a read runs");
        assert_eq!(
            guard.judge_bind("made_by_parse").await,
            Ok(()),
            "a Parse's statement was judged at the Parse"
        );
    }
}
