//! The domain model: services, environments, revisions, health checks and rollout parameters.

mod environment;
mod health;
mod ids;
mod revision;
mod rollout;
mod service;

pub use environment::{
    Autoscale, EnvironmentKind, EnvironmentSpec, MAX_REPLICAS, MAX_REVISION_HISTORY, Resources,
};
pub(crate) use environment::{check_progress_deadline, check_replicas};
pub use health::{HealthChecks, Probe, ProbeAction};
pub use ids::{DeploymentId, Digest, EnvironmentName, RevisionId, ServiceId};
pub use revision::{Revision, SecretRef, WorkloadConfig};
pub use rollout::{FailurePolicy, Quantity, RollingSpec, Weight};
pub use service::ServiceSpec;
