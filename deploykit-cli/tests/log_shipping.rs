//! The daemon ships instance logs as `[environments.<env>.logs]` asks: through the pipeline
//! to a file and to a webhook that is down (its records wait in the disk backlog), with the
//! rotation policy applied to the capture.

mod common;

use std::time::{Duration, Instant};

use common::{APP, free_port, json, run, start_daemon};

const CONFIG: &str = r#"
application = "ship"

[services.web]
command = ["{APP}"]
port = 8080
variables = { VERSION = "dev" }
health.readiness = { http = "/healthz", period = "200ms", timeout = "150ms", failure_threshold = 2 }

[environments.production]
kind = "production"
replicas = 2
progress_deadline = "30s"

[environments.production.logs]
max_file_bytes = 65536
keep_files = 2

[environments.production.logs.pipeline]
stages = [{ type = "filter", line_matches = "listening", negate = false }]

[[environments.production.logs.forward]]
type = "file"
dir = "shipped"

[[environments.production.logs.forward]]
type = "webhook"
url = "http://127.0.0.1:{DEAD}/logs"
"#;

#[test]
fn the_daemon_ships_logs_to_its_forwarders_and_keeps_a_backlog_for_one_that_is_down() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let dead = free_port();
    let config = CONFIG
        .replace("{APP}", APP)
        .replace("{DEAD}", &dead.to_string());
    std::fs::write(dir.join("deploykit.toml"), config).unwrap();
    let port = free_port();
    let mut daemon = start_daemon(dir, &format!("127.0.0.1:{port}"));
    let out = run(
        dir,
        &[
            "deploy",
            "web",
            "--label",
            "v1",
            "--set",
            "VERSION=v1",
            "-o",
            "json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deployed = json(&out);

    // Both instances' startup lines arrive in the file, each with its source.
    let shipped = dir.join("shipped");
    let deadline = Instant::now() + Duration::from_secs(30);
    let lines = loop {
        let text: String = std::fs::read_dir(&shipped)
            .map(|entries| {
                entries
                    .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
                    .collect()
            })
            .unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        if lines.len() >= 2 || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(lines.len(), 2, "{lines:?}");
    let text = serde_json::to_string(&lines).unwrap();
    assert!(text.contains("sample-app v1 listening"), "{text}");
    assert!(text.contains("\"production\""), "the environment: {text}");
    assert!(
        text.contains(
            deployed["revision"]
                .as_str()
                .unwrap_or("no revision in the output")
        ),
        "the revision: {text} / {deployed}"
    );
    // Only what the pipeline kept: no request lines, nothing else.
    assert!(lines.iter().all(|l| l.to_string().contains("listening")));

    // The webhook is down: the same records wait on disk, in its backlog.
    // (after the shared retry policy gave up on it: about six seconds).
    let backlog = dir.join(".deploykit/production/log-backlog/1");
    let deadline = Instant::now() + Duration::from_secs(40);
    let waiting = loop {
        let waiting = std::fs::read_dir(&backlog)
            .map(|entries| {
                entries
                    .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
                    .collect::<String>()
            })
            .unwrap_or_default();
        if waiting.contains("listening") || Instant::now() > deadline {
            break waiting;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        waiting.contains("sample-app v1 listening"),
        "backlog of the webhook that is down: {waiting:?}"
    );
    assert!(run(dir, &["down"]).status.success());
    // A clean stop saves where shipping got to, for the next daemon to go on from there.
    let deadline = Instant::now() + Duration::from_secs(30);
    while daemon.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the daemon did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    let cursor: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join(".deploykit/production/log-shipping.json")).unwrap(),
    )
    .unwrap();
    let newest = lines
        .iter()
        .filter_map(|l| l["time_ns"].as_i64().or_else(|| l["timestamp_ns"].as_i64()))
        .max();
    let through = cursor["web"].as_i64().expect("a cursor for web");
    if let Some(newest) = newest {
        assert!(through >= newest, "{through} < {newest}");
    }
    daemon.kill();
}
