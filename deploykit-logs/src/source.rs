//! Log sources: where the records of deployed instances are read from.
//!
//! Every backend that runs instances implements [`LogSource`]: the local backend reads the
//! files its supervisor writes, the Kubernetes backend streams pod logs, the in-memory
//! simulator keeps what its simulated instances log. A caller asks with a [`LogSelector`]
//! (which service, revision, instance, time window, whether to follow) and reads a
//! [`LogStream`]: the kept records first, merged by time across instances, then — when
//! following — new records as they are written, until the stream is dropped.

use std::sync::Arc;

use async_trait::async_trait;
use deploykit_core::{Error, Result};
use tokio::sync::mpsc;

use crate::record::Record;

/// How many records a [`LogStream`] buffers between a source and its reader: a reader slower
/// than the source holds the source back (no record is dropped), within this bound.
pub const STREAM_BUFFER: usize = 1024;

/// Which records to read.
///
/// ```
/// use deploykit_logs::LogSelector;
///
/// let selector = LogSelector::service("api").revision("r42").since_ns(1_700_000_000_000_000_000);
/// assert_eq!(selector.revision.as_deref(), Some("r42"));
/// assert!(!selector.follow);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogSelector {
    /// The service whose instances are read.
    pub service: String,
    /// Only instances of this revision; `None` for every revision.
    pub revision: Option<String>,
    /// Only this instance; `None` for every instance.
    pub instance: Option<String>,
    /// Only records at or after this time (nanoseconds since the Unix epoch).
    pub since_ns: Option<i64>,
    /// Only records before this time (nanoseconds since the Unix epoch).
    pub until_ns: Option<i64>,
    /// Of the kept records, only the newest this many (`None`: all of them).
    pub tail: Option<usize>,
    /// After the kept records, go on with new ones as they are written (ignored when
    /// [`until_ns`](Self::until_ns) is set).
    pub follow: bool,
}

impl LogSelector {
    /// Every kept record of every instance of `service`.
    pub fn service(service: impl Into<String>) -> Self {
        LogSelector {
            service: service.into(),
            ..LogSelector::default()
        }
    }

    /// Only instances of `revision`.
    pub fn revision(mut self, revision: impl Into<String>) -> Self {
        self.revision = Some(revision.into());
        self
    }

    /// Only `instance`.
    pub fn instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
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

    /// Only the newest `tail` kept records.
    pub fn tail(mut self, tail: usize) -> Self {
        self.tail = Some(tail);
        self
    }

    /// Go on with new records as they are written.
    pub fn follow(mut self) -> Self {
        self.follow = true;
        self
    }

    /// Whether the stream goes on after the kept records.
    pub fn follows(&self) -> bool {
        self.follow && self.until_ns.is_none()
    }

    /// Whether a record of `revision`/`instance` written at `timestamp_ns` is selected (the
    /// service is the backend's to check).
    pub fn selects(&self, revision: &str, instance: &str, timestamp_ns: i64) -> bool {
        self.revision.as_deref().is_none_or(|r| r == revision)
            && self.instance.as_deref().is_none_or(|i| i == instance)
            && self.in_window(timestamp_ns)
    }

    /// Whether `timestamp_ns` is within [`since_ns`](Self::since_ns) and
    /// [`until_ns`](Self::until_ns).
    pub fn in_window(&self, timestamp_ns: i64) -> bool {
        self.since_ns.is_none_or(|s| timestamp_ns >= s)
            && self.until_ns.is_none_or(|u| timestamp_ns < u)
    }

    /// Checks the selector: a service is named, the window is not empty and `tail` is not 0.
    pub fn validate(&self) -> Result<()> {
        if self.service.trim().is_empty() {
            return Err(Error::invalid("logs.selector.service", "must not be empty"));
        }
        if let (Some(since), Some(until)) = (self.since_ns, self.until_ns)
            && since >= until
        {
            return Err(Error::invalid(
                "logs.selector.until",
                format!("must be later than since ({until} <= {since} ns)"),
            ));
        }
        if self.tail == Some(0) {
            return Err(Error::invalid("logs.selector.tail", "must be at least 1"));
        }
        Ok(())
    }
}

