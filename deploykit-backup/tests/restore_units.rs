//! Restore reads files that lie close together in one pack with one ranged read and opens
//! their blobs in place: files that share blobs (duplicates), a file that repeats a chunk,
//! empty files, compressible and incompressible content, and files spread over packs all
//! come back bit for bit.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use deploykit_backup::{
    BackupKind, BackupRequest, RepoKey, RepoOptions, Repository, RestoreOptions,
};
use deploykit_testing::MemoryTarget;

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn text(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut i = seed;
    while out.len() < len {
        out.extend_from_slice(format!("{i} GET /api/items/{} 200 12ms\n", i % 97).as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// A new repository on `target` with a full backup of `data`: the repository and the
/// snapshot's id.
async fn full_backup(
    target: Arc<MemoryTarget>,
    options: RepoOptions,
    data: &Path,
) -> (Repository, String) {
    let repo = Repository::init(target, &RepoKey::passphrase("pw"), options)
        .await
        .unwrap();
    let (id, _) = repo
        .backup(
            BackupRequest::builder()
                .paths(vec![data.to_path_buf()])
                .kind(BackupKind::Full)
                .build(),
        )
        .await
        .unwrap();
    (repo, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_repeated_empty_and_spread_files_restore_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for d in ["a", "b", "c"] {
        std::fs::create_dir_all(data.join(d)).unwrap();
    }
    let chunk = noise(7, 5000);
    for i in 0..60u64 {
        let content = match i % 6 {
            0 => noise(i, 3000),
            1 => text(i, 3000),
            // The same content under many names, in several directories.
            2 => chunk.clone(),
            3 => text(1, 3000),
            // A chunk repeated inside one file.
            4 => [chunk.clone(), noise(i, 100), chunk.clone()].concat(),
            _ => Vec::new(),
        };
        let d = ["a", "b", "c"][i as usize % 3];
        std::fs::write(data.join(d).join(format!("f{i:02}")), content).unwrap();
    }
    // Larger than a pack: spread over several.
    std::fs::write(
        data.join("big"),
        [noise(99, 200_000), text(5, 200_000)].concat(),
    )
    .unwrap();
    let options = RepoOptions::builder()
        .chunk_min(1024)
        .chunk_avg(4096)
        .chunk_max(16384)
        .pack_size(64 * 1024)
        .kdf_cost((1024, 1))
        .build();
    let (repo, id) = full_backup(Arc::new(MemoryTarget::new()), options, &data).await;
    for parallelism in [1, 8] {
        let out = dir.path().join(format!("out{parallelism}"));
        let summary = repo
            .restore(
                &id,
                &out,
                &RestoreOptions::builder().parallelism(parallelism).build(),
            )
            .await
            .unwrap();
        assert_eq!(summary.files, 61);
        assert_eq!(files(&out.join("data")), files(&data));
    }
    // Only some files: blobs of the others lie between them in the packs.
    let out = dir.path().join("some");
    repo.restore(
        &id,
        &out,
        &RestoreOptions::builder()
            .include(vec!["data/b".into(), "data/big".into()])
            .build(),
    )
    .await
    .unwrap();
    let restored = files(&out.join("data"));
    let expected: BTreeMap<String, Vec<u8>> = files(&data)
        .into_iter()
        .filter(|(k, _)| k.starts_with("b/") || k == "big")
        .collect();
    assert_eq!(restored, expected);
}

/// A large file (a database table) spread over several packs comes back bit for bit, beside
/// small files, whatever the parallelism; a damaged blob in its middle, or a truncated pack,
/// fails the restore naming what is wrong, never a file with a hole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_restores_bit_for_bit_and_damage_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // 20 MiB over several packs, compressible and not, an odd length.
    let large = [
        noise(1, 8 << 20),
        text(2, 8 << 20),
        noise(3, (4 << 20) + 4321),
    ]
    .concat();
    std::fs::write(data.join("table"), &large).unwrap();
    std::fs::write(data.join("small"), text(9, 5000)).unwrap();
    let target = Arc::new(MemoryTarget::new());
    let options = RepoOptions::builder()
        .pack_size(2 << 20)
        .kdf_cost((1024, 1))
        .build();
    let (repo, id) = full_backup(target.clone(), options, &data).await;
    for parallelism in [1, 8] {
        let out = dir.path().join(format!("out{parallelism}"));
        let summary = repo
            .restore(
                &id,
                &out,
                &RestoreOptions::builder().parallelism(parallelism).build(),
            )
            .await
            .unwrap();
        assert_eq!(summary.files, 2);
        let restored = std::fs::read(out.join("data/table")).unwrap();
        assert!(restored == large, "the large file differs after restore");
        assert_eq!(
            std::fs::read(out.join("data/small")).unwrap(),
            text(9, 5000)
        );
    }
    // Damage in the middle of a pack of the large file.
    let packs: Vec<(String, usize)> = target
        .keys()
        .into_iter()
        .filter(|(_, size)| *size > (1 << 20))
        .collect();
    assert!(packs.len() >= 3, "{packs:?}");
    let (key, size) = &packs[packs.len() / 2];
    target.corrupt(key, size / 2);
    let err = repo
        .restore(&id, &dir.path().join("damaged"), &RestoreOptions::default())
        .await
        .expect_err("a damaged blob fails the restore");
    let text = err.chain();
    assert!(
        matches!(err, deploykit_core::Error::Corrupt { .. }) && text.contains("blob"),
        "{text}"
    );
    target.corrupt(key, size / 2);
    // A truncated pack.
    target.truncate(key, size / 3);
    let err = repo
        .restore(
            &id,
            &dir.path().join("truncated"),
            &RestoreOptions::default(),
        )
        .await
        .expect_err("a truncated pack fails the restore");
    assert!(err.chain().contains("truncated"), "{}", err.chain());
}

/// A large file whose writes fail midway (its path leads to /dev/full) fails the restore
/// with the write's error, naming the file, and without the decoding side waiting forever
/// for a writer that stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_that_cannot_be_written_fails_the_restore_naming_it() {
    if !Path::new("/dev/full").exists() {
        eprintln!("skipped: no /dev/full on this machine");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("table"),
        [noise(4, 6 << 20), text(5, 6 << 20)].concat(),
    )
    .unwrap();
    let target = Arc::new(MemoryTarget::new());
    let options = RepoOptions::builder()
        .pack_size(1 << 20)
        .kdf_cost((1024, 1))
        .build();
    let (repo, id) = full_backup(target, options, &data).await;
    let out = dir.path().join("out");
    std::fs::create_dir_all(out.join("data")).unwrap();
    std::os::unix::fs::symlink("/dev/full", out.join("data/table")).unwrap();
    let restored = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        repo.restore(&id, &out, &RestoreOptions::default()),
    )
    .await
    .expect("the restore ends");
    let err = restored.expect_err("writes to /dev/full fail");
    let text = err.chain();
    assert!(text.contains("data/table"), "{text}");
    assert!(
        text.to_lowercase().contains("no space left"),
        "the write's own error: {text}"
    );
}
