//! `[notifications.<name>]`: where deploy events are sent, which ones, for which environments.

use std::collections::{BTreeMap, BTreeSet};

use deploykit_core::notify::{DEFAULT_EVENT_KINDS, EVENT_KINDS};
use deploykit_core::{EnvironmentSpec, Result};
use serde::Deserialize;
use toml::Spanned;

use crate::Located;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChannelToml {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    url: Option<Spanned<String>>,
    url_env: Option<Spanned<String>>,
    signing_key_env: Option<Spanned<String>>,
    smtp: Option<Spanned<String>>,
    from: Option<Spanned<String>>,
    #[serde(default)]
    to: Vec<Spanned<String>>,
    events: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    environments: Vec<Spanned<String>>,
}

/// One notification channel of `deploykit.toml`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NotificationChannel {
    /// Its name (the table's key).
    pub name: String,
    /// Where it sends.
    pub target: ChannelTarget,
    /// The event kinds it receives (`*`: all); by default `approval_requested`,
    /// `rollback_started` and `finished`.
    pub events: BTreeSet<String>,
    /// The environments whose events it receives (a name ending in `*` matches every one it
    /// starts); empty: all.
    pub environments: Vec<String>,
}

/// Where a channel sends.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelTarget {
    /// A Slack-compatible incoming webhook: `{"text": …}`.
    Slack {
        /// The webhook URL, or the variable holding it (a chat webhook's URL is its secret).
        url: Url,
    },
    /// The event as JSON, optionally signed with HMAC-SHA256.
    Webhook {
        /// The URL, or the variable holding it.
        url: Url,
        /// The variable holding the signing key, if requests are signed.
        signing_key_env: Option<String>,
    },
    /// A mail through an SMTP relay.
    Email {
        /// The relay, `host:port`.
        smtp: String,
        /// The sender.
        from: String,
        /// The recipients.
        to: Vec<String>,
    },
}

/// A URL written in the file, or the name of the variable that holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Url {
    /// Written in the file.
    Literal(String),
    /// In this environment variable.
    Env(String),
}

