//! The shim: one small process per container (`capstan shim <container dir>`, a re-exec of
//! the capstan binary) that owns the container's stdio, logs and exit status, so the container
//! outlives the process that manages it.
//!
//! Protocol: the runtime writes `shim.json` into the container's state dir and spawns the shim
//! with stdout on a pipe. The shim leaves the caller's session (setsid), becomes a child
//! subreaper, runs `<runtime> run --detach` with the container's stdout/stderr on pipes, writes
//! `started.json` and answers `started <pid>` (or `failed <message>`) on the pipe. It then
//! copies the output into the CRI log, reaps the container's init process, checks the memory
//! cgroup's OOM-kill counter, writes `exit.json` atomically and exits. The shim's own exit
//! therefore means "exit recorded".

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use jiff::Timestamp;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::cgroups;
use super::logs::{self, Stream};
use super::oci::OciRuntime;
use super::state::{self, EXIT_FILE, ExitRecord, SHIM_FILE, STARTED_FILE, StartedRecord};
use crate::cri::runtime_service::RuntimeError;

/// How long the shim waits for the output pipes to drain after the container's exit.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// CRI's exit code for a container that could not be started (containerd's choice).
const START_ERROR_EXIT_CODE: i32 = 128;

/// Everything the shim needs, written by the runtime before it spawns the shim.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShimConfig {
    pub id: String,
    pub runtime: OciRuntime,
    pub bundle: PathBuf,
    pub log_path: PathBuf,
    /// The container's memory cgroup directory and whether it is cgroup v2.
    pub memory_cgroup: Option<(PathBuf, bool)>,
}

/// Spawns the shim for the container in `container_dir` and waits for its start report.
/// Returns the shim's process (the caller reaps it: its exit means the exit is recorded) and the
/// container's init pid.
pub fn spawn(
    shim_binary: &Path,
    container_dir: &Path,
    id: &str,
) -> Result<(Child, u32), RuntimeError> {
    let log = container_dir.join("shim.log");
    let stderr = File::create(&log)
        .map_err(|e| RuntimeError::io(format!("creating {}", log.display()), e))?;
    let mut child = Command::new(shim_binary)
        .arg("shim")
        .arg(container_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| RuntimeError::io(format!("spawning the shim {}", shim_binary.display()), e))?;
    let Some(stdout) = child.stdout.take() else {
        return Err(shim_error(id, "no report pipe".into()));
    };
    let mut line = String::new();
    let read = BufReader::new(stdout).read_line(&mut line);
    let line = line.trim();
    if let Some(pid) = line.strip_prefix("started ") {
        let pid = pid
            .parse()
            .map_err(|_| shim_error(id, format!("unreadable report {line:?}")))?;
        return Ok((child, pid));
    }
    // The shim has failed or died: reap it before reporting.
    let _ = child.wait();
    let message = match (line.strip_prefix("failed "), read) {
        (Some(m), _) => m.to_string(),
        (None, Err(e)) => format!("reading its report: {e}"),
        (None, Ok(_)) => {
            let tail = fs::read_to_string(&log).unwrap_or_default();
            format!("exited without a report; its log: {}", tail.trim())
        }
    };
    Err(shim_error(id, message))
}

fn shim_error(id: &str, message: String) -> RuntimeError {
    RuntimeError::Shim {
        id: id.to_string(),
        message,
    }
}

/// The shim process's main: runs and supervises the container of `container_dir`.
pub fn run(container_dir: &Path) -> Result<(), RuntimeError> {
    // Own session and process group: signals to the caller's group never reach us.
    let _ = nix::unistd::setsid();
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| RuntimeError::sys("becoming a child subreaper", e))?;
    let config: ShimConfig =
        state::read_json(&container_dir.join(SHIM_FILE))?.ok_or_else(|| {
            shim_error(
                "?",
                format!("no {SHIM_FILE} in {}", container_dir.display()),
            )
        })?;
    let mut report = std::io::stdout();
    match supervise(container_dir, &config, &mut report) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = writeln!(report, "failed {}", error_chain(&e));
            let _ = report.flush();
            Err(e)
        }
    }
}

/// The error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

