//! Blue-green: the new revision at full size beside the stable one on a preview route, then one
//! traffic switch, with the old revision kept warm for an instant rollback.

use std::time::Duration;

use crate::analysis::{RunStatus, evaluate};
use crate::environment::{
    DesiredState, Observed, RevisionObservation, RevisionTarget, Routes, Traffic,
};
use crate::journal::RollbackCause;
use crate::model::{AnalysisSpec, BlueGreenSpec, Revision};
use crate::time::Timestamp;

use super::rolling::{fail_fast, healthy, not_ready};
use super::{AnalysisRequest, Decision, DeploymentStrategy, PlanContext};

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

/// When the traffic an analysis judges was applied: the last change of the traffic split (the
/// step's start, for a journal without one).
pub(super) fn traffic_at(ctx: &PlanContext<'_>) -> Timestamp {
    ctx.progress
        .traffic_changed_at
        .unwrap_or(ctx.progress.step_started_at)
}

/// One analysis run as a step: measure what is due, move to `next` on success, abort on
/// failure, ask a human when inconclusive (gate `analysis:<run>`) — which is what no data
/// (a revision that has received no traffic) comes to: never a pass, never a failure.
pub(super) fn analysis_step(
    ctx: &PlanContext<'_>,
    spec: &AnalysisSpec,
    run: &str,
    stable: &Revision,
    next: usize,
) -> Decision {
    let measurements = &ctx.progress.measurements;
    match evaluate(spec, run, measurements, traffic_at(ctx), ctx.now) {
        RunStatus::Successful => Decision::Advance { step: next },
        RunStatus::Failed { reason } => Decision::Abort {
            cause: RollbackCause::AnalysisFailed,
            reason,
        },
        RunStatus::Inconclusive { reason, .. } => {
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

/// After the traffic switch: keep the old revision warm for `delay`, so an abort is an instant
/// switch back with no new instances, and remove it only once the delay has passed **and** the
/// new revision is healthy (every instance ready, none reporting an exit, restart or failing
/// check). Until the old revision is gone, every round is a post-promotion health check: the
/// callers run [`fail_fast`] on the new revision first, so a crash loop (or exits and restarts
/// of enough instances) rolls back while the old revision can still take all traffic at once.
/// `Complete` therefore means the new revision was healthy when the old one was removed, and
/// still is.
pub(super) fn after_promotion(
    ctx: &PlanContext<'_>,
    stable: &Revision,
    promoted_at: Timestamp,
    delay: Duration,
) -> Decision {
    let d = ctx.replicas;
    let new = ctx.target;
    let observed = ctx.observed;
    let own = observed.revision(&new.id);
    let all_new = Traffic::routed(Routes::all_to(&new.id));
    let warm_until = promoted_at.plus(delay);
    let old = observed.revision(&stable.id).map_or(0, |o| o.desired);
    let warming = ctx.now < warm_until;
    let keep_old = old > 0 && (warming || !healthy(own, d));
    let mut revisions = vec![RevisionTarget::new(new.clone(), d)];
    if keep_old {
        revisions.push(RevisionTarget::new(stable.clone(), old));
    }
    let desired = DesiredState::new(revisions, all_new);
    if !observed.matches(&desired) {
        return Decision::Apply(desired);
    }
    if keep_old {
        let reason = if warming {
            format!(
                "keeping {} warm for a rollback until {warm_until} while {} is watched",
                stable.label, new.label
            )
        } else {
            format!(
                "keeping {} until {} is healthy ({})",
                stable.label,
                new.label,
                unhealthy_summary(own, observed)
            )
        };
        return Decision::Wait { reason };
    }
    if observed.revisions.len() == 1 && healthy(own, d) {
        Decision::Complete
    } else {
        Decision::Wait {
            reason: format!(
                "waiting for {} to serve alone ({})",
                new.label,
                unhealthy_summary(own, observed)
            ),
        }
    }
}

/// What keeps `own` from being healthy, for wait reasons: its first failure, or the counts.
fn unhealthy_summary(own: Option<&RevisionObservation>, observed: &Observed) -> String {
    own.and_then(|o| {
        o.failed()
            .find_map(|i| i.failure.as_ref())
            .map(|f| format!("{} {}: {}", o.revision.label, f.kind, f.reason))
            .or_else(|| not_ready(o))
    })
    .unwrap_or_else(|| observed.summary())
}

/// With nothing running before, a blue-green or canary rollout just starts the revision at full
/// size with all traffic, and completes once it is healthy (every instance ready, none
/// reporting a failure).
pub(super) fn first_deployment(ctx: &PlanContext<'_>) -> Decision {
    let d = ctx.replicas;
    let target = ctx.target;
    let observed = ctx.observed;
    let own = observed.revision(&target.id);
    if let Some(reason) = own.and_then(|o| fail_fast(o, super::DEFAULT_FAIL_FAST_AFTER)) {
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
    if healthy(own, d) {
        Decision::Complete
    } else {
        Decision::Wait {
            reason: format!(
                "waiting for {} ({})",
                target.label,
                unhealthy_summary(own, observed)
            ),
        }
    }
}

#[cfg(test)]
mod after_promotion_tests {
    use std::sync::Arc;

    use super::*;
    use crate::environment::{FailureKind, InstanceFailure, InstanceObservation};
    use crate::model::{Digest, EnvironmentKind, EnvironmentSpec, ServiceSpec};
    use crate::strategy::Progress;

    fn rev(label: &str) -> Arc<Revision> {
        let svc = ServiceSpec::builder().name("web").build().unwrap();
        let env = EnvironmentSpec::builder()
            .name("prod")
            .kind(EnvironmentKind::Production)
            .build()
            .unwrap();
        Arc::new(Revision::new(&svc, &env, Digest::of_bytes(label.as_bytes()), label).unwrap())
    }

    /// `desired` instances of `r`, all ready; the first `crashed` report a recent exit.
    fn obs(r: &Arc<Revision>, desired: u32, crashed: usize) -> RevisionObservation {
        let instances = (0..desired)
            .map(|i| {
                let failure = ((i as usize) < crashed).then(|| {
                    InstanceFailure::new(
                        FailureKind::CrashLoop,
                        "exited with code 1 after running 2s (1 time in the last 60s)",
                    )
                });
                InstanceObservation::new(format!("{}-{i}", r.label), true, 0, failure)
            })
            .collect();
        RevisionObservation::new(r.clone(), desired, instances)
    }

    const PROMOTED: u64 = 10_000;
    const DELAY: Duration = Duration::from_secs(30);

    /// Plan the blue-green rollout of v2 over v1, promoted at 10 s, at `now_ms`.
    fn plan(now_ms: u64, revisions: Vec<RevisionObservation>) -> Decision {
        let (v1, v2) = (rev("v1"), rev("v2"));
        let observed = Observed::new(
            revisions,
            Default::default(),
            Traffic::routed(Routes::all_to(&v2.id)),
        );
        let progress = Progress {
            step: 2,
            promoted_at: Some(Timestamp::from_millis(PROMOTED)),
            ..Progress::default()
        };
        let spec = BlueGreenSpec::builder()
            .scale_down_delay(DELAY)
            .build()
            .unwrap();
        BlueGreenStrategy::new(spec).plan(&PlanContext::new(
            &v2,
            Some(&v1),
            2,
            &observed,
            &progress,
            Timestamp::from_millis(now_ms),
        ))
    }

    fn revisions_of(d: &Decision) -> Vec<(String, u32)> {
        match d {
            Decision::Apply(s) => s
                .revisions
                .iter()
                .map(|t| (t.revision.label.clone(), t.replicas))
                .collect(),
            other => panic!("expected Apply, got {other:?}"),
        }
    }

    #[test]
    fn a_crash_inside_the_warm_window_rolls_back() {
        let (v1, v2) = (rev("v1"), rev("v2"));
        // One exit of two: not yet a verdict, but the old revision stays.
        let d = plan(PROMOTED + 2_000, vec![obs(&v1, 2, 0), obs(&v2, 2, 1)]);
        assert!(matches!(d, Decision::Wait { .. }), "{d:?}");
        let d = plan(PROMOTED + 2_300, vec![obs(&v1, 2, 0), obs(&v2, 2, 2)]);
        assert!(
            matches!(&d, Decision::Abort { cause: RollbackCause::FailFast, reason }
                if reason.starts_with("2 of 2 new instances are crash-looping: exited with code 1")),
            "{d:?}"
        );
    }

    #[test]
    fn the_old_revision_goes_only_once_the_new_one_is_healthy() {
        let (v1, v2) = (rev("v1"), rev("v2"));
        let after = PROMOTED + DELAY.as_millis() as u64 + 1;
        // The delay has passed, but an instance exited lately: keep the old revision.
        let d = plan(after, vec![obs(&v1, 2, 0), obs(&v2, 2, 1)]);
        assert!(
            matches!(&d, Decision::Wait { reason } if reason.starts_with("keeping v1 until v2 is healthy")),
            "{d:?}"
        );
        // Healthy: now the old revision goes, and the rollout completes once v2 serves alone.
        let d = plan(after, vec![obs(&v1, 2, 0), obs(&v2, 2, 0)]);
        assert_eq!(revisions_of(&d), vec![("v2".into(), 2)]);
        assert_eq!(plan(after, vec![obs(&v2, 2, 0)]), Decision::Complete);
        // A recent exit after the old revision went: no success yet.
        let d = plan(after, vec![obs(&v2, 2, 1)]);
        assert!(matches!(d, Decision::Wait { .. }), "{d:?}");
    }

    #[test]
    fn a_first_deployment_completes_only_when_healthy() {
        let v1 = rev("v1");
        let observed = |crashed| {
            Observed::new(
                vec![obs(&v1, 2, crashed)],
                Default::default(),
                Traffic::routed(Routes::all_to(&v1.id)),
            )
        };
        let progress = Progress::default();
        let now = Timestamp::from_millis(0);
        let plan =
            |o: &Observed| first_deployment(&PlanContext::new(&v1, None, 2, o, &progress, now));
        assert!(matches!(plan(&observed(1)), Decision::Wait { .. }));
        assert_eq!(plan(&observed(0)), Decision::Complete);
    }
}
