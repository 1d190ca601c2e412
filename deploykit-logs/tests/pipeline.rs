//! The running pipeline: filters, sampling and rate limits counted exactly; the queue bounded;
//! back-pressure loses nothing.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deploykit_core::{Error, Result};
use deploykit_logs::{
    DropReason, Forwarder, Level, Pipeline, PipelineConfig, Processor, Record, Source, Stream,
    Verdict,
};

/// Collects what it is sent, optionally slowly, optionally failing the first calls.
#[derive(Default)]
struct Collector {
    lines: Mutex<Vec<String>>,
    delay: Duration,
    fail_first: AtomicUsize,
    calls: AtomicU64,
}

#[async_trait]
impl Forwarder for Collector {
    fn name(&self) -> &str {
        "collector"
    }

    async fn send(&self, batch: &[Record]) -> Result<()> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if self
            .fail_first
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(1)
            })
            .is_ok()
        {
            return Err(Error::transient("send", "receiver down"));
        }
        self.lines
            .lock()
            .unwrap()
            .extend(batch.iter().map(|record| record.line.clone()));
        Ok(())
    }
}

fn config(text: &str) -> PipelineConfig {
    PipelineConfig::from_toml_str(text).unwrap()
}

fn json_line(index: usize, level: &str) -> String {
    format!(
        r#"{{"level":"{level}","msg":"event {index}","user":"u{}","pad":"{}"}}"#,
        index % 7,
        "x".repeat(200)
    )
}

fn record(source: &Arc<Source>, timestamp_ns: i64, line: String) -> Record {
    Record::new(Arc::clone(source), Stream::Stdout, timestamp_ns, line)
}

#[tokio::test]
async fn filters_keep_what_they_should_and_count_the_rest() {
    let collector = Arc::new(Collector::default());
    let pipeline = Pipeline::start(
        &config(
            r#"
            [[stages]]
            type = "parse_json"
            [[stages]]
            type = "filter"
            min_level = "warn"
            [[stages]]
            type = "filter"
            field = "user"
            equals = "u3"
            negate = true
            [[stages]]
            type = "filter"
            line_matches = 'event \d+[05]"'
            negate = true
            "#,
        ),
        Vec::<String>::new(),
        collector.clone(),
    )
    .unwrap();
    let input = pipeline.input();
    let source = Source::new("api", "prod", "r1", "api-1");
    let levels = ["debug", "info", "warn", "error", "fatal"];
    let mut expected = Vec::new();
    for index in 0..500 {
        let level = levels[index % levels.len()];
        let line = json_line(index, level);
        let keep = Level::parse(level).unwrap() >= Level::Warn && index % 7 != 3 && index % 5 != 0;
        if keep {
            expected.push(line.clone());
        }
        let verdict = input.send(record(&source, 0, line)).await.unwrap();
        assert_eq!(verdict == Verdict::Keep, keep, "line {index}");
    }
    let stats = pipeline.close().await.unwrap();
    assert_eq!(*collector.lines.lock().unwrap(), expected);
    assert_eq!(stats.records_in, 500);
    assert_eq!(stats.records_out, expected.len() as u64);
    assert_eq!(stats.dropped_by_filter, 500 - expected.len() as u64);
    assert!(stats.is_balanced());
}

#[test]
fn sampling_is_counted_exactly_and_reproducible() {
    let sample = config("[[stages]]\ntype = \"sample\"\none_in = 10\n");
    let source = Source::new("api", "prod", "r1", "api-1");
    let run = || {
        let processor = Processor::new(&sample, Vec::<String>::new()).unwrap();
        let mut kept = Vec::new();
        for index in 0..10_000 {
            let mut rec = record(&source, index, format!("line number {index}"));
            if processor.process(&mut rec) == Verdict::Keep {
                kept.push(index);
            }
        }
        (kept, processor.stats())
    };
    let (kept, stats) = run();
    let (again, _) = run();
    assert_eq!(kept, again, "the same records are kept every run");
    let expected: Vec<i64> = (0..10_000)
        .filter(|index| {
            record(&source, *index, format!("line number {index}"))
                .stable_hash()
                .is_multiple_of(10)
        })
        .collect();
    assert_eq!(kept, expected);
    assert_eq!(stats.records_in, 10_000);
    assert_eq!(stats.dropped_by_sampling, 10_000 - kept.len() as u64);
    assert!(
        (800..1200).contains(&kept.len()),
        "about one in ten: {}",
        kept.len()
    );
}

