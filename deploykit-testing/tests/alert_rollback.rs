//! An alert as a rollback trigger: a canary whose error-rate alert fires is rolled back, the
//! abort is audited as the alert's, and the stable revision never alerts. Deployments resumed
//! after a restart are watched, and neither a lagged deployment-event receiver nor a lagged
//! alert-event receiver loses a rollback (issue 14 L).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deploykit_alerting::{
    AlertRule, AlertTarget, Alerting, NotificationStatus, Route, rollback_on_alerts,
};
use deploykit_core::analysis::Condition;
use deploykit_core::journal::JournalEntry;
use deploykit_core::store::{StateStore, StateStoreLayer};
use deploykit_core::strategy::{CanarySpec, CanaryStep};
use deploykit_core::{
    Actor, DeploymentId, EnvironmentName, EnvironmentSpec, Orchestrator, Phase, Result, ServiceId,
    StrategySpec,
};
use deploykit_testing::{MemoryStore, RecordingAlertSink, SimCluster};
use tokio::sync::Notify;

/// A canary of 20 %, a pause of `pause`, then 50 %.
fn canary_env(pause: Duration) -> EnvironmentSpec {
    let canary = CanarySpec::builder()
        .steps(vec![
            CanaryStep::weight(20).unwrap(),
            CanaryStep::pause(pause),
            CanaryStep::weight(50).unwrap(),
        ])
        .build()
        .unwrap();
    common::environment_with(4, StrategySpec::Canary(canary))
}

