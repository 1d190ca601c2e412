//! `[environments.<env>.standby]`: the standby environment, lag and step limits, the
//! assessment's probes, the following database and step hooks, with defaults; and errors that
//! name the file, line, column and key.

use std::path::PathBuf;
use std::time::Duration;

use deploykit_config::{Config, ProbeCheck};
use deploykit_core::Error;

const FILE: &str = "/srv/shop/deploykit.toml";

/// A file whose production environment's standby table has `standby` as its body (line 5 on).
fn with_standby(standby: &str) -> String {
    format!(
        "application = \"shop\"\n[environments.production]\nkind = \"production\"\n\
         [environments.production.standby]\n{standby}\n\
         [environments.production-dr]\nkind = \"production\"\n"
    )
}

fn error(text: &str) -> String {
    match Config::from_toml_str(FILE, text) {
        Err(Error::InvalidSpec { field, reason }) => format!("{field}: {reason}"),
        Err(other) => panic!("expected InvalidSpec, got {other}"),
        Ok(_) => panic!("expected an error loading\n{text}"),
    }
}

#[test]
fn every_key_loads_and_defaults_apply() {
    let config = Config::from_toml_str(
        FILE,
        &with_standby(
            r#"environment = "production-dr"
max_lag = "2s"
step_timeout = "30s"
automatic = true
alert_webhook = "https://alerts.example.com/hook"
assessment = { quorum = 2, grace = "5s", interval = "500ms", probes = [
  { name = "http", url = "http://127.0.0.1:8080/healthz", timeout = "300ms" },
  { name = "postgres", command = ["pg_isready", "-p", "5432"] },
] }
database = { repository = "backups/pg", primary_pgdata = "/srv/pg/main", standby_connection = "host=127.0.0.1 port=5433" }
hooks = { switch_traffic = ["sh", "-c", "lbctl switch dr"], verify = ["./check-orders"] }"#,
        ),
    )
    .unwrap();
    let s = config.standby("production").unwrap().expect("a standby");
    assert_eq!(s.environment, "production-dr");
    assert_eq!(s.max_lag, Duration::from_secs(2));
    assert_eq!(s.step_timeout, Duration::from_secs(30));
    assert!(s.automatic);
    assert_eq!(
        s.alert_webhook.as_deref(),
        Some("https://alerts.example.com/hook")
    );
    assert_eq!(s.assessment.quorum, 2);
    assert_eq!(s.assessment.grace, Duration::from_secs(5));
    assert_eq!(s.assessment.interval, Duration::from_millis(500));
    assert_eq!(
        s.assessment.probes[0].check,
        ProbeCheck::Http("http://127.0.0.1:8080/healthz".into())
    );
    assert_eq!(s.assessment.probes[0].timeout, Duration::from_millis(300));
    assert_eq!(
        s.assessment.probes[1].check,
        ProbeCheck::Command(vec!["pg_isready".into(), "-p".into(), "5432".into()])
    );
    assert_eq!(s.assessment.probes[1].timeout, Duration::from_secs(1));
    let db = s.database.as_ref().unwrap();
    assert_eq!(
        db.repository,
        PathBuf::from("/srv/shop/backups/pg"),
        "relative to the file"
    );
    assert_eq!(db.primary_pgdata, Some(PathBuf::from("/srv/pg/main")));
    assert_eq!(s.hooks["verify"], vec!["./check-orders".to_string()]);
    assert_eq!(config.standby("production-dr").unwrap(), None);
    assert!(config.standby("nowhere").is_err());

    let minimal =
        Config::from_toml_str(FILE, &with_standby("environment = \"production-dr\"")).unwrap();
    let s = minimal.standby("production").unwrap().unwrap();
    assert_eq!(s.max_lag, Duration::from_secs(5));
    assert_eq!(s.step_timeout, Duration::from_secs(60));
    assert!(!s.automatic && s.assessment.probes.is_empty() && s.database.is_none());
    assert_eq!(s.alert_webhook, None);
    assert_eq!(minimal.failover_journal(), None);
    let shared = Config::from_toml_str(
        FILE,
        "application = \"shop\"\n[failover]\njournal = \"s3://acme-dr/shop/\"\n",
    )
    .unwrap();
    let journal = shared.failover_journal().unwrap();
    assert_eq!(
        (journal.bucket.as_str(), journal.prefix.as_str()),
        ("acme-dr", "shop")
    );
}

