//! Leader election against a real in-process API server: one leader at a time, takeover
//! after a crash within the lease duration, immediate takeover after a graceful release, and
//! a leader that cannot renew stops its work.

use capstan_apiserver::testing::TestServer;
use capstan_election::{LeaderElector, LeaseTimings, Outcome};
use capstan_store::{MemoryStore, Store};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const TIMINGS: LeaseTimings = LeaseTimings {
    lease_duration: Duration::from_secs(6),
    renew_deadline: Duration::from_secs(4),
    retry_period: Duration::from_millis(500),
};

/// A running candidate: its leadership signal, its shutdown token, its task.
struct Candidate {
    leading: watch::Receiver<bool>,
    shutdown: CancellationToken,
    /// Cancelled once the candidate's work has been told to stop.
    work_stopped: CancellationToken,
    task: JoinHandle<Outcome>,
}

async fn candidate(client: kube::Client, id: &str) -> Candidate {
    let elector = LeaderElector::new(client, "kube-system", "test-lease", id, TIMINGS).unwrap();
    let leading = elector.subscribe();
    let shutdown = CancellationToken::new();
    let work_stopped = CancellationToken::new();
    let (s, w) = (shutdown.clone(), work_stopped.clone());
    let task = tokio::spawn(elector.run(s, move |token| async move {
        token.cancelled().await;
        w.cancel();
    }));
    Candidate {
        leading,
        shutdown,
        work_stopped,
        task,
    }
}

async fn wait_leading(c: &mut Candidate, within: Duration) -> Duration {
    let started = Instant::now();
    tokio::time::timeout(within, c.leading.wait_for(|l| *l))
        .await
        .expect("no leadership in time")
        .unwrap();
    started.elapsed()
}

async fn holder(client: &kube::Client) -> String {
    let lease = Api::<Lease>::namespaced(client.clone(), "kube-system")
        .get("test-lease")
        .await
        .unwrap();
    lease.spec.unwrap().holder_identity.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_then_takeover_on_crash_and_at_once_on_release() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let server = TestServer::start(store).await;
    let client = server.client().await;
    let mut a = candidate(client.clone(), "a").await;
    wait_leading(&mut a, Duration::from_secs(5)).await;
    let mut b = candidate(client.clone(), "b").await;
    // Several of b's retry periods pass without b leading.
    tokio::time::sleep(TIMINGS.retry_period * 6).await;
    assert!(
        *a.leading.borrow() && !*b.leading.borrow(),
        "exactly one leader"
    );
    assert_eq!(holder(&client).await, "a");

    // Crash: a stops renewing without releasing; b waits out the lease duration.
    a.task.abort();
    let took = wait_leading(&mut b, TIMINGS.lease_duration + TIMINGS.retry_period * 4).await;
    eprintln!("takeover after the leader crashed: {took:?}");
    assert!(
        took >= TIMINGS.lease_duration - TIMINGS.retry_period * 3,
        "took over too early: {took:?}"
    );
    let lease = Api::<Lease>::namespaced(client.clone(), "kube-system")
        .get("test-lease")
        .await
        .unwrap()
        .spec
        .unwrap();
    assert_eq!(lease.holder_identity.as_deref(), Some("b"));
    assert_eq!(lease.lease_transitions, Some(1));

    // Graceful: b releases, c takes over within a few retry periods.
    let mut c = candidate(client.clone(), "c").await;
    tokio::time::sleep(TIMINGS.retry_period * 3).await;
    assert!(!*c.leading.borrow());
    b.shutdown.cancel();
    assert_eq!(b.task.await.unwrap(), Outcome::Released);
    assert!(b.work_stopped.is_cancelled());
    let took = wait_leading(&mut c, TIMINGS.retry_period * 5).await;
    eprintln!("takeover after a graceful release: {took:?}");
    assert_eq!(holder(&client).await, "c");
    c.shutdown.cancel();
    assert_eq!(c.task.await.unwrap(), Outcome::Released);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_renew_stops_its_work_within_the_renew_deadline() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let server = TestServer::start(store).await;
    let mut a = candidate(server.client().await, "a").await;
    wait_leading(&mut a, Duration::from_secs(5)).await;
    let cut = Instant::now();
    server.shutdown().await;
    let outcome = tokio::time::timeout(TIMINGS.renew_deadline + TIMINGS.retry_period * 4, a.task)
        .await
        .expect("leader kept running without renewing")
        .unwrap();
    assert_eq!(outcome, Outcome::Lost);
    assert!(a.work_stopped.is_cancelled());
    assert!(!*a.leading.borrow());
    let stopped = cut.elapsed();
    eprintln!("work stopped after losing the API: {stopped:?}");
    assert!(
        stopped < TIMINGS.lease_duration,
        "work must stop before the lease can expire"
    );
}
