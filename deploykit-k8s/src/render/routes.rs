//! The route in front of the Services: a Gateway API `HTTPRoute` or an Istio `VirtualService`,
//! both rendered as [`DynamicObject`]s, or a Kubernetes `Ingress`.

use deploykit_core::{Error, Result, ServiceId, TrafficPolicy};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use kube::core::DynamicObject;
use serde_json::{Map, Value, json};

use super::names::{app_labels, is_dns_label, is_dns_subdomain, is_hostname, meta};
use super::network::{Layout, canary_name, preview_name, stable_name};
use super::tls::ingress_host;
use super::{CustomKind, Object, RenderOptions, Router, SERVICE_PORT};

/// Gateway API `HTTPRoute`, `gateway.networking.k8s.io/v1`.
pub(crate) const HTTP_ROUTE: CustomKind = CustomKind {
    group: "gateway.networking.k8s.io",
    version: "v1",
    api_version: "gateway.networking.k8s.io/v1",
    kind: "HTTPRoute",
    plural: "httproutes",
};

/// Istio `VirtualService`, `networking.istio.io/v1`.
pub(crate) const VIRTUAL_SERVICE: CustomKind = CustomKind {
    group: "networking.istio.io",
    version: "v1",
    api_version: "networking.istio.io/v1",
    kind: "VirtualService",
    plural: "virtualservices",
};

/// Checks the router's names and hostnames.
pub(crate) fn check_router(router: &Router) -> Result<()> {
    match router {
        Router::GatewayApi { parent, hostnames } => {
            if !is_dns_subdomain(&parent.name) {
                return Err(Error::invalid(
                    "router.parent.name",
                    format!("{:?} is not a Gateway name", parent.name),
                ));
            }
            if let Some(ns) = &parent.namespace
                && !is_dns_label(ns)
            {
                return Err(Error::invalid(
                    "router.parent.namespace",
                    format!("{ns:?} is not a namespace name"),
                ));
            }
            if let Some(section) = &parent.section_name
                && !is_dns_subdomain(section)
            {
                return Err(Error::invalid(
                    "router.parent.section_name",
                    format!("{section:?} is not a listener name"),
                ));
            }
            check_hosts("router.hostnames", hostnames)
        }
        Router::Istio { gateways, hosts } => {
            for gateway in gateways {
                let ok = match gateway.split_once('/') {
                    Some((ns, name)) => is_dns_label(ns) && is_dns_subdomain(name),
                    None => is_dns_subdomain(gateway),
                };
                if !ok {
                    return Err(Error::invalid(
                        "router.gateways",
                        format!("{gateway:?} is not a gateway: use <namespace>/<name> or mesh"),
                    ));
                }
            }
            if hosts.is_empty() {
                return Err(Error::invalid(
                    "router.hosts",
                    "a VirtualService needs at least one host",
                ));
            }
            let named: Vec<String> = hosts.iter().filter(|h| *h != "*").cloned().collect();
            check_hosts("router.hosts", &named)
        }
        Router::Ingress {
            class,
            domain,
            controller_namespace,
        } => {
            if let Some(class) = class
                && !is_dns_subdomain(class)
            {
                return Err(Error::invalid(
                    "router.class",
                    format!("{class:?} is not an IngressClass name"),
                ));
            }
            // `<service>-preview.<domain>` must stay a DNS name (service names are at most
            // 55 characters, so the first label always fits).
            if !is_dns_subdomain(domain) || domain.len() > 253 - 64 {
                return Err(Error::invalid(
                    "router.domain",
                    format!(
                        "{domain:?} is not a domain to make hosts <service>.<domain> in:                          lowercase DNS labels separated by dots, at most 189 characters"
                    ),
                ));
            }
            if !is_dns_label(controller_namespace) {
                return Err(Error::invalid(
                    "router.controller_namespace",
                    format!("{controller_namespace:?} is not a namespace name"),
                ));
            }
            Ok(())
        }
        Router::None => Ok(()),
    }
}

