//! The datastore side of the binary: `--datastore-endpoint` parsing and opening
//! ([`endpoint`]), the lock a server holds on its SQLite file ([`lock`]), scheduled snapshots
//! ([`schedule`]) and the `capstan datastore snapshot save|restore|ls` commands ([`snapshot`]).

pub mod endpoint;
pub mod lock;
pub mod schedule;
mod snapshot;

use clap::{Args, Subcommand};
use std::path::PathBuf;

pub use endpoint::DatastoreFlags;

/// Default `--data-dir`, shared with `capstan server`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/capstan";

/// `capstan datastore ...`
#[derive(Args, Debug)]
pub struct DatastoreArgs {
    #[command(subcommand)]
    command: DatastoreCommand,
}

#[derive(Subcommand, Debug)]
enum DatastoreCommand {
    /// Save, restore and list snapshots of the datastore (SQLite or etcd).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(Subcommand, Debug)]
enum SnapshotCommand {
    /// Save a snapshot of the datastore now (online: the server may be running).
    Save(snapshot::SaveArgs),
    /// Restore a snapshot (offline: the server must be stopped). SQLite snapshots replace
    /// the database; etcd snapshots become a new etcd data dir.
    Restore(snapshot::RestoreArgs),
    /// List the snapshots in the snapshot dir.
    #[command(alias = "list")]
    Ls(snapshot::LsArgs),
}

/// `--snapshot-*` flags of `capstan server` (k3s's `etcd-snapshot-*` names work as aliases).
#[derive(Args, Debug, Clone)]
pub struct SnapshotScheduleFlags {
    /// When to save scheduled snapshots: cron, 5 fields (or 6 with seconds first).
    #[arg(
        long,
        alias = "etcd-snapshot-schedule-cron",
        default_value = "0 */12 * * *"
    )]
    pub snapshot_schedule: String,
    /// How many scheduled snapshots to keep; older ones are deleted.
    #[arg(long, alias = "etcd-snapshot-retention", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub snapshot_retention: u32,
    /// Where scheduled snapshots go (default `<data-dir>/db/snapshots`).
    #[arg(long, alias = "etcd-snapshot-dir")]
    pub snapshot_dir: Option<PathBuf>,
    /// Take no scheduled snapshots.
    #[arg(long, alias = "etcd-disable-snapshots")]
    pub disable_snapshots: bool,
}

impl SnapshotScheduleFlags {
    /// The policy these flags describe, or None with `--disable-snapshots`.
    pub fn policy(
        &self,
        data_dir: &std::path::Path,
    ) -> anyhow::Result<Option<schedule::SnapshotPolicy>> {
        if self.disable_snapshots {
            return Ok(None);
        }
        Ok(Some(schedule::SnapshotPolicy {
            schedule: schedule::Schedule::parse(&self.snapshot_schedule)?,
            retention: self.snapshot_retention as usize,
            dir: snapshot_dir(self.snapshot_dir.as_deref(), data_dir),
            node: schedule::node_name(),
        }))
    }
}

/// `--snapshot-dir`, defaulting to `<data-dir>/db/snapshots`.
pub fn snapshot_dir(flag: Option<&std::path::Path>, data_dir: &std::path::Path) -> PathBuf {
    flag.map(PathBuf::from)
        .unwrap_or_else(|| data_dir.join("db").join("snapshots"))
}

/// Runs a `capstan datastore` command.
pub fn run(args: DatastoreArgs) -> anyhow::Result<()> {
    match args.command {
        DatastoreCommand::Snapshot(SnapshotCommand::Save(a)) => snapshot::save(a),
        DatastoreCommand::Snapshot(SnapshotCommand::Restore(a)) => snapshot::restore(a),
        DatastoreCommand::Snapshot(SnapshotCommand::Ls(a)) => snapshot::ls(a),
    }
}
