//! The `failover` example, end to end on this machine (skipped, saying why, where PostgreSQL
//! is not installed): two local environments, each with its own `deploykit daemon`;
//! production's PostgreSQL archives into a repository and production-dr's follows the archive
//! as a standby; the sample app writes rows to its environment's database under load through
//! production's proxy. `deploykit failover watch` (automatic, warm standby, the default
//! detection settings) keeps production-dr running the same build; then the primary's
//! instances and its database are killed with SIGKILL. The watcher judges the primary lost,
//! fences it, promotes the standby, scales production-dr, points production's proxy at it and
//! verifies. The test prints the RTO, the rows lost (RPO) and the failed requests by phase,
//! and holds them to the issue's targets: RTO under 30 s, no acknowledged row older than
//! 5 s lost, no failed request before the kill or after the switch, and the fenced primary
//! takes no write when it is started again.
//!
//! `cargo test -p deploykit-cli --test failover -- --nocapture` prints the numbers;
//! `-- --ignored` runs the repeated split-brain trials (BENCHMARKS.md).

mod common;
mod pg_rig;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deploykit_core::{Environment, ServiceId};
use deploykit_local::LocalClient;
use deploykit_postgres::{PgBinaries, Server, simple_query};
use pg_rig::{Rig, bins, stderr};
use serde_json::Value;

/// One `/write` as the client saw it.
#[derive(Clone, Debug)]
struct Write {
    key: u64,
    sent: Instant,
    done: Instant,
    ok: bool,
}

/// The writes so far, shared with the writer task.
type Log = Arc<Mutex<Vec<Write>>>;

/// A `deploykit daemon` for one environment; killed (its instances stopped) when dropped.
struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Daemon {
    fn start(app: &Path, env: &str, listen: u16, socket: PathBuf) -> Daemon {
        Daemon::start_with(app, env, listen, socket, &[])
    }

    /// [`Daemon::start`] with more arguments for `deploykit daemon`.
    fn start_with(app: &Path, env: &str, listen: u16, socket: PathBuf, more: &[&str]) -> Daemon {
        let log = std::fs::File::create(app.join(format!("daemon-{env}.log"))).unwrap();
        let listen = format!("127.0.0.1:{listen}");
        let mut args = vec![
            "daemon",
            "--env",
            env,
            "--listen",
            &listen,
            "--grace",
            "2",
            "--drain-timeout",
            "2",
        ];
        args.extend_from_slice(more);
        let child = common::deploykit(app, &args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "the {env} daemon did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon { child, socket }
    }
}

impl Daemon {
    /// SIGKILL: the daemon dies at once, its instances left running (a later daemon on the
    /// same state adopts them).
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let client = LocalClient::new(&self.socket);
        let stopped = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map(|rt| rt.block_on(client.shutdown(true)).is_ok())
                        .unwrap_or(false)
                })
                .join()
                .unwrap_or(false)
        });
        if stopped {
            let _ = self.child.wait();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pids of the sample app instances whose `DATABASE_URL` names `port`.
fn instances_on(port: u16) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let exe = std::fs::read_link(entry.path().join("exe")).ok();
        if exe.as_deref() != Some(Path::new(common::APP)) {
            continue;
        }
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        if String::from_utf8_lossy(&environ).contains(&format!(" port={port} ")) {
            pids.push(pid);
        }
    }
    pids
}

/// GET `path` from `proxy`: whether it answered 200 within 3 s.
async fn get_ok(proxy: u16, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", proxy))
            .await
            .ok()?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .ok()?;
        let mut head = Vec::new();
        stream.read_to_end(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1.1 200"))
    };
    tokio::time::timeout(Duration::from_secs(3), exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Write keys `base + 1`, `base + 2`, … through `proxy` at about `per_sec` a second until
/// `stop`, logging each.
fn writer(proxy: u16, base: u64, per_sec: u64, log: Log, stop: tokio::sync::watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut key = base;
        let mut tick = tokio::time::interval(Duration::from_millis(1000 / per_sec));
        while !*stop.borrow() {
            tick.tick().await;
            key += 1;
            let sent = Instant::now();
            let ok = get_ok(proxy, &format!("/write?key={key}")).await;
            let done = Instant::now();
            log.lock().unwrap().push(Write {
                key,
                sent,
                done,
                ok,
            });
        }
    });
}

