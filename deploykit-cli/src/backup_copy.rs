//! `deploykit backup copy --repo SRC --to DEST`: mirror a repository to a second place (a
//! directory or `s3://bucket/prefix`), incrementally and verified, without re-encrypting.
//!
//! S3 locations use the AWS SDK's usual settings: credentials, `AWS_REGION`, and
//! `AWS_ENDPOINT_URL` for S3-compatible stores (MinIO, R2, Ceph, moto), which are then
//! addressed path-style (as is any store with `DEPLOYKIT_S3_PATH_STYLE=1`). The passphrase is
//! `DEPLOYKIT_REPO_PASSWORD`, as for every backup command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use deploykit_aws::{LockMode, ObjectLock, S3Target};
use deploykit_backup::{LocalTarget, MirrorOptions, MirrorReport, RepoKey, Repository};
use deploykit_config::S3Location;
use deploykit_core::{BackupTarget, Error, Result};
use serde_json::json;

use crate::context::Context;

/// Arguments of `deploykit backup copy`.
#[derive(Args, Debug)]
pub(crate) struct CopyArgs {
    /// The repository to copy: a directory or `s3://bucket/prefix`.
    #[arg(long)]
    repo: String,
    /// Where the mirror is (created on first use): a directory or `s3://bucket/prefix`.
    #[arg(long)]
    to: String,
    /// Delete data packs and indexes the source no longer has at once, without first checking
    /// that no snapshot left in the mirror needs them (by default they wait until none does).
    #[arg(long)]
    delete: bool,
    /// Read back the objects already in the mirror and replace damaged ones (by default they
    /// are compared by size).
    #[arg(long)]
    check_existing: bool,
    /// Show what would be copied and deleted; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Objects copied at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Write the mirror's objects under S3 Object Lock, `governance:DAYS` or
    /// `compliance:DAYS` (an `s3://` mirror in a bucket with Object Lock enabled): nobody can
    /// delete them for DAYS days.
    #[arg(long, value_name = "MODE:DAYS")]
    object_lock: Option<String>,
}

