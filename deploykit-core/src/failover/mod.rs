//! Failover of an environment to its standby, as a journaled procedure.
//!
//! A failover moves what an environment serves (`from`, the primary) to its standby (`to`):
//! **assessment** (is the standby healthy, how far behind is it; refused past a lag unless
//! forced), then five **steps** in a fixed order, each done by a [`FailoverSite`]:
//!
//! ```text
//!   requested ─► assessed ─► fence ─► promote_database ─► scale ─► switch_traffic ─► verify ─► finished
//!                   │                                                                            ▲
//!                   └──────────────── refused (unhealthy standby, lag, no right) ────────────────┘
//! ```
//!
//! Every fact is a [`FailoverRecord`] in a record log of the [`StateStore`]
//! (`failover/<id>`), written with conditional appends: a step is journaled as started before
//! the site performs it and as done after, so a process that dies at any point leaves a
//! journal from which another process resumes ([`Failovers::resume`]): it performs again the
//! step that was started and not recorded done, which is why every step of a site must be
//! idempotent. The state is never stored; [`FailoverStatus::from_records`] computes it and
//! refuses a journal whose facts are out of order.
//!
//! **Services**: a [`WarmStandby`] keeps the standby running what the primary serves, on any
//! backend, and does the services' part of the steps; a backend's [`Handover`] moves the
//! clients.
//!
//! **Documentation**: [`FailoverReport`] renders the journal as a report, Markdown and JSON:
//! timeline, decisions and who made them, the RTO from the primary's loss to verified
//! service, and the RPO: the commits the standby had not received when it was promoted.
//!
//! [`StateStore`]: crate::store::StateStore

mod assessment;
mod executor;
mod report;
mod warm;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use typed_builder::TypedBuilder;

use crate::error::{Error, Result};
use crate::journal::Actor;
use crate::model::{EnvironmentName, ServiceId};
use crate::time::{Timestamp, duration_ms};

pub use assessment::{AssessmentPolicy, HealthWatch, ProbeResult, Verdict};
pub use executor::Failovers;
pub use report::FailoverReport;
pub use warm::{Handover, Synced, WarmStandby};

/// The identity of one failover (or failback).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FailoverId(String);

impl FailoverId {
    /// Wraps an id: lowercase letters, digits and `-`, 1 to 100 characters.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        if id.is_empty()
            || id.len() > 100
            || !id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(Error::invalid(
                "failover.id",
                format!("{id:?} is not 1 to 100 lowercase letters, digits and '-'"),
            ));
        }
        Ok(FailoverId(id))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The record log holding this failover's journal.
    pub fn log(&self) -> String {
        format!("{LOG_PREFIX}{}", self.0)
    }
}

impl fmt::Display for FailoverId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where failover journals live in the store's record logs.
pub const LOG_PREFIX: &str = "failover/";

/// Which way a failover goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From the primary to its standby.
    Failover,
    /// Back to the old primary, once it was seeded again from the new one.
    Failback,
    /// A rehearsal into a scratch environment: the primary is not fenced and keeps serving.
    Rehearsal,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Failover => "failover",
            Direction::Failback => "failback",
            Direction::Rehearsal => "rehearsal",
        })
    }
}

/// Why a failover was started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Trigger {
    /// A person (or a job) asked for it.
    Manual,
    /// The assessment judged the primary lost ([`HealthWatch`]).
    Automatic {
        /// When the first probe of the quorum began failing: the start of the outage.
        lost_since: Timestamp,
        /// The failing probes and why, for the report.
        evidence: Vec<String>,
    },
}

