//! Notifications from `deploykit.toml`, delivered by the daemon: a signed JSON webhook that
//! takes every event, mail through an SMTP relay for what people act on, a chat channel routed
//! to another environment that gets nothing, each event once (also after the daemon restarts),
//! `deploykit notify test`, and bad channel settings named by file, line and key.

mod common;

use std::time::{Duration, Instant};

use common::{APP, deploykit, free_port, json, run, spawn_daemon};
use deploykit_core::notify::{WEBHOOK_SIGNATURE_HEADER, verify_webhook_signature};
use deploykit_testing::sinks::{HttpSink, SmtpSink};

const KEY: &str = "a signing key of more than sixteen bytes";

const CONFIG: &str = r#"
application = "shop"

[services.web]
command = ["{APP}"]
port = 8080
health.readiness = { http = "/healthz", period = "200ms", timeout = "150ms", failure_threshold = 2 }

[environments.production]
kind = "production"
replicas = 1
progress_deadline = "30s"

[environments.production.strategy.canary]
scale_down_delay = "200ms"
steps = [{ weight = 50 }, { approval = true }]

[environments.staging]
kind = "staging"
replicas = 1

[notifications.hooks]
type = "webhook"
url_env = "DEPLOYKIT_TEST_HOOK_URL"
signing_key_env = "DEPLOYKIT_TEST_HOOK_KEY"
events = ["*"]

[notifications.oncall]
type = "email"
smtp = "{SMTP}"
from = "deploykit@shop.example"
to = ["oncall@shop.example", "lead@shop.example"]
environments = ["production"]

[notifications.chat]
type = "slack"
url = "{CHAT}"
environments = ["staging"]
"#;

