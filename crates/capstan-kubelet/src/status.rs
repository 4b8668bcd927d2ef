//! Pod status as upstream computes it: phase, conditions, IPs, start time, QoS class and the
//! container statuses, from what the runtime reports and what the pod worker is waiting on.

use capstan_runtime::cri::{ContainerState as CriState, ContainerStatus as CriStatus};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::resources::qos_class;

/// The containerID prefix (upstream: `containerd://`, `cri-o://`).
pub const CONTAINER_ID_PREFIX: &str = "capstan://";

/// One container of the pod as the worker sees it.
#[derive(Clone, Debug, Default)]
pub struct ContainerView {
    pub name: String,
    /// The image of the spec.
    pub image: String,
    /// The latest runtime container (highest attempt), if any.
    pub current: Option<CriStatus>,
    /// The one before it, for lastState.
    pub previous: Option<CriStatus>,
    /// Why the container waits (reason, message): ErrImagePull, CrashLoopBackOff, ...
    pub waiting: Option<(String, String)>,
    pub ready: bool,
    /// Passed its startup probe (or has none) and runs.
    pub started: bool,
}

/// The pod as the worker sees it.
#[derive(Clone, Debug, Default)]
pub struct PodView {
    pub init: Vec<ContainerView>,
    pub containers: Vec<ContainerView>,
    pub pod_ips: Vec<String>,
    pub host_ip: String,
    pub sandbox_ready: bool,
}

fn terminated(s: &CriStatus) -> ContainerStateTerminated {
    let reason = if s.reason.is_empty() {
        if s.exit_code == 0 {
            "Completed"
        } else {
            "Error"
        }
        .to_string()
    } else {
        s.reason.clone()
    };
    ContainerStateTerminated {
        exit_code: s.exit_code,
        reason: Some(reason),
        message: (!s.message.is_empty()).then(|| s.message.clone()),
        started_at: s.started_at.map(Time),
        finished_at: s.finished_at.map(Time),
        container_id: Some(format!("{CONTAINER_ID_PREFIX}{}", s.id)),
        signal: None,
    }
}

fn state_of(s: &CriStatus) -> ContainerState {
    match s.state {
        CriState::Running => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: s.started_at.map(Time),
            }),
            ..Default::default()
        },
        CriState::Exited => ContainerState {
            terminated: Some(terminated(s)),
            ..Default::default()
        },
        CriState::Created => waiting("ContainerCreating", ""),
        CriState::Unknown => ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: 137,
                reason: Some("ContainerStatusUnknown".into()),
                message: Some(
                    "The container could not be located when the pod was terminated".into(),
                ),
                container_id: Some(format!("{CONTAINER_ID_PREFIX}{}", s.id)),
                ..Default::default()
            }),
            ..Default::default()
        },
    }
}

fn waiting(reason: &str, message: &str) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_string()),
            message: (!message.is_empty()).then(|| message.to_string()),
        }),
        ..Default::default()
    }
}

fn exited(s: &Option<CriStatus>) -> Option<&CriStatus> {
    s.as_ref().filter(|s| s.state == CriState::Exited)
}

/// The API status of one container.
pub fn container_status(v: &ContainerView) -> ContainerStatus {
    let (state, last) = match (&v.waiting, &v.current) {
        (Some((reason, message)), current) => {
            let last = exited(current).or(exited(&v.previous).filter(|_| current.is_none()));
            let last = last.or_else(|| exited(&v.previous));
            (waiting(reason, message), last)
        }
        (None, Some(current)) => (state_of(current), exited(&v.previous)),
        (None, None) => (waiting("ContainerCreating", ""), exited(&v.previous)),
    };
    let running = v
        .current
        .as_ref()
        .is_some_and(|c| c.state == CriState::Running)
        && v.waiting.is_none();
    ContainerStatus {
        name: v.name.clone(),
        image: v.image.clone(),
        image_id: v
            .current
            .as_ref()
            .map(|c| c.image_ref.clone())
            .unwrap_or_default(),
        container_id: v
            .current
            .as_ref()
            .map(|c| format!("{CONTAINER_ID_PREFIX}{}", c.id)),
        state: Some(state),
        last_state: Some(
            last.map(|l| ContainerState {
                terminated: Some(terminated(l)),
                ..Default::default()
            })
            .unwrap_or_default(),
        ),
        ready: v.ready && running,
        restart_count: v
            .current
            .as_ref()
            .map(|c| c.metadata.attempt as i32)
            .unwrap_or(0),
        started: Some(running && v.started),
        ..Default::default()
    }
}

fn succeeded(v: &ContainerView) -> bool {
    v.waiting.is_none() && exited(&v.current).is_some_and(|c| c.exit_code == 0)
}

