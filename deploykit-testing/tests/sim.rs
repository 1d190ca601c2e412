//! The simulated cluster as a Monitor, and its scripted behaviours and faults.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use deploykit_core::{
    DesiredState, Environment, Error, FailureKind, MetricQuery, Monitor, MonitorExt, Revision,
    RevisionTarget, Traffic, Weight,
};
use deploykit_testing::{Behavior, Fault, Op, SimCluster};

fn revision(label: &str) -> Revision {
    Revision::new(
        &common::service(),
        &common::production(),
        common::artifact(label),
        label,
    )
    .expect("revision")
}

fn one(r: &Revision, n: u32) -> DesiredState {
    DesiredState::new(
        vec![RevisionTarget::new(r.clone(), n)],
        Traffic::ByReadyInstances,
    )
}

#[tokio::test(start_paused = true)]
async fn readiness_failures_appear_after_the_probe_thresholds() {
    let sim = SimCluster::new();
    let svc = common::service().name;
    let v1 = revision("v1");
    sim.set_behavior(
        &v1.artifact,
        Behavior::FailReadiness {
            reason: "GET /health returned 503".into(),
        },
    );
    sim.apply(&svc, &one(&v1, 2)).await.expect("apply");
    // Start latency 2 s + 3 failures x 2 s period = 8 s.
    tokio::time::sleep(Duration::from_millis(7_900)).await;
    let health = sim.instance_health(&svc, &v1.id).await.expect("health");
    assert!(health.iter().all(|i| !i.ready && i.failure.is_none()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let health = sim.instance_health(&svc, &v1.id).await.expect("health");
    assert_eq!(health.len(), 2);
    for i in &health {
        let f = i.failure.as_ref().expect("failed");
        assert_eq!(f.kind, FailureKind::Readiness);
        assert_eq!(f.reason, "GET /health returned 503");
    }
}

#[tokio::test(start_paused = true)]
async fn crash_loops_count_restarts_with_backoff() {
    let sim = SimCluster::new();
    let svc = common::service().name;
    let v1 = revision("v1");
    sim.set_behavior(
        &v1.artifact,
        Behavior::CrashLoop {
            reason: "exit 1".into(),
        },
    );
    sim.apply(&svc, &one(&v1, 1)).await.expect("apply");
    // Runs 1 s, then restarts after 10, 20, 40 s of back-off: at 11 s, 32 s and 73 s.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let h = sim.instance_health(&svc, &v1.id).await.expect("health");
    assert_eq!((h[0].restarts, h[0].failure.is_none()), (1, true));
    tokio::time::sleep(Duration::from_secs(60)).await;
    let h = sim.instance_health(&svc, &v1.id).await.expect("health");
    assert_eq!((h[0].restarts, h[0].failure.is_none()), (2, true));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let h = sim.instance_health(&svc, &v1.id).await.expect("health");
    assert_eq!(h[0].restarts, 3);
    assert_eq!(
        h[0].failure.as_ref().expect("failed").kind,
        FailureKind::CrashLoop
    );
}

#[tokio::test(start_paused = true)]
async fn metric_queries_serve_scripted_series_and_nan_is_no_data() {
    let sim = SimCluster::new();
    let svc = common::service().name;
    let v1 = revision("v1");
    let q = MetricQuery::new(svc.clone(), "error_rate").for_revision(v1.id.clone());
    assert!(sim.query(&q).await.expect("query").is_empty());
    assert_eq!(sim.latest(&q).await.expect("latest"), None);
    sim.set_metric(&svc, Some(&v1.id), "error_rate", vec![0.01, 0.02]);
    let samples = sim.query(&q).await.expect("query");
    assert_eq!(samples.len(), 2);
    assert!(samples[0].at < samples[1].at);
    assert_eq!(sim.latest(&q).await.expect("latest"), Some(0.02));
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        sim.set_metric(&svc, Some(&v1.id), "error_rate", vec![0.01, bad]);
        assert_eq!(
            sim.latest(&q).await.expect("latest"),
            None,
            "{bad} must be no data"
        );
    }
    // Scoped: the whole-service series is a different one.
    let whole = MetricQuery::new(svc.clone(), "error_rate");
    assert!(sim.query(&whole).await.expect("query").is_empty());
    sim.fail_next(Op::Monitor, 1, Fault::Transient);
    let err = sim.query(&q).await.expect_err("fault");
    assert!(err.is_retryable());
}

#[tokio::test(start_paused = true)]
async fn faults_hit_the_chosen_calls_only() {
    let sim = SimCluster::new();
    let svc = common::service().name;
    let v1 = revision("v1");
    sim.fail_call(Op::Apply, 1, Fault::Permanent);
    sim.apply(&svc, &one(&v1, 1)).await.expect("call 0 passes");
    let err = sim
        .apply(&svc, &one(&v1, 2))
        .await
        .expect_err("call 1 fails");
    assert!(matches!(err, Error::Backend { .. }) && !err.is_retryable());
    assert_eq!(
        sim.observe(&svc).await.expect("observe").total_instances(),
        1
    );
    sim.fail_next(Op::Apply, 1, Fault::TransientAfterEffect);
    let err = sim
        .apply(&svc, &one(&v1, 2))
        .await
        .expect_err("lost response");
    assert!(err.is_retryable());
    assert_eq!(
        sim.observe(&svc).await.expect("observe").total_instances(),
        2,
        "the apply took effect although it reported an error"
    );
    assert_eq!(sim.calls(Op::Apply), 3);
}

#[tokio::test(start_paused = true)]
async fn weighted_traffic_goes_to_ready_revisions_only() {
    let sim = SimCluster::new();
    let svc = common::service().name;
    let (v1, v2) = (revision("v1"), revision("v2"));
    sim.apply(&svc, &one(&v1, 2)).await.expect("apply");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let weights = BTreeMap::from([
        (v1.id.clone(), Weight::new(90).expect("w")),
        (v2.id.clone(), Weight::new(10).expect("w")),
    ]);
    let desired = DesiredState::new(
        vec![
            RevisionTarget::new(v1.clone(), 2),
            RevisionTarget::new(v2.clone(), 1),
        ],
        Traffic::weighted(weights).expect("weights"),
    );
    sim.apply(&svc, &desired).await.expect("apply");
    let observed = sim.observe(&svc).await.expect("observe");
    assert_eq!(
        observed.traffic.len(),
        1,
        "v2 is not ready yet: {:?}",
        observed.traffic
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let observed = sim.observe(&svc).await.expect("observe");
    assert_eq!(observed.traffic[&v2.id].percent(), 10);
    // A killed instance is replaced by a fresh one that is not ready yet.
    assert!(sim.kill_instance(&svc, &v1.id));
    let observed = sim.observe(&svc).await.expect("observe");
    assert_eq!(observed.revision(&v1.id).expect("v1").ready(), 1);
}
