//! A [`Monitor`] over the [Prometheus HTTP API] (feature `prometheus`): analysis queries are
//! PromQL, evaluated by a Prometheus server (or anything that speaks its API: Thanos, Mimir,
//! VictoriaMetrics, a hosted Prometheus behind a bearer token).
//!
//! # Queries
//!
//! deploykit's analysis substitutes `{{service}}`, `{{revision}}` and `{{environment}}` before
//! the monitor sees the expression, so [`MetricQuery::expr`] arrives as plain PromQL. Service
//! and environment names are DNS labels and revisions are hex, so they are safe inside PromQL
//! string literals, e.g. `{service="{{service}}",revision="{{revision}}"}`.
//!
//! - An instant query (`range: None`) is `GET /api/v1/query`, evaluated at the server's current
//!   time. A vector gives one [`Sample`] per series, in the order the server returns them; a
//!   scalar gives one sample.
//! - A ranged query (`range: Some(d)`) is `GET /api/v1/query_range` from `now - d` to `now`
//!   (this host's clock) every [`step`](PrometheusMonitorBuilder::step). The samples of every
//!   series are merged and sorted by time (samples at the same time keep the series order).
//!
//! deploykit's threshold analysis takes the *newest* value ([`MonitorExt::latest`](deploykit_core::MonitorExt::latest)), and its
//! statistical judgement takes every value, so a query should aggregate to one series, e.g.
//! `sum(rate(http_requests_total{service="web"}[1m]))`: with several series the newest value is
//! simply the last series' value.
//!
//! # Missing data and failures
//!
//! An empty result, `NaN` and `±Inf` are returned as they are (no samples, or a sample with a
//! non-finite value): [`MonitorExt::latest`](deploykit_core::MonitorExt::latest) turns them into "no data", which never passes an
//! analysis. Every failure is an `Err`, never a made-up value, and its message names the query
//! and the URL:
//!
//! - [`Error::Transient`] (worth retrying): connection errors, timeouts, HTTP 5xx (including
//!   503) and 429, and API errors of type `timeout`, `canceled` or `unavailable`;
//! - [`Error::Backend`]: a query Prometheus rejects (400 `bad_data`, 422 `execution`), other 4xx
//!   (401, 403, 404: a wrong URL or token), a body that is not a Prometheus API response (an
//!   HTML page from a proxy), a result that is not a number (`resultType` `string`) or a value
//!   that does not parse.
//!
//! [Prometheus HTTP API]: https://prometheus.io/docs/prometheus/latest/querying/api/

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::Deserialize;

use deploykit_core::environment::InstanceObservation;
use deploykit_core::model::{RevisionId, ServiceId};
use deploykit_core::monitor::{MetricQuery, Monitor, Sample};
use deploykit_core::time::{Clock, SystemClock, Timestamp};
use deploykit_core::{Error, Result};

/// The most points per series Prometheus returns from a range query; a longer range gets a
/// coarser step instead of an error.
const MAX_POINTS: u64 = 11_000;

/// How much of a non-API response body goes into an error message.
const SNIPPET_CHARS: usize = 200;

/// A [`Monitor`] that evaluates PromQL on a Prometheus server. See the [module docs](self) for
/// what queries return and how failures are reported.
///
/// ```no_run
/// use std::time::Duration;
/// use deploykit_telemetry::prometheus::PrometheusMonitor;
/// use deploykit_core::{MetricQuery, MonitorExt, ServiceId};
///
/// # async fn demo() -> deploykit_core::Result<()> {
/// let prometheus = PrometheusMonitor::builder("http://127.0.0.1:9090")
///     .timeout(Duration::from_secs(5))
///     .build()?;
/// let query = MetricQuery::new(
///     ServiceId::new("web")?,
///     r#"sum(rate(http_requests_total{service="web",status=~"5.."}[1m]))"#,
/// );
/// let errors_per_second: Option<f64> = prometheus.latest(&query).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PrometheusMonitor {
    client: reqwest::Client,
    /// The base URL, its path ending in `/`.
    base: Url,
    timeout: Duration,
    step: Duration,
    header_names: Vec<String>,
}

