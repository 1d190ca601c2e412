//! `[environments.<name>.backup]`: the policy (rotation, retention, prune, RTO/RPO) and what
//! the backup agent needs to run it (repository, paths and commands, checks, retries, alerts),
//! as a [`BackupJob`].

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{Located, duration};
use deploykit_backup::{
    BackupJob, BackupPolicy, CommandSource, DrillSchedule, DrillTargets, RehearsalSchedule,
    RetentionPolicy, ScheduledRun, VerifySchedule, check_cron,
};
use deploykit_core::Result;
use deploykit_core::retry::RetryPolicy;

/// The word that turns a schedule off.
const OFF: &str = "off";

/// `[environments.<name>.backup]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackupToml {
    /// `"<kind> <cron>"` entries, e.g. `"full 0 2 * * SUN"`.
    rotation: Vec<Spanned<String>>,
    #[serde(default)]
    retention: RetentionToml,
    #[serde(default)]
    prune: bool,
    rto: Option<Spanned<String>>,
    rpo: Option<Spanned<String>>,
    repository: Option<Spanned<String>>,
    password_env: Option<Spanned<String>>,
    #[serde(default)]
    paths: Vec<Spanned<String>>,
    #[serde(default)]
    commands: Vec<Spanned<CommandToml>>,
    #[serde(default)]
    verify: VerifyToml,
    #[serde(default)]
    drill: DrillToml,
    #[serde(default)]
    rehearsal: RehearsalToml,
    retry: Option<Spanned<RetryToml>>,
    alert_webhook: Option<Spanned<String>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionToml {
    keep_last: Option<u32>,
    keep_hourly: Option<u32>,
    keep_daily: Option<u32>,
    keep_weekly: Option<u32>,
    keep_monthly: Option<u32>,
    keep_yearly: Option<u32>,
    keep_within: Option<Spanned<String>>,
    #[serde(default)]
    keep_tags: BTreeSet<String>,
}

/// `commands = [{ name = "shop.dump", command = ["pg_dump", "shop"] }]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandToml {
    name: String,
    command: Vec<String>,
}

/// `verify = { subsets = 7, full = "0 3 * * SUN" }`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyToml {
    subsets: Option<u32>,
    full: Option<Spanned<String>>,
}

/// `drill = { schedule = "0 4 1 * *", scratch = "/var/tmp/drills" }`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrillToml {
    schedule: Option<Spanned<String>>,
    scratch: Option<String>,
}

/// `rehearsal = { schedule = "0 5 * * MON" }`: failover rehearsals (off by default).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RehearsalToml {
    schedule: Option<Spanned<String>>,
}

/// `retry = { attempts = 3, backoff = "30s", max_backoff = "10m" }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryToml {
    attempts: Option<u32>,
    backoff: Option<String>,
    max_backoff: Option<String>,
}