/// Upstream's getPhase.
pub fn phase(pod: &Pod, view: &PodView) -> &'static str {
    let policy = pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always");
    let init_done = view.init.iter().all(succeeded);
    if !init_done {
        let init_failed = view
            .init
            .iter()
            .any(|v| exited(&v.current).is_some_and(|c| c.exit_code != 0));
        return if init_failed && policy == "Never" {
            "Failed"
        } else {
            "Pending"
        };
    }
    let (mut running, mut waiting_n, mut stopped, mut ok) = (0, 0, 0, 0);
    for v in &view.containers {
        let state = container_status(v).state.unwrap_or_default();
        if state.running.is_some() {
            running += 1;
        } else if let Some(t) = state.terminated {
            stopped += 1;
            if t.exit_code == 0 {
                ok += 1;
            }
        } else if v
            .current
            .as_ref()
            .is_some_and(|c| c.state == CriState::Exited)
        {
            // Waiting to restart after having run.
            stopped += 1;
        } else {
            waiting_n += 1;
        }
    }
    match () {
        _ if waiting_n > 0 => "Pending",
        _ if running > 0 => "Running",
        _ if stopped > 0 => match policy {
            "Always" => "Running",
            _ if stopped == ok => "Succeeded",
            "Never" => "Failed",
            _ => "Running",
        },
        _ => "Pending",
    }
}

