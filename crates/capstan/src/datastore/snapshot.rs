//! `capstan datastore snapshot save|restore|ls`.
//!
//! Save is online and goes through the store (SQLite's online backup, etcd's snapshot API),
//! so it is safe while a server runs. Restore is offline: an SQLite restore takes the lock a
//! running server holds, keeps the old database as `<db>.before-restore-<unix time>` and
//! puts the snapshot in its place; an etcd restore makes a new etcd data dir
//! (`etcdctl snapshot restore`) and prints how to start etcd from it.

use super::endpoint::Endpoint;
use super::lock::DbLock;
use super::schedule::{self, ON_DEMAND_PREFIX};
use super::{DEFAULT_DATA_DIR, DatastoreFlags};
use anyhow::{Context, bail};
use capstan_store::SnapshotKind;
use capstan_store::etcd::EtcdRestoreOptions;
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct SaveArgs {
    /// Where to write the snapshot (default `<snapshot-dir>/on-demand-<host>-<unix time>`).
    pub file: Option<PathBuf>,
    /// The server's data dir (locates the default SQLite database and snapshot dir).
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub datastore: DatastoreFlags,
    /// Directory for a snapshot saved without a file name (default `<data-dir>/db/snapshots`).
    #[arg(long)]
    pub snapshot_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The snapshot file; its kind (SQLite or etcd) is read from the file.
    pub file: PathBuf,
    /// SQLite: the data dir whose database (`<data-dir>/db/state.db`) is replaced.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// SQLite: `sqlite://PATH` of the database to replace, instead of the data dir's.
    #[arg(long)]
    pub datastore_endpoint: Option<String>,
    /// etcd: the new data dir to create (must not exist).
    #[arg(long)]
    pub etcd_data_dir: Option<PathBuf>,
    /// etcd: the member name of the restored etcd.
    #[arg(long, default_value = "default")]
    pub etcd_name: String,
    /// etcd: `NAME=PEER-URL[,...]`, the restored cluster's membership.
    #[arg(long, default_value = "default=http://localhost:2380")]
    pub etcd_initial_cluster: String,
    /// etcd: this member's peer URLs.
    #[arg(long, default_value = "http://localhost:2380")]
    pub etcd_initial_advertise_peer_urls: String,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// The server's data dir (locates the default snapshot dir).
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Directory to list (default `<data-dir>/db/snapshots`).
    #[arg(long)]
    pub snapshot_dir: Option<PathBuf>,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

pub fn save(args: SaveArgs) -> anyhow::Result<()> {
    let dest = match &args.file {
        Some(file) => file.clone(),
        None => {
            let dir = super::snapshot_dir(args.snapshot_dir.as_deref(), &args.data_dir);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating snapshot dir {}", dir.display()))?;
            let name =
                schedule::snapshot_name(ON_DEMAND_PREFIX, &schedule::node_name(), unix_now());
            dir.join(name)
        }
    };
    if dest.exists() {
        bail!(
            "{} already exists; choose another file name",
            dest.display()
        );
    }
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
    {
        bail!(
            "cannot save a snapshot to {}: directory {} does not exist",
            dest.display(),
            parent.display()
        );
    }
    let info = runtime()?.block_on(async {
        let store = args.datastore.open(&args.data_dir, false).await?;
        store
            .snapshot(&dest)
            .await
            .with_context(|| format!("saving a snapshot to {}", dest.display()))
    })?;
    let dest = std::path::absolute(&dest).unwrap_or(dest);
    println!("Snapshot saved to {}", dest.display());
    println!("backend: {}", info.backend);
    println!("revision: {}", info.revision);
    println!("size: {}", info.size);
    Ok(())
}

pub fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    if !args.file.is_file() {
        bail!("snapshot {} does not exist", args.file.display());
    }
    let kind = capstan_store::snapshot_kind(&args.file)
        .with_context(|| format!("{} is not a capstan snapshot", args.file.display()))?;
    match kind {
        SnapshotKind::Sqlite => restore_sqlite(&args),
        SnapshotKind::Etcd => restore_etcd(&args),
    }
}

fn restore_sqlite(args: &RestoreArgs) -> anyhow::Result<()> {
    if args.etcd_data_dir.is_some() {
        bail!(
            "{} is an SQLite snapshot; --etcd-data-dir applies to etcd snapshots only",
            args.file.display()
        );
    }
    let db = match Endpoint::parse(args.datastore_endpoint.as_deref(), &args.data_dir, false)? {
        Endpoint::Sqlite(db) => db,
        Endpoint::Etcd(_) => bail!(
            "{} is an SQLite snapshot: restore it into an SQLite datastore \
             (--data-dir or --datastore-endpoint sqlite://PATH)",
            args.file.display()
        ),
    };
    if let Some(dir) = db.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _lock = DbLock::acquire(&db, "restore")?;
    let kept = set_aside(&db, unix_now())?;
    if let Err(err) = capstan_store::sqlite::restore_snapshot(&args.file, &db) {
        // Put the previous database back, so a failed restore changes nothing.
        let _ = remove_db_files(&db);
        if let Some(kept) = &kept {
            let _ = move_db_files(kept, &db);
        }
        return Err(anyhow::Error::new(err).context(format!(
            "restoring {} into {}",
            args.file.display(),
            db.display()
        )));
    }
    println!(
        "Restored SQLite snapshot {} into {}",
        args.file.display(),
        db.display()
    );
    if let Some(kept) = kept {
        println!("The previous database is kept as {}", kept.display());
    }
    Ok(())
}

