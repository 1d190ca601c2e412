//! Backup of the Kubernetes objects deploykit manages for a service — what Velero does for
//! resources: [`export`] them into an [`ObjectsSnapshot`] (a [`BackupSource`] for deploykit's
//! backup repository), and [`restore`] them into a namespace of the same or another cluster.
//!
//! Exported kinds: ConfigMaps, Secrets, Services, Deployments, HorizontalPodAutoscalers,
//! PodDisruptionBudgets, NetworkPolicies, Gateway API `HTTPRoute`s and Istio
//! `VirtualService`s — the objects labelled `app.kubernetes.io/name=<service>` and
//! `app.kubernetes.io/managed-by=deploykit`. Pods, ReplicaSets and Endpoints are not exported:
//! the cluster rebuilds them from these.

use std::io::{Cursor, Read};

use deploykit_core::backup::BackupSource;
use deploykit_core::{Error, Result};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use serde_json::{Map, Value};

use crate::retry::{api_policy, classify, kube_error, status_code};

/// One kind of object that [`export`] looks for.
struct Kind {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
}

/// The exported kinds, in the order they are written and restored (what others refer to
/// first).
const KINDS: &[Kind] = &[
    Kind {
        group: "",
        version: "v1",
        kind: "ConfigMap",
        plural: "configmaps",
    },
    Kind {
        group: "",
        version: "v1",
        kind: "Secret",
        plural: "secrets",
    },
    Kind {
        group: "",
        version: "v1",
        kind: "Service",
        plural: "services",
    },
    Kind {
        group: "apps",
        version: "v1",
        kind: "Deployment",
        plural: "deployments",
    },
    Kind {
        group: "autoscaling",
        version: "v2",
        kind: "HorizontalPodAutoscaler",
        plural: "horizontalpodautoscalers",
    },
    Kind {
        group: "policy",
        version: "v1",
        kind: "PodDisruptionBudget",
        plural: "poddisruptionbudgets",
    },
    Kind {
        group: "networking.k8s.io",
        version: "v1",
        kind: "NetworkPolicy",
        plural: "networkpolicies",
    },
    Kind {
        group: "gateway.networking.k8s.io",
        version: "v1",
        kind: "HTTPRoute",
        plural: "httproutes",
    },
    Kind {
        group: "networking.istio.io",
        version: "v1",
        kind: "VirtualService",
        plural: "virtualservices",
    },
];

impl Kind {
    fn resource(&self, version: &str) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, version, self.kind),
            self.plural,
        )
    }

    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// Metadata fields the API server sets, dropped from exports.
const SERVER_METADATA: &[&str] = &[
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "ownerReferences",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// Annotations controllers and tools set, dropped from exports.
const SERVER_ANNOTATIONS: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    "deployment.kubernetes.io/revision",
];

/// The objects of one service, cleaned of server-set fields, as deterministic JSON.
///
/// As a [`BackupSource`] it is the file `<service>.k8s.json`: a JSON array of the objects,
/// ordered by kind (ConfigMap, Secret, Service, Deployment, HorizontalPodAutoscaler,
/// PodDisruptionBudget, NetworkPolicy, HTTPRoute, VirtualService) then name, so two exports of
/// unchanged objects are byte-identical and deduplicate.
///
/// **Secrets:** a Secret's `data` stays base64 as the API server stores it — that is, in
/// plain text. Store the snapshot only in deploykit's backup repository, which encrypts
/// everything it stores (XChaCha20-Poly1305), or somewhere equally protected. `Debug` shows
/// no object content.
#[derive(Clone)]
pub struct ObjectsSnapshot {
    name: String,
    objects: Vec<Value>,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for ObjectsSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectsSnapshot")
            .field("name", &self.name)
            .field("objects", &self.objects.len())
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl ObjectsSnapshot {
    /// The cleaned objects, in snapshot order.
    pub fn objects(&self) -> &[Value] {
        &self.objects
    }

    /// The snapshot as stored: a JSON array of the objects.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// `Kind/name` of every object, in snapshot order.
    pub fn names(&self) -> Vec<String> {
        self.objects.iter().map(kind_and_name).collect()
    }
}

impl BackupSource for ObjectsSnapshot {
    fn name(&self) -> &str {
        &self.name
    }

