//! The upstream side: dial the target and authenticate with the credential
//! only the proxy holds (SCRAM-SHA-256, MD5 or cleartext, as the server asks).
//!
//! The credential is read from its files for every new upstream connection,
//! so a rotated Secret is used without a restart. It never leaves this module:
//! errors say what failed, never with what.

use futures::{SinkExt, StreamExt};
use postgres_protocol::authentication::{md5_hash, sasl::ChannelBinding, sasl::ScramSha256};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use crate::{
    config,
    pg::{
        Frame, FrameCodec, ProtocolError, StartupMessage,
        messages::{
            Authentication, BackendKeyData, ErrorResponse, Message, PasswordMessage, SaslInitialResponse,
            SaslResponse,
        },
        tag,
    },
};

/// Client startup parameters passed on to the target. Everything else
/// (notably `options`, which can set any server setting, and `user` and
/// `database`, which the proxy decides) stays behind.
const FORWARDED_PARAMETERS: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "extra_float_digits",
];

/// Why the proxy could not open an upstream session. Messages are safe to
/// show the client: they never hold the credential.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect failed.
    #[error("cannot reach the database at {address}: {source}")]
    Connect {
        /// host:port.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The credential files could not be read.
    #[error("the proxy cannot read its database credential ({which}): {source}")]
    Credential {
        /// Which file.
        which: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The server refused the session.
    #[error("the database refused the proxy's session (SQLSTATE {code})")]
    Refused {
        /// SQLSTATE from the server.
        code: String,
        /// The server's message, for the proxy's log only.
        server_message: String,
    },
    /// The server asked for an authentication method the proxy does not speak.
    #[error("the database asks for {0} authentication, which the proxy does not support")]
    Unsupported(&'static str),
    /// SCRAM failed (including a server that could not prove it knew the password).
    #[error("SCRAM authentication with the database failed: {0}")]
    Scram(std::io::Error),
    /// The server broke the protocol or hung up.
    #[error("the database connection failed during startup: {0}")]
    Protocol(#[from] ProtocolError),
    /// The server closed the connection.
    #[error("the database closed the connection during startup")]
    Closed,
}

impl UpstreamError {
    /// The SQLSTATE to show the client.
    pub fn sqlstate(&self) -> &str {
        match self {
            UpstreamError::Refused { code, .. } => code,
            UpstreamError::Connect { .. } | UpstreamError::Closed | UpstreamError::Protocol(_) => "08006",
            UpstreamError::Credential { .. } | UpstreamError::Unsupported(_) | UpstreamError::Scram(_) => {
                "28000"
            }
        }
    }
}

/// An authenticated upstream session, up to its first ReadyForQuery.
#[derive(Debug)]
pub struct UpstreamSession {
    /// The framed connection.
    pub conn: Framed<TcpStream, FrameCodec>,
    /// ParameterStatus and NoticeResponse frames to pass to the client as they are.
    pub greeting: Vec<Frame>,
    /// The server's cancel key (kept by the proxy, never shown to the client).
    pub key: Option<BackendKeyData>,
    /// The first ReadyForQuery.
    pub ready: Frame,
}

/// Opens and authenticates an upstream session for a client that sent `client`.
pub async fn connect(
    upstream: &config::Upstream,
    client: &StartupMessage,
    max_message_bytes: usize,
) -> Result<UpstreamSession, UpstreamError> {
    let read = |which: &'static str, path: &std::path::Path| {
        std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
            .map_err(|source| UpstreamError::Credential { which, source })
    };
    let user = read("username", &upstream.credentials.username_file)?;
    let password = read("password", &upstream.credentials.password_file)?;

    let address = format!("{}:{}", upstream.host, upstream.port);
    let tcp = TcpStream::connect(&address)
        .await
        .map_err(|source| UpstreamError::Connect { address, source })?;
    let _ = tcp.set_nodelay(true);
    let limit = u32::try_from(max_message_bytes).unwrap_or(u32::MAX);
    let mut conn = Framed::new(tcp, FrameCodec::new(crate::pg::FrameLimits::backend(limit)));

    let mut params = vec![
        ("user".to_owned(), user.clone()),
        ("database".to_owned(), upstream.database.clone()),
    ];
    for name in FORWARDED_PARAMETERS {
        if let Some(value) = client.get(name) {
            params.push(((*name).to_owned(), value.to_owned()));
        }
    }
    let mut startup = bytes::BytesMut::new();
    StartupMessage::new(params).encode(&mut startup)?;
    conn.get_mut()
        .write_all_buf(&mut startup)
        .await
        .map_err(ProtocolError::from)?;

    let mut scram: Option<ScramSha256> = None;
    let mut greeting = Vec::new();
    let mut key = None;
    loop {
        let frame = conn.next().await.ok_or(UpstreamError::Closed)??;
        match frame.tag() {
            tag::backend::AUTHENTICATION => {
                let reply = match Authentication::decode(&frame)? {
                    Authentication::Ok => None,
                    Authentication::CleartextPassword => {
                        Some(PasswordMessage::new(password.clone()).to_frame()?)
                    }
                    Authentication::Md5Password { salt } => {
                        let hash = md5_hash(user.as_bytes(), password.as_bytes(), salt);
                        Some(PasswordMessage::new(hash).to_frame()?)
                    }
                    Authentication::Sasl { mechanisms } => {
                        if !mechanisms.iter().any(|m| m == "SCRAM-SHA-256") {
                            return Err(UpstreamError::Unsupported(
                                "a SASL mechanism other than SCRAM-SHA-256",
                            ));
                        }
                        // Channel binding needs TLS to the target; plaintext sessions go without.
                        let state = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                        let first = SaslInitialResponse {
                            mechanism: "SCRAM-SHA-256".to_owned(),
                            data: Some(bytes::Bytes::copy_from_slice(state.message())),
                        };
                        scram = Some(state);
                        Some(first.to_frame()?)
                    }
                    Authentication::SaslContinue { data } => {
                        let state = scram
                            .as_mut()
                            .ok_or(UpstreamError::Unsupported("SASL out of order"))?;
                        state.update(&data).map_err(UpstreamError::Scram)?;
                        Some(
                            SaslResponse {
                                data: bytes::Bytes::copy_from_slice(state.message()),
                            }
                            .to_frame()?,
                        )
                    }
                    Authentication::SaslFinal { data } => {
                        let mut state = scram
                            .take()
                            .ok_or(UpstreamError::Unsupported("SASL out of order"))?;
                        state.finish(&data).map_err(UpstreamError::Scram)?;
                        None
                    }
                    Authentication::KerberosV5 => return Err(UpstreamError::Unsupported("Kerberos V5")),
                    Authentication::Gss | Authentication::GssContinue { .. } => {
                        return Err(UpstreamError::Unsupported("GSSAPI"));
                    }
                    Authentication::Sspi => return Err(UpstreamError::Unsupported("SSPI")),
                };
                if let Some(reply) = reply {
                    conn.send(reply).await?;
                }
            }
            tag::backend::ERROR_RESPONSE => {
                let error = ErrorResponse::decode(&frame)?;
                return Err(UpstreamError::Refused {
                    code: error
                        .fields
                        .code()
                        .map(|c| c.into_owned())
                        .unwrap_or_else(|| "08006".into()),
                    server_message: error.fields.message().map(|m| m.into_owned()).unwrap_or_default(),
                });
            }
            tag::backend::BACKEND_KEY_DATA => key = Some(BackendKeyData::decode(&frame)?),
            tag::backend::READY_FOR_QUERY => {
                return Ok(UpstreamSession {
                    conn,
                    greeting,
                    key,
                    ready: frame,
                });
            }
            _ => greeting.push(frame),
        }
    }
}

use tokio::io::AsyncWriteExt as _;
