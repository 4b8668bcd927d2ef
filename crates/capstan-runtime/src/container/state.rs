//! On-disk state: one directory per sandbox and per container under the state root, records
//! written atomically (temp file + rename), so any process can read them at any time and a new
//! process takes over after the managing one died.
//!
//! ```text
//! <state>/sandboxes/<id>/sandbox.json   hosts  resolv.conf  hostname
//! <state>/containers/<id>/container.json  shim.json  started.json  exit.json
//!                         bundle/config.json  bundle/rootfs (overlay)  upper/  work/
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::cri::runtime_service::{
    ContainerMetadata, PodSandboxConfig, PodSandboxMetadata, RuntimeError,
};

/// The directory layout under the state root.
#[derive(Clone, Debug)]
pub struct StateLayout {
    root: PathBuf,
}

impl StateLayout {
    pub fn new(root: PathBuf) -> Self {
        StateLayout { root }
    }

    pub fn sandboxes(&self) -> PathBuf {
        self.root.join("sandboxes")
    }

    pub fn containers(&self) -> PathBuf {
        self.root.join("containers")
    }

    pub fn sandbox(&self, id: &str) -> PathBuf {
        self.sandboxes().join(id)
    }

    pub fn container(&self, id: &str) -> PathBuf {
        self.containers().join(id)
    }
}

/// What is known about a sandbox from its creation on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub config: PodSandboxConfig,
    pub created_at: Timestamp,
    pub runtime_handler: String,
    /// The pause process and its start time (clock ticks since boot) against pid reuse.
    pub pid: u32,
    pub pid_start_time: u64,
    pub netns_path: PathBuf,
    /// Set once stopped: the pause process is gone.
    pub stopped: bool,
}

/// What is known about a container from its creation on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_sandbox_id: String,
    pub metadata: ContainerMetadata,
    pub sandbox_metadata: PodSandboxMetadata,
    pub image: String,
    pub image_ref: String,
    pub created_at: Timestamp,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub log_path: PathBuf,
    pub runtime_handler: String,
    /// The cgroup path given to the OCI runtime (absolute, under the cgroup parent).
    pub cgroups_path: String,
}

/// Written by the shim once the container's init process runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StartedRecord {
    pub pid: u32,
    pub started_at: Timestamp,
    /// The shim itself, so a later process can tell whether it is still alive.
    pub shim_pid: u32,
}

/// Written by the shim once the container's init process has exited.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExitRecord {
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub finished_at: Timestamp,
}

pub const CONTAINER_FILE: &str = "container.json";
pub const SANDBOX_FILE: &str = "sandbox.json";
pub const STARTED_FILE: &str = "started.json";
pub const EXIT_FILE: &str = "exit.json";
pub const SHIM_FILE: &str = "shim.json";

/// Writes `value` as JSON to `path` atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), RuntimeError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| RuntimeError::Json {
        context: format!("encoding {}", path.display()),
        source,
    })?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` via a temp file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RuntimeError> {
    let tmp = path.with_extension("tmp");
    let ctx = || format!("writing {}", path.display());
    let mut file = fs::File::create(&tmp).map_err(|e| RuntimeError::io(ctx(), e))?;
    file.write_all(bytes)
        .map_err(|e| RuntimeError::io(ctx(), e))?;
    fs::rename(&tmp, path).map_err(|e| RuntimeError::io(ctx(), e))
}

/// Reads a JSON record; `Ok(None)` when the file does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, RuntimeError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RuntimeError::io(format!("reading {}", path.display()), e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| RuntimeError::Json {
            context: format!("decoding {}", path.display()),
            source,
        })
}

/// The ids (directory names) under `dir`, empty when it does not exist.
pub fn list_ids(dir: &Path) -> Result<Vec<String>, RuntimeError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(RuntimeError::io(format!("listing {}", dir.display()), e)),
    };
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| RuntimeError::io(format!("listing {}", dir.display()), e))?;
        if let Some(name) = entry.file_name().to_str() {
            ids.push(name.to_string());
        }
    }
    ids.sort();
    Ok(ids)
}

/// Removes a directory tree; a missing one is fine.
pub fn remove_dir_all(dir: &Path) -> Result<(), RuntimeError> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RuntimeError::io(format!("removing {}", dir.display()), e)),
    }
}

/// A new random 64-hex-digit id, like CRI's.
pub fn new_id() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// Start time of a process in clock ticks since boot (/proc/PID/stat field 22), if it lives.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field 22 is index 19.
    let state = fields.first()?;
    if *state == "Z" || *state == "X" {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// True when `pid` still runs the process that started at `start_time`.
pub fn process_alive(pid: u32, start_time: u64) -> bool {
    process_start_time(pid) == Some(start_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exit.json");
        assert!(read_json::<ExitRecord>(&path).unwrap().is_none());
        let rec = ExitRecord {
            exit_code: 137,
            reason: "OOMKilled".into(),
            message: String::new(),
            finished_at: Timestamp::now(),
        };
        write_json(&path, &rec).unwrap();
        let back: ExitRecord = read_json(&path).unwrap().unwrap();
        assert_eq!(back.exit_code, 137);
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn own_process_is_alive_and_ids_are_unique() {
        let me = std::process::id();
        let start = process_start_time(me).unwrap();
        assert!(process_alive(me, start));
        assert!(!process_alive(me, start + 1));
        let (a, b) = (new_id(), new_id());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
