//! Tests for `deploykit_local::loadgen` against small in-test servers.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use deploykit_local::loadgen::{Completed, LoadConfig, run};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the test server saw.
#[derive(Default)]
struct Seen {
    requests: AtomicU64,
    connections: AtomicU64,
    paths: Mutex<BTreeMap<String, u64>>,
    hosts: Mutex<BTreeMap<String, u64>>,
}

/// A hyper server answering `x-version: a`; with `fail_every_10th`, every 10th request gets a
/// 500; with `keep_alive` off, the connection is closed after each response.
async fn server(fail_every_10th: bool, keep_alive: bool) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let state = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            state.connections.fetch_add(1, Ordering::SeqCst);
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let state = Arc::clone(&state);
                    async move {
                        let n = state.requests.fetch_add(1, Ordering::SeqCst) + 1;
                        *state
                            .paths
                            .lock()
                            .unwrap()
                            .entry(req.uri().path().to_owned())
                            .or_default() += 1;
                        let host = req.headers()["host"].to_str().unwrap().to_owned();
                        *state.hosts.lock().unwrap().entry(host).or_default() += 1;
                        let status = if fail_every_10th && n.is_multiple_of(10) {
                            StatusCode::INTERNAL_SERVER_ERROR
                        } else {
                            StatusCode::OK
                        };
                        let mut response = Response::new(Full::new(Bytes::from_static(b"hi\n")));
                        *response.status_mut() = status;
                        response
                            .headers_mut()
                            .insert("x-version", "a".parse().unwrap());
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = http1::Builder::new()
                    .keep_alive(keep_alive)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn config(target: SocketAddr, requests: u64) -> LoadConfig {
    let mut config = LoadConfig::new(target, requests);
    config.concurrency = 4;
    config.slow_every = 0;
    config.timeout = Duration::from_secs(5);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_requests_and_failures_exactly() {
    let (addr, seen) = server(true, true).await;
    let report = run(config(addr, 200), None).await;
    assert_eq!(report.requests, 200);
    assert_eq!(report.failures, 20, "{:?}", report.failure_samples);
    assert_eq!(seen.requests.load(Ordering::SeqCst), 200);
    assert_eq!(report.by_version, BTreeMap::from([("a".to_owned(), 200)]));
    assert_eq!(report.failure_samples.len(), 10);
    for sample in &report.failure_samples {
        assert!(
            sample.starts_with("request ") && sample.ends_with(" GET /: 500 Internal Server Error"),
            "{sample}"
        );
    }
    assert!(seen.connections.load(Ordering::SeqCst) <= 4, "keep-alive");
    assert_eq!(seen.hosts.lock().unwrap()["localhost"], 200);
    assert!(report.latency_p50 <= report.latency_p99);
    assert!(report.latency_p99 <= report.latency_max);
    assert!(report.elapsed > Duration::ZERO && report.requests_per_sec() > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_every_routes_to_the_slow_path() {
    let (addr, seen) = server(false, true).await;
    let mut config = config(addr, 100);
    config.slow_every = 10;
    config.slow_path = "/slow?ms=5".to_owned();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Completed>();
    let report = run(config, Some(tx)).await;
    assert_eq!(report.failures, 0);
    let paths = seen.paths.lock().unwrap().clone();
    assert_eq!(
        paths,
        BTreeMap::from([("/".to_owned(), 90), ("/slow".to_owned(), 10)])
    );
    let mut completed = Vec::new();
    while let Some(c) = rx.recv().await {
        completed.push(c);
    }
    assert_eq!(completed.len(), 100);
    assert_eq!(completed.iter().filter(|c| c.path_slow).count(), 10);
    assert!(
        completed
            .iter()
            .all(|c| c.ok && c.version.as_deref() == Some("a"))
    );
    assert!(completed.iter().all(|c| c.done_at >= c.sent_at));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_are_not_failures() {
    let (addr, seen) = server(false, false).await;
    let report = run(config(addr, 100), None).await;
    assert_eq!(report.requests, 100);
    assert_eq!(report.failures, 0, "{:?}", report.failure_samples);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 100);
}

/// A raw server that drops every 5th request without answering: each drop is one failure and
/// is not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_requests_are_failures_and_not_retried() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.clear();
                    let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                    if n.is_multiple_of(5) {
                        return; // close without answering
                    }
                    let reply = b"HTTP/1.1 200 OK\r\nx-version: b\r\ncontent-length: 0\r\n\r\n";
                    if stream.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let mut config = config(addr, 20);
    config.concurrency = 1;
    let report = run(config, None).await;
    assert_eq!(seen.load(Ordering::SeqCst), 20, "no retries");
    assert_eq!(report.requests, 20);
    assert_eq!(report.failures, 4, "{:?}", report.failure_samples);
    assert_eq!(report.by_version, BTreeMap::from([("b".to_owned(), 16)]));
    assert!(report.failure_samples[0].starts_with("request 5 GET /: "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_target_fails_every_request() {
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let report = run(config(addr, 25), None).await;
    assert_eq!(report.requests, 25);
    assert_eq!(report.failures, 25);
    assert!(report.by_version.is_empty());
    assert_eq!(report.failure_samples.len(), 10);
    let sample = &report.failure_samples[0];
    assert!(
        sample.starts_with("request 1 GET /: connect to ") && sample.contains("refused"),
        "{sample}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_paces_the_run() {
    let (addr, _seen) = server(false, true).await;
    let mut config = config(addr, 21);
    config.rate_per_sec = Some(100);
    let report = run(config, None).await;
    assert_eq!(report.failures, 0);
    // The 21st request is not sent before 200 ms.
    assert!(
        report.elapsed >= Duration::from_millis(180),
        "{:?}",
        report.elapsed
    );
}

#[tokio::test]
async fn zero_requests_is_an_empty_report() {
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let report = run(config(addr, 0), None).await;
    assert_eq!(report.requests, 0);
    assert_eq!(report.latency_max, Duration::ZERO);
}
