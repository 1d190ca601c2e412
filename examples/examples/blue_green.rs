//! Blue-green: v2 comes up at full size beside v1 on a preview route, is promoted by an
//! operator, and is rolled back inside the scale-down window — an instant traffic switch that
//! starts no new instances.
//!
//! Run it with `cargo run -p deploykit-examples --example blue_green`. It runs on the in-memory
//! cluster on tokio's paused clock.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use deploykit_core::journal::JournalEvent;
use deploykit_core::strategy::BlueGreenSpec;
use deploykit_core::{
    Actor, DeployRequest, Digest, Environment, EnvironmentKind, EnvironmentSpec, Orchestrator,
    Phase, Revision, ServiceSpec, StrategySpec,
};
use deploykit_examples::{Timeline, exit_code};
use deploykit_sqlite::SqliteStore;
use deploykit_testing::SimCluster;

type Error = Box<dyn std::error::Error>;

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() -> ExitCode {
    exit_code("blue-green", run().await)
}

async fn run() -> Result<bool, Error> {
    let web = ServiceSpec::builder().name("web").port(8080).build()?;
    let blue_green = BlueGreenSpec::builder()
        .auto_promote(false)
        .scale_down_delay(Duration::from_secs(300))
        .build()?;
    let production = EnvironmentSpec::builder()
        .name("production")
        .kind(EnvironmentKind::Production)
        .replicas(3)
        .strategy(StrategySpec::BlueGreen(blue_green))
        .build()?;
    let cluster = SimCluster::new();
    let orchestrator = Orchestrator::builder(SqliteStore::open(":memory:").await?)
        .environment(production.clone(), Arc::new(cluster.clone()))
        .clock(Arc::new(cluster.clock()))
        .open()
        .await?;
    let mut timeline = Timeline::new(cluster.clock().start(), orchestrator.subscribe());
    println!(
        "deploykit blue-green: web in production, 3 replicas, manual promotion, 5 min scale-down delay\n"
    );

    let artifact = |label: &str| Digest::of_bytes(format!("web-server {label}").as_bytes());
    let request = |label: &str| {
        DeployRequest::builder()
            .service(web.clone())
            .environment("production")
            .artifact(artifact(label))
            .label(label)
            .requested_by(Actor::new("alice"))
            .build()
    };
    let v1 = Revision::new(&web, &production, artifact("v1"), "v1")?;
    let first = orchestrator.deploy(request("v1")).await?;
    orchestrator.wait(&first).await?;
    timeline.print();
    println!();

    let mut events = orchestrator.subscribe();
    let id = orchestrator.deploy(request("v2")).await?;
    // Wait until v2 is up on the preview route and asks for promotion.
    while !matches!(
        events.recv().await?.entry.event,
        JournalEvent::ApprovalRequested { .. }
    ) {}
    timeline.print();
    let observed = cluster.observe(&web.name).await?;
    println!(
        "           (before promotion: {}; v1 takes {}% of traffic, v2 only the preview route)",
        observed.summary(),
        observed.weight_of(&v1.id)
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    orchestrator
        .approve(&id, Actor::new("qa-lead"), "preview checks passed")
        .await?;
    while !matches!(events.recv().await?.entry.event, JournalEvent::Promoted) {}
    // Two minutes later, inside the 5-minute window, something looks wrong.
    tokio::time::sleep(Duration::from_secs(120)).await;
    timeline.print();
    let starts_before = cluster.starts(&web.name, &v1.id);
    let abort_at = tokio::time::Instant::now();
    orchestrator
        .abort(
            &id,
            Actor::new("oncall"),
            "checkout errors up after promotion",
        )
        .await?;
    let status = orchestrator.wait(&id).await?;
    let took = abort_at.elapsed();
    timeline.print();

    let observed = cluster.observe(&web.name).await?;
    let no_new_instances = cluster.starts(&web.name, &v1.id) == starts_before;
    println!();
    println!(
        "v2: {} in {:.1}s of simulated time after the abort",
        status.phase,
        took.as_secs_f64()
    );
    println!(
        "new v1 instances started for the rollback: {}",
        if no_new_instances { "none" } else { "SOME" }
    );
    println!(
        "serving now: {}; traffic to v1: {}%",
        observed.summary(),
        observed.weight_of(&v1.id)
    );
    Ok(status.phase == Phase::RolledBack
        && no_new_instances
        && took <= Duration::from_secs(5)
        && observed.weight_of(&v1.id) == 100)
}
