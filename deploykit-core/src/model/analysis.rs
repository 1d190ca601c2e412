//! Analysis specs: the metrics an analysis measures, with their conditions, limits and
//! validation, and the measurements it journals. How measurements are taken and folded into a
//! run's status is in [`crate::analysis`].

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use typed_builder::TypedBuilder;

use crate::error::{Error, Result};
use crate::time::{DAY, Timestamp, duration_ms, option_duration_ms};
use crate::validate::check_duration;

/// The evidence a metric needs before it is judged: at least `count` underlying samples
/// (usually requests) for the revision under test, counted by `query`. With fewer, the
/// measurement is [`MeasurementOutcome::NoData`] ("too little traffic to judge"), whatever the
/// metric's own value says — a good error rate from 3 requests proves nothing, and neither
/// does a bad one.
///
/// ```
/// use std::time::Duration;
/// use deploykit_core::analysis::{Condition, MetricCheck, MinSamples};
/// let check = MetricCheck::threshold("error-rate", "error_rate", Condition::below(0.05))
///     .interval(Duration::from_secs(60))
///     .min_samples(MinSamples::new("requests[1m]", 100))
///     .build()?;
/// assert_eq!(check.min_samples.map(|m| m.count), Some(100));
/// # Ok::<(), deploykit_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MinSamples {
    /// A query for the number of samples behind the metric, for the revision under test: its
    /// newest value is the count (e.g. `requests[1m]` on the local proxy, or
    /// `sum(increase(http_requests_total{revision="{{revision}}"}[1m]))` in Prometheus). It
    /// may use `{{service}}`, `{{revision}}` and `{{environment}}`.
    pub query: String,
    /// The fewest samples to judge on (at least 1).
    pub count: u64,
}

impl MinSamples {
    /// At least `count` samples, as `query` counts them.
    pub fn new(query: impl Into<String>, count: u64) -> Self {
        MinSamples {
            query: query.into(),
            count,
        }
    }
}

/// A comparison operator for a [`Condition`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// `value <op> threshold`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    /// The operator.
    pub op: Comparison,
    /// The threshold.
    pub threshold: f64,
}

impl Condition {
    /// `value < threshold`.
    pub fn below(threshold: f64) -> Self {
        Condition {
            op: Comparison::Lt,
            threshold,
        }
    }

    /// `value > threshold`.
    pub fn above(threshold: f64) -> Self {
        Condition {
            op: Comparison::Gt,
            threshold,
        }
    }

    /// Whether `value` satisfies the condition.
    pub fn holds(&self, value: f64) -> bool {
        match self.op {
            Comparison::Lt => value < self.threshold,
            Comparison::Le => value <= self.threshold,
            Comparison::Gt => value > self.threshold,
            Comparison::Ge => value >= self.threshold,
        }
    }
}

impl Condition {
    /// `< 2 %`: the condition with its threshold in `unit` (see [`format_value`]).
    pub fn describe(&self, unit: Option<&str>) -> String {
        let op = match self.op {
            Comparison::Lt => "<",
            Comparison::Le => "<=",
            Comparison::Gt => ">",
            Comparison::Ge => ">=",
        };
        format!("{op} {}", format_value(self.threshold, unit))
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(None))
    }
}

/// A measured value for people: four significant digits (`0.4667`, `1235`), `no data` for NaN,
/// `∞` for infinity, and the metric's unit: `%` shows a fraction as a percentage with three
/// significant digits (`0.4667` → `46.7 %`), any other unit follows the number (`250 ms`).
///
/// ```
/// use deploykit_core::analysis::format_value;
/// assert_eq!(format_value(0.4666666666666667, None), "0.4667");
/// assert_eq!(format_value(0.4666666666666667, Some("%")), "46.7 %");
/// assert_eq!(format_value(0.02, Some("%")), "2 %");
/// assert_eq!(format_value(1234.5678, Some("ms")), "1235 ms");
/// assert_eq!(format_value(f64::NAN, Some("%")), "no data");
/// ```
pub fn format_value(v: f64, unit: Option<&str>) -> String {
    if v.is_nan() {
        return "no data".to_string();
    }
    let (v, digits, unit) = match unit {
        Some("%") => (v * 100.0, 3, Some("%")),
        other => (v, 4, other.filter(|u| !u.is_empty())),
    };
    let number = if v.is_infinite() {
        if v > 0.0 {
            "∞".to_string()
        } else {
            "-∞".to_string()
        }
    } else if v == 0.0 {
        "0".to_string()
    } else {
        let magnitude = v.abs().log10().floor() as i32;
        let decimals = (digits - 1 - magnitude).clamp(0, 12) as usize;
        let text = format!("{v:.decimals$}");
        if text.contains('.') {
            text.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            text
        }
    };
    match unit {
        Some(unit) => format!("{number} {unit}"),
        None => number,
    }
}

