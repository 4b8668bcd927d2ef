//! Secrets encryption at rest: the server's `--encryption-key-file` flags, wrapping its store,
//! reloading the key file while it runs, and `capstan secrets-encrypt status|rotate-keys`.

use crate::datastore::endpoint::Endpoint;
use crate::datastore::lock::DbLock;
use crate::datastore::{DEFAULT_DATA_DIR, DatastoreFlags};
use anyhow::{Context, bail};
use capstan_store::Store;
use capstan_store::encryption::{EncryptedStore, EncryptionKey, KeyFile, SharedKeyring};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often a running server checks the key file for changes.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// Wait after loading a rotated key file before re-encrypting, so that every server sharing
/// the file (HA) seals with the new key before the old one is dropped.
const ROTATION_GRACE: Duration = Duration::from_secs(3);
/// Wait before retrying a failed re-encryption.
const ROTATION_RETRY: Duration = Duration::from_secs(10);

/// Encryption flags of `capstan server` (and of `capstan secrets-encrypt`).
#[derive(Args, Debug, Clone, Default)]
pub struct EncryptionFlags {
    /// Key file for secrets encryption at rest (default `<data-dir>/cred/encryption.json`,
    /// created on first start). Servers sharing a datastore, and a data dir restored from a
    /// snapshot, need the same file.
    #[arg(long)]
    pub encryption_key_file: Option<PathBuf>,
    /// Store new Secrets in plaintext (existing encrypted ones still read if the key file exists).
    #[arg(long)]
    pub disable_secrets_encryption: bool,
}

impl EncryptionFlags {
    /// The key file these flags name.
    pub fn key_file(&self, data_dir: &Path) -> PathBuf {
        self.encryption_key_file
            .clone()
            .unwrap_or_else(|| data_dir.join("cred").join("encryption.json"))
    }

    /// Wraps `store` so Secrets are encrypted, loading (or creating) the key file.
    pub fn wrap(&self, data_dir: &Path, store: Arc<dyn Store>) -> anyhow::Result<Encryption> {
        let path = self.key_file(data_dir);
        if self.disable_secrets_encryption && !path.exists() {
            tracing::warn!("secrets encryption at rest disabled");
            return Ok(Encryption {
                store,
                encrypted: None,
            });
        }
        let keyring = if self.disable_secrets_encryption {
            KeyFile::load(&path)?.read_only()
        } else {
            KeyFile::load_or_create(&path)?
        };
        let loaded = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        tracing::info!(
            key_file = %path.display(),
            keys = ?keyring.names(),
            sealing = keyring.write_key().is_some(),
            "secrets encryption at rest"
        );
        let read_only = keyring.write_key().is_none();
        let encrypted = EncryptedStore::new(store, SharedKeyring::new(keyring));
        Ok(Encryption {
            store: Arc::new(encrypted.clone()),
            encrypted: Some(Reloader {
                store: encrypted,
                path,
                loaded,
                read_only,
            }),
        })
    }
}

/// A server's store with encryption, and what keeps its keys up to date.
pub struct Encryption {
    store: Arc<dyn Store>,
    encrypted: Option<Reloader>,
}

struct Reloader {
    store: EncryptedStore,
    path: PathBuf,
    loaded: Vec<u8>,
    read_only: bool,
}

impl Encryption {
    /// The store to serve from.
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Starts following the key file (and finishing rotations) until `shutdown` turns true.
    pub fn spawn_reloader(
        self,
        shutdown: watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        self.encrypted.map(|r| tokio::spawn(r.run(shutdown)))
    }
}

