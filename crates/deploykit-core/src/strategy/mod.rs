//! Deployment strategies: pure planners from (spec, observation) to the next decision.

mod rolling;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use rolling::RollingStrategy;

use crate::environment::{DesiredState, Observed};
use crate::model::{Revision, RollingSpec};
use crate::time::Timestamp;

/// Everything a planner may look at. Planners read no clock and do no I/O: time comes in `now`.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct PlanContext<'a> {
    /// The revision being rolled out (during a rollback: the revision being returned to).
    pub target: &'a Revision,
    /// How many instances of it should serve when done.
    pub replicas: u32,
    /// What the environment reports now.
    pub observed: &'a Observed,
    /// The current time.
    pub now: Timestamp,
}

impl<'a> PlanContext<'a> {
    /// A planning context.
    pub fn new(
        target: &'a Revision,
        replicas: u32,
        observed: &'a Observed,
        now: Timestamp,
    ) -> Self {
        PlanContext {
            target,
            replicas,
            observed,
            now,
        }
    }
}

/// What a planner wants done next.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Move the environment to this state (journaled before it is applied).
    Apply(DesiredState),
    /// Nothing to do until the environment changes (instances becoming ready).
    Wait {
        /// What is being waited for, for humans.
        reason: String,
    },
    /// The target serves at full size and nothing else runs.
    Complete,
    /// The rollout cannot succeed: roll back (or, during a rollback, fail).
    Abort {
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum StrategySpec {
    /// A rolling update.
    Rolling(RollingSpec),
}

impl StrategySpec {
    /// The planner for this spec.
    pub fn planner(&self) -> Box<dyn DeploymentStrategy> {
        match self {
            StrategySpec::Rolling(spec) => Box::new(RollingStrategy::new(spec.clone())),
        }
    }

    /// A short name (`rolling`) for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            StrategySpec::Rolling(_) => "rolling",
        }
    }
}
