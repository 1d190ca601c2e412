//! `deploykit logs`: the records of a service's instances (or of one instance), merged by
//! time, filtered, once or followed, or counted over a window.
//!
//! The records are read from the environment's log directory (`<state>/<environment>/logs`,
//! where its daemon's instances write them) through
//! [`LocalLogs`], so the command works without the daemon, also for instances that are gone.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deploykit_core::{Error, Result};
use deploykit_local::LocalLogs;
use deploykit_local::logs::{LogPolicy, owners};
use deploykit_logs::{
    Level, LogQuery, LogSelector, LogSource, MetricExpr, MetricFunction, Record, Stream,
    parse_json, parse_logfmt, parse_timestamp_ns,
};
use regex::Regex;
use serde_json::json;

use crate::Output;
use crate::context::Context;

/// How many of the newest kept records are shown when `--tail` is not given.
pub(crate) const DEFAULT_TAIL: usize = 100;

/// The flags of `deploykit logs`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct LogsArgs {
    /// A service (every instance of it, merged by time, each line with its instance) or an
    /// instance (see `status`; also one that is gone, while its log is kept).
    pub name: String,
    /// The environment (default: the only one, or `production`).
    #[arg(long, short)]
    pub env: Option<String>,
    /// Print the kept records, then keep printing new ones as they are written (also of
    /// instances started since); Ctrl-C stops.
    #[arg(long, short)]
    pub follow: bool,
    /// Only records at or after this time: a duration ago (`10m`, `2h`, `1h30m`) or an
    /// RFC 3339 time (`2026-12-05T15:00:00Z`).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Only records before this time (same forms as `--since`); ends `--follow`.
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// How many of the newest matching kept records to show: a number, or `all`
    /// (default 100).
    #[arg(long, value_name = "N|all", value_parser = parse_tail)]
    pub tail: Option<Tail>,
    /// Deprecated and ignored (the output is counted in records: see `--tail`).
    #[arg(long, hide = true)]
    pub bytes: Option<usize>,
    /// Only instances of this revision (its id).
    #[arg(long)]
    pub revision: Option<String>,
    /// Only this instance of the service (implied when NAME is an instance).
    #[arg(long)]
    pub instance: Option<String>,
    /// Only records at least this severe (trace, debug, info, warn, error, fatal); records
    /// without a level (in a JSON `level` or a logfmt `level=` field) are left out.
    #[arg(long, value_name = "LEVEL")]
    pub level: Option<String>,
    /// Only records whose line matches this regular expression.
    #[arg(long, value_name = "REGEX")]
    pub grep: Option<String>,
    /// Only records this log query selects (`{level="error"} |= "timeout"`), in addition to
    /// the other filters.
    #[arg(long, value_name = "QUERY")]
    pub query: Option<String>,
    /// One JSON object per record (`time`, `ts`, `service`, `environment`, `revision`,
    /// `instance`, `stream`, `level`, `line`, `fields`), or per group with a count.
    #[arg(long)]
    pub json: bool,
    /// Instead of the records, count them per value of these labels or fields
    /// (comma-separated: `level`, `revision,instance`, `status`).
    #[arg(long, value_name = "FIELDS", conflicts_with_all = ["count", "follow"])]
    pub count_by: Option<String>,
    /// Instead of the records, evaluate this metric query over them
    /// (`sum by (revision) (count_over_time({level="error"}))`, `rate({} |= "timeout")`).
    #[arg(long, value_name = "METRIC", conflicts_with = "follow")]
    pub count: Option<String>,
}

/// How many kept records `--tail` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tail {
    /// The newest this many.
    Last(usize),
    /// Every kept record in the window.
    All,
}

fn parse_tail(text: &str) -> std::result::Result<Tail, String> {
    if text == "all" {
        return Ok(Tail::All);
    }
    match text.parse::<usize>() {
        Ok(0) | Err(_) => Err(format!(
            "expected a number of records (at least 1) or `all`, found {text:?}"
        )),
        Ok(n) => Ok(Tail::Last(n)),
    }
}

