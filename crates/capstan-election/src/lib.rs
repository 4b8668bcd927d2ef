//! `capstan-election` elects one leader among several processes through a
//! coordination.k8s.io/v1 Lease, with upstream client-go's semantics: a candidate takes the
//! Lease only when it is free or has not changed for `leaseDurationSeconds` by the candidate's
//! own clock; the leader renews every retry period with optimistic concurrency, stops its work
//! when it cannot renew within the renew deadline (before anyone else may take over), and
//! releases the Lease on graceful shutdown so a successor starts at once.
//!
//! It owns no work of its own: callers hand [`LeaderElector::run`] the future to run while
//! leading. It talks only to the Kubernetes API (the `kube` client).

mod elector;
mod record;

pub use elector::{ElectionError, LeaderElector, Outcome};
pub use record::{LeaseTimings, Observer};

/// An identity like upstream's controller managers use: `<hostname>_<uuid>`.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    format!("{host}_{}", uuid::Uuid::new_v4())
}
