//! The lines of an instance's log file, in the container runtime interface's log format (the
//! one the kubelet writes under `/var/log/pods`, so tools that read those read these):
//!
//! ```text
//! 2026-12-05T15:00:00.123456789Z stdout F listening on :8080
//! 2026-12-05T15:00:00.123460000Z stderr P the first 16 KiB of a very long line…
//! 2026-12-05T15:00:00.123460000Z stderr F …and the rest of it
//! ```
//!
//! `F` ends a line, `P` is a part of a line that the next record of the same stream goes on.

use std::time::{SystemTime, UNIX_EPOCH};

use deploykit_core::time::civil_from_days;
use deploykit_logs::{Stream, parse_timestamp_ns};

/// Lines longer than this are written as several `P` records and a last `F` (the kubelet's
/// bound too), so no record of the file is unbounded.
pub(crate) const MAX_RECORD: usize = 16 * 1024;

/// One record of a log file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CriLine<'a> {
    /// When the supervisor read it, in nanoseconds since the Unix epoch.
    pub(crate) timestamp_ns: i64,
    pub(crate) stream: Stream,
    /// A part of a line that the next record of the stream continues (`P`).
    pub(crate) partial: bool,
    pub(crate) text: &'a str,
}

/// Parses one line of a log file (without its `\n`); `None` if it is not in the format (a
/// file written by something else, or by an older deploykit: raw output).
pub(crate) fn parse(line: &str) -> Option<CriLine<'_>> {
    let (time, rest) = line.split_once(' ')?;
    let (stream, rest) = rest.split_once(' ')?;
    let (tag, text) = match rest.split_once(' ') {
        Some((tag, text)) => (tag, text),
        None => (rest, ""),
    };
    let stream = match stream {
        "stdout" => Stream::Stdout,
        "stderr" => Stream::Stderr,
        _ => return None,
    };
    let partial = match tag {
        "F" => false,
        "P" => true,
        _ => return None,
    };
    Some(CriLine {
        timestamp_ns: parse_timestamp_ns(time)?,
        stream,
        partial,
        text,
    })
}

/// Nanoseconds since the Unix epoch, now (the time the capture stamps lines with).
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Appends `timestamp stream tag ` to `out` (RFC 3339 in UTC with nanoseconds).
pub(crate) fn write_prefix(out: &mut Vec<u8>, timestamp_ns: i64, stream: Stream, partial: bool) {
    use std::io::Write as _;
    let secs = timestamp_ns.div_euclid(1_000_000_000);
    let nanos = timestamp_ns.rem_euclid(1_000_000_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let (y, mo, d) = civil_from_days(days);
    let tag = if partial { 'P' } else { 'F' };
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{nanos:09}Z {} {tag} ",
        stream.as_str()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        for (ts, stream, partial, text) in [
            (
                1_764_946_800_123_456_789,
                Stream::Stdout,
                false,
                "listening on :8080",
            ),
            (1_764_946_800_000_000_000, Stream::Stderr, true, "a part"),
            (0, Stream::Stdout, false, ""),
            (
                1_764_946_800_000_000_001,
                Stream::Stdout,
                false,
                "two  spaces and ünïcode",
            ),
        ] {
            let mut out = Vec::new();
            write_prefix(&mut out, ts, stream, partial);
            out.extend_from_slice(text.as_bytes());
            let line = String::from_utf8(out).unwrap();
            assert_eq!(
                parse(&line),
                Some(CriLine {
                    timestamp_ns: ts,
                    stream,
                    partial,
                    text
                }),
                "{line}"
            );
        }
        assert_eq!(parse("plain output of an old file"), None);
        assert_eq!(parse("2026-12-05T15:00:00Z stdin F x"), None);
        assert_eq!(parse("2026-12-05T15:00:00Z stdout X x"), None);
    }
}
