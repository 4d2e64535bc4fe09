//! In-cluster mode (`gatehouse-proxy --config-map NAME`): the configuration
//! is the ConfigMap the operator renders, read and watched through the API,
//! and the Secrets it names are read and watched through the API too.
//!
//! The rendered document is the standalone configuration with Secret
//! references where the standalone one has files:
//!
//! | In the ConfigMap | Becomes | Keys read |
//! | --- | --- | --- |
//! | `upstream.credentials: {secret: S}` | `usernameFile`, `passwordFile` | `username`, `password` |
//! | `upstream.tls.caSecret: S` | `caFile` | `ca.crt` |
//! | `recording.signingKeySecret: S` | `signingKeyFile` | `signing-key.pem` |
//! | `recording.s3.credentialsSecret: S` | `accessKeyIdFile`, `secretAccessKeyFile` | `access-key-id`, `secret-access-key` |
//!
//! The values are written, mode 0600, under `--secrets-dir` (a memory-backed
//! emptyDir in the Deployment), and the document is then read as a
//! standalone configuration. Every code path that reads a credential (each
//! new upstream connection reads its files) thereby sees a rotated Secret as
//! soon as the watch delivers it, and nothing in the proxy has two ways of
//! reading the same setting.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use futures::{FutureExt as _, StreamExt as _, stream::select_all};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{
    Api,
    runtime::{WatchStreamExt as _, watcher},
};
use serde_norway::{Mapping, Value};

use crate::{
    config::{ConfigError, ProxyConfig},
    metrics::ReloadResult,
    server::{Runtime, Shared},
};

/// What a watch event means for the proxy.
enum Signal {
    /// The object changed or went away.
    Changed,
    /// A (re-)list of the watch completed.
    Listed,
    /// Part of a list, or a list starting: nothing to do yet.
    Quiet,
    /// The watch failed; it retries with backoff.
    Failed(String),
}

fn signal<K>(event: Result<watcher::Event<K>, watcher::Error>) -> Signal {
    match event {
        Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => Signal::Changed,
        Ok(watcher::Event::InitDone) => Signal::Listed,
        Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => Signal::Quiet,
        Err(e) => Signal::Failed(e.to_string()),
    }
}

/// The key of the configuration in the ConfigMap.
pub const CONFIG_KEY: &str = "config.yaml";

/// Where the configuration comes from in the cluster.
#[derive(Clone)]
pub struct Source {
    /// A client authenticated as the proxy's ServiceAccount.
    pub client: kube::Client,
    /// The proxy's namespace.
    pub namespace: String,
    /// The ConfigMap the operator renders.
    pub config_map: String,
    /// Where Secret values are written (a memory-backed emptyDir).
    pub secrets_dir: PathBuf,
    /// What the pod's command line sets over the document.
    pub overrides: Overrides,
}

/// Settings of the pod rather than of the Connection, from the command line.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `listen.address`.
    pub listen: Option<std::net::SocketAddr>,
    /// `admin.address`.
    pub admin: Option<std::net::SocketAddr>,
    /// `recording.spoolDirectory` (the pod's spool volume).
    pub spool: Option<PathBuf>,
}

impl Overrides {
    /// Sets what is given on `config`.
    pub fn apply(&self, config: &mut ProxyConfig) {
        if let Some(address) = self.listen {
            config.listen.address = address;
        }
        if let Some(address) = self.admin {
            config.admin.address = address;
        }
        if let Some(dir) = &self.spool {
            config.recording.spool_directory = dir.clone();
        }
    }
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("namespace", &self.namespace)
            .field("config_map", &self.config_map)
            .field("secrets_dir", &self.secrets_dir)
            .finish_non_exhaustive()
    }
}

impl Source {
    /// Reads the ConfigMap and the Secrets it names, and returns the
    /// configuration with the names of those Secrets.
    ///
    /// # Errors
    ///
    /// The API's refusal, a missing ConfigMap, key, Secret or Secret key,
    /// or an invalid configuration, each named.
    pub async fn load(&self) -> Result<(ProxyConfig, Vec<String>), ConfigError> {
        let api = |e: kube::Error, what: &str| {
            invalid(format!("cannot read {what} in namespace {}: {e}", self.namespace))
        };
        let config_maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let map = config_maps
            .get(&self.config_map)
            .await
            .map_err(|e| api(e, &format!("ConfigMap {}", self.config_map)))?;
        let document = map
            .data
            .as_ref()
            .and_then(|d| d.get(CONFIG_KEY))
            .ok_or_else(|| invalid(format!("ConfigMap {} has no key {CONFIG_KEY}", self.config_map)))?;
        let names = secret_names(document)?;
        let secrets_api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut secrets = BTreeMap::new();
        for name in &names {
            if let Some(secret) = secrets_api
                .get_opt(name)
                .await
                .map_err(|e| api(e, &format!("Secret {name}")))?
            {
                let data: SecretData = secret
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                secrets.insert(name.clone(), data);
            }
        }
        let mut config = materialize(document, &secrets, &self.secrets_dir)?;
        self.overrides.apply(&mut config);
        Ok((config, names))
    }

