//! mTLS: a client certificate that the configured client CA verified is the
//! caller's identity, read the way Kubernetes reads one: the subject's common
//! name (CN) is the username and each organization (O) is a group.
//!
//! Verification (chain, validity, key usage) is done by rustls during the
//! handshake; this module only reads the subject of a certificate that
//! already passed it.

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::Identity;

/// Why a verified client certificate does not name a caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientCertError {
    /// The certificate did not parse (rustls accepted it, so this is unexpected).
    #[error("the client certificate could not be read: {0}")]
    Unreadable(String),
    /// The subject has no usable common name.
    #[error(
        "the client certificate's subject has no common name (CN); the CN is the username, so the certificate cannot identify you"
    )]
    NoCommonName,
}

/// The identity a verified client certificate stands for: username = subject
/// CN, groups = the subject's O values in order.
pub fn identity_from_certificate(cert: &CertificateDer<'_>) -> Result<Identity, ClientCertError> {
    let (_, cert) =
        X509Certificate::from_der(cert.as_ref()).map_err(|e| ClientCertError::Unreadable(e.to_string()))?;
    let subject = cert.subject();
    let username = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
        .ok_or(ClientCertError::NoCommonName)?
        .to_owned();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .filter(|o| !o.is_empty())
        .map(str::to_owned)
        .collect();
    Ok(Identity { username, groups })
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DnType, KeyPair};

    use super::*;

    // rcgen keeps one value per attribute type, so a subject with several
    // O values cannot be built here; the reader iterates over all of them.
    fn cert(subject: &[(DnType, &str)]) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (kind, value) in subject {
            params.distinguished_name.push(kind.clone(), *value);
        }
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn cn_is_the_username_and_each_o_a_group() {
        let der = cert(&[
            (DnType::CommonName, "ci-bot"),
            (DnType::OrganizationName, "agents"),
            (DnType::OrganizationalUnitName, "not-a-group"),
        ]);
        let identity = identity_from_certificate(&der).unwrap();
        assert_eq!(identity.username, "ci-bot");
        assert_eq!(identity.groups, ["agents"]);
    }

    #[test]
    fn no_organization_means_no_groups() {
        let identity = identity_from_certificate(&cert(&[(DnType::CommonName, "alice")])).unwrap();
        assert_eq!(identity.username, "alice");
        assert!(identity.groups.is_empty());
    }

    #[test]
    fn a_subject_without_cn_is_refused() {
        let der = cert(&[(DnType::OrganizationName, "agents")]);
        assert_eq!(
            identity_from_certificate(&der),
            Err(ClientCertError::NoCommonName)
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let der = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01]);
        assert!(matches!(
            identity_from_certificate(&der),
            Err(ClientCertError::Unreadable(_))
        ));
    }
}
