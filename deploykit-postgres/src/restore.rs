//! Point-in-time recovery: the newest base backup before the target, restored to a new data
//! directory, then PostgreSQL itself replays the archived WAL up to the target
//! (`recovery.signal`, `restore_command`) and is promoted; a query checks the result.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use typed_builder::TypedBuilder;

use crate::archive::{archived_segments, first_missing, wal_object_name};
use crate::catalog::{BaseBackup, base_backups};
use crate::prefetch::{PREFETCH_DIR, RunSpooler, remove_spool};
use crate::server::{OsUser, PgBinaries, Rows, Server, ServerOptions, chown_tree, free_port};
use crate::wal::{Lsn, WalSegment};
use deploykit_backup::{Repository, RestoreOptions};
use deploykit_core::time::Timestamp;
use deploykit_core::{Error, Result};

/// Where recovery stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// The end of the archived WAL.
    Latest,
    /// The last transaction committed at or before this time.
    Time(DateTime<Utc>),
    /// This WAL position.
    Lsn(Lsn),
    /// A restore point made with `pg_create_restore_point(name)`.
    Name(String),
}

impl fmt::Display for RecoveryTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoveryTarget::Latest => f.write_str("the end of the archive"),
            RecoveryTarget::Time(t) => write!(f, "time {}", t.format("%Y-%m-%d %H:%M:%S%.6f UTC")),
            RecoveryTarget::Lsn(l) => write!(f, "LSN {l}"),
            RecoveryTarget::Name(n) => write!(f, "restore point {n:?}"),
        }
    }
}

impl RecoveryTarget {
    /// Parse a time: RFC 3339 (`2026-12-05T08:10:00.25Z`) or PostgreSQL's form
    /// (`2026-12-05 08:10:00.250000+00`); UTC unless an offset is given.
    ///
    /// ```
    /// use deploykit_postgres::RecoveryTarget;
    /// let a = RecoveryTarget::parse_time("2026-12-05 08:10:00.25+00")?;
    /// let b = RecoveryTarget::parse_time("2026-12-05T10:10:00.250+02:00")?;
    /// assert_eq!(a, b);
    /// # Ok::<(), deploykit_core::Error>(())
    /// ```
    pub fn parse_time(text: &str) -> Result<DateTime<Utc>> {
        let mut s = text.trim().replacen(' ', "T", 1);
        let time_at = s.find(['T', 't']).map_or(s.len(), |i| i + 1);
        let tail = s[time_at..].to_string();
        if tail.ends_with(['Z', 'z']) {
        } else if let Some(sign) = tail.rfind(['+', '-']) {
            let offset = &tail[sign + 1..];
            if offset.len() == 2 {
                s.push_str(":00");
            } else if offset.len() == 4 && !offset.contains(':') {
                s.insert(s.len() - 2, ':');
            }
        } else {
            s.push('Z');
        }
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| {
                Error::invalid(
                    "restore.time",
                    format!(
                        "{text:?} is not a time like 2026-12-05T08:10:00Z or 2026-12-05 \
                         08:10:00.25+00 ({e})"
                    ),
                )
            })
    }

    /// The `recovery_target_*` setting, if any.
    fn setting(&self) -> Option<(&'static str, String)> {
        match self {
            RecoveryTarget::Latest => None,
            RecoveryTarget::Time(t) => Some((
                "recovery_target_time",
                t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
            )),
            RecoveryTarget::Lsn(l) => Some(("recovery_target_lsn", l.to_string())),
            RecoveryTarget::Name(n) => Some(("recovery_target_name", n.clone())),
        }
    }
}

