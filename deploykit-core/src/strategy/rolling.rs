//! The rolling update planner, with Kubernetes' surge and unavailability semantics.

use crate::environment::{
    DesiredState, FailureKind, InstanceFailure, RevisionObservation, RevisionTarget, Traffic,
};
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
/// - once every new instance shows evidence of a broken revision (exits, crash loops, liveness,
///   startup or configuration failures), or `fail_fast_after` of them do, the planner aborts
///   with the backend's reason instead of waiting for the progress deadline; failing readiness
///   only means "not ready yet";
/// - it completes once the target runs alone at full size, every instance ready and none
///   reporting a failure.
///
/// Traffic follows ready instances, as a Kubernetes Service over a rolling update does.
#[derive(Clone, Debug)]
pub struct RollingStrategy {
    spec: RollingSpec,
    fail_fast: bool,
}

impl RollingStrategy {
    /// A planner for `spec`.
    pub fn new(spec: RollingSpec) -> Self {
        RollingStrategy {
            spec,
            fail_fast: true,
        }
    }

    /// A planner that returns to a revision (a rollback, or converging on the revision that
    /// already serves): the same budgets, but it never aborts. There is nothing further to
    /// fall back to, and an instance of that revision that exited lately must not hold back
    /// the removal of the revision being rolled back; a rollback that cannot finish is the
    /// driver's to handle.
    pub fn converging(spec: RollingSpec) -> Self {
        RollingStrategy {
            spec,
            fail_fast: false,
        }
    }
}

/// Whether a failure of this kind is evidence that the revision is broken, rather than that it
/// is not ready yet.
///
/// Readiness and custom-check failures mean "not ready yet", as in Kubernetes: a slow start
/// fails them for a while and then passes, so only the progress deadline ends the wait. Exits
/// and crash loops, liveness failures (the instance is restarted), startup-probe failures (the
/// start-up budget the service declared has run out) and configuration errors are evidence of
/// a broken revision, on which a rollout fails fast.
pub(crate) fn is_broken(kind: &FailureKind) -> bool {
    match kind {
        FailureKind::CrashLoop
        | FailureKind::Liveness
        | FailureKind::Startup
        | FailureKind::Configuration => true,
        FailureKind::Readiness | FailureKind::Custom(_) => false,
    }
}

/// Whether every one of the `d` instances `target` should have runs, passes readiness and
/// reports no failure at all (no recent exit, restart or failing check): what a revision must
/// be before the one it replaces goes, and before a rollout is called successful.
pub(crate) fn healthy(target: Option<&RevisionObservation>, d: u32) -> bool {
    target.is_some_and(|t| {
        t.instances.len() as u32 == d && t.ready() == d && t.failed().next().is_none()
    })
}

/// The fail-fast rule: once every instance of `target` shows evidence of a broken revision
/// ([`is_broken`]: exits, crash loops, liveness, startup or configuration failures), or
/// `threshold` of them do, the reason to abort, e.g. `2 of 2 new instances are crash-looping:
/// exited with code 1 after running 2s (1 time in the last 60s)`. Readiness failures never
/// count: see [`not_ready`] for what the progress deadline says about them.
pub(crate) fn fail_fast(target: &RevisionObservation, threshold: u32) -> Option<String> {
    let failed: Vec<_> = target
        .failed()
        .filter_map(|i| i.failure.as_ref())
        .filter(|f| is_broken(&f.kind))
        .collect();
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
    if first.kind == FailureKind::Liveness && target.revision.config.health.startup.is_none() {
        reason.push_str(&format!(
            "; a startup probe would help if {} is only slow to start: liveness is not \
             checked until it passes",
            target.revision.label
        ));
    }
    Some(reason)
}

