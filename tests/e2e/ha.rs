//! Issue 3, must show 3: two `capstan server` processes on a three-member etcd cluster keep
//! every acknowledged write while the etcd leader and then one server are killed with SIGKILL;
//! the API answers again within 10 s of each kill; the controller-manager lease has exactly one
//! holder at any time and fails over to the surviving server.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capstan_store::etcd::testing::EtcdCluster;

use serde_json::{Value, json};

use crate::harness::{Server, ServerOptions, etcd_endpoint};

/// The API must answer again within this long after each kill (the bound).
const RECOVERY_BOUND: Duration = Duration::from_secs(10);
/// Per-request timeout of the writers: a write stuck behind a dead etcd leader gives up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const LEASE: &str =
    "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-controller-manager";

/// A client with the admin credentials of `kubeconfig`, for any server sharing its CA.
fn admin_client(kubeconfig: &std::path::Path) -> reqwest::Client {
    let text = std::fs::read_to_string(kubeconfig).expect("read admin kubeconfig");
    let field = |name: &str| -> Vec<u8> {
        let line = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("kubeconfig lacks {name}"));
        crate::util::base64_decode(line.trim())
    };
    let mut identity = field("client-certificate-data");
    identity.extend(field("client-key-data"));
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(&field("certificate-authority-data")).expect("CA"),
        )
        .identity(reqwest::Identity::from_pem(&identity).expect("client identity"))
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("build HTTP client")
}

/// What one writer saw: names acknowledged with 2xx, and the times of its successes.
#[derive(Default)]
struct Writes {
    acked: Vec<String>,
    successes: Vec<Instant>,
    failures: usize,
}

