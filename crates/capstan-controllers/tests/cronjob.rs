//! The CronJob controller against a real in-process API server with an injected clock (no Job
//! controller: the tests finish Jobs through jobs/status): Job names and annotations, status,
//! the concurrency policies, history limits, suspend, startingDeadlineSeconds and missed
//! schedules.

use capstan_apiserver::testing::TestServer;
use capstan_controllers::cronjob::{self, schedule::Clock};
use capstan_store::MemoryStore;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Event, Namespace};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Real time plus an offset the test moves forward.
#[derive(Default)]
struct TestClock(Mutex<SignedDuration>);

impl TestClock {
    fn advance(&self, d: SignedDuration) {
        let mut o = self.0.lock().unwrap();
        *o += d;
    }
}

impl Clock for TestClock {
    fn now(&self) -> Timestamp {
        Timestamp::now() + *self.0.lock().unwrap()
    }
}

struct Env {
    server: TestServer,
    client: Client,
    clock: Arc<TestClock>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    cjs: Api<CronJob>,
    jobs: Api<Job>,
    ns: String,
}

async fn start(ns: &str) -> Env {
    let server = TestServer::start(Arc::new(MemoryStore::new())).await;
    let client = server.client().await;
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();
    let clock = Arc::new(TestClock::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(cronjob::run_standalone(
        client.clone(),
        clock.clone(),
        stop.clone(),
    ));
    Env {
        cjs: Api::namespaced(client.clone(), ns),
        jobs: Api::namespaced(client.clone(), ns),
        server,
        client,
        clock,
        stop,
        task,
        ns: ns.into(),
    }
}

impl Env {
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("controller did not stop")
            .unwrap();
        self.server.shutdown().await;
    }

    async fn create(&self, name: &str, extra: serde_json::Value) {
        let mut spec = serde_json::json!({
            "schedule": "* * * * *",
            "timeZone": "Etc/UTC",
            "jobTemplate": {
                "metadata": {"labels": {"cron": name}},
                "spec": {"template": {"spec": {"restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "busybox"}]}}}
            }
        });
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let cj: CronJob =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": spec}))
                .unwrap();
        self.cjs.create(&PostParams::default(), &cj).await.unwrap();
    }

    /// Moves the clock and wakes the controller (an annotation change, as any update would).
    async fn tick(&self, name: &str, minutes: i64) {
        self.clock.advance(SignedDuration::from_mins(minutes));
        let poke = Timestamp::now().as_nanosecond().to_string();
        self.cjs
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"annotations": {"poke": poke}}})),
            )
            .await
            .unwrap();
    }

    async fn jobs_of(&self, name: &str) -> Vec<Job> {
        let mut v: Vec<Job> = self
            .jobs
            .list(&ListParams::default().labels(&format!("cron={name}")))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|j| j.metadata.deletion_timestamp.is_none())
            .collect();
        v.sort_by_key(|j| j.name_any());
        v
    }

    async fn events(&self, name: &str) -> Vec<String> {
        Api::<Event>::namespaced(self.client.clone(), &self.ns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(name))
            .filter_map(|e| e.reason)
            .collect()
    }

    /// Marks a Job Complete (or Failed) as the Job controller would.
    async fn finish(&self, job: &str, ok: bool) {
        let now = Timestamp::now().to_string();
        let (target, last, reason) = if ok {
            ("SuccessCriteriaMet", "Complete", "CompletionsReached")
        } else {
            ("FailureTarget", "Failed", "BackoffLimitExceeded")
        };
        let mut status = serde_json::json!({
            "startTime": now,
            "conditions": [
                {"type": target, "status": "True", "reason": reason, "lastTransitionTime": now},
                {"type": last, "status": "True", "reason": reason, "lastTransitionTime": now}
            ]
        });
        if ok {
            status["completionTime"] = now.clone().into();
            status["succeeded"] = 1.into();
        } else {
            status["failed"] = 1.into();
        }
        self.jobs
            .patch_status(
                job,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "status": status })),
            )
            .await
            .unwrap();
    }
}

