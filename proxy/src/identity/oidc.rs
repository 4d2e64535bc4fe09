//! OIDC JWTs, verified against the keys of a JWKS file with `jsonwebtoken`.
//!
//! The algorithm a token is checked with comes from the key it names, never
//! from the token alone: a token that says `HS256` over a key published for
//! `RS256` or `ES256` is refused, so a public key can never serve as an HMAC
//! secret. `alg: none` does not even parse. HMAC is accepted only for an
//! `oct` key that the JWKS lists with an `HS*` algorithm.

use std::collections::HashSet;

use jsonwebtoken::{
    Algorithm, AlgorithmFamily, DecodingKey, Validation,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse},
};
use serde_json::{Map, Value};

use super::{AuthError, Identity, SetupError};
use crate::config::Oidc;

/// One verification key of the JWKS.
#[derive(Debug, Clone)]
struct VerificationKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// The OIDC validator of one configuration.
#[derive(Debug, Clone)]
pub struct OidcValidator {
    issuer: String,
    audiences: Vec<String>,
    username_claim: String,
    groups_claim: String,
    leeway_seconds: u64,
    keys: Vec<VerificationKey>,
}

impl OidcValidator {
    /// Reads the JWKS file of `config`.
    pub fn load(config: &Oidc) -> Result<OidcValidator, SetupError> {
        let failed = |reason: String| SetupError::Jwks {
            path: config.jwks_file.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&config.jwks_file).map_err(|e| failed(e.to_string()))?;
        OidcValidator::from_jwks(config, &text).map_err(failed)
    }

    /// The validator for `config` with the JWKS document `jwks`.
    pub fn from_jwks(config: &Oidc, jwks: &str) -> Result<OidcValidator, String> {
        let set: JwkSet = serde_json::from_str(jwks)
            .map_err(|e| format!("not a JWKS document ({{\"keys\": [...]}}): {e}"))?;
        let mut keys = Vec::with_capacity(set.keys.len());
        let mut kids = HashSet::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            let name = match &jwk.common.key_id {
                Some(kid) => format!("key {kid:?}"),
                None => format!("key #{i}"),
            };
            // Encryption keys may share a JWKS with signing keys; they sign nothing.
            if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
                continue;
            }
            let algorithm = key_algorithm(jwk).map_err(|why| format!("{name}: {why}"))?;
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("{name}: {e}"))?;
            if let Some(kid) = &jwk.common.key_id
                && !kids.insert(kid.clone())
            {
                return Err(format!("{name} appears twice"));
            }
            keys.push(VerificationKey {
                kid: jwk.common.key_id.clone(),
                algorithm,
                key,
            });
        }
        if keys.is_empty() {
            return Err("holds no signing key".into());
        }
        Ok(OidcValidator {
            issuer: config.issuer.clone(),
            audiences: config.audiences.clone(),
            username_claim: config.username_claim.clone(),
            groups_claim: config.groups_claim.clone(),
            leeway_seconds: config.clock_skew.as_secs(),
            keys,
        })
    }

    /// The issuer whose tokens this validator checks.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Verifies `token` and reads the caller from its claims.
    pub fn validate(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Rejected)?;
        let key = match &header.kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid.as_str())),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
        .ok_or(AuthError::Rejected)?;
        if header.alg != key.algorithm {
            return Err(AuthError::Rejected);
        }
        let mut validation = Validation::new(key.algorithm);
        validation.leeway = self.leeway_seconds;
        validation.validate_nbf = true;
        validation.set_issuer(&[self.issuer.as_str()]);
        validation.set_audience(&self.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidAudience => AuthError::wrong_audience(&self.audiences),
                ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => {
                    AuthError::wrong_audience(&self.audiences)
                }
                _ => AuthError::Rejected,
            })?
            .claims;
        self.identity(&claims)
    }

    fn identity(&self, claims: &Map<String, Value>) -> Result<Identity, AuthError> {
        let bad = |claim: &str, expected| AuthError::BadClaim {
            claim: claim.to_owned(),
            expected,
        };
        const USERNAME: &str = "a non-empty string that does not start with \"system:\"";
        const GROUPS: &str = "an array of strings none of which starts with \"system:\"";
        // "system:" names belong to Kubernetes (ServiceAccounts, nodes, its
        // groups): an OIDC caller must not pose as one in a Policy subject.
        let username = claims
            .get(&self.username_claim)
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty() && !u.starts_with("system:"))
            .ok_or_else(|| bad(&self.username_claim, USERNAME))?;
        let groups = match claims.get(&self.groups_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|g| {
                    g.as_str()
                        .filter(|g| !g.starts_with("system:"))
                        .map(str::to_owned)
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad(&self.groups_claim, GROUPS))?,
            Some(_) => return Err(bad(&self.groups_claim, GROUPS)),
        };
        Ok(Identity {
            username: username.to_owned(),
            groups,
        })
    }
}

