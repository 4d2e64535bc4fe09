//! The objects a Connection owns, rendered from it alone: the same
//! Connection, Policies and settings always give the same objects, byte for
//! byte, so a GitOps tool sees no drift and a restarted operator changes
//! nothing.
//!
//! Names: the Service is the Connection's name (agents connect to
//! `<connection>.<namespace>.svc`); everything else is `gatehouse-<connection>`;
//! the cluster-wide auth-delegator binding carries the namespace too.

use std::collections::BTreeMap;

use gatehouse_crds::{
    Connection,
    connection::{RecordingMode, TlsMode},
};
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        core::v1::{
            Capabilities, ConfigMap, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
            HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
            SeccompProfile, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, Volume,
            VolumeMount,
        },
        rbac::v1::{ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject},
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
        util::intstr::IntOrString,
    },
};
use kube::Resource as _;
use serde::Serialize;

/// The port agents connect to, on the Service and the proxy.
pub const PROXY_PORT: i32 = 5432;
/// The proxy's admin port: `/healthz`, `/readyz`, `/metrics`.
pub const ADMIN_PORT: i32 = 9090;
/// The key of the rendered configuration in the ConfigMap.
pub const CONFIG_KEY: &str = "config.yaml";
/// Where the proxy spools recordings (an emptyDir).
pub const SPOOL_PATH: &str = "/var/spool/gatehouse";
/// Where the proxy writes the values of the Secrets it reads (an emptyDir in memory).
pub const SECRETS_PATH: &str = "/var/run/gatehouse/secrets";

/// What the operator was started with that shapes every proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySettings {
    /// The proxy container image.
    pub image: String,
    /// The recordings store every proxy writes to; `None`: a folder in the
    /// pod (for trying Gatehouse out; lost with the pod).
    pub recording_s3: Option<RecordingS3>,
    /// The Secret, in each Connection's namespace, holding the recording
    /// signing key (`signing-key.pem`) and the S3 keys (`access-key-id`,
    /// `secret-access-key`).
    pub recording_secret: String,
}

/// The S3-compatible store of recordings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordingS3 {
    /// The bucket.
    pub bucket: String,
    /// An S3-compatible server's URL; AWS when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The region.
    pub region: String,
    /// Path-style addressing.
    pub path_style: bool,
    /// Prefix of every key.
    pub prefix: String,
}

/// Names of a Connection's children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The Connection's namespace.
    pub namespace: String,
    /// The Connection's name, which the Service takes.
    pub connection: String,
    /// ServiceAccount, Role, RoleBinding, ConfigMap and Deployment.
    pub proxy: String,
    /// The ClusterRoleBinding to `system:auth-delegator`.
    pub auth_delegator: String,
}

impl Names {
    /// The names for `connection` in `namespace`.
    pub fn new(namespace: &str, connection: &str) -> Names {
        Names {
            namespace: namespace.to_owned(),
            connection: connection.to_owned(),
            proxy: format!("gatehouse-{connection}"),
            auth_delegator: format!("gatehouse-{namespace}-{connection}-auth-delegator"),
        }
    }

    /// The username the proxy's ServiceAccount authenticates as.
    pub fn proxy_user(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.proxy)
    }

    /// Where agents connect.
    pub fn endpoint(&self) -> String {
        format!("{}.{}.svc:{PROXY_PORT}", self.connection, self.namespace)
    }
}

/// Labels on every child, and the selector of the proxy pods.
pub fn labels(names: &Names) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "gatehouse-proxy".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), names.connection.clone()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "gatehouse-operator".to_owned(),
        ),
        ("app.kubernetes.io/part-of".to_owned(), "gatehouse".to_owned()),
    ])
}

fn selector(names: &Names) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "gatehouse-proxy".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), names.connection.clone()),
    ])
}

/// Labels on the cluster-wide binding, which cannot carry an owner
/// reference to a namespaced Connection: the operator finds it by these.
pub fn cluster_labels(names: &Names) -> BTreeMap<String, String> {
    let mut labels = labels(names);
    labels.insert(
        "gatehouse.dev/connection-namespace".to_owned(),
        names.namespace.clone(),
    );
    labels
}

/// Whether a cluster-scoped object is the one the operator made for the
/// Connection `names` name: it carries that Connection's [`cluster_labels`].
pub fn is_cluster_child(meta: &ObjectMeta, names: &Names) -> bool {
    let wanted = cluster_labels(names);
    meta.labels
        .as_ref()
        .is_some_and(|labels| wanted.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

fn owner(connection: &Connection) -> Option<OwnerReference> {
    connection.controller_owner_ref(&())
}

fn meta(connection: &Connection, names: &Names, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(names.namespace.clone()),
        labels: Some(labels(names)),
        owner_references: owner(connection).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// The proxy's ServiceAccount; no token is mounted except the projected one
/// the pod asks for.
pub fn service_account(connection: &Connection, names: &Names) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(connection, names, &names.proxy),
        automount_service_account_token: Some(true),
        ..ServiceAccount::default()
    }
}

/// What the proxy may do in its namespace: read its ConfigMap, its
/// credential Secret (and the recording Secret), and create, read and
/// withdraw ApprovalRequests.
pub fn role(connection: &Connection, names: &Names, settings: &ProxySettings) -> Role {
    let mut secrets = vec![connection.spec.credentials_ref.name.clone()];
    if let Some(ca) = connection
        .spec
        .target
        .tls
        .as_ref()
        .and_then(|tls| tls.ca_secret_ref.as_ref())
    {
        secrets.push(ca.name.clone());
    }
    if recording_mode(connection) != RecordingMode::Off {
        secrets.push(settings.recording_secret.clone());
    }
    secrets.sort();
    secrets.dedup();
    let rule = |group: &str, resource: &str, names: Option<Vec<String>>, verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(vec![resource.to_owned()]),
        resource_names: names,
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        ..PolicyRule::default()
    };
    Role {
        metadata: meta(connection, names, &names.proxy),
        rules: Some(vec![
            rule(
                "",
                "configmaps",
                Some(vec![names.proxy.clone()]),
                &["get", "list", "watch"],
            ),
            rule("", "secrets", Some(secrets), &["get", "list", "watch"]),
            rule(
                gatehouse_crds::GROUP,
                "approvalrequests",
                None,
                &["create", "get", "list", "watch"],
            ),
            rule(
                gatehouse_crds::GROUP,
                "approvalrequests/status",
                None,
                &["get", "patch"],
            ),
        ]),
    }
}