/// Configures a [`PrometheusMonitor`]; start with [`PrometheusMonitor::builder`].
#[derive(Clone)]
pub struct PrometheusMonitorBuilder {
    url: String,
    timeout: Duration,
    step: Duration,
    headers: Vec<(String, String)>,
}

impl PrometheusMonitor {
    /// A monitor for the Prometheus at `base_url` with the defaults (10 s timeout, 15 s step).
    pub fn new(base_url: &str) -> Result<Self> {
        Self::builder(base_url).build()
    }

    /// A builder for the Prometheus at `base_url`, e.g. `http://127.0.0.1:9090` or, behind a
    /// path prefix, `https://metrics.example/prometheus` (the API is under `<base>/api/v1/`).
    pub fn builder(base_url: impl Into<String>) -> PrometheusMonitorBuilder {
        PrometheusMonitorBuilder {
            url: base_url.into(),
            timeout: Duration::from_secs(10),
            step: Duration::from_secs(15),
            headers: Vec::new(),
        }
    }
}

impl PrometheusMonitorBuilder {
    /// Time limit of one query, connecting included (default 10 s). Prometheus is asked to
    /// give up after the same time.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Resolution of ranged queries (default 15 s). A range longer than 11,000 steps is
    /// queried with a coarser step, Prometheus' limit.
    pub fn step(mut self, step: Duration) -> Self {
        self.step = step;
        self
    }

    /// Send this header with every request, e.g. `X-Scope-OrgID` for a multi-tenant backend.
    /// Header values are never printed.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Authenticate with `Authorization: Bearer <token>` (a hosted Prometheus).
    pub fn bearer_token(self, token: impl AsRef<str>) -> Self {
        let value = format!("Bearer {}", token.as_ref());
        self.header(AUTHORIZATION.as_str(), value)
    }

    /// The monitor; [`Error::InvalidSpec`] for a URL that is not http(s), a zero timeout or
    /// step, or a header that is not valid HTTP.
    pub fn build(self) -> Result<PrometheusMonitor> {
        let mut base = Url::parse(&self.url)
            .map_err(|e| Error::invalid("prometheus.url", format!("not a URL: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(Error::invalid(
                "prometheus.url",
                format!("{:?} is not an http or https URL", redact(&base)),
            ));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        base.set_query(None);
        base.set_fragment(None);
        if self.timeout.is_zero() {
            return Err(Error::invalid("prometheus.timeout", "must be more than 0"));
        }
        if self.step < Duration::from_millis(1) {
            return Err(Error::invalid("prometheus.step", "must be at least 1 ms"));
        }
        let mut headers = HeaderMap::new();
        let mut header_names = Vec::new();
        for (name, value) in &self.headers {
            let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                Error::invalid(
                    "prometheus.headers",
                    format!("{name:?} is not a header name"),
                )
            })?;
            let mut value = HeaderValue::from_str(value).map_err(|_| {
                Error::invalid(
                    format!("prometheus.headers.{name}"),
                    "the value is not a valid header value",
                )
            })?;
            value.set_sensitive(true);
            header_names.push(header.as_str().to_string());
            headers.append(header, value);
        }
        let client = reqwest::Client::builder()
            .timeout(self.timeout)
            .default_headers(headers)
            .build()
            .map_err(|e| Error::Backend {
                operation: "build Prometheus client".into(),
                source: Box::new(e),
            })?;
        Ok(PrometheusMonitor {
            client,
            base,
            timeout: self.timeout,
            step: self.step,
            header_names,
        })
    }
}

