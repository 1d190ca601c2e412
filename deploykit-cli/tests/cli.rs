//! The `deploykit` binary end to end: a daemon, deploys, a deploy killed mid-rollout and
//! resumed with no dropped request, a bad version's exit code, the daemon killed and restarted
//! (adopting its instances), and the JSON output.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{APP, deploykit, free_port, json, run, start_daemon};
use deploykit_core::{Environment, ServiceId};
use deploykit_local::LocalClient;
use deploykit_local::loadgen::{self, Completed, LoadConfig};
use tokio::sync::mpsc;

const CONFIG: &str = r#"
application = "cli"

[analyses.errors]
metrics = [
  { name = "error-rate", query = "error_rate[5s]", below = 0.02, interval = "500ms", count = 20 },
]

[services.web]
command = ["{APP}"]
port = 8080
variables = { VERSION = "dev" }
health.readiness = { http = "/healthz", period = "200ms", timeout = "150ms", failure_threshold = 2 }

[environments.production]
kind = "production"
replicas = 2
progress_deadline = "30s"

[environments.production.strategy.canary]
background_analysis = "errors"
scale_down_delay = "500ms"
steps = [
  { weight = 25 },
  { pause = "4s" },
  { weight = 50 },
  { pause = "1s" },
]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_killed_mid_rollout_resumes_with_no_dropped_request() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    std::fs::write(dir.join("deploykit.toml"), CONFIG.replace("{APP}", APP)).unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut daemon = start_daemon(dir, &listen);
    let client = LocalClient::new(dir.join(".deploykit/daemon.sock"));
    let web = ServiceId::new("web").unwrap();

    // `-v` puts deploykit's own log (every journal event) on stderr, out of stdout's way.
    let out = run(
        dir,
        &[
            "deploy",
            "web",
            "--label",
            "v1",
            "--set",
            "VERSION=v1",
            "-v",
            "-o",
            "json",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("INFO") && stderr.contains("started (first deployment)"),
        "{stderr}"
    );
    assert_eq!(
        json(&out)["phase"],
        "succeeded",
        "stdout is the JSON document alone"
    );

    // Traffic through the proxy for the rest of the test.
    let mut load = LoadConfig::new(listen.parse().unwrap(), 1_000_000);
    load.rate_per_sec = Some(200);
    load.concurrency = 8;
    let (tx, mut rx) = mpsc::unbounded_channel::<Completed>();
    let load = tokio::spawn(loadgen::run(load, Some(tx)));

    // v2 starts, reaches 25 %, and its command is killed during the 4 s pause.
    let mut deploy = deploykit(
        dir,
        &["deploy", "web", "--label", "v2", "--set", "VERSION=v2"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = client.observe(&web).await.unwrap();
        if o.revisions
            .iter()
            .any(|r| r.revision.label == "v2" && o.weight_of(&r.revision.id) == 25)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "v2 never reached 25 %: {}",
            o.summary()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    deploy.kill().unwrap();
    deploy.wait().unwrap();
    let o = client.observe(&web).await.unwrap();
    assert!(
        o.revisions.len() == 2,
        "mid-rollout when killed: {}",
        o.summary()
    );

    // Started again, the rollout finishes (after the dead command's lease expires).
    let out = tokio::task::spawn_blocking({
        let dir = dir.to_path_buf();
        move || run(&dir, &["resume", "--output", "json"])
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resumed = json(&out);
    assert_eq!(resumed["label"], "v2");
    assert_eq!(resumed["phase"], "succeeded");
    let o = client.observe(&web).await.unwrap();
    assert_eq!(o.revisions.len(), 1, "{}", o.summary());
    assert_eq!(o.revisions[0].revision.label, "v2");

    // A bad version: rolled back, exit code 3, and JSON that says why.
    let out = tokio::task::spawn_blocking({
        let dir = dir.to_path_buf();
        move || {
            run(
                &dir,
                &[
                    "deploy",
                    "web",
                    "--label",
                    "v3",
                    "--set",
                    "VERSION=v3",
                    "--set",
                    "ERROR_RATE=0.5",
                    "-o",
                    "json",
                ],
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = json(&out);
    assert_eq!(bad["phase"], "rolled back");
    assert!(
        bad["rollback_reason"]
            .as_str()
            .unwrap()
            .contains("error-rate"),
        "{bad}"
    );

    load.abort();
    let mut dropped = Vec::new();
    let mut total = 0;
    while let Ok(c) = rx.try_recv() {
        total += 1;
        if c.version.is_none() {
            dropped.push(c);
        }
    }
    assert!(total > 1000, "load ran throughout: {total}");
    assert!(
        dropped.is_empty(),
        "{} of {total} requests dropped: {:?}",
        dropped.len(),
        &dropped[..dropped.len().min(3)]
    );

    // The daemon dies; a new one adopts the running instances.
    let before: Vec<String> = client.observe(&web).await.unwrap().revisions[0]
        .instances
        .iter()
        .map(|i| i.name.to_string())
        .collect();
    daemon.kill();
    let mut daemon = start_daemon(dir, &listen);
    let o = client.observe(&web).await.unwrap();
    let after: Vec<String> = o.revisions[0]
        .instances
        .iter()
        .map(|i| i.name.to_string())
        .collect();
    assert_eq!(
        before, after,
        "the same instances after the daemon restarted"
    );

    // status, history and audit verify, as JSON.
    let status = json(&run(dir, &["status", "-o", "json"]));
    assert_eq!(status[0]["last_deployment"]["label"], "v3");
    let history = json(&run(dir, &["history", "web", "-o", "json"]));
    let labels: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["v3", "v2", "v1"]);
    let audit = run(dir, &["audit", "verify"]);
    assert!(
        audit.status.success(),
        "{}",
        String::from_utf8_lossy(&audit.stderr)
    );

    let out = run(dir, &["down"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    daemon.0.wait().unwrap();
}
