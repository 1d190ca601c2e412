//! The conformance suites against the in-memory and SQLite backends.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deploykit_core::{Clock, Revision, RevisionId, ServiceId, Timestamp};
use deploykit_sqlite::SqliteStore;
use deploykit_testing::conformance::{environment, monitor, state_store};
use deploykit_testing::{MemoryStore, SimCluster};

#[tokio::test(start_paused = true)]
async fn sim_cluster_meets_the_environment_contract() {
    let sim = SimCluster::new();
    let env = common::production();
    let svc = common::service();
    let fixture = environment::EnvironmentFixture {
        service: svc.name.clone(),
        first: Revision::new(&svc, &env, common::artifact("v1"), "v1").expect("revision"),
        second: Revision::new(&svc, &env, common::artifact("v2"), "v2").expect("revision"),
        poll: Duration::from_millis(500),
        settle_timeout: Duration::from_secs(60),
    };
    environment::run_all(&sim, &fixture).await;
}

/// Scripts the simulated cluster's metrics with `set_metric`, one fresh series per call.
struct SimScript<'a> {
    sim: &'a SimCluster,
    series: AtomicU32,
}

#[async_trait]
impl monitor::MetricScript for SimScript<'_> {
    async fn script(&self, service: &ServiceId, values: &[(RevisionId, f64)]) -> Option<String> {
        let expr = format!("conf_{}", self.series.fetch_add(1, Ordering::Relaxed));
        for (revision, value) in values {
            self.sim
                .set_metric(service, Some(revision), &expr, vec![0.0, *value]);
        }
        Some(expr)
    }

    fn absent(&self) -> String {
        "conf_never_set".to_string()
    }

    fn malformed(&self) -> String {
        "error_rate{{revison}}".to_string()
    }

    fn now(&self) -> Timestamp {
        self.sim.clock().now()
    }
}

#[tokio::test(start_paused = true)]
async fn sim_cluster_meets_the_monitor_contract() {
    let sim = SimCluster::new();
    let env = common::production();
    let svc = common::service();
    let revision = |label| {
        Revision::new(&svc, &env, common::artifact(label), label)
            .expect("revision")
            .id
    };
    let fixture = monitor::MonitorFixture {
        service: svc.name.clone(),
        first: revision("v1"),
        second: revision("v2"),
        slack: Duration::ZERO,
    };
    let script = SimScript {
        sim: &sim,
        series: AtomicU32::new(0),
    };
    monitor::run_all(&sim, &fixture, &script).await;
}

#[tokio::test]
async fn memory_store_meets_the_state_store_contract() {
    state_store::run_all(&MemoryStore::new()).await;
}

#[tokio::test]
async fn sqlite_store_meets_the_state_store_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path().join("state.db"))
        .await
        .expect("open");
    state_store::run_all(&store).await;
}

#[tokio::test]
async fn sqlite_store_persists_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    {
        let store = SqliteStore::open(&path).await.expect("open");
        state_store::journal_round_trip(&store).await;
    }
    let store = SqliteStore::open(&path).await.expect("reopen");
    let loaded =
        deploykit_core::StateStore::load(&store, &deploykit_core::DeploymentId::new("rt-1"))
            .await
            .expect("load")
            .expect("journal survives reopening");
    assert_eq!(loaded.len(), 3);
}
