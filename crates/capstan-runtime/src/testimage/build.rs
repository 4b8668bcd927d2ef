//! Building test layers, configs, manifests and layouts.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use serde_json::{Value, json};

use super::{APPLETS, BUSYBOX, TestFile, TestImage, TestImageError, TestImageOptions, io};
use crate::image::pull::platform_arch;
use crate::image::sha256_digest;

const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A layer: its uncompressed tar and gzip'd blob.
struct Layer {
    tar: Vec<u8>,
    gz: Vec<u8>,
}

/// A built single-platform image: blobs by digest plus the key digests.
struct Built {
    blobs: BTreeMap<String, Vec<u8>>,
    manifest: Vec<u8>,
    manifest_digest: String,
    config: Vec<u8>,
    config_digest: String,
    layers: Vec<Layer>,
}

fn base_entries(opts: &TestImageOptions) -> Result<Vec<TestFile>, TestImageError> {
    let busybox = fs::read(BUSYBOX).map_err(|_| TestImageError::BusyboxMissing)?;
    let mut v = vec![
        TestFile::Dir {
            path: "/bin".into(),
            mode: 0o755,
        },
        TestFile::executable("/bin/busybox", busybox),
    ];
    for a in APPLETS {
        v.push(TestFile::Symlink {
            path: format!("/bin/{a}"),
            target: "busybox".into(),
        });
    }
    v.push(TestFile::Dir {
        path: "/etc".into(),
        mode: 0o755,
    });
    let defaults = [
        TestFile::file(
            "/etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        TestFile::file("/etc/group", "root:x:0:\nnogroup:x:65534:\n"),
    ];
    for d in defaults {
        if !opts.files.iter().any(|f| f.path() == d.path()) {
            v.push(d);
        }
    }
    v.push(TestFile::Dir {
        path: "/root".into(),
        mode: 0o700,
    });
    v.push(TestFile::Dir {
        path: "/tmp".into(),
        mode: 0o1777,
    });
    for d in ["/proc", "/sys", "/dev", "/var", "/home"] {
        v.push(TestFile::Dir {
            path: d.into(),
            mode: 0o755,
        });
    }
    v.extend(opts.files.iter().cloned());
    Ok(v)
}

/// A deterministic tar (fixed mtime/owner fields) of `entries`.
fn layer_tar(entries: &[TestFile]) -> Result<Vec<u8>, TestImageError> {
    let mut b = tar::Builder::new(Vec::new());
    let err = |e: std::io::Error| TestImageError::Invalid(e.to_string());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        let rel = e.path().trim_start_matches('/');
        match e {
            TestFile::File {
                content,
                mode,
                uid,
                gid,
                ..
            } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_uid(*uid);
                h.set_gid(*gid);
                h.set_size(content.len() as u64);
                b.append_data(&mut h, rel, content.as_slice())
                    .map_err(err)?;
            }
            TestFile::Dir { mode, .. } => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, format!("{rel}/"), std::io::empty())
                    .map_err(err)?;
            }
            TestFile::Symlink { target, .. } | TestFile::Hardlink { target, .. } => {
                let kind = if matches!(e, TestFile::Symlink { .. }) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                };
                h.set_entry_type(kind);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(
                    &mut h,
                    rel,
                    target.trim_start_matches(if kind == tar::EntryType::Link {
                        "/"
                    } else {
                        ""
                    }),
                )
                .map_err(err)?;
            }
            TestFile::Whiteout { path } => {
                let p = Path::new(path.trim_start_matches('/'));
                let name = p
                    .file_name()
                    .ok_or_else(|| TestImageError::Invalid(format!("whiteout of {path:?}")))?;
                let wh = p.with_file_name(format!(".wh.{}", name.to_string_lossy()));
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_data(&mut h, wh, std::io::empty()).map_err(err)?;
            }
            TestFile::Opaque { dir } => {
                let p = Path::new(dir.trim_start_matches('/')).join(".wh..wh..opq");
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).map_err(err)?;
            }
        }
    }
    b.into_inner().map_err(err)
}

fn gzip(data: &[u8]) -> Result<Vec<u8>, TestImageError> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::fast());
    let err = |e: std::io::Error| TestImageError::Invalid(e.to_string());
    enc.write_all(data).map_err(err)?;
    enc.finish().map_err(err)
}

