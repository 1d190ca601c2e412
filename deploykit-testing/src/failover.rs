//! [`SimFailoverSite`]: a primary and a standby environment in memory, with a database whose
//! standby replicates with a lag, for tests of failovers: injected step errors, steps that say
//! yes and do nothing, and a record of every write each side accepted (split brain shows as a
//! write the fenced primary took).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use deploykit_core::failover::{FailoverSite, FailoverSpec, StandbyReadiness, Step, StepOutcome};
use deploykit_core::{Error, Result, Timestamp};

/// The simulated world's state (see [`SimFailoverSite::state`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SiteState {
    /// Whether the primary accepts writes and traffic.
    pub primary_up: bool,
    /// Whether the primary was fenced (it takes no writes even when up).
    pub primary_fenced: bool,
    /// Whether the standby's database was promoted (takes writes).
    pub standby_promoted: bool,
    /// Whether the standby's probes pass.
    pub standby_healthy: bool,
    /// How far the standby's database is behind (`None`: it replicates nothing).
    pub lag: Option<Duration>,
    /// When the last commit the standby received was made.
    pub last_replicated_commit: Option<Timestamp>,
    /// The standby's instances, and how many full size is.
    pub standby_replicas: (u32, u32),
    /// Where traffic goes: `"primary"` or `"standby"`.
    pub traffic_to: &'static str,
    /// Writes each side accepted after the standby's database was promoted: the primary's
    /// are split-brain writes (two databases took writes).
    pub writes_after_promotion: BTreeMap<&'static str, u32>,
    /// Every step performed, in order (a resumed step appears again).
    pub performed: Vec<Step>,
}

impl Default for SiteState {
    fn default() -> Self {
        SiteState {
            primary_up: true,
            primary_fenced: false,
            standby_promoted: false,
            standby_healthy: true,
            lag: Some(Duration::from_secs(1)),
            last_replicated_commit: None,
            standby_replicas: (1, 3),
            traffic_to: "primary",
            writes_after_promotion: BTreeMap::new(),
            performed: Vec::new(),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    state: SiteState,
    failures: BTreeMap<Step, VecDeque<Error>>,
    lies: HashSet<Step>,
    readiness_errors: VecDeque<Error>,
}

/// A failover site in memory. Clones share the world.
#[derive(Clone, Debug, Default)]
pub struct SimFailoverSite {
    inner: Arc<Mutex<Inner>>,
}

impl SimFailoverSite {
    /// A world with a healthy standby 1 s behind, at one of three instances.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The world as it is.
    pub fn state(&self) -> SiteState {
        self.lock().state.clone()
    }

    /// Change the world (the standby's health, its lag, the primary going down).
    pub fn set(&self, f: impl FnOnce(&mut SiteState)) {
        f(&mut self.lock().state);
    }

    /// `step` fails with these errors, one per attempt, before it succeeds.
    pub fn fail(&self, step: Step, errors: impl IntoIterator<Item = Error>) {
        self.lock().failures.entry(step).or_default().extend(errors);
    }

    /// Reading the standby's readiness fails with these errors first.
    pub fn fail_readiness(&self, errors: impl IntoIterator<Item = Error>) {
        self.lock().readiness_errors.extend(errors);
    }

    /// `step` reports success and does nothing (a backend that says yes).
    pub fn lie(&self, step: Step) {
        self.lock().lies.insert(step);
    }

    /// A client writes: to whichever side takes writes and traffic. Where it landed (`None`:
    /// refused everywhere).
    pub fn write(&self) -> Option<&'static str> {
        let mut inner = self.lock();
        let s = &mut inner.state;
        let side = if s.traffic_to == "primary" && s.primary_up && !s.primary_fenced {
            Some("primary")
        } else if s.traffic_to == "standby" && s.standby_promoted {
            Some("standby")
        } else {
            None
        };
        if let (Some(side), true) = (side, s.standby_promoted) {
            *s.writes_after_promotion.entry(side).or_default() += 1;
        }
        side
    }

    fn step(&self, step: Step, act: impl FnOnce(&mut SiteState) -> String) -> Result<StepOutcome> {
        let mut inner = self.lock();
        inner.state.performed.push(step);
        if let Some(e) = inner.failures.get_mut(&step).and_then(VecDeque::pop_front) {
            return Err(e);
        }
        if inner.lies.contains(&step) {
            return Ok(StepOutcome::new("done (says the backend)"));
        }
        let detail = act(&mut inner.state);
        let mut outcome = StepOutcome::new(detail);
        if step == Step::PromoteDatabase {
            outcome = outcome.with_last_replicated_commit(inner.state.last_replicated_commit);
        }
        Ok(outcome)
    }
}

#[async_trait]
impl FailoverSite for SimFailoverSite {
    async fn readiness(&self, _spec: &FailoverSpec) -> Result<StandbyReadiness> {
        let mut inner = self.lock();
        if let Some(e) = inner.readiness_errors.pop_front() {
            return Err(e);
        }
        let s = &inner.state;
        Ok(StandbyReadiness::new(
            s.standby_healthy,
            s.lag,
            format!(
                "{}/{} instances, {}",
                s.standby_replicas.0,
                s.standby_replicas.1,
                if s.standby_healthy {
                    "probes pass"
                } else {
                    "probes fail"
                }
            ),
        ))
    }

    async fn fence(&self, _spec: &FailoverSpec) -> Result<StepOutcome> {
        self.step(Step::Fence, |s| {
            s.primary_fenced = true;
            format!(
                "primary fenced ({})",
                if s.primary_up {
                    "it was up"
                } else {
                    "it was down"
                }
            )
        })
    }

    async fn promote_database(&self, _spec: &FailoverSpec) -> Result<StepOutcome> {
        self.step(Step::PromoteDatabase, |s| {
            let again = s.standby_promoted;
            s.standby_promoted = true;
            if again {
                "already promoted"
            } else {
                "promoted"
            }
            .to_string()
        })
    }

    async fn scale(&self, _spec: &FailoverSpec) -> Result<StepOutcome> {
        self.step(Step::Scale, |s| {
            s.standby_replicas.0 = s.standby_replicas.1;
            format!("{} instances", s.standby_replicas.1)
        })
    }

    async fn switch_traffic(&self, _spec: &FailoverSpec) -> Result<StepOutcome> {
        self.step(Step::SwitchTraffic, |s| {
            s.traffic_to = "standby";
            "100% to the standby".to_string()
        })
    }

    async fn verify(&self, _spec: &FailoverSpec) -> Result<StepOutcome> {
        let state = self.state();
        let mut wrong = Vec::new();
        if !state.primary_fenced {
            wrong.push("the primary is not fenced");
        }
        if !state.standby_promoted {
            wrong.push("the standby's database is not promoted");
        }
        if state.standby_replicas.0 < state.standby_replicas.1 {
            wrong.push("the standby is not at full size");
        }
        if state.traffic_to != "standby" {
            wrong.push("traffic does not reach the standby");
        }
        self.step(Step::Verify, |_| String::new())?;
        if wrong.is_empty() {
            Ok(StepOutcome::new("probes pass, writes land on the standby"))
        } else {
            Err(Error::transient("verify the standby", wrong.join("; ")))
        }
    }
}
