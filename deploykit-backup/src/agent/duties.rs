//! What each duty does: a backup (then retention and prune), a read of the data, a drill, a
//! failover rehearsal — each retried by the job's policy and audited.

use super::audit::record_audit;
use super::state::MissRecord;
use super::{Inner, Task};
use crate::{BackupKind, PruneOptions, ReadData};
use deploykit_core::audit::AuditAction;
use deploykit_core::retry::{Retry, RetryPolicy};
use deploykit_core::{Error, Result};

use super::state::DrillMeasure;

/// What a run did: its label (kind), attempts made and outcome (detail, or why it failed).
pub(super) struct Outcome {
    pub(super) kind: String,
    pub(super) attempts: u32,
    pub(super) result: std::result::Result<String, String>,
    /// For a drill that ran to its end (its targets met or not): what it measured.
    pub(super) recovery: Option<DrillMeasure>,
}

/// Runs `op` under `policy`, retrying every error but a bad specification; returns the result
/// and the attempts made.
pub(super) async fn retried<T, F, Fut>(
    policy: &RetryPolicy,
    what: &str,
    mut op: F,
) -> (Result<T>, u32)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut attempts = 0;
    let classify = |e: &Error| match e {
        Error::InvalidSpec { .. } => Retry::No,
        _ => Retry::Yes,
    };
    let result = policy
        .run(what, classify, || {
            attempts += 1;
            op()
        })
        .await
        .map_err(|e| e.into_inner());
    (result, attempts)
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

impl Inner {
    async fn audit(&self, action: AuditAction, env: &str, detail: String) {
        if let Some((store, actor)) = &self.audit
            && let Err(e) =
                record_audit(store.as_ref(), actor, action, env, self.clock.now(), detail).await
        {
            tracing::error!(error = %e.chain(), "the backup agent cannot append to the audit log");
        }
    }

    pub(super) async fn backup(
        &self,
        task: &Task,
        kind: BackupKind,
        caught_up: &Option<MissRecord>,
    ) -> Outcome {
        let env = &task.job.environment;
        let request = task.job.request(kind);
        let (taken, attempts) = retried(&task.job.retry, "scheduled backup", || {
            task.repo.backup(request.clone())
        })
        .await;
        let because = match caught_up {
            Some(m) => format!(
                " (catching up {} missed run{} due from {})",
                m.runs,
                if m.runs == 1 { "" } else { "s" },
                m.first_due
            ),
            None => String::new(),
        };
        let (id, snapshot) = match taken {
            Ok(taken) => taken,
            Err(e) => {
                let reason = e.chain();
                self.audit(
                    AuditAction::Backup,
                    env,
                    format!("{kind} backup{because} failed after {attempts} attempt(s): {reason}"),
                )
                .await;
                return Outcome {
                    kind: kind.to_string(),
                    attempts,
                    result: Err(reason),
                    recovery: None,
                };
            }
        };
        let s = &snapshot.summary;
        let mut detail = format!(
            "snapshot {}{because}: {} files, {} bytes read, {} bytes stored",
            short(&id),
            s.files,
            s.bytes_read,
            s.bytes_stored
        );
        self.audit(AuditAction::Backup, env, format!("{kind} backup {detail}"))
            .await;
        let result = match self.retention(task).await {
            Ok(Some(pruned)) => {
                detail.push_str("; ");
                detail.push_str(&pruned);
                self.audit(AuditAction::Prune, env, pruned).await;
                Ok(detail)
            }
            Ok(None) => Ok(detail),
            Err(e) => {
                let reason = format!(
                    "snapshot {} was taken, but retention and prune failed: {}",
                    short(&id),
                    e.chain()
                );
                self.audit(AuditAction::Prune, env, format!("failed: {}", e.chain()))
                    .await;
                Err(reason)
            }
        };
        Outcome {
            kind: kind.to_string(),
            attempts,
            result,
            recovery: None,
        }
    }

    /// Apply retention, then prune if the policy says so; what was done, if anything was.
    async fn retention(&self, task: &Task) -> Result<Option<String>> {
        let policy = &task.job.policy;
        let mut done = Vec::new();
        if !policy.retention.is_empty() {
            let (decisions, _) = retried(&task.job.retry, "retention", || {
                task.repo.forget(&policy.retention, false)
            })
            .await;
            let forgot = decisions?.iter().filter(|d| !d.keep).count();
            done.push(format!("retention forgot {forgot} snapshot(s)"));
        }
        if policy.prune {
            let (report, _) = retried(&task.job.retry, "prune", || {
                task.repo.prune(PruneOptions::default())
            })
            .await;
            let r = report?;
            done.push(format!(
                "prune deleted {} pack(s) ({} bytes), repacked {}, marked {} for deletion",
                r.deleted, r.bytes_deleted, r.repacked, r.marked
            ));
        }
        Ok((!done.is_empty()).then(|| done.join(", ")))
    }

