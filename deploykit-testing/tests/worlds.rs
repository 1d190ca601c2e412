//! Randomised worlds (issue 14). In each case several orchestrators share one store and one
//! simulated cluster; deploys (rolling, blue-green, canary with timed pauses and approval steps)
//! are requested through any of them; orchestrators crash (dropped: drivers stop, no lease is
//! released) and new ones open, some under a dead one's name (a restarted process), some under
//! a new one; the cluster's API becomes unreachable and comes back; operators abort, reject,
//! pause, resume, approve and roll back by hand at random moments. Everything runs on tokio's
//! paused clock on a `MemoryStore`, or for about one case in eight on a `SqliteStore` in a
//! temporary directory, which every orchestrator opens for itself as a separate process would.
//!
//! Every service first runs a verified `v0`. After the schedule the API comes back, an
//! orchestrator is alive (one is opened if none is), and an operator resumes every hold and
//! approves every gate, for up to three simulated hours (plus the world's timed canary pauses).
//! Actions fall at arbitrary milliseconds, between polls, lease renewals and adoption scans.
//! Then the suite checks, from the
//! journals, the cluster's history and a log of every lease grant, environment apply and journal
//! write together with the orchestrator that made it:
//!
//! - **ends**: every deployment ends.
//! - **adoption**: no deployment is left to a dead owner. While a service has an active
//!   deployment and some orchestrator is alive, a live orchestrator holds the service's lease
//!   (lapsed by at most the longest retry back-off) again within 2 lease TTLs + 2 polls. The
//!   lease TTL is 5 s or 10 s, the poll interval 1 s.
//! - **verified**: when a deployment ends rolled back or failed, one verified revision (the
//!   target of a success, or the revision a rollback returned to) serves alone, every instance
//!   ready, with all traffic; and when the world ends, the last verified revision does.
//! - **succeeded**: when a deployment ends succeeded, its target serves alone, fully ready, with
//!   all traffic.
//! - **retryable**: no started deployment ends `failed`: the only faults here are retryable (an
//!   unreachable API) and every revision returned to is healthy.
//! - **rolling capacity**: after every change made during a rolling deployment (forward or
//!   back), ready instances >= min(ready at its start, replicas - maxUnavailable).
//! - **stable capacity**: during a blue-green or canary deployment, until it promotes or starts
//!   rolling back, the stable revision keeps every instance ready (if it had them at the start).
//! - **journal**: every journal has contiguous sequence numbers from 0 and loads with
//!   `DeploymentStatus::from_journal`; the store's active list is exactly the unfinished ones.
//! - **single driver**: every environment apply, and every journal entry a driver writes, comes
//!   from the orchestrator holding the service's unexpired lease (for that deployment, except
//!   a deployment's end, which the service's next deployment may write).
//! - **justified**: every rollback has a cause in the world: an abort or rejection; fail-fast
//!   only for a broken revision; the progress deadline only for a broken revision, an outage,
//!   or a time with no live orchestrator during the deployment; never an environment error.
//!
//! One test per group of properties, so each shrinks to its own minimal world. The
//! `minimal_*` tests replay the smallest worlds found, one per failure class; the `the_*` tests
//! show that the adoption and single-driver checks catch what they are for.
//!
//! `PROPTEST_CASES` sets the number of worlds per test (default 48; five tests). To look past a known
//! failure, `WORLDS_IGNORE` (comma-separated substrings) ignores violations whose text contains
//! one, e.g. `WORLDS_IGNORE=superseded`.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deploykit_core::journal::{JournalEntry, JournalEvent, RollbackCause};
use deploykit_core::store::{Lease, StateStoreLayer};
use deploykit_core::strategy::{BlueGreenSpec, CanarySpec, CanaryStep};
use deploykit_core::{
    Actor, Clock, DeployRequest, DeploymentId, DeploymentStatus, DesiredState, Digest, Environment,
    EnvironmentKind, EnvironmentName, EnvironmentSpec, HealthChecks, Observed, Orchestrator,
    OrchestratorConfig, Outcome, Phase, Probe, ProbeAction, Quantity, Result, RevisionId,
    RevisionTarget, RollingSpec, ServiceId, ServiceSpec, StateStore, StrategySpec, Timestamp,
};
use deploykit_sqlite::SqliteStore;
use deploykit_testing::{Behavior, MemoryStore, SimCluster, Snapshot};
use proptest::prelude::*;

/// The longest retry back-off (`OrchestratorConfig::retry_max`'s default): how long a live
/// driver may leave its lease lapsed while it waits to retry.
const RETRY_MAX: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_secs(1);
/// How long the operator keeps answering gates after the schedule before giving up, on top of
/// every timed pause the world's canaries hold.
const SETTLE: Duration = Duration::from_secs(3 * 3600);
const SERVICES: [&str; 2] = ["web", "api"];
const LABELS: [&str; 4] = ["v0", "v1", "v2", "v3"];
const ENV: &str = "production";

// ---------------------------------------------------------------------------------------------
// The world
// ---------------------------------------------------------------------------------------------

/// How the instances of one revision behave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Health {
    Healthy,
    /// Ready after this many seconds.
    Slow(u64),
    /// Exits a second after every start.
    CrashLoop,
    /// Never passes its readiness probe.
    Unready,
}

impl Health {
    fn behavior(self) -> Behavior {
        match self {
            Health::Healthy => Behavior::Healthy,
            Health::Slow(s) => Behavior::SlowStart(Duration::from_secs(s)),
            Health::CrashLoop => Behavior::CrashLoop {
                reason: "exit code 1".into(),
            },
            Health::Unready => Behavior::FailReadiness {
                reason: "GET /health returned 503".into(),
            },
        }
    }

    fn broken(self) -> bool {
        matches!(self, Health::CrashLoop | Health::Unready)
    }
}

#[derive(Clone, Debug)]
enum Step {
    Weight(u32),
    /// A timed pause of this many seconds.
    Pause(u64),
    /// A pause until approved.
    Approval,
}

#[derive(Clone, Debug)]
enum Strat {
    Rolling { surge: u32, unavailable: u32 },
    BlueGreen { auto: bool, delay: u64 },
    Canary(Vec<Step>),
}

impl Strat {
    fn spec(&self) -> StrategySpec {
        match self {
            Strat::Rolling { surge, unavailable } => {
                let surge = if *surge == 0 && *unavailable == 0 {
                    1
                } else {
                    *surge
                };
                StrategySpec::Rolling(
                    RollingSpec::builder()
                        .max_surge(Quantity::Count(surge))
                        .max_unavailable(Quantity::Count(*unavailable))
                        .build()
                        .expect("rolling spec"),
                )
            }
            Strat::BlueGreen { auto, delay } => StrategySpec::BlueGreen(
                BlueGreenSpec::builder()
                    .auto_promote(*auto)
                    .auto_promotion_delay(Duration::from_secs(*delay))
                    .build()
                    .expect("blue-green spec"),
            ),
            Strat::Canary(steps) => {
                let steps = steps
                    .iter()
                    .map(|s| match s {
                        Step::Weight(w) => CanaryStep::weight(*w).expect("weight"),
                        Step::Pause(secs) => CanaryStep::pause(Duration::from_secs(*secs)),
                        Step::Approval => CanaryStep::approval(),
                    })
                    .collect();
                StrategySpec::Canary(CanarySpec::builder().steps(steps).build().expect("canary"))
            }
        }
    }
}

/// One scheduled event. `via` picks a live orchestrator (modulo how many live), `dep` a
/// deployment counted from the newest among those not ended yet (0 is the latest requested),
/// `slot` an orchestrator slot.
#[derive(Clone, Debug)]
enum Action {
    Deploy {
        via: usize,
        service: usize,
        label: usize,
        strategy: Strat,
    },
    Rollback {
        via: usize,
        service: usize,
    },
    Abort {
        via: usize,
        dep: usize,
    },
    Reject {
        via: usize,
        dep: usize,
    },
    Pause {
        via: usize,
        dep: usize,
    },
    Resume {
        via: usize,
        dep: usize,
    },
    Approve {
        via: usize,
        dep: usize,
    },
    /// Drop the orchestrator in this slot: its drivers stop, its leases stay until they expire.
    Crash {
        slot: usize,
    },
    /// Open an orchestrator in this slot if it has none: under the slot's last name (a
    /// restarted process) or under a new one (a new host).
    Open {
        slot: usize,
        restart: bool,
    },
    /// Make the cluster's API unreachable (`true`) or reachable again.
    Outage(bool),
    /// Never generated; for the tests of the checks themselves: the orchestrator picked by
    /// `via` re-applies what runs for the service, as a second driver would.
    Intrude {
        via: usize,
        service: usize,
    },
}