fn to_json(v: &Value) -> Vec<u8> {
    // serde_json of a Value with preserve_order keeps insertion order: stable digests.
    v.to_string().into_bytes()
}

fn build(opts: &TestImageOptions) -> Result<Built, TestImageError> {
    let mut layer_entries = vec![base_entries(opts)?];
    layer_entries.extend(opts.extra_layers.iter().cloned());
    let mut layers = Vec::new();
    for entries in &layer_entries {
        let tar = layer_tar(entries)?;
        let gz = gzip(&tar)?;
        layers.push(Layer { tar, gz });
    }
    let mut env = opts.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    let mut cfg = serde_json::Map::new();
    cfg.insert("Env".into(), json!(env));
    if let Some(e) = &opts.entrypoint {
        cfg.insert("Entrypoint".into(), json!(e));
    }
    if let Some(c) = &opts.cmd {
        cfg.insert("Cmd".into(), json!(c));
    }
    if let Some(w) = &opts.working_dir {
        cfg.insert("WorkingDir".into(), json!(w));
    }
    if let Some(u) = &opts.user {
        cfg.insert("User".into(), json!(u));
    }
    if !opts.labels.is_empty() {
        let labels: serde_json::Map<String, Value> = opts
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        cfg.insert("Labels".into(), Value::Object(labels));
    }
    let arch = opts
        .architecture
        .clone()
        .unwrap_or_else(|| platform_arch().0.to_string());
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256_digest(&l.tar)).collect();
    let config = to_json(&json!({
        "created": "2024-01-01T00:00:00Z",
        "architecture": arch,
        "os": "linux",
        "config": Value::Object(cfg),
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": layers.iter().map(|_| json!({"created": "2024-01-01T00:00:00Z", "created_by": "capstan testimage"})).collect::<Vec<_>>(),
    }));
    let config_digest = sha256_digest(&config);
    let manifest = to_json(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": { "mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config.len() },
        "layers": layers.iter().map(|l| json!({
            "mediaType": MEDIA_LAYER_GZIP, "digest": sha256_digest(&l.gz), "size": l.gz.len()
        })).collect::<Vec<_>>(),
    }));
    let manifest_digest = sha256_digest(&manifest);
    let mut blobs = BTreeMap::new();
    for l in &layers {
        blobs.insert(sha256_digest(&l.gz), l.gz.clone());
    }
    blobs.insert(config_digest.clone(), config.clone());
    blobs.insert(manifest_digest.clone(), manifest.clone());
    Ok(Built {
        blobs,
        manifest,
        manifest_digest,
        config,
        config_digest,
        layers,
    })
}

