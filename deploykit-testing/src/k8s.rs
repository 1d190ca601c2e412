//! An in-memory Kubernetes API server for tests: [`FakeApiServer`].
//!
//! It is a [`tower::Service`] that [`kube::Client::new`] accepts, so code under test talks to
//! it through the same `kube::Api` calls it makes against a real cluster — no network, no
//! kind cluster, deterministic. Enable it with the `k8s` feature of `deploykit-testing`.
//!
//! Tests that only check which requests a call sends (a field manager, a query parameter, a
//! patch body, what follows a `429`) need no store: they are better written in kube-rs'
//! `ApiServerVerifier` style, a [`kube::Client`] over a `tower_test::mock` service and a task
//! that asserts each request in turn and answers it. [`RecordedRequest::read`] decodes a
//! request for such a task the way this server records them.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use deploykit_testing::k8s::FakeApiServer;
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use kube::api::{Api, PostParams};
//!
//! let server = FakeApiServer::new();
//! let configmaps: Api<ConfigMap> = Api::namespaced(server.client(), "shop");
//! let mut cm = ConfigMap::default();
//! cm.metadata.name = Some("settings".into());
//! configmaps.create(&PostParams::default(), &cm).await.unwrap();
//! assert_eq!(server.objects("configmaps").len(), 1);
//! # }
//! ```
//!
//! # What it serves
//!
//! Any resource, generically by URL: `/api/v1/namespaces/{ns}/{plural}[/{name}[/{sub}]]` and
//! `/apis/{group}/{version}/namespaces/{ns}/{plural}[/{name}[/{sub}]]`, plus the cluster-scoped
//! forms without `namespaces/{ns}` (which, for a collection, lists every namespace). Objects are
//! keyed by group, plural, namespace and name — not by version, so an object written as
//! `v1beta1` reads back as `v1`. Unknown API groups are served like installed CRDs unless
//! hidden with [`FakeApiServer::hide_api_group`], which makes every request to the group answer
//! 404 like a cluster without it.
//!
//! - `GET` one object (404 `NotFound` if missing), or a list, filtered by `labelSelector`
//!   (`k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`) and `fieldSelector`
//!   (`path=value`, `path!=value` on dotted paths such as `metadata.name`); no paging (`limit`
//!   is ignored, every match is returned).
//! - `POST` creates (409 `AlreadyExists`); `metadata.generateName` is honoured.
//! - `PUT` replaces (409 `Conflict` when the body's `metadata.resourceVersion` is set and stale;
//!   404 when missing).
//! - `PATCH` with `application/apply-patch+yaml` (server-side apply, JSON bodies only),
//!   `application/merge-patch+json` (RFC 7386) or `application/strategic-merge-patch+json`
//!   (treated as a merge patch: lists are replaced, not merged by key). JSON patches answer 415.
//! - `DELETE` one object (404 if missing; `preconditions` in the body are checked, 409 on a
//!   mismatch) or a collection by `labelSelector`/`fieldSelector`. Deleting an object deletes the
//!   objects whose `ownerReferences` name its uid, as the garbage collector would.
//! - The `status` subresource (`GET`/`PUT`/`PATCH` change only `.status`; writes to the main
//!   resource keep the stored status) and the `scale` subresource of Deployments.
//! - `dryRun` on writes: validated and answered, not stored.
//! - `GET /version` answers as Kubernetes 1.33.
//! - The `log` subresource of pods (`GET .../pods/{name}/log`) serves the lines appended with
//!   [`FakeApiServer::append_pod_log`], with `container`, `timestamps` (each line prefixed
//!   with its time as the kubelet writes it, RFC 3339 with nine fractional digits),
//!   `sinceTime`, `sinceSeconds`, `tailLines` and `limitBytes`; `follow=true` answers a
//!   streaming body that stays open and carries lines appended later, until
//!   [`FakeApiServer::cut_log_streams`], the pod's deletion or the client hanging up. A missing
//!   pod answers 404; a container that has not started (no status, or `waiting` without an
//!   earlier terminated run) answers 400 `container "c" in pod "p" is waiting to start:
//!   <reason>`, as the real server does. A deleted pod's logs go with it.
//!
//! Every write bumps one global `resourceVersion` counter and sets `metadata.resourceVersion`,
//! `uid`, `creationTimestamp` (wall clock, whole seconds) and `generation` (1 on create, +1 when
//! anything outside `metadata` and `status` changes), and `metadata.managedFields` (one entry per
//! field manager, `FieldsV1`). Some server behaviour is imitated: a Secret's `stringData` is
//! folded into base64 `data`; a Service gets `spec.clusterIP`/`clusterIPs` (`10.96.x.y`) unless
//! it is headless or `ExternalName`; the data of an `immutable: true` ConfigMap or Secret cannot
//! change (422 `Invalid`).
//!
//! # Server-side apply
//!
//! Each object remembers which field manager owns which fields (leaf paths; lists are atomic).
//! An apply by manager `M` (the `fieldManager` query parameter, required) fails with 409
//! `Conflict` naming the other manager when another manager owns a field that `M` sets to a
//! different value, unless `force=true` (then `M` takes the field over). Otherwise the applied
//! fields are merged over the stored object (objects recursively, anything else replaced), and
//! fields `M` applied before but no longer applies are removed unless another manager owns
//! them. `PUT`, `POST` and merge patches are "Update" operations: their manager (the
//! `fieldManager` parameter, else `unknown`) takes ownership of the fields they change.
//!
//! # Watches
//!
//! `?watch=true` answers a stream of newline-separated watch events, as the real server does:
//! without `resourceVersion` (or with `0`, or with `sendInitialEvents=true`) first an `ADDED`
//! event per existing match (then, for `sendInitialEvents`, the `initial-events-end` bookmark);
//! with a `resourceVersion`, the remembered events after it (the last 256 events are kept;
//! older ones answer an `ERROR` event with a 410 `Expired` status). Then every change as it
//! happens, until `timeoutSeconds` (default 1800) passes or the client hangs up. `MODIFIED`
//! events are sent only for objects that match the selector after the change.
//!
//! # Simulated controller
//!
//! When a `Deployment` (`apps`) is written, the fake keeps Pods for it, as its ReplicaSet
//! would: `<deployment>-<n>` (`n` from 0) with the template's labels and spec, an owner
//! reference to the Deployment, `status.phase: Running`, a `Ready` condition `"True"` and
//! running `containerStatuses` with `restartCount: 0`. Their number follows `spec.replicas`
//! (default 1): scaling down removes the highest `n` first, scaling up fills the lowest free
//! `n`. A changed pod template replaces every pod at once. A deleted pod is replaced (new uid);
//! deleting the Deployment deletes its pods. The Deployment's `status` (`observedGeneration`,
//! `replicas`, `updatedReplicas`, `readyReplicas`, `availableReplicas`, `Available` condition)
//! follows its pods' `Ready` conditions, including those edited with
//! [`FakeApiServer::set_pod_status`]. Responses to writes carry the object as it is after the
//! controller ran.
//!
//! # Knobs
//!
//! [`FakeApiServer::fail_next`] injects errors (and
//! [`FakeApiServer::fail_next_after_commit`] loses responses of writes that took effect),
//! [`FakeApiServer::before_next`] runs a hook before a request (to stage races),
//! [`FakeApiServer::edit_object`] writes behind the client's back,
//! [`FakeApiServer::set_pod_status`] edits a pod, [`FakeApiServer::requests`] logs every
//! request, [`FakeApiServer::objects`] lists what is stored,
//! [`FakeApiServer::undeclare_field`] makes a field unknown to a resource's schema (dropped,
//! or refused under `fieldValidation=Strict`); [`FakeApiServer::hide_api_group`] uninstalls an
//! API group,
//! [`FakeApiServer::append_pod_log`] (and [`FakeApiServer::append_pod_log_at`]) writes
//! container output, [`FakeApiServer::cut_log_streams`] drops every open log stream and
//! [`FakeApiServer::open_log_streams`] counts them.
//!
//! # Layout
//!
//! This module holds the server's face (the knobs, the request log, the [`tower::Service`])
//! and owns its state. Below it, in layers, each importing only the layers under it:
//!
//! 1. `request` parses what a request asks for (pure);
//! 2. `patch` merges patches and tracks field ownership, `select` matches label and field
//!    selectors (pure helpers over JSON);
//! 3. `store` keeps the objects, the resourceVersion and the history of changes, and applies
//!    writes; it calls nothing above it, but tells registered observers of each change;
//! 4. `watch` streams events (each open watch observes the store), `logs` keeps pod logs and
//!    streams them (observing the store for deleted pods), `controller` simulates the
//!    Deployment controller (run on the store after each write it reacts to);
//! 5. `routes` maps verbs and paths to handlers, running the controller after their writes.

