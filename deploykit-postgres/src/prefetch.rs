//! Prefetching WAL for recovery, as WAL-G and pgBackRest's asynchronous archive-get do.
//!
//! PostgreSQL runs `restore_command` once per segment, one after another, and each run is a
//! new process that opens the repository, while replay waits. A spooler ([`spool_ahead`], in
//! a process of its own) fetches the next segments into a spool directory while PostgreSQL
//! replays; the next runs take their segment from there ([`take_prefetched`],
//! [`take_prefetched_waiting`]) without opening the repository at all.
//!
//! A spooled segment was read and checked exactly as [`fetch_wal`](crate::fetch_wal) reads
//! and checks one, and is written under a temporary name, then renamed: a spooled file is
//! complete or absent. A segment that cannot be fetched (not archived yet, damaged,
//! unreadable) is simply not spooled, so the run that asks for it fetches it itself and
//! reports what is wrong — the spool never hides damage and never remembers that a segment
//! was missing.

use std::path::{Path, PathBuf};

use tokio::task::JoinSet;

use crate::archive::{ClusterIdentity, fetch_to};
use crate::server::OsUser;
use crate::wal::{WalFileKind, WalSegment};
use deploykit_backup::Repository;
use deploykit_core::{Error, Result};

/// The spool's name, in the directory of `restore_command`'s `%p` (`pg_wal`, so
/// `<data directory>/pg_wal/.deploykit-prefetch`). PostgreSQL ignores it; base backups leave
/// `pg_wal`'s contents out, and [`restore`](crate::restore) removes it once recovery is over.
pub const PREFETCH_DIR: &str = ".deploykit-prefetch";

/// The prefix of a segment being written into the spool.
const TMP_PREFIX: &str = ".tmp-";

/// The spool for a `restore_command` writing to `dest` (its `%p`): [`PREFETCH_DIR`] beside it.
///
/// ```
/// use std::path::Path;
/// let spool = deploykit_postgres::prefetch_spool(Path::new("pg_wal/RECOVERYXLOG"));
/// assert_eq!(spool, Path::new("pg_wal/.deploykit-prefetch"));
/// ```
pub fn prefetch_spool(dest: &Path) -> PathBuf {
    dest.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join(PREFETCH_DIR)
}

/// Move the spooled copy of `file` to `dest`, if the spool has it; its size. Spooled segments
/// older than `file` (which recovery has passed) are removed first.
///
/// `Ok(None)` when the spool does not have it (or `file` is not a segment): fetch it from the
/// repository.
pub fn take_prefetched(spool: &Path, file: &str, dest: &Path) -> Result<Option<u64>> {
    if WalFileKind::of(file) != Some(WalFileKind::Segment) {
        return Ok(None);
    }
    remove_spooled_before(spool, file)?;
    let spooled = spool.join(file);
    let size = match std::fs::metadata(&spooled) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::backend(
                format!("read {}", spooled.display()),
                e.to_string(),
            ));
        }
    };
    match std::fs::rename(&spooled, dest) {
        Ok(()) => Ok(Some(size)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::backend(
            format!("move {} to {}", spooled.display(), dest.display()),
            e.to_string(),
        )),
    }
}

