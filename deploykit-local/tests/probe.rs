//! Health probes against real sockets and processes (Unix only).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use deploykit_core::{FailureKind, HealthChecks, Probe, ProbeAction};
use deploykit_local::probe::{Health, HealthWatcher, LivenessCallback, ProbeTarget, check};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PATIENCE: Duration = Duration::from_secs(30);
const TIMEOUT: Duration = Duration::from_secs(5);

fn target(port: u16) -> ProbeTarget {
    ProbeTarget {
        port,
        host_header: None,
        cwd: None,
        env: BTreeMap::new(),
    }
}

fn http(path: &str) -> ProbeAction {
    ProbeAction::http(path)
}

/// Reads a request head; `None` if the peer closed first.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// A tiny HTTP server answering each request with `respond(request head)`.
async fn serve(respond: impl Fn(&str) -> String + Send + Sync + 'static) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let respond = Arc::new(respond);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let respond = respond.clone();
            tokio::spawn(async move {
                if let Some(head) = read_head(&mut stream).await {
                    let _ = stream.write_all(respond(&head).as_bytes()).await;
                    let _ = stream.shutdown().await;
                }
            });
        }
    });
    port
}

fn response(status: &str, extra: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    )
}

/// A port nothing listens on.
/// A port that refuses connections and that nothing else can take while the test runs: a
/// socket bound to it that never listens (the socket is leaked on purpose).
async fn closed_port() -> u16 {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    std::mem::forget(socket);
    port
}

fn header<'a>(head: &'a str, name: &str) -> &'a str {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map_or("", |(_, v)| v.trim())
}

#[tokio::test]
async fn http_200_is_healthy() {
    let port = serve(|_| response("200 OK", "", "ok")).await;
    check(&http("/healthz"), &target(port), TIMEOUT)
        .await
        .unwrap();
}

#[tokio::test]
async fn http_503_says_why_with_the_body() {
    let port =
        serve(|_| response("503 Service Unavailable", "", "  database\n\n   is down  ")).await;
    let err = check(&http("/healthz"), &target(port), TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        "GET /healthz returned 503 Service Unavailable: database is down"
    );

    let long = "y".repeat(500);
    let port = serve(move |_| response("500 Internal Server Error", "", &long)).await;
    let err = check(&http("/x"), &target(port), TIMEOUT)
        .await
        .unwrap_err();
    let excerpt = err
        .strip_prefix("GET /x returned 500 Internal Server Error: ")
        .unwrap();
    assert_eq!(excerpt.chars().count(), 120, "{err}");
}

#[tokio::test]
async fn http_redirects_fail_with_their_location() {
    let port = serve(|_| {
        response(
            "301 Moved Permanently",
            "Location: https://example.com/healthz\r\n",
            "",
        )
    })
    .await;
    let err = check(&http("/healthz"), &target(port), TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        "GET /healthz returned 301 Moved Permanently (Location: https://example.com/healthz)"
    );
}

#[tokio::test]
async fn http_connection_refused_names_the_port() {
    let port = closed_port().await;
    let err = check(&http("/healthz"), &target(port), TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        format!("GET /healthz: connection refused on port {port}")
    );
    // The action's own port wins over the target's.
    let action = ProbeAction::Http {
        path: "/up".to_string(),
        port: Some(port),
        headers: BTreeMap::new(),
    };
    let err = check(&action, &target(1), TIMEOUT).await.unwrap_err();
    assert_eq!(err, format!("GET /up: connection refused on port {port}"));
}

#[tokio::test]
async fn http_silence_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let err = check(&http("/healthz"), &target(port), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(err, "GET /healthz: no response within 300ms");
    let err = check(&http("/healthz"), &target(port), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(err, "GET /healthz: no response within 1s");
}

#[tokio::test]
async fn http_headers_are_sent_as_configured() {
    // The server fails every request, echoing what it got, so the reason shows it.
    let port = serve(|head| {
        let body = format!(
            "host={} ua={} x={}",
            header(head, "host"),
            header(head, "user-agent"),
            header(head, "x-probe")
        );
        response("418 I'm a teapot", "", &body)
    })
    .await;
    let err = check(&http("/"), &target(port), TIMEOUT).await.unwrap_err();
    assert!(
        err.ends_with(&format!("host=localhost:{port} ua=deploykit-probe x=")),
        "{err}"
    );

    let mut with_host = target(port);
    with_host.host_header = Some("app.internal".to_string());
    let err = check(&http("/"), &with_host, TIMEOUT).await.unwrap_err();
    assert!(
        err.ends_with("host=app.internal ua=deploykit-probe x="),
        "{err}"
    );

    let action = ProbeAction::Http {
        path: "/".to_string(),
        port: None,
        headers: BTreeMap::from([
            ("HOST".to_string(), "configured.example".to_string()),
            ("X-Probe".to_string(), "yes".to_string()),
        ]),
    };
    let err = check(&action, &with_host, TIMEOUT).await.unwrap_err();
    assert!(
        err.ends_with("host=configured.example ua=deploykit-probe x=yes"),
        "{err}"
    );
}

#[tokio::test]
async fn tcp_probes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    check(&ProbeAction::Tcp { port: None }, &target(port), TIMEOUT)
        .await
        .unwrap();
    drop(listener);
    let err = check(&ProbeAction::Tcp { port: Some(port) }, &target(1), TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        format!("TCP connect to port {port}: connection refused")
    );
}

