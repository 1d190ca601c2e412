//! Compiled stages and the processor that runs them on one record.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;

use deploykit_core::{Error, Result};
use regex::Regex;

use crate::config::{CONFIG_PATH, FilterConfig, PipelineConfig, StageConfig};
use crate::counters::{Counters, PipelineStats, bump};
use crate::fields::FieldValue;
use crate::parse::json::{Gated, parse_json_unless};
use crate::parse::{RegexParser, parse_json, parse_logfmt};
use crate::record::{Level, Record};
use crate::redact::Redactor;

/// What became of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It went through every stage.
    Keep,
    /// A stage dropped it.
    Drop(DropReason),
}

/// Why a record was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A filter did not keep it.
    Filter,
    /// Sampling did not keep it.
    Sampling,
    /// It was over a rate limit.
    RateLimit,
    /// The queue was at its memory ceiling (`drop_newest`).
    Overflow,
}

/// Runs a pipeline's stages on records, in order, on the caller's thread; then redacts the
/// pipeline's secret values. Shared (`&self`) by every input: only rate limits take a lock.
#[derive(Debug)]
pub struct Processor {
    stages: Vec<Stage>,
    secrets: Redactor,
    counters: Arc<Counters>,
}

#[derive(Debug)]
enum Stage {
    /// With the level conditions of the filter right after it, if that filter tests only
    /// levels: a line whose level that filter drops is not scanned further (a line that is not
    /// JSON would be dropped as well, so validating the rest cannot change the outcome).
    ParseJson(Option<Vec<Condition>>),
    ParseLogfmt,
    ParseRegex(RegexParser),
    Filter(Filter),
    Redact(Redactor),
    Sample(u64),
    RateLimit(RateLimiter),
    Fields {
        add: Vec<(String, FieldValue)>,
        rename: Vec<(String, String)>,
        drop: Vec<String>,
    },
}

impl Processor {
    /// Compiles the stages of `config`, with `secrets` as the exact values to redact. An
    /// invalid value is reported with its path, e.g. `logs.pipeline.stages[1].pattern`.
    pub fn new<S: AsRef<str>>(
        config: &PipelineConfig,
        secrets: impl IntoIterator<Item = S>,
    ) -> Result<Self> {
        Self::with_counters(config, secrets, Arc::default())
    }

    pub(crate) fn with_counters<S: AsRef<str>>(
        config: &PipelineConfig,
        secrets: impl IntoIterator<Item = S>,
        counters: Arc<Counters>,
    ) -> Result<Self> {
        let mut stages = config
            .stages
            .iter()
            .enumerate()
            .map(|(index, stage)| compile(stage, &format!("{CONFIG_PATH}.stages[{index}]")))
            .collect::<Result<Vec<_>>>()?;
        for index in 1..stages.len() {
            let gate = match &stages[index] {
                Stage::Filter(filter) if filter.tests_only_levels() => filter.level_conditions(),
                _ => continue,
            };
            if let Stage::ParseJson(slot) = &mut stages[index - 1] {
                *slot = Some(gate);
            }
        }
        let secrets = Redactor::new(secrets, Vec::new())?;
        Ok(Processor {
            stages,
            secrets,
            counters,
        })
    }

    /// Runs every stage on `record`, counting it in and counting a drop.
    pub fn process(&self, record: &mut Record) -> Verdict {
        bump(&self.counters.records_in, 1);
        for stage in &self.stages {
            match stage {
                Stage::ParseJson(None) => {
                    parse_json(record);
                }
                Stage::ParseJson(Some(gate)) => {
                    let keeps = |level: Option<Level>| gate.iter().all(|c| c.keeps_level(level));
                    if !keeps(record.level) {
                        let drop = |level: Level| !keeps(Some(level));
                        if parse_json_unless(record, &drop) == Gated::Dropped {
                            bump(&self.counters.dropped_by_filter, 1);
                            return Verdict::Drop(DropReason::Filter);
                        }
                    } else {
                        parse_json(record);
                    }
                }
                Stage::ParseLogfmt => {
                    parse_logfmt(record);
                }
                Stage::ParseRegex(parser) => {
                    parser.parse(record);
                }
                Stage::Filter(filter) => {
                    if !filter.keeps(record) {
                        bump(&self.counters.dropped_by_filter, 1);
                        return Verdict::Drop(DropReason::Filter);
                    }
                }
                Stage::Redact(redactor) => {
                    bump(&self.counters.redactions, redactor.redact_record(record));
                }
                Stage::Sample(one_in) => {
                    if !record.stable_hash().is_multiple_of(*one_in) {
                        bump(&self.counters.dropped_by_sampling, 1);
                        return Verdict::Drop(DropReason::Sampling);
                    }
                }
                Stage::RateLimit(limiter) => {
                    if !limiter.admits(record) {
                        bump(&self.counters.dropped_by_rate_limit, 1);
                        return Verdict::Drop(DropReason::RateLimit);
                    }
                }
                Stage::Fields { add, rename, drop } => {
                    let fields = record.fields_mut();
                    for (name, value) in add {
                        fields.insert(name.clone(), value.clone());
                    }
                    for (from, to) in rename {
                        fields.rename(from, to);
                    }
                    for name in drop {
                        fields.remove(name);
                    }
                }
            }
        }
        bump(
            &self.counters.redactions,
            self.secrets.redact_record(record),
        );
        Verdict::Keep
    }

