//! Forwarding one request: body limit, choice of an instance under an in-flight guard, header
//! rewriting, retry after a failed connection, upgraded tunnels; small requests are handed to
//! [mirroring](super::mirror) once their instance is chosen.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use deploykit_core::Protocol;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version, request};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::policy::UpstreamState;
use super::route::{Pick, Retry, Snapshot};
use super::{Inner, Upstream, UpstreamTls};

/// HTTP/1.1 over TLS to an upstream.
pub(super) type TlsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    ProxyBody,
>;

/// Boxed error of the bodies the proxy passes on.
pub(super) type BoxError = Box<dyn StdError + Send + Sync>;
/// Request and response body type on both sides of the proxy.
pub(super) type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Request bodies up to this size (by `Content-Length`) are buffered, so that the request can
/// be sent again after a failed connection attempt.
const RETRY_BUFFER_LIMIT: u64 = 64 * 1024;

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// Marks the proxy's own responses, with the reason.
const X_DEPLOYKIT_PROXY: HeaderName = HeaderName::from_static("x-deploykit-proxy");

/// States of a streamed request body, as seen once the upstream request failed.
const BODY_OK: u8 = 0;
const BODY_TOO_LARGE: u8 = 1;
const BODY_FAILED: u8 = 2;

/// Counts one request in its upstream's in-flight counter until dropped.
pub(super) struct InFlightGuard(Arc<UpstreamState>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An instance chosen for a request, with the request counted in its in-flight counter.
pub(super) struct Lease {
    pub(super) pick: Pick,
    pub(super) guard: InFlightGuard,
}

impl Inner {
    /// Sends `request` to `upstream` in `protocol` (over TLS when the upstream serves TLS).
    pub(super) fn send(
        &self,
        upstream: &Upstream,
        protocol: Protocol,
        request: Request<ProxyBody>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        match &upstream.tls {
            Some(tls) => self.tls_client(tls).request(request),
            None if protocol.is_http2() => self.client_h2.request(request),
            None => self.client.request(request),
        }
    }

    /// The client trusting what `tls` trusts (made on first use; a handful at most: one per
    /// environment forwarded to).
    fn tls_client(&self, tls: &UpstreamTls) -> TlsClient {
        let mut clients = super::lock(&self.clients_tls);
        if let Some((_, client)) = clients.iter().find(|(t, _)| t == tls) {
            return client.clone();
        }
        let mut tcp = self.connector.clone();
        // The TLS connector connects to https:// addresses through it.
        tcp.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls.config).clone())
            .https_only()
            .enable_http1()
            .wrap_connector(tcp);
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_timer(hyper_util::rt::TokioTimer::new())
                .pool_idle_timeout(std::time::Duration::from_secs(4))
                .build(connector);
        clients.push((tls.clone(), client.clone()));
        client
    }

    /// Picks an instance for a request and takes its in-flight guard.
    ///
    /// The pick comes from a table snapshot that may already be replaced. So after counting
    /// the request, the current table is loaded again: when the instance (with this very
    /// counter) is no longer in it, the count is undone and the pick repeated on the fresh
    /// table. A `drain` that saw the counter at 0 after `set_table` therefore never misses a
    /// request that goes on to that instance.
    fn acquire(&self, host: &str, headers: &HeaderMap, retry: Option<&Retry<'_>>) -> Option<Lease> {
        let sticky = self.config.sticky_cookie.as_deref();
        self.lease(|snapshot| snapshot.route(host)?.pick(headers, sticky, retry))
    }

    /// Takes the in-flight guard of the instance `choose` picks from the current table, with
    /// the re-check described at [`Inner::acquire`].
    pub(super) fn lease(&self, choose: impl Fn(&Snapshot) -> Option<Pick>) -> Option<Lease> {
        let mut snapshot = self.current.load_full();
        loop {
            let pick = choose(&snapshot)?;
            pick.counter.in_flight.fetch_add(1, Ordering::SeqCst);
            let guard = InFlightGuard(pick.counter.clone());
            let fresh = self.current.load_full();
            if fresh.holds(&pick.upstream.id, &pick.counter) {
                return Some(Lease { pick, guard });
            }
            drop(guard);
            snapshot = fresh;
        }
    }
}

enum Payload {
    /// Small body read up front; can be sent again.
    Buffered(Bytes),
    /// Large or chunked body, passed through once.
    Streamed(Option<LimitedBody>),
}

