//! Retention for a cluster's repository: keep the newest base backups and the WAL they need.

use std::collections::BTreeSet;

use crate::catalog::{BASE_BACKUP_TAG, base_backups};
use crate::wal::WalFileKind;
use deploykit_backup::{PruneOptions, PruneReport, Repository, RetentionPolicy};
use deploykit_core::{Error, Result};

/// What [`prune`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgPruneReport {
    /// The base backups kept (snapshot ids), oldest first.
    pub backups_kept: Vec<String>,
    /// The base backups forgotten now.
    pub backups_forgotten: Vec<String>,
    /// The oldest WAL segment kept (every later one is kept too); `None` with no base backup.
    pub oldest_segment_kept: Option<String>,
    /// WAL files deleted (segments, partial segments and backup history files older than the
    /// oldest kept base backup).
    pub wal_deleted: u64,
    /// WAL files kept.
    pub wal_kept: u64,
    /// The repository prune that followed.
    pub prune: PruneReport,
}

/// Keep the `keep` newest base backups and every WAL file they need: forget older base
/// backups, delete segments (and partial segments and backup history files) before the
/// oldest kept backup's first segment — on every timeline, since timelines branch forwards —
/// keep every timeline history file, then prune the repository (whose two phases delete the
/// data on this prune or the next). Other snapshots in the repository are left alone.
///
/// With no base backup at all, no WAL is deleted.
///
/// ```no_run
/// # async fn f(repo: deploykit_backup::Repository) -> deploykit_core::Result<()> {
/// let report = deploykit_postgres::prune(&repo, 2).await?;
/// println!("kept WAL from {:?}, deleted {} files", report.oldest_segment_kept, report.wal_deleted);
/// # Ok(())
/// # }
/// ```
pub async fn prune(repo: &Repository, keep: u32) -> Result<PgPruneReport> {
    if keep == 0 {
        return Err(Error::invalid(
            "keep",
            "must be at least 1: archived WAL is useless without a base backup",
        ));
    }
    let policy = RetentionPolicy {
        keep_last: Some(keep),
        only_tags: BTreeSet::from([BASE_BACKUP_TAG.to_string()]),
        ..RetentionPolicy::default()
    };
    let decisions = repo.forget(&policy, false).await?;
    let backups = base_backups(repo).await?;
    let backups_forgotten: Vec<String> = decisions
        .iter()
        .filter(|d| !d.keep)
        .map(|d| d.id.clone())
        .collect();
    let mut report = PgPruneReport {
        backups_kept: backups.iter().map(|b| b.snapshot.clone()).collect(),
        backups_forgotten,
        oldest_segment_kept: None,
        wal_deleted: 0,
        wal_kept: 0,
        prune: PruneReport::default(),
    };
    if let Some(oldest) = backups.iter().min_by_key(|b| b.start_lsn) {
        let size = oldest.wal_segment_size;
        let first = oldest.first_segment();
        report.oldest_segment_kept = Some(first.file_name(size));
        for name in repo.list_named("wal/").await? {
            let file = name.strip_prefix("wal/").unwrap_or(&name);
            let old = match WalFileKind::of(file) {
                Some(WalFileKind::History) | None => false,
                Some(_) => {
                    WalFileKind::segment_of(file, size).is_some_and(|s| s.number < first.number)
                }
            };
            if old {
                repo.delete_named(&name).await?;
                report.wal_deleted += 1;
            } else {
                report.wal_kept += 1;
            }
        }
    }
    report.prune = repo.prune(PruneOptions::default()).await?;
    Ok(report)
}
