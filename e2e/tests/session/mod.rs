//! Session setup details against the real database: protocol negotiation,
//! and the parameters that decide how the server reads a statement's text.

use std::sync::Arc;

use anyhow::{Context as _, bail, ensure};
use futures::{SinkExt as _, StreamExt as _};
use gatehouse_e2e::{TestEnv, postgres::DATABASE};
use gatehouse_proxy::pg::{
    FrameCodec, StartupMessage,
    messages::{Authentication, ErrorResponse, Message, NegotiateProtocolVersion, PasswordMessage, Query},
    startup::ProtocolVersion,
    tag,
};
use tokio::{io::AsyncWriteExt as _, net::TcpStream};
use tokio_postgres::error::SqlState;
use tokio_util::codec::Framed;

use crate::proxy::{AGENT_TOKEN, config_yaml, proxy, start_proxy};

/// Sends `startup` to the proxy and returns the framed connection.
async fn start_raw(port: u16, startup: StartupMessage) -> anyhow::Result<Framed<TcpStream, FrameCodec>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut buf = bytes::BytesMut::new();
    startup.encode(&mut buf)?;
    stream.write_all(&buf).await?;
    Ok(Framed::new(stream, FrameCodec::backend()))
}

async fn next_frame(conn: &mut Framed<TcpStream, FrameCodec>) -> anyhow::Result<gatehouse_proxy::pg::Frame> {
    let frame = tokio::time::timeout(std::time::Duration::from_secs(10), conn.next())
        .await
        .context("no answer from the proxy within 10 s")?
        .context("the proxy closed the connection")??;
    Ok(frame)
}

async fn expect_fatal(conn: &mut Framed<TcpStream, FrameCodec>) -> anyhow::Result<(String, String)> {
    let frame = next_frame(conn).await?;
    ensure!(
        frame.tag() == tag::backend::ERROR_RESPONSE,
        "expected an ErrorResponse, got {:?}",
        frame.tag() as char
    );
    let error = ErrorResponse::decode(&frame)?;
    ensure!(error.fields.severity().as_deref() == Some("FATAL"), "{error:?}");
    Ok((
        error.fields.code().unwrap_or_default().into_owned(),
        error.fields.message().unwrap_or_default().into_owned(),
    ))
}

/// A protocol 3.2 client with a `_pq_.` option is negotiated down to 3.0,
/// as PostgreSQL answers, and then gets a normal session.
pub async fn newer_protocol_versions_are_negotiated_down_to_3_0(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let proxy = proxy(&env).await?;
    let mut startup = StartupMessage::new([
        ("user", "planner"),
        ("database", DATABASE),
        ("_pq_.gatehouse_test", "1"),
    ]);
    startup.version = ProtocolVersion::V3_2;
    let mut conn = start_raw(proxy.port, startup).await?;

    let frame = next_frame(&mut conn).await?;
    let negotiated = NegotiateProtocolVersion::decode(&frame).context("expected NegotiateProtocolVersion")?;
    ensure!(negotiated.newest_minor == 0, "{negotiated:?}");
    ensure!(
        negotiated.unrecognized_options == ["_pq_.gatehouse_test"],
        "{negotiated:?}"
    );
    let frame = next_frame(&mut conn).await?;
    ensure!(
        Authentication::decode(&frame)? == Authentication::CleartextPassword,
        "the token is asked for next"
    );
    conn.send(PasswordMessage::new(AGENT_TOKEN).to_frame()?).await?;
    loop {
        let frame = next_frame(&mut conn).await?;
        match frame.tag() {
            tag::backend::READY_FOR_QUERY => break,
            tag::backend::ERROR_RESPONSE => bail!("{:?}", ErrorResponse::decode(&frame)?),
            _ => {}
        }
    }
    conn.send(Query::new("SELECT 1").to_frame()?).await?;
    let mut rows = 0;
    loop {
        let frame = next_frame(&mut conn).await?;
        match frame.tag() {
            tag::backend::DATA_ROW => rows += 1,
            tag::backend::READY_FOR_QUERY => break,
            tag::backend::ERROR_RESPONSE => bail!("{:?}", ErrorResponse::decode(&frame)?),
            _ => {}
        }
    }
    ensure!(rows == 1, "{rows} rows");

    // Protocol 4.0 does not exist: a FATAL error that says so, and the proxy serves on.
    let mut startup = StartupMessage::new([("user", "planner")]);
    startup.version = ProtocolVersion { major: 4, minor: 0 };
    let mut conn = start_raw(proxy.port, startup).await?;
    let (code, message) = expect_fatal(&mut conn).await?;
    ensure!(
        code == "0A000" && message.contains("unsupported frontend protocol 4.0"),
        "{code} {message}"
    );
    crate::proxy::agent(proxy.port, AGENT_TOKEN)
        .await?
        .simple_query("SELECT 1")
        .await?;
    Ok(())
}

