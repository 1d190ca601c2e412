//! The `deploykit` binary as people use it: errors that carry their causes and say what to do,
//! unknown names refused with a suggestion, revisions named by label or id prefix, output that
//! reads well and survives pipes, a word when a deploy waits, `validate`, `scale`, `stop`,
//! `logs`, exit codes in `--help`, and backups that need no `deploykit.toml`.
//!
//! Every test runs the built binary as a user would: stdout and stderr are pipes here, so the
//! output checked is the non-terminal one (CI's).

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::{APP, deploykit, free_port, json, run, start_daemon};

const CONFIG: &str = r#"
application = "ux"

[analyses.errors]
metrics = [
  { name = "error-rate", query = "error_rate", below = 0.02, unit = "%", interval = "300ms", count = 3, min_samples = { query = "requests", count = 3 } },
]

[services.web]
command = ["{APP}"]
port = 8080
variables = { VERSION = "dev" }
health.readiness = { http = "/healthz", period = "200ms", timeout = "150ms", failure_threshold = 2 }

[services.worker]
command = ["{APP}"]
port = 8080

[environments.production]
kind = "production"
replicas = 1
progress_deadline = "30s"

[environments.production.strategy.canary]
background_analysis = "errors"
scale_down_delay = "200ms"
steps = [
  { weight = 50 },
  { pause = "2s" },
]
"#;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn setup(dir: &Path) {
    std::fs::write(dir.join("deploykit.toml"), CONFIG.replace("{APP}", APP)).unwrap();
}

