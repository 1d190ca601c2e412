//! Base backups that read the server's data directory in place, as pgBackRest does: the
//! low-level non-exclusive backup API on one held connection (`pg_backup_start` …
//! `pg_backup_stop`), the files stored straight from the data directory while the server
//! runs, and `backup_label` added to the snapshot by the engine's finisher once every file is
//! stored. Half the I/O of `pg_basebackup` into a work directory and then storing that copy.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::catalog::{BaseBackup, now};
use crate::server::simple_query;
use crate::wal::{Lsn, WalSegment};
use deploykit_backup::{BackupFinish, BackupKind, BackupRequest, Finish, Repository};
use deploykit_core::{Error, Result};

/// Directories whose contents PostgreSQL's documentation says to leave out of a
/// file-system-level base backup (the directories themselves are kept). `pg_wal` is handled
/// apart: its `archive_status` directory is kept too, empty.
const CONTENTS_LEFT_OUT: &[&str] = &[
    "pg_dynshmem",
    "pg_notify",
    "pg_replslot",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];

/// Files at the data directory's top that are left out: the running server's own, and those a
/// backup brings itself (`backup_label` comes from `pg_backup_stop`).
const TOP_FILES_LEFT_OUT: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "tablespace_map.old",
    "backup_manifest",
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
];

/// Whether a path of the data directory, relative to it, is left out of a base backup.
///
/// ```text
/// pg_wal/000000010000000000000003   out   (the archive has the WAL)
/// pg_wal/archive_status             kept  (empty)
/// pg_stat_tmp/global.stat           out
/// base/5/pgsql_tmp/…                out   (temporary files, anywhere)
/// base/5/pg_internal.init           out   (relation cache, rebuilt at start)
/// postmaster.pid                    out
/// ```
pub(crate) fn left_out(relative: &Path) -> bool {
    let parts: Vec<&OsStr> = relative
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name),
            _ => None,
        })
        .collect();
    let Some(name) = parts.last().and_then(|n| n.to_str()) else {
        return false;
    };
    if name.starts_with("pgsql_tmp") || name.starts_with("pg_internal.init") {
        return true;
    }
    let top = parts[0].to_str().unwrap_or_default();
    match parts.len() {
        1 => TOP_FILES_LEFT_OUT.contains(&name),
        2 if top == "pg_wal" => name != "archive_status",
        2 => CONTENTS_LEFT_OUT.contains(&top),
        _ => top == "pg_wal",
    }
}

/// What the server says about itself, read before an in-place backup.
#[derive(Clone, Debug)]
pub(crate) struct ServerFacts {
    pub system_identifier: u64,
    pub wal_segment_size: u64,
    pub version_num: u32,
    pub data_directory: String,
    pub in_recovery: bool,
}

/// The system identifier in `dir/global/pg_control` (its first 8 bytes).
fn control_system_identifier(dir: &Path) -> Result<u64> {
    let control = dir.join("global/pg_control");
    let bytes = std::fs::read(&control).map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::NotFound {
            "it has no global/pg_control: it is not a PostgreSQL data directory".to_string()
        } else {
            format!("cannot read {}: {e}", control.display())
        };
        Error::invalid("pgdata", format!("{}: {why}", dir.display()))
    })?;
    let first: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            Error::invalid(
                "pgdata",
                format!("{} is {} bytes, too short", control.display(), bytes.len()),
            )
        })?;
    Ok(u64::from_le_bytes(first))
}

/// Check that `dir` is the data directory of the server described by `facts`: the same
/// system identifier in `global/pg_control`, and the same directory (device and inode) as the
/// server's `data_directory`. The directory, canonical.
pub(crate) fn check_data_dir(dir: &Path, facts: &ServerFacts) -> Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let canonical = std::fs::canonicalize(dir)
        .map_err(|e| Error::invalid("pgdata", format!("{}: cannot be read: {e}", dir.display())))?;
    let system = control_system_identifier(&canonical)?;
    if system != facts.system_identifier {
        return Err(Error::invalid(
            "pgdata",
            format!(
                "{} is the data directory of PostgreSQL system {system}, but the server \
                 connected to is system {} (data directory {}): give that server's data \
                 directory",
                dir.display(),
                facts.system_identifier,
                facts.data_directory
            ),
        ));
    }
    let ours = std::fs::metadata(&canonical)
        .map_err(|e| Error::invalid("pgdata", format!("{}: cannot be read: {e}", dir.display())))?;
    let same = std::fs::metadata(&facts.data_directory)
        .is_ok_and(|theirs| (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()));
    if !same {
        return Err(Error::invalid(
            "pgdata",
            format!(
                "{} is not the data directory of the server connected to, which is {} (a copy \
                 or a standby of the same cluster is not it): give the server's own data \
                 directory, or leave it out to back up with pg_basebackup",
                dir.display(),
                facts.data_directory
            ),
        ));
    }
    Ok(canonical)
}