    fn open(&self) -> Result<Box<dyn Read + Send>> {
        Ok(Box::new(Cursor::new(self.bytes.clone())))
    }
}

fn kind_and_name(o: &Value) -> String {
    format!(
        "{}/{}",
        o.get("kind").and_then(Value::as_str).unwrap_or_default(),
        o.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
    )
}

/// Drops what the API server set: identity and bookkeeping metadata, `status`, a Service's
/// allocated cluster IPs, and tool annotations.
fn clean(object: &mut Value) {
    let Some(o) = object.as_object_mut() else {
        return;
    };
    o.remove("status");
    if let Some(Value::Object(meta)) = o.get_mut("metadata") {
        for field in SERVER_METADATA {
            meta.remove(*field);
        }
        if let Some(Value::Object(annotations)) = meta.get_mut("annotations") {
            for a in SERVER_ANNOTATIONS {
                annotations.remove(*a);
            }
            if annotations.is_empty() {
                meta.remove("annotations");
            }
        }
    }
    if o.get("kind").and_then(Value::as_str) == Some("Service")
        && let Some(Value::Object(spec)) = o.get_mut("spec")
    {
        // A headless Service's `None` is configuration, not an allocation.
        if spec.get("clusterIP").and_then(Value::as_str) != Some("None") {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
        }
    }
}

/// Lists every object deploykit manages for `service` in `namespace` (see the [module
/// docs](self) for the kinds), cleaned of server-set fields: metadata `uid`,
/// `resourceVersion`, `generation`, `creationTimestamp`, `managedFields`, `selfLink`,
/// `ownerReferences`; `status`; a Service's `spec.clusterIP`/`clusterIPs`; the annotation
/// `kubectl.kubernetes.io/last-applied-configuration`. A kind whose API group is not installed
/// (a 404, e.g. Istio's on a cluster without Istio) is skipped. Transient API failures are
/// retried.
///
/// ```no_run
/// # async fn f(repo: &deploykit_backup::Repository) -> deploykit_core::Result<()> {
/// let client = kube::Client::try_default().await.map_err(|e| {
///     deploykit_core::Error::backend("connect to Kubernetes", e.to_string())
/// })?;
/// let snapshot = deploykit_k8s::backup::export(&client, "shop", "web").await?;
/// println!("{} objects: {:?}", snapshot.objects().len(), snapshot.names());
/// // `snapshot` is a `BackupSource`: back it up into an (encrypted) repository like any
/// // other stream, as the file `web.k8s.json`.
/// # let _ = repo;
/// # Ok(()) }
/// ```
pub async fn export(
    client: &kube::Client,
    namespace: &str,
    service: &str,
) -> Result<ObjectsSnapshot> {
    let selector =
        format!("app.kubernetes.io/name={service},app.kubernetes.io/managed-by=deploykit");
    let lp = ListParams::default().labels(&selector);
    let policy = api_policy();
    let mut objects = Vec::new();
    for kind in KINDS {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), namespace, &kind.resource(kind.version));
        let op = format!(
            "export the {} objects of {service} from {namespace}",
            kind.kind
        );
        let list = match policy.run(&op, classify, || api.list(&lp)).await {
            Ok(list) => list,
            Err(e) if status_code(e.error()) == Some(404) => {
                tracing::debug!(
                    api = %kind.api_version(),
                    "API not installed; no {} to export",
                    kind.plural
                );
                continue;
            }
            Err(e) => return Err(kube_error(op, e)),
        };
        let mut found: Vec<Value> = Vec::new();
        for item in list.items {
            let mut value = serde_json::to_value(&item).map_err(|e| Error::Corrupt {
                what: format!("a {} of {service}", kind.kind),
                source: Box::new(e),
            })?;
            if let Some(o) = value.as_object_mut() {
                o.insert("apiVersion".into(), Value::String(kind.api_version()));
                o.insert("kind".into(), Value::String(kind.kind.to_string()));
            }
            clean(&mut value);
            found.push(value);
        }
        found.sort_by_key(kind_and_name);
        objects.extend(found);
    }
    let bytes = serde_json::to_vec_pretty(&objects).expect("JSON serialises");
    Ok(ObjectsSnapshot {
        name: format!("{service}.k8s.json"),
        objects,
        bytes,
    })
}

