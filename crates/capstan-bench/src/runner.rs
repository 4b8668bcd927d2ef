//! Load generators: closed loop (N clients, each one request at a time) and open loop (a fixed
//! request rate, independent of how fast answers come). Both are bounded in count and time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::stats::Summary;

/// One operation: (client index, operation index) → done.
pub type Op = Arc<dyn Fn(usize, u64) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

/// Bounds of one measured run.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_ops: u64,
    pub max_time: Duration,
}

/// `clients` tasks each issue `op` back to back until `limits` is reached.
pub async fn closed_loop(clients: usize, limits: Limits, op: Op) -> anyhow::Result<Summary> {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for client in 0..clients {
        let (next, op) = (next.clone(), op.clone());
        tasks.spawn(async move {
            let mut samples = Vec::new();
            let (mut errors, mut first_error) = (0u64, None);
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= limits.max_ops || start.elapsed() >= limits.max_time {
                    break;
                }
                let t0 = Instant::now();
                match op(client, index).await {
                    Ok(()) => samples.push(t0.elapsed()),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            (samples, errors, first_error)
        });
    }
    collect(tasks, start).await
}

async fn collect(
    mut tasks: JoinSet<(Vec<Duration>, u64, Option<String>)>,
    start: Instant,
) -> anyhow::Result<Summary> {
    let (mut samples, mut errors, mut first_error) = (Vec::new(), 0, None);
    while let Some(joined) = tasks.join_next().await {
        let (s, e, f) = joined?;
        samples.extend(s);
        errors += e;
        first_error = first_error.or(f);
    }
    let mut summary = Summary::from_samples(samples, errors, start.elapsed());
    summary.first_error = first_error;
    Ok(summary)
}

/// Result of an open-loop run.
pub struct OpenLoop {
    /// Send → response of each request.
    pub service: Summary,
    /// Intended send time → response: includes any lag of the sender (coordinated omission).
    pub scheduled: Summary,
}

/// Issues `op` at `rate` per second for `duration`, with at most `max_in_flight` outstanding;
/// `clients` connections take the requests in turn.
pub async fn open_loop(
    rate: u32,
    duration: Duration,
    clients: usize,
    max_in_flight: usize,
    op: Op,
) -> anyhow::Result<OpenLoop> {
    let total = (rate as f64 * duration.as_secs_f64()) as u64;
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let gate = Arc::new(Semaphore::new(max_in_flight));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let hard_stop = duration * 2;
    let mut tasks = JoinSet::new();
    for index in 0..total {
        ticker.tick().await;
        if start.elapsed() > hard_stop {
            break;
        }
        let due = start + period.mul_f64(index as f64);
        let permit = gate.clone().acquire_owned().await?;
        let op = op.clone();
        tasks.spawn(async move {
            let t0 = Instant::now();
            let result = op((index as usize) % clients, index).await;
            drop(permit);
            result.map(|()| (t0.elapsed(), due.elapsed()))
        });
    }
    let (mut service, mut scheduled, mut errors, mut first_error) = (vec![], vec![], 0, None);
    while let Some(joined) = tasks.join_next().await {
        match joined? {
            Ok((s, d)) => {
                service.push(s);
                scheduled.push(d);
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let elapsed = start.elapsed();
    let mut service = Summary::from_samples(service, errors, elapsed);
    service.first_error = first_error;
    let scheduled = Summary::from_samples(scheduled, errors, elapsed);
    Ok(OpenLoop { service, scheduled })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper(ms: u64) -> Op {
        Arc::new(move |_, _| {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(())
            })
        })
    }

    #[tokio::test]
    async fn closed_loop_stops_at_max_ops() {
        let limits = Limits {
            max_ops: 20,
            max_time: Duration::from_secs(10),
        };
        let s = closed_loop(4, limits, sleeper(1)).await.expect("run");
        assert_eq!((s.ok, s.errors), (20, 0));
        assert!(s.p50 >= Duration::from_millis(1));
    }

    #[tokio::test]
    async fn closed_loop_stops_at_max_time_and_counts_errors() {
        let failing: Op = Arc::new(|_, i| {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if i % 2 == 0 {
                    Ok(())
                } else {
                    anyhow::bail!("odd {i}")
                }
            })
        });
        let limits = Limits {
            max_ops: u64::MAX,
            max_time: Duration::from_millis(100),
        };
        let s = closed_loop(2, limits, failing).await.expect("run");
        assert!(s.ok + s.errors < 100, "time bound ignored: {s:?}");
        assert!(s.errors > 0 && s.first_error.is_some());
    }

    #[tokio::test]
    async fn open_loop_issues_rate_times_duration() {
        let r = open_loop(200, Duration::from_millis(250), 2, 16, sleeper(2))
            .await
            .expect("run");
        assert_eq!(r.service.ok, 50);
        assert!(r.scheduled.p50 >= r.service.p50);
        assert!(r.service.elapsed >= Duration::from_millis(240));
    }
}