/// A repository location from the command line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Location {
    Dir(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl Location {
    /// `s3://bucket[/prefix]` or a directory; `flag` names the argument in errors.
    pub(crate) fn parse(flag: &str, text: &str) -> Result<Self> {
        if text.starts_with("s3://") {
            let s3 = S3Location::parse(text).ok_or_else(|| {
                Error::invalid(
                    flag,
                    format!("{text:?} names no bucket: expected s3://bucket/prefix"),
                )
            })?;
            return Ok(Location::S3 {
                bucket: s3.bucket,
                prefix: s3.prefix,
            });
        }
        if text.contains("://") {
            return Err(Error::invalid(
                flag,
                format!("{text:?}: expected a directory or s3://bucket/prefix"),
            ));
        }
        Ok(Location::Dir(PathBuf::from(text)))
    }

    pub(crate) async fn target(&self, lock: Option<ObjectLock>) -> Result<Arc<dyn BackupTarget>> {
        match self {
            Location::Dir(dir) => {
                if lock.is_some() {
                    return Err(Error::invalid(
                        "--object-lock",
                        "applies to an s3:// mirror, not a directory",
                    ));
                }
                Ok(Arc::new(LocalTarget::new(dir)?))
            }
            Location::S3 { bucket, prefix } => {
                let mut builder = S3Target::builder(bucket)
                    .prefix(prefix.as_str())
                    .force_path_style(crate::s3_env::path_style());
                if let Some(lock) = lock {
                    builder = builder.object_lock(lock);
                }
                Ok(Arc::new(builder.build().await?))
            }
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Dir(dir) => write!(f, "{}", dir.display()),
            Location::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// `governance:30` or `compliance:7`.
fn parse_lock(text: &str) -> Result<ObjectLock> {
    let bad = || {
        Error::invalid(
            "--object-lock",
            format!("{text:?}: expected governance:DAYS or compliance:DAYS (e.g. governance:30)"),
        )
    };
    let (mode, days) = text.split_once(':').ok_or_else(bad)?;
    let mode: LockMode = mode.parse().map_err(|_| bad())?;
    let days: u32 = days.parse().map_err(|_| bad())?;
    // A mirror never holds locks/, but exempt them anyway should a backup write here.
    Ok(ObjectLock::new(mode, days).exempt_prefix("locks/"))
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

/// `12.3 MB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The report for people.
fn describe(report: &MirrorReport, from: &Location, to: &Location) -> String {
    let (copy, delete) = if report.dry_run {
        ("would copy", "would delete")
    } else {
        ("copied", "deleted")
    };
    let kinds = |counts: &std::collections::BTreeMap<String, deploykit_backup::ObjectCount>| {
        counts
            .iter()
            .map(|(kind, c)| format!("{kind} {} ({})", c.objects, bytes(c.bytes)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut lines = vec![format!(
        "{copy} {} objects ({}) from {from} to {to}{}; {} already there",
        report.objects_copied(),
        bytes(report.bytes_copied()),
        if report.copied.is_empty() {
            String::new()
        } else {
            format!(": {}", kinds(&report.copied))
        },
        report.unchanged
    )];
    for id in &report.snapshots_copied {
        lines.push(format!("  snapshot {id}"));
    }
    if !report.repaired.is_empty() {
        lines.push(format!(
            "replaced {} damaged objects in the mirror: {}",
            report.repaired.len(),
            report.repaired.join(", ")
        ));
    }
    if !report.deleted.is_empty() {
        lines.push(format!(
            "{delete} {} objects the source no longer has: {}",
            report.objects_deleted(),
            kinds(&report.deleted)
        ));
    }
    for kept in &report.kept {
        lines.push(format!("kept {}: {}", kept.key, kept.reason));
    }
    if !report.mirror_indexes.is_empty() {
        lines.push(format!(
            "wrote {} index objects in the mirror alone, for the snapshots it keeps",
            report.mirror_indexes.len()
        ));
    }
    if !report.vanished.is_empty() {
        lines.push(format!(
            "{} objects left the source during the copy (a prune ran); the next copy settles them",
            report.vanished.len()
        ));
    }
    lines.join("\n")
}

/// Run `deploykit backup copy`.
pub(crate) async fn copy(ctx: &Context, args: CopyArgs) -> Result<ExitCode> {
    let from = Location::parse("--repo", &args.repo)?;
    let to = Location::parse("--to", &args.to)?;
    if from == to {
        return Err(Error::invalid(
            "--to",
            "is the repository itself: name another place",
        ));
    }
    if let Location::Dir(dir) = &from
        && !dir.join("config").exists()
    {
        return Err(Error::not_found(format!(
            "backup repository in {} (no `config` file)",
            dir.display()
        )));
    }
    let lock = args.object_lock.as_deref().map(parse_lock).transpose()?;
    let source = Repository::open(from.target(None).await?, &key()?).await?;
    let dest = to.target(lock).await?;
    let options = MirrorOptions::builder()
        .force_delete(args.delete)
        .check_existing(args.check_existing)
        .dry_run(args.dry_run)
        .concurrency(args.concurrency.max(1))
        .build();
    let report = source.mirror_to_with(dest, &options).await?;
    let mut value = serde_json::to_value(&report)
        .map_err(|e| Error::backend("report the copy as JSON", e.to_string()))?;
    if let Some(object) = value.as_object_mut() {
        object.insert("repository".into(), json!(source.id()));
        object.insert("from".into(), json!(from.to_string()));
        object.insert("to".into(), json!(to.to_string()));
        object.insert("objects_copied".into(), json!(report.objects_copied()));
        object.insert("bytes_copied".into(), json!(report.bytes_copied()));
        object.insert("objects_deleted".into(), json!(report.objects_deleted()));
    }
    ctx.print(describe(&report, &from, &to), value);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_directories_or_s3_urls() {
        assert_eq!(
            Location::parse("--to", "s3://bkt/shop/prod/").unwrap(),
            Location::S3 {
                bucket: "bkt".into(),
                prefix: "shop/prod".into()
            }
        );
        assert_eq!(
            Location::parse("--to", "s3://bkt").unwrap().to_string(),
            "s3://bkt"
        );
        assert_eq!(
            Location::parse("--repo", "/var/backups/repo").unwrap(),
            Location::Dir("/var/backups/repo".into())
        );
        for bad in ["s3://", "s3:///x", "gs://bkt/x"] {
            let e = Location::parse("--to", bad).unwrap_err().to_string();
            assert!(e.contains("--to"), "{bad}: {e}");
        }
    }

    #[test]
    fn object_lock_is_mode_colon_days() {
        let lock = parse_lock("Compliance:7").unwrap();
        assert_eq!((lock.mode(), lock.days()), (LockMode::Compliance, 7));
        for bad in ["governance", "forever:3", "governance:x", "governance:-1"] {
            assert!(parse_lock(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(2_345_678), "2.3 MB");
    }
}
