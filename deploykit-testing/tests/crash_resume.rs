//! Crash and resume: for every journal point of a deployment, stop the orchestrator right after
//! that entry reaches the SQLite file and before anything else happens, open a new orchestrator
//! on the same file, and check it ends exactly where an uninterrupted run ends, with no action's
//! effect applied twice.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deploykit_core::analysis::{AnalysisSpec, Condition, MetricCheck};
use deploykit_core::journal::{JournalEntry, JournalEvent};
use deploykit_core::store::{StateStore, StateStoreLayer};
use deploykit_core::strategy::{BlueGreenSpec, CanarySpec, CanaryStep};
use deploykit_core::{
    Actor, DeploymentId, Environment, EnvironmentSpec, Orchestrator, Phase, Quantity, Result,
    StrategySpec,
};
use deploykit_sqlite::SqliteStore;
use deploykit_testing::{Behavior, SimCluster};
use tokio::sync::Notify;

/// A store that "crashes" the process right after it persists entry `crash_at` of the
/// deployment of `label`: the append never returns.
#[derive(Debug)]
struct CrashingStore {
    inner: SqliteStore,
    label: String,
    crash_at: u64,
    target: std::sync::Mutex<Option<DeploymentId>>,
    crashed: AtomicBool,
    notify: Arc<Notify>,
}

#[async_trait]
impl StateStoreLayer for CrashingStore {
    fn inner(&self) -> &dyn StateStore {
        &self.inner
    }
    async fn append(&self, deployment: &DeploymentId, entry: &JournalEntry) -> Result<()> {
        if self.crashed.load(Ordering::SeqCst) {
            return std::future::pending().await;
        }
        self.inner.append(deployment, entry).await?;
        if let JournalEvent::Created { spec } = &entry.event
            && spec.target.label == self.label
        {
            *self.target.lock().expect("lock") = Some(deployment.clone());
        }
        let is_target = self.target.lock().expect("lock").as_ref() == Some(deployment);
        if is_target && entry.seq == self.crash_at {
            self.crashed.store(true, Ordering::SeqCst);
            self.notify.notify_one();
            return std::future::pending().await;
        }
        Ok(())
    }
}

/// How a run ended: phase, who serves, instance starts per revision label, and the kinds of
/// the deployment's journal entries.
#[derive(Debug, PartialEq)]
struct Ending {
    phase: Phase,
    serving: Vec<(String, u32)>,
    starts: Vec<(String, u32)>,
    journal: Vec<String>,
}

async fn ending(
    sim: &SimCluster,
    store: &dyn StateStore,
    id: &DeploymentId,
    phase: Phase,
) -> Ending {
    let svc = common::service().name;
    let observed = sim.observe(&svc).await.expect("observe");
    let serving = observed
        .revisions
        .iter()
        .map(|r| (r.revision.label.clone(), r.ready()))
        .collect();
    let journal = store.load(id).await.expect("load").expect("journal");
    let mut starts = Vec::new();
    for e in &journal {
        if let JournalEvent::Applied { desired, .. } = &e.event {
            for t in &desired.revisions {
                if !starts.iter().any(|(l, _)| l == &t.revision.label) {
                    starts.push((t.revision.label.clone(), sim.starts(&svc, &t.revision.id)));
                }
            }
        }
    }
    starts.sort();
    // Consecutive applies of the same state would mean an action was journaled twice.
    let applied: Vec<_> = journal
        .iter()
        .filter_map(|e| match &e.event {
            JournalEvent::Applied { desired, .. } => Some(desired.clone()),
            _ => None,
        })
        .collect();
    for pair in applied.windows(2) {
        assert_ne!(
            pair[0], pair[1],
            "the same desired state was journaled twice in a row"
        );
    }
    Ending {
        phase,
        serving,
        starts,
        journal: journal.iter().map(|e| e.event.kind().to_string()).collect(),
    }
}

/// What a crash-resume scenario deploys.
#[derive(Clone)]
struct Scenario {
    env: EnvironmentSpec,
    behavior: Behavior,
    /// The new revision's error rate, for analysis.
    error_rate: f64,
    /// Whether an operator approves every gate the rollout waits at.
    approve: bool,
    expected: Phase,
}

async fn prepare(path: &Path, sim: &SimCluster, sc: &Scenario) {
    let store: Arc<dyn StateStore> = Arc::new(SqliteStore::open(path).await.expect("open"));
    let orch = common::open_monitored(store, sim, sc.env.clone(), "setup").await;
    assert_eq!(
        common::deploy_and_wait(&orch, "v1").await.1,
        Phase::Succeeded
    );
    sim.set_behavior(&common::artifact("v2"), sc.behavior.clone());
    let v2 = common::revision_in(&sc.env, "v2");
    sim.set_metric(
        &common::service().name,
        Some(&v2.id),
        "error_rate",
        vec![sc.error_rate],
    );
}

/// An operator who approves whatever the rollout waits for, through its own connection (as a
/// separate process would).
async fn approver(path: &Path, sc: &Scenario) -> Option<tokio::task::JoinHandle<()>> {
    if !sc.approve {
        return None;
    }
    let store: Arc<dyn StateStore> = Arc::new(SqliteStore::open(path).await.expect("open"));
    let operator = Orchestrator::builder_shared(store.clone())
        .open()
        .await
        .expect("operator");
    Some(tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            for id in store.list_active().await.unwrap_or_default() {
                let awaiting = operator.status(&id).await.ok().and_then(|s| s.awaiting);
                if awaiting.is_some() {
                    let _ = operator.approve(&id, Actor::new("qa"), "looks good").await;
                }
            }
        }
    }))
}

