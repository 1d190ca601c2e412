//! Mirroring a repository to a second target (`Repository::mirror_to`): incremental copies
//! that restore and drill like the source, copies killed at every write that resume and are
//! consistent at every point, deletions that follow the source only once nothing in the
//! mirror needs the data, and damaged objects caught on either side.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deploykit_backup::{
    BackupKind, BackupRequest, DrillTargets, LocalTarget, MirrorOptions, PruneOptions, ReadData,
    RepoKey, RepoOptions, Repository, RestoreOptions, RetentionPolicy,
};
use deploykit_core::{BackupTarget, Error, ObjectMeta, Result};
use deploykit_testing::MemoryTarget;

fn options() -> RepoOptions {
    RepoOptions::builder()
        .chunk_min(1024)
        .chunk_avg(4096)
        .chunk_max(16384)
        .pack_size(64 * 1024)
        .kdf_cost((1024, 1))
        .build()
}

fn key() -> RepoKey {
    RepoKey::passphrase("correct horse")
}

/// Replace the files under `dir` with four of 40 KB each, different for every `seed`.
fn write_data(dir: &Path, seed: u64) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for i in 0..4 {
        let content: Vec<u8> = (0..40_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let path = if i % 2 == 0 {
            dir.join(format!("f{i}"))
        } else {
            dir.join("sub").join(format!("f{i}"))
        };
        std::fs::write(path, content).unwrap();
    }
}

/// Every file under `dir`, by path relative to it.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_path_buf();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

async fn backup(repo: &Repository, source: &Path) -> String {
    repo.backup(
        BackupRequest::builder()
            .paths(vec![source.to_path_buf()])
            .kind(BackupKind::Incremental)
            .build(),
    )
    .await
    .expect("backup")
    .0
}

/// Restore snapshot `id` of `repo` into a fresh directory under `scratch`; its files.
async fn restored(repo: &Repository, id: &str, scratch: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let out = scratch.join(format!("restore-{}", &id[..12]));
    let _ = std::fs::remove_dir_all(&out);
    repo.restore(id, &out, &RestoreOptions::default())
        .await
        .expect("restore");
    files(&out)
}

fn keys_of(target: &MemoryTarget) -> Vec<String> {
    target.keys().into_iter().map(|(k, _)| k).collect()
}

/// The source's objects as a mirror should hold them (locks are never copied).
fn mirrorable(target: &MemoryTarget) -> Vec<(String, usize)> {
    target
        .keys()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("locks/"))
        .collect()
}

/// Open the mirror as a reader would at this moment and read all of its data: every
/// snapshot it lists must be whole. Returns the snapshots seen (0 before `config` arrives).
async fn check_consistent(mirror: &MemoryTarget) -> u64 {
    let target: Arc<dyn BackupTarget> = Arc::new(mirror.clone());
    match Repository::open(target, &key()).await {
        Err(Error::NotFound { .. }) => {
            assert!(
                !keys_of(mirror).iter().any(|k| k.starts_with("snapshots/")),
                "snapshots in a mirror without config"
            );
            0
        }
        Err(e) => panic!("the interrupted mirror does not open: {}", e.chain()),
        Ok(repo) => {
            let report = repo.verify(ReadData::All).await.expect("verify");
            assert!(
                report.is_ok(),
                "an interrupted mirror shows damage to a reader: {:?} (objects: {:?})",
                report.problems,
                keys_of(mirror)
            );
            report.snapshots
        }
    }
}

/// A target over another that damages what it stores under one prefix, or refuses deletes
/// under one (as S3 Object Lock does).
#[derive(Debug)]
struct Faulty {
    inner: Arc<dyn BackupTarget>,
    corrupt_writes_under: Option<&'static str>,
    refuse_deletes_under: Option<&'static str>,
}

impl Faulty {
    fn over(inner: Arc<dyn BackupTarget>) -> Self {
        Faulty {
            inner,
            corrupt_writes_under: None,
            refuse_deletes_under: None,
        }
    }

    fn damage(&self, key: &str, mut data: Vec<u8>) -> Vec<u8> {
        if self
            .corrupt_writes_under
            .is_some_and(|p| key.starts_with(p))
            && !data.is_empty()
        {
            let mid = data.len() / 2;
            data[mid] ^= 0x55;
        }
        data
    }
}

