//! Base backups of a running server (no WAL: the archive has it), stored as a snapshot whose
//! tags record where its WAL starts and ends: the data directory read in place when it is
//! local (see `inplace`), else `pg_basebackup` into a work directory.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use chrono::Utc;
use typed_builder::TypedBuilder;

use crate::archive::ClusterIdentity;
use crate::catalog::{BaseBackup, DEFAULT_ROOT, now};
use crate::inplace::{ServerFacts, backup_in_place};
use crate::server::{PgBinaries, command, pg_error, run, simple_query};
use crate::wal::Lsn;
use deploykit_backup::{BackupKind, BackupRequest, Repository};
use deploykit_core::{Error, Result};

/// What to back up, and how.
#[derive(Clone, Debug, TypedBuilder)]
#[non_exhaustive]
pub struct BaseBackupRequest {
    /// The server, as a libpq connection string: `host=… port=… user=…` (`password=…`, or
    /// `PGPASSWORD`). Missing parts come from `PGHOST`, `PGPORT`, `PGUSER` as with libpq.
    #[builder(setter(into))]
    pub connection: String,
    /// PostgreSQL's programs.
    pub bins: PgBinaries,
    /// Where `pg_basebackup` writes the copy before it goes into the repository (default: the
    /// system's temporary directory); it needs room for the whole data directory. Not used
    /// with [`data_dir`](Self::data_dir).
    #[builder(default, setter(strip_option, into))]
    pub work_dir: Option<PathBuf>,
    /// The server's data directory, when this machine has it: the backup reads it in place
    /// (`pg_backup_start` … `pg_backup_stop` on one connection), with half the I/O of
    /// `pg_basebackup` into a work directory. It must be the directory of the server
    /// connected to (same system identifier and the same directory as its
    /// `data_directory`), readable by this process; a standby's, or a cluster with
    /// tablespaces outside it, is refused. `None`: `pg_basebackup` (a remote server).
    #[builder(default, setter(strip_option, into))]
    pub data_dir: Option<PathBuf>,
}

/// What [`take_base_backup`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BaseBackupReport {
    /// The base backup.
    pub backup: BaseBackup,
    /// Files copied.
    pub files: u64,
    /// Bytes of the data directory copy.
    pub bytes: u64,
    /// Bytes written to the repository (new chunks, compressed and encrypted).
    pub bytes_stored: u64,
    /// How long the copy took: `pg_basebackup` ran, or (in place) from `pg_backup_start` to
    /// the end of `pg_backup_stop`.
    pub copy_duration: Duration,
    /// How long the whole backup took.
    pub duration: Duration,
}

