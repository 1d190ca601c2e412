//! The backup engine end to end: round trips on a real filesystem, kinds, sources, hooks,
//! retention, prune alongside backups, concurrent backups, crash consistency, damage
//! detection, bad input, drills and the scheduler.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deploykit_backup::{
    BackupKind, BackupPolicy, BackupRequest, CommandSource, DrillTargets, LocalTarget,
    PruneOptions, ReadData, RepoKey, RepoOptions, Repository, RestoreOptions, RetentionPolicy,
    ScheduledRun, Scheduler,
};
use deploykit_core::Error;
use deploykit_core::backup::BackupTarget;
use deploykit_testing::MemoryTarget;
use proptest::prelude::*;

const PASSWORD: &str = "correct horse battery staple";

/// Small chunks and packs so small trees exercise many of both; a cheap KDF.
fn options() -> RepoOptions {
    RepoOptions::builder()
        .chunk_min(1024)
        .chunk_avg(4096)
        .chunk_max(16384)
        .pack_size(64 * 1024)
        .kdf_cost((1024, 1))
        .build()
}

async fn repo_on(target: Arc<dyn BackupTarget>) -> Repository {
    Repository::init(target, &RepoKey::passphrase(PASSWORD), options())
        .await
        .expect("init")
}

fn request(paths: &[&Path], kind: BackupKind) -> BackupRequest {
    BackupRequest::builder()
        .paths(paths.iter().map(|p| p.to_path_buf()).collect())
        .kind(kind)
        .host("test-host")
        .build()
}

/// Deterministic pseudo-random bytes.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn write(path: &Path, content: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// A tree with text, random data, an empty file, a deep path, unicode names, a symlink,
/// odd permissions and an old mtime.
fn sample_tree(root: &Path) {
    write(&root.join("README.md"), "hello\n".repeat(5000).as_bytes());
    write(&root.join("data/random.bin"), &bytes(1, 200_000));
    write(&root.join("data/empty"), b"");
    write(&root.join("a/b/c/d/e/f/deep.txt"), b"deep");
    write(
        &root.join("unicode/Grüße — 日本語 🚀.txt"),
        "ünïcödé".as_bytes(),
    );
    std::os::unix::fs::symlink("../README.md", root.join("data/link")).unwrap();
    std::fs::set_permissions(
        root.join("data/random.bin"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    std::fs::File::options()
        .write(true)
        .open(root.join("a/b/c/d/e/f/deep.txt"))
        .unwrap()
        .set_modified(old)
        .unwrap();
}

/// Everything restore promises to keep: kind, content, permissions, mtime, link targets.
fn describe(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let owner = format!("{}:{}", meta.uid(), meta.gid());
            let what = if meta.file_type().is_symlink() {
                format!(
                    "link -> {} {owner}",
                    std::fs::read_link(&path).unwrap().display()
                )
            } else if meta.is_dir() {
                todo.push(path.clone());
                format!("dir {:o} {} {owner}", meta.mode() & 0o7777, meta.mtime())
            } else {
                let content = std::fs::read(&path).unwrap();
                format!(
                    "file {:o} {}.{} {} {owner}",
                    meta.mode() & 0o7777,
                    meta.mtime(),
                    meta.mtime_nsec(),
                    blake3::hash(&content)
                )
            };
            out.insert(rel, what);
        }
    }
    out
}

