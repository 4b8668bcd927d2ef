//! The servers under test as child processes: `capstan server` (on SQLite, and on etcd) and
//! etcd (the raw peer, and the store of the etcd-backed Capstan).
//!
//! Each owns a temp dir (data + log) and is SIGKILLed and reaped when dropped, so every exit
//! path of the benchmark (error, panic, Ctrl-C handled in main) leaves nothing behind.

use std::fs::{self, File};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;

/// How long a server may take from spawn to ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);

/// A child process killed on drop, with its temp dir removed after it.
pub struct Proc {
    child: Child,
    name: &'static str,
    // Declared after `child` so the process dies before its files go.
    dir: TempDir,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &'static str, mut cmd: Command, dir: TempDir) -> anyhow::Result<Proc> {
        let log = dir.path().join(format!("{name}.log"));
        let out = File::create(&log).context("create server log")?;
        let err = out.try_clone().context("clone server log handle")?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {name}: {cmd:?}"))?;
        Ok(Proc {
            child,
            name,
            dir,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Fails (with the log's tail) if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait().context("poll child")? {
            bail!(
                "{} exited ({status}); log tail:\n{}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// The log's first and last lines: an error's message comes first, a backtrace after it.
    pub fn log_tail(&self) -> String {
        excerpt(&fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// Resident and peak resident set size in KiB, from /proc/PID/status.
    pub fn rss_kib(&self) -> anyhow::Result<Rss> {
        let path = format!("/proc/{}/status", self.pid());
        let status = fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
        Ok(Rss {
            rss: status_field(&status, "VmRSS:")?,
            hwm: status_field(&status, "VmHWM:")?,
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Already exited is fine; the reap below must still run.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const LOG_HEAD: usize = 10;
const LOG_TAIL: usize = 20;

/// The first LOG_HEAD and last LOG_TAIL lines of `text`.
fn excerpt(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= LOG_HEAD + LOG_TAIL {
        return lines.join("\n");
    }
    let skipped = lines.len() - LOG_HEAD - LOG_TAIL;
    format!(
        "{}\n[… {skipped} lines …]\n{}",
        lines[..LOG_HEAD].join("\n"),
        lines[lines.len() - LOG_TAIL..].join("\n")
    )
}

/// Memory figures of a process, in KiB.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rss {
    pub rss: u64,
    pub hwm: u64,
}

fn status_field(status: &str, key: &str) -> anyhow::Result<u64> {
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .with_context(|| format!("no {key}"))?;
    let value = line[key.len()..].trim().trim_end_matches("kB").trim();
    value
        .parse()
        .with_context(|| format!("bad {key} value {value:?}"))
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind a free port")?;
    Ok(listener.local_addr().context("local addr")?.port())
}

pub fn temp_dir(prefix: &str) -> anyhow::Result<TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .context("create temp dir")
}

/// Starts `capstan server --disable-agent` on a temp data dir and a free port. `datastore` is
/// its `--datastore-endpoint`; `None` keeps the embedded SQLite store.
pub fn start_capstan(
    binary: &Path,
    name: &'static str,
    datastore: Option<&str>,
) -> anyhow::Result<(Proc, u16)> {
    let dir = temp_dir("capstan-bench-")?;
    let port = free_port()?;
    let mut cmd = Command::new(binary);
    cmd.arg("server")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--https-port")
        .arg(port.to_string())
        .arg("--disable-agent")
        .env("RUST_LOG", "warn");
    if let Some(endpoint) = datastore {
        cmd.arg("--datastore-endpoint").arg(endpoint);
    }
    Ok((Proc::spawn(name, cmd, dir)?, port))
}

/// Starts a single-member etcd on loopback ports with a temp data dir; returns its client URL.
pub fn start_etcd(binary: &Path, name: &'static str) -> anyhow::Result<(Proc, String)> {
    let dir = temp_dir("capstan-bench-etcd-")?;
    let client = format!("http://127.0.0.1:{}", free_port()?);
    let peer = format!("http://127.0.0.1:{}", free_port()?);
    let mut cmd = Command::new(binary);
    cmd.arg("--name=bench")
        .arg(format!("--data-dir={}", dir.path().join("data").display()))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=bench={peer}"))
        .arg("--log-level=warn");
    Ok((Proc::spawn(name, cmd, dir)?, client))
}

/// `capstan server --datastore-endpoint` for an etcd client URL: `http://H:P` → `etcd://H:P`.
pub fn datastore_endpoint(client_url: &str) -> String {
    let host_port = client_url
        .strip_prefix("http://")
        .unwrap_or(client_url)
        .trim_end_matches('/');
    format!("etcd://{host_port}")
}

/// Capstan on etcd: the server and the etcd it stores into. Fields drop in declaration order,
/// so the server is killed before its store.
pub struct EtcdBacked {
    pub capstan: Proc,
    pub etcd: Proc,
}

impl EtcdBacked {
    /// Fails if either process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.capstan.check_alive()?;
        self.etcd.check_alive()
    }

    /// (server, store) memory.
    pub fn rss_kib(&self) -> anyhow::Result<(Rss, Rss)> {
        Ok((self.capstan.rss_kib()?, self.etcd.rss_kib()?))
    }
}

/// Polls `probe` until it succeeds, the process dies, or the deadline passes.
pub async fn wait_ready<F, Fut, T>(proc: &mut Proc, what: &str, mut probe: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        proc.check_alive()?;
        let last = match probe().await {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            bail!(
                "{what} not ready after {READY_TIMEOUT:?}: {last:#}\nlog tail:\n{}",
                proc.log_tail()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_status_fields() {
        let status = "Name:\tcapstan\nVmHWM:\t   40960 kB\nVmRSS:\t   20480 kB\n";
        assert_eq!(status_field(status, "VmRSS:").ok(), Some(20480));
        assert_eq!(status_field(status, "VmHWM:").ok(), Some(40960));
        assert!(status_field(status, "VmSwap:").is_err());
    }

    #[test]
    fn log_excerpt_keeps_head_and_tail() {
        let short = "a\nb";
        assert_eq!(excerpt(short), "a\nb");
        let long: Vec<String> = (0..100).map(|i| format!("l{i}")).collect();
        let text = excerpt(&long.join("\n"));
        assert!(text.starts_with("l0\nl1\n"), "{text}");
        assert!(text.contains("[… 70 lines …]"), "{text}");
        assert!(text.ends_with("l98\nl99"), "{text}");
        assert!(!text.contains("l50"), "{text}");
    }

    #[test]
    fn etcd_client_url_becomes_datastore_endpoint() {
        assert_eq!(
            datastore_endpoint("http://127.0.0.1:2379"),
            "etcd://127.0.0.1:2379"
        );
        assert_eq!(
            datastore_endpoint("http://127.0.0.1:2379/"),
            "etcd://127.0.0.1:2379"
        );
    }
}
