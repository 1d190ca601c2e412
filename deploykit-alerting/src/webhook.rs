//! [`WebhookNotifier`]: deploykit's events and alert notifications POSTed as JSON over HTTP(S)
//! (reqwest with rustls), retried under the shared [`RetryPolicy`] (feature `webhook`).

use std::time::Duration;

use async_trait::async_trait;

use deploykit_core::Event;
use deploykit_core::notify::{Notification, Notifier, WEBHOOK_SIGNATURE_HEADER, webhook_signature};
use deploykit_core::retry::{Retry, RetryPolicy};
use deploykit_core::{Error, Result};

/// Posts each event as JSON ([`Notification`]) to a URL, retrying 5xx, 429 (waiting at
/// least the `Retry-After` the server gives) and connection errors under a
/// [`RetryPolicy`]: by default 4 attempts, 200 ms doubling, jittered.
///
/// ```no_run
/// # fn demo() -> deploykit_core::Result<()> {
/// let hook = deploykit_alerting::webhook::WebhookNotifier::new("https://chat.example/hooks/deploys")?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct WebhookNotifier {
    client: reqwest::Client,
    url: reqwest::Url,
    retry: RetryPolicy,
    key: Option<Vec<u8>>,
    format: WebhookFormat,
}

impl std::fmt::Debug for WebhookNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL of a chat webhook is its credential: only its host is shown.
        f.debug_struct("WebhookNotifier")
            .field("host", &self.url.host_str())
            .field("format", &self.format)
            .field("signed", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

/// The body of an event's POST.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum WebhookFormat {
    /// The [`Notification`] as JSON, for programs.
    #[default]
    Json,
    /// `{"text": …}` with the event's headline and a link-free detail line: what Slack's
    /// incoming webhooks (and Mattermost's, Rocket.Chat's) post as a message.
    Slack,
}

/// Why one POST failed.
#[derive(Debug, thiserror::Error)]
enum PostError {
    /// No answer (connection refused or reset, timeout), or no request at all.
    #[error(transparent)]
    Send(reqwest::Error),
    /// An answer other than 2xx, with the `Retry-After` (in seconds) it carried.
    #[error("status {status}")]
    Status {
        status: reqwest::StatusCode,
        retry_after: Option<Duration>,
    },
}

impl PostError {
    /// 5xx, 429 and missing answers are worth another attempt; a request that could not
    /// be built and other statuses are not.
    fn retry(&self) -> Retry {
        match self {
            PostError::Send(e) if e.is_builder() => Retry::No,
            PostError::Send(_) => Retry::Yes,
            PostError::Status {
                status,
                retry_after,
            } if status.is_server_error() || status.as_u16() == 429 => {
                retry_after.map_or(Retry::Yes, Retry::After)
            }
            PostError::Status { .. } => Retry::No,
        }
    }
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
            retry: RetryPolicy::default().with_max_attempts(4)?,
            key: None,
            format: WebhookFormat::Json,
        })
    }

    /// Retry a failed delivery at most `retries` times (this policy's other settings
    /// unchanged).
    pub fn with_retries(mut self, retries: u32) -> Self {
        self.retry = self
            .retry
            .with_max_attempts(retries.saturating_add(1))
            .expect("at least one attempt is valid");
        self
    }

    /// Signs every body with `key` (HMAC-SHA256, at least 16 bytes): each request carries
    /// [`WEBHOOK_SIGNATURE_HEADER`]: `sha256=<hex>`, which a receiver checks with
    /// [`deploykit_core::notify::verify_webhook_signature`] before trusting it.
    pub fn with_signing_key(mut self, key: impl Into<Vec<u8>>) -> Result<Self> {
        let key = key.into();
        if key.len() < 16 {
            return Err(Error::invalid(
                "webhook.signing_key",
                format!("is {} bytes; at least 16 are needed", key.len()),
            ));
        }
        self.key = Some(key);
        Ok(self)
    }

    /// Post events in `format` (default [`WebhookFormat::Json`]).
    pub fn with_format(mut self, format: WebhookFormat) -> Self {
        self.format = format;
        self
    }

    /// Retry failed deliveries under `policy`.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// POST `body` as JSON, with the same retries and back-off as events (used, e.g., to
    /// deliver alert notifications). Retries used up are an [`Error::Persistent`].
    pub async fn post_json<T: serde::Serialize + Sync + ?Sized>(&self, body: &T) -> Result<()> {
        // The host only: a chat webhook's path is its credential, and errors are logged.
        let operation = format!("POST to webhook at {}", self.url.host_str().unwrap_or("?"));
        let body = serde_json::to_vec(body)
            .map_err(|e| Error::backend(operation.clone(), format!("encode the body: {e}")))?;
        let signature = self.key.as_ref().map(|k| webhook_signature(k, &body));
        self.retry
            .run(&operation, PostError::retry, || {
                self.attempt(body.clone(), signature.as_deref())
            })
            .await
            .map_err(|e| {
                e.into_error(operation.clone(), |e| Error::Backend {
                    operation: operation.clone(),
                    source: Box::new(e),
                })
            })
    }

    async fn attempt(
        &self,
        body: Vec<u8>,
        signature: Option<&str>,
    ) -> std::result::Result<(), PostError> {
        let mut request = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(signature) = signature {
            request = request.header(WEBHOOK_SIGNATURE_HEADER, signature);
        }
        let response = request.body(body).send().await.map_err(PostError::Send)?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Err(PostError::Status {
            status,
            retry_after,
        })
    }
}

