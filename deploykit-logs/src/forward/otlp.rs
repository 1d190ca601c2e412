//! OTLP/HTTP logs: batches posted to an OpenTelemetry collector in the OTLP JSON encoding.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deploykit_core::Result;
use serde_json::{Value, json};

use super::Forwarder;
use super::http::HttpPoster;
use crate::fields::FieldValue;
use crate::record::{Level, Record, Source};

/// The instrumentation scope the records are reported under.
const SCOPE: &str = "deploykit-logs";

/// Posts batches to `{endpoint}/v1/logs` as an OTLP `ExportLogsServiceRequest` in the JSON
/// encoding (`Content-Type: application/json`; field names in lowerCamelCase, 64-bit integers
/// as strings).
///
/// A batch becomes one request with one `resourceLogs` per source (in order of first
/// appearance) whose resource attributes are `service.name`, `deployment.environment`,
/// `service.version` (the revision) and `service.instance.id`; each record becomes a
/// `logRecord` with `timeUnixNano`, `observedTimeUnixNano` (the send time),
/// `severityNumber`/`severityText` (trace 1, debug 5, info 9, warn 13, error 17, fatal 21;
/// both left out without a level), `body` (the message: the `msg`/`message` field, else the
/// line) and `attributes`: the record's fields (strings, integers, floats and booleans as
/// such; arrays and objects as their JSON text; nulls left out; the field used as the body
/// left out) and `log.iostream` (`stdout`/`stderr`).
///
/// Plain http only (no TLS): send to a collector on the host or behind a local proxy. Each
/// [`Forwarder::send`] makes one attempt; a connection failure, a timeout, 408, 429 and 5xx
/// are transient errors, any other non-2xx answer a permanent one, each naming the status and
/// the URL. Wrap it in a [`Reliable`](super::Reliable) for retries and a disk backlog.
#[derive(Debug, Clone)]
pub struct OtlpForwarder {
    poster: HttpPoster,
}

impl OtlpForwarder {
    /// A forwarder to the collector at `endpoint` (`http://host:4318`: `/v1/logs` is
    /// appended).
    pub fn new(endpoint: &str) -> Result<Self> {
        let url = format!("{}/v1/logs", endpoint.trim_end_matches('/'));
        Ok(OtlpForwarder {
            poster: HttpPoster::new(&url, "logs.forward.otlp.endpoint", "logs.forward.otlp")?,
        })
    }

    /// Sends header `name: value` with every request (e.g. `authorization`); the value is
    /// marked sensitive.
    pub fn with_header(mut self, name: &str, value: &str) -> Result<Self> {
        self.poster
            .add_header("logs.forward.otlp.headers", name, value)?;
        Ok(self)
    }

    /// Limits one request, answer included, to `timeout` (default 30 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.poster.set_timeout(timeout);
        self
    }

    /// The URL posted to.
    pub fn url(&self) -> String {
        self.poster.url()
    }

    /// The request body for `batch` observed at `observed_ns` (nanoseconds since the Unix
    /// epoch).
    pub fn encode(batch: &[Record], observed_ns: i64) -> Vec<u8> {
        let mut groups: Vec<(&Arc<Source>, Vec<Value>)> = Vec::new();
        let mut index: HashMap<&Source, usize> = HashMap::new();
        let observed = observed_ns.to_string();
        for record in batch {
            let slot = *index.entry(&*record.source).or_insert_with(|| {
                groups.push((&record.source, Vec::new()));
                groups.len() - 1
            });
            groups[slot].1.push(log_record(record, &observed));
        }
        let resource_logs: Vec<Value> = groups
            .into_iter()
            .map(|(source, records)| {
                json!({
                    "resource": {
                        "attributes": [
                            string_attribute("service.name", &source.service),
                            string_attribute("deployment.environment", &source.environment),
                            string_attribute("service.version", &source.revision),
                            string_attribute("service.instance.id", &source.instance),
                        ]
                    },
                    "scopeLogs": [{
                        "scope": { "name": SCOPE, "version": env!("CARGO_PKG_VERSION") },
                        "logRecords": records,
                    }]
                })
            })
            .collect();
        // Serialising a Value cannot fail.
        serde_json::to_vec(&json!({ "resourceLogs": resource_logs })).unwrap_or_default()
    }
}

/// OTLP's `SeverityNumber` for a level (the first of each range).
fn severity_number(level: Level) -> u8 {
    match level {
        Level::Trace => 1,
        Level::Debug => 5,
        Level::Info => 9,
        Level::Warn => 13,
        Level::Error => 17,
        Level::Fatal => 21,
    }
}

fn severity_text(level: Level) -> &'static str {
    match level {
        Level::Trace => "TRACE",
        Level::Debug => "DEBUG",
        Level::Info => "INFO",
        Level::Warn => "WARN",
        Level::Error => "ERROR",
        Level::Fatal => "FATAL",
    }
}

fn log_record(record: &Record, observed: &str) -> Value {
    let fields = record.fields_view();
    let body_key = ["msg", "message"]
        .into_iter()
        .find(|key| matches!(fields.get(key), Some(FieldValue::String(_))));
    let body = match body_key.and_then(|key| fields.get(key)) {
        Some(FieldValue::String(text)) => text.as_str(),
        _ => record.line.as_str(),
    };
    let mut attributes: Vec<Value> = fields
        .iter()
        .filter(|(key, _)| Some(*key) != body_key)
        .filter_map(|(key, value)| Some(json!({ "key": key, "value": any_value(value)? })))
        .collect();
    attributes.push(string_attribute("log.iostream", record.stream.as_str()));
    let mut out = json!({
        "timeUnixNano": record.timestamp_ns.max(0).to_string(),
        "observedTimeUnixNano": observed,
        "body": { "stringValue": body },
        "attributes": attributes,
    });
    if let (Some(level), Value::Object(map)) = (record.level, &mut out) {
        map.insert("severityNumber".into(), severity_number(level).into());
        map.insert("severityText".into(), severity_text(level).into());
    }
    out
}

/// An OTLP `AnyValue`; `None` for null.
fn any_value(value: &FieldValue) -> Option<Value> {
    Some(match value {
        FieldValue::Null => return None,
        FieldValue::String(text) => json!({ "stringValue": text }),
        FieldValue::Bool(flag) => json!({ "boolValue": flag }),
        FieldValue::Number(number) => match number.as_i64() {
            Some(integer) => json!({ "intValue": integer.to_string() }),
            None => match number.as_f64() {
                Some(float) if number.is_f64() => json!({ "doubleValue": float }),
                // An integer past i64 (u64): its exact text.
                _ => json!({ "stringValue": number.to_string() }),
            },
        },
        nested => json!({ "stringValue": nested.to_string() }),
    })
}

fn string_attribute(key: &str, value: &str) -> Value {
    json!({ "key": key, "value": { "stringValue": value } })
}

/// Nanoseconds since the Unix epoch, now.
pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_nanos()).unwrap_or(i64::MAX)
        })
}

#[async_trait]
impl Forwarder for OtlpForwarder {
    fn name(&self) -> &str {
        "otlp"
    }

    async fn send(&self, batch: &[Record]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let body = OtlpForwarder::encode(batch, now_ns());
        self.poster.post("application/json", body, &[]).await
    }
}
