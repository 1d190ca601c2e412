//! The WAL archive: PostgreSQL's `archive_command` and `restore_command` over a backup
//! repository. Each file of `pg_wal` is the named object `wal/<file name>`; `pg/cluster`
//! records whose WAL the repository holds, so two clusters never archive into one.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::wal::{SegmentHeader, WalFileKind, WalSegment};
use deploykit_backup::Repository;
use deploykit_core::{Error, Result};

/// The named object recording the cluster a repository archives.
const CLUSTER_OBJECT: &str = "pg/cluster";

/// The name a WAL file is archived under: `wal/<file name>`.
pub fn wal_object_name(file_name: &str) -> String {
    format!("wal/{file_name}")
}

/// Which cluster's WAL a repository holds (the named object `pg/cluster`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterIdentity {
    /// The cluster's system identifier (`pg_control_system()`).
    pub system_identifier: u64,
    /// Its WAL segment size in bytes.
    pub wal_segment_size: u64,
}

impl ClusterIdentity {
    /// Record this identity in `repo`, or check it against the one recorded: a repository
    /// holds one cluster's WAL and base backups.
    pub async fn record(&self, repo: &Repository) -> Result<()> {
        let json = serde_json::to_vec(self).expect("identities serialise");
        match repo
            .put_named(CLUSTER_OBJECT, std::io::Cursor::new(json))
            .await
        {
            Ok(_) => Ok(()),
            Err(Error::AlreadyExists { .. }) => {
                let recorded = Self::recorded(repo).await?;
                Err(Error::invalid(
                    "postgres.cluster",
                    format!(
                        "this repository holds PostgreSQL system {} ({}-byte WAL segments), not \
                         system {} ({}-byte segments): use one repository per cluster",
                        recorded.map_or(0, |r| r.system_identifier),
                        recorded.map_or(0, |r| r.wal_segment_size),
                        self.system_identifier,
                        self.wal_segment_size
                    ),
                ))
            }
            Err(e) => Err(e),
        }
    }

    /// The identity recorded in `repo`, if any.
    pub async fn recorded(repo: &Repository) -> Result<Option<Self>> {
        match repo.read_named(CLUSTER_OBJECT).await {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::Corrupt {
                    what: format!("named object {CLUSTER_OBJECT}"),
                    source: e.to_string().into(),
                }),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// What [`push_wal`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PushReport {
    /// The file name.
    pub file: String,
    /// Its size.
    pub bytes: u64,
    /// `false` when the archive held this exact file already (a retried push).
    pub written: bool,
    /// Bytes written to the repository.
    pub bytes_stored: u64,
}

/// Archive one file of `pg_wal` (PostgreSQL's `%p`): a segment, a partial segment, a
/// timeline history file or a backup history file.
///
/// A segment's header must match its name (its first page's address is the segment's start)
/// and the cluster the repository archives. Pushing a file again with the same content
/// succeeds without writing; different content under an archived name fails, keeping the
/// archived copy (PostgreSQL then keeps the file and retries: a person must look). Any failure
/// leaves no object under the name, so PostgreSQL may retry at will.
///
/// ```no_run
/// # async fn f(repo: deploykit_backup::Repository) -> deploykit_core::Result<()> {
/// let report = deploykit_postgres::push_wal(&repo, "pg_wal/000000010000000000000003".as_ref()).await?;
/// assert_eq!(report.file, "000000010000000000000003");
/// # Ok(())
/// # }
/// ```
pub async fn push_wal(repo: &Repository, path: &Path) -> Result<PushReport> {
    let file = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::invalid("wal-push", format!("{} has no file name", path.display())))?
        .to_string();
    let kind = WalFileKind::of(&file).ok_or_else(|| {
        Error::invalid(
            "wal-push",
            format!(
                "{file} is not a WAL segment, .partial, .history or .backup file (archive_command \
                 passes %p, the path of one)"
            ),
        )
    })?;
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| Error::backend(format!("read {}", path.display()), e.to_string()))?;
    if matches!(kind, WalFileKind::Segment | WalFileKind::Partial) {
        let header = SegmentHeader::parse(&bytes)
            .map_err(|e| Error::invalid("wal-push", format!("{file}: {}", e)))?;
        let segment = WalSegment::parse(&file[..24], header.segment_size)?;
        if header.page_address != segment.start(header.segment_size) {
            return Err(Error::invalid(
                "wal-push",
                format!(
                    "{file} starts with WAL from {} but its name says {}: it is not this segment",
                    header.page_address,
                    segment.start(header.segment_size)
                ),
            ));
        }
        if kind == WalFileKind::Segment && bytes.len() as u64 != header.segment_size {
            return Err(Error::invalid(
                "wal-push",
                format!(
                    "{file} is {} bytes, not {} (a segment is pushed once complete)",
                    bytes.len(),
                    header.segment_size
                ),
            ));
        }
        ClusterIdentity {
            system_identifier: header.system_identifier,
            wal_segment_size: header.segment_size,
        }
        .record(repo)
        .await
        .map_err(|e| match e {
            Error::InvalidSpec { field, reason } => Error::InvalidSpec {
                field,
                reason: format!("{file}: {reason}"),
            },
            other => other,
        })?;
    }
    let size = bytes.len() as u64;
    let put = repo
        .put_named(&wal_object_name(&file), std::io::Cursor::new(bytes))
        .await
        .map_err(|e| match e {
            Error::AlreadyExists { what } => Error::backend(
                format!("archive {file}"),
                format!(
                    "{what} already exists: the archive keeps the copy it has (PostgreSQL \
                     archives each file once: is another cluster archiving into this \
                     repository?)"
                ),
            ),
            other => other,
        })?;
    Ok(PushReport {
        file,
        bytes: size,
        written: put.written,
        bytes_stored: put.bytes_stored,
    })
}

