//! Running the duties: each on its own loop, one run at a time per repository, every run
//! retried by the job's policy, recorded in the state file, audited, and followed by an
//! evaluation of the alert rules.

use std::sync::Arc;
use std::time::Duration;

use super::duties::Outcome;
use super::job::{Duty, Missed};
use super::state::{AgentProcess, MissRecord, RunRecord};
use super::{AgentEvent, Inner, Task};
use crate::{BackupKind, ReadData};
use deploykit_core::time::Timestamp;
use deploykit_core::{Error, Result};

/// How a run came about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Occasion {
    /// At its time.
    OnTime,
    /// At start (or late), for runs that fell due while nobody ran them.
    CatchUp,
    /// A slice of the data read after a backup (recorded under `verify`, off its schedule).
    AfterBackup,
}

/// The grace after a due time before a duty counts as overdue: its schedule's period (the
/// time from that run to the one after), at least a second and at most an hour.
fn grace(task: &Task, duty: Duty, due: Timestamp) -> Duration {
    let period = match task.job.next_due(duty, due) {
        Ok(Some((next, _))) => next.since(due),
        _ => Duration::from_secs(3600),
    };
    period.clamp(Duration::from_secs(1), Duration::from_secs(3600))
}

impl Inner {
    /// Write the state file; a failure is logged (the history shown goes stale, and `backup
    /// status` reports the duties overdue).
    fn save(&self) {
        // Written under the lock: concurrent saves would race for the temporary file.
        let state = self.state.lock().expect("agent state lock");
        if let Err(e) = state.save(&self.state_file) {
            tracing::error!(error = %e.chain(), "the backup agent cannot record its state");
        }
    }

    /// Record this process as the agent, and when each duty was first scheduled.
    pub(super) fn start(&self) -> Result<()> {
        let now = self.clock.now();
        {
            let mut state = self.state.lock().expect("agent state lock");
            if let Some(other) = &state.agent
                && other.pid != std::process::id()
                && other.is_alive(now)
            {
                return Err(Error::invalid(
                    self.state_file.display().to_string(),
                    format!(
                        "another backup agent (pid {}, started {}) runs with this state file",
                        other.pid, other.started
                    ),
                ));
            }
            state.agent = Some(AgentProcess {
                pid: std::process::id(),
                started: now,
                heartbeat: now,
                heartbeat_every: self.heartbeat,
                stopped: None,
            });
            for task in &self.tasks {
                let env = state
                    .environments
                    .entry(task.job.environment.clone())
                    .or_default();
                env.repository = task.job.repository.as_ref().map_or_else(
                    || format!("{:?}", task.repo.target()),
                    |p| p.display().to_string(),
                );
                for duty in Duty::ALL {
                    let d = env.duties.entry(duty).or_default();
                    d.since.get_or_insert(now);
                    d.running = None;
                }
            }
        }
        self.state
            .lock()
            .expect("agent state lock")
            .save(&self.state_file)
    }

    /// Record that the agent stopped.
    pub(super) fn stop(&self) {
        {
            let mut state = self.state.lock().expect("agent state lock");
            let now = self.clock.now();
            if let Some(agent) = &mut state.agent {
                agent.stopped = Some(now);
            }
            for env in state.environments.values_mut() {
                for d in env.duties.values_mut() {
                    d.running = None;
                }
            }
        }
        self.save();
    }

