//! Multi-service releases: promoted all or nothing.

mod common;

use std::sync::Arc;
use std::time::Duration;

use deploykit_core::analysis::{AnalysisSpec, Condition, MetricCheck};
use deploykit_core::journal::RollbackCause;
use deploykit_core::strategy::{BlueGreenSpec, CanarySpec, CanaryStep};
use deploykit_core::{
    Actor, DeployRequest, Digest, Environment, EnvironmentSpec, Error, Orchestrator, Phase,
    ReleaseRequest, ReleaseService, Revision, ServiceSpec, StrategySpec,
};
use deploykit_testing::{Behavior, MemoryStore, SimCluster};

const SERVICES: [&str; 3] = ["api", "web", "worker"];

fn svc(name: &str) -> ServiceSpec {
    ServiceSpec::builder().name(name).build().expect("service")
}

fn artifact(name: &str, label: &str) -> Digest {
    Digest::of_bytes(format!("{name} {label}").as_bytes())
}

fn canary_env() -> EnvironmentSpec {
    let analysis = AnalysisSpec::new(vec![
        MetricCheck::threshold("error-rate", "error_rate", Condition::below(0.05))
            .interval(Duration::from_secs(20))
            .count(2)
            .build()
            .expect("metric"),
    ])
    .expect("analysis");
    let spec = CanarySpec::builder()
        .steps(vec![
            CanaryStep::weight(20).expect("w"),
            CanaryStep::analysis(analysis),
            CanaryStep::weight(60).expect("w"),
        ])
        .build()
        .expect("canary");
    common::environment_with(2, StrategySpec::Canary(spec))
}

async fn setup(env: EnvironmentSpec) -> (SimCluster, Orchestrator) {
    let sim = SimCluster::new();
    let orch = common::open_monitored(Arc::new(MemoryStore::new()), &sim, env.clone(), "o1").await;
    for name in SERVICES {
        let req = DeployRequest::builder()
            .service(svc(name))
            .environment("production")
            .artifact(artifact(name, "v1"))
            .label("v1")
            .requested_by(Actor::new("ci"))
            .build();
        let id = orch.deploy(req).await.expect("v1");
        assert_eq!(orch.wait(&id).await.expect("wait").phase, Phase::Succeeded);
        let v2 = Revision::new(&svc(name), &env, artifact(name, "v2"), "v2").expect("rev");
        sim.set_metric(&svc(name).name, Some(&v2.id), "error_rate", vec![0.01]);
    }
    (sim, orch)
}

fn release_request() -> ReleaseRequest {
    ReleaseRequest::builder()
        .environment("production")
        .services(
            SERVICES
                .iter()
                .map(|n| {
                    ReleaseService::builder()
                        .service(svc(n))
                        .artifact(artifact(n, "v2"))
                        .label("v2")
                        .build()
                })
                .collect(),
        )
        .requested_by(Actor::new("release-manager"))
        .build()
}

async fn serving(sim: &SimCluster, name: &str) -> Vec<(String, u32)> {
    let observed = sim.observe(&svc(name).name).await.expect("observe");
    observed
        .revisions
        .iter()
        .map(|r| (r.revision.label.clone(), observed.weight_of(&r.revision.id)))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_release_promotes_only_when_every_service_is_ready() {
    let env = canary_env();
    let (sim, orch) = setup(env.clone()).await;
    // The worker's new instances take much longer to start: the others must wait for it.
    sim.set_behavior(
        &artifact("worker", "v2"),
        Behavior::SlowStart(Duration::from_secs(120)),
    );
    let release = orch.release(release_request()).await.expect("release");
    let statuses = orch.wait_release(&release).await.expect("wait");
    assert!(
        statuses.iter().all(|s| s.phase == Phase::Succeeded),
        "{statuses:?}"
    );
    let last_ready = statuses
        .iter()
        .map(|s| s.progress.ready_to_promote_at.expect("ready"))
        .max()
        .expect("some");
    for s in &statuses {
        let promoted = s.progress.promoted_at.expect("promoted");
        assert!(
            promoted >= last_ready,
            "{} promoted at {promoted} before the last member was ready at {last_ready}",
            s.spec.service
        );
    }
    for name in SERVICES {
        assert_eq!(serving(&sim, name).await, vec![("v2".to_string(), 100)]);
    }
}

#[tokio::test(start_paused = true)]
async fn one_failing_service_rolls_the_whole_release_back() {
    let env = canary_env();
    let (sim, orch) = setup(env.clone()).await;
    let worker_v2 =
        Revision::new(&svc("worker"), &env, artifact("worker", "v2"), "v2").expect("rev");
    sim.set_metric(
        &svc("worker").name,
        Some(&worker_v2.id),
        "error_rate",
        vec![0.4],
    );
    let release = orch.release(release_request()).await.expect("release");
    let statuses = orch.wait_release(&release).await.expect("wait");
    for s in &statuses {
        assert_eq!(
            s.phase,
            Phase::RolledBack,
            "{}: {:?}",
            s.spec.service,
            s.rollback
        );
        assert!(s.progress.promoted_at.is_none(), "nobody promoted");
    }
    let worker = &statuses[2];
    assert_eq!(
        worker.rollback.as_ref().expect("rb").0,
        RollbackCause::AnalysisFailed
    );
    for s in &statuses[..2] {
        let (cause, reason) = s.rollback.clone().expect("rb");
        assert_eq!(cause, RollbackCause::ReleaseFailed);
        assert!(reason.contains("worker"), "{reason}");
    }
    for name in SERVICES {
        assert_eq!(serving(&sim, name).await, vec![("v1".to_string(), 100)]);
    }
}

#[tokio::test(start_paused = true)]
async fn aborting_one_member_aborts_the_release() {
    let spec = BlueGreenSpec::builder()
        .auto_promote(false)
        .build()
        .expect("bg");
    let env = common::environment_with(2, StrategySpec::BlueGreen(spec));
    let (sim, orch) = setup(env).await;
    let release = orch.release(release_request()).await.expect("release");
    tokio::time::sleep(Duration::from_secs(30)).await;
    orch.abort(&release.deployments[1], Actor::new("oncall"), "not today")
        .await
        .expect("abort");
    let statuses = orch.wait_release(&release).await.expect("wait");
    assert!(
        statuses.iter().all(|s| s.phase == Phase::RolledBack),
        "{statuses:?}"
    );
    for name in SERVICES {
        assert_eq!(serving(&sim, name).await, vec![("v1".to_string(), 100)]);
    }
}

#[tokio::test(start_paused = true)]
async fn bad_releases_are_refused() {
    let sim = SimCluster::new();
    let orch = common::open(
        Arc::new(MemoryStore::new()),
        &sim,
        common::production(),
        "o1",
    )
    .await;
    let err = orch.release(release_request()).await.expect_err("rolling");
    assert!(
        matches!(&err, Error::InvalidSpec { field, .. } if field == "strategy"),
        "{err}"
    );
    assert!(err.to_string().contains("blue-green or canary"), "{err}");

    let env = common::environment_with(2, StrategySpec::BlueGreen(BlueGreenSpec::default()));
    let orch = common::open(Arc::new(MemoryStore::new()), &sim, env, "o2").await;
    let mut req = release_request();
    req.services.push(req.services[0].clone());
    let err = orch.release(req).await.expect_err("duplicate");
    assert!(
        err.to_string().contains("service api appears twice"),
        "{err}"
    );
    let mut req = release_request();
    req.services.clear();
    let err = orch.release(req).await.expect_err("empty");
    assert!(err.to_string().contains("at least one service"), "{err}");
}
