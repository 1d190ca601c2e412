//! A service's Istio security and resilience objects ([`MeshPolicy`]): its ServiceAccount,
//! `PeerAuthentication`, `AuthorizationPolicy` and `DestinationRule`; and the
//! `DestinationRule` that carries a [`TrafficPolicy`]'s circuit breaker behind an Istio router.

use deploykit_core::{Error, Result, ServiceId, TrafficPolicy};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::core::DynamicObject;
use serde_json::{Value, json};

use super::names::{app_labels, app_selector, is_dns_label, meta};
use super::network::gateway_namespaces;
use super::{Caller, CustomKind, MeshPolicy, Object, RenderOptions, Router};

/// Istio `PeerAuthentication`, `security.istio.io/v1`.
pub(crate) const PEER_AUTHENTICATION: CustomKind = CustomKind {
    group: "security.istio.io",
    version: "v1",
    api_version: "security.istio.io/v1",
    kind: "PeerAuthentication",
    plural: "peerauthentications",
};

/// Istio `AuthorizationPolicy`, `security.istio.io/v1`.
pub(crate) const AUTHORIZATION_POLICY: CustomKind = CustomKind {
    group: "security.istio.io",
    version: "v1",
    api_version: "security.istio.io/v1",
    kind: "AuthorizationPolicy",
    plural: "authorizationpolicies",
};

/// Istio `DestinationRule`, `networking.istio.io/v1`.
pub(crate) const DESTINATION_RULE: CustomKind = CustomKind {
    group: "networking.istio.io",
    version: "v1",
    api_version: "networking.istio.io/v1",
    kind: "DestinationRule",
    plural: "destinationrules",
};

/// The service's ServiceAccount, with a mesh policy (its token is not mounted).
pub(crate) fn service_account(service: &ServiceId, options: &RenderOptions) -> Option<Object> {
    options.mesh_policy.as_ref()?;
    Some(Object::ServiceAccount(ServiceAccount {
        metadata: meta(service.as_str(), options, app_labels(service)),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }))
}

