//! A simulated cluster: a real, in-memory implementation of [`Environment`] and [`Monitor`]
//! with scripted instance behaviour and injected faults, on tokio's clock.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use deploykit_core::environment::proportional_weights;
use deploykit_core::secrets::{self, ExposeSecret, ResolvedSecrets, SecretProvider, SecretString};
use deploykit_core::{
    Clock, DesiredState, Digest, Environment, Error, FailureKind, InstanceFailure,
    InstanceObservation, MetricQuery, Monitor, Observed, Probe, Result, Revision, RevisionId,
    RevisionObservation, Sample, ServiceId, Timestamp, Traffic,
};
use deploykit_logs::{LogSelector, LogSource, LogStream};
use tokio::time::Instant;

use crate::clock::SimClock;
use crate::logs::SimLogs;

/// How the instances of an artifact behave once started.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Behavior {
    /// Ready after the cluster's start latency.
    Healthy,
    /// Ready after this long instead.
    SlowStart(Duration),
    /// Never ready; reported as failing readiness (with `reason`) once the readiness probe has
    /// failed `failure_threshold` times.
    FailReadiness {
        /// The probe's complaint, e.g. `GET /health returned 503`.
        reason: String,
    },
    /// Never ready; reported as failing startup once the startup probe has failed
    /// `failure_threshold` times.
    FailStartup {
        /// The probe's complaint.
        reason: String,
    },
    /// Exits a second after every start and is restarted with Kubernetes' back-off (10 s,
    /// 20 s, 40 s, …); reported as crash-looping after 3 restarts.
    CrashLoop {
        /// Why it exits, e.g. `exit code 1: missing DATABASE_URL`.
        reason: String,
    },
}

/// Which call a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// [`Environment::apply`].
    Apply,
    /// [`Environment::observe`].
    Observe,
    /// [`Environment::teardown`].
    Teardown,
    /// Either [`Monitor`] method.
    Monitor,
}

/// An injected API error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The call fails with a retryable error and has no effect.
    Transient,
    /// The call fails with a permanent error and has no effect.
    Permanent,
    /// An `apply` takes effect but reports a retryable error (a lost response).
    TransientAfterEffect,
}

/// Timing of the simulated cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimConfig {
    /// How long a healthy instance takes to become ready (default 2 s).
    pub start_latency: Duration,
    /// Record a [`Snapshot`] after every change for [`SimCluster::history`] (default true;
    /// benchmarks with many services turn it off to measure the orchestrator, not the log).
    pub record_history: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            start_latency: Duration::from_secs(2),
            record_history: true,
        }
    }
}

/// The state of one service right after an `apply`: what the availability and traffic
/// invariants are checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// When.
    pub at: Timestamp,
    /// Per revision (in creation order): id, label, instances, ready instances.
    pub revisions: Vec<(RevisionId, String, u32, u32)>,
    /// Share of ordinary traffic each revision receives, by label.
    pub traffic: BTreeMap<String, u32>,
    /// The routing as applied.
    pub routing: Traffic,
}

impl Snapshot {
    /// Instances over all revisions.
    pub fn total(&self) -> u32 {
        self.revisions.iter().map(|r| r.2).sum()
    }

    /// Ready instances over all revisions.
    pub fn ready(&self) -> u32 {
        self.revisions.iter().map(|r| r.3).sum()
    }
}

#[derive(Debug)]
struct SimInstance {
    name: Arc<str>,
    started: Instant,
}

/// The secret variables a revision's instances were started with, or why they could not be.
type Resolved = std::result::Result<Arc<ResolvedSecrets>, String>;

#[derive(Debug)]
struct SimRevision {
    revision: Arc<Revision>,
    desired: u32,
    instances: Vec<SimInstance>,
    secrets: Resolved,
}

#[derive(Debug, Default)]
struct SimService {
    revisions: Vec<SimRevision>,
    traffic: Traffic,
}

