//! `capstan-store` owns Capstan's persistent state: a narrow, revision-centric key-value
//! trait ([`Store`]) in the shape of etcd's MVCC API, and its backends (`sqlite`, the
//! embedded default; `etcd`, for production clusters; `memory`, for tests), plus offline
//! snapshot restore for the persistent backends. It knows nothing of Kubernetes objects: keys
//! are strings such as `/registry/pods/default/web`, values are opaque bytes.
//!
//! Every write gets the next global revision. Reads can be served at the current revision
//! or (list) at an older one still inside the compaction window; watches replay history
//! from any uncompacted revision and then follow new writes.

use async_trait::async_trait;
use std::fmt;
use std::path::Path;
use tokio::sync::mpsc;

pub mod conformance;
pub mod encryption;
pub mod etcd;
mod fanout;
pub mod memory;
mod snapshot;
pub mod sqlite;

pub use etcd::{EtcdConfig, EtcdStore};
pub use memory::MemoryStore;
pub use snapshot::{SnapshotError, SnapshotInfo, SnapshotKind, snapshot_kind};
pub use sqlite::SqliteStore;

/// A stored key with its value and the revisions that created and last modified it.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that created this key (stable across updates).
    pub create_revision: i64,
    /// Revision of the last write to this key; used as Kubernetes' resourceVersion.
    pub mod_revision: i64,
}

impl fmt::Debug for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyValue")
            .field("key", &self.key)
            .field("value_len", &self.value.len())
            .field("create_revision", &self.create_revision)
            .field("mod_revision", &self.mod_revision)
            .finish()
    }
}

/// One change seen by a watch, in revision order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// A create or update: `kv` is the new state; `prev` the state before (None on create).
    Put {
        kv: KeyValue,
        prev: Option<KeyValue>,
    },
    /// A delete at `revision`: `prev` is the last state of the key before deletion.
    Delete { prev: KeyValue, revision: i64 },
}

impl WatchEvent {
    /// Revision at which this event happened.
    pub fn revision(&self) -> i64 {
        match self {
            WatchEvent::Put { kv, .. } => kv.mod_revision,
            WatchEvent::Delete { revision, .. } => *revision,
        }
    }
    /// Key this event is about.
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put { kv, .. } => &kv.key,
            WatchEvent::Delete { prev, .. } => &prev.key,
        }
    }
}

/// Result of a range read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListResult {
    /// Keys in lexical order.
    pub items: Vec<KeyValue>,
    /// The revision the list was served at.
    pub revision: i64,
    /// True when `limit` cut the result short and more keys follow the last one.
    pub more: bool,
}

/// Errors of every backend; the API server maps them to Kubernetes Status codes.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {0} already exists")]
    AlreadyExists(String),
    #[error("key {0} not found")]
    NotFound(String),
    /// Compare-and-swap failed: the key's mod_revision was not the expected one.
    #[error("key {key} was modified: expected revision {expected}, found {actual}")]
    Conflict {
        key: String,
        expected: i64,
        actual: i64,
    },
    /// The requested revision is older than the compaction point.
    #[error("revision {requested} has been compacted (oldest available {compacted})")]
    Compacted { requested: i64, compacted: i64 },
    /// The requested revision is in the future.
    #[error("revision {requested} is newer than the current revision {current}")]
    FutureRevision { requested: i64, current: i64 },
    #[error("store backend failure")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("store is closed")]
    Closed,
    /// The backend does not implement this operation (e.g. snapshots of the memory store).
    #[error("unsupported: {0}")]
    Unsupported(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A stream of watch events; the channel closes when the store shuts down or the watcher
/// falls too far behind (then a final `Err(StoreError::Compacted)` is sent when possible).
pub type WatchReceiver = mpsc::Receiver<Result<WatchEvent>>;

/// The MVCC key-value interface every backend implements (kine's shape). All methods are
/// safe to call concurrently. Acknowledged writes are durable (survive kill -9).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The revision of the latest write (0 for an empty store).
    async fn current_revision(&self) -> Result<i64>;

    /// The oldest revision a watch or historical list may start from (compaction point).
    async fn compacted_revision(&self) -> Result<i64>;

    /// The current value of `key`, if present.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Keys starting with `prefix`, strictly after `start_after` when given, at most `limit`
    /// (0 = no limit), as of `revision` (None = current). Errors with `Compacted` for a
    /// revision below the compaction point and `FutureRevision` for one above the current.
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: Option<i64>,
    ) -> Result<ListResult>;

    /// Count of keys under `prefix` at the current revision.
    async fn count(&self, prefix: &str) -> Result<usize>;

    /// Create `key`; fails with `AlreadyExists` if it is present. Returns the new revision.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64>;

    /// Replace `key` only if its mod_revision equals `expected_revision`.
    /// Returns the new revision. `NotFound` if absent, `Conflict` on a revision mismatch.
    async fn update(&self, key: &str, value: Vec<u8>, expected_revision: i64) -> Result<i64>;

    /// Delete `key`, if `expected_revision` is Some only when its mod_revision matches.
    /// Returns the delete's revision and the last value.
    async fn delete(&self, key: &str, expected_revision: Option<i64>) -> Result<(i64, KeyValue)>;

    /// Events for keys under `prefix` with revision > `after_revision`, first replayed
    /// from history, then live. `Compacted` if `after_revision` < compacted revision.
    async fn watch(&self, prefix: &str, after_revision: i64) -> Result<WatchReceiver>;

    /// Drop history older than `revision` (current values are kept).
    async fn compact(&self, revision: i64) -> Result<()>;

    /// Writes a consistent point-in-time copy of the whole store to `dest` (atomically:
    /// a temporary file renamed into place), restorable offline with the backend's
    /// `restore_snapshot`. `Unsupported` for backends without persistent state.
    async fn snapshot(&self, dest: &Path) -> Result<SnapshotInfo>;
}
