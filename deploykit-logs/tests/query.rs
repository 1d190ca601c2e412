//! The log query language: what it selects, what it counts, and how it refuses bad queries.

use std::time::Duration;

use deploykit_logs::{LogQuery, MetricExpr, MetricFunction, Record, Source, Stream};
use proptest::prelude::*;

fn record(revision: &str, instance: &str, stream: Stream, line: &str) -> Record {
    Record::new(
        Source::new("api", "production", revision, instance),
        stream,
        0,
        line,
    )
}

fn sample() -> Vec<Record> {
    vec![
        record(
            "r1",
            "api-1",
            Stream::Stdout,
            r#"{"level":"info","msg":"ok","path":"/"}"#,
        ),
        record(
            "r1",
            "api-1",
            Stream::Stderr,
            r#"{"level":"error","msg":"db timeout","path":"/login"}"#,
        ),
        record(
            "r2",
            "api-2",
            Stream::Stdout,
            "level=error msg=\"upstream timeout\" path=/login user=42",
        ),
        record(
            "r2",
            "api-2",
            Stream::Stdout,
            "level=warn msg=slow path=/healthz",
        ),
        record(
            "r2",
            "api-3",
            Stream::Stderr,
            "panic: runtime error: index out of range",
        ),
    ]
}

fn selected(query: &str) -> Vec<usize> {
    let query = LogQuery::parse(query).unwrap_or_else(|e| panic!("{query}: {e}"));
    sample()
        .iter_mut()
        .enumerate()
        .filter_map(|(i, r)| query.matches(r).then_some(i))
        .collect()
}

