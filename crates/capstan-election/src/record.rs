//! The election's pure core: what a candidate has observed of the Lease (and when, by its own
//! clock), whether it may take the Lease, and the spec it writes to acquire, renew or release.

use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use std::time::Duration;
use tokio::time::Instant;

/// upstream client-go's knobs, with kube-controller-manager's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTimings {
    /// How long a Lease that does not change stays held (`leaseDurationSeconds`).
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it stops its work.
    pub renew_deadline: Duration,
    /// Time between acquire or renew attempts.
    pub retry_period: Duration,
}

impl Default for LeaseTimings {
    fn default() -> Self {
        LeaseTimings {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl LeaseTimings {
    /// Upstream's rules: the leader must give up (renew deadline) before the Lease can be
    /// taken (lease duration), and must be able to try more than once in between.
    pub fn validate(&self) -> Result<(), String> {
        if self.lease_duration <= self.renew_deadline {
            return Err("leaseDuration must be greater than renewDeadline".into());
        }
        if self.renew_deadline <= self.retry_period.mul_f64(1.2) {
            return Err("renewDeadline must be greater than retryPeriod*1.2".into());
        }
        if self.lease_duration.as_secs() < 1 {
            return Err("leaseDuration must be at least one second".into());
        }
        Ok(())
    }
}

/// The last Lease spec seen and the local time it was first seen with that content. Expiry is
/// judged from this local time, never from the remote `renewTime` (clocks differ).
#[derive(Debug, Default)]
pub struct Observer {
    record: Option<LeaseSpec>,
    observed_at: Option<Instant>,
}

fn holder(spec: &LeaseSpec) -> &str {
    spec.holder_identity.as_deref().unwrap_or_default()
}

impl Observer {
    /// Note the Lease as read at `now`; the clock restarts only when its content changed.
    pub fn observe(&mut self, spec: &LeaseSpec, now: Instant) {
        if self.record.as_ref() != Some(spec) {
            self.record = Some(spec.clone());
            self.observed_at = Some(now);
        }
    }

    /// The holder the last observation showed ("" when free).
    pub fn holder(&self) -> &str {
        self.record.as_ref().map(holder).unwrap_or_default()
    }

    /// True while someone other than `identity` holds the Lease and it has not gone unchanged
    /// for its duration.
    pub fn held_by_other(&self, identity: &str, now: Instant, default: Duration) -> bool {
        let (Some(r), Some(at)) = (&self.record, self.observed_at) else {
            return false;
        };
        let h = holder(r);
        if h.is_empty() || h == identity {
            return false;
        }
        let duration = r
            .lease_duration_seconds
            .filter(|s| *s > 0)
            .map_or(default, |s| Duration::from_secs(s as u64));
        now < at + duration
    }
}

/// The spec that makes `identity` the holder over `current` (None: the Lease is new).
pub(crate) fn acquired_spec(
    current: Option<&LeaseSpec>,
    identity: &str,
    timings: &LeaseTimings,
    wall: jiff::Timestamp,
) -> LeaseSpec {
    let renewing = current.is_some_and(|c| holder(c) == identity);
    let transitions = current.and_then(|c| c.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(identity.to_string()),
        lease_duration_seconds: Some(timings.lease_duration.as_secs().max(1) as i32),
        acquire_time: if renewing {
            current.and_then(|c| c.acquire_time.clone())
        } else {
            Some(MicroTime(wall))
        },
        renew_time: Some(MicroTime(wall)),
        lease_transitions: Some(if current.is_some() && !renewing {
            transitions + 1
        } else {
            transitions
        }),
        ..current.cloned().unwrap_or_default()
    }
}

/// The spec that gives the Lease up (upstream's release: empty holder, one-second duration).
pub(crate) fn released_spec(current: &LeaseSpec, wall: jiff::Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(String::new()),
        lease_duration_seconds: Some(1),
        acquire_time: Some(MicroTime(wall)),
        renew_time: Some(MicroTime(wall)),
        ..current.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(by: &str, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(by.into()),
            lease_duration_seconds: Some(secs),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_held_lease_expires_only_after_it_stops_changing_for_its_duration() {
        let t0 = Instant::now();
        let d = Duration::from_secs(15);
        let mut o = Observer::default();
        o.observe(&held("a", 15), t0);
        assert!(o.held_by_other("b", t0 + Duration::from_secs(14), d));
        // A renewal (changed content) restarts the local clock.
        let mut renewed = held("a", 15);
        renewed.renew_time = Some(MicroTime(jiff::Timestamp::UNIX_EPOCH));
        o.observe(&renewed, t0 + Duration::from_secs(10));
        assert!(o.held_by_other("b", t0 + Duration::from_secs(20), d));
        // Seeing the same content again does not.
        o.observe(&renewed, t0 + Duration::from_secs(24));
        assert!(!o.held_by_other("b", t0 + Duration::from_secs(25), d));
    }

    #[test]
    fn own_free_and_released_leases_are_takeable_at_once() {
        let t0 = Instant::now();
        let d = Duration::from_secs(15);
        let mut o = Observer::default();
        assert!(!o.held_by_other("b", t0, d), "nothing observed yet");
        o.observe(&held("b", 15), t0);
        assert!(!o.held_by_other("b", t0, d), "our own lease");
        let released = released_spec(&held("a", 15), jiff::Timestamp::now());
        o.observe(&released, t0);
        assert!(!o.held_by_other("b", t0, d), "released lease");
        assert_eq!(o.holder(), "");
    }

    #[test]
    fn acquiring_counts_a_transition_and_renewing_keeps_acquire_time() {
        let timings = LeaseTimings::default();
        let t1 = jiff::Timestamp::from_second(1_000).unwrap();
        let t2 = jiff::Timestamp::from_second(2_000).unwrap();
        let fresh = acquired_spec(None, "a", &timings, t1);
        assert_eq!(fresh.lease_transitions, Some(0));
        assert_eq!(fresh.lease_duration_seconds, Some(15));
        let taken = acquired_spec(Some(&held("x", 15)), "a", &timings, t1);
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.holder_identity.as_deref(), Some("a"));
        let renewed = acquired_spec(Some(&taken), "a", &timings, t2);
        assert_eq!(renewed.lease_transitions, Some(4));
        assert_eq!(renewed.acquire_time, Some(MicroTime(t1)));
        assert_eq!(renewed.renew_time, Some(MicroTime(t2)));
    }

    #[test]
    fn timings_follow_upstream_rules() {
        assert!(LeaseTimings::default().validate().is_ok());
        let bad = LeaseTimings {
            lease_duration: Duration::from_secs(10),
            ..LeaseTimings::default()
        };
        assert!(bad.validate().is_err());
    }
}
