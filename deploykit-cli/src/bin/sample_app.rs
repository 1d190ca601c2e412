//! `deploykit sample-app` (also built alone as `deploykit-sample-app`): the tiny HTTP/1.1 server
//! deploykit's local demo, the README's walkthrough and the tests deploy.
//!
//! It is configured only through environment variables, so a "bad version" is the same binary
//! started with different variables:
//!
//! | Variable         | Default | Meaning                                                              |
//! |------------------|---------|----------------------------------------------------------------------|
//! | `PORT`           | —       | Required. Port to listen on; the app binds `127.0.0.1:PORT`.         |
//! | `VERSION`        | `dev`   | Version string returned in bodies, metrics and the `x-version` header. |
//! | `ERROR_RATE`     | `0`     | Share (0.0–1.0) of `/` requests answered `500 injected error`. The spread is deterministic: request *n* (counting from 0) fails when `floor((n+1)*rate) > floor(n*rate)`, so `0.5` fails exactly every second request. |
//! | `LATENCY_MS`     | `0`     | Milliseconds added to every `/` response.                            |
//! | `START_DELAY_MS` | `0`     | Milliseconds to sleep before binding (a slow start).                 |
//! | `CRASH_ON_START` | off     | `1`/`true`: print a message to stderr and exit 1 at once.            |
//! | `CRASH_AFTER_MS` | off     | Milliseconds after binding (so after it would pass readiness) to print a message to stderr and exit 1 at once, dropping open connections: a revision that crashes after becoming ready. |
//! | `IGNORE_SIGTERM` | off     | `1`/`true`: keep serving on SIGTERM. Otherwise SIGTERM stops accepting, lets in-flight requests finish and exits 0. |
//! | `HEALTH_STATUS`  | `200`   | Status `/healthz` answers (100–599). For 301–308 a `Location: https://example.invalid/healthz` header is added. |
//! | `LOG_FORMAT`     | `text`  | `text`: only the startup line below. `json`: the startup line as a JSON object, then an access log of one JSON line per request on stdout (see below). |
//! | `DATABASE_URL`   | —       | A PostgreSQL connection string (`host=… port=… user=… dbname=…` or `postgresql://…`) for `/write` and `/db`. The app connects on first use, creates its table if missing, and reconnects after an error; `/healthz` never depends on it. |
//!
//! Boolean variables accept `1`/`true`/`yes`/`on` and `0`/`false`/`no`/`off`/empty (any case).
//! A missing or invalid `PORT`, or any invalid value, prints a message naming the variable and
//! the value to stderr and exits with code 2.
//!
//! Routes (any method):
//!
//! - `/` → `200 hello from <VERSION>\n`, or `500 injected error\n` per `ERROR_RATE`.
//! - `/healthz` → `HEALTH_STATUS` with body `ok\n`.
//! - `/metrics` → Prometheus text with the counters `sample_requests_total{version="…"}` (requests
//!   to `/` and `/slow`) and `sample_errors_total{version="…"}` (injected errors).
//! - `/slow?ms=N` → sleeps `N` ms (capped at 30000; missing means 0), then `200 slept <N>ms\n`;
//!   an unparsable `ms` gets `400`.
//! - `/write?key=K` → inserts a row `(K, VERSION)` into the table `sample_writes` (created if
//!   missing) and answers `200 wrote <K>\n` once the commit returned; `503` with the database's
//!   error when it did not (the row may or may not be there: the client must not count it).
//!   Without `key` the key is `<VERSION>-<n>`.
//! - `/db` → `200 db ok\n` when `SELECT 1` answers, else `503` with the error.
//! - `/write` and `/db` without `DATABASE_URL` → `503 no DATABASE_URL\n`.
//! - anything else → `404 not found\n`.
//!
//! Every response carries `x-version: <VERSION>`. On start the app prints one line to stdout:
//! `sample-app <VERSION> listening on 127.0.0.1:<PORT>`.
//!
//! With `LOG_FORMAT=json` every line on stdout is a JSON object with `time` (RFC 3339, UTC,
//! milliseconds), `level`, `msg` and `version`: the startup line
//! `{"time":…,"level":"info","msg":"sample-app <VERSION> listening on 127.0.0.1:<PORT>","version":…,"addr":"127.0.0.1:<PORT>"}`,
//! then one line per request, written when its response is ready:
//! `{"time":…,"level":"info","msg":"request","method":"GET","path":"/slow?ms=5","status":200,"duration_ms":5.1,"version":…}`
//! (`path` with its query string; `level` is `error` for a 5xx status, `warn` for a 4xx).
//! Messages on stderr stay plain text.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use deploykit_postgres::tokio_postgres::{Client, NoTls};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue, LOCATION};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Longest sleep `/slow?ms=N` honours.
const MAX_SLOW_MS: u64 = 30_000;