#[derive(Debug, Default)]
struct State {
    config: SimConfig,
    behaviors: HashMap<Digest, Behavior>,
    services: BTreeMap<ServiceId, SimService>,
    faults: BTreeMap<(Op, u64), Fault>,
    calls: HashMap<Op, u64>,
    metrics: HashMap<(ServiceId, Option<RevisionId>, String), Vec<f64>>,
    history: BTreeMap<ServiceId, Vec<Snapshot>>,
    starts: BTreeMap<(ServiceId, RevisionId), u32>,
    applies: u64,
    next_instance: u64,
    secret_provider: Option<Arc<dyn SecretProvider>>,
    unreachable: bool,
}

/// A simulated cluster. Clones share state, so a test can keep one handle and give another to
/// an orchestrator.
///
/// Instances start at once and become ready after the start latency unless the artifact's
/// [`Behavior`] says otherwise; faults make chosen calls fail. Everything runs on tokio's clock.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> deploykit_core::Result<()> {
/// use deploykit_core::*;
/// use deploykit_testing::SimCluster;
/// let sim = SimCluster::new();
/// let web = ServiceSpec::builder().name("web").build()?;
/// let env = EnvironmentSpec::builder().name("dev").kind(EnvironmentKind::Development).build()?;
/// let v1 = Revision::new(&web, &env, Digest::of_bytes(b"v1"), "v1")?;
/// sim.apply(&web.name, &DesiredState::new(vec![RevisionTarget::new(v1, 2)], Traffic::ByReadyInstances)).await?;
/// tokio::time::sleep(std::time::Duration::from_secs(5)).await;
/// assert_eq!(sim.observe(&web.name).await?.total_ready(), 2);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct SimCluster {
    state: Arc<Mutex<State>>,
    clock: SimClock,
    logs: SimLogs,
}

impl Default for SimCluster {
    fn default() -> Self {
        Self::new()
    }
}

/// How long after start an instance failing `probe` is reported failed; without a probe,
/// Kubernetes' defaults (period 10 s, failure threshold 3).
fn failure_time(probe: Option<&Probe>) -> Duration {
    probe.map_or(Duration::from_secs(30), Probe::time_to_failure)
}

impl SimCluster {
    /// A cluster with default timing and a [`SimClock`] starting now.
    pub fn new() -> Self {
        Self::with_config(SimConfig::default())
    }

    /// A cluster with the given timing.
    pub fn with_config(config: SimConfig) -> Self {
        let clock = SimClock::new();
        SimCluster {
            state: Arc::new(Mutex::new(State {
                config,
                ..State::default()
            })),
            clock,
            logs: SimLogs::with_clock(clock),
        }
    }

    /// What the cluster's instances log: script lines with [`SimLogs::write`]; the cluster is
    /// a [`LogSource`] of them.
    pub fn instance_logs(&self) -> &SimLogs {
        &self.logs
    }

