//! Preview environments: one per branch, with its own route and a time-to-live.

mod common;

use std::sync::Arc;
use std::time::Duration;

use deploykit_core::audit::AuditAction;
use deploykit_core::journal::DeploymentKind;
use deploykit_core::{
    Actor, Environment, EnvironmentKind, EnvironmentSpec, Error, Orchestrator, Phase,
    PreviewRequest, ServiceId, StateStore, preview_name,
};
use deploykit_testing::{MemoryStore, SimCluster};

fn template() -> EnvironmentSpec {
    EnvironmentSpec::builder()
        .name("preview")
        .kind(EnvironmentKind::Preview)
        .replicas(1)
        .build()
        .expect("template")
}

async fn open(store: Arc<dyn StateStore>, sim: &SimCluster, owner: &str) -> Orchestrator {
    Orchestrator::builder_shared(store)
        .environment(common::production(), Arc::new(sim.clone()))
        .previews(template(), Arc::new(sim.clone()))
        .clock(Arc::new(sim.clock()))
        .owner(owner)
        .config(common::config())
        .open()
        .await
        .expect("open")
}

fn request(branch: &str, label: &str, ttl: Duration) -> PreviewRequest {
    PreviewRequest::builder()
        .service(common::service())
        .branch(branch)
        .artifact(common::artifact(label))
        .label(label)
        .ttl(ttl)
        .requested_by(Actor::new("dev"))
        .build()
}

async fn running(sim: &SimCluster, backend_service: &str) -> Vec<(String, u32)> {
    let id = ServiceId::new(backend_service).expect("service id");
    let observed = sim.observe(&id).await.expect("observe");
    observed
        .revisions
        .iter()
        .map(|r| (r.revision.label.clone(), r.ready()))
        .collect()
}

#[test]
fn preview_names_come_from_branches() {
    assert_eq!(
        preview_name("feature/Login_42").expect("name").as_str(),
        "preview-feature-login-42"
    );
    assert_eq!(
        preview_name("--PR #7--").expect("name").as_str(),
        "preview-pr-7"
    );
    let err = preview_name("///").expect_err("nothing to name");
    assert!(matches!(&err, Error::InvalidSpec { field, .. } if field == "preview.branch"));
    let long_a = preview_name(&format!("feature/{}-a", "x".repeat(80))).expect("name");
    let long_b = preview_name(&format!("feature/{}-b", "x".repeat(80))).expect("name");
    assert!(long_a.as_str().len() <= 63);
    assert_ne!(long_a, long_b, "long branches keep distinct previews");
}

