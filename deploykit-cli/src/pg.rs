//! `deploykit pg`: PostgreSQL continuous archiving and point-in-time recovery in a backup
//! repository — WAL push and fetch for `archive_command` and `restore_command`, base backups,
//! restores to a time, LSN or restore point, and retention (see `deploykit-postgres`).
//!
//! The repository's passphrase comes from `DEPLOYKIT_REPO_PASSWORD`, as for `deploykit
//! backup`, or a key file (`pg init --key-file`) from `DEPLOYKIT_REPO_KEY_FILE`, which spares
//! each WAL push and fetch the passphrase's slow key derivation; PostgreSQL passes its
//! environment on to the commands it runs. Run the commands that write to the repository as
//! the user `archive_command` runs as (usually `postgres`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgGroup, Args, Subcommand};
use deploykit_backup::{LocalTarget, RepoKey, RepoOptions, Repository};
use deploykit_core::{Error, Result};
use deploykit_postgres as pg;
use serde_json::json;

use crate::context::Context;

/// Exit code of `wal-fetch` for a file the archive holds but cannot deliver (damaged,
/// unreadable, the repository unreachable): above 125, so PostgreSQL stops recovery instead
/// of taking the failure for the end of the archive (exit 1); not 126 or 127, which its log
/// would call "command not executable" or "not found".
const EXIT_FETCH_FAILED: u8 = 128;

/// Segments `wal-fetch` fetches ahead by default.
const DEFAULT_PREFETCH: u32 = 8;