    /// The counters so far.
    pub fn stats(&self) -> PipelineStats {
        self.counters.snapshot()
    }

    pub(crate) fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }
}

fn compile_regex(pattern: &str, path: &str) -> Result<Regex> {
    Regex::new(pattern).map_err(|error| Error::invalid(path, format!("invalid regex: {error}")))
}

fn compile(stage: &StageConfig, path: &str) -> Result<Stage> {
    Ok(match stage {
        StageConfig::ParseJson => Stage::ParseJson(None),
        StageConfig::ParseLogfmt => Stage::ParseLogfmt,
        StageConfig::ParseRegex { pattern } => {
            let regex = compile_regex(pattern, &format!("{path}.pattern"))?;
            if regex.capture_names().flatten().next().is_none() {
                return Err(Error::invalid(
                    format!("{path}.pattern"),
                    "the expression has no named capture group (?P<name>…): it would parse no field",
                ));
            }
            Stage::ParseRegex(RegexParser::new(regex))
        }
        StageConfig::Filter(filter) => Stage::Filter(Filter::compile(filter, path)?),
        StageConfig::Redact { builtin, patterns } => {
            let mut regexes: Vec<Regex> = builtin
                .iter()
                .map(|pattern| Regex::new(pattern.pattern()).expect("built-in patterns compile"))
                .collect();
            for (index, pattern) in patterns.iter().enumerate() {
                regexes.push(compile_regex(
                    pattern,
                    &format!("{path}.patterns[{index}]"),
                )?);
            }
            if regexes.is_empty() {
                return Err(Error::invalid(
                    path,
                    "a redact stage needs `builtin` or `patterns` (secret values are redacted without one)",
                ));
            }
            Stage::Redact(Redactor::new(std::iter::empty::<&str>(), regexes)?)
        }
        StageConfig::Sample { one_in } => {
            if *one_in == 0 {
                return Err(Error::invalid(
                    format!("{path}.one_in"),
                    "must be at least 1",
                ));
            }
            Stage::Sample(*one_in)
        }
        StageConfig::RateLimit { per_second, key } => {
            if *per_second == 0 {
                return Err(Error::invalid(
                    format!("{path}.per_second"),
                    "must be at least 1 (use a filter to drop everything)",
                ));
            }
            Stage::RateLimit(RateLimiter::new(*per_second, key.clone()))
        }
        StageConfig::Fields { add, rename, drop } => {
            if let Some(empty) = rename.iter().find(|(_, to)| to.is_empty()) {
                return Err(Error::invalid(
                    format!("{path}.rename.{}", empty.0),
                    "the new name is empty",
                ));
            }
            Stage::Fields {
                add: add
                    .iter()
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect(),
                rename: rename
                    .iter()
                    .map(|(from, to)| (from.clone(), to.clone()))
                    .collect(),
                drop: drop.clone(),
            }
        }
    })
}

/// A compiled filter: all conditions must hold, then `negate` inverts.
#[derive(Debug)]
struct Filter {
    conditions: Vec<Condition>,
    negate: bool,
}

#[derive(Debug)]
enum Condition {
    Level(Level),
    MinLevel(Level),
    FieldEquals(String, String),
    FieldMatches(String, Regex),
    LineMatches(Regex),
}

