//! Alert rules: a templated query, a [`Condition`], and how long it must hold.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use typed_builder::TypedBuilder;

use super::route::check_label_name;
use super::{AlertTarget, Labels};
use deploykit_core::analysis::Condition;
use deploykit_core::monitor::MetricQuery;
use deploykit_core::time::duration_ms;
use deploykit_core::{Error, Result};

/// The labels the engine sets on every alert; a rule's own labels may not use them.
pub const RESERVED_LABELS: [&str; 4] = ["alertname", "service", "environment", "revision"];

/// A Prometheus-style alerting rule, evaluated for every watched [`AlertTarget`].
///
/// Each evaluation queries `expr` (with `{{service}}`, `{{environment}}` and `{{revision}}`
/// replaced by the target's; `{{revision}}` is empty for a target without a revision) for the
/// target's service, scoped to its revision if it has one, and tests the newest value
/// ([`deploykit_core::MonitorExt::latest`]) against `condition`:
///
/// - while it holds, the alert is *pending*, and *firing* once it has held for `for_` (at
///   once when `for_` is zero); a pending alert whose condition stops holding is dropped
///   without any notification;
/// - a firing alert whose condition stops holding keeps firing for `keep_firing_for`, then is
///   *resolved*; if the condition holds again within that time nothing is resolved.
///
/// No data (an empty result, NaN, ±infinity) means the condition does not hold, as in
/// Prometheus, where an empty query result is not firing: it never fires an alert, and resolves
/// a firing one (after `keep_firing_for`, which is the knob to ride out gaps in the data). A
/// failed query changes nothing: that round leaves the rule's alerts for the target as they
/// were (a pending alert neither fires nor is dropped, a firing one keeps firing).
///
/// An alert's labels are the rule's `labels` plus `alertname` (the rule's name), `service`,
/// `environment` and, for a target with a revision, `revision`. Its `annotations` are rendered
/// with `{{value}}`, `{{labels.NAME}}`, `{{service}}`, `{{environment}}` and `{{revision}}`.
///
/// ```
/// use std::time::Duration;
/// use deploykit_alerting::{AlertRule, labels};
/// use deploykit_core::analysis::Condition;
/// let rule = AlertRule::builder()
///     .name("HighErrorRate")
///     .expr(r#"error_rate{service="{{service}}"}"#)
///     .condition(Condition::above(0.05))
///     .for_(Duration::from_secs(60))
///     .labels(labels([("severity", "critical")]))
///     .annotations(labels([("summary", "{{service}} fails {{value}} of requests")]))
///     .build()?;
/// assert_eq!(rule.keep_firing_for, Duration::ZERO);
///
/// let err = AlertRule::builder().name("x").expr("").condition(Condition::above(1.0)).build();
/// assert!(err.unwrap_err().to_string().contains("alert.expr"));
/// # Ok::<(), deploykit_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, TypedBuilder)]
#[builder(build_method(into = Result<AlertRule>))]
#[non_exhaustive]
pub struct AlertRule {
    /// The alert's name (the `alertname` label).
    #[builder(setter(into))]
    pub name: String,
    /// The query, in the monitor's language, templated with `{{service}}`, `{{environment}}`
    /// and `{{revision}}`.
    #[builder(setter(into))]
    pub expr: String,
    /// The alert is active while the newest value satisfies this.
    pub condition: Condition,
    /// How long the condition must hold before the alert fires (default: zero, at once).
    #[builder(default)]
    #[serde(default, with = "duration_ms", rename = "for_ms")]
    pub for_: Duration,
    /// How long a firing alert keeps firing after its condition stops holding (default: zero).
    #[builder(default)]
    #[serde(default, with = "duration_ms", rename = "keep_firing_for_ms")]
    pub keep_firing_for: Duration,
    /// Extra labels of the alert (e.g. `severity`); see [`super::labels`].
    #[builder(default)]
    #[serde(default)]
    pub labels: Labels,
    /// Annotations (e.g. `summary`), templated with `{{value}}`, `{{labels.NAME}}`,
    /// `{{service}}`, `{{environment}}` and `{{revision}}`.
    #[builder(default)]
    #[serde(default)]
    pub annotations: Labels,
}

impl From<AlertRule> for Result<AlertRule> {
    fn from(rule: AlertRule) -> Self {
        rule.validate()?;
        Ok(rule)
    }
}

const EXPR_VARS: &[&str] = &["service", "environment", "revision"];

