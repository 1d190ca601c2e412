//! The HTTP routing: which verb on which path does what to the store, with the simulated
//! controller run after every write. The top layer: it imports every other.

use std::collections::{BTreeMap, BTreeSet};

use http::Method;
use serde_json::{Value, json};

use super::FakeBody;
use super::controller::Controller;
use super::logs::Logs;
use super::patch::{
    FieldPath, Manager, apply_merge, get_path, merge_patch, meta_str, metadata_mut, now_rfc3339,
    overlapping, owned_leaves, remove_path, set_status, strip_nulls, update_ownership,
};
use super::request::{Fail, Key, Params, Target, parse_target};
use super::store::{Store, Stored};
use super::watch::watch;

/// What a request that did not fail answers.
pub(super) enum Reply {
    /// A status code and a JSON body.
    Json(u16, Value),
    /// A watch's stream of events, or a pod's log.
    Stream(FakeBody),
}

/// The API as the routes serve it: the objects, the controller that reacts to writes, the
/// API groups that answer 404, and the pods' logs.
pub(super) struct Api<'a> {
    pub(super) store: &'a mut Store,
    pub(super) controller: &'a mut Controller,
    pub(super) hidden_groups: &'a BTreeSet<String>,
    /// Fields the schemas do not declare: `(plural, dotted path)`.
    pub(super) undeclared: &'a [(String, String)],
    pub(super) logs: &'a Logs,
}