/// Which way a metric must not move in the canary, relative to the baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadDirection {
    /// Higher is bad (error rate, latency).
    Increase,
    /// Lower is bad (throughput, success rate).
    Decrease,
    /// Any significant change is bad.
    Either,
}

/// One metric of a statistical judgement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, TypedBuilder)]
#[non_exhaustive]
pub struct JudgedMetric {
    /// Name, for reports.
    #[builder(setter(into))]
    pub name: String,
    /// The query; samples over the judgement's range are compared per revision.
    #[builder(setter(into))]
    pub query: String,
    /// Which change fails the metric.
    #[builder(default = BadDirection::Increase)]
    pub bad: BadDirection,
    /// Weight in the score (default 1).
    #[builder(default = 1.0)]
    pub weight: f64,
    /// A failing critical metric fails the whole judgement.
    #[builder(default)]
    pub critical: bool,
}

/// A Kayenta-style canary judgement: each metric's canary samples against the baseline's with
/// a Mann-Whitney U test; the score is the weighted share of metrics that pass.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, TypedBuilder)]
#[non_exhaustive]
pub struct JudgementSpec {
    /// The metrics.
    pub metrics: Vec<JudgedMetric>,
    /// How far back to take samples (default 5 min).
    #[builder(default = Duration::from_secs(300))]
    #[serde(with = "duration_ms", rename = "range_ms")]
    pub range: Duration,
    /// Confidence for a difference to count (default 0.98, Kayenta's).
    #[builder(default = 0.98)]
    pub confidence: f64,
    /// Score at or above which the canary passes (default 95).
    #[builder(default = 95.0)]
    pub pass_score: f64,
    /// Score at or above which the result is marginal, i.e. inconclusive (default 75).
    #[builder(default = 75.0)]
    pub marginal_score: f64,
}

/// How a metric is measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum MetricKind {
    /// The newest value of a query, against thresholds. The query may use `{{service}}`,
    /// `{{revision}}` and `{{environment}}`.
    Threshold {
        /// The query.
        query: String,
        /// Successful when this holds.
        success: Condition,
        /// Failed when this holds; with it, a value meeting neither is inconclusive.
        failure: Option<Condition>,
    },
    /// A statistical comparison of canary against baseline.
    Judgement(JudgementSpec),
}

/// One metric of an analysis, with Argo Rollouts' knobs and defaults.
///
/// ```
/// use std::time::Duration;
/// use deploykit_core::analysis::{Condition, MetricCheck};
/// let check = MetricCheck::threshold("error-rate", "error_rate", Condition::below(0.05))
///     .interval(Duration::from_secs(60))
///     .count(3)
///     .build()?;
/// assert_eq!(check.consecutive_error_limit, 4);
/// # Ok::<(), deploykit_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, TypedBuilder)]
#[builder(build_method(into = Result<MetricCheck>))]
#[non_exhaustive]
pub struct MetricCheck {
    /// Name, unique within the analysis.
    #[builder(setter(into))]
    pub name: String,
    /// How it is measured.
    pub kind: MetricKind,
    /// Time between measurements; without one the metric is measured `count` times at once
    /// (default: none).
    #[builder(default, setter(strip_option))]
    #[serde(default, with = "option_duration_ms", rename = "interval_ms")]
    pub interval: Option<Duration>,
    /// How many measurements; `None` with an interval measures until the rollout moves on
    /// (background analysis). Default: 1 without an interval, unlimited with one.
    #[builder(default, setter(strip_option))]
    pub count: Option<u32>,
    /// Failed measurements tolerated (default 0).
    #[builder(default)]
    pub failure_limit: u32,
    /// Inconclusive measurements tolerated (default 0).
    #[builder(default)]
    pub inconclusive_limit: u32,
    /// Measurements without data (no data, or a failed query) tolerated in a row (default 4).
    /// One more makes the run inconclusive — or failed, if every one of them was a failed
    /// query.
    #[builder(default = 4)]
    pub consecutive_error_limit: u32,
    /// The evidence needed before the metric is judged (default: none beyond a value).
    #[builder(default, setter(strip_option))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_samples: Option<MinSamples>,
    /// How values read (default: plain numbers): `%` for a fraction shown as a percentage
    /// (`0.4667` → `46.7 %`), or a unit written after the number (`ms`, `req/s`). See
    /// [`format_value`].
    #[builder(default, setter(strip_option, into))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

impl From<MetricCheck> for Result<MetricCheck> {
    fn from(m: MetricCheck) -> Self {
        m.validate("analysis.metrics")?;
        Ok(m)
    }
}

/// The builder [`MetricCheck::threshold`] and [`MetricCheck::judgement`] start.
pub type MetricCheckBuilderWithKind =
    MetricCheckBuilder<((String,), (MetricKind,), (), (), (), (), (), (), ())>;

/// The most measurements (and the largest limit) one metric of an analysis may have.
pub const MAX_MEASUREMENTS: u32 = 100_000;

impl MetricCheck {
    /// A threshold check: `query`'s newest value must satisfy `success`.
    pub fn threshold(
        name: impl Into<String>,
        query: impl Into<String>,
        success: Condition,
    ) -> MetricCheckBuilderWithKind {
        MetricCheck::builder()
            .name(name)
            .kind(MetricKind::Threshold {
                query: query.into(),
                success,
                failure: None,
            })
    }

