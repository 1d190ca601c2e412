//! A standby that follows the archive, its promotion, and the fencing of the primary it
//! replaces: the database half of a failover.
//!
//! [`seed_standby`] restores the newest base backup into a new data directory set up as a
//! standby (`standby.signal`, the archive's `restore_command`, `recovery_target_timeline =
//! 'latest'`). Started with [`Server::start`](crate::Server::start), it replays each segment as soon as the primary
//! archives it, and answers read-only queries. [`standby_status`] and [`standby_lag`] say how
//! far it is behind the archive; [`promote_standby`] makes it the primary, after it has
//! replayed everything the archive holds; [`fence_primary`] makes sure the old primary takes
//! no more writes: stopped if it runs on this machine, and a standby (read-only) if it is ever
//! started again.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use typed_builder::TypedBuilder;

use crate::archive::{archived_segments, wal_object_name};
use crate::catalog::{BaseBackup, base_backups};
use crate::restore::{
    RecoverySignal, check_empty, restore_files, set_private_mode, write_recovery_files,
};
use crate::server::{OsUser, chown_tree, simple_query};
use crate::wal::{Lsn, WalSegment};
use deploykit_backup::Repository;
use deploykit_core::{Error, Result, Timestamp};
use tokio_postgres::Client;

/// What [`seed_standby`] sets up.
#[derive(Clone, Debug, TypedBuilder)]
#[non_exhaustive]
pub struct StandbyRequest {
    /// The standby's data directory: must not exist, or be empty.
    #[builder(setter(into))]
    pub to: PathBuf,
    /// What the standby runs to fetch a WAL file (`deploykit pg wal-fetch %f %p --repo …`),
    /// as for [`RestoreRequest::restore_command`](crate::RestoreRequest::restore_command).
    #[builder(setter(into))]
    pub restore_command: String,
    /// The OS user that runs the standby and owns its directory (default: this process's
    /// user; root must name one).
    #[builder(default)]
    pub run_as: Option<OsUser>,
    /// How long the standby waits, once it has replayed every archived segment, before it
    /// asks the archive again (PostgreSQL's `wal_retrieve_retry_interval`; default 1 s).
    #[builder(default = Duration::from_secs(1))]
    pub poll: Duration,
}

/// What [`seed_standby`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StandbySeed {
    /// The base backup the standby starts from.
    pub base_backup: BaseBackup,
    /// Time to restore its files.
    pub duration: Duration,
}

/// Set up `request.to` as a standby of the cluster that archives into `repo`, from the
/// newest base backup. Start it with [`Server::start`](crate::Server::start); it then follows the archive until
/// [`promote_standby`].
///
/// ```no_run
/// # async fn f(repo: deploykit_backup::Repository) -> deploykit_core::Result<()> {
/// use deploykit_postgres::{PgBinaries, Server, ServerOptions, StandbyRequest};
/// let request = StandbyRequest::builder()
///     .to("/srv/pg-standby")
///     .restore_command("deploykit pg wal-fetch %f %p --repo /backups/pg")
///     .build();
/// deploykit_postgres::seed_standby(&repo, &request).await?;
/// let options = ServerOptions::builder()
///     .port(5433)
///     .socket_dir("/tmp")
///     .user("postgres")
///     .log_file("/srv/pg-standby.log")
///     .build();
/// let standby = Server::start(&PgBinaries::find()?, &request.to, options).await?;
/// // … the primary is lost:
/// let client = standby.connect().await?;
/// let promotion =
///     deploykit_postgres::promote_standby(&client, std::time::Duration::from_secs(60)).await?;
/// println!("primary now, on timeline {}", promotion.timeline);
/// # Ok(())
/// # }
/// ```
pub async fn seed_standby(repo: &Repository, request: &StandbyRequest) -> Result<StandbySeed> {
    let started = Instant::now();
    check_empty(&request.to)?;
    let backups = base_backups(repo).await?;
    let backup = backups.last().ok_or_else(|| {
        Error::not_found(
            "a base backup to seed the standby from (take one with `deploykit pg backup`)",
        )
    })?;
    restore_files(repo, backup, &request.to).await?;
    set_private_mode(&request.to)?;
    let poll_ms = request.poll.as_millis().clamp(1, i32::MAX as u128);
    write_recovery_files(
        &request.to,
        RecoverySignal::Standby,
        &format!(
            "deploykit pg standby: follows the archive from base backup {}",
            backup.snapshot
        ),
        &[
            ("restore_command", request.restore_command.clone()),
            ("recovery_target_timeline", "latest".to_string()),
            ("wal_retrieve_retry_interval", format!("{poll_ms}ms")),
            ("hot_standby", "on".to_string()),
        ],
    )?;
    chown_tree(&request.to, request.run_as.as_ref())?;
    Ok(StandbySeed {
        base_backup: backup.clone(),
        duration: started.elapsed(),
    })
}

