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
//!   clock, an Event per decision, removal after the retention; nothing is
//!   approved while the admission policy is not in force ([`admission`]).
//!
//! [`run`] starts the three controllers on one [`Context`]; [`metrics`]
//! counts and times their reconciles.
#![forbid(unsafe_code)]

pub mod admission;
pub mod applied;
pub mod approval;
pub mod conditions;
pub mod config;
pub mod connection;
pub mod health;
pub mod metrics;
pub mod policy;
pub mod render;

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

use futures::{Stream, StreamExt as _, TryStreamExt as _};
use gatehouse_crds::{ApprovalRequest, Connection, Policy};
use k8s_openapi::api::{
    admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding},
    apps::v1::Deployment,
    core::v1::{ConfigMap, Secret, Service, ServiceAccount},
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        Controller, Predicate as _, WatchStreamExt as _,
        controller::Action,
        predicates,
        reflector::{self, ObjectRef},
        watcher,
    },
};
use metrics::{ControllerKind, ErrorReason, Metrics};
use serde::de::DeserializeOwned;

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
    /// What was last applied to each child.
    pub applied: Arc<applied::Applied>,
    /// Whether the ApprovalRequest admission policy is in force.
    pub admission: admission::Admission,
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
        ctx.metrics
            .reconcile_failed(controller, reason, key(object.as_ref()));
        if stale_finalizers(error) {
            tracing::debug!(controller = controller.as_str(), %error, "the cache lagged a finalizer change; retrying");
            return Action::requeue(Duration::from_millis(200));
        }
        tracing::warn!(controller = controller.as_str(), reason = reason.as_str(), %error, "reconcile failed; retrying");
        Action::requeue(Duration::from_secs(5))
    }
}

