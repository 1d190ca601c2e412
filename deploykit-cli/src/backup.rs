//! `deploykit backup`, `restore` and `drill`: the backup engine on a local repository; and
//! `deploykit backup agent` (every environment's policy, run in the foreground) with `deploykit
//! backup status` (its history, exit 4 when a policy is overdue or its last run failed).
//!
//! The repository's passphrase comes from `DEPLOYKIT_REPO_PASSWORD` (never from an argument,
//! which other users could read in the process list; the agent reads the variable a policy's
//! `password_env` names). The environment's `backup` policy in `deploykit.toml` supplies
//! retention and the RTO/RPO targets a drill is measured against. Backups, restores, drills and
//! prunes are appended to the audit log of `<state>/deploykit.db` when there is a
//! configuration or a store (a one-off `backup --repo` in a bare directory creates no state).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use deploykit_backup::agent::{AgentEvent, AgentState, Duty, DutyState};
use deploykit_backup::{
    Agent, BackupKind, BackupRequest, DrillTargets, LocalTarget, RepoKey, RepoOptions, Repository,
    RestoreOptions, alert_rules, record_audit,
};
use deploykit_core::audit::AuditAction;
use deploykit_core::{Clock, Error, Result, SystemClock, Timestamp};
use serde_json::json;

use crate::context::Context;

/// Exit code of `backup status`: a policy is overdue or its last run failed.
pub(crate) const EXIT_BACKUP_UNHEALTHY: u8 = 4;

/// Arguments of `deploykit backup`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct BackupArgs {
    #[command(subcommand)]
    action: Option<BackupAction>,
    /// The repository directory (created and initialised on first use).
    #[arg(long, required = true)]
    repo: Option<PathBuf>,
    /// Full, incremental or differential.
    #[arg(long, default_value = "incremental")]
    kind: String,
    /// The environment whose retention applies after the backup.
    #[arg(long, short)]
    env: Option<String>,
    /// Paths to back up.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

/// `deploykit backup agent` and `deploykit backup status`.
#[derive(Subcommand, Debug)]
pub(crate) enum BackupAction {
    /// Run every environment's `[environments.<env>.backup]` policy in the foreground:
    /// scheduled backups with retention and prune, reads of the data, drills; missed runs are
    /// made up at start, failures retried, alerts sent (Ctrl-C or SIGTERM stops it).
    Agent(AgentArgs),
    /// What the backup agent did and will do, per environment; exit code 4 when a policy is
    /// overdue or its last run failed.
    Status(StatusArgs),
    /// Mirror a repository to a second place (a directory or s3://bucket/prefix): the same
    /// repository, copied incrementally and verified, consistent at every moment.
    Copy(crate::backup_copy::CopyArgs),
}

/// Arguments of `deploykit backup agent`.
#[derive(Args, Debug)]
pub(crate) struct AgentArgs {
    /// Only these environments (repeatable; default: every one with a backup policy).
    #[arg(long, short)]
    env: Vec<String>,
    /// Serve the agent's metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// How often the agent records that it is alive (`backup status` says it is not running
    /// after three missed beats).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
}

/// Arguments of `deploykit backup status`.
#[derive(Args, Debug)]
pub(crate) struct StatusArgs {
    /// Only this environment (default: every one with a backup policy).
    #[arg(long, short)]
    env: Option<String>,
}

/// Arguments of `deploykit restore`.
#[derive(Args, Debug)]
pub(crate) struct RestoreArgs {
    /// The repository directory.
    #[arg(long)]
    repo: PathBuf,
    /// The snapshot id (or a unique prefix; default: the newest).
    #[arg(long)]
    snapshot: Option<String>,
    /// Where to restore to.
    #[arg(long)]
    to: PathBuf,
}

/// Arguments of `deploykit drill`.
#[derive(Args, Debug)]
pub(crate) struct DrillArgs {
    /// The repository directory.
    #[arg(long)]
    repo: PathBuf,
    /// The environment whose RTO/RPO targets apply.
    #[arg(long, short)]
    env: Option<String>,
    /// A scratch directory to restore into (emptied first).
    #[arg(long)]
    scratch: PathBuf,
}