/// Which logs are read: a service, and the one instance asked for, if any.
struct Target {
    service: String,
    instance: Option<String>,
}

/// The filters applied to every record, all of which must keep it.
struct Filters {
    level: Option<Level>,
    grep: Option<Regex>,
    query: Option<LogQuery>,
}

impl Filters {
    fn from_args(args: &LogsArgs) -> Result<Filters> {
        let level = match &args.level {
            None => None,
            Some(text) => Some(Level::parse(text).ok_or_else(|| {
                Error::invalid(
                    "--level",
                    format!("{text:?} is not a level (trace, debug, info, warn, error, fatal)"),
                )
            })?),
        };
        let grep = match &args.grep {
            None => None,
            Some(pattern) => Some(Regex::new(pattern).map_err(|e| {
                Error::invalid(
                    "--grep",
                    format!("{pattern:?} is not a regular expression: {e}"),
                )
            })?),
        };
        let query = match &args.query {
            None => None,
            Some(text) => Some(LogQuery::parse(text).map_err(|e| in_flag("--query", e))?),
        };
        Ok(Filters { level, grep, query })
    }

    /// Whether `record` (already [`prepare`]d) is kept.
    fn keep(&self, record: &mut Record) -> bool {
        if let Some(least) = self.level
            && record.level.is_none_or(|level| level < least)
        {
            return false;
        }
        if let Some(grep) = &self.grep
            && !grep.is_match(&record.line)
        {
            return false;
        }
        self.query
            .as_ref()
            .is_none_or(|query| query.matches(record))
    }
}

/// An error of a parser, renamed to the flag its text came from.
fn in_flag(flag: &str, error: Error) -> Error {
    match error {
        Error::InvalidSpec { reason, .. } => Error::invalid(flag, reason),
        other => other,
    }
}

/// Runs `deploykit logs`.
pub(crate) async fn run(ctx: &Context, args: LogsArgs) -> Result<ExitCode> {
    let environment = ctx.environment(args.env.as_deref())?.to_string();
    // Where the daemon of this environment keeps its instances' logs, rotated as it rotates.
    let dir = ctx.state_dir()?.join(&environment).join("logs");
    let policy = crate::log_agent::policy(&ctx.config()?.log_settings(&environment)?);
    if args.bytes.is_some() {
        eprintln!("deploykit logs: --bytes is deprecated and ignored; use --tail N");
    }
    let filters = Filters::from_args(&args)?;
    let metric = metric_of(&args)?;
    let now = now_ns();
    let since = args
        .since
        .as_deref()
        .map(|text| parse_when("--since", text, now))
        .transpose()?;
    let until = args
        .until
        .as_deref()
        .map(|text| parse_when("--until", text, now))
        .transpose()?;
    if let (Some(since), Some(until)) = (since, until)
        && since >= until
    {
        return Err(Error::invalid(
            "--until",
            format!(
                "must be later than --since ({} is not after {})",
                rfc3339_millis(until),
                rfc3339_millis(since)
            ),
        ));
    }
    let target = resolve(ctx, &dir, &policy, &args.name, args.instance.as_deref())?;
    let source = LocalLogs::new(&dir, policy, environment);
    let json = args.json || ctx.output == Output::Json;
    let mut selector = LogSelector::service(&target.service);
    if let Some(revision) = &args.revision {
        selector = selector.revision(revision);
    }
    if let Some(instance) = &target.instance {
        selector = selector.instance(instance);
    }
    if let Some(since) = since {
        selector = selector.since_ns(since);
    }

    if let Some(metric) = metric {
        let since = since.or_else(|| {
            metric
                .range
                .map(|range| now.saturating_sub(range.as_nanos() as i64))
        });
        if let Some(since) = since {
            selector = selector.since_ns(since);
        }
        if let Some(until) = until {
            selector = selector.until_ns(until);
        }
        let records = kept(&source, &selector, &filters).await?;
        let start = since
            .or_else(|| records.first().map(|r| r.timestamp_ns))
            .unwrap_or(now);
        let window = Duration::from_nanos(until.unwrap_or(now).saturating_sub(start).max(0) as u64);
        print_counts(&metric, records, window, json);
        return Ok(ExitCode::SUCCESS);
    }

    let prefix = target.instance.is_none();
    let follow = args.follow && until.is_none();
    // Followed, the kept records are those before now, the new ones those from now on.
    let kept_until = if follow { Some(now) } else { until };
    let mut kept_selector = selector.clone();
    if let Some(until) = kept_until {
        kept_selector = kept_selector.until_ns(until);
    }
    if kept_until.is_none_or(|until| since.is_none_or(|since| since < until)) {
        let mut records = kept(&source, &kept_selector, &filters).await?;
        if let Tail::Last(n) = args.tail.unwrap_or(Tail::Last(DEFAULT_TAIL)) {
            deploykit_logs::keep_tail(&mut records, Some(n));
        }
        for record in &records {
            print_record(record, prefix, json);
        }
    }
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    let mut stream = source
        .logs(&selector.since_ns(since.unwrap_or(now).max(now)).follow())
        .await?;
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(ExitCode::SUCCESS),
            next = stream.next() => match next {
                None => return Ok(ExitCode::SUCCESS),
                Some(record) => {
                    let mut record = record?;
                    prepare(&mut record);
                    if filters.keep(&mut record) {
                        print_record(&record, prefix, json);
                    }
                }
            },
        }
    }
}

