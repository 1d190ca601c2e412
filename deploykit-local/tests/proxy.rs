//! End-to-end tests of the built-in reverse proxy: real HTTP on 127.0.0.1 between a client,
//! the proxy and tiny upstream servers that answer with their own name.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use deploykit_local::proxy::{Group, Proxy, ProxyConfig, Route, RoutingTable, Upstream};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type TestBody = UnsyncBoxBody<Bytes, BoxError>;
type TestClient = Client<HttpConnector, TestBody>;

/// A test upstream. Paths: `/fail` → 500, `/headers` → the request headers (and hop-by-hop
/// response headers), `/echo` → the request body (also kept in `bodies`), `/count` → counts the
/// body bytes as they arrive, `/gate` → waits for a permit of `gate`; an `Upgrade` request →
/// 101 and an echo of the upgraded bytes; anything else → the upstream's name. With
/// `gate_all`, every request waits for a permit of `gate` first.
struct TestUpstream {
    name: String,
    addr: SocketAddr,
    hits: AtomicUsize,
    /// Requests carrying `x-deploykit-mirror: 1`.
    mirrored: AtomicUsize,
    bodies: Mutex<Vec<Bytes>>,
    body_bytes: AtomicU64,
    gate_all: bool,
    gate: Semaphore,
    entered: Notify,
    answered: AtomicUsize,
}

impl TestUpstream {
    fn upstream(&self, id: &str) -> Upstream {
        Upstream::new(id, self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn mirrored(&self) -> usize {
        self.mirrored.load(Ordering::SeqCst)
    }

    fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }
}

async fn upstream(name: &str) -> Arc<TestUpstream> {
    spawn_upstream(name, false).await
}

/// An upstream answering nothing before the test adds permits to its `gate`.
async fn gated_upstream(name: &str) -> Arc<TestUpstream> {
    spawn_upstream(name, true).await
}

async fn spawn_upstream(name: &str, gate_all: bool) -> Arc<TestUpstream> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let state = Arc::new(TestUpstream {
        name: name.to_owned(),
        addr: listener.local_addr().unwrap(),
        hits: AtomicUsize::new(0),
        mirrored: AtomicUsize::new(0),
        bodies: Mutex::new(Vec::new()),
        body_bytes: AtomicU64::new(0),
        gate_all,
        gate: Semaphore::new(0),
        entered: Notify::new(),
        answered: AtomicUsize::new(0),
    });
    let server = state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let state = server.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(answer(state, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    state
}

async fn answer(state: Arc<TestUpstream>, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    state.hits.fetch_add(1, Ordering::SeqCst);
    if req
        .headers()
        .get("x-deploykit-mirror")
        .is_some_and(|v| v == "1")
    {
        state.mirrored.fetch_add(1, Ordering::SeqCst);
    }
    if state.gate_all {
        state.entered.notify_one();
        state.gate.acquire().await.unwrap().forget();
        state.answered.fetch_add(1, Ordering::SeqCst);
    }
    let reply = |status: StatusCode, body: Vec<u8>| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
    };
    if req.headers().contains_key(http::header::UPGRADE) {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let (mut read, mut write) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            }
        });
        let mut response = reply(StatusCode::SWITCHING_PROTOCOLS, Vec::new());
        response
            .headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        response
            .headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        return response;
    }
    match req.uri().path() {
        "/fail" => reply(StatusCode::INTERNAL_SERVER_ERROR, state.name.clone().into()),
        "/headers" => {
            let mut text = String::new();
            for (name, value) in req.headers() {
                text.push_str(&format!("{name}: {}\n", value.to_str().unwrap()));
            }
            let mut response = reply(StatusCode::OK, text.into());
            let headers = response.headers_mut();
            headers.insert("connection", "x-resp".parse().unwrap());
            headers.insert("x-resp", "1".parse().unwrap());
            headers.insert("keep-alive", "timeout=5".parse().unwrap());
            response
        }
        "/echo" => match req.into_body().collect().await {
            Ok(body) => {
                let body = body.to_bytes();
                state.bodies.lock().unwrap().push(body.clone());
                reply(StatusCode::OK, body.to_vec())
            }
            Err(_) => reply(StatusCode::BAD_REQUEST, Vec::new()),
        },
        "/count" => {
            let mut body = req.into_body();
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(data) = frame.data_ref() {
                    state
                        .body_bytes
                        .fetch_add(data.len() as u64, Ordering::SeqCst);
                }
            }
            let count = state.body_bytes.load(Ordering::SeqCst);
            reply(StatusCode::OK, count.to_string().into())
        }
        "/gate" => {
            state.entered.notify_one();
            state.gate.acquire().await.unwrap().forget();
            state.answered.fetch_add(1, Ordering::SeqCst);
            reply(StatusCode::OK, state.name.clone().into())
        }
        _ => reply(StatusCode::OK, state.name.clone().into()),
    }
}

