//! The [`Environment`] trait: the actuator for one deploy target, and the declarative state it
//! applies and observes.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{Autoscale, Revision, RevisionId, ServiceId, Weight};

/// The whole desired state of one service in one environment: not a diff, so applying it twice,
/// or again after a crash, is always safe.
///
/// Revisions absent from `revisions` are removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DesiredState {
    /// Every revision that should exist, with its instance count.
    pub revisions: Vec<RevisionTarget>,
    /// How traffic is spread across them.
    pub traffic: Traffic,
    /// The environment's autoscaling bounds, if the service is autoscaled (the orchestrator
    /// copies them from [`EnvironmentSpec::autoscale`](crate::EnvironmentSpec::autoscale)).
    /// Backends with an autoscaler (Kubernetes: a HorizontalPodAutoscaler on the serving
    /// revision) keep it running with these bounds; others ignore them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<Autoscale>,
}

impl DesiredState {
    /// A desired state with the given revisions and traffic, not autoscaled.
    pub fn new(revisions: Vec<RevisionTarget>, traffic: Traffic) -> Self {
        DesiredState {
            revisions,
            traffic,
            autoscale: None,
        }
    }

    /// This desired state with autoscaling bounds `autoscale` (or none).
    #[must_use]
    pub fn with_autoscale(mut self, autoscale: Option<Autoscale>) -> Self {
        self.autoscale = autoscale;
        self
    }

    /// The desired instance count of `revision` (0 if absent).
    pub fn replicas_of(&self, revision: &RevisionId) -> u32 {
        self.revisions
            .iter()
            .find(|t| &t.revision.id == revision)
            .map_or(0, |t| t.replicas)
    }

    /// `v2=3 v1=1`: labels and counts, then explicit routes if any
    /// (`; traffic v1 75% v2 25%, header x-canary: true -> v2`), for messages.
    pub fn summary(&self) -> String {
        if self.revisions.is_empty() {
            return "no revisions".to_string();
        }
        let label = |id: &RevisionId| {
            self.revisions
                .iter()
                .find(|t| &t.revision.id == id)
                .map_or_else(|| id.to_string(), |t| t.revision.label.clone())
        };
        let parts: Vec<String> = self
            .revisions
            .iter()
            .map(|t| format!("{}={}", t.revision.label, t.replicas))
            .collect();
        let mut out = parts.join(" ");
        if let Traffic::Routed(routes) = &self.traffic {
            let weights: Vec<String> = routes
                .weights
                .iter()
                .map(|(id, w)| format!("{} {}%", label(id), w.percent()))
                .collect();
            out.push_str(&format!("; traffic {}", weights.join(" ")));
            if let Some(h) = &routes.header {
                out.push_str(&format!(
                    ", header {}: {} -> {}",
                    h.name,
                    h.value,
                    label(&h.revision)
                ));
            }
            if let Some(m) = &routes.mirror {
                out.push_str(&format!(
                    ", mirror {}% -> {}",
                    m.percent.percent(),
                    label(&m.revision)
                ));
            }
            if let Some(p) = &routes.preview {
                out.push_str(&format!(", preview -> {}", label(p)));
            }
        }
        out
    }
}

/// One revision and how many instances of it should run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RevisionTarget {
    /// The revision (its full spec, so the environment can create instances of it).
    pub revision: Arc<Revision>,
    /// Desired instances.
    pub replicas: u32,
}

impl RevisionTarget {
    /// `replicas` instances of `revision`.
    pub fn new(revision: impl Into<Arc<Revision>>, replicas: u32) -> Self {
        RevisionTarget {
            revision: revision.into(),
            replicas,
        }
    }
}

/// How requests are spread across revisions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Traffic {
    /// Every ready instance of any revision takes an equal share (a Kubernetes Service over a
    /// rolling update).
    #[default]
    ByReadyInstances,
    /// Explicit routes: weights per revision, and optionally a header route, a mirror and a
    /// preview route. (Boxed: desired states are journaled many times, mostly without them.)
    Routed(Box<Routes>),
}

