//! The built-in reverse proxy: fronts the instances of one or more services and routes each
//! request to a ready instance of a revision chosen by weights.
//!
//! The proxy runs inside the caller's tokio runtime (spawned tasks, no threads of its own). It
//! speaks HTTP/1.1 and HTTP/2 to clients (HTTP/2 by prior knowledge in the clear, or chosen by
//! ALPN under TLS), and to each revision what its [`TrafficPolicy::protocol`] says: HTTP/1.1,
//! or HTTP/2 without TLS for h2c and gRPC servers (trailers, `grpc-status` included, are passed
//! through). Upgraded connections such as WebSocket are tunnelled byte for byte. Zero downtime
//! is the point:
//!
//! - [`Proxy::set_table`] swaps the [`RoutingTable`] atomically; the next request sees the new
//!   table.
//! - Every request holds an in-flight guard on the instance serving it until the response body
//!   (or the upgraded tunnel) is finished, and [`Proxy::drain`] waits for those guards. A request
//!   that picked an instance from an old table re-checks the current table after taking its
//!   guard, so once an instance is out of the table and `drain` has returned, no request reaches
//!   it.
//! - A request whose upstream refuses the connection (no byte sent) is retried once on another
//!   instance when its body is small enough to have been buffered.
//!
//! Each revision's [`TrafficPolicy`] ([`Group::with_policy`]) adds a timeout, retries within a
//! budget, and circuit breaking (instances taken out after failures in a row, a cap on
//! requests in flight); a route's [`RateLimit`] ([`Route::with_rate_limit`]) answers requests
//! over it with 429. Responses the proxy makes itself carry `x-deploykit-proxy` with the
//! reason (`no-route`, `no-instance`, `rate-limited`, `overloaded`, `timeout`,
//! `upstream-failed`), so that they are told apart from the application's.
//!
//! A [`Route`] may also mirror a share of its requests to a group ([`Route::with_mirror`],
//! shadow traffic): the copy is sent in the background, its response is discarded and only
//! counted in the mirror group's [`Proxy::stats`]; the client's request is neither delayed nor
//! failed by it.

mod forward;
mod mirror;
mod policy;
mod route;
mod stats;
mod tls;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use deploykit_core::{RateLimit, TrafficPolicy};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use self::forward::{ProxyBody, TlsClient};
use self::policy::Registries;
use self::route::Snapshot;
use self::stats::Stats;
pub use self::tls::{LocalCa, ProxyTls, UpstreamTls};

/// Limits and timeouts of the [`Proxy`].
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Largest request body forwarded (default 10 MiB). A larger `Content-Length` is answered
    /// with 413 at once; a streamed body that grows past it aborts the upstream request and is
    /// answered with 413 when the client is still listening.
    pub max_body_bytes: u64,
    /// Time a client has to send the request headers (default 10 s).
    pub header_timeout: Duration,
    /// Time the upstream has to send its response headers (default 60 s); otherwise 504. A
    /// revision's [`TrafficPolicy::timeout`] replaces it for its requests. Also bounds how long
    /// [`Proxy::shutdown`] waits for in-flight requests.
    pub upstream_timeout: Duration,
    /// Time allowed to connect to an upstream (default 2 s).
    pub connect_timeout: Duration,
    /// Name of the sticky-revision cookie (none by default). When set, a response routed by
    /// weights sets `<cookie>=<group>`, and a request carrying it goes to that group while the
    /// group has a weight above 0 and ready instances.
    pub sticky_cookie: Option<String>,
    /// Terminate TLS with this identity (none by default: plain HTTP). Clients that do not
    /// complete a handshake within `header_timeout` are dropped.
    pub tls: Option<ProxyTls>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            max_body_bytes: 10 * 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            upstream_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(2),
            sticky_cookie: None,
            tls: None,
        }
    }
}

/// Where the proxy sends requests: a [`Route`] per host, and a default route for other hosts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoutingTable {
    /// Exact host (lowercase, without port, e.g. `web.localhost`) → route.
    pub hosts: BTreeMap<String, Route>,
    /// Route for any other host; `None` answers those with 503.
    pub default: Option<Route>,
}

impl RoutingTable {
    /// Adds (or replaces) the route of `host` (lowercased).
    pub fn with_host(mut self, host: impl Into<String>, route: Route) -> Self {
        self.hosts.insert(host.into().to_ascii_lowercase(), route);
        self
    }