/// A value in `postgresql.conf` syntax: single-quoted, quotes doubled, backslashes escaped.
fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// What to restore, where, and how to check it.
#[derive(Clone, Debug, TypedBuilder)]
#[non_exhaustive]
pub struct RestoreRequest {
    /// The new data directory: must not exist, or be empty.
    #[builder(setter(into))]
    pub to: PathBuf,
    /// Where recovery stops (default: the end of the archive).
    #[builder(default = RecoveryTarget::Latest)]
    pub target: RecoveryTarget,
    /// What PostgreSQL runs to fetch a WAL file, with `%f` (its name) and `%p` (where to put
    /// it): `deploykit pg wal-fetch %f %p --repo …`. It must exit 1 for a file the archive
    /// does not hold, and above 125 for any other failure (PostgreSQL then stops recovery
    /// instead of ending it early).
    #[builder(setter(into))]
    pub restore_command: String,
    /// PostgreSQL's programs.
    pub bins: PgBinaries,
    /// A query run once recovery has ended; its rows are in the report.
    #[builder(default, setter(strip_option, into))]
    pub verify_query: Option<String>,
    /// The OS user that runs PostgreSQL and owns the restored directory (default: this
    /// process's user; root must name one).
    #[builder(default)]
    pub run_as: Option<OsUser>,
    /// The role the verify query runs as (default: the name of the OS user running
    /// PostgreSQL, which `initdb` makes the superuser).
    #[builder(default, setter(strip_option, into))]
    pub user: Option<String>,
    /// The database the verify query runs in (default `postgres`).
    #[builder(default = "postgres".to_string(), setter(into))]
    pub database: String,
    /// How long recovery may take (default one hour).
    #[builder(default = Duration::from_secs(3600))]
    pub timeout: Duration,
    /// WAL segments fetched ahead into the spool `deploykit pg wal-fetch` takes its
    /// segments from ([`PREFETCH_DIR`](crate::PREFETCH_DIR) in the restored `pg_wal`),
    /// at most this many at once: the first ones while the base backup's files are restored,
    /// before PostgreSQL starts, then ahead of its replay. 0 (the default) fetches nothing
    /// ahead: a `restore_command` that does not read the spool would never use them.
    #[builder(default)]
    pub prefetch: u32,
}

/// What [`restore`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestoreReport {
    /// The base backup restored.
    pub base_backup: BaseBackup,
    /// The first and last WAL segments checked present in the archive before recovery.
    pub wal_checked: (String, String),
    /// The WAL position recovery ended at (after promotion).
    pub end_lsn: Lsn,
    /// The timeline the promoted cluster writes on.
    pub timeline: u32,
    /// The verify query's rows.
    pub verify_rows: Option<Rows>,
    /// Time to restore the base backup's files.
    pub files_duration: Duration,
    /// WAL segments fetched while the files were restored, before PostgreSQL started (see
    /// [`RestoreRequest::prefetch`]).
    pub prefetched_before_start: usize,
    /// Time from starting PostgreSQL to its promotion.
    pub recovery_duration: Duration,
    /// Time from the start of the restore until the promoted cluster had answered (the verify
    /// query, or where it writes without one): when a cluster started on the restored
    /// directory would be serving. The rest of [`duration`](Self::duration) is the clean
    /// stop (its shutdown checkpoint) and the removal of the prefetch spool.
    pub answered_duration: Duration,
    /// Time for the whole restore.
    pub duration: Duration,
    /// The server's log of the recovery.
    pub log_file: PathBuf,
}

