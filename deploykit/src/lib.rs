//! # deploykit
//!
//! Deploy applications safely and keep them recoverable: rolling, blue-green and canary
//! rollouts with analysis and automatic, verified rollback, driven by a journaled orchestrator
//! that any process on the same store can resume; backups; secrets, flags, alerting and
//! telemetry. This crate is the one dependency line: it re-exports [`deploykit_core`] (the
//! domain model, the traits and the orchestrator) at its root, and every other part as a
//! module, chosen by feature (as `kube` does over `kube-core`, `kube-client` and
//! `kube-runtime`):
//!
//! | module | crate | feature |
//! |---|---|---|
//! | (root) | `deploykit-core` | always |
//! | [`sqlite`] | `deploykit-sqlite` | `sqlite` (default) |
//! | `backup` | `deploykit-backup` | `backup` |
//! | `secrets` | `deploykit-secrets` | `secrets` |
//! | `flags` | `deploykit-flags` | `flags`, `openfeature` |
//! | `telemetry` | `deploykit-telemetry` | `telemetry`, `prometheus`, `otel` |
//! | `alerting` | `deploykit-alerting` | `alerting` |
//! | `config` | `deploykit-config` | `config` |
//! | `builds` | `deploykit-build` | `build` (stages, the build cache, images, attestations) |
//! | `image` | `deploykit-image` | `image` (OCI images, a registry client) |
//! | `logs` | `deploykit-logs` | `logs` |
//! | `dashboard` | `deploykit-dashboard` | `dashboard` |
//! | `local` | `deploykit-local` | `local` |
//! | `k8s` | `deploykit-k8s` | `k8s` |
//! | `aws` | `deploykit-aws` | `aws` |
//!
//! `full` turns everything on. Without a feature, `backup` and `secrets` are the contracts of
//! `deploykit-core` (`BackupTarget`, `SecretProvider`) that the engines implement.
//!
//! ```no_run
//! # async fn demo(env: std::sync::Arc<dyn deploykit::Environment>) -> deploykit::Result<()> {
//! use deploykit::sqlite::SqliteStore;
//! use deploykit::{EnvironmentKind, EnvironmentSpec, Orchestrator};
//! let production = EnvironmentSpec::builder()
//!     .name("production")
//!     .kind(EnvironmentKind::Production)
//!     .replicas(3)
//!     .build()?;
//! let orchestrator = Orchestrator::builder(SqliteStore::open("deploykit.db").await?)
//!     .environment(production, env)
//!     .open()
//!     .await?;
//! # Ok(()) }
//! ```

pub use deploykit_core::*;

#[cfg(feature = "alerting")]
pub use deploykit_alerting as alerting;
#[cfg(feature = "aws")]
pub use deploykit_aws as aws;
#[cfg(feature = "backup")]
pub use deploykit_backup as backup;
#[cfg(feature = "build")]
pub use deploykit_build as builds;
#[cfg(feature = "config")]
pub use deploykit_config as config;
#[cfg(feature = "dashboard")]
pub use deploykit_dashboard as dashboard;
#[cfg(feature = "flags")]
pub use deploykit_flags as flags;
#[cfg(feature = "image")]
pub use deploykit_image as image;
#[cfg(feature = "k8s")]
pub use deploykit_k8s as k8s;
#[cfg(feature = "local")]
pub use deploykit_local as local;
#[cfg(feature = "logs")]
pub use deploykit_logs as logs;
#[cfg(feature = "postgres")]
pub use deploykit_postgres as postgres;
#[cfg(feature = "secrets")]
pub use deploykit_secrets as secrets;
#[cfg(feature = "sqlite")]
pub use deploykit_sqlite as sqlite;
#[cfg(feature = "telemetry")]
pub use deploykit_telemetry as telemetry;