/// An uninterrupted run: the reference.
async fn reference(sc: &Scenario) -> Ending {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    let sim = SimCluster::new();
    prepare(&path, &sim, sc).await;
    let store: Arc<dyn StateStore> = Arc::new(SqliteStore::open(&path).await.expect("open"));
    let orch = common::open_monitored(store.clone(), &sim, sc.env.clone(), "ref").await;
    let approving = approver(&path, sc).await;
    let (id, phase) = common::deploy_and_wait(&orch, "v2").await;
    if let Some(task) = approving {
        task.abort();
    }
    ending(&sim, store.as_ref(), &id, phase).await
}

/// A run that crashes after journal entry `crash_at` and is resumed by a new orchestrator.
async fn crashed(sc: &Scenario, crash_at: u64) -> Ending {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    let sim = SimCluster::new();
    prepare(&path, &sim, sc).await;
    let notify = Arc::new(Notify::new());
    let crashing = Arc::new(CrashingStore {
        inner: SqliteStore::open(&path).await.expect("open"),
        label: "v2".into(),
        crash_at,
        target: std::sync::Mutex::new(None),
        crashed: AtomicBool::new(false),
        notify: notify.clone(),
    });
    let approving = approver(&path, sc).await;
    let first =
        Arc::new(common::open_monitored(crashing.clone(), &sim, sc.env.clone(), "first").await);
    let deploying = {
        let first = first.clone();
        tokio::spawn(async move { first.deploy(common::request("v2")).await })
    };
    notify.notified().await;
    // The process dies: its deploy call and every driver stop where they are.
    deploying.abort();
    let _ = deploying.await;
    drop(Arc::try_unwrap(first).expect("sole owner"));

    let store: Arc<dyn StateStore> = Arc::new(SqliteStore::open(&path).await.expect("reopen"));
    let active = store.list_active().await.expect("active");
    assert_eq!(active.len(), 1, "the interrupted deployment is in flight");
    let id = active[0].clone();
    let second = common::open_monitored(store.clone(), &sim, sc.env.clone(), "second").await;
    let status = tokio::time::timeout(Duration::from_secs(3600), second.wait(&id))
        .await
        .expect("resumed deployment ends")
        .expect("wait");
    if let Some(task) = approving {
        task.abort();
    }
    ending(&sim, store.as_ref(), &id, status.phase).await
}

async fn check_every_journal_point(sc: Scenario) {
    let reference = reference(&sc).await;
    assert_eq!(reference.phase, sc.expected, "{reference:?}");
    let entries = reference.journal.len();
    assert!(
        entries >= 5,
        "a rollout this size writes several entries: {reference:?}"
    );
    let mut points = 0;
    for (crash_at, kind) in reference.journal.iter().enumerate().take(entries - 1) {
        if kind == "approved" {
            // Written by the operator, not by the orchestrator that crashes.
            continue;
        }
        let resumed = crashed(&sc, crash_at as u64).await;
        points += 1;
        assert_eq!(
            (&resumed.phase, &resumed.serving, &resumed.starts),
            (&reference.phase, &reference.serving, &reference.starts),
            "crash after journal entry {crash_at} ({kind}): resumed run {resumed:?} differs from {reference:?}"
        );
    }
    assert!(points >= 4, "only {points} crash points");
}

fn rolling() -> EnvironmentSpec {
    common::environment(3, Quantity::Count(1), Quantity::Count(1))
}

#[tokio::test(start_paused = true)]
async fn a_successful_rollout_survives_a_crash_at_every_journal_point() {
    check_every_journal_point(Scenario {
        env: rolling(),
        behavior: Behavior::Healthy,
        error_rate: 0.0,
        approve: false,
        expected: Phase::Succeeded,
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn an_automatic_rollback_survives_a_crash_at_every_journal_point() {
    check_every_journal_point(Scenario {
        env: rolling(),
        behavior: Behavior::FailReadiness {
            reason: "GET /health returned 503".into(),
        },
        error_rate: 0.0,
        approve: false,
        expected: Phase::RolledBack,
    })
    .await;
}

fn canary_with_analysis() -> EnvironmentSpec {
    let analysis = AnalysisSpec::new(vec![
        MetricCheck::threshold("error-rate", "error_rate", Condition::below(0.05))
            .interval(Duration::from_secs(20))
            .count(2)
            .build()
            .expect("metric"),
    ])
    .expect("analysis");
    let spec = CanarySpec::builder()
        .steps(vec![
            CanaryStep::weight(25).expect("weight"),
            CanaryStep::analysis(analysis),
            CanaryStep::weight(50).expect("weight"),
            CanaryStep::pause(Duration::from_secs(30)),
        ])
        .build()
        .expect("canary");
    common::environment_with(4, StrategySpec::Canary(spec))
}

#[tokio::test(start_paused = true)]
async fn a_canary_with_analysis_survives_a_crash_at_every_journal_point() {
    check_every_journal_point(Scenario {
        env: canary_with_analysis(),
        behavior: Behavior::Healthy,
        error_rate: 0.01,
        approve: false,
        expected: Phase::Succeeded,
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_canary_analysis_survives_a_crash_at_every_journal_point() {
    check_every_journal_point(Scenario {
        env: canary_with_analysis(),
        behavior: Behavior::Healthy,
        error_rate: 0.4,
        approve: false,
        expected: Phase::RolledBack,
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_blue_green_with_manual_promotion_survives_a_crash_at_every_journal_point() {
    let spec = BlueGreenSpec::builder()
        .auto_promote(false)
        .build()
        .expect("blue-green");
    check_every_journal_point(Scenario {
        env: common::environment_with(3, StrategySpec::BlueGreen(spec)),
        behavior: Behavior::Healthy,
        error_rate: 0.0,
        approve: true,
        expected: Phase::Succeeded,
    })
    .await;
}
