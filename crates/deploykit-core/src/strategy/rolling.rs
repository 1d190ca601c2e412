//! The rolling update planner, with Kubernetes' surge and unavailability semantics.

use crate::environment::{DesiredState, RevisionObservation, RevisionTarget, Traffic};
use crate::model::RollingSpec;

use crate::journal::RollbackCause;

use super::{Decision, DeploymentStrategy, PlanContext};

/// Replaces every other revision with the target, a few instances at a time.
///
/// Each round, with `D` desired replicas, surge `S` and unavailability `U` (see
/// [`RollingSpec::budgets`]):
/// - unready instances of other revisions are removed outright (they serve nothing), and ready
///   ones only while at least `D − U` instances stay ready across all revisions;
/// - the target scales up while the instances of all revisions, after those removals, stay at
///   or below `D + S`;
/// - once every new instance has failed, or `fail_fast_after` of them have, the planner aborts
///   with the backend's reason instead of waiting for the progress deadline.
///
/// Traffic follows ready instances, as a Kubernetes Service over a rolling update does.
#[derive(Clone, Debug)]
pub struct RollingStrategy {
    spec: RollingSpec,
}

impl RollingStrategy {
    /// A planner for `spec`.
    pub fn new(spec: RollingSpec) -> Self {
        RollingStrategy { spec }
    }
}

/// The fail-fast rule: once every instance of `target` has failed, or `threshold` of them
/// have, the reason to abort, e.g. `3 of 3 new instances failed readiness: GET /health
/// returned 503`.
pub(crate) fn fail_fast(target: &RevisionObservation, threshold: u32) -> Option<String> {
    let failed: Vec<_> = target.failed().filter_map(|i| i.failure.as_ref()).collect();
    let total = target.instances.len();
    let n = failed.len();
    if n == 0 || (n < threshold as usize && n < total) {
        return None;
    }
    let first = failed[0];
    let same = failed.iter().filter(|f| f.kind == first.kind).count();
    let mut reason = format!(
        "{same} of {total} new instances {}: {}",
        first.kind, first.reason
    );
    if same < n {
        reason.push_str(&format!(" ({} more failed otherwise)", n - same));
    }
    Some(reason)
}

