//! The VXLAN backend (flannel's `vxlan` role, for nodes without a shared L2 segment): each
//! node has a VXLAN device whose MAC it publishes on its Node; for every other node a
//! neighbour entry (its VTEP IP → its MAC), an FDB entry (its MAC → its node address) and a
//! route `<its podCIDR> via <its VTEP IP> dev <device> onlink`. The VTEP IP of a node is the
//! first address of its pod CIDR, as flannel does.

mod device;

pub use device::{OVERHEAD, Vtep};

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::hostgw::{HostGwError, OwnedRoute, internal_ip};

/// The device name, as flannel's `flannel.1`.
pub const DEFAULT_DEVICE: &str = "capstan.1";
pub const DEFAULT_VNI: u32 = 1;
/// The UDP port flannel uses (the Linux default, not IANA's 4789).
pub const DEFAULT_PORT: u16 = 8472;
/// Node annotation: the node's VTEP MAC address.
pub const VTEP_MAC_ANNOTATION: &str = "capstan.io/vxlan-vtep-mac";
/// Node annotation: the address the node's VXLAN packets come from and go to.
pub const PUBLIC_IP_ANNOTATION: &str = "capstan.io/vxlan-public-ip";
/// Full re-check interval, so entries removed by hand come back without a Node event.
const RESYNC_INTERVAL: Duration = Duration::from_secs(30);
/// Pause before trying again after a failed change.
const RETRY_INTERVAL: Duration = Duration::from_secs(2);

/// Errors from setting up the device or its entries.
#[derive(Debug, thiserror::Error)]
pub enum VxlanError {
    #[error(transparent)]
    Command(#[from] HostGwError),
    #[error("no interface holds the node address {0}")]
    NoInterface(Ipv4Addr),
    #[error("the vxlan backend needs an IPv4 node address, not {0}")]
    NotIpv4(IpAddr),
    #[error("pod CIDR {0:?} is not an IPv4 CIDR")]
    BadCidr(String),
    #[error("reading `ip` output: {0}")]
    Parse(String),
    #[error("publishing the VTEP on the Node: {0}")]
    Publish(#[from] kube::Error),
}

/// How the backend runs on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanOptions {
    pub node_name: String,
    /// This node's address: the tunnel's local end.
    pub node_ip: IpAddr,
    /// This node's pod CIDR (its first address is the VTEP address).
    pub pod_cidr: String,
    pub device: String,
    pub vni: u32,
    pub port: u16,
    /// Route protocol number of the owned routes (host-gw's, so a backend switch cleans up).
    pub proto: u8,
}

impl VxlanOptions {
    pub fn new(node_name: impl Into<String>, node_ip: IpAddr, pod_cidr: impl Into<String>) -> Self {
        VxlanOptions {
            node_name: node_name.into(),
            node_ip,
            pod_cidr: pod_cidr.into(),
            device: DEFAULT_DEVICE.into(),
            vni: DEFAULT_VNI,
            port: DEFAULT_PORT,
            proto: crate::hostgw::DEFAULT_PROTO,
        }
    }
}

/// Another node's tunnel endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub vtep_ip: Ipv4Addr,
    pub mac: String,
    pub public_ip: Ipv4Addr,
}

/// The first address of an IPv4 CIDR (`10.42.1.0/24` → 10.42.1.0), None if not one.
pub fn network_address(cidr: &str) -> Option<Ipv4Addr> {
    let (addr, prefix) = cidr.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let prefix: u32 = prefix.parse().ok().filter(|p| *p <= 32)?;
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    Some(Ipv4Addr::from(u32::from(addr) & mask))
}

/// A MAC address in lower case, if `s` is one (and not all zero).
fn valid_mac(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    (ok && parts.iter().any(|p| *p != "00")).then(|| s.to_ascii_lowercase())
}

fn annotation<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// Wanted peers: pod CIDR → endpoint, one per other node with an IPv4 podCIDR, a published
/// VTEP MAC and an address (its public-ip annotation, else its InternalIP).
pub fn desired_peers(nodes: &[Arc<Node>], o: &VxlanOptions) -> BTreeMap<String, Peer> {
    let mut peers = BTreeMap::new();
    for node in nodes {
        if node.metadata.name.as_deref() == Some(o.node_name.as_str()) {
            continue;
        }
        let Some(cidr) = node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()) else {
            continue;
        };
        if cidr == o.pod_cidr {
            continue;
        }
        let Some(vtep_ip) = network_address(cidr) else {
            continue;
        };
        let Some(mac) = annotation(node, VTEP_MAC_ANNOTATION).and_then(valid_mac) else {
            continue;
        };
        let public_ip = annotation(node, PUBLIC_IP_ANNOTATION)
            .and_then(|a| a.parse::<Ipv4Addr>().ok())
            .or_else(|| internal_ip(node));
        let Some(public_ip) = public_ip else { continue };
        if IpAddr::V4(public_ip) == o.node_ip
            || public_ip.is_loopback()
            || public_ip.is_unspecified()
        {
            continue;
        }
        peers.insert(
            cidr.to_string(),
            Peer {
                vtep_ip,
                mac,
                public_ip,
            },
        );
    }
    peers
}