/// The start of the backup as `backup_label` records it: (timeline, start LSN).
pub(crate) fn parse_label(label: &str) -> Result<(u32, Lsn)> {
    let bad = |why: &str| Error::backend("read the backup label from pg_backup_stop", why);
    let field = |name: &str| {
        label
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .ok_or_else(|| bad(&format!("it has no {name} line: {label:?}")))
    };
    let start = field("START WAL LOCATION:")?;
    let start: Lsn = start
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .parse()
        .map_err(|_| bad(&format!("START WAL LOCATION {start:?}")))?;
    let timeline = field("START TIMELINE:")?;
    let timeline = timeline
        .parse()
        .map_err(|_| bad(&format!("START TIMELINE {timeline:?}")))?;
    Ok((timeline, start))
}

/// Ends the backup once every file is stored: `pg_backup_stop` on the connection that started
/// it, then a wait until its last WAL segment is archived, `backup_label` into the snapshot,
/// and the base backup's tags.
///
/// PostgreSQL's own wait (`pg_backup_stop(true)`) looks at the archive once a second, so it
/// costs a second when the archive takes 50 ms; the server is asked not to wait, and
/// [`wait_archived`] watches the same status files every 10 ms.
struct StopBackup {
    client: tokio_postgres::Client,
    facts: ServerFacts,
    /// The data directory, where `pg_wal/archive_status` says what is archived.
    dir: PathBuf,
    start_time: DateTime<Utc>,
    root: String,
    backup: Mutex<Option<BaseBackup>>,
}

#[async_trait::async_trait]
impl BackupFinish for StopBackup {
    async fn finish(&self) -> Result<Finish> {
        let sql = if self.facts.version_num >= 150_000 {
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)"
        } else {
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, false)"
        };
        let rows = simple_query(&self.client, sql).await.map_err(|e| {
            Error::backend(
                "end the base backup (pg_backup_stop)",
                format!("{} (no snapshot is written)", e.chain()),
            )
        })?;
        let stop_time = now();
        let row = rows.first().ok_or_else(|| {
            Error::backend("end the base backup", "pg_backup_stop returned no row")
        })?;
        let field = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        let stop_lsn: Lsn = field(0).parse()?;
        let label = field(1);
        if !field(2).trim().is_empty() {
            return Err(Error::invalid(
                "pgdata",
                "the server has tablespaces outside its data directory (tablespace_map is not \
                 empty): in-place base backups do not cover them",
            ));
        }
        let (timeline, start_lsn) = parse_label(&label)?;
        // The segment holding the backup's last byte (a primary's timeline does not change
        // during the backup); pg_backup_stop switched to the next one.
        let last = WalSegment::containing(
            timeline,
            Lsn(stop_lsn.0.saturating_sub(1)),
            self.facts.wal_segment_size,
        )
        .file_name(self.facts.wal_segment_size);
        wait_archived(&self.dir, &last, || self.client.is_closed()).await?;
        let backup = BaseBackup {
            snapshot: String::new(),
            timeline,
            start_lsn,
            stop_lsn,
            start_time: self.start_time,
            stop_time,
            wal_segment_size: self.facts.wal_segment_size,
            system_identifier: self.facts.system_identifier,
            root: self.root.clone(),
        };
        let tags = backup.tags();
        *self.backup.lock().unwrap_or_else(|e| e.into_inner()) = Some(backup);
        Ok(Finish::builder()
            .files(vec![("backup_label".to_string(), label.into_bytes())])
            .tags(tags)
            .build())
    }
}

