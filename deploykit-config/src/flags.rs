//! `flags` in `deploykit.toml`: a flagd flag file beside it (`flags = "flags.json"`) or the
//! same document inline (`[flags.flags.<key>]`, `[flags."$evaluators".<name>]`,
//! `[flags.metadata]`). Both load through [`FlagSet::from_value`], so they are validated
//! alike; a flag's `environments` must name environments of the configuration.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use toml::Spanned;

use super::Located;
use deploykit_core::model::EnvironmentSpec;
use deploykit_core::{Error, Result};
use deploykit_flags::FlagSet;

/// Nesting past this in a `[flags]` table is refused before it is converted.
const MAX_DEPTH: usize = 128;

pub(super) fn load(
    at: &Located<'_>,
    flags: &Spanned<toml::Value>,
    environments: &BTreeMap<String, EnvironmentSpec>,
) -> Result<FlagSet> {
    let span = flags.span();
    let (set, place) = match flags.get_ref() {
        toml::Value::String(name) => {
            let path = Path::new(at.file)
                .parent()
                .unwrap_or(Path::new(""))
                .join(name);
            (FlagSet::load(&path)?, format!("{}: ", path.display()))
        }
        table @ toml::Value::Table(_) => {
            let doc = json(table, "flags", 0)
                .map_err(|(path, reason)| at.error(span.clone(), &path, reason))?;
            let set = FlagSet::from_value(&doc).map_err(|e| match e {
                Error::InvalidSpec { field, reason } => {
                    at.error(span.clone(), &format!("flags.{field}"), reason)
                }
                other => other,
            })?;
            let (line, column) = super::position(at.text, span.start);
            (set, format!("{}:{line}:{column}: flags.", at.file))
        }
        other => {
            return Err(at.error(
                span,
                "flags",
                format!(
                    "expected a flag file (`flags = \"flags.json\"`) or a [flags] table, found \
                     a {}",
                    other.type_str()
                ),
            ));
        }
    };
    for (field, env) in set.environment_overrides() {
        if !environments.contains_key(env) {
            return Err(Error::invalid(
                format!("{place}{field}"),
                format!("{} defines no environment {env:?}", at.file),
            ));
        }
    }
    Ok(set)
}

/// A TOML value as JSON; TOML's dates have no JSON form.
fn json(v: &toml::Value, path: &str, depth: usize) -> std::result::Result<Value, (String, String)> {
    if depth > MAX_DEPTH {
        return Err((
            path.into(),
            format!("nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    Ok(match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .ok_or_else(|| {
                (
                    path.to_string(),
                    format!("{f} is not a number JSON can hold"),
                )
            })?,
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => {
            return Err((
                path.into(),
                format!("{d}: a date has no place in a flag file"),
            ));
        }
        toml::Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, x)| json(x, &format!("{path}[{i}]"), depth + 1))
                .collect::<std::result::Result<_, _>>()?,
        ),
        toml::Value::Table(t) => Value::Object(
            t.iter()
                .map(|(k, x)| {
                    Ok::<_, (String, String)>((
                        k.clone(),
                        json(x, &format!("{path}.{k}"), depth + 1)?,
                    ))
                })
                .collect::<std::result::Result<_, _>>()?,
        ),
    })
}