    /// Sets the route for hosts without an entry of their own.
    pub fn with_default(mut self, route: Route) -> Self {
        self.default = Some(route);
        self
    }
}

/// How the requests of one host are spread over revisions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Route {
    /// The revisions. Weights sum to 100 when any group has instances; a group with weight 0
    /// receives no request routed by weight (nor by sticky cookie).
    pub groups: Vec<Group>,
    /// Requests carrying this header value go to its group regardless of weights.
    pub header: Option<HeaderMatch>,
    /// A share of requests copied to a group; its responses are discarded.
    pub mirror: Option<MirrorMatch>,
    /// A limit on the rate of the route's requests; those over it are answered 429.
    pub rate_limit: Option<RateLimit>,
}

impl Route {
    /// A route spreading requests over `groups` by their weights.
    pub fn weighted(groups: impl IntoIterator<Item = Group>) -> Self {
        Route {
            groups: groups.into_iter().collect(),
            header: None,
            mirror: None,
            rate_limit: None,
        }
    }

    /// Limits the route's requests to `limit` (a token bucket); a request over it is answered
    /// 429 with `Retry-After`.
    pub fn with_rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Sends requests whose header `name` equals `value` to group `group`.
    pub fn with_header(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
        group: impl Into<String>,
    ) -> Self {
        self.header = Some(HeaderMatch {
            name: name.into(),
            value: value.into(),
            group: group.into(),
        });
        self
    }

    /// Copies `percent` percent of the requests to group `group` (see [`MirrorMatch`]).
    pub fn with_mirror(mut self, group: impl Into<String>, percent: u32) -> Self {
        self.mirror = Some(MirrorMatch {
            group: group.into(),
            percent,
        });
        self
    }
}

/// Traffic mirroring (shadow traffic): a share of a route's requests is also sent to group
/// `group`, whose responses are discarded.
///
/// - The share is spread deterministically, like the weights: of every 100 eligible requests,
///   exactly `percent` are copied (`0` never, `100` or more always). Eligible are requests whose
///   body was buffered (none, or a `Content-Length` of at most 64 KiB), that are no upgrade
///   (WebSocket) request, and that were not themselves routed to `group`.
/// - The copy goes to the least loaded instance of `group` (a group without instances gets no
///   copy) with the header `x-deploykit-mirror: 1`, in a background task: the client's request
///   proceeds at once, and its response never depends on the copy's. A copy counts in its
///   instance's [`Proxy::in_flight`] (so [`Proxy::drain`] waits for it) and in the group's
///   [`Proxy::stats`], and is bounded by [`ProxyConfig::upstream_timeout`].
/// - At most 64 copies are in flight at once across the proxy; further copies are skipped and
///   counted in [`Proxy::mirror_skipped`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorMatch {
    /// Name of the [`Group`] receiving the copies; a name not among the route's groups
    /// disables mirroring.
    pub group: String,
    /// Share of the eligible requests copied, in percent.
    pub percent: u32,
}

/// A header-based route: requests whose header `name` equals `value` go to group `group`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderMatch {
    /// Header name (case-insensitive).
    pub name: String,
    /// Exact header value.
    pub value: String,
    /// Name of the [`Group`] receiving the matching requests.
    pub group: String,
}

/// One revision behind a [`Route`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// The revision id; names the group in [`Proxy::stats`] and in the sticky cookie.
    pub name: String,
    /// Share of the requests routed by weight, in percent.
    pub weight: u32,
    /// The ready instances of the revision.
    pub upstreams: Vec<Upstream>,
    /// How the revision's requests are sent: protocol, timeout, retries, circuit breaking
    /// (its rate limit is the route's: [`Route::rate_limit`]).
    pub policy: TrafficPolicy,
}

impl Group {
    /// A group of `weight` percent served by `upstreams`, with the default policy.
    pub fn new(name: impl Into<String>, weight: u32, upstreams: Vec<Upstream>) -> Self {
        Group {
            name: name.into(),
            weight,
            upstreams,
            policy: TrafficPolicy::default(),
        }
    }

    /// Sends the group's requests under `policy`.
    pub fn with_policy(mut self, policy: TrafficPolicy) -> Self {
        self.policy = policy;
        self
    }
}

