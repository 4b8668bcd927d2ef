//! The embedded SQLite backend (kine's shape): an append-only revision log plus a table of
//! live keys, one transaction per write, WAL mode.
//!
//! One writer connection behind an async mutex serialises writes (a revision is the log's
//! next row id); a small pool of reader connections serves reads concurrently from WAL
//! snapshots. SQLite calls run on `spawn_blocking` threads. Watches are fanned out in
//! process, so the database must be used by a single `SqliteStore` (one process).

mod checkpoint;
mod ops;
mod snapshot;

pub use snapshot::restore_snapshot;

use crate::fanout::{Fanout, HISTORY_PAGE, spawn_watch};
use crate::{KeyValue, ListResult, Result, SnapshotInfo, Store, StoreError, WatchReceiver};
use async_trait::async_trait;
use checkpoint::Checkpointer;
use ops::Writer;
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

/// Idle reader connections kept open for reuse.
const IDLE_READERS: usize = 8;
/// Log revisions swept per compaction transaction, so writers wait at most one batch.
const SWEEP_BATCH: i64 = 1000;

/// A [`Store`] on one SQLite database file; clones share the connections.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Arc<tokio::sync::Mutex<Writer>>,
    readers: Mutex<Vec<Connection>>,
    revision: AtomicI64,
    compacted: AtomicI64,
    fanout: Fanout,
    _checkpointer: Checkpointer,
}

fn join_error(err: tokio::task::JoinError) -> StoreError {
    StoreError::Backend(Box::new(err))
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and its schema.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        let conn = Connection::open(path)?;
        ops::configure(&conn)?;
        conn.execute_batch(ops::SCHEMA)?;
        let revision = ops::read_meta(&conn, "current")?;
        let compacted = ops::read_meta(&conn, "compacted")?;
        tracing::debug!(path = %path.display(), revision, compacted, "opened sqlite store");
        let writer = Arc::new(tokio::sync::Mutex::new(Writer { conn, revision }));
        let inner = Inner {
            path: path.to_path_buf(),
            writer: writer.clone(),
            readers: Mutex::new(Vec::new()),
            revision: AtomicI64::new(revision),
            compacted: AtomicI64::new(compacted),
            fanout: Fanout::new(),
            _checkpointer: Checkpointer::start(path, writer)?,
        };
        Ok(SqliteStore {
            inner: Arc::new(inner),
        })
    }

    /// Writes a consistent copy of the database to `path` (SQLite's online backup).
    pub async fn backup_to(&self, path: &Path) -> Result<()> {
        let path = path.to_path_buf();
        self.read(move |conn| ops::backup(conn, &path)).await
    }

    /// Runs `f` on a pooled reader connection on a blocking thread.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.take_reader()?;
            let result = f(&mut conn);
            inner.return_reader(conn);
            result
        })
        .await
        .map_err(join_error)?
    }

    /// Runs `f` with the writer on a blocking thread; the async lock keeps waiting writers
    /// off the blocking pool. Events are published inside `f`, under the lock.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Writer, &Fanout) -> Result<T> + Send + 'static,
    {
        let mut writer = self.inner.writer.clone().lock_owned().await;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let result = f(&mut writer, &inner.fanout);
            inner.revision.store(writer.revision, Ordering::Release);
            result
        })
        .await
        .map_err(join_error)?
    }

    /// Sweeps history below `compacted` in batches, releasing the writer between them.
    async fn sweep(&self, oldest: i64, compacted: i64) -> Result<()> {
        let mut from = oldest;
        let mut swept = 0;
        while from <= compacted {
            let to = from
                .saturating_add(SWEEP_BATCH)
                .min(compacted.saturating_add(1));
            swept += self
                .write(move |w, _| ops::sweep(w, from, to, compacted))
                .await?;
            from = to;
        }
        tracing::debug!(compacted, swept, "compacted sqlite store");
        Ok(())
    }
}

impl Inner {
    fn take_reader(&self) -> Result<Connection> {
        let pooled = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        if let Some(conn) = pooled {
            return Ok(conn);
        }
        let conn = Connection::open(&self.path)?;
        ops::configure(&conn)?;
        conn.pragma_update(None, "query_only", true)?;
        Ok(conn)
    }

    fn return_reader(&self, conn: Connection) {
        let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if readers.len() < IDLE_READERS {
            readers.push(conn);
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn current_revision(&self) -> Result<i64> {
        Ok(self.inner.revision.load(Ordering::Acquire))
    }

    async fn compacted_revision(&self) -> Result<i64> {
        Ok(self.inner.compacted.load(Ordering::Acquire))
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_string();
        self.read(move |conn| ops::get(conn, &key)).await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: Option<i64>,
    ) -> Result<ListResult> {
        let prefix = prefix.to_string();
        let start_after = start_after.map(str::to_string);
        self.read(move |conn| ops::list(conn, &prefix, start_after.as_deref(), limit, revision))
            .await
    }

    async fn count(&self, prefix: &str) -> Result<usize> {
        let prefix = prefix.to_string();
        self.read(move |conn| ops::count(conn, &prefix)).await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64> {
        let key = key.to_string();
        self.write(move |w, fanout| ops::create(w, fanout, &key, value))
            .await
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected_revision: i64) -> Result<i64> {
        let key = key.to_string();
        self.write(move |w, fanout| ops::update(w, fanout, &key, value, expected_revision))
            .await
    }

    async fn delete(&self, key: &str, expected_revision: Option<i64>) -> Result<(i64, KeyValue)> {
        let key = key.to_string();
        self.write(move |w, fanout| ops::delete(w, fanout, &key, expected_revision))
            .await
    }

    async fn watch(&self, prefix: &str, after_revision: i64) -> Result<WatchReceiver> {
        // Subscribe before reading history: every write is either in the history we read
        // or arrives live (duplicates are skipped by revision).
        let live = self.inner.fanout.subscribe();
        let owned = prefix.to_string();
        let first = self
            .read(move |conn| ops::history(conn, &owned, after_revision, HISTORY_PAGE))
            .await?;
        let store = self.clone();
        let owned = prefix.to_string();
        let history = move |after: i64| {
            let store = store.clone();
            let prefix = owned.clone();
            async move {
                store
                    .read(move |conn| ops::history(conn, &prefix, after, HISTORY_PAGE))
                    .await
            }
        };
        Ok(spawn_watch(
            prefix.to_string(),
            after_revision,
            first,
            live,
            history,
        ))
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        let Some(oldest) = self
            .write(move |w, _| ops::mark_compacted(w, revision))
            .await?
        else {
            return Ok(());
        };
        self.inner.compacted.fetch_max(revision, Ordering::AcqRel);
        self.sweep(oldest, revision).await
    }

    async fn snapshot(&self, dest: &Path) -> Result<SnapshotInfo> {
        snapshot::take(self, dest).await
    }
}
