//! What a request asks for: its query parameters, the resource its path names (and the key of
//! the object it names), and the `Status` a failed request answers. Pure parsing: this layer
//! imports no other module of the server.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// The decoded query parameters of a request.
pub(super) struct Params(pub(super) BTreeMap<String, String>);

impl Params {
    pub(super) fn parse(query: &str) -> Self {
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

    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub(super) fn flag(&self, key: &str) -> bool {
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

/// Where an object is stored: objects are keyed by group, resource, namespace (`""` for
/// cluster-scoped) and name, not by version.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Key {
    pub(super) group: String,
    pub(super) plural: String,
    pub(super) namespace: String,
    pub(super) name: String,
}

/// Where a request points.
#[derive(Clone, Debug)]
pub(super) struct Target {
    pub(super) group: String,
    pub(super) version: String,
    pub(super) namespace: Option<String>,
    pub(super) plural: String,
    pub(super) name: Option<String>,
    pub(super) sub: Option<String>,
}

impl Target {
    pub(super) fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub(super) fn key(&self, name: &str) -> Key {
        Key {
            group: self.group.clone(),
            plural: self.plural.clone(),
            namespace: self.namespace.clone().unwrap_or_default(),
            name: name.to_string(),
        }
    }

    pub(super) fn is(&self, group: &str, plural: &str) -> bool {
        self.group == group && self.plural == plural
    }

    /// Whether the object at `key` is of this resource and, for a namespaced request, in its
    /// namespace (the name is not compared: this is for collections).
    pub(super) fn covers(&self, key: &Key) -> bool {
        key.group == self.group
            && key.plural == self.plural
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| *ns == key.namespace)
    }
}

pub(super) fn parse_target(path: &str) -> Option<Target> {
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

pub(super) fn kind_of_plural(plural: &str) -> Option<&'static str> {
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

/// A failed request: becomes a `Status` response.
#[derive(Debug)]
pub(super) struct Fail {
    pub(super) code: u16,
    pub(super) reason: &'static str,
    pub(super) message: String,
}

impl Fail {
    pub(super) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Fail {
            code,
            reason,
            message: message.into(),
        }
    }

    pub(super) fn for_code(code: u16, message: impl Into<String>) -> Self {
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

    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Fail::new(400, "BadRequest", message)
    }

    pub(super) fn no_route() -> Self {
        Fail::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    pub(super) fn not_found(t: &Target, name: &str) -> Self {
        Fail::new(404, "NotFound", format!("{} {name:?} not found", t.plural))
    }

    pub(super) fn stale(t: &Target, name: &str) -> Self {
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

    pub(super) fn status(&self) -> Value {
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

    pub(super) fn no_route_msg(message: String) -> Self {
        Fail::new(404, "NotFound", message)
    }
}
