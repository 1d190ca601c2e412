//! A service's Istio security and resilience objects ([`MeshPolicy`]): its ServiceAccount,
//! `PeerAuthentication`, `AuthorizationPolicy` and `DestinationRule`.

use deploykit_core::{Error, Result, ServiceId};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::core::DynamicObject;
use serde_json::{Value, json};

use super::names::{app_labels, app_selector, is_dns_label, meta};
use super::network::gateway_namespaces;
use super::{Caller, CustomKind, MeshPolicy, Object, RenderOptions};

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

/// The mesh objects of `service` after its NetworkPolicy (none without a mesh policy).
pub(crate) fn render(service: &ServiceId, options: &RenderOptions) -> Result<Vec<Object>> {
    let Some(policy) = &options.mesh_policy else {
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
    let mut traffic_policy = json!({
        "connectionPool": { "http": { "http1MaxPendingRequests": policy.max_pending_requests } },
    });
    if policy.outlier_consecutive_5xx > 0 {
        traffic_policy["outlierDetection"] = json!({
            "consecutive5xxErrors": policy.outlier_consecutive_5xx,
            "interval": "10s",
            "baseEjectionTime": "30s",
            "maxEjectionPercent": 50,
        });
    }
    if policy.mtls_strict {
        traffic_policy["tls"] = json!({ "mode": "ISTIO_MUTUAL" });
    }
    out.push(object(
        &DESTINATION_RULE,
        service,
        options,
        json!({
            "host": format!("{service}.{}.svc.cluster.local", options.namespace),
            "trafficPolicy": traffic_policy,
        }),
    ));
    Ok(out)
}