/// What a failover was asked to do; the first record, fixed for its lifetime.
///
/// ```
/// use deploykit_core::failover::{Direction, FailoverId, FailoverSpec};
/// use deploykit_core::{Actor, EnvironmentName, ServiceId, Timestamp};
/// let spec = FailoverSpec::builder()
///     .id(FailoverId::new("production-1")?)
///     .direction(Direction::Failover)
///     .from(EnvironmentName::new("production")?)
///     .to(EnvironmentName::new("production-dr")?)
///     .services(vec![ServiceId::new("web")?])
///     .requested_by(Actor::new("alice"))
///     .reason("eu-west-1 is down")
///     .requested_at(Timestamp::from_millis(0))
///     .build();
/// spec.validate()?;
/// assert_eq!(spec.max_lag, std::time::Duration::from_secs(5));
/// # Ok::<(), deploykit_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, TypedBuilder)]
#[non_exhaustive]
pub struct FailoverSpec {
    /// The failover's id.
    pub id: FailoverId,
    /// Failover, failback or rehearsal.
    pub direction: Direction,
    /// The environment that serves now.
    pub from: EnvironmentName,
    /// The environment that serves afterwards.
    pub to: EnvironmentName,
    /// The services moved (access is checked for each).
    pub services: Vec<ServiceId>,
    /// Who asked (`deploykit` for an automatic failover).
    pub requested_by: Actor,
    /// Why, in words.
    #[builder(setter(into))]
    pub reason: String,
    /// Manual or automatic, with the evidence (default manual).
    #[builder(default = Trigger::Manual)]
    pub trigger: Trigger,
    /// Proceed even though the standby is further behind than `max_lag` (audited).
    #[builder(default)]
    pub force: bool,
    /// The most the standby may be behind (commits it has not received, in time) for the
    /// failover to proceed unforced (default 5 s).
    #[serde(with = "duration_ms", rename = "max_lag_ms")]
    #[builder(default = Duration::from_secs(5))]
    pub max_lag: Duration,
    /// A step that takes longer than this is escalated (and again after each further such
    /// period); it keeps being retried (default 60 s).
    #[serde(with = "duration_ms", rename = "step_timeout_ms")]
    #[builder(default = Duration::from_secs(60))]
    pub step_timeout: Duration,
    /// When it was requested.
    pub requested_at: Timestamp,
}

impl FailoverSpec {
    /// The same spec started by the assessment.
    #[must_use]
    pub fn triggered(mut self, trigger: Trigger) -> Self {
        self.trigger = trigger;
        self
    }

    /// The same spec, forced past the lag limit or not.
    #[must_use]
    pub fn forced(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    /// The same spec with another lag limit.
    #[must_use]
    pub fn with_max_lag(mut self, max_lag: Duration) -> Self {
        self.max_lag = max_lag;
        self
    }

    /// The same spec with another step timeout.
    #[must_use]
    pub fn with_step_timeout(mut self, step_timeout: Duration) -> Self {
        self.step_timeout = step_timeout;
        self
    }

    /// Check the spec; errors name the field.
    pub fn validate(&self) -> Result<()> {
        if self.from == self.to {
            return Err(Error::invalid(
                "failover.to",
                format!("the standby must be another environment than {}", self.from),
            ));
        }
        if self.services.is_empty() {
            return Err(Error::invalid(
                "failover.services",
                "name at least one service to move",
            ));
        }
        if self.step_timeout.is_zero() {
            return Err(Error::invalid(
                "failover.step_timeout",
                "must be more than zero",
            ));
        }
        if self.reason.trim().is_empty() {
            return Err(Error::invalid(
                "failover.reason",
                "say why (it goes into the audit log and the report)",
            ));
        }
        Ok(())
    }
}

/// The standby as the site sees it, before anything is done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StandbyReadiness {
    /// Whether it can take over (its probes pass, its database follows).
    pub healthy: bool,
    /// How far behind the primary it is, if known: the time between the newest commit the
    /// primary has made durable elsewhere (archived) and the newest the standby replayed.
    #[serde(with = "crate::time::option_duration_ms", rename = "lag_ms", default)]
    pub lag: Option<Duration>,
    /// What was seen, for humans.
    pub detail: String,
}

