//! The deployment journal and the state machine derived from it.
//!
//! A deployment's journal is an append-only list of [`JournalEntry`]s. Its state
//! ([`DeploymentStatus`]) is never stored: it is computed from the journal by one pure function,
//! [`DeploymentStatus::from_journal`], which also enforces the allowed transitions. The
//! orchestrator writes an entry *before* it carries out what the entry says, so a new process
//! reading the same journal knows exactly where the last one stopped.
//!
//! ```text
//!   Pending ──Started──► Progressing ◄──Resumed── Paused
//!      │                  │   │  └──Paused──────────►│
//!      │                  │   └─RollbackStarted──┐   │ (abort, fail-fast, deadline,
//!      │       Finished(Succeeded)               ▼   ▼  environment error)
//!      │                  ▼                    RollingBack
//!      │              Succeeded                  │      │
//!      │                         Finished(RolledBack)  Finished(Failed)
//!      └──Finished(Failed)──► Failed ◄───────────┘─────────┘
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use typed_builder::TypedBuilder;

use crate::environment::DesiredState;
use crate::error::{Error, Result};
use crate::model::{
    CanaryStep, DeploymentId, EnvironmentName, FailurePolicy, Measurement, Revision, ServiceId,
    StrategySpec,
};
use crate::time::{Timestamp, duration_ms};

/// Who did something: a person, a CI job, or deploykit itself (`system`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Actor(String);

impl Actor {
    /// A named actor (`alice`, `ci:release-pipeline`).
    pub fn new(name: impl Into<String>) -> Self {
        Actor(name.into())
    }

    /// deploykit itself, for automatic decisions.
    pub fn system() -> Self {
        Actor("deploykit".into())
    }

    /// The actor's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a deployment exists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentKind {
    /// A new revision.
    Deploy,
    /// A manual rollback to a kept revision.
    Rollback,
    /// A preview environment created or updated for a branch.
    Preview {
        /// The branch or pull request.
        branch: String,
        /// When the preview is torn down unless updated.
        expires_at: Timestamp,
    },
    /// Removal of everything the environment runs for the service (a preview's end, or
    /// [`Orchestrator::stop`](crate::Orchestrator::stop)).
    Teardown,
    /// The serving revision at another size, by hand
    /// ([`Orchestrator::scale`](crate::Orchestrator::scale)); the next deployment sizes from
    /// the environment again.
    Scale {
        /// The instances asked for.
        replicas: u32,
    },
}

/// What a deployment was asked to do; the first journal entry, fixed for its lifetime.
///
/// A journal's spec is validated as it loads, with the same checks as the environment and
/// strategy it was made from, so a hand-edited or foreign journal cannot smuggle in what the
/// builders refuse.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, TypedBuilder)]
#[serde(remote = "Self")]
#[non_exhaustive]
pub struct DeploymentSpec {
    /// The deployment's id.
    pub id: DeploymentId,
    /// The service.
    pub service: ServiceId,
    /// The environment.
    pub environment: EnvironmentName,
    /// The revision to roll out.
    #[builder(setter(into))]
    pub target: Arc<Revision>,
    /// Desired instances of it.
    pub replicas: u32,
    /// How to roll out.
    pub strategy: StrategySpec,
    /// Roll back after this long without progress.
    #[serde(with = "duration_ms", rename = "progress_deadline_ms")]
    pub progress_deadline: Duration,
    /// Deploy or manual rollback.
    #[builder(default = DeploymentKind::Deploy)]
    pub kind: DeploymentKind,
    /// Who asked for it.
    pub requested_by: Actor,
    /// What to do when a rollback trigger fires.
    #[builder(default)]
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    /// The multi-service release this deployment belongs to, if any.
    #[builder(default)]
    #[serde(default)]
    pub release: Option<ReleaseMembership>,
}

crate::validate::validated_serde!(DeploymentSpec, DeploymentSpec::validate);

impl DeploymentSpec {
    /// The checks a spec made from a valid environment and strategy passes: replicas and
    /// progress deadline in range, a valid strategy.
    pub fn validate(&self) -> Result<()> {
        crate::model::check_replicas("deployment.replicas", self.replicas)?;
        crate::model::check_progress_deadline(
            "deployment.progress_deadline",
            self.progress_deadline,
        )?;
        self.strategy.validate("deployment.strategy")
    }
}

