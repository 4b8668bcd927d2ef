//! The store-backend section of the report (issue 3): Capstan on its embedded SQLite store
//! beside Capstan on etcd, from the same run.

use std::fmt::Write as _;

use crate::matrix::MatrixRow;
use crate::phases::{BIG_LIST, BackendBigList, RATE, RATE_TIME};
use crate::procs::Rss;
use crate::report::{Report, mib, ratio};
use crate::runner::OpenLoop;
use crate::stats::ms;

/// What the etcd-backed Capstan produced besides its matrix column.
pub struct EtcdBackedRun {
    /// (server, its etcd) memory at the points the SQLite server's is read.
    pub idle: (Rss, Rss),
    pub end: (Rss, Rss),
    pub big: BackendBigList,
    pub rate: OpenLoop,
    pub watch_details: Vec<String>,
}

const INTRO: &str = "The same `capstan` binary twice: on its embedded SQLite store (the server of the \
    tables above: its columns here are the same measurements) and started with `--datastore-endpoint \
    etcd://127.0.0.1:PORT` on a separate single-member etcd 3.4 on loopback with its own temp data dir \
    (k3s's external-datastore setup). Both servers hold the same objects (the 10,000 pods, the list \
    sets) and each matrix cell runs on one server at a time, the two back to back. Ratios are \
    etcd/SQLite: a p50 ratio above 1× means slower on etcd, an ops/s ratio above 1× faster on etcd.";

/// Appends the section, if the run measured the etcd-backed server.
pub fn render(out: &mut String, r: &Report) {
    let Some(b) = &r.backend else {
        return;
    };
    out.push_str("\n### Store backends: Capstan on SQLite vs Capstan on etcd\n\n");
    out.push_str(INTRO);
    out.push_str("\n\n");
    matrix(out, &r.rows);
    if !b.watch_details.is_empty() {
        out.push_str("\nWatch runs on etcd in detail (as above):\n\n");
        for d in &b.watch_details {
            let _ = writeln!(out, "- {d}");
        }
    }
    out.push_str("\n| measure | SQLite | etcd | etcd/SQLite |\n| --- | ---: | ---: | ---: |\n");
    memory(out, r, b);
    rate(out, &r.rate.0, &b.rate);
    big(out, r, &b.big);
}

fn matrix(out: &mut String, rows: &[MatrixRow]) {
    out.push_str(
        "| kind | op | clients | SQLite p50 ms | SQLite p99 ms | SQLite ops/s | etcd p50 ms | etcd p99 ms | etcd ops/s | p50 etcd/SQLite | ops/s etcd/SQLite |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for row in rows {
        let Some(e) = &row.capstan_etcd else {
            continue;
        };
        let s = &row.capstan;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.0} | {} | {} | {:.0} | {} | {} |",
            row.kind.name(),
            row.op,
            row.clients,
            ms(s.p50),
            ms(s.p99),
            s.throughput(),
            ms(e.p50),
            ms(e.p99),
            e.throughput(),
            ratio(e.p50.as_secs_f64(), s.p50.as_secs_f64()),
            ratio(e.throughput(), s.throughput())
        );
    }
}

/// A KiB ratio, etcd over SQLite.
fn kib_ratio(etcd: u64, sqlite: u64) -> String {
    ratio(etcd as f64, sqlite as f64)
}

fn memory(out: &mut String, r: &Report, b: &EtcdBackedRun) {
    let sqlite_idle = r.memory.idle.0.rss;
    let (server, store) = (b.idle.0.rss, b.idle.1.rss);
    let _ = writeln!(
        out,
        "| RSS idle after start: the Capstan process | {} | {} | {} |",
        mib(sqlite_idle),
        mib(server),
        kib_ratio(server, sqlite_idle)
    );
    let _ = writeln!(
        out,
        "| … Capstan and its store (etcd: + the etcd process) | {} | {} | {} |",
        mib(sqlite_idle),
        mib(server + store),
        kib_ratio(server + store, sqlite_idle)
    );
    let sqlite_big = r.memory.after_big.0.rss;
    let (server, store) = (b.big.rss.0.rss, b.big.rss.1.rss);
    let _ = writeln!(
        out,
        "| RSS after {BIG_LIST} pods: Capstan (etcd: + the etcd process; ratio of totals) | {} | {} (+ {}) | {} |",
        mib(sqlite_big),
        mib(server),
        mib(store),
        kib_ratio(server + store, sqlite_big)
    );
    let sqlite_end = r.memory.end.0;
    let (server, store) = b.end;
    let _ = writeln!(
        out,
        "| RSS at the end of the run / peak: Capstan (etcd: + the etcd process; ratio of totals) | {} / {} | {} / {} (+ {} / {}) | {} |",
        mib(sqlite_end.rss),
        mib(sqlite_end.hwm),
        mib(server.rss),
        mib(server.hwm),
        mib(store.rss),
        mib(store.hwm),
        kib_ratio(server.rss + store.rss, sqlite_end.rss)
    );
}

fn rate(out: &mut String, sqlite: &OpenLoop, etcd: &OpenLoop) {
    let secs = RATE_TIME.as_secs();
    let (s, e) = (&sqlite.service, &etcd.service);
    let _ = writeln!(
        out,
        "| ConfigMap creates at {RATE}/s for {secs} s: p99 | {} ms | {} ms | {} |",
        ms(s.p99),
        ms(e.p99),
        ratio(e.p99.as_secs_f64(), s.p99.as_secs_f64())
    );
    let _ = writeln!(
        out,
        "| … p50 / max | {} / {} ms | {} / {} ms | |",
        ms(s.p50),
        ms(s.max),
        ms(e.p50),
        ms(e.max)
    );
    let _ = writeln!(
        out,
        "| … completed (rate achieved) | {} ({:.0}/s) | {} ({:.0}/s) | |",
        s.ok,
        s.throughput(),
        e.ok,
        e.throughput()
    );
}

fn big(out: &mut String, r: &Report, b: &BackendBigList) {
    let (s, e) = (&r.big.capstan_create, &b.create);
    let _ = writeln!(
        out,
        "| create {BIG_LIST} pods, 64 clients: ops/s, p99 | {:.0}/s, {} ms | {:.0}/s, {} ms | {} |",
        s.throughput(),
        ms(s.p99),
        e.throughput(),
        ms(e.p99),
        ratio(e.throughput(), s.throughput())
    );
    let mb = |n: usize| format!("{:.1} MB", n as f64 / 1e6);
    let _ = writeln!(
        out,
        "| list {BIG_LIST} pods, JSON (median of 5) | {} ms ({}) | {} ms ({}) | {} |",
        ms(r.big.json.p50),
        mb(r.big.json_bytes),
        ms(b.json.p50),
        mb(b.json_bytes),
        ratio(b.json.p50.as_secs_f64(), r.big.json.p50.as_secs_f64())
    );
}