#[async_trait]
impl BackupTarget for Faulty {
    async fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
        let data = self.damage(key, data);
        self.inner.put(key, data).await
    }
    async fn put_if_absent(&self, key: &str, data: Vec<u8>) -> Result<()> {
        let data = self.damage(key, data);
        self.inner.put_if_absent(key, data).await
    }
    async fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
        self.inner.get_range(key, range).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        if self
            .refuse_deletes_under
            .is_some_and(|p| key.starts_with(p))
        {
            return Err(Error::PermissionDenied {
                principal: "the test".into(),
                permission: format!("delete {key} (locked)"),
            });
        }
        self.inner.delete(key).await
    }
}

/// Forget every snapshot but the newest at `repo`'s target and prune twice (mark, then
/// delete), so the data only older snapshots used is gone from the source.
async fn forget_all_but_newest_and_prune(repo: &Repository) {
    let policy = RetentionPolicy {
        keep_last: Some(1),
        ..Default::default()
    };
    repo.forget(&policy, false).await.expect("forget");
    repo.prune(PruneOptions::default()).await.expect("prune 1");
    repo.prune(PruneOptions::default()).await.expect("prune 2");
}

#[tokio::test]
async fn a_local_mirror_copies_only_what_is_new_and_restores_and_drills_like_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("app");
    let source_target = Arc::new(LocalTarget::new(dir.path().join("repo")).unwrap());
    let mirror_target = Arc::new(LocalTarget::new(dir.path().join("mirror")).unwrap());
    let repo = Repository::init(source_target.clone(), &key(), options())
        .await
        .unwrap();
    write_data(&data, 1);
    let first = backup(&repo, &data).await;
    write_data(&data, 2);
    let second = backup(&repo, &data).await;

    let report = repo.mirror_to(mirror_target.clone()).await.unwrap();
    assert_eq!(report.snapshots_copied.len(), 2, "{report:?}");
    for kind in ["config", "keys", "data", "index", "snapshots"] {
        assert!(
            report.copied.contains_key(kind),
            "{kind} not copied: {report:?}"
        );
    }
    let listed = |t: &LocalTarget| {
        let t = t.clone();
        async move {
            t.list("")
                .await
                .unwrap()
                .into_iter()
                .filter(|m| !m.key.starts_with("locks/"))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(listed(&source_target).await, listed(&mirror_target).await);

    // Nothing new: nothing copied.
    let again = repo.mirror_to(mirror_target.clone()).await.unwrap();
    assert_eq!(again.objects_copied(), 0, "{again:?}");
    assert_eq!(again.unchanged as usize, listed(&source_target).await.len());

    // One more backup: only its objects go over.
    write_data(&data, 3);
    let third = backup(&repo, &data).await;
    let before: Vec<String> = listed(&mirror_target)
        .await
        .into_iter()
        .map(|m| m.key)
        .collect();
    let third_run = repo.mirror_to(mirror_target.clone()).await.unwrap();
    assert_eq!(third_run.snapshots_copied, vec![third.clone()]);
    let after = listed(&mirror_target).await;
    assert_eq!(
        third_run.objects_copied() as usize,
        after.len() - before.len(),
        "only new objects are copied: {third_run:?}"
    );
    assert_eq!(after, listed(&source_target).await);

    // The mirror is the same repository: same id, same password, same data.
    let mirror = Repository::open(mirror_target.clone(), &key())
        .await
        .unwrap();
    assert_eq!(mirror.id(), repo.id());
    let ids = |s: Vec<(String, deploykit_backup::Snapshot)>| {
        s.into_iter().map(|(id, _)| id).collect::<Vec<_>>()
    };
    assert_eq!(
        ids(mirror.snapshots().await.unwrap()),
        ids(repo.snapshots().await.unwrap())
    );
    let scratch = dir.path().join("scratch");
    for id in [&first, &second, &third] {
        let from_mirror = restored(&mirror, id, &scratch.join("m")).await;
        let from_source = restored(&repo, id, &scratch.join("s")).await;
        assert!(!from_mirror.is_empty());
        assert_eq!(from_mirror, from_source, "snapshot {id}");
    }
    // The newest restores to exactly the data as it is now.
    let newest = restored(&mirror, &third, &scratch.join("n")).await;
    let expected: BTreeMap<PathBuf, Vec<u8>> = files(&data)
        .into_iter()
        .map(|(p, c)| (Path::new("app").join(p), c))
        .collect();
    assert_eq!(newest, expected);

    let verify = mirror.verify(ReadData::All).await.unwrap();
    assert!(verify.is_ok(), "{:?}", verify.problems);
    let drill = mirror
        .drill(
            &scratch.join("drill"),
            DrillTargets::new(Duration::from_secs(3600), Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    assert_eq!(drill.snapshot, third);
    assert_eq!(drill.files, 4);
    assert!(drill.meets_targets(), "{drill:?}");
}

#[tokio::test]
async fn a_copy_killed_at_every_write_resumes_and_a_reader_only_ever_sees_whole_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("app");
    let source = MemoryTarget::new();
    let repo = Repository::init(Arc::new(source.clone()), &key(), options())
        .await
        .unwrap();
    write_data(&data, 1);
    backup(&repo, &data).await;
    write_data(&data, 2);
    backup(&repo, &data).await;

    let mirror = MemoryTarget::new();
    let dest: Arc<dyn BackupTarget> = Arc::new(mirror.clone());
    let mut runs = 0;
    let mut seen = Vec::new();
    let mut saw_data_without_snapshots = false;
    loop {
        runs += 1;
        assert!(runs < 500, "the mirror never finished");
        if runs == 6 {
            // The source moves on while the copy is interrupted.
            write_data(&data, 3);
            backup(&repo, &data).await;
        }
        // A kill after one more write: every later write of this run fails.
        mirror.fail_after(1);
        let outcome = repo.mirror_to(dest.clone()).await;
        mirror.heal();
        let snapshots = check_consistent(&mirror).await;
        seen.push(snapshots);
        let keys = keys_of(&mirror);
        if snapshots == 0 && keys.iter().any(|k| k.starts_with("data/")) {
            saw_data_without_snapshots = true;
        }
        match outcome {
            Ok(_) => break,
            Err(e) => assert!(e.is_retryable(), "{}", e.chain()),
        }
    }
    assert!(
        runs > 10,
        "each run copies about one object, so there are many: {runs}"
    );
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "snapshots appear one by one and never vanish: {seen:?}"
    );
    assert!(
        saw_data_without_snapshots,
        "data goes over before snapshots"
    );
    assert_eq!(*seen.last().unwrap(), 3);
    assert_eq!(mirrorable(&source), mirror.keys());
    let last = repo.mirror_to(dest.clone()).await.unwrap();
    assert_eq!(last.objects_copied(), 0);

    let reader = Repository::open(dest, &key()).await.unwrap();
    let (newest, _) = reader.snapshots().await.unwrap().pop().unwrap();
    let scratch = dir.path().join("scratch");
    assert_eq!(
        restored(&reader, &newest, &scratch.join("m")).await,
        restored(&repo, &newest, &scratch.join("s")).await
    );
}

#[tokio::test]
async fn data_pruned_at_the_source_leaves_the_mirror_after_the_snapshots_that_used_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("app");
    let source = MemoryTarget::new();
    let repo = Repository::init(Arc::new(source.clone()), &key(), options())
        .await
        .unwrap();
    write_data(&data, 1);
    let old = backup(&repo, &data).await;
    write_data(&data, 2);
    let new = backup(&repo, &data).await;
    let mirror = MemoryTarget::new();
    let dest: Arc<dyn BackupTarget> = Arc::new(mirror.clone());
    repo.mirror_to(dest.clone()).await.unwrap();
    let packs_before = keys_of(&mirror)
        .iter()
        .filter(|k| k.starts_with("data/"))
        .count();

    forget_all_but_newest_and_prune(&repo).await;
    let report = repo.mirror_to(dest.clone()).await.unwrap();
    assert_eq!(report.deleted["snapshots"].objects, 1, "{report:?}");
    assert!(report.deleted["data"].objects >= 1, "{report:?}");
    assert!(report.deleted.contains_key("index"), "{report:?}");
    assert!(report.kept.is_empty(), "{report:?}");
    assert_eq!(mirrorable(&source), mirror.keys());
    assert!(
        keys_of(&mirror)
            .iter()
            .filter(|k| k.starts_with("data/"))
            .count()
            < packs_before
    );
    let reader = Repository::open(dest, &key()).await.unwrap();
    assert!(reader.snapshot(&old).await.is_err());
    let verify = reader.verify(ReadData::All).await.unwrap();
    assert!(verify.is_ok(), "{:?}", verify.problems);
    let scratch = dir.path().join("scratch");
    assert_eq!(
        restored(&reader, &new, &scratch.join("m")).await,
        restored(&repo, &new, &scratch.join("s")).await
    );
}

