//! The Prometheus monitor against a real Prometheus server (started by `.ci/with-prometheus`,
//! scraping `.ci/metrics_target.py` every second), and against fake servers that fail the ways
//! real ones do: a closed port, a timeout, a 503, an HTML error page.
//!
//! Expected values (see `.ci/metrics_target.py`): revision `good` (`revision_id`
//! `600d600d600d600d`) serves 10 requests/s, none failing, p99 latency 0.2485 s; revision `bad`
//! (`bad0bad0bad0bad0`) serves 10 requests/s, half failing with status 500, p99 latency 1.495 s.

use std::time::{Duration, Instant};

use deploykit_core::analysis::{
    AnalysisSpec, Condition, JudgedMetric, JudgementSpec, MeasurementOutcome, MetricCheck,
    RunStatus, Subject, evaluate, measure,
};
use deploykit_core::{
    Clock, EnvironmentName, Error, MetricQuery, Monitor, MonitorExt, RevisionId, Sample, ServiceId,
    SystemClock,
};
use deploykit_telemetry::prometheus::PrometheusMonitor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const GOOD: &str = "600d600d600d600d";
const BAD: &str = "bad0bad0bad0bad0";

fn prometheus_url() -> String {
    std::env::var("DEPLOYKIT_PROMETHEUS_URL").unwrap_or_else(|_| {
        panic!(
            "DEPLOYKIT_PROMETHEUS_URL is not set: run `bash .ci/test`, which installs and starts \
             Prometheus (or `bash .ci/with-prometheus cargo test -p deploykit-testing --test \
             prometheus`)"
        )
    })
}

fn monitor() -> PrometheusMonitor {
    PrometheusMonitor::builder(prometheus_url())
        .step(Duration::from_secs(1))
        .build()
        .expect("monitor")
}

fn web() -> ServiceId {
    ServiceId::new("web").expect("service")
}

fn instant(expr: &str) -> MetricQuery {
    MetricQuery::new(web(), expr)
}

