//! Forwarding one request: body limit, choice of an instance under an in-flight guard, header
//! rewriting, retry after a failed connection, upgraded tunnels; small requests are handed to
//! [mirroring](super::mirror) once their instance is chosen.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version, request};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::Inner;
use super::route::{Pick, Retry, Snapshot};

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

/// States of a streamed request body, as seen once the upstream request failed.
const BODY_OK: u8 = 0;
const BODY_TOO_LARGE: u8 = 1;
const BODY_FAILED: u8 = 2;

/// Counts one request in its upstream's in-flight counter until dropped.
pub(super) struct InFlightGuard(Arc<AtomicUsize>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An instance chosen for a request, with the request counted in its in-flight counter.
pub(super) struct Lease {
    pub(super) pick: Pick,
    pub(super) guard: InFlightGuard,
}

impl Inner {
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
            pick.counter.fetch_add(1, Ordering::SeqCst);
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
    let (parts, body) = req.into_parts();
    let body_state = Arc::new(AtomicU8::new(BODY_OK));
    let mut payload = match declared {
        Some(len) if len <= RETRY_BUFFER_LIMIT => match body.collect().await {
            Ok(collected) => Payload::Buffered(collected.to_bytes()),
            Err(error) => {
                return text(
                    StatusCode::BAD_REQUEST,
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

    if inner.current.load().route(&host).is_none() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no route for host {host}\n"),
        );
    }
    let Some(mut lease) = inner.acquire(&host, &parts.headers, None) else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no instance available for host {host}\n"),
        );
    };
    if !upgrade && let Payload::Buffered(bytes) = &payload {
        inner.mirror(&host, &lease.pick.group, &parts, bytes, peer);
    }
    let by_weight = lease.pick.by_weight;
    let timeout = inner.config.upstream_timeout;
    let deadline = started + timeout;
    let mut retried = false;

    let response = loop {
        let body = match &mut payload {
            Payload::Buffered(bytes) => full(bytes.clone()),
            Payload::Streamed(body) => body.take().map_or_else(empty, BodyExt::boxed_unsync),
        };
        let upstream = &lease.pick.upstream;
        let request = match upstream_request(&parts, body, upstream.addr, peer, upgrade) {
            Ok(request) => request,
            Err(error) => {
                return text(StatusCode::BAD_REQUEST, format!("bad request: {error}\n"));
            }
        };
        let error = match tokio::time::timeout_at(deadline, inner.client.request(request)).await {
            Ok(Ok(response)) => break response,
            Ok(Err(error)) => error,
            Err(_) => {
                inner
                    .stats
                    .record(&lease.pick.group, true, started.elapsed());
                return text(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "upstream {} ({}) sent no response within {timeout:?}\n",
                        upstream.id, upstream.addr
                    ),
                );
            }
        };
        match body_state.load(Ordering::SeqCst) {
            BODY_TOO_LARGE => return too_large(max),
            BODY_FAILED => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "reading the request body failed\n".to_owned(),
                );
            }
            _ => {}
        }
        let resendable = matches!(payload, Payload::Buffered(_))
            && (error.is_connect() || (is_idempotent(&parts.method) && closed_early(&error)));
        if resendable && !retried {
            retried = true;
            let retry = Retry {
                group: &lease.pick.group,
                exclude: &upstream.id,
            };
            if let Some(next) = inner.acquire(&host, &parts.headers, Some(&retry)) {
                tracing::debug!(
                    upstream = %upstream.id,
                    error = %describe(&error),
                    retry = %next.pick.upstream.id,
                    "proxy: upstream failed before answering, retrying",
                );
                lease = next;
                continue;
            }
        }
        inner
            .stats
            .record(&lease.pick.group, true, started.elapsed());
        return text(
            StatusCode::BAD_GATEWAY,
            format!(
                "upstream {} ({}): {}\n",
                upstream.id,
                upstream.addr,
                describe(&error)
            ),
        );
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
    parts.version = Version::HTTP_11;
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
    addr: SocketAddr,
    peer: SocketAddr,
    upgrade: bool,
) -> Result<Request<ProxyBody>, http::Error> {
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let uri = Uri::builder()
        .scheme("http")
        .authority(addr.to_string())
        .path_and_query(path)
        .build()?;
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
        headers.insert(header::HOST, host.clone());
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
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Ok(request)
}

pub(super) fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
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

fn text(status: StatusCode, message: String) -> Response<ProxyBody> {
    let mut response = Response::new(full(Bytes::from(message)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn too_large(max: u64) -> Response<ProxyBody> {
    text(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body larger than {max} bytes\n"),
    )
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