#[tokio::test]
async fn a_snapshot_the_mirror_will_not_delete_keeps_its_data_readable_until_delete_is_forced() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("app");
    let source = MemoryTarget::new();
    let repo = Repository::init(Arc::new(source.clone()), &key(), options())
        .await
        .unwrap();
    write_data(&data, 1);
    let old = backup(&repo, &data).await;
    let scratch = dir.path().join("scratch");
    let old_files = restored(&repo, &old, &scratch.join("old")).await;
    write_data(&data, 2);
    backup(&repo, &data).await;
    let mirror = MemoryTarget::new();
    let mut locked = Faulty::over(Arc::new(mirror.clone()));
    locked.refuse_deletes_under = Some("snapshots/");
    let dest: Arc<dyn BackupTarget> = Arc::new(locked);
    repo.mirror_to(dest.clone()).await.unwrap();

    // Forget and prune at the source, the mirror running between the two prunes: the
    // source's second consolidated index supersedes the one that named the old packs.
    let policy = RetentionPolicy {
        keep_last: Some(1),
        ..Default::default()
    };
    repo.forget(&policy, false).await.unwrap();
    repo.prune(PruneOptions::default()).await.unwrap();
    let between = repo.mirror_to(dest.clone()).await.unwrap();
    assert_eq!(between.kept.len(), 1, "only the snapshot: {between:?}");
    repo.prune(PruneOptions::default()).await.unwrap();
    let report = repo.mirror_to(dest.clone()).await.unwrap();
    let kept: Vec<&str> = report.kept.iter().map(|k| k.key.as_str()).collect();
    assert!(
        kept.contains(&format!("snapshots/{old}").as_str()),
        "{report:?}"
    );
    assert!(
        kept.iter().any(|k| k.starts_with("data/")),
        "the locked snapshot's packs stay: {report:?}"
    );
    assert!(!report.deleted.contains_key("data"), "{report:?}");
    assert_eq!(
        report.mirror_indexes.len(),
        1,
        "the source's index no longer names the kept packs, so the mirror gets its own: {report:?}"
    );
    // The kept snapshot still restores from the mirror, and the mirror verifies.
    let reader = Repository::open(dest.clone(), &key()).await.unwrap();
    assert_eq!(
        restored(&reader, &old, &scratch.join("mirror-old")).await,
        old_files
    );
    let verify = reader.verify(ReadData::All).await.unwrap();
    assert!(verify.is_ok(), "{:?}", verify.problems);

    // Settled: a second run writes nothing new.
    let settled = repo.mirror_to(dest.clone()).await.unwrap();
    assert_eq!(settled.objects_copied(), 0, "{settled:?}");
    assert!(settled.mirror_indexes.is_empty(), "{settled:?}");

    // --delete removes the packs anyway (the snapshot itself stays locked).
    let forced = repo
        .mirror_to_with(
            dest.clone(),
            &MirrorOptions::builder().force_delete(true).build(),
        )
        .await
        .unwrap();
    assert!(forced.deleted["data"].objects >= 1, "{forced:?}");
    let kept: Vec<&str> = forced.kept.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(kept, [format!("snapshots/{old}").as_str()], "{forced:?}");
    let verify = reader.verify(ReadData::All).await.unwrap();
    assert!(
        !verify.is_ok(),
        "forced deletion leaves the locked snapshot without its data"
    );
}

