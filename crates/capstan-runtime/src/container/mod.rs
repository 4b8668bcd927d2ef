//! Containers and pod sandboxes ([`ContainerRuntime`], the [`RuntimeService`] implementation):
//! overlayfs root filesystems over the image's layers, OCI bundles generated with oci-spec and
//! run by runc (default) or crun, a pause process per sandbox holding the shared namespaces, and
//! a shim process per container that owns its stdio, CRI log and exit status. All state lives
//! in files under the state root, so a new process can take over containers after the managing
//! process died.
//!
//! [`RuntimeService`]: crate::cri::RuntimeService

pub mod cgroups;
mod exec;
pub mod image_source;
mod lifecycle;
pub mod logs;
pub mod oci;
pub mod pause;
pub mod rootfs;
mod sandbox;
mod service;
pub mod shim;
pub mod spec;
pub mod state;
pub mod user;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub use image_source::{DirImage, ImageDefaults, ImageSource, ResolvedImage};
pub use oci::OciRuntime;

use crate::cri::runtime_service::RuntimeError;
use cgroups::CgroupMounts;
use rootfs::{KernelMounter, Mounter};
use spec::HostLimits;
use state::StateLayout;

/// Where the runtime keeps things and which programs it runs.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Persistent state (`<data-dir>/runtime`): sandbox and container records, bundles.
    pub state_dir: PathBuf,
    /// Volatile state (`/run/capstan`): netns bind mounts, the OCI runtimes' roots.
    pub run_dir: PathBuf,
    /// Absolute cgroup path under which pod and container cgroups are made.
    pub cgroup_parent: String,
    /// The capstan binary, re-executed as `capstan shim` and `capstan pause`.
    pub shim_binary: PathBuf,
    /// Runtime handler name → OCI runtime binary ("runc", "crun").
    pub runtimes: BTreeMap<String, PathBuf>,
    /// The handler used for "".
    pub default_runtime: String,
}

impl RuntimeConfig {
    /// The defaults under `state_dir` and `run_dir`: runc and crun from PATH, runc by default.
    pub fn new(state_dir: PathBuf, run_dir: PathBuf, shim_binary: PathBuf) -> Self {
        let runtimes = [("runc", "runc"), ("crun", "crun")]
            .into_iter()
            .map(|(h, b)| (h.to_string(), PathBuf::from(b)))
            .collect();
        RuntimeConfig {
            state_dir,
            run_dir,
            cgroup_parent: "/capstan".into(),
            shim_binary,
            runtimes,
            default_runtime: "runc".into(),
        }
    }

    /// The OCI runtime of `handler` ("" = default).
    pub fn oci_runtime(&self, handler: &str) -> Result<OciRuntime, RuntimeError> {
        let handler = if handler.is_empty() {
            self.default_runtime.as_str()
        } else {
            handler
        };
        let binary = self.runtimes.get(handler).ok_or_else(|| {
            RuntimeError::InvalidArgument(format!("unknown runtime handler {handler:?}"))
        })?;
        Ok(OciRuntime {
            binary: binary.clone(),
            root: self.run_dir.join(handler),
        })
    }

    /// Where a sandbox's network namespace is bind-mounted.
    pub fn netns_path(&self, sandbox_id: &str) -> PathBuf {
        self.run_dir.join("netns").join(sandbox_id)
    }
}

/// The container runtime. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct ContainerRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    config: RuntimeConfig,
    layout: StateLayout,
    images: Arc<dyn ImageSource>,
    mounter: Arc<dyn Mounter>,
    cgroups: CgroupMounts,
    host: HostLimits,
    /// Exit notifications of the shims this process spawned (their exit = exit recorded).
    exits: Mutex<HashMap<String, Arc<ExitSignal>>>,
}

#[derive(Default)]
struct ExitSignal {
    done: Mutex<bool>,
    cond: Condvar,
}

impl ExitSignal {
    fn set(&self) {
        if let Ok(mut d) = self.done.lock() {
            *d = true;
        }
        self.cond.notify_all();
    }

    /// Waits until set or `deadline`; true when set.
    fn wait_until(&self, deadline: Instant) -> bool {
        let Ok(mut done) = self.done.lock() else {
            return false;
        };
        while !*done {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.cond.wait_timeout(done, left) {
                Ok((d, _)) => done = d,
                Err(_) => return false,
            }
        }
        true
    }
}

impl std::fmt::Debug for ContainerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerRuntime")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl ContainerRuntime {
    /// A runtime over the real kernel; creates the state and run directories.
    pub fn new(config: RuntimeConfig, images: Arc<dyn ImageSource>) -> Result<Self, RuntimeError> {
        Self::with_mounter(config, images, Arc::new(KernelMounter))
    }

    pub fn with_mounter(
        config: RuntimeConfig,
        images: Arc<dyn ImageSource>,
        mounter: Arc<dyn Mounter>,
    ) -> Result<Self, RuntimeError> {
        if !config.cgroup_parent.starts_with('/') {
            return Err(RuntimeError::InvalidArgument(format!(
                "cgroup parent {:?} is not absolute",
                config.cgroup_parent
            )));
        }
        let layout = StateLayout::new(config.state_dir.clone());
        for dir in [
            layout.sandboxes(),
            layout.containers(),
            config.run_dir.join("netns"),
        ] {
            std::fs::create_dir_all(&dir)
                .map_err(|e| RuntimeError::io(format!("creating {}", dir.display()), e))?;
        }
        let cgroups = CgroupMounts::detect();
        let memory_root = cgroups.memory.as_ref().map(|(p, _)| p.clone());
        let host = HostLimits::detect(memory_root.as_deref());
        Ok(ContainerRuntime {
            inner: Arc::new(Inner {
                config,
                layout,
                images,
                mounter,
                cgroups,
                host,
                exits: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// The cgroup mounts this runtime found (for leak checks).
    pub fn cgroup_mounts(&self) -> &CgroupMounts {
        &self.inner.cgroups
    }

    /// Waits until the container has exited (its exit recorded), at most `timeout`; true if so.
    pub async fn wait_container(&self, id: &str, timeout: Duration) -> Result<bool, RuntimeError> {
        let inner = self.inner.clone();
        let id = id.to_string();
        blocking(move || Ok(inner.wait_exit(&id, Instant::now() + timeout))).await
    }

    /// The container directory of `id` (bundle, records), for diagnostics.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.inner.layout.container(id)
    }

    /// The sandbox directory of `id`.
    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.inner.layout.sandbox(id)
    }
}

/// Runs blocking runtime work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RuntimeError> + Send + 'static,
) -> Result<T, RuntimeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RuntimeError::io("runtime task", std::io::Error::other(e.to_string())))?
}

/// Polls `cond` every few milliseconds until it holds or `deadline` passes; its last value.
fn poll_until(deadline: Instant, mut cond: impl FnMut() -> bool) -> bool {
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn ensure_dir(path: &Path) -> Result<(), RuntimeError> {
    std::fs::create_dir_all(path)
        .map_err(|e| RuntimeError::io(format!("creating {}", path.display()), e))
}
