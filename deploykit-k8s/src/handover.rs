//! The Kubernetes part of a warm standby ([`deploykit_core::failover::WarmStandby`]): how the
//! primary's clients reach the standby namespace, as a [`Handover`].
//!
//! - **Same cluster** ([`RouteHandover::same_cluster`]): the primary namespace's route for each
//!   service is re-applied with every request going to the standby namespace's stable Service:
//!   a Gateway API `HTTPRoute` gets one rule whose `backendRef` names the Service in the
//!   standby namespace, which a `ReferenceGrant` there (`deploykit-handover-from-<primary>`)
//!   allows; an Istio `VirtualService` gets the Service's cluster name
//!   (`<service>.<namespace>.svc.cluster.local`) as its destination. The route is marked
//!   `deploykit.dev/handed-over-to: <namespace>`, so a sync leaves the standby alone, and the
//!   primary's next deploy applies its own route again (failback). Verification reads the
//!   route's `status.parents`: every parent must report `Accepted` and `ResolvedRefs` true for
//!   the route's current generation (a missing grant shows as `RefNotPermitted`), else the
//!   step is retried and escalated, never reported done.
//! - **Another cluster** ([`RouteHandover::other_cluster`]): no route can reach across, so the
//!   standby's own route must be accepted by its Gateway, and clients are moved by the
//!   failover's `switch_traffic` hook (DNS); the detail says where they must go.
//!
//! Without a router in the primary namespace ([`Router::None`]) nothing routes by name, and an
//! Ingress ([`Router::Ingress`]) cannot send requests to another namespace's Service: the
//! detail says which Service clients must reach, and the hook moves them. When the standby
//! routes with an Ingress too, verification waits until its controller admitted the standby's
//! Ingress (an address in `status.loadBalancer.ingress`).
//!
//! Requests are not sent: deploykit does not reach the cluster's Gateway from where it runs,
//! so it checks what the Gateway reports instead.

use async_trait::async_trait;
use deploykit_core::failover::Handover;
use deploykit_core::{Error, Result, ServiceId};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::ApiResource;
use serde_json::json;

use crate::environment::{KubeEnvironment, http_route, virtual_service};
use crate::render::{LABEL_MANAGED_BY, MANAGED_BY, Router};
use crate::route_status::accepted_parents;

/// Route annotation naming the namespace its clients were handed over to.
pub const ANNOTATION_HANDED_OVER: &str = "deploykit.dev/handed-over-to";

/// The port every deploykit Service listens on (see `render`).
const SERVICE_PORT: i64 = 80;

/// Moves a primary namespace's clients to a standby namespace (see the module docs).
#[derive(Clone, Debug)]
pub struct RouteHandover {
    /// The primary namespace, when it is in the standby's cluster.
    from: Option<KubeEnvironment>,
    /// The standby namespace.
    to: KubeEnvironment,
}

impl RouteHandover {
    /// Primary and standby namespaces of one cluster: the primary's routes are pointed at the
    /// standby's Services.
    pub fn same_cluster(from: KubeEnvironment, to: KubeEnvironment) -> Result<Self> {
        if from.namespace() == to.namespace() {
            return Err(Error::invalid(
                "standby.namespace",
                format!(
                    "the standby must be another namespace than the primary's {}",
                    from.namespace()
                ),
            ));
        }
        Ok(RouteHandover {
            from: Some(from),
            to,
        })
    }

    /// A standby in another cluster: its own route serves, and the switch_traffic hook moves
    /// clients.
    pub fn other_cluster(to: KubeEnvironment) -> Self {
        RouteHandover { from: None, to }
    }

    /// The standby Service's name inside the cluster.
    fn standby_host(&self, service: &ServiceId) -> String {
        format!("{service}.{}.svc.cluster.local", self.to.namespace())
    }