/// `deploykit pg` subcommands.
#[derive(Subcommand, Debug)]
pub(crate) enum PgAction {
    /// Create the repository a cluster archives into (passphrase from DEPLOYKIT_REPO_PASSWORD).
    Init {
        /// The repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// Also write a key file (mode 0600) that opens the repository: with
        /// DEPLOYKIT_REPO_KEY_FILE pointing at it, each wal-push and wal-fetch skips the
        /// passphrase's deliberately slow key derivation (about 0.2 s).
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Archive one WAL file: archive_command = 'deploykit pg wal-push %p --repo DIR'. Any
    /// failure exits non-zero, and PostgreSQL keeps the file and retries.
    WalPush {
        /// The file to archive (PostgreSQL's %p).
        path: PathBuf,
        /// The repository directory.
        #[arg(long)]
        repo: PathBuf,
    },
    /// Fetch one archived WAL file: restore_command = 'deploykit pg wal-fetch %f %p --repo
    /// DIR'. Exit 1: the archive does not hold it (its end); 128: it holds it but cannot
    /// deliver it (damaged, unreachable), which stops recovery.
    WalFetch {
        /// The file's name (PostgreSQL's %f).
        name: String,
        /// Where to write it (PostgreSQL's %p).
        dest: PathBuf,
        /// The repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// Keep up to N segments of the timeline fetched ahead: a background process fetches
        /// them into a spool beside %p (pg_wal/.deploykit-prefetch) while PostgreSQL
        /// replays, and the next runs take them from there without opening the repository;
        /// 0 turns prefetching off.
        #[arg(long, value_name = "N", default_value_t = DEFAULT_PREFETCH)]
        prefetch: u32,
        /// Run as that background process: fill the spool after NAME, then exit.
        #[arg(long, hide = true)]
        spooler: bool,
    },
    /// Take a base backup of a running server, without stopping it: with --pgdata its data
    /// directory is read in place (pg_backup_start … pg_backup_stop), else pg_basebackup
    /// copies it.
    Backup {
        /// The repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// The server, as a libpq connection string ("host=127.0.0.1 port=5432
        /// user=postgres"); PGHOST, PGPORT, PGUSER and PGPASSWORD fill in the rest.
        #[arg(long, value_name = "CONNINFO", default_value = "")]
        pgdata_connection: String,
        /// Where pg_basebackup writes its copy before it is stored (default: the temporary
        /// directory); it needs room for the whole data directory. Not used with --pgdata.
        #[arg(long, conflicts_with = "pgdata")]
        work_dir: Option<PathBuf>,
        /// The server's data directory, on this machine: read in place instead of copied
        /// with pg_basebackup (half the I/O). It must be the data directory of the server
        /// connected to; run as a user who can read it (postgres).
        #[arg(long, value_name = "DIR")]
        pgdata: Option<PathBuf>,
    },
    /// Restore a new data directory to a point in time, let PostgreSQL recover it, and check
    /// it with a query.
    Restore(RestoreArgs),
    /// Set up a new data directory as a standby that follows the archive, from the newest
    /// base backup (standby.signal, restore_command = wal-fetch, recovery_target_timeline =
    /// latest). Started (pg_ctl start), it replays each segment as soon as the primary
    /// archives it and answers read-only queries; pg_ctl promote makes it the primary.
    Standby {
        /// The repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// The new data directory (must not exist, or be empty).
        #[arg(long)]
        to: PathBuf,
        /// The OS user that runs PostgreSQL and owns the directory (default: you, or
        /// postgres when you are root).
        #[arg(long)]
        run_as: Option<String>,
        /// Milliseconds the standby waits, once it has replayed everything archived, before
        /// it asks the archive again.
        #[arg(long, value_name = "MS", default_value_t = 1000)]
        poll_ms: u64,
    },
    /// Fence a primary that was replaced (failed over): its data directory gets
    /// standby.signal, so it starts again read-only, and its server, if it runs on this
    /// machine, is stopped at once (immediate shutdown).
    Fence {
        /// The old primary's data directory.
        #[arg(long, value_name = "DIR")]
        pgdata: PathBuf,
    },
    /// Keep the N newest base backups and the WAL they need; forget and delete the rest.
    Prune {
        /// The repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// How many base backups to keep.
        #[arg(long)]
        keep: u32,
    },
    /// The base backups, and the archived WAL by timeline.
    List {
        /// The repository directory.
        #[arg(long)]
        repo: PathBuf,
    },
}

/// Arguments of `deploykit pg restore`.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("target").args(["time", "lsn", "name", "latest"])))]
pub(crate) struct RestoreArgs {
    /// The repository directory.
    #[arg(long)]
    repo: PathBuf,
    /// The new data directory (must not exist, or be empty).
    #[arg(long)]
    to: PathBuf,
    /// Recover to the last commit at or before this time: RFC 3339 or
    /// "2026-12-05 08:10:00.25+00" (UTC unless an offset is given).
    #[arg(long)]
    time: Option<String>,
    /// Recover to this WAL position ("0/3000060").
    #[arg(long)]
    lsn: Option<String>,
    /// Recover to this restore point (made with pg_create_restore_point).
    #[arg(long)]
    name: Option<String>,
    /// Recover everything archived (the default).
    #[arg(long)]
    latest: bool,
    /// A query run on the recovered cluster; its rows are printed, columns separated by |.
    #[arg(long)]
    verify_query: Option<String>,
    /// The role the verify query runs as (default: the OS user running PostgreSQL).
    #[arg(long)]
    verify_user: Option<String>,
    /// The database the verify query runs in.
    #[arg(long, default_value = "postgres")]
    verify_database: String,
    /// The OS user that runs PostgreSQL and owns the restored directory (default: you, or
    /// postgres when you are root).
    #[arg(long)]
    run_as: Option<String>,
    /// Seconds recovery may take.
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
    /// WAL segments fetched ahead, in parallel, at most this many at once: the first ones
    /// while the base backup's files are restored, then ahead of PostgreSQL's replay (each
    /// wal-fetch --prefetch too); 0 turns prefetching off.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_PREFETCH)]
    prefetch: u32,
}

/// The key: the key file DEPLOYKIT_REPO_KEY_FILE names, else the passphrase in
/// DEPLOYKIT_REPO_PASSWORD.
pub(crate) fn key() -> Result<RepoKey> {
    if let Some(path) = std::env::var_os("DEPLOYKIT_REPO_KEY_FILE").filter(|p| !p.is_empty()) {
        return RepoKey::from_file(Path::new(&path));
    }
    match std::env::var("DEPLOYKIT_REPO_PASSWORD") {
        Ok(p) if !p.is_empty() => Ok(RepoKey::passphrase(p)),
        _ => Err(Error::invalid(
            "DEPLOYKIT_REPO_PASSWORD",
            "set it to the repository's passphrase, or DEPLOYKIT_REPO_KEY_FILE to a key file \
             (PostgreSQL passes its environment to archive_command and restore_command)",
        )),
    }
}

/// Open the repository at `dir`, which must exist: an archive that went missing (an unmounted
/// disk) is an outage, never a fresh start.
async fn open(dir: &Path) -> Result<Repository> {
    if !dir.join("config").is_file() {
        return Err(Error::not_found(format!(
            "a backup repository at {} (create it with `deploykit pg init --repo {}`)",
            dir.display(),
            dir.display()
        )));
    }
    Repository::open(Arc::new(LocalTarget::new(dir)?), &key()?).await
}

/// Refuse to write into a repository as root when another user owns it: root's files would
/// lock `archive_command`'s user out.
fn check_writer(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(dir) else {
        return Ok(());
    };
    if meta.uid() != 0 && pg::OsUser::current()?.uid == 0 {
        return Err(Error::invalid(
            "--repo",
            format!(
                "{} belongs to uid {} (the user archive_command runs as); run this as that user \
                 (`runuser -u postgres -- deploykit pg …`): files written as root would lock it \
                 out of the repository",
                dir.display(),
                meta.uid()
            ),
        ));
    }
    Ok(())
}

/// The restore_command that fetches from the repository at `repo_dir` (absolute) with this
/// binary.
pub(crate) fn fetch_command(repo_dir: &Path, prefetch: u32) -> Result<String> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::backend("find the deploykit binary", e.to_string()))?;
    Ok(format!(
        "{} pg wal-fetch %f %p --repo {} --prefetch {prefetch}",
        sh_quote(&exe.to_string_lossy()),
        sh_quote(&repo_dir.to_string_lossy()),
    ))
}

