//! A real `docker-registry` (Debian package docker-registry) on a free loopback port with a
//! temporary storage dir, optionally behind htpasswd basic auth; stopped on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{TestImageError, io};

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
pub const HTPASSWD_BIN: &str = "/usr/bin/htpasswd";

/// A running registry. Its storage and config live under a directory removed on drop.
pub struct TestRegistry {
    child: Child,
    dir: PathBuf,
    pub port: u16,
}

impl TestRegistry {
    /// Starts a registry without auth.
    pub fn start() -> Result<TestRegistry, TestImageError> {
        Self::start_with(None)
    }

    /// Starts a registry; with `Some((user, password))` it requires basic auth (bcrypt
    /// htpasswd made with `htpasswd -Bbn`, Debian package apache2-utils).
    pub fn start_with(auth: Option<(&str, &str)>) -> Result<TestRegistry, TestImageError> {
        Self::start_inner(auth, None)
    }

    /// Starts a registry with Docker Hub-style token auth: `auth_yaml` is the `auth:` section
    /// (e.g. `token:` with realm, service, issuer and rootcertbundle).
    pub fn start_with_auth_config(auth_yaml: &str) -> Result<TestRegistry, TestImageError> {
        Self::start_inner(None, Some(auth_yaml))
    }

    fn start_inner(
        auth: Option<(&str, &str)>,
        auth_yaml: Option<&str>,
    ) -> Result<TestRegistry, TestImageError> {
        if !Path::new(REGISTRY_BIN).exists() {
            return Err(TestImageError::Invalid(format!(
                "{REGISTRY_BIN} is missing: install the Debian package docker-registry"
            )));
        }
        let dir = std::env::temp_dir().join(format!(
            "capstan-registry-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(dir.join("data")).map_err(io(&dir))?;
        let port = free_port()?;
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
             delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: capstan-test\n",
            dir.join("data").display()
        );
        if let Some((user, password)) = auth {
            if !Path::new(HTPASSWD_BIN).exists() {
                return Err(TestImageError::Invalid(format!(
                    "{HTPASSWD_BIN} is missing: install the Debian package apache2-utils"
                )));
            }
            let out = Command::new(HTPASSWD_BIN)
                .args(["-Bbn", user, password])
                .output()
                .map_err(io(HTPASSWD_BIN))?;
            if !out.status.success() {
                return Err(TestImageError::Invalid(format!("htpasswd failed: {out:?}")));
            }
            let p = dir.join("htpasswd");
            std::fs::write(&p, &out.stdout).map_err(io(&p))?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: capstan-test\n    path: {}\n",
                p.display()
            ));
        }
        if let Some(yaml) = auth_yaml {
            config.push_str(yaml);
        }
        let cfg = dir.join("config.yml");
        std::fs::write(&cfg, config).map_err(io(&cfg))?;
        let log = dir.join("registry.log");
        let logf = std::fs::File::create(&log).map_err(io(&log))?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().map_err(io(&log))?)
            .stderr(logf)
            .spawn()
            .map_err(io(REGISTRY_BIN))?;
        let mut reg = TestRegistry { child, dir, port };
        reg.wait_ready()?;
        Ok(reg)
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry's storage root (for tampering with blobs in tests).
    pub fn storage(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Path of the stored blob `digest` (`<storage>/docker/registry/v2/blobs/sha256/ab/abcd…/data`).
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2.min(hex.len())])
            .join(hex)
            .join("data")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self) -> Result<(), TestImageError> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(TestImageError::Invalid(format!(
                    "docker-registry exited with {status}: {}",
                    self.log()
                )));
            }
            if http_get_status(self.port, "/v2/").is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(TestImageError::Invalid(format!(
            "docker-registry not ready on port {} within 20s: {}",
            self.port,
            self.log()
        )))
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> Result<u16, TestImageError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("127.0.0.1:0"))?;
    let port = l.local_addr().map_err(io("127.0.0.1:0"))?.port();
    Ok(port)
}

/// The HTTP status of a plain GET, or None if nothing answers.
fn http_get_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace().nth(1)?.parse().ok()
}