fn exec(argv: &[&str]) -> ProbeAction {
    ProbeAction::Command {
        argv: argv.iter().map(|s| s.to_string()).collect(),
    }
}

#[tokio::test]
async fn command_probes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("marker"), "").unwrap();
    let mut t = target(1);
    t.cwd = Some(dir.path().to_path_buf());
    t.env.insert("PROBE_VAR".to_string(), "y".to_string());

    check(
        &exec(&["sh", "-c", r#"test "$PROBE_VAR" = y && test -f marker"#]),
        &t,
        TIMEOUT,
    )
    .await
    .unwrap();

    let err = check(
        &exec(&["sh", "-c", "echo out; echo 'not  ok' >&2; exit 2"]),
        &t,
        TIMEOUT,
    )
    .await
    .unwrap_err();
    assert_eq!(
        err,
        "exec sh -c echo out; echo 'not  ok' >&2; exit 2 exited with code 2: not ok"
    );
    let err = check(
        &exec(&["sh", "-c", "echo only stdout; exit 1"]),
        &t,
        TIMEOUT,
    )
    .await
    .unwrap_err();
    assert!(err.ends_with("exited with code 1: only stdout"), "{err}");

    let began = std::time::Instant::now();
    let err = check(
        &exec(&["sh", "-c", "sleep 60 & sleep 60"]),
        &t,
        Duration::from_millis(300),
    )
    .await
    .unwrap_err();
    assert_eq!(err, "exec sh -c sleep 60 & sleep 60: no exit within 300ms");
    assert!(began.elapsed() < Duration::from_secs(20));

    let err = check(&exec(&["./nope"]), &t, TIMEOUT).await.unwrap_err();
    assert_eq!(
        err,
        "exec ./nope: could not start: No such file or directory"
    );
}

#[tokio::test]
async fn custom_checks_are_not_supported_locally() {
    let action = ProbeAction::Custom {
        name: "db".to_string(),
    };
    let err = check(&action, &target(1), TIMEOUT).await.unwrap_err();
    assert_eq!(
        err,
        "custom check db is not registered in the local environment"
    );
}

fn probe(action: ProbeAction, success: u32, failure: u32) -> Probe {
    Probe::builder()
        .action(action)
        .period(Duration::from_millis(50))
        .timeout(Duration::from_millis(50))
        .success_threshold(success)
        .failure_threshold(failure)
        .build()
        .unwrap()
}

fn no_callback() -> LivenessCallback {
    Arc::new(|_| Box::pin(async {}))
}

async fn wait_health(
    watcher: &HealthWatcher,
    what: &str,
    pred: impl Fn(&Health) -> bool,
) -> Health {
    let mut rx = watcher.watch();
    match tokio::time::timeout(PATIENCE, rx.wait_for(|h| pred(h))).await {
        Ok(Ok(h)) => h.clone(),
        _ => panic!(
            "timed out waiting for {what}; health: {:?}",
            watcher.health()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_its_thresholds() {
    let healthy = Arc::new(AtomicBool::new(true));
    let hits = Arc::new(AtomicUsize::new(0));
    let port = {
        let (healthy, hits) = (healthy.clone(), hits.clone());
        serve(move |_| {
            hits.fetch_add(1, Ordering::SeqCst);
            if healthy.load(Ordering::SeqCst) {
                response("200 OK", "", "ok")
            } else {
                response("503 Service Unavailable", "", "draining")
            }
        })
        .await
    };
    let checks = HealthChecks::builder()
        .readiness(probe(http("/ready"), 3, 2))
        .build();
    let watcher = HealthWatcher::start(checks, target(port), no_callback());
    let initial = watcher.health();
    assert!(initial.started && initial.failure.is_none());

    let health = wait_health(&watcher, "ready", |h| h.ready).await;
    assert!(
        hits.load(Ordering::SeqCst) >= 3,
        "ready only after 3 successes"
    );
    assert_eq!(health.failure, None);

    let before = hits.load(Ordering::SeqCst);
    healthy.store(false, Ordering::SeqCst);
    let health = wait_health(&watcher, "not ready", |h| !h.ready).await;
    assert!(
        hits.load(Ordering::SeqCst) >= before + 2,
        "not ready only after 2 failures"
    );
    let (kind, reason) = health.failure.expect("a readiness failure");
    assert_eq!(kind, FailureKind::Readiness);
    assert_eq!(
        reason,
        "GET /ready returned 503 Service Unavailable: draining"
    );

    healthy.store(true, Ordering::SeqCst);
    let health = wait_health(&watcher, "ready again", |h| h.ready).await;
    assert_eq!(health.failure, None);

    // A restart starts over: not ready until readiness passes again.
    watcher.reset();
    assert!(!watcher.health().ready);
    wait_health(&watcher, "ready after reset", |h| h.ready).await;
    watcher.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_failure_is_reported_and_gates_the_rest() {
    let port = closed_port().await;
    let checks = HealthChecks::builder()
        .startup(probe(ProbeAction::Tcp { port: None }, 1, 2))
        .build();
    let watcher = HealthWatcher::start(checks, target(port), no_callback());
    assert_eq!(watcher.health(), Health::default());
    let health = wait_health(&watcher, "startup failure", |h| h.failure.is_some()).await;
    assert!(!health.started && !health.ready);
    assert_eq!(
        health.failure,
        Some((
            FailureKind::Startup,
            format!("TCP connect to port {port}: connection refused")
        ))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_then_ready() {
    let port = serve(|_| response("200 OK", "", "ok")).await;
    let checks = HealthChecks::builder()
        .startup(probe(http("/started"), 1, 3))
        .readiness(probe(ProbeAction::Tcp { port: None }, 1, 3))
        .build();
    let watcher = HealthWatcher::start(checks, target(port), no_callback());
    let health = wait_health(&watcher, "ready", |h| h.ready).await;
    assert!(health.started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_checks_means_ready() {
    let watcher = HealthWatcher::start(HealthChecks::default(), target(1), no_callback());
    assert_eq!(
        watcher.health(),
        Health {
            started: true,
            ready: true,
            failure: None
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_failure_calls_back() {
    let port = closed_port().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let callback: LivenessCallback = {
        let calls = calls.clone();
        Arc::new(move |reason: String| {
            calls.fetch_add(1, Ordering::SeqCst);
            let tx = tx.clone();
            Box::pin(async move {
                let _ = tx.send(reason);
            })
        })
    };
    let checks = HealthChecks::builder()
        .liveness(probe(ProbeAction::Tcp { port: None }, 1, 3))
        .build();
    let watcher = HealthWatcher::start(checks, target(port), callback);
    let reason = tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("the callback was called")
        .unwrap();
    assert!(calls.load(Ordering::SeqCst) >= 1);
    assert_eq!(
        reason,
        format!("TCP connect to port {port}: connection refused"),
        "the callback is told why"
    );
    let health = watcher.health();
    assert_eq!(
        health.failure,
        Some((
            FailureKind::Liveness,
            format!("TCP connect to port {port}: connection refused")
        ))
    );
    // No readiness probe: liveness failing does not make it unready by itself.
    assert!(health.started && health.ready);
    watcher.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_ready_it_stays_ready_while_probes_pass_and_leaves_when_they_fail() {
    // An instance adopted from a supervisor that had found it ready: ready at once, with no
    // startup probe and no initial delay, then probed as usual.
    let healthy = Arc::new(AtomicBool::new(true));
    let hits = Arc::new(AtomicUsize::new(0));
    let port = {
        let (healthy, hits) = (healthy.clone(), hits.clone());
        serve(move |_| {
            hits.fetch_add(1, Ordering::SeqCst);
            if healthy.load(Ordering::SeqCst) {
                response("200 OK", "", "ok")
            } else {
                response("503 Service Unavailable", "", "draining")
            }
        })
        .await
    };
    let mut readiness = probe(http("/ready"), 3, 2);
    readiness.initial_delay = Duration::from_secs(3600);
    let checks = HealthChecks::builder()
        .startup(probe(ProbeAction::Tcp { port: Some(1) }, 1, 1))
        .readiness(readiness)
        .build();
    let watcher = HealthWatcher::start_ready(checks, target(port), no_callback());
    assert_eq!(
        watcher.health(),
        Health {
            started: true,
            ready: true,
            failure: None
        }
    );
    // Probed at once (the hour-long initial delay is for fresh starts), and still ready.
    let until = std::time::Instant::now() + PATIENCE;
    while hits.load(Ordering::SeqCst) < 3 {
        assert!(std::time::Instant::now() < until, "readiness never probed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(watcher.health().ready);

    healthy.store(false, Ordering::SeqCst);
    let health = wait_health(&watcher, "not ready", |h| !h.ready).await;
    assert_eq!(
        health.failure.map(|(kind, _)| kind),
        Some(FailureKind::Readiness)
    );
    // A restart starts from not started (the startup probe on port 1 never passes).
    healthy.store(true, Ordering::SeqCst);
    watcher.reset();
    assert!(!watcher.health().started && !watcher.health().ready);
    watcher.stop();
}