/// Settings read from the environment.
#[derive(Debug)]
struct Config {
    port: u16,
    version: String,
    error_rate: f64,
    latency_ms: u64,
    start_delay_ms: u64,
    crash_after_ms: Option<u64>,
    ignore_sigterm: bool,
    health_status: StatusCode,
    log_json: bool,
    database_url: Option<String>,
}

/// A configuration problem: the message names the variable and the bad value.
struct ConfigError(String);

fn var(name: &str) -> Result<Option<String>, ConfigError> {
    match std::env::var(name) {
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(raw)) => {
            Err(ConfigError(format!("{name} is not valid UTF-8: {raw:?}")))
        }
    }
}

fn parse_bool(name: &str) -> Result<bool, ConfigError> {
    let Some(value) = var(name)? else {
        return Ok(false);
    };
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "" | "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(ConfigError(format!(
            "invalid {name}={value:?}: expected 1/true or 0/false"
        ))),
    }
}

fn parse_u64(name: &str, default: u64) -> Result<u64, ConfigError> {
    match var(name)? {
        None => Ok(default),
        Some(value) => value.trim().parse().map_err(|_| {
            ConfigError(format!(
                "invalid {name}={value:?}: expected a non-negative integer"
            ))
        }),
    }
}

impl Config {
    fn from_env() -> Result<Config, ConfigError> {
        let port = match var("PORT")? {
            None => {
                return Err(ConfigError(
                    "PORT is required (the port to listen on)".into(),
                ));
            }
            Some(value) => match value.trim().parse::<u16>() {
                Ok(port) if port != 0 => port,
                _ => {
                    return Err(ConfigError(format!(
                        "invalid PORT={value:?}: expected a port number 1-65535"
                    )));
                }
            },
        };
        let version = var("VERSION")?.unwrap_or_else(|| "dev".to_owned());
        let error_rate = match var("ERROR_RATE")? {
            None => 0.0,
            Some(value) => match value.trim().parse::<f64>() {
                Ok(rate) if (0.0..=1.0).contains(&rate) => rate,
                _ => {
                    return Err(ConfigError(format!(
                        "invalid ERROR_RATE={value:?}: expected a number between 0.0 and 1.0"
                    )));
                }
            },
        };
        let latency_ms = parse_u64("LATENCY_MS", 0)?;
        let start_delay_ms = parse_u64("START_DELAY_MS", 0)?;
        let crash_after_ms = match var("CRASH_AFTER_MS")? {
            None => None,
            Some(_) => Some(parse_u64("CRASH_AFTER_MS", 0)?),
        };
        let ignore_sigterm = parse_bool("IGNORE_SIGTERM")?;
        let health_status = match var("HEALTH_STATUS")? {
            None => StatusCode::OK,
            Some(value) => match value.trim().parse::<u16>() {
                Ok(code @ 100..=599) => StatusCode::from_u16(code)
                    .map_err(|_| ConfigError(format!("invalid HEALTH_STATUS={value:?}")))?,
                _ => {
                    return Err(ConfigError(format!(
                        "invalid HEALTH_STATUS={value:?}: expected an HTTP status 100-599"
                    )));
                }
            },
        };
        let log_json = match var("LOG_FORMAT")? {
            None => false,
            Some(value) => match value.trim().to_ascii_lowercase().as_str() {
                "" | "text" => false,
                "json" => true,
                _ => {
                    return Err(ConfigError(format!(
                        "invalid LOG_FORMAT={value:?}: expected text or json"
                    )));
                }
            },
        };
        let database_url = var("DATABASE_URL")?.filter(|v| !v.trim().is_empty());
        if let Some(url) = &database_url
            && let Err(e) = url.parse::<deploykit_postgres::tokio_postgres::Config>()
        {
            return Err(ConfigError(format!("invalid DATABASE_URL: {e}")));
        }
        Ok(Config {
            database_url,
            log_json,
            port,
            version,
            error_rate,
            latency_ms,
            start_delay_ms,
            crash_after_ms,
            ignore_sigterm,
            health_status,
        })
    }
}