    /// A statistical judgement of canary against baseline.
    pub fn judgement(name: impl Into<String>, spec: JudgementSpec) -> MetricCheckBuilderWithKind {
        MetricCheck::builder()
            .name(name)
            .kind(MetricKind::Judgement(spec))
    }

    /// Measurements needed to finish: `None` means unlimited.
    pub fn target_count(&self) -> Option<u32> {
        match (self.count, self.interval) {
            (Some(n), _) => Some(n),
            (None, None) => Some(1),
            (None, Some(_)) => None,
        }
    }

    pub(crate) fn validate(&self, field: &str) -> Result<()> {
        let field = format!("{field}.{}", self.name);
        if let MetricKind::Judgement(spec) = &self.kind {
            check_duration(
                &format!("{field}.range"),
                spec.range,
                Duration::from_secs(1),
                DAY * 30,
            )?;
        }
        if self.name.trim().is_empty() {
            return Err(Error::invalid(field, "a metric needs a name"));
        }
        if let Some(interval) = self.interval {
            check_duration(
                &format!("{field}.interval"),
                interval,
                Duration::from_millis(1),
                DAY,
            )?;
        }
        for (name, n, min) in [
            ("count", self.count.unwrap_or(1), 1),
            ("failure_limit", self.failure_limit, 0),
            ("inconclusive_limit", self.inconclusive_limit, 0),
            ("consecutive_error_limit", self.consecutive_error_limit, 0),
        ] {
            if !(min..=MAX_MEASUREMENTS).contains(&n) {
                return Err(Error::invalid(
                    format!("{field}.{name}"),
                    format!("{n} is outside {min}-{MAX_MEASUREMENTS}"),
                ));
            }
        }
        if let Some(unit) = &self.unit
            && (unit.trim().is_empty() || unit.len() > 16 || unit.chars().any(char::is_control))
        {
            return Err(Error::invalid(
                format!("{field}.unit"),
                format!(
                    "{unit:?} is not a unit: write \"%\" for a fraction shown as a percentage, \
                     or a short unit such as \"ms\" (at most 16 characters)"
                ),
            ));
        }
        if let Some(min) = &self.min_samples {
            if min.query.trim().is_empty() {
                return Err(Error::invalid(
                    format!("{field}.min_samples.query"),
                    "must not be empty: it counts the samples (e.g. requests) behind the metric",
                ));
            }
            if min.count == 0 {
                return Err(Error::invalid(
                    format!("{field}.min_samples.count"),
                    "must be at least 1 (leave min_samples out to judge any value)",
                ));
            }
        }
        match &self.kind {
            MetricKind::Threshold {
                query,
                success,
                failure,
            } => {
                if query.trim().is_empty() {
                    return Err(Error::invalid(
                        format!("{field}.query"),
                        "must not be empty",
                    ));
                }
                for c in std::iter::once(success).chain(failure) {
                    if !c.threshold.is_finite() {
                        return Err(Error::invalid(
                            format!("{field}.condition"),
                            format!("threshold {} is not a finite number", c.threshold),
                        ));
                    }
                }
            }
            MetricKind::Judgement(j) => {
                if j.metrics.is_empty() {
                    return Err(Error::invalid(
                        format!("{field}.metrics"),
                        "a judgement needs at least one metric",
                    ));
                }
                if !(j.confidence > 0.5 && j.confidence < 1.0) {
                    return Err(Error::invalid(
                        format!("{field}.confidence"),
                        format!("{} is outside (0.5, 1)", j.confidence),
                    ));
                }
                let scores_ok = (0.0..=100.0).contains(&j.marginal_score)
                    && (0.0..=100.0).contains(&j.pass_score)
                    && j.marginal_score <= j.pass_score;
                if !scores_ok {
                    return Err(Error::invalid(
                        format!("{field}.pass_score"),
                        "need 0 <= marginal_score <= pass_score <= 100",
                    ));
                }
                for m in &j.metrics {
                    if !(m.weight.is_finite() && m.weight > 0.0) {
                        return Err(Error::invalid(
                            format!("{field}.metrics.{}.weight", m.name),
                            format!("{} is not a positive number", m.weight),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A set of metrics measured together: one analysis step, or the background analysis.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AnalysisSpec {
    /// The metrics.
    pub metrics: Vec<MetricCheck>,
}

impl AnalysisSpec {
    /// An analysis of `metrics`; names must be unique.
    pub fn new(metrics: Vec<MetricCheck>) -> Result<Self> {
        let spec = AnalysisSpec { metrics };
        spec.validate("analysis")?;
        Ok(spec)
    }

    pub(crate) fn validate(&self, field: &str) -> Result<()> {
        if self.metrics.is_empty() {
            return Err(Error::invalid(
                format!("{field}.metrics"),
                "an analysis needs at least one metric",
            ));
        }
        for (i, m) in self.metrics.iter().enumerate() {
            m.validate(&format!("{field}.metrics"))?;
            if self.metrics[..i].iter().any(|o| o.name == m.name) {
                return Err(Error::invalid(
                    format!("{field}.metrics.{}", m.name),
                    "metric names must be unique within an analysis",
                ));
            }
        }
        Ok(())
    }
}

/// How one measurement came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeasurementOutcome {
    /// The condition held.
    Successful,
    /// The failure condition held (or the success condition did not).
    Failed,
    /// Neither held.
    Inconclusive,
    /// The query failed (or no monitor answers): nothing was measured.
    Error,
    /// The query answered with nothing to judge: no samples, NaN or ±infinity, or fewer
    /// underlying samples than [`MetricCheck::min_samples`] — typically a canary that has
    /// received no traffic. Never a pass; too many in a row make the run inconclusive.
    NoData,
}

/// One journaled measurement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Measurement {
    /// The run (`step-2`, `background`, `pre-promotion`).
    pub run: String,
    /// The metric's name.
    pub metric: String,
    /// When it was taken.
    pub at: Timestamp,
    /// The value (a score for judgements), if there was one.
    pub value: Option<f64>,
    /// The outcome.
    pub outcome: MeasurementOutcome,
    /// A human explanation (`0.12 is not < 0.05`, `no data`, the judgement's table).
    pub detail: String,
}

impl Measurement {
    /// A no-data measurement for an environment without a monitor.
    pub(crate) fn no_monitor(run: &str, metric: &str, at: Timestamp) -> Self {
        Measurement {
            run: run.to_string(),
            metric: metric.to_string(),
            at,
            value: None,
            outcome: MeasurementOutcome::Error,
            detail: "no monitor is configured for this environment".to_string(),
        }
    }
}

impl fmt::Display for MeasurementOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MeasurementOutcome::Successful => "successful",
            MeasurementOutcome::Failed => "failed",
            MeasurementOutcome::Inconclusive => "inconclusive",
            MeasurementOutcome::Error => "error",
            MeasurementOutcome::NoData => "no data",
        })
    }
}

impl MeasurementOutcome {
    /// Whether the measurement judged a value (successful, failed or inconclusive), as opposed
    /// to no data or a failed query.
    pub fn has_data(self) -> bool {
        !matches!(self, MeasurementOutcome::Error | MeasurementOutcome::NoData)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_samples_is_validated() {
        let mut m = MetricCheck::threshold("m", "q", Condition::below(1.0))
            .interval(Duration::from_secs(10))
            .build()
            .expect("metric");
        m.min_samples = Some(MinSamples::new("requests", 0));
        let err = m.validate("analysis.metrics").expect_err("count 0");
        assert!(err.to_string().contains("min_samples.count"), "{err}");
        m.min_samples = Some(MinSamples::new("  ", 5));
        let err = m.validate("analysis.metrics").expect_err("empty query");
        assert!(err.to_string().contains("min_samples.query"), "{err}");
        m.min_samples = Some(MinSamples::new("requests", 5));
        m.validate("analysis.metrics").expect("valid");
    }
}