fn condition(
    existing: &[PodCondition],
    kind: &str,
    status: bool,
    reason: Option<&str>,
    message: Option<String>,
    now: Timestamp,
) -> PodCondition {
    let status = if status { "True" } else { "False" }.to_string();
    let since = existing
        .iter()
        .find(|c| c.type_ == kind && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    PodCondition {
        type_: kind.to_string(),
        status,
        reason: reason.map(str::to_string),
        message,
        last_transition_time: Some(since),
        last_probe_time: None,
        observed_generation: None,
    }
}

fn names(list: Vec<&ContainerView>) -> String {
    let names: Vec<&str> = list.iter().map(|v| v.name.as_str()).collect();
    format!("[{}]", names.join(" "))
}

/// The whole status for `pod`, keeping start time and unchanged conditions' transition times.
pub fn compute(pod: &Pod, view: &PodView, now: Timestamp) -> PodStatus {
    let old = pod.status.clone().unwrap_or_default();
    let existing = old.conditions.clone().unwrap_or_default();
    let phase = phase(pod, view);
    let terminal = phase == "Succeeded" || phase == "Failed";
    let not_init: Vec<&ContainerView> = view.init.iter().filter(|v| !succeeded(v)).collect();
    let statuses: Vec<ContainerStatus> = view.containers.iter().map(container_status).collect();
    let unready: Vec<&ContainerView> = view
        .containers
        .iter()
        .zip(&statuses)
        .filter(|(_, s)| !s.ready)
        .map(|(v, _)| v)
        .collect();
    let ready = unready.is_empty() && !terminal;
    let (ready_reason, ready_message) = if terminal {
        (Some("PodCompleted"), None)
    } else if ready {
        (None, None)
    } else {
        (
            Some("ContainersNotReady"),
            Some(format!(
                "containers with unready status: {}",
                names(unready)
            )),
        )
    };
    let initialized = not_init.is_empty();
    let mut conditions = vec![
        condition(
            &existing,
            "PodReadyToStartContainers",
            view.sandbox_ready,
            None,
            None,
            now,
        ),
        condition(
            &existing,
            "Initialized",
            initialized,
            (!initialized).then_some("ContainersNotInitialized"),
            (!initialized)
                .then(|| format!("containers with incomplete status: {}", names(not_init))),
            now,
        ),
        condition(
            &existing,
            "Ready",
            ready,
            ready_reason,
            ready_message.clone(),
            now,
        ),
        condition(
            &existing,
            "ContainersReady",
            ready,
            ready_reason,
            ready_message,
            now,
        ),
        condition(&existing, "PodScheduled", true, None, None, now),
    ];
    let ours = [
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodScheduled",
    ];
    conditions.extend(
        existing
            .iter()
            .filter(|c| !ours.contains(&c.type_.as_str()))
            .cloned(),
    );
    let init_statuses: Vec<ContainerStatus> = view.init.iter().map(container_status).collect();
    PodStatus {
        phase: Some(phase.to_string()),
        conditions: Some(conditions),
        host_ip: Some(view.host_ip.clone()).filter(|h| !h.is_empty()),
        host_ips: (!view.host_ip.is_empty()).then(|| {
            vec![HostIP {
                ip: view.host_ip.clone(),
            }]
        }),
        pod_ip: view.pod_ips.first().cloned(),
        pod_ips: (!view.pod_ips.is_empty()).then(|| {
            view.pod_ips
                .iter()
                .map(|ip| PodIP { ip: ip.clone() })
                .collect()
        }),
        start_time: old.start_time.clone().or(Some(Time(now))),
        qos_class: Some(qos_class(pod).to_string()),
        container_statuses: Some(statuses),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        ..old
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_runtime::cri::ContainerMetadata;
    use k8s_openapi::api::core::v1::PodSpec;

    fn cri(id: &str, state: CriState, attempt: u32, exit_code: i32, reason: &str) -> CriStatus {
        let t = Timestamp::from_second(1_700_000_000).expect("time");
        CriStatus {
            id: id.into(),
            pod_sandbox_id: "s".into(),
            metadata: ContainerMetadata {
                name: "app".into(),
                attempt,
            },
            state,
            created_at: t,
            started_at: Some(t),
            finished_at: (state == CriState::Exited).then_some(t),
            exit_code,
            image: "busybox".into(),
            image_ref: "sha256:abc".into(),
            reason: reason.into(),
            message: String::new(),
            labels: Default::default(),
            annotations: Default::default(),
            log_path: Default::default(),
            pid: None,
        }
    }

    fn pod(policy: &str) -> Pod {
        Pod {
            spec: Some(PodSpec {
                restart_policy: Some(policy.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn view(c: ContainerView) -> PodView {
        PodView {
            containers: vec![c],
            pod_ips: vec!["10.42.0.9".into()],
            host_ip: "192.168.1.2".into(),
            sandbox_ready: true,
            ..Default::default()
        }
    }

    #[test]
    fn running_and_ready() {
        let v = ContainerView {
            name: "app".into(),
            image: "busybox".into(),
            current: Some(cri("c1", CriState::Running, 0, 0, "")),
            ready: true,
            started: true,
            ..Default::default()
        };
        let s = compute(&pod("Always"), &view(v), Timestamp::now());
        assert_eq!(s.phase.as_deref(), Some("Running"));
        let cs = &s.container_statuses.as_ref().expect("statuses")[0];
        assert!(cs.ready);
        assert_eq!(cs.container_id.as_deref(), Some("capstan://c1"));
        assert_eq!(cs.started, Some(true));
        let ready = s
            .conditions
            .expect("conditions")
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .expect("Ready");
        assert_eq!(ready.status, "True");
        assert_eq!(s.pod_ip.as_deref(), Some("10.42.0.9"));
        assert_eq!(s.qos_class.as_deref(), Some("BestEffort"));
    }

    #[test]
    fn crash_loop_shows_waiting_with_last_state_and_restart_count() {
        let v = ContainerView {
            name: "app".into(),
            current: Some(cri("c2", CriState::Exited, 1, 137, "OOMKilled")),
            previous: Some(cri("c1", CriState::Exited, 0, 1, "")),
            waiting: Some((
                "CrashLoopBackOff".into(),
                "back-off 10s restarting failed container".into(),
            )),
            ..Default::default()
        };
        let s = compute(&pod("Always"), &view(v), Timestamp::now());
        assert_eq!(s.phase.as_deref(), Some("Running"));
        let cs = &s.container_statuses.expect("statuses")[0];
        assert_eq!(cs.restart_count, 1);
        let w = cs
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .expect("waiting");
        assert_eq!(w.reason.as_deref(), Some("CrashLoopBackOff"));
        let last = cs
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .expect("last");
        assert_eq!(
            (last.exit_code, last.reason.as_deref()),
            (137, Some("OOMKilled"))
        );
        assert!(!cs.ready);
    }

    #[test]
    fn phases_per_restart_policy() {
        let done = |code| ContainerView {
            name: "app".into(),
            current: Some(cri("c", CriState::Exited, 0, code, "")),
            ..Default::default()
        };
        assert_eq!(phase(&pod("Never"), &view(done(0))), "Succeeded");
        assert_eq!(phase(&pod("Never"), &view(done(1))), "Failed");
        assert_eq!(phase(&pod("OnFailure"), &view(done(0))), "Succeeded");
        let s = compute(&pod("Never"), &view(done(1)), Timestamp::now());
        let t = s.container_statuses.expect("s")[0]
            .state
            .clone()
            .expect("state")
            .terminated
            .expect("terminated");
        assert_eq!(t.reason.as_deref(), Some("Error"));
        let pull = ContainerView {
            name: "app".into(),
            waiting: Some(("ErrImagePull".into(), "no such image".into())),
            ..Default::default()
        };
        assert_eq!(phase(&pod("Always"), &view(pull)), "Pending");
    }

    #[test]
    fn init_containers_gate_initialized() {
        let mut v = view(ContainerView {
            name: "app".into(),
            ..Default::default()
        });
        v.init = vec![ContainerView {
            name: "setup".into(),
            current: Some(cri("i", CriState::Running, 0, 0, "")),
            ..Default::default()
        }];
        let s = compute(&pod("Always"), &v, Timestamp::now());
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        let init = s
            .conditions
            .expect("c")
            .into_iter()
            .find(|c| c.type_ == "Initialized")
            .expect("Initialized");
        assert_eq!(
            (init.status.as_str(), init.message.as_deref()),
            ("False", Some("containers with incomplete status: [setup]"))
        );
        v.init[0].current = Some(cri("i", CriState::Exited, 0, 1, ""));
        assert_eq!(phase(&pod("Never"), &v), "Failed");
    }
}