impl DeploymentStrategy for RollingStrategy {
    fn plan(&self, ctx: &PlanContext<'_>) -> Decision {
        let d = ctx.replicas;
        let (surge, unavailable) = self.spec.budgets(d);
        let observed = ctx.observed;
        let target = observed.revision(&ctx.target.id);
        if let Some(reason) = target.and_then(|t| fail_fast(t, self.spec.fail_fast_after)) {
            return Decision::Abort {
                cause: RollbackCause::FailFast,
                reason,
            };
        }
        let others: Vec<&RevisionObservation> = observed
            .revisions
            .iter()
            .filter(|r| r.revision.id != ctx.target.id)
            .collect();
        let (t_desired, t_ready, t_instances) = target.map_or((0, 0, 0), |t| {
            (t.desired, t.ready(), t.instances.len() as u32)
        });
        if t_desired == d && t_ready == d && t_instances == d && others.is_empty() {
            return Decision::Complete;
        }

        // Scale others down within the availability budget; their unready instances go first
        // (they serve nothing).
        let min_available = d.saturating_sub(unavailable);
        let mut removable = observed.total_ready().saturating_sub(min_available);
        let mut kept = Vec::new();
        for other in others {
            let ready = other.ready();
            let removed = removable.min(ready);
            removable -= removed;
            if ready - removed > 0 {
                kept.push(RevisionTarget::new(other.revision.clone(), ready - removed));
            }
        }

        // Scale the target up within the surge budget, counting what remains after the
        // removals above (environments apply removals before additions).
        let total = kept.iter().map(|t| t.replicas).sum::<u32>() + t_desired.max(t_instances);
        let new_target = if t_desired >= d {
            d
        } else {
            (t_desired + (d + surge).saturating_sub(total)).min(d)
        };
        let mut revisions = vec![RevisionTarget::new(ctx.target.clone(), new_target)];
        revisions.extend(kept);
        let desired = DesiredState::new(revisions, Traffic::ByReadyInstances);
        if observed.matches(&desired) {
            return Decision::Wait {
                reason: format!(
                    "waiting for {} to become ready ({})",
                    ctx.target.label,
                    observed.summary()
                ),
            };
        }
        Decision::Apply(desired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::environment::{
        FailureKind, InstanceFailure, InstanceObservation, Observed, RevisionObservation,
    };
    use crate::model::{Digest, EnvironmentKind, EnvironmentSpec, Quantity, Revision, ServiceSpec};
    use crate::strategy::Progress;
    use crate::time::Timestamp;

    fn rev(label: &str) -> Revision {
        let svc = ServiceSpec::builder().name("web").build().unwrap();
        let env = EnvironmentSpec::builder()
            .name("prod")
            .kind(EnvironmentKind::Production)
            .build()
            .unwrap();
        Revision::new(&svc, &env, Digest::of_bytes(label.as_bytes()), label).unwrap()
    }

    fn obs(r: &Revision, desired: u32, ready: u32, starting: u32) -> RevisionObservation {
        let mut instances = Vec::new();
        for i in 0..ready + starting {
            instances.push(InstanceObservation::new(
                format!("{}-{i}", r.label),
                i < ready,
                0,
                None,
            ));
        }
        RevisionObservation::new(r.clone(), desired, instances)
    }

    fn spec(surge: Quantity, unavailable: Quantity) -> RollingStrategy {
        RollingStrategy::new(
            RollingSpec::builder()
                .max_surge(surge)
                .max_unavailable(unavailable)
                .build()
                .unwrap(),
        )
    }

    fn plan(
        s: &RollingStrategy,
        target: &Revision,
        d: u32,
        revs: Vec<RevisionObservation>,
    ) -> Decision {
        let observed = Observed::new(revs, Default::default(), Traffic::ByReadyInstances);
        let progress = Progress::default();
        let target = std::sync::Arc::new(target.clone());
        s.plan(&PlanContext::new(
            &target,
            None,
            d,
            &observed,
            &progress,
            Timestamp::from_millis(0),
        ))
    }

    fn counts(d: &Decision) -> Vec<(String, u32)> {
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
    fn first_step_uses_surge_and_unavailable_budgets() {
        let (v1, v2) = (rev("v1"), rev("v2"));
        // Defaults on 10 replicas: surge 3 (2.5 up), unavailable 2 (2.5 down).
        let s = RollingStrategy::new(RollingSpec::default());
        let d = plan(&s, &v2, 10, vec![obs(&v1, 10, 10, 0)]);
        // Two ready v1 instances may go, which leaves room for 5 new ones under 13.
        assert_eq!(counts(&d), vec![("v2".into(), 5), ("v1".into(), 8)]);
    }

    #[test]
    fn surge_only_waits_for_readiness_before_removing_old() {
        let (v1, v2) = (rev("v1"), rev("v2"));
        let s = spec(Quantity::Count(1), Quantity::Count(0));
        let d = plan(&s, &v2, 3, vec![obs(&v1, 3, 3, 0)]);
        assert_eq!(counts(&d), vec![("v2".into(), 1), ("v1".into(), 3)]);
        // The new instance is not ready yet: nothing may change.
        let d = plan(&s, &v2, 3, vec![obs(&v1, 3, 3, 0), obs(&v2, 1, 0, 1)]);
        assert!(matches!(d, Decision::Wait { .. }), "{d:?}");
        // Once it is ready, one old instance goes and a new one comes in the same step.
        let d = plan(&s, &v2, 3, vec![obs(&v1, 3, 3, 0), obs(&v2, 1, 1, 0)]);
        assert_eq!(counts(&d), vec![("v2".into(), 2), ("v1".into(), 2)]);
        let d = plan(&s, &v2, 3, vec![obs(&v1, 2, 2, 0), obs(&v2, 1, 1, 0)]);
        assert_eq!(counts(&d), vec![("v2".into(), 2), ("v1".into(), 2)]);
    }

    #[test]
    fn unavailable_only_removes_before_adding() {
        let (v1, v2) = (rev("v1"), rev("v2"));
        let s = spec(Quantity::Count(0), Quantity::Percent(50));
        // 50% of 5 rounds down to 2.
        let d = plan(&s, &v2, 5, vec![obs(&v1, 5, 5, 0)]);
        assert_eq!(counts(&d), vec![("v2".into(), 2), ("v1".into(), 3)]);
        // Nothing more may go until the new instances are ready.
        let d = plan(&s, &v2, 5, vec![obs(&v1, 3, 3, 0), obs(&v2, 2, 0, 2)]);
        assert!(matches!(d, Decision::Wait { .. }), "{d:?}");
        let d = plan(&s, &v2, 5, vec![obs(&v1, 3, 3, 0), obs(&v2, 2, 2, 0)]);
        assert_eq!(counts(&d), vec![("v2".into(), 4), ("v1".into(), 1)]);
    }

    #[test]
    fn unready_old_instances_are_removed_outright() {
        let (v1, v2) = (rev("v1"), rev("v2"));
        let s = spec(Quantity::Count(1), Quantity::Count(0));
        let d = plan(&s, &v2, 3, vec![obs(&v1, 3, 2, 1), obs(&v2, 1, 0, 1)]);
        // 2 ready of 3 desired and no unavailability budget: keep both ready v1, drop the
        // unready one, and the freed slot lets v2 grow.
        assert_eq!(counts(&d), vec![("v2".into(), 2), ("v1".into(), 2)]);
    }

    #[test]
    fn completes_only_when_target_is_fully_ready_alone() {
        let (v1, v2) = (rev("v1"), rev("v2"));
        let s = RollingStrategy::new(RollingSpec::default());
        let d = plan(&s, &v2, 3, vec![obs(&v2, 3, 3, 0)]);
        assert_eq!(d, Decision::Complete);
        let d = plan(&s, &v2, 3, vec![obs(&v2, 3, 2, 1)]);
        assert!(matches!(d, Decision::Wait { .. }));
        let d = plan(&s, &v2, 3, vec![obs(&v1, 0, 0, 0), obs(&v2, 3, 3, 0)]);
        assert_eq!(counts(&d), vec![("v2".into(), 3)]);
    }

    #[test]
    fn fails_fast_with_the_backend_reason() {
        let (v1, v2) = (rev("v1"), rev("v2"));
        let s = spec(Quantity::Count(3), Quantity::Count(0));
        let failing = |n: u32| {
            let mut o = obs(&v2, 3, 0, 3);
            for i in o.instances.iter_mut().take(n as usize) {
                i.failure = Some(InstanceFailure::new(
                    FailureKind::Readiness,
                    "GET /health returned 503",
                ));
            }
            o
        };
        let d = plan(&s, &v2, 3, vec![obs(&v1, 3, 3, 0), failing(2)]);
        assert!(matches!(d, Decision::Wait { .. }), "{d:?}");
        let d = plan(&s, &v2, 3, vec![obs(&v1, 3, 3, 0), failing(3)]);
        assert_eq!(
            d,
            Decision::Abort {
                cause: RollbackCause::FailFast,
                reason: "3 of 3 new instances failed readiness: GET /health returned 503".into()
            }
        );
    }

    #[test]
    fn a_rollback_is_a_rolling_update_back() {
        let (v1, v2) = (rev("v1"), rev("v2"));
        let s = spec(Quantity::Count(1), Quantity::Count(0));
        // v2 failed half way: v1 at 2 ready, v2 at 2 unready. Returning to v1.
        let d = plan(&s, &v1, 3, vec![obs(&v1, 2, 2, 0), obs(&v2, 2, 0, 2)]);
        // Every v2 instance is unready, so all go; v1 grows within the surge budget.
        assert_eq!(counts(&d), vec![("v1".into(), 3)]);
    }
}