/// Reads the logs of the instances a backend runs.
///
/// Implementations must deliver, for one selector:
/// - the kept records in the window, oldest first (merged by time across instances; records
///   with equal timestamps keep their order within an instance), limited to the newest
///   [`LogSelector::tail`];
/// - then, when [`LogSelector::follows`], every record written afterwards exactly once, in
///   order within each instance's stream, including records of instances that start after
///   the call (a new revision's), until the [`LogStream`] is dropped;
/// - records carrying their service, environment, revision, instance, stream and timestamp.
///
/// `deploykit_testing::conformance::log_source` checks these rules on any implementation.
#[async_trait]
pub trait LogSource: Send + Sync {
    /// Starts reading the records `selector` selects.
    async fn logs(&self, selector: &LogSelector) -> Result<LogStream>;
}

#[async_trait]
impl<T: LogSource + ?Sized> LogSource for Arc<T> {
    async fn logs(&self, selector: &LogSelector) -> Result<LogStream> {
        (**self).logs(selector).await
    }
}

/// The records a [`LogSource`] delivers, read with [`LogStream::next`].
///
/// Dropping the stream stops the source's work for it.
#[derive(Debug)]
pub struct LogStream {
    receiver: mpsc::Receiver<Result<Record>>,
}

/// The writing end of a [`LogStream`], used by [`LogSource`] implementations.
#[derive(Debug, Clone)]
pub struct LogSender {
    sender: mpsc::Sender<Result<Record>>,
}

impl LogStream {
    /// A stream and the sender that feeds it, buffering up to [`STREAM_BUFFER`] records.
    pub fn channel() -> (LogSender, LogStream) {
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        (LogSender { sender }, LogStream { receiver })
    }

    /// A finished stream of `records` (sorted by time first; see [`sort_by_time`]).
    pub fn from_records(mut records: Vec<Record>) -> LogStream {
        sort_by_time(&mut records);
        let (sender, receiver) = mpsc::channel(records.len().max(1));
        for record in records {
            // Cannot fail: the channel has room for every record and its receiver is here.
            let _ = sender.try_send(Ok(record));
        }
        LogStream { receiver }
    }

    /// The next record; `None` once the source is done (never, while following, unless the
    /// source stops). An error ends the stream: the source reports it and stops.
    pub async fn next(&mut self) -> Option<Result<Record>> {
        self.receiver.recv().await
    }

    /// Every record until the source is done (for selectors that do not follow).
    pub async fn collect(mut self) -> Result<Vec<Record>> {
        let mut records = Vec::new();
        while let Some(record) = self.next().await {
            records.push(record?);
        }
        Ok(records)
    }
}

impl LogSender {
    /// Delivers `record`, waiting while the reader is [`STREAM_BUFFER`] records behind.
    /// `false` once the reader is gone: the source should stop.
    pub async fn send(&self, record: Record) -> bool {
        self.sender.send(Ok(record)).await.is_ok()
    }

    /// Reports `error` to the reader, which ends its stream.
    pub async fn fail(&self, error: Error) {
        let _ = self.sender.send(Err(error)).await;
    }

    /// Whether the reader is gone.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Waits until the reader is gone.
    pub async fn closed(&self) {
        self.sender.closed().await
    }
}

/// Sorts records by timestamp; records with equal timestamps keep their order (so lines of
/// one instance written in the same nanosecond stay in order).
pub fn sort_by_time(records: &mut [Record]) {
    records.sort_by_key(|record| record.timestamp_ns);
}

/// The newest `tail` of time-sorted `records` (all of them for `None`).
pub fn keep_tail(records: &mut Vec<Record>, tail: Option<usize>) {
    if let Some(tail) = tail
        && records.len() > tail
    {
        records.drain(..records.len() - tail);
    }
}
