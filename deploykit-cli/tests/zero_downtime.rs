//! Zero downtime, measured: requests (1 in 10 slow) go through the proxy while a canary rolls
//! to 100 %, while a blue-green switch happens, while a bad canary is rolled back, while a
//! canary that crashes seconds after becoming ready is rolled back, and while the local daemon
//! is killed with SIGKILL mid-canary and started again. No request may be dropped, except
//! within a measured window: from the crashed revision's first exit to traffic being back on
//! the stable revision, and from the daemon's death (it runs the proxy) to its instances being
//! ready again behind the restarted daemon. The bad canary's own 500s are the app's answers,
//! not drops.
//!
//! CI runs 3,000 requests per scenario. The figures in BENCHMARKS.md come from
//! `DEPLOYKIT_LOAD_REQUESTS=10000 cargo test --release -p deploykit-cli --test zero_downtime -- --nocapture`.

mod common;

use std::time::{Duration, Instant};

use common::{APP, Daemon, Rig, free_port, json, start_daemon};
use deploykit_core::{Environment, FailureKind, Observed, Phase, ServiceId};
use deploykit_local::LocalClient;
use deploykit_local::loadgen::{self, Completed, LoadConfig, LoadReport};
use tokio::sync::mpsc;

const CONFIG: &str = r#"
application = "zero-downtime"

[analyses.errors]
metrics = [
  { name = "error-rate", query = "error_rate[5s]", below = 0.02, interval = "500ms", count = 20 },
]

[services.web]
command = ["{APP}"]
port = 8080
health.readiness = { http = "/healthz", period = "200ms", timeout = "150ms", failure_threshold = 2 }

[environments.canary]
kind = "production"
replicas = 2
progress_deadline = "30s"

[environments.canary.strategy.canary]
background_analysis = "errors"
scale_down_delay = "500ms"
steps = [
  { weight = 25 },
  { pause = "1s" },
  { weight = 50 },
  { pause = "1s" },
]

[environments.bluegreen]
kind = "staging"
replicas = 2
progress_deadline = "30s"
strategy.blue_green = { auto_promote = true, auto_promotion_delay = "1s", scale_down_delay = "500ms" }
"#;

/// The daemon's scenario: the same service, one environment (the daemon runs one), a canary
/// whose first pause leaves time to kill the daemon while the traffic is split.
const DAEMON_CONFIG: &str = r#"
application = "zero-downtime"

[services.web]
command = ["{APP}"]
port = 8080
health.readiness = { http = "/healthz", period = "200ms", timeout = "150ms", failure_threshold = 2 }

[environments.production]
kind = "production"
replicas = 2
progress_deadline = "30s"

[environments.production.strategy.canary]
scale_down_delay = "500ms"
steps = [
  { weight = 25 },
  { pause = "3s" },
  { weight = 50 },
  { pause = "1s" },
]
"#;

