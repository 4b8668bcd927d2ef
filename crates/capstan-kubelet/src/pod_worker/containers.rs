//! Starting one container (image pull per imagePullPolicy with back-off, env, mounts, CRI
//! config with resources and security context, postStart) and stopping one (preStop, grace).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use capstan_runtime::cri::{
    Capability, ContainerConfig, ContainerMetadata, KeyValue, LinuxContainerConfig,
    LinuxContainerSecurityContext,
};
use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Service};

use super::Worker;
use super::sync::humanize;
use crate::env::{self, EnvContext};
use crate::events::EventType;
use crate::labels;
use crate::probe::{ProbeTarget, probe_once};
use crate::resources::{linux_resources, qos_class};

/// How long ErrImagePull stays the waiting reason before ImagePullBackOff.
const ERR_IMAGE_PULL_SHOWN: Duration = Duration::from_secs(5);
/// Upper bound for a postStart hook.
const HOOK_TIMEOUT: Duration = Duration::from_secs(30);

type StartError = (String, String);

/// The pull policy in effect: the spec's, else upstream's default (Always for `:latest` or
/// untagged references, IfNotPresent otherwise).
pub(crate) fn pull_policy(c: &Container) -> String {
    if let Some(p) = c.image_pull_policy.clone().filter(|p| !p.is_empty()) {
        return p;
    }
    let image = c.image.as_deref().unwrap_or_default();
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || (last.contains(':') && !last.ends_with(":latest")) {
        "IfNotPresent".into()
    } else {
        "Always".into()
    }
}

fn security_context(
    c: &Container,
    pod: &k8s_openapi::api::core::v1::PodSpec,
) -> LinuxContainerSecurityContext {
    let sc = c.security_context.clone().unwrap_or_default();
    let psc = pod.security_context.clone().unwrap_or_default();
    LinuxContainerSecurityContext {
        capabilities: sc.capabilities.map(|caps| Capability {
            add_capabilities: caps.add.unwrap_or_default(),
            drop_capabilities: caps.drop.unwrap_or_default(),
        }),
        privileged: sc.privileged.unwrap_or(false),
        run_as_user: sc.run_as_user.or(psc.run_as_user),
        run_as_username: None,
        run_as_group: sc.run_as_group.or(psc.run_as_group),
        readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
        supplemental_groups: psc.supplemental_groups.unwrap_or_default(),
        no_new_privs: sc.allow_privilege_escalation == Some(false),
    }
}

impl Worker {
    /// Makes the image present per the pull policy; Err is (waiting reason, message).
    async fn ensure_image(&mut self, c: &Container) -> Result<(), StartError> {
        let image = c.image.clone().unwrap_or_default();
        let name = c.name.clone();
        let policy = pull_policy(c);
        let present = self
            .ctx
            .images
            .image_status(&image)
            .await
            .ok()
            .flatten()
            .is_some();
        if present && policy != "Always" {
            if self.waiting.get(&name).map(|w| w.0.as_str()) != Some("ContainerCreating") {
                let msg = format!("Container image \"{image}\" already present on machine");
                self.ctx
                    .recorder
                    .pod(&self.pod, EventType::Normal, "Pulled", &msg, Some(&name))
                    .await;
            }
            return Ok(());
        }
        if policy == "Never" {
            let msg =
                format!("Container image \"{image}\" is not present with pull policy of Never");
            self.ctx
                .recorder
                .pod(
                    &self.pod,
                    EventType::Warning,
                    "ErrImageNeverPull",
                    &msg,
                    Some(&name),
                )
                .await;
            return Err(("ErrImageNeverPull".into(), msg));
        }
        let now = jiff::Timestamp::now();
        let key = format!("{}/{image}", self.uid);
        if let Some(since) = self.image_failed_at(&key)
            && let Some(left) = self.image_backoff.remaining(&key, since, now)
        {
            // Upstream shows ErrImagePull until the pod worker's next (backed-off) sync.
            if let Some(w) = self.waiting.get(&name).filter(|w| w.0 == "ErrImagePull")
                && now.as_second() - since.as_second() < ERR_IMAGE_PULL_SHOWN.as_secs() as i64
            {
                return Err(w.clone());
            }
            let msg = format!("Back-off pulling image \"{image}\"");
            if self.waiting.get(&name).map(|w| w.0.as_str()) != Some("ImagePullBackOff") {
                self.ctx
                    .recorder
                    .pod(&self.pod, EventType::Normal, "BackOff", &msg, Some(&name))
                    .await;
            }
            self.wake = Some(left.min(self.wake.unwrap_or(left)));
            return Err(("ImagePullBackOff".into(), msg));
        }
        let msg = format!("Pulling image \"{image}\"");
        self.ctx
            .recorder
            .pod(&self.pod, EventType::Normal, "Pulling", &msg, Some(&name))
            .await;
        let started = Instant::now();
        match self.ctx.images.pull_image(&image, None).await {
            Ok(record) => {
                self.image_backoff.forget(&key);
                let msg = format!(
                    "Successfully pulled image \"{image}\" in {:.3}s. Image size: {} bytes.",
                    started.elapsed().as_secs_f64(),
                    record.size
                );
                self.ctx
                    .recorder
                    .pod(&self.pod, EventType::Normal, "Pulled", &msg, Some(&name))
                    .await;
                Ok(())
            }
            Err(e) => {
                self.image_backoff.next(&key, jiff::Timestamp::now());
                self.image_failures.insert(key, jiff::Timestamp::now());
                let detail = error_chain(&e);
                let msg = format!("Failed to pull image \"{image}\": {detail}");
                self.ctx
                    .recorder
                    .pod(&self.pod, EventType::Warning, "Failed", &msg, Some(&name))
                    .await;
                self.ctx
                    .recorder
                    .pod(
                        &self.pod,
                        EventType::Warning,
                        "Failed",
                        "Error: ErrImagePull",
                        Some(&name),
                    )
                    .await;
                Err(("ErrImagePull".into(), msg))
            }
        }
    }

