//! [`Failovers`]: runs failovers to their end, journaled, and resumes the ones a dead process
//! left behind.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{
    FailoverEvent, FailoverId, FailoverOutcome, FailoverRecord, FailoverReport, FailoverSite,
    FailoverSpec, FailoverStatus, LOG_PREFIX, StandbyReadiness, Step, decode,
};
use crate::access::{AccessAction, AccessPolicy};
use crate::audit::{AuditAction, AuditRecord};
use crate::error::{Error, Result};
use crate::journal::{Actor, Phase};
use crate::model::DeploymentId;
use crate::notify::{Notification, Notifier};
use crate::retry::{Backoff, RetryPolicy};
use crate::store::StateStore;
use crate::time::Clock;

/// How long a failover's lease lasts without renewal: a process that dies mid-step is taken
/// over this long after its last renewal.
const LEASE_TTL: Duration = Duration::from_secs(30);

/// Runs failovers: checks the right to ask, assesses the standby, performs the steps through a
/// [`FailoverSite`] and journals each fact in the store (see the [module](super) docs).
///
/// One process drives a failover at a time: it holds the lease `failover/<from>` (so an
/// environment is never failed over twice at once; a rehearsal holds
/// `failover-rehearsal/<from>`, so it never holds up a real failover) and renews it before
/// each step and each retry. Another process that finds a failover unfinished and its lease lapsed resumes it
/// ([`Failovers::resume`], [`Failovers::resume_unfinished`]).
#[derive(Debug)]
pub struct Failovers {
    store: Arc<dyn StateStore>,
    site: Arc<dyn FailoverSite>,
    clock: Arc<dyn Clock>,
    owner: String,
    policy: Option<AccessPolicy>,
    retry: RetryPolicy,
    /// One queue per notifier, each drained in order by its own task.
    outbox: Mutex<Vec<mpsc::UnboundedSender<Notification>>>,
    dispatchers: Mutex<JoinSet<()>>,
}

/// Whether a step's error is final: the site says the step cannot be done (a bad request, no
/// right, damaged data), rather than not yet.
fn is_final(e: &Error) -> bool {
    matches!(
        e,
        Error::InvalidSpec { .. } | Error::PermissionDenied { .. } | Error::Corrupt { .. }
    )
}

impl Failovers {
    /// Failovers journaled in `store`, done through `site`, stamped by `clock`. Without an
    /// access policy anyone may ask; steps are retried with 200 ms backoff doubling to 5 s.
    pub fn new(
        store: Arc<dyn StateStore>,
        site: Arc<dyn FailoverSite>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Failovers {
            store,
            site,
            clock,
            owner: format!("failovers-{}", std::process::id()),
            policy: None,
            retry: RetryPolicy::default()
                .with_backoff(Duration::from_millis(200), Duration::from_secs(5))
                .unwrap_or_default(),
            outbox: Mutex::new(Vec::new()),
            dispatchers: Mutex::new(JoinSet::new()),
        }
    }

    /// The same, telling `notifiers` every fact as it is journaled
    /// ([`Notifier::deliver`], kinds `failover_<event>`, the environment failed over from),
    /// each from its own task so a slow or dead channel never delays the failover. Call it
    /// inside a Tokio runtime; [`flush`](Self::flush) waits for the queues to drain.
    #[must_use]
    pub fn with_notifiers(self, notifiers: Vec<Arc<dyn Notifier>>) -> Self {
        {
            let mut outbox = lock(&self.outbox);
            let mut dispatchers = lock(&self.dispatchers);
            for notifier in notifiers {
                let (tx, mut rx) = mpsc::unbounded_channel::<Notification>();
                outbox.push(tx);
                dispatchers.spawn(async move {
                    while let Some(n) = rx.recv().await {
                        if let Err(e) = notifier.deliver(&n).await {
                            tracing::warn!(failover = %n.deployment, kind = %n.kind, error = %e.chain(), "failover notification not delivered");
                        }
                    }
                });
            }
        }
        self
    }