/// Remove the spooled segments named before `file` (older, or of an earlier timeline).
fn remove_spooled_before(spool: &Path, file: &str) -> Result<()> {
    let entries = match std::fs::read_dir(spool) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Error::backend(
                format!("read {}", spool.display()),
                e.to_string(),
            ));
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if WalFileKind::of(name) == Some(WalFileKind::Segment) && name < file {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// Remove partly written files from runs that were killed (runs of `restore_command` never
/// overlap), or this run's own when `own` is given.
fn remove_temporary(spool: &Path, own: Option<u32>) {
    let Ok(entries) = std::fs::read_dir(spool) else {
        return;
    };
    let mine = own.map(|pid| format!("{TMP_PREFIX}{pid}-"));
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let remove = match &mine {
            Some(prefix) => name.starts_with(prefix.as_str()),
            None => name.starts_with(TMP_PREFIX),
        };
        if remove {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// What [`spool_ahead`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PrefetchReport {
    /// The segments it spooled, by name.
    pub spooled: Vec<String>,
    /// Segments that could not be spooled for another reason than not being archived (yet),
    /// with the reason: the run asking for one will fetch it itself and fail with it.
    pub failed: Vec<(String, String)>,
    /// `false` when the spool was removed (recovery is over) before it could start.
    pub ran: bool,
}

/// The lock a spooler holds on its spool while it runs.
const LOCK_FILE: &str = ".lock";

fn lock_file(spool: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(spool.join(LOCK_FILE))
}

/// Whether a spooler ([`spool_ahead`]) is running on `spool`.
pub fn spooler_running(spool: &Path) -> bool {
    match lock_file(spool) {
        Ok(file) => matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

/// Wait until no spooler runs on `spool` (at most `timeout`).
pub async fn wait_for_spooler(spool: &Path, timeout: std::time::Duration) {
    let deadline = std::time::Instant::now() + timeout;
    while spooler_running(spool) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Like [`take_prefetched`], but while a spooler runs and `file` is not spooled yet, wait
/// for it to arrive (or for the spooler to end, or `timeout`): the spooler fetches in order,
/// so the segment recovery needs next is usually on its way.
pub async fn take_prefetched_waiting(
    spool: &Path,
    file: &str,
    dest: &Path,
    timeout: std::time::Duration,
) -> Result<Option<u64>> {
    if WalFileKind::of(file) != Some(WalFileKind::Segment) {
        return Ok(None);
    }
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(size) = take_prefetched(spool, file, dest)? {
            return Ok(Some(size));
        }
        if !spooler_running(spool) || std::time::Instant::now() >= deadline {
            // It may have landed just as the spooler ended.
            return take_prefetched(spool, file, dest);
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// The `count` segments after the segment `file` (same timeline); `file`'s own header (its
/// copy at `delivered`) says the segment size.
fn segments_after(file: &str, delivered: &Path, count: u32) -> Option<Vec<String>> {
    use std::io::Read;
    let mut header = [0u8; 40];
    std::fs::File::open(delivered)
        .and_then(|mut f| f.read_exact(&mut header))
        .ok()?;
    let size = crate::wal::SegmentHeader::parse(&header).ok()?.segment_size;
    let current = WalSegment::parse(file, size).ok()?;
    Some(
        (1..=u64::from(count))
            .map(|ahead| {
                WalSegment {
                    timeline: current.timeline,
                    number: current.number + ahead,
                }
                .file_name(size)
            })
            .collect(),
    )
}

/// Whether a spooler should start after the segment `file` was delivered to `delivered`:
/// prefetching is on, none runs, and the next segment or more than half of the next `count`
/// are not spooled. The spool is created if it is.
pub fn spool_wanted(spool: &Path, file: &str, delivered: &Path, count: u32) -> bool {
    if count == 0 || WalFileKind::of(file) != Some(WalFileKind::Segment) {
        return false;
    }
    let Some(next) = segments_after(file, delivered, count) else {
        return false;
    };
    let missing: Vec<bool> = next.iter().map(|n| !spool.join(n).is_file()).collect();
    let wanted = missing[0] || missing.iter().filter(|m| **m).count() * 2 > missing.len();
    wanted && !spooler_running(spool) && create_spool(spool).is_ok()
}

/// The spooler: fetch the `count` segments after `file` (its timeline) that `spool` does not
/// have, in order, as many at once as there are processors, each checked as [`fetch_wal`](crate::fetch_wal)
/// checks it, written under a temporary name and renamed when complete. It holds the spool's
/// lock while it runs (a second spooler waits for the first, then finds most segments there)
/// and does nothing if the spool has been removed. Segments not archived (yet) are not
/// spooled; other failures are reported, not returned: the run that needs the segment
/// fetches it itself and fails with it.
///
/// ```no_run
/// # async fn f(repo: deploykit_backup::Repository) -> deploykit_core::Result<()> {
/// use std::path::Path;
/// use deploykit_postgres::{fetch_wal, prefetch_spool, spool_ahead, take_prefetched};
/// let (file, dest) = ("000000010000000000000003", Path::new("pg_wal/RECOVERYXLOG"));
/// let spool = prefetch_spool(dest);
/// if take_prefetched(&spool, file, dest)?.is_none() {
///     fetch_wal(&repo, file, dest).await?;
/// }
/// // Usually in a process of its own, while PostgreSQL replays `file`:
/// spool_ahead(&repo, file, &spool, 8).await?;
/// # Ok(())
/// # }
/// ```
pub async fn spool_ahead(
    repo: &Repository,
    file: &str,
    spool: &Path,
    count: u32,
) -> Result<PrefetchReport> {
    let mut report = PrefetchReport::default();
    if count == 0 || WalFileKind::of(file) != Some(WalFileKind::Segment) {
        return Ok(report);
    }
    let Some(size) = ClusterIdentity::recorded(repo)
        .await?
        .map(|c| c.wal_segment_size)
    else {
        return Ok(report);
    };
    let current = WalSegment::parse(file, size)?;
    let lock = match lock_file(spool) {
        Ok(lock) => lock,
        // Removed: recovery is over.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
        Err(e) => {
            return Err(Error::backend(
                format!("open {}", spool.join(LOCK_FILE).display()),
                e.to_string(),
            ));
        }
    };
    let locked = {
        let lock = lock
            .try_clone()
            .map_err(|e| Error::backend(format!("lock {}", spool.display()), e.to_string()))?;
        tokio::task::spawn_blocking(move || lock.lock())
            .await
            .map_err(|e| Error::backend(format!("lock {}", spool.display()), e.to_string()))?
    };
    locked.map_err(|e| Error::backend(format!("lock {}", spool.display()), e.to_string()))?;
    // The spool may have been removed (and the lock with it) while this waited.
    let same = |a: &std::fs::Metadata, b: &std::fs::Metadata| {
        use std::os::unix::fs::MetadataExt;
        (a.dev(), a.ino()) == (b.dev(), b.ino())
    };
    let still_there = match (lock.metadata(), std::fs::metadata(spool.join(LOCK_FILE))) {
        (Ok(held), Ok(now)) => same(&held, &now),
        _ => false,
    };
    if !still_there {
        return Ok(report);
    }
    report.ran = true;
    remove_temporary(spool, None);
    remove_spooled_before(spool, file)?;
    let pid = std::process::id();
    let parallel = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4));
    let mut wanted = (1..=u64::from(count))
        .map(|ahead| {
            WalSegment {
                timeline: current.timeline,
                number: current.number + ahead,
            }
            .file_name(size)
        })
        .filter(|name| !spool.join(name).is_file());
    let mut batch = JoinSet::new();
    loop {
        while batch.len() < parallel {
            let Some(name) = wanted.next() else { break };
            let (repo, spool) = (repo.clone(), spool.to_path_buf());
            batch.spawn(async move {
                let tmp = spool.join(format!("{TMP_PREFIX}{pid}-{name}"));
                let spooled = fetch_to(&repo, &name, &tmp, &spool.join(&name), None).await;
                (name, spooled)
            });
        }
        let Some(joined) = batch.join_next().await else {
            break;
        };
        match joined {
            Ok((name, Ok(_))) => report.spooled.push(name),
            Ok((_, Err(Error::NotFound { .. }))) => {}
            Ok((name, Err(e))) => {
                tracing::warn!(file = %name, error = %e.chain(), "not prefetched");
                report.failed.push((name, e.chain()));
            }
            Err(e) => report
                .failed
                .push(("(a prefetch task)".to_string(), e.to_string())),
        }
    }
    report.spooled.sort();
    remove_temporary(spool, Some(pid));
    Ok(report)
}

/// A spooler for a run of segments known in advance: [`restore`](crate::restore) knows which
/// segments recovery will ask for, so it fetches them while it restores the base backup's
/// files, before PostgreSQL even starts, and keeps ahead of replay after. It holds the
/// spool's lock while it runs, so the runs of `wal-fetch` wait for a segment it is fetching
/// instead of fetching it again, and start no spooler of their own.
pub(crate) struct RunSpooler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<RunSpooled>,
}

/// Where a [`RunSpooler`] stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RunSpooled {
    /// How many of the run's segments it spooled (the first ones).
    pub(crate) done: usize,
    /// The segment it could not fetch, and why (it stopped there).
    pub(crate) failed: Option<(String, String)>,
}

impl RunSpooler {
    /// Start spooling `segments` (in the order recovery asks for them) into `spool`, which
    /// exists: at most `window` of them in the spool or being fetched at once (recovery
    /// taking one makes room for the next), each written as [`spool_ahead`] writes one and
    /// given to `owner`. It ends when every segment is spooled, at the first it cannot fetch
    /// (the run of `wal-fetch` asking for that one fetches it itself and reports why), or
    /// when [`stop`](Self::stop) is called.
    pub(crate) fn start(
        repo: &Repository,
        spool: &Path,
        segments: Vec<String>,
        window: usize,
        owner: Option<OsUser>,
    ) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn(spool_run(
            repo.clone(),
            spool.to_path_buf(),
            segments,
            window.max(1),
            owner,
            stop.clone(),
        ));
        RunSpooler { stop, task }
    }

    /// Stop: no new fetch starts, the ones under way finish; where it stopped.
    pub(crate) async fn stop(self) -> RunSpooled {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.await.unwrap_or_else(|e| RunSpooled {
            done: 0,
            failed: Some(("(the spooler)".to_string(), e.to_string())),
        })
    }
}

/// The segments `spool` holds (complete ones, not temporary files).
fn spooled_count(spool: &Path) -> usize {
    std::fs::read_dir(spool).map_or(0, |entries| {
        entries
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| WalFileKind::of(n) == Some(WalFileKind::Segment))
            })
            .count()
    })
}