/// SQLite's companion files of a database in WAL mode.
const DB_SUFFIXES: [&str; 4] = ["", "-wal", "-shm", "-journal"];

fn with_suffix(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Moves the database and its WAL files to `<db>.before-restore-<unix>`, together, so the
/// kept copy opens with every committed write. Returns the new path, or None without a db.
fn set_aside(db: &Path, unix: i64) -> anyhow::Result<Option<PathBuf>> {
    if !db.exists() {
        return Ok(None);
    }
    let kept = with_suffix(db, &format!(".before-restore-{unix}"));
    move_db_files(db, &kept)?;
    Ok(Some(kept))
}

fn move_db_files(from: &Path, to: &Path) -> anyhow::Result<()> {
    for suffix in DB_SUFFIXES {
        let (src, dst) = (with_suffix(from, suffix), with_suffix(to, suffix));
        match std::fs::rename(&src, &dst) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("moving {} to {}", src.display(), dst.display()));
            }
        }
    }
    Ok(())
}

fn remove_db_files(db: &Path) -> anyhow::Result<()> {
    for suffix in DB_SUFFIXES {
        let path = with_suffix(db, suffix);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).with_context(|| format!("removing {}", path.display())),
        }
    }
    Ok(())
}

fn restore_etcd(args: &RestoreArgs) -> anyhow::Result<()> {
    let Some(data_dir) = args.etcd_data_dir.clone() else {
        bail!(
            "{} is an etcd snapshot: give --etcd-data-dir DIR (a new directory) and, for a \
             cluster, --etcd-name, --etcd-initial-cluster and --etcd-initial-advertise-peer-urls",
            args.file.display()
        );
    };
    if args.datastore_endpoint.is_some() {
        bail!(
            "--datastore-endpoint applies to SQLite snapshots; an etcd snapshot needs --etcd-data-dir"
        );
    }
    if data_dir.exists() {
        bail!(
            "{} already exists; an etcd snapshot is restored into a new data dir",
            data_dir.display()
        );
    }
    let opts = EtcdRestoreOptions {
        data_dir: data_dir.clone(),
        name: args.etcd_name.clone(),
        initial_cluster: args.etcd_initial_cluster.clone(),
        initial_advertise_peer_urls: args.etcd_initial_advertise_peer_urls.clone(),
    };
    capstan_store::etcd::restore_snapshot(&args.file, &opts).with_context(|| {
        format!(
            "restoring etcd snapshot {} into {}",
            args.file.display(),
            data_dir.display()
        )
    })?;
    println!(
        "Restored etcd snapshot {} into {}",
        args.file.display(),
        data_dir.display()
    );
    println!("Start etcd from it with:");
    println!(
        "  etcd --name {} --data-dir {} --initial-cluster {} --initial-advertise-peer-urls {} \
         --listen-peer-urls {} --listen-client-urls http://127.0.0.1:2379 \
         --advertise-client-urls http://127.0.0.1:2379",
        opts.name,
        data_dir.display(),
        opts.initial_cluster,
        opts.initial_advertise_peer_urls,
        opts.initial_advertise_peer_urls
    );
    println!("then start capstan server with --datastore-endpoint pointing at its client URLs.");
    Ok(())
}

pub fn ls(args: LsArgs) -> anyhow::Result<()> {
    let dir = super::snapshot_dir(args.snapshot_dir.as_deref(), &args.data_dir);
    let snapshots = schedule::list_snapshots(&dir)?;
    let width = snapshots
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!("{:<width$}  {:>12}  CREATED", "NAME", "SIZE");
    for s in snapshots {
        let created = jiff::Timestamp::from_second(s.unix)
            .map(|t| t.to_string())
            .unwrap_or_else(|_| s.unix.to_string());
        println!("{:<width$}  {:>12}  {created}", s.name, s.size);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_aside_moves_the_db_with_its_wal_files_and_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        assert_eq!(set_aside(&db, 7).unwrap(), None);
        for suffix in ["", "-wal", "-shm"] {
            std::fs::write(with_suffix(&db, suffix), suffix).unwrap();
        }
        let kept = set_aside(&db, 7).unwrap().unwrap();
        assert_eq!(kept, dir.path().join("state.db.before-restore-7"));
        assert!(!db.exists());
        let wal = dir.path().join("state.db.before-restore-7-wal");
        assert_eq!(std::fs::read_to_string(wal).unwrap(), "-wal");
        move_db_files(&kept, &db).unwrap();
        assert_eq!(
            std::fs::read_to_string(with_suffix(&db, "-shm")).unwrap(),
            "-shm"
        );
    }
}
