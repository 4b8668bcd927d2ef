//! The plugin framework: one small trait per extension point, per-cycle state, and the
//! framework that runs a profile's plugins in order (upstream `framework.Framework`).

use crate::cache::Snapshot;
use crate::nodeinfo::NodeInfo;
use crate::podinfo::PodInfo;
use crate::status::{Code, Status};
use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Highest score a plugin gives a node (upstream `MaxNodeScore`).
pub const MAX_NODE_SCORE: i64 = 100;

/// Data plugins compute in PreFilter/PreScore and read in Filter/Score, for one pod's cycle.
#[derive(Default)]
pub struct CycleState {
    data: HashMap<&'static str, Box<dyn Any + Send + Sync>>,
    skip_filter: HashSet<&'static str>,
    skip_score: HashSet<&'static str>,
}

impl CycleState {
    pub fn write<T: Any + Send + Sync>(&mut self, key: &'static str, value: T) {
        self.data.insert(key, Box::new(value));
    }

    pub fn read<T: Any>(&self, key: &'static str) -> Option<&T> {
        self.data.get(key).and_then(|b| b.downcast_ref())
    }
}

pub trait PreFilterPlugin: Send + Sync {
    fn name(&self) -> &'static str;
    fn pre_filter(&self, state: &mut CycleState, pod: &PodInfo, snap: &Snapshot) -> Status;
}

pub trait FilterPlugin: Send + Sync {
    fn name(&self) -> &'static str;
    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status;
}

pub trait PreScorePlugin: Send + Sync {
    fn name(&self) -> &'static str;
    fn pre_score(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        feasible: &[&NodeInfo],
        snap: &Snapshot,
    ) -> Status;
}

pub trait ScorePlugin: Send + Sync {
    fn name(&self) -> &'static str;
    fn score(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo, snap: &Snapshot) -> i64;
    /// Maps raw scores onto 0..=MAX_NODE_SCORE; the default leaves them as they are.
    fn normalize(&self, _state: &CycleState, _pod: &PodInfo, _scores: &mut [i64]) {}
}

pub trait ReservePlugin: Send + Sync {
    fn name(&self) -> &'static str;
    fn reserve(&self, state: &mut CycleState, pod: &PodInfo, node: &str) -> Status;
    fn unreserve(&self, state: &mut CycleState, pod: &PodInfo, node: &str);
}

/// Node name → the status that rejected it.
pub type NodeToStatus = HashMap<String, Status>;

/// What a PostFilter plugin proposes: a node to nominate and the pods to evict there.
#[derive(Clone, Debug, Default)]
pub struct PostFilterResult {
    pub nominated_node: Option<String>,
    pub victims: Vec<Arc<PodInfo>>,
    /// Upstream's "preemption: ..." message part when nothing was found.
    pub message: String,
}

pub trait PostFilterPlugin: Send + Sync {
    fn name(&self) -> &'static str;
    fn post_filter(
        &self,
        fw: &Framework,
        state: &CycleState,
        pod: &PodInfo,
        snap: &Snapshot,
        statuses: &NodeToStatus,
    ) -> PostFilterResult;
}

/// One profile: the plugins of each extension point, in order, with score weights.
#[derive(Clone, Default)]
pub struct Framework {
    pub pre_filter: Vec<Arc<dyn PreFilterPlugin>>,
    pub filter: Vec<Arc<dyn FilterPlugin>>,
    pub post_filter: Vec<Arc<dyn PostFilterPlugin>>,
    pub pre_score: Vec<Arc<dyn PreScorePlugin>>,
    pub score: Vec<(Arc<dyn ScorePlugin>, i64)>,
    pub reserve: Vec<Arc<dyn ReservePlugin>>,
}

/// Per-plugin contribution to one node's total (explanations).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScoreBreakdown {
    pub plugin: &'static str,
    pub raw: i64,
    /// After normalization, times the weight.
    pub weighted: i64,
}

impl Framework {
    /// Runs PreFilter; a rejection stops the cycle, Skip disables the plugin's Filter.
    pub fn run_pre_filter(&self, state: &mut CycleState, pod: &PodInfo, snap: &Snapshot) -> Status {
        for p in &self.pre_filter {
            let s = p.pre_filter(state, pod, snap);
            match s.code {
                Code::Success => {}
                Code::Skip => {
                    state.skip_filter.insert(p.name());
                }
                _ => return s.with_plugin(p.name()),
            }
        }
        Status::success()
    }

