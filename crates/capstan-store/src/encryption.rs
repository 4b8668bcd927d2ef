//! Encryption at rest of Secrets: a [`Store`] wrapper that seals the values of keys under
//! `/registry/secrets/` with AES-256-GCM (upstream's `aesgcm` provider format) and opens them
//! on every read, so the API server and its watch cache only ever see plaintext.
//!
//! A sealed value is `k8s:enc:aesgcm:v1:<key name>:` + 12-byte random nonce + ciphertext and
//! tag; the store key is the additional authenticated data, so a sealed value moved to another
//! key does not open. Values without the prefix (written before encryption) read as they are
//! and are sealed on their next write. The keys live in a JSON key file ([`KeyFile`]): the
//! first key seals, all of them open.

mod store;

pub use store::{EncryptedStore, ReencryptReport};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Keys whose values are encrypted (upstream's default resource list for Capstan: Secrets).
pub const SECRETS_PREFIX: &str = "/registry/secrets/";
/// Upstream's marker of the AES-GCM provider, followed by `<key name>:`.
pub const AESGCM_PREFIX: &str = "k8s:enc:aesgcm:v1:";
/// Length of an AES-256 key.
pub const KEY_LEN: usize = 32;

/// Errors of sealing, opening and of the key file.
#[derive(Debug, thiserror::Error)]
pub enum EncryptionError {
    #[error(
        "{key} is encrypted with key {name:?}, which this server does not have (it has {known}); \
         start every server of the cluster with the cluster's key file (--encryption-key-file)"
    )]
    UnknownKey {
        key: String,
        name: String,
        known: String,
    },
    #[error(
        "{key} does not decrypt with key {name:?}: the stored value was altered or sealed with \
         another key of the same name"
    )]
    Tampered { key: String, name: String },
    #[error("{key} holds a malformed encrypted value: {reason}")]
    Malformed { key: String, reason: &'static str },
    #[error("{key} is encrypted by provider {provider:?}, which Capstan does not support")]
    UnsupportedProvider { key: String, provider: String },
    #[error("no key to encrypt {0} with (encryption of new writes is disabled)")]
    NoWriteKey(String),
    #[error("the system random generator failed")]
    Random,
    #[error("encryption key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
    #[error("encryption key file {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = EncryptionError> = std::result::Result<T, E>;

/// True for store keys whose values are encrypted.
pub fn is_encrypted_key(key: &str) -> bool {
    key.starts_with(SECRETS_PREFIX)
}

/// One named AES-256 key.
#[derive(Clone)]
pub struct EncryptionKey {
    name: String,
    secret: [u8; KEY_LEN],
    sealing: Arc<LessSafeKey>,
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptionKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl EncryptionKey {
    /// A key from its name and 32 bytes; names are `[A-Za-z0-9._-]+` (they end at `:`).
    pub fn new(name: &str, secret: [u8; KEY_LEN]) -> Result<EncryptionKey> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !valid {
            return Err(EncryptionError::KeyFile {
                path: PathBuf::new(),
                reason: format!("invalid key name {name:?}: use 1-64 of [A-Za-z0-9._-]"),
            });
        }
        let unbound =
            UnboundKey::new(&AES_256_GCM, &secret).map_err(|_| EncryptionError::Random)?;
        Ok(EncryptionKey {
            name: name.to_string(),
            secret,
            sealing: Arc::new(LessSafeKey::new(unbound)),
        })
    }

    /// A new random key named `key-<unix seconds>-<random hex>`.
    pub fn generate() -> Result<EncryptionKey> {
        let rng = SystemRandom::new();
        let mut secret = [0u8; KEY_LEN];
        rng.fill(&mut secret).map_err(|_| EncryptionError::Random)?;
        let mut tag = [0u8; 3];
        rng.fill(&mut tag).map_err(|_| EncryptionError::Random)?;
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        EncryptionKey::new(&format!("key-{secs}-{hex}"), secret)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The keys a server holds: the first seals new writes (when `seal` is set), all open.
#[derive(Clone, Debug)]
pub struct Keyring {
    keys: Vec<EncryptionKey>,
    seal: bool,
    reencrypt: bool,
}

impl Keyring {
    /// A keyring sealing with `keys[0]`; `reencrypt` marks a rotation in progress.
    pub fn new(keys: Vec<EncryptionKey>, reencrypt: bool) -> Result<Keyring> {
        if keys.is_empty() {
            return Err(EncryptionError::KeyFile {
                path: PathBuf::new(),
                reason: "it lists no key".into(),
            });
        }
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|o| o.name == k.name) {
                return Err(EncryptionError::KeyFile {
                    path: PathBuf::new(),
                    reason: format!("key name {:?} appears twice", k.name),
                });
            }
        }
        Ok(Keyring {
            keys,
            seal: true,
            reencrypt,
        })
    }

    /// The same keys, only opening: new writes are stored in plaintext.
    pub fn read_only(mut self) -> Keyring {
        self.seal = false;
        self
    }

    /// The key that seals new writes, if sealing is on.
    pub fn write_key(&self) -> Option<&EncryptionKey> {
        self.keys.first().filter(|_| self.seal)
    }

    /// All keys, the write key first.
    pub fn keys(&self) -> &[EncryptionKey] {
        &self.keys
    }

    /// Names of all keys, the write key first.
    pub fn names(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.name.clone()).collect()
    }

    /// True while a rotation waits for the re-encryption of every secret.
    pub fn reencrypt_pending(&self) -> bool {
        self.reencrypt
    }

    /// A rotation's first step: `new` seals, the current keys still open, re-encryption due.
    pub fn rotated(&self, new: EncryptionKey) -> Result<Keyring> {
        let mut keys = vec![new];
        keys.extend(self.keys.iter().cloned());
        Keyring::new(keys, true)
    }

    /// A rotation's last step: only the write key is kept.
    pub fn write_key_only(&self) -> Keyring {
        Keyring {
            keys: self.keys[..1].to_vec(),
            seal: self.seal,
            reencrypt: false,
        }
    }

    /// Seals `value` for store key `key` with the write key (unchanged when sealing is off or
    /// `key` is not encrypted).
    pub fn seal(&self, key: &str, value: Vec<u8>) -> Result<Vec<u8>> {
        if !is_encrypted_key(key) {
            return Ok(value);
        }
        let Some(k) = self.write_key() else {
            return Ok(value);
        };
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| EncryptionError::Random)?;
        let mut sealed = value;
        k.sealing
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| EncryptionError::Random)?;
        let mut out =
            Vec::with_capacity(AESGCM_PREFIX.len() + k.name.len() + 1 + NONCE_LEN + sealed.len());
        out.extend_from_slice(AESGCM_PREFIX.as_bytes());
        out.extend_from_slice(k.name.as_bytes());
        out.push(b':');
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens a stored value of `key`: sealed values are decrypted, plaintext passes through.
    pub fn open(&self, key: &str, value: Vec<u8>) -> Result<Vec<u8>> {
        let Some(name) = sealed_key_name(key, &value)? else {
            return Ok(value);
        };
        let Some(k) = self.keys.iter().find(|k| k.name == name) else {
            return Err(EncryptionError::UnknownKey {
                key: key.to_string(),
                name: name.to_string(),
                known: format!("{:?}", self.names()),
            });
        };
        let start = AESGCM_PREFIX.len() + name.len() + 1;
        let body = &value[start..];
        if body.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(EncryptionError::Malformed {
                key: key.to_string(),
                reason: "shorter than a nonce and a tag",
            });
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&body[..NONCE_LEN]);
        let mut in_out = body[NONCE_LEN..].to_vec();
        let plain_len = k
            .sealing
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.as_bytes()),
                &mut in_out,
            )
            .map_err(|_| EncryptionError::Tampered {
                key: key.to_string(),
                name: name.to_string(),
            })?
            .len();
        in_out.truncate(plain_len);
        Ok(in_out)
    }

    /// True when the stored value of `key` is as this keyring would write it now (sealed with
    /// the write key, or plaintext when sealing is off or the key is not encrypted).
    pub fn is_current(&self, key: &str, value: &[u8]) -> bool {
        let name = sealed_key_name(key, value).ok().flatten();
        match (self.write_key(), is_encrypted_key(key)) {
            (Some(w), true) => name == Some(w.name.as_str()),
            _ => name.is_none(),
        }
    }
}

