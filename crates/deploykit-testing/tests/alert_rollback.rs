//! An alert as a rollback trigger: a canary whose error-rate alert fires is rolled back, the
//! abort is audited as the alert's, and the stable revision never alerts.

mod common;

use std::sync::Arc;
use std::time::Duration;

use deploykit_core::alerting::{
    AlertRule, Alerting, NotificationStatus, Route, rollback_on_alerts,
};
use deploykit_core::analysis::Condition;
use deploykit_core::strategy::{CanarySpec, CanaryStep};
use deploykit_core::{Orchestrator, Phase, StrategySpec};
use deploykit_testing::{MemoryStore, RecordingAlertSink, SimCluster};

#[tokio::test(start_paused = true)]
async fn a_firing_alert_rolls_its_revision_back() {
    let canary = CanarySpec::builder()
        .steps(vec![
            CanaryStep::weight(20).unwrap(),
            CanaryStep::pause(Duration::from_secs(600)),
            CanaryStep::weight(50).unwrap(),
        ])
        .build()
        .unwrap();
    let env = common::environment_with(4, StrategySpec::Canary(canary));
    let sim = SimCluster::new();
    let orch = Arc::new(
        Orchestrator::builder_shared(Arc::new(MemoryStore::new()))
            .environment_with_monitor(env.clone(), Arc::new(sim.clone()), Arc::new(sim.clone()))
            .clock(Arc::new(sim.clock()))
            .config(common::config())
            .open()
            .await
            .unwrap(),
    );
    let pager = RecordingAlertSink::new();
    let rule = AlertRule::builder()
        .name("canary-errors")
        .expr("error_rate")
        .condition(Condition::above(0.05))
        .for_(Duration::from_secs(60))
        .build()
        .unwrap();
    let alerting = Arc::new(
        Alerting::builder()
            .rule(rule)
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
    );
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