/// Membership of a multi-service release: the deployments that promote together or not at all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ReleaseMembership {
    /// The release's id.
    pub id: String,
    /// Every deployment of the release, this one included.
    pub deployments: Vec<DeploymentId>,
}

/// Why a rollback started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackCause {
    /// An operator aborted the deployment.
    Aborted,
    /// New instances failed (crash loop, startup or readiness failures).
    FailFast,
    /// An analysis failed (or its queries failed too often in a row).
    AnalysisFailed,
    /// No progress within the progress deadline.
    ProgressDeadline,
    /// The environment refused an operation for good.
    EnvironmentError,
    /// Another service of the same multi-service release failed.
    ReleaseFailed,
}

impl fmt::Display for RollbackCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RollbackCause::Aborted => "aborted",
            RollbackCause::FailFast => "new instances failed",
            RollbackCause::AnalysisFailed => "analysis failed",
            RollbackCause::ProgressDeadline => "progress deadline exceeded",
            RollbackCause::EnvironmentError => "environment error",
            RollbackCause::ReleaseFailed => "another service of the release failed",
        })
    }
}

/// How a deployment ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The target serves at full size.
    Succeeded,
    /// The previous revision serves again, verified ready and serving all traffic.
    RolledBack {
        /// What was verified, e.g. `v2 3/3 ready, 100% of traffic`.
        verification: String,
    },
    /// Stopped where it was, traffic as it was (failure policy `freeze`).
    Frozen {
        /// Why.
        reason: String,
    },
    /// Neither: see the reason.
    Failed {
        /// Why.
        reason: String,
    },
}

/// One fact in a deployment's journal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum JournalEvent {
    /// The deployment was requested (always entry 0).
    Created {
        /// What was asked.
        spec: Arc<DeploymentSpec>,
    },
    /// The orchestrator took the service's lease and began; `previous` is the last good
    /// revision to return to on rollback.
    Started {
        /// The last good revision, if any.
        previous: Option<Arc<Revision>>,
    },
    /// A desired state is about to be applied.
    Applied {
        /// The state.
        desired: DesiredState,
        /// What was observed when it was decided, for humans.
        observed: String,
    },
    /// The rollout reached a step (canary step, blue-green stage).
    StepReached {
        /// The step.
        step: usize,
    },
    /// An analysis measurement was taken.
    Measured {
        /// The measurement.
        measurement: Measurement,
    },
    /// The rollout waits for a human to approve (or reject) a gate.
    ApprovalRequested {
        /// The gate.
        gate: String,
        /// What is asked.
        reason: String,
    },
    /// A human approved the gate.
    Approved {
        /// The gate.
        gate: String,
        /// Who.
        by: Actor,
        /// Why.
        reason: String,
    },
    /// The rollout is ready to switch traffic and waits for the rest of its release.
    ReadyToPromote,
    /// All traffic was switched to the new revision.
    Promoted,
    /// An operator paused the rollout.
    Paused {
        /// Who.
        by: Actor,
        /// Why.
        reason: String,
    },
    /// An operator resumed it.
    Resumed {
        /// Who.
        by: Actor,
    },
    /// An operator asked for an abort (a fact, acted on by the orchestrator).
    AbortRequested {
        /// Who.
        by: Actor,
        /// Why.
        reason: String,
    },
    /// A rollback to the previous revision began.
    RollbackStarted {
        /// Why, in one word.
        cause: RollbackCause,
        /// Why, in full.
        reason: String,
    },
    /// The deployment ended.
    Finished {
        /// How.
        outcome: Outcome,
    },
}

impl JournalEvent {
    /// The event's type name as stored (`created`, `applied`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            JournalEvent::Created { .. } => "created",
            JournalEvent::Started { .. } => "started",
            JournalEvent::Applied { .. } => "applied",
            JournalEvent::StepReached { .. } => "step_reached",
            JournalEvent::Measured { .. } => "measured",
            JournalEvent::ApprovalRequested { .. } => "approval_requested",
            JournalEvent::Approved { .. } => "approved",
            JournalEvent::ReadyToPromote => "ready_to_promote",
            JournalEvent::Promoted => "promoted",
            JournalEvent::Paused { .. } => "paused",
            JournalEvent::Resumed { .. } => "resumed",
            JournalEvent::AbortRequested { .. } => "abort_requested",
            JournalEvent::RollbackStarted { .. } => "rollback_started",
            JournalEvent::Finished { .. } => "finished",
        }
    }

    /// Whether this event ends the deployment.
    pub fn is_terminal(&self) -> bool {
        matches!(self, JournalEvent::Finished { .. })
    }
}

