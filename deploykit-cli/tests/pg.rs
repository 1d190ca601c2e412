//! `deploykit pg` end to end on a real PostgreSQL (skipped, saying why, where its programs are
//! not installed): a cluster archiving through `deploykit pg wal-push` (`archive_timeout = 1`),
//! base backups with `deploykit pg backup` while it runs, restores with `deploykit pg restore`
//! to a time between two commits and to the end of the archive, refusals (a target before
//! the oldest base backup, a missing segment, a damaged one), wal-fetch's and wal-push's exit
//! codes, and retention.
//!
//! As root (CI), PostgreSQL and every command that writes to the repository run as the
//! `postgres` user, as on a server; `pg restore` runs as root and starts PostgreSQL as
//! `postgres`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use deploykit_postgres::{Server, ServerOptions, WalSegment, chown_tree, free_port, simple_query};
use serde_json::{Value, json};

mod pg_rig;

use pg_rig::*;

impl Rig {
    /// `pg restore` into `to` from `repo` with `extra` arguments, as this test's user.
    fn restore(&self, repo: &Path, to: &str, extra: &[&str]) -> Output {
        let to = self.path(to);
        let mut args = vec![
            "-o",
            "json",
            "pg",
            "restore",
            "--repo",
            s(repo),
            "--to",
            s(&to),
        ];
        if !extra.contains(&"--verify-query") {
            args.extend(["--verify-query", ROWS]);
        }
        args.extend(extra);
        self.dk_here(&args)
    }

    /// A copy of the repository (owners kept).
    fn copy_repo(&self, name: &str) -> PathBuf {
        let copy = self.path(name);
        let status = Command::new("cp")
            .arg("-a")
            .arg(&self.repo)
            .arg(&copy)
            .status()
            .unwrap();
        assert!(status.success());
        copy
    }
}

fn next_segment(name: &str, by: u64) -> String {
    let s = WalSegment::parse(name, MIB16).unwrap();
    WalSegment {
        timeline: s.timeline,
        number: s.number + by,
    }
    .file_name(MIB16)
}

