//! The Connection controller: a proxy Deployment per Connection, with its
//! ServiceAccount, permissions, rendered configuration and Service, all
//! applied server-side with one field manager and owned by the Connection.
//!
//! Status: `endpoint`, `policies` (the valid Policies that select it),
//! `observedGeneration`, and the conditions CredentialsResolved,
//! ConfigRendered, ProxyAvailable and Ready, each with a reason a person can
//! act on. A Connection whose Secret is missing or whose configuration
//! cannot be rendered keeps its last good ConfigMap and Deployment: a proxy
//! never runs on a broken configuration.

use std::{sync::Arc, time::Duration};

use gatehouse_crds::{Connection, ConnectionStatus, Policy, connection::RecordingMode};
use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Secret, rbac::v1::ClusterRoleBinding},
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        finalizer::{Event as FinalizerEvent, finalizer},
        reflector::ObjectRef,
    },
};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    Context, Error, FIELD_MANAGER,
    conditions::{Verdict, merge, ready},
    config, policy,
    render::{self, Names},
};

/// Condition types of a Connection, in the order they are listed.
pub const CREDENTIALS_RESOLVED: &str = "CredentialsResolved";
/// The configuration rendered and applied.
pub const CONFIG_RENDERED: &str = "ConfigRendered";
/// The proxy Deployment has available replicas.
pub const PROXY_AVAILABLE: &str = "ProxyAvailable";

/// How often a Connection is looked at again without a change.
const RESYNC: Duration = Duration::from_secs(300);

/// The finalizer that removes a deleted Connection's cluster-wide binding,
/// which no owner reference can reach (a namespaced owner cannot own a
/// cluster-scoped object).
pub const FINALIZER: &str = "gatehouse.dev/auth-delegator";