/// Creates ConfigMaps `ha-<tag>-<n>` through `url` until `stop`; one request at a time.
async fn writer(
    client: reqwest::Client,
    url: String,
    tag: &'static str,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Writes>>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let name = format!("ha-{tag}-{n}");
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "default"}, "data": {"n": n.to_string()}});
        let result = client
            .post(format!("{url}/api/v1/namespaces/default/configmaps"))
            .json(&body)
            .send()
            .await;
        let ok = matches!(&result, Ok(r) if r.status().is_success());
        {
            let mut w = out.lock().expect("writes lock");
            if ok {
                w.acked.push(name);
                w.successes.push(Instant::now());
            } else {
                w.failures += 1;
            }
        }
        if !ok {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The first success of `writes` after `since`, as a delay from `since`.
fn recovery(writes: &Mutex<Writes>, since: Instant) -> Option<Duration> {
    let w = writes.lock().expect("writes lock");
    w.successes.iter().find(|t| **t > since).map(|t| *t - since)
}

/// Polls until `f` is true or `bound` passes; returns how long it took.
async fn until(bound: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < bound, "{what}: not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

/// `holderIdentity` of the controller-manager lease as served by `url`, if readable.
async fn lease_holder(client: &reqwest::Client, url: &str) -> Option<String> {
    let r = client.get(format!("{url}{LEASE}")).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    let lease: Value = r.json().await.ok()?;
    lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
}

/// Leadership intervals a server's log reports for the controller manager: (start, end) as
/// log timestamps (RFC 3339, UTC, same width, so they compare as strings).
fn leadership_spans(log: &str) -> Vec<(String, Option<String>)> {
    let mut spans: Vec<(String, Option<String>)> = Vec::new();
    for line in log
        .lines()
        .filter(|l| l.contains("kube-controller-manager"))
    {
        let stamp = line
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        if line.contains("started leading") {
            spans.push((stamp, None));
        } else if line.contains("stopped leading")
            && let Some(last) = spans.last_mut().filter(|s| s.1.is_none())
        {
            last.1 = Some(stamp);
        }
    }
    spans
}

/// Parses the leading RFC 3339 timestamp of a log line.
fn stamp(text: &str) -> jiff::Timestamp {
    text.parse()
        .unwrap_or_else(|e| panic!("log timestamp {text:?}: {e}"))
}

/// True when no two spans (end None = still leading at `now`) of different servers overlap.
fn assert_disjoint(spans: &[(&str, jiff::Timestamp, jiff::Timestamp)]) {
    for (i, x) in spans.iter().enumerate() {
        for y in &spans[i + 1..] {
            if x.0 != y.0 {
                assert!(
                    x.2 <= y.1 || y.2 <= x.1,
                    "two controller-manager leaders at once: {x:?} and {y:?}"
                );
            }
        }
    }
}

#[test]
fn writes_survive_etcd_leader_and_server_kills_with_one_lease_holder() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let etcd = EtcdCluster::start(3).expect("start a three-member etcd cluster");
    let endpoint = etcd_endpoint(&etcd);
    // Servers sharing a datastore share the Secrets encryption key file too.
    let keys = tempfile::tempdir().expect("key dir");
    let key_file = keys.path().join("encryption.json");
    let options = || ServerOptions {
        datastore_endpoint: Some(endpoint.clone()),
        extra_args: vec![
            "--encryption-key-file".into(),
            key_file.to_str().expect("utf-8 path").into(),
        ],
        ..ServerOptions::default()
    };
    let mut servers = [Server::start_with(options()), Server::start_with(options())];
    // One CA for the cluster: server 0's admin credentials are accepted by server 1 too.
    let client = admin_client(&servers[0].kubeconfig());
    let urls = [servers[0].url(), servers[1].url()];

    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let stop = Arc::new(AtomicBool::new(false));
    let writes = [
        Arc::new(Mutex::new(Writes::default())),
        Arc::new(Mutex::new(Writes::default())),
    ];
    let tasks: Vec<_> = ["a", "b"]
        .iter()
        .enumerate()
        .map(|(i, tag)| {
            rt.spawn(writer(
                client.clone(),
                urls[i].clone(),
                tag,
                stop.clone(),
                writes[i].clone(),
            ))
        })
        .collect();
    let acked = |i: usize| writes[i].lock().expect("lock").acked.len();

    rt.block_on(async {
        until(Duration::from_secs(30), "first writes through both servers", || acked(0) >= 20 && acked(1) >= 20).await;
        // A Secret written through one server reads back through the other: one shared key.
        let secret = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "ha-shared-key"}, "data": {"k": "c2hhcmVk"}});
        let created = client
            .post(format!("{}/api/v1/namespaces/default/secrets", urls[0]))
            .json(&secret)
            .send()
            .await
            .expect("create secret");
        assert!(created.status().is_success(), "create secret: {}", created.status());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = client
                .get(format!("{}/api/v1/namespaces/default/secrets/ha-shared-key", urls[1]))
                .send()
                .await;
            if let Ok(r) = got
                && r.status().is_success()
            {
                let v: Value = r.json().await.expect("secret JSON");
                assert_eq!(v["data"]["k"], "c2hhcmVk");
                break;
            }
            assert!(Instant::now() < deadline, "secret not readable through server 1");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let holder = lease_holder(&client, &urls[1]).await;
        assert!(holder.is_some(), "no controller-manager lease holder after start-up");

        // Kill 1: the etcd leader.
        let leader = etcd.leader();
        let killed_at = Instant::now();
        etcd.kill(leader).expect("SIGKILL the etcd leader");
        for (i, w) in writes.iter().enumerate() {
            let took = until(RECOVERY_BOUND, &format!("writes through server {i} after the etcd leader's death"), || recovery(w, killed_at).is_some()).await;
            eprintln!("server {i} answered writes {took:?} after SIGKILL of etcd member {leader} (the leader)");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    });

    // Kill 2: the capstan server that leads the controller manager.
    let leading = (0..2)
        .find(|&i| {
            leadership_spans(&servers[i].log())
                .last()
                .is_some_and(|s| s.1.is_none())
        })
        .expect("one server logs that it leads kube-controller-manager");
    let survivor = 1 - leading;
    let killed_server_at = (Instant::now(), jiff::Timestamp::now());
    servers[leading].kill9();
    rt.block_on(async {
        let took = until(
            RECOVERY_BOUND,
            "writes through the surviving server",
            || recovery(&writes[survivor], killed_server_at.0).is_some(),
        )
        .await;
        eprintln!("surviving server answered writes {took:?} after SIGKILL of server {leading}");
        // The survivor takes the lease once it expires (15 s lease, 2 s retry).
        let took = until(
            Duration::from_secs(40),
            "the surviving server leading the controller manager",
            || {
                leadership_spans(&servers[survivor].log())
                    .last()
                    .is_some_and(|s| s.1.is_none())
            },
        )
        .await;
        eprintln!("controller manager failed over after {took:?}");
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.expect("writer task");
        }

        // Every acknowledged write is there, read through the survivor.
        let list: Value = client
            .get(format!(
                "{}/api/v1/namespaces/default/configmaps",
                urls[survivor]
            ))
            .send()
            .await
            .expect("list configmaps")
            .json()
            .await
            .expect("configmap list JSON");
        let present: BTreeSet<&str> = list["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|o| o["metadata"]["name"].as_str())
            .collect();
        for (i, w) in writes.iter().enumerate() {
            let w = w.lock().expect("lock");
            let missing: Vec<&String> = w
                .acked
                .iter()
                .filter(|n| !present.contains(n.as_str()))
                .collect();
            assert!(
                missing.is_empty(),
                "acknowledged writes through server {i} lost: {missing:?}"
            );
            eprintln!(
                "server {i}: {} writes acknowledged, {} failed or timed out",
                w.acked.len(),
                w.failures
            );
        }
        let holder = lease_holder(&client, &urls[survivor])
            .await
            .expect("lease holder after failover");
        assert!(!holder.is_empty());
    });

    // Leadership, as each process logged it, never overlapped; the killed leader's term ended
    // at its death at the latest.
    let now = jiff::Timestamp::now();
    let mut spans = Vec::new();
    for (i, name) in ["server0", "server1"].iter().enumerate() {
        for (start, end) in leadership_spans(&servers[i].log()) {
            let end = match end {
                Some(e) => stamp(&e),
                None if i == leading => killed_server_at.1,
                None => now,
            };
            spans.push((*name, stamp(&start), end));
        }
    }
    assert!(
        spans.len() >= 2,
        "expected a leadership term on each server: {spans:?}"
    );
    assert_disjoint(&spans);
}