/// An upstream that accepts connections and never answers.
async fn silent_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

/// An address with nothing listening.
async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

async fn proxy(config: ProxyConfig) -> Proxy {
    Proxy::bind("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap()
}

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

fn bytes_body(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

async fn send(
    client: &TestClient,
    proxy: &Proxy,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: TestBody,
) -> Result<Reply, BoxError> {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", proxy.local_addr()))
        .header("host", host);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client.request(request.body(body)?).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

async fn get(
    client: &TestClient,
    proxy: &Proxy,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    send(client, proxy, "GET", host, path, headers, bytes_body(""))
        .await
        .unwrap()
}

/// Sends `n` GETs and counts the responding upstreams by body.
async fn tally(
    client: &TestClient,
    proxy: &Proxy,
    n: usize,
    headers: &[(&str, &str)],
) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let reply = get(client, proxy, "web.localhost", "/", headers).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        *counts.entry(reply.body).or_default() += 1;
    }
    counts
}

fn only(group: &str, upstream: Upstream) -> RoutingTable {
    RoutingTable::default().with_default(Route::weighted([Group::new(group, 100, vec![upstream])]))
}

/// Reads an HTTP response head from a raw stream.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.unwrap();
        assert_eq!(n, 1, "connection closed inside the response head: {head:?}");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test]
async fn weights_spread_exactly() {
    let (a, b, c) = (
        upstream("a").await,
        upstream("b").await,
        upstream("c").await,
    );
    let proxy = proxy(ProxyConfig::default()).await;
    proxy.set_table(RoutingTable::default().with_default(Route::weighted([
        Group::new("a", 75, vec![a.upstream("a1")]),
        Group::new("b", 25, vec![b.upstream("b1")]),
        Group::new("c", 0, vec![c.upstream("c1")]),
    ])));
    let counts = tally(&client(), &proxy, 1000, &[]).await;
    assert_eq!(counts.get("a"), Some(&750));
    assert_eq!(counts.get("b"), Some(&250));
    assert_eq!(counts.get("c"), None);
    assert_eq!(c.hits(), 0);
}

#[tokio::test]
async fn header_route_overrides_weights() {
    let (stable, canary) = (upstream("stable").await, upstream("canary").await);
    let proxy = proxy(ProxyConfig::default()).await;
    proxy.set_table(
        RoutingTable::default().with_default(
            Route::weighted([
                Group::new("stable", 100, vec![stable.upstream("s1")]),
                Group::new("canary", 0, vec![canary.upstream("c1")]),
            ])
            .with_header("X-Canary", "yes", "canary"),
        ),
    );
    let client = client();
    let matching = tally(&client, &proxy, 20, &[("x-canary", "yes")]).await;
    assert_eq!(matching, HashMap::from([("canary".to_owned(), 20)]));
    let other = tally(&client, &proxy, 20, &[("x-canary", "no")]).await;
    assert_eq!(other, HashMap::from([("stable".to_owned(), 20)]));
    let none = tally(&client, &proxy, 20, &[]).await;
    assert_eq!(none, HashMap::from([("stable".to_owned(), 20)]));
}

