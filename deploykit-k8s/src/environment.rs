//! [`KubeEnvironment`]: deploykit's [`Environment`] and [`Monitor`] for one Kubernetes
//! namespace, over kube-rs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use deploykit_core::environment::{
    FailureKind, InstanceFailure, InstanceObservation, RevisionObservation, proportional_weights,
};
use deploykit_core::retry::{KeyedBackoff, RetryError, RetryPolicy};
use deploykit_core::secrets::{self, SecretProvider};
use deploykit_core::{
    Autoscale, DesiredState, Environment, Error, MetricQuery, Monitor, Observed, Result, Revision,
    RevisionId, Sample, ServiceId, Traffic, TrafficSplit, Weight,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{
    ConfigMap, ContainerStatus, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, ResourceExt,
};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;

use crate::render::{
    self, ANNOTATION_AUTOSCALE, ANNOTATION_AUTOSCALED_REPLICAS, ANNOTATION_REVISION_SPEC,
    ANNOTATION_TRAFFIC, LABEL_MANAGED_BY, LABEL_NAME, LABEL_REVISION, Object, RenderOptions,
    Router, SecretValues,
};
use crate::retry::{classify, kube_error, status_code};

/// The field manager of deploykit's server-side applies, and the value of its
/// `app.kubernetes.io/managed-by` label.
const MANAGER: &str = "deploykit";

/// The field manager that sets the replicas of autoscaled Deployments: not [`MANAGER`], so
/// that deploykit's apply never owns `spec.replicas` of an autoscaled Deployment (dropping a
/// field one owns alone resets it) and the HorizontalPodAutoscaler can take it over.
const SCALE_MANAGER: &str = "deploykit-scale";

/// Settings of a [`KubeEnvironment`] beyond rendering.
///
/// ```
/// use deploykit_k8s::{KubeOptions, RetryPolicy};
/// let options = KubeOptions::default()
///     .retry(RetryPolicy::none())
///     .force_conflicts(false);
/// assert!(!options.force_conflicts);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KubeOptions {
    /// How API calls are retried (see [`RetryPolicy`]).
    pub retry: RetryPolicy,
    /// Whether server-side applies take over fields another field manager owns (`force=true`).
    /// Off by default: a conflict is then an error naming the object and the API's message.
    pub force_conflicts: bool,
}

impl KubeOptions {
    /// These options with `policy` for retries.
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// These options with forcing of apply conflicts on or off.
    #[must_use]
    pub fn force_conflicts(mut self, force: bool) -> Self {
        self.force_conflicts = force;
        self
    }
}

/// deploykit's [`Environment`] and [`Monitor`] for one Kubernetes namespace.
///
/// **apply** renders the desired state with [`render::plan`] (one Deployment per revision,
/// its ConfigMap and Secret, the stable/canary/preview Services, the route of the configured
/// [`Router`], …) and server-side applies each object in order with field manager `deploykit`,
/// skipping objects whose rendered JSON is the one last applied successfully by this
/// environment (so a canary step sends exactly one PATCH, to the route). Then it deletes what
/// it manages for the service (label selector `app.kubernetes.io/name=<service>,
/// app.kubernetes.io/managed-by=deploykit`) that the plan no longer has, Deployments last, so
/// traffic has moved away from a revision before its Deployment goes. A revision's secret
/// references are resolved through the [`SecretProvider`] given to
/// [`with_secrets`](Self::with_secrets), by [`secrets::resolve`]'s rules, into its immutable
/// Secret, once: by the apply that first starts the revision. Later applies leave that Secret
/// as it is, so a rotated value reaches only a revision pinned to it.
///
/// Apply conflicts (another field manager owns a field deploykit sets) are errors unless
/// [`KubeOptions::force_conflicts`] is set. API calls are retried per [`RetryPolicy`]: on
/// 429 (respecting the Status' `retryAfterSeconds`), 5xx and connection failures, never on
/// other 4xx; each object has its own backoff, which grows while that object keeps failing
/// (also across calls) and resets on its first success. A call whose retries are used up fails
/// with [`Error::Persistent`].
///
/// **observe** reads the service's Deployments (one per revision, rebuilt from their
/// `deploykit.dev/revision-spec` annotation, in creation order), their Pods (readiness,
/// restarts, crash loops and configuration failures) and the object that routes the service's
/// traffic (the route, or the stable Service without a router), whose
/// `deploykit.dev/traffic` annotation is the routing last applied. Pods come from a watch-fed
/// cache while [`start_watching`](Self::start_watching) (or a stream from
/// [`watch_pods`](Self::watch_pods)) runs and has listed once; otherwise from a LIST per call.
/// The traffic it reports as served is what that object really routes, over revisions with
/// ready pods: without a router, the revision the stable Service's selector picks (whatever
/// the weights say); with an Ingress ([`Router::Ingress`]) the same, but nothing while the
/// Ingress is missing or has no address in `status.loadBalancer.ingress` (its controller has
/// not admitted it); with a router that splits, the route's weights, or nothing while a
/// parent Gateway reports the route's current generation not accepted or its references
/// unresolved (`Accepted` or `ResolvedRefs` = `False`). Why nothing is served is in
/// [`Observed::routing_problem`] (and so in every message that shows the observation).
///
/// **Traffic split.** Without a [`Router`] ([`Router::None`]) or with an Ingress
/// ([`Router::Ingress`], which has no weights) only whole switches are served, and
/// [`Environment::traffic_split`] says so, naming `RenderOptions::router`: the orchestrator
/// then refuses canaries that need weights, header routes or mirrors.
///
/// **Autoscaling.** When the desired state carries [`DesiredState::autoscale`], Deployments
/// are applied without `spec.replicas` and marked with their bounds; replica counts are set by
/// a forced server-side apply of that one field under field manager `deploykit-scale` (before
/// the Deployment's own apply, so that turning autoscaling on never resets them), and the
/// HorizontalPodAutoscaler's target is only ever scaled up. The HPA follows the serving
/// revision (see [`render`]); observe reports the replicas of its target, within its bounds, as
/// [`Observed::autoscaled`], and while a rolling update has suspended it, the count it wanted
/// then (recorded on the Deployments). Turning autoscaling off again leaves the HPA's
/// ownership of `spec.replicas` on the Deployments; an apply that conflicts on that field
/// alone, with the HPA's controller or `deploykit-scale`, takes it back the same way (forced,
/// under `deploykit-scale`) and applies again. Other conflicts stay errors.
///
/// **teardown** deletes everything with the service's labels, kind by kind.
///
/// What was applied is remembered in memory only (Secrets as a keyed hash, never their values):
/// an object deleted by someone else shows up missing in the next apply's listing and is
/// applied again; one edited by someone else is re-applied only once its rendering changes, or
/// by another `KubeEnvironment` (e.g. after a restart).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use deploykit_core::{Environment, Orchestrator};
/// use deploykit_sqlite::SqliteStore;
/// use deploykit_k8s::KubeEnvironment;
/// use deploykit_k8s::render::RenderOptions;
///
/// let client = kube::Client::try_default().await?;
/// let options = RenderOptions::new("shop").image("web", "ghcr.io/acme/web");
/// let env = KubeEnvironment::new(client, options);
/// env.ensure_namespace_objects().await?; // LimitRange and ResourceQuota
/// let _watch = env.start_watching(); // observe from a watch-fed cache
///
/// let web = deploykit_core::ServiceId::new("web")?;
/// println!("{}", env.observe(&web).await?.summary());
/// let production = deploykit_core::EnvironmentSpec::builder()
///     .name("production")
///     .kind(deploykit_core::EnvironmentKind::Production)
///     .replicas(3)
///     .build()?;
/// let orchestrator = Orchestrator::builder(SqliteStore::open("deploykit.db").await?)
///     .environment(production, Arc::new(env))
///     .open()
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct KubeEnvironment {
    client: kube::Client,
    options: Arc<RenderOptions>,
    settings: KubeOptions,
    secrets: Option<Arc<dyn SecretProvider>>,
    backoff: Arc<KeyedBackoff>,
    shared: Arc<Shared>,
}