/// `error_rate` above 5 % for a minute.
fn canary_errors() -> AlertRule {
    AlertRule::builder()
        .name("canary-errors")
        .expr("error_rate")
        .condition(Condition::above(0.05))
        .for_(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// An alerting engine evaluating `rules` every 15 s on the simulated clock, paging `pager`.
fn alerting(sim: &SimCluster, rules: Vec<AlertRule>, pager: &RecordingAlertSink) -> Arc<Alerting> {
    let mut builder = Alerting::builder();
    for rule in rules {
        builder = builder.rule(rule);
    }
    Arc::new(
        builder
            .route(
                Route::builder()
                    .receiver("pager")
                    .group_wait(Duration::ZERO)
                    .build(),
            )
            .sink("pager", Arc::new(pager.clone()))
            .clock(sim.clock())
            .interval(Duration::from_secs(15))
            .build()
            .unwrap(),
    )
}

async fn open(store: Arc<dyn StateStore>, sim: &SimCluster, env: &EnvironmentSpec) -> Orchestrator {
    common::open_monitored(store, sim, env.clone(), "orchestrator-a").await
}

/// Polls (on tokio's paused clock) until `id` reaches the pause step, the second step.
async fn until_paused_at_step_1(orch: &Orchestrator, id: &DeploymentId) {
    for _ in 0..600 {
        let status = orch.status(id).await.unwrap();
        assert!(!status.phase.is_terminal(), "{:?}", status.phase);
        if status.progress.step >= 1 {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let status = orch.status(id).await.unwrap();
    panic!(
        "{} never reached its pause step: {:?} {:?}",
        status.spec.target.label, status.phase, status.progress
    );
}

/// Waits for `id` to end, at most `limit` of tokio time.
async fn ends_within(orch: &Orchestrator, id: &DeploymentId, limit: Duration) -> Phase {
    tokio::time::timeout(limit, orch.wait(id))
        .await
        .unwrap_or_else(|_| panic!("{id} did not end within {limit:?}"))
        .unwrap()
        .phase
}

#[tokio::test(start_paused = true)]
async fn a_firing_alert_rolls_its_revision_back() {
    let env = canary_env(Duration::from_secs(600));
    let sim = SimCluster::new();
    let orch = Arc::new(open(Arc::new(MemoryStore::new()), &sim, &env).await);
    let pager = RecordingAlertSink::new();
    let alerting = alerting(&sim, vec![canary_errors()], &pager);
    let _evaluator = alerting.clone().spawn(Arc::new(sim.clone()));
    let _trigger = rollback_on_alerts(orch.clone(), alerting.clone(), ["canary-errors"]);

    let v1 = common::revision_in(&env, "v1");
    let v2 = common::revision_in(&env, "v2");
    sim.set_metric(&v1.service, Some(&v1.id), "error_rate", vec![0.01; 4000]);
    sim.set_metric(&v2.service, Some(&v2.id), "error_rate", vec![0.3; 4000]);
    assert_eq!(
        common::deploy_and_wait(&orch, "v1").await.1,
        Phase::Succeeded
    );
    let started = tokio::time::Instant::now();
    let (id, phase) = common::deploy_and_wait(&orch, "v2").await;
    assert_eq!(phase, Phase::RolledBack);
    // Within the 10-minute pause: `for` (60 s) plus an evaluation interval or two.
    assert!(
        started.elapsed() < Duration::from_secs(150),
        "{:?}",
        started.elapsed()
    );
    let status = orch.status(&id).await.unwrap();
    let (_, reason) = status.rollback.clone().expect("rolled back");
    assert!(reason.contains("alert canary-errors fired"), "{reason}");
    let audit = orch.audit_log().await.unwrap();
    assert!(
        audit
            .iter()
            .any(|r| r.actor.to_string() == "alert:canary-errors"),
        "{audit:?}"
    );

    // The pager was told, about v2 only.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let sent = pager.notifications();
    let firing: Vec<_> = sent
        .iter()
        .filter(|n| n.status == NotificationStatus::Firing)
        .flat_map(|n| n.alerts.iter())
        .collect();
    assert!(!firing.is_empty());
    assert!(
        firing
            .iter()
            .all(|a| a.label("revision") == Some(v2.id.as_str())),
        "{firing:?}"
    );
    // The rolled-back revision is no longer watched.
    assert!(
        alerting
            .targets()
            .iter()
            .all(|t| t.revision.as_ref() != Some(&v2.id))
    );
}

/// A deployment that was already running when the trigger started — here resumed by a new
/// orchestrator after the first one stopped — is watched: the trigger reads the active
/// deployments from the store when it starts.
#[tokio::test(start_paused = true)]
async fn a_deployment_resumed_after_a_restart_is_watched() {
    let env = canary_env(Duration::from_secs(3600));
    let sim = SimCluster::new();
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let v1 = common::revision_in(&env, "v1");
    let v2 = common::revision_in(&env, "v2");
    sim.set_metric(&v1.service, Some(&v1.id), "error_rate", vec![0.01; 10]);
    sim.set_metric(&v2.service, Some(&v2.id), "error_rate", vec![0.3; 10]);

    let first = open(store.clone(), &sim, &env).await;
    assert_eq!(
        common::deploy_and_wait(&first, "v1").await.1,
        Phase::Succeeded
    );
    let id = first.deploy(common::request("v2")).await.unwrap();
    until_paused_at_step_1(&first, &id).await;
    first.shutdown().await.unwrap();

    // A new orchestrator resumes v2; its `started` event was journaled long ago.
    let orch = Arc::new(open(store, &sim, &env).await);
    let pager = RecordingAlertSink::new();
    let alerting = alerting(&sim, vec![canary_errors()], &pager);
    let _evaluator = alerting.clone().spawn(Arc::new(sim.clone()));
    let _trigger = rollback_on_alerts(orch.clone(), alerting.clone(), ["canary-errors"]);

    // Without the store read, v2 goes unwatched and is promoted after its hour-long pause.
    let phase = ends_within(&orch, &id, Duration::from_secs(600)).await;
    assert_eq!(phase, Phase::RolledBack);
    let (_, reason) = orch
        .status(&id)
        .await
        .unwrap()
        .rollback
        .expect("rolled back");
    assert!(reason.contains("alert canary-errors fired"), "{reason}");
}

/// A firing event lost to a lagged alert receiver still rolls back: the trigger acts on the
/// alerts firing when it notices the lag. 1,100 other alerts fire in the same evaluation round
/// as the canary's, so the broadcast channel (1,024 events) drops the canary's event.
#[tokio::test(start_paused = true)]
async fn a_lagged_alert_receiver_still_rolls_back() {
    let env = canary_env(Duration::from_secs(3600));
    let sim = SimCluster::new();
    let orch = Arc::new(open(Arc::new(MemoryStore::new()), &sim, &env).await);
    let noise = AlertRule::builder()
        .name("queue-depth")
        .expr("queue_depth")
        .condition(Condition::above(100.0))
        .for_(Duration::from_secs(60))
        .build()
        .unwrap();
    let pager = RecordingAlertSink::new();
    // Rules are evaluated in order, so the canary's events come first in each round.
    let alerting = alerting(&sim, vec![canary_errors(), noise], &pager);
    let _evaluator = alerting.clone().spawn(Arc::new(sim.clone()));
    let _trigger = rollback_on_alerts(orch.clone(), alerting.clone(), ["canary-errors"]);

    let v2 = common::revision_in(&env, "v2");
    assert_eq!(
        common::deploy_and_wait(&orch, "v1").await.1,
        Phase::Succeeded
    );
    let id = orch.deploy(common::request("v2")).await.unwrap();
    until_paused_at_step_1(&orch, &id).await;
    assert!(
        alerting
            .targets()
            .iter()
            .any(|t| t.revision == Some(v2.id.clone()))
    );

    // 1,100 queue targets (one per environment, so one query serves them all), quiet so far.
    let queue = ServiceId::new("queue").unwrap();
    for i in 0..1100 {
        let environment = EnvironmentName::new(format!("queue-{i}")).unwrap();
        alerting.watch(AlertTarget::new(queue.clone(), environment));
    }
    // Both conditions start to hold between two rounds: pending together, firing together.
    sim.set_metric(&queue, None, "queue_depth", vec![500.0; 10]);
    sim.set_metric(&v2.service, Some(&v2.id), "error_rate", vec![0.3; 10]);

    let phase = ends_within(&orch, &id, Duration::from_secs(600)).await;
    assert_eq!(phase, Phase::RolledBack);
    let (_, reason) = orch
        .status(&id)
        .await
        .unwrap()
        .rollback
        .expect("rolled back");
    assert!(reason.contains("alert canary-errors fired"), "{reason}");
}

/// A deployment whose `started` event is lost to a lagged deployment-event receiver is
/// watched all the same: the trigger reads the active deployments from the store again. The
/// trigger is held inside the store (acting on another revision's alert) while v2 starts and
/// 1,400 events of another deployment follow.
#[tokio::test(start_paused = true)]
async fn a_lagged_deployment_receiver_still_watches() {
    let env = canary_env(Duration::from_secs(3600));
    let staging_env = EnvironmentSpec::builder()
        .name("staging")
        .kind(deploykit_core::EnvironmentKind::Staging)
        .replicas(1)
        .build()
        .unwrap();
    let sim = SimCluster::new();
    // Staging runs on its own cluster (the simulated one keys services by name only).
    let staging_sim = SimCluster::new();
    let store = Arc::new(GatedStore::default());
    let orch = Arc::new(
        Orchestrator::builder_shared(store.clone())
            .environment_with_monitor(env.clone(), Arc::new(sim.clone()), Arc::new(sim.clone()))
            .environment_with_monitor(
                staging_env.clone(),
                Arc::new(staging_sim.clone()),
                Arc::new(staging_sim),
            )
            .clock(Arc::new(sim.clock()))
            .config(common::config())
            .open()
            .await
            .unwrap(),
    );
    let pager = RecordingAlertSink::new();
    let alerting = alerting(&sim, vec![canary_errors()], &pager);
    let _evaluator = alerting.clone().spawn(Arc::new(sim.clone()));
    let _trigger = rollback_on_alerts(orch.clone(), alerting.clone(), ["canary-errors"]);

    assert_eq!(
        common::deploy_and_wait(&orch, "v1").await.1,
        Phase::Succeeded
    );
    // In staging: s1, finished, and s2, a canary paused for an hour. The trigger will be held
    // loading s1's journal (for s1's alert); s2 provides the flood of events.
    let mut request = common::request("s1");
    request.environment = "staging".into();
    let held = orch.deploy(request).await.unwrap();
    assert_eq!(
        ends_within(&orch, &held, Duration::from_secs(600)).await,
        Phase::Succeeded
    );
    let mut request = common::request("s2");
    request.environment = "staging".into();
    request.strategy = Some(env.strategy.clone());
    let flood = orch.deploy(request).await.unwrap();
    until_paused_at_step_1(&orch, &flood).await;

    let s1 = common::revision_in(&staging_env, "s1");
    store.hold(held.clone());
    sim.set_metric(&s1.service, Some(&s1.id), "error_rate", vec![0.9; 10]);
    alerting.watch(
        AlertTarget::new(s1.service.clone(), staging_env.name.clone()).with_revision(s1.id.clone()),
    );
    tokio::time::timeout(Duration::from_secs(300), store.until_held())
        .await
        .expect("the trigger loads the held journal");

    // v2 starts while the trigger is held, then 1,400 events of s2 (pauses and resumes) push
    // v2's out of the channel; v2 itself stays quiet in its pause step.
    let v2 = common::revision_in(&env, "v2");
    sim.set_metric(&v2.service, Some(&v2.id), "error_rate", vec![0.3; 10]);
    let id = orch.deploy(common::request("v2")).await.unwrap();
    until_paused_at_step_1(&orch, &id).await;
    for _ in 0..700 {
        orch.pause(&flood, Actor::new("alice"), "flood")
            .await
            .unwrap();
        orch.resume(&flood, Actor::new("alice")).await.unwrap();
    }
    store.release();

    let phase = ends_within(&orch, &id, Duration::from_secs(600)).await;
    assert_eq!(phase, Phase::RolledBack);
    let (_, reason) = orch
        .status(&id)
        .await
        .unwrap()
        .rollback
        .expect("rolled back");
    assert!(reason.contains("alert canary-errors fired"), "{reason}");
}

/// A [`MemoryStore`] that can hold back full loads of one deployment's journal (as a slow
/// store would), to stall whoever reads it.
#[derive(Debug, Default)]
struct GatedStore {
    inner: MemoryStore,
    held: std::sync::Mutex<Option<DeploymentId>>,
    waiting: AtomicUsize,
    released: AtomicBool,
    changed: Notify,
}

impl GatedStore {
    fn hold(&self, id: DeploymentId) {
        *self.held.lock().unwrap() = Some(id);
    }

    /// Returns once some load waits behind [`GatedStore::hold`].
    async fn until_held(&self) {
        while self.waiting.load(Ordering::SeqCst) == 0 {
            self.changed.notified().await;
        }
    }

    fn release(&self) {
        self.released.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

#[async_trait]
impl StateStoreLayer for GatedStore {
    fn inner(&self) -> &dyn StateStore {
        &self.inner
    }

    async fn load(&self, deployment: &DeploymentId) -> Result<Option<Vec<JournalEntry>>> {
        if self.held.lock().unwrap().as_ref() == Some(deployment) {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            self.changed.notify_waiters();
            while !self.released.load(Ordering::SeqCst) {
                self.changed.notified().await;
            }
        }
        self.inner.load(deployment).await
    }
}
