//! Health probes against local instances, with failure reasons that say exactly why
//! (`GET /healthz returned 503 Service Unavailable: database is down`), and a per-instance
//! health state machine with Kubernetes' semantics ([`HealthWatcher`]).
//!
//! Unix only (command probes run in their own process group; tested on Linux).

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use deploykit_core::{FailureKind, HealthChecks, Probe, ProbeAction};
use http::{HeaderName, HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior, timeout, timeout_at};

use crate::logs::truncate_chars;
use crate::process::{Exit, human_duration};

/// How many characters of a response body or a command's output go into a reason.
const EXCERPT_CHARS: usize = 120;
/// How much of a response body is read for the excerpt.
const BODY_PREFIX_BYTES: usize = 4096;

/// Where an instance's probes go.
#[derive(Clone, Debug)]
pub struct ProbeTarget {
    /// The instance's `PORT`, used when the probe names no port.
    pub port: u16,
    /// `Host` header for HTTP probes that set none (default `localhost:<port>`).
    pub host_header: Option<String>,
    /// Working directory of command probes.
    pub cwd: Option<PathBuf>,
    /// Variables added to the environment of command probes.
    pub env: BTreeMap<String, String>,
}

/// Runs one probe against `target`, giving it `timeout`; `Err` says why it failed.
///
/// - HTTP: `GET http://127.0.0.1:<port><path>`, healthy on 2xx only (redirects fail, with
///   their `Location`). `Host` is the probe's own `Host` header (any case), else
///   `target.host_header`, else `localhost:<port>`; `User-Agent` is `deploykit-probe` unless
///   the probe sets one.
/// - TCP: healthy when a connection to `127.0.0.1:<port>` is accepted.
/// - Command: `argv` run in `target.cwd` with `target.env` added, in its own process group
///   (killed on timeout); healthy on exit code 0.
/// - Custom: not supported locally; always fails.
pub async fn check(
    action: &ProbeAction,
    target: &ProbeTarget,
    timeout: Duration,
) -> Result<(), String> {
    match action {
        ProbeAction::Http {
            path,
            port,
            headers,
        } => check_http(path, port.unwrap_or(target.port), headers, target, timeout).await,
        ProbeAction::Tcp { port } => check_tcp(port.unwrap_or(target.port), timeout).await,
        ProbeAction::Command { argv } => check_command(argv, target, timeout).await,
        ProbeAction::Custom { name } => Err(format!(
            "custom check {name} is not registered in the local environment"
        )),
        other => Err(format!(
            "{other}: this kind of probe is not supported in the local environment"
        )),
    }
}

async fn check_http(
    path: &str,
    port: u16,
    headers: &BTreeMap<String, String>,
    target: &ProbeTarget,
    limit: Duration,
) -> Result<(), String> {
    let what = format!("GET {path}");
    let no_response = || format!("{what}: no response within {}", human_duration(limit));
    let request = http_request(path, port, headers, target).map_err(|e| format!("{what}: {e}"))?;
    let deadline = Instant::now() + limit;

    let stream = match timeout_at(deadline, TcpStream::connect(("127.0.0.1", port))).await {
        Err(_) => return Err(no_response()),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            return Err(format!("{what}: connection refused on port {port}"));
        }
        Ok(Err(e)) => {
            return Err(format!(
                "{what}: could not connect to port {port}: {}",
                os_message(&e)
            ));
        }
        Ok(Ok(stream)) if is_self_connected(&stream) => {
            return Err(format!("{what}: connection refused on port {port}"));
        }
        Ok(Ok(stream)) => stream,
    };
    let (mut sender, connection) = match timeout_at(
        deadline,
        hyper::client::conn::http1::handshake(TokioIo::new(stream)),
    )
    .await
    {
        Err(_) => return Err(no_response()),
        Ok(Err(e)) => return Err(format!("{what}: {e}")),
        Ok(Ok(pair)) => pair,
    };
    let _connection = AbortOnDrop(tokio::spawn(connection));
    let response = match timeout_at(deadline, sender.send_request(request)).await {
        Err(_) => return Err(no_response()),
        Ok(Err(e)) => return Err(format!("{what}: {e} (port {port})")),
        Ok(Ok(response)) => response,
    };

    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let mut reason = format!("{what} returned {}", status_text(status));
    if status.is_redirection() {
        if let Some(location) = response.headers().get(header::LOCATION) {
            reason.push_str(&format!(
                " (Location: {})",
                String::from_utf8_lossy(location.as_bytes())
            ));
        }
        return Err(reason);
    }
    let mut body = response.into_body();
    let mut prefix = Vec::new();
    while prefix.len() < BODY_PREFIX_BYTES {
        match timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    prefix.extend_from_slice(data);
                }
            }
            _ => break,
        }
    }
    let excerpt = head_excerpt(&String::from_utf8_lossy(&prefix));
    if !excerpt.is_empty() {
        reason.push_str(": ");
        reason.push_str(&excerpt);
    }
    Err(reason)
}