impl fmt::Debug for KubeEnvironment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeEnvironment")
            .field("namespace", &self.options.namespace)
            .field("settings", &self.settings)
            .field("secrets", &self.secrets)
            .field("watching", &self.shared.cache().is_some())
            .finish_non_exhaustive()
    }
}

/// State shared by the clones of one environment.
struct Shared {
    /// What was last applied successfully, per object key `Kind/namespace/name`.
    applied: Mutex<HashMap<String, Applied>>,
    /// Keys the fingerprints of Secrets, so that no secret value is kept in memory.
    hasher: std::hash::RandomState,
    /// The pod cache of a running watch, if any.
    pods: Mutex<Option<PodCache>>,
    generation: AtomicU64,
}

impl Shared {
    fn applied(&self) -> std::sync::MutexGuard<'_, HashMap<String, Applied>> {
        self.applied.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cache(&self) -> Option<PodCache> {
        self.pods.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The rendered object's fingerprint: its JSON, or for a Secret a keyed hash of it.
    fn fingerprint(&self, object: &Object, json: &Value) -> Fingerprint {
        if object.kind() == "Secret" {
            let mut h = self.hasher.build_hasher();
            h.write(json.to_string().as_bytes());
            Fingerprint::Hash(h.finish())
        } else {
            Fingerprint::Json(json.clone())
        }
    }
}

/// One object as last applied.
#[derive(Clone, Debug)]
struct Applied {
    /// The service it belongs to (`None` for namespace objects).
    service: Option<ServiceId>,
    fingerprint: Fingerprint,
}

#[derive(Clone, Debug, PartialEq)]
enum Fingerprint {
    Json(Value),
    Hash(u64),
}

/// The pod cache of a watch: usable once the first LIST completed.
#[derive(Clone)]
struct PodCache {
    store: Store<Pod>,
    ready: Arc<AtomicBool>,
    generation: u64,
}

/// Removes a watch's cache when its stream is dropped.
struct CacheGuard {
    shared: Arc<Shared>,
    generation: u64,
}

impl Drop for CacheGuard {
    fn drop(&mut self) {
        let mut pods = self.shared.pods.lock().unwrap_or_else(|e| e.into_inner());
        if pods
            .as_ref()
            .is_some_and(|c| c.generation == self.generation)
        {
            *pods = None;
        }
    }
}

/// A kind deploykit manages per service.
struct Kind {
    resource: ApiResource,
    /// Whether `deletecollection` may be used on it (not on Services, which long lacked it).
    collection_delete: bool,
}

fn kind<K: kube::Resource<DynamicType = ()>>(collection_delete: bool) -> Kind {
    Kind {
        resource: ApiResource::erase::<K>(&()),
        collection_delete,
    }
}

pub(crate) fn http_route() -> ApiResource {
    ApiResource {
        group: "gateway.networking.k8s.io".into(),
        version: "v1".into(),
        api_version: "gateway.networking.k8s.io/v1".into(),
        kind: "HTTPRoute".into(),
        plural: "httproutes".into(),
    }
}

pub(crate) fn virtual_service() -> ApiResource {
    ApiResource {
        group: "networking.istio.io".into(),
        version: "v1".into(),
        api_version: "networking.istio.io/v1".into(),
        kind: "VirtualService".into(),
        plural: "virtualservices".into(),
    }
}

impl KubeEnvironment {
    /// An environment for the namespace `options.namespace`, talking to the cluster through
    /// `client`, with default [`KubeOptions`].
    pub fn new(client: kube::Client, options: RenderOptions) -> Self {
        let settings = KubeOptions::default();
        KubeEnvironment {
            client,
            options: Arc::new(options),
            backoff: Arc::new(KeyedBackoff::new(settings.retry)),
            settings,
            secrets: None,
            shared: Arc::new(Shared {
                applied: Mutex::new(HashMap::new()),
                hasher: std::hash::RandomState::new(),
                pods: Mutex::new(None),
                generation: AtomicU64::new(0),
            }),
        }
    }

    /// This environment resolving revisions' secret references through `provider` when it
    /// makes their Secrets. Without one, applying a revision with secrets fails.
    #[must_use]
    pub fn with_secrets(mut self, provider: Arc<dyn SecretProvider>) -> Self {
        self.secrets = Some(provider);
        self
    }

    /// This environment retrying API calls per `policy` (the per-object backoff starts over).
    #[must_use]
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.settings.retry = policy;
        self.backoff = Arc::new(KeyedBackoff::new(policy));
        self
    }

    /// This environment with `options` (retries and conflict forcing).
    #[must_use]
    pub fn with_options(self, options: KubeOptions) -> Self {
        let force = options.force_conflicts;
        let mut env = self.with_retry(options.retry);
        env.settings.force_conflicts = force;
        env
    }

    /// This environment forcing server-side apply conflicts (taking over fields other field
    /// managers own) or not (the default).
    #[must_use]
    pub fn force_conflicts(mut self, force: bool) -> Self {
        self.settings.force_conflicts = force;
        self
    }

    /// The rendering options (and the namespace).
    pub fn options(&self) -> &RenderOptions {
        &self.options
    }

    /// The logs of this environment's pods (records carry the namespace as their
    /// environment; set another name with [`KubeLogs::environment`](crate::KubeLogs::environment)),
    /// retried per its policy. The environment is a [`LogSource`](deploykit_logs::LogSource) of
    /// them too.
    pub fn log_source(&self) -> crate::KubeLogs {
        crate::KubeLogs::new(self.client.clone(), self.namespace()).retry(self.settings.retry)
    }

    pub(crate) fn namespace(&self) -> &str {
        &self.options.namespace
    }

    /// Applies the namespace-wide objects ([`render::namespace_plan`]: LimitRange,
    /// ResourceQuota), skipping those unchanged since this environment last applied them.
    pub async fn ensure_namespace_objects(&self) -> Result<()> {
        for object in render::namespace_plan(&self.options) {
            self.apply_object(None, &object).await?;
        }
        Ok(())
    }

