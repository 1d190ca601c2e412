//! Notifications people read: the channels of `[notifications.<name>]`, delivered by the
//! daemon from the journal (each event once, also across restarts), `deploykit notify test`,
//! and the alerting engine of the long-running commands (the backup agent, `failover watch`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deploykit_alerting::email::EmailNotifier;
use deploykit_alerting::webhook::{WebhookFormat, WebhookNotifier};
use deploykit_alerting::{
    AlertNotification, AlertRule, AlertSink, Alerting, Matcher, Route as AlertRoute,
};
use deploykit_config::{ChannelTarget, ChannelUrl, Config, NotificationChannel};
use deploykit_core::event::{FollowerCursor, JournalFollower};
use deploykit_core::notify::{Notifier, Route, Routed};
use deploykit_core::{Error, Result, StateStore};
use serde_json::json;
use tokio::sync::watch;

use crate::context::Context;

/// How often the daemon reads the journal for events to send.
const POLL: Duration = Duration::from_secs(1);

/// A variable's value, or an error naming the channel's field and the variable.
fn from_env(channel: &str, field: &str, var: &str) -> Result<String> {
    std::env::var(var).map_err(|_| {
        Error::invalid(
            format!("notifications.{channel}.{field}"),
            format!("the variable {var} is not set"),
        )
    })
}

fn url(channel: &str, url: &ChannelUrl) -> Result<String> {
    match url {
        ChannelUrl::Literal(u) => Ok(u.clone()),
        ChannelUrl::Env(var) => from_env(channel, "url_env", var),
    }
}

/// The notifier of one channel, without its route.
fn build(channel: &NotificationChannel) -> Result<Arc<dyn Notifier>> {
    let name = &channel.name;
    Ok(match &channel.target {
        ChannelTarget::Slack { url: u } => {
            Arc::new(WebhookNotifier::new(&url(name, u)?)?.with_format(WebhookFormat::Slack))
        }
        ChannelTarget::Webhook {
            url: u,
            signing_key_env,
        } => {
            let mut hook = WebhookNotifier::new(&url(name, u)?)?;
            if let Some(var) = signing_key_env {
                let key = from_env(name, "signing_key_env", var)?;
                hook = hook.with_signing_key(key.into_bytes()).map_err(|e| {
                    Error::invalid(
                        format!("notifications.{name}.signing_key_env"),
                        format!("{var}: {e}"),
                    )
                })?;
            }
            Arc::new(hook)
        }
        ChannelTarget::Email { smtp, from, to } => Arc::new(EmailNotifier::new(smtp, from, to)?),
        _ => {
            return Err(Error::invalid(
                format!("notifications.{name}.type"),
                "is not supported by this version",
            ));
        }
    })
}

/// Every channel's notifier behind its route, with its name.
pub(crate) fn channels(config: &Config) -> Result<Vec<(String, Arc<dyn Notifier>)>> {
    config
        .notifications()
        .iter()
        .map(|c| {
            let route = Route::new(c.events.iter().cloned(), c.environments.iter().cloned());
            Ok((
                c.name.clone(),
                Arc::new(Routed::new(route, build(c)?)) as Arc<dyn Notifier>,
            ))
        })
        .collect()
}

fn cursor_path(state_dir: &Path) -> PathBuf {
    state_dir.join("notify-cursor.json")
}

fn load_cursor(path: &Path) -> Result<FollowerCursor> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            Error::invalid(
                path.display().to_string(),
                format!("is not a notification cursor ({e}); delete it to send only new events"),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FollowerCursor::default()),
        Err(e) => Err(Error::backend(
            format!("read {}", path.display()),
            e.to_string(),
        )),
    }
}