async fn spool_run(
    repo: Repository,
    spool: PathBuf,
    segments: Vec<String>,
    window: usize,
    owner: Option<OsUser>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> RunSpooled {
    use std::sync::atomic::Ordering;
    let mut result = RunSpooled {
        done: 0,
        failed: None,
    };
    let lock = match lock_file(&spool) {
        Ok(lock) => lock,
        Err(e) => {
            result.failed = Some((format!("lock {}", spool.display()), e.to_string()));
            return result;
        }
    };
    // Nobody else spools here before PostgreSQL starts; later, a spooler `wal-fetch` started
    // holds the lock until its batch is done.
    let locked = tokio::task::spawn_blocking(move || lock.lock().map(|()| lock)).await;
    let _lock = match locked {
        Ok(Ok(lock)) => lock,
        Ok(Err(e)) => {
            result.failed = Some((format!("lock {}", spool.display()), e.to_string()));
            return result;
        }
        Err(e) => {
            result.failed = Some((format!("lock {}", spool.display()), e.to_string()));
            return result;
        }
    };
    let pid = std::process::id();
    let parallel = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4));
    let tick = std::time::Duration::from_millis(5);
    let mut next = 0;
    let mut under_way = JoinSet::new();
    let mut finished = std::collections::BTreeSet::new();
    loop {
        let stopping = stop.load(Ordering::SeqCst) || result.failed.is_some();
        if !stopping {
            let mut room = window.saturating_sub(spooled_count(&spool) + under_way.len());
            while room > 0 && under_way.len() < parallel && next < segments.len() {
                if spool.join(&segments[next]).is_file() {
                    finished.insert(next);
                    next += 1;
                    continue;
                }
                let (repo, spool, owner) = (repo.clone(), spool.clone(), owner.clone());
                let (index, name) = (next, segments[next].clone());
                under_way.spawn(async move {
                    let tmp = spool.join(format!("{TMP_PREFIX}{pid}-{name}"));
                    let fetched =
                        fetch_to(&repo, &name, &tmp, &spool.join(&name), owner.as_ref()).await;
                    (index, name, fetched)
                });
                next += 1;
                room -= 1;
            }
        }
        if under_way.is_empty() {
            if stopping || next >= segments.len() {
                break;
            }
            // The window is full: recovery has not taken a segment yet.
            tokio::time::sleep(tick).await;
            continue;
        }
        let joined = tokio::select! {
            joined = under_way.join_next() => joined,
            () = tokio::time::sleep(tick) => continue,
        };
        match joined {
            Some(Ok((index, _, Ok(_)))) => {
                finished.insert(index);
            }
            Some(Ok((_, name, Err(e)))) => {
                tracing::warn!(file = %name, error = %e.chain(), "not prefetched");
                if result.failed.is_none() {
                    result.failed = Some((name, e.chain()));
                }
            }
            Some(Err(e)) => {
                result.failed = Some(("(a prefetch task)".to_string(), e.to_string()));
            }
            None => {}
        }
    }
    // The run's first segments, up to the first not spooled.
    result.done = (0..).take_while(|i| finished.contains(i)).count();
    remove_temporary(&spool, Some(pid));
    result
}

