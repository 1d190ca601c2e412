//! Which revision each Service selects, the Services, and the NetworkPolicy.

use std::collections::BTreeMap;

use deploykit_core::{
    DesiredState, Error, Protocol, Result, Revision, RevisionId, Routes, ServiceId, Traffic,
    TrafficPolicy,
};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::names::{app_labels, app_selector, meta, revision_selector};
use super::workload::PORT_NAME;
use super::{Mesh, RenderOptions, Router, SERVICE_PORT};

/// Which revision each Service selects, and the routes between them.
#[derive(Debug)]
pub(crate) struct Layout<'a> {
    /// The stable Service's revision; `None` selects every revision (`ByReadyInstances`).
    pub(crate) stable: Option<&'a Revision>,
    /// The canary Service's revision.
    pub(crate) canary: Option<&'a Revision>,
    /// The preview Service's revision.
    pub(crate) preview: Option<&'a Revision>,
    /// The explicit routes, in `Routed` mode.
    pub(crate) routes: Option<&'a Routes>,
    /// The first revision listed in the desired state: the one a rolling update or a rollback
    /// brings in (the orchestrator lists it first).
    pub(crate) first: Option<&'a Revision>,
}

/// The Service names of `service`.
pub(crate) fn stable_name(service: &ServiceId) -> String {
    service.to_string()
}

/// The canary Service's name.
pub(crate) fn canary_name(service: &ServiceId) -> String {
    format!("{service}-canary")
}

/// The preview Service's name.
pub(crate) fn preview_name(service: &ServiceId) -> String {
    format!("{service}-preview")
}

