//! The running pipeline: stages on the sources' tasks, a bounded queue, one forwarding task.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use deploykit_core::{Error, Result};
use regex::Regex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::config::{CONFIG_PATH, OverflowPolicy, PipelineConfig};
use crate::counters::{Counters, PipelineStats, bump};
use crate::forward::Forwarder;
use crate::parse::LineJoiner;
use crate::record::Record;
use crate::stages::{DropReason, Processor, Verdict};

/// A running log pipeline.
///
/// Records sent through a [`PipelineInput`] go through the stages on the sender's task, then
/// into a queue bounded by `memory_limit_bytes` (queued plus in-flight records); one task takes
/// batches from it to the forwarder. A full queue either makes senders wait (`back_pressure`)
/// or drops the new record and counts it (`drop_newest`): memory never grows past the ceiling
/// (plus one record, so a single record larger than the ceiling still passes when the queue
/// is empty).
#[derive(Debug)]
pub struct Pipeline {
    input: PipelineInput,
    task: Option<JoinHandle<Result<()>>>,
}

/// Where sources send records; cheap to clone, one per source task.
#[derive(Debug, Clone)]
pub struct PipelineInput {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    processor: Processor,
    queue: Mutex<Queue>,
    space: Notify,
    data: Notify,
    memory_limit: usize,
    overflow: OverflowPolicy,
    multiline: Option<MultilineRules>,
}

#[derive(Debug)]
struct MultilineRules {
    start: Regex,
    continuation: Option<Regex>,
    max_lines: usize,
    max_bytes: usize,
    flush_timeout: Duration,
}

#[derive(Debug, Default)]
struct Queue {
    records: VecDeque<(Record, usize)>,
    /// Bytes of queued and in-flight records.
    bytes: usize,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Pipeline {
    /// Compiles `config` (errors name the field path), with `secrets` as the exact values
    /// redacted from every record, and starts forwarding to `forwarder`. Must be called inside
    /// a Tokio runtime.
    pub fn start<S: AsRef<str>>(
        config: &PipelineConfig,
        secrets: impl IntoIterator<Item = S>,
        forwarder: Arc<dyn Forwarder>,
    ) -> Result<Pipeline> {
        if config.memory_limit_bytes == 0 {
            return Err(Error::invalid(
                format!("{CONFIG_PATH}.memory_limit_bytes"),
                "must be more than 0",
            ));
        }
        if config.batch_max_records == 0 {
            return Err(Error::invalid(
                format!("{CONFIG_PATH}.batch_max_records"),
                "must be at least 1",
            ));
        }
        let multiline = match &config.multiline {
            None => None,
            Some(multiline) => {
                let path = format!("{CONFIG_PATH}.multiline");
                let compile = |pattern: &str, key: &str| {
                    Regex::new(pattern).map_err(|error| {
                        Error::invalid(format!("{path}.{key}"), format!("invalid regex: {error}"))
                    })
                };
                if multiline.max_lines == 0 {
                    return Err(Error::invalid(
                        format!("{path}.max_lines"),
                        "must be at least 1",
                    ));
                }
                Some(MultilineRules {
                    start: compile(&multiline.start, "start")?,
                    continuation: multiline
                        .continuation
                        .as_deref()
                        .map(|pattern| compile(pattern, "continuation"))
                        .transpose()?,
                    max_lines: multiline.max_lines,
                    max_bytes: multiline.max_bytes,
                    flush_timeout: Duration::from_millis(multiline.flush_timeout_ms),
                })
            }
        };
        let counters = Arc::new(Counters::default());
        let processor = Processor::with_counters(config, secrets, counters)?;
        let shared = Arc::new(Shared {
            processor,
            queue: Mutex::new(Queue::default()),
            space: Notify::new(),
            data: Notify::new(),
            memory_limit: config.memory_limit_bytes,
            overflow: config.overflow,
            multiline,
        });
        let task = tokio::spawn(forward_loop(
            shared.clone(),
            forwarder,
            config.batch_max_records,
            config.forward_retries,
            Duration::from_millis(config.retry_backoff_ms),
        ));
        Ok(Pipeline {
            input: PipelineInput { shared },
            task: Some(task),
        })
    }

    /// An input for one more source.
    pub fn input(&self) -> PipelineInput {
        self.input.clone()
    }

    /// The counters so far.
    pub fn stats(&self) -> PipelineStats {
        self.input.stats()
    }

    /// Stops taking records, forwards everything queued, flushes the forwarder and returns
    /// the final counters (then `records_in == records_out + dropped()`). The error of the
    /// last failed batch or of the flush, if any, is returned after everything was tried.
    pub async fn close(mut self) -> Result<PipelineStats> {
        self.input.close();
        if let Some(task) = self.task.take() {
            task.await
                .map_err(|error| Error::backend("logs.pipeline.close", error.to_string()))??;
        }
        Ok(self.stats())
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // A pipeline dropped without `close` still drains its queue in the background.
        self.input.close();
    }
}

impl PipelineInput {
    /// Runs the stages on `record` and queues it if it is kept. Waits while the queue is full
    /// under `back_pressure`. Returns what became of it; an error once the pipeline is closed.
    pub async fn send(&self, mut record: Record) -> Result<Verdict> {
        if self.shared.lock().closed {
            return Err(closed_error());
        }
        match self.process(&mut record) {
            Verdict::Keep => self.enqueue(record).await,
            dropped => Ok(dropped),
        }
    }

