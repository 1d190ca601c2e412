//! Regular expressions with named captures.

use regex::Regex;

use super::{KeyKind, classify_key};
use crate::fields::FieldValue;
use crate::record::{Level, Record};

/// A parser that turns the named captures of a regular expression into string fields
/// (`(?P<status>\d{3})`); a capture named like a level or time key (`level`, `time`, …) also
/// sets the record's level or timestamp.
#[derive(Debug, Clone)]
pub struct RegexParser {
    regex: Regex,
    names: Vec<(usize, String)>,
}

impl RegexParser {
    /// A parser for `regex`; `None` capture names are ignored.
    pub fn new(regex: Regex) -> Self {
        let names = regex
            .capture_names()
            .enumerate()
            .filter_map(|(index, name)| name.map(|name| (index, name.to_string())))
            .collect();
        RegexParser { regex, names }
    }

    /// The expression.
    pub fn regex(&self) -> &Regex {
        &self.regex
    }

    /// Parses `record.line`: `false`, leaving the record a raw line, when the expression does
    /// not match.
    pub fn parse(&self, record: &mut Record) -> bool {
        let Some(captures) = self.regex.captures(&record.line) else {
            return false;
        };
        let mut level = None;
        let mut timestamp = None;
        let mut found = Vec::with_capacity(self.names.len());
        for (index, name) in &self.names {
            let Some(matched) = captures.get(*index) else {
                continue;
            };
            let text = matched.as_str();
            match classify_key(name) {
                KeyKind::Level if level.is_none() => level = Level::parse(text),
                KeyKind::Time if timestamp.is_none() => {
                    timestamp = super::parse_timestamp_ns(text);
                }
                _ => {}
            }
            found.push((name.clone(), text.to_string()));
        }
        let fields = record.fields_mut();
        for (name, text) in found {
            fields.insert(name, FieldValue::String(text));
        }
        if level.is_some() {
            record.level = level;
        }
        if let Some(timestamp_ns) = timestamp {
            record.timestamp_ns = timestamp_ns;
        }
        true
    }
}
