//! The create/get/list/watch matrix: per kind and client count, each cell runs on one server
//! at a time (Capstan on SQLite, Capstan on etcd, then the raw etcd), so no two servers are
//! measured together and machine-load drift hits all of them alike.

use anyhow::Context;

use crate::ops::create_ns;
use crate::payload::Kind;
use crate::phases::{Api, CONCURRENCY, Notes, Targets, note_errors, watch_ns};
use crate::runner::{Limits, Op, closed_loop};
use crate::stats::{Summary, ms};
use crate::watch;

/// One line of the matrix.
pub struct MatrixRow {
    pub kind: Kind,
    pub op: &'static str,
    pub clients: usize,
    /// Capstan on SQLite.
    pub capstan: Summary,
    /// The raw etcd; none for watch.
    pub etcd: Option<Summary>,
    /// Capstan on etcd; none with `--skip-backends`.
    pub capstan_etcd: Option<Summary>,
}

/// The matrix and the per-run watch details of each Capstan server.
pub struct Matrix {
    pub rows: Vec<MatrixRow>,
    pub watch_details: Vec<String>,
    pub backend_watch_details: Vec<String>,
}

/// The three operations of a cell, for one Capstan server or the raw etcd.
struct CellOps {
    create: Op,
    get: Op,
    list: Op,
}

fn capstan_ops(api: &Api, kind: Kind, prefix: &str) -> CellOps {
    CellOps {
        create: api
            .kube
            .create(kind, create_ns(kind), prefix.into(), "create"),
        get: api.kube.get(kind),
        list: api.kube.list(kind),
    }
}

pub async fn run(t: &Targets, cell: Limits, notes: &mut Notes) -> anyhow::Result<Matrix> {
    let mut m = Matrix {
        rows: Vec::new(),
        watch_details: Vec::new(),
        backend_watch_details: Vec::new(),
    };
    for kind in Kind::ALL {
        for clients in CONCURRENCY {
            let prefix = format!("c{clients}");
            let sqlite = capstan_ops(&t.capstan, kind, &prefix);
            let backed = t
                .capstan_etcd
                .as_ref()
                .map(|api| capstan_ops(api, kind, &prefix));
            let raw = CellOps {
                create: t.kv.put(kind, create_ns(kind), prefix.clone(), "create"),
                get: t.kv.get(kind),
                list: t.kv.list(kind),
            };
            for op in ["create", "get", "list"] {
                let pick = |ops: &CellOps| match op {
                    "create" => ops.create.clone(),
                    "get" => ops.get.clone(),
                    _ => ops.list.clone(),
                };
                let what = format!("{} {op} x{clients}", kind.name());
                eprintln!("  {what}");
                let capstan = closed_loop(clients, cell, pick(&sqlite)).await?;
                note_errors(notes, &format!("{what} Capstan"), &capstan);
                let capstan_etcd = match &backed {
                    Some(ops) => {
                        let s = closed_loop(clients, cell, pick(ops)).await?;
                        note_errors(notes, &format!("{what} Capstan on etcd"), &s);
                        Some(s)
                    }
                    None => None,
                };
                let etcd = closed_loop(clients, cell, pick(&raw)).await?;
                note_errors(notes, &format!("{what} etcd"), &etcd);
                m.rows.push(MatrixRow {
                    kind,
                    op,
                    clients,
                    capstan,
                    etcd: Some(etcd),
                    capstan_etcd,
                });
            }
            eprintln!("  {} watch x{clients}", kind.name());
            let capstan =
                watch_cell(&t.capstan, kind, clients, "", notes, &mut m.watch_details).await?;
            let capstan_etcd = match &t.capstan_etcd {
                Some(api) => Some(
                    watch_cell(
                        api,
                        kind,
                        clients,
                        " (Capstan on etcd)",
                        notes,
                        &mut m.backend_watch_details,
                    )
                    .await?,
                ),
                None => None,
            };
            m.rows.push(MatrixRow {
                kind,
                op: "watch",
                clients,
                capstan,
                etcd: None,
                capstan_etcd,
            });
        }
    }
    Ok(m)
}

/// One watch run on `api`; appends its detail line to `details`.
async fn watch_cell(
    api: &Api,
    kind: Kind,
    clients: usize,
    label: &str,
    notes: &mut Notes,
    details: &mut Vec<String>,
) -> anyhow::Result<Summary> {
    let what = format!("{} watch x{clients}{label}", kind.name());
    let (summary, detail) = watch::run(
        &api.kube.server,
        &api.kube.clients,
        &api.spare,
        kind,
        &watch_ns(kind, clients),
        clients,
    )
    .await
    .with_context(|| what.clone())?;
    if summary.errors > 0 {
        notes.push(format!("{what}: {} events never arrived", summary.errors));
    }
    details.push(format!(
        "{} x{clients}: {:.0}% of events before the create's response; create sent → event p50 {} ms, p99 {} ms",
        kind.name(),
        detail.early_share * 100.0,
        ms(detail.from_send.p50),
        ms(detail.from_send.p99)
    ));
    Ok(summary)
}