/// Serves one request from a client.
pub(super) async fn handle(
    inner: Arc<Inner>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let host = request_host(&req);
    let max = inner.config.max_body_bytes;
    let declared = req.body().size_hint().exact();
    if declared.is_some_and(|len| len > max) {
        return too_large(max);
    }
    let upgrade = is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let client_version = req.version();
    let (parts, body) = req.into_parts();
    let body_state = Arc::new(AtomicU8::new(BODY_OK));
    let mut payload = match declared {
        Some(len) if len <= RETRY_BUFFER_LIMIT => match body.collect().await {
            Ok(collected) => Payload::Buffered(collected.to_bytes()),
            Err(error) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "bad-request",
                    format!("reading the request body failed: {error}\n"),
                );
            }
        },
        _ => Payload::Streamed(Some(LimitedBody {
            inner: body,
            remaining: max,
            state: body_state.clone(),
        })),
    };

    match inner.current.load().route(&host).map(|r| r.limiter.clone()) {
        None => {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "no-route",
                format!("no route for host {host}\n"),
            );
        }
        Some(Some(limiter)) => {
            if let Err(wait) = limiter.admit() {
                return rate_limited(&host, wait);
            }
        }
        Some(None) => {}
    }
    let Some(mut lease) = inner.acquire(&host, &parts.headers, None) else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-instance",
            format!("no instance available for host {host}\n"),
        );
    };
    let policy = lease.pick.policy.clone();
    if let Some(max) = policy.overloaded() {
        inner
            .stats
            .record(&lease.pick.group, true, started.elapsed());
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!(
                "revision {} of {host} is serving its limit of {max} requests at once\n",
                lease.pick.group
            ),
        );
    }
    if !upgrade && let Payload::Buffered(bytes) = &payload {
        inner.mirror(&host, &lease.pick.group, &parts, bytes, peer);
    }
    let by_weight = lease.pick.by_weight;
    let timeout = policy.timeout.unwrap_or(inner.config.upstream_timeout);
    let deadline = started + timeout;
    let retries = policy.retries.as_ref();
    if let Some((_, budget)) = retries {
        budget.deposit();
    }
    // Without a policy: one retry, after a failed connection or an early reset only.
    let mut retries_left = retries.map_or(1, |(r, _)| r.attempts);
    let breaker = policy.breaker.as_ref();
    let idempotent = parts.method.is_idempotent();

    let response = loop {
        let buffered = matches!(payload, Payload::Buffered(_));
        let body = match &mut payload {
            Payload::Buffered(bytes) => full(bytes.clone()),
            Payload::Streamed(body) => body.take().map_or_else(empty, BodyExt::boxed_unsync),
        };
        let upstream = lease.pick.upstream.clone();
        let protocol = lease.pick.policy.protocol;
        let request = match upstream_request(&parts, body, &upstream, peer, upgrade, protocol) {
            Ok(request) => request,
            Err(error) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "bad-request",
                    format!("bad request: {error}\n"),
                );
            }
        };
        let per_try = retries.and_then(|(r, _)| r.per_try_timeout);
        let attempt_deadline = per_try.map_or(deadline, |t| deadline.min(Instant::now() + t));
        let sent = inner.send(&upstream, protocol, request);
        let failure = match tokio::time::timeout_at(attempt_deadline, sent).await {
            Ok(Ok(response)) => {
                let status = response.status();
                lease.pick.counter.record(status.is_server_error(), breaker);
                let retried_status = retries.is_some_and(|(r, _)| {
                    buffered && idempotent && r.on_status.contains(&status.as_u16())
                });
                if !retried_status {
                    break response;
                }
                Failure::Status(response)
            }
            Ok(Err(error)) => {
                // The client's own fault (a body too large, or cut off) is not the instance's:
                // it does not count against its breaker.
                match body_state.load(Ordering::SeqCst) {
                    BODY_TOO_LARGE => return too_large(max),
                    BODY_FAILED => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            "bad-request",
                            "reading the request body failed\n".to_owned(),
                        );
                    }
                    _ => {}
                }
                lease.pick.counter.record(true, breaker);
                Failure::Error(error)
            }
            Err(_) => {
                lease.pick.counter.record(true, breaker);
                Failure::Timeout
            }
        };
        let retryable = buffered
            && match &failure {
                Failure::Error(error) => error.is_connect() || (idempotent && closed_early(error)),
                Failure::Status(_) => true,
                Failure::Timeout => idempotent && retries.is_some() && attempt_deadline < deadline,
            };
        if retryable
            && retries_left > 0
            && Instant::now() < deadline
            && retries.is_none_or(|(_, budget)| budget.withdraw())
        {
            retries_left -= 1;
            let retry = Retry {
                group: &lease.pick.group,
                exclude: &upstream.id,
            };
            match inner.acquire(&host, &parts.headers, Some(&retry)) {
                Some(next) => {
                    tracing::debug!(
                        upstream = %upstream.id,
                        failure = %failure,
                        retry = %next.pick.upstream.id,
                        "proxy: retrying on another instance",
                    );
                    lease = next;
                    continue;
                }
                // With a policy, the same instance is tried again when it is the only one.
                None if retries.is_some() => continue,
                None => {}
            }
        }
        if !matches!(failure, Failure::Status(_)) {
            // A status passed on is counted below, with the answers.
            inner
                .stats
                .record(&lease.pick.group, true, started.elapsed());
        }
        match failure {
            Failure::Status(response) => break response,
            Failure::Error(error) => {
                return text(
                    StatusCode::BAD_GATEWAY,
                    "upstream-failed",
                    format!(
                        "upstream {} ({}): {}\n",
                        upstream.id,
                        upstream.addr,
                        describe(&error)
                    ),
                );
            }
            Failure::Timeout => {
                return text(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    format!(
                        "upstream {} ({}) sent no response within {:?}\n",
                        upstream.id,
                        upstream.addr,
                        (attempt_deadline - started).min(timeout)
                    ),
                );
            }
        }
    };

    let status = response.status();
    inner.stats.record(
        &lease.pick.group,
        status.is_server_error(),
        started.elapsed(),
    );

    if status == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return text(
                StatusCode::BAD_GATEWAY,
                "upstream-failed",
                format!(
                    "upstream {} switched protocols unasked\n",
                    lease.pick.upstream.id
                ),
            );
        };
        let mut response = response;
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let (mut parts, _) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers, true);
        tokio::spawn(tunnel(client_upgrade, upstream_upgrade, lease));
        return Response::from_parts(parts, empty());
    }

    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    parts.version = client_version;
    if by_weight
        && let Some(cookie) = &inner.config.sticky_cookie
        && let Ok(value) = HeaderValue::from_str(&format!(
            "{cookie}={}; Path=/; HttpOnly; SameSite=Lax",
            lease.pick.group
        ))
    {
        parts.headers.append(header::SET_COOKIE, value);
    }
    let body = GuardedBody {
        inner: body,
        guard: Some(lease.guard),
    };
    Response::from_parts(parts, body.boxed_unsync())
}