/// A client for the libpq-style `conninfo`, with libpq's environment defaults.
pub(crate) async fn connect(conninfo: &str) -> Result<tokio_postgres::Client> {
    let mut config = tokio_postgres::Config::from_str(conninfo).map_err(|e| {
        Error::invalid(
            "postgres.connection",
            format!("{conninfo:?} is not a connection string: {e}"),
        )
    })?;
    if config.get_hosts().is_empty() {
        match std::env::var("PGHOST") {
            Ok(h) => config.host(&h),
            Err(_) if Path::new("/var/run/postgresql").is_dir() => {
                config.host_path("/var/run/postgresql")
            }
            Err(_) => config.host("localhost"),
        };
    }
    if config.get_ports().is_empty()
        && let Some(port) = std::env::var("PGPORT").ok().and_then(|p| p.parse().ok())
    {
        config.port(port);
    }
    if config.get_user().is_none() {
        let user = std::env::var("PGUSER")
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_else(|_| "postgres".to_string());
        config.user(&user);
    }
    if config.get_password().is_none()
        && let Ok(password) = std::env::var("PGPASSWORD")
    {
        config.password(password);
    }
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| pg_error("connect to PostgreSQL", e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// The WAL range of a backup, from its `backup_manifest` (`WAL-Ranges`).
fn wal_range(manifest: &[u8]) -> Result<(u32, Lsn, Lsn)> {
    let bad = |why: String| Error::invalid("backup_manifest", why);
    let value: serde_json::Value =
        serde_json::from_slice(manifest).map_err(|e| bad(format!("not JSON: {e}")))?;
    let ranges = value
        .get("WAL-Ranges")
        .and_then(|r| r.as_array())
        .filter(|r| !r.is_empty())
        .ok_or_else(|| bad("it has no WAL-Ranges".to_string()))?;
    if ranges.len() > 1 {
        return Err(bad(format!(
            "the backup's WAL spans {} timelines (the server was promoted during it): take it again",
            ranges.len()
        )));
    }
    let range = &ranges[0];
    let lsn = |key: &str| -> Result<Lsn> {
        range
            .get(key)
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad(format!("its WAL range has no {key}")))?
            .parse()
    };
    let timeline = range
        .get("Timeline")
        .and_then(|v| v.as_u64())
        .and_then(|t| u32::try_from(t).ok())
        .ok_or_else(|| bad("its WAL range has no Timeline".to_string()))?;
    Ok((timeline, lsn("Start-LSN")?, lsn("End-LSN")?))
}

/// Take a base backup of a running server into `repo`, without stopping it.
///
/// With [`BaseBackupRequest::data_dir`]: `pg_backup_start(label, fast)` on a connection held
/// for the whole backup, a full snapshot of the data directory read in place (a live backup:
/// the contents of `pg_wal`, `pg_replslot`, `pg_dynshmem`, `pg_notify`, `pg_serial`,
/// `pg_snapshots`, `pg_stat_tmp`, `pg_subtrans`, `pgsql_tmp*`, `pg_internal.init`,
/// `postmaster.pid` and `postmaster.opts` left out, as PostgreSQL's documentation says), then
/// `pg_backup_stop` (it returns once the WAL up to the stop point is archived), whose
/// `backup_label` and WAL range go into the same snapshot. A backup that fails or is killed
/// leaves no snapshot, and the server leaves backup mode when the session ends.
///
/// Without: `pg_basebackup -X none --checkpoint=fast` into a work directory, then a full
/// snapshot of the copy tagged with the WAL range from `backup_manifest` (see
/// [`BaseBackup::tags`]). The copy is removed afterwards.
///
/// Refuses a server without `archive_mode` (a backup without archived WAL cannot be
/// restored), one older than PostgreSQL 13 (no backup manifests), and a server other than the
/// one whose WAL `repo` holds.
///
/// ```no_run
/// # async fn f(repo: deploykit_backup::Repository) -> deploykit_core::Result<()> {
/// use deploykit_postgres::{BaseBackupRequest, PgBinaries, take_base_backup};
/// let request = BaseBackupRequest::builder()
///     .connection("host=127.0.0.1 port=5432 user=postgres")
///     .bins(PgBinaries::find()?)
///     .build();
/// let report = take_base_backup(&repo, &request).await?;
/// println!("{} needs WAL from {}", report.backup.snapshot, report.backup.start_lsn);
/// # Ok(())
/// # }
/// ```
pub async fn take_base_backup(
    repo: &Repository,
    request: &BaseBackupRequest,
) -> Result<BaseBackupReport> {
    let started = Instant::now();
    let client = connect(&request.connection).await?;
    let rows = simple_query(
        &client,
        "SELECT (SELECT system_identifier FROM pg_control_system())::text, \
                (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'), \
                current_setting('archive_mode'), current_setting('server_version_num'), \
                current_setting('data_directory'), pg_is_in_recovery()::text",
    )
    .await?;
    let row = rows
        .first()
        .ok_or_else(|| Error::backend("read the server's settings", "the query returned no row"))?;
    let field = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
    let system_identifier: u64 = field(0).parse().map_err(|_| {
        Error::backend(
            "read the server's settings",
            format!("system identifier {:?}", field(0)),
        )
    })?;
    let wal_segment_size: u64 = field(1).parse().map_err(|_| {
        Error::backend(
            "read the server's settings",
            format!("wal_segment_size {:?}", field(1)),
        )
    })?;
    if field(2) == "off" {
        return Err(Error::invalid(
            "archive_mode",
            "is off on the server: a base backup is restorable only with its WAL archived; set \
             archive_mode = on and archive_command = 'deploykit pg wal-push %p --repo …' (a \
             restart) and try again",
        ));
    }
    if field(3).parse::<u32>().unwrap_or(0) < 130_000 {
        return Err(Error::invalid(
            "server_version_num",
            format!(
                "{}: PostgreSQL 13 or later is needed (backup manifests)",
                field(3)
            ),
        ));
    }
    ClusterIdentity {
        system_identifier,
        wal_segment_size,
    }
    .record(repo)
    .await?;

    if let Some(dir) = &request.data_dir {
        let facts = ServerFacts {
            system_identifier,
            wal_segment_size,
            version_num: field(3).parse().unwrap_or(0),
            data_directory: field(4),
            in_recovery: field(5) == "true",
        };
        let (backup, files, bytes, bytes_stored, copy_duration) =
            backup_in_place(repo, client, dir, facts).await?;
        tracing::info!(
            snapshot = %backup.snapshot,
            start_lsn = %backup.start_lsn,
            stop_lsn = %backup.stop_lsn,
            bytes,
            "base backup stored (read in place)"
        );
        return Ok(BaseBackupReport {
            backup,
            files,
            bytes,
            bytes_stored,
            copy_duration,
            duration: started.elapsed(),
        });
    }
    drop(client);
    let work = request
        .work_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
        .join(format!(
            "deploykit-basebackup-{}-{}",
            std::process::id(),
            Utc::now().timestamp_micros()
        ));
    let result = copy_and_store(repo, request, &work, system_identifier, wal_segment_size).await;
    if let Err(e) = std::fs::remove_dir_all(&work)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %work.display(), error = %e, "could not remove the base backup's copy");
    }
    let (backup, files, bytes, bytes_stored, copy_duration) = result?;
    Ok(BaseBackupReport {
        backup,
        files,
        bytes,
        bytes_stored,
        copy_duration,
        duration: started.elapsed(),
    })
}

