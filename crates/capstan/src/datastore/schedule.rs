//! Scheduled snapshots (k3s's `etcd-snapshot-schedule-cron` and `-retention`): a task owned
//! by the server saves `capstan-snapshot-<node>-<unix time>` into the snapshot dir on a cron
//! schedule and keeps the newest `retention` of them.
//!
//! The schedule is a cron expression of 5 fields (minute precision, as in k3s) or 6 with a
//! leading seconds field (`*/2 * * * * *`), which the end-to-end tests use to see retention
//! at work in seconds. The time zone is the host's.

use anyhow::{Context, bail};
use capstan_store::{SnapshotInfo, Store};
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use jiff::Zoned;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Name prefix of scheduled snapshots (the only ones retention prunes).
pub const SCHEDULED_PREFIX: &str = "capstan-snapshot";
/// Name prefix of `capstan datastore snapshot save` without a file name.
pub const ON_DEMAND_PREFIX: &str = "on-demand";
/// Suffix of a snapshot being written; renamed into place when complete.
const PARTIAL_SUFFIX: &str = ".partial";

/// A parsed cron schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
}

impl Schedule {
    /// Parses a 5-field (or 6-field, seconds first) cron expression.
    pub fn parse(expr: &str) -> anyhow::Result<Schedule> {
        let fields = expr.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            bail!(
                "snapshot schedule {expr:?} has {fields} fields; \
                 expected 5 (minute hour day-of-month month day-of-week) or 6 (seconds first)"
            );
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(expr)
            .with_context(|| format!("invalid snapshot schedule {expr:?}"))?;
        Ok(Schedule { cron })
    }

    /// The first fire time strictly after `now`.
    pub fn next_after(&self, now: &Zoned) -> anyhow::Result<Zoned> {
        self.cron
            .find_next_occurrence(now, false)
            .with_context(|| format!("no next time for schedule {:?}", self.cron.as_str()))
    }
}

/// What the server's snapshot task does.
#[derive(Debug, Clone)]
pub struct SnapshotPolicy {
    pub schedule: Schedule,
    /// Scheduled snapshots kept; older ones are deleted.
    pub retention: usize,
    pub dir: PathBuf,
    /// The node name in file names (the host name).
    pub node: String,
}

/// A snapshot file found in a snapshot dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    /// Seconds since the epoch, from the file name.
    pub unix: i64,
    pub scheduled: bool,
}

/// `<prefix>-<node>-<unix>`, k3s's naming.
pub fn snapshot_name(prefix: &str, node: &str, unix: i64) -> String {
    format!("{prefix}-{node}-{unix}")
}

/// The host name, for snapshot names; `capstan` if it cannot be read.
pub fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "capstan".into())
}

fn parse_name(name: &str) -> Option<(bool, i64)> {
    let scheduled = if name.starts_with(&format!("{SCHEDULED_PREFIX}-")) {
        true
    } else if name.starts_with(&format!("{ON_DEMAND_PREFIX}-")) {
        false
    } else {
        return None;
    };
    let (_, unix) = name.rsplit_once('-')?;
    Some((scheduled, unix.parse().ok()?))
}

/// Snapshots in `dir` (scheduled and on-demand), oldest first; a missing dir has none.
pub fn list_snapshots(dir: &Path) -> anyhow::Result<Vec<SnapshotFile>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).with_context(|| format!("reading {}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((scheduled, unix)) = parse_name(&name) else {
            continue;
        };
        let meta = entry.metadata().with_context(|| format!("stat {name}"))?;
        if !meta.is_file() {
            continue;
        }
        out.push(SnapshotFile {
            name,
            path: entry.path(),
            size: meta.len(),
            unix,
            scheduled,
        });
    }
    out.sort_by(|a, b| (a.unix, &a.name).cmp(&(b.unix, &b.name)));
    Ok(out)
}

/// Deletes the oldest scheduled snapshots so that at most `keep` remain; returns the
/// deleted paths. On-demand snapshots are never pruned.
pub fn prune(dir: &Path, keep: usize) -> anyhow::Result<Vec<PathBuf>> {
    let scheduled: Vec<SnapshotFile> = list_snapshots(dir)?
        .into_iter()
        .filter(|s| s.scheduled)
        .collect();
    let excess = scheduled.len().saturating_sub(keep);
    let mut deleted = Vec::with_capacity(excess);
    for old in scheduled.into_iter().take(excess) {
        std::fs::remove_file(&old.path)
            .with_context(|| format!("deleting old snapshot {}", old.path.display()))?;
        deleted.push(old.path);
    }
    Ok(deleted)
}

