//! The control loop of one deployment: load → (lease) → observe → plan → journal → act.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::release::{self, Promotion};
use super::{Shared, Target};
use crate::analysis::{Measurement, Subject, measure};
use crate::environment::{DesiredState, Observed};
use crate::error::{Error, Result};
use crate::journal::{
    DeploymentKind, DeploymentStatus, JournalEvent, Outcome, Phase, RollbackCause,
};
use crate::model::{DeploymentId, FailurePolicy, Revision};
use crate::retry::{Backoff, RetryPolicy};
use crate::store::Lease;
use crate::strategy::{AnalysisRequest, Decision, DeploymentStrategy, PlanContext};
use crate::time::Timestamp;

/// What the loop does after a step.
enum Next {
    /// Step again at once (the journal moved on).
    Now,
    /// Step again after this long, or sooner if an operator acts.
    After(Duration),
    /// Stop driving: the deployment has ended.
    Done,
    /// Stop driving: another live orchestrator holds the service's lease and drives it. If
    /// that one dies, the adoption scan starts a driver here again.
    Leave,
}

struct Driver {
    shared: Arc<Shared>,
    id: DeploymentId,
    lease: Option<Lease>,
    /// Whether the last journaled desired state has been re-applied since this driver started.
    reapplied: bool,
    backoff: Backoff,
    last_error: Option<String>,
    /// Since when this driver's calls to the environment have been answered without a break
    /// (`None` until one is, and after a retryable failure: the backend may be unreachable).
    reachable_since: Option<Timestamp>,
    /// The status as of the last step, caught up incrementally from the store.
    cached: Option<DeploymentStatus>,
    /// Woken when an operator acts on this deployment.
    waker: Arc<Notify>,
    /// The planner of the current leg, built once per leg: whether the leg converges on its
    /// target (a rollback, or a redeploy of the serving revision), and the planner.
    planner: Option<(Phase, bool, Box<dyn DeploymentStrategy>)>,
}

/// Drive deployment `id` until it ends. While another orchestrator holds the service's lease,
/// only watch.
pub(super) async fn drive(shared: Arc<Shared>, id: DeploymentId) {
    let config = shared.config.clone();
    let retry_max = config.retry_max.max(config.retry_initial);
    let waker = shared.drivers.waker(&id);
    let mut driver = Driver {
        waker,
        shared,
        id,
        lease: None,
        reapplied: false,
        // Exponential, not jittered, reset after every successful step.
        backoff: Backoff::new(
            &RetryPolicy::default()
                .with_backoff(config.retry_initial, retry_max)
                .expect("the initial delay is at most the longest")
                .with_jitter(false),
        ),
        last_error: None,
        reachable_since: None,
        cached: None,
        planner: None,
    };
    loop {
        // Boxed: a resting driver then holds only its own state, not the largest step's.
        match Box::pin(driver.step()).await {
            Ok(Next::Done | Next::Leave) => break,
            Ok(Next::Now) => driver.backoff.reset(),
            Ok(Next::After(d)) => {
                driver.backoff.reset();
                driver.sleep(d).await;
            }
            Err(
                e @ (Error::Corrupt { .. } | Error::NotFound { .. } | Error::InvalidSpec { .. }),
            ) => {
                tracing::error!(error = %e.chain(), "cannot drive deployment; leaving it as it is");
                break;
            }
            Err(Error::Conflict { .. }) => {
                // An operator wrote to the journal first: re-read it and decide again.
                tracing::debug!("journal moved on; re-planning");
            }
            Err(e) => {
                // A backend that has used up its own retries is not retried fast again: the
                // driver comes back after its longest delay.
                let delay = if e.is_persistent() {
                    retry_max
                } else {
                    driver.backoff.next_delay()
                };
                tracing::warn!(error = %e.chain(), retry_in = ?delay, "step failed; retrying");
                driver.last_error = Some(e.chain());
                driver.sleep(delay).await;
            }
        }
    }
    if let Some(lease) = driver.lease.take() {
        driver.shared.drivers.forget_lease(&driver.id);
        if let Err(e) = driver.shared.store.release_lease(&lease).await {
            tracing::warn!(error = %e.chain(), "could not release lease; it will expire");
        }
    }
    driver.shared.drivers.forget_waker(&driver.id);
}

