//! The failover report: what happened, who decided, and what it cost (RTO, RPO), from the
//! journal alone, in Markdown for people and JSON for tools.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::{FailoverEvent, FailoverOutcome, FailoverRecord, FailoverStatus, Step, Trigger};
use crate::error::Result;
use crate::time::{Timestamp, option_duration_ms};

/// One line of the timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TimelineEntry {
    /// When.
    pub at: Timestamp,
    /// Milliseconds after the outage began (negative: before it, never for a failover).
    pub offset_ms: i64,
    /// The process that wrote it.
    pub by: String,
    /// What happened.
    pub what: String,
}

/// A failover's report, computed from its journal ([`FailoverReport::from_records`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct FailoverReport {
    /// The failover.
    pub id: String,
    /// Failover, failback or rehearsal.
    pub direction: String,
    /// From (the old primary).
    pub from: String,
    /// To (the new one).
    pub to: String,
    /// The services moved.
    pub services: Vec<String>,
    /// Who asked.
    pub requested_by: String,
    /// Why.
    pub reason: String,
    /// `manual` or `automatic`.
    pub trigger: String,
    /// The assessment's evidence for an automatic failover.
    pub evidence: Vec<String>,
    /// Whether the lag limit was overridden.
    pub forced: bool,
    /// The decisions taken, in words (assessment, escalations, the end).
    pub decisions: Vec<String>,
    /// How it ended (`None`: still running).
    pub outcome: Option<FailoverOutcome>,
    /// When the outage began: the first failing probe of an automatic failover, the request
    /// of a manual one.
    pub outage_started: Timestamp,
    /// When the standby was verified serving.
    pub verified_at: Option<Timestamp>,
    /// Recovery time: from the outage's start to verified service.
    #[serde(with = "option_duration_ms", rename = "rto_ms")]
    pub rto: Option<Duration>,
    /// When the last transaction the standby had received committed on the primary.
    pub last_replicated_commit: Option<Timestamp>,
    /// Recovery point: the window of commits that may be lost, from the last one the standby
    /// received to the outage's start (only commits made in it, if any, are lost).
    #[serde(with = "option_duration_ms", rename = "rpo_ms")]
    pub rpo: Option<Duration>,
    /// Every fact, in order.
    pub timeline: Vec<TimelineEntry>,
}

impl FailoverReport {
    /// The report of the journal `records` (also of an unfinished one).
    pub fn from_records(records: &[FailoverRecord]) -> Result<Self> {
        let status = FailoverStatus::from_records(records)?;
        let spec = &status.spec;
        let (trigger, evidence, outage_started) = match &spec.trigger {
            Trigger::Manual => ("manual", Vec::new(), spec.requested_at),
            Trigger::Automatic {
                lost_since,
                evidence,
            } => ("automatic", evidence.clone(), *lost_since),
        };
        let verified_at = status
            .done
            .iter()
            .find(|(s, _, _)| *s == Step::Verify)
            .map(|(_, _, at)| *at);
        let last_replicated_commit = status
            .outcome(Step::PromoteDatabase)
            .and_then(|o| o.last_replicated_commit);
        let mut decisions = Vec::new();
        let mut timeline = Vec::new();
        for r in records {
            let what = describe(&r.event);
            match &r.event {
                FailoverEvent::Assessed { decision, .. } => {
                    decisions.push(format!("go ahead: {decision}"));
                }
                FailoverEvent::Escalated { .. } | FailoverEvent::Finished { .. } => {
                    decisions.push(what.clone());
                }
                _ => {}
            }
            timeline.push(TimelineEntry {
                at: r.at,
                offset_ms: r.at.as_millis() as i64 - outage_started.as_millis() as i64,
                by: r.by.clone(),
                what,
            });
        }
        Ok(FailoverReport {
            id: spec.id.to_string(),
            direction: spec.direction.to_string(),
            from: spec.from.to_string(),
            to: spec.to.to_string(),
            services: spec.services.iter().map(ToString::to_string).collect(),
            requested_by: spec.requested_by.to_string(),
            reason: spec.reason.clone(),
            trigger: trigger.to_string(),
            evidence,
            forced: spec.force,
            decisions,
            outcome: status.finished.as_ref().map(|(o, _)| o.clone()),
            outage_started,
            verified_at,
            rto: verified_at.map(|v| v.since(outage_started)),
            last_replicated_commit,
            rpo: last_replicated_commit.map(|c| outage_started.since(c)),
            timeline,
        })
    }

