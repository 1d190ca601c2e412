//! `deploykit backup agent` and `deploykit backup status` run as a user runs them: the real
//! binary, a `deploykit.toml` with schedules in seconds, a webhook receiving the alerts.
//! Backups, prunes and drills happen and are audited; the agent killed and restarted catches
//! up the runs it missed; a backup that cannot read its data fails, alerts, and makes
//! `backup status` exit 4.

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{alerts_named, deploykit, free_port, json, run, webhook};

fn config(webhook_port: u16) -> String {
    format!(
        r#"application = "shop"

[environments.production]
kind = "production"

[environments.production.backup]
repository = "backups/production"
paths = ["data"]
rotation = ["full */2 * * * * *"]
retention = {{ keep_last = 2 }}
prune = true
verify = {{ subsets = 2, full = "off" }}
drill = {{ schedule = "*/3 * * * * *" }}
retry = {{ attempts = 2, backoff = "50ms" }}
alert_webhook = "http://127.0.0.1:{webhook_port}/alerts"
"#
    )
}

/// The agent, killed when the test ends however it ends.
struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent(dir: &Path, life: u32) -> AgentProcess {
    let log = |name: &str| std::fs::File::create(dir.join(format!("{name}-{life}.log"))).unwrap();
    let child = deploykit(dir, &["backup", "agent", "--heartbeat", "1s"])
        .env("DEPLOYKIT_REPO_PASSWORD", "correct horse")
        .stdout(Stdio::from(log("agent")))
        .stderr(Stdio::from(log("agent-stderr")))
        .spawn()
        .expect("start the agent");
    AgentProcess(child)
}

/// `backup status -o json`, with its exit code.
fn status(dir: &Path) -> (Option<i32>, serde_json::Value) {
    let out = run(dir, &["backup", "status", "-o", "json"]);
    (out.status.code(), json(&out))
}

