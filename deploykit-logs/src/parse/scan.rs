//! A validating JSON scanner for one line: checks the whole line is one JSON object (the
//! grammar of RFC 8259, as `serde_json` accepts it) and picks the level and timestamp of its
//! top-level members, without building anything.
//!
//! It is the hot path of every JSON log (millions of lines, most of them dropped by a level
//! filter): one pass over the bytes, no allocation unless a key or value uses escapes.

use super::{KeyKind, classify_key};
use crate::record::Level;

/// Every byte 0x01 / 0x80, for the eight-bytes-at-a-time string scan ("has a zero byte":
/// `(v - ONES) & !v & HIGHS`, exact as to whether one exists).
const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Nesting deeper than this is refused (as `serde_json`'s recursion limit does).
const MAX_DEPTH: usize = 128;

/// The level and timestamp of a line that is a valid JSON object.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Probe {
    pub(crate) level: Option<Level>,
    pub(crate) timestamp_ns: Option<i64>,
}

/// Scans `line`: `None` unless it is exactly one JSON object (surrounding whitespace allowed).
pub(crate) fn scan_object(line: &str) -> Option<Probe> {
    match scan_object_until(line, &|_| false) {
        Scan::Object(probe) => Some(probe),
        Scan::NotObject | Scan::Stopped => None,
    }
}

/// What [`scan_object_until`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scan {
    /// The line is one JSON object.
    Object(Probe),
    /// It is not.
    NotObject,
    /// `stop` returned true for the first top-level level found: the rest was not scanned.
    Stopped,
}

/// Like [`scan_object`], but stops as soon as the first top-level level is read and `stop`
/// returns true for it (what a level filter that drops the record either way uses).
pub(crate) fn scan_object_until(line: &str, stop: &dyn Fn(Level) -> bool) -> Scan {
    let mut scanner = Scanner {
        bytes: line.as_bytes(),
        text: line,
        position: 0,
        stop,
        stopped: false,
    };
    scanner.whitespace();
    let probe = scanner.object(0, true);
    if scanner.stopped {
        return Scan::Stopped;
    }
    let Some(probe) = probe else {
        return Scan::NotObject;
    };
    scanner.whitespace();
    if scanner.position == scanner.bytes.len() {
        Scan::Object(probe)
    } else {
        Scan::NotObject
    }
}

struct Scanner<'a> {
    bytes: &'a [u8],
    text: &'a str,
    position: usize,
    stop: &'a dyn Fn(Level) -> bool,
    stopped: bool,
}

