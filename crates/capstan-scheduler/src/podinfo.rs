//! A pod with everything the plugins need precomputed once (requests, ports, affinity terms).

use crate::resources::{Resources, pod_requests};
use crate::selectors::{NodeSelectorMatcher, NodeTerm, Selector};
use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm, Toleration};
use std::collections::BTreeMap;
use std::sync::Arc;

/// `namespace/name`, the key of pods in the cache and the queue.
pub fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// A host port a pod asks for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub protocol: String,
    pub ip: String,
    pub port: i32,
}

impl HostPort {
    /// Same port and protocol, and the addresses overlap (either is the wildcard).
    pub fn conflicts(&self, o: &HostPort) -> bool {
        let wild = |ip: &str| ip.is_empty() || ip == "0.0.0.0" || ip == "::";
        self.port == o.port
            && self.protocol == o.protocol
            && (self.ip == o.ip || wild(&self.ip) || wild(&o.ip))
    }
}

/// A compiled pod (anti-)affinity term.
#[derive(Clone, Debug)]
pub struct AffinityTerm {
    pub selector: Selector,
    /// Namespaces the term looks in; empty with `all_namespaces` = every namespace.
    pub namespaces: Vec<String>,
    pub all_namespaces: bool,
    pub topology_key: String,
}

impl AffinityTerm {
    fn from_api(t: &PodAffinityTerm, own_namespace: &str) -> AffinityTerm {
        let mut selector = Selector::from_api(t.label_selector.as_ref());
        let mut namespaces = t.namespaces.clone().unwrap_or_default();
        // An empty namespaceSelector ({}) selects all namespaces; a non-empty one would need
        // namespace labels, which this scheduler does not watch: it then adds no namespace.
        let all_namespaces = t.namespace_selector.as_ref().is_some_and(|s| {
            s.match_labels.as_ref().is_none_or(|m| m.is_empty())
                && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
        });
        if namespaces.is_empty() && t.namespace_selector.is_none() {
            namespaces.push(own_namespace.to_string());
        }
        if t.label_selector.is_none() {
            selector = Selector::nothing();
        }
        AffinityTerm {
            selector,
            namespaces,
            all_namespaces,
            topology_key: t.topology_key.clone(),
        }
    }

    /// Whether `pod` is one of the pods this term selects.
    pub fn matches(&self, pod: &PodInfo) -> bool {
        (self.all_namespaces || self.namespaces.contains(&pod.namespace))
            && self.selector.matches(&pod.labels)
    }
}

/// A compiled topology spread constraint.
#[derive(Clone, Debug)]
pub struct SpreadConstraint {
    pub max_skew: i32,
    pub topology_key: String,
    /// `DoNotSchedule` (filter) or `ScheduleAnyway` (score).
    pub hard: bool,
    pub selector: Selector,
    pub min_domains: i32,
}

/// A pod as the scheduler sees it.
#[derive(Debug)]
pub struct PodInfo {
    pub pod: Arc<Pod>,
    pub key: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub node_name: Option<String>,
    pub priority: i32,
    pub requests: Resources,
    /// Requests with the scoring defaults for empty cpu/memory.
    pub non_zero: Resources,
    pub host_ports: Vec<HostPort>,
    pub node_selector: Option<Selector>,
    pub required_node_affinity: Option<NodeSelectorMatcher>,
    pub preferred_node_affinity: Vec<(i64, NodeTerm)>,
    pub tolerations: Vec<Toleration>,
    pub required_affinity: Vec<AffinityTerm>,
    pub required_anti_affinity: Vec<AffinityTerm>,
    pub preferred_affinity: Vec<(i64, AffinityTerm)>,
    pub preferred_anti_affinity: Vec<(i64, AffinityTerm)>,
    pub spread: Vec<SpreadConstraint>,
    pub images: Vec<String>,
    pub terminating: bool,
    pub preemption_never: bool,
}

