//! The elector: campaigns for a Lease through the API, runs the caller's work while it leads,
//! renews, and stops the work (then releases) on shutdown or when renewing fails.

use crate::record::{LeaseTimings, Observer, acquired_spec, released_spec};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use rand::Rng;
use std::future::Future;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("invalid leader election timings: {0}")]
    Timings(String),
}

/// How a [`LeaderElector::run`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Shutdown came before this candidate ever led.
    NeverLed,
    /// It led, then shutdown came (or the work ended) and the Lease was given up.
    Released,
    /// It led, then could not renew within the renew deadline or saw another holder; the work
    /// was stopped. The caller may campaign again with a new elector.
    Lost,
}

/// One candidate for one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timings: LeaseTimings,
    observer: Observer,
    leading: watch::Sender<bool>,
}

fn is_status(e: &kube::Error, pred: fn(&kube::core::Status) -> bool) -> bool {
    matches!(e, kube::Error::Api(s) if pred(s))
}

impl LeaderElector {
    pub fn new(
        client: Client,
        namespace: &str,
        lease_name: &str,
        identity: impl Into<String>,
        timings: LeaseTimings,
    ) -> Result<Self, ElectionError> {
        timings.validate().map_err(ElectionError::Timings)?;
        Ok(LeaderElector {
            api: Api::namespaced(client, namespace),
            name: lease_name.to_string(),
            identity: identity.into(),
            timings,
            observer: Observer::default(),
            leading: watch::channel(false).0,
        })
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Leadership as it changes: true while this candidate leads.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// One attempt (upstream's tryAcquireOrRenew): true when this candidate holds the Lease
    /// afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = Instant::now();
        let wall = jiff::Timestamp::now();
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(acquired_spec(None, &self.identity, &self.timings, wall)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(l) => {
                    self.observer
                        .observe(&l.spec.unwrap_or_default(), Instant::now());
                    Ok(true)
                }
                Err(e) if is_status(&e, kube::core::Status::is_already_exists) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        self.observer.observe(&spec, now);
        if self
            .observer
            .held_by_other(&self.identity, now, self.timings.lease_duration)
        {
            return Ok(false);
        }
        let next = Lease {
            spec: Some(acquired_spec(
                Some(&spec),
                &self.identity,
                &self.timings,
                wall,
            )),
            ..lease
        };
        match self
            .api
            .replace(&self.name, &PostParams::default(), &next)
            .await
        {
            Ok(l) => {
                self.observer
                    .observe(&l.spec.unwrap_or_default(), Instant::now());
                Ok(true)
            }
            Err(e) if is_status(&e, kube::core::Status::is_conflict) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Campaign until this candidate holds the Lease (true) or shutdown (false).
    async fn acquire(&mut self, shutdown: &CancellationToken) -> bool {
        loop {
            let attempt =
                tokio::time::timeout(self.timings.renew_deadline, self.try_acquire_or_renew());
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                r = attempt => match r {
                    Ok(Ok(true)) => return true,
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => tracing::warn!(lease = %self.name, error = %e, "acquiring lease"),
                    Err(_) => tracing::warn!(lease = %self.name, "acquiring lease timed out"),
                },
            }
            // Upstream's jitter: retry period times a random factor in [1, 2.2).
            let wait = self
                .timings
                .retry_period
                .mul_f64(1.0 + rand::rng().random_range(0.0..1.2));
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Renew every retry period until shutdown (Released) or until no renewal succeeded for
    /// the renew deadline or another holder shows up (Lost).
    async fn keep_renewing(&mut self, shutdown: &CancellationToken) -> Outcome {
        let mut last_renew = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Outcome::Released,
                _ = tokio::time::sleep(self.timings.retry_period) => {}
            }
            let deadline = last_renew + self.timings.renew_deadline;
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => last_renew = Instant::now(),
                Ok(Ok(false)) => {
                    let holder = self.observer.holder();
                    if !holder.is_empty() && holder != self.identity {
                        tracing::warn!(lease = %self.name, holder, "lease taken by another holder");
                        return Outcome::Lost;
                    }
                }
                Ok(Err(e)) => tracing::warn!(lease = %self.name, error = %e, "renewing lease"),
                Err(_) => {}
            }
            if last_renew + self.timings.renew_deadline <= Instant::now() {
                tracing::warn!(lease = %self.name, "failed to renew lease within the renew deadline");
                return Outcome::Lost;
            }
        }
    }

    /// Give the Lease up if this candidate still holds it, so a successor takes over at once.
    async fn release(&mut self) {
        let attempt = async {
            let Some(lease) = self.api.get_opt(&self.name).await? else {
                return Ok(());
            };
            let spec = lease.spec.clone().unwrap_or_default();
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return Ok(());
            }
            let next = Lease {
                spec: Some(released_spec(&spec, jiff::Timestamp::now())),
                ..lease
            };
            self.api
                .replace(&self.name, &PostParams::default(), &next)
                .await
                .map(|_| ())
        };
        match tokio::time::timeout(self.timings.renew_deadline, attempt).await {
            Ok(Ok(())) => {
                tracing::info!(lease = %self.name, identity = %self.identity, "released lease")
            }
            Ok(Err(e)) => tracing::warn!(lease = %self.name, error = %e, "releasing lease"),
            Err(_) => tracing::warn!(lease = %self.name, "releasing lease timed out"),
        }
    }

    /// Campaign; while leading, run `on_started_leading(token)`. The token is cancelled when
    /// leadership ends (shutdown or a failed renewal), and the work is awaited before the
    /// Lease is released or, when lost, before this returns.
    pub async fn run<F, Fut>(
        mut self,
        shutdown: CancellationToken,
        on_started_leading: F,
    ) -> Outcome
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()>,
    {
        tracing::info!(lease = %self.name, identity = %self.identity, "attempting to acquire leader lease");
        if !self.acquire(&shutdown).await {
            return Outcome::NeverLed;
        }
        tracing::info!(lease = %self.name, identity = %self.identity, "successfully acquired lease, started leading");
        self.leading.send_replace(true);
        let work_token = shutdown.child_token();
        let work = on_started_leading(work_token.clone());
        tokio::pin!(work);
        let mut work_done = false;
        let outcome = {
            let renew = self.keep_renewing(&shutdown);
            tokio::pin!(renew);
            tokio::select! {
                o = &mut renew => o,
                _ = &mut work => {
                    work_done = true;
                    Outcome::Released
                }
            }
        };
        work_token.cancel();
        if !work_done {
            work.await;
        }
        self.leading.send_replace(false);
        tracing::info!(lease = %self.name, identity = %self.identity, ?outcome, "stopped leading");
        if outcome == Outcome::Released {
            self.release().await;
        }
        outcome
    }
}
