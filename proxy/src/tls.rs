//! TLS on both sides of the proxy, with rustls and the ring provider.
//!
//! - Clients: [`server_config`] builds the configuration `listen.tls` asks
//!   for (a certificate chain, its key, and optionally a CA whose client
//!   certificates authenticate, requested but not required).
//! - The target: [`UpstreamTls`] holds what `upstream.tls` asks for:
//!   `require` encrypts without verifying the certificate (libpq's
//!   `sslmode=require`), `verify-full` verifies the chain against `caFile`
//!   (or the system roots) and the host name or IP address.
//!
//! Both are built when a configuration is loaded ([`crate::server::Runtime::new`]),
//! so a reload reads new certificate files and a bad file refuses the new
//! configuration with a reason instead of failing connections later.
//!
//! After the handshake a session talks to a [`Stream`]: an enum, not a boxed
//! trait object, so plaintext sessions pay one match per poll and nothing else.

use std::{
    io,
    path::Path,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
};

use gatehouse_crds::connection::TlsMode;
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    server::WebPkiClientVerifier,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use crate::config;

/// The ALPN protocol name PostgreSQL 17 clients and servers offer.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Why a TLS setting could not be put in force. Names the setting and the
/// file, never a key's content.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{setting} {path}: {reason}")]
    File {
        /// The configuration key, e.g. `listen.tls.certFile`.
        setting: &'static str,
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The files are readable but rustls refuses them together (e.g. a key
    /// that does not belong to the certificate).
    #[error("{setting}: {reason}")]
    Refused {
        /// The configuration key(s).
        setting: &'static str,
        /// Why.
        reason: String,
    },
}

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn file_error(setting: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        setting,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Every certificate in a PEM file; at least one.
fn read_certs(setting: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error(setting, path, e))?;
    if certs.is_empty() {
        return Err(file_error(setting, path, "holds no PEM CERTIFICATE"));
    }
    Ok(certs)
}

fn read_roots(setting: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(setting, path)? {
        roots
            .add(cert)
            .map_err(|e| file_error(setting, path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// The client-facing TLS configuration `listen.tls` describes.
pub fn server_config(tls: &config::ServerTls) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = read_certs("listen.tls.certFile", &tls.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file).map_err(|e| {
        file_error(
            "listen.tls.keyFile",
            &tls.key_file,
            format!("no PEM private key: {e}"),
        )
    })?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Refused {
            setting: "listen.tls",
            reason: e.to_string(),
        })?;
    let builder = match &tls.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let roots = read_roots("listen.tls.clientCaFile", path)?;
            // Requested, not required: a client without a certificate goes on
            // to the token-as-password flow.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| file_error("listen.tls.clientCaFile", path, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Refused {
            setting: "listen.tls.certFile and keyFile",
            reason: format!("{e} (does the key belong to the certificate?)"),
        })?;
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Arc::new(config))
}

/// TLS towards the target, as `upstream.tls` describes it.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// `require` or `verify-full`.
    pub mode: TlsMode,
    /// The rustls configuration for that mode.
    pub config: Arc<ClientConfig>,
    /// The name the certificate must carry (`upstream.host`).
    pub server_name: ServerName<'static>,
}

/// The name of a mode as the configuration spells it.
pub fn mode_name(mode: TlsMode) -> &'static str {
    match mode {
        TlsMode::Disable => "disable",
        TlsMode::Require => "require",
        TlsMode::VerifyFull => "verify-full",
    }
}

impl UpstreamTls {
    /// The TLS settings for `upstream`; `None` for mode `disable`.
    pub fn new(upstream: &config::Upstream) -> Result<Option<UpstreamTls>, TlsError> {
        let mode = upstream.tls.mode;
        let server_name = ServerName::try_from(upstream.host.clone()).map_err(|e| TlsError::Refused {
            setting: "upstream.host",
            reason: format!("{:?} is neither a DNS name nor an IP address: {e}", upstream.host),
        })?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Refused {
                setting: "upstream.tls",
                reason: e.to_string(),
            })?;
        let mut config = match mode {
            TlsMode::Disable => return Ok(None),
            TlsMode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider())))
                .with_no_client_auth(),
            TlsMode::VerifyFull => {
                let roots = match &upstream.tls.ca_file {
                    Some(path) => read_roots("upstream.tls.caFile", path)?,
                    None => system_roots()?,
                };
                builder.with_root_certificates(roots).with_no_client_auth()
            }
        };
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok(Some(UpstreamTls {
            mode,
            config: Arc::new(config),
            server_name,
        }))
    }
}

fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (_added, _ignored) = roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let why = found
            .errors
            .first()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(TlsError::Refused {
            setting: "upstream.tls",
            reason: format!(
                "mode verify-full without caFile uses the system CA certificates, and none were found{why}; set upstream.tls.caFile"
            ),
        });
    }
    Ok(roots)
}

/// The verifier of `upstream.tls.mode: require`: the connection is encrypted
/// and the handshake signatures are checked, but the certificate is not, as
/// with libpq's `sslmode=require`. It protects against passive eavesdropping,
/// not against an active man in the middle; `verify-full` does.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Whether bytes are waiting on `tcp` that the proxy has not read.
///
/// Called right after an SSLRequest, before answering it: a client must wait
/// for the answer, so anything already there was sent with the request and
/// possibly injected by a man in the middle (CVE-2021-23214). The check is a
/// non-blocking `MSG_PEEK` on a duplicate of the socket: tokio's own `peek`
/// waits for data, and this must not wait.
pub fn has_unread_bytes(tcp: &TcpStream) -> io::Result<bool> {
    use std::os::fd::AsFd;
    let duplicate = std::net::TcpStream::from(tcp.as_fd().try_clone_to_owned()?);
    // The duplicate shares the file description, so it is non-blocking too.
    match duplicate.peek(&mut [0u8; 1]) {
        Ok(n) => Ok(n > 0),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

/// A connection in plaintext or in TLS. The TLS stream is boxed: it is large,
/// and one allocation per session keeps the enum small for the plaintext case.
#[derive(Debug)]
pub enum Stream<T> {
    /// Plaintext TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<T>),
}

/// A client connection.
pub type ClientStream = Stream<tokio_rustls::server::TlsStream<TcpStream>>;
/// A connection to the target.
pub type ServerStream = Stream<tokio_rustls::client::TlsStream<TcpStream>>;

impl<T> Stream<T> {
    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

impl ClientStream {
    /// The client's certificate chain, when it presented one that the
    /// configured client CA verified (rustls refuses the handshake otherwise).
    pub fn peer_certificate(&self) -> Option<&CertificateDer<'static>> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(tls) => tls.get_ref().1.peer_certificates()?.first(),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Stream<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stream<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests;
