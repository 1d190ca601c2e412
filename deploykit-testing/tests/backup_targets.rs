//! The backup-target conformance suite against the in-memory and filesystem targets, and
//! what is particular to each.

use std::path::{Path, PathBuf};

use deploykit_backup::LocalTarget;
use deploykit_core::{BackupTarget, Error};
use deploykit_testing::MemoryTarget;
use deploykit_testing::conformance::backup_target;

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let entry = entry.expect("entry");
            if entry.file_type().expect("file type").is_dir() {
                stack.push(entry.path());
            } else {
                out.push(entry.path());
            }
        }
    }
    out
}

fn temp_files_under(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(".tmp-"))
        })
        .collect()
}

#[tokio::test]
async fn memory_target_meets_the_backup_target_contract() {
    backup_target::run_all(&MemoryTarget::new()).await;
}

#[tokio::test]
async fn local_target_meets_the_backup_target_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = LocalTarget::new(dir.path().join("repo")).expect("local target");
    backup_target::run_all(&target).await;
    assert_eq!(
        temp_files_under(target.root()),
        Vec::<PathBuf>::new(),
        "no temporary files may remain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_target_meets_the_contract_on_a_multi_threaded_runtime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = LocalTarget::new(dir.path()).expect("local target");
    backup_target::concurrent_put_if_absent_has_one_winner(&target).await;
    backup_target::list_many_keys(&target).await;
    assert!(temp_files_under(dir.path()).is_empty());
}

#[tokio::test]
async fn local_target_leaves_no_temporary_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = LocalTarget::new(dir.path()).expect("local target");
    for i in 0..20u8 {
        target
            .put(&format!("a/b/{}", i % 5), vec![i; 100])
            .await
            .expect("put");
        let _ = target
            .put_if_absent(&format!("a/c/{}", i % 3), vec![i; 10])
            .await;
    }
    let mut files: Vec<String> = files_under(dir.path())
        .iter()
        .map(|p| {
            p.strip_prefix(dir.path())
                .expect("under root")
                .to_string_lossy()
                .replace('\\', "/")
        })
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "a/b/0", "a/b/1", "a/b/2", "a/b/3", "a/b/4", "a/c/0", "a/c/1", "a/c/2"
        ],
        "only the objects may be on disk"
    );
}

#[tokio::test]
async fn local_target_losing_put_if_absent_keeps_the_original() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = LocalTarget::new(dir.path()).expect("local target");
    target
        .put_if_absent("snap/1", b"original".to_vec())
        .await
        .expect("first put_if_absent");
    let err = target
        .put_if_absent("snap/1", b"usurper, longer".to_vec())
        .await
        .expect_err("second put_if_absent must lose");
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err:?}");
    assert_eq!(
        std::fs::read(dir.path().join("snap").join("1")).expect("read file"),
        b"original"
    );
    assert!(temp_files_under(dir.path()).is_empty());
}

#[tokio::test]
async fn local_target_persists_across_instances_and_hides_stray_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = LocalTarget::new(dir.path()).expect("local target");
    first.put("k/1", b"one".to_vec()).await.expect("put");
    // A temporary file left by a process killed mid-write.
    std::fs::write(dir.path().join("k").join(".tmp-1-0-2"), b"partial").expect("write");

    let second = LocalTarget::new(dir.path()).expect("reopen");
    assert_eq!(second.get("k/1").await.expect("get"), b"one");
    let listed = second.list("").await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].key, "k/1");
    assert!(matches!(
        second.get("k/.tmp-1-0-2").await,
        Err(Error::InvalidSpec { .. })
    ));
}

#[tokio::test]
async fn local_target_root_that_is_a_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").expect("write");
    assert!(matches!(
        LocalTarget::new(&file),
        Err(Error::Backend { .. })
    ));
}

#[tokio::test]
async fn memory_target_injects_write_faults_until_healed() {
    let target = MemoryTarget::new();
    target.put("keep", b"kept".to_vec()).await.expect("put");
    target.fail_after(2);
    target.put("a", b"1".to_vec()).await.expect("first write");
    target
        .put_if_absent("b", b"2".to_vec())
        .await
        .expect("second write");

    let err = target
        .put("c", b"3".to_vec())
        .await
        .expect_err("third write must fail");
    assert!(err.is_retryable(), "injected faults are transient: {err:?}");
    assert!(matches!(err, Error::Transient { .. }));
    assert!(
        target.put_if_absent("c", b"3".to_vec()).await.is_err(),
        "faults persist until healed"
    );
    assert!(target.delete("keep").await.is_err(), "deletes fail too");
    assert!(matches!(target.get("c").await, Err(Error::NotFound { .. })));
    assert_eq!(
        target.get("keep").await.expect("reads still work"),
        b"kept",
        "a failed delete has no effect"
    );
    assert_eq!(
        target.keys(),
        [
            ("a".to_owned(), 1),
            ("b".to_owned(), 1),
            ("keep".to_owned(), 4)
        ]
    );

    target.heal();
    target.put("c", b"3".to_vec()).await.expect("healed");
    assert_eq!(target.get("c").await.expect("get"), b"3");
}

#[tokio::test]
async fn memory_target_fail_after_zero_fails_the_next_write() {
    let target = MemoryTarget::new();
    target.fail_after(0);
    assert!(target.put("a", b"1".to_vec()).await.is_err());
    // A refused conditional put or an invalid key does not use up the budget.
    target.fail_after(1);
    assert!(matches!(
        target.put("", b"1".to_vec()).await,
        Err(Error::InvalidSpec { .. })
    ));
    target
        .put("a", b"1".to_vec())
        .await
        .expect("the one allowed write");
    assert!(target.put("a", b"2".to_vec()).await.is_err());
}

#[tokio::test]
async fn memory_target_corrupts_and_truncates_and_clones_share_state() {
    let target = MemoryTarget::new();
    let clone = target.clone();
    target
        .put("obj", vec![0x0F, 0x10, 0x20])
        .await
        .expect("put");
    let before = clone.get("obj").await.expect("get");
    clone.corrupt("obj", 1);
    assert_eq!(target.get("obj").await.expect("get"), [0x0F, 0xEF, 0x20]);
    assert_eq!(before, [0x0F, 0x10, 0x20], "earlier reads are unaffected");
    target.truncate("obj", 1);
    assert_eq!(clone.get("obj").await.expect("get"), [0x0F]);
    assert_eq!(clone.keys(), [("obj".to_owned(), 1)]);
}

#[test]
#[should_panic(expected = "no object under")]
fn memory_target_corrupt_of_a_missing_key_panics() {
    MemoryTarget::new().corrupt("missing", 0);
}