/// The metric `--count-by` or `--count` asks for, if any.
fn metric_of(args: &LogsArgs) -> Result<Option<MetricExpr>> {
    if let Some(text) = &args.count {
        return MetricExpr::parse(text)
            .map(Some)
            .map_err(|e| in_flag("--count", e));
    }
    let Some(fields) = &args.count_by else {
        return Ok(None);
    };
    let by: Vec<String> = fields
        .split(',')
        .map(|f| f.trim().to_string())
        .filter(|f| !f.is_empty())
        .collect();
    if by.is_empty() {
        return Err(Error::invalid(
            "--count-by",
            "name at least one label or field (`level`, `revision,instance`)",
        ));
    }
    let query = LogQuery::parse("{}").map_err(|e| in_flag("--count-by", e))?;
    Ok(Some(MetricExpr {
        query,
        function: MetricFunction::Count,
        range: None,
        by,
    }))
}

/// The kept records `selector` selects that `filters` keep, oldest first.
async fn kept(
    source: &LocalLogs,
    selector: &LogSelector,
    filters: &Filters,
) -> Result<Vec<Record>> {
    let mut records = source.logs(selector).await?.collect().await?;
    records.retain_mut(|record| {
        prepare(record);
        filters.keep(record)
    });
    Ok(records)
}

/// Parses the line of `record` (JSON or logfmt) for its level and fields, keeping the time
/// it was written at (a time inside the line does not reorder the output).
fn prepare(record: &mut Record) {
    if record.level.is_some() {
        return;
    }
    let written = record.timestamp_ns;
    if record.line.trim_start().starts_with('{') {
        parse_json(record);
    } else {
        parse_logfmt(record);
    }
    record.timestamp_ns = written;
}

