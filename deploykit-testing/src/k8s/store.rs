//! The object store: every object by group, resource, namespace and name, and the writes
//! that change it (server-set fields, defaulting, validation, the garbage collector).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use base64::Engine as _;
use serde_json::{Value, json};

use super::controller::owner_deployment;
use super::patch::{Manager, fields_v1, meta_str, metadata_mut, now_rfc3339, spec_changed};
use super::request::{Fail, Params, Target, kind_of_plural};
use super::select::{fields_match, labels_match, parse_field_selector, parse_label_selector};
use super::watch::{Event, Watcher};
use super::{Failure, PendingHook, RecordedRequest};

#[derive(Default)]
pub(super) struct State {
    pub(super) rv: u64,
    pub(super) serial: u64,
    pub(super) objects: BTreeMap<Key, Stored>,
    pub(super) templates: BTreeMap<Key, Value>,
    pub(super) failures: Vec<Failure>,
    pub(super) hooks: Vec<PendingHook>,
    pub(super) requests: Vec<RecordedRequest>,
    pub(super) hidden_groups: BTreeSet<String>,
    pub(super) watchers: Vec<Watcher>,
    pub(super) history: VecDeque<Event>,
    pub(super) history_floor: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Key {
    pub(super) group: String,
    pub(super) plural: String,
    pub(super) namespace: String,
    pub(super) name: String,
}

#[derive(Clone, Debug)]
pub(super) struct Stored {
    pub(super) object: Value,
    pub(super) managers: BTreeMap<String, Manager>,
}

impl State {
    pub(super) fn next_serial(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }

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

    pub(super) fn get(&self, t: &Target, name: &str) -> Result<Value, Fail> {
        self.objects
            .get(&t.key(name))
            .map(|s| s.object.clone())
            .ok_or_else(|| Fail::not_found(t, name))
    }

    pub(super) fn matching(&self, t: &Target, q: &Params) -> Result<Vec<(Key, Value)>, Fail> {
        let labels = parse_label_selector(q.get("labelSelector").unwrap_or(""))?;
        let fields = parse_field_selector(q.get("fieldSelector").unwrap_or(""))?;
        Ok(self
            .objects
            .iter()
            .filter(|(k, _)| {
                k.group == t.group
                    && k.plural == t.plural
                    && t.namespace.as_ref().is_none_or(|ns| *ns == k.namespace)
            })
            .filter(|(_, s)| labels_match(&s.object, &labels) && fields_match(&s.object, &fields))
            .map(|(k, s)| (k.clone(), s.object.clone()))
            .collect())
    }

    pub(super) fn list_value(&self, t: &Target, items: Vec<Value>) -> Value {
        json!({
            "apiVersion": t.api_version(),
            "kind": format!("{}List", self.kind_for(t)),
            "metadata": { "resourceVersion": self.rv.to_string() },
            "items": items,
        })
    }

    /// Stores `object` at `key` as a user write: server fields, validation, managed fields, a
    /// watch event and the simulated controller. Answers the object as stored.
    pub(super) fn write(
        &mut self,
        t: &Target,
        key: Key,
        mut object: Value,
        managers: BTreeMap<String, Manager>,
        dry_run: bool,
    ) -> Result<Value, Fail> {
        let old = self.objects.get(&key).map(|s| s.object.clone());
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
            return Ok(self.present(t, &object));
        }
        let event = if old.is_some() { "MODIFIED" } else { "ADDED" };
        let existing_managers = managers;
        self.objects.insert(
            key.clone(),
            Stored {
                object: object.clone(),
                managers: existing_managers,
            },
        );
        self.store_raw(&key, object, event);
        if t.is("apps", "deployments") {
            self.reconcile_deployment(&key.namespace, &key.name);
        } else if t.is("", "pods")
            && let Some(owner) = owner_deployment(&self.objects[&key].object)
        {
            self.reconcile_deployment(&key.namespace, &owner);
        }
        let stored = self.objects[&key].object.clone();
        Ok(self.present(t, &stored))
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

    /// Bumps the resourceVersion, stores `object` at `key` (keeping its managers) and sends
    /// the watch event.
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

    /// Removes an object as a write (new resourceVersion, `DELETED` event), then what it owns.
    /// A removed pod whose Deployment still exists is replaced when `respawn`.
    pub(super) fn remove(&mut self, key: &Key, respawn: bool) -> Option<Value> {
        let mut stored = self.objects.remove(key)?.object;
        self.rv += 1;
        metadata_mut(&mut stored)
            .insert("resourceVersion".into(), Value::String(self.rv.to_string()));
        self.emit("DELETED", key, stored.clone());
        self.templates.remove(key);
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
                self.remove(&k, false);
            }
        }
        if respawn
            && key.group.is_empty()
            && key.plural == "pods"
            && let Some(owner) = owner_deployment(&stored)
        {
            self.reconcile_deployment(&key.namespace, &owner);
        }
        Some(stored)
    }
}
