//! 10,000 concurrent canary rollouts on the in-memory backend, on tokio's paused clock.
//!
//! Each rollout has 5 steps (20 % → pause 30 s → 50 % → analysis → 80 %) and a background
//! analysis every 30 s, for a service of its own with 2 replicas. The benchmark prints the wall
//! time, the number of journaled state transitions, the time per transition, and the peak
//! resident memory of the process.
//!
//! Run by hand (not in CI): `cargo bench -p deploykit-examples --bench canary_rollouts`
//! (optionally followed by `-- <count>`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use deploykit_core::analysis::{AnalysisSpec, Condition, MetricCheck};
use deploykit_core::strategy::{CanarySpec, CanaryStep};
use deploykit_core::{
    Actor, DeployRequest, Digest, EnvironmentKind, EnvironmentSpec, Orchestrator,
    OrchestratorConfig, Phase, Revision, ServiceSpec, StateStore, StrategySpec,
};
use deploykit_testing::{MemoryStore, SimCluster, SimConfig};

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn analysis(name: &str, interval: u64, count: Option<u32>) -> AnalysisSpec {
    let builder = MetricCheck::threshold(name, "error_rate", Condition::below(0.05))
        .interval(Duration::from_secs(interval));
    let check = match count {
        Some(n) => builder.count(n).build(),
        None => MetricCheck::threshold(name, "error_rate", Condition::below(0.05))
            .interval(Duration::from_secs(interval))
            .build(),
    };
    AnalysisSpec::new(vec![check.expect("metric")]).expect("analysis")
}

fn main() {
    let count: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let canary = CanarySpec::builder()
            .steps(vec![
                CanaryStep::weight(20).expect("w"),
                CanaryStep::pause(Duration::from_secs(30)),
                CanaryStep::weight(50).expect("w"),
                CanaryStep::analysis(analysis("step-error-rate", 10, Some(2))),
                CanaryStep::weight(80).expect("w"),
            ])
            .background_analysis(analysis("error-rate", 30, None))
            .scale_down_delay(Duration::ZERO)
            .build()
            .expect("canary");
        let env = EnvironmentSpec::builder()
            .name("production")
            .kind(EnvironmentKind::Production)
            .replicas(2)
            .strategy(StrategySpec::Canary(canary))
            .build()
            .expect("environment");
        let mut config = SimConfig::default();
        config.record_history = false;
        let sim = SimCluster::with_config(config);
        let store = MemoryStore::new();
        let orch = Orchestrator::builder(store.clone())
            .environment_with_monitor(env.clone(), Arc::new(sim.clone()), Arc::new(sim.clone()))
            .clock(Arc::new(sim.clock()))
            .config(
                OrchestratorConfig::builder()
                    .poll_interval(Duration::from_secs(1))
                    .build(),
            )
            .open()
            .await
            .expect("open");
        let services: Vec<ServiceSpec> = (0..count)
            .map(|i| ServiceSpec::builder().name(format!("svc-{i}")).build().expect("service"))
            .collect();
        let request = |svc: &ServiceSpec, label: &str| {
            DeployRequest::builder()
                .service(svc.clone())
                .environment("production")
                .artifact(Digest::of_bytes(format!("{} {label}", svc.name).as_bytes()))
                .label(label)
                .requested_by(Actor::new("bench"))
                .build()
        };
        // v1 everywhere first (a first deployment has no canary steps), with good metrics.
        let mut ids = Vec::new();
        for svc in &services {
            ids.push(orch.deploy(request(svc, "v1")).await.expect("deploy v1"));
            let v2 = Revision::new(svc, &env, Digest::of_bytes(format!("{} v2", svc.name).as_bytes()), "v2")
                .expect("revision");
            sim.set_metric(&svc.name, Some(&v2.id), "error_rate", vec![0.01]);
        }
        for id in &ids {
            orch.wait(id).await.expect("v1");
        }

        let wall = Instant::now();
        let simulated = tokio::time::Instant::now();
        let mut ids = Vec::new();
        for svc in &services {
            ids.push(orch.deploy(request(svc, "v2")).await.expect("deploy v2"));
        }
        let mut succeeded = 0;
        for id in &ids {
            if orch.wait(id).await.expect("wait").phase == Phase::Succeeded {
                succeeded += 1;
            }
        }
        let elapsed = wall.elapsed();
        let simulated = simulated.elapsed();
        let mut transitions = 0usize;
        for id in &ids {
            transitions += store.load(id).await.expect("load").map_or(0, |j| j.len());
        }
        let per = elapsed.as_secs_f64() * 1e6 / transitions as f64;
        println!("| rollouts | succeeded | simulated time | wall time | transitions | per transition | peak RSS |");
        println!("|---:|---:|---:|---:|---:|---:|---:|");
        println!(
            "| {count} | {succeeded} | {:.0} s | {:.2} s | {transitions} | {per:.1} µs | {:.0} MiB |",
            simulated.as_secs_f64(),
            elapsed.as_secs_f64(),
            peak_rss_mib()
        );
    });
}
