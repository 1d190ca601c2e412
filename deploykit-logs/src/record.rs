//! The log record: one line (or one joined multi-line entry) of one instance of one revision.

use std::borrow::Cow;
use std::fmt;
use std::io::Write as _;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::fields::{FieldValue, Fields, write_json_string};

/// Where a record comes from: shared by every record of one instance's stream, so creating a
/// record costs one reference-count increment instead of four string copies.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Source {
    /// Service name.
    pub service: String,
    /// Environment name (`production`, `staging`, …).
    pub environment: String,
    /// Revision (release) identifier.
    pub revision: String,
    /// Instance identifier (process, pod, …).
    pub instance: String,
}

impl Source {
    /// A source for `service` in `environment`, revision `revision`, instance `instance`.
    pub fn new(
        service: impl Into<String>,
        environment: impl Into<String>,
        revision: impl Into<String>,
        instance: impl Into<String>,
    ) -> Arc<Self> {
        Arc::new(Source {
            service: service.into(),
            environment: environment.into(),
            revision: revision.into(),
            instance: instance.into(),
        })
    }
}

/// The output stream a line was written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// `"stdout"` or `"stderr"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Severity of a record, ordered from least to most severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Finest-grained tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation (also `notice`).
    Info,
    /// Something unexpected that was handled (`warning`).
    Warn,
    /// An operation failed (`err`).
    Error,
    /// The process cannot go on (`critical`, `crit`, `panic`, `emergency`, `alert`).
    Fatal,
}

impl Level {
    /// Parses the usual spellings, case-insensitively: `trace`, `debug`, `info`/`notice`,
    /// `warn`/`warning`, `error`/`err`, `fatal`/`critical`/`crit`/`panic`/`alert`/`emergency`,
    /// and their one-letter forms (`T`, `D`, `I`, `W`, `E`, `F`). `None` for anything else.
    pub fn parse(text: &str) -> Option<Level> {
        let text = text.trim();
        if text.len() > 9 {
            return None;
        }
        let mut lower = [0u8; 9];
        for (slot, byte) in lower.iter_mut().zip(text.bytes()) {
            *slot = byte.to_ascii_lowercase();
        }
        Some(match &lower[..text.len()] {
            b"trace" | b"t" | b"trc" => Level::Trace,
            b"debug" | b"d" | b"dbg" => Level::Debug,
            b"info" | b"i" | b"inf" | b"notice" | b"information" => Level::Info,
            b"warn" | b"w" | b"wrn" | b"warning" => Level::Warn,
            b"error" | b"e" | b"err" | b"eror" => Level::Error,
            b"fatal" | b"f" | b"ftl" | b"critical" | b"crit" | b"panic" | b"dpanic" | b"alert"
            | b"emergency" | b"emerg" => Level::Fatal,
            _ => return None,
        })
    }

    /// Numeric levels of pino/bunyan (10 trace, 20 debug, 30 info, 40 warn, 50 error,
    /// 60 fatal); other numbers are rounded down to the nearest step, below 10 is `None`.
    pub fn from_number(number: i64) -> Option<Level> {
        Some(match number {
            10..=19 => Level::Trace,
            20..=29 => Level::Debug,
            30..=39 => Level::Info,
            40..=49 => Level::Warn,
            50..=59 => Level::Error,
            60.. => Level::Fatal,
            _ => return None,
        })
    }

