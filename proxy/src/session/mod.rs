//! One client session: startup, authentication, the upstream session with
//! the injected credential, then the relay.

mod guard;
pub mod params;
pub mod relay;
pub mod upstream;

use std::{sync::Arc, time::Duration};

use futures::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tokio_util::codec::Framed;

use crate::{
    identity::{Identity, identity_from_certificate},
    metrics::{AuthFailure, SessionEnd, SessionOutcome},
    pg::{
        CancelRequest, FrameCodec, FrameLimits, ProtocolError, StartupPacket,
        messages::{Authentication, BackendKeyData, ErrorResponse, Message, PasswordMessage, Severity},
        read_startup_packet, tag,
    },
    server::Shared,
    tls::{ClientStream, ServerStream},
};

/// Why a session ended early. Shown to the client as a FATAL ErrorResponse
/// where the connection still allows it.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The client broke the protocol.
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    /// The client took too long to start.
    #[error("the client did not finish startup within {0:?}")]
    StartupTimeout(Duration),
    /// The TLS handshake with the client failed.
    #[error("TLS handshake with the client failed: {0}")]
    Tls(std::io::Error),
}

/// Serves one client connection to its end.
pub async fn serve(stream: TcpStream, shared: Arc<Shared>) -> Result<(), SessionError> {
    let _ = stream.set_nodelay(true);
    let limits = shared.runtime().config.limits.clone();
    let metrics = shared.metrics();
    let startup = match tokio::time::timeout(limits.startup_timeout, handshake(stream, &shared)).await {
        Ok(Ok(startup)) => startup,
        Ok(Err(e)) => {
            metrics.sessions.inc(SessionOutcome::ProtocolError);
            return Err(e);
        }
        Err(_) => {
            metrics.sessions.inc(SessionOutcome::StartupTimeout);
            return Err(SessionError::StartupTimeout(limits.startup_timeout));
        }
    };
    let Some(Started {
        mut client,
        mut server,
        identity,
        nonce,
        key,
        cancel,
        mut tape,
        read_only,
    }) = startup
    else {
        return Ok(());
    };
    metrics.sessions.inc(SessionOutcome::Started);
    let open = metrics.session_open();
    let session = tape
        .as_ref()
        .map_or_else(|| nonce.clone(), |t| t.session().to_owned());
    let mut guard = guard::Guard::new(shared.clone(), identity, session).with_read_only(read_only);
    let settings = relay::Settings {
        idle_timeout: limits.idle_timeout,
        metrics,
        cancel: Some(&cancel),
        read_only,
    };
    let ended = relay::relay(
        &mut client,
        &mut server,
        &mut guard,
        &nonce,
        settings,
        tape.as_mut(),
    )
    .await;
    if let Some(tape) = tape {
        let reason = match &ended {
            Ok(relay::Ended::ClientClosed) => "client_closed",
            Ok(relay::Ended::ServerClosed) => "server_closed",
            Ok(relay::Ended::IdleTimeout) => "idle_timeout",
            Ok(relay::Ended::UnsafeParameter) => "unsafe_parameter",
            Err(_) => "error",
        };
        let dropped = tape.finish(reason);
        if dropped > 0 {
            metrics.recording_events_dropped.inc_by(dropped);
        }
    }
    if let Err(e) = &ended {
        tell_fatal(&mut client, e).await;
    }
    drop(open);
    metrics.sessions_ended.inc(match &ended {
        Ok(relay::Ended::ClientClosed) => SessionEnd::ClientClosed,
        Ok(relay::Ended::ServerClosed) => SessionEnd::ServerClosed,
        Ok(relay::Ended::IdleTimeout) => SessionEnd::IdleTimeout,
        Ok(relay::Ended::UnsafeParameter) | Err(_) => SessionEnd::Error,
    });
    shared.forget_cancel(&key);
    tracing::debug!(?ended, "session ended");
    ended?;
    Ok(())
}

