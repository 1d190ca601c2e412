//! The agent's run history, kept in a small JSON file (by default `backup-agent.json` in the
//! state directory) so that `deploykit backup status` can read it while the agent runs, and a
//! restarted agent can tell which runs it missed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::job::Duty;
use deploykit_core::time::Timestamp;
use deploykit_core::{Error, Result};

/// The version of the state file's format.
pub const STATE_VERSION: u32 = 1;

/// One finished run (all its attempts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RunRecord {
    /// The time it was due (its slot in the schedule; for a check after a backup, the
    /// backup's).
    pub due: Timestamp,
    /// When its first attempt started.
    pub started: Timestamp,
    /// When its last attempt ended.
    pub finished: Timestamp,
    /// What ran: a backup kind, `full` or `subset 3/7` for a verify, `drill`.
    pub kind: String,
    /// Attempts made.
    pub attempts: u32,
    /// What it did (a snapshot id and sizes), or why it failed.
    pub detail: String,
}

/// Runs that fell due while the agent was not running, noticed when it started (or when a run
/// took so long that later ones fell due meanwhile).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MissRecord {
    /// When the first missed run was due.
    pub first_due: Timestamp,
    /// When the last missed run was due.
    pub last_due: Timestamp,
    /// How many were missed.
    pub runs: u64,
    /// When the agent noticed (and ran once to catch up).
    pub noticed: Timestamp,
}

/// The history of one duty of one environment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DutyState {
    /// When the agent first scheduled this duty (runs due before are not missed runs).
    pub since: Option<Timestamp>,
    /// The slot of the last run started.
    pub last_due: Option<Timestamp>,
    /// When the next run is due (`None`: never, by the schedule).
    pub next_due: Option<Timestamp>,
    /// After this time with no new run, the duty is overdue.
    pub overdue_after: Option<Timestamp>,
    /// When the run under way started, if one is.
    pub running: Option<Timestamp>,
    /// The last successful run.
    pub last_success: Option<RunRecord>,
    /// The last failed run.
    pub last_failure: Option<RunRecord>,
    /// When the last run of each kind succeeded (`full`, `incremental`, `subset`, …).
    #[serde(default)]
    pub last_success_by_kind: BTreeMap<String, Timestamp>,
    /// Whether the last run failed.
    #[serde(default)]
    pub failing: bool,
    /// Runs failed in all.
    #[serde(default)]
    pub failures: u64,
    /// Runs missed in all.
    #[serde(default)]
    pub missed: u64,
    /// The last miss.
    pub last_miss: Option<MissRecord>,
    /// Whether a miss has not yet been followed by a run on time that succeeded.
    #[serde(default)]
    pub miss_unresolved: bool,
    /// For the drill duty: what the last drill that ran to its end measured.
    #[serde(default)]
    pub last_drill: Option<DrillMeasure>,
}

/// The recovery a drill measured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DrillMeasure {
    /// Time to restore and check everything (the recovery time), in milliseconds.
    pub rto_ms: u64,
    /// Age of the restored data when the drill began (the recovery point), in milliseconds.
    pub rpo_ms: u64,
    /// Whether both were within the policy's targets.
    pub met: bool,
}

/// One environment's duties.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EnvironmentState {
    /// The repository it backs up into.
    pub repository: String,
    /// Each duty's history.
    #[serde(default)]
    pub duties: BTreeMap<Duty, DutyState>,
    /// The slice of the data the next read after a backup checks (1-based).
    #[serde(default)]
    pub next_subset: u32,
}

/// The agent process that writes the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AgentProcess {
    /// Its process id.
    pub pid: u32,
    /// When it started.
    pub started: Timestamp,
    /// When it last said it is alive.
    pub heartbeat: Timestamp,
    /// How often it says so.
    #[serde(
        with = "deploykit_core::time::duration_ms",
        rename = "heartbeat_every_ms"
    )]
    pub heartbeat_every: Duration,
    /// Whether it stopped cleanly.
    #[serde(default)]
    pub stopped: Option<Timestamp>,
}

impl AgentProcess {
    /// Whether it has said it is alive recently enough (three heartbeats), has not stopped,
    /// and its process exists (where `/proc` tells).
    pub fn is_alive(&self, now: Timestamp) -> bool {
        self.stopped.is_none()
            && now.since(self.heartbeat) <= self.heartbeat_every * 3
            && process_exists(self.pid)
    }
}

