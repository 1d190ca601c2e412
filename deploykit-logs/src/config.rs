//! The pipeline's configuration: what `deploykit.toml` carries under `[logs.pipeline]`.

use std::collections::BTreeMap;

use deploykit_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::fields::FieldValue;
use crate::parse::MultilineConfig;
use crate::record::Level;

/// The dotted path errors name for the pipeline table.
pub const CONFIG_PATH: &str = "logs.pipeline";

/// A log pipeline: how lines are joined, the stages every record goes through in order, and
/// how much may be queued for the forwarder.
///
/// ```toml
/// memory_limit_bytes = 33554432
/// overflow = "drop_newest"
///
/// [multiline]
/// start = '^\d{4}-\d\d-\d\d'
///
/// [[stages]]
/// type = "parse_json"
///
/// [[stages]]
/// type = "filter"
/// min_level = "warn"
///
/// [[stages]]
/// type = "redact"
/// builtin = ["bearer", "aws_access_key", "password"]
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Joining of multi-line entries (stack traces), per stream; none if unset.
    #[serde(default)]
    pub multiline: Option<MultilineConfig>,
    /// The stages, run in order.
    #[serde(default)]
    pub stages: Vec<StageConfig>,
    /// Ceiling on the memory of queued (and in-flight) records, in bytes.
    #[serde(default = "default_memory_limit")]
    pub memory_limit_bytes: usize,
    /// What a full queue does to a new record.
    #[serde(default)]
    pub overflow: OverflowPolicy,
    /// At most this many records per forwarder call.
    #[serde(default = "default_batch_max_records")]
    pub batch_max_records: usize,
    /// Retries of a failed forwarder call before its batch is dropped (and counted).
    #[serde(default = "default_forward_retries")]
    pub forward_retries: u32,
    /// Wait before the first retry, doubled for each further one (milliseconds).
    #[serde(default = "default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            multiline: None,
            stages: Vec::new(),
            memory_limit_bytes: default_memory_limit(),
            overflow: OverflowPolicy::default(),
            batch_max_records: default_batch_max_records(),
            forward_retries: default_forward_retries(),
            retry_backoff_ms: default_retry_backoff_ms(),
        }
    }
}

fn default_memory_limit() -> usize {
    32 * 1024 * 1024
}

fn default_batch_max_records() -> usize {
    1024
}

fn default_forward_retries() -> u32 {
    3
}

fn default_retry_backoff_ms() -> u64 {
    100
}

impl PipelineConfig {
    /// Parses the pipeline table from TOML text (the contents of `[logs.pipeline]`); an error
    /// names the field path, e.g. `logs.pipeline.stages[2].one_in`.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let deserializer = toml::Deserializer::parse(text)
            .map_err(|error| Error::invalid(CONFIG_PATH, error.message().to_string()))?;
        serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let path = error.path().to_string();
            let field = if path == "." || path.is_empty() {
                CONFIG_PATH.to_string()
            } else {
                format!("{CONFIG_PATH}.{path}")
            };
            Error::invalid(field, error.inner().message().to_string())
        })
    }
}

/// What a full queue does with a new record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverflowPolicy {
    /// The source waits until the forwarder has made room: nothing is dropped.
    #[default]
    BackPressure,
    /// The new record is dropped and counted (`dropped_by_overflow`); the source never waits.
    DropNewest,
}

/// One stage of a pipeline, selected by its `type` key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StageConfig {
    /// Parse the line as a JSON object (kept as a raw line if it is not one).
    ParseJson,
    /// Parse the line as logfmt.
    ParseLogfmt,
    /// Parse the line with a regular expression's named captures.
    ParseRegex {
        /// The expression (`regex` crate syntax), e.g. `^(?P<level>\w+) (?P<msg>.*)$`.
        pattern: String,
    },
    /// Keep only the records matching a condition (or, negated, not matching it).
    Filter(FilterConfig),
    /// Replace token patterns by `[REDACTED]` (the pipeline's secret values are always
    /// redacted, after the last stage, whether or not a `redact` stage exists).
    Redact {
        /// Built-in patterns.
        #[serde(default)]
        builtin: Vec<BuiltinPattern>,
        /// Further expressions: the whole match is replaced, or only the capture group named
        /// `secret` if the expression has one.
        #[serde(default)]
        patterns: Vec<String>,
    },
    /// Keep one record in `one_in`, chosen by a stable hash of the record (reproducible).
    Sample {
        /// Keep one in this many (at least 1).
        one_in: u64,
    },
    /// Keep at most `per_second` records per second of record time, per key.
    RateLimit {
        /// Records per second per key (at least 1).
        per_second: u64,
        /// `service`, `environment`, `revision`, `instance`, `stream`, `level`, or else a
        /// field name; one limit for all records if unset.
        #[serde(default)]
        key: Option<String>,
    },
    /// Add, rename and drop fields (in that order).
    Fields {
        /// Fields to set (added in name order).
        #[serde(default)]
        add: BTreeMap<String, FieldValue>,
        /// Fields to rename, `from = "to"`.
        #[serde(default)]
        rename: BTreeMap<String, String>,
        /// Fields to remove.
        #[serde(default)]
        drop: Vec<String>,
    },
}

/// A filter: every condition given must hold (then `negate` inverts the result).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FilterConfig {
    /// The level is exactly this.
    #[serde(default)]
    pub level: Option<Level>,
    /// The level is at least this (a record without a level does not match).
    #[serde(default)]
    pub min_level: Option<Level>,
    /// A field to test with `equals` or `matches`.
    #[serde(default)]
    pub field: Option<String>,
    /// The field's value (text, or a JSON rendering of a non-string) equals this.
    #[serde(default)]
    pub equals: Option<String>,
    /// The field's value matches this expression.
    #[serde(default)]
    pub matches: Option<String>,
    /// The raw line matches this expression.
    #[serde(default)]
    pub line_matches: Option<String>,
    /// Keep the records that do NOT match.
    #[serde(default)]
    pub negate: bool,
}

/// Token patterns every deployment wants redacted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuiltinPattern {
    /// `Bearer <token>` (the token is replaced).
    Bearer,
    /// AWS access key ids: `AKIA…`/`ASIA…` and 16 more upper-case letters or digits.
    AwsAccessKey,
    /// `password=…`, `passwd: …`, `pwd=…`, `secret=…`, `token=…`, `api_key=…` (the value is
    /// replaced; the key is kept).
    Password,
}

impl BuiltinPattern {
    /// The expression; the capture group `secret` is what is replaced.
    pub fn pattern(self) -> &'static str {
        match self {
            BuiltinPattern::Bearer => r"(?i)\bbearer\s+(?P<secret>[A-Za-z0-9\-._~+/]+=*)",
            BuiltinPattern::AwsAccessKey => r"\b(?P<secret>(?:AKIA|ASIA)[0-9A-Z]{16})\b",
            BuiltinPattern::Password => {
                r#"(?i)\b(?:password|passwd|pwd|secret|token|api_key|apikey)"?\s*[=:]\s*"?(?P<secret>[^\s&"',;\[][^\s&"',;]*)"#
            }
        }
    }
}
