//! The relay's judge: classifies each statement (through the shared cache),
//! resolves SQL-level `EXECUTE` against the session's `PREPARE`s, and decides
//! it under the Policies in force at that moment.

use std::sync::Arc;

use gatehouse_crds::policy::Operation;

use super::relay::Judge;
use crate::{
    identity::Identity,
    policy::{self, Classification, PreparedStatements, Refusal},
    server::Shared,
};

/// One session's judge.
#[derive(Debug)]
pub struct Guard {
    shared: Arc<Shared>,
    identity: Identity,
    prepared: PreparedStatements,
}

impl Guard {
    /// A judge for `identity`'s session.
    pub fn new(shared: Arc<Shared>, identity: Identity) -> Self {
        Guard {
            shared,
            identity,
            prepared: PreparedStatements::new(),
        }
    }

    fn decide(&mut self, classification: &Classification) -> Result<(), Refusal> {
        let runtime = self.shared.runtime();
        let resolved = self
            .prepared
            .resolve(classification)
            .map_err(|e| policy::refusal_for_error(&e))?;
        let decision = policy::decide(&runtime.policies, &self.identity, &resolved);
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
}

impl Judge for Guard {
    fn judge_sql(&mut self, sql: &str) -> Result<(), Refusal> {
        let classification = self
            .shared
            .classify(sql)
            .map_err(|e| policy::refusal_for_error(&e))?;
        self.decide(&classification)
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
