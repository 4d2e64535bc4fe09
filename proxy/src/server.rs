//! The listener, the state sessions share, configuration reload and drain.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet};

use crate::{
    approval::Approver,
    config::ProxyConfig,
    identity::{AuthError, Authenticator, Identity},
    mask::{policy::Maskers, rows::Masker},
    metrics::{Metrics, ReloadResult, SessionOutcome},
    pg::{CancelRequest, messages::BackendKeyData},
    policy::{
        CacheCounters, CacheStats, Classification, ClassificationCache, ClassifyError, CompiledPolicy,
        PolicySet,
    },
    record::{Recorder, RecordingUnavailable, Tape},
};

/// Memory the classification cache may use.
const CACHE_BYTES: u64 = 32 << 20;

/// A configuration in force, with what is derived from it.
#[derive(Debug)]
pub struct Runtime {
    /// The configuration.
    pub config: ProxyConfig,
    authenticator: Authenticator,
    /// The compiled Policies; one that does not compile denies everything
    /// to the callers it names ([`PolicySet`]).
    pub policies: Vec<CompiledPolicy>,
    /// The Policies' masking, and the maskers built from it.
    pub maskers: Maskers,
    /// TLS for clients (`listen.tls`), certificates already loaded.
    pub client_tls: Option<Arc<rustls::ServerConfig>>,
    /// TLS towards the target (`upstream.tls`); `None` for mode `disable`.
    pub upstream_tls: Option<crate::tls::UpstreamTls>,
}

impl Runtime {
    /// Derives the runtime state of a checked configuration.
    pub fn new(config: ProxyConfig) -> Result<Runtime, crate::config::ConfigError> {
        let authenticator = Authenticator::new(&config.auth)
            .map_err(|e| crate::config::ConfigError::Invalid(e.to_string()))?;
        // A Policy that does not compile is loaded, denying its callers
        // everything: refusing the configuration would keep an older one,
        // which may be broader.
        let PolicySet { policies, maskers } = PolicySet::compile(&config.policies, &config.masking)
            .map_err(crate::config::ConfigError::Invalid)?;
        // Certificates are read here, so a reload picks up new files and a
        // bad file refuses the new configuration rather than its sessions.
        let tls_invalid = |e: crate::tls::TlsError| crate::config::ConfigError::Invalid(e.to_string());
        let client_tls = match &config.listen.tls {
            Some(tls) => Some(crate::tls::server_config(tls).map_err(tls_invalid)?),
            None => None,
        };
        let upstream_tls = crate::tls::UpstreamTls::new(&config.upstream).map_err(tls_invalid)?;
        // Said once per configuration put in force (the Policy's problem
        // names fields and patterns, never a secret).
        for policy in &policies {
            if let Some(problem) = policy.problem() {
                tracing::warn!(
                    policy = %policy.name,
                    %problem,
                    "the Policy does not compile; it denies everything to the callers it names until it is fixed"
                );
            }
        }
        Ok(Runtime {
            config,
            authenticator,
            policies,
            maskers,
            client_tls,
            upstream_tls,
        })
    }

    /// How many Policies do not compile (and deny their callers everything).
    pub fn invalid_policies(&self) -> usize {
        self.policies.iter().filter(|p| p.problem().is_some()).count()
    }

    /// The scanner for text the proxy shows: see [`Maskers::shown`].
    pub fn shown(&self) -> &Arc<crate::mask::Scanner> {
        self.maskers.shown()
    }

    /// The masker for `identity`'s sessions, if any Policy naming it masks.
    pub fn masker_for(&self, identity: &Identity) -> Option<Arc<Masker>> {
        self.maskers.for_identity(&self.policies, identity)
    }

    /// The identity a token stands for.
    pub async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        self.authenticator.authenticate(token).await
    }
}

/// A cancel key the proxy handed a client: process id and secret.
type CancelKey = (i32, Vec<u8>);
/// Where a cancel for that key goes: the server's address and its own key
/// (when the server gave one), and the session's notifier, which withdraws
/// a statement held for approval.
type UpstreamCancel = (Option<(String, BackendKeyData)>, Arc<tokio::sync::Notify>);

