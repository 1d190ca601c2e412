//! Parsers on real-looking lines and on garbage.

use std::sync::Arc;

use deploykit_logs::{
    FieldValue, Level, PipelineConfig, Processor, Record, RegexParser, Source, Stream, Verdict,
    parse_json, parse_logfmt, parse_timestamp_ns,
};
use proptest::prelude::*;
use regex::Regex;

fn source() -> Arc<Source> {
    Source::new("api", "production", "r1", "api-1")
}

fn record(line: &str) -> Record {
    Record::new(source(), Stream::Stdout, 7, line)
}

#[test]
fn json_takes_level_time_and_message_from_common_keys() {
    let mut rec = record(
        r#"{"time":"2026-12-05T12:00:01.5Z","level":"ERROR","msg":"db down","attempt":3,"ctx":{"db":"main"}}"#,
    );
    assert!(parse_json(&mut rec));
    assert_eq!(rec.level, Some(Level::Error));
    assert_eq!(
        rec.timestamp_ns,
        parse_timestamp_ns("2026-12-05T12:00:01.5Z").unwrap()
    );
    assert_eq!(rec.timestamp_ns % 1_000_000_000, 500_000_000);
    assert_eq!(rec.message(), "db down");
    let names: Vec<String> = rec
        .fields()
        .iter()
        .map(|(key, _)| key.to_string())
        .collect();
    assert_eq!(names, ["time", "level", "msg", "attempt", "ctx"]);
    assert_eq!(rec.field("attempt"), Some(&FieldValue::from(3)));

    let mut pino = record(r#"{"lvl":50,"ts":1764936000123,"message":"boom"}"#);
    assert!(parse_json(&mut pino));
    assert_eq!(pino.level, Some(Level::Error));
    assert_eq!(pino.timestamp_ns, 1_764_936_000_123_000_000);
    assert_eq!(pino.message(), "boom");

    let mut severity = record(r#"{"severity":"warning","timestamp":"2026-12-05T13:00:00+01:00"}"#);
    assert!(parse_json(&mut severity));
    assert_eq!(severity.level, Some(Level::Warn));
    assert_eq!(
        severity.timestamp_ns,
        parse_timestamp_ns("2026-12-05T12:00:00Z").unwrap()
    );
}

#[test]
fn json_that_is_not_an_object_is_kept_as_a_raw_line() {
    for line in [
        "[1,2,3]",
        "42",
        "\"text\"",
        "{\"level\":\"error\"",
        "{\"level\":\"error\"} trailing",
        "{not json}",
        "",
        "plain text line",
    ] {
        let mut rec = record(line);
        assert!(!parse_json(&mut rec), "{line}");
        assert_eq!(rec.line, line);
        assert_eq!(rec.level, None);
        assert!(rec.fields().is_empty());
        assert_eq!(rec.message(), line);
        assert!(!rec.is_json());
    }
}

#[test]
fn rfc3339_fast_path_agrees_with_chrono() {
    for text in [
        "1970-01-01T00:00:00Z",
        "2000-02-29T23:59:59.999999999Z",
        "2026-12-05T12:00:00.123-05:30",
        "1999-12-31 23:59:59+00:00",
        "2024-03-01T00:00:00.1Z",
    ] {
        let expected = chrono::DateTime::parse_from_rfc3339(text)
            .map(|time| time.timestamp_nanos_opt().unwrap())
            .unwrap_or_else(|_| {
                chrono::DateTime::parse_from_rfc3339(&text.replacen(' ', "T", 1))
                    .unwrap()
                    .timestamp_nanos_opt()
                    .unwrap()
            });
        assert_eq!(parse_timestamp_ns(text), Some(expected), "{text}");
    }
    assert_eq!(
        parse_timestamp_ns("1764936000"),
        Some(1_764_936_000_000_000_000)
    );
    assert_eq!(parse_timestamp_ns("yesterday"), None);
    assert_eq!(parse_timestamp_ns("2026-13-05T12:00:00Z"), None);
}

#[test]
fn logfmt_parses_quoted_values_and_bare_keys() {
    let mut rec = record(
        r#"time=2026-12-05T12:00:00Z level=warn msg="disk \"data\" almost full" used=93% verbose"#,
    );
    assert!(parse_logfmt(&mut rec));
    assert_eq!(rec.level, Some(Level::Warn));
    assert_eq!(
        rec.timestamp_ns,
        parse_timestamp_ns("2026-12-05T12:00:00Z").unwrap()
    );
    assert_eq!(rec.message(), r#"disk "data" almost full"#);
    assert_eq!(rec.field("used"), Some(&FieldValue::from("93%")));
    assert_eq!(rec.field("verbose"), Some(&FieldValue::Bool(true)));

    let mut plain = record("just some words");
    assert!(!parse_logfmt(&mut plain));
    assert!(plain.fields().is_empty());
    assert_eq!(plain.line, "just some words");

    let mut unterminated = record(r#"a=1 b="never closed"#);
    assert!(parse_logfmt(&mut unterminated));
    assert_eq!(
        unterminated.field("b"),
        Some(&FieldValue::from("never closed"))
    );
}

#[test]
fn regex_named_captures_become_fields() {
    let parser = RegexParser::new(
        Regex::new(r"^(?P<time>\S+) \[(?P<level>\w+)\] (?P<path>/\S*) (?P<status>\d{3})$").unwrap(),
    );
    let mut rec = record("2026-12-05T12:00:00Z [ERROR] /api/items 503");
    assert!(parser.parse(&mut rec));
    assert_eq!(rec.level, Some(Level::Error));
    assert_eq!(rec.field("status"), Some(&FieldValue::from("503")));
    assert_eq!(rec.field("path"), Some(&FieldValue::from("/api/items")));

    let mut other = record("no match here");
    assert!(!parser.parse(&mut other));
    assert!(other.fields().is_empty());
    assert_eq!(other.timestamp_ns, 7);
}

#[test]
fn written_json_round_trips() {
    let mut rec = record(r#"{"level":"info","msg":"tab\there","n":1.5}"#);
    assert!(parse_json(&mut rec));
    let mut out = Vec::new();
    rec.write_json(&mut out);
    let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(value["service"], "api");
    assert_eq!(value["instance"], "api-1");
    assert_eq!(value["stream"], "stdout");
    assert_eq!(value["level"], "info");
    assert_eq!(value["fields"]["msg"], "tab\there");
    assert_eq!(value["line"], rec.line.as_str());

    // A JSON object spread over lines (joined by multi-line) is still written on one line.
    let mut spread = record("{\"level\":\r\n \"warn\",\n\"n\": 2}");
    assert!(parse_json(&mut spread));
    assert_eq!(spread.level, Some(Level::Warn));
    let mut out = Vec::new();
    spread.write_json(&mut out);
    assert!(!out.contains(&b'\n') && !out.contains(&b'\r'));
    let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(value["fields"]["n"], 2);

    let mut raw = record("not \"json\"\u{1}");
    assert!(!parse_json(&mut raw));
    let mut out = Vec::new();
    raw.write_json(&mut out);
    let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(value["line"], "not \"json\"\u{1}");
    assert_eq!(value["level"], serde_json::Value::Null);
}

/// What `[parse_json, filter]` must decide for a line: parse it fully, then filter.
fn full_verdict(line: &str, keep: impl Fn(Option<Level>) -> bool) -> bool {
    let mut rec = record(line);
    parse_json(&mut rec);
    keep(rec.level)
}

proptest! {
    #[test]
    fn a_level_filter_after_parse_json_decides_as_a_full_parse_would(
        line in r#"\{("level"|"lvl"|"msg"|:|,|"error"|"info"|50|30|\{|\}|\[|\]|"x"| ){0,14}"#,
    ) {
        let exact = PipelineConfig::from_toml_str(
            "[[stages]]\ntype = \"parse_json\"\n[[stages]]\ntype = \"filter\"\nlevel = \"error\"\n",
        ).unwrap();
        let at_least = PipelineConfig::from_toml_str(
            "[[stages]]\ntype = \"parse_json\"\n[[stages]]\ntype = \"filter\"\nmin_level = \"warn\"\n",
        ).unwrap();
        let processor = Processor::new(&exact, Vec::<String>::new()).unwrap();
        let kept = processor.process(&mut record(&line)) == Verdict::Keep;
        prop_assert_eq!(kept, full_verdict(&line, |level| level == Some(Level::Error)));
        let processor = Processor::new(&at_least, Vec::<String>::new()).unwrap();
        let kept = processor.process(&mut record(&line)) == Verdict::Keep;
        prop_assert_eq!(kept, full_verdict(&line, |level| level.is_some_and(|l| l >= Level::Warn)));
    }

    #[test]
    fn json_with_escapes_is_recognised_as_serde_json_does(
        line in r#"\{("k"|"\\u00[0-7][0-9a-f]"|"\\u[dD][89abAB][0-9a-f]{2}"|"\\u[dD][c-fC-F][0-9a-f]{2}"|"a\\[nt"/\\bz]b"|"\\q"|:|,|1|-0.5e3|01| ){0,10}\}"#,
    ) {
        let mut rec = record(&line);
        let parsed = parse_json(&mut rec);
        let reference = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&line).is_ok();
        prop_assert_eq!(parsed, reference, "{}", line);
    }

    #[test]
    fn rfc3339_timestamps_parse_exactly(
        seconds in 0i64..4_102_444_800,
        nanos in 0u32..1_000_000_000,
        offset_minutes in -720i32..=840,
        digits in 0usize..=9,
    ) {
        use chrono::{FixedOffset, SecondsFormat, TimeZone};
        let offset = FixedOffset::east_opt(offset_minutes * 60).unwrap();
        let truncated = nanos - nanos % 10u32.pow(9 - digits as u32);
        let time = offset.timestamp_opt(seconds, truncated).unwrap();
        let format = match digits {
            0 => SecondsFormat::Secs,
            1..=3 => SecondsFormat::Millis,
            4..=6 => SecondsFormat::Micros,
            _ => SecondsFormat::Nanos,
        };
        let text = time.to_rfc3339_opts(format, offset_minutes == 0);
        let expected = chrono::DateTime::parse_from_rfc3339(&text).unwrap().timestamp_nanos_opt();
        prop_assert_eq!(parse_timestamp_ns(&text), expected, "{}", text);
    }

    #[test]
    fn parsers_never_panic_and_never_lose_the_line(line in any::<String>()) {
        let parser = RegexParser::new(Regex::new(r"(?P<level>\w+): (?P<msg>.*)").unwrap());
        for parse in [parse_json as fn(&mut Record) -> bool, parse_logfmt] {
            let mut rec = record(&line);
            let _ = parse(&mut rec);
            prop_assert_eq!(&rec.line, &line);
            let mut out = Vec::new();
            let _ = rec.fields();
            rec.write_json(&mut out);
            prop_assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok());
        }
        let mut rec = record(&line);
        let _ = parser.parse(&mut rec);
        prop_assert_eq!(&rec.line, &line);
        let _ = parse_timestamp_ns(&line);
    }

    #[test]
    fn json_like_garbage_never_panics(line in r#"\{("[a-z]{0,4}"|:|,|\[|\]|\{|\}|[0-9.e+-]{1,5}|"l(evel|vl)"|true|null| ){0,20}"#) {
        let mut rec = record(&line);
        let parsed = parse_json(&mut rec);
        prop_assert_eq!(parsed, serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&line).is_ok());
        prop_assert_eq!(&rec.line, &line);
        let mut out = Vec::new();
        rec.write_json(&mut out);
        prop_assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok());
    }
}
