//! Exec into running containers through `<runtime> exec`: synchronous with captured output, or
//! streamed with optional stdin and TTY. For a TTY, runc insists on a terminal on its own stdio
//! (it proxies the container's pty to it), so the runtime gets the slave of a pty pair and the
//! caller talks to the master.

use std::fs::File;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::OciRuntime;
use crate::cri::runtime_service::{ExecRequest, ExecSession, ExecSyncResponse, RuntimeError};

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

pub(super) async fn exec_sync(
    oci: OciRuntime,
    id: &str,
    cmd: &[String],
    timeout: Option<Duration>,
) -> Result<ExecSyncResponse, RuntimeError> {
    if cmd.is_empty() {
        return Err(RuntimeError::InvalidArgument("exec: empty command".into()));
    }
    let mut command = Command::from(oci.exec(id, false, cmd));
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command
        .spawn()
        .map_err(|e| RuntimeError::io(format!("running {} exec", oci.binary.display()), e))?;
    let output = child.wait_with_output();
    let output = match timeout.filter(|t| !t.is_zero()) {
        Some(t) => tokio::time::timeout(t, output)
            .await
            .map_err(|_| RuntimeError::Timeout(format!("exec in {id} ran longer than {t:?}")))?,
        None => output.await,
    }
    .map_err(|e| RuntimeError::io("waiting for exec", e))?;
    Ok(ExecSyncResponse {
        stdout: output.stdout,
        stderr: output.stderr,
        exit_code: exit_code(output.status),
    })
}

pub(super) async fn exec_streaming(
    oci: OciRuntime,
    id: &str,
    request: &ExecRequest,
) -> Result<ExecSession, RuntimeError> {
    if request.cmd.is_empty() {
        return Err(RuntimeError::InvalidArgument("exec: empty command".into()));
    }
    let mut command = Command::from(oci.exec(id, request.tty, &request.cmd));
    command.kill_on_drop(false);
    if request.tty {
        let pty =
            nix::pty::openpty(None, None).map_err(|e| RuntimeError::sys("opening a pty", e))?;
        let slave = File::from(pty.slave);
        let dup = |f: &File| {
            f.try_clone()
                .map_err(|e| RuntimeError::io("duplicating the pty", e))
        };
        command
            .stdin(Stdio::from(dup(&slave)?))
            .stdout(Stdio::from(dup(&slave)?))
            .stderr(Stdio::from(slave));
        let mut child = command
            .spawn()
            .map_err(|e| RuntimeError::io(format!("running {} exec", oci.binary.display()), e))?;
        // Our copies of the slave must go, or the master never sees the end of output.
        drop(command);
        let master = File::from(pty.master);
        let writer = tokio::fs::File::from_std(dup(&master)?);
        let reader = tokio::fs::File::from_std(master);
        let exit = async move {
            let status = child
                .wait()
                .await
                .map_err(|e| RuntimeError::io("waiting for exec", e))?;
            Ok(exit_code(status))
        };
        return Ok(ExecSession {
            stdin: request.stdin.then(|| Box::pin(writer) as _),
            stdout: Box::pin(PtyReader(reader)),
            stderr: None,
            exit: Box::pin(exit),
        });
    }
    command
        .stdin(if request.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|e| RuntimeError::io(format!("running {} exec", oci.binary.display()), e))?;
    let stdin = child.stdin.take();
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| RuntimeError::io("exec stdout", std::io::Error::other("missing pipe")))?;
    let stderr = child.stderr.take();
    let exit = async move {
        let status = child
            .wait()
            .await
            .map_err(|e| RuntimeError::io("waiting for exec", e))?;
        Ok(exit_code(status))
    };
    Ok(ExecSession {
        stdin: stdin.map(|s| Box::pin(s) as _),
        stdout: Box::pin(stdout),
        stderr: stderr.map(|s| Box::pin(s) as _),
        exit: Box::pin(exit),
    })
}

/// A pty master reader that reports the slave side's close (EIO) as end of file.
struct PtyReader(tokio::fs::File);

impl tokio::io::AsyncRead for PtyReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match std::pin::Pin::new(&mut self.0).poll_read(cx, buf) {
            std::task::Poll::Ready(Err(e)) if e.raw_os_error() == Some(nix::libc::EIO) => {
                std::task::Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}
