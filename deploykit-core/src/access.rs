//! Role-based access control in the manner of Argo CD's policies.
//!
//! A policy has **rules** `(role, action, object, allow | deny)`, **bindings** of principals or
//! groups to roles, and **group memberships**. The object names an environment and a service,
//! `environment/service`, e.g. `production/checkout`.
//!
//! Matching: a pattern has exactly two segments, `<environment>/<service>`. In a segment, `*`
//! matches any run of characters **within that segment** and never a `/`; a segment of `*`
//! alone matches any one segment. So `prod*/checkout` matches `production/checkout` and
//! `prod-eu/checkout` but not `preprod/checkout`, and a one-segment pattern such as `prod*` is
//! refused when the policy is built instead of silently matching more (or less) than meant.
//! Actions are matched exactly or by `*`.
//!
//! Decision: an explicit **deny wins** wherever it stands; otherwise an allow grants; otherwise
//! the action is denied.
//!
//! ```
//! use deploykit_core::access::{AccessAction, AccessPolicy};
//! use deploykit_core::{Actor, EnvironmentName, ServiceId};
//! let mut policy = AccessPolicy::default();
//! policy.bind("carol", "role:release")?;
//! let prod = EnvironmentName::new("production")?;
//! let web = ServiceId::new("web")?;
//! assert!(policy.check(&Actor::new("carol"), AccessAction::Deploy, &prod, &web).is_ok());
//! assert!(policy.check(&Actor::new("dave"), AccessAction::Deploy, &prod, &web).is_err());
//! # Ok::<(), deploykit_core::Error>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::journal::Actor;
use crate::model::{EnvironmentName, ServiceId};

/// Operator actions the orchestrator checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessAction {
    /// Deploy a revision (also a preview, a release member).
    Deploy,
    /// Roll back by hand.
    Rollback,
    /// Abort a deployment.
    Abort,
    /// Pause a deployment.
    Pause,
    /// Resume a deployment.
    Resume,
    /// Approve a gate (promotion, a pause step, an inconclusive analysis).
    Approve,
    /// Reject a gate.
    Reject,
    /// Tear a preview down.
    Teardown,
    /// Fail an environment over to its standby, or back.
    Failover,
}

impl fmt::Display for AccessAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        f.write_str(&s)
    }
}

/// Allow or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Grants the action.
    Allow,
    /// Forbids it, whatever else allows it.
    Deny,
}

/// One rule of a role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PolicyRule {
    /// The role (`role:release`).
    pub role: String,
    /// The action, or `*`.
    pub action: String,
    /// `<environment>/<service>` pattern.
    pub object: String,
    /// Allow or deny.
    pub effect: Effect,
}

fn segment_matches(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((prefix, rest)) => {
            if !text.starts_with(prefix) {
                return false;
            }
            let text = &text[prefix.len()..];
            if rest.is_empty() {
                return true;
            }
            // Try every split point for the remaining pattern (patterns are short).
            (0..=text.len())
                .filter(|i| text.is_char_boundary(*i))
                .any(|i| segment_matches(rest, &text[i..]))
        }
    }
}

fn object_matches(pattern: &str, environment: &str, service: &str) -> bool {
    match pattern.split_once('/') {
        Some((e, s)) => segment_matches(e, environment) && segment_matches(s, service),
        None => false,
    }
}

fn action_matches(pattern: &str, action: AccessAction) -> bool {
    pattern == "*" || pattern == action.to_string()
}

fn check_pattern(field: &str, object: &str) -> Result<()> {
    let segments: Vec<&str> = object.split('/').collect();
    if segments.len() != 2 || segments.iter().any(|s| s.is_empty()) {
        return Err(Error::invalid(
            field,
            format!(
                "{object:?} is not <environment>/<service>: a pattern has exactly two segments \
                 and `*` never crosses a `/`"
            ),
        ));
    }
    // Names are lowercase letters, digits and '-': a segment with anything else can never
    // match, and a rule that can never match (a deny above all) is a mistake, not a no-op.
    for (segment, what) in segments.iter().zip(["environment", "service"]) {
        if let Some(c) = segment
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '*'))
        {
            return Err(Error::invalid(
                field,
                format!(
                    "{object:?} can never match: {what} names are lowercase letters, digits \
                     and '-', and {c:?} is none of them"
                ),
            ));
        }
    }
    Ok(())
}

fn check_action(field: &str, action: &str) -> Result<()> {
    if action != "*" && serde_json::from_value::<AccessAction>(serde_json::json!(action)).is_err() {
        return Err(Error::invalid(
            field,
            format!(
                "{action:?} is not an action (deploy, rollback, abort, pause, resume, approve, \
                 reject, teardown, failover or *)"
            ),
        ));
    }
    Ok(())
}