async fn copy_and_store(
    repo: &Repository,
    request: &BaseBackupRequest,
    work: &Path,
    system_identifier: u64,
    wal_segment_size: u64,
) -> Result<(BaseBackup, u64, u64, u64, Duration)> {
    let data = work.join(DEFAULT_ROOT);
    std::fs::create_dir_all(work)
        .map_err(|e| Error::backend(format!("create {}", work.display()), e.to_string()))?;
    let start_time = now();
    let copy_started = Instant::now();
    let mut basebackup = command(&request.bins.tool("pg_basebackup"), None);
    basebackup
        .arg("--dbname")
        .arg(&request.connection)
        .arg("--pgdata")
        .arg(&data)
        .args(["--wal-method=none", "--checkpoint=fast", "--no-sync"])
        .args(["--no-password", "--label=deploykit"]);
    run(basebackup, "pg_basebackup").await?;
    let copy_duration = copy_started.elapsed();
    let stop_time = now();
    let manifest = std::fs::read(data.join("backup_manifest")).map_err(|e| {
        Error::backend(
            format!("read {}", data.join("backup_manifest").display()),
            e.to_string(),
        )
    })?;
    let (timeline, start_lsn, stop_lsn) = wal_range(&manifest)?;
    let mut backup = BaseBackup {
        snapshot: String::new(),
        timeline,
        start_lsn,
        stop_lsn,
        start_time,
        stop_time,
        wal_segment_size,
        system_identifier,
        root: DEFAULT_ROOT.to_string(),
    };
    let (id, snapshot) = repo
        .backup(
            BackupRequest::builder()
                .paths(vec![data])
                .kind(BackupKind::Full)
                .tags(backup.tags())
                .build(),
        )
        .await?;
    backup.snapshot = id;
    let s = &snapshot.summary;
    tracing::info!(
        snapshot = %backup.snapshot,
        start_lsn = %backup.start_lsn,
        stop_lsn = %backup.stop_lsn,
        bytes = s.bytes_total,
        "base backup stored"
    );
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
    use crate::catalog::BASE_BACKUP_TAG;
    use chrono::DateTime;
    use deploykit_backup::Snapshot;

    fn sample() -> BaseBackup {
        BaseBackup {
            snapshot: "abc".into(),
            timeline: 1,
            start_lsn: "0/2000028".parse().unwrap(),
            stop_lsn: "0/4000100".parse().unwrap(),
            start_time: DateTime::parse_from_rfc3339("2026-12-05T08:00:00.123456Z")
                .unwrap()
                .with_timezone(&Utc),
            stop_time: DateTime::parse_from_rfc3339("2026-12-05T08:00:03.5Z")
                .unwrap()
                .with_timezone(&Utc),
            wal_segment_size: 16 << 20,
            system_identifier: 7_312_345_678_901_234_567,
            root: "main".into(),
        }
    }

    #[test]
    fn tags_record_the_wal_range_and_read_back() {
        let backup = sample();
        let tags = backup.tags();
        assert!(tags.contains("pg.wal_start=000000010000000000000002"));
        assert!(tags.contains("pg.wal_stop=000000010000000000000004"));
        assert!(tags.contains("pg.start_time=2026-12-05T08:00:00.123456Z"));
        let json = serde_json::json!({
            "time": 0, "finished": 0, "host": "h", "paths": [], "tags": tags,
            "kind": "full", "parent": null, "tree": "t",
            "summary": { "files": 0, "dirs": 0, "files_read": 0, "bytes_total": 0,
                         "bytes_read": 0, "blobs_added": 0, "bytes_stored": 0 }
        });
        let snapshot: Snapshot = serde_json::from_value(json.clone()).unwrap();
        let read = BaseBackup::from_snapshot("abc", &snapshot)
            .unwrap()
            .unwrap();
        assert_eq!(read, backup);
        // Written before the root entry's name was recorded: pg_basebackup's `pgdata`.
        let mut older = json.clone();
        older["tags"] = serde_json::json!(
            tags.iter()
                .filter(|t| !t.starts_with("pg.root="))
                .collect::<Vec<_>>()
        );
        let older: Snapshot = serde_json::from_value(older).unwrap();
        let read = BaseBackup::from_snapshot("abc", &older).unwrap().unwrap();
        assert_eq!(read.root, "pgdata");
        // A stop point at a segment boundary needs nothing of the next segment.
        let mut at_boundary = backup.clone();
        at_boundary.stop_lsn = "0/5000000".parse().unwrap();
        assert_eq!(at_boundary.last_segment().number, 4);
        // Not a base backup; a damaged one names the tag.
        let mut other = json.clone();
        other["tags"] = serde_json::json!(["daily"]);
        let other: Snapshot = serde_json::from_value(other).unwrap();
        assert!(BaseBackup::from_snapshot("x", &other).is_none());
        let mut damaged = json;
        damaged["tags"] = serde_json::json!([BASE_BACKUP_TAG, "pg.timeline=one"]);
        let damaged: Snapshot = serde_json::from_value(damaged).unwrap();
        let e = BaseBackup::from_snapshot("x", &damaged)
            .unwrap()
            .unwrap_err();
        assert!(e.to_string().contains("snapshot x tag pg.timeline"), "{e}");
    }

    #[test]
    fn the_wal_range_comes_from_the_manifest() {
        let manifest = br#"{"PostgreSQL-Backup-Manifest-Version": 1, "Files": [],
            "WAL-Ranges": [{ "Timeline": 2, "Start-LSN": "0/2000028", "End-LSN": "0/2000138" }],
            "Manifest-Checksum": "x"}"#;
        assert_eq!(
            wal_range(manifest).unwrap(),
            (2, Lsn(0x200_0028), Lsn(0x200_0138))
        );
        assert!(wal_range(b"{}").is_err());
        let two = br#"{"WAL-Ranges": [
            { "Timeline": 1, "Start-LSN": "0/1", "End-LSN": "0/2" },
            { "Timeline": 2, "Start-LSN": "0/2", "End-LSN": "0/3" }]}"#;
        assert!(
            wal_range(two)
                .unwrap_err()
                .to_string()
                .contains("spans 2 timelines")
        );
    }
}
