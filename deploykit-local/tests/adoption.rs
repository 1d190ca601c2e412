//! A restarted controller (`deploykit daemon` started again) adopts the instances the previous
//! one left running without a gap in service: instances that were ready stay routed from the
//! moment the new environment is open, and their probes then run as usual.
//!
//! The instances are Python's `http.server` serving a directory with an `index.html` and a
//! `ready` file, which the readiness probe fetches.

use std::path::Path;
use std::time::{Duration, Instant};

use deploykit_core::{
    DesiredState, Digest, Environment, EnvironmentExt, EnvironmentKind, EnvironmentSpec,
    HealthChecks, Probe, ProbeAction, Revision, RevisionTarget, ServiceId, ServiceSpec, Traffic,
};
use deploykit_local::loadgen::{self, LoadConfig};
use deploykit_local::{LocalEnvironment, LocalOptions};

const SETTLE: Duration = Duration::from_secs(30);

fn web() -> ServiceId {
    ServiceId::new("web").unwrap()
}

/// Two instances of a static HTTP server, ready after 3 successful `GET /ready` in a row
/// (200 ms apart, so at least 400 ms after a start), out after one failure.
fn desired() -> DesiredState {
    let readiness = Probe::builder()
        .action(ProbeAction::http("/ready"))
        .period(Duration::from_millis(200))
        .timeout(Duration::from_millis(150))
        .success_threshold(3)
        .failure_threshold(1)
        .build()
        .unwrap();
    let spec = ServiceSpec::builder()
        .name("web")
        .command(vec![
            "sh".into(),
            "-c".into(),
            r#"exec python3 -m http.server "$PORT" --bind 127.0.0.1"#.into(),
        ])
        .port(8080)
        .health(HealthChecks::builder().readiness(readiness).build())
        .build()
        .unwrap();
    let env = EnvironmentSpec::builder()
        .name("production")
        .kind(EnvironmentKind::Production)
        .build()
        .unwrap();
    let revision = Revision::new(&spec, &env, Digest::of_bytes(b"http.server"), "v1").unwrap();
    DesiredState::new(
        vec![RevisionTarget::new(revision, 2)],
        Traffic::ByReadyInstances,
    )
}

struct Fixture {
    _dir: tempfile::TempDir,
    state: std::path::PathBuf,
    www: std::path::PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let www = dir.path().join("www");
        std::fs::create_dir_all(&www).unwrap();
        std::fs::write(www.join("index.html"), "hello\n").unwrap();
        std::fs::write(www.join("ready"), "ok\n").unwrap();
        Fixture {
            state: dir.path().join("state"),
            www,
            _dir: dir,
        }
    }

    fn options(&self) -> LocalOptions {
        LocalOptions::new(&self.state)
            .listen("127.0.0.1:0".parse().unwrap())
            .workdir(&self.www)
            .grace(Duration::from_secs(2))
    }

    /// A first environment whose two instances are settled (ready and routed), then left
    /// running as a daemon that restarts leaves them; returns their pids.
    async fn serve_then_leave_running(&self) -> Vec<u32> {
        let first = LocalEnvironment::open(self.options()).await.unwrap();
        first.apply(&web(), &desired()).await.unwrap();
        first
            .wait_settled(&web(), Duration::from_millis(50), SETTLE)
            .await
            .unwrap();
        let report = loadgen::run(load(first.proxy_addr(), 20), None).await;
        assert_eq!(report.failures, 0, "{:?}", report.failure_samples);
        let pids = instance_pids(&self.state);
        assert_eq!(pids.len(), 2, "two instances recorded with their pids");
        first.shutdown(false).await;
        drop(first);
        for pid in &pids {
            assert!(deploykit_local::process::alive(*pid), "{pid} outlives it");
        }
        pids
    }
}

/// `requests` GETs of `/` through `proxy` by 4 workers, paced at 200 per second.
fn load(proxy: std::net::SocketAddr, requests: u64) -> LoadConfig {
    let mut config = LoadConfig::new(proxy, requests);
    config.concurrency = 4;
    config.slow_every = 0;
    config.rate_per_sec = Some(200);
    config.timeout = Duration::from_secs(5);
    config
}

fn instance_pids(state: &Path) -> Vec<u32> {
    let db = rusqlite::Connection::open(state.join("local.db")).unwrap();
    let mut stmt = db
        .prepare("SELECT pid FROM instances WHERE pid IS NOT NULL ORDER BY name")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Ready instances of `web` as the environment reports them.
async fn ready(env: &LocalEnvironment) -> u32 {
    env.observe(&web()).await.unwrap().total_ready()
}

fn kill(pid: u32) {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    killpg(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while deploykit_local::process::alive(pid) {
        assert!(Instant::now() < until, "{pid} survived SIGKILL");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopted_ready_instances_serve_from_the_moment_the_environment_is_open() {
    let fx = Fixture::new();
    let pids = fx.serve_then_leave_running().await;

    let second = LocalEnvironment::open(fx.options()).await.unwrap();
    // From the first request on: 300 requests over 1.5 s, well past the 400 ms the probes
    // would need to find an instance ready again, and not one 503.
    let report = loadgen::run(load(second.proxy_addr(), 300), None).await;
    assert_eq!(
        report.failures, 0,
        "requests failed through adoption: {:?}",
        report.failure_samples
    );
    assert_eq!(report.requests, 300);
    assert_eq!(instance_pids(&fx.state), pids, "adopted, not restarted");
    assert_eq!(ready(&second).await, 2);
    second.shutdown(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_instance_whose_probe_fails_is_taken_out() {
    let fx = Fixture::new();
    fx.serve_then_leave_running().await;
    // While no controller runs, the instances stop being ready.
    std::fs::remove_file(fx.www.join("ready")).unwrap();

    let second = LocalEnvironment::open(fx.options()).await.unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while ready(&second).await > 0 {
        assert!(Instant::now() < until, "failing probes never took them out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = loadgen::run(load(second.proxy_addr(), 4), None).await;
    assert_eq!(
        report.failures, 4,
        "no instance is routed: every request 503s"
    );
    assert!(
        report.failure_samples[0].contains("503"),
        "{:?}",
        report.failure_samples
    );
    // And once the probe passes again, they are back.
    std::fs::write(fx.www.join("ready"), "ok\n").unwrap();
    second
        .wait_settled(&web(), Duration::from_millis(50), SETTLE)
        .await
        .unwrap();
    second.shutdown(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_instance_whose_process_is_gone_is_not_ready_until_probed() {
    let fx = Fixture::new();
    let pids = fx.serve_then_leave_running().await;
    kill(pids[0]);

    let second = LocalEnvironment::open(fx.options()).await.unwrap();
    // The live one is routed at once; the dead one was started again and needs its probes.
    assert_eq!(ready(&second).await, 1);
    let report = loadgen::run(load(second.proxy_addr(), 100), None).await;
    assert_eq!(report.failures, 0, "{:?}", report.failure_samples);
    let after = second
        .wait_settled(&web(), Duration::from_millis(50), SETTLE)
        .await
        .unwrap();
    assert_eq!(after.total_ready(), 2);
    let now = instance_pids(&fx.state);
    assert_eq!(now[1], pids[1], "the live one adopted");
    assert_ne!(now[0], pids[0], "the dead one started again");
    second.shutdown(true).await;
}
