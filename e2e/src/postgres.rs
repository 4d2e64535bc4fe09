//! A private PostgreSQL cluster per run: Debian's server binaries, `initdb`
//! into a temporary folder, SCRAM authentication, a random loopback port, and
//! the seed schema in `e2e/sql/seed.sql`.
//!
//! The server runs as a child of the harness (not daemonised by `pg_ctl`) so
//! that it stops with the harness like every other component.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use tokio_postgres::{Client, Config, NoTls, error::SqlState};

use crate::{
    error::{Error, Result, StepExt},
    kube::write_private,
    net::free_port,
    pki::random_hex,
    process::{Process, Spawn},
    tools::Tools,
};

/// The database the seed schema lives in.
pub const DATABASE: &str = "orders";
/// The role whose credential Gatehouse injects: it owns nothing and may read
/// and write the seed tables.
pub const APP_USER: &str = "gatehouse_app";

/// A running PostgreSQL server.
#[derive(Debug)]
pub struct Postgres {
    process: Process,
    /// Loopback port.
    pub port: u16,
    /// Password of the `postgres` superuser.
    pub superuser_password: String,
    /// Password of [`APP_USER`].
    pub app_password: String,
}

impl Postgres {
    /// Initialises a cluster under `dir`, starts it on a free port, seeds it.
    pub async fn start(dir: &Path) -> Result<Postgres> {
        Self::start_on(dir, free_port()?).await
    }

    /// Like [`Postgres::start`], on a given port.
    pub async fn start_on(dir: &Path, port: u16) -> Result<Postgres> {
        let tools = Tools::get()?;
        let run_as = server_user()?;
        let data = dir.join("data");
        let sockets = dir.join("sockets");
        for folder in [dir, &sockets] {
            std::fs::create_dir_all(folder).step("create the PostgreSQL folder")?;
        }
        let superuser_password = random_hex(16);
        let pwfile = dir.join("pwfile");
        write_private(&pwfile, &superuser_password).step("write the PostgreSQL password file")?;
        if let Some(user) = &run_as {
            chown(&[dir, &sockets, &pwfile], user)?;
        }

        Spawn::new("initdb", tools.pg("initdb"), dir.join("initdb.log"))
            .run_as(run_as.as_deref())
            .args(["-D"])
            .args([&data])
            .args([
                "--username=postgres",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .args([format!("--pwfile={}", pwfile.display())])
            .run("initialise PostgreSQL (initdb)")?;
        std::fs::remove_file(&pwfile).step("remove the PostgreSQL password file")?;

        let step = "start PostgreSQL";
        let mut process = Spawn::new("postgres", tools.pg("postgres"), dir.join("postgres.log"))
            .run_as(run_as.as_deref())
            .stop_signal(Signal::SIGINT) // fast shutdown
            .args(["-D"])
            .args([&data])
            .args(["-c", "listen_addresses=127.0.0.1", "-c"])
            .args([
                format!("port={port}"),
                "-c".into(),
                format!("unix_socket_directories={}", sockets.display()),
            ])
            .args([
                "-c",
                "max_connections=300",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "password_encryption=scram-sha-256",
            ])
            .start(step)?;

        wait_accepting(&mut process, step, port, Duration::from_secs(60)).await?;
        let postgres = Postgres {
            process,
            port,
            superuser_password,
            app_password: random_hex(16),
        };
        postgres.seed().await?;
        Ok(postgres)
    }

    /// Connection settings for `user` with `password` on `database`.
    pub fn config(&self, user: &str, password: &str, database: &str) -> Config {
        let mut config = Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user(user)
            .password(password)
            .dbname(database);
        config
    }

    /// A connection as the superuser to `database`.
    pub async fn superuser(&self, database: &str) -> Result<Client> {
        connect(&self.config("postgres", &self.superuser_password, database)).await
    }

    /// A connection as [`APP_USER`] to [`DATABASE`].
    pub async fn app(&self) -> Result<Client> {
        connect(&self.config(APP_USER, &self.app_password, DATABASE)).await
    }

    async fn seed(&self) -> Result<()> {
        let step = "seed PostgreSQL";
        let admin = self.superuser("postgres").await?;
        // A password cannot be a bind parameter in CREATE ROLE; it is random hex, so quoting is safe.
        admin
            .batch_execute(&format!(
                "CREATE ROLE {APP_USER} LOGIN PASSWORD '{}'",
                self.app_password
            ))
            .await
            .step(step)?;
        admin
            .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
            .await
            .step(step)?;
        let db = self.superuser(DATABASE).await?;
        db.batch_execute(include_str!("../sql/seed.sql"))
            .await
            .step(step)?;
        db.batch_execute(&format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP_USER};"
        ))
        .await
        .step(step)?;
        Ok(())
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// The server's log file.
    pub fn log(&self) -> &Path {
        self.process.log()
    }
}

async fn connect(config: &Config) -> Result<Client> {
    let (client, connection) = config.connect(NoTls).await.step("connect to PostgreSQL")?;
    tokio::spawn(connection);
    Ok(client)
}

async fn wait_accepting(process: &mut Process, step: &str, port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        process.ensure_running(step)?;
        // Any answer from the server (even a refused login) means it accepts
        // connections, except "the database system is starting up" (57P03).
        let mut probe = Config::new();
        probe
            .host("127.0.0.1")
            .port(port)
            .user("postgres")
            .password("-")
            .dbname("postgres");
        // Bounded: something else listening on the port may never answer.
        let answer = match tokio::time::timeout(Duration::from_secs(2), probe.connect(NoTls)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) if e.as_db_error().is_some() && e.code() != Some(&SqlState::CANNOT_CONNECT_NOW) => {
                return Ok(());
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer within 2s".to_owned(),
        };
        if Instant::now() > deadline {
            return Err(process.failure(
                step,
                &format!("port {port} does not accept connections: {answer}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// PostgreSQL refuses to run as root: as root, run it as `postgres` (created by
/// Debian's package) or `nobody`.
fn server_user() -> Result<Option<String>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    for name in ["postgres", "nobody"] {
        if nix::unistd::User::from_name(name).ok().flatten().is_some() {
            return Ok(Some(name.to_owned()));
        }
    }
    Err(Error::step(
        "find a user to run PostgreSQL as",
        "running as root and neither `postgres` nor `nobody` exists",
    ))
}

fn chown(paths: &[&Path], user: &str) -> Result<()> {
    let step = "hand the PostgreSQL folder to its user";
    let account = nix::unistd::User::from_name(user)
        .step(step)?
        .ok_or_else(|| Error::step(step, format!("no user {user}")))?;
    for path in paths {
        std::os::unix::fs::chown(path, Some(account.uid.as_raw()), Some(account.gid.as_raw())).step(step)?;
    }
    Ok(())
}
