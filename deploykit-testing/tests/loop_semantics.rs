//! The control loop's promises under dead peers, long pauses, broken backends, redeploys and
//! manual rollbacks (issue 14, classes B, F, G, H and I), on the simulated cluster with
//! tokio's paused clock.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{artifact, environment_with, request};
use deploykit_core::journal::JournalEvent;
use deploykit_core::strategy::{BlueGreenSpec, CanarySpec, CanaryStep};
use deploykit_core::{
    Actor, DeploymentId, EnvironmentName, FailurePolicy, Orchestrator, OrchestratorConfig, Outcome,
    Phase, RollingSpec, StateStore, StrategySpec,
};
use deploykit_testing::{Behavior, Fault, MemoryStore, Op, SimCluster};

const TTL: Duration = Duration::from_secs(30);

fn config() -> OrchestratorConfig {
    OrchestratorConfig::builder()
        .poll_interval(Duration::from_secs(1))
        .lease_ttl(TTL)
        .adopt_interval(Duration::from_secs(10))
        .build()
}

fn canary(steps: Vec<CanaryStep>) -> StrategySpec {
    StrategySpec::Canary(CanarySpec::builder().steps(steps).build().expect("canary"))
}

async fn open(
    store: &Arc<dyn StateStore>,
    sim: &SimCluster,
    strategy: &StrategySpec,
    owner: &str,
) -> Orchestrator {
    Orchestrator::builder_shared(store.clone())
        .environment(environment_with(3, strategy.clone()), Arc::new(sim.clone()))
        .clock(Arc::new(sim.clock()))
        .owner(owner)
        .config(config())
        .open()
        .await
        .expect("open orchestrator")
}

async fn wait_for(orch: &Orchestrator, id: &DeploymentId, within: Duration) -> Phase {
    tokio::time::timeout(within, orch.wait(id))
        .await
        .unwrap_or_else(|_| panic!("{id} did not end within {within:?}"))
        .expect("wait")
        .phase
}