/// Remove the spool once recovery is over, after any spooler still running has ended.
pub async fn remove_spool(spool: &Path) -> Result<()> {
    wait_for_spooler(spool, std::time::Duration::from_secs(120)).await;
    match std::fs::remove_dir_all(spool) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::backend(
            format!("remove {}", spool.display()),
            e.to_string(),
        )),
    }
}

fn create_spool(spool: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(spool)
        .map_err(|e| Error::backend(format!("create {}", spool.display()), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::wal_object_name;
    use deploykit_backup::{LocalTarget, RepoKey, RepoOptions};
    use std::time::{Duration, Instant};

    async fn repo_holding(dir: &Path, names: &[String]) -> Repository {
        let target = std::sync::Arc::new(LocalTarget::new(dir).unwrap());
        let options = RepoOptions::builder().kdf_cost((1024, 1)).build();
        let repo = Repository::init(target, &RepoKey::passphrase("pw"), options)
            .await
            .unwrap();
        for name in names {
            let content = name.as_bytes().repeat(4096);
            repo.put_named(&wal_object_name(name), std::io::Cursor::new(content))
                .await
                .unwrap();
        }
        repo
    }

    fn spooled(spool: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(spool)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        names
    }

    async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn segment(n: u64) -> String {
        WalSegment {
            timeline: 1,
            number: n,
        }
        .file_name(16 * 1024 * 1024)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_spooler_keeps_within_its_window_and_stops_at_the_first_failure() {
        let dir = tempfile::tempdir().unwrap();
        let run: Vec<String> = (3..=11).map(segment).collect();
        // The sixth is not in the archive (pruned under the restore's feet).
        let archived: Vec<String> = run.iter().filter(|n| **n != run[5]).cloned().collect();
        let repo = repo_holding(&dir.path().join("repo"), &archived).await;
        let spool = dir.path().join(PREFETCH_DIR);
        create_spool(&spool).unwrap();
        // Root gives the spooled files to the user recovery runs as.
        let owner = nix::unistd::geteuid()
            .is_root()
            .then(|| OsUser::lookup("nobody").unwrap());
        let spooler = RunSpooler::start(&repo, &spool, run.clone(), 2, owner.clone());

        wait_until("two are spooled", || spooled(&spool).len() == 2).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(spooled(&spool), run[..2], "never more than the window");
        assert!(spooler_running(&spool), "it waits, holding the lock");
        if let Some(owner) = &owner {
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::metadata(spool.join(&run[0])).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (owner.uid, owner.gid));
        }

        // Recovery taking one makes room for the next, in order.
        let dest = dir.path().join("RECOVERYXLOG");
        for (i, name) in run[..5].iter().enumerate() {
            let took = take_prefetched_waiting(&spool, name, &dest, Duration::from_secs(20))
                .await
                .unwrap();
            assert_eq!(took, Some(name.len() as u64 * 4096), "{name}");
            assert_eq!(std::fs::read(&dest).unwrap(), name.as_bytes().repeat(4096));
            if i + 2 < 5 {
                wait_until("the next is spooled", || {
                    spooled(&spool).contains(&run[i + 2])
                })
                .await;
            }
        }
        // The missing one ends it: the lock is free, so the fetch asking for it does not
        // wait for it, and fetches it itself.
        wait_until("the spooler ends", || !spooler_running(&spool)).await;
        let took = take_prefetched_waiting(&spool, &run[5], &dest, Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(took, None);
        let ended = spooler.stop().await;
        assert_eq!(ended.done, 5);
        assert_eq!(
            ended.failed.as_ref().map(|f| &f.0),
            Some(&run[5]),
            "{ended:?}"
        );
        assert!(
            !std::fs::read_dir(&spool).unwrap().any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(TMP_PREFIX)),
            "no partly written file is left"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_spooler_stops_when_told_and_skips_what_is_spooled() {
        let dir = tempfile::tempdir().unwrap();
        let run: Vec<String> = (1..=6).map(segment).collect();
        let repo = repo_holding(&dir.path().join("repo"), &run).await;
        let spool = dir.path().join(PREFETCH_DIR);
        create_spool(&spool).unwrap();
        // Already there (spooled before the data directory existed): kept, not fetched again.
        std::fs::write(spool.join(&run[0]), b"kept").unwrap();
        let spooler = RunSpooler::start(&repo, &spool, run.clone(), 3, None);
        wait_until("the window is full", || spooled(&spool).len() == 3).await;
        let ended = spooler.stop().await;
        assert_eq!((ended.done, ended.failed), (3, None));
        assert!(!spooler_running(&spool), "the lock is released");
        assert_eq!(std::fs::read(spool.join(&run[0])).unwrap(), b"kept");
        assert_eq!(spooled(&spool), run[..3]);
    }

    #[test]
    fn a_spooled_segment_is_taken_and_older_ones_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = prefetch_spool(&dir.path().join("RECOVERYXLOG"));
        assert_eq!(spool, dir.path().join(PREFETCH_DIR));
        let dest = dir.path().join("RECOVERYXLOG");
        // No spool yet: nothing to take.
        assert_eq!(
            take_prefetched(&spool, "000000010000000000000005", &dest).unwrap(),
            None
        );
        create_spool(&spool).unwrap();
        for name in [
            "000000010000000000000004",
            "000000010000000000000005",
            "000000010000000000000006",
        ] {
            std::fs::write(spool.join(name), name).unwrap();
        }
        std::fs::write(spool.join(".tmp-1-000000010000000000000007"), "half").unwrap();
        assert_eq!(
            take_prefetched(&spool, "000000010000000000000005", &dest).unwrap(),
            Some(24)
        );
        assert_eq!(
            std::fs::read_to_string(&dest).unwrap(),
            "000000010000000000000005"
        );
        assert!(!spool.join("000000010000000000000004").exists(), "passed");
        assert!(spool.join("000000010000000000000006").exists(), "ahead");
        // History files are never spooled; a missing segment is fetched.
        assert_eq!(
            take_prefetched(&spool, "00000002.history", &dest).unwrap(),
            None
        );
        assert_eq!(
            take_prefetched(&spool, "000000010000000000000007", &dest).unwrap(),
            None
        );
        // A later timeline passes every segment of the earlier one.
        assert_eq!(
            take_prefetched(&spool, "000000020000000000000006", &dest).unwrap(),
            None
        );
        assert!(!spool.join("000000010000000000000006").exists());
        remove_temporary(&spool, None);
        assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0);
    }
}