mod controller;
mod logs;
mod patch;
mod request;
mod routes;
mod select;
mod store;
mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use serde_json::{Value, json};

use self::controller::Controller;
use self::request::{Fail, Key, Params};
use self::routes::{Api, Reply};
use self::store::Store;

/// The response body type of [`FakeApiServer`].
pub type FakeBody = BoxBody<Bytes, Infallible>;

/// An in-memory Kubernetes API server (see the [module docs](self) for what it implements).
///
/// Clones share the same objects, so keep one to inspect what the code under test did.
#[derive(Clone, Default)]
pub struct FakeApiServer {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("FakeApiServer")
            .field("objects", &state.store.objects.len())
            .field("resource_version", &state.store.rv)
            .finish()
    }
}

/// One request as received: by [`FakeApiServer`] (see [`FakeApiServer::requests`]), or by a
/// test's own mock API server through [`RecordedRequest::read`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct RecordedRequest {
    /// `GET`, `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: String,
    /// The URL path, e.g. `/api/v1/namespaces/shop/configmaps/settings`.
    pub path: String,
    /// The raw query string (percent-encoded), empty if none.
    pub query: String,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The body, if it was non-empty JSON.
    pub body: Option<Value>,
}

impl RecordedRequest {
    /// Reads `request`, its body to the end, as a record: what a verifier task over a
    /// `tower_test::mock` service asserts on before it answers.
    ///
    /// # Errors
    ///
    /// If the body cannot be read.
    pub async fn read(request: Request<kube::client::Body>) -> Result<Self, kube::Error> {
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await?;
        Ok(Self::new(&parts, serde_json::from_slice(&bytes).ok()))
    }