/// Waits (real time, at most 30 s) until Prometheus has scraped the target successfully at
/// least `scrapes` times. A `[10s]` rate is only accurate once its window is covered: 12.
async fn wait_for_scrapes(scrapes: u32) {
    let m = monitor();
    let q = instant(r#"sum(sum_over_time(up{job="deploykit-test"}[1m]))"#);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = m.latest(&q).await.ok().flatten().unwrap_or(0.0);
        if seen >= f64::from(scrapes) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus at {} scraped the test target only {seen} times in 30 s (wanted {scrapes})",
            prometheus_url()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn latest(expr: &str) -> Option<f64> {
    monitor()
        .latest(&instant(expr))
        .await
        .unwrap_or_else(|e| panic!("{expr}: {}", e.chain()))
}

fn assert_near(actual: Option<f64>, expected: f64, tolerance: f64, what: &str) {
    let v = actual.unwrap_or_else(|| panic!("{what}: no data"));
    assert!(
        (v - expected).abs() <= tolerance,
        "{what}: {v} is not {expected} ± {tolerance}"
    );
}

#[tokio::test]
async fn counter_rate_matches_the_target() {
    wait_for_scrapes(12).await;
    let rate = latest(r#"sum(rate(deploykit_test_requests_total{revision="good"}[10s]))"#).await;
    assert_near(rate, 10.0, 1.0, "requests/s of good");
}

#[tokio::test]
async fn error_ratio_tells_the_revisions_apart() {
    wait_for_scrapes(3).await;
    let ratio = |rev: &str| {
        format!(
            r#"sum(rate(deploykit_test_requests_total{{revision="{rev}",status="500"}}[10s]))
             / sum(rate(deploykit_test_requests_total{{revision="{rev}"}}[10s]))"#
        )
    };
    assert_near(
        latest(&ratio("good")).await,
        0.0,
        0.01,
        "error ratio of good",
    );
    assert_near(latest(&ratio("bad")).await, 0.5, 0.05, "error ratio of bad");
}

#[tokio::test]
async fn histogram_quantile_tells_the_revisions_apart() {
    wait_for_scrapes(3).await;
    let p99 = |rev: &str| {
        format!(
            r#"histogram_quantile(0.99, sum(rate(deploykit_test_latency_seconds_bucket{{revision="{rev}"}}[10s])) by (le))"#
        )
    };
    let bad = latest(&p99("bad")).await.expect("p99 of bad");
    assert!(bad > 1.0, "p99 of bad is {bad}");
    assert_near(Some(bad), 1.495, 0.01, "p99 of bad");
    assert_near(latest(&p99("good")).await, 0.2485, 0.01, "p99 of good");
}

#[tokio::test]
async fn a_vector_of_several_series_gives_one_sample_each() {
    wait_for_scrapes(3).await;
    let samples = monitor()
        .query(&instant(r#"deploykit_test_requests_total{service="web"}"#))
        .await
        .expect("query");
    assert_eq!(samples.len(), 4, "{samples:?}");
}

#[tokio::test]
async fn an_absent_series_is_no_data() {
    wait_for_scrapes(3).await;
    let q = instant("sum(rate(deploykit_test_no_such_metric[10s]))");
    let m = monitor();
    assert_eq!(m.query(&q).await.expect("query"), Vec::<Sample>::new());
    assert_eq!(m.latest(&q).await.expect("latest"), None);
}

#[tokio::test]
async fn nan_and_infinity_are_values_but_never_data() {
    let m = monitor();
    for (expr, check) in [
        ("0/0", f64::is_nan as fn(f64) -> bool),
        ("vector(1)/vector(0)", |v: f64| v == f64::INFINITY),
        ("-vector(1)/vector(0)", |v: f64| v == f64::NEG_INFINITY),
    ] {
        let q = instant(expr);
        let samples = m.query(&q).await.expect("query");
        assert_eq!(samples.len(), 1, "{expr}: {samples:?}");
        assert!(check(samples[0].value), "{expr}: {samples:?}");
        assert_eq!(m.latest(&q).await.expect("latest"), None, "{expr}");
    }
}

#[tokio::test]
async fn a_range_query_returns_samples_in_time_order() {
    wait_for_scrapes(8).await;
    let m = monitor();
    let one = instant(r#"sum(rate(deploykit_test_requests_total{revision="good"}[10s]))"#)
        .over(Duration::from_secs(5));
    let samples = m.query(&one).await.expect("range query");
    assert!(samples.len() >= 4, "{samples:?}");
    assert!(
        samples.windows(2).all(|w| w[0].at < w[1].at),
        "not strictly increasing: {samples:?}"
    );
    let steps: Vec<u64> = samples
        .windows(2)
        .map(|w| w[1].at.as_millis() - w[0].at.as_millis())
        .collect();
    assert!(
        steps.iter().all(|&s| s == 1000),
        "step is not 1 s: {steps:?}"
    );
    assert!(samples.iter().all(|s| s.value > 0.0), "{samples:?}");

    // Two series (status 200 and 500 of bad) are merged by time.
    let two = instant(r#"rate(deploykit_test_requests_total{revision="bad"}[10s])"#)
        .over(Duration::from_secs(5));
    let merged = m.query(&two).await.expect("range query");
    assert!(merged.len() >= 2 * samples.len() - 2, "{merged:?}");
    assert!(
        merged.windows(2).all(|w| w[0].at <= w[1].at),
        "not in time order: {merged:?}"
    );
}

fn assert_error(result: deploykit_core::Result<Vec<Sample>>, transient: bool, needles: &[&str]) {
    let e = match result {
        Ok(samples) => panic!("expected an error, got {samples:?}"),
        Err(e) => e,
    };
    let message = e.chain();
    assert_eq!(
        matches!(e, Error::Transient { .. }),
        transient,
        "wrong kind: {message}"
    );
    if !transient {
        assert!(matches!(e, Error::Backend { .. }), "wrong kind: {message}");
    }
    assert_eq!(e.is_retryable(), transient, "{message}");
    for needle in needles {
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    }
}

#[tokio::test]
async fn a_malformed_query_is_a_backend_error_naming_query_and_url() {
    let m = monitor();
    let url = prometheus_url();
    // A parse error: 400 bad_data.
    let expr = "sum(rate(deploykit_test_requests_total[10s])";
    let r = m.query(&instant(expr)).await;
    assert_error(r, false, &[expr, &url, "400", "bad_data", "parse error"]);

    // One that parses but cannot run (many-to-many matching): 422 execution.
    wait_for_scrapes(3).await;
    let expr = "deploykit_test_latency_seconds_sum + on(revision) deploykit_test_requests_total";
    let r = m.query(&instant(expr)).await;
    assert_error(r, false, &[expr, &url, "422", "execution"]);
}

#[tokio::test]
async fn a_server_that_is_down_is_transient() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let m = PrometheusMonitor::new(&format!("http://{addr}")).expect("monitor");
    let r = m.query(&instant("up")).await;
    assert_error(r, true, &["\"up\"", &addr.to_string()]);
}

/// A server on loopback that answers every request with `reply` (or never, with `None`).
async fn fake_server(reply: Option<&'static str>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                match reply {
                    Some(reply) => {
                        let _ = conn.write_all(reply.as_bytes()).await;
                        let _ = conn.shutdown().await;
                    }
                    None => tokio::time::sleep(Duration::from_secs(30)).await,
                }
            });
        }
    });
    format!("http://{addr}")
}

