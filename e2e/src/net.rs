//! Loopback ports.

use std::{
    net::{Ipv4Addr, TcpListener},
    time::{Duration, Instant},
};

use crate::{
    error::{Error, Result},
    process::Process,
};

/// A loopback port that was free a moment ago. A component that then fails
/// to bind it stops with an error naming its step and log.
pub fn free_port() -> Result<u16> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::step("pick a free loopback port", e))
}

/// Waits until `port` on loopback accepts connections, failing early when
/// `process` exits and after `timeout`.
pub async fn wait_for_port(process: &mut Process, step: &str, port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        process.ensure_running(step)?;
        if tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(process.failure(step, &format!("port {port} did not open within {timeout:?}")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
