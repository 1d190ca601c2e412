//! The driver and a backend's used-up retries (issue 16, item 2): an error whose retries a
//! backend already used up ([`Error::Persistent`]) is not retried fast again, but at the
//! driver's longest delay; a transient one still gets the driver's own fast backoff; and either
//! way the deployment is driven to its end once the backend answers again.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deploykit_core::{
    DesiredState, Environment, Error, Observed, Orchestrator, OrchestratorConfig, Phase, Result,
    ServiceId, TrafficSplit,
};
use deploykit_testing::{MemoryStore, SimCluster};
use tokio::time::Instant;

const RETRY_MAX: Duration = Duration::from_secs(5);

/// The simulated cluster, whose next applies fail (persistently or transiently).
#[derive(Debug)]
struct Failing {
    sim: SimCluster,
    left: AtomicU32,
    persistent: bool,
    failed_at: Mutex<Vec<Instant>>,
}

#[async_trait]
impl Environment for Failing {
    async fn apply(&self, service: &ServiceId, desired: &DesiredState) -> Result<()> {
        if self
            .left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            self.failed_at.lock().expect("lock").push(Instant::now());
            let source = "503 service unavailable".into();
            return Err(if self.persistent {
                Error::Persistent {
                    operation: format!("apply {service}"),
                    attempts: 6,
                    elapsed: Duration::from_secs(6),
                    source,
                }
            } else {
                Error::Transient {
                    operation: format!("apply {service}"),
                    source,
                }
            });
        }
        self.sim.apply(service, desired).await
    }

    async fn observe(&self, service: &ServiceId) -> Result<Observed> {
        self.sim.observe(service).await
    }

    async fn teardown(&self, service: &ServiceId) -> Result<()> {
        self.sim.teardown(service).await
    }

    fn traffic_split(&self) -> TrafficSplit {
        self.sim.traffic_split()
    }
}

/// Deploys v1 while its first four applies fail; returns the gaps between the failures.
async fn gaps_between_failures(persistent: bool) -> Vec<Duration> {
    let sim = SimCluster::new();
    let env = Arc::new(Failing {
        sim: sim.clone(),
        left: AtomicU32::new(4),
        persistent,
        failed_at: Mutex::new(Vec::new()),
    });
    let config = OrchestratorConfig::builder()
        .poll_interval(Duration::from_secs(1))
        .lease_ttl(Duration::from_secs(30))
        .retry_initial(Duration::from_millis(100))
        .retry_max(RETRY_MAX)
        .build();
    let orch = Orchestrator::builder(MemoryStore::new())
        .environment(common::production(), env.clone())
        .clock(Arc::new(sim.clock()))
        .config(config)
        .open()
        .await
        .expect("open");
    let (_, phase) = common::deploy_and_wait(&orch, "v1").await;
    assert_eq!(
        phase,
        Phase::Succeeded,
        "driven on once the backend answers"
    );
    orch.shutdown().await.expect("shutdown");
    let times = env.failed_at.lock().expect("lock").clone();
    assert_eq!(times.len(), 4);
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test(start_paused = true)]
async fn used_up_retries_are_retried_at_the_longest_delay_not_fast() {
    let gaps = gaps_between_failures(true).await;
    assert!(
        gaps.iter().all(|g| *g >= RETRY_MAX),
        "the driver retried a persistent failure sooner than retry_max: {gaps:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn transient_failures_still_get_the_drivers_fast_backoff() {
    let gaps = gaps_between_failures(false).await;
    assert!(gaps.iter().all(|g| *g < Duration::from_secs(1)), "{gaps:?}");
    assert!(gaps.windows(2).all(|w| w[1] > w[0]), "growing: {gaps:?}");
}
