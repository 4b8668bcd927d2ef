//! podman as a benchmark peer: private storage under the run's temp dir, a containers.conf
//! within this host's limits, image loading and a full reset afterwards.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// podman with its own root, runroot and configuration.
pub struct Podman {
    conf: PathBuf,
    root: PathBuf,
    runroot: PathBuf,
}

impl Podman {
    /// Writes the configuration under `work`; storage lives there too.
    pub fn new(work: &Path) -> anyhow::Result<Podman> {
        let conf = work.join("containers.conf");
        // Within this host's hard limits (nofile 20000, nproc 96364); podman's defaults ask for more.
        std::fs::write(
            &conf,
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n\n[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
        )
        .context("writing containers.conf")?;
        Ok(Podman {
            conf,
            root: work.join("podman-root"),
            runroot: work.join("podman-runroot"),
        })
    }

    /// A `podman` command with this instance's storage and configuration.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", &self.conf)
            .arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Loads an image archive; returns the name podman gave it.
    pub fn load(&self, archive: &Path) -> anyhow::Result<String> {
        let out = self
            .cmd(&["load", "-q", "-i"])
            .arg(archive)
            .output()
            .context("running podman")?;
        if !out.status.success() {
            bail!(
                "podman load failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let loaded = String::from_utf8_lossy(&out.stdout);
        loaded
            .lines()
            .find_map(|l| {
                l.strip_prefix("Loaded image: ")
                    .or_else(|| l.strip_prefix("Loaded image(s): "))
            })
            .map(|s| s.trim().to_string())
            .context("podman load printed no image name")
    }

    /// Removes every pod, container and image, and resets the storage (it keeps overlay
    /// mounts under its root until then). Best effort: this runs on error paths too.
    pub fn reset(&self) {
        for args in [
            // `-t 0`: the bench containers ignore SIGTERM (sleep as PID 1), and podman stops
            // pods one after another with a 10 s timeout each: minutes for 50 pods.
            &["pod", "rm", "-a", "-f", "-t", "0"][..],
            &["rm", "-a", "-f", "-t", "0"],
            &["rmi", "-a", "-f"],
            &["system", "reset", "-f"],
        ] {
            let _ = self
                .cmd(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
