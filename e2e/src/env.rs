//! Everything the end-to-end suite and the demo run against, started together.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use tempfile::TempDir;

use crate::{
    error::{Result, StepExt},
    kube::ControlPlane,
    postgres::Postgres,
    s3::S3,
};

/// A control plane, a PostgreSQL cluster and an S3 server in one run folder.
#[derive(Debug)]
pub struct TestEnv {
    // Declared before `dir`: the processes stop before their folder goes.
    /// etcd and kube-apiserver.
    pub kube: ControlPlane,
    /// PostgreSQL with the seed schema.
    pub postgres: Postgres,
    /// versitygw with the recordings bucket.
    pub s3: S3,
    dir: Option<TempDir>,
    path: PathBuf,
}

impl TestEnv {
    /// Starts all three components side by side in a new run folder.
    pub async fn start() -> Result<TestEnv> {
        // Both ring (kube) and aws-lc-rs (the S3 SDK) are linked: pick one, once.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::Builder::new()
            .prefix("gatehouse-e2e-")
            .tempdir()
            .step("create the run folder")?;
        let path = dir.path().to_owned();
        // PostgreSQL runs as another user when the harness is root: it must be
        // able to reach its own folder, not read the others.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o711))
            .step("create the run folder")?;
        let (kube_dir, postgres_dir, s3_dir) = (path.join("kube"), path.join("postgres"), path.join("s3"));
        let (kube, postgres, s3) = tokio::try_join!(
            ControlPlane::start(&kube_dir),
            Postgres::start(&postgres_dir),
            S3::start(&s3_dir),
        )?;
        Ok(TestEnv {
            kube,
            postgres,
            s3,
            dir: Some(dir),
            path,
        })
    }

    /// The run folder (logs, kubeconfigs, data).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the run folder after the environment stops, e.g. to read the logs
    /// of a failed run.
    pub fn keep_folder(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = dir.keep();
        }
    }

    /// Process ids of every component.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = self.kube.pids();
        pids.extend(self.postgres.pid());
        pids.extend(self.s3.pid());
        pids
    }
}