#[derive(Clone, Debug)]
struct World {
    services: usize,
    replicas: u32,
    slots: usize,
    /// Slots with an orchestrator at the start.
    open: usize,
    /// Per service, the health of v1, v2, v3 (v0 is healthy).
    health: Vec<Vec<Health>>,
    sqlite: bool,
    /// The orchestrators' lease TTL in seconds.
    ttl: u64,
    /// Milliseconds to wait, then the action (not whole seconds: so that actions fall between
    /// the orchestrators' polls, lease renewals and adoption scans).
    schedule: Vec<(u64, Action)>,
}

impl World {
    /// How long the operator waits for every deployment to end: `SETTLE` plus every timed
    /// canary pause of the schedule (the deployments may run one after another).
    fn settle_limit(&self) -> Duration {
        let pauses: u64 = self
            .schedule
            .iter()
            .filter_map(|(_, a)| match a {
                Action::Deploy {
                    strategy: Strat::Canary(steps),
                    ..
                } => Some(steps),
                _ => None,
            })
            .flatten()
            .map(|s| match s {
                Step::Pause(secs) => *secs,
                _ => 0,
            })
            .sum();
        SETTLE + Duration::from_secs(pauses)
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl)
    }

    fn health(&self, service: &ServiceId, label: &str) -> Health {
        let s = SERVICES
            .iter()
            .position(|n| *n == service.as_str())
            .unwrap_or(0);
        match LABELS.iter().position(|l| *l == label) {
            Some(0) | None => Health::Healthy,
            Some(i) => self.health[s][i - 1],
        }
    }
}

fn health() -> impl Strategy<Value = Health> {
    prop_oneof![
        6 => Just(Health::Healthy),
        2 => (1u64..=40).prop_map(Health::Slow),
        1 => Just(Health::CrashLoop),
        1 => Just(Health::Unready),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (1u32..=99).prop_map(Step::Weight),
        3 => (1u64..=90).prop_map(Step::Pause),
        1 => (1200u64..=7200).prop_map(Step::Pause),
        2 => Just(Step::Approval),
    ]
}

fn strat() -> impl Strategy<Value = Strat> {
    prop_oneof![
        (0u32..=2, 0u32..=2).prop_map(|(surge, unavailable)| Strat::Rolling { surge, unavailable }),
        (any::<bool>(), prop_oneof![3 => Just(0u64), 1 => 1u64..=60])
            .prop_map(|(auto, delay)| Strat::BlueGreen { auto, delay }),
        prop::collection::vec(step(), 1..=4).prop_map(Strat::Canary),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    let via = 0usize..3;
    let dep = 0usize..4;
    prop_oneof![
        6 => (via.clone(), 0usize..2, 0usize..4, strat()).prop_map(|(via, service, label, strategy)| {
            Action::Deploy { via, service, label, strategy }
        }),
        1 => (via.clone(), 0usize..2).prop_map(|(via, service)| Action::Rollback { via, service }),
        2 => (via.clone(), dep.clone()).prop_map(|(via, dep)| Action::Abort { via, dep }),
        1 => (via.clone(), dep.clone()).prop_map(|(via, dep)| Action::Reject { via, dep }),
        1 => (via.clone(), dep.clone()).prop_map(|(via, dep)| Action::Pause { via, dep }),
        1 => (via.clone(), dep.clone()).prop_map(|(via, dep)| Action::Resume { via, dep }),
        2 => (via, dep).prop_map(|(via, dep)| Action::Approve { via, dep }),
        2 => (0usize..3).prop_map(|slot| Action::Crash { slot }),
        2 => (0usize..3, any::<bool>()).prop_map(|(slot, restart)| Action::Open { slot, restart }),
        2 => any::<bool>().prop_map(Action::Outage),
    ]
}

fn delay() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => Just(0u64),
        4 => 1u64..=15_000,
        2 => 15_000u64..=120_000,
        1 => 300_000u64..=900_000,
    ]
}

fn world() -> impl Strategy<Value = World> {
    (
        1usize..=2,
        1u32..=4,
        2usize..=3,
        1usize..=3,
        prop::collection::vec(prop::collection::vec(health(), 3), 2),
        prop::bool::weighted(0.125),
        prop_oneof![Just(10u64), Just(5u64)],
        prop::collection::vec((delay(), action()), 1..=14),
    )
        .prop_map(
            |(services, replicas, slots, open, health, sqlite, ttl, schedule)| World {
                services,
                replicas,
                slots,
                open: open.min(slots),
                health,
                sqlite,
                ttl,
                schedule,
            },
        )
}

// ---------------------------------------------------------------------------------------------
// Instrumentation: who did what, when
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Ev {
    Open {
        who: usize,
    },
    Crash {
        who: usize,
    },
    Outage(bool),
    Grant {
        who: usize,
        key: String,
        owner: String,
        expires: Timestamp,
    },
    Release {
        key: String,
        owner: String,
    },
    Apply {
        who: usize,
        service: ServiceId,
    },
    Append {
        who: usize,
        deployment: DeploymentId,
        seq: u64,
        event: Box<JournalEvent>,
        /// Length of the service's cluster history when it was written (for driver milestones).
        history: Option<usize>,
        /// What ran for the service when it was written (for `started` and `finished`).
        seen: Option<Observed>,
    },
}

#[derive(Clone, Debug)]
struct Logged {
    at: Timestamp,
    ev: Ev,
}

#[derive(Debug)]
struct Log {
    sim: SimCluster,
    events: Mutex<Vec<Logged>>,
    services: Mutex<HashMap<DeploymentId, ServiceId>>,
}

impl Log {
    fn push(&self, ev: Ev) {
        let at = self.sim.clock().now();
        self.events.lock().expect("log").push(Logged { at, ev });
    }

    fn events(&self) -> Vec<Logged> {
        self.events.lock().expect("log").clone()
    }
}

/// The store as one orchestrator sees it: every successful append and lease grant is logged
/// with that orchestrator's incarnation number.
#[derive(Debug)]
struct Tracked {
    inner: Arc<dyn StateStore>,
    who: usize,
    log: Arc<Log>,
}

#[async_trait]
impl StateStoreLayer for Tracked {
    fn inner(&self) -> &dyn StateStore {
        self.inner.as_ref()
    }
    async fn append(&self, deployment: &DeploymentId, entry: &JournalEntry) -> Result<()> {
        self.inner.append(deployment, entry).await?;
        let service = {
            let mut services = self.log.services.lock().expect("services");
            if let JournalEvent::Created { spec } = &entry.event {
                services.insert(deployment.clone(), spec.service.clone());
            }
            services.get(deployment).cloned()
        };
        let milestone = matches!(
            entry.event,
            JournalEvent::Started { .. }
                | JournalEvent::Promoted
                | JournalEvent::RollbackStarted { .. }
                | JournalEvent::Finished { .. }
        );
        let edge = matches!(
            entry.event,
            JournalEvent::Started { .. } | JournalEvent::Finished { .. }
        );
        let sim = &self.log.sim;
        self.log.push(Ev::Append {
            who: self.who,
            deployment: deployment.clone(),
            seq: entry.seq,
            event: Box::new(entry.event.clone()),
            history: service
                .as_ref()
                .filter(|_| milestone)
                .map(|s| sim.history(s).len()),
            seen: service.as_ref().filter(|_| edge).map(|s| sim.peek(s)),
        });
        Ok(())
    }
    async fn acquire_lease(
        &self,
        key: &str,
        owner: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Lease> {
        let lease = self.inner.acquire_lease(key, owner, now, ttl).await?;
        self.log.push(Ev::Grant {
            who: self.who,
            key: lease.key.clone(),
            owner: lease.owner.clone(),
            expires: lease.expires_at,
        });
        Ok(lease)
    }
    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        self.inner.release_lease(lease).await?;
        self.log.push(Ev::Release {
            key: lease.key.clone(),
            owner: lease.owner.clone(),
        });
        Ok(())
    }
}

/// The cluster as one orchestrator sees it: every apply that took effect is logged with that
/// orchestrator's incarnation number.
#[derive(Debug)]
struct Tapped {
    who: usize,
    log: Arc<Log>,
}

