//! Quickstart: three rolling deploys of a sample service on the in-memory cluster, the last of
//! which never passes readiness and is rolled back automatically at its progress deadline.
//!
//! Run it with `cargo run -p deploykit-examples --example quickstart`. It runs on tokio's
//! paused clock, so the simulated minutes pass in milliseconds; the journal is a real SQLite
//! file in the system's temporary directory.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use deploykit_core::{
    Actor, DeployRequest, Digest, Environment, EnvironmentKind, EnvironmentSpec, HealthChecks,
    Orchestrator, Phase, Probe, ProbeAction, ServiceSpec,
};
use deploykit_examples::{Timeline, exit_code};
use deploykit_sqlite::SqliteStore;
use deploykit_testing::{Behavior, SimCluster};

type Error = Box<dyn std::error::Error>;

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() -> ExitCode {
    exit_code("quickstart", run().await)
}

async fn run() -> Result<bool, Error> {
    // The sample service: an HTTP server with a readiness probe.
    let web = ServiceSpec::builder()
        .name("web")
        .command(vec!["./web-server".into()])
        .port(8080)
        .health(
            HealthChecks::builder()
                .readiness(
                    Probe::builder()
                        .action(ProbeAction::http("/health"))
                        .period(Duration::from_secs(2))
                        .build()?,
                )
                .build(),
        )
        .build()?;
    // Production: 3 replicas, rolling update with the defaults (maxSurge and maxUnavailable
    // 25 %), and a progress deadline of 60 s: failing readiness means "not ready yet" (a slow
    // start looks the same) until then, so that is when a revision that never gets ready is
    // rolled back.
    let production = EnvironmentSpec::builder()
        .name("production")
        .kind(EnvironmentKind::Production)
        .replicas(3)
        .progress_deadline(Duration::from_secs(60))
        .build()?;

    let cluster = SimCluster::new();
    let db = std::env::temp_dir().join(format!("deploykit-quickstart-{}.db", std::process::id()));
    let orchestrator = Orchestrator::builder(SqliteStore::open(&db).await?)
        .environment(production, Arc::new(cluster.clone()))
        .clock(Arc::new(cluster.clock()))
        .open()
        .await?;
    let mut timeline = Timeline::new(cluster.clock().start(), orchestrator.subscribe());
    println!(
        "deploykit quickstart: service web, environment production, 3 replicas, rolling update"
    );
    println!("journal: {}\n", db.display());

    // v3's instances will answer their readiness probe with 503.
    let artifact = |label: &str| Digest::of_bytes(format!("web-server {label}").as_bytes());
    cluster.set_behavior(
        &artifact("v3"),
        Behavior::FailReadiness {
            reason: "GET /health returned 503".into(),
        },
    );

    let mut last = None;
    for label in ["v1", "v2", "v3"] {
        let request = DeployRequest::builder()
            .service(web.clone())
            .environment("production")
            .artifact(artifact(label))
            .label(label)
            .requested_by(Actor::new("alice"))
            .build();
        let id = orchestrator.deploy(request).await?;
        let status = orchestrator.wait(&id).await?;
        timeline.print();
        println!();
        last = Some(status);
    }

    let observed = cluster.observe(&web.name).await?;
    let serving: Vec<String> = observed
        .revisions
        .iter()
        .map(|r| {
            let share = observed
                .traffic
                .get(&r.revision.id)
                .map_or(0, |w| w.percent());
            format!(
                "{} ({}/{} ready, {share}% of traffic)",
                r.revision.label,
                r.ready(),
                r.desired
            )
        })
        .collect();
    let _ = std::fs::remove_file(&db);
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }

    let last = last.ok_or("no deployment ran")?;
    let reason = last.rollback.map(|(_, r)| r).unwrap_or_default();
    println!("v3: {} automatically ({reason})", last.phase);
    println!("serving now: {}", serving.join(", "));
    let ok = last.phase == Phase::RolledBack
        && observed.revisions.len() == 1
        && observed.revisions[0].revision.label == "v2"
        && observed.total_ready() == 3;
    if !ok {
        eprintln!("unexpected end state: v2 should serve alone after v3 rolled back");
    }
    Ok(ok)
}
