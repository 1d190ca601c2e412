//! Blue-green: the new revision at full size beside the stable one on a preview route, then one
//! traffic switch, with the old revision kept warm for an instant rollback.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use typed_builder::TypedBuilder;

use crate::analysis::{AnalysisSpec, RunStatus, evaluate};
use crate::environment::{DesiredState, RevisionObservation, RevisionTarget, Routes, Traffic};
use crate::error::{Error, Result};
use crate::model::Revision;
use crate::time::{Timestamp, duration_ms};

use crate::journal::RollbackCause;

use super::rolling::fail_fast;
use super::{AnalysisRequest, Decision, DeploymentStrategy, PlanContext};

/// Parameters of a blue-green rollout, with Argo Rollouts' defaults.
///
/// ```
/// use std::time::Duration;
/// use deploykit_core::strategy::BlueGreenSpec;
/// let spec = BlueGreenSpec::builder().auto_promote(false).build()?;
/// assert_eq!(spec.scale_down_delay, Duration::from_secs(30));
/// # Ok::<(), deploykit_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, TypedBuilder)]
#[builder(build_method(into = Result<BlueGreenSpec>))]
#[non_exhaustive]
pub struct BlueGreenSpec {
    /// Promote on its own once ready (and analysed); otherwise wait for an approval of gate
    /// `promotion` (default true).
    #[builder(default = true)]
    pub auto_promote: bool,
    /// With auto-promotion, wait this long after the new revision is ready (default 0).
    #[builder(default)]
    #[serde(with = "duration_ms", rename = "auto_promotion_delay_ms")]
    pub auto_promotion_delay: Duration,
    /// Keep the old revision running this long after promotion, so a rollback is an instant
    /// traffic switch (default 30 s).
    #[builder(default = Duration::from_secs(30))]
    #[serde(with = "duration_ms", rename = "scale_down_delay_ms")]
    pub scale_down_delay: Duration,
    /// Analysis of the new revision on the preview route before promotion.
    #[builder(default, setter(strip_option))]
    pub pre_promotion_analysis: Option<AnalysisSpec>,
}

impl Default for BlueGreenSpec {
    fn default() -> Self {
        BlueGreenSpec {
            auto_promote: true,
            auto_promotion_delay: Duration::ZERO,
            scale_down_delay: Duration::from_secs(30),
            pre_promotion_analysis: None,
        }
    }
}

impl From<BlueGreenSpec> for Result<BlueGreenSpec> {
    fn from(s: BlueGreenSpec) -> Self {
        s.validate("blue_green")?;
        Ok(s)
    }
}

impl BlueGreenSpec {
    pub(crate) fn validate(&self, field: &str) -> Result<()> {
        if let Some(a) = &self.pre_promotion_analysis {
            a.validate(&format!("{field}.pre_promotion_analysis"))?;
        }
        if self.scale_down_delay > Duration::from_secs(24 * 3600) {
            return Err(Error::invalid(
                format!("{field}.scale_down_delay"),
                "more than a day: the old revision would hold capacity for too long",
            ));
        }
        Ok(())
    }
}

/// The blue-green planner. Stages (`Progress::step`): 0 — bring the new revision up beside the
/// stable one, reachable only on the preview route; 1 — pre-promotion analysis; 2 — promotion
/// (automatic after the delay, or on approval of gate `promotion`). After promotion all traffic
/// goes to the new revision while the old one stays warm for `scale_down_delay`, so an abort is
/// an instant switch back; then the old one is removed.
#[derive(Clone, Debug)]
pub struct BlueGreenStrategy {
    spec: BlueGreenSpec,
}

impl BlueGreenStrategy {
    /// A planner for `spec`.
    pub fn new(spec: BlueGreenSpec) -> Self {
        BlueGreenStrategy { spec }
    }
}

impl DeploymentStrategy for BlueGreenStrategy {
    fn plan(&self, ctx: &PlanContext<'_>) -> Decision {
        let Some(stable) = ctx.stable else {
            return first_deployment(ctx);
        };
        let d = ctx.replicas;
        let new = ctx.target;
        let observed = ctx.observed;
        let new_obs = observed.revision(&new.id);
        if let Some(reason) = new_obs.and_then(|o| fail_fast(o, super::DEFAULT_FAIL_FAST_AFTER)) {
            return Decision::Abort {
                cause: RollbackCause::FailFast,
                reason,
            };
        }
        if let Some(at) = ctx.progress.promoted_at {
            return after_promotion(ctx, stable, at, self.spec.scale_down_delay);
        }
        let mut routes = Routes::all_to(&stable.id);
        routes.preview = Some(new.id.clone());
        let desired = DesiredState::new(
            vec![
                RevisionTarget::new(stable.clone(), d),
                RevisionTarget::new(new.clone(), d),
            ],
            Traffic::routed(routes),
        );
        if !observed.matches(&desired) {
            return Decision::Apply(desired);
        }
        let ready = new_obs.map_or(0, RevisionObservation::ready);
        if ready < d {
            return Decision::Wait {
                reason: format!(
                    "waiting for {} on the preview route ({ready}/{d} ready)",
                    new.label
                ),
            };
        }
        match ctx.progress.step {
            0 => Decision::Advance { step: 1 },
            1 => match &self.spec.pre_promotion_analysis {
                None => Decision::Advance { step: 2 },
                Some(spec) => analysis_step(ctx, spec, "pre-promotion", stable, 2),
            },
            _ if self.spec.auto_promote => {
                let at = ctx
                    .progress
                    .step_started_at
                    .plus(self.spec.auto_promotion_delay);
                if ctx.now >= at {
                    Decision::Promote
                } else {
                    Decision::Wait {
                        reason: format!("auto-promotion in {}s", at.since(ctx.now).as_secs()),
                    }
                }
            }
            _ if ctx.progress.approved.contains("promotion") => Decision::Promote,
            _ => Decision::AwaitApproval {
                gate: "promotion".into(),
                reason: format!(
                    "{} is ready on the preview route; approve to switch traffic from {}",
                    new.label, stable.label
                ),
            },
        }
    }
}

