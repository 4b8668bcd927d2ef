//! InterPodAffinity: required pod affinity and anti-affinity (both the incoming pod's and,
//! symmetrically, existing pods' anti-affinity) filter; preferred terms score per topology.

use crate::cache::Snapshot;
use crate::framework::{
    CycleState, FilterPlugin, MAX_NODE_SCORE, PreFilterPlugin, PreScorePlugin, ScorePlugin,
};
use crate::nodeinfo::NodeInfo;
use crate::podinfo::PodInfo;
use crate::status::Status;
use std::collections::HashMap;

pub const NAME: &str = "InterPodAffinity";
pub const AFFINITY_REASON: &str = "node(s) didn't match pod affinity rules";
pub const ANTI_AFFINITY_REASON: &str = "node(s) didn't match pod anti-affinity rules";
pub const EXISTING_ANTI_AFFINITY_REASON: &str =
    "node(s) didn't satisfy existing pods anti-affinity rules";
/// Weight of existing pods' required affinity terms in scoring (upstream's default).
const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

type Pair = (String, String);

#[derive(Default)]
struct FilterState {
    existing_anti: HashMap<Pair, i64>,
    affinity: HashMap<Pair, i64>,
    anti: HashMap<Pair, i64>,
}

#[derive(Default)]
struct ScoreState {
    /// topology key → value → score.
    topo: HashMap<String, HashMap<String, i64>>,
}

pub struct InterPodAffinity;

fn pair(node: &NodeInfo, key: &str) -> Option<Pair> {
    node.labels().get(key).map(|v| (key.to_string(), v.clone()))
}

impl PreFilterPlugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pre_filter(&self, state: &mut CycleState, pod: &PodInfo, snap: &Snapshot) -> Status {
        let own_terms = !pod.required_affinity.is_empty() || !pod.required_anti_affinity.is_empty();
        let any_existing_anti = snap.nodes().any(|n| n.pods_with_required_anti_affinity > 0);
        if !own_terms && !any_existing_anti {
            return Status::skip();
        }
        let mut s = FilterState::default();
        for node in snap.nodes() {
            if node.pods_with_required_anti_affinity > 0 {
                for existing in &node.pods {
                    for t in &existing.required_anti_affinity {
                        if t.matches(pod)
                            && let Some(p) = pair(node, &t.topology_key)
                        {
                            *s.existing_anti.entry(p).or_default() += 1;
                        }
                    }
                }
            }
            if !own_terms {
                continue;
            }
            for existing in &node.pods {
                if !pod.required_affinity.is_empty()
                    && pod.required_affinity.iter().all(|t| t.matches(existing))
                {
                    for t in &pod.required_affinity {
                        if let Some(p) = pair(node, &t.topology_key) {
                            *s.affinity.entry(p).or_default() += 1;
                        }
                    }
                }
                for t in &pod.required_anti_affinity {
                    if t.matches(existing)
                        && let Some(p) = pair(node, &t.topology_key)
                    {
                        *s.anti.entry(p).or_default() += 1;
                    }
                }
            }
        }
        state.write(NAME, s);
        Status::success()
    }
}

impl FilterPlugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        NAME
    }

    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let Some(s) = state.read::<FilterState>(NAME) else {
            return Status::success();
        };
        let labels = node.labels();
        // Upstream's order: the pod's affinity, its anti-affinity, then existing pods'.
        if !pod.required_affinity.is_empty() {
            let all_match = pod.required_affinity.iter().all(|t| {
                pair(node, &t.topology_key)
                    .is_some_and(|p| s.affinity.get(&p).is_some_and(|c| *c > 0))
            });
            // The first pod of a group that selects itself may go anywhere its keys exist.
            let first_of_group = s.affinity.is_empty()
                && pod.required_affinity.iter().all(|t| t.matches(pod))
                && pod
                    .required_affinity
                    .iter()
                    .all(|t| labels.contains_key(&t.topology_key));
            if !all_match && !first_of_group {
                return Status::unresolvable(AFFINITY_REASON);
            }
        }
        for t in &pod.required_anti_affinity {
            if pair(node, &t.topology_key).is_some_and(|p| s.anti.get(&p).is_some_and(|c| *c > 0)) {
                return Status::unschedulable(ANTI_AFFINITY_REASON);
            }
        }
        if !s.existing_anti.is_empty()
            && labels.iter().any(|(k, v)| {
                s.existing_anti
                    .get(&(k.clone(), v.clone()))
                    .is_some_and(|c| *c > 0)
            })
        {
            return Status::unschedulable(EXISTING_ANTI_AFFINITY_REASON);
        }
        Status::success()
    }
}

impl PreScorePlugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pre_score(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        _: &[&NodeInfo],
        snap: &Snapshot,
    ) -> Status {
        let own = !pod.preferred_affinity.is_empty() || !pod.preferred_anti_affinity.is_empty();
        if !own && snap.nodes().all(|n| n.pods_with_affinity == 0) {
            return Status::skip();
        }
        let mut s = ScoreState::default();
        let mut add = |node: &NodeInfo, key: &str, w: i64| {
            if let Some(v) = node.labels().get(key) {
                *s.topo
                    .entry(key.to_string())
                    .or_default()
                    .entry(v.clone())
                    .or_default() += w;
            }
        };
        for node in snap.nodes() {
            if !own && node.pods_with_affinity == 0 {
                continue;
            }
            for existing in &node.pods {
                for (w, t) in &pod.preferred_affinity {
                    if t.matches(existing) {
                        add(node, &t.topology_key, *w);
                    }
                }
                for (w, t) in &pod.preferred_anti_affinity {
                    if t.matches(existing) {
                        add(node, &t.topology_key, -*w);
                    }
                }
                if !existing.has_affinity() {
                    continue;
                }
                for t in &existing.required_affinity {
                    if t.matches(pod) {
                        add(node, &t.topology_key, HARD_POD_AFFINITY_WEIGHT);
                    }
                }
                for (w, t) in &existing.preferred_affinity {
                    if t.matches(pod) {
                        add(node, &t.topology_key, *w);
                    }
                }
                for (w, t) in &existing.preferred_anti_affinity {
                    if t.matches(pod) {
                        add(node, &t.topology_key, -*w);
                    }
                }
            }
        }
        if s.topo.is_empty() {
            return Status::skip();
        }
        state.write(NAME, s);
        Status::success()
    }
}

