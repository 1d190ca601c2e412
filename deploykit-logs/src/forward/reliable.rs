//! Retries and a disk backlog around any forwarder.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use deploykit_core::retry::{Backoff, Retry, RetryPolicy};
use deploykit_core::{Error, Result};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::Forwarder;
use super::backlog::Backlog;
use crate::record::Record;

/// How a [`Reliable`] forwarder retries and how much it keeps on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReliableOptions {
    /// The retries of a batch while the destination seemed up, and of each backlogged batch
    /// on [`Reliable::replay`]; its backoff also spaces the probes of a destination that is
    /// down.
    pub retry: RetryPolicy,
    /// The most the backlog directory holds, in bytes of JSON lines (default 256 MiB); past
    /// it the oldest batches are dropped whole (and a single batch over the limit loses its
    /// oldest records), all counted in [`ReliableStats::dropped_records`].
    pub backlog_max_bytes: u64,
}

impl Default for ReliableOptions {
    fn default() -> Self {
        ReliableOptions {
            retry: RetryPolicy::default(),
            backlog_max_bytes: 256 * 1024 * 1024,
        }
    }
}

/// What a [`Reliable`] forwarder did so far (backlog figures are current).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReliableStats {
    /// Records the destination took (directly or from the backlog).
    pub delivered_records: u64,
    /// Of those, records replayed from the backlog.
    pub replayed_records: u64,
    /// Batches written to the backlog.
    pub backlogged_batches: u64,
    /// Records dropped because the backlog was at its byte limit (the oldest go first).
    pub dropped_records: u64,
    /// Records the destination refused for good (a non-retryable error such as HTTP 400).
    pub rejected_records: u64,
    /// Backlog files that could not be read back, set aside as `<file>.corrupt`.
    pub corrupt_batches: u64,
    /// Batches waiting in the backlog now.
    pub backlog_batches: u64,
    /// Records waiting in the backlog now.
    pub backlog_records: u64,
    /// Bytes the backlog holds now.
    pub backlog_bytes: u64,
}

/// Wraps any forwarder with retries ([`RetryPolicy`]) and a disk backlog, so that nothing is
/// lost while the destination is down (within the backlog's byte limit) or across a restart.
///
/// - While the destination answers, a batch is sent with the retry policy (transient errors
///   are retried with its backoff).
/// - When the policy gives up, the batch is appended to the backlog directory (JSON lines,
///   fsync'd) and [`Forwarder::send`] succeeds: the batch is durably accepted. Later batches
///   go to the backlog too, behind it, so order is kept; every so often (the policy's
///   backoff) a send first probes the destination with the oldest backlogged batch, and once
///   one is taken the backlog is replayed in order before new batches go out.
/// - [`Reliable::replay`] (and [`Forwarder::flush`]) replay the whole backlog with the retry
///   policy. A forwarder opened on a directory a previous process left replays it on its
///   first send or flush.
/// - A permanent error (e.g. HTTP 400) is not retried or backlogged: `send` returns it; a
///   backlogged batch refused for good is dropped; both are counted as rejected.
/// - Past `backlog_max_bytes` the oldest records are dropped and counted.
///
/// Delivery is at least once: a crash between the destination taking a replayed batch and
/// its file being removed sends that batch again on the next start. The backlog's file I/O is
/// blocking and short, done on the calling task.
pub struct Reliable {
    inner: Arc<dyn Forwarder>,
    name: String,
    policy: RetryPolicy,
    state: Mutex<State>,
    counters: Counters,
}

impl std::fmt::Debug for Reliable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reliable")
            .field("name", &self.name)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct State {
    backlog: Backlog,
    /// No probe of a down destination before this.
    next_probe: Option<Instant>,
    backoff: Backoff,
}

#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    replayed: AtomicU64,
    backlogged: AtomicU64,
    dropped: AtomicU64,
    rejected: AtomicU64,
    corrupt: AtomicU64,
    backlog_batches: AtomicU64,
    backlog_records: AtomicU64,
    backlog_bytes: AtomicU64,
}

/// How one replay of the backlog ended.
enum Drain {
    /// Every backlogged batch was taken (or dropped as refused/corrupt).
    Empty,
    /// The destination failed transiently: the batch stays.
    Failed(Error),
}

impl Reliable {
    /// Wraps `inner`, keeping its backlog in `backlog_dir` (created if missing; batches left
    /// there by a previous process are taken up, to be replayed first).
    pub fn open(
        inner: Arc<dyn Forwarder>,
        backlog_dir: impl Into<PathBuf>,
        options: ReliableOptions,
    ) -> Result<Self> {
        let (backlog, dropped) = Backlog::open(&backlog_dir.into(), options.backlog_max_bytes)?;
        let name = format!("reliable({})", inner.name());
        let reliable = Reliable {
            inner,
            name,
            policy: options.retry,
            state: Mutex::new(State {
                backlog,
                next_probe: None,
                backoff: Backoff::new(&options.retry),
            }),
            counters: Counters::default(),
        };
        reliable.counters.dropped.store(dropped, Ordering::Relaxed);
        if let Ok(state) = reliable.state.try_lock() {
            reliable.publish(&state);
        }
        Ok(reliable)
    }

