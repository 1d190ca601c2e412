//! Canary: traffic moved to the new revision in steps, with pauses, analysis and approvals, as
//! in Argo Rollouts. The stable revision keeps its full capacity until promotion.

use crate::analysis::{RunStatus, evaluate};
use crate::environment::{
    DesiredState, HeaderRoute, Mirror, RevisionObservation, RevisionTarget, Routes, Traffic,
};
use crate::journal::RollbackCause;
use crate::model::{CanaryScale, CanarySpec, CanaryStep, MeasurementOutcome, Revision, Weight};

use super::blue_green::{after_promotion, analysis_step, first_deployment, traffic_at};
use super::rolling::fail_fast;
use super::{AnalysisRequest, Decision, DeploymentStrategy, PlanContext};

/// What the canary looks like at one step: the effect of every set-step up to it.
struct Shape {
    weight: Weight,
    scale: CanaryScale,
    header: Option<(String, String)>,
    mirror: Option<Weight>,
}

/// The canary planner. `Progress::step` indexes `steps`; each set-step takes effect when it is
/// reached (instances first, then traffic once they are ready).
#[derive(Clone, Debug)]
pub struct CanaryStrategy {
    spec: CanarySpec,
}

impl CanaryStrategy {
    /// A planner for `spec`.
    pub fn new(spec: CanarySpec) -> Self {
        CanaryStrategy { spec }
    }

    fn shape(&self, step: usize) -> Shape {
        let mut shape = Shape {
            weight: Weight::clamped(0),
            scale: CanaryScale::MatchWeight,
            header: None,
            mirror: None,
        };
        for s in self.spec.steps.iter().take(step + 1) {
            match s {
                CanaryStep::SetWeight { weight } => shape.weight = *weight,
                CanaryStep::SetCanaryScale { scale } => shape.scale = *scale,
                CanaryStep::SetHeaderRoute { name, value } => {
                    shape.header = Some((name.clone(), value.clone()));
                }
                CanaryStep::SetMirror { percent } => shape.mirror = Some(*percent),
                CanaryStep::Pause { .. } | CanaryStep::Analysis { .. } => {}
            }
        }
        shape
    }

    /// The background analysis: abort when it fails; ask a human (gate
    /// `analysis:background`) when it is inconclusive — as no data from a canary that receives
    /// no traffic is — and, once approved, go on measuring. It measures what is due only while
    /// every canary instance is ready and the canary is served traffic (or is about to be
    /// promoted): never while it has none, and never while the rollout waits for instances, so
    /// measurements (which are progress) cannot keep a canary that never gets ready from
    /// meeting its progress deadline.
    fn background(&self, ctx: &PlanContext<'_>, stable: &Revision) -> Option<Decision> {
        let spec = self.spec.background_analysis.as_ref()?;
        let measurements = &ctx.progress.measurements;
        let due = match evaluate(spec, "background", measurements, traffic_at(ctx), ctx.now) {
            RunStatus::Failed { reason } => {
                return Some(Decision::Abort {
                    cause: RollbackCause::AnalysisFailed,
                    reason,
                });
            }
            RunStatus::Inconclusive { reason, due } => {
                if !ctx.progress.approved.contains(BACKGROUND_GATE) {
                    return Some(Decision::AwaitApproval {
                        gate: BACKGROUND_GATE.into(),
                        reason,
                    });
                }
                due
            }
            RunStatus::Running { due } => due,
            RunStatus::Successful => return None,
        };
        let promoting = ctx.progress.step >= self.spec.steps.len();
        let ready = ctx
            .observed
            .revision(&ctx.target.id)
            .is_some_and(|o| o.desired > 0 && o.ready() >= o.desired);
        if due.is_empty() || !ready || !(promoting || serves_canary(ctx)) {
            return None;
        }
        Some(Decision::Analyze(AnalysisRequest {
            run: "background".into(),
            metrics: due.into_iter().map(|i| spec.metrics[i].clone()).collect(),
            revision: ctx.target.id.clone(),
            baseline: Some(stable.id.clone()),
        }))
    }
}

/// The gate an inconclusive background analysis waits at.
const BACKGROUND_GATE: &str = "analysis:background";

/// Whether the environment routes any traffic to the canary: a weight, a header route or a
/// mirror.
fn serves_canary(ctx: &PlanContext<'_>) -> bool {
    let canary = &ctx.target.id;
    ctx.observed.weight_of(canary) > 0
        || ctx.observed.routing.routes().is_some_and(|r| {
            r.header.as_ref().is_some_and(|h| &h.revision == canary)
                || r.mirror
                    .as_ref()
                    .is_some_and(|m| &m.revision == canary && m.percent.percent() > 0)
        })
}

