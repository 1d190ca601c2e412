//! Property tests for blue-green and canary rollouts: random steps, replicas, instance
//! behaviour, metric values, API faults and operator aborts.
//!
//! Invariants checked in every case:
//! 1. the stable revision keeps its full capacity (all instances ready) until promotion;
//! 2. a rollback's first action sends 100 % of traffic to stable whenever stable has its full
//!    capacity at that moment (one action, no partial states);
//! 3. every rollout reaches a terminal state;
//! 4. after a rollback only stable serves, fully ready, with all traffic, and the journal
//!    records that verification; after a success only the new revision serves;
//! 5. a broken canary (failing readiness, or a bad metric under analysis) never succeeds.
//!
//! `PROPTEST_CASES` sets the number of cases (default 256).

mod common;

use std::sync::Arc;
use std::time::Duration;

use deploykit_core::analysis::{AnalysisSpec, Condition, MetricCheck};
use deploykit_core::journal::JournalEvent;
use deploykit_core::strategy::{BlueGreenSpec, CanarySpec, CanaryStep};
use deploykit_core::{Actor, Environment, Outcome, Phase, StateStore, StrategySpec, Traffic};
use deploykit_testing::{Behavior, Fault, MemoryStore, Op, SimCluster};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Step {
    Weight(u32),
    Pause(u64),
    Analysis(u32),
}

#[derive(Clone, Debug)]
struct Case {
    replicas: u32,
    blue_green: bool,
    pre_promotion_analysis: bool,
    steps: Vec<Step>,
    background: bool,
    broken: bool,
    metric: f64,
    faults: Vec<(Op, u64, Fault)>,
    abort_after: Option<u64>,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (1u32..=99).prop_map(Step::Weight),
        (1u64..=120).prop_map(Step::Pause),
        (1u32..=3).prop_map(Step::Analysis),
    ]
}

fn fault() -> impl Strategy<Value = (Op, u64, Fault)> {
    (
        prop_oneof![Just(Op::Apply), Just(Op::Observe), Just(Op::Monitor)],
        0u64..40,
        prop_oneof![
            4 => Just(Fault::Transient),
            1 => Just(Fault::TransientAfterEffect),
            1 => Just(Fault::Permanent),
        ],
    )
}

fn case() -> impl Strategy<Value = Case> {
    (
        (
            1u32..=5,
            any::<bool>(),
            any::<bool>(),
            prop::collection::vec(step(), 1..6),
        ),
        (
            any::<bool>(),
            prop::bool::weighted(0.2),
            prop_oneof![Just(0.01), Just(0.3), Just(f64::NAN)],
            prop::collection::vec(fault(), 0..5),
            prop::option::weighted(0.3, 1u64..400),
        ),
    )
        .prop_map(
            |(
                (replicas, blue_green, pre, steps),
                (background, broken, metric, faults, abort_after),
            )| Case {
                replicas,
                blue_green,
                pre_promotion_analysis: pre,
                steps,
                background,
                broken,
                metric,
                faults,
                abort_after,
            },
        )
}

fn analysis(count: u32) -> AnalysisSpec {
    AnalysisSpec::new(vec![
        MetricCheck::threshold("error-rate", "error_rate", Condition::below(0.05))
            .interval(Duration::from_secs(10))
            .count(count)
            .build()
            .expect("metric"),
    ])
    .expect("analysis")
}

fn strategy(case: &Case) -> StrategySpec {
    if case.blue_green {
        let mut spec = BlueGreenSpec::default();
        if case.pre_promotion_analysis {
            spec.pre_promotion_analysis = Some(analysis(2));
        }
        return StrategySpec::BlueGreen(spec);
    }
    let steps = case
        .steps
        .iter()
        .map(|s| match s {
            Step::Weight(w) => CanaryStep::weight(*w).expect("weight"),
            Step::Pause(secs) => CanaryStep::pause(Duration::from_secs(*secs)),
            Step::Analysis(n) => CanaryStep::analysis(analysis(*n)),
        })
        .collect();
    let mut spec = CanarySpec::builder().steps(steps).build().expect("canary");
    if case.background {
        spec.background_analysis = Some(
            AnalysisSpec::new(vec![
                MetricCheck::threshold("bg-error-rate", "error_rate", Condition::below(0.05))
                    .interval(Duration::from_secs(20))
                    .build()
                    .expect("metric"),
            ])
            .expect("analysis"),
        );
    }
    StrategySpec::Canary(spec)
}

fn analysed(case: &Case) -> bool {
    if case.blue_green {
        case.pre_promotion_analysis
    } else {
        case.background || case.steps.iter().any(|s| matches!(s, Step::Analysis(_)))
    }
}