impl<'a> Layout<'a> {
    /// Decides which revision each Service selects; checks that the routes fit.
    pub(crate) fn of(service: &ServiceId, desired: &'a DesiredState) -> Result<Self> {
        let revisions: Vec<&Revision> = desired.revisions.iter().map(|t| &*t.revision).collect();
        for (i, a) in revisions.iter().enumerate() {
            for b in &revisions[..i] {
                if a.id == b.id {
                    return Err(Error::invalid(
                        "desired.revisions",
                        format!("revision {} is listed twice", a.describe()),
                    ));
                }
                if a.id.as_str().get(..8) == b.id.as_str().get(..8) {
                    return Err(Error::invalid(
                        "desired.revisions",
                        format!(
                            "revisions {} and {} of {service} share their first 8 hex digits, \
                             which name their Deployments",
                            a.describe(),
                            b.describe()
                        ),
                    ));
                }
            }
        }
        let find = |id: &RevisionId, field: &str| -> Result<&'a Revision> {
            desired
                .revisions
                .iter()
                .map(|t| &*t.revision)
                .find(|r| &r.id == id)
                .ok_or_else(|| {
                    Error::invalid(
                        field,
                        format!("revision {id} is not one of the desired revisions of {service}"),
                    )
                })
        };
        let routes = match &desired.traffic {
            Traffic::Routed(routes) => routes,
            _ => {
                return Ok(Layout {
                    stable: None,
                    canary: None,
                    preview: None,
                    routes: None,
                    first: revisions.first().copied(),
                });
            }
        };
        let mut sum = 0;
        for (id, weight) in &routes.weights {
            find(id, "traffic.weights")?;
            sum += weight.percent();
        }
        if sum != 100 {
            return Err(Error::invalid(
                "traffic.weights",
                format!("weights sum to {sum}, not 100"),
            ));
        }
        // The largest weight; ties go to the first listed.
        let mut stable: Option<&Revision> = None;
        for rev in &revisions {
            if stable.is_none_or(|s| routes.weight_of(&rev.id) > routes.weight_of(&s.id)) {
                stable = Some(rev);
            }
        }
        let stable = stable.ok_or_else(|| {
            Error::invalid("desired.revisions", "routed traffic needs a revision")
        })?;
        let weighted: Vec<&Revision> = revisions
            .iter()
            .copied()
            .filter(|r| r.id != stable.id && routes.weight_of(&r.id) > 0)
            .collect();
        if weighted.len() > 1 {
            return Err(Error::invalid(
                "traffic.weights",
                format!(
                    "{} revisions have weight; Kubernetes routes between two at most (stable \
                     and canary)",
                    weighted.len() + 1
                ),
            ));
        }
        let header = routes
            .header
            .as_ref()
            .map(|h| find(&h.revision, "traffic.header.revision"))
            .transpose()?;
        let mirror = routes
            .mirror
            .as_ref()
            .map(|m| find(&m.revision, "traffic.mirror.revision"))
            .transpose()?;
        let preview = routes
            .preview
            .as_ref()
            .map(|p| find(p, "traffic.preview"))
            .transpose()?;
        let not_stable = |r: &&Revision| r.id != stable.id;
        let canary = weighted
            .first()
            .copied()
            .or(header.filter(not_stable))
            .or(mirror.filter(not_stable))
            .or_else(|| {
                revisions
                    .iter()
                    .copied()
                    .find(|r| r.id != stable.id && preview.is_none_or(|p| p.id != r.id))
            });
        let served = |r: &Revision| r.id == stable.id || canary.is_some_and(|c| c.id == r.id);
        if let Some(h) = header
            && !served(h)
        {
            return Err(Error::invalid(
                "traffic.header.revision",
                format!(
                    "the header route targets {}, which is neither the stable nor the canary \
                     revision",
                    h.describe()
                ),
            ));
        }
        if let Some(m) = mirror
            && !served(m)
        {
            return Err(Error::invalid(
                "traffic.mirror.revision",
                format!(
                    "the mirror targets {}, which is neither the stable nor the canary revision",
                    m.describe()
                ),
            ));
        }
        if let Some(h) = &routes.header {
            if !super::names::is_header_name(&h.name) {
                return Err(Error::invalid(
                    "traffic.header.name",
                    format!("{:?} is not an HTTP header name", h.name),
                ));
            }
            if h.value.is_empty() || h.value.chars().any(|c| c.is_control()) {
                return Err(Error::invalid(
                    "traffic.header.value",
                    format!("{:?} is not an HTTP header value", h.value),
                ));
            }
        }
        Ok(Layout {
            stable: Some(stable),
            canary,
            preview,
            routes: Some(routes),
            first: revisions.first().copied(),
        })
    }

    /// The revision whose [`TrafficPolicy`] the service-wide objects carry (the stable
    /// Service's port, the route's default rule, the DestinationRule): under routed traffic the
    /// stable Service's (the largest weight), else the first listed (the revision a rolling
    /// update or a rollback brings in, so its policy holds from the start of the rollout).
    pub(crate) fn serving(&self) -> Option<&'a Revision> {
        self.stable.or(self.first)
    }

    /// The traffic policy of [`Layout::serving`].
    pub(crate) fn serving_policy(&self) -> Option<&'a TrafficPolicy> {
        self.serving().map(|r| &r.config.traffic)
    }

    /// The traffic policy of the revision `id` that a route targets (stable, canary or
    /// preview).
    pub(crate) fn policy_of(&self, id: &RevisionId) -> Option<&'a TrafficPolicy> {
        [self.stable, self.canary, self.preview, self.first]
            .into_iter()
            .flatten()
            .find(|r| &r.id == id)
            .map(|r| &r.config.traffic)
    }

    /// The name of the Service that selects `revision`.
    pub(crate) fn service_of(&self, service: &ServiceId, revision: &RevisionId) -> String {
        if self.canary.is_some_and(|c| &c.id == revision) {
            canary_name(service)
        } else {
            stable_name(service)
        }
    }

    /// The stable, canary and preview Services, those that exist.
    pub(crate) fn services(
        &self,
        service: &ServiceId,
        options: &RenderOptions,
    ) -> Result<Vec<Service>> {
        let protocol = |rev: Option<&Revision>| {
            rev.and_then(|r| app_protocol(r.config.traffic.protocol, &options.router))
        };
        let stable = one_service(
            stable_name(service),
            match self.stable {
                Some(r) => revision_selector(service, r),
                None => app_selector(service),
            },
            protocol(self.serving()),
            service,
            options,
        );
        let mut out = vec![stable];
        for (name, rev) in [
            (canary_name(service), self.canary),
            (preview_name(service), self.preview),
        ] {
            if let Some(rev) = rev {
                out.push(one_service(
                    name,
                    revision_selector(service, rev),
                    protocol(Some(rev)),
                    service,
                    options,
                ));
            }
        }
        Ok(out)
    }
}

