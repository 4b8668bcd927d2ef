//! The etcd backend against real etcd: TLS, a killed leader, compaction seen by two
//! clients, and snapshot → wipe → restore on both persistent backends.

use capstan_store::etcd::testing::{ClusterTls, EtcdCluster};
use capstan_store::etcd::{EtcdRestoreOptions, restore_snapshot};
use capstan_store::{
    EtcdStore, KeyValue, MemoryStore, SnapshotKind, SqliteStore, Store, StoreError, WatchEvent,
    WatchReceiver, snapshot_kind, sqlite,
};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn cluster(members: usize) -> Arc<EtcdCluster> {
    let cluster = tokio::task::spawn_blocking(move || EtcdCluster::start(members))
        .await
        .expect("join")
        .expect("start etcd");
    Arc::new(cluster)
}

async fn all(store: &impl Store) -> Vec<KeyValue> {
    store.list("/", None, 0, None).await.expect("list").items
}

async fn next(rx: &mut WatchReceiver) -> WatchEvent {
    capstan_store::conformance::next_event(rx).await
}

/// Creates, updates and deletes a few keys (so revisions have gaps and history).
async fn populate(store: &impl Store) {
    for i in 0..20 {
        store
            .create(
                &format!("/registry/pods/default/p{i:02}"),
                format!("v{i}").into(),
            )
            .await
            .expect("create");
    }
    for i in (0..20).step_by(3) {
        let key = format!("/registry/pods/default/p{i:02}");
        let kv = store.get(&key).await.expect("get").expect("present");
        store
            .update(&key, b"updated".to_vec(), kv.mod_revision)
            .await
            .expect("update");
    }
    for i in (1..20).step_by(5) {
        store
            .delete(&format!("/registry/pods/default/p{i:02}"), None)
            .await
            .expect("delete");
    }
}

fn write_pem(dir: &Path, name: &str, pem: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).expect("write pem");
    path
}