fn check_subject(field: &str, subject: &str, what: &str) -> Result<()> {
    if subject.trim().is_empty() {
        return Err(Error::invalid(field, format!("{what} must not be empty")));
    }
    Ok(())
}

impl PolicyRule {
    /// Check the rule: a known action (or `*`), a non-empty role, and an object pattern of
    /// exactly `<environment>/<service>` that can match some name. `field` names the rule in
    /// errors (`access.rules[2]`).
    pub fn validate(&self, field: &str) -> Result<()> {
        check_subject(&format!("{field}.role"), &self.role, "the role")?;
        check_action(&format!("{field}.action"), &self.action)?;
        check_pattern(&format!("{field}.object"), &self.object)
    }
}

/// Does `wide` (a granter's pattern) cover everything `narrow` (a pattern being granted)
/// matches? Conservative: when unsure, no.
fn segment_covers(wide: &str, narrow: &str) -> bool {
    if wide == "*" || wide == narrow {
        return true;
    }
    if !narrow.contains('*') {
        return segment_matches(wide, narrow);
    }
    match (wide.split_once('*'), narrow.split_once('*')) {
        (Some((wp, ws)), Some((np, ns))) if !ws.contains('*') && !ns.contains('*') => {
            np.starts_with(wp) && ns.ends_with(ws)
        }
        _ => false,
    }
}

fn object_covers(wide: &str, narrow: &str) -> bool {
    match (wide.split_once('/'), narrow.split_once('/')) {
        (Some((we, ws)), Some((ne, ns))) => segment_covers(we, ne) && segment_covers(ws, ns),
        _ => false,
    }
}

/// Can two segment patterns match a common name? Conservative: when unsure, yes.
fn segments_overlap(a: &str, b: &str) -> bool {
    match (a.contains('*'), b.contains('*')) {
        (false, false) => a == b,
        (true, false) => segment_matches(a, b),
        (false, true) => segment_matches(b, a),
        (true, true) => true,
    }
}

fn objects_overlap(a: &str, b: &str) -> bool {
    match (a.split_once('/'), b.split_once('/')) {
        (Some((ae, as_)), Some((be, bs))) => segments_overlap(ae, be) && segments_overlap(as_, bs),
        _ => true,
    }
}

/// The serialised form of a policy, validated into an [`AccessPolicy`] on the way in.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    rules: Vec<PolicyRule>,
    #[serde(default)]
    bindings: BTreeMap<String, BTreeSet<String>>,
    #[serde(default)]
    groups: BTreeMap<String, BTreeSet<String>>,
    #[serde(default = "four_eyes_default")]
    four_eyes_in_production: bool,
}

fn four_eyes_default() -> bool {
    true
}

impl TryFrom<RawPolicy> for AccessPolicy {
    type Error = Error;

    fn try_from(raw: RawPolicy) -> Result<Self> {
        let policy = AccessPolicy {
            rules: raw.rules,
            bindings: raw.bindings,
            groups: raw.groups,
            four_eyes_in_production: raw.four_eyes_in_production,
        };
        policy.validate()?;
        Ok(policy)
    }
}

/// An access policy. [`AccessPolicy::default`] holds deploykit's defaults:
///
/// - `role:everyone` (every principal) may do anything in `preview-*` and `development`
///   environments;
/// - `role:release` may do anything anywhere, production included;
/// - approvals in production also need a second person: the orchestrator refuses an approval
///   by whoever requested the deployment.
///
/// However it is built — [`AccessPolicy::rule`] and [`AccessPolicy::bind`], deserialised with
/// serde (any format), or its public fields edited and handed to
/// [`crate::OrchestratorBuilder::access_policy`] — it goes through the same
/// [`AccessPolicy::validate`], so a rule that cannot match is refused, never silently ignored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawPolicy")]
#[non_exhaustive]
pub struct AccessPolicy {
    /// Rules by role.
    pub rules: Vec<PolicyRule>,
    /// Principal or group → roles.
    pub bindings: BTreeMap<String, BTreeSet<String>>,
    /// Principal → groups.
    pub groups: BTreeMap<String, BTreeSet<String>>,
    /// Refuse an approval in a production environment by the person who requested the
    /// deployment (default true).
    pub four_eyes_in_production: bool,
}

/// The role every principal has.
pub const EVERYONE: &str = "role:everyone";

impl Default for AccessPolicy {
    fn default() -> Self {
        let rule = |role: &str, object: &str| PolicyRule {
            role: role.into(),
            action: "*".into(),
            object: object.into(),
            effect: Effect::Allow,
        };
        AccessPolicy {
            rules: vec![
                rule(EVERYONE, "preview-*/*"),
                rule(EVERYONE, "development/*"),
                rule("role:release", "*/*"),
            ],
            bindings: BTreeMap::new(),
            groups: BTreeMap::new(),
            four_eyes_in_production: true,
        }
    }
}