/// Wait until the server has archived the WAL file `name`, as `pg_backup_stop(true)` would,
/// but looking every 10 ms: archived once `pg_wal/archive_status/NAME.done` exists, or once
/// neither that, `NAME.ready` nor the file itself does (archived and recycled). A warning
/// after a minute (and each doubling), as PostgreSQL gives; the wait itself has no end, as
/// PostgreSQL's has not: a base backup without its WAL is not restorable. It fails when
/// `server_gone` says the backup's connection closed (the server stopped or crashed), where
/// PostgreSQL's wait would have ended with its backend, rather than waiting for an archiver
/// that is no more.
async fn wait_archived(dir: &Path, name: &str, server_gone: impl Fn() -> bool) -> Result<()> {
    let started = Instant::now();
    let mut warn_after = Duration::from_secs(60);
    while archive_busy(dir, name)? {
        if server_gone() {
            return Err(Error::backend(
                format!("wait for WAL segment {name} to be archived"),
                "the connection to the server closed first (no snapshot is written: without \
                 that segment the base backup is not restorable)",
            ));
        }
        if started.elapsed() >= warn_after {
            tracing::warn!(
                segment = name,
                waited_s = started.elapsed().as_secs(),
                "still waiting for the base backup's last WAL segment to be archived: check \
                 that archive_command works"
            );
            warn_after *= 2;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// PostgreSQL's `XLogArchiveIsBusy` for the WAL file `name` of the data directory `dir`.
fn archive_busy(dir: &Path, name: &str) -> Result<bool> {
    let wal = dir.join("pg_wal");
    let status = wal.join("archive_status");
    let exists = |path: PathBuf| match std::fs::symlink_metadata(&path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::backend(
            format!("see whether {} is archived ({})", name, path.display()),
            e.to_string(),
        )),
    };
    if exists(status.join(format!("{name}.done")))? {
        return Ok(false);
    }
    if exists(status.join(format!("{name}.ready")))? {
        return Ok(true);
    }
    exists(wal.join(name))
}

/// What an in-place backup did: the base backup, files, bytes, bytes stored, copy time.
pub(crate) type Stored = (BaseBackup, u64, u64, u64, Duration);

/// Back up the data directory `dir` of the server `client` is connected to, in place.
pub(crate) async fn backup_in_place(
    repo: &Repository,
    client: tokio_postgres::Client,
    dir: &Path,
    facts: ServerFacts,
) -> Result<Stored> {
    if facts.in_recovery {
        return Err(Error::invalid(
            "pgdata",
            "the server is a standby: take an in-place base backup on the primary, or leave out \
             the data directory to back up with pg_basebackup",
        ));
    }
    let dir = check_data_dir(dir, &facts)?;
    let tablespaces = simple_query(
        &client,
        "SELECT coalesce(string_agg(spcname, ', ' ORDER BY spcname), '') FROM pg_tablespace \
         WHERE spcname NOT IN ('pg_default', 'pg_global')",
    )
    .await?;
    let names = tablespaces
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .unwrap_or_default();
    if !names.is_empty() {
        return Err(Error::invalid(
            "pgdata",
            format!(
                "the server has tablespaces outside its data directory ({names}): in-place base \
                 backups do not cover them"
            ),
        ));
    }
    let root = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::invalid("pgdata", format!("{} has no name", dir.display())))?;
    // The backup lives as long as this session: nothing may end it early.
    let mut session = "SET statement_timeout = 0".to_string();
    if facts.version_num >= 140_000 {
        session.push_str("; SET idle_session_timeout = 0");
    }
    simple_query(&client, &session).await?;
    let start_time = now();
    let copy_started = Instant::now();
    let start = if facts.version_num >= 150_000 {
        "SELECT pg_backup_start('deploykit', true)::text"
    } else {
        "SELECT pg_start_backup('deploykit', true, false)::text"
    };
    simple_query(&client, start)
        .await
        .map_err(|e| Error::backend("start the base backup (pg_backup_start)", e.chain()))?;
    let stop = Arc::new(StopBackup {
        client,
        facts,
        dir: dir.clone(),
        start_time,
        root,
        backup: Mutex::new(None),
    });
    let base = dir.clone();
    let exclude: deploykit_backup::ExcludeFn =
        Arc::new(move |path: &Path| path.strip_prefix(&base).is_ok_and(left_out));
    let finish: Arc<dyn BackupFinish> = stop.clone();
    let (id, snapshot) = repo
        .backup(
            BackupRequest::builder()
                .paths(vec![dir])
                .kind(BackupKind::Full)
                .tags(BTreeSet::new())
                .exclude(exclude)
                .live(true)
                .finish(finish)
                .build(),
        )
        .await?;
    let copy_duration = copy_started.elapsed();
    let mut backup = stop
        .backup
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .ok_or_else(|| Error::backend("base backup", "the snapshot was written unfinished"))?;
    backup.snapshot = id;
    let s = &snapshot.summary;
    Ok((
        backup,
        s.files,
        s.bytes_total,
        s.bytes_stored,
        copy_duration,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The archive status of a segment as PostgreSQL reads it, and a wait that ends within
    /// tens of milliseconds of the archiver's `.done` (PostgreSQL's own looks once a second).
    #[tokio::test]
    async fn the_wait_for_the_last_segment_reads_the_archive_status_files() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("pg_wal/archive_status");
        std::fs::create_dir_all(&status).unwrap();
        let seg = "000000010000000000000005";
        assert!(
            !archive_busy(dir.path(), seg).unwrap(),
            "gone: archived and recycled"
        );
        std::fs::write(dir.path().join("pg_wal").join(seg), b"").unwrap();
        assert!(
            archive_busy(dir.path(), seg).unwrap(),
            "there, not yet marked ready"
        );
        std::fs::write(status.join(format!("{seg}.ready")), b"").unwrap();
        assert!(
            archive_busy(dir.path(), seg).unwrap(),
            "ready: not archived yet"
        );
        let (archiver_dir, name) = (status.clone(), seg.to_string());
        let archiver = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            std::fs::rename(
                archiver_dir.join(format!("{name}.ready")),
                archiver_dir.join(format!("{name}.done")),
            )
            .unwrap();
        });
        let started = Instant::now();
        wait_archived(dir.path(), seg, || false).await.unwrap();
        let waited = started.elapsed();
        archiver.await.unwrap();
        assert!(
            waited >= Duration::from_millis(100) && waited < Duration::from_millis(600),
            "{waited:?}"
        );
        assert!(!archive_busy(dir.path(), seg).unwrap(), "done");

        // A server that goes away while its segment is still only ready: an error naming the
        // segment, not a wait without end.
        let next = "000000010000000000000006";
        std::fs::write(status.join(format!("{next}.ready")), b"").unwrap();
        let gone = std::sync::atomic::AtomicBool::new(false);
        let waiting = wait_archived(dir.path(), next, || {
            gone.load(std::sync::atomic::Ordering::SeqCst)
        });
        let closing = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            gone.store(true, std::sync::atomic::Ordering::SeqCst);
        };
        let (waited, ()) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(waiting, closing)
        })
        .await
        .expect("the wait ends when the server is gone");
        let err = waited.expect_err("not archived").chain();
        assert!(err.contains(next) && err.contains("closed"), "{err}");
    }

    #[test]
    fn what_a_base_backup_leaves_out() {
        for out in [
            "pg_wal/000000010000000000000003",
            "pg_wal/.deploykit-prefetch",
            "pg_wal/archive_status/000000010000000000000003.done",
            "pg_stat_tmp/global.stat",
            "pg_replslot/slot1",
            "pg_subtrans/0000",
            "base/5/pgsql_tmp",
            "base/pgsql_tmp/pgsql_tmp123.0",
            "global/pg_internal.init",
            "base/5/pg_internal.init.1234",
            "postmaster.pid",
            "postmaster.opts",
            "backup_label",
        ] {
            assert!(left_out(Path::new(out)), "{out} is left out");
        }
        for kept in [
            "pg_wal",
            "pg_wal/archive_status",
            "pg_stat_tmp",
            "pg_replslot",
            "pg_subtrans",
            "base/5/16384",
            "global/pg_control",
            "postgresql.auto.conf",
            "PG_VERSION",
            "pg_xact/0000",
            "base/5/postmaster.pid",
        ] {
            assert!(!left_out(Path::new(kept)), "{kept} is kept");
        }
    }

    #[test]
    fn the_start_comes_from_the_backup_label() {
        let label = "START WAL LOCATION: 0/5000028 (file 000000020000000000000005)\n\
                     CHECKPOINT LOCATION: 0/5000060\nBACKUP METHOD: streamed\n\
                     BACKUP FROM: primary\nSTART TIME: 2026-12-05 08:00:00 UTC\n\
                     LABEL: deploykit\nSTART TIMELINE: 2\n";
        assert_eq!(parse_label(label).unwrap(), (2, Lsn(0x500_0028)));
        let e = parse_label("LABEL: x\n").unwrap_err();
        assert!(e.chain().contains("START WAL LOCATION"), "{}", e.chain());
    }

    #[test]
    fn only_the_servers_own_data_directory_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("main");
        std::fs::create_dir_all(data.join("global")).unwrap();
        let mut control = 7_000_000_000_000_000_001u64.to_le_bytes().to_vec();
        control.resize(8192, 0);
        std::fs::write(data.join("global/pg_control"), &control).unwrap();
        let facts = |system: u64, at: &Path| ServerFacts {
            system_identifier: system,
            wal_segment_size: 16 << 20,
            version_num: 150_000,
            data_directory: at.display().to_string(),
            in_recovery: false,
        };
        let through_link = dir.path().join("link");
        std::os::unix::fs::symlink(&data, &through_link).unwrap();
        assert_eq!(
            check_data_dir(&through_link, &facts(7_000_000_000_000_000_001, &data)).unwrap(),
            std::fs::canonicalize(&data).unwrap()
        );
        let e = check_data_dir(&data, &facts(42, &data)).unwrap_err();
        assert!(e.to_string().contains("is system 42"), "{e}");
        // A copy of the same cluster is not the server's directory.
        let copy = dir.path().join("copy");
        std::fs::create_dir_all(copy.join("global")).unwrap();
        std::fs::write(copy.join("global/pg_control"), &control).unwrap();
        let e = check_data_dir(&copy, &facts(7_000_000_000_000_000_001, &data)).unwrap_err();
        assert!(e.to_string().contains("is not the data directory"), "{e}");
        let e = check_data_dir(dir.path(), &facts(1, &data)).unwrap_err();
        assert!(
            e.to_string().contains("not a PostgreSQL data directory"),
            "{e}"
        );
    }
}
