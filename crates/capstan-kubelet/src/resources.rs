//! Requests and limits: quantity parsing, QoS class, and the CRI Linux resources (cpu shares
//! and quota, memory limit, OOM score) the kubelet derives from them, as upstream does.

use std::collections::BTreeMap;

use capstan_runtime::cri::runtime_service::LinuxContainerResources;
use k8s_openapi::api::core::v1::{Container, Pod, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The CFS period the kubelet uses (100 ms).
pub const CPU_PERIOD: i64 = 100_000;
const MIN_SHARES: i64 = 2;
const MIN_QUOTA: i64 = 1000;

pub use capstan_api::quantity::parse as parse_quantity;

fn get(map: &Option<BTreeMap<String, Quantity>>, key: &str) -> Option<f64> {
    map.as_ref()?.get(key).and_then(|q| parse_quantity(&q.0))
}

/// Requests default to limits (the API server's defaulting, applied again here in case).
fn request(r: &ResourceRequirements, key: &str) -> Option<f64> {
    get(&r.requests, key).or_else(|| get(&r.limits, key))
}

/// The pod's QoS class: Guaranteed, Burstable or BestEffort.
pub fn qos_class(pod: &Pod) -> &'static str {
    let Some(spec) = &pod.spec else {
        return "BestEffort";
    };
    let all: Vec<&Container> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in all {
        let r = c.resources.clone().unwrap_or_default();
        for key in ["cpu", "memory"] {
            let req = request(&r, key);
            let lim = get(&r.limits, key);
            if req.is_some() || lim.is_some() {
                any = true;
            }
            match (req, lim) {
                (Some(a), Some(b)) if a == b => {}
                _ => guaranteed = false,
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// The CRI resources for `container` of a pod of class `qos` on a node with `memory_capacity`.
pub fn linux_resources(
    container: &Container,
    qos: &str,
    memory_capacity: i64,
) -> LinuxContainerResources {
    let r = container.resources.clone().unwrap_or_default();
    let cpu_request_milli = request(&r, "cpu").map(|c| (c * 1000.0).round() as i64);
    let cpu_limit_milli = get(&r.limits, "cpu").map(|c| (c * 1000.0).round() as i64);
    let memory_limit = get(&r.limits, "memory").map(|m| m as i64).unwrap_or(0);
    let memory_request = request(&r, "memory").map(|m| m as i64).unwrap_or(0);
    let cpu_shares = cpu_request_milli
        .map(|m| (m * 1024 / 1000).max(MIN_SHARES))
        .unwrap_or(MIN_SHARES);
    let (cpu_quota, cpu_period) = match cpu_limit_milli {
        Some(m) if m > 0 => ((m * CPU_PERIOD / 1000).max(MIN_QUOTA), CPU_PERIOD),
        _ => (0, 0),
    };
    let oom_score_adj = match qos {
        "Guaranteed" => -997,
        "BestEffort" => 1000,
        _ if memory_capacity > 0 => {
            let adj = 1000 - (1000 * memory_request) / memory_capacity;
            adj.clamp(2, 999)
        }
        _ => 999,
    };
    LinuxContainerResources {
        cpu_period,
        cpu_quota,
        cpu_shares,
        memory_limit_in_bytes: memory_limit,
        oom_score_adj,
        pids_limit: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    fn container(req: &[(&str, &str)], lim: &[(&str, &str)]) -> Container {
        let map = |kv: &[(&str, &str)]| {
            (!kv.is_empty()).then(|| {
                kv.iter()
                    .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                    .collect()
            })
        };
        Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                requests: map(req),
                limits: map(lim),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod(containers: Vec<Container>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("100m"), Some(0.1));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("64Mi"), Some(67108864.0));
        assert_eq!(parse_quantity("1G"), Some(1e9));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("12x"), None);
    }

    #[test]
    fn qos_classes() {
        assert_eq!(qos_class(&pod(vec![container(&[], &[])])), "BestEffort");
        let g = container(&[], &[("cpu", "500m"), ("memory", "64Mi")]);
        assert_eq!(qos_class(&pod(vec![g.clone()])), "Guaranteed");
        let b = container(&[("memory", "32Mi")], &[("memory", "64Mi")]);
        assert_eq!(qos_class(&pod(vec![g, b])), "Burstable");
    }

    #[test]
    fn cri_resources_follow_upstream_formulas() {
        let c = container(
            &[("cpu", "250m"), ("memory", "1Gi")],
            &[("cpu", "500m"), ("memory", "2Gi")],
        );
        let r = linux_resources(&c, "Burstable", 8 << 30);
        assert_eq!(r.cpu_shares, 256);
        assert_eq!(r.cpu_quota, 50_000);
        assert_eq!(r.cpu_period, CPU_PERIOD);
        assert_eq!(r.memory_limit_in_bytes, 2 << 30);
        assert_eq!(r.oom_score_adj, 875);
        let none = linux_resources(&container(&[], &[]), "BestEffort", 8 << 30);
        assert_eq!(
            (none.cpu_shares, none.cpu_quota, none.memory_limit_in_bytes),
            (2, 0, 0)
        );
        assert_eq!(none.oom_score_adj, 1000);
    }
}
