//! Canary: v2 of a service takes 10 %, then 25 % of traffic; at 25 % its error rate is
//! analysed, turns out bad, and all traffic returns to v1 in one action before v2 is removed.
//!
//! Run it with `cargo run -p deploykit-examples --example canary`. It runs on the in-memory
//! cluster on tokio's paused clock; the cluster also serves as the metrics source.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use deploykit_core::analysis::{AnalysisSpec, Condition, MetricCheck};
use deploykit_core::journal::JournalEvent;
use deploykit_core::strategy::{CanarySpec, CanaryStep};
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
    exit_code("canary", run().await)
}

async fn run() -> Result<bool, Error> {
    let web = ServiceSpec::builder().name("web").port(8080).build()?;
    // The error rate of a revision must stay under 5 %: measured 3 times, 30 s apart.
    let error_rate = AnalysisSpec::new(vec![
        MetricCheck::threshold("error-rate", "error_rate", Condition::below(0.05))
            .interval(Duration::from_secs(30))
            .count(3)
            .build()?,
    ])?;
    let canary = CanarySpec::builder()
        .steps(vec![
            CanaryStep::weight(10)?,
            CanaryStep::pause(Duration::from_secs(60)),
            CanaryStep::weight(25)?,
            CanaryStep::analysis(error_rate),
            CanaryStep::weight(50)?,
            CanaryStep::pause(Duration::from_secs(60)),
        ])
        .build()?;
    let production = EnvironmentSpec::builder()
        .name("production")
        .kind(EnvironmentKind::Production)
        .replicas(4)
        .strategy(StrategySpec::Canary(canary))
        .build()?;

    let cluster = SimCluster::new();
    let orchestrator = Orchestrator::builder(SqliteStore::open(":memory:").await?)
        .environment_with_monitor(
            production.clone(),
            Arc::new(cluster.clone()),
            Arc::new(cluster.clone()),
        )
        .clock(Arc::new(cluster.clock()))
        .open()
        .await?;
    let mut timeline = Timeline::new(cluster.clock().start(), orchestrator.subscribe());
    println!(
        "deploykit canary: web in production, 4 replicas, steps 10% -> pause -> 25% -> analysis -> 50%\n"
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
    // v2 answers 12 % of its requests with errors; v1 is fine.
    let v1 = Revision::new(&web, &production, artifact("v1"), "v1")?;
    let v2 = Revision::new(&web, &production, artifact("v2"), "v2")?;
    cluster.set_metric(&web.name, Some(&v1.id), "error_rate", vec![0.004]);
    cluster.set_metric(&web.name, Some(&v2.id), "error_rate", vec![0.12]);

    let first = orchestrator.deploy(request("v1")).await?;
    orchestrator.wait(&first).await?;
    timeline.print();
    println!();
    let id = orchestrator.deploy(request("v2")).await?;
    let status = orchestrator.wait(&id).await?;
    timeline.print();

    // Check what the timeline claims: one action sent all traffic back, with v2 still running.
    let journal = orchestrator.journal(&id).await?;
    let switch = journal
        .iter()
        .skip_while(|e| !matches!(e.event, JournalEvent::RollbackStarted { .. }))
        .find_map(|e| match &e.event {
            JournalEvent::Applied { desired, .. } => Some(desired.clone()),
            _ => None,
        })
        .ok_or("no rollback action")?;
    let one_action = switch.traffic.routes().map(|r| r.weight_of(&v1.id)) == Some(100)
        && switch.replicas_of(&v2.id) > 0;
    let observed = cluster.observe(&web.name).await?;
    println!();
    println!(
        "v2: {} ({})",
        status.phase,
        status.rollback.map(|(_, r)| r).unwrap_or_default()
    );
    println!(
        "the first rollback action sent 100% of traffic to v1 while v2 still ran: {}",
        if one_action { "yes" } else { "NO" }
    );
    println!(
        "serving now: {}; traffic to v1: {}%",
        observed.summary(),
        observed.weight_of(&v1.id)
    );
    Ok(status.phase == Phase::RolledBack
        && one_action
        && observed.revisions.len() == 1
        && observed.weight_of(&v1.id) == 100)
}