    /// A stream that watches the namespace's deploykit Pods (label
    /// `app.kubernetes.io/managed-by=deploykit`) into a cache that [`observe`] and
    /// [`instance_health`] use, instead of a LIST per call, from the end of the first LIST on,
    /// for as long as the stream lives. It must be polled: [`start_watching`] does that on a
    /// task. Like any informer cache it may lag the API server briefly (deploykit's callers
    /// poll observations until they settle).
    ///
    /// The [`watcher()`] resumes interrupted watches from the last resource version and re-lists
    /// when the API server answers `410 Gone` (the version is too old); errors are yielded and
    /// followed by [`WatchStreamExt::default_backoff`] (800 ms growing to 30 s, reset after
    /// 120 s of success) so a failing API server is not hammered.
    ///
    /// [`observe`]: Environment::observe
    /// [`instance_health`]: Monitor::instance_health
    /// [`start_watching`]: Self::start_watching
    pub fn watch_pods(&self) -> BoxStream<'static, Result<watcher::Event<Pod>, watcher::Error>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), self.namespace());
        let config = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER}"));
        let (reader, writer) = reflector::store();
        let ready = Arc::new(AtomicBool::new(false));
        let generation = self.shared.generation.fetch_add(1, Ordering::Relaxed) + 1;
        *self.shared.pods.lock().unwrap_or_else(|e| e.into_inner()) = Some(PodCache {
            store: reader,
            ready: ready.clone(),
            generation,
        });
        let guard = CacheGuard {
            shared: self.shared.clone(),
            generation,
        };
        reflector::reflector(writer, watcher::watcher(api, config))
            .default_backoff()
            .map(move |event| {
                let _alive = &guard;
                if let Ok(watcher::Event::InitDone) = &event {
                    ready.store(true, Ordering::Release);
                }
                event
            })
            .boxed()
    }

    /// Runs [`watch_pods`](Self::watch_pods) on a tokio task (logging its errors) until the
    /// returned handle is aborted; [`observe`](Environment::observe) then reads Pods from the
    /// cache instead of listing them.
    pub fn start_watching(&self) -> tokio::task::JoinHandle<()> {
        let mut stream = self.watch_pods();
        let namespace = self.namespace().to_string();
        tokio::spawn(async move {
            while let Some(event) = stream.next().await {
                if let Err(e) = event {
                    tracing::warn!(namespace, error = %e, "pod watch failed; backing off");
                }
            }
        })
    }

    fn selector(service: &ServiceId) -> String {
        format!("{LABEL_NAME}={service},{LABEL_MANAGED_BY}={MANAGER}")
    }

    fn dynamic(&self, resource: &ApiResource) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), self.namespace(), resource)
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{kind}/{}/{name}", self.namespace())
    }

    /// The namespace's object `name` of `resource`, if it exists (retried like every call).
    pub(crate) async fn get_object(
        &self,
        resource: &ApiResource,
        name: &str,
    ) -> Result<Option<DynamicObject>> {
        let api = self.dynamic(resource);
        let key = self.key(&resource.kind, name);
        self.backoff
            .run(&key, classify, || api.get_opt(name))
            .await
            .map_err(|e| {
                kube_error(
                    format!(
                        "get {} {name} in namespace {}",
                        resource.kind,
                        self.namespace()
                    ),
                    e,
                )
            })
    }

    /// Refuses, before anything is applied, what the cluster's Gateway API cannot do: a mirror
    /// of less than 100 % needs `requestMirror.percent`, which exists from Gateway API v1.3.
    /// The version is the bundle version the `HTTPRoute` CRD is annotated with
    /// (`gateway.networking.k8s.io/bundle-version`); a CRD that cannot be read says nothing,
    /// and the strict apply still refuses an unknown field.
    async fn check_gateway_api_features(&self, desired: &DesiredState) -> Result<()> {
        let partial_mirror = match (&self.options.router, &desired.traffic) {
            (Router::GatewayApi { .. }, Traffic::Routed(routes)) => routes
                .mirror
                .as_ref()
                .filter(|m| m.percent.percent() < 100)
                .map(|m| m.percent.percent()),
            _ => None,
        };
        let Some(percent) = partial_mirror else {
            return Ok(());
        };
        let crds: Api<DynamicObject> = Api::all_with(
            self.client.clone(),
            &ApiResource {
                group: "apiextensions.k8s.io".into(),
                version: "v1".into(),
                api_version: "apiextensions.k8s.io/v1".into(),
                kind: "CustomResourceDefinition".into(),
                plural: "customresourcedefinitions".into(),
            },
        );
        let Ok(Some(crd)) = crds.get_opt("httproutes.gateway.networking.k8s.io").await else {
            return Ok(());
        };
        let Some(version) = crd
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("gateway.networking.k8s.io/bundle-version"))
        else {
            return Ok(());
        };
        let numbers: Vec<u64> = version
            .trim_start_matches('v')
            .split(['.', '-'])
            .take(2)
            .map_while(|n| n.parse().ok())
            .collect();
        if let [major, minor] = numbers[..]
            && (major, minor) < (1, 3)
        {
            return Err(Error::invalid(
                "desired.traffic.mirror.percent",
                format!(
                    "this cluster's Gateway API is {version}, whose HTTPRoute has no mirror \
                     percentage (from v1.3): a mirror of {percent} % would copy every request; \
                     mirror 100 % or upgrade the Gateway API CRDs"
                ),
            ));
        }
        Ok(())
    }

    /// Whether the API server answers for this namespace: a listing of its Services (one).
    pub(crate) async fn answers(&self) -> Result<()> {
        let api: Api<Service> = Api::namespaced(self.client.clone(), self.namespace());
        let params = ListParams::default().limit(1);
        let key = format!("list Service/{}", self.namespace());
        self.backoff
            .run(&key, classify, || api.list_metadata(&params))
            .await
            .map(|_| ())
            .map_err(|e| {
                kube_error(
                    format!("list Services in namespace {}", self.namespace()),
                    e,
                )
            })
    }

    /// Server-side applies `body` (a whole object of `resource`, in this namespace) as
    /// deploykit, taking over any field another manager holds, and forgets what was last
    /// applied of it, so that the next rendering of it is applied again whatever it is.
    pub(crate) async fn apply_over(
        &self,
        resource: &ApiResource,
        body: &Value,
    ) -> Result<DynamicObject> {
        let name = body
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let key = self.key(&resource.kind, &name);
        self.shared.applied().remove(&key);
        let api = self.dynamic(resource);
        let params = PatchParams::apply(MANAGER).force().validation_strict();
        let patch = Patch::Apply(body);
        self.backoff
            .run(&key, classify, || api.patch(&name, &params, &patch))
            .await
            .map_err(|e| {
                kube_error(
                    format!(
                        "apply {}/{name} in namespace {}",
                        resource.kind,
                        self.namespace()
                    ),
                    e,
                )
            })
    }

    /// The kinds deploykit manages per service; Deployments last.
    fn kinds(&self) -> Vec<Kind> {
        let mut kinds = vec![
            kind::<Service>(false),
            kind::<ConfigMap>(true),
            kind::<Secret>(true),
            kind::<HorizontalPodAutoscaler>(true),
            kind::<PodDisruptionBudget>(true),
            kind::<NetworkPolicy>(true),
        ];
        match &self.options.router {
            Router::GatewayApi { .. } => kinds.insert(
                0,
                Kind {
                    resource: http_route(),
                    collection_delete: true,
                },
            ),
            Router::Istio { .. } => kinds.insert(
                0,
                Kind {
                    resource: virtual_service(),
                    collection_delete: true,
                },
            ),
            Router::Ingress { .. } => kinds.insert(0, kind::<Ingress>(true)),
            Router::None => {}
        }
        for resource in render::tls_resources(&self.options) {
            kinds.push(Kind {
                resource,
                collection_delete: true,
            });
        }
        if self.options.mesh_policy.is_some() {
            kinds.push(kind::<ServiceAccount>(true));
            for resource in render::mesh_resources() {
                kinds.push(Kind {
                    resource,
                    collection_delete: true,
                });
            }
        } else if matches!(self.options.router, Router::Istio { .. }) {
            // A service's circuit breaker renders a DestinationRule behind an Istio router
            // even without a mesh policy; it goes when the breaker does.
            kinds.push(Kind {
                resource: render::destination_rule_resource(),
                collection_delete: true,
            });
        }
        kinds.push(kind::<Deployment>(true));
        kinds
    }

    /// The secret values of the revisions in `desired` whose Secret does not exist yet, by
    /// [`secrets::resolve`]'s rules, and the revisions whose Secret exists already: it is
    /// immutable and holds the values the revision was first started with, so it is kept.
    async fn resolve_secrets(
        &self,
        service: &ServiceId,
        desired: &DesiredState,
    ) -> Result<(SecretValues, BTreeSet<RevisionId>)> {
        let mut values = SecretValues::new();
        let mut kept = BTreeSet::new();
        let revisions: Vec<&Revision> = desired
            .revisions
            .iter()
            .map(|t| &*t.revision)
            .filter(|r| !r.config.secrets.is_empty())
            .collect();
        if revisions.is_empty() {
            return Ok((values, kept));
        }
        let existing = self
            .list_names(service, &ApiResource::erase::<Secret>(&()))
            .await?
            .unwrap_or_default();
        for revision in revisions {
            if existing.contains(&render::secret_name(service, revision)) {
                kept.insert(revision.id.clone());
                continue;
            }
            let resolved = secrets::resolve(
                self.secrets.as_deref(),
                &revision.config.secrets,
                "use KubeEnvironment::with_secrets",
            )
            .await?;
            values.insert(revision.id.clone(), resolved);
        }
        Ok((values, kept))
    }

    /// Server-side applies one object unless it is unchanged since last applied.
    async fn apply_object(&self, service: Option<&ServiceId>, object: &Object) -> Result<()> {
        let json = object.to_json();
        let key = self.key(object.kind(), object.name());
        let fingerprint = self.shared.fingerprint(object, &json);
        if self
            .shared
            .applied()
            .get(&key)
            .is_some_and(|a| a.fingerprint == fingerprint)
        {
            tracing::trace!(key, "unchanged; not applied");
            return Ok(());
        }
        let api = self.dynamic(&object.api_resource());
        let mut params = PatchParams::apply(MANAGER).validation_strict();
        params.force = self.settings.force_conflicts;
        let name = object.name().to_string();
        let patch = Patch::Apply(&json);
        let mut taken_back = false;
        let result = loop {
            let result = self
                .backoff
                .run(&key, classify, || api.patch(&name, &params, &patch))
                .await;
            match (
                result.as_ref().map_err(RetryError::error),
                replicas_of(&json),
            ) {
                (Err(kube::Error::Api(status)), Some(n))
                    if !taken_back
                        && object.kind() == "Deployment"
                        && (status.code == 409 || status.reason == "Conflict")
                        && autoscaler_replicas_conflict(&status.message) =>
                {
                    // Replicas an autoscaler (or `deploykit-scale`) set while the service was
                    // autoscaled: take them back, then apply.
                    self.scale(&name, u32::try_from(n).unwrap_or(u32::MAX))
                        .await?;
                    taken_back = true;
                }
                _ => break result,
            }
        };
        let operation = format!(
            "apply {}/{} in namespace {}",
            object.kind(),
            object.name(),
            self.namespace()
        );
        match result {
            Ok(_) => {
                tracing::debug!(key, "applied");
                self.shared.applied().insert(
                    key,
                    Applied {
                        service: service.cloned(),
                        fingerprint,
                    },
                );
                Ok(())
            }
            Err(e) => match e.error() {
                kube::Error::Api(status) if status.code == 409 || status.reason == "Conflict" => {
                    Err(Error::backend(
                        operation,
                        format!(
                            "conflict: another field manager owns a field that field manager \
                             {MANAGER} sets (not forcing; KubeOptions::force_conflicts takes \
                             the fields over): {}",
                            status.message
                        ),
                    ))
                }
                _ => Err(kube_error(operation, e)),
            },
        }
    }

    /// Applies an autoscaled Deployment (rendered without replicas) and sets its replicas to
    /// `want` apart, with [`Self::scale`]: for an existing one first, also when deploykit's
    /// apply still owns them (autoscaling just turned on), so that the apply dropping them does
    /// not reset them; for a new one after creating it. The HorizontalPodAutoscaler's target
    /// (`hpa_target`) is only ever scaled up: scaling it down is the autoscaler's decision.
    async fn apply_autoscaled(
        &self,
        service: &ServiceId,
        object: &Object,
        want: u32,
        live: Option<&Deployment>,
        hpa_target: bool,
    ) -> Result<()> {
        let Some(live) = live else {
            // Not in the cluster: apply it even if it is unchanged since this environment last
            // did (deleted behind its back), so that the scale never creates it.
            self.shared
                .applied()
                .remove(&self.key(object.kind(), object.name()));
            self.apply_object(Some(service), object).await?;
            return self.scale(object.name(), want).await;
        };
        let current = replicas_of_deployment(live);
        let target = if hpa_target { want.max(current) } else { want };
        if target != current || applies_replicas(live) {
            self.scale(object.name(), target).await?;
        }
        self.apply_object(Some(service), object).await
    }

    async fn delete_object(&self, resource: &ApiResource, name: &str) -> Result<()> {
        let key = self.key(&resource.kind, name);
        let api = self.dynamic(resource);
        let params = DeleteParams::background();
        let result = self
            .backoff
            .run(&key, classify, || api.delete(name, &params))
            .await;
        self.shared.applied().remove(&key);
        match result {
            Ok(_) => Ok(()),
            Err(e) if status_code(e.error()) == Some(404) => Ok(()),
            Err(e) => Err(kube_error(
                format!(
                    "delete {}/{name} in namespace {}",
                    resource.kind,
                    self.namespace()
                ),
                e,
            )),
        }
    }

    /// The names of the service's objects of one kind (`None` if the kind is not installed).
    async fn list_names(
        &self,
        service: &ServiceId,
        resource: &ApiResource,
    ) -> Result<Option<Vec<String>>> {
        let api = self.dynamic(resource);
        let params = ListParams::default().labels(&Self::selector(service));
        let key = format!("list {}/{}", resource.kind, self.namespace());
        match self
            .backoff
            .run(&key, classify, || api.list_metadata(&params))
            .await
        {
            Ok(list) => Ok(Some(list.items.iter().map(|o| o.name_any()).collect())),
            Err(e) if status_code(e.error()) == Some(404) => Ok(None),
            Err(e) => Err(kube_error(
                format!("list {} of {service}", resource.plural),
                e,
            )),
        }
    }

    /// Deletes the service's managed objects that `objects` lacks and `kept` (object keys) does
    /// not name, kind by kind, Deployments last; then re-applies objects of `objects` that the
    /// listing shows missing although they were skipped as unchanged (deleted behind
    /// deploykit's back).
    async fn prune(
        &self,
        service: &ServiceId,
        objects: &[Object],
        kept: &BTreeSet<String>,
    ) -> Result<()> {
        let mut keep: BTreeSet<String> = objects
            .iter()
            .map(|o| self.key(o.kind(), o.name()))
            .collect();
        keep.extend(kept.iter().cloned());
        let mut missing = Vec::new();
        for kind in self.kinds() {
            let Some(names) = self.list_names(service, &kind.resource).await? else {
                continue;
            };
            for name in &names {
                if !keep.contains(&self.key(&kind.resource.kind, name)) {
                    tracing::info!(kind = %kind.resource.kind, name, "deleting, no longer desired");
                    self.delete_object(&kind.resource, name).await?;
                }
            }
            missing.extend(objects.iter().filter(|o| {
                o.kind() == kind.resource.kind && !names.iter().any(|n| n == o.name())
            }));
        }
        for object in missing {
            tracing::warn!(
                kind = object.kind(),
                name = object.name(),
                "missing; applying it again"
            );
            self.shared
                .applied()
                .remove(&self.key(object.kind(), object.name()));
            self.apply_object(Some(service), object).await?;
        }
        Ok(())
    }

    async fn list_typed<K>(&self, params: &ListParams, what: &str) -> Result<Vec<K>>
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), self.namespace());
        let key = format!("list {}/{}", K::kind(&()), self.namespace());
        self.backoff
            .run(&key, classify, || api.list(params))
            .await
            .map(|l| l.items)
            .map_err(|e| kube_error(format!("list {what}"), e))
    }

    /// The pods of `service` (of one revision if given): from the watch cache when it is
    /// ready, else listed.
    async fn pods(&self, service: &ServiceId, revision: Option<&RevisionId>) -> Result<Vec<Pod>> {
        let matches = |pod: &Pod| {
            let labels = pod.labels();
            labels.get(LABEL_NAME).map(String::as_str) == Some(service.as_str())
                && labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGER)
                && revision.is_none_or(|r| {
                    labels.get(LABEL_REVISION).map(String::as_str) == Some(r.as_str())
                })
        };
        if let Some(cache) = self.shared.cache()
            && cache.ready.load(Ordering::Acquire)
        {
            return Ok(cache
                .store
                .state()
                .iter()
                .filter(|p| matches(p))
                .map(|p| (**p).clone())
                .collect());
        }
        let mut selector = Self::selector(service);
        if let Some(r) = revision {
            selector.push_str(&format!(",{LABEL_REVISION}={r}"));
        }
        let pods: Vec<Pod> = self
            .list_typed(
                &ListParams::default().labels(&selector),
                &format!("pods of {service}"),
            )
            .await?;
        Ok(pods.into_iter().filter(|p| matches(p)).collect())
    }

    /// The object that routes the service's ordinary traffic and carries
    /// [`ANNOTATION_TRAFFIC`]: the route, or the stable Service without a router (see
    /// [`render::traffic_holder`]), if it exists.
    async fn traffic_holder(&self, service: &ServiceId) -> Result<Option<DynamicObject>> {
        let resource = match render::traffic_holder(&self.options.router) {
            "HTTPRoute" => http_route(),
            "VirtualService" => virtual_service(),
            _ => ApiResource::erase::<Service>(&()),
        };
        let api = self.dynamic(&resource);
        let key = self.key(&resource.kind, service.as_str());
        self.backoff
            .run(&key, classify, || api.get_opt(service.as_str()))
            .await
            .map_err(|e| kube_error(format!("get {} {service}", resource.kind), e))
    }

    /// The count the service's autoscaler wants now, within its bounds: the replicas of the
    /// HorizontalPodAutoscaler's target, else (the HPA suspended by a rolling update) the count
    /// recorded on the Deployments ([`ANNOTATION_AUTOSCALED_REPLICAS`]). `None` unless the
    /// Deployments are marked autoscaled ([`ANNOTATION_AUTOSCALE`]; only then is the HPA read).
    async fn live_scale(
        &self,
        service: &ServiceId,
        deployments: &[Deployment],
    ) -> Result<Option<u32>> {
        let live: Vec<&Deployment> = deployments
            .iter()
            .filter(|d| d.metadata.deletion_timestamp.is_none())
            .collect();
        let Some(bounds) = live
            .iter()
            .rev()
            .find_map(|d| d.annotations().get(ANNOTATION_AUTOSCALE))
        else {
            return Ok(None);
        };
        let bounds: Autoscale = serde_json::from_str(bounds).map_err(|e| Error::Corrupt {
            what: format!("annotation {ANNOTATION_AUTOSCALE} of the Deployments of {service}"),
            source: Box::new(e),
        })?;
        let api: Api<HorizontalPodAutoscaler> =
            Api::namespaced(self.client.clone(), self.namespace());
        let key = self.key("HorizontalPodAutoscaler", service.as_str());
        let hpa = self
            .backoff
            .run(&key, classify, || api.get_opt(service.as_str()))
            .await
            .map_err(|e| kube_error(format!("get HorizontalPodAutoscaler {service}"), e))?;
        let target = hpa.and_then(|h| h.spec).map(|s| s.scale_target_ref.name);
        let scaled = target
            .and_then(|name| live.iter().find(|d| d.name_any() == name).copied())
            .map(replicas_of_deployment);
        let recorded = live
            .iter()
            .filter_map(|d| {
                d.annotations()
                    .get(ANNOTATION_AUTOSCALED_REPLICAS)?
                    .parse::<u32>()
                    .ok()
            })
            .max();
        Ok(scaled
            .or(recorded)
            .map(|n| n.max(bounds.min_replicas).min(bounds.max_replicas)))
    }

    /// Sets the replicas of Deployment `name` as [`SCALE_MANAGER`]: a server-side apply of that
    /// one field, forced (deploykit decides the count during a rollout, as `kubectl scale`
    /// would, taking the field over from the HorizontalPodAutoscaler).
    async fn scale(&self, name: &str, replicas: u32) -> Result<()> {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), self.namespace());
        let body = serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": { "name": name },
            "spec": { "replicas": replicas },
        });
        let params = PatchParams::apply(SCALE_MANAGER)
            .force()
            .validation_strict();
        let patch = Patch::Apply(&body);
        let key = format!("{}/replicas", self.key("Deployment", name));
        self.backoff
            .run(&key, classify, || api.patch(name, &params, &patch))
            .await
            .map(|_| tracing::debug!(name, replicas, "scaled"))
            .map_err(|e| {
                kube_error(
                    format!(
                        "scale Deployment/{name} in namespace {} to {replicas}",
                        self.namespace()
                    ),
                    e,
                )
            })
    }
}

