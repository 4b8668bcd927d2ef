//! RBAC: Roles, ClusterRoles (with aggregation), RoleBindings and ClusterRoleBindings from the
//! watch cache, with upstream's bootstrap roles. The rules are indexed by subject; the index is
//! rebuilt lazily after any RBAC object changes, so a request costs a few hash lookups.

pub mod bootstrap;
pub mod escalation;
pub mod eval;

pub use eval::{Index, PolicyRule, RoleKey};

use super::{Attributes, Decision, UserInfo};
use crate::cache::{EventReceiver, WatchCache};
use crate::server::ApiServer;
use capstan_api::resources::RESOURCES;
use serde_json::Value;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use tokio::sync::broadcast::error::TryRecvError;

/// The RBAC API group.
pub const GROUP: &str = "rbac.authorization.k8s.io";

/// Indices into `RESOURCES` of roles, clusterroles, rolebindings, clusterrolebindings.
fn rbac_resources() -> [usize; 4] {
    static IDX: OnceLock<[usize; 4]> = OnceLock::new();
    *IDX.get_or_init(|| {
        let find = |plural: &str| {
            RESOURCES
                .iter()
                .position(|r| r.group == GROUP && r.plural == plural)
                .unwrap_or(usize::MAX)
        };
        [
            find("roles"),
            find("clusterroles"),
            find("rolebindings"),
            find("clusterrolebindings"),
        ]
    })
}

/// The index of one server's watch cache and the cache events that tell it is stale.
struct Tracker {
    events: Option<EventReceiver>,
    index: Arc<Index>,
    dirty: bool,
}

/// One tracker per watch cache (tests run several servers in one process).
type Trackers = Vec<(Weak<WatchCache>, Arc<Mutex<Tracker>>)>;
static TRACKERS: Mutex<Trackers> = Mutex::new(Vec::new());

fn build(cache: &WatchCache) -> Index {
    let [roles, cluster_roles, rbs, crbs] = rbac_resources().map(|idx| {
        if idx == usize::MAX {
            return Vec::new();
        }
        cache
            .list(idx, None, None)
            .0
            .iter()
            .filter_map(|o| serde_json::from_slice::<Value>(&o.json).ok())
            .collect::<Vec<_>>()
    });
    Index::build(&roles, &cluster_roles, &rbs, &crbs)
}

fn tracker_for(cache: &Arc<WatchCache>) -> Arc<Mutex<Tracker>> {
    let mut all = TRACKERS.lock().unwrap_or_else(|p| p.into_inner());
    all.retain(|(c, _)| c.strong_count() > 0);
    let weak = Arc::downgrade(cache);
    if let Some((_, t)) = all.iter().find(|(c, _)| c.ptr_eq(&weak)) {
        return t.clone();
    }
    // Subscribe before reading, so no change between the two goes unnoticed.
    let events = cache
        .watch_from(rbac_resources()[0], cache.revision())
        .ok()
        .map(|(_, rx)| rx);
    let t = Arc::new(Mutex::new(Tracker {
        events,
        index: Arc::new(build(cache)),
        dirty: false,
    }));
    all.push((weak, t.clone()));
    t
}

/// The current RBAC index of `cache`, rebuilt first if an RBAC object changed.
pub fn index(cache: &Arc<WatchCache>) -> Arc<Index> {
    let tracker = tracker_for(cache);
    let mut t = tracker.lock().unwrap_or_else(|p| p.into_inner());
    let watched = rbac_resources();
    match t.events.as_mut() {
        None => t.dirty = true,
        Some(rx) => {
            let mut dirty = false;
            loop {
                match rx.try_recv() {
                    Ok(ev) => dirty |= watched.contains(&ev.resource),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Lagged(_)) => dirty = true,
                    Err(TryRecvError::Closed) => {
                        dirty = true;
                        break;
                    }
                }
            }
            t.dirty |= dirty;
        }
    }
    if t.dirty {
        t.index = Arc::new(build(cache));
        t.dirty = t.events.is_none();
    }
    t.index.clone()
}

/// RBAC's verdict on `attrs`: Allow when a bound rule grants it; RBAC never denies.
pub async fn authorize(server: &ApiServer, attrs: &Attributes) -> Decision {
    if index(&server.cache).allows(attrs) {
        Decision::Allow
    } else {
        Decision::NoOpinion
    }
}

/// The rules RBAC grants `user` in `namespace` ("" = cluster-wide grants only).
pub fn rules_for(server: &ApiServer, user: &UserInfo, namespace: &str) -> Vec<PolicyRule> {
    index(&server.cache).rules_for(user, namespace)
}