fn http_request(
    path: &str,
    port: u16,
    headers: &BTreeMap<String, String>,
    target: &ProbeTarget,
) -> Result<Request<Empty<Bytes>>, String> {
    let host = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("host"))
        .map(|(_, value)| value.clone())
        .or_else(|| target.host_header.clone())
        .unwrap_or_else(|| format!("localhost:{port}"));
    let mut builder = Request::get(path);
    let map = builder
        .headers_mut()
        .ok_or_else(|| format!("invalid path {path:?}"))?;
    let value = |name: &str, value: &str| {
        HeaderValue::from_str(value).map_err(|_| format!("invalid value for header {name}"))
    };
    map.insert(header::HOST, value("Host", &host)?);
    map.insert(
        header::USER_AGENT,
        HeaderValue::from_static("deploykit-probe"),
    );
    for (name, v) in headers {
        if name.eq_ignore_ascii_case("host") {
            continue;
        }
        let header_name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid header name {name:?}"))?;
        map.insert(header_name, value(name, v)?);
    }
    builder
        .body(Empty::new())
        .map_err(|_| format!("invalid path {path:?}"))
}

/// Whether a loopback connection is connected to itself: with nothing listening on a port in
/// the ephemeral range, Linux may pick that same port as the source and complete a TCP
/// "simultaneous open" with itself, which would pass a probe with no server at all.
fn is_self_connected(stream: &TcpStream) -> bool {
    matches!((stream.local_addr(), stream.peer_addr()), (Ok(l), Ok(p)) if l == p)
}

async fn check_tcp(port: u16, limit: Duration) -> Result<(), String> {
    let what = format!("TCP connect to port {port}");
    match timeout(limit, TcpStream::connect(("127.0.0.1", port))).await {
        Ok(Ok(stream)) if is_self_connected(&stream) => Err(format!("{what}: connection refused")),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            Err(format!("{what}: connection refused"))
        }
        Ok(Err(e)) => Err(format!("{what}: {}", os_message(&e))),
        Err(_) => Err(format!(
            "{what}: no answer within {}",
            human_duration(limit)
        )),
    }
}

async fn check_command(
    argv: &[String],
    target: &ProbeTarget,
    limit: Duration,
) -> Result<(), String> {
    let Some(program) = argv.first() else {
        return Err("exec: no command to run".to_string());
    };
    let what = format!("exec {}", truncate_chars(&argv.join(" "), 60));
    let mut command = Command::new(program);
    command
        .args(&argv[1..])
        .envs(&target.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = &target.cwd {
        command.current_dir(cwd);
    }
    let child = command
        .spawn()
        .map_err(|e| format!("{what}: could not start: {}", os_message(&e)))?;
    let pid = child.id();
    match timeout(limit, child.wait_with_output()).await {
        Ok(Ok(output)) if output.status.success() => Ok(()),
        Ok(Ok(output)) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let text = if stderr.trim().is_empty() {
                String::from_utf8_lossy(&output.stdout)
            } else {
                stderr
            };
            let excerpt = tail_excerpt(&text);
            let exit = Exit::from(output.status);
            if excerpt.is_empty() {
                Err(format!("{what} {exit}"))
            } else {
                Err(format!("{what} {exit}: {excerpt}"))
            }
        }
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => {
            // The leader is killed as the future is dropped; its group goes too.
            if let Some(pgid) = pid.and_then(|p| i32::try_from(p).ok()) {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
            Err(format!("{what}: no exit within {}", human_duration(limit)))
        }
    }
}

/// `503 Service Unavailable`, or just `599` for codes without a reason phrase.
fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// An io error without the ` (os error N)` suffix.
fn os_message(e: &io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_string(),
        _ => text,
    }
}

fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The first characters of `text`, whitespace collapsed.
fn head_excerpt(text: &str) -> String {
    truncate_chars(&collapse_whitespace(text), EXCERPT_CHARS)
}

/// The last characters of `text`, whitespace collapsed.
fn tail_excerpt(text: &str) -> String {
    let text = collapse_whitespace(text);
    let count = text.chars().count();
    if count <= EXCERPT_CHARS {
        return text;
    }
    let tail: String = text.chars().skip(count - (EXCERPT_CHARS - 1)).collect();
    format!("…{tail}")
}

struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An instance's health as its probes see it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Health {
    /// The startup probe passed (or none is configured).
    pub started: bool,
    /// Started, and readiness and custom checks pass (with their thresholds applied); true
    /// once started when there are none.
    pub ready: bool,
    /// The current failure, if any: [`FailureKind::Startup`] once the startup probe failed
    /// `failure_threshold` times in a row; [`FailureKind::Liveness`] once liveness did (until
    /// it passes again); [`FailureKind::Readiness`] (or [`FailureKind::Custom`]) once
    /// readiness (or a custom check) did, until it is passing again.
    pub failure: Option<(FailureKind, String)>,
}

/// Called with the probe's last reason (`GET /healthz returned 503 Service Unavailable`) when
/// liveness fails `failure_threshold` times in a row (typically restarts the process); probing
/// of liveness waits for it.
pub type LivenessCallback =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Probes one instance's [`HealthChecks`] in the background and keeps its [`Health`].
///
/// The startup probe runs first: after its `initial_delay`, every `period` until it passes;
/// `failure_threshold` failures in a row set a [`FailureKind::Startup`] failure, and probing
/// goes on. Once started, readiness, liveness and custom checks each run on their own
/// `period`, the first time `initial_delay` after the watcher (re)started. Readiness follows
/// Kubernetes: initially not ready, ready after `success_threshold` successes in a row, not
/// ready after `failure_threshold` failures in a row. Probing stops when the watcher is
/// stopped or its last clone is dropped.
///
/// [`start_ready`](Self::start_ready) starts from the other end, for an instance already found
/// ready by an earlier watcher (a process adopted by a restarted supervisor): started and ready
/// at once, then probed as usual.
///
/// Cheap to clone: clones share the probing.
#[derive(Clone)]
pub struct HealthWatcher {
    inner: Arc<WatcherInner>,
}

struct WatcherInner {
    context: Arc<Context>,
    task: Mutex<Option<JoinHandle<()>>>,
}

struct Context {
    checks: HealthChecks,
    target: ProbeTarget,
    on_liveness_failure: LivenessCallback,
    health: watch::Sender<Health>,
    tracker: Mutex<Tracker>,
}

/// The probes' findings, from which [`Health`] is derived.
#[derive(Default)]
struct Tracker {
    /// Bumped by reset and stop: findings of older probing tasks are ignored.
    generation: u64,
    started: bool,
    startup_failure: Option<String>,
    liveness_failure: Option<String>,
    readiness: Option<Gate>,
    custom: BTreeMap<String, Gate>,
}

#[derive(Default)]
struct Gate {
    ready: bool,
    failure: Option<String>,
}

#[derive(Clone)]
enum GateId {
    Readiness,
    Custom(String),
}

/// Where probing starts from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Begin {
    /// A process that just started: not started, not ready; the startup probe first, and each
    /// probe's `initial_delay`.
    Fresh,
    /// A process an earlier watcher found ready: started and ready; no startup probe, and no
    /// initial delays (the process is long past starting).
    Ready,
}

impl Tracker {
    fn initial(checks: &HealthChecks, generation: u64, begin: Begin) -> Tracker {
        let ready = begin == Begin::Ready;
        let gate = || Gate {
            ready,
            failure: None,
        };
        Tracker {
            generation,
            started: ready || checks.startup.is_none(),
            readiness: checks.readiness.as_ref().map(|_| gate()),
            custom: checks
                .custom
                .keys()
                .map(|name| (name.clone(), gate()))
                .collect(),
            ..Tracker::default()
        }
    }

    fn gate(&mut self, id: &GateId) -> Option<&mut Gate> {
        match id {
            GateId::Readiness => self.readiness.as_mut(),
            GateId::Custom(name) => self.custom.get_mut(name),
        }
    }