/// The routing last applied: the holder's [`ANNOTATION_TRAFFIC`] annotation.
fn routing(service: &ServiceId, holder: Option<&DynamicObject>) -> Result<Traffic> {
    let Some(annotation) = holder.and_then(|o| o.annotations().get(ANNOTATION_TRAFFIC)) else {
        return Ok(Traffic::default());
    };
    serde_json::from_str(annotation).map_err(|e| Error::Corrupt {
        what: format!(
            "annotation {ANNOTATION_TRAFFIC} of {} {service}",
            holder
                .and_then(|o| o.types.as_ref())
                .map_or("", |t| t.kind.as_str())
        ),
        source: Box::new(e),
    })
}

/// The share of ordinary traffic each revision really receives, from the objects that route
/// it (never from what deploykit meant to apply):
///
/// - without a router or with an Ingress, the revisions the stable Service's selector
///   reaches: under routed traffic one revision, whatever the weights say; else every
///   revision, by ready pods;
/// - with a router that splits, the route's weights over the revisions with ready pods;
/// - under routed traffic, nothing at all while a Gateway reports the route not accepted or
///   its references unresolved, or the Ingress is missing or not admitted (`refused`, see
///   `route_status`).
fn served(
    router: &Router,
    holder: Option<&DynamicObject>,
    routing: &Traffic,
    revisions: &[RevisionObservation],
    refused: bool,
) -> BTreeMap<RevisionId, Weight> {
    let counts: Vec<(RevisionId, u32)> = match (router, routing) {
        (_, Traffic::Routed(_)) if refused => Vec::new(),
        (Router::None | Router::Ingress { .. }, Traffic::Routed(_)) => {
            let selected = holder.and_then(|s| {
                s.data
                    .get("spec")?
                    .get("selector")?
                    .get(LABEL_REVISION)?
                    .as_str()
            });
            revisions
                .iter()
                .filter(|r| selected.is_none_or(|id| r.revision.id.as_str() == id))
                .map(|r| (r.revision.id.clone(), r.ready()))
                .collect()
        }
        (_, Traffic::Routed(routes)) => revisions
            .iter()
            .filter(|r| r.ready() > 0)
            .map(|r| (r.revision.id.clone(), routes.weight_of(&r.revision.id)))
            .collect(),
        _ => revisions
            .iter()
            .map(|r| (r.revision.id.clone(), r.ready()))
            .collect(),
    };
    proportional_weights(&counts)
}

