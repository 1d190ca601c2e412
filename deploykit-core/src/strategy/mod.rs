//! Deployment strategies: pure planners from (spec, progress, observation) to the next decision.

mod blue_green;
mod canary;
mod rollback;
mod rolling;

use std::fmt;
use std::sync::Arc;

pub use blue_green::BlueGreenStrategy;
pub use canary::CanaryStrategy;
pub use rollback::SwitchBackStrategy;
pub use rolling::RollingStrategy;
pub(crate) use rolling::not_ready;

// The specs the planners carry out are plain data of the domain model, and a rollout's
// progress is folded from its journal; both are re-exported here under their historical paths.
pub use crate::journal::Progress;
pub use crate::model::{
    BlueGreenSpec, CanaryScale, CanarySpec, CanaryStep, MAX_PAUSE, MAX_STEPS, StrategySpec,
};

use crate::environment::{DesiredState, Observed};
use crate::journal::RollbackCause;
use crate::model::{MetricCheck, Revision, RevisionId};
use crate::time::Timestamp;

/// How many failed new instances abort a blue-green or canary rollout (or every new instance,
/// if fewer).
pub(crate) const DEFAULT_FAIL_FAST_AFTER: u32 = 3;

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

// The strategy specs are plain data of the domain model; choosing the planner that carries one
// out belongs here, beside the planners.
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
}