/// Answers a connection the proxy will not serve with a FATAL error.
pub async fn refuse(mut stream: TcpStream, code: &'static str, message: &'static str) {
    // The client sends its startup packet first; read it so the answer is
    // not taken for a reply to SSLRequest.
    let _ = tokio::time::timeout(Duration::from_secs(5), read_startup_packet(&mut stream)).await;
    let _ = fatal(&mut stream, code, message).await;
}

struct Started {
    client: Framed<ClientStream, FrameCodec>,
    server: Framed<ServerStream, FrameCodec>,
    identity: Identity,
    nonce: String,
    key: BackendKeyData,
    /// Fired by a CancelRequest with the session's key.
    cancel: Arc<tokio::sync::Notify>,
    tape: Option<crate::record::Tape>,
    /// Whether the upstream session is read-only: no Policy lets the caller write.
    read_only: bool,
}

async fn fatal<S: AsyncWrite + Unpin>(stream: &mut S, code: &str, message: &str) -> Result<(), SessionError> {
    let frame = ErrorResponse::new(Severity::Fatal, code, message.to_owned()).to_frame()?;
    stream.write_all(frame.raw()).await.map_err(ProtocolError::from)?;
    let _ = stream.shutdown().await;
    Ok(())
}

/// Startup up to the first ReadyForQuery; `None` when the connection was a
/// cancel request or ended before a session began.
async fn handshake(tcp: TcpStream, shared: &Arc<Shared>) -> Result<Option<Started>, SessionError> {
    let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    // One configuration for the whole handshake: the certificate the client
    // saw and the rules that judge its identity come from the same version.
    let runtime = shared.runtime();
    let metrics = shared.metrics();
    let mut stream = match &runtime.client_tls {
        Some(config) if starts_with_tls_record(&tcp).await? => match direct_tls(tcp, config).await? {
            Some(tls) => tls,
            None => return Ok(None),
        },
        _ => ClientStream::Plain(tcp),
    };
    let startup = loop {
        let packet = next_startup_packet(&mut stream).await?;
        match packet {
            None => {
                metrics.sessions.inc(SessionOutcome::ClientGone);
                return Ok(None);
            }
            Some(StartupPacket::SslRequest) => {
                let tcp = match stream {
                    ClientStream::Plain(tcp) => tcp,
                    ClientStream::Tls(mut tls) => {
                        fatal(
                            &mut tls,
                            "08P01",
                            "SSLRequest received on a connection that is already encrypted",
                        )
                        .await?;
                        return Ok(None);
                    }
                };
                let Some(mut tcp) = refuse_injected_bytes(tcp).await? else {
                    return Ok(None);
                };
                stream = match &runtime.client_tls {
                    Some(config) => {
                        tcp.write_all(b"S").await.map_err(ProtocolError::from)?;
                        let tls = tokio_rustls::TlsAcceptor::from(config.clone())
                            .accept(tcp)
                            .await
                            .map_err(SessionError::Tls)?;
                        ClientStream::Tls(Box::new(tls))
                    }
                    // Without listen.tls the client may go on in plaintext
                    // only where the configuration allows it (checked below).
                    None => {
                        tcp.write_all(b"N").await.map_err(ProtocolError::from)?;
                        ClientStream::Plain(tcp)
                    }
                };
            }
            // GSSAPI encryption is not offered.
            Some(StartupPacket::GssEncRequest) => {
                let tcp = match stream {
                    ClientStream::Plain(tcp) => tcp,
                    ClientStream::Tls(mut tls) => {
                        fatal(
                            &mut tls,
                            "08P01",
                            "GSSENCRequest received on a connection that is already encrypted",
                        )
                        .await?;
                        return Ok(None);
                    }
                };
                let Some(mut tcp) = refuse_injected_bytes(tcp).await? else {
                    return Ok(None);
                };
                tcp.write_all(b"N").await.map_err(ProtocolError::from)?;
                stream = ClientStream::Plain(tcp);
            }
            Some(StartupPacket::Cancel(request)) => {
                shared.cancel(&request).await;
                metrics.sessions.inc(SessionOutcome::CancelRequest);
                return Ok(None);
            }
            Some(StartupPacket::Startup(message)) => break message,
        }
    };
    if let Err(why) = params::check_startup(&startup) {
        fatal(&mut stream, "22023", &format!("Gatehouse: {why}")).await?;
        return Ok(None);
    }
    if !stream.is_tls() && !runtime.config.listen.allow_plaintext {
        metrics.sessions.inc(SessionOutcome::TlsRequired);
        fatal(
            &mut stream,
            "28000",
            "this Gatehouse proxy accepts TLS connections only: the token would cross the network in clear text; \
             connect with sslmode=require or sslmode=verify-full",
        )
        .await?;
        return Ok(None);
    }
    // A client certificate the client CA verified is the identity (mTLS), as
    // PostgreSQL's `cert` authentication: no password is asked for.
    let certified = stream.peer_certificate().map(identity_from_certificate);

    let max = u32::try_from(runtime.config.limits.max_message_bytes).unwrap_or(u32::MAX);
    let mut client = Framed::new(stream, FrameCodec::new(FrameLimits::frontend(max)));
    if let Some(negotiation) = params::negotiation(&startup) {
        client.feed(negotiation.to_frame()?).await?;
    }
    let identity = match certified {
        Some(Ok(identity)) => identity,
        Some(Err(e)) => {
            tracing::info!(reason = %e, "client certificate refused");
            metrics.sessions.inc(SessionOutcome::AuthRefused);
            metrics.auth_failures.inc(AuthFailure::Other);
            fatal(client.get_mut(), "28000", &format!("Gatehouse: {e}")).await?;
            return Ok(None);
        }
        None => {
            client.send(Authentication::CleartextPassword.to_frame()?).await?;
            let token = match client.next().await {
                None => {
                    metrics.sessions.inc(SessionOutcome::ClientGone);
                    return Ok(None);
                }
                Some(frame) => {
                    let frame = frame?;
                    if frame.tag() != tag::frontend::PASSWORD {
                        metrics.sessions.inc(SessionOutcome::AuthRefused);
                        metrics.auth_failures.inc(AuthFailure::NotAPassword);
                        fatal(
                            client.get_mut(),
                            "08P01",
                            "expected a password message carrying your Gatehouse token",
                        )
                        .await?;
                        return Ok(None);
                    }
                    PasswordMessage::decode(&frame)?
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                }
            };
            match runtime.authenticate(&token).await {
                Ok(identity) => identity,
                Err(e) => {
                    tracing::info!(reason = %e, "authentication refused");
                    metrics.sessions.inc(SessionOutcome::AuthRefused);
                    metrics.auth_failures.inc(AuthFailure::of(&e));
                    fatal(client.get_mut(), e.sqlstate(), &format!("Gatehouse: {e}")).await?;
                    return Ok(None);
                }
            }
        }
    };

    // Recording starts before the database is touched: a session that may
    // not be recorded never reaches it.
    let tape = match shared.begin_recording(&identity, peer, client.get_ref().is_tls()) {
        Ok(tape) => tape,
        Err(e) => {
            tracing::warn!(reason = %e, "refusing a session that cannot be recorded");
            metrics.recording_sessions_refused.inc();
            fatal(client.get_mut(), "53400", &format!("Gatehouse: {e}")).await?;
            return Ok(None);
        }
    };

    // A caller no Policy lets write gets a read-only database session, so
    // that PostgreSQL refuses a write the classifier missed. Decided once:
    // the server's setting cannot follow later Policy changes.
    let writer = crate::policy::write_rule(&runtime.policies, &identity)
        .map(|(policy, rule)| format!("rule {} of Policy {} lets it write", rule.name, policy.name));
    let read_only = writer.is_none();
    let session = match upstream::connect(
        &runtime.config.upstream,
        runtime.upstream_tls.as_ref(),
        &startup,
        read_only,
    )
    .await
    {
        Ok(session) => session,
        Err(e) => {
            if let upstream::UpstreamError::Refused { server_message, .. } = &e {
                tracing::warn!(error = %e, server_message, "upstream refused the session");
            } else {
                tracing::warn!(error = %e, "upstream session failed");
            }
            metrics.sessions.inc(SessionOutcome::UpstreamFailed);
            fatal(client.get_mut(), e.sqlstate(), &format!("Gatehouse: {e}")).await?;
            return Ok(None);
        }
    };
    if let Some(why) = session
        .greeting
        .iter()
        .find_map(|frame| relay::unsafe_parameter(frame, read_only))
    {
        tracing::warn!(reason = %why, "refusing a session the policy could not read safely");
        metrics.sessions.inc(SessionOutcome::UpstreamFailed);
        fatal(client.get_mut(), "0A000", &format!("Gatehouse: {why}")).await?;
        return Ok(None);
    }
    tracing::info!(
        user = %identity.username,
        read_only,
        why = %writer.as_deref().unwrap_or(
            "no Policy rule naming the caller allows or holds an operation other than select, explain, \
             session, transaction, prepare or copyTo"
        ),
        "session started"
    );

    client.feed(Authentication::Ok.to_frame()?).await?;
    for frame in session.greeting {
        client.feed(frame).await?;
    }
    // The client gets the proxy's own cancel key; the server's stays here.
    let (key, cancel) = shared.register_cancel(session.key, upstream_address(&runtime.config.upstream));
    client.feed(key.to_frame()?).await?;
    client.send(session.ready).await?;
    Ok(Some(Started {
        client,
        server: session.conn,
        identity,
        nonce: crate::server::nonce(),
        key,
        cancel,
        tape,
        read_only,
    }))
}

