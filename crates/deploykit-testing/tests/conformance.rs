//! The conformance suites against the in-memory and SQLite backends.

mod common;

use std::time::Duration;

use deploykit_core::{Revision, SqliteStore};
use deploykit_testing::conformance::{environment, state_store};
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
