//! The store conformance suite on every embedded backend.

mod memory {
    use capstan_store::MemoryStore;

    capstan_store::store_conformance_tests!(async { (MemoryStore::new(), ()) });
}

mod sqlite {
    use capstan_store::SqliteStore;

    async fn fresh() -> (SqliteStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("store.db")).expect("open");
        (store, dir)
    }

    capstan_store::store_conformance_tests!(fresh());
}

mod etcd {
    use capstan_store::EtcdStore;
    use capstan_store::etcd::testing::EtcdCluster;

    async fn fresh() -> (EtcdStore, EtcdCluster) {
        let cluster = tokio::task::spawn_blocking(|| EtcdCluster::start(1))
            .await
            .expect("join")
            .expect("start etcd");
        let store = EtcdStore::connect(cluster.config()).await.expect("connect");
        (store, cluster)
    }

    capstan_store::store_conformance_tests!(fresh());
}
