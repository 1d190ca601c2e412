//! Returning to the stable revision after a blue-green or canary rollout failed.

use crate::environment::{DesiredState, RevisionObservation, RevisionTarget, Routes, Traffic};

use crate::journal::RollbackCause;

use super::rolling::fail_fast;
use super::{Decision, DeploymentStrategy, PlanContext};

/// The rollback planner of blue-green and canary deployments. `ctx.target` is the revision to
/// return to.
///
/// If it still has its full capacity (as blue-green and canary keep it until promotion and
/// through the scale-down delay), the first action sends **all** traffic back to it, leaving
/// everything else in place; the second removes the other revisions. Otherwise it first brings
/// the stable revision back to full size (traffic to it as soon as any instance is ready), then
/// does the same. It completes only when the stable revision runs alone, fully ready, with all
/// traffic.
#[derive(Clone, Copy, Debug, Default)]
pub struct SwitchBackStrategy;

impl DeploymentStrategy for SwitchBackStrategy {
    fn plan(&self, ctx: &PlanContext<'_>) -> Decision {
        let d = ctx.replicas;
        let stable = ctx.target;
        let observed = ctx.observed;
        let own = observed.revision(&stable.id);
        if let Some(reason) = own.and_then(|o| fail_fast(o, super::DEFAULT_FAIL_FAST_AFTER)) {
            return Decision::Abort {
                cause: RollbackCause::FailFast,
                reason,
            };
        }
        let ready = own.map_or(0, RevisionObservation::ready);
        let all_back = Traffic::routed(Routes::all_to(&stable.id));
        let others: Vec<RevisionTarget> = observed
            .revisions
            .iter()
            .filter(|r| r.revision.id != stable.id)
            .map(|r| RevisionTarget::new(r.revision.clone(), r.desired))
            .collect();
        let with_others = |traffic: Traffic| {
            let mut revisions = vec![RevisionTarget::new(stable.clone(), d)];
            revisions.extend(others.iter().cloned());
            DesiredState::new(revisions, traffic)
        };

        let desired = if ready < d {
            // Capacity first; traffic to the stable revision as soon as it can take any.
            let traffic = if ready > 0 {
                all_back
            } else {
                observed.routing.clone()
            };
            with_others(traffic)
        } else if observed.routing != all_back {
            // The one action that restores all traffic to stable.
            with_others(all_back)
        } else {
            DesiredState::new(vec![RevisionTarget::new(stable.clone(), d)], all_back)
        };
        if !observed.matches(&desired) {
            return Decision::Apply(desired);
        }
        let alone = others.is_empty();
        let instances = own.map_or(0, |o| o.instances.len() as u32);
        if alone && ready == d && instances == d && observed.weight_of(&stable.id) == 100 {
            return Decision::Complete;
        }
        Decision::Wait {
            reason: format!(
                "waiting for {} to serve alone ({})",
                stable.label,
                observed.summary()
            ),
        }
    }
}
