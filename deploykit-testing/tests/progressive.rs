//! Blue-green and canary rollouts with analysis, approvals and failure policies, end to end on
//! the simulated cluster with tokio's paused clock.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{environment_with, open_monitored, request, revision_in};
use deploykit_core::analysis::{AnalysisSpec, Condition, JudgedMetric, JudgementSpec, MetricCheck};
use deploykit_core::audit::AuditAction;
use deploykit_core::journal::{JournalEvent, RollbackCause};
use deploykit_core::strategy::{BlueGreenSpec, CanarySpec, CanaryStep};
use deploykit_core::{
    Actor, Error, FailurePolicy, Orchestrator, Outcome, Phase, StateStore, StrategySpec, Traffic,
};
use deploykit_testing::{MemoryStore, SimCluster, Snapshot};

fn store() -> Arc<dyn StateStore> {
    Arc::new(MemoryStore::new())
}

fn error_rate(count: u32) -> AnalysisSpec {
    AnalysisSpec::new(vec![
        MetricCheck::threshold("error-rate", "error_rate", Condition::below(0.05))
            .interval(Duration::from_secs(30))
            .count(count)
            .build()
            .expect("metric"),
    ])
    .expect("analysis")
}

fn canary(steps: Vec<CanaryStep>) -> StrategySpec {
    StrategySpec::Canary(CanarySpec::builder().steps(steps).build().expect("canary"))
}

/// Served weights after every change, as (label, percent) lists.
fn traffic_history(history: &[Snapshot]) -> Vec<Vec<(String, u32)>> {
    let mut out: Vec<Vec<(String, u32)>> = Vec::new();
    for snap in history {
        let w: Vec<(String, u32)> = snap.traffic.iter().map(|(l, w)| (l.clone(), *w)).collect();
        if out.last() != Some(&w) {
            out.push(w);
        }
    }
    out
}

fn pairs(v: &[(&str, u32)]) -> Vec<(String, u32)> {
    v.iter().map(|(l, w)| (l.to_string(), *w)).collect()
}

async fn start(
    sim: &SimCluster,
    strategy: StrategySpec,
) -> (Orchestrator, deploykit_core::EnvironmentSpec) {
    let env = environment_with(4, strategy);
    let orch = open_monitored(store(), sim, env.clone(), "o1").await;
    let (_, phase) = common::deploy_and_wait(&orch, "v1").await;
    assert_eq!(phase, Phase::Succeeded);
    (orch, env)
}