/// One instance: a process listening on `addr`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// Instance name, unique across the proxy; keys [`Proxy::in_flight`] and [`Proxy::drain`].
    pub id: String,
    /// Where the instance listens (normally `127.0.0.1:<port>`).
    pub addr: SocketAddr,
    /// Speak TLS to it (another proxy that serves TLS), trusting these certificates; its
    /// address is the name checked (none by default: plain HTTP).
    pub tls: Option<UpstreamTls>,
}

impl Upstream {
    /// The instance `id` listening on `addr`, spoken to in plain HTTP.
    pub fn new(id: impl Into<String>, addr: SocketAddr) -> Self {
        Upstream {
            id: id.into(),
            addr,
            tls: None,
        }
    }

    /// Speak TLS to it under `tls`.
    pub fn with_tls(mut self, tls: UpstreamTls) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// Request statistics of one group over a time window (see [`Proxy::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GroupStats {
    /// Responses in the window (counted when their headers were ready).
    pub requests: u64,
    /// Of those, 5xx responses from the upstream and the proxy's own 502/504.
    pub errors: u64,
    /// Median latency (request received → response headers ready), as the upper bound of a
    /// log-spaced histogram bucket; `None` without requests.
    pub latency_p50: Option<Duration>,
    /// 99th percentile latency, like `latency_p50`.
    pub latency_p99: Option<Duration>,
}

/// The reverse proxy. Cheap to clone; every clone drives the same listener.
///
/// It stops on [`Proxy::shutdown`], or gracefully once every clone is dropped.
///
/// ```
/// use std::time::Duration;
/// use deploykit_local::proxy::{Group, Proxy, ProxyConfig, Route, RoutingTable, Upstream};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let proxy = Proxy::bind("127.0.0.1:0".parse().unwrap(), ProxyConfig::default()).await?;
/// let v1 = Upstream::new("web-v1-0", "127.0.0.1:9001".parse().unwrap());
/// let v2 = Upstream::new("web-v2-0", "127.0.0.1:9002".parse().unwrap());
///
/// // Canary: 10 % of the requests for web.localhost go to revision v2.
/// proxy.set_table(RoutingTable::default().with_host(
///     "web.localhost",
///     Route::weighted([Group::new("v1", 90, vec![v1]), Group::new("v2", 10, vec![v2.clone()])]),
/// ));
///
/// // Promote v2, then retire v1's instance: out of the table, drain, then stop the process.
/// proxy.set_table(
///     RoutingTable::default().with_host("web.localhost", Route::weighted([Group::new("v2", 100, vec![v2])])),
/// );
/// assert!(proxy.drain("web-v1-0", Duration::from_secs(30)).await);
/// proxy.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
    _owner: Arc<Owner>,
}

/// Shared state of the proxy, also held by its tasks.
struct Inner {
    config: ProxyConfig,
    local_addr: SocketAddr,
    current: ArcSwap<Snapshot>,
    /// In-flight counters and breakers per upstream id, retry budgets, rate limiters; see
    /// [`Proxy::set_table`] for their life cycle.
    registry: Mutex<Registries>,
    stats: Stats,
    /// HTTP/1.1 to upstreams.
    client: Client<HttpConnector, ProxyBody>,
    /// HTTP/2 without TLS (h2c, gRPC) to upstreams.
    client_h2: Client<HttpConnector, ProxyBody>,
    /// HTTP/1.1 over TLS to upstreams that serve TLS, one client per set of trusted
    /// certificates.
    clients_tls: Mutex<Vec<(UpstreamTls, TlsClient)>>,
    /// The connector the TLS clients wrap.
    connector: HttpConnector,
    /// Permits for mirror copies in flight; see [`mirror::MIRROR_LIMIT`].
    mirror_permits: Arc<Semaphore>,
    /// Mirror copies skipped for want of a permit.
    mirror_skipped: AtomicU64,
    /// `RUNNING`, `GRACEFUL` or `FORCE`; every task holds a receiver.
    shutdown: watch::Sender<u8>,
    /// Whether the accept loop accepts connections yet (see [`Proxy::bind_paused`]).
    accepting: watch::Sender<bool>,
}

const RUNNING: u8 = 0;
const GRACEFUL: u8 = 1;
const FORCE: u8 = 2;

/// Stops the proxy gracefully when the last [`Proxy`] clone goes away.
struct Owner {
    inner: Arc<Inner>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.inner.begin_shutdown();
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("local_addr", &self.inner.local_addr)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Binds the listener on `addr` (port 0 picks one) and spawns the accept loop on the
    /// current tokio runtime. The table starts empty: every request gets 503 until
    /// [`Proxy::set_table`].
    pub async fn bind(addr: SocketAddr, config: ProxyConfig) -> std::io::Result<Proxy> {
        Proxy::bind_accepting(addr, config, true).await
    }

