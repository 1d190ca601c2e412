//! Log-based metrics as a [`Monitor`]: a canary analysis or an alert rule can be judged on
//! `log_count{level="error"}[1m]` per revision, read from any [`LogSource`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deploykit_core::{
    Clock, Error, InstanceObservation, MetricQuery, Monitor, Result, RevisionId, Sample, ServiceId,
};

use crate::query::MetricExpr;
use crate::source::{LogSelector, LogSource};

/// The window of a log metric that names none and is asked as an instant query.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// A [`Monitor`] whose queries in the log query language (see [`crate::query`]) are answered
/// from a [`LogSource`]; other queries, and instance health, go to the monitor it wraps.
///
/// A query is scoped to its [`MetricQuery::service`] and, when set, its revision; its window
/// is the query's own range (`[1m]`), else the [`MetricQuery::range`], else
/// [`DEFAULT_WINDOW`], ending now. The answer is one sample, now: the count (or rate) of the
/// matching records, summed over `by` groups. No record is a value of 0, not "no data": a
/// revision that logs no errors passes `log_count{level="error"}[1m] < 1`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> deploykit_core::Result<()> {
/// use std::sync::Arc;
/// use deploykit_core::{MetricQuery, MonitorExt, RevisionId, ServiceId, SystemClock};
/// use deploykit_logs::{LogMonitor, LogSelector, LogSource, LogStream, Record, Source, Stream};
///
/// struct Fixed;
/// #[async_trait::async_trait]
/// impl LogSource for Fixed {
///     async fn logs(&self, _: &LogSelector) -> deploykit_core::Result<LogStream> {
///         let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
///         let source = Source::new("api", "prod", "00000000000000a2", "api-1");
///         let line = |text: &str| Record::new(source.clone(), Stream::Stdout, now.as_nanos() as i64, text);
///         Ok(LogStream::from_records(vec![
///             line(r#"{"level":"error","msg":"db timeout"}"#),
///             line(r#"{"level":"info","msg":"ok"}"#),
///         ]))
///     }
/// }
///
/// let monitor = LogMonitor::new(Arc::new(Fixed), Arc::new(SystemClock));
/// let query = MetricQuery::new(ServiceId::new("api")?, r#"log_count{level="error"}[1m]"#)
///     .for_revision(RevisionId::parse("00000000000000a2")?);
/// assert_eq!(monitor.latest(&query).await?, Some(1.0));
/// # Ok(()) }
/// ```
pub struct LogMonitor {
    source: Arc<dyn LogSource>,
    clock: Arc<dyn Clock>,
    fallback: Option<Arc<dyn Monitor>>,
}

impl fmt::Debug for LogMonitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogMonitor")
            .field("fallback", &self.fallback)
            .finish_non_exhaustive()
    }
}

impl LogMonitor {
    /// Answers log queries from `source`, with windows ending at `clock`'s now.
    pub fn new(source: Arc<dyn LogSource>, clock: Arc<dyn Clock>) -> Self {
        LogMonitor {
            source,
            clock,
            fallback: None,
        }
    }

    /// Sends instance health and the queries that are not log queries to `monitor` (a
    /// Prometheus monitor, the backend's own).
    pub fn with_fallback(mut self, monitor: Arc<dyn Monitor>) -> Self {
        self.fallback = Some(monitor);
        self
    }

    fn fallback(&self, what: &str) -> Result<&Arc<dyn Monitor>> {
        self.fallback.as_ref().ok_or_else(|| {
            Error::invalid(
                "monitor",
                format!("{what}: a log monitor answers only log queries (count_over_time, rate, log_count, log_rate) unless it wraps another monitor"),
            )
        })
    }

    async fn log_query(&self, query: &MetricQuery, expr: MetricExpr) -> Result<Vec<Sample>> {
        let window = expr.range.or(query.range).unwrap_or(DEFAULT_WINDOW);
        let now = self.clock.now();
        let now_ns = i64::try_from(now.as_millis())
            .unwrap_or(i64::MAX / 1_000_000)
            .saturating_mul(1_000_000);
        let window_ns = i64::try_from(window.as_nanos()).unwrap_or(i64::MAX);
        let mut selector = LogSelector::service(query.service.as_str())
            .since_ns(now_ns.saturating_sub(window_ns))
            .until_ns(now_ns.saturating_add(1));
        let revision = query
            .revision
            .as_ref()
            .map(RevisionId::to_string)
            .or_else(|| expr.query.equal_label("revision").map(str::to_string));
        if let Some(revision) = revision {
            selector = selector.revision(revision);
        }
        if let Some(instance) = expr.query.equal_label("instance") {
            selector = selector.instance(instance);
        }
        let mut records = self.source.logs(&selector).await?.collect().await?;
        let value = expr.evaluate(records.iter_mut(), window).values().sum();
        Ok(vec![Sample { at: now, value }])
    }
}

#[async_trait]
impl Monitor for LogMonitor {
    async fn instance_health(
        &self,
        service: &ServiceId,
        revision: &RevisionId,
    ) -> Result<Vec<InstanceObservation>> {
        self.fallback(&format!("instance health of {service} {revision}"))?
            .instance_health(service, revision)
            .await
    }

    async fn query(&self, query: &MetricQuery) -> Result<Vec<Sample>> {
        match MetricExpr::parse(&query.expr) {
            Ok(expr) => self.log_query(query, expr).await,
            Err(parse_error) => match &self.fallback {
                Some(monitor) => monitor.query(query).await,
                None => Err(parse_error),
            },
        }
    }
}