/// The Ingress `name` for `host`, every path to Service `backend`, with TLS from the options.
fn ingress(
    name: String,
    host: String,
    backend: String,
    class: Option<&String>,
    service: &ServiceId,
    options: &RenderOptions,
) -> Ingress {
    let tls = options.tls.as_ref().map(|tls| {
        vec![IngressTLS {
            hosts: Some(vec![host.clone()]),
            secret_name: Some(tls.secret_name(service.as_str())),
        }]
    });
    Ingress {
        metadata: meta(name, options, app_labels(service)),
        spec: Some(IngressSpec {
            ingress_class_name: class.cloned(),
            rules: Some(vec![IngressRule {
                host: Some(host),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".into()),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: backend,
                                port: Some(ServiceBackendPort {
                                    number: Some(SERVICE_PORT),
                                    name: None,
                                }),
                            }),
                            resource: None,
                        },
                    }],
                }),
            }]),
            tls,
            default_backend: None,
        }),
        status: None,
    }
}

/// Refuses route options the router cannot carry: an Ingress has no timeouts (only
/// controller-specific annotations), and dropping them would be silent.
pub(crate) fn check_route_options(options: &RenderOptions) -> Result<()> {
    if matches!(options.router, Router::Ingress { .. }) && options.route_timeouts.is_some() {
        return Err(Error::invalid(
            "route_timeouts",
            "an Ingress (Router::Ingress) has no field for timeouts, only annotations of each \
             controller: leave route_timeouts unset, or use Router::GatewayApi or Router::Istio",
        ));
    }
    Ok(())
}

fn check_hosts(field: &str, hosts: &[String]) -> Result<()> {
    for host in hosts {
        if !is_hostname(host) {
            return Err(Error::invalid(
                field,
                format!(
                    "{host:?} is not a hostname: lowercase DNS labels separated by dots, \
                     optionally starting with *."
                ),
            ));
        }
    }
    Ok(())
}

/// `preview.<first host>`, a leading `*.` dropped.
fn preview_host(field: &str, hosts: &[String]) -> Result<String> {
    let first = hosts.first().map(|h| h.strip_prefix("*.").unwrap_or(h));
    match first {
        Some(host) if host != "*" => Ok(format!("preview.{host}")),
        _ => Err(Error::invalid(
            field,
            "a preview route needs a first hostname to put preview. in front of",
        )),
    }
}

fn object(
    kind: &CustomKind,
    name: &str,
    service: &ServiceId,
    options: &RenderOptions,
    spec: Value,
) -> DynamicObject {
    let mut obj = DynamicObject::new(name, &kind.api_resource())
        .within(&options.namespace)
        .data(json!({ "spec": spec }));
    obj.metadata.labels = Some(app_labels(service));
    obj
}

