//! The pod's sandbox and network: adopt a running one (after an agent restart), else create
//! one, attach it through CNI, write the kubelet-managed /etc/hosts; tear it all down.

use std::collections::BTreeMap;
use std::path::PathBuf;

use capstan_net::cni::{AttachRequest, PortMapping};
use capstan_runtime::cri::{
    PodSandboxConfig, PodSandboxFilter, PodSandboxMetadata, PodSandboxState,
};
use serde::{Deserialize, Serialize};

use super::{SandboxInfo, Worker};
use crate::dns;
use crate::labels;

/// What the worker remembers about its sandbox's network across agent restarts.
#[derive(Debug, Default, Serialize, Deserialize)]
struct NetworkRecord {
    sandbox_id: String,
    ips: Vec<String>,
}

const NETWORK_FILE: &str = "network.json";

impl Worker {
    pub(super) fn log_dir(&self) -> PathBuf {
        self.ctx.pod_log_dir.join(format!(
            "{}_{}_{}",
            self.namespace(),
            self.pod_name(),
            self.uid
        ))
    }

    fn network_file(&self) -> PathBuf {
        self.ctx.pods_dir.join(&self.uid).join(NETWORK_FILE)
    }

    fn sandbox_config(&self, attempt: u32) -> PodSandboxConfig {
        let (hostname, _) = dns::hostname(&self.pod, &self.ctx.dns.domain);
        let labels = BTreeMap::from([
            (labels::POD_NAME.to_string(), self.pod_name()),
            (labels::POD_NAMESPACE.to_string(), self.namespace()),
            (labels::POD_UID.to_string(), self.uid.clone()),
        ]);
        PodSandboxConfig {
            metadata: PodSandboxMetadata {
                name: self.pod_name(),
                uid: self.uid.clone(),
                namespace: self.namespace(),
                attempt,
            },
            hostname,
            log_directory: self.log_dir(),
            resolv_conf: Some(dns::resolv_conf(
                &self.pod,
                &self.ctx.dns,
                &self.ctx.host_resolv,
            )),
            hosts: None,
            labels,
            annotations: self.pod.metadata.annotations.clone().unwrap_or_default(),
        }
    }

