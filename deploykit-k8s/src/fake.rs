//! An in-memory Kubernetes API server for tests: [`FakeApiServer`].
//!
//! It is a [`tower::Service`] that [`kube::Client::new`] accepts, so code under test talks to
//! it through the same `kube::Api` calls it makes against a real cluster — no network, no
//! kind cluster, deterministic. Enable it with the `fake` feature of `deploykit-k8s`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use deploykit_k8s::fake::FakeApiServer;
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
//! [`FakeApiServer::set_pod_status`] edits a pod, [`FakeApiServer::requests`] logs every request, [`FakeApiServer::objects`] lists what
//! is stored, [`FakeApiServer::hide_api_group`] uninstalls an API group.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use serde_json::{Map, Value, json};

/// The response body type of [`FakeApiServer`].
pub type FakeBody = BoxBody<Bytes, Infallible>;

/// How many watch events are remembered for watches that resume from a `resourceVersion`.
const HISTORY: usize = 256;

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
            .field("objects", &state.objects.len())
            .field("resource_version", &state.rv)
            .finish()
    }
}

/// One request the fake received, for assertions.
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
    /// The decoded value of query parameter `key`, e.g. `fieldManager`.
    pub fn param(&self, key: &str) -> Option<String> {
        Params::parse(&self.query).get(key).map(str::to_string)
    }
}

#[derive(Default)]
struct State {
    rv: u64,
    serial: u64,
    objects: BTreeMap<Key, Stored>,
    templates: BTreeMap<Key, Value>,
    failures: Vec<Failure>,
    hooks: Vec<PendingHook>,
    requests: Vec<RecordedRequest>,
    hidden_groups: BTreeSet<String>,
    watchers: Vec<Watcher>,
    history: VecDeque<Event>,
    history_floor: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    group: String,
    plural: String,
    namespace: String,
    name: String,
}

#[derive(Clone, Debug)]
struct Stored {
    object: Value,
    managers: BTreeMap<String, Manager>,
}

type FieldPath = Vec<String>;

#[derive(Clone, Debug)]
struct Manager {
    apply: bool,
    api_version: String,
    time: String,
    fields: BTreeSet<FieldPath>,
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

struct Event {
    rv: u64,
    kind: &'static str,
    key: Key,
    object: Value,
}

struct Watcher {
    group: String,
    plural: String,
    namespace: Option<String>,
    api_version: String,
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
    tx: tokio::sync::mpsc::UnboundedSender<Bytes>,
}

/// Where a request points.
#[derive(Clone, Debug)]
struct Target {
    group: String,
    version: String,
    namespace: Option<String>,
    plural: String,
    name: Option<String>,
    sub: Option<String>,
}

impl Target {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    fn key(&self, name: &str) -> Key {
        Key {
            group: self.group.clone(),
            plural: self.plural.clone(),
            namespace: self.namespace.clone().unwrap_or_default(),
            name: name.to_string(),
        }
    }

    fn is(&self, group: &str, plural: &str) -> bool {
        self.group == group && self.plural == plural
    }
}

/// A failed request: becomes a `Status` response.
#[derive(Debug)]
struct Fail {
    code: u16,
    reason: &'static str,
    message: String,
}

impl Fail {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Fail {
            code,
            reason,
            message: message.into(),
        }
    }

    fn for_code(code: u16, message: impl Into<String>) -> Self {
        let reason = match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            405 => "MethodNotAllowed",
            409 => "Conflict",
            410 => "Expired",
            415 => "UnsupportedMediaType",
            422 => "Invalid",
            429 => "TooManyRequests",
            500 => "InternalError",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "Unknown",
        };
        Fail::new(code, reason, message)
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Fail::new(400, "BadRequest", message)
    }

    fn no_route() -> Self {
        Fail::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    fn not_found(t: &Target, name: &str) -> Self {
        Fail::new(404, "NotFound", format!("{} {name:?} not found", t.plural))
    }

    fn stale(t: &Target, name: &str) -> Self {
        Fail::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {name:?}: the object has been modified; \
                 please apply your changes to the latest version and try again",
                t.plural
            ),
        )
    }

    fn status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }
}

