//! # deploykit-core
//!
//! The domain model, the traits every backend implements, and the journaled orchestrator of
//! deploykit, an embeddable SDK that deploys applications safely and keeps them recoverable.
//! It depends on no other deploykit crate; the engines and backends depend on it (the crate
//! map is at the top of `docs/ARCHITECTURE.md`; the `deploykit` facade re-exports it all).
//!
//! - [`model`]: services, environments, revisions, health checks, rollout parameters, and the
//!   strategy and analysis specs — built with validating builders, so an impossible spec is an
//!   [`Error::InvalidSpec`] naming the field.
//! - Traits: [`Environment`] (the actuator), [`DeploymentStrategy`] (a pure planner),
//!   [`Monitor`] (the sensor), [`StateStore`] (journals, leases, audit), [`Notifier`],
//!   [`secrets::SecretProvider`], [`BuildStage`], [`BackupTarget`] and
//!   [`backup::BackupSource`]: contracts only; `deploykit-sqlite`, `deploykit-secrets`,
//!   `deploykit-config` and `deploykit-backup` implement them.
//! - [`strategy`]: rolling, blue-green and canary planners, and the switch-back rollback.
//! - [`analysis`]: metric checks with Argo Rollouts' semantics and a Mann-Whitney canary
//!   judgement.
//! - [`Orchestrator`]: runs the state machine of [`journal`], journaling every transition before
//!   acting, so a new process on the same store resumes every in-flight deployment; approvals,
//!   failure policies, preview environments and multi-service releases. Its [`Event`] stream
//!   feeds notifiers, metrics and timelines.
//! - [`access`] and [`audit`]: access control and the tamper-evident audit log; [`retry`]: the
//!   one retry policy of every backend.
//!
//! In-memory backends, fault injection and conformance suites live in `deploykit-testing`.

pub mod access;

pub mod analysis;
pub mod audit;
pub mod backup;
pub mod build;
pub mod environment;
mod error;
pub mod event;
pub mod failover;
pub mod journal;
pub mod model;
pub mod monitor;
pub mod notify;
mod orchestrator;
pub mod retry;
pub mod secrets;
pub mod store;
pub mod strategy;
pub mod time;
pub mod validate;

pub use backup::{BackupTarget, ObjectMeta};
pub use build::{
    Artifact, ArtifactKind, ArtifactVerifier, BuildContext, BuildStage, Fingerprint, StageKind,
};
pub use environment::{
    DesiredState, Environment, EnvironmentExt, FailureKind, HeaderRoute, InstanceFailure,
    InstanceObservation, Mirror, Observed, RevisionObservation, RevisionTarget, Routes, Traffic,
    TrafficSplit,
};
pub use error::{BoxError, Error, Result};
pub use event::Event;
pub use journal::{Actor, DeploymentStatus, Outcome, Phase};
pub use model::*;
pub use monitor::{MetricQuery, Monitor, MonitorExt, Sample};
pub use notify::{Notification, Notifier};
pub use orchestrator::{
    DeployRequest, Orchestrator, OrchestratorBuilder, OrchestratorConfig, Preview, PreviewRequest,
    Release, ReleaseRequest, ReleaseService, ScopedEnvironment, preview_name,
};
pub use store::StateStore;
pub use strategy::{Decision, DeploymentStrategy, PlanContext, RollingStrategy, StrategySpec};
pub use time::{Clock, SystemClock, Timestamp};
