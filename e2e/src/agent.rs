//! An agent's PostgreSQL session through a proxy that keeps the notices the
//! proxy sends: a held statement's notice names its ApprovalRequest.

use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use tokio::sync::mpsc;

/// The notices of an agent's session, and the task that reads its connection.
#[derive(Debug)]
pub struct Notices {
    notices: mpsc::UnboundedReceiver<String>,
    /// Reads the session's connection; aborting it hangs up.
    pub connection: tokio::task::JoinHandle<()>,
}

/// Connects to the proxy on `port` as `user` with the bearer token `token`
/// (plain TCP) to the e2e database.
pub async fn connect(
    port: u16,
    user: &str,
    token: &str,
) -> anyhow::Result<(tokio_postgres::Client, Notices)> {
    let (client, mut connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .password(token)
        .dbname(crate::postgres::DATABASE)
        .connect(tokio_postgres::NoTls)
        .await?;
    let (tx, notices) = mpsc::unbounded_channel();
    let connection = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notice(notice) = message {
                let _ = tx.send(format!(
                    "{}\nHINT: {}",
                    notice.message(),
                    notice.hint().unwrap_or_default()
                ));
            }
        }
    });
    Ok((client, Notices { notices, connection }))
}

impl Notices {
    /// The ApprovalRequest the next hold notice names, and the notice with
    /// its hint, waiting up to `within`.
    pub async fn held(&mut self, within: Duration) -> anyhow::Result<(String, String)> {
        let notice = tokio::time::timeout(within, self.notices.recv())
            .await
            .with_context(|| format!("no hold notice within {within:?}"))?
            .context("the session ended")?;
        let name = notice
            .split("ApprovalRequest ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .with_context(|| format!("the notice names no request: {notice}"))?
            .to_owned();
        Ok((name, notice))
    }
}
