//! The etcd backend: every [`Store`] call maps one-to-one onto etcd's v3 API (keys are
//! the API server's keys, the resourceVersion is etcd's mod_revision), as kube-apiserver's
//! own storage layer does.
//!
//! Writes are single-key transactions comparing `create_revision` (create) or
//! `mod_revision` (update, delete). Requests that fail for a transient reason (member
//! down, no leader, timeout) are retried for a bounded time; etcd-client balances over all
//! endpoints, so a retry lands on a live member. Watches resume from the last delivered
//! revision when their stream breaks. The compaction point is probed with ranges at old
//! revisions (etcd has no API for it), so every client of one etcd agrees on it.

mod error;
mod restore;
pub mod testing;
mod watch;

pub use error::EtcdError;
pub use restore::{EtcdRestoreOptions, restore_snapshot};

use crate::snapshot::PendingFile;
use crate::{KeyValue, ListResult, Result, SnapshotInfo, SnapshotKind, Store, StoreError};
use async_trait::async_trait;
use error::Kind;
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions,
    KvClient, MaintenanceClient, PutOptions, Txn, TxnOp, TxnOpResponse, WatchClient,
};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// Time one attempt of a small request may take before it is retried. A request caught
/// on a member whose leader just died hangs until etcd's own timeout (seconds), while a
/// new leader is usually elected within about one election timeout.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(4);
/// Time one attempt of a range read may take (large lists legitimately take long).
const LIST_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);
/// Total time a request keeps retrying transient failures.
const RETRY_BUDGET: Duration = Duration::from_secs(20);
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// How long `connect` waits for etcd to answer.
const CONNECT_BUDGET: Duration = Duration::from_secs(15);
/// A key outside `/registry` that is never written; ranges over it only read revisions.
const PROBE_KEY: &str = "capstan.io/revision-probe";

/// Where and how to reach etcd.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs, `http://host:port`, `https://host:port` or `host:port` (https when
    /// TLS files are given).
    pub endpoints: Vec<String>,
    /// CA bundle to verify the members' certificates (enables TLS).
    pub ca_file: Option<PathBuf>,
    /// Client certificate for etcd's `--client-cert-auth` (needs `key_file`).
    pub cert_file: Option<PathBuf>,
    /// Private key of `cert_file`.
    pub key_file: Option<PathBuf>,
}

/// A [`Store`] on an etcd cluster; clones share one client (one gRPC channel).
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    clients: Clients,
    /// The highest compaction point seen; the real one only grows past it.
    compacted: AtomicI64,
}

/// Per-service gRPC clients over the one balanced channel; cloned for every attempt.
#[derive(Clone)]
struct Clients {
    kv: KvClient,
    watch: WatchClient,
    maintenance: MaintenanceClient,
}

/// Largest gRPC message accepted from etcd (kube-apiserver allows any size too: lists of
/// large objects and history batches of a watch can exceed tonic's 4 MiB default).
const MAX_MESSAGE: usize = i32::MAX as usize;

/// A failed request: its meaning for the store, and the error to report.
struct Failure {
    kind: Kind,
    error: EtcdError,
}

impl From<Failure> for StoreError {
    fn from(f: Failure) -> Self {
        f.error.into()
    }
}

impl EtcdStore {
    /// Connects to etcd and waits (bounded) until it answers a read.
    pub async fn connect(cfg: EtcdConfig) -> Result<EtcdStore> {
        let (endpoints, options) = connect_options(&cfg)?;
        let client = Client::connect(&endpoints, Some(options))
            .await
            .map_err(|source| EtcdError::Request {
                op: "connect",
                source,
            })?;
        let clients = Clients {
            kv: client.kv_client().max_decoding_message_size(MAX_MESSAGE),
            watch: client.watch_client().max_decoding_message_size(MAX_MESSAGE),
            maintenance: client.maintenance_client(),
        };
        let store = EtcdStore {
            inner: Arc::new(Inner {
                clients,
                compacted: AtomicI64::new(0),
            }),
        };
        let revision = store
            .call_within(
                "connect",
                ATTEMPT_TIMEOUT,
                CONNECT_BUDGET,
                |mut c| async move {
                    c.kv.get(PROBE_KEY, Some(GetOptions::new().with_count_only()))
                        .await
                },
            )
            .await
            .map_err(StoreError::from)
            .and_then(|resp| header_revision("connect", resp.header()))?;
        tracing::info!(?endpoints, revision, "connected to etcd");
        Ok(store)
    }