    /// Point the primary's route of `service` at the standby's Service, with the grant that
    /// allows it: what was done.
    async fn redirect(&self, from: &KubeEnvironment, service: &ServiceId) -> Result<String> {
        let Some(resource) = route_resource(&from.options().router) else {
            let why = match from.options().router {
                Router::Ingress { .. } => {
                    "routes with an Ingress, which cannot send requests \
                                          to another namespace's Service"
                }
                _ => "has no router",
            };
            return Ok(format!(
                "{service}: {} {why}; clients must reach {}",
                from.namespace(),
                self.standby_host(service)
            ));
        };
        let route = from
            .get_object(&resource, service.as_str())
            .await?
            .ok_or_else(|| {
                Error::transient(
                    format!("hand {service} over"),
                    format!(
                        "{} {service} does not exist in namespace {}: deploy {service} there first",
                        resource.kind,
                        from.namespace()
                    ),
                )
            })?;
        let standby = self.to.namespace();
        let spec = match resource.kind.as_str() {
            "HTTPRoute" => {
                self.grant(from.namespace()).await?;
                let mut spec = route.data.get("spec").cloned().unwrap_or_else(|| json!({}));
                spec["rules"] = json!([{
                    "backendRefs": [{
                        "name": service.as_str(),
                        "namespace": standby,
                        "port": SERVICE_PORT,
                    }],
                }]);
                spec
            }
            _ => {
                let mut spec = route.data.get("spec").cloned().unwrap_or_else(|| json!({}));
                spec["http"] = json!([{
                    "name": "primary",
                    "route": [{
                        "destination": {
                            "host": self.standby_host(service),
                            "port": { "number": SERVICE_PORT },
                        },
                    }],
                }]);
                spec
            }
        };
        let mut annotations = route.metadata.annotations.clone().unwrap_or_default();
        annotations.insert(ANNOTATION_HANDED_OVER.to_string(), standby.to_string());
        let body = json!({
            "apiVersion": resource.api_version,
            "kind": resource.kind,
            "metadata": {
                "name": service.as_str(),
                "namespace": from.namespace(),
                "labels": route.metadata.labels.clone().unwrap_or_default(),
                "annotations": annotations,
            },
            "spec": spec,
        });
        from.apply_over(&resource, &body).await?;
        Ok(format!(
            "{} {}/{service} sends every request to {standby}/{service}",
            resource.kind,
            from.namespace()
        ))
    }

    /// The `ReferenceGrant` in the standby namespace that lets the primary namespace's
    /// HTTPRoutes name its Services.
    async fn grant(&self, from_namespace: &str) -> Result<()> {
        let body = json!({
            "apiVersion": "gateway.networking.k8s.io/v1beta1",
            "kind": "ReferenceGrant",
            "metadata": {
                "name": format!("deploykit-handover-from-{from_namespace}"),
                "namespace": self.to.namespace(),
                "labels": { LABEL_MANAGED_BY: MANAGED_BY },
            },
            "spec": {
                "from": [{
                    "group": "gateway.networking.k8s.io",
                    "kind": "HTTPRoute",
                    "namespace": from_namespace,
                }],
                "to": [{ "group": "", "kind": "Service" }],
            },
        });
        self.to.apply_over(&reference_grant(), &body).await?;
        Ok(())
    }
}

#[async_trait]
impl Handover for RouteHandover {
    async fn redirected(&self, service: &ServiceId) -> Result<Option<String>> {
        let Some(from) = &self.from else {
            return Ok(None);
        };
        let Some(resource) = route_resource(&from.options().router) else {
            return Ok(None);
        };
        Ok(from
            .get_object(&resource, service.as_str())
            .await?
            .and_then(|route| {
                route
                    .metadata
                    .annotations?
                    .get(ANNOTATION_HANDED_OVER)
                    .map(|ns| format!("namespace {ns}"))
            }))
    }

    async fn standby_reachable(&self) -> std::result::Result<String, String> {
        self.to
            .answers()
            .await
            .map(|()| format!("namespace {} answers", self.to.namespace()))
            .map_err(|e| {
                format!(
                    "the standby namespace {} cannot be read: {}",
                    self.to.namespace(),
                    e.chain()
                )
            })
    }

