//! Redaction: secret values (exact, with Aho-Corasick) and token patterns (regular expressions).

use aho_corasick::{AhoCorasick, MatchKind};
use deploykit_core::{Error, Result};
use regex::Regex;

use crate::fields::FieldValue;
use crate::record::{JsonOrigin, Record};

/// What replaces a redacted value.
pub const REDACTED: &str = "[REDACTED]";

/// Replaces secret values and token patterns by [`REDACTED`] in a record's line and in every
/// field (keys, string values, numbers, nested values).
#[derive(Debug, Clone)]
pub struct Redactor {
    secrets: Option<AhoCorasick>,
    patterns: Vec<TokenPattern>,
}

#[derive(Debug, Clone)]
struct TokenPattern {
    regex: Regex,
    /// Index of the `secret` capture group, if any (else the whole match is replaced).
    group: Option<usize>,
}

impl Redactor {
    /// A redactor for the exact `secrets` (empty ones are ignored; a secret is also found in
    /// its JSON-escaped form) and the token `patterns` (a capture group named `secret`, if
    /// present, is what is replaced).
    pub fn new<S: AsRef<str>>(
        secrets: impl IntoIterator<Item = S>,
        patterns: Vec<Regex>,
    ) -> Result<Self> {
        let mut needles: Vec<String> = Vec::new();
        for secret in secrets {
            let secret = secret.as_ref();
            if secret.is_empty() {
                continue;
            }
            needles.push(secret.to_string());
            let escaped = serde_json::to_string(secret).unwrap_or_default();
            let escaped = escaped
                .get(1..escaped.len().saturating_sub(1))
                .unwrap_or(secret);
            if escaped != secret {
                needles.push(escaped.to_string());
            }
        }
        let secrets = if needles.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&needles)
                    .map_err(|error| {
                        Error::invalid(
                            "secrets",
                            format!("cannot build the secret matcher: {error}"),
                        )
                    })?,
            )
        };
        let patterns = patterns
            .into_iter()
            .map(|regex| TokenPattern {
                group: regex
                    .capture_names()
                    .position(|name| name == Some("secret")),
                regex,
            })
            .collect();
        Ok(Redactor { secrets, patterns })
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_none() && self.patterns.is_empty()
    }

    /// Redacts `text`: the new text and the number of replacements, or `None` if nothing
    /// matched.
    pub fn redact_str(&self, text: &str) -> Option<(String, u64)> {
        let mut current: Option<String> = None;
        let mut count = 0;
        if let Some(secrets) = &self.secrets {
            let source = current.as_deref().unwrap_or(text);
            let mut out = String::new();
            let mut last = 0;
            for found in secrets.find_iter(source) {
                out.push_str(&source[last..found.start()]);
                out.push_str(REDACTED);
                last = found.end();
                count += 1;
            }
            if last > 0 {
                out.push_str(&source[last..]);
                current = Some(out);
            }
        }
        for pattern in &self.patterns {
            let source = current.as_deref().unwrap_or(text);
            let mut out = String::new();
            let mut last = 0;
            let mut hits = 0;
            for captures in pattern.regex.captures_iter(source) {
                let span = match pattern.group {
                    Some(group) => captures.get(group),
                    None => captures.get(0),
                };
                let Some(span) = span else { continue };
                if span.start() < last || span.is_empty() {
                    continue;
                }
                out.push_str(&source[last..span.start()]);
                out.push_str(REDACTED);
                last = span.end();
                hits += 1;
            }
            if hits > 0 {
                out.push_str(&source[last..]);
                current = Some(out);
                count += hits;
            }
        }
        current.map(|text| (text, count))
    }

    /// Whether `text` holds anything to redact.
    fn hits(&self, text: &str) -> bool {
        self.secrets
            .as_ref()
            .is_some_and(|secrets| secrets.is_match(text))
            || self
                .patterns
                .iter()
                .any(|pattern| pattern.regex.is_match(text))
    }

    /// Redacts the record's line and fields; returns the number of replacements.
    ///
    /// A JSON line whose fields were not extracted yet is only checked: if it holds anything
    /// to redact (or any escape, which could hide a secret), its fields are extracted and
    /// redacted and the line is rewritten from them. Replacements are counted once per
    /// occurrence in a field (key or value) and once per occurrence in a line that is not a
    /// JSON object.
    pub fn redact_record(&self, record: &mut Record) -> u64 {
        if self.is_empty() {
            return 0;
        }
        if record.json == JsonOrigin::Lazy {
            let escaped = self.secrets.is_some() && record.line.contains('\\');
            if !escaped && !self.hits(&record.line) {
                return 0;
            }
        }
        let json = record.is_json();
        let mut count = 0;
        if !json && let Some((line, hits)) = self.redact_str(&record.line) {
            record.line = line;
            count += hits;
        }
        let fields = record.fields_mut();
        for (key, value) in fields.entries_mut() {
            if let Some((redacted, hits)) = self.redact_str(key) {
                *key = redacted;
                count += hits;
            }
            count += self.redact_keyed_value(key, value);
        }
        if json {
            record.sync_json_line();
            // Anything left in the rewritten line (a secret spanning JSON syntax) goes too.
            if let Some((line, hits)) = self.redact_str(&record.line) {
                record.line = line;
                count += hits;
            }
        }
        count
    }

    /// Redacts a top-level field value; patterns also see it as `key=value`, so a key such as
    /// `password` marks its value as a secret.
    fn redact_keyed_value(&self, key: &str, value: &mut FieldValue) -> u64 {
        if let FieldValue::String(text) = value
            && !self.patterns.is_empty()
        {
            let keyed = format!("{key}={text}");
            if let Some((redacted, hits)) = self.redact_str(&keyed)
                && let Some(rest) = redacted.strip_prefix(&format!("{key}="))
            {
                *text = rest.to_string();
                return hits;
            }
        }
        self.redact_value(value)
    }

    fn redact_value(&self, value: &mut FieldValue) -> u64 {
        match value {
            FieldValue::String(text) => match self.redact_str(text) {
                Some((redacted, hits)) => {
                    *text = redacted;
                    hits
                }
                None => 0,
            },
            FieldValue::Number(number) => match self.redact_str(&number.to_string()) {
                Some((redacted, hits)) => {
                    *value = FieldValue::String(redacted);
                    hits
                }
                None => 0,
            },
            FieldValue::Array(items) => items.iter_mut().map(|item| self.redact_value(item)).sum(),
            FieldValue::Object(map) => {
                let mut count = 0;
                let entries = std::mem::take(map);
                for (key, mut item) in entries {
                    count += self.redact_value(&mut item);
                    let key = match self.redact_str(&key) {
                        Some((redacted, hits)) => {
                            count += hits;
                            redacted
                        }
                        None => key,
                    };
                    map.insert(key, item);
                }
                count
            }
            FieldValue::Bool(_) | FieldValue::Null => 0,
        }
    }
}
