//! Explanations: every node, every plugin's verdict and score for one pod, computed with the
//! same plugins the scheduler runs (`capstan explain pod`).

use crate::cache::Snapshot;
use crate::framework::{CycleState, Framework, ScoreBreakdown};
use crate::nodeinfo::NodeInfo;
use crate::podinfo::PodInfo;
use crate::status::{Code, Status};
use crate::{SchedulerError, SchedulerOptions};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kube::Client;
use kube::api::{Api, ListParams};
use std::fmt;
use std::sync::Arc;

/// One node's row.
#[derive(Clone, Debug)]
pub struct NodeRow {
    pub node: String,
    /// One per filter plugin, in framework order.
    pub filters: Vec<Status>,
    pub feasible: bool,
    /// One per score plugin when feasible.
    pub scores: Vec<ScoreBreakdown>,
    pub total: Option<i64>,
}

/// The whole table and the decision.
#[derive(Clone, Debug)]
pub struct Explanation {
    pub pod: String,
    pub bound_to: Option<String>,
    pub filter_plugins: Vec<&'static str>,
    pub score_plugins: Vec<(&'static str, i64)>,
    pub rows: Vec<NodeRow>,
    /// The node the plugins prefer now, if any fits.
    pub best: Option<String>,
    /// Why nothing fits (upstream's message), if so.
    pub failure: Option<String>,
}

/// Evaluates `pod` (its own placement removed from `snap`) against every node.
pub fn explain(
    fw: &Framework,
    snap: &Snapshot,
    pod: &PodInfo,
    bound_to: Option<String>,
) -> Explanation {
    let mut state = CycleState::default();
    let pre = fw.run_pre_filter(&mut state, pod, snap);
    let mut nodes: Vec<&NodeInfo> = snap.nodes().collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let mut rows: Vec<NodeRow> = nodes
        .iter()
        .map(|n| {
            let filters = if pre.is_success() {
                fw.run_filter_all(&state, pod, n)
            } else {
                vec![pre.clone(); fw.filter.len()]
            };
            let feasible = filters
                .iter()
                .all(|s| matches!(s.code, Code::Success | Code::Skip));
            NodeRow {
                node: n.name.clone(),
                filters,
                feasible,
                scores: Vec::new(),
                total: None,
            }
        })
        .collect();
    let feasible: Vec<&NodeInfo> = nodes
        .iter()
        .zip(&rows)
        .filter(|(_, r)| r.feasible)
        .map(|(n, _)| *n)
        .collect();
    let mut best = None;
    if !feasible.is_empty()
        && fw
            .run_pre_score(&mut state, pod, &feasible, snap)
            .is_success()
    {
        let (totals, parts) = fw.run_score(&state, pod, &feasible, snap, true);
        let mut it = parts.into_iter().zip(totals);
        for r in rows.iter_mut().filter(|r| r.feasible) {
            if let Some((p, t)) = it.next() {
                r.scores = p;
                r.total = Some(t);
            }
        }
        best = rows
            .iter()
            .filter_map(|r| r.total.map(|t| (t, &r.node)))
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(a.1)))
            .map(|(_, n)| n.clone());
    }
    let failure = if best.is_none() {
        let err = crate::algorithm::FitError {
            num_nodes: rows.len(),
            statuses: rows
                .iter()
                .filter_map(|r| {
                    r.filters
                        .iter()
                        .find(|s| s.is_rejected())
                        .map(|s| (r.node.clone(), s.clone()))
                })
                .collect(),
            pre_filter: (!pre.is_success()).then_some(pre),
        };
        Some(if rows.is_empty() {
            "no nodes available to schedule pods".into()
        } else {
            err.message()
        })
    } else {
        None
    };
    Explanation {
        pod: pod.key.clone(),
        bound_to,
        filter_plugins: fw.filter_names(),
        score_plugins: fw.score.iter().map(|(p, w)| (p.name(), *w)).collect(),
        rows,
        best,
        failure,
    }
}

