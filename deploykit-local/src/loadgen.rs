//! A small HTTP/1.1 load generator that counts every failed request.
//!
//! Tests and the zero-downtime load test use it to send traffic through deploykit's proxy while
//! a rollout happens. Each worker keeps its own keep-alive connection (made with
//! [`hyper::client::conn::http1::handshake`]) and reconnects when the connection closes or
//! errors. A reconnect is not a failure, but a request that errors is counted as one and is
//! never retried: the point is to see every dropped request.
//!
//! ```no_run
//! # async fn demo(proxy: std::net::SocketAddr) {
//! use deploykit_local::loadgen::{LoadConfig, run};
//!
//! let report = run(LoadConfig::new(proxy, 1_000), None).await;
//! assert_eq!(report.failures, 0, "{:?}", report.failure_samples);
//! # }
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedSender;

/// How many failures [`LoadReport::failure_samples`] keeps.
const MAX_FAILURE_SAMPLES: usize = 10;

/// What to send, where, and how fast.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Address to connect to (usually the proxy).
    pub target: SocketAddr,
    /// `Host` header sent with every request, e.g. `"localhost"`.
    pub host: String,
    /// Number of workers, each with its own connection (default 16; 0 is treated as 1).
    pub concurrency: usize,
    /// Total number of requests to send; the run stops after this many.
    pub requests: u64,
    /// Every Nth request (1-based) goes to [`slow_path`](Self::slow_path) instead of `/`;
    /// 0 means never (default 10).
    pub slow_every: u64,
    /// Path used for slow requests (default `"/slow?ms=200"`).
    pub slow_path: String,
    /// Per-request timeout, covering connecting, sending and reading the body (default 10 s).
    pub timeout: Duration,
    /// Optional pacing across all workers: request *i* is not sent before `start + i / rate`.
    pub rate_per_sec: Option<u32>,
}

impl LoadConfig {
    /// A configuration sending `requests` requests to `target` with the defaults: host
    /// `"localhost"`, 16 workers, every 10th request to `/slow?ms=200`, 10 s timeout, no pacing.
    pub fn new(target: SocketAddr, requests: u64) -> LoadConfig {
        LoadConfig {
            target,
            host: "localhost".to_owned(),
            concurrency: 16,
            requests,
            slow_every: 10,
            slow_path: "/slow?ms=200".to_owned(),
            timeout: Duration::from_secs(10),
            rate_per_sec: None,
        }
    }
}

/// The outcome of a [`run`].
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Requests sent (successful or not).
    pub requests: u64,
    /// Requests that failed: transport error, timeout, or a status >= 500.
    pub failures: u64,
    /// The first failures by request number (at most 10), e.g.
    /// `"request 812 GET /: 502 Bad Gateway"` or the transport error.
    pub failure_samples: Vec<String>,
    /// Responses per `x-version` header value (responses without the header are not counted).
    pub by_version: BTreeMap<String, u64>,
    /// Median latency over all requests (failed ones included, up to the moment they failed).
    pub latency_p50: Duration,
    /// 99th-percentile latency over all requests.
    pub latency_p99: Duration,
    /// Highest latency seen.
    pub latency_max: Duration,
    /// Wall-clock duration of the whole run.
    pub elapsed: Duration,
}

impl LoadReport {
    /// Requests per second over the run (0 if nothing ran).
    pub fn requests_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.requests as f64 / secs
        } else {
            0.0
        }
    }
}

/// One finished request, as sent to the observer of [`run`].
#[derive(Clone, Debug)]
pub struct Completed {
    /// When the request was started (after any pacing delay).
    pub sent_at: Instant,
    /// When the response body was read completely, or the request failed.
    pub done_at: Instant,
    /// The response's `x-version` header, if there was a response carrying one.
    pub version: Option<String>,
    /// Whether the request succeeded (a response with status < 500).
    pub ok: bool,
    /// Whether the request went to [`LoadConfig::slow_path`].
    pub path_slow: bool,
}

/// Sends `config.requests` requests and reports on them once all are done.
///
/// `observer` receives every completed request (timestamps, version header, success) so callers
/// can measure e.g. when the last response from a rolled-back version arrived. Must be called
/// within a tokio runtime; workers run as spawned tasks.
pub async fn run(config: LoadConfig, observer: Option<UnboundedSender<Completed>>) -> LoadReport {
    let started = Instant::now();
    let shared = Arc::new(Shared {
        next: AtomicU64::new(0),
        started: tokio::time::Instant::from_std(started),
        config,
        observer,
    });
    let workers = shared.config.concurrency.max(1);
    let handles: Vec<_> = (0..workers)
        .map(|_| tokio::spawn(worker(Arc::clone(&shared))))
        .collect();
    let mut tally = Tally::default();
    for handle in handles {
        match handle.await {
            Ok(worker_tally) => tally.merge(worker_tally),
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(err) => panic!("load generator worker failed: {err}"),
        }
    }
    let elapsed = started.elapsed();

    tally.latencies.sort_unstable();
    tally.samples.sort_by_key(|(n, _)| *n);
    LoadReport {
        requests: tally.requests,
        failures: tally.failures,
        failure_samples: tally
            .samples
            .into_iter()
            .take(MAX_FAILURE_SAMPLES)
            .map(|(_, sample)| sample)
            .collect(),
        by_version: tally.by_version,
        latency_p50: percentile(&tally.latencies, 0.50),
        latency_p99: percentile(&tally.latencies, 0.99),
        latency_max: tally.latencies.last().copied().unwrap_or_default(),
        elapsed,
    }
}