/// Send requests through the proxy until `stop`, so a canary has traffic to judge.
fn traffic(port: u16, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::io::Write;
    std::thread::spawn(move || {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                let _ = write!(
                    s,
                    "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                );
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
}

#[test]
fn without_a_daemon_commands_say_it_is_not_running_and_how_to_start_it() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    setup(dir);
    for args in [&["status"][..], &["status", "web"], &["deploy", "web"]] {
        let out = run(dir, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("the deploykit daemon") && err.contains("it is not running"),
            "{args:?}: {err}"
        );
        assert!(err.contains("start it with `deploykit daemon`"), "{err}");
    }
    // The journal's part of `status` is still shown.
    let out = run(dir, &["status", "web"]);
    assert!(
        stdout(&out).contains("web in production"),
        "{}",
        stdout(&out)
    );
    // JSON: one document, with the causes.
    let out = run(dir, &["status", "-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let doc = json(&out);
    assert!(doc["error"].as_str().unwrap().contains("daemon"), "{doc}");
    assert!(
        doc["causes"][0].as_str().unwrap().contains("not running"),
        "{doc}"
    );
}

#[test]
fn a_busy_port_is_reported_with_the_os_error_and_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    setup(dir);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = deploykit(dir, &["daemon", "--listen", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&format!("bind the proxy to {addr}")), "{err}");
    assert!(
        err.contains("caused by: ") && err.contains("in use"),
        "{err}"
    );
    assert!(err.contains("hint: ") && err.contains("--listen"), "{err}");
}

#[test]
fn unknown_names_are_errors_that_suggest_the_closest() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    setup(dir);
    for args in [
        &["status", "wbe"][..],
        &["history", "wbe"],
        &["deploy", "wbe"],
        &["rollback", "wbe"],
        &["scale", "wbe", "2"],
        &["stop", "wbe"],
    ] {
        let out = run(dir, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stdout(&out));
        let err = stderr(&out);
        assert!(
            err.contains("\"wbe\" is not a service")
                && err.contains("did you mean \"web\"?")
                && err.contains("(services: web, worker)"),
            "{args:?}: {err}"
        );
    }
    // A name like nothing known lists what exists, without a guess.
    let out = run(dir, &["history", "nosvc"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!stderr(&out).contains("did you mean"), "{}", stderr(&out));
    // Environments too.
    let out = run(dir, &["status", "--env", "prodution"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("did you mean \"production\"?"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn help_documents_every_command_and_the_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["--help"]);
    assert!(out.status.success());
    let help = stdout(&out);
    for code in [
        "0  success",
        "1  error",
        "2  bad usage",
        "3  the deployment ended",
    ] {
        assert!(help.contains(code), "{help}");
    }
    assert!(
        !help.contains("sample-app"),
        "the hidden command shows: {help}"
    );
    let commands = [
        "daemon", "down", "deploy", "resume", "status", "history", "promote", "approve", "abort",
        "rollback", "preview", "backup", "restore", "drill", "audit", "flags", "logs", "validate",
        "scale", "stop", "demo",
    ];
    for command in commands {
        assert!(
            help.contains(&format!("  {command} ")),
            "{command} missing: {help}"
        );
        let out = run(dir.path(), &[command, "--help"]);
        assert!(out.status.success(), "{command} --help: {}", stderr(&out));
        assert!(stdout(&out).contains("Usage: deploykit"), "{command}");
    }
    // Bad usage exits 2.
    assert_eq!(run(dir.path(), &["deploi"]).status.code(), Some(2));
}

#[test]
fn backups_need_no_configuration_file() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    std::fs::create_dir(dir.join("data")).unwrap();
    std::fs::write(dir.join("data/a.txt"), "hello").unwrap();
    let with_password = |args: &[&str]| {
        deploykit(dir, args)
            .env("DEPLOYKIT_REPO_PASSWORD", "pw")
            .output()
            .unwrap()
    };
    let out = with_password(&["backup", "--repo", "repo", "data"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = with_password(&["restore", "--repo", "repo", "--to", "back"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let restored = walk(&dir.join("back"));
    assert!(
        restored
            .iter()
            .any(|(p, c)| p.ends_with("a.txt") && c == "hello"),
        "{restored:?}"
    );
    assert!(
        !dir.join(".deploykit").exists(),
        "a state directory was made"
    );
    // What does need the file says which and why.
    let out = with_password(&["backup", "--repo", "repo", "--env", "production", "data"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("deploykit.toml"), "{}", stderr(&out));
    // No password: a hint.
    let out = run(dir, &["backup", "--repo", "repo", "data"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("hint: export DEPLOYKIT_REPO_PASSWORD"),
        "{}",
        stderr(&out)
    );
}

fn walk(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            let content = std::fs::read_to_string(&path).unwrap_or_default();
            out.push((path.display().to_string(), content));
        }
    }
    out
}

#[test]
fn validate_checks_the_configuration_without_deploying() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    setup(dir);
    let out = run(dir, &["validate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("is valid: services web, worker"),
        "{}",
        stdout(&out)
    );
    assert!(!dir.join(".deploykit").exists(), "validate made state");

    // A type error in TOML words, with file:line:column and the field.
    let bad = CONFIG
        .replace("{APP}", APP)
        .replace("replicas = 1", "replicas = \"two\"");
    std::fs::write(dir.join("deploykit.toml"), bad).unwrap();
    let out = run(dir, &["validate"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("deploykit.toml:"), "{err}");
    assert!(err.contains("environments.production.replicas"), "{err}");
    assert!(
        err.contains("a whole number") && !err.contains("u32"),
        "{err}"
    );

    // A startup probe with a short period and no timeout is fine; a written timeout longer
    // than the period is refused where it is written.
    let probe = "health.readiness = { http = \"/healthz\", period = \"200ms\", timeout = \"150ms\", failure_threshold = 2 }";
    let with_startup = |startup: &str| {
        CONFIG
            .replace("{APP}", APP)
            .replace(probe, &format!("{probe}\nhealth.startup = {startup}"))
    };
    std::fs::write(
        dir.join("deploykit.toml"),
        with_startup("{ http = \"/healthz\", period = \"200ms\", failure_threshold = 30 }"),
    )
    .unwrap();
    let out = run(dir, &["validate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(
        dir.join("deploykit.toml"),
        with_startup("{ http = \"/healthz\", period = \"200ms\", timeout = \"2s\" }"),
    )
    .unwrap();
    let out = run(dir, &["validate"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("deploykit.toml:") && err.contains("services.web.health.startup.timeout"),
        "{err}"
    );

    // A service without a command is caught at load, not at deploy.
    let bad = CONFIG.replace("{APP}", APP).replace(
        "[services.worker]\ncommand = [\"{APP}\"]\n"
            .replace("{APP}", APP)
            .as_str(),
        "[services.worker]\n",
    );
    std::fs::write(dir.join("deploykit.toml"), bad).unwrap();
    let out = run(dir, &["validate"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("services.worker.command"), "{err}");
    assert!(err.contains("deploykit.toml:"), "{err}");
}

/// The long one: a daemon, deploys, and every command that talks to it.
#[test]
fn operating_a_service_reads_well_in_pipes() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    setup(dir);
    let port = free_port();
    let _daemon = start_daemon(dir, &format!("127.0.0.1:{port}"));
    let stop_traffic = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    traffic(port, stop_traffic.clone());

    // Piped, `deploy` prints every event line (no spinner), then its summary.
    let out = run(
        dir,
        &["deploy", "web", "--label", "v1", "--set", "VERSION=v1"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("started (first deployment)"), "{text}");
    assert!(text.lines().count() >= 3, "{text}");
    assert!(text.trim_end().ends_with("web v1: succeeded"), "{text}");

    // A second deploy while the first runs says what it waits for.
    let mut first = deploykit(
        dir,
        &["deploy", "web", "--label", "v2", "--set", "VERSION=v2"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_for(dir, |s| s[0]["last_deployment"]["label"] == "v2");
    let second = run(
        dir,
        &["deploy", "web", "--label", "v3", "--set", "VERSION=v3"],
    );
    let text = stdout(&second);
    assert!(second.status.success(), "{text} {}", stderr(&second));
    assert!(
        text.contains("waiting: deployment") && text.contains("of web v2 (requested by test"),
        "{text}"
    );
    assert!(first.wait().unwrap().success());
    let mut first_out = String::new();
    first
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut first_out)
        .unwrap();

    // A bad revision: the analysis prints percentages, never NaN.
    let out = run(
        dir,
        &[
            "deploy",
            "web",
            "--label",
            "v4",
            "--set",
            "VERSION=v4",
            "--set",
            "ERROR_RATE=0.5",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains(" % is not < 2 %"), "{text}");
    assert!(!text.to_lowercase().contains("nan"), "{text}");

    // Labels and id prefixes name revisions; a rolled-back one is explained.
    let out = run(dir, &["rollback", "web", "--to", "v4"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("v4 (") && err.contains("was rolled back") && err.contains("kept: v3 ("),
        "{err}"
    );
    let out = run(dir, &["rollback", "web", "--to", "v1"]);
    assert!(out.status.success(), "{} {}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).trim_end().ends_with("web v1: succeeded"),
        "{}",
        stdout(&out)
    );
    let history = json(&run(dir, &["history", "web", "-o", "json"]));
    let v2 = history
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["label"] == "v2")
        .unwrap()["revision"]
        .as_str()
        .unwrap()
        .to_string();
    let out = run(dir, &["rollback", "web", "--to", &v2[..6]]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).trim_end().ends_with("web v2: succeeded"),
        "{}",
        stdout(&out)
    );

    // `scale` and `stop`, journaled; `history` marks them, rollbacks and who asked.
    let out = run(dir, &["scale", "web", "3"]);
    assert!(out.status.success(), "{} {}", stdout(&out), stderr(&out));
    let status = json(&run(dir, &["status", "web", "-o", "json"]));
    let instances = status[0]["observed"]["revisions"][0]["instances"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(instances, 3, "{status}");
    let text = stdout(&run(dir, &["history", "web"]));
    assert!(text.contains("scale to 3, succeeded  by test"), "{text}");
    assert!(
        text.contains("manual rollback, succeeded  by test"),
        "{text}"
    );
    assert!(text.contains("rolled back to v3"), "{text}");

    // Status reads as text: no JSON inside it.
    let text = stdout(&run(dir, &["status"]));
    assert!(!text.contains('{'), "{text}");
    assert!(text.contains("ready, 0 restarts"), "{text}");
    assert!(
        text.contains("worker in production\n  never deployed"),
        "{text}"
    );

    // Logs of a whole service, each line `<time> <instance> <line>`.
    let out = run(dir, &["logs", "web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.lines()
            .filter(
                |l| l.split(' ').nth(1).is_some_and(|i| i.starts_with("web-"))
                    && l.contains("listening on")
            )
            .count()
            >= 3,
        "{text}"
    );
    let out = run(dir, &["logs", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("\"nosuch\" is not a service or instance"),
        "{}",
        stderr(&out)
    );
    // `-f` follows: a new instance's output appears.
    let mut follow = deploykit(dir, &["logs", "web", "-f"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let out = run(dir, &["scale", "web", "4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::thread::sleep(Duration::from_secs(3));
    let _ = follow.kill();
    let _ = follow.wait();
    let mut followed = String::new();
    follow
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut followed)
        .unwrap();
    let names: std::collections::BTreeSet<&str> = followed
        .lines()
        .filter(|l| l.contains("listening on"))
        .filter_map(|l| l.split(' ').nth(1))
        .collect();
    // (The kept records include those of instances that are gone: earlier revisions'.)
    let status = json(&run(dir, &["status", "web", "-o", "json"]));
    let serving = status[0]["observed"]["revisions"][0]["instances"]
        .as_array()
        .unwrap();
    assert_eq!(serving.len(), 4, "{status}");
    for instance in serving {
        let name = instance["name"].as_str().unwrap();
        assert!(names.contains(name), "{name} not followed: {followed}");
    }

    // A closed pipe ends the output, not the command: no panic, exit 0.
    let mut child = deploykit(dir, &["history", "web"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let code = child.wait().unwrap();
    assert!(code.success(), "{code:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");

    let out = run(dir, &["stop", "web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = json(&run(dir, &["status", "web", "-o", "json"]));
    assert!(
        status[0]["observed"]["revisions"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{status}"
    );
    assert!(stdout(&run(dir, &["history", "web"])).contains("stop, succeeded  by test"));
    // And `deploy` starts it again, followed to its end even when its reader went away.
    let mut deploy = deploykit(
        dir,
        &["deploy", "web", "--label", "v5", "--set", "VERSION=v5"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    drop(deploy.stdout.take());
    let mut err = String::new();
    deploy
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(deploy.wait().unwrap().success(), "{err}");
    let history = json(&run(dir, &["history", "web", "-o", "json"]));
    assert_eq!(history[0]["label"], "v5", "{history}");
    assert_eq!(history[0]["phase"], "succeeded", "{history}");
    stop_traffic.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Poll `status -o json` until `done` holds.
fn wait_for(dir: &Path, done: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = run(dir, &["status", "web", "-o", "json"]);
        if out.status.success() && done(&json(&out)) {
            return;
        }
        assert!(Instant::now() < deadline, "{}", stdout(&out));
        std::thread::sleep(Duration::from_millis(100));
    }
}
