//! The proxy configuration a Connection and its Policies render to: the
//! document the proxy reads from its ConfigMap through the API.
//!
//! Secrets never enter the document: it names the Secrets the proxy reads
//! (its credential, the target's CA, the recording key), and the proxy reads
//! and watches them itself.

use gatehouse_crds::{Connection, connection::RecordingMode};
use gatehouse_proxy::config::NamedPolicy;
use serde::Serialize;

use crate::render::{ADMIN_PORT, Names, PROXY_PORT, ProxySettings, RecordingS3, recording_mode, tls_mode};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Document<'a> {
    connection: ConnectionName<'a>,
    listen: Listen,
    admin: Address,
    upstream: Upstream<'a>,
    auth: Auth,
    policies: &'a [NamedPolicy],
    recording: Recording<'a>,
    approval: Approval<'a>,
}

#[derive(Debug, Serialize)]
struct ConnectionName<'a> {
    namespace: &'a str,
    name: &'a str,
    /// Approvals are bound to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<&'a str>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Listen {
    address: String,
    /// Agents reach the proxy inside the cluster; TLS for them comes with
    /// listener certificates on the Connection.
    allow_plaintext: bool,
}

#[derive(Debug, Serialize)]
struct Address {
    address: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Upstream<'a> {
    host: &'a str,
    port: i32,
    database: &'a str,
    tls: UpstreamTls<'a>,
    credentials: SecretName<'a>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct UpstreamTls<'a> {
    mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca_secret: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct SecretName<'a> {
    secret: &'a str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Auth {
    token_review: TokenReview,
}

#[derive(Debug, Serialize)]
struct TokenReview {
    audience: &'static str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Recording<'a> {
    mode: RecordingMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    signing_key_secret: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    s3: Option<S3<'a>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct S3<'a> {
    #[serde(flatten)]
    store: &'a RecordingS3,
    credentials_secret: &'a str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Approval<'a> {
    hold_timeout: &'a str,
    ttl: &'a str,
}

/// The audience agents' tokens must be issued for.
pub const AUDIENCE: &str = "gatehouse";

/// Renders the proxy configuration of `connection` with `policies` (sorted
/// by name by the caller) as YAML.
pub fn render(
    connection: &Connection,
    names: &Names,
    policies: &[NamedPolicy],
    settings: &ProxySettings,
) -> Result<String, serde_norway::Error> {
    let spec = &connection.spec;
    let mode = recording_mode(connection);
    let recording = Recording {
        mode,
        signing_key_secret: (mode != RecordingMode::Off).then_some(settings.recording_secret.as_str()),
        s3: settings
            .recording_s3
            .as_ref()
            .filter(|_| mode != RecordingMode::Off)
            .map(|store| S3 {
                store,
                credentials_secret: &settings.recording_secret,
            }),
    };
    let approval = spec.approval.as_ref();
    let document = Document {
        connection: ConnectionName {
            namespace: &names.namespace,
            name: &names.connection,
            uid: connection.metadata.uid.as_deref(),
        },
        listen: Listen {
            address: format!("0.0.0.0:{PROXY_PORT}"),
            allow_plaintext: true,
        },
        admin: Address {
            address: format!("0.0.0.0:{ADMIN_PORT}"),
        },
        upstream: Upstream {
            host: &spec.target.host,
            port: spec.target.port,
            database: &spec.target.database,
            tls: UpstreamTls {
                mode: tls_mode(connection),
                ca_secret: spec
                    .target
                    .tls
                    .as_ref()
                    .and_then(|t| t.ca_secret_ref.as_ref())
                    .map(|r| r.name.as_str()),
            },
            credentials: SecretName {
                secret: &spec.credentials_ref.name,
            },
        },
        auth: Auth {
            token_review: TokenReview { audience: AUDIENCE },
        },
        policies,
        recording,
        approval: Approval {
            hold_timeout: approval.and_then(|a| a.hold_timeout.as_deref()).unwrap_or("5m"),
            ttl: approval.and_then(|a| a.ttl.as_deref()).unwrap_or("1h"),
        },
    };
    Ok(format!(
        "# Rendered by gatehouse-operator from Connection {}/{} and the Policies that select it. Do not edit: \
         the operator writes it back.\n{}",
        names.namespace,
        names.connection,
        serde_norway::to_string(&document)?
    ))
}

#[cfg(test)]
mod tests {
    use gatehouse_crds::{ConnectionSpec, PolicySpec};

    use super::*;
    use crate::render::ProxySettings;

    fn connection(yaml: &str) -> Connection {
        let spec: ConnectionSpec = serde_norway::from_str(yaml).expect("spec");
        let mut connection = Connection::new("orders-db", spec);
        connection.metadata.namespace = Some("team-a".into());
        connection.metadata.uid = Some("6b1c1b7e-2f0a-4c3e-9d51-0b7a2e9c4f10".into());
        connection
    }

    fn settings(s3: bool) -> ProxySettings {
        ProxySettings {
            image: "gatehouse-proxy:test".into(),
            recording_secret: "gatehouse-recording".into(),
            recording_s3: s3.then(|| RecordingS3 {
                bucket: "rec".into(),
                endpoint: Some("http://s3.local:7070".into()),
                region: "us-east-1".into(),
                path_style: true,
                prefix: "sessions".into(),
            }),
        }
    }

    const SPEC: &str = "type: postgres\ntarget: {host: orders.db.svc, database: orders, tls: {mode: verify-full, caSecretRef: {name: orders-ca}}}\ncredentialsRef: {name: orders-db-creds}\n";

    fn policy(name: &str) -> NamedPolicy {
        let spec: PolicySpec = serde_norway::from_str(
            "connectionSelector: {}\nsubjects: [{kind: Group, name: agents}]\nrules: [{name: reads, match: {operations: [select]}, action: allow}]\n",
        )
        .expect("policy");
        NamedPolicy {
            name: name.into(),
            spec,
        }
    }

    #[test]
    fn the_same_inputs_render_the_same_bytes() {
        let c = connection(SPEC);
        let names = Names::new("team-a", "orders-db");
        let policies = [policy("a"), policy("b")];
        let once = render(&c, &names, &policies, &settings(true)).expect("render");
        let again = render(&c, &names, &policies, &settings(true)).expect("render");
        assert_eq!(once, again);
        for expected in [
            "namespace: team-a",
            "uid: 6b1c1b7e-2f0a-4c3e-9d51-0b7a2e9c4f10",
            "host: orders.db.svc",
            "port: 5432",
            "mode: verify-full",
            "caSecret: orders-ca",
            "secret: orders-db-creds",
            "audience: gatehouse",
            "mode: required",
            "signingKeySecret: gatehouse-recording",
            "credentialsSecret: gatehouse-recording",
            "bucket: rec",
            "holdTimeout: 5m",
            "ttl: 1h",
        ] {
            assert!(once.contains(expected), "{expected} in\n{once}");
        }
    }

    #[test]
    fn recording_off_names_no_recording_secret() {
        let c = connection(&format!("{SPEC}recording: {{mode: off}}\n"));
        let names = Names::new("team-a", "orders-db");
        let text = render(&c, &names, &[], &settings(true)).expect("render");
        assert!(
            text.contains("mode: off") && !text.contains("gatehouse-recording"),
            "{text}"
        );
        let role = crate::render::role(&c, &names, &settings(true));
        let secrets = role
            .rules
            .expect("rules")
            .into_iter()
            .find(|r| r.resources.as_deref() == Some(&["secrets".to_owned()]))
            .and_then(|r| r.resource_names);
        assert_eq!(
            secrets,
            Some(vec!["orders-ca".to_owned(), "orders-db-creds".to_owned()])
        );
    }
}
