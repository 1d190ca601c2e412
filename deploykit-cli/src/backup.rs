//! `deploykit backup`, `restore` and `drill`: the backup engine on a local repository.
//!
//! The repository's passphrase comes from `DEPLOYKIT_REPO_PASSWORD` (never from an argument,
//! which other users could read in the process list). The environment's `backup` policy in
//! `deploykit.toml` supplies retention and the RTO/RPO targets a drill is measured against.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use deploykit_backup::{
    BackupKind, BackupRequest, DrillTargets, LocalTarget, RepoKey, RepoOptions, Repository,
    RestoreOptions,
};
use deploykit_core::{Error, Result};
use serde_json::json;

use crate::context::Context;

/// Arguments of `deploykit backup`.
#[derive(Args, Debug)]
pub(crate) struct BackupArgs {
    /// The repository directory (created and initialised on first use).
    #[arg(long)]
    repo: PathBuf,
    /// Full, incremental or differential.
    #[arg(long, default_value = "incremental")]
    kind: String,
    /// The environment whose retention applies after the backup.
    #[arg(long, short)]
    env: Option<String>,
    /// Paths to back up.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

/// Arguments of `deploykit restore`.
#[derive(Args, Debug)]
pub(crate) struct RestoreArgs {
    /// The repository directory.
    #[arg(long)]
    repo: PathBuf,
    /// The snapshot id (or a unique prefix; default: the newest).
    #[arg(long)]
    snapshot: Option<String>,
    /// Where to restore to.
    #[arg(long)]
    to: PathBuf,
}

/// Arguments of `deploykit drill`.
#[derive(Args, Debug)]
pub(crate) struct DrillArgs {
    /// The repository directory.
    #[arg(long)]
    repo: PathBuf,
    /// The environment whose RTO/RPO targets apply.
    #[arg(long, short)]
    env: Option<String>,
    /// A scratch directory to restore into (emptied first).
    #[arg(long)]
    scratch: PathBuf,
}

fn key() -> Result<RepoKey> {
    match std::env::var("DEPLOYKIT_REPO_PASSWORD") {
        Ok(p) if !p.is_empty() => Ok(RepoKey::passphrase(p)),
        _ => Err(Error::invalid(
            "DEPLOYKIT_REPO_PASSWORD",
            "set it to the repository's passphrase",
        )),
    }
}

async fn open(repo: &PathBuf, create: bool) -> Result<Repository> {
    let exists = repo.join("config").exists();
    let target = Arc::new(LocalTarget::new(repo)?);
    if !exists && create {
        return Repository::init(target, &key()?, RepoOptions::default()).await;
    }
    Repository::open(target, &key()?).await
}

pub(crate) async fn backup(ctx: &Context, args: BackupArgs) -> Result<ExitCode> {
    let kind = match args.kind.as_str() {
        "full" => BackupKind::Full,
        "incremental" => BackupKind::Incremental,
        "differential" => BackupKind::Differential,
        other => {
            return Err(Error::invalid(
                "--kind",
                format!("{other:?}: expected full, incremental or differential"),
            ));
        }
    };
    let repo = open(&args.repo, true).await?;
    let (id, saved) = repo
        .backup(
            BackupRequest::builder()
                .paths(args.paths)
                .kind(kind)
                .build(),
        )
        .await?;
    let mut forgotten = 0;
    if let Some(env) = args.env.as_deref()
        && let Some(policy) = ctx.config()?.backup_policy(env)?
    {
        let decisions = repo.forget(&policy.retention, false).await?;
        forgotten = decisions.iter().filter(|d| !d.keep).count();
    }
    let s = &saved.summary;
    ctx.print(
        format!(
            "snapshot {id}: {} files, read {} bytes, stored {} bytes; {forgotten} snapshots forgotten by retention",
            s.files, s.bytes_read, s.bytes_stored
        ),
        json!({ "snapshot": id, "files": s.files, "bytes_read": s.bytes_read, "bytes_stored": s.bytes_stored, "forgotten": forgotten }),
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn restore(ctx: &Context, args: RestoreArgs) -> Result<ExitCode> {
    let repo = open(&args.repo, false).await?;
    let id = match args.snapshot {
        Some(id) => repo.snapshot(&id).await?.0,
        None => {
            let snapshots = repo.snapshots().await?;
            let newest = snapshots
                .into_iter()
                .max_by_key(|(_, s)| s.time)
                .ok_or_else(|| Error::not_found("a snapshot in the repository"))?;
            newest.0
        }
    };
    let summary = repo
        .restore(&id, &args.to, &RestoreOptions::default())
        .await?;
    ctx.print(
        format!(
            "restored snapshot {id} to {}: {} files, {} bytes",
            args.to.display(),
            summary.files,
            summary.bytes
        ),
        json!({ "snapshot": id, "files": summary.files, "bytes": summary.bytes }),
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn drill(ctx: &Context, args: DrillArgs) -> Result<ExitCode> {
    let targets = match args.env.as_deref() {
        Some(env) => ctx
            .config()?
            .backup_policy(env)?
            .map(|p| p.targets)
            .unwrap_or_default(),
        None => DrillTargets::default(),
    };
    let repo = open(&args.repo, false).await?;
    let report = repo.drill(&args.scratch, targets).await?;
    let met = report.meets_targets();
    ctx.print(
        format!(
            "drill of snapshot {}: RTO {:.2?} (target {:?}), RPO {:.2?} (target {:?}): {}",
            report.snapshot,
            report.rto,
            report.targets.rto,
            report.rpo,
            report.targets.rpo,
            if met { "met" } else { "MISSED" }
        ),
        json!({
            "snapshot": report.snapshot,
            "rto_ms": report.rto.as_millis() as u64,
            "rpo_ms": report.rpo.as_millis() as u64,
            "files": report.files,
            "bytes": report.bytes,
            "met": met,
        }),
    );
    Ok(if met {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