#[test]
fn mistakes_are_named_with_their_place() {
    let cases = [
        (
            "environment = \"production\"",
            "standby.environment: an environment cannot be its own standby",
        ),
        (
            "environment = \"nowhere\"",
            "standby.environment: \"nowhere\" is not a defined environment",
        ),
        (
            "environment = \"production-dr\"\nautomatic = true",
            "standby.assessment.probes: `automatic = true` needs probes",
        ),
        (
            "environment = \"production-dr\"\nstep_timeout = \"0s\"",
            "standby.step_timeout: must be longer than zero",
        ),
        (
            "environment = \"production-dr\"\nmax_lag = \"soon\"",
            "standby.max_lag: \"soon\" is not a duration",
        ),
        (
            "environment = \"production-dr\"\nassessment = { quorum = 3, probes = [{ name = \"a\", url = \"http://x/\" }] }",
            "standby.assessment.quorum: 3 probes must fail and 1 are configured",
        ),
        (
            "environment = \"production-dr\"\nassessment = { probes = [{ name = \"a\", url = \"http://x/\" }, { name = \"a\", command = [\"true\"] }] }",
            "standby.assessment.probes[1].name: \"a\": every probe needs a name of its own",
        ),
        (
            "environment = \"production-dr\"\nassessment = { probes = [{ name = \"a\" }] }",
            "standby.assessment.probes[0]: needs exactly one of `url`",
        ),
        (
            "environment = \"production-dr\"\nassessment = { probes = [{ name = \"a\", url = \"ftp://x\" }] }",
            "standby.assessment.probes[0].url: \"ftp://x\" is not an http:// URL",
        ),
        (
            "environment = \"production-dr\"\nhooks = { promote = [\"x\"] }",
            "standby.hooks.promote: \"promote\" is not a step (one of fence, promote_database",
        ),
        (
            "environment = \"production-dr\"\nhooks = { fence = [] }",
            "standby.hooks.fence: needs a program to run",
        ),
        (
            "environment = \"production-dr\"\ndatabase = { repository = \"r\", standby_connection = \" \" }",
            "standby.database.standby_connection: must not be empty",
        ),
        (
            "environment = \"production-dr\"\nalert_webhook = \"alerts.example.com\"",
            "standby.alert_webhook: \"alerts.example.com\" is not an http:// or https:// URL",
        ),
        (
            "environment = \"production-dr\"\n[failover]\njournal = \"/srv/journal\"",
            "failover.journal: \"/srv/journal\" is not an S3 location: expected s3://bucket/prefix",
        ),
        (
            "environment = \"production-dr\"\n[failover]\njournal = \"s3:///x\"",
            "failover.journal: \"s3:///x\" is not an S3 location",
        ),
        (
            "environment = \"production-dr\"\nfailback = true",
            "unknown field `failback`",
        ),
    ];
    for (body, want) in cases {
        let e = error(&with_standby(body));
        assert!(e.starts_with("/srv/shop/deploykit.toml:"), "{e}");
        assert!(e.contains(want), "{body}\n→ {e}\nwanted {want}");
    }
}

