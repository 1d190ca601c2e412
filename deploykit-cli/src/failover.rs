//! `deploykit failover`: fail an environment over to the standby its configuration names
//! (`[environments.<env>.standby]`), journaled in the state store and audited, and read the
//! reports. The steps deploykit does itself here are the database's (fence the primary's
//! data directory, promote the standby that follows the archive, check it takes writes); the
//! rest of each step is the environment's hook command (`hooks.<step>`), run with
//! `DEPLOYKIT_FAILOVER_ID`, `_FROM`, `_TO` and `_STEP` in its environment.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use clap::Subcommand;
use deploykit_alerting::failover::{FailoverMonitor, failover_rules};
use deploykit_backup::{LocalTarget, Repository};
use deploykit_config::{ProbeCheck, ProbeSettings, StandbySettings};
use deploykit_core::access::AccessAction;
use deploykit_core::failover::{
    AssessmentPolicy, Direction, FailoverId, FailoverOutcome, FailoverSite, FailoverSpec,
    Failovers, HealthWatch, ProbeResult, StandbyReadiness, StepOutcome, Trigger, Verdict,
};
use deploykit_core::{Actor, EnvironmentName, Error, Result, SystemClock, Timestamp};
use deploykit_postgres as pg;
use serde_json::json;

use crate::context::Context;
use deploykit_core::failover::{Synced, WarmStandby};

/// `deploykit failover` subcommands.
#[derive(Subcommand, Debug)]
pub(crate) enum FailoverAction {
    /// Fail the environment over to its standby now: assess the standby (refused if it is
    /// unhealthy, or further behind than max_lag unless --force), fence the primary, promote
    /// the standby's database, scale, switch traffic, verify; prints the report.
    Run {
        /// The environment to fail over (the primary).
        #[arg(long)]
        env: Option<String>,
        /// Why (it goes into the audit log and the report).
        #[arg(long)]
        reason: String,
        /// Proceed even if the standby is further behind than max_lag: the commits it lacks
        /// are lost (audited).
        #[arg(long)]
        force: bool,
        /// Report it as a failback (back to the environment a failover left, once re-seeded
        /// with `failover reseed`).
        #[arg(long)]
        failback: bool,
    },
    /// After a failover of ENV: take a base backup of the promoted standby and make ENV's old
    /// primary directory a standby of it (the old directory is kept beside it), so ENV can
    /// take over again: start it, let it catch up, then `failover run --failback` from the
    /// standby environment. Run it as the repository's owner (the user archive_command runs
    /// as).
    Reseed {
        /// The environment that was failed over (whose old primary is re-seeded).
        #[arg(long)]
        env: Option<String>,
    },
    /// Watch the primary with the assessment's probes and, when a quorum of them has failed
    /// for the grace period, fail over (with `automatic = true`; otherwise say so and exit 3).
    /// Exits when a failover ended.
    Watch {
        /// The environment to watch (the primary).
        #[arg(long)]
        env: Option<String>,
    },
    /// Rehearse the failover's database half without touching production: a scratch standby
    /// is seeded from the archive, replays it to its end, is promoted and checked (the verify
    /// query), then removed. Journaled and reported like a failover (direction rehearsal);
    /// the RTO is the time from the request to the verified scratch primary.
    Rehearse {
        /// The environment whose failover is rehearsed.
        #[arg(long)]
        env: Option<String>,
        /// A query the promoted scratch database must answer; its rows go into the report.
        #[arg(long)]
        verify_query: Option<String>,
        /// The OS user that runs the scratch PostgreSQL (default: you, or postgres when you
        /// are root).
        #[arg(long)]
        run_as: Option<String>,
    },
    /// Bring a warm standby (`warm = N` in the standby settings) in step with the primary: the
    /// revisions the primary serves, re-made with the standby's settings, at N instances on
    /// the standby's daemon. `failover watch` does it every few seconds while the primary is
    /// healthy.
    Sync {
        /// The environment whose standby is synced (the primary).
        #[arg(long)]
        env: Option<String>,
    },
    /// Finish failovers a dead process left unfinished.
    Resume,
    /// Every failover and rehearsal, oldest first.
    List,
    /// One failover's report: timeline, decisions, RTO and RPO (Markdown; JSON with -o json).
    Report {
        /// The failover's id.
        id: String,
    },
}