/// The field manager of the HorizontalPodAutoscaler's writes (its controller runs in the
/// controller manager).
const HPA_MANAGER: &str = "kube-controller-manager";

/// Whether an apply conflict (`Apply failed with 1 conflict: conflict with "…" using apps/v1:
/// .spec.replicas`) is about `spec.replicas` alone, held by the HorizontalPodAutoscaler or
/// [`SCALE_MANAGER`]: what autoscaling leaves behind. Anyone else's (`kubectl edit`, say) stays
/// a conflict.
fn autoscaler_replicas_conflict(message: &str) -> bool {
    let mut paths = message
        .split_whitespace()
        .filter(|w| w.starts_with('.'))
        .peekable();
    let mut managers = message
        .split(" with \"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .peekable();
    paths.peek().is_some()
        && paths.all(|p| p == ".spec.replicas")
        && managers.peek().is_some()
        && managers.all(|m| m == HPA_MANAGER || m == SCALE_MANAGER)
}

/// Whether deploykit's apply ([`MANAGER`]) owns `spec.replicas` of `deployment` (so that
/// applying it without them would reset them).
fn applies_replicas(deployment: &Deployment) -> bool {
    deployment
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .any(|m| {
            m.manager.as_deref() == Some(MANAGER)
                && m.operation.as_deref() == Some("Apply")
                && m.fields_v1
                    .as_ref()
                    .is_some_and(|f| f.0.pointer("/f:spec/f:replicas").is_some())
        })
}

/// The replicas a live Deployment asks for (1 when unset, as the API server defaults them).
fn replicas_of_deployment(d: &Deployment) -> u32 {
    d.spec
        .as_ref()
        .and_then(|s| s.replicas)
        .map_or(1, |r| u32::try_from(r.max(0)).unwrap_or(0))
}

/// The replicas a Deployment's JSON asks for.
fn replicas_of(json: &Value) -> Option<u64> {
    json.pointer("/spec/replicas").and_then(Value::as_u64)
}

/// How long after a container ended on its own (a crash, an OOM kill, a liveness restart) its
/// pod still counts as failing, as the local backend does: between restarts Kubernetes reports
/// the container running again, and a revision that crashes a while after becoming ready must
/// still be caught while the old revision is warm.
const RECENT_EXIT_MS: i64 = 60_000;

/// An instance as observed from its pod at `now` (Unix milliseconds).
fn instance(pod: &Pod, now: i64) -> InstanceObservation {
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let containers: Vec<&ContainerStatus> = status
        .into_iter()
        .flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
        })
        .collect();
    let restarts: i64 = status
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |cs| cs.iter().map(|c| i64::from(c.restart_count)).sum());
    let failure = containers.iter().find_map(|c| container_failure(c, now));
    InstanceObservation::new(
        pod.name_any(),
        ready,
        u32::try_from(restarts.max(0)).unwrap_or(u32::MAX),
        failure,
    )
}

