//! Parsers: turn a raw line into a level, a timestamp and structured fields.
//!
//! Every parser leaves a line it cannot parse as it is (a raw line is never lost), and never
//! panics on any input.

pub(crate) mod json;
mod logfmt;
mod multiline;
mod regex_parser;
mod scan;
mod time;

pub use json::parse_json;
pub use logfmt::parse_logfmt;
pub use multiline::{LineJoiner, MultilineConfig};
pub use regex_parser::RegexParser;
pub use time::parse_timestamp_ns;

/// What a key of a structured line means to the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// `level`, `lvl`, `severity`, `loglevel`.
    Level,
    /// `time`, `ts`, `timestamp`, `@timestamp`.
    Time,
    /// Anything else (including `msg`/`message`, which stay ordinary fields).
    Other,
}

/// Classifies a key, case-sensitively (the common keys are lower case).
pub(crate) fn classify_key(key: &str) -> KeyKind {
    match key {
        "level" | "lvl" | "severity" | "loglevel" | "log.level" => KeyKind::Level,
        "time" | "ts" | "timestamp" | "@timestamp" => KeyKind::Time,
        _ => KeyKind::Other,
    }
}