impl Traffic {
    /// Explicit routes.
    pub fn routed(routes: Routes) -> Self {
        Traffic::Routed(Box::new(routes))
    }

    /// Weighted traffic with no other routes; the weights must sum to 100.
    pub fn weighted(weights: BTreeMap<RevisionId, Weight>) -> Result<Self> {
        Ok(Traffic::routed(Routes::new(weights)?))
    }

    /// The explicit routes, if any.
    pub fn routes(&self) -> Option<&Routes> {
        match self {
            Traffic::Routed(r) => Some(r),
            Traffic::ByReadyInstances => None,
        }
    }
}

/// Explicit traffic routes for one service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Routes {
    /// Share of ordinary requests per revision, summing to 100.
    pub weights: BTreeMap<RevisionId, Weight>,
    /// Requests carrying a header go to one revision regardless of weights (e.g.
    /// `x-canary: true` → the canary).
    pub header: Option<HeaderRoute>,
    /// A share of requests is copied to a revision; its responses are discarded.
    pub mirror: Option<Mirror>,
    /// A separate route (a preview hostname or service) that reaches one revision only, for
    /// testing it before it takes traffic.
    pub preview: Option<RevisionId>,
}

impl Routes {
    /// Routes with only `weights`, which must sum to 100.
    pub fn new(weights: BTreeMap<RevisionId, Weight>) -> Result<Self> {
        let sum: u32 = weights.values().map(|w| w.percent()).sum();
        if sum != 100 {
            return Err(Error::invalid(
                "traffic.weights",
                format!("weights sum to {sum}, not 100"),
            ));
        }
        Ok(Routes {
            weights,
            ..Routes::default()
        })
    }

    /// All traffic to `revision`.
    pub fn all_to(revision: &RevisionId) -> Self {
        Routes {
            weights: BTreeMap::from([(revision.clone(), Weight::clamped(100))]),
            ..Routes::default()
        }
    }

    /// `percent` to `canary`, the rest to `stable`.
    pub fn split(stable: &RevisionId, canary: &RevisionId, percent: Weight) -> Self {
        let mut weights = BTreeMap::new();
        if percent.percent() < 100 {
            weights.insert(stable.clone(), Weight::clamped(100 - percent.percent()));
        }
        if percent.percent() > 0 {
            weights.insert(canary.clone(), percent);
        }
        Routes {
            weights,
            ..Routes::default()
        }
    }

    /// The weight of `revision` (0 if absent).
    pub fn weight_of(&self, revision: &RevisionId) -> u32 {
        self.weights.get(revision).map_or(0, |w| w.percent())
    }
}

/// Requests whose header `name` equals `value` go to `revision`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HeaderRoute {
    /// Header name, e.g. `x-canary`.
    pub name: String,
    /// Header value, e.g. `true`.
    pub value: String,
    /// Where matching requests go.
    pub revision: RevisionId,
}

impl HeaderRoute {
    /// A header route.
    pub fn new(name: impl Into<String>, value: impl Into<String>, revision: RevisionId) -> Self {
        HeaderRoute {
            name: name.into(),
            value: value.into(),
            revision,
        }
    }
}

/// A share of requests copied to a revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Mirror {
    /// Where copies go.
    pub revision: RevisionId,
    /// Share of requests copied.
    pub percent: Weight,
}

impl Mirror {
    /// Mirror `percent` of requests to `revision`.
    pub fn new(revision: RevisionId, percent: Weight) -> Self {
        Mirror { revision, percent }
    }
}

