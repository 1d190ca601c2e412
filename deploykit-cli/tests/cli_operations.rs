//! The operator commands of the `deploykit` binary: approve and abort at a gate, rollback
//! `--to` an earlier revision, previews reachable by host, logs, and backup, restore and drill.

mod common;

use std::time::{Duration, Instant};

use common::{APP, free_port, json, run, start_daemon_with};

const CONFIG: &str = r#"
application = "ops"

[services.web]
command = ["{APP}"]
port = 8080
variables = { VERSION = "dev" }
health.readiness = { http = "/healthz", period = "200ms", timeout = "150ms", failure_threshold = 2 }

[environments.production]
kind = "production"
replicas = 1
progress_deadline = "30s"

[environments.production.strategy.canary]
scale_down_delay = "200ms"
steps = [
  { weight = 50 },
  { approval = true },
]

[environments.preview]
kind = "preview"
replicas = 1
"#;

/// GET `path` on `port` with `host`: the whole response (head and body).
fn get(port: u16, host: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

/// GET `/` through the proxy with `host`; the `x-version` of the answer.
fn version_at(port: u16, host: &str) -> String {
    let text = get(port, host, "/");
    text.lines()
        .find_map(|l| l.strip_prefix("x-version: "))
        .unwrap_or_else(|| panic!("no x-version in {text:?}"))
        .trim()
        .to_string()
}

/// GET `path` on `port`: the body of a 200 answer.
fn http_get(port: u16, path: &str) -> String {
    let text = get(port, "localhost", path);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// Wait until the deployment `id` asks for approval.
fn wait_awaiting(dir: &std::path::Path, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = json(&run(dir, &["status", "--id", id, "-o", "json"]));
        if !s["awaiting"].is_null() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never reached the approval gate: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn approve_abort_rollback_preview_logs_and_backups() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("deploykit.toml"), CONFIG.replace("{APP}", APP)).unwrap();
    let port = free_port();
    let metrics_port = free_port();
    let _daemon = start_daemon_with(
        dir,
        &format!("127.0.0.1:{port}"),
        &["--metrics-listen", &format!("127.0.0.1:{metrics_port}")],
    );
    let ok = |args: &[&str]| {
        let out = run(dir, args);
        assert!(
            out.status.success(),
            "deploykit {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        json(&out)
    };

    ok(&[
        "deploy",
        "web",
        "--label",
        "v1",
        "--set",
        "VERSION=v1",
        "-o",
        "json",
    ]);
    assert_eq!(version_at(port, "localhost"), "v1");

    // v2 waits at its approval gate with half the traffic; approved, it takes all of it.
    let v2 = ok(&[
        "deploy",
        "web",
        "--label",
        "v2",
        "--set",
        "VERSION=v2",
        "--no-wait",
        "-o",
        "json",
    ]);
    let v2 = v2["id"].as_str().unwrap().to_string();
    wait_awaiting(dir, &v2);
    // In production nobody approves their own deployment (four eyes, on by default).
    let own = run(dir, &["approve", &v2, "--reason", "mine"]);
    assert!(!own.status.success());
    let err = String::from_utf8_lossy(&own.stderr);
    assert!(err.contains("a second person must"), "{err}");
    let approved = ok(&[
        "approve",
        &v2,
        "--reason",
        "looks good",
        "--actor",
        "qa-lead",
        "-o",
        "json",
    ]);
    assert_eq!(approved["phase"], "succeeded");
    assert_eq!(version_at(port, "localhost"), "v2");

    // v3 is aborted at its gate: exit code 3, all traffic back on v2.
    let v3 = ok(&[
        "deploy",
        "web",
        "--label",
        "v3",
        "--set",
        "VERSION=v3",
        "--no-wait",
        "-o",
        "json",
    ]);
    let v3 = v3["id"].as_str().unwrap().to_string();
    wait_awaiting(dir, &v3);
    let out = run(dir, &["abort", &v3, "-o", "json"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json(&out)["phase"], "rolled back");
    assert_eq!(version_at(port, "localhost"), "v2");

    // Roll back to v1 by its revision id, from the history.
    let history = ok(&["history", "web", "-o", "json"]);
    let v1_rev = history
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["label"] == "v1")
        .unwrap()["revision"]
        .as_str()
        .unwrap()
        .to_string();
    let back = ok(&["rollback", "web", "--to", &v1_rev, "-o", "json"]);
    assert_eq!(back["phase"], "succeeded");
    assert_eq!(version_at(port, "localhost"), "v1");

    // The daemon's /metrics counted all of it from the journal the commands wrote.
    let sample = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let succeeded = "deploykit_deployments_finished_total{environment=\"production\",strategy=\"canary\",outcome=\"succeeded\"}";
    // `rollback --to` switches at once, as a blue-green does.
    let switched = "deploykit_deployments_finished_total{environment=\"production\",strategy=\"blue_green\",outcome=\"succeeded\"}";
    let rolled_back = "deploykit_deployments_finished_total{environment=\"production\",strategy=\"canary\",outcome=\"rolled_back\"}";
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = http_get(metrics_port, "/metrics");
        if sample(&text, switched) >= 1.0 || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(sample(&text, succeeded), 2.0, "{text}");
    assert_eq!(sample(&text, switched), 1.0, "{text}");
    assert_eq!(sample(&text, rolled_back), 1.0, "{text}");
    assert_eq!(
        sample(
            &text,
            "deploykit_rollback_latency_seconds_count{environment=\"production\"}"
        ),
        1.0,
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");

    // Instance logs through the daemon.
    let status = ok(&["status", "-o", "json"]);
    let instances = status[0]["observed"]["revisions"][0]["instances"]
        .as_array()
        .unwrap()
        .clone();
    let name = instances[0]["name"].as_str().unwrap();
    let logs = run(dir, &["logs", name, "-o", "json"]);
    assert!(logs.status.success(), "{logs:?}");
    // One JSON document per line of output.
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&logs.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines.iter().any(|l| l["instance"] == name
            && l["line"]
                .as_str()
                .unwrap()
                .contains("listening on 127.0.0.1:")),
        "{lines:?}"
    );

    // A preview of a branch, reachable by its own host, listed, then deleted.
    let created = ok(&[
        "preview",
        "create",
        "web",
        "--branch",
        "feature/Login",
        "-o",
        "json",
    ]);
    let host = created["host"].as_str().unwrap().to_string();
    assert_eq!(host, "web-preview-feature-login.localhost");
    assert_eq!(version_at(port, &host), "dev");
    assert_eq!(
        version_at(port, "localhost"),
        "v1",
        "the preview takes no production traffic"
    );
    let list = ok(&["preview", "list", "-o", "json"]);
    assert_eq!(list[0]["environment"], "preview-feature-login");
    ok(&["preview", "delete", "feature/Login", "-o", "json"]);

    // Backup, restore and a drill, on a local repository.
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("orders.csv"), "1,paid\n2,refunded\n".repeat(1000)).unwrap();
    let with_password = |args: &[&str]| {
        let out = common::deploykit(dir, args)
            .env("DEPLOYKIT_REPO_PASSWORD", "correct horse")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "deploykit {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        json(&out)
    };
    let saved = with_password(&[
        "backup", "--repo", "repo", "--kind", "full", "data", "-o", "json",
    ]);
    assert_eq!(saved["files"], 1);
    with_password(&[
        "restore", "--repo", "repo", "--to", "restored", "-o", "json",
    ]);
    let restored = std::fs::read(dir.join("restored/data/orders.csv")).expect("restored file");
    assert_eq!(restored, std::fs::read(data.join("orders.csv")).unwrap());
    let drill = with_password(&[
        "drill",
        "--repo",
        "repo",
        "--scratch",
        "scratch",
        "-o",
        "json",
    ]);
    assert_eq!(drill["met"], true, "{drill}");
    let out = run(dir, &["backup", "--repo", "repo", "data"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("DEPLOYKIT_REPO_PASSWORD"),
        "a missing passphrase is named"
    );

    let audit = run(dir, &["audit", "verify", "-o", "json"]);
    assert!(audit.status.success());
    assert!(json(&audit)["records"].as_u64().unwrap() >= 5);
    ok(&["down", "-o", "json"]);
}
