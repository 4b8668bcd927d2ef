//! Latency samples and their summary (percentiles, throughput).

use std::time::Duration;

/// What one measured cell produced.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Successful operations (or delivered events).
    pub ok: u64,
    /// Failed operations (or events that never arrived).
    pub errors: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// Wall time of the run, from first start to last completion.
    pub elapsed: Duration,
    /// The first error seen, for the log.
    pub first_error: Option<String>,
}

impl Summary {
    /// Summarises `samples` (any order) measured over `elapsed`.
    pub fn from_samples(mut samples: Vec<Duration>, errors: u64, elapsed: Duration) -> Summary {
        samples.sort_unstable();
        Summary {
            ok: samples.len() as u64,
            errors,
            p50: percentile(&samples, 50.0),
            p99: percentile(&samples, 99.0),
            max: samples.last().copied().unwrap_or_default(),
            elapsed,
            first_error: None,
        }
    }

    /// Successful operations per second of wall time.
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }
}

/// Nearest-rank percentile of sorted samples; zero when there are none.
pub fn percentile(sorted: &[Duration], pct: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Milliseconds with a precision that suits the magnitude.
pub fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1000.0;
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|m| Duration::from_millis(*m)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let s = millis(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile(&s, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&s, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&s, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&millis(&[7]), 99.0), Duration::from_millis(7));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn summary_sorts_and_computes_throughput() {
        let s = Summary::from_samples(millis(&[3, 1, 2, 4]), 1, Duration::from_secs(2));
        assert_eq!((s.ok, s.errors), (4, 1));
        assert_eq!(s.p50, Duration::from_millis(2));
        assert_eq!(s.max, Duration::from_millis(4));
        assert!((s.throughput() - 2.0).abs() < 1e-9);
    }
}