    /// Runs the stages on `record` in place (counted), without queueing it.
    pub fn process(&self, record: &mut Record) -> Verdict {
        self.shared.processor.process(record)
    }

    /// Queues a record that [`PipelineInput::process`] kept. `Drop(Overflow)` if the queue is
    /// full under `drop_newest`; an error (and the record counted as an overflow drop) once
    /// the pipeline is closed.
    pub async fn enqueue(&self, record: Record) -> Result<Verdict> {
        let size = record.approx_bytes();
        let counters = self.shared.processor.counters();
        let mut record = Some(record);
        loop {
            let notified = self.shared.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut queue = self.shared.lock();
                if queue.closed {
                    bump(&counters.dropped_by_overflow, 1);
                    return Err(closed_error());
                }
                if queue.bytes + size <= self.shared.memory_limit || queue.bytes == 0 {
                    if let Some(record) = record.take() {
                        queue.records.push_back((record, size));
                    }
                    queue.bytes += size;
                    counters
                        .queued_bytes
                        .store(queue.bytes as u64, Ordering::Relaxed);
                    counters
                        .peak_queued_bytes
                        .fetch_max(queue.bytes as u64, Ordering::Relaxed);
                    drop(queue);
                    self.shared.data.notify_one();
                    return Ok(Verdict::Keep);
                }
                if self.shared.overflow == OverflowPolicy::DropNewest {
                    bump(&counters.dropped_by_overflow, 1);
                    return Ok(Verdict::Drop(DropReason::Overflow));
                }
            }
            notified.await;
        }
    }

    /// A joiner for one stream, following the pipeline's `multiline` table; `None` if the
    /// pipeline does not join lines.
    pub fn line_joiner(&self) -> Option<LineJoiner> {
        self.shared.multiline.as_ref().map(|rules| {
            LineJoiner::new(
                rules.start.clone(),
                rules.continuation.clone(),
                rules.max_lines,
                rules.max_bytes,
                rules.flush_timeout,
            )
        })
    }

    /// The counters so far.
    pub fn stats(&self) -> PipelineStats {
        self.shared.processor.stats()
    }

    fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.data.notify_one();
        self.shared.space.notify_waiters();
    }
}

fn closed_error() -> Error {
    Error::invalid("logs.pipeline", "the pipeline is closed")
}

/// Takes batches from the queue to the forwarder until the pipeline is closed and drained.
async fn forward_loop(
    shared: Arc<Shared>,
    forwarder: Arc<dyn Forwarder>,
    batch_max: usize,
    retries: u32,
    backoff: Duration,
) -> Result<()> {
    let counters = shared.processor.counters().clone();
    let mut batch: Vec<Record> = Vec::with_capacity(batch_max);
    let mut last_error = None;
    loop {
        let batch_bytes = loop {
            let notified = shared.data.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let closed = {
                let mut queue = shared.lock();
                if !queue.records.is_empty() {
                    let take = queue.records.len().min(batch_max);
                    let mut bytes = 0;
                    for (record, size) in queue.records.drain(..take) {
                        bytes += size;
                        batch.push(record);
                    }
                    break bytes;
                }
                queue.closed
            };
            if closed {
                if let Err(error) = forwarder.flush().await {
                    bump(&counters.forward_errors, 1);
                    return Err(error);
                }
                return last_error.map_or(Ok(()), Err);
            }
            notified.await;
        };
        let mut attempt = 0;
        loop {
            match forwarder.send(&batch).await {
                Ok(()) => {
                    bump(&counters.records_out, batch.len() as u64);
                    break;
                }
                Err(error) => {
                    bump(&counters.forward_errors, 1);
                    if attempt >= retries {
                        bump(&counters.dropped_by_forward_failure, batch.len() as u64);
                        last_error = Some(error);
                        break;
                    }
                    tokio::time::sleep(backoff.saturating_mul(1 << attempt.min(16))).await;
                    attempt += 1;
                }
            }
        }
        batch.clear();
        {
            let mut queue = shared.lock();
            queue.bytes -= batch_bytes;
            counters
                .queued_bytes
                .store(queue.bytes as u64, Ordering::Relaxed);
        }
        shared.space.notify_waiters();
    }
}
