//! The [`Environment`] contract.

use std::time::Duration;

use deploykit_core::environment::{HeaderRoute, Mirror, Routes};
use deploykit_core::{
    DesiredState, Environment, EnvironmentExt, Observed, Revision, RevisionTarget, ServiceId,
    Traffic, Weight,
};

/// What the suite deploys: a service name unused in the environment and two revisions of it
/// whose instances become ready there.
#[derive(Clone, Debug)]
pub struct EnvironmentFixture {
    /// A service with nothing deployed.
    pub service: ServiceId,
    /// A healthy revision.
    pub first: Revision,
    /// Another healthy revision.
    pub second: Revision,
    /// How often to observe while waiting for readiness.
    pub poll: Duration,
    /// How long instances may take to become ready.
    pub settle_timeout: Duration,
}

fn state(targets: &[(&Revision, u32)]) -> DesiredState {
    DesiredState::new(
        targets
            .iter()
            .map(|(r, n)| RevisionTarget::new((*r).clone(), *n))
            .collect(),
        Traffic::ByReadyInstances,
    )
}

fn names(observed: &Observed, revision: &Revision) -> Vec<String> {
    let mut names: Vec<String> = observed
        .revision(&revision.id)
        .map(|r| r.instances.iter().map(|i| i.name.to_string()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// Run every environment check in order (the service is torn down at the end).
pub async fn run_all(env: &dyn Environment, fx: &EnvironmentFixture) {
    unknown_service_observes_empty(env, fx).await;
    apply_observe_and_idempotence(env, fx).await;
    routed_traffic(env, fx).await;
    teardown_removes_everything(env, fx).await;
}

/// Explicit routes are applied and reported back as applied; served weights follow them once
/// both revisions are ready.
pub async fn routed_traffic(env: &dyn Environment, fx: &EnvironmentFixture) {
    let (a, b) = (&fx.first, &fx.second);
    let mut routes = Routes::split(&a.id, &b.id, Weight::new(10).expect("weight"));
    routes.header = Some(HeaderRoute::new("x-canary", "true", b.id.clone()));
    routes.mirror = Some(Mirror::new(b.id.clone(), Weight::new(5).expect("weight")));
    routes.preview = Some(b.id.clone());
    let traffic = Traffic::routed(routes);
    let desired = DesiredState::new(
        vec![
            RevisionTarget::new(a.clone(), 1),
            RevisionTarget::new(b.clone(), 1),
        ],
        traffic.clone(),
    );
    env.apply(&fx.service, &desired)
        .await
        .expect("apply routes");
    let observed = env
        .wait_settled(&fx.service, fx.poll, fx.settle_timeout)
        .await
        .expect("both revisions settle");
    assert_eq!(
        observed.routing, traffic,
        "the routing must be reported as applied"
    );
    assert_eq!(
        observed.weight_of(&a.id),
        90,
        "served weights follow the routes"
    );
    assert_eq!(observed.weight_of(&b.id), 10);
}

/// Observing a service that was never applied gives an empty observation, not an error.
pub async fn unknown_service_observes_empty(env: &dyn Environment, fx: &EnvironmentFixture) {
    let observed = env
        .observe(&fx.service)
        .await
        .expect("observe unknown service");
    assert!(
        observed.revisions.is_empty() && observed.traffic.is_empty(),
        "an unknown service must observe as empty, got {observed:?}"
    );
}

/// Apply creates instances that become ready; applying the same state again changes nothing;
/// scaling keeps existing instances; revisions left out are removed; traffic follows readiness.
pub async fn apply_observe_and_idempotence(env: &dyn Environment, fx: &EnvironmentFixture) {
    let (a, b) = (&fx.first, &fx.second);
    env.apply(&fx.service, &state(&[(a, 2)]))
        .await
        .expect("apply first revision");
    let observed = env.observe(&fx.service).await.expect("observe");
    let obs_a = observed
        .revision(&a.id)
        .expect("applied revision must be observed");
    assert_eq!(
        obs_a.desired, 2,
        "observed desired count must be the applied one"
    );
    assert_eq!(
        *obs_a.revision, *a,
        "the observed revision must carry its full spec"
    );
    let observed = env
        .wait_settled(&fx.service, fx.poll, fx.settle_timeout)
        .await
        .expect("instances of a healthy revision must become ready");
    assert_eq!(observed.total_ready(), 2);
    assert_eq!(
        observed.traffic.get(&a.id).map(|w| w.percent()),
        Some(100),
        "all traffic must go to the only ready revision"
    );
    let before = names(&observed, a);

    env.apply(&fx.service, &state(&[(a, 2)]))
        .await
        .expect("re-apply the same state");
    let again = env.observe(&fx.service).await.expect("observe");
    assert_eq!(
        names(&again, a),
        before,
        "applying the same desired state twice must not replace instances"
    );

    env.apply(&fx.service, &state(&[(b, 1), (a, 1)]))
        .await
        .expect("apply two revisions");
    let observed = env
        .wait_settled(&fx.service, fx.poll, fx.settle_timeout)
        .await
        .expect("two revisions settle");
    let kept = names(&observed, a);
    assert_eq!(kept.len(), 1, "scaling down keeps the requested count");
    assert!(
        before.contains(&kept[0]),
        "scaling down must keep an existing instance, not start a new one"
    );
    let sum: u32 = observed.traffic.values().map(|w| w.percent()).sum();
    assert_eq!(
        sum, 100,
        "traffic weights must sum to 100: {:?}",
        observed.traffic
    );
    assert_eq!(
        observed.traffic.len(),
        2,
        "both ready revisions receive traffic"
    );

    env.apply(&fx.service, &state(&[(b, 2)]))
        .await
        .expect("apply second revision only");
    let observed = env
        .wait_settled(&fx.service, fx.poll, fx.settle_timeout)
        .await
        .expect("second revision settles");
    assert!(
        observed.revision(&a.id).is_none(),
        "a revision left out of the desired state must be removed"
    );
    assert_eq!(observed.total_ready(), 2);

    env.apply(&fx.service, &state(&[(b, 0)]))
        .await
        .expect("scale to zero");
    let observed = env.observe(&fx.service).await.expect("observe");
    let obs_b = observed
        .revision(&b.id)
        .expect("a revision at 0 replicas is kept");
    assert!(obs_b.instances.is_empty() && obs_b.desired == 0);
    assert!(observed.traffic.is_empty(), "nothing ready, so no traffic");
}

/// Teardown removes every revision of the service and may be repeated.
pub async fn teardown_removes_everything(env: &dyn Environment, fx: &EnvironmentFixture) {
    env.apply(&fx.service, &state(&[(&fx.first, 1)]))
        .await
        .expect("apply before teardown");
    env.teardown(&fx.service).await.expect("teardown");
    env.teardown(&fx.service)
        .await
        .expect("teardown is idempotent");
    let observed = env
        .observe(&fx.service)
        .await
        .expect("observe after teardown");
    assert!(
        observed.revisions.is_empty(),
        "teardown must remove every revision, left {observed:?}"
    );
}
