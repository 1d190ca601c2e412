//! Notifications: a [`Notifier`] receives every event of the orchestrator's stream, in order.

use std::fmt;

use async_trait::async_trait;
use serde::Serialize;

use crate::error::Result;
use crate::journal::Phase;
use crate::orchestrator::Event;
use crate::time::Timestamp;

/// Receives the orchestrator's events (created, started, step reached, analysis results,
/// approval requests, promoted, paused, aborted, rolled back with the reason, ...).
///
/// Each notifier gets its own queue and a task that delivers events one at a time, in order:
/// a slow notifier delays only itself, and never a deployment. An error is logged; retrying is
/// the notifier's own business (see `WebhookNotifier`).
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

#[cfg(feature = "webhook")]
mod webhook {
    use std::time::Duration;

    use async_trait::async_trait;

    use super::{Notification, Notifier};
    use crate::error::{Error, Result};
    use crate::orchestrator::Event;

    /// Posts each event as JSON ([`Notification`]) to a URL, retrying 5xx, 429 and connection
    /// errors with exponential back-off (200 ms doubling), at most `retries` times.
    ///
    /// ```no_run
    /// # fn demo() -> deploykit_core::Result<()> {
    /// let hook = deploykit_core::notify::WebhookNotifier::new("https://chat.example/hooks/deploys")?;
    /// # Ok(()) }
    /// ```
    #[derive(Clone, Debug)]
    pub struct WebhookNotifier {
        client: reqwest::Client,
        url: reqwest::Url,
        retries: u32,
    }

    impl WebhookNotifier {
        /// A notifier posting to `url`, with a 10 s timeout per attempt and 3 retries.
        pub fn new(url: &str) -> Result<Self> {
            let url = reqwest::Url::parse(url)
                .map_err(|e| Error::invalid("webhook.url", format!("{url:?}: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(Error::invalid(
                    "webhook.url",
                    format!("scheme {:?} is not http or https", url.scheme()),
                ));
            }
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| Error::Backend {
                    operation: "build webhook client".into(),
                    source: Box::new(e),
                })?;
            Ok(WebhookNotifier {
                client,
                url,
                retries: 3,
            })
        }

        /// Retry a failed delivery at most `retries` times.
        pub fn with_retries(mut self, retries: u32) -> Self {
            self.retries = retries;
            self
        }

        /// POST `body` as JSON, with the same retries and back-off as events (used, e.g., to
        /// deliver alert notifications).
        pub async fn post_json<T: serde::Serialize + Sync + ?Sized>(&self, body: &T) -> Result<()> {
            let mut delay = Duration::from_millis(200);
            let mut attempt = 0;
            loop {
                match self.attempt(body).await {
                    Err(e) if e.is_retryable() && attempt < self.retries => {
                        attempt += 1;
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                    other => return other,
                }
            }
        }

        async fn attempt<T: serde::Serialize + Sync + ?Sized>(&self, body: &T) -> Result<()> {
            let op = || format!("POST {}", self.url);
            let response = self
                .client
                .post(self.url.clone())
                .json(body)
                .send()
                .await
                .map_err(|e| Error::Transient {
                    operation: op(),
                    source: Box::new(e),
                })?;
            let status = response.status();
            if status.is_success() {
                Ok(())
            } else if status.is_server_error() || status.as_u16() == 429 {
                Err(Error::transient(op(), format!("status {status}")))
            } else {
                Err(Error::backend(op(), format!("status {status}")))
            }
        }
    }

    #[async_trait]
    impl Notifier for WebhookNotifier {
        async fn notify(&self, event: &Event) -> Result<()> {
            self.post_json(&Notification::from(event)).await
        }
    }
}

#[cfg(feature = "webhook")]
pub use webhook::WebhookNotifier;
