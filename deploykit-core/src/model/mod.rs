//! The domain model: services, environments, revisions, health checks, rollout parameters,
//! and the strategy and analysis specs (with the measurements an analysis journals). Plain data
//! with its validation: the logic that acts on it lives in the layers above.

mod analysis;
mod environment;
mod health;
mod ids;
mod revision;
mod rollout;
mod service;
mod strategy;
mod traffic;

pub use analysis::{
    AnalysisSpec, BadDirection, Comparison, Condition, JudgedMetric, JudgementSpec,
    MAX_MEASUREMENTS, Measurement, MeasurementOutcome, MetricCheck, MetricCheckBuilderWithKind,
    MetricKind, MinSamples, format_value,
};
pub(crate) use environment::check_progress_deadline;
pub use environment::{
    Autoscale, EnvironmentKind, EnvironmentSpec, MAX_REVISION_HISTORY, Resources,
};
pub use health::{HealthChecks, Probe, ProbeAction};
pub use ids::{DeploymentId, Digest, EnvironmentName, RevisionId, ServiceId};
pub use revision::{Revision, SecretRef, WorkloadConfig};
pub(crate) use rollout::check_replicas;
pub use rollout::{FailurePolicy, MAX_REPLICAS, Quantity, RollingSpec, Weight};
pub use service::ServiceSpec;
pub use strategy::{
    BlueGreenSpec, CanaryScale, CanarySpec, CanaryStep, MAX_PAUSE, MAX_STEPS, StrategySpec,
};
pub use traffic::{CircuitBreaker, MAX_RETRIES, Protocol, RateLimit, Retries, TrafficPolicy};
