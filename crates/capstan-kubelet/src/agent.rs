//! The node agent: builds the runtime, the CNI config and the kubelet API, registers the
//! Node, keeps its Lease and status fresh, and runs the pod workers until shutdown. On shutdown
//! containers are left running (their shims outlive the agent); the next agent adopts them.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use capstan_net::cni::{Cni, CniConfig, NodeNetwork, write_default_conflist};
use capstan_runtime::container::{ContainerRuntime, ImageSource, RuntimeConfig};
use capstan_runtime::cri::{ImageService, LocalImageService, RuntimeService};
use capstan_runtime::image::{ImageStore, RegistriesConfig};
use k8s_openapi::api::core::v1::Node;
use tokio_util::sync::CancellationToken;

use crate::KubeletError;
use crate::dns::ClusterDns;
use crate::events::EventRecorder;
use crate::node::{self, NodeIdentity};
use crate::pod_worker::WorkerContext;
use crate::source::ApiObjectSource;
use crate::volumes::VolumeManager;

/// Everything the agent needs to know about its node.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The Node's name.
    pub node_name: String,
    /// The node's InternalIP (pod status hostIP, the kubelet API address).
    pub node_ip: IpAddr,
    /// State root: runtime under `runtime/`, images under `images/`, pods under `pods/`,
    /// the agent's own files (CNI conf and IPAM, kubelet certificates) under `agent/`.
    pub data_dir: PathBuf,
    /// Volatile runtime state (netns bind mounts, OCI roots).
    pub run_dir: PathBuf,
    /// Cgroup under which pod cgroups are made.
    pub cgroup_parent: String,
    /// Root of the pods' log directories (`/var/log/pods`).
    pub pod_log_dir: PathBuf,
    /// Port of the kubelet HTTPS API (0: any free port).
    pub kubelet_port: u16,
    /// Pod CIDR used until the Node has `spec.podCIDR`.
    pub pod_cidr: Option<String>,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dirs: Vec<PathBuf>,
    /// The CNI bridge's name (≤ 15 characters).
    pub cni_bridge: String,
    /// Cluster DNS server for ClusterFirst pods (None: the node's resolv.conf).
    pub cluster_dns: Option<IpAddr>,
    pub cluster_domain: String,
    /// The capstan binary, re-executed as shim and pause.
    pub shim_binary: PathBuf,
    /// Extra Node labels.
    pub node_labels: BTreeMap<String, String>,
    /// The service proxy this agent runs (None: no proxy; pod CIDRs default to the node's).
    pub proxy: Option<capstan_net::proxy::ProxyOptions>,
    /// Run the host-gw backend: routes to the other nodes' pod CIDRs via their addresses.
    pub host_gw: bool,
    /// Run the VXLAN backend: a VXLAN device, routes to the other nodes' pod CIDRs over it.
    pub vxlan: bool,
}

impl AgentConfig {
    /// Defaults for a node with state under `data_dir` (flags override them).
    pub fn new(
        node_name: String,
        node_ip: IpAddr,
        data_dir: PathBuf,
        shim_binary: PathBuf,
    ) -> Self {
        AgentConfig {
            node_name,
            node_ip,
            cni_conf_dir: data_dir.join("agent/etc/cni/net.d"),
            data_dir,
            run_dir: "/run/capstan".into(),
            cgroup_parent: "/capstan".into(),
            pod_log_dir: "/var/log/pods".into(),
            kubelet_port: 10250,
            pod_cidr: None,
            cni_bin_dirs: vec!["/usr/lib/cni".into(), "/opt/cni/bin".into()],
            cni_bridge: "cni0".into(),
            cluster_dns: None,
            cluster_domain: "cluster.local".into(),
            shim_binary,
            node_labels: BTreeMap::new(),
            proxy: None,
            host_gw: false,
            vxlan: false,
        }
    }
}

type Runtimes = (Arc<dyn RuntimeService>, Arc<dyn ImageService>, PathBuf);

/// The container runtime and image service over the node's data dir.
fn build_runtime(c: &AgentConfig) -> Result<Runtimes, KubeletError> {
    std::fs::create_dir_all(&c.data_dir).map_err(|e| KubeletError::io(&c.data_dir, e))?;
    let mut rc = RuntimeConfig::new(
        c.data_dir.join("runtime"),
        c.run_dir.clone(),
        c.shim_binary.clone(),
    );
    rc.cgroup_parent = c.cgroup_parent.clone();
    let state_dir = rc.state_dir.clone();
    let store = ImageStore::open(&c.data_dir.join("images"))
        .map_err(|e| KubeletError::Setup(format!("opening the image store: {e}")))?;
    let images_src: Arc<dyn ImageSource> = Arc::new(store.clone());
    let runtime: Arc<dyn RuntimeService> = Arc::new(
        ContainerRuntime::new(rc, images_src)
            .map_err(|e| KubeletError::Setup(format!("opening the container runtime: {e}")))?,
    );
    let registries_path = c.data_dir.join("registries.yaml");
    let registries = if registries_path.exists() {
        RegistriesConfig::load(&registries_path)
            .map_err(|e| KubeletError::Setup(format!("{}: {e}", registries_path.display())))?
    } else {
        RegistriesConfig::default()
    };
    let images: Arc<dyn ImageService> = Arc::new(LocalImageService::new(store, registries));
    Ok((runtime, images, state_dir))
}

