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
//! | `GET /v1/logs/{instance}?bytes=N` | the log's tail, as text |
//! | `POST /v1/shutdown?stop_instances=true` | `204`, then the daemon exits |
//!
//! Errors are `{"error": "…"}` with status 400 (bad request or spec), 404, 503 (a transient
//! failure: retry) or 500.
//!
//! The daemon not answering is never final for [`LocalClient`]: a missing socket, a refused,
//! reset or dropped connection and a `503` are all [`Error::Transient`], so an orchestrator
//! retries them (a daemon killed mid-rollout and started again adopts the instances it left,
//! and the rollout goes on). Only a daemon that answers and refuses makes an
//! [`Error::Backend`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use deploykit_core::{
    DesiredState, Environment, Error, InstanceObservation, MetricQuery, Monitor, Observed, Result,
    RevisionId, Sample, ServiceId,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;

use crate::environment::LocalEnvironment;

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
}

/// Serve `env` on the Unix socket `socket` until `POST /v1/shutdown` or `shutdown` completes.
/// A stale socket file (no daemon answering) is replaced; a live one is an error.
pub async fn serve(
    env: LocalEnvironment,
    socket: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
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
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let env = env.clone();
                        let stop = stop.clone();
                        let stop_instances = stop_instances.clone();
                        async move {
                            Ok::<_, Infallible>(handle(&env, req, &stop, &stop_instances).await)
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

fn from_result<T: Serialize>(result: Result<T>) -> Response<Full<Bytes>> {
    match result {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => error_response(&e),
    }
}

fn error_response(e: &Error) -> Response<Full<Bytes>> {
    let status = match e {
        Error::InvalidSpec { .. } => StatusCode::BAD_REQUEST,
        Error::NotFound { .. } => StatusCode::NOT_FOUND,
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

async fn handle(
    env: &LocalEnvironment,
    req: Request<Incoming>,
    stop: &Notify,
    stop_instances: &std::sync::atomic::AtomicBool,
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
            },
        ),
        (_, ["v1", "services", service, rest @ ..]) => {
            let service = match ServiceId::new(*service) {
                Ok(s) => s,
                Err(e) => return error_response(&e),
            };
            match (&method, rest) {
                (&Method::GET, []) => from_result(env.observe(&service).await),
                (&Method::PUT, []) => match body_json::<DesiredState>(req).await {
                    Ok(desired) => no_content(env.apply(&service, &desired).await),
                    Err(e) => error_response(&e),
                },
                (&Method::DELETE, []) => no_content(env.teardown(&service).await),
                (&Method::GET, ["revisions", revision, "health"]) => {
                    match RevisionId::parse(revision) {
                        Ok(rev) => from_result(env.instance_health(&service, &rev).await),
                        Err(e) => error_response(&e),
                    }
                }
                _ => error(
                    StatusCode::NOT_FOUND,
                    format!("no such endpoint: {method} {path}"),
                ),
            }
        }
        (&Method::POST, ["v1", "query"]) => match body_json::<MetricQuery>(req).await {
            Ok(q) => from_result(env.query(&q).await),
            Err(e) => error_response(&e),
        },
        (&Method::GET, ["v1", "logs", instance]) => {
            let bytes = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("bytes="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(64 * 1024);
            match env.logs(instance, bytes) {
                Ok(text) => Response::builder()
                    .header("content-type", "text/plain; charset=utf-8")
                    .body(Full::new(Bytes::from(text)))
                    .unwrap_or_default(),
                Err(e) => error_response(&e),
            }
        }
        (&Method::POST, ["v1", "shutdown"]) => {
            let stop_all = query.split('&').any(|kv| kv == "stop_instances=true");
            stop_instances.store(stop_all, std::sync::atomic::Ordering::SeqCst);
            stop.notify_one();
            no_content(Ok(()))
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {method} {path}"),
        ),
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

    /// The last `max_bytes` of an instance's log.
    pub async fn logs(&self, instance: &str, max_bytes: usize) -> Result<String> {
        let bytes = self
            .call(
                Method::GET,
                &format!("/v1/logs/{instance}?bytes={max_bytes}"),
                None,
            )
            .await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
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
