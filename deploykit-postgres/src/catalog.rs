//! Base backups as the repository records them: a snapshot of a data directory whose tags
//! say which WAL range makes it consistent, and the list of them.

use std::collections::BTreeSet;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};

use crate::wal::{Lsn, WalSegment, check_segment_size};
use deploykit_backup::{Repository, Snapshot};
use deploykit_core::{Error, Result};

/// The tag every base backup snapshot carries.
pub const BASE_BACKUP_TAG: &str = "pg.base_backup";

/// The name of the data directory's entry at the root of snapshots written before it was
/// recorded (`pg.root` tag): `pg_basebackup`'s copy was always `pgdata`.
pub(crate) const DEFAULT_ROOT: &str = "pgdata";

/// A base backup in the repository: a snapshot of a data directory and the WAL range that
/// makes it consistent.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BaseBackup {
    /// The snapshot holding the data directory (its root entry is [`root`](Self::root)).
    pub snapshot: String,
    /// The timeline it was taken on.
    pub timeline: u32,
    /// Where its WAL starts (the checkpoint's redo point).
    pub start_lsn: Lsn,
    /// Where its WAL ends: recovery is consistent from here on.
    pub stop_lsn: Lsn,
    /// When `pg_basebackup` started.
    pub start_time: DateTime<Utc>,
    /// When it had finished (after the stop point was archived): a recovery target at or
    /// after this time can start from this backup.
    pub stop_time: DateTime<Utc>,
    /// The cluster's WAL segment size.
    pub wal_segment_size: u64,
    /// The cluster's system identifier.
    pub system_identifier: u64,
    /// The name of the data directory's entry at the snapshot's root: `pgdata` for a
    /// `pg_basebackup` copy, the data directory's own name (`main`) for one read in place,
    /// whose `backup_label` is beside it at the root.
    pub root: String,
}

/// Now, to the microsecond (as recorded in tags and as PostgreSQL keeps time).
pub(crate) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn time_text(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl BaseBackup {
    /// The first WAL segment it needs.
    pub fn first_segment(&self) -> WalSegment {
        WalSegment::containing(self.timeline, self.start_lsn, self.wal_segment_size)
    }

    /// The last WAL segment it needs to be consistent.
    pub fn last_segment(&self) -> WalSegment {
        let end = Lsn(self.stop_lsn.0.saturating_sub(1).max(self.start_lsn.0));
        WalSegment::containing(self.timeline, end, self.wal_segment_size)
    }

    /// The tags recording it.
    pub fn tags(&self) -> BTreeSet<String> {
        let size = self.wal_segment_size;
        [
            BASE_BACKUP_TAG.to_string(),
            format!("pg.timeline={}", self.timeline),
            format!("pg.start_lsn={}", self.start_lsn),
            format!("pg.stop_lsn={}", self.stop_lsn),
            format!("pg.start_time={}", time_text(&self.start_time)),
            format!("pg.stop_time={}", time_text(&self.stop_time)),
            format!("pg.wal_segment_size={size}"),
            format!("pg.system_identifier={}", self.system_identifier),
            format!("pg.wal_start={}", self.first_segment().file_name(size)),
            format!("pg.wal_stop={}", self.last_segment().file_name(size)),
            format!("pg.root={}", self.root),
        ]
        .into_iter()
        .collect()
    }

    /// The base backup a snapshot holds: `None` if it is not one (no [`BASE_BACKUP_TAG`]), an
    /// error naming the snapshot and tag if its tags are damaged.
    pub fn from_snapshot(id: &str, snapshot: &Snapshot) -> Option<Result<Self>> {
        if !snapshot.tags.contains(BASE_BACKUP_TAG) {
            return None;
        }
        let tag = |name: &str| -> Result<&str> {
            snapshot
                .tags
                .iter()
                .find_map(|t| t.strip_prefix(name)?.strip_prefix('='))
                .ok_or_else(|| {
                    Error::invalid(
                        format!("snapshot {id} tag {name}"),
                        "missing from a base backup",
                    )
                })
        };
        fn parse<T: FromStr>(id: &str, name: &str, text: &str) -> Result<T> {
            text.parse().map_err(|_| {
                Error::invalid(
                    format!("snapshot {id} tag {name}"),
                    format!("{text:?} does not parse"),
                )
            })
        }
        let time = |name: &str| -> Result<DateTime<Utc>> {
            let text = tag(name)?;
            DateTime::parse_from_rfc3339(text)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| Error::invalid(format!("snapshot {id} tag {name}"), e.to_string()))
        };
        let build = || -> Result<Self> {
            let backup = BaseBackup {
                snapshot: id.to_string(),
                timeline: parse(id, "pg.timeline", tag("pg.timeline")?)?,
                start_lsn: parse(id, "pg.start_lsn", tag("pg.start_lsn")?)?,
                stop_lsn: parse(id, "pg.stop_lsn", tag("pg.stop_lsn")?)?,
                start_time: time("pg.start_time")?,
                stop_time: time("pg.stop_time")?,
                wal_segment_size: parse(id, "pg.wal_segment_size", tag("pg.wal_segment_size")?)?,
                system_identifier: parse(id, "pg.system_identifier", tag("pg.system_identifier")?)?,
                root: tag("pg.root").unwrap_or(DEFAULT_ROOT).to_string(),
            };
            check_segment_size(backup.wal_segment_size)?;
            Ok(backup)
        };
        Some(build())
    }
}

/// Every base backup in `repo`, oldest (by stop point) first.
pub async fn base_backups(repo: &Repository) -> Result<Vec<BaseBackup>> {
    let mut backups = repo
        .snapshots()
        .await?
        .iter()
        .filter_map(|(id, s)| BaseBackup::from_snapshot(id, s))
        .collect::<Result<Vec<_>>>()?;
    backups.sort_by(|a, b| {
        (a.timeline, a.stop_lsn, a.stop_time).cmp(&(b.timeline, b.stop_lsn, b.stop_time))
    });
    Ok(backups)
}
