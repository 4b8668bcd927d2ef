//! The content-addressed store: OCI layout on disk, the ref index, staging and commit, lookup,
//! removal and garbage collection.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use oci_spec::image::{ImageConfiguration, ImageManifest};
use serde::{Deserialize, Serialize};

use super::ImageError;
use super::digest::{Sha256Writer, digest_hex};
use super::reference::{canonical, parse_reference};

/// OCI annotation naming a reference in `index.json`.
pub(crate) const REF_NAME: &str = "org.opencontainers.image.ref.name";
pub(crate) const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const MEDIA_DOCKER_MANIFEST: &str =
    "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const MEDIA_DOCKER_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";

static STAGING_SEQ: AtomicU64 = AtomicU64::new(0);

/// One image in the store: a platform manifest, its config (whose digest is the image ID) and
/// the references that name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRecord {
    /// The config digest (`sha256:…`), Docker's image ID.
    pub id: String,
    /// Canonical references: `registry/repo:tag` and `registry/repo@sha256:…` (repo digests).
    pub references: Vec<String>,
    pub manifest_digest: String,
    /// Bytes of config and layers as stored (compressed).
    pub size: u64,
    pub created: Option<jiff::Timestamp>,
}

/// What a garbage collection removed.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GcReport {
    pub removed_images: Vec<String>,
    pub removed_blobs: usize,
    pub removed_layers: usize,
}

