//! Rendering: the Kubernetes objects deploykit applies for one service to reach a
//! [`DesiredState`], computed with no cluster and no IO.
//!
//! [`plan`] turns a desired state into a [`Plan`]: an ordered list of [`Object`]s that the
//! environment applies with server-side apply (field manager `deploykit`) and whose absent
//! members it deletes. [`namespace_plan`] gives the namespace-wide objects.
//!
//! # What is rendered
//!
//! For service `web` and each revision (`<rev8>` = the first 8 hex digits of its id):
//!
//! | object | name | notes |
//! | --- | --- | --- |
//! | ConfigMap | `web-<rev8>-env` | immutable; the revision's variables |
//! | Secret | `web-<rev8>-secrets` | immutable, Opaque; only when the revision has secrets |
//! | Deployment | `web-<rev8>` | its pod template never changes; the orchestrator sets replicas |
//!
//! and for the service:
//!
//! | object | name | notes |
//! | --- | --- | --- |
//! | Service | `web`, `web-canary`, `web-preview` | port 80 `http` → container port `http` |
//! | HorizontalPodAutoscaler | `web` | when [`DesiredState::autoscale`] is set and one revision serves, see below |
//! | PodDisruptionBudget | `web` | `maxUnavailable` [`RenderOptions::pdb_max_unavailable`] |
//! | NetworkPolicy | `web` | default deny, see [`NetworkOptions`] |
//! | ServiceAccount, PeerAuthentication, AuthorizationPolicy, DestinationRule | `web` | with a [`MeshPolicy`] (a DestinationRule alone behind [`Router::Istio`] for a circuit breaker, see below) |
//! | HTTPRoute / VirtualService / Ingress | `web` (and HTTPRoute or Ingress `web-preview`) | see [`Router`] |
//! | Certificate, ReferenceGrant | `web` | with [`RenderOptions::tls`], see [`RouteTls`] |
//!
//! Every object carries [`LABEL_NAME`] and [`LABEL_MANAGED_BY`]; per-revision objects also carry
//! [`LABEL_REVISION`] and `app.kubernetes.io/version` (the revision's label made a valid label
//! value). The Deployment carries [`ANNOTATION_REVISION_SPEC`] (the [`Revision`] as JSON) and
//! [`ANNOTATION_TRAFFIC`] (the applied [`Traffic`] as JSON) on the route, or on the stable
//! Service without a router (see [`traffic_holder`]).
//!
//! # Which Service selects what
//!
//! With [`Traffic::ByReadyInstances`] the stable Service selects every pod of the service (a
//! plain rolling update) and there is no canary or preview Service. With [`Traffic::Routed`]
//! the stable Service selects the revision with the largest weight (ties: the first listed in
//! [`DesiredState::revisions`]); the canary Service selects the other revision that has weight,
//! else the header route's target, else the mirror's target, else (so that it outlives an
//! abort) the first other revision that is not the preview target; the preview Service selects
//! [`Routes::preview`]. At most two revisions may have weight, and the header route and mirror
//! must target the stable or canary revision.
//!
//! Services and the route need a port: if any revision has no port, neither is rendered (and
//! so neither is the [`ANNOTATION_TRAFFIC`] annotation), and missing probes cannot be derived.
//! Without a [`Router`], or with an Ingress ([`Router::Ingress`]), weights cannot be
//! honoured: ordinary traffic reaches the stable Service's revision only, and the others are
//! reachable through their own Services (so the environment refuses strategies that need a
//! split, see [`Router::None`]).
//!
//! # The revision's traffic policy
//!
//! Each revision carries its service's [`TrafficPolicy`](deploykit_core::TrafficPolicy)
//! (`revision.config.traffic`). Objects that serve one revision take its policy: the canary
//! and preview Services, the header route and the preview route. The service-wide objects —
//! the stable Service, the route's default rule, the DestinationRule — take the policy of the
//! *serving* revision: under [`Traffic::Routed`] the stable Service's (the largest weight), else
//! the first listed in [`DesiredState::revisions`] (the revision a rolling update or a
//! rollback brings in). The default policy changes no object.
//!
//! | policy | Kubernetes | notes |
//! | --- | --- | --- |
//! | `protocol` h2c / gRPC | Service port `appProtocol` | `kubernetes.io/h2c` (KEP-3726, Gateway API GEP-1911); with [`Router::Istio`] Istio's `http2` / `grpc`; none for HTTP/1.1 |
//! | `timeout` | Istio route `timeout`; `HTTPRoute` rule `timeouts.request` | [`RenderOptions::route_timeouts`] take precedence when set; not on an Ingress |
//! | `retries` | Istio route `retries` (`attempts`, `perTryTimeout`, `retryOn`) | Istio only: Gateway API retries are experimental (GEP-1731); no retry budget |
//! | `circuit_breaker` | DestinationRule `outlierDetection`, `connectionPool.http.http2MaxRequests` | behind [`Router::Istio`] or with a [`MeshPolicy`]; overrides the mesh policy's outlier defaults |
//! | `rate_limit` | nothing | no portable Kubernetes API; enforced by the local proxy only |
//!
//! # Autoscaling
//!
//! With [`DesiredState::autoscale`] set, every Deployment omits `spec.replicas` and carries
//! [`ANNOTATION_AUTOSCALE`] (the bounds): replica counts are then written by the environment
//! under their own field manager, so that deploykit's apply never owns them and the
//! HorizontalPodAutoscaler and deploykit never conflict over them. The HPA targets the serving
//! revision: the only one, or under [`Traffic::Routed`] the stable Service's (a canary or a
//! blue-green rollout keeps the stable revision autoscaled until promotion, then the HPA moves
//! to the new revision). Under [`Traffic::ByReadyInstances`] with several revisions (a rolling
//! update in progress) no single revision serves and no HPA is rendered; the environment
//! records the count the HPA wanted on the Deployments ([`ANNOTATION_AUTOSCALED_REPLICAS`])
//! until it is back.
//!
//! # Security
//!
//! With [`RenderOptions::restricted`] (the default) pods meet the *restricted* Pod Security
//! Standard: non-root, read-only root filesystem (an `emptyDir` is mounted at `/tmp`), no
//! privilege escalation, every capability dropped, the `RuntimeDefault` seccomp profile, and all
//! three probes (a missing one is derived as a TCP probe on the port). The service-account
//! token is not mounted unless [`RenderOptions::service_account_token`] asks for it. Secrets
//! reach the app as environment variables (`secretKeyRef`), or with
//! [`RenderOptions::secret_files`] as read-only files (mode `0400`, readable by the pod's
//! `fsGroup`) and not in its environment. Routes terminate TLS with [`RenderOptions::tls`]
//! (see [`RouteTls`]). Requests
//! and limits are always set. Images are pinned by digest when the artifact is a `sha256:`
//! digest (`<repository>@sha256:…`), else tagged with the revision's label.
//!
//! Stopping pods drain: a `preStop` sleep ([`RenderOptions::drain`], default 5 s) keeps a pod
//! serving while endpoints and routers stop sending it requests, inside a
//! `terminationGracePeriodSeconds` of the drain plus [`RenderOptions::shutdown_grace`]
//! (default 30 s). Each revision's pods are spread over zones and nodes as a preference
//! ([`RenderOptions::spread`]). Images whose `USER` is a name get a numeric user and group
//! with [`RenderOptions::run_as`] (the kubelet cannot check a named user against
//! `runAsNonRoot`); root is refused under the restricted standard.

mod mesh;
mod names;
mod network;