    /// The clock this cluster reports time with; give it to the orchestrator too.
    pub fn clock(&self) -> SimClock {
        self.clock
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolve revisions' secret references through `provider` when their instances first
    /// start, as a kubelet resolves `secretKeyRef`, by [`secrets::resolve`]'s rules. Without a
    /// provider, for a key the provider lacks, or for a secret whose version is no longer the
    /// one the revision pinned, the instances fail with [`FailureKind::Configuration`] naming
    /// the variable and the key.
    pub fn set_secret_provider(&self, provider: Arc<dyn SecretProvider>) {
        self.lock().secret_provider = Some(provider);
    }

    /// The secret variables the instances of `revision` were started with (what the
    /// workload would see in its environment), or why they could not be resolved.
    pub fn resolved_secrets(
        &self,
        service: &ServiceId,
        revision: &RevisionId,
    ) -> Option<std::result::Result<BTreeMap<String, SecretString>, String>> {
        let state = self.lock();
        let rev = state
            .services
            .get(service)?
            .revisions
            .iter()
            .find(|r| &r.revision.id == revision)?;
        Some(
            rev.secrets
                .as_ref()
                .map(|s| (**s).clone())
                .map_err(Clone::clone),
        )
    }

    /// Resolve the secrets of the revisions in `desired` that this cluster is not running yet.
    async fn resolve_secrets(
        &self,
        service: &ServiceId,
        desired: &DesiredState,
    ) -> HashMap<RevisionId, Resolved> {
        let (provider, new): (_, Vec<Arc<Revision>>) = {
            let state = self.lock();
            let running = state.services.get(service);
            let new = desired
                .revisions
                .iter()
                .filter(|t| !t.revision.config.secrets.is_empty())
                .filter(|t| {
                    !running
                        .is_some_and(|s| s.revisions.iter().any(|r| r.revision.id == t.revision.id))
                })
                .map(|t| t.revision.clone())
                .collect();
            (state.secret_provider.clone(), new)
        };
        let mut resolved = HashMap::new();
        for revision in new {
            let outcome = secrets::resolve(
                provider.as_deref(),
                &revision.config.secrets,
                "use SimCluster::set_secret_provider",
            )
            .await
            .map(Arc::new)
            .map_err(|e| e.chain());
            if let Ok(values) = &outcome {
                self.logs.redact(
                    values
                        .values()
                        .map(|value| value.expose_secret().to_string()),
                );
            }
            resolved.insert(revision.id.clone(), outcome);
        }
        resolved
    }

    /// Make every instance of `artifact` behave as `behavior` (existing instances too).
    pub fn set_behavior(&self, artifact: &Digest, behavior: Behavior) {
        self.lock().behaviors.insert(artifact.clone(), behavior);
    }

    /// Make call number `index` (counted from 0 since the cluster was created) of `op` fail
    /// with `fault`.
    pub fn fail_call(&self, op: Op, index: u64, fault: Fault) {
        self.lock().faults.insert((op, index), fault);
    }

    /// Make the next `count` calls of `op` fail with `fault`.
    pub fn fail_next(&self, op: Op, count: u64, fault: Fault) {
        let mut state = self.lock();
        let next = state.calls.get(&op).copied().unwrap_or(0);
        for i in next..next + count {
            state.faults.insert((op, i), fault);
        }
    }

    /// Drop every fault not yet triggered.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// How many calls of `op` have been made.
    pub fn calls(&self, op: Op) -> u64 {
        self.lock().calls.get(&op).copied().unwrap_or(0)
    }

    /// Serve `values` (oldest first, one per second up to now) for `expr` on `service`, for one
    /// revision or (with `None`) the whole service.
    pub fn set_metric(
        &self,
        service: &ServiceId,
        revision: Option<&RevisionId>,
        expr: &str,
        values: Vec<f64>,
    ) {
        self.lock().metrics.insert(
            (service.clone(), revision.cloned(), expr.to_string()),
            values,
        );
    }

    /// The state of `service` right after every apply that changed it, oldest first.
    pub fn history(&self, service: &ServiceId) -> Vec<Snapshot> {
        self.lock()
            .history
            .get(service)
            .cloned()
            .unwrap_or_default()
    }

    /// How many instances of `revision` have ever been started.
    pub fn starts(&self, service: &ServiceId, revision: &RevisionId) -> u32 {
        self.lock()
            .starts
            .get(&(service.clone(), revision.clone()))
            .copied()
            .unwrap_or(0)
    }

    /// How many applies changed something.
    pub fn effective_applies(&self) -> u64 {
        self.lock().applies
    }

    /// Kill one ready instance of `revision` (it is replaced by a fresh, not yet ready one, as
    /// a ReplicaSet would).
    pub fn kill_instance(&self, service: &ServiceId, revision: &RevisionId) -> bool {
        let mut state = self.lock();
        let now = Instant::now();
        let latency = state.config.start_latency;
        let next = state.next_instance;
        let Some(rev) = state
            .services
            .get_mut(service)
            .and_then(|s| s.revisions.iter_mut().find(|r| &r.revision.id == revision))
        else {
            return false;
        };
        let Some(inst) = rev
            .instances
            .iter_mut()
            .find(|i| now.duration_since(i.started) >= latency)
        else {
            return false;
        };
        inst.name = format!("{}-{}-{next}", service, rev.revision.label).into();
        inst.started = now;
        state.next_instance += 1;
        true
    }

    /// Make the cluster's API unreachable (`true`) or reachable again (`false`). While it is
    /// unreachable every [`Environment`] and [`Monitor`] call fails with a retryable error
    /// (`connection refused`), has no effect and is not counted in [`SimCluster::calls`];
    /// instances keep running and serving as they were, as a workload does when its control
    /// plane is down.
    pub fn set_unreachable(&self, unreachable: bool) {
        self.lock().unreachable = unreachable;
    }

    /// Whether the cluster's API is unreachable (see [`SimCluster::set_unreachable`]).
    pub fn is_unreachable(&self) -> bool {
        self.lock().unreachable
    }

    /// What runs for `service` now, as [`Environment::observe`] would report it, but without
    /// making a call: no fault, no outage and no call count apply. For test oracles that must
    /// see the truth while the API is down.
    pub fn peek(&self, service: &ServiceId) -> Observed {
        self.lock().observe(service, Instant::now())
    }

    /// The error of a call made while the API is unreachable, if it is.
    fn outage(state: &State, op: Op, service: &ServiceId) -> Result<()> {
        if state.unreachable {
            let what = format!("{op:?} {service}").to_lowercase();
            return Err(Error::transient(
                what,
                "simulated outage: connection refused (the cluster API is unreachable)",
            ));
        }
        Ok(())
    }

    fn fault(state: &mut State, op: Op) -> Option<Fault> {
        let counter = state.calls.entry(op).or_insert(0);
        let index = *counter;
        *counter += 1;
        state.faults.remove(&(op, index))
    }

    fn fault_error(op: Op, service: &ServiceId, fault: Fault) -> Error {
        let what = format!("{op:?} {service}").to_lowercase();
        match fault {
            Fault::Permanent => Error::backend(what, "injected permanent fault: 403 forbidden"),
            Fault::Transient | Fault::TransientAfterEffect => {
                Error::transient(what, "injected transient fault: 503 service unavailable")
            }
        }
    }
}

/// How one instance looks at `now`.
fn instance_state(
    latency: Duration,
    behavior: &Behavior,
    revision: &Revision,
    elapsed: Duration,
) -> (bool, u32, Option<InstanceFailure>) {
    let health = &revision.config.health;
    match behavior {
        Behavior::Healthy => (elapsed >= latency, 0, None),
        Behavior::SlowStart(d) => (elapsed >= *d, 0, None),
        Behavior::FailReadiness { reason } => {
            let failed = elapsed >= latency + failure_time(health.readiness.as_ref());
            let failure = failed.then(|| InstanceFailure::new(FailureKind::Readiness, reason));
            (false, 0, failure)
        }
        Behavior::FailStartup { reason } => {
            let failed = elapsed >= latency + failure_time(health.startup.as_ref());
            let failure = failed.then(|| InstanceFailure::new(FailureKind::Startup, reason));
            (false, 0, failure)
        }
        Behavior::CrashLoop { reason } => {
            // Runs 1 s, then waits 10 s, 20 s, 40 s, ... (capped at 5 min) before each restart.
            let mut t = Duration::from_secs(1);
            let mut restarts = 0;
            let mut backoff = Duration::from_secs(10);
            while elapsed >= t + backoff && restarts < 1000 {
                restarts += 1;
                t += backoff + Duration::from_secs(1);
                backoff = (backoff * 2).min(Duration::from_secs(300));
            }
            let failure = (restarts >= 3).then(|| {
                InstanceFailure::new(
                    FailureKind::CrashLoop,
                    format!("CrashLoopBackOff after {restarts} restarts: {reason}"),
                )
            });
            (false, restarts, failure)
        }
    }
}

impl State {
    fn behavior(&self, artifact: &Digest) -> &Behavior {
        self.behaviors.get(artifact).unwrap_or(&Behavior::Healthy)
    }

