//! The advisory lock a server holds on its SQLite database, so that an offline restore
//! never swaps the file under a running server (and two servers never share one file).
//!
//! The lock is `flock(2)` on `<db>.lock`, which the kernel drops when the holder exits, even
//! on `kill -9`: a stale file never blocks anyone. The holder writes its pid into the file
//! for the error message of whoever finds it taken.

use anyhow::{Context, bail};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// An exclusive lock on a database; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct DbLock {
    _file: File,
    path: PathBuf,
}

/// `<db>.lock`, next to the database.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

impl DbLock {
    /// Takes the lock without waiting; `what` says who wants it, for the error.
    pub fn acquire(db: &Path, what: &str) -> anyhow::Result<DbLock> {
        let path = lock_path(db);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {holder})")
                };
                bail!(
                    "cannot {what}: the database {} is in use by a running capstan server{holder}; \
                     stop it first",
                    db.display()
                );
            }
            Err(TryLockError::Error(err)) => {
                return Err(err).with_context(|| format!("locking {}", path.display()));
            }
        }
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .with_context(|| format!("writing pid to {}", path.display()))?;
        Ok(DbLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_pid_until_the_first_drops() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let first = DbLock::acquire(&db, "serve").unwrap();
        assert_eq!(first.path(), dir.path().join("state.db.lock"));
        let err = DbLock::acquire(&db, "restore").unwrap_err().to_string();
        assert!(err.contains("cannot restore"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        DbLock::acquire(&db, "restore").unwrap();
    }
}