/// Run one `deploykit failover` command.
pub(crate) async fn run(ctx: &Context, action: FailoverAction) -> Result<ExitCode> {
    match action {
        FailoverAction::Run {
            env,
            reason,
            force,
            failback,
        } => {
            let from = ctx.environment(env.as_deref())?;
            let settings = standby_settings(ctx, &from)?;
            let direction = if failback {
                Direction::Failback
            } else {
                Direction::Failover
            };
            let ask = Ask {
                by: ctx.actor.clone(),
                reason,
                force,
                trigger: Trigger::Manual,
                direction,
            };
            fail_over(ctx, &from, settings, ask).await
        }
        FailoverAction::Reseed { env } => reseed(ctx, env.as_deref()).await,
        FailoverAction::Watch { env } => watch(ctx, env.as_deref()).await,
        FailoverAction::Sync { env } => {
            let from = ctx.environment(env.as_deref())?;
            let warm = warm_standby(ctx, &from)?.ok_or_else(|| {
                Error::invalid(
                    format!("environments.{from}.standby.warm"),
                    "is not set: deploykit does not keep this standby's services in step",
                )
            })?;
            let synced = warm.sync().await?;
            let lines: Vec<String> = synced
                .iter()
                .map(|(service, s)| match s {
                    Synced::InStep(r) => format!("{service}: in step ({r})"),
                    Synced::Applied(r) => format!("{service}: {r} applied to {}", warm.to_env),
                    Synced::Skipped(why) => format!("{service}: skipped, {why}"),
                })
                .collect();
            let rows: Vec<_> = synced
                .iter()
                .map(|(service, s)| match s {
                    Synced::InStep(r) => {
                        json!({"service": service, "state": "in_step", "revision": r})
                    }
                    Synced::Applied(r) => {
                        json!({"service": service, "state": "applied", "revision": r})
                    }
                    Synced::Skipped(why) => {
                        json!({"service": service, "state": "skipped", "why": why})
                    }
                })
                .collect();
            ctx.print(lines.join("\n"), json!(rows));
            Ok(ExitCode::SUCCESS)
        }
        FailoverAction::Rehearse {
            env,
            verify_query,
            run_as,
        } => rehearse(ctx, env.as_deref(), verify_query, run_as.as_deref()).await,
        FailoverAction::Resume => {
            let store = ctx.failover_store().await?;
            let mut resumed = 0;
            let reader =
                Failovers::new(store.clone(), Arc::new(Unconfigured), Arc::new(SystemClock));
            for id in reader.list().await? {
                let status = reader.status(&id).await?;
                if status.is_finished() {
                    continue;
                }
                let from = &status.spec.from;
                let settings = ctx
                    .config()?
                    .standby(from.as_str())?
                    .cloned()
                    .ok_or_else(|| {
                        Error::invalid(
                            format!("environments.{from}.standby"),
                            format!("is no longer configured: failover {id} cannot be resumed"),
                        )
                    })?;
                let keep = settings.database.as_ref().map(|d| d.repository.clone());
                if status.spec.direction == Direction::Rehearsal {
                    // A rehearsal goes on with a scratch database of its own (seeded afresh:
                    // the dead process's went with it), never with the real site.
                    let Some(db) = settings.database.clone() else {
                        return Err(Error::invalid(
                            format!("environments.{from}.standby.database"),
                            format!("is no longer configured: rehearsal {id} cannot be resumed"),
                        ));
                    };
                    let site =
                        rehearsal_site(ctx, &id, &db, &settings, None, pg::OsUser::for_server()?)?;
                    let driver = driver(ctx, site.clone()).await?;
                    let resumed_status = driver.resume(&id).await;
                    driver.flush(NOTIFY_FLUSH).await;
                    site.clean_up().await;
                    resumed_status?;
                } else {
                    let driver = failovers(ctx, from, settings).await?;
                    let resumed_status = driver.resume(&id).await;
                    driver.flush(NOTIFY_FLUSH).await;
                    resumed_status?;
                }
                report(ctx, &reader, &id, keep.as_deref()).await?;
                resumed += 1;
            }
            if resumed == 0 {
                ctx.print("no failover to resume", json!({ "resumed": 0 }));
            }
            Ok(ExitCode::SUCCESS)
        }
        FailoverAction::List => {
            let store = ctx.failover_store().await?;
            let reader = Failovers::new(store, Arc::new(Unconfigured), Arc::new(SystemClock));
            let mut reports = Vec::new();
            for id in reader.list().await? {
                reports.push(reader.report(&id).await?);
            }
            reports.sort_by_key(|r| r.timeline.first().map(|e| e.at));
            let mut lines = Vec::new();
            let mut rows = Vec::new();
            for r in reports {
                let id = &r.id;
                let outcome = match &r.outcome {
                    None => "running".to_string(),
                    Some(FailoverOutcome::Succeeded) => "succeeded".into(),
                    Some(FailoverOutcome::Refused { .. }) => "refused".into(),
                    Some(FailoverOutcome::Failed { .. }) => "failed".into(),
                };
                lines.push(format!(
                    "{id}  {} {} → {}  {outcome}  RTO {}",
                    r.direction,
                    r.from,
                    r.to,
                    r.rto
                        .map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64()))
                ));
                rows.push(r.to_json());
            }
            ctx.print(lines.join("\n"), json!(rows));
            Ok(ExitCode::SUCCESS)
        }
        FailoverAction::Report { id } => {
            let store = ctx.failover_store().await?;
            let reader = Failovers::new(store, Arc::new(Unconfigured), Arc::new(SystemClock));
            report(ctx, &reader, &FailoverId::new(id)?, None).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The warm standby of `from`, when its standby settings have `warm`.
fn warm_standby(ctx: &Context, from: &EnvironmentName) -> Result<Option<WarmStandby>> {
    let settings = standby_settings(ctx, from)?;
    crate::warm::configured(
        ctx,
        from,
        &EnvironmentName::new(&settings.environment)?,
        settings.warm,
    )
}

fn standby_settings(ctx: &Context, from: &EnvironmentName) -> Result<StandbySettings> {
    ctx.config()?
        .standby(from.as_str())?
        .cloned()
        .ok_or_else(|| {
            Error::invalid(
                format!("environments.{from}.standby"),
                "is not configured: name the environment that takes over",
            )
        })
}

/// Who asks for a failover, why and how.
struct Ask {
    by: Actor,
    reason: String,
    force: bool,
    trigger: Trigger,
    direction: Direction,
}

/// Fail `from` over to its standby and print the report; 0 when the standby serves, 3 when
/// the failover was refused or failed (the report says why).
async fn fail_over(
    ctx: &Context,
    from: &EnvironmentName,
    settings: StandbySettings,
    ask: Ask,
) -> Result<ExitCode> {
    let to = EnvironmentName::new(&settings.environment)?;
    let services: Vec<_> = ctx.config()?.services().map(|s| s.name.clone()).collect();
    let now = deploykit_core::Clock::now(&SystemClock);
    let id = FailoverId::new(format!("{from}-{}", now.as_millis()))?;
    let spec = FailoverSpec::builder()
        .id(id.clone())
        .direction(ask.direction)
        .from(from.clone())
        .to(to)
        .services(services)
        .requested_by(ask.by)
        .reason(ask.reason)
        .requested_at(now)
        .build()
        .triggered(ask.trigger)
        .forced(ask.force)
        .with_max_lag(settings.max_lag)
        .with_step_timeout(settings.step_timeout);
    let keep = settings.database.as_ref().map(|d| d.repository.clone());
    let failovers = failovers(ctx, from, settings).await?;
    let status = failovers.run(spec).await;
    failovers.flush(NOTIFY_FLUSH).await;
    let status = status?;
    report(ctx, &failovers, &id, keep.as_deref()).await?;
    Ok(exit_code(&status))
}

/// 0 when the standby serves, 3 when the failover was refused or failed.
fn exit_code(status: &deploykit_core::failover::FailoverStatus) -> ExitCode {
    match status.finished.as_ref().map(|f| &f.0) {
        Some(FailoverOutcome::Succeeded) => ExitCode::SUCCESS,
        _ => ExitCode::from(crate::EXIT_ROLLED_BACK),
    }
}

/// `failover watch`: probe the primary every interval until the assessment says it is lost,
/// then fail over (or, with `automatic` off, say so).
async fn watch(ctx: &Context, env: Option<&str>) -> Result<ExitCode> {
    let from = ctx.environment(env)?;
    let settings = standby_settings(ctx, &from)?;
    let a = &settings.assessment;
    if a.probes.is_empty() {
        return Err(Error::invalid(
            format!("environments.{from}.standby.assessment.probes"),
            "no probes: nothing to watch the primary with",
        ));
    }
    let mut health = HealthWatch::new(
        AssessmentPolicy::new(a.quorum, a.grace),
        a.probes.iter().map(|p| p.name.clone()),
    )?;
    // An automatic failover is requested by the watcher: with [access], by the user who runs
    // it, whose right is checked now, so that a watcher that could never fail over says so
    // before it is needed.
    let by = match ctx.access_policy()? {
        Some(policy) if settings.automatic => {
            for service in ctx.config()?.services() {
                policy.check(&ctx.actor, AccessAction::Failover, &from, &service.name)?;
            }
            ctx.actor.clone()
        }
        _ => Actor::system(),
    };
    tracing::info!(environment = %from, probes = a.probes.len(), quorum = a.quorum, grace = ?a.grace, "watching the primary");
    let warm = warm_standby(ctx, &from)?;
    // Any failover from this environment that stands still (this process's own, or one whose
    // process died) is alerted: on stderr, and to the standby's alert_webhook.
    let reader = Arc::new(Failovers::new(
        ctx.failover_store().await?,
        Arc::new(Unconfigured),
        Arc::new(SystemClock),
    ));
    let alerting = Arc::new(crate::notify::alerting(
        failover_rules(),
        settings
            .alert_webhook
            .as_deref()
            .map(|url| (from.as_str(), url))
            .into_iter(),
        ALERT_EVERY,
    )?);
    alerting.watch(deploykit_alerting::failover::target(from.as_str())?);
    let _alerts = AbortOnDrop(alerting.spawn(Arc::new(FailoverMonitor::new(reader.clone()))));
    let mut ticker = tokio::time::interval(a.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sync: Option<tokio::time::Instant> = None;
    let mut last_adoption: Option<tokio::time::Instant> = None;
    let (lost_since, evidence) = loop {
        ticker.tick().await;
        if last_adoption.is_none_or(|t| t.elapsed() >= SYNC_EVERY) {
            last_adoption = Some(tokio::time::Instant::now());
            if let Some(code) = adopt_orphans(ctx, &from, &settings, &reader).await? {
                return Ok(code);
            }
        }
        let results = futures_join(&ctx.config_dir, &a.probes).await;
        let now = deploykit_core::Clock::now(&SystemClock);
        match health.observe(now, &results)? {
            Verdict::Lost { since, evidence } => break (since, evidence),
            Verdict::Suspect { failing } => {
                tracing::warn!(environment = %from, ?failing, "primary probes failing");
            }
            Verdict::Healthy => {
                // While the primary is healthy, its standby follows what it serves.
                if let Some(warm) = &warm
                    && last_sync.is_none_or(|t| t.elapsed() >= SYNC_EVERY)
                {
                    last_sync = Some(tokio::time::Instant::now());
                    if let Err(e) = warm.sync().await {
                        tracing::warn!(environment = %from, error = %e.chain(), "could not bring the warm standby in step");
                    }
                }
            }
        }
    };
    let summary = evidence.join("; ");
    if !settings.automatic {
        ctx.print(
            format!(
                "the primary {from} is lost since {lost_since} ({summary}); automatic failover \
                 is off: run `deploykit failover run --env {from} --reason …`"
            ),
            json!({ "lost_since": lost_since, "evidence": evidence, "failed_over": false }),
        );
        return Ok(ExitCode::from(crate::EXIT_ROLLED_BACK));
    }
    let ask = Ask {
        by,
        reason: format!("the assessment judged the primary lost: {summary}"),
        force: false,
        trigger: Trigger::Automatic {
            lost_since,
            evidence,
        },
        direction: Direction::Failover,
    };
    fail_over(ctx, &from, settings.clone(), ask).await
}

/// How often `failover watch` brings a warm standby in step while the primary is healthy,
/// and looks for failovers left by a dead process.
const SYNC_EVERY: Duration = Duration::from_secs(5);

/// How often `failover watch` evaluates its alert rules.
const ALERT_EVERY: Duration = Duration::from_secs(5);

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Take over the failovers (and failbacks) from `from` that a dead process left unfinished (its
/// lease lapsed; one a live process drives is left to it) and drive them to their end, each
/// report printed and kept. The exit code once one has ended, `None` when there was none.
async fn adopt_orphans(
    ctx: &Context,
    from: &EnvironmentName,
    settings: &StandbySettings,
    reader: &Failovers,
) -> Result<Option<ExitCode>> {
    let mut code = None;
    for id in reader.list().await? {
        let status = reader.status(&id).await?;
        if status.is_finished()
            || &status.spec.from != from
            || status.spec.direction == Direction::Rehearsal
        {
            continue;
        }
        let driver = failovers(ctx, from, settings.clone()).await?;
        let resumed = driver.resume(&id).await;
        driver.flush(NOTIFY_FLUSH).await;
        let status = match resumed {
            Ok(status) => status,
            Err(Error::LeaseHeld { .. }) => continue,
            Err(e) => return Err(e),
        };
        tracing::warn!(failover = %id, environment = %from, "took over a failover left unfinished by a dead process");
        let keep = settings.database.as_ref().map(|d| d.repository.clone());
        report(ctx, reader, &id, keep.as_deref()).await?;
        code = Some(exit_code(&status));
    }
    Ok(code)
}

/// `failover reseed`: the old primary of `env` becomes a standby of the promoted one.
async fn reseed(ctx: &Context, env: Option<&str>) -> Result<ExitCode> {
    let from = ctx.environment(env)?;
    let settings = standby_settings(ctx, &from)?;
    let field = format!("environments.{from}.standby.database");
    let db = settings.database.clone().ok_or_else(|| {
        Error::invalid(&field, "is not configured: there is no database to re-seed")
    })?;
    let old = db.primary_pgdata.clone().ok_or_else(|| {
        Error::invalid(
            format!("{field}.primary_pgdata"),
            "is not configured: the old primary's directory is re-seeded",
        )
    })?;
    // The promoted standby is the source: it must take writes.
    let site = ConfiguredSite {
        settings: settings.clone(),
        dir: ctx.config_dir.clone(),
        warm: None,
    };
    let client = site.standby_db().await?.expect("a database is configured");
    if pg::standby_status(&client).await?.in_recovery {
        return Err(Error::invalid(
            format!("{field}.standby_connection"),
            format!(
                "{} is still a standby: fail over first (`deploykit failover run --env {from}`)",
                settings.environment
            ),
        ));
    }
    let repo = open_repo(&db.repository).await?;
    let backup = pg::take_base_backup(
        &repo,
        &pg::BaseBackupRequest::builder()
            .connection(db.standby_connection.clone())
            .bins(pg::PgBinaries::find()?)
            .build(),
    )
    .await?;
    // The old directory stays beside, fenced, for whoever wants to look at what it held.
    let kept = if old.exists() {
        pg::fence_primary(&old).await?;
        let stamp = deploykit_core::Clock::now(&SystemClock).as_millis();
        let name = format!(
            "{}.before-reseed-{stamp}",
            old.file_name()
                .map_or("pgdata".into(), |n| n.to_string_lossy().into_owned())
        );
        let kept = old.with_file_name(name);
        std::fs::rename(&old, &kept).map_err(|e| {
            Error::backend(
                format!("move {} aside to {}", old.display(), kept.display()),
                e.to_string(),
            )
        })?;
        Some(kept)
    } else {
        None
    };
    let request = pg::StandbyRequest::builder()
        .to(old.clone())
        .restore_command(crate::pg::fetch_command(
            &std::path::absolute(&db.repository).map_err(|e| {
                Error::backend(
                    format!("resolve {}", db.repository.display()),
                    e.to_string(),
                )
            })?,
            8,
        )?)
        .run_as(pg::OsUser::for_server()?)
        .build();
    let seed = pg::seed_standby(&repo, &request).await?;
    ctx.print(
        format!(
            "{from}'s database at {} is a standby of {} again, from base backup {} (timeline \
             {}){}; start it, let it catch up, then fail back with `deploykit failover run --env \
             {} --failback --reason …`",
            old.display(),
            settings.environment,
            seed.base_backup.snapshot,
            backup.backup.timeline,
            kept.as_ref().map_or(String::new(), |k| format!(
                "; the old directory is at {}",
                k.display()
            )),
            settings.environment
        ),
        json!({
            "data_dir": old.display().to_string(),
            "snapshot": seed.base_backup.snapshot,
            "timeline": backup.backup.timeline,
            "kept": kept.map(|k| k.display().to_string()),
        }),
    );
    Ok(ExitCode::SUCCESS)
}

/// Run every probe at once, each within its timeout.
async fn futures_join(dir: &Path, probes: &[ProbeSettings]) -> Vec<ProbeResult> {
    let mut set = tokio::task::JoinSet::new();
    for (i, p) in probes.iter().enumerate() {
        let p = p.clone();
        let dir = dir.to_path_buf();
        set.spawn(async move {
            let outcome = tokio::time::timeout(p.timeout, probe(&dir, &p.check))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {:?}", p.timeout)));
            (
                i,
                match outcome {
                    Ok(()) => ProbeResult::pass(&p.name),
                    Err(why) => ProbeResult::fail(&p.name, why),
                },
            )
        });
    }
    let mut results: Vec<(usize, ProbeResult)> = set.join_all().await;
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// One probe: an HTTP GET answering 2xx, or a command exiting 0.
async fn probe(dir: &Path, check: &ProbeCheck) -> std::result::Result<(), String> {
    match check {
        ProbeCheck::Http(url) => crate::http_get::get_url(url).await,
        ProbeCheck::Command(argv) => {
            let out = tokio::process::Command::new(&argv[0])
                .args(&argv[1..])
                .current_dir(dir)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output()
                .await
                .map_err(|e| format!("{}: {e}", argv[0]))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{} exited with {}: {}",
                    argv.join(" "),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        }
    }
}

/// Print failover `id`'s report; once it has finished, also keep it with the backups in the
/// repository `keep` (as `reports/failover/<id>.md` and `.json`), where it outlives this
/// machine's state store. A report that cannot be stored there is said on stderr; the
/// failover is not undone for it.
async fn report(
    ctx: &Context,
    failovers: &Failovers,
    id: &FailoverId,
    keep: Option<&Path>,
) -> Result<()> {
    let report = failovers.report(id).await?;
    if let (Some(repository), Some(_)) = (keep, &report.outcome) {
        match store_report(repository, &report).await {
            Ok(name) => {
                tracing::info!(failover = %id, repository = %repository.display(), %name, "report kept with the backups");
            }
            Err(e) => {
                tracing::warn!(failover = %id, repository = %repository.display(), error = %e.chain(), "could not keep the report with the backups");
            }
        }
    }
    ctx.print(report.to_markdown(), report.to_json());
    Ok(())
}

/// The name under which a failover's report is kept in a repository (`.md` and `.json`).
fn report_name(id: &str) -> String {
    format!("reports/failover/{id}")
}

/// Put `report` into the repository at `dir` (the same content again is a no-op).
async fn store_report(
    dir: &Path,
    report: &deploykit_core::failover::FailoverReport,
) -> Result<String> {
    let repo = open_repo(dir).await?;
    let name = report_name(&report.id);
    let json = serde_json::to_vec_pretty(&report.to_json())
        .map_err(|e| Error::backend("encode the report", e.to_string()))?;
    repo.put_named(&format!("{name}.json"), std::io::Cursor::new(json))
        .await?;
    repo.put_named(
        &format!("{name}.md"),
        std::io::Cursor::new(report.to_markdown().into_bytes()),
    )
    .await?;
    Ok(name)
}

/// Failovers of `from` through the configured site.
async fn failovers(
    ctx: &Context,
    from: &EnvironmentName,
    settings: StandbySettings,
) -> Result<Failovers> {
    let to = EnvironmentName::new(&settings.environment)?;
    let site = ConfiguredSite {
        warm: crate::warm::configured(ctx, from, &to, settings.warm)?,
        settings,
        dir: ctx.config_dir.clone(),
    };
    driver(ctx, Arc::new(site)).await
}

/// Failovers through `site`, journaled in the state store, telling the configuration's
/// notification channels.
async fn driver(ctx: &Context, site: Arc<dyn FailoverSite>) -> Result<Failovers> {
    let channels = crate::notify::channels(ctx.config()?)?
        .into_iter()
        .map(|(_, notifier)| notifier)
        .collect();
    let failovers = Failovers::new(ctx.failover_store().await?, site, Arc::new(SystemClock))
        .with_owner(format!("deploykit-{}", std::process::id()))
        .with_notifiers(channels);
    match ctx.access_policy()? {
        Some(policy) => failovers.with_access_policy(policy),
        None => Ok(failovers),
    }
}

/// How long a command waits for its failover's notifications before it exits.
const NOTIFY_FLUSH: std::time::Duration = std::time::Duration::from_secs(10);

/// `failover rehearse`: a failover of direction rehearsal through a [`RehearsalSite`].
async fn rehearse(
    ctx: &Context,
    env: Option<&str>,
    verify_query: Option<String>,
    run_as: Option<&str>,
) -> Result<ExitCode> {
    let from = ctx.environment(env)?;
    let settings = standby_settings(ctx, &from)?;
    let Some(db) = settings.database.clone() else {
        return Err(Error::invalid(
            format!("environments.{from}.standby.database"),
            "is not configured: a rehearsal restores the standby database from its archive",
        ));
    };
    let run_as = match run_as {
        Some(name) => Some(pg::OsUser::lookup(name)?),
        None => pg::OsUser::for_server()?,
    };
    let now = deploykit_core::Clock::now(&SystemClock);
    let id = FailoverId::new(format!("rehearsal-{from}-{}", now.as_millis()))?;
    let site = rehearsal_site(ctx, &id, &db, &settings, verify_query, run_as)?;
    let spec = FailoverSpec::builder()
        .id(id.clone())
        .direction(Direction::Rehearsal)
        .from(from)
        .to(EnvironmentName::new(&settings.environment)?)
        .services(ctx.config()?.services().map(|s| s.name.clone()).collect())
        .requested_by(ctx.actor.clone())
        .reason("failover rehearsal: production is not touched")
        .requested_at(now)
        .build()
        .with_step_timeout(settings.step_timeout);
    let failovers = driver(ctx, site.clone()).await?;
    let status = failovers.run(spec).await;
    failovers.flush(NOTIFY_FLUSH).await;
    site.clean_up().await;
    let status = status?;
    report(ctx, &failovers, &id, Some(&db.repository)).await?;
    Ok(match status.finished.map(|f| f.0) {
        Some(FailoverOutcome::Succeeded) => ExitCode::SUCCESS,
        _ => ExitCode::from(crate::EXIT_ROLLED_BACK),
    })
}

/// The site of rehearsal `id`: a scratch directory under the state directory.
fn rehearsal_site(
    ctx: &Context,
    id: &FailoverId,
    db: &deploykit_config::StandbyDatabase,
    settings: &StandbySettings,
    verify_query: Option<String>,
    run_as: Option<pg::OsUser>,
) -> Result<Arc<RehearsalSite>> {
    Ok(Arc::new(RehearsalSite {
        repository: std::path::absolute(&db.repository).map_err(|e| {
            Error::backend(
                format!("resolve {}", db.repository.display()),
                e.to_string(),
            )
        })?,
        scratch: ctx.state_dir()?.join("rehearsals").join(id.as_str()),
        run_as,
        verify_query,
        timeout: settings.step_timeout,
        server: tokio::sync::Mutex::new(None),
    }))
}

/// A rehearsal's site: the primary is left alone; the database step seeds a scratch standby
/// from the archive, lets it replay to the archive's end and promotes it; verify checks it
/// takes writes and answers the verify query.
#[derive(Debug)]
struct RehearsalSite {
    repository: std::path::PathBuf,
    scratch: std::path::PathBuf,
    run_as: Option<pg::OsUser>,
    verify_query: Option<String>,
    timeout: Duration,
    server: tokio::sync::Mutex<Option<pg::Server>>,
}

impl RehearsalSite {
    fn data(&self) -> std::path::PathBuf {
        self.scratch.join("data")
    }

    /// Stop the scratch server and remove its directory.
    async fn clean_up(&self) {
        if let Some(server) = self.server.lock().await.take()
            && let Err(e) = server.stop().await
        {
            tracing::warn!(error = %e.chain(), "could not stop the rehearsal's scratch database");
        }
        if let Err(e) = std::fs::remove_dir_all(&self.scratch)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.scratch.display(), error = %e, "could not remove the rehearsal's scratch directory");
        }
    }

    async fn client(&self) -> Result<pg::tokio_postgres::Client> {
        match self.server.lock().await.as_ref() {
            Some(server) => server.connect().await,
            None => Err(Error::transient(
                "reach the rehearsal's scratch database",
                "it is not running (the promote step starts it)",
            )),
        }
    }
}

#[async_trait]
impl FailoverSite for RehearsalSite {
    async fn readiness(&self, _: &FailoverSpec) -> Result<StandbyReadiness> {
        let repo = open_repo(&self.repository).await?;
        let backups = pg::base_backups(&repo).await?;
        Ok(match backups.last() {
            Some(b) => StandbyReadiness::new(
                true,
                None,
                format!(
                    "rehearsal from the archive at {}, base backup {} of {}",
                    self.repository.display(),
                    &b.snapshot[..12.min(b.snapshot.len())],
                    b.stop_time.to_rfc3339()
                ),
            ),
            None => StandbyReadiness::new(
                false,
                None,
                format!("{} holds no base backup", self.repository.display()),
            ),
        })
    }

    async fn fence(&self, _: &FailoverSpec) -> Result<StepOutcome> {
        Ok(StepOutcome::new(
            "rehearsal: the primary keeps serving, not fenced",
        ))
    }

    async fn promote_database(&self, _: &FailoverSpec) -> Result<StepOutcome> {
        let mut slot = self.server.lock().await;
        if slot.is_none() {
            // Seeded afresh, also when a resumed rehearsal finds an earlier attempt's files.
            let _ = std::fs::remove_dir_all(&self.scratch);
            std::fs::create_dir_all(&self.scratch).map_err(|e| {
                Error::backend(format!("create {}", self.scratch.display()), e.to_string())
            })?;
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&self.scratch, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| {
                        Error::backend(format!("protect {}", self.scratch.display()), e.to_string())
                    })?;
            }
            pg::chown_tree(&self.scratch, self.run_as.as_ref())?;
            let repo = open_repo(&self.repository).await?;
            let request = pg::StandbyRequest::builder()
                .to(self.data())
                .restore_command(crate::pg::fetch_command(&self.repository, 8)?)
                .run_as(self.run_as.clone())
                .poll(Duration::from_millis(200))
                .build();
            pg::seed_standby(&repo, &request).await?;
            let user = match &self.run_as {
                Some(u) => u.name.clone(),
                None => pg::OsUser::current()?.name,
            };
            let env: Vec<(String, String)> = ["DEPLOYKIT_REPO_KEY_FILE", "DEPLOYKIT_REPO_PASSWORD"]
                .iter()
                .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
                .collect();
            let options = pg::ServerOptions::builder()
                .port(pg::free_port()?)
                .socket_dir(self.scratch.clone())
                .settings(vec![("archive_mode".into(), "off".into())])
                .run_as(self.run_as.clone())
                .env(env)
                .user(user)
                .log_file(self.scratch.join("postgres.log"))
                .start_timeout(self.timeout)
                .build();
            *slot = Some(pg::Server::start(&pg::PgBinaries::find()?, &self.data(), options).await?);
        }
        let server = slot.as_ref().expect("started above");
        let client = server.connect().await?;
        let promotion = pg::promote_standby(&client, self.timeout).await?;
        let last = promotion
            .last_replayed_commit
            .and_then(|t| u64::try_from(t.timestamp_millis()).ok())
            .map(Timestamp::from_millis);
        Ok(StepOutcome::new(format!(
            "scratch standby seeded from the archive and promoted in {:.1} s: timeline {}, at {}",
            promotion.duration.as_secs_f64(),
            promotion.timeline,
            promotion.lsn
        ))
        .with_last_replicated_commit(last))
    }

    async fn scale(&self, _: &FailoverSpec) -> Result<StepOutcome> {
        Ok(StepOutcome::new("rehearsal: nothing is scaled"))
    }

    async fn switch_traffic(&self, _: &FailoverSpec) -> Result<StepOutcome> {
        Ok(StepOutcome::new("rehearsal: traffic stays on the primary"))
    }

    async fn verify(&self, _: &FailoverSpec) -> Result<StepOutcome> {
        let client = self.client().await?;
        pg::simple_query(
            &client,
            "BEGIN; CREATE TEMP TABLE deploykit_failover_check (n int); ROLLBACK",
        )
        .await
        .map_err(|e| Error::transient("verify the scratch database", e.chain()))?;
        let Some(sql) = &self.verify_query else {
            return Ok(StepOutcome::new("the scratch primary takes writes"));
        };
        let rows = pg::simple_query(&client, sql).await.map_err(|e| {
            // A query that cannot run on the restored data will not run on a retry either.
            Error::invalid("--verify-query", e.chain())
        })?;
        let text: Vec<String> = rows
            .iter()
            .map(|r| {
                r.iter()
                    .map(|c| c.as_deref().unwrap_or(""))
                    .collect::<Vec<_>>()
                    .join("|")
            })
            .collect();
        Ok(StepOutcome::new(format!(
            "the scratch primary takes writes and answers the verify query: {}",
            text.join("; ")
        )))
    }
}