/// Restore `request.to` to `request.target`:
///
/// 1. the newest base backup that is consistent before the target (for a restore point,
///    whose position is not known in advance, the newest, then older ones while PostgreSQL
///    reports the point was not reached); a target before the oldest base backup is refused;
/// 2. the archive is checked to hold every WAL segment from the backup's start to the target
///    (to the newest segment for [`RecoveryTarget::Latest`]; for a time, to the first segment
///    archived after it), refusing with the first missing one — PostgreSQL would otherwise
///    end recovery early without a word;
/// 3. the backup's files are restored — while the first of those segments are fetched
///    into the spool `deploykit pg wal-fetch` reads (with [`RestoreRequest::prefetch`]),
///    and kept ahead of replay from then on — `recovery.signal` and the recovery settings
///    (`restore_command`, the target, `recovery_target_action = 'promote'`,
///    `recovery_target_timeline = 'current'`) are added to `postgresql.auto.conf`. To the
///    end of the archive ([`RecoveryTarget::Latest`]) the cluster starts as a standby
///    (`standby.signal`) and is asked to promote as soon as it answers: PostgreSQL still
///    replays everything the archive holds, and then ends recovery with a fast promotion
///    (an end-of-recovery record and a checkpoint in the background) instead of waiting for
///    an end-of-recovery checkpoint that writes every page replay dirtied;
/// 4. PostgreSQL is started on a free port with a private Unix socket (no TCP, archiving
///    off so the restored cluster writes nothing into the archive; shared buffers sized to
///    the WAL it replays and no restartpoints, for this run only), recovery runs to its end
///    and the cluster is promoted; the verify query runs; PostgreSQL is stopped, and the
///    spool of segments `wal-fetch` prefetched ([`PREFETCH_DIR`](crate::PREFETCH_DIR)) is
///    removed.
///
/// A recovery that fails (a damaged or unreadable segment) ends PostgreSQL: the error carries
/// the telling lines of its log, which name the segment.
///
/// ```no_run
/// # async fn f(repo: deploykit_backup::Repository) -> deploykit_core::Result<()> {
/// use deploykit_postgres::{PgBinaries, RecoveryTarget, RestoreRequest, restore};
/// let request = RestoreRequest::builder()
///     .to("/srv/pg-restored")
///     .target(RecoveryTarget::Time(RecoveryTarget::parse_time("2026-12-05 08:10:00+00")?))
///     .restore_command("deploykit pg wal-fetch %f %p --repo /backups/pg")
///     .bins(PgBinaries::find()?)
///     .verify_query("SELECT count(*) FROM orders")
///     .build();
/// let report = restore(&repo, &request).await?;
/// println!("{:?}", report.verify_rows);
/// # Ok(())
/// # }
/// ```
pub async fn restore(repo: &Repository, request: &RestoreRequest) -> Result<RestoreReport> {
    let started = Instant::now();
    check_empty(&request.to)?;
    let backups = base_backups(repo).await?;
    let oldest = backups.first().ok_or_else(|| {
        Error::not_found("a base backup in the repository (take one with `deploykit pg backup`)")
    })?;
    let before_oldest = |what: String| {
        Error::invalid(
            "restore.target",
            format!(
                "{what} is before the oldest base backup is consistent (snapshot {}, at {} / \
                 {}): nothing can be restored to it",
                &oldest.snapshot[..12.min(oldest.snapshot.len())],
                oldest.stop_lsn,
                oldest.stop_time.format("%Y-%m-%d %H:%M:%S%.3f UTC")
            ),
        )
    };
    let candidates: Vec<&BaseBackup> = match &request.target {
        RecoveryTarget::Latest => backups.last().into_iter().collect(),
        RecoveryTarget::Time(t) => {
            let found: Vec<_> = backups
                .iter()
                .rev()
                .find(|b| b.stop_time <= *t)
                .into_iter()
                .collect();
            if found.is_empty() {
                return Err(before_oldest(request.target.to_string()));
            }
            found
        }
        RecoveryTarget::Lsn(l) => {
            let found: Vec<_> = backups
                .iter()
                .rev()
                .find(|b| b.stop_lsn <= *l)
                .into_iter()
                .collect();
            if found.is_empty() {
                return Err(before_oldest(request.target.to_string()));
            }
            found
        }
        RecoveryTarget::Name(_) => backups.iter().rev().collect(),
    };
    let mut last_error = None;
    for (i, backup) in candidates.iter().enumerate() {
        let run = check_wal(repo, backup, &request.target).await?;
        match recover(repo, request, backup, &run, started).await {
            Ok(mut report) => {
                report.wal_checked = (run.name(run.first), run.name(run.last));
                report.duration = started.elapsed();
                return Ok(report);
            }
            Err(e)
                if matches!(request.target, RecoveryTarget::Name(_))
                    && i + 1 < candidates.len()
                    && e.chain()
                        .contains("before configured recovery target was reached") =>
            {
                tracing::info!(snapshot = %backup.snapshot, "the restore point is not after this base backup; trying an older one");
                remove_dir(&request.to)?;
                last_error = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| Error::not_found("a base backup to restore")))
}

pub(crate) fn check_empty(dir: &Path) -> Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::invalid(
                    "restore.to",
                    format!(
                        "{} exists and is not empty: restore into a new directory",
                        dir.display()
                    ),
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::backend(
            format!("read {}", dir.display()),
            e.to_string(),
        )),
    }
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::backend(
            format!("remove {}", dir.display()),
            e.to_string(),
        )),
    }
}