impl ScorePlugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        NAME
    }

    fn score(&self, state: &CycleState, _: &PodInfo, node: &NodeInfo, _: &Snapshot) -> i64 {
        let Some(s) = state.read::<ScoreState>(NAME) else {
            return 0;
        };
        let labels = node.labels();
        s.topo
            .iter()
            .filter_map(|(k, vals)| labels.get(k).and_then(|v| vals.get(v)))
            .sum()
    }

    fn normalize(&self, _: &CycleState, _: &PodInfo, scores: &mut [i64]) {
        let (min, max) = (
            scores.iter().copied().min().unwrap_or(0),
            scores.iter().copied().max().unwrap_or(0),
        );
        for s in scores.iter_mut() {
            *s = if max > min {
                MAX_NODE_SCORE * (*s - min) / (max - min)
            } else {
                0
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_support::*;
    use crate::testutil::{bound, node_json, pod_json};
    use k8s_openapi::api::core::v1::{Node, Pod};
    use serde_json::{Value, json};

    fn zoned(name: &str, zone: &str) -> Node {
        node_json(
            name,
            json!({"zone": zone, "kubernetes.io/hostname": name}),
            json!({}),
            "4",
            "4Gi",
            10,
        )
    }

    fn labeled(name: &str, app: &str, affinity: Value) -> Pod {
        pod_json(
            name,
            json!({"app": app}),
            json!({"containers": [], "affinity": affinity}),
        )
    }

    fn term(app: &str, key: &str) -> Value {
        json!({"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key})
    }

    /// Runs PreFilter then Filter on each node; returns the feasible ones.
    fn feasible(s: &Snapshot, p: Pod) -> Vec<String> {
        let p = info(p);
        let mut st = state();
        let pre = InterPodAffinity.pre_filter(&mut st, &p, s);
        s.nodes()
            .filter(|n| pre.is_skip() || InterPodAffinity.filter(&st, &p, n).is_success())
            .map(|n| n.name.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    fn cluster() -> Snapshot {
        snap(
            vec![zoned("a1", "a"), zoned("a2", "a"), zoned("b1", "b")],
            vec![bound(labeled("db", "db", json!({})), "a1")],
        )
    }

    #[test]
    fn required_affinity_follows_the_topology_of_matching_pods() {
        let aff = json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("db", "zone")]}});
        assert_eq!(
            feasible(&cluster(), labeled("web", "web", aff)),
            vec!["a1", "a2"]
        );
        let host = json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("db", "kubernetes.io/hostname")]}});
        assert_eq!(
            feasible(&cluster(), labeled("web", "web", host)),
            vec!["a1"]
        );
        let none = json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("cache", "zone")]}});
        assert!(feasible(&cluster(), labeled("web", "web", none)).is_empty());
        // The first pod of a self-selecting group may start anywhere.
        let own = json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("cache", "zone")]}});
        assert_eq!(feasible(&cluster(), labeled("c", "cache", own)).len(), 3);
    }

    #[test]
    fn required_anti_affinity_both_ways() {
        let anti = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("db", "zone")]}});
        assert_eq!(
            feasible(&cluster(), labeled("db2", "db", anti.clone())),
            vec!["b1"]
        );
        // An existing pod's anti-affinity keeps matching pods out of its topology.
        let s = snap(
            vec![zoned("a1", "a"), zoned("a2", "a"), zoned("b1", "b")],
            vec![bound(labeled("db", "db", anti), "a1")],
        );
        assert_eq!(feasible(&s, labeled("other", "db", json!({}))), vec!["b1"]);
        assert_eq!(feasible(&s, labeled("other", "web", json!({}))).len(), 3);
        let p = info(labeled("other", "db", json!({})));
        let mut st = state();
        InterPodAffinity.pre_filter(&mut st, &p, &s);
        assert_eq!(
            InterPodAffinity
                .filter(&st, &p, s.get("a2").unwrap())
                .reasons,
            vec![EXISTING_ANTI_AFFINITY_REASON.to_string()]
        );
    }

    #[test]
    fn preferred_terms_score_by_topology() {
        let s = cluster();
        let p = info(labeled(
            "web",
            "web",
            json!({
                "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 50, "podAffinityTerm": term("db", "zone")}]}
            }),
        ));
        let mut st = state();
        let feas: Vec<&NodeInfo> = s.nodes().collect();
        assert!(
            InterPodAffinity
                .pre_score(&mut st, &p, &feas, &s)
                .is_success()
        );
        let names: Vec<&str> = feas.iter().map(|n| n.name.as_str()).collect();
        let mut scores: Vec<i64> = feas
            .iter()
            .map(|n| InterPodAffinity.score(&st, &p, n, &s))
            .collect();
        InterPodAffinity.normalize(&st, &p, &mut scores);
        for (n, sc) in names.iter().zip(&scores) {
            assert_eq!(*sc, if n.starts_with('a') { 100 } else { 0 }, "{n}");
        }
    }
}
