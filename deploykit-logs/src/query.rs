//! A small query language over log records, modelled on LogQL.
//!
//! A **log query** selects records: a label selector, then line and field filters.
//!
//! ```text
//! {revision="r2", level=~"error|fatal"} |= "timeout" != "healthz" |~ "user=[0-9]+" | path="/login"
//! ```
//!
//! - Labels: `service`, `environment`, `revision`, `instance`, `stream`, `level`; any other
//!   name is a field of the record (of a JSON or logfmt line, parsed when needed). Operators
//!   `=`, `!=`, `=~` and `!~` (regular expressions match the whole value, as in LogQL).
//! - Line filters: `|=` contains, `!=` does not contain, `|~` matches, `!~` does not match.
//! - Field filters after a `|`: `| name op "value"`, with the same operators as labels.
//!
//! A **metric query** counts the records of a log query over a window:
//!
//! ```text
//! count_over_time({level="error"} |= "timeout" [1m])
//! rate({level="error"}[5m])                  # per second
//! log_count{level="error"}[1m]               # the same as count_over_time({level="error"}[1m])
//! sum by (revision) (count_over_time({level="error"}[1m]))
//! ```
//!
//! ```
//! use deploykit_logs::{LogQuery, MetricExpr, Record, Source, Stream};
//!
//! let query = LogQuery::parse(r#"{level="error"} |= "timeout""#)?;
//! let source = Source::new("api", "production", "r2", "api-1");
//! let mut hit = Record::new(source.clone(), Stream::Stdout, 0, r#"{"level":"error","msg":"upstream timeout"}"#);
//! let mut miss = Record::new(source, Stream::Stdout, 0, r#"{"level":"info","msg":"timeout set to 5s"}"#);
//! assert!(query.matches(&mut hit));
//! assert!(!query.matches(&mut miss));
//!
//! let metric = MetricExpr::parse(r#"log_count{level="error"}[1m]"#)?;
//! assert_eq!(metric.range, Some(std::time::Duration::from_secs(60)));
//! # Ok::<(), deploykit_core::Error>(())
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use deploykit_core::{Error, Result};
use regex::Regex;

use crate::fields::FieldValue;
use crate::parse::{parse_json, parse_logfmt};
use crate::record::{Level, Record};

/// The dotted path errors name.
const PATH: &str = "logs.query";

/// A comparison of a label or field with a value.
#[derive(Debug, Clone)]
enum Op {
    Equal(String),
    NotEqual(String),
    Matches(Regex),
    NotMatches(Regex),
}

impl Op {
    fn test(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (Op::Equal(expected), value) => value.unwrap_or("") == expected,
            (Op::NotEqual(expected), value) => value.unwrap_or("") != expected,
            (Op::Matches(regex), value) => regex.is_match(value.unwrap_or("")),
            (Op::NotMatches(regex), value) => !regex.is_match(value.unwrap_or("")),
        }
    }
}

/// What a matcher looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Label {
    Service,
    Environment,
    Revision,
    Instance,
    Stream,
    Level,
    Field(String),
}

impl Label {
    fn named(name: &str) -> Label {
        match name {
            "service" => Label::Service,
            "environment" => Label::Environment,
            "revision" => Label::Revision,
            "instance" => Label::Instance,
            "stream" => Label::Stream,
            "level" => Label::Level,
            other => Label::Field(other.to_string()),
        }
    }
}

#[derive(Debug, Clone)]
struct Matcher {
    label: Label,
    op: Op,
}

#[derive(Debug, Clone)]
enum LineFilter {
    Contains(String),
    NotContains(String),
    Matches(Regex),
    NotMatches(Regex),
}

/// A parsed log query: see the [module documentation](self).
#[derive(Debug, Clone)]
pub struct LogQuery {
    matchers: Vec<Matcher>,
    lines: Vec<LineFilter>,
    text: String,
}

impl LogQuery {
    /// Parses `text`. Errors name the column and what was expected there.
    pub fn parse(text: &str) -> Result<LogQuery> {
        let mut parser = Parser::new(text);
        let query = parser.log_query()?;
        parser.end()?;
        Ok(query)
    }

