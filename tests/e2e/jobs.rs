//! Jobs and CronJobs on a real node (one shared all-in-one server with its agent), driven by
//! the stock kubectl 1.32: a Job with completions 5 / parallelism 2 completes with never more
//! than two pods active, an Indexed Job sees its completion index, a failing Job stops at its
//! backoffLimit, and a `*/1` CronJob starts a Job within 70 s that completes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::harness::{Kubectl, Server, ServerOptions};

const K: Kubectl = Kubectl::Minor(32);
const IMAGE: &str = "capstan.test/e2e/busybox:1";
const POLL: Duration = Duration::from_millis(200);
const NS: &str = "batch";

fn start() -> (Server, TempDir) {
    let images = tempfile::Builder::new()
        .prefix("capstan-e2e-img-")
        .tempdir()
        .expect("tempdir");
    let archive = images.path().join("busybox.tar");
    capstan_runtime::testimage::busybox_oci_archive(&archive, IMAGE)
        .expect("build the busybox test image");
    let server = Server::start_with(ServerOptions {
        agent: true,
        import_images: vec![archive],
        ..Default::default()
    });
    let name = server.node().name.clone();
    wait(&server, "node Ready", Duration::from_secs(90), |s| {
        let out = s.kubectl(K, &["get", "node", &name, "-o", "json"], None);
        out.status.success()
            && out.json()["status"]["conditions"]
                .as_array()
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
    });
    (server, images)
}

fn wait(server: &Server, what: &str, limit: Duration, mut f: impl FnMut(&Server) -> bool) {
    let deadline = Instant::now() + limit;
    while !f(server) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            server.log_tail(40)
        );
        thread::sleep(POLL);
    }
}

fn job_yaml(name: &str, spec: &str, script: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\n  namespace: {NS}\nspec:\n{spec}  template:\n    spec:\n      restartPolicy: Never\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: main\n        image: {IMAGE}\n        command: [\"sh\", \"-c\", \"{script}\"]\n"
    )
}

fn get_json(server: &Server, args: &[&str]) -> Value {
    let mut full = vec!["get", "-n", NS];
    full.extend_from_slice(args);
    full.extend_from_slice(&["-o", "json"]);
    server.kubectl(K, &full, None).ok().json()
}

fn active_pods(server: &Server, job: &str) -> usize {
    let label = format!("batch.kubernetes.io/job-name={job}");
    let out = server.kubectl(
        K,
        &["get", "pods", "-n", NS, "-l", &label, "-o", "json"],
        None,
    );
    if !out.status.success() {
        return 0;
    }
    out.json()["items"].as_array().map_or(0, |items| {
        items
            .iter()
            .filter(|p| {
                p["metadata"]["deletionTimestamp"].is_null()
                    && !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
            })
            .count()
    })
}