#[test]
fn selectors_and_filters_select() {
    assert_eq!(selected("{}"), vec![0, 1, 2, 3, 4]);
    assert_eq!(selected(r#"{revision="r2"}"#), vec![2, 3, 4]);
    assert_eq!(
        selected(r#"{level="error"}"#),
        vec![1, 2],
        "JSON and logfmt levels"
    );
    assert_eq!(selected(r#"{level=~"warn|error"}"#), vec![1, 2, 3]);
    assert_eq!(
        selected(r#"{level!="error"}"#),
        vec![0, 3, 4],
        "no level is not error"
    );
    assert_eq!(selected(r#"{stream="stderr"}"#), vec![1, 4]);
    assert_eq!(
        selected(r#"{instance=~"api-[23]", level!~"warn"}"#),
        vec![2, 4]
    );
    assert_eq!(selected(r#"{} |= "timeout""#), vec![1, 2]);
    assert_eq!(selected(r#"{} |= "timeout" != "db""#), vec![2]);
    assert_eq!(selected(r#"{} |~ "user=[0-9]+""#), vec![2]);
    assert_eq!(selected(r#"{} !~ "^\{""#), vec![2, 3, 4]);
    assert_eq!(selected(r#"{} | json | path="/login""#), vec![1, 2]);
    assert_eq!(
        selected(r#"{path=~"/log.*"}"#),
        vec![1, 2],
        "a field as a label"
    );
    assert_eq!(selected(r#"{} | user="42""#), vec![2]);
    assert_eq!(selected(r#"{} |= `index out`"#), vec![4], "raw strings");
    // A regular expression matches the whole value, as in LogQL.
    assert_eq!(selected(r#"{level=~"err"}"#), Vec::<usize>::new());
}

#[test]
fn metrics_count_and_rate_per_group() {
    let count = |text: &str| {
        let expr = MetricExpr::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let mut records = sample();
        expr.evaluate(
            records.iter_mut(),
            expr.range.unwrap_or(Duration::from_secs(60)),
        )
    };
    let total = |text: &str| count(text).values().sum::<f64>();
    assert_eq!(total(r#"count_over_time({level="error"}[1m])"#), 2.0);
    assert_eq!(total(r#"log_count{level="error"}[1m]"#), 2.0);
    assert_eq!(
        total(r#"log_count{level="fatal"}"#),
        0.0,
        "nothing is zero, not no data"
    );
    assert_eq!(total(r#"rate({} |= "timeout" [2s])"#), 1.0);
    assert_eq!(total(r#"log_rate{revision="r2"}[3s]"#), 1.0);
    let by = count(r#"sum by (revision) (count_over_time({}[5m]))"#);
    assert_eq!(by.get(&vec!["r1".to_string()]), Some(&2.0));
    assert_eq!(by.get(&vec!["r2".to_string()]), Some(&3.0));
    let expr = MetricExpr::parse(r#"rate({}[5m])"#).unwrap();
    assert_eq!(
        (expr.function, expr.range),
        (MetricFunction::Rate, Some(Duration::from_secs(300)))
    );
    assert!(MetricExpr::is_log_metric(r#"log_count{level="error"}[1m]"#));
    // PromQL is not taken for a log query.
    for promql in [
        "sum(rate(http_requests_total{code=~\"5..\"}[5m]))",
        "error_rate",
        "histogram_quantile(0.99, rate(x_bucket[5m]))",
    ] {
        assert!(!MetricExpr::is_log_metric(promql), "{promql}");
    }
}

#[test]
fn bad_queries_are_refused_with_where_and_what() {
    for (query, expected) in [
        (r#"{level="error""#, "at column 15: expected \",\" or \"}\""),
        (
            r#"{level: "error"}"#,
            "at column 7: expected one of =, !=, =~, !~",
        ),
        (
            r#"{level="error"} |= timeout"#,
            "at column 20: expected a quoted string",
        ),
        (
            r#"{level=~"(unclosed"}"#,
            "invalid regular expression \"(unclosed\"",
        ),
        (r#"{} extra"#, "at column 4: expected the end of the query"),
        (r#"{="x"}"#, "at column 2: expected a label or field name"),
        (r#"{msg="unterminated}"#, "expected a closing '\"'"),
    ] {
        let error = LogQuery::parse(query).unwrap_err().to_string();
        assert!(error.contains("logs.query"), "{error}");
        assert!(error.contains(expected), "{query}: {error}");
    }
    for (query, expected) in [
        (
            r#"count_over_time({}[1 fortnight])"#,
            "invalid range [1 fortnight]",
        ),
        (r#"count_over_time({}[0s])"#, "must be longer than zero"),
        (r#"count_over_time({})"#, "expected \"[\""),
        (r#"avg_over_time({}[1m])"#, "expected count_over_time"),
    ] {
        let error = MetricExpr::parse(query).unwrap_err().to_string();
        assert!(error.contains(expected), "{query}: {error}");
    }
}

proptest! {
    /// Any text is parsed or refused, never a panic (multi-byte characters included).
    #[test]
    fn any_text_is_parsed_or_refused(text in "\\PC{0,40}", prefix in prop::sample::select(vec!["", "{", "{a=", "count_over_time(", "{} |= ", "sum by ("])) {
        let text = format!("{prefix}{text}");
        let _ = LogQuery::parse(&text);
        let _ = MetricExpr::parse(&text);
    }

    /// A count is the number of records the query selects, and the groups of `sum by` add up
    /// to it.
    #[test]
    fn counts_agree_with_selection(
        lines in prop::collection::vec((0..3usize, 0..4usize, "[a-z ]{0,12}"), 0..40),
        level in prop::sample::select(vec!["error", "info", "warn"]),
        word in "[a-z]{1,2}",
    ) {
        let levels = ["error", "info", "warn", "debug"];
        let mut records: Vec<Record> = lines
            .iter()
            .map(|(rev, lvl, msg)| record(&format!("r{rev}"), "i", Stream::Stdout,
                &format!(r#"{{"level":"{}","msg":"{msg}"}}"#, levels[*lvl])))
            .collect();
        let text = format!(r#"{{level="{level}"}} |= "{word}""#);
        let query = LogQuery::parse(&text).unwrap();
        let expected = records.iter_mut().filter_map(|r| query.matches(r).then_some(())).count() as f64;
        let reference = lines.iter().filter(|(_, lvl, msg)| levels[*lvl] == level && (msg.contains(word.as_str()) || level.contains(word.as_str()) || "level".contains(word.as_str()) || "msg".contains(word.as_str()))).count() as f64;
        prop_assert_eq!(expected, reference);
        let total = MetricExpr::parse(&format!("count_over_time({text}[1m])")).unwrap()
            .evaluate(records.iter_mut(), Duration::from_secs(60));
        prop_assert_eq!(total.values().sum::<f64>(), expected);
        let grouped = MetricExpr::parse(&format!("sum by (revision) (count_over_time({text}[1m]))")).unwrap()
            .evaluate(records.iter_mut(), Duration::from_secs(60));
        prop_assert_eq!(grouped.values().sum::<f64>(), expected);
    }
}