fn rows(report: &Value) -> Value {
    report["rows"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_in_time_recovery_to_a_time_to_the_end_and_after_retention() {
    let Some(bins) = bins() else { return };
    let rig = Rig::start(&bins).await;
    let (_, lsn) = rig.history().await;

    // Between the commits of rows 5 and 6: exactly rows 1–5.
    let target = rig
        .one(
            "SELECT to_char((a.at + (b.at - a.at) / 2) AT TIME ZONE 'UTC', \
             'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM events a, events b \
             WHERE a.id = 5 AND b.id = 6",
        )
        .await;
    let state = format!("{ROWS_AND_CHURN} FROM events");
    let churn = rig.sql(&state).await[0][1..].to_vec();
    let out = rig.restore(
        &rig.repo,
        "at-time",
        &["--time", &target, "--verify-query", &state],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Exactly the rows committed before the target, and the tables the workload left while
    // the base backup read the data directory.
    assert_eq!(
        rows(&report),
        json!([[Some("1,2,3,4,5"), churn[0].as_deref(), churn[1].as_deref()]]),
        "{report}"
    );
    assert_eq!(report["timeline"], 2, "promoted onto a new timeline");
    let restored = rig.path("at-time");
    assert!(restored.join("PG_VERSION").is_file());
    assert!(!restored.join("recovery.signal").exists(), "recovery ended");
    assert!(
        !restored.join("postmaster.pid").exists(),
        "and the server stopped"
    );

    // The end of the archive: every row.
    let out = rig.restore(&rig.repo, "latest", &["--latest"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows(&report), json!([["1,2,3,4,5,6,7,8"]]), "{report}");
    // Recovered as a standby promoted at once: promoted with every archived row, no signal
    // file left behind.
    assert_ne!(
        report["timeline"], 1,
        "promoted onto a new timeline: {report}"
    );
    for signal in ["standby.signal", "recovery.signal"] {
        assert!(!rig.path("latest").join(signal).exists(), "{signal}");
    }

    // Before the oldest base backup: refused, nothing restored.
    let before = rig.at(2).await;
    let out = rig.restore(&rig.repo, "too-early", &["--time", &before]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is before the oldest base backup is consistent"),
        "{}",
        stderr(&out)
    );
    assert!(!rig.path("too-early").exists());
    // An LSN target: the position just after row 8.
    let out = rig.restore(&rig.repo, "at-lsn", &["--lsn", &lsn]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows(&report), json!([["1,2,3,4,5,6,7,8"]]), "{report}");
    // A restore point before a second base backup (this one with pg_basebackup): that backup
    // cannot reach it, so the restore falls back to the first (read in place).
    rig.insert(9).await;
    rig.sql("SELECT pg_create_restore_point('after-9')").await;
    let conn = format!("host=127.0.0.1 port={} user=postgres", rig.port);
    let second = rig.json(
        false,
        &[
            "pg",
            "backup",
            "--repo",
            s(&rig.repo),
            "--pgdata-connection",
            &conn,
        ],
    );
    rig.insert(10).await;
    rig.archive_everything().await;
    let out = rig.restore(&rig.repo, "at-name", &["--name", "after-9"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows(&report), json!([["1,2,3,4,5,6,7,8,9"]]), "{report}");
    assert_ne!(report["snapshot"], second["snapshot"], "{report}");
    // Retention: keep only the second base backup.
    let before_prune = rig.json(false, &["pg", "list", "--repo", s(&rig.repo)]);
    assert_eq!(before_prune["base_backups"].as_array().unwrap().len(), 2);
    let pruned = rig.json(
        false,
        &["pg", "prune", "--repo", s(&rig.repo), "--keep", "1"],
    );
    assert_eq!(
        pruned["backups_forgotten"].as_array().unwrap().len(),
        1,
        "{pruned}"
    );
    assert!(pruned["wal_deleted"].as_u64().unwrap() > 0, "{pruned}");
    let after = rig.json(false, &["pg", "list", "--repo", s(&rig.repo)]);
    assert_eq!(after["base_backups"][0]["snapshot"], second["snapshot"]);
    assert_eq!(after["wal"][0]["first"], second["wal_start"], "{after}");
    assert_eq!(after["wal"][0]["first_gap"], Value::Null);
    // What is left (the pg_basebackup one) restores to the end, and an LSN before the kept
    // backup is refused.
    let out = rig.restore(&rig.repo, "after-prune", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows(&report), json!([["1,2,3,4,5,6,7,8,9,10"]]), "{report}");
    let out = rig.restore(&rig.repo, "lsn", &["--lsn", &lsn]);
    assert!(
        stderr(&out).contains("is before the oldest base backup"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_refuses_gaps_stops_at_damage_and_the_archive_commands_say_why() {
    let Some(bins) = bins() else { return };
    let rig = Rig::start(&bins).await;
    let (start, _) = rig.history().await;
    let listed = rig.json(false, &["pg", "list", "--repo", s(&rig.repo)]);
    let last = listed["wal"][0]["last"].as_str().unwrap().to_string();
    let middle = next_segment(&start, 1);
    assert!(
        last > next_segment(&start, 1),
        "segments after the middle one: {listed}"
    );

    // --pgdata must be the server's own data directory: a copy of it is refused.
    let copy = rig.path("data-copy");
    let status = Command::new("cp")
        .arg("-a")
        .arg(rig.path("data"))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    let conn = format!("host=127.0.0.1 port={} user=postgres", rig.port);
    let out = rig.dk(&[
        "pg",
        "backup",
        "--repo",
        s(&rig.repo),
        "--pgdata-connection",
        &conn,
        "--pgdata",
        s(&copy),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("is not the data directory of the server connected to"),
        "{err}"
    );
    let relisted = rig.json(false, &["pg", "list", "--repo", s(&rig.repo)]);
    assert_eq!(
        relisted["base_backups"], listed["base_backups"],
        "no snapshot"
    );

    // A missing segment between the backup and the newest: refused before recovery, named.
    let gap = rig.copy_repo("repo-gap");
    std::fs::remove_file(gap.join("named/wal").join(&middle)).unwrap();
    let out = rig.restore(&gap, "gap", &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("WAL segment {middle}")) && err.contains("not found"),
        "{err}"
    );
    assert!(
        !rig.path("gap").exists(),
        "refused before restoring anything"
    );

    // A damaged segment: recovery stops there (PostgreSQL exits) and the error names it.
    let bad = rig.copy_repo("repo-bad");
    let record = bad.join("named/wal").join(&middle);
    let mut bytes = std::fs::read(&record).unwrap();
    bytes[40] ^= 0xff;
    std::fs::write(&record, bytes).unwrap();
    let out = rig.restore(&bad, "bad", &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&format!("wal-fetch {middle} failed")), "{err}");
    assert!(
        err.contains(&format!("corrupt named object wal/{middle}")),
        "{err}"
    );

    // wal-fetch: 0 with the file, 1 when not archived, 128 when it cannot deliver it.
    let fetched = rig.path("fetched");
    let out = rig.dk(&[
        "pg",
        "wal-fetch",
        &middle,
        s(&fetched),
        "--repo",
        s(&rig.repo),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::metadata(&fetched).unwrap().len(), MIB16);
    let absent = next_segment(&last, 100);
    let out = rig.dk(&[
        "pg",
        "wal-fetch",
        &absent,
        s(&fetched),
        "--repo",
        s(&rig.repo),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("{absent}: not in the archive")));
    let out = rig.dk(&["pg", "wal-fetch", &middle, s(&fetched), "--repo", s(&bad)]);
    assert_eq!(out.status.code(), Some(128), "{}", stderr(&out));
    assert!(stderr(&out).contains(&middle));
    let gone = rig.path("unmounted");
    let out = rig.dk(&["pg", "wal-fetch", &middle, s(&fetched), "--repo", s(&gone)]);
    assert_eq!(
        out.status.code(),
        Some(128),
        "an unreachable archive is not its end"
    );
    assert_eq!(
        std::fs::metadata(&fetched).unwrap().len(),
        MIB16,
        "left as it was"
    );

    // wal-push of an archived segment again: a no-op; with other content: refused.
    let again = rig.path("again");
    std::fs::create_dir_all(&again).unwrap();
    chown_tree(&again, rig.run_as.as_ref()).unwrap();
    let copy = again.join(&middle);
    std::fs::copy(&fetched, &copy).unwrap();
    chown_tree(&copy, rig.run_as.as_ref()).unwrap();
    let out = rig.dk(&["pg", "wal-push", s(&copy), "--repo", s(&rig.repo)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut changed = std::fs::read(&copy).unwrap();
    changed[MIB16 as usize - 1] ^= 1;
    std::fs::write(&copy, changed).unwrap();
    let out = rig.dk(&["pg", "wal-push", s(&copy), "--repo", s(&rig.repo)]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&format!("archive {middle} failed")), "{err}");
    assert!(err.contains("with other content"), "{err}");
    // A target outage fails the push (PostgreSQL keeps the segment and retries).
    let out = rig.dk(&["pg", "wal-push", s(&copy), "--repo", s(&gone)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("backup repository at"),
        "{}",
        stderr(&out)
    );

    // The primary archived every segment without a failure.
    let failed = rig.one("SELECT failed_count FROM pg_stat_archiver").await;
    assert_eq!(
        failed,
        "0",
        "{}",
        std::fs::read_to_string(rig.path("primary.log")).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_fetch_prefetches_ahead_without_hiding_damage_or_remembering_gaps() {
    let Some(bins) = bins() else { return };
    let rig = Rig::start(&bins).await;
    let (start, _) = rig.history().await;
    // Many segments after the backup.
    for id in 9..=28 {
        rig.insert(id).await;
        rig.sql("SELECT pg_switch_wal()").await;
    }
    rig.archive_everything().await;
    let all: Vec<String> = (1..=28).map(|i| i.to_string()).collect();

    // Recovery over them all with prefetching (3 ahead); the spool is gone after.
    let out = rig.restore(&rig.repo, "prefetched", &["--latest", "--prefetch", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows(&report), json!([[all.join(",")]]), "{report}");
    let spool = rig.path("prefetched/pg_wal/.deploykit-prefetch");
    assert!(!spool.exists(), "the spool is removed after recovery");
    // Fetched while the files were restored: never more than the window, and the directory
    // they waited in beside the new data directory is gone.
    let early = report["prefetched_before_start"].as_u64().unwrap();
    assert!(early <= 3, "{report}");
    let beside: Vec<_> = std::fs::read_dir(rig.path("."))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("deploykit-wal") || n.contains("deploykit-restore"))
        .collect();
    assert!(beside.is_empty(), "{beside:?}");

    // One fetch starts a spooler that fetches the next segments in the background; the next
    // fetch takes its segment from the spool without opening the repository (here: one that
    // is not there).
    let fetch_dir = rig.path("fetch");
    std::fs::create_dir_all(&fetch_dir).unwrap();
    chown_tree(&fetch_dir, rig.run_as.as_ref()).unwrap();
    let dest = fetch_dir.join("RECOVERYXLOG");
    let spool = fetch_dir.join(".deploykit-prefetch");
    let fetch = |name: &str, repo: &Path, prefetch: &str| {
        rig.dk(&[
            "pg",
            "wal-fetch",
            name,
            s(&dest),
            "--repo",
            s(repo),
            "--prefetch",
            prefetch,
        ])
    };
    // The segments spooled, once the background spooler a fetch may have started is done.
    let spooled = || -> Vec<String> {
        if let Ok(lock) = std::fs::File::open(spool.join(".lock")) {
            lock.lock().unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(&spool)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    let out = fetch(&start, &rig.repo, "4");
    assert!(out.status.success(), "{}", stderr(&out));
    let ahead: Vec<String> = (1..=4).map(|i| next_segment(&start, i)).collect();
    assert_eq!(spooled(), ahead);
    let gone = rig.path("unmounted");
    let out = fetch(&ahead[0], &gone, "4");
    assert!(out.status.success(), "{}", stderr(&out));
    let archived = std::fs::read(rig.repo.join("named/wal").join(&ahead[0]));
    assert!(archived.is_ok(), "the segment is archived");
    assert_eq!(std::fs::metadata(&dest).unwrap().len(), MIB16);
    assert_eq!(spooled(), ahead[1..], "taken from the spool");
    // Without prefetching the spool is not used: the repository must be there.
    let out = fetch(&ahead[1], &gone, "0");
    assert_eq!(out.status.code(), Some(128), "{}", stderr(&out));
    // Asking for a later segment removes the ones recovery has passed.
    let out = fetch(&ahead[3], &rig.repo, "4");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(spooled().iter().all(|n| n > &ahead[3]), "{:?}", spooled());

    // A damaged segment in the middle of a batch is not spooled; asking for it fails with
    // its name (128), the segments around it are delivered.
    let bad = rig.copy_repo("repo-bad");
    let damaged = next_segment(&start, 2);
    let record = bad.join("named/wal").join(&damaged);
    let mut bytes = std::fs::read(&record).unwrap();
    bytes[40] ^= 0xff;
    std::fs::write(&record, bytes).unwrap();
    spooled();
    std::fs::remove_dir_all(&spool).unwrap();
    let out = fetch(&start, &bad, "4");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!spooled().contains(&damaged), "{:?}", spooled());
    assert!(
        spooled().contains(&next_segment(&start, 3)),
        "{:?}",
        spooled()
    );
    let out = fetch(&next_segment(&start, 1), &bad, "4");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = fetch(&damaged, &bad, "4");
    assert_eq!(out.status.code(), Some(128), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("wal-fetch {damaged} failed")),
        "{err}"
    );
    // And recovery stops there, naming it (the restore's own spooler stopped at it too,
    // before PostgreSQL started, and left nothing beside the data directory).
    let out = rig.restore(&bad, "bad", &["--prefetch", "4"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("wal-fetch {damaged} failed")),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(rig.path("."))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("deploykit-wal"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // The newest segment: nothing after it is spooled; once the next one is archived, a
    // fetch finds it (nothing remembers it was missing).
    spooled();
    std::fs::remove_dir_all(&spool).unwrap();
    let listed = rig.json(false, &["pg", "list", "--repo", s(&rig.repo)]);
    let last = listed["wal"][0]["last"].as_str().unwrap().to_string();
    let out = fetch(&last, &rig.repo, "4");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(spooled(), Vec::<String>::new());
    let following = next_segment(&last, 1);
    let out = fetch(&following, &rig.repo, "4");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    rig.insert(29).await;
    rig.archive_everything().await;
    let out = fetch(&following, &rig.repo, "4");
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A standby seeded with `pg standby` follows the archive and serves reads; when the primary
/// is lost it is fenced (stopped, and read-only if started again) and the standby promoted
/// with every archived commit; the new primary archives its own timeline into the same
/// repository.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_follows_the_archive_and_takes_over_from_a_fenced_primary() {
    let Some(bins) = bins() else { return };
    let mut rig = Rig::start(&bins).await;
    rig.history().await;
    let standby_dir = rig.path("standby");
    let seeded = rig.json(
        true,
        &[
            "pg",
            "standby",
            "--repo",
            s(&rig.repo),
            "--to",
            s(&standby_dir),
            "--poll-ms",
            "200",
        ],
    );
    assert!(seeded["snapshot"].is_string(), "{seeded}");
    assert!(standby_dir.join("standby.signal").is_file());
    // Seeding again into the same directory is refused: it is not empty.
    let again = rig.dk_here(&[
        "pg",
        "standby",
        "--repo",
        s(&rig.repo),
        "--to",
        s(&standby_dir),
    ]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("is not empty"),
        "{}",
        stderr(&again)
    );

    let (dir, run_as, key_file) = (rig.path(""), rig.run_as.clone(), rig.key_file.clone());
    let options = move |name: &str| {
        ServerOptions::builder()
            .port(free_port().unwrap())
            .socket_dir(dir.clone())
            .run_as(run_as.clone())
            .env(vec![(
                "DEPLOYKIT_REPO_KEY_FILE".into(),
                key_file.display().to_string(),
            )])
            .user("postgres")
            .log_file(dir.join(format!("{name}.log")))
            .build()
    };
    let standby = Server::start(&bins, &standby_dir, options("standby"))
        .await
        .unwrap();
    let repo = deploykit_backup::Repository::open(
        std::sync::Arc::new(deploykit_backup::LocalTarget::new(&rig.repo).unwrap()),
        &deploykit_backup::RepoKey::from_file(&rig.key_file).unwrap(),
    )
    .await
    .unwrap();
    // It follows: rows committed on the primary appear on the standby once archived.
    for id in 9..=10 {
        rig.insert(id).await;
    }
    rig.archive_everything().await;
    let want = "1,2,3,4,5,6,7,8,9,10";
    let deadline = Instant::now() + Duration::from_secs(60);
    while rows_of(&standby).await.as_deref() != Some(want) {
        assert!(
            Instant::now() < deadline,
            "the standby did not follow: {:?}\n{}",
            rows_of(&standby).await,
            standby.log_excerpt()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let standby_db = standby.connect().await.unwrap();
    let status = deploykit_postgres::standby_status(&standby_db)
        .await
        .unwrap();
    assert!(status.in_recovery, "{status:?}");
    assert_eq!(status.timeline, 1, "{status:?}");
    assert!(status.last_replayed_commit.is_some(), "{status:?}");
    let lag = deploykit_postgres::standby_lag(&repo, &status, MIB16)
        .await
        .unwrap();
    assert!(lag.segments <= 1, "{lag:?}");
    // A standby takes no writes.
    let refused = standby.query("INSERT INTO events (id) VALUES (100)").await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.chain().contains("read-only")),
        "{refused:?}"
    );

    // The primary is lost after one more archived commit: fenced, then the standby promoted.
    rig.insert(11).await;
    rig.archive_everything().await;
    let primary_dir = rig.path("data");
    let fenced = rig.json(true, &["pg", "fence", "--pgdata", s(&primary_dir)]);
    assert!(fenced["stopped_pid"].is_number(), "{fenced}");
    assert!(!rig.server.is_running(), "the primary was stopped");
    let promotion = deploykit_postgres::promote_standby(&standby_db, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(promotion.timeline, 2, "{promotion:?}");
    assert_eq!(
        rows_of(&standby).await.as_deref(),
        Some("1,2,3,4,5,6,7,8,9,10,11"),
        "every archived commit"
    );
    assert!(
        !deploykit_postgres::standby_status(&standby_db)
            .await
            .unwrap()
            .in_recovery
    );
    standby
        .query("INSERT INTO events (id) VALUES (12)")
        .await
        .expect("the promoted standby takes writes");
    // Asked again (a resumed failover), promotion reports where it stands.
    let again = deploykit_postgres::promote_standby(&standby_db, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(again.timeline, 2);
    // The new primary archives its timeline into the same repository.
    standby.query("SELECT pg_switch_wal()").await.unwrap();
    let history = rig.repo.join("named/wal/00000002.history");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !history.exists() {
        assert!(Instant::now() < deadline, "{}", standby.log_excerpt());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The fenced primary, started again (by a supervisor, by hand), is a standby: no write
    // reaches it, so no write can fork the data.
    let restarted = Server::start(&bins, &primary_dir, options("restarted"))
        .await
        .unwrap();
    let refused = restarted.query("INSERT INTO events (id) VALUES (13)").await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.chain().contains("read-only")),
        "{refused:?}"
    );
    // Fencing a directory that is not a data directory is refused by name.
    let out = rig.dk_here(&["pg", "fence", "--pgdata", s(&rig.repo)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a PostgreSQL data directory"),
        "{}",
        stderr(&out)
    );
    restarted.stop().await.unwrap();
    standby.stop().await.unwrap();
}

/// The start of the failover tests' deploykit.toml: a service, production and its standby
/// environment production-dr.
const APP_PREAMBLE: &str = r#"application = "shop"
[services.web]
command = ["true"]
port = 8080
[environments.production]
kind = "production"
[environments.production-dr]
kind = "production""#;

/// `deploykit failover run` on a configured standby database: assessed (its lag read from the
/// archive), the primary fenced and stopped, the standby promoted with every archived commit,
/// the traffic hook run with the failover's variables, verified, reported (RTO, RPO) and
/// audited; `failover list` and `failover report` read it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploykit_failover_promotes_the_standby_database_and_reports() {
    let Some(bins) = bins() else { return };
    let mut rig = Rig::start(&bins).await;
    rig.history().await;
    let (standby_dir, standby, port) = rig.follow(&bins).await;
    rig.insert(9).await;
    rig.archive_everything().await;
    let sink = deploykit_testing::sinks::HttpSink::start().await.unwrap();
    let app = rig.path("app");
    std::fs::create_dir_all(&app).unwrap();
    let config = app.join("deploykit.toml");
    std::fs::write(
        &config,
        format!(
            r#"{APP_PREAMBLE}
[notifications.ops]
type = "webhook"
url = "{hook}"
[environments.production.standby]
environment = "production-dr"
max_lag = "1h"
step_timeout = "60s"
database = {{ repository = "{repo}", primary_pgdata = "{data}", standby_connection = "host={sock} port={port} user=postgres" }}
hooks = {{ switch_traffic = ["sh", "-c", "echo $DEPLOYKIT_FAILOVER_FROM $DEPLOYKIT_FAILOVER_TO > switched; echo front door moved"] }}
"#,
            repo = rig.repo.display(),
            data = rig.path("data").display(),
            sock = rig.path("").display(),
            hook = sink.url("/ops"),
        ),
    )
    .unwrap();
    let cli = |args: &[&str]| {
        let mut all = vec!["--config", s(&config), "-o", "json"];
        all.extend(args);
        run(&rig.exe, None, Some(&rig.key_file), &all)
    };
    // Wait until the standby has row 9, so the failover loses nothing.
    let db = standby.connect().await.unwrap();
    Rig::wait_rows(&db, &standby, "1,2,3,4,5,6,7,8,9").await;

    // A rehearsal first: a scratch standby from the archive is promoted and checked, and
    // production is not touched.
    let out = cli(&[
        "failover",
        "rehearse",
        "--env",
        "production",
        "--verify-query",
        ROWS,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rehearsal: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rehearsal["direction"], "rehearsal", "{rehearsal:#}");
    assert_eq!(
        rehearsal["outcome"]["outcome"], "succeeded",
        "{rehearsal:#}"
    );
    let timeline = rehearsal["timeline"].to_string();
    for needle in [
        "the primary keeps serving, not fenced",
        "scratch standby seeded from the archive and promoted",
        "answers the verify query: 1,2,3,4,5,6,7,8,9",
    ] {
        assert!(timeline.contains(needle), "{needle}: {rehearsal:#}");
    }
    assert!(rig.server.is_running(), "the primary still runs");
    assert!(
        !rig.path("data/standby.signal").exists(),
        "and is not fenced"
    );
    assert!(
        deploykit_postgres::standby_status(&db)
            .await
            .unwrap()
            .in_recovery,
        "the standby still follows"
    );
    let rehearsals = app.join(".deploykit/rehearsals");
    assert!(
        std::fs::read_dir(&rehearsals).map_or(true, |mut d| d.next().is_none()),
        "the scratch database is gone"
    );

    // Nothing to re-seed from while the standby is still a standby.
    let out = rig.dk_key(&[
        "--config",
        s(&config),
        "failover",
        "reseed",
        "--env",
        "production",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("production-dr is still a standby: fail over first"),
        "{}",
        stderr(&out)
    );

    let out = cli(&[
        "failover",
        "run",
        "--env",
        "production",
        "--reason",
        "primary disk lost",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcome"]["outcome"], "succeeded", "{report}");
    assert_eq!(report["from"], "production");
    assert_eq!(report["to"], "production-dr");
    assert!(report["rto_ms"].as_u64().is_some(), "{report}");
    assert!(report["last_replicated_commit"].is_number(), "{report}");
    let timeline = report["timeline"].to_string();
    for needle in [
        "segment(s) behind the archive",
        "primary database fenced, its server",
        "standby database promoted",
        "switch_traffic hook: front door moved",
        "the promoted database takes writes",
    ] {
        assert!(timeline.contains(needle), "{needle}: {report:#}");
    }
    assert!(!rig.server.is_running(), "the primary was stopped");
    assert!(rig.path("data/standby.signal").is_file(), "and fenced");
    assert_eq!(
        std::fs::read_to_string(app.join("switched"))
            .unwrap()
            .trim(),
        "production production-dr"
    );
    simple_query(&db, "INSERT INTO events (id) VALUES (10)")
        .await
        .expect("the new primary takes writes");
    // The channel was told, for the rehearsal and then the failover: the request, each step
    // done, the end (its default kinds).
    let told: Vec<String> = sink
        .requests()
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.body).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let one = [
        vec!["failover_requested"],
        vec!["failover_step_done"; 5],
        vec!["failover_finished"],
    ]
    .concat();
    assert_eq!(told, [one.clone(), one].concat(), "{told:?}");

    // Read back: the list, the Markdown report, the audit log.
    let id = report["id"].as_str().unwrap().to_string();
    let listed: Value = serde_json::from_slice(&cli(&["failover", "list"]).stdout).unwrap();
    // Oldest first: the rehearsal, then the failover.
    assert_eq!(listed[0]["direction"], "rehearsal", "{listed:#}");
    assert_eq!(listed[1]["id"], id.as_str(), "{listed:#}");
    let resumed: Value = serde_json::from_slice(&cli(&["failover", "resume"]).stdout).unwrap();
    assert_eq!(resumed["resumed"], 0, "nothing was left unfinished");
    let md = run(
        &rig.exe,
        None,
        None,
        &["--config", s(&config), "failover", "report", &id],
    );
    let md = String::from_utf8_lossy(&md.stdout).to_string();
    assert!(
        md.contains("# Failover of production to production-dr: succeeded"),
        "{md}"
    );
    assert!(md.contains("| **RTO** |"), "{md}");
    let audit = run(
        &rig.exe,
        None,
        None,
        &["--config", s(&config), "audit", "verify"],
    );
    assert!(audit.status.success(), "{}", stderr(&audit));

    // A second failover of the same environment: the standby is a primary now, so it is
    // refused (two primaries), exit 3, nothing done.
    let out = cli(&[
        "failover",
        "run",
        "--env",
        "production",
        "--reason",
        "again",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let refused: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(refused["outcome"]["outcome"], "refused", "{refused}");
    assert!(
        refused["outcome"]["reason"]
            .as_str()
            .unwrap()
            .contains("takes writes already"),
        "{refused}"
    );
    // An environment without a standby: a clear error.
    let out = cli(&["failover", "run", "--env", "production-dr", "--reason", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("environments.production-dr.standby: is not configured"),
        "{}",
        stderr(&out)
    );

    // Failback. The old primary is re-seeded from the new one (as the repository's owner),
    // started, catches up with what was written after the failover, and takes over again.
    let out = rig.dk_key(&[
        "--config",
        s(&config),
        "-o",
        "json",
        "failover",
        "reseed",
        "--env",
        "production",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let reseeded: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reseeded["timeline"], 2, "{reseeded}");
    assert!(
        reseeded["kept"]
            .as_str()
            .unwrap()
            .contains(".before-reseed-"),
        "{reseeded}"
    );
    assert!(rig.path("data/standby.signal").is_file());
    let (home_port, options) = rig.options("home");
    let home = Server::start(&bins, &rig.path("data"), options)
        .await
        .unwrap();
    simple_query(
        &db,
        "INSERT INTO events (id) VALUES (11); SELECT pg_switch_wal()",
    )
    .await
    .unwrap();
    let home_db = home.connect().await.unwrap();
    Rig::wait_rows(&home_db, &home, "1,2,3,4,5,6,7,8,9,10,11").await;
    let back = app.join("failback.toml");
    std::fs::write(
        &back,
        format!(
            r#"{APP_PREAMBLE}
[environments.production-dr.standby]
environment = "production"
max_lag = "1h"
database = {{ repository = "{repo}", primary_pgdata = "{dr}", standby_connection = "host={sock} port={home_port} user=postgres" }}
"#,
            repo = rig.repo.display(),
            dr = standby_dir.display(),
            sock = rig.path("").display(),
        ),
    )
    .unwrap();
    let out = run(
        &rig.exe,
        None,
        Some(&rig.key_file),
        &[
            "--config",
            s(&back),
            "-o",
            "json",
            "failover",
            "run",
            "--env",
            "production-dr",
            "--failback",
            "--reason",
            "back home",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let failback: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(failback["direction"], "failback", "{failback:#}");
    assert_eq!(failback["outcome"]["outcome"], "succeeded", "{failback:#}");
    simple_query(&home_db, "INSERT INTO events (id) VALUES (12)")
        .await
        .expect("production takes writes again");
    assert_eq!(
        simple_query(&home_db, ROWS).await.unwrap()[0][0].as_deref(),
        Some("1,2,3,4,5,6,7,8,9,10,11,12")
    );
    assert!(
        standby_dir.join("standby.signal").is_file(),
        "the DR database is fenced"
    );
    // And the DR database can be re-seeded from production in turn: the cycle is closed.
    let out = rig.dk_key(&[
        "--config",
        s(&back),
        "-o",
        "json",
        "failover",
        "reseed",
        "--env",
        "production-dr",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(standby_dir.join("standby.signal").is_file());
    home.stop().await.unwrap();
    standby.stop().await.unwrap();
}

/// `deploykit failover watch` with `automatic = true`: the primary's postmaster is killed
/// (a crash: no clean shutdown), the probes fail for the grace period, and the watcher fails
/// over by itself: the standby is promoted with every archived commit, the report says the
/// failover was automatic, with its evidence, and an RTO from the first failed probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploykit_failover_watch_fails_over_when_the_primary_dies() {
    let Some(bins) = bins() else { return };
    let mut rig = Rig::start(&bins).await;
    rig.history().await;
    let (_, standby, port) = rig.follow(&bins).await;
    let app = rig.path("app");
    std::fs::create_dir_all(&app).unwrap();
    let config = app.join("deploykit.toml");
    let ready = bins.tool("pg_isready");
    std::fs::write(
        &config,
        format!(
            r#"{APP_PREAMBLE}
[environments.production.standby]
environment = "production-dr"
automatic = true
assessment = {{ quorum = 2, grace = "1s", interval = "200ms", probes = [
  {{ name = "postgres", command = ["{ready}", "-q", "-h", "127.0.0.1", "-p", "{primary}"] }},
  {{ name = "sql", command = ["{ready}", "-q", "-h", "{sock}", "-p", "{primary}"] }},
] }}
database = {{ repository = "{repo}", primary_pgdata = "{data}", standby_connection = "host={sock} port={port} user=postgres" }}
"#,
            ready = ready.display(),
            primary = rig.port,
            repo = rig.repo.display(),
            data = rig.path("data").display(),
            sock = rig.path("").display(),
        ),
    )
    .unwrap();
    let mut watcher = Command::new(&rig.exe)
        .args([
            "--config",
            s(&config),
            "-o",
            "json",
            "failover",
            "watch",
            "--env",
            "production",
        ])
        .env("DEPLOYKIT_REPO_KEY_FILE", &rig.key_file)
        .env_remove("DEPLOYKIT_REPO_PASSWORD")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A healthy primary: the watcher waits.
    rig.insert(9).await;
    rig.archive_everything().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        watcher.try_wait().unwrap().is_none(),
        "no failover while the primary answers"
    );
    let db = standby.connect().await.unwrap();
    Rig::wait_rows(&db, &standby, "1,2,3,4,5,6,7,8,9").await;
    // The primary crashes.
    let pid = std::fs::read_to_string(rig.path("data/postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    let killed_at = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-9", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = tokio::task::spawn_blocking(move || watcher.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let elapsed = killed_at.elapsed();
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcome"]["outcome"], "succeeded", "{report:#}");
    assert_eq!(report["trigger"], "automatic");
    assert_eq!(report["requested_by"], "deploykit");
    assert_eq!(
        report["evidence"].as_array().unwrap().len(),
        2,
        "{report:#}"
    );
    let rto = Duration::from_millis(report["rto_ms"].as_u64().unwrap());
    assert!(rto >= Duration::from_secs(1), "at least the grace: {rto:?}");
    assert!(
        rto < Duration::from_secs(30) && elapsed < Duration::from_secs(30),
        "{rto:?} {elapsed:?}"
    );
    assert_eq!(
        simple_query(&db, ROWS).await.unwrap()[0][0].as_deref(),
        Some("1,2,3,4,5,6,7,8,9"),
        "every archived commit"
    );
    simple_query(&db, "INSERT INTO events (id) VALUES (10)")
        .await
        .expect("the new primary takes writes");
    assert!(
        rig.path("data/standby.signal").is_file(),
        "the dead primary is fenced"
    );
    let _ = rig.server.is_running();
    standby.stop().await.unwrap();
}

/// The numbers in BENCHMARKS.md ("PostgreSQL archiving and point-in-time recovery"): a
/// pgbench database at scale 10, its base backup, WAL push and fetch rates through the
/// binary, RPO with `archive_timeout = 1`, and a restore to the end of the archive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: cargo test -p deploykit-cli --release --test pg -- --ignored --nocapture"]
async fn benchmark_archiving_and_recovery() {
    let Some(bins) = bins() else { return };
    let rig = Rig::start(&bins).await;
    let pgbench = |args: &[&str]| {
        let mut command = Command::new(bins.tool("pgbench"));
        command
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &rig.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(args);
        if let Some(user) = &rig.run_as {
            command.uid(user.uid).gid(user.gid).current_dir("/");
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "pgbench: {}", stderr(&out));
    };
    let started = Instant::now();
    pgbench(&["-i", "-s", "10", "-q", "postgres"]);
    let init = started.elapsed();
    let settle = rig.archive_everything().await;
    let size = rig
        .one("SELECT pg_database_size('postgres')")
        .await
        .parse::<u64>()
        .unwrap();
    println!(
        "pgbench -i -s 10: {:.1} MiB database in {init:.1?}; archive caught up {settle:.1?} later",
        size as f64 / 1048576.0
    );

    let conn = format!("host=127.0.0.1 port={} user=postgres", rig.port);
    let backup = rig.json(
        false,
        &[
            "pg",
            "backup",
            "--repo",
            s(&rig.repo),
            "--pgdata-connection",
            &conn,
            "--pgdata",
            s(&rig.path("data")),
        ],
    );
    println!(
        "base backup (read in place): {} files, {:.1} MiB, {:.1} MiB stored, copy {} ms, in all {} ms",
        backup["files"],
        backup["bytes"].as_u64().unwrap() as f64 / 1048576.0,
        backup["bytes_stored"].as_u64().unwrap() as f64 / 1048576.0,
        backup["copy_ms"],
        backup["duration_ms"]
    );

    // RPO: a commit until its segment is in the repository, with no switch but the timeout.
    let mut rpo = Vec::new();
    for i in 0..5 {
        rig.sql(&format!(
            "CREATE TABLE IF NOT EXISTS beat (i int); INSERT INTO beat VALUES ({i})"
        ))
        .await;
        let committed = Instant::now();
        let segment = rig
            .one("SELECT pg_walfile_name(pg_current_wal_lsn() - 1)")
            .await;
        rpo.push(rig.wait_archived(&segment, committed).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    rpo.sort();
    println!(
        "RPO (commit to segment in the repository): median {:.2?}, max {:.2?}",
        rpo[2], rpo[4]
    );

    // Fetch every archived segment through the binary, then push them into a fresh repository.
    let listed = rig.json(false, &["pg", "list", "--repo", s(&rig.repo)]);
    let (first, last) = (
        listed["wal"][0]["first"].as_str().unwrap(),
        listed["wal"][0]["last"].as_str().unwrap(),
    );
    let (lo, hi) = (
        WalSegment::parse(first, MIB16).unwrap().number,
        WalSegment::parse(last, MIB16).unwrap().number,
    );
    let segments = rig.path("segments");
    std::fs::create_dir_all(&segments).unwrap();
    chown_tree(&segments, rig.run_as.as_ref()).unwrap();
    let names: Vec<String> = (lo..=hi)
        .map(|n| {
            WalSegment {
                timeline: 1,
                number: n,
            }
            .file_name(MIB16)
        })
        .collect();
    let fetch_started = Instant::now();
    for name in &names {
        let out = rig.dk(&[
            "pg",
            "wal-fetch",
            name,
            s(&segments.join(name)),
            "--repo",
            s(&rig.repo),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let fetch = fetch_started.elapsed();
    let fetch_started = Instant::now();
    for name in &names {
        let out = rig.dk_key(&[
            "pg",
            "wal-fetch",
            name,
            s(&segments.join(name)),
            "--repo",
            s(&rig.repo),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let fetch_key = fetch_started.elapsed();
    let n = names.len() as f64;
    for (label, key) in [("passphrase", false), ("key file", true)] {
        let fresh = rig.path(&format!("fresh-{key}"));
        let init = ["pg", "init", "--repo", s(&fresh), "--key-file"];
        let key_path = rig.path(&format!("fresh-{key}.key"));
        let out = rig.dk(&[&init[..], &[s(&key_path)]].concat());
        assert!(out.status.success(), "{}", stderr(&out));
        let push_started = Instant::now();
        for name in &names {
            let segment = segments.join(name);
            let args = ["pg", "wal-push", s(&segment), "--repo", s(&fresh)];
            let out = if key {
                run(&rig.exe, rig.run_as.as_ref(), Some(&key_path), &args)
            } else {
                rig.dk(&args)
            };
            assert!(out.status.success(), "{}", stderr(&out));
        }
        let push = push_started.elapsed();
        println!(
            "wal-push ({label}): {} segments in {push:.1?} ({:.1} segments/s, {:.0} MiB/s)",
            names.len(),
            n / push.as_secs_f64(),
            n * 16.0 / push.as_secs_f64(),
        );
    }
    println!(
        "wal-fetch: {} segments, passphrase {fetch:.1?} ({:.1} segments/s), key file {fetch_key:.1?} ({:.1} segments/s)",
        names.len(),
        n / fetch.as_secs_f64(),
        n / fetch_key.as_secs_f64()
    );

    let count = "SELECT count(*) FROM pgbench_accounts";
    let out = rig.restore(
        &rig.repo,
        "restored",
        &["--latest", "--verify-query", count],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows(&report), json!([["1000000"]]), "{report}");
    println!(
        "restore (latest, WAL {} to {}): files {} ms, recovery {} ms, in all {} ms",
        report["wal_checked"][0],
        report["wal_checked"][1],
        report["files_ms"],
        report["recovery_ms"],
        report["duration_ms"]
    );
}
