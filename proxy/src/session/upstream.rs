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
    tls::{ServerStream, UpstreamTls},
};

/// Client startup parameters passed on to the target. Everything else
/// (notably `options`, which can set any server setting, and `user` and
/// `database`, which the proxy decides) stays behind. None of them may be
/// [`READ_ONLY_PARAMETER`].
const FORWARDED_PARAMETERS: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "extra_float_digits",
];

/// The setting that makes a session read-only: every transaction starts
/// `READ ONLY` unless it asks otherwise (which the guard refuses).
const READ_ONLY_PARAMETER: &str = "default_transaction_read_only";

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
    /// The server answered the SSLRequest with 'N' (or an error) while the
    /// configuration asks for TLS. The proxy never falls back to plaintext.
    #[error(
        "the database at {address} does not accept TLS connections, but upstream.tls.mode is {mode}; \
         enable ssl on the database server, or set upstream.tls.mode to disable if the network is trusted"
    )]
    TlsRefused {
        /// host:port.
        address: String,
        /// The configured mode.
        mode: &'static str,
    },
    /// The server answered the SSLRequest with something other than 'S' or 'N'.
    #[error(
        "the database answered the proxy's SSLRequest with byte {0:#04x}, neither 'S' nor 'N'; is it a PostgreSQL server?"
    )]
    TlsAnswer(u8),
    /// The TLS handshake with the server failed (e.g. a certificate that
    /// does not verify in mode verify-full).
    #[error(
        "TLS with the database at {address} failed (upstream.tls.mode {mode}): {source}; \
         check upstream.tls.caFile and that the server certificate names {host}"
    )]
    Tls {
        /// host:port.
        address: String,
        /// The host name the certificate must carry.
        host: String,
        /// The configured mode.
        mode: &'static str,
        /// What rustls said.
        source: std::io::Error,
    },
}

