//! The orchestrator: drives every deployment through observe → plan → journal → act, resumes
//! in-flight deployments after a restart, and serialises deployments of one service in one
//! environment with an expiring lease.

mod access_gate;
mod audit_trail;
mod driver;
mod drivers;
mod event_bus;

mod preview;
mod release;
mod secret_pins;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ed25519_dalek::{SigningKey, VerifyingKey};
use tokio::sync::broadcast;
use tracing::Instrument;
use typed_builder::TypedBuilder;

use crate::event::Event;
pub use preview::{Preview, PreviewRequest, ScopedEnvironment, preview_name};
pub use release::{Release, ReleaseRequest, ReleaseService};

use access_gate::AccessGate;
use audit_trail::{AuditTrail, audit_action};
use drivers::Drivers;
use event_bus::EventBus;
use secret_pins::SecretPins;

use crate::access::{AccessAction, AccessPolicy};
use crate::audit::{AuditAction, AuditRecord};
use crate::audit::{AuditEntry, SignedCheckpoint, Verified};
use crate::environment::{Environment, TrafficSplit};
use crate::error::{Error, Result};
use crate::journal::{
    Actor, DeploymentKind, DeploymentSpec, DeploymentStatus, JournalEntry, JournalEvent, Phase,
    ReleaseMembership,
};
use crate::model::{
    DeploymentId, Digest, EnvironmentKind, EnvironmentName, EnvironmentSpec, FailurePolicy,
    Revision, RevisionId, ServiceId, ServiceSpec,
};
use crate::monitor::Monitor;
use crate::notify::Notifier;
use crate::retry;
use crate::secrets::SecretProvider;
use crate::store::StateStore;
use crate::strategy::{BlueGreenSpec, StrategySpec};
use crate::time::{Clock, SystemClock, Timestamp};

/// Timing knobs of an orchestrator. The defaults suit real environments.
#[derive(Clone, Debug, PartialEq, Eq, TypedBuilder)]
#[non_exhaustive]
pub struct OrchestratorConfig {
    /// How often a waiting deployment observes its environment again (default 1 s).
    #[builder(default = Duration::from_secs(1))]
    pub poll_interval: Duration,
    /// How long a service lease lasts without renewal (default 30 s). A crashed orchestrator's
    /// deployments are picked up by another one after at most this long.
    #[builder(default = Duration::from_secs(30))]
    pub lease_ttl: Duration,
    /// First retry delay after a transient error (default 100 ms); it doubles per failure and
    /// resets after a success.
    #[builder(default = Duration::from_millis(100))]
    pub retry_initial: Duration,
    /// Longest retry delay (default 10 s); also the wait, at once, after an error whose
    /// retries a backend has already used up ([`Error::Persistent`]).
    #[builder(default = Duration::from_secs(10))]
    pub retry_max: Duration,
    /// How often expired preview environments are looked for (default 60 s).
    #[builder(default = Duration::from_secs(60))]
    pub preview_reap_interval: Duration,
    /// How often the store is scanned for active deployments that no live orchestrator drives:
    /// those requested through another orchestrator, or left by one that died. This
    /// orchestrator adopts them once their lease has lapsed. By default every 10 s or half the
    /// lease TTL, whichever is shorter, so an orphaned deployment is taken over within one and
    /// a half lease TTLs at most.
    #[builder(default, setter(strip_option))]
    pub adopt_interval: Option<Duration>,
}

impl OrchestratorConfig {
    /// The adoption scan's period: `adopt_interval` if set, else 10 s or half the lease TTL.
    fn adopt_every(&self) -> Duration {
        self.adopt_interval
            .unwrap_or_else(|| Duration::from_secs(10).min(self.lease_ttl / 2))
    }
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        OrchestratorConfig::builder().build()
    }
}

/// A request to deploy one artifact of a service to one environment.
///
/// ```
/// use deploykit_core::{Actor, DeployRequest, Digest, ServiceSpec};
/// let request = DeployRequest::builder()
///     .service(ServiceSpec::builder().name("web").build()?)
///     .environment("production")
///     .artifact(Digest::of_bytes(b"web v2"))
///     .label("v2")
///     .requested_by(Actor::new("alice"))
///     .build();
/// # Ok::<(), deploykit_core::Error>(())
/// ```
#[derive(Clone, Debug, TypedBuilder)]
#[non_exhaustive]
pub struct DeployRequest {
    /// The service.
    pub service: ServiceSpec,
    /// The environment's name.
    #[builder(setter(into))]
    pub environment: String,
    /// The artifact's digest.
    pub artifact: Digest,
    /// A label for humans (`v2`).
    #[builder(setter(into))]
    pub label: String,
    /// Who asks.
    pub requested_by: Actor,
    /// A strategy for this deployment instead of the environment's.
    #[builder(default, setter(strip_option))]
    pub strategy: Option<StrategySpec>,
    /// A failure policy for this deployment instead of the environment's.
    #[builder(default, setter(strip_option))]
    pub failure_policy: Option<FailurePolicy>,
}

#[derive(Debug)]
pub(crate) struct Target {
    spec: EnvironmentSpec,
    env: Arc<dyn Environment>,
    monitor: Option<Arc<dyn Monitor>>,
}

