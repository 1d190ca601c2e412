//! Alerting: a canary whose analysis and alert rule read real Prometheus data when a
//! Prometheus is reachable (`DEPLOYKIT_PROMETHEUS_URL`, as `bash .ci/with-prometheus` sets up)
//! and the in-memory monitor otherwise. The new revision's error ratio trips the alert
//! `canary-errors`, which is routed to the pager and rolls the canary back.
//!
//! ```sh
//! bash .ci/with-prometheus cargo run -p deploykit-examples --example alerting   # real Prometheus
//! cargo run -p deploykit-examples --example alerting                            # in memory
//! ```
//!
//! It exits non-zero unless the alert fired, reached the pager and rolled v2 back.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use deploykit_alerting::{
    AlertRule, Alerting, Matcher, NotificationStatus, Route, rollback_on_alerts,
};
use deploykit_core::analysis::{AnalysisSpec, Condition, MetricCheck};
use deploykit_core::strategy::{CanarySpec, CanaryStep};
use deploykit_core::{
    Actor, DeployRequest, Digest, EnvironmentKind, EnvironmentSpec, Monitor, Orchestrator,
    OrchestratorConfig, Phase, Revision, ServiceSpec, StrategySpec,
};
use deploykit_examples::{Timeline, exit_code};
use deploykit_sqlite::SqliteStore;
use deploykit_telemetry::prometheus::PrometheusMonitor;
use deploykit_testing::{RecordingAlertSink, SimCluster};

type Error = Box<dyn std::error::Error>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    exit_code("alerting", run().await)
}

/// The queries, for Prometheus (series of the CI's scrape target) or the in-memory monitor.
struct Queries {
    error_ratio: &'static str,
    request_rate: &'static str,
}

const PROMETHEUS: Queries = Queries {
    error_ratio: "sum(rate(deploykit_test_requests_total{revision_id=\"{{revision}}\",status=\"500\"}[10s])) / sum(rate(deploykit_test_requests_total{revision_id=\"{{revision}}\"}[10s]))",
    request_rate: "sum(rate(deploykit_test_requests_total{revision_id=\"{{revision}}\"}[10s]))",
};

const IN_MEMORY: Queries = Queries {
    error_ratio: "error_ratio",
    request_rate: "request_rate",
};

/// A reachable Prometheus, and the scrape target to register revisions with.
async fn prometheus() -> Option<(PrometheusMonitor, String)> {
    let url = std::env::var("DEPLOYKIT_PROMETHEUS_URL").ok()?;
    let target = std::env::var("DEPLOYKIT_METRICS_TARGET_URL").ok()?;
    let monitor = PrometheusMonitor::new(&url).ok()?;
    let probe = deploykit_core::MetricQuery::new(deploykit_core::ServiceId::new("web").ok()?, "up");
    monitor.query(&probe).await.ok()?;
    Some((monitor, target))
}

/// Tell the scrape target to serve `behaviour` ("good" or "bad") series for `revision`.
async fn register(target: &str, revision: &Revision, behaviour: &str) -> Result<(), Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = target.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!(
        "POST /revisions?id={}&behaviour={behaviour} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        revision.id
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    if !response.starts_with("HTTP/1.0 204") && !response.starts_with("HTTP/1.1 204") {
        return Err(format!("the scrape target refused the registration: {response}").into());
    }
    Ok(())
}