impl fmt::Debug for PrometheusMonitorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrometheusMonitorBuilder")
            .field(
                "url",
                &Url::parse(&self.url).map_or_else(|_| "<invalid>".into(), |u| redact(&u)),
            )
            .field("timeout", &self.timeout)
            .field("step", &self.step)
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl fmt::Debug for PrometheusMonitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrometheusMonitor")
            .field("base", &redact(&self.base))
            .field("timeout", &self.timeout)
            .field("step", &self.step)
            .field("headers", &self.header_names)
            .finish()
    }
}

/// `url` without credentials.
fn redact(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

/// Seconds since the epoch with millisecond precision, as Prometheus takes times.
fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// The start of `body`, on one line, for an error message.
fn snippet(body: &str) -> String {
    let flat = body.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(SNIPPET_CHARS) {
        Some((cut, _)) => format!("{}...", &flat[..cut]),
        None if flat.is_empty() => "(empty body)".to_string(),
        None => flat,
    }
}

/// The envelope of every API response; lenient, so unknown fields and error types parse.
#[derive(Deserialize)]
struct ApiResponse {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    data: Option<ApiData>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    warnings: Vec<String>,
}

#[derive(Deserialize)]
struct ApiData {
    #[serde(default, rename = "resultType")]
    result_type: Option<String>,
    #[serde(default)]
    result: serde_json::Value,
}

/// `[<seconds>, "<value>"]`. Prometheus sends the value as a string; a number is accepted too.
type Point = (f64, serde_json::Value);

#[derive(Deserialize)]
struct VectorSeries {
    /// Absent for a native histogram sample, which is skipped.
    #[serde(default)]
    value: Option<Point>,
}

#[derive(Deserialize)]
struct MatrixSeries {
    /// Empty for a native histogram series, which is skipped.
    #[serde(default)]
    values: Vec<Point>,
}

impl ApiResponse {
    fn describe_error(&self) -> String {
        format!(
            "{}: {}",
            self.error_type.as_deref().unwrap_or("unknown error type"),
            self.error.as_deref().unwrap_or("(no message)")
        )
    }
}

impl PrometheusMonitor {
    async fn run(&self, query: &MetricQuery) -> Result<Vec<Sample>> {
        let endpoint = if query.range.is_some() {
            "api/v1/query_range"
        } else {
            "api/v1/query"
        };
        let mut url = self.base.join(endpoint).map_err(|e| {
            Error::backend(
                format!("Prometheus query {:?}", query.expr),
                format!("cannot build the URL from {}: {e}", redact(&self.base)),
            )
        })?;
        let operation = format!("Prometheus query {:?} at {}", query.expr, redact(&url));
        {
            let mut pairs = url.query_pairs_mut();
            pairs.append_pair("query", &query.expr);
            pairs.append_pair("timeout", &seconds(self.timeout.as_millis() as u64));
            if let Some(range) = query.range {
                let end = SystemClock.now().as_millis();
                let range_ms = range.as_millis().min(u64::MAX as u128) as u64;
                let step_ms = (self.step.as_millis() as u64).max(range_ms.div_ceil(MAX_POINTS));
                pairs.append_pair("start", &seconds(end.saturating_sub(range_ms)));
                pairs.append_pair("end", &seconds(end));
                pairs.append_pair("step", &seconds(step_ms));
            }
        }

        let response = self.client.get(url).send().await.map_err(|e| {
            let e = e.without_url();
            if e.is_builder() || e.is_redirect() {
                Error::Backend {
                    operation: operation.clone(),
                    source: Box::new(e),
                }
            } else {
                Error::Transient {
                    operation: operation.clone(),
                    source: Box::new(e),
                }
            }
        })?;
        let status = response.status();
        let body = response.text().await.map_err(|e| Error::Transient {
            operation: operation.clone(),
            source: Box::new(e.without_url()),
        })?;
        let parsed: Option<ApiResponse> = serde_json::from_str(&body).ok();

        if !status.is_success() {
            let detail = match &parsed {
                Some(r) if r.status.as_deref() == Some("error") => {
                    format!("HTTP {status}, {}", r.describe_error())
                }
                _ => format!(
                    "HTTP {status}, not a Prometheus API response: {}",
                    snippet(&body)
                ),
            };
            return Err(
                if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                    Error::transient(operation, detail)
                } else {
                    Error::backend(operation, detail)
                },
            );
        }
        let Some(response) = parsed else {
            return Err(Error::backend(
                operation,
                format!(
                    "HTTP {status}, but not a Prometheus API response: {}",
                    snippet(&body)
                ),
            ));
        };
        match response.status.as_deref() {
            Some("success") => {}
            Some("error") => {
                let detail = response.describe_error();
                return Err(
                    if matches!(
                        response.error_type.as_deref(),
                        Some("timeout" | "canceled" | "unavailable")
                    ) {
                        Error::transient(operation, detail)
                    } else {
                        Error::backend(operation, detail)
                    },
                );
            }
            other => {
                return Err(Error::backend(
                    operation,
                    format!("unexpected response status {other:?}: {}", snippet(&body)),
                ));
            }
        }
        for warning in &response.warnings {
            tracing::debug!(query = %query.expr, %warning, "Prometheus warning");
        }
        let Some(data) = response.data else {
            return Err(Error::backend(operation, "the response has no data"));
        };
        parse_result(data).map_err(|reason| Error::backend(operation, reason))
    }
}

