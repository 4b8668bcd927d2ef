//! Snapshot files shared by the persistent backends: what a snapshot reports, how a file
//! on disk is recognised, and the write-to-temp-then-rename dance that makes `dest`
//! appear complete or not at all.

use crate::{Result, StoreError};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// What [`Store::snapshot`](crate::Store::snapshot) wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The store revision the snapshot holds (every write up to it is included).
    pub revision: i64,
    /// Size of the snapshot file in bytes.
    pub size: u64,
    /// The backend that wrote it: `"sqlite"` or `"etcd"`.
    pub backend: &'static str,
}

/// The format of a snapshot file, as told by its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SnapshotKind {
    /// An SQLite database of the `sqlite` backend's schema.
    Sqlite,
    /// An etcd backend (bbolt) file as written by etcd's maintenance snapshot.
    Etcd,
}

impl SnapshotKind {
    /// The backend name, as in [`SnapshotInfo::backend`].
    pub fn backend(self) -> &'static str {
        match self {
            SnapshotKind::Sqlite => "sqlite",
            SnapshotKind::Etcd => "etcd",
        }
    }
}

impl std::fmt::Display for SnapshotKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.backend())
    }
}

/// Errors of taking, recognising and restoring snapshots (carried in `StoreError::Backend`).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot access {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is neither an SQLite database nor an etcd snapshot")]
    UnknownFormat { path: PathBuf },
    #[error("{path} is not a Capstan SQLite store: {reason}")]
    NotCapstanSqlite { path: PathBuf, reason: String },
    #[error("etcd data directory {0} already exists; restore needs a fresh one")]
    DataDirExists(PathBuf),
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("`etcdctl snapshot restore` failed ({status}): {output}")]
    EtcdctlFailed { status: String, output: String },
}

impl From<SnapshotError> for StoreError {
    fn from(err: SnapshotError) -> Self {
        StoreError::Backend(Box::new(err))
    }
}

pub(crate) fn io_error(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// SQLite's 16-byte file header.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// bbolt's meta page magic (0xED0CDAED, little-endian), after the 16-byte page header.
const BBOLT_MAGIC: [u8; 4] = 0xED0C_DAEDu32.to_le_bytes();
/// bbolt's meta page flag in the page header (bytes 8..10).
const BBOLT_META_PAGE: u16 = 0x04;

/// Tells an SQLite snapshot from an etcd one by the file header.
pub fn snapshot_kind(path: &Path) -> Result<SnapshotKind> {
    let mut header = [0u8; 24];
    let mut file = File::open(path).map_err(io_error(path))?;
    let read = read_up_to(&mut file, &mut header).map_err(io_error(path))?;
    kind_of_header(&header[..read]).ok_or_else(|| {
        SnapshotError::UnknownFormat {
            path: path.to_path_buf(),
        }
        .into()
    })
}

fn kind_of_header(header: &[u8]) -> Option<SnapshotKind> {
    if header.starts_with(SQLITE_MAGIC) {
        return Some(SnapshotKind::Sqlite);
    }
    if header.len() >= 24 {
        let flags = u16::from_le_bytes([header[8], header[9]]);
        if flags == BBOLT_META_PAGE && header[16..20] == BBOLT_MAGIC {
            return Some(SnapshotKind::Etcd);
        }
    }
    None
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// A temporary file next to `dest`, removed on drop unless [`persist`](Self::persist)ed.
pub(crate) struct PendingFile {
    temp: tempfile::TempPath,
    dest: PathBuf,
}

impl PendingFile {
    pub(crate) fn next_to(dest: &Path) -> std::result::Result<PendingFile, SnapshotError> {
        let dir = parent_dir(dest);
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(io_error(dir))?
            .into_temp_path();
        Ok(PendingFile {
            temp,
            dest: dest.to_path_buf(),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.temp
    }

    /// Flushes the file to disk, renames it onto `dest` and syncs the directory;
    /// returns the final size.
    pub(crate) fn persist(self) -> std::result::Result<u64, SnapshotError> {
        let file = File::open(&self.temp).map_err(io_error(&self.temp))?;
        file.sync_all().map_err(io_error(&self.temp))?;
        let size = file.metadata().map_err(io_error(&self.temp))?.len();
        drop(file);
        let dest = self.dest.clone();
        self.temp.persist(&dest).map_err(|e| SnapshotError::Io {
            path: dest.clone(),
            source: e.error,
        })?;
        sync_dir(parent_dir(&dest))?;
        Ok(size)
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes a rename or unlink in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> std::result::Result<(), SnapshotError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_recognised() {
        let mut sqlite = b"SQLite format 3\0".to_vec();
        sqlite.extend_from_slice(&[0; 84]);
        assert_eq!(kind_of_header(&sqlite), Some(SnapshotKind::Sqlite));
        let mut bolt = vec![0u8; 24];
        bolt[8] = 0x04;
        bolt[16..20].copy_from_slice(&[0xED, 0xDA, 0x0C, 0xED]);
        bolt[20] = 2;
        assert_eq!(kind_of_header(&bolt), Some(SnapshotKind::Etcd));
        assert_eq!(kind_of_header(b"hello"), None);
        assert_eq!(kind_of_header(&[0u8; 24]), None);
    }
}