    pub(super) fn attach_request(&self, sandbox_id: &str, netns: PathBuf) -> AttachRequest {
        let port_mappings = self
            .pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                let host_port = u16::try_from(p.host_port?).ok().filter(|p| *p > 0)?;
                Some(PortMapping {
                    host_port,
                    container_port: u16::try_from(p.container_port).ok()?,
                    protocol: p.protocol.as_deref().unwrap_or("TCP").to_lowercase(),
                    host_ip: p.host_ip.clone().unwrap_or_default(),
                })
            })
            .collect();
        AttachRequest {
            container_id: sandbox_id.to_string(),
            netns,
            ifname: "eth0".into(),
            pod_name: self.pod_name(),
            pod_namespace: self.namespace(),
            pod_uid: self.uid.clone(),
            port_mappings,
        }
    }

    /// Makes sure a ready sandbox with a pod IP exists; Err is the event message.
    pub(super) async fn ensure_sandbox(&mut self) -> Result<(), String> {
        let rt = self.ctx.runtime.clone();
        if let Some(sb) = &self.sandbox {
            match rt.pod_sandbox_status(&sb.id).await {
                Ok(s) if s.state == PodSandboxState::Ready => return Ok(()),
                _ => {
                    tracing::info!(pod = %self.pod_name(), sandbox = %sb.id, "sandbox died; making a new one");
                }
            }
        }
        let mut attempt = 0;
        let existing = rt
            .list_pod_sandboxes(&PodSandboxFilter {
                label_selector: BTreeMap::from([(labels::POD_UID.to_string(), self.uid.clone())]),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("listing sandboxes: {e}"))?;
        let record: NetworkRecord = std::fs::read(self.network_file())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut adopted = None;
        for sb in &existing {
            attempt = attempt.max(sb.metadata.attempt + 1);
            if adopted.is_none() && sb.state == PodSandboxState::Ready && sb.id == record.sandbox_id
            {
                adopted = Some(sb.id.clone());
            }
        }
        if let Some(id) = adopted {
            let status = rt
                .pod_sandbox_status(&id)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(pod = %self.pod_name(), sandbox = %id, "adopted running sandbox");
            self.sandbox = Some(SandboxInfo {
                id,
                config: self.sandbox_config(status.metadata.attempt),
                netns: status.network_namespace,
                ips: record.ips,
            });
            return Ok(());
        }
        // Anything else of this pod is stale: its containers die with it.
        self.teardown_sandboxes().await;
        if self.pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
            return Err("hostNetwork pods are not supported by the Capstan runtime yet".into());
        }
        let config = self.sandbox_config(attempt);
        std::fs::create_dir_all(&config.log_directory)
            .map_err(|e| format!("creating {}: {e}", config.log_directory.display()))?;
        let id = rt
            .run_pod_sandbox(
                &config,
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.runtime_class_name.as_deref())
                    .unwrap_or(""),
            )
            .await
            .map_err(|e| format!("Failed to create pod sandbox: {e}"))?;
        let status = match rt.pod_sandbox_status(&id).await {
            Ok(s) => s,
            Err(e) => {
                let _ = rt.remove_pod_sandbox(&id).await;
                return Err(format!("Failed to create pod sandbox: {e}"));
            }
        };
        let request = self.attach_request(&id, status.network_namespace.clone());
        let ips = match self.ctx.cni.add(&request).await {
            Ok(r) => r.ips.iter().map(|ip| ip.to_string()).collect::<Vec<_>>(),
            Err(e) => {
                let _ = self.ctx.cni.del(&request).await;
                let _ = rt.remove_pod_sandbox(&id).await;
                return Err(format!(
                    "Failed to create pod sandbox: setting up the network of sandbox {id}: {e}"
                ));
            }
        };
        let (hostname, fqdn) = dns::hostname(&self.pod, &self.ctx.dns.domain);
        let hosts = dns::hosts_file(&self.pod, &ips, &hostname, fqdn.as_deref());
        let hosts_path =
            capstan_runtime::container::state::StateLayout::new(self.ctx.runtime_state_dir.clone())
                .sandbox(&id)
                .join("hosts");
        if let Err(e) =
            capstan_runtime::container::state::write_atomic(&hosts_path, hosts.as_bytes())
        {
            tracing::warn!(error = %e, "writing the pod's /etc/hosts");
        }
        let record = NetworkRecord {
            sandbox_id: id.clone(),
            ips: ips.clone(),
        };
        let dir = self.ctx.pods_dir.join(&self.uid);
        let _ = std::fs::create_dir_all(&dir);
        if let Err(e) = std::fs::write(
            self.network_file(),
            serde_json::to_vec(&record).unwrap_or_default(),
        ) {
            tracing::warn!(error = %e, "recording the pod network");
        }
        tracing::info!(pod = %self.pod_name(), sandbox = %id, ips = ?ips, "pod sandbox ready");
        self.sandbox = Some(SandboxInfo {
            id,
            config,
            netns: status.network_namespace,
            ips,
        });
        Ok(())
    }

    /// Removes every sandbox of this pod (CNI DEL first, while the netns still exists).
    pub(super) async fn teardown_sandboxes(&mut self) {
        // DEL with the pod's port mappings first, so portmap removes its rules.
        if let Some(sb) = self.sandbox.take() {
            let req = self.attach_request(&sb.id, sb.netns.clone());
            if let Err(e) = self.ctx.cni.del(&req).await {
                tracing::warn!(sandbox = %sb.id, error = %e, "CNI DEL");
            }
        }
        let rt = self.ctx.runtime.clone();
        let list = rt
            .list_pod_sandboxes(&PodSandboxFilter {
                label_selector: BTreeMap::from([(labels::POD_UID.to_string(), self.uid.clone())]),
                ..Default::default()
            })
            .await
            .unwrap_or_default();
        for sb in list {
            teardown_sandbox(
                &*self.ctx.runtime,
                &self.ctx.cni,
                &sb.id,
                &sb.metadata.name,
                &sb.metadata.namespace,
                &self.uid,
            )
            .await;
        }
        let _ = std::fs::remove_file(self.network_file());
    }

    /// Sets up (and now and then refreshes) the pod's volumes; Err is the FailedMount message.
    pub(super) async fn ensure_volumes(&mut self) -> Result<(), String> {
        let due = self
            .volumes_refreshed
            .is_none_or(|t| t.elapsed() >= super::VOLUME_REFRESH);
        if self.volumes.is_some() && !due {
            return Ok(());
        }
        if self.volumes.is_some() {
            self.volumes_refreshed = Some(tokio::time::Instant::now());
            if let Err(e) = self.ctx.volumes.refresh(&self.pod, &*self.ctx.source).await {
                tracing::warn!(pod = %self.pod_name(), error = %e, "refreshing volumes");
            }
            return Ok(());
        }
        let v = self
            .ctx
            .volumes
            .setup(&self.pod, &*self.ctx.source)
            .await
            .map_err(|e| e.to_string())?;
        self.volumes = Some(v);
        self.volumes_refreshed = Some(tokio::time::Instant::now());
        Ok(())
    }
}

/// CNI DEL, then stop and remove the sandbox (and its containers).
pub async fn teardown_sandbox(
    rt: &dyn capstan_runtime::cri::RuntimeService,
    cni: &capstan_net::cni::Cni,
    id: &str,
    name: &str,
    namespace: &str,
    uid: &str,
) {
    if let Ok(status) = rt.pod_sandbox_status(id).await {
        let req = AttachRequest {
            container_id: id.to_string(),
            netns: status.network_namespace,
            ifname: "eth0".into(),
            pod_name: name.to_string(),
            pod_namespace: namespace.to_string(),
            pod_uid: uid.to_string(),
            port_mappings: vec![],
        };
        if let Err(e) = cni.del(&req).await {
            tracing::warn!(sandbox = id, error = %e, "CNI DEL");
        }
    }
    if let Err(e) = rt.stop_pod_sandbox(id).await {
        tracing::debug!(sandbox = id, error = %e, "stopping sandbox");
    }
    if let Err(e) = rt.remove_pod_sandbox(id).await {
        tracing::warn!(sandbox = id, error = %e, "removing sandbox");
    }
}