/// The one algorithm a key verifies: its `alg` when given (which must fit
/// the key's type), else the usual one for its type and curve. RSA keys
/// without `alg` are taken as RS256, as OIDC providers publish them.
fn key_algorithm(jwk: &Jwk) -> Result<Algorithm, String> {
    let declared = jwk
        .common
        .key_algorithm
        .map(|alg| Algorithm::try_from(alg).map_err(|_| format!("alg {alg} does not sign")))
        .transpose()?;
    let (family, default) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (AlgorithmFamily::Rsa, Some(Algorithm::RS256)),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => (AlgorithmFamily::Ec, Some(Algorithm::ES256)),
            EllipticCurve::P384 => (AlgorithmFamily::Ec, Some(Algorithm::ES384)),
            ref curve => return Err(format!("curve {curve:?} is not supported (P-256, P-384)")),
        },
        AlgorithmParameters::OctetKeyPair(_) => (AlgorithmFamily::Ed, Some(Algorithm::EdDSA)),
        // A shared secret: only when the JWKS says which HMAC it is for.
        AlgorithmParameters::OctetKey(_) => (AlgorithmFamily::Hmac, None),
        _ => return Err("key type is not supported".into()),
    };
    let algorithm = declared
        .or(default)
        .ok_or_else(|| "an oct (HMAC) key needs alg HS256, HS384 or HS512".to_owned())?;
    if algorithm.family() != family {
        return Err(format!("alg {algorithm:?} does not fit a key of this type"));
    }
    if let AlgorithmParameters::EllipticCurve(ec) = &jwk.algorithm {
        let fits = matches!(
            (algorithm, &ec.curve),
            (Algorithm::ES256, EllipticCurve::P256) | (Algorithm::ES384, EllipticCurve::P384)
        );
        if !fits {
            return Err(format!("alg {algorithm:?} does not fit curve {:?}", ec.curve));
        }
    }
    Ok(algorithm)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
    use jsonwebtoken::{EncodingKey, Header, get_current_timestamp};
    use serde_json::json;

    use super::*;

    const ISSUER: &str = "https://issuer.example.com";

    struct Signer {
        kid: String,
        key: EncodingKey,
        public: Jwk,
    }

    fn signer(kid: &str) -> Signer {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = EncodingKey::from_ec_der(&pair.serialize_der());
        let mut public = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
        public.common.key_id = Some(kid.to_owned());
        Signer {
            kid: kid.to_owned(),
            key,
            public,
        }
    }

    fn config() -> Oidc {
        Oidc {
            issuer: ISSUER.into(),
            audiences: vec!["gatehouse".into(), "orders".into()],
            jwks_file: "/unused".into(),
            username_claim: "email".into(),
            groups_claim: "groups".into(),
            clock_skew: Duration::from_secs(60),
        }
    }

    fn validator(keys: &[&Signer]) -> OidcValidator {
        let jwks = json!({"keys": keys.iter().map(|s| &s.public).collect::<Vec<_>>()});
        OidcValidator::from_jwks(&config(), &jwks.to_string()).unwrap()
    }

    fn claims(edit: impl FnOnce(&mut Map<String, Value>)) -> Value {
        let now = get_current_timestamp();
        let mut claims = json!({
            "iss": ISSUER,
            "aud": "gatehouse",
            "sub": "0001",
            "email": "ana@example.com",
            "groups": ["analysts", "oncall"],
            "iat": now,
            "exp": now + 300,
        });
        if let Value::Object(map) = &mut claims {
            edit(map);
        }
        claims
    }

    fn sign(signer: &Signer, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(signer.kid.clone());
        jsonwebtoken::encode(&header, claims, &signer.key).unwrap()
    }

    /// A token with any header, any claims and any signature bytes.
    fn forge(header: &Value, claims: &Value, signature: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string()),
            B64.encode(signature)
        )
    }

    #[test]
    fn a_valid_token_names_the_caller_from_its_claims() {
        let s = signer("k1");
        let id = validator(&[&s]).validate(&sign(&s, &claims(|_| {}))).unwrap();
        assert_eq!(
            id,
            Identity {
                username: "ana@example.com".into(),
                groups: vec!["analysts".into(), "oncall".into()],
            }
        );
        // Any of the configured audiences, as a string or in a list.
        let token = sign(
            &s,
            &claims(|c| _ = c.insert("aud".into(), json!(["x", "orders"]))),
        );
        assert!(validator(&[&s]).validate(&token).is_ok());
        // No groups claim: no groups.
        let token = sign(&s, &claims(|c| _ = c.remove("groups")));
        assert_eq!(
            validator(&[&s]).validate(&token).unwrap().groups,
            Vec::<String>::new()
        );
    }

    #[test]
    fn expiry_and_not_before_honour_the_clock_skew() {
        let s = signer("k1");
        let v = validator(&[&s]);
        let now = get_current_timestamp();
        let at = |exp: u64, nbf: Option<u64>| {
            sign(
                &s,
                &claims(|c| {
                    c.insert("exp".into(), json!(exp));
                    if let Some(nbf) = nbf {
                        c.insert("nbf".into(), json!(nbf));
                    }
                }),
            )
        };
        assert_eq!(v.validate(&at(now - 120, None)), Err(AuthError::Expired));
        assert!(v.validate(&at(now - 30, None)).is_ok(), "within the skew");
        assert!(
            v.validate(&at(now + 300, Some(now + 30))).is_ok(),
            "nbf within the skew"
        );
        assert_eq!(
            v.validate(&at(now + 600, Some(now + 300))),
            Err(AuthError::NotYetValid)
        );
        assert_eq!(
            AuthError::Expired.to_string(),
            "the token has expired; get a new one"
        );
    }

    #[test]
    fn wrong_issuer_and_audience_are_refused() {
        let s = signer("k1");
        let v = validator(&[&s]);
        let token = sign(
            &s,
            &claims(|c| _ = c.insert("iss".into(), json!("https://evil.example.com"))),
        );
        assert_eq!(v.validate(&token), Err(AuthError::Rejected));
        let token = sign(&s, &claims(|c| _ = c.insert("aud".into(), json!("kubernetes"))));
        let err = v.validate(&token).unwrap_err();
        assert_eq!(
            err,
            AuthError::wrong_audience(&["gatehouse".into(), "orders".into()])
        );
        assert!(err.to_string().contains(r#""gatehouse" or "orders""#), "{err}");
        let token = sign(&s, &claims(|c| _ = c.remove("aud")));
        assert!(matches!(v.validate(&token), Err(AuthError::WrongAudience { .. })));
    }

    #[test]
    fn an_altered_payload_or_signature_is_refused() {
        let s = signer("k1");
        let v = validator(&[&s]);
        let token = sign(&s, &claims(|_| {}));
        let parts: Vec<&str> = token.split('.').collect();
        let forged = claims(|c| _ = c.insert("email".into(), json!("root@example.com")));
        let altered = format!("{}.{}.{}", parts[0], B64.encode(forged.to_string()), parts[2]);
        assert_eq!(v.validate(&altered), Err(AuthError::Rejected));
        let mut signature = B64.decode(parts[2]).unwrap();
        signature[10] ^= 1;
        let altered = format!("{}.{}.{}", parts[0], parts[1], B64.encode(signature));
        assert_eq!(v.validate(&altered), Err(AuthError::Rejected));
        // Expired AND altered: the signature is checked first, so nothing
        // about the claims is told.
        let expired = sign(&s, &claims(|c| _ = c.insert("exp".into(), json!(1))));
        let altered = format!("{}x", expired);
        assert_eq!(v.validate(&altered), Err(AuthError::Rejected));
    }

    #[test]
    fn keys_are_chosen_by_kid() {
        let (a, b) = (signer("a"), signer("b"));
        let v = validator(&[&a, &b]);
        assert!(v.validate(&sign(&a, &claims(|_| {}))).is_ok());
        assert!(v.validate(&sign(&b, &claims(|_| {}))).is_ok());
        // A kid nobody published, and another issuer's key under a known kid.
        let stranger = signer("c");
        assert_eq!(
            v.validate(&sign(&stranger, &claims(|_| {}))),
            Err(AuthError::Rejected)
        );
        let impostor = signer("a");
        assert_eq!(
            v.validate(&sign(&impostor, &claims(|_| {}))),
            Err(AuthError::Rejected)
        );
        // No kid: only when the set has one key.
        let mut header = Header::new(Algorithm::ES256);
        header.kid = None;
        let token = jsonwebtoken::encode(&header, &claims(|_| {}), &a.key).unwrap();
        assert_eq!(v.validate(&token), Err(AuthError::Rejected));
        assert!(validator(&[&a]).validate(&token).is_ok());
    }

    #[test]
    fn alg_none_and_hmac_with_the_public_key_are_refused() {
        let s = signer("k1");
        let v = validator(&[&s]);
        let none = forge(&json!({"alg": "none", "kid": "k1"}), &claims(|_| {}), b"");
        assert_eq!(v.validate(&none), Err(AuthError::Rejected));
        let none = format!("{}.", none.trim_end_matches('.'));
        assert_eq!(v.validate(&none), Err(AuthError::Rejected));
        // The classic confusion: HS256 keyed with the published public key,
        // in every form an attacker might try.
        let AlgorithmParameters::EllipticCurve(ec) = &s.public.algorithm else {
            panic!("not an EC key")
        };
        let mut point = vec![4u8];
        point.extend(B64.decode(&ec.x).unwrap());
        point.extend(B64.decode(&ec.y).unwrap());
        let jwk_json = serde_json::to_vec(&s.public).unwrap();
        for secret in [point, jwk_json, B64.decode(&ec.x).unwrap()] {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some("k1".into());
            let token = jsonwebtoken::encode(
                &header,
                &claims(|_| {}),
                &EncodingKey::from_secret(&secret).unwrap(),
            )
            .unwrap();
            assert_eq!(v.validate(&token), Err(AuthError::Rejected));
        }
    }

    #[test]
    fn hmac_only_with_an_oct_key_that_says_so() {
        let secret = b"a-shared-secret-of-enough-length!";
        let oct = |alg: Option<&str>| {
            let mut key = json!({"kty": "oct", "kid": "h", "k": B64.encode(secret)});
            if let Some(alg) = alg {
                key["alg"] = json!(alg);
            }
            json!({"keys": [key]}).to_string()
        };
        let err = OidcValidator::from_jwks(&config(), &oct(None)).unwrap_err();
        assert!(err.contains("needs alg HS256"), "{err}");
        let v = OidcValidator::from_jwks(&config(), &oct(Some("HS256"))).unwrap();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("h".into());
        let token = jsonwebtoken::encode(
            &header,
            &claims(|_| {}),
            &EncodingKey::from_secret(secret).unwrap(),
        )
        .unwrap();
        assert!(v.validate(&token).is_ok());
        // HS512 under the same key: the key says HS256.
        header.alg = Algorithm::HS512;
        let token = jsonwebtoken::encode(
            &header,
            &claims(|_| {}),
            &EncodingKey::from_secret(secret).unwrap(),
        )
        .unwrap();
        assert_eq!(v.validate(&token), Err(AuthError::Rejected));
    }

    #[test]
    fn claims_that_cannot_name_a_caller_are_refused() {
        let s = signer("k1");
        let v = validator(&[&s]);
        for edit in [
            (|c: &mut Map<String, Value>| _ = c.remove("email")) as fn(&mut Map<String, Value>),
            |c| _ = c.insert("email".into(), json!(42)),
            |c| _ = c.insert("email".into(), json!("system:serviceaccount:agents:planner")),
        ] {
            let err = v.validate(&sign(&s, &claims(edit))).unwrap_err();
            assert!(
                matches!(&err, AuthError::BadClaim { claim, .. } if claim == "email"),
                "{err}"
            );
        }
        for groups in [
            json!("analysts"),
            json!(["analysts", 1]),
            json!(["system:masters"]),
        ] {
            let token = sign(&s, &claims(|c| _ = c.insert("groups".into(), groups)));
            let err = v.validate(&token).unwrap_err();
            assert!(
                matches!(&err, AuthError::BadClaim { claim, .. } if claim == "groups"),
                "{err}"
            );
        }
    }

    #[test]
    fn bad_jwks_documents_are_refused_with_a_reason() {
        let s = signer("k1");
        let mut wrong_alg = serde_json::to_value(&s.public).unwrap();
        wrong_alg["alg"] = json!("HS256");
        let mut es384_on_p256 = serde_json::to_value(&s.public).unwrap();
        es384_on_p256["alg"] = json!("ES384");
        let cases = [
            ("not json".to_owned(), "not a JWKS document"),
            (json!({"keys": []}).to_string(), "holds no signing key"),
            (
                json!({"keys": [wrong_alg]}).to_string(),
                "does not fit a key of this type",
            ),
            (json!({"keys": [es384_on_p256]}).to_string(), "does not fit curve"),
            (
                json!({"keys": [&s.public, &s.public]}).to_string(),
                "appears twice",
            ),
        ];
        for (jwks, expected) in cases {
            let err = OidcValidator::from_jwks(&config(), &jwks).unwrap_err();
            assert!(err.contains(expected), "expected {expected:?} in {err}");
        }
        // A file that is not there names the file.
        let mut missing = config();
        missing.jwks_file = "/nonexistent/jwks.json".into();
        let err = OidcValidator::load(&missing).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/jwks.json"), "{err}");
    }

    #[test]
    fn refusals_never_echo_the_token() {
        let s = signer("k1");
        let v = validator(&[&s]);
        let token = sign(&s, &claims(|c| _ = c.insert("aud".into(), json!("kubernetes"))));
        let err = v.validate(&token).unwrap_err().to_string();
        for part in token.split('.') {
            assert!(!err.contains(part), "{err}");
        }
    }
}
