//! What an operator names and does by hand, on the simulated cluster: a revision found by
//! label, id or id prefix (and refused with a reason when it is not kept), a service scaled and
//! stopped as journaled deployments.

mod common;

use std::sync::Arc;

use common::{artifact, environment_with};
use deploykit_core::journal::DeploymentKind;
use deploykit_core::{
    Actor, Autoscale, Environment, EnvironmentName, EnvironmentSpec, Orchestrator, Phase,
    RollingSpec, StateStore, StrategySpec,
};
use deploykit_testing::{Behavior, MemoryStore, SimCluster};

fn rolling() -> StrategySpec {
    StrategySpec::Rolling(RollingSpec::default())
}

async fn open(sim: &SimCluster, env: EnvironmentSpec) -> Orchestrator {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    Orchestrator::builder_shared(store)
        .environment(env, Arc::new(sim.clone()))
        .clock(Arc::new(sim.clock()))
        .config(common::config())
        .open()
        .await
        .expect("open orchestrator")
}

fn production() -> EnvironmentName {
    EnvironmentName::new("production").expect("name")
}

async fn instances(sim: &SimCluster) -> Vec<(String, usize)> {
    let observed = sim.observe(&common::service().name).await.expect("observe");
    observed
        .revisions
        .iter()
        .map(|r| (r.revision.label.clone(), r.instances.len()))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn revisions_are_found_by_label_id_or_prefix_and_unkept_ones_are_explained() {
    let sim = SimCluster::new();
    let orch = open(&sim, environment_with(2, rolling())).await;
    let svc = common::service().name;
    for label in ["v1", "v2"] {
        assert_eq!(
            common::deploy_and_wait(&orch, label).await.1,
            Phase::Succeeded
        );
    }
    sim.set_behavior(
        &artifact("v3"),
        Behavior::CrashLoop {
            reason: "exit code 1".into(),
        },
    );
    assert_eq!(
        common::deploy_and_wait(&orch, "v3").await.1,
        Phase::RolledBack
    );

    let v1 = orch
        .find_revision(&svc, &production(), "v1")
        .await
        .expect("by label");
    assert_eq!(v1.label, "v1");
    let by_id = orch
        .find_revision(&svc, &production(), v1.id.as_str())
        .await
        .expect("by id");
    assert_eq!(by_id.id, v1.id);
    let by_prefix = orch
        .find_revision(&svc, &production(), &v1.id.as_str()[..5])
        .await
        .expect("by prefix");
    assert_eq!(by_prefix.id, v1.id);
    // Too short a prefix is not taken for one: 3 hex digits match too much by chance.
    let err = orch
        .find_revision(&svc, &production(), &v1.id.as_str()[..3])
        .await
        .expect_err("3 digits")
        .to_string();
    assert!(err.contains("no label, id or id prefix matches"), "{err}");

    let err = orch
        .find_revision(&svc, &production(), "v3")
        .await
        .expect_err("v3 was rolled back")
        .to_string();
    assert!(
        err.contains("was rolled back") && err.contains("never verified"),
        "{err}"
    );
    assert!(err.contains("kept: v2 (") && err.contains("v1 ("), "{err}");

    let err = orch
        .find_revision(&svc, &production(), "v9")
        .await
        .expect_err("unknown")
        .to_string();
    assert!(
        err.contains("\"v9\"") && err.contains("kept: v2 ("),
        "{err}"
    );

    // A label deployed twice names the newest revision with it.
    let again = orch
        .deploy(
            deploykit_core::DeployRequest::builder()
                .service(common::service())
                .environment("production")
                .artifact(artifact("v1 rebuilt"))
                .label("v1")
                .requested_by(Actor::new("alice"))
                .build(),
        )
        .await
        .expect("deploy");
    assert_eq!(
        orch.wait(&again).await.expect("wait").phase,
        Phase::Succeeded
    );
    let newest_v1 = orch
        .find_revision(&svc, &production(), "v1")
        .await
        .expect("label");
    assert_ne!(newest_v1.id, v1.id);
    assert_eq!(newest_v1.artifact, artifact("v1 rebuilt"));
}

#[tokio::test(start_paused = true)]
async fn scale_and_stop_are_journaled_deployments_of_the_serving_revision() {
    let sim = SimCluster::new();
    let orch = open(&sim, environment_with(2, rolling())).await;
    let svc = common::service().name;
    let ops = Actor::new("ops");
    // Nothing to scale or stop yet.
    assert!(
        orch.scale(&svc, &production(), 3, ops.clone())
            .await
            .is_err()
    );
    assert_eq!(
        orch.stop(&svc, &production(), ops.clone())
            .await
            .expect("stop"),
        None
    );
    common::deploy_and_wait(&orch, "v1").await;
    assert_eq!(instances(&sim).await, vec![("v1".to_string(), 2)]);

    let id = orch
        .scale(&svc, &production(), 5, ops.clone())
        .await
        .expect("scale");
    let status = orch.wait(&id).await.expect("wait");
    assert_eq!(status.phase, Phase::Succeeded);
    assert_eq!(status.spec.kind, DeploymentKind::Scale { replicas: 5 });
    assert_eq!(status.spec.requested_by, ops);
    assert_eq!(status.spec.target.label, "v1");
    assert_eq!(instances(&sim).await, vec![("v1".to_string(), 5)]);
    // Absurd sizes are refused with the field and the range.
    for n in [0, 10_001, u32::MAX] {
        let err = orch
            .scale(&svc, &production(), n, ops.clone())
            .await
            .expect_err("out of range")
            .to_string();
        assert!(
            err.contains("invalid replicas") && err.contains("1-10000"),
            "{err}"
        );
    }
    // The next deployment sizes from the environment again.
    common::deploy_and_wait(&orch, "v2").await;
    assert_eq!(instances(&sim).await, vec![("v2".to_string(), 2)]);

    let stopped = orch
        .stop(&svc, &production(), ops.clone())
        .await
        .expect("stop")
        .expect("a teardown");
    let status = orch.wait(&stopped).await.expect("wait");
    assert_eq!(status.phase, Phase::Succeeded);
    assert_eq!(status.spec.kind, DeploymentKind::Teardown);
    assert!(instances(&sim).await.is_empty());
    // Stopping again does nothing; scaling a stopped service says to deploy it.
    assert_eq!(
        orch.stop(&svc, &production(), ops.clone())
            .await
            .expect("stop"),
        None
    );
    let err = orch
        .scale(&svc, &production(), 3, ops.clone())
        .await
        .expect_err("stopped")
        .to_string();
    assert!(err.contains("is stopped in production"), "{err}");
    // A deploy starts it again.
    assert_eq!(
        common::deploy_and_wait(&orch, "v3").await.1,
        Phase::Succeeded
    );
    assert_eq!(instances(&sim).await, vec![("v3".to_string(), 2)]);
    // Each operator action that changed something is in the audit log, saying what it did.
    let audit = orch.audit_log().await.expect("audit");
    let by_ops: Vec<_> = audit.iter().filter(|r| r.actor == ops).collect();
    assert_eq!(by_ops.len(), 2, "{audit:?}");
    assert!(by_ops[0].detail.ends_with("scaled to 5"), "{audit:?}");
    assert_eq!(
        by_ops[1].action,
        deploykit_core::audit::AuditAction::Teardown
    );
}

#[tokio::test(start_paused = true)]
async fn an_autoscaled_environment_is_not_scaled_by_hand() {
    let sim = SimCluster::new();
    let env = EnvironmentSpec::builder()
        .name("production")
        .kind(deploykit_core::EnvironmentKind::Production)
        .replicas(2)
        .autoscale(Autoscale::builder().min_replicas(2).max_replicas(6).build())
        .strategy(rolling())
        .build()
        .expect("environment");
    let orch = open(&sim, env).await;
    common::deploy_and_wait(&orch, "v1").await;
    let err = orch
        .scale(&common::service().name, &production(), 4, Actor::new("ops"))
        .await
        .expect_err("autoscaled")
        .to_string();
    assert!(err.contains("autoscaled (2 to 6 instances)"), "{err}");
}