/// The owned state now: neighbour and FDB entries on the device, routes with our proto.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Current {
    pub neigh: BTreeMap<Ipv4Addr, String>,
    pub fdb: BTreeSet<(String, Ipv4Addr)>,
    pub routes: BTreeMap<String, OwnedRoute>,
}

/// One change to bring the owned state to the wanted one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    RouteDel { cidr: String },
    NeighDel { ip: Ipv4Addr },
    FdbDel { mac: String, dst: Ipv4Addr },
    NeighSet { ip: Ipv4Addr, mac: String },
    FdbSet { mac: String, dst: Ipv4Addr },
    RouteSet { cidr: String, via: Ipv4Addr },
}

/// The changes from `have` to `want` on `device`: removals first, then additions.
pub fn plan(want: &BTreeMap<String, Peer>, have: &Current, device: &str) -> Vec<Change> {
    let mut changes = Vec::new();
    for cidr in have.routes.keys().filter(|c| !want.contains_key(*c)) {
        changes.push(Change::RouteDel { cidr: cidr.clone() });
    }
    let want_neigh: BTreeMap<Ipv4Addr, &str> =
        want.values().map(|p| (p.vtep_ip, p.mac.as_str())).collect();
    for ip in have.neigh.keys().filter(|ip| !want_neigh.contains_key(*ip)) {
        changes.push(Change::NeighDel { ip: *ip });
    }
    let want_fdb: BTreeSet<(String, Ipv4Addr)> = want
        .values()
        .map(|p| (p.mac.clone(), p.public_ip))
        .collect();
    for (mac, dst) in have.fdb.difference(&want_fdb) {
        changes.push(Change::FdbDel {
            mac: mac.clone(),
            dst: *dst,
        });
    }
    for (ip, mac) in &want_neigh {
        if have.neigh.get(ip).map(String::as_str) != Some(*mac) {
            changes.push(Change::NeighSet {
                ip: *ip,
                mac: mac.to_string(),
            });
        }
    }
    for (mac, dst) in want_fdb.difference(&have.fdb) {
        changes.push(Change::FdbSet {
            mac: mac.clone(),
            dst: *dst,
        });
    }
    for (cidr, p) in want {
        let ok = have
            .routes
            .get(cidr)
            .is_some_and(|r| r.gateway == Some(p.vtep_ip) && r.dev.as_deref() == Some(device));
        if !ok {
            changes.push(Change::RouteSet {
                cidr: cidr.clone(),
                via: p.vtep_ip,
            });
        }
    }
    changes
}

/// The pod MTU on a node whose address is `node_ip`: its interface's MTU less the overhead.
pub async fn pod_mtu(node_ip: IpAddr) -> Result<u32, VxlanError> {
    let IpAddr::V4(local) = node_ip else {
        return Err(VxlanError::NotIpv4(node_ip));
    };
    let o = VxlanOptions::new("", node_ip, "");
    let (_, mtu) = device::underlay(&o, local).await?;
    Ok(mtu.saturating_sub(OVERHEAD))
}

/// Whether this node's Node already carries `vtep` in its annotations.
fn published(nodes: &[Arc<Node>], o: &VxlanOptions, vtep: &Vtep) -> bool {
    nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(o.node_name.as_str()))
        .is_some_and(|n| {
            annotation(n, VTEP_MAC_ANNOTATION) == Some(vtep.mac.as_str())
                && annotation(n, PUBLIC_IP_ANNOTATION) == Some(vtep.public_ip.to_string().as_str())
        })
}