/// One journal entry: its position, when it was written, and the fact.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JournalEntry {
    /// Position in the journal, from 0.
    pub seq: u64,
    /// When it was written.
    pub at: Timestamp,
    /// The fact.
    pub event: JournalEvent,
}

impl JournalEntry {
    /// An entry at position `seq`.
    pub fn new(seq: u64, at: Timestamp, event: JournalEvent) -> Self {
        JournalEntry { seq, at, event }
    }
}

/// Journaled progress of a rollout, folded from its journal: what the planner remembers
/// between rounds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Progress {
    /// The current step (canary step index; blue-green stage).
    pub step: usize,
    /// When the current step was reached.
    pub step_started_at: Timestamp,
    /// When the applied traffic split last changed: analysis judges traffic only once it has
    /// had one interval to arrive after this.
    #[serde(default)]
    pub traffic_changed_at: Option<Timestamp>,
    /// Every analysis measurement taken so far.
    pub measurements: Vec<Measurement>,
    /// Approval gates passed.
    pub approved: BTreeSet<String>,
    /// When the rollout was ready to switch traffic (multi-service releases wait here for
    /// every member).
    pub ready_to_promote_at: Option<Timestamp>,
    /// When traffic was switched to the new revision, if it was.
    pub promoted_at: Option<Timestamp>,
}

/// The phase of a deployment, derived from its journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Waiting for the service's lease (another deployment of it is running).
    Pending,
    /// Rolling out.
    Progressing,
    /// Rolling out, held by an operator.
    Paused,
    /// Returning to the previous revision.
    RollingBack,
    /// Done: the target serves.
    Succeeded,
    /// Done: the previous revision serves again.
    RolledBack,
    /// Done: stopped where it was (failure policy `freeze`).
    Frozen,
    /// Done: neither.
    Failed,
}

impl Phase {
    /// Whether the deployment has ended.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Phase::Succeeded | Phase::RolledBack | Phase::Frozen | Phase::Failed
        )
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Pending => "pending",
            Phase::Progressing => "progressing",
            Phase::Paused => "paused",
            Phase::RollingBack => "rolling back",
            Phase::Succeeded => "succeeded",
            Phase::RolledBack => "rolled back",
            Phase::Frozen => "frozen",
            Phase::Failed => "failed",
        })
    }
}

/// An operator's hold or abort, with who and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorFlag {
    /// Who.
    pub by: Actor,
    /// Why.
    pub reason: String,
    /// When.
    pub at: Timestamp,
}

/// A deployment's state, computed from its journal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeploymentStatus {
    /// What was asked.
    pub spec: Arc<DeploymentSpec>,
    /// The current phase.
    pub phase: Phase,
    /// The revision to return to on rollback (known once started).
    pub previous: Option<Arc<Revision>>,
    /// When it took the service's lease and started, if it did.
    pub started_at: Option<Timestamp>,
    /// Set while an operator holds the rollout.
    pub paused: Option<OperatorFlag>,
    /// Set once an operator asked for an abort.
    pub abort: Option<OperatorFlag>,
    /// The gate a human is asked to approve, with what is asked.
    pub awaiting: Option<(String, String)>,
    /// Steps, measurements, approvals and promotion so far (reset when a rollback starts).
    pub progress: Progress,
    /// Why a rollback started, if one did.
    pub rollback: Option<(RollbackCause, String)>,
    /// The final outcome, once terminal.
    pub outcome: Option<Outcome>,
    /// The last desired state journaled in the current leg (rollout or rollback).
    pub last_applied: Option<DesiredState>,
    /// When the deployment last made progress (start, an apply, a resume, a rollback).
    pub last_progress_at: Timestamp,
    /// When it was created.
    pub created_at: Timestamp,
    /// When its journal was last written.
    pub updated_at: Timestamp,
    /// The sequence number the next journal entry must have.
    pub next_seq: u64,
}

