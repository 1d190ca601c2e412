//! deploykit's own metrics, in one [`Metrics`] registry (no global state: two orchestrators
//! in one process keep their own), encoded as OpenMetrics text for Prometheus to scrape.
//!
//! The registry is fed, never called by the orchestrator: it is a [`Notifier`] on the
//! orchestrator's event stream ([`deploykit_core::OrchestratorBuilder::notifier`]), journal
//! writes are timed by wrapping the store in [`MeteredStore`], and backup repositories report
//! each backup and restore (`deploykit_backup::Repository::with_metrics`). Expose it with
//! [`Metrics::encode`] from your own HTTP handler (axum, hyper, …) or with [`serve`].
//!
//! | metric | labels |
//! |---|---|
//! | `deploykit_deployments_started_total` | environment, strategy |
//! | `deploykit_deployments_finished_total` | environment, strategy, outcome (`succeeded`, `rolled_back`, `frozen`, `failed`) |
//! | `deploykit_rollout_duration_seconds` (histogram) | environment, strategy |
//! | `deploykit_step_duration_seconds` (histogram: time from one canary/blue-green step to the next) | environment, strategy |
//! | `deploykit_analysis_measurements_total` | environment, outcome (`successful`, `failed`, `inconclusive`, `error`) |
//! | `deploykit_rollback_latency_seconds` (histogram: rollback decided → first switch-back applied) | environment |
//! | `deploykit_journal_write_seconds` (histogram) | — |
//! | `deploykit_backup_bytes_read_total`, `deploykit_backup_bytes_stored_total` | environment, kind |
//! | `deploykit_backup_duration_seconds` (histogram) | environment, kind |
//! | `deploykit_backup_dedup_ratio` (gauge: bytes in the snapshot / bytes newly stored) | environment |
//! | `deploykit_backup_last_success_timestamp_seconds` (gauge: the RPO a dashboard needs) | environment |
//! | `deploykit_restore_bytes_total`, `deploykit_restore_duration_seconds` (histogram) | environment |
//!
//! ```
//! use deploykit_telemetry::metrics::Metrics;
//! let metrics = Metrics::new();
//! metrics.observe_journal_write(std::time::Duration::from_millis(2));
//! let text = metrics.encode();
//! assert!(text.contains("deploykit_journal_write_seconds_count 1"));
//! assert!(text.ends_with("# EOF\n"));
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use async_trait::async_trait;
use deploykit_core::analysis::MeasurementOutcome;
use deploykit_core::journal::{JournalEntry, JournalEvent, Outcome, Phase};
use deploykit_core::model::DeploymentId;
use deploykit_core::store::{StateStore, StateStoreLayer};
use deploykit_core::time::Timestamp;
use deploykit_core::{Event, Notifier, Result};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Rollout {
    environment: String,
    strategy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Finished {
    environment: String,
    strategy: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Measured {
    environment: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Env {
    environment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Backup {
    environment: String,
    kind: String,
}

fn seconds_buckets() -> Histogram {
    // 0.05 s … ~27 min.
    Histogram::new(exponential_buckets(0.05, 2.0, 16))
}

fn fast_buckets() -> Histogram {
    // 0.1 ms … ~3 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// Per deployment: when the current step began, and when a rollback was decided.
#[derive(Default)]
struct Timers {
    step: HashMap<DeploymentId, Timestamp>,
    rollback: HashMap<DeploymentId, Timestamp>,
}

/// deploykit's metrics registry. Cheap to share (`Arc`); every method takes `&self`.
pub struct Metrics {
    registry: Registry,
    started: Family<Rollout, Counter>,
    finished: Family<Finished, Counter>,
    rollout_duration: Family<Rollout, Histogram, fn() -> Histogram>,
    step_duration: Family<Rollout, Histogram, fn() -> Histogram>,
    measurements: Family<Measured, Counter>,
    rollback_latency: Family<Env, Histogram, fn() -> Histogram>,
    journal_write: Histogram,
    backup_read: Family<Backup, Counter>,
    backup_stored: Family<Backup, Counter>,
    backup_duration: Family<Backup, Histogram, fn() -> Histogram>,
    dedup_ratio: Family<Env, Gauge<f64, AtomicU64>>,
    last_backup: Family<Env, Gauge<f64, AtomicU64>>,
    restore_bytes: Family<Env, Counter>,
    restore_duration: Family<Env, Histogram, fn() -> Histogram>,
    timers: Mutex<Timers>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// An empty registry with every deploykit metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            started: Family::default(),
            finished: Family::default(),
            rollout_duration: Family::new_with_constructor(seconds_buckets),
            step_duration: Family::new_with_constructor(seconds_buckets),
            measurements: Family::default(),
            rollback_latency: Family::new_with_constructor(fast_buckets),
            journal_write: fast_buckets(),
            backup_read: Family::default(),
            backup_stored: Family::default(),
            backup_duration: Family::new_with_constructor(seconds_buckets),
            dedup_ratio: Family::default(),
            last_backup: Family::default(),
            restore_bytes: Family::default(),
            restore_duration: Family::new_with_constructor(seconds_buckets),
            timers: Mutex::new(Timers::default()),
        };
        registry.register(
            "deploykit_deployments_started",
            "Deployments started",
            m.started.clone(),
        );
        registry.register(
            "deploykit_deployments_finished",
            "Deployments finished, by outcome",
            m.finished.clone(),
        );
        registry.register(
            "deploykit_rollout_duration_seconds",
            "Time from start to the end of a rollout",
            m.rollout_duration.clone(),
        );
        registry.register(
            "deploykit_step_duration_seconds",
            "Time from one rollout step to the next",
            m.step_duration.clone(),
        );
        registry.register(
            "deploykit_analysis_measurements",
            "Analysis measurements, by outcome",
            m.measurements.clone(),
        );
        registry.register(
            "deploykit_rollback_latency_seconds",
            "Time from the rollback decision to the first switch-back applied",
            m.rollback_latency.clone(),
        );
        registry.register(
            "deploykit_journal_write_seconds",
            "Latency of journal appends",
            m.journal_write.clone(),
        );
        registry.register(
            "deploykit_backup_bytes_read",
            "Bytes read by backups",
            m.backup_read.clone(),
        );
        registry.register(
            "deploykit_backup_bytes_stored",
            "Bytes newly stored by backups",
            m.backup_stored.clone(),
        );
        registry.register(
            "deploykit_backup_duration_seconds",
            "Backup duration",
            m.backup_duration.clone(),
        );
        registry.register(
            "deploykit_backup_dedup_ratio",
            "Bytes in the last snapshot over bytes it newly stored",
            m.dedup_ratio.clone(),
        );
        registry.register(
            "deploykit_backup_last_success_timestamp_seconds",
            "When the last successful backup finished",
            m.last_backup.clone(),
        );
        registry.register(
            "deploykit_restore_bytes",
            "Bytes restored",
            m.restore_bytes.clone(),
        );
        registry.register(
            "deploykit_restore_duration_seconds",
            "Restore duration",
            m.restore_duration.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The registry in OpenMetrics text format (what `/metrics` serves).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Count one journal write.
    pub fn observe_journal_write(&self, took: Duration) {
        self.journal_write.observe(took.as_secs_f64());
    }

    /// Account for one event of the orchestrator's stream.
    pub fn observe(&self, event: &Event) {
        let entry = &event.entry;
        let rollout = Rollout {
            environment: event.environment.to_string(),
            strategy: event.strategy.to_string(),
        };
        let id = &event.deployment;
        let mut timers = self.timers.lock().unwrap_or_else(|e| e.into_inner());
        match &entry.event {
            JournalEvent::Started { .. } => {
                self.started.get_or_create(&rollout).inc();
                timers.step.insert(id.clone(), entry.at);
            }
            JournalEvent::StepReached { .. } => {
                if let Some(began) = timers.step.insert(id.clone(), entry.at) {
                    self.step_duration
                        .get_or_create(&rollout)
                        .observe(entry.at.since(began).as_secs_f64());
                }
            }
            JournalEvent::Measured { measurement } => {
                let outcome = match measurement.outcome {
                    MeasurementOutcome::Successful => "successful",
                    MeasurementOutcome::Failed => "failed",
                    MeasurementOutcome::Inconclusive => "inconclusive",
                    MeasurementOutcome::Error => "error",
                    MeasurementOutcome::NoData => "no_data",
                };
                self.measurements
                    .get_or_create(&Measured {
                        environment: rollout.environment.clone(),
                        outcome: outcome.into(),
                    })
                    .inc();
            }
            JournalEvent::RollbackStarted { .. } => {
                timers.rollback.insert(id.clone(), entry.at);
            }
            JournalEvent::Applied { .. } if event.phase == Phase::RollingBack => {
                if let Some(decided) = timers.rollback.remove(id) {
                    self.rollback_latency
                        .get_or_create(&Env {
                            environment: rollout.environment.clone(),
                        })
                        .observe(entry.at.since(decided).as_secs_f64());
                }
            }
            JournalEvent::Finished { outcome } => {
                let outcome = match outcome {
                    Outcome::Succeeded => "succeeded",
                    Outcome::RolledBack { .. } => "rolled_back",
                    Outcome::Frozen { .. } => "frozen",
                    Outcome::Failed { .. } => "failed",
                };
                self.finished
                    .get_or_create(&Finished {
                        environment: rollout.environment.clone(),
                        strategy: rollout.strategy.clone(),
                        outcome: outcome.into(),
                    })
                    .inc();
                self.rollout_duration
                    .get_or_create(&rollout)
                    .observe(entry.at.since(event.created_at).as_secs_f64());
                timers.step.remove(id);
                timers.rollback.remove(id);
            }
            _ => {}
        }
    }

    /// Account for a finished backup.
    pub fn observe_backup(&self, backup: &BackupRecord<'_>) {
        let labels = Backup {
            environment: backup.environment.to_string(),
            kind: backup.kind.to_string(),
        };
        let env = Env {
            environment: backup.environment.to_string(),
        };
        self.backup_read
            .get_or_create(&labels)
            .inc_by(backup.bytes_read);
        self.backup_stored
            .get_or_create(&labels)
            .inc_by(backup.bytes_stored);
        self.backup_duration
            .get_or_create(&labels)
            .observe(backup.finished.since(backup.started).as_secs_f64());
        self.dedup_ratio
            .get_or_create(&env)
            .set(backup.bytes_total as f64 / backup.bytes_stored.max(1) as f64);
        self.last_backup
            .get_or_create(&env)
            .set(backup.finished.as_millis() as f64 / 1000.0);
    }

    /// Account for a finished restore.
    pub fn observe_restore(&self, environment: &str, bytes: u64, took: Duration) {
        let env = Env {
            environment: environment.to_string(),
        };
        self.restore_bytes.get_or_create(&env).inc_by(bytes);
        self.restore_duration
            .get_or_create(&env)
            .observe(took.as_secs_f64());
    }
}

/// One finished backup, as a backup repository reports it to [`Metrics::observe_backup`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupRecord<'a> {
    /// The environment whose repository it went into.
    pub environment: &'a str,
    /// `full`, `incremental`, `differential` or `snapshot`.
    pub kind: &'a str,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Bytes newly stored (after deduplication and compression).
    pub bytes_stored: u64,
    /// Bytes the snapshot holds in all.
    pub bytes_total: u64,
    /// When the backup started.
    pub started: Timestamp,
    /// When it finished.
    pub finished: Timestamp,
}

/// Every event of the orchestrator's stream is counted (give the same `Arc<Metrics>` to
/// [`deploykit_core::OrchestratorBuilder::notifier`]).
#[async_trait]
impl Notifier for Metrics {
    async fn notify(&self, event: &Event) -> Result<()> {
        self.observe(event);
        Ok(())
    }
}

/// A [`StateStore`] that times every journal write into [`Metrics`]; everything else goes
/// straight to the wrapped store.
///
/// ```
/// # async fn demo(store: std::sync::Arc<dyn deploykit_core::StateStore>) {
/// use std::sync::Arc;
/// use deploykit_telemetry::metrics::{MeteredStore, Metrics};
/// let metrics = Arc::new(Metrics::new());
/// let store = MeteredStore::new(store, metrics.clone());
/// # }
/// ```
#[derive(Debug)]
pub struct MeteredStore<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> MeteredStore<S> {
    /// `inner`, with its journal writes timed into `metrics`.
    pub fn new(inner: S, metrics: Arc<Metrics>) -> Self {
        MeteredStore { inner, metrics }
    }
}

#[async_trait]
impl<S: StateStore> StateStoreLayer for MeteredStore<S> {
    fn inner(&self) -> &dyn StateStore {
        &self.inner
    }

    async fn append(&self, id: &DeploymentId, entry: &JournalEntry) -> Result<()> {
        let started = std::time::Instant::now();
        let written = self.inner.append(id, entry).await;
        self.metrics.observe_journal_write(started.elapsed());
        written
    }
}

/// Serve `GET /metrics` on `listener` (HTTP/1.1, one request per connection) until the task is
/// dropped. For a real application, mount [`Metrics::encode`] in your own HTTP server instead.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    loop {
        let (mut stream, _) = listener.accept().await?;
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&head);
            let line = line.lines().next().unwrap_or("");
            let (status, content_type, body) = if line.starts_with("GET /metrics ") {
                (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    metrics.encode(),
                )
            } else {
                ("404 Not Found", "text/plain", "try /metrics\n".to_string())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}
