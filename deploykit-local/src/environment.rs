//! [`LocalEnvironment`]: an [`Environment`] and [`Monitor`] of supervised processes behind the
//! built-in [`Proxy`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deploykit_core::environment::proportional_weights;
use deploykit_core::secrets::{self, ExposeSecret, ResolvedSecrets, SecretProvider};
use deploykit_core::{
    Clock, DesiredState, Environment, Error, FailureKind, HealthChecks, InstanceFailure,
    InstanceObservation, MetricQuery, Monitor, Observed, ProbeAction, Result, Revision, RevisionId,
    RevisionObservation, Sample, ServiceId, SystemClock, Traffic, TrafficPolicy,
};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::logs::{InstanceLog, LogChunk, LogOwner, LogPolicy};
use crate::probe::{HealthWatcher, LivenessCallback, ProbeTarget};
use crate::process::{ProcessSpec, ProcessState, RestartPolicy, Supervised};
use crate::proxy::{
    Group, HeaderMatch, MirrorMatch, Proxy, ProxyConfig, Route, RoutingTable, Upstream, UpstreamTls,
};
use crate::state::{InstanceRow, LocalState};

/// How a [`LocalEnvironment`] runs: where it keeps state and logs, where its proxy listens, and
/// its timeouts.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LocalOptions {
    /// Directory for the state file (`local.db`) and instance logs (`logs/`).
    pub state_dir: PathBuf,
    /// Where the proxy listens (default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// Working directory of instances and command probes; relative programs
    /// (`./target/debug/app`) are resolved against it (default: the current directory).
    pub workdir: PathBuf,
    /// The service requests for an unknown host go to (default: the only service, if there is
    /// exactly one).
    pub default_service: Option<ServiceId>,
    /// How long a stopping instance gets between SIGTERM and SIGKILL (default 10 s).
    pub grace: Duration,
    /// How long a removed instance may keep finishing in-flight requests before it is stopped
    /// anyway (default 30 s).
    pub drain_timeout: Duration,
    /// Restart backoff and crash-loop detection.
    pub restart: RestartPolicy,
    /// Log rotation.
    pub log: LogPolicy,
    /// The environment's name, carried by its log records (default `local`).
    pub environment: String,
    /// Proxy limits and timeouts.
    pub proxy: ProxyConfig,
    /// Where revisions' secret references are resolved, once per revision when its first
    /// instance starts (as a kubelet resolves `secretKeyRef`), by
    /// [`deploykit_core::secrets::resolve`]'s rules: without a provider, for a missing key, or
    /// for a version that no longer matches the revision's pin, its instances fail with a
    /// configuration error naming the variable and the key.
    pub secrets: Option<Arc<dyn SecretProvider>>,
}

impl LocalOptions {
    /// Defaults, keeping state in `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        LocalOptions {
            state_dir: state_dir.into(),
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            workdir: PathBuf::from("."),
            default_service: None,
            grace: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            restart: RestartPolicy::default(),
            log: LogPolicy::default(),
            environment: "local".into(),
            proxy: ProxyConfig::default(),
            secrets: None,
        }
    }

    /// Resolve secret references through `provider`.
    pub fn secrets(mut self, provider: Arc<dyn SecretProvider>) -> Self {
        self.secrets = Some(provider);
        self
    }

    /// Where the proxy listens (`127.0.0.1:0` picks a free port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// The environment's name, carried by its log records.
    pub fn environment(mut self, name: impl Into<String>) -> Self {
        self.environment = name.into();
        self
    }

    /// The instances' working directory.
    pub fn workdir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.workdir = dir.into();
        self
    }

    /// The service that answers requests for any other host.
    pub fn default_service(mut self, service: ServiceId) -> Self {
        self.default_service = Some(service);
        self
    }

    /// SIGTERM-to-SIGKILL grace period.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// How long removed instances may drain.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Restart policy.
    pub fn restart(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }

    /// Proxy configuration.
    pub fn proxy(mut self, config: ProxyConfig) -> Self {
        self.proxy = config;
        self
    }
}

/// One machine as a deploy target: each revision's instances are child processes (each in its
/// own process group, told its port in `PORT`), supervised and restarted with backoff, probed
/// by their health checks, and reached through a built-in reverse proxy whose routing table is
/// swapped atomically when weights or readiness change.
///
/// Services are reachable at the proxy as `<service>.localhost` (any other host goes to the
/// default service), a blue-green preview route as `preview.<service>.localhost`, and the
/// orchestrator's preview environments (services named `<service>-preview-<branch>`) as
/// `<service>-preview-<branch>.localhost`.
///
/// State (the desired state of each service and which process runs which instance) is kept
/// in `<state_dir>/local.db`: a new `LocalEnvironment` on the same directory adopts the
/// instances that are still running.
///
/// ```no_run
/// # async fn f() -> deploykit_core::Result<()> {
/// use std::sync::Arc;
/// use deploykit_core::{EnvironmentKind, EnvironmentSpec, Orchestrator};
/// use deploykit_sqlite::SqliteStore;
/// use deploykit_local::{LocalEnvironment, LocalOptions};
///
/// let local = LocalEnvironment::open(LocalOptions::new(".deploykit")).await?;
/// let production = EnvironmentSpec::builder()
///     .name("production").kind(EnvironmentKind::Production).replicas(2).build()?;
/// let orchestrator = Orchestrator::builder(SqliteStore::open(".deploykit/deploykit.db").await?)
///     .environment_with_monitor(production, Arc::new(local.clone()), Arc::new(local.clone()))
///     .open()
///     .await?;
/// println!("serving on http://{}", local.proxy_addr());
/// # let _ = orchestrator; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct LocalEnvironment {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    options: LocalOptions,
    proxy: Proxy,
    state: Arc<LocalState>,
    services: Mutex<BTreeMap<ServiceId, ServiceState>>,
    apply_lock: tokio::sync::Mutex<()>,
    changed: Arc<Notify>,
    stopping: Mutex<Vec<JoinHandle<()>>>,
    router: Mutex<Option<JoinHandle<()>>>,
    /// Where the proxy sends every request instead of this environment's instances (after a
    /// failover to a standby), saved with the state.
    forward: Mutex<Option<Upstream>>,
}