/// Polls `backup status` until `done` holds (panics with the last status after 40 s).
fn wait_for(
    dir: &Path,
    what: &str,
    done: impl Fn(Option<i32>, &serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (code, s) = status(dir);
        if done(code, &s) {
            return s;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                .map(|e| {
                    format!(
                        "{}:\n{}",
                        e.path().display(),
                        std::fs::read_to_string(e.path()).unwrap_or_default()
                    )
                })
                .collect();
            panic!(
                "{what}: never happened; last status (exit {code:?}): {s:#}\n{}",
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn production(s: &serde_json::Value) -> &serde_json::Value {
    &s["environments"][0]
}

#[test]
fn the_agent_backs_up_catches_up_alerts_and_shows_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (port, bodies) = webhook();
    std::fs::write(dir.join("deploykit.toml"), config(port)).unwrap();
    std::fs::create_dir(dir.join("data")).unwrap();
    std::fs::write(dir.join("data/orders.csv"), "1,coffee\n".repeat(1000)).unwrap();

    // Nothing ran yet: the status says so and exits 4.
    let (code, s) = status(dir);
    assert_eq!(code, Some(4), "{s:#}");
    assert!(
        production(&s)["problems"][0]
            .as_str()
            .unwrap()
            .contains("has not run"),
        "{s:#}"
    );

    // First life: backups (full, every 2 s), retention and prune, slices read back, drills.
    let mut agent = start_agent(dir, 1);
    let s = wait_for(dir, "a backup and a drill", |code, s| {
        let duties = &production(s)["duties"];
        code == Some(0)
            && duties["backup"]["last_success_by_kind"]["full"].is_string()
            && duties["drill"]["last_success"].is_object()
            && duties["verify"]["last_success_by_kind"]["subset"].is_string()
    });
    assert_eq!(s["agent"]["running"], true, "{s:#}");
    // Keep running until retention has had something to forget.
    let deadline = Instant::now() + Duration::from_secs(30);
    let log = dir.join("agent-1.log");
    while std::fs::read_to_string(&log)
        .unwrap()
        .matches("production backup (full)")
        .count()
        < 4
    {
        assert!(
            Instant::now() < deadline,
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("retention forgot 1 snapshot(s)"), "{text}");
    let snapshots = std::fs::read_dir(dir.join("backups/production/snapshots"))
        .unwrap()
        .count();
    assert!((2..=3).contains(&snapshots), "{snapshots} snapshots kept");

    // Killed: after a missed run, the status says the backup is overdue and exits 4.
    drop(agent);
    let s = wait_for(dir, "overdue after the kill", |code, s| {
        code == Some(4)
            && production(s)["problems"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p.as_str().unwrap().contains("backup is overdue"))
    });
    assert_eq!(s["agent"]["running"], false, "{s:#}");
    let text = run(dir, &["backup", "status"]);
    assert_eq!(text.status.code(), Some(4));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("backup agent: not running"), "{text}");
    assert!(text.contains("problem: backup is overdue"), "{text}");
    std::thread::sleep(Duration::from_secs(2));

    // Second life: the missed runs are noticed and made up at start, and alerted.
    agent = start_agent(dir, 2);
    let s = wait_for(dir, "the catch-up", |code, s| {
        code == Some(0) && production(s)["duties"]["backup"]["missed"].as_u64() >= Some(1)
    });
    let miss = &production(&s)["duties"]["backup"]["last_miss"];
    assert!(miss["runs"].as_u64() >= Some(1), "{s:#}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !alerts_named(&bodies, "BackupRunMissed") {
        assert!(Instant::now() < deadline, "{:#?}", bodies.lock().unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    let err = std::fs::read_to_string(dir.join("agent-stderr-2.log")).unwrap();
    assert!(
        err.contains("alert BackupRunMissed firing for production"),
        "{err}"
    );

    // The data goes away: backups fail (after their retry), alert, and the status exits 4.
    std::fs::remove_dir_all(dir.join("data")).unwrap();
    let s = wait_for(dir, "a failed backup", |code, s| {
        code == Some(4)
            && production(s)["problems"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p.as_str().unwrap().starts_with("backup (full) failed"))
    });
    let failure = &production(&s)["duties"]["backup"]["last_failure"];
    assert_eq!(failure["attempts"], 2, "{s:#}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !alerts_named(&bodies, "BackupRunFailed") {
        assert!(Instant::now() < deadline, "{:#?}", bodies.lock().unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(agent);

    // Everything the agent did is in the audit log, whose chain holds.
    let out = run(dir, &["audit", "verify", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(json(&out)["records"].as_u64() >= Some(5));
    let db = rusqlite::Connection::open(dir.join(".deploykit/deploykit.db")).unwrap();
    let bodies: Vec<String> = db
        .prepare("SELECT body FROM audit ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for action in ["backup", "prune", "drill"] {
        assert!(
            bodies
                .iter()
                .any(|b| b.contains(&format!("\"action\":\"{action}\""))),
            "no {action} in {bodies:#?}"
        );
    }
    assert!(
        bodies
            .iter()
            .any(|b| b.contains("failed after 2 attempt(s)")),
        "{bodies:#?}"
    );
    let _ = free_port;
}

#[test]
fn backup_status_and_agent_explain_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    std::fs::write(
        dir.join("deploykit.toml"),
        "application = \"shop\"\n[environments.production]\nkind = \"production\"\n",
    )
    .unwrap();
    let out = run(dir, &["backup", "agent"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no environment has a backup policy"), "{err}");
    let out = run(dir, &["backup", "status", "--env", "production"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("environment production has no [environments.production.backup] policy"),
        "{err}"
    );
    // The one-off form still works beside the subcommands.
    std::fs::create_dir(dir.join("data")).unwrap();
    std::fs::write(dir.join("data/a.txt"), "a").unwrap();
    let out = deploykit(dir, &["backup", "--repo", "repo", "data"])
        .env("DEPLOYKIT_REPO_PASSWORD", "pw")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A scheduled failover rehearsal runs this binary's `failover rehearse` with the agent's
/// configuration: here the archive holds no base backup, so each rehearsal is refused, and the
/// agent says why (the rehearsal's own report) and alerts.
#[test]
fn the_agent_rehearses_the_failover_on_schedule_and_reports_a_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (port, bodies) = webhook();
    let toml = config(port).replace(
        "alert_webhook",
        "rehearsal = { schedule = \"* * * * * *\" }\nalert_webhook",
    ) + "[environments.production.standby]\nenvironment = \"production-dr\"\n\
         database = { repository = \"backups/production\", standby_connection = \"host=/nonexistent port=1\" }\n\
         [environments.production-dr]\nkind = \"production\"\n\
         [services.web]\ncommand = [\"true\"]\nport = 8080\n";
    std::fs::write(dir.join("deploykit.toml"), toml).unwrap();
    std::fs::create_dir(dir.join("data")).unwrap();
    std::fs::write(dir.join("data/orders.csv"), "1,coffee\n").unwrap();
    let _agent = start_agent(dir, 1);
    let s = wait_for(dir, "a failed rehearsal", |_, s| {
        production(s)["duties"]["rehearsal"]["last_failure"].is_object()
    });
    let failure = production(&s)["duties"]["rehearsal"]["last_failure"].to_string();
    assert!(
        failure.contains("failover rehearsal failed")
            && (failure.contains("holds no base backup") || failure.contains("postgres")),
        "{failure}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !alerts_named(&bodies, "BackupRunFailed") {
        assert!(Instant::now() < deadline, "{:#?}", bodies.lock().unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
}
