//! The benchmark's phases, in the order they run: 10,000 pods (list and memory), the
//! create/get/list/watch matrix (in `matrix.rs`), and the rate-limited create run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use reqwest::{Client, StatusCode};
use serde_json::Value;

use crate::client::{collection, create_namespace, expect};
use crate::ops::{Kube, Kv, LIST_SET, create_ns, list_ns};
use crate::payload::Kind;
use crate::procs::{EtcdBacked, Proc, Rss};
use crate::runner::{self, Limits, OpenLoop, closed_loop};
use crate::stats::Summary;

/// Client counts of the matrix.
pub const CONCURRENCY: [usize; 3] = [1, 16, 64];
/// Pods of the big-list phase, and the namespace they live in.
pub const BIG_LIST: u64 = 10_000;
const BIG_NS: &str = "x";
/// Timed repetitions of each 10k-pod list.
const LIST_REPEATS: usize = 5;
/// kubectl's Accept header for `kubectl get` (server-side printing).
const TABLE_ACCEPT: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
/// Rate-limited create run: writes per second and duration.
pub const RATE: u32 = 1_000;
pub const RATE_TIME: Duration = Duration::from_secs(10);
const RATE_CLIENTS: usize = 16;

/// One Capstan server as a client sees it.
pub struct Api {
    pub kube: Kube,
    /// A connection of its own for the watch writer and set-up requests.
    pub spare: Client,
}

/// Everything the phases talk to.
pub struct Targets {
    /// Capstan on its embedded SQLite store.
    pub capstan: Api,
    /// The raw etcd peer.
    pub kv: Kv,
    /// Capstan on its own etcd; absent with `--skip-backends`.
    pub capstan_etcd: Option<Api>,
}

impl Targets {
    /// Every Capstan server of the run.
    fn apis(&self) -> impl Iterator<Item = &Api> {
        std::iter::once(&self.capstan).chain(self.capstan_etcd.as_ref())
    }
}

/// The 10,000-pod phase.
pub struct BigList {
    pub capstan_create: Summary,
    pub etcd_put: Summary,
    pub json: Summary,
    pub json_bytes: usize,
    pub table: Summary,
    pub table_bytes: usize,
    pub etcd_range: Summary,
    pub etcd_bytes: usize,
    pub capstan_rss: Rss,
    pub etcd_rss: Rss,
    /// Capstan's memory after the five JSON lists and after the five Table lists.
    pub rss_after_json: Rss,
    pub rss_after_table: Rss,
}

/// The 10,000-pod phase on the etcd-backed Capstan: creates and JSON lists only.
pub struct BackendBigList {
    pub create: Summary,
    pub json: Summary,
    pub json_bytes: usize,
    /// (server, its etcd) right after the creates.
    pub rss: (Rss, Rss),
}

/// Anything odd seen while measuring, printed under the tables.
pub type Notes = Vec<String>;

pub fn note_errors(notes: &mut Notes, what: &str, s: &Summary) {
    if s.errors > 0 {
        notes.push(format!(
            "{what}: {} errors; first: {}",
            s.errors,
            s.first_error.as_deref().unwrap_or("?")
        ));
    }
}

/// The namespaces every phase writes into, on every Capstan server.
pub async fn create_namespaces(t: &Targets) -> anyhow::Result<()> {
    let mut names = vec![BIG_NS.to_string(), "rate".to_string()];
    for kind in Kind::ALL {
        names.extend([list_ns(kind), create_ns(kind)]);
        names.extend(CONCURRENCY.map(|c| watch_ns(kind, c)));
    }
    for api in t.apis() {
        for name in &names {
            create_namespace(&api.spare, &api.kube.server, name).await?;
        }
    }
    Ok(())
}

pub fn watch_ns(kind: Kind, clients: usize) -> String {
    format!("watch-{}-{clients}", kind.plural())
}

fn big_limits() -> Limits {
    Limits {
        max_ops: BIG_LIST,
        max_time: Duration::from_secs(120),
    }
}

