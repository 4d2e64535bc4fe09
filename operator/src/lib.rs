//! The Gatehouse operator: reconciles Connection, Policy and ApprovalRequest
//! (group `gatehouse.dev`): proxy Deployments with their configuration and
//! permissions, Policy statuses, and the life of each approval.
//!
//! - [`connection`]: per Connection a ServiceAccount, Role, RoleBinding, an
//!   auth-delegator ClusterRoleBinding, the rendered proxy configuration
//!   ([`config`]) as a ConfigMap, a Deployment and a Service ([`render`]),
//!   all applied server-side with the field manager [`FIELD_MANAGER`].
//! - [`policy`]: which Connections each Policy selects, and whether the
//!   proxy compiles it.
//! - [`approval`]: an ApprovalRequest's phase from its reviews and the
//!   clock, an Event per decision, removal after the retention.
//!
//! [`run`] starts the three controllers on one [`Context`]; [`metrics`]
//! counts and times their reconciles.
#![forbid(unsafe_code)]

pub mod approval;
pub mod conditions;
pub mod config;
pub mod connection;
pub mod health;
pub mod metrics;
pub mod policy;
pub mod render;

use std::{future::Future, sync::Arc, time::Duration};

use futures::StreamExt as _;
use gatehouse_crds::{ApprovalRequest, Connection, Policy};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Secret, Service, ServiceAccount},
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    core::PartialObjectMeta,
    runtime::{Controller, controller::Action, reflector::ObjectRef, watcher},
};
use metrics::{ControllerKind, ErrorReason, Metrics};

pub use gatehouse_crds as api;
pub use render::{ProxySettings, RecordingS3};

/// The field manager of everything the operator applies.
pub const FIELD_MANAGER: &str = "gatehouse-operator";

/// What a reconcile can fail with; the controller retries with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or could not be reached.
    #[error("Kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    /// Adding or removing the Connection's finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// A namespaced kind came without a namespace.
    #[error("the object has no namespace")]
    NotNamespaced,
}

/// What the operator is started with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How proxies are shaped.
    pub proxy: ProxySettings,
    /// How long a finished ApprovalRequest stays after its `expiresAt`.
    pub approval_retention: Duration,
}

/// What every reconcile shares.
#[derive(Clone)]
pub struct Context {
    /// The API client.
    pub client: Client,
    /// How proxies are shaped.
    pub settings: ProxySettings,
    /// How long a finished ApprovalRequest stays after its `expiresAt`.
    pub approval_retention: Duration,
    /// Records a Kubernetes Event for each decision.
    pub recorder: kube::runtime::events::Recorder,
    /// Counts and times the reconciles.
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The error policy of `controller`: logs, counts the failure, retries in 5 s.
fn error_policy<K: Resource>(controller: ControllerKind) -> impl Fn(Arc<K>, &Error, Arc<Context>) -> Action {
    move |object, error, ctx| {
        let reason = ErrorReason::of(error);
        tracing::warn!(controller = controller.as_str(), reason = reason.as_str(), %error, "reconcile failed; retrying");
        ctx.metrics
            .reconcile_failed(controller, reason, key(object.as_ref()));
        Action::requeue(Duration::from_secs(5))
    }
}

/// Runs `reconcile` on `object`, counted and timed as `controller`'s.
async fn counted<K, F, Fut>(
    controller: ControllerKind,
    object: Arc<K>,
    ctx: Arc<Context>,
    reconcile: F,
) -> Result<Action, Error>
where
    K: Resource,
    F: FnOnce(Arc<K>, Arc<Context>) -> Fut,
    Fut: Future<Output = Result<Action, Error>>,
{
    let _reconciling = ctx.metrics.reconcile_started(controller, &key(object.as_ref()));
    reconcile(object, ctx).await
}

/// What one of `controller`'s reconciles came to, past the error policy: an
/// object that is gone before its retry no longer waits.
fn outcome<K: Resource, E: std::error::Error + 'static>(
    controller: ControllerKind,
    metrics: &Metrics,
    result: Result<(ObjectRef<K>, Action), kube::runtime::controller::Error<Error, E>>,
) -> std::future::Ready<()> {
    match result {
        Ok(_) => {}
        Err(kube::runtime::controller::Error::ObjectNotFound(object)) => {
            let namespace = object.namespace.as_deref().unwrap_or_default();
            metrics.forget(controller, &format!("{namespace}/{}", object.name));
        }
        Err(error) => tracing::debug!(controller = controller.as_str(), %error, "reconcile"),
    }
    std::future::ready(())
}

/// How the metrics know an object while it waits: `namespace/name`.
fn key<K: Resource>(object: &K) -> String {
    format!("{}/{}", object.namespace().unwrap_or_default(), object.name_any())
}

