//! Archival: batches stored as named objects of a backup [`Repository`] (chunked,
//! deduplicated, compressed and encrypted by the backup engine) on any `BackupTarget`, and
//! searched back by environment, service, time range and filters.

use std::collections::VecDeque;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deploykit_backup::Repository;
use deploykit_core::{Error, Result};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::Forwarder;
use crate::config::{FilterConfig, PipelineConfig, StageConfig};
use crate::record::Record;
use crate::stages::{Processor, Verdict};

/// Where archived logs live among a repository's named objects.
const ROOT: &str = "logs";
/// Longest environment or service segment in an object name (names are at most 255 bytes).
const MAX_SEGMENT: usize = 64;
/// How many sequence numbers a write tries when names are taken by other content (another
/// writer, or a previous process of this one).
const NAME_ATTEMPTS: u32 = 64;

/// When an [`ArchiveForwarder`] writes what it accumulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveOptions {
    /// Write once this many bytes of JSON lines are pending (default 1 MiB; 0 writes every
    /// batch at once).
    pub max_object_bytes: usize,
    /// Write once the oldest pending record was accepted this long ago (default 60 s),
    /// checked on every send.
    pub max_age: Duration,
}

impl Default for ArchiveOptions {
    fn default() -> Self {
        ArchiveOptions {
            max_object_bytes: 1024 * 1024,
            max_age: Duration::from_secs(60),
        }
    }
}

/// Archives records into a backup [`Repository`] — a local directory, S3 or any other
/// `BackupTarget` — as named objects, compressed and encrypted by the backup engine.
///
/// Records are accumulated per environment, service and UTC day (of their timestamps) and
/// written as one object per group, named
/// `logs/<environment>/<service>/<YYYY-MM-DD>/<earliest ts, 20 digits>-<sequence>.jsonl`
/// (characters other than ASCII letters, digits, `.`, `_`, `-` in the environment and service
/// become `_`), holding the records as JSON lines (see [`Record::write_json`]). A group is
/// written when the pending bytes reach [`ArchiveOptions::max_object_bytes`], when a send
/// finds the oldest pending record older than [`ArchiveOptions::max_age`], and on
/// [`Forwarder::flush`] — only then is what was sent durable. A failed write keeps the
/// groups not yet written pending, for the next send or flush.
///
/// Object names (environment, service, day) are visible to whoever can list the target; the
/// lines are not. Search them back with [`search_archive`].
#[derive(Debug)]
pub struct ArchiveForwarder {
    repo: Repository,
    options: ArchiveOptions,
    state: Mutex<Pending>,
    objects_written: AtomicU64,
}

#[derive(Debug, Default)]
struct Pending {
    groups: Vec<Group>,
    bytes: usize,
    since: Option<Instant>,
    sequence: u64,
}

#[derive(Debug)]
struct Group {
    environment: String,
    service: String,
    day: String,
    earliest_ns: i64,
    lines: Vec<u8>,
}

impl ArchiveForwarder {
    /// Archives into `repo` (opened or initialised by the caller with its key).
    pub fn new(repo: Repository, options: ArchiveOptions) -> Self {
        ArchiveForwarder {
            repo,
            options,
            state: Mutex::new(Pending::default()),
            objects_written: AtomicU64::new(0),
        }
    }

    /// The repository archived into.
    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    /// Objects written so far.
    pub fn objects_written(&self) -> u64 {
        self.objects_written.load(Ordering::Relaxed)
    }

    /// Writes every pending group, removing each once written.
    async fn write_pending(&self, pending: &mut Pending) -> Result<()> {
        while let Some(group) = pending.groups.first() {
            let prefix = object_prefix(&group.environment, &group.service);
            let mut attempt = 0;
            loop {
                let name = format!(
                    "{prefix}{}/{:020}-{}.jsonl",
                    group.day,
                    group.earliest_ns.max(0),
                    pending.sequence
                );
                let content = Cursor::new(group.lines.clone());
                match self.repo.put_named(&name, content).await {
                    Ok(_) => break,
                    Err(Error::AlreadyExists { .. }) if attempt + 1 < NAME_ATTEMPTS => {
                        attempt += 1;
                        pending.sequence += 1;
                    }
                    Err(error) => return Err(error),
                }
            }
            pending.sequence += 1;
            let group = pending.groups.remove(0);
            pending.bytes -= group.lines.len();
            self.objects_written.fetch_add(1, Ordering::Relaxed);
        }
        pending.since = None;
        Ok(())
    }
}

