//! The [`Monitor`] contract, as deploykit's analysis relies on it: no data is an empty result
//! (never an error), a bad query is an error naming the query, NaN and ±infinity are values
//! (the analysis treats them as no data), results belong to the revision asked for, and samples
//! come oldest first, within the range asked for.
//!
//! A monitor's data comes from outside it, so the caller scripts it through a [`MetricScript`]
//! and describes what to query in a [`MonitorFixture`]; then call [`run_all`].

use std::time::Duration;

use async_trait::async_trait;
use deploykit_core::{MetricQuery, Monitor, MonitorExt, RevisionId, Sample, ServiceId, Timestamp};

/// How the caller makes the monitor under test report values.
#[async_trait]
pub trait MetricScript: Send + Sync {
    /// Make the monitor report, under one expression no earlier call returned, `value` as the
    /// newest sample of each listed revision of `service` (and nothing for any other revision);
    /// return that expression. `None` if this monitor cannot be made to report one of these
    /// values (a request-counting proxy never measures NaN): the check needing it is skipped.
    async fn script(&self, service: &ServiceId, values: &[(RevisionId, f64)]) -> Option<String>;

    /// An expression, valid in the monitor's language, whose series does not exist.
    fn absent(&self) -> String;

    /// An expression the monitor's language rejects.
    fn malformed(&self) -> String;

    /// The current time on the monitor's clock.
    fn now(&self) -> Timestamp;
}

/// What the suite queries: a service and two revisions of it.
#[derive(Clone, Debug)]
pub struct MonitorFixture {
    /// The service.
    pub service: ServiceId,
    /// One revision of it.
    pub first: RevisionId,
    /// Another revision of it.
    pub second: RevisionId,
    /// How far the monitor's sample times may be from [`MetricScript::now`] (the scripting
    /// delay plus any scrape interval).
    pub slack: Duration,
}

impl MonitorFixture {
    fn query(&self, expr: &str, revision: &RevisionId) -> MetricQuery {
        MetricQuery::new(self.service.clone(), expr).for_revision(revision.clone())
    }
}

async fn must_query(monitor: &dyn Monitor, query: &MetricQuery) -> Vec<Sample> {
    monitor.query(query).await.unwrap_or_else(|e| {
        panic!(
            "query {:?} for revision {:?}: {}",
            query.expr,
            query.revision,
            e.chain()
        )
    })
}

async fn must_latest(monitor: &dyn Monitor, query: &MetricQuery) -> Option<f64> {
    monitor.latest(query).await.unwrap_or_else(|e| {
        panic!(
            "latest {:?} for revision {:?}: {}",
            query.expr,
            query.revision,
            e.chain()
        )
    })
}

/// Run every monitor check.
pub async fn run_all(monitor: &dyn Monitor, fx: &MonitorFixture, script: &dyn MetricScript) {
    absent_series_is_no_data(monitor, fx, script).await;
    malformed_query_is_an_error_naming_it(monitor, fx, script).await;
    scripted_value_is_the_latest(monitor, fx, script).await;
    nan_and_infinity_are_values(monitor, fx, script).await;
    results_are_scoped_to_the_revision(monitor, fx, script).await;
    samples_are_ordered_and_within_the_range(monitor, fx, script).await;
}

/// A series that does not exist is no data: an empty result, for instant and range queries,
/// not an error (an error would count towards the analysis' error limit, not its no-data one).
pub async fn absent_series_is_no_data(
    monitor: &dyn Monitor,
    fx: &MonitorFixture,
    script: &dyn MetricScript,
) {
    let expr = script.absent();
    let instant = fx.query(&expr, &fx.first);
    for query in [instant.clone(), instant.over(Duration::from_secs(60))] {
        let samples = must_query(monitor, &query).await;
        assert!(
            samples.is_empty(),
            "query {expr:?} (range {:?}) of a series that does not exist must be empty, got \
             {samples:?}",
            query.range
        );
    }
}

/// A malformed query is an error whose message names the query.
pub async fn malformed_query_is_an_error_naming_it(
    monitor: &dyn Monitor,
    fx: &MonitorFixture,
    script: &dyn MetricScript,
) {
    let expr = script.malformed();
    match monitor.query(&fx.query(&expr, &fx.first)).await {
        Ok(samples) => panic!("malformed query {expr:?} must be an error, got {samples:?}"),
        Err(e) => {
            let message = e.chain();
            assert!(
                message.contains(expr.trim()),
                "the error of malformed query {expr:?} must name it, got {message:?}"
            );
        }
    }
}