impl Reloader {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut pending = self.store.keys().current().reencrypt_pending();
        let mut retry_at = Instant::now();
        loop {
            if pending && Instant::now() >= retry_at {
                match self.finish_rotation(&mut shutdown).await {
                    Ok(done) => pending = !done,
                    Err(e) => {
                        tracing::error!(
                            error = format!("{e:#}"),
                            "re-encrypting secrets failed; the old keys stay"
                        );
                        retry_at = Instant::now() + ROTATION_RETRY;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(RELOAD_INTERVAL) => {}
            }
            if *shutdown.borrow() {
                return;
            }
            let bytes = match tokio::fs::read(&self.path).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot read the encryption key file; keeping the keys in use");
                    continue;
                }
            };
            if bytes == self.loaded {
                continue;
            }
            self.loaded = bytes;
            match KeyFile::parse(&self.path, &self.loaded) {
                Ok(k) => {
                    let k = if self.read_only { k.read_only() } else { k };
                    tracing::info!(keys = ?k.names(), reencrypt = k.reencrypt_pending(), "encryption keys reloaded");
                    pending = k.reencrypt_pending();
                    retry_at = Instant::now();
                    self.store.keys().replace(k);
                }
                Err(e) => {
                    tracing::error!(error = %e, "invalid encryption key file; keeping the keys in use")
                }
            }
        }
    }

    /// Re-encrypts every secret with the write key, then drops the other keys from the file.
    /// Ok(false) when shut down or the file changed meanwhile (it is reloaded first).
    async fn finish_rotation(&self, shutdown: &mut watch::Receiver<bool>) -> anyhow::Result<bool> {
        tokio::select! {
            _ = shutdown.changed() => return Ok(false),
            _ = tokio::time::sleep(ROTATION_GRACE) => {}
        }
        if tokio::fs::read(&self.path).await.ok().as_ref() != Some(&self.loaded) {
            return Ok(false);
        }
        let report = self
            .store
            .reencrypt()
            .await
            .context("re-encrypting secrets")?;
        let keys = self.store.keys().current();
        // Another server sharing the file may have finished first: then it has changed.
        if tokio::fs::read(&self.path).await.ok().as_ref() == Some(&self.loaded) {
            KeyFile::save(&self.path, &keys.write_key_only())?;
        }
        tracing::info!(
            total = report.total,
            rewritten = report.rewritten,
            key = keys.names().first().map(String::as_str).unwrap_or_default(),
            "secrets re-encrypted; old keys dropped"
        );
        Ok(true)
    }
}

/// `capstan secrets-encrypt ...`
#[derive(Args, Debug)]
pub struct SecretsEncryptArgs {
    #[command(subcommand)]
    command: SecretsCommand,
}

#[derive(Subcommand, Debug)]
enum SecretsCommand {
    /// Show the key file's keys and how many Secrets each key encrypts.
    Status(CommonArgs),
    /// Add a new key, re-encrypt every Secret with it, then drop the old keys.
    ///
    /// The new key is written to the key file first (it becomes the write key, the old keys
    /// stay for reads, marked for re-encryption). A running server re-reads the key file every
    /// second: it starts sealing with the new key, waits 3 s so other servers sharing the file
    /// do too, rewrites every Secret (compare-and-swap per key, so concurrent writes are not
    /// lost), then removes the old keys from the file; this command waits for that. With no
    /// server running on a SQLite data dir, the command does it all itself.
    RotateKeys(RotateArgs),
}

#[derive(Args, Debug)]
struct CommonArgs {
    /// The server's data dir.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    #[command(flatten)]
    encryption: EncryptionFlags,
    #[command(flatten)]
    datastore: DatastoreFlags,
}

#[derive(Args, Debug)]
struct RotateArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// How long to wait for a running server to finish the rotation.
    #[arg(long, default_value_t = 120)]
    timeout_seconds: u64,
}

/// Runs a `capstan secrets-encrypt` command.
pub fn run(args: SecretsEncryptArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match args.command {
        SecretsCommand::Status(a) => rt.block_on(status(a)),
        SecretsCommand::RotateKeys(a) => rt.block_on(rotate(a)),
    }
}

async fn status(a: CommonArgs) -> anyhow::Result<()> {
    let path = a.encryption.key_file(&a.data_dir);
    let keys = KeyFile::load(&path)?;
    println!("Key file: {}", path.display());
    println!("Encryption at rest: enabled (provider aesgcm)");
    println!("Write key: {}", keys.names()[0]);
    for name in &keys.names()[1..] {
        println!("Read key: {name}");
    }
    if keys.reencrypt_pending() {
        println!("Rotation: in progress (re-encryption pending)");
    } else {
        println!("Rotation: none pending");
    }
    let store = a.datastore.open(&a.data_dir, false).await?;
    let counts = EncryptedStore::new(store, SharedKeyring::new(keys))
        .count_by_key()
        .await
        .context("counting secrets")?;
    if counts.is_empty() {
        println!("Secrets: none");
    }
    for (name, n) in counts {
        println!("Secrets encrypted with {name}: {n}");
    }
    Ok(())
}