#[async_trait]
impl Notifier for WebhookNotifier {
    async fn notify(&self, event: &Event) -> Result<()> {
        self.deliver(&Notification::from(event)).await
    }

    async fn deliver(&self, n: &Notification) -> Result<()> {
        match self.format {
            WebhookFormat::Json => self.post_json(n).await,
            WebhookFormat::Slack => self.post_json(&slack_message(n)).await,
        }
    }
}

/// A chat message for `n`: an icon by what happened, the headline in bold, the deployment
/// and time below.
pub fn slack_message(n: &Notification) -> serde_json::Value {
    let icon = match (n.kind.as_str(), n.phase) {
        ("finished" | "failover_finished", deploykit_core::Phase::Succeeded) => {
            ":white_check_mark:"
        }
        ("finished" | "failover_finished", _)
        | ("rollback_started" | "failover_requested" | "failover_escalated", _) => {
            ":rotating_light:"
        }
        ("approval_requested", _) => ":raised_hand:",
        _ => ":information_source:",
    };
    // Slack's mrkdwn treats `&`, `<` and `>` as control characters.
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    serde_json::json!({
        "text": format!(
            "{icon} *{}*\ndeployment `{}` · {} · {}",
            escape(&n.headline()),
            escape(&n.deployment),
            n.phase,
            n.at
        ),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A server on loopback answering the requests with `answers` in turn (status, and a
    /// `Retry-After` in seconds), then with 200; counts the requests.
    async fn server(answers: Vec<(u16, Option<u64>)>) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let (status, retry_after) = answers.get(n).copied().unwrap_or((200, None));
                // Read the head and the body announced in it.
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(read @ 1..) = socket.read(&mut buf).await {
                    request.extend_from_slice(&buf[..read]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some(head_end) = text.find("\r\n\r\n") {
                        let length = text[..head_end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if request.len() >= head_end + 4 + length {
                            break;
                        }
                    }
                }
                let extra = retry_after
                    .map(|s| format!("retry-after: {s}\r\n"))
                    .unwrap_or_default();
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n{extra}\r\n"
                );
                let _ = socket.write_all(response.as_bytes()).await;
            }
        });
        (url, count)
    }

    fn quick(attempts: u32) -> RetryPolicy {
        RetryPolicy::default()
            .with_backoff(Duration::from_millis(10), Duration::from_secs(5))
            .and_then(|p| p.with_max_attempts(attempts))
            .expect("valid")
            .with_jitter(false)
    }

    #[tokio::test]
    async fn a_retry_after_is_waited_before_posting_again() {
        let (url, count) = server(vec![(503, Some(1))]).await;
        let hook = WebhookNotifier::new(&url)
            .expect("url")
            .with_retry(quick(3));
        let start = Instant::now();
        hook.post_json(&"hello").await.expect("delivered");
        assert_eq!(count.load(Ordering::SeqCst), 2);
        assert!(
            start.elapsed() >= Duration::from_secs(1),
            "waited {:?}, not the 1 s the server asked",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn used_up_retries_are_a_persistent_error_and_client_errors_are_not_retried() {
        let (url, count) = server(vec![(503, None); 10]).await;
        let hook = WebhookNotifier::new(&url)
            .expect("url")
            .with_retry(quick(3));
        let err = hook.post_json(&"hello").await.unwrap_err();
        assert_eq!(count.load(Ordering::SeqCst), 3);
        assert!(err.is_persistent() && err.is_retryable(), "{err:?}");
        let text = err.chain();
        assert!(
            text.contains("POST to webhook at 127.0.0.1: gave up after 3 attempts")
                && text.contains("503"),
            "{text}"
        );
        // A chat webhook's path is its credential: errors (which are logged) name the host only.
        assert!(!text.contains("/hook"), "{text}");

        let (url, count) = server(vec![(400, None)]).await;
        let hook = WebhookNotifier::new(&url).expect("url").with_retries(5);
        let err = hook.post_json(&"hello").await.unwrap_err();
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert!(matches!(err, Error::Backend { .. }), "{err:?}");
        assert!(!err.is_retryable());
    }
}
