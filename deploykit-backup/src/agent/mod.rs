//! The backup agent: a long-running process that runs every environment's [`BackupJob`] —
//! scheduled backups (kind per rotation entry), retention and prune after each, a slice of the
//! data read back after each, a full read and a disaster-recovery drill on their own schedules.
//!
//! - **History**: every run is recorded in a small JSON file ([`AgentState`]): last success per
//!   duty and kind, last failure with its reason, next due times, misses. `deploykit backup
//!   status` reads it ([`AgentState::findings`]).
//! - **Missed runs**: at start, the last recorded run is compared with the schedule; runs that
//!   fell due meanwhile are recorded as missed and made up by one run at once (for backups, of
//!   the most thorough kind among them).
//! - **Failures** are retried with the job's [`deploykit_core::retry::RetryPolicy`]; a run
//!   that still fails is recorded with its reason.
//! - **Alerts**: failures, misses and overdue duties are gauges ([`AgentMonitor`]) that the
//!   shipped [`alert_rules`] watch in a `deploykit_alerting::Alerting` engine, which routes
//!   them to its sinks (webhooks, …) like any other alert.
//! - **Audit**: backups, prunes and drills are appended to the store's audit log
//!   ([`record_audit`]).
//! - **Metrics**: repositories report bytes and durations into
//!   `deploykit_telemetry::metrics::Metrics`; [`Agent::encode_metrics`] adds the agent's own.
//!
//! ```no_run
//! # async fn demo(repo: deploykit_backup::Repository, policy: deploykit_backup::BackupPolicy)
//! # -> deploykit_core::Result<()> {
//! use deploykit_backup::{Agent, BackupJob};
//! let mut job = BackupJob::new("production", policy);
//! job.paths.push("/srv/shop/uploads".into());
//! let agent = Agent::builder(".deploykit/backup-agent.json").job(job, repo).build()?;
//! // Runs until the sender is used or dropped (a binary would wait for a signal here).
//! let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! agent.run(async {
//!     stopped.await.ok();
//! }).await?;
//! # Ok(()) }
//! ```

mod alerts;
mod audit;
mod duties;
mod job;
mod metrics;
mod run;
mod state;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::task::JoinSet;

use crate::repo::Repository;
use deploykit_alerting::{AlertTarget, Alerting};
use deploykit_core::model::{EnvironmentName, ServiceId};
use deploykit_core::store::StateStore;
use deploykit_core::time::{Clock, SystemClock};
use deploykit_core::{Actor, Error, Result};
use deploykit_telemetry::metrics::Metrics;

pub use alerts::{AgentMonitor, FAILING, MISSED, OVERDUE, alert_rules};
pub use audit::{AUDIT_SERVICE, record_audit};
pub use job::{
    BackupJob, DEFAULT_DRILL, DEFAULT_FULL_VERIFY, DEFAULT_PASSWORD_ENV, DEFAULT_VERIFY_SUBSETS,
    DrillSchedule, Duty, Missed, RehearsalSchedule, VerifySchedule, default_retry,
};
pub use state::{
    AgentProcess, AgentState, DrillMeasure, DutyState, EnvironmentState, Findings, MissRecord,
    RunRecord, STATE_VERSION,
};

/// One finished run, as [`Agent::subscribe`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AgentEvent {
    /// The environment.
    pub environment: String,
    /// What ran.
    pub duty: Duty,
    /// The run.
    pub run: RunRecord,
    /// Whether it succeeded.
    pub ok: bool,
    /// The runs it made up for, when it ran because runs were missed.
    pub caught_up: Option<MissRecord>,
}

/// A job with its open repository.
#[derive(Debug)]
struct Task {
    job: BackupJob,
    repo: Repository,
    /// One run at a time per repository: a verify or drill never reads while a prune deletes.
    lock: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct Inner {
    tasks: Vec<Task>,
    state: Arc<Mutex<AgentState>>,
    state_file: PathBuf,
    audit: Option<(Arc<dyn StateStore>, Actor)>,
    alerting: Option<Arc<Alerting>>,
    monitor: AgentMonitor,
    metrics: Option<Arc<Metrics>>,
    clock: Arc<dyn Clock>,
    scratch: PathBuf,
    heartbeat: Duration,
    events: broadcast::Sender<AgentEvent>,
}

/// The backup agent (see the [module documentation](self)).
#[derive(Debug, Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

/// Builds an [`Agent`]: [`Agent::builder`].
#[derive(Debug)]
pub struct AgentBuilder {
    state_file: PathBuf,
    tasks: Vec<(BackupJob, Repository)>,
    audit: Option<(Arc<dyn StateStore>, Actor)>,
    alerting: Option<Arc<Alerting>>,
    metrics: Option<Arc<Metrics>>,
    clock: Option<Arc<dyn Clock>>,
    scratch: Option<PathBuf>,
    heartbeat: Duration,
}

impl AgentBuilder {
    /// Run `job` on `repository` (one job per environment).
    pub fn job(mut self, job: BackupJob, repository: Repository) -> Self {
        self.tasks.push((job, repository));
        self
    }

    /// Append backups, prunes and drills to `store`'s audit log, as done by `actor`.
    pub fn audit(mut self, store: Arc<dyn StateStore>, actor: Actor) -> Self {
        self.audit = Some((store, actor));
        self
    }

    /// Raise alerts in `alerting`: the agent watches a target per environment (service
    /// `backup`), evaluates the engine after every change of its state and every
    /// `alerting.interval()`. Give it [`alert_rules`] and routes to its sinks.
    pub fn alerting(mut self, alerting: Arc<Alerting>) -> Self {
        self.alerting = Some(alerting);
        self
    }

