//! Analysis: metric checks against a [`Monitor`], Argo Rollouts' measurement semantics, and a
//! built-in statistical canary judgement (Mann-Whitney U per metric, weighted score).
//!
//! A *run* (one analysis step, or the background analysis) takes measurements of each of its
//! metrics. Each measurement is journaled, so an interrupted run resumes where it stopped, and
//! [`evaluate`] folds them into the run's status.
//!
//! Missing evidence is never a pass, and never by itself a failure:
//!
//! - A run measures the traffic it judges only once that traffic has had time to arrive: the
//!   first measurement is due one interval (or [`SETTLE_WITHOUT_INTERVAL`] for a metric without
//!   one) after the traffic split last changed.
//! - *No data* — an empty result, NaN, ±infinity, or fewer samples than the metric's
//!   [`MinSamples`] — is a [`MeasurementOutcome::NoData`] measurement: typically a canary that
//!   has received no traffic. More than `consecutive_error_limit` of them in a row make the run
//!   *inconclusive*, which holds the rollout for a human (gate `analysis:<run>`), as Argo
//!   Rollouts does with an inconclusive run.
//! - A *failed query* is an [`MeasurementOutcome::Error`]; more than `consecutive_error_limit`
//!   in a row, all errors, fail the run (a monitor that cannot answer proves nothing).
//! - In a statistical judgement, NaN and ±infinity samples are missing data, not dropped: a
//!   metric with half or more of a revision's samples missing has no data, and no data for half
//!   the weight or more fails the judgement (Kayenta's rule) — unless the canary (or the
//!   baseline) has no finite sample at all, which is no data (nothing has been served yet).

mod mann_whitney;

use std::time::Duration;

pub use mann_whitney::{MannWhitney, mann_whitney};

// The spec and result types are plain data of the domain model; they are re-exported here,
// beside the logic that evaluates them, under their historical paths.
pub use crate::model::{
    AnalysisSpec, BadDirection, Comparison, Condition, JudgedMetric, JudgementSpec,
    MAX_MEASUREMENTS, Measurement, MeasurementOutcome, MetricCheck, MetricCheckBuilderWithKind,
    MetricKind, MinSamples, format_value,
};
use crate::model::{EnvironmentName, RevisionId, ServiceId};
use crate::monitor::{MetricQuery, Monitor, MonitorExt};
use crate::time::Timestamp;

/// How long after the traffic it judges a metric without an interval is first measured, and
/// how long after a measurement without data (or a failed query) it is measured again. Argo
/// Rollouts retries such measurements after 10 s too.
pub const SETTLE_WITHOUT_INTERVAL: Duration = Duration::from_secs(10);

/// The fewest finite samples per revision a judged metric needs for its Mann-Whitney test.
const MIN_JUDGED_SAMPLES: usize = 3;

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
    /// A metric exceeded its failure limit, or its query failed too often in a row.
    Failed {
        /// Which and why.
        reason: String,
    },
    /// A metric exceeded its inconclusive limit, or had no data too often in a row: a human
    /// decides. `due` lists the metrics to measure now, for a run that goes on once a human
    /// accepted the inconclusive result (the background analysis).
    Inconclusive {
        /// Which and why.
        reason: String,
        /// Indexes into the spec's metrics.
        due: Vec<usize>,
    },
}