    /// The query as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value of an equality matcher on `label` (`service`, `revision`, `instance`), for
    /// narrowing what a source reads.
    pub fn equal_label(&self, label: &str) -> Option<&str> {
        let label = Label::named(label);
        self.matchers.iter().find_map(|m| match &m.op {
            Op::Equal(value) if m.label == label => Some(value.as_str()),
            _ => None,
        })
    }

    /// Whether `record` is selected. Parses a JSON or logfmt line when a level or field
    /// matcher needs it.
    pub fn matches(&self, record: &mut Record) -> bool {
        for filter in &self.lines {
            let line = record.line.as_str();
            let keep = match filter {
                LineFilter::Contains(text) => line.contains(text.as_str()),
                LineFilter::NotContains(text) => !line.contains(text.as_str()),
                LineFilter::Matches(regex) => regex.is_match(line),
                LineFilter::NotMatches(regex) => !regex.is_match(line),
            };
            if !keep {
                return false;
            }
        }
        self.matchers.iter().all(|matcher| {
            let value = label_value(record, &matcher.label);
            matcher.op.test(value.as_deref())
        })
    }
}

/// Parses the line of a record that has neither a level nor fields yet: JSON when it looks
/// like an object, logfmt otherwise.
fn ensure_parsed(record: &mut Record) {
    if record.level.is_some() || !record.fields().is_empty() {
        return;
    }
    if record.line.trim_start().starts_with('{') {
        parse_json(record);
    } else {
        parse_logfmt(record);
    }
}

fn label_value(record: &mut Record, label: &Label) -> Option<String> {
    Some(match label {
        Label::Service => record.source.service.clone(),
        Label::Environment => record.source.environment.clone(),
        Label::Revision => record.source.revision.clone(),
        Label::Instance => record.source.instance.clone(),
        Label::Stream => record.stream.as_str().to_string(),
        Label::Level => {
            ensure_parsed(record);
            record.level.map(Level::as_str)?.to_string()
        }
        Label::Field(name) => {
            ensure_parsed(record);
            match record.field(name)? {
                FieldValue::String(text) => text.clone(),
                FieldValue::Null => return None,
                other => other.to_string(),
            }
        }
    })
}

/// How a metric query turns the selected records into a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricFunction {
    /// How many records in the window.
    Count,
    /// How many records per second over the window.
    Rate,
}

/// A parsed metric query: see the [module documentation](self).
#[derive(Debug, Clone)]
pub struct MetricExpr {
    /// The records counted.
    pub query: LogQuery,
    /// Count or rate.
    pub function: MetricFunction,
    /// The window (`[1m]`); `None` when the query has none (the caller's range applies).
    pub range: Option<Duration>,
    /// Labels to group by (`sum by (revision) (…)`); empty for one total.
    pub by: Vec<String>,
}

impl MetricExpr {
    /// Parses `text`. Errors name the column and what was expected there.
    pub fn parse(text: &str) -> Result<MetricExpr> {
        let mut parser = Parser::new(text);
        let expr = parser.metric()?;
        parser.end()?;
        Ok(expr)
    }

    /// Whether `text` is a metric query of this language, so a monitor can tell its queries
    /// from another language's. PromQL's selectors start with a metric name, which this
    /// language does not allow, so a PromQL query is never taken for one of these (except a
    /// PromQL query over a bare `{…}` selector: give it a metric name).
    pub fn is_log_metric(text: &str) -> bool {
        MetricExpr::parse(text).is_ok()
    }

    /// The value for `records` over a window of `window`: per group of the `by` labels (one
    /// group with an empty key without `by`).
    pub fn evaluate<'a>(
        &self,
        records: impl IntoIterator<Item = &'a mut Record>,
        window: Duration,
    ) -> BTreeMap<Vec<String>, f64> {
        let mut counts: BTreeMap<Vec<String>, u64> = BTreeMap::new();
        for record in records {
            if !self.query.matches(record) {
                continue;
            }
            let key = self
                .by
                .iter()
                .map(|name| label_value(record, &Label::named(name)).unwrap_or_default())
                .collect();
            *counts.entry(key).or_default() += 1;
        }
        if counts.is_empty() && self.by.is_empty() {
            counts.insert(Vec::new(), 0);
        }
        let seconds = window.as_secs_f64().max(f64::MIN_POSITIVE);
        counts
            .into_iter()
            .map(|(key, count)| {
                let value = match self.function {
                    MetricFunction::Count => count as f64,
                    MetricFunction::Rate => count as f64 / seconds,
                };
                (key, value)
            })
            .collect()
    }
}