/// A reader's site: it performs nothing (used only to read journals and reports).
#[derive(Debug)]
struct Unconfigured;

#[async_trait]
impl FailoverSite for Unconfigured {
    async fn readiness(&self, _: &FailoverSpec) -> Result<StandbyReadiness> {
        Err(unconfigured())
    }
    async fn fence(&self, _: &FailoverSpec) -> Result<StepOutcome> {
        Err(unconfigured())
    }
    async fn promote_database(&self, _: &FailoverSpec) -> Result<StepOutcome> {
        Err(unconfigured())
    }
    async fn scale(&self, _: &FailoverSpec) -> Result<StepOutcome> {
        Err(unconfigured())
    }
    async fn switch_traffic(&self, _: &FailoverSpec) -> Result<StepOutcome> {
        Err(unconfigured())
    }
    async fn verify(&self, _: &FailoverSpec) -> Result<StepOutcome> {
        Err(unconfigured())
    }
}

fn unconfigured() -> Error {
    Error::invalid("failover", "this command only reads failovers")
}

/// The site a configuration describes: the standby database, the warm standby's daemons
/// (with `warm`), and hook commands.
#[derive(Debug)]
struct ConfiguredSite {
    settings: StandbySettings,
    /// Where hooks run (the configuration's directory).
    dir: std::path::PathBuf,
    /// The two local daemons, when the standby is kept warm by deploykit.
    warm: Option<WarmStandby>,
}