fn cni(c: &AgentConfig) -> Cni {
    Cni::new(CniConfig {
        conf_dir: c.cni_conf_dir.clone(),
        bin_dirs: c.cni_bin_dirs.clone(),
        cache_dir: c.data_dir.join("agent/cni/cache"),
    })
}

/// Removes every pod of this node: CNI DEL, sandboxes with their containers, volumes. For
/// uninstalling a node and for tests; the agent must not be running.
pub async fn remove_all_pods(config: &AgentConfig) -> Result<(), KubeletError> {
    let (runtime, _, _) = build_runtime(config)?;
    let cni = cni(config);
    let sandboxes = runtime
        .list_pod_sandboxes(&Default::default())
        .await
        .map_err(|e| KubeletError::Setup(format!("listing sandboxes: {e}")))?;
    for sb in sandboxes {
        let uid = sb
            .labels
            .get(crate::labels::POD_UID)
            .cloned()
            .unwrap_or_default();
        crate::pod_worker::teardown_sandbox(
            &*runtime,
            &cni,
            &sb.id,
            &sb.metadata.name,
            &sb.metadata.namespace,
            &uid,
        )
        .await;
    }
    let pods_dir = config.data_dir.join("pods");
    let volumes = VolumeManager::new(pods_dir.clone());
    for entry in std::fs::read_dir(&pods_dir).into_iter().flatten().flatten() {
        let uid = entry.file_name().to_string_lossy().into_owned();
        if let Err(e) = volumes.teardown(&uid).await {
            tracing::warn!(pod_uid = %uid, error = %e, "tearing down volumes");
        }
    }
    Ok(())
}

fn node_pod_cidr(node: &Node) -> Option<String> {
    node.spec
        .as_ref()?
        .pod_cidr
        .clone()
        .filter(|c| !c.is_empty())
}

/// How long a joining node waits for node IPAM to give it a pod CIDR.
const POD_CIDR_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Polls the Node until the node IPAM controller set its spec.podCIDR.
async fn wait_for_pod_cidr(
    client: &kube::Client,
    name: &str,
    shutdown: &CancellationToken,
) -> Result<Node, KubeletError> {
    let api: kube::Api<Node> = kube::Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + POD_CIDR_WAIT;
    tracing::info!(node = name, "waiting for node IPAM to assign a pod CIDR");
    loop {
        let node = api.get(name).await?;
        if node_pod_cidr(&node).is_some() {
            return Ok(node);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(KubeletError::Setup(format!(
                "the Node got no spec.podCIDR within {POD_CIDR_WAIT:?} and no --pod-cidr was given"
            )));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Err(KubeletError::Setup("shut down while waiting for a pod CIDR".into())),
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
        }
    }
}

/// With the VXLAN backend, pods get the tunnel's MTU (the node interface's less 50).
async fn vxlan_pod_mtu(c: &AgentConfig) -> Option<u32> {
    if !c.vxlan {
        return None;
    }
    capstan_net::vxlan::pod_mtu(c.node_ip)
        .await
        .inspect_err(|e| tracing::warn!(error = %e, "vxlan pod MTU"))
        .ok()
}

fn enable_ip_forward() {
    if let Err(e) = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1") {
        tracing::warn!(error = %e, "setting net.ipv4.ip_forward=1");
    }
}

