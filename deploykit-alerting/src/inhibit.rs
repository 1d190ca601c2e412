//! Inhibition: a firing alert mutes related, less important ones.

use serde::{Deserialize, Serialize};

use super::Labels;
use super::route::{CompiledMatcher, Matcher, check_label_name, compile_all, matches_all};
use deploykit_core::{Error, Result};

/// An inhibition rule, as in Alertmanager: while an alert matching `source` fires, alerts
/// matching `target` whose `equal` labels have the same values (a label missing on both sides
/// counts as equal) are not notified. They stay in the engine's state, listing the inhibiting
/// alerts' fingerprints in [`super::Alert::inhibited_by`]. An alert never inhibits itself, and
/// pending alerts inhibit nothing.
///
/// ```
/// use deploykit_alerting::{InhibitRule, Matcher};
/// // A critical alert of a service mutes that service's warnings (and no other service's).
/// let rule = InhibitRule::new(
///     vec![Matcher::eq("severity", "critical")],
///     vec![Matcher::eq("severity", "warning")],
///     ["service"],
/// );
/// assert_eq!(rule.equal, ["service"]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct InhibitRule {
    /// Matchers of the inhibiting (firing) alert.
    pub source: Vec<Matcher>,
    /// Matchers of the alerts it mutes.
    pub target: Vec<Matcher>,
    /// Labels that must have the same value on both.
    #[serde(default)]
    pub equal: Vec<String>,
}

impl InhibitRule {
    /// A rule by which alerts matching `source` mute alerts matching `target` with the same
    /// `equal` labels.
    pub fn new(
        source: Vec<Matcher>,
        target: Vec<Matcher>,
        equal: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        InhibitRule {
            source,
            target,
            equal: equal.into_iter().map(Into::into).collect(),
        }
    }

    pub(super) fn compile(&self, field: &str) -> Result<CompiledInhibit> {
        for (side, ms) in [("source", &self.source), ("target", &self.target)] {
            if ms.is_empty() {
                return Err(Error::invalid(
                    format!("{field}.{side}"),
                    "an inhibition rule needs at least one matcher on each side",
                ));
            }
        }
        for (i, l) in self.equal.iter().enumerate() {
            check_label_name(&format!("{field}.equal[{i}]"), l)?;
        }
        Ok(CompiledInhibit {
            source: compile_all(&self.source, &format!("{field}.source"))?,
            target: compile_all(&self.target, &format!("{field}.target"))?,
            equal: self.equal.clone(),
        })
    }
}

/// An inhibition rule with compiled matchers.
#[derive(Debug)]
pub(super) struct CompiledInhibit {
    source: Vec<CompiledMatcher>,
    target: Vec<CompiledMatcher>,
    equal: Vec<String>,
}

impl CompiledInhibit {
    /// Whether `target` is a target of this rule.
    pub(super) fn is_target(&self, target: &Labels) -> bool {
        matches_all(&self.target, target)
    }

    /// Whether the firing alert with `source` labels mutes the (target) alert with `target`.
    pub(super) fn inhibits(&self, source: &Labels, target: &Labels) -> bool {
        matches_all(&self.source, source)
            && self.is_target(target)
            && self.equal.iter().all(|l| source.get(l) == target.get(l))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels;

    #[test]
    fn equal_labels_scope_the_inhibition() {
        let r = InhibitRule::new(
            vec![Matcher::eq("severity", "critical")],
            vec![Matcher::eq("severity", "warning")],
            ["service"],
        )
        .compile("alert.inhibit_rules[0]")
        .unwrap();
        let crit_web = labels([("severity", "critical"), ("service", "web")]);
        let warn_web = labels([("severity", "warning"), ("service", "web")]);
        let warn_api = labels([("severity", "warning"), ("service", "api")]);
        assert!(r.inhibits(&crit_web, &warn_web));
        assert!(!r.inhibits(&crit_web, &warn_api));
        assert!(!r.inhibits(&warn_web, &warn_web));
    }

    #[test]
    fn validation() {
        let err = InhibitRule::new(vec![], vec![Matcher::eq("a", "b")], ["x"])
            .compile("alert.inhibit_rules[0]")
            .unwrap_err();
        assert!(err.to_string().contains("alert.inhibit_rules[0].source"));
        let err = InhibitRule::new(
            vec![Matcher::eq("a", "b")],
            vec![Matcher::regex("a", "(")],
            ["x"],
        )
        .compile("alert.inhibit_rules[1]")
        .unwrap_err();
        assert!(err.to_string().contains("alert.inhibit_rules[1].target[0]"));
    }
}
