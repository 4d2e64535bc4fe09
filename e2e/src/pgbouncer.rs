//! Debian's pgbouncer in front of the harness's PostgreSQL: the baseline
//! `make bench` compares Gatehouse with.
//!
//! Session pooling, so that a client keeps one server connection and the
//! extended protocol (prepared statements) behaves as it does directly.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use nix::sys::signal::Signal;

use crate::{
    error::{Result, StepExt},
    kube::write_private,
    net::{free_port, wait_for_port},
    postgres::{chown, server_user},
    process::{Process, Spawn},
};

/// Where Debian's package installs pgbouncer; `GATEHOUSE_PGBOUNCER` overrides it.
pub const DEFAULT_BINARY: &str = "/usr/sbin/pgbouncer";

/// What pgbouncer pools: one database on the upstream server, reached with one role.
#[derive(Debug, Clone)]
pub struct PoolSpec<'a> {
    /// The upstream server's loopback port.
    pub upstream_port: u16,
    /// The database clients name and pgbouncer connects to.
    pub database: &'a str,
    /// The role clients log in as; pgbouncer logs in to the server as the same role.
    pub user: &'a str,
    /// Its password, written only into the private userlist file.
    pub password: &'a str,
    /// Server connections per database and user; at least the number of clients.
    pub pool_size: usize,
}

/// A running pgbouncer.
#[derive(Debug)]
pub struct Pgbouncer {
    _process: Process,
    /// Loopback port clients connect to.
    pub port: u16,
}

impl Pgbouncer {
    /// Writes the configuration and userlist under `dir` and starts pgbouncer on a free port.
    pub async fn start(dir: &Path, pool: &PoolSpec<'_>) -> Result<Pgbouncer> {
        let step = "start pgbouncer";
        std::fs::create_dir_all(dir).step("create the pgbouncer folder")?;
        let port = free_port()?;
        let ini = dir.join("pgbouncer.ini");
        let userlist = dir.join("userlist.txt");
        std::fs::write(&ini, ini_text(pool, port, &userlist)).step("write pgbouncer.ini")?;
        // A plain-text password lets pgbouncer answer SCRAM on both sides.
        write_private(&userlist, &userlist_line(pool.user, pool.password))
            .step("write the pgbouncer userlist")?;
        // pgbouncer refuses to run as root, like PostgreSQL.
        let run_as = server_user()?;
        if let Some(user) = &run_as {
            chown(&[dir, &ini, &userlist], user)?;
        }
        let binary = std::env::var_os("GATEHOUSE_PGBOUNCER")
            .map_or_else(|| PathBuf::from(DEFAULT_BINARY), PathBuf::from);
        let mut process = Spawn::new("pgbouncer", binary, dir.join("pgbouncer.log"))
            .run_as(run_as.as_deref())
            .stop_signal(Signal::SIGINT) // safe shutdown
            .args([&ini])
            .start(step)?;
        wait_for_port(&mut process, step, port, Duration::from_secs(30)).await?;
        Ok(Pgbouncer {
            _process: process,
            port,
        })
    }
}

fn ini_text(pool: &PoolSpec<'_>, port: u16, userlist: &Path) -> String {
    let PoolSpec {
        upstream_port,
        database,
        pool_size,
        ..
    } = pool;
    format!(
        "[databases]
{database} = host=127.0.0.1 port={upstream_port} dbname={database}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {userlist}
pool_mode = session
default_pool_size = {pool_size}
max_client_conn = {max_clients}
log_connections = 0
log_disconnections = 0
",
        userlist = userlist.display(),
        max_clients = pool_size * 2,
    )
}

/// One userlist entry; pgbouncer doubles a `"` inside a quoted field.
fn userlist_line(user: &str, password: &str) -> String {
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    format!("{} {}\n", quote(user), quote(password))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_userlist_quotes_its_fields() {
        assert_eq!(userlist_line("app", "p\"w"), "\"app\" \"p\"\"w\"\n");
    }

    #[test]
    fn the_ini_pools_by_session_on_loopback() {
        let pool = PoolSpec {
            upstream_port: 5433,
            database: "bench",
            user: "app",
            password: "secret",
            pool_size: 20,
        };
        let text = ini_text(&pool, 6500, Path::new("/tmp/u.txt"));
        assert!(
            text.contains("bench = host=127.0.0.1 port=5433 dbname=bench"),
            "{text}"
        );
        assert!(text.contains("pool_mode = session"), "{text}");
        assert!(text.contains("listen_port = 6500"), "{text}");
        assert!(text.contains("default_pool_size = 20"), "{text}");
        assert!(
            !text.contains("secret"),
            "the password belongs in the userlist only"
        );
    }
}