impl Filter {
    fn compile(config: &FilterConfig, path: &str) -> Result<Self> {
        let mut conditions = Vec::new();
        if let Some(level) = config.level {
            conditions.push(Condition::Level(level));
        }
        if let Some(level) = config.min_level {
            conditions.push(Condition::MinLevel(level));
        }
        match (&config.field, &config.equals, &config.matches) {
            (Some(field), Some(equals), None) => {
                conditions.push(Condition::FieldEquals(field.clone(), equals.clone()));
            }
            (Some(field), None, Some(matches)) => conditions.push(Condition::FieldMatches(
                field.clone(),
                compile_regex(matches, &format!("{path}.matches"))?,
            )),
            (Some(_), None, None) => {
                return Err(Error::invalid(
                    format!("{path}.field"),
                    "a field filter needs `equals` or `matches`",
                ));
            }
            (Some(_), Some(_), Some(_)) => {
                return Err(Error::invalid(
                    format!("{path}.matches"),
                    "give `equals` or `matches`, not both",
                ));
            }
            (None, Some(_), _) => {
                return Err(Error::invalid(format!("{path}.equals"), "needs `field`"));
            }
            (None, None, Some(_)) => {
                return Err(Error::invalid(format!("{path}.matches"), "needs `field`"));
            }
            (None, None, None) => {}
        }
        if let Some(pattern) = &config.line_matches {
            conditions.push(Condition::LineMatches(compile_regex(
                pattern,
                &format!("{path}.line_matches"),
            )?));
        }
        if conditions.is_empty() {
            return Err(Error::invalid(
                path,
                "a filter needs a condition: `level`, `min_level`, `field` with `equals` or `matches`, or `line_matches`",
            ));
        }
        Ok(Filter {
            conditions,
            negate: config.negate,
        })
    }

    /// Whether the filter keeps or drops on the level alone (and is not negated).
    fn tests_only_levels(&self) -> bool {
        !self.negate
            && self
                .conditions
                .iter()
                .all(|condition| matches!(condition, Condition::Level(_) | Condition::MinLevel(_)))
    }

    fn level_conditions(&self) -> Vec<Condition> {
        self.conditions
            .iter()
            .filter_map(|condition| match condition {
                Condition::Level(level) => Some(Condition::Level(*level)),
                Condition::MinLevel(level) => Some(Condition::MinLevel(*level)),
                _ => None,
            })
            .collect()
    }

    fn keeps(&self, record: &mut Record) -> bool {
        let matched = self.conditions.iter().all(|condition| match condition {
            Condition::Level(level) => record.level == Some(*level),
            Condition::MinLevel(level) => record.level.is_some_and(|found| found >= *level),
            Condition::FieldEquals(name, expected) => match record.field(name) {
                Some(FieldValue::String(text)) => text == expected,
                Some(other) => {
                    let rendered = other.to_string();
                    rendered == *expected
                }
                None => false,
            },
            Condition::FieldMatches(name, regex) => match record.field(name) {
                Some(FieldValue::String(text)) => regex.is_match(text),
                Some(other) => regex.is_match(&other.to_string()),
                None => false,
            },
            Condition::LineMatches(regex) => regex.is_match(&record.line),
        });
        matched != self.negate
    }
}

impl Condition {
    /// For a level condition: whether `level` satisfies it (other conditions: true).
    fn keeps_level(&self, level: Option<Level>) -> bool {
        match self {
            Condition::Level(wanted) => level == Some(*wanted),
            Condition::MinLevel(least) => level.is_some_and(|found| found >= *least),
            _ => true,
        }
    }
}

/// At most `per_second` records per second of record time, per key.
#[derive(Debug)]
struct RateLimiter {
    per_second: u64,
    key: Option<String>,
    windows: Mutex<HashMap<String, (i64, u64)>>,
}

/// Keys kept before windows of past seconds are forgotten.
const RATE_LIMIT_KEYS: usize = 10_000;

impl RateLimiter {
    fn new(per_second: u64, key: Option<String>) -> Self {
        RateLimiter {
            per_second,
            key,
            windows: Mutex::new(HashMap::new()),
        }
    }

    fn key_of(&self, record: &mut Record) -> String {
        match self.key.as_deref() {
            None => String::new(),
            Some("service") => record.source.service.clone(),
            Some("environment") => record.source.environment.clone(),
            Some("revision") => record.source.revision.clone(),
            Some("instance") => record.source.instance.clone(),
            Some("stream") => record.stream.as_str().to_string(),
            Some("level") => record.level.map(Level::as_str).unwrap_or("").to_string(),
            Some(field) => match record.field(field) {
                Some(FieldValue::String(text)) => text.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            },
        }
    }

    fn admits(&self, record: &mut Record) -> bool {
        let key = self.key_of(record);
        let second = record.timestamp_ns.div_euclid(1_000_000_000);
        let mut windows = self
            .windows
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if windows.len() >= RATE_LIMIT_KEYS && !windows.contains_key(&key) {
            windows.retain(|_, (window, _)| *window >= second);
        }
        let entry = windows.entry(key).or_insert((second, 0));
        if entry.0 != second {
            *entry = (second, 0);
        }
        if entry.1 < self.per_second {
            entry.1 += 1;
            true
        } else {
            false
        }
    }
}
