//! The local daemon: a [`LocalEnvironment`] that outlives the commands driving it, reached over
//! a Unix socket by [`LocalClient`].
//!
//! The proxy and the supervised instances must keep serving between and during `deploykit`
//! commands, and a rollout must survive the command that drives it being killed. So the
//! environment lives in a long-running process (`deploykit daemon`), and each command runs the
//! orchestrator (whose journal is in SQLite) against a [`LocalClient`], which implements
//! [`Environment`] and [`Monitor`] by calling the daemon. Kill a `deploykit deploy` mid-rollout
//! and the daemon keeps serving the last applied routes; run it again and the orchestrator
//! resumes from its journal.
//!
//! The API is JSON over HTTP/1.1 on the socket (`<state_dir>/daemon.sock`, mode 0600 by the
//! umask of the daemon's user):
//!
//! | request | answer |
//! |---|---|
//! | `GET /v1/info` | [`DaemonInfo`] |
//! | `GET /v1/services/{service}` | [`Observed`] |
//! | `PUT /v1/services/{service}` with a [`DesiredState`] | `204` |
//! | `DELETE /v1/services/{service}` | `204` (teardown) |
//! | `GET /v1/services/{service}/revisions/{revision}/health` | instance observations |
//! | `POST /v1/query` with a [`MetricQuery`] | samples |
//! | `PUT /v1/forward` with a [`Forward`] | `204` (see [`LocalEnvironment::forward_to`]) |
//! | `GET /v1/logs/{instance}?bytes=N` | the log's tail, as text |
//! | `GET /v1/logs/{instance}/chunk?bytes=N[&from=OFFSET]` | a [`LogChunk`] |
//! | `POST /v1/shutdown?stop_instances=true` | `204`, then the daemon exits |
//!
//! Errors are `{"error": "…"}` with status 400 (bad request or spec), 404, 503 (a transient
//! failure: retry) or 500. A 404 also says what was not found, `{"error": "log of instance
//! web-1 not found", "not_found": "log of instance web-1"}` (an unknown instance's log, or an
//! unknown endpoint), which [`LocalClient`] returns as [`Error::NotFound`].
//!
//! The daemon not answering is never final for [`LocalClient`]: a missing socket, a refused,
//! reset or dropped connection and a `503` are all [`Error::Transient`], so an orchestrator
//! retries them (a daemon killed mid-rollout and started again adopts the instances it left,
//! and the rollout goes on). Only a daemon that answers and refuses makes an
//! [`Error::Backend`], or an [`Error::NotFound`] when it answers 404 (what it was asked about
//! does not exist). An instance name no instance can have is refused before any call, as an
//! [`Error::InvalidSpec`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use deploykit_core::access::{AccessAction, AccessPolicy};
use deploykit_core::{
    Actor, DesiredState, Environment, EnvironmentName, Error, InstanceObservation, MetricQuery,
    Monitor, Observed, Result, RevisionId, Sample, ServiceId,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;

use crate::environment::LocalEnvironment;
use crate::logs::LogChunk;

/// What `GET /v1/info` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DaemonInfo {
    /// The daemon's process id.
    pub pid: u32,
    /// Where its proxy listens.
    pub proxy: SocketAddr,
    /// The services it runs.
    pub services: Vec<ServiceId>,
    /// Where its proxy forwards every request instead of serving it (after a failover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<SocketAddr>,
    /// When its proxy serves TLS: the certificate (PEM) a client trusts to reach it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_trust: Option<String>,
}

/// The body of `PUT /v1/forward`: forward every request to `to`, or serve them here again
/// (`null`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Forward {
    /// Another environment's proxy, or `None`.
    pub to: Option<SocketAddr>,
    /// The certificate (PEM) to trust when that proxy serves TLS ([`DaemonInfo::proxy_trust`]
    /// of its daemon); `None`: plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<String>,
}