impl DeploymentStatus {
    /// Folds a journal into a status, checking every transition.
    pub fn from_journal(entries: &[JournalEntry]) -> Result<Self> {
        let Some((first, rest)) = entries.split_first() else {
            return Err(corrupt("journal", "it is empty"));
        };
        let JournalEvent::Created { spec } = &first.event else {
            return Err(corrupt("journal", "entry 0 is not `created`"));
        };
        if first.seq != 0 {
            return Err(corrupt(
                "journal",
                "entry 0 has a sequence number other than 0",
            ));
        }
        let mut status = DeploymentStatus {
            spec: spec.clone(),
            phase: Phase::Pending,
            previous: None,
            started_at: None,
            paused: None,
            abort: None,
            awaiting: None,
            progress: Progress {
                step_started_at: first.at,
                ..Progress::default()
            },
            rollback: None,
            outcome: None,
            last_applied: None,
            last_progress_at: first.at,
            created_at: first.at,
            updated_at: first.at,
            next_seq: 1,
        };
        for entry in rest {
            if entry.seq != status.next_seq {
                return Err(corrupt(
                    &format!("journal of {}", status.spec.id),
                    &format!("expected entry {}, found {}", status.next_seq, entry.seq),
                ));
            }
            status.apply(entry).map_err(|e| {
                corrupt(
                    &format!("journal of {} at entry {}", status.spec.id, entry.seq),
                    &e.to_string(),
                )
            })?;
        }
        Ok(status)
    }