/// Poll until `id`'s journal satisfies `pred` (on tokio's paused clock).
async fn until(orch: &Orchestrator, id: &DeploymentId, pred: impl Fn(&[JournalEvent]) -> bool) {
    for _ in 0..3600 {
        let events: Vec<JournalEvent> = orch
            .journal(id)
            .await
            .expect("journal")
            .into_iter()
            .map(|e| e.event)
            .collect();
        if pred(&events) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("condition on the journal of {id} never held");
}

/// The journal shows a gate waiting for approval.
fn asks_approval(events: &[JournalEvent]) -> bool {
    events
        .iter()
        .any(|e| matches!(e, JournalEvent::ApprovalRequested { .. }))
}

/// The journal shows the rollout reached step 1.
fn reached_step_1(events: &[JournalEvent]) -> bool {
    events
        .iter()
        .any(|e| matches!(e, JournalEvent::StepReached { step: 1 }))
}

/// Who takes ordinary traffic now, by label, with every revision that runs accounted for.
fn serving(sim: &SimCluster) -> Vec<(String, u32)> {
    let observed = sim.peek(&common::service().name);
    let mut out: Vec<(String, u32)> = observed
        .revisions
        .iter()
        .map(|r| (r.revision.label.clone(), observed.weight_of(&r.revision.id)))
        .collect();
    out.sort();
    out
}

fn production() -> EnvironmentName {
    EnvironmentName::new("production").expect("name")
}

/// G: B starts a canary, reaches 25 % and dies; A, alive on the same store all along (opened
/// before the deployment existed), adopts it once B's lease lapses and finishes it.
#[tokio::test(start_paused = true)]
async fn a_live_orchestrator_adopts_a_rollout_orphaned_by_a_dead_peer() {
    let sim = SimCluster::new();
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let strategy = canary(vec![
        CanaryStep::weight(25).expect("w"),
        CanaryStep::approval(),
        CanaryStep::weight(50).expect("w"),
    ]);
    let a = open(&store, &sim, &strategy, "a").await;
    let (_, phase) = common::deploy_and_wait(&a, "v1").await;
    assert_eq!(phase, Phase::Succeeded);

    let b = open(&store, &sim, &strategy, "b").await;
    let id = b.deploy(request("v2")).await.expect("deploy");
    until(&a, &id, asks_approval).await;
    drop(b); // a crash: B's lease stays until it expires

    let died = tokio::time::Instant::now();
    a.approve(&id, Actor::new("bob"), "looks good")
        .await
        .expect("approve");
    let phase = wait_for(&a, &id, Duration::from_secs(3600)).await;
    assert_eq!(phase, Phase::Succeeded);
    // Adopted within the lease TTL plus one scan, then the rest of the rollout (the canary's
    // 30 s scale-down delay and a few polls).
    let took = died.elapsed();
    assert!(
        took <= TTL + Duration::from_secs(10) + Duration::from_secs(60),
        "took {took:?}"
    );
    assert_eq!(serving(&sim), vec![("v2".to_string(), 100)]);
}

/// G: a deployment requested through an orchestrator that dies before it starts (still
/// pending) is started by a live one.
#[tokio::test(start_paused = true)]
async fn a_pending_deployment_of_a_dead_orchestrator_is_started_by_a_live_one() {
    let sim = SimCluster::new();
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let strategy = StrategySpec::Rolling(RollingSpec::default());
    let a = open(&store, &sim, &strategy, "a").await;
    let b = open(&store, &sim, &strategy, "b").await;
    // Stop B's drivers at once, as a crash right after the request was journaled would.
    let id = b.deploy(request("v1")).await.expect("deploy");
    drop(b);
    let phase = wait_for(&a, &id, TTL * 3).await;
    assert_eq!(phase, Phase::Succeeded);
}

/// G: while the peer that drives a deployment is alive, no other orchestrator acts on it: every
/// journal entry after `started` is written under one owner's lease, and the live peer's
/// drivers are not duplicated by the adoption scan.
#[tokio::test(start_paused = true)]
async fn a_live_peer_keeps_its_deployment() {
    let sim = SimCluster::new();
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let strategy = canary(vec![
        CanaryStep::weight(25).expect("w"),
        CanaryStep::pause(Duration::from_secs(300)),
    ]);
    let a = open(&store, &sim, &strategy, "a").await;
    let (_, phase) = common::deploy_and_wait(&a, "v1").await;
    assert_eq!(phase, Phase::Succeeded);
    let b = open(&store, &sim, &strategy, "b").await;
    let id = b.deploy(request("v2")).await.expect("deploy");
    let applies_before = sim.effective_applies();
    let phase = wait_for(&b, &id, Duration::from_secs(3600)).await;
    assert_eq!(phase, Phase::Succeeded);
    // 25 %, scale to full, promote, remove v1: four changes, none doubled by a second driver.
    let applies = sim.effective_applies() - applies_before;
    assert!(applies <= 5, "{applies} effective applies");
    drop(a);
}

/// H: a timed pause longer than the progress deadline is not taken for a stuck rollout, and
/// shows the time left.
#[tokio::test(start_paused = true)]
async fn a_pause_longer_than_the_progress_deadline_is_honoured() {
    let sim = SimCluster::new();
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let strategy = canary(vec![
        CanaryStep::weight(25).expect("w"),
        CanaryStep::pause(Duration::from_secs(20 * 60)),
    ]);
    let orch = open(&store, &sim, &strategy, "a").await;
    common::deploy_and_wait(&orch, "v1").await;
    let id = orch.deploy(request("v2")).await.expect("deploy");
    until(&orch, &id, reached_step_1).await;
    let status = orch.status(&id).await.expect("status");
    let until = status.waits_until().expect("a timed wait");
    let left = until.since(deploykit_core::Clock::now(&sim.clock()));
    assert!(
        left > Duration::from_secs(19 * 60) && left <= Duration::from_secs(20 * 60),
        "{left:?} left"
    );
    let phase = wait_for(&orch, &id, Duration::from_secs(3 * 3600)).await;
    assert_eq!(phase, Phase::Succeeded, "{:?}", orch.status(&id).await);
}

/// H: a pause of a day survives the orchestrator's death; the next one continues it where it
/// was, without restarting the clock and without a deadline rollback.
#[tokio::test(start_paused = true)]
async fn a_day_long_pause_survives_a_restart() {
    let sim = SimCluster::new();
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let day = Duration::from_secs(24 * 3600);
    let strategy = canary(vec![
        CanaryStep::weight(10).expect("w"),
        CanaryStep::pause(day),
    ]);
    let orch = open(&store, &sim, &strategy, "a").await;
    common::deploy_and_wait(&orch, "v1").await;
    let id = orch.deploy(request("v2")).await.expect("deploy");
    let started = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(6 * 3600)).await;
    assert_eq!(
        orch.status(&id).await.expect("status").phase,
        Phase::Progressing
    );
    drop(orch);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let orch = open(&store, &sim, &strategy, "a2").await;
    let phase = wait_for(&orch, &id, day * 2).await;
    assert_eq!(phase, Phase::Succeeded);
    let took = started.elapsed();
    assert!(
        took >= day && took < day + Duration::from_secs(600),
        "took {took:?}"
    );
}

