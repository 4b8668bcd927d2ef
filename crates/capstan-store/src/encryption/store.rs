//! [`EncryptedStore`]: seals on every write, opens on every read, and re-encrypts in place.

use super::{EncryptionError, SECRETS_PREFIX, SharedKeyring, is_encrypted_key};
use crate::WatchReceiver;
use crate::{KeyValue, ListResult, Result, SnapshotInfo, Store, StoreError, WatchEvent};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Watch events buffered between the inner watch and the caller.
const WATCH_BUFFER: usize = 256;
/// Keys read per page while re-encrypting.
const PAGE: usize = 500;
/// Attempts per key when concurrent writes keep winning its compare-and-swap.
const CAS_ATTEMPTS: usize = 10;

fn backend(e: EncryptionError) -> StoreError {
    StoreError::Backend(Box::new(e))
}

/// A [`Store`] that encrypts the values of Secrets on their way in and decrypts them on their
/// way out; everything else passes through.
#[derive(Clone)]
pub struct EncryptedStore {
    inner: Arc<dyn Store>,
    keys: SharedKeyring,
}

/// What a re-encryption pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReencryptReport {
    /// Secrets seen.
    pub total: usize,
    /// Secrets rewritten with the write key.
    pub rewritten: usize,
}

impl EncryptedStore {
    pub fn new(inner: Arc<dyn Store>, keys: SharedKeyring) -> EncryptedStore {
        EncryptedStore { inner, keys }
    }

    /// The keyring handle; replacing its keyring takes effect on the next operation.
    pub fn keys(&self) -> &SharedKeyring {
        &self.keys
    }

    /// The wrapped store (raw, encrypted values).
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }

    fn open_kv(&self, mut kv: KeyValue) -> Result<KeyValue> {
        if is_encrypted_key(&kv.key) {
            kv.value = self
                .keys
                .current()
                .open(&kv.key, std::mem::take(&mut kv.value))
                .map_err(backend)?;
        }
        Ok(kv)
    }

    fn seal(&self, key: &str, value: Vec<u8>) -> Result<Vec<u8>> {
        self.keys.current().seal(key, value).map_err(backend)
    }

    /// Rewrites every secret not sealed with the current write key (plaintext ones too),
    /// compare-and-swap per key so concurrent writes win and are not lost.
    pub async fn reencrypt(&self) -> Result<ReencryptReport> {
        let mut report = ReencryptReport::default();
        let mut start_after: Option<String> = None;
        loop {
            let page = self
                .inner
                .list(SECRETS_PREFIX, start_after.as_deref(), PAGE, None)
                .await?;
            for kv in &page.items {
                report.total += 1;
                if self.reencrypt_one(kv.clone()).await? {
                    report.rewritten += 1;
                }
            }
            if !page.more {
                break;
            }
            start_after = page.items.last().map(|kv| kv.key.clone());
        }
        Ok(report)
    }

    /// Rewrites one raw key-value unless it is current; true when it wrote.
    async fn reencrypt_one(&self, mut kv: KeyValue) -> Result<bool> {
        for _ in 0..CAS_ATTEMPTS {
            let keys = self.keys.current();
            if keys.is_current(&kv.key, &kv.value) {
                return Ok(false);
            }
            let plain = keys.open(&kv.key, kv.value).map_err(backend)?;
            let sealed = keys.seal(&kv.key, plain).map_err(backend)?;
            match self.inner.update(&kv.key, sealed, kv.mod_revision).await {
                Ok(_) => return Ok(true),
                Err(StoreError::Conflict { .. }) => match self.inner.get(&kv.key).await? {
                    Some(now) => kv = now,
                    None => return Ok(false),
                },
                Err(StoreError::NotFound(_)) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict {
            key: kv.key,
            expected: kv.mod_revision,
            actual: kv.mod_revision,
        })
    }

    /// How many secrets are stored under each key name (`identity` for plaintext).
    pub async fn count_by_key(&self) -> Result<BTreeMap<String, usize>> {
        let mut counts = BTreeMap::new();
        let mut start_after: Option<String> = None;
        loop {
            let page = self
                .inner
                .list(SECRETS_PREFIX, start_after.as_deref(), PAGE, None)
                .await?;
            for kv in &page.items {
                let name = super::sealed_key_name(&kv.key, &kv.value)
                    .map_err(backend)?
                    .unwrap_or("identity")
                    .to_string();
                *counts.entry(name).or_insert(0) += 1;
            }
            if !page.more {
                break;
            }
            start_after = page.items.last().map(|kv| kv.key.clone());
        }
        Ok(counts)
    }
}

