//! Gatehouse's end-to-end harness: the real components the suite and `make
//! demo` run against, each started per run on random loopback ports and
//! stopped with the harness.
//!
//! - [`kube::ControlPlane`]: etcd and kube-apiserver built from their Go
//!   modules at the versions pinned in `e2e/tools/versions.env`, with
//!   static-token users, a service-account signing key and RBAC.
//! - [`postgres::Postgres`]: Debian's PostgreSQL server, SCRAM auth, seed schema.
//! - [`s3::S3`]: versitygw, an Apache-2.0 S3-compatible server.
//! - [`pgbouncer::Pgbouncer`] and [`bench`]: the baseline and the pgbench
//!   driver of `make bench`.
//!
//! Every failure names its step, the command and its log ([`error::Error`]).
#![forbid(unsafe_code)]

pub mod agent;
pub mod bench;
pub mod env;
pub mod error;
pub mod gateway;
pub mod kube;
pub mod kubelet;
pub mod net;
pub mod pgbouncer;
pub mod pki;
pub mod postgres;
pub mod process;
pub mod s3;
pub mod tools;

pub use env::TestEnv;
pub use error::{Error, Result};
pub use kube::{ControlPlane, User};

/// The repository root: the nearest folder at or above the working
/// directory that holds `e2e/tools/build.sh` (cargo runs tests in `e2e/`,
/// make runs the demo at the root), else the folder this crate was built
/// from. Found at run time because cargo may reuse a build of the same
/// sources made in another checkout, where a path baked in at compile time
/// would point.
pub fn repo_root() -> std::path::PathBuf {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| {
            cwd.ancestors()
                .find(|dir| dir.join("e2e/tools/build.sh").is_file())
                .map(std::path::Path::to_path_buf)
        })
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
}

/// A binary of this workspace built beside the running test executable
/// (`target/<profile>/<name>`, next to `target/<profile>/deps/`): the proxy
/// the suite kills and restarts, the CLI it runs against the bucket.
/// `make e2e` builds them first; `GATEHOUSE_BIN_DIR` names another folder.
pub fn workspace_binary(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let profile = match std::env::var_os("GATEHOUSE_BIN_DIR") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => exe
            .parent()
            .filter(|dir| dir.ends_with("deps"))
            .and_then(std::path::Path::parent)
            .or_else(|| exe.parent())
            .ok_or_else(|| anyhow::anyhow!("{} has no folder", exe.display()))?
            .to_path_buf(),
    };
    let path = profile.join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} does not exist: build it with `cargo build --bins` (make e2e does) \
         or set GATEHOUSE_BIN_DIR",
        path.display()
    );
    Ok(path)
}