/// One analysis run as a step: measure what is due, move to `next` on success, abort on
/// failure, ask a human when inconclusive (gate `analysis:<run>`).
pub(super) fn analysis_step(
    ctx: &PlanContext<'_>,
    spec: &AnalysisSpec,
    run: &str,
    stable: &Revision,
    next: usize,
) -> Decision {
    match evaluate(spec, run, &ctx.progress.measurements, ctx.now) {
        RunStatus::Successful => Decision::Advance { step: next },
        RunStatus::Failed { reason } => Decision::Abort {
            cause: RollbackCause::AnalysisFailed,
            reason,
        },
        RunStatus::Inconclusive { reason } => {
            let gate = format!("analysis:{run}");
            if ctx.progress.approved.contains(&gate) {
                Decision::Advance { step: next }
            } else {
                Decision::AwaitApproval { gate, reason }
            }
        }
        RunStatus::Running { due } if due.is_empty() => Decision::Wait {
            reason: format!("analysis {run} running"),
        },
        RunStatus::Running { due } => Decision::Analyze(AnalysisRequest {
            run: run.to_string(),
            metrics: due.into_iter().map(|i| spec.metrics[i].clone()).collect(),
            revision: ctx.target.id.clone(),
            baseline: Some(stable.id.clone()),
        }),
    }
}

/// After the traffic switch: keep the old revision warm for `delay` (so an abort is an instant
/// switch back with no new instances), then remove it and complete.
pub(super) fn after_promotion(
    ctx: &PlanContext<'_>,
    stable: &Revision,
    promoted_at: Timestamp,
    delay: Duration,
) -> Decision {
    let d = ctx.replicas;
    let new = ctx.target;
    let observed = ctx.observed;
    let all_new = Traffic::routed(Routes::all_to(&new.id));
    let warm_until = promoted_at.plus(delay);
    let mut revisions = vec![RevisionTarget::new(new.clone(), d)];
    let old = observed.revision(&stable.id).map_or(0, |o| o.desired);
    if ctx.now < warm_until && old > 0 {
        revisions.push(RevisionTarget::new(stable.clone(), old));
    }
    let desired = DesiredState::new(revisions, all_new);
    if !observed.matches(&desired) {
        return Decision::Apply(desired);
    }
    if ctx.now < warm_until && old > 0 {
        return Decision::Wait {
            reason: format!(
                "keeping {} warm for a rollback until {warm_until}",
                stable.label
            ),
        };
    }
    let own = observed.revision(&new.id);
    let (ready, instances) = own.map_or((0, 0), |o| (o.ready(), o.instances.len() as u32));
    if ready == d && instances == d && observed.revisions.len() == 1 {
        Decision::Complete
    } else {
        Decision::Wait {
            reason: format!(
                "waiting for {} to serve alone ({})",
                new.label,
                observed.summary()
            ),
        }
    }
}

/// With nothing running before, a blue-green or canary rollout just starts the revision at full
/// size with all traffic.
pub(super) fn first_deployment(ctx: &PlanContext<'_>) -> Decision {
    let d = ctx.replicas;
    let target = ctx.target;
    let observed = ctx.observed;
    if let Some(reason) = observed
        .revision(&target.id)
        .and_then(|o| fail_fast(o, super::DEFAULT_FAIL_FAST_AFTER))
    {
        return Decision::Abort {
            cause: RollbackCause::FailFast,
            reason,
        };
    }
    let desired = DesiredState::new(
        vec![RevisionTarget::new(target.clone(), d)],
        Traffic::routed(Routes::all_to(&target.id)),
    );
    if !observed.matches(&desired) {
        return Decision::Apply(desired);
    }
    let ready = observed
        .revision(&target.id)
        .map_or(0, RevisionObservation::ready);
    if ready == d {
        Decision::Complete
    } else {
        Decision::Wait {
            reason: format!("waiting for {} ({ready}/{d} ready)", target.label),
        }
    }
}
