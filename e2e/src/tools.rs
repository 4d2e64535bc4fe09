//! The real components' binaries: kube-apiserver, etcd, kubectl and helm built
//! from their Go modules (pinned in `e2e/tools/versions.env`), versitygw for
//! S3, and Debian's PostgreSQL server.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use crate::error::{Error, Result};

/// Where the binaries are.
#[derive(Debug, Clone)]
pub struct Tools {
    /// Folder holding `etcd`, `kube-apiserver`, `kubectl`, `versitygw` and `helm`.
    pub bin: PathBuf,
    /// Folder holding PostgreSQL's `initdb` and `postgres`.
    pub pg_bin: PathBuf,
}

impl Tools {
    /// Finds the binaries, building the Go ones on first use (`e2e/tools/build.sh`
    /// does nothing when the pinned versions are cached). `GATEHOUSE_TOOLS_BIN`
    /// and `GATEHOUSE_PG_BIN` override the folders.
    pub fn get() -> Result<&'static Tools> {
        static TOOLS: OnceLock<std::result::Result<Tools, String>> = OnceLock::new();
        TOOLS
            .get_or_init(|| Tools::locate().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| Error::step("find tools", e))
    }

    fn locate() -> Result<Tools> {
        let bin = match std::env::var_os("GATEHOUSE_TOOLS_BIN") {
            Some(dir) => PathBuf::from(dir),
            None => build_go_tools()?,
        };
        let tools = Tools {
            bin,
            pg_bin: postgres_bin()?,
        };
        for name in ["etcd", "kube-apiserver", "kubectl", "versitygw", "helm"] {
            tools.require(&tools.bin, name)?;
        }
        for name in ["initdb", "postgres"] {
            tools.require(&tools.pg_bin, name)?;
        }
        Ok(tools)
    }

    fn require(&self, dir: &Path, name: &str) -> Result<()> {
        if dir.join(name).is_file() {
            Ok(())
        } else {
            Err(Error::step(
                format!("find {name}"),
                format!(
                    "{} does not exist; run `make tools` (or e2e/tools/build.sh) and `make deps`",
                    dir.join(name).display()
                ),
            ))
        }
    }

    /// Path of a Go-built tool.
    pub fn path(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// Path of a PostgreSQL server program.
    pub fn pg(&self, name: &str) -> PathBuf {
        self.pg_bin.join(name)
    }
}

/// Path of a PostgreSQL program (`initdb`, `postgres`, `pgbench`), found
/// without the Go tools: `make bench` runs PostgreSQL but no control plane.
pub fn pg_program(name: &str) -> Result<PathBuf> {
    static PG_BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    let dir = PG_BIN
        .get_or_init(|| postgres_bin().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Error::step("find PostgreSQL's programs", e))?;
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::step(
            format!("find {name}"),
            format!("{} does not exist; run `make deps`", path.display()),
        ))
    }
}

fn build_go_tools() -> Result<PathBuf> {
    let script = crate::repo_root().join("e2e/tools/build.sh");
    let output = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|e| Error::Command {
            step: "build tools".into(),
            command: format!("bash {}", script.display()),
            log: script.clone(),
            detail: e.to_string(),
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    match stdout.lines().last() {
        Some(dir) if output.status.success() => Ok(PathBuf::from(dir.trim())),
        _ => Err(Error::step(
            "build tools",
            format!("bash {} failed ({}):\n{stderr}", script.display(), output.status),
        )),
    }
}

fn postgres_bin() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("GATEHOUSE_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    // Debian installs each major version under /usr/lib/postgresql/<major>/bin.
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("postgres").is_file())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        Error::step(
            "find postgres",
            "no PostgreSQL server under /usr/lib/postgresql/*/bin; run `make deps` (apt-get install postgresql)",
        )
    })
}