/// Reads the cluster through the API and explains `namespace/name`.
pub async fn explain_pod(
    client: Client,
    namespace: &str,
    name: &str,
    options: &SchedulerOptions,
) -> Result<Explanation, SchedulerError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = pods.get(name).await.map_err(SchedulerError::Api)?;
    let nodes: Api<Node> = Api::all(client.clone());
    let nodes = nodes
        .list(&ListParams::default())
        .await
        .map_err(SchedulerError::Api)?
        .items;
    let all: Api<Pod> = Api::all(client.clone());
    let others = all
        .list(&ListParams::default())
        .await
        .map_err(SchedulerError::Api)?
        .items;
    let classes: Api<PriorityClass> = Api::all(client);
    let classes = classes
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let priority = |p: &Pod| {
        let spec = p.spec.as_ref();
        spec.and_then(|s| s.priority).unwrap_or_else(|| {
            let wanted = spec.and_then(|s| s.priority_class_name.clone());
            classes
                .iter()
                .find(|c| match &wanted {
                    Some(n) => c.metadata.name.as_ref() == Some(n),
                    None => c.global_default == Some(true),
                })
                .map_or(0, |c| c.value)
        })
    };
    let key = crate::podinfo::pod_key(&pod);
    let placed: Vec<Arc<PodInfo>> = others
        .into_iter()
        .filter(|p| crate::podinfo::pod_key(p) != key)
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded") | Some("Failed")
            )
        })
        .map(|p| {
            let prio = priority(&p);
            Arc::new(PodInfo::new(Arc::new(p), prio))
        })
        .collect();
    let snap = Snapshot::from_parts(nodes, placed);
    let bound_to = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty());
    let mut unbound = pod.clone();
    if let Some(spec) = unbound.spec.as_mut() {
        spec.node_name = None;
    }
    let prio = priority(&unbound);
    let info = PodInfo::new(Arc::new(unbound), prio);
    let fw = crate::plugins::default_framework(options.scoring_strategy);
    Ok(explain(&fw, &snap, &info, bound_to))
}

fn verdict(s: &Status) -> String {
    match s.code {
        Code::Success => "ok".into(),
        Code::Skip => "-".into(),
        _ => format!("NO: {}", s.message()),
    }
}

impl Explanation {
    /// The closing line: where the pod would go, or why its node won.
    pub fn decision(&self) -> String {
        match (&self.bound_to, &self.best) {
            (Some(node), _) => {
                let why = self
                    .rows
                    .iter()
                    .find(|r| r.node == *node)
                    .map(|r| match r.total {
                        Some(t) => {
                            let mut parts: Vec<&ScoreBreakdown> =
                                r.scores.iter().filter(|s| s.weighted != 0).collect();
                            parts.sort_by_key(|s| std::cmp::Reverse(s.weighted));
                            let parts: Vec<String> = parts
                                .iter()
                                .map(|s| format!("{} {}", s.plugin, s.weighted))
                                .collect();
                            format!("total {t} ({})", parts.join(", "))
                        }
                        None => "it no longer passes the filters".into(),
                    })
                    .unwrap_or_else(|| "the node is gone".into());
                let now = match &self.best {
                    Some(b) if b != node => format!("; today the best node would be {b}"),
                    _ => String::new(),
                };
                format!("bound to {node}: {why}{now}")
            }
            (None, Some(best)) => format!("would be placed on {best}"),
            (None, None) => format!(
                "would stay Pending: {}",
                self.failure.clone().unwrap_or_default()
            ),
        }
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut header: Vec<String> = vec!["NODE".into()];
        header.extend(self.filter_plugins.iter().map(|p| p.to_string()));
        header.extend(self.score_plugins.iter().map(|(p, w)| format!("{p}(x{w})")));
        header.push("TOTAL".into());
        let mut table = vec![header];
        for r in &self.rows {
            let mut row = vec![r.node.clone()];
            row.extend(r.filters.iter().map(verdict));
            if r.feasible && r.total.is_some() {
                row.extend(r.scores.iter().map(|s| s.weighted.to_string()));
                row.push(r.total.unwrap_or(0).to_string());
            } else {
                row.extend(std::iter::repeat_n(
                    "-".to_string(),
                    self.score_plugins.len() + 1,
                ));
            }
            table.push(row);
        }
        let widths: Vec<usize> = (0..table[0].len())
            .map(|c| {
                table
                    .iter()
                    .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        writeln!(f, "pod {}", self.pod)?;
        for row in &table {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            writeln!(f, "{}", cells.join("  ").trim_end())?;
        }
        writeln!(f, "{}", self.decision())
    }
}
