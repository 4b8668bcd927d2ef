//! CronJob schedules: standard five-field cron (and `@hourly` etc.) parsed with `croner`, in
//! `spec.timeZone`, a `TZ=`/`CRON_TZ=` prefix, or the controller's local zone (as upstream);
//! the most recent missed time with upstream's missed-start count, and an injectable clock.

use croner::Cron;
use croner::parser::{CronParser, Seconds};
use jiff::Timestamp;
use jiff::tz::TimeZone;

/// Upstream warns (TooManyMissedTimes) when more start times than this were missed.
pub const MAX_MISSED: usize = 100;

/// Where "now" comes from (a fake in tests).
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// The real clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    #[error("unparseable schedule {0:?}: {1}")]
    Unparseable(String, String),
    #[error("unknown time zone {0:?}")]
    UnknownTimeZone(String),
}

/// A parsed schedule in its time zone.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: Cron,
    tz: TimeZone,
}

impl Schedule {
    /// Parses `spec.schedule` with `spec.timeZone`.
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let mut expr = schedule.trim();
        let mut zone = time_zone.map(str::to_string);
        for prefix in ["TZ=", "CRON_TZ="] {
            if let Some(rest) = expr.strip_prefix(prefix) {
                let (z, e) = rest.split_once(char::is_whitespace).ok_or_else(|| {
                    ScheduleError::Unparseable(schedule.into(), "missing the schedule".into())
                })?;
                zone.get_or_insert_with(|| z.to_string());
                expr = e.trim();
            }
        }
        let tz = match zone.as_deref() {
            None | Some("") => TimeZone::system(),
            Some(z) => {
                TimeZone::get(z).map_err(|_| ScheduleError::UnknownTimeZone(z.to_string()))?
            }
        };
        if expr.split_whitespace().count() != 5 && !expr.starts_with('@') {
            return Err(ScheduleError::Unparseable(
                schedule.into(),
                "expected exactly 5 fields".into(),
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| ScheduleError::Unparseable(schedule.into(), e.to_string()))?;
        Ok(Schedule { cron, tz })
    }

    /// The first schedule time strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        self.cron
            .find_next_occurrence(&t.to_zoned(self.tz.clone()), false)
            .ok()
            .map(|z| z.timestamp())
    }

    /// The latest schedule time in (`earliest`, `now`] and how many there are (counted up to
    /// `MAX_MISSED + 1`).
    pub fn most_recent(&self, earliest: Timestamp, now: Timestamp) -> (Option<Timestamp>, usize) {
        let Some(first) = self.next_after(earliest).filter(|t| *t <= now) else {
            return (None, 0);
        };
        let latest = self
            .cron
            .find_previous_occurrence(&now.to_zoned(self.tz.clone()), true)
            .ok()
            .map(|z| z.timestamp())
            .filter(|t| *t >= first)
            .unwrap_or(first);
        let mut count = 1;
        let mut t = first;
        while count <= MAX_MISSED {
            match self.next_after(t) {
                Some(n) if n <= now => {
                    count += 1;
                    t = n;
                }
                _ => break,
            }
        }
        (Some(latest), count)
    }

    /// `t` as RFC 3339 in the schedule's zone (the scheduled-timestamp annotation).
    pub fn format(&self, t: Timestamp) -> String {
        let z = t.to_zoned(self.tz.clone());
        if z.offset().seconds() == 0 {
            z.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
        } else {
            z.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn parses_fields_nicknames_and_zones() {
        let s = Schedule::parse("*/5 * * * *", Some("UTC")).unwrap();
        assert_eq!(
            s.next_after(ts("2026-01-01T10:02:00Z")),
            Some(ts("2026-01-01T10:05:00Z"))
        );
        let h = Schedule::parse("@hourly", Some("Etc/UTC")).unwrap();
        assert_eq!(
            h.next_after(ts("2026-01-01T10:00:00Z")),
            Some(ts("2026-01-01T11:00:00Z"))
        );
        let z = Schedule::parse("TZ=Europe/Berlin 0 9 * * *", None).unwrap();
        assert_eq!(
            z.next_after(ts("2026-01-01T00:00:00Z")),
            Some(ts("2026-01-01T08:00:00Z"))
        );
        assert_eq!(
            z.format(ts("2026-01-01T08:00:00Z")),
            "2026-01-01T09:00:00+01:00"
        );
        assert!(matches!(
            Schedule::parse("0 9 * * *", Some("Mars/Olympus")),
            Err(ScheduleError::UnknownTimeZone(_))
        ));
        assert!(matches!(
            Schedule::parse("0 0 9 * * *", None),
            Err(ScheduleError::Unparseable(..))
        ));
    }

    #[test]
    fn most_recent_counts_missed_times() {
        let s = Schedule::parse("* * * * *", Some("UTC")).unwrap();
        let (t, n) = s.most_recent(ts("2026-01-01T10:00:00Z"), ts("2026-01-01T10:00:59Z"));
        assert_eq!((t, n), (None, 0));
        let (t, n) = s.most_recent(ts("2026-01-01T10:00:00Z"), ts("2026-01-01T10:03:30Z"));
        assert_eq!((t, n), (Some(ts("2026-01-01T10:03:00Z")), 3));
        let (t, n) = s.most_recent(ts("2026-01-01T10:00:00Z"), ts("2026-01-01T13:00:00Z"));
        assert_eq!(t, Some(ts("2026-01-01T13:00:00Z")));
        assert!(n > MAX_MISSED);
        assert_eq!(s.format(ts("2026-01-01T13:00:00Z")), "2026-01-01T13:00:00Z");
    }
}
