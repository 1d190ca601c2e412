//! Multi-document YAML with a stable key order, whatever order `serde_json` keeps maps in.

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;

/// Keys that lead a top-level object, in this order; the rest follow sorted.
const LEADING: [&str; 3] = ["apiVersion", "kind", "metadata"];

/// A JSON value serialised with sorted keys (and, at the top, [`LEADING`] first).
struct Sorted<'a> {
    value: &'a Value,
    top: bool,
}

impl Serialize for Sorted<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort_by_key(|k| {
                    let rank = if self.top {
                        LEADING.iter().position(|l| l == k).unwrap_or(LEADING.len())
                    } else {
                        0
                    };
                    (rank, k.as_str())
                });
                let mut out = serializer.serialize_map(Some(keys.len()))?;
                for key in keys {
                    out.serialize_entry(
                        key,
                        &Sorted {
                            value: &map[key],
                            top: false,
                        },
                    )?;
                }
                out.end()
            }
            Value::Array(items) => {
                let mut out = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    out.serialize_element(&Sorted {
                        value: item,
                        top: false,
                    })?;
                }
                out.end()
            }
            other => other.serialize(serializer),
        }
    }
}

/// Each value as a YAML document, separated by `---` lines.
pub(crate) fn to_yaml(values: impl Iterator<Item = Value>) -> String {
    let mut options = serde_saphyr::SerializerOptions::default();
    // Plain or quoted scalars only: long annotations stay on one line, as `kubectl` shows them.
    options.prefer_block_scalars = false;
    let mut out = String::new();
    for (i, value) in values.enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        let doc = Sorted {
            value: &value,
            top: true,
        };
        match serde_saphyr::to_string_with_options(&doc, options.clone()) {
            Ok(text) => out.push_str(&text),
            // A JSON value always has a YAML form; keep the output usable if not.
            Err(e) => out.push_str(&format!("# cannot render as YAML: {e}\n")),
        }
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}