/// The Service port's `appProtocol` for instances speaking `protocol` behind `router`; `None`
/// for HTTP/1.1, which every router assumes without one.
///
/// - With [`Router::Istio`] Istio alone reads it, in its own vocabulary (protocol selection:
///   `http2`, `grpc`, understood by every Istio release that reads `appProtocol`): `grpc`
///   also gives gRPC statuses in its telemetry.
/// - Otherwise `kubernetes.io/h2c` for both: the standard value of KEP-3726 for HTTP/2 by
///   prior knowledge, which Gateway API GEP-1911 adopted (conformance feature
///   `HTTPRouteBackendProtocolH2C`: Envoy Gateway, NGINX Gateway Fabric, GKE and others), and
///   which recent Istio maps to HTTP/2 too (for a mesh behind another router). gRPC is HTTP/2
///   by prior knowledge to the instances; Gateway API has no standard `grpc` value (some
///   implementations read one, others would then speak HTTP/1.1 to a gRPC server).
///   Ingress controllers mostly ignore `appProtocol` (ingress-nginx wants its own
///   `backend-protocol` annotation), so an Ingress may still speak HTTP/1.1 to the pods.
pub(crate) fn app_protocol(protocol: Protocol, router: &Router) -> Option<String> {
    let istio = matches!(router, Router::Istio { .. });
    let value = match protocol {
        Protocol::H2c if istio => "http2",
        Protocol::Grpc if istio => "grpc",
        Protocol::H2c | Protocol::Grpc => "kubernetes.io/h2c",
        _ => return None,
    };
    Some(value.to_string())
}

fn one_service(
    name: String,
    selector: BTreeMap<String, String>,
    app_protocol: Option<String>,
    service: &ServiceId,
    options: &RenderOptions,
) -> Service {
    Service {
        metadata: meta(name, options, app_labels(service)),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.into()),
                app_protocol,
                port: SERVICE_PORT,
                target_port: Some(IntOrString::String(PORT_NAME.into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn namespace_peer(namespace: &str, pods: Option<BTreeMap<String, String>>) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                namespace.to_string(),
            )])),
            match_expressions: None,
        }),
        pod_selector: pods.map(|labels| LabelSelector {
            match_labels: Some(labels),
            match_expressions: None,
        }),
        ip_block: None,
    }
}

fn port(protocol: &str, port: IntOrString) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(port),
        protocol: Some(protocol.into()),
        end_port: None,
    }
}