/// The segments recovery from a base backup reads, in order: `first` to `last`, of
/// `timeline`.
struct WalRun {
    timeline: u32,
    size: u64,
    first: u64,
    last: u64,
}

impl WalRun {
    fn name(&self, number: u64) -> String {
        WalSegment {
            timeline: self.timeline,
            number,
        }
        .file_name(self.size)
    }

    /// The WAL in the run, in bytes.
    fn bytes(&self) -> u64 {
        (self.last + 1).saturating_sub(self.first) * self.size
    }

    fn names(&self) -> Vec<String> {
        (self.first..=self.last).map(|n| self.name(n)).collect()
    }
}

/// Check the archive holds every segment recovery from `backup` to `target` needs; those
/// segments.
async fn check_wal(
    repo: &Repository,
    backup: &BaseBackup,
    target: &RecoveryTarget,
) -> Result<WalRun> {
    let size = backup.wal_segment_size;
    let present = archived_segments(repo, backup.timeline, size).await?;
    let first = backup.first_segment().number;
    let consistent = backup.last_segment().number;
    let newest = present.range(first..).next_back().copied();
    let (last, until) = match target {
        RecoveryTarget::Latest => (
            newest.unwrap_or(consistent).max(consistent),
            "the newest archived".to_string(),
        ),
        RecoveryTarget::Lsn(l) => ((l.0 / size).max(consistent), format!("the one holding {l}")),
        RecoveryTarget::Time(t) => {
            let t = Timestamp::from_millis(u64::try_from(t.timestamp_millis()).unwrap_or(0));
            let mut end = newest.unwrap_or(consistent);
            for &n in present.range(first..) {
                let name = wal_object_name(
                    &WalSegment {
                        timeline: backup.timeline,
                        number: n,
                    }
                    .file_name(size),
                );
                if repo.named(&name).await?.created > t {
                    end = n;
                    break;
                }
            }
            (
                end.max(consistent),
                "the first archived after the target".to_string(),
            )
        }
        RecoveryTarget::Name(_) => (consistent, "the backup's stop point".to_string()),
    };
    let run = WalRun {
        timeline: backup.timeline,
        size,
        first,
        last,
    };
    if let Some(missing) = first_missing(&present, first, last) {
        return Err(Error::not_found(format!(
            "WAL segment {} in the archive (recovering base backup {} needs every segment from \
             {} to {}, {until}; PostgreSQL would end recovery early at the gap)",
            run.name(missing),
            &backup.snapshot[..12.min(backup.snapshot.len())],
            run.name(first),
            run.name(last)
        )));
    }
    Ok(run)
}