/// Checks the policy's names.
pub(crate) fn check(policy: &MeshPolicy) -> Result<()> {
    if policy.trust_domain.trim().is_empty() {
        return Err(Error::invalid(
            "mesh_policy.trust_domain",
            "must not be empty",
        ));
    }
    for (i, caller) in policy.callers.iter().flatten().enumerate() {
        let field = format!("mesh_policy.callers[{i}]");
        match caller {
            Caller::Service(name) | Caller::Namespace(name) if !is_dns_label(name) => {
                return Err(Error::invalid(
                    field,
                    format!("{name:?} is not a service or namespace name"),
                ));
            }
            Caller::Principal(p)
                if p.split('/').count() != 5 || p.contains(char::is_whitespace) =>
            {
                return Err(Error::invalid(
                    field,
                    format!("{p:?} is not a principal like cluster.local/ns/shop/sa/api"),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

fn object(kind: &CustomKind, service: &ServiceId, options: &RenderOptions, spec: Value) -> Object {
    let mut obj = DynamicObject::new(service.as_str(), &kind.api_resource())
        .within(&options.namespace)
        .data(json!({ "spec": spec }));
    obj.metadata.labels = Some(app_labels(service));
    match kind.kind {
        "PeerAuthentication" => Object::PeerAuthentication(obj),
        "AuthorizationPolicy" => Object::AuthorizationPolicy(obj),
        _ => Object::DestinationRule(obj),
    }
}

/// The mesh objects of `service` after its NetworkPolicy: with a mesh policy its
/// PeerAuthentication, AuthorizationPolicy and DestinationRule; without one, a
/// DestinationRule only behind an Istio router and only when `traffic` (the serving
/// revision's policy) has a circuit breaker, which only a DestinationRule can carry.
pub(crate) fn render(
    service: &ServiceId,
    traffic: Option<&TrafficPolicy>,
    options: &RenderOptions,
) -> Result<Vec<Object>> {
    let breaker = traffic.and_then(|t| t.circuit_breaker.as_ref());
    let Some(policy) = &options.mesh_policy else {
        if breaker.is_some() && matches!(options.router, Router::Istio { .. }) {
            return Ok(vec![destination_rule(service, None, traffic, options)]);
        }
        return Ok(Vec::new());
    };
    check(policy)?;
    let selector = json!({ "matchLabels": app_selector(service) });
    let mut out = Vec::new();
    if policy.mtls_strict {
        out.push(object(
            &PEER_AUTHENTICATION,
            service,
            options,
            json!({ "selector": selector, "mtls": { "mode": "STRICT" } }),
        ));
    }
    if let Some(callers) = &policy.callers {
        let ns = &options.namespace;
        let mut principals = Vec::new();
        let mut namespaces = gateway_namespaces(options);
        for caller in callers {
            match caller {
                Caller::Service(name) => {
                    principals.push(format!("{}/ns/{ns}/sa/{name}", policy.trust_domain))
                }
                Caller::Namespace(n) if !namespaces.contains(n) => namespaces.push(n.clone()),
                Caller::Namespace(_) => {}
                Caller::Principal(p) => principals.push(p.clone()),
            }
        }
        let mut rules = Vec::new();
        if !principals.is_empty() {
            rules.push(json!({ "from": [{ "source": { "principals": principals } }] }));
        }
        if !namespaces.is_empty() {
            rules.push(json!({ "from": [{ "source": { "namespaces": namespaces } }] }));
        }
        // An ALLOW policy without rules matches nothing: everyone is denied.
        out.push(object(
            &AUTHORIZATION_POLICY,
            service,
            options,
            json!({ "selector": selector, "action": "ALLOW", "rules": rules }),
        ));
    }
    out.push(destination_rule(service, Some(policy), traffic, options));
    Ok(out)
}

/// The DestinationRule `<service>` for the stable Service's host, from the mesh policy (if
/// any) and the traffic policy's circuit breaker (if any). The service's own breaker takes
/// precedence over the mesh policy's defaults, field by field:
///
/// - `outlierDetection`: `consecutive5xxErrors` from
///   [`CircuitBreaker::consecutive_failures`](deploykit_core::CircuitBreaker) (Envoy counts
///   connection failures, resets and timeouts as 5xx too, as the local proxy counts them) and
///   `baseEjectionTime` from its `ejection`; else the mesh policy's
///   `outlier_consecutive_5xx` for 30 s. Both check every 10 s and eject at most half of the
///   instances, so some always serve.
/// - `connectionPool.http`: `http2MaxRequests` (requests in flight to the host, HTTP/1.1 and
///   HTTP/2 alike) from `max_requests`, and `http1MaxPendingRequests` (requests waiting for a
///   connection) the mesh policy's `max_pending_requests`, at most `max_requests`.
/// - `tls`: `ISTIO_MUTUAL` under a strict mesh policy.
fn destination_rule(
    service: &ServiceId,
    mesh: Option<&MeshPolicy>,
    traffic: Option<&TrafficPolicy>,
    options: &RenderOptions,
) -> Object {
    let breaker = traffic.and_then(|t| t.circuit_breaker.as_ref());
    let mut http = serde_json::Map::new();
    let mut pending = mesh.map(|m| m.max_pending_requests);
    if let Some(max) = breaker.and_then(|b| b.max_requests) {
        http.insert("http2MaxRequests".into(), json!(max));
        pending = Some(pending.map_or(max, |p| p.min(max)));
    }
    if let Some(pending) = pending {
        http.insert("http1MaxPendingRequests".into(), json!(pending));
    }
    let mut traffic_policy = json!({});
    if !http.is_empty() {
        traffic_policy["connectionPool"] = json!({ "http": http });
    }
    let outlier = match (breaker, mesh) {
        (Some(b), _) => Some((b.consecutive_failures, super::istio_duration(b.ejection))),
        (None, Some(m)) if m.outlier_consecutive_5xx > 0 => {
            Some((m.outlier_consecutive_5xx, "30s".to_string()))
        }
        _ => None,
    };
    if let Some((failures, ejection)) = outlier {
        traffic_policy["outlierDetection"] = json!({
            "consecutive5xxErrors": failures,
            "interval": "10s",
            "baseEjectionTime": ejection,
            "maxEjectionPercent": 50,
        });
    }
    if mesh.is_some_and(|m| m.mtls_strict) {
        traffic_policy["tls"] = json!({ "mode": "ISTIO_MUTUAL" });
    }
    object(
        &DESTINATION_RULE,
        service,
        options,
        json!({
            "host": format!("{service}.{}.svc.cluster.local", options.namespace),
            "trafficPolicy": traffic_policy,
        }),
    )
}
