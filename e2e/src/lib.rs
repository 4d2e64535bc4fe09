//! Gatehouse's end-to-end harness: the real components the suite and `make
//! demo` run against, each started per run on random loopback ports and
//! stopped with the harness.
//!
//! - [`kube::ControlPlane`]: etcd and kube-apiserver built from their Go
//!   modules at the versions pinned in `e2e/tools/versions.env`, with
//!   static-token users, a service-account signing key and RBAC.
//! - [`postgres::Postgres`]: Debian's PostgreSQL server, SCRAM auth, seed schema.
//! - [`s3::S3`]: versitygw, an Apache-2.0 S3-compatible server.
//!
//! Every failure names its step, the command and its log ([`error::Error`]).
#![forbid(unsafe_code)]

pub mod env;
pub mod error;
pub mod kube;
pub mod net;
pub mod pki;
pub mod postgres;
pub mod process;
pub mod s3;
pub mod tools;

pub use env::TestEnv;
pub use error::{Error, Result};
pub use kube::{ControlPlane, User};

/// The repository root: the nearest folder above the working directory that
/// holds `e2e/tools/build.sh`, else the e2e crate's parent folder at build
/// time. Found at run time because test binaries from several checkouts can
/// share one target folder.
pub fn repo_root() -> std::path::PathBuf {
    let here = std::env::current_dir().ok();
    here.iter()
        .flat_map(|dir| dir.ancestors())
        .find(|dir| dir.join("e2e/tools/build.sh").is_file())
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
}
