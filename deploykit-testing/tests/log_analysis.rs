//! Canary analysis on log-based metrics: a revision that logs errors is rolled back, one that
//! does not is promoted, whatever the stable revision logs (simulated cluster, paused clock).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{environment_with, request, revision_in};
use deploykit_core::analysis::{AnalysisSpec, Condition, MetricCheck};
use deploykit_core::journal::RollbackCause;
use deploykit_core::strategy::{CanarySpec, CanaryStep};
use deploykit_core::{Orchestrator, Phase, StrategySpec};
use deploykit_logs::{LogMonitor, Stream};
use deploykit_testing::{MemoryStore, SimCluster};

fn strategy() -> StrategySpec {
    let errors = AnalysisSpec::new(vec![
        MetricCheck::threshold(
            "error-logs",
            r#"log_count{level="error"}[1m]"#,
            Condition::below(1.0),
        )
        .interval(Duration::from_secs(30))
        .count(3)
        .build()
        .expect("metric"),
    ])
    .expect("analysis");
    StrategySpec::Canary(
        CanarySpec::builder()
            .steps(vec![
                CanaryStep::weight(25).expect("w"),
                CanaryStep::analysis(errors),
                CanaryStep::weight(100).expect("w"),
            ])
            .build()
            .expect("canary"),
    )
}

async fn open(sim: &SimCluster) -> (Orchestrator, deploykit_core::EnvironmentSpec) {
    let env = environment_with(4, strategy());
    let monitor = LogMonitor::new(Arc::new(sim.clone()), Arc::new(sim.clock()))
        .with_fallback(Arc::new(sim.clone()));
    let orch = Orchestrator::builder_shared(Arc::new(MemoryStore::new()))
        .environment_with_monitor(env.clone(), Arc::new(sim.clone()), Arc::new(monitor))
        .clock(Arc::new(sim.clock()))
        .owner("o1")
        .config(common::config())
        .open()
        .await
        .expect("open orchestrator");
    let (_, phase) = common::deploy_and_wait(&orch, "v1").await;
    assert_eq!(phase, Phase::Succeeded);
    (orch, env)
}

/// Every 10 s of simulated time, the canary logs `canary_level` and the stable logs an error.
fn chatter(sim: &SimCluster, stable: String, canary: String, canary_level: &'static str) {
    let sim = sim.clone();
    let service = common::service().name.to_string();
    tokio::spawn(async move {
        loop {
            let line = format!(r#"{{"level":"{canary_level}","msg":"handled request"}}"#);
            sim.instance_logs()
                .write(&service, &canary, "canary-0", Stream::Stdout, [line]);
            sim.instance_logs().write(
                &service,
                &stable,
                "stable-0",
                Stream::Stderr,
                [r#"{"level":"error","msg":"old bug"}"#],
            );
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    });
}

#[tokio::test(start_paused = true)]
async fn a_canary_that_logs_errors_is_rolled_back_by_its_log_analysis() {
    let sim = SimCluster::new();
    let (orch, env) = open(&sim).await;
    let (v1, v2) = (revision_in(&env, "v1"), revision_in(&env, "v2"));
    chatter(&sim, v1.id.to_string(), v2.id.to_string(), "error");
    let id = orch.deploy(request("v2")).await.expect("deploy");
    let status = orch.wait(&id).await.expect("wait");
    assert_eq!(status.phase, Phase::RolledBack);
    let (cause, reason) = status.rollback.clone().expect("rollback");
    assert_eq!(cause, RollbackCause::AnalysisFailed);
    assert!(
        reason.contains("metric error-logs failed") && reason.contains("is not < 1"),
        "{reason}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_canary_that_logs_no_errors_is_promoted_whatever_the_stable_logs() {
    let sim = SimCluster::new();
    let (orch, env) = open(&sim).await;
    let (v1, v2) = (revision_in(&env, "v1"), revision_in(&env, "v2"));
    chatter(&sim, v1.id.to_string(), v2.id.to_string(), "info");
    let id = orch.deploy(request("v2")).await.expect("deploy");
    let status = orch.wait(&id).await.expect("wait");
    assert_eq!(status.phase, Phase::Succeeded, "{:?}", status.rollback);
    let values: Vec<f64> = status
        .progress
        .measurements
        .iter()
        .filter_map(|m| m.value)
        .collect();
    assert_eq!(
        values,
        vec![0.0, 0.0, 0.0],
        "{:?}",
        status.progress.measurements
    );
}

/// An alert rule on a log pattern: it fires when a panic is logged and resolves once the
/// window has moved past it.
#[tokio::test(start_paused = true)]
async fn an_alert_rule_fires_on_a_log_pattern_and_resolves_after_its_window() {
    use deploykit_alerting::{AlertRule, AlertState, AlertTarget, Alerting, Route};
    use deploykit_core::{EnvironmentName, ServiceId};
    use deploykit_testing::RecordingAlertSink;

    let sim = SimCluster::new();
    let monitor = LogMonitor::new(Arc::new(sim.clone()), Arc::new(sim.clock()));
    let pager = RecordingAlertSink::new();
    let alerting = Alerting::builder()
        .rule(
            AlertRule::builder()
                .name("Panics")
                .expr(r#"count_over_time({stream="stderr"} |~ "^panic: " [5m])"#)
                .condition(Condition::above(0.0))
                .build()
                .expect("rule"),
        )
        .route(Route::builder().receiver("pager").build())
        .sink("pager", Arc::new(pager.clone()))
        .clock(sim.clock())
        .build()
        .expect("alerting");
    alerting.watch(AlertTarget::new(
        ServiceId::new("web").unwrap(),
        EnvironmentName::new("prod").unwrap(),
    ));
    let mut events = alerting.subscribe();
    let logs = sim.instance_logs();
    logs.write("web", "r1", "web-1", Stream::Stderr, ["warning: slow disk"]);
    logs.write(
        "web",
        "r1",
        "web-1",
        Stream::Stdout,
        ["panic: looks like one, is stdout"],
    );
    alerting.evaluate(&monitor).await;
    assert!(events.try_recv().is_err(), "nothing matches yet");

    tokio::time::sleep(Duration::from_secs(30)).await;
    logs.write(
        "web",
        "r1",
        "web-1",
        Stream::Stderr,
        ["panic: index out of range"],
    );
    alerting.evaluate(&monitor).await;
    let fired = events.try_recv().expect("the panic fires the rule");
    assert_eq!(fired.alert.state, AlertState::Firing);
    assert_eq!(fired.alert.value, Some(1.0));

    // Four minutes on, the panic is still in the window; six minutes on, it is not.
    tokio::time::sleep(Duration::from_secs(240)).await;
    alerting.evaluate(&monitor).await;
    assert!(events.try_recv().is_err(), "still firing, no change");
    tokio::time::sleep(Duration::from_secs(120)).await;
    alerting.evaluate(&monitor).await;
    let resolved = events.try_recv().expect("resolves");
    assert_eq!(resolved.alert.state, AlertState::Resolved);
}
