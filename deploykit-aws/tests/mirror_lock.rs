//! Mirrors on S3 and S3 Object Lock, against moto (`bash .ci/with-moto cargo test -p
//! deploykit-aws --test mirror_lock`, which sets `DEPLOYKIT_S3_ENDPOINT`).
//!
//! What moto 5.2.5 does with Object Lock: it stores the mode and retain-until date sent with
//! PutObject, returns them on HeadObject, and refuses to delete a retained *version* (403
//! AccessDenied) — so the retention below is enforced by the server, not only checked by the
//! client. It drops the retention sent with CreateMultipartUpload (the target then sets it
//! with PutObjectRetention, which moto supports), has no GetObjectRetention call (the target
//! reads retention from HeadObject), and, like S3, lets a delete without a version id add a
//! delete marker (the locked version stays).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use deploykit_aws::{LockMode, ObjectLock, S3Target};
use deploykit_backup::{
    BackupKind, BackupRequest, DrillTargets, LocalTarget, PruneOptions, ReadData, RepoKey,
    RepoOptions, Repository, RestoreOptions, RetentionPolicy,
};
use deploykit_core::backup::{BackupTarget, ObjectMeta};
use deploykit_core::{Error, Result};

fn endpoint() -> String {
    std::env::var("DEPLOYKIT_S3_ENDPOINT").expect(
        "DEPLOYKIT_S3_ENDPOINT is not set: run `bash .ci/with-moto cargo test -p deploykit-aws \
         --test mirror_lock`, which starts moto on loopback",
    )
}

fn client() -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(endpoint())
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .build(),
    )
}

/// A fresh bucket for one test, with Object Lock enabled if `locked`.
async fn bucket(name: &str, locked: bool) -> String {
    let bucket = format!("dk-{name}-{}", std::process::id()).replace('_', "-");
    client()
        .create_bucket()
        .bucket(&bucket)
        .object_lock_enabled_for_bucket(locked)
        .send()
        .await
        .expect("create bucket");
    bucket
}

fn builder(bucket: &str) -> deploykit_aws::S3Builder {
    S3Target::builder(bucket)
        .endpoint_url(endpoint())
        .force_path_style(true)
        .region("us-east-1")
        .credentials("testing", "testing")
        .multipart_threshold(5 << 20)
        .part_size(5 << 20)
}

fn options() -> RepoOptions {
    RepoOptions::builder()
        .chunk_min(16 * 1024)
        .chunk_avg(64 * 1024)
        .chunk_max(256 * 1024)
        .pack_size(1 << 20)
        .kdf_cost((1024, 1))
        .build()
}

fn key() -> RepoKey {
    RepoKey::passphrase("pw")
}

/// Replace the files under `dir` with six of 120 KB, different for every `seed`.
fn write_data(dir: &Path, seed: u64) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for i in 0..6 {
        let content: Vec<u8> = (0..120_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(dir.join(format!("f{i}")), content).unwrap();
    }
}

fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.insert(
                    path.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&path).unwrap(),
                );
            }
        }
    }
    out
}

async fn backup(repo: &Repository, data: &Path) -> String {
    repo.backup(
        BackupRequest::builder()
            .paths(vec![data.to_path_buf()])
            .kind(BackupKind::Incremental)
            .build(),
    )
    .await
    .expect("backup")
    .0
}

async fn restored(repo: &Repository, id: &str, out: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    repo.restore(id, out, &RestoreOptions::default())
        .await
        .expect("restore");
    files(out)
}

async fn listing(target: &dyn BackupTarget) -> Vec<ObjectMeta> {
    target
        .list("")
        .await
        .unwrap()
        .into_iter()
        .filter(|m| !m.key.starts_with("locks/"))
        .collect()
}

/// A target whose writes start failing after a budget runs out (a killed process).
#[derive(Debug)]
struct Killed {
    inner: Arc<dyn BackupTarget>,
    writes_left: AtomicU64,
}

impl Killed {
    fn check(&self, key: &str) -> Result<()> {
        let left = self.writes_left.load(Ordering::SeqCst);
        if left == 0 {
            return Err(Error::transient(format!("write {key}"), "killed"));
        }
        self.writes_left.store(left - 1, Ordering::SeqCst);
        Ok(())
    }
}