pub(crate) fn load(
    at: &Located<'_>,
    channels: &BTreeMap<String, Spanned<ChannelToml>>,
    environments: &BTreeMap<String, EnvironmentSpec>,
) -> Result<Vec<NotificationChannel>> {
    let mut out = Vec::new();
    for (name, spanned) in channels {
        let c = spanned.get_ref();
        let path = format!("notifications.{name}");
        let field = |f: &str| format!("{path}.{f}");
        let url = || -> Result<Url> {
            match (&c.url, &c.url_env) {
                (Some(u), None) => {
                    let text = u.get_ref();
                    if !(text.starts_with("http://") || text.starts_with("https://")) {
                        return Err(at.error(
                            u.span(),
                            &field("url"),
                            format!("{text:?} is not an http:// or https:// URL"),
                        ));
                    }
                    Ok(Url::Literal(text.clone()))
                }
                (None, Some(v)) => Ok(Url::Env(v.get_ref().clone())),
                (Some(u), Some(_)) => {
                    Err(at.error(u.span(), &field("url"), "give `url` or `url_env`, not both"))
                }
                (None, None) => Err(at.error(
                    spanned.span(),
                    &field("url"),
                    "is required (or `url_env`, the variable that holds it)",
                )),
            }
        };
        let unused = |what: &[(&str, bool)]| -> Result<()> {
            match what.iter().find(|(_, set)| *set) {
                Some((key, _)) => Err(at.error(
                    spanned.span(),
                    &field(key),
                    format!("does not apply to a channel of type {}", c.kind.get_ref()),
                )),
                None => Ok(()),
            }
        };
        let target = match c.kind.get_ref().as_str() {
            "slack" => {
                unused(&[
                    ("signing_key_env", c.signing_key_env.is_some()),
                    ("smtp", c.smtp.is_some()),
                    ("from", c.from.is_some()),
                    ("to", !c.to.is_empty()),
                ])?;
                ChannelTarget::Slack { url: url()? }
            }
            "webhook" => {
                unused(&[
                    ("smtp", c.smtp.is_some()),
                    ("from", c.from.is_some()),
                    ("to", !c.to.is_empty()),
                ])?;
                ChannelTarget::Webhook {
                    url: url()?,
                    signing_key_env: c.signing_key_env.as_ref().map(|v| v.get_ref().clone()),
                }
            }
            "email" => {
                unused(&[
                    ("url", c.url.is_some()),
                    ("url_env", c.url_env.is_some()),
                    ("signing_key_env", c.signing_key_env.is_some()),
                ])?;
                let smtp = c.smtp.as_ref().ok_or_else(|| {
                    at.error(
                        spanned.span(),
                        &field("smtp"),
                        "is required: the relay, host:port",
                    )
                })?;
                if !smtp
                    .get_ref()
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                {
                    return Err(at.error(
                        smtp.span(),
                        &field("smtp"),
                        format!("{:?} is not host:port", smtp.get_ref()),
                    ));
                }
                let from = c.from.as_ref().ok_or_else(|| {
                    at.error(
                        spanned.span(),
                        &field("from"),
                        "is required: the sender's address",
                    )
                })?;
                if c.to.is_empty() {
                    return Err(at.error(
                        spanned.span(),
                        &field("to"),
                        "is required: at least one recipient",
                    ));
                }
                for (i, t) in c.to.iter().chain(std::iter::once(from)).enumerate() {
                    let text = t.get_ref();
                    let ok = text
                        .rsplit_once('@')
                        .is_some_and(|(u, d)| !u.trim().is_empty() && !d.trim().is_empty());
                    if !ok {
                        let key = if i < c.to.len() {
                            format!("to[{i}]")
                        } else {
                            "from".to_string()
                        };
                        return Err(at.error(
                            t.span(),
                            &field(&key),
                            format!("{text:?} is not a mail address"),
                        ));
                    }
                }
                ChannelTarget::Email {
                    smtp: smtp.get_ref().clone(),
                    from: from.get_ref().clone(),
                    to: c.to.iter().map(|t| t.get_ref().clone()).collect(),
                }
            }
            other => {
                return Err(at.error(
                    c.kind.span(),
                    &field("type"),
                    format!("{other:?} is not one of slack, webhook, email"),
                ));
            }
        };
        let events: BTreeSet<String> = match &c.events {
            None => DEFAULT_EVENT_KINDS.iter().map(|k| k.to_string()).collect(),
            Some(list) => {
                for (i, e) in list.iter().enumerate() {
                    let kind = e.get_ref().as_str();
                    if kind != "*" && !EVENT_KINDS.contains(&kind) {
                        return Err(at.error(
                            e.span(),
                            &format!("{path}.events[{i}]"),
                            format!(
                                "{kind:?} is not an event kind: one of {}, or \"*\"",
                                EVENT_KINDS.join(", ")
                            ),
                        ));
                    }
                }
                list.iter().map(|e| e.get_ref().clone()).collect()
            }
        };
        if events.is_empty() {
            return Err(at.error(
                spanned.span(),
                &field("events"),
                "is empty: the channel would receive nothing",
            ));
        }
        for (i, e) in c.environments.iter().enumerate() {
            let name = e.get_ref();
            let known = match name.strip_suffix('*') {
                Some(prefix) => {
                    prefix == "preview-" || environments.keys().any(|k| k.starts_with(prefix))
                }
                None => environments.contains_key(name) || name.starts_with("preview-"),
            };
            if !known {
                return Err(at.error(
                    e.span(),
                    &format!("{path}.environments[{i}]"),
                    format!(
                        "{name:?} matches no environment (defined: {})",
                        environments.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
        out.push(NotificationChannel {
            name: name.clone(),
            target,
            events,
            environments: c.environments.iter().map(|e| e.get_ref().clone()).collect(),
        });
    }
    Ok(out)
}