impl PodInfo {
    /// Precomputes `pod`; `priority` is resolved by the caller (spec.priority or its class).
    pub fn new(pod: Arc<Pod>, priority: i32) -> PodInfo {
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let mut host_ports = Vec::new();
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            for p in c.ports.iter().flatten() {
                if let Some(hp) = p.host_port.filter(|p| *p > 0) {
                    host_ports.push(HostPort {
                        protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        ip: p.host_ip.clone().unwrap_or_default(),
                        port: hp,
                    });
                }
            }
        }
        let affinity = spec.affinity.clone().unwrap_or_default();
        let node_aff = affinity.node_affinity.unwrap_or_default();
        let pod_aff = affinity.pod_affinity.unwrap_or_default();
        let anti = affinity.pod_anti_affinity.unwrap_or_default();
        let terms = |v: Option<Vec<PodAffinityTerm>>| -> Vec<AffinityTerm> {
            v.unwrap_or_default()
                .iter()
                .map(|t| AffinityTerm::from_api(t, &namespace))
                .collect()
        };
        let weighted = |v: Option<Vec<k8s_openapi::api::core::v1::WeightedPodAffinityTerm>>| {
            v.unwrap_or_default()
                .iter()
                .map(|w| {
                    (
                        i64::from(w.weight),
                        AffinityTerm::from_api(&w.pod_affinity_term, &namespace),
                    )
                })
                .collect::<Vec<_>>()
        };
        let spread = spec
            .topology_spread_constraints
            .iter()
            .flatten()
            .map(|c| {
                let mut selector = Selector::from_api(c.label_selector.as_ref());
                for k in c.match_label_keys.iter().flatten() {
                    if let Some(v) = labels.get(k) {
                        selector.and_equals(k, v);
                    }
                }
                SpreadConstraint {
                    max_skew: c.max_skew,
                    topology_key: c.topology_key.clone(),
                    hard: c.when_unsatisfiable != "ScheduleAnyway",
                    selector,
                    min_domains: c.min_domains.unwrap_or(1),
                }
            })
            .collect();
        let images = spec
            .containers
            .iter()
            .filter_map(|c| c.image.clone())
            .collect();
        PodInfo {
            key: format!("{namespace}/{name}"),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            node_name: spec.node_name.clone().filter(|n| !n.is_empty()),
            requests: pod_requests(&pod, false),
            non_zero: pod_requests(&pod, true),
            host_ports,
            node_selector: spec.node_selector.as_ref().map(Selector::from_map),
            required_node_affinity: node_aff
                .required_during_scheduling_ignored_during_execution
                .as_ref()
                .map(NodeSelectorMatcher::from_api),
            preferred_node_affinity: node_aff
                .preferred_during_scheduling_ignored_during_execution
                .iter()
                .flatten()
                .map(|p| (i64::from(p.weight), NodeTerm::from_api(&p.preference)))
                .collect(),
            tolerations: spec.tolerations.clone().unwrap_or_default(),
            required_affinity: terms(pod_aff.required_during_scheduling_ignored_during_execution),
            required_anti_affinity: terms(anti.required_during_scheduling_ignored_during_execution),
            preferred_affinity: weighted(
                pod_aff.preferred_during_scheduling_ignored_during_execution,
            ),
            preferred_anti_affinity: weighted(
                anti.preferred_during_scheduling_ignored_during_execution,
            ),
            spread,
            images,
            terminating: pod.metadata.deletion_timestamp.is_some(),
            preemption_never: spec.preemption_policy.as_deref() == Some("Never"),
            namespace,
            name,
            labels,
            priority,
            pod,
        }
    }

    pub fn has_affinity(&self) -> bool {
        !(self.required_affinity.is_empty()
            && self.required_anti_affinity.is_empty()
            && self.preferred_affinity.is_empty()
            && self.preferred_anti_affinity.is_empty())
    }
}
