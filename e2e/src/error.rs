//! Harness errors: each names the step that failed and, where a command ran,
//! the command line and the log to read.

use std::path::PathBuf;

/// Result of a harness step.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A harness step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command failed, exited early or never became ready.
    #[error("step '{step}' failed: {detail}\n  command: {command}\n  log: {}", log.display())]
    Command {
        /// What the harness was doing, e.g. `start kube-apiserver`.
        step: String,
        /// The command line (never holds a secret: secrets go through files or the environment).
        command: String,
        /// Where the command's output is.
        log: PathBuf,
        /// What went wrong, with the last lines of the log when there are any.
        detail: String,
    },
    /// Anything else, e.g. a file that could not be written.
    #[error("step '{step}' failed: {detail}")]
    Step {
        /// What the harness was doing.
        step: String,
        /// What went wrong.
        detail: String,
    },
}

impl Error {
    /// An error for a step that ran no command.
    pub fn step(step: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Error::Step {
            step: step.into(),
            detail: detail.to_string(),
        }
    }

    /// The step this error names.
    pub fn step_name(&self) -> &str {
        match self {
            Error::Command { step, .. } | Error::Step { step, .. } => step,
        }
    }
}

/// Attaches a step name to any error.
pub trait StepExt<T> {
    /// Turns the error into [`Error::Step`] naming `step`.
    fn step(self, step: &str) -> Result<T>;
}

impl<T, E: std::error::Error> StepExt<T> for std::result::Result<T, E> {
    fn step(self, step: &str) -> Result<T> {
        self.map_err(|e| Error::step(step, chain(&e)))
    }
}

/// An error and its sources, `outer: inner: innermost` (e.g. tokio-postgres's
/// "db error" says what went wrong only in its source).
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// The last `lines` lines of a log file, indented, for an error message.
pub fn log_tail(log: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    if all.is_empty() {
        return "(the log is empty)".to_owned();
    }
    let mut out = String::from("last lines of the log:");
    for line in &all[start..] {
        out.push_str("\n    | ");
        out.push_str(line);
    }
    out
}