impl ConfiguredSite {
    async fn standby_db(&self) -> Result<Option<pg::tokio_postgres::Client>> {
        let Some(db) = &self.settings.database else {
            return Ok(None);
        };
        let (client, connection) =
            pg::tokio_postgres::connect(&db.standby_connection, pg::tokio_postgres::NoTls)
                .await
                .map_err(|e| Error::transient("connect to the standby database", e.to_string()))?;
        tokio::spawn(connection);
        Ok(Some(client))
    }

    /// Whether the standby database can take over, and how far behind it is.
    async fn database_readiness(&self, spec: &FailoverSpec) -> Result<StandbyReadiness> {
        let Some(db) = &self.settings.database else {
            return Ok(StandbyReadiness::new(
                true,
                None,
                "no database configured: nothing replicated to lose",
            ));
        };
        let client = match self.standby_db().await {
            Ok(Some(c)) => c,
            Ok(None) => unreachable!("a database is configured"),
            Err(e) => {
                return Ok(StandbyReadiness::new(
                    false,
                    None,
                    format!(
                        "the standby database of {} does not answer: {}",
                        spec.to,
                        e.chain()
                    ),
                ));
            }
        };
        let status = pg::standby_status(&client).await?;
        if !status.in_recovery {
            return Ok(StandbyReadiness::new(
                false,
                None,
                "the standby database is not a standby (it takes writes already): fencing the \
                 primary now could leave two primaries",
            ));
        }
        let repo = open_repo(&db.repository).await?;
        let segment_size = pg::base_backups(&repo)
            .await?
            .last()
            .map_or(16 * 1024 * 1024, |b| b.wal_segment_size);
        let lag = pg::standby_lag(&repo, &status, segment_size).await?;
        let behind = lag.behind(status.last_replayed_commit);
        Ok(StandbyReadiness::new(
            true,
            Some(behind),
            format!(
                "standby database replays {} on timeline {} ({} segment(s) behind the archive's \
                 newest, {}), last commit replayed {}",
                status.replay_lsn,
                status.timeline,
                lag.segments,
                lag.newest_archived.as_deref().unwrap_or("none"),
                status
                    .last_replayed_commit
                    .map_or("none".into(), |t| t.to_rfc3339())
            ),
        ))
    }
    /// Run the hook of `step`, if any: what it printed, or why it failed (retried).
    async fn hook(&self, spec: &FailoverSpec, step: &str) -> Result<Option<String>> {
        let Some(argv) = self.settings.hooks.get(step) else {
            return Ok(None);
        };
        let mut command = tokio::process::Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .current_dir(&self.dir)
            .env("DEPLOYKIT_FAILOVER_ID", spec.id.as_str())
            .env("DEPLOYKIT_FAILOVER_FROM", spec.from.as_str())
            .env("DEPLOYKIT_FAILOVER_TO", spec.to.as_str())
            .env("DEPLOYKIT_FAILOVER_STEP", step)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let what = format!("the {step} hook ({})", argv.join(" "));
        let out = tokio::time::timeout(self.settings.step_timeout, command.output())
            .await
            .map_err(|_| {
                Error::transient(
                    what.clone(),
                    format!("still running after {:?}", self.settings.step_timeout),
                )
            })?
            .map_err(|e| Error::transient(what.clone(), e.to_string()))?;
        let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
        if !out.status.success() {
            return Err(Error::transient(
                what,
                format!("{}: {}", out.status, text(&out.stderr)),
            ));
        }
        Ok(Some(text(&out.stdout)))
    }

