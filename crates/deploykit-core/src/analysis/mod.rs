//! Analysis: metric checks against a [`Monitor`], Argo Rollouts' measurement semantics, and a
//! built-in statistical canary judgement (Mann-Whitney U per metric, weighted score).
//!
//! A *run* (one analysis step, or the background analysis) takes measurements of each of its
//! metrics. Each measurement is journaled, so an interrupted run resumes where it stopped, and
//! [`evaluate`] folds them into the run's status. No data — an empty result, NaN, ±infinity or a
//! failed query — is an `Error` measurement: it never counts as a pass, and more than
//! `consecutive_error_limit` of them in a row fail the run.

mod mann_whitney;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use typed_builder::TypedBuilder;

pub use mann_whitney::{MannWhitney, mann_whitney};

use crate::error::{Error, Result};
use crate::model::{EnvironmentName, RevisionId, ServiceId};
use crate::monitor::{MetricQuery, Monitor, MonitorExt};
use crate::time::{Timestamp, duration_ms, option_duration_ms};

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

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            Comparison::Lt => "<",
            Comparison::Le => "<=",
            Comparison::Gt => ">",
            Comparison::Ge => ">=",
        };
        write!(f, "{op} {}", self.threshold)
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
    /// No-data measurements tolerated in a row (default 4).
    #[builder(default = 4)]
    pub consecutive_error_limit: u32,
}

impl From<MetricCheck> for Result<MetricCheck> {
    fn from(m: MetricCheck) -> Self {
        m.validate("analysis.metrics")?;
        Ok(m)
    }
}

/// The builder [`MetricCheck::threshold`] and [`MetricCheck::judgement`] start.
pub type MetricCheckBuilderWithKind =
    MetricCheckBuilder<((String,), (MetricKind,), (), (), (), (), ())>;

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
        if self.name.trim().is_empty() {
            return Err(Error::invalid(field, "a metric needs a name"));
        }
        if self.interval.is_some_and(|d| d.is_zero()) {
            return Err(Error::invalid(
                format!("{field}.interval"),
                "must be more than 0",
            ));
        }
        if self.count == Some(0) {
            return Err(Error::invalid(
                format!("{field}.count"),
                "must be at least 1",
            ));
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
    /// No data: empty, NaN, infinite, or the query failed.
    Error,
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

/// The status of a run, from its measurements.
#[derive(Clone, Debug, PartialEq)]
pub enum RunStatus {
    /// Still measuring; `due` lists the metrics to measure now (may be empty).
    Running {
        /// Indexes into the spec's metrics.
        due: Vec<usize>,
    },
    /// Every metric took its measurements within its limits.
    Successful,
    /// A metric exceeded its failure or no-data limit.
    Failed {
        /// Which and why.
        reason: String,
    },
    /// A metric exceeded its inconclusive limit: a human decides.
    Inconclusive {
        /// Which and why.
        reason: String,
    },
}

/// Folds the measurements of `run` into its status at `now`.
pub fn evaluate(
    spec: &AnalysisSpec,
    run: &str,
    measurements: &[Measurement],
    now: Timestamp,
) -> RunStatus {
    let mut due = Vec::new();
    let mut all_done = true;
    let mut inconclusive = None;
    for (i, metric) in spec.metrics.iter().enumerate() {
        let taken = || {
            measurements
                .iter()
                .filter(move |m| m.run == run && m.metric == metric.name)
        };
        let count = |o: MeasurementOutcome| taken().filter(|m| m.outcome == o).count() as u32;
        let last_of = |o: MeasurementOutcome| {
            taken()
                .rfind(|m| m.outcome == o)
                .map_or(String::new(), |m| m.detail.clone())
        };
        let failed = count(MeasurementOutcome::Failed);
        if failed > metric.failure_limit {
            return RunStatus::Failed {
                reason: format!(
                    "analysis {run}: metric {} failed {failed} time(s), limit {}: {}",
                    metric.name,
                    metric.failure_limit,
                    last_of(MeasurementOutcome::Failed)
                ),
            };
        }
        let (mut errors_in_a_row, mut total, mut last) = (0u32, 0u32, None);
        for m in taken() {
            total += 1;
            errors_in_a_row = if m.outcome == MeasurementOutcome::Error {
                errors_in_a_row + 1
            } else {
                0
            };
            last = Some(m);
        }
        if errors_in_a_row > metric.consecutive_error_limit {
            let detail = last.map_or(String::new(), |m| m.detail.clone());
            return RunStatus::Failed {
                reason: format!(
                    "analysis {run}: metric {} had no data {errors_in_a_row} times in a row, limit {}: {detail}",
                    metric.name, metric.consecutive_error_limit
                ),
            };
        }
        let inconclusives = count(MeasurementOutcome::Inconclusive);
        if inconclusives > metric.inconclusive_limit && inconclusive.is_none() {
            inconclusive = Some(format!(
                "analysis {run}: metric {} inconclusive {inconclusives} time(s), limit {}: {}",
                metric.name,
                metric.inconclusive_limit,
                last_of(MeasurementOutcome::Inconclusive)
            ));
        }
        let with_data = total - count(MeasurementOutcome::Error);
        let done = metric.target_count().is_some_and(|n| with_data >= n);
        all_done &= done;
        let next_at = match (last, metric.interval) {
            (None, _) | (Some(_), None) => now,
            (Some(last), Some(interval)) => last.at.plus(interval),
        };
        if !done && now >= next_at {
            due.push(i);
        }
    }
    if let Some(reason) = inconclusive {
        return RunStatus::Inconclusive { reason };
    }
    if all_done {
        RunStatus::Successful
    } else {
        RunStatus::Running { due }
    }
}

/// What a measurement is about.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    /// The service.
    pub service: &'a ServiceId,
    /// The environment.
    pub environment: &'a EnvironmentName,
    /// The revision under test.
    pub revision: &'a RevisionId,
    /// The revision to compare against (for judgements).
    pub baseline: Option<&'a RevisionId>,
}

