//! TLS on a service's routes ([`RouteTls`]): the cert-manager `Certificate` and the Gateway API
//! `ReferenceGrant`, both rendered as [`DynamicObject`]s, and the hosts a certificate names.
//! The Ingress's own `spec.tls` is rendered with the Ingress (see `routes`).

use deploykit_core::{Error, Result, ServiceId};
use kube::core::{ApiResource, DynamicObject};
use serde_json::{Value, json};

use super::names::{app_labels, is_dns_label, is_dns_subdomain};
use super::{CustomKind, Object, RenderOptions, RouteTls, Router};

/// cert-manager `Certificate`, `cert-manager.io/v1`.
pub(crate) const CERTIFICATE: CustomKind = CustomKind {
    group: "cert-manager.io",
    version: "v1",
    api_version: "cert-manager.io/v1",
    kind: "Certificate",
    plural: "certificates",
};

/// Gateway API `ReferenceGrant`, `gateway.networking.k8s.io/v1beta1` (the version every
/// Gateway API release since v0.6 serves).
pub(crate) const REFERENCE_GRANT: CustomKind = CustomKind {
    group: "gateway.networking.k8s.io",
    version: "v1beta1",
    api_version: "gateway.networking.k8s.io/v1beta1",
    kind: "ReferenceGrant",
    plural: "referencegrants",
};

/// Checks the TLS options against the router: names, and a router that can terminate TLS
/// with a Secret of the app namespace.
pub(crate) fn check(options: &RenderOptions) -> Result<()> {
    let Some(tls) = &options.tls else {
        return Ok(());
    };
    match tls {
        RouteTls::Secret { name } => {
            if name.is_empty() {
                return Err(Error::invalid(
                    "tls.secret_name",
                    "is empty: name the kubernetes.io/tls Secret holding the certificate",
                ));
            }
            if !is_dns_subdomain(name) {
                return Err(Error::invalid(
                    "tls.secret_name",
                    format!("{name:?} is not a Secret name"),
                ));
            }
        }
        RouteTls::CertManager { issuer } => {
            if !is_dns_subdomain(&issuer.name) {
                return Err(Error::invalid(
                    "tls.issuer.name",
                    format!(
                        "{:?} is not the name of a cert-manager {}",
                        issuer.name,
                        issuer.kind.as_str()
                    ),
                ));
            }
        }
    }
    match &options.router {
        Router::None => Err(Error::invalid(
            "tls",
            "there is no router to terminate TLS (RenderOptions::router is Router::None): set \
             Router::Ingress, Router::GatewayApi or Router::Istio",
        )),
        Router::Istio { gateways, .. } => {
            let elsewhere: Vec<&String> = gateways
                .iter()
                .filter(|g| match g.split_once('/') {
                    Some((ns, _)) => ns != options.namespace,
                    None => g.as_str() == "mesh",
                })
                .collect();
            if gateways.is_empty() || !elsewhere.is_empty() {
                return Err(Error::invalid(
                    "tls",
                    format!(
                        "an Istio gateway reads tls.credentialName from a Secret in its own \
                         workload's namespace, and deploykit writes only to namespace {ns}; \
                         {which}: create the Certificate or Secret in the gateway's namespace \
                         and set credentialName on its server, or bind to a gateway of \
                         namespace {ns}",
                        ns = options.namespace,
                        which = if gateways.is_empty() {
                            "the VirtualService binds to the mesh alone, where no gateway \
                             terminates TLS"
                                .to_string()
                        } else {
                            format!(
                                "gateway(s) {} are not in it",
                                elsewhere
                                    .iter()
                                    .map(|g| g.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        }
                    ),
                ));
            }
            Ok(())
        }
        Router::GatewayApi { hostnames, .. } => {
            if matches!(tls, RouteTls::CertManager { .. }) && hostnames.is_empty() {
                return Err(Error::invalid(
                    "tls",
                    "cert-manager needs the names to certify: set the router's hostnames",
                ));
            }
            Ok(())
        }
        Router::Ingress { .. } => Ok(()),
    }
}

/// The host of `service` under an Ingress router's `domain`.
pub(crate) fn ingress_host(name: &str, domain: &str) -> String {
    format!("{name}.{domain}")
}

/// The names `service`'s certificate covers: see [`RouteTls`].
fn dns_names(service: &ServiceId, options: &RenderOptions) -> Vec<String> {
    match &options.router {
        Router::Ingress { domain, .. } => vec![
            ingress_host(service.as_str(), domain),
            ingress_host(&super::network::preview_name(service), domain),
        ],
        Router::GatewayApi { hostnames, .. } => hostnames.clone(),
        Router::Istio { hosts, .. } => hosts.iter().filter(|h| *h != "*").cloned().collect(),
        Router::None => Vec::new(),
    }
}

fn object(kind: &CustomKind, service: &ServiceId, options: &RenderOptions, spec: Value) -> Object {
    let mut obj = DynamicObject::new(service.as_str(), &kind.api_resource())
        .within(&options.namespace)
        .data(json!({ "spec": spec }));
    obj.metadata.labels = Some(app_labels(service));
    if kind.kind == CERTIFICATE.kind {
        Object::Certificate(obj)
    } else {
        Object::ReferenceGrant(obj)
    }
}

/// The TLS objects of `service`: its Certificate (with cert-manager), and the ReferenceGrant
/// letting a Gateway of another namespace read its Secret (Gateway API).
pub(crate) fn render(service: &ServiceId, options: &RenderOptions) -> Result<Vec<Object>> {
    let Some(tls) = &options.tls else {
        return Ok(Vec::new());
    };
    let secret = tls.secret_name(service.as_str());
    let mut out = Vec::new();
    if let RouteTls::CertManager { issuer } = tls {
        let names = dns_names(service, options);
        if names.is_empty() {
            return Err(Error::invalid(
                "tls",
                "cert-manager needs the names to certify: the router has no hostname",
            ));
        }
        out.push(object(
            &CERTIFICATE,
            service,
            options,
            json!({
                "secretName": secret,
                "dnsNames": names,
                "issuerRef": {
                    "group": "cert-manager.io",
                    "kind": issuer.kind.as_str(),
                    "name": issuer.name,
                },
            }),
        ));
    }
    if let Router::GatewayApi { parent, .. } = &options.router
        && let Some(gateway_ns) = &parent.namespace
        && *gateway_ns != options.namespace
    {
        if !is_dns_label(gateway_ns) {
            return Err(Error::invalid(
                "router.parent.namespace",
                format!("{gateway_ns:?} is not a namespace name"),
            ));
        }
        out.push(object(
            &REFERENCE_GRANT,
            service,
            options,
            json!({
                "from": [{
                    "group": "gateway.networking.k8s.io",
                    "kind": "Gateway",
                    "namespace": gateway_ns,
                }],
                "to": [{ "group": "", "kind": "Secret", "name": secret }],
            }),
        ));
    }
    Ok(out)
}

/// The API resources [`render`] may produce under `options`.
pub(crate) fn resources(options: &RenderOptions) -> Vec<ApiResource> {
    let mut out = Vec::new();
    if let Some(tls) = &options.tls {
        if matches!(tls, RouteTls::CertManager { .. }) {
            out.push(CERTIFICATE.api_resource());
        }
        if matches!(options.router, Router::GatewayApi { .. }) {
            out.push(REFERENCE_GRANT.api_resource());
        }
    }
    out
}