#[async_trait]
impl BackupTarget for Killed {
    async fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
        self.check(key)?;
        self.inner.put(key, data).await
    }
    async fn put_if_absent(&self, key: &str, data: Vec<u8>) -> Result<()> {
        self.check(key)?;
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
        self.check(key)?;
        self.inner.delete(key).await
    }
}

#[tokio::test]
async fn a_local_repository_mirrors_to_s3_incrementally_resumes_after_a_kill_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("app");
    let source = Arc::new(LocalTarget::new(dir.path().join("repo")).unwrap());
    let repo = Repository::init(source.clone(), &key(), options())
        .await
        .unwrap();
    write_data(&data, 1);
    backup(&repo, &data).await;

    let bucket = bucket("mirror", false).await;
    let s3: Arc<dyn BackupTarget> =
        Arc::new(builder(&bucket).prefix("mirror").build().await.unwrap());
    // Killed after three writes: keys, config and one pack at most.
    let killed = Arc::new(Killed {
        inner: s3.clone(),
        writes_left: AtomicU64::new(3),
    });
    let e = repo.mirror_to(killed).await.unwrap_err();
    assert!(e.is_retryable(), "{}", e.chain());
    let partial = Repository::open(s3.clone(), &key()).await.unwrap();
    assert!(
        partial.snapshots().await.unwrap().is_empty(),
        "no snapshot before its data"
    );
    let first = repo.mirror_to(s3.clone()).await.unwrap();
    assert_eq!(first.snapshots_copied.len(), 1, "{first:?}");
    assert!(
        first.unchanged >= 2,
        "the killed run's objects stay: {first:?}"
    );
    assert_eq!(listing(source.as_ref()).await, listing(s3.as_ref()).await);

    write_data(&data, 2);
    let second_id = backup(&repo, &data).await;
    let before = listing(s3.as_ref()).await.len();
    let second = repo.mirror_to(s3.clone()).await.unwrap();
    assert_eq!(second.snapshots_copied, vec![second_id.clone()]);
    assert_eq!(
        second.objects_copied() as usize,
        listing(s3.as_ref()).await.len() - before
    );
    assert_eq!(listing(source.as_ref()).await, listing(s3.as_ref()).await);
    assert_eq!(
        repo.mirror_to(s3.clone()).await.unwrap().objects_copied(),
        0
    );

    let mirror = Repository::open(s3.clone(), &key()).await.unwrap();
    assert_eq!(mirror.id(), repo.id());
    assert_eq!(
        restored(&mirror, &second_id, &dir.path().join("m")).await,
        restored(&repo, &second_id, &dir.path().join("s")).await
    );
    let verify = mirror.verify(ReadData::All).await.unwrap();
    assert!(verify.is_ok(), "{:?}", verify.problems);
    let drill = mirror
        .drill(
            &dir.path().join("drill"),
            DrillTargets::new(Duration::from_secs(3600), Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    assert_eq!(drill.files, 6);
    assert!(drill.meets_targets(), "{drill:?}");
}

#[tokio::test]
async fn objects_written_with_object_lock_are_retained_and_deleting_them_fails_clearly() {
    let bucket = bucket("lock", true).await;
    let target = builder(&bucket)
        .prefix("repo")
        .object_lock(ObjectLock::governance(2).exempt_prefix("locks/"))
        .build()
        .await
        .unwrap();
    assert_eq!(target.object_lock().unwrap().mode(), LockMode::Governance);
    let before = SystemTime::now();
    target
        .put_if_absent("snapshots/abc", b"snapshot".to_vec())
        .await
        .unwrap();
    let retention = target
        .retention("snapshots/abc")
        .await
        .unwrap()
        .expect("retention sent and stored");
    assert_eq!(retention.mode, LockMode::Governance);
    let two_days = Duration::from_secs(2 * 86_400);
    assert!(
        retention.retain_until >= before + two_days - Duration::from_secs(2)
            && retention.retain_until <= SystemTime::now() + two_days + Duration::from_secs(2),
        "{retention:?}"
    );

    // Deleting through the target fails, names the object and the lock, and leaves it.
    let e = target.delete("snapshots/abc").await.unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, Error::PermissionDenied { .. }), "{text}");
    assert!(
        text.contains(&format!("s3://{bucket}/repo/snapshots/abc"))
            && text.contains("Object Lock (GOVERNANCE)")
            && text.contains("until"),
        "{text}"
    );
    assert_eq!(target.get("snapshots/abc").await.unwrap(), b"snapshot");

    // The server enforces it too: deleting the version directly is refused.
    let head = client()
        .head_object()
        .bucket(&bucket)
        .key("repo/snapshots/abc")
        .send()
        .await
        .unwrap();
    let refused = client()
        .delete_object()
        .bucket(&bucket)
        .key("repo/snapshots/abc")
        .version_id(head.version_id().unwrap())
        .send()
        .await;
    assert!(refused.is_err(), "moto deleted a retained version");

    // An exempt key carries no retention and deletes for good (no version left behind).
    target.put("locks/1", b"lock".to_vec()).await.unwrap();
    target.put("locks/1", b"refreshed".to_vec()).await.unwrap();
    assert_eq!(target.retention("locks/1").await.unwrap(), None);
    target.delete("locks/1").await.unwrap();
    assert!(matches!(
        target.get("locks/1").await,
        Err(Error::NotFound { .. })
    ));
    let versions = client()
        .list_object_versions()
        .bucket(&bucket)
        .prefix("repo/locks/1")
        .send()
        .await
        .unwrap();
    assert!(versions.versions().is_empty() && versions.delete_markers().is_empty());

    // Compliance mode, and a multipart object: both retained.
    let compliance = builder(&bucket)
        .prefix("c")
        .object_lock(ObjectLock::compliance(1))
        .build()
        .await
        .unwrap();
    let big: Vec<u8> = (0..(11u32 << 20)).map(|i| (i % 253) as u8).collect();
    compliance
        .put_if_absent("data/ab/big", big.clone())
        .await
        .unwrap();
    assert_eq!(compliance.get("data/ab/big").await.unwrap(), big);
    let r = compliance.retention("data/ab/big").await.unwrap().unwrap();
    assert_eq!(r.mode, LockMode::Compliance);
    let e = compliance.delete("data/ab/big").await.unwrap_err();
    assert!(e.to_string().contains("COMPLIANCE"), "{e}");
}