async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn minutes_of(job: &Job) -> i64 {
    job.name_any().rsplit('-').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cronjob_starts_jobs_on_schedule_and_tracks_them() {
    let e = start("cj-basic").await;
    e.create("tick", serde_json::json!({"successfulJobsHistoryLimit": 1}))
        .await;
    // Nothing is due right after creation.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(e.jobs_of("tick").await.is_empty());

    e.tick("tick", 2).await;
    wait_for("first job", || async { e.jobs_of("tick").await.len() == 1 }).await;
    let first = e.jobs_of("tick").await.remove(0);
    let now_min = e.clock.now().as_second() / 60;
    // The most recent missed time: this minute, by the fake clock.
    assert_eq!(minutes_of(&first), now_min);
    let scheduled = Timestamp::from_second(now_min * 60).unwrap();
    assert_eq!(
        first.annotations()[cronjob::SCHEDULED_TIMESTAMP],
        scheduled.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    );
    let owner = &first.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("CronJob", "tick")
    );
    assert_eq!(
        (owner.controller, owner.block_owner_deletion),
        (Some(true), Some(true))
    );
    wait_for("status.active", || async {
        let s = e.cjs.get("tick").await.unwrap().status.unwrap_or_default();
        s.active
            .is_some_and(|a| a.len() == 1 && a[0].name == Some(first.name_any()))
            && s.last_schedule_time.is_some_and(|t| t.0 == scheduled)
    })
    .await;

    // Allow: the next minute starts a second job while the first runs.
    e.tick("tick", 1).await;
    wait_for("second job", || async {
        e.jobs_of("tick").await.len() == 2
    })
    .await;
    e.finish(&first.name_any(), true).await;
    wait_for("first job leaves status.active", || async {
        let s = e.cjs.get("tick").await.unwrap().status.unwrap_or_default();
        s.active.is_some_and(|a| a.len() == 1) && s.last_successful_time.is_some()
    })
    .await;
    // History limit 1: after a second success the first job is deleted.
    let second = e.jobs_of("tick").await.remove(1);
    e.finish(&second.name_any(), true).await;
    wait_for("history pruned", || async {
        let names: Vec<String> = e
            .jobs_of("tick")
            .await
            .iter()
            .map(|j| j.name_any())
            .collect();
        names == [second.name_any()]
    })
    .await;
    let ev = e.events("tick").await;
    for want in ["SuccessfulCreate", "SawCompletedJob", "SuccessfulDelete"] {
        assert!(ev.iter().any(|r| r == want), "{want} missing in {ev:?}");
    }
    e.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_policies_suspend_and_missed_schedules() {
    let e = start("cj-policy").await;
    e.create("forbid", serde_json::json!({"concurrencyPolicy": "Forbid"}))
        .await;
    e.create(
        "replace",
        serde_json::json!({"concurrencyPolicy": "Replace"}),
    )
    .await;
    e.create("paused", serde_json::json!({"suspend": true}))
        .await;
    e.create("late", serde_json::json!({"startingDeadlineSeconds": 10}))
        .await;
    e.tick("forbid", 2).await;
    for n in ["replace", "paused", "late"] {
        e.tick(n, 0).await;
    }
    wait_for("forbid job", || async {
        e.jobs_of("forbid").await.len() == 1
    })
    .await;
    wait_for("replace job", || async {
        e.jobs_of("replace").await.len() == 1
    })
    .await;
    let replaced = e.jobs_of("replace").await.remove(0).name_any();

    e.tick("forbid", 1).await;
    e.tick("replace", 0).await;
    wait_for("JobAlreadyActive", || async {
        e.events("forbid")
            .await
            .iter()
            .any(|r| r == "JobAlreadyActive")
    })
    .await;
    assert_eq!(e.jobs_of("forbid").await.len(), 1);
    wait_for("replaced job", || async {
        let j = e.jobs_of("replace").await;
        j.len() == 1 && j[0].name_any() != replaced
    })
    .await;
    // Once the running job finishes, Forbid starts the missed run.
    let running = e.jobs_of("forbid").await.remove(0).name_any();
    e.finish(&running, false).await;
    wait_for("forbid runs again", || async {
        e.jobs_of("forbid").await.len() == 2
    })
    .await;

    assert!(e.jobs_of("paused").await.is_empty());
    // startingDeadlineSeconds 10: a start more than 10 s late is skipped, unless the
    // clock sits within 10 s after a minute.
    let sec = e.clock.now().as_second() % 60;
    if (13..58).contains(&sec) {
        assert!(e.jobs_of("late").await.is_empty());
    }

    // Three hours without a start: more than 100 missed times is reported, one job starts.
    e.create("behind", serde_json::json!({})).await;
    e.tick("behind", 180).await;
    wait_for("TooManyMissedTimes", || async {
        e.events("behind")
            .await
            .iter()
            .any(|r| r == "TooManyMissedTimes")
    })
    .await;
    wait_for("one job", || async { e.jobs_of("behind").await.len() == 1 }).await;
    e.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_schedules_are_reported() {
    let e = start("cj-bad").await;
    e.create("zone", serde_json::json!({"timeZone": "Mars/Olympus"}))
        .await;
    e.tick("zone", 2).await;
    wait_for("UnknownTimeZone", || async {
        e.events("zone")
            .await
            .iter()
            .any(|r| r == "UnknownTimeZone")
    })
    .await;
    assert!(e.jobs_of("zone").await.is_empty());
    e.stop().await;
}
