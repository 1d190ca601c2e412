//! Backup and restore: a generated application directory (and a database dump from a
//! command) backed up to an encrypted local repository — full, then incremental — retention
//! applied, verified with a full read, restored to a new directory and compared, and a
//! disaster-recovery drill that measures RTO and RPO.
//!
//! Run it with `cargo run -p deploykit-examples --example backup_restore`. Everything lives
//! in a temporary directory that is removed at the end. It exits non-zero if anything it
//! claims does not hold.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use deploykit_backup::{
    BackupKind, BackupRequest, CommandSource, DrillTargets, LocalTarget, PruneOptions, ReadData,
    RepoKey, RepoOptions, Repository, RestoreOptions, RetentionPolicy,
};
use deploykit_examples::exit_code;

type Error = Box<dyn std::error::Error>;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    exit_code("backup_restore", run().await)
}

/// An application directory: logs (compressible), uploads (incompressible), many small
/// config files.
fn generate(root: &Path) -> std::io::Result<u64> {
    let mut total = 0u64;
    let mut put = |path: &Path, data: &[u8]| -> std::io::Result<()> {
        std::fs::create_dir_all(path.parent().expect("has a parent"))?;
        std::fs::write(path, data)?;
        total += data.len() as u64;
        Ok(())
    };
    for day in 0..5 {
        let log: String = (0..40_000)
            .map(|i| {
                format!(
                    "2026-11-{:02}T10:{:02}:00Z GET /api/orders/{i} 200 12ms\n",
                    20 + day,
                    i % 60
                )
            })
            .collect();
        put(&root.join(format!("logs/access-{day}.log")), log.as_bytes())?;
    }
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for n in 0..8 {
        let blob: Vec<u8> = (0..1_500_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        put(&root.join(format!("uploads/image-{n}.jpg")), &blob)?;
    }
    for n in 0..300 {
        put(
            &root.join(format!("config/service-{}/settings-{n}.toml", n % 12)),
            format!("[service]\nname = \"svc-{n}\"\nreplicas = {}\n", n % 5 + 1).as_bytes(),
        )?;
    }
    Ok(total)
}

fn same_tree(a: &Path, b: &Path) -> std::io::Result<bool> {
    for entry in std::fs::read_dir(a)? {
        let entry = entry?;
        let other = b.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            if !same_tree(&entry.path(), &other)? {
                return Ok(false);
            }
        } else if std::fs::read(entry.path())? != std::fs::read(&other)? {
            return Ok(false);
        }
    }
    Ok(std::fs::read_dir(a)?.count() == std::fs::read_dir(b)?.count())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

async fn run() -> Result<bool, Error> {
    let mut holds = true;
    let work =
        std::env::temp_dir().join(format!("deploykit-backup-example-{}", std::process::id()));
    let app = work.join("app");
    let size = generate(&app)?;
    println!(
        "generated {} ({:.1} MiB, 313 files)",
        app.display(),
        mib(size)
    );

    let target = Arc::new(LocalTarget::new(work.join("repository"))?);
    let key = RepoKey::passphrase("correct horse battery staple");
    let repo = Repository::init(target.clone(), &key, RepoOptions::default()).await?;
    println!(
        "repository {} (encrypted, Argon2id passphrase)\n",
        repo.id()
    );
    let dump = Arc::new(CommandSource::new(
        "orders.sql",
        [
            "sh",
            "-c",
            "for i in $(seq 1 5000); do echo \"INSERT INTO orders VALUES ($i, 'paid');\"; done",
        ],
    )?);
    let request = |kind| {
        BackupRequest::builder()
            .paths(vec![app.clone()])
            .sources(vec![dump.clone()])
            .kind(kind)
            .build()
    };

    let started = Instant::now();
    let (full, s) = repo.backup(request(BackupKind::Full)).await?;
    println!(
        "full backup        {}  {} files, read {:.1} MiB, stored {:.1} MiB in {:.2?}",
        &full[..12],
        s.summary.files,
        mib(s.summary.bytes_read),
        mib(s.summary.bytes_stored),
        started.elapsed()
    );

    // A day passes: one log grows, one config changes.
    std::fs::write(
        app.join("logs/access-5.log"),
        "2026-11-25T10:00:00Z GET /api/orders/1 200 9ms\n".repeat(10_000),
    )?;
    std::fs::write(
        app.join("config/service-0/settings-0.toml"),
        "[service]\nname = \"svc-0\"\nreplicas = 9\n",
    )?;
    let started = Instant::now();
    let (incr, s) = repo.backup(request(BackupKind::Incremental)).await?;
    println!(
        "incremental backup {}  {} files, read {} of them ({:.1} MiB), stored {:.2} MiB in {:.2?}",
        &incr[..12],
        s.summary.files,
        s.summary.files_read,
        mib(s.summary.bytes_read),
        mib(s.summary.bytes_stored),
        started.elapsed()
    );
    holds &= s.summary.files_read == 3; // the two changed files and the dump

    let policy = RetentionPolicy {
        keep_last: Some(1),
        ..Default::default()
    };
    for d in repo.forget(&policy, false).await? {
        println!(
            "retention          {}  {}  {}",
            &d.id[..12],
            if d.keep { "keep  " } else { "forget" },
            d.reasons.join(", ")
        );
    }
    let pruned = repo.prune(PruneOptions::default()).await?;
    println!(
        "prune              marked {} packs for deletion (deleted by a later prune once no backup predates the mark)",
        pruned.marked
    );

    let started = Instant::now();
    let report = repo.verify(ReadData::All).await?;
    println!(
        "verify (full read) {} snapshots, {} packs, {:.1} MiB read: {} in {:.2?}",
        report.snapshots,
        report.packs_read,
        mib(report.bytes_read),
        if report.is_ok() {
            "no problems"
        } else {
            "PROBLEMS"
        },
        started.elapsed()
    );
    holds &= report.is_ok();

    let restored = work.join("restored");
    let started = Instant::now();
    let summary = repo
        .restore(&incr, &restored, &RestoreOptions::default())
        .await?;
    let identical = same_tree(&app, &restored.join("app"))?;
    println!(
        "restore            {} files, {:.1} MiB in {:.2?}; identical to the source: {identical}",
        summary.files,
        mib(summary.bytes),
        started.elapsed()
    );
    holds &= identical
        && std::fs::read_to_string(restored.join("orders.sql"))?
            .lines()
            .count()
            == 5000;

    let drill = repo
        .drill(&work.join("scratch"), DrillTargets::default())
        .await?;
    println!(
        "\nDR drill           snapshot {}: RTO {:.2?} (target {:?}), RPO {:.2?} (target {:?}): {}",
        &drill.snapshot[..12],
        drill.rto,
        drill.targets.rto,
        drill.rpo,
        drill.targets.rpo,
        if drill.meets_targets() {
            "met"
        } else {
            "MISSED"
        }
    );
    holds &= drill.meets_targets();
    std::fs::remove_dir_all(&work)?;
    Ok(holds)
}
