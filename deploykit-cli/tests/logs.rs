//! `deploykit logs` over the environment's log directory: records of every instance merged by
//! time, the filters (`--revision`, `--level`, `--grep`, `--query`, `--since`, `--tail`),
//! `--json`, the counts (`--count-by`, `--count`), follow, and the errors of bad flags.
//!
//! Most checks read log files written here in the capture's format (deterministic times and
//! contents); one deploys the sample app through the daemon and reads what it logged.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use common::{APP, deploykit, free_port, run, start_daemon};

const CONFIG: &str = r#"
application = "logs"

[services.web]
command = ["{APP}"]
port = 8080
health.readiness = { http = "/healthz", period = "200ms", timeout = "150ms", failure_threshold = 2 }

[services.worker]
command = ["{APP}"]
port = 8080

[environments.production]
kind = "production"
replicas = 2
progress_deadline = "30s"
"#;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `deploykit logs <args>` and returns its stdout, asserting it succeeded.
fn logs_ok(dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["logs"];
    all.extend_from_slice(args);
    let out = run(dir, &all);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    stdout(&out)
}

/// Runs `deploykit logs <args>`, asserting it failed, and returns its stderr.
fn logs_err(dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["logs"];
    all.extend_from_slice(args);
    let out = run(dir, &all);
    assert!(
        !out.status.success(),
        "{args:?} succeeded: {}",
        stdout(&out)
    );
    stderr(&out)
}

fn setup(dir: &Path) {
    std::fs::write(dir.join("deploykit.toml"), CONFIG.replace("{APP}", APP)).unwrap();
}

/// A CRI-format time `seconds` after `base`.
fn at(base: SystemTime, millis: u64) -> String {
    humantime::format_rfc3339_nanos(base + Duration::from_millis(millis)).to_string()
}

/// Writes `<instance>.log` (lines `(millis after base, stream, text)`) and `<instance>.owner`.
fn write_log(
    dir: &Path,
    instance: &str,
    revision: &str,
    base: SystemTime,
    lines: &[(u64, &str, &str)],
) {
    let logs = dir.join(".deploykit/production/logs");
    std::fs::create_dir_all(&logs).unwrap();
    let owner = serde_json::json!({ "service": "web", "revision": revision });
    std::fs::write(logs.join(format!("{instance}.owner")), owner.to_string()).unwrap();
    let text: String = lines
        .iter()
        .map(|(millis, stream, line)| format!("{} {stream} F {line}\n", at(base, *millis)))
        .collect();
    std::fs::write(logs.join(format!("{instance}.log")), text).unwrap();
}

