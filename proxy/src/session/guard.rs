//! The relay's judge: classifies each statement (through the shared cache),
//! resolves SQL-level `EXECUTE` against the session's `PREPARE`s, and decides
//! it under the Policies in force at that moment.

use std::sync::Arc;

use gatehouse_crds::policy::Operation;

use super::relay::Judge;
use crate::{
    identity::Identity,
    mask::rows::Masker,
    metrics::StatementDecision,
    policy::{self, Classification, ClassifyError, Decision, PreparedStatements, Refusal},
    server::{Runtime, Shared},
};

/// One session's judge.
#[derive(Debug)]
pub struct Guard {
    shared: Arc<Shared>,
    identity: Identity,
    prepared: PreparedStatements,
    /// The masker of the configuration seen last, and that configuration.
    masker: Option<(Arc<Runtime>, Option<Arc<Masker>>)>,
}

impl Guard {
    /// A judge for `identity`'s session.
    pub fn new(shared: Arc<Shared>, identity: Identity) -> Self {
        Guard {
            shared,
            identity,
            prepared: PreparedStatements::new(),
            masker: None,
        }
    }

    fn decide(&mut self, classification: &Classification) -> Result<(), Refusal> {
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
        match policy::refusal(&decision) {
            Some(refusal) => Err(refusal),
            None => {
                // Record PREPARE/DEALLOCATE as the statement is forwarded. A
                // PREPARE that then fails on the server leaves a name the
                // server does not have; its EXECUTE fails there, so nothing
                // runs unjudged.
                for statement in &classification.statements {
                    self.prepared.commit(statement);
                }
                Ok(())
            }
        }
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
    fn judge_sql(&mut self, sql: &str) -> Result<Arc<Classification>, Refusal> {
        let judged = self
            .shared
            .classify(sql)
            .map_err(|e| self.refuse(&e))
            .and_then(|classification| self.decide(&classification).map(|()| classification));
        match &judged {
            Ok(_) => tracing::debug!(
                user = %self.identity.username,
                statement = %crate::mask::statement_text(sql),
                "statement allowed"
            ),
            Err(refusal) => tracing::info!(
                user = %self.identity.username,
                sqlstate = refusal.sqlstate,
                reason = %crate::mask::statement_text(&refusal.message),
                statement = %crate::mask::statement_text(sql),
                "statement refused"
            ),
        }
        judged
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
        self.decide(&call)
    }
}