    /// Have the repositories report backups and restores into `metrics`.
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Read time from `clock` (default: the system clock); the repositories too.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Where drills restore to when a job names no scratch directory (default: `drill/<env>`
    /// beside the state file).
    pub fn scratch(mut self, dir: impl Into<PathBuf>) -> Self {
        self.scratch = Some(dir.into());
        self
    }

    /// How often the agent records that it is alive (default 10 s).
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// Check the jobs (valid, one per environment) and read the state file.
    pub fn build(self) -> Result<Agent> {
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let mut tasks: Vec<Task> = Vec::new();
        for (job, repo) in self.tasks {
            job.validate()?;
            EnvironmentName::new(job.environment.as_str())?;
            if tasks.iter().any(|t| t.job.environment == job.environment) {
                return Err(Error::invalid(
                    "backup.agent",
                    format!("two jobs for environment {}", job.environment),
                ));
            }
            let mut repo = repo.with_clock(clock.clone());
            if let Some(metrics) = &self.metrics {
                repo = repo.with_metrics(metrics.clone(), job.environment.clone());
            }
            tasks.push(Task {
                job,
                repo,
                lock: tokio::sync::Mutex::new(()),
            });
        }
        if self.heartbeat.is_zero() {
            return Err(Error::invalid(
                "backup.agent.heartbeat",
                "must be above zero",
            ));
        }
        let state = Arc::new(Mutex::new(AgentState::load(&self.state_file)?));
        let scratch = self.scratch.unwrap_or_else(|| {
            self.state_file
                .parent()
                .map_or_else(|| PathBuf::from("drill"), |d| d.join("drill"))
        });
        Ok(Agent {
            inner: Arc::new(Inner {
                tasks,
                monitor: AgentMonitor::new(state.clone(), clock.clone()),
                state,
                state_file: self.state_file,
                audit: self.audit,
                alerting: self.alerting,
                metrics: self.metrics,
                clock,
                scratch,
                heartbeat: self.heartbeat,
                events: broadcast::channel(256).0,
            }),
        })
    }
}

impl Agent {
    /// An agent recording its history in `state_file`.
    pub fn builder(state_file: impl Into<PathBuf>) -> AgentBuilder {
        AgentBuilder {
            state_file: state_file.into(),
            tasks: Vec::new(),
            audit: None,
            alerting: None,
            metrics: None,
            clock: None,
            scratch: None,
            heartbeat: Duration::from_secs(10),
        }
    }

    /// Run every job until `shutdown` completes: catch up missed runs, then run each duty when
    /// it is due. Fails at once if another agent is alive on the same state file; otherwise
    /// only if the state cannot be written at start. Runs under way when `shutdown` completes
    /// are dropped (a repository is safe against that).
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let inner = self.inner.clone();
        inner.start()?;
        let alert_loop = match &inner.alerting {
            Some(alerting) => {
                let service = ServiceId::new(AUDIT_SERVICE)?;
                for task in &inner.tasks {
                    let environment = EnvironmentName::new(task.job.environment.as_str())?;
                    alerting.watch(AlertTarget::new(service.clone(), environment));
                }
                Some(alerting.clone().spawn(Arc::new(inner.monitor.clone())))
            }
            None => None,
        };
        let mut duties = JoinSet::new();
        for i in 0..inner.tasks.len() {
            for duty in Duty::ALL {
                duties.spawn(inner.clone().duty_loop(i, duty));
            }
        }
        let heartbeat = tokio::spawn(inner.clone().heartbeat_loop());
        tokio::pin!(shutdown);
        let result = loop {
            tokio::select! {
                () = &mut shutdown => break Ok(()),
                done = duties.join_next() => match done {
                    // A duty with no schedule (never due) ends at once.
                    Some(Ok(Ok(()))) => {}
                    Some(Ok(Err(e))) => break Err(e),
                    Some(Err(e)) => break Err(Error::backend("backup agent", e.to_string())),
                    None => {
                        (&mut shutdown).await;
                        break Ok(());
                    }
                },
            }
        };
        duties.abort_all();
        heartbeat.abort();
        if let Some(task) = alert_loop {
            task.abort();
        }
        inner.stop();
        result
    }

    /// Every finished run, as it finishes.
    pub fn subscribe(&self) -> broadcast::Receiver<AgentEvent> {
        self.inner.events.subscribe()
    }

    /// The agent's history as it is now.
    pub fn state(&self) -> AgentState {
        self.inner.state.lock().expect("agent state lock").clone()
    }

    /// The gauges the alert rules query.
    pub fn monitor(&self) -> AgentMonitor {
        self.inner.monitor.clone()
    }

    /// The metrics registry given to [`AgentBuilder::metrics`] and the agent's own metrics
    /// (see the table in `deploykit_backup::agent`), as one OpenMetrics text document.
    pub fn encode_metrics(&self) -> String {
        let mut text = self
            .inner
            .metrics
            .as_ref()
            .map(|m| m.encode())
            .unwrap_or_default();
        if let Some(stripped) = text.strip_suffix("# EOF\n") {
            text.truncate(stripped.len());
        }
        let now = self.inner.clock.now();
        text.push_str(&metrics::encode(
            &self.inner.state.lock().expect("agent state lock"),
            now,
        ));
        text.push_str("# EOF\n");
        text
    }

    /// Serve `GET /metrics` ([`Agent::encode_metrics`]) on `listener` until the task is
    /// dropped (HTTP/1.1, one request per connection).
    pub async fn serve_metrics(&self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        metrics::serve(listener, self.clone()).await
    }
}