/// Runs the Connection, Policy and ApprovalRequest controllers until
/// `shutdown` completes, then lets reconciles in flight finish; their
/// metrics go nowhere (see [`run_with_metrics`]).
pub async fn run(client: Client, settings: Settings, shutdown: impl Future<Output = ()> + Send + 'static) {
    run_with_metrics(client, settings, Arc::new(Metrics::new()), shutdown).await;
}

/// [`run`], counting the reconciles in `metrics`.
pub async fn run_with_metrics(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = shutdown_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let policy_controller = Controller::new(Api::<Policy>::all(client.clone()), watcher::Config::default());
    let policy_store = policy_controller.store();
    let connection_controller =
        Controller::new(Api::<Connection>::all(client.clone()), watcher::Config::default())
            .owns(Api::<Deployment>::all(client.clone()), label_config())
            .owns(Api::<ConfigMap>::all(client.clone()), label_config())
            .owns(Api::<Service>::all(client.clone()), label_config())
            .owns(Api::<ServiceAccount>::all(client.clone()), label_config())
            .owns(Api::<Role>::all(client.clone()), label_config())
            .owns(Api::<RoleBinding>::all(client.clone()), label_config());
    let connection_store = connection_controller.store();
    let ctx = Arc::new(Context {
        client: client.clone(),
        settings: settings.proxy,
        approval_retention: settings.approval_retention,
        recorder: kube::runtime::events::Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter {
                controller: FIELD_MANAGER.to_owned(),
                instance: std::env::var("POD_NAME").ok(),
            },
        ),
        metrics: metrics.clone(),
    });

    // A Policy change re-renders every Connection of its namespace (a
    // selector change can add or drop any of them); a Secret change, the
    // Connections that read it.
    let by_policy = connection_store.clone();
    let by_secret = connection_store;
    let recording_secret = ctx.settings.recording_secret.clone();
    // Secrets by their metadata only: the operator never reads their values here.
    let secrets = Api::<PartialObjectMeta<Secret>>::all(client.clone());
    let connection_run = connection_controller
        .watches(
            Api::<Policy>::all(client.clone()),
            watcher::Config::default(),
            move |policy| connection::connections_of_policy(&policy, &by_policy.state()),
        )
        .watches(secrets, watcher::Config::default(), move |secret| {
            let name = secret.name_any();
            by_secret
                .state()
                .iter()
                .filter(|c| {
                    c.namespace() == secret.namespace()
                        && (name == recording_secret || names_secret(c, &name))
                })
                .map(|c| ObjectRef::from_obj(c.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(stopped(shutdown_rx.clone()))
        .run(
            |object, ctx| counted(ControllerKind::Connection, object, ctx, connection::reconcile),
            error_policy(ControllerKind::Connection),
            ctx.clone(),
        )
        .for_each(|result| outcome(ControllerKind::Connection, &metrics, result));

    // A Connection's labels decide which Policies select it: the Policies
    // of its namespace look again.
    let of_namespace = policy_store;
    let policy_run = policy_controller
        .watches(
            Api::<Connection>::all(client.clone()),
            watcher::Config::default(),
            move |connection| {
                of_namespace
                    .state()
                    .iter()
                    .filter(|p| p.namespace() == connection.namespace())
                    .map(|p| ObjectRef::from_obj(p.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(stopped(shutdown_rx.clone()))
        .run(
            |object, ctx| counted(ControllerKind::Policy, object, ctx, policy::reconcile),
            error_policy(ControllerKind::Policy),
            ctx.clone(),
        )
        .for_each(|result| outcome(ControllerKind::Policy, &metrics, result));
    let approval_run = Controller::new(
        Api::<ApprovalRequest>::all(client.clone()),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(stopped(shutdown_rx.clone()))
    .run(
        |object, ctx| counted(ControllerKind::ApprovalRequest, object, ctx, approval::reconcile),
        error_policy(ControllerKind::ApprovalRequest),
        ctx.clone(),
    )
    .for_each(|result| outcome(ControllerKind::ApprovalRequest, &metrics, result));
    tokio::join!(connection_run, policy_run, approval_run);
}

/// Children carry the operator's labels: watch only those.
fn label_config() -> watcher::Config {
    watcher::Config::default().labels("app.kubernetes.io/managed-by=gatehouse-operator")
}

/// Whether the Connection reads the Secret `name`.
fn names_secret(connection: &Connection, name: &str) -> bool {
    connection.spec.credentials_ref.name == name
        || connection
            .spec
            .target
            .tls
            .as_ref()
            .and_then(|t| t.ca_secret_ref.as_ref())
            .is_some_and(|r| r.name == name)
}
