//! Secrets encryption on real backends: the raw SQLite row and the raw etcd key hold no
//! plaintext, key rotation re-encrypts everything and all of it reads back.

use capstan_store::encryption::{
    EncryptedStore, EncryptionKey, KEY_LEN, KeyFile, Keyring, SharedKeyring,
};
use capstan_store::etcd::testing::EtcdCluster;
use capstan_store::{EtcdStore, SqliteStore, Store};
use std::sync::Arc;

/// The secret's data as the API server stores it (base64 of `hunter2-<i>` inside JSON).
fn secret_json(i: usize) -> Vec<u8> {
    format!(
        r#"{{"apiVersion":"v1","kind":"Secret","metadata":{{"name":"s{i}"}},"data":{{"password":"{}"}},"stringData-plain":"hunter2-{i}"}}"#,
        b64(format!("hunter2-{i}").as_bytes())
    )
    .into_bytes()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn key(i: usize) -> String {
    format!("/registry/secrets/enc-test/s{i}")
}

const N: usize = 12;

/// Writes N secrets (some through an update, one as legacy plaintext before encryption) and
/// checks every raw value with `raw_value`, then rotates and checks again.
async fn exercise<F, Fut>(raw: Arc<dyn Store>, raw_value: F)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Vec<u8>>,
{
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cred").join("encryption.json");
    // A secret written before encryption was turned on.
    raw.create(&key(N), secret_json(N))
        .await
        .expect("legacy create");

    let keys = SharedKeyring::new(KeyFile::load_or_create(&file).expect("key file"));
    let first = keys.current().names()[0].clone();
    let store = EncryptedStore::new(raw.clone(), keys.clone());
    for i in 0..N {
        let rev = store.create(&key(i), b"{}".to_vec()).await.expect("create");
        store
            .update(&key(i), secret_json(i), rev)
            .await
            .expect("update");
    }
    store
        .create("/registry/configmaps/enc-test/c", b"visible".to_vec())
        .await
        .expect("configmap");
    for i in 0..N {
        let stored = raw_value(key(i)).await;
        assert!(
            !contains(&stored, &format!("hunter2-{i}")),
            "plaintext in {}",
            key(i)
        );
        assert!(!contains(&stored, &b64(format!("hunter2-{i}").as_bytes())));
        assert!(contains(&stored, &format!("k8s:enc:aesgcm:v1:{first}:")));
        let got = store.get(&key(i)).await.expect("get").expect("present");
        assert_eq!(got.value, secret_json(i));
    }
    assert_eq!(
        raw_value("/registry/configmaps/enc-test/c".into()).await,
        b"visible"
    );
    // The legacy value reads back as it is.
    assert_eq!(
        store
            .get(&key(N))
            .await
            .expect("get")
            .expect("present")
            .value,
        secret_json(N)
    );

    // Rotate: new write key, re-encrypt all (the legacy one too), drop the old key.
    let rotated = keys
        .current()
        .rotated(EncryptionKey::generate().expect("key"))
        .expect("rotate");
    KeyFile::save(&file, &rotated).expect("save");
    keys.replace(KeyFile::load(&file).expect("reload"));
    let second = rotated.names()[0].clone();
    let report = store.reencrypt().await.expect("reencrypt");
    assert_eq!((report.total, report.rewritten), (N + 1, N + 1));
    KeyFile::save(&file, &rotated.write_key_only()).expect("save");
    keys.replace(KeyFile::load(&file).expect("reload"));
    assert_eq!(keys.current().names(), std::slice::from_ref(&second));
    let counts = store.count_by_key().await.expect("count");
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        [(second.clone(), N + 1)]
    );
    for i in 0..=N {
        let stored = raw_value(key(i)).await;
        assert!(contains(&stored, &format!("k8s:enc:aesgcm:v1:{second}:")));
        assert!(!contains(&stored, &format!("hunter2-{i}")));
        let got = store.get(&key(i)).await.expect("get").expect("present");
        assert_eq!(got.value, secret_json(i));
    }
    let listed = store
        .list("/registry/secrets/", None, 0, None)
        .await
        .expect("list");
    assert_eq!(listed.items.len(), N + 1);

    // A store with only the first (dropped) key cannot read them: a clear error, no panic.
    let stale = Keyring::new(
        vec![EncryptionKey::new("unrelated", [5; KEY_LEN]).expect("key")],
        false,
    )
    .expect("keyring");
    let other = EncryptedStore::new(raw.clone(), SharedKeyring::new(stale));
    let err = other.get(&key(0)).await.expect_err("unknown key");
    let chain = format!("{:?}", err);
    assert!(chain.contains(&second), "{chain}");
}

#[tokio::test]
async fn sqlite_raw_rows_hold_no_plaintext_and_rotation_reads_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("state.db");
    let raw: Arc<dyn Store> = Arc::new(SqliteStore::open(&db).expect("open"));
    exercise(raw, |k| {
        let db = db.clone();
        async move {
            // Straight from the file, read-only, bypassing every layer of the store.
            let conn = rusqlite::Connection::open_with_flags(
                &db,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .expect("open read-only");
            conn.query_row(
                "SELECT value FROM log WHERE key = ?1 ORDER BY rev DESC LIMIT 1",
                [k],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .expect("row")
        }
    })
    .await;
}

#[tokio::test]
async fn etcd_raw_values_hold_no_plaintext_and_rotation_reads_back() {
    let cluster = tokio::task::spawn_blocking(|| EtcdCluster::start(1))
        .await
        .expect("join")
        .expect("start etcd");
    let raw: Arc<dyn Store> =
        Arc::new(EtcdStore::connect(cluster.config()).await.expect("connect"));
    let endpoints = cluster.endpoints();
    let client = etcd_client::Client::connect(&endpoints, None)
        .await
        .expect("etcd client");
    exercise(raw, |k| {
        let mut kv = client.kv_client();
        async move {
            let resp = kv.get(k.as_str(), None).await.expect("etcd get");
            resp.kvs().first().expect("key in etcd").value().to_vec()
        }
    })
    .await;
    drop(cluster);
}

mod conformance_through_the_wrapper {
    use super::*;
    use capstan_store::MemoryStore;

    async fn fresh() -> (EncryptedStore, ()) {
        let keys = Keyring::new(
            vec![EncryptionKey::new("c", [1; KEY_LEN]).expect("key")],
            false,
        )
        .expect("keyring");
        let raw: Arc<dyn Store> = Arc::new(MemoryStore::new());
        (EncryptedStore::new(raw, SharedKeyring::new(keys)), ())
    }

    capstan_store::store_conformance_tests!(fresh());
}
