//! Importing image archives: a tar (optionally gzip'd) of an OCI image layout, or of
//! `docker save` output (`manifest.json` + layer tars).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use serde::{Deserialize, Serialize};

use super::store::{
    ImageRecord, ImageStore, MEDIA_DOCKER_LIST, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST, NewRef,
    REF_NAME, Staging,
};
use super::unpack::{Compression, decompressed, safe_relative, sniff};
use super::{ImageError, digest::Sha256Writer, normalize_reference};

const CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";
pub(crate) const MEDIA_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub(crate) const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub(crate) const MEDIA_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub(crate) const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// The minimal OCI manifest written for docker archives (stable field order: stable digest).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NewManifest {
    schema_version: u32,
    media_type: &'static str,
    config: NewDescriptor,
    layers: Vec<NewDescriptor>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NewDescriptor {
    media_type: &'static str,
    digest: String,
    size: u64,
}

impl ImageStore {
    /// Imports every image of an OCI or docker archive at `path`. All or nothing: on any error
    /// the store is unchanged.
    pub fn import_archive(&self, path: &Path) -> Result<Vec<ImageRecord>, ImageError> {
        let started = std::time::Instant::now();
        let mut staging = self.staging()?;
        let tree = staging.dir.join("archive");
        extract(path, &tree)?;
        let refs = if tree.join("manifest.json").is_file() {
            import_docker(&mut staging, path, &tree)?
        } else if tree.join("index.json").is_file() {
            import_oci(&mut staging, path, &tree)?
        } else {
            return Err(invalid(
                path,
                "neither index.json (OCI layout) nor manifest.json (docker save) found",
            ));
        };
        self.commit(&staging, &refs)?;
        let digests: Vec<&str> = refs.iter().map(|r| r.manifest_digest.as_str()).collect();
        let records: Vec<ImageRecord> = self
            .list()?
            .into_iter()
            .filter(|r| digests.contains(&r.manifest_digest.as_str()))
            .collect();
        tracing::info!(archive = %path.display(), images = records.len(), elapsed_ms = started.elapsed().as_millis() as u64, "imported archive");
        Ok(records)
    }
}

fn invalid(path: &Path, reason: impl Into<String>) -> ImageError {
    ImageError::InvalidArchive {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Unpacks the archive's regular files and directories into `tree`, refusing `..` paths.
fn extract(path: &Path, tree: &Path) -> Result<(), ImageError> {
    fs::create_dir_all(tree).map_err(ImageError::io(tree))?;
    let file = fs::File::open(path).map_err(ImageError::io(path))?;
    let reader = decompressed(file, &path.display().to_string())?;
    let mut archive = tar::Archive::new(reader);
    let bad = |e: std::io::Error| invalid(path, e.to_string());
    let mut count = 0usize;
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let raw = entry.path().map_err(bad)?.into_owned();
        let rel = safe_relative(&raw)
            .ok_or_else(|| invalid(path, format!("entry {} escapes the archive", raw.display())))?;
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Directory | tar::EntryType::Symlink => {}
            _ => continue,
        }
        if rel.as_os_str().is_empty() {
            continue;
        }
        entry.unpack_in(tree).map_err(bad)?;
        count += 1;
    }
    if count == 0 {
        return Err(invalid(path, "empty or not a tar archive"));
    }
    Ok(())
}

/// Resolves `rel` inside `tree`, following symlinks but never out of it.
fn file_in(tree: &Path, archive: &Path, rel: &str) -> Result<PathBuf, ImageError> {
    let safe = safe_relative(Path::new(rel))
        .ok_or_else(|| invalid(archive, format!("path {rel:?} escapes the archive")))?;
    let p = tree.join(safe);
    let real = fs::canonicalize(&p).map_err(|_| invalid(archive, format!("{rel} is missing")))?;
    let root = fs::canonicalize(tree).map_err(ImageError::io(tree))?;
    if !real.starts_with(&root) || !real.is_file() {
        return Err(invalid(
            archive,
            format!("{rel} is not a file inside the archive"),
        ));
    }
    Ok(real)
}

