//! Multi-line joining: stack traces become one record; bounds and the flush timeout hold.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deploykit_logs::{LineJoiner, PipelineConfig, Record, Source, Stream};
use regex::Regex;

fn lines_of(text: &str) -> Vec<Record> {
    let source = Source::new("api", "production", "r1", "api-1");
    text.lines()
        .map(|line| Record::new(Arc::clone(&source), Stream::Stderr, 0, line))
        .collect()
}

fn joiner(max_lines: usize) -> LineJoiner {
    LineJoiner::new(
        Regex::new(r"^\d{4}-\d\d-\d\d").unwrap(),
        None,
        max_lines,
        64 * 1024,
        Duration::from_millis(500),
    )
}

fn join_all(joiner: &mut LineJoiner, text: &str) -> Vec<String> {
    let now = Instant::now();
    let mut out: Vec<String> = lines_of(text)
        .into_iter()
        .filter_map(|record| joiner.push(record, now))
        .map(|record| record.line)
        .collect();
    out.extend(joiner.finish().map(|record| record.line));
    out
}

const JAVA: &str = "2026-12-05 12:00:00 INFO started
2026-12-05 12:00:01 ERROR request failed
java.lang.IllegalStateException: connection reset
\tat com.example.Handler.handle(Handler.java:42)
\tat com.example.Server.run(Server.java:7)
Caused by: java.io.IOException: broken pipe
\tat java.base/sun.nio.ch.SocketDispatcher.write0(Native Method)
\t... 12 more
2026-12-05 12:00:02 INFO recovered";

const PYTHON: &str = "2026-12-05 12:00:01,123 ERROR unhandled
Traceback (most recent call last):
  File \"/app/main.py\", line 10, in <module>
    main()
  File \"/app/main.py\", line 6, in main
    raise ValueError(\"boom\")
ValueError: boom
2026-12-05 12:00:02,000 INFO next";

#[test]
fn a_java_stack_trace_is_one_record() {
    let records = join_all(&mut joiner(100), JAVA);
    assert_eq!(records.len(), 3, "{records:#?}");
    assert_eq!(records[0], "2026-12-05 12:00:00 INFO started");
    assert!(records[1].starts_with("2026-12-05 12:00:01 ERROR request failed\njava.lang"));
    assert!(records[1].ends_with("\t... 12 more"));
    assert_eq!(records[1].lines().count(), 7);
    assert_eq!(records[2], "2026-12-05 12:00:02 INFO recovered");
}

#[test]
fn a_python_traceback_is_one_record() {
    let records = join_all(&mut joiner(100), PYTHON);
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].lines().count(), 7);
    assert!(records[0].ends_with("ValueError: boom"));
}

#[test]
fn continuation_pattern_limits_what_joins() {
    let mut joiner = LineJoiner::new(
        Regex::new(r"^\S").unwrap(),
        Some(Regex::new(r"^(\s|Caused by:)").unwrap()),
        100,
        64 * 1024,
        Duration::from_secs(1),
    );
    // With `^\S` as start, `Caused by:` starts a record unless continuation wins: the start
    // pattern is checked first, so it begins its own record.
    let records = join_all(&mut joiner, "head\n\tat a\n\tat b\nnext");
    assert_eq!(records, ["head\n\tat a\n\tat b", "next"]);
}