#[tokio::test(start_paused = true)]
async fn a_preview_gets_its_own_environment_route_and_updates() {
    let sim = SimCluster::new();
    let orch = open(Arc::new(MemoryStore::new()), &sim, "o1").await;
    let first = orch
        .preview(request("feature/Login_42", "v1", Duration::from_secs(3600)))
        .await
        .expect("preview");
    assert_eq!(first.environment.as_str(), "preview-feature-login-42");
    assert_eq!(first.route, "preview-feature-login-42.localhost");
    assert_eq!(
        orch.wait(&first.deployment).await.expect("wait").phase,
        Phase::Succeeded
    );
    let backend = "web-preview-feature-login-42";
    assert_eq!(running(&sim, backend).await, vec![("v1".to_string(), 1)]);
    // Another branch is kept apart on the same backend.
    let other = orch
        .preview(request("fix/typo", "v9", Duration::from_secs(3600)))
        .await
        .expect("preview");
    orch.wait(&other.deployment).await.expect("wait");
    assert_eq!(
        running(&sim, "web-preview-fix-typo").await,
        vec![("v9".to_string(), 1)]
    );
    // The same preview again updates it and extends its life.
    tokio::time::sleep(Duration::from_secs(600)).await;
    let second = orch
        .preview(request("feature/Login_42", "v2", Duration::from_secs(3600)))
        .await
        .expect("update");
    assert_eq!(second.environment, first.environment);
    assert!(second.expires_at > first.expires_at);
    assert_eq!(
        orch.wait(&second.deployment).await.expect("wait").phase,
        Phase::Succeeded
    );
    assert_eq!(running(&sim, backend).await, vec![("v2".to_string(), 1)]);
    // Production is untouched by previews.
    assert!(running(&sim, "web").await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn expired_previews_are_torn_down_and_explicit_teardown_works() {
    let sim = SimCluster::new();
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let orch = open(store.clone(), &sim, "o1").await;
    let short = orch
        .preview(request("short-lived", "v1", Duration::from_secs(600)))
        .await
        .expect("preview");
    let long = orch
        .preview(request("long-lived", "v1", Duration::from_secs(7200)))
        .await
        .expect("preview");
    orch.wait(&short.deployment).await.expect("wait");
    orch.wait(&long.deployment).await.expect("wait");
    // The reaper runs every 60 s: after 11 minutes the short one is gone, the long one stays.
    tokio::time::sleep(Duration::from_secs(11 * 60)).await;
    assert!(running(&sim, "web-preview-short-lived").await.is_empty());
    assert_eq!(running(&sim, "web-preview-long-lived").await.len(), 1);
    let newest = store
        .list_deployments(&common::service().name, &short.environment)
        .await
        .expect("list")[0]
        .clone();
    let status = orch.status(&newest).await.expect("status");
    assert_eq!(status.spec.kind, DeploymentKind::Teardown);
    assert_eq!(status.phase, Phase::Succeeded);
    assert_eq!(status.spec.requested_by, Actor::system());
    // Explicit teardown of the other one, once.
    let ids = orch
        .teardown_preview(&long.environment, Actor::new("dev"))
        .await
        .expect("teardown");
    assert_eq!(ids.len(), 1);
    orch.wait(&ids[0]).await.expect("wait");
    assert!(running(&sim, "web-preview-long-lived").await.is_empty());
    let again = orch
        .teardown_preview(&long.environment, Actor::new("dev"))
        .await
        .expect("teardown again");
    assert!(again.is_empty(), "already torn down");

    let audit = orch.audit_log().await.expect("audit");
    assert_eq!(
        audit
            .iter()
            .filter(|r| r.action == AuditAction::Teardown)
            .count(),
        2
    );
    // A torn-down preview is not a kept revision.
    let history = orch
        .history(&common::service().name, &long.environment)
        .await
        .expect("history");
    assert_eq!(history.len(), 1, "the preview's v1, not a teardown");
    // Shutting down stops the reaper too (it never ends by itself).
    tokio::time::timeout(Duration::from_secs(60), orch.shutdown())
        .await
        .expect("shutdown finishes")
        .expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn previews_survive_a_restart_and_must_be_enabled() {
    let sim = SimCluster::new();
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let first = open(store.clone(), &sim, "host-a").await;
    let preview = first
        .preview(request("pr-5", "v1", Duration::from_secs(3600)))
        .await
        .expect("preview");
    drop(first);
    let second = open(store.clone(), &sim, "host-b").await;
    assert_eq!(
        second.wait(&preview.deployment).await.expect("wait").phase,
        Phase::Succeeded
    );
    assert_eq!(
        running(&sim, "web-preview-pr-5").await,
        vec![("v1".to_string(), 1)]
    );

    let plain = common::open(
        Arc::new(MemoryStore::new()),
        &sim,
        common::production(),
        "x",
    )
    .await;
    let err = plain
        .preview(request("pr-6", "v1", Duration::from_secs(60)))
        .await
        .expect_err("previews off");
    assert!(
        err.to_string()
            .contains("preview environments are not enabled"),
        "{err}"
    );
    let err = second
        .teardown_preview(&common::production().name, Actor::new("dev"))
        .await
        .expect_err("not a preview");
    assert!(
        err.to_string().contains("is not a preview environment"),
        "{err}"
    );
}