#[tokio::test]
async fn damage_is_caught_in_the_source_in_a_copy_and_in_the_mirror() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("app");
    write_data(&data, 1);
    let source = MemoryTarget::new();
    let repo = Repository::init(Arc::new(source.clone()), &key(), options())
        .await
        .unwrap();
    backup(&repo, &data).await;

    // A mirror that stores packs wrongly: the read-back catches it, and no snapshot goes over.
    let bad_store = MemoryTarget::new();
    let mut faulty = Faulty::over(Arc::new(bad_store.clone()));
    faulty.corrupt_writes_under = Some("data/");
    let e = repo.mirror_to(Arc::new(faulty)).await.unwrap_err();
    assert!(
        matches!(&e, Error::Corrupt { what, .. } if what.starts_with("mirror object data/")),
        "{}",
        e.chain()
    );
    assert!(e.chain().contains("read back"), "{}", e.chain());
    assert!(
        !keys_of(&bad_store)
            .iter()
            .any(|k| k.starts_with("snapshots/"))
    );

    // A mirror damaged after the copy: a size change is seen and repaired by any run, a
    // flipped byte by a run that checks existing objects.
    let mirror = MemoryTarget::new();
    let dest: Arc<dyn BackupTarget> = Arc::new(mirror.clone());
    repo.mirror_to(dest.clone()).await.unwrap();
    let packs: Vec<String> = keys_of(&mirror)
        .into_iter()
        .filter(|k| k.starts_with("data/"))
        .collect();
    mirror.truncate(&packs[0], 10);
    mirror.corrupt(&packs[1], 5);
    let report = repo.mirror_to(dest.clone()).await.unwrap();
    assert_eq!(report.repaired, vec![packs[0].clone()]);
    let reader = Repository::open(dest.clone(), &key()).await.unwrap();
    assert!(!reader.verify(ReadData::All).await.unwrap().is_ok());
    let checked = repo
        .mirror_to_with(
            dest.clone(),
            &MirrorOptions::builder().check_existing(true).build(),
        )
        .await
        .unwrap();
    assert_eq!(checked.repaired, vec![packs[1].clone()]);
    let verify = reader.verify(ReadData::All).await.unwrap();
    assert!(verify.is_ok(), "{:?}", verify.problems);

    // A damaged source object is refused, not spread.
    let pack = keys_of(&source)
        .into_iter()
        .find(|k| k.starts_with("data/"))
        .unwrap();
    source.corrupt(&pack, 3);
    let fresh = MemoryTarget::new();
    let e = repo.mirror_to(Arc::new(fresh.clone())).await.unwrap_err();
    assert!(
        matches!(&e, Error::Corrupt { what, .. } if what.starts_with(&format!("source object {pack}"))),
        "{}",
        e.chain()
    );
    assert!(!keys_of(&fresh).contains(&pack));
    assert!(!keys_of(&fresh).iter().any(|k| k.starts_with("snapshots/")));
}