    fn observe(&self, service: &ServiceId, now: Instant) -> Observed {
        let Some(svc) = self.services.get(service) else {
            return Observed::default();
        };
        let mut revisions = Vec::new();
        for rev in &svc.revisions {
            let behavior = self.behavior(&rev.revision.artifact);
            let instances = rev
                .instances
                .iter()
                .map(|i| {
                    let (ready, restarts, failure) = match &rev.secrets {
                        Err(reason) => (
                            false,
                            0,
                            Some(InstanceFailure::new(FailureKind::Configuration, reason)),
                        ),
                        Ok(_) => instance_state(
                            self.config.start_latency,
                            behavior,
                            &rev.revision,
                            now.duration_since(i.started),
                        ),
                    };
                    InstanceObservation::new(i.name.clone(), ready, restarts, failure)
                })
                .collect();
            revisions.push(RevisionObservation::new(
                rev.revision.clone(),
                rev.desired,
                instances,
            ));
        }
        let traffic = match &svc.traffic {
            Traffic::Routed(routes) => routes
                .weights
                .iter()
                .filter(|(id, w)| {
                    w.percent() > 0
                        && revisions
                            .iter()
                            .any(|r: &RevisionObservation| &r.revision.id == *id && r.ready() > 0)
                })
                .map(|(id, w)| (id.clone(), *w))
                .collect(),
            _ => {
                let counts: Vec<(RevisionId, u32)> = revisions
                    .iter()
                    .map(|r| (r.revision.id.clone(), r.ready()))
                    .collect();
                proportional_weights(&counts)
            }
        };
        Observed::new(revisions, traffic, svc.traffic.clone())
    }