    /// Wait up to `timeout` for every notification queued so far to be delivered (or given up
    /// on); later facts are no longer sent.
    pub async fn flush(&self, timeout: Duration) {
        lock(&self.outbox).clear();
        let mut dispatchers = std::mem::take(&mut *lock(&self.dispatchers));
        let drained = tokio::time::timeout(timeout, async {
            while dispatchers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                ?timeout,
                "failover notifications still pending were dropped"
            );
        }
    }

    /// The same, identified as `owner` in leases and records.
    #[must_use]
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    /// The same, checking the `failover` action of `policy` for every service moved.
    pub fn with_access_policy(mut self, policy: AccessPolicy) -> Result<Self> {
        policy.validate()?;
        self.policy = Some(policy);
        Ok(self)
    }

    /// The same, with another backoff between a step's attempts (only its backoff is used: a
    /// step is retried until it succeeds, escalating each `step_timeout`).
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Ask for `spec` and run it to its end: refused (the journal says why) when the standby is
    /// unhealthy or further behind than `spec.max_lag` unless forced; an error, and nothing
    /// journaled, when `spec.requested_by` lacks the `failover` right on a service (audited).
    pub async fn run(&self, spec: FailoverSpec) -> Result<FailoverStatus> {
        spec.validate()?;
        if let Some(policy) = &self.policy {
            for service in &spec.services {
                if let Err(e) = policy.check(
                    &spec.requested_by,
                    AccessAction::Failover,
                    &spec.from,
                    service,
                ) {
                    let mut record =
                        self.audit_record(&spec, spec.requested_by.clone(), &e.to_string());
                    record.service = service.clone();
                    crate::store::append_audit(&*self.store, record.denied()).await?;
                    return Err(e);
                }
            }
        }
        // One failover of an environment at a time: a second request while another process
        // drives one is refused before anything is journaled (it would wait there to fail the
        // environment over again after the first ended).
        self.store
            .acquire_lease(&lease_key(&spec), &self.owner, self.clock.now(), LEASE_TTL)
            .await?;
        let log = spec.id.log();
        let id = spec.id.clone();
        let record = FailoverRecord::new(
            0,
            self.clock.now(),
            &self.owner,
            FailoverEvent::Requested {
                spec: Arc::new(spec.clone()),
            },
        );
        if let Err(e) = self.store.append_record(&log, 0, &encode(&record)?).await {
            let lease = crate::store::Lease::new(lease_key(&spec), &self.owner, self.clock.now());
            let _ = self.store.release_lease(&lease).await;
            return Err(e);
        }
        self.announce(&spec, &record);
        self.audit(
            &spec,
            spec.requested_by.clone(),
            format!(
                "{} of {} to {} requested ({}): {}",
                spec.direction,
                spec.from,
                spec.to,
                match &spec.trigger {
                    super::Trigger::Manual => "by hand".to_string(),
                    super::Trigger::Automatic { lost_since, .. } =>
                        format!("automatic, primary lost since {lost_since}"),
                },
                spec.reason
            ),
        )
        .await?;
        self.resume(&id).await
    }