/// The state's keys for [`LocalEnvironment::forward_to`]: the address, and what to trust
/// when the proxy there serves TLS.
const FORWARD: &str = "forward";
const FORWARD_TRUST: &str = "forward_trust";

#[derive(Debug, Default)]
struct ServiceState {
    traffic: Traffic,
    revisions: Vec<RevisionState>,
    next_instance: u64,
}

#[derive(Debug)]
struct RevisionState {
    revision: Arc<Revision>,
    desired: u32,
    instances: Vec<Instance>,
    /// Its secret variables, resolved once for all its instances (`None`: not yet).
    secrets: Option<Resolved>,
}

#[derive(Debug)]
struct Instance {
    name: Arc<str>,
    port: u16,
    run: Result<Running, String>,
}

#[derive(Debug)]
struct Running {
    process: Supervised,
    health: HealthWatcher,
    link: JoinHandle<()>,
}

/// Whether an instance may get requests: its process runs and its readiness checks pass.
fn routable(process: &Supervised, health: &HealthWatcher) -> bool {
    matches!(process.state(), ProcessState::Running { .. }) && health.health().ready
}

impl Instance {
    fn ready(&self) -> bool {
        match &self.run {
            Ok(r) => routable(&r.process, &r.health),
            Err(_) => false,
        }
    }

    /// What the instance looks like to a planner. Evidence of a broken revision comes first: a
    /// crash loop, a process that could not start, or any run that ended without being asked
    /// to within the crash window (an exit, a restart for failing liveness) — reported from
    /// the first one, so an instance that exits seconds after passing readiness is seen at once
    /// and for the whole window, not only once it has exited three times. Then the probes'
    /// findings (readiness failing means "not ready yet").
    fn observation(&self) -> InstanceObservation {
        let (restarts, failure) = match &self.run {
            Err(reason) => (
                0,
                Some(InstanceFailure::new(FailureKind::Configuration, reason)),
            ),
            Ok(r) => {
                let state = r.process.state();
                let failure = match state {
                    ProcessState::CrashLooping { reason, .. } => {
                        Some(InstanceFailure::new(FailureKind::CrashLoop, reason))
                    }
                    ProcessState::Failed { reason } => {
                        Some(InstanceFailure::new(FailureKind::Configuration, reason))
                    }
                    ProcessState::Stopped { .. } => None,
                    ProcessState::Running { .. } | ProcessState::BackingOff { .. } => {
                        match r.process.unplanned_ends() {
                            Some(ends) if ends.unhealthy => Some(InstanceFailure::new(
                                FailureKind::Liveness,
                                ends.to_string(),
                            )),
                            Some(ends) => Some(InstanceFailure::new(
                                FailureKind::CrashLoop,
                                ends.to_string(),
                            )),
                            // Between an exit and its restart the probes only echo the exit.
                            None if matches!(state, ProcessState::BackingOff { .. }) => None,
                            None => r
                                .health
                                .health()
                                .failure
                                .map(|(kind, reason)| InstanceFailure::new(kind, reason)),
                        }
                    }
                };
                (r.process.restarts(), failure)
            }
        };
        InstanceObservation::new(self.name.clone(), self.ready(), restarts, failure)
    }
}

impl LocalEnvironment {
    /// Open the environment: create the state directory, bind the proxy, and adopt the
    /// instances an earlier `LocalEnvironment` on the same directory left running (those whose
    /// process is gone are started again; those no longer wanted are stopped).
    ///
    /// Traffic keeps flowing through the adoption: an adopted instance whose process is still
    /// running and that was ready when last recorded is routed to from the start (its probes
    /// then run as usual and take it out if they fail), and the proxy accepts connections only
    /// once the adopted instances are in its table.
    pub async fn open(options: LocalOptions) -> Result<LocalEnvironment> {
        std::fs::create_dir_all(options.state_dir.join("logs")).map_err(|e| {
            Error::backend(
                format!("create {}", options.state_dir.display()),
                e.to_string(),
            )
        })?;
        let state = Arc::new(LocalState::open(&options.state_dir.join("local.db"))?);
        let forward = match state.setting(FORWARD)? {
            Some(addr) => {
                let to = addr.parse::<SocketAddr>().map_err(|e| Error::Corrupt {
                    what: format!(
                        "the forward address {addr:?} in the local state in {}",
                        options.state_dir.display()
                    ),
                    source: Box::new(e),
                })?;
                let trust = state.setting(FORWARD_TRUST)?;
                Some(forward_upstream(to, trust.as_deref())?)
            }
            None => None,
        };
        // Paused until the adopted instances are in the table: a request arriving meanwhile
        // waits instead of getting the empty table's 503.
        let proxy = Proxy::bind_paused(options.listen, options.proxy.clone())
            .await
            .map_err(|e| {
                Error::backend(
                    format!("bind the proxy to {}", options.listen),
                    e.to_string(),
                )
            })?;
        let env = LocalEnvironment {
            inner: Arc::new(Inner {
                options,
                proxy,
                state,
                services: Mutex::new(BTreeMap::new()),
                apply_lock: tokio::sync::Mutex::new(()),
                changed: Arc::new(Notify::new()),
                stopping: Mutex::new(Vec::new()),
                router: Mutex::new(None),
                forward: Mutex::new(forward),
            }),
        };
        env.adopt().await?;
        let router = tokio::spawn(route_on_change(Arc::downgrade(&env.inner)));
        *lock(&env.inner.router) = Some(router);
        env.inner.update_routes();
        env.inner.proxy.resume();
        Ok(env)
    }