/// B: a backend that refuses every change during a rollback does not end the deployment as
/// failed with traffic split; once it answers again the rollback completes, verified.
#[tokio::test(start_paused = true)]
async fn a_rollback_through_a_refusing_backend_waits_and_then_completes() {
    let sim = SimCluster::new();
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let strategy = canary(vec![
        CanaryStep::weight(25).expect("w"),
        CanaryStep::approval(),
    ]);
    let orch = open(&store, &sim, &strategy, "a").await;
    common::deploy_and_wait(&orch, "v1").await;
    let id = orch.deploy(request("v2")).await.expect("deploy");
    until(&orch, &id, asks_approval).await;
    sim.fail_next(Op::Apply, 10_000, Fault::Permanent);
    sim.fail_next(Op::Observe, 10_000, Fault::Permanent);
    orch.abort(&id, Actor::new("bob"), "bad")
        .await
        .expect("abort");
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let status = orch.status(&id).await.expect("status");
    assert_eq!(status.phase, Phase::RollingBack, "{:?}", status.outcome);
    sim.clear_faults();
    let phase = wait_for(&orch, &id, Duration::from_secs(600)).await;
    assert_eq!(phase, Phase::RolledBack);
    assert_eq!(serving(&sim), vec![("v1".to_string(), 100)]);
}

/// B: a rollback that cannot finish (the revision to return to is broken too) keeps the
/// service from being left to nobody: a manual rollback supersedes it once it has stalled for
/// its progress deadline, and the service ends on a verified revision.
#[tokio::test(start_paused = true)]
async fn a_stalled_rollback_is_superseded_by_the_next_deployment() {
    let sim = SimCluster::new();
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let strategy = StrategySpec::Rolling(RollingSpec::default());
    let orch = open(&store, &sim, &strategy, "a").await;
    assert_eq!(
        common::deploy_and_wait(&orch, "v1").await.1,
        Phase::Succeeded
    );
    assert_eq!(
        common::deploy_and_wait(&orch, "v2").await.1,
        Phase::Succeeded
    );
    // v3 is broken; while it rolls out, v2 (the revision to return to) starts crashing too.
    sim.set_behavior(
        &artifact("v3"),
        Behavior::CrashLoop {
            reason: "exit code 1".into(),
        },
    );
    sim.set_behavior(
        &artifact("v2"),
        Behavior::CrashLoop {
            reason: "exit code 1: the database is gone".into(),
        },
    );
    let svc = common::service().name;
    let v3 = orch.deploy(request("v3")).await.expect("deploy");
    until(&orch, &v3, |events| {
        events
            .iter()
            .any(|e| matches!(e, JournalEvent::RollbackStarted { .. }))
    })
    .await;
    // Kill the v2 instances so they restart into their crash loop.
    let v2 = common::revision_in(&environment_with(3, strategy.clone()), "v2");
    while sim.kill_instance(&svc, &v2.id) {}
    tokio::time::sleep(Duration::from_secs(900)).await;
    assert_eq!(
        orch.status(&v3).await.expect("status").phase,
        Phase::RollingBack
    );
    // The operator rolls back by hand to v1, the only healthy revision left.
    let v1 = common::revision_in(&environment_with(3, strategy.clone()), "v1");
    let back = orch
        .rollback(&svc, &production(), Some(&v1.id), Actor::new("bob"))
        .await
        .expect("rollback");
    let phase = wait_for(&orch, &back, Duration::from_secs(3600)).await;
    let v3_status = orch.status(&v3).await.expect("status");
    assert_eq!(v3_status.phase, Phase::Failed);
    let Some(Outcome::Failed { reason }) = &v3_status.outcome else {
        panic!("{:?}", v3_status.outcome)
    };
    assert!(reason.contains("superseded by"), "{reason}");
    assert_eq!(phase, Phase::Succeeded);
    assert_eq!(serving(&sim), vec![("v1".to_string(), 100)]);
}

