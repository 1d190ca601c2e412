//! Failovers shared between processes and machines, with the real binary and no database.
//!
//! `deploykit failover watch` as the failover's guardian:
//! a `failover run` killed (SIGKILL) while its traffic hook keeps failing leaves a failover
//! that journals nothing more. The watcher alerts `FailoverStalled` to the standby's
//! `alert_webhook` once it has stood still for `step_timeout`, takes it over when the dead
//! process's lease lapses, and drives it to its end when the hook succeeds.
//!
//! `[failover] journal = "s3://…"` (moto): two machines, each with its own directory, see the
//! same failovers; the second cannot start a failover of an environment the first is failing
//! over (and leaves nothing behind trying), and reads the first's report.

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{alerts_named, deploykit, json, run, webhook};

/// A process killed when the test ends however it ends.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `deploykit ARGS` in `dir` with `env` set, its output in `<name>.out` and `<name>.err`.
fn spawn_with(dir: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> Process {
    let log = |suffix: &str| std::fs::File::create(dir.join(format!("{name}.{suffix}"))).unwrap();
    Process(
        deploykit(dir, args)
            .envs(env.iter().copied())
            .stdout(Stdio::from(log("out")))
            .stderr(Stdio::from(log("err")))
            .spawn()
            .unwrap(),
    )
}

fn spawn(dir: &Path, name: &str, args: &[&str]) -> Process {
    spawn_with(dir, name, args, &[])
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_default()
}

/// Polls `done` every 100 ms for up to `limit`; panics saying `what` and the logs.
fn wait_until(dir: &Path, what: &str, limit: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what}: never happened\nrun: {}\nwatch: {}\n{}",
            read(dir, "run.err"),
            read(dir, "watch.err"),
            read(dir, "watch.out")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn failover_watch_alerts_a_stalled_failover_and_takes_over_one_whose_process_died() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (port, alerts) = webhook();
    std::fs::write(
        dir.join("deploykit.toml"),
        format!(
            r#"application = "shop"
[services.web]
command = ["true"]
[environments.production]
kind = "production"
[environments.production-dr]
kind = "production"
[environments.production.standby]
environment = "production-dr"
step_timeout = "2s"
alert_webhook = "http://127.0.0.1:{port}/alerts"
assessment = {{ interval = "200ms", probes = [{{ name = "up", command = ["true"] }}] }}
hooks = {{ switch_traffic = ["sh", "-c", "test -f lb-ready || {{ echo 'the load balancer is not ready' >&2; exit 1; }}"] }}
"#
        ),
    )
    .unwrap();

    // The failover reaches the traffic switch, whose hook fails; its process dies there.
    let mut runner = spawn(
        dir,
        "run",
        &[
            "failover",
            "run",
            "--env",
            "production",
            "--reason",
            "drill",
        ],
    );
    let listed = || json(&run(dir, &["-o", "json", "failover", "list"]));
    wait_until(
        dir,
        "the switch hook failing",
        Duration::from_secs(20),
        || read(dir, "run.err").contains("the load balancer is not ready"),
    );
    runner.0.kill().unwrap();
    runner.0.wait().unwrap();
    let before = listed();
    assert!(before[0]["outcome"].is_null(), "{before:#}");

    // The watcher (the primary healthy: it will not fail over by itself) pages about it…
    let mut watcher = spawn(dir, "watch", &["failover", "watch", "--env", "production"]);
    wait_until(
        dir,
        "FailoverStalled alerted",
        Duration::from_secs(20),
        || alerts_named(&alerts, "FailoverStalled"),
    );
    let body = alerts.lock().unwrap().clone().join("\n");
    assert!(body.contains("\"environment\":\"production\""), "{body}");
    assert!(
        read(dir, "watch.err").contains("alert FailoverStalled firing for production"),
        "on stderr too: {}",
        read(dir, "watch.err")
    );

    // …takes it over once the dead process's lease lapses, and ends it once the load balancer
    // is ready.
    std::fs::write(dir.join("lb-ready"), "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let code = loop {
        if let Some(status) = watcher.0.try_wait().unwrap() {
            break status.code();
        }
        assert!(
            Instant::now() < deadline,
            "the watcher never finished it: {}",
            read(dir, "watch.err")
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(code, Some(0), "{}", read(dir, "watch.err"));
    assert!(
        read(dir, "watch.err").contains("took over a failover left unfinished by a dead process"),
        "{}",
        read(dir, "watch.err")
    );
    assert!(
        read(dir, "watch.out").contains("succeeded"),
        "{}",
        read(dir, "watch.out")
    );
    let after = listed();
    assert_eq!(
        after.as_array().unwrap().len(),
        1,
        "the same failover: {after:#}"
    );
    assert_eq!(after[0]["id"], before[0]["id"]);
    assert_eq!(after[0]["outcome"]["outcome"], "succeeded", "{after:#}");
}

/// The S3 endpoint of the tests (moto, started by `bash .ci/test`).
fn s3_endpoint() -> String {
    std::env::var("DEPLOYKIT_S3_ENDPOINT").expect(
        "DEPLOYKIT_S3_ENDPOINT is not set: run the tests with `bash .ci/test`, which starts moto",
    )
}

/// Create `bucket` at the S3 endpoint (moto takes an unsigned request).
fn create_bucket(endpoint: &str, bucket: &str) {
    use std::io::{Read, Write};
    let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    write!(
        stream,
        "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn two_machines_share_the_failover_journal_in_s3() {
    let endpoint = s3_endpoint();
    let bucket = format!("failovers-{}", std::process::id());
    create_bucket(&endpoint, &bucket);
    let config = format!(
        r#"application = "shop"
[failover]
journal = "s3://{bucket}/shop"
[services.web]
command = ["true"]
[environments.production]
kind = "production"
[environments.production-dr]
kind = "production"
[environments.production.standby]
environment = "production-dr"
hooks = {{ switch_traffic = ["sh", "-c", "test -f lb-ready || {{ echo 'the load balancer is not ready' >&2; exit 1; }}"] }}
"#
    );
    // Two machines: each its own directory and state database, one journal.
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for dir in [a.path(), b.path()] {
        std::fs::write(dir.join("deploykit.toml"), &config).unwrap();
    }
    let on = |dir: &Path, args: &[&str]| {
        deploykit(dir, args)
            .env("AWS_ENDPOINT_URL", &endpoint)
            .output()
            .unwrap()
    };
    let mut first = spawn_with(
        a.path(),
        "run",
        &[
            "failover",
            "run",
            "--env",
            "production",
            "--reason",
            "drill",
        ],
        &[("AWS_ENDPOINT_URL", &endpoint)],
    );
    wait_until(
        a.path(),
        "the switch hook failing",
        Duration::from_secs(30),
        || read(a.path(), "run.err").contains("the load balancer is not ready"),
    );

    // The other machine sees it running…
    let listed = json(&on(b.path(), &["-o", "json", "failover", "list"]));
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed:#}");
    assert!(listed[0]["outcome"].is_null(), "{listed:#}");
    let id = listed[0]["id"].as_str().unwrap().to_string();
    // …and cannot start a second failover of production meanwhile, nor leave one behind.
    let second = on(
        b.path(),
        &[
            "failover",
            "run",
            "--env",
            "production",
            "--reason",
            "again",
        ],
    );
    assert!(!second.status.success());
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(
        said.contains("lease failover/production is held by"),
        "{said}"
    );
    let listed = json(&on(b.path(), &["-o", "json", "failover", "list"]));
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed:#}");

    // The first ends; the other machine reads its report.
    std::fs::write(a.path().join("lb-ready"), "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(status) = first.0.try_wait().unwrap() {
            break status.code();
        }
        assert!(Instant::now() < deadline, "{}", read(a.path(), "run.err"));
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(code, Some(0), "{}", read(a.path(), "run.err"));
    let report = on(b.path(), &["failover", "report", &id]);
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(
        text.starts_with("# Failover of production to production-dr: succeeded"),
        "{text}"
    );
}