/// `path`, relative to the directory of the configuration file unless absolute.
pub(crate) fn resolve(base: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// A cron schedule, or `None` for `"off"`; `default` when the key is absent.
fn schedule(
    at: &Located<'_>,
    field: &str,
    value: Option<&Spanned<String>>,
    default: &str,
) -> Result<Option<String>> {
    let Some(value) = value else {
        return Ok(Some(default.to_string()));
    };
    let text = value.get_ref().trim();
    if text == OFF {
        return Ok(None);
    }
    check_cron(field, text).map_err(|e| at.error(value.span(), field, e))?;
    Ok(Some(text.to_string()))
}

/// The job of environment `env` from its `backup` table (`span`: the environment's table,
/// `path`: `environments.<env>.backup`).
pub(crate) fn load(
    at: &Located<'_>,
    span: Range<usize>,
    env: &str,
    path: &str,
    b: &BackupToml,
) -> Result<BackupJob> {
    let base = Path::new(at.file).parent().unwrap_or(Path::new(""));
    let field = |f: &str| format!("{path}.{f}");
    let mut rotation = Vec::new();
    for (i, entry) in b.rotation.iter().enumerate() {
        let name = field(&format!("rotation[{i}]"));
        rotation.push(
            entry
                .get_ref()
                .parse::<ScheduledRun>()
                .map_err(|e| at.error(entry.span(), &name, e))?,
        );
    }
    let r = &b.retention;
    let keep_within = match &r.keep_within {
        Some(d) => Some(duration(
            at,
            d.span(),
            &field("retention.keep_within"),
            d.get_ref(),
        )?),
        None => None,
    };
    let retention = RetentionPolicy {
        keep_last: r.keep_last,
        keep_hourly: r.keep_hourly,
        keep_daily: r.keep_daily,
        keep_weekly: r.keep_weekly,
        keep_monthly: r.keep_monthly,
        keep_yearly: r.keep_yearly,
        keep_within,
        keep_tags: r.keep_tags.clone(),
        only_tags: Default::default(),
    };
    let mut targets = DrillTargets::default();
    if let Some(d) = &b.rto {
        targets.rto = duration(at, d.span(), &field("rto"), d.get_ref())?;
    }
    if let Some(d) = &b.rpo {
        targets.rpo = duration(at, d.span(), &field("rpo"), d.get_ref())?;
    }
    let policy = BackupPolicy {
        rotation,
        retention,
        prune: b.prune,
        targets,
    };
    policy
        .validate()
        .map_err(|e| at.error(span.clone(), path, e))?;
    let mut job = BackupJob::new(env, policy);
    job.repository = b.repository.as_ref().map(|r| resolve(base, r.get_ref()));
    if let Some(name) = &b.password_env {
        if name.get_ref().trim().is_empty() || name.get_ref().contains('=') {
            return Err(at.error(
                name.span(),
                &field("password_env"),
                format!("{:?} is not an environment variable name", name.get_ref()),
            ));
        }
        job.password_env = name.get_ref().clone();
    }
    job.paths = b.paths.iter().map(|p| resolve(base, p.get_ref())).collect();
    let mut names = BTreeSet::new();
    for p in &b.paths {
        let name = Path::new(p.get_ref())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        match name {
            Some(name) if names.insert(name.clone()) => {}
            _ => {
                return Err(at.error(
                    p.span(),
                    &field("paths"),
                    format!(
                        "{:?}: every path needs a distinct last component (it names the path in \
                         the snapshot)",
                        p.get_ref()
                    ),
                ));
            }
        }
    }
    for (i, c) in b.commands.iter().enumerate() {
        let command = c.get_ref();
        let source = CommandSource::new(command.name.clone(), command.command.clone())
            .map_err(|e| at.error(c.span(), &field(&format!("commands[{i}]")), e))?;
        if !names.insert(command.name.clone()) {
            return Err(at.error(
                c.span(),
                &field(&format!("commands[{i}].name")),
                format!(
                    "{:?} is already the name of a path or command",
                    command.name
                ),
            ));
        }
        job.commands.push(source);
    }
    let subsets = b.verify.subsets.unwrap_or(job.verify.subsets);
    let full = schedule(
        at,
        &field("verify.full"),
        b.verify.full.as_ref(),
        deploykit_backup::agent::DEFAULT_FULL_VERIFY,
    )?;
    job.verify = VerifySchedule::new(subsets, full);
    let drill = schedule(
        at,
        &field("drill.schedule"),
        b.drill.schedule.as_ref(),
        deploykit_backup::agent::DEFAULT_DRILL,
    )?;
    job.drill = DrillSchedule::new(drill, b.drill.scratch.as_deref().map(|s| resolve(base, s)));
    let rehearsal = match &b.rehearsal.schedule {
        Some(cron) => schedule(at, &field("rehearsal.schedule"), Some(cron), OFF)?,
        None => None,
    };
    // The agent runs the binary it is (it replaces `deploykit` with its own path).
    let config = std::path::absolute(at.file).unwrap_or_else(|_| PathBuf::from(at.file));
    job.rehearsal = RehearsalSchedule::new(
        rehearsal,
        [
            "deploykit",
            "--config",
            &config.display().to_string(),
            "-o",
            "json",
            "failover",
            "rehearse",
            "--env",
            env,
        ]
        .map(String::from)
        .to_vec(),
    );
    if let Some(retry) = &b.retry {
        job.retry = retry_policy(at, retry, &field("retry"), job.retry)?;
    }
    if let Some(url) = &b.alert_webhook {
        job.alert_webhook = Some(super::http_url(at, url, &field("alert_webhook"))?);
    }
    Ok(job)
}

fn retry_policy(
    at: &Located<'_>,
    retry: &Spanned<RetryToml>,
    path: &str,
    mut policy: RetryPolicy,
) -> Result<RetryPolicy> {
    let span = retry.span();
    let r = retry.get_ref();
    let place = |e| at.error(span.clone(), path, e);
    if let Some(n) = r.attempts {
        policy = policy.with_max_attempts(n).map_err(place)?;
    }
    let backoff = match &r.backoff {
        Some(d) => duration(at, span.clone(), &format!("{path}.backoff"), d)?,
        None => policy.initial_backoff(),
    };
    let max = match &r.max_backoff {
        Some(d) => duration(at, span.clone(), &format!("{path}.max_backoff"), d)?,
        None => policy.max_backoff().max(backoff),
    };
    policy.with_backoff(backoff, max).map_err(place)
}
