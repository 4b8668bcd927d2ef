//! Blocking SQL of the SQLite backend; every function here runs on a `spawn_blocking` thread.
//!
//! Schema: `log` is the append-only history (one row per write, tombstones for deletes,
//! `prev_rev` links a row to the key's previous version); `kv` maps each live key to its
//! current row in `log`; `meta` holds the current and compacted revisions, so a revision
//! is never reused even when compaction removes the newest rows (tombstones).

use crate::fanout::Fanout;
use crate::{KeyValue, ListResult, Result, StoreError, WatchEvent};
use rusqlite::types::ToSql;
use rusqlite::{
    Connection, OptionalExtension, Row, Transaction, TransactionBehavior, named_params,
};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS log (
    rev INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    create_rev INTEGER NOT NULL,
    prev_rev INTEGER NOT NULL,
    deleted INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS log_key_rev ON log (key, rev);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, rev INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (name, value) VALUES ('current', 0), ('compacted', 0);
";

const CURRENT: &str = "current";
const COMPACTED: &str = "compacted";

/// Connection settings shared by the writer and the readers.
pub(super) fn configure(conn: &Connection) -> rusqlite::Result<()> {
    // WAL + synchronous=NORMAL: a commit is in the WAL file (the OS page cache) before it
    // returns, which survives kill -9 of the process; only power loss can drop the tail.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "busy_timeout", 5000)?;
    // Reads through a shared mapping instead of a read() per page and a private cache
    // per connection: large lists copy less, and idle connections hold no page cache.
    conn.pragma_update(None, "mmap_size", 1i64 << 30)?;
    conn.set_prepared_statement_cache_capacity(32);
    // Checkpoints run on their own thread (see `checkpoint`), not inside commits.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    // When the WAL rewinds, SQLite trims the file back to this size.
    conn.pragma_update(None, "journal_size_limit", 64i64 << 20)?;
    Ok(())
}

/// The single writing connection and the revision of its last commit.
pub(super) struct Writer {
    pub(super) conn: Connection,
    pub(super) revision: i64,
}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        StoreError::Backend(Box::new(err))
    }
}

pub(super) fn read_meta(conn: &Connection, name: &str) -> Result<i64> {
    let mut stmt = conn.prepare_cached("SELECT value FROM meta WHERE name = ?1")?;
    Ok(stmt.query_row([name], |row| row.get(0))?)
}

fn write_meta(tx: &Transaction<'_>, name: &str, value: i64) -> Result<()> {
    let mut stmt = tx.prepare_cached("UPDATE meta SET value = ?2 WHERE name = ?1")?;
    stmt.execute(rusqlite::params![name, value])?;
    Ok(())
}

/// The key range of a prefix read, as SQL bounds on a text column (UTF-8 byte order).
struct KeyRange {
    lower: String,
    lower_inclusive: bool,
    upper: Option<String>,
}

impl KeyRange {
    fn new(prefix: &str, start_after: Option<&str>) -> Self {
        let (lower, lower_inclusive) = match start_after {
            Some(after) if after >= prefix => (after.to_string(), false),
            _ => (prefix.to_string(), true),
        };
        KeyRange {
            lower,
            lower_inclusive,
            upper: prefix_end(prefix),
        }
    }

    /// `column >= :lower AND column < :upper` (operators and upper as needed).
    fn clause(&self, column: &str) -> String {
        let op = if self.lower_inclusive { ">=" } else { ">" };
        match self.upper {
            Some(_) => format!("{column} {op} :lower AND {column} < :upper"),
            None => format!("{column} {op} :lower"),
        }
    }

    fn params<'a>(&'a self, extra: &[(&'a str, &'a dyn ToSql)]) -> Vec<(&'a str, &'a dyn ToSql)> {
        let mut params: Vec<(&str, &dyn ToSql)> = vec![(":lower", &self.lower)];
        if let Some(upper) = &self.upper {
            params.push((":upper", upper));
        }
        params.extend_from_slice(extra);
        params
    }
}

/// The smallest string greater than every string starting with `prefix` (None: no bound).
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = last as u32 + 1;
        if next == 0xD800 {
            next = 0xE000; // skip the surrogate gap, which has no chars
        }
        if let Some(next) = char::from_u32(next) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

fn key_value(row: &Row<'_>) -> rusqlite::Result<KeyValue> {
    Ok(KeyValue {
        key: row.get(0)?,
        value: row.get(1)?,
        create_revision: row.get(2)?,
        mod_revision: row.get(3)?,
    })
}