#[async_trait]
impl Environment for Tapped {
    async fn apply(&self, service: &ServiceId, desired: &DesiredState) -> Result<()> {
        self.log.sim.apply(service, desired).await?;
        self.log.push(Ev::Apply {
            who: self.who,
            service: service.clone(),
        });
        Ok(())
    }
    async fn observe(&self, service: &ServiceId) -> Result<Observed> {
        self.log.sim.observe(service).await
    }
    async fn teardown(&self, service: &ServiceId) -> Result<()> {
        self.log.sim.teardown(service).await
    }
}

// ---------------------------------------------------------------------------------------------
// Running a world
// ---------------------------------------------------------------------------------------------

fn service_spec(name: &str) -> ServiceSpec {
    ServiceSpec::builder()
        .name(name)
        .port(8080)
        .health(
            HealthChecks::builder()
                .readiness(
                    Probe::builder()
                        .action(ProbeAction::http("/health"))
                        .period(Duration::from_secs(2))
                        .build()
                        .expect("probe"),
                )
                .build(),
        )
        .build()
        .expect("service")
}

fn artifact(service: &str, label: &str) -> Digest {
    Digest::of_bytes(format!("{service} {label}").as_bytes())
}

fn config(ttl: Duration) -> OrchestratorConfig {
    OrchestratorConfig::builder()
        .poll_interval(POLL)
        .lease_ttl(ttl)
        .build()
}

/// An orchestrator configuration under which a live orchestrator does not look for orphans
/// for a day: what the adoption check must catch.
fn without_adoption(ttl: Duration) -> OrchestratorConfig {
    OrchestratorConfig::builder()
        .poll_interval(POLL)
        .lease_ttl(ttl)
        .adopt_interval(Duration::from_secs(24 * 3600))
        .build()
}

enum Backing {
    Memory(MemoryStore),
    /// The database file, and the directory that holds it (removed when the world ends).
    Sqlite {
        path: PathBuf,
        _dir: tempfile::TempDir,
    },
}

struct Incarnation {
    slot: usize,
    name: String,
    orch: Option<Orchestrator>,
}

struct Run<'w> {
    world: &'w World,
    sim: SimCluster,
    log: Arc<Log>,
    backing: Backing,
    reader: Arc<dyn StateStore>,
    env: EnvironmentSpec,
    incarnations: Vec<Incarnation>,
    /// Per slot: the live incarnation, and the last name used.
    slots: Vec<(Option<usize>, Option<String>)>,
    generation: usize,
    created: Vec<DeploymentId>,
    trace: Vec<String>,
    /// When the world began.
    start: Timestamp,
    config: OrchestratorConfig,
}

