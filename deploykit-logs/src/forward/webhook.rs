//! Webhooks: batches posted as a JSON array, optionally signed with HMAC-SHA256.

use std::time::Duration;

use async_trait::async_trait;
use deploykit_core::{Error, Result};
use hmac::{Hmac, Mac};
use http::header::{HeaderName, HeaderValue};
use sha2::Sha256;

use super::Forwarder;
use super::http::HttpPoster;
use crate::record::Record;

/// The header carrying a signed body's signature: `sha256=<hex HMAC-SHA256 of the body>`.
pub const WEBHOOK_SIGNATURE_HEADER: &str = "x-deploykit-signature";

type HmacSha256 = Hmac<Sha256>;

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

/// The signature header's value for `body` under `key`: `sha256=<hex>`.
pub fn webhook_signature(key: &[u8], body: &[u8]) -> String {
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
/// compared in constant time.
pub fn verify_webhook_signature(key: &[u8], body: &[u8], signature: &str) -> bool {
    let Some(hex) = signature.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Some(expected) = decode_hex(hex) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |byte: u8| char::from(byte).to_digit(16).map(|d| d as u8);
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
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
