//! JSON helpers: merge patches, and the field ownership of server-side apply (which field
//! manager owns which leaf, as `metadata.managedFields` reports it).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

pub(super) type FieldPath = Vec<String>;

#[derive(Clone, Debug)]
pub(super) struct Manager {
    pub(super) apply: bool,
    pub(super) api_version: String,
    pub(super) time: String,
    pub(super) fields: BTreeSet<FieldPath>,
}

pub(super) fn get_path<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, seg| v.get(seg))
}

pub(super) fn meta_str<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    v.get("metadata")?.get(field)?.as_str()
}

pub(super) fn metadata_mut(v: &mut Value) -> &mut Map<String, Value> {
    let obj = v.as_object_mut().expect("objects are JSON objects");
    let meta = obj.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    meta.as_object_mut().expect("metadata is an object")
}

/// RFC 7386 JSON merge patch.
pub(super) fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("just made an object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Removes the leaf at `path`, and nested objects left empty by it (top-level fields such as
/// `spec` stay).
pub(super) fn remove_path(v: &mut Value, path: &[String]) {
    fn walk(v: &mut Value, path: &[String], depth: usize) {
        match path {
            [] => {}
            [last] => {
                if let Some(o) = v.as_object_mut() {
                    o.remove(last);
                }
            }
            [first, rest @ ..] => {
                let Some(child) = v.get_mut(first) else {
                    return;
                };
                walk(child, rest, depth + 1);
                if depth > 0
                    && child.as_object().is_some_and(Map::is_empty)
                    && let Some(o) = v.as_object_mut()
                {
                    o.remove(first);
                }
            }
        }
    }
    walk(v, path, 0);
}

/// The field paths a manager can own in `v`: leaves (non-objects and empty objects), outside
/// the object's identity and server-set metadata, and outside `status`.
pub(super) fn owned_leaves(v: &Value) -> BTreeSet<FieldPath> {
    fn walk(v: &Value, prefix: &mut Vec<String>, out: &mut BTreeSet<FieldPath>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, child) in m {
                    prefix.push(k.clone());
                    walk(child, prefix, out);
                    prefix.pop();
                }
            }
            Value::Null => {}
            _ => {
                out.insert(prefix.clone());
            }
        }
    }
    let mut out = BTreeSet::new();
    let Some(obj) = v.as_object() else {
        return out;
    };
    for (k, child) in obj {
        match k.as_str() {
            "apiVersion" | "kind" | "status" => {}
            "metadata" => {
                if let Some(meta) = child.as_object() {
                    for field in ["labels", "annotations", "finalizers", "ownerReferences"] {
                        if let Some(c) = meta.get(field) {
                            walk(c, &mut vec!["metadata".into(), field.into()], &mut out);
                        }
                    }
                }
            }
            _ => walk(child, &mut vec![k.clone()], &mut out),
        }
    }
    out
}

/// The paths in `set` that overlap `path` (its ancestors, itself, its descendants), without
/// scanning the whole set.
pub(super) fn overlapping<'a>(set: &'a BTreeSet<FieldPath>, path: &[String]) -> Vec<&'a FieldPath> {
    let mut out: Vec<&FieldPath> = (1..path.len())
        .filter_map(|i| set.get(&path[..i].to_vec()))
        .collect();
    out.extend(
        set.range(path.to_vec()..)
            .take_while(|p| p.starts_with(path)),
    );
    out
}

/// Merges an applied configuration over the stored object: objects recursively, anything else
/// replaced; `null` removes.
pub(super) fn apply_merge(target: &mut Value, applied: &Value) {
    merge_patch(target, applied);
}

pub(super) fn fields_v1(paths: &BTreeSet<FieldPath>) -> Value {
    let mut root = json!({});
    for path in paths {
        let mut node = &mut root;
        for seg in path {
            node = node
                .as_object_mut()
                .expect("fields trees are objects")
                .entry(format!("f:{seg}"))
                .or_insert_with(|| json!({}));
        }
    }
    root
}

pub(super) fn strip_nulls(v: &mut Value) {
    if let Value::Object(m) = v {
        m.retain(|_, c| !c.is_null());
        for c in m.values_mut() {
            strip_nulls(c);
        }
    }
}

/// Whether two objects differ outside `metadata` and `status` (a change that bumps
/// `generation`).
pub(super) fn spec_changed(a: &Value, b: &Value) -> bool {
    let outside = |o: &'_ Map<String, Value>| {
        o.iter()
            .filter(|(k, _)| *k != "metadata" && *k != "status")
            .count()
    };
    match (a.as_object(), b.as_object()) {
        (Some(a), Some(b)) => {
            outside(a) != outside(b)
                || a.iter()
                    .filter(|(k, _)| *k != "metadata" && *k != "status")
                    .any(|(k, v)| b.get(k) != Some(v))
        }
        _ => a != b,
    }
}

pub(super) fn set_status(object: &mut Value, status: Option<Value>) {
    if let Some(o) = object.as_object_mut() {
        match status {
            Some(s) => {
                o.insert("status".into(), s);
            }
            None => {
                o.remove("status");
            }
        }
    }
}

/// Update-operation ownership: `manager` takes the fields that changed between `old` and
/// `new`; removed fields are dropped from every manager.
pub(super) fn update_ownership(
    managers: &mut BTreeMap<String, Manager>,
    manager: &str,
    api_version: &str,
    old: Option<&Value>,
    new: &Value,
) {
    let changed: BTreeSet<FieldPath> = owned_leaves(new)
        .into_iter()
        .filter(|p| old.is_none_or(|o| get_path(o, p) != get_path(new, p)))
        .collect();
    for m in managers.values_mut() {
        m.fields
            .retain(|p| get_path(new, p).is_some() && overlapping(&changed, p).is_empty());
    }
    if !changed.is_empty() {
        let entry = managers
            .entry(manager.to_string())
            .or_insert_with(|| Manager {
                apply: false,
                api_version: api_version.to_string(),
                time: now_rfc3339(),
                fields: BTreeSet::new(),
            });
        entry.fields.extend(changed);
        entry.time = now_rfc3339();
    }
    managers.retain(|_, m| !m.fields.is_empty());
}

pub(super) fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let text = deploykit_core::Timestamp::from_millis(secs * 1000).to_string();
    text.replace(".000Z", "Z")
}