    /// Whether `event` is allowed now; the error names the refused action and the phase.
    pub fn check(&self, event: &JournalEvent) -> Result<()> {
        let p = self.phase;
        let ok = match event {
            JournalEvent::Created { .. } => false,
            JournalEvent::Started { .. } => p == Phase::Pending,
            JournalEvent::Applied { .. } => matches!(p, Phase::Progressing | Phase::RollingBack),
            JournalEvent::StepReached { .. } | JournalEvent::Promoted => {
                p == Phase::Progressing && self.awaiting.is_none()
            }
            // A rollout waiting at a gate is still watched (its background analysis), unless
            // an operator holds it.
            JournalEvent::Measured { .. } => {
                (p == Phase::Progressing && self.awaiting.is_none())
                    || (p == Phase::Paused && self.awaiting.is_some() && self.paused.is_none())
            }
            JournalEvent::ReadyToPromote => {
                p == Phase::Progressing && self.progress.ready_to_promote_at.is_none()
            }
            JournalEvent::ApprovalRequested { .. } => {
                p == Phase::Progressing && self.awaiting.is_none()
            }
            JournalEvent::Approved { gate, .. } => {
                p == Phase::Paused && self.awaiting.as_ref().is_some_and(|(g, _)| g == gate)
            }
            JournalEvent::Paused { .. } => p == Phase::Progressing,
            JournalEvent::Resumed { .. } => p == Phase::Paused && self.paused.is_some(),
            JournalEvent::AbortRequested { .. } => {
                matches!(p, Phase::Pending | Phase::Progressing | Phase::Paused)
                    && self.abort.is_none()
            }
            JournalEvent::RollbackStarted { .. } => matches!(p, Phase::Progressing | Phase::Paused),
            JournalEvent::Finished { outcome } => match outcome {
                Outcome::Succeeded => p == Phase::Progressing,
                Outcome::RolledBack { .. } => p == Phase::RollingBack,
                Outcome::Frozen { .. } => matches!(p, Phase::Progressing | Phase::Paused),
                Outcome::Failed { .. } => !p.is_terminal(),
            },
        };
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidTransition {
                deployment: self.spec.id.to_string(),
                action: match event {
                    JournalEvent::Created { .. } => "create",
                    JournalEvent::Started { .. } => "start",
                    JournalEvent::Applied { .. } => "apply a state to",
                    JournalEvent::StepReached { .. } => "advance",
                    JournalEvent::Measured { .. } => "record a measurement for",
                    JournalEvent::ApprovalRequested { .. } => "request an approval for",
                    JournalEvent::Approved { .. } => "approve",
                    JournalEvent::ReadyToPromote => "mark ready to promote",
                    JournalEvent::Promoted => "promote",
                    JournalEvent::Paused { .. } => "pause",
                    JournalEvent::Resumed { .. } => "resume",
                    JournalEvent::AbortRequested { .. } => "abort",
                    JournalEvent::RollbackStarted { .. } => "roll back",
                    JournalEvent::Finished { .. } => "finish",
                }
                .to_string(),
                phase: if self.abort.is_some() && !p.is_terminal() {
                    format!("{p} (abort requested)")
                } else {
                    p.to_string()
                },
            })
        }
    }

    /// Apply the next entry, checking the transition.
    pub(crate) fn apply(&mut self, entry: &JournalEntry) -> Result<()> {
        if entry.seq != self.next_seq {
            return Err(corrupt(
                &format!("journal of {}", self.spec.id),
                &format!("expected entry {}, found {}", self.next_seq, entry.seq),
            ));
        }
        self.check(&entry.event)?;
        self.updated_at = entry.at;
        self.next_seq = entry.seq + 1;
        match &entry.event {
            JournalEvent::Created { .. } => {}
            JournalEvent::Started { previous } => {
                self.previous = previous.clone();
                self.started_at = Some(entry.at);
                self.phase = Phase::Progressing;
                self.last_progress_at = entry.at;
            }
            JournalEvent::Applied { desired, .. } => {
                if self.last_applied.as_ref().map(|d| &d.traffic) != Some(&desired.traffic) {
                    self.progress.traffic_changed_at = Some(entry.at);
                }
                self.last_applied = Some(desired.clone());
                self.last_progress_at = entry.at;
            }
            JournalEvent::StepReached { step } => {
                self.progress.step = *step;
                self.progress.step_started_at = entry.at;
                self.last_progress_at = entry.at;
            }
            JournalEvent::Measured { measurement } => {
                self.progress.measurements.push(measurement.clone());
                self.last_progress_at = entry.at;
            }
            JournalEvent::ApprovalRequested { gate, reason } => {
                self.awaiting = Some((gate.clone(), reason.clone()));
                self.phase = Phase::Paused;
            }
            JournalEvent::Approved { gate, .. } => {
                self.awaiting = None;
                self.progress.approved.insert(gate.clone());
                self.phase = self.unpaused_phase();
                self.last_progress_at = entry.at;
            }
            JournalEvent::ReadyToPromote => {
                self.progress.ready_to_promote_at = Some(entry.at);
                self.last_progress_at = entry.at;
            }
            JournalEvent::Promoted => {
                self.progress.promoted_at = Some(entry.at);
                self.last_progress_at = entry.at;
            }
            JournalEvent::Paused { by, reason } => {
                self.paused = Some(OperatorFlag {
                    by: by.clone(),
                    reason: reason.clone(),
                    at: entry.at,
                });
                self.phase = Phase::Paused;
            }
            JournalEvent::Resumed { .. } => {
                self.paused = None;
                self.phase = self.unpaused_phase();
                self.last_progress_at = entry.at;
            }
            JournalEvent::AbortRequested { by, reason } => {
                self.abort = Some(OperatorFlag {
                    by: by.clone(),
                    reason: reason.clone(),
                    at: entry.at,
                });
            }
            JournalEvent::RollbackStarted { cause, reason } => {
                self.rollback = Some((*cause, reason.clone()));
                self.paused = None;
                self.awaiting = None;
                self.phase = Phase::RollingBack;
                self.last_applied = None;
                self.last_progress_at = entry.at;
            }
            JournalEvent::Finished { outcome } => {
                self.phase = match outcome {
                    Outcome::Succeeded => Phase::Succeeded,
                    Outcome::RolledBack { .. } => Phase::RolledBack,
                    Outcome::Frozen { .. } => Phase::Frozen,
                    Outcome::Failed { .. } => Phase::Failed,
                };
                self.paused = None;
                self.awaiting = None;
                self.outcome = Some(outcome.clone());
            }
        }
        Ok(())
    }

    /// Paused while an operator's pause or an approval gate holds it, else progressing.
    fn unpaused_phase(&self) -> Phase {
        if self.paused.is_some() || self.awaiting.is_some() {
            Phase::Paused
        } else {
            Phase::Progressing
        }
    }

    /// Until when a progressing rollout deliberately waits at its current point, if it does
    /// now: a timed canary pause, a delayed blue-green auto-promotion, or the window after
    /// promotion in which the old revision stays warm. The progress deadline does not run
    /// before then (as Argo Rollouts does not apply `progressDeadlineSeconds` while a step
    /// pauses), so a pause of hours or days is not taken for a stuck rollout. Status displays
    /// show the time left from it.
    pub fn waits_until(&self) -> Option<Timestamp> {
        if self.phase != Phase::Progressing || self.redeploys_serving() {
            return None;
        }
        let progress = &self.progress;
        let (promoted_delay, step_wait) = match &self.spec.strategy {
            StrategySpec::Rolling(_) => return None,
            StrategySpec::Canary(spec) => (
                spec.scale_down_delay,
                match spec.steps.get(progress.step) {
                    Some(CanaryStep::Pause { duration: Some(d) }) => Some(*d),
                    _ => None,
                },
            ),
            StrategySpec::BlueGreen(spec) => (
                spec.scale_down_delay,
                (spec.auto_promote && progress.step >= 2).then_some(spec.auto_promotion_delay),
            ),
        };
        match progress.promoted_at {
            Some(at) => Some(at.plus(promoted_delay)),
            None => step_wait.map(|d| progress.step_started_at.plus(d)),
        }
    }

    /// The time from which the progress deadline counts: the last progress, or the end of a
    /// deliberate wait if that is later.
    pub fn deadline_counts_from(&self) -> Timestamp {
        match self.waits_until() {
            Some(t) if t > self.last_progress_at => t,
            _ => self.last_progress_at,
        }
    }

    /// Whether this deployment asks for the revision that already served when it started.
    pub fn redeploys_serving(&self) -> bool {
        self.previous
            .as_ref()
            .is_some_and(|p| p.id == self.spec.target.id)
    }

    /// The revision serving once this deployment ended, if it ended well.
    pub fn serving_revision(&self) -> Option<&Arc<Revision>> {
        if self.spec.kind == DeploymentKind::Teardown {
            return None;
        }
        match self.outcome {
            Some(Outcome::Succeeded) => Some(&self.spec.target),
            Some(Outcome::RolledBack { .. }) => self.previous.as_ref(),
            _ => None,
        }
    }
}

