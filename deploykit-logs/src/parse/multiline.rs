//! Multi-line joining: stack traces and other entries spread over several lines.

use std::time::{Duration, Instant};

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::record::Record;

/// How lines are joined into records (the `multiline` table of a pipeline).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultilineConfig {
    /// A line matching this expression begins a new record (e.g. `^\d{4}-\d\d-\d\d` for
    /// lines that start with a date).
    pub start: String,
    /// If set, only lines matching it continue a record (e.g. `^(\s|Caused by:)`); a line
    /// matching neither begins a record of its own. If unset, every line not matching `start`
    /// continues the pending record.
    #[serde(default)]
    pub continuation: Option<String>,
    /// At most this many lines in one record; the next continuation line begins a new record.
    #[serde(default = "default_max_lines")]
    pub max_lines: usize,
    /// At most this many bytes in one record (a single longer line is kept whole).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// A pending record is emitted when no line joined it for this long (milliseconds).
    #[serde(default = "default_flush_timeout_ms")]
    pub flush_timeout_ms: u64,
}

fn default_max_lines() -> usize {
    500
}

fn default_max_bytes() -> usize {
    64 * 1024
}

fn default_flush_timeout_ms() -> u64 {
    1000
}

/// Joins the lines of one stream (one instance's stdout or stderr) into records.
///
/// Feed it every line with [`LineJoiner::push`]; call [`LineJoiner::poll`] when no line came
/// for a while (see [`LineJoiner::deadline`]) and [`LineJoiner::finish`] at the end of the
/// stream. Each call returns at most one completed record.
#[derive(Debug)]
pub struct LineJoiner {
    start: Regex,
    continuation: Option<Regex>,
    max_lines: usize,
    max_bytes: usize,
    flush_timeout: Duration,
    pending: Option<Pending>,
}

#[derive(Debug)]
struct Pending {
    record: Record,
    lines: usize,
    last_line_at: Instant,
}

impl LineJoiner {
    /// A joiner with compiled expressions and bounds (see [`MultilineConfig`]).
    pub fn new(
        start: Regex,
        continuation: Option<Regex>,
        max_lines: usize,
        max_bytes: usize,
        flush_timeout: Duration,
    ) -> Self {
        LineJoiner {
            start,
            continuation,
            max_lines: max_lines.max(1),
            max_bytes,
            flush_timeout,
            pending: None,
        }
    }

    /// Takes the next line (as a record with that one line) arriving at `now`; returns the
    /// record it completed, if any.
    pub fn push(&mut self, record: Record, now: Instant) -> Option<Record> {
        let continues = !self.start.is_match(&record.line)
            && self
                .continuation
                .as_ref()
                .is_none_or(|regex| regex.is_match(&record.line));
        if continues && let Some(pending) = &mut self.pending {
            let fits = pending.lines < self.max_lines
                && pending.record.line.len() + 1 + record.line.len() <= self.max_bytes;
            if fits {
                pending.record.line.push('\n');
                pending.record.line.push_str(&record.line);
                pending.lines += 1;
                pending.last_line_at = now;
                return None;
            }
        }
        let done = self.pending.take().map(|pending| pending.record);
        self.pending = Some(Pending {
            record,
            lines: 1,
            last_line_at: now,
        });
        done
    }

    /// Emits the pending record if no line joined it for the flush timeout.
    pub fn poll(&mut self, now: Instant) -> Option<Record> {
        let expired = self.pending.as_ref().is_some_and(|pending| {
            now.saturating_duration_since(pending.last_line_at) >= self.flush_timeout
        });
        if expired {
            self.pending.take().map(|pending| pending.record)
        } else {
            None
        }
    }

    /// When [`LineJoiner::poll`] would emit the pending record, if one is pending.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending
            .as_ref()
            .map(|pending| pending.last_line_at + self.flush_timeout)
    }

    /// Emits the pending record (end of stream).
    pub fn finish(&mut self) -> Option<Record> {
        self.pending.take().map(|pending| pending.record)
    }
}