impl<'w> Run<'w> {
    async fn new(world: &'w World, config: OrchestratorConfig) -> Run<'w> {
        let sim = SimCluster::new();
        for (s, name) in SERVICES.iter().enumerate().take(world.services) {
            for (i, label) in LABELS.iter().enumerate().skip(1) {
                sim.set_behavior(&artifact(name, label), world.health[s][i - 1].behavior());
            }
        }
        let (backing, reader): (Backing, Arc<dyn StateStore>) = if world.sqlite {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("deploykit.db");
            let reader = SqliteStore::open(&path).await.expect("open sqlite");
            (Backing::Sqlite { path, _dir: dir }, Arc::new(reader))
        } else {
            let store = MemoryStore::new();
            (Backing::Memory(store.clone()), Arc::new(store))
        };
        let env = EnvironmentSpec::builder()
            .name(ENV)
            .kind(EnvironmentKind::Production)
            .replicas(world.replicas)
            .build()
            .expect("environment");
        let start = sim.clock().now();
        Run {
            world,
            log: Arc::new(Log {
                sim: sim.clone(),
                events: Mutex::new(Vec::new()),
                services: Mutex::new(HashMap::new()),
            }),
            sim,
            backing,
            reader,
            env,
            incarnations: Vec::new(),
            slots: vec![(None, None); world.slots],
            generation: 0,
            created: Vec::new(),
            trace: Vec::new(),
            start,
            config,
        }
    }

    fn now(&self) -> Timestamp {
        self.sim.clock().now()
    }

    fn note(&mut self, what: String) {
        let at = format!("{:.1}", self.now().since(self.start).as_secs_f64());
        self.trace.push(format!("t={at}s {what}"));
    }

    async fn open(&mut self, slot: usize, restart: bool) {
        if self.slots[slot].0.is_some() {
            return;
        }
        let name = match (&self.slots[slot].1, restart) {
            (Some(name), true) => name.clone(),
            _ => {
                self.generation += 1;
                format!("o{slot}.{}", self.generation)
            }
        };
        let who = self.incarnations.len();
        self.log.push(Ev::Open { who });
        let inner: Arc<dyn StateStore> = match &self.backing {
            Backing::Memory(m) => Arc::new(m.clone()),
            Backing::Sqlite { path, .. } => {
                Arc::new(SqliteStore::open(path).await.expect("sqlite"))
            }
        };
        let store = Arc::new(Tracked {
            inner,
            who,
            log: self.log.clone(),
        });
        let env = Arc::new(Tapped {
            who,
            log: self.log.clone(),
        });
        let orch = Orchestrator::builder_shared(store)
            .environment(self.env.clone(), env)
            .clock(Arc::new(self.sim.clock()))
            .owner(name.clone())
            .config(self.config.clone())
            .open()
            .await
            .expect("open orchestrator");
        self.incarnations.push(Incarnation {
            slot,
            name: name.clone(),
            orch: Some(orch),
        });
        self.slots[slot] = (Some(who), Some(name.clone()));
        self.note(format!("open #{who} {name} in slot {slot}"));
    }

    fn crash(&mut self, slot: usize) {
        let Some(who) = self.slots[slot].0.take() else {
            return;
        };
        self.log.push(Ev::Crash { who });
        let orch = self.incarnations[who].orch.take();
        drop(orch);
        let name = self.incarnations[who].name.clone();
        self.note(format!(
            "crash #{who} {name} (slot {})",
            self.incarnations[who].slot
        ));
    }

    fn live(&self) -> Vec<usize> {
        self.slots.iter().filter_map(|s| s.0).collect()
    }

    /// A live orchestrator, picked by `via`.
    fn via(&self, via: usize) -> Option<(usize, &Orchestrator)> {
        let live = self.live();
        let who = *live.get(via % live.len().max(1))?;
        self.incarnations[who].orch.as_ref().map(|o| (who, o))
    }

    /// The deployment `dep` picks: counted from the newest among those not ended yet, or among
    /// all if every one has ended.
    async fn dep(&self, dep: usize) -> Option<DeploymentId> {
        let mut open = Vec::new();
        for id in &self.created {
            if self
                .status(id)
                .await
                .is_some_and(|st| !st.phase.is_terminal())
            {
                open.push(id.clone());
            }
        }
        let pool = if open.is_empty() {
            &self.created
        } else {
            &open
        };
        let n = pool.len();
        (n > 0).then(|| pool[n - 1 - dep % n].clone())
    }

    async fn deploy(&mut self, via: usize, service: usize, label: usize, strategy: Option<&Strat>) {
        let name = SERVICES[service % self.world.services];
        let label = LABELS[label % LABELS.len()];
        let Some((who, orch)) = self.via(via) else {
            return;
        };
        let mut request = DeployRequest::builder()
            .service(service_spec(name))
            .environment(ENV)
            .artifact(artifact(name, label))
            .label(label)
            .requested_by(Actor::new("alice"))
            .build();
        if let Some(s) = strategy {
            request.strategy = Some(s.spec());
        }
        let result = orch.deploy(request).await;
        match result {
            Ok(id) => {
                self.note(format!(
                    "deploy {name} {label} via #{who} as {id} ({})",
                    strategy.map_or("rolling (environment)".to_string(), |s| format!("{s:?}"))
                ));
                self.created.push(id);
            }
            Err(e) => self.note(format!("deploy {name} {label} via #{who} refused: {e}")),
        }
    }

    async fn act(&mut self, action: &Action) {
        let operator = Actor::new("bob");
        match action {
            Action::Deploy {
                via,
                service,
                label,
                strategy,
            } => self.deploy(*via, *service, *label, Some(strategy)).await,
            Action::Rollback { via, service } => {
                let name = SERVICES[service % self.world.services];
                let Some((who, orch)) = self.via(*via) else {
                    return;
                };
                let env = EnvironmentName::new(ENV).expect("environment name");
                let result = orch
                    .rollback(
                        &ServiceId::new(name).expect("service"),
                        &env,
                        None,
                        operator,
                    )
                    .await;
                match result {
                    Ok(id) => {
                        self.note(format!("manual rollback of {name} via #{who} as {id}"));
                        self.created.push(id);
                    }
                    Err(e) => self.note(format!("manual rollback of {name} refused: {e}")),
                }
            }
            Action::Abort { via, dep }
            | Action::Reject { via, dep }
            | Action::Pause { via, dep }
            | Action::Resume { via, dep }
            | Action::Approve { via, dep } => {
                let Some(id) = self.dep(*dep).await else {
                    return;
                };
                let Some((who, orch)) = self.via(*via) else {
                    return;
                };
                let (what, result) = match action {
                    Action::Abort { .. } => ("abort", orch.abort(&id, operator, "random").await),
                    Action::Reject { .. } => ("reject", orch.reject(&id, operator, "random").await),
                    Action::Pause { .. } => ("pause", orch.pause(&id, operator, "random").await),
                    Action::Resume { .. } => ("resume", orch.resume(&id, operator).await),
                    _ => ("approve", orch.approve(&id, operator, "random").await),
                };
                let how = match result {
                    Ok(()) => "done".to_string(),
                    Err(e) => format!("refused: {e}"),
                };
                self.note(format!("{what} {id} via #{who}: {how}"));
            }
            Action::Crash { slot } => self.crash(slot % self.world.slots),
            Action::Open { slot, restart } => self.open(slot % self.world.slots, *restart).await,
            Action::Intrude { via, service } => {
                let name = SERVICES[service % self.world.services];
                let Some((who, _)) = self.via(*via) else {
                    return;
                };
                let service = ServiceId::new(name).expect("service");
                let seen = self.sim.peek(&service);
                let desired = DesiredState::new(
                    seen.revisions
                        .iter()
                        .map(|r| RevisionTarget::new(r.revision.clone(), r.desired))
                        .collect(),
                    seen.routing.clone(),
                );
                let intruder = Tapped {
                    who,
                    log: self.log.clone(),
                };
                let result = intruder.apply(&service, &desired).await;
                self.note(format!("#{who} intrudes on {name}: {result:?}"));
            }
            Action::Outage(down) => {
                if self.sim.is_unreachable() != *down {
                    self.sim.set_unreachable(*down);
                    self.log.push(Ev::Outage(*down));
                    self.note(format!(
                        "cluster API {}",
                        if *down { "unreachable" } else { "back" }
                    ));
                }
            }
        }
    }

    async fn status(&self, id: &DeploymentId) -> Option<DeploymentStatus> {
        let entries = self.reader.load(id).await.ok()??;
        DeploymentStatus::from_journal(&entries).ok()
    }

    async fn all_deployments(&self) -> Vec<DeploymentId> {
        let env = EnvironmentName::new(ENV).expect("environment name");
        let mut all = Vec::new();
        for name in SERVICES.iter().take(self.world.services) {
            let service = ServiceId::new(*name).expect("service");
            let mut ids = self
                .reader
                .list_deployments(&service, &env)
                .await
                .expect("list deployments");
            ids.reverse();
            all.extend(ids);
        }
        all
    }

    /// Bring the API back, make sure an orchestrator lives, and answer every gate and hold
    /// until every deployment has ended or the world's settle limit has passed.
    async fn settle(&mut self) {
        if self.sim.is_unreachable() {
            self.act(&Action::Outage(false)).await;
        }
        if self.live().is_empty() {
            self.open(0, false).await;
        }
        self.note("settle: operator answers every gate and hold from now on".into());
        let until = self.now().plus(self.world.settle_limit());
        loop {
            let mut open = 0;
            for id in self.all_deployments().await {
                let Some(st) = self.status(&id).await else {
                    continue;
                };
                if st.phase.is_terminal() {
                    continue;
                }
                open += 1;
                let Some((_, orch)) = self.via(0) else {
                    continue;
                };
                let operator = Actor::new("carol");
                if st.paused.is_some() {
                    let _ = orch.resume(&id, operator.clone()).await;
                }
                if st.awaiting.is_some() {
                    let _ = orch.approve(&id, operator, "settle").await;
                }
            }
            if open == 0 || self.now() >= until {
                break;
            }
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        self.note("settle: done".into());
    }
}

// ---------------------------------------------------------------------------------------------
// Checking a world
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Prop {
    Ends,
    Adoption,
    Verified,
    Succeeded,
    Retryable,
    RollingCapacity,
    StableCapacity,
    Journal,
    SingleDriver,
    Justified,
}

/// Everything observed in one world, for the checks.
struct Evidence<'w> {
    world: &'w World,
    events: Vec<Logged>,
    journals: BTreeMap<DeploymentId, Vec<JournalEntry>>,
    statuses: BTreeMap<DeploymentId, DeploymentStatus>,
    order: Vec<DeploymentId>,
    active: BTreeSet<DeploymentId>,
    history: HashMap<ServiceId, Vec<Snapshot>>,
    now_serving: HashMap<ServiceId, Observed>,
    names: Vec<String>,
    start: Timestamp,
    end: Timestamp,
}

struct Verdict {
    violations: Vec<(Prop, String)>,
    trace: Vec<String>,
}

fn serves_alone(o: &Observed, revision: &RevisionId, replicas: u32) -> bool {
    o.revisions.len() == 1
        && o.revisions[0].revision.id == *revision
        && o.revisions[0].ready() == replicas
        && o.revisions[0].instances.len() as u32 == replicas
        && o.weight_of(revision) == 100
}

fn describe(o: &Observed) -> String {
    let traffic: Vec<String> = o
        .revisions
        .iter()
        .map(|r| format!("{} {}%", r.revision.label, o.weight_of(&r.revision.id)))
        .collect();
    format!("{} (traffic: {})", o.summary(), traffic.join(", "))
}

impl Evidence<'_> {
    /// Seconds since the world began, to a tenth.
    fn secs(&self, t: Timestamp) -> String {
        format!("{:.1}", t.since(self.start).as_secs_f64())
    }

    fn label(&self, id: &DeploymentId) -> String {
        match self.statuses.get(id) {
            Some(st) => format!("{id} ({} {})", st.spec.service, st.spec.target.label),
            None => id.to_string(),
        }
    }

    fn replicas(&self) -> u32 {
        self.world.replicas
    }

    /// Intervals during which the API was unreachable.
    fn outages(&self) -> Vec<(Timestamp, Timestamp)> {
        let mut out = Vec::new();
        let mut since = None;
        for e in &self.events {
            match e.ev {
                Ev::Outage(true) => since = Some(e.at),
                Ev::Outage(false) => {
                    if let Some(s) = since.take() {
                        out.push((s, e.at));
                    }
                }
                _ => {}
            }
        }
        if let Some(s) = since {
            out.push((s, self.end));
        }
        out
    }

    /// Intervals during which no orchestrator was alive.
    fn unattended(&self) -> Vec<(Timestamp, Timestamp)> {
        let mut out = Vec::new();
        let mut live = BTreeSet::new();
        let mut since: Option<Timestamp> = None;
        for e in &self.events {
            match e.ev {
                Ev::Open { who } => {
                    live.insert(who);
                    if let Some(s) = since.take() {
                        out.push((s, e.at));
                    }
                }
                Ev::Crash { who } => {
                    live.remove(&who);
                    if live.is_empty() {
                        since = Some(e.at);
                    }
                }
                _ => {}
            }
        }
        if let Some(s) = since {
            out.push((s, self.end));
        }
        out
    }

    fn check(&self) -> Vec<(Prop, String)> {
        let mut v = Vec::new();
        self.check_ends(&mut v);
        self.check_adoption(&mut v);
        self.check_serving(&mut v);
        self.check_capacity(&mut v);
        self.check_journals(&mut v);
        self.check_single_driver(&mut v);
        self.check_justified(&mut v);
        v
    }

    fn check_ends(&self, v: &mut Vec<(Prop, String)>) {
        for id in &self.order {
            let st = &self.statuses[id];
            if !st.phase.is_terminal() {
                let holder = self.holder_of(&st.spec.service);
                v.push((
                    Prop::Ends,
                    format!(
                        "{} is still {} {}s after the schedule ended and with an orchestrator \
                         alive; lease last granted to {holder}",
                        self.label(id),
                        st.phase,
                        self.world.settle_limit().as_secs()
                    ),
                ));
            }
        }
    }

