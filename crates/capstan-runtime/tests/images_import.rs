//! Importing OCI and docker archives into the store; resolution, unpacking, removal and GC;
//! bad archives leave nothing behind.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use capstan_runtime::image::{ImageError, ImageStore};
use capstan_runtime::testimage::{
    TestFile, TestImageOptions, busybox_docker_archive, busybox_oci_archive,
    busybox_oci_archive_with, busybox_oci_layout,
};
use common::{assert_store_empty, blob_count, layer_count, store};

fn opts() -> TestImageOptions {
    TestImageOptions {
        entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
        cmd: Some(vec!["echo hello".into()]),
        env: vec!["GREETING=hi".into()],
        working_dir: Some("/tmp".into()),
        user: Some("app".into()),
        files: vec![TestFile::file(
            "/etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
        )],
        ..Default::default()
    }
}

#[test]
fn oci_archive_import_resolves_short_names_ids_and_digests() {
    let (tmp, store) = store();
    let archive = tmp.path().join("busybox.tar");
    let built = busybox_oci_archive_with(&archive, "busybox:1.35", &opts()).unwrap();
    let started = std::time::Instant::now();
    let imported = store.import_archive(&archive).unwrap();
    eprintln!(
        "import of the busybox OCI archive: {} ms",
        started.elapsed().as_millis()
    );
    assert_eq!(imported.len(), 1);
    let img = &imported[0];
    assert_eq!(img.id, built.config_digest);
    assert_eq!(img.manifest_digest, built.manifest_digest);
    assert_eq!(
        img.references,
        vec!["docker.io/library/busybox:1.35".to_string()]
    );
    assert!(img.size > 1_000_000, "size {}", img.size);
    assert!(img.created.is_some());

    for r in [
        "busybox:1.35",
        "docker.io/library/busybox:1.35",
        "library/busybox:1.35",
        built.config_digest.as_str(),
        &built.config_digest[7..19],
        &format!("busybox@{}", built.manifest_digest),
    ] {
        assert_eq!(store.resolve(r).unwrap().as_ref(), Some(img), "{r}");
    }
    assert_eq!(
        store.resolve("busybox").unwrap(),
        None,
        "busybox:latest was never imported"
    );
    assert_eq!(store.resolve("other:1").unwrap(), None);

    let cfg = store.config(img).unwrap();
    let c = cfg.config().as_ref().unwrap();
    assert_eq!(
        c.entrypoint().as_deref(),
        Some(&["/bin/sh".to_string(), "-c".to_string()][..])
    );
    assert_eq!(c.cmd().as_deref(), Some(&["echo hello".to_string()][..]));
    assert_eq!(c.user().as_deref(), Some("app"));
    assert_eq!(c.working_dir().as_deref(), Some("/tmp"));
    assert!(
        c.env()
            .as_ref()
            .unwrap()
            .contains(&"GREETING=hi".to_string())
    );

    let started = std::time::Instant::now();
    let dirs = store.layer_dirs(img).unwrap();
    eprintln!(
        "unpack of the busybox layer: {} ms",
        started.elapsed().as_millis()
    );
    assert_eq!(dirs.len(), 1);
    let bb = std::fs::metadata(dirs[0].join("bin/busybox")).unwrap();
    assert_eq!(bb.permissions().mode() & 0o777, 0o755);
    assert_eq!(
        std::fs::read_link(dirs[0].join("bin/sh")).unwrap().to_str(),
        Some("busybox")
    );
    assert_eq!(
        std::fs::metadata(dirs[0].join("tmp"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o1777
    );
    let passwd = std::fs::read_to_string(dirs[0].join("etc/passwd")).unwrap();
    assert!(passwd.contains("app:x:1000"));
    // Unpacked once: a second call reuses the directory.
    let before = std::fs::metadata(&dirs[0]).unwrap().ino();
    assert_eq!(store.layer_dirs(img).unwrap(), dirs);
    assert_eq!(std::fs::metadata(&dirs[0]).unwrap().ino(), before);

    // Reopening the store sees the same image.
    let reopened = ImageStore::open(store.root()).unwrap();
    assert_eq!(reopened.list().unwrap(), vec![img.clone()]);
}

#[test]
fn docker_archive_import_and_gzip_archives() {
    let (tmp, store) = store();
    let archive = tmp.path().join("docker.tar");
    let built = busybox_docker_archive(&archive, "registry.example.com:5000/team/app:v2").unwrap();
    let imported = store.import_archive(&archive).unwrap();
    assert_eq!(imported.len(), 1);
    assert_eq!(imported[0].id, built.config_digest);
    assert_eq!(
        imported[0].references,
        vec!["registry.example.com:5000/team/app:v2".to_string()]
    );
    let dirs = store.layer_dirs(&imported[0]).unwrap();
    assert!(dirs[0].join("bin/busybox").is_file());

    // The same image as a gzip'd OCI archive: same config, so the same image ID.
    let oci = tmp.path().join("oci.tar");
    let built2 = busybox_oci_archive(&oci, "example.com/gz:1").unwrap();
    assert_eq!(built2.config_digest, built.config_digest);
    let gz = tmp.path().join("oci.tar.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::fast(),
    );
    enc.write_all(&std::fs::read(&oci).unwrap()).unwrap();
    enc.finish().unwrap();
    let imported2 = store.import_archive(&gz).unwrap();
    assert_eq!(imported2[0].id, built.config_digest);
    assert_eq!(
        imported2[0].references,
        vec!["example.com/gz:1".to_string()]
    );
    // Two manifests (uncompressed and gzip'd layer) with one config: two images, one ID.
    assert_eq!(store.list().unwrap().len(), 2);
    // The short ID is ambiguous only across different IDs; both records share one.
    assert!(
        store
            .resolve(&built.config_digest[7..19])
            .unwrap()
            .is_some()
    );
}

#[test]
fn test_images_are_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let a = busybox_oci_archive(&tmp.path().join("a.tar"), "x:1").unwrap();
    let b = busybox_oci_archive(&tmp.path().join("b.tar"), "x:1").unwrap();
    assert_eq!(a, b);
    assert_eq!(
        std::fs::read(tmp.path().join("a.tar")).unwrap(),
        std::fs::read(tmp.path().join("b.tar")).unwrap()
    );
    let c = busybox_oci_layout(
        &tmp.path().join("layout"),
        "x:1",
        &TestImageOptions::default(),
    )
    .unwrap();
    assert_eq!(a.manifest_digest, c.manifest_digest);
}

#[test]
fn corrupt_and_tampered_archives_leave_nothing() {
    let (tmp, store) = store();
    let good = tmp.path().join("good.tar");
    busybox_oci_archive(&good, "busybox:latest").unwrap();
    let bytes = std::fs::read(&good).unwrap();

    // Truncated in the middle of the busybox layer.
    let truncated = tmp.path().join("truncated.tar");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = store.import_archive(&truncated).unwrap_err();
    eprintln!("truncated: {err}");
    assert!(
        matches!(
            err,
            ImageError::InvalidArchive { .. } | ImageError::DigestMismatch { .. }
        ),
        "{err:?}"
    );
    assert_store_empty(&store);

    // Not a tar at all.
    let junk = tmp.path().join("junk.tar");
    std::fs::write(&junk, b"this is not an archive at all").unwrap();
    let err = store.import_archive(&junk).unwrap_err();
    assert!(matches!(err, ImageError::InvalidArchive { .. }), "{err:?}");
    assert_store_empty(&store);

    // A layout whose layer blob does not match its digest.
    let layout = tmp.path().join("layout");
    let built =
        busybox_oci_layout(&layout, "busybox:latest", &TestImageOptions::default()).unwrap();
    let layer = layout
        .join("blobs/sha256")
        .join(&built.layer_digests[0][7..]);
    let mut data = std::fs::read(&layer).unwrap();
    let last = data.len() - 100;
    data[last] ^= 0xff;
    std::fs::write(&layer, data).unwrap();
    let tampered = tmp.path().join("tampered.tar");
    tar_dir(&layout, &tampered);
    let err = store.import_archive(&tampered).unwrap_err();
    eprintln!("tampered: {err}");
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err:?}");
    assert_store_empty(&store);

    // An archive entry that climbs out of the extraction dir.
    let evil = tmp.path().join("evil.tar");
    std::fs::write(&evil, raw_tar(&[("../../escape", b"x")])).unwrap();
    let err = store.import_archive(&evil).unwrap_err();
    assert!(matches!(err, ImageError::InvalidArchive { .. }), "{err:?}");
    assert!(!tmp.path().join("escape").exists());
    assert_store_empty(&store);

    // A missing file.
    assert!(store.import_archive(&tmp.path().join("nope.tar")).is_err());
    assert_store_empty(&store);
}