    /// The report as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// The report as Markdown.
    pub fn to_markdown(&self) -> String {
        let secs = |d: Option<Duration>| {
            d.map_or_else(
                || "not known".to_string(),
                |d| format!("{:.1} s", d.as_secs_f64()),
            )
        };
        let outcome = match &self.outcome {
            None => "still running".to_string(),
            Some(FailoverOutcome::Succeeded) => "succeeded".to_string(),
            Some(FailoverOutcome::Refused { reason }) => format!("refused: {reason}"),
            Some(FailoverOutcome::Failed { reason }) => format!("failed: {reason}"),
        };
        let mut md = String::new();
        let _ = writeln!(
            md,
            "# {} of {} to {}: {outcome}\n",
            capitalised(&self.direction),
            self.from,
            self.to
        );
        let _ = writeln!(md, "| | |\n|---|---|");
        let _ = writeln!(md, "| failover | `{}` |", self.id);
        let _ = writeln!(md, "| services | {} |", self.services.join(", "));
        let _ = writeln!(
            md,
            "| asked by | {} ({}) |",
            self.requested_by, self.trigger
        );
        let _ = writeln!(md, "| reason | {} |", cell(&self.reason));
        let _ = writeln!(md, "| outage began | {} |", self.outage_started);
        let _ = writeln!(
            md,
            "| verified serving | {} |",
            self.verified_at.map_or("no".to_string(), |t| t.to_string())
        );
        let _ = writeln!(md, "| **RTO** | {} |", secs(self.rto));
        let _ = writeln!(
            md,
            "| **RPO** (window of commits that may be lost) | {} |",
            secs(self.rpo)
        );
        let _ = writeln!(
            md,
            "| last commit the standby had | {} |",
            self.last_replicated_commit
                .map_or("not known".to_string(), |t| t.to_string())
        );
        let _ = writeln!(
            md,
            "| forced past the lag limit | {} |",
            if self.forced { "yes" } else { "no" }
        );
        if !self.evidence.is_empty() {
            let _ = writeln!(md, "\n## Evidence\n");
            for e in &self.evidence {
                let _ = writeln!(md, "- {e}");
            }
        }
        let _ = writeln!(md, "\n## Decisions\n");
        for d in &self.decisions {
            let _ = writeln!(md, "- {d}");
        }
        let _ = writeln!(
            md,
            "\n## Timeline\n\n| at | after outage | by | what |\n|---|---:|---|---|"
        );
        for e in &self.timeline {
            let _ = writeln!(
                md,
                "| {} | {:+.1} s | {} | {} |",
                e.at,
                e.offset_ms as f64 / 1000.0,
                e.by,
                cell(&e.what)
            );
        }
        md
    }
}

/// A fact in words, as the timeline and notifications say it.
pub(crate) fn describe(event: &FailoverEvent) -> String {
    match event {
        FailoverEvent::Requested { spec } => format!(
            "{} of {} to {} requested by {}: {}",
            spec.direction, spec.from, spec.to, spec.requested_by, spec.reason
        ),
        FailoverEvent::Assessed {
            readiness,
            decision,
        } => format!("assessed: {decision} ({})", readiness.detail),
        FailoverEvent::StepStarted { step } => format!("{step}: started"),
        FailoverEvent::StepDone { step, outcome } => format!("{step}: done, {}", outcome.detail),
        FailoverEvent::Escalated {
            step,
            waited,
            error,
        } => format!(
            "escalated: {step} has taken {:.1} s ({error})",
            waited.as_secs_f64()
        ),
        FailoverEvent::Finished { outcome } => match outcome {
            FailoverOutcome::Succeeded => "succeeded".to_string(),
            FailoverOutcome::Refused { reason } => format!("refused: {reason}"),
            FailoverOutcome::Failed { reason } => format!("failed: {reason}"),
        },
    }
}

fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map_or_else(String::new, |c| {
        c.to_uppercase().chain(chars).collect::<String>()
    })
}

/// Text safe in a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}