/// The samples of a successful response's `data`.
fn parse_result(data: ApiData) -> std::result::Result<Vec<Sample>, String> {
    let decode = |what: &str, e: serde_json::Error| format!("cannot decode the {what} result: {e}");
    match data.result_type.as_deref() {
        Some("vector") => {
            let series: Vec<VectorSeries> = if data.result.is_null() {
                Vec::new()
            } else {
                serde_json::from_value(data.result).map_err(|e| decode("vector", e))?
            };
            if series.len() > 1 {
                tracing::debug!(
                    series = series.len(),
                    "Prometheus returned several series; aggregate the query to one"
                );
            }
            series
                .into_iter()
                .filter_map(|s| s.value)
                .map(|p| sample(&p))
                .collect()
        }
        Some("matrix") => {
            let series: Vec<MatrixSeries> = if data.result.is_null() {
                Vec::new()
            } else {
                serde_json::from_value(data.result).map_err(|e| decode("matrix", e))?
            };
            let mut samples = series
                .iter()
                .flat_map(|s| s.values.iter().map(sample))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            samples.sort_by_key(|s| s.at);
            Ok(samples)
        }
        Some("scalar") => {
            let point: Point =
                serde_json::from_value(data.result).map_err(|e| decode("scalar", e))?;
            Ok(vec![sample(&point)?])
        }
        Some("string") => Err("the query returns a string, not a number".to_string()),
        other => Err(format!("unknown result type {other:?}")),
    }
}

/// One `[<seconds>, "<value>"]` point; `"NaN"`, `"+Inf"` and `"-Inf"` are values.
fn sample((at, value): &Point) -> std::result::Result<Sample, String> {
    if !(at.is_finite() && *at >= 0.0) {
        return Err(format!("{at} is not a timestamp"));
    }
    let value = match value {
        serde_json::Value::String(s) => s
            .parse::<f64>()
            .map_err(|_| format!("{s:?} is not a number"))?,
        serde_json::Value::Number(n) => n.as_f64().ok_or_else(|| format!("{n} is not a number"))?,
        other => return Err(format!("{other} is not a number")),
    };
    Ok(Sample {
        at: Timestamp::from_millis((at * 1000.0).round() as u64),
        value,
    })
}

#[async_trait]
impl Monitor for PrometheusMonitor {
    /// Always empty: Prometheus does not know the health of instances. Pair this monitor with
    /// the environment backend's own observation (its [`InstanceObservation`]s).
    async fn instance_health(
        &self,
        _service: &ServiceId,
        _revision: &RevisionId,
    ) -> Result<Vec<InstanceObservation>> {
        Ok(Vec::new())
    }

