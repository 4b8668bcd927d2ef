//! An in-memory [`Store`] with the same semantics as the SQLite backend, for fast tests.
//! Nothing is persisted.

use crate::fanout::{Fanout, HISTORY_PAGE, spawn_watch};
use crate::{
    KeyValue, ListResult, Result, SnapshotInfo, Store, StoreError, WatchEvent, WatchReceiver,
};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

/// The in-memory backend; clones share the same data.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    fanout: FanoutCell,
}

/// `Fanout` has no `Default`; this wrapper gives it one.
struct FanoutCell(Fanout);

impl Default for FanoutCell {
    fn default() -> Self {
        FanoutCell(Fanout::new())
    }
}

#[derive(Default)]
struct State {
    revision: i64,
    compacted: i64,
    current: BTreeMap<String, KeyValue>,
    /// Versions per key in revision order (None = deleted), for lists at older revisions.
    versions: BTreeMap<String, Vec<(i64, Option<KeyValue>)>>,
    /// Every event at or after the compaction point, by revision.
    events: BTreeMap<i64, WatchEvent>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-written: every write
        // mutates it only after all checks passed.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a write (the event at the next revision) in state and history, and publishes it.
    fn commit(&self, state: &mut State, event: WatchEvent) -> i64 {
        let rev = event.revision();
        state.revision = rev;
        let key = event.key().to_string();
        let new = match &event {
            WatchEvent::Put { kv, .. } => {
                state.current.insert(key.clone(), kv.clone());
                Some(kv.clone())
            }
            WatchEvent::Delete { .. } => {
                state.current.remove(&key);
                None
            }
        };
        state.versions.entry(key).or_default().push((rev, new));
        state.events.insert(rev, event.clone());
        self.inner.fanout.0.publish(|| event);
        rev
    }

    fn history(&self, prefix: &str, after: i64) -> Result<Vec<WatchEvent>> {
        let state = self.state();
        if after < state.compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted: state.compacted,
            });
        }
        let events = state
            .events
            .range((Bound::Excluded(after), Bound::Unbounded))
            .map(|(_, event)| event)
            .filter(|event| event.key().starts_with(prefix))
            .take(HISTORY_PAGE)
            .cloned()
            .collect();
        Ok(events)
    }
}

/// Lower bound of a range read: the prefix itself, or strictly after `start_after`.
fn lower_bound<'a>(prefix: &'a str, start_after: Option<&'a str>) -> Bound<&'a str> {
    match start_after {
        Some(after) if after >= prefix => Bound::Excluded(after),
        _ => Bound::Included(prefix),
    }
}

/// Takes up to `limit` (0 = all) items and reports whether more followed.
fn page(mut items: impl Iterator<Item = KeyValue>, limit: usize) -> (Vec<KeyValue>, bool) {
    if limit == 0 {
        return (items.collect(), false);
    }
    let taken: Vec<KeyValue> = items.by_ref().take(limit).collect();
    let more = items.next().is_some();
    (taken, more)
}

