//! [`EmailNotifier`]: deploykit's events mailed over SMTP (feature `email`, lettre).
//!
//! Plain SMTP to a relay on a trusted network (a local Postfix, a cluster's mail relay): no TLS
//! and no authentication here, so keep the relay on loopback or inside the network.

use std::time::Duration;

use async_trait::async_trait;
use deploykit_core::notify::{Notification, Notifier};
use deploykit_core::retry::{Retry, RetryPolicy};
use deploykit_core::{Error, Event, Result};
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// Mails each event to its recipients: the subject is the event's headline, the body its
/// deployment, phase and time. Transient SMTP answers (4xx) and connection failures are retried
/// under a [`RetryPolicy`] (4 attempts by default); a permanent refusal (5xx) is not.
///
/// ```no_run
/// # fn demo() -> deploykit_core::Result<()> {
/// let mail = deploykit_alerting::email::EmailNotifier::new(
///     "127.0.0.1:25",
///     "deploykit@shop.example",
///     &["oncall@shop.example".to_string()],
/// )?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EmailNotifier {
    relay: String,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    retry: RetryPolicy,
}

impl std::fmt::Debug for EmailNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailNotifier")
            .field("relay", &self.relay)
            .field("to", &self.to.len())
            .finish_non_exhaustive()
    }
}

fn mailbox(field: &str, text: &str) -> Result<Mailbox> {
    text.parse()
        .map_err(|e| Error::invalid(field, format!("{text:?} is not a mail address: {e}")))
}

impl EmailNotifier {
    /// A notifier sending through the relay at `relay` (`host:port`) from `from` to `to`.
    pub fn new(relay: &str, from: &str, to: &[String]) -> Result<Self> {
        let (host, port) = relay
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .filter(|(h, _)| !h.is_empty())
            .ok_or_else(|| Error::invalid("email.smtp", format!("{relay:?} is not host:port")))?;
        if to.is_empty() {
            return Err(Error::invalid("email.to", "names no recipient"));
        }
        let to = to
            .iter()
            .enumerate()
            .map(|(i, t)| mailbox(&format!("email.to[{i}]"), t))
            .collect::<Result<Vec<_>>>()?;
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .timeout(Some(Duration::from_secs(10)))
            .build();
        Ok(EmailNotifier {
            relay: relay.to_string(),
            transport,
            from: mailbox("email.from", from)?,
            to,
            retry: RetryPolicy::default().with_max_attempts(4)?,
        })
    }

    /// Retry failed deliveries under `policy`.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The message for `n`.
    fn message(&self, n: &Notification) -> Result<Message> {
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(format!("[deploykit] {}", n.headline()));
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        builder
            .header(ContentType::TEXT_PLAIN)
            .body(format!(
                "{}\n\ndeployment: {}\nservice:    {}\nenvironment: {}\nrevision:   {}\nphase:      {}\nevent:      {} (entry {})\nat:         {}\n",
                n.headline(),
                n.deployment,
                n.service,
                n.environment,
                n.revision,
                n.phase,
                n.kind,
                n.seq,
                n.at
            ))
            .map_err(|e| Error::backend("build the notification mail", e.to_string()))
    }

    /// Send `n` by mail, retrying transient failures.
    pub async fn send(&self, n: &Notification) -> Result<()> {
        let message = self.message(n)?;
        let operation = format!("mail through {}", self.relay);
        let classify = |e: &lettre::transport::smtp::Error| {
            if e.is_permanent() {
                Retry::No
            } else {
                Retry::Yes
            }
        };
        self.retry
            .run(&operation, classify, || {
                let message = message.clone();
                async move { self.transport.send(message).await.map(|_| ()) }
            })
            .await
            .map_err(|e| {
                e.into_error(operation.clone(), |e| Error::Backend {
                    operation: operation.clone(),
                    source: Box::new(e),
                })
            })
    }
}

#[async_trait]
impl Notifier for EmailNotifier {
    async fn notify(&self, event: &Event) -> Result<()> {
        self.send(&Notification::from(event)).await
    }

    async fn deliver(&self, notification: &Notification) -> Result<()> {
        self.send(notification).await
    }
}
