//! The orchestrator end to end on the simulated cluster, on tokio's paused clock.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{deploy_and_wait, open, production, request};
use deploykit_core::audit::AuditAction;
use deploykit_core::journal::{JournalEvent, RollbackCause};
use deploykit_core::{Actor, Environment, Error, Outcome, Phase, Quantity, RevisionId, StateStore};
use deploykit_sqlite::SqliteStore;
use deploykit_testing::{Behavior, Fault, MemoryStore, Op, SimCluster};

fn store() -> Arc<dyn StateStore> {
    Arc::new(MemoryStore::new())
}

async fn serving(sim: &SimCluster) -> Vec<(String, u32, u32)> {
    let observed = sim.observe(&common::service().name).await.expect("observe");
    observed
        .revisions
        .iter()
        .map(|r| {
            let weight = observed
                .traffic
                .get(&r.revision.id)
                .map_or(0, |w| w.percent());
            (r.revision.label.clone(), r.ready(), weight)
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn rolling_deploys_replace_the_serving_revision() {
    let sim = SimCluster::new();
    let orch = open(store(), &sim, production(), "o1").await;
    assert_eq!(deploy_and_wait(&orch, "v1").await.1, Phase::Succeeded);
    assert_eq!(serving(&sim).await, vec![("v1".into(), 3, 100)]);
    let (id, phase) = deploy_and_wait(&orch, "v2").await;
    assert_eq!(phase, Phase::Succeeded);
    assert_eq!(serving(&sim).await, vec![("v2".into(), 3, 100)]);
    let status = orch.status(&id).await.expect("status");
    assert_eq!(status.previous.expect("previous").label, "v1");
    let svc = common::service().name;
    let env = production().name;
    let history: Vec<String> = orch
        .history(&svc, &env)
        .await
        .expect("history")
        .into_iter()
        .map(|r| r.label.clone())
        .collect();
    assert_eq!(history, ["v2", "v1"]);
}

#[tokio::test(start_paused = true)]
async fn readiness_failures_roll_back_at_the_deadline_with_the_reason() {
    // Failing readiness means "not ready yet" (a slow start looks the same), so it does not
    // fail fast: the (short) progress deadline ends the wait, with the readiness failure in
    // its reason.
    let sim = SimCluster::new();
    let mut env = common::environment(3, Quantity::Count(3), Quantity::Count(0));
    env.progress_deadline = Duration::from_secs(60);
    let orch = open(store(), &sim, env, "o1").await;
    deploy_and_wait(&orch, "v2").await;
    sim.set_behavior(
        &common::artifact("v3"),
        Behavior::FailReadiness {
            reason: "GET /health returned 503".into(),
        },
    );
    let started = tokio::time::Instant::now();
    let id = orch.deploy(request("v3")).await.expect("deploy");
    let status = orch.wait(&id).await.expect("wait");
    assert_eq!(status.phase, Phase::RolledBack);
    let (cause, reason) = status.rollback.expect("rollback recorded");
    assert_eq!(cause, RollbackCause::ProgressDeadline, "{reason}");
    assert!(
        reason.contains("3 of 3 instances failed readiness: GET /health returned 503"),
        "{reason}"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed > Duration::from_secs(60) && elapsed < Duration::from_secs(70),
        "{elapsed:?}"
    );
    assert_eq!(serving(&sim).await, vec![("v2".into(), 3, 100)]);
    // v2 never dropped below full capacity: no v2 instance was ever replaced.
    let svc = common::service().name;
    let v2 = status.previous.expect("previous");
    assert_eq!(sim.starts(&svc, &v2.id), 3);
}

#[tokio::test(start_paused = true)]
async fn crash_loops_roll_back_without_waiting_for_the_deadline() {
    let sim = SimCluster::new();
    let orch = open(store(), &sim, production(), "o1").await;
    deploy_and_wait(&orch, "v1").await;
    sim.set_behavior(
        &common::artifact("v2"),
        Behavior::CrashLoop {
            reason: "exit code 1: DATABASE_URL is not set".into(),
        },
    );
    let started = tokio::time::Instant::now();
    let (id, phase) = deploy_and_wait(&orch, "v2").await;
    assert_eq!(phase, Phase::RolledBack);
    let reason = orch
        .status(&id)
        .await
        .expect("status")
        .rollback
        .expect("rb")
        .1;
    assert!(
        reason.starts_with(
            "1 of 1 new instances are crash-looping: CrashLoopBackOff after 3 restarts"
        ),
        "{reason}"
    );
    assert!(started.elapsed() < Duration::from_secs(120));
    assert_eq!(serving(&sim).await, vec![("v1".into(), 3, 100)]);
}

#[tokio::test(start_paused = true)]
async fn no_progress_rolls_back_at_the_deadline() {
    let sim = SimCluster::new();
    let orch = open(store(), &sim, production(), "o1").await;
    deploy_and_wait(&orch, "v1").await;
    // Instances that take 20 minutes to start never fail a probe, but make no progress.
    sim.set_behavior(
        &common::artifact("v2"),
        Behavior::SlowStart(Duration::from_secs(1200)),
    );
    let started = tokio::time::Instant::now();
    let (id, phase) = deploy_and_wait(&orch, "v2").await;
    assert_eq!(phase, Phase::RolledBack);
    let (cause, reason) = orch
        .status(&id)
        .await
        .expect("status")
        .rollback
        .expect("rb");
    assert_eq!(cause, RollbackCause::ProgressDeadline);
    assert!(reason.contains("progress deadline 600s"), "{reason}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(600) && took < Duration::from_secs(620),
        "{took:?}"
    );
    assert_eq!(serving(&sim).await, vec![("v1".into(), 3, 100)]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_first_deployment_is_removed() {
    let sim = SimCluster::new();
    let orch = open(store(), &sim, production(), "o1").await;
    sim.set_behavior(
        &common::artifact("v1"),
        Behavior::FailStartup {
            reason: "startup probe: connection refused".into(),
        },
    );
    let (id, phase) = deploy_and_wait(&orch, "v1").await;
    assert_eq!(phase, Phase::Failed);
    let status = orch.status(&id).await.expect("status");
    let Some(Outcome::Failed { reason }) = status.outcome else {
        panic!("expected failure")
    };
    assert!(
        reason.contains("failed startup: startup probe: connection refused"),
        "{reason}"
    );
    assert!(reason.contains("no earlier revision"), "{reason}");
    assert!(serving(&sim).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn manual_rollback_to_any_kept_revision() {
    let sim = SimCluster::new();
    let orch = open(store(), &sim, production(), "o1").await;
    for v in ["v1", "v2", "v3"] {
        deploy_and_wait(&orch, v).await;
    }
    let svc = common::service().name;
    let env = production().name;
    // Default: the revision before the serving one.
    let id = orch
        .rollback(&svc, &env, None, Actor::new("bob"))
        .await
        .expect("rollback");
    assert_eq!(orch.wait(&id).await.expect("wait").phase, Phase::Succeeded);
    assert_eq!(serving(&sim).await, vec![("v2".into(), 3, 100)]);
    // Any kept revision by id.
    let history = orch.history(&svc, &env).await.expect("history");
    let v1 = history
        .iter()
        .find(|r| r.label == "v1")
        .expect("v1 kept")
        .id
        .clone();
    let id = orch
        .rollback(&svc, &env, Some(&v1), Actor::new("bob"))
        .await
        .expect("rollback");
    assert_eq!(orch.wait(&id).await.expect("wait").phase, Phase::Succeeded);
    assert_eq!(serving(&sim).await, vec![("v1".into(), 3, 100)]);
    // Unknown revisions are a clear error.
    let unknown = RevisionId::parse("0123456789abcdef").expect("id");
    let err = orch
        .rollback(&svc, &env, Some(&unknown), Actor::new("bob"))
        .await
        .expect_err("unknown revision");
    assert!(matches!(err, Error::NotFound { .. }));
    assert!(err.to_string().contains("kept: v1"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn history_is_bounded_by_the_limit() {
    let sim = SimCluster::new();
    let mut env = production();
    env.revision_history_limit = 2;
    let orch = open(store(), &sim, env.clone(), "o1").await;
    for v in ["v1", "v2", "v3", "v4", "v5"] {
        deploy_and_wait(&orch, v).await;
    }
    let labels: Vec<String> = orch
        .history(&common::service().name, &env.name)
        .await
        .expect("history")
        .into_iter()
        .map(|r| r.label.clone())
        .collect();
    assert_eq!(labels, ["v5", "v4", "v3"]);
}

#[tokio::test(start_paused = true)]
async fn abort_rolls_back_and_is_audited() {
    let sim = SimCluster::new();
    let orch = open(store(), &sim, production(), "o1").await;
    deploy_and_wait(&orch, "v1").await;
    sim.set_behavior(
        &common::artifact("v2"),
        Behavior::SlowStart(Duration::from_secs(100)),
    );
    let id = orch.deploy(request("v2")).await.expect("deploy");
    tokio::time::sleep(Duration::from_secs(10)).await;
    orch.abort(&id, Actor::new("carol"), "error rate up")
        .await
        .expect("abort");
    let status = orch.wait(&id).await.expect("wait");
    assert_eq!(status.phase, Phase::RolledBack);
    let (cause, reason) = status.rollback.expect("rb");
    assert_eq!(cause, RollbackCause::Aborted);
    assert_eq!(reason, "aborted by carol: error rate up");
    assert_eq!(serving(&sim).await, vec![("v1".into(), 3, 100)]);
    // Aborting again is refused with the phase.
    let err = orch
        .abort(&id, Actor::new("carol"), "again")
        .await
        .expect_err("terminal");
    assert!(err.to_string().contains("it is rolled back"), "{err}");
    let audit = orch.audit_log().await.expect("audit");
    let actions: Vec<(AuditAction, String)> = audit
        .iter()
        .map(|r| (r.action, r.actor.to_string()))
        .collect();
    assert_eq!(
        actions,
        vec![
            (AuditAction::Deploy, "alice".into()),
            (AuditAction::Deploy, "alice".into()),
            (AuditAction::Abort, "carol".into()),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn pause_holds_the_rollout_and_stops_the_deadline() {
    let sim = SimCluster::new();
    let orch = open(store(), &sim, production(), "o1").await;
    deploy_and_wait(&orch, "v1").await;
    let id = orch.deploy(request("v2")).await.expect("deploy");
    // Let it start, then pause before it completes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    orch.pause(&id, Actor::new("dave"), "watching dashboards")
        .await
        .expect("pause");
    let applies = sim.effective_applies();
    tokio::time::sleep(Duration::from_secs(900)).await;
    let status = orch.status(&id).await.expect("status");
    assert_eq!(status.phase, Phase::Paused);
    assert_eq!(
        sim.effective_applies(),
        applies,
        "a paused rollout changes nothing"
    );
    orch.resume(&id, Actor::new("dave")).await.expect("resume");
    assert_eq!(orch.wait(&id).await.expect("wait").phase, Phase::Succeeded);
    assert_eq!(serving(&sim).await, vec![("v2".into(), 3, 100)]);
}

#[tokio::test(start_paused = true)]
async fn deployments_of_one_service_run_one_at_a_time_in_order() {
    let sim = SimCluster::new();
    let orch = open(store(), &sim, production(), "o1").await;
    deploy_and_wait(&orch, "v1").await;
    let mut events = orch.subscribe();
    let a = orch.deploy(request("v2")).await.expect("v2");
    let b = orch.deploy(request("v3")).await.expect("v3");
    assert_eq!(orch.wait(&b).await.expect("wait").phase, Phase::Succeeded);
    assert_eq!(orch.status(&a).await.expect("a").phase, Phase::Succeeded);
    let mut order = Vec::new();
    while let Ok(e) = events.try_recv() {
        if matches!(
            e.entry.event,
            JournalEvent::Started { .. } | JournalEvent::Finished { .. }
        ) {
            order.push(format!("{} {}", e.revision, e.entry.event.kind()));
        }
    }
    assert_eq!(
        order,
        ["v2 started", "v2 finished", "v3 started", "v3 finished"]
    );
    // v3 replaced v2, not v1.
    let status = orch.status(&b).await.expect("b");
    assert_eq!(status.previous.expect("previous").label, "v2");
    assert_eq!(serving(&sim).await, vec![("v3".into(), 3, 100)]);
}

#[tokio::test(start_paused = true)]
async fn different_services_deploy_concurrently() {
    let sim = SimCluster::new();
    let orch = open(store(), &sim, production(), "o1").await;
    let started = tokio::time::Instant::now();
    let mut ids = Vec::new();
    for name in ["api", "web", "worker", "billing"] {
        let svc = deploykit_core::ServiceSpec::builder()
            .name(name)
            .build()
            .expect("svc");
        let req = deploykit_core::DeployRequest::builder()
            .service(svc)
            .environment("production")
            .artifact(common::artifact(name))
            .label("v1")
            .requested_by(Actor::new("ci"))
            .build();
        ids.push(orch.deploy(req).await.expect("deploy"));
    }
    for id in &ids {
        assert_eq!(orch.wait(id).await.expect("wait").phase, Phase::Succeeded);
    }
    // Run side by side: the four together take about as long as one.
    let one = {
        let sim = SimCluster::new();
        let orch = open(store(), &sim, production(), "o2").await;
        let t = tokio::time::Instant::now();
        deploy_and_wait(&orch, "v1").await;
        t.elapsed()
    };
    assert!(
        started.elapsed() <= one * 2,
        "{:?} vs {one:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn transient_errors_are_retried_and_permanent_ones_roll_back() {
    let sim = SimCluster::new();
    let orch = open(store(), &sim, production(), "o1").await;
    deploy_and_wait(&orch, "v1").await;
    sim.fail_next(Op::Observe, 5, Fault::Transient);
    sim.fail_next(Op::Apply, 2, Fault::TransientAfterEffect);
    assert_eq!(deploy_and_wait(&orch, "v2").await.1, Phase::Succeeded);
    assert_eq!(serving(&sim).await, vec![("v2".into(), 3, 100)]);

    let apply_calls = sim.calls(Op::Apply);
    sim.fail_call(Op::Apply, apply_calls, Fault::Permanent);
    let (id, phase) = deploy_and_wait(&orch, "v3").await;
    assert_eq!(phase, Phase::RolledBack);
    let (cause, reason) = orch
        .status(&id)
        .await
        .expect("status")
        .rollback
        .expect("rb");
    assert_eq!(cause, RollbackCause::EnvironmentError);
    assert!(reason.contains("403 forbidden"), "{reason}");
    assert_eq!(serving(&sim).await, vec![("v2".into(), 3, 100)]);
}

#[tokio::test(start_paused = true)]
async fn a_dead_orchestrators_lease_expires_and_another_takes_over() {
    let sim = SimCluster::new();
    let store = store();
    let first = open(store.clone(), &sim, production(), "host-a").await;
    deploy_and_wait(&first, "v1").await;
    sim.set_behavior(
        &common::artifact("v2"),
        Behavior::SlowStart(Duration::from_secs(5)),
    );
    let id = first.deploy(request("v2")).await.expect("deploy");
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(first); // the process dies holding the lease
    let second = open(store.clone(), &sim, production(), "host-b").await;
    let t = tokio::time::Instant::now();
    let status = second.wait(&id).await.expect("wait");
    assert_eq!(status.phase, Phase::Succeeded);
    // It had to wait for the 30 s lease to lapse.
    assert!(t.elapsed() >= Duration::from_secs(25), "{:?}", t.elapsed());
    assert_eq!(serving(&sim).await, vec![("v2".into(), 3, 100)]);
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_hands_leases_over_at_once() {
    let sim = SimCluster::new();
    let store = store();
    let first = open(store.clone(), &sim, production(), "host-a").await;
    deploy_and_wait(&first, "v1").await;
    sim.set_behavior(
        &common::artifact("v2"),
        Behavior::SlowStart(Duration::from_secs(5)),
    );
    let id = first.deploy(request("v2")).await.expect("deploy");
    tokio::time::sleep(Duration::from_secs(2)).await;
    first.shutdown().await.expect("shutdown");
    let t = tokio::time::Instant::now();
    let second = open(store.clone(), &sim, production(), "host-b").await;
    assert_eq!(
        second.wait(&id).await.expect("wait").phase,
        Phase::Succeeded
    );
    // No waiting for a 30 s lease to lapse: just the rollout's own steps.
    assert!(t.elapsed() < Duration::from_secs(25), "{:?}", t.elapsed());
}

#[tokio::test(start_paused = true)]
async fn bad_requests_are_clear_errors() {
    let sim = SimCluster::new();
    let orch = open(store(), &sim, production(), "o1").await;
    let mut req = request("v1");
    req.environment = "staging".into();
    let err = orch.deploy(req).await.expect_err("unknown env");
    assert_eq!(
        err.to_string(),
        "environment staging (configured: production) not found"
    );
    let mut req = request("v1");
    req.environment = "Prod!".into();
    let err = orch.deploy(req).await.expect_err("bad name");
    assert!(matches!(err, Error::InvalidSpec { ref field, .. } if field == "environment.name"));
    let err = orch
        .status(&deploykit_core::DeploymentId::new("nope"))
        .await
        .expect_err("unknown deployment");
    assert_eq!(err.to_string(), "deployment nope not found");
}

#[tokio::test(start_paused = true)]
async fn the_sqlite_store_drives_deployments_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn StateStore> = Arc::new(
        SqliteStore::open(dir.path().join("state.db"))
            .await
            .expect("open"),
    );
    let sim = SimCluster::new();
    let orch = open(store, &sim, production(), "o1").await;
    assert_eq!(deploy_and_wait(&orch, "v1").await.1, Phase::Succeeded);
    assert_eq!(deploy_and_wait(&orch, "v2").await.1, Phase::Succeeded);
    assert_eq!(serving(&sim).await, vec![("v2".into(), 3, 100)]);
}

#[tokio::test(start_paused = true)]
async fn two_live_orchestrators_never_drive_the_same_deployment() {
    let sim = SimCluster::new();
    let store = store();
    let a = open(store.clone(), &sim, production(), "host-a").await;
    deploy_and_wait(&a, "v1").await;
    // Three 40 s steps: the rollout outlives several 30 s lease periods.
    sim.set_behavior(
        &common::artifact("v2"),
        Behavior::SlowStart(Duration::from_secs(40)),
    );
    let id = a.deploy(request("v2")).await.expect("deploy");
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A second orchestrator on the same store resumes the same in-flight deployment.
    let b = open(store.clone(), &sim, production(), "host-b").await;
    let mut b_events = b.subscribe();
    let status = a.wait(&id).await.expect("wait");
    assert_eq!(status.phase, Phase::Succeeded);
    assert!(
        b_events.try_recv().is_err(),
        "host-b wrote to the journal while host-a held the lease"
    );
    assert_eq!(serving(&sim).await, vec![("v2".into(), 3, 100)]);
}

/// A process that shares the store but runs no orchestrator (the daemon's `/metrics`, a
/// dashboard) sees the same event stream through `JournalFollower`: every entry once, in
/// order, with the same context, whichever orchestrator wrote it and however often it polls;
/// `from_now` skips the history already there.
#[tokio::test(start_paused = true)]
async fn a_journal_follower_sees_the_orchestrators_events_exactly_once() {
    use deploykit_core::event::JournalFollower;
    let sim = SimCluster::new();
    let store = store();
    let a = open(store.clone(), &sim, production(), "host-a").await;
    deploy_and_wait(&a, "v1").await;
    let mut history = JournalFollower::from_start(store.clone());
    let mut follower = JournalFollower::from_now(store.clone())
        .await
        .expect("follower");
    let mut subscribed = a.subscribe();
    sim.set_behavior(
        &common::artifact("v3"),
        Behavior::FailReadiness {
            reason: "GET /health returned 503".into(),
        },
    );
    let v2 = a.deploy(request("v2")).await.expect("v2");
    let v3 = a.deploy(request("v3")).await.expect("v3");
    let mut followed = Vec::new();
    // Polls at odd moments, while entries are being written.
    for wait in [1, 7, 13, 2, 30, 5, 60, 1, 90, 3, 300] {
        tokio::time::sleep(Duration::from_millis(wait * 100)).await;
        followed.extend(follower.poll().await.expect("poll"));
    }
    assert_eq!(a.wait(&v2).await.expect("v2").phase, Phase::Succeeded);
    assert_eq!(a.wait(&v3).await.expect("v3").phase, Phase::RolledBack);
    followed.extend(follower.poll().await.expect("poll"));
    assert!(
        follower.poll().await.expect("poll").is_empty(),
        "seen twice"
    );
    let mut expected = Vec::new();
    while let Ok(event) = subscribed.try_recv() {
        expected.push(event);
    }
    let key = |e: &deploykit_core::Event| (e.deployment.clone(), e.entry.seq);
    let mut by_deployment = followed.clone();
    by_deployment.sort_by_key(key);
    expected.sort_by_key(key);
    assert!(expected.len() > 10, "{expected:?}");
    assert_eq!(by_deployment, expected);
    // Per deployment, in journal order.
    for id in [&v2, &v3] {
        let seqs: Vec<u64> = followed
            .iter()
            .filter(|e| &e.deployment == id)
            .map(|e| e.entry.seq)
            .collect();
        assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
    }
    // From the start: v1's history too, once.
    let all = history.poll().await.expect("history");
    assert_eq!(
        all.len(),
        expected.len() + all.iter().filter(|e| e.revision == "v1").count()
    );
    assert!(all.iter().any(|e| e.revision == "v1"));
    assert!(history.poll().await.expect("poll").is_empty());

    // A damaged journal (an `applied` before the deployment started) is left out after its
    // valid entries and listed; the stream of the others goes on (a whole copy of v2's
    // journal under another id). Written with no orchestrator running, which would take up
    // the damaged one.
    a.shutdown().await.expect("shutdown");
    let v2_journal = store.load(&v2).await.expect("load").expect("v2");
    let renamed = |entry: &deploykit_core::journal::JournalEntry,
                   id: &deploykit_core::DeploymentId| {
        let mut entry = entry.clone();
        if let JournalEvent::Created { spec } = &mut entry.event {
            std::sync::Arc::make_mut(spec).id = id.clone();
        }
        entry
    };
    let bogus = deploykit_core::DeploymentId::new("bogus-deployment");
    store
        .append(&bogus, &renamed(&v2_journal[0], &bogus))
        .await
        .expect("created");
    let mut applied = v2_journal
        .iter()
        .find(|e| matches!(e.event, JournalEvent::Applied { .. }))
        .expect("v2 applied something")
        .clone();
    applied.seq = 1;
    store.append(&bogus, &applied).await.expect("applied");
    let copy = deploykit_core::DeploymentId::new("copy-of-v2");
    for entry in &v2_journal {
        store
            .append(&copy, &renamed(entry, &copy))
            .await
            .expect("copy");
    }
    let more = follower
        .poll()
        .await
        .expect("a damaged journal is no store error");
    assert_eq!(
        more.iter().filter(|e| e.deployment == bogus).count(),
        1,
        "only the entry before the damage: {more:?}"
    );
    assert_eq!(
        more.iter().filter(|e| e.deployment == copy).count(),
        v2_journal.len()
    );
    let unreadable: Vec<_> = follower.unreadable().collect();
    assert_eq!(unreadable.len(), 1, "{unreadable:?}");
    assert_eq!(unreadable[0].0, &bogus);
    assert!(unreadable[0].1.contains("entry 1"), "{unreadable:?}");
    assert!(follower.poll().await.expect("poll").is_empty());
}

/// A follower that stops and a new one started from its saved cursor deliver every entry once
/// between them: the rest of a deployment that was in flight, all of one created meanwhile,
/// and none of the history before.
#[tokio::test(start_paused = true)]
async fn a_follower_resumed_from_a_cursor_misses_nothing_and_repeats_nothing() {
    use deploykit_core::event::{FollowerCursor, JournalFollower};
    let sim = SimCluster::new();
    let store = store();
    let a = open(store.clone(), &sim, production(), "host-a").await;
    deploy_and_wait(&a, "v1").await;
    let mut first = JournalFollower::from_now(store.clone())
        .await
        .expect("follower");
    let v2 = a.deploy(request("v2")).await.expect("v2");
    let mut delivered = Vec::new();
    while delivered.len() < 3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        delivered.extend(first.poll().await.expect("poll"));
    }
    assert!(!a.status(&v2).await.expect("status").phase.is_terminal());
    // Saved as JSON, as the daemon does, and the follower gone.
    let saved = serde_json::to_string(&first.cursor()).expect("cursor");
    drop(first);
    a.wait(&v2).await.expect("v2");
    let (v3, _) = deploy_and_wait(&a, "v3").await;
    let cursor: FollowerCursor = serde_json::from_str(&saved).expect("cursor");
    assert!(cursor.next.contains_key(&v2), "{cursor:?}");
    let mut second = JournalFollower::from_cursor(store.clone(), cursor)
        .await
        .expect("resumed");
    delivered.extend(second.poll().await.expect("poll"));
    assert!(second.poll().await.expect("poll").is_empty());
    for (id, label) in [(&v2, "v2"), (&v3, "v3")] {
        let seqs: Vec<u64> = delivered
            .iter()
            .filter(|e| &e.deployment == id)
            .map(|e| e.entry.seq)
            .collect();
        let journal = store.load(id).await.expect("load").expect(label).len() as u64;
        assert_eq!(seqs, (0..journal).collect::<Vec<_>>(), "{label}");
    }
    assert!(
        delivered.iter().all(|e| e.revision != "v1"),
        "history not repeated"
    );
    // Restarted again and again with nothing new in between: nothing is sent again.
    let mut cursor = second.cursor();
    for _ in 0..2 {
        let mut again = JournalFollower::from_cursor(store.clone(), cursor)
            .await
            .expect("resumed");
        let repeated = again.poll().await.expect("poll");
        assert!(repeated.is_empty(), "sent again: {repeated:?}");
        cursor = again.cursor();
    }
    // A cursor never saved is `from_now`: history is skipped.
    let mut fresh = JournalFollower::from_cursor(store.clone(), FollowerCursor::default())
        .await
        .expect("fresh");
    assert!(fresh.poll().await.expect("poll").is_empty());
}