    async fn hand_over(&self, services: &[ServiceId]) -> Result<String> {
        let mut done = Vec::new();
        for service in services {
            done.push(match &self.from {
                Some(from) => self.redirect(from, service).await?,
                None => format!(
                    "{service}: the standby serves on its own cluster ({}); clients must reach it \
                     there (the switch_traffic hook moves them)",
                    describe_router(&self.to.options().router)
                ),
            });
        }
        Ok(done.join("; "))
    }

    async fn check(&self, service: &ServiceId, _path: &str) -> Result<String> {
        // Through the primary's route when it reaches the standby, else the standby's own.
        let (env, expect) = match &self.from {
            Some(from) => (from, Some(self.to.namespace())),
            None => (&self.to, None),
        };
        if matches!(env.options().router, Router::Ingress { .. })
            && matches!(self.to.options().router, Router::Ingress { .. })
        {
            // Nothing reaches across from an Ingress: the standby's own Ingress serves, and it
            // counts once its controller admitted it.
            let ingress = self
                .to
                .get_object(&ApiResource::erase::<Ingress>(&()), service.as_str())
                .await?;
            if let Some(why) =
                crate::route_status::ingress_problem(self.to.namespace(), service, ingress.as_ref())
            {
                return Err(not_yet(service, why));
            }
            return Ok(format!(
                "Ingress {}/{service} admitted by its controller",
                self.to.namespace()
            ));
        }
        let Some(resource) = route_resource(&env.options().router) else {
            return Ok(format!(
                "{service}: no route in {} to check (no router)",
                env.namespace()
            ));
        };
        let route = env
            .get_object(&resource, service.as_str())
            .await?
            .ok_or_else(|| not_yet(service, format!("{} {service} is gone", resource.kind)))?;
        if let Some(standby) = expect {
            let to = route
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_HANDED_OVER));
            if to.map(String::as_str) != Some(standby) {
                return Err(not_yet(
                    service,
                    format!(
                        "{} {}/{service} does not send its requests to {standby} (someone \
                         applied it again)",
                        resource.kind,
                        env.namespace()
                    ),
                ));
            }
        }
        if resource.kind != "HTTPRoute" {
            return Ok(format!(
                "{} {}/{service} routes to {} (Istio reports no acceptance to check)",
                resource.kind,
                env.namespace(),
                self.standby_host(service)
            ));
        }
        let parents = accepted_parents(&route).map_err(|why| not_yet(service, why))?;
        Ok(format!(
            "HTTPRoute {}/{service} accepted with its references resolved by {}",
            env.namespace(),
            parents.join(", ")
        ))
    }
}

fn not_yet(service: &ServiceId, why: String) -> Error {
    Error::transient(format!("verify {service}"), why)
}

/// The route kind of `router`, if any.
fn route_resource(router: &Router) -> Option<ApiResource> {
    match router {
        Router::GatewayApi { .. } => Some(http_route()),
        Router::Istio { .. } => Some(virtual_service()),
        Router::Ingress { .. } | Router::None => None,
    }
}

fn reference_grant() -> ApiResource {
    ApiResource {
        group: "gateway.networking.k8s.io".into(),
        version: "v1beta1".into(),
        api_version: "gateway.networking.k8s.io/v1beta1".into(),
        kind: "ReferenceGrant".into(),
        plural: "referencegrants".into(),
    }
}

fn describe_router(router: &Router) -> String {
    match router {
        Router::GatewayApi { hostnames, .. }
        | Router::Istio {
            hosts: hostnames, ..
        } => {
            if hostnames.is_empty() {
                "its route".to_string()
            } else {
                format!("hosts {}", hostnames.join(", "))
            }
        }
        Router::Ingress { domain, .. } => format!("hosts <service>.{domain}"),
        Router::None => "no router".to_string(),
    }
}