#[test]
fn layer_with_parent_dir_entry_is_refused() {
    let (tmp, store) = store();
    let layout = tmp.path().join("layout");
    busybox_oci_layout(&layout, "evil:1", &TestImageOptions::default()).unwrap();
    // Swap in a layer with a `../` entry, re-linking config and manifest to it.
    let layer = raw_tar(&[("../outside", b"pwned"), ("ok", b"fine")]);
    let diff_id = capstan_runtime::image::sha256_digest(&layer);
    rewrite_single_layer(
        &layout,
        &layer,
        &diff_id,
        "application/vnd.oci.image.layer.v1.tar",
    );
    let archive = tmp.path().join("evil.tar");
    tar_dir(&layout, &archive);
    let img = store.import_archive(&archive).unwrap().remove(0);
    let err = store.layer_dirs(&img).unwrap_err();
    assert!(matches!(err, ImageError::PathTraversal { .. }), "{err:?}");
    assert_eq!(layer_count(&store), 0, "no partial layer dir");
    assert!(!store.root().join("outside").exists());
    assert!(!store.root().join("layers/outside").exists());
}

#[test]
fn zstd_layers_unpack() {
    let (tmp, store) = store();
    let layout = tmp.path().join("layout");
    let built = busybox_oci_layout(&layout, "zstd:1", &TestImageOptions::default()).unwrap();
    let gz = std::fs::read(
        layout
            .join("blobs/sha256")
            .join(&built.layer_digests[0][7..]),
    )
    .unwrap();
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut tar).unwrap();
    let zst =
        ruzstd::encoding::compress_to_vec(&tar[..], ruzstd::encoding::CompressionLevel::Fastest);
    let diff_id = capstan_runtime::image::sha256_digest(&tar);
    rewrite_single_layer(
        &layout,
        &zst,
        &diff_id,
        "application/vnd.oci.image.layer.v1.tar+zstd",
    );
    let archive = tmp.path().join("zstd.tar");
    tar_dir(&layout, &archive);
    let img = store.import_archive(&archive).unwrap().remove(0);
    let dirs = store.layer_dirs(&img).unwrap();
    assert!(dirs[0].join("bin/busybox").is_file());
}

