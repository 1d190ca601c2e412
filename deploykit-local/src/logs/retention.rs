//! Retention: log files older than an age leave the hot store — into an archive first, when
//! one is given (any [`Forwarder`], e.g. deploykit-logs' encrypted `ArchiveForwarder` on S3),
//! and are deleted only once the archive has confirmed them.

use std::fs::{self, File};
use std::io::{self, Read as _};
use std::path::Path;
use std::time::{Duration, SystemTime};

use deploykit_core::{Error, Result};
use deploykit_logs::{Forwarder, Record, Source};
use nix::fcntl::{Flock, FlockArg};

use super::reader::{LogOwner, owners};
use super::{InstanceLog, LogPolicy, LogReader};

/// How many records go to the archive per call.
const BATCH: usize = 1000;

/// What one [`apply_retention`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetentionReport {
    /// Files whose records went to the archive.
    pub files_archived: u64,
    /// Records sent to the archive.
    pub records_archived: u64,
    /// Files deleted (after archiving, when there is an archive).
    pub files_deleted: u64,
    /// Bytes those files took.
    pub bytes_freed: u64,
}

/// Moves the log files in `dir` last written more than `max_age` before `now` out of the hot
/// store: every rotated file that old, and the whole log (current file, pipes, owner record)
/// of an instance that no capture runs for any more and whose current file is that old.
///
/// With an `archive`, a file's records are sent to it (in batches, oldest file first) and
/// flushed before the file is deleted; if the archive fails, the file stays and the error is
/// returned (what was archived and deleted before it is in no doubt: run again later). A line
/// that a capture wrote in parts across two files is archived as two records.
pub async fn apply_retention(
    dir: &Path,
    policy: &LogPolicy,
    environment: &str,
    max_age: Duration,
    now: SystemTime,
    archive: Option<&dyn Forwarder>,
) -> Result<RetentionReport> {
    let cutoff = now.checked_sub(max_age).unwrap_or(SystemTime::UNIX_EPOCH);
    let found = owners(dir, policy).map_err(|e| io_error(dir, "list the logs in", &e))?;
    let mut report = RetentionReport::default();
    for (log, owner) in found {
        let source = Source::new(
            owner.service.clone(),
            environment,
            owner.revision.clone(),
            log.instance(),
        );
        let mut old = Vec::new();
        for (_, path) in log
            .rotated_files()
            .map_err(|e| io_error(dir, "list the logs in", &e))?
        {
            if modified(&path)? < cutoff {
                old.push(path);
            }
        }
        let gone = modified(log.path())? < cutoff && !captured(&log)?;
        if gone {
            old.push(log.path().to_path_buf());
        }
        for path in old {
            let bytes = fs::metadata(&path).map_or(0, |m| m.len());
            if let Some(archive) = archive {
                let records = read_records(&path, &source)?;
                for batch in records.chunks(BATCH) {
                    archive.send(batch).await?;
                }
                archive.flush().await?;
                report.files_archived += 1;
                report.records_archived += records.len() as u64;
            }
            remove(&path)?;
            report.files_deleted += 1;
            report.bytes_freed += bytes;
        }
        if gone {
            log.remove()
                .map_err(|e| io_error(log.path(), "remove the log", &e))?;
            tracing::info!(instance = %log.instance(), service = %owner_name(&owner), "log retired");
        }
    }
    Ok(report)
}

fn owner_name(owner: &LogOwner) -> String {
    format!("{} {}", owner.service, owner.revision)
}

/// Whether a capture runs for the log (its lock is held).
fn captured(log: &InstanceLog) -> Result<bool> {
    let path = log.capture_lock_path();
    let file = match File::options().write(true).open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_error(&path, "open", &e)),
    };
    Ok(Flock::lock(file, FlockArg::LockExclusiveNonblock).is_err())
}

fn modified(path: &Path) -> Result<SystemTime> {
    match fs::metadata(path).and_then(|m| m.modified()) {
        Ok(time) => Ok(time),
        // Gone meanwhile (rotated away): not old.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(SystemTime::now()),
        Err(e) => Err(io_error(path, "read the time of", &e)),
    }
}

fn read_records(path: &Path, source: &std::sync::Arc<Source>) -> Result<Vec<Record>> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut file| file.read_to_end(&mut bytes))
        .map_err(|e| io_error(path, "read", &e))?;
    Ok(LogReader::parse_file(
        &bytes,
        source.clone(),
        modified(path)?,
    ))
}

fn remove(path: &Path) -> Result<()> {
    super::remove_if_exists(path).map_err(|e| io_error(path, "delete", &e))
}

fn io_error(path: &Path, what: &str, error: &io::Error) -> Error {
    Error::backend(format!("{what} {}", path.display()), error.to_string())
}
