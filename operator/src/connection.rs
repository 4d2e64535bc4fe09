//! The Connection controller: a proxy Deployment per Connection, with its
//! ServiceAccount, permissions, rendered configuration and Service, all
//! applied server-side with one field manager and owned by the Connection.
//!
//! Status: `endpoint`, `policies` (the Policies that select it),
//! `observedGeneration`, and the conditions CredentialsResolved,
//! ConfigRendered, PoliciesValid, ProxyAvailable and Ready, each with a
//! reason a person can act on. A Connection whose Secret is missing or whose
//! configuration cannot be rendered keeps its last good ConfigMap and
//! Deployment: a proxy never runs on a broken configuration. An invalid
//! Policy does not hold the configuration back: the proxy denies with it.

use std::{sync::Arc, time::Duration};

use gatehouse_crds::{Connection, ConnectionStatus, Policy, connection::RecordingMode};
use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Secret, rbac::v1::ClusterRoleBinding},
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, Preconditions},
    runtime::{
        controller::Action,
        finalizer::{Event as FinalizerEvent, finalizer},
        reflector::ObjectRef,
    },
};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    Context, Error, FIELD_MANAGER,
    applied::{self, Applied},
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
/// The proxy compiles every Policy that selects the Connection.
pub const POLICIES_VALID: &str = "PoliciesValid";

/// How often a Connection is looked at again without a change.
const RESYNC: Duration = Duration::from_secs(300);

/// How often a Connection whose child's name someone else holds looks again.
const NAME_TAKEN_RETRY: Duration = Duration::from_secs(10);

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
                let children = [&names.proxy, &names.connection].map(|name| format!("/{namespace}/{name}"));
                ctx.applied
                    .forget(|key| !children.iter().any(|child| key.ends_with(child.as_str())));
                let bindings: Api<ClusterRoleBinding> = Api::all(ctx.client.clone());
                // Only the binding this Connection made: one of that name
                // that someone else made stays.
                let Some(binding) = bindings
                    .get_metadata_opt(&names.auth_delegator)
                    .await
                    .map_err(Error::Kube)?
                    .filter(|b| render::is_cluster_child(&b.metadata, &names))
                else {
                    return Ok(Action::await_change());
                };
                let delete = DeleteParams {
                    preconditions: binding.metadata.uid.map(|uid| Preconditions {
                        uid: Some(uid),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                match bindings.delete(&names.auth_delegator, &delete).await {
                    Ok(_) => {}
                    // Gone, or replaced by someone else's meanwhile.
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
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
    // A Policy deleted since its controller last looked is invalid no more.
    ctx.metrics
        .policies_present(&namespace, policies.iter().map(|p| p.name_any()));
    let selected = policy::selecting(&policies, &connection);
    // Checked as the proxy will read it: a configuration the proxy would
    // refuse is never written.
    let rendered = config::render(&connection, &names, &selected.policies, &ctx.settings)
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
                selected.policies.len()
            ),
        ),
        Err(e) => Verdict::failed(
            CONFIG_RENDERED,
            "RenderFailed",
            format!("the proxy configuration could not be rendered: {e}"),
        ),
    });

    let healthy = verdicts.iter().all(|v| v.ok);
    let config = rendered.ok().filter(|_| healthy);
    // After `healthy`: an invalid Policy is rendered (the proxy denies with
    // it), it does not hold the configuration back.
    verdicts.push(policies_valid(&selected.invalid));
    let applied = apply_children(&ctx, &connection, &names, config).await;
    // Someone else's object does not tell when it goes: look again soon.
    let resync = match applied {
        Err(Stop::Taken(_)) => NAME_TAKEN_RETRY,
        _ => RESYNC,
    };
    verdicts.push(match applied {
        Err(Stop::Taken(taken)) => Verdict::failed(PROXY_AVAILABLE, "NameTaken", taken.to_string()),
        Err(Stop::Failed(error)) => return Err(error),
        // The Deployment as the apply answered it, status included.
        Ok(Some(deployment)) => availability(Some(deployment), &names, connection.spec.replicas),
        Ok(None) => {
            let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
            let deployment = deployments.get_opt(&names.proxy).await.map_err(Error::Kube)?;
            availability(deployment, &names, connection.spec.replicas)
        }
    });
    let ready = ready(&verdicts, &format!("agents connect to {}", names.endpoint()));
    verdicts.insert(0, ready);

    let previous = connection.status.clone().unwrap_or_default();
    let status = ConnectionStatus {
        observed_generation: connection.metadata.generation,
        endpoint: Some(names.endpoint()),
        policies: selected.policies.iter().map(|p| p.name.clone()).collect(),
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
    Ok(Action::requeue(resync))
}