/// An entry of `index.json` (an OCI descriptor).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IndexEntry {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl IndexEntry {
    fn ref_name(&self) -> Option<&str> {
        self.annotations.get(REF_NAME).map(String::as_str)
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoreIndex {
    schema_version: u32,
    media_type: String,
    manifests: Vec<IndexEntry>,
}

/// A manifest to record in the index on commit, optionally under a reference.
#[derive(Debug, Clone)]
pub(crate) struct NewRef {
    pub reference: Option<String>,
    pub manifest_digest: String,
    pub media_type: String,
    pub size: u64,
}

/// The node's image store rooted at `<data-dir>/images`. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root` and removes staging leftovers of dead
    /// processes.
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        for d in ["blobs/sha256", "layers", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(ImageError::io(&p))?;
        }
        let layout = root.join("oci-layout");
        if !layout.exists() {
            write_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let store = ImageStore {
            root: root.to_path_buf(),
        };
        if !store.index_path().exists() {
            store.write_index(&[])?;
        }
        store.tidy_staging()?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    pub(crate) fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    pub(crate) fn blob_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.root.join("blobs/sha256").join(digest_hex(digest)?))
    }

    pub(crate) fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).map(|p| p.exists()).unwrap_or(false)
    }

    pub(crate) fn read_blob(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let p = self.blob_path(digest)?;
        fs::read(&p).map_err(ImageError::io(&p))
    }

    /// Removes staging directories whose owning process is gone.
    fn tidy_staging(&self) -> Result<(), ImageError> {
        let tmp = self.root.join("tmp");
        let me = std::process::id();
        for e in fs::read_dir(&tmp).map_err(ImageError::io(&tmp))? {
            let e = e.map_err(ImageError::io(&tmp))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.split('.').next().and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|p| p == me || Path::new(&format!("/proc/{p}")).exists());
            if !alive {
                tracing::info!(path = %e.path().display(), "removing staging leftovers");
                remove_any(&e.path())?;
            }
        }
        Ok(())
    }

    /// A fresh staging area under `tmp/`, removed on drop.
    pub(crate) fn staging(&self) -> Result<Staging, ImageError> {
        let seq = STAGING_SEQ.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = self
            .root
            .join("tmp")
            .join(format!("{}.{seq}.{nanos}", std::process::id()));
        fs::create_dir_all(dir.join("blobs")).map_err(ImageError::io(&dir))?;
        Ok(Staging {
            dir,
            blobs: BTreeSet::new(),
        })
    }

    /// Takes the store-wide lock for index and blob-set changes.
    fn lock(&self) -> Result<File, ImageError> {
        let p = self.root.join("lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(ImageError::io(&p))?;
        f.lock().map_err(ImageError::io(&p))?;
        Ok(f)
    }

    fn read_index(&self) -> Result<Vec<IndexEntry>, ImageError> {
        let p = self.index_path();
        let bytes = fs::read(&p).map_err(ImageError::io(&p))?;
        let idx: StoreIndex =
            serde_json::from_slice(&bytes).map_err(|source| ImageError::InvalidJson {
                what: p.display().to_string(),
                source,
            })?;
        Ok(idx.manifests)
    }

    fn write_index(&self, manifests: &[IndexEntry]) -> Result<(), ImageError> {
        let idx = StoreIndex {
            schema_version: 2,
            media_type: MEDIA_OCI_INDEX.to_string(),
            manifests: manifests.to_vec(),
        };
        let bytes = serde_json::to_vec_pretty(&idx).map_err(|source| ImageError::InvalidJson {
            what: "index.json".into(),
            source,
        })?;
        write_atomic(&self.index_path(), &bytes)
    }

    /// Moves verified staged blobs into place and records `refs` in the index (a reference
    /// already naming another image moves to the new one).
    pub(crate) fn commit(&self, staging: &Staging, refs: &[NewRef]) -> Result<(), ImageError> {
        let _lock = self.lock()?;
        for digest in &staging.blobs {
            let dst = self.blob_path(digest)?;
            if dst.exists() {
                continue;
            }
            let src = staging.blob_path(digest)?;
            fs::rename(&src, &dst).map_err(ImageError::io(&dst))?;
        }
        let mut index = self.read_index()?;
        for r in refs {
            self.check_complete(&r.manifest_digest)?;
            let mut annotations = BTreeMap::new();
            match &r.reference {
                Some(name) => {
                    index.retain(|e| e.ref_name() != Some(name.as_str()));
                    annotations.insert(REF_NAME.to_string(), name.clone());
                }
                None if index.iter().any(|e| e.digest == r.manifest_digest) => continue,
                None => {}
            }
            index.push(IndexEntry {
                media_type: r.media_type.clone(),
                digest: r.manifest_digest.clone(),
                size: r.size,
                annotations,
            });
        }
        self.write_index(&index)?;
        // An image that lost its last reference to this commit is garbage now.
        self.sweep_locked(&index)?;
        Ok(())
    }

    /// Fails unless the manifest, its config and all its layers are in the store (a blob an
    /// import skipped as present may have been collected meanwhile).
    fn check_complete(&self, manifest_digest: &str) -> Result<(), ImageError> {
        let m = self.manifest(manifest_digest)?;
        let config = m.config().digest().to_string();
        let layers = m.layers().iter().map(|l| l.digest().to_string());
        for d in std::iter::once(config).chain(layers) {
            if !self.has_blob(&d) {
                return Err(ImageError::InvalidImage(format!(
                    "blob {d} of manifest {manifest_digest} missing at commit"
                )));
            }
        }
        Ok(())
    }

    pub(crate) fn manifest(&self, manifest_digest: &str) -> Result<ImageManifest, ImageError> {
        let bytes = self.read_blob(manifest_digest)?;
        serde_json::from_slice(&bytes).map_err(|source| ImageError::InvalidJson {
            what: format!("manifest {manifest_digest}"),
            source,
        })
    }

    /// Every image in the store, in index order.
    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        let index = self.read_index()?;
        let mut by_manifest: Vec<(String, Vec<String>)> = Vec::new();
        for e in &index {
            let pos = match by_manifest.iter().position(|(d, _)| *d == e.digest) {
                Some(p) => p,
                None => {
                    by_manifest.push((e.digest.clone(), Vec::new()));
                    by_manifest.len() - 1
                }
            };
            if let Some(name) = e.ref_name() {
                by_manifest[pos].1.push(name.to_string());
            }
        }
        let mut out = Vec::new();
        for (digest, references) in by_manifest {
            match self.record(&digest, references) {
                Ok(r) => out.push(r),
                Err(e) => {
                    tracing::warn!(manifest = %digest, error = %e, "skipping unreadable image")
                }
            }
        }
        Ok(out)
    }

    fn record(
        &self,
        manifest_digest: &str,
        references: Vec<String>,
    ) -> Result<ImageRecord, ImageError> {
        let m = self.manifest(manifest_digest)?;
        let config_digest = m.config().digest().to_string();
        let size = m.config().size() + m.layers().iter().map(|l| l.size()).sum::<u64>();
        let created = self
            .config_by_digest(&config_digest)
            .ok()
            .and_then(|c| c.created().clone())
            .and_then(|c| c.parse::<jiff::Timestamp>().ok());
        Ok(ImageRecord {
            id: config_digest,
            references,
            manifest_digest: manifest_digest.to_string(),
            size,
            created,
        })
    }

    /// Finds an image by reference (`name:tag`, `name@digest`, docker-style short names) or by
    /// image ID (`sha256:…`, or a hex prefix of at least 12 characters).
    pub fn resolve(&self, reference: &str) -> Result<Option<ImageRecord>, ImageError> {
        let reference = reference.trim();
        if reference.is_empty() {
            return Err(ImageError::InvalidReference {
                reference: reference.into(),
                reason: "empty".into(),
            });
        }
        let images = self.list()?;
        if let Some(found) = find_by_id(&images, reference)? {
            return Ok(Some(found));
        }
        let parsed = parse_reference(reference)?;
        let want = canonical(&parsed);
        if let Some(img) = images.iter().find(|i| i.references.contains(&want)) {
            return Ok(Some(img.clone()));
        }
        // `repo@digest` also names an image pulled by tag whose manifest has that digest.
        if let Some(d) = parsed.digest() {
            let repo = format!("{}/{}", parsed.registry(), parsed.repository());
            let hit = images.iter().find(|i| {
                i.manifest_digest == d
                    && i.references.iter().any(|r| {
                        r.starts_with(&format!("{repo}:")) || r.starts_with(&format!("{repo}@"))
                    })
            });
            return Ok(hit.cloned());
        }
        Ok(None)
    }

    fn config_by_digest(&self, digest: &str) -> Result<ImageConfiguration, ImageError> {
        let bytes = self.read_blob(digest)?;
        serde_json::from_slice(&bytes).map_err(|source| ImageError::InvalidJson {
            what: format!("image config {digest}"),
            source,
        })
    }

    /// The image's configuration (entrypoint, cmd, env, user, working dir, diff IDs).
    pub fn config(&self, img: &ImageRecord) -> Result<ImageConfiguration, ImageError> {
        self.config_by_digest(&img.id)
    }

    /// Unpacked layer directories of `img`, bottom layer first, unpacking any missing ones.
    pub fn layer_dirs(&self, img: &ImageRecord) -> Result<Vec<PathBuf>, ImageError> {
        let m = self.manifest(&img.manifest_digest)?;
        let cfg = self.config(img)?;
        let diff_ids = cfg.rootfs().diff_ids();
        if diff_ids.len() != m.layers().len() {
            return Err(ImageError::InvalidImage(format!(
                "image {} has {} layers but {} diff IDs",
                img.id,
                m.layers().len(),
                diff_ids.len()
            )));
        }
        let mut out = Vec::with_capacity(diff_ids.len());
        for (layer, diff_id) in m.layers().iter().zip(diff_ids) {
            out.push(self.ensure_layer(layer.digest().as_ref(), diff_id)?);
        }
        Ok(out)
    }

    fn ensure_layer(&self, blob_digest: &str, diff_id: &str) -> Result<PathBuf, ImageError> {
        let dir = self.layers_dir().join(digest_hex(diff_id)?);
        if dir.exists() {
            return Ok(dir);
        }
        let staging = self.staging()?;
        let tmp = staging.dir.join("layer");
        let blob = self.blob_path(blob_digest)?;
        let started = std::time::Instant::now();
        super::unpack::unpack_layer(&blob, diff_id, &tmp)?;
        match fs::rename(&tmp, &dir) {
            Ok(()) => {}
            // Another unpacker won the race; its result is identical.
            Err(_) if dir.exists() => {}
            Err(e) => return Err(ImageError::io(&dir)(e)),
        }
        tracing::info!(layer = %diff_id, elapsed_ms = started.elapsed().as_millis() as u64, "unpacked layer");
        Ok(dir)
    }

    /// Removes a reference; given an image ID (or manifest digest) removes every reference of
    /// that image. Unreferenced blobs and layers go with it. Returns the affected image.
    pub fn remove(&self, reference: &str) -> Result<ImageRecord, ImageError> {
        let img = self
            .resolve(reference)?
            .ok_or_else(|| ImageError::NotFound(reference.to_string()))?;
        let by_id = find_by_id(std::slice::from_ref(&img), reference.trim())?.is_some();
        let name = if by_id {
            None
        } else {
            Some(canonical(&parse_reference(reference)?))
        };
        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        let named_here = |e: &IndexEntry| name.as_deref().is_some_and(|n| e.ref_name() == Some(n));
        let before = index.len();
        if name.is_some() && index.iter().any(named_here) {
            index.retain(|e| !named_here(e));
        } else {
            index.retain(|e| e.digest != img.manifest_digest);
        }
        if index.len() != before {
            self.write_index(&index)?;
        }
        self.sweep_locked(&index)?;
        Ok(img)
    }

    /// Removes every image none of whose ID, manifest digest or references is in `in_use`,
    /// then all blobs and unpacked layers no remaining image needs.
    pub fn gc(&self, in_use: &HashSet<String>) -> Result<GcReport, ImageError> {
        let images = self.list()?;
        let keep = |i: &ImageRecord| {
            in_use.contains(&i.id)
                || in_use.contains(&i.manifest_digest)
                || i.references.iter().any(|r| in_use.contains(r))
        };
        let doomed: HashSet<String> = images
            .iter()
            .filter(|i| !keep(i))
            .map(|i| i.manifest_digest.clone())
            .collect();
        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        index.retain(|e| !doomed.contains(&e.digest));
        self.write_index(&index)?;
        let (removed_blobs, removed_layers) = self.sweep_locked(&index)?;
        Ok(GcReport {
            removed_images: images
                .into_iter()
                .filter(|i| doomed.contains(&i.manifest_digest))
                .map(|i| i.id)
                .collect(),
            removed_blobs,
            removed_layers,
        })
    }

    /// Bytes used by blobs and unpacked layers (symlinks not followed).
    pub fn disk_usage(&self) -> Result<u64, ImageError> {
        fn walk(p: &Path) -> Result<u64, ImageError> {
            let meta = fs::symlink_metadata(p).map_err(ImageError::io(p))?;
            if !meta.is_dir() {
                return Ok(meta.len());
            }
            let mut n = 0;
            for e in fs::read_dir(p).map_err(ImageError::io(p))? {
                n += walk(&e.map_err(ImageError::io(p))?.path())?;
            }
            Ok(n)
        }
        Ok(walk(&self.root.join("blobs"))? + walk(&self.layers_dir())?)
    }

    /// Deletes blobs and layer directories not reachable from `index`. Caller holds the lock.
    fn sweep_locked(&self, index: &[IndexEntry]) -> Result<(usize, usize), ImageError> {
        let mut blobs = HashSet::new();
        let mut layers = HashSet::new();
        for e in index {
            blobs.insert(digest_hex(&e.digest)?.to_string());
            let m = self.manifest(&e.digest)?;
            let cfg_digest = m.config().digest().to_string();
            blobs.insert(digest_hex(&cfg_digest)?.to_string());
            for l in m.layers() {
                blobs.insert(digest_hex(l.digest().as_ref())?.to_string());
            }
            if let Ok(cfg) = self.config_by_digest(&cfg_digest) {
                for d in cfg.rootfs().diff_ids() {
                    layers.insert(digest_hex(d)?.to_string());
                }
            }
        }
        let removed_blobs = remove_unlisted(&self.root.join("blobs/sha256"), &blobs)?;
        let removed_layers = remove_unlisted(&self.layers_dir(), &layers)?;
        Ok((removed_blobs, removed_layers))
    }
}

