//! The Job controller against a real in-process API server (no kubelet: the tests move pods to
//! Succeeded or Failed through pods/status): completions and parallelism, Indexed jobs,
//! backoffLimit, activeDeadlineSeconds, pod failure policy, suspend, TTL, the tracking
//! finalizer and events.

mod support;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use std::time::Duration;
use support::{start, wait_for};

const FINALIZER: &str = "batch.kubernetes.io/job-tracking";

fn job(name: &str, spec: serde_json::Value) -> Job {
    let mut s = serde_json::json!({
        "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}
        }
    });
    for (k, v) in spec.as_object().unwrap() {
        s[k] = v.clone();
    }
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": s})).unwrap()
}

/// Pods of job `name` that are neither finished nor terminating.
async fn active_pods(pods: &Api<Pod>, name: &str) -> Vec<Pod> {
    all_pods(pods, name)
        .await
        .into_iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
        })
        .collect()
}

async fn all_pods(pods: &Api<Pod>, name: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={name}")))
        .await
        .unwrap()
        .items
}

/// Ends a pod as a kubelet would report it.
async fn finish(pods: &Api<Pod>, name: &str, exit_code: i32) {
    let phase = if exit_code == 0 {
        "Succeeded"
    } else {
        "Failed"
    };
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": {
            "phase": phase,
            "containerStatuses": [{"name": "c", "image": "busybox", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"terminated": {"exitCode": exit_code}}}]
        }})),
    )
    .await
    .unwrap();
}

fn condition(job: &Job, type_: &str) -> Option<(String, String)> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
}

fn is(job: &Job, type_: &str, reason: &str) -> bool {
    condition(job, type_) == Some(("True".into(), reason.into()))
}