pub(crate) use names::{revision_name, secret_name};
mod routes;
mod tls;
mod workload;
mod yaml;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use deploykit_core::secrets::SecretString;
#[cfg(doc)]
use deploykit_core::{Autoscale, Routes, Traffic};
use deploykit_core::{DesiredState, Error, Resources, Result, Revision, RevisionId, ServiceId};
use k8s_openapi::Resource as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{
    ConfigMap, LimitRange, ResourceQuota, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::Value;

/// The value of [`LABEL_MANAGED_BY`] on every object deploykit manages.
pub const MANAGED_BY: &str = "deploykit";
/// Label naming the service an object belongs to.
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
/// Label marking objects deploykit manages (value [`MANAGED_BY`]).
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Label carrying the revision id on per-revision objects and their pods.
pub const LABEL_REVISION: &str = "deploykit.dev/revision";
/// Deployment annotation holding the full [`Revision`] as JSON, so that observing a cluster can
/// rebuild it.
pub const ANNOTATION_REVISION_SPEC: &str = "deploykit.dev/revision-spec";
/// Stable-Service annotation holding the applied [`Traffic`] as JSON.
pub const ANNOTATION_TRAFFIC: &str = "deploykit.dev/traffic";
/// Deployment annotation marking an autoscaled revision, with the autoscaling bounds
/// ([`Autoscale`]) as JSON.
pub const ANNOTATION_AUTOSCALE: &str = "deploykit.dev/autoscale";
/// Deployment annotation holding the replica count the HorizontalPodAutoscaler wanted when a
/// rolling update suspended it; the environment reports it as the live count until the HPA is
/// back.
pub const ANNOTATION_AUTOSCALED_REPLICAS: &str = "deploykit.dev/autoscaled-replicas";
/// Label carrying the revision's human label (sanitised).
pub(crate) const LABEL_VERSION: &str = "app.kubernetes.io/version";
/// The port every rendered Service listens on.
pub(crate) const SERVICE_PORT: i32 = 80;

/// How objects are rendered: namespace, images, routing, security and sizing.
///
/// ```
/// use deploykit_k8s::render::{RenderOptions, Router};
/// let options = RenderOptions::new("shop")
///     .image("web", "registry.example.com/shop/web")
///     .router(Router::None);
/// assert!(options.restricted);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RenderOptions {
    /// The namespace every object goes in.
    pub namespace: String,
    /// Image repository per service name; rendering a service without one fails naming
    /// `images.<service>`.
    pub images: BTreeMap<String, String>,
    /// How traffic reaches the Services.
    pub router: Router,
    /// Meet the restricted Pod Security Standard (default true).
    pub restricted: bool,
    /// Mount the service-account token in pods (default false).
    pub service_account_token: bool,
    /// Requests and limits for values a revision leaves unset (default cpu 100m/500m, memory
    /// 128/256 MiB); also the namespace's LimitRange defaults. A default limit below a
    /// revision's request is raised to the request (and a default request above a revision's
    /// limit lowered to it).
    pub default_resources: Resources,
    /// `priorityClassName` of the pods.
    pub priority_class: Option<String>,
    /// `maxUnavailable` of the service's PodDisruptionBudget (`policy/v1`, default 1); 0
    /// renders no budget (one with 0 would block node drains for good).
    pub pdb_max_unavailable: u32,
    /// The service's NetworkPolicy.
    pub network: NetworkOptions,
    /// A ResourceQuota for the namespace (see [`namespace_plan`]).
    pub quota: Option<Quota>,
    /// The user and group the pods run as (`runAsUser`, `runAsGroup` and `fsGroup`), for
    /// images whose `USER` is a name: under `runAsNonRoot` the kubelet cannot tell whether a
    /// named user is root and refuses to start the container. `None`: the image's own numeric
    /// `USER` (default).
    pub run_as: Option<RunAs>,
    /// How long a stopping pod keeps serving while endpoints and routers stop sending it
    /// requests: a `preStop` sleep of this long (default 5 s; zero: none), so no request is
    /// sent to a pod that already exited.
    pub drain: Duration,
    /// How long the app has after SIGTERM to finish (default 30 s); the pod's
    /// `terminationGracePeriodSeconds` is `drain` plus this.
    pub shutdown_grace: Duration,
    /// Istio security and resilience for the service (default none): see [`MeshPolicy`].
    pub mesh_policy: Option<MeshPolicy>,
    /// Spread each revision's pods over zones and nodes (`topologySpreadConstraints` on
    /// `topology.kubernetes.io/zone` and `kubernetes.io/hostname`, max skew 1,
    /// `ScheduleAnyway`: a preference, never a pod left pending; default true).
    pub spread: bool,
    /// Time limits on the service's routes (default none: the router's own).
    pub route_timeouts: Option<RouteTimeouts>,
    /// TLS on the service's routes (default none: plain HTTP, or whatever the router's own
    /// listener does): see [`RouteTls`].
    pub tls: Option<RouteTls>,
    /// Mount the revision's secrets as files in this directory instead of passing them as
    /// environment variables (default `None`: environment variables): see
    /// [`RenderOptions::secret_files`].
    pub secret_files: Option<String>,
}

/// TLS on a service's routes: where the certificate comes from, and what is rendered so that
/// the router terminates TLS with it. The certificate is a Secret of type `kubernetes.io/tls`
/// in the app's namespace, either one the user provides ([`RouteTls::secret`]; a wildcard
/// certificate for every service, say) or `<service>-tls`, kept issued and renewed by
/// cert-manager from a `Certificate` (`cert-manager.io/v1`) named `<service>` that deploykit
/// renders ([`RouteTls::cert_manager`]): `spec.secretName` `<service>-tls`, `spec.dnsNames`
/// the service's hosts, `spec.issuerRef` the [`Issuer`]. The Certificate goes with the
/// service (pruned and torn down with it); the Secret cert-manager wrote stays, as
/// cert-manager leaves it.
///
/// Per router:
///
/// - [`Router::Ingress`]: deploykit owns the Ingress, so it terminates TLS itself:
///   `spec.tls: [{hosts: [<host>], secretName}]` on the service's Ingress and on its preview
///   Ingress. The Certificate names both hosts (`<service>.<domain>` and
///   `<service>-preview.<domain>`), which the wildcard DNS record the router needs resolves.
/// - [`Router::GatewayApi`]: TLS terminates at the Gateway's listener, which deploykit does
///   not own. The Gateway's owner lists the Secret in the HTTPS listener's
///   `tls.certificateRefs`: `{group: "", kind: Secret, name: <secret>, namespace: <app
///   namespace>}`. When the Gateway lives in another namespace, deploykit renders the
///   `ReferenceGrant` (`gateway.networking.k8s.io/v1beta1`) `<service>` in the app namespace
///   that lets Gateways of that namespace reference that one Secret (without it the Gateway
///   reports `ResolvedRefs` false, `RefNotPermitted`). The Certificate names the router's
///   hostnames (a preview's `preview.<first hostname>` only if a wildcard hostname covers
///   it); there must be at least one.
/// - [`Router::Istio`]: an Istio Gateway server reads `tls.credentialName` from a Secret in
///   the namespace of the gateway's own workload, and deploykit writes only to the app's
///   namespace. So TLS is rendered only when every gateway the VirtualService binds to is in
///   the app namespace (its workload is taken to run there, as with a gateway deployed per
///   namespace): the Certificate is rendered there, and the Gateway's owner sets
///   `credentialName: <secret>` on its HTTPS server. A gateway elsewhere (or the mesh alone)
///   is refused, naming `tls`: create the Certificate in the gateway's namespace instead. The
///   VirtualService itself is the same with or without TLS.
/// - [`Router::None`]: nothing terminates TLS; refused, naming `tls`.
///
/// ```
/// use deploykit_k8s::render::{Issuer, IssuerKind, RouteTls};
/// let own = RouteTls::secret("wildcard-example-com");
/// assert_eq!(own.secret_name("web"), "wildcard-example-com");
/// let issued = RouteTls::cert_manager(Issuer::new(IssuerKind::ClusterIssuer, "letsencrypt"));
/// assert_eq!(issued.secret_name("web"), "web-tls");
/// let kind: IssuerKind = "Issuer".parse()?;
/// assert_eq!(kind, IssuerKind::Issuer);
/// assert!("Certificate".parse::<IssuerKind>().unwrap_err().to_string().contains("tls.issuer.kind"));
/// # Ok::<(), deploykit_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouteTls {
    /// A Secret of type `kubernetes.io/tls` the user provides in the app namespace, named
    /// `name`; deploykit neither writes nor deletes it.
    Secret {
        /// The Secret's name.
        name: String,
    },
    /// A certificate cert-manager issues into Secret `<service>-tls`, from a `Certificate`
    /// deploykit renders.
    CertManager {
        /// Who issues it.
        issuer: Issuer,
    },
}