    /// Filter plugins in order; the first rejection wins.
    pub fn run_filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        run_filters(&self.active_filters(state), state, pod, node)
    }

    /// The filter plugins PreFilter did not skip, resolved once per cycle (the hot loop then
    /// does no name lookups).
    pub fn active_filters(&self, state: &CycleState) -> Vec<&dyn FilterPlugin> {
        self.filter
            .iter()
            .filter(|p| !state.skip_filter.contains(p.name()))
            .map(|p| p.as_ref())
            .collect()
    }

    /// Every filter plugin's verdict (explanations); skipped ones report Skip.
    pub fn run_filter_all(
        &self,
        state: &CycleState,
        pod: &PodInfo,
        node: &NodeInfo,
    ) -> Vec<Status> {
        self.filter
            .iter()
            .map(|p| {
                if state.skip_filter.contains(p.name()) {
                    Status::skip().with_plugin(p.name())
                } else {
                    p.filter(state, pod, node).with_plugin(p.name())
                }
            })
            .collect()
    }

    pub fn run_pre_score(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        feasible: &[&NodeInfo],
        snap: &Snapshot,
    ) -> Status {
        for p in &self.pre_score {
            let s = p.pre_score(state, pod, feasible, snap);
            match s.code {
                Code::Success => {}
                Code::Skip => {
                    state.skip_score.insert(p.name());
                }
                _ => return s.with_plugin(p.name()),
            }
        }
        Status::success()
    }

    /// Weighted total per node (same order as `nodes`), and each plugin's share when asked.
    pub fn run_score(
        &self,
        state: &CycleState,
        pod: &PodInfo,
        nodes: &[&NodeInfo],
        snap: &Snapshot,
        breakdown: bool,
    ) -> (Vec<i64>, Vec<Vec<ScoreBreakdown>>) {
        let mut totals = vec![0i64; nodes.len()];
        let mut parts: Vec<Vec<ScoreBreakdown>> = if breakdown {
            vec![Vec::new(); nodes.len()]
        } else {
            Vec::new()
        };
        let mut scores = vec![0i64; nodes.len()];
        for (p, weight) in &self.score {
            if state.skip_score.contains(p.name()) {
                for part in parts.iter_mut() {
                    part.push(ScoreBreakdown {
                        plugin: p.name(),
                        raw: 0,
                        weighted: 0,
                    });
                }
                continue;
            }
            for (i, n) in nodes.iter().enumerate() {
                scores[i] = p.score(state, pod, n, snap);
            }
            let raw = if breakdown {
                scores.clone()
            } else {
                Vec::new()
            };
            p.normalize(state, pod, &mut scores);
            for i in 0..nodes.len() {
                totals[i] += scores[i] * weight;
                if breakdown {
                    parts[i].push(ScoreBreakdown {
                        plugin: p.name(),
                        raw: raw[i],
                        weighted: scores[i] * weight,
                    });
                }
            }
        }
        (totals, parts)
    }

    /// Reserve in order; on failure unreserve those already run (reverse order).
    pub fn run_reserve(&self, state: &mut CycleState, pod: &PodInfo, node: &str) -> Status {
        for (i, p) in self.reserve.iter().enumerate() {
            let s = p.reserve(state, pod, node);
            if !s.is_success() {
                for q in self.reserve[..i].iter().rev() {
                    q.unreserve(state, pod, node);
                }
                return s.with_plugin(p.name());
            }
        }
        Status::success()
    }

    pub fn filter_names(&self) -> Vec<&'static str> {
        self.filter.iter().map(|p| p.name()).collect()
    }

    pub fn score_names(&self) -> Vec<&'static str> {
        self.score.iter().map(|(p, _)| p.name()).collect()
    }
}

/// Runs `filters` in order; the first rejection wins.
pub fn run_filters(
    filters: &[&dyn FilterPlugin],
    state: &CycleState,
    pod: &PodInfo,
    node: &NodeInfo,
) -> Status {
    for p in filters {
        let s = p.filter(state, pod, node);
        if !s.is_success() {
            return s.with_plugin(p.name());
        }
    }
    Status::success()
}

/// Scales scores so the highest becomes MAX_NODE_SCORE (reversed: the highest becomes 0),
/// as upstream's `DefaultNormalizeScore`.
pub fn default_normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max == 0 {
        if reverse {
            scores.iter_mut().for_each(|s| *s = MAX_NODE_SCORE);
        }
        return;
    }
    for s in scores.iter_mut() {
        let v = MAX_NODE_SCORE * *s / max;
        *s = if reverse { MAX_NODE_SCORE - v } else { v };
    }
}

/// Bind: makes the placement durable (the API's pods/binding).
pub trait BindPlugin: Send + Sync {
    fn name(&self) -> &'static str;
    fn bind<'a>(
        &'a self,
        pod: &'a PodInfo,
        node: &'a str,
    ) -> futures::future::BoxFuture<'a, Status>;
}
