//! The local environment's logs as a [`LogSource`]: the records its supervisors wrote to the
//! instances' log files, read back (also for instances that are gone), and followed.
//! [`LocalLogs`] reads a log directory on its own (the CLI reads it without a daemon);
//! [`LocalEnvironment`] is a source of its own directory's logs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use deploykit_core::{Error, Result};
use deploykit_logs::{
    LogSelector, LogSender, LogSource, LogStream, Record, Source, keep_tail, sort_by_time,
};

use crate::environment::LocalEnvironment;
use crate::logs::{LogPolicy, LogReader, owners};

/// How often a follower reads the files for new records.
const POLL: Duration = Duration::from_millis(100);
/// How often a follower looks for instances that started since.
const RESCAN: Duration = Duration::from_secs(1);

/// What a read needs, detached from the environment (it runs on blocking threads).
#[derive(Clone)]
struct Files {
    dir: PathBuf,
    policy: LogPolicy,
    environment: String,
    selector: LogSelector,
}

/// Readers of the selected instances' logs, by instance name.
#[derive(Default)]
struct Readers {
    open: Vec<LogReader>,
    /// Instances already looked at (opened, or not selected).
    known: BTreeSet<String>,
}

/// The instance logs in a local environment's log directory (`<state_dir>/logs`), as a
/// [`LogSource`].
///
/// ```no_run
/// # async fn example() -> deploykit_core::Result<()> {
/// use deploykit_local::LocalLogs;
/// use deploykit_local::logs::LogPolicy;
/// use deploykit_logs::{LogSelector, LogSource};
///
/// let logs = LocalLogs::new(".deploykit/logs", LogPolicy::default(), "local");
/// let records = logs.logs(&LogSelector::service("web").tail(100)).await?.collect().await?;
/// for record in records {
///     println!("{} {}", record.source.instance, record.line);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct LocalLogs {
    dir: PathBuf,
    policy: LogPolicy,
    environment: String,
}

impl LocalLogs {
    /// The logs in `dir`, rotated by `policy` (only its file names matter to a reader), whose
    /// records carry `environment`.
    pub fn new(dir: impl Into<PathBuf>, policy: LogPolicy, environment: impl Into<String>) -> Self {
        LocalLogs {
            dir: dir.into(),
            policy,
            environment: environment.into(),
        }
    }
}

#[async_trait]
impl LogSource for LocalEnvironment {
    async fn logs(&self, selector: &LogSelector) -> Result<LogStream> {
        let (dir, options) = self.log_files();
        LocalLogs::new(dir, options.log.clone(), options.environment.clone())
            .logs(selector)
            .await
    }
}

#[async_trait]
impl LogSource for LocalLogs {
    async fn logs(&self, selector: &LogSelector) -> Result<LogStream> {
        selector.validate()?;
        let files = Files {
            dir: self.dir.clone(),
            policy: self.policy.clone(),
            environment: self.environment.clone(),
            selector: selector.clone(),
        };
        let (readers, mut kept) = blocking({
            let files = files.clone();
            move || {
                let mut readers = Readers::default();
                let kept = files.open_new(&mut readers)?;
                Ok((readers, kept))
            }
        })
        .await?;
        sort_by_time(&mut kept);
        keep_tail(&mut kept, selector.tail);
        if !selector.follows() {
            return Ok(LogStream::from_records(kept));
        }
        let (sender, stream) = LogStream::channel();
        tokio::spawn(follow(files, readers, kept, sender));
        Ok(stream)
    }
}

async fn follow(files: Files, mut readers: Readers, kept: Vec<Record>, sender: LogSender) {
    for record in kept {
        if !sender.send(record).await {
            return;
        }
    }
    let mut poll = tokio::time::interval(POLL);
    let mut last_scan = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = poll.tick() => {}
            _ = sender.closed() => return,
        }
        let rescan = last_scan.elapsed() >= RESCAN;
        if rescan {
            last_scan = tokio::time::Instant::now();
        }
        let files = files.clone();
        let read = blocking(move || {
            let mut new = Vec::new();
            for reader in &mut readers.open {
                new.extend(reader.poll().map_err(|e| read_error(&files.dir, &e))?);
            }
            new.retain(|r| files.selector.in_window(r.timestamp_ns));
            if rescan {
                // An instance that started since: everything it wrote is new.
                new.extend(files.open_new(&mut readers)?);
            }
            Ok((readers, new))
        })
        .await;
        let mut new = match read {
            Ok((back, new)) => {
                readers = back;
                new
            }
            Err(e) => {
                sender.fail(e).await;
                return;
            }
        };
        sort_by_time(&mut new);
        for record in new {
            if !sender.send(record).await {
                return;
            }
        }
    }
}

impl Files {
    /// Opens the selected instances not opened yet; returns their records so far (in the
    /// window).
    fn open_new(&self, readers: &mut Readers) -> Result<Vec<Record>> {
        let selector = &self.selector;
        let mut records = Vec::new();
        let found = owners(&self.dir, &self.policy).map_err(|e| read_error(&self.dir, &e))?;
        for (log, owner) in found {
            let instance = log.instance().to_string();
            if owner.service != selector.service || !readers.known.insert(instance.clone()) {
                continue;
            }
            if selector
                .revision
                .as_ref()
                .is_some_and(|r| *r != owner.revision)
                || selector.instance.as_ref().is_some_and(|i| *i != instance)
            {
                continue;
            }
            let source = Source::new(
                owner.service,
                self.environment.clone(),
                owner.revision,
                instance,
            );
            let (reader, kept) =
                LogReader::open(log, source).map_err(|e| read_error(&self.dir, &e))?;
            records.extend(
                kept.into_iter()
                    .filter(|r| selector.in_window(r.timestamp_ns)),
            );
            readers.open.push(reader);
        }
        Ok(records)
    }
}

fn read_error(dir: &Path, error: &std::io::Error) -> Error {
    Error::backend(
        format!("read the instance logs in {}", dir.display()),
        error.to_string(),
    )
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::backend("read the instance logs", e.to_string()))?
}
