//! The assessment: is the primary lost? A quorum of probes failing, each without a break for
//! a grace period, says so; one probe's blip, or several probes failing briefly, does not.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::time::Timestamp;

/// When the primary counts as lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AssessmentPolicy {
    /// How many different probes must be failing (default 2).
    pub quorum: usize,
    /// How long each of them must have failed without a success in between (default 10 s).
    #[serde(with = "crate::time::duration_ms", rename = "grace_ms")]
    pub grace: Duration,
}

impl Default for AssessmentPolicy {
    fn default() -> Self {
        AssessmentPolicy {
            quorum: 2,
            grace: Duration::from_secs(10),
        }
    }
}

impl AssessmentPolicy {
    /// A policy: `quorum` failing probes, each for `grace`.
    pub fn new(quorum: usize, grace: Duration) -> Self {
        AssessmentPolicy { quorum, grace }
    }
}

/// One probe's result at one moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProbeResult {
    /// The probe (`http web /healthz`, `postgres primary`, `alert PrimaryDown`).
    pub probe: String,
    /// Whether it passed.
    pub ok: bool,
    /// Why it failed, or what it saw.
    pub detail: String,
}

impl ProbeResult {
    /// A passing probe.
    pub fn pass(probe: impl Into<String>) -> Self {
        ProbeResult {
            probe: probe.into(),
            ok: true,
            detail: String::new(),
        }
    }

    /// A failing probe and why.
    pub fn fail(probe: impl Into<String>, detail: impl Into<String>) -> Self {
        ProbeResult {
            probe: probe.into(),
            ok: false,
            detail: detail.into(),
        }
    }
}

/// What the assessment concludes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every probe passes.
    Healthy,
    /// Some probes fail, not enough of them or not for long enough.
    Suspect {
        /// The failing probes.
        failing: Vec<String>,
    },
    /// A quorum of probes has failed for the grace period: fail over.
    Lost {
        /// When the earliest of them began failing: the start of the outage.
        since: Timestamp,
        /// The failing probes, each with since when and why.
        evidence: Vec<String>,
    },
}

/// The assessment's memory: since when each probe has failed without a break.
///
/// ```
/// use std::time::Duration;
/// use deploykit_core::Timestamp;
/// use deploykit_core::failover::{AssessmentPolicy, HealthWatch, ProbeResult, Verdict};
/// let mut watch = HealthWatch::new(
///     AssessmentPolicy::new(2, Duration::from_secs(10)),
///     ["http", "postgres", "alerts"],
/// )?;
/// let t = |s: u64| Timestamp::from_millis(s * 1000);
/// let down = [ProbeResult::fail("http", "connection refused"), ProbeResult::fail("postgres", "timeout")];
/// assert!(matches!(watch.observe(t(0), &down)?, Verdict::Suspect { .. }));
/// assert!(matches!(watch.observe(t(10), &down)?, Verdict::Lost { .. }));
/// # Ok::<(), deploykit_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct HealthWatch {
    policy: AssessmentPolicy,
    probes: BTreeSet<String>,
    failing_since: BTreeMap<String, (Timestamp, String)>,
}

impl HealthWatch {
    /// A watch over `probes` (their names) under `policy`: refused when the quorum is zero
    /// or larger than the number of probes (the primary could never count as lost).
    pub fn new<I, S>(policy: AssessmentPolicy, probes: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let probes: BTreeSet<String> = probes.into_iter().map(Into::into).collect();
        if policy.quorum == 0 || policy.quorum > probes.len() {
            return Err(Error::invalid(
                "failover.assessment.quorum",
                format!(
                    "{} probes must fail, and there are {} ({}): the quorum is 1 to the number of \
                     probes",
                    policy.quorum,
                    probes.len(),
                    probes.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        Ok(HealthWatch {
            policy,
            probes,
            failing_since: BTreeMap::new(),
        })
    }

    /// Take the results of one round of probes at `at` and judge. A probe not in this round
    /// keeps its state (not heard from is not a success); an unknown probe is refused.
    pub fn observe(&mut self, at: Timestamp, results: &[ProbeResult]) -> Result<Verdict> {
        for r in results {
            if !self.probes.contains(&r.probe) {
                return Err(Error::invalid(
                    "failover.assessment.probe",
                    format!("{:?} is not one of the watched probes", r.probe),
                ));
            }
        }
        for r in results {
            if r.ok {
                self.failing_since.remove(&r.probe);
            } else {
                self.failing_since
                    .entry(r.probe.clone())
                    .and_modify(|(_, detail)| detail.clone_from(&r.detail))
                    .or_insert((at, r.detail.clone()));
            }
        }
        Ok(self.verdict(at))
    }

    /// The verdict at `at` from what was observed so far.
    pub fn verdict(&self, at: Timestamp) -> Verdict {
        if self.failing_since.is_empty() {
            return Verdict::Healthy;
        }
        let long: Vec<(&String, &(Timestamp, String))> = self
            .failing_since
            .iter()
            .filter(|(_, (since, _))| at.since(*since) >= self.policy.grace)
            .collect();
        if long.len() >= self.policy.quorum {
            let since = long.iter().map(|(_, (s, _))| *s).min().unwrap_or(at);
            return Verdict::Lost {
                since,
                evidence: long
                    .iter()
                    .map(|(probe, (s, detail))| {
                        format!(
                            "{probe}: failing for {:.1} s ({detail})",
                            at.since(*s).as_secs_f64()
                        )
                    })
                    .collect(),
            };
        }
        Verdict::Suspect {
            failing: self.failing_since.keys().cloned().collect(),
        }
    }
}