fn requests() -> u64 {
    std::env::var("DEPLOYKIT_LOAD_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

/// The load every scenario runs: `requests()` paced over 12 s, 16 connections.
fn load_config(proxy: std::net::SocketAddr) -> LoadConfig {
    let total = requests();
    // Paced so the load (12 s) outlasts the rollout (about 4 s) with room to spare on a slow machine.
    let mut load = LoadConfig::new(proxy, total);
    load.rate_per_sec = Some((total / 12).max(100) as u32);
    load.concurrency = 16;
    load
}

/// One scenario's figures.
struct Row {
    name: &'static str,
    outcome: Phase,
    requests: u64,
    dropped: u64,
    app_errors: u64,
    fast: (Duration, Duration),
    slow: (Duration, Duration),
    rollback_latency: Option<Duration>,
    /// The window in which drops are expected (a crash until traffic is back on the stable
    /// revision; the daemon's death until its instances are ready again), if any.
    window: Option<Duration>,
    /// Dropped requests that do not overlap the window: must be 0.
    dropped_outside: u64,
    versions: Vec<String>,
}

/// What the completed requests say.
struct Tally {
    dropped: u64,
    dropped_outside: u64,
    app_errors: u64,
    last_v2_sent: Option<Instant>,
    last_done: Option<Instant>,
    fast: (Duration, Duration),
    slow: (Duration, Duration),
    samples: Vec<String>,
}

/// Counts the completed requests; a dropped request is inside `window` when its life (sent to
/// done) overlaps it.
fn tally(rx: &mut mpsc::UnboundedReceiver<Completed>, window: Option<(Instant, Instant)>) -> Tally {
    let mut t = Tally {
        dropped: 0,
        dropped_outside: 0,
        app_errors: 0,
        last_v2_sent: None,
        last_done: None,
        fast: Default::default(),
        slow: Default::default(),
        samples: Vec::new(),
    };
    let (mut fast, mut slow) = (Vec::new(), Vec::new());
    while let Ok(c) = rx.try_recv() {
        t.last_done = t.last_done.max(Some(c.done_at));
        let took = c.done_at.saturating_duration_since(c.sent_at);
        if c.path_slow {
            slow.push(took);
        } else {
            fast.push(took);
        }
        match &c.version {
            None => {
                t.dropped += 1;
                let inside = window.is_some_and(|(from, to)| c.done_at >= from && c.sent_at <= to);
                if !inside {
                    t.dropped_outside += 1;
                    if t.samples.len() < 5 {
                        t.samples.push(format!("{c:?}"));
                    }
                }
            }
            Some(v) => {
                if !c.ok {
                    t.app_errors += 1;
                }
                if v == "v2" {
                    t.last_v2_sent = t.last_v2_sent.max(Some(c.sent_at));
                }
            }
        }
    }
    t.fast = percentiles(&mut fast);
    t.slow = percentiles(&mut slow);
    t
}

/// Watches v2 of `web` through `env` until traffic left it after a failure: when the backend
/// first reported a v2 instance exiting (a `crash-looping` failure or a restart), and when the
/// routing then stopped sending v2 any traffic. `None` if that did not happen within 60 s.
async fn watch_crash(env: impl Environment) -> Option<(Instant, Instant)> {
    let web = ServiceId::new("web").expect("service");
    let until = Instant::now() + Duration::from_secs(60);
    let mut crashed = None;
    while Instant::now() < until {
        if let Ok(observed) = env.observe(&web).await {
            let v2 = observed.revisions.iter().find(|r| r.revision.label == "v2");
            if crashed.is_none()
                && v2.is_some_and(|r| {
                    r.instances.iter().any(|i| {
                        i.restarts > 0
                            || i.failure
                                .as_ref()
                                .is_some_and(|f| f.kind == FailureKind::CrashLoop)
                    })
                })
            {
                crashed = Some(Instant::now());
            }
            if let Some(at) = crashed
                && v2.is_none_or(|r| routed_weight(&observed, r) == 0)
            {
                return Some((at, Instant::now()));
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// The weight the applied routing gives revision `r` (not what it is served: a revision with
/// no ready instance is served nothing whatever its weight).
fn routed_weight(observed: &Observed, r: &deploykit_core::RevisionObservation) -> u32 {
    observed
        .routing
        .routes()
        .map_or(0, |routes| routes.weight_of(&r.revision.id))
}

/// Deploy v1, then run load while deploying `to` (with `vars`); return the figures. With
/// `crashes`, v2 is expected to exit after becoming ready: drops are allowed only within the
/// window from its first exit to traffic being back on v1.
async fn scenario(
    name: &'static str,
    env: &str,
    to_vars: &[(&str, &str)],
    expect: Phase,
    crashes: bool,
) -> Row {
    let rig = Rig::new(CONFIG).await;
    let first = rig
        .orchestrator
        .deploy(rig.request("web", env, "v1", &[]))
        .await
        .expect("deploy v1");
    assert_eq!(
        rig.orchestrator.wait(&first).await.expect("v1").phase,
        Phase::Succeeded
    );

    let (tx, mut rx) = mpsc::unbounded_channel::<Completed>();
    let load = tokio::spawn(loadgen::run(load_config(rig.local.proxy_addr()), Some(tx)));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut events = rig.orchestrator.subscribe();
    let id = rig
        .orchestrator
        .deploy(rig.request("web", env, "v2", to_vars))
        .await
        .expect("deploy v2");
    let crash = crashes.then(|| tokio::spawn(watch_crash(rig.local.clone())));
    let watch = tokio::spawn(async move {
        while let Ok(e) = events.recv().await {
            if e.phase == Phase::RollingBack {
                return Some(Instant::now());
            }
            if e.phase.is_terminal() {
                return None;
            }
        }
        None
    });
    let status = rig.orchestrator.wait(&id).await.expect("v2");
    let deploy_done = Instant::now();
    assert_eq!(status.phase, expect, "{name}: {:?}", status.rollback);
    let rollback_at = watch.await.expect("event watcher");
    let window = match crash {
        Some(crash) => Some(
            crash
                .await
                .expect("crash watcher")
                .unwrap_or_else(|| panic!("{name}: no crash of v2 was seen")),
        ),
        None => None,
    };
    let report = load.await.expect("load generator");
    assert!(
        report.elapsed > Duration::ZERO,
        "{name}: the load generator ran"
    );
    let t = tally(&mut rx, window);
    assert!(
        t.last_done.is_some_and(|d| d > deploy_done),
        "{name}: the load must outlast the deployment to prove anything"
    );
    let rollback_latency = rollback_at.map(|at| {
        t.last_v2_sent
            .map_or(Duration::ZERO, |last| last.saturating_duration_since(at))
    });
    let versions = report.by_version.keys().cloned().collect();
    rig.close().await;
    assert_eq!(
        t.dropped_outside, 0,
        "{name}: dropped requests outside the window: {:?}",
        t.samples
    );
    assert_eq!(
        report.failures,
        t.app_errors + t.dropped,
        "{name}: every failure is an app 500 or a drop"
    );
    Row {
        name,
        outcome: status.phase,
        requests: report.requests,
        dropped: t.dropped,
        app_errors: t.app_errors,
        fast: t.fast,
        slow: t.slow,
        rollback_latency,
        window: window.map(|(from, to)| to.saturating_duration_since(from)),
        dropped_outside: t.dropped_outside,
        versions,
    }
}

/// p50 and p99 of `d`.
fn percentiles(d: &mut [Duration]) -> (Duration, Duration) {
    d.sort();
    let at = |q: f64| {
        d.get(((d.len() as f64 * q) as usize).min(d.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    (at(0.50), at(0.99))
}

/// Runs a blocking command helper off the runtime's workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// The observation of `web` through the daemon, if it answers.
async fn observe(client: &LocalClient) -> Option<Observed> {
    client.observe(&ServiceId::new("web").ok()?).await.ok()
}

/// `deploykit deploy` follows a canary through the daemon; the daemon is killed with SIGKILL
/// while the canary takes 25 % of the traffic, and started again 1.5 s later. An unreachable
/// daemon is retryable, not a reason to give up: the rollout must go on by itself once the
/// daemon is back and, v2 being healthy, succeed — not fail with traffic split, and not roll
/// back for an outage either. Requests are dropped only while the daemon (which runs the proxy)
/// is down: the new daemon accepts connections once its adopted instances, ready when the last
/// daemon recorded them, are routed; none before or after.
async fn daemon_killed_mid_canary() -> Row {
    let name = "daemon killed mid-canary (SIGKILL, back 1.5 s later)";
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    std::fs::write(
        dir.join("deploykit.toml"),
        DAEMON_CONFIG.replace("{APP}", APP),
    )
    .expect("config");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let d = dir.clone();
    let l = listen.clone();
    let mut daemon: Daemon = blocking(move || start_daemon(&d, &l)).await;
    let client = LocalClient::new(dir.join(".deploykit/daemon.sock"));
    let deploy = |label: &str| {
        let label = label.to_string();
        let dir = dir.clone();
        move || {
            common::deploykit(
                &dir,
                &[
                    "deploy",
                    "web",
                    "-l",
                    &label,
                    "--set",
                    &format!("VERSION={label}"),
                    "-o",
                    "json",
                ],
            )
        }
    };
    let out = blocking({
        let cmd = deploy("v1");
        move || cmd().output().expect("deploy v1")
    })
    .await;
    assert!(
        out.status.success(),
        "v1: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (tx, mut rx) = mpsc::unbounded_channel::<Completed>();
    let load = tokio::spawn(loadgen::run(
        load_config(format!("127.0.0.1:{port}").parse().expect("addr")),
        Some(tx),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut v2 = deploy("v2")()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("deploy v2");

    // Mid-canary: v2 takes 25 % of the traffic.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let split = observe(&client).await.is_some_and(|o| {
            o.revisions
                .iter()
                .any(|r| r.revision.label == "v2" && routed_weight(&o, r) == 25)
        });
        if split {
            break;
        }
        assert!(Instant::now() < until, "{name}: the canary never took 25 %");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed_at = Instant::now();
    daemon.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        matches!(v2.try_wait(), Ok(None)),
        "{name}: `deploy` must not give up while the daemon is unreachable"
    );
    let d = dir.clone();
    let l = listen.clone();
    let daemon: Daemon = blocking(move || start_daemon(&d, &l)).await;
    // Back: every instance of the adopted state ready again behind the new proxy.
    let back_at = loop {
        if let Some(o) = observe(&client).await
            && o.revisions.iter().all(|r| r.ready() == r.desired)
        {
            break Instant::now();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(60),
            "{name}: the restarted daemon never served again"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };

    let out = blocking(move || v2.wait_with_output().expect("deploy v2")).await;
    let result = json(&out);
    let phase = result["phase"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        phase,
        Phase::Succeeded.to_string(),
        "{name}: {result} / {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{name}: exit {:?}", out.status);
    // One verified revision serves all the traffic.
    let observed = observe(&client).await.expect("the daemon answers");
    assert_eq!(observed.revisions.len(), 1, "{}", observed.summary());
    let serving = &observed.revisions[0];
    assert_eq!(serving.ready(), 2, "{}", observed.summary());
    assert_eq!(observed.weight_of(&serving.revision.id), 100);
    assert_eq!(serving.revision.label, "v2", "{name}");

    let report: LoadReport = load.await.expect("load generator");
    let t = tally(&mut rx, Some((killed_at, back_at)));
    assert_eq!(
        t.dropped_outside, 0,
        "{name}: dropped requests outside the outage: {:?}",
        t.samples
    );
    assert_eq!(report.failures, t.dropped + t.app_errors);
    assert!(
        t.last_done
            .is_some_and(|d| d > back_at + Duration::from_secs(1)),
        "{name}: the load must outlast the outage to prove anything"
    );
    blocking(move || drop(daemon)).await;
    Row {
        name,
        outcome: Phase::Succeeded,
        requests: report.requests,
        dropped: t.dropped,
        app_errors: t.app_errors,
        fast: t.fast,
        slow: t.slow,
        rollback_latency: None,
        window: Some(back_at.saturating_duration_since(killed_at)),
        dropped_outside: t.dropped_outside,
        versions: report.by_version.keys().cloned().collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_is_dropped_during_canary_blue_green_and_rollback() {
    let rows = vec![
        scenario("canary to 100 %", "canary", &[], Phase::Succeeded, false).await,
        scenario(
            "blue-green switch",
            "bluegreen",
            &[],
            Phase::Succeeded,
            false,
        )
        .await,
        scenario(
            "bad canary rolled back",
            "canary",
            &[("ERROR_RATE", "0.5")],
            Phase::RolledBack,
            false,
        )
        .await,
        scenario(
            "canary crashing 1.5 s after ready, rolled back",
            "canary",
            &[("CRASH_AFTER_MS", "1500")],
            Phase::RolledBack,
            true,
        )
        .await,
        daemon_killed_mid_canary().await,
    ];
    println!(
        "\n| scenario | outcome | requests | dropped | app 500s | `/` p50 | `/` p99 | `/slow` (200 ms) p50 | `/slow` p99 | rollback latency | drop window | dropped outside it | versions served |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.outcome,
            r.requests,
            r.dropped,
            r.app_errors,
            ms(r.fast.0),
            ms(r.fast.1),
            ms(r.slow.0),
            ms(r.slow.1),
            r.rollback_latency.map_or("-".into(), ms),
            r.window.map_or("-".into(), ms),
            r.dropped_outside,
            r.versions.join(" ")
        );
    }
    for r in &rows[..2] {
        assert_eq!(r.versions, ["v1", "v2"], "{}: both versions served", r.name);
        assert_eq!(r.dropped, 0, "{}", r.name);
    }
    assert!(rows[2].app_errors > 0, "the bad canary did take traffic");
    assert!(rows[2].rollback_latency.is_some(), "the rollback was seen");
    assert_eq!(rows[2].dropped, 0);
    assert_eq!(
        rows[3].versions,
        ["v1", "v2"],
        "the crashing canary did take traffic"
    );
    assert!(rows[3].window.is_some(), "the crash was seen");
}