/// What every session of a proxy shares.
#[derive(Debug)]
pub struct Shared {
    runtime: RwLock<Arc<Runtime>>,
    /// Classifications by constant-free key, shared by every session.
    cache: ClassificationCache,
    /// What the target's catalog says of the functions statements call.
    catalog: crate::catalog::Catalog,
    /// The proxy's cancel keys handed to clients → the server's key and address.
    cancels: Mutex<HashMap<CancelKey, UpstreamCancel>>,
    /// The process's metrics.
    metrics: Metrics,
    /// Set once the listener serves; readiness needs it.
    listening: AtomicBool,
    /// Set when a drain begins; readiness fails from then on.
    draining: AtomicBool,
    /// Recording, once started ([`Shared::start_recording`]).
    recorder: std::sync::OnceLock<Option<Arc<Recorder>>>,
    /// Who asks for approvals; unset outside a cluster, where statements
    /// that need approval are refused.
    approver: std::sync::OnceLock<Arc<dyn Approver>>,
}

impl Shared {
    /// State for a first configuration.
    pub fn new(runtime: Runtime) -> Arc<Shared> {
        let metrics = Metrics::new();
        metrics.config_loaded();
        metrics.set_policies_invalid(runtime.invalid_policies());
        let counters = CacheCounters {
            hits: metrics.parse_cache_hits.clone(),
            misses: metrics.parse_cache_misses.clone(),
        };
        Arc::new(Shared {
            runtime: RwLock::new(Arc::new(runtime)),
            cache: ClassificationCache::with_counters(CACHE_BYTES, counters),
            catalog: crate::catalog::Catalog::default(),
            cancels: Mutex::new(HashMap::new()),
            metrics,
            listening: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            recorder: std::sync::OnceLock::new(),
            approver: std::sync::OnceLock::new(),
        })
    }

    /// Lets statements that need approval be held and asked for. Call once,
    /// before serving.
    pub fn set_approver(&self, approver: Arc<dyn Approver>) {
        let _ = self.approver.set(approver);
    }

    /// Who asks for approvals, when anyone can.
    pub fn approver(&self) -> Option<&Arc<dyn Approver>> {
        self.approver.get()
    }

    /// Starts recording as the configuration says (the spool, recovery of
    /// what a killed process left, the uploader). Call once, before serving;
    /// recording settings are read only here, so changing them needs a restart.
    pub fn start_recording(&self) -> Result<(), String> {
        let recorder = Recorder::start(&self.runtime().config, &self.metrics)?;
        let _ = self.recorder.set(recorder);
        Ok(())
    }

    /// A new session's recording: `None` when recording is off (or
    /// `bestEffort` and the spool is unusable), an error when the session
    /// may not run unrecorded.
    pub fn begin_recording(
        &self,
        identity: &Identity,
        client: String,
        tls: bool,
    ) -> Result<Option<Tape>, RecordingUnavailable> {
        match self.recorder.get() {
            Some(Some(recorder)) => recorder.begin(identity, client, tls, self.runtime().shown().clone()),
            _ if self.runtime().config.recording.mode
                == gatehouse_crds::connection::RecordingMode::Required =>
            {
                Err(RecordingUnavailable(
                    "Gatehouse cannot record sessions: recording did not start (see the proxy's log), and \
                     recording is required on this Connection"
                        .to_owned(),
                ))
            }
            _ => Ok(None),
        }
    }

    /// The process's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The classification cache's counts.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Whether the proxy should get new clients: its configuration is loaded
    /// (it is, once `Shared` exists), its listener serves, and it is not
    /// draining.
    pub fn is_ready(&self) -> bool {
        self.listening.load(Ordering::Relaxed) && !self.draining.load(Ordering::Relaxed)
    }

    /// Records that the listener serves.
    pub(crate) fn mark_listening(&self) {
        self.listening.store(true, Ordering::Relaxed);
    }

    /// Fails readiness from now on: the first step of a drain, so load
    /// balancers stop sending clients before the listener closes.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Classifies `sql` through the shared cache.
    pub fn classify(&self, sql: &str) -> Result<Arc<Classification>, ClassifyError> {
        self.cache.classify(sql)
    }

    /// The target's catalog, as the proxy reads it.
    pub fn catalog(&self) -> &crate::catalog::Catalog {
        &self.catalog
    }