    /// Evaluates `query.expr` as PromQL: an instant query, or a range query over
    /// `query.range`. See the [module docs](self).
    async fn query(&self, query: &MetricQuery) -> Result<Vec<Sample>> {
        self.run(query).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(json: &str) -> ApiData {
        serde_json::from_str(json).expect("json")
    }

    #[test]
    fn parses_every_result_type() {
        let v = parse_result(data(
            r#"{"resultType":"vector","result":[{"metric":{"a":"1"},"value":[1.5,"0.5"]},
                {"metric":{},"value":[1.5,"NaN"]},{"metric":{},"histogram":[1.5,{}]}]}"#,
        ))
        .expect("vector");
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].at, Timestamp::from_millis(1500));
        assert_eq!(v[0].value, 0.5);
        assert!(v[1].value.is_nan());

        let m = parse_result(data(
            r#"{"resultType":"matrix","result":[{"metric":{},"values":[[2,"+Inf"],[4,"1"]]},
                {"metric":{},"values":[[1,"-Inf"],[3,"2"]]}]}"#,
        ))
        .expect("matrix");
        let at: Vec<u64> = m.iter().map(|s| s.at.as_millis()).collect();
        assert_eq!(at, [1000, 2000, 3000, 4000]);
        assert_eq!(m[0].value, f64::NEG_INFINITY);
        assert_eq!(m[1].value, f64::INFINITY);

        let s = parse_result(data(r#"{"resultType":"scalar","result":[7,"3"]}"#)).expect("s");
        assert_eq!(s[0].value, 3.0);
        assert!(
            parse_result(data(r#"{"resultType":"vector","result":[]}"#))
                .expect("empty")
                .is_empty()
        );
        assert!(parse_result(data(r#"{"resultType":"string","result":[7,"x"]}"#)).is_err());
        assert!(parse_result(data(r#"{"resultType":"histogram2","result":[]}"#)).is_err());
        assert!(
            parse_result(data(
                r#"{"resultType":"vector","result":[{"value":[1,"x"]}]}"#
            ))
            .is_err()
        );
    }

    #[test]
    fn unknown_fields_and_error_types_parse() {
        let r: ApiResponse = serde_json::from_str(
            r#"{"status":"error","errorType":"brand_new","error":"boom","infos":["x"]}"#,
        )
        .expect("parse");
        assert_eq!(r.describe_error(), "brand_new: boom");
    }

    #[test]
    fn builder_validates_and_hides_header_values() {
        assert!(PrometheusMonitor::new("ftp://x").is_err());
        assert!(PrometheusMonitor::new("not a url").is_err());
        assert!(
            PrometheusMonitor::builder("http://x")
                .timeout(Duration::ZERO)
                .build()
                .is_err()
        );
        assert!(
            PrometheusMonitor::builder("http://x")
                .header("bad header", "v")
                .build()
                .is_err()
        );
        let m = PrometheusMonitor::builder("https://user:pw@metrics.example/prom")
            .bearer_token("s3cret-token")
            .build()
            .expect("build");
        assert_eq!(m.base.as_str(), "https://user:pw@metrics.example/prom/");
        let debug = format!("{m:?}");
        assert!(
            !debug.contains("s3cret") && !debug.contains("pw"),
            "{debug}"
        );
        assert!(debug.contains("authorization"), "{debug}");
    }

    #[test]
    fn snippets_are_short_and_one_line() {
        let long = format!("<html>\n<body>{}</body>", "x".repeat(1000));
        let s = snippet(&long);
        assert!(s.len() < SNIPPET_CHARS + 10 && !s.contains('\n'), "{s}");
        assert_eq!(snippet("  "), "(empty body)");
    }
}
