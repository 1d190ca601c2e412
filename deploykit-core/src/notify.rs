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

    /// Deliver a notification that is not a deployment's event (a failover's fact). By
    /// default a notifier takes deployment events only and says so.
    async fn deliver(&self, notification: &Notification) -> Result<()> {
        Err(crate::Error::invalid(
            "notifier",
            format!(
                "this notifier takes deployment events only, not {}",
                notification.kind
            ),
        ))
    }
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

impl Notification {
    /// One line for a chat message or a mail subject:
    /// `web/production v3: rolled back, verified: v2 2/2 ready, 100% of traffic`.
    pub fn headline(&self) -> String {
        format!(
            "{}/{} {}: {}",
            self.service, self.environment, self.revision, self.message
        )
    }
}

/// Every event kind a [`Notification`] may carry: a deployment's, as
/// [`crate::journal::JournalEvent::kind`] names it, and a failover's, as
/// [`crate::failover::FailoverEvent::kind`] names it after `failover_`.
pub const EVENT_KINDS: [&str; 20] = [
    "created",
    "started",
    "applied",
    "step_reached",
    "measured",
    "approval_requested",
    "approved",
    "ready_to_promote",
    "promoted",
    "paused",
    "resumed",
    "abort_requested",
    "rollback_started",
    "finished",
    "failover_requested",
    "failover_assessed",
    "failover_step_started",
    "failover_step_done",
    "failover_escalated",
    "failover_finished",
];

/// The kinds people act on, sent when a channel names none: a gate waiting for someone, a
/// rollback starting, every end, and a failover's request, each step it completed, its
/// escalations and its end.
pub const DEFAULT_EVENT_KINDS: [&str; 7] = [
    "approval_requested",
    "rollback_started",
    "finished",
    "failover_requested",
    "failover_step_done",
    "failover_escalated",
    "failover_finished",
];

/// Which events a notifier receives: by kind and by environment.
///
/// ```
/// use deploykit_core::notify::Route;
/// let route = Route::new(["finished"], ["production", "preview-*"]);
/// assert!(route.admits("finished", "preview-pr-7"));
/// assert!(!route.admits("finished", "staging"));
/// assert!(!route.admits("applied", "production"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Route {
    kinds: std::collections::BTreeSet<String>,
    environments: Vec<String>,
}

impl Route {
    /// Events of these `kinds` (`*` for all) in these `environments` (none: all; a name ending
    /// in `*` matches every environment it starts).
    pub fn new<K, E>(
        kinds: impl IntoIterator<Item = K>,
        environments: impl IntoIterator<Item = E>,
    ) -> Self
    where
        K: Into<String>,
        E: Into<String>,
    {
        Route {
            kinds: kinds.into_iter().map(Into::into).collect(),
            environments: environments.into_iter().map(Into::into).collect(),
        }
    }

    /// Whether an event of `kind` in `environment` goes through.
    pub fn admits(&self, kind: &str, environment: &str) -> bool {
        let kind_ok = self.kinds.contains("*") || self.kinds.contains(kind);
        let env_ok = self.environments.is_empty()
            || self.environments.iter().any(|e| match e.strip_suffix('*') {
                Some(prefix) => environment.starts_with(prefix),
                None => e == environment,
            });
        kind_ok && env_ok
    }
}

/// A notifier that receives only what its [`Route`] admits.
#[derive(Debug)]
pub struct Routed {
    route: Route,
    inner: std::sync::Arc<dyn Notifier>,
}

impl Routed {
    /// `inner`, receiving only the events `route` admits.
    pub fn new(route: Route, inner: std::sync::Arc<dyn Notifier>) -> Self {
        Routed { route, inner }
    }
}

#[async_trait]
impl Notifier for Routed {
    async fn notify(&self, event: &Event) -> Result<()> {
        if self
            .route
            .admits(event.entry.event.kind(), event.environment.as_str())
        {
            self.inner.notify(event).await
        } else {
            Ok(())
        }
    }

    async fn deliver(&self, notification: &Notification) -> Result<()> {
        if self
            .route
            .admits(&notification.kind, &notification.environment)
        {
            self.inner.deliver(notification).await
        } else {
            Ok(())
        }
    }
}

/// The header carrying a signed webhook body's signature: `sha256=<hex HMAC-SHA256 of the
/// body>` (deploy events, alert notifications and shipped logs are signed alike).
pub const WEBHOOK_SIGNATURE_HEADER: &str = "x-deploykit-signature";

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The [`WEBHOOK_SIGNATURE_HEADER`] value for `body` under `key`: `sha256=<hex>`.
pub fn webhook_signature(key: &[u8], body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + digest.len() * 2);
    out.push_str("sha256=");
    for byte in digest {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

/// Whether `signature` (a [`WEBHOOK_SIGNATURE_HEADER`] value) is `body`'s signature under `key`,
/// compared in constant time. What a receiver runs before trusting a body.
pub fn verify_webhook_signature(key: &[u8], body: &[u8], signature: &str) -> bool {
    use hmac::Mac;
    let Some(hex) = signature.trim().strip_prefix("sha256=") else {
        return false;
    };
    if !hex.len().is_multiple_of(2) {
        return false;
    }
    let digit = |byte: u8| char::from(byte).to_digit(16).map(|d| d as u8);
    let Some(expected) = hex
        .as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_its_body_under_its_key() {
        let key = b"0123456789abcdef-key";
        let sig = webhook_signature(key, b"{\"a\":1}");
        assert!(verify_webhook_signature(key, b"{\"a\":1}", &sig));
        assert!(!verify_webhook_signature(key, b"{\"a\":2}", &sig));
        assert!(!verify_webhook_signature(
            b"another key of 16+",
            b"{\"a\":1}",
            &sig
        ));
        for junk in [
            "",
            "sha256=",
            "sha256=zz",
            "sha256=abc",
            "md5=00",
            &sig[..sig.len() - 1],
        ] {
            assert!(!verify_webhook_signature(key, b"{\"a\":1}", junk), "{junk}");
        }
    }

    #[test]
    fn every_kind_is_listed_and_routes_match_kind_and_environment() {
        use crate::journal::JournalEvent;
        assert!(EVENT_KINDS.contains(&JournalEvent::Promoted.kind()));
        assert!(DEFAULT_EVENT_KINDS.iter().all(|k| EVENT_KINDS.contains(k)));
        let all = Route::new(["*"], Vec::<String>::new());
        assert!(all.admits("applied", "anything"));
        let prod = Route::new(["finished"], ["production"]);
        assert!(!prod.admits("finished", "production-eu"));
        assert!(prod.admits("finished", "production"));
    }
}