impl UpstreamError {
    /// The SQLSTATE to show the client.
    pub fn sqlstate(&self) -> &str {
        match self {
            UpstreamError::Refused { code, .. } => code,
            UpstreamError::Closed | UpstreamError::Protocol(_) | UpstreamError::TlsAnswer(_) => "08006",
            UpstreamError::Connect { .. } | UpstreamError::TlsRefused { .. } | UpstreamError::Tls { .. } => {
                "08001"
            }
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
    pub conn: Framed<ServerStream, FrameCodec>,
    /// ParameterStatus and NoticeResponse frames to pass to the client as they are.
    pub greeting: Vec<Frame>,
    /// The server's cancel key (kept by the proxy, never shown to the client).
    pub key: Option<BackendKeyData>,
    /// The first ReadyForQuery.
    pub ready: Frame,
}

/// Opens and authenticates an upstream session for a client that sent `client`,
/// in TLS when `tls` is set (from `upstream.tls`); `read_only` for a caller
/// no Policy lets write (`default_transaction_read_only=on`, set by the
/// proxy, so PostgreSQL itself refuses writes the classifier missed).
///
/// The server's messages are limited only by what PostgreSQL itself can
/// send (`limits.maxMessageBytes` is for clients): refusing a row the
/// server produced would break a legitimate query, and masking deals with
/// values too large to scan.
pub async fn connect(
    upstream: &config::Upstream,
    tls: Option<&UpstreamTls>,
    client: &StartupMessage,
    read_only: bool,
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
        .map_err(|source| UpstreamError::Connect {
            address: address.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let stream = match tls {
        None => ServerStream::Plain(tcp),
        Some(tls) => ServerStream::Tls(Box::new(start_tls(tcp, tls, &address, &upstream.host).await?)),
    };
    let mut conn = Framed::new(stream, FrameCodec::backend());

    let params = startup_parameters(&user, &upstream.database, client, read_only);
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

/// The startup parameters of the upstream session: the proxy's `user` and
/// `database`, the client's [`FORWARDED_PARAMETERS`], and, for a read-only
/// session, [`READ_ONLY_PARAMETER`] last (PostgreSQL applies them in order,
/// so nothing before it could override it even if a forwarded name did).
fn startup_parameters(
    user: &str,
    database: &str,
    client: &StartupMessage,
    read_only: bool,
) -> Vec<(String, String)> {
    let mut params = vec![
        ("user".to_owned(), user.to_owned()),
        ("database".to_owned(), database.to_owned()),
    ];
    for name in FORWARDED_PARAMETERS {
        if let Some(value) = client.get(name) {
            params.push(((*name).to_owned(), value.to_owned()));
        }
    }
    if read_only {
        params.push((READ_ONLY_PARAMETER.to_owned(), "on".to_owned()));
    }
    params
}

/// The SSLRequest: length 8, code 1234.5679.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Asks the server for TLS and runs the handshake. Reads exactly the one
/// answer byte before the handshake, so nothing the server (or a man in the
/// middle) sends after it can be taken for a protocol message in plaintext
/// (CVE-2021-23222). Anything but 'S' is a failure: the startup with the
/// credential is never sent in plaintext when TLS was asked for.
async fn start_tls<S>(
    mut tcp: S,
    tls: &UpstreamTls,
    address: &str,
    host: &str,
) -> Result<tokio_rustls::client::TlsStream<S>, UpstreamError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mode = crate::tls::mode_name(tls.mode);
    tcp.write_all(&SSL_REQUEST).await.map_err(ProtocolError::from)?;
    let mut answer = [0u8; 1];
    match tcp.read_exact(&mut answer).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(UpstreamError::Closed),
        Err(e) => return Err(ProtocolError::from(e).into()),
    }
    match answer[0] {
        b'S' => tokio_rustls::TlsConnector::from(tls.config.clone())
            .connect(tls.server_name.clone(), tcp)
            .await
            .map_err(|source| UpstreamError::Tls {
                address: address.to_owned(),
                host: host.to_owned(),
                mode,
                source,
            }),
        // 'N', or 'E' from a server too old to know SSLRequest: no TLS here.
        b'N' | b'E' => Err(UpstreamError::TlsRefused {
            address: address.to_owned(),
            mode,
        }),
        other => Err(UpstreamError::TlsAnswer(other)),
    }
}

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::config::{CredentialFiles, Upstream, UpstreamTls as UpstreamTlsConfig};

    fn require() -> UpstreamTls {
        let upstream = Upstream {
            host: "db.example".into(),
            port: 5432,
            database: "orders".into(),
            tls: UpstreamTlsConfig {
                mode: gatehouse_crds::connection::TlsMode::Require,
                ca_file: None,
            },
            credentials: CredentialFiles {
                username_file: "/dev/null".into(),
                password_file: "/dev/null".into(),
            },
        };
        UpstreamTls::new(&upstream).unwrap().unwrap()
    }

    /// Runs `start_tls` against a "server" that answers `answer` to the
    /// SSLRequest; returns the result and every byte the proxy sent.
    async fn against(answer: &'static [u8]) -> (Result<(), UpstreamError>, Vec<u8>) {
        let (proxy, mut server) = tokio::io::duplex(1 << 16);
        let tls = require();
        let serve = async move {
            let mut request = [0u8; 8];
            server.read_exact(&mut request).await.unwrap();
            assert_eq!(request, SSL_REQUEST);
            server.write_all(answer).await.unwrap();
            server.shutdown().await.unwrap();
            let mut rest = Vec::new();
            // Until the proxy gives up and drops its end.
            let _ = server.read_to_end(&mut rest).await;
            rest
        };
        let connect = async move {
            start_tls(proxy, &tls, "db.example:5432", "db.example")
                .await
                .map(drop)
        };
        let (result, rest) = tokio::join!(connect, serve);
        (result, rest)
    }

    /// A client cannot switch the read-only session back to read-write with
    /// startup parameters of its own: not by name, not through `options`,
    /// and not by case.
    #[test]
    fn a_read_only_session_is_read_only_whatever_the_client_asks() {
        let client = StartupMessage::new([
            ("user", "planner"),
            ("database", "postgres"),
            ("default_transaction_read_only", "off"),
            ("DEFAULT_TRANSACTION_READ_ONLY", "off"),
            ("transaction_read_only", "off"),
            ("options", "-c default_transaction_read_only=off"),
            ("application_name", "agent"),
        ]);
        let params = startup_parameters("gatehouse_app", "orders", &client, true);
        assert_eq!(
            params,
            [
                ("user", "gatehouse_app"),
                ("database", "orders"),
                ("application_name", "agent"),
                ("default_transaction_read_only", "on"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        let params = startup_parameters("gatehouse_app", "orders", &client, false);
        assert!(
            params
                .iter()
                .all(|(k, _)| !k.to_ascii_lowercase().contains("read_only")),
            "{params:?}"
        );
        assert!(
            FORWARDED_PARAMETERS
                .iter()
                .all(|p| !p.eq_ignore_ascii_case(READ_ONLY_PARAMETER) && !p.eq_ignore_ascii_case("options"))
        );
    }

    #[tokio::test]
    async fn n_is_a_clear_failure_and_nothing_follows_in_plaintext() {
        let (result, sent) = against(b"N").await;
        let err = result.unwrap_err();
        assert!(
            matches!(err, UpstreamError::TlsRefused { mode: "require", .. }),
            "{err}"
        );
        assert_eq!(err.sqlstate(), "08001");
        assert!(err.to_string().contains("upstream.tls.mode is require"), "{err}");
        assert!(sent.is_empty(), "the proxy went on in plaintext: {sent:?}");
    }

    #[tokio::test]
    async fn bytes_after_s_are_never_read_as_messages() {
        // A server (or a man in the middle) that answers 'S' and then a
        // plaintext ErrorResponse: the handshake reads it as TLS and fails.
        let (result, _) = against(b"SE\0\0\0\x08C0800\0").await;
        let err = result.unwrap_err();
        assert!(matches!(err, UpstreamError::Tls { .. }), "{err}");
    }

    #[tokio::test]
    async fn another_answer_is_refused() {
        let (result, _) = against(b"X").await;
        assert!(matches!(result, Err(UpstreamError::TlsAnswer(b'X'))));
        let (result, _) = against(b"").await;
        assert!(matches!(result, Err(UpstreamError::Closed)));
    }
}
