//! HTTP/2 and gRPC through the local proxy, with real clients: hyper's HTTP/2 client (the h2
//! crate), curl (nghttp2) in the clear and over TLS with ALPN, and a real gRPC client and
//! server (Python's grpcio) for unary, streaming and failing calls under concurrency.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::task::{Context, Poll};

use bytes::Bytes;
use deploykit_core::{Protocol, TrafficPolicy};
use deploykit_local::proxy::{Group, Proxy, ProxyConfig, Route, RoutingTable, Upstream};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// A body of one data frame, then trailers `x-checksum: <len>`.
struct WithTrailers {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for WithTrailers {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(data) = this.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

/// An upstream speaking HTTP/1.1 and HTTP/2 (h2c by prior knowledge): answers
/// `<name> <version> <x-forwarded-host>`, with trailers.
async fn upstream(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| async move {
                    let forwarded = req
                        .headers()
                        .get("x-forwarded-host")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_owned();
                    let text = format!("{name} {:?} {forwarded}", req.version());
                    let mut trailers = HeaderMap::new();
                    trailers.insert("x-checksum", HeaderValue::from(text.len()));
                    Ok::<_, Infallible>(Response::new(WithTrailers {
                        data: Some(Bytes::from(text)),
                        trailers: Some(trailers),
                    }))
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn proxy_to(addr: SocketAddr, protocol: Protocol, config: ProxyConfig) -> Proxy {
    let proxy = Proxy::bind("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let policy = TrafficPolicy::builder().protocol(protocol).build().unwrap();
    proxy.set_table(RoutingTable::default().with_default(Route::weighted([
        Group::new("v1", 100, vec![Upstream::new("app-0", addr)]).with_policy(policy),
    ])));
    proxy
}

/// GET `/` through the proxy with hyper's HTTP/2-only client: the response's version, body
/// and trailers.
async fn h2_get(proxy: &Proxy) -> (Version, String, Option<HeaderMap>) {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<Bytes>>();
    let response = client
        .get(format!("http://{}/", proxy.local_addr()).parse().unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let version = response.version();
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    let body = String::from_utf8(collected.to_bytes().to_vec()).unwrap();
    (version, body, trailers)
}

#[tokio::test]
async fn http2_clients_reach_http1_and_h2c_instances_with_trailers() {
    let app = upstream("app").await;
    let host = |proxy: &Proxy| proxy.local_addr().to_string();

    // An HTTP/2 client in front of an HTTP/1.1 instance.
    let proxy = proxy_to(app, Protocol::Http, ProxyConfig::default()).await;
    let (version, body, _) = h2_get(&proxy).await;
    assert_eq!(version, Version::HTTP_2);
    assert_eq!(body, format!("app HTTP/1.1 {}", host(&proxy)));

    // The same client in front of an h2c instance: HTTP/2 end to end, trailers passed on.
    let proxy = proxy_to(app, Protocol::H2c, ProxyConfig::default()).await;
    let (version, body, trailers) = h2_get(&proxy).await;
    assert_eq!(version, Version::HTTP_2);
    assert_eq!(body, format!("app HTTP/2.0 {}", host(&proxy)));
    let trailers = trailers.expect("the instance's trailers reach the client");
    assert_eq!(trailers["x-checksum"], body.len().to_string().as_str());

    // An HTTP/1.1 client in front of the h2c instance still gets its answer.
    let reply = reqwest::get(format!("http://{}/", proxy.local_addr()))
        .await
        .unwrap();
    assert_eq!(reply.version(), reqwest::Version::HTTP_11);
    assert_eq!(
        reply.text().await.unwrap(),
        format!("app HTTP/2.0 {}", host(&proxy))
    );
}

/// `curl` with `args` against `url`: its output, which ends with the HTTP version it used.
fn curl(args: &[&str], url: &str) -> String {
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20"])
        .args(args)
        .args(["--write-out", " http/%{http_version}", url])
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "curl {args:?} {url}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_speaks_http2_in_the_clear_and_over_tls_by_alpn() {
    use deploykit_local::proxy::{LocalCa, ProxyTls};
    let app = upstream("app").await;

    let plain = proxy_to(app, Protocol::H2c, ProxyConfig::default()).await;
    let url = format!("http://{}/", plain.local_addr());
    let said = tokio::task::spawn_blocking(move || curl(&["--http2-prior-knowledge"], &url))
        .await
        .unwrap();
    assert!(said.starts_with("app HTTP/2.0"), "{said}");
    assert!(said.ends_with(" http/2"), "{said}");

    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::open_or_create(&dir.path().join("tls")).unwrap();
    let config = ProxyConfig {
        tls: Some(ProxyTls::issued_by(&ca, &[]).unwrap()),
        ..ProxyConfig::default()
    };
    let tls = proxy_to(app, Protocol::Http, config).await;
    let ca_pem = ca.cert_path().to_string_lossy().into_owned();
    let url = format!("https://localhost:{}/", tls.local_addr().port());
    let (h2, h1) = tokio::task::spawn_blocking(move || {
        (
            curl(&["--cacert", &ca_pem, "--http2"], &url),
            curl(&["--cacert", &ca_pem, "--http1.1"], &url),
        )
    })
    .await
    .unwrap();
    assert!(h2.ends_with(" http/2"), "ALPN chose h2: {h2}");
    assert!(h2.starts_with("app HTTP/1.1"), "{h2}");
    assert!(h1.ends_with(" http/1.1"), "{h1}");
}

/// A process killed when the test ends.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn script() -> String {
    format!("{}/tests/grpc_echo.py", env!("CARGO_MANIFEST_DIR"))
}

/// Starts the gRPC echo server of `name` on a free port; returns once it listens.
fn grpc_server(name: &str) -> (Process, SocketAddr) {
    use std::io::BufRead;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new("python3")
        .args([script(), "server".into(), port.to_string(), name.into()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(
        line.trim(),
        "ready",
        "the gRPC server did not start (is grpcio installed?)"
    );
    (Process(child), SocketAddr::from(([127, 0, 0, 1], port)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_client_reaches_grpc_servers_through_the_proxy() {
    let (_a, a) = grpc_server("a");
    let (_b, b) = grpc_server("b");
    let proxy = Proxy::bind("127.0.0.1:0".parse().unwrap(), ProxyConfig::default())
        .await
        .unwrap();
    let grpc = TrafficPolicy::builder()
        .protocol(Protocol::Grpc)
        .build()
        .unwrap();
    // A canary: 80 % to revision a, 20 % to b.
    proxy.set_table(RoutingTable::default().with_default(Route::weighted([
        Group::new("a", 80, vec![Upstream::new("a-0", a)]).with_policy(grpc.clone()),
        Group::new("b", 20, vec![Upstream::new("b-0", b)]).with_policy(grpc),
    ])));
    let target = proxy.local_addr().to_string();
    let calls = 400;
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([script(), "client".into(), target, calls.to_string()])
            .output()
            .expect("python3 runs")
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let said: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let unary: Vec<&str> = said["unary"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(unary.len(), calls);
    for (i, answer) in unary.iter().enumerate() {
        assert!(
            *answer == format!("a:call-{i}") || *answer == format!("b:call-{i}"),
            "call {i}: {answer}"
        );
    }
    let to_b = unary.iter().filter(|a| a.starts_with("b:")).count();
    assert_eq!(to_b, calls / 5, "the weights hold for gRPC calls");
    let stream: Vec<&str> = said["stream"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        stream,
        ["0:abcde", "1:abcde", "2:abcde", "3:abcde", "4:abcde"]
    );
    // The status travels in the trailers: the client sees the server's code and details.
    assert_eq!(said["fail"]["code"], "NOT_FOUND", "{said}");
    assert_eq!(said["fail"]["details"], "no such thing: widget");
    let stats = proxy.stats("a", std::time::Duration::from_secs(60));
    assert!(stats.requests >= 300, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_forwards_over_tls_to_a_proxy_it_trusts_and_to_no_other() {
    use deploykit_local::proxy::{LocalCa, ProxyTls, UpstreamTls};
    let app = upstream("app").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::open_or_create(&dir.path().join("ca")).unwrap();
    let tls = ProxyTls::issued_by(&ca, &[]).unwrap();
    let trust = tls
        .trust_pem()
        .expect("a local CA's certificate")
        .to_owned();
    let standby = proxy_to(
        app,
        Protocol::Http,
        ProxyConfig {
            tls: Some(tls),
            ..ProxyConfig::default()
        },
    )
    .await;
    let forwarding = |upstream: Upstream| async move {
        let proxy = Proxy::bind("127.0.0.1:0".parse().unwrap(), ProxyConfig::default())
            .await
            .unwrap();
        proxy.set_table(
            RoutingTable::default().with_default(Route::weighted([Group::new(
                "forward",
                100,
                vec![upstream],
            )])),
        );
        let reply = reqwest::get(format!("http://{}/", proxy.local_addr()))
            .await
            .unwrap();
        let by_proxy = reply
            .headers()
            .get("x-deploykit-proxy")
            .map(|v| v.to_str().unwrap().to_owned());
        (
            reply.status().as_u16(),
            by_proxy,
            reply.text().await.unwrap(),
        )
    };
    let to = standby.local_addr();

    let trusted = Upstream::new("standby", to).with_tls(UpstreamTls::trusting(&trust).unwrap());
    let (status, by_proxy, body) = forwarding(trusted).await;
    assert_eq!((status, by_proxy), (200, None), "{body}");
    assert!(body.starts_with("app HTTP/1.1"), "{body}");

    // Another CA's certificate: the handshake fails, nothing is sent.
    let other = LocalCa::open_or_create(&dir.path().join("other")).unwrap();
    let other = std::fs::read_to_string(other.cert_path()).unwrap();
    let stranger = Upstream::new("standby", to).with_tls(UpstreamTls::trusting(&other).unwrap());
    let (status, by_proxy, body) = forwarding(stranger).await;
    assert_eq!(
        (status, by_proxy.as_deref()),
        (502, Some("upstream-failed")),
        "{body}"
    );
    assert!(body.to_lowercase().contains("certificate"), "{body}");

    // Plain HTTP to a TLS proxy gets no answer either.
    let (status, _, _) = forwarding(Upstream::new("standby", to)).await;
    assert_eq!(status, 502);

    assert!(UpstreamTls::trusting("not pem").is_err());
}