impl Api<'_> {
    /// Answers request `method` `path` with query `q`.
    pub(super) fn dispatch(
        &mut self,
        method: &Method,
        path: &str,
        q: &Params,
        content_type: Option<&str>,
        body: Option<Value>,
    ) -> Result<Reply, Fail> {
        if path == "/version" && method == Method::GET {
            return Ok(Reply::Json(
                200,
                json!({
                    "major": "1", "minor": "33", "gitVersion": "v1.33.0-fake",
                    "platform": "linux/amd64",
                }),
            ));
        }
        let t = parse_target(path).ok_or_else(Fail::no_route)?;
        if self.hidden_groups.contains(&t.group) {
            return Err(Fail::no_route());
        }
        let mut body = body;
        if let Some(value) = body.as_mut() {
            let strict = q.get("fieldValidation") == Some("Strict");
            for (_, field) in self.undeclared.iter().filter(|(p, _)| *p == t.plural) {
                let segments: Vec<&str> = field.split('.').collect();
                if let Some(found) = remove_undeclared(value, &segments, String::new(), !strict) {
                    return Err(Fail::bad_request(format!(
                        "{found}: field not declared in schema"
                    )));
                }
            }
        }
        let name = t.name.clone();
        match (method.clone(), name, t.sub.as_deref()) {
            (Method::GET, None, _) if q.flag("watch") => {
                watch(self.store, &t, q).map(Reply::Stream)
            }
            (Method::GET, None, _) => self.list(&t, q).map(|v| Reply::Json(200, v)),
            (Method::GET, Some(name), None | Some("status")) => {
                let stored = self.store.get(&t, &name)?;
                Ok(Reply::Json(200, self.store.present(&t, &stored)))
            }
            (Method::GET, Some(name), Some("log")) if t.is("", "pods") => {
                self.logs.serve(self.store, &t, &name, q).map(Reply::Stream)
            }
            (Method::GET, Some(name), Some("scale")) => {
                let stored = self.store.get(&t, &name)?;
                Ok(Reply::Json(200, scale_of(&stored)))
            }
            (Method::POST, None, None) => self.create(&t, q, body),
            (Method::PUT, Some(name), sub) => self.replace(&t, &name, q, body, sub),
            (Method::PATCH, Some(name), sub) => {
                self.patch(&t, &name, q, content_type.unwrap_or(""), body, sub)
            }
            (Method::DELETE, Some(name), None) => self.delete(&t, &name, q, body.as_ref()),
            (Method::DELETE, None, None) => self.delete_collection(&t, q),
            _ => Err(Fail::new(
                405,
                "MethodNotAllowed",
                format!("the fake API server does not support {method} {path}"),
            )),
        }
    }

    fn list(&self, t: &Target, q: &Params) -> Result<Value, Fail> {
        let items = self
            .store
            .matching(t, q)?
            .into_iter()
            .map(|(_, v)| self.store.present(t, &v))
            .collect();
        Ok(self.store.list_value(t, items))
    }

    fn body_object(body: Option<Value>) -> Result<Value, Fail> {
        match body {
            Some(v @ Value::Object(_)) => Ok(v),
            Some(_) => Err(Fail::bad_request("the request body is not a JSON object")),
            None => Err(Fail::bad_request("the request has no body")),
        }
    }

    /// Checks that the body's name and namespace agree with the URL, filling them in.
    fn check_identity(t: &Target, name: Option<&str>, object: &mut Value) -> Result<(), Fail> {
        let meta = metadata_mut(object);
        if let Some(name) = name {
            match meta.get("name").and_then(Value::as_str) {
                Some(n) if n != name => {
                    return Err(Fail::bad_request(format!(
                        "the name of the object ({n}) does not match the name on the URL ({name})"
                    )));
                }
                _ => {
                    meta.insert("name".into(), Value::String(name.to_string()));
                }
            }
        }
        if let Some(ns) = &t.namespace {
            match meta.get("namespace").and_then(Value::as_str) {
                Some(n) if !n.is_empty() && n != ns => {
                    return Err(Fail::bad_request(format!(
                        "the namespace of the provided object ({n}) does not match the \
                         namespace sent on the request ({ns})"
                    )));
                }
                _ => {
                    meta.insert("namespace".into(), Value::String(ns.clone()));
                }
            }
        }
        meta.remove("managedFields");
        Ok(())
    }

    fn create(&mut self, t: &Target, q: &Params, body: Option<Value>) -> Result<Reply, Fail> {
        let mut object = Self::body_object(body)?;
        Self::check_identity(t, None, &mut object)?;
        let name = match meta_str(&object, "name") {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => match meta_str(&object, "generateName") {
                Some(prefix) if !prefix.is_empty() => {
                    let name = format!("{prefix}{:05x}", self.store.next_serial());
                    metadata_mut(&mut object).insert("name".into(), Value::String(name.clone()));
                    name
                }
                _ => {
                    return Err(Fail::new(
                        422,
                        "Invalid",
                        format!(
                            "{} is invalid: metadata.name: Required value: name or \
                             generateName is required",
                            self.store.kind_for(t)
                        ),
                    ));
                }
            },
        };
        let key = t.key(&name);
        if self.store.objects.contains_key(&key) {
            return Err(Fail::new(
                409,
                "AlreadyExists",
                format!("{} {name:?} already exists", t.plural),
            ));
        }
        strip_nulls(&mut object);
        let manager = q.get("fieldManager").unwrap_or("unknown").to_string();
        let mut managers = BTreeMap::new();
        update_ownership(&mut managers, &manager, &t.api_version(), None, &object);
        let out = self.commit(t, key, object, managers, q.get("dryRun").is_some())?;
        Ok(Reply::Json(201, out))
    }

    fn replace(
        &mut self,
        t: &Target,
        name: &str,
        q: &Params,
        body: Option<Value>,
        sub: Option<&str>,
    ) -> Result<Reply, Fail> {
        let mut object = Self::body_object(body)?;
        let key = t.key(name);
        let stored = self
            .store
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| Fail::not_found(t, name))?;
        let dry_run = q.get("dryRun").is_some();
        match sub {
            Some("scale") => {
                check_precondition(t, name, &object, &stored.object)?;
                let replicas = object
                    .pointer("/spec/replicas")
                    .cloned()
                    .unwrap_or(json!(0));
                return self.set_replicas(t, key, stored, replicas, q);
            }
            Some("status") => {
                check_precondition(t, name, &object, &stored.object)?;
                let mut new = stored.object.clone();
                set_status(&mut new, object.get("status").cloned());
                let out = self.commit(t, key, new, stored.managers, dry_run)?;
                return Ok(Reply::Json(200, out));
            }
            Some(other) => {
                return Err(Fail::no_route_msg(format!("no subresource {other:?}")));
            }
            None => {}
        }
        Self::check_identity(t, Some(name), &mut object)?;
        check_precondition(t, name, &object, &stored.object)?;
        strip_nulls(&mut object);
        set_status(&mut object, stored.object.get("status").cloned());
        let manager = q.get("fieldManager").unwrap_or("unknown").to_string();
        let mut managers = stored.managers.clone();
        update_ownership(
            &mut managers,
            &manager,
            &t.api_version(),
            Some(&stored.object),
            &object,
        );
        let out = self.commit(t, key, object, managers, dry_run)?;
        Ok(Reply::Json(200, out))
    }

    fn patch(
        &mut self,
        t: &Target,
        name: &str,
        q: &Params,
        content_type: &str,
        body: Option<Value>,
        sub: Option<&str>,
    ) -> Result<Reply, Fail> {
        let patch = Self::body_object(body)?;
        let media = content_type.split(';').next().unwrap_or("").trim();
        let key = t.key(name);
        let stored = self.store.objects.get(&key).cloned();
        let dry_run = q.get("dryRun").is_some();
        match media {
            "application/apply-patch+yaml" => {
                let Some(manager) = q.get("fieldManager").filter(|m| !m.is_empty()) else {
                    return Err(Fail::bad_request(
                        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required \
                         value: is required for apply patch",
                    ));
                };
                self.apply(
                    t,
                    name,
                    patch,
                    manager,
                    q.flag("force"),
                    stored,
                    sub,
                    dry_run,
                )
            }
            "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                let stored = stored.ok_or_else(|| Fail::not_found(t, name))?;
                check_precondition(t, name, &patch, &stored.object)?;
                match sub {
                    Some("scale") => {
                        let mut scale = scale_of(&stored.object);
                        merge_patch(&mut scale, &patch);
                        let replicas = scale.pointer("/spec/replicas").cloned().unwrap_or(json!(0));
                        self.set_replicas(t, key, stored, replicas, q)
                    }
                    Some("status") => {
                        let mut merged = stored.object.clone();
                        merge_patch(&mut merged, &patch);
                        let mut new = stored.object.clone();
                        set_status(&mut new, merged.get("status").cloned());
                        let out = self.commit(t, key, new, stored.managers, dry_run)?;
                        Ok(Reply::Json(200, out))
                    }
                    Some(other) => Err(Fail::no_route_msg(format!("no subresource {other:?}"))),
                    None => {
                        let mut new = stored.object.clone();
                        merge_patch(&mut new, &patch);
                        Self::check_identity(t, Some(name), &mut new)?;
                        set_status(&mut new, stored.object.get("status").cloned());
                        let manager = q.get("fieldManager").unwrap_or("unknown").to_string();
                        let mut managers = stored.managers.clone();
                        update_ownership(
                            &mut managers,
                            &manager,
                            &t.api_version(),
                            Some(&stored.object),
                            &new,
                        );
                        let out = self.commit(t, key, new, managers, dry_run)?;
                        Ok(Reply::Json(200, out))
                    }
                }
            }
            other => Err(Fail::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the fake API server does not support patches of type {other:?} (use \
                     server-side apply or a merge patch)"
                ),
            )),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        t: &Target,
        name: &str,
        mut applied: Value,
        manager: &str,
        force: bool,
        stored: Option<Stored>,
        sub: Option<&str>,
        dry_run: bool,
    ) -> Result<Reply, Fail> {
        let key = t.key(name);
        let api_version = t.api_version();
        let Some(stored) = stored else {
            if sub.is_some() {
                return Err(Fail::not_found(t, name));
            }
            Self::check_identity(t, Some(name), &mut applied)?;
            strip_nulls(&mut applied);
            let mut managers = BTreeMap::new();
            managers.insert(
                manager.to_string(),
                Manager {
                    apply: true,
                    api_version,
                    time: now_rfc3339(),
                    fields: owned_leaves(&applied),
                },
            );
            let out = self.commit(t, key, applied, managers, dry_run)?;
            return Ok(Reply::Json(201, out));
        };
        check_precondition(t, name, &applied, &stored.object)?;
        match sub {
            Some("scale") => {
                let mut scale = scale_of(&stored.object);
                apply_merge(&mut scale, &applied);
                let replicas = scale.pointer("/spec/replicas").cloned().unwrap_or(json!(0));
                let q = Params(BTreeMap::from([(
                    "fieldManager".to_string(),
                    manager.to_string(),
                )]));
                return self.set_replicas(t, key, stored, replicas, &q);
            }
            Some("status") => {
                let mut new = stored.object.clone();
                if let Some(status) = applied.get("status") {
                    let mut merged = new.get("status").cloned().unwrap_or(json!({}));
                    apply_merge(&mut merged, status);
                    set_status(&mut new, Some(merged));
                }
                let out = self.commit(t, key, new, stored.managers, dry_run)?;
                return Ok(Reply::Json(200, out));
            }
            Some(other) => return Err(Fail::no_route_msg(format!("no subresource {other:?}"))),
            None => {}
        }
        Self::check_identity(t, Some(name), &mut applied)?;
        let leaves = owned_leaves(&applied);
        let mut managers = stored.managers.clone();
        let mut conflicts: Vec<(String, String, FieldPath)> = Vec::new();
        for (other, owned) in &managers {
            if other == manager {
                continue;
            }
            for p in &leaves {
                for q in overlapping(&owned.fields, p) {
                    if get_path(&stored.object, p) != get_path(&applied, p) {
                        conflicts.push((other.clone(), owned.api_version.clone(), q.clone()));
                    }
                }
            }
        }
        conflicts.sort();
        conflicts.dedup();
        if !conflicts.is_empty() && !force {
            let list: Vec<String> = conflicts
                .iter()
                .map(|(m, v, p)| format!("conflict with {m:?} using {v}: .{}", p.join(".")))
                .collect();
            let message = if list.len() == 1 {
                format!("Apply failed with 1 conflict: {}", list[0])
            } else {
                format!(
                    "Apply failed with {} conflicts: {}",
                    list.len(),
                    list.join("\n")
                )
            };
            return Err(Fail::new(409, "Conflict", message));
        }
        for (other, _, path) in &conflicts {
            if let Some(m) = managers.get_mut(other) {
                m.fields.remove(path);
            }
        }
        let mut new = stored.object.clone();
        if let Some(previous) = managers.get(manager) {
            for path in previous.fields.difference(&leaves) {
                let shared = managers
                    .iter()
                    .any(|(m, o)| m != manager && !overlapping(&o.fields, path).is_empty());
                if !shared {
                    remove_path(&mut new, path);
                }
            }
        }
        let mut body = applied.clone();
        if let Some(o) = body.as_object_mut() {
            o.remove("status");
        }
        apply_merge(&mut new, &body);
        managers.retain(|_, m| !m.fields.is_empty());
        managers.insert(
            manager.to_string(),
            Manager {
                apply: true,
                api_version,
                time: now_rfc3339(),
                fields: leaves,
            },
        );
        let out = self.commit(t, key, new, managers, dry_run)?;
        Ok(Reply::Json(200, out))
    }

    fn set_replicas(
        &mut self,
        t: &Target,
        key: Key,
        stored: Stored,
        replicas: Value,
        q: &Params,
    ) -> Result<Reply, Fail> {
        if !t.is("apps", "deployments") {
            return Err(Fail::no_route_msg(format!(
                "the fake API server has no scale subresource for {}",
                t.plural
            )));
        }
        let mut new = stored.object.clone();
        merge_patch(&mut new, &json!({ "spec": { "replicas": replicas } }));
        let manager = q.get("fieldManager").unwrap_or("unknown").to_string();
        let mut managers = stored.managers.clone();
        update_ownership(
            &mut managers,
            &manager,
            &t.api_version(),
            Some(&stored.object),
            &new,
        );
        let out = self.commit(t, key, new, managers, q.get("dryRun").is_some())?;
        Ok(Reply::Json(200, scale_of(&out)))
    }

    fn delete(
        &mut self,
        t: &Target,
        name: &str,
        q: &Params,
        body: Option<&Value>,
    ) -> Result<Reply, Fail> {
        let key = t.key(name);
        let stored = self.store.get(t, name)?;
        if let Some(pre) = body.and_then(|b| b.get("preconditions")) {
            for (field, label) in [("resourceVersion", "ResourceVersion"), ("uid", "UID")] {
                if let Some(want) = pre.get(field).and_then(Value::as_str) {
                    let have = meta_str(&stored, field).unwrap_or("");
                    if want != have {
                        return Err(Fail::new(
                            409,
                            "Conflict",
                            format!(
                                "Operation cannot be fulfilled on {} {name:?}: Precondition \
                                 failed: {label} in precondition: {want}, {label} in object \
                                 meta: {have}",
                                t.plural
                            ),
                        ));
                    }
                }
            }
        }
        let dry_run = q.get("dryRun").is_some()
            || body
                .and_then(|b| b.get("dryRun"))
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty());
        if dry_run {
            return Ok(Reply::Json(200, self.store.present(t, &stored)));
        }
        let removed = self.remove(&key).unwrap_or(stored);
        Ok(Reply::Json(200, self.store.present(t, &removed)))
    }

    fn delete_collection(&mut self, t: &Target, q: &Params) -> Result<Reply, Fail> {
        let matches = self.store.matching(t, q)?;
        let mut items = Vec::new();
        for (key, _) in matches {
            if let Some(v) = self.remove(&key) {
                items.push(self.store.present(t, &v));
            }
        }
        Ok(Reply::Json(200, self.store.list_value(t, items)))
    }

    /// Writes `object` at `key` (see [`Store::write`]) and lets the controller react. Answers
    /// the object as `t` asks for it, as it is after the controller ran.
    fn commit(
        &mut self,
        t: &Target,
        key: Key,
        object: Value,
        managers: BTreeMap<String, Manager>,
        dry_run: bool,
    ) -> Result<Value, Fail> {
        let mut out = self.store.write(t, &key, object, managers, dry_run)?;
        if !dry_run {
            self.controller.react(self.store, &key, &out);
            out = self.store.objects[&key].object.clone();
        }
        Ok(self.store.present(t, &out))
    }

    /// Removes the object at `key` and what it owns (see [`Store::remove`]) and lets the
    /// controller react (a removed pod of a Deployment is replaced). Answers the removed object.
    fn remove(&mut self, key: &Key) -> Option<Value> {
        let removed = self.store.remove(key)?;
        self.controller.react(self.store, key, &removed);
        Some(removed)
    }
}

