//! Specs are validated the same way whichever path they take (builders, serde, the journal),
//! with explicit ranges, full field paths, and nothing that wraps (issue 15, classes 1 and 2).

mod common;

use std::sync::Arc;
use std::time::Duration;

use deploykit_core::journal::{DeploymentSpec, JournalEntry, JournalEvent};
use deploykit_core::strategy::{BlueGreenSpec, CanaryScale, CanarySpec, CanaryStep};
use deploykit_core::{
    Actor, DeploymentId, EnvironmentKind, EnvironmentSpec, Error, Revision, StateStore,
    StrategySpec, Timestamp,
};
use deploykit_sqlite::SqliteStore;
use deploykit_testing::MemoryStore;
use proptest::prelude::*;

fn field_of(r: deploykit_core::Result<EnvironmentSpec>) -> (String, String) {
    match r {
        Err(Error::InvalidSpec { field, reason }) => (field, reason),
        other => panic!("expected InvalidSpec, got {other:?}"),
    }
}

fn env_with(strategy: StrategySpec) -> deploykit_core::Result<EnvironmentSpec> {
    EnvironmentSpec::builder()
        .name("production")
        .kind(EnvironmentKind::Production)
        .replicas(3)
        .strategy(strategy)
        .build()
}

/// A canary spec with the given steps, unvalidated (as a struct edited by hand would be).
fn raw_canary(steps: Vec<CanaryStep>) -> CanarySpec {
    let mut spec = CanarySpec::builder()
        .steps(vec![CanaryStep::weight(10).expect("w")])
        .build()
        .expect("canary");
    spec.steps = steps;
    spec
}

#[test]
fn absurd_values_are_refused_with_their_full_path() {
    let cases: Vec<(StrategySpec, &str, &str)> = vec![
        (
            StrategySpec::Canary(raw_canary(vec![])),
            "environment.strategy.canary.steps",
            "at least one step",
        ),
        (
            StrategySpec::Canary(raw_canary(vec![
                CanaryStep::weight(10).expect("w"),
                CanaryStep::weight(20).expect("w"),
                CanaryStep::weight(30).expect("w"),
                CanaryStep::pause(Duration::from_secs(u64::MAX)),
            ])),
            "environment.strategy.canary.steps[3].pause",
            "outside",
        ),
        (
            StrategySpec::Canary(raw_canary(vec![CanaryStep::pause(Duration::from_nanos(1))])),
            "environment.strategy.canary.steps[0].pause",
            "whole number of milliseconds",
        ),
        (
            StrategySpec::Canary(raw_canary(vec![CanaryStep::SetCanaryScale {
                scale: CanaryScale::Replicas(u32::MAX),
            }])),
            "environment.strategy.canary.steps[0].scale",
            "above",
        ),
        (
            StrategySpec::BlueGreen({
                let mut bg = BlueGreenSpec::default();
                bg.auto_promotion_delay = Duration::from_secs(u64::MAX);
                bg
            }),
            "environment.strategy.blue_green.auto_promotion_delay",
            "outside",
        ),
    ];
    for (strategy, field, why) in cases {
        let (f, reason) = field_of(env_with(strategy));
        assert_eq!(f, field);
        assert!(reason.contains(why), "{field}: {reason}");
    }
    let replicas = |n: u32| {
        EnvironmentSpec::builder()
            .name("production")
            .kind(EnvironmentKind::Production)
            .replicas(n)
            .build()
    };
    for n in [0, u32::MAX] {
        let (f, reason) = field_of(replicas(n));
        assert_eq!(f, "environment.replicas");
        assert!(reason.contains("outside 1-10000"), "{reason}");
    }
    let deadline = |d: Duration| {
        EnvironmentSpec::builder()
            .name("production")
            .kind(EnvironmentKind::Production)
            .progress_deadline(d)
            .build()
    };
    for d in [
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_secs(u64::MAX),
    ] {
        assert_eq!(field_of(deadline(d)).0, "environment.progress_deadline");
    }
}