fn malformed(reason: impl Into<String>) -> Error {
    Error::Corrupt {
        what: "Kubernetes objects snapshot".to_string(),
        source: reason.into().into(),
    }
}

/// An object of a snapshot, checked: its kind, version and name.
struct Restorable<'a> {
    kind: &'static Kind,
    version: String,
    name: String,
    object: &'a Map<String, Value>,
}

fn check(i: usize, value: &Value) -> Result<Restorable<'_>> {
    let object = value
        .as_object()
        .ok_or_else(|| malformed(format!("item {i} is not a JSON object")))?;
    let field = |name: &str| {
        object
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| malformed(format!("item {i} has no {name}")))
    };
    let api_version = field("apiVersion")?;
    let kind_name = field("kind")?;
    let name = object
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| malformed(format!("item {i} ({kind_name}) has no metadata.name")))?;
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let kind = KINDS
        .iter()
        .find(|k| k.group == group && k.kind == kind_name)
        .ok_or_else(|| {
            malformed(format!(
                "item {i} is a {kind_name} ({api_version}), which is not a kind deploykit backs up"
            ))
        })?;
    Ok(Restorable {
        kind,
        version: version.to_string(),
        name: name.to_string(),
        object,
    })
}

/// Re-applies the objects of a snapshot (the bytes of an [`ObjectsSnapshot`]) into
/// `namespace` — the same or another namespace or cluster — with server-side apply (field
/// manager `deploykit`, forced, so the snapshot's values win), rewriting `metadata.namespace`.
/// Answers `Kind/name` of every object applied, in order.
///
/// The whole snapshot is checked before anything is applied: bytes that are not a JSON array
/// of objects each with `apiVersion`, a backed-up `kind` and `metadata.name` fail with
/// [`Error::Corrupt`] and write nothing. An object whose API group is missing in the target
/// cluster (e.g. a VirtualService where Istio is not installed) fails with an
/// [`Error::Backend`] saying so; objects before it stay applied, and restoring again is safe.
pub async fn restore(client: &kube::Client, bytes: &[u8], namespace: &str) -> Result<Vec<String>> {
    let parsed: Value = serde_json::from_slice(bytes).map_err(|e| {
        malformed(format!(
            "not JSON ({e}); expected the JSON array an export writes"
        ))
    })?;
    let items = parsed
        .as_array()
        .ok_or_else(|| malformed("expected a JSON array of Kubernetes objects"))?;
    let checked = items
        .iter()
        .enumerate()
        .map(|(i, v)| check(i, v))
        .collect::<Result<Vec<_>>>()?;
    let policy = api_policy();
    let params = PatchParams::apply("deploykit").force().validation_strict();
    let mut restored = Vec::with_capacity(checked.len());
    for item in checked {
        let label = format!("{}/{}", item.kind.kind, item.name);
        let op = format!("restore {label} into {namespace}");
        let mut object = Value::Object(item.object.clone());
        clean(&mut object);
        if let Some(Value::Object(meta)) = object.get_mut("metadata") {
            meta.insert("namespace".into(), Value::String(namespace.to_string()));
        }
        let api: Api<DynamicObject> = Api::namespaced_with(
            client.clone(),
            namespace,
            &item.kind.resource(&item.version),
        );
        let patch = Patch::Apply(&object);
        match policy
            .run(&op, classify, || api.patch(&item.name, &params, &patch))
            .await
        {
            Ok(_) => restored.push(label),
            Err(e) if status_code(e.error()) == Some(404) => {
                return Err(Error::backend(
                    op,
                    format!(
                        "the API {} is not installed in the cluster (no {} resource)",
                        if item.kind.group.is_empty() {
                            item.version.clone()
                        } else {
                            format!("{}/{}", item.kind.group, item.version)
                        },
                        item.kind.plural
                    ),
                ));
            }
            Err(e) => return Err(kube_error(op, e)),
        }
    }
    Ok(restored)
}