/// The service `name` names, or the instance it names with its service: services come from
/// the configuration, instances from the log directory (also those that are gone).
fn resolve(
    ctx: &Context,
    dir: &Path,
    policy: &LogPolicy,
    name: &str,
    instance: Option<&str>,
) -> Result<Target> {
    let services: Vec<String> = ctx
        .config()?
        .services()
        .map(|s| s.name.to_string())
        .collect();
    let logs = if dir.exists() {
        owners(dir, policy).map_err(|e| {
            Error::backend(format!("read the logs in {}", dir.display()), e.to_string())
        })?
    } else {
        Vec::new()
    };
    if services.iter().any(|s| s == name) {
        return Ok(Target {
            service: name.to_string(),
            instance: instance.map(str::to_string),
        });
    }
    if let Some((_, owner)) = logs.iter().find(|(log, _)| log.instance() == name) {
        if let Some(other) = instance.filter(|i| *i != name) {
            return Err(Error::invalid(
                "--instance",
                format!("{other:?} contradicts the instance {name:?} named"),
            ));
        }
        return Ok(Target {
            service: owner.service.clone(),
            instance: Some(name.to_string()),
        });
    }
    let mut known = services;
    known.extend(logs.iter().map(|(log, _)| log.instance().to_string()));
    Err(crate::names::unknown(
        "service or instance",
        "services and instances",
        name,
        &known,
        "this environment",
    ))
}

/// `text` as nanoseconds since the epoch: a duration before `now`, or an RFC 3339 time.
fn parse_when(flag: &str, text: &str, now: i64) -> Result<i64> {
    if let Ok(ago) = humantime::parse_duration(text) {
        return Ok(now.saturating_sub(i64::try_from(ago.as_nanos()).unwrap_or(i64::MAX)));
    }
    if text.contains('T')
        && let Some(at) = parse_timestamp_ns(text)
    {
        return Ok(at);
    }
    Err(Error::invalid(
        flag,
        format!(
            "{text:?} is neither a duration ago (`10m`, `2h`, `1h30m`) nor an RFC 3339 time \
             (`2026-12-05T15:00:00Z`, `2026-12-05T16:00:00+01:00`)"
        ),
    ))
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// `timestamp_ns` as RFC 3339 UTC with milliseconds (`2026-12-05T15:00:00.123Z`).
fn rfc3339_millis(timestamp_ns: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_nanos(timestamp_ns.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

/// Prints one record: `<time> [<instance>] [E] <line>`, or its JSON object with `time`.
fn print_record(record: &Record, prefix: bool, json: bool) {
    let time = rfc3339_millis(record.timestamp_ns);
    if json {
        let mut out = Vec::with_capacity(record.line.len() + 256);
        out.extend_from_slice(b"{\"time\":\"");
        out.extend_from_slice(time.as_bytes());
        out.extend_from_slice(b"\",");
        let mut body = Vec::with_capacity(record.line.len() + 256);
        record.write_json(&mut body);
        // `write_json` writes an object: its members follow ours.
        out.extend_from_slice(&body[1..]);
        crate::out::line(String::from_utf8_lossy(&out));
        return;
    }
    let mut text = time;
    if prefix {
        text.push(' ');
        text.push_str(&record.source.instance);
    }
    if record.stream == Stream::Stderr {
        text.push_str(" E");
    }
    text.push(' ');
    text.push_str(&record.line);
    crate::out::line(text);
}

/// Prints the values of `metric` over `records`: `<value>  <group>` lines, or one JSON object
/// per group.
fn print_counts(metric: &MetricExpr, mut records: Vec<Record>, window: Duration, json: bool) {
    let values: BTreeMap<Vec<String>, f64> = metric.evaluate(records.iter_mut(), window);
    for (key, value) in values {
        let group: serde_json::Map<String, serde_json::Value> = metric
            .by
            .iter()
            .cloned()
            .zip(key.iter().map(|v| json!(v)))
            .collect();
        if json {
            crate::out::line(json!({ "value": value, "group": group }));
            continue;
        }
        let shown = match metric.function {
            MetricFunction::Count => format!("{value:.0}"),
            MetricFunction::Rate => format!("{value:.3}"),
        };
        let label = if metric.by.is_empty() {
            "total".to_string()
        } else {
            metric
                .by
                .iter()
                .zip(&key)
                .map(|(name, value)| format!("{name}={value}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        crate::out::line(format_args!("{shown:>8}  {label}"));
    }
}