#[tokio::test]
async fn object_lock_on_a_bucket_without_it_is_refused_at_build() {
    let bucket = bucket("nolock", false).await;
    let e = builder(&bucket)
        .object_lock(ObjectLock::governance(1))
        .build()
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("s3.object_lock") && text.contains(&bucket),
        "{text}"
    );
    let e = builder(&bucket)
        .object_lock(ObjectLock::governance(0))
        .build()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("s3.object_lock.days"), "{e}");
}

#[tokio::test]
async fn a_mirror_under_object_lock_keeps_what_the_source_forgot_and_it_stays_restorable() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("app");
    let repo = Repository::init(
        Arc::new(LocalTarget::new(dir.path().join("repo")).unwrap()),
        &key(),
        options(),
    )
    .await
    .unwrap();
    write_data(&data, 1);
    let old = backup(&repo, &data).await;
    let old_files = restored(&repo, &old, &dir.path().join("old")).await;
    write_data(&data, 2);
    backup(&repo, &data).await;

    let bucket = bucket("lockedmirror", true).await;
    let s3: Arc<dyn BackupTarget> = Arc::new(
        builder(&bucket)
            .object_lock(ObjectLock::governance(1))
            .build()
            .await
            .unwrap(),
    );
    repo.mirror_to(s3.clone()).await.unwrap();

    // A client that forgets everything and prunes (a mistake, or stolen credentials).
    let policy = RetentionPolicy {
        keep_last: Some(1),
        ..Default::default()
    };
    repo.forget(&policy, false).await.unwrap();
    repo.prune(PruneOptions::default()).await.unwrap();
    repo.prune(PruneOptions::default()).await.unwrap();
    let report = repo.mirror_to(s3.clone()).await.unwrap();
    assert!(
        report
            .kept
            .iter()
            .any(|k| k.key == format!("snapshots/{old}") && k.reason.contains("Object Lock")),
        "{report:?}"
    );
    assert!(
        report.deleted.is_empty(),
        "everything there is locked: {report:?}"
    );

    let mirror = Repository::open(s3.clone(), &key()).await.unwrap();
    assert_eq!(
        restored(&mirror, &old, &dir.path().join("from-mirror")).await,
        old_files
    );
    let verify = mirror.verify(ReadData::All).await.unwrap();
    assert!(verify.is_ok(), "{:?}", verify.problems);
}
