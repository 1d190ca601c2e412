//! A flagd flag document to a [`FlagSet`] and back. The one place a flag file is validated,
//! whether it came from a JSON file, a `[flags]` table in `deploykit.toml` or a saved set.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::logic::{self, Compiler, Expr};
use super::{Flag, FlagSet, Override, key};
use deploykit_core::{Error, Result};

const ROOT_KEYS: &str = "`flags`, `$evaluators`, `metadata` and `$schema`";
const FLAG_KEYS: &str =
    "`state`, `variants`, `defaultVariant`, `targeting`, `metadata` and deploykit's `environments`";
const OVERRIDE_KEYS: &str = "`state`, `defaultVariant` and `targeting`";

fn object<'a>(v: &'a Value, path: &str, what: &str) -> Result<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| Error::invalid(path, format!("expected {what}, found {v}")))
}

fn unknown(path: &str, name: &str, allowed: &str) -> Error {
    Error::invalid(
        key(path, name),
        format!("unknown key {name:?}; allowed here: {allowed}"),
    )
}

pub(super) fn parse(doc: &Value) -> Result<FlagSet> {
    let root = object(doc, "flags", "a flag file: {\"flags\": {...}}")?;
    let Some(flags) = root.get("flags") else {
        return Err(Error::invalid(
            "flags",
            "missing: a flag file is flagd's format, {\"flags\": {\"<key>\": {\"state\": ..., \
             \"variants\": ..., \"defaultVariant\": ...}}} (deploykit's earlier format, with \
             flags at the top and `default_variant`, is no longer read)",
        ));
    };
    for name in root.keys() {
        if !["flags", "$evaluators", "metadata", "$schema"].contains(&name.as_str()) {
            return Err(unknown("", name, ROOT_KEYS));
        }
    }
    let mut evaluators = BTreeMap::new();
    if let Some(raw) = root.get("$evaluators") {
        for (name, rule) in object(raw, "$evaluators", "an object of shared rules")? {
            let at = key("$evaluators", name);
            if rule.as_object().is_some_and(Map::is_empty) {
                return Err(Error::invalid(at, "a shared evaluator is a rule, not {}"));
            }
            let expr = Compiler { evaluators: None }.compile(rule, &at)?;
            evaluators.insert(name.clone(), Arc::new(expr));
        }
    }
    let metadata = match root.get("metadata") {
        Some(m) => metadata(m, "metadata")?,
        None => BTreeMap::new(),
    };
    let compiler = Compiler {
        evaluators: Some(&evaluators),
    };
    let mut set = BTreeMap::new();
    match flags {
        Value::Object(map) => {
            for (k, raw) in map {
                set.insert(k.clone(), flag(raw, &key("flags", k), &compiler, false)?);
            }
        }
        // flagd's daemon also reads flags as an array of objects with a `key`.
        Value::Array(items) => {
            for (i, raw) in items.iter().enumerate() {
                let at = super::index("flags", i);
                let k = raw
                    .get("key")
                    .and_then(Value::as_str)
                    .filter(|k| !k.is_empty())
                    .ok_or_else(|| {
                        Error::invalid(key(&at, "key"), "a flag in a list needs its `key`")
                    })?;
                if set.contains_key(k) {
                    return Err(Error::invalid(
                        key(&at, "key"),
                        format!("flag {k:?} is defined twice"),
                    ));
                }
                set.insert(k.to_string(), flag(raw, &at, &compiler, true)?);
            }
        }
        other => {
            return Err(Error::invalid(
                "flags",
                format!("expected an object of flags by key, found {other}"),
            ));
        }
    }
    if let Some(k) = set.keys().find(|k| k.is_empty()) {
        return Err(Error::invalid(key("flags", k), "a flag key is not empty"));
    }
    Ok(FlagSet {
        flags: set,
        evaluators,
        metadata,
    })
}

fn metadata(v: &Value, path: &str) -> Result<BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    for (k, v) in object(v, path, "an object of metadata")? {
        if !(v.is_string() || v.is_number() || v.is_boolean()) {
            return Err(Error::invalid(
                key(path, k),
                format!("metadata values are strings, numbers or booleans, found {v}"),
            ));
        }
        out.insert(k.clone(), v.clone());
    }
    Ok(out)
}

fn variant_of(v: &Value, path: &str, variants: &BTreeMap<String, Value>) -> Result<Option<String>> {
    match v {
        Value::Null => Ok(None),
        Value::String(name) if variants.contains_key(name) => Ok(Some(name.clone())),
        other => {
            let names: Vec<&String> = variants.keys().collect();
            Err(Error::invalid(
                path,
                format!("{other} is not one of the flag's variants {names:?}"),
            ))
        }
    }
}

/// A targeting rule: `{}` is no targeting.
fn targeting(
    v: &Value,
    path: &str,
    compiler: &Compiler<'_>,
    variants: &BTreeMap<String, Value>,
) -> Result<Option<Expr>> {
    if v.as_object().is_some_and(Map::is_empty) {
        return Ok(None);
    }
    let expr = compiler.compile(v, path)?;
    logic::check_results(&expr, variants, path)?;
    Ok(Some(expr))
}