impl StandbyReadiness {
    /// A readiness record.
    pub fn new(healthy: bool, lag: Option<Duration>, detail: impl Into<String>) -> Self {
        StandbyReadiness {
            healthy,
            lag,
            detail: detail.into(),
        }
    }
}

/// The steps of a failover, in the order they are done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// The primary takes no more writes or traffic.
    Fence,
    /// The standby's database becomes the primary.
    PromoteDatabase,
    /// The standby's services run at full size.
    Scale,
    /// Traffic goes to the standby.
    SwitchTraffic,
    /// Probes, a data check and traffic reaching the standby say it serves.
    Verify,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Step; 5] = [
        Step::Fence,
        Step::PromoteDatabase,
        Step::Scale,
        Step::SwitchTraffic,
        Step::Verify,
    ];

    /// The step after this one.
    pub fn next(self) -> Option<Step> {
        let i = Step::ALL.iter().position(|s| *s == self)?;
        Step::ALL.get(i + 1).copied()
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Fence => "fence the primary",
            Step::PromoteDatabase => "promote the standby's database",
            Step::Scale => "scale the standby up",
            Step::SwitchTraffic => "switch traffic",
            Step::Verify => "verify",
        })
    }
}

/// What a step did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StepOutcome {
    /// What was done, for humans.
    pub detail: String,
    /// For [`Step::PromoteDatabase`]: when the last transaction the standby had received
    /// committed on the primary (the RPO is measured from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_replicated_commit: Option<Timestamp>,
}

impl StepOutcome {
    /// An outcome with its detail.
    pub fn new(detail: impl Into<String>) -> Self {
        StepOutcome {
            detail: detail.into(),
            last_replicated_commit: None,
        }
    }

    /// The same outcome with the last replicated commit.
    #[must_use]
    pub fn with_last_replicated_commit(mut self, at: Option<Timestamp>) -> Self {
        self.last_replicated_commit = at;
        self
    }
}

/// The environments a failover moves between, as deploykit drives them. Every step must be
/// idempotent: a resumed failover performs again the step that was started and not recorded
/// done, and an error is retried.
#[async_trait]
pub trait FailoverSite: Send + Sync + fmt::Debug {
    /// Whether `spec.to` can take over, and how far behind it is.
    async fn readiness(&self, spec: &FailoverSpec) -> Result<StandbyReadiness>;

    /// Make sure `spec.from` takes no more writes or traffic: stopped where it can be
    /// reached, and unable to take writes if it comes back. Done also when `from` is
    /// unreachable, as far as it can be.
    async fn fence(&self, spec: &FailoverSpec) -> Result<StepOutcome>;

    /// Promote `spec.to`'s database after it has replayed everything it can get.
    async fn promote_database(&self, spec: &FailoverSpec) -> Result<StepOutcome>;

    /// Run `spec.to`'s services at full size, ready.
    async fn scale(&self, spec: &FailoverSpec) -> Result<StepOutcome>;

    /// Send the traffic to `spec.to`.
    async fn switch_traffic(&self, spec: &FailoverSpec) -> Result<StepOutcome>;

    /// Check `spec.to` serves: probes, a data check, traffic arriving. An error is retried.
    async fn verify(&self, spec: &FailoverSpec) -> Result<StepOutcome>;
}

/// How a failover ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum FailoverOutcome {
    /// The standby serves, verified.
    Succeeded,
    /// Nothing was done: see why.
    Refused {
        /// Why.
        reason: String,
    },
    /// A step failed for good (the site refused it as impossible): see why. What was done
    /// before it stays done.
    Failed {
        /// Why.
        reason: String,
    },
}