/// Who may change what through the daemon's socket. Each connection's peer is the operating
/// system's user at the other end (`SO_PEERCRED`), never a name the client claims: changing a
/// service (`PUT`) needs the `deploy` or `rollback` right on it in the environment, removing it
/// (`DELETE`) `teardown`, forwarding the proxy `failover` on every service it runs, and
/// stopping the daemon is for its own user and root. Reads are open to whoever may connect
/// (the socket file's permissions decide that). The daemon's own user may do anything: the
/// daemon's dashboard and tools acting as the daemon run as it.
///
/// The socket is its user's alone (mode 0600) unless [`SocketAccess::shared_with_group`]
/// names a group whose members may connect (mode 0660, owned by that group): sharing goes with
/// a policy, so those members are held to their rights.
#[derive(Clone, Debug)]
pub struct SocketAccess {
    policy: AccessPolicy,
    environment: EnvironmentName,
    group: Option<u32>,
}

impl SocketAccess {
    /// Check callers against `policy` for the services of `environment`.
    pub fn new(policy: AccessPolicy, environment: EnvironmentName) -> Result<Self> {
        policy.validate()?;
        Ok(SocketAccess {
            policy,
            environment,
            group: None,
        })
    }

    /// Let the members of group `group` (a name, or a numeric id) connect to the socket.
    pub fn shared_with_group(mut self, group: &str) -> Result<Self> {
        let gid = match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => nix::unistd::Group::from_name(group)
                .map_err(|e| Error::invalid("socket_group", format!("{group}: {e}")))?
                .ok_or_else(|| {
                    Error::invalid(
                        "socket_group",
                        format!("there is no group {group:?} on this machine"),
                    )
                })?
                .gid
                .as_raw(),
        };
        self.group = Some(gid);
        Ok(self)
    }

    /// Give the socket file at `socket` its owner and mode: the daemon's user alone, or also
    /// the group it is shared with.
    fn protect(&self, socket: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let failed = |e: String| Error::backend(format!("protect {}", socket.display()), e);
        if let Some(gid) = self.group {
            nix::unistd::chown(socket, None, Some(nix::unistd::Gid::from_raw(gid)))
                .map_err(|e| failed(format!("cannot give it to group {gid}: {e}")))?;
        }
        let mode = if self.group.is_some() { 0o660 } else { 0o600 };
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(mode))
            .map_err(|e| failed(e.to_string()))
    }

    /// Whether the user `uid` may do one of `actions` on every one of `services`.
    fn check(
        &self,
        uid: Option<u32>,
        actions: &[AccessAction],
        services: &[ServiceId],
    ) -> Result<()> {
        let Some(uid) = uid else {
            return Err(Error::PermissionDenied {
                principal: "a peer whose credentials could not be read".into(),
                permission: "change anything through the daemon's socket".into(),
            });
        };
        if uid == nix::unistd::getuid().as_raw() {
            return Ok(());
        }
        let actor = Actor::new(user_name(uid));
        for service in services {
            let allowed = actions.iter().any(|a| {
                self.policy
                    .check(&actor, *a, &self.environment, service)
                    .is_ok()
            });
            if !allowed {
                let names: Vec<String> = actions.iter().map(ToString::to_string).collect();
                return Err(Error::PermissionDenied {
                    principal: actor.to_string(),
                    permission: format!(
                        "{} on {}/{service} (through the daemon's socket)",
                        names.join(" or "),
                        self.environment
                    ),
                });
            }
        }
        Ok(())
    }
}

/// The name of the operating system's user running this process (see [`user_name`]).
pub fn current_user() -> String {
    user_name(nix::unistd::getuid().as_raw())
}

/// The name of user `uid` in the user database (`uid:N` when it has none).
pub fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| format!("uid:{uid}"), |u| u.name)
}