    fn image_failed_at(&self, key: &str) -> Option<jiff::Timestamp> {
        self.image_failures.get(key).copied()
    }

    async fn services(&self) -> Vec<Service> {
        let mut out = Vec::new();
        let ns = self.namespace();
        let api: kube::Api<Service> = kube::Api::namespaced(self.ctx.client.clone(), &ns);
        if let Ok(list) = api.list(&Default::default()).await {
            out.extend(list.items);
        }
        if ns != "default" {
            let api: kube::Api<Service> = kube::Api::namespaced(self.ctx.client.clone(), "default");
            if let Ok(Some(k)) = api.get_opt("kubernetes").await {
                out.push(k);
            }
        }
        out
    }

    async fn config_error(&self, c: &Container, message: String) -> StartError {
        let text = format!("Error: {message}");
        self.ctx
            .recorder
            .pod(
                &self.pod,
                EventType::Warning,
                "Failed",
                &text,
                Some(&c.name),
            )
            .await;
        ("CreateContainerConfigError".into(), message)
    }

    /// Creates and starts attempt `attempt` of `c`; returns the container id.
    pub(super) async fn start_container(
        &mut self,
        c: &Container,
        attempt: u32,
    ) -> Result<String, StartError> {
        let Some(sandbox) = self.sandbox.clone() else {
            return Err(("ContainerCreating".into(), String::new()));
        };
        self.ensure_image(c).await?;
        let spec = self.pod.spec.clone().unwrap_or_default();
        let services = self.services().await;
        let service_env = env::service_env(
            &services,
            &self.namespace(),
            spec.enable_service_links.unwrap_or(true),
        );
        let ctx = EnvContext {
            pod: &self.pod,
            node_name: &self.ctx.node_name,
            host_ip: &self.ctx.host_ip,
            pod_ips: &sandbox.ips,
            service_env: &service_env,
            node_allocatable: &self.ctx.node_allocatable,
        };
        let envs = match env::container_env(&ctx, c, &*self.ctx.source).await {
            Ok(e) => e,
            Err(e) => return Err(self.config_error(c, e.to_string()).await),
        };
        let volumes = self.volumes.clone().unwrap_or_default();
        let mounts = match self
            .ctx
            .volumes
            .container_mounts(&self.pod, c, &volumes, &envs)
        {
            Ok(m) => m,
            Err(e) => return Err(self.config_error(c, e.to_string()).await),
        };
        let qos = qos_class(&self.pod);
        let config = ContainerConfig {
            metadata: ContainerMetadata {
                name: c.name.clone(),
                attempt,
            },
            image: c.image.clone().unwrap_or_default(),
            command: c
                .command
                .iter()
                .flatten()
                .map(|s| env::expand(s, &envs))
                .collect(),
            args: c
                .args
                .iter()
                .flatten()
                .map(|s| env::expand(s, &envs))
                .collect(),
            working_dir: c.working_dir.clone().filter(|w| !w.is_empty()),
            envs: envs
                .iter()
                .map(|(k, v)| KeyValue {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            mounts,
            labels: BTreeMap::from([
                (labels::POD_NAME.to_string(), self.pod_name()),
                (labels::POD_NAMESPACE.to_string(), self.namespace()),
                (labels::POD_UID.to_string(), self.uid.clone()),
                (labels::CONTAINER_NAME.to_string(), c.name.clone()),
            ]),
            annotations: BTreeMap::from([(
                labels::CONTAINER_RESTART_COUNT.to_string(),
                attempt.to_string(),
            )]),
            log_path: format!("{}/{attempt}.log", c.name).into(),
            linux: LinuxContainerConfig {
                resources: linux_resources(c, qos, self.ctx.memory_capacity),
                security_context: security_context(c, &spec),
            },
        };
        let rt = self.ctx.runtime.clone();
        let id = match rt
            .create_container(&sandbox.id, &config, &sandbox.config)
            .await
        {
            Ok(id) => id,
            Err(e) => {
                let msg = format!("Error: {}", error_chain(&e));
                self.ctx
                    .recorder
                    .pod(&self.pod, EventType::Warning, "Failed", &msg, Some(&c.name))
                    .await;
                return Err(("CreateContainerError".into(), error_chain(&e)));
            }
        };
        let msg = format!("Created container: {}", c.name);
        self.ctx
            .recorder
            .pod(&self.pod, EventType::Normal, "Created", &msg, Some(&c.name))
            .await;
        if let Err(e) = rt.start_container(&id).await {
            let msg = format!(
                "Error: failed to start container \"{}\": {}",
                c.name,
                error_chain(&e)
            );
            self.ctx
                .recorder
                .pod(&self.pod, EventType::Warning, "Failed", &msg, Some(&c.name))
                .await;
            return Err(("RunContainerError".into(), error_chain(&e)));
        }
        let msg = format!("Started container {}", c.name);
        self.ctx
            .recorder
            .pod(&self.pod, EventType::Normal, "Started", &msg, Some(&c.name))
            .await;
        if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.post_start.clone())
            && let Err(message) = self.run_hook(c, &id, &hook, HOOK_TIMEOUT).await
        {
            let text = format!("PostStartHook failed: {message}");
            self.ctx
                .recorder
                .pod(
                    &self.pod,
                    EventType::Warning,
                    "FailedPostStartHook",
                    &text,
                    Some(&c.name),
                )
                .await;
            let _ = rt
                .stop_container(&id, Duration::from_secs(self.grace_secs()))
                .await;
        }
        tracing::info!(pod = %self.pod_name(), container = %c.name, attempt, id = %id, "container started");
        Ok(id)
    }

    fn grace_secs(&self) -> u64 {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30)
            .max(0) as u64
    }

