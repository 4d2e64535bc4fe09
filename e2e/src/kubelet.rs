//! The harness as kubelet: there is no node, so a proxy pod is the
//! `gatehouse-proxy` binary started with what the operator's Deployment
//! says — its container's args and env (`fieldRef` resolved), as its
//! ServiceAccount (a token from the TokenRequest API in a kubeconfig, where
//! a pod has the projected token) — and the Deployment's status is written
//! as the kubelet and the Deployment controller would.
//!
//! What a pod has on its own and a process on a shared host has not is
//! mapped, the way a container runtime maps it: each volume mount becomes a
//! folder of the pod's, and each container port a free loopback port; args
//! naming a mount path or `0.0.0.0:<containerPort>` are rewritten to them.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::Context as _;
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Container};
use kube::{
    Api,
    api::{Patch, PatchParams},
};

use crate::{
    TestEnv, User,
    net::{free_port, wait_for_port},
    process::{Process, Spawn},
};

/// A proxy pod: the process, and the host ports of its container ports.
#[derive(Debug)]
pub struct Pod {
    /// The running proxy.
    pub process: Process,
    /// Host port by container port name (`postgres`, `admin`).
    pub ports: BTreeMap<String, u16>,
    /// The pod's folder (volumes, kubeconfig, log).
    pub dir: PathBuf,
}

impl Pod {
    /// The host port of the container port `name`.
    pub fn port(&self, name: &str) -> anyhow::Result<u16> {
        self.ports
            .get(name)
            .copied()
            .with_context(|| format!("the pod has no port {name}: {:?}", self.ports))
    }
}

/// Starts the proxy of Deployment `name` in `namespace` as its pod would
/// run, waits for its `postgres` port, and marks the Deployment available.
pub async fn run_deployment(env: &TestEnv, namespace: &str, name: &str) -> anyhow::Result<Pod> {
    let client = env.kube.client(User::Admin).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let deployment = deployments.get(name).await?;
    let pod_spec = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .context("the Deployment has no pod template")?;
    let container: &Container = pod_spec.containers.first().context("the pod has no container")?;
    let service_account = pod_spec
        .service_account_name
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let dir = env.path().join("pods").join(format!("{namespace}-{name}"));
    std::fs::create_dir_all(&dir)?;

    // The pod's ServiceAccount token, as the projected volume would hold it.
    let out = env
        .kube
        .kubectl(User::Admin)
        .args([
            "create",
            "token",
            &service_account,
            "-n",
            namespace,
            "--duration=2h",
        ])
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "TokenRequest for {namespace}/{service_account}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout)?.trim().to_owned();
    let kubeconfig = dir.join("kubeconfig");
    env.kube
        .write_token_kubeconfig(&kubeconfig, &service_account, &token, namespace)?;

    // Volumes and ports, mapped.
    let mut paths = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let folder = dir.join("volumes").join(&mount.name);
        std::fs::create_dir_all(&folder)?;
        paths.push((mount.mount_path.clone(), folder));
    }
    let mut ports = BTreeMap::new();
    let mut addresses = Vec::new();
    for port in container.ports.iter().flatten() {
        let host = free_port()?;
        ports.insert(port.name.clone().unwrap_or_default(), host);
        addresses.push((
            format!("0.0.0.0:{}", port.container_port),
            format!("127.0.0.1:{host}"),
        ));
    }
    let args: Vec<String> = container
        .args
        .iter()
        .flatten()
        .map(|arg| {
            if let Some((_, host)) = addresses.iter().find(|(pod, _)| pod == arg) {
                return host.clone();
            }
            for (mount, folder) in &paths {
                if let Some(rest) = arg.strip_prefix(mount.as_str())
                    && (rest.is_empty() || rest.starts_with('/'))
                {
                    return format!("{}{rest}", folder.display());
                }
            }
            arg.clone()
        })
        .collect();

    let binary = crate::workspace_binary("gatehouse-proxy")?;
    let mut spawn = Spawn::new(&format!("pod {namespace}/{name}"), binary, dir.join("proxy.log"))
        .args(&args)
        .env("KUBECONFIG", &kubeconfig.to_string_lossy());
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) => value.clone(),
            (None, Some(from)) => match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                Some("metadata.namespace") => namespace.to_owned(),
                Some("metadata.name") => format!("{name}-e2e"),
                other => anyhow::bail!("the harness cannot resolve env {} from {other:?}", var.name),
            },
            (None, None) => String::new(),
        };
        spawn = spawn.env(&var.name, &value);
    }
    let step = format!("start the proxy pod of {namespace}/{name}");
    let mut process = spawn.start(&step)?;
    let postgres = *ports
        .get("postgres")
        .context("the container has no port named postgres")?;
    wait_for_port(&mut process, &step, postgres, Duration::from_secs(30)).await?;

    // What the Deployment controller would report once the pod is ready.
    let replicas = deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = serde_json::json!({"status": {
        "observedGeneration": deployment.metadata.generation,
        "replicas": replicas, "readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 1,
    }});
    deployments
        .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await?;
    Ok(Pod { process, ports, dir })
}