/// Saves a snapshot of `store` to `dest` through a partial file renamed into place, so a
/// failed or interrupted save never leaves a truncated snapshot under the final name.
/// `before_rename` runs between the two (the scheduler prunes there, so the directory
/// never holds more than `retention` complete snapshots).
pub async fn save_atomically(
    store: &dyn Store,
    dest: &Path,
    before_rename: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<SnapshotInfo> {
    let name = dest
        .file_name()
        .with_context(|| format!("{} is not a file path", dest.display()))?
        .to_string_lossy();
    let partial = dest.with_file_name(format!(".{name}{PARTIAL_SUFFIX}"));
    let _ = std::fs::remove_file(&partial);
    let info = match store.snapshot(&partial).await {
        Ok(info) => info,
        Err(err) => {
            let _ = std::fs::remove_file(&partial);
            return Err(
                anyhow::Error::new(err).context(format!("saving a snapshot to {}", dest.display()))
            );
        }
    };
    let finish = before_rename().and_then(|()| {
        std::fs::rename(&partial, dest)
            .with_context(|| format!("moving the snapshot into {}", dest.display()))
    });
    if let Err(err) = finish {
        let _ = std::fs::remove_file(&partial);
        return Err(err);
    }
    Ok(info)
}

impl SnapshotPolicy {
    /// Takes the snapshot due at `unix` and prunes to the retention.
    pub async fn take(
        &self,
        store: &dyn Store,
        unix: i64,
    ) -> anyhow::Result<(PathBuf, SnapshotInfo)> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating snapshot dir {}", self.dir.display()))?;
        let dest = self
            .dir
            .join(snapshot_name(SCHEDULED_PREFIX, &self.node, unix));
        let keep_old = self.retention.saturating_sub(1);
        let info = save_atomically(store, &dest, || {
            for path in prune(&self.dir, keep_old)? {
                tracing::info!(path = %path.display(), "deleted old snapshot (retention)");
            }
            Ok(())
        })
        .await?;
        Ok((dest, info))
    }

    /// Starts the schedule; the task ends when `shutdown` turns true or its sender drops.
    pub fn spawn(
        self,
        store: Arc<dyn Store>,
        mut shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let now = Zoned::now();
                let next = match self.schedule.next_after(&now) {
                    Ok(next) => next,
                    Err(err) => {
                        tracing::error!(error = format!("{err:#}"), "snapshot schedule stopped");
                        return;
                    }
                };
                let wait = Duration::try_from(next.timestamp().duration_since(now.timestamp()))
                    .unwrap_or_default();
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
                let unix = next.timestamp().as_second();
                tokio::select! {
                    result = self.take(&*store, unix) => match result {
                        Ok((path, info)) => tracing::info!(
                            path = %path.display(), revision = info.revision, size = info.size,
                            backend = info.backend, "saved scheduled snapshot"
                        ),
                        Err(err) => tracing::error!(error = format!("{err:#}"), "scheduled snapshot failed"),
                    },
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_store::SqliteStore;

    fn at(text: &str) -> Zoned {
        text.parse().unwrap()
    }

    #[test]
    fn default_schedule_fires_at_midnight_and_noon() {
        let s = Schedule::parse("0 */12 * * *").unwrap();
        let next = s.next_after(&at("2026-11-27T05:30:00+00:00[UTC]")).unwrap();
        assert_eq!(next, at("2026-11-27T12:00:00+00:00[UTC]"));
        let next = s.next_after(&next).unwrap();
        assert_eq!(next, at("2026-11-28T00:00:00+00:00[UTC]"));
    }

    #[test]
    fn six_fields_have_seconds_first() {
        let s = Schedule::parse("*/2 * * * * *").unwrap();
        let next = s
            .next_after(&at("2026-11-27T05:30:01.5+00:00[UTC]"))
            .unwrap();
        assert_eq!(next, at("2026-11-27T05:30:02+00:00[UTC]"));
        // Strictly after: a fire time is not its own successor.
        assert_eq!(
            s.next_after(&next).unwrap(),
            at("2026-11-27T05:30:04+00:00[UTC]")
        );
    }

    #[test]
    fn malformed_schedules_are_refused() {
        for bad in ["", "* * * *", "61 * * * *", "* * * * * * *", "every day"] {
            assert!(Schedule::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    fn touch(dir: &Path, name: &str) {
        std::fs::write(dir.join(name), name).unwrap();
    }

    #[test]
    fn prune_keeps_the_newest_scheduled_and_every_other_file() {
        let dir = tempfile::tempdir().unwrap();
        for unix in [100, 30, 2000, 400] {
            touch(dir.path(), &snapshot_name(SCHEDULED_PREFIX, "node-a", unix));
        }
        touch(dir.path(), &snapshot_name(ON_DEMAND_PREFIX, "node-a", 1));
        touch(dir.path(), "notes.txt");
        let deleted = prune(dir.path(), 2).unwrap();
        let names: Vec<String> = deleted
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["capstan-snapshot-node-a-30", "capstan-snapshot-node-a-100"]
        );
        let left: Vec<String> = list_snapshots(dir.path())
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(
            left,
            [
                "on-demand-node-a-1",
                "capstan-snapshot-node-a-400",
                "capstan-snapshot-node-a-2000"
            ]
        );
        assert!(dir.path().join("notes.txt").exists());
        assert!(prune(&dir.path().join("missing"), 1).unwrap().is_empty());
    }

    #[tokio::test]
    async fn scheduled_takes_never_leave_more_than_retention() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("state.db")).unwrap();
        store.create("/registry/a", b"1".to_vec()).await.unwrap();
        let policy = SnapshotPolicy {
            schedule: Schedule::parse("* * * * *").unwrap(),
            retention: 3,
            dir: dir.path().join("snapshots"),
            node: "n1".into(),
        };
        for unix in 1..=7 {
            let (path, _) = policy.take(&store, unix * 60).await.unwrap();
            assert!(path.exists());
            let all = list_snapshots(&policy.dir).unwrap();
            assert!(all.len() <= 3, "{all:?}");
        }
        let left: Vec<i64> = list_snapshots(&policy.dir)
            .unwrap()
            .iter()
            .map(|s| s.unix)
            .collect();
        assert_eq!(left, [300, 360, 420]);
        // No partial files are left behind.
        assert_eq!(std::fs::read_dir(&policy.dir).unwrap().count(), 3);
    }

    #[tokio::test]
    async fn the_task_stops_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let policy = SnapshotPolicy {
            schedule: Schedule::parse("0 0 1 1 *").unwrap(),
            retention: 1,
            dir: dir.path().to_path_buf(),
            node: "n1".into(),
        };
        let (tx, rx) = watch::channel(false);
        let store = SqliteStore::open(&dir.path().join("state.db")).unwrap();
        let task = policy.spawn(Arc::new(store), rx);
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("task stopped")
            .unwrap();
    }
}