/// A client-only encoding (a quote byte may hide inside a character) is
/// refused at startup, and a session whose server switches
/// standard_conforming_strings off behind the policy's back is closed.
pub async fn sessions_that_the_policy_could_misread_are_refused(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let proxy = proxy(&env).await?;
    let startup = StartupMessage::new([("user", "planner"), ("client_encoding", "SJIS")]);
    let mut conn = start_raw(proxy.port, startup).await?;
    let (code, message) = expect_fatal(&mut conn).await?;
    ensure!(
        code == "22023" && message.contains("use UTF8"),
        "{code} {message}"
    );

    // SET standard_conforming_strings = off is refused by the classifier...
    let client = crate::proxy::agent(proxy.port, AGENT_TOKEN).await?;
    let err = client
        .batch_execute("SET standard_conforming_strings = off")
        .await
        .err()
        .context("the SET ran")?;
    ensure!(err.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{err}");

    // ...but a function can flip it where no statement shows it (STABLE,
    // so the catalog vouches for the call: set_config is no data change).
    // The server reports the change and the proxy closes the session.
    let admin = env.postgres.superuser(DATABASE).await?;
    admin
        .batch_execute(
            "CREATE OR REPLACE FUNCTION public.legacy_strings() RETURNS int LANGUAGE sql STABLE AS \
             $$ SELECT 1 FROM (SELECT set_config('standard_conforming_strings', 'off', false)) s $$;
             GRANT EXECUTE ON FUNCTION public.legacy_strings() TO PUBLIC;",
        )
        .await?;
    let client = crate::proxy::agent(proxy.port, AGENT_TOKEN).await?;
    let err = client
        .simple_query("SELECT legacy_strings()")
        .await
        .err()
        .context("the session went on with standard_conforming_strings off")?;
    let db = err.as_db_error().context("no FATAL from the proxy")?;
    ensure!(
        db.code().code() == "0A000" && db.message().contains("standard_conforming_strings is off"),
        "{db:?}"
    );
    ensure!(
        client.is_closed() || client.simple_query("SELECT 1").await.is_err(),
        "the session is still open"
    );

    // The same for a database default, which no statement shows: the
    // server reports it at startup and the proxy refuses the session.
    let created = admin.batch_execute("CREATE DATABASE scs_off").await;
    if let Err(e) = created
        && e.code() != Some(&SqlState::DUPLICATE_DATABASE)
    {
        return Err(e.into());
    }
    admin
        .batch_execute("ALTER DATABASE scs_off SET standard_conforming_strings = off")
        .await?;
    let other = start_proxy(&env, "proxy-scs-off", |port, creds| {
        Ok(config_yaml(&env, port, creds).replace(&format!("database: {DATABASE}"), "database: scs_off"))
    })
    .await?;
    let err = crate::proxy::agent(other.port, AGENT_TOKEN)
        .await
        .err()
        .context("a session with standard_conforming_strings off started")?;
    let db = err.as_db_error().context("no FATAL from the proxy")?;
    ensure!(
        db.code().code() == "0A000" && db.message().contains("standard_conforming_strings is off"),
        "{db:?}"
    );
    Ok(())
}
