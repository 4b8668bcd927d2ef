//! `capstan agent`: run the node agent against an existing server. The node flags are shared
//! with `capstan server`, which runs the same agent in-process unless `--disable-agent`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use capstan_kubelet::AgentConfig;
use clap::Args;
use tokio_util::sync::CancellationToken;

/// The node's settings, on both `server` and `agent`.
#[derive(Args, Debug, Clone)]
pub struct NodeFlags {
    /// The Node's name (default: the hostname).
    #[arg(long)]
    pub node_name: Option<String>,
    /// The node's InternalIP (default: the address of the default-route interface).
    #[arg(long)]
    pub node_ip: Option<IpAddr>,
    /// Port of the kubelet HTTPS API.
    #[arg(long, default_value_t = 10250)]
    pub kubelet_port: u16,
    /// Pod CIDR used while the Node has no spec.podCIDR (the server's own node: 10.42.0.0/24).
    #[arg(long)]
    pub pod_cidr: Option<String>,
    /// CNI config directory (default `<data-dir>/agent/etc/cni/net.d`).
    #[arg(long)]
    pub cni_conf_dir: Option<PathBuf>,
    /// CNI plugin directory (repeatable; default /usr/lib/cni and /opt/cni/bin).
    #[arg(long)]
    pub cni_bin_dir: Vec<PathBuf>,
    /// Name of the CNI bridge.
    #[arg(long, default_value = "cni0")]
    pub cni_bridge: String,
    /// Volatile runtime state: netns bind mounts, OCI runtime roots.
    #[arg(long, default_value = "/run/capstan")]
    pub run_dir: PathBuf,
    /// Cgroup under which pod cgroups are made.
    #[arg(long, default_value = "/capstan")]
    pub cgroup_parent: String,
    /// Root of the pods' log directories.
    #[arg(long, default_value = "/var/log/pods")]
    pub pod_log_dir: PathBuf,
    /// Cluster DNS server for ClusterFirst pods (default: the node's resolv.conf).
    #[arg(long)]
    pub cluster_dns: Option<IpAddr>,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Extra Node label `key=value` (repeatable).
    #[arg(long)]
    pub node_label: Vec<String>,
    /// The nftables table (family inet) of the service proxy.
    #[arg(long, default_value = capstan_net::proxy::DEFAULT_TABLE)]
    pub proxy_table: String,
    /// Do not run the service proxy on this node.
    #[arg(long)]
    pub disable_kube_proxy: bool,
}

/// The source address of the default route (no packet is sent), else loopback.
fn default_node_ip() -> IpAddr {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.1:53")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

impl NodeFlags {
    /// The agent configuration for a node with state under `data_dir`.
    pub fn agent_config(
        &self,
        data_dir: PathBuf,
        default_pod_cidr: Option<&str>,
    ) -> anyhow::Result<AgentConfig> {
        let exe = std::env::current_exe().context("locating the capstan binary")?;
        let name = match &self.node_name {
            Some(n) => n.clone(),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .context("reading the hostname")?
                .trim()
                .to_lowercase(),
        };
        let ip = self.node_ip.unwrap_or_else(default_node_ip);
        let mut c = AgentConfig::new(name, ip, data_dir, exe);
        c.kubelet_port = self.kubelet_port;
        c.pod_cidr = self
            .pod_cidr
            .clone()
            .or(default_pod_cidr.map(str::to_string));
        if let Some(d) = &self.cni_conf_dir {
            c.cni_conf_dir = d.clone();
        }
        if !self.cni_bin_dir.is_empty() {
            c.cni_bin_dirs = self.cni_bin_dir.clone();
        }
        c.cni_bridge = self.cni_bridge.clone();
        c.run_dir = self.run_dir.clone();
        c.cgroup_parent = self.cgroup_parent.clone();
        c.pod_log_dir = self.pod_log_dir.clone();
        c.cluster_dns = self.cluster_dns;
        c.cluster_domain = self.cluster_domain.clone();
        let mut labels = BTreeMap::new();
        for l in &self.node_label {
            let (k, v) = l
                .split_once('=')
                .with_context(|| format!("--node-label {l:?}: expected key=value"))?;
            labels.insert(k.to_string(), v.to_string());
        }
        c.node_labels = labels;
        c.proxy = (!self.disable_kube_proxy)
            .then(|| capstan_net::proxy::ProxyOptions::new(&self.proxy_table, &c.node_name));
        Ok(c)
    }
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// URL of the API server, e.g. https://10.0.0.1:6443.
    #[arg(long)]
    pub server: String,
    /// Bearer token for the API server.
    #[arg(long)]
    pub token: String,
    /// Directory for the node's state (runtime, images, pods).
    #[arg(long, default_value = "/var/lib/capstan")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub node: NodeFlags,
}

/// A client for `server` with `token`. TLS verification is skipped until the security issue
/// gives agents the cluster CA (join tokens carrying its hash, as k3s does).
async fn client(server: &str, token: &str) -> anyhow::Result<kube::Client> {
    let url: http::Uri = server
        .parse()
        .with_context(|| format!("--server {server:?}"))?;
    let mut config = kube::Config::new(url);
    config.accept_invalid_certs = true;
    config.auth_info.token = Some(token.to_string().into());
    kube::Client::try_from(config).context("API client")
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    let config = args.node.agent_config(args.data_dir.clone(), None)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let client = client(&args.server, &args.token).await?;
        let stop = CancellationToken::new();
        let mut agent = tokio::spawn(capstan_kubelet::run_agent(config, client, stop.clone()));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing SIGTERM handler")?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            r = &mut agent => return r.context("agent task")?.context("node agent"),
        }
        stop.cancel();
        agent.await.context("agent task")?.context("node agent")?;
        Ok(())
    })
}