/// Reconciles one Connection: applies it, or cleans up after its deletion.
pub async fn reconcile(connection: Arc<Connection>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = connection.namespace().ok_or(Error::NotNamespaced)?;
    let api: Api<Connection> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, FINALIZER, connection, |event| async {
        match event {
            FinalizerEvent::Apply(connection) => apply_connection(connection, ctx.clone()).await,
            FinalizerEvent::Cleanup(connection) => {
                let names = Names::new(&namespace, &connection.name_any());
                let bindings: Api<ClusterRoleBinding> = Api::all(ctx.client.clone());
                match bindings.delete(&names.auth_delegator, &Default::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(Error::Kube(e)),
                }
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

async fn apply_connection(connection: Arc<Connection>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = connection.namespace().ok_or(Error::NotNamespaced)?;
    let names = Names::new(&namespace, &connection.name_any());
    let client = &ctx.client;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);

    let mut verdicts = vec![credentials(&secrets, &connection, &ctx.settings).await?];
    // Listed, not cached: a reconcile a Policy change started sees that change.
    let policies: Vec<Arc<Policy>> = Api::<Policy>::namespaced(client.clone(), &namespace)
        .list(&Default::default())
        .await
        .map_err(Error::Kube)?
        .into_iter()
        .map(Arc::new)
        .collect();
    let (selected, _) = policy::selecting(&policies, &connection);
    // Checked as the proxy will read it: a configuration the proxy would
    // refuse is never written.
    let rendered = config::render(&connection, &names, &selected, &ctx.settings)
        .map_err(|e| e.to_string())
        .and_then(|text| {
            gatehouse_proxy::cluster::check(&text)
                .map(|_| text)
                .map_err(|e| format!("the proxy would refuse it: {e}"))
        });
    verdicts.push(match &rendered {
        Ok(_) => Verdict::ok(
            CONFIG_RENDERED,
            "Rendered",
            format!(
                "ConfigMap {} holds the proxy configuration with {} Policies",
                names.proxy,
                selected.len()
            ),
        ),
        Err(e) => Verdict::failed(
            CONFIG_RENDERED,
            "RenderFailed",
            format!("the proxy configuration could not be rendered: {e}"),
        ),
    });

    // The identity and permissions first: the proxy needs them to start.
    apply(client, &namespace, &render::service_account(&connection, &names)).await?;
    apply(
        client,
        &namespace,
        &render::role(&connection, &names, &ctx.settings),
    )
    .await?;
    apply(client, &namespace, &render::role_binding(&connection, &names)).await?;
    apply_cluster(client, &render::auth_delegator(&names)).await?;
    apply(client, &namespace, &render::service(&connection, &names)).await?;
    let healthy = verdicts.iter().all(|v| v.ok);
    if let (true, Ok(config)) = (healthy, rendered) {
        apply(
            client,
            &namespace,
            &render::config_map(&connection, &names, config),
        )
        .await?;
        apply(
            client,
            &namespace,
            &render::deployment(&connection, &names, &ctx.settings),
        )
        .await?;
    }

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    verdicts.push(availability(&deployments, &names, connection.spec.replicas).await?);
    let ready = ready(&verdicts, &format!("agents connect to {}", names.endpoint()));
    verdicts.insert(0, ready);

    let previous = connection.status.clone().unwrap_or_default();
    let status = ConnectionStatus {
        observed_generation: connection.metadata.generation,
        endpoint: Some(names.endpoint()),
        policies: selected.iter().map(|p| p.name.clone()).collect(),
        conditions: merge(
            &previous.conditions,
            &verdicts,
            connection.metadata.generation,
            Timestamp::now(),
        ),
    };
    if status != previous {
        let api: Api<Connection> = Api::namespaced(client.clone(), &namespace);
        let patch = serde_json::json!({
            "apiVersion": "gatehouse.dev/v1alpha1",
            "kind": "Connection",
            "status": status,
        });
        api.patch_status(&names.connection, &apply_params(), &Patch::Apply(patch))
            .await
            .map_err(Error::Kube)?;
    }
    Ok(Action::requeue(RESYNC))
}

/// Whether the Secrets the proxy reads exist with their keys.
async fn credentials(
    secrets: &Api<Secret>,
    connection: &Connection,
    settings: &render::ProxySettings,
) -> Result<Verdict, Error> {
    let namespace = connection.namespace().unwrap_or_default();
    let mut wanted: Vec<(String, Vec<&str>, &str)> = vec![(
        connection.spec.credentials_ref.name.clone(),
        vec!["username", "password"],
        "spec.credentialsRef",
    )];
    if let Some(ca) = connection
        .spec
        .target
        .tls
        .as_ref()
        .and_then(|t| t.ca_secret_ref.as_ref())
    {
        wanted.push((ca.name.clone(), vec!["ca.crt"], "spec.target.tls.caSecretRef"));
    }
    if render::recording_mode(connection) != RecordingMode::Off {
        let mut keys = vec!["signing-key.pem"];
        if settings.recording_s3.is_some() {
            keys.extend(["access-key-id", "secret-access-key"]);
        }
        wanted.push((
            settings.recording_secret.clone(),
            keys,
            "the recording Secret (spec.recording.mode is not off)",
        ));
    }
    for (name, keys, why) in wanted {
        let Some(secret) = secrets.get_opt(&name).await.map_err(Error::Kube)? else {
            return Ok(Verdict::failed(
                CREDENTIALS_RESOLVED,
                "SecretNotFound",
                format!(
                    "Secret {namespace}/{name} ({why}) does not exist; create it with the keys {}",
                    keys.join(", ")
                ),
            ));
        };
        let present = |key: &str| {
            secret
                .data
                .as_ref()
                .is_some_and(|d| d.get(key).is_some_and(|v| !v.0.is_empty()))
                || secret
                    .string_data
                    .as_ref()
                    .is_some_and(|d| d.get(key).is_some_and(|v| !v.is_empty()))
        };
        let missing: Vec<&str> = keys.iter().copied().filter(|k| !present(k)).collect();
        if !missing.is_empty() {
            return Ok(Verdict::failed(
                CREDENTIALS_RESOLVED,
                "SecretKeysMissing",
                format!(
                    "Secret {namespace}/{name} ({why}) has no {} (or an empty one); add {}",
                    missing.join(", "),
                    if missing.len() == 1 { "it" } else { "them" }
                ),
            ));
        }
    }
    Ok(Verdict::ok(
        CREDENTIALS_RESOLVED,
        "SecretsFound",
        format!(
            "Secret {namespace}/{} holds the credential",
            connection.spec.credentials_ref.name
        ),
    ))
}

/// Whether the proxy Deployment has its replicas available.
async fn availability(deployments: &Api<Deployment>, names: &Names, replicas: i32) -> Result<Verdict, Error> {
    let Some(deployment) = deployments.get_opt(&names.proxy).await.map_err(Error::Kube)? else {
        return Ok(Verdict::failed(
            PROXY_AVAILABLE,
            "NotDeployed",
            format!(
                "Deployment {} is not created until the Secrets and configuration are in order",
                names.proxy
            ),
        ));
    };
    let available = deployment
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    if replicas == 0 {
        return Ok(Verdict::failed(
            PROXY_AVAILABLE,
            "ScaledToZero",
            "spec.replicas is 0: no proxy serves; set it to 1 or more",
        ));
    }
    if available >= 1 {
        Ok(Verdict::ok(
            PROXY_AVAILABLE,
            "Available",
            format!("{available} of {replicas} proxy replicas are available"),
        ))
    } else {
        Ok(Verdict::failed(
            PROXY_AVAILABLE,
            "Unavailable",
            format!(
                "0 of {replicas} proxy replicas are available; see `kubectl describe deployment {}` and its pods' logs",
                names.proxy
            ),
        ))
    }
}

pub(crate) fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Applies a namespaced object server-side with the operator's field manager.
pub(crate) async fn apply<K>(client: &kube::Client, namespace: &str, object: &K) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let name = object.meta().name.clone().unwrap_or_default();
    api.patch(&name, &apply_params(), &Patch::Apply(typed(object)))
        .await
        .map_err(Error::Kube)?;
    Ok(())
}

/// Applies a cluster-scoped object server-side.
pub(crate) async fn apply_cluster<K>(client: &kube::Client, object: &K) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::ClusterResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::all(client.clone());
    let name = object.meta().name.clone().unwrap_or_default();
    api.patch(&name, &apply_params(), &Patch::Apply(typed(object)))
        .await
        .map_err(Error::Kube)?;
    Ok(())
}

/// The object with its apiVersion and kind, as an apply patch needs.
fn typed<K: Resource + Serialize>(object: &K) -> serde_json::Value
where
    K::DynamicType: Default,
{
    let mut value = serde_json::to_value(object).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        let dt = K::DynamicType::default();
        map.insert("apiVersion".into(), K::api_version(&dt).into());
        map.insert("kind".into(), K::kind(&dt).into());
    }
    value
}

/// The Connections a Policy change touches: every Connection in its
/// namespace (a selector change can add or drop any of them).
pub fn connections_of_policy(policy: &Policy, connections: &[Arc<Connection>]) -> Vec<ObjectRef<Connection>> {
    let namespace = policy.namespace();
    connections
        .iter()
        .filter(|c| c.namespace() == namespace)
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}
