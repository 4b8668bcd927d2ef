//! Controller expectations (upstream's `ControllerExpectations`): after a controller creates or
//! deletes pods it must not act again on a cache that has not seen those writes yet, or it would
//! create or delete twice. Expectations name the pods created and the UIDs deleted; they are
//! satisfied once the cache shows every creation and no longer shows any deletion as live, or
//! after a timeout (a write the cache can never observe, e.g. a pod deleted right after creation).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Upstream's `ExpectationsTimeout`.
pub const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(5 * 60);

#[derive(Debug)]
struct Expected {
    creates: HashSet<String>,
    deletes: HashSet<String>,
    since: Instant,
}

/// Outstanding creations and deletions per controller key (`namespace/name`).
#[derive(Debug, Default)]
pub struct Expectations {
    inner: Mutex<HashMap<String, Expected>>,
    timeout: Option<Duration>,
}

impl Expectations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Expectations that expire after `timeout` instead of [`EXPECTATIONS_TIMEOUT`].
    pub fn with_timeout(timeout: Duration) -> Self {
        Expectations {
            inner: Mutex::default(),
            timeout: Some(timeout),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Expected>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entry<'a>(map: &'a mut HashMap<String, Expected>, key: &str) -> &'a mut Expected {
        map.entry(key.to_string()).or_insert_with(|| Expected {
            creates: HashSet::new(),
            deletes: HashSet::new(),
            since: Instant::now(),
        })
    }

    /// Records pods (by name) this controller just created.
    pub fn expect_creations(&self, key: &str, names: impl IntoIterator<Item = String>) {
        let mut map = self.lock();
        let e = Self::entry(&mut map, key);
        e.creates.extend(names);
        e.since = Instant::now();
    }

    /// Records pods (by UID) this controller just deleted.
    pub fn expect_deletions(&self, key: &str, uids: impl IntoIterator<Item = String>) {
        let mut map = self.lock();
        let e = Self::entry(&mut map, key);
        e.deletes.extend(uids);
        e.since = Instant::now();
    }

    /// Whether the cache caught up with this key's writes: `created(name)` says the cache holds
    /// the created pod, `deleted(uid)` that the pod is gone or terminating. Observed entries
    /// are dropped, so the check gets cheaper as the cache catches up.
    pub fn satisfied(
        &self,
        key: &str,
        created: impl Fn(&str) -> bool,
        deleted: impl Fn(&str) -> bool,
    ) -> bool {
        let mut map = self.lock();
        let timeout = self.timeout.unwrap_or(EXPECTATIONS_TIMEOUT);
        // Entries of objects that went away are dropped once they expire.
        map.retain(|k, e| k == key || e.since.elapsed() < timeout);
        let Some(e) = map.get_mut(key) else {
            return true;
        };
        e.creates.retain(|n| !created(n));
        e.deletes.retain(|u| !deleted(u));
        let expired = e.since.elapsed() >= timeout;
        if expired && (!e.creates.is_empty() || !e.deletes.is_empty()) {
            tracing::debug!(
                key,
                creates = e.creates.len(),
                deletes = e.deletes.len(),
                "expectations expired"
            );
        }
        if expired || (e.creates.is_empty() && e.deletes.is_empty()) {
            map.remove(key);
            return true;
        }
        false
    }

    /// Drops everything expected for `key` (its controller object is gone).
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn satisfied_only_once_the_cache_shows_every_write() {
        let e = Expectations::new();
        assert!(e.satisfied("ns/a", |_| false, |_| false));
        e.expect_creations("ns/a", ["a-1".to_string(), "a-2".to_string()]);
        e.expect_deletions("ns/a", ["uid-9".to_string()]);
        assert!(!e.satisfied("ns/a", |n| n == "a-1", |_| true));
        // a-1 was observed and dropped; a-2 now shows too.
        assert!(e.satisfied("ns/a", |n| n == "a-2", |_| true));
        assert!(e.satisfied("ns/b", |_| false, |_| false));
    }

    #[test]
    fn expectations_expire() {
        let e = Expectations::with_timeout(Duration::ZERO);
        e.expect_creations("ns/a", ["a-1".to_string()]);
        assert!(e.satisfied("ns/a", |_| false, |_| false));
    }

    #[test]
    fn forget_clears_a_key() {
        let e = Expectations::new();
        e.expect_deletions("ns/a", ["u".to_string()]);
        e.forget("ns/a");
        assert!(e.satisfied("ns/a", |_| false, |_| false));
    }
}
