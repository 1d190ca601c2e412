//! What analysis makes of missing evidence (issue 14, classes D and E), end to end on the
//! simulated cluster with tokio's paused clock:
//!
//! - no data (an idle canary) never passes and never fails a healthy revision: the run is
//!   inconclusive and the rollout pauses at gate `analysis:<run>`, saying the canary has
//!   received no traffic;
//! - a measurement waits one interval after the traffic it judges was applied;
//! - a minimum sample count holds the verdict until the canary has had enough requests;
//! - in a statistical judgement, NaN and ±Inf samples are missing data, not dropped.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{open_monitored, request, revision_in};
use deploykit_config::Config;
use deploykit_core::analysis::{
    AnalysisSpec, Condition, JudgedMetric, JudgementSpec, MeasurementOutcome, MetricCheck,
    MinSamples,
};
use deploykit_core::journal::JournalEvent;
use deploykit_core::strategy::{CanarySpec, CanaryStep};
use deploykit_core::{
    Actor, DeploymentId, DeploymentStatus, Error, Orchestrator, Phase, StateStore, StrategySpec,
    Timestamp,
};
use deploykit_testing::{MemoryStore, SimCluster};

fn error_rate(interval: Option<u64>, count: u32) -> MetricCheck {
    let check = MetricCheck::threshold("error-rate", "error_rate", Condition::below(0.05));
    match interval {
        Some(secs) => check
            .interval(Duration::from_secs(secs))
            .count(count)
            .build(),
        None => check.count(count).build(),
    }
    .expect("metric")
}

fn analysis(metric: MetricCheck) -> AnalysisSpec {
    AnalysisSpec::new(vec![metric]).expect("analysis")
}

fn canary(steps: Vec<CanaryStep>, background: Option<AnalysisSpec>) -> StrategySpec {
    let mut spec = CanarySpec::builder().steps(steps).build().expect("canary");
    spec.background_analysis = background;
    StrategySpec::Canary(spec)
}

/// An orchestrator with v1 serving under `strategy`.
async fn start(
    sim: &SimCluster,
    strategy: StrategySpec,
) -> (Orchestrator, deploykit_core::EnvironmentSpec) {
    let env = common::environment_with(4, strategy);
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let orch = open_monitored(store, sim, env.clone(), "o1").await;
    let (_, phase) = common::deploy_and_wait(&orch, "v1").await;
    assert_eq!(phase, Phase::Succeeded);
    (orch, env)
}