/// The route objects for `layout` under `options.router`.
pub(crate) fn render(
    service: &ServiceId,
    layout: &Layout<'_>,
    options: &RenderOptions,
) -> Result<Vec<Object>> {
    match &options.router {
        Router::None => Ok(Vec::new()),
        Router::Ingress { class, domain, .. } => {
            // No weights: everything to the stable Service (see `Router::Ingress`).
            let mut out = vec![Object::Ingress(ingress(
                service.to_string(),
                ingress_host(service.as_str(), domain),
                stable_name(service),
                class.as_ref(),
                service,
                options,
            ))];
            if layout.preview.is_some() {
                let name = preview_name(service);
                out.push(Object::Ingress(ingress(
                    name.clone(),
                    ingress_host(&name, domain),
                    name,
                    class.as_ref(),
                    service,
                    options,
                )));
            }
            Ok(out)
        }
        Router::GatewayApi { parent, hostnames } => {
            let mut parent_ref = Map::new();
            parent_ref.insert("group".into(), json!("gateway.networking.k8s.io"));
            parent_ref.insert("kind".into(), json!("Gateway"));
            parent_ref.insert("name".into(), json!(parent.name));
            if let Some(ns) = &parent.namespace {
                parent_ref.insert("namespace".into(), json!(ns));
            }
            if let Some(section) = &parent.section_name {
                parent_ref.insert("sectionName".into(), json!(section));
            }
            let parent_refs = json!([parent_ref]);
            let backend = |name: String, weight: Option<u32>| {
                let mut b = json!({ "name": name, "port": SERVICE_PORT });
                if let Some(w) = weight {
                    b["weight"] = json!(w);
                }
                b
            };

            let mut rules = Vec::new();
            let mut default_rule = Map::new();
            match (layout.routes, layout.stable) {
                (Some(routes), Some(stable)) => {
                    if let Some(h) = &routes.header {
                        let mut rule = json!({
                            "matches": [{
                                "headers": [{
                                    "type": "Exact",
                                    "name": h.name.to_ascii_lowercase(),
                                    "value": h.value,
                                }],
                            }],
                            "backendRefs": [backend(layout.service_of(service, &h.revision), None)],
                        });
                        if let Some(t) = gateway_timeouts(layout.policy_of(&h.revision), options) {
                            rule["timeouts"] = t;
                        }
                        rules.push(rule);
                    }
                    let mut backends = vec![backend(
                        stable_name(service),
                        Some(routes.weight_of(&stable.id)),
                    )];
                    if let Some(canary) = layout.canary {
                        let w = routes.weight_of(&canary.id);
                        if w > 0 {
                            backends.push(backend(canary_name(service), Some(w)));
                        }
                    }
                    default_rule.insert("backendRefs".into(), json!(backends));
                    if let Some(m) = &routes.mirror {
                        default_rule.insert(
                            "filters".into(),
                            json!([{
                                "type": "RequestMirror",
                                "requestMirror": {
                                    "backendRef": backend(layout.service_of(service, &m.revision), None),
                                    "percent": m.percent.percent(),
                                },
                            }]),
                        );
                    }
                }
                _ => {
                    default_rule.insert(
                        "backendRefs".into(),
                        json!([backend(stable_name(service), None)]),
                    );
                }
            }
            if let Some(t) = gateway_timeouts(layout.serving_policy(), options) {
                default_rule.insert("timeouts".into(), t);
            }
            rules.push(Value::Object(default_rule));
            let mut spec = json!({ "parentRefs": parent_refs, "rules": rules });
            if !hostnames.is_empty() {
                spec["hostnames"] = json!(hostnames);
            }
            let mut out = vec![Object::HttpRoute(object(
                &HTTP_ROUTE,
                service.as_str(),
                service,
                options,
                spec,
            ))];
            if layout.preview.is_some() {
                let host = preview_host("router.hostnames", hostnames)?;
                let mut rule = json!({ "backendRefs": [backend(preview_name(service), None)] });
                let policy = layout.preview.map(|r| &r.config.traffic);
                if let Some(t) = gateway_timeouts(policy, options) {
                    rule["timeouts"] = t;
                }
                let spec = json!({
                    "parentRefs": parent_refs,
                    "hostnames": [host],
                    "rules": [rule],
                });
                out.push(Object::HttpRoute(object(
                    &HTTP_ROUTE,
                    &preview_name(service),
                    service,
                    options,
                    spec,
                )));
            }
            Ok(out)
        }
        Router::Istio { gateways, hosts } => {
            let destination =
                |name: String| json!({ "host": name, "port": { "number": SERVICE_PORT } });
            let mut all_hosts = hosts.clone();
            let mut http = Vec::new();
            if layout.preview.is_some() {
                let host = preview_host("router.hosts", hosts)?;
                let mut route = json!({
                    "name": "preview",
                    "match": [{ "authority": { "exact": host } }],
                    "route": [{ "destination": destination(preview_name(service)) }],
                });
                istio_resilience(
                    &mut route,
                    layout.preview.map(|r| &r.config.traffic),
                    options,
                );
                http.push(route);
                all_hosts.push(host);
            }
            let mut primary = Map::new();
            primary.insert("name".into(), json!("primary"));
            match (layout.routes, layout.stable) {
                (Some(routes), Some(stable)) => {
                    if let Some(h) = &routes.header {
                        let mut headers = Map::new();
                        headers.insert(h.name.to_ascii_lowercase(), json!({ "exact": h.value }));
                        let mut route = json!({
                            "name": "header",
                            "match": [{ "headers": headers }],
                            "route": [{ "destination": destination(layout.service_of(service, &h.revision)) }],
                        });
                        istio_resilience(&mut route, layout.policy_of(&h.revision), options);
                        http.push(route);
                    }
                    let canary_weight = layout.canary.map_or(0, |c| routes.weight_of(&c.id));
                    let route = if canary_weight > 0 {
                        json!([
                            {
                                "destination": destination(stable_name(service)),
                                "weight": routes.weight_of(&stable.id),
                            },
                            {
                                "destination": destination(canary_name(service)),
                                "weight": canary_weight,
                            },
                        ])
                    } else {
                        json!([{ "destination": destination(stable_name(service)) }])
                    };
                    primary.insert("route".into(), route);
                    if let Some(m) = &routes.mirror {
                        primary.insert(
                            "mirror".into(),
                            destination(layout.service_of(service, &m.revision)),
                        );
                        primary.insert(
                            "mirrorPercentage".into(),
                            json!({ "value": f64::from(m.percent.percent()) }),
                        );
                    }
                }
                _ => {
                    primary.insert(
                        "route".into(),
                        json!([{ "destination": destination(stable_name(service)) }]),
                    );
                }
            }
            let mut primary = Value::Object(primary);
            istio_resilience(&mut primary, layout.serving_policy(), options);
            http.push(primary);
            let mut spec = json!({ "hosts": all_hosts, "http": http });
            if !gateways.is_empty() {
                spec["gateways"] = json!(gateways);
            }
            Ok(vec![Object::VirtualService(object(
                &VIRTUAL_SERVICE,
                service.as_str(),
                service,
                options,
                spec,
            ))])
        }
    }
}

