//! Backup policies and the in-process scheduler that runs them: cron entries choose the kind
//! (weekly full, hourly incremental, …), retention and prune follow every backup.

use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::drill::DrillTargets;
use super::format::BackupKind;
use super::prune::PruneOptions;
use super::repo::Repository;
use super::retention::RetentionPolicy;
use super::save::BackupRequest;
use deploykit_core::time::Timestamp;
use deploykit_core::{Error, Result};

/// One entry of a policy's rotation: when (a cron expression, UTC, five fields or six with
/// seconds) and which kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduledRun {
    /// Cron expression, e.g. `0 2 * * SUN` or `0 * * * *`.
    pub cron: String,
    /// The kind of backup it takes.
    pub kind: BackupKind,
}

/// An environment's backup policy.
///
/// ```
/// use deploykit_backup::{BackupKind, BackupPolicy, RetentionPolicy, ScheduledRun};
/// let policy = BackupPolicy {
///     rotation: vec![
///         ScheduledRun { cron: "0 2 * * SUN".into(), kind: BackupKind::Full },
///         ScheduledRun { cron: "*/5 * * * *".into(), kind: BackupKind::Incremental },
///     ],
///     retention: RetentionPolicy { keep_daily: Some(7), ..Default::default() },
///     prune: true,
///     targets: Default::default(),
/// };
/// policy.validate()?;
/// // Sunday 2026-11-29 02:00 UTC: the full backup wins over the incremental due then too.
/// let at = deploykit_core::Timestamp::from_millis(1_795_917_600_000 - 1);
/// let (when, kind) = policy.next_run(at)?.unwrap();
/// assert_eq!((when.as_millis(), kind), (1_795_917_600_000, BackupKind::Full));
/// # Ok::<(), deploykit_core::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupPolicy {
    /// When to back up and how; when entries fall due together, the first listed wins.
    pub rotation: Vec<ScheduledRun>,
    /// Which snapshots to keep after each backup.
    #[serde(default)]
    pub retention: RetentionPolicy,
    /// Prune after applying retention.
    #[serde(default)]
    pub prune: bool,
    /// Recovery objectives drills are measured against.
    #[serde(default)]
    pub targets: DrillTargets,
}

fn parse(field: &str, expr: &str) -> Result<croner::Cron> {
    let parser = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build();
    parser.parse(expr).map_err(|e| {
        Error::invalid(
            field.to_string(),
            format!("{expr:?} is not a cron expression: {e}"),
        )
    })
}

/// Checks that `expr` is a cron expression (UTC, five fields or six with seconds); `field`
/// names it in the error.
pub fn check_cron(field: &str, expr: &str) -> Result<()> {
    parse(field, expr).map(|_| ())
}

/// The first time cron `expr` matches strictly after `after` (`None` if it never does again);
/// `field` names the expression in errors.
pub fn next_occurrence(field: &str, expr: &str, after: Timestamp) -> Result<Option<Timestamp>> {
    let cron = parse(field, expr)?;
    let start =
        chrono::DateTime::<chrono::Utc>::from_timestamp((after.as_millis() / 1000) as i64, 0)
            .ok_or_else(|| Error::invalid(field.to_string(), "time out of range"))?;
    Ok(cron
        .find_next_occurrence(&start, false)
        .ok()
        .map(|next| Timestamp::from_millis(next.timestamp_millis().max(0) as u64)))
}

impl BackupPolicy {
    /// Check every cron expression and the retention policy.
    pub fn validate(&self) -> Result<()> {
        if self.rotation.is_empty() {
            return Err(Error::invalid(
                "backup.rotation",
                "a policy needs at least one scheduled run",
            ));
        }
        for (i, run) in self.rotation.iter().enumerate() {
            parse(&format!("backup.rotation[{i}].cron"), &run.cron)?;
        }
        self.retention.validate()
    }

    /// The next run strictly after `after`, and its kind.
    pub fn next_run(&self, after: Timestamp) -> Result<Option<(Timestamp, BackupKind)>> {
        let mut best: Option<(Timestamp, BackupKind)> = None;
        for (i, run) in self.rotation.iter().enumerate() {
            let field = format!("backup.rotation[{i}].cron");
            let Some(at) = next_occurrence(&field, &run.cron, after)? else {
                continue;
            };
            if best.is_none_or(|(t, _)| at < t) {
                best = Some((at, run.kind));
            }
        }
        Ok(best)
    }
}

/// Runs a [`BackupPolicy`] in-process: sleeps until the next run (on tokio's clock, so tests
/// with a paused clock run days in milliseconds), backs up, applies retention, prunes.
#[derive(Debug)]
pub struct Scheduler {
    repo: Repository,
    policy: BackupPolicy,
    request: BackupRequest,
}

/// Called after every scheduled backup with its outcome.
pub type RunReport = Arc<dyn Fn(Timestamp, BackupKind, &Result<String>) + Send + Sync>;

impl Scheduler {
    /// A scheduler backing up what `request` names (its kind is replaced by the policy's).
    pub fn new(repo: Repository, policy: BackupPolicy, request: BackupRequest) -> Result<Self> {
        policy.validate()?;
        Ok(Scheduler {
            repo,
            policy,
            request,
        })
    }

    /// Run until `runs` backups have been attempted (forever with `None`). A failed backup
    /// is reported and the schedule goes on.
    pub async fn run(&self, runs: Option<u64>, report: Option<RunReport>) -> Result<()> {
        let mut done = 0;
        while runs.is_none_or(|n| done < n) {
            let now = self.repo.clock.now();
            let Some((at, kind)) = self.policy.next_run(now)? else {
                return Ok(());
            };
            tokio::time::sleep(at.since(now)).await;
            let mut request = self.request.clone();
            request.kind = kind;
            let outcome = self.once(request).await;
            if let Err(e) = &outcome {
                tracing::warn!(kind = %kind, error = %e.chain(), "scheduled backup failed");
            }
            if let Some(f) = &report {
                f(at, kind, &outcome);
            }
            done += 1;
        }
        Ok(())
    }

    async fn once(&self, request: BackupRequest) -> Result<String> {
        let (id, _) = self.repo.backup(request).await?;
        if !self.policy.retention.is_empty() {
            self.repo.forget(&self.policy.retention, false).await?;
        }
        if self.policy.prune {
            self.repo.prune(PruneOptions::default()).await?;
        }
        Ok(id)
    }
}

impl FromStr for ScheduledRun {
    type Err = Error;

    /// `"<kind> <cron>"`, e.g. `"full 0 2 * * SUN"`.
    fn from_str(s: &str) -> Result<Self> {
        let (kind, cron) = s.trim().split_once(' ').ok_or_else(|| {
            Error::invalid(
                "backup.rotation",
                format!("{s:?}: expected \"<kind> <cron>\""),
            )
        })?;
        let kind = match kind {
            "full" => BackupKind::Full,
            "incremental" => BackupKind::Incremental,
            "differential" => BackupKind::Differential,
            "snapshot" => BackupKind::Snapshot,
            other => {
                return Err(Error::invalid(
                    "backup.rotation",
                    format!("{other:?}: expected full, incremental, differential or snapshot"),
                ));
            }
        };
        parse("backup.rotation", cron.trim())?;
        Ok(ScheduledRun {
            cron: cron.trim().to_string(),
            kind,
        })
    }
}