    /// `detail` and the hook's output, as a step's outcome.
    async fn with_hook(
        &self,
        spec: &FailoverSpec,
        step: &str,
        detail: String,
    ) -> Result<StepOutcome> {
        let hook = self.hook(spec, step).await?;
        Ok(StepOutcome::new(match hook {
            None => detail,
            Some(out) if out.is_empty() => format!("{detail}; {step} hook done"),
            Some(out) => format!("{detail}; {step} hook: {out}"),
        }))
    }
}

#[async_trait]
impl FailoverSite for ConfiguredSite {
    async fn readiness(&self, spec: &FailoverSpec) -> Result<StandbyReadiness> {
        let Some(warm) = &self.warm else {
            return self.database_readiness(spec).await;
        };
        let services = match warm.readiness().await {
            Ok(detail) => detail,
            Err(why) => return Ok(StandbyReadiness::new(false, None, why)),
        };
        let mut db = self.database_readiness(spec).await?;
        db.detail = format!("{services}; {}", db.detail);
        Ok(db)
    }

    async fn fence(&self, spec: &FailoverSpec) -> Result<StepOutcome> {
        let detail = match self
            .settings
            .database
            .as_ref()
            .and_then(|d| d.primary_pgdata.as_ref())
        {
            Some(dir) => match pg::fence_primary(dir).await {
                Ok(f) => match f.stopped {
                    Some(pid) => format!("primary database fenced, its server (pid {pid}) stopped"),
                    None => "primary database fenced (no server ran on it)".to_string(),
                },
                // The primary's machine is gone with its directory: nothing there can take
                // writes.
                Err(_) if !dir.exists() => format!("primary database {} is gone", dir.display()),
                Err(e) => return Err(e),
            },
            None => "no primary database here to fence".to_string(),
        };
        self.with_hook(spec, "fence", detail).await
    }