/// Whether the client opened with a TLS record (PostgreSQL 17's direct TLS,
/// `sslnegotiation=direct`) rather than a startup packet. Unambiguous: a
/// startup packet whose length starts with 0x16 would be hundreds of
/// megabytes long, far over the limit.
async fn starts_with_tls_record(tcp: &TcpStream) -> Result<bool, SessionError> {
    /// ContentType handshake.
    const TLS_HANDSHAKE: u8 = 0x16;
    let mut first = [0u8; 1];
    let n = tcp.peek(&mut first).await.map_err(ProtocolError::from)?;
    Ok(n == 1 && first[0] == TLS_HANDSHAKE)
}

/// Direct TLS: the handshake first, no SSLRequest. As PostgreSQL 17 does, the
/// client must have negotiated ALPN `postgresql`, so a TLS connection meant
/// for another protocol is not taken for a PostgreSQL one.
async fn direct_tls(
    tcp: TcpStream,
    config: &Arc<rustls::ServerConfig>,
) -> Result<Option<ClientStream>, SessionError> {
    let mut tls = tokio_rustls::TlsAcceptor::from(config.clone())
        .accept(tcp)
        .await
        .map_err(SessionError::Tls)?;
    if tls.get_ref().1.alpn_protocol() != Some(crate::tls::ALPN_POSTGRESQL) {
        fatal(
            &mut tls,
            "08P01",
            "direct TLS connection without ALPN protocol \"postgresql\"",
        )
        .await?;
        return Ok(None);
    }
    Ok(Some(ClientStream::Tls(Box::new(tls))))
}