#[tokio::test]
async fn full_then_incremental_restores_bit_for_bit_with_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("app");
    sample_tree(&source);
    // Another owner, where allowed (as root): restore gives it back.
    let owned =
        std::os::unix::fs::lchown(source.join("data/random.bin"), Some(1234), Some(5678)).is_ok();
    let target = Arc::new(LocalTarget::new(dir.path().join("repo")).unwrap());
    let repo = repo_on(target.clone()).await;
    let (full, s1) = repo
        .backup(request(&[&source], BackupKind::Full))
        .await
        .unwrap();
    assert_eq!(s1.summary.files, 5);
    assert_eq!(s1.summary.files_read, 5);

    // Change one file, add one: the incremental reads only those two.
    write(&source.join("data/new.txt"), b"new");
    write(&source.join("README.md"), b"changed");
    let (incr, s2) = repo
        .backup(request(&[&source], BackupKind::Incremental))
        .await
        .unwrap();
    assert_eq!(s2.parent.as_deref(), Some(full.as_str()));
    assert_eq!((s2.summary.files, s2.summary.files_read), (6, 2));

    let reopened = Repository::open(target, &RepoKey::passphrase(PASSWORD))
        .await
        .unwrap();
    let out = dir.path().join("restored");
    let summary = reopened
        .restore(&incr, &out, &RestoreOptions::default())
        .await
        .unwrap();
    assert_eq!(summary.files, 6);
    assert_eq!(describe(&out.join("app")), describe(&source));
    if owned {
        let meta = std::fs::metadata(out.join("app/data/random.bin")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
    }

    // The full snapshot still restores on its own, to its own content.
    let old = dir.path().join("old");
    reopened
        .restore(&full, &old, &RestoreOptions::default())
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(old.join("app/README.md")).unwrap(),
        "hello\n".repeat(5000).as_bytes()
    );
    assert!(!old.join("app/data/new.txt").exists());

    // Selected paths only.
    let some = dir.path().join("some");
    let options = RestoreOptions::builder()
        .include(vec!["app/a".into()])
        .build();
    reopened.restore(&incr, &some, &options).await.unwrap();
    assert!(some.join("app/a/b/c/d/e/f/deep.txt").is_file());
    assert!(!some.join("app/README.md").exists());
    let none = RestoreOptions::builder()
        .include(vec!["app/nope".into()])
        .build();
    assert!(matches!(
        reopened
            .restore(&incr, &dir.path().join("none"), &none)
            .await,
        Err(Error::NotFound { .. })
    ));
    assert!(reopened.verify(ReadData::All).await.unwrap().is_ok());
}

#[tokio::test]
async fn progress_is_reported_after_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("app");
    sample_tree(&source);
    let repo = repo_on(Arc::new(MemoryTarget::new())).await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let request = BackupRequest::builder()
        .paths(vec![source.clone()])
        .kind(BackupKind::Full)
        .progress(Arc::new(move |p: &deploykit_backup::Progress| {
            sink.lock().unwrap().push(p.clone())
        }))
        .build();
    repo.backup(request).await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 5);
    let last = seen.iter().max_by_key(|p| p.files_done).unwrap();
    assert_eq!((last.files_done, last.files_total), (5, 5));
    assert_eq!(last.bytes_done, last.bytes_total);
    assert!(seen.iter().all(|p| p.bytes_done <= p.bytes_total));
}

#[tokio::test]
async fn differential_compares_with_the_last_full_and_dedup_stores_once() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("app");
    sample_tree(&source);
    let target = Arc::new(MemoryTarget::new());
    let repo = repo_on(target.clone()).await;
    let (full, _) = repo
        .backup(request(&[&source], BackupKind::Full))
        .await
        .unwrap();
    write(&source.join("one.txt"), b"1");
    repo.backup(request(&[&source], BackupKind::Incremental))
        .await
        .unwrap();
    write(&source.join("two.txt"), b"2");
    let (_, diff) = repo
        .backup(request(&[&source], BackupKind::Differential))
        .await
        .unwrap();
    assert_eq!(diff.parent.as_deref(), Some(full.as_str()));
    assert_eq!(diff.summary.files_read, 2, "both changes since the full");
    // A second full reads everything but stores almost nothing new.
    let (_, again) = repo
        .backup(request(&[&source], BackupKind::Full))
        .await
        .unwrap();
    assert_eq!(again.summary.files_read, again.summary.files);
    assert!(again.summary.blobs_added <= 2, "{:?}", again.summary);
}

