//! An S3-compatible server per run: versitygw (Apache-2.0) with its POSIX
//! backend in a temporary folder, on a random loopback port, with one bucket.

use std::{path::Path, time::Duration};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

use crate::{
    error::{Result, StepExt},
    net::{free_port, wait_for_port},
    pki::random_hex,
    process::{Process, Spawn},
    tools::Tools,
};

/// The bucket the harness creates for recordings.
pub const BUCKET: &str = "gatehouse-recordings";
/// The region the server reports.
pub const REGION: &str = "us-east-1";

/// A running S3-compatible server.
#[derive(Debug)]
pub struct S3 {
    process: Process,
    port: u16,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// Access key id of the root user.
    pub access_key: String,
    /// Secret key of the root user.
    pub secret_key: String,
}

impl S3 {
    /// Starts the server with its data under `dir` and creates [`BUCKET`].
    pub async fn start(dir: &Path) -> Result<S3> {
        let tools = Tools::get()?;
        let data = dir.join("data");
        std::fs::create_dir_all(&data).step("create the S3 folder")?;
        let port = free_port()?;
        let access_key = format!("GH{}", random_hex(8).to_uppercase());
        let secret_key = random_hex(20);
        let step = "start the S3 server (versitygw)";
        let mut process = Spawn::new("versitygw", tools.path("versitygw"), dir.join("versitygw.log"))
            // The root credentials go through the environment, never the command line.
            .env("ROOT_ACCESS_KEY_ID", &access_key)
            .env("ROOT_SECRET_ACCESS_KEY", &secret_key)
            .args([
                "--port",
                &format!("127.0.0.1:{port}"),
                "--region",
                REGION,
                "--quiet",
                "posix",
            ])
            .args([&data])
            .start(step)?;
        wait_for_port(&mut process, step, port, Duration::from_secs(30)).await?;
        let s3 = S3 {
            process,
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
            access_key,
            secret_key,
        };
        s3.client()
            .create_bucket()
            .bucket(BUCKET)
            .send()
            .await
            .map_err(|e| {
                s3.process.failure(
                    "create the recordings bucket",
                    &aws_sdk_s3::error::DisplayErrorContext(e).to_string(),
                )
            })?;
        Ok(s3)
    }

    /// A client for the server (path-style addressing, static credentials).
    pub fn client(&self) -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new(
                &self.access_key,
                &self.secret_key,
                None,
                None,
                "gatehouse-e2e",
            ))
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// Kills the server with SIGKILL, keeping its data: clients get
    /// connection refused until [`S3::restart`].
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the server again on the same port, data and keys.
    pub async fn restart(&mut self) -> Result<()> {
        let step = "start the S3 server (versitygw) again";
        self.process.restart(step)?;
        wait_for_port(&mut self.process, step, self.port, Duration::from_secs(30)).await
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }
}