fn check_revision(state: &State, revision: Option<i64>) -> Result<i64> {
    match revision {
        None => Ok(state.revision),
        Some(r) if r > state.revision => Err(StoreError::FutureRevision {
            requested: r,
            current: state.revision,
        }),
        Some(r) if r < state.compacted => Err(StoreError::Compacted {
            requested: r,
            compacted: state.compacted,
        }),
        Some(r) => Ok(r),
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn current_revision(&self) -> Result<i64> {
        Ok(self.state().revision)
    }

    async fn compacted_revision(&self) -> Result<i64> {
        Ok(self.state().compacted)
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        Ok(self.state().current.get(key).cloned())
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: Option<i64>,
    ) -> Result<ListResult> {
        let state = self.state();
        let at = check_revision(&state, revision)?;
        let range = (lower_bound(prefix, start_after), Bound::Unbounded);
        let (items, more) = if at == state.revision {
            let items = state
                .current
                .range::<str, _>(range)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, kv)| kv.clone());
            page(items, limit)
        } else {
            let items = state
                .versions
                .range::<str, _>(range)
                .take_while(|(k, _)| k.starts_with(prefix))
                .filter_map(|(_, versions)| {
                    let latest = versions.iter().rev().find(|(rev, _)| *rev <= at)?;
                    latest.1.clone()
                });
            page(items, limit)
        };
        Ok(ListResult {
            items,
            revision: at,
            more,
        })
    }

    async fn count(&self, prefix: &str) -> Result<usize> {
        let state = self.state();
        let count = state
            .current
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .count();
        Ok(count)
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64> {
        let mut state = self.state();
        if state.current.contains_key(key) {
            return Err(StoreError::AlreadyExists(key.to_string()));
        }
        let rev = state.revision + 1;
        let kv = KeyValue {
            key: key.to_string(),
            value,
            create_revision: rev,
            mod_revision: rev,
        };
        Ok(self.commit(&mut state, WatchEvent::Put { kv, prev: None }))
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected_revision: i64) -> Result<i64> {
        let mut state = self.state();
        let Some(prev) = state.current.get(key).cloned() else {
            return Err(StoreError::NotFound(key.to_string()));
        };
        if prev.mod_revision != expected_revision {
            return Err(StoreError::Conflict {
                key: key.to_string(),
                expected: expected_revision,
                actual: prev.mod_revision,
            });
        }
        let kv = KeyValue {
            key: key.to_string(),
            value,
            create_revision: prev.create_revision,
            mod_revision: state.revision + 1,
        };
        Ok(self.commit(
            &mut state,
            WatchEvent::Put {
                kv,
                prev: Some(prev),
            },
        ))
    }

    async fn delete(&self, key: &str, expected_revision: Option<i64>) -> Result<(i64, KeyValue)> {
        let mut state = self.state();
        let Some(prev) = state.current.get(key).cloned() else {
            return Err(StoreError::NotFound(key.to_string()));
        };
        if let Some(expected) = expected_revision.filter(|e| *e != prev.mod_revision) {
            return Err(StoreError::Conflict {
                key: key.to_string(),
                expected,
                actual: prev.mod_revision,
            });
        }
        let revision = state.revision + 1;
        let rev = self.commit(
            &mut state,
            WatchEvent::Delete {
                prev: prev.clone(),
                revision,
            },
        );
        Ok((rev, prev))
    }

    async fn watch(&self, prefix: &str, after_revision: i64) -> Result<WatchReceiver> {
        let live = self.inner.fanout.0.subscribe();
        let first = self.history(prefix, after_revision)?;
        let store = self.clone();
        let owned_prefix = prefix.to_string();
        let history = move |after: i64| {
            let result = store.history(&owned_prefix, after);
            async move { result }
        };
        Ok(spawn_watch(
            prefix.to_string(),
            after_revision,
            first,
            live,
            history,
        ))
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        let mut state = self.state();
        if revision > state.revision {
            return Err(StoreError::FutureRevision {
                requested: revision,
                current: state.revision,
            });
        }
        if revision <= state.compacted {
            return Ok(());
        }
        state.compacted = revision;
        state.events = state.events.split_off(&revision);
        state.versions.retain(|_, versions| {
            compact_versions(versions, revision);
            !versions.is_empty()
        });
        Ok(())
    }

    async fn snapshot(&self, _dest: &Path) -> Result<SnapshotInfo> {
        Err(StoreError::Unsupported(
            "the memory store has no persistent state to snapshot".into(),
        ))
    }
}

/// Keeps the version current at `revision` (unless a deletion) and everything newer.
fn compact_versions(versions: &mut Vec<(i64, Option<KeyValue>)>, revision: i64) {
    let Some(current_at) = versions.iter().rposition(|(rev, _)| *rev <= revision) else {
        return;
    };
    let keep_from = if versions[current_at].1.is_some() {
        current_at
    } else {
        current_at + 1
    };
    versions.drain(..keep_from);
}
