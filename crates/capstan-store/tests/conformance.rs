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
