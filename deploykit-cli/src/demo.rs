//! `deploykit demo`: the sample app deployed three times on this machine, under load.
//!
//! v1 is deployed, v2 replaces it by canary, and v3, which answers half its requests with
//! 500, is rolled back by the canary's error-rate analysis. A load generator sends requests
//! through the proxy the whole time; the demo ends with how many requests each version
//! served, how many the proxy dropped (it must be none) and how long the rollback took to move
//! every new request back to v2.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use deploykit_config::Config;
use deploykit_core::{
    Actor, DeployRequest, Digest, Error, Orchestrator, OrchestratorConfig, Phase, Result,
};
use deploykit_local::loadgen::{self, Completed, LoadConfig};
use deploykit_local::{LocalEnvironment, LocalOptions};
use deploykit_sqlite::SqliteStore;
use serde_json::json;
use tokio::sync::mpsc;

use crate::Output;

/// The sample configuration, also in `examples/local/deploykit.toml`.
const SAMPLE_CONFIG: &str = include_str!("../../examples/local/deploykit.toml");
/// The sample app's command in that configuration: `deploykit sample-app`, found on `PATH`.
/// The demo runs this very binary instead, so it works wherever the binary is.
const SAMPLE_COMMAND: &str = r#"command = ["deploykit", "sample-app"]"#;

/// Arguments of `deploykit demo`.
#[derive(Args, Debug)]
pub(crate) struct DemoArgs {
    /// Where the proxy listens (default: a free port on loopback).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Requests per second sent through the proxy during the demo.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Keep the state directory (journal, instance logs) instead of deleting it.
    #[arg(long)]
    keep: bool,
}

/// What the load generator saw, split by the deployment phase it was in.
#[derive(Default)]
struct Tally {
    by_version: BTreeMap<String, u64>,
    app_errors: u64,
    dropped: u64,
    dropped_samples: Vec<String>,
    last_v3_sent: Option<Instant>,
}

/// This binary: `deploykit sample-app` is the sample app.
fn sample_app() -> Result<PathBuf> {
    std::env::current_exe().map_err(|e| Error::backend("find the deploykit binary", e.to_string()))
}