/// One fact of a failover.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailoverEvent {
    /// The failover was requested (always record 0).
    Requested {
        /// What was asked.
        spec: Arc<FailoverSpec>,
    },
    /// The standby was assessed and the failover goes ahead (refusals finish it instead).
    Assessed {
        /// What the site said.
        readiness: StandbyReadiness,
        /// The decision in words (forced past the lag, ...).
        decision: String,
    },
    /// A step is about to be done.
    StepStarted {
        /// The step.
        step: Step,
    },
    /// A step was done.
    StepDone {
        /// The step.
        step: Step,
        /// What it did.
        outcome: StepOutcome,
    },
    /// A step has taken longer than the step timeout (again); it is still retried.
    Escalated {
        /// The step.
        step: Step,
        /// How long it has taken so far.
        #[serde(with = "duration_ms", rename = "waited_ms")]
        waited: Duration,
        /// Its last error.
        error: String,
    },
    /// The failover ended.
    Finished {
        /// How.
        outcome: FailoverOutcome,
    },
}

impl FailoverEvent {
    /// The event's type name as stored.
    pub fn kind(&self) -> &'static str {
        match self {
            FailoverEvent::Requested { .. } => "requested",
            FailoverEvent::Assessed { .. } => "assessed",
            FailoverEvent::StepStarted { .. } => "step_started",
            FailoverEvent::StepDone { .. } => "step_done",
            FailoverEvent::Escalated { .. } => "escalated",
            FailoverEvent::Finished { .. } => "finished",
        }
    }
}

/// One record of a failover's journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FailoverRecord {
    /// Position, from 0.
    pub seq: u64,
    /// When it was written.
    pub at: Timestamp,
    /// Who wrote it (the process driving the failover).
    pub by: String,
    /// The fact.
    pub event: FailoverEvent,
}

impl FailoverRecord {
    /// A record.
    pub fn new(seq: u64, at: Timestamp, by: impl Into<String>, event: FailoverEvent) -> Self {
        FailoverRecord {
            seq,
            at,
            by: by.into(),
            event,
        }
    }
}

/// Where a failover stands, computed from its journal.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailoverStatus {
    /// What was asked.
    pub spec: Arc<FailoverSpec>,
    /// The assessment, once made.
    pub assessed: Option<(StandbyReadiness, String)>,
    /// The steps done, in order, with when.
    pub done: Vec<(Step, StepOutcome, Timestamp)>,
    /// The step started and not yet done, with when it started.
    pub in_progress: Option<(Step, Timestamp)>,
    /// How many escalations were raised.
    pub escalations: u32,
    /// How many of them for the step in progress.
    pub step_escalations: u32,
    /// How it ended, and when.
    pub finished: Option<(FailoverOutcome, Timestamp)>,
    /// The number of records (the next record's position).
    pub next_seq: u64,
    /// When the last record was written.
    pub last_at: Timestamp,
}

impl FailoverStatus {
    /// Fold a journal into its status, refusing a journal whose facts are out of order (a
    /// gap, a step out of turn, anything after the end).
    pub fn from_records(records: &[FailoverRecord]) -> Result<Self> {
        let Some(first) = records.first() else {
            return Err(corrupt(0, "the journal is empty".into()));
        };
        let FailoverEvent::Requested { spec } = &first.event else {
            return Err(corrupt(0, "record 0 is not `requested`".into()));
        };
        if first.seq != 0 {
            return Err(corrupt(0, format!("it says it is record {}", first.seq)));
        }
        let mut status = FailoverStatus {
            spec: spec.clone(),
            assessed: None,
            done: Vec::new(),
            in_progress: None,
            step_escalations: 0,
            escalations: 0,
            finished: None,
            next_seq: 1,
            last_at: first.at,
        };
        for record in &records[1..] {
            status = status.apply(record)?;
        }
        Ok(status)
    }

