//! deploykit's log pipeline: the processing core of its logging system.
//!
//! A [`Record`] is one line (or one joined multi-line entry) of one instance of one revision.
//! A [`Pipeline`], configured from a [`PipelineConfig`] (the `[logs.pipeline]` table of
//! `deploykit.toml`), runs its stages on every record — parsers (JSON, logfmt, regex with
//! named captures), filters, redaction of token patterns, sampling, rate limiting, field
//! edits — then always redacts the secret values it was given, and queues the record, within a
//! memory ceiling, for a [`Forwarder`] such as the [`FileForwarder`] (JSON lines rotated by
//! size without losing a line). Multi-line entries (stack traces) are joined per stream by a
//! [`LineJoiner`] before the stages.
//!
//! ```
//! use std::sync::Arc;
//!
//! use deploykit_logs::{FileForwarder, Pipeline, PipelineConfig, Record, Source, Stream};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let config = PipelineConfig::from_toml_str(
//!     r#"
//!     [[stages]]
//!     type = "parse_json"
//!
//!     [[stages]]
//!     type = "filter"
//!     min_level = "error"
//!     "#,
//! )?;
//! let dir = tempfile::tempdir()?;
//! let forwarder = Arc::new(FileForwarder::create(dir.path(), "api", 1 << 20)?);
//! // The secret values the deployment resolved: they never leave the pipeline.
//! let pipeline = Pipeline::start(&config, ["hunter2"], forwarder.clone())?;
//! let input = pipeline.input();
//!
//! let source = Source::new("api", "production", "r42", "api-1");
//! let lines = [
//!     r#"{"level":"info","msg":"listening"}"#,
//!     r#"{"level":"error","msg":"login failed","password":"hunter2"}"#,
//! ];
//! for line in lines {
//!     input.send(Record::new(source.clone(), Stream::Stdout, 0, line)).await?;
//! }
//!
//! let stats = pipeline.close().await?;
//! assert_eq!((stats.records_in, stats.records_out, stats.dropped_by_filter), (2, 1, 1));
//! assert_eq!(stats.redactions, 1);
//! let written = std::fs::read_to_string(forwarder.current_path())?;
//! assert!(written.contains("login failed"));
//! assert!(!written.contains("hunter2"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

mod config;
mod counters;
mod fields;
mod forward;
mod monitor;
mod parse;
mod pipeline;
pub mod query;
mod record;
mod redact;
mod ship;
mod source;
mod stages;

pub use config::{
    BuiltinPattern, CONFIG_PATH, FilterConfig, OverflowPolicy, PipelineConfig, StageConfig,
};
pub use counters::PipelineStats;
pub use fields::{FieldValue, Fields};
pub use forward::{
    ArchiveForwarder, ArchiveOptions, ArchiveQuery, ArchiveSearch, Fanout, FileForwarder,
    Forwarder, OtlpForwarder, Reliable, ReliableOptions, ReliableStats, WEBHOOK_SIGNATURE_HEADER,
    WebhookForwarder, search_archive, verify_webhook_signature, webhook_signature,
};
pub use monitor::{DEFAULT_WINDOW, LogMonitor};
pub use parse::{
    LineJoiner, MultilineConfig, RegexParser, parse_json, parse_logfmt, parse_timestamp_ns,
};
pub use pipeline::{Pipeline, PipelineInput};
pub use query::{LogQuery, MetricExpr, MetricFunction};
pub use record::{Level, Record, Source, Stream};
pub use redact::{REDACTED, Redactor};
pub use ship::LogShipper;
pub use source::{
    LogSelector, LogSender, LogSource, LogStream, STREAM_BUFFER, keep_tail, sort_by_time,
};
pub use stages::{DropReason, Processor, Verdict};