fn run(case: Case) -> Result<(), TestCaseError> {
    common::paused_runtime().block_on(async move {
        let sim = SimCluster::new();
        let env = common::environment_with(case.replicas, strategy(&case));
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
        let orch = Arc::new(common::open_monitored(store.clone(), &sim, env.clone(), "prop").await);
        let (_, phase) = common::deploy_and_wait(&orch, "v1").await;
        prop_assert_eq!(phase, Phase::Succeeded);

        let svc = common::service().name;
        let (v1, v2) = (
            common::revision_in(&env, "v1"),
            common::revision_in(&env, "v2"),
        );
        let d = case.replicas;
        sim.set_metric(&svc, Some(&v2.id), "error_rate", vec![case.metric]);
        if case.broken {
            sim.set_behavior(
                &common::artifact("v2"),
                Behavior::FailReadiness {
                    reason: "GET /health returned 503".into(),
                },
            );
        }
        let from = sim.history(&svc).len();
        let base = [Op::Apply, Op::Observe, Op::Monitor].map(|op| sim.calls(op));
        for (op, i, f) in &case.faults {
            let offset = match op {
                Op::Apply => base[0],
                Op::Observe => base[1],
                _ => base[2],
            };
            sim.fail_call(*op, offset + i, *f);
        }
        let id = orch.deploy(common::request("v2")).await.expect("deploy");
        if let Some(secs) = case.abort_after {
            let (orch, id) = (orch.clone(), id.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(secs)).await;
                // Refused once the rollout has ended: that is fine.
                let _ = orch.abort(&id, Actor::new("prop"), "random abort").await;
            });
        }
        // No data is inconclusive: the rollout pauses at an analysis gate, and the human here
        // rejects it (approving would promote a canary nothing was measured of).
        let gated = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        {
            let (orch, id, gated) = (orch.clone(), id.clone(), gated.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    let Ok(s) = orch.status(&id).await else {
                        continue;
                    };
                    if s.phase.is_terminal() {
                        break;
                    }
                    if let Some((gate, _)) = s.awaiting.filter(|(g, _)| g.starts_with("analysis:"))
                    {
                        gated.lock().expect("gates").push(gate);
                        let _ = orch.reject(&id, Actor::new("prop"), "no evidence").await;
                    }
                }
            });
        }
        let status = tokio::time::timeout(Duration::from_secs(6 * 3600), orch.wait(&id))
            .await
            .map_err(|_| TestCaseError::fail("rollout did not reach a terminal state"))?
            .expect("wait");
        sim.clear_faults();
        let history = sim.history(&svc)[from..].to_vec();
        let journal = orch.journal(&id).await.expect("journal");

        // 1. Stable at full capacity until promotion.
        let promoted_at = status.progress.promoted_at;
        for snap in history
            .iter()
            .filter(|s| promoted_at.is_none_or(|p| s.at < p))
        {
            let stable = snap.revisions.iter().find(|r| r.0 == v1.id);
            prop_assert_eq!(
                stable.map(|r| (r.2, r.3)),
                Some((d, d)),
                "stable at {:?}",
                snap
            );
        }

        // 2. The rollback's first action restores all traffic to a stable at full capacity.
        if let Some(pos) = journal
            .iter()
            .position(|e| matches!(e.event, JournalEvent::RollbackStarted { .. }))
        {
            let first = journal[pos..].iter().find_map(|e| match &e.event {
                JournalEvent::Applied { desired, .. } => Some((e.at, desired.clone())),
                _ => None,
            });
            if let Some((at, desired)) = first {
                let before = history.iter().rev().find(|s| s.at <= at);
                let stable_full =
                    before.is_some_and(|s| s.revisions.iter().any(|r| r.0 == v1.id && r.3 == d));
                if stable_full {
                    let to_stable = desired.traffic.routes().map(|r| r.weight_of(&v1.id));
                    prop_assert_eq!(to_stable, Some(100), "first rollback action: {:?}", desired);
                }
            }
        }

        // 3 and 4. Terminal, and who serves.
        let observed = sim.observe(&svc).await.expect("observe");
        match &status.outcome {
            Some(Outcome::Succeeded) => {
                prop_assert_eq!(observed.revisions.len(), 1);
                prop_assert_eq!(observed.weight_of(&v2.id), 100);
                prop_assert_eq!(observed.total_ready(), d);
            }
            Some(Outcome::RolledBack { verification }) => {
                prop_assert_eq!(observed.revisions.len(), 1);
                prop_assert_eq!(observed.weight_of(&v1.id), 100);
                prop_assert_eq!(observed.total_ready(), d);
                prop_assert_eq!(verification, &format!("v1 {d}/{d} ready, 100% of traffic"));
                prop_assert!(matches!(observed.routing, Traffic::Routed(_)));
            }
            Some(Outcome::Failed { reason }) => prop_assert!(
                case.faults.iter().any(|f| f.2 == Fault::Permanent),
                "failed without a permanent fault: {}",
                reason
            ),
            other => prop_assert!(false, "unexpected end {:?}", other),
        }

        // Only missing data is inconclusive (these thresholds have no inconclusive band).
        let gated = gated.lock().expect("gates").clone();
        prop_assert!(
            gated.is_empty() || case.metric.is_nan(),
            "paused at {:?} with metric {}",
            gated,
            case.metric
        );

        // 5. Broken canaries never succeed.
        let bad_metric = case.metric.is_nan() || case.metric >= 0.05;
        if case.broken || (bad_metric && analysed(&case)) {
            prop_assert_ne!(status.phase, Phase::Succeeded);
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(256)))]

    #[test]
    fn progressive_rollouts_keep_their_invariants(case in case()) {
        run(case)?;
    }
}