    /// The canonical lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
            Level::Fatal => "fatal",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the fields of a record come from its line being a JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JsonOrigin {
    /// The line is not (known to be) a JSON object.
    No,
    /// The line is a valid JSON object whose fields have not been extracted yet: they are
    /// extracted on first access, so a record dropped by a level filter never pays for them.
    Lazy,
    /// The line was a JSON object and its fields are in `fields`; the line is kept in sync
    /// with them when a processor changes them (see `Record::sync_json_line`).
    Materialized,
}

/// One log record.
///
/// Creating one costs the line's `String` (which [`Record::set_line`] reuses) and an `Arc`
/// increment; the fields of a JSON line are only extracted when something asks for them.
#[derive(Debug, Clone)]
pub struct Record {
    /// Service, environment, revision and instance.
    pub source: Arc<Source>,
    /// stdout or stderr.
    pub stream: Stream,
    /// Nanoseconds since the Unix epoch: collection time, replaced by the time a parser found
    /// in the line.
    pub timestamp_ns: i64,
    /// The raw line (joined lines are separated by `\n`), after redaction. Replace it with
    /// [`Record::set_line`], not by assignment, once a JSON parser ran: the fields of a JSON
    /// line are read from it lazily.
    pub line: String,
    /// The parsed level, if a parser found one.
    pub level: Option<Level>,
    fields: Fields,
    pub(crate) json: JsonOrigin,
}

impl Record {
    /// A record of `line`, with no level and no fields yet.
    pub fn new(
        source: Arc<Source>,
        stream: Stream,
        timestamp_ns: i64,
        line: impl Into<String>,
    ) -> Self {
        Record {
            source,
            stream,
            timestamp_ns,
            line: line.into(),
            level: None,
            fields: Fields::new(),
            json: JsonOrigin::No,
        }
    }

    /// Reuses this record for a new line of the same source: the line's buffer and the
    /// fields' vector keep their capacity, level and fields are reset.
    pub fn set_line(&mut self, timestamp_ns: i64, line: &str) {
        self.line.clear();
        self.line.push_str(line);
        self.timestamp_ns = timestamp_ns;
        self.level = None;
        self.fields.clear();
        self.json = JsonOrigin::No;
    }

    /// The structured fields, extracted from a JSON line on first access.
    pub fn fields(&mut self) -> &Fields {
        self.materialize();
        &self.fields
    }

    /// The structured fields, mutably (extracted from a JSON line on first access).
    pub fn fields_mut(&mut self) -> &mut Fields {
        self.materialize();
        &mut self.fields
    }

    /// The value of field `name`, if any.
    pub fn field(&mut self, name: &str) -> Option<&FieldValue> {
        self.fields().get(name)
    }

    /// The message: the first of the fields `msg`, `message` that is a string, else the line.
    pub fn message(&mut self) -> &str {
        self.materialize();
        for key in ["msg", "message"] {
            if let Some(FieldValue::String(text)) = self.fields.get(key) {
                return text;
            }
        }
        &self.line
    }

    /// Whether the line was parsed as a JSON object.
    pub fn is_json(&self) -> bool {
        self.json != JsonOrigin::No
    }

    /// Memory this record holds, approximately (what the pipeline's memory ceiling counts).
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Record>()
            + self.line.capacity()
            + self.fields.approx_bytes()
            + if self.json == JsonOrigin::Lazy {
                // Extracting the fields later roughly doubles the line.
                self.line.len()
            } else {
                0
            }
    }

    /// A hash of the source, stream and line: stable across runs and processes (sampling
    /// keys on it so that a sample is reproducible).
    pub fn stable_hash(&self) -> u64 {
        // FNV-1a, 64 bit: fixed keys, so the same record always hashes the same.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |bytes: &[u8]| {
            for &byte in bytes {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
            hash ^= 0xff;
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        };
        feed(self.source.instance.as_bytes());
        feed(self.stream.as_str().as_bytes());
        feed(self.line.as_bytes());
        hash
    }

    /// Marks the line as a valid JSON object whose fields are extracted on demand.
    pub(crate) fn mark_lazy_json(&mut self) {
        self.fields.clear();
        self.json = JsonOrigin::Lazy;
    }

    /// Sets fields that were parsed from the line by a text parser (logfmt, regex).
    pub(crate) fn fields_raw_mut(&mut self) -> &mut Fields {
        &mut self.fields
    }

    fn materialize(&mut self) {
        if self.json == JsonOrigin::Lazy {
            match crate::fields::object_fields(&self.line) {
                Some(fields) => self.fields = fields,
                // The line was validated when it was marked lazy; a line changed since then
                // (only redaction changes lines) is kept as a raw line.
                None => self.fields.clear(),
            }
            self.json = JsonOrigin::Materialized;
        }
    }