/// `warm` keeps the standby's services in step on a daemon of its own: it needs the standby's
/// `local_state`, a different one from the primary's, and no more instances than the standby
/// runs when it takes over.
#[test]
fn a_warm_standby_needs_a_daemon_of_its_own() {
    let file = |primary_state: &str, dr_state: &str, warm: &str| {
        format!(
            "application = \"shop\"\n[environments.production]\nkind = \"production\"\n\
             {primary_state}\n\
             [environments.production.standby]\nenvironment = \"production-dr\"\n{warm}\n\
             [environments.production-dr]\nkind = \"production\"\nreplicas = 3\n{dr_state}\n"
        )
    };
    let config =
        Config::from_toml_str(FILE, &file("", "local_state = \"dr\"", "warm = 1")).unwrap();
    assert_eq!(config.standby("production").unwrap().unwrap().warm, Some(1));
    assert_eq!(
        config.local_state("production-dr").unwrap(),
        Some(std::path::Path::new("/srv/shop/dr"))
    );
    assert_eq!(config.local_state("production").unwrap(), None);
    // Unset: the services are the hooks' business.
    let config = Config::from_toml_str(FILE, &file("", "", "")).unwrap();
    assert_eq!(config.standby("production").unwrap().unwrap().warm, None);

    let no_daemon = error(&file("", "", "warm = 1"));
    assert!(
        no_daemon.starts_with("/srv/shop/deploykit.toml:7:")
            && no_daemon.contains("environments.production.standby.warm")
            && no_daemon.contains("set environments.production-dr.local_state"),
        "{no_daemon}"
    );
    let same = error(&file(
        "local_state = \"site\"",
        "local_state = \"site\"",
        "warm = 0",
    ));
    assert!(same.contains("a local daemon of its own"), "{same}");
    let too_many = error(&file("", "local_state = \"dr\"", "warm = 4"));
    assert!(
        too_many.contains("4 warm instances is more than the 3 replicas production-dr runs"),
        "{too_many}"
    );
}

/// `[environments.<env>.backup] rehearsal.schedule`: the backup agent rehearses the failover
/// with this binary's `failover rehearse` on the schedule; off unless set, and only where the
/// standby has a database to restore.
#[test]
fn a_scheduled_rehearsal_runs_failover_rehearse_and_needs_a_standby_database() {
    let file = |database: &str, rehearsal: &str| {
        format!(
            "application = \"shop\"\n[environments.production]\nkind = \"production\"\n\
             [environments.production.backup]\nrepository = \"backups\"\npaths = [\"data\"]\n\
             rotation = [\"full 0 2 * * *\"]\n{rehearsal}\n\
             [environments.production.standby]\nenvironment = \"production-dr\"\n{database}\n\
             [environments.production-dr]\nkind = \"production\"\n"
        )
    };
    let database =
        "database = { repository = \"wal\", standby_connection = \"host=/run port=5433\" }";
    let config = Config::from_toml_str(
        FILE,
        &file(database, "rehearsal = { schedule = \"0 5 * * MON\" }"),
    )
    .unwrap();
    let job = config.backup_job("production").unwrap().unwrap();
    assert_eq!(job.rehearsal.cron.as_deref(), Some("0 5 * * MON"));
    assert_eq!(
        job.rehearsal.command,
        [
            "deploykit",
            "--config",
            FILE,
            "-o",
            "json",
            "failover",
            "rehearse",
            "--env",
            "production"
        ]
    );
    // Off unless asked for.
    let config = Config::from_toml_str(FILE, &file(database, "")).unwrap();
    assert_eq!(
        config
            .backup_job("production")
            .unwrap()
            .unwrap()
            .rehearsal
            .cron,
        None
    );
    // Nothing to rehearse with: said where.
    let e = error(&file("", "rehearsal = { schedule = \"0 5 * * MON\" }"));
    assert!(
        e.contains("environments.production.backup.rehearsal.schedule")
            && e.contains("has no database"),
        "{e}"
    );
    let e = error(&file(database, "rehearsal = { schedule = \"weekly\" }"));
    assert!(
        e.contains("environments.production.backup.rehearsal.schedule"),
        "{e}"
    );
}