    /// Like [`bind`](Proxy::bind), but connections are not accepted before
    /// [`resume`](Proxy::resume): they wait in the listen backlog, so a caller that builds its
    /// first table after binding (a restarted controller adopting its instances) answers no
    /// request from the empty table. Clients connecting in between wait, they are not refused.
    pub async fn bind_paused(addr: SocketAddr, config: ProxyConfig) -> std::io::Result<Proxy> {
        Proxy::bind_accepting(addr, config, false).await
    }

    /// Starts accepting connections on a proxy bound with [`bind_paused`](Proxy::bind_paused)
    /// (nothing on one that accepts already).
    pub fn resume(&self) {
        self.inner.accepting.send_replace(true);
    }

    async fn bind_accepting(
        addr: SocketAddr,
        config: ProxyConfig,
        accepting: bool,
    ) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;

        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(30)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            // Shorter than common server keep-alive timeouts (e.g. Node's 5 s), so the pool
            // rarely hands out a connection the upstream is closing.
            .pool_idle_timeout(Duration::from_secs(4))
            .pool_max_idle_per_host(64)
            .build(connector.clone());
        // One multiplexed connection per instance; pings find a dead one between requests.
        let client_h2 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .http2_keep_alive_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector.clone());

        let (shutdown, shutdown_rx) = watch::channel(RUNNING);
        let (accepting, accepting_rx) = watch::channel(accepting);
        let mut registry = Registries::default();
        let snapshot = Snapshot::new(Arc::new(RoutingTable::default()), &mut registry);
        let inner = Arc::new(Inner {
            config,
            local_addr,
            current: ArcSwap::from_pointee(snapshot),
            registry: Mutex::new(registry),
            stats: Stats::new(),
            client,
            client_h2,
            clients_tls: Mutex::new(Vec::new()),
            connector,
            mirror_permits: Arc::new(Semaphore::new(mirror::MIRROR_LIMIT)),
            mirror_skipped: AtomicU64::new(0),
            shutdown,
            accepting,
        });
        tokio::spawn(accept_loop(
            inner.clone(),
            listener,
            shutdown_rx,
            accepting_rx,
        ));
        Ok(Proxy {
            _owner: Arc::new(Owner {
                inner: inner.clone(),
            }),
            inner,
        })
    }

    /// The address the proxy listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Swaps the routing table atomically; the next request is routed by `table`.
    ///
    /// To retire an instance, remove it with `set_table`, then [`drain`](Proxy::drain) it,
    /// then stop its process.
    pub fn set_table(&self, table: RoutingTable) {
        // Compiling forgets the counters of instances that left the table and serve nothing. A
        // request that still holds such a counter from an old table notices on its re-check.
        let mut registry = lock(&self.inner.registry);
        let snapshot = Snapshot::new(Arc::new(table), &mut registry);
        self.inner.current.store(Arc::new(snapshot));
        drop(registry);
        self.inner.stats.prune();
    }

    /// The current routing table.
    pub fn table(&self) -> Arc<RoutingTable> {
        self.inner.current.load().table.clone()
    }

    /// Number of requests the instance `upstream` is serving right now (responses whose body
    /// is not finished and upgraded tunnels included).
    pub fn in_flight(&self, upstream: &str) -> usize {
        self.inner.in_flight(upstream)
    }

    /// Waits until the instance `upstream` serves no request: `true`, or `false` once `timeout`
    /// has passed. Remove the instance from the table first ([`Proxy::set_table`]); once this
    /// returns `true`, no request reaches it any more.
    pub async fn drain(&self, upstream: &str, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.inner.in_flight(upstream) == 0 {
                let mut registry = lock(&self.inner.registry);
                let in_table = self
                    .inner
                    .current
                    .load()
                    .upstream_ids()
                    .any(|id| id == upstream);
                if !in_table
                    && registry
                        .upstreams
                        .get(upstream)
                        .is_some_and(|c| c.in_flight.load(Ordering::SeqCst) == 0)
                {
                    registry.upstreams.remove(upstream);
                }
                return true;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return false;
            }
            tokio::time::sleep_until(deadline.min(now + Duration::from_millis(5))).await;
        }
    }

    /// Statistics of group (revision) `group` over the last `window` (at most 600 s, rounded
    /// up to whole seconds).
    pub fn stats(&self, group: &str, window: Duration) -> GroupStats {
        self.inner.stats.snapshot(group, window)
    }

    /// Whether the circuit breaker of instance `upstream` (see
    /// [`CircuitBreaker`](deploykit_core::CircuitBreaker)) has it out of rotation now.
    pub fn ejected(&self, upstream: &str) -> bool {
        lock(&self.inner.registry)
            .upstreams
            .get(upstream)
            .is_some_and(|s| s.ejected(tokio::time::Instant::now()))
    }

    /// Times the circuit breaker took instance `upstream` out of rotation.
    pub fn ejections(&self, upstream: &str) -> u64 {
        lock(&self.inner.registry)
            .upstreams
            .get(upstream)
            .map_or(0, |s| s.ejections())
    }

    /// Number of mirror copies (see [`MirrorMatch`]) skipped since the proxy started because 64
    /// copies were already in flight.
    pub fn mirror_skipped(&self) -> u64 {
        self.inner.mirror_skipped.load(Ordering::Relaxed)
    }

    /// Stops accepting connections and lets in-flight requests (and mirror copies) finish,
    /// waiting at most `upstream_timeout` before closing the remaining connections and
    /// abandoning the copies. Upgraded tunnels are left to end on their own.
    pub async fn shutdown(&self) {
        self.inner.begin_shutdown();
        let sender = &self.inner.shutdown;
        if tokio::time::timeout(self.inner.config.upstream_timeout, sender.closed())
            .await
            .is_err()
        {
            sender.send_replace(FORCE);
            let _ = tokio::time::timeout(Duration::from_secs(1), sender.closed()).await;
        }
    }
}