/// Why an attempt did not give the answer passed on.
enum Failure {
    /// An answer with a status retried under the policy (kept: it is passed on when no retry
    /// is left).
    Status(Response<Incoming>),
    /// No answer: the connection failed or was reset.
    Error(hyper_util::client::legacy::Error),
    /// No answer in time (the attempt's or the request's).
    Timeout,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status(response) => write!(f, "answered {}", response.status()),
            Failure::Error(error) => f.write_str(&describe(error)),
            Failure::Timeout => f.write_str("no answer in time"),
        }
    }
}

/// Copies bytes both ways between the upgraded client and upstream connections; the lease
/// keeps the request in flight until the tunnel closes.
async fn tunnel(client: OnUpgrade, upstream: OnUpgrade, lease: Lease) {
    let id = &lease.pick.upstream.id;
    match tokio::join!(client, upstream) {
        (Ok(client), Ok(upstream)) => {
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                tracing::debug!(upstream = %id, %error, "proxy: upgraded connection ended");
            }
        }
        (Err(error), _) | (_, Err(error)) => {
            tracing::debug!(upstream = %id, %error, "proxy: upgrade failed");
        }
    }
    drop(lease);
}

/// The request's host, lowercase and without port: from `Host`, else from the URI.
fn request_host<B>(req: &Request<B>) -> String {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(strip_port)
        .or_else(|| req.uri().authority().map(|a| strip_port(a.as_str())))
        .unwrap_or_default();
    host.to_ascii_lowercase()
}

fn strip_port(host: &str) -> &str {
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h).trim();
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.split_once(':').map_or(host, |(h, _)| h)
}