    pub(super) async fn verify(&self, task: &Task, read: ReadData, kind: String) -> Outcome {
        let (report, attempts) =
            retried(&task.job.retry, "verify", || task.repo.verify(read)).await;
        let result = match report {
            Ok(r) if r.is_ok() => Ok(format!(
                "{} snapshot(s) sound; {} pack(s) read back ({} bytes)",
                r.snapshots, r.packs_read, r.bytes_read
            )),
            Ok(r) => {
                let shown: Vec<String> = r.problems.iter().take(3).map(|p| p.to_string()).collect();
                Err(format!(
                    "{} problem(s) found: {}{}",
                    r.problems.len(),
                    shown.join("; "),
                    if r.problems.len() > 3 { "; …" } else { "" }
                ))
            }
            Err(e) => Err(e.chain()),
        };
        Outcome {
            kind,
            attempts,
            result,
            recovery: None,
        }
    }

    pub(super) async fn drill(&self, task: &Task) -> Outcome {
        let env = &task.job.environment;
        let scratch = task
            .job
            .drill
            .scratch
            .clone()
            .unwrap_or_else(|| self.scratch.join(env));
        let targets = task.job.policy.targets;
        let (report, attempts) = retried(&task.job.retry, "drill", || async {
            std::fs::create_dir_all(&scratch).map_err(|e| {
                Error::backend(format!("create {}", scratch.display()), e.to_string())
            })?;
            task.repo.drill(&scratch, targets).await
        })
        .await;
        let mut recovery = None;
        let result = match report {
            Ok(r) => {
                recovery = Some(DrillMeasure {
                    rto_ms: u64::try_from(r.rto.as_millis()).unwrap_or(u64::MAX),
                    rpo_ms: u64::try_from(r.rpo.as_millis()).unwrap_or(u64::MAX),
                    met: r.meets_targets(),
                });
                let detail = format!(
                    "snapshot {}: {} files restored and checked; RTO {:.2?} (target {:?}), RPO {:.2?} (target {:?})",
                    short(&r.snapshot),
                    r.files,
                    r.rto,
                    r.targets.rto,
                    r.rpo,
                    r.targets.rpo
                );
                let met = r.meets_targets();
                self.audit(
                    AuditAction::Drill,
                    env,
                    format!("{detail}: {}", if met { "met" } else { "MISSED" }),
                )
                .await;
                if met {
                    Ok(detail)
                } else {
                    Err(format!("recovery objectives missed: {detail}"))
                }
            }
            Err(e) => {
                self.audit(
                    AuditAction::Drill,
                    env,
                    format!("failed after {attempts} attempt(s): {}", e.chain()),
                )
                .await;
                Err(e.chain())
            }
        };
        Outcome {
            kind: "drill".into(),
            attempts,
            result,
            recovery,
        }
    }

    /// Run the job's rehearsal command: success when it exits 0; its report (the last line of
    /// its standard output, JSON) gives the detail.
    pub(super) async fn rehearse(&self, task: &Task) -> Outcome {
        let env = &task.job.environment;
        let argv = &task.job.rehearsal.command;
        let (ran, attempts) = retried(&task.job.retry, "failover rehearsal", || async {
            let (program, args) = argv.split_first().ok_or_else(|| {
                Error::invalid(
                    format!("environments.{env}.backup.rehearsal.command"),
                    "is empty",
                )
            })?;
            let out = tokio::process::Command::new(program)
                .args(args)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output()
                .await
                .map_err(|e| Error::backend(format!("run {program}"), e.to_string()))?;
            let report = rehearsal_report(&out.stdout);
            if out.status.success() {
                return Ok(report);
            }
            let why = report.unwrap_or_else(|| {
                let err = String::from_utf8_lossy(&out.stderr);
                let tail: Vec<&str> = err.trim().lines().rev().take(3).collect();
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            });
            Err(Error::transient(
                format!("rehearsal ({})", argv.join(" ")),
                format!("{}: {why}", out.status),
            ))
        })
        .await;
        let result = match ran {
            Ok(report) => Ok(format!(
                "failover rehearsal succeeded{}",
                report.map_or(String::new(), |r| format!(": {r}"))
            )),
            Err(e) => Err(format!(
                "failover rehearsal failed after {attempts} attempt(s): {}",
                e.chain()
            )),
        };
        let detail = match &result {
            Ok(d) | Err(d) => d.clone(),
        };
        self.audit(AuditAction::Drill, env, detail).await;
        Outcome {
            kind: "rehearsal".into(),
            attempts,
            result,
            recovery: None,
        }
    }
}

/// What a rehearsal's report says, from the last line of its output: `<id>: <outcome>, RTO
/// <s> s`, or the `error` of a command that ended without one; `None` when that line is
/// neither.
fn rehearsal_report(stdout: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stdout);
    let last = text.trim().lines().last()?;
    let report: serde_json::Value = serde_json::from_str(last).ok()?;
    // A command that failed before it had a report says why (`-o json` errors).
    if let Some(error) = report.get("error").and_then(|e| e.as_str()) {
        return Some(error.to_string());
    }
    let id = report.get("id")?.as_str()?;
    let outcome = report
        .pointer("/outcome/outcome")
        .and_then(|o| o.as_str())
        .unwrap_or("unfinished");
    let reason = report
        .pointer("/outcome/reason")
        .and_then(|o| o.as_str())
        .map_or(String::new(), |r| format!(" ({r})"));
    let rto = report
        .get("rto_ms")
        .and_then(serde_json::Value::as_u64)
        .map_or(String::new(), |ms| {
            format!(", RTO {:.1} s", ms as f64 / 1000.0)
        });
    Some(format!("{id}: {outcome}{reason}{rto}"))
}