#[tokio::test]
async fn streams_from_commands_are_files_and_a_failing_dump_leaves_no_snapshot() {
    let target = Arc::new(MemoryTarget::new());
    let repo = repo_on(target).await;
    let dump = CommandSource::new(
        "shop.sql",
        [
            "sh",
            "-c",
            "for i in $(seq 1 2000); do echo \"INSERT INTO t VALUES ($i);\"; done",
        ],
    )
    .unwrap();
    let (id, snap) = repo
        .backup(
            BackupRequest::builder()
                .sources(vec![Arc::new(dump)])
                .kind(BackupKind::Full)
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(snap.paths, ["stream:shop.sql"]);
    let dir = tempfile::tempdir().unwrap();
    repo.restore(&id, dir.path(), &RestoreOptions::default())
        .await
        .unwrap();
    let sql = std::fs::read_to_string(dir.path().join("shop.sql")).unwrap();
    assert_eq!(sql.lines().count(), 2000);
    assert!(sql.ends_with("INSERT INTO t VALUES (2000);\n"));

    let broken = CommandSource::new("broken.sql", ["sh", "-c", "echo partial; exit 3"]).unwrap();
    let err = repo
        .backup(
            BackupRequest::builder()
                .sources(vec![Arc::new(broken)])
                .build(),
        )
        .await
        .unwrap_err();
    assert!(err.chain().contains("exit status: 3"), "{}", err.chain());
    assert_eq!(repo.snapshots().await.unwrap().len(), 1);
}

#[tokio::test]
async fn snapshot_kind_runs_hooks_and_post_hooks_run_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("app");
    write(&source.join("x"), b"x");
    let log = dir.path().join("hooks.log");
    let hook = |word: &str| {
        vec![
            "sh".to_string(),
            "-c".into(),
            format!("echo {word} >> {}", log.display()),
        ]
    };
    let repo = repo_on(Arc::new(MemoryTarget::new())).await;
    let req = |pre: Vec<Vec<String>>| {
        BackupRequest::builder()
            .paths(vec![source.clone()])
            .kind(BackupKind::Snapshot)
            .pre_hooks(pre)
            .post_hooks(vec![hook("thaw")])
            .build()
    };
    let (_, snap) = repo.backup(req(vec![hook("freeze")])).await.unwrap();
    assert_eq!(snap.kind, BackupKind::Snapshot);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "freeze\nthaw\n");
    let failing = vec![vec!["sh".into(), "-c".into(), "exit 7".into()]];
    let err = repo.backup(req(failing)).await.unwrap_err();
    assert!(err.chain().contains("exit status: 7"), "{}", err.chain());
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "freeze\nthaw\nthaw\n"
    );
}

#[tokio::test]
async fn two_backups_at_once_both_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    write(&a.join("f"), &bytes(2, 300_000));
    write(&b.join("f"), &bytes(3, 300_000));
    let target = Arc::new(MemoryTarget::new());
    let repo = repo_on(target.clone()).await;
    let other = Repository::open(target, &RepoKey::passphrase(PASSWORD))
        .await
        .unwrap();
    let (ra, rb) = tokio::join!(
        repo.backup(request(&[&a], BackupKind::Full)),
        other.backup(request(&[&b], BackupKind::Full))
    );
    ra.unwrap();
    rb.unwrap();
    assert_eq!(repo.snapshots().await.unwrap().len(), 2);
    assert!(repo.verify(ReadData::All).await.unwrap().is_ok());
}

#[tokio::test]
async fn retention_dry_run_forget_and_prune_keep_what_snapshots_need() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("app");
    let target = Arc::new(MemoryTarget::new());
    let repo = repo_on(target.clone()).await;
    for i in 0..4u64 {
        write(&source.join(format!("v{i}")), &bytes(10 + i, 100_000));
        repo.backup(request(&[&source], BackupKind::Incremental))
            .await
            .unwrap();
        std::fs::remove_file(source.join(format!("v{i}"))).unwrap();
    }
    let policy = RetentionPolicy {
        keep_last: Some(2),
        ..Default::default()
    };
    let dry = repo.forget(&policy, true).await.unwrap();
    assert_eq!(dry.iter().filter(|d| !d.keep).count(), 2);
    assert_eq!(
        repo.snapshots().await.unwrap().len(),
        4,
        "a dry run removes nothing"
    );
    repo.forget(&policy, false).await.unwrap();
    assert_eq!(repo.snapshots().await.unwrap().len(), 2);

    let size = |t: &MemoryTarget| t.keys().iter().map(|(_, n)| *n).sum::<usize>();
    let before = size(&target);
    let first = repo.prune(PruneOptions::default()).await.unwrap();
    assert!(first.marked > 0 && first.deleted == 0, "{first:?}");
    let second = repo.prune(PruneOptions::default()).await.unwrap();
    assert!(second.deleted > 0, "{second:?}");
    assert!(
        size(&target) < before * 3 / 4,
        "{} -> {}",
        before,
        size(&target)
    );
    let report = repo.verify(ReadData::All).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    for (id, _) in repo.snapshots().await.unwrap() {
        let out = tempfile::tempdir().unwrap();
        repo.restore(&id, out.path(), &RestoreOptions::default())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn prune_while_a_backup_runs_never_deletes_what_it_uses() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("app");
    for i in 0..20u64 {
        write(&source.join(format!("f{i}")), &bytes(100 + i, 50_000));
    }
    let target = Arc::new(MemoryTarget::new());
    let repo = repo_on(target.clone()).await;
    let (old, _) = repo
        .backup(request(&[&source], BackupKind::Full))
        .await
        .unwrap();
    // Forget the only snapshot: everything is unreferenced, and marked by a first prune.
    target.delete(&format!("snapshots/{old}")).await.unwrap();
    repo.prune(PruneOptions::default()).await.unwrap();
    // A backup of the same data (it must not reuse marked packs) races a second prune
    // (which would delete the marked packs).
    for _ in 0..3 {
        let (backup, prune) = tokio::join!(
            repo.backup(request(&[&source], BackupKind::Full)),
            repo.prune(PruneOptions::default())
        );
        backup.unwrap();
        prune.unwrap();
    }
    repo.prune(PruneOptions::default()).await.unwrap();
    let report = repo.verify(ReadData::All).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    for (id, _) in repo.snapshots().await.unwrap() {
        let out = tempfile::tempdir().unwrap();
        repo.restore(&id, out.path(), &RestoreOptions::default())
            .await
            .unwrap();
        assert_eq!(describe(&out.path().join("app")).len(), 20);
    }
}