/// Whether process `pid` exists (where `/proc` tells; elsewhere it is assumed to).
fn process_exists(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.exists() || proc.join(pid.to_string()).exists()
}

/// Everything the agent records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AgentState {
    /// The file format's version ([`STATE_VERSION`]).
    pub version: u32,
    /// The agent that last ran.
    pub agent: Option<AgentProcess>,
    /// Per environment.
    #[serde(default)]
    pub environments: BTreeMap<String, EnvironmentState>,
}

impl AgentState {
    /// Read the state file at `path`; an empty state when there is none. A file that does not
    /// parse is an error naming it (the agent does not overwrite a history it cannot read).
    pub fn load(path: &Path) -> Result<Self> {
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(AgentState {
                    version: STATE_VERSION,
                    ..Default::default()
                });
            }
            Err(e) => {
                return Err(Error::backend(
                    format!("read the backup agent's state {}", path.display()),
                    e.to_string(),
                ));
            }
        };
        let state: AgentState = serde_json::from_slice(&text).map_err(|e| Error::Corrupt {
            what: format!("the backup agent's state {}", path.display()),
            source: format!("not a state file: {e}").into(),
        })?;
        if state.version != STATE_VERSION {
            return Err(Error::invalid(
                path.display().to_string(),
                format!(
                    "backup agent state version {} is not supported (this deploykit writes version {STATE_VERSION})",
                    state.version
                ),
            ));
        }
        Ok(state)
    }

    /// Write the state to `path` atomically (a temporary file renamed over it).
    pub fn save(&self, path: &Path) -> Result<()> {
        let fail = |e: std::io::Error| {
            Error::backend(
                format!("write the backup agent's state {}", path.display()),
                e.to_string(),
            )
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let mut tmp = PathBuf::from(path);
        tmp.as_mut_os_string().push(".tmp");
        let json = serde_json::to_vec_pretty(self).expect("the state serialises");
        std::fs::write(&tmp, json).map_err(fail)?;
        std::fs::rename(&tmp, path).map_err(fail)
    }

    /// The state of `duty` in `environment`, created empty if missing.
    pub(super) fn duty(&mut self, environment: &str, duty: Duty) -> &mut DutyState {
        self.environments
            .entry(environment.to_string())
            .or_default()
            .duties
            .entry(duty)
            .or_default()
    }

    /// What is wrong with `environment` at `now` (overdue duties, last runs that failed) and
    /// what is worth knowing (runs missed and caught up).
    pub fn findings(&self, environment: &str, now: Timestamp) -> Findings {
        let mut findings = Findings::default();
        let Some(env) = self.environments.get(environment) else {
            findings.problems.push(
                "the backup agent has not run this environment's policy yet (start it with \
                 `deploykit backup agent`)"
                    .to_string(),
            );
            return findings;
        };
        let alive = self.agent.as_ref().is_some_and(|a| a.is_alive(now));
        for (duty, state) in &env.duties {
            if let Some(limit) = state.overdue_after
                && now > limit
                && !(alive && state.running.is_some())
            {
                let due = state.next_due.map_or("?".to_string(), |t| t.to_string());
                findings.problems.push(format!(
                    "{duty} is overdue: it was due at {due} and has not run{}",
                    if alive {
                        ""
                    } else {
                        " (the agent is not running)"
                    }
                ));
            }
            if state.failing
                && let Some(f) = &state.last_failure
            {
                findings.problems.push(format!(
                    "{duty} ({}) failed at {} after {} attempt{}: {}",
                    f.kind,
                    f.finished,
                    f.attempts,
                    if f.attempts == 1 { "" } else { "s" },
                    f.detail
                ));
            }
            if let Some(m) = &state.last_miss
                && state.miss_unresolved
            {
                findings.notices.push(format!(
                    "{duty} missed {} run{} due from {} to {}; noticed at {} and caught up once",
                    m.runs,
                    if m.runs == 1 { "" } else { "s" },
                    m.first_due,
                    m.last_due,
                    m.noticed
                ));
            }
        }
        findings
    }
}

/// What [`AgentState::findings`] found for an environment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Findings {
    /// What needs attention: a duty overdue or whose last run failed. `deploykit backup
    /// status` exits non-zero when there is any.
    pub problems: Vec<String>,
    /// What is worth knowing: runs missed while the agent was down, caught up since.
    pub notices: Vec<String>,
}

impl Findings {
    /// Whether nothing needs attention.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}
