//! Restart and image-pull back-off as upstream's: 10 s, doubling up to 5 min, forgotten once
//! the thing ran (or was last tried) longer ago than the reset window.

use std::collections::HashMap;
use std::time::Duration;

use jiff::Timestamp;

/// Upstream's initial container restart back-off.
pub const INITIAL: Duration = Duration::from_secs(10);
/// Upstream's maximum container restart back-off.
pub const MAX: Duration = Duration::from_secs(300);
/// A container that ran this long starts over at [`INITIAL`].
pub const RESET_AFTER: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug)]
struct Entry {
    delay: Duration,
    last_update: Timestamp,
}

/// Per-key back-off state (keys: container names, image references).
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    reset_after: Duration,
    entries: HashMap<String, Entry>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(INITIAL, MAX, RESET_AFTER)
    }
}

fn elapsed(from: Timestamp, to: Timestamp) -> Duration {
    let nanos = to.as_nanosecond() - from.as_nanosecond();
    Duration::from_nanos(nanos.clamp(0, u64::MAX as i128) as u64)
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, reset_after: Duration) -> Self {
        Backoff {
            initial,
            max,
            reset_after,
            entries: HashMap::new(),
        }
    }

    /// The remaining wait when `key` failed at `since` and is still in back-off at `now`.
    pub fn remaining(&self, key: &str, since: Timestamp, now: Timestamp) -> Option<Duration> {
        let entry = self.entries.get(key)?;
        let waited = elapsed(since, now);
        (waited < entry.delay).then(|| entry.delay - waited)
    }

    /// The current delay of `key` (for messages), if any.
    pub fn delay(&self, key: &str) -> Option<Duration> {
        self.entries.get(key).map(|e| e.delay)
    }

    /// Records another attempt at `now`: the first (or first after the reset window) sets the
    /// initial delay, later ones double it up to the maximum.
    pub fn next(&mut self, key: &str, now: Timestamp) {
        let entry = match self.entries.get(key) {
            Some(e) if elapsed(e.last_update, now) <= self.reset_after => Entry {
                delay: (e.delay * 2).min(self.max),
                last_update: now,
            },
            _ => Entry {
                delay: self.initial,
                last_update: now,
            },
        };
        self.entries.insert(key.to_string(), entry);
    }

    pub fn forget(&mut self, key: &str) {
        self.entries.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).expect("valid timestamp")
    }

    #[test]
    fn first_restart_is_immediate_then_doubles_to_the_cap() {
        let mut b = Backoff::default();
        assert_eq!(b.remaining("c", at(0), at(0)), None);
        b.next("c", at(0));
        // Exits again 1 s later: 10 s back-off counted from the exit.
        assert_eq!(b.remaining("c", at(1), at(2)), Some(Duration::from_secs(9)));
        assert_eq!(b.remaining("c", at(1), at(11)), None);
        let mut expected = 10;
        for i in 0..8 {
            b.next("c", at(20 + i));
            expected = (expected * 2).min(300);
            assert_eq!(b.delay("c"), Some(Duration::from_secs(expected)));
        }
        assert_eq!(b.delay("c"), Some(MAX));
    }

    #[test]
    fn resets_after_ten_minutes_of_running() {
        let mut b = Backoff::default();
        b.next("c", at(0));
        b.next("c", at(5));
        assert_eq!(b.delay("c"), Some(Duration::from_secs(20)));
        b.next("c", at(5 + 601));
        assert_eq!(b.delay("c"), Some(INITIAL));
        b.forget("c");
        assert_eq!(b.delay("c"), None);
    }
}
