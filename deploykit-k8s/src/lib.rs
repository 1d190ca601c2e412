//! deploykit on Kubernetes, on kube-rs and k8s-openapi (API version 1.33): every deployment
//! strategy of `deploykit-core` runs against a namespace unchanged.
//!
//! - [`render`]: the exact objects deploykit applies, as typed k8s-openapi values, with no
//!   cluster: one Deployment per revision with its ConfigMap and Secret, stable, canary and
//!   preview Services, a Gateway API `HTTPRoute` or an Istio `VirtualService` with weights,
//!   header routes and mirroring (or a plain `Ingress`, which has no weights), TLS on the
//!   routes (a cert-manager `Certificate`, a `ReferenceGrant` for a Gateway elsewhere), secrets
//!   as environment variables or read-only files, an HPA, a PodDisruptionBudget, a default-deny
//!   NetworkPolicy with allow rules, and the namespace's LimitRange and ResourceQuota; pods
//!   follow the restricted Pod Security Standard unless asked otherwise.
//! - [`KubeEnvironment`]: an `Environment` and `Monitor` for one namespace. It applies with
//!   server-side apply (field manager `deploykit`), patching only objects whose rendering
//!   changed (a canary step is one patch of the route), retries 429 and 5xx with a backoff
//!   per object that resets on success, observes pods by watching them, and reports crash
//!   loops and configuration errors with the container's reason.
//!   - *Traffic.* Weights, header routes and mirrors need a [`render::Router`] that splits
//!     (Gateway API or Istio): without one, or with an Ingress, the stable Service selects one
//!     revision, so the environment reports
//!     `TrafficSplit::WholeSwitch` and the orchestrator refuses canaries that split traffic
//!     at deploy time (rolling and blue-green run). Observed traffic is read from the objects
//!     that route it (the stable Service's selector, or the route), never from what was meant.
//!   - *Autoscaling.* With the environment's `autoscale` (in the desired state), a
//!     HorizontalPodAutoscaler scales the serving revision — kept on the stable revision
//!     through a canary or blue-green rollout, moved to the new one at promotion, suspended
//!     only while a rolling update runs several revisions — and observe reports its count,
//!     which the orchestrator sizes rollouts with. Replicas of autoscaled Deployments are
//!     written under field manager `deploykit-scale`, never by deploykit's apply.
//! - [`store::KubeStateStore`]: the orchestrator's journal, audit log and leases in
//!   ConfigMaps and `coordination.k8s.io` Leases, so orchestrators on several machines share
//!   deployments through the cluster.
//! - [`backup`]: exports the app's objects, cleaned of server-set fields, as a `BackupSource`,
//!   and restores them into another namespace or cluster.
//! - [`handover::RouteHandover`]: a warm standby in another namespace (or cluster) takes the
//!   primary's clients: its routes point at the standby namespace's Services, allowed by a
//!   `ReferenceGrant`, and count only once the Gateway accepted them.
//! - [`identity`]: who the cluster says the caller is (a `SelfSubjectReview`): the kubeconfig
//!   user or the pod's service account as the API server authenticated it, for the actor of
//!   audit records and access checks.
//! - [`KubeLogs`]: the `LogSource` of a namespace: pod logs of a service's instances, merged
//!   by time, followed across reconnections and into new pods without duplicates.
//!
//! Tests of code on this crate run it against `deploykit_testing::k8s::FakeApiServer` (feature
//! `k8s` of `deploykit-testing`), an in-memory API server that a `kube::Client` talks to.
//!
//! ```no_run
//! # async fn f() -> deploykit_core::Result<()> {
//! use std::sync::Arc;
//! use deploykit_core::*;
//! use deploykit_k8s::render::{ParentRef, RenderOptions, Router};
//! use deploykit_k8s::KubeEnvironment;
//! use deploykit_sqlite::SqliteStore;
//!
//! let client = kube::Client::try_default()
//!     .await
//!     .map_err(|e| Error::backend("connect to the cluster", e.to_string()))?;
//! let options = RenderOptions::new("shop")
//!     .image("web", "registry.example.com/shop/web")
//!     .router(Router::GatewayApi {
//!         parent: ParentRef::new("public-gateway").in_namespace("gateway"),
//!         hostnames: vec!["shop.example.com".into()],
//!     });
//! let cluster = Arc::new(KubeEnvironment::new(client, options));
//! let production = EnvironmentSpec::builder()
//!     .name("production").kind(EnvironmentKind::Production).replicas(3).build()?;
//! let orchestrator = Orchestrator::builder(SqliteStore::open("deploykit.db").await?)
//!     .environment(production, cluster)
//!     .open()
//!     .await?;
//! # let _ = orchestrator; Ok(()) }
//! ```

pub mod backup;
mod environment;
pub mod handover;
mod identity;
mod logs;
pub mod render;
mod retry;
mod route_status;
pub mod store;

/// How API calls are retried: deploykit's one [`deploykit_core::retry::RetryPolicy`].
pub use deploykit_core::retry::RetryPolicy;
pub use environment::{KubeEnvironment, KubeOptions};
pub use identity::{ClusterIdentity, identity};
pub use logs::KubeLogs;
