//! Unpacking a layer blob (tar, tar+gzip, tar+zstd) into a directory in overlayfs form: OCI whiteouts
//! become 0/0 character devices, opaque markers become `trusted.overlay.opaque=y`.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use sha2::{Digest, Sha256};

use super::ImageError;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// The compression of a layer stream, from its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

pub(crate) fn sniff(head: &[u8]) -> Compression {
    match head {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
        _ => Compression::None,
    }
}

/// A reader hashing the (decompressed) bytes read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Opens a possibly compressed tar stream.
pub(crate) fn decompressed(file: fs::File, what: &str) -> Result<Box<dyn Read>, ImageError> {
    let mut r = BufReader::new(file);
    let head = r.fill_buf().map_err(|source| ImageError::Unpack {
        layer: what.to_string(),
        source,
    })?;
    Ok(match sniff(head) {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Compression::None => Box::new(r),
        Compression::Zstd => Box::new(ruzstd::decoding::StreamingDecoder::new(r).map_err(|e| {
            ImageError::Unpack {
                layer: what.to_string(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
            }
        })?),
    })
}

/// Unpacks `blob` into the new directory `dest`, checking the uncompressed stream against
/// `diff_id`.
pub(crate) fn unpack_layer(blob: &Path, diff_id: &str, dest: &Path) -> Result<(), ImageError> {
    let err = |source| ImageError::Unpack {
        layer: diff_id.to_string(),
        source,
    };
    fs::create_dir_all(dest).map_err(err)?;
    let file = fs::File::open(blob).map_err(ImageError::io(blob))?;
    let reader = HashingReader {
        inner: decompressed(file, diff_id)?,
        hasher: Sha256::new(),
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    let dest_real = fs::canonicalize(dest).map_err(err)?;
    for entry in archive.entries().map_err(err)? {
        let mut entry = entry.map_err(err)?;
        let raw = entry.path().map_err(err)?.into_owned();
        let rel = safe_relative(&raw).ok_or_else(|| ImageError::PathTraversal {
            layer: diff_id.to_string(),
            entry: raw.display().to_string(),
        })?;
        if let Ok(Some(link)) = entry.link_name() {
            let hard = entry.header().entry_type() == tar::EntryType::Link;
            if hard && safe_relative(&link).is_none() {
                return Err(ImageError::PathTraversal {
                    layer: diff_id.to_string(),
                    entry: format!("{} -> {}", raw.display(), link.display()),
                });
            }
        }
        let name = rel.file_name().map(|n| n.to_string_lossy().into_owned());
        match name.as_deref() {
            Some(OPAQUE_MARKER) => {
                let dir = inside(&dest_real, rel.parent(), diff_id)?;
                xattr::set(&dir, OVERLAY_OPAQUE_XATTR, b"y").map_err(err)?;
            }
            Some(n) if n.starts_with(WHITEOUT_PREFIX) => {
                let dir = inside(&dest_real, rel.parent(), diff_id)?;
                let target = dir.join(&n[WHITEOUT_PREFIX.len()..]);
                if fs::symlink_metadata(&target).is_ok() {
                    super::store::remove_any(&target)?;
                }
                mknod(&target, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                    .map_err(|e| err(std::io::Error::from(e)))?;
            }
            _ => {
                let unpacked = entry.unpack_in(&dest_real).map_err(err)?;
                if !unpacked {
                    return Err(ImageError::PathTraversal {
                        layer: diff_id.to_string(),
                        entry: raw.display().to_string(),
                    });
                }
            }
        }
    }
    // Hash the end-of-archive padding too: the diff ID covers the whole stream.
    let mut reader = archive.into_inner();
    std::io::copy(&mut reader, &mut std::io::sink()).map_err(err)?;
    let actual = format!("sha256:{}", hex::encode(reader.hasher.finalize()));
    if actual != diff_id {
        return Err(ImageError::DigestMismatch {
            what: format!("uncompressed layer {}", blob.display()),
            expected: diff_id.to_string(),
            actual,
        });
    }
    Ok(())
}

/// `p` without leading `/` or `./`; `None` if it contains `..`.
pub(crate) fn safe_relative(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Creates `rel` under `root` and checks that (after symlinks) it stays inside `root`.
fn inside(root: &Path, rel: Option<&Path>, layer: &str) -> Result<PathBuf, ImageError> {
    let dir = root.join(rel.unwrap_or(Path::new("")));
    let err = |source| ImageError::Unpack {
        layer: layer.to_string(),
        source,
    };
    fs::create_dir_all(&dir).map_err(err)?;
    let real = fs::canonicalize(&dir).map_err(err)?;
    if !real.starts_with(root) {
        return Err(ImageError::PathTraversal {
            layer: layer.to_string(),
            entry: dir.display().to_string(),
        });
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_components_are_refused() {
        assert_eq!(
            safe_relative(Path::new("./a/b")),
            Some(PathBuf::from("a/b"))
        );
        assert_eq!(
            safe_relative(Path::new("/etc/passwd")),
            Some(PathBuf::from("etc/passwd"))
        );
        assert_eq!(safe_relative(Path::new("a/../../x")), None);
    }

    #[test]
    fn compression_is_sniffed() {
        assert_eq!(sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd]), Compression::Zstd);
        assert_eq!(sniff(b"etc/"), Compression::None);
    }
}