    fn new(parts: &http::request::Parts, body: Option<Value>) -> Self {
        RecordedRequest {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or("").to_string(),
            content_type: parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            body,
        }
    }

    /// The decoded value of query parameter `key`, e.g. `fieldManager`.
    pub fn param(&self, key: &str) -> Option<String> {
        Params::parse(&self.query).get(key).map(str::to_string)
    }

    /// Every query parameter, decoded.
    pub fn params(&self) -> BTreeMap<String, String> {
        Params::parse(&self.query).0
    }
}

/// What a [`FakeApiServer`] holds behind its lock.
#[derive(Default)]
struct State {
    store: Store,
    controller: Controller,
    failures: Vec<Failure>,
    hooks: Vec<PendingHook>,
    requests: Vec<RecordedRequest>,
    hidden_groups: BTreeSet<String>,
    /// Fields the schema of a resource (by plural) does not declare, as dotted paths with `*`
    /// for every list item.
    undeclared: Vec<(String, String)>,
    logs: logs::Logs,
}

impl State {
    /// Stores `object` at `key` as a write behind the client's back (new resourceVersion, a
    /// watch event) and lets the controller react.
    fn edit(&mut self, key: &Key, object: Value) {
        self.store.store_raw(key, object, "MODIFIED");
        let stored = self.store.objects[key].object.clone();
        self.controller.react(&mut self.store, key, &stored);
    }
}