fn flag(raw: &Value, path: &str, compiler: &Compiler<'_>, listed: bool) -> Result<Flag> {
    let map = object(raw, path, "a flag: {\"state\", \"variants\", ...}")?;
    for name in map.keys() {
        let known = [
            "state",
            "variants",
            "defaultVariant",
            "targeting",
            "metadata",
            "environments",
        ]
        .contains(&name.as_str())
            || (listed && name == "key");
        if !known {
            return Err(unknown(path, name, FLAG_KEYS));
        }
    }
    let enabled = match map.get("state") {
        Some(Value::String(s)) if s == "ENABLED" => true,
        Some(Value::String(s)) if s == "DISABLED" => false,
        Some(other) => {
            return Err(Error::invalid(
                key(path, "state"),
                format!("{other}: expected \"ENABLED\" or \"DISABLED\""),
            ));
        }
        None => {
            return Err(Error::invalid(
                key(path, "state"),
                "missing: \"ENABLED\" or \"DISABLED\"",
            ));
        }
    };
    let variants_at = key(path, "variants");
    let Some(raw_variants) = map.get("variants") else {
        return Err(Error::invalid(
            variants_at,
            "missing: a flag needs variants",
        ));
    };
    let mut variants = BTreeMap::new();
    let mut kind: Option<(&str, &String)> = None;
    for (name, value) in object(raw_variants, &variants_at, "an object of variants")? {
        let at = key(&variants_at, name);
        if name.is_empty() {
            return Err(Error::invalid(at, "a variant's name is not empty"));
        }
        let this = match value {
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Object(_) => "an object",
            other => {
                return Err(Error::invalid(
                    at,
                    format!("{other}: a variant is a boolean, a number, a string or an object"),
                ));
            }
        };
        match kind {
            Some((first, first_name)) if first != this => {
                return Err(Error::invalid(
                    at,
                    format!(
                        "is {this} and variant {first_name:?} is {first}: all variants of a \
                         flag have the same type"
                    ),
                ));
            }
            None => kind = Some((this, name)),
            _ => {}
        }
        variants.insert(name.clone(), value.clone());
    }
    if variants.is_empty() {
        return Err(Error::invalid(variants_at, "a flag needs variants"));
    }
    let default_variant = match map.get("defaultVariant") {
        Some(v) => variant_of(v, &key(path, "defaultVariant"), &variants)?,
        None => None,
    };
    let targeting_rule = match map.get("targeting") {
        Some(v) => targeting(v, &key(path, "targeting"), compiler, &variants)?,
        None => None,
    };
    let flag_metadata = match map.get("metadata") {
        Some(m) => metadata(m, &key(path, "metadata"))?,
        None => BTreeMap::new(),
    };
    let mut environments = BTreeMap::new();
    if let Some(raw) = map.get("environments") {
        let envs_at = key(path, "environments");
        for (env, raw) in object(raw, &envs_at, "an object of changes by environment")? {
            let at = key(&envs_at, env);
            if env.is_empty() {
                return Err(Error::invalid(at, "an environment's name is not empty"));
            }
            let o = object(raw, &at, "the flag's changes in this environment")?;
            let mut change = Override::default();
            for (name, v) in o {
                match name.as_str() {
                    "state" if v == "DISABLED" => change.disabled = true,
                    "state" => {
                        return Err(Error::invalid(
                            key(&at, "state"),
                            format!(
                                "{v}: an environment can only disable a flag (\"DISABLED\"); \
                                 the flag's own state enables it"
                            ),
                        ));
                    }
                    "defaultVariant" => {
                        change.default_variant =
                            variant_of(v, &key(&at, "defaultVariant"), &variants)?;
                        if change.default_variant.is_none() {
                            return Err(Error::invalid(
                                key(&at, "defaultVariant"),
                                "an environment's default variant names a variant",
                            ));
                        }
                    }
                    "targeting" => {
                        change.targeting =
                            Some(targeting(v, &key(&at, "targeting"), compiler, &variants)?);
                    }
                    other => return Err(unknown(&at, other, OVERRIDE_KEYS)),
                }
            }
            environments.insert(env.clone(), change);
        }
    }
    Ok(Flag {
        enabled,
        variants,
        default_variant,
        targeting: targeting_rule,
        metadata: flag_metadata,
        environments,
    })
}

fn metadata_json(m: &BTreeMap<String, Value>) -> Value {
    Value::Object(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

pub(super) fn save(set: &FlagSet) -> Value {
    let mut flags = Map::new();
    for (k, f) in &set.flags {
        let mut m = Map::new();
        let state = if f.enabled { "ENABLED" } else { "DISABLED" };
        m.insert("state".into(), state.into());
        m.insert("variants".into(), metadata_json(&f.variants));
        if let Some(d) = &f.default_variant {
            m.insert("defaultVariant".into(), d.as_str().into());
        }
        if let Some(t) = &f.targeting {
            m.insert("targeting".into(), logic::to_json(t));
        }
        if !f.metadata.is_empty() {
            m.insert("metadata".into(), metadata_json(&f.metadata));
        }
        if !f.environments.is_empty() {
            let mut envs = Map::new();
            for (env, o) in &f.environments {
                let mut e = Map::new();
                if o.disabled {
                    e.insert("state".into(), "DISABLED".into());
                }
                if let Some(d) = &o.default_variant {
                    e.insert("defaultVariant".into(), d.as_str().into());
                }
                if let Some(t) = &o.targeting {
                    let rule = t.as_ref().map_or(Value::Object(Map::new()), logic::to_json);
                    e.insert("targeting".into(), rule);
                }
                envs.insert(env.clone(), Value::Object(e));
            }
            m.insert("environments".into(), Value::Object(envs));
        }
        flags.insert(k.clone(), Value::Object(m));
    }
    let mut root = Map::new();
    root.insert("flags".into(), Value::Object(flags));
    if !set.evaluators.is_empty() {
        let evaluators = set
            .evaluators
            .iter()
            .map(|(k, e)| (k.clone(), logic::to_json(e)))
            .collect();
        root.insert("$evaluators".into(), Value::Object(evaluators));
    }
    if !set.metadata.is_empty() {
        root.insert("metadata".into(), metadata_json(&set.metadata));
    }
    Value::Object(root)
}
