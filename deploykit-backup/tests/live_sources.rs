//! Backing up files that are in use, as a running database's are: paths left out by a
//! filter, files that vanish between the walk and their read, and what only the end of a
//! backup knows (a finisher's files and tags) in the same snapshot.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use deploykit_backup::{
    BackupFinish, BackupKind, BackupRequest, Finish, RepoKey, RepoOptions, Repository,
    RestoreOptions,
};
use deploykit_core::{Error, Result};
use deploykit_testing::MemoryTarget;

async fn repo() -> Repository {
    let options = RepoOptions::builder()
        .chunk_min(1024)
        .chunk_avg(4096)
        .chunk_max(16384)
        .pack_size(64 * 1024)
        .kdf_cost((1024, 1))
        .build();
    Repository::init(
        Arc::new(MemoryTarget::new()),
        &RepoKey::passphrase("pw"),
        options,
    )
    .await
    .expect("init")
}

/// Every file and directory under `dir` (directories end in `/`), with file contents.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if path.is_dir() {
                out.insert(format!("{rel}/"), Vec::new());
                walk(root, &path, out);
            } else {
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

async fn restore(repo: &Repository, id: &str, to: &Path) -> BTreeMap<String, Vec<u8>> {
    repo.restore(id, to, &RestoreOptions::default())
        .await
        .expect("restore");
    tree(to)
}

fn write(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

#[tokio::test]
async fn excluded_paths_are_left_out_with_everything_below_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write(&data.join("base/1"), "table");
    write(&data.join("pg_wal/000000010000000000000001"), "wal");
    write(&data.join("pg_wal/archive_status/x.done"), "");
    write(&data.join("postmaster.pid"), "123");
    write(&data.join("global/pg_control"), "control");
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let exclude = {
        let data = data.clone();
        let seen = seen.clone();
        Arc::new(move |path: &Path| {
            let rel = path.strip_prefix(&data).unwrap().to_path_buf();
            seen.lock().unwrap().push(rel.clone());
            rel.parent() == Some(Path::new("pg_wal")) || rel == Path::new("postmaster.pid")
        })
    };
    let repo = repo().await;
    let (id, _) = repo
        .backup(
            BackupRequest::builder()
                .paths(vec![data.clone()])
                .kind(BackupKind::Full)
                .exclude(exclude)
                .build(),
        )
        .await
        .expect("backup");
    let restored = restore(&repo, &id, &dir.path().join("out")).await;
    let names: Vec<&str> = restored.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "data/",
            "data/base/",
            "data/base/1",
            "data/global/",
            "data/global/pg_control",
            "data/pg_wal/"
        ]
    );
    // Nothing below an excluded directory is even looked at.
    let seen = seen.lock().unwrap();
    assert!(!seen.contains(&PathBuf::from("pg_wal/archive_status/x.done")));
    assert!(seen.contains(&PathBuf::from("pg_wal/archive_status")));
}

/// A tree of 200 small files. Once the walk has seen the last path (the exclusion filter is
/// called with every path), the first progress call (a file stored) deletes the second half
/// and a whole directory; every reader waits until that is done after its first file, so the
/// deleted files are walked but not yet read.
fn vanishing_tree(data: &Path) -> (deploykit_backup::ExcludeFn, deploykit_backup::ProgressFn) {
    for i in 0..200 {
        write(&data.join(format!("a/f{i:03}")), &format!("file {i}"));
    }
    write(&data.join("z/gone/1"), "one");
    write(&data.join("zz"), "walked last");
    let walked = Arc::new(AtomicBool::new(false));
    let exclude = {
        let walked = walked.clone();
        Arc::new(move |path: &Path| {
            // The walk goes in name order: everything else has been walked (and stat'ed).
            if path.ends_with("zz") {
                walked.store(true, Ordering::SeqCst);
            }
            false
        })
    };
    let deleting = AtomicBool::new(false);
    let deleted = AtomicBool::new(false);
    let data = data.to_path_buf();
    let wait_for = |flag: &AtomicBool| {
        while !flag.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    };
    let progress = Arc::new(move |_: &deploykit_backup::Progress| {
        wait_for(&walked);
        if !deleting.swap(true, Ordering::SeqCst) {
            for i in 100..200 {
                std::fs::remove_file(data.join(format!("a/f{i:03}"))).unwrap();
            }
            std::fs::remove_dir_all(data.join("z")).unwrap();
            deleted.store(true, Ordering::SeqCst);
        }
        // No reader goes on before the deletion is complete.
        wait_for(&deleted);
    });
    (exclude, progress)
}