#[tokio::test]
async fn sticky_cookie_sticks_until_weight_zero() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let config = ProxyConfig {
        sticky_cookie: Some("dk_rev".into()),
        ..ProxyConfig::default()
    };
    let proxy = proxy(config).await;
    let table = |weight_b: u32| {
        RoutingTable::default().with_default(Route::weighted([
            Group::new("a", 100 - weight_b, vec![a.upstream("a1")]),
            Group::new("b", weight_b, vec![b.upstream("b1")]),
        ]))
    };
    proxy.set_table(table(50));
    let client = client();

    // Routed by weight: the response names the group that served it.
    for _ in 0..4 {
        let reply = get(&client, &proxy, "web.localhost", "/", &[]).await;
        let cookie = reply.headers["set-cookie"].to_str().unwrap();
        assert_eq!(
            cookie,
            format!("dk_rev={}; Path=/; HttpOnly; SameSite=Lax", reply.body)
        );
    }

    // Carrying the cookie: always that group, and no new cookie.
    for _ in 0..20 {
        let reply = get(
            &client,
            &proxy,
            "web.localhost",
            "/",
            &[("cookie", "theme=dark; dk_rev=b")],
        )
        .await;
        assert_eq!(reply.body, "b");
        assert!(!reply.headers.contains_key("set-cookie"));
    }

    // Rolled back: weight 0 wins over the cookie.
    proxy.set_table(table(0));
    let counts = tally(&client, &proxy, 20, &[("cookie", "dk_rev=b")]).await;
    assert_eq!(counts, HashMap::from([("a".to_owned(), 20)]));
    let reply = get(
        &client,
        &proxy,
        "web.localhost",
        "/",
        &[("cookie", "dk_rev=b")],
    )
    .await;
    assert_eq!(
        reply.headers["set-cookie"],
        "dk_rev=a; Path=/; HttpOnly; SameSite=Lax"
    );
}

