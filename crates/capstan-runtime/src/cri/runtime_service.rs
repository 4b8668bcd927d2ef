//! The runtime half of CRI as a Rust trait: pod sandboxes, containers, exec. The types mirror
//! CRI's messages (`runtime/v1/api.proto`) field for field where Capstan uses them, so a CRI gRPC
//! front or a remote-CRI client can sit behind the same trait later without touching the kubelet.
//! Integers follow CRI's convention: 0 means "not set".

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use futures::future::BoxFuture;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

/// The operations the kubelet needs from a container runtime.
#[async_trait::async_trait]
pub trait RuntimeService: Send + Sync {
    /// Creates and starts a pod sandbox (the namespaces its containers share); returns its id.
    /// `runtime_handler` picks the OCI runtime ("" = default, "runc", "crun").
    async fn run_pod_sandbox(
        &self,
        config: &PodSandboxConfig,
        runtime_handler: &str,
    ) -> Result<String, RuntimeError>;
    /// Stops every container of the sandbox (no grace period) and the sandbox's pause process.
    async fn stop_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError>;
    /// Stops and removes the sandbox and all its containers; idempotent.
    async fn remove_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError>;
    async fn pod_sandbox_status(&self, id: &str) -> Result<PodSandboxStatus, RuntimeError>;
    async fn list_pod_sandboxes(
        &self,
        filter: &PodSandboxFilter,
    ) -> Result<Vec<PodSandbox>, RuntimeError>;

    /// Prepares a container in a sandbox (bundle, root filesystem); returns its id.
    async fn create_container(
        &self,
        pod_sandbox_id: &str,
        config: &ContainerConfig,
        sandbox_config: &PodSandboxConfig,
    ) -> Result<String, RuntimeError>;
    async fn start_container(&self, id: &str) -> Result<(), RuntimeError>;
    /// SIGTERM, then SIGKILL once `timeout` has passed; returns once the exit is recorded.
    async fn stop_container(&self, id: &str, timeout: Duration) -> Result<(), RuntimeError>;
    /// Removes the container (killing it if still running); idempotent.
    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError>;
    async fn container_status(&self, id: &str) -> Result<ContainerStatus, RuntimeError>;
    async fn list_containers(
        &self,
        filter: &ContainerFilter,
    ) -> Result<Vec<Container>, RuntimeError>;

    /// Runs a command in a running container and returns its captured output.
    async fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Option<Duration>,
    ) -> Result<ExecSyncResponse, RuntimeError>;
    /// Runs a command in a running container with streamed stdio (optionally stdin and a TTY).
    async fn exec(&self, id: &str, request: &ExecRequest) -> Result<ExecSession, RuntimeError>;
}

/// Errors of the runtime service; the variants map onto gRPC codes for a CRI front.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}")]
    Sys {
        context: String,
        #[source]
        source: nix::Error,
    },
    #[error("{context}")]
    Json {
        context: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("building the OCI runtime spec")]
    Spec(#[from] oci_spec::OciSpecError),
    #[error("image {reference:?}")]
    Image {
        reference: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("shim of container {id}: {message}")]
    Shim { id: String, message: String },
    #[error("timed out: {0}")]
    Timeout(String),
}

impl RuntimeError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            context: context.into(),
            source,
        }
    }

    pub fn sys(context: impl Into<String>, source: nix::Error) -> Self {
        RuntimeError::Sys {
            context: context.into(),
            source,
        }
    }
}

/// CRI `PodSandboxMetadata`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSandboxMetadata {
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub attempt: u32,
}

/// CRI `PodSandboxConfig`, with DNS and hosts already rendered by the caller.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSandboxConfig {
    pub metadata: PodSandboxMetadata,
    pub hostname: String,
    /// `/var/log/pods/<ns>_<name>_<uid>`; container log paths are relative to it.
    pub log_directory: PathBuf,
    /// Content for the containers' /etc/resolv.conf (None: the host's).
    pub resolv_conf: Option<String>,
    /// Content for the containers' /etc/hosts (None: a localhost-only file).
    pub hosts: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// CRI `PodSandboxState`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodSandboxState {
    Ready,
    NotReady,
}

/// CRI `PodSandbox` (a list entry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSandbox {
    pub id: String,
    pub metadata: PodSandboxMetadata,
    pub state: PodSandboxState,
    pub created_at: Timestamp,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub runtime_handler: String,
}

/// CRI `PodSandboxStatus`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSandboxStatus {
    pub id: String,
    pub metadata: PodSandboxMetadata,
    pub state: PodSandboxState,
    pub created_at: Timestamp,
    /// The bind-mounted network namespace (`<run dir>/netns/<id>`), for CNI.
    pub network_namespace: PathBuf,
    pub hostname: String,
    /// The pause process holding the namespaces.
    pub pid: u32,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub runtime_handler: String,
}

