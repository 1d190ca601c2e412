//! Deployment strategies: pure planners from (spec, progress, observation) to the next decision.

mod blue_green;
mod canary;
mod rollback;
mod rolling;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use blue_green::{BlueGreenSpec, BlueGreenStrategy};
pub use canary::{CanaryScale, CanarySpec, CanaryStep, CanaryStrategy, MAX_PAUSE, MAX_STEPS};
pub use rollback::SwitchBackStrategy;
pub use rolling::RollingStrategy;
pub(crate) use rolling::not_ready;

use crate::analysis::{Measurement, MetricCheck};
use crate::environment::{DesiredState, Observed};
use crate::error::Result;
use crate::journal::RollbackCause;
use crate::model::{Revision, RevisionId, RollingSpec};
use crate::time::Timestamp;

/// How many failed new instances abort a blue-green or canary rollout (or every new instance,
/// if fewer).
pub(crate) const DEFAULT_FAIL_FAST_AFTER: u32 = 3;

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

/// Everything a planner may look at. Planners read no clock and do no I/O: time comes in `now`.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct PlanContext<'a> {
    /// The revision being rolled out (during a rollback: the revision being returned to).
    pub target: &'a Arc<Revision>,
    /// The revision serving before this deployment (during a rollback: none).
    pub stable: Option<&'a Arc<Revision>>,
    /// How many instances should serve when done.
    pub replicas: u32,
    /// What the environment reports now.
    pub observed: &'a Observed,
    /// What the rollout has done so far.
    pub progress: &'a Progress,
    /// The current time.
    pub now: Timestamp,
}

impl<'a> PlanContext<'a> {
    /// A planning context.
    pub fn new(
        target: &'a Arc<Revision>,
        stable: Option<&'a Arc<Revision>>,
        replicas: u32,
        observed: &'a Observed,
        progress: &'a Progress,
        now: Timestamp,
    ) -> Self {
        PlanContext {
            target,
            stable,
            replicas,
            observed,
            progress,
            now,
        }
    }
}

/// Metrics to measure now for one analysis run.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct AnalysisRequest {
    /// The run (`step-2`, `background`, `pre-promotion`).
    pub run: String,
    /// The metrics due now.
    pub metrics: Vec<MetricCheck>,
    /// The revision under test.
    pub revision: RevisionId,
    /// The revision to compare with, for judgements.
    pub baseline: Option<RevisionId>,
}

/// What a planner wants done next.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Decision {
    /// Move the environment to this state (journaled before it is applied).
    Apply(DesiredState),
    /// Nothing to do until the environment changes or time passes.
    Wait {
        /// What is being waited for, for humans.
        reason: String,
    },
    /// Move on to step `step` (journaled).
    Advance {
        /// The step reached.
        step: usize,
    },
    /// Take measurements (each journaled).
    Analyze(AnalysisRequest),
    /// Hold until a human approves gate `gate` (or rejects it, which aborts).
    AwaitApproval {
        /// The gate's name (`step-3`, `promotion`, `analysis:background`).
        gate: String,
        /// What the human is asked, for humans.
        reason: String,
    },
    /// Switch all traffic to the new revision (journaled).
    Promote,
    /// The target serves at full size and nothing else runs.
    Complete,
    /// The rollout cannot succeed: roll back (or, during a rollback, fail).
    Abort {
        /// What triggered it.
        cause: RollbackCause,
        /// Why, with the backend's own reason (e.g. `3 of 3 new instances failed readiness:
        /// GET /health returned 503`).
        reason: String,
    },
}

/// A pure planner: same inputs, same decision.
///
/// The orchestrator calls `plan` in a loop: observe, plan, journal, act. Planners must be
/// deterministic and must never return [`Decision::Apply`] with a state equal to the one already
/// applied (return [`Decision::Wait`] instead), so that a loop with no change writes nothing.
pub trait DeploymentStrategy: Send + Sync + fmt::Debug {
    /// The next decision for this context.
    fn plan(&self, ctx: &PlanContext<'_>) -> Decision;
}

/// How a deployment rolls out, as recorded in its journal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum StrategySpec {
    /// A rolling update.
    Rolling(RollingSpec),
    /// Blue-green: the new revision at full size beside the old, then a traffic switch.
    BlueGreen(BlueGreenSpec),
    /// Canary: traffic moved to the new revision in steps, with analysis.
    Canary(CanarySpec),
}