#[tokio::test]
async fn a_destination_holding_something_else_is_refused_and_a_dry_run_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("app");
    write_data(&data, 1);
    let repo = Repository::init(Arc::new(MemoryTarget::new()), &key(), options())
        .await
        .unwrap();
    backup(&repo, &data).await;

    let other = MemoryTarget::new();
    let other_repo = Repository::init(Arc::new(other.clone()), &key(), options())
        .await
        .unwrap();
    let e = repo.mirror_to(Arc::new(other.clone())).await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("mirror.destination") && text.contains(other_repo.id()),
        "{text}"
    );

    let unrelated = MemoryTarget::new();
    unrelated
        .put("photos/cat.jpg", b"meow".to_vec())
        .await
        .unwrap();
    let e = repo
        .mirror_to(Arc::new(unrelated.clone()))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("photos/cat.jpg"), "{e}");
    assert_eq!(keys_of(&unrelated), ["photos/cat.jpg"]);

    let empty = MemoryTarget::new();
    let dry = repo
        .mirror_to_with(
            Arc::new(empty.clone()),
            &MirrorOptions::builder().dry_run(true).build(),
        )
        .await
        .unwrap();
    assert!(dry.dry_run);
    assert!(dry.objects_copied() > 3, "{dry:?}");
    assert_eq!(dry.snapshots_copied.len(), 1);
    assert!(empty.keys().is_empty());
}

#[tokio::test]
async fn named_objects_are_mirrored_and_follow_their_deletion() {
    let repo = Repository::init(Arc::new(MemoryTarget::new()), &key(), options())
        .await
        .unwrap();
    let segment: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
    repo.put_named(
        "wal/000000010000000000000001",
        std::io::Cursor::new(segment.clone()),
    )
    .await
    .unwrap();
    let mirror = MemoryTarget::new();
    let dest: Arc<dyn BackupTarget> = Arc::new(mirror.clone());
    let report = repo.mirror_to(dest.clone()).await.unwrap();
    assert_eq!(report.copied["named"].objects, 1, "{report:?}");
    let reader = Repository::open(dest.clone(), &key()).await.unwrap();
    assert_eq!(
        reader
            .read_named("wal/000000010000000000000001")
            .await
            .unwrap(),
        segment
    );

    repo.delete_named("wal/000000010000000000000001")
        .await
        .unwrap();
    repo.prune(PruneOptions::default()).await.unwrap();
    repo.prune(PruneOptions::default()).await.unwrap();
    let report = repo.mirror_to(dest.clone()).await.unwrap();
    assert_eq!(report.deleted["named"].objects, 1, "{report:?}");
    assert!(report.deleted["data"].objects >= 1, "{report:?}");
    assert!(reader.list_named("").await.unwrap().is_empty());
    assert!(!keys_of(&mirror).iter().any(|k| k.starts_with("data/")));
}
