//! Sums of resource quantities for status fields (quota usage, budgets): parsing through
//! `capstan_api::quantity` and printing back in the canonical form kubectl shows (`500m`,
//! `2`, `768Mi`, `1G`).

use capstan_api::quantity;
use capstan_api::quantity::format as format_quantity;
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// A running total of one resource (`cpu` in cores, anything else in base units).
#[derive(Clone, Debug, PartialEq)]
pub struct QuantitySum {
    cpu: bool,
    total: f64,
}

impl QuantitySum {
    pub fn new(resource: &str) -> QuantitySum {
        QuantitySum {
            cpu: resource == "cpu",
            total: 0.0,
        }
    }

    /// An object count.
    pub fn count(n: usize) -> QuantitySum {
        QuantitySum {
            cpu: false,
            total: n as f64,
        }
    }

    pub fn add(&mut self, value: f64) {
        self.total += value;
    }

    pub fn quantity(&self) -> Quantity {
        Quantity(format_quantity(self.total, self.cpu))
    }
}

/// One container's `section` ("requests" or "limits") of `resource`; requests fall back to
/// limits, as API defaulting does.
fn container_value(c: &Container, section: &str, resource: &str) -> f64 {
    let r = c.resources.as_ref();
    let get = |m: Option<&std::collections::BTreeMap<String, Quantity>>| {
        m.and_then(|m| m.get(resource))
            .and_then(|q| quantity::parse(&q.0))
    };
    let limits = get(r.and_then(|r| r.limits.as_ref()));
    match section {
        "limits" => limits.unwrap_or(0.0),
        _ => get(r.and_then(|r| r.requests.as_ref()))
            .or(limits)
            .unwrap_or(0.0),
    }
}

/// The pod's effective request or limit of `resource`, as upstream computes it: the larger of
/// the containers' sum and any one init container, plus the pod overhead.
pub fn pod_compute(pod: &Pod, section: &str, resource: &str) -> f64 {
    let Some(spec) = pod.spec.as_ref() else {
        return 0.0;
    };
    let sum: f64 = spec
        .containers
        .iter()
        .map(|c| container_value(c, section, resource))
        .sum();
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| container_value(c, section, resource))
        .fold(0.0, f64::max);
    let overhead = spec
        .overhead
        .as_ref()
        .and_then(|o| o.get(resource))
        .and_then(|q| quantity::parse(&q.0))
        .unwrap_or(0.0);
    sum.max(init) + overhead
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_print_in_canonical_form() {
        assert_eq!(format_quantity(0.5, true), "500m");
        assert_eq!(format_quantity(2.0, true), "2");
        assert_eq!(format_quantity(1.25, true), "1250m");
        assert_eq!(format_quantity((768u64 << 20) as f64, false), "768Mi");
        assert_eq!(format_quantity(1e9, false), "1G");
        assert_eq!(format_quantity(3.0, false), "3");
        assert_eq!(format_quantity(0.0, false), "0");
    }

    #[test]
    fn pod_requests_take_the_larger_of_containers_and_init_containers() {
        let pod: Pod = serde_json::from_value(serde_json::json!({"spec": {
        "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "1"}}}],
        "containers": [
            {"name": "a", "resources": {"requests": {"cpu": "200m", "memory": "64Mi"}}},
            {"name": "b", "resources": {"limits": {"cpu": "300m", "memory": "64Mi"}}},
        ]}}))
        .unwrap();
        assert_eq!(pod_compute(&pod, "requests", "cpu"), 1.0);
        assert_eq!(
            pod_compute(&pod, "requests", "memory"),
            (128u64 << 20) as f64
        );
        assert_eq!(pod_compute(&pod, "limits", "cpu"), 0.3);
        assert_eq!(pod_compute(&pod, "limits", "memory"), (64u64 << 20) as f64);
    }
}