/// Waits for `check`; a failure shows the daemon's log in `dir`.
fn eventually(dir: &std::path::Path, what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(
            Instant::now() < deadline,
            "never: {what}; the daemon said: {}",
            std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_daemon_sends_each_event_once_to_the_channels_that_route_it() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (hooks, chat, smtp) = rt.block_on(async {
        (
            HttpSink::start().await.unwrap(),
            HttpSink::start().await.unwrap(),
            SmtpSink::start().await.unwrap(),
        )
    });
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("deploykit.toml"),
        CONFIG
            .replace("{APP}", APP)
            .replace("{SMTP}", &smtp.addr())
            .replace("{CHAT}", &chat.url("/services/T0/B0/secret")),
    )
    .unwrap();
    // The webhook's URL and key are in variables, as secrets would be.
    let hook_url = hooks.url("/deploys");
    let with_hook_vars = |args: &[&str]| {
        let mut cmd = deploykit(dir, args);
        cmd.env("DEPLOYKIT_TEST_HOOK_URL", &hook_url)
            .env("DEPLOYKIT_TEST_HOOK_KEY", KEY);
        cmd
    };
    let listen = format!("127.0.0.1:{}", free_port());
    let daemon_args = ["daemon", "--listen", listen.as_str()];
    let mut daemon = spawn_daemon(dir, with_hook_vars(&daemon_args));
    let ok = |args: &[&str]| {
        let out = run(dir, args);
        assert!(out.status.success(), "{args:?}: {out:?}");
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
    eventually(dir, "v2's approval is mailed", || {
        smtp.mails()
            .iter()
            .any(|m| m.data.contains("waiting for approval"))
    });
    let out = run(dir, &["abort", &v2, "--reason", "not today"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    eventually(dir, "v2's end is mailed", || {
        smtp.mails()
            .iter()
            .any(|m| m.data.contains("rolled back, verified"))
    });

    // Mail: what people act on, to both recipients, in production only.
    let mails = smtp.mails();
    let subjects: Vec<String> = mails
        .iter()
        .map(|m| {
            // Long headers are folded onto continuation lines: unfold first.
            let head = m.data.split("\r\n\r\n").next().unwrap_or_default();
            head.replace("\r\n ", " ")
                .replace("\r\n\t", " ")
                .lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(mails.len(), 4, "{subjects:#?}");
    assert!(
        subjects[0].starts_with("[deploykit] web/production v1: succeeded"),
        "{subjects:#?}"
    );
    assert!(
        subjects[1].contains("v2: waiting for approval of step-1"),
        "{subjects:#?}"
    );
    assert!(
        subjects[2].contains("v2: rolling back to v1: aborted by test: not today"),
        "{subjects:#?}"
    );
    assert!(
        subjects[3].contains("v2: rolled back, verified"),
        "{subjects:#?}"
    );
    for m in &mails {
        assert_eq!(m.from, "deploykit@shop.example");
        assert_eq!(m.to, ["oncall@shop.example", "lead@shop.example"]);
    }

    // The webhook: every event, signed, each (deployment, entry) once.
    eventually(dir, "the webhook has v2's end", || {
        hooks.requests().iter().any(|r| {
            String::from_utf8_lossy(&r.body).contains("\"kind\":\"finished\"")
                && String::from_utf8_lossy(&r.body).contains("\"revision\":\"v2\"")
        })
    });
    let check = |requests: &[deploykit_testing::sinks::SinkRequest]| {
        let mut seen = std::collections::BTreeSet::new();
        for r in requests {
            let sig = r.header(WEBHOOK_SIGNATURE_HEADER).expect("signed");
            assert!(verify_webhook_signature(KEY.as_bytes(), &r.body, sig));
            let n: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            let key = (
                n["deployment"].as_str().unwrap().to_string(),
                n["seq"].as_u64().unwrap(),
            );
            assert!(seen.insert(key.clone()), "sent twice: {key:?}");
        }
        seen.len()
    };
    let before = check(&hooks.requests());
    assert!(
        hooks
            .requests()
            .iter()
            .any(|r| String::from_utf8_lossy(&r.body).contains("\"kind\":\"applied\"")),
        "every kind goes to the webhook"
    );
    // The chat channel is routed to staging: nothing of production reached it.
    assert!(chat.requests().is_empty(), "{:?}", chat.requests());

    // A daemon stopped (SIGTERM) and started again goes on from where it stood: nothing is sent
    // again. (A daemon killed between sending an event and saving its cursor sends that event
    // again when it starts: delivery is at least once, and receivers dedupe on
    // (deployment, seq).)
    daemon.terminate();
    let _daemon = spawn_daemon(dir, with_hook_vars(&daemon_args));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        check(&hooks.requests()),
        before,
        "sent again after a restart"
    );
    assert_eq!(smtp.mails().len(), 4);

    // `notify test` sends the newest event through a channel, whatever its route.
    let tested = with_hook_vars(&["notify", "test", "--channel", "chat", "-o", "json"])
        .output()
        .unwrap();
    let tested = json(&tested);
    assert_eq!(tested["channels"][0]["sent"], true, "{tested}");
    let chat_requests = chat.requests();
    assert_eq!(chat_requests.len(), 1);
    assert_eq!(chat_requests[0].path, "/services/T0/B0/secret");
    let text: serde_json::Value = serde_json::from_slice(&chat_requests[0].body).unwrap();
    let text = text["text"].as_str().unwrap();
    assert!(
        text.contains("*web/production v2: rolled back, verified"),
        "{text}"
    );
    let unknown = run(dir, &["notify", "test", "--channel", "pager"]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("known: chat, hooks, oncall"),
        "{unknown:?}"
    );
}

#[test]
fn bad_channels_are_refused_naming_file_line_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let base = CONFIG
        .replace("{APP}", APP)
        .replace("{CHAT}", "http://127.0.0.1:9/x");
    for (bad, field, says) in [
        (
            base.replace("{SMTP}", "127.0.0.1:25")
                .replace("events = [\"*\"]", "events = [\"rollback\"]"),
            "notifications.hooks.events[0]",
            "is not an event kind",
        ),
        (
            base.replace("{SMTP}", "nowhere"),
            "notifications.oncall.smtp",
            "is not host:port",
        ),
        (
            base.replace("{SMTP}", "127.0.0.1:25")
                .replace("\"lead@shop.example\"", "\"lead\""),
            "notifications.oncall.to[1]",
            "is not a mail address",
        ),
        (
            base.replace("{SMTP}", "127.0.0.1:25").replace(
                "environments = [\"staging\"]",
                "environments = [\"stagign\"]",
            ),
            "notifications.chat.environments[0]",
            "matches no environment",
        ),
        (
            base.replace("{SMTP}", "127.0.0.1:25")
                .replace("type = \"slack\"", "type = \"pager\""),
            "notifications.chat.type",
            "not one of slack, webhook, email",
        ),
    ] {
        std::fs::write(dir.join("deploykit.toml"), bad).unwrap();
        let out = run(dir, &["validate"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("deploykit.toml:") && err.contains(field) && err.contains(says),
            "{field}: {err}"
        );
    }
}