/// Hashes a file of the extracted tree and moves it into staging as a blob.
fn stage_file(
    staging: &mut Staging,
    archive: &Path,
    tree: &Path,
    rel: &str,
    expected: Option<&str>,
) -> Result<(String, u64), ImageError> {
    let p = file_in(tree, archive, rel)?;
    let mut f = fs::File::open(&p).map_err(ImageError::io(&p))?;
    let mut w = Sha256Writer::new(std::io::sink());
    std::io::copy(&mut f, &mut w).map_err(ImageError::io(&p))?;
    let (digest, size, _) = w.finish();
    if staging.has(&digest) {
        return Ok((digest, size));
    }
    // Link rather than move: an archive may list one file for several images.
    let link = staging.dir.join("incoming.link");
    fs::hard_link(&p, &link).map_err(ImageError::io(&link))?;
    staging.adopt(
        &format!("{rel} in {}", archive.display()),
        expected,
        &link,
        digest.clone(),
    )?;
    Ok((digest, size))
}

fn parse_json<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|source| ImageError::InvalidJson {
        what: what.to_string(),
        source,
    })
}

fn import_docker(
    staging: &mut Staging,
    archive: &Path,
    tree: &Path,
) -> Result<Vec<NewRef>, ImageError> {
    let mf = file_in(tree, archive, "manifest.json")?;
    let bytes = fs::read(&mf).map_err(ImageError::io(&mf))?;
    let entries: Vec<DockerManifestEntry> = parse_json("docker manifest.json", &bytes)?;
    if entries.is_empty() {
        return Err(invalid(archive, "manifest.json lists no images"));
    }
    let mut refs = Vec::new();
    for e in entries {
        let (config_digest, config_size) = stage_file(staging, archive, tree, &e.config, None)?;
        let config: ImageConfiguration = parse_json(
            &format!("config {}", e.config),
            &staging.read(&config_digest)?,
        )?;
        if config.rootfs().diff_ids().len() != e.layers.len() {
            return Err(invalid(
                archive,
                format!(
                    "config {} lists {} diff IDs for {} layers",
                    e.config,
                    config.rootfs().diff_ids().len(),
                    e.layers.len()
                ),
            ));
        }
        let mut layers = Vec::new();
        for l in &e.layers {
            let p = file_in(tree, archive, l)?;
            let head = read_head(&p)?;
            let media_type = match sniff(&head) {
                Compression::Gzip => MEDIA_LAYER_GZIP,
                Compression::None => MEDIA_LAYER_TAR,
                Compression::Zstd => MEDIA_LAYER_ZSTD,
            };
            let (digest, size) = stage_file(staging, archive, tree, l, None)?;
            layers.push(NewDescriptor {
                media_type,
                digest,
                size,
            });
        }
        let manifest = NewManifest {
            schema_version: 2,
            media_type: MEDIA_OCI_MANIFEST,
            config: NewDescriptor {
                media_type: MEDIA_OCI_CONFIG,
                digest: config_digest,
                size: config_size,
            },
            layers,
        };
        let bytes = serde_json::to_vec(&manifest).map_err(|source| ImageError::InvalidJson {
            what: "new manifest".into(),
            source,
        })?;
        let digest = staging.put_bytes("manifest", None, &bytes)?;
        let tags = e.repo_tags.unwrap_or_default();
        if tags.is_empty() {
            refs.push(new_ref(
                None,
                &digest,
                MEDIA_OCI_MANIFEST,
                bytes.len() as u64,
            ));
        }
        for t in tags {
            let name = normalize_reference(&t)?;
            refs.push(new_ref(
                Some(name),
                &digest,
                MEDIA_OCI_MANIFEST,
                bytes.len() as u64,
            ));
        }
    }
    Ok(refs)
}

fn read_head(p: &Path) -> Result<Vec<u8>, ImageError> {
    use std::io::Read;
    let mut f = fs::File::open(p).map_err(ImageError::io(p))?;
    let mut head = vec![0u8; 4];
    let n = f.read(&mut head).map_err(ImageError::io(p))?;
    head.truncate(n);
    Ok(head)
}