pub(crate) async fn run(args: &DemoArgs, output: Output) -> Result<ExitCode> {
    let say = |line: String| {
        if output == Output::Text {
            crate::outln!("{line}");
        }
    };
    let app = sample_app()?;
    let state = std::env::temp_dir().join(format!("deploykit-demo-{}", std::process::id()));
    std::fs::create_dir_all(&state)
        .map_err(|e| Error::backend(format!("create {}", state.display()), e.to_string()))?;
    if !SAMPLE_CONFIG.contains(SAMPLE_COMMAND) {
        return Err(Error::invalid(
            "examples/local/deploykit.toml",
            format!("the demo expects the sample service to say {SAMPLE_COMMAND}"),
        ));
    }
    let command = serde_json::json!([app.to_string_lossy(), "sample-app"]);
    let text = SAMPLE_CONFIG.replace(SAMPLE_COMMAND, &format!("command = {command}"));
    let config = Config::from_toml_str("examples/local/deploykit.toml", &text)?;
    let web = config.service("web")?.clone();
    let production = config.environment("production")?.clone();

    let local = LocalEnvironment::open(
        LocalOptions::new(state.join("local"))
            .listen(args.listen)
            .workdir(&state)
            .default_service(web.name.clone())
            .grace(Duration::from_secs(5))
            .drain_timeout(Duration::from_secs(10)),
    )
    .await?;
    let orchestrator = Orchestrator::builder(SqliteStore::open(state.join("deploykit.db")).await?)
        .environment_with_monitor(production, Arc::new(local.clone()), Arc::new(local.clone()))
        .config(
            OrchestratorConfig::builder()
                .poll_interval(Duration::from_millis(100))
                .build(),
        )
        .open()
        .await?;
    let addr = local.proxy_addr();
    say(format!(
        "deploykit demo: sample app {} behind the proxy on http://{addr}/\n\
         (canary 25 % → 50 % → 100 %, error-rate analysis every second; state in {})\n",
        app.display(),
        state.display()
    ));

    let started = Instant::now();
    let mut events = orchestrator.subscribe();
    let timeline_output = output;
    let rollback_at: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let rollback_seen = rollback_at.clone();
    let timeline = tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            if event.phase == Phase::RollingBack {
                rollback_seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(Instant::now());
            }
            if timeline_output == Output::Text {
                crate::outln!(
                    "{:>6.2}s  {} {}  {}",
                    started.elapsed().as_secs_f64(),
                    event.service,
                    event.revision,
                    event.description()
                );
            }
        }
    });

    let deploy = |label: &str, vars: &[(&str, &str)]| {
        let mut spec = web.clone();
        spec.variables.insert("VERSION".into(), label.into());
        for (k, v) in vars {
            spec.variables.insert((*k).into(), (*v).into());
        }
        DeployRequest::builder()
            .service(spec)
            .environment("production")
            .artifact(Digest::of_bytes(app.to_string_lossy().as_bytes()))
            .label(label)
            .requested_by(Actor::new("demo"))
            .build()
    };

    let v1 = orchestrator.deploy(deploy("v1", &[])).await?;
    let v1 = orchestrator.wait(&v1).await?;
    say(String::new());

    // Load from here on: 1 request in 10 is slow (200 ms).
    let (tx, mut rx) = mpsc::unbounded_channel::<Completed>();
    let mut load = LoadConfig::new(addr, u64::MAX / 2);
    load.rate_per_sec = Some(args.rate);
    load.concurrency = 16;
    let load_task = tokio::spawn(loadgen::run(load, Some(tx)));

    let v2 = orchestrator.deploy(deploy("v2", &[])).await?;
    let v2 = orchestrator.wait(&v2).await?;
    say(String::new());
    let v3 = orchestrator
        .deploy(deploy("v3", &[("ERROR_RATE", "0.5")]))
        .await?;
    let v3 = orchestrator.wait(&v3).await?;
    // A little more traffic after the rollback, all of which must reach v2.
    tokio::time::sleep(Duration::from_secs(2)).await;
    load_task.abort();

    let mut tally = Tally::default();
    while let Ok(c) = rx.try_recv() {
        match (&c.version, c.ok) {
            (Some(v), ok) => {
                *tally.by_version.entry(v.clone()).or_default() += 1;
                if !ok {
                    tally.app_errors += 1;
                }
                if v == "v3" {
                    tally.last_v3_sent = tally.last_v3_sent.max(Some(c.sent_at));
                }
            }
            (None, _) => {
                tally.dropped += 1;
                if tally.dropped_samples.len() < 5 {
                    tally.dropped_samples.push(format!(
                        "request sent at {:.2}s got no answer from any version",
                        c.sent_at.duration_since(started).as_secs_f64()
                    ));
                }
            }
        }
    }
    let rollback_at = *rollback_at.lock().unwrap_or_else(|p| p.into_inner());
    // From the rollback decision to the last request that still reached v3.
    let rollback_latency = match (rollback_at, tally.last_v3_sent) {
        (Some(at), Some(last)) => Some(last.saturating_duration_since(at)),
        (Some(_), None) => Some(Duration::ZERO),
        _ => None,
    };

    orchestrator.shutdown().await?;
    local.shutdown(true).await;
    timeline.abort();
    if !args.keep {
        let _ = std::fs::remove_dir_all(&state);
    }

    let total: u64 = tally.by_version.values().sum::<u64>() + tally.dropped;
    let served: Vec<String> = tally
        .by_version
        .iter()
        .map(|(v, n)| format!("{v} {n}"))
        .collect();
    let ok = v1.phase == Phase::Succeeded
        && v2.phase == Phase::Succeeded
        && v3.phase == Phase::RolledBack
        && tally.dropped == 0;
    match output {
        Output::Text => {
            crate::outln!(
                "\nv1 {}, v2 {}, v3 {}{}",
                v1.phase,
                v2.phase,
                v3.phase,
                v3.rollback
                    .as_ref()
                    .map(|(_, r)| format!(" ({r})"))
                    .unwrap_or_default()
            );
            crate::outln!(
                "load: {total} requests through the proxy; served by {}; {} injected 500s from v3; {} dropped by the proxy",
                served.join(", "),
                tally.app_errors,
                tally.dropped
            );
            match rollback_latency {
                Some(latency) if latency > Duration::ZERO => crate::outln!(
                    "rollback: the last request to reach v3 was sent {:.2} ms after the rollback decision",
                    latency.as_secs_f64() * 1000.0
                ),
                Some(_) => {
                    crate::outln!(
                        "rollback: no request sent after the rollback decision reached v3"
                    )
                }
                None => {}
            }
            for s in &tally.dropped_samples {
                crate::outln!("  dropped: {s}");
            }
            if !ok {
                eprintln!(
                    "demo: expected v1 and v2 to succeed, v3 to roll back, and no dropped request"
                );
            }
        }
        Output::Json => crate::outln!(
            "{}",
            json!({
                "phases": [v1.phase.to_string(), v2.phase.to_string(), v3.phase.to_string()],
                "requests": total,
                "by_version": tally.by_version,
                "app_errors": tally.app_errors,
                "dropped": tally.dropped,
                "rollback_latency_ms": rollback_latency.map(|d| d.as_secs_f64() * 1000.0),
                "ok": ok,
            })
        ),
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
