//! What the agent runs for one environment: the policy, what to back up and where, and the
//! schedules of the checks that follow the backups.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::schedule::{BackupPolicy, check_cron, next_occurrence};
use crate::{BackupKind, BackupRequest, BackupSource, CommandSource};
use deploykit_core::retry::RetryPolicy;
use deploykit_core::time::Timestamp;
use deploykit_core::{Error, Result};

/// The default schedule of the full read of a repository: Sundays at 03:00 UTC.
pub const DEFAULT_FULL_VERIFY: &str = "0 3 * * SUN";
/// The default schedule of disaster-recovery drills: the 1st of every month at 04:00 UTC.
pub const DEFAULT_DRILL: &str = "0 4 1 * *";
/// The default number of slices the data is read back in, one after each backup.
pub const DEFAULT_VERIFY_SUBSETS: u32 = 7;
/// The environment variable holding a repository's passphrase unless a job names another.
pub const DEFAULT_PASSWORD_ENV: &str = "DEPLOYKIT_REPO_PASSWORD";

/// The things the agent does on a schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Duty {
    /// Back up (kind by the rotation entry), then apply retention and prune, then read back one
    /// slice of the data.
    Backup,
    /// Read every pack back (`ReadData::All`); the slice read after each backup is recorded
    /// here too.
    Verify,
    /// Restore the newest snapshot into scratch space and measure RTO and RPO.
    Drill,
    /// Rehearse the environment's failover (a command, by default `deploykit failover
    /// rehearse`: a scratch standby restored from the archive, promoted and checked, production
    /// untouched).
    Rehearsal,
}

impl Duty {
    /// Every duty, in the order they are shown.
    pub const ALL: [Duty; 4] = [Duty::Backup, Duty::Verify, Duty::Drill, Duty::Rehearsal];

    /// `backup`, `verify`, `drill` or `rehearsal`.
    pub fn as_str(self) -> &'static str {
        match self {
            Duty::Backup => "backup",
            Duty::Verify => "verify",
            Duty::Drill => "drill",
            Duty::Rehearsal => "rehearsal",
        }
    }
}

impl fmt::Display for Duty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the data is checked: one slice of it read back after every backup, and all of it on a
/// schedule of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifySchedule {
    /// The data is read back in this many slices, one after each backup, so every pack is read
    /// once every `subsets` backups (0: no read after backups; default 7).
    pub subsets: u32,
    /// When everything is read back (cron, UTC; `None`: never; default Sundays 03:00).
    pub full: Option<String>,
}

impl Default for VerifySchedule {
    fn default() -> Self {
        VerifySchedule {
            subsets: DEFAULT_VERIFY_SUBSETS,
            full: Some(DEFAULT_FULL_VERIFY.to_string()),
        }
    }
}

impl VerifySchedule {
    /// `subsets` slices after backups, everything at `full`.
    pub fn new(subsets: u32, full: Option<String>) -> Self {
        VerifySchedule { subsets, full }
    }
}

/// When disaster-recovery drills run, and where they restore to.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrillSchedule {
    /// Cron, UTC (`None`: never; default the 1st of the month at 04:00).
    pub cron: Option<String>,
    /// Scratch directory the newest snapshot is restored into (default: the agent's).
    pub scratch: Option<PathBuf>,
}

impl Default for DrillSchedule {
    fn default() -> Self {
        DrillSchedule {
            cron: Some(DEFAULT_DRILL.to_string()),
            scratch: None,
        }
    }
}

impl DrillSchedule {
    /// Drills at `cron`, restoring into `scratch`.
    pub fn new(cron: Option<String>, scratch: Option<PathBuf>) -> Self {
        DrillSchedule { cron, scratch }
    }
}

/// When failover rehearsals run, and the command that runs one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RehearsalSchedule {
    /// Cron, UTC (`None`: never, the default).
    pub cron: Option<String>,
    /// The command run for a rehearsal: exit 0 is success; its last line of standard output,
    /// when it is a JSON object, is its report (`id`, `rto_ms`, `outcome`). `deploykit-config`
    /// sets `deploykit --config <file> -o json failover rehearse --env <env>`.
    pub command: Vec<String>,
}

impl RehearsalSchedule {
    /// Rehearsals at `cron` by `command`.
    pub fn new(cron: Option<String>, command: Vec<String>) -> Self {
        RehearsalSchedule { cron, command }
    }
}

