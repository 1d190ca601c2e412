//! # deploykit-testing
//!
//! Test support for deploykit and for code built on it:
//!
//! - [`SimCluster`]: a simulated cluster implementing [`deploykit_core::Environment`] and
//!   [`deploykit_core::Monitor`], with start latency, scripted per-artifact behaviour
//!   ([`Behavior`]: slow starts, readiness or startup failures, crash loops) and injected API
//!   errors ([`Fault`]), on tokio's clock.
//! - [`MemoryStore`]: an in-memory [`deploykit_core::StateStore`].
//! - [`SimClock`]: wall-clock time that follows tokio's (paused) clock.
//! - [`RecordingNotifier`]: a [`deploykit_core::Notifier`] that keeps what it is sent.
//! - [`RecordingAlertSink`]: a [`deploykit_alerting::AlertSink`] that keeps the alert
//!   notifications it is sent, and can fail on demand.
//! - [`MemoryTarget`]: an in-memory [`deploykit_core::BackupTarget`] with injected write
//!   faults and corruption helpers.
//! - [`SimFailoverSite`]: a primary and a standby environment for failover tests, with
//!   injected step errors, steps that say yes and do nothing, and split-brain accounting.
//! - [`conformance`]: the suites every backend's tests run.
//! - `k8s` (feature `k8s`): `k8s::FakeApiServer`, an in-memory Kubernetes API server that a
//!   `kube::Client` talks to, for tests of code on kube-rs.
//! - [`registry::LocalRegistry`]: a real container registry (Debian's `docker-registry`) on
//!   loopback, optionally behind a password.

mod alerts;
mod clock;
pub mod conformance;
mod failover;
#[cfg(feature = "k8s")]
pub mod k8s;
mod logs;
mod notify;
pub mod registry;
mod sim;
pub mod sinks;
mod store;
mod target;

pub use alerts::RecordingAlertSink;
pub use clock::SimClock;
pub use failover::{SimFailoverSite, SiteState};
pub use logs::{SIM_ENVIRONMENT, SimLogs};
pub use notify::RecordingNotifier;
pub use sim::{Behavior, Fault, Op, SimCluster, SimConfig, Snapshot};
pub use store::MemoryStore;
pub use target::MemoryTarget;