    /// Where the proxy listens.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.inner.proxy.local_addr()
    }

    /// Send every request the proxy gets to `to` (another environment's proxy: the standby
    /// that took over) instead of this environment's instances, or (`None`) serve them here
    /// again. When the proxy at `to` serves TLS, `trust` is the certificate (PEM) to trust
    /// for it ([`ProxyTls::trust_pem`](crate::proxy::ProxyTls::trust_pem) of that proxy) and
    /// requests are forwarded over TLS, checked against it. Saved with the state, so a daemon
    /// started again on this directory (the old primary coming back) keeps forwarding instead
    /// of serving from its fenced database. The instances keep running either way.
    pub fn forward_to(&self, to: Option<SocketAddr>, trust: Option<&str>) -> Result<()> {
        if to == Some(self.proxy_addr()) {
            return Err(Error::invalid(
                "forward",
                format!(
                    "{} is this proxy's own address: it would forward to itself",
                    self.proxy_addr()
                ),
            ));
        }
        let upstream = to.map(|to| forward_upstream(to, trust)).transpose()?;
        let trust = to.and(trust);
        self.inner.state.set_setting(FORWARD_TRUST, trust)?;
        self.inner
            .state
            .set_setting(FORWARD, to.map(|a| a.to_string()).as_deref())?;
        *lock(&self.inner.forward) = upstream;
        self.inner.update_routes();
        Ok(())
    }

    /// Where the proxy forwards every request (see [`LocalEnvironment::forward_to`]).
    pub fn forwarding(&self) -> Option<SocketAddr> {
        lock(&self.inner.forward).as_ref().map(|u| u.addr)
    }

    /// When the proxy serves TLS: the certificate (PEM) a client trusts to reach it.
    pub fn proxy_trust(&self) -> Option<String> {
        self.inner
            .options
            .proxy
            .tls
            .as_ref()
            .and_then(|tls| tls.trust_pem().map(str::to_owned))
    }

    /// The proxy, e.g. for its per-revision statistics.
    pub fn proxy(&self) -> &Proxy {
        &self.inner.proxy
    }

    /// The last `max_bytes` of an instance's log (stdout and stderr; from the end of the last
    /// rotated file too, if the current one holds fewer). An instance that has no log (no
    /// such instance ever ran here) is [`Error::NotFound`].
    pub fn logs(&self, instance: &str, max_bytes: usize) -> Result<String> {
        let log = self.inner.existing_log(instance)?;
        log.tail(max_bytes)
            .map_err(|e| read_error(instance, log.path(), &e))
    }

    /// A piece of an instance's log file by byte offset, for following it: see
    /// [`InstanceLog::chunk`] (`from = None`: its last `max_bytes`; `Some(offset)`: from
    /// `offset`, or from 0 again with `truncated` set if the file was rotated). An instance
    /// that has no log (no such instance ever ran here) is [`Error::NotFound`].
    pub fn log_chunk(
        &self,
        instance: &str,
        from: Option<u64>,
        max_bytes: usize,
    ) -> Result<LogChunk> {
        let log = self.inner.existing_log(instance)?;
        log.chunk(from, max_bytes)
            .map_err(|e| read_error(instance, log.path(), &e))
    }

    /// The services this environment runs.
    pub fn services(&self) -> Vec<ServiceId> {
        lock(&self.inner.services).keys().cloned().collect()
    }

    /// Wait until every instance removed so far has drained and stopped.
    pub async fn wait_stopped(&self) {
        let pending: Vec<JoinHandle<()>> = std::mem::take(&mut *lock(&self.inner.stopping));
        for handle in pending {
            let _ = handle.await;
        }
    }

    /// Stop routing and supervising. With `stop_instances`, every instance is drained and
    /// stopped and the state forgets them; without, they keep running for the next
    /// `LocalEnvironment` on the same directory to adopt.
    pub async fn shutdown(&self, stop_instances: bool) {
        if let Some(router) = lock(&self.inner.router).take() {
            router.abort();
        }
        if stop_instances {
            for service in self.services() {
                let _ = self.teardown(&service).await;
            }
        } else {
            let services = std::mem::take(&mut *lock(&self.inner.services));
            for state in services.into_values() {
                for rev in state.revisions {
                    for instance in rev.instances {
                        // Recorded for the next controller, which routes at once to those
                        // that were ready (the link task records changes, but may lag).
                        let ready = instance.ready();
                        if let Ok(run) = instance.run {
                            run.link.abort();
                            let _ = self.inner.state.set_ready(&instance.name, ready);
                            run.health.stop();
                            run.process.detach();
                        }
                    }
                }
            }
        }
        self.wait_stopped().await;
        self.inner.proxy.shutdown().await;
    }

    /// Rebuild the in-memory state from the state file: adopt the processes still running,
    /// restart those that are gone, and stop those no longer wanted.
    async fn adopt(&self) -> Result<()> {
        let inner = &self.inner;
        let rows = inner.state.instances()?;
        let saved = inner.state.services()?;
        let mut resolved = BTreeMap::new();
        for (_, desired) in &saved {
            for target in &desired.revisions {
                if !target.revision.config.secrets.is_empty() {
                    let secrets = self.resolve_secrets(&target.revision).await;
                    resolved.insert(target.revision.id.clone(), secrets);
                }
            }
        }
        let mut services = lock(&inner.services);
        for (service, desired) in saved {
            let mut st = ServiceState {
                traffic: desired.traffic.clone(),
                ..ServiceState::default()
            };
            for target in &desired.revisions {
                st.revisions.push(RevisionState {
                    revision: target.revision.clone(),
                    desired: target.replicas,
                    instances: Vec::new(),
                    secrets: resolved.remove(&target.revision.id),
                });
            }
            services.insert(service, st);
        }
        for row in rows {
            let wanted = services.get_mut(&row.service).and_then(|st| {
                let next = &mut st.next_instance;
                *next = (*next).max(instance_number(&row.name).map_or(0, |n| n + 1));
                st.revisions.iter_mut().find(|r| {
                    r.revision.id == row.revision && (r.instances.len() as u32) < r.desired
                })
            });
            match wanted {
                Some(rev) => {
                    let instance = inner.start_instance(
                        &row.service,
                        &rev.revision,
                        &row.name,
                        row.port,
                        row.pid.map(|pid| Adopt {
                            pid,
                            was_ready: row.ready,
                        }),
                        rev.secrets.clone(),
                    );
                    rev.instances.push(instance);
                }
                None => {
                    // Not wanted any more (the controller died while removing it): stop it.
                    if let Some(pid) = row.pid.filter(|p| crate::process::alive(*p)) {
                        let spec = inner.process_spec_for_adoption(&row)?;
                        let process = Supervised::adopt(spec, inner.options.restart.clone(), pid);
                        inner.stop_later(row.name.clone(), process);
                    } else {
                        inner.state.remove_instance(&row.name)?;
                    }
                }
            }
        }
        // Instances the state file lost track of are started again.
        for (service, st) in services.iter_mut() {
            for idx in 0..st.revisions.len() {
                inner.scale_up(service, st, idx)?;
            }
        }
        Ok(())
    }
}

