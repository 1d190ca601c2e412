//! Structured fields: an insertion-ordered map of names to JSON values, read from and
//! written as JSON.

use std::fmt;

use serde::Deserializer as _;
use serde::de::{MapAccess, Visitor};

/// A field's value: any JSON value.
pub type FieldValue = serde_json::Value;

/// Fields of a record, in the order they were found (or added). Lookups are linear: records
/// carry a handful of fields, for which a vector beats a hash map.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fields {
    entries: Vec<(String, FieldValue)>,
}

impl Fields {
    /// No fields.
    pub fn new() -> Self {
        Fields::default()
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is no field.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Removes every field, keeping the capacity.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// The value of `name`, if present (the first one when a line repeated a key).
    pub fn get(&self, name: &str) -> Option<&FieldValue> {
        self.entries
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }

    /// Sets `name` to `value`: replaces an existing value in place, else appends.
    pub fn insert(&mut self, name: impl Into<String>, value: FieldValue) {
        let name = name.into();
        match self.entries.iter_mut().find(|(key, _)| *key == name) {
            Some((_, slot)) => *slot = value,
            None => self.entries.push((name, value)),
        }
    }

    /// Appends `name` = `value` without looking for an existing one (parsers keep repeated
    /// keys as they appear).
    pub fn push(&mut self, name: impl Into<String>, value: FieldValue) {
        self.entries.push((name.into(), value));
    }

    /// Removes `name` (every occurrence), returning the first value.
    pub fn remove(&mut self, name: &str) -> Option<FieldValue> {
        let position = self.entries.iter().position(|(key, _)| key == name)?;
        let (_, value) = self.entries.remove(position);
        self.entries.retain(|(key, _)| key != name);
        Some(value)
    }

    /// Renames `from` to `to`, keeping its position; an existing `to` is replaced. Returns
    /// whether `from` existed.
    pub fn rename(&mut self, from: &str, to: &str) -> bool {
        let Some(position) = self.entries.iter().position(|(key, _)| key == from) else {
            return false;
        };
        self.entries.retain(|(key, _)| key != to || key == from);
        let position = self
            .entries
            .iter()
            .position(|(key, _)| key == from)
            .unwrap_or(position);
        self.entries[position].0 = to.to_string();
        true
    }

    /// The fields in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &FieldValue)> {
        self.entries
            .iter()
            .map(|(key, value)| (key.as_str(), value))
    }

    /// The fields in order, values mutable.
    pub(crate) fn entries_mut(&mut self) -> &mut Vec<(String, FieldValue)> {
        &mut self.entries
    }

    /// Approximate heap memory held.
    pub(crate) fn approx_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<(String, FieldValue)>()
            + self
                .entries
                .iter()
                .map(|(key, value)| key.capacity() + value_bytes(value))
                .sum::<usize>()
    }

    /// Appends the fields as one JSON object to `out`.
    pub(crate) fn write_json_object(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        for (index, (key, value)) in self.entries.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            write_json_string(out, key);
            out.push(b':');
            // Writing a Value to a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, value);
        }
        out.push(b'}');
    }
}

fn value_bytes(value: &FieldValue) -> usize {
    match value {
        FieldValue::String(text) => text.capacity() + 24,
        FieldValue::Array(items) => 24 + items.iter().map(value_bytes).sum::<usize>(),
        FieldValue::Object(map) => {
            24 + map
                .iter()
                .map(|(key, value)| key.capacity() + 48 + value_bytes(value))
                .sum::<usize>()
        }
        _ => 16,
    }
}

impl<'de> serde::Deserialize<'de> for Fields {
    /// A JSON object, its members kept in order.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(FieldsVisitor)
    }
}

/// The members of a JSON object line, in order; `None` if the line is not an object.
pub(crate) fn object_fields(line: &str) -> Option<Fields> {
    let mut deserializer = serde_json::Deserializer::from_str(line);
    let fields = deserializer.deserialize_map(FieldsVisitor).ok()?;
    deserializer.end().ok()?;
    Some(fields)
}

/// Collects an object's members in order (nested objects become `serde_json` maps).
struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        let mut fields = Fields::new();
        while let Some((key, value)) = map.next_entry::<String, FieldValue>()? {
            fields.push(key, value);
        }
        Ok(fields)
    }
}

/// Appends `text` as a JSON string literal to `out`.
pub(crate) fn write_json_string(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    // Fast path: nothing to escape.
    if !bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    // serde_json escapes exactly as JSON requires; writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}
