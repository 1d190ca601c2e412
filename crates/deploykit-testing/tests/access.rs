//! Access control: the default policy, deny-wins, whole-segment globs, no escalation by grant,
//! four eyes on production approvals, and the orchestrator refusing (and auditing) actions.

mod common;

use std::sync::Arc;
use std::time::Duration;

use deploykit_core::access::{AccessAction, AccessPolicy, Effect};
use deploykit_core::store::{AuditAction, AuditOutcome};
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
