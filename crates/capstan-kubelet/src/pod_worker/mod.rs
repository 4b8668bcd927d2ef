//! One actor task per pod bound to this node: it owns the pod's sandbox, network, volumes,
//! containers and probes, syncs them to the spec on every update and tick, reports status,
//! and on deletion stops everything gracefully and removes the pod object.

mod containers;
mod sandbox;
pub use sandbox::teardown_sandbox;
mod sync;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use capstan_net::cni::Cni;
use capstan_runtime::cri::{ImageService, PodSandboxConfig, RuntimeService};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Patch, PatchParams};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::dns::ClusterDns;
use crate::events::EventRecorder;
use crate::probe::ProbeReport;
use crate::source::ObjectSource;
use crate::status::{self, PodView};
use crate::volumes::{PodVolumes, VolumeManager};

/// How often a worker looks at its containers when nothing else wakes it (the runtime has no
/// event stream: exits are found by polling).
pub const RESYNC: Duration = Duration::from_secs(1);
/// How often configMap/secret volumes are re-read.
const VOLUME_REFRESH: Duration = Duration::from_secs(30);

/// What every pod worker on the node shares.
pub struct WorkerContext {
    pub client: kube::Client,
    pub runtime: Arc<dyn RuntimeService>,
    pub images: Arc<dyn ImageService>,
    pub cni: Cni,
    pub volumes: VolumeManager,
    pub source: Arc<dyn ObjectSource>,
    pub recorder: EventRecorder,
    pub node_name: String,
    pub host_ip: String,
    /// `<data-dir>/pods`: per-pod volumes and the worker's network record.
    pub pods_dir: PathBuf,
    /// `/var/log/pods`-like root of the pods' log directories.
    pub pod_log_dir: PathBuf,
    /// The runtime's state dir, to write the kubelet-managed /etc/hosts of a sandbox.
    pub runtime_state_dir: PathBuf,
    pub dns: ClusterDns,
    /// The node's own resolv.conf text.
    pub host_resolv: String,
    pub memory_capacity: i64,
    pub node_allocatable: BTreeMap<String, Quantity>,
}

/// A message to a pod worker.
#[derive(Debug)]
pub enum WorkerMessage {
    /// The pod changed (or was seen again after a watch restart).
    Update(Box<Pod>),
    /// The pod no longer exists in the API.
    Gone,
}

/// The pod's sandbox as the worker knows it.
#[derive(Clone, Debug)]
pub(crate) struct SandboxInfo {
    pub id: String,
    pub config: PodSandboxConfig,
    pub netns: PathBuf,
    pub ips: Vec<String>,
}

/// Per running container: its probers and their latest verdicts.
pub(crate) struct ProbeState {
    pub stop: CancellationToken,
    pub ready: bool,
    pub started: bool,
    pub liveness_failed: bool,
    pub startup_failed: bool,
}

pub(crate) struct Worker {
    ctx: Arc<WorkerContext>,
    pod: Pod,
    uid: String,
    gone: bool,
    /// The pod reached Succeeded/Failed and was wound down; status is final.
    terminal: bool,
    sandbox: Option<SandboxInfo>,
    volumes: Option<PodVolumes>,
    volumes_refreshed: Option<tokio::time::Instant>,
    restart_backoff: Backoff,
    image_backoff: Backoff,
    /// Image back-off key → when its last pull failed.
    image_failures: HashMap<String, jiff::Timestamp>,
    /// Container name → why it waits (reason, message).
    waiting: HashMap<String, (String, String)>,
    /// Container id → probe state.
    probes: HashMap<String, ProbeState>,
    probe_tx: mpsc::Sender<ProbeReport>,
    last_status: Option<serde_json::Value>,
    /// Earliest next sync wanted by back-offs.
    wake: Option<Duration>,
    stop: CancellationToken,
    view: PodView,
}

/// Runs the worker of `pod` until the pod is gone and cleaned up, or `stop` (agent shutdown:
/// containers are left running for the next agent to adopt).
pub async fn run_worker(
    ctx: Arc<WorkerContext>,
    pod: Pod,
    mut rx: mpsc::Receiver<WorkerMessage>,
    stop: CancellationToken,
) {
    let (probe_tx, mut probe_rx) = mpsc::channel(64);
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let mut w = Worker {
        ctx,
        pod,
        uid,
        gone: false,
        terminal: false,
        sandbox: None,
        volumes: None,
        volumes_refreshed: None,
        restart_backoff: Backoff::default(),
        image_backoff: Backoff::default(),
        image_failures: HashMap::new(),
        waiting: HashMap::new(),
        probes: HashMap::new(),
        probe_tx,
        last_status: None,
        wake: None,
        stop: stop.clone(),
        view: PodView::default(),
    };
    loop {
        if w.sync().await {
            break;
        }
        w.report_status().await;
        let wait = w.wake.take().unwrap_or(RESYNC).min(RESYNC);
        tokio::select! {
            _ = stop.cancelled() => break,
            msg = rx.recv() => match msg {
                Some(m) => w.handle(m),
                None => break,
            },
            Some(report) = probe_rx.recv() => w.on_probe(report).await,
            _ = tokio::time::sleep(wait) => {}
        }
        while let Ok(m) = rx.try_recv() {
            w.handle(m);
        }
    }
    for (_, p) in w.probes.drain() {
        p.stop.cancel();
    }
}

impl Worker {
    fn handle(&mut self, m: WorkerMessage) {
        match m {
            WorkerMessage::Update(pod) => {
                // Keep the newer status we wrote if the update is older than our patch.
                self.pod = *pod;
            }
            WorkerMessage::Gone => self.gone = true,
        }
    }

    fn pod_name(&self) -> String {
        self.pod.metadata.name.clone().unwrap_or_default()
    }

    fn namespace(&self) -> String {
        self.pod.metadata.namespace.clone().unwrap_or_default()
    }

    /// Patches pods/status when the computed status differs from what the API has.
    async fn report_status(&mut self) {
        if self.terminal
            || self.gone
            || self.pod.metadata.deletion_timestamp.is_some() && self.sandbox.is_none()
        {
            return;
        }
        let status = status::compute(&self.pod, &self.view, jiff::Timestamp::now());
        let value = serde_json::to_value(&status).unwrap_or_default();
        let current = serde_json::to_value(&self.pod.status).unwrap_or_default();
        if current == value {
            self.last_status = Some(value);
            return;
        }
        let api: kube::Api<Pod> = kube::Api::namespaced(self.ctx.client.clone(), &self.namespace());
        let patch = serde_json::json!({ "status": value });
        match api
            .patch_status(
                &self.pod_name(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(p) if p.metadata.uid.as_deref() == Some(self.uid.as_str()) => {
                self.pod = p;
                self.last_status = Some(value);
            }
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => tracing::warn!(pod = %self.pod_name(), error = %e, "patching pod status"),
        }
    }
}