/// Shared state of the running app.
struct App {
    version: String,
    version_header: HeaderValue,
    error_rate: f64,
    latency: Duration,
    health_status: StatusCode,
    /// Whether to write the JSON access log (`LOG_FORMAT=json`).
    log_json: bool,
    /// Requests to `/` so far (drives the deterministic error spread).
    root_requests: AtomicU64,
    /// Requests to `/` and `/slow`.
    requests_total: AtomicU64,
    /// Injected errors.
    errors_total: AtomicU64,
    /// The database of `/write` and `/db`, if `DATABASE_URL` is set.
    db: Option<Db>,
    /// Writes so far (keys of `/write` without one).
    writes: AtomicU64,
}

/// A connection to `DATABASE_URL`, made on first use and again after it broke.
struct Db {
    url: String,
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
}

/// How long connecting to the database may take before `/write` and `/db` answer 503.
const DB_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one statement may take before the request answers 503.
const DB_STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

impl Db {
    /// The open connection, or a new one (with the table created).
    async fn client(&self) -> Result<Arc<Client>, String> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref()
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        *slot = None;
        let (client, connection) = tokio::time::timeout(
            DB_CONNECT_TIMEOUT,
            deploykit_postgres::tokio_postgres::connect(&self.url, NoTls),
        )
        .await
        .map_err(|_| format!("no connection within {DB_CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("connect: {e}"))?;
        tokio::spawn(connection);
        client
            // Instances connecting at once would race on the catalog: one at a time.
            .batch_execute(
                "BEGIN; SELECT pg_advisory_xact_lock(7170); CREATE TABLE IF NOT EXISTS \
                 sample_writes (id bigserial PRIMARY KEY, key text NOT NULL, version text NOT \
                 NULL, at timestamptz NOT NULL DEFAULT now()); COMMIT",
            )
            .await
            .map_err(|e| format!("create table sample_writes: {e}"))?;
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Run `f` on a connection within [`DB_STATEMENT_TIMEOUT`]; a failure drops the
    /// connection so that the next request makes a new one.
    async fn run<T, F, Fut>(&self, f: F) -> Result<T, String>
    where
        F: FnOnce(Arc<Client>) -> Fut,
        Fut: std::future::Future<Output = Result<T, deploykit_postgres::tokio_postgres::Error>>,
    {
        let client = self.client().await?;
        let outcome = tokio::time::timeout(DB_STATEMENT_TIMEOUT, f(client.clone()))
            .await
            .map_err(|_| format!("no answer within {DB_STATEMENT_TIMEOUT:?}"))
            .and_then(|r| r.map_err(|e| e.to_string()));
        if outcome.is_err() {
            let mut slot = self.client.lock().await;
            if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, &client)) {
                *slot = None;
            }
        }
        outcome
    }
}