#[async_trait]
impl Forwarder for ArchiveForwarder {
    fn name(&self) -> &str {
        "archive"
    }

    async fn send(&self, batch: &[Record]) -> Result<()> {
        let mut pending = self.state.lock().await;
        for record in batch {
            let day = utc_day(record.timestamp_ns);
            let source = &record.source;
            let position = pending.groups.iter().position(|group| {
                group.day == day
                    && group.environment == source.environment
                    && group.service == source.service
            });
            let group = match position {
                Some(position) => &mut pending.groups[position],
                None => {
                    pending.groups.push(Group {
                        environment: source.environment.clone(),
                        service: source.service.clone(),
                        day,
                        earliest_ns: record.timestamp_ns,
                        lines: Vec::new(),
                    });
                    pending.groups.last_mut().expect("just pushed")
                }
            };
            let before = group.lines.len();
            record.write_json(&mut group.lines);
            group.lines.push(b'\n');
            group.earliest_ns = group.earliest_ns.min(record.timestamp_ns);
            let added = group.lines.len() - before;
            pending.bytes += added;
        }
        if pending.groups.is_empty() {
            return Ok(());
        }
        let since = *pending.since.get_or_insert_with(Instant::now);
        if pending.bytes >= self.options.max_object_bytes || since.elapsed() >= self.options.max_age
        {
            self.write_pending(&mut pending).await?;
        }
        Ok(())
    }

    /// Writes everything pending.
    async fn flush(&self) -> Result<()> {
        let mut pending = self.state.lock().await;
        self.write_pending(&mut pending).await
    }
}

/// Which archived records to read back ([`search_archive`]).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ArchiveQuery {
    /// The environment archived.
    pub environment: String,
    /// The service archived.
    pub service: String,
    /// Only records at or after this time (nanoseconds since the Unix epoch).
    pub since_ns: Option<i64>,
    /// Only records before this time (nanoseconds since the Unix epoch).
    pub until_ns: Option<i64>,
    /// Only records every one of these filters keeps (the pipeline's `filter` stages).
    pub filters: Vec<FilterConfig>,
}

impl ArchiveQuery {
    /// Every archived record of `service` in `environment`.
    pub fn new(environment: impl Into<String>, service: impl Into<String>) -> Self {
        ArchiveQuery {
            environment: environment.into(),
            service: service.into(),
            ..ArchiveQuery::default()
        }
    }

    /// Only records at or after `since_ns`.
    pub fn since_ns(mut self, since_ns: i64) -> Self {
        self.since_ns = Some(since_ns);
        self
    }

    /// Only records before `until_ns`.
    pub fn until_ns(mut self, until_ns: i64) -> Self {
        self.until_ns = Some(until_ns);
        self
    }

    /// Only records `filter` keeps (added to the filters already given).
    pub fn filter(mut self, filter: FilterConfig) -> Self {
        self.filters.push(filter);
        self
    }
}

