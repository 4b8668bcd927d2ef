//! Job conditions (upstream 1.33: `SuccessCriteriaMet`/`FailureTarget` first, `Complete`/
//! `Failed` once no pod is left running) and the timing rules: pod failure back-off,
//! activeDeadlineSeconds and ttlSecondsAfterFinished.

use k8s_openapi::api::batch::v1::{Job, JobCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::time::Duration;

pub const COMPLETE: &str = "Complete";
pub const FAILED: &str = "Failed";
pub const SUCCESS_CRITERIA_MET: &str = "SuccessCriteriaMet";
pub const FAILURE_TARGET: &str = "FailureTarget";
pub const SUSPENDED: &str = "Suspended";

pub const REASON_COMPLETIONS: &str = "CompletionsReached";
pub const MSG_COMPLETIONS: &str = "Reached expected number of succeeded pods";
pub const REASON_BACKOFF: &str = "BackoffLimitExceeded";
pub const MSG_BACKOFF: &str = "Job has reached the specified backoff limit";
pub const REASON_DEADLINE: &str = "DeadlineExceeded";
pub const MSG_DEADLINE: &str = "Job was active longer than specified deadline";
pub const REASON_POLICY: &str = "PodFailurePolicy";

/// Upstream's `DefaultJobPodFailureBackOff` and `MaxJobPodFailureBackOff`.
const POD_BACKOFF_BASE: Duration = Duration::from_secs(10);
const POD_BACKOFF_MAX: Duration = Duration::from_secs(600);

/// The condition of `type_` with status True, if any.
pub fn true_condition<'a>(job: &'a Job, type_: &str) -> Option<&'a JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// Complete or Failed.
pub fn finished(job: &Job) -> bool {
    true_condition(job, COMPLETE).is_some() || true_condition(job, FAILED).is_some()
}

/// When the Job finished: completionTime, else the Failed condition's transition time.
pub fn finish_time(job: &Job) -> Option<jiff::Timestamp> {
    if let Some(t) = job.status.as_ref().and_then(|s| s.completion_time.as_ref()) {
        return Some(t.0);
    }
    [COMPLETE, FAILED]
        .iter()
        .filter_map(|t| true_condition(job, t))
        .find_map(|c| c.last_transition_time.as_ref().map(|t| t.0))
}

/// Sets a condition, keeping lastTransitionTime when the status does not change. Returns
/// whether anything changed.
pub fn set_condition(
    conds: &mut Vec<JobCondition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: jiff::Timestamp,
) -> bool {
    if let Some(c) = conds.iter_mut().find(|c| c.type_ == type_) {
        if c.status == status && c.reason.as_deref() == Some(reason) {
            return false;
        }
        if c.status != status {
            c.last_transition_time = Some(Time(now));
        }
        c.status = status.into();
        c.reason = Some(reason.into());
        c.message = Some(message.into());
        c.last_probe_time = Some(Time(now));
        return true;
    }
    conds.push(JobCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    });
    true
}

/// How long to wait before replacing a failed pod after `failures` consecutive failures.
pub fn pod_backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    POD_BACKOFF_BASE
        .saturating_mul(1u32 << (failures - 1).min(16))
        .min(POD_BACKOFF_MAX)
}

/// Time left until `activeDeadlineSeconds` runs out (zero when past), None without a deadline.
pub fn deadline_left(job: &Job, now: jiff::Timestamp) -> Option<Duration> {
    let secs = job.spec.as_ref()?.active_deadline_seconds?;
    let start = job.status.as_ref()?.start_time.as_ref()?.0;
    let elapsed = now.as_millisecond() - start.as_millisecond();
    let left = secs.saturating_mul(1000) - elapsed;
    Some(Duration::from_millis(left.max(0) as u64))
}

/// Time left until a finished Job's TTL expires (zero when due), None without a TTL.
pub fn ttl_left(job: &Job, now: jiff::Timestamp) -> Option<Duration> {
    let ttl = i64::from(job.spec.as_ref()?.ttl_seconds_after_finished?);
    let done = finish_time(job)?;
    let left = (done.as_millisecond() + ttl * 1000) - now.as_millisecond();
    Some(Duration::from_millis(left.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(pod_backoff(0), Duration::ZERO);
        assert_eq!(pod_backoff(1), Duration::from_secs(10));
        assert_eq!(pod_backoff(3), Duration::from_secs(40));
        assert_eq!(pod_backoff(30), Duration::from_secs(600));
    }

    #[test]
    fn conditions_keep_transition_time() {
        let t0 = jiff::Timestamp::from_second(1_700_000_000).unwrap();
        let t1 = jiff::Timestamp::from_second(1_700_000_100).unwrap();
        let mut c = Vec::new();
        assert!(set_condition(
            &mut c,
            FAILED,
            "True",
            REASON_BACKOFF,
            MSG_BACKOFF,
            t0
        ));
        assert!(!set_condition(
            &mut c,
            FAILED,
            "True",
            REASON_BACKOFF,
            MSG_BACKOFF,
            t1
        ));
        assert_eq!(c[0].last_transition_time, Some(Time(t0)));
    }
}
