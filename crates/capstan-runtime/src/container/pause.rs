//! The pause process that holds a pod sandbox's namespaces (`capstan pause --hostname H`):
//! it leaves the caller's session, unshares network, IPC and UTS namespaces, names the UTS
//! namespace, reports `ready` on stdout, then sleeps until SIGTERM or SIGINT, reaping any child
//! that ends up with it. Every other signal stays blocked (ignored).

use std::io::Write;

use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::cri::runtime_service::RuntimeError;

/// The pause process's main; returns when told to stop.
pub fn run(hostname: &str) -> Result<(), RuntimeError> {
    let _ = nix::unistd::setsid();
    let all = SigSet::all();
    all.thread_block()
        .map_err(|e| RuntimeError::sys("blocking signals", e))?;
    nix::sched::unshare(
        CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS,
    )
    .map_err(|e| RuntimeError::sys("unsharing namespaces", e))?;
    if !hostname.is_empty() {
        nix::unistd::sethostname(hostname)
            .map_err(|e| RuntimeError::sys("setting the hostname", e))?;
    }
    let mut out = std::io::stdout();
    writeln!(out, "ready").map_err(|e| RuntimeError::io("reporting readiness", e))?;
    out.flush()
        .map_err(|e| RuntimeError::io("reporting readiness", e))?;

    let mut wanted = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        wanted.add(s);
    }
    loop {
        match wanted.wait() {
            Ok(Signal::SIGCHLD) => reap_children(),
            Ok(_) => return Ok(()),
            Err(e) => return Err(RuntimeError::sys("waiting for signals", e)),
        }
    }
}

fn reap_children() {
    while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}