    /// The status after `record`, which must be the next one and fit (see
    /// [`from_records`](Self::from_records)).
    pub fn apply(&self, record: &FailoverRecord) -> Result<Self> {
        let seq = self.next_seq;
        if record.seq != seq {
            return Err(corrupt(seq, format!("it says it is record {}", record.seq)));
        }
        if self.finished.is_some() {
            return Err(corrupt(seq, "a record after `finished`".into()));
        }
        let mut status = self.clone();
        let next_step = status.next_step();
        match &record.event {
            FailoverEvent::Requested { .. } => {
                return Err(corrupt(seq, "`requested` again".into()));
            }
            FailoverEvent::Assessed {
                readiness,
                decision,
            } => {
                if status.assessed.is_some() {
                    return Err(corrupt(seq, "assessed twice".into()));
                }
                status.assessed = Some((readiness.clone(), decision.clone()));
            }
            FailoverEvent::StepStarted { step } => {
                if status.assessed.is_none() {
                    return Err(corrupt(seq, format!("{step} before the assessment")));
                }
                match status.in_progress {
                    Some((s, _)) => {
                        return Err(corrupt(seq, format!("{step} started while {s} runs")));
                    }
                    None if next_step == Some(*step) => {
                        status.in_progress = Some((*step, record.at));
                        status.step_escalations = 0;
                    }
                    None => return Err(corrupt(seq, format!("{step} out of turn"))),
                }
            }
            FailoverEvent::StepDone { step, outcome } => match status.in_progress {
                Some((s, _)) if s == *step => {
                    status.in_progress = None;
                    status.done.push((*step, outcome.clone(), record.at));
                }
                _ => return Err(corrupt(seq, format!("{step} done but not started"))),
            },
            FailoverEvent::Escalated { step, .. } => match status.in_progress {
                Some((s, _)) if s == *step => {
                    status.escalations += 1;
                    status.step_escalations += 1;
                }
                _ => return Err(corrupt(seq, format!("{step} escalated but not running"))),
            },
            FailoverEvent::Finished { outcome } => {
                let complete = status.done.len() == Step::ALL.len();
                let fits = match outcome {
                    FailoverOutcome::Succeeded => complete,
                    FailoverOutcome::Refused { .. } => status.assessed.is_none(),
                    FailoverOutcome::Failed { .. } => !complete && status.assessed.is_some(),
                };
                if !fits {
                    return Err(corrupt(
                        seq,
                        format!("`finished` ({outcome:?}) does not fit the steps done"),
                    ));
                }
                status.finished = Some((outcome.clone(), record.at));
            }
        }
        status.next_seq = seq + 1;
        status.last_at = record.at;
        Ok(status)
    }

    /// The step to do next (the one in progress, else the first not done), if any.
    pub fn next_step(&self) -> Option<Step> {
        if let Some((s, _)) = self.in_progress {
            return Some(s);
        }
        match self.done.last() {
            None => Some(Step::Fence),
            Some((s, _, _)) => s.next(),
        }
    }

    /// The outcome of `step`, if done.
    pub fn outcome(&self, step: Step) -> Option<&StepOutcome> {
        self.done
            .iter()
            .find(|(s, _, _)| *s == step)
            .map(|(_, o, _)| o)
    }

    /// Whether it has ended.
    pub fn is_finished(&self) -> bool {
        self.finished.is_some()
    }

    /// How long it has stood still at `now`, when that is `spec.step_timeout` or more: the
    /// step in progress since it started, else (between steps, or not yet assessed: the
    /// process driving it died) since the last record. `None` when it has ended or moves.
    pub fn stalled(&self, now: Timestamp) -> Option<Duration> {
        if self.is_finished() {
            return None;
        }
        let since = self.in_progress.map_or(self.last_at, |(_, at)| at);
        let waited = now.since(since);
        (waited >= self.spec.step_timeout).then_some(waited)
    }
}

fn corrupt(seq: u64, why: String) -> Error {
    Error::Corrupt {
        what: format!("failover journal, record {seq}"),
        source: why.into(),
    }
}

/// Decode a record log into failover records.
pub(crate) fn decode(
    id: &FailoverId,
    values: Vec<serde_json::Value>,
) -> Result<Vec<FailoverRecord>> {
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            serde_json::from_value(v).map_err(|e| Error::Corrupt {
                what: format!("failover {id}, record {i}"),
                source: Box::new(e),
            })
        })
        .collect()
}
