//! Helpers shared by the image tests.
#![allow(dead_code)]

pub mod token;

use std::path::Path;

use capstan_runtime::image::ImageStore;

/// A fresh store in a temp dir (kept alive by the returned guard).
pub fn store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = ImageStore::open(&dir.path().join("images")).expect("open store");
    (dir, store)
}

fn entries(p: &Path) -> Vec<String> {
    std::fs::read_dir(p)
        .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Asserts that the store holds no image, blob, layer or staging leftover.
#[track_caller]
pub fn assert_store_empty(store: &ImageStore) {
    let root = store.root();
    assert_eq!(store.list().unwrap(), vec![], "images left");
    assert_eq!(
        entries(&root.join("blobs/sha256")),
        Vec::<String>::new(),
        "blobs left"
    );
    assert_eq!(
        entries(&root.join("layers")),
        Vec::<String>::new(),
        "layers left"
    );
    assert_eq!(
        entries(&root.join("tmp")),
        Vec::<String>::new(),
        "staging left"
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"], serde_json::json!([]), "refs left");
}

pub fn blob_count(store: &ImageStore) -> usize {
    entries(&store.root().join("blobs/sha256")).len()
}

pub fn layer_count(store: &ImageStore) -> usize {
    entries(&store.root().join("layers")).len()
}