/// Restore `backup`'s files to `request.to` and let PostgreSQL recover them with the
/// segments of `run` (`started`: when the whole restore began).
async fn recover(
    repo: &Repository,
    request: &RestoreRequest,
    backup: &BaseBackup,
    run: &WalRun,
    started: Instant,
) -> Result<RestoreReport> {
    let to = &request.to;
    let files_started = Instant::now();
    let spool = to.join("pg_wal").join(PREFETCH_DIR);
    let early = EarlySpool::start(repo, request, run)?;
    let restored = restore_files(repo, backup, to).await;
    let (prefetched_before_start, resume) = early.finish(restored.is_ok(), &spool).await;
    restored?;
    set_private_mode(to)?;
    write_recovery_settings(to, request, backup)?;
    let log_file = to.join("deploykit-restore.log");
    std::fs::write(&log_file, b"")
        .map_err(|e| Error::backend(format!("create {}", log_file.display()), e.to_string()))?;
    chown_tree(to, request.run_as.as_ref())?;
    let files_duration = files_started.elapsed();
    // Ahead of replay from here on, where `wal-fetch` looks.
    let spooler = resume.map(|done| {
        RunSpooler::start(
            repo,
            &spool,
            run.names().split_off(done),
            request.prefetch as usize,
            request.run_as.clone(),
        )
    });

    let socket_dir = PrivateDir::create(request.run_as.as_ref())?;
    let hba = socket_dir.path.join("pg_hba.conf");
    std::fs::write(
        &hba,
        "# deploykit pg restore: the private socket only\nlocal all all trust\n",
    )
    .map_err(|e| Error::backend(format!("write {}", hba.display()), e.to_string()))?;
    chown_tree(&hba, request.run_as.as_ref())?;
    let user = match (&request.user, &request.run_as) {
        (Some(u), _) => u.clone(),
        (None, Some(os)) => os.name.clone(),
        (None, None) => OsUser::current()?.name,
    };
    let mut settings: Vec<(String, String)> = [
        ("archive_mode", "off"),
        ("hba_file", &*hba.to_string_lossy()),
        ("hot_standby", "on"),
        ("logging_collector", "off"),
        ("log_destination", "stderr"),
        ("synchronous_standby_names", ""),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    settings.extend(recovery_tuning(available_memory(), run.bytes()));
    let options = ServerOptions::builder()
        .port(free_port()?)
        .socket_dir(socket_dir.path.clone())
        .settings(settings)
        .run_as(request.run_as.clone())
        .user(user)
        .database(request.database.clone())
        .log_file(log_file.clone())
        .start_timeout(request.timeout)
        .build();
    let recovery_started = Instant::now();
    let context = |e: Error| {
        Error::backend(
            format!(
                "recover {} from base backup {} to {}",
                to.display(),
                &backup.snapshot[..12.min(backup.snapshot.len())],
                request.target
            ),
            format!("{} (the server's log: {})", e.chain(), log_file.display()),
        )
    };
    let recovered = async {
        let mut server = Server::start(&request.bins, to, options)
            .await
            .map_err(context)?;
        if promotes_early(&request.target) {
            // Replays the whole archive first, then ends recovery at its first miss.
            server
                .query("SELECT pg_promote(false)")
                .await
                .map_err(context)?;
        }
        server
            .wait_for_promotion(request.timeout.saturating_sub(recovery_started.elapsed()))
            .await
            .map_err(context)?;
        let recovery_duration = recovery_started.elapsed();
        // Stopped cleanly whatever the queries say.
        let checked = check_recovered(&server, request.verify_query.as_deref()).await;
        let answered = Instant::now();
        server.stop().await?;
        checked.map(|c| (c, recovery_duration, answered))
    }
    .await;
    if let Some(spooler) = spooler {
        spooler.stop().await;
    }
    // Segments prefetched that recovery did not need.
    if let Err(e) = remove_spool(&spool).await {
        tracing::warn!(error = %e.chain(), "could not remove the prefetch spool");
    }
    let ((end_lsn, timeline, verify_rows), recovery_duration, answered) = recovered?;
    Ok(RestoreReport {
        base_backup: backup.clone(),
        wal_checked: (String::new(), String::new()),
        end_lsn,
        timeline,
        verify_rows,
        files_duration,
        prefetched_before_start,
        recovery_duration,
        answered_duration: answered.duration_since(started),
        duration: Duration::ZERO,
        log_file,
    })
}

/// The first segments of a restore's [`WalRun`], fetched while the base backup's files are
/// restored: into a directory beside the new data directory (which does not exist until
/// its files are all there), moved into its `pg_wal` once it does.
struct EarlySpool {
    dir: PathBuf,
    spooler: Option<RunSpooler>,
}

impl EarlySpool {
    fn start(repo: &Repository, request: &RestoreRequest, run: &WalRun) -> Result<Self> {
        let to = &request.to;
        let parent = to
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = to.file_name().unwrap_or_default().to_string_lossy();
        let dir = parent.join(format!(".{name}.deploykit-wal-{}", std::process::id()));
        if request.prefetch == 0 {
            return Ok(EarlySpool { dir, spooler: None });
        }
        remove_dir(&dir)?;
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::backend(format!("create {}", dir.display()), e.to_string()))?;
        chown_tree(&dir, request.run_as.as_ref())?;
        let spooler = RunSpooler::start(
            repo,
            &dir,
            run.names(),
            request.prefetch as usize,
            request.run_as.clone(),
        );
        Ok(EarlySpool {
            dir,
            spooler: Some(spooler),
        })
    }

    /// Stop fetching; with the files `restored`, move what was fetched to `spool` (in the
    /// restored `pg_wal`). How many of the run's first segments are there, and the same when
    /// spooling should go on (none failed).
    async fn finish(self, restored: bool, spool: &Path) -> (usize, Option<usize>) {
        let Some(spooler) = self.spooler else {
            return (0, None);
        };
        let spooled = spooler.stop().await;
        if restored {
            match std::fs::rename(&self.dir, spool) {
                Ok(()) => {
                    return (
                        spooled.done,
                        spooled.failed.is_none().then_some(spooled.done),
                    );
                }
                Err(e) => tracing::warn!(
                    from = %self.dir.display(), to = %spool.display(), error = %e,
                    "could not move the WAL fetched ahead into place; recovery fetches it again"
                ),
            }
        }
        let _ = remove_dir(&self.dir);
        (0, None)
    }
}

