//! `capstan agent`: run the node agent against an existing server. The node flags are shared
//! with `capstan server`, which runs the same agent in-process unless `--disable-agent`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use capstan_apiserver::auth::UserInfo;
use capstan_apiserver::auth::join::{self, CredentialsRequest, JoinToken, NodeCredentials};
use capstan_apiserver::pki::{self, CertKey};
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
    /// Cross-node pod network: `host-gw` (routes to other nodes' pod CIDRs via their
    /// addresses; nodes on one L2 segment), `vxlan` (a VXLAN overlay; nodes need only reach
    /// each other's address on UDP 8472) or `none` (another CNI provides it).
    #[arg(long, default_value = "host-gw", value_parser = ["host-gw", "vxlan", "none"])]
    pub flannel_backend: String,
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
        c.host_gw = self.flannel_backend == "host-gw";
        c.vxlan = self.flannel_backend == "vxlan";
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
    /// The node join token (`capstan token` on a server); not needed once this node has
    /// its credentials in the data dir.
    #[arg(long, env = "CAPSTAN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Directory for the node's state (runtime, images, pods, credentials).
    #[arg(long, default_value = "/var/lib/capstan")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub node: NodeFlags,
}

/// Where a node keeps its credentials: the kubelet API reads `ca.crt` and `kubelet.{crt,key}`
/// (serving) from [`pki_dir`]; the agent talks to the API server with `kubelet.kubeconfig`.
pub fn pki_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("agent/pki")
}

fn kubeconfig_path(data_dir: &Path) -> PathBuf {
    data_dir.join("agent/kubelet.kubeconfig")
}

fn write_credentials(data_dir: &Path, creds: &NodeCredentials) -> anyhow::Result<()> {
    let dir = pki_dir(data_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, pem) in [
        ("ca.crt", &creds.ca_cert),
        ("client-kubelet.crt", &creds.client_cert),
        ("client-kubelet.key", &creds.client_key),
        ("kubelet.crt", &creds.serving_cert),
        ("kubelet.key", &creds.serving_key),
    ] {
        pki::write_private(&dir.join(name), pem.as_bytes())
            .with_context(|| format!("writing {name}"))?;
    }
    Ok(())
}

/// Gives the server's own node a kubelet serving certificate signed by the cluster CA in
/// `<data_dir>/tls`, so the API server can verify it (the in-process agent needs no join).
pub fn issue_local_credentials(data_dir: &Path, config: &AgentConfig) -> anyhow::Result<()> {
    let admin = UserInfo::new("system:admin", &["system:masters"]);
    let creds = join::issue(&data_dir.join("tls"), &admin, &ask(config))
        .map_err(|e| anyhow::anyhow!("signing the node's certificates: {}", e.message))?;
    write_credentials(data_dir, &creds)
}

fn ask(config: &AgentConfig) -> CredentialsRequest {
    let mut addresses = vec![config.node_ip.to_string()];
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim().to_lowercase();
        if !h.is_empty() {
            addresses.push(h);
        }
    }
    CredentialsRequest {
        node_name: config.node_name.clone(),
        addresses,
    }
}

fn ders(pem: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .context("reading the CA certificate")?;
    anyhow::ensure!(!certs.is_empty(), "the CA certificate is empty");
    Ok(certs)
}

fn url_of(server: &str) -> anyhow::Result<http::Uri> {
    server
        .parse()
        .with_context(|| format!("--server {server:?}"))
}

/// The cluster CA as the server serves it, checked against the token's hash (the only
/// request made without verifying the server: what it answers is checked instead).
async fn fetch_ca(server: &str, token: &JoinToken) -> anyhow::Result<String> {
    let mut config = kube::Config::new(url_of(server)?);
    config.accept_invalid_certs = true;
    let client = kube::Client::try_from(config).context("API client")?;
    let req = http::Request::get(join::CACERTS_PATH)
        .body(Vec::new())
        .context("building the CA request")?;
    let pem = client
        .request_text(req)
        .await
        .with_context(|| format!("fetching the cluster CA from {server}"))?;
    anyhow::ensure!(
        join::ca_hash(&pem) == token.ca_hash,
        "the CA served by {server} does not match the join token's CA hash (wrong server or token)"
    );
    Ok(pem)
}

/// Joins the cluster with `token`: verified CA, then node certificates from the server.
async fn join_cluster(
    server: &str,
    token: &str,
    config: &AgentConfig,
) -> anyhow::Result<NodeCredentials> {
    let token = JoinToken::parse(token).context(
        "--token: not a capstan join token (K10<ca-hash>::node:<secret>; see `capstan token`)",
    )?;
    let ca_pem = fetch_ca(server, &token).await?;
    let mut kc = kube::Config::new(url_of(server)?);
    kc.root_cert = Some(ders(&ca_pem)?);
    kc.auth_info.token = Some(token.to_string().into());
    let client = kube::Client::try_from(kc).context("API client")?;
    let body =
        serde_json::json!({"nodeName": config.node_name, "addresses": ask(config).addresses});
    let req = http::Request::post(join::CREDENTIALS_PATH)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&body)?)
        .context("building the credentials request")?;
    client
        .request::<NodeCredentials>(req)
        .await
        .with_context(|| format!("requesting node credentials from {server}"))
}

/// The node's client for `server`: its existing credentials when they are for this node,
/// else new ones got with the join token. TLS is verified against the cluster CA.
async fn node_client(args: &AgentArgs, config: &AgentConfig) -> anyhow::Result<kube::Client> {
    let pki = pki_dir(&args.data_dir);
    let read = |name: &str| std::fs::read_to_string(pki.join(name)).ok();
    let existing = match (
        read("ca.crt"),
        read("client-kubelet.crt"),
        read("client-kubelet.key"),
    ) {
        // A token for another CA (a re-created cluster) means joining again.
        (Some(ca), Some(crt), Some(key))
            if join::usable_node_cert(&crt, &config.node_name)
                && read("kubelet.crt").is_some()
                && args
                    .token
                    .as_deref()
                    .and_then(JoinToken::parse)
                    .is_none_or(|t| t.ca_hash == join::ca_hash(&ca)) =>
        {
            Some(CertKey {
                cert_pem: crt,
                key_pem: key,
            })
            .map(|c| (ca, c))
        }
        _ => None,
    };
    let (ca, client) = match existing {
        Some(found) => found,
        None => {
            let token = args.token.as_deref().context(
                "this node has no credentials yet: pass --token (printed by `capstan token` on a server)",
            )?;
            let creds = join_cluster(&args.server, token, config).await?;
            write_credentials(&args.data_dir, &creds)?;
            tracing::info!(node = %config.node_name, "joined the cluster; node credentials written");
            (
                creds.ca_cert.clone(),
                CertKey {
                    cert_pem: creds.client_cert,
                    key_pem: creds.client_key,
                },
            )
        }
    };
    let path = kubeconfig_path(&args.data_dir);
    let server = args.server.trim_end_matches('/');
    pki::write_private(
        &path,
        pki::kubeconfig(server, &ca, &client, "capstan").as_bytes(),
    )
    .context("writing the node's kubeconfig")?;
    crate::explain::client_from(&path).await
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    let config = args.node.agent_config(args.data_dir.clone(), None)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let client = node_client(&args, &config).await?;
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
