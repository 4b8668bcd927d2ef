//! Test images built from Debian's busybox-static (`/bin/busybox`), never downloaded: OCI
//! layouts and archives, `docker save` archives, multi-arch indexes, and a push to a registry
//! for pull tests. Output is deterministic: the same input gives the same digests.

mod build;
mod push;
mod registry;

pub use build::{
    busybox_docker_archive, busybox_docker_archive_with, busybox_multiarch_oci_layout,
    busybox_oci_archive, busybox_oci_archive_with, busybox_oci_layout,
};
pub use push::push_to_registry;
pub use registry::{TestRegistry, free_port};

use std::path::PathBuf;

/// Where the busybox binary comes from (Debian package busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";

/// Applets linked to busybox in `/bin` of every test image.
pub const APPLETS: &[&str] = &[
    "sh", "ash", "sleep", "echo", "cat", "true", "false", "ls", "env", "id", "mkdir", "rm",
    "rmdir", "touch", "wget", "nc", "ps", "hostname", "head", "tail", "grep", "date", "test",
    "kill", "pwd", "mount", "umount", "ping", "ip", "nslookup", "stat", "sync", "wc", "whoami",
    "uname", "chmod", "chown", "cp", "mv", "ln", "sed", "awk", "printf", "yes", "seq", "timeout",
    "httpd", "tr", "expr", "dd", "find", "df", "du", "top", "readlink", "basename", "dirname",
    "tee", "sort", "uniq", "xargs", "nproc", "free", "getopt", "mknod", "realpath",
];

/// What to put in a test image besides busybox.
#[derive(Debug, Clone, Default)]
pub struct TestImageOptions {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// `KEY=value` entries; a default `PATH` is added when none is given.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// Extra entries of the base layer (replacing defaults such as `/etc/passwd`).
    pub files: Vec<TestFile>,
    /// Further layers on top of the base, bottom first.
    pub extra_layers: Vec<Vec<TestFile>>,
    /// Config architecture (default: this machine's).
    pub architecture: Option<String>,
    /// Config `Labels`.
    pub labels: Vec<(String, String)>,
}

/// One tar entry of a test layer. Paths are absolute in the image (`/etc/passwd`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestFile {
    File {
        path: String,
        content: Vec<u8>,
        mode: u32,
        uid: u64,
        gid: u64,
    },
    Dir {
        path: String,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
    Hardlink {
        path: String,
        target: String,
    },
    /// An OCI whiteout (`.wh.NAME`) hiding `path` of the layers below.
    Whiteout {
        path: String,
    },
    /// An opaque marker (`.wh..wh..opq`) hiding everything below `dir` in lower layers.
    Opaque {
        dir: String,
    },
}

impl TestFile {
    /// A root-owned 0644 file.
    pub fn file(path: &str, content: impl Into<Vec<u8>>) -> TestFile {
        TestFile::File {
            path: path.into(),
            content: content.into(),
            mode: 0o644,
            uid: 0,
            gid: 0,
        }
    }

    /// A root-owned 0755 file.
    pub fn executable(path: &str, content: impl Into<Vec<u8>>) -> TestFile {
        TestFile::File {
            path: path.into(),
            content: content.into(),
            mode: 0o755,
            uid: 0,
            gid: 0,
        }
    }

    pub fn path(&self) -> &str {
        match self {
            TestFile::File { path, .. }
            | TestFile::Dir { path, .. }
            | TestFile::Symlink { path, .. }
            | TestFile::Hardlink { path, .. }
            | TestFile::Whiteout { path } => path,
            TestFile::Opaque { dir } => dir,
        }
    }
}

/// Digests of a built test image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestImage {
    pub reference: String,
    /// The platform manifest (for a multi-arch layout: this machine's).
    pub manifest_digest: String,
    /// The config digest: the image ID.
    pub config_digest: String,
    /// The digest of the index for multi-arch layouts.
    pub index_digest: Option<String>,
    pub layer_digests: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TestImageError {
    #[error("{BUSYBOX} is missing: install the Debian package busybox-static")]
    BusyboxMissing,
    #[error("test image I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid test image: {0}")]
    Invalid(String),
    #[error("pushing to {target}: {reason}")]
    Push { target: String, reason: String },
}

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TestImageError {
    let path = path.into();
    move |source| TestImageError::Io { path, source }
}