/// Who holds a service's lease.
enum LeaseState {
    /// This driver: it may act.
    Held,
    /// Another driver of this orchestrator (an older deployment about to let go): wait.
    Busy,
    /// Another orchestrator, alive: leave the deployment to it.
    Elsewhere,
}

impl Driver {
    async fn sleep(&self, d: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.waker.notified() => {}
        }
    }

    fn target(&self, st: &DeploymentStatus) -> Result<Arc<Target>> {
        self.shared.target(&st.spec.environment)
    }

    fn poll(&self) -> Duration {
        self.shared.config.poll_interval
    }

    /// The deployment's status: the cached one caught up with new journal entries, or a full
    /// load the first time.
    async fn refresh(&mut self) -> Result<DeploymentStatus> {
        match self.cached.take() {
            Some(mut st) => {
                let new = self
                    .shared
                    .store
                    .load_from(&self.id, st.next_seq)
                    .await?
                    .ok_or_else(|| Error::not_found(format!("deployment {}", self.id)))?;
                for entry in &new {
                    st.apply(entry)?;
                }
                Ok(st)
            }
            None => self.shared.status(&self.id).await,
        }
    }

    /// One round of the loop. The status is kept between rounds (with this driver's own
    /// appends applied), so a round reads only what others appended since.
    async fn step(&mut self) -> Result<Next> {
        let mut st = self.refresh().await?;
        let next = self.step_with(&mut st).await;
        self.cached = Some(st);
        next
    }

    /// One round of the control loop: the named steps below, in order, each owning one concern.
    /// A step that decides the round (`Some(next)`) ends it; one that does not hands it on.
    ///
    /// The order is part of the semantics: an operator's abort wins over a failed release
    /// member, and both win over a pause (a paused deployment still rolls back with its
    /// release); the deadline is judged before a restarted driver re-applies anything.
    async fn step_with(&mut self, st: &mut DeploymentStatus) -> Result<Next> {
        if st.phase.is_terminal() {
            return Ok(Next::Done);
        }
        // One reading of the clock serves the whole round.
        let now = self.shared.clock.now();
        if let Some(next) = self.start_if_pending(st).await? {
            return Ok(next);
        }
        if let Some(next) = self.keep_lease(st).await? {
            return Ok(next);
        }
        if let Some(next) = self.honour_abort(st).await? {
            return Ok(next);
        }
        if let Some(next) = self.coordinate_release(st).await? {
            return Ok(next);
        }
        if let Some(next) = self.honour_pause(st) {
            return Ok(next);
        }
        if let Some(next) = self.watch_at_gate(st, now).await? {
            return Ok(next);
        }
        if let Some(next) = self.tear_down(st).await? {
            return Ok(next);
        }
        if let Some(next) = self.supersede_if_stalled(st).await? {
            return Ok(next);
        }
        if let Some(next) = self.check_deadline(st, now).await? {
            return Ok(next);
        }
        if let Some(next) = self.reapply_after_restart(st).await? {
            return Ok(next);
        }
        self.plan_and_act(st, now).await
    }

    /// Start a pending deployment once it may: one aborted before it started fails; one queued
    /// behind an older deployment of its service waits; otherwise it takes the service's lease
    /// and journals its start with the revision it replaces. Decides every round of a pending
    /// deployment.
    async fn start_if_pending(&mut self, st: &mut DeploymentStatus) -> Result<Option<Next>> {
        if st.phase != Phase::Pending {
            return Ok(None);
        }
        if let Some(abort) = &st.abort {
            let reason = format!(
                "aborted by {} before it started: {}",
                abort.by, abort.reason
            );
            self.finish(st, Outcome::Failed { reason }).await?;
            return Ok(Some(Next::Now));
        }
        if self.queued_behind_older(st).await? {
            return Ok(Some(Next::After(self.poll())));
        }
        if let Some(next) = self.keep_lease(st).await? {
            return Ok(Some(next));
        }
        let previous = self
            .shared
            .history(&st.spec.service, &st.spec.environment, 1)
            .await?
            .into_iter()
            .next();
        self.shared
            .append(st, JournalEvent::Started { previous })
            .await?;
        Ok(Some(Next::Now))
    }

    /// Take or renew the service's lease: undecided while this driver holds it. While another
    /// driver of this orchestrator holds it (an older deployment about to let go), wait; while
    /// another live orchestrator does, leave the deployment to it (the adoption scan starts a
    /// driver here again once its lease lapses).
    async fn keep_lease(&mut self, st: &DeploymentStatus) -> Result<Option<Next>> {
        Ok(match self.hold_lease(st).await? {
            LeaseState::Held => None,
            LeaseState::Busy => Some(Next::After(self.poll())),
            LeaseState::Elsewhere => Some(Next::Leave),
        })
    }

    /// An operator's abort (or rejection) of a running or paused deployment: roll it back,
    /// whatever its failure policy.
    async fn honour_abort(&mut self, st: &mut DeploymentStatus) -> Result<Option<Next>> {
        let Some(abort) = &st.abort else {
            return Ok(None);
        };
        if !matches!(st.phase, Phase::Progressing | Phase::Paused) {
            return Ok(None);
        }
        let reason = format!("aborted by {}: {}", abort.by, abort.reason);
        self.give_up(st, RollbackCause::Aborted, reason)
            .await
            .map(Some)
    }

    /// A release is all or nothing: once another member has failed, roll this one back too,
    /// running or paused (see [`release::member_failed`]).
    async fn coordinate_release(&mut self, st: &mut DeploymentStatus) -> Result<Option<Next>> {
        if !matches!(st.phase, Phase::Progressing | Phase::Paused) {
            return Ok(None);
        }
        let Some(reason) = release::member_failed(&self.shared, st).await? else {
            return Ok(None);
        };
        self.give_up(st, RollbackCause::ReleaseFailed, reason)
            .await
            .map(Some)
    }

    /// An operator's pause holds the deployment where it is until resumed (the progress
    /// deadline does not run meanwhile). A gate waiting for an approval is not held here:
    /// see [`Driver::watch_at_gate`].
    fn honour_pause(&self, st: &DeploymentStatus) -> Option<Next> {
        (st.phase == Phase::Paused && !waits_at_gate(st)).then(|| Next::After(self.poll()))
    }

    /// While a rollout waits for a human at a gate, its canary keeps the traffic it has, so it
    /// is still watched: the background analysis keeps measuring, and a failed analysis or
    /// failing new instances roll it back (or freeze it) as they would have a moment before,
    /// instead of waiting for someone to notice. Nothing else moves: no step, no promotion.
    /// Under the `pause` failure policy the failure waits for that same human (it is raised
    /// again as soon as the gate is passed). An environment that cannot be observed is waited
    /// for, as before.
    async fn watch_at_gate(
        &mut self,
        st: &mut DeploymentStatus,
        now: Timestamp,
    ) -> Result<Option<Next>> {
        if st.phase != Phase::Paused || !waits_at_gate(st) {
            return Ok(None);
        }
        let wait = Next::After(self.poll());
        let Ok(observed) = self.target(st)?.env.observe(&st.spec.service).await else {
            return Ok(Some(wait));
        };
        let replicas = observed.replicas_for(st.spec.replicas);
        let target = st.spec.target.clone();
        Ok(Some(
            match self.plan(st, &target, &observed, replicas, now) {
                Decision::Analyze(request) if request.run == "background" => {
                    self.analyze(st, request).await?;
                    Next::Now
                }
                Decision::Abort { cause, reason }
                    if st.spec.failure_policy != FailurePolicy::Pause =>
                {
                    self.give_up(st, cause, reason).await?
                }
                _ => wait,
            },
        ))
    }

    /// A teardown (a preview's service going away) removes the service and ends: succeeded, or
    /// failed if the backend refuses (a transient error is retried).
    async fn tear_down(&mut self, st: &mut DeploymentStatus) -> Result<Option<Next>> {
        if st.spec.kind != DeploymentKind::Teardown || st.phase != Phase::Progressing {
            return Ok(None);
        }
        let outcome = match self.target(st)?.env.teardown(&st.spec.service).await {
            Ok(()) => Outcome::Succeeded,
            Err(e) if e.is_retryable() => return Err(e),
            Err(e) => Outcome::Failed {
                reason: format!("teardown of {} failed: {}", st.spec.service, e.chain()),
            },
        };
        self.finish(st, outcome).await?;
        Ok(Some(Next::Now))
    }

    /// The progress deadline: a rollout that made no progress for that long gives up, saying
    /// why (the target's last readiness failure, the last error). The deadline does not run
    /// during a deliberate wait (a timed pause, the warm window after promotion) nor during a
    /// rollback, which never gives up: it retries until the previous revision serves alone,
    /// verified.
    async fn check_deadline(
        &mut self,
        st: &mut DeploymentStatus,
        now: Timestamp,
    ) -> Result<Option<Next>> {
        let deadline = st.spec.progress_deadline;
        // (The cheap test first: the deadline counts from no earlier than the last progress.)
        let overdue = st.phase == Phase::Progressing
            && now.since(st.last_progress_at) > deadline
            && now.since(st.deadline_counts_from()) > deadline;
        if !overdue {
            return Ok(None);
        }
        let stalled = now.since(st.deadline_counts_from());
        let mut reason = format!(
            "no progress for {}s (progress deadline {}s)",
            stalled.as_secs(),
            deadline.as_secs()
        );
        // Say why: readiness failures are waited for until now, so the reason is the last
        // observation of the target (best effort: the backend may be what is failing).
        if let Ok(observed) = self.target(st)?.env.observe(&st.spec.service).await
            && let Some(why) = observed
                .revision(&st.spec.target.id)
                .and_then(crate::strategy::not_ready)
        {
            reason.push_str(&format!("; {why}"));
        }
        if let Some(e) = &self.last_error {
            reason.push_str(&format!("; last error: {e}"));
        }
        self.give_up(st, RollbackCause::ProgressDeadline, reason)
            .await
            .map(Some)
    }

    /// After a restart, finish the action the last process journaled but may not have carried
    /// out. Applying a desired state is idempotent, so this is safe either way; it happens once
    /// per driver.
    async fn reapply_after_restart(&mut self, st: &mut DeploymentStatus) -> Result<Option<Next>> {
        if self.reapplied {
            return Ok(None);
        }
        if let Some(desired) = st.last_applied.clone()
            && let Some(next) = self.apply(st, &desired).await?
        {
            return Ok(Some(next));
        }
        self.reapplied = true;
        Ok(None)
    }

    /// Observe the environment, ask the current leg's planner what to do, and do it: the step
    /// that moves a rollout (or a rollback) along. A rollback of a first deployment, which has
    /// nothing to return to, removes it instead.
    async fn plan_and_act(&mut self, st: &mut DeploymentStatus, now: Timestamp) -> Result<Next> {
        let leg_target = match (st.phase, &st.previous) {
            (Phase::RollingBack, Some(previous)) => previous.clone(),
            (Phase::RollingBack, None) => return self.remove_first_revision(st).await,
            _ => st.spec.target.clone(),
        };
        let observed = match self.target(st)?.env.observe(&st.spec.service).await {
            Ok(o) => o,
            Err(e) => return self.environment_error(st, "observe", e).await,
        };
        if self.reachable_since.is_none() {
            self.reachable_since = Some(now);
        }
        // An autoscaled service is sized from its autoscaler's live count (issue 14 K).
        let replicas = observed.replicas_for(st.spec.replicas);
        let decision = self.plan(st, &leg_target, &observed, replicas, now);
        self.act(st, decision, &leg_target, &observed, replicas)
            .await
    }

    /// What the current leg's planner decides on what the environment shows. The planner is
    /// built once per leg (the rollout, then perhaps the rollback).
    fn plan(
        &mut self,
        st: &DeploymentStatus,
        leg_target: &Arc<Revision>,
        observed: &Observed,
        replicas: u32,
        now: Timestamp,
    ) -> Decision {
        let rolling_back = st.phase == Phase::RollingBack;
        let leg = if rolling_back {
            Phase::RollingBack
        } else {
            Phase::Progressing
        };
        let (_, converge, planner) = match &mut self.planner {
            Some(current) if current.0 == leg => current,
            slot => {
                // Deploying the revision that already serves is no canary of itself: the
                // rollout only converges on it (full size, all traffic, nothing else running)
                // with the rollback planner, which completes at once when that is already so.
                let converge = rolling_back || st.redeploys_serving();
                let planner = if converge {
                    st.spec.strategy.rollback_planner()
                } else {
                    st.spec.strategy.planner()
                };
                slot.insert((leg, converge, planner))
            }
        };
        let stable = if *converge {
            None
        } else {
            st.previous.as_ref()
        };
        let ctx = PlanContext::new(leg_target, stable, replicas, observed, &st.progress, now);
        planner.plan(&ctx)
    }

    /// Carry out the planner's `decision`: journal it, and do what it asks of the environment.
    /// A round that got this far without a refusal clears the last error.
    async fn act(
        &mut self,
        st: &mut DeploymentStatus,
        decision: Decision,
        leg_target: &Revision,
        observed: &Observed,
        replicas: u32,
    ) -> Result<Next> {
        let next = match decision {
            Decision::Apply(desired) => {
                let desired = desired.with_autoscale(self.target(st)?.spec.autoscale.clone());
                if let Some(next) = self
                    .journal_and_apply(st, &desired, || observed.summary())
                    .await?
                {
                    return Ok(next);
                }
                Next::After(self.poll())
            }
            Decision::Wait { reason } => {
                tracing::debug!(%reason, "waiting");
                Next::After(self.poll())
            }
            Decision::Advance { step } => {
                self.shared
                    .append(st, JournalEvent::StepReached { step })
                    .await?;
                Next::Now
            }
            Decision::Analyze(request) => {
                self.analyze(st, request).await?;
                Next::Now
            }
            Decision::AwaitApproval { gate, reason } => {
                let event = JournalEvent::ApprovalRequested { gate, reason };
                self.shared.append(st, event).await?;
                Next::Now
            }
            Decision::Promote => self.promote(st).await?,
            Decision::Complete if st.phase == Phase::RollingBack => {
                // Verify before calling it rolled back: alone, fully ready, all traffic.
                let Some(verification) = rollback_verified(leg_target, observed, replicas) else {
                    return Ok(Next::After(self.poll()));
                };
                self.finish(st, Outcome::RolledBack { verification })
                    .await?;
                Next::Now
            }
            Decision::Complete => {
                self.finish(st, Outcome::Succeeded).await?;
                Next::Now
            }
            Decision::Abort { cause, reason } => self.give_up(st, cause, reason).await?,
        };
        self.last_error = None;
        Ok(next)
    }

    /// Switch all traffic to the new revision, once release coordination lets it: a member of
    /// a release first says it is ready, then waits for every other member (see
    /// [`release::promotion`]).
    async fn promote(&mut self, st: &mut DeploymentStatus) -> Result<Next> {
        let event = match release::promotion(&self.shared, st).await? {
            Promotion::Announce => JournalEvent::ReadyToPromote,
            Promotion::Wait => return Ok(Next::After(self.poll())),
            Promotion::Go => JournalEvent::Promoted,
        };
        self.shared.append(st, event).await?;
        Ok(Next::Now)
    }

    /// Journal `desired` (with what was observed, `observed()`, for humans) unless it is what
    /// was applied last, then apply it. `Some(next)` if the environment refused it and the
    /// journal moved on (see [`Driver::apply`]).
    async fn journal_and_apply(
        &mut self,
        st: &mut DeploymentStatus,
        desired: &DesiredState,
        observed: impl FnOnce() -> String,
    ) -> Result<Option<Next>> {
        if st.last_applied.as_ref() != Some(desired) {
            let event = JournalEvent::Applied {
                desired: desired.clone(),
                observed: observed(),
            };
            self.shared.append(st, event).await?;
        }
        self.apply(st, desired).await
    }

    /// Take the measurements `request` asks for, journaling each.
    async fn analyze(&mut self, st: &mut DeploymentStatus, request: AnalysisRequest) -> Result<()> {
        let target = self.target(st)?;
        let (service, environment) = (st.spec.service.clone(), st.spec.environment.clone());
        let subject = Subject {
            service: &service,
            environment: &environment,
            revision: &request.revision,
            baseline: request.baseline.as_ref(),
        };
        for metric in &request.metrics {
            let now = self.shared.clock.now();
            let measurement = match &target.monitor {
                Some(monitor) => {
                    measure(monitor.as_ref(), &request.run, metric, &subject, now).await
                }
                None => Measurement::no_monitor(&request.run, &metric.name, now),
            };
            self.shared
                .append(st, JournalEvent::Measured { measurement })
                .await?;
        }
        Ok(())
    }

    /// Apply `desired`. `Some(next)` means the journal moved on instead (a permanent refusal
    /// started a rollback, or failed one); transient errors are returned for a retry.
    async fn apply(
        &mut self,
        st: &mut DeploymentStatus,
        desired: &DesiredState,
    ) -> Result<Option<Next>> {
        match self.target(st)?.env.apply(&st.spec.service, desired).await {
            Ok(()) => Ok(None),
            Err(e) => self.environment_error(st, "apply", e).await.map(Some),
        }
    }

    async fn environment_error(
        &mut self,
        st: &mut DeploymentStatus,
        op: &str,
        e: Error,
    ) -> Result<Next> {
        // A refusal is an answer; a retryable error may mean nobody is there.
        if e.is_retryable() {
            self.reachable_since = None;
        } else {
            self.reachable_since.get_or_insert(self.shared.clock.now());
        }
        if e.is_retryable() {
            return Err(e);
        }
        let reason = format!("{op} of {} failed: {}", st.spec.service, e.chain());
        self.give_up(st, RollbackCause::EnvironmentError, reason)
            .await
    }

    /// A rollback trigger fired: roll back, freeze or pause as the failure policy says; if this
    /// already is a rollback, fail.
    async fn give_up(
        &mut self,
        st: &mut DeploymentStatus,
        cause: RollbackCause,
        reason: String,
    ) -> Result<Next> {
        if st.phase == Phase::RollingBack {
            // Ending here could leave traffic on the revision being rolled back: keep trying
            // (with back-off) until the previous revision serves alone, verified. A newer
            // deployment or manual rollback of the service takes over from a stalled one.
            return Err(Error::backend("rollback", reason));
        }
        // An operator's abort, and a release that must stay all-or-nothing, always roll back.
        let policy = if matches!(cause, RollbackCause::Aborted | RollbackCause::ReleaseFailed) {
            FailurePolicy::Rollback
        } else {
            st.spec.failure_policy
        };
        let event = match policy {
            FailurePolicy::Rollback => JournalEvent::RollbackStarted { cause, reason },
            FailurePolicy::Freeze => JournalEvent::Finished {
                outcome: Outcome::Frozen {
                    reason: format!("{cause}: {reason}"),
                },
            },
            FailurePolicy::Pause => JournalEvent::ApprovalRequested {
                gate: "failure".into(),
                reason: format!("{cause}: {reason}; approve to retry, reject to roll back"),
            },
        };
        self.shared.append(st, event).await?;
        Ok(Next::Now)
    }

    /// A first deployment that must roll back has nothing to return to: remove what it started
    /// and fail.
    async fn remove_first_revision(&mut self, st: &mut DeploymentStatus) -> Result<Next> {
        let empty = DesiredState::default();
        let why = || "first deployment rolled back".to_string();
        if let Some(next) = self.journal_and_apply(st, &empty, why).await? {
            return Ok(next);
        }
        // Failed is only said once nothing of it runs (so nothing of it takes traffic).
        match self.target(st)?.env.observe(&st.spec.service).await {
            Ok(observed) if observed.revisions.is_empty() => {}
            Ok(observed) => {
                tracing::debug!(observed = %observed.summary(), "waiting for the removal");
                return Ok(Next::After(self.poll()));
            }
            Err(e) => return self.environment_error(st, "observe", e).await,
        }
        let why = st
            .rollback
            .as_ref()
            .map_or("rolled back", |(_, r)| r.as_str());
        let reason = format!(
            "{why}; there is no earlier revision to return to, so {} was removed",
            st.spec.target.label
        );
        self.finish(st, Outcome::Failed { reason }).await?;
        Ok(Next::Now)
    }

    async fn finish(&mut self, st: &mut DeploymentStatus, outcome: Outcome) -> Result<()> {
        self.shared
            .append(st, JournalEvent::Finished { outcome })
            .await?;
        Ok(())
    }

    /// Whether an older deployment of the same service and environment is still active:
    /// deployments of one service in one environment run in the order they were requested.
    ///
    /// Walks older deployments newest first and stops at the first that started and ended:
    /// it could only start once everything before it had ended.
    async fn queued_behind_older(&self, st: &DeploymentStatus) -> Result<bool> {
        let ids = self
            .shared
            .store
            .list_deployments(&st.spec.service, &st.spec.environment)
            .await?;
        let older = ids.iter().skip_while(|id| **id != st.spec.id).skip(1);
        for id in older {
            let other = self.shared.status(id).await?;
            if !other.phase.is_terminal() {
                return Ok(true);
            }
            if other.started_at.is_some() {
                return Ok(false);
            }
        }
        Ok(false)
    }

    /// A rollback never gives up on its own, so one that cannot finish (the revision it
    /// returns to broken too, a backend refusing) would block the service for ever. Once it has
    /// made no progress for its progress deadline while the backend answered (an outage is
    /// waited out, never a reason: the stall counts from when the backend last came back) and
    /// a newer deployment of the service waits (a fix, or a
    /// manual rollback to another revision), it ends as `failed`, superseded, and the newer one
    /// takes charge of the traffic. Its own driver — the lease holder — writes that, so no
    /// second driver ever acts on it. `Some(next)` if it was superseded.
    async fn supersede_if_stalled(&mut self, st: &mut DeploymentStatus) -> Result<Option<Next>> {
        let Some(answered_since) = self.reachable_since else {
            return Ok(None);
        };
        let stalled = self
            .shared
            .clock
            .now()
            .since(st.last_progress_at.max(answered_since));
        if st.phase != Phase::RollingBack || stalled <= st.spec.progress_deadline {
            return Ok(None);
        }
        let ids = self
            .shared
            .store
            .list_deployments(&st.spec.service, &st.spec.environment)
            .await?;
        let mut waiting = None;
        for id in ids.iter().take_while(|id| **id != st.spec.id) {
            let newer = self.shared.status(id).await?;
            if !newer.phase.is_terminal() {
                waiting = Some(newer);
            }
        }
        let Some(newer) = waiting else {
            return Ok(None);
        };
        let why = st.rollback.as_ref().map_or("", |(_, r)| r.as_str());
        let mut reason = format!(
            "superseded by {} ({}): the rollback made no progress for {}s ({why})",
            newer.spec.id,
            newer.spec.target.label,
            stalled.as_secs()
        );
        if let Some(e) = &self.last_error {
            reason.push_str(&format!("; last error: {e}"));
        }
        tracing::warn!(%reason, "a newer deployment takes over from a stalled rollback");
        self.finish(st, Outcome::Failed { reason }).await?;
        Ok(Some(Next::Now))
    }

    /// Take or renew the service's lease, or say who holds it.
    async fn hold_lease(&mut self, st: &DeploymentStatus) -> Result<LeaseState> {
        let now = self.shared.clock.now();
        let ttl = self.shared.config.lease_ttl;
        if let Some(lease) = &self.lease
            && now.plus(ttl / 2) < lease.expires_at
        {
            return Ok(LeaseState::Held);
        }
        let key = format!("{}/{}", st.spec.service, st.spec.environment);
        let owner = format!("{}/{}", self.shared.owner, st.spec.id);
        match self
            .shared
            .store
            .acquire_lease(&key, &owner, now, ttl)
            .await
        {
            Ok(lease) => {
                if self.lease.is_none() && st.phase != Phase::Pending {
                    tracing::info!(phase = %st.phase, "took over the deployment");
                }
                self.shared.drivers.remember_lease(&self.id, &lease);
                self.lease = Some(lease);
                Ok(LeaseState::Held)
            }
            Err(Error::LeaseHeld {
                owner, expires_at, ..
            }) => {
                tracing::debug!(%owner, %expires_at, "lease held elsewhere");
                self.shared.drivers.forget_lease(&self.id);
                self.lease = None;
                let ours = owner
                    .strip_prefix(self.shared.owner.as_str())
                    .is_some_and(|rest| rest.starts_with('/'));
                Ok(if ours {
                    LeaseState::Busy
                } else {
                    LeaseState::Elsewhere
                })
            }
            Err(e) => Err(e),
        }
    }
}