/// Kill the backup at every write (by making the target fail from then on): no partial
/// snapshot is listed, the repository verifies, and the next backup succeeds.
#[tokio::test]
async fn a_backup_killed_at_any_point_leaves_the_repository_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("app");
    sample_tree(&source);
    for i in 0..6u64 {
        write(&source.join(format!("bulk/{i}")), &bytes(200 + i, 60_000));
    }
    // How many writes a whole backup makes.
    let probe = Arc::new(MemoryTarget::new());
    let probe_repo = repo_on(probe.clone()).await;
    let writes_before = probe.keys().len();
    probe_repo
        .backup(request(&[&source], BackupKind::Full))
        .await
        .unwrap();
    let writes = probe.keys().len() - writes_before + 2; // + lock put and delete
    let mut trials = 0;
    for kill_at in 0..writes as u64 {
        for round in 0..(100 / writes + 1) {
            let target = Arc::new(MemoryTarget::new());
            let repo = repo_on(target.clone()).await;
            if round > 0 {
                // Some history first, so the killed backup is an incremental over it.
                repo.backup(request(&[&source], BackupKind::Full))
                    .await
                    .unwrap();
                write(
                    &source.join(format!("bulk/extra{round}")),
                    &bytes(300 + round as u64, 30_000),
                );
            }
            let before = repo.snapshots().await.unwrap().len();
            target.fail_after(kill_at);
            let result = repo
                .backup(request(&[&source], BackupKind::Incremental))
                .await;
            target.heal();
            let after = repo.snapshots().await.unwrap();
            match result {
                Ok(_) => assert_eq!(after.len(), before + 1),
                Err(e) => {
                    assert!(
                        e.is_retryable() || e.chain().contains("injected"),
                        "{}",
                        e.chain()
                    );
                    assert_eq!(
                        after.len(),
                        before,
                        "no partial snapshot after a kill at {kill_at}"
                    );
                }
            }
            let report = repo.verify(ReadData::All).await.unwrap();
            assert!(report.is_ok(), "kill at {kill_at}: {:?}", report.problems);
            let (id, _) = repo
                .backup(request(&[&source], BackupKind::Incremental))
                .await
                .unwrap();
            let out = tempfile::tempdir().unwrap();
            repo.restore(&id, out.path(), &RestoreOptions::default())
                .await
                .unwrap();
            assert_eq!(describe(&out.path().join("app")), describe(&source));
            let _ = std::fs::remove_file(source.join(format!("bulk/extra{round}")));
            trials += 1;
        }
    }
    assert!(trials >= 100, "{trials} trials");
}