/// The `PoliciesValid` verdict: whether the proxy compiles every Policy
/// that selects the Connection. `invalid` holds the others, with why.
pub fn policies_valid(invalid: &[(String, String)]) -> Verdict {
    if invalid.is_empty() {
        return Verdict::ok(
            POLICIES_VALID,
            "Compiled",
            "the proxy compiles every Policy that selects this Connection",
        );
    }
    let each: Vec<String> = invalid
        .iter()
        .map(|(name, why)| format!("Policy {name} is invalid ({why})"))
        .collect();
    let (they, are) = if invalid.len() == 1 {
        ("it", "is")
    } else {
        ("they", "are")
    };
    Verdict::failed(
        POLICIES_VALID,
        "PolicyInvalid",
        format!(
            "{}; the callers {they} name{s} are denied everything on this Connection until {they} {are} fixed",
            each.join("; "),
            s = if invalid.len() == 1 { "s" } else { "" },
        ),
    )
}

/// Applies the Connection's children: the identity and permissions first
/// (the proxy needs them to start), then, when the Secrets and the
/// configuration are in order (`config`), the ConfigMap and the Deployment.
/// The first name someone else holds stops the rest: a proxy without its
/// permissions or its Service serves nobody. The Deployment, when applied,
/// as the API server answered.
async fn apply_children(
    ctx: &Context,
    connection: &Connection,
    names: &Names,
    config: Option<String>,
) -> Result<Option<Deployment>, Stop> {
    let (client, settings, cache) = (&ctx.client, &ctx.settings, Some(ctx.applied.as_ref()));
    let uid = connection.uid().unwrap_or_default();
    let owned = |meta: &ObjectMeta| meta.owner_references.iter().flatten().any(|o| o.uid == uid);
    let ns = &names.namespace;
    apply_owned(
        Api::namespaced(client.clone(), ns),
        &render::service_account(connection, names),
        owned,
        cache,
    )
    .await?;
    apply_owned(
        Api::namespaced(client.clone(), ns),
        &render::role(connection, names, settings),
        owned,
        cache,
    )
    .await?;
    apply_owned(
        Api::namespaced(client.clone(), ns),
        &render::role_binding(connection, names),
        owned,
        cache,
    )
    .await?;
    // Not cached: no watch sees someone else's edit to it.
    apply_owned(
        Api::all(client.clone()),
        &render::auth_delegator(names),
        |meta| render::is_cluster_child(meta, names),
        None,
    )
    .await?;
    apply_owned(
        Api::namespaced(client.clone(), ns),
        &render::service(connection, names),
        owned,
        cache,
    )
    .await?;
    let Some(config) = config else {
        return Ok(None);
    };
    apply_owned(
        Api::namespaced(client.clone(), ns),
        &render::config_map(connection, names, config),
        owned,
        cache,
    )
    .await?;
    let deployment = apply_owned(
        Api::namespaced(client.clone(), ns),
        &render::deployment(connection, names, settings),
        owned,
        cache,
    )
    .await?;
    Ok(deployment)
}

/// Why applying the children stopped.
enum Stop {
    /// A child's name belongs to an object that is not this Connection's.
    Taken(Taken),
    /// The API server refused or could not be reached: retried.
    Failed(Error),
}

impl From<kube::Error> for Stop {
    fn from(error: kube::Error) -> Stop {
        Stop::Failed(Error::Kube(error))
    }
}

/// An object that holds a child's name and is someone else's.
#[derive(Debug)]
struct Taken {
    kind: String,
    namespace: Option<String>,
    name: String,
}