/// CRI `PodSandboxFilter`.
#[derive(Clone, Debug, Default)]
pub struct PodSandboxFilter {
    pub id: Option<String>,
    pub state: Option<PodSandboxState>,
    pub label_selector: BTreeMap<String, String>,
}

/// CRI `ContainerMetadata`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerMetadata {
    pub name: String,
    pub attempt: u32,
}

/// CRI `KeyValue` of `ContainerConfig.envs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// CRI `MountPropagation`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountPropagation {
    #[default]
    Private,
    HostToContainer,
    Bidirectional,
}

/// CRI `Mount`: a bind mount of a host path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub container_path: String,
    pub host_path: PathBuf,
    pub readonly: bool,
    pub propagation: MountPropagation,
}

/// CRI `LinuxContainerResources` (0 = unset).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinuxContainerResources {
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub cpu_shares: i64,
    pub memory_limit_in_bytes: i64,
    pub oom_score_adj: i64,
    pub pids_limit: i64,
}

/// CRI `Capability`: names with or without the `CAP_` prefix, or `ALL`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capability {
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
}

/// CRI `LinuxContainerSecurityContext`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinuxContainerSecurityContext {
    pub capabilities: Option<Capability>,
    pub privileged: bool,
    pub run_as_user: Option<i64>,
    pub run_as_username: Option<String>,
    pub run_as_group: Option<i64>,
    pub readonly_rootfs: bool,
    pub supplemental_groups: Vec<i64>,
    pub no_new_privs: bool,
}

/// CRI `LinuxContainerConfig`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinuxContainerConfig {
    pub resources: LinuxContainerResources,
    pub security_context: LinuxContainerSecurityContext,
}

/// CRI `ContainerConfig`. `$(VAR)` references in command/args are already expanded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerConfig {
    pub metadata: ContainerMetadata,
    /// An image reference or id the image store resolves.
    pub image: String,
    /// Replaces the image's ENTRYPOINT (and drops its CMD) when not empty.
    pub command: Vec<String>,
    /// Replaces the image's CMD when not empty.
    pub args: Vec<String>,
    pub working_dir: Option<String>,
    pub envs: Vec<KeyValue>,
    pub mounts: Vec<Mount>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Relative to the sandbox's log directory: `<container>/<restart>.log`.
    pub log_path: PathBuf,
    pub linux: LinuxContainerConfig,
}

/// CRI `ContainerState`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

impl ContainerState {
    /// crictl's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerState::Created => "Created",
            ContainerState::Running => "Running",
            ContainerState::Exited => "Exited",
            ContainerState::Unknown => "Unknown",
        }
    }
}

/// CRI `ContainerStatus`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub id: String,
    pub pod_sandbox_id: String,
    pub metadata: ContainerMetadata,
    pub state: ContainerState,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub exit_code: i32,
    pub image: String,
    /// The resolved image id.
    pub image_ref: String,
    /// `Completed`, `Error`, `OOMKilled`, `StartError` once exited.
    pub reason: String,
    pub message: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Absolute path of the CRI-format log file.
    pub log_path: PathBuf,
    /// Host pid of the container's init process while it runs.
    pub pid: Option<u32>,
}

/// CRI `Container` (a list entry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    pub id: String,
    pub pod_sandbox_id: String,
    pub metadata: ContainerMetadata,
    pub image: String,
    pub image_ref: String,
    pub state: ContainerState,
    pub created_at: Timestamp,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// CRI `ContainerFilter`.
#[derive(Clone, Debug, Default)]
pub struct ContainerFilter {
    pub id: Option<String>,
    pub state: Option<ContainerState>,
    pub pod_sandbox_id: Option<String>,
    pub label_selector: BTreeMap<String, String>,
}

/// CRI `ExecSyncResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecSyncResponse {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// CRI `ExecRequest` (the streaming form).
#[derive(Clone, Debug, Default)]
pub struct ExecRequest {
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
}

/// A running streamed exec: its stdio and its exit code. With a TTY, stderr is merged into
/// stdout (as CRI specifies) and `stderr` is None.
pub struct ExecSession {
    pub stdin: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    pub stdout: Pin<Box<dyn AsyncRead + Send>>,
    pub stderr: Option<Pin<Box<dyn AsyncRead + Send>>>,
    /// Resolves to the command's exit code once it ends.
    pub exit: BoxFuture<'static, Result<i32, RuntimeError>>,
}

impl std::fmt::Debug for ExecSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecSession")
            .field("stdin", &self.stdin.is_some())
            .field("stderr", &self.stderr.is_some())
            .finish_non_exhaustive()
    }
}

/// True when every label of `selector` is in `labels` with the same value.
pub fn labels_match(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Upper bound for operations that take no timeout of their own.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
