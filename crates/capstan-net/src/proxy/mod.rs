//! The service proxy (kube-proxy's nftables mode): one inet table per node, rebuilt from
//! Services and EndpointSlices and swapped in one nft transaction. ClusterIPs, NodePorts on the
//! node's local addresses, LoadBalancer ingress and external IPs are DNATed at random to ready
//! endpoints (terminating ones only when none is ready), with ClientIP affinity, Local traffic
//! policies, hairpin and off-cluster masquerade, and reject for services without endpoints.

pub mod model;
pub mod nft;
pub mod render;
pub mod sync;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use model::{Endpoint, Protocol, ServicePort, build};
pub use nft::{NftApply, NftBinary, delete_table_blocking};
pub use render::{MASQUERADE_MARK, RenderOptions, render};

/// The default table name.
pub const DEFAULT_TABLE: &str = "capstan";
/// Default minimum time between two syncs.
pub const DEFAULT_MIN_SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// Errors of the service proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("running {}", path.display())]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("nft refused the ruleset: {message}")]
    Nft { message: String },
}

/// How the node's proxy runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyOptions {
    /// The nft table (family inet) the proxy owns.
    pub table: String,
    /// This node: endpoints with this nodeName are local.
    pub node_name: String,
    /// Pod CIDRs; ClusterIP traffic from elsewhere is masqueraded.
    pub pod_cidrs: Vec<String>,
    /// NodePorts and LoadBalancer IPs on 127.0.0.1 too (sets net.ipv4.conf.all.route_localnet).
    pub localhost_node_ports: bool,
    pub min_sync_interval: Duration,
}

impl ProxyOptions {
    pub fn new(table: impl Into<String>, node_name: impl Into<String>) -> Self {
        ProxyOptions {
            table: table.into(),
            node_name: node_name.into(),
            pod_cidrs: Vec::new(),
            localhost_node_ports: true,
            min_sync_interval: DEFAULT_MIN_SYNC_INTERVAL,
        }
    }
}

/// Runs the proxy until `stop`; the table stays (only node clean-up deletes it).
pub async fn run(
    client: kube::Client,
    options: ProxyOptions,
    stop: CancellationToken,
) -> Result<(), ProxyError> {
    prepare_kernel(&options);
    sync::run_with(client, options, Arc::new(NftBinary::default()), stop).await;
    Ok(())
}

fn write_sysctl(path: &str, value: &str) -> bool {
    match std::fs::write(path, value) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(path, error = %e, "setting sysctl");
            false
        }
    }
}

/// Bridged pod-to-pod replies must pass conntrack to be un-DNATed (br_netfilter); localhost
/// NodePorts need route_localnet to DNAT 127.0.0.1 to pods.
fn prepare_kernel(options: &ProxyOptions) {
    const BRIDGE_NF: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    if !std::path::Path::new(BRIDGE_NF).exists() {
        let _ = std::process::Command::new("modprobe")
            .arg("br_netfilter")
            .stderr(std::process::Stdio::null())
            .status();
    }
    if !write_sysctl(BRIDGE_NF, "1") {
        tracing::warn!(
            "br_netfilter unavailable: a pod may not reach its Service's endpoints on the same node"
        );
    }
    if options.localhost_node_ports {
        write_sysctl("/proc/sys/net/ipv4/conf/all/route_localnet", "1");
    }
}