/// Why `target` is not (fully) ready, for the progress deadline's reason: `None` when every
/// desired instance runs and is ready. Carries the last failure the backend reported, and, when
/// instances are failing readiness with no startup probe configured, says that a startup probe
/// would help a revision that is only slow to start, e.g. `v2 not ready (0/2 ready): 2 of 2
/// instances failed readiness: TCP connect to port 20417: connection refused; if v2 is only
/// slow to start, a startup probe (health.startup) covering its start-up time would tell a slow
/// start from a broken one`.
pub(crate) fn not_ready(target: &RevisionObservation) -> Option<String> {
    let label = &target.revision.label;
    let (ready, desired) = (target.ready(), target.desired);
    let total = target.instances.len();
    if ready >= desired && total as u32 == desired {
        return None;
    }
    let mut reason = format!("{label} not ready ({ready}/{desired} ready)");
    let failures: Vec<&InstanceFailure> =
        target.failed().filter_map(|i| i.failure.as_ref()).collect();
    match failures.first() {
        Some(first) => {
            let same = failures.iter().filter(|f| f.kind == first.kind).count();
            reason.push_str(&format!(
                ": {same} of {total} instances {}: {}",
                first.kind, first.reason
            ));
        }
        None if (total as u32) < desired => reason.push_str(&format!(
            ": {} of {desired} instances not started",
            desired - total as u32
        )),
        None => reason.push_str(": no failure reported, readiness has not passed yet"),
    }
    let slow_start_symptom = failures.iter().any(|f| {
        matches!(
            f.kind,
            FailureKind::Readiness | FailureKind::Liveness | FailureKind::Custom(_)
        )
    });
    if slow_start_symptom && target.revision.config.health.startup.is_none() {
        reason.push_str(&format!(
            "; if {label} is only slow to start, a startup probe (health.startup) covering its \
             start-up time would tell a slow start from a broken one"
        ));
    }
    Some(reason)
}

