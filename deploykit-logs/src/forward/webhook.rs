//! Webhooks: batches posted as a JSON array, optionally signed with HMAC-SHA256.

use std::time::Duration;

use async_trait::async_trait;
use deploykit_core::{Error, Result};
use http::header::{HeaderName, HeaderValue};

use super::Forwarder;
use super::http::HttpPoster;
use crate::record::Record;

pub use deploykit_core::notify::{
    WEBHOOK_SIGNATURE_HEADER, verify_webhook_signature, webhook_signature,
};

/// Posts each batch to a URL as a JSON array of records in their JSON form (see
/// [`Record::write_json`]), `Content-Type: application/json`.
///
/// With a signing key, every request carries [`WEBHOOK_SIGNATURE_HEADER`]:
/// `sha256=<lower-case hex of HMAC-SHA256(key, body)>`, which a receiver checks with
/// [`verify_webhook_signature`] (or any HMAC-SHA256 implementation) before trusting the body.
///
/// Plain http only (no TLS). One attempt per [`Forwarder::send`]; errors are classified as for
/// the [`OtlpForwarder`](super::OtlpForwarder) (408, 429, 5xx and connection failures
/// transient, other non-2xx answers permanent).
#[derive(Clone)]
pub struct WebhookForwarder {
    poster: HttpPoster,
    key: Option<Vec<u8>>,
}

impl std::fmt::Debug for WebhookForwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookForwarder")
            .field("url", &self.poster.url())
            .field("signed", &self.key.is_some())
            .finish()
    }
}

impl WebhookForwarder {
    /// A forwarder posting to `url` (`http://…`), unsigned.
    pub fn new(url: &str) -> Result<Self> {
        Ok(WebhookForwarder {
            poster: HttpPoster::new(url, "logs.forward.webhook.url", "logs.forward.webhook")?,
            key: None,
        })
    }

    /// Signs every body with `key` (HMAC-SHA256; at least 16 bytes).
    pub fn with_signing_key(mut self, key: impl Into<Vec<u8>>) -> Result<Self> {
        let key = key.into();
        if key.len() < 16 {
            return Err(Error::invalid(
                "logs.forward.webhook.signing_key",
                format!("is {} bytes; at least 16 are needed", key.len()),
            ));
        }
        self.key = Some(key);
        Ok(self)
    }

    /// Sends header `name: value` with every request; the value is marked sensitive.
    pub fn with_header(mut self, name: &str, value: &str) -> Result<Self> {
        self.poster
            .add_header("logs.forward.webhook.headers", name, value)?;
        Ok(self)
    }

    /// Limits one request, answer included, to `timeout` (default 30 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.poster.set_timeout(timeout);
        self
    }

    /// The request body for `batch`: `[record, record, …]`.
    pub fn encode(batch: &[Record]) -> Vec<u8> {
        let mut body = Vec::with_capacity(batch.len() * 256 + 2);
        body.push(b'[');
        for (index, record) in batch.iter().enumerate() {
            if index > 0 {
                body.push(b',');
            }
            record.write_json(&mut body);
        }
        body.push(b']');
        body
    }
}

#[async_trait]
impl Forwarder for WebhookForwarder {
    fn name(&self) -> &str {
        "webhook"
    }

    async fn send(&self, batch: &[Record]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let body = WebhookForwarder::encode(batch);
        let mut extra = Vec::new();
        if let Some(key) = &self.key {
            let signature = HeaderValue::from_str(&webhook_signature(key, &body))
                .map_err(|error| Error::backend("logs.forward.webhook: sign", error.to_string()))?;
            extra.push((HeaderName::from_static(WEBHOOK_SIGNATURE_HEADER), signature));
        }
        self.poster.post("application/json", body, &extra).await
    }
}
