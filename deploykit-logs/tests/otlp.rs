//! The OTLP/HTTP forwarder against a real HTTP receiver on loopback: the JSON encoding,
//! headers, and what is retried.

mod common;

use std::sync::Arc;
use std::time::Duration;

use deploykit_core::retry::RetryPolicy;
use deploykit_logs::{
    Forwarder, Level, OtlpForwarder, Record, Reliable, ReliableOptions, Source, Stream, parse_json,
};
use serde_json::Value;

fn policy() -> RetryPolicy {
    RetryPolicy::default()
        .with_backoff(Duration::from_millis(10), Duration::from_millis(40))
        .unwrap()
        .with_max_attempts(4)
        .unwrap()
        .with_jitter(false)
}

/// The attribute `key` of an OTLP attribute list.
fn attribute<'a>(attributes: &'a Value, key: &str) -> &'a Value {
    attributes
        .as_array()
        .expect("an attribute list")
        .iter()
        .find(|kv| kv["key"] == key)
        .map(|kv| &kv["value"])
        .unwrap_or_else(|| panic!("no attribute {key} in {attributes}"))
}

#[tokio::test]
async fn a_batch_arrives_as_otlp_json_grouped_by_source() {
    let (address, receiver) = common::start().await;
    let forwarder = OtlpForwarder::new(&format!("http://{address}/"))
        .unwrap()
        .with_header("authorization", "Bearer t0ken")
        .unwrap();
    assert_eq!(forwarder.url(), format!("http://{address}/v1/logs"));

    let api = Source::new("api", "production", "r42", "api-1");
    let worker = Source::new("worker", "production", "r7", "worker-3");
    let mut structured = Record::new(
        api.clone(),
        Stream::Stderr,
        1_700_000_000_123_456_789,
        r#"{"level":"error","msg":"payment failed","order":4242,"ratio":0.5,"retry":true,"ctx":{"user":"u1"},"gone":null}"#,
    );
    parse_json(&mut structured);
    assert_eq!(structured.level, Some(Level::Error));
    let plain = Record::new(
        worker.clone(),
        Stream::Stdout,
        1_700_000_001_000_000_000,
        "started",
    );
    let mut warn = Record::new(
        api.clone(),
        Stream::Stdout,
        1_700_000_002_000_000_000,
        "slow",
    );
    warn.level = Some(Level::Warn);

    forwarder
        .send(&[structured, plain, warn])
        .await
        .expect("the receiver takes the batch");

    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.request_line, "POST /v1/logs HTTP/1.1");
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("authorization"), Some("Bearer t0ken"));

    let body = request.json();
    let resource_logs = body["resourceLogs"].as_array().unwrap();
    assert_eq!(
        resource_logs.len(),
        2,
        "one resourceLogs per source: {body}"
    );

    let first = &resource_logs[0];
    let resource = &first["resource"]["attributes"];
    assert_eq!(attribute(resource, "service.name")["stringValue"], "api");
    assert_eq!(
        attribute(resource, "deployment.environment")["stringValue"],
        "production"
    );
    assert_eq!(attribute(resource, "service.version")["stringValue"], "r42");
    assert_eq!(
        attribute(resource, "service.instance.id")["stringValue"],
        "api-1"
    );
    let scope_logs = &first["scopeLogs"][0];
    assert_eq!(scope_logs["scope"]["name"], "deploykit-logs");
    let records = scope_logs["logRecords"].as_array().unwrap();
    assert_eq!(records.len(), 2, "both api records, in order");

    let error = &records[0];
    assert_eq!(error["timeUnixNano"], "1700000000123456789");
    assert!(error["observedTimeUnixNano"].is_string());
    assert_eq!(error["severityNumber"], 17);
    assert_eq!(error["severityText"], "ERROR");
    assert_eq!(error["body"]["stringValue"], "payment failed");
    let attributes = &error["attributes"];
    assert_eq!(attribute(attributes, "order")["intValue"], "4242");
    assert_eq!(attribute(attributes, "ratio")["doubleValue"], 0.5);
    assert_eq!(attribute(attributes, "retry")["boolValue"], true);
    assert_eq!(attribute(attributes, "level")["stringValue"], "error");
    assert_eq!(
        attribute(attributes, "ctx")["stringValue"],
        r#"{"user":"u1"}"#
    );
    assert_eq!(
        attribute(attributes, "log.iostream")["stringValue"],
        "stderr"
    );
    let keys: Vec<&str> = attributes
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| kv["key"].as_str().unwrap())
        .collect();
    assert!(!keys.contains(&"msg"), "the body is not repeated: {keys:?}");
    assert!(!keys.contains(&"gone"), "nulls are left out: {keys:?}");

    assert_eq!(records[1]["severityNumber"], 13);
    assert_eq!(records[1]["body"]["stringValue"], "slow");

    let second = &resource_logs[1];
    assert_eq!(
        attribute(&second["resource"]["attributes"], "service.name")["stringValue"],
        "worker"
    );
    let plain = &second["scopeLogs"][0]["logRecords"][0];
    assert_eq!(plain["body"]["stringValue"], "started");
    assert!(
        plain.get("severityNumber").is_none(),
        "no level, no severity"
    );
    assert_eq!(
        attribute(&plain["attributes"], "log.iostream")["stringValue"],
        "stdout"
    );
}

