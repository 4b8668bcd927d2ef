//! The sync loop body: bring sandbox, volumes and containers to the spec; restarts with
//! back-off; probes' verdicts; graceful termination.

use std::collections::BTreeMap;
use std::time::Duration;

use capstan_runtime::cri::{
    ContainerFilter, ContainerState as CriState, ContainerStatus as CriStatus,
};
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{DeleteParams, Preconditions};

use super::{ProbeState, Worker};
use crate::events::EventType;
use crate::labels;
use crate::probe::{ProbeKind, ProbeReport, ProbeTarget, run_prober};
use crate::status::{ContainerView, PodView, phase};

/// Default terminationGracePeriodSeconds.
const DEFAULT_GRACE: i64 = 30;

/// The latest and the previous runtime container of each container name.
type Instances = BTreeMap<String, (Option<CriStatus>, Option<CriStatus>)>;

/// What to do with one container on this sync.
enum Action {
    Nothing,
    Start(u32),
}

impl Worker {
    /// One sync; true once the worker is finished (pod gone and cleaned up).
    pub(super) async fn sync(&mut self) -> bool {
        if self.gone || self.pod.metadata.deletion_timestamp.is_some() {
            self.terminate().await;
            return true;
        }
        let api_phase = self.pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(api_phase, Some("Succeeded" | "Failed")) {
            self.finish_terminal().await;
            return false;
        }
        let spec = self.pod.spec.clone().unwrap_or_default();
        if let Err(message) = self.ensure_sandbox().await {
            self.ctx
                .recorder
                .pod(
                    &self.pod,
                    EventType::Warning,
                    "FailedCreatePodSandBox",
                    &message,
                    None,
                )
                .await;
            self.wake = Some(Duration::from_secs(5));
            self.view = PodView {
                host_ip: self.ctx.host_ip.clone(),
                ..self.pending_view(&spec)
            };
            return false;
        }
        if let Err(message) = self.ensure_volumes().await {
            self.ctx
                .recorder
                .pod(&self.pod, EventType::Warning, "FailedMount", &message, None)
                .await;
            self.wake = Some(Duration::from_secs(2));
            self.view = self.pending_view(&spec);
            return false;
        }
        let instances = match self.instances().await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(pod = %self.pod_name(), error = %e, "listing containers");
                return false;
            }
        };
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        let terminal = matches!(phase(&self.pod, &self.view), "Succeeded" | "Failed")
            && !self.view.containers.is_empty();
        let mut init_views = Vec::new();
        let mut init_done = true;
        for c in spec.init_containers.iter().flatten() {
            let (current, previous) = instances.get(&c.name).cloned().unwrap_or_default();
            let succeeded = current
                .as_ref()
                .is_some_and(|s| s.state == CriState::Exited && s.exit_code == 0);
            if init_done && !succeeded && !terminal {
                let init_policy = if policy == "Never" {
                    "Never"
                } else {
                    "OnFailure"
                };
                init_done = false;
                let action = self.decide(c, current.as_ref(), init_policy);
                if let Action::Start(attempt) = action {
                    self.start(c, attempt).await;
                }
            }
            init_views.push(self.view_of(c, current, previous));
        }
        let mut views = Vec::new();
        for c in &spec.containers {
            let (current, previous) = instances.get(&c.name).cloned().unwrap_or_default();
            if init_done && !terminal {
                if let Action::Start(attempt) = self.decide(c, current.as_ref(), &policy) {
                    self.start(c, attempt).await;
                }
            } else if !init_done && current.is_none() && !self.waiting.contains_key(&c.name) {
                self.waiting
                    .insert(c.name.clone(), ("PodInitializing".into(), String::new()));
            }
            views.push(self.view_of(c, current, previous));
        }
        // Re-read after starts so the status shows the new containers.
        if let Ok(fresh) = self.instances().await {
            for (c, v) in spec
                .init_containers
                .iter()
                .flatten()
                .zip(init_views.iter_mut())
                .chain(spec.containers.iter().zip(views.iter_mut()))
            {
                let (current, previous) = fresh.get(&c.name).cloned().unwrap_or_default();
                *v = self.view_of(c, current, previous);
            }
        }
        self.ensure_probers(&spec.containers, &views);
        self.view = PodView {
            init: init_views,
            containers: views,
            pod_ips: self
                .sandbox
                .as_ref()
                .map(|s| s.ips.clone())
                .unwrap_or_default(),
            host_ip: self.ctx.host_ip.clone(),
            sandbox_ready: self.sandbox.is_some(),
        };
        false
    }

    /// A pod that reached Succeeded or Failed: its network and pause process go (the IP returns
    /// to the pool), its exited containers stay for logs until the pod is deleted.
    async fn finish_terminal(&mut self) {
        if self.terminal {
            return;
        }
        self.terminal = true;
        for (_, p) in self.probes.drain() {
            p.stop.cancel();
        }
        let rt = self.ctx.runtime.clone();
        let sandboxes = rt
            .list_pod_sandboxes(&capstan_runtime::cri::PodSandboxFilter {
                label_selector: BTreeMap::from([(labels::POD_UID.to_string(), self.uid.clone())]),
                state: Some(capstan_runtime::cri::PodSandboxState::Ready),
                ..Default::default()
            })
            .await
            .unwrap_or_default();
        self.sandbox = None;
        for sb in sandboxes {
            if let Ok(status) = rt.pod_sandbox_status(&sb.id).await {
                let req = self.attach_request(&sb.id, status.network_namespace);
                if let Err(e) = self.ctx.cni.del(&req).await {
                    tracing::warn!(sandbox = %sb.id, error = %e, "CNI DEL of a finished pod");
                }
            }
            if let Err(e) = rt.stop_pod_sandbox(&sb.id).await {
                tracing::warn!(sandbox = %sb.id, error = %e, "stopping the sandbox of a finished pod");
            }
        }
    }

    fn pending_view(&self, spec: &k8s_openapi::api::core::v1::PodSpec) -> PodView {
        let waiting = |c: &Container| ContainerView {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            waiting: Some(("ContainerCreating".into(), String::new())),
            ..Default::default()
        };
        let init_waiting = |c: &Container| ContainerView {
            waiting: Some(("PodInitializing".into(), String::new())),
            ..waiting(c)
        };
        PodView {
            init: spec
                .init_containers
                .iter()
                .flatten()
                .map(init_waiting)
                .collect(),
            containers: spec.containers.iter().map(waiting).collect(),
            pod_ips: vec![],
            host_ip: self.ctx.host_ip.clone(),
            sandbox_ready: false,
        }
    }

    fn view_of(
        &self,
        c: &Container,
        current: Option<CriStatus>,
        previous: Option<CriStatus>,
    ) -> ContainerView {
        let probes = current.as_ref().and_then(|s| self.probes.get(&s.id));
        let has_readiness = c.readiness_probe.is_some();
        let has_startup = c.startup_probe.is_some();
        let running = current
            .as_ref()
            .is_some_and(|s| s.state == CriState::Running);
        let started = running && (!has_startup || probes.is_some_and(|p| p.started));
        let ready = started && (!has_readiness || probes.is_some_and(|p| p.ready));
        ContainerView {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            waiting: self.waiting.get(&c.name).cloned(),
            current,
            previous,
            ready,
            started,
        }
    }

    /// The pod's containers grouped by name, newest attempt first; older ones are removed.
    async fn instances(&self) -> Result<Instances, capstan_runtime::cri::RuntimeError> {
        let list = self
            .ctx
            .runtime
            .list_containers(&ContainerFilter {
                label_selector: BTreeMap::from([(labels::POD_UID.to_string(), self.uid.clone())]),
                ..Default::default()
            })
            .await?;
        let mut by_name: BTreeMap<String, Vec<capstan_runtime::cri::Container>> = BTreeMap::new();
        for c in list {
            let name = c
                .labels
                .get(labels::CONTAINER_NAME)
                .cloned()
                .unwrap_or_else(|| c.metadata.name.clone());
            by_name.entry(name).or_default().push(c);
        }
        let mut out = Instances::new();
        for (name, mut list) in by_name {
            list.sort_by(|a, b| {
                (b.metadata.attempt, b.created_at).cmp(&(a.metadata.attempt, a.created_at))
            });
            for old in list.iter().skip(2) {
                let _ = self.ctx.runtime.remove_container(&old.id).await;
            }
            let mut statuses = Vec::new();
            for c in list.iter().take(2) {
                if let Ok(s) = self.ctx.runtime.container_status(&c.id).await {
                    statuses.push(s);
                }
            }
            let mut it = statuses.into_iter();
            out.insert(name, (it.next(), it.next()));
        }
        Ok(out)
    }

    /// Whether (and as which attempt) `c` must be started now, applying back-off.
    fn decide(&mut self, c: &Container, current: Option<&CriStatus>, policy: &str) -> Action {
        let Some(cur) = current else {
            return Action::Start(0);
        };
        match cur.state {
            CriState::Running => {
                self.waiting.remove(&c.name);
                Action::Nothing
            }
            CriState::Created | CriState::Unknown => Action::Nothing,
            CriState::Exited => {
                let restart = match policy {
                    "Never" => false,
                    "OnFailure" => cur.exit_code != 0,
                    _ => true,
                };
                if !restart {
                    self.waiting.remove(&c.name);
                    return Action::Nothing;
                }
                let now = jiff::Timestamp::now();
                let finished = cur.finished_at.unwrap_or(now);
                if let Some(left) = self.restart_backoff.remaining(&c.name, finished, now) {
                    let delay = self.restart_backoff.delay(&c.name).unwrap_or_default();
                    let message = format!(
                        "back-off {} restarting failed container={} pod={}_{}({})",
                        humanize(delay),
                        c.name,
                        self.pod_name(),
                        self.namespace(),
                        self.uid
                    );
                    let fresh =
                        self.waiting.get(&c.name).map(|w| w.0.as_str()) != Some("CrashLoopBackOff");
                    self.waiting
                        .insert(c.name.clone(), ("CrashLoopBackOff".into(), message));
                    if fresh {
                        let (ctx, pod, name) = (self.ctx.clone(), self.pod.clone(), c.name.clone());
                        let message = format!(
                            "Back-off restarting failed container {name} in pod {}_{}({})",
                            self.pod_name(),
                            self.namespace(),
                            self.uid
                        );
                        tokio::spawn(async move {
                            ctx.recorder
                                .pod(&pod, EventType::Warning, "BackOff", &message, Some(&name))
                                .await;
                        });
                    }
                    self.wake = Some(left.min(self.wake.unwrap_or(left)));
                    return Action::Nothing;
                }
                self.restart_backoff.next(&c.name, now);
                Action::Start(cur.metadata.attempt + 1)
            }
        }
    }

    async fn start(&mut self, c: &Container, attempt: u32) {
        match self.start_container(c, attempt).await {
            Ok(_) => {
                self.waiting.remove(&c.name);
            }
            Err((reason, message)) => {
                self.waiting.insert(c.name.clone(), (reason, message));
            }
        }
    }

    /// Starts probers for running containers that have none, stops those of gone containers.
    fn ensure_probers(&mut self, containers: &[Container], views: &[ContainerView]) {
        let mut live = std::collections::HashSet::new();
        for (c, v) in containers.iter().zip(views) {
            let Some(cur) = v.current.as_ref().filter(|s| s.state == CriState::Running) else {
                continue;
            };
            live.insert(cur.id.clone());
            if self.probes.contains_key(&cur.id) {
                continue;
            }
            let stop = self.stop.child_token();
            let target = ProbeTarget {
                runtime: self.ctx.runtime.clone(),
                container_id: cur.id.clone(),
                pod_ip: self
                    .sandbox
                    .as_ref()
                    .and_then(|s| s.ips.first().cloned())
                    .unwrap_or_default(),
            };
            for (kind, probe) in [
                (ProbeKind::Startup, &c.startup_probe),
                (ProbeKind::Liveness, &c.liveness_probe),
                (ProbeKind::Readiness, &c.readiness_probe),
            ] {
                let Some(probe) = probe.clone() else { continue };
                let (stop, tx, c, target) = (
                    stop.clone(),
                    self.probe_tx.clone(),
                    c.clone(),
                    target.clone(),
                );
                let gate = if kind != ProbeKind::Startup && c.startup_probe.is_some() {
                    Some(self.probe_tx.clone())
                } else {
                    None
                };
                let _ = gate;
                tokio::spawn(run_prober(kind, probe, c, target, tx, stop));
            }
            self.probes.insert(
                cur.id.clone(),
                ProbeState {
                    stop,
                    ready: false,
                    started: false,
                    liveness_failed: false,
                    startup_failed: false,
                },
            );
        }
        self.probes.retain(|id, p| {
            let keep = live.contains(id);
            if !keep {
                p.stop.cancel();
            }
            keep
        });
    }

    /// A prober's report: Unhealthy events, readiness, and restarts on liveness failure.
    pub(super) async fn on_probe(&mut self, r: ProbeReport) {
        let spec = self.pod.spec.clone().unwrap_or_default();
        let has_startup = spec
            .containers
            .iter()
            .any(|c| c.name == r.container_name && c.startup_probe.is_some());
        let started = self.probes.get(&r.container_id).is_none_or(|p| p.started);
        // Until the startup probe succeeds, liveness and readiness do not count.
        if has_startup && !started && r.kind != ProbeKind::Startup {
            return;
        }
        if let Some(message) = &r.failure {
            let text = format!("{} probe failed: {message}", r.kind.name());
            self.ctx
                .recorder
                .pod(
                    &self.pod,
                    EventType::Warning,
                    "Unhealthy",
                    &text,
                    Some(&r.container_name),
                )
                .await;
        }
        let Some(p) = self.probes.get_mut(&r.container_id) else {
            return;
        };
        match (r.kind, r.healthy) {
            (ProbeKind::Readiness, Some(h)) => p.ready = h,
            (ProbeKind::Startup, Some(true)) => p.started = true,
            (ProbeKind::Startup, Some(false)) => p.startup_failed = true,
            (ProbeKind::Liveness, Some(false)) => p.liveness_failed = true,
            _ => {}
        }
        if p.liveness_failed || p.startup_failed {
            let kind = if p.liveness_failed {
                "liveness"
            } else {
                "startup"
            };
            p.stop.cancel();
            self.probes.remove(&r.container_id);
            let c = spec
                .containers
                .iter()
                .find(|c| c.name == r.container_name)
                .cloned();
            let message = format!(
                "Container {} failed {kind} probe, will be restarted",
                r.container_name
            );
            self.ctx
                .recorder
                .pod(
                    &self.pod,
                    EventType::Normal,
                    "Killing",
                    &message,
                    Some(&r.container_name),
                )
                .await;
            if let Some(c) = c {
                let grace = self.grace_period();
                self.kill_container(&c, &r.container_id, grace).await;
            }
        }
        if r.healthy.is_some() {
            self.wake = Some(Duration::ZERO);
        }
    }

    fn grace_period(&self) -> i64 {
        self.pod
            .metadata
            .deletion_grace_period_seconds
            .or(self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(DEFAULT_GRACE)
            .max(0)
    }

    /// Stops every container gracefully, tears the pod down and removes the pod object.
    async fn terminate(&mut self) {
        for (_, p) in self.probes.drain() {
            p.stop.cancel();
        }
        let grace = self.grace_period();
        let spec = self.pod.spec.clone().unwrap_or_default();
        if let Ok(instances) = self.instances().await {
            let mut stops = Vec::new();
            let all: Vec<Container> = spec
                .init_containers
                .iter()
                .flatten()
                .chain(&spec.containers)
                .cloned()
                .collect();
            for c in all {
                if let Some((Some(cur), _)) = instances.get(&c.name)
                    && cur.state == CriState::Running
                {
                    let id = cur.id.clone();
                    let message = format!("Stopping container {}", c.name);
                    self.ctx
                        .recorder
                        .pod(
                            &self.pod,
                            EventType::Normal,
                            "Killing",
                            &message,
                            Some(&c.name),
                        )
                        .await;
                    stops.push((c, id));
                }
            }
            let this = &*self;
            futures::future::join_all(
                stops
                    .iter()
                    .map(|(c, id)| this.kill_container(c, id, grace)),
            )
            .await;
        }
        self.teardown_sandboxes().await;
        if let Err(e) = self.ctx.volumes.teardown(&self.uid).await {
            tracing::warn!(pod = %self.pod_name(), error = %e, "tearing down volumes");
        }
        let _ = std::fs::remove_dir_all(self.ctx.pods_dir.join(&self.uid));
        let _ = std::fs::remove_dir_all(self.log_dir());
        if !self.gone {
            delete_pod(&self.ctx.client, &self.pod).await;
        }
    }
}

/// The final delete with grace 0 once the pod's containers are stopped, as the kubelet does.
async fn delete_pod(client: &kube::Client, pod: &Pod) {
    let api: kube::Api<Pod> = kube::Api::namespaced(
        client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or_default(),
    );
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api
        .delete(pod.metadata.name.as_deref().unwrap_or_default(), &params)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(e) => tracing::warn!(error = %e, "deleting the terminated pod"),
    }
}

/// `10s`, `1m20s`, `5m0s` as Go prints durations.
pub(crate) fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else {
        format!("{}m{}s", s / 60, s % 60)
    }
}