fn render(query: &str, subject: &Subject<'_>) -> String {
    query
        .replace("{{service}}", subject.service.as_str())
        .replace("{{revision}}", subject.revision.as_str())
        .replace("{{environment}}", subject.environment.as_str())
}

/// Take one measurement of `metric` for `run`. Never fails: a query error is an `Error`
/// measurement carrying the error.
pub async fn measure(
    monitor: &dyn Monitor,
    run: &str,
    metric: &MetricCheck,
    subject: &Subject<'_>,
    now: Timestamp,
) -> Measurement {
    let (value, outcome, detail) = match &metric.kind {
        MetricKind::Threshold {
            query,
            success,
            failure,
        } => {
            let q = MetricQuery::new(subject.service.clone(), render(query, subject))
                .for_revision(subject.revision.clone());
            match monitor.latest(&q).await {
                Err(e) => (
                    None,
                    MeasurementOutcome::Error,
                    format!("query failed: {}", e.chain()),
                ),
                Ok(None) => (
                    None,
                    MeasurementOutcome::Error,
                    "no data (empty, NaN or infinite)".to_string(),
                ),
                Ok(Some(v)) => {
                    let (outcome, detail) = if failure.is_some_and(|f| f.holds(v)) {
                        (
                            MeasurementOutcome::Failed,
                            format!(
                                "{v} meets the failure condition {}",
                                failure.map_or(String::new(), |f| f.to_string())
                            ),
                        )
                    } else if success.holds(v) {
                        (MeasurementOutcome::Successful, format!("{v} {success}"))
                    } else if failure.is_some() {
                        (
                            MeasurementOutcome::Inconclusive,
                            format!("{v} is neither {success} nor failing"),
                        )
                    } else {
                        (MeasurementOutcome::Failed, format!("{v} is not {success}"))
                    };
                    (Some(v), outcome, detail)
                }
            }
        }
        MetricKind::Judgement(spec) => judge(monitor, spec, subject).await,
    };
    Measurement {
        run: run.to_string(),
        metric: metric.name.clone(),
        at: now,
        value,
        outcome,
        detail,
    }
}

/// Kayenta's classification of one judged metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Pass,
    High,
    Low,
    NoData,
}

async fn samples(monitor: &dyn Monitor, query: MetricQuery) -> Vec<f64> {
    match monitor.query(&query).await {
        Ok(s) => s
            .into_iter()
            .map(|s| s.value)
            .filter(|v| v.is_finite())
            .collect(),
        Err(_) => Vec::new(),
    }
}

async fn judge(
    monitor: &dyn Monitor,
    spec: &JudgementSpec,
    subject: &Subject<'_>,
) -> (Option<f64>, MeasurementOutcome, String) {
    let Some(baseline) = subject.baseline else {
        return (
            None,
            MeasurementOutcome::Error,
            "no baseline revision to compare with".into(),
        );
    };
    let (mut total, mut passed, mut nodata) = (0.0, 0.0, 0.0);
    let mut critical_failed = None;
    let mut table = Vec::new();
    for m in &spec.metrics {
        total += m.weight;
        let query = |rev: &RevisionId| {
            let s = Subject {
                revision: rev,
                ..*subject
            };
            MetricQuery::new(subject.service.clone(), render(&m.query, &s))
                .for_revision(rev.clone())
                .over(spec.range)
        };
        let canary = samples(monitor, query(subject.revision)).await;
        let base = samples(monitor, query(baseline)).await;
        let class = match mann_whitney(&canary, &base) {
            Some(r) if canary.len() >= 3 && base.len() >= 3 => {
                if r.p < 1.0 - spec.confidence {
                    let (mc, mb) = (median(&canary), median(&base));
                    if mc > mb { Class::High } else { Class::Low }
                } else {
                    Class::Pass
                }
            }
            _ => Class::NoData,
        };
        let bad = matches!(
            (class, m.bad),
            (Class::High, BadDirection::Increase | BadDirection::Either)
                | (Class::Low, BadDirection::Decrease | BadDirection::Either)
        );
        match class {
            Class::NoData => nodata += m.weight,
            _ if bad => {
                if m.critical && critical_failed.is_none() {
                    critical_failed = Some(m.name.clone());
                }
            }
            _ => passed += m.weight,
        }
        table.push(format!(
            "{}: {}",
            m.name,
            match (class, bad) {
                (Class::NoData, _) => "no data".to_string(),
                (Class::Pass, _) => "pass".to_string(),
                (c, true) => format!("{} (fail)", if c == Class::High { "high" } else { "low" }),
                (c, false) => format!(
                    "{} (allowed)",
                    if c == Class::High { "high" } else { "low" }
                ),
            }
        ));
    }
    let with_data = total - nodata;
    let score = if with_data > 0.0 {
        passed / with_data * 100.0
    } else {
        0.0
    };
    let detail = format!("score {score:.0}: {}", table.join(", "));
    if let Some(name) = critical_failed {
        return (
            Some(score),
            MeasurementOutcome::Failed,
            format!("critical metric {name} failed; {detail}"),
        );
    }
    if nodata * 2.0 >= total {
        return (
            None,
            MeasurementOutcome::Error,
            format!("no data for half the weight or more; {detail}"),
        );
    }
    let outcome = if score >= spec.pass_score {
        MeasurementOutcome::Successful
    } else if score >= spec.marginal_score {
        MeasurementOutcome::Inconclusive
    } else {
        MeasurementOutcome::Failed
    };
    (Some(score), outcome, detail)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}