impl AccessPolicy {
    /// An empty policy: everything is denied.
    pub fn empty() -> Self {
        AccessPolicy {
            rules: Vec::new(),
            bindings: BTreeMap::new(),
            groups: BTreeMap::new(),
            four_eyes_in_production: true,
        }
    }

    /// Check every rule, binding and group membership; errors name the entry
    /// (`access.rules[3].object`, `access.bindings["alice"]`).
    pub fn validate(&self) -> Result<()> {
        for (i, rule) in self.rules.iter().enumerate() {
            rule.validate(&format!("access.rules[{i}]"))?;
        }
        for (subject, roles) in &self.bindings {
            let field = format!("access.bindings[{subject:?}]");
            check_subject(&field, subject, "the subject")?;
            for role in roles {
                check_subject(&field, role, "a role")?;
            }
        }
        for (principal, groups) in &self.groups {
            let field = format!("access.groups[{principal:?}]");
            check_subject(&field, principal, "the principal")?;
            for group in groups {
                check_subject(&field, group, "a group")?;
            }
        }
        Ok(())
    }

    /// Add a rule, checked as [`PolicyRule::validate`] checks it.
    pub fn rule(&mut self, role: &str, action: &str, object: &str, effect: Effect) -> Result<()> {
        let rule = PolicyRule {
            role: role.into(),
            action: action.into(),
            object: object.into(),
            effect,
        };
        rule.validate(&format!("access.rules[{}]", self.rules.len()))?;
        self.rules.push(rule);
        Ok(())
    }

    /// Give `subject` (a principal or a group) `role`.
    pub fn bind(&mut self, subject: &str, role: &str) -> Result<()> {
        let field = format!("access.bindings[{subject:?}]");
        check_subject(&field, subject, "the subject")?;
        check_subject(&field, role, "a role")?;
        self.bindings
            .entry(subject.into())
            .or_default()
            .insert(role.into());
        Ok(())
    }

    /// Put `principal` in `group`.
    pub fn join(&mut self, principal: &str, group: &str) {
        self.groups
            .entry(principal.into())
            .or_default()
            .insert(group.into());
    }

    /// `by` gives `subject` `role`, which is allowed only if `by` already holds every
    /// permission the role grants (and none of them is denied to `by`).
    pub fn grant(&mut self, by: &Actor, subject: &str, role: &str) -> Result<()> {
        let mine = self.roles_of(by);
        for granted in self
            .rules
            .iter()
            .filter(|r| r.role == role && r.effect == Effect::Allow)
        {
            let held = self.rules.iter().any(|r| {
                r.effect == Effect::Allow
                    && mine.contains(&r.role)
                    && (r.action == "*" || r.action == granted.action)
                    && object_covers(&r.object, &granted.object)
            });
            let denied = self.rules.iter().any(|r| {
                r.effect == Effect::Deny
                    && mine.contains(&r.role)
                    && (r.action == "*" || granted.action == "*" || r.action == granted.action)
                    && objects_overlap(&r.object, &granted.object)
            });
            if !held || denied {
                return Err(Error::PermissionDenied {
                    principal: by.to_string(),
                    permission: format!(
                        "{} on {} (to grant {role})",
                        granted.action, granted.object
                    ),
                });
            }
        }
        self.bind(subject, role)
    }

    fn roles_of(&self, actor: &Actor) -> BTreeSet<String> {
        let mut subjects = vec![actor.as_str().to_string()];
        subjects.extend(
            self.groups
                .get(actor.as_str())
                .into_iter()
                .flatten()
                .cloned(),
        );
        let mut roles: BTreeSet<String> = subjects
            .iter()
            .filter_map(|s| self.bindings.get(s))
            .flatten()
            .cloned()
            .collect();
        roles.insert(EVERYONE.to_string());
        roles
    }

    /// Whether `actor` may do `action` on `environment/service`. The error names the missing
    /// permission (or the rule that denies it).
    pub fn check(
        &self,
        actor: &Actor,
        action: AccessAction,
        environment: &EnvironmentName,
        service: &ServiceId,
    ) -> Result<()> {
        let roles = self.roles_of(actor);
        let object = format!("{environment}/{service}");
        let applicable = self.rules.iter().filter(|r| {
            roles.contains(&r.role)
                && action_matches(&r.action, action)
                && object_matches(&r.object, environment.as_str(), service.as_str())
        });
        let mut allowed = false;
        for r in applicable {
            match r.effect {
                Effect::Deny => {
                    return Err(Error::PermissionDenied {
                        principal: actor.to_string(),
                        permission: format!(
                            "{action} on {object} (denied by {} {} {})",
                            r.role, r.action, r.object
                        ),
                    });
                }
                Effect::Allow => allowed = true,
            }
        }
        if allowed {
            Ok(())
        } else {
            Err(Error::PermissionDenied {
                principal: actor.to_string(),
                permission: format!("{action} on {object}"),
            })
        }
    }
}