/// The `timeouts` of an `HTTPRoute` rule to a revision with `policy`:
/// [`RenderOptions::route_timeouts`] when set (`request` and `backendRequest`), else the
/// policy's [`TrafficPolicy::timeout`] as `request` (GEP-2257 durations). The environment's
/// route timeouts take precedence over the service's own: they are the operator's limit for
/// every route of the environment, set where the service's authors cannot see the router.
/// Retries, circuit breaking and rate limits are not rendered on an `HTTPRoute`: retries are
/// in the experimental channel only (GEP-1731), and the others have no Gateway API field.
fn gateway_timeouts(policy: Option<&TrafficPolicy>, options: &RenderOptions) -> Option<Value> {
    if let Some(t) = options.route_timeouts {
        let mut timeouts = json!({ "request": super::gateway_duration(t.request) });
        if let Some(b) = t.backend_request {
            timeouts["backendRequest"] = json!(super::gateway_duration(b));
        }
        return Some(timeouts);
    }
    let timeout = policy?.timeout?;
    Some(json!({ "request": super::gateway_duration(timeout) }))
}

/// The Envoy retry conditions (`retryOn`) of `retries` when `per_try` timeouts are set:
/// `connect-failure` (no connection: nothing was sent), `refused-stream` (the instance refused
/// the HTTP/2 stream before reading it), `reset` only with a per-try timeout (Envoy retries an
/// attempt that timed out only under `reset`, `5xx` or `gateway-error`; `reset` also retries a
/// connection reset before the answer), and the statuses to retry as numbers: Istio moves
/// every number in `retryOn` to Envoy's `retriable_status_codes` and adds the
/// `retriable-status-codes` condition.
fn retry_on(on_status: &[u16], per_try: bool) -> String {
    let mut on = vec!["connect-failure".to_string(), "refused-stream".to_string()];
    if per_try {
        on.push("reset".into());
    }
    on.extend(on_status.iter().map(u16::to_string));
    on.join(",")
}

/// Sets `timeout` and `retries` on an Istio `VirtualService` HTTP route to a revision with
/// `policy`. The timeout is [`RenderOptions::route_timeouts`]' `request` when set (the
/// operator's limit takes precedence, as on an `HTTPRoute`), else the policy's; `retries` are
/// the policy's (`attempts`, `perTryTimeout`, `retryOn`, see [`retry_on`]). Without retries in
/// the policy nothing is written and Istio's default retries apply (2 attempts on
/// `connect-failure,refused-stream,unavailable,cancelled,503`).
fn istio_resilience(route: &mut Value, policy: Option<&TrafficPolicy>, options: &RenderOptions) {
    let timeout = options
        .route_timeouts
        .map(|t| t.request)
        .or_else(|| policy.and_then(|p| p.timeout));
    if let Some(timeout) = timeout {
        route["timeout"] = json!(super::istio_duration(timeout));
    }
    if let Some(r) = policy.and_then(|p| p.retries.as_ref()) {
        let mut retries = json!({
            "attempts": r.attempts,
            "retryOn": retry_on(&r.on_status, r.per_try_timeout.is_some()),
        });
        if let Some(per_try) = r.per_try_timeout {
            retries["perTryTimeout"] = json!(super::istio_duration(per_try));
        }
        route["retries"] = retries;
    }
}