    /// Drive the failover `id` from where its journal stands to its end (nothing to do if it
    /// has ended). Fails with `LeaseHeld` while another live process drives it.
    pub async fn resume(&self, id: &FailoverId) -> Result<FailoverStatus> {
        let mut status = self.status(id).await?;
        let lease_key = lease_key(&status.spec);
        let spec = status.spec.clone();
        while !status.is_finished() {
            self.store
                .acquire_lease(&lease_key, &self.owner, self.clock.now(), LEASE_TTL)
                .await?;
            let event = match (&status.assessed, status.next_step()) {
                (None, _) => self.assess(&spec).await?,
                (Some(_), None) => FailoverEvent::Finished {
                    outcome: FailoverOutcome::Succeeded,
                },
                (Some(_), Some(step)) if status.in_progress.is_none() => {
                    FailoverEvent::StepStarted { step }
                }
                (Some(_), Some(step)) => match self.perform(&mut status, step, &lease_key).await {
                    Ok(event) => event,
                    // Another process wrote first: judge again from the journal.
                    Err(Error::Conflict { .. }) => {
                        status = self.status(id).await?;
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            };
            let finished = match &event {
                FailoverEvent::Finished { outcome } => Some(outcome.clone()),
                _ => None,
            };
            match self.append(&status, event).await {
                Ok(next) => status = next,
                // Another process wrote first (it took over while a step ran long): judge
                // again from the journal; its lease decides who goes on.
                Err(Error::Conflict { .. }) => {
                    status = self.status(id).await?;
                    continue;
                }
                Err(e) => return Err(e),
            }
            if let Some(outcome) = finished {
                self.audit(
                    &spec,
                    Actor::system(),
                    format!(
                        "{} of {} to {} finished: {outcome:?}",
                        spec.direction, spec.from, spec.to
                    ),
                )
                .await?;
            }
        }
        let lease = crate::store::Lease::new(lease_key, &self.owner, self.clock.now());
        self.store.release_lease(&lease).await?;
        Ok(status)
    }

    /// Resume every failover that has not ended (those a dead process left), one after the
    /// other; their final statuses. One another live process drives is skipped.
    pub async fn resume_unfinished(&self) -> Result<Vec<FailoverStatus>> {
        let mut out = Vec::new();
        for id in self.list().await? {
            if self.status(&id).await?.is_finished() {
                continue;
            }
            match self.resume(&id).await {
                Ok(status) => out.push(status),
                Err(Error::LeaseHeld { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Every failover that has not ended and has stood still for its `step_timeout` or more
    /// (see [`FailoverStatus::stalled`]): one whose step keeps failing, or one whose process
    /// died. Each with how long it has stood still.
    pub async fn stalled(&self) -> Result<Vec<(FailoverStatus, Duration)>> {
        let now = self.clock.now();
        let mut out = Vec::new();
        for id in self.list().await? {
            let status = self.status(&id).await?;
            if let Some(waited) = status.stalled(now) {
                out.push((status, waited));
            }
        }
        Ok(out)
    }

    /// Every failover in the store, oldest id first.
    pub async fn list(&self) -> Result<Vec<FailoverId>> {
        self.store
            .record_logs(LOG_PREFIX)
            .await?
            .iter()
            .filter_map(|log| log.strip_prefix(LOG_PREFIX))
            .map(FailoverId::new)
            .collect()
    }

    /// The journal of failover `id`.
    pub async fn records(&self, id: &FailoverId) -> Result<Vec<FailoverRecord>> {
        let values = self
            .store
            .records(&id.log())
            .await?
            .ok_or_else(|| Error::not_found(format!("failover {id}")))?;
        decode(id, values)
    }

    /// Where failover `id` stands.
    pub async fn status(&self, id: &FailoverId) -> Result<FailoverStatus> {
        FailoverStatus::from_records(&self.records(id).await?)
    }

    /// The report of failover `id` (also of one still running: what happened so far).
    pub async fn report(&self, id: &FailoverId) -> Result<FailoverReport> {
        FailoverReport::from_records(&self.records(id).await?)
    }

    /// The assessment: the `assessed` fact, or the refusal that finishes the failover.
    async fn assess(&self, spec: &FailoverSpec) -> Result<FailoverEvent> {
        let mut backoff = Backoff::new(&self.retry);
        let mut attempts = 0;
        let readiness = loop {
            attempts += 1;
            match self.site.readiness(spec).await {
                Ok(r) => break r,
                // A standby whose state cannot be read is not one to fail over to; a blip
                // in reading it is tried again a few times.
                Err(e) if attempts < 5 && !is_final(&e) => {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => {
                    return Ok(refused(format!(
                        "the standby {} could not be assessed: {}",
                        spec.to,
                        e.chain()
                    )));
                }
            }
        };
        Ok(match decide(spec, &readiness) {
            Ok(decision) => FailoverEvent::Assessed {
                readiness,
                decision,
            },
            Err(why) => refused(why),
        })
    }

    /// Do `step` (journaled as started) until the site confirms it: the `step_done` fact, or the
    /// `finished` one if the site says it cannot be done. Each step timeout that passes is
    /// journaled as an escalation (`status` follows); the lease is renewed before each attempt.
    async fn perform(
        &self,
        status: &mut FailoverStatus,
        step: Step,
        lease_key: &str,
    ) -> Result<FailoverEvent> {
        let spec = status.spec.clone();
        let started = status
            .in_progress
            .map_or_else(|| self.clock.now(), |(_, at)| at);
        let mut backoff = Backoff::new(&self.retry);
        loop {
            let result = match step {
                Step::Fence => self.site.fence(&spec).await,
                Step::PromoteDatabase => self.site.promote_database(&spec).await,
                Step::Scale => self.site.scale(&spec).await,
                Step::SwitchTraffic => self.site.switch_traffic(&spec).await,
                Step::Verify => self.site.verify(&spec).await,
            };
            let e = match result {
                Ok(outcome) => return Ok(FailoverEvent::StepDone { step, outcome }),
                Err(e) if is_final(&e) => {
                    return Ok(FailoverEvent::Finished {
                        outcome: FailoverOutcome::Failed {
                            reason: format!("{step}: {}", e.chain()),
                        },
                    });
                }
                Err(e) => e,
            };
            tracing::warn!(failover = %spec.id, %step, error = %e.chain(), "failover step failed; retrying");
            let waited = self.clock.now().since(started);
            if waited
                >= spec
                    .step_timeout
                    .saturating_mul(status.step_escalations.saturating_add(1))
            {
                let event = FailoverEvent::Escalated {
                    step,
                    waited,
                    error: e.chain(),
                };
                *status = self.append(status, event).await?;
            }
            tokio::time::sleep(backoff.next_delay()).await;
            self.store
                .acquire_lease(lease_key, &self.owner, self.clock.now(), LEASE_TTL)
                .await?;
        }
    }

    /// Append `event` after `status`'s last record; the status it leads to. The fact is then
    /// queued for the notifiers.
    async fn append(
        &self,
        status: &FailoverStatus,
        event: FailoverEvent,
    ) -> Result<FailoverStatus> {
        let record = FailoverRecord::new(status.next_seq, self.clock.now(), &self.owner, event);
        self.store
            .append_record(&status.spec.id.log(), record.seq, &encode(&record)?)
            .await?;
        let next = status.apply(&record)?;
        self.announce(&next.spec, &record);
        Ok(next)
    }

    fn announce(&self, spec: &FailoverSpec, record: &FailoverRecord) {
        let outbox = lock(&self.outbox);
        if outbox.is_empty() {
            return;
        }
        let n = notification(spec, record);
        for queue in outbox.iter() {
            let _ = queue.send(n.clone());
        }
    }

    fn audit_record(&self, spec: &FailoverSpec, actor: Actor, detail: &str) -> AuditRecord {
        AuditRecord::new(
            self.clock.now(),
            actor,
            AuditAction::Failover,
            DeploymentId::new(spec.id.as_str()),
            spec.services[0].clone(),
            spec.from.clone(),
            detail.to_string(),
        )
    }

    /// One audit record per service moved.
    async fn audit(&self, spec: &FailoverSpec, actor: Actor, detail: String) -> Result<()> {
        for service in &spec.services {
            let mut record = self.audit_record(spec, actor.clone(), &detail);
            record.service = service.clone();
            crate::store::append_audit(&*self.store, record).await?;
        }
        Ok(())
    }
}

/// The lease of whoever drives a failover of `spec.from`. A rehearsal has its own, so it
/// never holds up a real failover of the same environment.
fn lease_key(spec: &FailoverSpec) -> String {
    match spec.direction {
        super::Direction::Rehearsal => format!("failover-rehearsal/{}", spec.from),
        _ => format!("failover/{}", spec.from),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// `record` of the failover `spec` as a notification: the failover's id in `deployment`, the
/// services moved, the environment failed over from, `→ <to>` as the revision.
fn notification(spec: &FailoverSpec, record: &FailoverRecord) -> Notification {
    let phase = match &record.event {
        FailoverEvent::Finished {
            outcome: FailoverOutcome::Succeeded,
        } => Phase::Succeeded,
        FailoverEvent::Finished { .. } => Phase::Failed,
        _ => Phase::Progressing,
    };
    Notification {
        deployment: spec.id.to_string(),
        service: spec
            .services
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        environment: spec.from.to_string(),
        revision: format!("{} to {}", spec.direction, spec.to),
        kind: format!("failover_{}", record.event.kind()),
        phase,
        seq: record.seq,
        at: record.at,
        message: super::report::describe(&record.event),
    }
}

fn refused(reason: String) -> FailoverEvent {
    FailoverEvent::Finished {
        outcome: FailoverOutcome::Refused { reason },
    }
}

/// Whether the failover goes ahead on `readiness`: the decision in words, or why not.
fn decide(
    spec: &FailoverSpec,
    readiness: &StandbyReadiness,
) -> std::result::Result<String, String> {
    if !readiness.healthy {
        return Err(format!(
            "the standby {} is not healthy: {}",
            spec.to, readiness.detail
        ));
    }
    let Some(lag) = readiness.lag else {
        return Ok(format!(
            "the standby {} is healthy and replicates no state ({})",
            spec.to, readiness.detail
        ));
    };
    let lag_text = format!("{:.1} s", lag.as_secs_f64());
    let max = format!("{:.1} s", spec.max_lag.as_secs_f64());
    if lag <= spec.max_lag {
        Ok(format!(
            "the standby {} is healthy, {lag_text} behind (at most {max} allowed)",
            spec.to
        ))
    } else if spec.force {
        Ok(format!(
            "FORCED by {}: the standby {} is {lag_text} behind, more than the {max} allowed; \
             commits of that window may be lost",
            spec.requested_by, spec.to
        ))
    } else {
        Err(format!(
            "the standby {} is {lag_text} behind, more than the {max} allowed: failing over \
             would lose those commits (force it to accept that)",
            spec.to
        ))
    }
}

fn encode(record: &FailoverRecord) -> Result<serde_json::Value> {
    serde_json::to_value(record).map_err(|e| Error::Store {
        operation: "encode a failover record".into(),
        source: Box::new(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EnvironmentName, ServiceId};
    use crate::time::Timestamp;

    fn spec(lag_limit: Duration, force: bool) -> FailoverSpec {
        FailoverSpec::builder()
            .id(FailoverId::new("f-1").unwrap())
            .direction(super::super::Direction::Failover)
            .from(EnvironmentName::new("production").unwrap())
            .to(EnvironmentName::new("standby").unwrap())
            .services(vec![ServiceId::new("web").unwrap()])
            .requested_by(Actor::new("alice"))
            .reason("primary region down")
            .requested_at(Timestamp::from_millis(0))
            .build()
            .with_max_lag(lag_limit)
            .forced(force)
    }

    #[test]
    fn the_decision_weighs_health_lag_and_force() {
        let healthy = |lag: Option<u64>| {
            StandbyReadiness::new(true, lag.map(Duration::from_secs), "probes pass")
        };
        let limit = Duration::from_secs(5);
        assert!(decide(&spec(limit, false), &healthy(Some(5))).is_ok());
        assert!(decide(&spec(limit, false), &healthy(None)).is_ok());
        let e = decide(&spec(limit, false), &healthy(Some(6))).unwrap_err();
        assert!(
            e.contains("6.0 s behind, more than the 5.0 s allowed"),
            "{e}"
        );
        let forced = decide(&spec(limit, true), &healthy(Some(600))).unwrap();
        assert!(forced.starts_with("FORCED by alice"), "{forced}");
        let sick = StandbyReadiness::new(false, Some(Duration::ZERO), "web: 0/3 ready");
        let e = decide(&spec(limit, true), &sick).unwrap_err();
        assert!(
            e.contains("not healthy: web: 0/3 ready"),
            "forcing never overrides health: {e}"
        );
    }
}