    /// Runs `f` until it succeeds, fails for a non-transient reason, or the retry budget
    /// is spent. Each attempt gets a fresh client handle and its own timeout.
    async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, Failure>
    where
        F: FnMut(Clients) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call_within(op, ATTEMPT_TIMEOUT, RETRY_BUDGET, f).await
    }

    async fn call_within<T, F, Fut>(
        &self,
        op: &'static str,
        attempt_timeout: Duration,
        budget: Duration,
        mut f: F,
    ) -> Result<T, Failure>
    where
        F: FnMut(Clients) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + budget;
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let failure =
                match tokio::time::timeout(attempt_timeout, f(self.inner.clients.clone())).await {
                    Ok(Ok(value)) => return Ok(value),
                    Ok(Err(source)) => Failure {
                        kind: error::kind(&source),
                        error: EtcdError::Request { op, source },
                    },
                    Err(_) => Failure {
                        kind: Kind::Transient,
                        error: EtcdError::Timeout {
                            op,
                            timeout: attempt_timeout,
                        },
                    },
                };
            if failure.kind != Kind::Transient || Instant::now() + backoff > deadline {
                return Err(failure);
            }
            tracing::debug!(op, attempt, error = %crate_error_chain(&failure.error), "etcd request failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// The compaction point, as an `StoreError::Compacted` for `requested`.
    async fn compacted_error(&self, requested: i64) -> StoreError {
        match self.compacted_revision().await {
            Ok(compacted) => StoreError::Compacted {
                requested,
                compacted,
            },
            Err(err) => err,
        }
    }

    async fn future_error(&self, requested: i64) -> StoreError {
        match self.current_revision().await {
            Ok(current) => StoreError::FutureRevision { requested, current },
            Err(err) => err,
        }
    }

    /// Whether a read at `revision` is refused as compacted.
    async fn is_compacted(&self, revision: i64) -> Result<bool> {
        let probe = self
            .call("compaction probe", |mut c| async move {
                c.kv.get(
                    PROBE_KEY,
                    Some(GetOptions::new().with_count_only().with_revision(revision)),
                )
                .await
            })
            .await;
        match probe {
            Ok(_) => Ok(false),
            Err(f) if f.kind == Kind::Compacted => Ok(true),
            Err(f) => Err(f.into()),
        }
    }
}

fn connect_options(cfg: &EtcdConfig) -> Result<(Vec<String>, ConnectOptions)> {
    if cfg.endpoints.is_empty() {
        return Err(EtcdError::Config("no endpoints given".into()).into());
    }
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_keep_alive_while_idle(false);
    let tls = cfg.ca_file.is_some() || cfg.cert_file.is_some() || cfg.key_file.is_some();
    if tls {
        let mut config = etcd_client::TlsOptions::new();
        if let Some(ca) = &cfg.ca_file {
            config = config.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
        }
        match (&cfg.cert_file, &cfg.key_file) {
            (Some(cert), Some(key)) => {
                config = config.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
            }
            (None, None) => {}
            _ => {
                return Err(EtcdError::Config(
                    "a client certificate needs both cert_file and key_file".into(),
                )
                .into());
            }
        }
        options = options.with_tls(config);
    }
    let endpoints = cfg
        .endpoints
        .iter()
        .map(|e| {
            if e.contains("://") {
                e.clone()
            } else if tls {
                format!("https://{e}")
            } else {
                format!("http://{e}")
            }
        })
        .collect();
    Ok((endpoints, options))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| {
        EtcdError::ReadFile {
            path: path.to_path_buf(),
            source,
        }
        .into()
    })
}

fn crate_error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

fn header_revision(op: &'static str, header: Option<&etcd_client::ResponseHeader>) -> Result<i64> {
    header.map(|h| h.revision()).ok_or_else(|| {
        EtcdError::Malformed {
            op,
            what: "a header",
        }
        .into()
    })
}

pub(crate) fn convert(kv: &etcd_client::KeyValue) -> Result<KeyValue> {
    Ok(KeyValue {
        key: std::str::from_utf8(kv.key())
            .map_err(EtcdError::KeyNotUtf8)?
            .to_string(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    })
}

/// The end of the range of keys starting with `prefix` (etcd's prefix rule).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff (or the prefix is empty): the range runs to the end of keys.
    vec![0]
}

/// The single `Get` of a failed transaction's else branch.
fn else_get(resp: &etcd_client::TxnResponse) -> Option<etcd_client::KeyValue> {
    resp.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(get) => get.kvs().first().cloned(),
        _ => None,
    })
}