    async fn promote_database(&self, spec: &FailoverSpec) -> Result<StepOutcome> {
        let Some(client) = self.standby_db().await? else {
            return self
                .with_hook(spec, "promote_database", "no database configured".into())
                .await;
        };
        let promotion = pg::promote_standby(&client, self.settings.step_timeout).await?;
        let last = promotion
            .last_replayed_commit
            .and_then(|t| u64::try_from(t.timestamp_millis()).ok())
            .map(Timestamp::from_millis);
        let detail = format!(
            "standby database promoted in {:.1} s: timeline {}, at {}",
            promotion.duration.as_secs_f64(),
            promotion.timeline,
            promotion.lsn
        );
        Ok(self
            .with_hook(spec, "promote_database", detail)
            .await?
            .with_last_replicated_commit(last))
    }

    async fn scale(&self, spec: &FailoverSpec) -> Result<StepOutcome> {
        let detail = match &self.warm {
            Some(warm) => warm.scale(self.settings.step_timeout).await?,
            None => "the standby runs as it is".into(),
        };
        self.with_hook(spec, "scale", detail).await
    }

    async fn switch_traffic(&self, spec: &FailoverSpec) -> Result<StepOutcome> {
        let detail = match &self.warm {
            Some(warm) => warm.switch().await?,
            None if self.settings.hooks.contains_key("switch_traffic") => {
                format!("the switch_traffic hook moves clients to {}", spec.to)
            }
            None => format!(
                "nothing configured moves clients (no warm standby, no switch_traffic hook): \
                 point them at {} yourself",
                spec.to
            ),
        };
        self.with_hook(spec, "switch_traffic", detail).await
    }