fn corrupt(what: &str, why: &str) -> Error {
    Error::Corrupt {
        what: what.to_string(),
        source: why.to_string().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MeasurementOutcome;

    /// Journals hold measurements, and a status (with its progress) is what status displays
    /// read: the serialised form of [`Progress`] does not change.
    #[test]
    fn the_serialised_form_of_progress_does_not_change() {
        let outcomes = [
            MeasurementOutcome::Successful,
            MeasurementOutcome::Failed,
            MeasurementOutcome::Inconclusive,
            MeasurementOutcome::Error,
            MeasurementOutcome::NoData,
        ];
        let measurements = outcomes
            .iter()
            .enumerate()
            .map(|(i, o)| Measurement {
                run: "step-3".into(),
                metric: "error-rate".into(),
                at: Timestamp::from_millis(1_000 + i as u64),
                value: (i % 2 == 0).then_some(0.25 * i as f64),
                outcome: *o,
                detail: format!("detail {i}"),
            })
            .collect();
        let progress = Progress {
            step: 4,
            step_started_at: Timestamp::from_millis(900),
            traffic_changed_at: Some(Timestamp::from_millis(950)),
            measurements,
            approved: BTreeSet::from(["step-2".to_string(), "analysis:background".to_string()]),
            ready_to_promote_at: None,
            promoted_at: Some(Timestamp::from_millis(2_000)),
        };
        let json = concat!(
            r#"{"step":4,"step_started_at":900,"traffic_changed_at":950,"#,
            r#""measurements":[{"run":"step-3","metric":"error-rate","at":1000,"value":0.0,"#,
            r#""outcome":"successful","detail":"detail 0"},{"run":"step-3","metric":"error-rate","#,
            r#""at":1001,"value":null,"outcome":"failed","detail":"detail 1"},{"run":"step-3","#,
            r#""metric":"error-rate","at":1002,"value":0.5,"outcome":"inconclusive","#,
            r#""detail":"detail 2"},{"run":"step-3","metric":"error-rate","at":1003,"value":null,"#,
            r#""outcome":"error","detail":"detail 3"},{"run":"step-3","metric":"error-rate","#,
            r#""at":1004,"value":1.0,"outcome":"no_data","detail":"detail 4"}],"#,
            r#""approved":["analysis:background","step-2"],"ready_to_promote_at":null,"#,
            r#""promoted_at":2000}"#,
        );
        assert_eq!(serde_json::to_string(&progress).unwrap(), json);
        assert_eq!(serde_json::from_str::<Progress>(json).unwrap(), progress);
    }
}