/// The key name of a sealed value, None for plaintext; errors for other providers.
pub fn sealed_key_name<'a>(key: &str, value: &'a [u8]) -> Result<Option<&'a str>> {
    let Some(rest) = value.strip_prefix(AESGCM_PREFIX.as_bytes()) else {
        if let Some(rest) = value.strip_prefix(b"k8s:enc:") {
            let provider = rest.split(|b| *b == b':').next().unwrap_or_default();
            return Err(EncryptionError::UnsupportedProvider {
                key: key.to_string(),
                provider: String::from_utf8_lossy(provider).into_owned(),
            });
        }
        return Ok(None);
    };
    let malformed = |reason| EncryptionError::Malformed {
        key: key.to_string(),
        reason,
    };
    let end = rest
        .iter()
        .take(65)
        .position(|b| *b == b':')
        .ok_or_else(|| malformed("no key name"))?;
    std::str::from_utf8(&rest[..end])
        .map(Some)
        .map_err(|_| malformed("key name is not UTF-8"))
}

/// A keyring shared by a store wrapper and whoever reloads the key file.
#[derive(Clone, Debug)]
pub struct SharedKeyring(Arc<RwLock<Arc<Keyring>>>);

impl SharedKeyring {
    pub fn new(keyring: Keyring) -> SharedKeyring {
        SharedKeyring(Arc::new(RwLock::new(Arc::new(keyring))))
    }

