//! Node IPAM: gives every Node without `spec.podCIDR` the next free subnet of the cluster CIDR
//! (`spec.podCIDR` and `spec.podCIDRs`), like upstream's range allocator. State is rebuilt from
//! the Nodes themselves, so a restarted controller never hands out a subnet twice.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

/// How often assignments that failed (conflict, API error, range full) are retried without events.
const RESYNC: Duration = Duration::from_secs(5);

/// An IPv4 subnet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`, normalising host bits away.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = s.trim().split_once('/')?;
        let addr: Ipv4Addr = addr.parse().ok()?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
        Some(Cidr {
            addr: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        })
    }

    fn start(&self) -> u32 {
        u32::from(self.addr)
    }

    fn end(&self) -> u32 {
        self.start() | !mask(self.prefix)
    }

    /// Whether the two subnets share any address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.start() <= other.end() && other.start() <= self.end()
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

/// Why the allocator cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("invalid cluster CIDR {0:?} (want an IPv4 a.b.c.d/n)")]
    ClusterCidr(String),
    #[error("node CIDR mask size {mask} must be between the cluster prefix {cluster} and 30")]
    MaskSize { mask: u8, cluster: u8 },
}

/// Subnets of size `/node_mask` carved from the cluster CIDR, first free first.
#[derive(Clone, Debug)]
pub struct Allocator {
    cluster: Cidr,
    node_mask: u8,
}

impl Allocator {
    pub fn new(cluster_cidr: &str, node_mask: u8) -> Result<Allocator, IpamError> {
        let cluster =
            Cidr::parse(cluster_cidr).ok_or_else(|| IpamError::ClusterCidr(cluster_cidr.into()))?;
        if node_mask < cluster.prefix || node_mask > 30 {
            return Err(IpamError::MaskSize {
                mask: node_mask,
                cluster: cluster.prefix,
            });
        }
        Ok(Allocator { cluster, node_mask })
    }

    /// The first subnet that overlaps none of `used`.
    pub fn next_free(&self, used: &BTreeSet<Cidr>) -> Option<Cidr> {
        let count = 1u64 << (self.node_mask - self.cluster.prefix);
        let step = 1u64 << (32 - u32::from(self.node_mask));
        (0..count).find_map(|i| {
            let start = u64::from(self.cluster.start()) + i * step;
            let candidate = Cidr {
                addr: Ipv4Addr::from(u32::try_from(start).ok()?),
                prefix: self.node_mask,
            };
            (!used.iter().any(|u| u.overlaps(&candidate))).then_some(candidate)
        })
    }
}

/// The subnets a node holds (`podCIDR` and `podCIDRs`).
pub fn node_cidrs(node: &Node) -> Vec<Cidr> {
    let Some(spec) = &node.spec else {
        return Vec::new();
    };
    spec.pod_cidr
        .iter()
        .chain(spec.pod_cidrs.iter().flatten())
        .filter_map(|c| Cidr::parse(c))
        .collect()
}

fn has_pod_cidr(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_deref())
        .is_some_and(|c| !c.is_empty())
}

/// Runs the node IPAM controller until `stop`.
pub async fn run(client: Client, cluster_cidr: &str, node_mask: u8, stop: CancellationToken) {
    let allocator = match Allocator::new(cluster_cidr, node_mask) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "node IPAM controller not started");
            return;
        }
    };
    let api = Api::<Node>::all(client);
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher::watcher(api.clone(), watcher::Config::default()),
    )
    .default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut ready = false;
    // Assigned by us but not yet seen in the watch cache: node -> subnet.
    let mut pending: BTreeMap<String, Cidr> = BTreeMap::new();
    let mut resync = tokio::time::interval(RESYNC);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            event = stream.next() => match event {
                None => return,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "node watch");
                    continue;
                }
                Some(Ok(Event::InitDone)) => ready = true,
                Some(Ok(Event::Apply(_) | Event::Delete(_))) => {}
                Some(Ok(_)) => continue,
            },
            _ = resync.tick() => {}
        }
        if ready {
            reconcile(&api, &reader, &allocator, &mut pending).await;
        }
    }
}

/// Assigns a subnet to every node without one.
async fn reconcile(
    api: &Api<Node>,
    reader: &Store<Node>,
    allocator: &Allocator,
    pending: &mut BTreeMap<String, Cidr>,
) {
    let nodes: BTreeMap<String, std::sync::Arc<Node>> = reader
        .state()
        .into_iter()
        .map(|n| (n.name_any(), n))
        .collect();
    pending.retain(|name, _| nodes.get(name).is_some_and(|n| !has_pod_cidr(n)));
    let mut used: BTreeSet<Cidr> = nodes.values().flat_map(|n| node_cidrs(n)).collect();
    used.extend(pending.values().copied());
    for (name, node) in &nodes {
        if has_pod_cidr(node)
            || pending.contains_key(name)
            || node.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let Some(cidr) = allocator.next_free(&used) else {
            tracing::warn!(node = %name, "CIDRNotAvailable: no free subnet left in the cluster CIDR");
            return;
        };
        let text = cidr.to_string();
        // resourceVersion makes the patch fail instead of overwriting a concurrent assignment.
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": node.metadata.resource_version },
            "spec": { "podCIDR": text, "podCIDRs": [text] }
        });
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!(node = %name, cidr = %text, "assigned pod CIDR");
                used.insert(cidr);
                pending.insert(name.clone(), cidr);
            }
            Err(e) => tracing::warn!(node = %name, cidr = %text, error = %e, "assigning pod CIDR"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<Cidr> {
        items
            .iter()
            .map(|s| Cidr::parse(s).expect("cidr"))
            .collect()
    }

    #[test]
    fn parsing_normalises_and_rejects_garbage() {
        assert_eq!(
            Cidr::parse("10.42.3.7/24").expect("cidr").to_string(),
            "10.42.3.0/24"
        );
        for bad in ["", "10.42.0.0", "10.42.0.0/33", "fd00::/64", "x/8"] {
            assert!(Cidr::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn next_free_skips_used_and_overlapping_subnets() {
        let a = Allocator::new("10.42.0.0/16", 24).expect("allocator");
        assert_eq!(
            a.next_free(&set(&[])).expect("free").to_string(),
            "10.42.0.0/24"
        );
        assert_eq!(
            a.next_free(&set(&["10.42.0.0/24", "10.42.1.0/24", "10.42.3.0/24"]))
                .expect("free")
                .to_string(),
            "10.42.2.0/24"
        );
        // A bigger foreign subnet blocks everything it covers.
        assert_eq!(
            a.next_free(&set(&["10.42.0.0/23", "10.99.0.0/24"]))
                .expect("free")
                .to_string(),
            "10.42.2.0/24"
        );
        let small = Allocator::new("10.0.0.0/23", 24).expect("allocator");
        assert_eq!(small.next_free(&set(&["10.0.0.0/24", "10.0.1.0/24"])), None);
        let fine = Allocator::new("10.0.0.0/16", 26).expect("allocator");
        assert_eq!(
            fine.next_free(&set(&["10.0.0.0/26"]))
                .expect("free")
                .to_string(),
            "10.0.0.64/26"
        );
    }

    #[test]
    fn invalid_options_are_rejected() {
        assert!(Allocator::new("nope", 24).is_err());
        assert!(Allocator::new("10.42.0.0/16", 8).is_err());
        assert!(Allocator::new("10.42.0.0/16", 31).is_err());
    }
}