/// Why a container failed: its waiting state (a crash loop, a configuration error), or else a
/// termination within the last [`RECENT_EXIT_MS`] before `now`.
fn container_failure(c: &ContainerStatus, now: i64) -> Option<InstanceFailure> {
    waiting_failure(c).or_else(|| recent_exit(c, now))
}

/// A container that ended on its own less than a minute ago, though running again now.
fn recent_exit(c: &ContainerStatus, now: i64) -> Option<InstanceFailure> {
    let t = c.last_state.as_ref()?.terminated.as_ref()?;
    let finished = t.finished_at.as_ref()?.0.as_millisecond();
    if now.saturating_sub(finished) > RECENT_EXIT_MS {
        return None;
    }
    let mut text = format!(
        "{}: exited with code {} {}s ago",
        c.name,
        t.exit_code,
        now.saturating_sub(finished).max(0) / 1000
    );
    if let Some(r) = &t.reason {
        text.push_str(&format!(" ({r})"));
    }
    text.push_str(&format!(", restarted {} time(s)", c.restart_count));
    Some(InstanceFailure::new(FailureKind::CrashLoop, text))
}

/// Why a container failed, from its waiting state.
fn waiting_failure(c: &ContainerStatus) -> Option<InstanceFailure> {
    let waiting = c.state.as_ref()?.waiting.as_ref()?;
    let reason = waiting.reason.as_deref()?;
    let message = waiting.message.as_deref().unwrap_or("");
    let kind = match reason {
        "CrashLoopBackOff" => FailureKind::CrashLoop,
        "CreateContainerConfigError" | "ImagePullBackOff" | "ErrImagePull" | "InvalidImageName" => {
            FailureKind::Configuration
        }
        _ => return None,
    };
    let mut text = format!("{}: {reason}", c.name);
    if !message.is_empty() {
        text.push_str(&format!(": {message}"));
    }
    if kind == FailureKind::CrashLoop
        && let Some(t) = c.last_state.as_ref().and_then(|s| s.terminated.as_ref())
    {
        text.push_str(&format!(" (last exit code {}", t.exit_code));
        if let Some(r) = &t.reason {
            text.push_str(&format!(", {r}"));
        }
        text.push(')');
    }
    Some(InstanceFailure::new(kind, text))
}