/// Whether a finalizer patch failed because the object it started from was
/// older than the API server's: the patch tests the finalizers it saw, and
/// the watch has the newer ones a moment later.
fn stale_finalizers(error: &Error) -> bool {
    use kube::runtime::finalizer::Error as Finalizer;
    let Error::Finalizer(error) = error else {
        return false;
    };
    matches!(
        error.as_ref(),
        Finalizer::AddFinalizer(kube::Error::Api(status)) | Finalizer::RemoveFinalizer(kube::Error::Api(status))
            if status.code == 422 || status.code == 409
    )
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

    let policy_controller = Controller::new(Api::<Policy>::all(client.clone()), watcher::Config::default())
        .with_config(controller_config());
    let policy_store = policy_controller.store();
    // A Connection's reconcile is due when what it asks for changes (spec,
    // labels, finalizers, deletion), not when its own status is written.
    let (connection_store, connection_writer) = reflector::store();
    let connection_changes = watcher(Api::<Connection>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        // The store keeps every Connection; their managedFields it never reads.
        .modify(|c| c.managed_fields_mut().clear())
        .reflect(connection_writer)
        .applied_objects()
        .predicate_filter(
            predicates::generation
                .combine(predicates::labels)
                .combine(predicates::finalizers),
            Default::default(),
        );
    let applied = Arc::new(applied::Applied::default());
    let connection_controller = Controller::for_stream(connection_changes, connection_store.clone())
        .with_config(controller_config())
        .owns_stream(touched_by_others(
            Api::<Deployment>::all(client.clone()),
            &applied,
        ))
        .owns_stream(touched_by_others(Api::<ConfigMap>::all(client.clone()), &applied))
        .owns_stream(touched_by_others(Api::<Service>::all(client.clone()), &applied))
        .owns_stream(touched_by_others(
            Api::<ServiceAccount>::all(client.clone()),
            &applied,
        ))
        .owns_stream(touched_by_others(Api::<Role>::all(client.clone()), &applied))
        .owns_stream(touched_by_others(
            Api::<RoleBinding>::all(client.clone()),
            &applied,
        ));
    let (admission, admission_changes) = watch_admission(&client, &metrics).await;
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
        applied: applied.clone(),
        admission: admission.clone(),
    });

    // A Policy change re-renders every Connection of its namespace (a
    // selector change can add or drop any of them); a Secret change, the
    // Connections that read it.
    let by_policy = connection_store.clone();
    let by_secret = connection_store;
    let recording_secret = ctx.settings.recording_secret.clone();
    // Secrets by their metadata only: the operator never reads their values here.
    let secrets = Api::<PartialObjectMeta<Secret>>::all(client.clone());
    // A Policy's spec change or deletion, not its status (which its own
    // controller writes as Connections come and go).
    let connection_run = connection_controller
        .watches_stream(
            changes(Api::<Policy>::all(client.clone()), |p| {
                predicates::generation(p).unwrap_or_default()
            }),
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
        .watches_stream(
            changes(Api::<Connection>::all(client.clone()), |c| {
                predicates::labels(c).unwrap_or_default()
            }),
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
    // Decisions wait until the admission policies are known, and every
    // request is looked at again when they change.
    admission.ready().await;
    let approval_run = Controller::new(
        Api::<ApprovalRequest>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(controller_config())
    .reconcile_all_on(admission_changes)
    .graceful_shutdown_on(stopped(shutdown_rx.clone()))
    .run(
        |object, ctx| counted(ControllerKind::ApprovalRequest, object, ctx, approval::reconcile),
        error_policy(ControllerKind::ApprovalRequest),
        ctx.clone(),
    )
    .for_each(|result| outcome(ControllerKind::ApprovalRequest, &metrics, result));
    tokio::join!(connection_run, policy_run, approval_run);
}

/// Watches the ApprovalRequest admission policy and the bindings of
/// admission policies: the state the approval controller asks, and a stream
/// that ticks on every change. Learns the operator's own username first,
/// which the policy must name.
async fn watch_admission(
    client: &Client,
    metrics: &Arc<Metrics>,
) -> (admission::Admission, impl Stream<Item = ()> + Send + 'static) {
    let operator = admission::own_username(client).await.map_err(|e| {
        format!("the operator could not learn its own username from the API server (SelfSubjectReview: {e})")
    });
    let (policies, policy_writer) = reflector::store();
    let (bindings, binding_writer) = reflector::store();
    let admission = admission::Admission::new(operator, policies, bindings);
    let named = watcher::Config::default().fields(&format!("metadata.name={}", admission::POLICY_NAME));
    let policy_events = watcher(Api::<ValidatingAdmissionPolicy>::all(client.clone()), named)
        .default_backoff()
        .reflect(policy_writer)
        .map(|_| ());
    let binding_events = watcher(
        Api::<ValidatingAdmissionPolicyBinding>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(binding_writer)
    .map(|_| ());
    // Driven here, not by the controller: its start waits for the stores.
    let (tick, ticks) = futures::channel::mpsc::channel(1);
    let (state, metrics) = (admission.clone(), metrics.clone());
    tokio::spawn(async move {
        let mut events = std::pin::pin!(futures::stream::select(policy_events, binding_events));
        let mut was = None;
        while events.next().await.is_some() {
            let now = state.in_force();
            if was.as_ref() != Some(&now) {
                metrics.admission_in_force(now.is_ok());
                match &now {
                    Ok(()) => tracing::info!("the ApprovalRequest admission policy is in force"),
                    Err(why) => {
                        tracing::error!(reason = %why, "the ApprovalRequest admission policy is not in force; approvals are suspended")
                    }
                }
                was = Some(now);
            }
            // A full channel already holds a tick for this change.
            let _ = tick.clone().try_send(());
        }
    });
    (admission, ticks)
}

/// `api`'s objects as they come, go, or change in what `key` hashes.
///
/// Written here rather than with kube's `predicate_filter`, which sees
/// objects without their event and so can drop a deletion whose key is
/// unchanged: a deleted Policy must still leave every configuration.
fn changes<K>(
    api: Api<K>,
    key: fn(&K) -> u64,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    // The keys seen, and during a re-list the ones seen before it.
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut before: HashMap<String, u64> = HashMap::new();
    watcher(api, watcher::Config::default())
        .default_backoff()
        .try_filter_map(move |event| {
            let uid = |object: &K| object.meta().uid.clone().unwrap_or_default();
            let passed = match event {
                watcher::Event::Init => {
                    before = std::mem::take(&mut seen);
                    None
                }
                watcher::Event::InitApply(object) => {
                    let hash = key(&object);
                    seen.insert(uid(&object), hash);
                    (before.get(&uid(&object)) != Some(&hash)).then_some(object)
                }
                // Deleted while the watch was down: their last state is
                // gone with the re-list, and the resync catches up.
                watcher::Event::InitDone => {
                    before.clear();
                    None
                }
                watcher::Event::Apply(object) => {
                    let hash = key(&object);
                    (seen.insert(uid(&object), hash) != Some(hash)).then_some(object)
                }
                watcher::Event::Delete(object) => {
                    seen.remove(&uid(&object));
                    Some(object)
                }
            };
            std::future::ready(Ok(passed))
        })
}

/// The operator's children (by its labels) when someone else wrote to them
/// (an edit to undo, a kubelet's or a controller's status) or they went;
/// not when the operator's own apply created or changed them, which would
/// only start a reconcile that finds nothing to do. Each one passed is
/// marked touched in `applied`, so that its next reconcile applies it.
fn touched_by_others<K>(
    api: Api<K>,
    applied: &Arc<applied::Applied>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    let applied = applied.clone();
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let touched = move |event: watcher::Event<K>| {
        let object = match event {
            watcher::Event::Init => {
                applied.touched_all(&kind);
                return None;
            }
            watcher::Event::InitDone => return None,
            watcher::Event::Apply(object)
            | watcher::Event::InitApply(object)
            | watcher::Event::Delete(object) => object,
        };
        let meta = object.meta();
        applied.touched(applied::key(
            &kind,
            meta.namespace.as_deref(),
            meta.name.as_deref().unwrap_or_default(),
        ));
        Some(object)
    };
    let others = |object: &K| {
        object
            .meta()
            .managed_fields
            .iter()
            .flatten()
            .any(|entry| entry.manager.as_deref() != Some(FIELD_MANAGER))
    };
    watcher(api, label_config())
        .default_backoff()
        .try_filter_map(move |event| {
            std::future::ready(Ok(match &event {
                watcher::Event::Apply(object) | watcher::Event::InitApply(object) if !others(object) => None,
                _ => touched(event),
            }))
        })
}

/// How many reconciles each controller runs at once. Unbounded, a burst of
/// Connections (1,000 applied together) starts a reconcile for each, each
/// holding its requests and answers in memory, and the API server serves
/// them no faster.
const CONCURRENCY: u16 = 16;

fn controller_config() -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(CONCURRENCY)
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