    async fn verify(&self, spec: &FailoverSpec) -> Result<StepOutcome> {
        let detail = match self.standby_db().await? {
            Some(client) => {
                // It takes writes: a transaction that writes and is rolled back.
                pg::simple_query(
                    &client,
                    "BEGIN; CREATE TEMP TABLE deploykit_failover_check (n int); ROLLBACK",
                )
                .await
                .map_err(|e| Error::transient("verify the promoted database", e.chain()))?;
                let status = pg::standby_status(&client).await?;
                if status.in_recovery {
                    return Err(Error::transient(
                        "verify the promoted database",
                        "it is still in recovery",
                    ));
                }
                format!(
                    "the promoted database takes writes (timeline {})",
                    status.timeline
                )
            }
            None => "no database to check".to_string(),
        };
        let detail = match &self.warm {
            Some(warm) => format!("{detail}; {}", warm.verify().await?),
            None => detail,
        };
        self.with_hook(spec, "verify", detail).await
    }
}

/// The repository at `dir` (key from DEPLOYKIT_REPO_KEY_FILE or DEPLOYKIT_REPO_PASSWORD).
async fn open_repo(dir: &Path) -> Result<Repository> {
    let key = crate::pg::key()?;
    Repository::open(Arc::new(LocalTarget::new(dir)?), &key).await
}