impl RouteTls {
    /// Terminate TLS with the user's Secret `name` (type `kubernetes.io/tls`).
    pub fn secret(name: impl Into<String>) -> Self {
        RouteTls::Secret { name: name.into() }
    }

    /// Terminate TLS with a certificate `issuer` issues through cert-manager.
    pub fn cert_manager(issuer: Issuer) -> Self {
        RouteTls::CertManager { issuer }
    }

    /// The name of the Secret holding `service`'s certificate: the user's, or
    /// `<service>-tls` with cert-manager.
    pub fn secret_name(&self, service: &str) -> String {
        match self {
            RouteTls::Secret { name } => name.clone(),
            RouteTls::CertManager { .. } => format!("{service}-tls"),
        }
    }
}

/// A cert-manager issuer: `issuerRef` of a Certificate (group `cert-manager.io`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Issuer {
    /// `Issuer` (in the app namespace) or `ClusterIssuer`.
    pub kind: IssuerKind,
    /// Its name.
    pub name: String,
}

impl Issuer {
    /// The issuer `name` of `kind`.
    pub fn new(kind: IssuerKind, name: impl Into<String>) -> Self {
        Issuer {
            kind,
            name: name.into(),
        }
    }
}

/// The kind of a cert-manager issuer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IssuerKind {
    /// An `Issuer`, namespaced: it must be in the app's namespace.
    Issuer,
    /// A `ClusterIssuer`, for every namespace.
    ClusterIssuer,
}

impl IssuerKind {
    /// `Issuer` or `ClusterIssuer`, as `issuerRef.kind` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            IssuerKind::Issuer => "Issuer",
            IssuerKind::ClusterIssuer => "ClusterIssuer",
        }
    }
}

impl std::str::FromStr for IssuerKind {
    type Err = Error;

    /// `Issuer` or `ClusterIssuer` (exactly); anything else fails naming `tls.issuer.kind`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "Issuer" => Ok(IssuerKind::Issuer),
            "ClusterIssuer" => Ok(IssuerKind::ClusterIssuer),
            other => Err(Error::invalid(
                "tls.issuer.kind",
                format!("{other:?} is not a cert-manager issuer kind: use Issuer or ClusterIssuer"),
            )),
        }
    }
}

/// Time limits on a service's routes: how long the router may take to answer a request, and
/// how long it waits for one answer of a backend. On a Gateway API `HTTPRoute` every rule gets
/// `timeouts: {request, backendRequest}` (Gateway API v1.2 and later; an older cluster's
/// strict apply refuses the field by name); on an Istio `VirtualService` every route gets
/// `timeout` (the request's; Istio has no separate backend limit without retries). They take
/// precedence over a service's own [`TrafficPolicy::timeout`](deploykit_core::TrafficPolicy):
/// they are the operator's limit for every route of the environment.
///
/// ```
/// use std::time::Duration;
/// use deploykit_k8s::render::RouteTimeouts;
/// let t = RouteTimeouts::new(Duration::from_secs(10))?.backend_request(Duration::from_millis(2500))?;
/// assert_eq!(t.request, Duration::from_secs(10));
/// assert!(RouteTimeouts::new(Duration::from_secs(1))?.backend_request(Duration::from_secs(2)).is_err());
/// # Ok::<(), deploykit_core::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouteTimeouts {
    /// The longest the router takes to answer a request, retries included.
    pub request: Duration,
    /// The longest it waits for one backend's answer (at most `request`).
    pub backend_request: Option<Duration>,
}

/// The longest a route timeout may be: Gateway API durations have at most 5 digits of hours.
const MAX_ROUTE_TIMEOUT: Duration = Duration::from_secs(99_999 * 3600);

impl RouteTimeouts {
    /// A request timeout of `request` (1 ms to 99,999 h).
    pub fn new(request: Duration) -> Result<Self> {
        deploykit_core::validate::check_duration(
            "route_timeouts.request",
            request,
            Duration::from_millis(1),
            MAX_ROUTE_TIMEOUT,
        )?;
        Ok(RouteTimeouts {
            request,
            backend_request: None,
        })
    }

    /// A backend timeout of `backend` (1 ms up to the request timeout).
    pub fn backend_request(mut self, backend: Duration) -> Result<Self> {
        deploykit_core::validate::check_duration(
            "route_timeouts.backend_request",
            backend,
            Duration::from_millis(1),
            self.request,
        )?;
        self.backend_request = Some(backend);
        Ok(self)
    }
}

/// `d` as a Gateway API duration (GEP-2257: up to four parts of at most 5 digits each, units
/// h, m, s, ms; `1h2m3s4ms`), whole milliseconds.
pub(crate) fn gateway_duration(d: Duration) -> String {
    let ms = d.as_millis();
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, ms) = (rest / 1000, rest % 1000);
    let mut out = String::new();
    for (value, unit) in [(h, "h"), (m, "m"), (s, "s"), (ms, "ms")] {
        if value > 0 {
            out.push_str(&format!("{value}{unit}"));
        }
    }
    if out.is_empty() { "0s".into() } else { out }
}

/// `d` as an Istio (protobuf) duration: seconds with up to 3 decimals (`2.5s`, `30s`), whole
/// milliseconds.
pub(crate) fn istio_duration(d: Duration) -> String {
    format!("{}s", d.as_millis() as f64 / 1000.0)
}

/// Istio security and resilience for a service, rendered next to its other objects:
///
/// - a ServiceAccount `<service>` (token not mounted) the pods run as, so that the service has
///   an identity of its own in the mesh (`spiffe://<trust domain>/ns/<ns>/sa/<service>`);
/// - with `mtls_strict` (default), a `PeerAuthentication` requiring mutual TLS for its pods, and
///   a `DestinationRule` that speaks Istio mTLS to it;
/// - with `callers` set, an `AuthorizationPolicy` that allows only them: other services of the
///   namespace by identity, whole namespaces, or principals; the router's data plane (the
///   namespaces of its gateways, as for the NetworkPolicy) is always allowed. An empty list
///   allows nobody but the router. `None` (default): no authorization policy.
/// - the `DestinationRule` also ejects an instance after `outlier_consecutive_5xx` 5xx answers
///   in a row (for 30 s, at most half of them) and caps pending requests
///   (`max_pending_requests`). A serving revision's own
///   [`CircuitBreaker`](deploykit_core::CircuitBreaker) takes precedence: its
///   `consecutive_failures` and `ejection` replace these defaults, and its `max_requests` caps
///   requests in flight (`http2MaxRequests`) and pending ones.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MeshPolicy {
    /// Require mutual TLS (default true).
    pub mtls_strict: bool,
    /// Who may call the service; `None`: anyone the mTLS policy lets in.
    pub callers: Option<Vec<Caller>>,
    /// The mesh's trust domain (default `cluster.local`).
    pub trust_domain: String,
    /// 5xx answers in a row that eject an instance (default 5; 0: no outlier detection).
    pub outlier_consecutive_5xx: u32,
    /// HTTP requests that may wait for a connection to the service (default 1024).
    pub max_pending_requests: u32,
}

