//! Container verbs: create (root filesystem + bundle), start (via the shim), stop (signal,
//! grace period, SIGKILL), remove (runtime state, mounts, cgroups, state dir), status, list.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;

use super::state::{
    self, CONTAINER_FILE, ContainerRecord, EXIT_FILE, ExitRecord, SHIM_FILE, STARTED_FILE,
    StartedRecord,
};
use super::{ExitSignal, Inner, poll_until, rootfs, shim, spec, user};
use crate::cri::runtime_service::{
    Container, ContainerConfig, ContainerFilter, ContainerState, ContainerStatus, RuntimeError,
    labels_match,
};

/// How long a SIGKILLed container may take until its exit is recorded.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// Removes a half-created container unless disarmed.
struct CreateGuard<'a> {
    inner: &'a Inner,
    dir: PathBuf,
    armed: bool,
}

impl Drop for CreateGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.inner.mounter.unmount(&self.dir.join("bundle/rootfs"));
            let _ = state::remove_dir_all(&self.dir);
        }
    }
}

impl Inner {
    pub(super) fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
    ) -> Result<String, RuntimeError> {
        if config.metadata.name.is_empty() {
            return Err(RuntimeError::InvalidArgument(
                "container name is empty".into(),
            ));
        }
        let sandbox = self.sandbox_record(sandbox_id)?;
        let share = self.sandbox_share(&sandbox)?;
        let image = self.images.resolve_image(&config.image)?;
        let id = state::new_id();
        let dir = self.layout.container(&id);
        super::ensure_dir(&dir)?;
        let mut guard = CreateGuard {
            inner: self,
            dir: dir.clone(),
            armed: true,
        };
        let rootfs = rootfs::mount_rootfs(self.mounter.as_ref(), &dir, &image.layers)?;
        let identity = user::resolve(
            &rootfs,
            &image.defaults.user,
            &config.linux.security_context,
        )?;
        let cgroups_path = format!("{}/{id}", self.pod_cgroup(sandbox_id));
        let oci_spec = spec::build(&spec::SpecInput {
            config,
            image: &image.defaults,
            rootfs: &rootfs,
            identity: &identity,
            sandbox: &share,
            cgroups_path: &cgroups_path,
            host: &self.host,
        })?;
        state::write_json(&dir.join("bundle/config.json"), &oci_spec)?;
        let relative_log = if config.log_path.as_os_str().is_empty() {
            PathBuf::from(format!(
                "{}/{}.log",
                config.metadata.name, config.metadata.attempt
            ))
        } else {
            config.log_path.clone()
        };
        let log_dir = &sandbox.config.log_directory;
        let log_path = if log_dir.as_os_str().is_empty() {
            dir.join("container.log")
        } else {
            log_dir.join(relative_log)
        };
        let record = ContainerRecord {
            id: id.clone(),
            pod_sandbox_id: sandbox_id.to_string(),
            metadata: config.metadata.clone(),
            sandbox_metadata: sandbox.config.metadata.clone(),
            image: config.image.clone(),
            image_ref: image.id,
            created_at: Timestamp::now(),
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
            log_path: log_path.clone(),
            runtime_handler: sandbox.runtime_handler.clone(),
            cgroups_path: cgroups_path.clone(),
        };
        let shim_config = shim::ShimConfig {
            id: id.clone(),
            runtime: self.config.oci_runtime(&sandbox.runtime_handler)?,
            bundle: dir.join("bundle"),
            log_path,
            memory_cgroup: self.cgroups.memory_dir(&cgroups_path),
        };
        state::write_json(&dir.join(SHIM_FILE), &shim_config)?;
        // The record goes last: its presence means "created".
        state::write_json(&dir.join(CONTAINER_FILE), &record)?;
        guard.armed = false;
        tracing::info!(container = %id, sandbox = sandbox_id, name = %config.metadata.name, "container created");
        Ok(id)
    }

    pub(super) fn container_record(&self, id: &str) -> Result<ContainerRecord, RuntimeError> {
        state::read_json(&self.layout.container(id).join(CONTAINER_FILE))?.ok_or_else(|| {
            RuntimeError::NotFound {
                kind: "container",
                id: id.to_string(),
            }
        })
    }

    pub(super) fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        let record = self.container_record(id)?;
        let dir = self.layout.container(id);
        if dir.join(STARTED_FILE).exists() || dir.join(EXIT_FILE).exists() {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {id} was started already"
            )));
        }
        // A log directory may have been removed by the caller meanwhile; the shim recreates it.
        let (mut child, pid) = shim::spawn(&self.config.shim_binary, &dir, id)?;
        let signal = Arc::new(ExitSignal::default());
        if let Ok(mut exits) = self.exits.lock() {
            exits.insert(id.to_string(), signal.clone());
        }
        std::thread::spawn(move || {
            let _ = child.wait();
            signal.set();
        });
        tracing::info!(container = id, name = %record.metadata.name, pid, "container started");
        Ok(())
    }

    /// Waits until the exit of container `id` is recorded or `deadline` passes.
    pub(super) fn wait_exit(&self, id: &str, deadline: Instant) -> bool {
        let exit_file = self.layout.container(id).join(EXIT_FILE);
        let signal = self.exits.lock().ok().and_then(|e| e.get(id).cloned());
        match signal {
            Some(s) => s.wait_until(deadline) && exit_file.exists(),
            None => poll_until(deadline, || exit_file.exists()),
        }
    }

    fn oci_for(&self, record: &ContainerRecord) -> Result<super::OciRuntime, RuntimeError> {
        self.config.oci_runtime(&record.runtime_handler)
    }

    pub(super) fn stop_container(&self, id: &str, timeout: Duration) -> Result<(), RuntimeError> {
        let record = self.container_record(id)?;
        if self.container_state(id).0 != ContainerState::Running {
            return Ok(());
        }
        let oci = self.oci_for(&record)?;
        if !timeout.is_zero() {
            oci.kill(id, "TERM")?;
            if self.wait_exit(id, Instant::now() + timeout) {
                return Ok(());
            }
        }
        oci.kill(id, "KILL")?;
        if self.wait_exit(id, Instant::now() + KILL_TIMEOUT) {
            tracing::info!(container = id, "container stopped");
            return Ok(());
        }
        Err(RuntimeError::Timeout(format!(
            "container {id} did not exit {KILL_TIMEOUT:?} after SIGKILL"
        )))
    }

    pub(super) fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        let dir = self.layout.container(id);
        let record = match self.container_record(id) {
            Ok(r) => r,
            Err(RuntimeError::NotFound { .. }) => {
                // Half-created leftovers (no record yet) still go.
                if dir.exists() {
                    self.mounter.unmount(&dir.join("bundle/rootfs"))?;
                    state::remove_dir_all(&dir)?;
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        self.stop_container(id, Duration::ZERO)?;
        self.oci_for(&record)?.delete(id)?;
        self.mounter.unmount(&dir.join("bundle/rootfs"))?;
        self.cgroups.remove_empty(
            &record.cgroups_path,
            &self.pod_cgroup(&record.pod_sandbox_id),
        );
        state::remove_dir_all(&dir)?;
        if let Ok(mut exits) = self.exits.lock() {
            exits.remove(id);
        }
        tracing::info!(container = id, "container removed");
        Ok(())
    }

    /// The state with its started and exit records.
    fn container_state(
        &self,
        id: &str,
    ) -> (ContainerState, Option<StartedRecord>, Option<ExitRecord>) {
        let dir = self.layout.container(id);
        let exit: Option<ExitRecord> = state::read_json(&dir.join(EXIT_FILE)).ok().flatten();
        let started: Option<StartedRecord> =
            state::read_json(&dir.join(STARTED_FILE)).ok().flatten();
        let state = match (&started, &exit) {
            (_, Some(_)) => ContainerState::Exited,
            (Some(s), None) => {
                if shim_alive(s.shim_pid) || dir.join(EXIT_FILE).exists() {
                    if dir.join(EXIT_FILE).exists() {
                        // Exited between the two reads above.
                        return self.container_state(id);
                    }
                    ContainerState::Running
                } else {
                    ContainerState::Unknown
                }
            }
            (None, None) => ContainerState::Created,
        };
        (state, started, exit)
    }

    pub(super) fn container_status(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        let r = self.container_record(id)?;
        let (state, started, exit) = self.container_state(id);
        Ok(ContainerStatus {
            id: r.id,
            pod_sandbox_id: r.pod_sandbox_id,
            metadata: r.metadata,
            state,
            created_at: r.created_at,
            started_at: started.as_ref().map(|s| s.started_at),
            finished_at: exit.as_ref().map(|e| e.finished_at),
            exit_code: exit.as_ref().map_or(0, |e| e.exit_code),
            image: r.image,
            image_ref: r.image_ref,
            reason: exit.as_ref().map_or_else(
                || {
                    if state == ContainerState::Unknown {
                        "ShimDied".to_string()
                    } else {
                        String::new()
                    }
                },
                |e| e.reason.clone(),
            ),
            message: exit.as_ref().map(|e| e.message.clone()).unwrap_or_default(),
            labels: r.labels,
            annotations: r.annotations,
            log_path: r.log_path,
            pid: if state == ContainerState::Running {
                started.map(|s| s.pid)
            } else {
                None
            },
        })
    }

    pub(super) fn list_containers(
        &self,
        filter: &ContainerFilter,
    ) -> Result<Vec<Container>, RuntimeError> {
        let mut out = Vec::new();
        for id in state::list_ids(&self.layout.containers())? {
            if filter.id.as_ref().is_some_and(|f| *f != id) {
                continue;
            }
            let Ok(r) = self.container_record(&id) else {
                continue;
            };
            if filter
                .pod_sandbox_id
                .as_ref()
                .is_some_and(|s| *s != r.pod_sandbox_id)
                || !labels_match(&filter.label_selector, &r.labels)
            {
                continue;
            }
            let state = self.container_state(&id).0;
            if filter.state.is_some_and(|s| s != state) {
                continue;
            }
            out.push(Container {
                id: r.id,
                pod_sandbox_id: r.pod_sandbox_id,
                metadata: r.metadata,
                image: r.image,
                image_ref: r.image_ref,
                state,
                created_at: r.created_at,
                labels: r.labels,
                annotations: r.annotations,
            });
        }
        out.sort_by_key(|c| c.created_at);
        Ok(out)
    }

    /// The OCI runtime and id to exec into a running container.
    pub(super) fn running(&self, id: &str) -> Result<super::OciRuntime, RuntimeError> {
        let record = self.container_record(id)?;
        if self.container_state(id).0 != ContainerState::Running {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        self.oci_for(&record)
    }
}

fn shim_alive(pid: u32) -> bool {
    state::process_start_time(pid).is_some()
}