enum Reply {
    Json(u16, Value),
    Stream(FakeBody),
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
            .objects
            .keys()
            .find(|k| k.plural == plural && k.namespace == namespace && k.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("the fake API server has no {plural} {namespace}/{name}"));
        let mut object = state.objects[&key].object.clone();
        f(&mut object);
        state.store_raw(&key, object, "MODIFIED");
        if key.group == "apps" && key.plural == "deployments" {
            state.reconcile_deployment(&key.namespace, &key.name);
        } else if key.group.is_empty()
            && key.plural == "pods"
            && let Some(owner) = owner_deployment(&state.objects[&key].object)
        {
            state.reconcile_deployment(&key.namespace, &owner);
        }
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
            .objects
            .keys()
            .find(|k| k.group.is_empty() && k.plural == "pods" && k.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("the fake API server has no pod named {name:?}"));
        let mut object = state.objects[&key].object.clone();
        let status = object
            .as_object_mut()
            .expect("stored objects are JSON objects")
            .entry("status")
            .or_insert_with(|| json!({}));
        f(status);
        state.store_raw(&key, object, "MODIFIED");
        if let Some(owner) = owner_deployment(&state.objects[&key].object) {
            state.reconcile_deployment(&key.namespace, &owner);
        }
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
            .objects
            .iter()
            .find(|(k, _)| k.plural == plural && k.namespace == namespace && k.name == name)
            .map(|(_, s)| s.object.clone())
    }

    /// Make API group `group` (e.g. `networking.istio.io`) absent: every request to it answers
    /// 404, as on a cluster without the CRDs.
    pub fn hide_api_group(&self, group: &str) {
        self.lock().hidden_groups.insert(group.to_string());
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn handle(
        &self,
        method: &Method,
        uri: &http::Uri,
        content_type: Option<String>,
        body: &[u8],
    ) -> Response<FakeBody> {
        let path = uri.path().to_string();
        let query = uri.query().unwrap_or("").to_string();
        let params = Params::parse(&query);
        let parsed: Option<std::result::Result<Value, serde_json::Error>> =
            (!body.is_empty()).then(|| serde_json::from_slice(body));
        let hook = {
            let mut state = self.lock();
            let at = state
                .hooks
                .iter()
                .position(|h| matches_rule(&h.method, &h.path_prefix, method.as_str(), &path));
            at.map(|i| state.hooks.remove(i).hook)
        };
        if let Some(hook) = hook {
            hook(self);
        }
        let mut state = self.lock();
        state.requests.push(RecordedRequest {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            content_type: content_type.clone(),
            body: parsed.as_ref().and_then(|r| r.as_ref().ok().cloned()),
        });
        if let Some(code) = state.take_failure(method.as_str(), &path, false) {
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
        let reply = state.dispatch(method, &path, &params, content_type.as_deref(), body);
        if let Some(code) = state.take_failure(method.as_str(), &path, true) {
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
            let content_type = parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            Ok(this.handle(&parts.method, &parts.uri, content_type, &bytes))
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

// ---------------------------------------------------------------------------------------------
// Request plumbing

struct Params(BTreeMap<String, String>);

impl Params {
    fn parse(query: &str) -> Self {
        Params(
            query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn flag(&self, key: &str) -> bool {
        self.get(key) == Some("true")
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_target(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => (String::new(), version.to_string(), rest),
        ["apis", group, version, rest @ ..] => (group.to_string(), version.to_string(), rest),
        _ => return None,
    };
    let owned = |s: &&str| s.to_string();
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [plural] => (plural, None, None),
        [plural, name] => (plural, Some(owned(name)), None),
        [plural, name, sub] => (plural, Some(owned(name)), Some(owned(sub))),
        _ => return None,
    };
    if plural.is_empty() || name.as_deref() == Some("") {
        return None;
    }
    Some(Target {
        group,
        version,
        namespace,
        plural: plural.to_string(),
        name,
        sub,
    })
}

fn kind_of_plural(plural: &str) -> Option<&'static str> {
    Some(match plural {
        "pods" => "Pod",
        "configmaps" => "ConfigMap",
        "secrets" => "Secret",
        "services" => "Service",
        "serviceaccounts" => "ServiceAccount",
        "namespaces" => "Namespace",
        "events" => "Event",
        "endpoints" => "Endpoints",
        "persistentvolumeclaims" => "PersistentVolumeClaim",
        "deployments" => "Deployment",
        "replicasets" => "ReplicaSet",
        "statefulsets" => "StatefulSet",
        "daemonsets" => "DaemonSet",
        "jobs" => "Job",
        "cronjobs" => "CronJob",
        "horizontalpodautoscalers" => "HorizontalPodAutoscaler",
        "poddisruptionbudgets" => "PodDisruptionBudget",
        "networkpolicies" => "NetworkPolicy",
        "ingresses" => "Ingress",
        "leases" => "Lease",
        "endpointslices" => "EndpointSlice",
        "httproutes" => "HTTPRoute",
        "gateways" => "Gateway",
        "virtualservices" => "VirtualService",
        "destinationrules" => "DestinationRule",
        "servicemonitors" => "ServiceMonitor",
        _ => return None,
    })
}

fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let text = deploykit_core::Timestamp::from_millis(secs * 1000).to_string();
    text.replace(".000Z", "Z")
}

// ---------------------------------------------------------------------------------------------
// Selectors

#[derive(Clone, Debug)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

fn split_top_level(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c);
            }
            ')' => {
                depth = depth.saturating_sub(1);
                cur.push(c);
            }
            ',' if depth == 0 => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

fn parse_set(key: &str, rest: &str) -> std::result::Result<(String, Vec<String>), Fail> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| Fail::bad_request(format!("unable to parse requirement: {rest:?}")))?;
    Ok((
        key.trim().to_string(),
        inner.split(',').map(|v| v.trim().to_string()).collect(),
    ))
}

fn parse_label_selector(s: &str) -> std::result::Result<Vec<LabelReq>, Fail> {
    split_top_level(s)
        .into_iter()
        .map(|term| {
            if let Some(key) = term.strip_prefix('!') {
                return Ok(LabelReq::NotExists(key.trim().to_string()));
            }
            if let Some((key, rest)) = term.split_once(" notin ") {
                let (k, vs) = parse_set(key, rest)?;
                return Ok(LabelReq::NotIn(k, vs));
            }
            if let Some((key, rest)) = term.split_once(" in ") {
                let (k, vs) = parse_set(key, rest)?;
                return Ok(LabelReq::In(k, vs));
            }
            if let Some((k, v)) = term.split_once("!=") {
                return Ok(LabelReq::NotEq(k.trim().into(), v.trim().into()));
            }
            if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                return Ok(LabelReq::Eq(k.trim().into(), v.trim().into()));
            }
            if term.contains(|c: char| c.is_whitespace() || "()<>".contains(c)) {
                return Err(Fail::bad_request(format!(
                    "unable to parse requirement: {term:?}"
                )));
            }
            Ok(LabelReq::Exists(term))
        })
        .collect()
}