/// A scanned string: its content's byte range and whether it holds escapes.
struct Span {
    start: usize,
    end: usize,
    escaped: bool,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.position).copied()
    }

    fn whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.position += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        if self.peek() == Some(byte) {
            self.position += 1;
            Some(())
        } else {
            None
        }
    }

    /// `{ members }`; at the top level, also classifies keys and reads level and time.
    fn object(&mut self, depth: usize, top: bool) -> Option<Probe> {
        if depth >= MAX_DEPTH {
            return None;
        }
        self.expect(b'{')?;
        let mut probe = Probe::default();
        self.whitespace();
        if self.peek() == Some(b'}') {
            self.position += 1;
            return Some(probe);
        }
        loop {
            self.whitespace();
            let key = self.string()?;
            self.whitespace();
            self.expect(b':')?;
            self.whitespace();
            let kind = if top {
                self.classify(&key)
            } else {
                KeyKind::Other
            };
            let value_start = self.position;
            let value_kind = self.value(depth + 1)?;
            match kind {
                KeyKind::Level if probe.level.is_none() => {
                    probe.level = self.level_of(value_start, value_kind);
                    if probe.level.is_some_and(|level| (self.stop)(level)) {
                        self.stopped = true;
                        return None;
                    }
                }
                KeyKind::Time if probe.timestamp_ns.is_none() => {
                    probe.timestamp_ns = self.time_of(value_start, value_kind);
                }
                _ => {}
            }
            self.whitespace();
            match self.peek() {
                Some(b',') => self.position += 1,
                Some(b'}') => {
                    self.position += 1;
                    return Some(probe);
                }
                _ => return None,
            }
        }
    }

    fn classify(&self, key: &Span) -> KeyKind {
        if key.escaped {
            match self.decoded(key) {
                Some(text) => classify_key(&text),
                None => KeyKind::Other,
            }
        } else {
            classify_key(&self.text[key.start..key.end])
        }
    }

    /// The text of an escaped string, decoded.
    fn decoded(&self, span: &Span) -> Option<String> {
        serde_json::from_str(&self.text[span.start - 1..span.end + 1]).ok()
    }

    fn level_of(&self, start: usize, kind: ValueKind) -> Option<Level> {
        match kind {
            ValueKind::String(span) if span.escaped => Level::parse(&self.decoded(&span)?),
            ValueKind::String(span) => Level::parse(&self.text[span.start..span.end]),
            ValueKind::Number => {
                let text = &self.text[start..self.position];
                match text.parse::<i64>() {
                    Ok(number) => Level::from_number(number),
                    Err(_) => Level::from_number(text.parse::<f64>().ok()? as i64),
                }
            }
            ValueKind::Other => None,
        }
    }

    fn time_of(&self, start: usize, kind: ValueKind) -> Option<i64> {
        match kind {
            ValueKind::String(span) if span.escaped => {
                super::parse_timestamp_ns(&self.decoded(&span)?)
            }
            ValueKind::String(span) => super::parse_timestamp_ns(&self.text[span.start..span.end]),
            ValueKind::Number => super::parse_timestamp_ns(&self.text[start..self.position]),
            ValueKind::Other => None,
        }
    }

    fn value(&mut self, depth: usize) -> Option<ValueKind> {
        match self.peek()? {
            b'"' => self.string().map(ValueKind::String),
            b'{' => self.object(depth, false).map(|_| ValueKind::Other),
            b'[' => self.array(depth).map(|_| ValueKind::Other),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number().map(|_| ValueKind::Number),
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<ValueKind> {
        if self.bytes[self.position..].starts_with(word) {
            self.position += word.len();
            Some(ValueKind::Other)
        } else {
            None
        }
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        if depth >= MAX_DEPTH {
            return None;
        }
        self.expect(b'[')?;
        self.whitespace();
        if self.peek() == Some(b']') {
            self.position += 1;
            return Some(());
        }
        loop {
            self.whitespace();
            self.value(depth + 1)?;
            self.whitespace();
            match self.peek() {
                Some(b',') => self.position += 1,
                Some(b']') => {
                    self.position += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.position += 1;
        }
        match self.peek()? {
            b'0' => self.position += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.position += 1;
            if !self.peek()?.is_ascii_digit() {
                return None;
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.position += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.position += 1;
            }
            if !self.peek()?.is_ascii_digit() {
                return None;
            }
            self.digits();
        }
        Some(())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.position += 1;
        }
    }

    /// A string: no raw control character, only valid escapes, surrogates paired.
    fn string(&mut self) -> Option<Span> {
        self.expect(b'"')?;
        let start = self.position;
        let mut escaped = false;
        loop {
            // The tight loops: eight plain bytes at a time (no quote, backslash or control
            // byte among them), then byte by byte.
            while let Some(chunk) = self.bytes.get(self.position..self.position + 8) {
                let word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
                let quote = word ^ (ONES * u64::from(b'"'));
                let backslash = word ^ (ONES * u64::from(b'\\'));
                let special = (quote.wrapping_sub(ONES) & !quote)
                    | (backslash.wrapping_sub(ONES) & !backslash)
                    | (word.wrapping_sub(ONES * 0x20) & !word);
                if special & HIGHS != 0 {
                    break;
                }
                self.position += 8;
            }
            while let Some(&byte) = self.bytes.get(self.position) {
                if byte == b'"' || byte == b'\\' || byte < 0x20 {
                    break;
                }
                self.position += 1;
            }
            match self.peek()? {
                b'"' => {
                    let end = self.position;
                    self.position += 1;
                    return Some(Span {
                        start,
                        end,
                        escaped,
                    });
                }
                b'\\' => {
                    escaped = true;
                    self.position += 1;
                    match self.peek()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                            self.position += 1;
                        }
                        b'u' => {
                            self.position += 1;
                            let unit = self.hex4()?;
                            if (0xDC00..0xE000).contains(&unit) {
                                return None;
                            }
                            if (0xD800..0xDC00).contains(&unit) {
                                self.expect(b'\\')?;
                                self.expect(b'u')?;
                                let low = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&low) {
                                    return None;
                                }
                            }
                        }
                        _ => return None,
                    }
                }
                _ => return None,
            }
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.bytes.get(self.position..self.position + 4)?;
        let mut value = 0;
        for &digit in digits {
            value = value * 16 + char::from(digit).to_digit(16)?;
        }
        self.position += 4;
        Some(value)
    }
}

enum ValueKind {
    String(Span),
    Number,
    Other,
}
