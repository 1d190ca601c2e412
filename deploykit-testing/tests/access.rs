//! Access control: the default policy, deny-wins, whole-segment globs, no escalation by grant,
//! four eyes on production approvals, and the orchestrator refusing (and auditing) actions.

mod common;

use std::sync::Arc;
use std::time::Duration;

use deploykit_core::access::{AccessAction, AccessPolicy, Effect};
use deploykit_core::audit::{AuditAction, AuditOutcome};
use deploykit_core::strategy::BlueGreenSpec;
use deploykit_core::{Actor, EnvironmentName, Error, Orchestrator, Phase, ServiceId, StrategySpec};
use deploykit_testing::{MemoryStore, SimCluster};

fn env(name: &str) -> EnvironmentName {
    EnvironmentName::new(name).expect("environment")
}

fn svc(name: &str) -> ServiceId {
    ServiceId::new(name).expect("service")
}

fn denied(r: deploykit_core::Result<()>) -> String {
    match r {
        Err(e @ Error::PermissionDenied { .. }) => e.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn defaults_allow_previews_and_development_and_keep_production_for_release() {
    let mut policy = AccessPolicy::default();
    policy.bind("carol", "role:release").expect("bind");
    let dave = Actor::new("dave");
    for e in ["preview-pr-7", "development"] {
        policy
            .check(&dave, AccessAction::Deploy, &env(e), &svc("web"))
            .expect("anyone may deploy here");
    }
    let msg = denied(policy.check(&dave, AccessAction::Deploy, &env("production"), &svc("web")));
    assert_eq!(msg, "dave may not deploy on production/web");
    assert_eq!(
        denied(policy.check(&dave, AccessAction::Approve, &env("staging"), &svc("web"))),
        "dave may not approve on staging/web"
    );
    policy
        .check(
            &Actor::new("carol"),
            AccessAction::Approve,
            &env("production"),
            &svc("web"),
        )
        .expect("release may promote to production");
}

#[test]
fn an_explicit_deny_wins_and_groups_carry_roles() {
    let mut policy = AccessPolicy::default();
    policy.bind("sre", "role:release").expect("bind");
    policy.join("alice", "sre");
    policy
        .rule(
            "role:release",
            "deploy",
            "production/payments",
            Effect::Deny,
        )
        .expect("rule");
    let alice = Actor::new("alice");
    policy
        .check(
            &alice,
            AccessAction::Deploy,
            &env("production"),
            &svc("web"),
        )
        .expect("via the sre group");
    let msg = denied(policy.check(
        &alice,
        AccessAction::Deploy,
        &env("production"),
        &svc("payments"),
    ));
    assert!(
        msg.contains("denied by role:release deploy production/payments"),
        "{msg}"
    );
    policy
        .check(
            &alice,
            AccessAction::Abort,
            &env("production"),
            &svc("payments"),
        )
        .expect("the deny is for deploy only");
}

#[test]
fn globs_match_whole_segments_only() {
    let mut policy = AccessPolicy::empty();
    policy
        .rule("role:prod-web", "*", "prod*/checkout", Effect::Allow)
        .expect("rule");
    policy.bind("pat", "role:prod-web").expect("bind");
    let pat = Actor::new("pat");
    for e in ["production", "prod", "prod-eu"] {
        policy
            .check(&pat, AccessAction::Deploy, &env(e), &svc("checkout"))
            .expect("prefix match within the segment");
    }
    denied(policy.check(
        &pat,
        AccessAction::Deploy,
        &env("preprod"),
        &svc("checkout"),
    ));
    denied(policy.check(
        &pat,
        AccessAction::Deploy,
        &env("production"),
        &svc("checkout-v2"),
    ));
    // A pattern without its service segment is refused, not silently widened or narrowed.
    let err = policy
        .rule("role:x", "*", "prod*", Effect::Allow)
        .expect_err("one segment");
    assert!(
        err.to_string().contains("is not <environment>/<service>"),
        "{err}"
    );
    let err = policy
        .rule("role:x", "ship", "*/*", Effect::Allow)
        .expect_err("unknown action");
    assert!(err.to_string().contains("is not an action"), "{err}");
}

#[test]
fn nobody_grants_what_they_do_not_hold() {
    let mut policy = AccessPolicy::default();
    policy.bind("carol", "role:release").expect("bind");
    policy
        .grant(&Actor::new("carol"), "erin", "role:release")
        .expect("carol holds everything role:release gives");
    policy
        .check(
            &Actor::new("erin"),
            AccessAction::Deploy,
            &env("production"),
            &svc("web"),
        )
        .expect("erin got it");
    let err = policy
        .grant(&Actor::new("dave"), "dave", "role:release")
        .expect_err("no self-promotion");
    assert_eq!(
        err.to_string(),
        "dave may not * on */* (to grant role:release)"
    );
    // A deny on part of what a role gives blocks granting it.
    policy
        .rule("role:limited", "*", "production/*", Effect::Allow)
        .expect("rule");
    policy
        .rule("role:release", "*", "production/payments", Effect::Deny)
        .expect("rule");
    let err = policy
        .grant(&Actor::new("carol"), "frank", "role:limited")
        .expect_err("carol may not touch production/payments");
    assert!(err.to_string().contains("to grant role:limited"), "{err}");
}

async fn open(env: deploykit_core::EnvironmentSpec, sim: &SimCluster) -> Orchestrator {
    let mut policy = AccessPolicy::default();
    policy.bind("carol", "role:release").expect("bind");
    policy.bind("erin", "role:release").expect("bind");
    Orchestrator::builder(MemoryStore::new())
        .environment(env, Arc::new(sim.clone()))
        .access_policy(policy)
        .clock(Arc::new(sim.clock()))
        .config(common::config())
        .open()
        .await
        .expect("open")
}

#[tokio::test(start_paused = true)]
async fn the_orchestrator_refuses_and_audits() {
    let sim = SimCluster::new();
    let spec = BlueGreenSpec::builder()
        .auto_promote(false)
        .build()
        .expect("bg");
    let production = common::environment_with(2, StrategySpec::BlueGreen(spec));
    let orch = open(production, &sim).await;
    let mut req = common::request("v1");
    req.requested_by = Actor::new("dave");
    let err = orch
        .deploy(req)
        .await
        .expect_err("dave may not deploy to production");
    assert_eq!(err.to_string(), "dave may not deploy on production/web");

    let mut req = common::request("v1");
    req.requested_by = Actor::new("carol");
    let v1 = orch.deploy(req).await.expect("carol may");
    orch.wait(&v1).await.expect("wait");
    let mut req = common::request("v2");
    req.requested_by = Actor::new("carol");
    let v2 = orch.deploy(req).await.expect("carol may");
    tokio::time::sleep(Duration::from_secs(30)).await;
    let err = orch
        .approve(&v2, Actor::new("carol"), "looks fine to me")
        .await
        .expect_err("four eyes");
    assert!(err.to_string().contains("a second person must"), "{err}");
    let err = orch
        .approve(&v2, Actor::new("dave"), "sure")
        .await
        .expect_err("dave may not promote");
    assert_eq!(err.to_string(), "dave may not approve on production/web");
    orch.approve(&v2, Actor::new("erin"), "checked the preview")
        .await
        .expect("a second release engineer");
    assert_eq!(orch.wait(&v2).await.expect("wait").phase, Phase::Succeeded);

    let audit = orch.audit_log().await.expect("audit");
    let refused: Vec<(String, AuditAction)> = audit
        .iter()
        .filter(|r| r.outcome == AuditOutcome::Denied)
        .map(|r| (r.actor.to_string(), r.action))
        .collect();
    assert_eq!(
        refused,
        vec![
            ("dave".to_string(), AuditAction::Deploy),
            ("carol".to_string(), AuditAction::Approve),
            ("dave".to_string(), AuditAction::Approve),
        ]
    );
    orch.verify_audit(None)
        .await
        .expect("the chain holds refusals too");
}

/// Every way of building a policy validates the same way: a rule that can never match (one
/// segment, an uppercase name, an unknown action) is refused by `rule()`, by serde (JSON and
/// TOML) and by the orchestrator for a policy edited through its public fields, with the
/// rule's path in the error.
#[tokio::test(start_paused = true)]
async fn a_policy_is_validated_however_it_is_built() {
    let bad = [
        ("prod*", "deploy", "is not <environment>/<service>"),
        ("Production/*", "deploy", "can never match"),
        ("production/Web", "deploy", "can never match"),
        ("production/*", "delete", "is not an action"),
    ];
    for (object, action, why) in bad {
        let mut policy = AccessPolicy::default();
        let err = policy
            .rule("role:release", action, object, Effect::Deny)
            .expect_err(object);
        assert!(err.to_string().contains(why), "{err}");
        assert!(err.to_string().contains("access.rules[3]"), "{err}");

        let json = serde_json::json!({
            "rules": [
                { "role": "role:release", "action": "*", "object": "*/*", "effect": "allow" },
                { "role": "role:release", "action": action, "object": object, "effect": "deny" },
            ],
            "bindings": { "carol": ["role:release"] },
        });
        let err = serde_json::from_value::<AccessPolicy>(json).expect_err(object);
        assert!(err.to_string().contains(why), "{err}");
        assert!(err.to_string().contains("access.rules[1]"), "{err}");
        let toml = format!(
            "[[rules]]\nrole = \"role:release\"\naction = \"{action}\"\nobject = \"{object}\"\n\
             effect = \"deny\"\n"
        );
        let err = toml::from_str::<AccessPolicy>(&toml).expect_err(object);
        assert!(err.to_string().contains(why), "{err}");

        // Fields are public: the orchestrator validates what it is given.
        let mut policy = AccessPolicy::default();
        policy.rules.push(
            serde_json::from_value(serde_json::json!({
                "role": "role:release", "action": action, "object": object, "effect": "deny"
            }))
            .expect("a rule on its own is plain data"),
        );
        let err = Orchestrator::builder(MemoryStore::new())
            .access_policy(policy)
            .open()
            .await
            .expect_err(object);
        assert!(err.to_string().contains(why), "{err}");
    }
    // A valid policy round-trips through serde unchanged, and four eyes stays on unless said.
    let mut policy = AccessPolicy::default();
    policy
        .rule("role:release", "deploy", "prod*/pay*", Effect::Deny)
        .expect("rule");
    policy.bind("carol", "role:release").expect("bind");
    let back: AccessPolicy =
        serde_json::from_str(&serde_json::to_string(&policy).expect("json")).expect("load");
    assert_eq!(back, policy);
    let minimal: AccessPolicy = serde_json::from_str("{}").expect("empty policy");
    assert!(minimal.four_eyes_in_production);
}

/// Four eyes on production approvals is the default without any policy, and is switched off
/// only explicitly.
#[tokio::test(start_paused = true)]
async fn four_eyes_hold_without_a_policy_unless_switched_off() {
    for four_eyes in [None, Some(false)] {
        let sim = SimCluster::new();
        let spec = BlueGreenSpec::builder()
            .auto_promote(false)
            .build()
            .expect("bg");
        let production = common::environment_with(2, StrategySpec::BlueGreen(spec));
        let mut builder = Orchestrator::builder(MemoryStore::new())
            .environment(production, Arc::new(sim.clone()))
            .clock(Arc::new(sim.clock()))
            .config(common::config());
        if let Some(on) = four_eyes {
            builder = builder.four_eyes_in_production(on);
        }
        let orch = builder.open().await.expect("open");
        let v1 = orch.deploy(common::request("v1")).await.expect("deploy");
        orch.wait(&v1).await.expect("wait");
        let v2 = orch.deploy(common::request("v2")).await.expect("deploy");
        tokio::time::sleep(Duration::from_secs(30)).await;
        let own = orch
            .approve(&v2, Actor::new("alice"), "my own change")
            .await;
        match four_eyes {
            None => {
                let err = own.expect_err("alice requested v2");
                assert!(err.to_string().contains("a second person must"), "{err}");
            }
            _ => own.expect("switched off explicitly"),
        }
    }
}

mod random_policies {
    use super::*;
    use proptest::prelude::*;

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("*".to_string()),
            "[a-z][a-z0-9-]{0,6}".prop_map(String::from),
            "[a-z]{1,3}\\*".prop_map(String::from),
            "\\*[a-z]{1,3}".prop_map(String::from),
            "[A-Za-z/ é]{0,5}".prop_map(String::from),
        ]
    }

    fn rule() -> impl Strategy<Value = (String, String, String, bool)> {
        (
            prop_oneof![Just("role:release"), Just("role:ops"), Just("")],
            prop_oneof![Just("*"), Just("deploy"), Just("approve"), Just("delete")],
            (segment(), segment(), any::<bool>()).prop_map(|(e, s, slash)| {
                if slash {
                    format!("{e}/{s}")
                } else {
                    format!("{e}{s}")
                }
            }),
            any::<bool>(),
        )
            .prop_map(|(r, a, o, deny)| (r.to_string(), a.to_string(), o, deny))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(common::cases(256)))]

        /// Random policies never panic; `rule()` and serde accept exactly the same rules; an
        /// accepted policy decides every query the same after a save and load.
        #[test]
        fn builders_and_serde_agree_and_round_trip(
            rules in proptest::collection::vec(rule(), 0..6),
            queries in proptest::collection::vec(
                (prop_oneof![Just("carol"), Just("dave")],
                 prop_oneof![Just(AccessAction::Deploy), Just(AccessAction::Approve)],
                 prop_oneof![Just("production"), Just("prod-eu"), Just("preview-x")],
                 prop_oneof![Just("web"), Just("payments")]),
                1..8),
        ) {
            let mut built = AccessPolicy::empty();
            built.bind("carol", "role:release").expect("bind");
            let mut by_builder = Ok(());
            for (role, action, object, deny) in &rules {
                let effect = if *deny { Effect::Deny } else { Effect::Allow };
                if let Err(e) = built.rule(role, action, object, effect) {
                    by_builder = Err(e);
                    break;
                }
            }
            let json = serde_json::json!({
                "rules": rules.iter().map(|(role, action, object, deny)| serde_json::json!({
                    "role": role, "action": action, "object": object,
                    "effect": if *deny { "deny" } else { "allow" },
                })).collect::<Vec<_>>(),
                "bindings": { "carol": ["role:release"] },
                "four_eyes_in_production": true,
            });
            let by_serde = serde_json::from_value::<AccessPolicy>(json);
            prop_assert_eq!(by_builder.is_ok(), by_serde.is_ok(), "{:?} vs {:?}", by_builder, by_serde.as_ref().err());
            if let Ok(loaded) = by_serde {
                prop_assert_eq!(&loaded, &built);
                let again: AccessPolicy = serde_json::from_str(
                    &serde_json::to_string(&loaded).expect("save"),
                ).expect("load");
                for (who, action, e, s) in &queries {
                    let (actor, e, s) = (Actor::new(*who), env(e), svc(s));
                    prop_assert_eq!(
                        built.check(&actor, *action, &e, &s).is_ok(),
                        again.check(&actor, *action, &e, &s).is_ok()
                    );
                }
            }
        }
    }
}
