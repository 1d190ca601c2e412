//! Instance output captured by the supervisor through named pipes, against real processes:
//! nothing is lost to rotation or to a change of supervisor, and the local environment is a
//! conforming log source (Unix only).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deploykit_core::Result;
use deploykit_local::logs::{InstanceLog, LogOwner, LogPolicy, LogReader};
use deploykit_local::process::{ProcessSpec, RestartPolicy, Supervised};
use deploykit_local::{LocalEnvironment, LocalOptions};
use deploykit_logs::{LogSource, Record, Source, Stream};
use deploykit_testing::conformance::log_source::{LogWorld, log_source};

const PATIENCE: Duration = Duration::from_secs(60);

fn sh(dir: &Path, log: InstanceLog, script: &str) -> ProcessSpec {
    ProcessSpec {
        name: log.instance().to_string(),
        program: "sh".to_string(),
        args: vec!["-c".to_string(), script.to_string()],
        env: BTreeMap::new(),
        cwd: Some(dir.to_path_buf()),
        log,
    }
}

async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn source() -> std::sync::Arc<Source> {
    Source::new("svc", "local", "r1", "producer")
}

/// Lines `line <i>` with `i` from 0, each exactly once and in order.
fn check_sequence(records: &[Record], total: usize, what: &str) {
    let mut expected = 0usize;
    for record in records {
        let number: usize = record
            .line
            .strip_prefix("line ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{what}: unexpected record {:?}", record.line));
        assert_eq!(
            number,
            expected,
            "{what}: after line {} came line {number} (lost or duplicated lines)",
            expected.wrapping_sub(1)
        );
        expected += 1;
    }
    assert_eq!(expected, total, "{what}: {expected} of {total} lines");
}

/// 50,000 lines a second for four seconds into a log rotated every 256 KiB, while the
/// supervisor goes away mid-stream and another adopts the process; a reader follows the file
/// all along. Every line arrives exactly once and in order, in the files and at the reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_line_is_lost_to_rotation_or_to_a_change_of_supervisor() {
    const TOTAL: usize = 200_000;
    let dir = tempfile::tempdir().unwrap();
    let policy = LogPolicy {
        max_bytes: 256 * 1024,
        keep: 10_000,
        ..LogPolicy::default()
    };
    let log = InstanceLog::open(&dir.path().join("logs"), "producer", policy.clone()).unwrap();
    // Bursts of 1,000 lines 12 ms apart (with the cost of `sleep`, about 50,000 lines a
    // second).
    let script = format!(
        "awk 'BEGIN {{ for (i = 0; i < {TOTAL}; i++) {{ printf \"line %d\\n\", i; \
         if (i % 1000 == 999) {{ fflush(); system(\"sleep 0.012\") }} }} fflush() }}'; \
         touch done; exec sleep 1000"
    );
    let spec = sh(dir.path(), log.clone(), &script);
    let first = Supervised::spawn(spec.clone(), RestartPolicy::default());
    let pid = eventually("the producer to start", || match first.state() {
        deploykit_local::process::ProcessState::Running { pid } => Some(pid),
        _ => None,
    })
    .await;

    // A follower from the start.
    let (mut reader, mut followed) = LogReader::open(log.clone(), source()).unwrap();
    let follow = async {
        let deadline = Instant::now() + PATIENCE;
        while followed.len() < TOTAL && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            followed.extend(reader.poll().unwrap());
        }
        followed
    };
    let change = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // The first supervisor goes away (as if its process died); the producer runs on,
        // filling its pipe; a second supervisor adopts it.
        first.detach();
        drop(first);
        tokio::time::sleep(Duration::from_millis(300)).await;
        Supervised::adopt(spec.clone(), RestartPolicy::default(), pid)
    };
    let (followed, second) = tokio::join!(follow, change);
    check_sequence(&followed, TOTAL, "the follower");
    eventually("the producer to finish", || {
        dir.path().join("done").exists().then_some(())
    })
    .await;
    let (_, kept) = LogReader::open(log.clone(), source()).unwrap();
    check_sequence(&kept, TOTAL, "the files");
    let rotated = std::fs::read_dir(dir.path().join("logs"))
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with("producer.log.")
        })
        .count();
    assert!(rotated >= 20, "the log was rotated {rotated} times");
    assert!(kept.iter().all(|r| r.stream == Stream::Stdout));
    assert!(
        kept.windows(2)
            .all(|w| w[0].timestamp_ns <= w[1].timestamp_ns)
    );
    // The producer's rate as the supervisors saw it (the pause while nobody read included).
    let span = (kept[TOTAL - 1].timestamp_ns - kept[0].timestamp_ns) as f64 / 1e9;
    let rate = TOTAL as f64 / span;
    println!(
        "{TOTAL} lines at {rate:.0} lines/s through {rotated} rotations and a change of \
         supervisor: 0 lost, 0 duplicated"
    );
    second.stop(Duration::from_secs(5)).await;
}

