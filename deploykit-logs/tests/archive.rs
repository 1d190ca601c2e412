//! Archiving into a backup repository on a local directory and searching the archive back:
//! by environment, service, time range and the pipeline's filters; the objects on disk hold
//! no plaintext of the lines.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use deploykit_backup::{LocalTarget, RepoKey, RepoOptions, Repository};
use deploykit_logs::{
    ArchiveForwarder, ArchiveOptions, ArchiveQuery, FilterConfig, Forwarder, Level, Record, Source,
    Stream, search_archive,
};

/// 2023-11-14T22:13:20Z.
const DAY1: i64 = 1_700_000_000_000_000_000;
/// The next day.
const DAY2: i64 = DAY1 + 86_400_000_000_000;
const SECRET_LINE: &str = "payment declined for order 4242 by issuer";

async fn repository(dir: &Path) -> Repository {
    let options = RepoOptions::builder()
        .chunk_min(1024)
        .chunk_avg(4096)
        .chunk_max(16384)
        .pack_size(64 * 1024)
        .kdf_cost((1024, 1))
        .build();
    let target = Arc::new(LocalTarget::new(dir).unwrap());
    Repository::init(target, &RepoKey::passphrase("pw"), options)
        .await
        .unwrap()
}

fn record(source: &Arc<Source>, ts: i64, level: Level, line: &str) -> Record {
    let mut record = Record::new(source.clone(), Stream::Stdout, ts, line);
    record.level = Some(level);
    record.fields_mut().insert("ts_offset", (ts - DAY1).into());
    record
}

/// Every file under `dir`.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn archived_records_are_searched_back_by_time_and_level() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repository(dir.path()).await;
    let archive = ArchiveForwarder::new(repo.clone(), ArchiveOptions::default());

    let api = Source::new("api", "production", "r42", "api-1");
    let api_staging = Source::new("api", "staging", "r42", "api-s1");
    let worker = Source::new("worker", "production", "r7", "worker-1");
    let first = [
        record(&api, DAY1, Level::Info, "started"),
        record(&api, DAY1 + 1_000, Level::Error, SECRET_LINE),
        record(&worker, DAY1 + 2_000, Level::Error, "queue stuck"),
        record(&api_staging, DAY1 + 3_000, Level::Error, "staging only"),
    ];
    let second = [
        record(&api, DAY1 + 5_000, Level::Warn, "slow request"),
        record(&api, DAY2 + 10, Level::Fatal, "out of memory"),
        record(&api, DAY2 + 20, Level::Info, "restarted"),
    ];
    archive.send(&first).await.unwrap();
    archive.send(&second).await.unwrap();
    assert_eq!(archive.objects_written(), 0, "accumulated until flushed");
    archive.flush().await.unwrap();
    // api/production day 1 and day 2, worker/production, api/staging.
    assert_eq!(archive.objects_written(), 4);

    let names = repo.list_named("logs/production/api/").await.unwrap();
    assert_eq!(
        names,
        [
            format!("logs/production/api/2023-11-14/{DAY1:020}-0.jsonl"),
            format!("logs/production/api/2023-11-15/{:020}-3.jsonl", DAY2 + 10),
        ]
    );

    // Everything of api in production, in order.
    let all = search_archive(&repo, &ArchiveQuery::new("production", "api"))
        .await
        .unwrap();
    assert_eq!(all.objects(), 2);
    let lines: Vec<String> = all
        .collect()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.line)
        .collect();
    assert_eq!(
        lines,
        [
            "started",
            SECRET_LINE,
            "slow request",
            "out of memory",
            "restarted"
        ]
    );

    // A time range within day 1, and errors or worse.
    let query = ArchiveQuery::new("production", "api")
        .since_ns(DAY1 + 1)
        .until_ns(DAY1 + 6_000)
        .filter(FilterConfig {
            min_level: Some(Level::Warn),
            ..FilterConfig::default()
        });
    let mut search = search_archive(&repo, &query).await.unwrap();
    assert_eq!(search.objects(), 1, "day 2 is not read");
    let mut found = Vec::new();
    while let Some(mut record) = search.next().await.unwrap() {
        assert_eq!(record.source.instance, "api-1");
        assert!(record.field("ts_offset").is_some());
        found.push((record.timestamp_ns, record.level, record.line));
    }
    assert_eq!(
        found,
        [
            (DAY1 + 1_000, Some(Level::Error), SECRET_LINE.to_string()),
            (DAY1 + 5_000, Some(Level::Warn), "slow request".to_string()),
        ]
    );

    // Day 2 only, a filter on the line.
    let query = ArchiveQuery::new("production", "api")
        .since_ns(DAY2)
        .filter(FilterConfig {
            line_matches: Some("memory".into()),
            ..FilterConfig::default()
        });
    let records = search_archive(&repo, &query)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].level, Some(Level::Fatal));

    // Another environment, another service.
    let staging = search_archive(&repo, &ArchiveQuery::new("staging", "api"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(staging.len(), 1);
    assert_eq!(staging[0].line, "staging only");
    let none = search_archive(&repo, &ArchiveQuery::new("production", "billing"))
        .await
        .unwrap();
    assert_eq!(none.objects(), 0);

    // The target holds no plaintext of the lines.
    let stored = files(dir.path());
    assert!(stored.len() > 4, "{stored:?}");
    for path in stored {
        let bytes = std::fs::read(&path).unwrap();
        for needle in [SECRET_LINE, "queue stuck", "slow request"] {
            assert!(
                !bytes
                    .windows(needle.len())
                    .any(|window| window == needle.as_bytes()),
                "{} holds {needle:?} in plaintext",
                path.display()
            );
        }
    }

    // An invalid filter names itself.
    let bad = ArchiveQuery::new("production", "api").filter(FilterConfig {
        line_matches: Some("(".into()),
        ..FilterConfig::default()
    });
    let error = search_archive(&repo, &bad).await.unwrap_err();
    assert!(
        error.to_string().contains("logs.archive.filters[0]"),
        "{error}"
    );
}

#[tokio::test]
async fn batches_are_written_at_the_size_bound_and_a_restart_does_not_collide() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repository(dir.path()).await;
    let source = Source::new("api", "production", "r1", "api-1");
    let options = ArchiveOptions {
        max_object_bytes: 0,
        max_age: Duration::from_secs(3600),
    };
    let archive = ArchiveForwarder::new(repo.clone(), options);
    archive
        .send(&[record(&source, DAY1, Level::Info, "one")])
        .await
        .unwrap();
    assert_eq!(archive.objects_written(), 1, "written at once");
    drop(archive);

    // A new forwarder (sequence from 0 again) with other content at the same time.
    let archive = ArchiveForwarder::new(repo.clone(), options);
    archive
        .send(&[record(&source, DAY1, Level::Info, "two")])
        .await
        .unwrap();
    // Resending the same content is idempotent (no duplicate object).
    let again = ArchiveForwarder::new(repo.clone(), options);
    again
        .send(&[record(&source, DAY1, Level::Info, "one")])
        .await
        .unwrap();
    let names = repo.list_named("logs/").await.unwrap();
    assert_eq!(names.len(), 2, "{names:?}");
    let lines: Vec<String> = search_archive(&repo, &ArchiveQuery::new("production", "api"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.line)
        .collect();
    assert_eq!(lines, ["one", "two"]);
}