fn condition<'a>(job: &'a Value, type_: &str) -> &'a Value {
    job["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

#[test]
fn jobs_complete_fail_at_backoff_limit_and_cron_starts_jobs() {
    let (server, _images) = start();
    server.kubectl(K, &["create", "namespace", NS], None).ok();
    let cron = format!(
        "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: every-minute\n  namespace: {NS}\nspec:\n  schedule: \"*/1 * * * *\"\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          containers:\n          - name: main\n            image: {IMAGE}\n            command: [\"sh\", \"-c\", \"echo tick\"]\n"
    );
    let cron_created = Instant::now();
    let all = [
        cron,
        job_yaml(
            "pi",
            "  completions: 5\n  parallelism: 2\n",
            "sleep 1; echo done",
        ),
        job_yaml("boom", "  backoffLimit: 2\n", "exit 1"),
        job_yaml(
            "idx",
            "  completions: 2\n  parallelism: 2\n  completionMode: Indexed\n",
            "echo index=$JOB_COMPLETION_INDEX host=$(hostname)",
        ),
    ]
    .join("---\n");
    server.kubectl(K, &["apply", "-f", "-"], Some(&all)).ok();

    // Sample the active pods of "pi" while it runs.
    let stop = Arc::new(AtomicBool::new(false));
    let max_active = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (stop, max_active) = (stop.clone(), max_active.clone());
        let kubeconfig = server.kubeconfig();
        thread::spawn(move || {
            let label = "batch.kubernetes.io/job-name=pi";
            let deadline = Instant::now() + Duration::from_secs(180);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let out = crate::harness::run(
                    {
                        let mut c = std::process::Command::new(K.path());
                        c.arg("--kubeconfig")
                            .arg(&kubeconfig)
                            .args(["get", "pods", "-n", NS, "-l", label, "-o", "json"]);
                        c
                    },
                    None,
                );
                if out.status.success() {
                    let n = out.json()["items"].as_array().map_or(0, |items| {
                        items
                            .iter()
                            .filter(|p| {
                                p["metadata"]["deletionTimestamp"].is_null()
                                    && !matches!(
                                        p["status"]["phase"].as_str(),
                                        Some("Succeeded" | "Failed")
                                    )
                            })
                            .count()
                    });
                    max_active.fetch_max(n, Ordering::SeqCst);
                }
                thread::sleep(Duration::from_millis(100));
            }
        })
    };
    server
        .kubectl(
            K,
            &[
                "wait",
                "-n",
                NS,
                "--for=condition=complete",
                "job/pi",
                "--timeout=150s",
            ],
            None,
        )
        .ok();
    stop.store(true, Ordering::SeqCst);
    sampler.join().expect("sampler thread");
    let pi = get_json(&server, &["job", "pi"]);
    assert_eq!(pi["status"]["succeeded"], 5, "{pi}");
    assert!(pi["status"]["completionTime"].is_string(), "{pi}");
    assert_eq!(condition(&pi, "Complete")["reason"], "CompletionsReached");
    let max = max_active.load(Ordering::SeqCst);
    assert!((1..=2).contains(&max), "at most 2 pods at once, saw {max}");
    assert_eq!(active_pods(&server, "pi"), 0);
    let pods = get_json(&server, &["pods", "-l", "batch.kubernetes.io/job-name=pi"]);
    let items = pods["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 5, "{pods}");
    for p in &items {
        assert_eq!(p["status"]["phase"], "Succeeded");
        assert!(
            p["metadata"]["finalizers"].is_null(),
            "tracking finalizer left: {p}"
        );
    }

    // Indexed: each pod sees its index in the env and its hostname.
    server
        .kubectl(
            K,
            &[
                "wait",
                "-n",
                NS,
                "--for=condition=complete",
                "job/idx",
                "--timeout=60s",
            ],
            None,
        )
        .ok();
    let idx = get_json(&server, &["job", "idx"]);
    assert_eq!(idx["status"]["completedIndexes"], "0-1", "{idx}");
    let pods = get_json(&server, &["pods", "-l", "batch.kubernetes.io/job-name=idx"]);
    for p in pods["items"].as_array().cloned().unwrap_or_default() {
        let i = p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let name = p["metadata"]["name"].as_str().unwrap_or_default();
        server
            .kubectl(K, &["logs", "-n", NS, name], None)
            .ok()
            .stdout_has(&format!("index={i} host=idx-{i}"));
    }

    // Failing: three pods (1 + backoffLimit 2), then Failed with BackoffLimitExceeded.
    server
        .kubectl(
            K,
            &[
                "wait",
                "-n",
                NS,
                "--for=condition=failed",
                "job/boom",
                "--timeout=120s",
            ],
            None,
        )
        .ok();
    let boom = get_json(&server, &["job", "boom"]);
    assert_eq!(
        condition(&boom, "Failed")["reason"],
        "BackoffLimitExceeded",
        "{boom}"
    );
    assert_eq!(
        condition(&boom, "FailureTarget")["status"],
        "True",
        "{boom}"
    );
    assert_eq!(boom["status"]["failed"], 3, "{boom}");
    assert_eq!(active_pods(&server, "boom"), 0);
    let events = server
        .kubectl(
            K,
            &[
                "get",
                "events",
                "-n",
                NS,
                "--field-selector",
                "involvedObject.name=boom",
            ],
            None,
        )
        .ok();
    assert!(events.stdout.contains("BackoffLimitExceeded"), "{events}");

    // CronJob: a Job within 70 s of creation, which completes.
    let mut job_name = String::new();
    let left = Duration::from_secs(70).saturating_sub(cron_created.elapsed());
    wait(&server, "a job from the CronJob", left, |s| {
        let out = s.kubectl(K, &["get", "jobs", "-n", NS, "-o", "json"], None);
        let found = out.status.success().then(|| out.json()).and_then(|j| {
            j["items"].as_array().and_then(|items| {
                items
                    .iter()
                    .find(|j| j["metadata"]["ownerReferences"][0]["name"] == "every-minute")
                    .map(|j| {
                        j["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string()
                    })
            })
        });
        match found {
            Some(n) => {
                job_name = n;
                true
            }
            None => false,
        }
    });
    let minutes: i64 = job_name
        .strip_prefix("every-minute-")
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("job name {job_name}"));
    let job = get_json(&server, &["job", &job_name]);
    let stamp = job["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let ts: jiff::Timestamp = stamp.parse().expect("scheduled timestamp");
    assert_eq!(ts.as_second(), minutes * 60, "{stamp}");
    server
        .kubectl(
            K,
            &[
                "wait",
                "-n",
                NS,
                "--for=condition=complete",
                &format!("job/{job_name}"),
                "--timeout=60s",
            ],
            None,
        )
        .ok();
    wait(
        &server,
        "CronJob lastSuccessfulTime",
        Duration::from_secs(20),
        |s| {
            let out = s.kubectl(
                K,
                &["get", "cronjob", "-n", NS, "every-minute", "-o", "json"],
                None,
            );
            out.status.success() && out.json()["status"]["lastSuccessfulTime"].is_string()
        },
    );
    // Stop the schedule before the server goes away.
    server
        .kubectl(
            K,
            &[
                "patch",
                "cronjob",
                "-n",
                NS,
                "every-minute",
                "-p",
                "{\"spec\":{\"suspend\":true}}",
            ],
            None,
        )
        .ok();
}