impl Default for MeshPolicy {
    fn default() -> Self {
        MeshPolicy {
            mtls_strict: true,
            callers: None,
            trust_domain: "cluster.local".into(),
            outlier_consecutive_5xx: 5,
            max_pending_requests: 1024,
        }
    }
}

impl MeshPolicy {
    /// Only `callers` (and the router) may call the service.
    #[must_use]
    pub fn allow(mut self, callers: Vec<Caller>) -> Self {
        self.callers = Some(callers);
        self
    }
}

/// Who may call a service under a [`MeshPolicy`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Caller {
    /// Another deploykit service of the namespace (its ServiceAccount's identity).
    Service(String),
    /// Every workload of a namespace.
    Namespace(String),
    /// A principal as Istio names it (`<trust domain>/ns/<ns>/sa/<account>`).
    Principal(String),
}

/// The numeric user and group pods run as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunAs {
    /// `runAsUser`.
    pub user: i64,
    /// `runAsGroup` and `fsGroup`.
    pub group: i64,
}

impl RenderOptions {
    /// Defaults for `namespace`: no images, no router, restricted, no token, default
    /// resources, a PodDisruptionBudget of 1, DNS-only egress, no quota. (Autoscaling comes
    /// with the desired state: [`DesiredState::autoscale`].)
    pub fn new(namespace: impl Into<String>) -> Self {
        RenderOptions {
            namespace: namespace.into(),
            images: BTreeMap::new(),
            router: Router::None,
            restricted: true,
            service_account_token: false,
            default_resources: workload::builtin_resources(),
            priority_class: None,
            pdb_max_unavailable: 1,
            network: NetworkOptions::default(),
            quota: None,
            run_as: None,
            drain: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(30),
            spread: true,
            mesh_policy: None,
            route_timeouts: None,
            tls: None,
            secret_files: None,
        }
    }

    /// Terminate TLS on the service's routes with `tls` (see [`RouteTls`]).
    ///
    /// ```
    /// use deploykit_k8s::render::{Issuer, IssuerKind, RenderOptions, RouteTls, Router};
    /// let options = RenderOptions::new("shop")
    ///     .router(Router::ingress("apps.example.com", "ingress-nginx").class("nginx"))
    ///     .tls(RouteTls::cert_manager(Issuer::new(IssuerKind::ClusterIssuer, "letsencrypt")));
    /// assert!(options.tls.is_some());
    /// ```
    #[must_use]
    pub fn tls(mut self, tls: RouteTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Mount each revision's secrets as files in `dir` (an absolute path), one file per
    /// secret variable named after it (`<dir>/DATABASE_URL`), instead of environment
    /// variables: a `secret` volume of the revision's Secret with `defaultMode` `0400`,
    /// mounted read-only. Files keep values out of the process environment (which child
    /// processes inherit and crash reports dump). Since the app does not run as root, the pod
    /// gets an `fsGroup` (the [`RenderOptions::run_as`] group, else 65532): the kubelet gives
    /// the files that group and makes them group-readable (`0440`), so the app (which runs
    /// with the `fsGroup` as a supplementary group) reads them and no other user does.
    /// `dir` may not be `/`, `/tmp` (the restricted pods' scratch space) nor contain `..`;
    /// rendering fails naming `secret_files` otherwise.
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// use deploykit_core::{
    ///     DesiredState, Digest, EnvironmentKind, EnvironmentSpec, Revision, RevisionTarget,
    ///     ServiceSpec, Traffic,
    /// };
    /// use deploykit_core::secrets::SecretString;
    /// use deploykit_k8s::render::{plan, RenderOptions};
    ///
    /// let web = ServiceSpec::builder()
    ///     .name("web")
    ///     .port(8080)
    ///     .secrets(BTreeMap::from([("DATABASE_URL".into(), "prod.db_url".into())]))
    ///     .build()?;
    /// let prod = EnvironmentSpec::builder()
    ///     .name("production")
    ///     .kind(EnvironmentKind::Production)
    ///     .build()?;
    /// let v1 = Revision::new(&web, &prod, Digest::of_bytes(b"image v1"), "v1")?;
    /// let secrets = BTreeMap::from([(
    ///     v1.id.clone(),
    ///     BTreeMap::from([("DATABASE_URL".to_string(), SecretString::from("postgres://db"))]),
    /// )]);
    /// let desired = DesiredState::new(vec![RevisionTarget::new(v1, 1)], Traffic::ByReadyInstances);
    /// let options = RenderOptions::new("shop")
    ///     .image("web", "registry.example.com/web")
    ///     .secret_files("/run/secrets/app");
    /// let yaml = plan(&web.name, &desired, &secrets, &options)?.to_yaml();
    /// assert!(yaml.contains("mountPath: /run/secrets/app"));
    /// assert!(yaml.contains("defaultMode: 256"));
    /// assert!(!yaml.contains("secretKeyRef"));
    /// # Ok::<(), deploykit_core::Error>(())
    /// ```
    #[must_use]
    pub fn secret_files(mut self, dir: impl Into<String>) -> Self {
        self.secret_files = Some(dir.into());
        self
    }

    /// Limit how long the service's routes take (see [`RouteTimeouts`]).
    #[must_use]
    pub fn route_timeouts(mut self, timeouts: RouteTimeouts) -> Self {
        self.route_timeouts = Some(timeouts);
        self
    }

    /// Secure the service in an Istio mesh with `policy`.
    #[must_use]
    pub fn mesh_policy(mut self, policy: MeshPolicy) -> Self {
        self.mesh_policy = Some(policy);
        self
    }

    /// Run the pods as numeric user `user` and group `group`.
    #[must_use]
    pub fn run_as(mut self, user: i64, group: i64) -> Self {
        self.run_as = Some(RunAs { user, group });
        self
    }

    /// Keep a stopping pod serving this long (a `preStop` sleep; zero: none).
    #[must_use]
    pub fn drain(mut self, drain: Duration) -> Self {
        self.drain = drain;
        self
    }

    /// Give the app this long after SIGTERM.
    #[must_use]
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Spread pods over zones and nodes, or not.
    #[must_use]
    pub fn spread(mut self, spread: bool) -> Self {
        self.spread = spread;
        self
    }

    /// Use image repository `repository` (no tag or digest) for `service`.
    #[must_use]
    pub fn image(mut self, service: impl Into<String>, repository: impl Into<String>) -> Self {
        self.images.insert(service.into(), repository.into());
        self
    }

    /// Route traffic with `router`.
    #[must_use]
    pub fn router(mut self, router: Router) -> Self {
        self.router = router;
        self
    }

    /// Meet the restricted Pod Security Standard, or not.
    #[must_use]
    pub fn restricted(mut self, restricted: bool) -> Self {
        self.restricted = restricted;
        self
    }

    /// Mount the service-account token, or not.
    #[must_use]
    pub fn service_account_token(mut self, mount: bool) -> Self {
        self.service_account_token = mount;
        self
    }

    /// Requests and limits for values revisions leave unset.
    #[must_use]
    pub fn default_resources(mut self, resources: Resources) -> Self {
        self.default_resources = resources;
        self
    }

    /// Give pods the priority class `name`.
    #[must_use]
    pub fn priority_class(mut self, name: impl Into<String>) -> Self {
        self.priority_class = Some(name.into());
        self
    }

    /// `maxUnavailable` of each service's PodDisruptionBudget (0: none).
    #[must_use]
    pub fn pdb_max_unavailable(mut self, max_unavailable: u32) -> Self {
        self.pdb_max_unavailable = max_unavailable;
        self
    }

    /// Cap the namespace with `quota`.
    #[must_use]
    pub fn quota(mut self, quota: Quota) -> Self {
        self.quota = Some(quota);
        self
    }

    /// Network policy options.
    #[must_use]
    pub fn network(mut self, network: NetworkOptions) -> Self {
        self.network = network;
        self
    }
}

/// How traffic reaches a service's Services.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Router {
    /// No router: only the Services. Weights cannot be honoured (ordinary traffic reaches the
    /// stable Service's revision), so the environment answers
    /// [`TrafficSplit::WholeSwitch`](deploykit_core::TrafficSplit) and the orchestrator refuses
    /// strategies that need a split (canary weights, header routes, mirrors); rolling and
    /// blue-green work. Observed traffic is what the stable Service's selector really reaches.
    #[default]
    None,
    /// Gateway API: an `HTTPRoute` (`gateway.networking.k8s.io/v1`) named `<service>` attached
    /// to `parent`, with a header-match rule to the header route's Service, a rule with
    /// weighted backends (stable, canary) and a `RequestMirror` filter with `percent`; and for
    /// a preview an `HTTPRoute` `<service>-preview` for hostname `preview.<first hostname>`
    /// (a leading `*.` dropped) to the preview Service. TLS terminates at the Gateway listener
    /// named by [`ParentRef::section_name`].
    GatewayApi {
        /// The Gateway to attach to.
        parent: ParentRef,
        /// Hostnames the route serves (empty: every hostname of the listener).
        hostnames: Vec<String>,
    },
    /// Istio: a `VirtualService` (`networking.istio.io/v1`) named `<service>` with the same
    /// routes: a preview route matching authority `preview.<first host>` (added to the hosts),
    /// a header route (`match.headers.<name>.exact`), and a weighted route with `mirror` and
    /// `mirrorPercentage`.
    Istio {
        /// Gateways (`namespace/name`) the VirtualService binds to (empty: the mesh).
        gateways: Vec<String>,
        /// Hosts it serves; at least one.
        hosts: Vec<String>,
    },
    /// Kubernetes `Ingress` (`networking.k8s.io/v1`), for clusters with neither the Gateway API
    /// nor Istio: an Ingress `<service>` for host `<service>.<domain>` (a wildcard DNS record
    /// `*.<domain>` points at the Ingress controller) sending every path to the stable
    /// Service, and for a preview an Ingress `<service>-preview` for host
    /// `<service>-preview.<domain>` to the preview Service. TLS: see [`RouteTls`].
    ///
    /// **An Ingress has no weights, header matches nor mirrors**, so this router splits
    /// nothing: all ordinary traffic goes to the stable Service, which selects the revision
    /// with the largest weight, exactly as without a router. The environment answers
    /// [`TrafficSplit::WholeSwitch`](deploykit_core::TrafficSplit), so the orchestrator refuses
    /// strategies that need a split (canary weights, header routes, mirrors) before anything
    /// is applied, and rolling and blue-green run. Rendering does not refuse a split itself
    /// (rendering is what a rollback or an abort needs to work at all); observe reports as
    /// served only what the stable Service's selector really reaches — the revision with the
    /// largest weight, never a weight the Ingress cannot apply — and nothing while the Ingress
    /// is missing or its controller has not admitted it (no address in
    /// `status.loadBalancer.ingress`), with the reason in
    /// [`Observed::routing_problem`](deploykit_core::Observed). So a switch is never reported
    /// as served before the controller shows it serves the Ingress.
    ///
    /// The default-deny NetworkPolicy lets the controller's pods (every pod of
    /// `controller_namespace`, unless [`NetworkOptions::gateway_namespaces`] says otherwise)
    /// reach the app port.
    Ingress {
        /// `spec.ingressClassName` (`None`: the cluster's default IngressClass).
        class: Option<String>,
        /// The domain the service's hosts are made in: `<service>.<domain>`.
        domain: String,
        /// The namespace the Ingress controller's pods run in (e.g. `ingress-nginx`).
        controller_namespace: String,
    },
}