/// A CA plus a server certificate (127.0.0.1, localhost) and a client certificate.
fn generate_tls(dir: &Path) -> ClusterTls {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "capstan test etcd ca");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(
        vec!["127.0.0.1".into(), "localhost".into()],
        "etcd",
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) = leaf(vec![], "capstan", ExtendedKeyUsagePurpose::ClientAuth);
    ClusterTls {
        ca_file: write_pem(dir, "ca.pem", &ca_cert.pem()),
        server_cert: write_pem(dir, "server.pem", &server_cert),
        server_key: write_pem(dir, "server-key.pem", &server_key),
        client_cert: write_pem(dir, "client.pem", &client_cert),
        client_key: write_pem(dir, "client-key.pem", &client_key),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_certificates_connect_read_write_and_watch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = generate_tls(dir.path());
    let cluster = tokio::task::spawn_blocking(move || EtcdCluster::start_tls(1, tls))
        .await
        .expect("join")
        .expect("start etcd with TLS");
    let config = cluster.config();
    assert!(config.endpoints[0].starts_with("https://"), "{config:?}");
    let store = EtcdStore::connect(config).await.expect("connect over TLS");
    let start = store.current_revision().await.expect("revision");
    let mut rx = store.watch("/tls/", start).await.expect("watch");
    let rev = store
        .create("/tls/a", b"secret".to_vec())
        .await
        .expect("create");
    assert_eq!(
        store.get("/tls/a").await.expect("get").map(|kv| kv.value),
        Some(b"secret".to_vec())
    );
    assert_eq!(next(&mut rx).await.revision(), rev);

    // Endpoints without a scheme get https when TLS files are given.
    let mut bare = cluster.config();
    bare.endpoints = bare
        .endpoints
        .iter()
        .map(|e| e.trim_start_matches("https://").to_string())
        .collect();
    let store = EtcdStore::connect(bare).await.expect("connect host:port");
    assert_eq!(store.current_revision().await.expect("revision"), rev);

    // Without a client certificate the member refuses the connection, quickly.
    let mut anonymous = cluster.config();
    anonymous.cert_file = None;
    anonymous.key_file = None;
    let started = Instant::now();
    let err = EtcdStore::connect(anonymous)
        .await
        .err()
        .expect("connect without a client certificate must fail");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a certificate refusal is not retried: {:?}",
        started.elapsed()
    );
    assert!(format!("{err:?}").contains("Certificate"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_leader_loses_no_acknowledged_write_and_watches_resume() {
    const AFTER_KILL: usize = 150;
    let cluster = cluster(3).await;
    let store = Arc::new(EtcdStore::connect(cluster.config()).await.expect("connect"));
    let start = store.current_revision().await.expect("revision");
    // Several watches so some run on the member that is killed (the client balances
    // streams over members), plus one through a client that knows only two members.
    let mut watches = Vec::new();
    for _ in 0..6 {
        watches.push(store.watch("/ha/", start).await.expect("watch"));
    }
    let leader = {
        let cluster = cluster.clone();
        tokio::task::spawn_blocking(move || cluster.leader())
            .await
            .expect("join")
    };
    let mut pair = cluster.config();
    pair.endpoints = vec![
        cluster.member_client_url(leader),
        cluster.member_client_url((leader + 1) % 3),
    ];
    let pair_store = EtcdStore::connect(pair).await.expect("connect pair");
    watches.push(pair_store.watch("/ha/", start).await.expect("watch"));

    let (killed_tx, killed_rx) = tokio::sync::oneshot::channel::<Instant>();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut killed_rx = killed_rx;
            let mut killed_at: Option<Instant> = None;
            let mut acked = Vec::new();
            let mut first_after_kill = None;
            let mut errors = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(90);
            for i in 0.. {
                if killed_at.is_none() {
                    killed_at = killed_rx.try_recv().ok();
                }
                let after_kill = acked
                    .iter()
                    .filter(|(_, _, at)| killed_at.is_some_and(|k| *at > k))
                    .count();
                if after_kill >= AFTER_KILL || Instant::now() > deadline {
                    break;
                }
                let key = format!("/ha/{i:06}");
                match store.create(&key, i.to_string().into_bytes()).await {
                    Ok(rev) => {
                        let now = Instant::now();
                        if let Some(k) = killed_at {
                            first_after_kill.get_or_insert(now - k);
                        }
                        acked.push((key, rev, now));
                    }
                    Err(err) => errors.push(format!("{key}: {err}")),
                }
            }
            (acked, first_after_kill, errors)
        })
    };
    // Let some writes land, then SIGKILL the leader mid-stream.
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.count("/ha/").await.expect("count") < 100 {
        assert!(Instant::now() < deadline, "writes do not progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    {
        let cluster = cluster.clone();
        tokio::task::spawn_blocking(move || cluster.kill(leader))
            .await
            .expect("join")
            .expect("kill leader");
    }
    let _ = killed_tx.send(Instant::now());
    let (acked, first_after_kill, errors) = writer.await.expect("writer");
    let recovery = first_after_kill.expect("no write acknowledged after the kill");
    eprintln!(
        "leader {leader} killed: first acknowledged write after {recovery:?}; {} acknowledged, {} failed: {errors:?}",
        acked.len(),
        errors.len()
    );
    assert!(
        recovery < Duration::from_secs(10),
        "store took {recovery:?} to answer"
    );

    // Every acknowledged write is there with its revision.
    let items = store.list("/ha/", None, 0, None).await.expect("list").items;
    let by_key: std::collections::HashMap<&str, &KeyValue> =
        items.iter().map(|kv| (kv.key.as_str(), kv)).collect();
    for (key, rev, _) in &acked {
        let kv = by_key
            .get(key.as_str())
            .unwrap_or_else(|| panic!("{key} lost"));
        assert_eq!(kv.mod_revision, *rev, "{key}");
    }
    // Every watch delivered exactly the writes, in order, without gaps or duplicates.
    let mut history: Vec<(String, i64)> = items
        .iter()
        .map(|kv| (kv.key.clone(), kv.mod_revision))
        .collect();
    history.sort_by_key(|(_, rev)| *rev);
    for (n, rx) in watches.iter_mut().enumerate() {
        for (key, rev) in &history {
            let event = next(rx).await;
            assert_eq!(
                (event.key(), event.revision()),
                (key.as_str(), *rev),
                "watch {n}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_agree_on_the_compaction_point() {
    let cluster = cluster(1).await;
    let a = EtcdStore::connect(cluster.config())
        .await
        .expect("connect a");
    let b = EtcdStore::connect(cluster.config())
        .await
        .expect("connect b");
    let mut rev = a.create("/c/k", b"0".to_vec()).await.expect("create");
    let mut revs = vec![rev];
    for i in 1..10 {
        rev = a
            .update("/c/k", i.to_string().into_bytes(), rev)
            .await
            .expect("update");
        revs.push(rev);
    }
    assert_eq!(b.compacted_revision().await.expect("compacted"), 0);
    // The empty prefix means every key.
    let everything = b.list("", None, 0, None).await.expect("list all");
    assert_eq!(everything.items.len(), 1);
    assert_eq!(b.count("").await.expect("count all"), 1);
    a.compact(revs[3]).await.expect("compact");
    assert_eq!(b.compacted_revision().await.expect("compacted"), revs[3]);
    match b.watch("/c/", revs[2]).await {
        Err(StoreError::Compacted { compacted, .. }) => assert_eq!(compacted, revs[3]),
        other => panic!("want Compacted, got {:?}", other.map(|_| ())),
    }
    b.compact(revs[7]).await.expect("compact");
    assert_eq!(a.compacted_revision().await.expect("compacted"), revs[7]);
    // Compacting below the point is a no-op for either client.
    a.compact(revs[5]).await.expect("compact below");
    assert_eq!(b.compacted_revision().await.expect("compacted"), revs[7]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_snapshot_wipe_restore_keeps_keys_and_revisions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.db");
    let snap = dir.path().join("snapshots").join("snap.db");
    std::fs::create_dir_all(snap.parent().expect("parent")).expect("mkdir");
    let store = SqliteStore::open(&db).expect("open");
    populate(&store).await;
    let before = all(&store).await;
    let info = store.snapshot(&snap).await.expect("snapshot");
    assert_eq!(info.backend, "sqlite");
    assert_eq!(
        info.revision,
        store.current_revision().await.expect("revision")
    );
    assert_eq!(info.size, std::fs::metadata(&snap).expect("stat").len());
    assert_eq!(snapshot_kind(&snap).expect("kind"), SnapshotKind::Sqlite);
    // Writes after the snapshot are not part of it.
    store
        .create("/registry/pods/default/late", b"x".to_vec())
        .await
        .expect("create");
    drop(store);

    for suffix in ["", "-wal", "-shm"] {
        let mut path = db.as_os_str().to_owned();
        path.push(suffix);
        let _ = std::fs::remove_file(path);
    }
    sqlite::restore_snapshot(&snap, &db).expect("restore");
    let store = SqliteStore::open(&db).expect("open restored");
    assert_eq!(all(&store).await, before);
    assert_eq!(
        store.current_revision().await.expect("revision"),
        info.revision
    );
    let next = store
        .create("/registry/pods/default/new", b"n".to_vec())
        .await
        .expect("create");
    assert!(next > info.revision);
    drop(store);

    // Restoring over a live-looking database (with a stale WAL) replaces it wholesale.
    std::fs::write(dir.path().join("store.db-wal"), b"stale").expect("write wal");
    sqlite::restore_snapshot(&snap, &db).expect("restore again");
    let store = SqliteStore::open(&db).expect("open restored");
    assert_eq!(all(&store).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_snapshot_wipe_restore_keeps_keys_and_revisions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let snap = dir.path().join("etcd.snap");
    let (before, info) = {
        let cluster = cluster(1).await;
        let store = EtcdStore::connect(cluster.config()).await.expect("connect");
        populate(&store).await;
        let before = all(&store).await;
        let info = store.snapshot(&snap).await.expect("snapshot");
        assert_eq!(info.backend, "etcd");
        assert_eq!(
            info.revision,
            store.current_revision().await.expect("revision")
        );
        (before, info)
        // The cluster and its data directory are gone here.
    };
    assert_eq!(info.size, std::fs::metadata(&snap).expect("stat").len());
    assert_eq!(snapshot_kind(&snap).expect("kind"), SnapshotKind::Etcd);

    let opts = EtcdCluster::restore_options(dir.path().join("restored")).expect("options");
    restore_snapshot(&snap, &opts).expect("restore");
    let again = restore_snapshot(&snap, &opts).expect_err("restore into an existing dir");
    match &again {
        StoreError::Backend(source) => {
            assert!(source.to_string().contains("already exists"), "{source}")
        }
        other => panic!("want a backend error, got {other:?}"),
    }
    let restored = {
        let opts = opts.clone();
        tokio::task::spawn_blocking(move || EtcdCluster::start_from_data_dir(&opts))
            .await
            .expect("join")
            .expect("start restored member")
    };
    let store = EtcdStore::connect(restored.config())
        .await
        .expect("connect restored");
    assert_eq!(all(&store).await, before);
    let current = store.current_revision().await.expect("revision");
    assert!(current >= info.revision, "{current} < {}", info.revision);
    let next = store
        .create("/registry/pods/default/new", b"n".to_vec())
        .await
        .expect("create");
    assert!(next > info.revision);
}

#[tokio::test]
async fn snapshots_are_refused_where_they_cannot_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = MemoryStore::new()
        .snapshot(&dir.path().join("mem.snap"))
        .await
        .expect_err("memory snapshot");
    assert!(matches!(err, StoreError::Unsupported(_)), "{err:?}");
    assert!(!dir.path().join("mem.snap").exists());

    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"not a snapshot at all, not even close").expect("write");
    assert!(snapshot_kind(&junk).is_err());
    assert!(sqlite::restore_snapshot(&junk, &dir.path().join("db")).is_err());
    assert!(!dir.path().join("db").exists());
    let opts =
        EtcdRestoreOptions::single_member(dir.path().join("data"), "m", "http://127.0.0.1:2380");
    assert!(restore_snapshot(&junk, &opts).is_err());
    assert!(!dir.path().join("data").exists());

    // An SQLite database of another schema is refused too.
    let other = dir.path().join("other.db");
    let conn = rusqlite::Connection::open(&other).expect("open");
    conn.execute_batch("CREATE TABLE t (x INTEGER)")
        .expect("create table");
    drop(conn);
    let err = sqlite::restore_snapshot(&other, &dir.path().join("db")).expect_err("foreign db");
    assert!(format!("{err:?}").contains("NotCapstanSqlite"), "{err:?}");
    assert!(!dir.path().join("db").exists());
}