/// Flip one byte anywhere in the repository: opening or a full verify reports it, naming
/// the damaged object.
#[tokio::test]
async fn any_flipped_byte_is_found_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("app");
    sample_tree(&source);
    let target = Arc::new(MemoryTarget::new());
    let repo = repo_on(target.clone()).await;
    repo.backup(request(&[&source], BackupKind::Full))
        .await
        .unwrap();
    write(&source.join("more"), &bytes(9, 40_000));
    repo.backup(request(&[&source], BackupKind::Incremental))
        .await
        .unwrap();
    let objects = target.keys();
    let total: usize = objects.iter().map(|(_, n)| n).sum();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut trials = Vec::new();
    for (key, size) in &objects {
        trials.push((key.clone(), size / 2)); // every object at least once
    }
    while trials.len() < 1000 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let mut at = (rng % total as u64) as usize;
        for (key, size) in &objects {
            if at < *size {
                trials.push((key.clone(), at));
                break;
            }
            at -= size;
        }
    }
    for (key, offset) in trials {
        target.corrupt(&key, offset);
        let found = match Repository::open(target.clone(), &RepoKey::passphrase(PASSWORD)).await {
            Err(e) => {
                let text = e.chain();
                assert!(text.contains(&key), "opening names {key}: {text}");
                true
            }
            Ok(repo) => {
                let report = repo.verify(ReadData::All).await.unwrap();
                assert!(
                    report.problems.iter().any(|p| p.object == key),
                    "flip at {key}+{offset} not reported as {key}: {:?}",
                    report.problems
                );
                true
            }
        };
        assert!(found);
        target.corrupt(&key, offset); // flip back
    }
    assert!(repo.verify(ReadData::All).await.unwrap().is_ok());
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let target = Arc::new(MemoryTarget::new());
    let repo = repo_on(target.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("app");
    write(&source.join("f"), &bytes(5, 100_000));
    let (id, _) = repo
        .backup(request(&[&source], BackupKind::Full))
        .await
        .unwrap();

    let wrong = Repository::open(target.clone(), &RepoKey::passphrase("wrong"))
        .await
        .unwrap_err();
    assert!(
        wrong.to_string().contains("no key opens the repository")
            && wrong
                .to_string()
                .contains("does not open with this passphrase"),
        "{wrong}"
    );
    assert!(matches!(
        Repository::init(target.clone(), &RepoKey::passphrase(PASSWORD), options()).await,
        Err(Error::AlreadyExists { .. })
    ));
    let empty = Arc::new(MemoryTarget::new());
    assert!(matches!(
        Repository::open(empty, &RepoKey::passphrase(PASSWORD)).await,
        Err(Error::NotFound { .. })
    ));

    // Unknown format version.
    let config = target.get("config").await.unwrap();
    let newer = String::from_utf8(config.clone())
        .unwrap()
        .replace("\"version\": 1", "\"version\": 2");
    target.put("config", newer.into_bytes()).await.unwrap();
    let err = Repository::open(target.clone(), &RepoKey::passphrase(PASSWORD))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid backup.config.version: repository format version 2 is not supported (this deploykit reads version 1)"
    );
    target.put("config", config).await.unwrap();

    // Truncated objects: a pack, then a snapshot.
    let (pack, size) = target
        .keys()
        .into_iter()
        .find(|(k, _)| k.starts_with("data/"))
        .unwrap();
    target.truncate(&pack, size / 2);
    let report = repo.verify(ReadData::None).await.unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.object == pack && p.reason.contains("the index says")),
        "{:?}",
        report.problems
    );
    let err = repo
        .restore(&id, &dir.path().join("out"), &RestoreOptions::default())
        .await;
    assert!(err.is_err());
    let snap = format!("snapshots/{id}");
    let snap_size = target
        .keys()
        .into_iter()
        .find(|(k, _)| *k == snap)
        .unwrap()
        .1;
    target.truncate(&snap, snap_size / 2);
    let report = repo.verify(ReadData::None).await.unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.object == snap && p.reason.contains("does not match its id")),
        "{:?}",
        report.problems
    );

    // Requests that cannot be right.
    assert!(repo.backup(BackupRequest::builder().build()).await.is_err());
    let twice = repo
        .backup(request(&[&source, &source], BackupKind::Full))
        .await
        .unwrap_err();
    assert!(twice.to_string().contains("distinct"), "{twice}");
    assert!(matches!(
        repo.verify(ReadData::Subset(3, 2)).await,
        Err(Error::InvalidSpec { .. })
    ));
    assert!(matches!(
        repo.snapshot("abc").await,
        Err(Error::NotFound { .. })
    ));
}

#[tokio::test]
async fn key_files_open_the_repository_too() {
    let dir = tempfile::tempdir().unwrap();
    let target = Arc::new(MemoryTarget::new());
    let repo = repo_on(target.clone()).await;
    let key = RepoKey::generate_file(&dir.path().join("repo.key")).unwrap();
    repo.add_key(&key).await.unwrap();
    let from_file = RepoKey::from_file(&dir.path().join("repo.key")).unwrap();
    Repository::open(target.clone(), &from_file).await.unwrap();
    assert_eq!(
        std::fs::metadata(dir.path().join("repo.key"))
            .unwrap()
            .mode()
            & 0o777,
        0o600
    );
    assert!(
        RepoKey::generate_file(&dir.path().join("repo.key")).is_err(),
        "never overwrites"
    );
    std::fs::write(dir.path().join("bad.key"), "nonsense").unwrap();
    let err = RepoKey::from_file(&dir.path().join("bad.key")).unwrap_err();
    assert!(
        err.to_string().contains("not a deploykit backup key file"),
        "{err}"
    );
}