/// Tokens of the `Connection` headers.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers. With `upgrade`, keeps `Upgrade` and sets `Connection: upgrade`.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let listed: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    let protocols: Vec<HeaderValue> = if upgrade {
        headers.get_all(header::UPGRADE).iter().cloned().collect()
    } else {
        Vec::new()
    };
    // `TE: trailers` says the client takes trailers (gRPC needs it); it is the one TE value
    // HTTP/2 allows, and is passed on.
    let trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    for name in listed {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if upgrade {
        for protocol in protocols {
            headers.append(header::UPGRADE, protocol);
        }
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The request to send to the upstream at `addr`.
pub(super) fn upstream_request(
    parts: &request::Parts,
    body: ProxyBody,
    upstream: &Upstream,
    peer: SocketAddr,
    upgrade: bool,
    protocol: Protocol,
) -> Result<Request<ProxyBody>, http::Error> {
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let uri = upstream_uri(upstream, path)?;
    let mut headers = parts.headers.clone();
    strip_hop_by_hop(&mut headers, upgrade);
    // The proxy already answered any `Expect: 100-continue` by reading the body.
    headers.remove(header::EXPECT);
    let host = match parts.headers.get(header::HOST) {
        Some(host) => Some(host.clone()),
        None => match parts.uri.authority() {
            Some(authority) => Some(HeaderValue::from_str(authority.as_str())?),
            None => None,
        },
    };
    if let Some(host) = host {
        // In HTTP/2 the authority is the connection's (the instance's address); the client's
        // host goes in X-Forwarded-Host only.
        if !protocol.is_http2() {
            headers.insert(header::HOST, host.clone());
        } else {
            headers.remove(header::HOST);
        }
        headers.insert(X_FORWARDED_HOST, host);
    }
    let client_ip = peer.ip().to_canonical().to_string();
    let prior: Vec<&str> = parts
        .headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let forwarded_for = if prior.is_empty() {
        client_ip
    } else {
        format!("{}, {client_ip}", prior.join(", "))
    };
    headers.insert(X_FORWARDED_FOR, HeaderValue::from_str(&forwarded_for)?);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));

    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    *request.version_mut() = version_of(protocol);
    *request.headers_mut() = headers;
    Ok(request)
}

/// `path` at `upstream`: `http://<addr>` or, when it serves TLS, `https://<addr>`.
pub(super) fn upstream_uri(upstream: &Upstream, path: &str) -> Result<Uri, http::Error> {
    Uri::builder()
        .scheme(if upstream.tls.is_some() {
            "https"
        } else {
            "http"
        })
        .authority(upstream.addr.to_string())
        .path_and_query(path)
        .build()
}

/// The HTTP version spoken to instances of `protocol`.
pub(super) fn version_of(protocol: Protocol) -> Version {
    if protocol.is_http2() {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    }
}

/// Whether the upstream closed or reset the connection before sending any response (e.g. a
/// pooled connection it was closing as the request went out).
pub(super) fn closed_early(error: &(dyn StdError + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(e) = e.downcast_ref::<hyper::Error>()
            && e.is_incomplete_message()
        {
            return true;
        }
        if let Some(e) = e.downcast_ref::<std::io::Error>()
            && e.kind() == std::io::ErrorKind::ConnectionReset
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// An error and its sources, `: `-separated.
pub(super) fn describe(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// A response of the proxy's own, `x-deploykit-proxy: <reason>` telling it from the
/// application's.
fn text(status: StatusCode, reason: &'static str, message: String) -> Response<ProxyBody> {
    let mut response = Response::new(full(Bytes::from(message)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(X_DEPLOYKIT_PROXY, HeaderValue::from_static(reason));
    response
}

fn too_large(max: u64) -> Response<ProxyBody> {
    text(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too-large",
        format!("request body larger than {max} bytes\n"),
    )
}

/// 429 for a request over `host`'s rate limit, with `Retry-After` in whole seconds (at least
/// one, as the header has no smaller unit).
fn rate_limited(host: &str, wait: std::time::Duration) -> Response<ProxyBody> {
    let mut response = text(
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
        format!("{host} is over its rate limit; try again in {wait:?}\n"),
    );
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

pub(super) fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub(super) fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the proxy's limit")]
struct BodyTooLarge;

/// A streamed request body, cut off with an error past `remaining` bytes.
struct LimitedBody {
    inner: Incoming,
    remaining: u64,
    state: Arc<AtomicU8>,
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        this.state.store(BODY_TOO_LARGE, Ordering::SeqCst);
                        return Poll::Ready(Some(Err(BodyTooLarge.into())));
                    }
                    this.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => {
                this.state.store(BODY_FAILED, Ordering::SeqCst);
                Poll::Ready(Some(Err(error.into())))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An upstream response body holding the request's in-flight guard until it ends or is
/// dropped.
struct GuardedBody {
    inner: Incoming,
    guard: Option<InFlightGuard>,
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            this.guard = None;
        }
        Poll::Ready(frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
