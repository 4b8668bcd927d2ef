//! The host-gw backend (flannel's role when nodes share an L2 segment): one route per other
//! node, `<its podCIDR> via <its InternalIP>`, kept in step with the Nodes. Only routes with
//! this module's `proto` number are ever changed, so the host's own routes are left alone.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The route protocol number marking routes this backend owns (`ip route ... proto 201`).
pub const DEFAULT_PROTO: u8 = 201;
/// Full re-check interval, so routes removed by hand come back without a Node event.
const RESYNC_INTERVAL: Duration = Duration::from_secs(30);
/// Pause before trying again after a failed `ip route` change.
const RETRY_INTERVAL: Duration = Duration::from_secs(2);

/// Errors from reading or changing the routing table.
#[derive(Debug, thiserror::Error)]
pub enum HostGwError {
    #[error("running {args}: {source}")]
    Spawn {
        args: String,
        source: std::io::Error,
    },
    #[error("{args} failed: {stderr}")]
    Ip { args: String, stderr: String },
    #[error("reading `ip -j route` output: {0}")]
    Parse(String),
}

/// How the backend runs on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostGwOptions {
    /// This node: its own pod CIDR needs no route.
    pub node_name: String,
    /// This node's address; nodes claiming it (or loopback) get no route.
    pub node_ip: IpAddr,
    /// This node's pod CIDR.
    pub pod_cidr: String,
    /// Route protocol number of the owned routes.
    pub proto: u8,
}

impl HostGwOptions {
    pub fn new(node_name: impl Into<String>, node_ip: IpAddr, pod_cidr: impl Into<String>) -> Self {
        HostGwOptions {
            node_name: node_name.into(),
            node_ip,
            pod_cidr: pod_cidr.into(),
            proto: DEFAULT_PROTO,
        }
    }
}

/// Wanted routes: pod CIDR → gateway, one per other node with an IPv4 InternalIP and podCIDR.
pub fn desired_routes(nodes: &[Arc<Node>], o: &HostGwOptions) -> BTreeMap<String, Ipv4Addr> {
    let mut routes = BTreeMap::new();
    for node in nodes {
        if node.metadata.name.as_deref() == Some(o.node_name.as_str()) {
            continue;
        }
        let Some(spec) = &node.spec else { continue };
        let Some(cidr) = spec.pod_cidr.as_deref().filter(|c| !c.is_empty()) else {
            continue;
        };
        if cidr == o.pod_cidr || !valid_v4_cidr(cidr) {
            continue;
        }
        let Some(ip) = internal_ip(node) else {
            continue;
        };
        if IpAddr::V4(ip) == o.node_ip || ip.is_loopback() || ip.is_unspecified() {
            continue;
        }
        routes.insert(cidr.to_string(), ip);
    }
    routes
}

fn valid_v4_cidr(cidr: &str) -> bool {
    cidr.split_once('/').is_some_and(|(a, p)| {
        a.parse::<Ipv4Addr>().is_ok() && p.parse::<u8>().is_ok_and(|p| p <= 32)
    })
}

/// A node's first IPv4 InternalIP.
pub(crate) fn internal_ip(node: &Node) -> Option<Ipv4Addr> {
    let addresses = node.status.as_ref()?.addresses.as_ref()?;
    addresses
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse::<Ipv4Addr>().ok())
}

/// One owned route as `ip -j route` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnedRoute {
    pub gateway: Option<Ipv4Addr>,
    pub dev: Option<String>,
}

/// The owned routes now in the main table, parsed from `ip -j route show proto N`.
pub fn parse_routes(json: &str) -> Result<BTreeMap<String, OwnedRoute>, HostGwError> {
    let value: serde_json::Value =
        serde_json::from_str(json.trim()).map_err(|e| HostGwError::Parse(e.to_string()))?;
    let list = value
        .as_array()
        .ok_or_else(|| HostGwError::Parse("not a list".into()))?;
    let mut routes = BTreeMap::new();
    for r in list {
        let Some(dst) = r.get("dst").and_then(|d| d.as_str()) else {
            continue;
        };
        // `ip` prints a host route without its /32.
        let dst = if dst.contains('/') {
            dst.to_string()
        } else {
            format!("{dst}/32")
        };
        let gateway = r
            .get("gateway")
            .and_then(|g| g.as_str())
            .and_then(|g| g.parse().ok());
        let dev = r.get("dev").and_then(|d| d.as_str()).map(str::to_string);
        routes.insert(dst, OwnedRoute { gateway, dev });
    }
    Ok(routes)
}