/// I: deploying the revision that already serves is a no-op for every strategy: it succeeds
/// at once, starts no instance and changes nothing.
#[tokio::test(start_paused = true)]
async fn redeploying_the_serving_revision_changes_nothing() {
    for strategy in [
        StrategySpec::Rolling(RollingSpec::default()),
        StrategySpec::BlueGreen(BlueGreenSpec::default()),
        canary(vec![
            CanaryStep::weight(25).expect("w"),
            CanaryStep::pause(Duration::from_secs(60)),
        ]),
    ] {
        let sim = SimCluster::new();
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
        let orch = open(&store, &sim, &strategy, "a").await;
        assert_eq!(
            common::deploy_and_wait(&orch, "v1").await.1,
            Phase::Succeeded
        );
        let svc = common::service().name;
        let v1 = common::revision_in(&environment_with(3, strategy.clone()), "v1");
        let starts = sim.starts(&svc, &v1.id);
        let applies = sim.effective_applies();
        let (id, phase) = common::deploy_and_wait(&orch, "v1").await;
        assert_eq!(phase, Phase::Succeeded, "{}", strategy.name());
        assert_eq!(sim.starts(&svc, &v1.id), starts, "{}", strategy.name());
        assert_eq!(sim.effective_applies(), applies, "{}", strategy.name());
        let applied = orch
            .journal(&id)
            .await
            .expect("journal")
            .iter()
            .filter(|e| matches!(e.event, JournalEvent::Applied { .. }))
            .count();
        assert_eq!(applied, 0, "{}", strategy.name());
        assert_eq!(serving(&sim), vec![("v1".to_string(), 100)]);
    }
}

/// F: after a deployment that froze with traffic split, a manual rollback returns to the
/// revision that served last (v2), not to the one before it (v1).
#[tokio::test(start_paused = true)]
async fn a_manual_rollback_after_a_frozen_rollout_returns_to_the_serving_revision() {
    let sim = SimCluster::new();
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let strategy = canary(vec![
        CanaryStep::weight(25).expect("w"),
        CanaryStep::pause(Duration::from_secs(300)),
    ]);
    let orch = open(&store, &sim, &strategy, "a").await;
    assert_eq!(
        common::deploy_and_wait(&orch, "v1").await.1,
        Phase::Succeeded
    );
    assert_eq!(
        common::deploy_and_wait(&orch, "v2").await.1,
        Phase::Succeeded
    );
    let mut frozen = request("v3");
    frozen.failure_policy = Some(FailurePolicy::Freeze);
    let v3 = orch.deploy(frozen).await.expect("deploy");
    until(&orch, &v3, reached_step_1).await;
    // A permanent refusal freezes it where it is: 75/25.
    sim.fail_next(Op::Observe, 1, Fault::Permanent);
    assert_eq!(
        wait_for(&orch, &v3, Duration::from_secs(600)).await,
        Phase::Frozen
    );
    assert_eq!(
        serving(&sim),
        vec![("v2".to_string(), 75), ("v3".to_string(), 25)]
    );
    let svc = common::service().name;
    let back = orch
        .rollback(&svc, &production(), None, Actor::new("bob"))
        .await
        .expect("rollback");
    assert_eq!(
        orch.status(&back).await.expect("status").spec.target.label,
        "v2"
    );
    assert_eq!(
        wait_for(&orch, &back, Duration::from_secs(600)).await,
        Phase::Succeeded
    );
    assert_eq!(serving(&sim), vec![("v2".to_string(), 100)]);
}

