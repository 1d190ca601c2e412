//! Zero downtime, measured: requests (1 in 10 slow) go through the proxy while a canary rolls
//! to 100 %, while a blue-green switch happens, and while a bad canary is rolled back. No
//! request may be dropped; the bad canary's own 500s are the app's answers, not drops.
//!
//! CI runs 3,000 requests per scenario. The figures in BENCHMARKS.md come from
//! `DEPLOYKIT_LOAD_REQUESTS=10000 cargo test --release -p deploykit-cli --test zero_downtime -- --nocapture`.

mod common;

use std::time::{Duration, Instant};

use common::Rig;
use deploykit_core::Phase;
use deploykit_local::loadgen::{self, Completed, LoadConfig};
use tokio::sync::mpsc;

const CONFIG: &str = r#"
application = "zero-downtime"

[analyses.errors]
metrics = [
  { name = "error-rate", query = "error_rate[5s]", below = 0.02, interval = "500ms", count = 20 },
]

[services.web]
command = ["{APP}"]
port = 8080
health.readiness = { http = "/healthz", period = "200ms", timeout = "150ms", failure_threshold = 2 }

[environments.canary]
kind = "production"
replicas = 2
progress_deadline = "30s"

[environments.canary.strategy.canary]
background_analysis = "errors"
scale_down_delay = "500ms"
steps = [
  { weight = 25 },
  { pause = "1s" },
  { weight = 50 },
  { pause = "1s" },
]

[environments.bluegreen]
kind = "staging"
replicas = 2
progress_deadline = "30s"
strategy.blue_green = { auto_promote = true, auto_promotion_delay = "1s", scale_down_delay = "500ms" }
"#;

fn requests() -> u64 {
    std::env::var("DEPLOYKIT_LOAD_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

/// One scenario's figures.
struct Row {
    name: &'static str,
    requests: u64,
    dropped: u64,
    app_errors: u64,
    fast: (Duration, Duration),
    slow: (Duration, Duration),
    rollback_latency: Option<Duration>,
    versions: Vec<String>,
}

/// Deploy `from`, then run load while deploying `to` (with `vars`); return the figures.
async fn scenario(name: &'static str, env: &str, to_vars: &[(&str, &str)], expect: Phase) -> Row {
    let rig = Rig::new(CONFIG).await;
    let first = rig
        .orchestrator
        .deploy(rig.request("web", env, "v1", &[]))
        .await
        .expect("deploy v1");
    assert_eq!(
        rig.orchestrator.wait(&first).await.expect("v1").phase,
        Phase::Succeeded
    );

    let total = requests();
    // Paced so the load (12 s) outlasts the rollout (about 4 s) with room to spare on a slow machine.
    let mut load = LoadConfig::new(rig.local.proxy_addr(), total);
    load.rate_per_sec = Some((total / 12).max(100) as u32);
    load.concurrency = 16;
    let (tx, mut rx) = mpsc::unbounded_channel::<Completed>();
    let load = tokio::spawn(loadgen::run(load, Some(tx)));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut events = rig.orchestrator.subscribe();
    let id = rig
        .orchestrator
        .deploy(rig.request("web", env, "v2", to_vars))
        .await
        .expect("deploy v2");
    let watch = tokio::spawn(async move {
        while let Ok(e) = events.recv().await {
            if e.phase == Phase::RollingBack {
                return Some(Instant::now());
            }
            if e.phase.is_terminal() {
                return None;
            }
        }
        None
    });
    let status = rig.orchestrator.wait(&id).await.expect("v2");
    let deploy_done = Instant::now();
    assert_eq!(status.phase, expect, "{name}: {:?}", status.rollback);
    let rollback_at = watch.await.expect("event watcher");
    let report = load.await.expect("load generator");
    assert!(
        report.elapsed > Duration::ZERO,
        "{name}: the load generator ran"
    );

    let (mut dropped, mut app_errors) = (0, 0);
    let mut last_v2_sent = None;
    let mut last_done = None;
    let mut samples = Vec::new();
    let (mut fast, mut slow) = (Vec::new(), Vec::new());
    while let Ok(c) = rx.try_recv() {
        last_done = last_done.max(Some(c.done_at));
        let took = c.done_at.saturating_duration_since(c.sent_at);
        if c.path_slow {
            slow.push(took);
        } else {
            fast.push(took);
        }
        match &c.version {
            None => {
                dropped += 1;
                if samples.len() < 5 {
                    samples.push(format!("{c:?}"));
                }
            }
            Some(v) => {
                if !c.ok {
                    app_errors += 1;
                }
                if v == "v2" {
                    last_v2_sent = last_v2_sent.max(Some(c.sent_at));
                }
            }
        }
    }
    assert!(
        last_done.is_some_and(|d| d > deploy_done),
        "{name}: the load must outlast the deployment to prove anything"
    );
    let rollback_latency = rollback_at
        .map(|at| last_v2_sent.map_or(Duration::ZERO, |last| last.saturating_duration_since(at)));
    let versions = report.by_version.keys().cloned().collect();
    rig.close().await;
    assert_eq!(dropped, 0, "{name}: dropped requests: {samples:?}");
    assert_eq!(
        report.failures, app_errors,
        "{name}: every failure is an app 500"
    );
    Row {
        name,
        requests: report.requests,
        dropped,
        app_errors,
        fast: percentiles(&mut fast),
        slow: percentiles(&mut slow),
        rollback_latency,
        versions,
    }
}

/// p50 and p99 of `d`.
fn percentiles(d: &mut [Duration]) -> (Duration, Duration) {
    d.sort();
    let at = |q: f64| {
        d.get(((d.len() as f64 * q) as usize).min(d.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    (at(0.50), at(0.99))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_is_dropped_during_canary_blue_green_and_rollback() {
    let rows = vec![
        scenario("canary to 100 %", "canary", &[], Phase::Succeeded).await,
        scenario("blue-green switch", "bluegreen", &[], Phase::Succeeded).await,
        scenario(
            "bad canary rolled back",
            "canary",
            &[("ERROR_RATE", "0.5")],
            Phase::RolledBack,
        )
        .await,
    ];
    println!(
        "\n| scenario | requests | dropped | app 500s | `/` p50 | `/` p99 | `/slow` (200 ms) p50 | `/slow` p99 | rollback latency | versions served |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.requests,
            r.dropped,
            r.app_errors,
            ms(r.fast.0),
            ms(r.fast.1),
            ms(r.slow.0),
            ms(r.slow.1),
            r.rollback_latency.map_or("-".into(), ms),
            r.versions.join(" ")
        );
    }
    for r in &rows[..2] {
        assert_eq!(r.versions, ["v1", "v2"], "{}: both versions served", r.name);
    }
    assert!(rows[2].app_errors > 0, "the bad canary did take traffic");
    assert!(rows[2].rollback_latency.is_some(), "the rollback was seen");
}