/// Decrypts one watch event; None (logged) when it cannot be, so one unreadable secret does
/// not stop a watch that follows every other key.
fn open_event(store: &EncryptedStore, ev: WatchEvent) -> Option<WatchEvent> {
    let key = ev.key().to_string();
    if !is_encrypted_key(&key) {
        return Some(ev);
    }
    let opened = match ev {
        WatchEvent::Put { kv, prev } => store.open_kv(kv).map(|kv| WatchEvent::Put {
            kv,
            // A previous value under a dropped key is no reason to lose the new state.
            prev: prev.and_then(|p| store.open_kv(p).ok()),
        }),
        WatchEvent::Delete { prev, revision } => store
            .open_kv(prev)
            .map(|prev| WatchEvent::Delete { prev, revision }),
    };
    match opened {
        Ok(ev) => Some(ev),
        Err(e) => {
            tracing::error!(key, error = %e, "watch event of an undecryptable secret skipped");
            None
        }
    }
}

#[async_trait]
impl Store for EncryptedStore {
    async fn current_revision(&self) -> Result<i64> {
        self.inner.current_revision().await
    }

    async fn compacted_revision(&self) -> Result<i64> {
        self.inner.compacted_revision().await
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.inner
            .get(key)
            .await?
            .map(|kv| self.open_kv(kv))
            .transpose()
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: Option<i64>,
    ) -> Result<ListResult> {
        let mut page = self
            .inner
            .list(prefix, start_after, limit, revision)
            .await?;
        page.items = std::mem::take(&mut page.items)
            .into_iter()
            .map(|kv| self.open_kv(kv))
            .collect::<Result<_>>()?;
        Ok(page)
    }

