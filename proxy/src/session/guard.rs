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
        }
    }

    /// `Ok(None)` when it runs, `Ok(Some(need))` when it runs once approved.
    /// A proxy that cannot ask for approval (outside a cluster) refuses
    /// what needs it.
    fn decide(&mut self, classification: &Classification, can_hold: bool) -> Result<Option<Need>, Refusal> {
        let runtime = self.shared.runtime();
        let resolved = self
            .prepared
            .resolve(classification)
            .map_err(|e| self.refuse(&e))?;
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
    fn judge_sql(&mut self, sql: &str) -> Verdict {
        let judged = self
            .shared
            .classify(sql)
            .map_err(|e| self.refuse(&e))
            .and_then(|classification| {
                self.decide(&classification, true)
                    .map(|need| (classification, need))
            });
        match &judged {
            Ok((_, Some(need))) => tracing::info!(
                user = %self.identity.username,
                policy = %need.policy,
                rule = %need.rule,
                statement = %crate::mask::statement_text(sql),
                "statement needs approval"
            ),
            Ok((_, None)) => tracing::debug!(
                user = %self.identity.username,
                statement = %crate::mask::statement_text(sql),
                "statement allowed"
            ),
            Err(refusal) => tracing::info!(
                user = %self.identity.username,
                sqlstate = refusal.sqlstate,
                reason = %crate::mask::text(&refusal.message),
                statement = %crate::mask::statement_text(sql),
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
        let shown = match approval::shown(sql, param_types, bind) {
            Ok(shown) => shown,
            Err(refusal) => return super::relay::decided(Outcome::Unshowable(refusal)),
        };
        let config = &self.shared.runtime().config.approval;
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

    fn judge_function_call(&mut self) -> Result<(), Refusal> {
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
        self.decide(&call, false).map(drop)
    }
}

/// Whether `classification` runs a prepared statement by name (`EXECUTE`,
/// `EXPLAIN EXECUTE`, `CREATE TABLE AS EXECUTE`): its text does not show
/// what runs, so it is never held for approval.
fn runs_prepared(classification: &Classification) -> bool {
    classification.statements.iter().any(|s| !s.executes.is_empty())
}