#[tokio::test]
async fn files_that_vanish_during_a_live_backup_are_left_out_and_the_rest_is_whole() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (exclude, progress) = vanishing_tree(&data);
    let repo = repo().await;
    let (id, snapshot) = repo
        .backup(
            BackupRequest::builder()
                .paths(vec![data.clone()])
                .kind(BackupKind::Full)
                .live(true)
                .exclude(exclude)
                .progress(progress)
                .build(),
        )
        .await
        .expect("a live backup tolerates vanished files");
    assert_eq!(snapshot.summary.files, 202, "the walk saw every file");
    let restored = restore(&repo, &id, &dir.path().join("out")).await;
    let files: Vec<&String> = restored.keys().filter(|k| !k.ends_with('/')).collect();
    assert_eq!(files.len(), 101, "{files:?}");
    assert_eq!(restored["data/zz"], b"walked last");
    for i in 0..100 {
        assert_eq!(
            restored[&format!("data/a/f{i:03}")],
            format!("file {i}").into_bytes()
        );
    }
    // The vanished directory was walked before it went: it is there, empty.
    assert!(restored.contains_key("data/z/gone/"));
    assert!(!restored.contains_key("data/z/gone/1"));
}

#[tokio::test]
async fn a_vanished_file_fails_a_backup_that_is_not_live_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (exclude, progress) = vanishing_tree(&data);
    let repo = repo().await;
    let err = repo
        .backup(
            BackupRequest::builder()
                .paths(vec![data.clone()])
                .kind(BackupKind::Full)
                .exclude(exclude)
                .progress(progress)
                .build(),
        )
        .await
        .expect_err("a vanished file is an error unless the backup is live");
    let text = err.chain();
    assert!(text.contains("/data/"), "{text}");
    assert!(text.contains("No such file"), "{text}");
    assert!(repo.snapshots().await.unwrap().is_empty());
}

struct Label {
    fail: bool,
    files: Vec<(String, Vec<u8>)>,
}

#[async_trait::async_trait]
impl BackupFinish for Label {
    async fn finish(&self) -> Result<Finish> {
        if self.fail {
            return Err(Error::backend("pg_backup_stop", "the server went away"));
        }
        Ok(Finish::builder()
            .files(self.files.clone())
            .tags(["db.stop_lsn=0/3000100".to_string()].into())
            .build())
    }
}

async fn finished_backup(repo: &Repository, data: &Path, label: Label) -> Result<String> {
    repo.backup(
        BackupRequest::builder()
            .paths(vec![data.to_path_buf()])
            .kind(BackupKind::Full)
            .tags(["db.start_lsn=0/3000028".to_string()].into())
            .finish(Arc::new(label))
            .build(),
    )
    .await
    .map(|(id, _)| id)
}

#[tokio::test]
async fn a_finisher_adds_files_and_tags_to_the_same_snapshot_or_fails_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write(&data.join("base/1"), "table");
    let repo = repo().await;
    let label = b"START WAL LOCATION: 0/3000028\n".to_vec();
    let id = finished_backup(
        &repo,
        &data,
        Label {
            fail: false,
            files: vec![("backup_label".into(), label.clone())],
        },
    )
    .await
    .expect("backup");
    let (_, snapshot) = repo.snapshot(&id).await.unwrap();
    let tags: Vec<&str> = snapshot.tags.iter().map(String::as_str).collect();
    assert_eq!(tags, ["db.start_lsn=0/3000028", "db.stop_lsn=0/3000100"]);
    let restored = restore(&repo, &id, &dir.path().join("out")).await;
    assert_eq!(restored["backup_label"], label);
    assert_eq!(restored["data/base/1"], b"table");

    // A failing finisher fails the backup: no snapshot.
    let err = finished_backup(
        &repo,
        &data,
        Label {
            fail: true,
            files: Vec::new(),
        },
    )
    .await
    .expect_err("the finisher failed");
    assert!(
        err.chain().contains("the server went away"),
        "{}",
        err.chain()
    );
    // A file named like a path, or like a root entry, is refused.
    for name in ["data", "a/b", ".."] {
        let err = finished_backup(
            &repo,
            &data,
            Label {
                fail: false,
                files: vec![(name.into(), b"x".to_vec())],
            },
        )
        .await
        .expect_err(name);
        assert!(
            err.chain().contains("backup.finish.files"),
            "{}",
            err.chain()
        );
    }
    assert_eq!(repo.snapshots().await.unwrap().len(), 1);
}