/// `wait` on an orchestrator that does not run the deployment's environment follows a live
/// peer to the end, and returns an error naming the reason (instead of hanging) once nobody
/// can drive it.
#[tokio::test(start_paused = true)]
async fn wait_returns_when_nothing_can_drive_the_deployment() {
    let sim = SimCluster::new();
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let strategy = canary(vec![
        CanaryStep::weight(25).expect("w"),
        CanaryStep::pause(Duration::from_secs(120)),
    ]);
    let driver = open(&store, &sim, &strategy, "driver").await;
    // An orchestrator that runs only staging: it cannot drive production's deployments.
    let staging = deploykit_core::EnvironmentSpec::builder()
        .name("staging")
        .kind(deploykit_core::EnvironmentKind::Staging)
        .replicas(1)
        .build()
        .expect("staging");
    let watcher = Orchestrator::builder_shared(store.clone())
        .environment(staging, Arc::new(SimCluster::new()))
        .clock(Arc::new(sim.clock()))
        .owner("watcher")
        .config(config())
        .open()
        .await
        .expect("open");
    let v1 = driver.deploy(request("v1")).await.expect("deploy");
    assert_eq!(
        wait_for(&watcher, &v1, Duration::from_secs(600)).await,
        Phase::Succeeded
    );

    let v2 = driver.deploy(request("v2")).await.expect("deploy");
    until(&watcher, &v2, reached_step_1).await;
    drop(driver);
    let err = tokio::time::timeout(Duration::from_secs(3600), watcher.wait(&v2))
        .await
        .expect("wait returns")
        .expect_err("nobody drives it");
    let text = err.to_string();
    assert!(
        text.contains(&format!("nobody drives deployment {v2}")),
        "{text}"
    );
    assert!(
        text.contains("not configured in this orchestrator"),
        "{text}"
    );
    // A new orchestrator that runs production carries it on.
    let again = open(&store, &sim, &strategy, "again").await;
    assert_eq!(
        wait_for(&again, &v2, Duration::from_secs(3600)).await,
        Phase::Succeeded
    );
}

/// B: an outage longer than the progress deadline during a rollback, with a newer deployment
/// queued behind it, is waited out: once the backend answers again the rollback finishes,
/// verified, instead of being superseded for the time the backend was away (a case the
/// randomised worlds found).
#[tokio::test(start_paused = true)]
async fn an_outage_during_a_rollback_is_waited_out_not_superseded() {
    let sim = SimCluster::new();
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let manual = BlueGreenSpec::builder()
        .auto_promote(false)
        .build()
        .expect("bg");
    let strategy = StrategySpec::BlueGreen(manual);
    let orch = open(&store, &sim, &strategy, "a").await;
    assert_eq!(
        common::deploy_and_wait(&orch, "v1").await.1,
        Phase::Succeeded
    );
    let v2 = orch.deploy(request("v2")).await.expect("deploy");
    until(&orch, &v2, asks_approval).await;
    // The rollback journals its first action, whose apply never lands: the API goes away.
    sim.fail_next(Op::Apply, 10_000, Fault::Transient);
    orch.abort(&v2, Actor::new("bob"), "not today")
        .await
        .expect("abort");
    until(&orch, &v2, |events| {
        events
            .iter()
            .skip_while(|e| !matches!(e, JournalEvent::RollbackStarted { .. }))
            .any(|e| matches!(e, JournalEvent::Applied { .. }))
    })
    .await;
    sim.set_unreachable(true);
    sim.clear_faults();
    let v3 = orch.deploy(request("v3")).await.expect("deploy");
    tokio::time::sleep(Duration::from_secs(1500)).await;
    assert_eq!(
        orch.status(&v2).await.expect("status").phase,
        Phase::RollingBack
    );
    sim.set_unreachable(false);
    assert_eq!(
        wait_for(&orch, &v2, Duration::from_secs(600)).await,
        Phase::RolledBack
    );
    // v3 waits for it, then runs (to its own approval gate).
    until(&orch, &v3, asks_approval).await;
}