    fn health(&self) -> Health {
        let gates_pass = self.readiness.as_ref().is_none_or(|g| g.ready)
            && self.custom.values().all(|g| g.ready);
        let failure = self
            .startup_failure
            .clone()
            .map(|r| (FailureKind::Startup, r))
            .or_else(|| {
                self.liveness_failure
                    .clone()
                    .map(|r| (FailureKind::Liveness, r))
            })
            .or_else(|| {
                self.readiness
                    .as_ref()
                    .and_then(|g| g.failure.clone())
                    .map(|r| (FailureKind::Readiness, r))
            })
            .or_else(|| {
                self.custom.iter().find_map(|(name, g)| {
                    g.failure
                        .clone()
                        .map(|r| (FailureKind::Custom(name.clone()), r))
                })
            });
        Health {
            started: self.started,
            ready: self.started && gates_pass,
            failure,
        }
    }
}

impl Context {
    fn tracker(&self) -> MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a finding of the probing task of `generation`, if it is still current.
    fn update(&self, generation: u64, f: impl FnOnce(&mut Tracker)) {
        let mut tracker = self.tracker();
        if tracker.generation != generation {
            return;
        }
        f(&mut tracker);
        let health = tracker.health();
        self.health.send_if_modified(|current| {
            if *current == health {
                false
            } else {
                *current = health;
                true
            }
        });
    }

    /// Starts over: a new generation, initial health; returns the generation.
    fn begin(&self, begin: Begin) -> u64 {
        let mut tracker = self.tracker();
        let generation = tracker.generation + 1;
        *tracker = Tracker::initial(&self.checks, generation, begin);
        self.health.send_replace(tracker.health());
        generation
    }
}

impl fmt::Debug for HealthWatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthWatcher")
            .field("target", &self.inner.context.target)
            .field("health", &self.health())
            .finish_non_exhaustive()
    }
}

impl HealthWatcher {
    /// Starts probing `checks` against `target` in a background task, until the watcher is
    /// stopped or dropped. `on_liveness_failure` is awaited (in a task of its own, so that it
    /// may call [`reset`](Self::reset)) when liveness fails `failure_threshold` times in a row;
    /// the liveness failure count then starts again from zero.
    ///
    /// Must be called within a tokio runtime.
    pub fn start(
        checks: HealthChecks,
        target: ProbeTarget,
        on_liveness_failure: LivenessCallback,
    ) -> HealthWatcher {
        HealthWatcher::launch(checks, target, on_liveness_failure, Begin::Fresh)
    }

    /// Like [`start`](Self::start), for an instance that an earlier watcher last found ready
    /// (a process adopted from a supervisor that went away): its health starts out started and
    /// ready, the startup probe is skipped, and readiness, liveness and custom checks are probed
    /// as usual from now on, without their initial delays. `failure_threshold` failures in a
    /// row take it out of ready as they would any instance; [`reset`](Self::reset) (the process
    /// restarted) starts from not ready as usual.
    ///
    /// Must be called within a tokio runtime.
    pub fn start_ready(
        checks: HealthChecks,
        target: ProbeTarget,
        on_liveness_failure: LivenessCallback,
    ) -> HealthWatcher {
        HealthWatcher::launch(checks, target, on_liveness_failure, Begin::Ready)
    }

    fn launch(
        checks: HealthChecks,
        target: ProbeTarget,
        on_liveness_failure: LivenessCallback,
        begin: Begin,
    ) -> HealthWatcher {
        let context = Arc::new(Context {
            checks,
            target,
            on_liveness_failure,
            health: watch::Sender::new(Health::default()),
            tracker: Mutex::new(Tracker::default()),
        });
        let watcher = HealthWatcher {
            inner: Arc::new(WatcherInner {
                context,
                task: Mutex::new(None),
            }),
        };
        watcher.probe_from(begin);
        watcher
    }

    /// The current health.
    pub fn health(&self) -> Health {
        self.inner.context.health.borrow().clone()
    }

    /// Follows the health.
    pub fn watch(&self) -> watch::Receiver<Health> {
        self.inner.context.health.subscribe()
    }

    /// The process restarted: back to not started and not ready, probing from the beginning
    /// (initial delays included). Must be called within a tokio runtime.
    pub fn reset(&self) {
        self.probe_from(Begin::Fresh);
    }