/// Answers an SSLRequest or GSSENCRequest that arrived with more bytes
/// behind it with a FATAL error, in plaintext, and closes: a client waits for
/// the one-byte answer before it goes on, so those bytes were not meant to be
/// read in the clear, or were injected by a man in the middle before the
/// handshake (CVE-2021-23214). `None` when the connection was refused.
async fn refuse_injected_bytes(mut tcp: TcpStream) -> Result<Option<TcpStream>, SessionError> {
    if !crate::tls::has_unread_bytes(&tcp).map_err(ProtocolError::from)? {
        return Ok(Some(tcp));
    }
    tracing::warn!("unencrypted data after an SSLRequest; closing the connection");
    fatal(&mut tcp, "08P01", "received unencrypted data after SSL request").await?;
    Ok(None)
}

/// Reads a startup packet; one the proxy cannot accept (an unknown protocol
/// version, a bad length) is answered with a FATAL error naming why, as
/// PostgreSQL answers, unless the connection itself failed.
async fn next_startup_packet<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> Result<Option<StartupPacket>, SessionError> {
    match read_startup_packet(stream).await {
        Ok(packet) => Ok(packet),
        Err(e) => {
            if !matches!(e, ProtocolError::Io(_) | ProtocolError::UnexpectedEof) {
                let _ = fatal(stream, e.sqlstate(), &format!("Gatehouse: {e}")).await;
            }
            Err(e.into())
        }
    }
}