    /// The counters and the backlog's current size.
    pub fn stats(&self) -> ReliableStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let c = &self.counters;
        ReliableStats {
            delivered_records: load(&c.delivered),
            replayed_records: load(&c.replayed),
            backlogged_batches: load(&c.backlogged),
            dropped_records: load(&c.dropped),
            rejected_records: load(&c.rejected),
            corrupt_batches: load(&c.corrupt),
            backlog_batches: load(&c.backlog_batches),
            backlog_records: load(&c.backlog_records),
            backlog_bytes: load(&c.backlog_bytes),
        }
    }

    /// Sends every backlogged batch, oldest first, each with the retry policy. Returns the
    /// number of records delivered; if the destination is still down, the
    /// [`Error::Persistent`] of the batch that failed (it and the later ones stay on disk).
    pub async fn replay(&self) -> Result<u64> {
        let mut state = self.state.lock().await;
        let before = self.counters.replayed.load(Ordering::Relaxed);
        let outcome = self.drain(&mut state, true).await;
        self.publish(&state);
        match outcome? {
            Drain::Empty => {
                state.next_probe = None;
                state.backoff.reset();
                Ok(self.counters.replayed.load(Ordering::Relaxed) - before)
            }
            Drain::Failed(error) => Err(error),
        }
    }

    /// Sends the backlog in order (with retries if `patient`, else one attempt per batch),
    /// stopping at the first transient failure. An `Err` is a failure of the backlog itself
    /// (its files), not of the destination.
    async fn drain(&self, state: &mut State, patient: bool) -> Result<Drain> {
        while let Some(entry) = state.backlog.front().cloned() {
            let records = match Backlog::read(&entry) {
                Ok(records) => records,
                Err(Error::Corrupt { .. }) => {
                    state.backlog.quarantine_front()?;
                    self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Err(error) => return Err(error),
            };
            let policy = if patient {
                self.policy
            } else {
                RetryPolicy::none()
            };
            match self.send_with(&policy, &records).await {
                Ok(()) => {
                    state.backlog.pop_front()?;
                    let count = records.len() as u64;
                    self.counters.delivered.fetch_add(count, Ordering::Relaxed);
                    self.counters.replayed.fetch_add(count, Ordering::Relaxed);
                }
                Err(error) if error.is_retryable() => return Ok(Drain::Failed(error)),
                Err(_) => {
                    state.backlog.pop_front()?;
                    self.counters
                        .rejected
                        .fetch_add(entry.records, Ordering::Relaxed);
                }
            }
        }
        Ok(Drain::Empty)
    }

    /// Sends `batch` under `policy`: `Ok`, a retryable error (transient errors were retried
    /// until the policy gave up), or a permanent one.
    async fn send_with(&self, policy: &RetryPolicy, batch: &[Record]) -> Result<()> {
        let classify = |error: &Error| {
            if error.is_retryable() && !error.is_persistent() {
                Retry::Yes
            } else {
                Retry::No
            }
        };
        policy
            .run(&self.name, classify, || self.inner.send(batch))
            .await
            .map_err(|failure| {
                failure.into_error(format!("{}: send a batch", self.name), |error| error)
            })
    }

    fn backlog(&self, state: &mut State, batch: &[Record]) -> Result<()> {
        let dropped = state.backlog.append(batch)?;
        self.counters.dropped.fetch_add(dropped, Ordering::Relaxed);
        self.counters.backlogged.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// After a failed probe: the next one waits the backoff's next delay.
    fn schedule_probe(state: &mut State) {
        let delay = state.backoff.next_delay();
        state.next_probe = Some(Instant::now() + delay);
    }

    fn publish(&self, state: &State) {
        let (batches, records, bytes) = state.backlog.totals();
        let c = &self.counters;
        c.backlog_batches.store(batches, Ordering::Relaxed);
        c.backlog_records.store(records, Ordering::Relaxed);
        c.backlog_bytes.store(bytes, Ordering::Relaxed);
    }

    async fn send_locked(&self, state: &mut State, batch: &[Record]) -> Result<()> {
        if !state.backlog.is_empty() {
            let due = state.next_probe.is_none_or(|probe| Instant::now() >= probe);
            if !due {
                return self.backlog(state, batch);
            }
            match self.drain(state, false).await? {
                Drain::Empty => {
                    state.next_probe = None;
                    state.backoff.reset();
                }
                Drain::Failed(_) => {
                    Self::schedule_probe(state);
                    return self.backlog(state, batch);
                }
            }
        }
        match self.send_with(&self.policy, batch).await {
            Ok(()) => {
                self.counters
                    .delivered
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(error) if error.is_retryable() => {
                Self::schedule_probe(state);
                self.backlog(state, batch)
            }
            Err(error) => {
                self.counters
                    .rejected
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                Err(error)
            }
        }
    }
}

#[async_trait]
impl Forwarder for Reliable {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, batch: &[Record]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut state = self.state.lock().await;
        let outcome = self.send_locked(&mut state, batch).await;
        self.publish(&state);
        outcome
    }

    /// Replays the backlog (see [`Reliable::replay`]), then flushes the wrapped forwarder.
    /// A destination still down is not an error here: what it has not taken is on disk, which
    /// is what a flush promises; [`Reliable::replay`] reports it.
    async fn flush(&self) -> Result<()> {
        match self.replay().await {
            Ok(_) => self.inner.flush().await,
            Err(error) => {
                let stats = self.stats();
                tracing::warn!(
                    forwarder = %self.name,
                    kept = stats.backlog_records,
                    "the destination is still down; its records stay in the backlog: {error}"
                );
                Ok(())
            }
        }
    }
}