/// Serve `env` on the Unix socket `socket` until `POST /v1/shutdown` or `shutdown` completes,
/// checking changes against `access` if given. A stale socket file (no daemon answering) is
/// replaced; a live one is an error.
pub async fn serve(
    env: LocalEnvironment,
    socket: &Path,
    shutdown: impl std::future::Future<Output = ()>,
    access: Option<SocketAccess>,
) -> Result<()> {
    let access = access.map(Arc::new);
    if socket.exists() {
        if UnixStream::connect(socket).await.is_ok() {
            return Err(Error::backend(
                format!("start the daemon on {}", socket.display()),
                "another deploykit daemon is already running there",
            ));
        }
        let _ = std::fs::remove_file(socket);
    }
    let listener = UnixListener::bind(socket)
        .map_err(|e| Error::backend(format!("listen on {}", socket.display()), e.to_string()))?;
    if let Some(access) = &access {
        access.protect(socket)?;
    }
    let stop = Arc::new(Notify::new());
    let stop_instances = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors, say: wait instead of spinning on the error.
                        tracing::warn!(error = %e, "daemon: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let env = env.clone();
                let stop = stop.clone();
                let stop_instances = stop_instances.clone();
                let access = access.clone();
                let peer = stream.peer_cred().ok().map(|c| c.uid());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let env = env.clone();
                        let stop = stop.clone();
                        let stop_instances = stop_instances.clone();
                        let access = access.clone();
                        async move {
                            let caller = Caller { access: access.as_deref(), uid: peer };
                            Ok::<_, Infallible>(
                                handle(&env, req, &stop, &stop_instances, caller).await,
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            _ = stop.notified() => break,
            _ = &mut shutdown => break,
        }
    }
    let _ = std::fs::remove_file(socket);
    env.shutdown(stop_instances.load(std::sync::atomic::Ordering::SeqCst))
        .await;
    Ok(())
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": message.into() }))
}

/// A 404 for `what` (`log of instance web-1`), in the words of [`Error::NotFound`].
fn not_found(what: &str) -> Response<Full<Bytes>> {
    json(
        StatusCode::NOT_FOUND,
        &serde_json::json!({
            "error": Error::not_found(what).to_string(),
            "not_found": what,
        }),
    )
}

/// A 404 for a request the daemon has no endpoint for.
fn no_endpoint(method: &Method, path: &str) -> Response<Full<Bytes>> {
    not_found(&format!("daemon endpoint {method} {path}"))
}

/// The value of query parameter `name`, if present; a value that does not parse is an
/// [`Error::InvalidSpec`] naming the parameter.
fn query_param<T: std::str::FromStr>(query: &str, name: &str, expected: &str) -> Result<Option<T>> {
    let Some(value) = query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    else {
        return Ok(None);
    };
    value.parse().map(Some).map_err(|_| {
        Error::invalid(
            format!("query parameter {name}"),
            format!("{value:?} is not {expected}"),
        )
    })
}

/// The `bytes` parameter of the log endpoints (default 64 KiB).
fn log_bytes(query: &str) -> Result<usize> {
    Ok(query_param(query, "bytes", "a number of bytes")?.unwrap_or(64 * 1024))
}

fn from_result<T: Serialize>(result: Result<T>) -> Response<Full<Bytes>> {
    match result {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => error_response(&e),
    }
}

fn error_response(e: &Error) -> Response<Full<Bytes>> {
    let status = match e {
        Error::InvalidSpec { .. } => StatusCode::BAD_REQUEST,
        Error::PermissionDenied { .. } => StatusCode::FORBIDDEN,
        Error::NotFound { what } => return not_found(what),
        e if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

fn no_content(result: Result<()>) -> Response<Full<Bytes>> {
    match result {
        Ok(()) => Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(Full::new(Bytes::new()))
            .unwrap_or_default(),
        Err(e) => error_response(&e),
    }
}

async fn body_json<T: for<'de> Deserialize<'de>>(req: Request<Incoming>) -> Result<T> {
    let bytes = req
        .into_body()
        .collect()
        .await
        .map_err(|e| Error::invalid("request body", e.to_string()))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| Error::invalid("request body", e.to_string()))
}

/// Who sent a request, and the rules it is held to.
#[derive(Clone, Copy)]
struct Caller<'a> {
    access: Option<&'a SocketAccess>,
    uid: Option<u32>,
}

impl Caller<'_> {
    fn may(&self, actions: &[AccessAction], services: &[ServiceId]) -> Result<()> {
        match self.access {
            Some(access) => access.check(self.uid, actions, services),
            None => Ok(()),
        }
    }

    /// Stopping the daemon: its own user or root.
    fn may_stop(&self) -> Result<()> {
        if self.access.is_none() {
            return Ok(());
        }
        match self.uid {
            Some(uid) if uid == 0 || uid == nix::unistd::getuid().as_raw() => Ok(()),
            uid => Err(Error::PermissionDenied {
                principal: uid.map_or_else(|| "an unknown peer".to_string(), user_name),
                permission: "stop the daemon (its own user and root only)".into(),
            }),
        }
    }
}