impl Inner {
    fn in_flight(&self, upstream: &str) -> usize {
        lock(&self.registry)
            .upstreams
            .get(upstream)
            .map_or(0, |c| c.in_flight.load(Ordering::SeqCst))
    }

    fn begin_shutdown(&self) {
        self.shutdown.send_if_modified(|state| {
            let running = *state == RUNNING;
            if running {
                *state = GRACEFUL;
            }
            running
        });
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn accept_loop(
    inner: Arc<Inner>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<u8>,
    mut accepting: watch::Receiver<bool>,
) {
    tokio::select! {
        _ = shutdown.wait_for(|s| *s != RUNNING) => return,
        _ = accepting.wait_for(|a| *a) => {}
    }
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|s| *s != RUNNING) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                match &inner.config.tls {
                    None => {
                        tokio::spawn(serve_connection(
                            inner.clone(),
                            stream,
                            peer,
                            shutdown.clone(),
                        ));
                    }
                    Some(tls) => {
                        let acceptor = tls.acceptor();
                        let (inner, shutdown) = (inner.clone(), shutdown.clone());
                        tokio::spawn(async move {
                            let handshake = tokio::time::timeout(
                                inner.config.header_timeout,
                                acceptor.accept(stream),
                            )
                            .await;
                            match handshake {
                                Ok(Ok(stream)) => {
                                    serve_connection(inner, stream, peer, shutdown).await;
                                }
                                Ok(Err(error)) => {
                                    tracing::debug!(%peer, %error, "proxy: TLS handshake failed");
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "proxy: TLS handshake timed out");
                                }
                            }
                        });
                    }
                }
            }
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "proxy: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracing::debug!(addr = %inner.local_addr, "proxy: stopped accepting");
}

async fn serve_connection<S>(
    inner: Arc<Inner>,
    stream: S,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<u8>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // HTTP/1.1, or HTTP/2 when the client opens with its preface (h2c by prior knowledge, or
    // after ALPN chose h2).
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(inner.config.header_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .max_concurrent_streams(1024);
    let service = {
        let inner = inner.clone();
        service_fn(move |req| {
            let inner = inner.clone();
            async move { Ok::<_, Infallible>(forward::handle(inner, req, peer).await) }
        })
    };
    let mut conn = pin!(builder.serve_connection_with_upgrades(TokioIo::new(stream), service));
    let stopping = tokio::select! {
        result = conn.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "proxy: connection ended with an error");
            }
            false
        }
        _ = shutdown.wait_for(|s| *s != RUNNING) => true,
    };
    if stopping {
        conn.as_mut().graceful_shutdown();
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = shutdown.wait_for(|s| *s == FORCE) => {}
        }
    }
}
