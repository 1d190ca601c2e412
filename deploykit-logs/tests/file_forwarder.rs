//! The file forwarder: JSON lines, rotated by size while records flow, nothing lost or
//! duplicated.

use std::collections::BTreeSet;
use std::sync::Arc;

use deploykit_logs::{FileForwarder, Forwarder, Pipeline, PipelineConfig, Record, Source, Stream};

fn read_all(forwarder: &FileForwarder) -> Vec<serde_json::Value> {
    let mut values = Vec::new();
    for file in forwarder.files().unwrap() {
        let text = std::fs::read_to_string(&file).unwrap();
        for line in text.lines() {
            values.push(serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")));
        }
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_while_records_flow_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let max_bytes = 16 * 1024;
    let forwarder = Arc::new(FileForwarder::create(dir.path(), "api", max_bytes).unwrap());
    let config = PipelineConfig::from_toml_str(
        "batch_max_records = 37\n[[stages]]\ntype = \"parse_json\"\n",
    )
    .unwrap();
    let pipeline = Pipeline::start(&config, ["s3cret-value"], forwarder.clone()).unwrap();
    let per_producer = 5_000;
    let mut producers = Vec::new();
    for producer in 0..3 {
        let input = pipeline.input();
        producers.push(tokio::spawn(async move {
            let source = Source::new("api", "prod", "r7", format!("api-{producer}"));
            for index in 0..per_producer {
                let line = format!(
                    r#"{{"level":"info","producer":{producer},"seq":{index},"note":"token s3cret-value"}}"#
                );
                input
                    .send(Record::new(Arc::clone(&source), Stream::Stdout, index, line))
                    .await
                    .unwrap();
            }
        }));
    }
    for producer in producers {
        producer.await.unwrap();
    }
    let stats = pipeline.close().await.unwrap();
    assert_eq!(stats.records_out, 3 * per_producer as u64);

    let files = forwarder.files().unwrap();
    assert!(files.len() > 10, "rotated {} times", files.len() - 1);
    for file in &files {
        let size = std::fs::metadata(file).unwrap().len();
        assert!(size <= max_bytes, "{} is {size} bytes", file.display());
        let text = std::fs::read_to_string(file).unwrap();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "no partial line in {}",
            file.display()
        );
        assert!(!text.contains("s3cret-value"));
    }
    let mut seen = BTreeSet::new();
    let mut per_producer_order = [-1i64; 3];
    for value in read_all(&forwarder) {
        let producer = value["fields"]["producer"].as_u64().unwrap() as usize;
        let seq = value["fields"]["seq"].as_i64().unwrap();
        assert!(seen.insert((producer, seq)), "duplicate {producer}/{seq}");
        assert!(
            seq > per_producer_order[producer],
            "order kept per producer"
        );
        per_producer_order[producer] = seq;
        assert_eq!(value["instance"], format!("api-{producer}"));
        assert_eq!(value["revision"], "r7");
    }
    assert_eq!(
        seen.len(),
        3 * per_producer as usize,
        "every line in exactly one file"
    );
}

#[tokio::test]
async fn reopening_continues_after_the_last_rotated_file() {
    let dir = tempfile::tempdir().unwrap();
    let source = Source::new("api", "prod", "r1", "api-1");
    let batch: Vec<Record> = (0..50)
        .map(|index| {
            Record::new(
                Arc::clone(&source),
                Stream::Stderr,
                index,
                format!("line {index}"),
            )
        })
        .collect();
    {
        let forwarder = FileForwarder::create(dir.path(), "api", 1024).unwrap();
        forwarder.send(&batch).await.unwrap();
        forwarder.flush().await.unwrap();
    }
    let forwarder = FileForwarder::create(dir.path(), "api", 1024).unwrap();
    let before = forwarder.files().unwrap().len();
    forwarder.send(&batch).await.unwrap();
    let values = read_all(&forwarder);
    assert_eq!(values.len(), 100);
    assert!(forwarder.files().unwrap().len() > before);
    assert_eq!(values[0]["line"], "line 0");
    assert_eq!(values[0]["stream"], "stderr");
    assert_eq!(values[99]["line"], "line 49");
    assert!(FileForwarder::create(dir.path(), "../x", 10).is_err());
}

#[tokio::test]
async fn a_line_longer_than_the_bound_gets_a_file_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let forwarder = FileForwarder::create(dir.path(), "big", 100).unwrap();
    let source = Source::new("api", "prod", "r1", "api-1");
    let batch = vec![
        Record::new(Arc::clone(&source), Stream::Stdout, 0, "short"),
        Record::new(Arc::clone(&source), Stream::Stdout, 1, "x".repeat(500)),
        Record::new(Arc::clone(&source), Stream::Stdout, 2, "after"),
    ];
    forwarder.send(&batch).await.unwrap();
    assert_eq!(forwarder.files().unwrap().len(), 3);
    assert_eq!(read_all(&forwarder).len(), 3);
}