    fn holder_of(&self, service: &ServiceId) -> String {
        let prefix = format!("{service}/");
        let mut holder = "nobody".to_string();
        for e in &self.events {
            match &e.ev {
                Ev::Grant {
                    who, key, expires, ..
                } if key.starts_with(&prefix) => {
                    holder = format!(
                        "#{who} {} (expires t={}s)",
                        self.names[*who],
                        self.secs(*expires)
                    );
                }
                Ev::Release { key, .. } if key.starts_with(&prefix) => {
                    holder = "nobody (released)".into();
                }
                _ => {}
            }
        }
        holder
    }

    /// A service with an active deployment and a live orchestrator must not stay without a
    /// live lease holder for longer than 2 lease TTLs + 2 polls. The state only changes at a
    /// logged event, a deployment's creation or end, or a grant's expiry plus the longest
    /// back-off, so it is evaluated exactly at those instants.
    fn check_adoption(&self, v: &mut Vec<(Prop, String)>) {
        let bound = self.world.ttl() * 2 + POLL * 2;
        // Active intervals per service, from the journals.
        let mut active: HashMap<ServiceId, Vec<(Timestamp, Timestamp, DeploymentId)>> =
            HashMap::new();
        let mut instants: BTreeSet<Timestamp> = self.events.iter().map(|e| e.at).collect();
        for (id, journal) in &self.journals {
            let st = &self.statuses[id];
            let created = journal[0].at;
            let ended = journal
                .iter()
                .find(|e| e.event.is_terminal())
                .map_or(Timestamp::from_millis(u64::MAX), |e| e.at);
            instants.insert(created);
            instants.insert(ended.min(self.end));
            active
                .entry(st.spec.service.clone())
                .or_default()
                .push((created, ended, id.clone()));
        }
        for e in &self.events {
            if let Ev::Grant { expires, .. } = e.ev {
                instants.insert(expires.plus(RETRY_MAX).plus(Duration::from_millis(1)));
            }
        }
        instants.insert(self.end);
        let mut live: BTreeSet<usize> = BTreeSet::new();
        let mut grants: HashMap<String, (usize, String, Timestamp)> = HashMap::new();
        // Per service: since when it has been orphaned, and the deployments then active.
        let mut orphaned: HashMap<ServiceId, (Timestamp, Vec<DeploymentId>)> = HashMap::new();
        let mut i = 0;
        for t in instants.into_iter().filter(|t| *t <= self.end) {
            while i < self.events.len() && self.events[i].at <= t {
                match &self.events[i].ev {
                    Ev::Open { who } => {
                        live.insert(*who);
                    }
                    Ev::Crash { who } => {
                        live.remove(who);
                    }
                    Ev::Grant {
                        who,
                        key,
                        owner,
                        expires,
                    } => {
                        grants.insert(key.clone(), (*who, owner.clone(), *expires));
                    }
                    // A release takes effect only if the releaser still held the lease.
                    Ev::Release { key, owner }
                        if grants.get(key).is_some_and(|(_, o, _)| o == owner) =>
                    {
                        grants.remove(key);
                    }
                    _ => {}
                }
                i += 1;
            }
            for (service, intervals) in &active {
                let needed: Vec<DeploymentId> = intervals
                    .iter()
                    .filter(|(s, e, _)| *s <= t && t < *e)
                    .map(|(_, _, id)| id.clone())
                    .collect();
                let key = format!("{service}/{ENV}");
                let covered = grants.get(&key).is_some_and(|(who, _, expires)| {
                    live.contains(who) && t <= expires.plus(RETRY_MAX)
                });
                let is_orphan = !needed.is_empty() && !live.is_empty() && !covered;
                let last = t == self.end;
                match orphaned.get(service) {
                    None if is_orphan && !last => {
                        orphaned.insert(service.clone(), (t, needed));
                    }
                    Some((since, ids)) if !is_orphan || last => {
                        if t.since(*since) > bound {
                            let ids: Vec<String> = ids.iter().map(|id| self.label(id)).collect();
                            v.push((
                                Prop::Adoption,
                                format!(
                                    "{service}: {} active with orchestrators {:?} alive, but no \
                                     live lease holder from t={}s to t={}s (> {}s); the lease \
                                     then: {}",
                                    ids.join(", "),
                                    live.iter()
                                        .map(|w| format!("#{w} {}", self.names[*w]))
                                        .collect::<Vec<_>>(),
                                    self.secs(*since),
                                    self.secs(t),
                                    bound.as_secs(),
                                    grants.get(&key).map_or("free".into(), |(w, o, e)| {
                                        format!("#{w} as {o} until t={}s", self.secs(*e))
                                    }),
                                ),
                            ));
                        }
                        orphaned.remove(service);
                    }
                    _ => {}
                }
            }
        }
    }

    /// Verified, succeeded, retryable.
    fn check_serving(&self, v: &mut Vec<(Prop, String)>) {
        let d = self.replicas();
        let mut verified: HashMap<ServiceId, Vec<RevisionId>> = HashMap::new();
        let mut current: HashMap<ServiceId, RevisionId> = HashMap::new();
        for e in &self.events {
            let Ev::Append {
                deployment,
                event,
                seen,
                ..
            } = &e.ev
            else {
                continue;
            };
            let JournalEvent::Finished { outcome } = event.as_ref() else {
                continue;
            };
            let Some(st) = self.statuses.get(deployment) else {
                continue;
            };
            let service = &st.spec.service;
            let known = verified.entry(service.clone()).or_default();
            if let Some(seen) = seen {
                match outcome {
                    Outcome::Succeeded => {
                        if !serves_alone(seen, &st.spec.target.id, d) {
                            v.push((
                                Prop::Succeeded,
                                format!(
                                    "{} ended succeeded at t={}s while the cluster ran {}",
                                    self.label(deployment),
                                    self.secs(e.at),
                                    describe(seen)
                                ),
                            ));
                        }
                    }
                    // A deployment aborted before it started never touched the cluster: what
                    // runs then is another deployment's doing.
                    Outcome::Failed { .. } if st.started_at.is_none() => {}
                    Outcome::RolledBack { .. } | Outcome::Failed { .. } => {
                        let ok = if seen.revisions.is_empty() {
                            known.is_empty()
                        } else {
                            seen.revisions.len() == 1
                                && known.contains(&seen.revisions[0].revision.id)
                                && serves_alone(seen, &seen.revisions[0].revision.id, d)
                        };
                        if !ok {
                            v.push((
                                Prop::Verified,
                                format!(
                                    "{} ended {:?} at t={}s while the cluster ran {}",
                                    self.label(deployment),
                                    outcome,
                                    self.secs(e.at),
                                    describe(seen)
                                ),
                            ));
                        }
                    }
                    Outcome::Frozen { .. } => {}
                }
            }
            let serving = match outcome {
                Outcome::Succeeded => Some(st.spec.target.id.clone()),
                Outcome::RolledBack { .. } => st.previous.as_ref().map(|p| p.id.clone()),
                _ => None,
            };
            if let Some(r) = serving {
                known.push(r.clone());
                current.insert(service.clone(), r);
            }
        }
        // The world's end: the last verified revision serves, alone and whole.
        for (service, observed) in &self.now_serving {
            let unfinished = self
                .statuses
                .values()
                .any(|st| &st.spec.service == service && !st.phase.is_terminal());
            if unfinished {
                continue;
            }
            let ok = match current.get(service) {
                Some(r) => serves_alone(observed, r, d),
                None => observed.revisions.is_empty(),
            };
            if !ok {
                v.push((
                    Prop::Verified,
                    format!(
                        "{service} at the end: the cluster runs {} but the last verified \
                         revision is {:?}",
                        describe(observed),
                        current.get(service)
                    ),
                ));
            }
        }
        for id in &self.order {
            let st = &self.statuses[id];
            if let Some(Outcome::Failed { reason }) = &st.outcome
                && st.started_at.is_some()
            {
                v.push((
                    Prop::Retryable,
                    format!(
                        "{} started and ended failed with only retryable faults in the world: \
                         {reason}",
                        self.label(id)
                    ),
                ));
            }
            if let Some(Outcome::Frozen { reason }) = &st.outcome {
                v.push((
                    Prop::Retryable,
                    format!("{} froze (policy is rollback): {reason}", self.label(id)),
                ));
            }
        }
    }