/// Fetch the archived file `file` (PostgreSQL's `%f`) to `dest` (`%p`). The content is
/// checked and written to a temporary file beside `dest`, then renamed over it, so `dest`
/// appears complete or not at all. It is not synced to disk: PostgreSQL syncs the segments
/// it keeps, and fetches again after a crash.
///
/// [`Error::NotFound`] when the archive does not hold `file` — how PostgreSQL learns where
/// the archive ends; any other error means the archive holds it but it cannot be read
/// (damaged, unreachable) and names it.
pub async fn fetch_wal(repo: &Repository, file: &str, dest: &Path) -> Result<u64> {
    if WalFileKind::of(file).is_none() {
        return Err(Error::invalid(
            "wal-fetch",
            format!("{file} is not a WAL segment, .partial, .history or .backup file name"),
        ));
    }
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".deploykit-fetch-{}-{file}", std::process::id()));
    fetch_to(repo, file, &tmp, dest, None).await
}

/// Read the archived `file` into `tmp`, checked, then rename it to `dest` (given to `owner`
/// first, if any); `tmp` is removed on failure.
///
/// Not synced to disk, as pgBackRest's `archive-get` does not sync either: a file fetched
/// for recovery is read once and removed, or kept as a segment of `pg_wal` with
/// PostgreSQL's own durable rename; after a crash recovery fetches it again.
pub(crate) async fn fetch_to(
    repo: &Repository,
    file: &str,
    tmp: &Path,
    dest: &Path,
    owner: Option<&crate::server::OsUser>,
) -> Result<u64> {
    let result = async {
        let mut out = std::fs::File::create(tmp)
            .map_err(|e| Error::backend(format!("create {}", tmp.display()), e.to_string()))?;
        if let Some(owner) = owner {
            std::os::unix::fs::fchown(&out, Some(owner.uid), Some(owner.gid)).map_err(|e| {
                Error::backend(
                    format!("give {} to {}", tmp.display(), owner.name),
                    e.to_string(),
                )
            })?;
        }
        let object = repo
            .read_named_to(&wal_object_name(file), &mut out)
            .await
            .map_err(|e| match e {
                Error::NotFound { .. } => {
                    Error::not_found(format!("WAL file {file} in the archive"))
                }
                other => other,
            })?;
        out.flush()
            .and_then(|()| std::fs::rename(tmp, dest))
            .map_err(|e| Error::backend(format!("write {}", dest.display()), e.to_string()))?;
        Ok(object.size)
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result
}

/// The archived segments (not partial ones) of `timeline`, by number.
pub async fn archived_segments(
    repo: &Repository,
    timeline: u32,
    segment_size: u64,
) -> Result<BTreeSet<u64>> {
    Ok(repo
        .list_named("wal/")
        .await?
        .iter()
        .filter_map(|name| name.strip_prefix("wal/"))
        .filter(|file| WalFileKind::of(file) == Some(WalFileKind::Segment))
        .filter_map(|file| WalSegment::parse(file, segment_size).ok())
        .filter(|s| s.timeline == timeline)
        .map(|s| s.number)
        .collect())
}

/// The first segment number in `from..=to` that `present` lacks.
pub fn first_missing(present: &BTreeSet<u64>, from: u64, to: u64) -> Option<u64> {
    (from..=to).find(|n| !present.contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_gap_is_found() {
        let present: BTreeSet<u64> = [2, 3, 5, 6].into_iter().collect();
        assert_eq!(first_missing(&present, 2, 3), None);
        assert_eq!(first_missing(&present, 2, 6), Some(4));
        assert_eq!(first_missing(&present, 5, 7), Some(7));
        assert_eq!(first_missing(&present, 1, 2), Some(1));
        assert_eq!(wal_object_name("00000002.history"), "wal/00000002.history");
    }
}