/// A process left running by an earlier controller, as its state file recorded it.
#[derive(Clone, Copy, Debug)]
struct Adopt {
    pid: u32,
    /// It was ready for routing when last recorded.
    was_ready: bool,
}

/// A revision's secret variables (values are exposed only into an instance's environment), or
/// why they could not be resolved.
type Resolved = std::result::Result<Arc<ResolvedSecrets>, String>;

fn instance_number(name: &str) -> Option<u64> {
    name.rsplit('-').next()?.parse().ok()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A free loopback port for an instance, below Linux's default ephemeral range (32768–60999)
/// so that no outgoing connection can take it while the instance starts, nor connect to
/// itself on it; the OS's choice if none of a few random picks is free.
fn free_port() -> std::io::Result<u16> {
    use std::hash::{BuildHasher, RandomState};
    let random = RandomState::new();
    for attempt in 0..64u32 {
        let port = 20_000 + (random.hash_one(attempt) % 12_000) as u16;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// A log that could not be read: [`Error::NotFound`] if it is gone.
fn read_error(instance: &str, path: &Path, e: &std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        return Error::not_found(format!("log of instance {instance}"));
    }
    Error::backend(format!("read {}", path.display()), e.to_string())
}

impl LocalEnvironment {
    /// Where instance logs are kept, and how they are rotated.
    pub(crate) fn log_files(&self) -> (PathBuf, &LocalOptions) {
        (self.inner.log_dir(), &self.inner.options)
    }
}

impl Inner {
    fn log_dir(&self) -> PathBuf {
        self.options.state_dir.join("logs")
    }

    /// The log of `instance`, which must exist: [`Error::NotFound`] naming the instance if it
    /// does not, [`Error::InvalidSpec`] for a name no instance can have.
    fn existing_log(&self, instance: &str) -> Result<InstanceLog> {
        let dir = self.log_dir();
        match InstanceLog::existing(&dir, instance, self.options.log.clone()) {
            Ok(Some(log)) => Ok(log),
            Ok(None) => Err(Error::not_found(format!("log of instance {instance}"))),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                Err(Error::invalid("instance", e.to_string()))
            }
            Err(e) => Err(Error::backend(
                format!(
                    "look for the log of instance {instance} in {}",
                    dir.display()
                ),
                e.to_string(),
            )),
        }
    }

    fn program(&self, program: &str) -> String {
        let path = Path::new(program);
        if path.is_relative() && program.contains('/') {
            self.options
                .workdir
                .join(path)
                .to_string_lossy()
                .into_owned()
        } else {
            program.to_string()
        }
    }

    fn process_spec(
        &self,
        service: &ServiceId,
        revision: &Revision,
        name: &str,
        port: u16,
        secrets: &ResolvedSecrets,
    ) -> std::result::Result<ProcessSpec, String> {
        let Some((program, args)) = revision.config.command.split_first() else {
            return Err(format!(
                "service {service} has no command to run: set `command` in its spec"
            ));
        };
        let log = InstanceLog::open(&self.log_dir(), name, self.options.log.clone())
            .and_then(|log| {
                log.set_owner(&LogOwner {
                    service: service.to_string(),
                    revision: revision.id.to_string(),
                })?;
                Ok(log)
            })
            .map_err(|e| format!("cannot open the log of {name}: {e}"))?
            .redacting(secrets.values().map(|value| value.expose_secret()))
            .map_err(|e| format!("cannot open the log of {name}: {e}"))?;
        let mut env = revision.config.variables.clone();
        env.extend(
            secrets
                .iter()
                .map(|(name, value)| (name.clone(), value.expose_secret().to_string())),
        );
        env.insert("PORT".into(), port.to_string());
        env.insert("DEPLOYKIT_SERVICE".into(), service.to_string());
        env.insert("DEPLOYKIT_REVISION".into(), revision.id.to_string());
        env.insert("DEPLOYKIT_INSTANCE".into(), name.to_string());
        Ok(ProcessSpec {
            name: name.to_string(),
            program: self.program(program),
            args: args.to_vec(),
            env,
            cwd: Some(self.options.workdir.clone()),
            log,
        })
    }

    fn process_spec_for_adoption(&self, row: &InstanceRow) -> Result<ProcessSpec> {
        let log = InstanceLog::open(&self.log_dir(), &row.name, self.options.log.clone())
            .and_then(|log| {
                log.set_owner(&LogOwner {
                    service: row.service.to_string(),
                    revision: row.revision.to_string(),
                })?;
                Ok(log)
            })
            .map_err(|e| Error::backend(format!("open the log of {}", row.name), e.to_string()))?;
        Ok(ProcessSpec {
            name: row.name.clone(),
            program: "true".into(),
            args: Vec::new(),
            env: BTreeMap::new(),
            cwd: None,
            log,
        })
    }

    /// Start (or, with `adopt`, adopt) one instance and its health watcher. `secrets` are the
    /// resolved secret variables (`None`: resolve nothing, the revision has none or they
    /// could not be resolved and `run` carries why).
    ///
    /// An adopted process that is still the one recorded, and was recorded ready, is routable
    /// at once (its probes then go on as usual), so a restarted controller keeps serving
    /// through adoption; one that is gone is started again, not ready until its probes pass.
    fn start_instance(
        &self,
        service: &ServiceId,
        revision: &Arc<Revision>,
        name: &str,
        port: u16,
        adopt: Option<Adopt>,
        secrets: Option<Resolved>,
    ) -> Instance {
        let name: Arc<str> = name.into();
        let secrets = match secrets {
            Some(s) => s,
            None if revision.config.secrets.is_empty() => Ok(Arc::default()),
            None => Err("secrets were not resolved".to_string()),
        };
        let run = secrets
            .and_then(|secrets| self.process_spec(service, revision, &name, port, &secrets))
            .map(|spec| {
                let env = spec.env.clone();
                let process = match adopt {
                    Some(a) => Supervised::adopt(spec, self.options.restart.clone(), a.pid),
                    None => Supervised::spawn(spec, self.options.restart.clone()),
                };
                // `Supervised::adopt` starts a new process when the recorded one is gone.
                let still_ready = adopt.is_some_and(|a| {
                    a.was_ready
                        && process.pid() == Some(a.pid)
                        && matches!(process.state(), ProcessState::Running { .. })
                });
                let row = InstanceRow {
                    name: name.to_string(),
                    service: service.clone(),
                    revision: revision.id.clone(),
                    port,
                    pid: process.pid(),
                    ready: still_ready,
                };
                let _ = self.state.put_instance(&row);
                let target = ProbeTarget {
                    port,
                    host_header: None,
                    cwd: Some(self.options.workdir.clone()),
                    env,
                };
                let restart = process.clone();
                let grace = self.options.grace;
                let checks = local_checks(&revision.config.health, revision.config.port);
                let on_liveness_failure: LivenessCallback = Arc::new(move |reason: String| {
                    let restart = restart.clone();
                    Box::pin(async move {
                        let why = format!("restarted after failing liveness: {reason}");
                        restart.restart_unhealthy(grace, why).await;
                    })
                });
                let health = if still_ready {
                    HealthWatcher::start_ready(checks, target, on_liveness_failure)
                } else {
                    HealthWatcher::start(checks, target, on_liveness_failure)
                };
                let link = tokio::spawn(link_instance(
                    process.clone(),
                    health.clone(),
                    self.changed.clone(),
                    row,
                    self.state.clone(),
                ));
                Running {
                    process,
                    health,
                    link,
                }
            });
        Instance { name, port, run }
    }

    /// Start instances of `st.revisions[idx]` until it has its desired count.
    fn scale_up(&self, service: &ServiceId, st: &mut ServiceState, idx: usize) -> Result<()> {
        let mut used: BTreeSet<u16> = st
            .revisions
            .iter()
            .flat_map(|r| r.instances.iter().map(|i| i.port))
            .collect();
        let revision = st.revisions[idx].revision.clone();
        while (st.revisions[idx].instances.len() as u32) < st.revisions[idx].desired {
            let n = st.next_instance;
            st.next_instance += 1;
            let name = format!("{service}-{}-{n}", &revision.id.as_str()[..8]);
            let port = loop {
                let p = free_port().map_err(|e| {
                    Error::backend("allocate a port for an instance", e.to_string())
                })?;
                if used.insert(p) {
                    break p;
                }
            };
            let secrets = st.revisions[idx].secrets.clone();
            let instance = self.start_instance(service, &revision, &name, port, None, secrets);
            st.revisions[idx].instances.push(instance);
        }
        Ok(())
    }

    /// Drain `name` out of the proxy, then stop its process and forget it, in the background.
    fn stop_later(&self, name: String, process: Supervised) {
        let proxy = self.proxy.clone();
        let drain = self.options.drain_timeout;
        let grace = self.options.grace;
        let state = self.state.clone();
        let handle = tokio::spawn(async move {
            proxy.drain(&name, drain).await;
            process.stop(grace).await;
            let _ = state.remove_instance(&name);
        });
        let mut stopping = lock(&self.stopping);
        stopping.retain(|h| !h.is_finished());
        stopping.push(handle);
    }

    fn remove_instance(&self, instance: Instance) {
        match instance.run {
            Ok(run) => {
                run.link.abort();
                run.health.stop();
                self.stop_later(instance.name.to_string(), run.process);
            }
            Err(_) => {
                let _ = self.state.remove_instance(&instance.name);
            }
        }
    }

    /// Recompute the routing table from desired traffic and current readiness and swap it in.
    fn update_routes(&self) {
        let services = lock(&self.services);
        let mut table = RoutingTable::default();
        for (service, st) in services.iter() {
            let route = route_of(st);
            if let Traffic::Routed(routes) = &st.traffic
                && let Some(preview) = &routes.preview
            {
                let upstreams = st
                    .revisions
                    .iter()
                    .find(|r| &r.revision.id == preview)
                    .map(ready_upstreams)
                    .unwrap_or_default();
                table.hosts.insert(
                    format!("preview.{service}.localhost"),
                    Route {
                        groups: vec![Group {
                            name: preview.to_string(),
                            weight: 100,
                            upstreams,
                            policy: policy_of(st, preview),
                        }],
                        header: None,
                        mirror: None,
                        rate_limit: None,
                    },
                );
            }
            table.hosts.insert(format!("{service}.localhost"), route);
        }
        let default = match &self.options.default_service {
            Some(s) => Some(s.clone()),
            None if services.len() == 1 => services.keys().next().cloned(),
            None => None,
        };
        table.default = default.and_then(|s| table.hosts.get(&format!("{s}.localhost")).cloned());
        drop(services);
        if let Some(to) = lock(&self.forward).clone() {
            // Every host, and anything else, goes to the environment that took over.
            let route = Route::weighted([Group::new("forward", 100, vec![to])]);
            for r in table.hosts.values_mut() {
                *r = route.clone();
            }
            table.default = Some(route);
        }
        if *self.proxy.table() != table {
            self.proxy.set_table(table);
        }
    }

    fn observe(&self, service: &ServiceId) -> Observed {
        // Bring the routes up to date first, so the traffic reported matches the readiness
        // reported (the router task might not have run since the last health change).
        self.update_routes();
        let services = lock(&self.services);
        let Some(st) = services.get(service) else {
            return Observed::default();
        };
        let revisions = st
            .revisions
            .iter()
            .map(|r| {
                RevisionObservation::new(
                    r.revision.clone(),
                    r.desired,
                    r.instances.iter().map(Instance::observation).collect(),
                )
            })
            .collect();
        let table = self.proxy.table();
        let served: Vec<(RevisionId, u32)> = table
            .hosts
            .get(&format!("{service}.localhost"))
            .map(|route| {
                route
                    .groups
                    .iter()
                    .filter(|g| g.weight > 0 && !g.upstreams.is_empty())
                    .filter_map(|g| Some((RevisionId::parse(&g.name).ok()?, g.weight)))
                    .collect()
            })
            .unwrap_or_default();
        Observed::new(revisions, proportional_weights(&served), st.traffic.clone())
    }
}

/// The upstream of a forward to the proxy at `to`: over TLS trusting `trust`, when given.
fn forward_upstream(to: SocketAddr, trust: Option<&str>) -> Result<Upstream> {
    let upstream = Upstream::new(format!("forward-{to}"), to);
    Ok(match trust {
        Some(pem) => upstream.with_tls(UpstreamTls::trusting(pem)?),
        None => upstream,
    })
}

fn ready_upstreams(rev: &RevisionState) -> Vec<Upstream> {
    rev.instances
        .iter()
        .filter(|i| i.ready())
        .map(|i| {
            Upstream::new(
                i.name.to_string(),
                SocketAddr::from((Ipv4Addr::LOCALHOST, i.port)),
            )
        })
        .collect()
}

/// The traffic policy of revision `id` of the service (the default when it is gone).
fn policy_of(st: &ServiceState, id: &RevisionId) -> TrafficPolicy {
    st.revisions
        .iter()
        .find(|r| &r.revision.id == id)
        .map(|r| r.revision.config.traffic.clone())
        .unwrap_or_default()
}

/// The route of a service: a group per revision, each sent under its own revision's traffic
/// policy; the rate limit, which is the route's, is that of the revision with the most
/// weight (the newest of equals), so a canary does not get a bucket of its own.
fn route_of(st: &ServiceState) -> Route {
    let mut route = weighted_route_of(st);
    route.rate_limit = route
        .groups
        .iter()
        .max_by_key(|g| g.weight)
        .and_then(|g| g.policy.rate_limit.clone());
    route
}

fn weighted_route_of(st: &ServiceState) -> Route {
    let groups: Vec<(Arc<Revision>, Vec<Upstream>)> = st
        .revisions
        .iter()
        .map(|r| (r.revision.clone(), ready_upstreams(r)))
        .collect();
    match &st.traffic {
        Traffic::Routed(routes) => Route {
            groups: groups
                .into_iter()
                .map(|(rev, upstreams)| Group {
                    name: rev.id.to_string(),
                    weight: routes.weight_of(&rev.id),
                    upstreams,
                    policy: rev.config.traffic.clone(),
                })
                .collect(),
            rate_limit: None,
            header: routes.header.as_ref().map(|h| HeaderMatch {
                name: h.name.clone(),
                value: h.value.clone(),
                group: h.revision.to_string(),
            }),
            mirror: routes.mirror.as_ref().map(|m| MirrorMatch {
                group: m.revision.to_string(),
                percent: m.percent.percent(),
            }),
        },
        _ => {
            let counts: Vec<(RevisionId, u32)> = groups
                .iter()
                .map(|(rev, ups)| (rev.id.clone(), ups.len() as u32))
                .collect();
            let weights = proportional_weights(&counts);
            Route {
                groups: groups
                    .into_iter()
                    .map(|(rev, upstreams)| Group {
                        name: rev.id.to_string(),
                        weight: weights.get(&rev.id).map_or(0, |w| w.percent()),
                        upstreams,
                        policy: rev.config.traffic.clone(),
                    })
                    .collect(),
                header: None,
                mirror: None,
                rate_limit: None,
            }
        }
    }
}

/// The revision's health checks as the local backend runs them: probes on the service's
/// declared port go to the instance's own port, and a service with a port but no readiness
/// probe gets a TCP readiness probe on it, so no request reaches an instance that is not
/// listening yet.
fn local_checks(checks: &HealthChecks, service_port: Option<u16>) -> HealthChecks {
    let mut checks = checks.clone();
    let local = |probe: &mut deploykit_core::Probe| match &mut probe.action {
        ProbeAction::Http { port, .. } | ProbeAction::Tcp { port } if *port == service_port => {
            *port = None;
        }
        _ => {}
    };
    for probe in [
        &mut checks.readiness,
        &mut checks.liveness,
        &mut checks.startup,
    ]
    .into_iter()
    .flatten()
    {
        local(probe);
    }
    if checks.readiness.is_none() && service_port.is_some() {
        checks.readiness = deploykit_core::Probe::builder()
            .action(ProbeAction::Tcp { port: None })
            .period(Duration::from_millis(500))
            .timeout(Duration::from_millis(250))
            .success_threshold(1)
            .failure_threshold(1)
            .build()
            .ok();
    }
    checks
}

/// Forward an instance's process and health changes to the router, reset its health probing
/// when the process restarts, and keep its pid and readiness in the state file (`row`: as
/// recorded), so that a restarted controller knows which instances it may route to at once.
async fn link_instance(
    process: Supervised,
    health: HealthWatcher,
    changed: Arc<Notify>,
    mut row: InstanceRow,
    state: Arc<LocalState>,
) {
    let mut process_rx = process.watch();
    let mut health_rx = health.watch();
    let mut pid = process.pid();
    loop {
        let mut new_pid = false;
        tokio::select! {
            r = process_rx.changed() => {
                if r.is_err() { return; }
                let now = process.pid();
                if now != pid {
                    if pid.is_some() {
                        health.reset();
                    }
                    pid = now;
                    new_pid = now.is_some();
                }
            }
            r = health_rx.changed() => {
                if r.is_err() { return; }
            }
        }
        let ready = routable(&process, &health);
        if new_pid {
            row.pid = pid;
            row.ready = ready;
            let _ = state.put_instance(&row);
        } else if ready != row.ready {
            row.ready = ready;
            let _ = state.set_ready(&row.name, ready);
        }
        changed.notify_one();
    }
}

/// Recompute routes whenever an instance's process or health changes, and every 250 ms anyway.
async fn route_on_change(inner: std::sync::Weak<Inner>) {
    loop {
        let Some(changed) = inner.upgrade().map(|i| i.changed.clone()) else {
            return;
        };
        let _ = tokio::time::timeout(Duration::from_millis(250), changed.notified()).await;
        match inner.upgrade() {
            Some(inner) => inner.update_routes(),
            None => return,
        }
    }
}

impl LocalEnvironment {
    /// The secret variables of `revision`, by [`secrets::resolve`]'s rules.
    async fn resolve_secrets(&self, revision: &Revision) -> Resolved {
        secrets::resolve(
            self.inner.options.secrets.as_deref(),
            &revision.config.secrets,
            "set LocalOptions::secrets (with the CLI: `secrets_file` in deploykit.toml)",
        )
        .await
        .map(Arc::new)
        .map_err(|e| e.chain())
    }
}

#[async_trait]
impl Environment for LocalEnvironment {
    async fn apply(&self, service: &ServiceId, desired: &DesiredState) -> Result<()> {
        let _apply = self.inner.apply_lock.lock().await;
        // Secrets of revisions about to start their first instances, resolved before anything
        // changes; a revision keeps the values it was resolved with for all its instances.
        let unresolved: Vec<Arc<Revision>> = {
            let services = lock(&self.inner.services);
            let resolved = |id: &RevisionId| {
                services.get(service).is_some_and(|st| {
                    st.revisions
                        .iter()
                        .any(|r| r.revision.id == *id && matches!(r.secrets, Some(Ok(_))))
                })
            };
            desired
                .revisions
                .iter()
                .filter(|t| t.replicas > 0 && !t.revision.config.secrets.is_empty())
                .filter(|t| !resolved(&t.revision.id))
                .map(|t| t.revision.clone())
                .collect()
        };
        let mut resolved = BTreeMap::new();
        for revision in unresolved {
            resolved.insert(revision.id.clone(), self.resolve_secrets(&revision).await);
        }
        self.inner.state.set_desired(service, Some(desired))?;
        let inner = &self.inner;
        let mut removed = Vec::new();
        {
            let mut services = lock(&inner.services);
            let st = services.entry(service.clone()).or_default();
            st.traffic = desired.traffic.clone();
            // Removals and scale-downs first: not-ready instances, then the newest, go first.
            st.revisions.retain_mut(|rev| {
                let want = desired.replicas_of(&rev.revision.id);
                rev.desired = want;
                while rev.instances.len() as u32 > want {
                    let idx = rev
                        .instances
                        .iter()
                        .rposition(|i| !i.ready())
                        .unwrap_or(rev.instances.len() - 1);
                    removed.push(rev.instances.remove(idx));
                }
                desired
                    .revisions
                    .iter()
                    .any(|t| t.revision.id == rev.revision.id)
            });
            // Swap the routes before anything drains, so removed instances get no new requests.
            drop(services);
            inner.update_routes();
            let mut services = lock(&inner.services);
            let st = services.entry(service.clone()).or_default();
            for target in &desired.revisions {
                let idx = match st
                    .revisions
                    .iter()
                    .position(|r| r.revision.id == target.revision.id)
                {
                    Some(i) => i,
                    None => {
                        st.revisions.push(RevisionState {
                            revision: target.revision.clone(),
                            desired: target.replicas,
                            instances: Vec::new(),
                            secrets: None,
                        });
                        st.revisions.len() - 1
                    }
                };
                if let Some(secrets) = resolved.remove(&target.revision.id) {
                    st.revisions[idx].secrets = Some(secrets);
                }
                inner.scale_up(service, st, idx)?;
            }
        }
        for instance in removed {
            inner.remove_instance(instance);
        }
        inner.update_routes();
        Ok(())
    }

    async fn observe(&self, service: &ServiceId) -> Result<Observed> {
        Ok(self.inner.observe(service))
    }

    async fn teardown(&self, service: &ServiceId) -> Result<()> {
        let _apply = self.inner.apply_lock.lock().await;
        let removed = lock(&self.inner.services).remove(service);
        self.inner.update_routes();
        if let Some(st) = removed {
            for rev in st.revisions {
                for instance in rev.instances {
                    self.inner.remove_instance(instance);
                }
            }
        }
        self.inner.state.set_desired(service, None)?;
        self.wait_stopped().await;
        Ok(())
    }
}

/// The metrics the local proxy answers, per revision: `error_rate` (share of responses that
/// were 5xx or proxy errors; no data without requests), `request_rate` (per second),
/// `requests`, `errors`, `latency_p50_ms` and `latency_p99_ms`, over the query's range
/// (default 10 s; `error_rate[30s]` or `error_rate[2m]` names another window).
pub const LOCAL_METRICS: &[&str] = &[
    "error_rate",
    "request_rate",
    "requests",
    "errors",
    "latency_p50_ms",
    "latency_p99_ms",
];

#[async_trait]
impl Monitor for LocalEnvironment {
    async fn instance_health(
        &self,
        service: &ServiceId,
        revision: &RevisionId,
    ) -> Result<Vec<InstanceObservation>> {
        Ok(self
            .inner
            .observe(service)
            .revision(revision)
            .map(|r| r.instances.clone())
            .unwrap_or_default())
    }

    async fn query(&self, query: &MetricQuery) -> Result<Vec<Sample>> {
        let (expr, window) = parse_metric(&query.expr, query.range)?;
        if !LOCAL_METRICS.contains(&expr) {
            return Err(Error::invalid(
                "query",
                format!(
                    "{expr:?} is not a local metric; the local proxy measures {}",
                    LOCAL_METRICS.join(", ")
                ),
            ));
        }
        let Some(revision) = &query.revision else {
            return Err(Error::invalid(
                "query",
                format!("local metric {expr} is per revision: scope the query to one"),
            ));
        };
        let stats = self.inner.proxy.stats(revision.as_str(), window);
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
        let value = match expr {
            "requests" => Some(stats.requests as f64),
            "errors" => Some(stats.errors as f64),
            "request_rate" => Some(stats.requests as f64 / window.as_secs_f64().max(1e-3)),
            "error_rate" => {
                (stats.requests > 0).then(|| stats.errors as f64 / stats.requests as f64)
            }
            "latency_p50_ms" => ms(stats.latency_p50),
            _ => ms(stats.latency_p99),
        };
        Ok(value
            .map(|value| {
                vec![Sample {
                    at: SystemClock.now(),
                    value,
                }]
            })
            .unwrap_or_default())
    }
}

/// `error_rate` or `error_rate[30s]`: the metric's name and its window (the bracket, else the
/// query's range, else 10 s).
fn parse_metric(expr: &str, range: Option<Duration>) -> Result<(&str, Duration)> {
    let expr = expr.trim();
    let Some((name, rest)) = expr.split_once('[') else {
        return Ok((expr, range.unwrap_or(Duration::from_secs(10))));
    };
    let bad = || {
        Error::invalid(
            "query",
            format!("{expr:?}: the window must look like [30s] or [2m]"),
        )
    };
    let window = rest.strip_suffix(']').ok_or_else(bad)?;
    let (number, unit) = window.split_at(window.len().saturating_sub(1));
    let n: u64 = number.parse().map_err(|_| bad())?;
    let window = match unit {
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        _ => return Err(bad()),
    };
    if window.is_zero() {
        return Err(bad());
    }
    Ok((name.trim(), window))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_with_a_port_and_no_readiness_probe_gets_a_tcp_one() {
        let checks = local_checks(&HealthChecks::default(), Some(8080));
        let readiness = checks.readiness.expect("an implicit readiness probe");
        assert_eq!(readiness.action, ProbeAction::Tcp { port: None });
        assert!(
            local_checks(&HealthChecks::default(), None)
                .readiness
                .is_none()
        );
    }

    #[test]
    fn probes_on_the_service_port_go_to_the_instance_port() {
        let mut checks = HealthChecks::default();
        checks.liveness = deploykit_core::Probe::builder()
            .action(ProbeAction::Tcp { port: Some(8080) })
            .build()
            .ok();
        let checks = local_checks(&checks, Some(8080));
        assert_eq!(
            checks.liveness.expect("liveness").action,
            ProbeAction::Tcp { port: None }
        );
    }

    #[test]
    fn metric_windows_parse_and_bad_ones_are_named() {
        assert_eq!(
            parse_metric("error_rate", None).unwrap(),
            ("error_rate", Duration::from_secs(10))
        );
        assert_eq!(
            parse_metric("error_rate[2m]", None).unwrap(),
            ("error_rate", Duration::from_secs(120))
        );
        let err = parse_metric("error_rate[2h]", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("[30s] or [2m]"), "{err}");
    }
}