/// A recursive-descent parser over the query text.
struct Parser<'a> {
    text: &'a str,
    position: usize,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        Parser { text, position: 0 }
    }

    fn error(&self, expected: &str) -> Error {
        let rest = &self.text[self.position..];
        let found = match rest.chars().next() {
            None => "the end of the query".to_string(),
            Some(_) => format!("{:?}", rest.chars().take(12).collect::<String>()),
        };
        Error::invalid(
            PATH,
            format!(
                "at column {}: expected {expected}, found {found} in {:?}",
                self.text[..self.position].chars().count() + 1,
                self.text
            ),
        )
    }

    fn skip_space(&mut self) {
        let rest = &self.text[self.position..];
        self.position += rest.len() - rest.trim_start().len();
    }

    fn peek(&mut self, token: &str) -> bool {
        self.skip_space();
        self.text[self.position..].starts_with(token)
    }

    fn eat(&mut self, token: &str) -> bool {
        if self.peek(token) {
            self.position += token.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: &str) -> Result<()> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(self.error(&format!("{token:?}")))
        }
    }

    fn end(&mut self) -> Result<()> {
        self.skip_space();
        if self.position < self.text.len() {
            return Err(self.error("the end of the query"));
        }
        Ok(())
    }

    fn name(&mut self) -> Result<&'a str> {
        self.skip_space();
        let rest = &self.text[self.position..];
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(rest.len());
        if len == 0 || rest.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(self.error("a label or field name"));
        }
        self.position += len;
        Ok(&rest[..len])
    }

    /// A double-quoted string (`\"`, `\\`, `\n`, `\t` escapes; any other backslash is kept,
    /// for regular expressions) or a back-quoted raw one.
    fn string(&mut self) -> Result<String> {
        self.skip_space();
        let rest = &self.text[self.position..];
        if let Some(raw) = rest.strip_prefix('`') {
            let end = raw.find('`').ok_or_else(|| self.error("a closing '`'"))?;
            self.position += end + 2;
            return Ok(raw[..end].to_string());
        }
        if !rest.starts_with('"') {
            return Err(self.error("a quoted string"));
        }
        let mut out = String::new();
        let mut chars = rest.char_indices().skip(1);
        while let Some((index, c)) = chars.next() {
            match c {
                '"' => {
                    self.position += index + 1;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, c @ ('"' | '\\'))) => out.push(c),
                    // Kept as written, for regular expressions (`"^\{"`).
                    Some((_, other)) => {
                        out.push('\\');
                        out.push(other);
                    }
                    None => break,
                },
                other => out.push(other),
            }
        }
        self.position = self.text.len();
        Err(self.error("a closing '\"'"))
    }

    fn regex(&mut self, pattern: &str, anchored: bool) -> Result<Regex> {
        let source = if anchored {
            format!("^(?:{pattern})$")
        } else {
            pattern.to_string()
        };
        Regex::new(&source).map_err(|e| {
            Error::invalid(
                PATH,
                format!(
                    "invalid regular expression {pattern:?} in {:?}: {e}",
                    self.text
                ),
            )
        })
    }

    fn op(&mut self) -> Result<Op> {
        let op = if self.eat("=~") {
            "=~"
        } else if self.eat("!~") {
            "!~"
        } else if self.eat("!=") {
            "!="
        } else if self.eat("=") {
            "="
        } else {
            return Err(self.error("one of =, !=, =~, !~"));
        };
        let value = self.string()?;
        Ok(match op {
            "=" => Op::Equal(value),
            "!=" => Op::NotEqual(value),
            "=~" => Op::Matches(self.regex(&value, true)?),
            _ => Op::NotMatches(self.regex(&value, true)?),
        })
    }

    fn selector(&mut self) -> Result<Vec<Matcher>> {
        self.expect("{")?;
        let mut matchers = Vec::new();
        if self.eat("}") {
            return Ok(matchers);
        }
        loop {
            let label = Label::named(self.name()?);
            let op = self.op()?;
            matchers.push(Matcher { label, op });
            if self.eat("}") {
                return Ok(matchers);
            }
            if !self.eat(",") {
                return Err(self.error("\",\" or \"}\""));
            }
        }
    }

    fn log_query(&mut self) -> Result<LogQuery> {
        let start = self.position;
        let mut matchers = self.selector()?;
        let mut lines = Vec::new();
        loop {
            if self.eat("|=") {
                lines.push(LineFilter::Contains(self.string()?));
            } else if self.eat("!=") {
                lines.push(LineFilter::NotContains(self.string()?));
            } else if self.eat("|~") {
                let pattern = self.string()?;
                lines.push(LineFilter::Matches(self.regex(&pattern, false)?));
            } else if self.eat("!~") {
                let pattern = self.string()?;
                lines.push(LineFilter::NotMatches(self.regex(&pattern, false)?));
            } else if self.eat("|") {
                // `| json` and `| logfmt` are accepted for LogQL habits: lines are parsed
                // when a field is needed anyway.
                let name = self.name()?;
                if matches!(name, "json" | "logfmt") && !self.peek_op() {
                    continue;
                }
                let label = Label::named(name);
                let op = self.op()?;
                matchers.push(Matcher { label, op });
            } else {
                break;
            }
        }
        Ok(LogQuery {
            matchers,
            lines,
            text: self.text[start..self.position].trim().to_string(),
        })
    }

    fn peek_op(&mut self) -> bool {
        ["=~", "!~", "!=", "="].iter().any(|op| self.peek(op))
    }

    fn range(&mut self) -> Result<Duration> {
        self.expect("[")?;
        let rest = &self.text[self.position..];
        let end = rest.find(']').ok_or_else(|| self.error("a closing ']'"))?;
        let text = rest[..end].trim();
        let range = humantime::parse_duration(text).map_err(|e| {
            Error::invalid(
                PATH,
                format!(
                    "invalid range [{text}] in {:?}: {e} (e.g. [30s], [5m], [1h])",
                    self.text
                ),
            )
        })?;
        if range.is_zero() {
            return Err(Error::invalid(
                PATH,
                format!(
                    "the range [{text}] in {:?} must be longer than zero",
                    self.text
                ),
            ));
        }
        self.position += end + 1;
        Ok(range)
    }

    fn metric(&mut self) -> Result<MetricExpr> {
        if self.eat("sum") {
            let mut by = Vec::new();
            if self.eat("by") {
                self.expect("(")?;
                loop {
                    by.push(self.name()?.to_string());
                    if self.eat(")") {
                        break;
                    }
                    self.expect(",")?;
                }
            }
            self.expect("(")?;
            let mut inner = self.metric()?;
            self.expect(")")?;
            inner.by = by;
            return Ok(inner);
        }
        for (name, function) in [
            ("log_count", MetricFunction::Count),
            ("log_rate", MetricFunction::Rate),
        ] {
            if self.peek(name) {
                self.position += name.len();
                let query = self.log_query()?;
                let range = if self.peek("[") {
                    Some(self.range()?)
                } else {
                    None
                };
                return Ok(MetricExpr {
                    query,
                    function,
                    range,
                    by: Vec::new(),
                });
            }
        }
        let function = if self.eat("count_over_time") {
            MetricFunction::Count
        } else if self.eat("rate") {
            MetricFunction::Rate
        } else {
            return Err(self.error("count_over_time(…), rate(…), log_count{…}, log_rate{…} or sum"));
        };
        self.expect("(")?;
        let query = self.log_query()?;
        let range = Some(self.range()?);
        self.expect(")")?;
        Ok(MetricExpr {
            query,
            function,
            range,
            by: Vec::new(),
        })
    }
}
