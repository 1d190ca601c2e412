//! The object store: every object by group, resource, namespace and name, the writes that
//! change it (server-set fields, defaulting, validation, the garbage collector), the global
//! `resourceVersion`, and the history of changes. It calls no layer above it: whoever wants to
//! hear of changes (a watch) registers an [`Observer`], and whatever reacts to a write (the
//! simulated controller) is run by the caller after the write.

use std::collections::{BTreeMap, VecDeque};

use base64::Engine as _;
use serde_json::{Value, json};

use super::patch::{Manager, fields_v1, meta_str, metadata_mut, now_rfc3339, spec_changed};
use super::request::{Fail, Key, Params, Target, kind_of_plural};
use super::select::Selector;

/// How many changes are remembered for watches that resume from a `resourceVersion`.
const HISTORY: usize = 256;

/// The stored objects and everything that changes with them.
#[derive(Default)]
pub(super) struct Store {
    /// The global `resourceVersion`: bumped by every change.
    pub(super) rv: u64,
    /// The counter behind generated uids, names and IPs.
    serial: u64,
    pub(super) objects: BTreeMap<Key, Stored>,
    /// The last [`HISTORY`] changes, oldest first.
    history: VecDeque<Event>,
    /// The `resourceVersion` of the newest change that has left the history.
    history_floor: u64,
    observers: Vec<Box<dyn Observer>>,
}

/// One stored object and the field managers that own its fields.
#[derive(Clone, Debug)]
pub(super) struct Stored {
    pub(super) object: Value,
    pub(super) managers: BTreeMap<String, Manager>,
}

/// One change to the store: what a watch event reports.
pub(super) struct Event {
    /// The `resourceVersion` the change made.
    pub(super) rv: u64,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub(super) kind: &'static str,
    pub(super) key: Key,
    /// The object after the change (before it, for `DELETED`, with the new `resourceVersion`).
    pub(super) object: Value,
}

/// Hears of every change to the store as it is made, in order.
pub(super) trait Observer: Send {
    /// Takes in `event`; answers false once the observer is gone, to be dropped.
    fn observe(&mut self, event: &Event) -> bool;
}

impl Store {
    /// A new number, for uids, generated names and IPs.
    pub(super) fn next_serial(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }

    /// The `kind` of the objects of `t`'s resource: known, stored, or guessed from the plural.
    pub(super) fn kind_for(&self, t: &Target) -> String {
        if let Some(k) = kind_of_plural(&t.plural) {
            return k.to_string();
        }
        if let Some(kind) = self
            .objects
            .iter()
            .filter(|(k, _)| k.group == t.group && k.plural == t.plural)
            .find_map(|(_, s)| s.object.get("kind").and_then(Value::as_str))
        {
            return kind.to_string();
        }
        let singular = t.plural.strip_suffix('s').unwrap_or(&t.plural);
        let mut chars = singular.chars();
        chars
            .next()
            .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
            .unwrap_or_default()
    }

    /// `object` as `t` asks for it: in `t`'s API version, with its `kind`.
    pub(super) fn present(&self, t: &Target, object: &Value) -> Value {
        let mut v = object.clone();
        if let Some(o) = v.as_object_mut() {
            o.insert("apiVersion".into(), Value::String(t.api_version()));
            if !o.contains_key("kind") {
                o.insert("kind".into(), Value::String(self.kind_for(t)));
            }
        }
        v
    }

    /// The stored object `name` of `t`'s resource, or 404.
    pub(super) fn get(&self, t: &Target, name: &str) -> Result<Value, Fail> {
        self.objects
            .get(&t.key(name))
            .map(|s| s.object.clone())
            .ok_or_else(|| Fail::not_found(t, name))
    }

    /// The stored objects of collection `t` that query `q`'s selectors select.
    pub(super) fn matching(&self, t: &Target, q: &Params) -> Result<Vec<(Key, Value)>, Fail> {
        let selector = Selector::from_params(q)?;
        Ok(self
            .objects
            .iter()
            .filter(|(k, s)| t.covers(k) && selector.matches(&s.object))
            .map(|(k, s)| (k.clone(), s.object.clone()))
            .collect())
    }