/// Runs the agent until `shutdown`; containers keep running afterwards.
pub async fn run_agent(
    config: AgentConfig,
    client: kube::Client,
    shutdown: CancellationToken,
) -> Result<(), KubeletError> {
    let c = &config;
    let (runtime, images, state_dir) = build_runtime(c)?;
    enable_ip_forward();

    let tasks = CancellationToken::new();
    // Whatever started is stopped again if start-up fails half-way.
    let _stop_on_error = tasks.clone().drop_guard();
    let (kubelet_addr, server_task) =
        start_kubelet_api(c, runtime.clone(), client.clone(), tasks.clone()).await?;
    tracing::info!(addr = %kubelet_addr, "kubelet API listening");

    let mut identity = NodeIdentity {
        name: c.node_name.clone(),
        ip: c.node_ip,
        kubelet_port: kubelet_addr.port(),
        labels: c.node_labels.clone(),
        data_dir: c.data_dir.clone(),
        pod_cidr: c.pod_cidr.clone(),
    };
    let mut node: Node = node::register(&client, &identity).await?;
    let pod_cidr = match node_pod_cidr(&node).or_else(|| c.pod_cidr.clone()) {
        Some(cidr) => cidr,
        None => {
            node = wait_for_pod_cidr(&client, &c.node_name, &shutdown).await?;
            node_pod_cidr(&node).unwrap_or_default()
        }
    };
    identity.pod_cidr = Some(pod_cidr.clone());
    let network = NodeNetwork {
        network_name: "capstan".into(),
        bridge: c.cni_bridge.clone(),
        pod_cidr: pod_cidr.clone(),
        ipam_data_dir: c.data_dir.join("agent/cni/networks"),
        mtu: vxlan_pod_mtu(c).await,
    };
    write_default_conflist(&c.cni_conf_dir, &network)
        .map_err(|e| KubeletError::Setup(format!("writing the CNI config: {e}")))?;
    let cni = cni(c);
    tracing::info!(node = %c.node_name, %pod_cidr, "node registered");

    let allocatable = node::node_status(&identity, &[], jiff::Timestamp::now())
        .allocatable
        .unwrap_or_default();
    let ctx = Arc::new(WorkerContext {
        client: client.clone(),
        runtime,
        images,
        cni,
        volumes: VolumeManager::new(c.data_dir.join("pods")),
        source: Arc::new(ApiObjectSource::new(client.clone())),
        recorder: EventRecorder::new(client.clone(), c.node_name.clone()),
        node_name: c.node_name.clone(),
        host_ip: c.node_ip.to_string(),
        pods_dir: c.data_dir.join("pods"),
        pod_log_dir: c.pod_log_dir.clone(),
        runtime_state_dir: state_dir,
        dns: ClusterDns {
            server: c.cluster_dns,
            domain: c.cluster_domain.clone(),
        },
        host_resolv: std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        memory_capacity: node::memory_capacity(),
        node_allocatable: allocatable,
    });
    let heartbeat = tokio::spawn(node::run_heartbeat(
        client.clone(),
        identity,
        node,
        tasks.clone(),
    ));
    let pods = tokio::spawn(crate::pods::run_pod_manager(ctx, tasks.clone()));
    let proxy = c.proxy.clone().map(|mut options| {
        if options.pod_cidrs.is_empty() {
            options.pod_cidrs.push(pod_cidr.clone());
        }
        tokio::spawn(capstan_net::proxy::run(
            client.clone(),
            options,
            tasks.clone(),
        ))
    });
    let host_gw = c.host_gw.then(|| {
        let options =
            capstan_net::hostgw::HostGwOptions::new(&c.node_name, c.node_ip, pod_cidr.clone());
        tokio::spawn(capstan_net::hostgw::run(
            client.clone(),
            options,
            tasks.clone(),
        ))
    });
    let vxlan = c.vxlan.then(|| {
        let options =
            capstan_net::vxlan::VxlanOptions::new(&c.node_name, c.node_ip, pod_cidr.clone());
        tokio::spawn(capstan_net::vxlan::run(
            client.clone(),
            options,
            tasks.clone(),
        ))
    });
    shutdown.cancelled().await;
    tracing::info!("node agent stopping (containers keep running)");
    tasks.cancel();
    let _ = pods.await;
    let _ = heartbeat.await;
    if let Some(proxy) = proxy {
        let _ = proxy.await;
    }
    if let Some(host_gw) = host_gw {
        let _ = host_gw.await;
    }
    if let Some(vxlan) = vxlan {
        let _ = vxlan.await;
    }
    let _ = server_task.await;
    Ok(())
}

/// Starts the kubelet HTTPS API (logs, exec, attach, port-forward, stats).
async fn start_kubelet_api(
    c: &AgentConfig,
    runtime: Arc<dyn RuntimeService>,
    client: kube::Client,
    stop: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), KubeletError> {
    let config = crate::server::KubeletServerConfig {
        bind: SocketAddr::new(IpAddr::from([0, 0, 0, 0]), c.kubelet_port),
        cert_dir: c.data_dir.join("agent/pki"),
        pods_dir: c.data_dir.join("pods"),
    };
    let auth = crate::server::auth::KubeletAuth {
        node_name: c.node_name.clone(),
        api: Some(client),
    };
    crate::server::serve_with(config, runtime, auth, stop)
        .await
        .map_err(|e| KubeletError::Setup(format!("starting the kubelet API: {e}")))
}