    /// The keyring now in use.
    pub fn current(&self) -> Arc<Keyring> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Switches every later read and write to `keyring`.
    pub fn replace(&self, keyring: Keyring) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keyring);
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct FileKey {
    name: String,
    secret: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct FileFormat {
    /// The write key first, then older keys still accepted for reads.
    keys: Vec<FileKey>,
    /// Set by `capstan secrets-encrypt rotate-keys` until every secret uses the first key.
    #[serde(default)]
    reencrypt: bool,
}

/// The key file: JSON `{"keys":[{"name":..,"secret":<base64 of 32 bytes>}..],"reencrypt":bool}`,
/// mode 0600, replaced atomically.
pub struct KeyFile;

impl KeyFile {
    /// Parses the key file's bytes.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Keyring> {
        let bad = |reason: String| EncryptionError::KeyFile {
            path: path.to_path_buf(),
            reason,
        };
        let file: FileFormat =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let mut keys = Vec::with_capacity(file.keys.len());
        for k in file.keys {
            let raw = B64
                .decode(k.secret.trim())
                .map_err(|e| bad(format!("key {:?} is not base64: {e}", k.name)))?;
            let secret: [u8; KEY_LEN] = raw.try_into().map_err(|raw: Vec<u8>| {
                bad(format!(
                    "key {:?} has {} bytes, AES-256 needs {KEY_LEN}",
                    k.name,
                    raw.len()
                ))
            })?;
            keys.push(EncryptionKey::new(&k.name, secret).map_err(|e| with_path(e, path))?);
        }
        Keyring::new(keys, file.reencrypt).map_err(|e| with_path(e, path))
    }

    /// The bytes of the key file for `keyring`.
    pub fn render(keyring: &Keyring) -> Vec<u8> {
        let file = FileFormat {
            keys: keyring
                .keys
                .iter()
                .map(|k| FileKey {
                    name: k.name.clone(),
                    secret: B64.encode(k.secret),
                })
                .collect(),
            reencrypt: keyring.reencrypt,
        };
        let mut out = serde_json::to_vec_pretty(&file).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Reads the key file.
    pub fn load(path: &Path) -> Result<Keyring> {
        let bytes = std::fs::read(path).map_err(|source| EncryptionError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        KeyFile::parse(path, &bytes)
    }

    /// Reads the key file, creating it with one new key when it does not exist. Racing
    /// creators agree: the file is linked into place only if absent.
    pub fn load_or_create(path: &Path) -> Result<Keyring> {
        if !path.exists() {
            let keyring = Keyring::new(vec![EncryptionKey::generate()?], false)?;
            let tmp = write_temp(path, &KeyFile::render(&keyring))?;
            let linked = std::fs::hard_link(&tmp, path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(EncryptionError::Io {
                        path: path.to_path_buf(),
                        source,
                    });
                }
            }
        }
        KeyFile::load(path)
    }

    /// Replaces the key file with `keyring` (a temporary file renamed into place).
    pub fn save(path: &Path, keyring: &Keyring) -> Result<()> {
        let tmp = write_temp(path, &KeyFile::render(keyring))?;
        std::fs::rename(&tmp, path).map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            EncryptionError::Io {
                path: path.to_path_buf(),
                source,
            }
        })
    }
}