impl App {
    /// Whether the `n`th (0-based) request to `/` should fail.
    fn should_fail(&self, n: u64) -> bool {
        let rate = self.error_rate;
        ((n + 1) as f64 * rate).floor() > (n as f64 * rate).floor()
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let (status, body) = match req.uri().path() {
            "/" => {
                self.requests_total.fetch_add(1, Ordering::Relaxed);
                let n = self.root_requests.fetch_add(1, Ordering::Relaxed);
                if !self.latency.is_zero() {
                    tokio::time::sleep(self.latency).await;
                }
                if self.should_fail(n) {
                    self.errors_total.fetch_add(1, Ordering::Relaxed);
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "injected error\n".to_owned(),
                    )
                } else {
                    (StatusCode::OK, format!("hello from {}\n", self.version))
                }
            }
            "/healthz" => (self.health_status, "ok\n".to_owned()),
            "/metrics" => (StatusCode::OK, self.metrics()),
            "/slow" => {
                self.requests_total.fetch_add(1, Ordering::Relaxed);
                match slow_ms(req.uri().query()) {
                    Some(ms) => {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        (StatusCode::OK, format!("slept {ms}ms\n"))
                    }
                    None => (StatusCode::BAD_REQUEST, "bad ms\n".to_owned()),
                }
            }
            "/write" => self.write(req.uri().query()).await,
            "/db" => match &self.db {
                None => no_database(),
                Some(db) => match db
                    .run(|c| async move { c.simple_query("SELECT 1").await })
                    .await
                {
                    Ok(_) => (StatusCode::OK, "db ok\n".to_owned()),
                    Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
                },
            },
            _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert("x-version", self.version_header.clone());
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if req.uri().path() == "/healthz" && (301..=308).contains(&status.as_u16()) {
            headers.insert(
                LOCATION,
                HeaderValue::from_static("https://example.invalid/healthz"),
            );
        }
        if self.log_json {
            self.log_request(&req, status, started.elapsed());
        }
        response
    }

    /// `/write?key=K`: one committed row, or 503.
    async fn write(&self, query: Option<&str>) -> (StatusCode, String) {
        let Some(db) = &self.db else {
            return no_database();
        };
        let key = query
            .unwrap_or("")
            .split('&')
            .find_map(|pair| pair.strip_prefix("key="))
            .map(str::to_owned)
            .unwrap_or_else(|| {
                format!(
                    "{}-{}",
                    self.version,
                    self.writes.fetch_add(1, Ordering::Relaxed)
                )
            });
        let version = self.version.clone();
        let written = {
            let key = key.clone();
            db.run(|c| async move {
                c.execute(
                    "INSERT INTO sample_writes (key, version) VALUES ($1, $2)",
                    &[&key, &version],
                )
                .await
            })
            .await
        };
        match written {
            Ok(_) => (StatusCode::OK, format!("wrote {key}\n")),
            Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
        }
    }

    /// One line of the JSON access log.
    fn log_request(&self, req: &Request<Incoming>, status: StatusCode, took: Duration) {
        let level = if status.is_server_error() {
            "error"
        } else if status.is_client_error() {
            "warn"
        } else {
            "info"
        };
        let path = req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().path(), |p| p.as_str());
        let line = serde_json::json!({
            "time": now_rfc3339(),
            "level": level,
            "msg": "request",
            "method": req.method().as_str(),
            "path": path,
            "status": status.as_u16(),
            "duration_ms": (took.as_secs_f64() * 1e4).round() / 10.0,
            "version": self.version,
        });
        println!("{line}");
    }

    fn metrics(&self) -> String {
        let version = self.version.replace('\\', "\\\\").replace('"', "\\\"");
        let requests = self.requests_total.load(Ordering::Relaxed);
        let errors = self.errors_total.load(Ordering::Relaxed);
        format!(
            "# HELP sample_requests_total Requests to / and /slow.\n\
             # TYPE sample_requests_total counter\n\
             sample_requests_total{{version=\"{version}\"}} {requests}\n\
             # HELP sample_errors_total Injected errors (ERROR_RATE).\n\
             # TYPE sample_errors_total counter\n\
             sample_errors_total{{version=\"{version}\"}} {errors}\n"
        )
    }
}

/// The answer of `/write` and `/db` when no database is configured.
fn no_database() -> (StatusCode, String) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "no DATABASE_URL\n".to_owned(),
    )
}