/// Tells a client whose session ends on a protocol error (a frame over the
/// size limit, a malformed message) why, as PostgreSQL does, unless the
/// connection itself failed. Sent through the framed sink, after whatever
/// it still holds.
async fn tell_fatal<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut Framed<S, FrameCodec>,
    error: &ProtocolError,
) {
    if matches!(error, ProtocolError::Io(_) | ProtocolError::UnexpectedEof) {
        return;
    }
    if let Ok(frame) = ErrorResponse::new(Severity::Fatal, error.sqlstate(), error.to_string()).to_frame() {
        let _ = client.send(frame).await;
    }
}

fn upstream_address(upstream: &crate::config::Upstream) -> String {
    format!("{}:{}", upstream.host, upstream.port)
}

/// Sends a CancelRequest for `key` to the server at `address`.
pub async fn send_cancel(address: &str, key: &BackendKeyData) -> Result<(), ProtocolError> {
    let mut stream = TcpStream::connect(address).await?;
    let mut buf = bytes::BytesMut::new();
    CancelRequest {
        process_id: key.process_id,
        secret_key: key.secret_key.clone(),
    }
    .encode(&mut buf)?;
    stream.write_all(&buf).await?;
    let _ = stream.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// The startup packet of protocol `major.minor` with a user.
    fn startup(major: u16, minor: u16) -> Vec<u8> {
        let mut body = [major.to_be_bytes(), minor.to_be_bytes()].concat();
        body.extend_from_slice(b"user\0u\0\0");
        let len = u32::try_from(body.len() + 4).unwrap().to_be_bytes();
        [len.as_slice(), &body].concat()
    }

    #[tokio::test]
    async fn an_unknown_protocol_version_is_answered_with_a_fatal_error() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(&startup(4, 0)).await.unwrap();
        let err = next_startup_packet(&mut server).await.unwrap_err();
        assert!(matches!(
            err,
            SessionError::Protocol(ProtocolError::UnsupportedProtocolVersion { .. })
        ));
        drop(server);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer.first(), Some(&b'E'));
        let text = String::from_utf8_lossy(&answer);
        assert!(text.contains("SFATAL") && text.contains("C0A000"), "{text}");
        assert!(text.contains("unsupported frontend protocol 4.0"), "{text}");
    }

    #[tokio::test]
    async fn a_session_ending_on_a_protocol_error_tells_the_client() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut framed = Framed::new(server, FrameCodec::new(FrameLimits::frontend(1024)));
        tell_fatal(
            &mut framed,
            &ProtocolError::MessageTooLarge {
                tag: b'Q',
                len: 1 << 30,
                max: 1024,
            },
        )
        .await;
        tell_fatal(&mut framed, &ProtocolError::UnexpectedEof).await;
        drop(framed);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        let text = String::from_utf8_lossy(&answer);
        assert_eq!(answer.first(), Some(&b'E'), "{text}");
        assert!(text.contains("SFATAL") && text.contains("C08P01"), "{text}");
        // One message only: the failed connection gets no word.
        let len = u32::from_be_bytes(answer[1..5].try_into().unwrap()) as usize;
        assert_eq!(answer.len(), len + 1, "{text}");
    }

    #[tokio::test]
    async fn a_good_startup_packet_gets_no_answer() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(&startup(3, 0)).await.unwrap();
        let packet = next_startup_packet(&mut server).await.unwrap();
        assert!(matches!(packet, Some(StartupPacket::Startup(_))));
    }
}