    /// A `List` of `t`'s kind holding `items`, at the current `resourceVersion`.
    pub(super) fn list_value(&self, t: &Target, items: Vec<Value>) -> Value {
        json!({
            "apiVersion": t.api_version(),
            "kind": format!("{}List", self.kind_for(t)),
            "metadata": { "resourceVersion": self.rv.to_string() },
            "items": items,
        })
    }

    /// Stores `object` at `key` as a user write: server fields, validation, managed fields and
    /// the change event. Answers the object as stored (as it would be stored, when `dry_run`).
    /// What reacts to the write (the simulated controller) is the caller's to run.
    pub(super) fn write(
        &mut self,
        t: &Target,
        key: &Key,
        mut object: Value,
        managers: BTreeMap<String, Manager>,
        dry_run: bool,
    ) -> Result<Value, Fail> {
        let old = self.objects.get(key).map(|s| s.object.clone());
        let kind = object
            .get("kind")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| {
                old.as_ref()
                    .and_then(|o| o.get("kind")?.as_str().map(str::to_string))
            })
            .unwrap_or_else(|| self.kind_for(t));
        {
            let o = object.as_object_mut().expect("objects are JSON objects");
            o.insert("kind".into(), Value::String(kind.clone()));
            o.insert("apiVersion".into(), Value::String(t.api_version()));
        }
        self.normalise(t, &kind, old.as_ref(), &mut object)?;
        let generation = match &old {
            None => 1,
            Some(old) => {
                let g = old
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                if spec_changed(old, &object) { g + 1 } else { g }
            }
        };
        let uid = old
            .as_ref()
            .and_then(|o| meta_str(o, "uid").map(str::to_string));
        let created = old
            .as_ref()
            .and_then(|o| meta_str(o, "creationTimestamp").map(str::to_string));
        let uid = match uid {
            Some(u) => u,
            None => {
                let n = self.next_serial();
                format!("00000000-0000-4000-8000-{n:012x}")
            }
        };
        let managed: Vec<Value> = managers
            .iter()
            .filter(|(_, m)| !m.fields.is_empty())
            .map(|(name, m)| {
                json!({
                    "manager": name,
                    "operation": if m.apply { "Apply" } else { "Update" },
                    "apiVersion": m.api_version,
                    "time": m.time,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": fields_v1(&m.fields),
                })
            })
            .collect();
        {
            let meta = metadata_mut(&mut object);
            meta.insert("name".into(), Value::String(key.name.clone()));
            if !key.namespace.is_empty() {
                meta.insert("namespace".into(), Value::String(key.namespace.clone()));
            }
            meta.insert("uid".into(), Value::String(uid));
            meta.insert(
                "creationTimestamp".into(),
                Value::String(created.unwrap_or_else(now_rfc3339)),
            );
            meta.insert("generation".into(), json!(generation));
            meta.insert("managedFields".into(), Value::Array(managed));
            meta.remove("selfLink");
        }
        if dry_run {
            metadata_mut(&mut object).insert(
                "resourceVersion".into(),
                Value::String(
                    old.as_ref()
                        .and_then(|o| meta_str(o, "resourceVersion"))
                        .unwrap_or("")
                        .to_string(),
                ),
            );
            return Ok(object);
        }
        let event = if old.is_some() { "MODIFIED" } else { "ADDED" };
        self.objects.insert(
            key.clone(),
            Stored {
                object: object.clone(),
                managers,
            },
        );
        self.store_raw(key, object, event);
        Ok(self.objects[key].object.clone())
    }

    /// Imitates the defaulting and validation of a few kinds.
    fn normalise(
        &mut self,
        t: &Target,
        kind: &str,
        old: Option<&Value>,
        object: &mut Value,
    ) -> Result<(), Fail> {
        let name = meta_str(object, "name").unwrap_or_default().to_string();
        if t.group.is_empty()
            && t.plural == "secrets"
            && let Some(Value::Object(string_data)) =
                object.as_object_mut().and_then(|o| o.remove("stringData"))
        {
            let o = object.as_object_mut().expect("objects are JSON objects");
            let data = o.entry("data").or_insert_with(|| json!({}));
            if !data.is_object() {
                *data = json!({});
            }
            let data = data.as_object_mut().expect("just made an object");
            for (k, v) in string_data {
                let text = v.as_str().unwrap_or_default().to_string();
                data.insert(
                    k,
                    Value::String(base64::engine::general_purpose::STANDARD.encode(text)),
                );
            }
        }
        if t.group.is_empty()
            && (t.plural == "configmaps" || t.plural == "secrets")
            && let Some(old) = old
            && old.get("immutable") == Some(&Value::Bool(true))
        {
            for field in ["data", "binaryData", "immutable"] {
                if old.get(field) != object.get(field) {
                    return Err(Fail::new(
                        422,
                        "Invalid",
                        format!(
                            "{kind} {name:?} is invalid: {field}: Forbidden: field is immutable \
                             when `immutable` is set"
                        ),
                    ));
                }
            }
        }
        if t.group.is_empty() && t.plural == "services" {
            let old_ips = old.and_then(|o| {
                Some((
                    o.pointer("/spec/clusterIP")?.clone(),
                    o.pointer("/spec/clusterIPs").cloned(),
                ))
            });
            let spec = object
                .as_object_mut()
                .expect("objects are JSON objects")
                .entry("spec")
                .or_insert_with(|| json!({}));
            if let Some(spec) = spec.as_object_mut() {
                let external = spec.get("type").and_then(Value::as_str) == Some("ExternalName");
                if !external && !spec.contains_key("clusterIP") {
                    let (ip, ips) = match old_ips {
                        Some((ip, ips)) => (ip.clone(), ips.unwrap_or_else(|| json!([ip]))),
                        None => {
                            let n = self.next_serial();
                            let ip = format!("10.96.{}.{}", (n / 250) % 250, n % 250 + 1);
                            (json!(ip), json!([ip]))
                        }
                    };
                    spec.insert("clusterIP".into(), ip);
                    spec.insert("clusterIPs".into(), ips);
                }
            }
        }
        Ok(())
    }

    /// Bumps the resourceVersion, stores `object` at `key` (keeping its managers) and records
    /// the change.
    pub(super) fn store_raw(&mut self, key: &Key, mut object: Value, event: &'static str) {
        self.rv += 1;
        metadata_mut(&mut object)
            .insert("resourceVersion".into(), Value::String(self.rv.to_string()));
        match self.objects.get_mut(key) {
            Some(s) => s.object = object.clone(),
            None => {
                self.objects.insert(
                    key.clone(),
                    Stored {
                        object: object.clone(),
                        managers: BTreeMap::new(),
                    },
                );
            }
        }
        self.emit(event, key, object);
    }

    /// Removes an object as a write (new resourceVersion, `DELETED` event), then what it owns,
    /// as the garbage collector would. Answers the removed object.
    pub(super) fn remove(&mut self, key: &Key) -> Option<Value> {
        let mut stored = self.objects.remove(key)?.object;
        self.rv += 1;
        metadata_mut(&mut stored)
            .insert("resourceVersion".into(), Value::String(self.rv.to_string()));
        self.emit("DELETED", key, stored.clone());
        if let Some(uid) = meta_str(&stored, "uid") {
            let owned: Vec<Key> = self
                .objects
                .iter()
                .filter(|(_, s)| {
                    s.object
                        .pointer("/metadata/ownerReferences")
                        .and_then(Value::as_array)
                        .is_some_and(|refs| {
                            refs.iter()
                                .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid))
                        })
                })
                .map(|(k, _)| k.clone())
                .collect();
            for k in owned {
                self.remove(&k);
            }
        }
        Some(stored)
    }

    /// Records a change at the current resourceVersion: tells the observers, and remembers it.
    fn emit(&mut self, kind: &'static str, key: &Key, object: Value) {
        let event = Event {
            rv: self.rv,
            kind,
            key: key.clone(),
            object,
        };
        self.observers.retain_mut(|o| o.observe(&event));
        self.history.push_back(event);
        while self.history.len() > HISTORY {
            if let Some(e) = self.history.pop_front() {
                self.history_floor = e.rv;
            }
        }
    }

    /// From now on, tell `observer` of every change.
    pub(super) fn observe(&mut self, observer: Box<dyn Observer>) {
        self.observers.push(observer);
    }

    /// The remembered changes after resourceVersion `rv`, oldest first; or, if some of them
    /// have been forgotten, `Err` with the oldest resourceVersion still served.
    pub(super) fn changes_since(&self, rv: u64) -> Result<impl Iterator<Item = &Event>, u64> {
        if rv < self.history_floor {
            return Err(self.history_floor + 1);
        }
        Ok(self.history.iter().filter(move |e| e.rv > rv))
    }
}