    fn snapshot(&mut self, service: &ServiceId, now: Instant, at: Timestamp) {
        let observed = self.observe(service, now);
        let snapshot = Snapshot {
            at,
            revisions: observed
                .revisions
                .iter()
                .map(|r| {
                    (
                        r.revision.id.clone(),
                        r.revision.label.clone(),
                        r.instances.len() as u32,
                        r.ready(),
                    )
                })
                .collect(),
            traffic: observed
                .revisions
                .iter()
                .filter(|r| observed.weight_of(&r.revision.id) > 0)
                .map(|r| (r.revision.label.clone(), observed.weight_of(&r.revision.id)))
                .collect(),
            routing: observed.routing.clone(),
        };
        self.history
            .entry(service.clone())
            .or_default()
            .push(snapshot);
    }

    fn apply(
        &mut self,
        service: &ServiceId,
        desired: &DesiredState,
        mut secrets: HashMap<RevisionId, Resolved>,
        now: Instant,
    ) -> bool {
        let latency = self.config.start_latency;
        let behaviors = self.behaviors.clone();
        let mut next_instance = self.next_instance;
        let mut started: Vec<RevisionId> = Vec::new();
        let svc = self.services.entry(service.clone()).or_default();
        let before: Vec<(RevisionId, u32, usize)> = svc
            .revisions
            .iter()
            .map(|r| (r.revision.id.clone(), r.desired, r.instances.len()))
            .collect();
        // Removals first: revisions no longer wanted, then surplus instances.
        svc.revisions.retain(|r| {
            desired
                .revisions
                .iter()
                .any(|t| t.revision.id == r.revision.id)
        });
        for target in &desired.revisions {
            let position = svc
                .revisions
                .iter()
                .position(|r| r.revision.id == target.revision.id);
            let index = position.unwrap_or_else(|| {
                let resolved = secrets.remove(&target.revision.id).unwrap_or_else(|| {
                    if target.revision.config.secrets.is_empty() {
                        Ok(Arc::default())
                    } else {
                        Err("secrets changed while being resolved; apply again".to_string())
                    }
                });
                svc.revisions.push(SimRevision {
                    revision: target.revision.clone(),
                    desired: 0,
                    instances: Vec::new(),
                    secrets: resolved,
                });
                svc.revisions.len() - 1
            });
            let rev = &mut svc.revisions[index];
            rev.desired = target.replicas;
            let behavior = behaviors
                .get(&rev.revision.artifact)
                .cloned()
                .unwrap_or(Behavior::Healthy);
            while rev.instances.len() as u32 > target.replicas {
                // Prefer removing instances that are not ready, newest first.
                let ready = |i: &SimInstance| {
                    let elapsed = now.duration_since(i.started);
                    instance_state(latency, &behavior, &rev.revision, elapsed).0
                };
                let victim = rev
                    .instances
                    .iter()
                    .rposition(|i| !ready(i))
                    .unwrap_or(rev.instances.len() - 1);
                rev.instances.remove(victim);
            }
            while (rev.instances.len() as u32) < target.replicas {
                rev.instances.push(SimInstance {
                    name: format!("{}-{}-{next_instance}", service, rev.revision.label).into(),
                    started: now,
                });
                next_instance += 1;
                started.push(rev.revision.id.clone());
            }
        }
        let routing_changed = svc.traffic != desired.traffic;
        svc.traffic = desired.traffic.clone();
        let after: Vec<(RevisionId, u32, usize)> = svc
            .revisions
            .iter()
            .map(|r| (r.revision.id.clone(), r.desired, r.instances.len()))
            .collect();
        self.next_instance = next_instance;
        for id in started {
            *self.starts.entry((service.clone(), id)).or_insert(0) += 1;
        }
        before != after || routing_changed
    }
}

#[async_trait]
impl Environment for SimCluster {
    async fn apply(&self, service: &ServiceId, desired: &DesiredState) -> Result<()> {
        let secrets = self.resolve_secrets(service, desired).await;
        let now = Instant::now();
        let at = self.clock.now();
        let mut state = self.lock();
        Self::outage(&state, Op::Apply, service)?;
        let fault = Self::fault(&mut state, Op::Apply);
        if let Some(f @ (Fault::Transient | Fault::Permanent)) = fault {
            return Err(Self::fault_error(Op::Apply, service, f));
        }
        if state.apply(service, desired, secrets, now) {
            state.applies += 1;
            if state.config.record_history {
                state.snapshot(service, now, at);
            }
        }
        match fault {
            Some(f) => Err(Self::fault_error(Op::Apply, service, f)),
            None => Ok(()),
        }
    }