/// A strategy (valid or not) from random parts, including absurd durations and counts.
fn strategy() -> impl Strategy<Value = StrategySpec> {
    let duration = prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::from_nanos(1)),
        (1u64..10_000).prop_map(Duration::from_millis),
        (1u64..100_000).prop_map(Duration::from_secs),
        Just(Duration::from_secs(u64::MAX)),
        any::<u64>().prop_map(Duration::from_millis),
    ];
    let step = prop_oneof![
        (0u32..=100).prop_map(|w| CanaryStep::weight(w).expect("w")),
        duration.clone().prop_map(CanaryStep::pause),
        Just(CanaryStep::approval()),
        prop_oneof![Just(0u32), 1u32..5, Just(u32::MAX)].prop_map(|n| {
            CanaryStep::SetCanaryScale {
                scale: CanaryScale::Replicas(n),
            }
        }),
    ];
    prop_oneof![
        Just(StrategySpec::default()),
        (duration.clone(), duration.clone(), any::<bool>()).prop_map(|(a, s, auto)| {
            let mut bg = BlueGreenSpec::default();
            bg.auto_promotion_delay = a;
            bg.scale_down_delay = s;
            bg.auto_promote = auto;
            StrategySpec::BlueGreen(bg)
        }),
        (proptest::collection::vec(step, 0..6), duration).prop_map(|(steps, delay)| {
            let mut c = raw_canary(steps);
            c.scale_down_delay = delay;
            StrategySpec::Canary(c)
        }),
    ]
}

fn spec_for(env: &EnvironmentSpec) -> DeploymentSpec {
    let revision =
        Revision::new(&common::service(), env, common::artifact("v1"), "v1").expect("revision");
    DeploymentSpec::builder()
        .id(DeploymentId::new("web-0123456789ab"))
        .service(common::service().name)
        .environment(env.name.clone())
        .target(Arc::new(revision))
        .replicas(env.replicas)
        .strategy(env.strategy.clone())
        .progress_deadline(env.progress_deadline)
        .requested_by(Actor::new("alice"))
        .build()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(256)))]

    /// The builder and serde accept exactly the same specs; a spec that validates survives the
    /// journal (JSON, the in-memory store and a SQLite file) unchanged; one that does not is
    /// refused by serde with the same reason, never stored wrapped or rounded.
    #[test]
    fn builders_serde_and_the_journal_agree(
        strategy in strategy(),
        replicas in prop_oneof![Just(0u32), 1u32..20, Just(10_000u32), Just(10_001u32), Just(u32::MAX)],
        deadline_ms in prop_oneof![Just(0u64), 1u64..2_000_000, Just(u64::MAX)],
    ) {
        let built = EnvironmentSpec::builder()
            .name("production")
            .kind(EnvironmentKind::Production)
            .replicas(replicas)
            .strategy(strategy.clone())
            .progress_deadline(Duration::from_millis(deadline_ms))
            .build();
        // The same strategy through serde, on its own (its own root path).
        let strategy_json = serde_json::to_string(&strategy);
        match &built {
            Ok(env) => {
                let json = strategy_json.expect("a valid strategy serialises");
                let back: StrategySpec = serde_json::from_str(&json).expect("and loads back");
                prop_assert_eq!(&back, &env.strategy);
                let env_back: EnvironmentSpec =
                    serde_json::from_str(&serde_json::to_string(env).expect("json")).expect("load");
                prop_assert_eq!(&env_back, env);

                let spec = Arc::new(spec_for(env));
                let entry = JournalEntry::new(0, Timestamp::from_millis(1), JournalEvent::Created { spec: spec.clone() });
                let rt = common::paused_runtime();
                let dir = tempfile::tempdir().expect("tempdir");
                let loaded = rt.block_on(async {
                    let sqlite = SqliteStore::open(dir.path().join("j.db")).await.expect("open");
                    let memory = MemoryStore::new();
                    let mut out = Vec::new();
                    for store in [&sqlite as &dyn StateStore, &memory] {
                        store.append(&spec.id, &entry).await.expect("append");
                        out.push(store.load(&spec.id).await.expect("load").expect("present"));
                    }
                    out
                });
                for entries in loaded {
                    prop_assert_eq!(&entries, &vec![entry.clone()]);
                }
            }
            Err(Error::InvalidSpec { field, .. }) => {
                prop_assert!(field.starts_with("environment."), "{field}");
                // If the strategy itself was at fault, serde refuses it too (or cannot even
                // write it, for a duration that is not whole milliseconds or too long).
                if field.starts_with("environment.strategy")
                    && let Ok(json) = strategy_json
                {
                    let back = serde_json::from_str::<StrategySpec>(&json);
                    prop_assert!(back.is_err(), "{field} refused by the builder, accepted by serde");
                }
            }
            Err(other) => prop_assert!(false, "unexpected error {other}"),
        }
    }
}