pub(super) fn get(conn: &Connection, key: &str) -> Result<Option<KeyValue>> {
    let mut stmt = conn.prepare_cached(
        "SELECT k.key, l.value, l.create_rev, l.rev FROM kv k JOIN log l ON l.rev = k.rev WHERE k.key = ?1",
    )?;
    Ok(stmt.query_row([key], key_value).optional()?)
}

pub(super) fn count(conn: &Connection, prefix: &str) -> Result<usize> {
    let range = KeyRange::new(prefix, None);
    let sql = format!("SELECT count(*) FROM kv WHERE {}", range.clause("key"));
    let mut stmt = conn.prepare_cached(&sql)?;
    let count: i64 = stmt.query_row(&range.params(&[])[..], |row| row.get(0))?;
    Ok(usize::try_from(count).unwrap_or_default())
}

/// A range read at `revision` (None = current), in one read transaction.
pub(super) fn list(
    conn: &mut Connection,
    prefix: &str,
    start_after: Option<&str>,
    limit: usize,
    revision: Option<i64>,
) -> Result<ListResult> {
    let tx = conn.transaction()?;
    let current = read_meta(&tx, CURRENT)?;
    let at = match revision {
        None => current,
        Some(r) if r > current => {
            return Err(StoreError::FutureRevision {
                requested: r,
                current,
            });
        }
        Some(r) => {
            let compacted = read_meta(&tx, COMPACTED)?;
            if r < compacted {
                return Err(StoreError::Compacted {
                    requested: r,
                    compacted,
                });
            }
            r
        }
    };
    let range = KeyRange::new(prefix, start_after);
    let sql = if at == current {
        format!(
            "SELECT k.key, l.value, l.create_rev, l.rev FROM kv k JOIN log l ON l.rev = k.rev \
             WHERE {} ORDER BY k.key LIMIT :limit",
            range.clause("k.key")
        )
    } else {
        // Walks the (key, rev) index in key order, so LIMIT stops the scan early.
        format!(
            "SELECT l.key, l.value, l.create_rev, l.rev FROM log l \
             WHERE {} AND l.rev <= :at AND l.deleted = 0 AND NOT EXISTS \
             (SELECT 1 FROM log n WHERE n.key = l.key AND n.rev > l.rev AND n.rev <= :at) \
             ORDER BY l.key LIMIT :limit",
            range.clause("l.key")
        )
    };
    // One extra row tells whether more follow; -1 is SQLite's "no limit".
    let sql_limit: i64 = if limit == 0 {
        -1
    } else {
        i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1
    };
    let mut extra: Vec<(&str, &dyn ToSql)> = vec![(":limit", &sql_limit)];
    if at != current {
        extra.push((":at", &at));
    }
    let mut stmt = tx.prepare_cached(&sql)?;
    let mut items = stmt
        .query_map(&range.params(&extra)[..], key_value)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let more = limit > 0 && items.len() > limit;
    items.truncate(if limit == 0 { items.len() } else { limit });
    Ok(ListResult {
        items,
        revision: at,
        more,
    })
}

/// Up to `limit` events under `prefix` with revision > `after`, in revision order.
pub(super) fn history(
    conn: &mut Connection,
    prefix: &str,
    after: i64,
    limit: usize,
) -> Result<Vec<WatchEvent>> {
    let tx = conn.transaction()?;
    let compacted = read_meta(&tx, COMPACTED)?;
    if after < compacted {
        return Err(StoreError::Compacted {
            requested: after,
            compacted,
        });
    }
    let range = KeyRange::new(prefix, None);
    // `+l.key` keeps SQLite on the rev order (primary key) instead of the key index,
    // so a page costs a forward scan rather than a sort of the prefix's whole history.
    let sql = format!(
        "SELECT l.rev, l.key, l.value, l.create_rev, l.deleted, p.rev, p.value, p.create_rev \
         FROM log l LEFT JOIN log p ON p.rev = l.prev_rev \
         WHERE l.rev > :after AND {} ORDER BY l.rev LIMIT :limit",
        range.clause("+l.key")
    );
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = tx.prepare_cached(&sql)?;
    let rows = stmt.query_map(
        &range.params(&[(":after", &after), (":limit", &limit)])[..],
        event_row,
    )?;
    rows.map(|row| row?).collect()
}

