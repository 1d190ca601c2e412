//! Shared setup for the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use deploykit_core::{
    Actor, DeployRequest, DeploymentId, Digest, EnvironmentKind, EnvironmentSpec, HealthChecks,
    Orchestrator, OrchestratorConfig, Phase, Probe, ProbeAction, Quantity, RollingSpec,
    ServiceSpec, StateStore, StrategySpec,
};
use deploykit_testing::SimCluster;

pub fn service() -> ServiceSpec {
    ServiceSpec::builder()
        .name("web")
        .port(8080)
        .health(
            HealthChecks::builder()
                .readiness(
                    Probe::builder()
                        .action(ProbeAction::http("/health"))
                        .period(Duration::from_secs(2))
                        .build()
                        .expect("probe"),
                )
                .build(),
        )
        .build()
        .expect("service")
}

pub fn environment(replicas: u32, surge: Quantity, unavailable: Quantity) -> EnvironmentSpec {
    EnvironmentSpec::builder()
        .name("production")
        .kind(EnvironmentKind::Production)
        .replicas(replicas)
        .strategy(StrategySpec::Rolling(
            RollingSpec::builder()
                .max_surge(surge)
                .max_unavailable(unavailable)
                .build()
                .expect("rollout"),
        ))
        .build()
        .expect("environment")
}

pub fn production() -> EnvironmentSpec {
    environment(3, Quantity::Percent(25), Quantity::Percent(25))
}

pub fn artifact(label: &str) -> Digest {
    Digest::of_bytes(format!("web {label}").as_bytes())
}

pub fn request(label: &str) -> DeployRequest {
    DeployRequest::builder()
        .service(service())
        .environment("production")
        .artifact(artifact(label))
        .label(label)
        .requested_by(Actor::new("alice"))
        .build()
}

pub fn config() -> OrchestratorConfig {
    OrchestratorConfig::builder()
        .poll_interval(Duration::from_secs(1))
        .lease_ttl(Duration::from_secs(30))
        .build()
}

pub async fn open(
    store: Arc<dyn StateStore>,
    sim: &SimCluster,
    env: EnvironmentSpec,
    owner: &str,
) -> Orchestrator {
    Orchestrator::builder_shared(store)
        .environment(env, Arc::new(sim.clone()))
        .clock(Arc::new(sim.clock()))
        .owner(owner)
        .config(config())
        .open()
        .await
        .expect("open orchestrator")
}

/// Deploy `label` and wait for the end; a deployment that never ends fails the test (after six
/// hours of tokio time, which a paused clock skips through at once) instead of hanging it.
pub async fn deploy_and_wait(orch: &Orchestrator, label: &str) -> (DeploymentId, Phase) {
    let id = orch.deploy(request(label)).await.expect("deploy");
    let status = tokio::time::timeout(Duration::from_secs(6 * 3600), orch.wait(&id))
        .await
        .expect("the deployment ends")
        .expect("wait");
    (id, status.phase)
}

/// The revision the orchestrator computes for `label` in `env` (to script metrics for it).
pub fn revision_in(env: &EnvironmentSpec, label: &str) -> deploykit_core::Revision {
    deploykit_core::Revision::new(&service(), env, artifact(label), label).expect("revision")
}

/// An environment named production with `strategy`.
pub fn environment_with(replicas: u32, strategy: StrategySpec) -> EnvironmentSpec {
    EnvironmentSpec::builder()
        .name("production")
        .kind(EnvironmentKind::Production)
        .replicas(replicas)
        .strategy(strategy)
        .build()
        .expect("environment")
}

/// An orchestrator whose environment's monitor is the simulated cluster.
pub async fn open_monitored(
    store: Arc<dyn StateStore>,
    sim: &SimCluster,
    env: EnvironmentSpec,
    owner: &str,
) -> Orchestrator {
    Orchestrator::builder_shared(store)
        .environment_with_monitor(env, Arc::new(sim.clone()), Arc::new(sim.clone()))
        .clock(Arc::new(sim.clock()))
        .owner(owner)
        .config(config())
        .open()
        .await
        .expect("open orchestrator")
}

/// Property-test cases: `PROPTEST_CASES` if set, else `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A current-thread runtime on tokio's paused clock, for one property-test case.
pub fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime")
}