    async fn count(&self, prefix: &str) -> Result<usize> {
        self.inner.count(prefix).await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64> {
        let value = self.seal(key, value)?;
        self.inner.create(key, value).await
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected_revision: i64) -> Result<i64> {
        let value = self.seal(key, value)?;
        self.inner.update(key, value, expected_revision).await
    }

    async fn delete(&self, key: &str, expected_revision: Option<i64>) -> Result<(i64, KeyValue)> {
        let (rev, kv) = self.inner.delete(key, expected_revision).await?;
        Ok((rev, self.open_kv(kv)?))
    }

    async fn watch(&self, prefix: &str, after_revision: i64) -> Result<WatchReceiver> {
        let mut inner = self.inner.watch(prefix, after_revision).await?;
        let overlaps = prefix.starts_with(SECRETS_PREFIX) || SECRETS_PREFIX.starts_with(prefix);
        if !overlaps {
            return Ok(inner);
        }
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let store = self.clone();
        // Ends when either side closes: the inner watch ends or the caller drops its receiver.
        tokio::spawn(async move {
            loop {
                let ev = tokio::select! {
                    _ = tx.closed() => break,
                    ev = inner.recv() => ev,
                };
                let out = match ev {
                    None => break,
                    Some(Err(e)) => Err(e),
                    Some(Ok(ev)) => match open_event(&store, ev) {
                        Some(ev) => Ok(ev),
                        None => continue,
                    },
                };
                if tx.send(out).await.is_err() {
                    break;
                }
            }
        });
        Ok(rx)
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        self.inner.compact(revision).await
    }

    async fn snapshot(&self, dest: &Path) -> Result<SnapshotInfo> {
        self.inner.snapshot(dest).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;
    use crate::encryption::{EncryptionKey, KEY_LEN, Keyring};

    fn keys(names: &[&str]) -> Keyring {
        let keys = names
            .iter()
            .map(|n| EncryptionKey::new(n, [n.len() as u8; KEY_LEN]).unwrap())
            .collect();
        Keyring::new(keys, false).unwrap()
    }

    fn wrapped(names: &[&str]) -> (Arc<dyn Store>, EncryptedStore) {
        let raw: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let enc = EncryptedStore::new(raw.clone(), SharedKeyring::new(keys(names)));
        (raw, enc)
    }

    const S: &str = "/registry/secrets/ns/s";

    #[tokio::test]
    async fn every_path_seals_writes_and_opens_reads() {
        let (raw, enc) = wrapped(&["a"]);
        let mut w = enc.watch("/registry/", 0).await.unwrap();
        let r1 = enc.create(S, b"one".to_vec()).await.unwrap();
        let r2 = enc.update(S, b"two".to_vec(), r1).await.unwrap();
        enc.create("/registry/configmaps/ns/c", b"plain".to_vec())
            .await
            .unwrap();
        let stored = raw.get(S).await.unwrap().unwrap();
        assert!(stored.value.starts_with(b"k8s:enc:aesgcm:v1:a:"));
        assert_eq!(
            raw.get("/registry/configmaps/ns/c")
                .await
                .unwrap()
                .unwrap()
                .value,
            b"plain"
        );
        assert_eq!(enc.get(S).await.unwrap().unwrap().value, b"two");
        let list = enc.list("/registry/", None, 0, None).await.unwrap();
        let values: Vec<_> = list.items.iter().map(|kv| kv.value.clone()).collect();
        assert_eq!(values, [b"plain".to_vec(), b"two".to_vec()]);
        let old = enc
            .list("/registry/secrets/", None, 0, Some(r1))
            .await
            .unwrap();
        assert_eq!(old.items[0].value, b"one");
        let (_, last) = enc.delete(S, Some(r2)).await.unwrap();
        assert_eq!(last.value, b"two");
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(crate::conformance::next_event(&mut w).await);
        }
        match &seen[1] {
            WatchEvent::Put { kv, prev } => {
                assert_eq!(kv.value, b"two");
                assert_eq!(prev.as_ref().unwrap().value, b"one");
            }
            e => panic!("{e:?}"),
        }
        assert!(matches!(&seen[3], WatchEvent::Delete { prev, .. } if prev.value == b"two"));
    }

    #[tokio::test]
    async fn unknown_key_fails_reads_clearly_and_watch_skips_only_that_event() {
        let (raw, other) = wrapped(&["b"]);
        let enc = EncryptedStore::new(raw.clone(), SharedKeyring::new(keys(&["a"])));
        let mut w = other.watch("/", 0).await.unwrap();
        enc.create(S, b"x".to_vec()).await.unwrap();
        other
            .create("/registry/secrets/ns/t", b"y".to_vec())
            .await
            .unwrap();
        let err = other.get(S).await.unwrap_err();
        let chain = format!("{:?}", err);
        assert!(chain.contains("UnknownKey"), "{chain}");
        assert!(other.list("/registry/", None, 0, None).await.is_err());
        // The undecryptable create is skipped; the next event still arrives.
        let ev = crate::conformance::next_event(&mut w).await;
        assert_eq!(ev.key(), "/registry/secrets/ns/t");
        // Nothing was rewritten by the failed reads.
        assert!(enc.get(S).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn legacy_plaintext_reads_then_is_sealed_on_write_and_by_reencrypt() {
        let (raw, enc) = wrapped(&["a"]);
        let r = raw.create(S, b"legacy".to_vec()).await.unwrap();
        raw.create("/registry/secrets/ns/u", b"legacy2".to_vec())
            .await
            .unwrap();
        assert_eq!(enc.get(S).await.unwrap().unwrap().value, b"legacy");
        enc.update(S, b"new".to_vec(), r).await.unwrap();
        assert!(
            raw.get(S)
                .await
                .unwrap()
                .unwrap()
                .value
                .starts_with(b"k8s:enc:")
        );
        let counts = enc.count_by_key().await.unwrap();
        assert_eq!(counts.get("identity"), Some(&1));
        let report = enc.reencrypt().await.unwrap();
        assert_eq!(
            report,
            ReencryptReport {
                total: 2,
                rewritten: 1
            }
        );
        assert_eq!(enc.count_by_key().await.unwrap().get("a"), Some(&2));
    }

    #[tokio::test]
    async fn rotation_rewrites_under_the_new_key_and_old_key_can_go() {
        let (raw, enc) = wrapped(&["old"]);
        for i in 0..7 {
            enc.create(
                &format!("/registry/secrets/ns/s{i}"),
                format!("v{i}").into(),
            )
            .await
            .unwrap();
        }
        let rotated = enc
            .keys()
            .current()
            .rotated(EncryptionKey::new("new", [42; KEY_LEN]).unwrap())
            .unwrap();
        enc.keys().replace(rotated.clone());
        assert_eq!(enc.reencrypt().await.unwrap().rewritten, 7);
        assert_eq!(enc.reencrypt().await.unwrap().rewritten, 0);
        enc.keys().replace(rotated.write_key_only());
        for i in 0..7 {
            let key = format!("/registry/secrets/ns/s{i}");
            assert_eq!(
                enc.get(&key).await.unwrap().unwrap().value,
                format!("v{i}").as_bytes()
            );
            let stored = raw.get(&key).await.unwrap().unwrap().value;
            assert!(stored.starts_with(b"k8s:enc:aesgcm:v1:new:"));
        }
    }

    /// A write racing the re-encryption of a key is kept: the CAS fails, the new value wins.
    #[tokio::test]
    async fn reencrypt_keeps_a_concurrent_write() {
        let (raw, enc) = wrapped(&["old"]);
        let r = enc.create(S, b"v1".to_vec()).await.unwrap();
        let stale = raw.get(S).await.unwrap().unwrap();
        enc.keys().replace(
            enc.keys()
                .current()
                .rotated(EncryptionKey::new("new", [3; KEY_LEN]).unwrap())
                .unwrap(),
        );
        enc.update(S, b"v2".to_vec(), r).await.unwrap();
        // Re-encrypting from the stale read conflicts, re-reads, and finds it current.
        assert!(!enc.reencrypt_one(stale).await.unwrap());
        assert_eq!(enc.get(S).await.unwrap().unwrap().value, b"v2");
    }
}