    /// Watches the ConfigMap and the Secrets `secrets` names, and reloads the
    /// proxy after each change (sessions go on; a refused configuration
    /// keeps the last good one). Runs until the process ends.
    pub async fn watch(self, shared: Arc<Shared>, mut secrets: Vec<String>) {
        loop {
            let by_name = |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
            let mut streams = vec![
                watcher(
                    Api::<ConfigMap>::namespaced(self.client.clone(), &self.namespace),
                    by_name(&self.config_map),
                )
                .default_backoff()
                .map(signal)
                .boxed(),
            ];
            for name in &secrets {
                streams.push(
                    watcher(
                        Api::<Secret>::namespaced(self.client.clone(), &self.namespace),
                        by_name(name),
                    )
                    .default_backoff()
                    .map(signal)
                    .boxed(),
                );
            }
            let mut listed = vec![false; streams.len()];
            let mut events = select_all(
                streams
                    .into_iter()
                    .enumerate()
                    .map(|(i, stream)| stream.map(move |signal| (i, signal)).boxed()),
            );
            while let Some((i, signal)) = events.next().await {
                match signal {
                    Signal::Failed(e) => {
                        tracing::warn!(error = %e, "watching the configuration; retrying");
                        continue;
                    }
                    Signal::Quiet => continue,
                    // The first list of each watch is what `load` read; a
                    // later one (after a reconnect) may hide a change.
                    Signal::Listed if !listed[i] => {
                        listed[i] = true;
                        continue;
                    }
                    Signal::Listed | Signal::Changed => {}
                }
                // A burst of changes (a rotated Secret and its ConfigMap) becomes one reload.
                tokio::time::sleep(Duration::from_millis(50)).await;
                while let Some(Some((i, signal))) = events.next().now_or_never() {
                    if matches!(signal, Signal::Listed) {
                        listed[i] = true;
                    }
                }
                match self
                    .load()
                    .await
                    .and_then(|(config, names)| Ok((Runtime::new(config)?, names)))
                {
                    Ok((runtime, names)) => {
                        shared.replace(runtime);
                        shared.metrics().config_reloaded(ReloadResult::Ok);
                        tracing::info!(config_map = %self.config_map, "configuration reloaded");
                        if names != secrets {
                            secrets = names;
                            break;
                        }
                    }
                    Err(e) => {
                        shared.metrics().config_reloaded(ReloadResult::Error);
                        tracing::error!(config_map = %self.config_map, error = %e, "new configuration refused; keeping the last good one");
                    }
                }
            }
        }
    }
}

/// A Secret's data, by key.
pub type SecretData = BTreeMap<String, Vec<u8>>;

/// One reference to a Secret in the rendered document: where it sits, which
/// keys it needs, and the file fields it becomes.
struct Reference {
    /// The mapping holding the reference, from the document's root.
    parent: &'static [&'static str],
    /// The reference's key in that mapping.
    key: &'static str,
    /// `(file field, Secret key)` pairs written in its place.
    files: &'static [(&'static str, &'static str)],
}

const REFERENCES: &[Reference] = &[
    Reference {
        parent: &["upstream", "credentials"],
        key: "secret",
        files: &[("usernameFile", "username"), ("passwordFile", "password")],
    },
    Reference {
        parent: &["upstream", "tls"],
        key: "caSecret",
        files: &[("caFile", "ca.crt")],
    },
    Reference {
        parent: &["recording"],
        key: "signingKeySecret",
        files: &[("signingKeyFile", "signing-key.pem")],
    },
    Reference {
        parent: &["recording", "s3"],
        key: "credentialsSecret",
        files: &[
            ("accessKeyIdFile", "access-key-id"),
            ("secretAccessKeyFile", "secret-access-key"),
        ],
    },
];

fn parse(document: &str) -> Result<Value, ConfigError> {
    serde_norway::from_str(document).map_err(ConfigError::from)
}

fn mapping_at<'a>(root: &'a Value, path: &[&str]) -> Option<&'a Mapping> {
    path.iter()
        .try_fold(root, |value, key| value.get(*key))
        .and_then(Value::as_mapping)
}

fn mapping_at_mut<'a>(root: &'a mut Value, path: &[&str]) -> Option<&'a mut Mapping> {
    path.iter()
        .try_fold(root, |value, key| value.get_mut(*key))
        .and_then(Value::as_mapping_mut)
}

