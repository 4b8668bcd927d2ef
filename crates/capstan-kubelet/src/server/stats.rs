//! `/stats/summary`, kept modest: node CPU and memory from /proc, and the pods and containers
//! the runtime knows with their start times (per-container usage is not collected yet).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use capstan_runtime::cri::runtime_service::{ContainerFilter, ContainerState, PodSandboxFilter};
use jiff::Timestamp;
use serde_json::{Value, json};

use super::AppState;
use crate::labels::{CONTAINER_NAME, POD_NAME, POD_NAMESPACE, POD_UID};

/// Parses /proc/meminfo into (total, available) bytes.
pub fn meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

/// Total busy CPU time of the node in nanoseconds, from the `cpu` line of /proc/stat.
pub fn cpu_busy_nanos(stat: &str, ticks_per_sec: u64) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
    let busy: u64 = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| *x)
        .sum();
    Some(busy.saturating_mul(1_000_000_000 / ticks_per_sec.max(1)))
}

pub async fn summary(State(st): State<AppState>) -> Json<Value> {
    let now = Timestamp::now().to_string();
    let node_name = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let mem = tokio::fs::read_to_string("/proc/meminfo")
        .await
        .ok()
        .and_then(|t| meminfo(&t));
    let cpu = tokio::fs::read_to_string("/proc/stat")
        .await
        .ok()
        .and_then(|t| cpu_busy_nanos(&t, 100));
    let mut node = json!({"nodeName": node_name, "startTime": now});
    if let Some(c) = cpu {
        node["cpu"] = json!({"time": now, "usageCoreNanoSeconds": c});
    }
    if let Some((total, avail)) = mem {
        let used = total.saturating_sub(avail);
        node["memory"] = json!({"time": now, "availableBytes": avail, "usageBytes": used, "workingSetBytes": used});
    }
    let sandboxes = st
        .runtime
        .list_pod_sandboxes(&PodSandboxFilter::default())
        .await
        .unwrap_or_default();
    let containers = st
        .runtime
        .list_containers(&ContainerFilter {
            state: Some(ContainerState::Running),
            ..Default::default()
        })
        .await
        .unwrap_or_default();
    let mut by_sandbox: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for c in &containers {
        by_sandbox.entry(c.pod_sandbox_id.as_str()).or_default().push(json!({
            "name": c.labels.get(CONTAINER_NAME).cloned().unwrap_or_else(|| c.metadata.name.clone()),
            "startTime": c.created_at.to_string(),
        }));
    }
    let pods: Vec<Value> = sandboxes
        .iter()
        .filter(|s| s.labels.contains_key(POD_NAME))
        .map(|s| {
            let label = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
            json!({
                "podRef": {"name": label(POD_NAME), "namespace": label(POD_NAMESPACE), "uid": label(POD_UID)},
                "startTime": s.created_at.to_string(),
                "containers": by_sandbox.remove(s.id.as_str()).unwrap_or_default(),
            })
        })
        .collect();
    Json(json!({"node": node, "pods": pods}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_parsing() {
        let m = "MemTotal:       2000 kB\nMemFree: 10 kB\nMemAvailable:   500 kB\n";
        assert_eq!(meminfo(m), Some((2000 * 1024, 500 * 1024)));
        let s = "cpu  10 0 5 100 7 1 1 0 0 0\ncpu0 1 1 1 1\n";
        assert_eq!(cpu_busy_nanos(s, 100), Some(17 * 10_000_000));
    }
}