fn write_layout(
    dir: &Path,
    blobs: &BTreeMap<String, Vec<u8>>,
    top: Value,
) -> Result<(), TestImageError> {
    let bdir = dir.join("blobs/sha256");
    fs::create_dir_all(&bdir).map_err(io(&bdir))?;
    for (d, data) in blobs {
        let p = bdir.join(d.trim_start_matches("sha256:"));
        fs::write(&p, data).map_err(io(&p))?;
    }
    let p = dir.join("oci-layout");
    fs::write(&p, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io(&p))?;
    let index = json!({ "schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [top] });
    let p = dir.join("index.json");
    fs::write(&p, to_json(&index)).map_err(io(&p))
}

/// Writes an OCI image layout of a busybox image to `dir`, named `reference` in index.json.
pub fn busybox_oci_layout(
    dir: &Path,
    reference: &str,
    opts: &TestImageOptions,
) -> Result<TestImage, TestImageError> {
    let b = build(opts)?;
    let top = json!({
        "mediaType": MEDIA_MANIFEST, "digest": b.manifest_digest, "size": b.manifest.len(),
        "annotations": { REF_NAME: reference },
    });
    write_layout(dir, &b.blobs, top)?;
    Ok(image_of(reference, &b, None))
}

fn image_of(reference: &str, b: &Built, index_digest: Option<String>) -> TestImage {
    TestImage {
        reference: reference.to_string(),
        manifest_digest: b.manifest_digest.clone(),
        config_digest: b.config_digest.clone(),
        index_digest,
        layer_digests: b.layers.iter().map(|l| sha256_digest(&l.gz)).collect(),
    }
}

/// An OCI layout whose index.json names an image index with one manifest per architecture
/// (`amd64`, `arm64`, …); the returned digests are those of this machine's platform.
pub fn busybox_multiarch_oci_layout(
    dir: &Path,
    reference: &str,
    archs: &[&str],
    opts: &TestImageOptions,
) -> Result<TestImage, TestImageError> {
    let (here, _) = platform_arch();
    let mut blobs = BTreeMap::new();
    let mut entries = Vec::new();
    let mut mine = None;
    for arch in archs {
        let b = build(&TestImageOptions {
            architecture: Some(arch.to_string()),
            ..opts.clone()
        })?;
        let mut platform = json!({ "architecture": arch, "os": "linux" });
        if *arch == "arm64" {
            platform["variant"] = json!("v8");
        }
        entries.push(json!({
            "mediaType": MEDIA_MANIFEST, "digest": b.manifest_digest, "size": b.manifest.len(),
            "platform": platform,
        }));
        blobs.extend(b.blobs.iter().map(|(k, v)| (k.clone(), v.clone())));
        if *arch == here {
            mine = Some(b);
        }
    }
    let index =
        to_json(&json!({ "schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": entries }));
    let index_digest = sha256_digest(&index);
    blobs.insert(index_digest.clone(), index.clone());
    let top = json!({
        "mediaType": MEDIA_INDEX, "digest": index_digest, "size": index.len(),
        "annotations": { REF_NAME: reference },
    });
    write_layout(dir, &blobs, top)?;
    let mine = mine.ok_or_else(|| TestImageError::Invalid(format!("no {here} in {archs:?}")))?;
    Ok(image_of(reference, &mine, Some(index_digest)))
}

/// A deterministic tar of `files` (path in archive, content).
fn write_tar(path: &Path, files: &[(String, Vec<u8>)]) -> Result<(), TestImageError> {
    let mut b = tar::Builder::new(Vec::new());
    let err = |e: std::io::Error| TestImageError::Invalid(e.to_string());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data.as_slice()).map_err(err)?;
    }
    let bytes = b.into_inner().map_err(err)?;
    fs::write(path, bytes).map_err(io(path))
}

/// An OCI archive (a tar of the layout) of a busybox image named `reference`.
pub fn busybox_oci_archive(path: &Path, reference: &str) -> Result<TestImage, TestImageError> {
    busybox_oci_archive_with(path, reference, &TestImageOptions::default())
}

pub fn busybox_oci_archive_with(
    path: &Path,
    reference: &str,
    opts: &TestImageOptions,
) -> Result<TestImage, TestImageError> {
    let b = build(opts)?;
    let top = json!({
        "mediaType": MEDIA_MANIFEST, "digest": b.manifest_digest, "size": b.manifest.len(),
        "annotations": { REF_NAME: reference },
    });
    let index =
        to_json(&json!({ "schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [top] }));
    let mut files = vec![
        (
            "oci-layout".to_string(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".to_string(), index),
    ];
    for (d, data) in &b.blobs {
        files.push((
            format!("blobs/sha256/{}", d.trim_start_matches("sha256:")),
            data.clone(),
        ));
    }
    write_tar(path, &files)?;
    Ok(image_of(reference, &b, None))
}

/// A `docker save`-style archive (manifest.json, `<id>.json`, uncompressed `<hex>/layer.tar`).
pub fn busybox_docker_archive(path: &Path, reference: &str) -> Result<TestImage, TestImageError> {
    busybox_docker_archive_with(path, reference, &TestImageOptions::default())
}

pub fn busybox_docker_archive_with(
    path: &Path,
    reference: &str,
    opts: &TestImageOptions,
) -> Result<TestImage, TestImageError> {
    let b = build(opts)?;
    let config_name = format!("{}.json", b.config_digest.trim_start_matches("sha256:"));
    let mut files = Vec::new();
    let mut layer_names = Vec::new();
    for l in &b.layers {
        let name = format!(
            "{}/layer.tar",
            sha256_digest(&l.tar).trim_start_matches("sha256:")
        );
        layer_names.push(name.clone());
        files.push((name, l.tar.clone()));
    }
    let manifest = to_json(
        &json!([{ "Config": config_name, "RepoTags": [reference], "Layers": layer_names }]),
    );
    files.insert(0, ("manifest.json".to_string(), manifest));
    files.insert(1, (config_name, b.config.clone()));
    write_tar(path, &files)?;
    Ok(image_of(reference, &b, None))
}
