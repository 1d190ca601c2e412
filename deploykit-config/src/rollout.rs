//! The `strategy` of an environment and the named `analyses` its canary steps use, from TOML
//! into the strategy types.
//!
//! A metric of `[analyses.<name>]` is a threshold check (`query` with `below` or `above`, and
//! optionally `fail_above` or `fail_below`) or a `judgement`, with Argo's knobs `interval`,
//! `count`, `failure_limit`, `inconclusive_limit` and `consecutive_error_limit`, and
//! `min_samples = { query = "requests[1m]", count = 20 }`: judge only once the revision under
//! test has that many underlying samples (e.g. requests); until then a measurement is no data
//! (see [`deploykit_core::analysis`]). `unit` says how values read in progress lines and
//! reasons: `"%"` for a fraction shown as a percentage (`0.4667` → `46.7 %`), or a unit
//! written after the number (`"ms"`).

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::{Located, duration, quantity};
use deploykit_core::Result;
use deploykit_core::analysis::{
    AnalysisSpec, BadDirection, Condition, JudgedMetric, JudgementSpec, MetricCheck, MetricKind,
    MinSamples,
};
use deploykit_core::model::{RollingSpec, Weight};
use deploykit_core::strategy::{BlueGreenSpec, CanaryScale, CanarySpec, CanaryStep, StrategySpec};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub(super) struct StrategyToml {
    rolling: Option<RollingToml>,
    blue_green: Option<BlueGreenToml>,
    canary: Option<CanaryToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollingToml {
    max_surge: Option<toml::Value>,
    max_unavailable: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlueGreenToml {
    auto_promote: Option<bool>,
    auto_promotion_delay: Option<String>,
    scale_down_delay: Option<String>,
    pre_promotion_analysis: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CanaryToml {
    steps: Vec<Spanned<StepToml>>,
    background_analysis: Option<String>,
    scale_down_delay: Option<String>,
}

/// One step: exactly one of its keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepToml {
    weight: Option<u32>,
    pause: Option<String>,
    approval: Option<bool>,
    analysis: Option<String>,
    canary_scale: Option<toml::Value>,
    header_route: Option<HeaderRouteToml>,
    mirror: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderRouteToml {
    name: String,
    value: String,
}

/// A named analysis: `[analyses.<name>]` with its metrics.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AnalysisToml {
    metrics: Vec<Spanned<MetricToml>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricToml {
    name: String,
    query: Option<String>,
    /// Success when the value is below this.
    below: Option<f64>,
    /// Success when the value is above this.
    above: Option<f64>,
    /// Failure when the value is above this (a value meeting neither is inconclusive).
    fail_above: Option<f64>,
    /// Failure when the value is below this.
    fail_below: Option<f64>,
    judgement: Option<JudgementToml>,
    interval: Option<String>,
    count: Option<u32>,
    failure_limit: Option<u32>,
    inconclusive_limit: Option<u32>,
    consecutive_error_limit: Option<u32>,
    /// Judge only once the revision has this much traffic:
    /// `min_samples = { query = "requests[1m]", count = 20 }`.
    min_samples: Option<MinSamplesToml>,
    /// How values read: `"%"` (a fraction, shown as a percentage) or a unit such as `"ms"`.
    unit: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MinSamplesToml {
    query: String,
    count: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JudgementToml {
    range: Option<String>,
    confidence: Option<f64>,
    pass_score: Option<f64>,
    marginal_score: Option<f64>,
    metrics: Vec<JudgedToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JudgedToml {
    name: String,
    query: String,
    bad: Option<String>,
    weight: Option<f64>,
    critical: Option<bool>,
}

/// Every named analysis, converted.
pub(super) fn analyses(
    at: &Located<'_>,
    raw: &BTreeMap<String, Spanned<AnalysisToml>>,
) -> Result<BTreeMap<String, AnalysisSpec>> {
    let mut out = BTreeMap::new();
    for (name, spanned) in raw {
        let path = format!("analyses.{name}");
        let mut metrics = Vec::new();
        for (i, m) in spanned.get_ref().metrics.iter().enumerate() {
            metrics.push(metric(
                at,
                m.span(),
                &format!("{path}.metrics[{i}]"),
                m.get_ref(),
            )?);
        }
        let spec = AnalysisSpec::new(metrics).map_err(|e| at.error(spanned.span(), &path, e))?;
        out.insert(name.clone(), spec);
    }
    Ok(out)
}

fn condition(below: Option<f64>, above: Option<f64>) -> Option<Condition> {
    match (below, above) {
        (Some(b), None) => Some(Condition::below(b)),
        (None, Some(a)) => Some(Condition::above(a)),
        _ => None,
    }
}

fn metric(at: &Located<'_>, span: Range<usize>, path: &str, m: &MetricToml) -> Result<MetricCheck> {
    let kind = match (&m.query, &m.judgement) {
        (Some(query), None) => {
            let success = condition(m.below, m.above).ok_or_else(|| {
                at.error(
                    span.clone(),
                    path,
                    "a threshold metric needs exactly one of `below` or `above`",
                )
            })?;
            let failure = match (m.fail_below, m.fail_above) {
                (None, None) => None,
                (b, a) => Some(condition(b, a).ok_or_else(|| {
                    at.error(
                        span.clone(),
                        path,
                        "at most one of `fail_below` or `fail_above`",
                    )
                })?),
            };
            MetricKind::Threshold {
                query: query.clone(),
                success,
                failure,
            }
        }
        (None, Some(j)) => {
            if m.below.is_some()
                || m.above.is_some()
                || m.fail_below.is_some()
                || m.fail_above.is_some()
            {
                return Err(at.error(
                    span,
                    path,
                    "a judgement metric has no thresholds: its score decides",
                ));
            }
            MetricKind::Judgement(judgement(
                at,
                span.clone(),
                &format!("{path}.judgement"),
                j,
            )?)
        }
        _ => {
            return Err(at.error(
                span,
                path,
                "a metric needs exactly one of `query` (a threshold check) or `judgement`",
            ));
        }
    };
    let mut check = MetricCheck::builder()
        .name(m.name.clone())
        .kind(kind)
        .build()
        .map_err(|e| at.error(span.clone(), path, e))?;
    if let Some(d) = &m.interval {
        check.interval = Some(duration(at, span.clone(), &format!("{path}.interval"), d)?);
    }
    check.count = m.count;
    if let Some(n) = m.failure_limit {
        check.failure_limit = n;
    }
    if let Some(n) = m.inconclusive_limit {
        check.inconclusive_limit = n;
    }
    if let Some(n) = m.consecutive_error_limit {
        check.consecutive_error_limit = n;
    }
    check.min_samples = m
        .min_samples
        .as_ref()
        .map(|min| MinSamples::new(min.query.clone(), min.count));
    check.unit = m.unit.clone();
    AnalysisSpec::new(vec![check.clone()]).map_err(|e| at.error(span, path, e))?;
    Ok(check)
}

fn judgement(
    at: &Located<'_>,
    span: Range<usize>,
    path: &str,
    j: &JudgementToml,
) -> Result<JudgementSpec> {
    let mut metrics = Vec::new();
    for (i, m) in j.metrics.iter().enumerate() {
        let bad = match m.bad.as_deref() {
            None | Some("increase") => BadDirection::Increase,
            Some("decrease") => BadDirection::Decrease,
            Some("either") => BadDirection::Either,
            Some(other) => {
                return Err(at.error(
                    span,
                    &format!("{path}.metrics[{i}].bad"),
                    format!("{other:?}: expected \"increase\", \"decrease\" or \"either\""),
                ));
            }
        };
        metrics.push(
            JudgedMetric::builder()
                .name(m.name.clone())
                .query(m.query.clone())
                .bad(bad)
                .weight(m.weight.unwrap_or(1.0))
                .critical(m.critical.unwrap_or(false))
                .build(),
        );
    }
    let mut spec = JudgementSpec::builder().metrics(metrics).build();
    if let Some(r) = &j.range {
        spec.range = duration(at, span.clone(), &format!("{path}.range"), r)?;
    }
    if let Some(c) = j.confidence {
        spec.confidence = c;
    }
    if let Some(s) = j.pass_score {
        spec.pass_score = s;
    }
    if let Some(s) = j.marginal_score {
        spec.marginal_score = s;
    }
    Ok(spec)
}

fn lookup(
    at: &Located<'_>,
    span: Range<usize>,
    path: &str,
    analyses: &BTreeMap<String, AnalysisSpec>,
    name: &str,
) -> Result<AnalysisSpec> {
    analyses.get(name).cloned().ok_or_else(|| {
        let known: Vec<&str> = analyses.keys().map(String::as_str).collect();
        at.error(
            span,
            path,
            format!(
                "no analysis named {name:?} (defined: {})",
                if known.is_empty() {
                    "none; add [analyses.<name>]".to_string()
                } else {
                    known.join(", ")
                }
            ),
        )
    })
}

/// The environment's strategy: exactly one of `rolling`, `blue_green`, `canary`.
pub(super) fn strategy(
    at: &Located<'_>,
    span: Range<usize>,
    path: &str,
    st: &StrategyToml,
    analyses: &BTreeMap<String, AnalysisSpec>,
) -> Result<StrategySpec> {
    let path = format!("{path}.strategy");
    match (&st.rolling, &st.blue_green, &st.canary) {
        (Some(r), None, None) => {
            let mut rolling = RollingSpec::default();
            if let Some(v) = &r.max_surge {
                rolling.max_surge =
                    quantity(at, span.clone(), &format!("{path}.rolling.max_surge"), v)?;
            }
            if let Some(v) = &r.max_unavailable {
                rolling.max_unavailable = quantity(
                    at,
                    span.clone(),
                    &format!("{path}.rolling.max_unavailable"),
                    v,
                )?;
            }
            Ok(StrategySpec::Rolling(rolling))
        }
        (None, Some(b), None) => {
            let path = format!("{path}.blue_green");
            let mut bg = BlueGreenSpec::default();
            if let Some(a) = b.auto_promote {
                bg.auto_promote = a;
            }
            if let Some(d) = &b.auto_promotion_delay {
                bg.auto_promotion_delay =
                    duration(at, span.clone(), &format!("{path}.auto_promotion_delay"), d)?;
            }
            if let Some(d) = &b.scale_down_delay {
                bg.scale_down_delay =
                    duration(at, span.clone(), &format!("{path}.scale_down_delay"), d)?;
            }
            if let Some(name) = &b.pre_promotion_analysis {
                bg.pre_promotion_analysis = Some(lookup(
                    at,
                    span.clone(),
                    &format!("{path}.pre_promotion_analysis"),
                    analyses,
                    name,
                )?);
            }
            Ok(StrategySpec::BlueGreen(bg))
        }
        (None, None, Some(c)) => canary(at, span, &format!("{path}.canary"), c, analyses),
        _ => Err(at.error(
            span,
            &path,
            "expected exactly one of `rolling`, `blue_green` or `canary`",
        )),
    }
}

fn canary(
    at: &Located<'_>,
    span: Range<usize>,
    path: &str,
    c: &CanaryToml,
    analyses: &BTreeMap<String, AnalysisSpec>,
) -> Result<StrategySpec> {
    let mut steps = Vec::new();
    for (i, spanned) in c.steps.iter().enumerate() {
        let step_span = spanned.span();
        let step_path = format!("{path}.steps[{i}]");
        let s = spanned.get_ref();
        let given = [
            s.weight.is_some(),
            s.pause.is_some(),
            s.approval.is_some(),
            s.analysis.is_some(),
            s.canary_scale.is_some(),
            s.header_route.is_some(),
            s.mirror.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(at.error(
                step_span,
                &step_path,
                "a step has exactly one of `weight`, `pause`, `approval`, `analysis`, \
                 `canary_scale`, `header_route` or `mirror`",
            ));
        }
        let weight = |percent: u32, key: &str| {
            Weight::new(percent)
                .map_err(|e| at.error(step_span.clone(), &format!("{step_path}.{key}"), e))
        };
        let step = if let Some(p) = s.weight {
            CanaryStep::SetWeight {
                weight: weight(p, "weight")?,
            }
        } else if let Some(d) = &s.pause {
            CanaryStep::pause(duration(
                at,
                step_span.clone(),
                &format!("{step_path}.pause"),
                d,
            )?)
        } else if let Some(approval) = s.approval {
            if !approval {
                return Err(at.error(
                    step_span,
                    &format!("{step_path}.approval"),
                    "`approval = false` is not a step; remove it, or use `pause`",
                ));
            }
            CanaryStep::approval()
        } else if let Some(name) = &s.analysis {
            CanaryStep::analysis(lookup(
                at,
                step_span.clone(),
                &format!("{step_path}.analysis"),
                analyses,
                name,
            )?)
        } else if let Some(v) = &s.canary_scale {
            let scale = match v {
                toml::Value::String(s) if s == "match_weight" => CanaryScale::MatchWeight,
                other => match quantity(
                    at,
                    step_span.clone(),
                    &format!("{step_path}.canary_scale"),
                    other,
                )? {
                    deploykit_core::model::Quantity::Count(n) => CanaryScale::Replicas(n),
                    deploykit_core::model::Quantity::Percent(p) => CanaryScale::Percent(p),
                },
            };
            CanaryStep::SetCanaryScale { scale }
        } else if let Some(h) = &s.header_route {
            CanaryStep::SetHeaderRoute {
                name: h.name.clone(),
                value: h.value.clone(),
            }
        } else {
            CanaryStep::SetMirror {
                percent: weight(s.mirror.unwrap_or_default(), "mirror")?,
            }
        };
        steps.push(step);
    }
    let mut spec = CanarySpec::builder()
        .steps(steps)
        .build()
        .map_err(|e| at.error(span.clone(), path, e))?;
    if let Some(name) = &c.background_analysis {
        spec.background_analysis = Some(lookup(
            at,
            span.clone(),
            &format!("{path}.background_analysis"),
            analyses,
            name,
        )?);
    }
    if let Some(d) = &c.scale_down_delay {
        spec.scale_down_delay = duration(at, span, &format!("{path}.scale_down_delay"), d)?;
    }
    Ok(StrategySpec::Canary(spec))
}