/// The sample app as service web, production with `primary` variables (an inline table's
/// inside) and replicas, production-dr on a daemon of its own (`dr-state`) with `dr`
/// variables and replicas.
fn two_sites(primary: (&str, u32), dr: (&str, u32)) -> String {
    format!(
        r#"application = "shop"
[services.web]
command = ["{app}"]
port = 8080
health.readiness = {{ http = "/healthz", period = "200ms", timeout = "150ms", failure_threshold = 2 }}
[environments.production]
kind = "production"
replicas = {}
variables = {{ {} }}
[environments.production-dr]
kind = "production"
replicas = {}
local_state = "dr-state"
variables = {{ {} }}
"#,
        primary.1,
        primary.0,
        dr.1,
        dr.0,
        app = common::APP
    )
}

/// Writes `two_sites` with production-dr as production's warm standby (one warm instance).
fn write_warm_pair(app: &Path, primary: (&str, u32), dr: (&str, u32)) {
    std::fs::write(
        app.join("deploykit.toml"),
        format!(
            "{}[environments.production.standby]\nenvironment = \"production-dr\"\nwarm = 1\n",
            two_sites(primary, dr)
        ),
    )
    .unwrap();
}

/// The configuration: production with its standby production-dr kept warm on a daemon of
/// its own, both running the sample app against their own database.
fn configuration(rig: &Rig, bins: &PgBinaries, proxy: u16, standby_port: u16) -> String {
    let sock = rig.path("").display().to_string();
    let db = |port: u16| format!("host={sock} port={port} user=postgres dbname=postgres");
    let sites = two_sites(
        (&format!("DATABASE_URL = \"{}\"", db(rig.port)), 2),
        (&format!("DATABASE_URL = \"{}\"", db(standby_port)), 2),
    );
    format!(
        r#"{sites}
[environments.production.standby]
environment = "production-dr"
automatic = true
warm = 1
assessment = {{ probes = [
  {{ name = "web-db", url = "http://127.0.0.1:{proxy}/db" }},
  {{ name = "postgres", command = ["{ready}", "-q", "-h", "{sock}", "-p", "{primary}"] }},
] }}
database = {{ repository = "{repo}", primary_pgdata = "{data}", standby_connection = "{standby_db}" }}
"#,
        standby_db = db(standby_port),
        ready = bins.tool("pg_isready").display(),
        primary = rig.port,
        repo = rig.repo.display(),
        data = rig.path("data").display(),
    )
}

/// What one run measured.
#[derive(Debug)]
struct Measured {
    rto: Duration,
    detected_to_verified: Duration,
    lost: Vec<u64>,
    lost_window: Duration,
    failed_before: usize,
    failed_during: usize,
    failed_after: usize,
    writes: usize,
    old_primary_writes: usize,
}

impl Measured {
    /// One line of the numbers.
    fn summary(&self) -> String {
        format!(
            "RTO {:.1} s (report; {:.1} s from the kill to the watcher's verified end), rows \
             lost {} (acknowledged at most {:.1} s before the kill), failed writes: {} before \
             the kill, {} between the kill and the switch, {} after, of {} writes; writes taken \
             by the fenced primary {}",
            self.rto.as_secs_f64(),
            self.detected_to_verified.as_secs_f64(),
            self.lost.len(),
            self.lost_window.as_secs_f64(),
            self.failed_before,
            self.failed_during,
            self.failed_after,
            self.writes,
            self.old_primary_writes
        )
    }
}

