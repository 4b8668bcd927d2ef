//! The scheduling queue (upstream `PriorityQueue`): an active heap ordered by priority then
//! arrival, a backoff area (1 s doubling to 10 s per attempt), and an unschedulable area whose
//! pods move back when a cluster event may have made room (or after five minutes).

use k8s_openapi::api::core::v1::Pod;
use std::cmp::Ordering;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Unschedulable pods are retried at least this often even without events.
pub const MAX_IN_UNSCHEDULABLE: Duration = Duration::from_secs(300);

/// A pod waiting in the queue, with its attempt history.
#[derive(Clone, Debug)]
pub struct QueuedPod {
    pub pod: Arc<Pod>,
    pub key: String,
    pub priority: i32,
    pub attempts: u32,
    /// When it first entered the queue (for latency), and when it last did.
    pub initial: Instant,
    pub timestamp: Instant,
}

#[derive(Debug, PartialEq, Eq)]
struct Active {
    priority: i32,
    seq: u64,
    key: String,
}

impl Ord for Active {
    fn cmp(&self, o: &Self) -> Ordering {
        // Max-heap: higher priority first, then earlier arrival.
        self.priority.cmp(&o.priority).then(o.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Active {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Active,
    Backoff(Instant),
    Unschedulable,
    InFlight,
}

#[derive(Debug, Default)]
pub struct SchedulingQueue {
    pods: HashMap<String, (QueuedPod, Place)>,
    active: BinaryHeap<Active>,
    backoff: BTreeSet<(Instant, u64, String)>,
    seq: u64,
    /// Bumped on every cluster event that may make room; compared with a pod's pop cycle.
    move_cycle: u64,
    pop_cycle: HashMap<String, u64>,
    /// Keys updated or deleted while being scheduled.
    changed_in_flight: HashMap<String, Option<QueuedPod>>,
}

/// Backoff after `attempts` failures: 1 s, 2 s, 4 s, 8 s, 10 s, ...
pub fn backoff_duration(attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(8);
    (INITIAL_BACKOFF * 2u32.pow(exp)).min(MAX_BACKOFF)
}

impl SchedulingQueue {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn push_active(&mut self, key: &str, priority: i32) {
        let seq = self.next_seq();
        self.active.push(Active {
            priority,
            seq,
            key: key.to_string(),
        });
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    pub fn active_len(&self) -> usize {
        self.pods
            .values()
            .filter(|(_, p)| *p == Place::Active)
            .count()
    }

    pub fn unschedulable_len(&self) -> usize {
        self.pods
            .values()
            .filter(|(_, p)| *p == Place::Unschedulable)
            .count()
    }

    /// A new or updated pending pod. Updates of queued pods keep their place, except that an
    /// unschedulable pod whose spec changed is tried again.
    pub fn add(&mut self, pod: Arc<Pod>, key: String, priority: i32, now: Instant) {
        match self.pods.get_mut(&key) {
            Some((q, Place::InFlight)) => {
                let mut updated = q.clone();
                updated.pod = pod;
                updated.priority = priority;
                self.changed_in_flight.insert(key, Some(updated));
            }
            Some((q, place)) => {
                let spec_changed =
                    q.pod.spec != pod.spec || q.pod.metadata.labels != pod.metadata.labels;
                q.pod = pod;
                let old_prio = q.priority;
                q.priority = priority;
                if *place == Place::Unschedulable && spec_changed {
                    *place = Place::Active;
                    self.push_active(&key, priority);
                } else if *place == Place::Active && old_prio != priority {
                    self.push_active(&key, priority);
                }
            }
            None => {
                let q = QueuedPod {
                    pod,
                    key: key.clone(),
                    priority,
                    attempts: 0,
                    initial: now,
                    timestamp: now,
                };
                self.pods.insert(key.clone(), (q, Place::Active));
                self.push_active(&key, priority);
            }
        }
    }

    pub fn delete(&mut self, key: &str) {
        match self.pods.get(key) {
            Some((_, Place::InFlight)) => {
                self.changed_in_flight.insert(key.to_string(), None);
            }
            Some(_) => {
                self.pods.remove(key);
            }
            None => {}
        }
    }

    /// The highest-priority active pod, marked in flight.
    pub fn pop(&mut self) -> Option<QueuedPod> {
        while let Some(a) = self.active.pop() {
            let Some((q, place)) = self.pods.get_mut(&a.key) else {
                continue;
            };
            // Stale heap entries (moved, re-prioritized) are skipped.
            if *place != Place::Active || q.priority != a.priority {
                continue;
            }
            *place = Place::InFlight;
            q.attempts += 1;
            let q = q.clone();
            self.pop_cycle.insert(a.key, self.move_cycle);
            return Some(q);
        }
        None
    }

    /// Scheduling finished with a placement (or the pod went away): forget it.
    pub fn done(&mut self, key: &str) {
        self.pods.remove(key);
        self.pop_cycle.remove(key);
        self.changed_in_flight.remove(key);
    }

    fn settle_in_flight(&mut self, key: &str) -> Option<QueuedPod> {
        let popped = self.pods.remove(key).map(|(q, _)| q)?;
        match self.changed_in_flight.remove(key) {
            Some(None) => None,
            Some(Some(mut updated)) => {
                updated.attempts = popped.attempts;
                updated.initial = popped.initial;
                Some(updated)
            }
            None => Some(popped),
        }
    }

    /// No node fits: park the pod until a relevant event, or back off if one already came
    /// while it was being scheduled.
    pub fn requeue_unschedulable(&mut self, key: &str, now: Instant) {
        let cycle = self.pop_cycle.remove(key).unwrap_or(0);
        let Some(mut q) = self.settle_in_flight(key) else {
            return;
        };
        q.timestamp = now;
        let place = if self.move_cycle > cycle {
            let until = now + backoff_duration(q.attempts);
            let seq = self.next_seq();
            self.backoff.insert((until, seq, key.to_string()));
            Place::Backoff(until)
        } else {
            Place::Unschedulable
        };
        self.pods.insert(key.to_string(), (q, place));
    }

    /// A transient failure (binding error): retry after backoff.
    pub fn requeue_backoff(&mut self, key: &str, now: Instant) {
        self.pop_cycle.remove(key);
        let Some(mut q) = self.settle_in_flight(key) else {
            return;
        };
        q.timestamp = now;
        let until = now + backoff_duration(q.attempts);
        let seq = self.next_seq();
        self.backoff.insert((until, seq, key.to_string()));
        self.pods
            .insert(key.to_string(), (q, Place::Backoff(until)));
    }

    /// A cluster event may have made room: unschedulable pods go to backoff or active.
    pub fn move_all_to_active_or_backoff(&mut self, now: Instant) {
        self.move_cycle += 1;
        let keys: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, (_, p))| *p == Place::Unschedulable)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.reactivate(&k, now);
        }
    }

    fn reactivate(&mut self, key: &str, now: Instant) {
        let Some((q, _)) = self.pods.get(key) else {
            return;
        };
        let until = q.timestamp + backoff_duration(q.attempts);
        let prio = q.priority;
        if until > now {
            let seq = self.next_seq();
            self.backoff.insert((until, seq, key.to_string()));
            if let Some(e) = self.pods.get_mut(key) {
                e.1 = Place::Backoff(until);
            }
        } else {
            if let Some(e) = self.pods.get_mut(key) {
                e.1 = Place::Active;
            }
            self.push_active(key, prio);
        }
    }

    /// Moves finished backoffs and long-parked unschedulable pods to active; returns the next
    /// time something will be due.
    pub fn flush(&mut self, now: Instant) -> Option<Instant> {
        while let Some(first) = self.backoff.first().cloned() {
            if first.0 > now {
                break;
            }
            self.backoff.pop_first();
            let key = first.2;
            if let Some((q, place)) = self.pods.get_mut(&key)
                && *place == Place::Backoff(first.0)
            {
                *place = Place::Active;
                let prio = q.priority;
                self.push_active(&key, prio);
            }
        }
        let stale: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, (q, p))| {
                *p == Place::Unschedulable && now >= q.timestamp + MAX_IN_UNSCHEDULABLE
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            self.reactivate(&k, now);
        }
        self.backoff.first().map(|b| b.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::pod;

    fn q_with(names: &[(&str, i32)], now: Instant) -> SchedulingQueue {
        let mut q = SchedulingQueue::default();
        for (n, prio) in names {
            q.add(
                Arc::new(pod(n, "0", "0")),
                format!("default/{n}"),
                *prio,
                now,
            );
        }
        q
    }

    #[test]
    fn pops_by_priority_then_arrival() {
        let now = Instant::now();
        let mut q = q_with(&[("a", 0), ("b", 10), ("c", 0), ("d", 10)], now);
        let order: Vec<String> = std::iter::from_fn(|| q.pop()).map(|p| p.key).collect();
        assert_eq!(order, ["default/b", "default/d", "default/a", "default/c"]);
    }

    #[test]
    fn backoff_doubles_to_ten_seconds() {
        let got: Vec<u64> = (1..=6).map(|a| backoff_duration(a).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn unschedulable_pods_wait_for_an_event_then_back_off() {
        let now = Instant::now();
        let mut q = q_with(&[("a", 0)], now);
        let p = q.pop().unwrap();
        q.requeue_unschedulable(&p.key, now);
        assert_eq!(q.unschedulable_len(), 1);
        assert!(q.pop().is_none());
        assert_eq!(q.flush(now + Duration::from_secs(60)), None);
        assert!(q.pop().is_none(), "no event yet: stays parked");
        q.move_all_to_active_or_backoff(now + Duration::from_millis(100));
        assert!(q.pop().is_none(), "still backing off 1 s");
        q.flush(now + Duration::from_secs(2));
        let p = q.pop().expect("active after backoff");
        assert_eq!(p.attempts, 2);
    }

    #[test]
    fn an_event_during_the_attempt_sends_the_pod_to_backoff() {
        let now = Instant::now();
        let mut q = q_with(&[("a", 0)], now);
        let p = q.pop().unwrap();
        q.move_all_to_active_or_backoff(now);
        q.requeue_unschedulable(&p.key, now);
        assert_eq!(q.unschedulable_len(), 0);
        assert_eq!(q.flush(now), Some(now + INITIAL_BACKOFF));
        q.flush(now + INITIAL_BACKOFF);
        assert!(q.pop().is_some());
    }

    #[test]
    fn long_parked_pods_are_retried_and_deletes_drop_pods() {
        let now = Instant::now();
        let mut q = q_with(&[("a", 0), ("b", 0)], now);
        let a = q.pop().unwrap();
        q.requeue_unschedulable(&a.key, now);
        q.delete("default/b");
        q.flush(now + MAX_IN_UNSCHEDULABLE);
        assert_eq!(q.pop().map(|p| p.key).as_deref(), Some("default/a"));
        assert!(q.pop().is_none());
        // Deleted while in flight: the requeue is dropped.
        q.delete("default/a");
        q.requeue_backoff("default/a", now);
        assert!(q.is_empty());
    }
}