/// Creates 10,000 pods in both stores, reads memory, and times full lists of them.
pub async fn big_list(
    t: &Targets,
    capstan: &Proc,
    etcd: &Proc,
    notes: &mut Notes,
) -> anyhow::Result<BigList> {
    let ns = BIG_NS.to_string();
    eprintln!("  creating {BIG_LIST} pods in Capstan (64 clients)");
    let kube = &t.capstan.kube;
    let capstan_create = closed_loop(
        64,
        big_limits(),
        kube.create(Kind::Pod, ns.clone(), "pod".into(), "big"),
    )
    .await?;
    note_errors(notes, "10k pods: Capstan create", &capstan_create);
    eprintln!("  putting {BIG_LIST} pods into etcd (64 clients)");
    let etcd_put = closed_loop(
        64,
        big_limits(),
        t.kv.put(Kind::Pod, ns.clone(), "pod".into(), "big"),
    )
    .await?;
    note_errors(notes, "10k pods: etcd put", &etcd_put);
    let (capstan_rss, etcd_rss) = (capstan.rss_kib()?, etcd.rss_kib()?);

    let url = collection(&kube.server, BIG_NS, "pods");
    let client = &kube.clients[0];
    let (json, json_bytes) = time_repeated(|| expect(client.get(&url), StatusCode::OK)).await?;
    check_len(notes, "10k pods JSON list items", &json_bytes.1, "/items")?;
    let rss_after_json = capstan.rss_kib()?;
    let table_req = || {
        expect(
            client.get(&url).header("accept", TABLE_ACCEPT),
            StatusCode::OK,
        )
    };
    let (table, table_bytes) = time_repeated(table_req).await?;
    check_len(notes, "10k pods Table rows", &table_bytes.1, "/rows")?;
    let rss_after_table = capstan.rss_kib()?;
    if !String::from_utf8_lossy(&table_bytes.1[..table_bytes.1.len().min(200)])
        .contains("\"Table\"")
    {
        notes.push("10k pods: Table Accept header answered without a Table".into());
    }
    let prefix = Kind::Pod.etcd_prefix(BIG_NS);
    let etcd_client = &t.kv.clients[0];
    let (etcd_range, etcd_body) = time_repeated(|| t.kv.etcd.list(etcd_client, &prefix)).await?;
    let count = t.kv.etcd.count(etcd_client, &prefix).await?;
    if count != BIG_LIST {
        notes.push(format!("etcd 10k range returned {count} keys"));
    }
    Ok(BigList {
        capstan_create,
        etcd_put,
        json,
        json_bytes: json_bytes.0,
        table,
        table_bytes: table_bytes.0,
        etcd_range,
        etcd_bytes: etcd_body.0,
        capstan_rss,
        etcd_rss,
        rss_after_json,
        rss_after_table,
    })
}

/// The same 10,000 pods on the etcd-backed Capstan, so both servers hold the same data during
/// the matrix; times the creates and the JSON list.
pub async fn big_list_backend(
    api: &Api,
    procs: &EtcdBacked,
    notes: &mut Notes,
) -> anyhow::Result<BackendBigList> {
    eprintln!("  creating {BIG_LIST} pods in Capstan on etcd (64 clients)");
    let create = closed_loop(
        64,
        big_limits(),
        api.kube
            .create(Kind::Pod, BIG_NS.into(), "pod".into(), "big"),
    )
    .await?;
    note_errors(notes, "10k pods: Capstan-on-etcd create", &create);
    let rss = procs.rss_kib()?;
    let url = collection(&api.kube.server, BIG_NS, "pods");
    let client = &api.kube.clients[0];
    let (json, (json_bytes, body)) =
        time_repeated(|| expect(client.get(&url), StatusCode::OK)).await?;
    check_len(
        notes,
        "10k pods JSON list items (Capstan on etcd)",
        &body,
        "/items",
    )?;
    Ok(BackendBigList {
        create,
        json,
        json_bytes,
        rss,
    })
}

/// Runs `request` LIST_REPEATS times; returns the timing and (size, last body).
async fn time_repeated<F, Fut>(mut request: F) -> anyhow::Result<(Summary, (usize, bytes::Bytes))>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bytes::Bytes>>,
{
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut body = bytes::Bytes::new();
    for _ in 0..LIST_REPEATS {
        let t0 = Instant::now();
        body = request().await?;
        samples.push(t0.elapsed());
    }
    Ok((
        Summary::from_samples(samples, 0, start.elapsed()),
        (body.len(), body),
    ))
}