/// Everything the backup agent needs to run one environment's [`BackupPolicy`]: what to back
/// up (directories and command outputs), where the repository is, how to check it and how to
/// retry. `deploykit-config` builds one from `[environments.<env>.backup]`.
///
/// ```
/// use deploykit_backup::{BackupJob, BackupPolicy, ScheduledRun};
/// let policy = BackupPolicy {
///     rotation: vec!["incremental 0 * * * *".parse::<ScheduledRun>()?],
///     ..Default::default()
/// };
/// let mut job = BackupJob::new("production", policy);
/// job.paths.push("/srv/shop/uploads".into());
/// job.validate()?;
/// assert_eq!(job.verify.subsets, 7);
/// # Ok::<(), deploykit_core::Error>(())
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BackupJob {
    /// The environment (labels, alerts, audit records and the state file are per environment).
    pub environment: String,
    /// Rotation, retention, prune and the RTO/RPO targets.
    pub policy: BackupPolicy,
    /// The repository directory (`None` when the configuration names none: the agent refuses
    /// to run the job).
    pub repository: Option<PathBuf>,
    /// The environment variable holding the repository's passphrase.
    pub password_env: String,
    /// Directories (or files) backed up.
    pub paths: Vec<PathBuf>,
    /// Command outputs backed up, each stored as a file (e.g. a database dump).
    pub commands: Vec<CommandSource>,
    /// The checks after backups and on their own schedule.
    pub verify: VerifySchedule,
    /// The drills.
    pub drill: DrillSchedule,
    /// The failover rehearsals (none by default).
    pub rehearsal: RehearsalSchedule,
    /// How a failed run is retried before it counts as failed.
    pub retry: RetryPolicy,
    /// Where alerts about this environment's backups are POSTed (Alertmanager-style JSON).
    pub alert_webhook: Option<String>,
}

/// The default retries of a failed run: 3 attempts, 30 s then 60 s apart (up to 10 min), for at
/// most an hour.
pub fn default_retry() -> RetryPolicy {
    RetryPolicy::default()
        .with_backoff(Duration::from_secs(30), Duration::from_secs(600))
        .and_then(|p| p.with_max_attempts(3))
        .and_then(|p| p.with_max_elapsed(Duration::from_secs(3600)))
        .expect("the default retry policy is valid")
}

impl BackupJob {
    /// A job running `policy` for `environment`, with no paths yet, no repository, and the
    /// default checks and retries.
    pub fn new(environment: impl Into<String>, policy: BackupPolicy) -> Self {
        BackupJob {
            environment: environment.into(),
            policy,
            repository: None,
            password_env: DEFAULT_PASSWORD_ENV.to_string(),
            paths: Vec::new(),
            commands: Vec::new(),
            verify: VerifySchedule::default(),
            drill: DrillSchedule::default(),
            rehearsal: RehearsalSchedule::default(),
            retry: default_retry(),
            alert_webhook: None,
        }
    }

    /// Checks the policy, the schedules, and that there is something to back up.
    pub fn validate(&self) -> Result<()> {
        let field = |f: &str| format!("environments.{}.backup.{f}", self.environment);
        self.policy.validate()?;
        if self.paths.is_empty() && self.commands.is_empty() {
            return Err(Error::invalid(
                field("paths"),
                "nothing to back up: give `paths` or `commands`",
            ));
        }
        if let Some(cron) = &self.verify.full {
            check_cron(&field("verify.full"), cron)?;
        }
        if let Some(cron) = &self.drill.cron {
            check_cron(&field("drill.schedule"), cron)?;
        }
        if let Some(cron) = &self.rehearsal.cron {
            check_cron(&field("rehearsal.schedule"), cron)?;
            if self.rehearsal.command.is_empty() {
                return Err(Error::invalid(
                    field("rehearsal.command"),
                    "is empty: nothing would run the scheduled rehearsals",
                ));
            }
        }
        Ok(())
    }

    /// The backup request for a run of `kind`.
    pub fn request(&self, kind: BackupKind) -> BackupRequest {
        let mut request = BackupRequest::builder()
            .paths(self.paths.clone())
            .sources(
                self.commands
                    .iter()
                    .map(|c| Arc::new(c.clone()) as Arc<dyn BackupSource>)
                    .collect(),
            )
            .kind(kind)
            .build();
        request
            .tags
            .insert(format!("environment:{}", self.environment));
        request
    }

    /// When `duty` is next due strictly after `after`, with the backup kind for a backup.
    pub fn next_due(
        &self,
        duty: Duty,
        after: Timestamp,
    ) -> Result<Option<(Timestamp, Option<BackupKind>)>> {
        match duty {
            Duty::Backup => Ok(self
                .policy
                .next_run(after)?
                .map(|(at, kind)| (at, Some(kind)))),
            Duty::Verify => self.cron_next("verify.full", self.verify.full.as_deref(), after),
            Duty::Drill => self.cron_next("drill.schedule", self.drill.cron.as_deref(), after),
            Duty::Rehearsal => {
                self.cron_next("rehearsal.schedule", self.rehearsal.cron.as_deref(), after)
            }
        }
    }

