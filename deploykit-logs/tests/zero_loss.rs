//! The whole path under load: a real process writes 50,000 lines a second; its supervisor
//! captures them into files rotated every 256 KiB; a shipper follows the files into a
//! pipeline whose OTLP/HTTP collector is down for the first seconds (records wait in the
//! disk backlog) and then comes back. Every line reaches the collector exactly once, in order.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use deploykit_local::LocalLogs;
use deploykit_local::logs::{InstanceLog, LogOwner, LogPolicy};
use deploykit_local::process::{ProcessSpec, ProcessState, RestartPolicy, Supervised};
use deploykit_logs::{
    LogSelector, LogShipper, OtlpForwarder, Pipeline, PipelineConfig, Reliable, ReliableOptions,
};

const TOTAL: usize = 200_000;

/// The numbers of the `line N` records the collector accepted, in arrival order.
fn received(receiver: &common::Receiver) -> Vec<usize> {
    let mut numbers = Vec::new();
    for request in receiver.accepted() {
        let body = request.json();
        for resource in body["resourceLogs"].as_array().into_iter().flatten() {
            for scope in resource["scopeLogs"].as_array().into_iter().flatten() {
                for record in scope["logRecords"].as_array().into_iter().flatten() {
                    let text = record["body"]["stringValue"].as_str().unwrap_or_default();
                    let number = text
                        .strip_prefix("line ")
                        .and_then(|n| n.parse().ok())
                        .unwrap_or_else(|| panic!("unexpected record {record}"));
                    numbers.push(number);
                }
            }
        }
    }
    numbers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_lines_a_second_through_rotations_and_an_outage_lose_nothing() {
    let (address, receiver) = common::start().await;
    receiver.set_down(true);
    let dir = tempfile::tempdir().unwrap();
    let logs_dir = dir.path().join("logs");
    let policy = LogPolicy {
        max_bytes: 256 * 1024,
        keep: 10_000,
        ..LogPolicy::default()
    };
    let log = InstanceLog::open(&logs_dir, "producer-0", policy.clone()).unwrap();
    log.set_owner(&LogOwner {
        service: "load".into(),
        revision: "r1".into(),
    })
    .unwrap();

    // The collector path: pipeline → Reliable (retries, disk backlog) → OTLP/HTTP.
    let otlp = Arc::new(OtlpForwarder::new(&format!("http://{address}")).unwrap());
    let options = ReliableOptions {
        retry: deploykit_core::retry::RetryPolicy::none(),
        backlog_max_bytes: 1 << 30,
    };
    let reliable = Arc::new(Reliable::open(otlp, dir.path().join("backlog"), options).unwrap());
    let config = PipelineConfig::from_toml_str("batch_max_records = 1000").unwrap();
    let pipeline = Pipeline::start(&config, ["unused-secret"], reliable.clone()).unwrap();
    let source = Arc::new(LocalLogs::new(&logs_dir, policy, "prod"));
    let shipper = LogShipper::start(source, vec![LogSelector::service("load")], pipeline.input());

    // Bursts of 1,000 lines 12 ms apart: about 50,000 lines a second.
    let script = format!(
        "awk 'BEGIN {{ for (i = 0; i < {TOTAL}; i++) {{ printf \"line %d\\n\", i; \
         if (i % 1000 == 999) {{ fflush(); system(\"sleep 0.012\") }} }} fflush() }}'; \
         touch done; exec sleep 1000"
    );
    let spec = ProcessSpec {
        name: "producer-0".into(),
        program: "sh".into(),
        args: vec!["-c".into(), script],
        env: Default::default(),
        cwd: Some(dir.path().to_path_buf()),
        log,
    };
    let started = Instant::now();
    let producer = Supervised::spawn(spec, RestartPolicy::default());
    assert!(
        !matches!(producer.state(), ProcessState::Failed { .. }),
        "{:?}",
        producer.state()
    );

    // Down for the first two seconds: records pile up in the backlog.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let backlogged = reliable.stats().backlog_records;
    receiver.set_down(false);

    let deadline = Instant::now() + Duration::from_secs(120);
    while !dir.path().join("done").exists() || shipper.shipped() < TOTAL as u64 {
        assert!(
            Instant::now() < deadline,
            "shipped {} of {TOTAL}",
            shipper.shipped()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let produced_in = started.elapsed();
    assert_eq!(shipper.stop().await.unwrap(), TOTAL as u64);
    let stats = pipeline.close().await.unwrap();
    producer.stop(Duration::from_secs(5)).await;

    let numbers = received(&receiver);
    let lost = TOTAL
        - numbers
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len();
    let duplicated = numbers.len() - (TOTAL - lost);
    assert_eq!((lost, duplicated), (0, 0), "lost, duplicated");
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "records arrive in order"
    );
    assert!(backlogged > 0, "the outage put records in the disk backlog");
    let rotations = std::fs::read_dir(&logs_dir)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with("producer-0.log.")
        })
        .count();
    assert!(rotations >= 20, "rotated {rotations} times");
    println!(
        "{TOTAL} lines in {:.1} s ({:.0} lines/s) through {rotations} rotations and a 2 s \
         collector outage ({backlogged} records in the disk backlog at its end): {} \
         delivered, 0 lost, 0 duplicated; pipeline {stats:?}",
        produced_in.as_secs_f64(),
        TOTAL as f64 / produced_in.as_secs_f64(),
        numbers.len()
    );
}
