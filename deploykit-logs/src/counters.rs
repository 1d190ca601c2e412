//! The pipeline's counters.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, shared by every input of a pipeline and its forwarding task.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) records_in: AtomicU64,
    pub(crate) records_out: AtomicU64,
    pub(crate) dropped_by_filter: AtomicU64,
    pub(crate) dropped_by_sampling: AtomicU64,
    pub(crate) dropped_by_rate_limit: AtomicU64,
    pub(crate) dropped_by_overflow: AtomicU64,
    pub(crate) dropped_by_forward_failure: AtomicU64,
    pub(crate) redactions: AtomicU64,
    pub(crate) forward_errors: AtomicU64,
    pub(crate) queued_bytes: AtomicU64,
    pub(crate) peak_queued_bytes: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64, by: u64) {
    if by > 0 {
        counter.fetch_add(by, Ordering::Relaxed);
    }
}

impl Counters {
    pub(crate) fn snapshot(&self) -> PipelineStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        PipelineStats {
            records_in: load(&self.records_in),
            records_out: load(&self.records_out),
            dropped_by_filter: load(&self.dropped_by_filter),
            dropped_by_sampling: load(&self.dropped_by_sampling),
            dropped_by_rate_limit: load(&self.dropped_by_rate_limit),
            dropped_by_overflow: load(&self.dropped_by_overflow),
            dropped_by_forward_failure: load(&self.dropped_by_forward_failure),
            redactions: load(&self.redactions),
            forward_errors: load(&self.forward_errors),
            queued_bytes: load(&self.queued_bytes),
            peak_queued_bytes: load(&self.peak_queued_bytes),
        }
    }
}

/// A snapshot of a pipeline's counters.
///
/// Once the pipeline is closed every record that came in is accounted for:
/// `records_in == records_out + dropped()` ([`PipelineStats::is_balanced`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipelineStats {
    /// Records that entered the stages.
    pub records_in: u64,
    /// Records the forwarder accepted.
    pub records_out: u64,
    /// Records a filter stage dropped.
    pub dropped_by_filter: u64,
    /// Records a sample stage dropped.
    pub dropped_by_sampling: u64,
    /// Records a rate-limit stage dropped.
    pub dropped_by_rate_limit: u64,
    /// Records dropped because the queue was at its memory ceiling (`drop_newest`).
    pub dropped_by_overflow: u64,
    /// Records dropped because the forwarder failed after every retry.
    pub dropped_by_forward_failure: u64,
    /// Values replaced by `[REDACTED]`.
    pub redactions: u64,
    /// Failed forwarder calls (each retry counts).
    pub forward_errors: u64,
    /// Memory held by queued and in-flight records now, in bytes.
    pub queued_bytes: u64,
    /// The most memory queued and in-flight records ever held, in bytes.
    pub peak_queued_bytes: u64,
}

impl PipelineStats {
    /// Every record dropped, for whatever reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_by_filter
            + self.dropped_by_sampling
            + self.dropped_by_rate_limit
            + self.dropped_by_overflow
            + self.dropped_by_forward_failure
    }

    /// Whether every record that came in went out or was counted as dropped.
    pub fn is_balanced(&self) -> bool {
        self.records_in == self.records_out + self.dropped()
    }
}