impl std::fmt::Display for Taken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Taken { kind, name, .. } = self;
        let object = match &self.namespace {
            Some(namespace) => format!("{namespace}/{name}"),
            None => name.clone(),
        };
        write!(
            f,
            "{kind} {object} already exists and is not this Connection's; the proxy needs that name: \
             delete or rename that {kind}, or give the Connection another name"
        )
    }
}

/// Applies `object` server-side with the operator's field manager, without
/// taking any field from another manager. When another manager holds a
/// field (409) or a field cannot change (422, a binding's roleRef), the
/// object is looked at: one that is the operator's (`ours`) is taken back by
/// force, so an edit to a child is undone; one that is someone else's is
/// left as it is and reported, never overwritten. An object of the same
/// name whose fields agree with the operator's is adopted.
///
/// With a `cache`, a patch already applied that nobody has touched since is
/// not sent again ([`Applied`]). Returns the object as the API server
/// answered, or `None` when it was not sent.
async fn apply_owned<K>(
    api: Api<K>,
    object: &K,
    ours: impl Fn(&ObjectMeta) -> bool,
    cache: Option<&Applied>,
) -> Result<Option<K>, Stop>
where
    K: Resource + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
    K::DynamicType: Default,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let body = typed(object);
    let key = applied::key(
        &K::kind(&K::DynamicType::default()),
        object.meta().namespace.as_deref(),
        &name,
    );
    let hash = applied::hash(&body);
    if cache.is_some_and(|c| c.unchanged(&key, hash)) {
        return Ok(None);
    }
    let epoch = cache.map(|c| c.epoch(&key));
    let applied = apply_or_take_back(&api, &name, &Patch::Apply(body), ours).await?;
    if let (Some(cache), Some(epoch)) = (cache, epoch) {
        cache.record(key, hash, epoch);
    }
    Ok(Some(applied))
}

/// [`apply_owned`]'s apply, without the cache.
async fn apply_or_take_back<K>(
    api: &Api<K>,
    name: &str,
    patch: &Patch<serde_json::Value>,
    ours: impl Fn(&ObjectMeta) -> bool,
) -> Result<K, Stop>
where
    K: Resource + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
    K::DynamicType: Default,
{
    let error = match api.patch(name, &PatchParams::apply(FIELD_MANAGER), patch).await {
        Ok(applied) => return Ok(applied),
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 422 => e,
        Err(e) => return Err(e.into()),
    };
    match api.get_metadata_opt(name).await? {
        Some(current) if ours(&current.metadata) && error.code == 409 => {
            Ok(api.patch(name, &apply_params(), patch).await?)
        }
        Some(current) if !ours(&current.metadata) => Err(Stop::Taken(Taken {
            kind: K::kind(&K::DynamicType::default()).into_owned(),
            namespace: current.metadata.namespace,
            name: name.to_owned(),
        })),
        // Ours and refused, or gone meanwhile: retried with backoff.
        _ => Err(kube::Error::Api(error).into()),
    }
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
fn availability(deployment: Option<Deployment>, names: &Names, replicas: i32) -> Verdict {
    let Some(deployment) = deployment else {
        return Verdict::failed(
            PROXY_AVAILABLE,
            "NotDeployed",
            format!(
                "Deployment {} is not created until the Secrets and configuration are in order",
                names.proxy
            ),
        );
    };
    let available = deployment
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    if replicas == 0 {
        return Verdict::failed(
            PROXY_AVAILABLE,
            "ScaledToZero",
            "spec.replicas is 0: no proxy serves; set it to 1 or more",
        );
    }
    if available >= 1 {
        Verdict::ok(
            PROXY_AVAILABLE,
            "Available",
            format!("{available} of {replicas} proxy replicas are available"),
        )
    } else {
        Verdict::failed(
            PROXY_AVAILABLE,
            "Unavailable",
            format!(
                "0 of {replicas} proxy replicas are available; see `kubectl describe deployment {}` and its pods' logs",
                names.proxy
            ),
        )
    }
}

pub(crate) fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
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
