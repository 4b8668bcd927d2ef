//! sha256 digests in OCI form (`sha256:<hex>`).

use std::io::Write;

use sha2::{Digest, Sha256};

use super::ImageError;

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The hex part of a `sha256:` digest, validated (64 lowercase hex characters).
pub(crate) fn digest_hex(digest: &str) -> Result<&str, ImageError> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| ImageError::InvalidImage(format!("unsupported digest {digest:?}")))?;
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ImageError::InvalidImage(format!(
            "malformed digest {digest:?}"
        )));
    }
    Ok(hex)
}

/// A writer that hashes what passes through it and counts the bytes.
pub struct Sha256Writer<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Sha256Writer<W> {
    pub fn new(inner: W) -> Self {
        Sha256Writer {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// The `sha256:<hex>` digest of everything written, the byte count and the inner writer.
    pub fn finish(self) -> (String, u64, W) {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        (digest, self.written, self.inner)
    }
}

impl<W: Write> Write for Sha256Writer<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_digest_matches_one_shot_digest() {
        let mut w = Sha256Writer::new(Vec::new());
        w.write_all(b"hello ").unwrap();
        w.write_all(b"world").unwrap();
        let (d, n, out) = w.finish();
        assert_eq!(d, sha256_digest(b"hello world"));
        assert_eq!(n, 11);
        assert_eq!(out, b"hello world");
        assert!(digest_hex(&d).is_ok());
        assert!(digest_hex("sha256:XYZ").is_err());
        assert!(digest_hex("md5:00").is_err());
    }
}