#[test]
fn rate_limits_are_per_key_per_second_and_counted_exactly() {
    let limit = config(
        "[[stages]]\ntype = \"parse_logfmt\"\n[[stages]]\ntype = \"rate_limit\"\nper_second = 5\nkey = \"tenant\"\n",
    );
    let processor = Processor::new(&limit, Vec::<String>::new()).unwrap();
    let source = Source::new("api", "prod", "r1", "api-1");
    let mut kept = [0u64; 2];
    // Two tenants, three seconds, 20 records per tenant per second.
    for second in 0..3i64 {
        for index in 0..40 {
            let tenant = index % 2;
            let mut rec = record(
                &source,
                second * 1_000_000_000 + i64::from(index),
                format!("tenant=t{tenant} n={index}"),
            );
            match processor.process(&mut rec) {
                Verdict::Keep => kept[tenant as usize] += 1,
                Verdict::Drop(reason) => assert_eq!(reason, DropReason::RateLimit),
            }
        }
    }
    assert_eq!(kept, [15, 15]);
    let stats = processor.stats();
    assert_eq!(stats.records_in, 120);
    assert_eq!(stats.dropped_by_rate_limit, 90);
}

#[test]
fn field_edits_add_rename_and_drop() {
    let edits = config(
        r#"
        [[stages]]
        type = "parse_json"
        [[stages]]
        type = "fields"
        add = { team = "payments", shard = 3 }
        rename = { msg = "message" }
        drop = ["pad"]
        "#,
    );
    let processor = Processor::new(&edits, Vec::<String>::new()).unwrap();
    let source = Source::new("api", "prod", "r1", "api-1");
    let mut rec = record(&source, 0, json_line(1, "info"));
    assert_eq!(processor.process(&mut rec), Verdict::Keep);
    let names: Vec<String> = rec
        .fields()
        .iter()
        .map(|(name, _)| name.to_string())
        .collect();
    // Added fields come in name order (a TOML table has no order of its own).
    assert_eq!(names, ["level", "message", "user", "shard", "team"]);
    assert_eq!(
        rec.field("team"),
        Some(&serde_json::Value::from("payments"))
    );
    assert_eq!(rec.field("shard"), Some(&serde_json::Value::from(3)));
    assert_eq!(rec.message(), "event 1");
}