/// Settings for the recovery run only (the restored directory's own configuration is left as
/// it was): shared buffers that hold every page replay of `wal` bytes touches, so replay
/// finds them in memory instead of evicting and reading them back for each record, and no
/// restartpoint before the end of recovery (they would write those pages out while replay
/// still needs them).
///
/// Each page replay touches arrives with a full-page image at its first change after the
/// base backup's checkpoint, so the WAL's size bounds the pages; twice that leaves room for
/// compressed images and pages that records create. Between 128 MiB (PostgreSQL's default)
/// and a quarter of the memory available (at most 8 GiB): more would be memory the machine
/// must fault in and zero for nothing, and would keep a scan of a large table (the verify
/// query) from going through PostgreSQL's small ring of buffers.
fn recovery_tuning(available: Option<u64>, wal: u64) -> Vec<(String, String)> {
    const MIB: u64 = 1024 * 1024;
    let most = available.map_or(128 * MIB, |a| (a / 4).clamp(128 * MIB, 8192 * MIB));
    let buffers = wal.saturating_mul(2).clamp(128 * MIB, most);
    vec![
        ("shared_buffers".into(), format!("{}MB", buffers / MIB)),
        ("max_wal_size".into(), "64GB".into()),
        ("checkpoint_timeout".into(), "1d".into()),
    ]
}

/// The memory available on this machine (`MemAvailable` of `/proc/meminfo`), if known.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Where the promoted server writes (LSN, timeline), and the verify query's rows.
async fn check_recovered(
    server: &Server,
    verify: Option<&str>,
) -> Result<(Lsn, u32, Option<Rows>)> {
    let position = server
        .query(
            "SELECT pg_current_wal_lsn()::text, substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
        )
        .await?;
    let field = |i: usize| {
        position
            .first()
            .and_then(|r| r.get(i))
            .cloned()
            .flatten()
            .unwrap_or_default()
    };
    let end_lsn: Lsn = field(0).parse()?;
    let timeline = u32::from_str_radix(&field(1), 16).map_err(|_| {
        Error::backend(
            "read the recovered timeline",
            format!("{:?} is not hex", field(1)),
        )
    })?;
    let rows = match verify {
        Some(sql) => Some(server.query(sql).await.map_err(|e| {
            Error::backend(
                format!("the verify query on the restored cluster ({sql})"),
                e.chain(),
            )
        })?),
        None => None,
    };
    Ok((end_lsn, timeline, rows))
}