impl AlertRule {
    /// Checks the rule: a name, a non-empty expression using only known placeholders, a
    /// finite threshold, valid label names that are not [`RESERVED_LABELS`], and annotations
    /// using only known placeholders.
    pub fn validate(&self) -> Result<()> {
        if self.name.trim().is_empty() {
            return Err(Error::invalid("alert.name", "must not be empty"));
        }
        if self.expr.trim().is_empty() {
            return Err(Error::invalid("alert.expr", "must not be empty"));
        }
        render(&self.expr, |v| EXPR_VARS.contains(&v).then(String::new))
            .map_err(|e| Error::invalid("alert.expr", e))?;
        for (name, d) in [
            ("for", self.for_),
            ("keep_firing_for", self.keep_firing_for),
        ] {
            deploykit_core::validate::check_duration(
                &format!("alert.{name}"),
                d,
                std::time::Duration::ZERO,
                deploykit_core::time::DAY * 30,
            )?;
        }
        if !self.condition.threshold.is_finite() {
            return Err(Error::invalid(
                "alert.condition",
                format!(
                    "threshold {} is not a finite number",
                    self.condition.threshold
                ),
            ));
        }
        for name in self.labels.keys() {
            check_label_name("alert.labels", name)?;
            if RESERVED_LABELS.contains(&name.as_str()) {
                return Err(Error::invalid(
                    "alert.labels",
                    format!("{name:?} is set by the engine from the rule and the target"),
                ));
            }
        }
        for (key, template) in &self.annotations {
            render(template, |v| {
                (EXPR_VARS.contains(&v) || v == "value" || label_var(v).is_some()).then(String::new)
            })
            .map_err(|e| Error::invalid(format!("alert.annotations.{key}"), e))?;
        }
        Ok(())
    }

    /// The rule's query for `target`.
    pub fn query(&self, target: &AlertTarget) -> MetricQuery {
        let expr =
            render(&self.expr, |v| target_var(target, v)).unwrap_or_else(|_| self.expr.clone());
        let q = MetricQuery::new(target.service.clone(), expr);
        match &target.revision {
            Some(r) => q.for_revision(r.clone()),
            None => q,
        }
    }

    /// The labels of this rule's alert for `target`.
    pub fn alert_labels(&self, target: &AlertTarget) -> Labels {
        let mut labels = self.labels.clone();
        labels.insert("alertname".into(), self.name.clone());
        labels.insert("service".into(), target.service.to_string());
        labels.insert("environment".into(), target.environment.to_string());
        if let Some(r) = &target.revision {
            labels.insert("revision".into(), r.to_string());
        }
        labels
    }

    /// The annotations rendered for an alert with `labels` of `target` and `value`.
    pub(super) fn render_annotations(
        &self,
        target: &AlertTarget,
        labels: &Labels,
        value: Option<f64>,
    ) -> Labels {
        self.annotations
            .iter()
            .map(|(k, template)| {
                let text = render(template, |v| {
                    if v == "value" {
                        return Some(value.map(|x| x.to_string()).unwrap_or_default());
                    }
                    if let Some(name) = label_var(v) {
                        return Some(labels.get(name).cloned().unwrap_or_default());
                    }
                    target_var(target, v)
                })
                .unwrap_or_else(|_| template.clone());
                (k.clone(), text)
            })
            .collect()
    }
}

fn label_var(v: &str) -> Option<&str> {
    v.strip_prefix("labels.").filter(|n| !n.is_empty())
}

fn target_var(target: &AlertTarget, v: &str) -> Option<String> {
    match v {
        "service" => Some(target.service.to_string()),
        "environment" => Some(target.environment.to_string()),
        "revision" => Some(
            target
                .revision
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        ),
        _ => None,
    }
}