#[tokio::test]
async fn severity_numbers_follow_the_otlp_ranges() {
    let source = Source::new("api", "production", "r1", "api-1");
    let levels = [
        (Level::Trace, 1),
        (Level::Debug, 5),
        (Level::Info, 9),
        (Level::Warn, 13),
        (Level::Error, 17),
        (Level::Fatal, 21),
    ];
    let batch: Vec<Record> = levels
        .iter()
        .map(|(level, _)| {
            let mut record = Record::new(source.clone(), Stream::Stdout, 1, "x");
            record.level = Some(*level);
            record
        })
        .collect();
    let body: Value = serde_json::from_slice(&OtlpForwarder::encode(&batch, 5)).unwrap();
    let records = &body["resourceLogs"][0]["scopeLogs"][0]["logRecords"];
    for (index, (_, number)) in levels.iter().enumerate() {
        assert_eq!(records[index]["severityNumber"], *number);
        assert_eq!(records[index]["observedTimeUnixNano"], "5");
    }
}

#[tokio::test]
async fn a_500_is_retried_and_the_batch_delivered_once() {
    let (address, receiver) = common::start().await;
    receiver.script(&[500]);
    let otlp = Arc::new(OtlpForwarder::new(&format!("http://{address}")).unwrap());

    // Alone, one attempt: a 500 is a transient error naming the status and the URL.
    let error = otlp.send(&common::numbered(0, 2)).await.unwrap_err();
    assert!(error.is_retryable(), "{error:?}");
    let message = error.chain();
    assert!(message.contains("500"), "{message}");
    assert!(
        message.contains(&format!("http://{address}/v1/logs")),
        "{message}"
    );

    receiver.script(&[500]);
    let dir = tempfile::tempdir().unwrap();
    let reliable = Reliable::open(
        otlp,
        dir.path(),
        ReliableOptions {
            retry: policy(),
            ..ReliableOptions::default()
        },
    )
    .unwrap();
    reliable.send(&common::numbered(10, 3)).await.unwrap();

    let requests = receiver.requests();
    let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [500, 500, 200], "the first send, then one retry");
    let bodies = |request: &common::Received| -> Vec<String> {
        request.json()["resourceLogs"][0]["scopeLogs"][0]["logRecords"]
            .as_array()
            .unwrap()
            .iter()
            .map(|record| record["body"]["stringValue"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(bodies(&requests[2]), ["line 10", "line 11", "line 12"]);
    assert_eq!(
        bodies(&requests[1]),
        bodies(&requests[2]),
        "the same batch again"
    );
    let stats = reliable.stats();
    assert_eq!(stats.delivered_records, 3);
    assert_eq!(stats.backlog_records, 0);
    reliable.flush().await.unwrap();
    assert_eq!(receiver.requests().len(), 3, "nothing more to deliver");
}

#[tokio::test]
async fn a_400_is_not_retried() {
    let (address, receiver) = common::start().await;
    receiver.script(&[400]);
    let dir = tempfile::tempdir().unwrap();
    let otlp = Arc::new(OtlpForwarder::new(&format!("http://{address}")).unwrap());
    let reliable = Reliable::open(
        otlp,
        dir.path(),
        ReliableOptions {
            retry: policy(),
            ..ReliableOptions::default()
        },
    )
    .unwrap();

    let error = reliable.send(&common::numbered(0, 4)).await.unwrap_err();
    assert!(!error.is_retryable(), "{error:?}");
    let message = error.chain();
    assert!(message.contains("400"), "{message}");
    assert!(message.contains("not retryable"), "{message}");
    assert!(
        message.contains(&format!("http://{address}/v1/logs")),
        "{message}"
    );
    assert_eq!(receiver.requests().len(), 1, "one attempt only");
    let stats = reliable.stats();
    assert_eq!((stats.rejected_records, stats.backlog_records), (4, 0));
}

#[test]
fn endpoints_and_headers_are_checked() {
    let error = OtlpForwarder::new("https://collector:4318").unwrap_err();
    assert!(
        error.to_string().contains("logs.forward.otlp.endpoint"),
        "{error}"
    );
    assert!(OtlpForwarder::new("not a url").is_err());
    let error = OtlpForwarder::new("http://collector:4318")
        .unwrap()
        .with_header("bad header", "x")
        .unwrap_err();
    assert!(
        error.to_string().contains("logs.forward.otlp.headers"),
        "{error}"
    );
}
