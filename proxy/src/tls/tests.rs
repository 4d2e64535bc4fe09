use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::config::{
    CredentialFiles, ServerTls as ServerTlsConfig, Upstream, UpstreamTls as UpstreamTlsConfig,
};

/// A CA that signs serving and client certificates, written to a folder.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: tempfile::TempDir,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), issuer.pem()).unwrap();
        Ca { issuer, dir }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Signs a certificate for `names` (or, without names, a client
    /// certificate for `cn`) and writes `<file>.pem` and `<file>.key`.
    fn sign(&self, file: &str, cn: &str, names: &[&str], orgs: &[&str]) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        for org in orgs {
            params.distinguished_name.push(DnType::OrganizationName, *org);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_file, key_file) = (
            self.dir.path().join(format!("{file}.pem")),
            self.dir.path().join(format!("{file}.key")),
        );
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }

    fn server_tls(&self, names: &[&str], client_ca: Option<PathBuf>) -> ServerTlsConfig {
        let (cert_file, key_file) = self.sign("server", "proxy", names, &[]);
        ServerTlsConfig {
            cert_file,
            key_file,
            client_ca_file: client_ca,
        }
    }
}

fn upstream(host: &str, mode: TlsMode, ca_file: Option<PathBuf>) -> Upstream {
    Upstream {
        host: host.to_owned(),
        port: 5432,
        database: "orders".into(),
        tls: UpstreamTlsConfig { mode, ca_file },
        credentials: CredentialFiles {
            username_file: "/dev/null".into(),
            password_file: "/dev/null".into(),
        },
    }
}

/// Runs a handshake over an in-memory pipe; returns the client's result and
/// the certificate the server saw from the client.
async fn handshake(
    server: Arc<ServerConfig>,
    client: &UpstreamTls,
) -> (io::Result<()>, Option<CertificateDer<'static>>) {
    let (a, b) = tokio::io::duplex(64 << 10);
    let accept = async move {
        let mut tls = tokio_rustls::TlsAcceptor::from(server).accept(b).await.ok()?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().cloned());
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.ok()?;
        tls.write_all(&byte).await.ok()?;
        tls.flush().await.ok()?;
        peer
    };
    let connect = async {
        let mut tls = tokio_rustls::TlsConnector::from(client.config.clone())
            .connect(client.server_name.clone(), a)
            .await?;
        tls.write_all(b"x").await?;
        tls.flush().await?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await?;
        assert_eq!(&byte, b"x");
        Ok(())
    };
    let (client, peer) = tokio::join!(connect, accept);
    (client, peer)
}

