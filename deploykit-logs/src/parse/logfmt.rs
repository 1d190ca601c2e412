//! logfmt: `key=value key2="quoted value" flag`.

use super::{KeyKind, classify_key};
use crate::fields::FieldValue;
use crate::record::{Level, Record};

/// Parses `record.line` as logfmt: every `key=value` (value bare, or double-quoted with `\"`
/// and `\\` escapes) becomes a string field, a bare `key` becomes `true`; `level`-like and
/// `time`-like keys also set the level and timestamp. Returns `false`, leaving the record a raw
/// line, when no `key=value` pair is found. An unterminated quote takes the rest of the line.
pub fn parse_logfmt(record: &mut Record) -> bool {
    let line = std::mem::take(&mut record.line);
    let mut pairs = 0usize;
    let bytes = line.as_bytes();
    let mut position = 0;
    {
        let fields = record.fields_raw_mut();
        fields.clear();
        while position < bytes.len() {
            while position < bytes.len() && bytes[position].is_ascii_whitespace() {
                position += 1;
            }
            let key_start = position;
            while position < bytes.len()
                && !bytes[position].is_ascii_whitespace()
                && bytes[position] != b'='
            {
                position += 1;
            }
            // Boundaries are at ASCII bytes, so slicing the `str` is always valid.
            let key = &line[key_start..position];
            if position < bytes.len() && bytes[position] == b'=' {
                position += 1;
                let value = if position < bytes.len() && bytes[position] == b'"' {
                    position += 1;
                    let mut value = String::new();
                    let mut chunk_start = position;
                    while position < bytes.len() && bytes[position] != b'"' {
                        if bytes[position] == b'\\' && position + 1 < bytes.len() {
                            value.push_str(&line[chunk_start..position]);
                            let escaped = bytes[position + 1];
                            match escaped {
                                b'n' => value.push('\n'),
                                b't' => value.push('\t'),
                                b'"' | b'\\' => value.push(escaped as char),
                                _ => {
                                    position += 1;
                                    chunk_start = position;
                                    continue;
                                }
                            }
                            position += 2;
                            chunk_start = position;
                        } else {
                            position += 1;
                        }
                    }
                    value.push_str(&line[chunk_start..position.min(bytes.len())]);
                    position = (position + 1).min(bytes.len());
                    value
                } else {
                    let value_start = position;
                    while position < bytes.len() && !bytes[position].is_ascii_whitespace() {
                        position += 1;
                    }
                    line[value_start..position].to_string()
                };
                if key.is_empty() {
                    continue;
                }
                pairs += 1;
                fields.push(key, FieldValue::String(value));
            } else if !key.is_empty() {
                fields.push(key, FieldValue::Bool(true));
            }
        }
    }
    record.line = line;
    if pairs == 0 {
        record.fields_raw_mut().clear();
        return false;
    }
    let mut level = None;
    let mut timestamp = None;
    for (key, value) in record.fields_raw_mut().iter() {
        let FieldValue::String(text) = value else {
            continue;
        };
        match classify_key(key) {
            KeyKind::Level if level.is_none() => level = Level::parse(text),
            KeyKind::Time if timestamp.is_none() => timestamp = super::parse_timestamp_ns(text),
            _ => {}
        }
    }
    if level.is_some() {
        record.level = level;
    }
    if let Some(timestamp_ns) = timestamp {
        record.timestamp_ns = timestamp_ns;
    }
    true
}