async fn events(client: &kube::Client, ns: &str, job: &str) -> Vec<String> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(job))
        .filter_map(|e| e.reason)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_runs_completions_with_parallelism_and_counts_every_pod_once() {
    let ns = "job-basic";
    let c = start(ns).await;
    let jobs = Api::<Job>::namespaced(c.client.clone(), ns);
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns);
    jobs.create(
        &PostParams::default(),
        &job(
            "pi",
            serde_json::json!({"completions": 4, "parallelism": 2}),
        ),
    )
    .await
    .unwrap();
    wait_for("2 active pods", || async {
        active_pods(&pods, "pi").await.len() == 2
    })
    .await;
    let j = jobs.get("pi").await.unwrap();
    let uid = j.uid().unwrap();
    for p in active_pods(&pods, "pi").await {
        assert!(p.finalizers().iter().any(|f| f == FINALIZER), "{p:?}");
        let owner = &p.owner_references()[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Job", "pi"));
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.block_owner_deletion, Some(true));
        assert_eq!(p.labels()["batch.kubernetes.io/controller-uid"], uid);
        assert_eq!(p.labels()["batch.kubernetes.io/job-name"], "pi");
        assert!(p.name_any().starts_with("pi-"));
    }
    // Finish pods one by one; never more than 2 active, every success counted once.
    for done in 1..=4 {
        let victim = active_pods(&pods, "pi").await[0].name_any();
        finish(&pods, &victim, 0).await;
        wait_for("succeeded counted", || async {
            let s = jobs.get("pi").await.unwrap().status.unwrap_or_default();
            s.succeeded == Some(done)
        })
        .await;
        wait_for("finalizer removed", || async {
            pods.get(&victim)
                .await
                .map(|p| p.metadata.finalizers.is_none())
                .unwrap_or(true)
        })
        .await;
        let want = (4 - done).min(2) as usize;
        wait_for("active pods", || async {
            active_pods(&pods, "pi").await.len() == want
        })
        .await;
        // Several syncs later still no extra pod.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(active_pods(&pods, "pi").await.len(), want);
    }
    wait_for("Complete", || async {
        is(
            &jobs.get("pi").await.unwrap(),
            "Complete",
            "CompletionsReached",
        )
    })
    .await;
    let j = jobs.get("pi").await.unwrap();
    let s = j.status.clone().unwrap();
    assert!(is(&j, "SuccessCriteriaMet", "CompletionsReached"));
    assert!(s.completion_time.is_some() && s.start_time.is_some());
    assert_eq!((s.succeeded, s.failed, s.active), (Some(4), None, None));
    assert_eq!(all_pods(&pods, "pi").await.len(), 4);
    let ev = events(&c.client, ns, "pi").await;
    assert_eq!(
        ev.iter().filter(|e| *e == "SuccessfulCreate").count(),
        4,
        "{ev:?}"
    );
    assert!(ev.iter().any(|e| e == "Completed"), "{ev:?}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_fails_at_backoff_limit_and_counts_deleted_pods() {
    let ns = "job-backoff";
    let c = start(ns).await;
    let jobs = Api::<Job>::namespaced(c.client.clone(), ns);
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns);
    jobs.create(
        &PostParams::default(),
        &job("fail", serde_json::json!({"backoffLimit": 1})),
    )
    .await
    .unwrap();
    wait_for("a pod", || async {
        active_pods(&pods, "fail").await.len() == 1
    })
    .await;
    // A deleted pod is held by the finalizer until counted as failed, then goes away.
    let first = active_pods(&pods, "fail").await[0].name_any();
    pods.delete(&first, &DeleteParams::default()).await.unwrap();
    wait_for("deleted pod counted", || async {
        jobs.get("fail")
            .await
            .unwrap()
            .status
            .unwrap_or_default()
            .failed
            == Some(1)
    })
    .await;
    wait_for("deleted pod gone", || async {
        pods.get(&first).await.is_err()
    })
    .await;
    assert!(condition(&jobs.get("fail").await.unwrap(), "Failed").is_none());
    // The replacement comes after the pod failure back-off (10 s for the first failure).
    wait_for("replacement", || async {
        active_pods(&pods, "fail").await.len() == 1
    })
    .await;
    let second = active_pods(&pods, "fail").await[0].name_any();
    assert_ne!(first, second);
    finish(&pods, &second, 1).await;
    wait_for("Failed", || async {
        is(
            &jobs.get("fail").await.unwrap(),
            "Failed",
            "BackoffLimitExceeded",
        )
    })
    .await;
    let j = jobs.get("fail").await.unwrap();
    assert!(is(&j, "FailureTarget", "BackoffLimitExceeded"));
    let s = j.status.unwrap();
    assert_eq!(
        (s.failed, s.active, s.completion_time),
        (Some(2), None, None)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(active_pods(&pods, "fail").await.is_empty());
    assert!(
        events(&c.client, ns, "fail")
            .await
            .iter()
            .any(|e| e == "BackoffLimitExceeded")
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexed_job_runs_one_pod_per_index() {
    let ns = "job-indexed";
    let c = start(ns).await;
    let jobs = Api::<Job>::namespaced(c.client.clone(), ns);
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns);
    jobs.create(
        &PostParams::default(),
        &job(
            "idx",
            serde_json::json!({"completions": 3, "parallelism": 2, "completionMode": "Indexed"}),
        ),
    )
    .await
    .unwrap();
    wait_for("2 pods", || async {
        active_pods(&pods, "idx").await.len() == 2
    })
    .await;
    let mut seen = Vec::new();
    for p in active_pods(&pods, "idx").await {
        let i = p.annotations()["batch.kubernetes.io/job-completion-index"].clone();
        assert_eq!(p.labels()["batch.kubernetes.io/job-completion-index"], i);
        let spec = p.spec.clone().unwrap();
        assert_eq!(spec.hostname, Some(format!("idx-{i}")));
        let env = spec.containers[0].env.clone().unwrap();
        let var = env
            .iter()
            .find(|e| e.name == "JOB_COMPLETION_INDEX")
            .unwrap();
        let field = var.value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
        assert_eq!(
            field.field_path,
            "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        );
        seen.push(i);
    }
    seen.sort();
    assert_eq!(seen, ["0", "1"]);
    let idx_of = |p: &Pod| p.annotations()["batch.kubernetes.io/job-completion-index"].clone();
    let one = active_pods(&pods, "idx")
        .await
        .into_iter()
        .find(|p| idx_of(p) == "1")
        .unwrap();
    finish(&pods, &one.name_any(), 0).await;
    wait_for("index 1 completed and index 2 started", || async {
        let s = jobs.get("idx").await.unwrap().status.unwrap_or_default();
        let mut active: Vec<String> = active_pods(&pods, "idx").await.iter().map(idx_of).collect();
        active.sort();
        s.completed_indexes.as_deref() == Some("1") && active == ["0", "2"]
    })
    .await;
    for p in active_pods(&pods, "idx").await {
        finish(&pods, &p.name_any(), 0).await;
    }
    wait_for("Complete", || async {
        is(
            &jobs.get("idx").await.unwrap(),
            "Complete",
            "CompletionsReached",
        )
    })
    .await;
    let s = jobs.get("idx").await.unwrap().status.unwrap();
    assert_eq!(
        (s.completed_indexes.as_deref(), s.succeeded),
        (Some("0-2"), Some(3))
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_failure_policy_suspend_and_ttl() {
    let ns = "job-rules";
    let c = start(ns).await;
    let jobs = Api::<Job>::namespaced(c.client.clone(), ns);
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns);
    let pp = PostParams::default();
    // activeDeadlineSeconds: the pods are deleted, the Job fails with DeadlineExceeded.
    jobs.create(
        &pp,
        &job(
            "slow",
            serde_json::json!({"parallelism": 2, "completions": 2, "activeDeadlineSeconds": 2}),
        ),
    )
    .await
    .unwrap();
    // Pod failure policy: exit 42 fails the Job at once, exit 3 is ignored.
    let policy = serde_json::json!({"backoffLimit": 0, "podFailurePolicy": {"rules": [
        {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}},
        {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [3]}}
    ]}});
    jobs.create(&pp, &job("policy", policy)).await.unwrap();
    // Suspended: no pods until resumed.
    jobs.create(
        &pp,
        &job(
            "later",
            serde_json::json!({"suspend": true, "ttlSecondsAfterFinished": 1}),
        ),
    )
    .await
    .unwrap();

    wait_for("policy pod", || async {
        active_pods(&pods, "policy").await.len() == 1
    })
    .await;
    let p = active_pods(&pods, "policy").await[0].name_any();
    finish(&pods, &p, 3).await;
    wait_for("ignored failure replaced at once", || async {
        let a = active_pods(&pods, "policy").await;
        a.len() == 1 && a[0].name_any() != p
    })
    .await;
    let j = jobs.get("policy").await.unwrap();
    assert_eq!(j.status.as_ref().unwrap().failed, None);
    let p2 = active_pods(&pods, "policy").await[0].name_any();
    finish(&pods, &p2, 42).await;
    wait_for("FailJob", || async {
        is(
            &jobs.get("policy").await.unwrap(),
            "Failed",
            "PodFailurePolicy",
        )
    })
    .await;
    let msg = jobs
        .get("policy")
        .await
        .unwrap()
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Failed")
        .unwrap()
        .message
        .unwrap();
    assert!(
        msg.contains("failed with exit code 42 matching FailJob rule at index 0"),
        "{msg}"
    );

    wait_for("Suspended", || async {
        is(
            &jobs.get("later").await.unwrap(),
            "Suspended",
            "JobSuspended",
        )
    })
    .await;
    assert!(all_pods(&pods, "later").await.is_empty());
    assert!(
        jobs.get("later")
            .await
            .unwrap()
            .status
            .unwrap()
            .start_time
            .is_none()
    );

    wait_for("DeadlineExceeded", || async {
        is(
            &jobs.get("slow").await.unwrap(),
            "Failed",
            "DeadlineExceeded",
        )
    })
    .await;
    assert!(active_pods(&pods, "slow").await.is_empty());
    let s = jobs.get("slow").await.unwrap().status.unwrap();
    assert_eq!(s.failed, Some(2), "the deleted active pods count as failed");

    jobs.patch(
        "later",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"suspend": false}})),
    )
    .await
    .unwrap();
    wait_for("resumed", || async {
        active_pods(&pods, "later").await.len() == 1
    })
    .await;
    let j = jobs.get("later").await.unwrap();
    assert_eq!(
        condition(&j, "Suspended"),
        Some(("False".into(), "JobResumed".into()))
    );
    let p = active_pods(&pods, "later").await[0].name_any();
    finish(&pods, &p, 0).await;
    wait_for("Complete", || async {
        jobs.get("later")
            .await
            .map(|j| is(&j, "Complete", "CompletionsReached"))
            .unwrap_or(true)
    })
    .await;
    // ttlSecondsAfterFinished: 1 deletes the Job a second after it finished.
    wait_for("TTL deletion", || async {
        jobs.get("later").await.is_err()
    })
    .await;
    let ev = events(&c.client, ns, "later").await;
    assert!(
        ev.iter().any(|e| e == "Suspended") && ev.iter().any(|e| e == "Resumed"),
        "{ev:?}"
    );
    c.stop().await;
}