async fn rotate(a: RotateArgs) -> anyhow::Result<()> {
    let c = &a.common;
    let path = c.encryption.key_file(&c.data_dir);
    let current = KeyFile::load(&path)
        .with_context(|| "no key to rotate (a server creates the key file on first start)")?;
    let rotated = if current.reencrypt_pending() {
        println!("Resuming the rotation to key {}", current.names()[0]);
        current
    } else {
        let rotated = current.rotated(EncryptionKey::generate()?)?;
        KeyFile::save(&path, &rotated)?;
        println!("Added key {} to {}", rotated.names()[0], path.display());
        rotated
    };
    let new = rotated.names()[0].clone();
    // A SQLite data dir with no server (its lock is free) is rotated here, holding the lock.
    if let Endpoint::Sqlite(db) = c.datastore.endpoint(&c.data_dir)?
        && let Ok(lock) = DbLock::acquire(&db, "rotate encryption keys")
    {
        let store = c.datastore.open(&c.data_dir, false).await?;
        let encrypted = EncryptedStore::new(store, SharedKeyring::new(rotated.clone()));
        let report = encrypted
            .reencrypt()
            .await
            .context("re-encrypting secrets")?;
        KeyFile::save(&path, &rotated.write_key_only())?;
        drop(lock);
        println!(
            "Re-encrypted {} of {} secrets with key {new}; old keys removed",
            report.rewritten, report.total
        );
        return Ok(());
    }
    println!("Waiting for the running server to re-encrypt every secret...");
    let deadline = Instant::now() + Duration::from_secs(a.timeout_seconds);
    loop {
        if let Ok(k) = KeyFile::load(&path)
            && !k.reencrypt_pending()
        {
            if k.names() == [new.clone()] {
                println!("All secrets are encrypted with key {new}; old keys removed");
                return Ok(());
            }
            bail!(
                "the key file {} changed during the rotation (now {:?})",
                path.display(),
                k.names()
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "no server finished the rotation within {}s; the key file keeps both keys and \
                 the next server start (or re-read of the file) completes it",
                a.timeout_seconds
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_store::MemoryStore;

    /// A running server's reloader picks up a rotated key file, re-encrypts every secret
    /// and drops the old key from the file.
    #[tokio::test]
    async fn reloader_finishes_a_rotation_written_to_the_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let raw: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let flags = EncryptionFlags::default();
        let enc = flags.wrap(dir.path(), raw.clone()).unwrap();
        let store = enc.store();
        let key = "/registry/secrets/ns/s";
        store.create(key, b"plain-data".to_vec()).await.unwrap();
        let path = flags.key_file(dir.path());
        let old = KeyFile::load(&path).unwrap();
        let rotated = old.rotated(EncryptionKey::generate().unwrap()).unwrap();
        let new = rotated.names()[0].clone();
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = enc.spawn_reloader(stop_rx).unwrap();
        KeyFile::save(&path, &rotated).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while KeyFile::load(&path).unwrap().names() != [new.clone()] {
            assert!(Instant::now() < deadline, "rotation not finished");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let stored = raw.get(key).await.unwrap().unwrap().value;
        assert!(stored.starts_with(format!("k8s:enc:aesgcm:v1:{new}:").as_bytes()));
        assert_eq!(store.get(key).await.unwrap().unwrap().value, b"plain-data");
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn disabled_without_a_key_file_passes_the_store_through() {
        let dir = tempfile::tempdir().unwrap();
        let flags = EncryptionFlags {
            disable_secrets_encryption: true,
            ..Default::default()
        };
        let enc = flags
            .wrap(dir.path(), Arc::new(MemoryStore::new()))
            .unwrap();
        assert!(enc.encrypted.is_none());
        assert!(!flags.key_file(dir.path()).exists());
    }
}