/// One failover: set up, write under load for `load_for`, kill, fail over, measure.
async fn failover_once(bins: &PgBinaries, load_for: Duration) -> Measured {
    let mut rig = Rig::start(bins).await;
    rig.history().await;
    let (_, standby, standby_port) = rig.follow(bins).await;
    let app = rig.path("app");
    std::fs::create_dir_all(&app).unwrap();
    let proxy = common::free_port();
    let dr_proxy = common::free_port();
    std::fs::write(
        app.join("deploykit.toml"),
        configuration(&rig, bins, proxy, standby_port),
    )
    .unwrap();
    let _primary = Daemon::start(
        &app,
        "production",
        proxy,
        app.join(".deploykit/daemon.sock"),
    );
    let _dr = Daemon::start(
        &app,
        "production-dr",
        dr_proxy,
        app.join("dr-state/daemon.sock"),
    );
    let out = common::run(
        &app,
        &[
            "deploy",
            "web",
            "--env",
            "production",
            "--label",
            "v1",
            "--set",
            "VERSION=v1",
        ],
    );
    assert!(out.status.success(), "deploy: {}", stderr(&out));
    // The standby is brought in step: the same build, its own database, one warm instance.
    let out = common::run(
        &app,
        &["-o", "json", "failover", "sync", "--env", "production"],
    );
    assert!(out.status.success(), "sync: {}", stderr(&out));
    let synced: Value = common::json(&out);
    assert_eq!(synced[0]["state"], "applied", "{synced}");
    let dr = LocalClient::new(app.join("dr-state/daemon.sock"));
    let web = ServiceId::new("web").unwrap();
    let observed = dr.observe(&web).await.unwrap();
    assert_eq!(observed.revisions.len(), 1);
    assert_eq!(observed.revisions[0].revision.label, "v1");
    assert_eq!(observed.revisions[0].desired, 1);
    assert!(
        observed.revisions[0].revision.config.variables["DATABASE_URL"]
            .contains(&format!("port={standby_port}")),
        "the standby's instances use the standby's database"
    );

    let watcher = common::deploykit(
        &app,
        &["-o", "json", "failover", "watch", "--env", "production"],
    )
    .env("DEPLOYKIT_REPO_KEY_FILE", &rig.key_file)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();

    let log: Log = Arc::default();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    writer(proxy, 0, 50, log.clone(), stopped.clone());
    writer(proxy, 1_000_000, 50, log.clone(), stopped);
    tokio::time::sleep(load_for).await;

    // The primary dies: its instances and its database, without warning.
    let mut pids = instances_on(rig.port);
    assert!(!pids.is_empty(), "the primary's instances run");
    pids.push(
        std::fs::read_to_string(rig.path("data/postmaster.pid"))
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .parse()
            .unwrap(),
    );
    let killed = Instant::now();
    for pid in &pids {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    // The switch, as clients see it: the primary's proxy forwards to the standby's.
    let primary = LocalClient::new(app.join(".deploykit/daemon.sock"));
    let switched = loop {
        if primary.info().await.unwrap().forward.is_some() {
            break Instant::now();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "no switch within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let out = tokio::task::spawn_blocking(move || watcher.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let verified = killed.elapsed();
    assert!(out.status.success(), "watch: {}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcome"]["outcome"], "succeeded", "{report:#}");
    // The report is kept with the backups, in the repository.
    let repo = deploykit_backup::Repository::open(
        Arc::new(deploykit_backup::LocalTarget::new(&rig.repo).unwrap()),
        &deploykit_backup::RepoKey::from_file(&rig.key_file).unwrap(),
    )
    .await
    .unwrap();
    let id = report["id"].as_str().unwrap();
    let kept: Value = serde_json::from_slice(
        &repo
            .read_named(&format!("reports/failover/{id}.json"))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(kept, report);
    let markdown = repo
        .read_named(&format!("reports/failover/{id}.md"))
        .await
        .unwrap();
    assert!(String::from_utf8(markdown).unwrap().contains("**RTO**"));
    // Writes go on after the switch, then stop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.send(true).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writes = log.lock().unwrap().clone();

    // Every acknowledged row is in the promoted database, but those of the last moments
    // before the kill that were not archived yet.
    let db = standby.connect().await.unwrap();
    let present: std::collections::BTreeSet<u64> =
        simple_query(&db, "SELECT key FROM sample_writes")
            .await
            .unwrap()
            .into_iter()
            .filter_map(|r| r[0].as_deref().and_then(|k| k.parse().ok()))
            .collect();
    let lost: Vec<&Write> = writes
        .iter()
        .filter(|w| w.ok && !present.contains(&w.key))
        .collect();
    let lost_window = lost
        .iter()
        .map(|w| killed.saturating_duration_since(w.sent))
        .max()
        .unwrap_or_default();
    let failed = |f: &dyn Fn(&Write) -> bool| writes.iter().filter(|w| !w.ok && f(w)).count();

    // The fenced primary, started again, takes no write.
    let (_, options) = rig.options("old-primary");
    let old_primary_writes = match Server::start(bins, &rig.path("data"), options).await {
        Ok(server) => {
            let client = server.connect().await.unwrap();
            let wrote = simple_query(
                &client,
                "INSERT INTO sample_writes (key, version) VALUES ('split', 'old')",
            )
            .await
            .is_ok();
            server.stop().await.unwrap();
            usize::from(wrote)
        }
        // It refuses to start: nothing written either.
        Err(_) => 0,
    };
    let _ = rig.server.is_running();
    standby.stop().await.unwrap();
    Measured {
        rto: Duration::from_millis(report["rto_ms"].as_u64().unwrap()),
        detected_to_verified: verified,
        lost: lost.iter().map(|w| w.key).collect(),
        lost_window,
        // A request in flight at the kill belongs to the window.
        failed_before: failed(&|w| w.done < killed),
        failed_during: failed(&|w| w.done >= killed && w.sent < switched),
        failed_after: failed(&|w| w.sent >= switched),
        writes: writes.len(),
        old_primary_writes,
    }
}

/// The `failover` example: the numbers, held to the issue's targets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failover_example_kills_the_primary_and_the_standby_serves() {
    let Some(bins) = bins() else { return };
    let m = failover_once(&bins, Duration::from_secs(4)).await;
    println!("failover example: {}", m.summary());
    assert!(m.rto < Duration::from_secs(30), "{m:?}");
    assert!(m.lost_window <= Duration::from_secs(5), "{m:?}");
    assert_eq!((m.failed_before, m.failed_after), (0, 0), "{m:?}");
    assert!(m.failed_during > 0, "the kill was seen by clients: {m:?}");
    assert_eq!(m.old_primary_writes, 0, "{m:?}");
}

/// Repeated kill/restart trials with randomised timing (BENCHMARKS.md "Failover"): the
/// fenced primary never takes a write, and the targets hold in every trial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "20 trials, minutes: cargo test -p deploykit-cli --test failover -- --ignored --nocapture"]
async fn repeated_failovers_never_split_the_brain() {
    let Some(bins) = bins() else { return };
    let trials: u32 = std::env::var("FAILOVER_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut all = Vec::new();
    for trial in 1..=trials {
        // xorshift: a load of 1–8 s before the kill.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let load = Duration::from_millis(1000 + seed % 7000);
        let m = failover_once(&bins, load).await;
        println!(
            "trial {trial}: load {:.1} s, {}",
            load.as_secs_f64(),
            m.summary()
        );
        all.push(m);
    }
    let mut rtos: Vec<f64> = all.iter().map(|m| m.rto.as_secs_f64()).collect();
    rtos.sort_by(f64::total_cmp);
    println!(
        "{} trials: RTO median {:.1} s, max {:.1} s; rows lost max {}; failed after the switch \
         {}; old primary writes {}",
        all.len(),
        rtos[rtos.len() / 2],
        rtos[rtos.len() - 1],
        all.iter().map(|m| m.lost.len()).max().unwrap_or(0),
        all.iter().map(|m| m.failed_after).sum::<usize>(),
        all.iter().map(|m| m.old_primary_writes).sum::<usize>()
    );
    for m in &all {
        assert!(m.rto < Duration::from_secs(30), "{m:?}");
        assert!(m.lost_window <= Duration::from_secs(5), "{m:?}");
        assert_eq!(
            (m.failed_before, m.failed_after, m.old_primary_writes),
            (0, 0, 0),
            "{m:?}"
        );
    }
}

/// A warm standby with no database, on two daemons: a failover is refused while the standby
/// runs nothing; `failover sync` gives it the primary's build (with its own settings) at the
/// warm size and follows a new deploy; a failover then scales it, points the primary's proxy at
/// it and checks requests through both; a sync after the failover leaves the standby alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_standby_follows_the_primary_and_takes_its_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path();
    let proxy = common::free_port();
    let dr_proxy = common::free_port();
    write_warm_pair(app, ("SITE = \"home\"", 2), ("SITE = \"dr\"", 3));
    let _primary = Daemon::start(app, "production", proxy, app.join(".deploykit/daemon.sock"));
    let _dr = Daemon::start(
        app,
        "production-dr",
        dr_proxy,
        app.join("dr-state/daemon.sock"),
    );
    let deploy = |label: &str| {
        let out = common::run(
            app,
            &[
                "deploy",
                "web",
                "--env",
                "production",
                "--label",
                label,
                "--set",
                &format!("VERSION={label}"),
            ],
        );
        assert!(out.status.success(), "deploy {label}: {}", stderr(&out));
    };
    let failover = || {
        common::run(
            app,
            &[
                "-o",
                "json",
                "failover",
                "run",
                "--env",
                "production",
                "--reason",
                "test",
            ],
        )
    };
    let sync = || {
        let out = common::run(
            app,
            &["-o", "json", "failover", "sync", "--env", "production"],
        );
        assert!(out.status.success(), "sync: {}", stderr(&out));
        common::json(&out)[0].clone()
    };
    deploy("v1");

    // Nothing runs on the standby yet: refused, saying so.
    let out = failover();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let report = common::json(&out);
    assert_eq!(report["outcome"]["outcome"], "refused", "{report:#}");
    assert!(
        report["outcome"]["reason"]
            .as_str()
            .unwrap()
            .contains("runs no revision of web"),
        "{report:#}"
    );

    let dr = LocalClient::new(app.join("dr-state/daemon.sock"));
    let web = ServiceId::new("web").unwrap();
    assert_eq!(sync()["state"], "applied");
    assert_eq!(sync()["state"], "in_step");
    deploy("v2");
    assert_eq!(sync()["state"], "applied");
    // No wait: the failover below finds the warm instance still starting, and waits for it.
    let observed = dr.observe(&web).await.unwrap();
    assert_eq!(observed.revisions.len(), 1, "{observed:?}");
    let standby = &observed.revisions[0];
    assert_eq!(
        (standby.revision.label.as_str(), standby.desired),
        ("v2", 1)
    );
    assert_eq!(standby.revision.config.variables["SITE"], "dr");
    assert_eq!(standby.revision.config.variables["VERSION"], "v2");

    let out = failover();
    assert!(out.status.success(), "{}", stderr(&out));
    let report = common::json(&out);
    let said = report["timeline"].to_string();
    assert!(
        said.contains(&format!("forwards every request to 127.0.0.1:{dr_proxy}")),
        "{said}"
    );
    assert!(said.contains("answered 2xx"), "{said}");
    let observed = dr.observe(&web).await.unwrap();
    assert_eq!(
        (observed.revisions[0].desired, observed.revisions[0].ready()),
        (3, 3),
        "scaled to the standby's replicas"
    );
    let primary = LocalClient::new(app.join(".deploykit/daemon.sock"));
    assert_eq!(
        primary.info().await.unwrap().forward,
        Some(format!("127.0.0.1:{dr_proxy}").parse().unwrap())
    );
    assert!(get_ok(proxy, "/").await, "the primary's proxy forwards");
    // Failed over: the standby serves and is no longer synced down to the warm size.
    assert_eq!(sync()["state"], "skipped");
    assert_eq!(dr.observe(&web).await.unwrap().revisions[0].desired, 3);
}

/// Both daemons serve TLS (certificates of the application directory's local CA): after a
/// failover the primary's proxy forwards to the standby's over TLS, trusting only what the
/// standby's daemon reports (its `proxy_trust`), and the failover's checks go through both
/// proxies in HTTPS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_failover_between_tls_daemons_forwards_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path();
    let proxy = common::free_port();
    let dr_proxy = common::free_port();
    write_warm_pair(app, ("VERSION = \"home\"", 1), ("VERSION = \"dr\"", 1));
    let primary_socket = app.join(".deploykit/daemon.sock");
    let _primary = Daemon::start_with(app, "production", proxy, primary_socket.clone(), &["--tls"]);
    let _dr = Daemon::start_with(
        app,
        "production-dr",
        dr_proxy,
        app.join("dr-state/daemon.sock"),
        &["--tls"],
    );
    let primary_ca = std::fs::read(app.join(".deploykit/tls/ca.pem")).unwrap();
    let dr = LocalClient::new(app.join("dr-state/daemon.sock"));
    let reported = dr
        .info()
        .await
        .unwrap()
        .proxy_trust
        .expect("a TLS proxy reports its CA");
    assert_eq!(reported.as_bytes(), primary_ca.as_slice());
    let out = common::run(
        app,
        &["deploy", "web", "--env", "production", "--label", "v1"],
    );
    assert!(out.status.success(), "deploy: {}", stderr(&out));
    let out = common::run(
        app,
        &["-o", "json", "failover", "sync", "--env", "production"],
    );
    assert!(out.status.success(), "sync: {}", stderr(&out));

    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&primary_ca).unwrap())
        .resolve(
            "web.localhost",
            format!("127.0.0.1:{proxy}").parse().unwrap(),
        )
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let url = format!("https://web.localhost:{proxy}/");
    let body = client.get(&url).send().await.unwrap().text().await.unwrap();
    assert_eq!(body, "hello from home\n");

    let out = common::run(
        app,
        &[
            "-o",
            "json",
            "failover",
            "run",
            "--env",
            "production",
            "--reason",
            "test",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let said = common::json(&out)["timeline"].to_string();
    assert!(
        said.contains(&format!(
            "forwards every request to 127.0.0.1:{dr_proxy} over TLS"
        )),
        "{said}"
    );
    assert!(
        said.contains(&format!("answered 2xx: https://127.0.0.1:{dr_proxy}/")),
        "{said}"
    );
    // Through the primary's proxy, which forwards over TLS to the standby's.
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "hello from dr\n");
    let primary = LocalClient::new(&primary_socket);
    assert_eq!(
        primary.info().await.unwrap().forward,
        Some(format!("127.0.0.1:{dr_proxy}").parse().unwrap())
    );
}