impl Router {
    /// An Ingress router for hosts `<service>.<domain>`, whose controller runs in
    /// `controller_namespace`, with the cluster's default IngressClass.
    ///
    /// ```
    /// use deploykit_k8s::render::Router;
    /// let router = Router::ingress("apps.example.com", "ingress-nginx").class("nginx");
    /// assert!(matches!(router, Router::Ingress { class: Some(_), .. }));
    /// ```
    pub fn ingress(domain: impl Into<String>, controller_namespace: impl Into<String>) -> Self {
        Router::Ingress {
            class: None,
            domain: domain.into(),
            controller_namespace: controller_namespace.into(),
        }
    }

    /// This Ingress router with IngressClass `name` (other routers are returned unchanged).
    #[must_use]
    pub fn class(self, name: impl Into<String>) -> Self {
        match self {
            Router::Ingress {
                domain,
                controller_namespace,
                ..
            } => Router::Ingress {
                class: Some(name.into()),
                domain,
                controller_namespace,
            },
            other => other,
        }
    }
}

/// A Gateway an `HTTPRoute` attaches to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentRef {
    /// The Gateway's name.
    pub name: String,
    /// Its namespace (default: the route's).
    pub namespace: Option<String>,
    /// The listener to attach to (e.g. the HTTPS listener, where TLS terminates).
    pub section_name: Option<String>,
}

impl ParentRef {
    /// The Gateway `name` in the route's namespace, every listener.
    pub fn new(name: impl Into<String>) -> Self {
        ParentRef {
            name: name.into(),
            namespace: None,
            section_name: None,
        }
    }

    /// The Gateway lives in `namespace`.
    #[must_use]
    pub fn in_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Attach to the listener `section_name` only.
    #[must_use]
    pub fn section(mut self, section_name: impl Into<String>) -> Self {
        self.section_name = Some(section_name.into());
        self
    }
}

/// What the service's NetworkPolicy allows besides ingress from the service's own pods; with
/// nothing else allowed it denies everything (a default deny for the app).
///
/// The router's data plane may always reach the app port: the namespaces of the Gateway (or
/// Istio gateways) the route binds to, unless [`NetworkOptions::gateway_namespaces`] names
/// them (implementations that run their proxies elsewhere, such as Envoy Gateway's
/// `envoy-gateway-system`). A [`Mesh`] gets the ports its own traffic needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkOptions {
    /// Namespaces whose pods may reach the app port, selected by
    /// `kubernetes.io/metadata.name`.
    pub allow_from_namespaces: Vec<String>,
    /// Where the router's proxies run; `None` (default): the namespaces of the route's parent
    /// Gateway or Istio gateways.
    pub gateway_namespaces: Option<Vec<String>>,
    /// Egress allowed to CIDRs.
    pub allow_egress: Vec<EgressRule>,
    /// Egress allowed to pods chosen by namespace and labels (a database in another namespace,
    /// say), which stays right when their addresses change.
    pub allow_egress_to: Vec<EgressPeer>,
    /// Allow DNS: egress UDP and TCP 53 to the pods labelled `dns_labels` in `dns_namespace`
    /// (default true).
    pub allow_dns: bool,
    /// Where the cluster DNS runs (default `kube-system`).
    pub dns_namespace: String,
    /// Its pods' labels (default `k8s-app=kube-dns`, which CoreDNS keeps too).
    pub dns_labels: BTreeMap<String, String>,
    /// The service mesh the pods are in (default none).
    pub mesh: Mesh,
}

impl Default for NetworkOptions {
    fn default() -> Self {
        NetworkOptions {
            allow_from_namespaces: Vec::new(),
            gateway_namespaces: None,
            allow_egress: Vec::new(),
            allow_egress_to: Vec::new(),
            allow_dns: true,
            dns_namespace: "kube-system".into(),
            dns_labels: BTreeMap::from([("k8s-app".into(), "kube-dns".into())]),
            mesh: Mesh::None,
        }
    }
}

