//! Pod sandboxes: a pause process holding fresh network, IPC and UTS namespaces, the network
//! namespace bind-mounted at `<run dir>/netns/<id>` (for CNI), and the files every container of
//! the pod bind-mounts (/etc/hosts, /etc/resolv.conf, /etc/hostname).

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::spec::SandboxShare;
use super::state::{self, SANDBOX_FILE, SandboxRecord};
use super::{Inner, ensure_dir, poll_until};
use crate::cri::runtime_service::{
    ContainerFilter, PodSandbox, PodSandboxConfig, PodSandboxFilter, PodSandboxState,
    PodSandboxStatus, RuntimeError, labels_match,
};

const DEFAULT_HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";
/// How long the pause process gets to exit on SIGTERM before SIGKILL.
const PAUSE_STOP_TIMEOUT: Duration = Duration::from_secs(5);

impl Inner {
    pub(super) fn run_pod_sandbox(
        &self,
        config: &PodSandboxConfig,
        handler: &str,
    ) -> Result<String, RuntimeError> {
        // Validates the handler before anything is made.
        self.config.oci_runtime(handler)?;
        let id = state::new_id();
        let dir = self.layout.sandbox(&id);
        ensure_dir(&dir)?;
        let result = self.setup_sandbox(&id, config, handler);
        if result.is_err() {
            let _ = self.teardown_sandbox(&id);
            let _ = state::remove_dir_all(&dir);
        }
        result.map(|()| id)
    }