fn with_path(e: EncryptionError, path: &Path) -> EncryptionError {
    match e {
        EncryptionError::KeyFile { reason, .. } => EncryptionError::KeyFile {
            path: path.to_path_buf(),
            reason,
        },
        e => e,
    }
}

/// Writes `bytes` to a new mode-0600 file next to `path` (its directory made 0700 if new).
fn write_temp(path: &Path, bytes: &[u8]) -> Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io = |source| EncryptionError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    let mut tag = [0u8; 6];
    SystemRandom::new()
        .fill(&mut tag)
        .map_err(|_| EncryptionError::Random)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = dir.join(format!(".{name}.{hex}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    let written = f.write_all(bytes).and_then(|()| f.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    Ok(tmp)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "/registry/secrets/default/db";

    fn ring(names: &[&str]) -> Keyring {
        let keys = names
            .iter()
            .enumerate()
            .map(|(i, n)| EncryptionKey::new(n, [i as u8 + 1; KEY_LEN]).unwrap())
            .collect();
        Keyring::new(keys, false).unwrap()
    }

    #[test]
    fn sealed_value_has_the_prefix_no_plaintext_and_opens_again() {
        let k = ring(&["one"]);
        let plain = br#"{"data":{"password":"aHVudGVyMg=="}}"#.to_vec();
        let sealed = k.seal(KEY, plain.clone()).unwrap();
        assert!(sealed.starts_with(b"k8s:enc:aesgcm:v1:one:"));
        assert!(!sealed.windows(8).any(|w| w == b"aHVudGVy"));
        assert_eq!(
            sealed.len(),
            "k8s:enc:aesgcm:v1:one:".len() + 12 + plain.len() + 16
        );
        assert_eq!(k.open(KEY, sealed.clone()).unwrap(), plain);
        // A fresh nonce every time.
        assert_ne!(k.seal(KEY, plain.clone()).unwrap(), sealed);
        assert!(k.is_current(KEY, &sealed));
    }

    #[test]
    fn other_keys_are_not_touched() {
        let k = ring(&["one"]);
        let v = b"{}".to_vec();
        assert_eq!(k.seal("/registry/configmaps/a/b", v.clone()).unwrap(), v);
        assert!(k.is_current("/registry/configmaps/a/b", &v));
    }

    #[test]
    fn unknown_key_name_is_a_clear_error() {
        let sealed = ring(&["one"]).seal(KEY, b"x".to_vec()).unwrap();
        let err = ring(&["two"]).open(KEY, sealed).unwrap_err();
        assert!(matches!(err, EncryptionError::UnknownKey { ref name, .. } if name == "one"));
        let msg = err.to_string();
        assert!(
            msg.contains("\"one\"") && msg.contains("--encryption-key-file"),
            "{msg}"
        );
    }

    #[test]
    fn same_name_other_secret_is_refused() {
        let sealed = ring(&["one"]).seal(KEY, b"x".to_vec()).unwrap();
        let other = Keyring::new(
            vec![EncryptionKey::new("one", [9; KEY_LEN]).unwrap()],
            false,
        )
        .unwrap();
        assert!(matches!(
            other.open(KEY, sealed),
            Err(EncryptionError::Tampered { .. })
        ));
    }

    #[test]
    fn tampered_truncated_or_moved_values_are_refused() {
        let k = ring(&["one"]);
        let sealed = k.seal(KEY, b"secret data".to_vec()).unwrap();
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(
            k.open(KEY, flipped),
            Err(EncryptionError::Tampered { .. })
        ));
        let short = sealed[..AESGCM_PREFIX.len() + 4 + 10].to_vec();
        assert!(matches!(
            k.open(KEY, short),
            Err(EncryptionError::Malformed { .. })
        ));
        // The store key is authenticated: a value copied to another secret does not open.
        assert!(matches!(
            k.open("/registry/secrets/default/other", sealed),
            Err(EncryptionError::Tampered { .. })
        ));
        assert!(matches!(
            k.open(KEY, b"k8s:enc:aesgcm:v1:noterminator".to_vec()),
            Err(EncryptionError::Malformed { .. })
        ));
        assert!(matches!(
            k.open(KEY, b"k8s:enc:kms:v2:x:yz".to_vec()),
            Err(EncryptionError::UnsupportedProvider { ref provider, .. }) if provider == "kms"
        ));
    }

    #[test]
    fn plaintext_legacy_values_read_as_they_are_and_are_not_current() {
        let k = ring(&["one"]);
        let legacy = br#"{"kind":"Secret"}"#.to_vec();
        assert_eq!(k.open(KEY, legacy.clone()).unwrap(), legacy);
        assert!(!k.is_current(KEY, &legacy));
        assert!(k.clone().read_only().is_current(KEY, &legacy));
        assert_eq!(k.read_only().seal(KEY, legacy.clone()).unwrap(), legacy);
    }

    #[test]
    fn rotation_keeps_old_keys_for_reads_then_drops_them() {
        let old = ring(&["old"]);
        let sealed = old.seal(KEY, b"v".to_vec()).unwrap();
        let rotated = old
            .rotated(EncryptionKey::new("new", [7; KEY_LEN]).unwrap())
            .unwrap();
        assert_eq!(rotated.names(), ["new", "old"]);
        assert!(rotated.reencrypt_pending());
        assert_eq!(rotated.open(KEY, sealed.clone()).unwrap(), b"v");
        assert!(!rotated.is_current(KEY, &sealed));
        let done = rotated.write_key_only();
        assert_eq!(done.names(), ["new"]);
        assert!(!done.reencrypt_pending());
    }

    #[test]
    fn key_file_is_created_0600_once_and_round_trips() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cred").join("encryption.json");
        let first = KeyFile::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = KeyFile::load_or_create(&path).unwrap();
        assert_eq!(first.names(), again.names());
        let sealed = first.seal(KEY, b"x".to_vec()).unwrap();
        assert_eq!(again.open(KEY, sealed).unwrap(), b"x");
        let rotated = first.rotated(EncryptionKey::generate().unwrap()).unwrap();
        KeyFile::save(&path, &rotated).unwrap();
        let loaded = KeyFile::load(&path).unwrap();
        assert_eq!(loaded.names(), rotated.names());
        assert!(loaded.reencrypt_pending());
        // Only the key file is left: no temporary files.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }

    #[test]
    fn bad_key_files_name_the_problem() {
        let p = Path::new("/k.json");
        let cases: [(&str, &str); 5] = [
            ("nope", "not valid JSON"),
            (r#"{"keys":[]}"#, "no key"),
            (r#"{"keys":[{"name":"a","secret":"%%"}]}"#, "not base64"),
            (r#"{"keys":[{"name":"a","secret":"AAAA"}]}"#, "3 bytes"),
            (r#"{"keys":[{"name":"a:b","secret":"AAAA"}]}"#, "3 bytes"),
        ];
        for (text, want) in cases {
            let err = KeyFile::parse(p, text.as_bytes()).unwrap_err().to_string();
            assert!(
                err.contains(want) && err.contains("/k.json"),
                "{text}: {err}"
            );
        }
        let k = B64.encode([0u8; KEY_LEN]);
        let bad_name = format!(r#"{{"keys":[{{"name":"a:b","secret":"{k}"}}]}}"#);
        let err = KeyFile::parse(p, bad_name.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid key name"), "{err}");
        let dup =
            format!(r#"{{"keys":[{{"name":"a","secret":"{k}"}},{{"name":"a","secret":"{k}"}}]}}"#);
        let err = KeyFile::parse(p, dup.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("twice"), "{err}");
    }
}