fn supervise(dir: &Path, config: &ShimConfig, report: &mut impl Write) -> Result<(), RuntimeError> {
    if let Some(parent) = config.log_path.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| RuntimeError::io(format!("creating {}", parent.display()), e))?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&config.log_path)
        .map_err(|e| RuntimeError::io(format!("opening {}", config.log_path.display()), e))?;
    let log = Arc::new(Mutex::new(log));
    let pid_file = dir.join("init.pid");
    let mut runtime = config
        .runtime
        .run_detached(&config.id, &config.bundle, &pid_file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| RuntimeError::io(format!("running {}", config.runtime.binary.display()), e))?;
    let (done_tx, done_rx) = mpsc::channel();
    let pipes = [
        runtime
            .stdout
            .take()
            .map(|p| (Box::new(p) as Box<dyn std::io::Read + Send>, Stream::Stdout)),
        runtime
            .stderr
            .take()
            .map(|p| (Box::new(p) as Box<dyn std::io::Read + Send>, Stream::Stderr)),
    ];
    let mut copiers = 0;
    for (pipe, stream) in pipes.into_iter().flatten() {
        let (log, done) = (log.clone(), done_tx.clone());
        copiers += 1;
        std::thread::spawn(move || {
            if let Err(e) = logs::copy_stream(pipe, stream, log) {
                eprintln!("copying {}: {e}", stream.as_str());
            }
            let _ = done.send(());
        });
    }
    let status = runtime
        .wait()
        .map_err(|e| RuntimeError::io("waiting for the OCI runtime", e))?;
    if !status.success() {
        drain(&done_rx, copiers);
        let message = format!(
            "{} run exited with {status}: {}",
            config.runtime.binary.display(),
            last_stderr(&config.log_path)
        );
        let exit = ExitRecord {
            exit_code: START_ERROR_EXIT_CODE,
            reason: "StartError".into(),
            message: message.clone(),
            finished_at: Timestamp::now(),
        };
        state::write_json(&dir.join(EXIT_FILE), &exit)?;
        return Err(shim_error(&config.id, message));
    }
    let pid: i32 = fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| shim_error(&config.id, format!("no pid in {}", pid_file.display())))?;
    let started = StartedRecord {
        pid: pid as u32,
        started_at: Timestamp::now(),
        shim_pid: std::process::id(),
    };
    state::write_json(&dir.join(STARTED_FILE), &started)?;
    let _ = writeln!(report, "started {pid}");
    let _ = report.flush();

    let exit_code = reap(Pid::from_raw(pid));
    drain(&done_rx, copiers);
    let ooms = config
        .memory_cgroup
        .as_ref()
        .map_or(0, |(d, v2)| cgroups::oom_kill_count(d, *v2));
    let reason = if ooms > 0 {
        "OOMKilled"
    } else if exit_code == 0 {
        "Completed"
    } else {
        "Error"
    };
    let exit = ExitRecord {
        exit_code,
        reason: reason.into(),
        message: String::new(),
        finished_at: Timestamp::now(),
    };
    state::write_json(&dir.join(EXIT_FILE), &exit)
}

/// Reaps children until `init` exits; its exit code (128 + signal when killed).
fn reap(init: Pid) -> i32 {
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(p, code)) if p == init => return code,
            Ok(WaitStatus::Signaled(p, sig, _)) if p == init => return 128 + sig as i32,
            Ok(_) | Err(nix::Error::EINTR) => continue,
            // Not our child after all (should not happen with a subreaper): watch /proc.
            Err(_) => {
                while Path::new(&format!("/proc/{init}")).exists() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                return 255;
            }
        }
    }
}

fn drain(done: &mpsc::Receiver<()>, copiers: usize) {
    let deadline = std::time::Instant::now() + DRAIN_TIMEOUT;
    for _ in 0..copiers {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if done.recv_timeout(left).is_err() {
            eprintln!("output pipes still open {DRAIN_TIMEOUT:?} after the container's exit");
            return;
        }
    }
}

fn last_stderr(log_path: &Path) -> String {
    let text = fs::read_to_string(log_path).unwrap_or_default();
    let lines: Vec<String> = logs::read_messages(&text)
        .into_iter()
        .filter(|(s, _)| *s == Stream::Stderr)
        .map(|(_, m)| m)
        .collect();
    lines[lines.len().saturating_sub(3)..].join(" / ")
}