/// Where a standby stands.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StandbyStatus {
    /// Whether it is still a standby (false once promoted).
    pub in_recovery: bool,
    /// The last WAL position it replayed (where it writes, once promoted).
    pub replay_lsn: Lsn,
    /// The timeline of its last restartpoint (or, once promoted, the one it writes on).
    pub timeline: u32,
    /// When the last transaction it replayed had committed on the primary.
    pub last_replayed_commit: Option<DateTime<Utc>>,
}

/// Where the server `client` is connected to, a standby (or a promoted one), stands.
pub async fn standby_status(client: &Client) -> Result<StandbyStatus> {
    // Outside recovery the position is where it writes, and the timeline the one of the WAL
    // file it writes (the last checkpoint's may still be the old one just after promotion).
    let rows = simple_query(
        client,
        "SELECT pg_is_in_recovery()::text, \
             CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
                  ELSE pg_current_wal_lsn() END::text, \
             CASE WHEN pg_is_in_recovery() \
                  THEN lpad(to_hex((SELECT timeline_id FROM pg_control_checkpoint())), 8, '0') \
                  ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END, \
             to_char(pg_last_xact_replay_timestamp() AT TIME ZONE 'UTC', \
                     'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
    .await?;
    let field = |i: usize| {
        rows.first()
            .and_then(|r| r.get(i))
            .cloned()
            .flatten()
            .unwrap_or_default()
    };
    let what = |e: String| Error::backend("read the standby's position", e);
    Ok(StandbyStatus {
        in_recovery: field(0) == "true",
        replay_lsn: field(1).parse()?,
        timeline: u32::from_str_radix(&field(2), 16)
            .map_err(|_| what(format!("timeline {:?} is not hex", field(2))))?,
        last_replayed_commit: match field(3).as_str() {
            "" => None,
            t => Some(
                DateTime::parse_from_rfc3339(t)
                    .map_err(|e| what(format!("{t:?}: {e}")))?
                    .with_timezone(&Utc),
            ),
        },
    })
}

/// How far a standby is behind the archive.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StandbyLag {
    /// Whole segments archived after the one the standby replays (0: it replays the newest).
    pub segments: u64,
    /// The newest segment in the archive, if any.
    pub newest_archived: Option<String>,
    /// When it was archived.
    pub newest_archived_at: Option<Timestamp>,
}

impl StandbyLag {
    /// How much commit history the standby lacks, as time: none when it replays the newest
    /// segment, else from its last replayed commit (`last_replayed_commit`) to when the
    /// newest segment was archived (everything committed before that is in the archive).
    pub fn behind(&self, last_replayed_commit: Option<DateTime<Utc>>) -> Duration {
        if self.segments == 0 {
            return Duration::ZERO;
        }
        match (self.newest_archived_at, last_replayed_commit) {
            (Some(newest), Some(commit)) => {
                let commit = u64::try_from(commit.timestamp_millis()).unwrap_or(0);
                newest.since(Timestamp::from_millis(commit))
            }
            // Nothing replayed yet: as far behind as the archive is old.
            (Some(newest), None) => newest.since(Timestamp::from_millis(0)),
            (None, _) => Duration::ZERO,
        }
    }
}

/// How far `status` (a standby of the cluster archiving into `repo`, on its timeline) is
/// behind the newest segment archived on that timeline or a later one.
pub async fn standby_lag(
    repo: &Repository,
    status: &StandbyStatus,
    segment_size: u64,
) -> Result<StandbyLag> {
    let replaying = WalSegment::containing(status.timeline, status.replay_lsn, segment_size);
    let mut newest: Option<WalSegment> = None;
    // Timelines are few: the standby's and any a promotion made after it.
    for timeline in status.timeline..status.timeline.saturating_add(8) {
        if let Some(&number) = archived_segments(repo, timeline, segment_size)
            .await?
            .iter()
            .next_back()
        {
            newest = Some(WalSegment { timeline, number });
        }
    }
    let newest_archived_at = match newest {
        Some(n) => Some(
            repo.named(&wal_object_name(&n.file_name(segment_size)))
                .await?
                .created,
        ),
        None => None,
    };
    Ok(StandbyLag {
        segments: newest.map_or(0, |n| n.number.saturating_sub(replaying.number)),
        newest_archived: newest.map(|n| n.file_name(segment_size)),
        newest_archived_at,
    })
}

/// What [`promote_standby`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Promotion {
    /// Where the promoted server writes.
    pub lsn: Lsn,
    /// The new timeline it writes on.
    pub timeline: u32,
    /// The last transaction it replayed before promotion committed at (on the old primary).
    pub last_replayed_commit: Option<DateTime<Utc>>,
    /// From the request to the server taking writes.
    pub duration: Duration,
}