fn labels_match(object: &Value, reqs: &[LabelReq]) -> bool {
    let labels = object
        .pointer("/metadata/labels")
        .and_then(Value::as_object);
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    reqs.iter().all(|r| match r {
        LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
        LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
        LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        LabelReq::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
        LabelReq::Exists(k) => get(k).is_some(),
        LabelReq::NotExists(k) => get(k).is_none(),
    })
}

#[derive(Clone, Debug)]
struct FieldReq {
    path: Vec<String>,
    value: String,
    equal: bool,
}

fn parse_field_selector(s: &str) -> std::result::Result<Vec<FieldReq>, Fail> {
    split_top_level(s)
        .into_iter()
        .map(|term| {
            let (path, value, equal) = if let Some((p, v)) = term.split_once("!=") {
                (p, v, false)
            } else if let Some((p, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (p, v, true)
            } else {
                return Err(Fail::bad_request(format!(
                    "invalid field selector term {term:?}"
                )));
            };
            Ok(FieldReq {
                path: path.trim().split('.').map(str::to_string).collect(),
                value: value.trim().to_string(),
                equal,
            })
        })
        .collect()
}

fn fields_match(object: &Value, reqs: &[FieldReq]) -> bool {
    reqs.iter().all(|r| {
        let actual = get_path(object, &r.path).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        let actual = actual.unwrap_or_default();
        (actual == r.value) == r.equal
    })
}

// ---------------------------------------------------------------------------------------------
// JSON helpers

fn get_path<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, seg| v.get(seg))
}

