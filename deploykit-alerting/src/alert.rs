//! What alerting produces and delivers: alerts, their events and notifications, groups,
//! the [`AlertSink`] trait, and label sets.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use deploykit_core::Result;
use deploykit_core::model::{EnvironmentName, RevisionId, ServiceId};
use deploykit_core::time::Timestamp;

/// A label set: name → value, sorted by name.
pub type Labels = BTreeMap<String, String>;

/// A label set from pairs.
///
/// ```
/// let l = deploykit_alerting::labels([("severity", "critical"), ("team", "web")]);
/// assert_eq!(l["severity"], "critical");
/// ```
pub fn labels<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Labels {
    pairs
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
}

/// An alert's identity: 16 hex digits of a BLAKE3 hash of its sorted labels.
///
/// ```
/// use deploykit_alerting::{fingerprint, labels};
/// let a = fingerprint(&labels([("a", "1"), ("b", "2")]));
/// assert_eq!(a, fingerprint(&labels([("b", "2"), ("a", "1")])));
/// assert_ne!(a, fingerprint(&labels([("a", "12")])));
/// assert_eq!(a.len(), 16);
/// ```
pub fn fingerprint(labels: &Labels) -> String {
    let mut h = blake3::Hasher::new();
    for (k, v) in labels {
        // Length-prefixed, so no two label sets hash the same bytes.
        h.update(&(k.len() as u64).to_le_bytes());
        h.update(k.as_bytes());
        h.update(&(v.len() as u64).to_le_bytes());
        h.update(v.as_bytes());
    }
    h.finalize().to_hex()[..16].to_string()
}

/// `{a="1",b="2"}`.
pub(super) fn render_labels(labels: &Labels) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(","))
}

/// What rules are evaluated for: a service in an environment, optionally one revision of it.
///
/// ```
/// use deploykit_core::{EnvironmentName, RevisionId, ServiceId};
/// use deploykit_alerting::AlertTarget;
/// let t = AlertTarget::new(ServiceId::new("web")?, EnvironmentName::new("prod")?)
///     .with_revision(RevisionId::parse("0123456789abcdef")?);
/// assert!(t.revision.is_some());
/// # Ok::<(), deploykit_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AlertTarget {
    /// The service.
    pub service: ServiceId,
    /// The environment.
    pub environment: EnvironmentName,
    /// The revision, or `None` for the whole service.
    pub revision: Option<RevisionId>,
}

impl AlertTarget {
    /// The whole of `service` in `environment`.
    pub fn new(service: ServiceId, environment: EnvironmentName) -> Self {
        AlertTarget {
            service,
            environment,
            revision: None,
        }
    }

    /// The same target narrowed to one revision.
    pub fn with_revision(mut self, revision: RevisionId) -> Self {
        self.revision = Some(revision);
        self
    }
}

impl fmt::Display for AlertTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.service, self.environment)?;
        if let Some(r) = &self.revision {
            write!(f, "@{r}")?;
        }
        Ok(())
    }
}

/// Where an alert is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// Not active: only seen in an [`AlertEvent`] for a pending alert whose condition stopped
    /// holding before it fired (it is dropped, never notified).
    Inactive,
    /// The condition holds, but not yet for the rule's `for_`.
    Pending,
    /// Firing: routed and notified.
    Firing,
    /// Was firing and has stopped (after `keep_firing_for`).
    Resolved,
}

impl fmt::Display for AlertState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        })
    }
}

/// One alert: a rule's finding for one target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Alert {
    /// Its identity: [`fingerprint`] of its labels.
    pub fingerprint: String,
    /// The rule's labels plus `alertname`, `service`, `environment` and `revision` (if any).
    pub labels: Labels,
    /// The rule's annotations, rendered.
    pub annotations: Labels,
    /// Its state.
    pub state: AlertState,
    /// When its condition started holding (it became pending).
    pub active_at: Timestamp,
    /// When it started firing.
    pub started_at: Option<Timestamp>,
    /// When it was resolved.
    pub ended_at: Option<Timestamp>,
    /// The newest value seen (kept through rounds without data).
    pub value: Option<f64>,
    /// Ids of the active silences muting it.
    #[serde(default)]
    pub silenced_by: Vec<String>,
    /// Fingerprints of the firing alerts inhibiting it.
    #[serde(default)]
    pub inhibited_by: Vec<String>,
}