    fn cron_next(
        &self,
        name: &str,
        cron: Option<&str>,
        after: Timestamp,
    ) -> Result<Option<(Timestamp, Option<BackupKind>)>> {
        let Some(cron) = cron else { return Ok(None) };
        let field = format!("environments.{}.backup.{name}", self.environment);
        Ok(next_occurrence(&field, cron, after)?.map(|at| (at, None)))
    }

    /// The runs of `duty` that fell due after `after` up to and including `now` (counting
    /// stops at 100,000): for an agent that was not running then. `None` when none was due.
    pub fn missed(&self, duty: Duty, after: Timestamp, now: Timestamp) -> Result<Option<Missed>> {
        const LIMIT: u64 = 100_000;
        let mut missed: Option<Missed> = None;
        let mut at = after;
        while let Some((next, kind)) = self.next_due(duty, at)? {
            if next > now {
                break;
            }
            let entry = missed.get_or_insert(Missed {
                first: next,
                last: next,
                count: 0,
                kind,
            });
            entry.last = next;
            entry.count += 1;
            if let (Some(k), Some(best)) = (kind, entry.kind)
                && thoroughness(k) > thoroughness(best)
            {
                entry.kind = Some(k);
            }
            if entry.count >= LIMIT {
                break;
            }
            at = next;
        }
        Ok(missed)
    }
}

/// Runs of a duty that fell due while nobody ran them (see [`BackupJob::missed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Missed {
    /// When the first of them was due.
    pub first: Timestamp,
    /// When the last of them was due.
    pub last: Timestamp,
    /// How many fell due.
    pub count: u64,
    /// For backups, the kind to catch up with: the most thorough kind among them (full, then
    /// differential, then snapshot, then incremental).
    pub kind: Option<BackupKind>,
}

/// Orders kinds by how much a backup of that kind covers on its own.
fn thoroughness(kind: BackupKind) -> u8 {
    match kind {
        BackupKind::Incremental => 0,
        BackupKind::Snapshot => 1,
        BackupKind::Differential => 2,
        BackupKind::Full => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> BackupJob {
        let policy = BackupPolicy {
            rotation: vec![
                "full 0 2 * * SUN".parse().unwrap(),
                "incremental 0 * * * *".parse().unwrap(),
            ],
            ..Default::default()
        };
        let mut job = BackupJob::new("production", policy);
        job.paths.push("data".into());
        job.drill = DrillSchedule::new(None, None);
        job
    }

    /// 2026-11-28 (a Saturday) 12:00 UTC plus `hours`.
    fn saturday_noon_plus(hours: u64) -> Timestamp {
        Timestamp::from_millis(1_795_867_200_000 + hours * 3_600_000)
    }

    #[test]
    fn missed_runs_are_counted_and_made_up_by_the_most_thorough_kind() {
        let job = job();
        let after = saturday_noon_plus(0);
        // Down until Saturday 15:30: three incrementals missed.
        let m = job
            .missed(
                Duty::Backup,
                after,
                saturday_noon_plus(3).plus(Duration::from_secs(1800)),
            )
            .unwrap()
            .unwrap();
        assert_eq!((m.count, m.kind), (3, Some(BackupKind::Incremental)));
        assert_eq!(m.first, saturday_noon_plus(1));
        assert_eq!(m.last, saturday_noon_plus(3));
        // Down over Sunday 02:00: the weekly full is among them, so a full makes up for all.
        let m = job
            .missed(Duty::Backup, after, saturday_noon_plus(20))
            .unwrap()
            .unwrap();
        assert_eq!((m.count, m.kind), (20, Some(BackupKind::Full)));
        // Nothing was due yet; a duty with no schedule misses nothing.
        assert_eq!(
            job.missed(Duty::Backup, after, after.plus(Duration::from_secs(60)))
                .unwrap(),
            None
        );
        assert_eq!(
            job.missed(Duty::Drill, after, saturday_noon_plus(1000))
                .unwrap(),
            None
        );
        // The full verify (Sundays 03:00) has no kind.
        let m = job
            .missed(Duty::Verify, after, saturday_noon_plus(24 * 7 + 16))
            .unwrap()
            .unwrap();
        assert_eq!((m.count, m.kind), (2, None));
    }

    #[test]
    fn a_job_needs_something_to_back_up_and_valid_schedules() {
        let mut empty = job();
        empty.paths.clear();
        let e = empty.validate().unwrap_err().to_string();
        assert!(e.contains("environments.production.backup.paths"), "{e}");
        let mut bad = job();
        bad.verify.full = Some("sometimes".into());
        let e = bad.validate().unwrap_err().to_string();
        assert!(
            e.contains("environments.production.backup.verify.full"),
            "{e}"
        );
    }
}
