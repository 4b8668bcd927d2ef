//! Resource quantities and a pod's effective requests (upstream's `PodRequests` rules).

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::collections::BTreeMap;

/// CPU assumed for a container without a CPU request when scoring (upstream's 100m).
pub const DEFAULT_MILLI_CPU: i64 = 100;
/// Memory assumed for a container without a memory request when scoring (200Mi).
pub const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

pub use capstan_api::quantity::parse as parse_quantity;

fn milli(q: &Quantity) -> i64 {
    parse_quantity(&q.0).map_or(0, |v| (v * 1000.0).ceil() as i64)
}

fn whole(q: &Quantity) -> i64 {
    parse_quantity(&q.0).map_or(0, |v| v.ceil() as i64)
}

/// Amounts of the resources the scheduler accounts for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    pub pods: i64,
    /// Extended resources (`example.com/gpu`, `hugepages-2Mi`, ...).
    pub scalar: BTreeMap<String, i64>,
}

impl Resources {
    /// From a ResourceList (node allocatable or container requests).
    pub fn from_list(list: &BTreeMap<String, Quantity>) -> Resources {
        let mut r = Resources::default();
        for (name, q) in list {
            match name.as_str() {
                "cpu" => r.milli_cpu = milli(q),
                "memory" => r.memory = whole(q),
                "ephemeral-storage" => r.ephemeral_storage = whole(q),
                "pods" => r.pods = whole(q),
                n if n.contains('/') || n.starts_with("hugepages-") => {
                    r.scalar.insert(name.clone(), whole(q));
                }
                _ => {}
            }
        }
        r
    }

    pub fn add(&mut self, o: &Resources) {
        self.milli_cpu += o.milli_cpu;
        self.memory += o.memory;
        self.ephemeral_storage += o.ephemeral_storage;
        self.pods += o.pods;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() += v;
        }
    }

    pub fn sub(&mut self, o: &Resources) {
        self.milli_cpu -= o.milli_cpu;
        self.memory -= o.memory;
        self.ephemeral_storage -= o.ephemeral_storage;
        self.pods -= o.pods;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() -= v;
        }
    }

    /// Element-wise maximum.
    pub fn max_with(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.max(o.milli_cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(o.ephemeral_storage);
        for (k, v) in &o.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }
}

/// A container's requests; a limit stands in for a missing request (API defaulting does so).
fn container_requests(c: &Container) -> Resources {
    let Some(res) = c.resources.as_ref() else {
        return Resources::default();
    };
    let mut list = res.limits.clone().unwrap_or_default();
    if let Some(req) = &res.requests {
        list.extend(req.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    Resources::from_list(&list)
}

fn non_zero(mut r: Resources) -> Resources {
    if r.milli_cpu == 0 {
        r.milli_cpu = DEFAULT_MILLI_CPU;
    }
    if r.memory == 0 {
        r.memory = DEFAULT_MEMORY;
    }
    r
}

/// A pod's requests: max(sum of containers + sidecars, each init container + sidecars started
/// before it), plus the pod overhead. With `non_zero`, empty cpu/memory requests count as the
/// scoring defaults.
pub fn pod_requests(pod: &Pod, with_non_zero: bool) -> Resources {
    let Some(spec) = pod.spec.as_ref() else {
        return Resources::default();
    };
    let conv = |c: &Container| {
        let r = container_requests(c);
        if with_non_zero { non_zero(r) } else { r }
    };
    let mut sum = Resources::default();
    for c in &spec.containers {
        sum.add(&conv(c));
    }
    let mut sidecars = Resources::default();
    let mut init_max = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let r = conv(c);
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars.add(&r);
            init_max.max_with(&sidecars);
        } else {
            let mut effective = r;
            effective.add(&sidecars);
            init_max.max_with(&effective);
        }
    }
    sum.add(&sidecars);
    sum.max_with(&init_max);
    if let Some(overhead) = &spec.overhead {
        sum.add(&Resources::from_list(overhead));
    }
    sum.pods = 0;
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities_parse_like_upstream() {
        let cases = [
            ("100m", 0.1),
            ("1", 1.0),
            ("1.5", 1.5),
            ("128Mi", 134217728.0),
            ("1Gi", 1073741824.0),
            ("2k", 2000.0),
            ("1e3", 1000.0),
            ("1E", 1e18),
        ];
        for (text, want) in cases {
            assert_eq!(parse_quantity(text), Some(want), "{text}");
        }
        assert_eq!(parse_quantity("12x"), None);
    }

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    fn c(name: &str, cpu: &str, mem: &str) -> serde_json::Value {
        json!({"name": name, "image": "i", "resources": {"requests": {"cpu": cpu, "memory": mem}}})
    }

    #[test]
    fn init_containers_take_the_max_and_overhead_adds() {
        let p = pod(json!({
            "containers": [c("a", "100m", "100Mi"), c("b", "200m", "100Mi")],
            "initContainers": [c("i1", "500m", "50Mi"), c("i2", "100m", "1Gi")],
            "overhead": {"cpu": "10m", "memory": "1Mi"}
        }));
        let r = pod_requests(&p, false);
        assert_eq!(r.milli_cpu, 510);
        assert_eq!(r.memory, 1024 * 1024 * 1024 + 1024 * 1024);
    }

    #[test]
    fn sidecars_add_to_containers_and_later_init_containers() {
        let mut side = c("s", "100m", "10Mi");
        side["restartPolicy"] = json!("Always");
        let p = pod(json!({
            "containers": [c("a", "100m", "10Mi")],
            "initContainers": [side, c("i", "300m", "10Mi")],
        }));
        assert_eq!(pod_requests(&p, false).milli_cpu, 400);
    }

    #[test]
    fn limits_stand_in_for_requests_and_non_zero_defaults_apply() {
        let p = pod(json!({"containers": [
            {"name": "a", "image": "i", "resources": {"limits": {"cpu": "2"}}},
            {"name": "b", "image": "i"}
        ]}));
        assert_eq!(pod_requests(&p, false).milli_cpu, 2000);
        let nz = pod_requests(&p, true);
        assert_eq!(nz.milli_cpu, 2100);
        assert_eq!(nz.memory, 2 * DEFAULT_MEMORY);
    }
}