/// A service mesh whose own traffic the NetworkPolicy lets through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mesh {
    /// No mesh.
    #[default]
    None,
    /// Istio with sidecars: egress to istiod (`istio-system`, `app=istiod`) on TCP 15012, where
    /// the sidecar gets its configuration and certificates; without it pods never get ready.
    IstioSidecar,
    /// Istio ambient: ingress on TCP 15008 (HBONE, the tunnel ztunnel and waypoints deliver
    /// every request through) from wherever the app port may be reached, and from
    /// 169.254.7.127/32 on the app port (kubelet probes, which ztunnel rewrites to come from
    /// that address).
    IstioAmbient,
}

/// Egress allowed to the pods labelled `pod_labels` in `namespace` (the service's own when
/// `None`), on TCP `ports` (empty: all).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressPeer {
    /// The namespace, by name.
    pub namespace: Option<String>,
    /// The pods' labels (empty: every pod of the namespace).
    pub pod_labels: BTreeMap<String, String>,
    /// TCP ports (empty: every port).
    pub ports: Vec<u16>,
}

impl EgressPeer {
    /// Egress to the pods labelled `pod_labels` in `namespace` on TCP `ports`.
    pub fn new<K: Into<String>, V: Into<String>>(
        namespace: Option<&str>,
        pod_labels: impl IntoIterator<Item = (K, V)>,
        ports: Vec<u16>,
    ) -> Self {
        EgressPeer {
            namespace: namespace.map(str::to_string),
            pod_labels: pod_labels
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            ports,
        }
    }
}

/// Egress allowed to one CIDR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressRule {
    /// Destination network, e.g. `10.0.0.0/16`.
    pub cidr: String,
    /// TCP ports (empty: every port).
    pub ports: Vec<u16>,
}

impl EgressRule {
    /// Egress to `cidr` on TCP `ports` (empty: all).
    pub fn new(cidr: impl Into<String>, ports: Vec<u16>) -> Self {
        EgressRule {
            cidr: cidr.into(),
            ports,
        }
    }
}

/// A namespace ResourceQuota: caps on the sum of limits and on the pod count. Leave room for
/// rollouts, when two revisions run side by side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Total CPU limit in millicores.
    pub cpu_millis: u32,
    /// Total memory limit in MiB.
    pub memory_mib: u32,
    /// Most pods.
    pub pods: u32,
}

/// Resolved secret values per revision (variable name → value); never printed by Debug.
pub type SecretValues = BTreeMap<RevisionId, BTreeMap<String, SecretString>>;

/// One Kubernetes object deploykit applies.
// Unboxed so callers can match and build variants directly; plans hold a handful of objects.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum Object {
    /// A revision's variables.
    ConfigMap(ConfigMap),
    /// A revision's secret values (never printed by `Debug` nor [`Plan::to_yaml`]).
    Secret(Secret),
    /// A revision's pods.
    Deployment(Deployment),
    /// The stable, canary or preview Service.
    Service(Service),
    /// The service's autoscaler.
    HorizontalPodAutoscaler(HorizontalPodAutoscaler),
    /// The service's disruption budget.
    PodDisruptionBudget(PodDisruptionBudget),
    /// The service's network policy.
    NetworkPolicy(NetworkPolicy),
    /// The namespace's quota.
    ResourceQuota(ResourceQuota),
    /// The namespace's default requests and limits.
    LimitRange(LimitRange),
    /// A Gateway API `HTTPRoute`.
    HttpRoute(DynamicObject),
    /// An Istio `VirtualService`.
    VirtualService(DynamicObject),
    /// The service's own ServiceAccount (with a [`MeshPolicy`]: its identity in the mesh).
    ServiceAccount(ServiceAccount),
    /// An Istio `PeerAuthentication` (mTLS required).
    PeerAuthentication(DynamicObject),
    /// An Istio `AuthorizationPolicy` (who may call the service).
    AuthorizationPolicy(DynamicObject),
    /// An Istio `DestinationRule` (outlier detection, connection limits, mTLS to the service).
    DestinationRule(DynamicObject),
    /// A Kubernetes `Ingress` ([`Router::Ingress`]).
    Ingress(Ingress),
    /// A cert-manager `Certificate` ([`RouteTls::cert_manager`]).
    Certificate(DynamicObject),
    /// A Gateway API `ReferenceGrant` letting the Gateway read the TLS Secret (see
    /// [`RouteTls`]).
    ReferenceGrant(DynamicObject),
}

impl fmt::Debug for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Object::ConfigMap(o) => f.debug_tuple("ConfigMap").field(o).finish(),
            Object::Secret(s) => {
                let keys: Vec<&String> = s.data.iter().flat_map(|d| d.keys()).collect();
                f.debug_struct("Secret")
                    .field("metadata", &s.metadata)
                    .field("type", &s.type_)
                    .field("immutable", &s.immutable)
                    .field("keys", &keys)
                    .field("data", &"<redacted>")
                    .finish()
            }
            Object::Deployment(o) => f.debug_tuple("Deployment").field(o).finish(),
            Object::Service(o) => f.debug_tuple("Service").field(o).finish(),
            Object::HorizontalPodAutoscaler(o) => {
                f.debug_tuple("HorizontalPodAutoscaler").field(o).finish()
            }
            Object::PodDisruptionBudget(o) => {
                f.debug_tuple("PodDisruptionBudget").field(o).finish()
            }
            Object::NetworkPolicy(o) => f.debug_tuple("NetworkPolicy").field(o).finish(),
            Object::ResourceQuota(o) => f.debug_tuple("ResourceQuota").field(o).finish(),
            Object::LimitRange(o) => f.debug_tuple("LimitRange").field(o).finish(),
            Object::HttpRoute(o) => f.debug_tuple("HttpRoute").field(o).finish(),
            Object::VirtualService(o) => f.debug_tuple("VirtualService").field(o).finish(),
            Object::ServiceAccount(o) => f.debug_tuple("ServiceAccount").field(o).finish(),
            Object::PeerAuthentication(o) => f.debug_tuple("PeerAuthentication").field(o).finish(),
            Object::AuthorizationPolicy(o) => {
                f.debug_tuple("AuthorizationPolicy").field(o).finish()
            }
            Object::DestinationRule(o) => f.debug_tuple("DestinationRule").field(o).finish(),
            Object::Ingress(o) => f.debug_tuple("Ingress").field(o).finish(),
            Object::Certificate(o) => f.debug_tuple("Certificate").field(o).finish(),
            Object::ReferenceGrant(o) => f.debug_tuple("ReferenceGrant").field(o).finish(),
        }
    }
}

/// `kind`, `apiVersion` and `ApiResource` of a typed object.
macro_rules! typed {
    ($self:expr, $t:ident => $e:expr, $dynamic:ident => $d:expr) => {
        match $self {
            Object::ConfigMap(_) => {
                type $t = ConfigMap;
                $e
            }
            Object::Secret(_) => {
                type $t = Secret;
                $e
            }
            Object::Deployment(_) => {
                type $t = Deployment;
                $e
            }
            Object::Service(_) => {
                type $t = Service;
                $e
            }
            Object::HorizontalPodAutoscaler(_) => {
                type $t = HorizontalPodAutoscaler;
                $e
            }
            Object::PodDisruptionBudget(_) => {
                type $t = PodDisruptionBudget;
                $e
            }
            Object::NetworkPolicy(_) => {
                type $t = NetworkPolicy;
                $e
            }
            Object::ResourceQuota(_) => {
                type $t = ResourceQuota;
                $e
            }
            Object::LimitRange(_) => {
                type $t = LimitRange;
                $e
            }
            Object::HttpRoute(_) => {
                let $dynamic = routes::HTTP_ROUTE;
                $d
            }
            Object::VirtualService(_) => {
                let $dynamic = routes::VIRTUAL_SERVICE;
                $d
            }
            Object::ServiceAccount(_) => {
                type $t = ServiceAccount;
                $e
            }
            Object::PeerAuthentication(_) => {
                let $dynamic = mesh::PEER_AUTHENTICATION;
                $d
            }
            Object::AuthorizationPolicy(_) => {
                let $dynamic = mesh::AUTHORIZATION_POLICY;
                $d
            }
            Object::DestinationRule(_) => {
                let $dynamic = mesh::DESTINATION_RULE;
                $d
            }
            Object::Ingress(_) => {
                type $t = Ingress;
                $e
            }
            Object::Certificate(_) => {
                let $dynamic = tls::CERTIFICATE;
                $d
            }
            Object::ReferenceGrant(_) => {
                let $dynamic = tls::REFERENCE_GRANT;
                $d
            }
        }
    };
}