#[tokio::test]
async fn a_drill_restores_checks_and_measures() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("app");
    sample_tree(&source);
    let repo = repo_on(Arc::new(MemoryTarget::new())).await;
    assert!(matches!(
        repo.drill(dir.path(), DrillTargets::default()).await,
        Err(Error::NotFound { .. })
    ));
    let (id, _) = repo
        .backup(request(&[&source], BackupKind::Full))
        .await
        .unwrap();
    let report = repo
        .drill(&dir.path().join("scratch"), DrillTargets::default())
        .await
        .unwrap();
    assert_eq!(report.snapshot, id);
    assert_eq!(report.files, 5);
    assert!(report.rto < Duration::from_secs(60));
    assert!(report.meets_targets(), "{report:?}");
    assert!(
        !dir.path()
            .join(format!("scratch/drill-{}", &id[..12]))
            .exists(),
        "scratch cleaned"
    );
}

#[tokio::test(start_paused = true)]
async fn the_scheduler_rotates_kinds_and_applies_retention() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("app");
    write(&source.join("f"), b"content");
    let clock = deploykit_testing::SimClock::new();
    let repo = repo_on(Arc::new(MemoryTarget::new()))
        .await
        .with_clock(Arc::new(clock));
    let policy = BackupPolicy {
        rotation: vec![
            "full 0 0 * * *".parse::<ScheduledRun>().unwrap(),
            "incremental */5 * * * *".parse().unwrap(),
        ],
        retention: RetentionPolicy {
            keep_last: Some(3),
            ..Default::default()
        },
        prune: true,
        targets: DrillTargets::default(),
    };
    let ran = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = ran.clone();
    let scheduler =
        Scheduler::new(repo.clone(), policy, request(&[&source], BackupKind::Full)).unwrap();
    scheduler
        .run(
            Some(5),
            Some(Arc::new(
                move |_, kind, outcome: &deploykit_core::Result<String>| {
                    assert!(outcome.is_ok(), "{outcome:?}");
                    seen.lock().unwrap().push(kind);
                },
            )),
        )
        .await
        .unwrap();
    assert_eq!(ran.lock().unwrap().len(), 5);
    assert_eq!(
        repo.snapshots().await.unwrap().len(),
        3,
        "retention keeps the last 3"
    );
    assert!("weekly 0 0 * * *".parse::<ScheduledRun>().is_err());
    assert!("full not-a-cron".parse::<ScheduledRun>().is_err());
}

fn tree_strategy() -> impl Strategy<Value = Vec<(String, Vec<u8>, bool)>> {
    let name = prop::sample::select(vec![
        "a",
        "b",
        "ü",
        "日本",
        "x y",
        "deep/er",
        "deep/er/still",
        "🚀",
    ]);
    let content = prop_oneof![
        Just(Vec::new()),
        prop::collection::vec(any::<u8>(), 0..2000),
        (any::<u64>(), 10_000usize..60_000).prop_map(|(s, n)| bytes(s, n)),
    ];
    prop::collection::vec((name, content, any::<bool>()), 0..8).prop_map(|files| {
        files
            .into_iter()
            .enumerate()
            .map(|(i, (n, c, link))| (format!("{n}/{i}"), c, link))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(24)))]

    /// restore(backup(tree)) == tree, for random trees (empty and large files, deep paths,
    /// unicode names, symlinks).
    #[test]
    fn restore_of_backup_is_the_tree(files in tree_strategy()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let source = dir.path().join("src");
            std::fs::create_dir_all(&source).unwrap();
            for (path, content, link) in &files {
                let p = source.join(path);
                if *link {
                    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                    std::os::unix::fs::symlink(format!("target-{}", content.len()), &p).unwrap();
                } else {
                    write(&p, content);
                }
            }
            let repo = repo_on(Arc::new(MemoryTarget::new())).await;
            let (id, _) = repo.backup(request(&[&source], BackupKind::Full)).await.unwrap();
            let out = dir.path().join("out");
            repo.restore(&id, &out, &RestoreOptions::default()).await.unwrap();
            prop_assert_eq!(describe(&out.join("src")), describe(&source));
            Ok(())
        })?;
    }
}