/// The NetworkPolicy `<service>`: ingress to the app port from the service's own pods, the
/// allowed namespaces and the router's data plane; egress to DNS, the allowed CIDRs and peers;
/// and what the mesh needs (see [`NetworkOptions`]).
pub(crate) fn network_policy(
    service: &ServiceId,
    has_port: bool,
    options: &RenderOptions,
) -> Result<NetworkPolicy> {
    let net = &options.network;
    let mut ingress = Vec::new();
    if has_port {
        let mut from = vec![NetworkPolicyPeer {
            pod_selector: Some(LabelSelector {
                match_labels: Some(app_selector(service)),
                match_expressions: None,
            }),
            ..NetworkPolicyPeer::default()
        }];
        let mut namespaces: Vec<String> = net.allow_from_namespaces.clone();
        for ns in gateway_namespaces(options) {
            if !namespaces.contains(&ns) {
                namespaces.push(ns);
            }
        }
        from.extend(namespaces.iter().map(|ns| namespace_peer(ns, None)));
        let app_port = port("TCP", IntOrString::String(PORT_NAME.into()));
        if net.mesh == Mesh::IstioAmbient {
            // Requests arrive through ztunnel's HBONE tunnel on 15008, from the same peers.
            ingress.push(NetworkPolicyIngressRule {
                from: Some(from.clone()),
                ports: Some(vec![port("TCP", IntOrString::Int(15008))]),
            });
            // Kubelet probes, which ztunnel makes come from this link-local address.
            from.push(NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: "169.254.7.127/32".into(),
                    except: None,
                }),
                ..NetworkPolicyPeer::default()
            });
        }
        ingress.insert(
            0,
            NetworkPolicyIngressRule {
                from: Some(from),
                ports: Some(vec![app_port]),
            },
        );
    }
    let mut egress = Vec::new();
    if net.allow_dns {
        egress.push(NetworkPolicyEgressRule {
            to: Some(vec![namespace_peer(
                &net.dns_namespace,
                Some(net.dns_labels.clone()),
            )]),
            ports: Some(vec![
                port("UDP", IntOrString::Int(53)),
                port("TCP", IntOrString::Int(53)),
            ]),
        });
    }
    if net.mesh == Mesh::IstioSidecar {
        egress.push(NetworkPolicyEgressRule {
            to: Some(vec![namespace_peer(
                "istio-system",
                Some(BTreeMap::from([("app".to_string(), "istiod".to_string())])),
            )]),
            ports: Some(vec![port("TCP", IntOrString::Int(15012))]),
        });
    }
    let tcp_ports = |ports: &[u16]| {
        (!ports.is_empty()).then(|| {
            ports
                .iter()
                .map(|p| port("TCP", IntOrString::Int(i32::from(*p))))
                .collect()
        })
    };
    for rule in &net.allow_egress {
        egress.push(NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: rule.cidr.clone(),
                    except: None,
                }),
                ..NetworkPolicyPeer::default()
            }]),
            ports: tcp_ports(&rule.ports),
        });
    }
    for peer in &net.allow_egress_to {
        let pods = LabelSelector {
            match_labels: Some(peer.pod_labels.clone()),
            match_expressions: None,
        };
        let to = match &peer.namespace {
            Some(ns) => namespace_peer(ns, Some(peer.pod_labels.clone())),
            None => NetworkPolicyPeer {
                pod_selector: Some(pods),
                ..NetworkPolicyPeer::default()
            },
        };
        egress.push(NetworkPolicyEgressRule {
            to: Some(vec![to]),
            ports: tcp_ports(&peer.ports),
        });
    }
    Ok(NetworkPolicy {
        metadata: meta(service.as_str(), options, app_labels(service)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(app_selector(service)),
                match_expressions: None,
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: (!ingress.is_empty()).then_some(ingress),
            egress: (!egress.is_empty()).then_some(egress),
        }),
    })
}

/// The namespaces the router's proxies run in: [`NetworkOptions::gateway_namespaces`] if set,
/// else those of the route's parent Gateway or Istio gateways (the route's own namespace when
/// they name none; nothing for the Istio mesh gateway or without a router), or the Ingress
/// controller's.
pub(crate) fn gateway_namespaces(options: &RenderOptions) -> Vec<String> {
    if let Some(namespaces) = &options.network.gateway_namespaces {
        return namespaces.clone();
    }
    match &options.router {
        Router::GatewayApi { parent, .. } => vec![
            parent
                .namespace
                .clone()
                .unwrap_or_else(|| options.namespace.clone()),
        ],
        Router::Istio { gateways, .. } => {
            let mut out: Vec<String> = Vec::new();
            for gateway in gateways.iter().filter(|g| g.as_str() != "mesh") {
                let ns = gateway
                    .split_once('/')
                    .map_or_else(|| options.namespace.clone(), |(ns, _)| ns.to_string());
                if !out.contains(&ns) {
                    out.push(ns);
                }
            }
            out
        }
        Router::Ingress {
            controller_namespace,
            ..
        } => vec![controller_namespace.clone()],
        Router::None => Vec::new(),
    }
}