async fn handle(
    env: &LocalEnvironment,
    req: Request<Incoming>,
    stop: &Notify,
    stop_instances: &std::sync::atomic::AtomicBool,
    caller: Caller<'_>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    match (&method, parts.as_slice()) {
        (&Method::GET, ["v1", "info"]) => json(
            StatusCode::OK,
            &DaemonInfo {
                pid: std::process::id(),
                proxy: env.proxy_addr(),
                services: env.services(),
                forward: env.forwarding(),
                proxy_trust: env.proxy_trust(),
            },
        ),
        (&Method::PUT, ["v1", "forward"]) => {
            if let Err(e) = caller.may(&[AccessAction::Failover], &env.services()) {
                return error_response(&e);
            }
            match body_json::<Forward>(req).await {
                Ok(f) => no_content(env.forward_to(f.to, f.trust.as_deref())),
                Err(e) => error_response(&e),
            }
        }
        (_, ["v1", "services", service, rest @ ..]) => {
            let service = match ServiceId::new(*service) {
                Ok(s) => s,
                Err(e) => return error_response(&e),
            };
            match (&method, rest) {
                (&Method::GET, []) => from_result(env.observe(&service).await),
                (&Method::PUT, []) => {
                    let one = std::slice::from_ref(&service);
                    if let Err(e) = caller.may(&[AccessAction::Deploy, AccessAction::Rollback], one)
                    {
                        return error_response(&e);
                    }
                    match body_json::<DesiredState>(req).await {
                        Ok(desired) => no_content(env.apply(&service, &desired).await),
                        Err(e) => error_response(&e),
                    }
                }
                (&Method::DELETE, []) => {
                    match caller.may(&[AccessAction::Teardown], std::slice::from_ref(&service)) {
                        Ok(()) => no_content(env.teardown(&service).await),
                        Err(e) => error_response(&e),
                    }
                }
                (&Method::GET, ["revisions", revision, "health"]) => {
                    match RevisionId::parse(revision) {
                        Ok(rev) => from_result(env.instance_health(&service, &rev).await),
                        Err(e) => error_response(&e),
                    }
                }
                _ => no_endpoint(&method, &path),
            }
        }
        (&Method::POST, ["v1", "query"]) => match body_json::<MetricQuery>(req).await {
            Ok(q) => from_result(env.query(&q).await),
            Err(e) => error_response(&e),
        },
        (&Method::GET, ["v1", "logs", instance]) => {
            match log_bytes(&query).and_then(|bytes| env.logs(instance, bytes)) {
                Ok(text) => Response::builder()
                    .header("content-type", "text/plain; charset=utf-8")
                    .body(Full::new(Bytes::from(text)))
                    .unwrap_or_default(),
                Err(e) => error_response(&e),
            }
        }
        (&Method::GET, ["v1", "logs", instance, "chunk"]) => from_result(
            log_bytes(&query)
                .and_then(|bytes| {
                    let from = query_param(&query, "from", "a byte offset")?;
                    Ok((from, bytes))
                })
                .and_then(|(from, bytes)| env.log_chunk(instance, from, bytes)),
        ),
        (&Method::POST, ["v1", "shutdown"]) => {
            if let Err(e) = caller.may_stop() {
                return error_response(&e);
            }
            let stop_all = query.split('&').any(|kv| kv == "stop_instances=true");
            stop_instances.store(stop_all, std::sync::atomic::Ordering::SeqCst);
            stop.notify_one();
            no_content(Ok(()))
        }
        _ => no_endpoint(&method, &path),
    }
}