#[test]
fn records_are_bounded_by_max_lines_and_max_bytes() {
    let mut text = String::from("2026-12-05 12:00:00 ERROR huge trace\n");
    for index in 0..25 {
        text.push_str(&format!("\tat frame{index}\n"));
    }
    let records = join_all(&mut joiner(10), &text);
    assert_eq!(records.len(), 3);
    assert_eq!(records[0].lines().count(), 10);
    assert_eq!(records[1].lines().count(), 10);
    assert_eq!(records[2].lines().count(), 6);
    let total: usize = records.iter().map(|record| record.lines().count()).sum();
    assert_eq!(total, 26, "no line lost");

    let mut small = LineJoiner::new(
        Regex::new(r"^\d{4}").unwrap(),
        None,
        1000,
        40,
        Duration::from_secs(1),
    );
    let records = join_all(
        &mut small,
        "2026 start\n\tat aaaaaaaaaa\n\tat bbbbbbbbbb\n\tat cccccccccc",
    );
    assert!(
        records.iter().all(|record| record.len() <= 40),
        "{records:?}"
    );
    assert_eq!(records.iter().map(|r| r.lines().count()).sum::<usize>(), 4);
}

#[test]
fn the_flush_timeout_emits_a_pending_record() {
    let mut joiner = joiner(100);
    let start = Instant::now();
    let mut lines = lines_of("2026-12-05 12:00:01 ERROR failed\n\tat frame");
    assert!(joiner.push(lines.remove(0), start).is_none());
    assert!(
        joiner
            .push(lines.remove(0), start + Duration::from_millis(100))
            .is_none()
    );
    assert_eq!(joiner.deadline(), Some(start + Duration::from_millis(600)));
    assert!(joiner.poll(start + Duration::from_millis(599)).is_none());
    let flushed = joiner
        .poll(start + Duration::from_millis(600))
        .expect("flushed at the timeout");
    assert_eq!(flushed.line, "2026-12-05 12:00:01 ERROR failed\n\tat frame");
    assert!(joiner.poll(start + Duration::from_secs(10)).is_none());
    assert!(joiner.finish().is_none());
}

#[test]
fn the_pipeline_builds_joiners_from_its_config() {
    let config = PipelineConfig::from_toml_str(
        r#"
        [multiline]
        start = '^\d{4}-\d\d-\d\d'
        max_lines = 50
        flush_timeout_ms = 200
        "#,
    )
    .unwrap();
    let multiline = config.multiline.as_ref().unwrap();
    assert_eq!((multiline.max_lines, multiline.flush_timeout_ms), (50, 200));
    assert_eq!(multiline.max_bytes, 64 * 1024);
}

#[tokio::test]
async fn joined_stack_traces_flow_through_the_pipeline_whole() {
    use deploykit_logs::{FileForwarder, Pipeline};
    let dir = tempfile::tempdir().unwrap();
    let config = PipelineConfig::from_toml_str(
        r#"
        [multiline]
        start = '^\d{4}-\d\d-\d\d'
        [[stages]]
        type = "parse_regex"
        pattern = '^(?P<time>\S+ \S+) (?P<level>[A-Z]+) '
        [[stages]]
        type = "filter"
        min_level = "error"
        "#,
    )
    .unwrap();
    let forwarder = Arc::new(FileForwarder::create(dir.path(), "api", 1 << 20).unwrap());
    let pipeline = Pipeline::start(&config, ["broken pipe"], forwarder.clone()).unwrap();
    let input = pipeline.input();
    let mut joiner = input.line_joiner().expect("the config joins lines");
    let now = Instant::now();
    for record in lines_of(JAVA) {
        if let Some(complete) = joiner.push(record, now) {
            input.send(complete).await.unwrap();
        }
    }
    if let Some(complete) = joiner.finish() {
        input.send(complete).await.unwrap();
    }
    let stats = pipeline.close().await.unwrap();
    assert_eq!((stats.records_in, stats.records_out), (3, 1));
    let written = std::fs::read_to_string(forwarder.current_path()).unwrap();
    assert_eq!(written.lines().count(), 1);
    let value: serde_json::Value = serde_json::from_str(written.trim()).unwrap();
    assert_eq!(value["level"], "error");
    assert_eq!(value["stream"], "stderr");
    let line = value["line"].as_str().unwrap();
    assert_eq!(line.lines().count(), 7);
    assert!(line.contains("Caused by: java.io.IOException: [REDACTED]"));
}
