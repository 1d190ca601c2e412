//! Log retention and rotation by age: old files leave the hot store, into an archive first
//! when there is one, and are deleted only once it confirmed them (Unix only).

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use deploykit_core::{Error, Result};
use deploykit_local::logs::{InstanceLog, LogOwner, LogPolicy, apply_retention};
use deploykit_logs::{Forwarder, Record};

/// An archive that keeps what it is sent, or refuses while `down`.
#[derive(Default)]
struct Archive {
    records: Mutex<Vec<Record>>,
    down: AtomicBool,
}

#[async_trait]
impl Forwarder for Archive {
    fn name(&self) -> &str {
        "test-archive"
    }

    async fn send(&self, batch: &[Record]) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::backend("test archive", "down"));
        }
        self.records.lock().unwrap().extend_from_slice(batch);
        Ok(())
    }
}

const DAY: Duration = Duration::from_secs(86_400);

fn write(path: &Path, lines: &[&str], age: Duration) {
    let text: String = lines
        .iter()
        .map(|l| format!("2026-12-01T00:00:00.000000001Z stdout F {l}\n"))
        .collect();
    std::fs::write(path, text).unwrap();
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - age).unwrap();
}

fn owned(dir: &Path, instance: &str, revision: &str) -> InstanceLog {
    let log = InstanceLog::open(dir, instance, LogPolicy::default()).unwrap();
    log.set_owner(&LogOwner {
        service: "web".into(),
        revision: revision.into(),
    })
    .unwrap();
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_files_go_to_the_archive_then_away_and_only_then() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    // A running instance: two old rotated files, one recent, a fresh current file.
    let running = owned(dir, "web-a", "r1");
    let _capture = running.capture().unwrap();
    write(&running.rotated_path(3), &["a1", "a2"], 10 * DAY);
    write(&running.rotated_path(2), &["a3"], 8 * DAY);
    write(&running.rotated_path(1), &["a4"], DAY);
    write(running.path(), &["a5"], Duration::ZERO);
    // An instance long gone: its whole log is old and nobody captures it.
    let gone = owned(dir, "web-b", "r0");
    write(gone.path(), &["b1"], 30 * DAY);

    let archive = Archive::default();
    archive.down.store(true, Ordering::SeqCst);
    let policy = LogPolicy::default();
    let now = SystemTime::now();
    let refused = apply_retention(dir, &policy, "prod", 7 * DAY, now, Some(&archive)).await;
    assert!(refused.is_err(), "an archive that is down is an error");
    assert!(
        running.rotated_path(3).exists() && gone.path().exists(),
        "nothing is deleted that the archive did not confirm"
    );

    archive.down.store(false, Ordering::SeqCst);
    let report = apply_retention(dir, &policy, "prod", 7 * DAY, now, Some(&archive))
        .await
        .unwrap();
    assert_eq!(
        (
            report.files_archived,
            report.records_archived,
            report.files_deleted
        ),
        (3, 4, 3)
    );
    let archived: Vec<(String, String, String)> = archive
        .records
        .lock()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.source.instance.clone(),
                r.source.revision.clone(),
                r.line.clone(),
            )
        })
        .collect();
    let expect = |i: &str, r: &str, l: &str| (i.to_string(), r.to_string(), l.to_string());
    assert_eq!(
        archived,
        vec![
            expect("web-a", "r1", "a1"),
            expect("web-a", "r1", "a2"),
            expect("web-a", "r1", "a3"),
            expect("web-b", "r0", "b1"),
        ]
    );
    assert!(
        archive
            .records
            .lock()
            .unwrap()
            .iter()
            .all(|r| r.source.environment == "prod")
    );
    assert!(!running.rotated_path(3).exists() && !running.rotated_path(2).exists());
    assert!(
        running.rotated_path(1).exists() && running.path().exists(),
        "recent files stay"
    );
    assert!(!gone.path().exists() && !gone.pipe_path(deploykit_logs::Stream::Stdout).exists());
    assert!(
        !dir.join("web-b.owner").exists(),
        "a retired log is gone entirely"
    );

    // Without an archive, old files are simply deleted; a second pass finds nothing.
    write(&running.rotated_path(2), &["a6"], 9 * DAY);
    let report = apply_retention(dir, &policy, "prod", 7 * DAY, now, None)
        .await
        .unwrap();
    assert_eq!((report.files_archived, report.files_deleted), (0, 1));
    let again = apply_retention(dir, &policy, "prod", 7 * DAY, now, None)
        .await
        .unwrap();
    assert_eq!(again.files_deleted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_to_for_longer_than_max_age_is_rotated() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let policy = LogPolicy {
        max_age: Some(Duration::from_millis(300)),
        ..LogPolicy::default()
    };
    let log = InstanceLog::open(dir.path(), "web-a", policy).unwrap();
    let _capture = log.capture().unwrap();
    let (mut out, _) = log.stdio().unwrap();
    out.write_all(b"first\n").unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!log.rotated_path(1).exists(), "not old enough yet");
    tokio::time::sleep(Duration::from_millis(300)).await;
    out.write_all(b"second\n").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !log.rotated_path(1).exists() {
        assert!(std::time::Instant::now() < deadline, "never rotated by age");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rotated = std::fs::read_to_string(log.rotated_path(1)).unwrap();
    assert!(
        rotated.contains("first") && rotated.contains("second"),
        "{rotated}"
    );
}