/// Decodes one history row; the inner result flags a tombstone that lost its previous version.
fn event_row(row: &Row<'_>) -> rusqlite::Result<Result<WatchEvent>> {
    let revision: i64 = row.get(0)?;
    let key: String = row.get(1)?;
    let deleted: bool = row.get(4)?;
    let prev = match row.get::<_, Option<i64>>(5)? {
        Some(prev_rev) => Some(KeyValue {
            key: key.clone(),
            value: row.get(6)?,
            create_revision: row.get(7)?,
            mod_revision: prev_rev,
        }),
        None => None,
    };
    if !deleted {
        let kv = KeyValue {
            key,
            value: row.get(2)?,
            create_revision: row.get(3)?,
            mod_revision: revision,
        };
        return Ok(Ok(WatchEvent::Put { kv, prev }));
    }
    Ok(match prev {
        Some(prev) => Ok(WatchEvent::Delete { prev, revision }),
        None => Err(StoreError::Backend(
            format!("tombstone {revision} of {key} has no previous version").into(),
        )),
    })
}

/// Copies the database to `path` from one read snapshot.
pub(super) fn backup(conn: &Connection, path: &std::path::Path) -> Result<()> {
    let mut dest = Connection::open(path)?;
    let backup = rusqlite::backup::Backup::new(conn, &mut dest)?;
    // All pages in one step: a single snapshot that concurrent writes cannot restart,
    // unlike the paced default that sleeps between small steps.
    match backup.step(-1)? {
        rusqlite::backup::StepResult::Done => Ok(()),
        other => Err(StoreError::Backend(
            format!("backup did not complete: {other:?}").into(),
        )),
    }
}

/// The current version of `key` as (mod_rev, create_rev), read inside the write transaction.
fn current_version(tx: &Transaction<'_>, key: &str) -> Result<Option<(i64, i64)>> {
    let mut stmt = tx.prepare_cached(
        "SELECT l.rev, l.create_rev FROM kv k JOIN log l ON l.rev = k.rev WHERE k.key = ?1",
    )?;
    Ok(stmt
        .query_row([key], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?)
}

fn value_at(tx: &Connection, rev: i64) -> Result<Vec<u8>> {
    let mut stmt = tx.prepare_cached("SELECT value FROM log WHERE rev = ?1")?;
    Ok(stmt.query_row([rev], |row| row.get(0))?)
}

struct LogRow<'a> {
    rev: i64,
    key: &'a str,
    value: &'a [u8],
    create_rev: i64,
    prev_rev: i64,
    deleted: bool,
}

/// Appends to the log, points `kv` at the new row (or drops it on delete), bumps `current`.
fn append(tx: &Transaction<'_>, row: &LogRow<'_>) -> Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO log (rev, key, value, create_rev, prev_rev, deleted) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    stmt.execute(rusqlite::params![
        row.rev,
        row.key,
        row.value,
        row.create_rev,
        row.prev_rev,
        row.deleted
    ])?;
    if row.deleted {
        tx.prepare_cached("DELETE FROM kv WHERE key = ?1")?
            .execute([row.key])?;
    } else {
        let mut stmt = tx.prepare_cached("INSERT OR REPLACE INTO kv (key, rev) VALUES (?1, ?2)")?;
        stmt.execute(rusqlite::params![row.key, row.rev])?;
    }
    write_meta(tx, CURRENT, row.rev)
}

pub(super) fn create(w: &mut Writer, fanout: &Fanout, key: &str, value: Vec<u8>) -> Result<i64> {
    let rev = w.revision + 1;
    let tx = w
        .conn
        .transaction_with_behavior(TransactionBehavior::Immediate)?;
    if current_version(&tx, key)?.is_some() {
        return Err(StoreError::AlreadyExists(key.to_string()));
    }
    append(
        &tx,
        &LogRow {
            rev,
            key,
            value: &value,
            create_rev: rev,
            prev_rev: 0,
            deleted: false,
        },
    )?;
    tx.commit()?;
    w.revision = rev;
    fanout.publish(|| WatchEvent::Put {
        kv: KeyValue {
            key: key.to_string(),
            value,
            create_revision: rev,
            mod_revision: rev,
        },
        prev: None,
    });
    Ok(rev)
}

/// Checks the compare-and-swap condition; returns (mod_rev, create_rev) of the current version.
fn expect(tx: &Transaction<'_>, key: &str, expected: Option<i64>) -> Result<(i64, i64)> {
    let Some((mod_rev, create_rev)) = current_version(tx, key)? else {
        return Err(StoreError::NotFound(key.to_string()));
    };
    match expected {
        Some(expected) if expected != mod_rev => Err(StoreError::Conflict {
            key: key.to_string(),
            expected,
            actual: mod_rev,
        }),
        _ => Ok((mod_rev, create_rev)),
    }
}

