//! Online snapshots and offline restore of the SQLite backend.
//!
//! A snapshot is SQLite's online backup of the whole database, switched to rollback
//! journal mode so it is one self-contained file. Restore copies it over the database of
//! a stopped server; revisions, history and the compaction point come along unchanged.

use super::{SqliteStore, join_error, ops};
use crate::snapshot::{PendingFile, SnapshotError, io_error, sync_dir};
use crate::{Result, SnapshotInfo, SnapshotKind, snapshot_kind};
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};

pub(super) async fn take(store: &SqliteStore, dest: &Path) -> Result<SnapshotInfo> {
    let pending = PendingFile::next_to(dest)?;
    store.backup_to(pending.path()).await?;
    tokio::task::spawn_blocking(move || {
        let revision = check_and_seal(pending.path())?;
        let size = pending.persist()?;
        Ok(SnapshotInfo {
            revision,
            size,
            backend: SnapshotKind::Sqlite.backend(),
        })
    })
    .await
    .map_err(join_error)?
}

/// Replaces the database at `db_path` with `snapshot` (the server must be stopped).
///
/// The snapshot is checked to be an SQLite database of this backend's schema, copied next
/// to `db_path`, and renamed into place after the old database's `-wal`, `-shm` and
/// `-journal` files are removed, so no stale log is replayed over the restored file.
pub fn restore_snapshot(snapshot: &Path, db_path: &Path) -> Result<()> {
    match snapshot_kind(snapshot)? {
        SnapshotKind::Sqlite => {}
        other => {
            return Err(SnapshotError::NotCapstanSqlite {
                path: snapshot.to_path_buf(),
                reason: format!("it is an {other} snapshot"),
            }
            .into());
        }
    }
    let pending = PendingFile::next_to(db_path)?;
    std::fs::copy(snapshot, pending.path()).map_err(io_error(snapshot))?;
    let revision = check_and_seal(pending.path()).map_err(|err| match err {
        crate::StoreError::Backend(_) => SnapshotError::NotCapstanSqlite {
            path: snapshot.to_path_buf(),
            reason: error_chain(&err),
        }
        .into(),
        other => other,
    })?;
    for suffix in ["-wal", "-shm", "-journal"] {
        let stale = sibling(db_path, suffix);
        match std::fs::remove_file(&stale) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&stale)(e).into()),
        }
    }
    pending.persist()?;
    if let Some(dir) = db_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        sync_dir(dir)?;
    }
    tracing::info!(snapshot = %snapshot.display(), db = %db_path.display(), revision, "restored sqlite snapshot");
    Ok(())
}

/// Checks the schema and integrity of the database at `path`, switches it to rollback
/// journal mode (one self-contained file), and returns its current revision.
fn check_and_seal(path: &Path) -> Result<i64> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let tables: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('log', 'kv', 'meta')",
        [],
        |row| row.get(0),
    )?;
    if tables != 3 {
        return Err(SnapshotError::NotCapstanSqlite {
            path: path.to_path_buf(),
            reason: "tables log, kv and meta are missing".into(),
        }
        .into());
    }
    let check: String = conn.query_row("PRAGMA quick_check", [], |row| row.get(0))?;
    if check != "ok" {
        return Err(SnapshotError::NotCapstanSqlite {
            path: path.to_path_buf(),
            reason: format!("integrity check failed: {check}"),
        }
        .into());
    }
    let revision = ops::read_meta(&conn, "current")?;
    let mode: String = conn.query_row("PRAGMA journal_mode = DELETE", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("delete") {
        return Err(SnapshotError::NotCapstanSqlite {
            path: path.to_path_buf(),
            reason: format!("cannot leave journal mode {mode}"),
        }
        .into());
    }
    conn.close().map_err(|(_, e)| e)?;
    Ok(revision)
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}