async fn publish(api: &Api<Node>, o: &VxlanOptions, vtep: &Vtep) -> Result<(), VxlanError> {
    let patch = serde_json::json!({"metadata": {"annotations": {
        VTEP_MAC_ANNOTATION: vtep.mac,
        PUBLIC_IP_ANNOTATION: vtep.public_ip.to_string(),
    }}});
    api.patch(&o.node_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    tracing::info!(mac = %vtep.mac, ip = %vtep.public_ip, "vxlan VTEP published on the Node");
    Ok(())
}

/// Keeps the device and its entries in step with the Nodes until `stop`. Everything stays
/// afterwards, as flannel leaves its device: pods keep talking while the agent restarts.
pub async fn run(client: kube::Client, options: VxlanOptions, stop: CancellationToken) {
    let (local, vtep_ip) = match (options.node_ip, network_address(&options.pod_cidr)) {
        (IpAddr::V4(local), Some(vtep)) => (local, vtep),
        (IpAddr::V6(_), _) => {
            let error = VxlanError::NotIpv4(options.node_ip);
            tracing::error!(%error, "vxlan backend not started");
            return;
        }
        (_, None) => {
            let error = VxlanError::BadCidr(options.pod_cidr.clone());
            tracing::error!(%error, "vxlan backend not started");
            return;
        }
    };
    let api = Api::<Node>::all(client);
    let (store, writer) = reflector::store::<Node>();
    let changed = Arc::new(Notify::new());
    let watch = tokio::spawn(crate::watch::reflect(
        api.clone(),
        writer,
        changed.clone(),
        stop.clone(),
        "vxlan node watch",
    ));
    let ends = Ends { local, vtep_ip };
    tokio::select! {
        _ = stop.cancelled() => {}
        r = store.wait_until_ready() => {
            if r.is_ok() {
                sync_loop(&api, &store, &options, ends, &changed, &stop).await;
            }
        }
    }
    let _ = watch.await;
}

/// This node's tunnel addresses.
#[derive(Clone, Copy)]
struct Ends {
    local: Ipv4Addr,
    vtep_ip: Ipv4Addr,
}

/// One round: the device, the firewall chain, the entries; the VTEP to publish.
async fn sync_once(
    o: &VxlanOptions,
    ends: Ends,
    want: &BTreeMap<String, Peer>,
    touch_firewall: bool,
) -> Result<Vtep, VxlanError> {
    let vtep = device::ensure(o, ends.local, ends.vtep_ip).await?;
    let masq = if touch_firewall {
        crate::hostgw::apply_no_masq(&o.pod_cidr, want.keys())
            .await
            .map_err(VxlanError::from)
    } else {
        Ok(())
    };
    if let Err(e) = &masq {
        tracing::warn!(error = %e, "vxlan no-masquerade rules");
    }
    let have = device::current(o).await?;
    device::apply(o, &plan(want, &have, &o.device)).await?;
    masq.map(|()| vtep)
}

async fn sync_loop(
    api: &Api<Node>,
    store: &Store<Node>,
    o: &VxlanOptions,
    ends: Ends,
    changed: &Notify,
    stop: &CancellationToken,
) {
    let mut last: Option<BTreeMap<String, Peer>> = None;
    let mut vtep: Option<Vtep> = None;
    // What was patched onto the Node, until the watch shows it (or the next resync).
    let mut sent: Option<Vtep> = None;
    let mut announced = false;
    loop {
        let nodes = store.state();
        let want = desired_peers(&nodes, o);
        let mut wait = RESYNC_INTERVAL;
        if last.as_ref() != Some(&want) || vtep.is_none() {
            // A node alone in its cluster touches no firewall state (many single-node
            // test clusters share one host).
            let touch_firewall = !(want.is_empty() && last.is_none());
            match sync_once(o, ends, &want, touch_firewall).await {
                Ok(v) => {
                    if !announced {
                        let peers = want.len();
                        tracing::info!(device = %o.device, mac = %v.mac, peers, "vxlan VTEP up");
                        announced = true;
                    }
                    vtep = Some(v);
                    last = Some(want);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "vxlan sync");
                    wait = RETRY_INTERVAL;
                }
            }
        }
        if let Some(v) = vtep
            .as_ref()
            .filter(|v| sent.as_ref() != Some(*v) && !published(&nodes, o, v))
        {
            match publish(api, o, v).await {
                Ok(()) => sent = Some(v.clone()),
                Err(e) => {
                    tracing::warn!(error = %e, "vxlan VTEP annotation");
                    wait = RETRY_INTERVAL;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = changed.notified() => {}
            _ = tokio::time::sleep(wait) => {
                last = None;
                vtep = None;
                sent = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};

    fn node(
        name: &str,
        cidr: &str,
        ip: &str,
        mac: Option<&str>,
        public: Option<&str>,
    ) -> Arc<Node> {
        let mut annotations = BTreeMap::new();
        if let Some(m) = mac {
            annotations.insert(VTEP_MAC_ANNOTATION.to_string(), m.to_string());
        }
        if let Some(p) = public {
            annotations.insert(PUBLIC_IP_ANNOTATION.to_string(), p.to_string());
        }
        Arc::new(Node {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                annotations: Some(annotations),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: (!cidr.is_empty()).then(|| cidr.to_string()),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(vec![NodeAddress {
                    type_: "InternalIP".into(),
                    address: ip.into(),
                }]),
                ..Default::default()
            }),
        })
    }

    fn opts() -> VxlanOptions {
        VxlanOptions::new("a", "10.0.0.1".parse().unwrap(), "10.42.0.0/24")
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn vxlan_network_address_of_cidrs() {
        assert_eq!(network_address("10.42.1.0/24"), Some(ip("10.42.1.0")));
        assert_eq!(network_address("10.42.1.77/24"), Some(ip("10.42.1.0")));
        assert_eq!(network_address("10.42.0.0/16"), Some(ip("10.42.0.0")));
        assert_eq!(network_address("0.0.0.0/0"), Some(ip("0.0.0.0")));
        assert_eq!(network_address("10.1.2.3/32"), Some(ip("10.1.2.3")));
        assert_eq!(network_address("10.1.2.3/33"), None);
        assert_eq!(network_address("fd00::/64"), None);
        assert_eq!(network_address("bogus"), None);
    }

    #[test]
    fn vxlan_peers_for_other_nodes_with_a_published_vtep() {
        let mac = "AA:bb:cc:dd:ee:01";
        let nodes = vec![
            node(
                "a",
                "10.42.0.0/24",
                "10.0.0.1",
                Some("aa:aa:aa:aa:aa:aa"),
                None,
            ),
            node("b", "10.42.1.0/24", "10.0.1.2", Some(mac), Some("10.0.9.2")),
            node(
                "c",
                "10.42.2.0/24",
                "10.0.2.3",
                Some("aa:bb:cc:dd:ee:03"),
                None,
            ),
            node("d", "10.42.3.0/24", "10.0.3.4", None, None),
            node("e", "", "10.0.4.5", Some("aa:bb:cc:dd:ee:05"), None),
            node(
                "f",
                "10.42.5.0/24",
                "10.0.0.1",
                Some("aa:bb:cc:dd:ee:06"),
                None,
            ),
            node("g", "10.42.6.0/24", "10.0.6.7", Some("not-a-mac"), None),
            node(
                "h",
                "10.42.7.0/24",
                "127.0.0.1",
                Some("aa:bb:cc:dd:ee:08"),
                None,
            ),
            node(
                "i",
                "10.42.0.0/24",
                "10.0.8.9",
                Some("aa:bb:cc:dd:ee:09"),
                None,
            ),
        ];
        let want = desired_peers(&nodes, &opts());
        assert_eq!(want.len(), 2, "{want:?}");
        assert_eq!(
            want["10.42.1.0/24"],
            Peer {
                vtep_ip: ip("10.42.1.0"),
                mac: "aa:bb:cc:dd:ee:01".into(),
                public_ip: ip("10.0.9.2"),
            }
        );
        assert_eq!(want["10.42.2.0/24"].public_ip, ip("10.0.2.3"));
    }

    fn peer(vtep: &str, mac: &str, public: &str) -> Peer {
        Peer {
            vtep_ip: ip(vtep),
            mac: mac.into(),
            public_ip: ip(public),
        }
    }

    fn route(gw: &str, dev: &str) -> OwnedRoute {
        OwnedRoute {
            gateway: Some(ip(gw)),
            dev: Some(dev.into()),
        }
    }

    #[test]
    fn vxlan_plan_from_nothing_adds_all_three_entries() {
        let want = BTreeMap::from([(
            "10.42.1.0/24".to_string(),
            peer("10.42.1.0", "aa:bb:cc:dd:ee:01", "10.0.1.2"),
        )]);
        let changes = plan(&want, &Current::default(), "capstan.1");
        assert_eq!(
            changes,
            vec![
                Change::NeighSet {
                    ip: ip("10.42.1.0"),
                    mac: "aa:bb:cc:dd:ee:01".into()
                },
                Change::FdbSet {
                    mac: "aa:bb:cc:dd:ee:01".into(),
                    dst: ip("10.0.1.2")
                },
                Change::RouteSet {
                    cidr: "10.42.1.0/24".into(),
                    via: ip("10.42.1.0")
                },
            ]
        );
    }

    #[test]
    fn vxlan_plan_keeps_what_matches_and_fixes_what_changed() {
        let want = BTreeMap::from([
            (
                "10.42.1.0/24".to_string(),
                peer("10.42.1.0", "aa:bb:cc:dd:ee:01", "10.0.1.2"),
            ),
            (
                "10.42.2.0/24".to_string(),
                peer("10.42.2.0", "aa:bb:cc:dd:ee:22", "10.0.2.3"),
            ),
        ]);
        let have = Current {
            neigh: BTreeMap::from([
                (ip("10.42.1.0"), "aa:bb:cc:dd:ee:01".to_string()),
                // Node 2 made its device again: new MAC.
                (ip("10.42.2.0"), "aa:bb:cc:dd:ee:02".to_string()),
                // Node 3 is gone.
                (ip("10.42.3.0"), "aa:bb:cc:dd:ee:03".to_string()),
            ]),
            fdb: BTreeSet::from([
                ("aa:bb:cc:dd:ee:01".to_string(), ip("10.0.1.2")),
                ("aa:bb:cc:dd:ee:02".to_string(), ip("10.0.2.3")),
                ("aa:bb:cc:dd:ee:03".to_string(), ip("10.0.3.4")),
            ]),
            routes: BTreeMap::from([
                ("10.42.1.0/24".to_string(), route("10.42.1.0", "capstan.1")),
                // A host-gw route left from before a backend switch.
                ("10.42.2.0/24".to_string(), route("10.0.2.3", "eth0")),
                ("10.42.3.0/24".to_string(), route("10.42.3.0", "capstan.1")),
            ]),
        };
        let changes = plan(&want, &have, "capstan.1");
        assert_eq!(
            changes,
            vec![
                Change::RouteDel {
                    cidr: "10.42.3.0/24".into()
                },
                Change::NeighDel {
                    ip: ip("10.42.3.0")
                },
                Change::FdbDel {
                    mac: "aa:bb:cc:dd:ee:02".into(),
                    dst: ip("10.0.2.3")
                },
                Change::FdbDel {
                    mac: "aa:bb:cc:dd:ee:03".into(),
                    dst: ip("10.0.3.4")
                },
                Change::NeighSet {
                    ip: ip("10.42.2.0"),
                    mac: "aa:bb:cc:dd:ee:22".into()
                },
                Change::FdbSet {
                    mac: "aa:bb:cc:dd:ee:22".into(),
                    dst: ip("10.0.2.3")
                },
                Change::RouteSet {
                    cidr: "10.42.2.0/24".into(),
                    via: ip("10.42.2.0")
                },
            ]
        );
        // Once applied, nothing more to do.
        let applied = Current {
            neigh: BTreeMap::from([
                (ip("10.42.1.0"), "aa:bb:cc:dd:ee:01".to_string()),
                (ip("10.42.2.0"), "aa:bb:cc:dd:ee:22".to_string()),
            ]),
            fdb: BTreeSet::from([
                ("aa:bb:cc:dd:ee:01".to_string(), ip("10.0.1.2")),
                ("aa:bb:cc:dd:ee:22".to_string(), ip("10.0.2.3")),
            ]),
            routes: BTreeMap::from([
                ("10.42.1.0/24".to_string(), route("10.42.1.0", "capstan.1")),
                ("10.42.2.0/24".to_string(), route("10.42.2.0", "capstan.1")),
            ]),
        };
        assert!(plan(&want, &applied, "capstan.1").is_empty());
        // No peers left: everything owned goes.
        assert_eq!(plan(&BTreeMap::new(), &applied, "capstan.1").len(), 6);
    }

    #[test]
    fn vxlan_published_compares_own_annotations() {
        let vtep = Vtep {
            mac: "aa:bb:cc:dd:ee:01".into(),
            public_ip: ip("10.0.0.1"),
        };
        let o = opts();
        let yes = vec![node(
            "a",
            "10.42.0.0/24",
            "10.0.0.1",
            Some("aa:bb:cc:dd:ee:01"),
            Some("10.0.0.1"),
        )];
        let stale = vec![node(
            "a",
            "10.42.0.0/24",
            "10.0.0.1",
            Some("aa:bb:cc:dd:ee:02"),
            Some("10.0.0.1"),
        )];
        assert!(published(&yes, &o, &vtep));
        assert!(!published(&stale, &o, &vtep));
        assert!(!published(&[], &o, &vtep));
    }
}