/// What an environment observes for one service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Observed {
    /// Every revision that exists, in the order they were first created.
    pub revisions: Vec<RevisionObservation>,
    /// The share of ordinary traffic each revision actually receives (revisions receiving
    /// none are absent), as the backend's routing really is — never the weights it was told if
    /// it cannot serve them (see [`Environment::traffic_split`]). Empty when nothing is ready or
    /// nothing routes.
    pub traffic: BTreeMap<RevisionId, Weight>,
    /// The traffic configuration last applied.
    pub routing: Traffic,
    /// For an autoscaled service, the instance count its autoscaler wants now (Kubernetes: the
    /// replicas of the HorizontalPodAutoscaler's target, within its bounds; while a rolling
    /// update has suspended the autoscaler, the count it wanted when the update began).
    /// `None` when the service is not autoscaled. See [`Observed::replicas_for`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaled: Option<u32>,
    /// Why the routing serves nothing although it was applied, as the backend reports it (a
    /// Kubernetes route its Gateway did not accept, or whose backends it could not resolve).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_problem: Option<String>,
}

impl Observed {
    /// An observation of the given revisions, served traffic and applied routing.
    pub fn new(
        revisions: Vec<RevisionObservation>,
        traffic: BTreeMap<RevisionId, Weight>,
        routing: Traffic,
    ) -> Self {
        Observed {
            revisions,
            traffic,
            routing,
            autoscaled: None,
            routing_problem: None,
        }
    }

    /// This observation with why its routing serves nothing (see
    /// [`Observed::routing_problem`]).
    #[must_use]
    pub fn with_routing_problem(mut self, problem: Option<String>) -> Self {
        self.routing_problem = problem;
        self
    }

    /// This observation with the autoscaler's current count (see [`Observed::autoscaled`]).
    #[must_use]
    pub fn with_autoscaled(mut self, replicas: u32) -> Self {
        self.autoscaled = Some(replicas);
        self
    }

    /// How many instances a rollout should size the serving revision (and so the stable and
    /// canary) to: the autoscaler's live count when the service is autoscaled, else
    /// `configured` (the environment's static `replicas`). A deploy under load therefore never
    /// shrinks what the autoscaler scaled up.
    pub fn replicas_for(&self, configured: u32) -> u32 {
        self.autoscaled.unwrap_or(configured)
    }

    /// The share of ordinary traffic `revision` receives, in percent.
    pub fn weight_of(&self, revision: &RevisionId) -> u32 {
        self.traffic.get(revision).map_or(0, |w| w.percent())
    }

    /// Whether `desired` is exactly what the environment was last told: the same revisions at
    /// the same counts, and the same routing.
    pub fn matches(&self, desired: &DesiredState) -> bool {
        self.routing == desired.traffic
            && desired.revisions.len() == self.revisions.len()
            && desired.revisions.iter().all(|t| {
                self.revision(&t.revision.id)
                    .is_some_and(|o| o.desired == t.replicas)
            })
    }

    /// The observation of one revision, if it exists.
    pub fn revision(&self, id: &RevisionId) -> Option<&RevisionObservation> {
        self.revisions.iter().find(|r| &r.revision.id == id)
    }

    /// Instances that exist, over all revisions.
    pub fn total_instances(&self) -> u32 {
        self.revisions
            .iter()
            .map(|r| r.instances.len() as u32)
            .sum()
    }

    /// Ready instances, over all revisions.
    pub fn total_ready(&self) -> u32 {
        self.revisions.iter().map(RevisionObservation::ready).sum()
    }

    /// `v2 2/3 ready, v1 1/1 ready`, for messages.
    pub fn summary(&self) -> String {
        if self.revisions.is_empty() {
            return "nothing running".to_string();
        }
        let parts: Vec<String> = self
            .revisions
            .iter()
            .map(|r| format!("{} {}/{} ready", r.revision.label, r.ready(), r.desired))
            .collect();
        match &self.routing_problem {
            Some(problem) => format!("{}; serving nothing: {problem}", parts.join(", ")),
            None => parts.join(", "),
        }
    }
}

/// What is running for one revision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RevisionObservation {
    /// The revision.
    pub revision: Arc<Revision>,
    /// The instance count last applied for it.
    pub desired: u32,
    /// Its instances.
    pub instances: Vec<InstanceObservation>,
}