/// Nearest-rank percentile of sorted `values`.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// State shared by all workers of one run.
struct Shared {
    /// Next request index (0-based) to claim.
    next: AtomicU64,
    started: tokio::time::Instant,
    config: LoadConfig,
    observer: Option<UnboundedSender<Completed>>,
}

/// What one worker saw.
#[derive(Default)]
struct Tally {
    requests: u64,
    failures: u64,
    /// `(request number, sample)`; each worker keeps only its first few.
    samples: Vec<(u64, String)>,
    by_version: BTreeMap<String, u64>,
    latencies: Vec<Duration>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.requests += other.requests;
        self.failures += other.failures;
        self.samples.extend(other.samples);
        for (version, count) in other.by_version {
            *self.by_version.entry(version).or_default() += count;
        }
        self.latencies.extend(other.latencies);
    }
}

/// The result of one request.
struct Outcome {
    status: StatusCode,
    version: Option<String>,
}

async fn worker(shared: Arc<Shared>) -> Tally {
    let config = &shared.config;
    let mut tally = Tally::default();
    let mut conn: Option<SendRequest<Empty<Bytes>>> = None;
    loop {
        let index = shared.next.fetch_add(1, Ordering::Relaxed);
        if index >= config.requests {
            break;
        }
        if let Some(rate) = config.rate_per_sec.filter(|rate| *rate > 0) {
            let offset = Duration::from_secs_f64(index as f64 / f64::from(rate));
            tokio::time::sleep_until(shared.started + offset).await;
        }
        let number = index + 1;
        let path_slow = config.slow_every > 0 && number.is_multiple_of(config.slow_every);
        let path = if path_slow {
            config.slow_path.as_str()
        } else {
            "/"
        };

        let sent_at = Instant::now();
        let result = tokio::time::timeout(config.timeout, request(config, &mut conn, path)).await;
        let done_at = Instant::now();
        let (ok, version, failure) = match result {
            Ok(Ok(outcome)) => {
                let failure = outcome
                    .status
                    .is_server_error()
                    .then(|| outcome.status.to_string());
                (failure.is_none(), outcome.version, failure)
            }
            Ok(Err(err)) => {
                conn = None;
                (false, None, Some(err))
            }
            Err(_) => {
                conn = None;
                (
                    false,
                    None,
                    Some(format!("timed out after {:?}", config.timeout)),
                )
            }
        };

        tally.requests += 1;
        tally.latencies.push(done_at - sent_at);
        if let Some(version) = &version {
            *tally.by_version.entry(version.clone()).or_default() += 1;
        }
        if let Some(failure) = failure {
            tally.failures += 1;
            if tally.samples.len() < MAX_FAILURE_SAMPLES {
                tally
                    .samples
                    .push((number, format!("request {number} GET {path}: {failure}")));
            }
        }
        if let Some(observer) = &shared.observer {
            let _ = observer.send(Completed {
                sent_at,
                done_at,
                version,
                ok,
                path_slow,
            });
        }
    }
    tally
}

/// Sends one GET over the worker's connection, (re)connecting first if needed. Errors are
/// described as text for the failure samples.
async fn request(
    config: &LoadConfig,
    conn: &mut Option<SendRequest<Empty<Bytes>>>,
    path: &str,
) -> Result<Outcome, String> {
    // Reuse the connection if it can take another request; otherwise (closed by the server,
    // broken) open a new one. Reconnecting is not a failure.
    let mut existing = conn.take();
    if let Some(sender) = existing.as_mut()
        && (sender.is_closed() || sender.ready().await.is_err())
    {
        existing = None;
    }
    let sender = match existing {
        Some(sender) => conn.insert(sender),
        None => {
            let mut fresh = connect(config.target).await?;
            fresh
                .ready()
                .await
                .map_err(|err| format!("connection to {} failed: {err}", config.target))?;
            conn.insert(fresh)
        }
    };

    let request = Request::get(path)
        .header(HOST, config.host.as_str())
        .body(Empty::<Bytes>::new())
        .map_err(|err| format!("invalid request: {err}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|err| describe(&err))?;
    let status = response.status();
    let version = response
        .headers()
        .get("x-version")
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    response
        .into_body()
        .collect()
        .await
        .map_err(|err| format!("reading the body failed: {}", describe(&err)))?;
    Ok(Outcome { status, version })
}

/// Opens a new HTTP/1.1 connection to `target`, driven by a spawned task.
async fn connect(target: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, String> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|err| format!("connect to {target} failed: {err}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|err| format!("handshake with {target} failed: {}", describe(&err)))?;
    tokio::spawn(async move {
        // Errors surface through the requests sent on this connection.
        let _ = connection.await;
    });
    Ok(sender)
}

/// A hyper error with its sources, e.g. "connection error: Connection reset by peer".
fn describe(err: &hyper::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