/// Searches the logs an [`ArchiveForwarder`] archived into `repo`: lists the objects of the
/// query's environment, service and days, and returns a reader that decrypts them one at a
/// time, in name order (by day, then earliest time), yielding the records in the time range
/// that pass the filters. Records come in the order they were archived within each object;
/// objects may overlap in time.
///
/// An invalid filter is an error naming it (`logs.archive.filters[i]…`); a damaged object is
/// an [`Error::Corrupt`] naming it when the reader reaches it.
pub async fn search_archive(repo: &Repository, query: &ArchiveQuery) -> Result<ArchiveSearch> {
    let config = PipelineConfig {
        stages: query
            .filters
            .iter()
            .cloned()
            .map(StageConfig::Filter)
            .collect(),
        ..PipelineConfig::default()
    };
    let processor = Processor::new(&config, Vec::<String>::new()).map_err(|error| match error {
        Error::InvalidSpec { field, reason } => Error::invalid(
            field.replace("logs.pipeline.stages", "logs.archive.filters"),
            reason,
        ),
        other => other,
    })?;
    let prefix = object_prefix(&query.environment, &query.service);
    let first_day = query.since_ns.map(utc_day);
    let last_day = query.until_ns.map(|until| utc_day(until.saturating_sub(1)));
    let names = repo
        .list_named(&prefix)
        .await?
        .into_iter()
        .filter(|name| {
            let Some((day, earliest)) = parse_object_name(&name[prefix.len()..]) else {
                return false;
            };
            first_day.as_deref().is_none_or(|first| day >= first)
                && last_day.as_deref().is_none_or(|last| day <= last)
                && query.until_ns.is_none_or(|until| earliest < until)
        })
        .collect::<VecDeque<_>>();
    Ok(ArchiveSearch {
        repo: repo.clone(),
        objects: names.len(),
        names,
        records: VecDeque::new(),
        processor,
        query: query.clone(),
    })
}

/// Reads the records of a [`search_archive`], one object in memory at a time.
#[derive(Debug)]
pub struct ArchiveSearch {
    repo: Repository,
    names: VecDeque<String>,
    objects: usize,
    records: VecDeque<Record>,
    processor: Processor,
    query: ArchiveQuery,
}

impl ArchiveSearch {
    /// How many objects the search reads.
    pub fn objects(&self) -> usize {
        self.objects
    }

    /// The next matching record; `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Record>> {
        loop {
            if let Some(record) = self.records.pop_front() {
                return Ok(Some(record));
            }
            let Some(name) = self.names.pop_front() else {
                return Ok(None);
            };
            let content = self.repo.read_named(&name).await?;
            let text = String::from_utf8(content).map_err(|error| Error::Corrupt {
                what: format!("archived log object {name}"),
                source: error.to_string().into(),
            })?;
            for (number, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let mut record = Record::from_json(line).map_err(|error| Error::Corrupt {
                    what: format!("archived log object {name} line {}", number + 1),
                    source: error.chain().into(),
                })?;
                if self.keeps(&mut record) {
                    self.records.push_back(record);
                }
            }
        }
    }

    /// Every remaining matching record.
    pub async fn collect(mut self) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        while let Some(record) = self.next().await? {
            out.push(record);
        }
        Ok(out)
    }

    fn keeps(&self, record: &mut Record) -> bool {
        let query = &self.query;
        record.source.environment == query.environment
            && record.source.service == query.service
            && query
                .since_ns
                .is_none_or(|since| record.timestamp_ns >= since)
            && query
                .until_ns
                .is_none_or(|until| record.timestamp_ns < until)
            && self.processor.process(record) == Verdict::Keep
    }
}

/// `logs/<environment>/<service>/`.
fn object_prefix(environment: &str, service: &str) -> String {
    format!(
        "{ROOT}/{}/{}/",
        name_segment(environment),
        name_segment(service)
    )
}

/// `text` as an object-name segment: other characters than ASCII letters, digits, `.`, `_`,
/// `-` become `_`, a leading `.` gets a `_` before it, at most [`MAX_SEGMENT`] bytes.
fn name_segment(text: &str) -> String {
    let mut segment: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_SEGMENT)
        .collect();
    if segment.is_empty() || segment.starts_with('.') {
        segment.insert(0, '_');
    }
    segment
}

/// `<day>/<earliest>-<sequence>.jsonl` → (day, earliest).
fn parse_object_name(rest: &str) -> Option<(&str, i64)> {
    let (day, file) = rest.split_once('/')?;
    let (earliest, _) = file.strip_suffix(".jsonl")?.split_once('-')?;
    Some((day, earliest.parse().ok()?))
}

/// The UTC day of a time, `YYYY-MM-DD`.
fn utc_day(timestamp_ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(timestamp_ns.max(0))
        .format("%Y-%m-%d")
        .to_string()
}