impl RevisionObservation {
    /// An observation of one revision.
    pub fn new(
        revision: impl Into<Arc<Revision>>,
        desired: u32,
        instances: Vec<InstanceObservation>,
    ) -> Self {
        RevisionObservation {
            revision: revision.into(),
            desired,
            instances,
        }
    }

    /// Instances passing readiness (available to serve).
    pub fn ready(&self) -> u32 {
        self.instances.iter().filter(|i| i.ready).count() as u32
    }

    /// Instances that have failed (crash loop, startup, readiness or liveness failures).
    pub fn failed(&self) -> impl Iterator<Item = &InstanceObservation> {
        self.instances.iter().filter(|i| i.failure.is_some())
    }
}

/// One instance as observed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct InstanceObservation {
    /// Instance name, unique within the service.
    pub name: Arc<str>,
    /// Whether it passes readiness now.
    pub ready: bool,
    /// How often it has been restarted.
    pub restarts: u32,
    /// Why it has failed, if it has.
    pub failure: Option<InstanceFailure>,
}

impl InstanceObservation {
    /// An instance observation.
    pub fn new(
        name: impl Into<Arc<str>>,
        ready: bool,
        restarts: u32,
        failure: Option<InstanceFailure>,
    ) -> Self {
        InstanceObservation {
            name: name.into(),
            ready,
            restarts,
            failure,
        }
    }
}

/// Why an instance failed, with the backend's own reason (e.g. `GET /health returned 503`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct InstanceFailure {
    /// Which check failed.
    pub kind: FailureKind,
    /// The backend's reason.
    pub reason: String,
}

impl InstanceFailure {
    /// A failure of `kind` for `reason`.
    pub fn new(kind: FailureKind, reason: impl Into<String>) -> Self {
        InstanceFailure {
            kind,
            reason: reason.into(),
        }
    }
}

/// Which check an instance failed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureKind {
    /// Readiness failed `failure_threshold` times in a row.
    Readiness,
    /// Liveness failed; the instance is being restarted.
    Liveness,
    /// The startup probe failed `failure_threshold` times in a row.
    Startup,
    /// The process keeps exiting (`CrashLoopBackOff`).
    CrashLoop,
    /// A named custom check failed.
    Custom(String),
    /// The instance could not be given its configuration, e.g. a referenced secret is
    /// missing (Kubernetes' `CreateContainerConfigError`).
    Configuration,
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureKind::Readiness => f.write_str("failed readiness"),
            FailureKind::Liveness => f.write_str("failed liveness"),
            FailureKind::Startup => f.write_str("failed startup"),
            FailureKind::CrashLoop => f.write_str("are crash-looping"),
            FailureKind::Custom(name) => write!(f, "failed check {name}"),
            FailureKind::Configuration => f.write_str("could not be configured"),
        }
    }
}

/// One deploy target: a simulated cluster, a Kubernetes namespace, local processes.
///
/// It applies declarative, idempotent desired states for one service at a time and reports what
/// it observes. Every method must be safe to call again after a crash or a timeout.
#[async_trait]
pub trait Environment: Send + Sync + fmt::Debug {
    /// Make the target match `desired` for `service`. Idempotent: applying the same state twice
    /// is a no-op. Revisions absent from `desired` are removed.
    ///
    /// Removals come before additions (scale-downs before scale-ups), so that the instance count
    /// never exceeds the surge budget a planner computed; when scaling a revision down, instances
    /// that are not ready go first.
    async fn apply(&self, service: &ServiceId, desired: &DesiredState) -> Result<()>;

    /// What runs now for `service`: per revision the desired count and its instances, and the
    /// traffic actually served. An unknown service observes as empty.
    async fn observe(&self, service: &ServiceId) -> Result<Observed>;

    /// Remove everything this environment created for `service`. Idempotent.
    async fn teardown(&self, service: &ServiceId) -> Result<()>;

