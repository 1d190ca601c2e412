//! `[environments.<env>.backup]` as the backup agent reads it: repository and paths relative to
//! the file, command sources, the verify and drill schedules, retries and the alert webhook,
//! with defaults; and errors that name the file, line, column and key.

use std::path::PathBuf;
use std::time::Duration;

use deploykit_backup::BackupKind;
use deploykit_config::Config;
use deploykit_core::Error;

fn error(text: &str) -> String {
    match Config::from_toml_str("/srv/shop/deploykit.toml", text) {
        Err(Error::InvalidSpec { field, reason }) => format!("{field}: {reason}"),
        Err(other) => panic!("expected InvalidSpec, got {other}"),
        Ok(_) => panic!("expected an error loading\n{text}"),
    }
}

/// A file whose production environment's backup table has `backup` as its body (line 5 on).
fn with_backup(backup: &str) -> String {
    format!(
        "application = \"shop\"\n[environments.production]\nkind = \"production\"\n\
         [environments.production.backup]\nrotation = [\"full 0 2 * * SUN\", \"incremental 0 * * * *\"]\n{backup}\n"
    )
}

#[test]
fn every_agent_key_loads() {
    let config = Config::from_toml_str(
        "/srv/shop/deploykit.toml",
        &with_backup(
            r#"repository = "backups/production"
password_env = "SHOP_BACKUP_PASSWORD"
paths = ["data/uploads", "/var/lib/shop/media"]
commands = [{ name = "shop.dump", command = ["pg_dump", "--format=custom", "shop"] }]
retention = { keep_daily = 7 }
prune = true
rto = "30m"
rpo = "2h"
verify = { subsets = 10, full = "0 5 * * SAT" }
drill = { schedule = "0 6 * * SUN", scratch = "/var/tmp/drills" }
retry = { attempts = 5, backoff = "10s", max_backoff = "2m" }
alert_webhook = "https://hooks.example.com/backup""#,
        ),
    )
    .expect("loads");
    let job = config
        .backup_job("production")
        .unwrap()
        .expect("a job")
        .clone();
    assert_eq!(job.environment, "production");
    assert_eq!(
        job.repository,
        Some(PathBuf::from("/srv/shop/backups/production"))
    );
    assert_eq!(job.password_env, "SHOP_BACKUP_PASSWORD");
    assert_eq!(
        job.paths,
        vec![
            PathBuf::from("/srv/shop/data/uploads"),
            PathBuf::from("/var/lib/shop/media")
        ]
    );
    assert_eq!(job.commands.len(), 1);
    assert_eq!(job.policy.rotation[0].kind, BackupKind::Full);
    assert_eq!(job.policy.retention.keep_daily, Some(7));
    assert!(job.policy.prune);
    assert_eq!(job.policy.targets.rto, Duration::from_secs(1800));
    assert_eq!(job.verify.subsets, 10);
    assert_eq!(job.verify.full.as_deref(), Some("0 5 * * SAT"));
    assert_eq!(job.drill.cron.as_deref(), Some("0 6 * * SUN"));
    assert_eq!(job.drill.scratch, Some(PathBuf::from("/var/tmp/drills")));
    assert_eq!(job.retry.max_attempts(), 5);
    assert_eq!(job.retry.initial_backoff(), Duration::from_secs(10));
    assert_eq!(job.retry.max_backoff(), Duration::from_secs(120));
    assert_eq!(
        job.alert_webhook.as_deref(),
        Some("https://hooks.example.com/backup")
    );
    job.validate().expect("a valid job");
    // The policy is the job's.
    assert_eq!(
        config.backup_policy("production").unwrap(),
        Some(&job.policy)
    );
    assert_eq!(config.backup_jobs().count(), 1);
}

#[test]
fn defaults_and_off() {
    let config =
        Config::from_toml_str("deploykit.toml", &with_backup("paths = [\"data\"]")).unwrap();
    let job = config.backup_job("production").unwrap().unwrap();
    assert_eq!(job.repository, None, "the agent refuses a job without one");
    assert_eq!(job.password_env, "DEPLOYKIT_REPO_PASSWORD");
    assert_eq!(job.verify.subsets, 7);
    assert_eq!(job.verify.full.as_deref(), Some("0 3 * * SUN"));
    assert_eq!(job.drill.cron.as_deref(), Some("0 4 1 * *"));
    assert_eq!(job.retry.max_attempts(), 3);
    assert_eq!(job.paths, vec![PathBuf::from("data")]);
    let config = Config::from_toml_str(
        "deploykit.toml",
        &with_backup(
            "paths = [\"data\"]\nverify = { subsets = 0, full = \"off\" }\ndrill = { schedule = \"off\" }",
        ),
    )
    .unwrap();
    let job = config.backup_job("production").unwrap().unwrap();
    assert_eq!((job.verify.subsets, job.verify.full.as_deref()), (0, None));
    assert_eq!(job.drill.cron, None);
    // An environment without a backup table has no job; an unknown one is an error.
    assert!(config.backup_job("nowhere").is_err());
}

#[test]
fn bad_agent_keys_are_named_where_they_are() {
    let cases = [
        (
            "verify = { full = \"weekly\" }",
            "/srv/shop/deploykit.toml:6:19: environments.production.backup.verify.full: invalid environments.production.backup.verify.full: \"weekly\" is not a cron expression",
        ),
        (
            "drill = { schedule = \"0 4 32 * *\" }",
            "/srv/shop/deploykit.toml:6:22: environments.production.backup.drill.schedule:",
        ),
        (
            "paths = [\"data\", \"other/data\"]",
            "/srv/shop/deploykit.toml:6:18: environments.production.backup.paths: \"other/data\": every path needs a distinct last component",
        ),
        (
            "commands = [{ name = \"dump\", command = [] }]",
            "/srv/shop/deploykit.toml:6:13: environments.production.backup.commands[0]: invalid backup.source.command: a command source needs a program",
        ),
        (
            "paths = [\"dump\"]\ncommands = [{ name = \"dump\", command = [\"true\"] }]",
            "/srv/shop/deploykit.toml:7:13: environments.production.backup.commands[0].name: \"dump\" is already the name of a path or command",
        ),
        (
            "alert_webhook = \"hooks.example.com\"",
            "/srv/shop/deploykit.toml:6:17: environments.production.backup.alert_webhook: \"hooks.example.com\" is not an http:// or https:// URL",
        ),
        (
            "retry = { attempts = 0 }",
            "/srv/shop/deploykit.toml:6:9: environments.production.backup.retry: invalid retry.max_attempts",
        ),
        (
            "retry = { backoff = \"soon\" }",
            "environments.production.backup.retry.backoff: \"soon\" is not a duration",
        ),
        (
            "verify = { fulll = \"0 3 * * SUN\" }",
            "deploykit.toml:6:12: environments.production.backup.verify.fulll: unknown field `fulll`, expected `subsets` or `full`",
        ),
        (
            "rotation = [\"full 0 2 * * SUN\", \"incremental every hour\"]",
            "environments.production.backup.rotation[1]",
        ),
    ];
    for (body, expected) in cases {
        // A second `rotation` replaces the one `with_backup` writes.
        let text = if body.starts_with("rotation") {
            with_backup("").replace(
                "rotation = [\"full 0 2 * * SUN\", \"incremental 0 * * * *\"]",
                body,
            )
        } else {
            with_backup(body)
        };
        let e = error(&text);
        assert!(
            e.contains(expected),
            "expected {expected:?} in\n{e}\nfor\n{text}"
        );
    }
}