fn http(status: &str, content_type: &str, body: &str) -> &'static str {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .leak()
}

#[tokio::test]
async fn server_errors_error_pages_and_timeouts_are_errors() {
    let html =
        "<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>";
    let cases: [(&'static str, bool, &[&str]); 6] = [
        (
            http("503 Service Unavailable", "text/plain", "overloaded"),
            true,
            &["503", "overloaded"],
        ),
        (
            http(
                "503 Service Unavailable",
                "application/json",
                r#"{"status":"error","errorType":"unavailable","error":"too many queries"}"#,
            ),
            true,
            &["503", "unavailable", "too many queries"],
        ),
        (
            http("502 Bad Gateway", "text/html", html),
            true,
            &["502", "Bad Gateway"],
        ),
        // A proxy's login page with status 200 is not data.
        (
            http("200 OK", "text/html", html),
            false,
            &["200", "not a Prometheus API response"],
        ),
        // An error type this code has never heard of still parses, as an error.
        (
            http(
                "422 Unprocessable Entity",
                "application/json",
                r#"{"status":"error","errorType":"brand_new","error":"nope","extra":1}"#,
            ),
            false,
            &["422", "brand_new", "nope"],
        ),
        (
            http(
                "200 OK",
                "application/json",
                r#"{"status":"success","data":{"resultType":"string","result":[1,"hi"]}}"#,
            ),
            false,
            &["string, not a number"],
        ),
    ];
    for (reply, transient, needles) in cases {
        let url = fake_server(Some(reply)).await;
        let m = PrometheusMonitor::new(&url).expect("monitor");
        let expr = "sum(rate(x[1m]))";
        let mut needles = needles.to_vec();
        needles.extend([expr, url.as_str()]);
        assert_error(m.query(&instant(expr)).await, transient, &needles);
        // A failed query is an error for `latest` too, never "no data" or a value.
        assert!(m.latest(&instant(expr)).await.is_err());
    }

    let url = fake_server(None).await;
    let m = PrometheusMonitor::builder(&url)
        .timeout(Duration::from_millis(300))
        .build()
        .expect("monitor");
    let started = Instant::now();
    assert_error(m.query(&instant("up")).await, true, &["\"up\"", &url]);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn instance_health_is_not_prometheus_business() {
    let m = monitor();
    let rev = RevisionId::parse(GOOD).expect("rev");
    assert!(
        m.instance_health(&web(), &rev)
            .await
            .expect("health")
            .is_empty()
    );
}

/// End to end: deploykit's analysis on top of real Prometheus data passes the good revision
/// and fails the bad one; a query Prometheus rejects is a no-data measurement, never a pass.
#[tokio::test]
async fn analysis_passes_good_and_fails_bad() {
    wait_for_scrapes(12).await;
    let m = monitor();
    let service = web();
    let env = EnvironmentName::new("production").expect("env");
    let good = RevisionId::parse(GOOD).expect("good");
    let bad = RevisionId::parse(BAD).expect("bad");
    let spec = AnalysisSpec::new(vec![
        MetricCheck::threshold(
            "error-ratio",
            r#"sum(rate(deploykit_test_requests_total{service="{{service}}",revision_id="{{revision}}",status="500"}[10s]))
               / sum(rate(deploykit_test_requests_total{service="{{service}}",revision_id="{{revision}}"}[10s]))"#,
            Condition::below(0.05),
        )
        .build()
        .expect("check"),
        MetricCheck::threshold(
            "p99-latency",
            r#"histogram_quantile(0.99, sum(rate(deploykit_test_latency_seconds_bucket{service="{{service}}",revision_id="{{revision}}"}[10s])) by (le))"#,
            Condition::below(0.5),
        )
        .build()
        .expect("check"),
        MetricCheck::judgement(
            "latency-vs-baseline",
            JudgementSpec::builder()
                .metrics(vec![
                    JudgedMetric::builder()
                        .name("p99")
                        .query(r#"histogram_quantile(0.99, sum(rate(deploykit_test_latency_seconds_bucket{revision_id="{{revision}}"}[10s])) by (le))"#)
                        .critical(true)
                        .build(),
                ])
                .range(Duration::from_secs(10))
                .build(),
        )
        .build()
        .expect("check"),
    ])
    .expect("spec");

    let run = |revision: RevisionId, baseline: RevisionId| {
        let (m, spec, service, env) = (&m, &spec, &service, &env);
        async move {
            let subject = Subject {
                service,
                environment: env,
                revision: &revision,
                baseline: Some(&baseline),
            };
            let now = SystemClock.now();
            let mut measurements = Vec::new();
            for check in &spec.metrics {
                measurements.push(measure(m, "step-1", check, &subject, now).await);
            }
            // The traffic judged was applied long before (the epoch will do).
            let traffic_at = deploykit_core::Timestamp::default();
            let status = evaluate(spec, "step-1", &measurements, traffic_at, now);
            (measurements, status)
        }
    };

    let (measurements, status) = run(good.clone(), bad.clone()).await;
    for ms in &measurements {
        assert_eq!(ms.outcome, MeasurementOutcome::Successful, "{ms:?}");
    }
    assert_eq!(status, RunStatus::Successful);

    let (measurements, status) = run(bad.clone(), good.clone()).await;
    for ms in &measurements {
        assert_eq!(ms.outcome, MeasurementOutcome::Failed, "{ms:?}");
    }
    assert!(
        matches!(&status, RunStatus::Failed { reason } if reason.contains("error-ratio")),
        "{status:?}"
    );

    // A query Prometheus rejects: an Error measurement carrying the error, not a pass.
    let broken = MetricCheck::threshold(
        "broken",
        "sum(rate(deploykit_test_requests_total[10s])",
        Condition::below(0.05),
    )
    .build()
    .expect("check");
    let subject = Subject {
        service: &service,
        environment: &env,
        revision: &good,
        baseline: None,
    };
    let ms = measure(&m, "step-1", &broken, &subject, SystemClock.now()).await;
    assert_eq!(ms.outcome, MeasurementOutcome::Error, "{ms:?}");
    assert_eq!(ms.value, None);
    assert!(
        ms.detail.starts_with("query failed:") && ms.detail.contains("bad_data"),
        "{ms:?}"
    );
}