async fn run() -> Result<bool, Error> {
    let web = ServiceSpec::builder().name("web").port(8080).build()?;
    let cluster = SimCluster::new();
    let real = prometheus().await;
    let (monitor, queries): (Arc<dyn Monitor>, &Queries) = match &real {
        Some((p, _)) => (Arc::new(p.clone()), &PROMETHEUS),
        None => {
            // No Prometheus: the simulated cluster serves the metrics, on a paused clock.
            tokio::time::pause();
            (Arc::new(cluster.clone()), &IN_MEMORY)
        }
    };
    println!(
        "deploykit alerting: canary of web in production, metrics from {}\n",
        if real.is_some() {
            "a real Prometheus"
        } else {
            "the in-memory monitor"
        }
    );

    // The canary checks that the new revision gets traffic, then waits; the alert watches
    // its error ratio meanwhile.
    let traffic = AnalysisSpec::new(vec![
        MetricCheck::threshold("traffic", queries.request_rate, Condition::above(1.0))
            .interval(Duration::from_secs(5))
            .count(2)
            .build()?,
    ])?;
    let canary = CanarySpec::builder()
        .steps(vec![
            CanaryStep::weight(25)?,
            CanaryStep::pause(Duration::from_secs(12)),
            CanaryStep::analysis(traffic),
            CanaryStep::pause(Duration::from_secs(120)),
            CanaryStep::weight(50)?,
        ])
        .build()?;
    let production = EnvironmentSpec::builder()
        .name("production")
        .kind(EnvironmentKind::Production)
        .replicas(4)
        .strategy(StrategySpec::Canary(canary))
        .build()?;
    let orchestrator = Arc::new(
        Orchestrator::builder(SqliteStore::open(":memory:").await?)
            .environment_with_monitor(
                production.clone(),
                Arc::new(cluster.clone()),
                monitor.clone(),
            )
            .clock(Arc::new(cluster.clock()))
            .config(
                OrchestratorConfig::builder()
                    .poll_interval(Duration::from_secs(1))
                    .build(),
            )
            .open()
            .await?,
    );
    let mut timeline = Timeline::new(cluster.clock().start(), orchestrator.subscribe());

    // The alert, its routing (pages go to the pager at once, the rest to chat), and the
    // rollback it triggers.
    let pager = RecordingAlertSink::new();
    let chat = RecordingAlertSink::new();
    let rule = AlertRule::builder()
        .name("canary-errors")
        .expr(queries.error_ratio)
        .condition(Condition::above(0.05))
        .for_(Duration::from_secs(10))
        .labels(deploykit_alerting::labels([("severity", "page")]))
        .annotations(deploykit_alerting::labels([(
            "summary",
            "{{service}} revision {{revision}} answers {{value}} of requests with errors",
        )]))
        .build()?;
    let alerting = Arc::new(
        Alerting::builder()
            .rule(rule)
            .route(
                Route::builder()
                    .receiver("chat")
                    .routes(vec![
                        Route::builder()
                            .matchers(vec![Matcher::eq("severity", "page")])
                            .receiver("pager")
                            .group_wait(Duration::ZERO)
                            .build(),
                    ])
                    .build(),
            )
            .sink("pager", Arc::new(pager.clone()))
            .sink("chat", Arc::new(chat.clone()))
            .clock(cluster.clock())
            .interval(Duration::from_secs(2))
            .build()?,
    );
    let _evaluator = alerting.clone().spawn(monitor.clone());
    let _trigger = rollback_on_alerts(orchestrator.clone(), alerting.clone(), ["canary-errors"]);

    let artifact = |label: &str| Digest::of_bytes(format!("web {label}").as_bytes());
    let v1 = Revision::new(&web, &production, artifact("v1"), "v1")?;
    let v2 = Revision::new(&web, &production, artifact("v2"), "v2")?;
    match &real {
        Some((_, target)) => {
            register(target, &v1, "good").await?;
            register(target, &v2, "bad").await?;
        }
        None => {
            for (rev, errors) in [(&v1, 0.0), (&v2, 0.5)] {
                cluster.set_metric(
                    &web.name,
                    Some(&rev.id),
                    IN_MEMORY.error_ratio,
                    vec![errors; 600],
                );
                cluster.set_metric(
                    &web.name,
                    Some(&rev.id),
                    IN_MEMORY.request_rate,
                    vec![10.0; 600],
                );
            }
        }
    }
    let request = |label: &str| {
        DeployRequest::builder()
            .service(web.clone())
            .environment("production")
            .artifact(artifact(label))
            .label(label)
            .requested_by(Actor::new("alice"))
            .build()
    };
    let first = orchestrator.deploy(request("v1")).await?;
    orchestrator.wait(&first).await?;
    let second = orchestrator.deploy(request("v2")).await?;
    let status =
        tokio::time::timeout(Duration::from_secs(300), orchestrator.wait(&second)).await??;
    // Give the pager's notification a moment to be delivered.
    tokio::time::sleep(Duration::from_secs(3)).await;
    timeline.print();

    let paged: Vec<String> = pager
        .notifications()
        .iter()
        .filter(|n| n.status == NotificationStatus::Firing)
        .flat_map(|n| n.alerts.iter())
        .map(|a| {
            format!(
                "{} {}",
                a.name(),
                a.annotations
                    .get("summary")
                    .map(String::as_str)
                    .unwrap_or("")
            )
        })
        .collect();
    println!("\npager received: {paged:?}");
    println!(
        "chat received:  {} notifications",
        chat.notifications().len()
    );
    let by_alert = orchestrator
        .audit_log()
        .await?
        .iter()
        .any(|r| r.actor.to_string() == "alert:canary-errors");
    println!(
        "v2 ended {}; aborted by alert:canary-errors: {by_alert}",
        status.phase
    );
    Ok(status.phase == Phase::RolledBack && by_alert && !paged.is_empty())
}