impl Object {
    /// The object's kind, e.g. `Deployment` or `HTTPRoute`.
    pub fn kind(&self) -> &str {
        typed!(self, T => T::KIND, d => d.kind)
    }

    /// The object's `apiVersion`, e.g. `apps/v1`.
    pub fn api_version(&self) -> &str {
        typed!(self, T => T::API_VERSION, d => d.api_version)
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or_default()
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::ConfigMap(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
            Object::Deployment(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::HorizontalPodAutoscaler(o) => &o.metadata,
            Object::PodDisruptionBudget(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
            Object::ResourceQuota(o) => &o.metadata,
            Object::LimitRange(o) => &o.metadata,
            Object::ServiceAccount(o) => &o.metadata,
            Object::Ingress(o) => &o.metadata,
            Object::HttpRoute(o)
            | Object::VirtualService(o)
            | Object::PeerAuthentication(o)
            | Object::AuthorizationPolicy(o)
            | Object::DestinationRule(o)
            | Object::Certificate(o)
            | Object::ReferenceGrant(o) => &o.metadata,
        }
    }

    pub(crate) fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::ConfigMap(o) => &mut o.metadata,
            Object::Secret(o) => &mut o.metadata,
            Object::Deployment(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::HorizontalPodAutoscaler(o) => &mut o.metadata,
            Object::PodDisruptionBudget(o) => &mut o.metadata,
            Object::NetworkPolicy(o) => &mut o.metadata,
            Object::ResourceQuota(o) => &mut o.metadata,
            Object::LimitRange(o) => &mut o.metadata,
            Object::ServiceAccount(o) => &mut o.metadata,
            Object::Ingress(o) => &mut o.metadata,
            Object::HttpRoute(o)
            | Object::VirtualService(o)
            | Object::PeerAuthentication(o)
            | Object::AuthorizationPolicy(o)
            | Object::DestinationRule(o)
            | Object::Certificate(o)
            | Object::ReferenceGrant(o) => &mut o.metadata,
        }
    }

    /// The full object with `apiVersion` and `kind`, as applied: Secret data included
    /// (base64 in `data`).
    pub fn to_json(&self) -> Value {
        let value = match self {
            Object::ConfigMap(o) => serde_json::to_value(o),
            Object::Secret(o) => serde_json::to_value(o),
            Object::Deployment(o) => serde_json::to_value(o),
            Object::Service(o) => serde_json::to_value(o),
            Object::HorizontalPodAutoscaler(o) => serde_json::to_value(o),
            Object::PodDisruptionBudget(o) => serde_json::to_value(o),
            Object::NetworkPolicy(o) => serde_json::to_value(o),
            Object::ResourceQuota(o) => serde_json::to_value(o),
            Object::LimitRange(o) => serde_json::to_value(o),
            Object::ServiceAccount(o) => serde_json::to_value(o),
            Object::Ingress(o) => serde_json::to_value(o),
            Object::HttpRoute(o)
            | Object::VirtualService(o)
            | Object::PeerAuthentication(o)
            | Object::AuthorizationPolicy(o)
            | Object::DestinationRule(o)
            | Object::Certificate(o)
            | Object::ReferenceGrant(o) => serde_json::to_value(o),
        };
        // Serialising these types to a JSON value cannot fail: every map key is a string.
        value.unwrap_or(Value::Null)
    }

    /// [`Object::to_json`] with every Secret `data` and `stringData` value replaced by
    /// `"<redacted>"`, for showing.
    pub fn to_redacted_json(&self) -> Value {
        let mut value = self.to_json();
        if let Object::Secret(_) = self {
            for field in ["data", "stringData"] {
                if let Some(Value::Object(map)) = value.get_mut(field) {
                    for v in map.values_mut() {
                        *v = Value::String("<redacted>".into());
                    }
                }
            }
        }
        value
    }

    /// The API resource, for applying every object through one `Api<DynamicObject>` path.
    pub fn api_resource(&self) -> ApiResource {
        typed!(self, T => ApiResource::erase::<T>(&()), d => d.api_resource())
    }
}

/// Everything deploykit applies for a service, in apply order: ConfigMaps, Secrets,
/// Deployments, Services, HorizontalPodAutoscaler, PodDisruptionBudget, NetworkPolicy, mesh
/// policy, TLS (Certificate, ReferenceGrant), route.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// The objects, in apply order.
    pub objects: Vec<Object>,
}

impl Plan {
    /// The objects as multi-document YAML (documents separated by `---`, keys sorted after
    /// `apiVersion`, `kind` and `metadata`), Secret values redacted: for reading. See
    /// [`Plan::to_applicable_yaml`] for YAML to apply.
    pub fn to_yaml(&self) -> String {
        yaml::to_yaml(self.objects.iter().map(Object::to_redacted_json))
    }

    /// The objects as YAML that `kubectl apply -f` can apply: every object but the Secrets,
    /// which hold values that must not be written out. A comment at the top names each Secret
    /// the pods reference and its keys, which must exist before the pods can start (made by
    /// hand, by an operator such as External Secrets, or by deploykit's own apply).
    ///
    /// ```
    /// # use deploykit_k8s::render::Plan;
    /// let yaml = Plan::default().to_applicable_yaml();
    /// assert!(yaml.is_empty());
    /// ```
    pub fn to_applicable_yaml(&self) -> String {
        let secrets: Vec<String> = self
            .objects
            .iter()
            .filter_map(|o| match o {
                Object::Secret(secret) => {
                    let keys: Vec<&str> = secret
                        .data
                        .iter()
                        .flat_map(|d| d.keys())
                        .chain(secret.string_data.iter().flat_map(|d| d.keys()))
                        .map(String::as_str)
                        .collect();
                    Some(format!(
                        "#   Secret {}/{}: keys {}",
                        secret.metadata.namespace.as_deref().unwrap_or_default(),
                        o.name(),
                        keys.join(", ")
                    ))
                }
                _ => None,
            })
            .collect();
        let body = yaml::to_yaml(
            self.objects
                .iter()
                .filter(|o| !matches!(o, Object::Secret(_)))
                .map(Object::to_json),
        );
        if secrets.is_empty() {
            return body;
        }
        format!(
            "# Secrets left out (their values are never written); create them before applying:\n{}\n{body}",
            secrets.join("\n")
        )
    }

    /// The object of `kind` named `name`, if any.
    pub fn get(&self, kind: &str, name: &str) -> Option<&Object> {
        self.objects
            .iter()
            .find(|o| o.kind() == kind && o.name() == name)
    }
}