/// The names of the Secrets `document` refers to, sorted.
pub fn secret_names(document: &str) -> Result<Vec<String>, ConfigError> {
    let root = parse(document)?;
    let mut names: Vec<String> = REFERENCES
        .iter()
        .filter_map(|r| {
            mapping_at(&root, r.parent)?
                .get(r.key)?
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Writes the values `document` needs from `secrets` under `dir`, replaces
/// each reference with the files, and reads the result as a configuration.
///
/// # Errors
///
/// A missing Secret or key, named; an unwritable folder; or whatever the
/// configuration itself gets wrong.
pub fn materialize(
    document: &str,
    secrets: &BTreeMap<String, SecretData>,
    dir: &Path,
) -> Result<ProxyConfig, ConfigError> {
    rewrite(document, |name, field, key| {
        let data = secrets
            .get(name)
            .ok_or_else(|| invalid(format!("Secret {name} ({field}) was not found")))?;
        let value = data
            .get(key)
            .ok_or_else(|| invalid(format!("Secret {name} has no key {key}")))?;
        write_private(dir, name, key, value)
    })
}

/// Checks a rendered document as the proxy will read it, without any
/// Secret: what the operator runs before it writes a ConfigMap.
///
/// # Errors
///
/// Whatever the proxy would refuse, in its words.
pub fn check(document: &str) -> Result<ProxyConfig, ConfigError> {
    rewrite(document, |name, _, key| {
        Ok(Path::new("/var/run/gatehouse/secrets").join(name).join(key))
    })
}

/// Replaces each Secret reference with the files `file_for(secret,
/// reference, key)` gives, and reads the result as a configuration.
fn rewrite(
    document: &str,
    mut file_for: impl FnMut(&str, &str, &str) -> Result<PathBuf, ConfigError>,
) -> Result<ProxyConfig, ConfigError> {
    let mut root = parse(document)?;
    for reference in REFERENCES {
        let Some(parent) = mapping_at_mut(&mut root, reference.parent) else {
            continue;
        };
        let Some(name) = parent.remove(reference.key) else {
            continue;
        };
        let field = format!("{}.{}", reference.parent.join("."), reference.key);
        let name = name
            .as_str()
            .ok_or_else(|| invalid(format!("{field} must be a Secret's name")))?
            .to_owned();
        for (file_field, key) in reference.files {
            let path = file_for(&name, &field, key)?;
            parent.insert(
                Value::String((*file_field).to_owned()),
                Value::String(path.to_string_lossy().into_owned()),
            );
        }
    }
    let text = serde_norway::to_string(&root).map_err(ConfigError::from)?;
    ProxyConfig::from_yaml(&text)
}

fn invalid(why: String) -> ConfigError {
    ConfigError::Invalid(why)
}

/// Writes `dir/<secret>/<key>` with mode 0600, through a temporary name so a
/// reader never sees half a value.
fn write_private(dir: &Path, secret: &str, key: &str, value: &[u8]) -> Result<PathBuf, ConfigError> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let folder = dir.join(secret);
    let io = |e: std::io::Error| {
        invalid(format!(
            "cannot write Secret {secret} under {}: {e}",
            dir.display()
        ))
    };
    std::fs::create_dir_all(&folder).map_err(io)?;
    let path = folder.join(key);
    let partial = folder.join(format!(".{key}.partial"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .map_err(io)?;
    file.write_all(value).map_err(io)?;
    drop(file);
    std::fs::rename(&partial, &path).map_err(io)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCUMENT: &str = r#"connection: {namespace: team-a, name: orders-db}
listen: {address: "127.0.0.1:0", allowPlaintext: true}
upstream:
  host: orders.db.svc
  port: 5432
  database: orders
  tls: {mode: verify-full, caSecret: orders-ca}
  credentials: {secret: orders-db-creds}
auth:
  tokenReview: {audience: gatehouse}
"#;

    fn secrets() -> BTreeMap<String, SecretData> {
        BTreeMap::from([
            (
                "orders-db-creds".to_owned(),
                SecretData::from([
                    ("username".to_owned(), b"app".to_vec()),
                    ("password".to_owned(), b"s3cret".to_vec()),
                ]),
            ),
            (
                "orders-ca".to_owned(),
                SecretData::from([("ca.crt".to_owned(), b"-----BEGIN CERTIFICATE-----\n".to_vec())]),
            ),
        ])
    }

    #[test]
    fn references_become_private_files() {
        assert_eq!(secret_names(DOCUMENT).unwrap(), ["orders-ca", "orders-db-creds"]);
        let dir = tempfile::tempdir().unwrap();
        let config = materialize(DOCUMENT, &secrets(), dir.path()).unwrap();
        let password = &config.upstream.credentials.password_file;
        assert_eq!(std::fs::read(password).unwrap(), b"s3cret");
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(password).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            config.upstream.tls.ca_file.as_deref(),
            Some(dir.path().join("orders-ca/ca.crt").as_path())
        );
    }

    #[test]
    fn a_missing_secret_or_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut partial = secrets();
        partial.remove("orders-ca");
        let e = materialize(DOCUMENT, &partial, dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("Secret orders-ca (upstream.tls.caSecret) was not found"),
            "{e}"
        );
        let mut keyless = secrets();
        keyless.get_mut("orders-db-creds").unwrap().remove("password");
        let e = materialize(DOCUMENT, &keyless, dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("Secret orders-db-creds has no key password"), "{e}");
    }
}
