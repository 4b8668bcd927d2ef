//! Invoking the OCI runtime CLI (runc or crun; both take the same arguments for what we use),
//! each with its own state root under the run directory so test runtimes never collide.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde::{Deserialize, Serialize};

use crate::cri::runtime_service::RuntimeError;

/// One OCI runtime binary and its state root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciRuntime {
    pub binary: PathBuf,
    /// `--root`: where the runtime keeps its container state.
    pub root: PathBuf,
}

impl OciRuntime {
    /// A command with the global flags set.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root);
        cmd
    }

    /// `run --detach`: creates and starts the container in one invocation (the caller wires its
    /// stdio, which the container inherits).
    pub fn run_detached(&self, id: &str, bundle: &Path, pid_file: &Path) -> Command {
        let mut cmd = self.command();
        cmd.arg("run")
            .arg("--detach")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(pid_file)
            .arg(id);
        cmd
    }

    /// `kill ID SIGNAL`; a container that is gone already is not an error.
    pub fn kill(&self, id: &str, signal: &str) -> Result<(), RuntimeError> {
        let out = self.output(self.command().args(["kill", id, signal]))?;
        if out.status.success() || not_running(&out) {
            return Ok(());
        }
        Err(command_error(&format!("kill {id} {signal}"), &out))
    }

    /// `delete --force ID`; a container that does not exist is not an error.
    pub fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        let out = self.output(self.command().args(["delete", "--force", id]))?;
        if out.status.success() || not_running(&out) {
            return Ok(());
        }
        Err(command_error(&format!("delete {id}"), &out))
    }

    /// `exec [--tty] ID ARGS...` with the caller's stdio choices still to be set.
    pub fn exec(&self, id: &str, tty: bool, args: &[String]) -> Command {
        let mut cmd = self.command();
        cmd.arg("exec");
        if tty {
            cmd.arg("--tty");
        }
        cmd.arg(id).args(args);
        cmd
    }

    fn output(&self, cmd: &mut Command) -> Result<Output, RuntimeError> {
        cmd.stdin(Stdio::null())
            .output()
            .map_err(|e| RuntimeError::io(format!("running {}", self.binary.display()), e))
    }
}

/// runc and crun both say so when the container is gone or stopped.
fn not_running(out: &Output) -> bool {
    let stderr = String::from_utf8_lossy(&out.stderr).to_ascii_lowercase();
    [
        "does not exist",
        "not exist",
        "not running",
        "no such file",
        "container not running",
    ]
    .iter()
    .any(|m| stderr.contains(m))
}

/// The error for a failed runtime command.
pub fn command_error(what: &str, out: &Output) -> RuntimeError {
    RuntimeError::Command {
        command: what.to_string(),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    }
}