#[test]
fn staging_leftovers_of_dead_processes_are_removed_at_open() {
    let (_tmp, store) = store();
    let dead = store.root().join("tmp/999999999.0.0");
    std::fs::create_dir_all(dead.join("blobs")).unwrap();
    std::fs::write(dead.join("blobs/partial"), b"half a layer").unwrap();
    let reopened = ImageStore::open(store.root()).unwrap();
    assert!(!dead.exists());
    assert_store_empty(&reopened);
}

#[test]
fn remove_untags_then_deletes_and_gc_keeps_images_in_use() {
    let (tmp, store) = store();
    let a = tmp.path().join("a.tar");
    let b = tmp.path().join("b.tar");
    let img_a = busybox_oci_archive(&a, "app:a").unwrap();
    let opts_b = TestImageOptions {
        extra_layers: vec![vec![TestFile::file("/b.txt", "only in b")]],
        ..Default::default()
    };
    let img_b = busybox_oci_archive_with(&b, "app:b", &opts_b).unwrap();
    store.import_archive(&a).unwrap();
    let rec_b = store.import_archive(&b).unwrap().remove(0);
    let rec_a = store.resolve("app:a").unwrap().unwrap();
    store.layer_dirs(&rec_a).unwrap();
    store.layer_dirs(&rec_b).unwrap();
    // Shared busybox layer + b's own layer.
    assert_eq!(layer_count(&store), 2);
    // 2 manifests + 2 configs + shared base layer + b's layer.
    assert_eq!(blob_count(&store), 6);

    // A second tag, then removing one tag keeps the image.
    let a2 = tmp.path().join("a2.tar");
    busybox_oci_archive(&a2, "app:a2").unwrap();
    store.import_archive(&a2).unwrap();
    assert_eq!(store.resolve("app:a").unwrap().unwrap().references.len(), 2);
    store.remove("app:a2").unwrap();
    assert_eq!(
        store.resolve("app:a").unwrap().unwrap().references,
        vec!["docker.io/library/app:a"]
    );
    assert!(matches!(
        store.remove("app:zzz"),
        Err(ImageError::NotFound(_))
    ));

    // GC with a in use removes b, its layer and blobs, and keeps a's.
    let in_use: HashSet<String> = [img_a.config_digest.clone()].into();
    let report = store.gc(&in_use).unwrap();
    assert_eq!(report.removed_images, vec![img_b.config_digest.clone()]);
    assert_eq!(report.removed_blobs, 3);
    assert_eq!(report.removed_layers, 1);
    assert_eq!(blob_count(&store), 3);
    assert_eq!(store.layer_dirs(&rec_a).unwrap().len(), 1);
    assert_eq!(store.resolve("app:b").unwrap(), None);

    // Removing by ID deletes the image and all its data.
    store.remove(&img_a.config_digest).unwrap();
    assert_store_empty(&store);
}