impl Default for StrategySpec {
    fn default() -> Self {
        StrategySpec::Rolling(RollingSpec::default())
    }
}

impl StrategySpec {
    /// The planner for the forward rollout.
    pub fn planner(&self) -> Box<dyn DeploymentStrategy> {
        match self {
            StrategySpec::Rolling(spec) => Box::new(RollingStrategy::new(spec.clone())),
            StrategySpec::BlueGreen(spec) => Box::new(BlueGreenStrategy::new(spec.clone())),
            StrategySpec::Canary(spec) => Box::new(CanaryStrategy::new(spec.clone())),
        }
    }

    /// The planner that returns to the previous revision: a rolling update back for rolling
    /// deployments; for blue-green and canary, whose stable revision kept its capacity, one
    /// action that sends all traffic back, then the new revision's removal.
    pub fn rollback_planner(&self) -> Box<dyn DeploymentStrategy> {
        match self {
            StrategySpec::Rolling(spec) => Box::new(RollingStrategy::converging(spec.clone())),
            StrategySpec::BlueGreen(_) | StrategySpec::Canary(_) => Box::new(SwitchBackStrategy),
        }
    }

    /// A short name (`rolling`, `blue-green`, `canary`) for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            StrategySpec::Rolling(_) => "rolling",
            StrategySpec::BlueGreen(_) => "blue-green",
            StrategySpec::Canary(_) => "canary",
        }
    }

    /// The rolling parameters, for a rolling strategy.
    pub fn rolling(&self) -> Option<&RollingSpec> {
        match self {
            StrategySpec::Rolling(spec) => Some(spec),
            _ => None,
        }
    }

    /// Whether the strategy has a promotion (blue-green, canary): only those can join a
    /// multi-service release, which promotes all its members together.
    pub fn promotes(&self) -> bool {
        !matches!(self, StrategySpec::Rolling(_))
    }

    /// Until when the rollout deliberately waits at its current point, if it does: a timed
    /// canary pause, a delayed blue-green auto-promotion, or the window after promotion in
    /// which the old revision stays warm. The progress deadline does not run before then (as
    /// Argo Rollouts does not apply `progressDeadlineSeconds` while a step pauses), so a pause
    /// of hours or days is not taken for a stuck rollout.
    pub fn waits_until(&self, progress: &Progress) -> Option<Timestamp> {
        let (promoted_delay, step_wait) = match self {
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

    /// Whether any step or background check needs a [`crate::Monitor`].
    pub fn needs_monitor(&self) -> bool {
        match self {
            StrategySpec::Rolling(_) => false,
            StrategySpec::BlueGreen(spec) => spec.pre_promotion_analysis.is_some(),
            StrategySpec::Canary(spec) => {
                spec.background_analysis.is_some()
                    || spec
                        .steps
                        .iter()
                        .any(|s| matches!(s, CanaryStep::Analysis { .. }))
            }
        }
    }

    /// The first step that needs traffic split by weight (a weight strictly between 0 and
    /// 100, a header route or a mirror), as `steps[i]: …` for messages; `None` if the strategy
    /// only ever sends all traffic to one revision (rolling, blue-green).
    pub fn weighted_step(&self) -> Option<String> {
        let StrategySpec::Canary(spec) = self else {
            return None;
        };
        spec.steps.iter().enumerate().find_map(|(i, step)| {
            let what = match step {
                CanaryStep::SetWeight { weight } if (1..100).contains(&weight.percent()) => {
                    format!("set_weight {}", weight.percent())
                }
                CanaryStep::SetHeaderRoute { name, .. } => format!("set_header_route {name}"),
                CanaryStep::SetMirror { percent } => format!("set_mirror {}%", percent.percent()),
                _ => return None,
            };
            Some(format!("steps[{i}]: {what}"))
        })
    }

    pub(crate) fn validate(&self, field: &str) -> Result<()> {
        match self {
            StrategySpec::Rolling(spec) => spec.validate(&format!("{field}.rolling")),
            StrategySpec::BlueGreen(spec) => spec.validate(&format!("{field}.blue_green")),
            StrategySpec::Canary(spec) => spec.validate(&format!("{field}.canary")),
        }
    }
}