struct Failure {
    method: String,
    path_prefix: String,
    code: u16,
    times: usize,
    after_commit: bool,
}

type Hook = Box<dyn FnOnce(&FakeApiServer) + Send>;

struct PendingHook {
    method: String,
    path_prefix: String,
    hook: Hook,
}

fn matches_rule(rule_method: &str, prefix: &str, method: &str, path: &str) -> bool {
    (rule_method == "*" || rule_method == method) && path.starts_with(prefix)
}

impl FakeApiServer {
    /// An empty API server.
    pub fn new() -> Self {
        Self::default()
    }

    /// A [`kube::Client`] talking to this server, with default namespace `default`. Call it
    /// inside a Tokio runtime (the client spawns a task).
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.clone(), "default")
    }

    /// Answer the next `times` requests whose method is `method` (`"*"` for any) and whose
    /// path starts with `path_prefix` with an error `Status` of code `status` (e.g. 429, 500,
    /// 409, 410). The request is logged but has no effect.
    pub fn fail_next(&self, method: &str, path_prefix: &str, status: u16, times: usize) {
        self.lock().failures.push(Failure {
            method: method.to_ascii_uppercase(),
            path_prefix: path_prefix.to_string(),
            code: status,
            times,
            after_commit: false,
        });
    }

    /// Like [`fail_next`](Self::fail_next), but the request takes effect first and only its
    /// response is replaced by the error: a response lost after the write, as when a
    /// connection drops or etcd times out after committing.
    pub fn fail_next_after_commit(
        &self,
        method: &str,
        path_prefix: &str,
        status: u16,
        times: usize,
    ) {
        self.lock().failures.push(Failure {
            method: method.to_ascii_uppercase(),
            path_prefix: path_prefix.to_string(),
            code: status,
            times,
            after_commit: true,
        });
    }

    /// Run `hook` once, just before the next request whose method is `method` (`"*"` for any)
    /// and whose path starts with `path_prefix` is handled — e.g. to make another writer win a
    /// race between a client's read and its write (see [`edit_object`](Self::edit_object)).
    pub fn before_next(
        &self,
        method: &str,
        path_prefix: &str,
        hook: impl FnOnce(&FakeApiServer) + Send + 'static,
    ) {
        self.lock().hooks.push(PendingHook {
            method: method.to_ascii_uppercase(),
            path_prefix: path_prefix.to_string(),
            hook: Box::new(hook),
        });
    }

    /// Edit the stored object `plural`/`name` in `namespace` (`""` for cluster-scoped) in
    /// place, as a write by someone else: new resourceVersion, a watch event, the simulated
    /// controller.
    ///
    /// # Panics
    ///
    /// If there is no such object.
    #[track_caller]
    pub fn edit_object(
        &self,
        plural: &str,
        namespace: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) {
        let mut state = self.lock();
        let key = state
            .store
            .objects
            .keys()
            .find(|k| k.plural == plural && k.namespace == namespace && k.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("the fake API server has no {plural} {namespace}/{name}"));
        let mut object = state.store.objects[&key].object.clone();
        f(&mut object);
        state.edit(&key, object);
    }

    /// Edit the `status` of the pod `name` (in whichever namespace has it), e.g. to make it
    /// crash-loop. Counts as a write (new resourceVersion, a watch event) and updates the
    /// status of the Deployment that owns the pod.
    ///
    /// # Panics
    ///
    /// If no pod is called `name`.
    #[track_caller]
    pub fn set_pod_status(&self, name: &str, f: impl FnOnce(&mut Value)) {
        let mut state = self.lock();
        let key = state
            .store
            .objects
            .keys()
            .find(|k| k.group.is_empty() && k.plural == "pods" && k.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("the fake API server has no pod named {name:?}"));
        let mut object = state.store.objects[&key].object.clone();
        let status = object
            .as_object_mut()
            .expect("stored objects are JSON objects")
            .entry("status")
            .or_insert_with(|| json!({}));
        f(status);
        state.edit(&key, object);
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// Forget the request log.
    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    /// Every stored object of resource `plural` (e.g. `"pods"`), in every group and namespace,
    /// ordered by namespace and name.
    pub fn objects(&self, plural: &str) -> Vec<Value> {
        let state = self.lock();
        let mut out: Vec<(&Key, &Value)> = state
            .store
            .objects
            .iter()
            .filter(|(k, _)| k.plural == plural)
            .map(|(k, s)| (k, &s.object))
            .collect();
        out.sort_by(|a, b| (&a.0.namespace, &a.0.name).cmp(&(&b.0.namespace, &b.0.name)));
        out.into_iter().map(|(_, v)| v.clone()).collect()
    }

    /// The stored object `plural`/`name` in `namespace` (`""` for cluster-scoped), if any.
    pub fn object(&self, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let state = self.lock();
        state
            .store
            .objects
            .iter()
            .find(|(k, _)| k.plural == plural && k.namespace == namespace && k.name == name)
            .map(|(_, s)| s.object.clone())
    }

    /// Make the schema of resource `plural` lack the field at `path` (dotted, `*` for every
    /// item of a list, e.g. `spec.rules.*.filters.*.requestMirror.percent`), as an older CRD
    /// version does: a write with `fieldValidation=Strict` that sets it answers 400 naming the
    /// field (`.spec.rules[0]…: field not declared in schema`); any other write has it dropped
    /// without a word, as the real server does by default (only a warning header).
    pub fn undeclare_field(&self, plural: &str, path: &str) {
        self.lock()
            .undeclared
            .push((plural.to_string(), path.to_string()));
    }

    /// Make API group `group` (e.g. `networking.istio.io`) absent: every request to it answers
    /// 404, as on a cluster without the CRDs.
    pub fn hide_api_group(&self, group: &str) {
        self.lock().hidden_groups.insert(group.to_string());
    }

    /// Appends `lines` to the output of container `container` of pod `pod` in `namespace`,
    /// each stamped with the server's wall-clock time in nanoseconds (strictly increasing
    /// across the server, so lines appended one after the other sort in that order), and sends
    /// them to the open `follow` streams of that container. A line with `\n` in it is several
    /// lines.
    ///
    /// # Panics
    ///
    /// If there is no such pod, or it has no such container.
    #[track_caller]
    pub fn append_pod_log<S: AsRef<str>>(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        lines: impl IntoIterator<Item = S>,
    ) {
        self.append_log(namespace, pod, container, None, lines);
    }

    /// Like [`append_pod_log`](Self::append_pod_log), but every line is stamped
    /// `timestamp_ns` (nanoseconds since the Unix epoch): for lines that share a timestamp, as
    /// a container writing fast can produce. Later automatic stamps stay after it.
    ///
    /// # Panics
    ///
    /// If there is no such pod, or it has no such container.
    #[track_caller]
    pub fn append_pod_log_at<S: AsRef<str>>(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        timestamp_ns: i64,
        lines: impl IntoIterator<Item = S>,
    ) {
        self.append_log(namespace, pod, container, Some(timestamp_ns), lines);
    }

    #[track_caller]
    fn append_log<S: AsRef<str>>(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        at: Option<i64>,
        lines: impl IntoIterator<Item = S>,
    ) {
        let lines: Vec<String> = lines.into_iter().map(|l| l.as_ref().to_string()).collect();
        let mut state = self.lock();
        let state = &mut *state;
        if let Err(e) = state
            .logs
            .append(&mut state.store, namespace, pod, container, at, &lines)
        {
            panic!("append_pod_log: {e}");
        }
    }

    /// Ends every open `follow` log stream at once, as a dropped connection would: what was
    /// on its way to the client is lost but for the first half of the next chunk (so a line
    /// may arrive cut off, without its newline), then the stream ends. The logs stay.
    pub fn cut_log_streams(&self) {
        self.lock().logs.cut();
    }

    /// How many `follow` log streams are open: those not cut, not ended by their pod's
    /// deletion and whose client has not hung up.
    pub fn open_log_streams(&self) -> usize {
        self.lock().logs.open_streams()
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().store.rv
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn handle(&self, parts: &http::request::Parts, body: &[u8]) -> Response<FakeBody> {
        let (method, path) = (&parts.method, parts.uri.path());
        let parsed: Option<std::result::Result<Value, serde_json::Error>> =
            (!body.is_empty()).then(|| serde_json::from_slice(body));
        let recorded = RecordedRequest::new(
            parts,
            parsed.as_ref().and_then(|r| r.as_ref().ok().cloned()),
        );
        let params = Params::parse(&recorded.query);
        let hook = {
            let mut state = self.lock();
            let at = state
                .hooks
                .iter()
                .position(|h| matches_rule(&h.method, &h.path_prefix, method.as_str(), path));
            at.map(|i| state.hooks.remove(i).hook)
        };
        if let Some(hook) = hook {
            hook(self);
        }
        let content_type = recorded.content_type.clone();
        let mut state = self.lock();
        state.requests.push(recorded);
        if let Some(code) = state.take_failure(method.as_str(), path, false) {
            return fail_response(&Fail::for_code(
                code,
                format!("injected failure {code} for {method} {path}"),
            ));
        }
        let body = match parsed {
            None => None,
            Some(Ok(v)) => Some(v),
            Some(Err(e)) => {
                return fail_response(&Fail::bad_request(format!(
                    "the request body is not JSON ({e}); the fake API server reads JSON only \
                     (which is also YAML)"
                )));
            }
        };
        let state = &mut *state;
        let reply = Api {
            store: &mut state.store,
            controller: &mut state.controller,
            hidden_groups: &state.hidden_groups,
            undeclared: &state.undeclared,
            logs: &state.logs,
        }
        .dispatch(method, path, &params, content_type.as_deref(), body);
        if let Some(code) = state.take_failure(method.as_str(), path, true) {
            return fail_response(&Fail::for_code(
                code,
                format!("injected failure {code} for {method} {path} (after it took effect)"),
            ));
        }
        match reply {
            Ok(Reply::Json(code, v)) => json_response(code, &v),
            Ok(Reply::Stream(body)) => Response::builder()
                .status(StatusCode::OK)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body)
                .expect("valid response"),
            Err(f) => fail_response(&f),
        }
    }
}

impl State {
    fn take_failure(&mut self, method: &str, path: &str, after_commit: bool) -> Option<u16> {
        let rule = self.failures.iter_mut().find(|f| {
            f.times > 0
                && f.after_commit == after_commit
                && matches_rule(&f.method, &f.path_prefix, method, path)
        })?;
        rule.times -= 1;
        let code = rule.code;
        self.failures.retain(|f| f.times > 0);
        Some(code)
    }
}

impl tower::Service<Request<kube::client::Body>> for FakeApiServer {
    type Response = Response<FakeBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<kube::client::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes = match body.collect_bytes().await {
                Ok(b) => b,
                Err(e) => {
                    return Ok(fail_response(&Fail::bad_request(format!(
                        "unreadable request body: {e}"
                    ))));
                }
            };
            Ok(this.handle(&parts, &bytes))
        })
    }
}

fn json_response(code: u16, v: &Value) -> Response<FakeBody> {
    let bytes = serde_json::to_vec(v).expect("JSON serialises");
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(bytes)).boxed())
        .expect("valid response")
}

fn fail_response(f: &Fail) -> Response<FakeBody> {
    json_response(f.code, &f.status())
}
