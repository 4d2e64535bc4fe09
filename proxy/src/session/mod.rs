//! One client session: startup, authentication, the upstream session with
//! the injected credential, then the relay.

mod guard;
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
    identity::Identity,
    pg::{
        CancelRequest, FrameCodec, FrameLimits, ProtocolError, StartupPacket,
        messages::{Authentication, BackendKeyData, ErrorResponse, Message, PasswordMessage, Severity},
        read_startup_packet, tag,
    },
    server::Shared,
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
}

/// Serves one client connection to its end.
pub async fn serve(stream: TcpStream, shared: Arc<Shared>) -> Result<(), SessionError> {
    let _ = stream.set_nodelay(true);
    let limits = shared.runtime().config.limits.clone();
    let startup = tokio::time::timeout(limits.startup_timeout, handshake(stream, &shared))
        .await
        .map_err(|_| SessionError::StartupTimeout(limits.startup_timeout))??;
    let Some(Started {
        mut client,
        mut server,
        identity,
        nonce,
        key,
    }) = startup
    else {
        return Ok(());
    };
    let mut guard = guard::Guard::new(shared.clone(), identity);
    let ended = relay::relay(&mut client, &mut server, &mut guard, &nonce).await;
    if let Err(e) = &ended {
        tell_fatal(&mut client, e).await;
    }
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
    client: Framed<TcpStream, FrameCodec>,
    server: Framed<TcpStream, FrameCodec>,
    identity: Identity,
    nonce: String,
    key: BackendKeyData,
}

async fn fatal<S: AsyncWrite + Unpin>(stream: &mut S, code: &str, message: &str) -> Result<(), SessionError> {
    let frame = ErrorResponse::new(Severity::Fatal, code, message.to_owned()).to_frame()?;
    stream.write_all(frame.raw()).await.map_err(ProtocolError::from)?;
    let _ = stream.shutdown().await;
    Ok(())
}

/// Startup up to the first ReadyForQuery; `None` when the connection was a
/// cancel request or ended before a session began.
async fn handshake(mut stream: TcpStream, shared: &Arc<Shared>) -> Result<Option<Started>, SessionError> {
    let startup = loop {
        match next_startup_packet(&mut stream).await? {
            None => return Ok(None),
            // TLS for clients is configured in listen.tls; without it the
            // client may go on in plaintext only where the config allows.
            Some(StartupPacket::SslRequest) | Some(StartupPacket::GssEncRequest) => {
                stream.write_all(b"N").await.map_err(ProtocolError::from)?;
            }
            Some(StartupPacket::Cancel(request)) => {
                shared.cancel(&request).await;
                return Ok(None);
            }
            Some(StartupPacket::Startup(message)) => break message,
        }
    };
    let runtime = shared.runtime();
    if !runtime.config.listen.allow_plaintext {
        fatal(
            &mut stream,
            "28000",
            "this Gatehouse proxy accepts TLS connections only; connect with sslmode=require",
        )
        .await?;
        return Ok(None);
    }

    let max = u32::try_from(runtime.config.limits.max_message_bytes).unwrap_or(u32::MAX);
    let mut client = Framed::new(stream, FrameCodec::new(FrameLimits::frontend(max)));
    client.send(Authentication::CleartextPassword.to_frame()?).await?;
    let token = match client.next().await {
        None => return Ok(None),
        Some(frame) => {
            let frame = frame?;
            if frame.tag() != tag::frontend::PASSWORD {
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
    let identity = match runtime.authenticate(&token) {
        Ok(identity) => identity,
        Err(e) => {
            tracing::info!(reason = %e, "authentication refused");
            fatal(client.get_mut(), e.sqlstate(), &format!("Gatehouse: {e}")).await?;
            return Ok(None);
        }
    };

    let session = match upstream::connect(
        &runtime.config.upstream,
        &startup,
        runtime.config.limits.max_message_bytes,
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
            fatal(client.get_mut(), e.sqlstate(), &format!("Gatehouse: {e}")).await?;
            return Ok(None);
        }
    };
    tracing::info!(user = %identity.username, "session started");

    client.feed(Authentication::Ok.to_frame()?).await?;
    for frame in session.greeting {
        client.feed(frame).await?;
    }
    // The client gets the proxy's own cancel key; the server's stays here.
    let key = shared.register_cancel(session.key, upstream_address(&runtime.config.upstream));
    client.feed(key.to_frame()?).await?;
    client.send(session.ready).await?;
    Ok(Some(Started {
        client,
        server: session.conn,
        identity,
        nonce: crate::server::nonce(),
        key,
    }))
}

/// Reads the next startup packet. One the proxy cannot take (an unknown
/// protocol version, a bad length) is answered with a FATAL ErrorResponse
/// naming the problem, as PostgreSQL answers it, before the session ends.
async fn next_startup_packet<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> Result<Option<StartupPacket>, SessionError> {
    match read_startup_packet(stream).await {
        Ok(packet) => Ok(packet),
        Err(e) => {
            if !matches!(e, ProtocolError::Io(_) | ProtocolError::UnexpectedEof) {
                let _ = fatal(stream, e.sqlstate(), &e.to_string()).await;
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