/// An [`Environment`] and [`Monitor`] that calls a running daemon over its Unix socket.
#[derive(Clone, Debug)]
pub struct LocalClient {
    socket: Arc<PathBuf>,
}

impl LocalClient {
    /// A client of the daemon listening on `socket` (nothing is connected until a call).
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        LocalClient {
            socket: Arc::new(socket.into()),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Bytes> {
        let op = format!("{method} {path} on the deploykit daemon");
        let stream = UnixStream::connect(&*self.socket)
            .await
            .map_err(|e| self.connect_error(&op, &e))?;
        // From here on every failure to exchange a request and its answer means the daemon
        // went away (killed, restarting) mid-call: retryable.
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.lost(&op, &e))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "daemon")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| Error::backend(&op, e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.lost(&op, &e))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.lost(&op, &e))?
            .to_bytes();
        if status.is_success() {
            return Ok(bytes);
        }
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        if status == StatusCode::SERVICE_UNAVAILABLE {
            return Err(Error::transient(op, message));
        }
        if status == StatusCode::NOT_FOUND {
            return Err(Error::not_found(not_found_what(&bytes, &message)));
        }
        Err(Error::backend(op, message))
    }

    /// A failed connect: [`Error::Transient`] when it means the daemon is not reachable now
    /// (no socket file, nobody listening on it, a connection reset or refused, a timeout), as
    /// while it is down or restarting; [`Error::Backend`] otherwise (e.g. no permission on
    /// the socket), which retrying would not change.
    fn connect_error(&self, op: &str, e: &std::io::Error) -> Error {
        use std::io::ErrorKind as K;
        let message = format!(
            "cannot reach the daemon at {}: {e} (is `deploykit daemon` running?)",
            self.socket.display()
        );
        match e.kind() {
            K::NotFound
            | K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::BrokenPipe
            | K::TimedOut
            | K::Interrupted
            | K::WouldBlock
            | K::UnexpectedEof => Error::transient(op, message),
            _ => Error::backend(op, message),
        }
    }

    /// The connection to the daemon broke during a call: retryable.
    fn lost(&self, op: &str, e: &hyper::Error) -> Error {
        Error::transient(
            op,
            format!(
                "the daemon at {} closed the connection: {e}",
                self.socket.display()
            ),
        )
    }

    async fn get<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<T> {
        let bytes = self.call(Method::GET, path, None).await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::backend(
                format!("decode the daemon's answer to {path}"),
                e.to_string(),
            )
        })
    }

    /// The daemon's pid, proxy address and services.
    pub async fn info(&self) -> Result<DaemonInfo> {
        self.get("/v1/info").await
    }

    /// The last `max_bytes` of an instance's log (see [`LocalEnvironment::logs`]); an
    /// instance with no log is [`Error::NotFound`].
    pub async fn logs(&self, instance: &str, max_bytes: usize) -> Result<String> {
        check_instance(instance)?;
        let bytes = self
            .call(
                Method::GET,
                &format!("/v1/logs/{instance}?bytes={max_bytes}"),
                None,
            )
            .await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// A piece of an instance's log file by byte offset, for `deploykit logs -f`: `from =
    /// None` is its last `max_bytes`; `Some(offset)` reads at most `max_bytes` from `offset`,
    /// or from 0 again with [`LogChunk::truncated`] set if the file is now shorter (it was
    /// rotated). Read on from [`LogChunk::next`]. An instance with no log is
    /// [`Error::NotFound`]; see [`InstanceLog::chunk`](crate::logs::InstanceLog::chunk).
    pub async fn log_chunk(
        &self,
        instance: &str,
        from: Option<u64>,
        max_bytes: usize,
    ) -> Result<LogChunk> {
        check_instance(instance)?;
        let mut path = format!("/v1/logs/{instance}/chunk?bytes={max_bytes}");
        if let Some(from) = from {
            path.push_str(&format!("&from={from}"));
        }
        self.get(&path).await
    }

    /// Make the daemon's proxy forward every request to `to` (over TLS trusting `trust`, when
    /// given), or serve them itself again (`None`); see [`LocalEnvironment::forward_to`].
    pub async fn forward(&self, to: Option<SocketAddr>, trust: Option<&str>) -> Result<()> {
        let trust = trust.map(str::to_owned);
        let body = serde_json::to_vec(&Forward { to, trust })
            .map_err(|e| Error::backend("encode a forward", e.to_string()))?;
        self.call(Method::PUT, "/v1/forward", Some(body)).await?;
        Ok(())
    }

    /// Ask the daemon to exit, stopping every instance first if `stop_instances`.
    pub async fn shutdown(&self, stop_instances: bool) -> Result<()> {
        self.call(
            Method::POST,
            &format!("/v1/shutdown?stop_instances={stop_instances}"),
            None,
        )
        .await?;
        Ok(())
    }
}