    /// The log's milestone entries for one deployment: (kind, history length, seen).
    fn milestones(&self, id: &DeploymentId) -> Vec<(&JournalEvent, usize, Option<&Observed>)> {
        self.events
            .iter()
            .filter_map(|e| match &e.ev {
                Ev::Append {
                    deployment,
                    event,
                    history: Some(h),
                    seen,
                    ..
                } if deployment == id => Some((event.as_ref(), *h, seen.as_ref())),
                _ => None,
            })
            .collect()
    }

    fn check_capacity(&self, v: &mut Vec<(Prop, String)>) {
        let d = self.replicas();
        for id in &self.order {
            let st = &self.statuses[id];
            let marks = self.milestones(id);
            let Some((_, start, Some(baseline))) = marks
                .iter()
                .find(|(e, _, _)| matches!(e, JournalEvent::Started { .. }))
            else {
                continue;
            };
            let history = &self.history[&st.spec.service];
            let end_of = |pred: &dyn Fn(&JournalEvent) -> bool| {
                marks
                    .iter()
                    .find(|(e, _, _)| pred(e))
                    .map_or(history.len(), |(_, h, _)| *h)
            };
            match &st.spec.strategy {
                StrategySpec::Rolling(spec) => {
                    let (_, unavailable) = spec.budgets(d);
                    let floor = baseline.total_ready().min(d - unavailable);
                    let end = end_of(&|e| e.is_terminal());
                    for snap in &history[*start..end.max(*start)] {
                        if snap.ready() < floor {
                            v.push((
                                Prop::RollingCapacity,
                                format!(
                                    "{} (rolling, {d} replicas, maxUnavailable {unavailable}, \
                                     {} ready at start): {} ready at t={}s: {:?}",
                                    self.label(id),
                                    baseline.total_ready(),
                                    snap.ready(),
                                    self.secs(snap.at),
                                    snap.revisions
                                ),
                            ));
                            break;
                        }
                    }
                }
                StrategySpec::BlueGreen(_) | StrategySpec::Canary(_) => {
                    let Some(stable) = &st.previous else {
                        continue;
                    };
                    if baseline.revision(&stable.id).map_or(0, |r| r.ready()) < d {
                        continue;
                    }
                    let end = end_of(&|e| {
                        matches!(
                            e,
                            JournalEvent::Promoted
                                | JournalEvent::RollbackStarted { .. }
                                | JournalEvent::Finished { .. }
                        )
                    });
                    for snap in &history[*start..end.max(*start)] {
                        let ready = snap
                            .revisions
                            .iter()
                            .filter(|r| r.0 == stable.id)
                            .map(|r| r.3)
                            .sum::<u32>();
                        if ready < d {
                            v.push((
                                Prop::StableCapacity,
                                format!(
                                    "{} ({}): stable {} has {ready}/{d} ready before promotion \
                                     at t={}s: {:?}",
                                    self.label(id),
                                    st.spec.strategy.name(),
                                    stable.label,
                                    self.secs(snap.at),
                                    snap.revisions
                                ),
                            ));
                            break;
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn check_journals(&self, v: &mut Vec<(Prop, String)>) {
        for (id, journal) in &self.journals {
            for (i, e) in journal.iter().enumerate() {
                if e.seq != i as u64 {
                    v.push((
                        Prop::Journal,
                        format!("{id}: entry {i} has sequence number {}", e.seq),
                    ));
                    break;
                }
            }
            if let Err(e) = DeploymentStatus::from_journal(journal) {
                v.push((Prop::Journal, format!("{id} does not load: {e}")));
            }
        }
        for id in &self.order {
            let terminal = self
                .statuses
                .get(id)
                .is_some_and(|st| st.phase.is_terminal());
            if terminal == self.active.contains(id) {
                v.push((
                    Prop::Journal,
                    format!(
                        "{id}: listed as {} but its journal says {}",
                        if terminal { "active" } else { "inactive" },
                        self.statuses
                            .get(id)
                            .map_or("nothing".into(), |s| s.phase.to_string())
                    ),
                ));
            }
        }
    }

    /// Every apply and driver journal write comes from the holder of the service's unexpired
    /// lease (for that deployment, where the write names one).
    fn check_single_driver(&self, v: &mut Vec<(Prop, String)>) {
        let mut grants: HashMap<String, (usize, String, Timestamp)> = HashMap::new();
        let mut reported = BTreeSet::new();
        for e in &self.events {
            let (who, service, deployment, what) = match &e.ev {
                Ev::Grant {
                    who,
                    key,
                    owner,
                    expires,
                } => {
                    grants.insert(key.clone(), (*who, owner.clone(), *expires));
                    continue;
                }
                Ev::Release { key, owner } => {
                    if grants.get(key).is_some_and(|(_, o, _)| o == owner) {
                        grants.remove(key);
                    }
                    continue;
                }
                Ev::Apply { who, service } => (*who, service.clone(), None, "applied".to_string()),
                Ev::Append {
                    who,
                    deployment,
                    seq,
                    event,
                    ..
                } => {
                    let operator = matches!(
                        event.as_ref(),
                        JournalEvent::Created { .. }
                            | JournalEvent::Paused { .. }
                            | JournalEvent::Resumed { .. }
                            | JournalEvent::AbortRequested { .. }
                            | JournalEvent::Approved { .. }
                    );
                    let Some(st) = self.statuses.get(deployment) else {
                        continue;
                    };
                    // A deployment aborted before it started ends without the lease: it
                    // never touched the environment.
                    let started = self.journals[deployment]
                        .iter()
                        .any(|j| j.seq < *seq && matches!(j.event, JournalEvent::Started { .. }));
                    let starts = matches!(event.as_ref(), JournalEvent::Started { .. });
                    if operator || !(started || starts) {
                        continue;
                    }
                    // The end of a deployment may be written by the driver of the service's
                    // next deployment (which supersedes a stalled rollback): it needs the
                    // service's lease, not necessarily this deployment's.
                    let own = !event.is_terminal();
                    (
                        *who,
                        st.spec.service.clone(),
                        own.then(|| deployment.clone()),
                        match event.as_ref() {
                            JournalEvent::Finished { outcome } => {
                                format!("wrote finished #{seq} of {deployment} ({outcome:?})")
                            }
                            other => format!("wrote {} #{seq} of {deployment}", other.kind()),
                        },
                    )
                }
                _ => continue,
            };
            let key = format!("{service}/{ENV}");
            let fine = grants.get(&key).is_some_and(|(holder, owner, expires)| {
                *holder == who
                    && e.at <= *expires
                    && deployment
                        .as_ref()
                        .is_none_or(|d| !owner.contains('/') || owner.ends_with(&format!("/{d}")))
            });
            if !fine && reported.insert((service.clone(), who)) {
                let holder = grants.get(&key).map_or("nobody".into(), |(w, o, x)| {
                    format!("#{w} as {o} until t={}s", self.secs(*x))
                });
                v.push((
                    Prop::SingleDriver,
                    format!(
                        "#{who} {} {what} for {service} at t={}s while the lease was held by \
                         {holder}",
                        self.names[who],
                        self.secs(e.at)
                    ),
                ));
            }
        }
    }

    fn check_justified(&self, v: &mut Vec<(Prop, String)>) {
        let outages = self.outages();
        let unattended = self.unattended();
        let overlaps = |list: &[(Timestamp, Timestamp)], s: Timestamp, e: Timestamp| {
            list.iter().any(|(a, b)| *a <= e && s <= *b)
        };
        for id in &self.order {
            let st = &self.statuses[id];
            let Some((cause, reason)) = &st.rollback else {
                continue;
            };
            let journal = &self.journals[id];
            let at = journal
                .iter()
                .find(|e| matches!(e.event, JournalEvent::RollbackStarted { .. }))
                .map_or(self.end, |e| e.at);
            let from = st.started_at.unwrap_or(st.created_at);
            let health = self.world.health(&st.spec.service, &st.spec.target.label);
            let justified = match cause {
                RollbackCause::Aborted => true,
                RollbackCause::FailFast => health.broken(),
                RollbackCause::ProgressDeadline => {
                    health.broken()
                        || overlaps(&outages, from, at)
                        || overlaps(&unattended, from, at)
                }
                _ => false,
            };
            if !justified {
                v.push((
                    Prop::Justified,
                    format!(
                        "{} ({}, target {:?}) rolled back at t={}s for {cause}: {reason}",
                        self.label(id),
                        st.spec.strategy.name(),
                        health,
                        self.secs(at)
                    ),
                ));
            }
        }
    }
}

async fn gather<'w>(run: &Run<'w>) -> Evidence<'w> {
    let order = run.all_deployments().await;
    let mut journals = BTreeMap::new();
    let mut statuses = BTreeMap::new();
    for id in &order {
        let journal = run
            .reader
            .load(id)
            .await
            .expect("load journal")
            .expect("listed deployment has a journal");
        if let Ok(st) = DeploymentStatus::from_journal(&journal) {
            statuses.insert(id.clone(), st);
        }
        journals.insert(id.clone(), journal);
    }
    let active = run
        .reader
        .list_active()
        .await
        .expect("list active")
        .into_iter()
        .collect();
    let mut history = HashMap::new();
    let mut now_serving = HashMap::new();
    for name in SERVICES.iter().take(run.world.services) {
        let service = ServiceId::new(*name).expect("service");
        history.insert(service.clone(), run.sim.history(&service));
        now_serving.insert(service.clone(), run.sim.peek(&service));
    }
    // Deployments whose journal does not load are reported by the journal check; the others
    // are checked on what they say.
    let order = order
        .into_iter()
        .filter(|id| statuses.contains_key(id))
        .collect();
    Evidence {
        world: run.world,
        events: run.log.events(),
        journals,
        statuses,
        order,
        active,
        history,
        now_serving,
        names: run.incarnations.iter().map(|i| i.name.clone()).collect(),
        start: run.start,
        end: run.now(),
    }
}

/// Run one world to its end and check every property.
fn run(world: &World) -> Verdict {
    run_with(world, config(world.ttl()))
}

/// Run one world with orchestrators configured by `config`.
fn run_with(world: &World, config: OrchestratorConfig) -> Verdict {
    common::paused_runtime().block_on(async {
        let mut run = Run::new(world, config).await;
        // Every service starts with a verified v0, deployed through the first orchestrator.
        run.open(0, false).await;
        for s in 0..world.services {
            run.deploy(0, s, 0, None).await;
        }
        let first = run.created.clone();
        for id in &first {
            let orch = run.incarnations[0]
                .orch
                .as_ref()
                .expect("first orchestrator");
            let status = tokio::time::timeout(Duration::from_secs(3600), orch.wait(id))
                .await
                .expect("v0 ends")
                .expect("wait");
            assert_eq!(status.phase, Phase::Succeeded, "v0: {:?}", status.outcome);
        }
        for slot in 1..world.open {
            run.open(slot, false).await;
        }
        for (delay, action) in &world.schedule {
            tokio::time::sleep(Duration::from_millis(*delay)).await;
            run.act(action).await;
        }
        run.settle().await;
        let evidence = gather(&run).await;
        let violations = evidence.check();
        let mut trace = std::mem::take(&mut run.trace);
        // Who took each service's lease (renewals left out).
        let mut holders: HashMap<String, String> = HashMap::new();
        for e in &evidence.events {
            if let Ev::Grant {
                who,
                key,
                owner,
                expires,
            } = &e.ev
                && holders.insert(key.clone(), owner.clone()).as_ref() != Some(owner)
            {
                trace.push(format!(
                    "lease {key}: #{who} as {owner} from t={}s (until t={}s unless renewed)",
                    evidence.secs(e.at),
                    evidence.secs(*expires)
                ));
            }
        }
        for id in &evidence.order {
            let st = &evidence.statuses[id];
            let kinds: Vec<&str> = evidence.journals[id]
                .iter()
                .map(|e| e.event.kind())
                .collect();
            trace.push(format!(
                "{}: {} {:?} {:?} [{}]",
                evidence.label(id),
                st.phase,
                st.rollback,
                st.outcome,
                kinds.join(" ")
            ));
        }
        // Crash every orchestrator before the runtime goes.
        for slot in 0..world.slots {
            run.crash(slot);
        }
        Verdict { violations, trace }
    })
}

/// Fail if `world` violates any of `props`. For exploring past a known failure,
/// `WORLDS_IGNORE` (comma-separated substrings) ignores the violations whose text contains one.
fn check(world: &World, props: &[Prop]) -> std::result::Result<(), TestCaseError> {
    let verdict = run(world);
    let ignored: Vec<String> = std::env::var("WORLDS_IGNORE")
        .map(|v| {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let failed: Vec<String> = verdict
        .violations
        .iter()
        .filter(|(p, _)| props.contains(p))
        .filter(|(_, what)| !ignored.iter().any(|i| what.contains(i.as_str())))
        .map(|(p, what)| format!("  {p:?}: {what}"))
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    Err(TestCaseError::fail(format!(
        "{} violation(s):\n{}\ntrace:\n  {}",
        failed.len(),
        failed.join("\n"),
        verdict.trace.join("\n  ")
    )))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(48)))]

    #[test]
    fn worlds_end_and_orphans_are_adopted(world in world()) {
        check(&world, &[Prop::Ends, Prop::Adoption])?;
    }

    #[test]
    fn worlds_serve_only_verified_revisions(world in world()) {
        check(&world, &[Prop::Verified, Prop::Succeeded, Prop::Retryable])?;
    }

    #[test]
    fn worlds_keep_capacity(world in world()) {
        check(&world, &[Prop::RollingCapacity, Prop::StableCapacity])?;
    }

    #[test]
    fn worlds_keep_journals_whole_and_one_driver(world in world()) {
        check(&world, &[Prop::Journal, Prop::SingleDriver])?;
    }

    #[test]
    fn worlds_roll_back_only_for_a_cause(world in world()) {
        check(&world, &[Prop::Justified])?;
    }
}

// ---------------------------------------------------------------------------------------------
// The simulator's outage switch
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn an_unreachable_cluster_fails_every_call_retryably_and_keeps_serving() {
    use deploykit_core::{MetricQuery, Monitor, Revision, Traffic};
    use deploykit_testing::Op;
    let sim = SimCluster::new();
    let web = service_spec("web");
    let env = EnvironmentSpec::builder()
        .name(ENV)
        .kind(EnvironmentKind::Production)
        .build()
        .expect("environment");
    let v1 = Revision::new(&web, &env, artifact("web", "v1"), "v1").expect("revision");
    let v2 = Revision::new(&web, &env, artifact("web", "v2"), "v2").expect("revision");
    let one = |r: &Revision| {
        DesiredState::new(
            vec![RevisionTarget::new(r.clone(), 2)],
            Traffic::ByReadyInstances,
        )
    };
    sim.apply(&web.name, &one(&v1)).await.expect("apply");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let calls = sim.calls(Op::Apply);

    sim.set_unreachable(true);
    assert!(sim.is_unreachable());
    let errors = [
        sim.apply(&web.name, &one(&v2)).await.expect_err("apply"),
        sim.observe(&web.name).await.expect_err("observe"),
        sim.teardown(&web.name).await.expect_err("teardown"),
        sim.instance_health(&web.name, &v1.id)
            .await
            .expect_err("instance health"),
        sim.query(&MetricQuery::new(web.name.clone(), "error_rate"))
            .await
            .expect_err("query"),
    ];
    for e in &errors {
        assert!(e.is_retryable(), "not retryable: {e}");
        assert!(e.to_string().contains("unreachable") || e.chain().contains("unreachable"));
    }
    assert_eq!(
        sim.calls(Op::Apply),
        calls,
        "calls during an outage are not counted"
    );
    // Nothing changed: v1 still serves, and the oracle sees it through the outage.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let seen = sim.peek(&web.name);
    assert!(serves_alone(&seen, &v1.id, 2), "{}", describe(&seen));

    sim.set_unreachable(false);
    assert_eq!(sim.observe(&web.name).await.expect("observe"), seen);
    sim.apply(&web.name, &one(&v2)).await.expect("apply after");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(serves_alone(&sim.peek(&web.name), &v2.id, 2));
}

// ---------------------------------------------------------------------------------------------
// The checks catch what they are for
// ---------------------------------------------------------------------------------------------

fn props(verdict: &Verdict) -> BTreeSet<Prop> {
    verdict.violations.iter().map(|(p, _)| *p).collect()
}

/// Orchestrator #1 starts a canary and dies at 25 % of traffic; #0 lives on.
fn orphaned_canary() -> World {
    World {
        services: 1,
        replicas: 4,
        slots: 2,
        open: 2,
        health: vec![vec![Health::Healthy; 3]; 2],
        sqlite: false,
        ttl: 10,
        schedule: vec![
            (
                0,
                Action::Deploy {
                    via: 1,
                    service: 0,
                    label: 1,
                    strategy: Strat::Canary(vec![Step::Weight(25), Step::Pause(600)]),
                },
            ),
            (30_000, Action::Crash { slot: 1 }),
        ],
    }
}

#[test]
fn the_adoption_check_catches_a_live_orchestrator_that_never_adopts() {
    let world = orphaned_canary();
    let verdict = run_with(&world, without_adoption(world.ttl()));
    let found = props(&verdict);
    assert!(
        found.contains(&Prop::Adoption) && found.contains(&Prop::Ends),
        "{:?}\n{}",
        verdict.violations,
        verdict.trace.join("\n")
    );
}

#[test]
fn the_single_driver_check_catches_a_second_driver() {
    let mut world = orphaned_canary();
    world.schedule = vec![
        (
            0,
            Action::Deploy {
                via: 0,
                service: 0,
                label: 1,
                strategy: Strat::Canary(vec![Step::Weight(25), Step::Pause(60)]),
            },
        ),
        (10_000, Action::Intrude { via: 1, service: 0 }),
    ];
    let verdict = run(&world);
    assert_eq!(
        props(&verdict),
        BTreeSet::from([Prop::SingleDriver]),
        "{:?}\n{}",
        verdict.violations,
        verdict.trace.join("\n")
    );
    world.schedule.pop();
    let verdict = run(&world);
    assert!(verdict.violations.is_empty(), "{:?}", verdict.violations);
}

// ---------------------------------------------------------------------------------------------
// The smallest worlds found, one per failure class
// ---------------------------------------------------------------------------------------------

/// Run `world` with `config` and fail with the trace if it breaks any of `props`.
fn assert_holds(world: &World, config: OrchestratorConfig, props: &[Prop]) {
    let verdict = run_with(world, config);
    let broken: Vec<String> = verdict
        .violations
        .iter()
        .filter(|(p, _)| props.contains(p))
        .map(|(p, what)| format!("  {p:?}: {what}"))
        .collect();
    assert!(
        broken.is_empty(),
        "{}\ntrace:\n  {}",
        broken.join("\n"),
        verdict.trace.join("\n  ")
    );
}

/// One service (two replicas, every revision healthy) and two orchestrators.
fn small_world(ttl: u64, schedule: Vec<(u64, Action)>) -> World {
    World {
        services: 1,
        replicas: 2,
        slots: 2,
        open: 2,
        health: vec![vec![Health::Healthy; 3]; 2],
        sqlite: false,
        ttl,
        schedule,
    }
}

fn deploy(via: usize, label: usize, strategy: Strat) -> Action {
    Action::Deploy {
        via,
        service: 0,
        label,
        strategy,
    }
}

/// A canary of v1 driven by orchestrator `via` holds half the traffic; the API goes down, an
/// operator aborts (the rollback cannot act), v2 is requested through orchestrator 0, and the
/// API comes back after 15 minutes.
fn rollback_stalled_by_an_outage(via: usize) -> World {
    small_world(
        10,
        vec![
            (
                0,
                deploy(
                    via,
                    1,
                    Strat::Canary(vec![Step::Weight(50), Step::Approval]),
                ),
            ),
            (20_000, Action::Outage(true)),
            (0, Action::Abort { via: 0, dep: 0 }),
            (
                5_000,
                deploy(
                    0,
                    2,
                    Strat::Rolling {
                        surge: 1,
                        unavailable: 0,
                    },
                ),
            ),
            (900_000, Action::Outage(false)),
        ],
    )
}

/// B, still open: a rollback stalled only by an outage longer than the progress deadline is
/// "superseded" by the queued deployment and ends `failed` while v1 still takes 50 % of the
/// traffic (seen: `failed` at t=623 s with v0 50 %, v1 50 %; before the supersede rule it ended
/// `failed` by its own deadline). Expected: an unreachable backend is never terminal; the
/// rollback keeps retrying and ends rolled back, verified, once the API is back.
#[test]
fn minimal_a_rollback_stalled_by_an_outage_never_ends_failed_with_split_traffic() {
    let world = rollback_stalled_by_an_outage(0);
    assert_holds(
        &world,
        config(world.ttl()),
        &[Prop::Verified, Prop::Retryable],
    );
}

/// New: the superseding deployment's driver (orchestrator 0) writes the end of a rollback
/// whose service lease orchestrator 1 still holds and renews: two drivers act for one
/// deployment (seen: #0 writes `finished` of the rollback at t=623 s, #1's lease runs to
/// t=624 s). In a real deployment #1 may be between journaling and applying a step.
#[test]
fn minimal_only_the_lease_holder_ends_a_stalled_rollback() {
    let world = rollback_stalled_by_an_outage(1);
    assert_holds(&world, config(world.ttl()), &[Prop::SingleDriver]);
}

/// New (timing of G's fix): with a 5 s lease the orphan waits for the next 10 s adoption scan
/// (`adopt_interval` does not follow `lease_ttl`): orchestrator 1 dies at t=47.05 s holding the
/// canary's lease, orchestrator 0 takes it at t=60 s, 13 s later (more than 2 TTL + 2 polls).
#[test]
fn minimal_an_orphan_is_adopted_within_two_lease_ttls_with_a_short_lease() {
    let mut world = orphaned_canary();
    world.ttl = 5;
    world.schedule[1].0 = 45_050;
    assert_holds(&world, config(world.ttl()), &[Prop::Adoption]);
}

/// G (fixed): deployments requested through an orchestrator that dies at once stayed pending
/// forever although another orchestrator lived.
#[test]
fn minimal_g_deployments_requested_through_a_dying_orchestrator_end() {
    let world = small_world(
        10,
        vec![
            (
                0,
                deploy(
                    0,
                    0,
                    Strat::BlueGreen {
                        auto: false,
                        delay: 0,
                    },
                ),
            ),
            (
                0,
                deploy(
                    0,
                    0,
                    Strat::Rolling {
                        surge: 0,
                        unavailable: 0,
                    },
                ),
            ),
            (0, Action::Crash { slot: 0 }),
        ],
    );
    assert_holds(&world, config(world.ttl()), &[Prop::Ends, Prop::Adoption]);
}

/// G (fixed): a canary whose orchestrator dies at 25 % is taken over by the live one.
#[test]
fn minimal_g_a_live_orchestrator_adopts_an_orphaned_canary() {
    let world = orphaned_canary();
    assert_holds(&world, config(world.ttl()), &[Prop::Ends, Prop::Adoption]);
}

/// I (fixed): a canary of the revision that serves shrank the stable revision to the canary's
/// size.
#[test]
fn minimal_i_a_canary_of_the_serving_revision_keeps_its_capacity() {
    let world = small_world(
        10,
        vec![(0, deploy(0, 0, Strat::Canary(vec![Step::Pause(1)])))],
    );
    assert_holds(&world, config(world.ttl()), &[Prop::StableCapacity]);
}

/// I (fixed): a blue-green redeploy of the serving revision with manual promotion stuck and
/// rolled back at the progress deadline.
#[test]
fn minimal_i_a_blue_green_redeploy_of_the_serving_revision_is_not_rolled_back() {
    let world = small_world(
        10,
        vec![
            (
                0,
                deploy(
                    0,
                    3,
                    Strat::Rolling {
                        surge: 0,
                        unavailable: 1,
                    },
                ),
            ),
            (
                0,
                deploy(
                    0,
                    3,
                    Strat::BlueGreen {
                        auto: false,
                        delay: 0,
                    },
                ),
            ),
        ],
    );
    assert_holds(&world, config(world.ttl()), &[Prop::Justified]);
}

/// H (fixed): a 20-minute canary pause was rolled back at the 600 s progress deadline.
#[test]
fn minimal_h_a_long_timed_pause_is_not_a_stall() {
    let world = small_world(
        10,
        vec![(
            0,
            deploy(
                0,
                1,
                Strat::Canary(vec![Step::Weight(20), Step::Pause(1200)]),
            ),
        )],
    );
    assert_holds(&world, config(world.ttl()), &[Prop::Justified]);
}
