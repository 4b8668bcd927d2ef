//! The proxy's view of the cluster: one [`ServicePort`] per Service port with the addresses it
//! is reached on and its backends from EndpointSlices. Pure functions, no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The EndpointSlice label naming its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Upstream's default sessionAffinityConfig.clientIP.timeoutSeconds (3 hours).
const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// A transport protocol as nft spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// From a Kubernetes protocol name (`TCP` when unset).
    pub fn parse(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// One backend of a Service port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// On this node (EndpointSlice `nodeName`).
    pub local: bool,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

/// One port of one Service, with everything the rules need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    /// The port's name ("" for a single unnamed port).
    pub port_name: String,
    pub protocol: Protocol,
    pub port: u16,
    /// ClusterIPs (none for headless Services).
    pub cluster_ips: Vec<Ipv4Addr>,
    pub node_port: Option<u16>,
    /// LoadBalancer ingress IPs (VIP mode) and spec.externalIPs: external destinations.
    pub external_ips: Vec<Ipv4Addr>,
    /// sessionAffinity ClientIP with this timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// externalTrafficPolicy Local.
    pub external_local: bool,
    /// internalTrafficPolicy Local.
    pub internal_local: bool,
    /// Every backend, sorted, one per address.
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// "ns/name:port" for logs and chain naming.
    pub fn key(&self) -> String {
        format!(
            "{}/{}:{}/{}",
            self.namespace,
            self.name,
            self.port_name,
            self.protocol.nft()
        )
    }

    /// The backends traffic may go to: the ready ones, or when none is ready those still serving
    /// while terminating (upstream's graceful drain); `local_only` keeps this node's.
    pub fn usable(&self, local_only: bool) -> Vec<&Endpoint> {
        let candidates = || {
            self.endpoints
                .iter()
                .filter(move |e| !local_only || e.local)
        };
        let ready: Vec<&Endpoint> = candidates().filter(|e| e.ready).collect();
        if !ready.is_empty() {
            return ready;
        }
        candidates()
            .filter(|e| e.serving && e.terminating)
            .collect()
    }

    /// Whether this port is reached from outside the cluster (NodePort, LB, external IPs).
    pub fn has_external(&self) -> bool {
        self.node_port.is_some() || !self.external_ips.is_empty()
    }
}

fn ipv4s<'a>(addrs: impl IntoIterator<Item = &'a String>) -> Vec<Ipv4Addr> {
    let set: BTreeSet<Ipv4Addr> = addrs.into_iter().filter_map(|a| a.parse().ok()).collect();
    set.into_iter().collect()
}

/// The ServicePorts of every proxied Service (not ExternalName), sorted by key, with backends
/// from the slices labelled for them; IPv4 only.
pub fn build(
    services: &[impl AsRef<Service>],
    slices: &[impl AsRef<EndpointSlice>],
    node_name: &str,
) -> Vec<ServicePort> {
    // (namespace, service) → slices
    let mut by_service: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for s in slices {
        let s = s.as_ref();
        if s.address_type != "IPv4" {
            continue;
        }
        let ns = s.metadata.namespace.clone().unwrap_or_default();
        let Some(svc) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        by_service.entry((ns, svc.clone())).or_default().push(s);
    }
    let mut out = Vec::new();
    for svc in services {
        let svc = svc.as_ref();
        let (Some(spec), Some(name)) = (svc.spec.as_ref(), svc.metadata.name.as_ref()) else {
            continue;
        };
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
        if ty == "ExternalName" {
            continue;
        }
        let cluster_ips = ipv4s(
            spec.cluster_ips
                .iter()
                .flatten()
                .chain(spec.cluster_ip.iter())
                .filter(|ip| ip.as_str() != "None"),
        );
        let mut external: Vec<&String> = spec.external_ips.iter().flatten().collect();
        if ty == "LoadBalancer" {
            let ingress = svc
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref());
            for i in ingress.into_iter().flatten() {
                // Proxy mode means the load balancer itself delivers to the node.
                if i.ip_mode.as_deref().unwrap_or("VIP") == "VIP"
                    && let Some(ip) = &i.ip
                {
                    external.push(ip);
                }
            }
        }
        let external_ips = ipv4s(external);
        let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| *t > 0)
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
        });
        let empty = Vec::new();
        let svc_slices = by_service
            .get(&(ns.clone(), name.clone()))
            .unwrap_or(&empty);
        for p in spec.ports.iter().flatten() {
            let Some(protocol) = Protocol::parse(p.protocol.as_deref()) else {
                continue;
            };
            let Ok(port) = u16::try_from(p.port) else {
                continue;
            };
            let port_name = p.name.clone().unwrap_or_default();
            let node_port = matches!(ty, "NodePort" | "LoadBalancer")
                .then(|| p.node_port.and_then(|n| u16::try_from(n).ok()))
                .flatten()
                .filter(|n| *n != 0);
            out.push(ServicePort {
                namespace: ns.clone(),
                name: name.clone(),
                endpoints: endpoints_for(svc_slices, &port_name, protocol, node_name),
                port_name,
                protocol,
                port,
                cluster_ips: cluster_ips.clone(),
                node_port,
                external_ips: external_ips.clone(),
                affinity_timeout,
                external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
                internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            });
        }
    }
    out.sort_by_key(|a| a.key());
    out
}

/// The backends of the slice port named `port_name` with `protocol`, one per address.
fn endpoints_for(
    slices: &[&EndpointSlice],
    port_name: &str,
    protocol: Protocol,
    node_name: &str,
) -> Vec<Endpoint> {
    let mut by_ip: BTreeMap<Ipv4Addr, Endpoint> = BTreeMap::new();
    for s in slices {
        let Some(port) = s.ports.iter().flatten().find_map(|p| {
            let name = p.name.as_deref().unwrap_or("");
            (name == port_name && Protocol::parse(p.protocol.as_deref()) == Some(protocol))
                .then_some(p.port)
                .flatten()
                .and_then(|n| u16::try_from(n).ok())
        }) else {
            continue;
        };
        for e in &s.endpoints {
            let c = e.conditions.as_ref();
            // Unset conditions mean ready, serving = ready, not terminating (upstream).
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            let local = e.node_name.as_deref() == Some(node_name);
            for a in &e.addresses {
                let Ok(ip) = a.parse::<Ipv4Addr>() else {
                    continue;
                };
                let candidate = Endpoint {
                    ip,
                    port,
                    local,
                    ready,
                    serving,
                    terminating,
                };
                // Duplicates across slices: the ready copy wins.
                match by_ip.get(&ip) {
                    Some(existing) if existing.ready || !ready => {}
                    _ => {
                        by_ip.insert(ip, candidate);
                    }
                }
            }
        }
    }
    by_ip.into_values().collect()
}