    /// The configuration in force now. Sessions take it per statement, so a
    /// reloaded Policy applies to sessions already open.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime
            .read()
            .map(|r| r.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Puts a new configuration in force. What it can take over from the
    /// one in force (the TokenReview client and cache) it keeps.
    pub fn replace(&self, mut runtime: Runtime) {
        runtime.authenticator.inherit(&self.runtime().authenticator);
        self.metrics.set_policies_invalid(runtime.invalid_policies());
        let runtime = Arc::new(runtime);
        match self.runtime.write() {
            Ok(mut slot) => *slot = runtime,
            Err(poisoned) => *poisoned.into_inner() = runtime,
        }
    }

    /// Hands out a cancel key for a session whose server key is `upstream`,
    /// with the notifier a cancel for it fires.
    pub fn register_cancel(
        &self,
        upstream: Option<BackendKeyData>,
        address: String,
    ) -> (BackendKeyData, Arc<tokio::sync::Notify>) {
        let process_id = i32::from_be_bytes(random_bytes::<4>()) & i32::MAX;
        let secret = random_bytes::<4>().to_vec();
        let notify = Arc::new(tokio::sync::Notify::new());
        if let Ok(mut map) = self.cancels.lock() {
            map.insert(
                (process_id, secret.clone()),
                (upstream.map(|key| (address, key)), notify.clone()),
            );
        }
        let key = BackendKeyData {
            process_id,
            secret_key: secret.into(),
        };
        (key, notify)
    }

    /// Forgets a cancel key when its session ends.
    pub fn forget_cancel(&self, key: &BackendKeyData) {
        if let Ok(mut map) = self.cancels.lock() {
            map.remove(&(key.process_id, key.secret_key.to_vec()));
        }
    }

    /// Withdraws the session's held statement, if one is held, and forwards
    /// the CancelRequest to the server its key maps to; unknown keys are
    /// ignored, as PostgreSQL ignores them.
    pub async fn cancel(&self, request: &CancelRequest) {
        let target = self.cancels.lock().ok().and_then(|map| {
            map.get(&(request.process_id, request.secret_key.to_vec()))
                .cloned()
        });
        let Some((upstream, notify)) = target else { return };
        notify.notify_waiters();
        if let Some((address, key)) = upstream
            && let Err(e) = crate::session::send_cancel(&address, &key).await
        {
            tracing::warn!(error = %e, "could not forward a cancel request");
        }
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    rand::fill(&mut out[..]);
    out
}

/// A random identifier for a session (hex).
pub fn nonce() -> String {
    hex::encode(random_bytes::<8>())
}

/// Serves clients on `listener` until `shutdown` resolves, then drains:
/// stops accepting and gives open sessions `grace` to finish.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl std::future::Future<Output = ()>,
    grace: Duration,
) {
    let slots = Arc::new(Semaphore::new(shared.runtime().config.limits.max_connections));
    let mut sessions = JoinSet::new();
    tokio::pin!(shutdown);
    shared.mark_listening();
    loop {
        tokio::select! {
            () = &mut shutdown => {
                shared.start_draining();
                break;
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                let shared = shared.clone();
                match slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        sessions.spawn(async move {
                            if let Err(e) = crate::session::serve(stream, shared).await {
                                tracing::info!(%peer, error = %e, "session ended with an error");
                            }
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        shared.metrics.sessions.inc(SessionOutcome::TooMany);
                        sessions.spawn(crate::session::refuse(stream, "53300", "too many connections to this Gatehouse proxy; try again later"));
                    }
                }
            }
        }
    }
    tracing::info!(open = sessions.len(), "draining");
    let drained = tokio::time::timeout(grace, async { while sessions.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            open = sessions.len(),
            "sessions still open after the drain period; closing them"
        );
        sessions.abort_all();
    }
}

/// Watches the configuration file and puts each valid new version in force;
/// an invalid one leaves the last good configuration and says why.
pub async fn watch_config(path: PathBuf, shared: Arc<Shared>, every: Duration) {
    let mut last = std::fs::read(&path).ok();
    loop {
        tokio::time::sleep(every).await;
        let current = std::fs::read(&path).ok();
        if current == last {
            continue;
        }
        last = current;
        // Parse the bytes just compared rather than reading the file again.
        let parsed = match &last {
            Some(bytes) => std::str::from_utf8(bytes)
                .map_err(|e| crate::config::ConfigError::Invalid(format!("the file is not UTF-8: {e}")))
                .and_then(ProxyConfig::from_yaml),
            // Unreadable: from_file reports why.
            None => ProxyConfig::from_file(&path),
        };
        match parsed.and_then(Runtime::new) {
            Ok(runtime) => {
                shared.replace(runtime);
                shared.metrics.config_reloaded(ReloadResult::Ok);
                tracing::info!(path = %path.display(), "configuration reloaded");
            }
            Err(e) => {
                shared.metrics.config_reloaded(ReloadResult::Error);
                tracing::error!(path = %path.display(), error = %e, "new configuration refused; keeping the last good one");
            }
        }
    }
}
