//! Offline restore of an etcd snapshot into a fresh member data directory, through
//! `etcdctl snapshot restore` (which verifies the snapshot's checksum and keeps every key's
//! revisions, so resourceVersions stay valid).

use crate::snapshot::{SnapshotError, io_error};
use crate::{Result, SnapshotKind, snapshot_kind};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The new member a snapshot is restored into (etcdctl's flags of the same names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdRestoreOptions {
    /// Data directory to create; must not exist yet.
    pub data_dir: PathBuf,
    /// The member name (`--name` of the etcd that will serve it).
    pub name: String,
    /// `name=peer-url,...` of the restored cluster.
    pub initial_cluster: String,
    /// This member's peer URL(s), comma-separated.
    pub initial_advertise_peer_urls: String,
}

impl EtcdRestoreOptions {
    /// Options for a one-member cluster named `name` with peer URL `peer_url`.
    pub fn single_member(data_dir: PathBuf, name: &str, peer_url: &str) -> Self {
        EtcdRestoreOptions {
            data_dir,
            name: name.to_string(),
            initial_cluster: format!("{name}={peer_url}"),
            initial_advertise_peer_urls: peer_url.to_string(),
        }
    }
}

/// Restores `snapshot` (written by [`EtcdStore`](super::EtcdStore)'s snapshot or
/// `etcdctl snapshot save`) into `opts.data_dir`, which must not exist yet. Start the
/// member(s) on it afterwards with the same name and peer URLs.
pub fn restore_snapshot(snapshot: &Path, opts: &EtcdRestoreOptions) -> Result<()> {
    match snapshot_kind(snapshot)? {
        SnapshotKind::Etcd => {}
        SnapshotKind::Sqlite => {
            return Err(SnapshotError::UnknownFormat {
                path: snapshot.to_path_buf(),
            }
            .into());
        }
    }
    match std::fs::symlink_metadata(&opts.data_dir) {
        Ok(_) => return Err(SnapshotError::DataDirExists(opts.data_dir.clone()).into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(&opts.data_dir)(e).into()),
    }
    let program = "etcdctl";
    let output = Command::new(program)
        .env("ETCDCTL_API", "3")
        .arg("snapshot")
        .arg("restore")
        .arg(snapshot)
        .arg("--data-dir")
        .arg(&opts.data_dir)
        .arg("--name")
        .arg(&opts.name)
        .arg("--initial-cluster")
        .arg(&opts.initial_cluster)
        .arg("--initial-advertise-peer-urls")
        .arg(&opts.initial_advertise_peer_urls)
        .output()
        .map_err(|source| SnapshotError::Spawn {
            program: program.into(),
            source,
        })?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stdout));
        return Err(SnapshotError::EtcdctlFailed {
            status: output.status.to_string(),
            output: text.trim().to_string(),
        }
        .into());
    }
    tracing::info!(snapshot = %snapshot.display(), data_dir = %opts.data_dir.display(), name = %opts.name, "restored etcd snapshot");
    Ok(())
}
