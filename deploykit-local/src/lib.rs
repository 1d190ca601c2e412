//! deploykit on one machine: each revision's instances run as supervised child processes behind
//! a built-in reverse proxy, so every deployment strategy in `deploykit-core` runs locally with
//! real processes and real traffic, no cluster and no cloud account.
//!
//! - [`LocalEnvironment`] implements `Environment` and `Monitor`: it starts, probes, restarts and
//!   drains instances, and measures each revision's requests at the proxy for canary analysis.
//! - [`proxy`]: the reverse proxy (hyper 1): weights, header routes, mirroring, a sticky cookie,
//!   host routes, atomic routing-table swaps and per-instance in-flight draining.
//! - [`process`] and [`logs`]: process groups, graceful stops, restart backoff, crash-loop
//!   detection, and log files rotated by size.
//! - [`probe`]: HTTP, TCP and command probes whose failures say exactly why.
//! - [`daemon`]: the environment in a long-running process, reached over a Unix socket by
//!   [`LocalClient`], which is how the `deploykit` command uses it.
//! - [`loadgen`]: a load generator that counts every dropped request, for zero-downtime tests.
//!
//! Unix only (process groups and signals).
//!
//! ```no_run
//! # async fn f() -> deploykit_core::Result<()> {
//! use std::sync::Arc;
//! use deploykit_core::*;
//! use deploykit_local::{LocalEnvironment, LocalOptions};
//! use deploykit_sqlite::SqliteStore;
//!
//! let local = LocalEnvironment::open(LocalOptions::new(".deploykit/production")).await?;
//! let production = EnvironmentSpec::builder()
//!     .name("production").kind(EnvironmentKind::Production).replicas(2).build()?;
//! let orchestrator = Orchestrator::builder(SqliteStore::open(".deploykit/deploykit.db").await?)
//!     .environment_with_monitor(production, Arc::new(local.clone()), Arc::new(local.clone()))
//!     .open()
//!     .await?;
//! let web = ServiceSpec::builder()
//!     .name("web")
//!     .command(vec!["./target/release/web".into()]) // listens on $PORT
//!     .port(8080)
//!     .build()?;
//! let id = orchestrator
//!     .deploy(
//!         DeployRequest::builder()
//!             .service(web)
//!             .environment("production")
//!             .artifact(Digest::of_bytes(b"web v1 build 1234"))
//!             .label("v1")
//!             .requested_by(Actor::new("alice"))
//!             .build(),
//!     )
//!     .await?;
//! orchestrator.wait(&id).await?;
//! println!("serving on http://{}", local.proxy_addr());
//! # Ok(()) }
//! ```

pub mod daemon;
mod environment;
pub mod loadgen;
mod log_source;
pub mod logs;
pub mod probe;
pub mod process;
pub mod proxy;
mod state;

pub use daemon::{DaemonInfo, Forward, LocalClient};
pub use environment::{LOCAL_METRICS, LocalEnvironment, LocalOptions};
pub use log_source::LocalLogs;
pub use logs::LogChunk;
