//! A de-duplicating work queue with delayed retries (client-go's rate-limited work queue): a key
//! is queued at most once, a key re-added while being processed is queued again when its
//! processing ends, and failed keys come back after an exponential back-off. It holds at most
//! one entry per key, so its size is bounded by the number of objects.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// First retry delay; doubled per consecutive failure up to `max_backoff`.
const BACKOFF_BASE: Duration = Duration::from_millis(50);

#[derive(Debug)]
struct State<K> {
    ready: VecDeque<K>,
    queued: HashSet<K>,
    processing: HashSet<K>,
    /// Re-added while processing: queued again by `done`.
    dirty: HashSet<K>,
    delayed: BTreeMap<Instant, Vec<K>>,
    failures: HashMap<K, u32>,
}

/// The queue; share it behind an `Arc`.
#[derive(Debug)]
pub struct WorkQueue<K> {
    state: Mutex<State<K>>,
    notify: Notify,
    max_backoff: Duration,
}

impl<K: Hash + Eq + Clone> WorkQueue<K> {
    pub fn new(max_backoff: Duration) -> Self {
        WorkQueue {
            state: Mutex::new(State {
                ready: VecDeque::new(),
                queued: HashSet::new(),
                processing: HashSet::new(),
                dirty: HashSet::new(),
                delayed: BTreeMap::new(),
                failures: HashMap::new(),
            }),
            notify: Notify::new(),
            max_backoff,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue `key` now (no-op if already queued).
    pub fn add(&self, key: K) {
        let mut s = self.lock();
        if s.processing.contains(&key) {
            s.dirty.insert(key);
            return;
        }
        if s.queued.insert(key.clone()) {
            s.ready.push_back(key);
            drop(s);
            self.notify.notify_one();
        }
    }

    /// Queue `key` after `delay`.
    pub fn add_after(&self, key: K, delay: Duration) {
        let mut s = self.lock();
        s.delayed
            .entry(Instant::now() + delay)
            .or_default()
            .push(key);
        drop(s);
        // Wake a waiter so it re-computes its deadline.
        self.notify.notify_one();
    }

    /// Queue `key` again after its back-off (one more failure).
    pub fn retry(&self, key: K) {
        let n = {
            let mut s = self.lock();
            let n = s.failures.entry(key.clone()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        let delay = BACKOFF_BASE
            .saturating_mul(1u32 << n.min(16).saturating_sub(1))
            .min(self.max_backoff);
        self.add_after(key, delay);
    }

    /// The key succeeded: reset its back-off.
    pub fn forget(&self, key: &K) {
        self.lock().failures.remove(key);
    }

    /// Processing of `key` ended; queue it again if it was re-added meanwhile.
    pub fn done(&self, key: &K) {
        let mut s = self.lock();
        s.processing.remove(key);
        if s.dirty.remove(key) && s.queued.insert(key.clone()) {
            s.ready.push_back(key.clone());
            drop(s);
            self.notify.notify_one();
        }
    }

    /// Keys queued or waiting for a delay.
    pub fn len(&self) -> usize {
        let s = self.lock();
        s.ready.len() + s.delayed.values().map(Vec::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Moves due delayed keys to the ready queue; returns the next pending deadline.
    fn promote(&self, s: &mut State<K>) -> Option<Instant> {
        let now = Instant::now();
        while let Some(entry) = s.delayed.first_entry() {
            if *entry.key() > now {
                return Some(*entry.key());
            }
            for key in entry.remove() {
                if s.processing.contains(&key) {
                    s.dirty.insert(key);
                } else if s.queued.insert(key.clone()) {
                    s.ready.push_back(key);
                }
            }
        }
        None
    }

    /// The next key to process (call `done` after), or None once `stop` is cancelled.
    pub async fn next(&self, stop: &CancellationToken) -> Option<K> {
        loop {
            let notified = self.notify.notified();
            let deadline = {
                let mut s = self.lock();
                let deadline = self.promote(&mut s);
                if let Some(key) = s.ready.pop_front() {
                    s.queued.remove(&key);
                    s.processing.insert(key.clone());
                    if !s.ready.is_empty() {
                        // Let another worker pick up the rest.
                        self.notify.notify_one();
                    }
                    return Some(key);
                }
                deadline
            };
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = notified => {}
                _ = sleep => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_deduplicated_and_requeued_when_dirty() {
        let q = WorkQueue::new(Duration::from_secs(1));
        let stop = CancellationToken::new();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        let a = q.next(&stop).await.unwrap();
        assert_eq!(a, "a");
        q.add("a");
        assert_eq!(q.next(&stop).await, Some("b"));
        q.done(&"b");
        q.done(&"a");
        assert_eq!(q.next(&stop).await, Some("a"));
        q.done(&"a");
        assert!(q.is_empty());
        stop.cancel();
        assert_eq!(q.next(&stop).await, None);
    }

    #[tokio::test]
    async fn retries_come_back_after_a_backoff() {
        let q = WorkQueue::new(Duration::from_millis(100));
        let stop = CancellationToken::new();
        q.retry("x");
        let started = Instant::now();
        assert_eq!(q.next(&stop).await, Some("x"));
        assert!(started.elapsed() >= BACKOFF_BASE);
        q.done(&"x");
        q.forget(&"x");
    }
}