    /// Whether this environment can split ordinary traffic between revisions by weight (and
    /// honour header routes and mirrors). The orchestrator refuses, at deploy time, a strategy
    /// that needs a split (a canary with a weight strictly between 0 and 100, a header route or
    /// a mirror) on an environment answering [`TrafficSplit::WholeSwitch`], since analysis and
    /// promotion would judge traffic that never moved. The default is
    /// [`TrafficSplit::Weighted`].
    fn traffic_split(&self) -> TrafficSplit {
        TrafficSplit::Weighted
    }
}

/// What an environment does with the weights, header routes and mirrors of
/// [`Traffic::Routed`] (see [`Environment::traffic_split`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrafficSplit {
    /// Ordinary traffic is split by the weights; header routes and mirrors are honoured (a
    /// proxy, a service mesh, a Gateway API route).
    Weighted,
    /// Ordinary traffic reaches one revision at a time (the one with the largest weight), so
    /// only whole switches are served as asked: rolling, blue-green, rollbacks.
    WholeSwitch {
        /// Why, and which setting of the backend would enable weights (for error messages).
        reason: String,
    },
}

/// Conveniences over any [`Environment`].
#[async_trait]
pub trait EnvironmentExt: Environment {
    /// Observe `service` every `interval` until every revision has exactly its desired number of
    /// instances and all of them are ready, or until `timeout` passes (then the last observation
    /// is returned inside an error).
    async fn wait_settled(
        &self,
        service: &ServiceId,
        interval: Duration,
        timeout: Duration,
    ) -> Result<Observed> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let observed = self.observe(service).await?;
            let settled = observed
                .revisions
                .iter()
                .all(|r| r.instances.len() as u32 == r.desired && r.ready() == r.desired);
            if settled {
                return Ok(observed);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::backend(
                    format!("waiting for {service} to settle"),
                    format!("not settled after {timeout:?}: {}", observed.summary()),
                ));
            }
            tokio::time::sleep(interval).await;
        }
    }
}

impl<T: Environment + ?Sized> EnvironmentExt for T {}

/// Splits 100 % across `counts` in proportion, by largest remainder, so the parts sum to 100
/// exactly (or the map is empty when every count is 0). Ties go to the earlier key.
pub fn proportional_weights(counts: &[(RevisionId, u32)]) -> BTreeMap<RevisionId, Weight> {
    let total: u64 = counts.iter().map(|(_, c)| u64::from(*c)).sum();
    let mut out = BTreeMap::new();
    if total == 0 {
        return out;
    }
    let mut parts: Vec<(usize, u64, u64)> = counts
        .iter()
        .enumerate()
        .map(|(i, (_, c))| {
            let scaled = u64::from(*c) * 100;
            (i, scaled / total, scaled % total)
        })
        .collect();
    let assigned: u64 = parts.iter().map(|p| p.1).sum();
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by(|a, b| parts[*b].2.cmp(&parts[*a].2).then(a.cmp(b)));
    for &i in order.iter().take((100 - assigned) as usize) {
        parts[i].1 += 1;
    }
    for (i, pct, _) in parts {
        if pct > 0 {
            out.insert(counts[i].0.clone(), Weight::clamped(pct as u32));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rid(n: u8) -> RevisionId {
        RevisionId::parse(&format!("{n:016x}")).unwrap()
    }

    #[test]
    fn proportional_weights_sum_to_100() {
        let w = proportional_weights(&[(rid(1), 1), (rid(2), 1), (rid(3), 1)]);
        let v: Vec<u32> = w.values().map(|w| w.percent()).collect();
        assert_eq!(v, vec![34, 33, 33]);
        let w = proportional_weights(&[(rid(1), 3), (rid(2), 0)]);
        assert_eq!(w.len(), 1);
        assert_eq!(w[&rid(1)].percent(), 100);
        assert!(proportional_weights(&[(rid(1), 0)]).is_empty());
    }

    #[test]
    fn weighted_traffic_must_sum_to_100() {
        let w = BTreeMap::from([
            (rid(1), Weight::new(90).unwrap()),
            (rid(2), Weight::new(5).unwrap()),
        ]);
        let err = Traffic::weighted(w).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid traffic.weights: weights sum to 95, not 100"
        );
    }
}