/// How a finished rollback was verified (`v1 3/3 ready, 100% of traffic`), or `None` while
/// `target` does not yet serve alone, with `replicas` ready instances and all the traffic.
fn rollback_verified(target: &Revision, observed: &Observed, replicas: u32) -> Option<String> {
    let ready = observed.revision(&target.id).map_or(0, |o| o.ready());
    let weight = observed.weight_of(&target.id);
    if ready < replicas || weight != 100 || observed.revisions.len() != 1 {
        return None;
    }
    Some(format!(
        "{} {ready}/{replicas} ready, {weight}% of traffic",
        target.label
    ))
}

/// Whether the deployment waits for an approval at a gate (and is not held by an operator).
fn waits_at_gate(st: &DeploymentStatus) -> bool {
    st.awaiting.is_some() && st.paused.is_none()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::environment::{InstanceObservation, RevisionObservation, Traffic};
    use crate::model::{Digest, EnvironmentKind, EnvironmentSpec, ServiceSpec, Weight};

    fn revision(label: &str) -> Arc<Revision> {
        let service = ServiceSpec::builder().name("web").build().unwrap();
        let environment = EnvironmentSpec::builder()
            .name("production")
            .kind(EnvironmentKind::Production)
            .replicas(2)
            .build()
            .unwrap();
        let artifact = Digest::of_bytes(label.as_bytes());
        Arc::new(Revision::new(&service, &environment, artifact, label).unwrap())
    }

    /// `revisions` running with their ready flags per instance, and traffic by percent.
    fn observed(revisions: &[(&Arc<Revision>, &[bool], u32)]) -> Observed {
        let running = revisions
            .iter()
            .map(|(r, ready, _)| {
                let instances = ready
                    .iter()
                    .enumerate()
                    .map(|(i, ready)| InstanceObservation::new(format!("web-{i}"), *ready, 0, None))
                    .collect();
                RevisionObservation::new(Arc::clone(r), ready.len() as u32, instances)
            })
            .collect();
        let traffic = revisions
            .iter()
            .filter(|(_, _, percent)| *percent > 0)
            .map(|(r, _, percent)| (r.id.clone(), Weight::new(*percent).unwrap()))
            .collect::<BTreeMap<_, _>>();
        Observed::new(running, traffic, Traffic::ByReadyInstances)
    }

    #[test]
    fn a_rollback_is_verified_once_its_target_serves_alone_ready_with_all_traffic() {
        let v1 = revision("v1");
        let done = observed(&[(&v1, &[true, true], 100)]);
        assert_eq!(
            rollback_verified(&v1, &done, 2).as_deref(),
            Some("v1 2/2 ready, 100% of traffic")
        );
    }

    #[test]
    fn a_rollback_is_not_verified_while_anything_falls_short() {
        let (v1, v2) = (revision("v1"), revision("v2"));
        let not_ready = observed(&[(&v1, &[true, false], 100)]);
        assert_eq!(rollback_verified(&v1, &not_ready, 2), None);
        let split = observed(&[(&v1, &[true, true], 90), (&v2, &[true], 10)]);
        assert_eq!(rollback_verified(&v1, &split, 2), None);
        let not_alone = observed(&[(&v1, &[true, true], 100), (&v2, &[false], 0)]);
        assert_eq!(rollback_verified(&v1, &not_alone, 2), None);
        let too_few = observed(&[(&v1, &[true, true], 100)]);
        assert_eq!(rollback_verified(&v1, &too_few, 3), None);
        assert_eq!(rollback_verified(&v2, &too_few, 2), None);
    }
}