#[tokio::test]
async fn host_routes_and_default() {
    let (web, other) = (upstream("web").await, upstream("other").await);
    let proxy = proxy(ProxyConfig::default()).await;
    let client = client();

    let reply = get(&client, &proxy, "web.localhost", "/", &[]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);

    let web_route = Route::weighted([Group::new("web", 100, vec![web.upstream("w1")])]);
    let other_route = Route::weighted([Group::new("other", 100, vec![other.upstream("o1")])]);
    proxy.set_table(
        RoutingTable::default()
            .with_host("web.localhost", web_route.clone())
            .with_default(other_route),
    );
    for host in ["web.localhost:8080", "WEB.localhost", "web.localhost"] {
        assert_eq!(get(&client, &proxy, host, "/", &[]).await.body, "web");
    }
    for host in ["api.localhost", "preview.web.localhost:8080", "127.0.0.1"] {
        assert_eq!(get(&client, &proxy, host, "/", &[]).await.body, "other");
    }

    proxy.set_table(RoutingTable::default().with_host("web.localhost", web_route));
    assert_eq!(
        get(&client, &proxy, "web.localhost:8080", "/", &[])
            .await
            .body,
        "web"
    );
    let reply = get(&client, &proxy, "api.localhost:8080", "/", &[]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply.body.contains("api.localhost"), "{}", reply.body);

    // A route whose groups have no instances.
    proxy.set_table(
        RoutingTable::default().with_default(Route::weighted([Group::new("web", 100, Vec::new())])),
    );
    let reply = get(&client, &proxy, "web.localhost", "/", &[]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply.body.contains("web.localhost"), "{}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_swap_under_load() {
    const TOTAL: usize = 2000;
    let (a, b) = (upstream("a").await, upstream("b").await);
    let proxy = proxy(ProxyConfig::default()).await;
    let table_a = only("a", a.upstream("a1"));
    let table_b = only("b", b.upstream("b1"));
    proxy.set_table(table_a.clone());

    let issued = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let (drained_tx, drained_rx) = watch::channel(false);
    let client = client();
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (proxy, client, issued, failures) = (
            proxy.clone(),
            client.clone(),
            issued.clone(),
            failures.clone(),
        );
        let mut drained = drained_rx.clone();
        clients.push(tokio::spawn(async move {
            loop {
                let n = issued.fetch_add(1, Ordering::SeqCst);
                if n >= TOTAL {
                    break;
                }
                // The last quarter goes out only after A was swapped out and drained.
                if n >= TOTAL * 3 / 4 {
                    drained.wait_for(|d| *d).await.unwrap();
                }
                let reply = send(
                    &client,
                    &proxy,
                    "GET",
                    "web.localhost",
                    "/",
                    &[],
                    bytes_body(""),
                )
                .await;
                if !matches!(
                    reply,
                    Ok(Reply {
                        status: StatusCode::OK,
                        ..
                    })
                ) {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }

    let mut on_a = true;
    while issued.load(Ordering::SeqCst) < TOTAL / 2 {
        on_a = !on_a;
        proxy.set_table(if on_a {
            table_a.clone()
        } else {
            table_b.clone()
        });
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    proxy.set_table(table_b);
    assert!(proxy.drain("a1", Duration::from_secs(30)).await);
    let a_hits_at_drain = a.hits();
    drained_tx.send_replace(true);

    for client in clients {
        client.await.unwrap();
    }
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    assert_eq!(a.hits(), a_hits_at_drain, "a request reached A after drain");
    assert_eq!(a.hits() + b.hits(), TOTAL);
    assert!(a.hits() > 0 && b.hits() > 0);
    assert_eq!(proxy.in_flight("a1"), 0);
    assert_eq!(proxy.in_flight("b1"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_slow_request() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let proxy = proxy(ProxyConfig::default()).await;
    proxy.set_table(only("a", a.upstream("a1")));
    let client = client();

    let slow = {
        let (client, proxy) = (client.clone(), proxy.clone());
        tokio::spawn(async move { get(&client, &proxy, "web.localhost", "/gate", &[]).await })
    };
    a.entered.notified().await;
    assert_eq!(proxy.in_flight("a1"), 1);

    proxy.set_table(only("b", b.upstream("b1")));
    assert_eq!(
        get(&client, &proxy, "web.localhost", "/", &[]).await.body,
        "b"
    );
    // The upstream cannot answer before the gate opens.
    assert!(!proxy.drain("a1", Duration::from_millis(50)).await);
    let drain = {
        let proxy = proxy.clone();
        tokio::spawn(async move { proxy.drain("a1", Duration::from_secs(30)).await })
    };
    tokio::task::yield_now().await;
    assert!(!drain.is_finished());
    assert_eq!(a.answered.load(Ordering::SeqCst), 0);

    a.gate.add_permits(1);
    assert!(drain.await.unwrap());
    assert_eq!(a.answered.load(Ordering::SeqCst), 1);
    let reply = slow.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "a");
    assert_eq!(proxy.in_flight("a1"), 0);
}

#[tokio::test]
async fn body_limits() {
    let up = upstream("up").await;
    let proxy = proxy(ProxyConfig::default()).await;
    proxy.set_table(only("up", up.upstream("u1")));
    let limit = ProxyConfig::default().max_body_bytes;
    let eleven_mib = 11 * 1024 * 1024;

    // Declared too large: refused before reading the body or contacting the upstream.
    let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
    stream
        .write_all(
            format!(
                "POST /count HTTP/1.1\r\nHost: web.localhost\r\nContent-Length: {eleven_mib}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert_eq!(up.hits(), 0);

    // Chunked and too large: cut off, never forwarded in full.
    let chunked = Chunks {
        chunk: Bytes::from(vec![b'x'; 64 * 1024]),
        remaining: eleven_mib / (64 * 1024),
    };
    let result = send(
        &client(),
        &proxy,
        "POST",
        "web.localhost",
        "/count",
        &[],
        chunked.boxed_unsync(),
    )
    .await;
    if let Ok(reply) = &result {
        assert_eq!(
            reply.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{}",
            reply.body
        );
    }
    assert!(up.body_bytes.load(Ordering::SeqCst) <= limit);

    // 1 MiB is forwarded intact.
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let request = Request::post(format!("http://{}/echo", proxy.local_addr()))
        .header("host", "web.localhost")
        .body(bytes_body(payload.clone()))
        .unwrap();
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let echoed = response.into_body().collect().await.unwrap().to_bytes();
    assert!(echoed == payload, "echoed body differs");
}

/// A chunked body of `remaining` copies of `chunk`.
struct Chunks {
    chunk: Bytes,
    remaining: usize,
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        self.remaining -= 1;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.clone()))))
    }
}

#[tokio::test]
async fn hop_by_hop_and_forwarded_headers() {
    let up = upstream("up").await;
    let proxy = proxy(ProxyConfig::default()).await;
    proxy.set_table(only("up", up.upstream("u1")));
    let reply = get(
        &client(),
        &proxy,
        "web.localhost:8080",
        "/headers?x=1",
        &[
            ("connection", "x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-kept", "yes"),
        ],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen: HashMap<&str, &str> = reply
        .body
        .lines()
        .filter_map(|l| l.split_once(": "))
        .collect();
    for name in [
        "connection",
        "x-secret",
        "keep-alive",
        "proxy-connection",
        "te",
    ] {
        assert!(!seen.contains_key(name), "upstream saw {name}: {seen:?}");
    }
    assert_eq!(seen["x-kept"], "yes");
    assert_eq!(seen["host"], "web.localhost:8080");
    assert_eq!(seen["x-forwarded-host"], "web.localhost:8080");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
    // And on the way back.
    assert!(!reply.headers.contains_key("x-resp"));
    assert!(!reply.headers.contains_key("keep-alive"));
}

#[tokio::test]
async fn connect_failure_is_retried() {
    let live = upstream("live").await;
    let proxy = proxy(ProxyConfig::default()).await;
    proxy.set_table(
        RoutingTable::default().with_default(Route::weighted([Group::new(
            "g",
            100,
            vec![
                Upstream::new("dead1", dead_addr().await),
                live.upstream("live1"),
            ],
        )])),
    );
    let client = client();
    let counts = tally(&client, &proxy, 20, &[]).await;
    assert_eq!(counts, HashMap::from([("live".to_owned(), 20)]));
    // Small bodies are buffered and resent too.
    for _ in 0..10 {
        let reply = send(
            &client,
            &proxy,
            "POST",
            "web.localhost",
            "/echo",
            &[],
            bytes_body("payload"),
        )
        .await
        .unwrap();
        assert_eq!(reply.body, "payload");
    }
    assert_eq!(proxy.in_flight("dead1"), 0);
    assert_eq!(proxy.stats("g", Duration::from_secs(60)).errors, 0);

    // No other instance: 502 naming the dead one.
    proxy.set_table(only("g", Upstream::new("dead1", dead_addr().await)));
    let reply = get(&client, &proxy, "web.localhost", "/", &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(reply.body.contains("dead1"), "{}", reply.body);
}

#[tokio::test]
async fn upstream_timeout_gives_504() {
    let config = ProxyConfig {
        upstream_timeout: Duration::from_millis(200),
        ..ProxyConfig::default()
    };
    let proxy = proxy(config).await;
    proxy.set_table(only("slow", Upstream::new("s1", silent_upstream().await)));
    let reply = get(&client(), &proxy, "web.localhost", "/", &[]).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(proxy.in_flight("s1"), 0);
    let stats = proxy.stats("slow", Duration::from_secs(60));
    assert_eq!((stats.requests, stats.errors), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_tunnel_holds_in_flight() {
    let up = upstream("ws").await;
    let proxy = proxy(ProxyConfig::default()).await;
    proxy.set_table(only("ws", up.upstream("ws1")));

    let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
    stream
        .write_all(
            b"GET /socket HTTP/1.1\r\nHost: web.localhost\r\nConnection: Upgrade\r\n\
              Upgrade: websocket\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head(&mut stream).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");

    for message in [&b"hello"[..], b"second message"] {
        stream.write_all(message).await.unwrap();
        let mut echoed = vec![0; message.len()];
        stream.read_exact(&mut echoed).await.unwrap();
        assert_eq!(echoed, message);
        assert_eq!(proxy.in_flight("ws1"), 1);
    }

    drop(stream);
    assert!(proxy.drain("ws1", Duration::from_secs(30)).await);
    assert_eq!(proxy.in_flight("ws1"), 0);
}

#[tokio::test]
async fn stats_count_requests_and_errors() {
    let up = upstream("s").await;
    let proxy = proxy(ProxyConfig::default()).await;
    proxy.set_table(only("rev-1", up.upstream("s1")));
    let client = client();
    for i in 0..10u32 {
        let path = if i.is_multiple_of(3) { "/fail" } else { "/" };
        get(&client, &proxy, "web.localhost", path, &[]).await;
    }
    let stats = proxy.stats("rev-1", Duration::from_secs(60));
    assert_eq!(stats.requests, 10);
    assert_eq!(stats.errors, 4);
    assert!(stats.latency_p50.is_some());
    assert!(stats.latency_p99 >= stats.latency_p50);
    assert_eq!(
        proxy.stats("other", Duration::from_secs(60)),
        Default::default()
    );
}

#[tokio::test]
async fn shutdown_stops_listening() {
    let up = upstream("up").await;
    let proxy = proxy(ProxyConfig::default()).await;
    proxy.set_table(only("up", up.upstream("u1")));
    assert_eq!(
        get(&client(), &proxy, "web.localhost", "/", &[]).await.body,
        "up"
    );
    proxy.shutdown().await;
    assert!(TcpStream::connect(proxy.local_addr()).await.is_err());
}

/// Group "stable" (weight 100) on `primary`, mirrored at `percent` to group "shadow" (weight 0)
/// on `shadow`.
fn mirrored(primary: Upstream, shadow: Vec<Upstream>, percent: u32) -> RoutingTable {
    RoutingTable::default().with_default(
        Route::weighted([
            Group::new("stable", 100, vec![primary]),
            Group::new("shadow", 0, shadow),
        ])
        .with_mirror("shadow", percent),
    )
}

#[tokio::test]
async fn mirror_copies_an_exact_share() {
    let (a, m) = (upstream("a").await, upstream("m").await);
    let proxy = proxy(ProxyConfig::default()).await;
    proxy.set_table(mirrored(a.upstream("a1"), vec![m.upstream("m1")], 10));
    let client = client();
    let window = Duration::from_secs(60);

    let counts = tally(&client, &proxy, 1000, &[]).await;
    assert_eq!(counts, HashMap::from([("a".to_owned(), 1000)]));
    assert!(proxy.drain("m1", Duration::from_secs(10)).await);
    assert_eq!(m.hits(), 100);
    assert_eq!(m.mirrored(), 100);
    assert_eq!((a.hits(), a.mirrored()), (1000, 0));
    assert_eq!(proxy.mirror_skipped(), 0);
    // Copies count for the mirror group only; the primary is counted once per request.
    let shadow = proxy.stats("shadow", window);
    assert_eq!((shadow.requests, shadow.errors), (100, 0));
    assert!(shadow.latency_p50.is_some());
    assert_eq!(proxy.stats("stable", window).requests, 1000);

    // 0 %: never.
    proxy.set_table(mirrored(a.upstream("a1"), vec![m.upstream("m1")], 0));
    tally(&client, &proxy, 100, &[]).await;
    assert!(proxy.drain("m1", Duration::from_secs(10)).await);
    assert_eq!(m.hits(), 100);

    // A mirror group without instances: no copy, clients unaffected.
    proxy.set_table(mirrored(a.upstream("a1"), Vec::new(), 100));
    let counts = tally(&client, &proxy, 20, &[]).await;
    assert_eq!(counts, HashMap::from([("a".to_owned(), 20)]));

    // Requests routed to the mirror group by weight are not copied to it again.
    proxy.set_table(
        RoutingTable::default().with_default(
            Route::weighted([
                Group::new("stable", 50, vec![a.upstream("a1")]),
                Group::new("shadow", 50, vec![m.upstream("m1")]),
            ])
            .with_mirror("shadow", 100),
        ),
    );
    let counts = tally(&client, &proxy, 200, &[]).await;
    assert_eq!(
        counts,
        HashMap::from([("a".to_owned(), 100), ("m".to_owned(), 100)])
    );
    assert!(proxy.drain("m1", Duration::from_secs(10)).await);
    assert_eq!(m.hits(), 100 + 200);
    assert_eq!(m.mirrored(), 100 + 100);
    assert_eq!(proxy.stats("shadow", window).requests, 100 + 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_never_delays_clients_and_is_bounded() {
    let (a, m) = (upstream("a").await, gated_upstream("m").await);
    let proxy = proxy(ProxyConfig::default()).await;
    proxy.set_table(mirrored(a.upstream("a1"), vec![m.upstream("m1")], 100));
    let client = client();

    for _ in 0..70 {
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            get(&client, &proxy, "web.localhost", "/", &[]),
        )
        .await
        .expect("a client request waited for its mirror copy");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, "a");
    }
    // Every client was answered while all copies were still held at the mirror's gate; 64 of
    // them at most, the rest skipped.
    assert_eq!(m.answered(), 0);
    assert_eq!(proxy.in_flight("m1"), 64);
    assert_eq!(proxy.mirror_skipped(), 6);
    assert_eq!(proxy.stats("shadow", Duration::from_secs(60)).requests, 0);

    m.gate.add_permits(64);
    assert!(proxy.drain("m1", Duration::from_secs(10)).await);
    assert_eq!((m.hits(), m.answered(), m.mirrored()), (64, 64, 64));
    assert_eq!(proxy.stats("shadow", Duration::from_secs(60)).requests, 64);
    assert_eq!(proxy.stats("stable", Duration::from_secs(60)).requests, 70);
}

#[tokio::test]
async fn mirror_copy_times_out() {
    let a = upstream("a").await;
    let config = ProxyConfig {
        upstream_timeout: Duration::from_millis(500),
        ..ProxyConfig::default()
    };
    let proxy = proxy(config).await;
    let silent = Upstream::new("s1", silent_upstream().await);
    proxy.set_table(mirrored(a.upstream("a1"), vec![silent], 100));
    let counts = tally(&client(), &proxy, 10, &[]).await;
    assert_eq!(counts, HashMap::from([("a".to_owned(), 10)]));
    assert!(proxy.drain("s1", Duration::from_secs(10)).await);
    let shadow = proxy.stats("shadow", Duration::from_secs(60));
    assert_eq!((shadow.requests, shadow.errors), (10, 10));
    let stable = proxy.stats("stable", Duration::from_secs(60));
    assert_eq!((stable.requests, stable.errors), (10, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_copies_small_bodies_only() {
    let (a, m) = (upstream("a").await, upstream("m").await);
    let proxy = proxy(ProxyConfig::default()).await;
    proxy.set_table(mirrored(a.upstream("a1"), vec![m.upstream("m1")], 100));
    let client = client();
    let post = |path: &'static str, body: TestBody| {
        send(&client, &proxy, "POST", "web.localhost", path, &[], body)
    };

    let reply = post("/echo", bytes_body("payload")).await.unwrap();
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "payload")
    );
    assert!(proxy.drain("m1", Duration::from_secs(10)).await);
    assert_eq!(*m.bodies.lock().unwrap(), [Bytes::from("payload")]);
    assert_eq!(m.mirrored(), 1);

    // Larger than the buffering limit, and chunked: streamed, not copied.
    let big = vec![b'x'; 100 * 1024];
    let reply = post("/echo", bytes_body(big.clone())).await.unwrap();
    assert_eq!(reply.body.len(), big.len());
    let chunks = Chunks {
        chunk: Bytes::from_static(b"chunk"),
        remaining: 4,
    };
    let reply = post("/count", chunks.boxed_unsync()).await.unwrap();
    assert_eq!(reply.body, "20");

    // Upgrade requests are not copied either.
    let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
    stream
        .write_all(
            b"GET /socket HTTP/1.1\r\nHost: web.localhost\r\nConnection: Upgrade\r\n\
              Upgrade: websocket\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    drop(stream);

    assert!(proxy.drain("m1", Duration::from_secs(10)).await);
    assert_eq!(m.hits(), 1);
    assert_eq!(a.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_mirror_copy() {
    let (a, m) = (upstream("a").await, gated_upstream("m").await);
    let proxy = proxy(ProxyConfig::default()).await;
    proxy.set_table(mirrored(a.upstream("a1"), vec![m.upstream("m1")], 100));
    let client = client();

    assert_eq!(
        get(&client, &proxy, "web.localhost", "/", &[]).await.body,
        "a"
    );
    m.entered.notified().await;
    assert_eq!(proxy.in_flight("m1"), 1);

    // Out of the table, the mirror instance is drained like any other.
    proxy.set_table(only("stable", a.upstream("a1")));
    assert_eq!(
        get(&client, &proxy, "web.localhost", "/", &[]).await.body,
        "a"
    );
    assert!(!proxy.drain("m1", Duration::from_millis(50)).await);
    let drain = {
        let proxy = proxy.clone();
        tokio::spawn(async move { proxy.drain("m1", Duration::from_secs(30)).await })
    };
    tokio::task::yield_now().await;
    assert!(!drain.is_finished());

    m.gate.add_permits(1);
    assert!(drain.await.unwrap());
    assert_eq!((m.hits(), m.answered()), (1, 1));
    assert_eq!(proxy.in_flight("m1"), 0);
    assert_eq!(proxy.stats("shadow", Duration::from_secs(60)).requests, 1);
}

#[tokio::test]
async fn a_paused_proxy_holds_requests_until_resumed() {
    let up = upstream("up").await;
    let proxy = Proxy::bind_paused("127.0.0.1:0".parse().unwrap(), ProxyConfig::default())
        .await
        .unwrap();
    let request = tokio::spawn({
        let proxy = proxy.clone();
        async move { get(&client(), &proxy, "web.localhost", "/", &[]).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !request.is_finished(),
        "answered (from the empty table) before resume"
    );
    proxy.set_table(only("up", up.upstream("u1")));
    proxy.resume();
    let reply = request.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body, "up");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_paused_proxy_shuts_down_without_resuming() {
    let proxy = Proxy::bind_paused("127.0.0.1:0".parse().unwrap(), ProxyConfig::default())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), proxy.shutdown())
        .await
        .expect("shutdown of a paused proxy returns");
    assert!(TcpStream::connect(proxy.local_addr()).await.is_err());
}

/// Seen: the proxy spoke HTTP only. With a certificate from its local CA it terminates TLS: a
/// client that trusts `ca.pem` gets its answers over HTTPS; one that does not is refused in
/// the handshake; plain HTTP to the TLS port gets nothing; the CA is made once and reused, so
/// a client trusts it across restarts.
#[tokio::test]
async fn tls_is_terminated_with_a_certificate_of_the_local_ca() {
    use deploykit_local::proxy::{LocalCa, ProxyTls};
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("tls");
    let ca = LocalCa::open_or_create(&ca_dir).unwrap();
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(ca_dir.join("ca-key.pem"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(key_mode & 0o777, 0o600, "the CA key is the owner's only");
    let config = ProxyConfig {
        tls: Some(ProxyTls::issued_by(&ca, &["web.localhost".into()]).unwrap()),
        ..ProxyConfig::default()
    };
    let web = upstream("web").await;
    let proxy = proxy(config).await;
    proxy.set_table(only("web", web.upstream("w1")));
    let port = proxy.local_addr().port();

    let ca_pem = std::fs::read(ca.cert_path()).unwrap();
    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem).unwrap())
        .resolve("web.localhost", proxy.local_addr())
        .build()
        .unwrap();
    for url in [
        format!("https://localhost:{port}/hello"),
        format!("https://127.0.0.1:{port}/hello"),
        format!("https://web.localhost:{port}/hello"),
    ] {
        let response = trusting.get(&url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{url}");
    }
    assert_eq!(web.hits(), 3);

    // A client without the CA does not get through the handshake.
    let stranger = reqwest::Client::builder().build().unwrap();
    let e = stranger
        .get(format!("https://localhost:{port}/hello"))
        .send()
        .await
        .unwrap_err();
    assert!(e.is_connect(), "{e:?}");
    // Plain HTTP on the TLS port is no request.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/hello"))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");
    assert_eq!(web.hits(), 3);

    // Opened again, the CA is the same: the old ca.pem trusts the new certificate.
    drop(proxy);
    let again = LocalCa::open_or_create(&ca_dir).unwrap();
    assert_eq!(std::fs::read(again.cert_path()).unwrap(), ca_pem);
    let config = ProxyConfig {
        tls: Some(ProxyTls::issued_by(&again, &[]).unwrap()),
        ..ProxyConfig::default()
    };
    let proxy = self::proxy(config).await;
    proxy.set_table(only("web", web.upstream("w1")));
    let response = trusting
        .get(format!(
            "https://localhost:{}/hello",
            proxy.local_addr().port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn tls_files_that_are_not_pem_are_named() {
    use deploykit_local::proxy::ProxyTls;
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, "not a certificate").unwrap();
    std::fs::write(&key, "not a key").unwrap();
    let e = ProxyTls::from_pem_files(&cert, &key).unwrap_err();
    assert!(
        e.to_string().contains("cert.pem") && e.to_string().contains("holds no PEM certificate"),
        "{e}"
    );
    let e = ProxyTls::from_pem_files(&dir.path().join("missing.pem"), &key).unwrap_err();
    assert!(e.to_string().contains("missing.pem"), "{e}");
}