/// Sends `count` records as fast as possible into a pipeline whose forwarder takes 2 ms per
/// batch of at most 8.
async fn flood(overflow: &str, count: usize) -> (deploykit_logs::PipelineStats, usize, usize) {
    let limit = 64 * 1024;
    let collector = Arc::new(Collector {
        delay: Duration::from_millis(2),
        ..Collector::default()
    });
    let pipeline = Pipeline::start(
        &config(&format!(
            "memory_limit_bytes = {limit}\noverflow = \"{overflow}\"\nbatch_max_records = 8\n[[stages]]\ntype = \"parse_json\"\n"
        )),
        Vec::<String>::new(),
        collector.clone(),
    )
    .unwrap();
    let source = Source::new("api", "prod", "r1", "api-1");
    let mut producers = Vec::new();
    for producer in 0..4 {
        let input = pipeline.input();
        let source = Arc::clone(&source);
        producers.push(tokio::spawn(async move {
            let mut peak = 0;
            for index in 0..count / 4 {
                let line = json_line(producer * 1_000_000 + index, "info");
                input.send(record(&source, 0, line)).await.unwrap();
                peak = peak.max(input.stats().queued_bytes);
            }
            peak
        }));
    }
    let mut observed_peak = 0;
    for producer in producers {
        observed_peak = observed_peak.max(producer.await.unwrap());
    }
    let stats = pipeline.close().await.unwrap();
    assert!(
        stats.peak_queued_bytes as usize <= limit,
        "{} > {limit}",
        stats.peak_queued_bytes
    );
    assert!(observed_peak as usize <= limit);
    let delivered = collector.lines.lock().unwrap().len();
    (stats, delivered, limit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_newest_keeps_memory_under_the_ceiling_and_counts_every_drop() {
    let (stats, delivered, _) = flood("drop_newest", 20_000).await;
    assert_eq!(stats.records_in, 20_000);
    assert!(
        stats.dropped_by_overflow > 0,
        "a slow forwarder must overflow: {stats:?}"
    );
    assert_eq!(stats.records_out, delivered as u64);
    assert_eq!(
        stats.records_in,
        stats.records_out + stats.dropped_by_overflow
    );
    assert!(stats.is_balanced());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_pressure_drops_nothing() {
    let (stats, delivered, _) = flood("back_pressure", 4_000).await;
    assert_eq!(stats.records_in, 4_000);
    assert_eq!(stats.dropped(), 0);
    assert_eq!(delivered, 4_000);
    assert_eq!(stats.records_out, 4_000);
}

#[tokio::test]
async fn a_failing_forwarder_is_retried_then_its_batch_counted_as_dropped() {
    let collector = Arc::new(Collector {
        fail_first: AtomicUsize::new(2),
        ..Collector::default()
    });
    let pipeline = Pipeline::start(
        &config("forward_retries = 3\nretry_backoff_ms = 1\n"),
        Vec::<String>::new(),
        collector.clone(),
    )
    .unwrap();
    let source = Source::new("api", "prod", "r1", "api-1");
    pipeline
        .input()
        .send(record(&source, 0, "one".into()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stats = pipeline.close().await.unwrap();
    assert_eq!(stats.records_out, 1, "delivered on the third try");
    assert_eq!(stats.forward_errors, 2);

    let down = Arc::new(Collector {
        fail_first: AtomicUsize::new(usize::MAX),
        ..Collector::default()
    });
    let pipeline = Pipeline::start(
        &config("forward_retries = 2\nretry_backoff_ms = 1\n"),
        Vec::<String>::new(),
        down.clone(),
    )
    .unwrap();
    let input = pipeline.input();
    input.send(record(&source, 0, "lost".into())).await.unwrap();
    let closed = pipeline.close().await;
    assert!(closed.is_err(), "the last failure is reported");
    assert_eq!(down.calls.load(Ordering::Relaxed), 3);
    let stats = input.stats();
    assert_eq!(
        (stats.records_out, stats.dropped_by_forward_failure),
        (0, 1)
    );
    assert!(stats.is_balanced());
}

#[tokio::test]
async fn a_closed_pipeline_refuses_records() {
    let collector = Arc::new(Collector::default());
    let pipeline =
        Pipeline::start(&PipelineConfig::default(), Vec::<String>::new(), collector).unwrap();
    let input = pipeline.input();
    let stats = pipeline.close().await.unwrap();
    assert_eq!(stats.records_in, 0);
    let source = Source::new("api", "prod", "r1", "api-1");
    assert!(input.send(record(&source, 0, "late".into())).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarder_outage_under_back_pressure_loses_nothing() {
    // The forwarder is down for its first 6 calls (about 60 ms of retries); the producer keeps
    // writing, waits while the queue is full, and every line arrives once, in order.
    let collector = Arc::new(Collector {
        fail_first: AtomicUsize::new(6),
        ..Collector::default()
    });
    let pipeline = Pipeline::start(
        &config("memory_limit_bytes = 65536\nforward_retries = 10\nretry_backoff_ms = 2\n"),
        Vec::<String>::new(),
        collector.clone(),
    )
    .unwrap();
    let input = pipeline.input();
    let source = Source::new("api", "prod", "r1", "api-1");
    for index in 0..20_000 {
        input
            .send(record(&source, index, format!("line {index}")))
            .await
            .unwrap();
    }
    let stats = pipeline.close().await.unwrap();
    assert_eq!(stats.forward_errors, 6);
    assert_eq!(stats.records_out, 20_000);
    assert_eq!(stats.dropped(), 0);
    let lines = collector.lines.lock().unwrap();
    assert!(
        lines
            .iter()
            .enumerate()
            .all(|(index, line)| *line == format!("line {index}"))
    );
}