fn proxy_subject(names: &Names) -> Subject {
    Subject {
        kind: "ServiceAccount".to_owned(),
        name: names.proxy.clone(),
        namespace: Some(names.namespace.clone()),
        ..Subject::default()
    }
}

/// Binds [`role`] to the proxy's ServiceAccount.
pub fn role_binding(connection: &Connection, names: &Names) -> RoleBinding {
    RoleBinding {
        metadata: meta(connection, names, &names.proxy),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "Role".to_owned(),
            name: names.proxy.clone(),
        },
        subjects: Some(vec![proxy_subject(names)]),
    }
}

/// Lets the proxy ask the API server who a caller's token belongs to
/// (TokenReview), as `system:auth-delegator` allows.
pub fn auth_delegator(names: &Names) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(names.auth_delegator.clone()),
            labels: Some(cluster_labels(names)),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "ClusterRole".to_owned(),
            name: "system:auth-delegator".to_owned(),
        },
        subjects: Some(vec![proxy_subject(names)]),
    }
}

/// The recording mode, `required` unless the Connection says otherwise.
pub fn recording_mode(connection: &Connection) -> RecordingMode {
    connection
        .spec
        .recording
        .as_ref()
        .map(|r| r.mode)
        .unwrap_or_default()
}

/// The rendered proxy configuration as a ConfigMap.
pub fn config_map(connection: &Connection, names: &Names, config: String) -> ConfigMap {
    ConfigMap {
        metadata: meta(connection, names, &names.proxy),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_owned(), config)])),
        ..ConfigMap::default()
    }
}

/// The Service agents connect to.
pub fn service(connection: &Connection, names: &Names) -> Service {
    Service {
        metadata: meta(connection, names, &names.connection),
        spec: Some(ServiceSpec {
            selector: Some(selector(names)),
            ports: Some(vec![ServicePort {
                name: Some("postgres".to_owned()),
                port: PROXY_PORT,
                target_port: Some(IntOrString::String("postgres".to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The proxy Deployment: the configuration comes from the ConfigMap through
/// the API (so changes apply without a restart, and no pod is replaced when
/// a Policy changes); the spool is an emptyDir.
pub fn deployment(connection: &Connection, names: &Names, settings: &ProxySettings) -> Deployment {
    let http_probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("admin".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        ..Probe::default()
    };
    let container = Container {
        name: "proxy".to_owned(),
        image: Some(settings.image.clone()),
        args: Some(
            [
                "--config-map",
                &names.proxy,
                "--secrets-dir",
                SECRETS_PATH,
                "--spool-dir",
                SPOOL_PATH,
                "--listen-address",
                &format!("0.0.0.0:{PROXY_PORT}"),
                "--admin-address",
                &format!("0.0.0.0:{ADMIN_PORT}"),
                "--drain",
                "30s",
            ]
            .map(str::to_owned)
            .to_vec(),
        ),
        env: Some(vec![EnvVar {
            name: "POD_NAMESPACE".to_owned(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.namespace".to_owned(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]),
        ports: Some(vec![
            ContainerPort {
                name: Some("postgres".to_owned()),
                container_port: PROXY_PORT,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("admin".to_owned()),
                container_port: ADMIN_PORT,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
        ]),
        readiness_probe: Some(http_probe("/readyz", 5)),
        liveness_probe: Some(http_probe("/healthz", 10)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "spool".to_owned(),
                mount_path: SPOOL_PATH.to_owned(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "secrets".to_owned(),
                mount_path: SECRETS_PATH.to_owned(),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };
    Deployment {
        metadata: meta(connection, names, &names.proxy),
        spec: Some(DeploymentSpec {
            replicas: Some(connection.spec.replicas),
            selector: LabelSelector {
                match_labels: Some(selector(names)),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(names)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(names.proxy.clone()),
                    // Sessions drain for 30 s on SIGTERM.
                    termination_grace_period_seconds: Some(40),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_owned(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container],
                    volumes: Some(vec![
                        Volume {
                            name: "spool".to_owned(),
                            empty_dir: Some(EmptyDirVolumeSource::default()),
                            ..Volume::default()
                        },
                        // Secret values never touch the node's disk.
                        Volume {
                            name: "secrets".to_owned(),
                            empty_dir: Some(EmptyDirVolumeSource {
                                medium: Some("Memory".to_owned()),
                                ..EmptyDirVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                    ]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// The upstream TLS mode as the proxy configuration spells it.
pub fn tls_mode(connection: &Connection) -> &'static str {
    match connection.spec.target.tls.as_ref().map(|t| t.mode) {
        Some(TlsMode::Disable) => "disable",
        Some(TlsMode::Require) => "require",
        Some(TlsMode::VerifyFull) | None => "verify-full",
    }
}
