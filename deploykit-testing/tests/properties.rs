//! Property tests: random rollout parameters, instance behaviours and API fault schedules on
//! the simulated cluster. Each case runs a whole deployment on tokio's paused clock.
//!
//! Invariants checked in every case:
//! 1. after every change the environment made, ready instances >= desired - maxUnavailable and
//!    all instances <= desired + maxSurge (the stable revision's instances never crash here:
//!    faults hit the API and the new revision only);
//! 2. the deployment reaches a terminal state, and no two consecutive journal entries are further
//!    apart than the progress deadline plus one retry and one poll;
//! 3. after a rollback only the last good revision serves, fully ready, with all traffic;
//!    after a success only the new one does;
//! 4. a healthy revision without permanent faults succeeds; a broken one never does.
//!
//! `PROPTEST_CASES` sets the number of cases (default 512).

mod common;

use std::sync::Arc;
use std::time::Duration;

use deploykit_core::{Environment, Phase, Quantity, StateStore};
use deploykit_testing::{Behavior, Fault, MemoryStore, Op, SimCluster};
use proptest::prelude::*;

#[derive(Clone, Debug)]
struct Case {
    replicas: u32,
    surge: Quantity,
    unavailable: Quantity,
    behavior: Behavior,
    faults: Vec<(Op, u64, Fault)>,
}

fn quantity() -> impl Strategy<Value = Quantity> {
    prop_oneof![
        (0u32..=3).prop_map(Quantity::Count),
        (0u32..=100).prop_map(Quantity::Percent),
    ]
}

fn behavior() -> impl Strategy<Value = Behavior> {
    prop_oneof![
        3 => Just(Behavior::Healthy),
        2 => (1u64..=40).prop_map(|s| Behavior::SlowStart(Duration::from_secs(s))),
        1 => Just(Behavior::SlowStart(Duration::from_secs(10_000))),
        1 => Just(Behavior::FailReadiness { reason: "GET /health returned 503".into() }),
        1 => Just(Behavior::FailStartup { reason: "startup probe timed out".into() }),
        1 => Just(Behavior::CrashLoop { reason: "exit code 1".into() }),
    ]
}

fn fault() -> impl Strategy<Value = (Op, u64, Fault)> {
    (
        prop_oneof![Just(Op::Apply), Just(Op::Observe)],
        0u64..30,
        prop_oneof![
            4 => Just(Fault::Transient),
            2 => Just(Fault::TransientAfterEffect),
            1 => Just(Fault::Permanent),
        ],
    )
}

fn case() -> impl Strategy<Value = Case> {
    (
        1u32..=6,
        quantity(),
        quantity(),
        behavior(),
        prop::collection::vec(fault(), 0..6),
    )
        .prop_filter(
            "surge and unavailable both zero is rejected at build time",
            |c| {
                !(matches!(c.1, Quantity::Count(0) | Quantity::Percent(0))
                    && matches!(c.2, Quantity::Count(0) | Quantity::Percent(0)))
            },
        )
        .prop_map(|(replicas, surge, unavailable, behavior, faults)| Case {
            replicas,
            surge,
            unavailable,
            behavior,
            faults,
        })
}

fn is_broken(b: &Behavior) -> bool {
    match b {
        Behavior::SlowStart(d) => *d > Duration::from_secs(600),
        Behavior::Healthy => false,
        _ => true,
    }
}

fn run(case: Case) -> Result<(), TestCaseError> {
    common::paused_runtime().block_on(async move {
        let sim = SimCluster::new();
        let env = common::environment(case.replicas, case.surge, case.unavailable);
        let (surge, unavailable) = env
            .strategy
            .rolling()
            .expect("rolling")
            .budgets(case.replicas);
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
        let orch = common::open(store.clone(), &sim, env.clone(), "prop").await;
        let (_, phase) = common::deploy_and_wait(&orch, "v1").await;
        prop_assert_eq!(phase, Phase::Succeeded);

        let svc = common::service().name;
        let from = sim.history(&svc).len();
        sim.set_behavior(&common::artifact("v2"), case.behavior.clone());
        let base = (sim.calls(Op::Apply), sim.calls(Op::Observe));
        for (op, i, f) in &case.faults {
            let offset = if *op == Op::Apply { base.0 } else { base.1 };
            sim.fail_call(*op, offset + i, *f);
        }
        let id = orch.deploy(common::request("v2")).await.expect("deploy");
        let status = tokio::time::timeout(Duration::from_secs(4 * 3600), orch.wait(&id))
            .await
            .map_err(|_| TestCaseError::fail("deployment did not reach a terminal state"))?
            .expect("wait");
        sim.clear_faults();

        // 1. Surge and availability budgets, after every change.
        for snap in &sim.history(&svc)[from..] {
            prop_assert!(
                snap.total() <= case.replicas + surge,
                "total {} > {} + {} at {:?}",
                snap.total(),
                case.replicas,
                surge,
                snap
            );
            prop_assert!(
                snap.ready() + unavailable >= case.replicas,
                "ready {} < {} - {} at {:?}",
                snap.ready(),
                case.replicas,
                unavailable,
                snap
            );
        }

        // 2. Terminal, and never stalled past the deadline.
        prop_assert!(status.phase.is_terminal());
        let journal = store.load(&id).await.expect("load").expect("journal");
        let slack = env.progress_deadline + Duration::from_secs(12);
        for pair in journal.windows(2) {
            let gap = pair[1].at.since(pair[0].at);
            prop_assert!(
                gap <= slack,
                "{gap:?} between {:?} and {:?}",
                pair[0],
                pair[1]
            );
        }

        // 3. Who serves afterwards.
        let observed = sim.observe(&svc).await.expect("observe");
        let serving: Vec<(String, u32, u32)> = observed
            .revisions
            .iter()
            .map(|r| {
                let w = observed
                    .traffic
                    .get(&r.revision.id)
                    .map_or(0, |w| w.percent());
                (r.revision.label.clone(), r.ready(), w)
            })
            .collect();
        match status.phase {
            Phase::Succeeded => {
                prop_assert_eq!(serving, vec![("v2".to_string(), case.replicas, 100)])
            }
            Phase::RolledBack => {
                prop_assert_eq!(serving, vec![("v1".to_string(), case.replicas, 100)])
            }
            Phase::Failed => prop_assert!(
                case.faults.iter().any(|f| f.2 == Fault::Permanent),
                "failed without a permanent fault: {:?}",
                status.outcome
            ),
            other => prop_assert!(false, "not terminal: {other}"),
        }

        // 4. Outcome matches the revision's health.
        let permanent = case.faults.iter().any(|f| f.2 == Fault::Permanent);
        if is_broken(&case.behavior) {
            prop_assert_ne!(status.phase, Phase::Succeeded);
        } else if !permanent {
            prop_assert_eq!(status.phase, Phase::Succeeded, "{:?}", status.rollback);
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(512)))]

    #[test]
    fn rolling_deploys_keep_their_invariants_under_faults(case in case()) {
        run(case)?;
    }
}