/// Now as RFC 3339 in UTC with milliseconds.
fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// The `ms` of `/slow?ms=N`, capped; `None` if it is not a number.
fn slow_ms(query: Option<&str>) -> Option<u64> {
    let value = query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("ms="));
    match value {
        None => Some(0),
        Some(v) => v.parse::<u64>().ok().map(|ms| ms.min(MAX_SLOW_MS)),
    }
}

pub(crate) fn main() -> ExitCode {
    match parse_bool("CRASH_ON_START") {
        Ok(true) => {
            eprintln!("sample-app: crashing on start as asked (CRASH_ON_START)");
            return ExitCode::from(1);
        }
        Ok(false) => {}
        Err(ConfigError(message)) => {
            eprintln!("sample-app: {message}");
            return ExitCode::from(2);
        }
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(ConfigError(message)) => {
            eprintln!("sample-app: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("sample-app: cannot start the runtime: {err}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(serve(config))
}

/// Resolves when a SIGTERM arrives that should stop the app (never, with `IGNORE_SIGTERM`).
async fn terminated(sigterm: &mut Signal, ignore_sigterm: bool) {
    loop {
        if sigterm.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
        if ignore_sigterm {
            eprintln!("sample-app: ignoring SIGTERM (IGNORE_SIGTERM)");
        } else {
            return;
        }
    }
}

async fn serve(config: Config) -> ExitCode {
    // Install the SIGTERM handler first so that SIGTERM never takes the default action.
    let mut sigterm = match signal(SignalKind::terminate()) {
        Ok(sigterm) => sigterm,
        Err(err) => {
            eprintln!("sample-app: cannot install the SIGTERM handler: {err}");
            return ExitCode::from(1);
        }
    };
    let ignore_sigterm = config.ignore_sigterm;

    if config.start_delay_ms > 0 {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(config.start_delay_ms)) => {}
            () = terminated(&mut sigterm, ignore_sigterm) => return ExitCode::SUCCESS,
        }
    }

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, config.port));
    let listener = match TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("sample-app: cannot listen on {addr}: {err}");
            return ExitCode::from(1);
        }
    };
    let version_header = match HeaderValue::from_str(&config.version) {
        Ok(value) => value,
        Err(_) => {
            eprintln!(
                "sample-app: invalid VERSION={:?}: not usable as a header value",
                config.version
            );
            return ExitCode::from(2);
        }
    };
    let app = Arc::new(App {
        version: config.version,
        version_header,
        error_rate: config.error_rate,
        latency: Duration::from_millis(config.latency_ms),
        health_status: config.health_status,
        log_json: config.log_json,
        root_requests: AtomicU64::new(0),
        requests_total: AtomicU64::new(0),
        errors_total: AtomicU64::new(0),
        db: config.database_url.map(|url| Db {
            url,
            client: tokio::sync::Mutex::new(None),
        }),
        writes: AtomicU64::new(0),
    });
    let listening = format!("sample-app {} listening on {addr}", app.version);
    if app.log_json {
        let line = serde_json::json!({
            "time": now_rfc3339(),
            "level": "info",
            "msg": listening,
            "version": app.version,
            "addr": addr.to_string(),
        });
        println!("{line}");
    } else {
        println!("{listening}");
    }
    if let Some(ms) = config.crash_after_ms {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            eprintln!("sample-app: crashing {ms}ms after binding as asked (CRASH_AFTER_MS)");
            std::process::exit(1);
        });
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    eprintln!("sample-app: accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = terminated(&mut sigterm, ignore_sigterm) => break,
        };
        let app = Arc::clone(&app);
        let mut shutdown = shutdown_rx.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let app = Arc::clone(&app);
                async move { Ok::<_, Infallible>(app.handle(req).await) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }

    // Stop accepting, then let in-flight requests finish.
    drop(listener);
    let _ = shutdown_tx.send(true);
    while connections.join_next().await.is_some() {}
    eprintln!("sample-app: stopped after SIGTERM");
    ExitCode::SUCCESS
}