/// A tar of `dir`'s files (relative paths).
fn tar_dir(dir: &std::path::Path, out: &std::path::Path) {
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

/// A tar with raw (unchecked) names, for entries the tar crate refuses to write.
fn raw_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in files {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// Replaces the only layer of the layout's image by `layer`, fixing digests.
fn rewrite_single_layer(layout: &std::path::Path, layer: &[u8], diff_id: &str, media_type: &str) {
    use capstan_runtime::image::sha256_digest;
    let blobs = layout.join("blobs/sha256");
    let read = |d: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(blobs.join(&d[7..])).unwrap()).unwrap()
    };
    let write = |v: &serde_json::Value| -> (String, usize) {
        let bytes = serde_json::to_vec(v).unwrap();
        let d = sha256_digest(&bytes);
        std::fs::write(blobs.join(&d[7..]), &bytes).unwrap();
        (d, bytes.len())
    };
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mut manifest = read(index["manifests"][0]["digest"].as_str().unwrap());
    let mut config = read(manifest["config"]["digest"].as_str().unwrap());
    let ld = sha256_digest(layer);
    std::fs::write(blobs.join(&ld[7..]), layer).unwrap();
    config["rootfs"]["diff_ids"] = serde_json::json!([diff_id]);
    let (cd, cs) = write(&config);
    manifest["config"]["digest"] = cd.into();
    manifest["config"]["size"] = cs.into();
    manifest["layers"] = serde_json::json!([{
        "mediaType": media_type, "digest": ld, "size": layer.len()
    }]);
    let (md, ms) = write(&manifest);
    index["manifests"][0]["digest"] = md.into();
    index["manifests"][0]["size"] = ms.into();
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}

#[tokio::test]
async fn image_service_trait_lists_statuses_removes_and_collects() {
    use capstan_runtime::cri::{ImageService, LocalImageService};
    let (tmp, store) = store();
    let a = tmp.path().join("a.tar");
    let built = busybox_oci_archive(&a, "svc:a").unwrap();
    store.import_archive(&a).unwrap();
    let svc = LocalImageService::new(store.clone(), Default::default());
    let all = svc.list_images(None).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(svc.list_images(Some("svc:a")).await.unwrap(), all);
    assert_eq!(svc.list_images(Some("svc:zzz")).await.unwrap(), vec![]);
    let status = svc.image_status("svc:a").await.unwrap().unwrap();
    assert_eq!(status.id, built.config_digest);
    assert!(svc.image_fs_usage().await.unwrap() > 1_000_000);
    let kept = svc
        .garbage_collect([built.config_digest.clone()].into())
        .await
        .unwrap();
    assert!(kept.removed_images.is_empty());
    svc.remove_image("svc:a").await.unwrap();
    assert_eq!(svc.image_status("svc:a").await.unwrap(), None);
    assert_store_empty(&store);
}
