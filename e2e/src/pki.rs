//! Certificates and keys the control plane needs, generated per run with rcgen.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};

use crate::error::{Result, StepExt};

/// A CA and what it signed, all PEM.
#[derive(Debug)]
pub struct Pki {
    /// The CA certificate clients trust.
    pub ca_cert: String,
    /// The CA's issuer, to sign more certificates (e.g. for a proxy under test).
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its private key, PEM.
#[derive(Debug)]
pub struct KeyedCert {
    /// The certificate.
    pub cert: String,
    /// Its private key (PKCS#8).
    pub key: String,
}

impl Pki {
    /// A fresh CA named `name`.
    pub fn new(name: &str) -> Result<Self> {
        let step = "generate the CA";
        let mut params = CertificateParams::new(Vec::<String>::new()).step(step)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().step(step)?).step(step)?;
        Ok(Pki {
            ca_cert: ca.pem(),
            ca,
        })
    }

    /// A serving certificate for `names` (DNS names and IP addresses).
    pub fn serving_cert(&self, common_name: &str, names: &[&str]) -> Result<KeyedCert> {
        let step = "sign a serving certificate";
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).step(step)?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().step(step)?;
        let cert = params.signed_by(&key, &self.ca).step(step)?;
        Ok(KeyedCert {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    /// A client certificate whose subject is `common_name` in `organizations`.
    pub fn client_cert(&self, common_name: &str, organizations: &[&str]) -> Result<KeyedCert> {
        let step = "sign a client certificate";
        let mut params = CertificateParams::new(Vec::<String>::new()).step(step)?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        for org in organizations {
            params.distinguished_name.push(DnType::OrganizationName, *org);
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().step(step)?;
        let cert = params.signed_by(&key, &self.ca).step(step)?;
        Ok(KeyedCert {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// A key pair for signing service-account tokens: (private PEM, public PEM).
pub fn service_account_key() -> Result<(String, String)> {
    let key = KeyPair::generate().step("generate the service-account signing key")?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

/// `n` random bytes as lower-case hex, for tokens and passwords.
pub fn random_hex(n: usize) -> String {
    use std::io::Read;
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("/dev/urandom is readable");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