    /// Replaces the probing task with a new generation starting from `begin`.
    fn probe_from(&self, begin: Begin) {
        let inner = &self.inner;
        let mut task = inner.task.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = task.take() {
            old.abort();
        }
        let generation = inner.context.begin(begin);
        *task = Some(tokio::spawn(probe_all(
            inner.context.clone(),
            generation,
            begin,
        )));
    }

    /// Stops probing (for every clone); the health stays as it was.
    pub fn stop(&self) {
        self.inner.stop();
    }
}

impl WatcherInner {
    fn stop(&self) {
        self.context.tracker().generation += 1;
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

impl Drop for WatcherInner {
    fn drop(&mut self) {
        self.stop();
    }
}

fn ticker(period: Duration) -> tokio::time::Interval {
    let mut ticks = tokio::time::interval(period.max(Duration::from_millis(10)));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks
}

async fn probe_all(context: Arc<Context>, generation: u64, begin: Begin) {
    let began = Instant::now();
    let checks = &context.checks;
    let target = &context.target;
    // When each probe first runs: after its initial delay, except for a process found ready.
    let first = |probe: &Probe| match begin {
        Begin::Fresh => began + probe.initial_delay,
        Begin::Ready => began,
    };
    if let Some(startup) = checks.startup.as_ref().filter(|_| begin == Begin::Fresh) {
        tokio::time::sleep_until(began + startup.initial_delay).await;
        let mut ticks = ticker(startup.period);
        let mut failures = 0u32;
        loop {
            ticks.tick().await;
            match check(&startup.action, target, startup.timeout).await {
                Ok(()) => break,
                Err(reason) => {
                    failures = failures.saturating_add(1);
                    if failures >= startup.failure_threshold {
                        context.update(generation, |t| t.startup_failure = Some(reason));
                    }
                }
            }
        }
        context.update(generation, |t| {
            t.started = true;
            t.startup_failure = None;
        });
    }
    // Dropping the set (when this task is aborted) aborts the probing loops.
    let mut loops = JoinSet::new();
    if let Some(probe) = &checks.readiness {
        loops.spawn(gate_loop(
            context.clone(),
            generation,
            GateId::Readiness,
            probe.clone(),
            first(probe),
        ));
    }
    for (name, probe) in &checks.custom {
        loops.spawn(gate_loop(
            context.clone(),
            generation,
            GateId::Custom(name.clone()),
            probe.clone(),
            first(probe),
        ));
    }
    if let Some(probe) = &checks.liveness {
        loops.spawn(liveness_loop(
            context.clone(),
            generation,
            probe.clone(),
            first(probe),
        ));
    }
    while loops.join_next().await.is_some() {}
}

async fn gate_loop(
    context: Arc<Context>,
    generation: u64,
    id: GateId,
    probe: Probe,
    first: Instant,
) {
    tokio::time::sleep_until(first).await;
    let mut ticks = ticker(probe.period);
    let (mut successes, mut failures) = (0u32, 0u32);
    loop {
        ticks.tick().await;
        let result = check(&probe.action, &context.target, probe.timeout).await;
        match &result {
            Ok(()) => {
                successes = successes.saturating_add(1);
                failures = 0;
            }
            Err(_) => {
                failures = failures.saturating_add(1);
                successes = 0;
            }
        }
        context.update(generation, |t| {
            let Some(gate) = t.gate(&id) else { return };
            match result {
                Ok(()) if successes >= probe.success_threshold => {
                    gate.ready = true;
                    gate.failure = None;
                }
                Err(reason) if failures >= probe.failure_threshold => {
                    gate.ready = false;
                    gate.failure = Some(reason);
                }
                _ => {}
            }
        });
    }
}

async fn liveness_loop(context: Arc<Context>, generation: u64, probe: Probe, first: Instant) {
    tokio::time::sleep_until(first).await;
    let mut ticks = ticker(probe.period);
    let mut failures = 0u32;
    loop {
        ticks.tick().await;
        match check(&probe.action, &context.target, probe.timeout).await {
            Ok(()) => {
                failures = 0;
                context.update(generation, |t| t.liveness_failure = None);
            }
            Err(reason) => {
                failures = failures.saturating_add(1);
                if failures >= probe.failure_threshold {
                    failures = 0;
                    tracing::warn!(%reason, "liveness failed");
                    let callback = (context.on_liveness_failure)(reason.clone());
                    context.update(generation, |t| t.liveness_failure = Some(reason));
                    let _ = tokio::spawn(callback).await;
                    ticks.reset();
                }
            }
        }
    }
}