    /// For a line that was a JSON object: rewrites the line from the (changed) fields, so the
    /// raw line never disagrees with them (and never keeps a redacted value).
    pub(crate) fn sync_json_line(&mut self) {
        if self.json == JsonOrigin::Materialized {
            self.line.clear();
            let mut bytes = std::mem::take(&mut self.line).into_bytes();
            self.fields.write_json_object(&mut bytes);
            self.line = String::from_utf8(bytes).unwrap_or_default();
        }
    }

    /// The fields without extracting them into the record (for `&self` readers such as
    /// forwarders): borrowed, or parsed from a JSON line not extracted yet.
    pub(crate) fn fields_view(&self) -> Cow<'_, Fields> {
        if self.json == JsonOrigin::Lazy {
            Cow::Owned(crate::fields::object_fields(&self.line).unwrap_or_default())
        } else {
            Cow::Borrowed(&self.fields)
        }
    }

    /// Reads a record back from its JSON form (what [`Record::write_json`] writes): the
    /// source, stream, level, line and fields (in their order). An error names what is
    /// missing or malformed.
    ///
    /// ```
    /// use deploykit_logs::{Level, Record, Source, Stream};
    ///
    /// let mut record = Record::new(Source::new("api", "prod", "r1", "api-1"), Stream::Stderr, 7, "boom");
    /// record.level = Some(Level::Error);
    /// record.fields_mut().insert("code", 503.into());
    /// let mut json = Vec::new();
    /// record.write_json(&mut json);
    /// let mut back = Record::from_json(std::str::from_utf8(&json).unwrap()).unwrap();
    /// assert_eq!((back.timestamp_ns, back.stream, back.level), (7, Stream::Stderr, Some(Level::Error)));
    /// assert_eq!(back.source.instance, "api-1");
    /// assert_eq!(back.field("code"), Some(&503.into()));
    /// ```
    pub fn from_json(text: &str) -> deploykit_core::Result<Record> {
        #[derive(Deserialize)]
        struct RecordJson {
            ts: i64,
            service: String,
            environment: String,
            revision: String,
            instance: String,
            stream: Stream,
            level: Option<Level>,
            line: String,
            #[serde(default)]
            fields: Fields,
        }
        let parsed: RecordJson =
            serde_json::from_str(text).map_err(|error| deploykit_core::Error::Corrupt {
                what: "log record (JSON form)".to_string(),
                source: error.to_string().into(),
            })?;
        Ok(Record {
            source: Arc::new(Source {
                service: parsed.service,
                environment: parsed.environment,
                revision: parsed.revision,
                instance: parsed.instance,
            }),
            stream: parsed.stream,
            timestamp_ns: parsed.ts,
            line: parsed.line,
            level: parsed.level,
            fields: parsed.fields,
            json: JsonOrigin::No,
        })
    }

    /// Appends this record as one JSON object (no trailing newline) to `out`:
    /// `{"ts":…,"service":…,"environment":…,"revision":…,"instance":…,"stream":…,
    /// "level":…|null,"line":…,"fields":{…}}`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"ts\":");
        let _ = write!(out, "{}", self.timestamp_ns);
        for (key, value) in [
            ("service", self.source.service.as_str()),
            ("environment", self.source.environment.as_str()),
            ("revision", self.source.revision.as_str()),
            ("instance", self.source.instance.as_str()),
            ("stream", self.stream.as_str()),
        ] {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":");
            write_json_string(out, value);
        }
        out.extend_from_slice(b",\"level\":");
        match self.level {
            Some(level) => {
                out.push(b'"');
                out.extend_from_slice(level.as_str().as_bytes());
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"line\":");
        write_json_string(out, &self.line);
        out.extend_from_slice(b",\"fields\":");
        if self.json == JsonOrigin::Lazy && !self.line.contains(['\n', '\r']) {
            // Validated as an object when parsed: it is its own field map (kept on one line).
            out.extend_from_slice(self.line.trim().as_bytes());
        } else if self.json == JsonOrigin::Lazy {
            crate::fields::object_fields(&self.line)
                .unwrap_or_default()
                .write_json_object(out);
        } else {
            self.fields.write_json_object(out);
        }
        out.push(b'}');
    }
}