/// A scripted value is the newest sample of its revision, for an instant and a range query.
pub async fn scripted_value_is_the_latest(
    monitor: &dyn Monitor,
    fx: &MonitorFixture,
    script: &dyn MetricScript,
) {
    let Some(expr) = script
        .script(&fx.service, &[(fx.first.clone(), 0.25)])
        .await
    else {
        return;
    };
    let instant = fx.query(&expr, &fx.first);
    for query in [instant.clone(), instant.over(Duration::from_secs(60))] {
        assert_eq!(
            must_latest(monitor, &query).await,
            Some(0.25),
            "query {expr:?} (range {:?}) must report the scripted value",
            query.range
        );
    }
}

/// NaN, +∞ and −∞ come back as sample values, not as errors or empty results; only
/// [`MonitorExt::latest`] (and so the analysis) turns them into no data.
pub async fn nan_and_infinity_are_values(
    monitor: &dyn Monitor,
    fx: &MonitorFixture,
    script: &dyn MetricScript,
) {
    for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let Some(expr) = script
            .script(&fx.service, &[(fx.first.clone(), value)])
            .await
        else {
            continue;
        };
        let query = fx.query(&expr, &fx.first);
        let samples = must_query(monitor, &query).await;
        let last = samples.last().map(|s| s.value);
        assert!(
            last.is_some_and(|v| v.to_bits() == value.to_bits() || (v.is_nan() && value.is_nan())),
            "query {expr:?} scripted to {value} must return it as the newest sample, got \
             {samples:?}"
        );
        assert_eq!(
            must_latest(monitor, &query).await,
            None,
            "latest of {expr:?} = {value} must be no data"
        );
    }
}

/// Each revision gets its own value under one expression, and a revision with no data gets
/// none of another's.
pub async fn results_are_scoped_to_the_revision(
    monitor: &dyn Monitor,
    fx: &MonitorFixture,
    script: &dyn MetricScript,
) {
    let values = [(fx.first.clone(), 0.5), (fx.second.clone(), 0.75)];
    if let Some(expr) = script.script(&fx.service, &values).await {
        for (revision, value) in &values {
            assert_eq!(
                must_latest(monitor, &fx.query(&expr, revision)).await,
                Some(*value),
                "query {expr:?} for revision {revision} must report that revision's value"
            );
        }
    }
    if let Some(expr) = script.script(&fx.service, &[(fx.first.clone(), 1.0)]).await {
        let samples = must_query(monitor, &fx.query(&expr, &fx.second)).await;
        assert!(
            samples.is_empty(),
            "query {expr:?} for revision {}, which has no data, must be empty, not revision \
             {}'s: got {samples:?}",
            fx.second,
            fx.first
        );
    }
}

/// Samples come oldest first, none from the future, and a range query's none from before its
/// range (allowing the fixture's slack).
pub async fn samples_are_ordered_and_within_the_range(
    monitor: &dyn Monitor,
    fx: &MonitorFixture,
    script: &dyn MetricScript,
) {
    let Some(expr) = script.script(&fx.service, &[(fx.first.clone(), 2.0)]).await else {
        return;
    };
    let range = Duration::from_secs(30);
    for query in [
        fx.query(&expr, &fx.first),
        fx.query(&expr, &fx.first).over(range),
    ] {
        let samples = must_query(monitor, &query).await;
        let now = script.now().as_millis();
        let slack = fx.slack.as_millis() as u64;
        assert!(
            !samples.is_empty(),
            "query {expr:?} (range {:?}) must return the scripted sample",
            query.range
        );
        assert!(
            samples.windows(2).all(|w| w[0].at <= w[1].at),
            "samples of {expr:?} must come oldest first, got {samples:?}"
        );
        for sample in &samples {
            let at = sample.at.as_millis();
            assert!(
                at <= now + slack,
                "sample {sample:?} of {expr:?} is from the future (now {now} ms)"
            );
            if let Some(range) = query.range {
                let oldest = now.saturating_sub(range.as_millis() as u64 + slack);
                assert!(
                    at >= oldest,
                    "sample {sample:?} of {expr:?} is older than its range {range:?} (now \
                     {now} ms)"
                );
            }
        }
    }
}
