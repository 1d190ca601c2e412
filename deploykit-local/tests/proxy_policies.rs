//! Traffic policies in the local proxy, over real HTTP on loopback: timeouts, retries and
//! their budget, circuit breaking (ejection after failures in a row, a cap on requests in
//! flight) and rate limiting; and what each looks like to a client.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use deploykit_core::{CircuitBreaker, RateLimit, Retries, TrafficPolicy};
use deploykit_local::proxy::{Group, Proxy, ProxyConfig, Route, RoutingTable, Upstream};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// What a test instance does with every request.
#[derive(Clone, Copy)]
enum Mode {
    /// 200 with its name.
    Ok,
    /// This status, with its name.
    Status(u16),
    /// Waits this long, then 200.
    Slow(Duration),
    /// Waits for a permit of its gate, then 200.
    Gated,
}

struct Instance {
    name: &'static str,
    addr: SocketAddr,
    hits: AtomicUsize,
    gate: Semaphore,
}

impl Instance {
    fn upstream(&self) -> Upstream {
        Upstream::new(self.name, self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn instance(name: &'static str, mode: Mode) -> Arc<Instance> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let state = Arc::new(Instance {
        name,
        addr: listener.local_addr().unwrap(),
        hits: AtomicUsize::new(0),
        gate: Semaphore::new(0),
    });
    let server = state.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = server.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_: Request<Incoming>| {
                    let state = state.clone();
                    async move {
                        state.hits.fetch_add(1, Ordering::SeqCst);
                        let status = match mode {
                            Mode::Ok => 200,
                            Mode::Status(status) => status,
                            Mode::Slow(delay) => {
                                tokio::time::sleep(delay).await;
                                200
                            }
                            Mode::Gated => {
                                state.gate.acquire().await.unwrap().forget();
                                200
                            }
                        };
                        let mut response = Response::new(Full::new(Bytes::from(state.name)));
                        *response.status_mut() = StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    state
}

/// A proxy with one route over `instances` (one revision) under `policy`.
async fn proxy(instances: &[&Arc<Instance>], policy: TrafficPolicy) -> Proxy {
    let proxy = Proxy::bind("127.0.0.1:0".parse().unwrap(), ProxyConfig::default())
        .await
        .unwrap();
    let upstreams = instances.iter().map(|i| i.upstream()).collect();
    let mut route = Route::weighted([Group::new("v1", 100, upstreams).with_policy(policy.clone())]);
    if let Some(limit) = policy.rate_limit {
        route = route.with_rate_limit(limit);
    }
    proxy.set_table(RoutingTable::default().with_default(route));
    proxy
}

struct Reply {
    status: StatusCode,
    /// `x-deploykit-proxy`: why the proxy answered itself.
    by_proxy: Option<String>,
    retry_after: Option<String>,
    body: String,
}

async fn send(proxy: &Proxy, method: &str) -> Reply {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{}/", proxy.local_addr()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (status, by_proxy, retry_after) = (
        response.status(),
        header("x-deploykit-proxy"),
        header("retry-after"),
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        by_proxy,
        retry_after,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn get(proxy: &Proxy) -> Reply {
    send(proxy, "GET").await
}

#[tokio::test]
async fn a_timeout_answers_504_in_its_time_not_the_proxys() {
    let slow = instance("slow", Mode::Slow(Duration::from_secs(30))).await;
    let policy = TrafficPolicy::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let proxy = proxy(&[&slow], policy).await;
    let started = Instant::now();
    let reply = get(&proxy).await;
    let took = started.elapsed();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.by_proxy.as_deref(), Some("timeout"));
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[tokio::test]
async fn idempotent_requests_are_retried_on_another_instance_and_others_are_not() {
    let failing = instance("failing", Mode::Status(503)).await;
    let healthy = instance("healthy", Mode::Ok).await;
    let policy = TrafficPolicy::builder()
        .retries(Retries::builder().attempts(1).build())
        .build()
        .unwrap();
    let proxy = proxy(&[&failing, &healthy], policy).await;
    for _ in 0..10 {
        let reply = get(&proxy).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, "healthy");
    }
    assert!(failing.hits() >= 4, "the failing instance was tried");
    // A POST is not idempotent: the 503 reaches the client as the instance sent it.
    let mut answers = Vec::new();
    for _ in 0..4 {
        let reply = send(&proxy, "POST").await;
        answers.push((reply.status.as_u16(), reply.body, reply.by_proxy));
    }
    assert!(
        answers.contains(&(503, "failing".into(), None)),
        "{answers:?}"
    );
    assert!(
        answers.contains(&(200, "healthy".into(), None)),
        "{answers:?}"
    );

    // A status not in `on_status` is passed on.
    let teapot = instance("teapot", Mode::Status(500)).await;
    let proxy = self::proxy(
        &[&teapot],
        TrafficPolicy::builder()
            .retries(Retries::builder().attempts(3).build())
            .build()
            .unwrap(),
    )
    .await;
    assert_eq!(get(&proxy).await.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(teapot.hits(), 1);
}

#[tokio::test]
async fn retries_never_exceed_their_budget() {
    // One instance that always fails: every request would be retried 3 times without a budget.
    let failing = instance("failing", Mode::Status(503)).await;
    let policy = TrafficPolicy::builder()
        .retries(
            Retries::builder()
                .attempts(3)
                .budget_percent(10)
                .min_per_second(0)
                .build(),
        )
        .build()
        .unwrap();
    let proxy = proxy(&[&failing], policy).await;
    for _ in 0..200 {
        let reply = get(&proxy).await;
        // The instance's own 503, passed on once retries are spent.
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.by_proxy, None);
    }
    let retries = failing.hits() - 200;
    assert!(
        (19..=20).contains(&retries),
        "10 % of 200 requests may be retried: {retries}"
    );
    // Each request counts once in the revision's statistics, however many attempts it took.
    let stats = proxy.stats("v1", Duration::from_secs(60));
    assert_eq!((stats.requests, stats.errors), (200, 200));
}

#[tokio::test]
async fn a_client_s_oversized_body_does_not_count_against_the_instance() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = instance("app", Mode::Ok).await;
    let config = ProxyConfig {
        max_body_bytes: 1024,
        ..ProxyConfig::default()
    };
    let proxy = Proxy::bind("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let policy = TrafficPolicy::builder()
        .circuit_breaker(CircuitBreaker::builder().consecutive_failures(1).build())
        .build()
        .unwrap();
    proxy.set_table(RoutingTable::default().with_default(Route::weighted([
        Group::new("v1", 100, vec![app.upstream()]).with_policy(policy),
    ])));
    for _ in 0..3 {
        // A chunked (streamed) body past the limit: the proxy cuts it off and answers 413.
        let mut stream = tokio::net::TcpStream::connect(proxy.local_addr())
            .await
            .unwrap();
        let chunk = "x".repeat(4096);
        let request = format!(
            "POST / HTTP/1.1\r\nHost: web.localhost\r\nTransfer-Encoding: chunked\r\n\
             Connection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
            chunk.len()
        );
        let _ = stream.write_all(request.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    }
    assert!(
        !proxy.ejected("app"),
        "the client's fault is not the instance's"
    );
    assert_eq!(get(&proxy).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_per_try_timeout_moves_a_request_to_a_faster_instance() {
    let stuck = instance("stuck", Mode::Slow(Duration::from_secs(30))).await;
    let fast = instance("fast", Mode::Ok).await;
    let policy = TrafficPolicy::builder()
        .timeout(Duration::from_secs(10))
        .retries(
            Retries::builder()
                .attempts(1)
                .per_try_timeout(Duration::from_millis(200))
                .build(),
        )
        .build()
        .unwrap();
    let proxy = proxy(&[&stuck, &fast], policy).await;
    let started = Instant::now();
    for _ in 0..6 {
        let reply = get(&proxy).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, "fast");
    }
    assert!(stuck.hits() >= 1);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_breaker_takes_a_failing_instance_out_then_tries_it_again() {
    let broken = instance("broken", Mode::Status(500)).await;
    let healthy = instance("healthy", Mode::Ok).await;
    let policy = TrafficPolicy::builder()
        .circuit_breaker(
            CircuitBreaker::builder()
                .consecutive_failures(3)
                .ejection(Duration::from_secs(1))
                .build(),
        )
        .build()
        .unwrap();
    let proxy = proxy(&[&broken, &healthy], policy).await;
    let mut errors = 0;
    for _ in 0..30 {
        if get(&proxy).await.status != StatusCode::OK {
            errors += 1;
        }
    }
    assert_eq!(errors, 3, "three failures in a row, then out");
    assert_eq!(broken.hits(), 3);
    assert!(proxy.ejected("broken"));
    assert!(!proxy.ejected("healthy"));

    // Back after the ejection, one failure takes it out again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(!proxy.ejected("broken"));
    for _ in 0..10 {
        get(&proxy).await;
    }
    assert_eq!(broken.hits(), 4);
    assert_eq!(proxy.ejections("broken"), 2);

    // A revision whose instances are all out still serves: the breaker never black-holes it.
    let alone = instance("alone", Mode::Status(500)).await;
    let policy = TrafficPolicy::builder()
        .circuit_breaker(CircuitBreaker::builder().consecutive_failures(1).build())
        .build()
        .unwrap();
    let proxy = self::proxy(&[&alone], policy).await;
    for _ in 0..3 {
        let reply = get(&proxy).await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(reply.body, "alone");
    }
    assert!(proxy.ejected("alone"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_in_flight_cap_are_refused_at_once() {
    let gated = instance("gated", Mode::Gated).await;
    let policy = TrafficPolicy::builder()
        .circuit_breaker(CircuitBreaker::builder().max_requests(2).build())
        .build()
        .unwrap();
    let proxy = proxy(&[&gated], policy).await;
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let proxy = proxy.clone();
            tokio::spawn(async move { get(&proxy).await.status })
        })
        .collect();
    while gated.hits() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    let refused = get(&proxy).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.by_proxy.as_deref(), Some("overloaded"));
    assert!(refused.body.contains("limit of 2"), "{}", refused.body);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        gated.hits(),
        2,
        "the refused request never reached the instance"
    );
    gated.gate.add_permits(3);
    for task in waiting {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(get(&proxy).await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_rate_limit_lets_a_burst_through_then_answers_429() {
    let app = instance("app", Mode::Ok).await;
    let policy = TrafficPolicy::builder()
        .rate_limit(RateLimit::builder().per_second(4).burst(6).build())
        .build()
        .unwrap();
    let proxy = proxy(&[&app], policy).await;
    let started = Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let reply = get(&proxy).await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(reply.by_proxy.as_deref(), Some("rate-limited"));
            assert_eq!(reply.retry_after.as_deref(), Some("1"));
        }
        statuses.push(reply.status.as_u16());
    }
    // Fast enough that no token came back in between (4 a second: one per 250 ms).
    if started.elapsed() < Duration::from_millis(250) {
        assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 429, 429, 429, 429]);
    }
    assert_eq!(app.hits(), statuses.iter().filter(|s| **s == 200).count());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(get(&proxy).await.status, StatusCode::OK, "tokens come back");
}

#[tokio::test]
async fn another_host_header_does_not_get_a_bucket_of_its_own() {
    let app = instance("app", Mode::Ok).await;
    let proxy = Proxy::bind("127.0.0.1:0".parse().unwrap(), ProxyConfig::default())
        .await
        .unwrap();
    let route = Route::weighted([Group::new("v1", 100, vec![app.upstream()])])
        .with_rate_limit(RateLimit::builder().per_second(1).burst(2).build());
    // As the local environment does for its only service: the default route is web's.
    proxy.set_table(
        RoutingTable::default()
            .with_host("web.localhost", route.clone())
            .with_default(route),
    );
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut statuses = Vec::new();
    for host in [
        "web.localhost",
        "web.localhost",
        "other",
        "127.0.0.1",
        "web.localhost",
    ] {
        let request = Request::get(format!("http://{}/", proxy.local_addr()))
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        statuses.push(client.request(request).await.unwrap().status().as_u16());
    }
    assert_eq!(statuses[..2], [200, 200]);
    assert!(
        statuses[2..].iter().filter(|s| **s == 200).count() <= 1,
        "one bucket for the route, whatever the Host: {statuses:?}"
    );
}
