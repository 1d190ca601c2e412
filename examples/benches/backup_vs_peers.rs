//! deploykit's backup engine, one step per process, for `bench/backup-vs-peers.sh` (which runs
//! the same steps with restic and borgbackup and compares them).
//!
//! Run by hand, not in CI:
//!
//! ```text
//! DEPLOYKIT_PASSWORD=... cargo bench -p deploykit-examples --bench backup_vs_peers -- init <repo-dir>
//! DEPLOYKIT_PASSWORD=... cargo bench -p deploykit-examples --bench backup_vs_peers -- backup <repo-dir> <source-dir> <full|incremental>
//! DEPLOYKIT_PASSWORD=... cargo bench -p deploykit-examples --bench backup_vs_peers -- restore <repo-dir> <target-dir>
//! ```
//!
//! Each command prints one line of `key=value` pairs (`seconds` is the time inside the
//! engine call, without process start-up or opening the repository; the script measures the
//! whole process itself). `restore` restores the latest snapshot.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use deploykit_backup::{
    BackupKind, BackupRequest, LocalTarget, RepoKey, RepoOptions, Repository, RestoreOptions,
};

const USAGE: &str = "usage: backup_vs_peers init <repo-dir>
       backup_vs_peers backup <repo-dir> <source-dir> <full|incremental>
       backup_vs_peers restore <repo-dir> <target-dir>
The passphrase is read from DEPLOYKIT_PASSWORD.";

type BoxError = Box<dyn std::error::Error>;

fn key() -> Result<RepoKey, BoxError> {
    let passphrase = std::env::var("DEPLOYKIT_PASSWORD")
        .map_err(|_| "set DEPLOYKIT_PASSWORD to the repository passphrase")?;
    Ok(RepoKey::passphrase(passphrase))
}

fn target(repo: &str) -> Result<Arc<LocalTarget>, BoxError> {
    Ok(Arc::new(LocalTarget::new(repo)?))
}

async fn open(repo: &str) -> Result<Repository, BoxError> {
    Ok(Repository::open(target(repo)?, &key()?).await?)
}

async fn run(args: &[String]) -> Result<(), BoxError> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["init", repo] => {
            let start = Instant::now();
            let repo = Repository::init(target(repo)?, &key()?, RepoOptions::default()).await?;
            println!(
                "seconds={:.6} id={}",
                start.elapsed().as_secs_f64(),
                repo.id()
            );
        }
        ["backup", repo, source, kind] => {
            let kind = match *kind {
                "full" => BackupKind::Full,
                "incremental" => BackupKind::Incremental,
                other => return Err(format!("unknown backup kind {other:?}\n{USAGE}").into()),
            };
            let repo = open(repo).await?;
            let request = BackupRequest::builder()
                .paths(vec![PathBuf::from(source)])
                .kind(kind)
                .build();
            let start = Instant::now();
            let (id, snapshot) = repo.backup(request).await?;
            let s = &snapshot.summary;
            println!(
                "seconds={:.6} snapshot={id} files={} files_read={} bytes_read={} stored={}",
                start.elapsed().as_secs_f64(),
                s.files,
                s.files_read,
                s.bytes_read,
                s.bytes_stored
            );
        }
        ["restore", repo, target_dir] => {
            let repo = open(repo).await?;
            let start = Instant::now();
            let (id, _) = repo
                .snapshots()
                .await?
                .pop()
                .ok_or("the repository has no snapshots")?;
            let summary = repo
                .restore(&id, &PathBuf::from(target_dir), &RestoreOptions::default())
                .await?;
            println!(
                "seconds={:.6} snapshot={id} files={} dirs={} bytes={}",
                start.elapsed().as_secs_f64(),
                summary.files,
                summary.dirs,
                summary.bytes
            );
        }
        _ => return Err(USAGE.into()),
    }
    Ok(())
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench` (and may pass other flags) to harness-less benches.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("backup_vs_peers: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut message = e.to_string();
            let mut source = e.source();
            while let Some(s) = source {
                message.push_str(": ");
                message.push_str(&s.to_string());
                source = s.source();
            }
            eprintln!("backup_vs_peers: {message}");
            ExitCode::FAILURE
        }
    }
}