fn new_ref(reference: Option<String>, digest: &str, media_type: &str, size: u64) -> NewRef {
    NewRef {
        reference,
        manifest_digest: digest.to_string(),
        media_type: media_type.to_string(),
        size,
    }
}

/// The reference an OCI index entry names: containerd's full-name annotation, else
/// `ref.name` (a full reference, normalized docker-style).
fn entry_name(
    annotations: Option<&std::collections::HashMap<String, String>>,
) -> Result<Option<String>, ImageError> {
    let Some(a) = annotations else {
        return Ok(None);
    };
    match a.get(CONTAINERD_IMAGE_NAME).or_else(|| a.get(REF_NAME)) {
        Some(n) => Ok(Some(normalize_reference(n)?)),
        None => Ok(None),
    }
}

fn import_oci(
    staging: &mut Staging,
    archive: &Path,
    tree: &Path,
) -> Result<Vec<NewRef>, ImageError> {
    let ip = file_in(tree, archive, "index.json")?;
    let index: ImageIndex = parse_json("index.json", &fs::read(&ip).map_err(ImageError::io(&ip))?)?;
    let mut refs = Vec::new();
    let mut by_name: BTreeMap<Option<String>, Vec<NewRef>> = BTreeMap::new();
    for d in index.manifests() {
        let name = entry_name(d.annotations().as_ref())?;
        let digest = d.digest().to_string();
        let media = d.media_type().to_string();
        if media == MEDIA_OCI_INDEX || media == MEDIA_DOCKER_LIST {
            let (_, _) = stage_blob(staging, archive, tree, &digest)?;
            let nested: ImageIndex =
                parse_json(&format!("index {digest}"), &staging.read(&digest)?)?;
            let chosen = super::pull::choose_platform(nested.manifests()).ok_or_else(|| {
                ImageError::NoMatchingPlatform {
                    reference: name.clone().unwrap_or_else(|| digest.clone()),
                    platform: super::pull::platform_string(),
                }
            })?;
            let m = stage_manifest(staging, archive, tree, chosen.digest().as_ref())?;
            by_name.entry(name).or_default().push(new_ref(
                None,
                &m.0,
                chosen.media_type().as_ref(),
                m.1,
            ));
            continue;
        }
        if let Some(p) = d.platform()
            && !super::pull::platform_matches(p)
        {
            continue;
        }
        let m = stage_manifest(staging, archive, tree, &digest)?;
        by_name
            .entry(name)
            .or_default()
            .push(new_ref(None, &m.0, &media, m.1));
    }
    for (name, mut list) in by_name {
        for r in list.iter_mut() {
            r.reference = name.clone();
        }
        // One image per name: the first (platform-matching) manifest wins.
        list.truncate(if name.is_some() { 1 } else { list.len() });
        refs.extend(list);
    }
    if refs.is_empty() {
        return Err(invalid(
            archive,
            "index.json names no image for this platform",
        ));
    }
    Ok(refs)
}

fn stage_blob(
    staging: &mut Staging,
    archive: &Path,
    tree: &Path,
    digest: &str,
) -> Result<(String, u64), ImageError> {
    let hex = super::digest::digest_hex(digest)?;
    stage_file(
        staging,
        archive,
        tree,
        &format!("blobs/sha256/{hex}"),
        Some(digest),
    )
}

/// Stages a manifest with its config and layers; returns its digest and size.
fn stage_manifest(
    staging: &mut Staging,
    archive: &Path,
    tree: &Path,
    digest: &str,
) -> Result<(String, u64), ImageError> {
    let (_, size) = stage_blob(staging, archive, tree, digest)?;
    let m: ImageManifest = parse_json(&format!("manifest {digest}"), &staging.read(digest)?)?;
    stage_blob(staging, archive, tree, m.config().digest().as_ref())?;
    for l in m.layers() {
        stage_blob(staging, archive, tree, l.digest().as_ref())?;
    }
    Ok((digest.to_string(), size))
}