fn meta_str<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    v.get("metadata")?.get(field)?.as_str()
}

fn metadata_mut(v: &mut Value) -> &mut Map<String, Value> {
    let obj = v.as_object_mut().expect("objects are JSON objects");
    let meta = obj.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    meta.as_object_mut().expect("metadata is an object")
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
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
fn remove_path(v: &mut Value, path: &[String]) {
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
fn owned_leaves(v: &Value) -> BTreeSet<FieldPath> {
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
fn overlapping<'a>(set: &'a BTreeSet<FieldPath>, path: &[String]) -> Vec<&'a FieldPath> {
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
fn apply_merge(target: &mut Value, applied: &Value) {
    merge_patch(target, applied);
}

fn fields_v1(paths: &BTreeSet<FieldPath>) -> Value {
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

fn strip_nulls(v: &mut Value) {
    if let Value::Object(m) = v {
        m.retain(|_, c| !c.is_null());
        for c in m.values_mut() {
            strip_nulls(c);
        }
    }
}

fn owner_deployment(pod: &Value) -> Option<String> {
    pod.pointer("/metadata/ownerReferences")?
        .as_array()?
        .iter()
        .find(|r| r.get("kind").and_then(Value::as_str) == Some("Deployment"))
        .and_then(|r| r.get("name")?.as_str().map(str::to_string))
}

/// Whether two objects differ outside `metadata` and `status` (a change that bumps
/// `generation`).
fn spec_changed(a: &Value, b: &Value) -> bool {
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

fn check_precondition(t: &Target, name: &str, sent: &Value, stored: &Value) -> Result<(), Fail> {
    match meta_str(sent, "resourceVersion") {
        Some(rv) if !rv.is_empty() && Some(rv) != meta_str(stored, "resourceVersion") => {
            Err(Fail::stale(t, name))
        }
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// The server proper

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

    fn next_serial(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }

    fn kind_for(&self, t: &Target) -> String {
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

    fn present(&self, t: &Target, object: &Value) -> Value {
        let mut v = object.clone();
        if let Some(o) = v.as_object_mut() {
            o.insert("apiVersion".into(), Value::String(t.api_version()));
            if !o.contains_key("kind") {
                o.insert("kind".into(), Value::String(self.kind_for(t)));
            }
        }
        v
    }

    fn dispatch(
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
        let name = t.name.clone();
        match (method.clone(), name, t.sub.as_deref()) {
            (Method::GET, None, _) if q.flag("watch") => self.watch(&t, q),
            (Method::GET, None, _) => self.list(&t, q).map(|v| Reply::Json(200, v)),
            (Method::GET, Some(name), None | Some("status")) => {
                let stored = self.get(&t, &name)?;
                Ok(Reply::Json(200, self.present(&t, &stored)))
            }
            (Method::GET, Some(name), Some("scale")) => {
                let stored = self.get(&t, &name)?;
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

    fn get(&self, t: &Target, name: &str) -> Result<Value, Fail> {
        self.objects
            .get(&t.key(name))
            .map(|s| s.object.clone())
            .ok_or_else(|| Fail::not_found(t, name))
    }

    fn matching(&self, t: &Target, q: &Params) -> Result<Vec<(Key, Value)>, Fail> {
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

    fn list_value(&self, t: &Target, items: Vec<Value>) -> Value {
        json!({
            "apiVersion": t.api_version(),
            "kind": format!("{}List", self.kind_for(t)),
            "metadata": { "resourceVersion": self.rv.to_string() },
            "items": items,
        })
    }

    fn list(&self, t: &Target, q: &Params) -> Result<Value, Fail> {
        let items = self
            .matching(t, q)?
            .into_iter()
            .map(|(_, v)| self.present(t, &v))
            .collect();
        Ok(self.list_value(t, items))
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
                    let name = format!("{prefix}{:05x}", self.next_serial());
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
                            self.kind_for(t)
                        ),
                    ));
                }
            },
        };
        let key = t.key(&name);
        if self.objects.contains_key(&key) {
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
        let out = self.write(t, key, object, managers, q.get("dryRun").is_some())?;
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
                let out = self.write(t, key, new, stored.managers, dry_run)?;
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
        let out = self.write(t, key, object, managers, dry_run)?;
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
        let stored = self.objects.get(&key).cloned();
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
                        let out = self.write(t, key, new, stored.managers, dry_run)?;
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
                        let out = self.write(t, key, new, managers, dry_run)?;
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
            let out = self.write(t, key, applied, managers, dry_run)?;
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
                let out = self.write(t, key, new, stored.managers, dry_run)?;
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
        let out = self.write(t, key, new, managers, dry_run)?;
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
        let out = self.write(t, key, new, managers, q.get("dryRun").is_some())?;
        Ok(Reply::Json(200, scale_of(&out)))
    }

    /// Stores `object` at `key` as a user write: server fields, validation, managed fields, a
    /// watch event and the simulated controller. Answers the object as stored.
    fn write(
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
    fn store_raw(&mut self, key: &Key, mut object: Value, event: &'static str) {
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

    fn emit(&mut self, kind: &'static str, key: &Key, object: Value) {
        let rv = self.rv;
        self.watchers.retain(|w| {
            if w.group != key.group
                || w.plural != key.plural
                || w.namespace.as_ref().is_some_and(|ns| *ns != key.namespace)
                || !labels_match(&object, &w.labels)
                || !fields_match(&object, &w.fields)
            {
                return !w.tx.is_closed();
            }
            let mut v = object.clone();
            v["apiVersion"] = Value::String(w.api_version.clone());
            w.tx.send(event_line(kind, &v)).is_ok()
        });
        self.history.push_back(Event {
            rv,
            kind,
            key: key.clone(),
            object,
        });
        while self.history.len() > HISTORY {
            if let Some(e) = self.history.pop_front() {
                self.history_floor = e.rv;
            }
        }
    }

    /// Removes an object as a write (new resourceVersion, `DELETED` event), then what it owns.
    /// A removed pod whose Deployment still exists is replaced when `respawn`.
    fn remove(&mut self, key: &Key, respawn: bool) -> Option<Value> {
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

    fn delete(
        &mut self,
        t: &Target,
        name: &str,
        q: &Params,
        body: Option<&Value>,
    ) -> Result<Reply, Fail> {
        let key = t.key(name);
        let stored = self.get(t, name)?;
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
            return Ok(Reply::Json(200, self.present(t, &stored)));
        }
        let removed = self.remove(&key, true).unwrap_or(stored);
        Ok(Reply::Json(200, self.present(t, &removed)))
    }

    fn delete_collection(&mut self, t: &Target, q: &Params) -> Result<Reply, Fail> {
        let matches = self.matching(t, q)?;
        let mut items = Vec::new();
        for (key, _) in matches {
            if let Some(v) = self.remove(&key, true) {
                items.push(self.present(t, &v));
            }
        }
        Ok(Reply::Json(200, self.list_value(t, items)))
    }

    fn watch(&mut self, t: &Target, q: &Params) -> Result<Reply, Fail> {
        let labels = parse_label_selector(q.get("labelSelector").unwrap_or(""))?;
        let fields = parse_field_selector(q.get("fieldSelector").unwrap_or(""))?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        let from: Option<u64> = q
            .get("resourceVersion")
            .filter(|v| !v.is_empty())
            .and_then(|v| v.parse().ok());
        let in_scope = |k: &Key| {
            k.group == t.group
                && k.plural == t.plural
                && t.namespace.as_ref().is_none_or(|ns| *ns == k.namespace)
        };
        let mut register = true;
        let initial = q.flag("sendInitialEvents");
        if initial || from.is_none_or(|rv| rv == 0) {
            for (_, v) in self.matching(t, q)? {
                let _ = tx.send(event_line("ADDED", &self.present(t, &v)));
            }
            if initial {
                let bookmark = json!({
                    "apiVersion": t.api_version(),
                    "kind": self.kind_for(t),
                    "metadata": {
                        "resourceVersion": self.rv.to_string(),
                        "annotations": { "k8s.io/initial-events-end": "true" },
                    },
                });
                let _ = tx.send(event_line("BOOKMARK", &bookmark));
            }
        } else if let Some(rv) = from {
            if rv < self.history_floor {
                let gone = Fail::new(
                    410,
                    "Expired",
                    format!(
                        "too old resource version: {rv} ({})",
                        self.history_floor + 1
                    ),
                );
                let _ = tx.send(event_line("ERROR", &gone.status()));
                register = false;
            } else {
                for e in self
                    .history
                    .iter()
                    .filter(|e| e.rv > rv && in_scope(&e.key))
                {
                    if labels_match(&e.object, &labels) && fields_match(&e.object, &fields) {
                        let _ = tx.send(event_line(e.kind, &self.present(t, &e.object)));
                    }
                }
            }
        }
        if register {
            self.watchers.push(Watcher {
                group: t.group.clone(),
                plural: t.plural.clone(),
                namespace: t.namespace.clone(),
                api_version: t.api_version(),
                labels,
                fields,
                tx,
            });
        } else {
            drop(tx);
        }
        let timeout = q
            .get("timeoutSeconds")
            .and_then(|s| s.parse().ok())
            .unwrap_or(1800u64);
        let (mut sender, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(64);
        tokio::spawn(async move {
            let deadline = tokio::time::sleep(Duration::from_secs(timeout));
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut deadline => break,
                    line = rx.recv() => match line {
                        Some(line) => {
                            if sender.send_data(line).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                }
            }
        });
        Ok(Reply::Stream(body.boxed()))
    }

    // -----------------------------------------------------------------------------------------
    // Simulated controller

    fn reconcile_deployment(&mut self, namespace: &str, name: &str) {
        let key = Key {
            group: "apps".into(),
            plural: "deployments".into(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        let Some(deployment) = self.objects.get(&key).map(|s| s.object.clone()) else {
            return;
        };
        let uid = meta_str(&deployment, "uid").unwrap_or_default().to_string();
        let replicas = deployment
            .pointer("/spec/replicas")
            .and_then(Value::as_u64)
            .unwrap_or(1) as usize;
        let template = deployment
            .pointer("/spec/template")
            .cloned()
            .unwrap_or(json!({}));
        let prefix = format!("{name}-");
        let owned = |objects: &BTreeMap<Key, Stored>| -> Vec<(usize, Key)> {
            let mut pods: Vec<(usize, Key)> = objects
                .iter()
                .filter(|(k, s)| {
                    k.group.is_empty()
                        && k.plural == "pods"
                        && k.namespace == namespace
                        && s.object
                            .pointer("/metadata/ownerReferences")
                            .and_then(Value::as_array)
                            .is_some_and(|refs| {
                                refs.iter().any(|r| {
                                    r.get("uid").and_then(Value::as_str) == Some(uid.as_str())
                                })
                            })
                })
                .map(|(k, _)| {
                    let n = k
                        .name
                        .strip_prefix(&prefix)
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(usize::MAX);
                    (n, k.clone())
                })
                .collect();
            pods.sort();
            pods
        };
        if self.templates.get(&key) != Some(&template) {
            for (_, k) in owned(&self.objects) {
                self.remove(&k, false);
            }
            self.templates.insert(key.clone(), template.clone());
        }
        let mut pods = owned(&self.objects);
        while pods.len() > replicas {
            let (_, k) = pods.pop().expect("more pods than replicas");
            self.remove(&k, false);
        }
        let mut n = 0;
        while pods.len() < replicas {
            while pods.iter().any(|(i, _)| *i == n) {
                n += 1;
            }
            let pod_key = Key {
                group: String::new(),
                plural: "pods".into(),
                namespace: namespace.to_string(),
                name: format!("{name}-{n}"),
            };
            let pod = self.new_pod(&pod_key, &deployment, &template);
            self.store_raw(&pod_key, pod, "ADDED");
            pods.push((n, pod_key));
            pods.sort();
        }
        let ready = pods
            .iter()
            .filter(|(_, k)| {
                self.objects[k]
                    .object
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .is_some_and(|cs| {
                        cs.iter().any(|c| {
                            c.get("type").and_then(Value::as_str) == Some("Ready")
                                && c.get("status").and_then(Value::as_str) == Some("True")
                        })
                    })
            })
            .count();
        let available = ready >= replicas;
        let mut status = json!({
            "observedGeneration": deployment.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
            "replicas": pods.len(),
            "updatedReplicas": pods.len(),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "conditions": [
                {
                    "type": "Available",
                    "status": if available { "True" } else { "False" },
                    "reason": if available { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
                },
                {
                    "type": "Progressing",
                    "status": "True",
                    "reason": "NewReplicaSetAvailable",
                },
            ],
        });
        if pods.len() > ready {
            status["unavailableReplicas"] = json!(pods.len() - ready);
        }
        if deployment.get("status") != Some(&status) {
            let mut updated = deployment;
            updated["status"] = status;
            self.store_raw(&key, updated, "MODIFIED");
        }
    }

    fn new_pod(&mut self, key: &Key, deployment: &Value, template: &Value) -> Value {
        let serial = self.next_serial();
        let now = now_rfc3339();
        let mut meta = json!({
            "name": key.name,
            "namespace": key.namespace,
            "uid": format!("00000000-0000-4000-8000-{serial:012x}"),
            "creationTimestamp": now,
            "labels": template.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
            "ownerReferences": [{
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": meta_str(deployment, "name").unwrap_or_default(),
                "uid": meta_str(deployment, "uid").unwrap_or_default(),
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        });
        if let Some(a) = template.pointer("/metadata/annotations") {
            meta["annotations"] = a.clone();
        }
        let spec = template.get("spec").cloned().unwrap_or(json!({}));
        let containers: Vec<Value> = spec
            .get("containers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|c| {
                json!({
                    "name": c.get("name").cloned().unwrap_or(json!("app")),
                    "image": c.get("image").cloned().unwrap_or(json!("")),
                    "imageID": "",
                    "ready": true,
                    "started": true,
                    "restartCount": 0,
                    "state": { "running": { "startedAt": now } },
                })
            })
            .collect();
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta,
            "spec": spec,
            "status": {
                "phase": "Running",
                "podIP": format!("10.244.{}.{}", (serial / 250) % 250, serial % 250 + 1),
                "startTime": now,
                "conditions": [
                    { "type": "Initialized", "status": "True" },
                    { "type": "Ready", "status": "True" },
                    { "type": "ContainersReady", "status": "True" },
                    { "type": "PodScheduled", "status": "True" },
                ],
                "containerStatuses": containers,
            },
        })
    }
}

impl Fail {
    fn no_route_msg(message: String) -> Self {
        Fail::new(404, "NotFound", message)
    }
}

fn set_status(object: &mut Value, status: Option<Value>) {
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

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({ "type": kind, "object": object })).expect("JSON serialises");
    line.push(b'\n');
    Bytes::from(line)
}

/// Update-operation ownership: `manager` takes the fields that changed between `old` and
/// `new`; removed fields are dropped from every manager.
fn update_ownership(
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