/// Folds the measurements of `run` into its status at `now`. `traffic_at` is when the traffic
/// the run judges was applied (the last change of the traffic split): no metric is due before
/// one interval after it ([`SETTLE_WITHOUT_INTERVAL`] for a metric without an interval).
pub fn evaluate(
    spec: &AnalysisSpec,
    run: &str,
    measurements: &[Measurement],
    traffic_at: Timestamp,
    now: Timestamp,
) -> RunStatus {
    let mut due = Vec::new();
    let mut all_done = true;
    let mut inconclusive = None;
    for (i, metric) in spec.metrics.iter().enumerate() {
        let taken: Vec<&Measurement> = measurements
            .iter()
            .filter(|m| m.run == run && m.metric == metric.name)
            .collect();
        let count = |o: MeasurementOutcome| taken.iter().filter(|m| m.outcome == o).count() as u32;
        let last_of = |o: MeasurementOutcome| {
            taken
                .iter()
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
        // The latest measurements without data, in a row.
        let streak: Vec<&&Measurement> = taken
            .iter()
            .rev()
            .take_while(|m| !m.outcome.has_data())
            .collect();
        let in_a_row = streak.len() as u32;
        if in_a_row > metric.consecutive_error_limit {
            let detail = streak.first().map_or(String::new(), |m| m.detail.clone());
            if streak
                .iter()
                .all(|m| m.outcome == MeasurementOutcome::Error)
            {
                return RunStatus::Failed {
                    reason: format!(
                        "analysis {run}: metric {} could not be measured {in_a_row} times in a \
                         row, limit {}: {detail}",
                        metric.name, metric.consecutive_error_limit
                    ),
                };
            }
            let detail = streak
                .iter()
                .find(|m| m.outcome == MeasurementOutcome::NoData)
                .map_or(detail, |m| m.detail.clone());
            inconclusive.get_or_insert_with(|| {
                format!(
                    "analysis {run}: metric {} had no data {in_a_row} times in a row, limit {}, \
                     so it cannot judge: {detail}",
                    metric.name, metric.consecutive_error_limit
                )
            });
        }
        let inconclusives = count(MeasurementOutcome::Inconclusive);
        if inconclusives > metric.inconclusive_limit {
            inconclusive.get_or_insert_with(|| {
                format!(
                    "analysis {run}: metric {} inconclusive {inconclusives} time(s), limit {}: {}",
                    metric.name,
                    metric.inconclusive_limit,
                    last_of(MeasurementOutcome::Inconclusive)
                )
            });
        }
        let with_data = taken.iter().filter(|m| m.outcome.has_data()).count() as u32;
        let done = metric.target_count().is_some_and(|n| with_data >= n);
        all_done &= done;
        if !done && now >= next_measurement(metric, taken.last().copied(), traffic_at) {
            due.push(i);
        }
    }
    if let Some(reason) = inconclusive {
        return RunStatus::Inconclusive { reason, due };
    }
    if all_done {
        RunStatus::Successful
    } else {
        RunStatus::Running { due }
    }
}

/// When `metric` is next due: one interval after its last measurement (at once after a
/// measurement with data for a metric without an interval, [`SETTLE_WITHOUT_INTERVAL`] after
/// one without), and never before the traffic it judges has had one interval to arrive.
fn next_measurement(
    metric: &MetricCheck,
    last: Option<&Measurement>,
    traffic_at: Timestamp,
) -> Timestamp {
    let settled = traffic_at.plus(metric.interval.unwrap_or(SETTLE_WITHOUT_INTERVAL));
    let after_last = match (last, metric.interval) {
        (None, _) => settled,
        (Some(last), Some(interval)) => last.at.plus(interval),
        (Some(last), None) if last.outcome.has_data() => last.at,
        (Some(last), None) => last.at.plus(SETTLE_WITHOUT_INTERVAL),
    };
    after_last.max(settled)
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
/// measurement carrying the error, and nothing to judge is a `NoData` one saying why.
pub async fn measure(
    monitor: &dyn Monitor,
    run: &str,
    metric: &MetricCheck,
    subject: &Subject<'_>,
    now: Timestamp,
) -> Measurement {
    let (value, outcome, detail) = match enough_samples(monitor, metric, subject).await {
        Some(missing) => missing,
        None => match &metric.kind {
            MetricKind::Threshold {
                query,
                success,
                failure,
            } => {
                let unit = metric.unit.as_deref();
                threshold(monitor, query, (*success, *failure), unit, subject).await
            }
            MetricKind::Judgement(spec) => judge(monitor, spec, subject).await,
        },
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

type Judged = (Option<f64>, MeasurementOutcome, String);

fn no_data(detail: String) -> Judged {
    (None, MeasurementOutcome::NoData, detail)
}

/// `None` if the revision under test has the samples `metric.min_samples` asks for (or it asks
/// for none); otherwise the measurement that says why not.
async fn enough_samples(
    monitor: &dyn Monitor,
    metric: &MetricCheck,
    subject: &Subject<'_>,
) -> Option<Judged> {
    let min = metric.min_samples.as_ref()?;
    let expr = render(&min.query, subject);
    let q = MetricQuery::new(subject.service.clone(), expr.clone())
        .for_revision(subject.revision.clone());
    Some(match monitor.latest(&q).await {
        Err(e) => (
            None,
            MeasurementOutcome::Error,
            format!("sample count query {expr} failed: {}", e.chain()),
        ),
        Ok(None) => no_data(format!(
            "the canary has received no traffic ({expr} has no data, need {})",
            min.count
        )),
        Ok(Some(n)) if n < 1.0 => no_data(format!(
            "the canary has received no traffic ({expr} = {n}, need {})",
            min.count
        )),
        Ok(Some(n)) if n < min.count as f64 => no_data(format!(
            "too little traffic to judge yet: {expr} = {n}, need {}",
            min.count
        )),
        Ok(Some(_)) => return None,
    })
}

async fn threshold(
    monitor: &dyn Monitor,
    query: &str,
    (success, failure): (Condition, Option<Condition>),
    unit: Option<&str>,
    subject: &Subject<'_>,
) -> Judged {
    let q = MetricQuery::new(subject.service.clone(), render(query, subject))
        .for_revision(subject.revision.clone());
    match monitor.latest(&q).await {
        Err(e) => (
            None,
            MeasurementOutcome::Error,
            format!("query failed: {}", e.chain()),
        ),
        Ok(None) => no_data(
            "no data: the canary has received no traffic yet, or too little to measure".to_string(),
        ),
        Ok(Some(v)) => {
            let shown = format_value(v, unit);
            let ok = success.describe(unit);
            let (outcome, detail) = if let Some(f) = failure.filter(|f| f.holds(v)) {
                (
                    MeasurementOutcome::Failed,
                    format!("{shown} meets the failure condition {}", f.describe(unit)),
                )
            } else if success.holds(v) {
                (MeasurementOutcome::Successful, format!("{shown} {ok}"))
            } else if failure.is_some() {
                (
                    MeasurementOutcome::Inconclusive,
                    format!("{shown} is neither {ok} nor failing"),
                )
            } else {
                (MeasurementOutcome::Failed, format!("{shown} is not {ok}"))
            };
            (Some(v), outcome, detail)
        }
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

/// One revision's samples of a judged metric: the finite values, and how many were missing
/// (NaN or ±infinity; `infinite` of them ±infinity).
struct Series {
    finite: Vec<f64>,
    missing: usize,
    infinite: usize,
    failed: Option<String>,
}

/// Why a judged metric cannot be compared.
enum Unusable {
    /// Half or more of a revision's samples are NaN or ±infinity: data that should be there is
    /// not, which counts against the canary.
    Missing(String),
    /// Too few samples yet: wait for more.
    TooFew(String),
}

impl Series {
    async fn of(monitor: &dyn Monitor, query: MetricQuery) -> Series {
        match monitor.query(&query).await {
            Ok(samples) => {
                let total = samples.len();
                let infinite = samples.iter().filter(|s| s.value.is_infinite()).count();
                let finite: Vec<f64> = samples
                    .into_iter()
                    .map(|s| s.value)
                    .filter(|v| v.is_finite())
                    .collect();
                Series {
                    missing: total - finite.len(),
                    infinite,
                    finite,
                    failed: None,
                }
            }
            Err(e) => Series {
                finite: Vec::new(),
                missing: 0,
                infinite: 0,
                failed: Some(format!("{}: {}", query.expr, e.chain())),
            },
        }
    }

    /// Whether the revision served nothing measurable: no sample, or only NaN (0/0 — no
    /// requests). A ±infinite sample is a measurement of something.
    fn served_nothing(&self) -> bool {
        self.finite.is_empty() && self.infinite == 0
    }

    /// Why this series cannot be judged, if it cannot.
    fn unusable(&self, side: &str) -> Option<Unusable> {
        let total = self.finite.len() + self.missing;
        if total >= MIN_JUDGED_SAMPLES && self.missing * 2 >= total {
            Some(Unusable::Missing(format!(
                "{} of {total} {side} samples missing (not a number, or infinite)",
                self.missing
            )))
        } else if self.finite.len() < MIN_JUDGED_SAMPLES {
            Some(Unusable::TooFew(format!(
                "{} {side} sample(s), need {MIN_JUDGED_SAMPLES}",
                self.finite.len()
            )))
        } else {
            None
        }
    }
}

async fn judge(monitor: &dyn Monitor, spec: &JudgementSpec, subject: &Subject<'_>) -> Judged {
    let Some(baseline) = subject.baseline else {
        return (
            None,
            MeasurementOutcome::Error,
            "no baseline revision to compare with".into(),
        );
    };
    let mut series = Vec::new();
    for m in &spec.metrics {
        let query = |rev: &RevisionId| {
            let s = Subject {
                revision: rev,
                ..*subject
            };
            MetricQuery::new(subject.service.clone(), render(&m.query, &s))
                .for_revision(rev.clone())
                .over(spec.range)
        };
        let canary = Series::of(monitor, query(subject.revision)).await;
        let base = Series::of(monitor, query(baseline)).await;
        series.push((m, canary, base));
    }
    if let Some(e) = series
        .iter()
        .find_map(|(_, c, b)| c.failed.as_ref().or(b.failed.as_ref()))
    {
        return (
            None,
            MeasurementOutcome::Error,
            format!("query failed: {e}"),
        );
    }
    // Nothing served yet (no sample, or only NaN, for every metric) is no data, not missing
    // data.
    if series.iter().all(|(_, c, _)| c.served_nothing()) {
        return no_data(
            "no data: the canary has received no traffic yet (no sample, or none with a value, for any \
             judged metric)"
                .into(),
        );
    }
    if series.iter().all(|(_, _, b)| b.served_nothing()) {
        return no_data(
            "no data for the baseline (no sample, or none with a value, for any judged metric)"
                .into(),
        );
    }
    let (mut total, mut passed, mut missing, mut too_few) = (0.0, 0.0, 0.0, 0.0);
    let mut critical_failed = None;
    let mut table = Vec::new();
    for (m, canary, base) in &series {
        total += m.weight;
        let unusable = canary
            .unusable("canary")
            .or_else(|| base.unusable("baseline"));
        match &unusable {
            Some(Unusable::Missing(_)) => missing += m.weight,
            Some(Unusable::TooFew(_)) => too_few += m.weight,
            None => {}
        }
        let class = match (&unusable, mann_whitney(&canary.finite, &base.finite)) {
            (None, Some(r)) => {
                if r.p < 1.0 - spec.confidence {
                    let (mc, mb) = (median(&canary.finite), median(&base.finite));
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
            Class::NoData => {}
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
                (Class::NoData, _) => match unusable {
                    Some(Unusable::Missing(why) | Unusable::TooFew(why)) => why,
                    None => "no data".to_string(),
                },
                (Class::Pass, _) => "pass".to_string(),
                (c, true) => format!("{} (fail)", if c == Class::High { "high" } else { "low" }),
                (c, false) => format!(
                    "{} (allowed)",
                    if c == Class::High { "high" } else { "low" }
                ),
            }
        ));
    }
    let with_data = total - missing - too_few;
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
    // Data was served, but too much of it is missing: Kayenta fails the canary.
    if missing * 2.0 >= total {
        return (
            None,
            MeasurementOutcome::Failed,
            format!("too much missing data (half the weight or more); {detail}"),
        );
    }
    if (missing + too_few) * 2.0 >= total {
        return no_data(format!(
            "too few samples to judge yet (half the weight or more); {detail}"
        ));
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use async_trait::async_trait;

    use super::*;
    use crate::environment::InstanceObservation;
    use crate::error::Result;
    use crate::monitor::Sample;

    const T0: Timestamp = Timestamp::from_millis(1_000_000);

    fn at(secs: u64) -> Timestamp {
        T0.plus(Duration::from_secs(secs))
    }

    fn check(interval: Option<u64>, count: Option<u32>) -> MetricCheck {
        let mut m = MetricCheck::threshold("m", "q", Condition::below(1.0))
            .build()
            .expect("metric");
        m.interval = interval.map(Duration::from_secs);
        m.count = count;
        m
    }

    fn taken(secs: u64, outcome: MeasurementOutcome) -> Measurement {
        Measurement {
            run: "r".into(),
            metric: "m".into(),
            at: at(secs),
            value: None,
            outcome,
            detail: format!("{outcome:?}"),
        }
    }

    fn status(metric: MetricCheck, ms: &[Measurement], traffic: u64, now: u64) -> RunStatus {
        let spec = AnalysisSpec::new(vec![metric]).expect("spec");
        evaluate(&spec, "r", ms, at(traffic), at(now))
    }

    #[test]
    fn nothing_is_measured_before_the_traffic_had_one_interval() {
        use MeasurementOutcome::*;
        let due = RunStatus::Running { due: vec![0] };
        let idle = RunStatus::Running { due: vec![] };
        // With an interval: one interval after the traffic, then one after each measurement,
        // and again one interval after the traffic changes.
        assert_eq!(status(check(Some(30), None), &[], 0, 29), idle);
        assert_eq!(status(check(Some(30), None), &[], 0, 30), due);
        let one = [taken(30, Successful)];
        assert_eq!(status(check(Some(30), None), &one, 0, 59), idle);
        assert_eq!(status(check(Some(30), None), &one, 0, 60), due);
        assert_eq!(status(check(Some(30), None), &one, 50, 60), idle);
        assert_eq!(status(check(Some(30), None), &one, 50, 80), due);
        // Without one: SETTLE_WITHOUT_INTERVAL after the traffic, then `count` at once, and a
        // measurement without data retried after SETTLE_WITHOUT_INTERVAL.
        assert_eq!(status(check(None, Some(2)), &[], 0, 9), idle);
        assert_eq!(status(check(None, Some(2)), &[], 0, 10), due);
        assert_eq!(
            status(check(None, Some(2)), &[taken(10, Successful)], 0, 10),
            due
        );
        let none = [taken(10, NoData)];
        assert_eq!(status(check(None, Some(2)), &none, 0, 19), idle);
        assert_eq!(status(check(None, Some(2)), &none, 0, 20), due);
    }

    #[test]
    fn no_data_in_a_row_is_inconclusive_and_failed_queries_in_a_row_fail() {
        use MeasurementOutcome::*;
        let metric = || check(Some(10), None);
        let run = |outcomes: &[MeasurementOutcome]| {
            let ms: Vec<_> = outcomes
                .iter()
                .enumerate()
                .map(|(i, o)| taken(10 * (i as u64 + 1), *o))
                .collect();
            status(metric(), &ms, 0, 10 * (outcomes.len() as u64 + 1))
        };
        // Within the limit (4): still running, and due.
        assert_eq!(run(&[NoData; 4]), RunStatus::Running { due: vec![0] });
        // One more: inconclusive, naming the cause, and still measuring for who accepts it.
        let RunStatus::Inconclusive { reason, due } = run(&[NoData; 5]) else {
            panic!("{:?}", run(&[NoData; 5]))
        };
        assert!(
            reason.contains("had no data 5 times in a row, limit 4, so it cannot judge: NoData"),
            "{reason}"
        );
        assert_eq!(due, vec![0]);
        // Mixed with failed queries: still no data, not a failure.
        assert!(matches!(
            run(&[Error, NoData, Error, Error, Error]),
            RunStatus::Inconclusive { .. }
        ));
        // Only failed queries: the monitor cannot answer, which fails.
        let RunStatus::Failed { reason } = run(&[Error; 5]) else {
            panic!("{:?}", run(&[Error; 5]))
        };
        assert!(
            reason.contains("could not be measured 5 times in a row, limit 4"),
            "{reason}"
        );
        // A value in between resets the streak; no data never counts toward `count`.
        assert_eq!(
            run(&[NoData, NoData, NoData, Successful, NoData, NoData]),
            RunStatus::Running { due: vec![0] }
        );
        let counted = vec![taken(10, NoData), taken(20, Successful)];
        assert_eq!(
            status(check(Some(10), Some(2)), &counted, 0, 30),
            RunStatus::Running { due: vec![0] }
        );
    }

    /// A monitor answering fixed samples per (revision, expression).
    #[derive(Debug, Default)]
    struct Fixed(HashMap<(String, String), Vec<f64>>);

    impl Fixed {
        fn with(mut self, rev: &RevisionId, expr: &str, values: Vec<f64>) -> Self {
            self.0
                .insert((rev.as_str().to_string(), expr.to_string()), values);
            self
        }
    }

    #[async_trait]
    impl Monitor for Fixed {
        async fn instance_health(
            &self,
            _: &ServiceId,
            _: &RevisionId,
        ) -> Result<Vec<InstanceObservation>> {
            Ok(Vec::new())
        }

        async fn query(&self, q: &MetricQuery) -> Result<Vec<Sample>> {
            let rev = q.revision.as_ref().map_or("", |r| r.as_str()).to_string();
            let values = self.0.get(&(rev, q.expr.clone())).cloned();
            Ok(values
                .unwrap_or_default()
                .into_iter()
                .map(|value| Sample { at: T0, value })
                .collect())
        }
    }

    struct Revisions {
        service: ServiceId,
        environment: EnvironmentName,
        canary: RevisionId,
        baseline: RevisionId,
    }

    impl Revisions {
        fn new() -> Self {
            Revisions {
                service: ServiceId::new("web").expect("service"),
                environment: EnvironmentName::new("production").expect("environment"),
                canary: RevisionId::parse("00000000000000c2").expect("canary"),
                baseline: RevisionId::parse("00000000000000b1").expect("baseline"),
            }
        }

        async fn measure(&self, monitor: &Fixed, metric: &MetricCheck) -> Measurement {
            let subject = Subject {
                service: &self.service,
                environment: &self.environment,
                revision: &self.canary,
                baseline: Some(&self.baseline),
            };
            measure(monitor, "r", metric, &subject, T0).await
        }
    }

    fn p99_judgement() -> MetricCheck {
        let spec = JudgementSpec::builder()
            .metrics(vec![
                JudgedMetric::builder().name("p99").query("p99").build(),
            ])
            .build();
        MetricCheck::judgement("judgement", spec)
            .build()
            .expect("metric")
    }

    fn baseline() -> Vec<f64> {
        (0..20).map(|i| 0.2 + f64::from(i % 5) * 0.001).collect()
    }

    #[tokio::test]
    async fn non_finite_samples_are_missing_data_in_a_judgement() {
        let r = Revisions::new();
        let judged = |canary: Vec<f64>| {
            Fixed::default()
                .with(&r.baseline, "p99", baseline())
                .with(&r.canary, "p99", canary)
        };
        // 17 of 20 +Inf: missing data for all the weight fails (it passed with score 100).
        let mut mostly_inf = vec![f64::INFINITY; 17];
        mostly_inf.extend([0.201, 0.202, 0.203]);
        let m = r.measure(&judged(mostly_inf), &p99_judgement()).await;
        assert_eq!(m.outcome, MeasurementOutcome::Failed, "{m:?}");
        assert!(
            m.detail.contains("too much missing data")
                && m.detail
                    .contains("p99: 17 of 20 canary samples missing (not a number, or infinite)"),
            "{m:?}"
        );
        // All +Inf is a measurement of something too: it fails.
        let m = r
            .measure(&judged(vec![f64::INFINITY; 20]), &p99_judgement())
            .await;
        assert_eq!(m.outcome, MeasurementOutcome::Failed, "{m:?}");
        // Only NaN, or nothing: no traffic yet, no data.
        for idle in [vec![f64::NAN; 20], vec![]] {
            let m = r.measure(&judged(idle), &p99_judgement()).await;
            assert_eq!(m.outcome, MeasurementOutcome::NoData, "{m:?}");
            assert!(
                m.detail.contains("the canary has received no traffic"),
                "{m:?}"
            );
        }
        // Two good samples and no missing ones: too few yet, no data (not a failure).
        let m = r
            .measure(&judged(vec![0.201, 0.202]), &p99_judgement())
            .await;
        assert_eq!(m.outcome, MeasurementOutcome::NoData, "{m:?}");
        assert!(m.detail.contains("2 canary sample(s), need 3"), "{m:?}");
        // A few missing among many: judged on the rest.
        let mut some_nan = baseline();
        some_nan[3] = f64::NAN;
        some_nan[7] = f64::INFINITY;
        let m = r.measure(&judged(some_nan), &p99_judgement()).await;
        assert_eq!(m.outcome, MeasurementOutcome::Successful, "{m:?}");
    }

    #[tokio::test]
    async fn a_minimum_sample_count_comes_before_the_value() {
        let r = Revisions::new();
        let mut metric = MetricCheck::threshold("error-rate", "error_rate", Condition::below(0.05))
            .min_samples(MinSamples::new("requests", 20))
            .build()
            .expect("metric");
        let monitor = |requests: Option<f64>| {
            let m = Fixed::default().with(&r.canary, "error_rate", vec![0.5]);
            match requests {
                Some(n) => m.with(&r.canary, "requests", vec![n]),
                None => m,
            }
        };
        for (requests, detail) in [
            (
                None,
                "the canary has received no traffic (requests has no data, need 20)",
            ),
            (
                Some(0.0),
                "the canary has received no traffic (requests = 0, need 20)",
            ),
            (
                Some(19.0),
                "too little traffic to judge yet: requests = 19, need 20",
            ),
        ] {
            let m = r.measure(&monitor(requests), &metric).await;
            assert_eq!(m.outcome, MeasurementOutcome::NoData, "{m:?}");
            assert_eq!(m.detail, detail);
        }
        let m = r.measure(&monitor(Some(20.0)), &metric).await;
        assert_eq!(m.outcome, MeasurementOutcome::Failed, "{m:?}");
        // The same gate before a judgement.
        metric = p99_judgement();
        metric.min_samples = Some(MinSamples::new("requests", 20));
        let few = Fixed::default()
            .with(&r.baseline, "p99", baseline())
            .with(&r.canary, "p99", baseline())
            .with(&r.canary, "requests", vec![5.0]);
        let m = r.measure(&few, &metric).await;
        assert_eq!(m.outcome, MeasurementOutcome::NoData, "{m:?}");
    }
}