#[tokio::test(start_paused = true)]
async fn a_healthy_canary_walks_its_steps_and_is_promoted() {
    let sim = SimCluster::new();
    let strategy = canary(vec![
        CanaryStep::weight(25).expect("w"),
        CanaryStep::pause(Duration::from_secs(60)),
        CanaryStep::analysis(error_rate(3)),
        CanaryStep::weight(50).expect("w"),
        CanaryStep::weight(75).expect("w"),
    ]);
    let (orch, env) = start(&sim, strategy).await;
    let v2 = revision_in(&env, "v2");
    let svc = common::service().name;
    sim.set_metric(&svc, Some(&v2.id), "error_rate", vec![0.01]);
    let from = sim.history(&svc).len();
    let id = orch.deploy(request("v2")).await.expect("deploy");
    let status = orch.wait(&id).await.expect("wait");
    assert_eq!(status.phase, Phase::Succeeded);
    let history = &sim.history(&svc)[from..];
    // The stable revision keeps all 4 instances until promotion.
    let promoted_at = status.progress.promoted_at.expect("promoted");
    for snap in history.iter().filter(|s| s.at < promoted_at) {
        let v1 = snap
            .revisions
            .iter()
            .find(|r| r.1 == "v1")
            .expect("v1 present");
        assert_eq!((v1.2, v1.3), (4, 4), "stable lost capacity at {snap:?}");
    }
    assert_eq!(
        traffic_history(history),
        vec![
            pairs(&[("v1", 100)]),
            pairs(&[("v1", 75), ("v2", 25)]),
            pairs(&[("v1", 50), ("v2", 50)]),
            pairs(&[("v1", 25), ("v2", 75)]),
            pairs(&[("v2", 100)]),
        ]
    );
    // Three measurements 30 s apart, all successful.
    let ms = &status.progress.measurements;
    assert_eq!(ms.len(), 3);
    assert!(
        ms.windows(2)
            .all(|w| w[1].at.since(w[0].at) >= Duration::from_secs(30))
    );
    // The old revision stayed warm for the 30 s scale-down delay after promotion.
    let gone = history
        .iter()
        .find(|s| s.revisions.iter().all(|r| r.1 != "v1"))
        .expect("v1 removed");
    assert!(gone.at.since(promoted_at) >= Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn a_failing_analysis_sends_all_traffic_back_in_one_action() {
    let sim = SimCluster::new();
    let strategy = canary(vec![
        CanaryStep::weight(25).expect("w"),
        CanaryStep::analysis(error_rate(3)),
        CanaryStep::weight(50).expect("w"),
    ]);
    let (orch, env) = start(&sim, strategy).await;
    let v2 = revision_in(&env, "v2");
    let svc = common::service().name;
    sim.set_metric(&svc, Some(&v2.id), "error_rate", vec![0.01, 0.31]);
    let id = orch.deploy(request("v2")).await.expect("deploy");
    let status = orch.wait(&id).await.expect("wait");
    assert_eq!(status.phase, Phase::RolledBack);
    let (cause, reason) = status.rollback.clone().expect("rollback");
    assert_eq!(cause, RollbackCause::AnalysisFailed);
    assert!(
        reason.contains("metric error-rate failed 1 time(s), limit 0: 0.31 is not < 0.05"),
        "{reason}"
    );
    let Some(Outcome::RolledBack { verification }) = &status.outcome else {
        panic!("{:?}", status.outcome)
    };
    assert_eq!(verification, "v1 4/4 ready, 100% of traffic");
    // The first action of the rollback sent 100 % to stable with the canary still running.
    let journal = orch.journal(&id).await.expect("journal");
    let after = journal
        .iter()
        .skip_while(|e| !matches!(e.event, JournalEvent::RollbackStarted { .. }))
        .find_map(|e| match &e.event {
            JournalEvent::Applied { desired, .. } => Some(desired.clone()),
            _ => None,
        })
        .expect("rollback applied");
    let routes = after.traffic.routes().expect("routed");
    assert_eq!(routes.weight_of(&revision_in(&env, "v1").id), 100);
    assert_eq!(
        after.replicas_of(&v2.id),
        1,
        "canary still there during the switch"
    );
    let observed = deploykit_core::Environment::observe(&sim, &svc)
        .await
        .expect("observe");
    assert_eq!(observed.revisions.len(), 1);
    assert_eq!(observed.weight_of(&revision_in(&env, "v1").id), 100);
}

#[tokio::test(start_paused = true)]
async fn no_data_never_passes_an_analysis() {
    let sim = SimCluster::new();
    let strategy = canary(vec![
        CanaryStep::weight(25).expect("w"),
        CanaryStep::analysis(error_rate(2)),
    ]);
    let (orch, env) = start(&sim, strategy).await;
    let v2 = revision_in(&env, "v2");
    let svc = common::service().name;
    sim.set_metric(&svc, Some(&v2.id), "error_rate", vec![f64::NAN]);
    let id = orch.deploy(request("v2")).await.expect("deploy");
    // No data is inconclusive: the rollout waits for a human, however long.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let status = orch.status(&id).await.expect("status");
    assert_eq!(status.phase, Phase::Paused, "{:?}", status.rollback);
    let (gate, reason) = status.awaiting.clone().expect("awaiting");
    assert_eq!(gate, "analysis:step-1");
    assert!(
        reason.contains("no data 5 times in a row, limit 4"),
        "{reason}"
    );
    assert!(
        status
            .progress
            .measurements
            .iter()
            .all(|m| m.outcome == deploykit_core::analysis::MeasurementOutcome::NoData)
    );
    orch.reject(&id, Actor::new("dana"), "no evidence")
        .await
        .expect("reject");
    assert_eq!(orch.wait(&id).await.expect("wait").phase, Phase::RolledBack);
}

#[tokio::test(start_paused = true)]
async fn approval_steps_wait_for_a_human_and_are_audited() {
    let sim = SimCluster::new();
    let strategy = canary(vec![
        CanaryStep::weight(50).expect("w"),
        CanaryStep::approval(),
    ]);
    let (orch, _) = start(&sim, strategy).await;
    let id = orch.deploy(request("v2")).await.expect("deploy");
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let status = orch.status(&id).await.expect("status");
    assert_eq!(
        status.phase,
        Phase::Paused,
        "an approval gate waits, deadline or not"
    );
    assert_eq!(
        status.awaiting.as_ref().map(|a| a.0.as_str()),
        Some("step-1")
    );
    orch.approve(&id, Actor::new("bob"), "dashboards look fine")
        .await
        .expect("approve");
    assert_eq!(orch.wait(&id).await.expect("wait").phase, Phase::Succeeded);
    let err = orch
        .approve(&id, Actor::new("bob"), "again")
        .await
        .expect_err("nothing to approve");
    assert!(matches!(err, Error::InvalidTransition { .. }), "{err}");
    let audit = orch.audit_log().await.expect("audit");
    let approval = audit
        .iter()
        .find(|r| r.action == AuditAction::Approve)
        .expect("approval audited");
    assert_eq!(approval.actor.as_str(), "bob");
    assert_eq!(approval.detail, "step-1: dashboards look fine");
}

#[tokio::test(start_paused = true)]
async fn rejecting_a_gate_rolls_back() {
    let sim = SimCluster::new();
    let strategy = canary(vec![
        CanaryStep::weight(25).expect("w"),
        CanaryStep::approval(),
    ]);
    let (orch, _) = start(&sim, strategy).await;
    let id = orch.deploy(request("v2")).await.expect("deploy");
    tokio::time::sleep(Duration::from_secs(60)).await;
    orch.reject(&id, Actor::new("carol"), "checkout latency up")
        .await
        .expect("reject");
    let status = orch.wait(&id).await.expect("wait");
    assert_eq!(status.phase, Phase::RolledBack);
    assert_eq!(
        status.rollback.expect("rollback").1,
        "aborted by carol: rejected: checkout latency up"
    );
}

#[tokio::test(start_paused = true)]
async fn inconclusive_analysis_pauses_for_a_human() {
    let sim = SimCluster::new();
    let analysis = AnalysisSpec::new(vec![
        MetricCheck::builder()
            .name("latency")
            .kind(deploykit_core::analysis::MetricKind::Threshold {
                query: "p99_latency".into(),
                success: Condition::below(0.2),
                failure: Some(Condition::above(0.5)),
            })
            .build()
            .expect("metric"),
    ])
    .expect("analysis");
    let strategy = canary(vec![
        CanaryStep::weight(25).expect("w"),
        CanaryStep::analysis(analysis),
    ]);
    let (orch, env) = start(&sim, strategy).await;
    let svc = common::service().name;
    sim.set_metric(
        &svc,
        Some(&revision_in(&env, "v2").id),
        "p99_latency",
        vec![0.3],
    );
    let id = orch.deploy(request("v2")).await.expect("deploy");
    tokio::time::sleep(Duration::from_secs(120)).await;
    let status = orch.status(&id).await.expect("status");
    assert_eq!(status.phase, Phase::Paused);
    let (gate, reason) = status.awaiting.expect("awaiting");
    assert_eq!(gate, "analysis:step-1");
    assert!(
        reason.contains("0.3 is neither < 0.2 nor failing"),
        "{reason}"
    );
    orch.approve(&id, Actor::new("dana"), "known slow cache warm-up")
        .await
        .expect("approve");
    assert_eq!(orch.wait(&id).await.expect("wait").phase, Phase::Succeeded);
}

#[tokio::test(start_paused = true)]
async fn the_statistical_judgement_catches_a_worse_canary() {
    let sim = SimCluster::new();
    let judgement = JudgementSpec::builder()
        .metrics(vec![
            JudgedMetric::builder()
                .name("errors")
                .query("error_rate")
                .critical(true)
                .build(),
        ])
        .build();
    let analysis = AnalysisSpec::new(vec![
        MetricCheck::judgement("canary-judgement", judgement)
            .build()
            .expect("metric"),
    ])
    .expect("analysis");
    let strategy = canary(vec![
        CanaryStep::weight(25).expect("w"),
        CanaryStep::analysis(analysis),
    ]);
    let (orch, env) = start(&sim, strategy.clone()).await;
    let svc = common::service().name;
    let stable = [0.010, 0.012, 0.011, 0.013, 0.009, 0.010, 0.012, 0.011];
    let worse = [0.05, 0.06, 0.045, 0.055, 0.07, 0.052, 0.061, 0.049];
    let same = [0.011, 0.010, 0.012, 0.009, 0.013, 0.011, 0.010, 0.012];
    sim.set_metric(
        &svc,
        Some(&revision_in(&env, "v1").id),
        "error_rate",
        stable.to_vec(),
    );
    sim.set_metric(
        &svc,
        Some(&revision_in(&env, "v2").id),
        "error_rate",
        worse.to_vec(),
    );
    sim.set_metric(
        &svc,
        Some(&revision_in(&env, "v3").id),
        "error_rate",
        same.to_vec(),
    );
    let id = orch.deploy(request("v2")).await.expect("deploy");
    let status = orch.wait(&id).await.expect("wait");
    assert_eq!(status.phase, Phase::RolledBack);
    let reason = status.rollback.expect("rollback").1;
    assert!(reason.contains("critical metric errors failed"), "{reason}");
    let id = orch.deploy(request("v3")).await.expect("deploy");
    let status = orch.wait(&id).await.expect("wait");
    assert_eq!(
        status.phase,
        Phase::Succeeded,
        "{:?}",
        status.progress.measurements
    );
    assert_eq!(status.progress.measurements[0].value, Some(100.0));
}

#[tokio::test(start_paused = true)]
async fn analysis_without_a_monitor_is_refused_up_front() {
    let sim = SimCluster::new();
    let env = environment_with(2, canary(vec![CanaryStep::analysis(error_rate(1))]));
    let orch = common::open(store(), &sim, env, "o1").await;
    let err = orch.deploy(request("v1")).await.expect_err("no monitor");
    assert!(
        matches!(&err, Error::InvalidSpec { field, .. } if field == "strategy"),
        "{err}"
    );
    assert!(err.to_string().contains("has no monitor"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn header_routes_and_mirrors_reach_the_environment() {
    let sim = SimCluster::new();
    let strategy = canary(vec![
        CanaryStep::SetHeaderRoute {
            name: "x-canary".into(),
            value: "true".into(),
        },
        CanaryStep::SetMirror {
            percent: deploykit_core::Weight::new(10).expect("w"),
        },
        CanaryStep::approval(),
    ]);
    let (orch, env) = start(&sim, strategy).await;
    let id = orch.deploy(request("v2")).await.expect("deploy");
    tokio::time::sleep(Duration::from_secs(30)).await;
    let svc = common::service().name;
    let observed = deploykit_core::Environment::observe(&sim, &svc)
        .await
        .expect("observe");
    let Traffic::Routed(routes) = &observed.routing else {
        panic!("{:?}", observed.routing)
    };
    let v2 = revision_in(&env, "v2").id;
    let header = routes.header.as_ref().expect("header route");
    assert_eq!(
        (
            header.name.as_str(),
            header.value.as_str(),
            &header.revision
        ),
        ("x-canary", "true", &v2)
    );
    assert_eq!(
        routes.mirror.as_ref().expect("mirror").percent.percent(),
        10
    );
    assert_eq!(routes.weight_of(&revision_in(&env, "v1").id), 100);
    orch.abort(&id, Actor::new("ops"), "done looking")
        .await
        .expect("abort");
    assert_eq!(orch.wait(&id).await.expect("wait").phase, Phase::RolledBack);
}

#[tokio::test(start_paused = true)]
async fn blue_green_previews_promotes_and_rolls_back_instantly_in_the_window() {
    let sim = SimCluster::new();
    let (orch, env) = start(&sim, StrategySpec::BlueGreen(BlueGreenSpec::default())).await;
    let svc = common::service().name;
    let (v1, v2) = (revision_in(&env, "v1"), revision_in(&env, "v2"));
    let from = sim.history(&svc).len();
    let id = orch.deploy(request("v2")).await.expect("deploy");
    // Wait for promotion, then abort inside the 30 s scale-down window.
    let mut events = orch.subscribe();
    loop {
        let e = events.recv().await.expect("event");
        if matches!(e.entry.event, JournalEvent::Promoted) {
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let v1_starts = sim.starts(&svc, &v1.id);
    let t = tokio::time::Instant::now();
    orch.abort(&id, Actor::new("erin"), "conversion dropped")
        .await
        .expect("abort");
    let status = orch.wait(&id).await.expect("wait");
    assert_eq!(status.phase, Phase::RolledBack);
    assert!(
        t.elapsed() <= Duration::from_secs(2),
        "rollback took {:?}",
        t.elapsed()
    );
    assert_eq!(
        sim.starts(&svc, &v1.id),
        v1_starts,
        "no new instances for the rollback"
    );
    let history = &sim.history(&svc)[from..];
    // Before promotion: v2 on the preview route only, v1 with all traffic.
    let preview = history
        .iter()
        .find(|s| {
            s.routing
                .routes()
                .is_some_and(|r| r.preview.as_ref() == Some(&v2.id))
        })
        .expect("preview route");
    assert_eq!(preview.traffic.get("v1"), Some(&100));
    assert_eq!(
        traffic_history(history),
        vec![
            pairs(&[("v1", 100)]),
            pairs(&[("v2", 100)]),
            pairs(&[("v1", 100)])
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn blue_green_can_wait_for_a_manual_promotion() {
    let sim = SimCluster::new();
    let spec = BlueGreenSpec::builder()
        .auto_promote(false)
        .build()
        .expect("spec");
    let (orch, env) = start(&sim, StrategySpec::BlueGreen(spec)).await;
    let id = orch.deploy(request("v2")).await.expect("deploy");
    tokio::time::sleep(Duration::from_secs(900)).await;
    let status = orch.status(&id).await.expect("status");
    assert_eq!(
        status.awaiting.as_ref().map(|a| a.0.as_str()),
        Some("promotion")
    );
    let svc = common::service().name;
    let observed = deploykit_core::Environment::observe(&sim, &svc)
        .await
        .expect("observe");
    assert_eq!(observed.weight_of(&revision_in(&env, "v1").id), 100);
    orch.approve(&id, Actor::new("frank"), "QA signed off")
        .await
        .expect("approve");
    assert_eq!(orch.wait(&id).await.expect("wait").phase, Phase::Succeeded);
    let observed = deploykit_core::Environment::observe(&sim, &svc)
        .await
        .expect("observe");
    assert_eq!(observed.revisions.len(), 1);
    assert_eq!(observed.weight_of(&revision_in(&env, "v2").id), 100);
}

#[tokio::test(start_paused = true)]
async fn the_freeze_policy_stops_where_it_stands() {
    let sim = SimCluster::new();
    let strategy = canary(vec![
        CanaryStep::weight(25).expect("w"),
        CanaryStep::analysis(error_rate(1)),
        CanaryStep::weight(50).expect("w"),
    ]);
    let (orch, env) = start(&sim, strategy).await;
    let svc = common::service().name;
    sim.set_metric(
        &svc,
        Some(&revision_in(&env, "v2").id),
        "error_rate",
        vec![0.2],
    );
    let mut req = request("v2");
    req.failure_policy = Some(FailurePolicy::Freeze);
    let id = orch.deploy(req).await.expect("deploy");
    let status = orch.wait(&id).await.expect("wait");
    assert_eq!(status.phase, Phase::Frozen);
    let observed = deploykit_core::Environment::observe(&sim, &svc)
        .await
        .expect("observe");
    assert_eq!(
        observed.weight_of(&revision_in(&env, "v2").id),
        25,
        "traffic kept as it was"
    );
}

#[tokio::test(start_paused = true)]
async fn the_pause_policy_holds_for_a_human() {
    let sim = SimCluster::new();
    let strategy = canary(vec![
        CanaryStep::weight(25).expect("w"),
        CanaryStep::analysis(error_rate(1)),
    ]);
    let (orch, env) = start(&sim, strategy).await;
    let svc = common::service().name;
    sim.set_metric(
        &svc,
        Some(&revision_in(&env, "v2").id),
        "error_rate",
        vec![0.2],
    );
    let mut req = request("v2");
    req.failure_policy = Some(FailurePolicy::Pause);
    let id = orch.deploy(req).await.expect("deploy");
    tokio::time::sleep(Duration::from_secs(120)).await;
    let status = orch.status(&id).await.expect("status");
    assert_eq!(status.phase, Phase::Paused);
    assert_eq!(
        status.awaiting.as_ref().map(|a| a.0.as_str()),
        Some("failure")
    );
    orch.reject(&id, Actor::new("gus"), "roll it back")
        .await
        .expect("reject");
    assert_eq!(orch.wait(&id).await.expect("wait").phase, Phase::RolledBack);
}