    fn setup_sandbox(
        &self,
        id: &str,
        config: &PodSandboxConfig,
        handler: &str,
    ) -> Result<(), RuntimeError> {
        let dir = self.layout.sandbox(id);
        let resolv = match &config.resolv_conf {
            Some(r) => r.clone(),
            None => fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        };
        let files = [
            (
                "hosts",
                config
                    .hosts
                    .clone()
                    .unwrap_or_else(|| DEFAULT_HOSTS.to_string()),
            ),
            ("resolv.conf", resolv),
            ("hostname", format!("{}\n", config.hostname)),
        ];
        for (name, content) in files {
            state::write_atomic(&dir.join(name), content.as_bytes())?;
        }
        let log = dir.join("pause.log");
        let stderr = File::create(&log)
            .map_err(|e| RuntimeError::io(format!("creating {}", log.display()), e))?;
        let mut child = Command::new(&self.config.shim_binary)
            .arg("pause")
            .arg("--hostname")
            .arg(&config.hostname)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| RuntimeError::io("spawning the pause process", e))?;
        let pid = child.id();
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        if line.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            return Err(RuntimeError::Shim {
                id: id.to_string(),
                message: format!(
                    "pause process did not get ready: {}",
                    fs::read_to_string(&log).unwrap_or_default().trim()
                ),
            });
        }
        // Reap the pause process whenever it ends (a later process finds it gone via /proc).
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        let start_time = state::process_start_time(pid).unwrap_or(0);
        let netns = self.config.netns_path(id);
        File::create(&netns)
            .map_err(|e| RuntimeError::io(format!("creating {}", netns.display()), e))?;
        let record = SandboxRecord {
            id: id.to_string(),
            config: config.clone(),
            created_at: Timestamp::now(),
            runtime_handler: handler.to_string(),
            pid,
            pid_start_time: start_time,
            netns_path: netns.clone(),
            stopped: false,
        };
        // Written before the bind mount so a failed setup still knows what to tear down.
        state::write_json(&dir.join(SANDBOX_FILE), &record)?;
        self.mounter.bind(
            &std::path::PathBuf::from(format!("/proc/{pid}/ns/net")),
            &netns,
        )?;
        tracing::info!(sandbox = id, name = %config.metadata.name, pid, "pod sandbox running");
        Ok(())
    }

    pub(super) fn sandbox_record(&self, id: &str) -> Result<SandboxRecord, RuntimeError> {
        state::read_json(&self.layout.sandbox(id).join(SANDBOX_FILE))?.ok_or_else(|| {
            RuntimeError::NotFound {
                kind: "pod sandbox",
                id: id.to_string(),
            }
        })
    }

    /// The namespaces and files containers of sandbox `record` share.
    pub(super) fn sandbox_share(
        &self,
        record: &SandboxRecord,
    ) -> Result<SandboxShare, RuntimeError> {
        if record.stopped || !state::process_alive(record.pid, record.pid_start_time) {
            return Err(RuntimeError::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                record.id
            )));
        }
        let dir = self.layout.sandbox(&record.id);
        Ok(SandboxShare {
            netns: record.netns_path.clone(),
            ipcns: format!("/proc/{}/ns/ipc", record.pid).into(),
            utsns: format!("/proc/{}/ns/uts", record.pid).into(),
            hostname: record.config.hostname.clone(),
            hosts: dir.join("hosts"),
            resolv_conf: dir.join("resolv.conf"),
            hostname_file: dir.join("hostname"),
        })
    }

    pub(super) fn stop_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let mut record = self.sandbox_record(id)?;
        for c in self.list_containers(&ContainerFilter {
            pod_sandbox_id: Some(id.to_string()),
            ..Default::default()
        })? {
            self.stop_container(&c.id, Duration::ZERO)?;
        }
        self.teardown_sandbox(id)?;
        record.stopped = true;
        state::write_json(&self.layout.sandbox(id).join(SANDBOX_FILE), &record)
    }

    /// Stops the pause process and removes the netns bind mount; idempotent.
    fn teardown_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        if let Ok(Some(record)) =
            state::read_json::<SandboxRecord>(&self.layout.sandbox(id).join(SANDBOX_FILE))
        {
            let (pid, start) = (record.pid, record.pid_start_time);
            if state::process_alive(pid, start) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
                let gone = || !state::process_alive(pid, start);
                if !poll_until(Instant::now() + PAUSE_STOP_TIMEOUT, gone) {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    poll_until(Instant::now() + PAUSE_STOP_TIMEOUT, gone);
                }
            }
        }
        let netns = self.config.netns_path(id);
        self.mounter.unmount(&netns)?;
        match fs::remove_file(&netns) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RuntimeError::io(format!("removing {}", netns.display()), e)),
        }
    }

    pub(super) fn remove_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let dir = self.layout.sandbox(id);
        if !dir.exists() {
            return Ok(());
        }
        for c in self.list_containers(&ContainerFilter {
            pod_sandbox_id: Some(id.to_string()),
            ..Default::default()
        })? {
            self.remove_container(&c.id)?;
        }
        self.teardown_sandbox(id)?;
        self.cgroups
            .remove_empty(&self.pod_cgroup(id), &self.config.cgroup_parent);
        state::remove_dir_all(&dir)?;
        tracing::info!(sandbox = id, "pod sandbox removed");
        Ok(())
    }

    /// The cgroup of a pod: `<parent>/pod<id>`.
    pub(super) fn pod_cgroup(&self, sandbox_id: &str) -> String {
        format!(
            "{}/pod{sandbox_id}",
            self.config.cgroup_parent.trim_end_matches('/')
        )
    }

    fn sandbox_state(record: &SandboxRecord) -> PodSandboxState {
        if !record.stopped && state::process_alive(record.pid, record.pid_start_time) {
            PodSandboxState::Ready
        } else {
            PodSandboxState::NotReady
        }
    }

    pub(super) fn pod_sandbox_status(&self, id: &str) -> Result<PodSandboxStatus, RuntimeError> {
        let r = self.sandbox_record(id)?;
        Ok(PodSandboxStatus {
            state: Self::sandbox_state(&r),
            id: r.id,
            metadata: r.config.metadata,
            created_at: r.created_at,
            network_namespace: r.netns_path,
            hostname: r.config.hostname,
            pid: r.pid,
            labels: r.config.labels,
            annotations: r.config.annotations,
            runtime_handler: r.runtime_handler,
        })
    }

    pub(super) fn list_pod_sandboxes(
        &self,
        filter: &PodSandboxFilter,
    ) -> Result<Vec<PodSandbox>, RuntimeError> {
        let mut out = Vec::new();
        for id in state::list_ids(&self.layout.sandboxes())? {
            if filter.id.as_ref().is_some_and(|f| *f != id) {
                continue;
            }
            // A sandbox being created or removed has no record: skip it.
            let Ok(r) = self.sandbox_record(&id) else {
                continue;
            };
            let state = Self::sandbox_state(&r);
            if filter.state.is_some_and(|s| s != state)
                || !labels_match(&filter.label_selector, &r.config.labels)
            {
                continue;
            }
            out.push(PodSandbox {
                id: r.id,
                metadata: r.config.metadata,
                state,
                created_at: r.created_at,
                labels: r.config.labels,
                annotations: r.config.annotations,
                runtime_handler: r.runtime_handler,
            });
        }
        out.sort_by_key(|s| s.created_at);
        Ok(out)
    }
}