impl Target {
    /// Whether `strategy` can run here: valid, with a monitor if it analyses, and with a
    /// backend that splits traffic by weight if it needs a split.
    fn check_strategy(&self, strategy: &StrategySpec) -> Result<()> {
        strategy.validate("strategy")?;
        if let (Some(step), TrafficSplit::WholeSwitch { reason }) =
            (strategy.weighted_step(), self.env.traffic_split())
        {
            return Err(Error::invalid(
                "strategy",
                format!(
                    "the {} strategy splits traffic by weight ({step}), but environment {} \
                     cannot: {reason}",
                    strategy.name(),
                    self.spec.name
                ),
            ));
        }
        if strategy.needs_monitor() && self.monitor.is_none() {
            return Err(Error::invalid(
                "strategy",
                format!(
                    "the {} strategy runs analysis, but environment {} has no monitor \
                     (add it with `environment_with_monitor`)",
                    strategy.name(),
                    self.spec.name
                ),
            ));
        }
        Ok(())
    }
}

/// What the orchestrator's handle, its deployment drivers and its background tasks share.
/// Access checks, the audit trail, secret pinning, the driver registry and the event bus are
/// each their own small type.
#[derive(Debug)]
pub(crate) struct Shared {
    store: Arc<dyn StateStore>,
    /// Configured environments, plus preview environments created on demand.
    targets: RwLock<BTreeMap<EnvironmentName, Arc<Target>>>,
    previews: Option<preview::PreviewTemplate>,
    /// Whether an actor may do an operator action.
    gate: AccessGate,
    /// Where operator actions, carried out or refused, are recorded.
    audit: AuditTrail,
    /// Where secret references are pinned to versions when a revision is made.
    pins: SecretPins,
    /// What may be deployed, if anything is checked.
    verifier: Option<Arc<dyn crate::build::ArtifactVerifier>>,
    /// Deployment drivers, at most one per deployment, with their wakers and leases.
    drivers: Drivers,
    /// Where every journal entry is announced, to subscribers and notifiers.
    bus: EventBus,
    clock: Arc<dyn Clock>,
    owner: String,
    config: OrchestratorConfig,
    counter: AtomicU64,
}

/// Builds an [`Orchestrator`].
#[derive(Debug)]
pub struct OrchestratorBuilder {
    store: Arc<dyn StateStore>,
    targets: BTreeMap<EnvironmentName, Arc<Target>>,
    previews: Option<preview::PreviewTemplate>,
    access: Option<AccessPolicy>,
    four_eyes: Option<bool>,
    secrets: Option<Arc<dyn SecretProvider>>,
    verifier: Option<Arc<dyn crate::build::ArtifactVerifier>>,
    notifiers: Vec<Arc<dyn Notifier>>,
    clock: Arc<dyn Clock>,
    owner: Option<String>,
    config: OrchestratorConfig,
}

impl OrchestratorBuilder {
    /// Add an environment: its spec and the backend that runs it.
    pub fn environment(mut self, spec: EnvironmentSpec, env: Arc<dyn Environment>) -> Self {
        let target = Target {
            spec,
            env,
            monitor: None,
        };
        self.targets
            .insert(target.spec.name.clone(), Arc::new(target));
        self
    }

    /// Add an environment with the monitor that analysis steps query.
    pub fn environment_with_monitor(
        mut self,
        spec: EnvironmentSpec,
        env: Arc<dyn Environment>,
        monitor: Arc<dyn Monitor>,
    ) -> Self {
        let target = Target {
            spec,
            env,
            monitor: Some(monitor),
        };
        self.targets
            .insert(target.spec.name.clone(), Arc::new(target));
        self
    }

    /// Enable preview environments: each branch or pull request gets its own environment,
    /// `preview-<branch>`, shaped like `template` (its name is ignored) and run on `env`, where
    /// its services are kept apart by name (`<service>-<preview>`). Expired previews are torn
    /// down every `OrchestratorConfig::preview_reap_interval`.
    pub fn previews(mut self, template: EnvironmentSpec, env: Arc<dyn Environment>) -> Self {
        self.previews = Some(preview::PreviewTemplate::new(template, env));
        self
    }

    /// Check every operator action (deploy, rollback, abort, pause, resume, approve, reject,
    /// previews and their teardown) against `policy`; refusals are errors naming the missing
    /// permission, and are audited. Without a policy every action is allowed. The policy is
    /// validated when the orchestrator opens ([`AccessPolicy::validate`]).
    pub fn access_policy(mut self, policy: AccessPolicy) -> Self {
        self.access = Some(policy);
        self
    }

    /// Whether an approval in a production environment by the person who requested the
    /// deployment is refused (four eyes). On by default, with or without an access policy;
    /// this setting wins over the policy's `four_eyes_in_production`. Switch it off only where
    /// one person may deploy and approve alone (a test harness, a one-person team).
    pub fn four_eyes_in_production(mut self, on: bool) -> Self {
        self.four_eyes = Some(on);
        self
    }

    /// Pin the secret references of every new revision to `provider`'s current versions
    /// ([`Revision::pin_secrets`]): a changed secret value makes a new revision, and a
    /// reference to a secret the provider lacks refuses the deployment before anything
    /// starts. Values are never read into the journal; the backends resolve them.
    pub fn secrets(mut self, provider: Arc<dyn SecretProvider>) -> Self {
        self.secrets = Some(provider);
        self
    }

    /// Ask `verifier` whether each new revision's artifact may be deployed (a signature, a
    /// provenance); a refusal is audited (as a denied deploy) and returned before anything
    /// starts.
    pub fn artifact_verifier(mut self, verifier: Arc<dyn crate::build::ArtifactVerifier>) -> Self {
        self.verifier = Some(verifier);
        self
    }

    /// Send every event to `notifier` (in order, from its own task).
    pub fn notifier(mut self, notifier: Arc<dyn Notifier>) -> Self {
        self.notifiers.push(notifier);
        self
    }