    async fn run_hook(
        &self,
        c: &Container,
        id: &str,
        hook: &LifecycleHandler,
        timeout: Duration,
    ) -> Result<(), String> {
        if let Some(sleep) = &hook.sleep {
            let d = Duration::from_secs(sleep.seconds.max(0) as u64).min(timeout);
            tokio::time::sleep(d).await;
            return Ok(());
        }
        let probe = k8s_openapi::api::core::v1::Probe {
            exec: hook.exec.clone(),
            http_get: hook.http_get.clone(),
            tcp_socket: hook.tcp_socket.clone(),
            timeout_seconds: Some(timeout.as_secs().max(1) as i32),
            ..Default::default()
        };
        let target = ProbeTarget {
            runtime: self.ctx.runtime.clone(),
            container_id: id.to_string(),
            pod_ip: self
                .sandbox
                .as_ref()
                .and_then(|s| s.ips.first().cloned())
                .unwrap_or_default(),
        };
        match probe_once(&probe, c, &target).await {
            crate::probe::ProbeOutcome::Success => Ok(()),
            crate::probe::ProbeOutcome::Failure(m) => Err(m),
        }
    }

    /// preStop (within the grace period), then SIGTERM and SIGKILL after what is left of it.
    pub(super) async fn kill_container(&self, c: &Container, id: &str, grace: i64) {
        let grace = Duration::from_secs(grace.max(0) as u64);
        let started = Instant::now();
        if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.clone())
            && grace > Duration::ZERO
        {
            let run = self.run_hook(c, id, &hook, grace);
            match tokio::time::timeout(grace, run).await {
                Ok(Ok(())) => {}
                Ok(Err(m)) => {
                    let text = format!("PreStopHook failed: {m}");
                    self.ctx
                        .recorder
                        .pod(
                            &self.pod,
                            EventType::Warning,
                            "FailedPreStopHook",
                            &text,
                            Some(&c.name),
                        )
                        .await;
                }
                Err(_) => {
                    let text = format!("PreStopHook did not finish in {}", humanize(grace));
                    self.ctx
                        .recorder
                        .pod(
                            &self.pod,
                            EventType::Warning,
                            "FailedPreStopHook",
                            &text,
                            Some(&c.name),
                        )
                        .await;
                }
            }
        }
        let left = grace.saturating_sub(started.elapsed());
        if let Err(e) = self.ctx.runtime.stop_container(id, left).await {
            tracing::warn!(container = id, error = %e, "stopping container");
        }
    }
}

/// An error and its sources on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_pull_policy() {
        let c = |image: &str| Container {
            image: Some(image.into()),
            ..Default::default()
        };
        assert_eq!(pull_policy(&c("busybox")), "Always");
        assert_eq!(pull_policy(&c("busybox:latest")), "Always");
        assert_eq!(pull_policy(&c("busybox:1.36")), "IfNotPresent");
        assert_eq!(pull_policy(&c("localhost:5000/busybox")), "Always");
        assert_eq!(pull_policy(&c("busybox@sha256:abc")), "IfNotPresent");
    }
}