/// A long line is written in parts and read back whole; a line without its end is ended
/// when the process exits; stderr is told from stdout; the last words of a crash are in the
/// log before the exit is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lines_unended_lines_and_last_words() {
    let dir = tempfile::tempdir().unwrap();
    let log = InstanceLog::open(&dir.path().join("logs"), "chatty", LogPolicy::default()).unwrap();
    let script = "head -c 40000 /dev/zero | tr '\\0' x; echo; echo oops >&2; printf 'no end'; \
                  touch done; exec sleep 1000";
    let process = Supervised::spawn(
        sh(dir.path(), log.clone(), script),
        RestartPolicy::default(),
    );
    eventually("the script to finish", || {
        dir.path().join("done").exists().then_some(())
    })
    .await;
    process.stop(Duration::from_secs(5)).await;
    let (_, records) = LogReader::open(log.clone(), source()).unwrap();
    let lines: Vec<(Stream, usize, &str)> = records
        .iter()
        .map(|r| (r.stream, r.line.len(), &r.line[..r.line.len().min(6)]))
        .collect();
    assert_eq!(
        lines,
        vec![
            (Stream::Stdout, 40000, "xxxxxx"),
            (Stream::Stderr, 4, "oops"),
            (Stream::Stdout, 6, "no end"),
        ]
    );
    let file = std::fs::read_to_string(log.path()).unwrap();
    assert!(
        file.lines().count() >= 5,
        "the long line is in parts:\n{}",
        &file[..200]
    );
    assert!(file.lines().all(|l| l.len() < 17 * 1024));

    // A crash: its last line is the failure's evidence.
    let crash = InstanceLog::open(&dir.path().join("logs"), "crash", LogPolicy::default()).unwrap();
    let process = Supervised::spawn(
        sh(dir.path(), crash, "echo 'panic: boom'; exit 3"),
        RestartPolicy::default(),
    );
    let ends = eventually("the crash to be recorded", || process.unplanned_ends()).await;
    assert!(
        format!("{ends:?}").contains("panic: boom"),
        "the crash's last output is recorded with it: {ends:?}"
    );
    process.stop(Duration::from_secs(5)).await;
}

/// The local environment, reading the logs its supervisors write.
struct Local {
    dir: PathBuf,
    environment: LocalEnvironment,
    instances: Mutex<BTreeMap<String, Supervised>>,
}

#[async_trait]
impl LogWorld for Local {
    fn source(&self) -> &dyn LogSource {
        &self.environment
    }

    fn environment(&self) -> &str {
        "conformance"
    }

    async fn write(
        &self,
        service: &str,
        revision: &str,
        instance: &str,
        lines: &[String],
    ) -> Result<()> {
        let inbox = self.dir.join(format!("{instance}.in"));
        let started = self.instances.lock().unwrap().contains_key(instance);
        if !started {
            let log =
                InstanceLog::open(&self.dir.join("state/logs"), instance, LogPolicy::default())
                    .unwrap();
            log.set_owner(&LogOwner {
                service: service.into(),
                revision: revision.into(),
            })
            .unwrap();
            // Prints what is dropped into its inbox, then removes it.
            let script = format!(
                "while :; do if [ -f {0}.in ]; then cat {0}.in; rm {0}.in; fi; sleep 0.01; done",
                instance
            );
            let process = Supervised::spawn(sh(&self.dir, log, &script), RestartPolicy::default());
            self.instances
                .lock()
                .unwrap()
                .insert(instance.to_string(), process);
        }
        let staged = self.dir.join(format!("{instance}.in.tmp"));
        std::fs::write(
            &staged,
            lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
        )
        .unwrap();
        std::fs::rename(&staged, &inbox).unwrap();
        eventually("the instance to print its inbox", || {
            (!inbox.exists()).then_some(())
        })
        .await;
        // Lines are stamped when the supervisor reads them: let each write get its own time.
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_environment_is_a_conforming_log_source() {
    let dir = tempfile::tempdir().unwrap();
    let options = LocalOptions::new(dir.path().join("state"))
        .listen(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .environment("conformance");
    let world = Local {
        dir: dir.path().to_path_buf(),
        environment: LocalEnvironment::open(options).await.unwrap(),
        instances: Mutex::new(BTreeMap::new()),
    };
    log_source(&world).await;
    let processes: Vec<Supervised> = std::mem::take(&mut *world.instances.lock().unwrap())
        .into_values()
        .collect();
    for process in processes {
        process.stop(Duration::from_secs(5)).await;
    }
}

/// The secret values an instance is given never reach its log files: the capture replaces
/// them before it writes, in plain lines, JSON and stderr alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_values_are_redacted_before_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "pg://app:Zk4-pass@db/shop";
    let log = InstanceLog::open(&dir.path().join("logs"), "leaky", LogPolicy::default())
        .unwrap()
        .redacting([secret])
        .unwrap();
    let mut spec = sh(
        dir.path(),
        log.clone(),
        "echo \"connecting to $DSN\"; echo \"{\\\"dsn\\\":\\\"$DSN\\\"}\" >&2; touch done; exec sleep 1000",
    );
    spec.env.insert("DSN".into(), secret.into());
    let process = Supervised::spawn(spec, RestartPolicy::default());
    eventually("the script to finish", || {
        dir.path().join("done").exists().then_some(())
    })
    .await;
    process.stop(Duration::from_secs(5)).await;
    let file = std::fs::read_to_string(log.path()).unwrap();
    assert!(!file.contains("Zk4-pass"), "{file}");
    assert!(file.contains("connecting to [REDACTED]"), "{file}");
    assert!(file.contains("[REDACTED]\"}"), "{file}");
}
