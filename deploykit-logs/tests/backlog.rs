//! Retries and the disk backlog: records sent while the receiver is down (answering 503, or
//! not listening at all) arrive exactly once and in order once it is up again, across a
//! restart of the forwarder too; past the byte limit the oldest are dropped and counted.

mod common;

use std::sync::Arc;
use std::time::Duration;

use deploykit_core::retry::RetryPolicy;
use deploykit_logs::{Forwarder, Record, Reliable, ReliableOptions, WebhookForwarder};

fn options(backlog_max_bytes: u64) -> ReliableOptions {
    ReliableOptions {
        retry: RetryPolicy::default()
            .with_backoff(Duration::from_millis(5), Duration::from_millis(20))
            .unwrap()
            .with_max_attempts(3)
            .unwrap()
            .with_jitter(false),
        backlog_max_bytes,
    }
}

fn webhook(address: std::net::SocketAddr) -> Arc<WebhookForwarder> {
    Arc::new(
        WebhookForwarder::new(&format!("http://{address}/logs"))
            .unwrap()
            .with_timeout(Duration::from_secs(5)),
    )
}

/// The backlog files in `dir`.
fn backlog_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn records_sent_while_the_receiver_answers_503_arrive_once_in_order() {
    let (address, receiver) = common::start().await;
    receiver.set_down(true);
    let dir = tempfile::tempdir().unwrap();
    let reliable = Reliable::open(webhook(address), dir.path(), options(1 << 20)).unwrap();

    const N: u64 = 60;
    for first in (0..N).step_by(6) {
        reliable
            .send(&common::numbered(first, 6))
            .await
            .expect("a down destination is not the sender's problem");
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let stats = reliable.stats();
    assert_eq!(stats.backlog_records, N, "{stats:?}");
    assert_eq!(stats.backlog_batches, 10);
    assert_eq!(stats.delivered_records, 0);
    assert!(receiver.accepted().is_empty());
    assert!(!receiver.requests().is_empty(), "the destination was tried");
    let files = backlog_files(dir.path());
    assert_eq!(files.len(), 10, "{files:?}");
    assert!(files[0].ends_with("-6.jsonl"), "{files:?}");
    // The backlog is the records' JSON lines.
    let text = std::fs::read_to_string(dir.path().join(&files[0])).unwrap();
    assert_eq!(text.lines().count(), 6);
    assert_eq!(
        Record::from_json(text.lines().next().unwrap())
            .unwrap()
            .line,
        "line 0"
    );

    // The receiver comes back: new records go out behind the backlog.
    receiver.set_down(false);
    tokio::time::sleep(Duration::from_millis(30)).await;
    reliable.send(&common::numbered(N, 4)).await.unwrap();
    reliable.flush().await.unwrap();

    let numbers = common::numbers_in(&receiver.accepted());
    assert_eq!(
        numbers,
        (0..N + 4).collect::<Vec<_>>(),
        "each once, in order"
    );
    let stats = reliable.stats();
    assert_eq!(stats.delivered_records, N + 4);
    assert_eq!(stats.replayed_records, N);
    assert_eq!((stats.backlog_records, stats.dropped_records), (0, 0));
    assert!(backlog_files(dir.path()).is_empty());
}

#[tokio::test]
async fn a_restart_replays_the_backlog_left_on_disk() {
    let address = common::free_address().await;
    let dir = tempfile::tempdir().unwrap();
    {
        // Nothing listens: connections are refused.
        let reliable = Reliable::open(webhook(address), dir.path(), options(1 << 20)).unwrap();
        for first in [0, 5, 10] {
            reliable.send(&common::numbered(first, 5)).await.unwrap();
        }
        assert_eq!(reliable.stats().backlog_records, 15);
        // A flush keeps its promise (the records are on disk); a replay reports the outage.
        reliable.flush().await.unwrap();
        let error = reliable.replay().await.unwrap_err();
        assert!(error.is_retryable(), "{error:?}");
        assert_eq!(
            reliable.stats().backlog_records,
            15,
            "a failed replay keeps it"
        );
    }
    assert_eq!(backlog_files(dir.path()).len(), 3);

    let receiver = common::start_on(address).await;
    let reliable = Reliable::open(webhook(address), dir.path(), options(1 << 20)).unwrap();
    assert_eq!(reliable.stats().backlog_records, 15, "taken up from disk");
    assert_eq!(reliable.replay().await.unwrap(), 15);
    reliable.send(&common::numbered(15, 2)).await.unwrap();

    let numbers = common::numbers_in(&receiver.accepted());
    assert_eq!(numbers, (0..17).collect::<Vec<_>>());
    assert!(backlog_files(dir.path()).is_empty());
}

#[tokio::test]
async fn past_the_byte_limit_the_oldest_are_dropped_and_counted() {
    let address = common::free_address().await;
    let dir = tempfile::tempdir().unwrap();
    let mut line = Vec::new();
    common::numbered(0, 1)[0].write_json(&mut line);
    let per_record = line.len() as u64 + 1;
    // Room for 4 records.
    let limit = per_record * 4 + per_record / 2;
    {
        let reliable = Reliable::open(webhook(address), dir.path(), options(limit)).unwrap();
        for n in 0..10 {
            reliable.send(&common::numbered(n, 1)).await.unwrap();
        }
        let stats = reliable.stats();
        assert_eq!(stats.dropped_records, 6, "{stats:?}");
        assert_eq!(stats.backlog_records, 4);
        assert!(stats.backlog_bytes <= limit);
    }
    // A smaller limit on restart drops the oldest of what was left.
    let receiver = common::start_on(address).await;
    let reliable = Reliable::open(webhook(address), dir.path(), options(per_record * 3)).unwrap();
    assert_eq!(reliable.stats().dropped_records, 1);
    reliable.flush().await.unwrap();
    assert_eq!(common::numbers_in(&receiver.accepted()), [7, 8, 9]);

    // One batch larger than the whole limit keeps its newest records.
    let down = common::free_address().await;
    let other = tempfile::tempdir().unwrap();
    let reliable = Reliable::open(webhook(down), other.path(), options(limit)).unwrap();
    reliable.send(&common::numbered(0, 2)).await.unwrap();
    reliable.send(&common::numbered(2, 6)).await.unwrap();
    let stats = reliable.stats();
    assert_eq!((stats.dropped_records, stats.backlog_records), (4, 4));
    let files = backlog_files(other.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(other.path().join(&files[0])).unwrap();
    let first = Record::from_json(text.lines().next().unwrap()).unwrap();
    assert_eq!(first.line, "line 4");
}

#[tokio::test]
async fn a_backlogged_batch_refused_for_good_is_dropped_and_the_rest_delivered() {
    let (address, receiver) = common::start().await;
    receiver.set_down(true);
    let dir = tempfile::tempdir().unwrap();
    let reliable = Reliable::open(webhook(address), dir.path(), options(1 << 20)).unwrap();
    for first in [0, 3, 6] {
        reliable.send(&common::numbered(first, 3)).await.unwrap();
    }
    receiver.set_down(false);
    receiver.script(&[400]);
    reliable.flush().await.unwrap();
    assert_eq!(common::numbers_in(&receiver.accepted()), [3, 4, 5, 6, 7, 8]);
    let stats = reliable.stats();
    assert_eq!((stats.rejected_records, stats.delivered_records), (3, 6));
}

#[tokio::test]
async fn a_pipeline_through_a_down_destination_loses_nothing_and_leaks_no_secret() {
    use deploykit_logs::{OtlpForwarder, Pipeline, PipelineConfig, Source, Stream};

    let (address, receiver) = common::start().await;
    receiver.set_down(true);
    let dir = tempfile::tempdir().unwrap();
    let otlp = Arc::new(OtlpForwarder::new(&format!("http://{address}")).unwrap());
    let reliable = Arc::new(Reliable::open(otlp, dir.path(), options(1 << 20)).unwrap());
    let config = PipelineConfig::from_toml_str(
        r#"
        batch_max_records = 7

        [[stages]]
        type = "parse_json"
        "#,
    )
    .unwrap();
    let pipeline = Pipeline::start(&config, ["hunter2"], reliable.clone()).unwrap();
    let input = pipeline.input();
    let source = Source::new("api", "production", "r42", "api-1");
    const N: usize = 200;
    for n in 0..N {
        let line = format!(r#"{{"level":"info","msg":"request {n}","password":"hunter2"}}"#);
        input
            .send(Record::new(source.clone(), Stream::Stdout, n as i64, line))
            .await
            .unwrap();
        if n == N / 2 {
            // Let the first half reach the backlog while the destination is down.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while reliable.stats().backlog_records == 0 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "nothing reached the backlog"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let backlog: Vec<u8> = backlog_files(dir.path())
                .iter()
                .flat_map(|name| std::fs::read(dir.path().join(name)).unwrap())
                .collect();
            assert!(!backlog.is_empty(), "the first records are on disk");
            assert!(
                !backlog.windows(7).any(|window| window == b"hunter2"),
                "no secret in the backlog"
            );
            receiver.set_down(false);
        }
    }
    drop(input);
    let stats = pipeline.close().await.unwrap();
    assert_eq!(stats.records_out, N as u64);

    let mut bodies = Vec::new();
    for request in receiver.accepted() {
        assert!(
            !request.body.windows(7).any(|window| window == b"hunter2"),
            "no secret reaches the collector"
        );
        let body = request.json();
        for record in body["resourceLogs"][0]["scopeLogs"][0]["logRecords"]
            .as_array()
            .unwrap()
        {
            bodies.push(record["body"]["stringValue"].as_str().unwrap().to_string());
        }
    }
    let expected: Vec<String> = (0..N).map(|n| format!("request {n}")).collect();
    assert_eq!(bodies, expected, "every record once, in order");
    assert!(reliable.stats().replayed_records > 0);
    assert!(backlog_files(dir.path()).is_empty());
}