fn check_len(notes: &mut Notes, what: &str, body: &[u8], ptr: &str) -> anyhow::Result<()> {
    let v: Value = serde_json::from_slice(body).with_context(|| format!("{what}: JSON"))?;
    let len = v.pointer(ptr).and_then(Value::as_array).map_or(0, Vec::len);
    if len as u64 != BIG_LIST {
        notes.push(format!("{what}: {len}, expected {BIG_LIST}"));
    }
    Ok(())
}

/// Creates the 100-object list sets in every store and checks that every list returns them.
pub async fn seed_list_sets(t: &Targets) -> anyhow::Result<()> {
    let limits = Limits {
        max_ops: LIST_SET,
        max_time: Duration::from_secs(60),
    };
    for kind in Kind::ALL {
        let ns = list_ns(kind);
        for api in t.apis() {
            seed_capstan(api, kind, limits).await?;
        }
        let s = closed_loop(16, limits, t.kv.put(kind, ns.clone(), "obj".into(), "list")).await?;
        ensure!(s.ok == LIST_SET, "seeding etcd {ns}: {s:?}");
        let keys =
            t.kv.etcd
                .count(&t.kv.clients[0], &kind.etcd_prefix(&ns))
                .await?;
        ensure!(keys == LIST_SET, "etcd range of {ns} returned {keys} keys");
    }
    Ok(())
}

async fn seed_capstan(api: &Api, kind: Kind, limits: Limits) -> anyhow::Result<()> {
    let ns = list_ns(kind);
    let s = closed_loop(
        16,
        limits,
        api.kube.create(kind, ns.clone(), "obj".into(), "list"),
    )
    .await?;
    ensure!(s.ok == LIST_SET, "seeding {} {ns}: {s:?}", api.kube.server);
    let url = format!(
        "{}?labelSelector={}%3Dlist",
        collection(&api.kube.server, &ns, kind.plural()),
        crate::payload::LABEL_KEY
    );
    let list: Value = serde_json::from_slice(&expect(api.spare.get(url), StatusCode::OK).await?)?;
    let items = list["items"].as_array().map_or(0, Vec::len) as u64;
    ensure!(
        items == LIST_SET,
        "list of {ns} on {} returned {items} items",
        api.kube.server
    );
    Ok(())
}

/// The rate-limited run on each server.
pub struct Rates {
    pub capstan: OpenLoop,
    pub etcd: OpenLoop,
    pub capstan_etcd: Option<OpenLoop>,
}

/// ConfigMap creates (etcd: puts) at RATE per second for RATE_TIME, one server at a time.
pub async fn rate_limited(t: &Targets, notes: &mut Notes) -> anyhow::Result<Rates> {
    let ns = "rate".to_string();
    let creates = |kube: &Kube| kube.create(Kind::ConfigMap, ns.clone(), "r".into(), "rate");
    eprintln!("  Capstan ConfigMap creates at {RATE}/s for {RATE_TIME:?}");
    let capstan = open_loop(creates(&t.capstan.kube)).await?;
    note_errors(notes, "rate-limited Capstan creates", &capstan.service);
    eprintln!("  etcd puts at {RATE}/s for {RATE_TIME:?}");
    let etcd = open_loop(t.kv.put(Kind::ConfigMap, ns.clone(), "r".into(), "rate")).await?;
    note_errors(notes, "rate-limited etcd puts", &etcd.service);
    let capstan_etcd = match &t.capstan_etcd {
        Some(api) => {
            eprintln!("  Capstan-on-etcd ConfigMap creates at {RATE}/s for {RATE_TIME:?}");
            let run = open_loop(creates(&api.kube)).await?;
            note_errors(notes, "rate-limited Capstan-on-etcd creates", &run.service);
            Some(run)
        }
        None => None,
    };
    Ok(Rates {
        capstan,
        etcd,
        capstan_etcd,
    })
}

async fn open_loop(op: runner::Op) -> anyhow::Result<OpenLoop> {
    runner::open_loop(RATE, RATE_TIME, RATE_CLIENTS, 512, op).await
}

/// `n` clients built by `make`.
pub fn clients(
    n: usize,
    make: impl Fn() -> anyhow::Result<Client>,
) -> anyhow::Result<Arc<Vec<Client>>> {
    Ok(Arc::new(
        (0..n).map(|_| make()).collect::<anyhow::Result<Vec<_>>>()?,
    ))
}