/// What a 404 from the daemon says was not found: its `not_found` field, else its message
/// without the ` not found` that [`Error::NotFound`] adds again.
fn not_found_what(body: &[u8], message: &str) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("not_found")?.as_str().map(str::to_string))
        .unwrap_or_else(|| {
            message
                .strip_suffix(" not found")
                .unwrap_or(message)
                .to_string()
        })
}

/// An instance name that can be put in a request path (the rules of log file names).
fn check_instance(instance: &str) -> Result<()> {
    crate::logs::validate_instance(instance).map_err(|e| Error::invalid("instance", e.to_string()))
}

#[async_trait]
impl Environment for LocalClient {
    async fn apply(&self, service: &ServiceId, desired: &DesiredState) -> Result<()> {
        let body = serde_json::to_vec(desired)
            .map_err(|e| Error::backend("encode the desired state", e.to_string()))?;
        self.call(Method::PUT, &format!("/v1/services/{service}"), Some(body))
            .await?;
        Ok(())
    }

    async fn observe(&self, service: &ServiceId) -> Result<Observed> {
        self.get(&format!("/v1/services/{service}")).await
    }

    async fn teardown(&self, service: &ServiceId) -> Result<()> {
        self.call(Method::DELETE, &format!("/v1/services/{service}"), None)
            .await?;
        Ok(())
    }
}

#[async_trait]
impl Monitor for LocalClient {
    async fn instance_health(
        &self,
        service: &ServiceId,
        revision: &RevisionId,
    ) -> Result<Vec<InstanceObservation>> {
        self.get(&format!(
            "/v1/services/{service}/revisions/{revision}/health"
        ))
        .await
    }

    async fn query(&self, query: &MetricQuery) -> Result<Vec<Sample>> {
        let body = serde_json::to_vec(query)
            .map_err(|e| Error::backend("encode the query", e.to_string()))?;
        let bytes = self.call(Method::POST, "/v1/query", Some(body)).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::backend("decode the daemon's samples", e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_parse_or_name_what_is_wrong() {
        assert_eq!(
            query_param::<u64>("bytes=10&from=42", "from", "a byte offset").unwrap(),
            Some(42)
        );
        assert_eq!(
            query_param::<u64>("bytes=10", "from", "a byte offset").unwrap(),
            None
        );
        assert_eq!(
            query_param::<u64>("fromage=1", "from", "a byte offset").unwrap(),
            None
        );
        let e = query_param::<u64>("from=-1", "from", "a byte offset").unwrap_err();
        assert!(matches!(e, Error::InvalidSpec { .. }), "{e:?}");
        let message = e.to_string();
        assert!(
            message.contains("query parameter from") && message.contains("\"-1\""),
            "{message}"
        );
        assert_eq!(log_bytes("").unwrap(), 64 * 1024);
        assert!(log_bytes("bytes=lots").is_err());
    }

    #[test]
    fn a_404_says_what_was_not_found() {
        let body =
            br#"{"error":"log of instance web-1 not found","not_found":"log of instance web-1"}"#;
        assert_eq!(
            not_found_what(body, "log of instance web-1 not found"),
            "log of instance web-1"
        );
        // A daemon that gives only a message.
        assert_eq!(
            not_found_what(b"{}", "service web not found"),
            "service web"
        );
        assert_eq!(not_found_what(b"", "no such thing"), "no such thing");
    }
}
