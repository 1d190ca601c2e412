//! Returning to the stable revision after a blue-green or canary rollout failed.

use crate::environment::{DesiredState, RevisionObservation, RevisionTarget, Routes, Traffic};

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
///
/// It never aborts: there is nothing further to fall back to, and the switch back must not be
/// held up by the stable revision's health (an instance of it that exited lately still makes
/// it the best place for the traffic). A rollback that cannot finish is the driver's to handle.
#[derive(Clone, Copy, Debug, Default)]
pub struct SwitchBackStrategy;

impl DeploymentStrategy for SwitchBackStrategy {
    fn plan(&self, ctx: &PlanContext<'_>) -> Decision {
        let d = ctx.replicas;
        let stable = ctx.target;
        let observed = ctx.observed;
        let own = observed.revision(&stable.id);
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::environment::{FailureKind, InstanceFailure, InstanceObservation, Observed};
    use crate::model::{Digest, EnvironmentKind, EnvironmentSpec, Revision, ServiceSpec, Weight};
    use crate::strategy::Progress;
    use crate::time::Timestamp;

    fn rev(label: &str) -> Arc<Revision> {
        let svc = ServiceSpec::builder().name("web").build().unwrap();
        let env = EnvironmentSpec::builder()
            .name("prod")
            .kind(EnvironmentKind::Production)
            .build()
            .unwrap();
        Arc::new(Revision::new(&svc, &env, Digest::of_bytes(label.as_bytes()), label).unwrap())
    }

    fn obs(r: &Arc<Revision>, n: u32, failure: Option<&str>) -> RevisionObservation {
        let instances = (0..n)
            .map(|i| {
                let failure = failure.map(|f| InstanceFailure::new(FailureKind::CrashLoop, f));
                InstanceObservation::new(format!("{}-{i}", r.label), true, 0, failure)
            })
            .collect();
        RevisionObservation::new(r.clone(), n, instances)
    }

    #[test]
    fn the_switch_back_is_not_held_up_by_the_stable_revisions_health() {
        let (v1, v2) = (rev("v1"), rev("v2"));
        // v1's only instance exited lately and runs again; the canary takes half the traffic.
        let observed = Observed::new(
            vec![
                obs(
                    &v1,
                    1,
                    Some("exited with code 137 after running 3h (1 time in the last 60s)"),
                ),
                obs(
                    &v2,
                    1,
                    Some("exited with code 1 after running 2s (2 times in the last 60s)"),
                ),
            ],
            Default::default(),
            Traffic::routed(Routes::split(&v1.id, &v2.id, Weight::new(50).unwrap())),
        );
        let progress = Progress::default();
        let ctx = PlanContext::new(
            &v1,
            None,
            1,
            &observed,
            &progress,
            Timestamp::from_millis(0),
        );
        match SwitchBackStrategy.plan(&ctx) {
            Decision::Apply(desired) => {
                assert_eq!(desired.traffic, Traffic::routed(Routes::all_to(&v1.id)));
                assert_eq!(desired.revisions.len(), 2, "{}", desired.summary());
            }
            other => panic!("expected the switch back, got {other:?}"),
        }
    }
}