fn check_precondition(t: &Target, name: &str, sent: &Value, stored: &Value) -> Result<(), Fail> {
    match meta_str(sent, "resourceVersion") {
        Some(rv) if !rv.is_empty() && Some(rv) != meta_str(stored, "resourceVersion") => {
            Err(Fail::stale(t, name))
        }
        _ => Ok(()),
    }
}

fn scale_of(object: &Value) -> Value {
    let selector = object
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            "name": meta_str(object, "name"),
            "namespace": meta_str(object, "namespace"),
            "uid": meta_str(object, "uid"),
            "resourceVersion": meta_str(object, "resourceVersion"),
            "creationTimestamp": meta_str(object, "creationTimestamp"),
        },
        "spec": { "replicas": object.pointer("/spec/replicas").cloned().unwrap_or(json!(1)) },
        "status": {
            "replicas": object.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    })
}

/// Find the field at `segments` (`*` for every list item) in `value`: with `drop`, remove
/// every occurrence and answer `None`; else answer the first one's path
/// (`.spec.rules[0].filters[1]…`).
fn remove_undeclared(
    value: &mut Value,
    segments: &[&str],
    at: String,
    drop: bool,
) -> Option<String> {
    let (first, rest) = segments.split_first()?;
    if *first == "*" {
        let items = value.as_array_mut()?;
        for (i, item) in items.iter_mut().enumerate() {
            if let Some(found) = remove_undeclared(item, rest, format!("{at}[{i}]"), drop) {
                return Some(found);
            }
        }
        return None;
    }
    let map = value.as_object_mut()?;
    if rest.is_empty() {
        if !map.contains_key(*first) {
            return None;
        }
        if drop {
            map.remove(*first);
            return None;
        }
        return Some(format!("{at}.{first}"));
    }
    remove_undeclared(map.get_mut(*first)?, rest, format!("{at}.{first}"), drop)
}