    pub(super) async fn heartbeat_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.heartbeat).await;
            {
                let mut state = self.state.lock().expect("agent state lock");
                if let Some(agent) = &mut state.agent {
                    agent.heartbeat = self.clock.now();
                }
            }
            self.save();
        }
    }

    /// Run `duty` of task `i` whenever it is due, forever; returns when its schedule has no
    /// further run.
    pub(super) async fn duty_loop(self: Arc<Self>, i: usize, duty: Duty) -> Result<()> {
        let task = &self.tasks[i];
        let env = task.job.environment.clone();
        loop {
            let now = self.clock.now();
            let after = {
                let mut state = self.state.lock().expect("agent state lock");
                let d = state.duty(&env, duty);
                d.last_due.or(d.since).unwrap_or(now)
            };
            if let Some(missed) = task.job.missed(duty, after, now)? {
                self.note_miss(task, duty, &missed, now).await;
                let record = MissRecord {
                    first_due: missed.first,
                    last_due: missed.last,
                    runs: missed.count,
                    noticed: now,
                };
                self.execute(task, duty, missed.last, missed.kind, Some(record))
                    .await;
                continue;
            }
            let Some((due, kind)) = task.job.next_due(duty, after)? else {
                self.update(&env, duty, |d| {
                    d.next_due = None;
                    d.overdue_after = None;
                });
                return Ok(());
            };
            let limit = due.plus(grace(task, duty, due));
            self.update(&env, duty, |d| {
                d.next_due = Some(due);
                d.overdue_after = Some(limit);
            });
            tokio::time::sleep(due.since(self.clock.now())).await;
            self.execute(task, duty, due, kind, None).await;
        }
    }

    /// Change the state of `duty` in `env` and save it.
    fn update(&self, env: &str, duty: Duty, change: impl FnOnce(&mut super::DutyState)) {
        change(self.state.lock().expect("agent state lock").duty(env, duty));
        self.save();
    }

    async fn note_miss(&self, task: &Task, duty: Duty, missed: &Missed, now: Timestamp) {
        let env = &task.job.environment;
        tracing::warn!(
            environment = %env,
            duty = %duty,
            runs = missed.count,
            first_due = %missed.first,
            "backup agent: runs were missed while it was not running; running once now"
        );
        self.update(env, duty, |d| {
            d.missed += missed.count;
            d.miss_unresolved = true;
            d.last_miss = Some(MissRecord {
                first_due: missed.first,
                last_due: missed.last,
                runs: missed.count,
                noticed: now,
            });
        });
        self.evaluate_alerts().await;
    }

    async fn evaluate_alerts(&self) {
        if let Some(alerting) = &self.alerting {
            alerting.evaluate(&self.monitor).await;
        }
    }

    /// Run `duty` for its slot `due`, then a slice of verification after a backup.
    async fn execute(
        &self,
        task: &Task,
        duty: Duty,
        due: Timestamp,
        kind: Option<BackupKind>,
        caught_up: Option<MissRecord>,
    ) {
        let env = task.job.environment.clone();
        let queued = self.clock.now();
        self.update(&env, duty, |d| d.running = Some(queued));
        let _one_at_a_time = task.lock.lock().await;
        let started = self.clock.now();
        let occasion = if caught_up.is_some() {
            Occasion::CatchUp
        } else {
            Occasion::OnTime
        };
        let outcome = match duty {
            Duty::Backup => {
                self.backup(task, kind.unwrap_or(BackupKind::Incremental), &caught_up)
                    .await
            }
            Duty::Verify => self.verify(task, ReadData::All, "full".into()).await,
            Duty::Drill => self.drill(task).await,
            Duty::Rehearsal => self.rehearse(task).await,
        };
        let backed_up = duty == Duty::Backup && outcome.result.is_ok();
        self.finish(task, duty, due, started, outcome, occasion, caught_up)
            .await;
        if backed_up && task.job.verify.subsets > 0 {
            let total = task.job.verify.subsets;
            let n = {
                let mut state = self.state.lock().expect("agent state lock");
                let env_state = state.environments.entry(env.clone()).or_default();
                let n = if (1..=total).contains(&env_state.next_subset) {
                    env_state.next_subset
                } else {
                    1
                };
                env_state.next_subset = n % total + 1;
                n
            };
            let started = self.clock.now();
            let outcome = self
                .verify(
                    task,
                    ReadData::Subset(n, total),
                    format!("subset {n}/{total}"),
                )
                .await;
            self.finish(
                task,
                Duty::Verify,
                due,
                started,
                outcome,
                Occasion::AfterBackup,
                None,
            )
            .await;
        }
    }

    /// Record a finished run, tell subscribers, and evaluate the alert rules.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        task: &Task,
        duty: Duty,
        due: Timestamp,
        started: Timestamp,
        outcome: Outcome,
        occasion: Occasion,
        caught_up: Option<MissRecord>,
    ) {
        let env = &task.job.environment;
        let finished = self.clock.now();
        let ok = outcome.result.is_ok();
        let run = RunRecord {
            due,
            started,
            finished,
            kind: outcome.kind.clone(),
            attempts: outcome.attempts,
            detail: match &outcome.result {
                Ok(detail) | Err(detail) => detail.clone(),
            },
        };
        match &outcome.result {
            Ok(detail) => {
                tracing::info!(environment = %env, duty = %duty, kind = %outcome.kind, "{detail}")
            }
            Err(reason) => {
                tracing::warn!(environment = %env, duty = %duty, kind = %outcome.kind, attempts = outcome.attempts, "backup agent run failed: {reason}")
            }
        }
        let next = if occasion == Occasion::AfterBackup {
            None
        } else {
            task.job.next_due(duty, due).ok().flatten()
        };
        self.update(env, duty, |d| {
            if occasion != Occasion::AfterBackup {
                // Recorded only now: a run cut short by a crash is missed, and made up.
                d.last_due = Some(due);
                d.running = None;
                if let Some((next, _)) = next {
                    d.next_due = Some(next);
                    d.overdue_after = Some(next.plus(grace(task, duty, next)));
                }
            }
            d.failing = !ok;
            if let Some(measured) = &outcome.recovery {
                d.last_drill = Some(measured.clone());
            }
            if ok {
                let kind = outcome.kind.split(' ').next().unwrap_or_default();
                d.last_success_by_kind.insert(kind.to_string(), finished);
                d.last_success = Some(run.clone());
            } else {
                d.failures += 1;
                d.last_failure = Some(run.clone());
            }
        });
        if ok && occasion == Occasion::OnTime {
            // The agent is back on its schedule: the misses it noticed are behind it.
            if let Some(e) = self
                .state
                .lock()
                .expect("agent state lock")
                .environments
                .get_mut(env)
            {
                for d in e.duties.values_mut() {
                    d.miss_unresolved = false;
                }
            }
            self.save();
        }
        let _ = self.events.send(AgentEvent {
            environment: env.clone(),
            duty,
            run,
            ok,
            caught_up,
        });
        self.evaluate_alerts().await;
    }
}
