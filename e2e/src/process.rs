//! Child processes the harness owns.
//!
//! Each writes to its own log file, is stopped when its [`Process`] drops (a
//! test that passes, fails or panics), and gets a parent-death signal through
//! `setpriv --pdeathsig KILL` so that even a harness killed with SIGKILL leaves
//! no orphan behind. The signal fires when the *thread* that forked the child
//! exits, so every child is forked by one spawner thread that lives as long as
//! the process.

use std::{
    ffi::OsString,
    fs::File,
    io,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Mutex, OnceLock, mpsc},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::error::{Error, Result, log_tail};

type SpawnJob = (Command, mpsc::Sender<io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnJob>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("e2e-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("the spawner thread starts");
        Mutex::new(tx)
    })
}

fn spawn_on_spawner(command: Command) -> io::Result<Child> {
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .map_err(|_| io::Error::other("spawner lock poisoned"))?
        .send((command, tx))
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("spawner thread is gone"))?
}

/// Whether a process with this pid still runs (zombies count as gone).
pub fn is_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else { return false };
    if kill(Pid::from_raw(raw), None).is_err() {
        return false;
    }
    // A zombie has exited; only its parent has not reaped it yet.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        .unwrap_or(false)
}

/// How to start a child process.
#[derive(Debug, Clone)]
pub struct Spawn {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    run_as: Option<String>,
    stop_signal: Signal,
    log: PathBuf,
    /// Whether the log is appended to (a restart) rather than started afresh.
    append_log: bool,
}

impl Spawn {
    /// A process called `name` (used in errors) running `program`, logging to `log`.
    pub fn new(name: &str, program: impl Into<PathBuf>, log: impl Into<PathBuf>) -> Self {
        Spawn {
            name: name.to_owned(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            run_as: None,
            stop_signal: Signal::SIGTERM,
            log: log.into(),
            append_log: false,
        }
    }

    /// Adds arguments. Never pass a secret here: it would show in `ps` and errors.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable (the way to hand a child a secret).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Runs the process as another user (PostgreSQL refuses to run as root).
    pub fn run_as(mut self, user: Option<&str>) -> Self {
        self.run_as = user.map(str::to_owned);
        self
    }

    /// The signal that asks the process to stop (SIGTERM unless set).
    pub fn stop_signal(mut self, signal: Signal) -> Self {
        self.stop_signal = signal;
        self
    }

    /// The command line as shown in errors.
    pub fn command_line(&self) -> String {
        std::iter::once(self.program.as_os_str())
            .chain(self.args.iter().map(OsString::as_os_str))
            .map(|s| s.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn command(&self) -> io::Result<Command> {
        let log = if self.append_log {
            File::options().append(true).create(true).open(&self.log)?
        } else {
            File::create(&self.log)?
        };
        let mut command = Command::new("setpriv");
        command.arg("--pdeathsig").arg("KILL");
        if let Some(user) = &self.run_as {
            command
                .arg(format!("--reuid={user}"))
                .arg(format!("--regid={user}"))
                .arg("--init-groups");
        }
        command.arg("--").arg(&self.program).args(&self.args);
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        Ok(command)
    }

    /// Starts the process; `step` names what the harness is doing.
    pub fn start(self, step: &str) -> Result<Process> {
        let child = self
            .command()
            .and_then(spawn_on_spawner)
            .map_err(|e| Error::Command {
                step: step.to_owned(),
                command: self.command_line(),
                log: self.log.clone(),
                detail: format!("cannot start {}: {e}", self.name),
            })?;
        Ok(Process {
            command: self.command_line(),
            spawn: self,
            child: Some(child),
        })
    }

    /// Runs the process to completion; an exit status other than 0 is an error.
    pub fn run(self, step: &str) -> Result<()> {
        let mut process = self.start(step)?;
        let status = process.wait_exit();
        match status {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(process.failure(step, &format!("{} exited with {status}", process.spawn.name))),
            Err(e) => Err(process.failure(step, &format!("cannot wait for {}: {e}", process.spawn.name))),
        }
    }
}

/// A running child process, stopped on drop.
#[derive(Debug)]
pub struct Process {
    spawn: Spawn,
    command: String,
    child: Option<Child>,
}

impl Process {
    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The log file the process writes to.
    pub fn log(&self) -> &Path {
        &self.spawn.log
    }

    /// An error for `step` that names this process's command and log.
    pub fn failure(&self, step: &str, detail: &str) -> Error {
        Error::Command {
            step: step.to_owned(),
            command: self.command.clone(),
            log: self.spawn.log.clone(),
            detail: format!("{detail}\n  {}", log_tail(&self.spawn.log, 15)),
        }
    }

    /// Fails when the process has exited.
    pub fn ensure_running(&mut self, step: &str) -> Result<()> {
        let exited = match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => None,
            Some(Ok(Some(status))) => Some(format!("{} exited early with {status}", self.spawn.name)),
            Some(Err(e)) => Some(format!("cannot check on {}: {e}", self.spawn.name)),
            None => Some(format!("{} was stopped", self.spawn.name)),
        };
        match exited {
            None => Ok(()),
            Some(detail) => Err(self.failure(step, &detail)),
        }
    }

    fn wait_exit(&mut self) -> io::Result<ExitStatus> {
        match self.child.as_mut() {
            Some(child) => child.wait(),
            None => Err(io::Error::other("already stopped")),
        }
    }

    /// Kills the process with SIGKILL, as a crash or the OOM killer would,
    /// and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again as it was first started (after [`Process::kill`]
    /// or [`Process::stop`]), appending to its log.
    pub fn restart(&mut self, step: &str) -> Result<()> {
        self.stop(Duration::from_secs(10));
        let mut spawn = self.spawn.clone();
        spawn.append_log = true;
        *self = spawn.start(step)?;
        Ok(())
    }

    /// Asks the process to stop, and kills it when it has not after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = kill(Pid::from_raw(pid), self.spawn.stop_signal);
            }
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_owner_leaves_no_process_behind() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sleep.log");
        let result = std::panic::catch_unwind(|| {
            let process = Spawn::new("sleep", "sleep", &log)
                .args(["300"])
                .start("start sleep")
                .unwrap();
            let pid = process.pid().unwrap();
            assert!(is_alive(pid));
            std::panic::panic_any(pid);
        });
        let pid = *result.unwrap_err().downcast::<u32>().unwrap();
        assert!(!is_alive(pid), "process {pid} outlived the panic");
    }

    #[test]
    fn a_failing_command_names_step_command_and_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("false.log");
        let err = Spawn::new("sh", "sh", &log)
            .args(["-c", "echo boom >&2; exit 3"])
            .run("run sh")
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("step 'run sh' failed"), "{text}");
        assert!(text.contains("sh -c echo boom >&2; exit 3"), "{text}");
        assert!(text.contains(&log.display().to_string()), "{text}");
        assert!(text.contains("boom"), "{text}");
        assert!(text.contains("exit status: 3"), "{text}");
    }

    #[test]
    fn a_missing_program_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Spawn::new("nothing", "/nonexistent/bin/nothing", dir.path().join("n.log"))
            .run("run nothing")
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("step 'run nothing' failed"), "{text}");
        assert!(text.contains("/nonexistent/bin/nothing"), "{text}");
    }
}