#[tokio::test]
async fn verify_full_accepts_the_right_ca_and_name_and_nothing_else() {
    let ca = Ca::new("db-ca");
    let server = server_config(&ca.server_tls(&["db.example", "127.0.0.1"], None)).unwrap();
    for host in ["db.example", "127.0.0.1"] {
        let tls = UpstreamTls::new(&upstream(host, TlsMode::VerifyFull, Some(ca.ca_file())))
            .unwrap()
            .unwrap();
        let (result, _) = handshake(server.clone(), &tls).await;
        result.unwrap_or_else(|e| panic!("{host}: {e}"));
    }
    // Another name on the same CA.
    let tls = UpstreamTls::new(&upstream(
        "other.example",
        TlsMode::VerifyFull,
        Some(ca.ca_file()),
    ))
    .unwrap()
    .unwrap();
    let err = handshake(server.clone(), &tls).await.0.unwrap_err().to_string();
    assert!(err.contains("not valid for name \"other.example\""), "{err}");
    // The right name from another CA.
    let other = Ca::new("other-ca");
    let tls = UpstreamTls::new(&upstream(
        "db.example",
        TlsMode::VerifyFull,
        Some(other.ca_file()),
    ))
    .unwrap()
    .unwrap();
    let err = handshake(server, &tls).await.0.unwrap_err().to_string();
    assert!(err.contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn require_encrypts_without_verifying() {
    let ca = Ca::new("unknown-ca");
    let server = server_config(&ca.server_tls(&["somewhere.else"], None)).unwrap();
    let tls = UpstreamTls::new(&upstream("db.example", TlsMode::Require, None))
        .unwrap()
        .unwrap();
    handshake(server, &tls).await.0.unwrap();
}

#[test]
fn disable_builds_nothing() {
    assert!(
        UpstreamTls::new(&upstream("db", TlsMode::Disable, None))
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_client_certificate_is_requested_verified_and_optional() {
    let server_ca = Ca::new("server-ca");
    let client_ca = Ca::new("client-ca");
    let server = server_config(&server_ca.server_tls(&["proxy.example"], Some(client_ca.ca_file()))).unwrap();
    let plain = UpstreamTls::new(&upstream(
        "proxy.example",
        TlsMode::VerifyFull,
        Some(server_ca.ca_file()),
    ))
    .unwrap()
    .unwrap();
    // Without a certificate: accepted, no peer certificate.
    let (result, peer) = handshake(server.clone(), &plain).await;
    result.unwrap();
    assert!(peer.is_none());

    let with_cert = |ca: &Ca| {
        let (cert, key) = ca.sign("client", "ci-bot", &[], &["agents"]);
        let certs = read_certs("test", &cert).unwrap();
        let key = PrivateKeyDer::from_pem_file(&key).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(read_certs("test", &server_ca.ca_file()).unwrap());
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .unwrap();
        UpstreamTls {
            mode: TlsMode::VerifyFull,
            config: Arc::new(config),
            server_name: ServerName::try_from("proxy.example").unwrap(),
        }
    };
    let (result, peer) = handshake(server.clone(), &with_cert(&client_ca)).await;
    result.unwrap();
    let identity = crate::identity::identity_from_certificate(&peer.unwrap()).unwrap();
    assert_eq!(
        (identity.username.as_str(), identity.groups.as_slice()),
        ("ci-bot", &["agents".to_owned()][..])
    );
    // A certificate from another CA fails the handshake.
    let stranger = Ca::new("stranger-ca");
    let (result, peer) = handshake(server, &with_cert(&stranger)).await;
    assert!(
        result.is_err() || peer.is_none(),
        "a stranger's certificate was accepted"
    );
}

#[test]
fn bad_files_are_refused_naming_setting_and_file() {
    let ca = Ca::new("ca");
    let good = ca.server_tls(&["localhost"], None);
    let missing = ServerTlsConfig {
        cert_file: ca.dir.path().join("nope.pem"),
        ..good.clone()
    };
    let err = server_config(&missing).unwrap_err().to_string();
    assert!(
        err.starts_with("listen.tls.certFile") && err.contains("nope.pem"),
        "{err}"
    );

    let empty = ca.dir.path().join("empty.pem");
    std::fs::write(&empty, "not pem at all\n").unwrap();
    let err = server_config(&ServerTlsConfig {
        cert_file: empty.clone(),
        ..good.clone()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("no PEM CERTIFICATE"), "{err}");
    let err = server_config(&ServerTlsConfig {
        key_file: empty.clone(),
        ..good.clone()
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("listen.tls.keyFile") && err.contains("no PEM private key"),
        "{err}"
    );

    // A key that belongs to another certificate.
    let (_, other_key) = ca.sign("other", "other", &["localhost"], &[]);
    let err = server_config(&ServerTlsConfig {
        key_file: other_key,
        ..good.clone()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("does the key belong to the certificate"), "{err}");

    let err = server_config(&ServerTlsConfig {
        client_ca_file: Some(empty.clone()),
        ..good
    })
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("listen.tls.clientCaFile"), "{err}");

    let err = UpstreamTls::new(&upstream("db", TlsMode::VerifyFull, Some(empty)))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("upstream.tls.caFile"), "{err}");
}

#[tokio::test]
async fn unread_bytes_are_seen_without_being_consumed_or_waited_for() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (mut server, _) = listener.accept().await.unwrap();
    assert!(!has_unread_bytes(&server).unwrap());
    client.write_all(b"abcd").await.unwrap();
    let mut byte = [0u8; 1];
    server.read_exact(&mut byte).await.unwrap();
    // Loopback delivers the rest with the first byte.
    assert!(has_unread_bytes(&server).unwrap());
    let mut rest = [0u8; 3];
    server.read_exact(&mut rest).await.unwrap();
    assert_eq!(&rest, b"bcd");
    assert!(!has_unread_bytes(&server).unwrap());
}