pub(super) fn update(
    w: &mut Writer,
    fanout: &Fanout,
    key: &str,
    value: Vec<u8>,
    expected: i64,
) -> Result<i64> {
    let rev = w.revision + 1;
    let tx = w
        .conn
        .transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (prev_rev, create_rev) = expect(&tx, key, Some(expected))?;
    // The previous value is only needed for watchers; skip reading it otherwise.
    let prev_value = if fanout.has_watchers() {
        Some(value_at(&tx, prev_rev)?)
    } else {
        None
    };
    append(
        &tx,
        &LogRow {
            rev,
            key,
            value: &value,
            create_rev,
            prev_rev,
            deleted: false,
        },
    )?;
    tx.commit()?;
    w.revision = rev;
    // A first watcher may subscribe after the check above but read its history before the
    // commit: it sees this write only live, so check again and read the old value late.
    if fanout.has_watchers() {
        let prev_value = match prev_value {
            Some(value) => value,
            None => value_at(&w.conn, prev_rev)?,
        };
        fanout.publish(|| WatchEvent::Put {
            kv: KeyValue {
                key: key.to_string(),
                value,
                create_revision: create_rev,
                mod_revision: rev,
            },
            prev: Some(KeyValue {
                key: key.to_string(),
                value: prev_value,
                create_revision: create_rev,
                mod_revision: prev_rev,
            }),
        });
    }
    Ok(rev)
}

pub(super) fn delete(
    w: &mut Writer,
    fanout: &Fanout,
    key: &str,
    expected: Option<i64>,
) -> Result<(i64, KeyValue)> {
    let rev = w.revision + 1;
    let tx = w
        .conn
        .transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (prev_rev, create_rev) = expect(&tx, key, expected)?;
    let prev = KeyValue {
        key: key.to_string(),
        value: value_at(&tx, prev_rev)?,
        create_revision: create_rev,
        mod_revision: prev_rev,
    };
    append(
        &tx,
        &LogRow {
            rev,
            key,
            value: &[],
            create_rev,
            prev_rev,
            deleted: true,
        },
    )?;
    tx.commit()?;
    w.revision = rev;
    fanout.publish(|| WatchEvent::Delete {
        prev: prev.clone(),
        revision: rev,
    });
    Ok((rev, prev))
}

/// Records the new compaction point; returns the oldest log revision to sweep from, or
/// None when `revision` is not past the current compaction point.
pub(super) fn mark_compacted(w: &mut Writer, revision: i64) -> Result<Option<i64>> {
    if revision > w.revision {
        return Err(StoreError::FutureRevision {
            requested: revision,
            current: w.revision,
        });
    }
    let tx = w
        .conn
        .transaction_with_behavior(TransactionBehavior::Immediate)?;
    if revision <= read_meta(&tx, COMPACTED)? {
        return Ok(None);
    }
    write_meta(&tx, COMPACTED, revision)?;
    let oldest: Option<i64> = tx.query_row("SELECT min(rev) FROM log", [], |row| row.get(0))?;
    tx.commit()?;
    Ok(Some(oldest.unwrap_or(revision + 1)))
}

/// Deletes, among log rows with revision in [from, to), those no read at or after
/// `compacted` needs: versions superseded by then, and tombstones. Ascending sweeps keep
/// every intermediate state readable (a tombstone goes only after what it superseded).
pub(super) fn sweep(w: &mut Writer, from: i64, to: i64, compacted: i64) -> Result<usize> {
    let tx = w
        .conn
        .transaction_with_behavior(TransactionBehavior::Immediate)?;
    let deleted = tx.prepare_cached(
        "DELETE FROM log WHERE rev >= :from AND rev < :to AND rev <= :compacted AND (deleted = 1 OR EXISTS \
         (SELECT 1 FROM log n WHERE n.key = log.key AND n.rev > log.rev AND n.rev <= :compacted))",
    )?
    .execute(named_params! { ":from": from, ":to": to, ":compacted": compacted })?;
    tx.commit()?;
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_bounds_every_key_with_the_prefix() {
        let cases = [
            ("", None),
            ("/a/b/", Some("/a/b0")),
            ("a\u{10FFFF}", Some("b")),
            ("\u{D7FF}", Some("\u{E000}")),
            ("\u{10FFFF}", None),
        ];
        for (prefix, want) in cases {
            assert_eq!(prefix_end(prefix).as_deref(), want, "prefix {prefix:?}");
        }
    }
}