/// The unlucky worlds of a warm failover: the standby's daemon is down (the failover is
/// refused, saying so; nothing is fenced), then back (it adopted its instances); then the
/// primary's daemon is gone too (SIGKILL): the failover goes on, says that clients must now
/// reach the standby's proxy themselves, and verifies through the standby's proxy alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_failover_refuses_a_dead_standby_daemon_and_goes_on_without_the_primarys() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path();
    let proxy = common::free_port();
    let dr_proxy = common::free_port();
    write_warm_pair(app, ("SITE = \"home\"", 1), ("SITE = \"dr\"", 2));
    let dr_socket = app.join("dr-state/daemon.sock");
    let mut primary = Daemon::start(app, "production", proxy, app.join(".deploykit/daemon.sock"));
    let mut dr = Daemon::start(app, "production-dr", dr_proxy, dr_socket.clone());
    let out = common::run(
        app,
        &[
            "deploy",
            "web",
            "--env",
            "production",
            "--label",
            "v1",
            "--set",
            "VERSION=v1",
        ],
    );
    assert!(out.status.success(), "deploy: {}", stderr(&out));
    let out = common::run(
        app,
        &["-o", "json", "failover", "sync", "--env", "production"],
    );
    assert!(out.status.success(), "sync: {}", stderr(&out));
    let failover = || {
        common::run(
            app,
            &[
                "-o",
                "json",
                "failover",
                "run",
                "--env",
                "production",
                "--reason",
                "test",
            ],
        )
    };

    // The standby's daemon dies: refused, and the primary keeps serving, unfenced.
    dr.kill();
    let out = failover();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let report = common::json(&out);
    assert_eq!(report["outcome"]["outcome"], "refused", "{report:#}");
    assert!(
        report["outcome"]["reason"]
            .as_str()
            .unwrap()
            .contains("the daemon of production-dr does not answer"),
        "{report:#}"
    );
    assert!(get_ok(proxy, "/").await, "the primary still serves");

    // Back, with its instance adopted; then the primary's daemon is gone.
    // (The dead daemon's handle goes first: dropping it asks whatever listens on its socket
    // to shut down.)
    drop(dr);
    let dr = Daemon::start(app, "production-dr", dr_proxy, dr_socket);
    primary.kill();
    let out = failover();
    assert!(
        out.status.success(),
        "{}\n{}",
        stderr(&out),
        std::fs::read_to_string(app.join("daemon-production-dr.log")).unwrap_or_default()
    );
    let said = common::json(&out)["timeline"].to_string();
    assert!(
        said.contains("production's daemon is gone")
            && said.contains(&format!(
                "clients must reach production-dr at 127.0.0.1:{dr_proxy}"
            )),
        "{said}"
    );
    assert!(
        said.contains(&format!("http://127.0.0.1:{dr_proxy}/")),
        "{said}"
    );
    assert!(
        !said.contains(&format!("http://127.0.0.1:{proxy}/")),
        "{said}"
    );
    assert!(get_ok(dr_proxy, "/").await, "the standby serves");
    // The primary's daemon back, so that its instances are stopped with it at the end.
    drop(primary);
    drop(Daemon::start(
        app,
        "production",
        proxy,
        app.join(".deploykit/daemon.sock"),
    ));
    drop(dr);
}