/// Pods that count as instances: not being deleted, not finished.
fn live(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

fn instances(pods: &[Pod], revision: &RevisionId) -> Vec<InstanceObservation> {
    let now = i64::try_from(deploykit_core::Clock::now(&deploykit_core::SystemClock).as_millis())
        .unwrap_or(i64::MAX);
    let mut out: Vec<InstanceObservation> = pods
        .iter()
        .filter(|p| live(p))
        .filter(|p| p.labels().get(LABEL_REVISION).map(String::as_str) == Some(revision.as_str()))
        .map(|p| instance(p, now))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[async_trait]
impl Environment for KubeEnvironment {
    async fn apply(&self, service: &ServiceId, desired: &DesiredState) -> Result<()> {
        self.check_gateway_api_features(desired).await?;
        let (secrets, kept) = self.resolve_secrets(service, desired).await?;
        let mut objects =
            render::plan_keeping_secrets(service, desired, &secrets, &kept, &self.options)?.objects;
        drop(secrets);
        let kept: BTreeSet<String> = desired
            .revisions
            .iter()
            .filter(|t| kept.contains(&t.revision.id))
            .map(|t| self.key("Secret", &render::secret_name(service, &t.revision)))
            .collect();

        // Autoscaled: Deployments carry no replicas; they are set apart (`apply_autoscaled`),
        // from what runs now.
        let autoscaled = desired.autoscale.is_some();
        let mut live: Vec<Deployment> = Vec::new();
        let mut hpa_target: Option<String> = None;
        if autoscaled {
            let params = ListParams::default().labels(&Self::selector(service));
            live = self
                .list_typed(&params, &format!("deployments of {service}"))
                .await?;
            let scale = self.live_scale(service, &live).await?;
            hpa_target = objects
                .iter()
                .find(|o| o.kind() == "HorizontalPodAutoscaler")
                .and_then(|o| {
                    let json = o.to_json();
                    Some(
                        json.pointer("/spec/scaleTargetRef/name")?
                            .as_str()?
                            .to_string(),
                    )
                });
            // A rolling update suspends the HPA: remember the count it wanted meanwhile.
            if hpa_target.is_none()
                && let Some(n) = scale
            {
                for o in objects.iter_mut().filter(|o| o.kind() == "Deployment") {
                    o.metadata_mut()
                        .annotations
                        .get_or_insert_with(BTreeMap::new)
                        .insert(ANNOTATION_AUTOSCALED_REPLICAS.to_string(), n.to_string());
                }
            }
        }
        let wanted = |o: &Object| {
            desired
                .revisions
                .iter()
                .find(|t| render::revision_name(service, &t.revision) == o.name())
                .map(|t| t.replicas)
        };
        let running = |name: &str| live.iter().find(|d| d.name_any() == name);

        // Scale-downs before scale-ups: reorder the Deployments among their own slots so
        // that those asking for fewer replicas than they have go first.
        let mut order: Vec<usize> = (0..objects.len()).collect();
        let slots: Vec<usize> = (0..objects.len())
            .filter(|i| objects[*i].kind() == "Deployment")
            .collect();
        if slots.len() > 1 {
            let applied = self.shared.applied().clone();
            let before = |o: &Object| {
                if autoscaled {
                    running(o.name()).map(replicas_of_deployment)
                } else {
                    applied
                        .get(&self.key(o.kind(), o.name()))
                        .and_then(|a| match &a.fingerprint {
                            Fingerprint::Json(j) => replicas_of(j).map(|n| n as u32),
                            Fingerprint::Hash(_) => None,
                        })
                }
            };
            let shrinking =
                |o: &Object| matches!((before(o), wanted(o)), (Some(b), Some(n)) if n < b);
            let mut sorted = slots.clone();
            sorted.sort_by_key(|i| !shrinking(&objects[*i]));
            for (slot, i) in slots.into_iter().zip(sorted) {
                order[slot] = i;
            }
        }

        for i in order {
            let object = &objects[i];
            match wanted(object) {
                Some(want) if autoscaled && object.kind() == "Deployment" => {
                    let is_target = hpa_target.as_deref() == Some(object.name());
                    self.apply_autoscaled(service, object, want, running(object.name()), is_target)
                        .await?;
                }
                _ => self.apply_object(Some(service), object).await?,
            }
        }
        self.prune(service, &objects, &kept).await
    }

    async fn observe(&self, service: &ServiceId) -> Result<Observed> {
        let params = ListParams::default().labels(&Self::selector(service));
        let mut deployments: Vec<Deployment> = self
            .list_typed(&params, &format!("deployments of {service}"))
            .await?;
        if deployments.is_empty() {
            return Ok(Observed::default());
        }
        deployments.sort_by(|a, b| {
            let ts = |d: &Deployment| d.metadata.creation_timestamp.as_ref().map(|t| t.0);
            ts(a)
                .cmp(&ts(b))
                .then_with(|| a.name_any().cmp(&b.name_any()))
        });
        let pods = self.pods(service, None).await?;
        let holder = self.traffic_holder(service).await?;
        let routing = routing(service, holder.as_ref())?;
        let scale = self.live_scale(service, &deployments).await?;

        let mut revisions = Vec::new();
        for d in &deployments {
            if d.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let Some(spec) = d.annotations().get(ANNOTATION_REVISION_SPEC) else {
                tracing::warn!(deployment = %d.name_any(), "no {ANNOTATION_REVISION_SPEC} annotation; ignored");
                continue;
            };
            let revision: Revision = serde_json::from_str(spec).map_err(|e| Error::Corrupt {
                what: format!(
                    "annotation {ANNOTATION_REVISION_SPEC} of Deployment {}",
                    d.name_any()
                ),
                source: Box::new(e),
            })?;
            let desired = replicas_of_deployment(d);
            let instances = instances(&pods, &revision.id);
            revisions.push(RevisionObservation::new(
                Arc::new(revision),
                desired,
                instances,
            ));
        }

        let problem = match (&self.options.router, &routing) {
            (Router::Ingress { .. }, Traffic::Routed(_)) => {
                let ingress = self
                    .get_object(&ApiResource::erase::<Ingress>(&()), service.as_str())
                    .await?;
                crate::route_status::ingress_problem(self.namespace(), service, ingress.as_ref())
            }
            (_, Traffic::Routed(_)) => holder.as_ref().and_then(crate::route_status::problem),
            _ => None,
        };
        let traffic = served(
            &self.options.router,
            holder.as_ref(),
            &routing,
            &revisions,
            problem.is_some(),
        );
        let observed = Observed::new(revisions, traffic, routing).with_routing_problem(problem);
        Ok(match scale {
            Some(n) => observed.with_autoscaled(n),
            None => observed,
        })
    }

    /// Without a [`Router`], or with an Ingress (which has no weights), only whole switches
    /// are served: the stable Service selects one revision.
    fn traffic_split(&self) -> TrafficSplit {
        match self.options.router {
            Router::Ingress { .. } => TrafficSplit::WholeSwitch {
                reason: format!(
                    "its KubeEnvironment (namespace {}) routes with an Ingress \
                     (RenderOptions::router is Router::Ingress), which has no weights, header \
                     matches nor mirrors, so ordinary traffic reaches only the stable Service's \
                     revision; set RenderOptions::router to Router::GatewayApi or Router::Istio, \
                     or use the rolling or blue-green strategy",
                    self.namespace()
                ),
            },
            Router::None => TrafficSplit::WholeSwitch {
                reason: format!(
                    "its KubeEnvironment (namespace {}) has no router (RenderOptions::router is \
                     Router::None), so ordinary traffic reaches only the stable Service's \
                     revision; set RenderOptions::router to Router::GatewayApi or Router::Istio, \
                     or use the rolling or blue-green strategy",
                    self.namespace()
                ),
            },
            Router::GatewayApi { .. } | Router::Istio { .. } => TrafficSplit::Weighted,
        }
    }

    async fn teardown(&self, service: &ServiceId) -> Result<()> {
        let selector = Self::selector(service);
        for kind in self.kinds() {
            let api = self.dynamic(&kind.resource);
            if kind.collection_delete {
                let key = format!(
                    "deletecollection {}/{}",
                    kind.resource.kind,
                    self.namespace()
                );
                let params = ListParams::default().labels(&selector);
                let delete = DeleteParams::background();
                let result = self
                    .backoff
                    .run(&key, classify, || api.delete_collection(&delete, &params))
                    .await;
                match result {
                    Ok(_) => continue,
                    Err(e) if status_code(e.error()) == Some(404) => continue,
                    // No deletecollection verb for this kind: delete one by one.
                    Err(e) if status_code(e.error()) == Some(405) => {}
                    Err(e) => {
                        return Err(kube_error(
                            format!("delete {} of {service}", kind.resource.plural),
                            e,
                        ));
                    }
                }
            }
            for name in self
                .list_names(service, &kind.resource)
                .await?
                .unwrap_or_default()
            {
                self.delete_object(&kind.resource, &name).await?;
            }
        }
        self.shared
            .applied()
            .retain(|_, a| a.service.as_ref() != Some(service));
        Ok(())
    }
}

#[async_trait]
impl Monitor for KubeEnvironment {
    async fn instance_health(
        &self,
        service: &ServiceId,
        revision: &RevisionId,
    ) -> Result<Vec<InstanceObservation>> {
        let pods = self.pods(service, Some(revision)).await?;
        Ok(instances(&pods, revision))
    }

    async fn query(&self, _query: &MetricQuery) -> Result<Vec<Sample>> {
        Err(Error::invalid(
            "query",
            "KubeEnvironment has no metrics: use deploykit_telemetry::prometheus::PrometheusMonitor \
             against the cluster's Prometheus",
        ))
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStateWaiting, PodCondition, PodStatus,
    };

    use super::*;

    fn pod(statuses: Vec<ContainerStatus>, ready: bool) -> Pod {
        Pod {
            metadata: kube::api::ObjectMeta {
                name: Some("web-1234abcd-x".into()),
                ..Default::default()
            },
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                container_statuses: Some(statuses),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn waiting(reason: &str, message: &str, restarts: i32) -> ContainerStatus {
        ContainerStatus {
            name: "app".into(),
            restart_count: restarts,
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.into()),
                    message: Some(message.into()),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn crash_loop_names_container_and_last_exit() {
        let mut c = waiting(
            "CrashLoopBackOff",
            "back-off 40s restarting failed container",
            4,
        );
        c.last_state = Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: 1,
                reason: Some("Error".into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        let i = instance(&pod(vec![c], false), NOW);
        assert!(!i.ready);
        assert_eq!(i.restarts, 4);
        let f = i.failure.unwrap();
        assert_eq!(f.kind, FailureKind::CrashLoop);
        assert_eq!(
            f.reason,
            "app: CrashLoopBackOff: back-off 40s restarting failed container (last exit code 1, Error)"
        );
    }

    #[test]
    fn configuration_failures() {
        for reason in [
            "CreateContainerConfigError",
            "ImagePullBackOff",
            "ErrImagePull",
            "InvalidImageName",
        ] {
            let i = instance(
                &pod(vec![waiting(reason, "secret \"x\" not found", 0)], false),
                NOW,
            );
            let f = i.failure.unwrap();
            assert_eq!(f.kind, FailureKind::Configuration);
            assert_eq!(f.reason, format!("app: {reason}: secret \"x\" not found"));
        }
        let i = instance(&pod(vec![waiting("ContainerCreating", "", 0)], false), NOW);
        assert_eq!(i.failure, None);
    }

    #[test]
    fn only_autoscaler_replicas_conflicts_are_taken_back() {
        let hpa = "Apply failed with 1 conflict: conflict with \"kube-controller-manager\" \
                   using apps/v1: .spec.replicas";
        assert!(autoscaler_replicas_conflict(hpa));
        let ours = "Apply failed with 1 conflict: conflict with \"deploykit-scale\" using \
                    apps/v1: .spec.replicas";
        assert!(autoscaler_replicas_conflict(ours));
        let human = "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using \
                     apps/v1: .spec.replicas";
        assert!(!autoscaler_replicas_conflict(human));
        let two = "Apply failed with 2 conflicts: conflicts with \"kube-controller-manager\" \
                   using apps/v1:\n- .spec.replicas\n- .spec.template.spec.containers[name=\"app\"].image";
        assert!(!autoscaler_replicas_conflict(two));
        assert!(!autoscaler_replicas_conflict(
            "Operation cannot be fulfilled"
        ));
    }

    #[test]
    fn ready_from_condition() {
        let ok = ContainerStatus {
            name: "app".into(),
            restart_count: 1,
            ready: true,
            ..Default::default()
        };
        let i = instance(&pod(vec![ok], true), NOW);
        assert!(i.ready);
        assert_eq!(i.restarts, 1);
        assert_eq!(i.failure, None);
        assert_eq!(&*i.name, "web-1234abcd-x");
    }

    const NOW: i64 = 1_800_000_000_000;

    /// A container running and ready again after it crashed: failing for a minute after the
    /// crash (so a revision crashing after promotion is rolled back while the old one is warm),
    /// healthy after.
    #[test]
    fn a_recent_exit_counts_as_a_failure_for_a_minute() {
        let crashed = |ago_ms: i64| ContainerStatus {
            name: "app".into(),
            restart_count: 2,
            ready: true,
            last_state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: 1,
                    reason: Some("Error".into()),
                    finished_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        k8s_openapi::jiff::Timestamp::from_millisecond(NOW - ago_ms).expect("time"),
                    )),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let i = instance(&pod(vec![crashed(5_000)], true), NOW);
        let f = i.failure.expect("a recent crash");
        assert_eq!(f.kind, FailureKind::CrashLoop);
        assert_eq!(
            f.reason,
            "app: exited with code 1 5s ago (Error), restarted 2 time(s)"
        );
        let i = instance(&pod(vec![crashed(61_000)], true), NOW);
        assert_eq!(i.failure, None);
    }
}