/// Promote the standby `client` is connected to: it replays every segment the archive still
/// holds for it, then leaves recovery on a new timeline and takes writes; this waits for that
/// up to `timeout`. Already promoted: reported as it is (a resumed failover asks again).
pub async fn promote_standby(client: &Client, timeout: Duration) -> Result<Promotion> {
    let started = Instant::now();
    let before = standby_status(client).await?;
    if before.in_recovery {
        simple_query(client, "SELECT pg_promote(false)").await?;
        loop {
            let rows = simple_query(client, "SELECT pg_is_in_recovery()::text").await?;
            if rows
                .first()
                .and_then(|r| r.first())
                .cloned()
                .flatten()
                .as_deref()
                == Some("false")
            {
                break;
            }
            if started.elapsed() >= timeout {
                return Err(Error::transient(
                    "promote the standby",
                    format!(
                        "still replaying after {timeout:?} (at {}); it promotes once it has \
                         replayed what the archive holds",
                        standby_status(client)
                            .await
                            .map_or_else(|_| "?".into(), |s| s.replay_lsn.to_string())
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let after = standby_status(client).await?;
    Ok(Promotion {
        lsn: after.replay_lsn,
        timeline: after.timeline,
        last_replayed_commit: before.last_replayed_commit,
        duration: started.elapsed(),
    })
}

/// What [`fence_primary`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Fence {
    /// The process id of the postmaster it stopped, if one ran.
    pub stopped: Option<i32>,
}

/// Fence the primary whose data directory is `data_dir`, so it takes no more writes:
/// `standby.signal` first (started again, by hand or by a supervisor, it comes up as a
/// read-only standby), then its postmaster, if it runs on this machine, is stopped at once
/// (immediate shutdown: no client gets another commit). `standby.signal` is owned like the
/// directory. Fencing a fenced primary does nothing more.
pub async fn fence_primary(data_dir: &Path) -> Result<Fence> {
    if !data_dir.join("PG_VERSION").is_file() {
        return Err(Error::invalid(
            "fence.data_dir",
            format!(
                "{} is not a PostgreSQL data directory (no PG_VERSION)",
                data_dir.display()
            ),
        ));
    }
    let signal = data_dir.join("standby.signal");
    let io =
        |e: std::io::Error| Error::backend(format!("write {}", signal.display()), e.to_string());
    std::fs::write(&signal, b"").map_err(io)?;
    // Owned like the directory, so its server may remove it when promoted one day.
    {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(data_dir).map_err(io)?;
        std::os::unix::fs::chown(&signal, Some(meta.uid()), Some(meta.gid())).map_err(io)?;
    }
    let Some(pid) = running_postmaster(data_dir) else {
        return Ok(Fence { stopped: None });
    };
    let _ = kill(Pid::from_raw(pid), Signal::SIGQUIT);
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(pid) {
        if Instant::now() >= deadline {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Fence { stopped: Some(pid) })
}

/// The pid of the postmaster running on `data_dir`, from its `postmaster.pid`, if that
/// process lives and is PostgreSQL (a stale file's pid may belong to anything by now).
fn running_postmaster(data_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    if pid <= 1 || !alive(pid) {
        return None;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let program = cmdline.split(|b| *b == 0).next()?;
    String::from_utf8_lossy(program)
        .contains("postgres")
        .then_some(pid)
}

/// Whether process `pid` lives: it exists and has not exited (a zombie, which its parent has
/// not reaped yet, takes nothing more).
fn alive(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    // /proc/PID/stat: "PID (COMMAND) STATE …"; the command may hold spaces and parentheses.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
        })
        .is_none_or(|state| state != 'Z' && state != 'X')
}
