//! The access gate: whether an actor may do an operator action. It holds the access policy and
//! the four-eyes rule; it only answers, and the orchestrator audits its refusals (see
//! [`super::audit_trail`]). Named `AccessGate`, not `Gate`, because a gate elsewhere is the
//! step a deployment waits at for approval.

use crate::access::{AccessAction, AccessPolicy};
use crate::error::{Error, Result};
use crate::journal::Actor;
use crate::model::{EnvironmentName, ServiceId};

/// Who may do what: the access policy every operator action is checked against (without one,
/// everything is allowed), and the four-eyes rule for approvals in production.
#[derive(Debug)]
pub(crate) struct AccessGate {
    /// The access policy, if any.
    policy: Option<AccessPolicy>,
    /// Whether a production approval by the deployment's requester is refused.
    four_eyes: bool,
}

impl AccessGate {
    /// A gate over `policy`, which must be valid ([`AccessPolicy::validate`]). `four_eyes`
    /// overrides the policy's `four_eyes_in_production`; with neither, the rule is on.
    pub(crate) fn new(policy: Option<AccessPolicy>, four_eyes: Option<bool>) -> Result<Self> {
        if let Some(policy) = &policy {
            policy.validate()?;
        }
        let four_eyes =
            four_eyes.unwrap_or_else(|| policy.as_ref().is_none_or(|p| p.four_eyes_in_production));
        Ok(AccessGate { policy, four_eyes })
    }

    /// Whether `actor` may do `action` on `environment/service`; the refusal names the missing
    /// permission (or the rule that denies it).
    pub(crate) fn check(
        &self,
        actor: &Actor,
        action: AccessAction,
        environment: &EnvironmentName,
        service: &ServiceId,
    ) -> Result<()> {
        match &self.policy {
            Some(policy) => policy.check(actor, action, environment, service),
            None => Ok(()),
        }
    }

    /// Whether `by` may approve `gate` of a deployment `requested_by` asked for: in production
    /// (`production`, asked only when it matters), whoever requested a deployment may not
    /// approve it — a second person must.
    pub(crate) fn check_approval(
        &self,
        by: &Actor,
        requested_by: &Actor,
        gate: &str,
        production: impl FnOnce() -> bool,
    ) -> Result<()> {
        if self.four_eyes && by == requested_by && production() {
            return Err(Error::PermissionDenied {
                principal: by.to_string(),
                permission: format!(
                    "approve {gate} of their own deployment in production (a second person must)"
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Effect;

    fn production() -> EnvironmentName {
        EnvironmentName::new("production").unwrap()
    }

    fn web() -> ServiceId {
        ServiceId::new("web").unwrap()
    }

    /// A policy that lets `role:release` deploy anywhere and nobody do anything else.
    fn deployers() -> AccessPolicy {
        let mut policy = AccessPolicy::empty();
        policy
            .rule("role:release", "deploy", "*/*", Effect::Allow)
            .unwrap();
        policy.bind("alice", "role:release").unwrap();
        policy
    }

    #[test]
    fn without_a_policy_everything_is_allowed() {
        let gate = AccessGate::new(None, None).unwrap();
        let bob = Actor::new("bob");
        for action in [
            AccessAction::Deploy,
            AccessAction::Abort,
            AccessAction::Approve,
        ] {
            gate.check(&bob, action, &production(), &web()).unwrap();
        }
    }

    #[test]
    fn the_policy_decides_and_the_refusal_names_the_permission() {
        let gate = AccessGate::new(Some(deployers()), None).unwrap();
        gate.check(
            &Actor::new("alice"),
            AccessAction::Deploy,
            &production(),
            &web(),
        )
        .unwrap();
        let e = gate
            .check(
                &Actor::new("alice"),
                AccessAction::Abort,
                &production(),
                &web(),
            )
            .unwrap_err();
        let Error::PermissionDenied {
            principal,
            permission,
        } = e
        else {
            panic!("expected a permission error, got {e:?}");
        };
        assert_eq!(principal, "alice");
        assert!(
            permission.contains("abort on production/web"),
            "{permission}"
        );
    }

    #[test]
    fn an_invalid_policy_is_refused_when_the_gate_is_made() {
        let mut policy = AccessPolicy::empty();
        policy.bindings.insert(
            "alice".into(),
            std::collections::BTreeSet::from([String::new()]),
        );
        let e = AccessGate::new(Some(policy), None).unwrap_err();
        assert!(e.to_string().contains("access.bindings"), "{e}");
    }

    #[test]
    fn four_eyes_refuses_only_the_requester_in_production() {
        let gate = AccessGate::new(None, None).unwrap();
        let alice = Actor::new("alice");
        let e = gate
            .check_approval(&alice, &alice, "promotion", || true)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("approve promotion of their own deployment in production"),
            "{e}"
        );
        gate.check_approval(&Actor::new("bob"), &alice, "promotion", || true)
            .unwrap();
        gate.check_approval(&alice, &alice, "promotion", || false)
            .unwrap();
    }

    #[test]
    fn four_eyes_follows_the_setting_then_the_policy() {
        let alice = Actor::new("alice");
        let mut lenient = deployers();
        lenient.four_eyes_in_production = false;
        // The policy switches it off ...
        let gate = AccessGate::new(Some(lenient.clone()), None).unwrap();
        gate.check_approval(&alice, &alice, "promotion", || true)
            .unwrap();
        // ... the explicit setting wins over the policy, either way.
        let gate = AccessGate::new(Some(lenient), Some(true)).unwrap();
        assert!(
            gate.check_approval(&alice, &alice, "promotion", || true)
                .is_err()
        );
        let gate = AccessGate::new(Some(deployers()), Some(false)).unwrap();
        gate.check_approval(&alice, &alice, "promotion", || true)
            .unwrap();
    }

    #[test]
    fn production_is_asked_only_when_it_matters() {
        let gate = AccessGate::new(None, None).unwrap();
        let alice = Actor::new("alice");
        gate.check_approval(&Actor::new("bob"), &alice, "promotion", || {
            panic!("asked whether production for a second person")
        })
        .unwrap();
        let off = AccessGate::new(None, Some(false)).unwrap();
        off.check_approval(&alice, &alice, "promotion", || {
            panic!("asked whether production with four eyes off")
        })
        .unwrap();
    }
}