impl Alert {
    /// The `alertname` label.
    pub fn name(&self) -> &str {
        self.label("alertname").unwrap_or_default()
    }

    /// A label's value.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }

    /// Whether a silence or an inhibition mutes it.
    pub fn is_muted(&self) -> bool {
        !self.silenced_by.is_empty() || !self.inhibited_by.is_empty()
    }
}

/// A change of an alert's state, on [`super::Alerting::subscribe`]: to pending, to firing, to resolved,
/// or (for a pending alert whose condition stopped holding) to inactive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AlertEvent {
    /// The alert, in its new state.
    pub alert: Alert,
    /// Its previous state ([`AlertState::Inactive`] for a new alert).
    pub previous: AlertState,
    /// When the change was observed.
    pub at: Timestamp,
}

impl AlertEvent {
    /// Whether the alert has just started firing.
    pub fn is_firing(&self) -> bool {
        self.alert.state == AlertState::Firing
    }

    /// The `service` label.
    pub fn service(&self) -> Option<&str> {
        self.alert.label("service")
    }

    /// The `environment` label.
    pub fn environment(&self) -> Option<&str> {
        self.alert.label("environment")
    }

    /// The `revision` label (alerts of revision targets only).
    pub fn revision(&self) -> Option<&str> {
        self.alert.label("revision")
    }
}

/// Whether a notification reports firing alerts or only resolved ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationStatus {
    /// At least one alert of the group fires.
    Firing,
    /// Every alert in the notification is resolved.
    Resolved,
}

/// What a receiver is sent: one group's alerts (as Alertmanager's webhook payload).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AlertNotification {
    /// The receiver it is for.
    pub receiver: String,
    /// The group's key (give it to [`super::Alerting::acknowledge`]).
    pub group_key: String,
    /// The group's values of its route's `group_by` labels.
    pub group_labels: Labels,
    /// Firing if any alert fires.
    pub status: NotificationStatus,
    /// The group's unmuted firing alerts, then the alerts resolved since the receiver last
    /// heard of them; sorted by labels within each part.
    pub alerts: Vec<Alert>,
    /// 0 for the route's receiver; n for the receiver of the escalation policy's n-th step.
    pub escalation_level: u32,
    /// When it was sent.
    pub at: Timestamp,
}

/// Delivers notifications to one receiver (a pager, a chat, a webhook).
///
/// An error is logged and the notification is retried at the group's next tick
/// (`group_interval`); retrying sooner is the sink's own business.
#[async_trait]
pub trait AlertSink: Send + Sync + fmt::Debug {
    /// Deliver one notification.
    async fn deliver(&self, notification: &AlertNotification) -> Result<()>;
}

/// With the `webhook` feature, a `WebhookNotifier` POSTs each notification as
/// JSON, with its retries.
#[cfg(feature = "webhook")]
#[async_trait]
impl AlertSink for crate::webhook::WebhookNotifier {
    async fn deliver(&self, notification: &AlertNotification) -> Result<()> {
        self.post_json(notification).await
    }
}

/// Who acknowledged a group, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Acknowledgement {
    /// Who.
    pub by: String,
    /// When.
    pub at: Timestamp,
}

/// A group's current state, from [`super::Alerting::groups`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AlertGroup {
    /// Its key.
    pub key: String,
    /// Its route's receiver.
    pub receiver: String,
    /// Its values of the route's `group_by` labels.
    pub labels: Labels,
    /// Its firing alerts (muted ones marked), then resolved ones not yet notified.
    pub alerts: Vec<Alert>,
    /// How many escalation steps have been sent.
    pub escalation_level: u32,
    /// The acknowledgement, if any.
    pub acknowledged: Option<Acknowledgement>,
}