/// Everything deploykit applies for `service` to reach `desired`: the per-revision ConfigMaps,
/// Secrets and Deployments, then the Services, autoscaler, disruption budget, network policy
/// and route. Replica counts come from `desired` (unless it is autoscaled: then Deployments
/// omit them, see the module docs); everything else from the revisions and `options`. `secrets` holds the resolved values of each revision's
/// secret variables. A desired state with no revisions gives an empty plan.
///
/// Fails with [`Error::InvalidSpec`] naming the field on input that cannot be rendered: no
/// image for the service (`images.<service>`), a custom probe, a missing probe that cannot be
/// derived (no port, restricted), routes that do not fit stable/canary/preview, invalid
/// hostnames, a label that cannot be made a label value, a missing secret value, TLS the
/// router cannot terminate or bad TLS names (`tls…`), route timeouts on an Ingress, a bad
/// [`RenderOptions::secret_files`] directory.
///
/// ```
/// use std::collections::BTreeMap;
/// use deploykit_core::{
///     DesiredState, Digest, EnvironmentKind, EnvironmentSpec, Revision, RevisionTarget,
///     ServiceSpec, Traffic,
/// };
/// use deploykit_k8s::render::{plan, RenderOptions};
///
/// let web = ServiceSpec::builder().name("web").port(8080).build()?;
/// let prod = EnvironmentSpec::builder()
///     .name("production")
///     .kind(EnvironmentKind::Production)
///     .build()?;
/// let v1 = Revision::new(&web, &prod, Digest::of_bytes(b"image v1"), "v1")?;
/// let desired = DesiredState::new(vec![RevisionTarget::new(v1, 3)], Traffic::ByReadyInstances);
/// let options = RenderOptions::new("shop").image("web", "registry.example.com/web");
///
/// let plan = plan(&web.name, &desired, &BTreeMap::new(), &options)?;
/// let kinds: Vec<&str> = plan.objects.iter().map(|o| o.kind()).collect();
/// assert_eq!(
///     kinds,
///     ["ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"]
/// );
/// assert!(plan.to_yaml().contains("image: registry.example.com/web:v1"));
/// # Ok::<(), deploykit_core::Error>(())
/// ```
pub fn plan(
    service: &ServiceId,
    desired: &DesiredState,
    secrets: &SecretValues,
    options: &RenderOptions,
) -> Result<Plan> {
    plan_keeping_secrets(service, desired, secrets, &BTreeSet::new(), options)
}

/// [`plan`] without the Secrets of the revisions in `kept`, whose immutable Secrets exist
/// already (made by the apply that first started them), so they need no values.
pub(crate) fn plan_keeping_secrets(
    service: &ServiceId,
    desired: &DesiredState,
    secrets: &SecretValues,
    kept: &BTreeSet<RevisionId>,
    options: &RenderOptions,
) -> Result<Plan> {
    names::check_options(service, options)?;
    routes::check_router(&options.router)?;
    routes::check_route_options(options)?;
    tls::check(options)?;
    if desired.revisions.is_empty() {
        return Ok(Plan::default());
    }
    let layout = network::Layout::of(service, desired)?;
    let repository = options.images.get(service.as_str()).ok_or_else(|| {
        Error::invalid(
            format!("images.{service}"),
            format!("no image repository for service {service}: set RenderOptions::image"),
        )
    })?;
    names::check_repository(service, repository)?;

    let mut config_maps = Vec::new();
    let mut secret_objects = Vec::new();
    let mut deployments = Vec::new();
    let autoscale = desired.autoscale.as_ref();
    if let Some(a) = autoscale {
        names::check_autoscale(a)?;
    }
    for target in &desired.revisions {
        let secrets = (!kept.contains(&target.revision.id)).then_some(secrets);
        let rev = workload::RevisionObjects::render(
            service, target, repository, secrets, options, autoscale,
        )?;
        config_maps.push(Object::ConfigMap(rev.config_map));
        if let Some(secret) = rev.secret {
            secret_objects.push(Object::Secret(secret));
        }
        deployments.push(Object::Deployment(rev.deployment));
    }

    let mut objects = mesh::service_account(service, options)
        .into_iter()
        .collect::<Vec<_>>();
    objects.append(&mut config_maps);
    objects.append(&mut secret_objects);
    objects.append(&mut deployments);
    let routable = desired
        .revisions
        .iter()
        .all(|t| t.revision.config.port.is_some());
    if routable {
        objects.extend(
            layout
                .services(service, options)?
                .into_iter()
                .map(Object::Service),
        );
    }
    if let (Some(autoscale), Some(serving)) = (autoscale, serving_revision(desired, &layout)) {
        objects.push(Object::HorizontalPodAutoscaler(workload::autoscaler(
            service, serving, autoscale, options,
        )?));
    }
    if options.pdb_max_unavailable > 0 {
        objects.push(Object::PodDisruptionBudget(workload::disruption_budget(
            service, options,
        )?));
    }
    let any_port = desired
        .revisions
        .iter()
        .any(|t| t.revision.config.port.is_some());
    objects.push(Object::NetworkPolicy(network::network_policy(
        service, any_port, options,
    )?));
    objects.extend(mesh::render(service, layout.serving_policy(), options)?);
    if routable {
        objects.extend(tls::render(service, options)?);
        objects.extend(routes::render(service, &layout, options)?);
    }
    // The applied traffic rides on the object that carries it — the route, or the stable
    // Service without a router — so a weight change is exactly one patch.
    let traffic = serde_json::to_string(&desired.traffic)
        .map_err(|e| Error::invalid("traffic", format!("cannot be written as JSON: {e}")))?;
    let holder = traffic_holder(&options.router);
    if let Some(object) = objects
        .iter_mut()
        .find(|o| o.kind() == holder && o.name() == service.as_str())
    {
        object
            .metadata_mut()
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(ANNOTATION_TRAFFIC.to_string(), traffic);
    }
    Ok(Plan { objects })
}

/// The revision an autoscaler scales: the only one, or under routed traffic the stable
/// Service's (the largest weight). `None` while a rolling update runs several revisions.
fn serving_revision<'a>(
    desired: &'a DesiredState,
    layout: &network::Layout<'a>,
) -> Option<&'a Revision> {
    match desired.revisions.as_slice() {
        [only] => Some(&only.revision),
        _ => layout.stable,
    }
}

/// The kind of the object named after the service that carries [`ANNOTATION_TRAFFIC`]:
/// `HTTPRoute` or `VirtualService` with a router that splits, the stable `Service` without
/// one or with an Ingress (whose stable Service decides which revision is served).
pub fn traffic_holder(router: &Router) -> &'static str {
    match router {
        Router::None | Router::Ingress { .. } => "Service",
        Router::GatewayApi { .. } => "HTTPRoute",
        Router::Istio { .. } => "VirtualService",
    }
}

/// Namespace-wide objects: a LimitRange `deploykit-defaults` giving containers the default
/// requests and limits, and the ResourceQuota `deploykit-quota` if one is configured.
pub fn namespace_plan(options: &RenderOptions) -> Vec<Object> {
    let mut objects = vec![Object::LimitRange(workload::limit_range(options))];
    if let Some(quota) = &options.quota {
        objects.push(Object::ResourceQuota(workload::resource_quota(
            quota, options,
        )));
    }
    objects
}

/// The group, version, kind and plural of a custom resource rendered as a [`DynamicObject`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct CustomKind {
    pub(crate) group: &'static str,
    pub(crate) version: &'static str,
    pub(crate) api_version: &'static str,
    pub(crate) kind: &'static str,
    pub(crate) plural: &'static str,
}

/// The API resources of the TLS objects `options` may render for a service (see [`RouteTls`]).
pub(crate) fn tls_resources(options: &RenderOptions) -> Vec<ApiResource> {
    tls::resources(options)
}

/// The API resources of the mesh objects a [`MeshPolicy`] renders (its ServiceAccount aside).
pub(crate) fn mesh_resources() -> [ApiResource; 3] {
    [
        mesh::PEER_AUTHENTICATION.api_resource(),
        mesh::AUTHORIZATION_POLICY.api_resource(),
        mesh::DESTINATION_RULE.api_resource(),
    ]
}

/// The API resource of the DestinationRule a circuit breaker renders behind an Istio router.
pub(crate) fn destination_rule_resource() -> ApiResource {
    mesh::DESTINATION_RULE.api_resource()
}

impl CustomKind {
    pub(crate) fn api_resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, self.version, self.kind),
            self.plural,
        )
    }
}