/// Two instances of `web` (revisions r1 and r2) whose lines interleave, written a minute ago.
fn fixture(dir: &Path) -> SystemTime {
    setup(dir);
    let base = SystemTime::now() - Duration::from_secs(60);
    write_log(
        dir,
        "web-a",
        "r1",
        base,
        &[
            (0, "stdout", r#"{"level":"info","msg":"started a"}"#),
            (
                2000,
                "stdout",
                r#"{"level":"error","msg":"db timeout","status":500}"#,
            ),
            (4000, "stderr", "plain stderr line a"),
        ],
    );
    write_log(
        dir,
        "web-b",
        "r2",
        base,
        &[
            (1000, "stdout", r#"level=warn msg="slow request""#),
            (
                3000,
                "stdout",
                r#"{"level":"error","msg":"upstream timeout"}"#,
            ),
            (5000, "stdout", "no level here b"),
        ],
    );
    base
}

/// The instance column of plain output lines (`<time> <instance> …`).
fn instances(text: &str) -> Vec<&str> {
    text.lines()
        .map(|l| l.split(' ').nth(1).unwrap_or(""))
        .collect()
}

#[test]
fn records_of_every_instance_are_merged_by_time_and_filtered() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let base = fixture(dir);

    // Merged by time, each line with its instance; stderr marked `E`.
    let text = logs_ok(dir, &["web"]);
    assert_eq!(
        instances(&text),
        ["web-a", "web-b", "web-a", "web-b", "web-a", "web-b"],
        "{text}"
    );
    let first = text.lines().next().unwrap();
    let expected = humantime::format_rfc3339_millis(base).to_string();
    assert!(first.starts_with(&format!("{expected} web-a {{")), "{text}");
    assert!(text.contains(" web-a E plain stderr line a\n"), "{text}");
    let times: Vec<&str> = text.lines().map(|l| l.split(' ').next().unwrap()).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted);

    // One instance: no instance column.
    let text = logs_ok(dir, &["web-b"]);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.lines().all(|l| !l.contains("web-")), "{text}");
    assert!(text.ends_with(" no level here b\n"), "{text}");

    // --tail keeps the newest.
    let text = logs_ok(dir, &["web", "--tail", "2"]);
    assert_eq!(instances(&text), ["web-a", "web-b"], "{text}");
    assert!(text.ends_with("no level here b\n"), "{text}");

    // --revision.
    let text = logs_ok(dir, &["web", "--revision", "r2"]);
    assert_eq!(instances(&text), ["web-b", "web-b", "web-b"], "{text}");

    // --level: at least that severe; lines without a level are left out.
    let text = logs_ok(dir, &["web", "--level", "error"]);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.lines().all(|l| l.contains("\"level\":\"error\"")),
        "{text}"
    );
    let text = logs_ok(dir, &["web", "--level", "warn"]);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.contains("slow request"), "{text}");

    // --grep, and --query ANDed with the other flags.
    let text = logs_ok(dir, &["web", "--grep", "time.ut|slow"]);
    assert_eq!(text.lines().count(), 3, "{text}");
    let text = logs_ok(
        dir,
        &[
            "web",
            "--query",
            r#"{stream="stdout"} |= "timeout""#,
            "--revision",
            "r1",
        ],
    );
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("db timeout"), "{text}");
    let text = logs_ok(dir, &["web", "--query", r#"{} | status="500""#]);
    assert_eq!(text.lines().count(), 1, "{text}");

    // --since: a duration ago, or a time (one in the future selects nothing).
    assert_eq!(logs_ok(dir, &["web", "--since", "10m"]).lines().count(), 6);
    assert_eq!(logs_ok(dir, &["web", "--since", "1s"]), "");
    assert_eq!(
        logs_ok(dir, &["web", "--since", "2099-01-01T00:00:00Z"]),
        ""
    );
    let until = at(base, 2500);
    let text = logs_ok(dir, &["web", "--until", &until]);
    assert_eq!(text.lines().count(), 3, "{text}");
}

#[test]
fn json_output_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    fixture(dir);

    let text = logs_ok(dir, &["web", "--json"]);
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(records.len(), 6, "{text}");
    for record in &records {
        for field in [
            "time",
            "ts",
            "service",
            "environment",
            "revision",
            "instance",
            "stream",
            "level",
            "line",
        ] {
            assert!(record.get(field).is_some(), "{field} missing in {record}");
        }
        assert_eq!(record["service"], "web");
        assert_eq!(record["environment"], "production");
    }
    assert_eq!(records[1]["level"], "warn");
    assert_eq!(records[1]["revision"], "r2");
    assert_eq!(records[4]["stream"], "stderr");
    assert!(records[0]["time"].as_str().unwrap().ends_with('Z'));
    let ts: Vec<i64> = records.iter().map(|r| r["ts"].as_i64().unwrap()).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{ts:?}");
    // `-o json` is the same.
    assert_eq!(logs_ok(dir, &["web", "-o", "json"]), text);

    // Counts per level (lines without one in the empty group).
    let text = logs_ok(dir, &["web", "--count-by", "level", "--since", "10m"]);
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["2", "level="],
            vec!["2", "level=error"],
            vec!["1", "level=info"],
            vec!["1", "level=warn"],
        ],
        "{text}"
    );
    let text = logs_ok(dir, &["web", "--count-by", "revision", "--json"]);
    let groups: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(groups.len(), 2, "{text}");
    assert_eq!(groups[0]["group"]["revision"], "r1");
    assert_eq!(groups[0]["value"], 3.0);
    // A metric query, with the other filters applied first.
    let text = logs_ok(
        dir,
        &[
            "web",
            "--count",
            r#"sum by (instance) (count_over_time({level="error"}[10m]))"#,
            "--revision",
            "r2",
        ],
    );
    assert_eq!(
        text.split_whitespace().collect::<Vec<_>>(),
        ["1", "instance=web-b"]
    );
}

#[test]
fn bad_flags_and_unknown_names_are_refused_with_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    fixture(dir);

    let err = logs_err(dir, &["web", "--query", r#"{level="error""#]);
    assert!(
        err.contains("--query") && err.contains("column 15"),
        "{err}"
    );
    let err = logs_err(dir, &["web", "--since", "yesterday"]);
    assert!(
        err.contains("--since") && err.contains("duration") && err.contains("RFC 3339"),
        "{err}"
    );
    let err = logs_err(dir, &["web", "--level", "loud"]);
    assert!(err.contains("--level") && err.contains("loud"), "{err}");
    let err = logs_err(dir, &["web", "--grep", "(unclosed"]);
    assert!(err.contains("--grep"), "{err}");
    let err = logs_err(dir, &["wbe"]);
    assert!(
        err.contains("\"wbe\" is not a service or instance"),
        "{err}"
    );
    assert!(err.contains("web"), "{err}");
}

#[test]
fn follow_prints_the_kept_records_then_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    fixture(dir);
    let mut child = deploykit(dir, &["logs", "web", "-f", "--grep", "timeout|appended"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (send, lines) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            if send.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let next = |what: &str| {
        lines
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    };
    assert!(next("kept 1").contains("db timeout"));
    assert!(next("kept 2").contains("upstream timeout"));
    std::thread::sleep(Duration::from_millis(300));
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join(".deploykit/production/logs/web-b.log"))
        .unwrap();
    let now = humantime::format_rfc3339_nanos(SystemTime::now());
    writeln!(file, "{now} stdout F skipped line").unwrap();
    writeln!(file, "{now} stdout F appended line").unwrap();
    drop(file);
    let line = next("new");
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.ends_with(" web-b appended line"), "{line}");
}

#[test]
fn a_deployed_service_logs_its_instances_start() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    setup(dir);
    let port = free_port();
    let _daemon = start_daemon(dir, &format!("127.0.0.1:{port}"));
    let out = run(
        dir,
        &["deploy", "web", "--label", "v1", "--set", "LOG_FORMAT=json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // Both instances logged their start, as JSON with a level (the capture writes as the
    // lines come).
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = logs_ok(dir, &["web", "--grep", "listening on", "--level", "info"]);
        if text.lines().count() >= 2 || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut names = instances(&text);
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 2, "{text}");
    let text = logs_ok(dir, &["web", "--count-by", "level", "--json"]);
    assert!(text.contains(r#""group":{"level":"info"}"#), "{text}");
}