/// A word for the shell, single-quoted.
fn sh_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Run one `deploykit pg` command.
pub(crate) async fn run(ctx: &Context, action: PgAction) -> Result<ExitCode> {
    match action {
        PgAction::Init { repo, key_file } => {
            check_writer(&repo)?;
            if repo.join("config").exists() {
                return Err(Error::AlreadyExists {
                    what: format!("a backup repository at {}", repo.display()),
                });
            }
            let target = Arc::new(LocalTarget::new(&repo)?);
            let opened = Repository::init(target, &key()?, RepoOptions::default()).await?;
            let env = match &key_file {
                Some(path) => {
                    opened.add_key(&RepoKey::generate_file(path)?).await?;
                    format!(
                        "DEPLOYKIT_REPO_KEY_FILE={} ",
                        sh_quote(&path.display().to_string())
                    )
                }
                None => String::new(),
            };
            let exe =
                std::env::current_exe().map_or("deploykit".into(), |p| p.display().to_string());
            ctx.print(
                format!(
                    "repository {} created at {}\narchive_command = '{env}{} pg wal-push %p --repo {}'",
                    &opened.id()[..12],
                    repo.display(),
                    exe,
                    repo.display()
                ),
                json!({
                    "repository": opened.id(),
                    "path": repo.display().to_string(),
                    "key_file": key_file.map(|p| p.display().to_string()),
                }),
            );
            Ok(ExitCode::SUCCESS)
        }
        PgAction::WalPush { path, repo } => {
            check_writer(&repo)?;
            let report = pg::push_wal(&open(&repo).await?, &path).await?;
            tracing::info!(file = %report.file, written = report.written, "archived");
            if matches!(ctx.output, crate::Output::Json) {
                ctx.print(
                    "",
                    json!({ "file": report.file, "bytes": report.bytes, "written": report.written, "bytes_stored": report.bytes_stored }),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        PgAction::WalFetch {
            name,
            dest,
            repo,
            prefetch,
            spooler: true,
        } => {
            // In the background: failures are logged; the run that needs a segment the
            // spooler could not fetch fetches it itself and reports why.
            let spooled = match open(&repo).await {
                Ok(repository) => {
                    pg::spool_ahead(&repository, &name, &pg::prefetch_spool(&dest), prefetch).await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = spooled {
                tracing::warn!(after = %name, error = %e.chain(), "prefetching stopped");
            }
            Ok(ExitCode::SUCCESS)
        }
        PgAction::WalFetch {
            name,
            dest,
            repo,
            prefetch,
            spooler: false,
        } => Ok(wal_fetch(&name, &dest, &repo, prefetch).await),
        PgAction::Backup {
            repo,
            pgdata_connection,
            work_dir,
            pgdata,
        } => {
            check_writer(&repo)?;
            let repository = open(&repo).await?;
            let mut request = pg::BaseBackupRequest::builder()
                .connection(pgdata_connection)
                .bins(pg::PgBinaries::find()?)
                .build();
            request.work_dir = work_dir;
            request.data_dir = pgdata;
            let report = pg::take_base_backup(&repository, &request).await?;
            let b = &report.backup;
            let size = b.wal_segment_size;
            ctx.print(
                format!(
                    "base backup {}: timeline {}, WAL {} to {} ({} to {}); {} files, {} bytes, \
                     {} stored; {} {:.1?}, in all {:.1?}",
                    b.snapshot,
                    b.timeline,
                    b.start_lsn,
                    b.stop_lsn,
                    b.first_segment().file_name(size),
                    b.last_segment().file_name(size),
                    report.files,
                    report.bytes,
                    report.bytes_stored,
                    if request.data_dir.is_some() {
                        "read in place"
                    } else {
                        "pg_basebackup"
                    },
                    report.copy_duration,
                    report.duration
                ),
                json!({
                    "snapshot": b.snapshot,
                    "timeline": b.timeline,
                    "start_lsn": b.start_lsn.to_string(),
                    "stop_lsn": b.stop_lsn.to_string(),
                    "wal_start": b.first_segment().file_name(size),
                    "wal_stop": b.last_segment().file_name(size),
                    "files": report.files,
                    "bytes": report.bytes,
                    "bytes_stored": report.bytes_stored,
                    "copy_ms": report.copy_duration.as_millis() as u64,
                    "duration_ms": report.duration.as_millis() as u64,
                }),
            );
            Ok(ExitCode::SUCCESS)
        }
        PgAction::Restore(args) => restore(ctx, args).await,
        PgAction::Prune { repo, keep } => {
            check_writer(&repo)?;
            let report = pg::prune(&open(&repo).await?, keep).await?;
            ctx.print(
                format!(
                    "kept {} base backups, forgot {}; WAL from {}: deleted {} files, kept {}; \
                     repository prune: {} packs marked, {} deleted",
                    report.backups_kept.len(),
                    report.backups_forgotten.len(),
                    report
                        .oldest_segment_kept
                        .as_deref()
                        .unwrap_or("(no base backup: all kept)"),
                    report.wal_deleted,
                    report.wal_kept,
                    report.prune.marked,
                    report.prune.deleted
                ),
                json!({
                    "backups_kept": report.backups_kept,
                    "backups_forgotten": report.backups_forgotten,
                    "oldest_segment_kept": report.oldest_segment_kept,
                    "wal_deleted": report.wal_deleted,
                    "wal_kept": report.wal_kept,
                    "packs_marked": report.prune.marked,
                    "packs_deleted": report.prune.deleted,
                }),
            );
            Ok(ExitCode::SUCCESS)
        }
        PgAction::List { repo } => list(ctx, &open(&repo).await?).await,
        PgAction::Standby {
            repo,
            to,
            run_as,
            poll_ms,
        } => {
            let repo_dir = std::path::absolute(&repo).map_err(|e| {
                Error::backend(format!("resolve {}", repo.display()), e.to_string())
            })?;
            let to = std::path::absolute(&to)
                .map_err(|e| Error::backend(format!("resolve {}", to.display()), e.to_string()))?;
            let repository = open(&repo_dir).await?;
            let run_as = match &run_as {
                Some(name) => Some(pg::OsUser::lookup(name)?),
                None => pg::OsUser::for_server()?,
            };
            let request = pg::StandbyRequest::builder()
                .to(to.clone())
                .restore_command(fetch_command(&repo_dir, DEFAULT_PREFETCH)?)
                .run_as(run_as)
                .poll(Duration::from_millis(poll_ms))
                .build();
            let seed = pg::seed_standby(&repository, &request).await?;
            let b = &seed.base_backup;
            ctx.print(
                format!(
                    "standby set up at {} from base backup {} (timeline {}, consistent at {}) in \
                     {:.1?}; start it with pg_ctl -D {} start (with DEPLOYKIT_REPO_KEY_FILE or \
                     DEPLOYKIT_REPO_PASSWORD in its environment), promote it with pg_ctl promote",
                    to.display(),
                    b.snapshot,
                    b.timeline,
                    b.stop_lsn,
                    seed.duration,
                    to.display()
                ),
                json!({
                    "data_dir": to.display().to_string(),
                    "snapshot": b.snapshot,
                    "base_backup_timeline": b.timeline,
                    "consistent_at": b.stop_lsn.to_string(),
                    "duration_ms": seed.duration.as_millis() as u64,
                }),
            );
            Ok(ExitCode::SUCCESS)
        }
        PgAction::Fence { pgdata } => {
            let fence = pg::fence_primary(&pgdata).await?;
            ctx.print(
                match fence.stopped {
                    Some(pid) => format!(
                        "fenced {}: standby.signal written, its server (pid {pid}) stopped",
                        pgdata.display()
                    ),
                    None => format!(
                        "fenced {}: standby.signal written; no server was running on it here",
                        pgdata.display()
                    ),
                },
                json!({ "data_dir": pgdata.display().to_string(), "stopped_pid": fence.stopped }),
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `wal-fetch`: exit 0 with the file in place, 1 when the archive does not hold it,
/// [`EXIT_FETCH_FAILED`] for any other failure; stderr names the file. With `prefetch > 0`
/// a spooled copy is taken without opening the repository (waiting for a spooler that is
/// fetching it), and once the file is delivered a spooler is started when the spool runs low.
async fn wal_fetch(name: &str, dest: &Path, repo: &Path, prefetch: u32) -> ExitCode {
    let spool = pg::prefetch_spool(dest);
    if prefetch > 0 {
        match pg::take_prefetched_waiting(&spool, name, dest, SPOOLER_WAIT).await {
            Ok(Some(_)) => {
                start_spooler(name, dest, repo, prefetch).await;
                return ExitCode::SUCCESS;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(file = name, error = %e.chain(), "the prefetched copy is unusable; fetching it");
            }
        }
    }
    let fetched = match open(repo).await {
        Ok(repository) => pg::fetch_wal(&repository, name, dest).await,
        Err(e) => Err(Error::backend(
            format!("open the repository at {}", repo.display()),
            e.chain(),
        )),
    };
    match fetched {
        Ok(_) => {
            if prefetch > 0 {
                start_spooler(name, dest, repo, prefetch).await;
            }
            ExitCode::SUCCESS
        }
        Err(Error::NotFound { .. }) => {
            eprintln!("deploykit: wal-fetch {name}: not in the archive");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("deploykit: wal-fetch {name} failed: {}", e.chain());
            ExitCode::from(EXIT_FETCH_FAILED)
        }
    }
}

/// How long a `wal-fetch` waits for a running spooler to deliver its segment before fetching
/// it itself.
const SPOOLER_WAIT: Duration = Duration::from_secs(30);

/// Start a spooler (`wal-fetch NAME DEST --spooler`, in the background, its own process
/// group) if the spool runs low after `name`, and return once it holds the spool's lock: the
/// next run then waits for it instead of fetching in duplicate. Best effort: without a
/// spooler each run fetches its own segment.
async fn start_spooler(name: &str, dest: &Path, repo: &Path, prefetch: u32) {
    use std::os::unix::process::CommandExt;
    let spool = pg::prefetch_spool(dest);
    if !pg::spool_wanted(&spool, name, dest, prefetch) {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let spawned = std::process::Command::new(exe)
        .args(["pg", "wal-fetch", name])
        .arg(dest)
        .arg("--repo")
        .arg(repo)
        .args(["--prefetch", &prefetch.to_string(), "--spooler"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .process_group(0)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            tracing::warn!(error = %e, "could not start prefetching");
            return;
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline
        && !pg::spooler_running(&spool)
        && matches!(child.try_wait(), Ok(None))
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn restore(ctx: &Context, args: RestoreArgs) -> Result<ExitCode> {
    let target = match (&args.time, &args.lsn, &args.name) {
        (Some(t), _, _) => pg::RecoveryTarget::Time(pg::RecoveryTarget::parse_time(t)?),
        (_, Some(l), _) => pg::RecoveryTarget::Lsn(l.parse().map_err(|e: Error| match e {
            Error::InvalidSpec { reason, .. } => Error::invalid("--lsn", reason),
            other => other,
        })?),
        (_, _, Some(n)) => pg::RecoveryTarget::Name(n.clone()),
        _ => pg::RecoveryTarget::Latest,
    };
    let repo_dir = std::path::absolute(&args.repo)
        .map_err(|e| Error::backend(format!("resolve {}", args.repo.display()), e.to_string()))?;
    let repository = open(&repo_dir).await?;
    let restore_command = fetch_command(&repo_dir, args.prefetch)?;
    let run_as = match &args.run_as {
        Some(name) => Some(pg::OsUser::lookup(name)?),
        None => pg::OsUser::for_server()?,
    };
    let mut request = pg::RestoreRequest::builder()
        .to(std::path::absolute(&args.to)
            .map_err(|e| Error::backend(format!("resolve {}", args.to.display()), e.to_string()))?)
        .target(target)
        .restore_command(restore_command)
        .prefetch(args.prefetch)
        .bins(pg::PgBinaries::find()?)
        .run_as(run_as)
        .database(args.verify_database)
        .timeout(Duration::from_secs(args.timeout))
        .build();
    request.verify_query = args.verify_query;
    request.user = args.verify_user;
    let report = pg::restore(&repository, &request).await?;
    let b = &report.base_backup;
    let rows = report.verify_rows.clone().unwrap_or_default();
    let mut text = format!(
        "restored base backup {} (timeline {}, consistent at {}) to {} and recovered to {}: \
         WAL {} to {} checked, ended at {} on timeline {}; files {:.1?} ({} segments \
         fetched meanwhile), recovery {:.1?}, answering after {:.1?}, in all {:.1?}",
        b.snapshot,
        b.timeline,
        b.stop_lsn,
        request.to.display(),
        request.target,
        report.wal_checked.0,
        report.wal_checked.1,
        report.end_lsn,
        report.timeline,
        report.files_duration,
        report.prefetched_before_start,
        report.recovery_duration,
        report.answered_duration,
        report.duration
    );
    if report.verify_rows.is_some() {
        text.push_str(&format!("\nverify query: {} rows", rows.len()));
        for row in &rows {
            let cells: Vec<&str> = row.iter().map(|c| c.as_deref().unwrap_or("")).collect();
            text.push('\n');
            text.push_str(&cells.join("|"));
        }
    }
    ctx.print(
        text,
        json!({
            "snapshot": b.snapshot,
            "base_backup_timeline": b.timeline,
            "target": request.target.to_string(),
            "wal_checked": [report.wal_checked.0, report.wal_checked.1],
            "end_lsn": report.end_lsn.to_string(),
            "timeline": report.timeline,
            "rows": rows,
            "files_ms": report.files_duration.as_millis() as u64,
            "prefetched_before_start": report.prefetched_before_start,
            "recovery_ms": report.recovery_duration.as_millis() as u64,
            "answered_ms": report.answered_duration.as_millis() as u64,
            "duration_ms": report.duration.as_millis() as u64,
            "log": report.log_file.display().to_string(),
        }),
    );
    Ok(ExitCode::SUCCESS)
}

async fn list(ctx: &Context, repo: &Repository) -> Result<ExitCode> {
    let backups = pg::base_backups(repo).await?;
    let size = match pg::ClusterIdentity::recorded(repo).await? {
        Some(c) => c.wal_segment_size,
        None => backups.first().map_or(16 << 20, |b| b.wal_segment_size),
    };
    let names = repo.list_named("wal/").await?;
    let mut timelines: std::collections::BTreeMap<u32, Vec<u64>> = Default::default();
    let mut other = Vec::new();
    for name in &names {
        let file = name.trim_start_matches("wal/");
        match pg::WalFileKind::of(file) {
            Some(pg::WalFileKind::Segment) => {
                if let Ok(s) = pg::WalSegment::parse(file, size) {
                    timelines.entry(s.timeline).or_default().push(s.number);
                }
            }
            _ => other.push(file.to_string()),
        }
    }
    let mut text = format!("{} base backups", backups.len());
    let mut backups_json = Vec::new();
    for b in &backups {
        let (first, last) = (
            b.first_segment().file_name(size),
            b.last_segment().file_name(size),
        );
        text.push_str(&format!(
            "\n  {}  timeline {}  {} to {}  WAL {first} to {last}  ended {}",
            &b.snapshot[..12],
            b.timeline,
            b.start_lsn,
            b.stop_lsn,
            b.stop_time.format("%Y-%m-%d %H:%M:%S%.3f UTC")
        ));
        backups_json.push(json!({
            "snapshot": b.snapshot,
            "timeline": b.timeline,
            "start_lsn": b.start_lsn.to_string(),
            "stop_lsn": b.stop_lsn.to_string(),
            "start_time": b.start_time.to_rfc3339(),
            "stop_time": b.stop_time.to_rfc3339(),
            "wal_start": first,
            "wal_stop": last,
        }));
    }
    let mut wal_json = Vec::new();
    for (timeline, numbers) in &timelines {
        let name = |n: u64| {
            pg::WalSegment {
                timeline: *timeline,
                number: n,
            }
            .file_name(size)
        };
        let (lo, hi) = (numbers[0], numbers[numbers.len() - 1]);
        let present = numbers.iter().copied().collect();
        let gap = pg::first_missing(&present, lo, hi).map(name);
        text.push_str(&format!(
            "\nWAL timeline {timeline}: {} segments, {} to {}{}",
            numbers.len(),
            name(lo),
            name(hi),
            gap.as_deref()
                .map_or(String::new(), |g| format!(", first gap at {g}"))
        ));
        wal_json.push(json!({
            "timeline": timeline, "segments": numbers.len(), "first": name(lo), "last": name(hi), "first_gap": gap,
        }));
    }
    if !other.is_empty() {
        text.push_str(&format!("\nother WAL files: {}", other.join(", ")));
    }
    ctx.print(
        text,
        json!({ "base_backups": backups_json, "wal": wal_json, "other_files": other }),
    );
    Ok(ExitCode::SUCCESS)
}