    /// Read time from `clock` instead of the system clock.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Name this orchestrator for leases (default: host name and process id). A restarted
    /// process with the same name takes its own leases back at once instead of waiting for
    /// them to expire.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Replace the timing configuration.
    pub fn config(mut self, config: OrchestratorConfig) -> Self {
        self.config = config;
        self
    }

    /// Open the orchestrator and resume every in-flight deployment found in the store whose
    /// environment it knows.
    pub async fn open(self) -> Result<Orchestrator> {
        for t in self.targets.values() {
            t.spec.validate()?;
        }
        let gate = AccessGate::new(self.access, self.four_eyes)?;
        if let Some(p) = &self.previews {
            p.validate()?;
        }
        let owner = self.owner.unwrap_or_else(default_owner);
        let audit = AuditTrail::new(self.store.clone(), self.clock.clone());
        let shared = Arc::new(Shared {
            store: self.store,
            targets: RwLock::new(self.targets),
            previews: self.previews,
            gate,
            audit,
            pins: SecretPins::new(self.secrets),
            verifier: self.verifier,
            drivers: Drivers::default(),
            bus: EventBus::open(self.notifiers),
            clock: self.clock,
            owner,
            config: self.config,
            counter: AtomicU64::new(0),
        });
        let reaper = shared
            .previews
            .is_some()
            .then(|| tokio::spawn(preview::reap(Arc::downgrade(&shared))));
        shared.adopt().await?;
        let adopter = tokio::spawn(adopt(Arc::downgrade(&shared)));
        Ok(Orchestrator {
            shared,
            reaper,
            adopter,
        })
    }
}

/// Every `adopt_interval`, look for active deployments nobody here drives and adopt them (the
/// Kubernetes controller model: every replica watches, one leads per object). Stops when the
/// orchestrator is gone.
async fn adopt(shared: std::sync::Weak<Shared>) {
    loop {
        let Some(interval) = shared.upgrade().map(|s| s.config.adopt_every()) else {
            return;
        };
        tokio::time::sleep(interval).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Err(e) = shared.adopt().await {
            tracing::warn!(error = %e.chain(), "scan for orphaned deployments failed; retrying");
        }
    }
}

fn default_owner() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
    format!("{host}:{}", std::process::id())
}

/// Runs deployments: many at once, each through the journaled state machine of
/// [`crate::journal`].
///
/// Dropping the orchestrator stops its drivers at once, as a crash would: their leases stay
/// until they expire, and a new orchestrator opened on the same store carries on where they
/// stopped. [`Orchestrator::shutdown`] stops them and hands their leases back, so another
/// orchestrator can take over at once.
///
/// ```no_run
/// # async fn demo(
/// #     env: std::sync::Arc<dyn deploykit_core::Environment>,
/// #     store: impl deploykit_core::StateStore + 'static,
/// # ) -> deploykit_core::Result<()> {
/// use deploykit_core::*;
/// let production = EnvironmentSpec::builder()
///     .name("production").kind(EnvironmentKind::Production).replicas(3).build()?;
/// // `store`: e.g. `deploykit_sqlite::SqliteStore::open("deploykit.db").await?`
/// let orchestrator = Orchestrator::builder(store)
///     .environment(production, env)
///     .open()
///     .await?;
/// let id = orchestrator
///     .deploy(DeployRequest::builder()
///         .service(ServiceSpec::builder().name("web").build()?)
///         .environment("production")
///         .artifact(Digest::of_bytes(b"web v2"))
///         .label("v2")
///         .requested_by(Actor::new("alice"))
///         .build())
///     .await?;
/// let status = orchestrator.wait(&id).await?;
/// println!("{}", status.phase);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Orchestrator {
    shared: Arc<Shared>,
    /// The preview reaper, if previews are enabled.
    reaper: Option<tokio::task::JoinHandle<()>>,
    /// The scan that adopts orphaned deployments.
    adopter: tokio::task::JoinHandle<()>,
}

impl Drop for Orchestrator {
    fn drop(&mut self) {
        if let Some(reaper) = &self.reaper {
            reaper.abort();
        }
        self.adopter.abort();
        self.shared.drivers.abort_all();
        self.shared.bus.abort();
    }
}

impl Orchestrator {
    /// Start building an orchestrator over `store`.
    pub fn builder(store: impl StateStore + 'static) -> OrchestratorBuilder {
        Self::builder_shared(Arc::new(store))
    }

    /// Start building an orchestrator over a shared store.
    pub fn builder_shared(store: Arc<dyn StateStore>) -> OrchestratorBuilder {
        OrchestratorBuilder {
            store,
            targets: BTreeMap::new(),
            previews: None,
            access: None,
            four_eyes: None,
            secrets: None,
            verifier: None,
            notifiers: Vec::new(),
            clock: Arc::new(SystemClock),
            owner: None,
            config: OrchestratorConfig::default(),
        }
    }

    /// Stop every driver, release the leases they hold, and deliver the notifications already
    /// queued. In-flight deployments stay as they are in the journal; another orchestrator (or
    /// this process, restarted) resumes them without waiting for leases to expire.
    pub async fn shutdown(mut self) -> Result<()> {
        self.adopter.abort();
        for lease in self.shared.drivers.stop().await {
            self.shared.store.release_lease(&lease).await?;
        }
        if let Some(reaper) = self.reaper.take() {
            reaper.abort();
        }
        self.shared.bus.close().await;
        Ok(())
    }