fn find_by_id(images: &[ImageRecord], reference: &str) -> Result<Option<ImageRecord>, ImageError> {
    if let Some(hex) = reference.strip_prefix("sha256:")
        && hex.len() == 64
    {
        return Ok(images
            .iter()
            .find(|i| i.id == reference || i.manifest_digest == reference)
            .cloned());
    }
    let is_hex = reference
        .bytes()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !is_hex || reference.len() < 12 || reference.len() > 64 {
        return Ok(None);
    }
    let hits: Vec<&ImageRecord> = images
        .iter()
        .filter(|i| {
            i.id.strip_prefix("sha256:")
                .is_some_and(|h| h.starts_with(reference))
        })
        .collect();
    let ids: HashSet<&str> = hits.iter().map(|i| i.id.as_str()).collect();
    match ids.len() {
        0 => Ok(None),
        1 => Ok(hits.first().map(|i| (*i).clone())),
        count => Err(ImageError::Ambiguous {
            reference: reference.into(),
            count,
        }),
    }
}

fn remove_unlisted(dir: &Path, keep: &HashSet<String>) -> Result<usize, ImageError> {
    let mut n = 0;
    for e in fs::read_dir(dir).map_err(ImageError::io(dir))? {
        let e = e.map_err(ImageError::io(dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !keep.contains(&name) {
            remove_any(&e.path())?;
            n += 1;
        }
    }
    Ok(n)
}

/// Removes a file or a directory tree, first clearing read-only modes unpacked layers may have.
pub(crate) fn remove_any(p: &Path) -> Result<(), ImageError> {
    let meta = fs::symlink_metadata(p).map_err(ImageError::io(p))?;
    let r = if meta.is_dir() {
        fs::remove_dir_all(p)
    } else {
        fs::remove_file(p)
    };
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ImageError::io(p)(e)),
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = File::create(&tmp).map_err(ImageError::io(&tmp))?;
    f.write_all(bytes).map_err(ImageError::io(&tmp))?;
    f.sync_all().map_err(ImageError::io(&tmp))?;
    fs::rename(&tmp, path).map_err(ImageError::io(path))
}

/// A staging area for one import, pull or unpack; removed when dropped.
pub(crate) struct Staging {
    pub dir: PathBuf,
    blobs: BTreeSet<String>,
}

impl Staging {
    fn blob_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.dir.join("blobs").join(digest_hex(digest)?))
    }

    /// Copies `reader` into the staging area, verifying it against `expected` if given; returns
    /// the digest and size.
    pub fn put_reader(
        &mut self,
        what: &str,
        expected: Option<&str>,
        mut reader: impl Read,
    ) -> Result<(String, u64), ImageError> {
        let tmp = self.dir.join(format!("incoming.{}", self.blobs.len()));
        let f = File::create(&tmp).map_err(ImageError::io(&tmp))?;
        let mut w = Sha256Writer::new(std::io::BufWriter::new(f));
        std::io::copy(&mut reader, &mut w).map_err(ImageError::io(&tmp))?;
        let (digest, size, mut inner) = w.finish();
        inner.flush().map_err(ImageError::io(&tmp))?;
        drop(inner);
        self.adopt(what, expected, &tmp, digest.clone())?;
        Ok((digest, size))
    }

    pub fn put_bytes(
        &mut self,
        what: &str,
        expected: Option<&str>,
        bytes: &[u8],
    ) -> Result<String, ImageError> {
        Ok(self.put_reader(what, expected, bytes)?.0)
    }

    /// Takes a file already inside the staging dir whose digest was computed as `actual`.
    pub fn adopt(
        &mut self,
        what: &str,
        expected: Option<&str>,
        file: &Path,
        actual: String,
    ) -> Result<(), ImageError> {
        if let Some(want) = expected
            && want != actual
        {
            return Err(ImageError::DigestMismatch {
                what: what.to_string(),
                expected: want.to_string(),
                actual,
            });
        }
        let dst = self.blob_path(&actual)?;
        if dst.exists() {
            fs::remove_file(file).map_err(ImageError::io(file))?;
        } else {
            fs::rename(file, &dst).map_err(ImageError::io(&dst))?;
        }
        self.blobs.insert(actual);
        Ok(())
    }

    /// Records a blob the store already holds (nothing to move at commit).
    pub fn has(&self, digest: &str) -> bool {
        self.blobs.contains(digest)
    }

    pub fn read(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let p = self.blob_path(digest)?;
        fs::read(&p).map_err(ImageError::io(&p))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = remove_any(&self.dir) {
            tracing::warn!(error = %e, "removing staging dir");
        }
    }
}