    async fn observe(&self, service: &ServiceId) -> Result<Observed> {
        let mut state = self.lock();
        Self::outage(&state, Op::Observe, service)?;
        if let Some(f) = Self::fault(&mut state, Op::Observe) {
            return Err(Self::fault_error(Op::Observe, service, f));
        }
        Ok(state.observe(service, Instant::now()))
    }

    async fn teardown(&self, service: &ServiceId) -> Result<()> {
        let mut state = self.lock();
        Self::outage(&state, Op::Teardown, service)?;
        if let Some(f) = Self::fault(&mut state, Op::Teardown) {
            return Err(Self::fault_error(Op::Teardown, service, f));
        }
        state.services.remove(service);
        Ok(())
    }
}

#[async_trait]
impl Monitor for SimCluster {
    async fn instance_health(
        &self,
        service: &ServiceId,
        revision: &RevisionId,
    ) -> Result<Vec<InstanceObservation>> {
        let mut state = self.lock();
        Self::outage(&state, Op::Monitor, service)?;
        if let Some(f) = Self::fault(&mut state, Op::Monitor) {
            return Err(Self::fault_error(Op::Monitor, service, f));
        }
        let observed = state.observe(service, Instant::now());
        observed
            .revision(revision)
            .map(|r| r.instances.clone())
            .ok_or_else(|| Error::not_found(format!("revision {revision} of {service}")))
    }

    async fn query(&self, query: &MetricQuery) -> Result<Vec<Sample>> {
        let now = self.clock.now();
        let mut state = self.lock();
        Self::outage(&state, Op::Monitor, &query.service)?;
        if let Some(f) = Self::fault(&mut state, Op::Monitor) {
            return Err(Self::fault_error(Op::Monitor, &query.service, f));
        }
        // Series names are scripted by `set_metric`; a blank one or an unrendered `{{…}}`
        // placeholder is a broken query, not a series that happens to have no data.
        let expr = query.expr.trim();
        if expr.is_empty() || expr.contains("{{") || expr.contains("}}") {
            return Err(Error::invalid(
                "query",
                format!(
                    "{:?} is not a series name (blank, or an unrendered {{{{…}}}} placeholder)",
                    query.expr
                ),
            ));
        }
        let key = (
            query.service.clone(),
            query.revision.clone(),
            query.expr.clone(),
        );
        let values = state.metrics.get(&key).cloned().unwrap_or_default();
        let n = values.len() as u64;
        Ok(values
            .into_iter()
            .enumerate()
            .map(|(i, value)| Sample {
                at: Timestamp::from_millis(
                    now.as_millis().saturating_sub((n - 1 - i as u64) * 1000),
                ),
                value,
            })
            .collect())
    }
}

#[async_trait]
impl LogSource for SimCluster {
    async fn logs(&self, selector: &LogSelector) -> Result<LogStream> {
        self.logs.logs(selector).await
    }
}