/// Replaces every `{{ name }}` in `template` with `lookup(name)`; an unknown name or an
/// unclosed `{{` is an error.
fn render(
    template: &str,
    mut lookup: impl FnMut(&str) -> Option<String>,
) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unclosed \"{{{{\" in {template:?}"))?;
        let name = after[..end].trim();
        let value = lookup(name)
            .ok_or_else(|| format!("unknown placeholder \"{{{{{name}}}}}\" in {template:?}"))?;
        out.push_str(&value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A gauge query of the form `name{environment="value"}` (what the gauges deploykit answers
/// itself take, e.g. `deploykit_failover_stalled{environment="prod"}`) split into its name and
/// environment; `None` for any other form.
pub fn environment_selector(expr: &str) -> Option<(&str, &str)> {
    let (name, rest) = expr.trim().split_once('{')?;
    let selector = rest.strip_suffix('}')?.trim();
    let value = selector
        .strip_prefix("environment")?
        .trim_start()
        .strip_prefix('=')?
        .trim()
        .strip_prefix('"')?
        .strip_suffix('"')?;
    Some((name.trim(), value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels;
    use deploykit_core::model::{EnvironmentName, RevisionId, ServiceId};

    #[test]
    fn environment_selectors_parse() {
        assert_eq!(
            environment_selector(r#"deploykit_failover_stalled{environment="prod"}"#),
            Some(("deploykit_failover_stalled", "prod"))
        );
        assert_eq!(
            environment_selector(r#" m { environment = "a-b" } "#),
            Some(("m", "a-b"))
        );
        assert_eq!(environment_selector("m"), None);
        assert_eq!(environment_selector(r#"m{service="x"}"#), None);
        assert_eq!(environment_selector(r#"m{environment="x""#), None);
    }

    fn target(rev: bool) -> AlertTarget {
        let t = AlertTarget::new(
            ServiceId::new("web").unwrap(),
            EnvironmentName::new("prod").unwrap(),
        );
        if rev {
            t.with_revision(RevisionId::parse("0123456789abcdef").unwrap())
        } else {
            t
        }
    }

    fn rule() -> AlertRule {
        AlertRule::builder()
            .name("HighErrors")
            .expr(r#"errors{service="{{service}}",env="{{ environment }}",rev="{{revision}}"}"#)
            .condition(Condition::above(0.05))
            .labels(labels([("severity", "critical")]))
            .annotations(labels([(
                "summary",
                "{{labels.alertname}} on {{service}}@{{revision}} in {{environment}}: {{value}} ({{labels.nope}})",
            )]))
            .build()
            .unwrap()
    }

    #[test]
    fn renders_the_query_for_a_target() {
        let q = rule().query(&target(true));
        assert_eq!(
            q.expr,
            r#"errors{service="web",env="prod",rev="0123456789abcdef"}"#
        );
        assert_eq!(
            q.revision.as_ref().map(|r| r.as_str()),
            Some("0123456789abcdef")
        );
        let q = rule().query(&target(false));
        assert_eq!(q.expr, r#"errors{service="web",env="prod",rev=""}"#);
        assert_eq!(q.revision, None);
    }

    #[test]
    fn labels_and_annotations() {
        let r = rule();
        let t = target(true);
        let l = r.alert_labels(&t);
        assert_eq!(
            l,
            labels([
                ("alertname", "HighErrors"),
                ("environment", "prod"),
                ("revision", "0123456789abcdef"),
                ("service", "web"),
                ("severity", "critical"),
            ])
        );
        let a = r.render_annotations(&t, &l, Some(0.07));
        assert_eq!(
            a["summary"],
            "HighErrors on web@0123456789abcdef in prod: 0.07 ()"
        );
        assert!(!r.alert_labels(&target(false)).contains_key("revision"));
    }

    #[test]
    fn validation_names_the_field() {
        let field = |b: Result<AlertRule>| match b {
            Err(Error::InvalidSpec { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let base = || {
            AlertRule::builder()
                .name("A")
                .condition(Condition::above(1.0))
        };
        assert_eq!(field(base().expr("  ").build()), "alert.expr");
        assert_eq!(field(base().expr("x{{servce}}").build()), "alert.expr");
        assert_eq!(field(base().expr("x{{service").build()), "alert.expr");
        assert_eq!(
            field(
                AlertRule::builder()
                    .name("")
                    .expr("x")
                    .condition(Condition::above(1.0))
                    .build()
            ),
            "alert.name"
        );
        assert_eq!(
            field(
                AlertRule::builder()
                    .name("A")
                    .expr("x")
                    .condition(Condition::above(f64::NAN))
                    .build()
            ),
            "alert.condition"
        );
        assert_eq!(
            field(base().expr("x").labels(labels([("service", "x")])).build()),
            "alert.labels"
        );
        assert_eq!(
            field(base().expr("x").labels(labels([("bad-name", "x")])).build()),
            "alert.labels"
        );
        assert_eq!(
            field(
                base()
                    .expr("x")
                    .annotations(labels([("summary", "{{valeu}}")]))
                    .build()
            ),
            "alert.annotations.summary"
        );
    }
}
