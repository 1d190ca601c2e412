//! Forwarders: where a pipeline's records go.
//!
//! Files ([`FileForwarder`]), an OpenTelemetry collector ([`OtlpForwarder`]), webhooks
//! ([`WebhookForwarder`]) and a backup repository ([`ArchiveForwarder`], searched back with
//! [`search_archive`]); [`Reliable`] adds retries and a disk backlog to any of them, and
//! [`Fanout`] sends to several.

mod archive;
mod backlog;
mod fanout;
mod file;
mod http;
mod otlp;
mod reliable;
mod webhook;

use async_trait::async_trait;
use deploykit_core::Result;

pub use archive::{ArchiveForwarder, ArchiveOptions, ArchiveQuery, ArchiveSearch, search_archive};
pub use fanout::Fanout;
pub use file::FileForwarder;
pub use otlp::OtlpForwarder;
pub use reliable::{Reliable, ReliableOptions, ReliableStats};
pub use webhook::{
    WEBHOOK_SIGNATURE_HEADER, WebhookForwarder, verify_webhook_signature, webhook_signature,
};

use crate::record::Record;

/// A destination for batches of records.
///
/// The pipeline calls [`Forwarder::send`] with one batch at a time, retries a failed call
/// (`forward_retries`, `retry_backoff_ms`) and calls [`Forwarder::flush`] when it closes. A
/// batch is accepted whole or not at all: after an error the same batch is sent again, so a
/// forwarder that can fail half-way must not have made the first half visible.
#[async_trait]
pub trait Forwarder: Send + Sync {
    /// A short name for errors and counters (`file`, `otlp`, …).
    fn name(&self) -> &str;

    /// Delivers `batch`, in order.
    async fn send(&self, batch: &[Record]) -> Result<()>;

    /// Makes everything sent so far durable (or delivered); the default does nothing.
    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}