    /// Receive every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.shared.bus.subscribe()
    }

    /// Deploy a new revision. Returns once the request is journaled; the rollout runs in the
    /// background (see [`Orchestrator::wait`]).
    pub async fn deploy(&self, request: DeployRequest) -> Result<DeploymentId> {
        let environment = EnvironmentName::new(request.environment.as_str())?;
        let target = self.shared.target(&environment)?;
        self.shared
            .authorize(
                &request.requested_by,
                AccessAction::Deploy,
                &environment,
                &request.service.name,
                None,
            )
            .await?;
        let revision = self
            .shared
            .revision(
                &request.requested_by,
                &request.service,
                &target.spec,
                request.artifact,
                request.label,
            )
            .await?;
        let strategy = request
            .strategy
            .unwrap_or_else(|| target.spec.strategy.clone());
        target.check_strategy(&strategy)?;
        let plan = Plan {
            kind: DeploymentKind::Deploy,
            strategy,
            failure_policy: request.failure_policy.unwrap_or(target.spec.failure_policy),
            release: None,
        };
        self.shared
            .create(
                &environment,
                revision,
                plan,
                request.requested_by,
                AuditAction::Deploy,
            )
            .await
    }

    /// Roll `service` in `environment` back by hand to a kept revision: `to`, or the one before
    /// the revision serving now. It runs as a deployment of that revision.
    pub async fn rollback(
        &self,
        service: &ServiceId,
        environment: &EnvironmentName,
        to: Option<&RevisionId>,
        by: Actor,
    ) -> Result<DeploymentId> {
        self.shared
            .authorize(&by, AccessAction::Rollback, environment, service, None)
            .await?;
        let history = self.history(service, environment).await?;
        let revision = match to {
            Some(id) => history
                .iter()
                .find(|r| &r.id == id)
                .cloned()
                .ok_or_else(|| {
                    let kept: Vec<String> = history.iter().map(|r| r.describe()).collect();
                    Error::not_found(format!(
                        "revision {id} in the history of {service}/{environment} (kept: {})",
                        if kept.is_empty() {
                            "none".into()
                        } else {
                            kept.join(", ")
                        }
                    ))
                })?,
            // Back to the last verified revision if anything else holds traffic or runs (a
            // rollout in flight, a frozen or failed one), else to the one before it.
            None if self.disturbed(service, environment, &history).await? => {
                history.first().cloned().ok_or_else(|| {
                    Error::not_found(format!(
                        "a verified revision of {service}/{environment} to roll back to"
                    ))
                })?
            }
            None => history.get(1).cloned().ok_or_else(|| {
                Error::not_found(format!(
                    "an earlier revision of {service}/{environment} to roll back to"
                ))
            })?,
        };
        // A manual rollback skips canary steps and analysis.
        let strategy = by_hand(&self.shared.target(environment)?.spec.strategy);
        let plan = Plan {
            kind: DeploymentKind::Rollback,
            strategy,
            failure_policy: FailurePolicy::Rollback,
            release: None,
        };
        self.shared
            .create(environment, revision, plan, by, AuditAction::Rollback)
            .await
    }

    /// The newest deployment of `service` in `environment`, if any.
    async fn newest(
        &self,
        service: &ServiceId,
        environment: &EnvironmentName,
    ) -> Result<Option<DeploymentStatus>> {
        match self
            .shared
            .store
            .list_deployments(service, environment)
            .await?
            .first()
        {
            Some(id) => Ok(Some(self.status(id).await?)),
            None => Ok(None),
        }
    }

    /// Whether something other than the last verified revision (`history[0]`) runs or takes
    /// traffic: the newest deployment has not ended well, or the environment shows it.
    async fn disturbed(
        &self,
        service: &ServiceId,
        environment: &EnvironmentName,
        history: &[Arc<Revision>],
    ) -> Result<bool> {
        let Some(current) = history.first() else {
            return Ok(false);
        };
        if let Some(newest) = self.newest(service, environment).await?
            && newest.serving_revision().is_none_or(|r| r.id != current.id)
        {
            return Ok(true);
        }
        // An unreachable backend (an outage is when one rolls back by hand) leaves the journal
        // to judge: the newest deployment ended well, so nothing else should run.
        let observed = match self.shared.target(environment)?.env.observe(service).await {
            Ok(observed) => observed,
            Err(e) if e.is_retryable() => return Ok(false),
            Err(e) => return Err(e),
        };
        Ok(observed.weight_of(&current.id) != 100
            || observed
                .revisions
                .iter()
                .any(|r| r.revision.id != current.id))
    }

    /// Hold a progressing deployment where it is. The progress deadline does not run while
    /// paused.
    pub async fn pause(
        &self,
        id: &DeploymentId,
        by: Actor,
        reason: impl Into<String>,
    ) -> Result<()> {
        let reason = reason.into();
        let event = JournalEvent::Paused {
            by: by.clone(),
            reason: reason.clone(),
        };
        self.operator(id, event, by, AccessAction::Pause, reason)
            .await
    }

    /// Let a paused deployment carry on.
    pub async fn resume(&self, id: &DeploymentId, by: Actor) -> Result<()> {
        let event = JournalEvent::Resumed { by: by.clone() };
        self.operator(id, event, by, AccessAction::Resume, String::new())
            .await
    }

    /// Abort a deployment: it rolls back to the previous revision (or, if it had not started,
    /// ends as failed). The abort is journaled as a fact first, so it survives a crash.
    pub async fn abort(
        &self,
        id: &DeploymentId,
        by: Actor,
        reason: impl Into<String>,
    ) -> Result<()> {
        let reason = reason.into();
        let event = JournalEvent::AbortRequested {
            by: by.clone(),
            reason: reason.clone(),
        };
        self.operator(id, event, by, AccessAction::Abort, reason)
            .await
    }

    /// Abort every in-flight deployment of `service` in `environment` that rolls out
    /// `revision` — what an alert-driven rollback trigger calls when an alert fires for a
    /// revision. Returns the deployments aborted. The abort is an operator action by `by`
    /// (e.g. `alert:canary-errors`), checked against the access policy and audited.
    pub async fn abort_revision(
        &self,
        service: &ServiceId,
        environment: &EnvironmentName,
        revision: &RevisionId,
        by: Actor,
        reason: impl Into<String>,
    ) -> Result<Vec<DeploymentId>> {
        let reason = reason.into();
        let mut aborted = Vec::new();
        for id in self
            .shared
            .store
            .list_deployments(service, environment)
            .await?
        {
            let status = self.status(&id).await?;
            if status.phase.is_terminal()
                || &status.spec.target.id != revision
                || status.abort.is_some()
            {
                continue;
            }
            self.abort(&id, by.clone(), reason.clone()).await?;
            aborted.push(id);
        }
        Ok(aborted)
    }

    /// Approve the gate a deployment waits at (a pause-until-approved step, a manual
    /// promotion, an inconclusive analysis, or a failure held by the `pause` policy).
    pub async fn approve(
        &self,
        id: &DeploymentId,
        by: Actor,
        reason: impl Into<String>,
    ) -> Result<()> {
        let status = self.status(id).await?;
        let Some((gate, _)) = status.awaiting else {
            return Err(Error::InvalidTransition {
                deployment: id.to_string(),
                action: "approve".into(),
                phase: format!("{} with nothing awaiting approval", status.phase),
            });
        };
        // Four eyes: in production, whoever asked for a deployment may not approve it. (An
        // environment this orchestrator does not run counts as production by its name.)
        let production = || {
            self.shared
                .target(&status.spec.environment)
                .map_or(status.spec.environment.as_str() == "production", |t| {
                    t.spec.kind == EnvironmentKind::Production
                })
        };
        if let Err(e) =
            self.shared
                .gate
                .check_approval(&by, &status.spec.requested_by, &gate, production)
        {
            self.shared
                .audit
                .refused(
                    &by,
                    AccessAction::Approve,
                    &status.spec.environment,
                    &status.spec.service,
                    Some(id),
                    &e,
                )
                .await?;
            return Err(e);
        }
        let reason = reason.into();
        let detail = format!("{gate}: {reason}");
        let event = JournalEvent::Approved {
            gate,
            by: by.clone(),
            reason,
        };
        self.operator(id, event, by, AccessAction::Approve, detail)
            .await
    }

    /// Reject the gate a deployment waits at: it rolls back (a manual judgement of failure).
    pub async fn reject(
        &self,
        id: &DeploymentId,
        by: Actor,
        reason: impl Into<String>,
    ) -> Result<()> {
        let reason = reason.into();
        let event = JournalEvent::AbortRequested {
            by: by.clone(),
            reason: format!("rejected: {reason}"),
        };
        self.operator(id, event, by, AccessAction::Reject, reason)
            .await
    }

    async fn operator(
        &self,
        id: &DeploymentId,
        event: JournalEvent,
        by: Actor,
        access: AccessAction,
        detail: String,
    ) -> Result<()> {
        let action = audit_action(access);
        let status = self.status(id).await?;
        self.shared
            .authorize(
                &by,
                access,
                &status.spec.environment,
                &status.spec.service,
                Some(id),
            )
            .await?;
        // A driver may append concurrently: on a sequence conflict, re-read and append again.
        let status = retry::on_conflict("journal an operator's action", is_conflict, || async {
            let mut status = self.status(id).await?;
            self.shared.append(&mut status, event.clone()).await?;
            Ok(status)
        })
        .await?;
        self.shared
            .audit
            .record(&status, by, action, detail)
            .await?;
        self.shared.drivers.wake(id);
        Ok(())
    }

    /// The current status of a deployment, computed from its journal.
    pub async fn status(&self, id: &DeploymentId) -> Result<DeploymentStatus> {
        self.shared.status(id).await
    }

    /// The status of every deployment in the store that has not ended (pending ones too),
    /// oldest first, whichever orchestrator drives it.
    pub async fn active_deployments(&self) -> Result<Vec<DeploymentStatus>> {
        let mut out = Vec::new();
        for id in self.shared.store.list_active().await? {
            out.push(self.shared.status(&id).await?);
        }
        Ok(out)
    }

    /// The whole journal of a deployment, oldest entry first.
    pub async fn journal(&self, id: &DeploymentId) -> Result<Vec<JournalEntry>> {
        self.shared
            .store
            .load(id)
            .await?
            .ok_or_else(|| Error::not_found(format!("deployment {id}")))
    }

    /// Wait until a deployment ends and return its final status.
    ///
    /// This orchestrator drives (or adopts) every deployment of the environments it runs, so
    /// for those the wait ends when the deployment does. For a deployment of an environment it
    /// does not run, it waits while another orchestrator holds the service's lease, and
    /// returns [`Error::Undriven`] once nobody has held it for `lease_ttl + adopt_interval`
    /// (every orchestrator that runs the environment would have adopted it by then): the
    /// deployment would otherwise never end, and the wait would hang.
    pub async fn wait(&self, id: &DeploymentId) -> Result<DeploymentStatus> {
        let mut events = self.subscribe();
        let grace = self.shared.config.lease_ttl + self.shared.config.adopt_every();
        let mut undriven_since = None;
        loop {
            let status = self.status(id).await?;
            if status.phase.is_terminal() {
                return Ok(status);
            }
            let now = self.shared.clock.now();
            match self.shared.driven(&status, now).await? {
                true => undriven_since = None,
                false => {
                    let since = *undriven_since.get_or_insert(now);
                    if now.since(since) >= grace {
                        return Err(Error::Undriven {
                            deployment: id.to_string(),
                            reason: format!(
                                "its environment {} is not configured in this orchestrator, \
                                 and no orchestrator has held the lease of {}/{} for {}s; open \
                                 one that runs {} on the same store to carry it on",
                                status.spec.environment,
                                status.spec.service,
                                status.spec.environment,
                                now.since(since).as_secs(),
                                status.spec.environment
                            ),
                        });
                    }
                }
            }
            let poll = self.shared.config.poll_interval;
            // Re-read the journal when this deployment ends here, when events were missed, or
            // now and then (another process may be driving it).
            let _ = tokio::time::timeout(poll * 10, async {
                loop {
                    match events.recv().await {
                        Ok(e) if &e.deployment == id && e.phase.is_terminal() => return,
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            })
            .await;
        }
    }

    /// Revisions of `service` in `environment` that served after a successful deployment or
    /// rollback, newest (the one serving now) first, without repeats: the current one plus up to
    /// the environment's `revision_history_limit` earlier ones.
    pub async fn history(
        &self,
        service: &ServiceId,
        environment: &EnvironmentName,
    ) -> Result<Vec<Arc<Revision>>> {
        let limit = self.shared.target(environment)?.spec.revision_history_limit as usize + 1;
        self.shared.history(service, environment, limit).await
    }

    /// Stop `service` in `environment`: a journaled, audited teardown removes every instance and
    /// route the environment runs for it (permission `teardown`). Returns the teardown
    /// deployment, or `None` when the service runs nothing there (never deployed, or torn
    /// down already). The next [`deploy`](Orchestrator::deploy) starts it again.
    pub async fn stop(
        &self,
        service: &ServiceId,
        environment: &EnvironmentName,
        by: Actor,
    ) -> Result<Option<DeploymentId>> {
        self.shared.target(environment)?;
        self.shared
            .authorize(&by, AccessAction::Teardown, environment, service, None)
            .await?;
        self.shared.teardown(service, environment, by).await
    }

    /// Run the revision serving `service` in `environment` at `replicas` instances, as a
    /// journaled, audited deployment of that revision (permission `deploy`; shown as a scale in
    /// the history). It lasts until the next deployment, which sizes from the environment
    /// again. Refused for an autoscaled environment (its autoscaler sets the size) and when
    /// nothing verified serves.
    pub async fn scale(
        &self,
        service: &ServiceId,
        environment: &EnvironmentName,
        replicas: u32,
        by: Actor,
    ) -> Result<DeploymentId> {
        let target = self.shared.target(environment)?;
        crate::model::check_replicas("replicas", replicas)?;
        if let Some(a) = &target.spec.autoscale {
            return Err(Error::invalid(
                "replicas",
                format!(
                    "{environment} is autoscaled ({} to {} instances): change its autoscale \
                     bounds instead",
                    a.min_replicas, a.max_replicas
                ),
            ));
        }
        self.shared
            .authorize(&by, AccessAction::Deploy, environment, service, None)
            .await?;
        if let Some(newest) = self.newest(service, environment).await?
            && newest.spec.kind == DeploymentKind::Teardown
            && newest.phase == Phase::Succeeded
        {
            return Err(Error::invalid(
                "replicas",
                format!(
                    "{service} is stopped in {environment} (by {}, {}): deploy it to start it \
                     again",
                    newest.spec.requested_by, newest.created_at
                ),
            ));
        }
        let serving = self
            .history(service, environment)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| {
                Error::not_found(format!(
                    "a verified revision of {service}/{environment} to scale"
                ))
            })?;
        let strategy = by_hand(&target.spec.strategy);
        let plan = Plan {
            kind: DeploymentKind::Scale { replicas },
            strategy,
            failure_policy: FailurePolicy::Rollback,
            release: None,
        };
        self.shared
            .create(environment, serving, plan, by, AuditAction::Deploy)
            .await
    }

    /// The kept revision of `service` in `environment` that `query` names, for a manual
    /// [`rollback`](Orchestrator::rollback): its label (the newest revision with that label),
    /// its id, or a unique prefix of its id (at least 4 hex digits).
    ///
    /// A revision that was deployed but never verified (rolled back, failed, aborted) is not
    /// kept, and the error says so and lists what is; so does an ambiguous prefix or an unknown
    /// name.
    pub async fn find_revision(
        &self,
        service: &ServiceId,
        environment: &EnvironmentName,
        query: &str,
    ) -> Result<Arc<Revision>> {
        let kept = self.history(service, environment).await?;
        let kept_list = || {
            if kept.is_empty() {
                "none".to_string()
            } else {
                kept.iter()
                    .map(|r| r.describe())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let matches = |r: &Revision| {
            r.label == query
                || r.id.as_str() == query
                || (query.len() >= 4 && r.id.as_str().starts_with(query))
        };
        if let Some(r) = kept
            .iter()
            .find(|r| r.label == query || r.id.as_str() == query)
        {
            return Ok(r.clone());
        }
        let by_prefix: Vec<_> = kept.iter().filter(|r| matches(r)).collect();
        match by_prefix.as_slice() {
            [one] => return Ok((*one).clone()),
            [] => {}
            several => {
                let names: Vec<_> = several.iter().map(|r| r.describe()).collect();
                return Err(Error::invalid(
                    "revision",
                    format!(
                        "{query:?} is the start of several revision ids of \
                         {service}/{environment}: {}; give more of the id",
                        names.join(", ")
                    ),
                ));
            }
        }
        // Deployed once but not kept: say how it ended.
        for id in self
            .shared
            .store
            .list_deployments(service, environment)
            .await?
        {
            let status = self.status(&id).await?;
            if !matches(&status.spec.target) || !status.phase.is_terminal() {
                continue;
            }
            let why = if status.phase == Phase::Succeeded {
                "is older than the revisions kept (the environment's revision_history_limit)"
                    .to_string()
            } else {
                format!(
                    "was {} (deployed {}) and never verified, so it is not kept for rollback",
                    status.phase, status.created_at
                )
            };
            return Err(Error::not_found(format!(
                "a kept revision {query:?} of {service}/{environment}: {} {why} (kept: {})",
                status.spec.target.describe(),
                kept_list()
            )));
        }
        Err(Error::not_found(format!(
            "revision {query:?} of {service}/{environment} (no label, id or id prefix matches; \
             kept: {})",
            kept_list()
        )))
    }

    /// Every audit record, oldest first.
    pub async fn audit_log(&self) -> Result<Vec<AuditRecord>> {
        let entries = self.shared.audit.log().await?;
        Ok(entries.into_iter().map(|e| e.record).collect())
    }

    /// The audit log with its hash chain, oldest first.
    pub async fn audit_chain(&self) -> Result<Vec<AuditEntry>> {
        self.shared.audit.log().await
    }

    /// A checkpoint of the audit log as it is now (record count and head hash), signed with
    /// `key`: keep it outside the log, and [`Orchestrator::verify_audit`] against it later.
    pub async fn audit_checkpoint(&self, key: &SigningKey) -> Result<SignedCheckpoint> {
        self.shared.audit.checkpoint(key).await
    }

    /// Verify the audit log's hash chain and, if given, that it extends a signed checkpoint
    /// (made with the trusted key). The error names the first bad record.
    pub async fn verify_audit(
        &self,
        checkpoint: Option<(&SignedCheckpoint, &VerifyingKey)>,
    ) -> Result<Verified> {
        self.shared.audit.verify(checkpoint).await
    }
}

/// Whether a journal or audit append lost its compare-and-swap to another writer (re-read
/// and try again: [`retry::on_conflict`]).
fn is_conflict(e: &Error) -> bool {
    matches!(e, Error::Conflict { .. })
}

/// How a new deployment will run.
/// How a change made by hand (a manual rollback, a scale) rolls out: rolling environments with
/// their own parameters; others bring the revision up beside the current one and switch all
/// traffic at once, skipping canary steps and analysis.
fn by_hand(strategy: &StrategySpec) -> StrategySpec {
    match strategy {
        StrategySpec::Rolling(spec) => StrategySpec::Rolling(spec.clone()),
        _ => StrategySpec::BlueGreen(BlueGreenSpec {
            scale_down_delay: Duration::ZERO,
            ..BlueGreenSpec::default()
        }),
    }
}

struct Plan {
    kind: DeploymentKind,
    strategy: StrategySpec,
    failure_policy: FailurePolicy,
    /// Membership of a multi-service release, with this deployment's id chosen up front.
    release: Option<(DeploymentId, ReleaseMembership)>,
}

fn deployment_id(
    owner: &str,
    revision: &Revision,
    environment: &EnvironmentName,
    now_ms: u64,
    n: u64,
) -> DeploymentId {
    let mut h = blake3::Hasher::new();
    for part in [owner, revision.id.as_str(), environment.as_str()] {
        h.update(part.as_bytes());
        h.update(&[0]);
    }
    h.update(&now_ms.to_le_bytes());
    h.update(&n.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    DeploymentId::new(format!(
        "{}-{}",
        revision.service,
        &h.finalize().to_hex()[..12]
    ))
}

impl Shared {
    /// The revision of `service` running `artifact` in the environment `spec`, its secret
    /// references pinned if there is a provider.
    async fn revision(
        &self,
        by: &Actor,
        service: &ServiceSpec,
        spec: &EnvironmentSpec,
        artifact: Digest,
        label: String,
    ) -> Result<Revision> {
        if let Some(verifier) = &self.verifier
            && let Err(e) = verifier.verify(&service.name, &spec.name, &artifact).await
        {
            self.audit
                .refused(
                    by,
                    AccessAction::Deploy,
                    &spec.name,
                    &service.name,
                    None,
                    &e,
                )
                .await?;
            return Err(e);
        }
        self.pins
            .pin(Revision::new(service, spec, artifact, label)?)
            .await
    }

    /// Start a driver for every active deployment that has none here and whose environment
    /// this orchestrator runs. A driver that finds the service's lease held by another live
    /// orchestrator stops, so only orphans end up driven here.
    async fn adopt(self: &Arc<Self>) -> Result<()> {
        for id in self.store.list_active().await? {
            if self.drivers.is_driving(&id) {
                continue;
            }
            let status = match self.status(&id).await {
                Ok(status) => status,
                // It ended (or vanished) since it was listed.
                Err(Error::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            if status.phase.is_terminal() {
                continue;
            }
            if self.target(&status.spec.environment).is_ok() {
                tracing::debug!(deployment = %id, phase = %status.phase, "adopting deployment");
                self.spawn(&status);
            } else {
                tracing::debug!(
                    deployment = %id,
                    environment = %status.spec.environment,
                    "not adopting: environment not configured in this orchestrator"
                );
            }
        }
        Ok(())
    }

    /// Whether `status`'s deployment is driven, or will be: this orchestrator runs its
    /// environment (so it drives or adopts it), or another holds its service's lease.
    async fn driven(&self, status: &DeploymentStatus, now: Timestamp) -> Result<bool> {
        if self.target(&status.spec.environment).is_ok() {
            return Ok(true);
        }
        let key = format!("{}/{}", status.spec.service, status.spec.environment);
        Ok(self
            .store
            .lease(&key)
            .await?
            .is_some_and(|lease| lease.expires_at > now))
    }

    /// Start driving `status`'s deployment, unless a driver here already does.
    fn spawn(self: &Arc<Self>, status: &DeploymentStatus) {
        let id = &status.spec.id;
        self.drivers.start_unless_driven(id, || {
            let span = tracing::info_span!(
                "deployment",
                id = %status.spec.id,
                service = %status.spec.service,
                environment = %status.spec.environment,
                revision = %status.spec.target.id,
            );
            driver::drive(self.clone(), id.clone()).instrument(span)
        });
    }

    /// Check `actor` may do `action` on `environment/service`; a refusal is audited and
    /// returned.
    async fn authorize(
        &self,
        actor: &Actor,
        action: AccessAction,
        environment: &EnvironmentName,
        service: &ServiceId,
        deployment: Option<&DeploymentId>,
    ) -> Result<()> {
        let Err(e) = self.gate.check(actor, action, environment, service) else {
            return Ok(());
        };
        self.audit
            .refused(actor, action, environment, service, deployment, &e)
            .await?;
        Err(e)
    }

    fn new_deployment_id(
        &self,
        revision: &Revision,
        environment: &EnvironmentName,
    ) -> DeploymentId {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        deployment_id(
            &self.owner,
            revision,
            environment,
            self.clock.now().as_millis(),
            n,
        )
    }

    /// The environment `name`: a configured one, or a preview environment (created on first
    /// use when previews are enabled).
    fn target(&self, name: &EnvironmentName) -> Result<Arc<Target>> {
        if let Some(t) = self
            .targets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Ok(t.clone());
        }
        if let Some(target) = self.previews.as_ref().and_then(|p| p.target(name)) {
            let mut targets = self.targets.write().unwrap_or_else(|p| p.into_inner());
            return Ok(targets.entry(name.clone()).or_insert(target).clone());
        }
        let targets = self.targets.read().unwrap_or_else(|p| p.into_inner());
        let known: Vec<&str> = targets.keys().map(|k| k.as_str()).collect();
        Err(Error::not_found(format!(
            "environment {name} (configured: {})",
            known.join(", ")
        )))
    }

    async fn create(
        self: &Arc<Self>,
        environment: &EnvironmentName,
        revision: impl Into<Arc<Revision>>,
        plan: Plan,
        by: Actor,
        action: AuditAction,
    ) -> Result<DeploymentId> {
        let revision: Arc<Revision> = revision.into();
        let target = self.target(environment)?;
        let now = self.clock.now();
        let (id, release) = match plan.release {
            Some((id, membership)) => (id, Some(membership)),
            None => (self.new_deployment_id(&revision, environment), None),
        };
        let spec = DeploymentSpec::builder()
            .id(id.clone())
            .service(revision.service.clone())
            .environment(environment.clone())
            .replicas(match plan.kind {
                DeploymentKind::Scale { replicas } => replicas,
                _ => target.spec.replicas,
            })
            .strategy(plan.strategy)
            .failure_policy(plan.failure_policy)
            .progress_deadline(target.spec.progress_deadline)
            .kind(plan.kind)
            .release(release)
            .requested_by(by.clone())
            .target(revision)
            .build();
        let entry = JournalEntry::new(
            0,
            now,
            JournalEvent::Created {
                spec: Arc::new(spec),
            },
        );
        self.journal(&id, &entry).await?;
        let status = DeploymentStatus::from_journal(std::slice::from_ref(&entry))?;
        self.emit(&status, entry);
        let detail = match status.spec.kind {
            DeploymentKind::Scale { replicas } => {
                format!("{} scaled to {replicas}", status.spec.target.describe())
            }
            _ => status.spec.target.describe(),
        };
        self.audit.record(&status, by, action, detail).await?;
        self.spawn(&status);
        Ok(id)
    }

    async fn status(&self, id: &DeploymentId) -> Result<DeploymentStatus> {
        let entries = self
            .store
            .load(id)
            .await?
            .ok_or_else(|| Error::not_found(format!("deployment {id}")))?;
        DeploymentStatus::from_journal(&entries)
    }

    /// Check `event` against the state machine, journal it, and announce it.
    /// Check `event` against the state machine, journal it, apply it to `status`, and
    /// announce it. On error `status` is unchanged.
    async fn append(&self, status: &mut DeploymentStatus, event: JournalEvent) -> Result<()> {
        status.check(&event)?;
        let entry = JournalEntry::new(status.next_seq, self.clock.now(), event);
        self.journal(&status.spec.id, &entry).await?;
        status.apply(&entry)?;
        self.emit(status, entry);
        Ok(())
    }

    /// Write one journal entry.
    async fn journal(&self, id: &DeploymentId, entry: &JournalEntry) -> Result<()> {
        self.store.append(id, entry).await
    }

    /// Announce `entry`, just journaled, of `status`'s deployment.
    fn emit(&self, status: &DeploymentStatus, entry: JournalEntry) {
        self.bus.publish(Event::new(status, entry));
    }

    async fn history(
        &self,
        service: &ServiceId,
        environment: &EnvironmentName,
        limit: usize,
    ) -> Result<Vec<Arc<Revision>>> {
        let mut out: Vec<Arc<Revision>> = Vec::new();
        for id in self.store.list_deployments(service, environment).await? {
            if out.len() >= limit {
                break;
            }
            let status = self.status(&id).await?;
            if let Some(r) = status.serving_revision()
                && !out.iter().any(|k| k.id == r.id)
            {
                out.push(r.clone());
            }
        }
        Ok(out)
    }
}