impl CanaryStrategy {
    /// No data never passes: before promotion, the latest background measurement of every
    /// metric must be a success — or, once a human accepted an inconclusive background
    /// analysis (gate `analysis:background`), at least not a failed query. `Some(reason)` while
    /// that is not so.
    fn background_unproven(&self, ctx: &PlanContext<'_>) -> Option<String> {
        let spec = self.spec.background_analysis.as_ref()?;
        let accepted = ctx.progress.approved.contains(BACKGROUND_GATE);
        for metric in &spec.metrics {
            let latest = ctx
                .progress
                .measurements
                .iter()
                .rev()
                .find(|m| m.run == "background" && m.metric == metric.name);
            let proven = latest.is_some_and(|m| match m.outcome {
                MeasurementOutcome::Successful => true,
                MeasurementOutcome::Inconclusive | MeasurementOutcome::NoData => accepted,
                MeasurementOutcome::Failed | MeasurementOutcome::Error => false,
            });
            if !proven {
                return Some(format!(
                    "promotion waits for a successful background measurement of {}",
                    metric.name
                ));
            }
        }
        None
    }
}

fn canary_instances(scale: CanaryScale, weight: Weight, replicas: u32) -> u32 {
    let pct = |p: u32| (u64::from(replicas) * u64::from(p)).div_ceil(100) as u32;
    let n = match scale {
        CanaryScale::MatchWeight => pct(weight.percent()),
        CanaryScale::Percent(p) => pct(p),
        CanaryScale::Replicas(n) => n,
    };
    n.max(1)
}

impl DeploymentStrategy for CanaryStrategy {
    fn plan(&self, ctx: &PlanContext<'_>) -> Decision {
        let Some(stable) = ctx.stable else {
            return first_deployment(ctx);
        };
        let d = ctx.replicas;
        let canary = ctx.target;
        let observed = ctx.observed;
        let canary_obs = observed.revision(&canary.id);
        if let Some(reason) = canary_obs.and_then(|o| fail_fast(o, super::DEFAULT_FAIL_FAST_AFTER))
        {
            return Decision::Abort {
                cause: RollbackCause::FailFast,
                reason,
            };
        }
        if let Some(at) = ctx.progress.promoted_at {
            return after_promotion(ctx, stable, at, self.spec.scale_down_delay);
        }
        if let Some(decision) = self.background(ctx, stable) {
            return decision;
        }
        let ready = canary_obs.map_or(0, RevisionObservation::ready);
        let step = ctx.progress.step;
        let routing_now = match &observed.routing {
            Traffic::Routed(_) => observed.routing.clone(),
            _ => Traffic::routed(Routes::all_to(&stable.id)),
        };
        let with = |n: u32, traffic: Traffic| {
            DesiredState::new(
                vec![
                    RevisionTarget::new(stable.clone(), d),
                    RevisionTarget::new(canary.clone(), n),
                ],
                traffic,
            )
        };

        if step >= self.spec.steps.len() {
            // Promotion: full size under the current routes, then the switch.
            let desired = with(d, routing_now);
            if !observed.matches(&desired) {
                return Decision::Apply(desired);
            }
            if ready < d {
                return Decision::Wait {
                    reason: format!("scaling {} to full size ({ready}/{d} ready)", canary.label),
                };
            }
            if let Some(waiting) = self.background_unproven(ctx) {
                return Decision::Wait { reason: waiting };
            }
            return Decision::Promote;
        }

        let shape = self.shape(step);
        let n = canary_instances(shape.scale, shape.weight, d);
        if ready < n {
            let desired = with(n, routing_now);
            if !observed.matches(&desired) {
                return Decision::Apply(desired);
            }
            return Decision::Wait {
                reason: format!(
                    "waiting for {} canary instances ({ready}/{n} ready)",
                    canary.label
                ),
            };
        }
        let mut routes = Routes::split(&stable.id, &canary.id, shape.weight);
        routes.header = shape
            .header
            .map(|(name, value)| HeaderRoute::new(name, value, canary.id.clone()));
        routes.mirror = shape.mirror.map(|p| Mirror::new(canary.id.clone(), p));
        let desired = with(n, Traffic::routed(routes));
        if !observed.matches(&desired) {
            return Decision::Apply(desired);
        }
        match &self.spec.steps[step] {
            CanaryStep::Pause {
                duration: Some(duration),
            } => {
                let until = ctx.progress.step_started_at.plus(*duration);
                if ctx.now >= until {
                    Decision::Advance { step: step + 1 }
                } else {
                    Decision::Wait {
                        reason: format!("paused, {}s to go", until.since(ctx.now).as_secs()),
                    }
                }
            }
            CanaryStep::Pause { duration: None } => {
                let gate = format!("step-{step}");
                if ctx.progress.approved.contains(&gate) {
                    Decision::Advance { step: step + 1 }
                } else {
                    Decision::AwaitApproval {
                        gate,
                        reason: format!(
                            "{} takes {}% of traffic; approve to continue",
                            canary.label,
                            shape.weight.percent()
                        ),
                    }
                }
            }
            CanaryStep::Analysis { analysis } => {
                analysis_step(ctx, analysis, &format!("step-{step}"), stable, step + 1)
            }
            _ => Decision::Advance { step: step + 1 },
        }
    }
}
