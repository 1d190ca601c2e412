//! # deploykit-telemetry
//!
//! What deploykit tells the outside world, and what it reads back from it:
//!
//! - [`metrics`]: deploykit's own metrics in one registry, fed by the orchestrator's event
//!   stream, a store wrapper and backup repositories, encoded as OpenMetrics text.
//! - [`grafana`]: a Grafana dashboard over those metrics and the backup agent's.
//! - `prometheus` (feature `prometheus`): a [`deploykit_core::Monitor`] over the Prometheus HTTP
//!   API, for analyses and alert rules.
//! - `otel` (feature `otel`): deploykit's tracing spans exported over OTLP.

pub mod grafana;
pub mod metrics;
#[cfg(feature = "otel")]
pub mod otel;
#[cfg(feature = "prometheus")]
pub mod prometheus;