impl DeploymentStrategy for RollingStrategy {
    fn plan(&self, ctx: &PlanContext<'_>) -> Decision {
        let d = ctx.replicas;
        let (surge, unavailable) = self.spec.budgets(d);
        let observed = ctx.observed;
        let target = observed.revision(&ctx.target.id);
        if let Some(reason) = target
            .filter(|_| self.fail_fast)
            .and_then(|t| fail_fast(t, self.spec.fail_fast_after))
        {
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
        let (t_desired, t_instances) =
            target.map_or((0, 0), |t| (t.desired, t.instances.len() as u32));
        if t_desired == d && others.is_empty() && healthy(target, d) {
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
            let reason = match target.and_then(not_ready) {
                Some(why) => format!("waiting: {why}"),
                None => format!("waiting for {} ({})", ctx.target.label, observed.summary()),
            };
            return Decision::Wait { reason };
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

    fn failing(r: &Revision, n: u32, kind: FailureKind, reason: &str) -> RevisionObservation {
        let mut o = obs(r, 3, 0, 3);
        for i in o.instances.iter_mut().take(n as usize) {
            i.failure = Some(InstanceFailure::new(kind.clone(), reason));
        }
        o
    }

    #[test]
    fn fails_fast_with_the_backend_reason() {
        let (v1, v2) = (rev("v1"), rev("v2"));
        let s = spec(Quantity::Count(3), Quantity::Count(0));
        let crash = "exited with code 1 after running 2s (1 time in the last 60s)";
        let d = plan(
            &s,
            &v2,
            3,
            vec![
                obs(&v1, 3, 3, 0),
                failing(&v2, 2, FailureKind::CrashLoop, crash),
            ],
        );
        assert!(matches!(d, Decision::Wait { .. }), "{d:?}");
        let d = plan(
            &s,
            &v2,
            3,
            vec![
                obs(&v1, 3, 3, 0),
                failing(&v2, 3, FailureKind::CrashLoop, crash),
            ],
        );
        assert_eq!(
            d,
            Decision::Abort {
                cause: RollbackCause::FailFast,
                reason: format!("3 of 3 new instances are crash-looping: {crash}")
            }
        );
    }

    #[test]
    fn readiness_failures_mean_not_ready_yet() {
        let (v1, v2) = (rev("v1"), rev("v2"));
        let s = spec(Quantity::Count(3), Quantity::Count(0));
        for kind in [FailureKind::Readiness, FailureKind::Custom("db".into())] {
            let v2_obs = failing(
                &v2,
                3,
                kind,
                "TCP connect to port 20417: connection refused",
            );
            let d = plan(&s, &v2, 3, vec![obs(&v1, 3, 3, 0), v2_obs]);
            assert!(matches!(d, Decision::Wait { .. }), "{d:?}");
        }
        // Evidence of a broken revision fails fast, whatever the probe.
        for kind in [
            FailureKind::CrashLoop,
            FailureKind::Liveness,
            FailureKind::Startup,
            FailureKind::Configuration,
        ] {
            let v2_obs = failing(&v2, 3, kind, "boom");
            let d = plan(&s, &v2, 3, vec![obs(&v1, 3, 3, 0), v2_obs]);
            assert!(matches!(d, Decision::Abort { .. }), "{d:?}");
        }
    }

    #[test]
    fn liveness_failures_suggest_a_startup_probe() {
        let v2 = rev("v2");
        let reason = fail_fast(
            &failing(&v2, 3, FailureKind::Liveness, "GET /live returned 503"),
            3,
        )
        .expect("fails fast");
        assert_eq!(
            reason,
            "3 of 3 new instances failed liveness: GET /live returned 503; a startup probe \
             would help if v2 is only slow to start: liveness is not checked until it passes"
        );
    }

    #[test]
    fn not_ready_carries_the_last_failure_and_when_a_startup_probe_helps() {
        let v2 = rev("v2");
        assert_eq!(not_ready(&obs(&v2, 3, 3, 0)), None);
        assert_eq!(
            not_ready(&failing(
                &v2,
                2,
                FailureKind::Readiness,
                "TCP connect to port 20417: connection refused"
            ))
            .as_deref(),
            Some(
                "v2 not ready (0/3 ready): 2 of 3 instances failed readiness: TCP connect to \
                 port 20417: connection refused; if v2 is only slow to start, a startup probe \
                 (health.startup) covering its start-up time would tell a slow start from a \
                 broken one"
            )
        );
        assert_eq!(
            not_ready(&obs(&v2, 3, 1, 2)).as_deref(),
            Some("v2 not ready (1/3 ready): no failure reported, readiness has not passed yet")
        );
        assert_eq!(
            not_ready(&obs(&v2, 3, 1, 0)).as_deref(),
            Some("v2 not ready (1/3 ready): 2 of 3 instances not started")
        );
        // With a startup probe configured, the hint is not given.
        let svc = ServiceSpec::builder()
            .name("web")
            .health(
                crate::model::HealthChecks::builder()
                    .startup(
                        crate::model::Probe::builder()
                            .action(crate::model::ProbeAction::http("/started"))
                            .build()
                            .unwrap(),
                    )
                    .build(),
            )
            .build()
            .unwrap();
        let env = EnvironmentSpec::builder()
            .name("prod")
            .kind(EnvironmentKind::Production)
            .build()
            .unwrap();
        let v3 = Revision::new(&svc, &env, Digest::of_bytes(b"v3"), "v3").unwrap();
        let text = not_ready(&failing(&v3, 3, FailureKind::Readiness, "503")).unwrap();
        assert!(!text.contains("startup probe"), "{text}");
    }

    #[test]
    fn completes_only_once_no_new_instance_reports_a_failure() {
        let v2 = rev("v2");
        let s = RollingStrategy::new(RollingSpec::default());
        let mut o = obs(&v2, 3, 3, 0);
        o.instances[1].failure = Some(InstanceFailure::new(
            FailureKind::CrashLoop,
            "exited with code 1 after running 2s (1 time in the last 60s)",
        ));
        let d = plan(&s, &v2, 3, vec![o]);
        assert!(matches!(d, Decision::Wait { .. }), "{d:?}");
    }

    #[test]
    fn a_rollback_never_aborts_on_the_revision_it_returns_to() {
        let (v1, v2) = (rev("v1"), rev("v2"));
        // v1's only instance exited a moment ago (and runs again); v2 failed. Going back to v1
        // still removes v2 at once instead of aborting the rollback.
        let mut back = obs(&v1, 1, 1, 0);
        back.instances[0].failure = Some(InstanceFailure::new(
            FailureKind::CrashLoop,
            "exited with code 137 after running 3h (1 time in the last 60s)",
        ));
        let broken = failing(&v2, 3, FailureKind::CrashLoop, "exited with code 1");
        let converging = RollingStrategy::converging(RollingSpec::default());
        let d = plan(&converging, &v1, 1, vec![back.clone(), broken.clone()]);
        assert_eq!(counts(&d), vec![("v1".into(), 1)]);
        let forward = RollingStrategy::new(RollingSpec::default());
        let d = plan(&forward, &v1, 1, vec![back, broken]);
        assert!(matches!(d, Decision::Abort { .. }), "{d:?}");
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