/// The passphrase in environment variable `var`.
fn key_from(var: &str) -> Result<RepoKey> {
    match std::env::var(var) {
        Ok(p) if !p.is_empty() => Ok(RepoKey::passphrase(p)),
        _ => Err(Error::invalid(var, "set it to the repository's passphrase")),
    }
}

fn key() -> Result<RepoKey> {
    key_from(deploykit_backup::agent::DEFAULT_PASSWORD_ENV)
}

async fn open_with(repo: &Path, create: bool, key: &RepoKey) -> Result<Repository> {
    let exists = repo.join("config").exists();
    let target = Arc::new(LocalTarget::new(repo)?);
    if !exists && create {
        return Repository::init(target, key, RepoOptions::default()).await;
    }
    Repository::open(target, key).await
}

async fn open(repo: &Path, create: bool) -> Result<Repository> {
    open_with(repo, create, &key()?).await
}

/// Append `action` on `environment` to the audit log, when this directory has a configuration
/// or a store (a one-off backup in a bare directory creates no state).
async fn audit(ctx: &Context, action: AuditAction, environment: Option<&str>, detail: String) {
    let store_exists = ctx.state.join("deploykit.db").exists();
    if ctx.config().is_err() && !store_exists {
        return;
    }
    let environment = environment
        .map(str::to_string)
        .or_else(|| ctx.environment(None).ok().map(|e| e.to_string()))
        .unwrap_or_else(|| "local".to_string());
    let appended = async {
        let store = ctx.store().await?;
        let now = SystemClock.now();
        record_audit(
            store.as_ref(),
            &ctx.actor,
            action,
            &environment,
            now,
            detail,
        )
        .await
    };
    if let Err(e) = appended.await {
        tracing::warn!(error = %e.chain(), "could not append to the audit log");
    }
}