fn mismatch(key: &str, expected: i64, current: Option<etcd_client::KeyValue>) -> StoreError {
    match current {
        None => StoreError::NotFound(key.to_string()),
        Some(kv) => StoreError::Conflict {
            key: key.to_string(),
            expected,
            actual: kv.mod_revision(),
        },
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn current_revision(&self) -> Result<i64> {
        let resp = self
            .call("current revision", |mut c| async move {
                c.kv.get(PROBE_KEY, Some(GetOptions::new().with_count_only()))
                    .await
            })
            .await?;
        header_revision("current revision", resp.header())
    }

    async fn compacted_revision(&self) -> Result<i64> {
        // The answer only grows; start from the highest point seen. A read at revision r
        // is refused exactly when r < compaction point, so search for the first revision
        // still readable. Usually one probe confirms the cached value.
        let known = self.inner.compacted.load(Ordering::Acquire);
        if !self.is_compacted(known.max(1)).await? {
            return Ok(known);
        }
        let mut lo = known.max(1); // compacted
        let mut hi = self.current_revision().await?; // never compacted
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.is_compacted(mid).await? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        self.inner.compacted.fetch_max(hi, Ordering::AcqRel);
        Ok(hi)
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let resp = self
            .call("get", |mut c| async move { c.kv.get(key, None).await })
            .await?;
        resp.kvs().first().map(convert).transpose()
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: Option<i64>,
    ) -> Result<ListResult> {
        let end = prefix_end(prefix.as_bytes());
        let start = match start_after {
            Some(after) if after >= prefix => {
                let mut start = after.as_bytes().to_vec();
                start.push(0);
                start
            }
            // etcd has no empty key: the smallest one is "\0".
            _ if prefix.is_empty() => vec![0],
            _ => prefix.as_bytes().to_vec(),
        };
        let past_end = end != [0] && start >= end;
        let mut options = GetOptions::new().with_range(end);
        if past_end {
            // Nothing can follow; still validate the revision and learn the current one.
            options = options.with_count_only();
        }
        if limit > 0 {
            options = options.with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        }
        if let Some(rev) = revision {
            options = options.with_revision(rev);
        }
        let key = if past_end {
            // Only reached with a non-empty prefix (an empty one has no end).
            prefix.as_bytes().to_vec()
        } else {
            start
        };
        let result = self
            .call_within("list", LIST_ATTEMPT_TIMEOUT, RETRY_BUDGET, |mut c| {
                let key = key.clone();
                let options = options.clone();
                async move { c.kv.get(key, Some(options)).await }
            })
            .await;
        let resp = match result {
            Ok(resp) => resp,
            Err(f) => {
                let requested = revision.unwrap_or_default();
                return Err(match f.kind {
                    Kind::Compacted => self.compacted_error(requested).await,
                    Kind::FutureRevision => self.future_error(requested).await,
                    _ => f.into(),
                });
            }
        };
        let current = header_revision("list", resp.header())?;
        if past_end {
            return Ok(ListResult {
                items: Vec::new(),
                revision: revision.unwrap_or(current),
                more: false,
            });
        }
        let items = resp.kvs().iter().map(convert).collect::<Result<Vec<_>>>()?;
        Ok(ListResult {
            items,
            revision: revision.unwrap_or(current),
            more: resp.more(),
        })
    }

    async fn count(&self, prefix: &str) -> Result<usize> {
        let resp = self
            .call("count", |mut c| async move {
                c.kv.get(
                    prefix,
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await
            })
            .await?;
        Ok(usize::try_from(resp.count()).unwrap_or_default())
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value.clone(), None)])
            .or_else([TxnOp::get(key, None)]);
        let attempts = AtomicU32::new(0);
        let resp = self
            .call("create", |mut c| {
                attempts.fetch_add(1, Ordering::Relaxed);
                let txn = txn.clone();
                async move { c.kv.txn(txn).await }
            })
            .await?;
        if !resp.succeeded() {
            let existing = else_get(&resp);
            if attempts.load(Ordering::Relaxed) > 1
                && let Some(kv) = existing.filter(|kv| kv.version() == 1 && kv.value() == value)
            {
                // An earlier attempt whose answer was lost (member died) did create it.
                tracing::debug!(
                    key,
                    revision = kv.mod_revision(),
                    "create applied by an earlier attempt"
                );
                return Ok(kv.mod_revision());
            }
            return Err(StoreError::AlreadyExists(key.to_string()));
        }
        header_revision("create", resp.header())
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected_revision: i64) -> Result<i64> {
        // The create_revision guard keeps an expected revision of 0 from creating the key.
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key, CompareOp::Equal, expected_revision),
                Compare::create_revision(key, CompareOp::Greater, 0),
            ])
            .and_then([TxnOp::put(key, value.clone(), Some(PutOptions::new()))])
            .or_else([TxnOp::get(key, None)]);
        let attempts = AtomicU32::new(0);
        let resp = self
            .call("update", |mut c| {
                attempts.fetch_add(1, Ordering::Relaxed);
                let txn = txn.clone();
                async move { c.kv.txn(txn).await }
            })
            .await?;
        if !resp.succeeded() {
            let current = else_get(&resp);
            if attempts.load(Ordering::Relaxed) > 1
                && let Some(kv) = current
                    .as_ref()
                    .filter(|kv| kv.mod_revision() > expected_revision && kv.value() == value)
            {
                // An earlier attempt whose answer was lost (member died) did write it.
                tracing::debug!(
                    key,
                    revision = kv.mod_revision(),
                    "update applied by an earlier attempt"
                );
                return Ok(kv.mod_revision());
            }
            return Err(mismatch(key, expected_revision, current));
        }
        header_revision("update", resp.header())
    }

    async fn delete(&self, key: &str, expected_revision: Option<i64>) -> Result<(i64, KeyValue)> {
        let mut compares = vec![Compare::create_revision(key, CompareOp::Greater, 0)];
        if let Some(expected) = expected_revision {
            compares.push(Compare::mod_revision(key, CompareOp::Equal, expected));
        }
        let txn = Txn::new()
            .when(compares)
            .and_then([TxnOp::delete(
                key,
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(key, None)]);
        let resp = self
            .call("delete", |mut c| {
                let txn = txn.clone();
                async move { c.kv.txn(txn).await }
            })
            .await?;
        if !resp.succeeded() {
            let current = else_get(&resp);
            return Err(mismatch(
                key,
                expected_revision.unwrap_or_default(),
                current,
            ));
        }
        let revision = header_revision("delete", resp.header())?;
        let prev = resp
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                TxnOpResponse::Delete(del) => del.prev_kvs().first().cloned(),
                _ => None,
            })
            .ok_or(EtcdError::Malformed {
                op: "delete",
                what: "the deleted value",
            })?;
        Ok((revision, convert(&prev)?))
    }

    async fn watch(&self, prefix: &str, after_revision: i64) -> Result<crate::WatchReceiver> {
        let compacted = self.compacted_revision().await?;
        if after_revision < compacted {
            return Err(StoreError::Compacted {
                requested: after_revision,
                compacted,
            });
        }
        watch::start(self.clone(), prefix.to_string(), after_revision).await
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        let current = self.current_revision().await?;
        if revision > current {
            return Err(StoreError::FutureRevision {
                requested: revision,
                current,
            });
        }
        if revision <= self.inner.compacted.load(Ordering::Acquire) || revision <= 0 {
            return Ok(());
        }
        let result = self
            .call("compact", |mut c| async move {
                c.kv.compact(revision, Some(CompactionOptions::new().with_physical()))
                    .await
            })
            .await;
        match result {
            Ok(_) => {}
            // Already compacted at or past `revision` (by us or another client).
            Err(f) if f.kind == Kind::Compacted => {}
            Err(f) if f.kind == Kind::FutureRevision => {
                return Err(self.future_error(revision).await);
            }
            Err(f) => return Err(f.into()),
        }
        self.inner.compacted.fetch_max(revision, Ordering::AcqRel);
        tracing::debug!(revision, "compacted etcd");
        Ok(())
    }

    async fn snapshot(&self, dest: &Path) -> Result<SnapshotInfo> {
        // Every write acknowledged before the stream starts is in the snapshot.
        let revision = self.current_revision().await?;
        let pending = PendingFile::next_to(dest)?;
        let write_error = |source| EtcdError::SnapshotWrite {
            path: dest.to_path_buf(),
            source,
        };
        let mut file = tokio::fs::File::create(pending.path())
            .await
            .map_err(write_error)?;
        let mut stream = self
            .call(
                "snapshot",
                |mut c| async move { c.maintenance.snapshot().await },
            )
            .await?;
        loop {
            let message = stream
                .message()
                .await
                .map_err(|source| EtcdError::Request {
                    op: "snapshot",
                    source,
                })?;
            // Read to the end of the stream: after the data (remaining_bytes reaching 0)
            // etcd sends the SHA-256 of it, which `etcdctl snapshot restore` verifies.
            let Some(chunk) = message else { break };
            file.write_all(chunk.blob()).await.map_err(write_error)?;
        }
        file.flush().await.map_err(write_error)?;
        drop(file);
        let size = tokio::task::spawn_blocking(move || pending.persist())
            .await
            .map_err(|e| StoreError::Backend(Box::new(e)))??;
        tracing::info!(dest = %dest.display(), revision, size, "wrote etcd snapshot");
        Ok(SnapshotInfo {
            revision,
            size,
            backend: SnapshotKind::Etcd.backend(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_follows_etcd() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), [0]);
        assert_eq!(prefix_end(b""), [0]);
    }

    #[test]
    fn endpoints_get_a_scheme() {
        let cfg = EtcdConfig {
            endpoints: vec!["127.0.0.1:2379".into(), "http://h:1".into()],
            ..Default::default()
        };
        let (endpoints, _) = connect_options(&cfg).expect("options");
        assert_eq!(endpoints, ["http://127.0.0.1:2379", "http://h:1"]);
    }
}