/// The base backup's data directory at `to`: restored beside it, then renamed into place.
pub(crate) async fn restore_files(repo: &Repository, backup: &BaseBackup, to: &Path) -> Result<()> {
    let parent = to
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .map_err(|e| Error::backend(format!("create {}", parent.display()), e.to_string()))?;
    let name = to
        .file_name()
        .ok_or_else(|| Error::invalid("restore.to", format!("{} has no name", to.display())))?;
    let staging = parent.join(format!(
        ".{}.deploykit-restore-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    remove_dir(&staging)?;
    let result = async {
        repo.restore(&backup.snapshot, &staging, &RestoreOptions::default())
            .await?;
        if to.exists() {
            std::fs::remove_dir(to)
                .map_err(|e| Error::backend(format!("replace {}", to.display()), e.to_string()))?;
        }
        let data = staging.join(&backup.root);
        if !data.is_dir() {
            return Err(Error::Corrupt {
                what: format!("base backup {}", backup.snapshot),
                source: format!("it has no directory {} at its root", backup.root).into(),
            });
        }
        // An in-place backup's label (and tablespace map) sit beside the directory.
        for beside in ["backup_label", "tablespace_map"] {
            let from = staging.join(beside);
            if from.is_file() {
                std::fs::rename(&from, data.join(beside)).map_err(|e| {
                    Error::backend(format!("move {beside} into place"), e.to_string())
                })?;
            }
        }
        real_wal_dir(&data)?;
        std::fs::rename(&data, to).map_err(|e| {
            Error::backend(
                format!("move the restored files to {}", to.display()),
                e.to_string(),
            )
        })
    }
    .await;
    remove_dir(&staging)?;
    result
}

/// A data directory's mode: PostgreSQL refuses to start on one others may enter.
pub(crate) fn set_private_mode(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::backend(format!("set the mode of {}", dir.display()), e.to_string()))
}

/// `pg_wal` as a directory of the restored data directory: a source whose `pg_wal` was a
/// link elsewhere (`initdb -X`) must not have the restored cluster write into that place.
fn real_wal_dir(data: &Path) -> Result<()> {
    let wal = data.join("pg_wal");
    let io = |e: std::io::Error| Error::backend(format!("create {}", wal.display()), e.to_string());
    match std::fs::symlink_metadata(&wal) {
        Ok(m) if m.file_type().is_symlink() => {
            std::fs::remove_file(&wal).map_err(io)?;
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(wal.join("archive_status"))
        .map_err(io)
}

/// Whether recovery to `target` runs as a standby promoted at once (see [`restore`]): only to
/// the end of the archive. A standby that misses a target would wait for more WAL instead of
/// failing, and a restore point's search of older base backups needs that failure.
fn promotes_early(target: &RecoveryTarget) -> bool {
    matches!(target, RecoveryTarget::Latest)
}

/// `recovery.signal` (`standby.signal` to the end of the archive), and the recovery settings.
fn write_recovery_settings(to: &Path, request: &RestoreRequest, backup: &BaseBackup) -> Result<()> {
    let mut settings = vec![
        ("restore_command", request.restore_command.clone()),
        ("recovery_target_timeline", "current".to_string()),
    ];
    if let Some((name, value)) = request.target.setting() {
        settings.push((name, value));
        settings.push(("recovery_target_action", "promote".to_string()));
    }
    let signal = if promotes_early(&request.target) {
        RecoverySignal::Standby
    } else {
        RecoverySignal::Recovery
    };
    write_recovery_files(
        to,
        signal,
        &format!(
            "deploykit pg restore: base backup {} recovered to {}",
            backup.snapshot, request.target
        ),
        &settings,
    )
}

/// How a restored data directory starts: recovering once, or as a standby.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RecoverySignal {
    /// `recovery.signal`: archive recovery, then the cluster ends recovery.
    Recovery,
    /// `standby.signal`: it keeps replaying what the archive gets until promoted.
    Standby,
}

/// The signal file (stale ones and a stale `postmaster.pid` removed) and `settings` appended
/// to `postgresql.auto.conf` (which wins over `postgresql.conf`) under a `why` comment.
pub(crate) fn write_recovery_files(
    to: &Path,
    signal: RecoverySignal,
    why: &str,
    settings: &[(&str, String)],
) -> Result<()> {
    let io = |path: &Path, e: std::io::Error| {
        Error::backend(format!("write {}", path.display()), e.to_string())
    };
    for stale in ["postmaster.pid", "standby.signal", "recovery.signal"] {
        let path = to.join(stale);
        if path.exists() {
            std::fs::remove_file(&path).map_err(|e| io(&path, e))?;
        }
    }
    let signal = to.join(match signal {
        RecoverySignal::Recovery => "recovery.signal",
        RecoverySignal::Standby => "standby.signal",
    });
    std::fs::write(&signal, b"").map_err(|e| io(&signal, e))?;
    let mut text = format!("\n# Added by {why}.\n");
    for (name, value) in settings {
        text.push_str(&format!("{name} = {}\n", conf_quote(value)));
    }
    let conf = to.join("postgresql.auto.conf");
    let mut all = std::fs::read_to_string(&conf).unwrap_or_default();
    all.push_str(&text);
    std::fs::write(&conf, all).map_err(|e| io(&conf, e))
}

/// A directory only its owner may enter, removed on drop: the restored server's socket and
/// authentication file.
pub(crate) struct PrivateDir {
    pub(crate) path: PathBuf,
}

impl PrivateDir {
    pub(crate) fn create(owner: Option<&OsUser>) -> Result<Self> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        // Short: a Unix socket's path must fit in 107 bytes.
        let tmp = std::env::temp_dir();
        let base = if tmp.as_os_str().len() <= 48 {
            tmp
        } else {
            PathBuf::from("/tmp")
        };
        let path = base.join(format!(
            "deploykit-pg-{}-{}",
            std::process::id(),
            Utc::now().timestamp_micros() % 1_000_000_000
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)))
            .map_err(|e| Error::backend(format!("create {}", path.display()), e.to_string()))?;
        let dir = PrivateDir { path };
        chown_tree(&dir.path, owner)?;
        Ok(dir)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_rfc_3339_and_postgresql_forms() {
        let want = DateTime::parse_from_rfc3339("2026-12-05T08:10:00.25Z")
            .unwrap()
            .with_timezone(&Utc);
        for text in [
            "2026-12-05T08:10:00.25Z",
            "2026-12-05 08:10:00.250000+00",
            "2026-12-05 08:10:00.25",
            "2026-12-05 10:10:00.25+02",
            "2026-12-05 10:10:00.25+0200",
            "2026-12-05T03:10:00.25-05:00",
        ] {
            assert_eq!(RecoveryTarget::parse_time(text).unwrap(), want, "{text}");
        }
        for bad in ["yesterday", "2026-12-05", "08:10:00"] {
            let e = RecoveryTarget::parse_time(bad).unwrap_err();
            assert!(e.to_string().contains("is not a time"), "{bad}: {e}");
        }
    }

    #[test]
    fn targets_become_recovery_settings() {
        let t = RecoveryTarget::parse_time("2026-12-05 08:10:00.25+00").unwrap();
        assert_eq!(
            RecoveryTarget::Time(t).setting(),
            Some((
                "recovery_target_time",
                "2026-12-05 08:10:00.250000+00".into()
            ))
        );
        assert_eq!(
            RecoveryTarget::Lsn(Lsn(0x300_0028)).setting(),
            Some(("recovery_target_lsn", "0/3000028".into()))
        );
        assert_eq!(RecoveryTarget::Latest.setting(), None);
        assert_eq!(conf_quote(r"a 'b' \c"), r"'a ''b'' \\c'");
    }

    #[test]
    fn recovery_runs_with_memory_sized_to_its_wal_and_the_machine() {
        const GIB: u64 = 1024 * 1024 * 1024;
        const SEGMENTS_100: u64 = 100 * 16 * 1024 * 1024;
        let buffers = |available, wal| recovery_tuning(available, wal)[0].1.clone();
        assert_eq!(buffers(None, SEGMENTS_100), "128MB");
        assert_eq!(
            buffers(Some(GIB / 4), SEGMENTS_100),
            "128MB",
            "never below the default"
        );
        assert_eq!(
            buffers(Some(64 * GIB), 16 << 20),
            "128MB",
            "little to replay"
        );
        assert_eq!(
            buffers(Some(64 * GIB), SEGMENTS_100),
            "3200MB",
            "twice the WAL"
        );
        assert_eq!(
            buffers(Some(8 * GIB), SEGMENTS_100),
            "2048MB",
            "a quarter at most"
        );
        assert_eq!(buffers(Some(1024 * GIB), 1 << 40), "8192MB", "capped");
        assert!(available_memory().is_some_and(|m| m > 0));
    }

    #[test]
    fn a_restore_goes_into_a_new_or_empty_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_empty(&dir.path().join("new")).is_ok());
        assert!(check_empty(dir.path()).is_ok());
        std::fs::write(dir.path().join("PG_VERSION"), "15").unwrap();
        let e = check_empty(dir.path()).unwrap_err();
        assert!(e.to_string().contains("is not empty"), "{e}");
    }
}
