//! JSON lines: one object per line.
//!
//! Parsing validates the whole line and takes the level and timestamp without allocating
//! (see `scan`); the other fields are extracted only when a later stage asks for them.

use super::scan::Scan;
use crate::record::{Level, Record};

/// Parses `record.line` as a JSON object: sets the level (from `level`, `lvl`, `severity`,
/// `loglevel`; text or pino/bunyan numbers) and the timestamp (from `time`, `ts`,
/// `timestamp`, `@timestamp`; RFC 3339 or epoch numbers) and makes the object's members the
/// record's fields. Returns `false`, leaving the record a raw line, when the line is not a JSON
/// object (garbage, an array, a number, truncated JSON…).
pub fn parse_json(record: &mut Record) -> bool {
    let Some(probe) = super::scan::scan_object(&record.line) else {
        return false;
    };
    apply(record, probe);
    true
}

/// What [`parse_json_unless`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gated {
    /// Parsed (or left a raw line), as [`parse_json`] does.
    Done,
    /// `drop` said the record's level drops it: the rest of the line was not looked at.
    Dropped,
}

/// [`parse_json`] for a record that a level filter drops unless its line's level keeps it:
/// stops at the first level for which `drop` is true.
pub(crate) fn parse_json_unless(record: &mut Record, drop: &dyn Fn(Level) -> bool) -> Gated {
    match super::scan::scan_object_until(&record.line, drop) {
        Scan::Stopped => Gated::Dropped,
        Scan::NotObject => Gated::Done,
        Scan::Object(probe) => {
            apply(record, probe);
            Gated::Done
        }
    }
}

fn apply(record: &mut Record, probe: super::scan::Probe) {
    if let Some(level) = probe.level {
        record.level = Some(level);
    }
    if let Some(timestamp_ns) = probe.timestamp_ns {
        record.timestamp_ns = timestamp_ns;
    }
    record.mark_lazy_json();
}