pub(crate) async fn backup(ctx: &Context, args: BackupArgs) -> Result<ExitCode> {
    match args.action {
        Some(BackupAction::Agent(a)) => return agent(ctx, a).await,
        Some(BackupAction::Status(a)) => return status(ctx, a),
        Some(BackupAction::Copy(a)) => return crate::backup_copy::copy(ctx, a).await,
        None => {}
    }
    let repo_dir = args
        .repo
        .ok_or_else(|| Error::invalid("--repo", "name the repository directory"))?;
    let kind = match args.kind.as_str() {
        "full" => BackupKind::Full,
        "incremental" => BackupKind::Incremental,
        "differential" => BackupKind::Differential,
        other => {
            return Err(Error::invalid(
                "--kind",
                format!("{other:?}: expected full, incremental or differential"),
            ));
        }
    };
    let repo = open(&repo_dir, true).await?;
    let env = args.env.as_deref();
    let taken = repo
        .backup(
            BackupRequest::builder()
                .paths(args.paths)
                .kind(kind)
                .build(),
        )
        .await;
    let (id, saved) = match taken {
        Ok(taken) => taken,
        Err(e) => {
            let detail = format!(
                "{kind} backup into {} failed: {}",
                repo_dir.display(),
                e.chain()
            );
            audit(ctx, AuditAction::Backup, env, detail).await;
            return Err(e);
        }
    };
    let s = &saved.summary;
    audit(
        ctx,
        AuditAction::Backup,
        env,
        format!(
            "{kind} backup into {}: snapshot {}, {} files, {} bytes stored",
            repo_dir.display(),
            &id[..id.len().min(12)],
            s.files,
            s.bytes_stored
        ),
    )
    .await;
    let mut forgotten = 0;
    if let Some(env) = args.env.as_deref()
        && let Some(policy) = ctx.config()?.backup_policy(env)?
    {
        let decisions = repo.forget(&policy.retention, false).await?;
        forgotten = decisions.iter().filter(|d| !d.keep).count();
        if forgotten > 0 {
            let detail = format!(
                "retention forgot {forgotten} snapshot(s) in {}",
                repo_dir.display()
            );
            audit(ctx, AuditAction::Prune, Some(env), detail).await;
        }
    }
    ctx.print(
        format!(
            "snapshot {id}: {} files, read {} bytes, stored {} bytes; {forgotten} snapshots forgotten by retention",
            s.files, s.bytes_read, s.bytes_stored
        ),
        json!({ "snapshot": id, "files": s.files, "bytes_read": s.bytes_read, "bytes_stored": s.bytes_stored, "forgotten": forgotten }),
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn restore(ctx: &Context, args: RestoreArgs) -> Result<ExitCode> {
    let repo = open(&args.repo, false).await?;
    let id = match args.snapshot {
        Some(id) => repo.snapshot(&id).await?.0,
        None => {
            let snapshots = repo.snapshots().await?;
            let newest = snapshots
                .into_iter()
                .max_by_key(|(_, s)| s.time)
                .ok_or_else(|| Error::not_found("a snapshot in the repository"))?;
            newest.0
        }
    };
    let restored = repo
        .restore(&id, &args.to, &RestoreOptions::default())
        .await;
    let detail = match &restored {
        Ok(s) => format!(
            "restored snapshot {} of {} to {}: {} files, {} bytes",
            &id[..id.len().min(12)],
            args.repo.display(),
            args.to.display(),
            s.files,
            s.bytes
        ),
        Err(e) => format!(
            "restore of snapshot {} of {} to {} failed: {}",
            &id[..id.len().min(12)],
            args.repo.display(),
            args.to.display(),
            e.chain()
        ),
    };
    audit(ctx, AuditAction::Restore, None, detail).await;
    let summary = restored?;
    ctx.print(
        format!(
            "restored snapshot {id} to {}: {} files, {} bytes",
            args.to.display(),
            summary.files,
            summary.bytes
        ),
        json!({ "snapshot": id, "files": summary.files, "bytes": summary.bytes }),
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn drill(ctx: &Context, args: DrillArgs) -> Result<ExitCode> {
    let targets = match args.env.as_deref() {
        Some(env) => ctx
            .config()?
            .backup_policy(env)?
            .map(|p| p.targets)
            .unwrap_or_default(),
        None => DrillTargets::default(),
    };
    let repo = open(&args.repo, false).await?;
    let drilled = repo.drill(&args.scratch, targets).await;
    let detail = match &drilled {
        Ok(r) => format!(
            "drill of {}: snapshot {}, RTO {:.2?} (target {:?}), RPO {:.2?} (target {:?}): {}",
            args.repo.display(),
            &r.snapshot[..r.snapshot.len().min(12)],
            r.rto,
            r.targets.rto,
            r.rpo,
            r.targets.rpo,
            if r.meets_targets() { "met" } else { "MISSED" }
        ),
        Err(e) => format!("drill of {} failed: {}", args.repo.display(), e.chain()),
    };
    audit(ctx, AuditAction::Drill, args.env.as_deref(), detail).await;
    let report = drilled?;
    let met = report.meets_targets();
    ctx.print(
        format!(
            "drill of snapshot {}: RTO {:.2?} (target {:?}), RPO {:.2?} (target {:?}): {}",
            report.snapshot,
            report.rto,
            report.targets.rto,
            report.rpo,
            report.targets.rpo,
            if met { "met" } else { "MISSED" }
        ),
        json!({
            "snapshot": report.snapshot,
            "rto_ms": report.rto.as_millis() as u64,
            "rpo_ms": report.rpo.as_millis() as u64,
            "files": report.files,
            "bytes": report.bytes,
            "met": met,
        }),
    );
    Ok(if met {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `deploykit backup agent`.
async fn agent(ctx: &Context, args: AgentArgs) -> Result<ExitCode> {
    let config = ctx.config()?;
    for env in &args.env {
        if config.backup_policy(env)?.is_none() {
            return Err(Error::invalid(
                "--env",
                format!("environment {env} has no [environments.{env}.backup] policy"),
            ));
        }
    }
    let jobs: Vec<_> = config
        .backup_jobs()
        .filter(|j| args.env.is_empty() || args.env.contains(&j.environment))
        .collect();
    if jobs.is_empty() {
        return Err(Error::invalid(
            ctx.config_path.display().to_string(),
            "no environment has a backup policy: add [environments.<env>.backup] with \
             `repository`, `paths` and `rotation`",
        ));
    }
    let state = ctx.state_dir()?.to_path_buf();
    let metrics = Arc::new(deploykit_telemetry::metrics::Metrics::new());
    let mut builder = Agent::builder(state.join("backup-agent.json"))
        .audit(ctx.store().await?, ctx.actor.clone())
        .metrics(metrics)
        .heartbeat(args.heartbeat)
        .scratch(state.join("drill"));
    let mut summary = Vec::new();
    for job in &jobs {
        let env = &job.environment;
        let dir = job.repository.as_ref().ok_or_else(|| {
            Error::invalid(
                format!(
                    "{}: environments.{env}.backup.repository",
                    ctx.config_path.display()
                ),
                "the backup agent needs the repository directory of this environment",
            )
        })?;
        let repo = open_with(dir, true, &key_from(&job.password_env)?)
            .await
            .map_err(|e| e.noting(format_args!("the repository of {env}, {}", dir.display())))?;
        summary.push(format!("{env} into {}", dir.display()));
        let mut job = (*job).clone();
        if job.rehearsal.cron.is_some()
            && let Some(program) = job.rehearsal.command.first_mut()
        {
            // A rehearsal runs this very binary, with this configuration.
            *program = std::env::current_exe()
                .map_err(|e| Error::backend("find the deploykit binary", e.to_string()))?
                .display()
                .to_string();
        }
        builder = builder.job(job, repo);
    }
    let webhooks = jobs
        .iter()
        .filter_map(|j| Some((j.environment.as_str(), j.alert_webhook.as_deref()?)));
    let agent = builder
        .alerting(Arc::new(crate::notify::alerting(
            alert_rules(),
            webhooks,
            Duration::from_secs(30),
        )?))
        .build()?;
    if let Some(addr) = args.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            Error::backend(
                format!("bind the metrics listener to {addr}"),
                e.to_string(),
            )
        })?;
        let serving = agent.clone();
        tokio::spawn(async move { serving.serve_metrics(listener).await });
    }
    let mut events = agent.subscribe();
    let output = ctx.output;
    let printer = tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            print_event(output, &event);
        }
    });
    ctx.print(
        format!("backup agent running: {} (Ctrl-C stops it)", summary.join(", ")),
        json!({ "agent": "started", "environments": jobs.iter().map(|j| j.environment.clone()).collect::<Vec<_>>() }),
    );
    let ran = agent.run(shutdown()).await;
    printer.abort();
    ran?;
    Ok(ExitCode::SUCCESS)
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

fn print_event(output: crate::Output, e: &AgentEvent) {
    let run = &e.run;
    match output {
        crate::Output::Text => crate::out::line(format!(
            "{} {} {} ({}){}: {}{}",
            run.finished,
            e.environment,
            e.duty,
            run.kind,
            if e.ok { "" } else { " FAILED" },
            run.detail,
            if run.attempts > 1 {
                format!(" [{} attempts]", run.attempts)
            } else {
                String::new()
            }
        )),
        crate::Output::Json => crate::out::line(json!({
            "environment": e.environment,
            "duty": e.duty,
            "kind": run.kind,
            "ok": e.ok,
            "due": run.due.to_string(),
            "started": run.started.to_string(),
            "finished": run.finished.to_string(),
            "attempts": run.attempts,
            "detail": run.detail,
            "caught_up_runs": e.caught_up.as_ref().map(|m| m.runs),
        })),
    }
}

fn time(t: Option<Timestamp>) -> String {
    t.map_or_else(|| "-".to_string(), |t| t.to_string())
}

fn duty_json(d: &DutyState) -> serde_json::Value {
    let run = |r: &Option<deploykit_backup::agent::RunRecord>| {
        r.as_ref().map(|r| {
            json!({
                "due": r.due.to_string(),
                "started": r.started.to_string(),
                "finished": r.finished.to_string(),
                "kind": r.kind,
                "attempts": r.attempts,
                "detail": r.detail,
            })
        })
    };
    json!({
        "next_due": d.next_due.map(|t| t.to_string()),
        "running_since": d.running.map(|t| t.to_string()),
        "failing": d.failing,
        "last_success": run(&d.last_success),
        "last_failure": run(&d.last_failure),
        "last_success_by_kind": d.last_success_by_kind.iter().map(|(k, t)| (k.clone(), json!(t.to_string()))).collect::<serde_json::Map<_, _>>(),
        "failures": d.failures,
        "missed": d.missed,
        "last_miss": d.last_miss.as_ref().map(|m| json!({
            "first_due": m.first_due.to_string(),
            "last_due": m.last_due.to_string(),
            "runs": m.runs,
            "noticed": m.noticed.to_string(),
        })),
    })
}

fn duty_text(duty: Duty, d: &DutyState) -> String {
    let mut line = format!("  {:<7} next due {}", duty.as_str(), time(d.next_due));
    if let Some(since) = d.running {
        line.push_str(&format!(", running since {since}"));
    }
    if d.last_success_by_kind.is_empty() {
        line.push_str(", no success yet");
    } else {
        let kinds: Vec<String> = d
            .last_success_by_kind
            .iter()
            .map(|(k, t)| format!("{k} {t}"))
            .collect();
        line.push_str(&format!(", last success: {}", kinds.join(", ")));
    }
    if let Some(f) = &d.last_failure {
        line.push_str(&format!(
            "\n          last failure {} ({}): {}",
            f.finished, f.kind, f.detail
        ));
    }
    if d.missed > 0 {
        line.push_str(&format!("\n          {} run(s) missed in all", d.missed));
    }
    line
}

/// `deploykit backup status`.
fn status(ctx: &Context, args: StatusArgs) -> Result<ExitCode> {
    let config = ctx.config()?;
    let environments: Vec<String> = match &args.env {
        Some(env) => {
            if config.backup_policy(env)?.is_none() {
                return Err(Error::invalid(
                    "--env",
                    format!("environment {env} has no [environments.{env}.backup] policy"),
                ));
            }
            vec![env.clone()]
        }
        None => config
            .backup_jobs()
            .map(|j| j.environment.clone())
            .collect(),
    };
    let file = ctx.state.join("backup-agent.json");
    let state = AgentState::load(&file)?;
    let now = SystemClock.now();
    let agent_line = match &state.agent {
        Some(a) if a.is_alive(now) => format!(
            "backup agent: running (pid {}, started {}, last seen {})",
            a.pid, a.started, a.heartbeat
        ),
        Some(a) => format!(
            "backup agent: not running (pid {} {} {})",
            a.pid,
            if a.stopped.is_some() {
                "stopped at"
            } else {
                "last seen"
            },
            a.stopped.unwrap_or(a.heartbeat)
        ),
        None => format!("backup agent: never ran here (no {})", file.display()),
    };
    let mut text = vec![agent_line];
    let mut rows = Vec::new();
    let mut healthy = true;
    for env in &environments {
        let findings = state.findings(env, now);
        healthy &= findings.is_ok();
        let record = state.environments.get(env);
        text.push(format!(
            "{env}: {}{}",
            if findings.is_ok() {
                "ok"
            } else {
                "NEEDS ATTENTION"
            },
            record.map_or(String::new(), |r| format!(" (repository {})", r.repository))
        ));
        let mut duties = serde_json::Map::new();
        if let Some(record) = record {
            for (duty, d) in &record.duties {
                text.push(duty_text(*duty, d));
                duties.insert(duty.to_string(), duty_json(d));
            }
        }
        text.extend(findings.problems.iter().map(|p| format!("  problem: {p}")));
        text.extend(findings.notices.iter().map(|n| format!("  note: {n}")));
        rows.push(json!({
            "environment": env,
            "ok": findings.is_ok(),
            "repository": record.map(|r| r.repository.clone()),
            "problems": findings.problems,
            "notices": findings.notices,
            "duties": duties,
        }));
    }
    ctx.print(
        text.join("\n"),
        json!({
            "state_file": file.display().to_string(),
            "agent": state.agent.as_ref().map(|a| json!({
                "pid": a.pid,
                "running": a.is_alive(now),
                "started": a.started.to_string(),
                "heartbeat": a.heartbeat.to_string(),
                "stopped": a.stopped.map(|t| t.to_string()),
            })),
            "ok": healthy,
            "environments": rows,
        }),
    );
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_BACKUP_UNHEALTHY)
    })
}