/// Runs `ip` with `args`; its stdout, or its stderr as the error.
pub(crate) async fn ip(args: &[String]) -> Result<String, HostGwError> {
    command("ip", args).await
}

/// Runs `program` (`ip`, `bridge`) with `args`; its stdout, or its stderr as the error.
pub(crate) async fn command(program: &str, args: &[String]) -> Result<String, HostGwError> {
    let joined = format!("{program} {}", args.join(" "));
    let out = tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| HostGwError::Spawn {
            args: joined.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(HostGwError::Ip {
            args: joined,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Brings the owned routes to `want`; returns the first error after trying every change.
pub async fn apply(want: &BTreeMap<String, Ipv4Addr>, proto: u8) -> Result<(), HostGwError> {
    let proto = proto.to_string();
    let have = parse_routes(&ip(&s(&["-j", "-4", "route", "show", "proto", &proto])).await?)?;
    let mut first_error = None;
    for (dst, gw) in want {
        if have.get(dst).is_some_and(|r| r.gateway == Some(*gw)) {
            continue;
        }
        let gw = gw.to_string();
        let args = s(&["route", "replace", dst, "via", &gw, "proto", &proto]);
        match ip(&args).await {
            Ok(_) => tracing::info!(%dst, via = %gw, "host-gw route set"),
            Err(e) => {
                tracing::warn!(error = %e, "host-gw route");
                first_error.get_or_insert(e);
            }
        }
    }
    for dst in have.keys().filter(|d| !want.contains_key(*d)) {
        match ip(&s(&["route", "del", dst, "proto", &proto])).await {
            Ok(_) => tracing::info!(%dst, "host-gw route removed"),
            Err(e) => {
                tracing::warn!(error = %e, "host-gw route removal");
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

pub(crate) fn s(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// The nat chain that keeps pod-to-pod traffic between nodes unmasqueraded (host-gw and
/// vxlan): the bridge plugin's ipMasq would hide the source pod behind its node's address.
pub const NO_MASQ_CHAIN: &str = "CAPSTAN-HOSTGW";

/// `iptables-restore --noflush` input: the chain's rules, ACCEPT (no NAT) from this node's
/// pods to every other node's pod CIDR in `dsts`.
pub fn no_masq_rules<'a>(pod_cidr: &str, dsts: impl IntoIterator<Item = &'a String>) -> String {
    let mut s = format!("*nat\n:{NO_MASQ_CHAIN} - [0:0]\n");
    for dst in dsts {
        s.push_str(&format!(
            "-A {NO_MASQ_CHAIN} -s {pod_cidr} -d {dst} -m comment --comment \"capstan: pod to pod\" -j ACCEPT\n"
        ));
    }
    s.push_str("COMMIT\n");
    s
}

/// Writes the no-masquerade chain (this node's pods to `dsts`) and makes POSTROUTING jump
/// to it first.
pub(crate) async fn apply_no_masq<'a>(
    pod_cidr: &str,
    dsts: impl IntoIterator<Item = &'a String>,
) -> Result<(), HostGwError> {
    use tokio::io::AsyncWriteExt;
    let rules = no_masq_rules(pod_cidr, dsts);
    let args = "iptables-restore --noflush".to_string();
    let mut child = tokio::process::Command::new("iptables-restore")
        .arg("--noflush")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| HostGwError::Spawn {
            args: args.clone(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules.as_bytes())
            .await
            .map_err(|source| HostGwError::Spawn {
                args: args.clone(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|source| HostGwError::Spawn {
            args: args.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(HostGwError::Ip {
            args,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let jump = ["-t", "nat", "-C", "POSTROUTING", "-j", NO_MASQ_CHAIN];
    let has_jump = tokio::process::Command::new("iptables")
        .args(jump)
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success());
    if !has_jump {
        let args = ["-t", "nat", "-I", "POSTROUTING", "1", "-j", NO_MASQ_CHAIN];
        let out = tokio::process::Command::new("iptables")
            .args(args)
            .output()
            .await
            .map_err(|source| HostGwError::Spawn {
                args: args.join(" "),
                source,
            })?;
        if !out.status.success() {
            return Err(HostGwError::Ip {
                args: format!("iptables {}", args.join(" ")),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
    }
    Ok(())
}

/// Keeps the routes in step with the Nodes until `stop`; the routes stay afterwards (the
/// pods keep running while the agent restarts).
pub async fn run(client: kube::Client, options: HostGwOptions, stop: CancellationToken) {
    let (store, writer) = reflector::store::<Node>();
    let changed = Arc::new(Notify::new());
    let watch = tokio::spawn(crate::watch::reflect(
        Api::<Node>::all(client),
        writer,
        changed.clone(),
        stop.clone(),
        "host-gw node watch",
    ));
    tokio::select! {
        _ = stop.cancelled() => {}
        r = store.wait_until_ready() => {
            if r.is_ok() {
                sync_loop(&store, &options, &changed, &stop).await;
            }
        }
    }
    let _ = watch.await;
}

async fn sync_loop(
    store: &Store<Node>,
    options: &HostGwOptions,
    changed: &Notify,
    stop: &CancellationToken,
) {
    let mut last: Option<BTreeMap<String, Ipv4Addr>> = None;
    loop {
        let want = desired_routes(&store.state(), options);
        let wait = if last.as_ref() == Some(&want) {
            RESYNC_INTERVAL
        } else {
            // A node alone in its cluster touches no firewall state (many single-node
            // test clusters share one host).
            let masq = if want.is_empty() && last.is_none() {
                Ok(())
            } else {
                apply_no_masq(&options.pod_cidr, want.keys()).await
            };
            if let Err(e) = &masq {
                tracing::warn!(error = %e, "host-gw no-masquerade rules");
            }
            match apply(&want, options.proto).await.and(masq) {
                Ok(()) => {
                    last = Some(want);
                    RESYNC_INTERVAL
                }
                Err(_) => RETRY_INTERVAL,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = changed.notified() => {}
            _ = tokio::time::sleep(wait) => last = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};

    fn node(name: &str, cidr: &str, ip: &str) -> Arc<Node> {
        Arc::new(Node {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
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

    #[test]
    fn routes_for_other_nodes_only() {
        let o = HostGwOptions::new("a", "10.0.0.1".parse().unwrap(), "10.42.0.0/24");
        let nodes = vec![
            node("a", "10.42.0.0/24", "10.0.0.1"),
            node("b", "10.42.1.0/24", "10.0.0.2"),
            node("c", "", "10.0.0.3"),
            node("d", "10.42.3.0/24", "127.0.0.1"),
            node("e", "10.42.4.0/24", "10.0.0.1"),
            node("f", "bogus", "10.0.0.6"),
        ];
        let want = desired_routes(&nodes, &o);
        assert_eq!(
            want.into_iter().collect::<Vec<_>>(),
            vec![("10.42.1.0/24".to_string(), "10.0.0.2".parse().unwrap())]
        );
    }

    #[test]
    fn no_masq_chain_accepts_pod_to_pod_only() {
        let want: BTreeMap<String, Ipv4Addr> =
            BTreeMap::from([("10.42.1.0/24".to_string(), "10.0.0.2".parse().unwrap())]);
        let rules = no_masq_rules("10.42.0.0/24", want.keys());
        assert!(
            rules.starts_with("*nat\n:CAPSTAN-HOSTGW - [0:0]\n"),
            "{rules}"
        );
        assert!(
            rules.contains("-A CAPSTAN-HOSTGW -s 10.42.0.0/24 -d 10.42.1.0/24 "),
            "{rules}"
        );
        assert!(rules.ends_with("-j ACCEPT\nCOMMIT\n"), "{rules}");
    }

    #[test]
    fn parses_ip_json_routes() {
        let json = r#"[{"dst":"10.42.1.0/24","gateway":"10.0.0.2","dev":"eth0","protocol":"201","flags":[]},
            {"dst":"10.9.9.9","dev":"eth0","flags":[]}]"#;
        let r = parse_routes(json).unwrap();
        assert_eq!(
            r.get("10.42.1.0/24").and_then(|r| r.gateway),
            Some("10.0.0.2".parse().unwrap())
        );
        assert_eq!(r["10.42.1.0/24"].dev.as_deref(), Some("eth0"));
        assert_eq!(r.get("10.9.9.9/32").map(|r| r.gateway), Some(None));
        assert!(parse_routes("").is_err());
    }
}