/// Written beside, then renamed over: a crash leaves the old cursor or the new one.
fn save_cursor(path: &Path, cursor: &FollowerCursor) -> Result<()> {
    let io = |e: std::io::Error| Error::backend(format!("write {}", path.display()), e.to_string());
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(cursor).unwrap_or_default()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The daemon's delivery: every journal entry written by any command on this state, sent to
/// each channel its route admits, in order, until `stop`. The position is saved after each
/// round, so a restarted daemon sends what happened while it was down (at least once) and
/// nothing from before. A channel that fails after its retries is logged and skipped for
/// that event: one broken chat webhook does not hold back the mail.
pub(crate) async fn deliver(
    store: Arc<dyn StateStore>,
    channels: Vec<(String, Arc<dyn Notifier>)>,
    state_dir: &Path,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let path = cursor_path(state_dir);
    let mut follower = JournalFollower::from_cursor(store, load_cursor(&path)?).await?;
    let mut failing = false;
    loop {
        match follower.poll().await {
            Ok(mut events) => {
                failing = false;
                // Older deployments first; each deployment's entries in journal order.
                events.sort_by_key(|e| (e.created_at, e.deployment.clone(), e.entry.seq));
                for event in &events {
                    for (name, channel) in &channels {
                        if let Err(e) = channel.notify(event).await {
                            tracing::warn!(channel = %name, deployment = %event.deployment, error = %e.chain(), "notification not delivered");
                        }
                    }
                }
                if let Err(e) = save_cursor(&path, &follower.cursor()) {
                    tracing::warn!(error = %e.chain(), "notifications: cannot save where they stand");
                }
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e.chain(), "notifications: cannot read the journal");
            }
            Err(_) => {}
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
    }
}

/// `deploykit notify test [--channel NAME]`: the newest event of the environment's newest
/// deployment, sent through each channel (or one) now, whatever its route, to check that the
/// channel works; each channel's result is printed, and the exit code is 1 if any failed.
pub(crate) async fn test(ctx: &Context, env: Option<&str>, only: Option<&str>) -> Result<ExitCode> {
    let config = ctx.config()?;
    let environment = ctx.environment(env)?;
    let chosen: Vec<&NotificationChannel> = config
        .notifications()
        .iter()
        .filter(|c| only.is_none_or(|o| o == c.name))
        .collect();
    if chosen.is_empty() {
        let known: Vec<&str> = config
            .notifications()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        return Err(Error::invalid(
            "--channel",
            match only {
                Some(o) => format!(
                    "no channel {o:?} in [notifications] (known: {})",
                    known.join(", ")
                ),
                None => "deploykit.toml has no [notifications.<name>] channel".to_string(),
            },
        ));
    }
    let store = ctx.store().await?;
    let mut newest = None;
    for service in config.services() {
        if let Some(id) = store
            .list_deployments(&service.name, &environment)
            .await?
            .first()
        {
            let journal = store.load(id).await?.unwrap_or_default();
            let last = deploykit_core::event::timeline(&journal)?.pop();
            if let Some(e) = last
                && newest
                    .as_ref()
                    .is_none_or(|n: &deploykit_core::Event| n.entry.at < e.entry.at)
            {
                newest = Some(e);
            }
        }
    }
    let event = newest.ok_or_else(|| {
        Error::not_found(format!(
            "a deployment in {environment} whose event could be sent (deploy first)"
        ))
    })?;
    let mut results = Vec::new();
    let mut text = vec![format!("sending: {event}")];
    let mut ok = true;
    for channel in chosen {
        let sent = match build(channel) {
            Ok(n) => n.notify(&event).await,
            Err(e) => Err(e),
        };
        match &sent {
            Ok(()) => text.push(format!("  {}: sent", channel.name)),
            Err(e) => {
                ok = false;
                text.push(format!("  {}: FAILED: {}", channel.name, e.chain()));
            }
        }
        results.push(json!({
            "channel": channel.name,
            "sent": sent.is_ok(),
            "error": sent.err().map(|e| e.chain()),
        }));
    }
    ctx.print(
        text.join("\n"),
        json!({ "event": event.to_string(), "channels": results }),
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Alerts on stderr: one line per alert of each notification.
#[derive(Debug)]
struct StderrSink;

#[async_trait]
impl AlertSink for StderrSink {
    async fn deliver(&self, n: &AlertNotification) -> Result<()> {
        for alert in &n.alerts {
            eprintln!(
                "deploykit: alert {} {} for {}: {}",
                alert.name(),
                if alert.state == deploykit_alerting::AlertState::Firing {
                    "firing"
                } else {
                    "resolved"
                },
                alert.label("environment").unwrap_or("?"),
                alert.annotations.get("summary").map_or("", String::as_str)
            );
        }
        Ok(())
    }
}

/// An alerting engine evaluating `rules` every `interval`: every alert on stderr, and each
/// environment's alerts also to its webhook (`(environment, url)` of `webhooks`).
pub(crate) fn alerting<'a>(
    rules: Vec<AlertRule>,
    webhooks: impl Iterator<Item = (&'a str, &'a str)>,
    interval: Duration,
) -> Result<Alerting> {
    let mut routes = vec![
        AlertRoute::builder()
            .receiver("stderr")
            .continue_(true)
            .build(),
    ];
    let mut builder = Alerting::builder()
        .rules(rules)
        .sink("stderr", Arc::new(StderrSink));
    for (environment, url) in webhooks {
        let receiver = format!("webhook-{environment}");
        routes.push(
            AlertRoute::builder()
                .matchers(vec![Matcher::eq("environment", environment)])
                .receiver(receiver.clone())
                .continue_(true)
                .build(),
        );
        builder = builder.sink(receiver, Arc::new(WebhookNotifier::new(url)?));
    }
    builder
        .route(
            AlertRoute::builder()
                .receiver("stderr")
                .group_by(["alertname", "environment"])
                .group_wait(Duration::ZERO)
                .group_interval(Duration::from_secs(60))
                .repeat_interval(Duration::from_secs(4 * 3600))
                .routes(routes)
                .build(),
        )
        .interval(interval)
        .build()
}