/// Polls (on tokio's clock) until `done` holds for the deployment's status; six hours of
/// simulated time without it fails the test.
async fn until(
    orch: &Orchestrator,
    id: &DeploymentId,
    what: &str,
    done: impl Fn(&DeploymentStatus) -> bool,
) -> DeploymentStatus {
    let start = tokio::time::Instant::now();
    loop {
        let status = orch.status(id).await.expect("status");
        if done(&status) {
            return status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(6 * 3600),
            "never {what}: {} {:?} {:?}",
            status.phase,
            status.rollback,
            status.progress.measurements
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Paused at a gate, or ended.
async fn settled(orch: &Orchestrator, id: &DeploymentId) -> DeploymentStatus {
    until(orch, id, "paused at a gate or ended", |s| {
        s.awaiting.is_some() || s.phase.is_terminal()
    })
    .await
}

/// When the journal applied traffic that gives `label` exactly `percent`.
async fn applied_weight(
    orch: &Orchestrator,
    id: &DeploymentId,
    env: &deploykit_core::EnvironmentSpec,
    label: &str,
    percent: u32,
) -> Timestamp {
    let canary = revision_in(env, label).id;
    orch.journal(id)
        .await
        .expect("journal")
        .iter()
        .find_map(|e| match &e.event {
            JournalEvent::Applied { desired, .. }
                if desired
                    .traffic
                    .routes()
                    .is_some_and(|r| r.weight_of(&canary) == percent) =>
            {
                Some(e.at)
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("{label} never got {percent}%"))
}

#[tokio::test(start_paused = true)]
async fn an_idle_canary_is_paused_as_inconclusive_not_rolled_back() {
    // No metric at all for v2 (an idle canary: the query returns nothing), then NaN (0/0).
    for idle in [None, Some(f64::NAN)] {
        let sim = SimCluster::new();
        let strategy = canary(
            vec![
                CanaryStep::weight(25).expect("w"),
                CanaryStep::analysis(analysis(error_rate(Some(30), 2))),
            ],
            None,
        );
        let (orch, env) = start(&sim, strategy).await;
        let svc = common::service().name;
        if let Some(v) = idle {
            sim.set_metric(
                &svc,
                Some(&revision_in(&env, "v2").id),
                "error_rate",
                vec![v],
            );
        }
        let id = orch.deploy(request("v2")).await.expect("deploy");
        let status = settled(&orch, &id).await;
        assert_eq!(
            status.phase,
            Phase::Paused,
            "{idle:?}: an idle canary is not rolled back: {:?}",
            status.rollback
        );
        let (gate, reason) = status.awaiting.clone().expect("awaiting");
        assert_eq!(gate, "analysis:step-1");
        assert!(
            reason.contains("the canary has received no traffic"),
            "{idle:?}: {reason}"
        );
        assert!(reason.contains("no data 5 times in a row"), "{reason}");
        let ms = &status.progress.measurements;
        assert_eq!(ms.len(), 5, "{ms:?}");
        assert!(
            ms.iter().all(|m| m.outcome == MeasurementOutcome::NoData),
            "no data is neither a pass nor a failure: {ms:?}"
        );
        // The human decides: approving goes on without the evidence.
        orch.approve(&id, Actor::new("dana"), "nobody uses it at night")
            .await
            .expect("approve");
        assert_eq!(orch.wait(&id).await.expect("wait").phase, Phase::Succeeded);
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_canary_under_background_analysis_pauses_and_an_approval_lets_it_promote() {
    let sim = SimCluster::new();
    let background = analysis(
        MetricCheck::threshold("bg-error-rate", "error_rate", Condition::below(0.05))
            .interval(Duration::from_secs(10))
            .build()
            .expect("metric"),
    );
    let strategy = canary(
        vec![
            CanaryStep::weight(25).expect("w"),
            CanaryStep::pause(Duration::from_secs(120)),
            CanaryStep::weight(50).expect("w"),
        ],
        Some(background),
    );
    let (orch, _) = start(&sim, strategy).await;
    let id = orch.deploy(request("v2")).await.expect("deploy");
    let status = settled(&orch, &id).await;
    assert_eq!(status.phase, Phase::Paused, "{:?}", status.rollback);
    let (gate, reason) = status.awaiting.clone().expect("awaiting");
    assert_eq!(gate, "analysis:background");
    assert!(
        reason.contains("the canary has received no traffic"),
        "{reason}"
    );
    // Approved, the background analysis goes on, and promotion accepts its no-data
    // measurements (it waited for a successful one before, forever).
    orch.approve(&id, Actor::new("dana"), "idle service")
        .await
        .expect("approve");
    let status = tokio::time::timeout(Duration::from_secs(3600), orch.wait(&id))
        .await
        .expect("the rollout ends after the approval")
        .expect("wait");
    assert_eq!(status.phase, Phase::Succeeded, "{:?}", status.rollback);
    assert!(
        status
            .progress
            .measurements
            .iter()
            .all(|m| m.outcome == MeasurementOutcome::NoData)
    );
}

#[tokio::test(start_paused = true)]
async fn measurements_wait_one_interval_after_the_traffic_they_judge() {
    let sim = SimCluster::new();
    let background = analysis(
        MetricCheck::threshold("bg-error-rate", "error_rate", Condition::below(0.05))
            .interval(Duration::from_secs(20))
            .build()
            .expect("metric"),
    );
    let strategy = canary(
        vec![
            CanaryStep::weight(25).expect("w"),
            CanaryStep::analysis(analysis(error_rate(Some(30), 2))),
            CanaryStep::weight(50).expect("w"),
            // Measured once, without an interval: still not before the traffic settled.
            CanaryStep::analysis(analysis(error_rate(None, 1))),
        ],
        Some(background),
    );
    let (orch, env) = start(&sim, strategy).await;
    let svc = common::service().name;
    sim.set_metric(
        &svc,
        Some(&revision_in(&env, "v2").id),
        "error_rate",
        vec![0.01],
    );
    let id = orch.deploy(request("v2")).await.expect("deploy");
    let status = orch.wait(&id).await.expect("wait");
    assert_eq!(status.phase, Phase::Succeeded, "{:?}", status.rollback);
    let at25 = applied_weight(&orch, &id, &env, "v2", 25).await;
    let at50 = applied_weight(&orch, &id, &env, "v2", 50).await;
    let ms = &status.progress.measurements;
    let first = |run: &str| {
        ms.iter()
            .find(|m| m.run == run)
            .unwrap_or_else(|| panic!("no {run} measurement: {ms:?}"))
            .at
    };
    assert!(
        first("step-1").since(at25) >= Duration::from_secs(30),
        "step-1 measured {:?} after 25% was applied",
        first("step-1").since(at25)
    );
    assert!(
        first("step-3").since(at50) >= deploykit_core::analysis::SETTLE_WITHOUT_INTERVAL,
        "step-3 measured {:?} after 50% was applied",
        first("step-3").since(at50)
    );
    // The background analysis measures only traffic the canary has had for an interval: not
    // while it had none, and not in the first interval after the split changed.
    for m in ms.iter().filter(|m| m.run == "background") {
        assert!(m.at.since(at25) >= Duration::from_secs(20), "{m:?}");
        assert!(
            m.at < at50 || m.at.since(at50) >= Duration::from_secs(20),
            "{m:?} too soon after 50% ({at50})"
        );
    }
    assert!(ms.iter().any(|m| m.run == "background"));
}

#[tokio::test(start_paused = true)]
async fn background_analysis_waits_for_a_slow_canary_to_receive_traffic() {
    let sim = SimCluster::new();
    let background = analysis(
        MetricCheck::threshold("bg-error-rate", "error_rate", Condition::below(0.05))
            .interval(Duration::from_secs(10))
            .build()
            .expect("metric"),
    );
    let strategy = canary(
        vec![
            CanaryStep::weight(25).expect("w"),
            CanaryStep::pause(Duration::from_secs(60)),
        ],
        Some(background),
    );
    let (orch, env) = start(&sim, strategy).await;
    // Two minutes to start: no traffic reaches v2 until then, and no measurement either.
    sim.set_behavior(
        &common::artifact("v2"),
        deploykit_testing::Behavior::SlowStart(Duration::from_secs(120)),
    );
    let svc = common::service().name;
    sim.set_metric(
        &svc,
        Some(&revision_in(&env, "v2").id),
        "error_rate",
        vec![0.01],
    );
    let id = orch.deploy(request("v2")).await.expect("deploy");
    let status = orch.wait(&id).await.expect("wait");
    assert_eq!(status.phase, Phase::Succeeded, "{:?}", status.rollback);
    let at25 = applied_weight(&orch, &id, &env, "v2", 25).await;
    let ms = &status.progress.measurements;
    assert!(!ms.is_empty());
    for m in ms {
        assert!(
            m.at.since(at25) >= Duration::from_secs(10),
            "{m:?}: measured before v2 had traffic for an interval ({at25})"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn background_measurements_do_not_keep_a_canary_that_never_gets_ready_alive() {
    let sim = SimCluster::new();
    let background = analysis(
        MetricCheck::threshold("bg-error-rate", "error_rate", Condition::below(0.05))
            .interval(Duration::from_secs(20))
            .build()
            .expect("metric"),
    );
    // The background analysis measures once the canary takes traffic — which a canary whose
    // instances never get ready never does.
    let steps = vec![CanaryStep::weight(50).expect("w")];
    let (orch, env) = start(&sim, canary(steps, Some(background))).await;
    sim.set_behavior(
        &common::artifact("v2"),
        deploykit_testing::Behavior::FailReadiness {
            reason: "GET /health returned 503".into(),
        },
    );
    let svc = common::service().name;
    sim.set_metric(
        &svc,
        Some(&revision_in(&env, "v2").id),
        "error_rate",
        vec![0.01],
    );
    let id = orch.deploy(request("v2")).await.expect("deploy");
    let status = tokio::time::timeout(Duration::from_secs(6 * 3600), orch.wait(&id))
        .await
        .expect("a canary that never gets ready is not kept alive by its measurements")
        .expect("wait");
    assert_eq!(status.phase, Phase::RolledBack);
    assert!(status.progress.measurements.is_empty());
}

fn with_min_samples(count: u64) -> MetricCheck {
    MetricCheck::threshold("error-rate", "error_rate", Condition::below(0.05))
        .interval(Duration::from_secs(30))
        .count(2)
        .min_samples(MinSamples::new("requests", count))
        .build()
        .expect("metric")
}

#[tokio::test(start_paused = true)]
async fn a_minimum_sample_count_holds_the_verdict_until_the_canary_has_enough_traffic() {
    let sim = SimCluster::new();
    let strategy = canary(
        vec![
            CanaryStep::weight(25).expect("w"),
            CanaryStep::analysis(analysis(with_min_samples(20))),
        ],
        None,
    );
    let (orch, env) = start(&sim, strategy).await;
    let (svc, v2) = (common::service().name, revision_in(&env, "v2").id);
    // A bad error rate, but from 3 requests: not enough to judge either way.
    sim.set_metric(&svc, Some(&v2), "error_rate", vec![0.5]);
    sim.set_metric(&svc, Some(&v2), "requests", vec![3.0]);
    let id = orch.deploy(request("v2")).await.expect("deploy");
    let status = until(&orch, &id, "measured", |s| {
        !s.progress.measurements.is_empty() || s.phase.is_terminal()
    })
    .await;
    assert_eq!(status.phase, Phase::Progressing, "{:?}", status.rollback);
    let m = &status.progress.measurements[0];
    assert_eq!(m.outcome, MeasurementOutcome::NoData, "{m:?}");
    assert!(m.detail.contains("requests = 3, need 20"), "{m:?}");
    // Enough traffic now: the error rate is judged, and fails.
    sim.set_metric(&svc, Some(&v2), "requests", vec![50.0]);
    let status = orch.wait(&id).await.expect("wait");
    assert_eq!(status.phase, Phase::RolledBack);
    let reason = status.rollback.expect("rollback").1;
    assert!(reason.contains("0.5 is not < 0.05"), "{reason}");
}

#[tokio::test(start_paused = true)]
async fn a_good_value_without_requests_behind_it_does_not_pass() {
    let sim = SimCluster::new();
    let strategy = canary(
        vec![
            CanaryStep::weight(25).expect("w"),
            CanaryStep::analysis(analysis(with_min_samples(20))),
        ],
        None,
    );
    let (orch, env) = start(&sim, strategy).await;
    let (svc, v2) = (common::service().name, revision_in(&env, "v2").id);
    // A stale series says 0.01, but the canary has had no request.
    sim.set_metric(&svc, Some(&v2), "error_rate", vec![0.01]);
    sim.set_metric(&svc, Some(&v2), "requests", vec![0.0]);
    let id = orch.deploy(request("v2")).await.expect("deploy");
    let status = settled(&orch, &id).await;
    assert_eq!(status.phase, Phase::Paused, "{:?}", status.rollback);
    let (gate, reason) = status.awaiting.expect("awaiting");
    assert_eq!(gate, "analysis:step-1");
    assert!(
        reason.contains("the canary has received no traffic (requests = 0, need 20)"),
        "{reason}"
    );
    assert!(
        status
            .progress
            .measurements
            .iter()
            .all(|m| m.outcome == MeasurementOutcome::NoData)
    );
}

fn judgement_step() -> CanaryStep {
    let judgement = JudgementSpec::builder()
        .metrics(vec![
            JudgedMetric::builder()
                .name("p99")
                .query("latency_p99")
                .build(),
        ])
        .build();
    CanaryStep::analysis(analysis(
        MetricCheck::judgement("canary-judgement", judgement)
            .build()
            .expect("metric"),
    ))
}

#[tokio::test(start_paused = true)]
async fn a_judgement_of_mostly_infinite_samples_fails() {
    let sim = SimCluster::new();
    let strategy = canary(
        vec![CanaryStep::weight(25).expect("w"), judgement_step()],
        None,
    );
    let (orch, env) = start(&sim, strategy).await;
    let svc = common::service().name;
    let baseline: Vec<f64> = (0..20).map(|i| 0.200 + f64::from(i % 5) * 0.001).collect();
    // 17 of 20 canary p99 samples are +Inf (beyond the histogram's top bucket); the other 3
    // look just like the baseline.
    let mut canary = vec![f64::INFINITY; 17];
    canary.extend([0.201, 0.202, 0.203]);
    sim.set_metric(
        &svc,
        Some(&revision_in(&env, "v1").id),
        "latency_p99",
        baseline,
    );
    sim.set_metric(
        &svc,
        Some(&revision_in(&env, "v2").id),
        "latency_p99",
        canary,
    );
    let id = orch.deploy(request("v2")).await.expect("deploy");
    let status = orch.wait(&id).await.expect("wait");
    assert_eq!(
        status.phase,
        Phase::RolledBack,
        "{:?}",
        status.progress.measurements
    );
    let reason = status.rollback.expect("rollback").1;
    assert!(
        reason.contains("p99: 17 of 20 canary samples missing (not a number, or infinite)"),
        "{reason}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_judgement_of_an_idle_canary_is_inconclusive() {
    let sim = SimCluster::new();
    let strategy = canary(
        vec![CanaryStep::weight(25).expect("w"), judgement_step()],
        None,
    );
    let (orch, env) = start(&sim, strategy).await;
    let svc = common::service().name;
    let baseline: Vec<f64> = (0..20).map(|i| 0.200 + f64::from(i % 5) * 0.001).collect();
    sim.set_metric(
        &svc,
        Some(&revision_in(&env, "v1").id),
        "latency_p99",
        baseline,
    );
    sim.set_metric(
        &svc,
        Some(&revision_in(&env, "v2").id),
        "latency_p99",
        vec![f64::NAN; 20],
    );
    let id = orch.deploy(request("v2")).await.expect("deploy");
    let status = settled(&orch, &id).await;
    assert_eq!(status.phase, Phase::Paused, "{:?}", status.rollback);
    let (gate, reason) = status.awaiting.expect("awaiting");
    assert_eq!(gate, "analysis:step-1");
    assert!(
        reason.contains("the canary has received no traffic"),
        "{reason}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_monitor_that_cannot_answer_still_fails_the_analysis() {
    let sim = SimCluster::new();
    let strategy = canary(
        vec![
            CanaryStep::weight(25).expect("w"),
            CanaryStep::analysis(analysis(error_rate(Some(30), 2))),
        ],
        None,
    );
    let (orch, _) = start(&sim, strategy).await;
    let base = sim.calls(deploykit_testing::Op::Monitor);
    for i in 0..50 {
        sim.fail_call(
            deploykit_testing::Op::Monitor,
            base + i,
            deploykit_testing::Fault::Permanent,
        );
    }
    let id = orch.deploy(request("v2")).await.expect("deploy");
    let status = orch.wait(&id).await.expect("wait");
    sim.clear_faults();
    assert_eq!(status.phase, Phase::RolledBack);
    let reason = status.rollback.expect("rollback").1;
    assert!(
        reason.contains("metric error-rate could not be measured 5 times in a row, limit 4"),
        "{reason}"
    );
}

const CONFIG: &str = r#"
application = "shop"

[analyses.errors]
metrics = [
  { name = "error-rate", query = "error_rate", below = 0.02, interval = "10s", min_samples = { query = "requests[1m]", count = 20 } },
]

[services.web]
command = ["./web"]
port = 8080

[environments.production]
kind = "production"
replicas = 2

[environments.production.strategy.canary]
background_analysis = "errors"
steps = [{ weight = 25 }, { pause = "1m" }]
"#;

#[test]
fn the_minimum_sample_count_is_configurable_and_validated() {
    let config = Config::from_toml_str("deploykit.toml", CONFIG).expect("loads");
    let metric = &config.analysis("errors").expect("errors").metrics[0];
    assert_eq!(
        metric.min_samples,
        Some(MinSamples::new("requests[1m]", 20))
    );
    for (bad, why) in [
        ("count = 20", "count = 0"),
        ("query = \"requests[1m]\"", "query = \" \""),
    ] {
        let text = CONFIG.replace(bad, why);
        match Config::from_toml_str("deploykit.toml", &text) {
            Err(Error::InvalidSpec { field, reason }) => {
                let message = format!("{field}: {reason}");
                assert!(
                    message.contains("analyses.errors.metrics[0]")
                        && message.contains("min_samples"),
                    "{message}"
                );
            }
            other => panic!("{why}: expected an error, got {other:?}"),
        }
    }
}

/// A canary waiting for a human at an approval gate keeps its traffic, so it is still watched:
/// its background analysis keeps measuring, and when it fails the canary is rolled back
/// without anyone approving or rejecting anything. Under the `pause` failure policy, the
/// failure waits for that same human instead, and is raised as soon as the gate is passed.
#[tokio::test(start_paused = true)]
async fn a_canary_waiting_at_a_gate_is_still_analysed_and_rolled_back_when_it_degrades() {
    for pause_policy in [false, true] {
        let sim = SimCluster::new();
        let background = analysis(
            MetricCheck::threshold("bg-error-rate", "error_rate", Condition::below(0.05))
                .interval(Duration::from_secs(10))
                .build()
                .expect("metric"),
        );
        let strategy = canary(
            vec![CanaryStep::weight(25).expect("w"), CanaryStep::approval()],
            Some(background),
        );
        let mut env = common::environment_with(4, strategy);
        if pause_policy {
            env.failure_policy = deploykit_core::FailurePolicy::Pause;
        }
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
        let orch = open_monitored(store, &sim, env.clone(), "o1").await;
        assert_eq!(
            common::deploy_and_wait(&orch, "v1").await.1,
            Phase::Succeeded
        );
        let svc = common::service().name;
        let v2 = revision_in(&env, "v2").id;
        sim.set_metric(&svc, Some(&v2), "error_rate", vec![0.01]);
        let id = orch.deploy(request("v2")).await.expect("deploy");
        let at_gate = until(&orch, &id, "at the approval gate", |s| {
            s.awaiting.as_ref().is_some_and(|(g, _)| g == "step-1")
        })
        .await;
        let asked_at = at_gate.updated_at;
        // Healthy while waiting: measured, and still waiting.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let waiting = orch.status(&id).await.expect("status");
        assert_eq!(waiting.phase, Phase::Paused);
        let measured_at_gate = waiting
            .progress
            .measurements
            .iter()
            .filter(|m| m.run == "background" && m.at > asked_at)
            .count();
        assert!(measured_at_gate >= 4, "{:?}", waiting.progress.measurements);
        // The canary degrades while nobody looks.
        sim.set_metric(&svc, Some(&v2), "error_rate", vec![0.4]);
        if !pause_policy {
            let status = orch.wait(&id).await.expect("wait");
            assert_eq!(status.phase, Phase::RolledBack);
            let (cause, reason) = status.rollback.expect("rollback");
            assert_eq!(
                cause,
                deploykit_core::journal::RollbackCause::AnalysisFailed
            );
            assert!(reason.contains("bg-error-rate"), "{reason}");
            continue;
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
        let held = orch.status(&id).await.expect("status");
        assert_eq!(
            held.awaiting.as_ref().map(|a| a.0.as_str()),
            Some("step-1"),
            "under the pause policy the same human decides"
        );
        orch.approve(&id, Actor::new("bob"), "go on")
            .await
            .expect("approve");
        let failure = until(&orch, &id, "at the failure gate", |s| {
            s.awaiting.as_ref().is_some_and(|(g, _)| g == "failure")
        })
        .await;
        assert!(
            failure.awaiting.expect("gate").1.contains("bg-error-rate"),
            "the failure is raised once the gate is passed"
        );
        orch.reject(&id, Actor::new("bob"), "it degraded")
            .await
            .expect("reject");
        assert_eq!(orch.wait(&id).await.expect("wait").phase, Phase::RolledBack);
    }
}
