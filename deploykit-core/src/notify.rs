//! Notifications: a [`Notifier`] receives every event of the orchestrator's stream, in order.

use std::fmt;

use async_trait::async_trait;
use serde::Serialize;

use crate::error::Result;
use crate::event::Event;
use crate::journal::Phase;
use crate::time::Timestamp;

/// Receives the orchestrator's events (created, started, step reached, analysis results,
/// approval requests, promoted, paused, aborted, rolled back with the reason, ...).
///
/// Each notifier gets its own queue and a task that delivers events one at a time, in order:
/// a slow notifier delays only itself, and never a deployment. An error is logged; retrying is
/// the notifier's own business (see `deploykit_alerting::webhook::WebhookNotifier`).
#[async_trait]
pub trait Notifier: Send + Sync + fmt::Debug {
    /// Deliver one event.
    async fn notify(&self, event: &Event) -> Result<()>;
}

/// The compact, stable form of an event that leaves the process (e.g. a webhook's JSON body).
/// It carries no revision configuration, so nothing sensitive in a spec can leak through it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Notification {
    /// The deployment.
    pub deployment: String,
    /// Its service.
    pub service: String,
    /// Its environment.
    pub environment: String,
    /// The label of the revision it rolls out.
    pub revision: String,
    /// The event's kind (`created`, `step_reached`, `rollback_started`, ...).
    pub kind: String,
    /// The phase after the event.
    pub phase: Phase,
    /// Position in the deployment's journal.
    pub seq: u64,
    /// When it happened.
    pub at: Timestamp,
    /// One line for humans.
    pub message: String,
}

impl From<&Event> for Notification {
    fn from(e: &Event) -> Self {
        Notification {
            deployment: e.deployment.to_string(),
            service: e.service.to_string(),
            environment: e.environment.to_string(),
            revision: e.revision.clone(),
            kind: e.entry.event.kind().to_string(),
            phase: e.phase,
            seq: e.entry.seq,
            at: e.entry.at,
            message: e.description(),
        }
    }
}
