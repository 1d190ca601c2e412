//! The process supervisor against real processes (Unix only).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use deploykit_local::logs::{InstanceLog, LogPolicy};
use deploykit_local::process::{Exit, ProcessSpec, ProcessState, RestartPolicy, Supervised, alive};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// Generous: CI machines are slow and shared.
const PATIENCE: Duration = Duration::from_secs(30);

fn spec(dir: &Path, name: &str, script: &str) -> ProcessSpec {
    ProcessSpec {
        name: name.to_string(),
        program: "sh".to_string(),
        args: vec!["-c".to_string(), script.to_string()],
        env: BTreeMap::new(),
        cwd: Some(dir.to_path_buf()),
        log: InstanceLog::open(&dir.join("logs"), name, LogPolicy::default()).unwrap(),
    }
}

fn fast() -> RestartPolicy {
    RestartPolicy {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        crash_loop_after: 3,
        crash_window: Duration::from_secs(60),
        reset_after: Duration::from_secs(30),
    }
}

async fn wait_state(
    process: &Supervised,
    what: &str,
    mut pred: impl FnMut(&ProcessState) -> bool,
) -> ProcessState {
    let mut rx = process.watch();
    match tokio::time::timeout(PATIENCE, rx.wait_for(|s| pred(s))).await {
        Ok(Ok(state)) => state.clone(),
        _ => panic!("timed out waiting for {what}; state: {:?}", process.state()),
    }
}

async fn running(process: &Supervised) -> u32 {
    match wait_state(process, "running", |s| {
        matches!(s, ProcessState::Running { .. })
    })
    .await
    {
        ProcessState::Running { pid } => pid,
        _ => unreachable!(),
    }
}

/// Polls (a file, a pid) until `f` says yes.
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

async fn read_pid(path: PathBuf) -> u32 {
    eventually("pid file", || {
        std::fs::read_to_string(&path)
            .ok()
            .filter(|s| s.ends_with('\n'))
            .and_then(|s| s.trim().parse().ok())
    })
    .await
}

async fn log_contains(process: &Supervised, needle: &str) -> String {
    let path = process.log().path().to_path_buf();
    eventually(needle, || {
        std::fs::read_to_string(&path)
            .ok()
            .filter(|s| s.contains(needle))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_the_group_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"trap "" TERM; sleep 1000 & echo $! > grandchild.pid; sleep 1000; wait"#;
    let process = Supervised::spawn(spec(dir.path(), "stubborn", script), fast());
    let pid = running(&process).await;
    let grandchild = read_pid(dir.path().join("grandchild.pid")).await;
    assert!(alive(pid) && alive(grandchild));

    let grace = Duration::from_millis(300);
    let began = Instant::now();
    let exit = process.stop(grace).await;
    assert!(
        began.elapsed() >= grace,
        "SIGTERM was ignored, so stop waits out the grace"
    );
    assert_eq!(exit, Some(Exit::Signal(9)));
    assert_eq!(
        process.state(),
        ProcessState::Stopped {
            last_exit: Some(Exit::Signal(9))
        }
    );
    assert_eq!(process.pid(), None);
    assert!(!alive(pid));
    eventually("the grandchild to die", || {
        (!alive(grandchild)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_within_grace_returns_the_exit_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"trap "exit 7" TERM; echo up; while true; do sleep 0.05; done"#;
    let process = Supervised::spawn(spec(dir.path(), "polite", script), fast());
    running(&process).await;
    log_contains(&process, "up").await;

    let began = Instant::now();
    let (a, b) = tokio::join!(
        process.stop(Duration::from_secs(20)),
        process.stop(Duration::from_secs(20))
    );
    assert!(began.elapsed() < Duration::from_secs(15));
    assert_eq!(a, Some(Exit::Code(7)));
    assert_eq!(b, Some(Exit::Code(7)));
    assert_eq!(
        process.stop(Duration::from_secs(1)).await,
        Some(Exit::Code(7))
    );
    assert_eq!(
        process.state(),
        ProcessState::Stopped {
            last_exit: Some(Exit::Code(7))
        }
    );
    assert_eq!(process.restarts(), 0);
    // Restarting a stopped process does nothing.
    process.restart(Duration::from_secs(1)).await;
    assert!(matches!(process.state(), ProcessState::Stopped { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_child_becomes_crash_looping() {
    let dir = tempfile::tempdir().unwrap();
    let process = Supervised::spawn(spec(dir.path(), "crash", "echo boom >&2; exit 3"), fast());
    let state = wait_state(&process, "crash loop", |s| {
        matches!(s, ProcessState::CrashLooping { .. })
    })
    .await;
    let ProcessState::CrashLooping { last_exit, reason } = state else {
        unreachable!()
    };
    assert_eq!(last_exit, Exit::Code(3));
    assert!(
        reason.contains("exited with code 3 3 times in "),
        "{reason}"
    );
    assert!(reason.ends_with("last output: boom"), "{reason}");
    assert!(process.restarts() >= 2, "restarts: {}", process.restarts());
    assert_eq!(process.last_exit(), Some(Exit::Code(3)));
    assert_eq!(
        process.stop(Duration::from_secs(5)).await,
        Some(Exit::Code(3))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backing_off_between_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let policy = RestartPolicy {
        initial_backoff: Duration::from_millis(300),
        max_backoff: Duration::from_secs(5),
        ..fast()
    };
    let process = Supervised::spawn(spec(dir.path(), "once", "exit 1"), policy);
    let state = wait_state(&process, "backing off", |s| {
        matches!(s, ProcessState::BackingOff { .. })
    })
    .await;
    assert_eq!(
        state,
        ProcessState::BackingOff {
            last_exit: Exit::Code(1),
            restart_in: Duration::from_millis(300)
        }
    );
    assert_eq!(
        process.stop(Duration::from_secs(5)).await,
        Some(Exit::Code(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_program_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(dir.path(), "missing", "");
    spec.program = "deploykit-no-such-program".to_string();
    spec.args.clear();
    let process = Supervised::spawn(spec, fast());
    let state = wait_state(&process, "failed", |s| {
        matches!(s, ProcessState::Failed { .. })
    })
    .await;
    let ProcessState::Failed { reason } = state else {
        unreachable!()
    };
    assert!(reason.contains("deploykit-no-such-program"), "{reason}");
    assert!(reason.contains("No such file or directory"), "{reason}");
    assert_eq!(process.pid(), None);
    assert_eq!(process.stop(Duration::from_secs(1)).await, None);
    assert_eq!(process.state(), ProcessState::Stopped { last_exit: None });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_and_cwd_are_passed() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let mut spec = spec(
        dir.path(),
        "env",
        r#"echo "port=$PORT"; echo "cwd=$(pwd)"; exec sleep 1000"#,
    );
    spec.cwd = Some(work.clone());
    spec.env.insert("PORT".to_string(), "4321".to_string());
    let process = Supervised::spawn(spec, fast());
    let log = log_contains(&process, "cwd=").await;
    assert!(log.contains("port=4321\n"), "{log}");
    let cwd = work.canonicalize().unwrap();
    assert!(log.contains(&format!("cwd={}\n", cwd.display())), "{log}");
    assert!(process.started_at().is_some());
    assert_eq!(
        process.stop(Duration::from_secs(5)).await,
        Some(Exit::Signal(15))
    );
    assert_eq!(process.started_at(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_rotated_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"for i in 1 2 3 4 5 6; do head -c 3000 /dev/zero | tr '\0' x; echo " $i"; sleep 1.2; done; echo > done; exec sleep 1000"#;
    let mut spec = spec(dir.path(), "chatty", script);
    spec.log = InstanceLog::open(
        &dir.path().join("logs"),
        "chatty",
        LogPolicy {
            max_bytes: 1000,
            keep: 2,
            ..LogPolicy::default()
        },
    )
    .unwrap();
    let process = Supervised::spawn(spec, fast());
    let log = process.log().clone();
    eventually("the script to finish", || {
        dir.path().join("done").exists().then_some(())
    })
    .await;
    // The last burst is rotated away too.
    eventually("the current file to shrink", || {
        let len = std::fs::metadata(log.path()).ok()?.len();
        (len < 1000).then_some(())
    })
    .await;
    assert!(log.rotated_path(1).exists());
    assert!(log.rotated_path(2).exists());
    assert!(!log.rotated_path(3).exists());
    assert!(
        std::fs::read_to_string(log.rotated_path(1))
            .unwrap()
            .contains(" 6\n")
    );
    process.stop(Duration::from_secs(5)).await;
    log.remove().unwrap();
    assert!(!log.path().exists() && !log.rotated_path(1).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_process_is_watched_and_restarted_as_a_child() {
    let dir = tempfile::tempdir().unwrap();
    // An "earlier supervisor" started this one; we reap it ourselves, as its parent.
    let mut orphan = std::process::Command::new("sleep");
    std::os::unix::process::CommandExt::process_group(&mut orphan, 0);
    let mut orphan = orphan.arg("1000").spawn().unwrap();
    let orphan_pid = orphan.id();
    let reaper = std::thread::spawn(move || orphan.wait());

    let process = Supervised::adopt(
        spec(dir.path(), "adopted", "echo restarted; exec sleep 1000"),
        fast(),
        orphan_pid,
    );
    assert_eq!(process.state(), ProcessState::Running { pid: orphan_pid });
    assert_eq!(process.pid(), Some(orphan_pid));
    assert!(process.started_at().is_some());

    kill(Pid::from_raw(orphan_pid as i32), Signal::SIGKILL).unwrap();
    reaper.join().unwrap().unwrap();
    let state = wait_state(
        &process,
        "a new run",
        |s| matches!(s, ProcessState::Running { pid } if *pid != orphan_pid),
    )
    .await;
    let ProcessState::Running { pid } = state else {
        unreachable!()
    };
    log_contains(&process, "restarted").await;
    assert_eq!(process.restarts(), 1);
    assert_eq!(process.last_exit(), Some(Exit::Code(-1)));
    // The new run is our child: its real exit status is known.
    assert_eq!(
        process.stop(Duration::from_secs(5)).await,
        Some(Exit::Signal(15))
    );
    assert!(!alive(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopting_a_dead_pid_starts_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let process = Supervised::adopt(
        spec(dir.path(), "fresh", "exec sleep 1000"),
        fast(),
        dead_pid,
    );
    let pid = running(&process).await;
    assert_ne!(pid, dead_pid);
    assert_eq!(process.restarts(), 0);
    process.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_an_adopted_process_signals_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let mut orphan = std::process::Command::new("sleep");
    std::os::unix::process::CommandExt::process_group(&mut orphan, 0);
    let mut orphan = orphan.arg("1000").spawn().unwrap();
    let orphan_pid = orphan.id();
    let reaper = std::thread::spawn(move || orphan.wait());
    let process = Supervised::adopt(
        spec(dir.path(), "adopted2", "exec sleep 1000"),
        fast(),
        orphan_pid,
    );
    let exit = process.stop(Duration::from_secs(10)).await;
    assert_eq!(
        exit,
        Some(Exit::Code(-1)),
        "an adopted process's status is unknown"
    );
    assert_eq!(
        reaper.join().unwrap().unwrap().code(),
        None,
        "killed by SIGTERM"
    );
    assert!(!alive(orphan_pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_starts_a_new_run_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let process = Supervised::spawn(spec(dir.path(), "again", "exec sleep 1000"), fast());
    let first = running(&process).await;
    process.restart(Duration::from_secs(5)).await;
    let second = process.pid().expect("running again");
    assert_ne!(first, second);
    assert!(!alive(first));
    assert_eq!(process.restarts(), 1);
    assert_eq!(process.last_exit(), Some(Exit::Signal(15)));
    process.stop(Duration::from_secs(5)).await;
}

#[test]
fn children_outlive_the_handle_and_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (pid, detached_pid) = runtime.block_on(async {
        let process = Supervised::spawn(spec(dir.path(), "survivor", "exec sleep 1000"), fast());
        let pid = running(&process).await;
        drop(process);
        let detached = Supervised::spawn(spec(dir.path(), "detached", "exec sleep 1000"), fast());
        let detached_pid = running(&detached).await;
        detached.detach();
        // Detached: stop no longer touches the process.
        assert_eq!(detached.stop(Duration::from_millis(100)).await, None);
        (pid, detached_pid)
    });
    drop(runtime);
    for pid in [pid, detached_pid] {
        assert!(alive(pid), "the child must survive its supervisor");
        killpg(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    }
}

#[test]
fn exits_display() {
    assert_eq!(Exit::Code(1).to_string(), "exited with code 1");
    assert_eq!(Exit::Signal(9).to_string(), "killed by signal 9 (SIGKILL)");
    assert_eq!(Exit::Code(-1).to_string(), "exited with an unknown status");
    assert_eq!(Exit::Signal(200).to_string(), "killed by signal 200");
}

#[test]
fn nothing_is_alive_at_zero() {
    assert!(!alive(0));
    assert!(!alive(u32::MAX));
    assert!(alive(std::process::id()));
}

#[test]
fn log_instance_names_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["", ".hidden", "a/b", "sp ace", "ü"] {
        let err = InstanceLog::open(dir.path(), bad, LogPolicy::default()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
    InstanceLog::open(dir.path(), "web-3f2a9c1d-0.x_y", LogPolicy::default()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_output_is_rotated_by_renaming_and_kept_up_to_keep() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let policy = LogPolicy {
        max_bytes: 10,
        keep: 2,
        ..LogPolicy::default()
    };
    let log = InstanceLog::open(&dir.path().join("logs"), "a", policy).unwrap();
    let capture = log.capture().unwrap();
    let (mut out, _err) = log.stdio().unwrap();
    let read = |k| std::fs::read_to_string(log.rotated_path(k)).unwrap_or_default();
    for round in 0..4 {
        out.write_all(format!("round {round} xxxxxxxxxx\n").as_bytes())
            .unwrap();
        eventually("the rotation", || {
            read(1).contains(&format!("round {round}")).then_some(())
        })
        .await;
        assert_eq!(std::fs::metadata(log.path()).unwrap().len(), 0);
    }
    assert!(read(1).contains("round 3"));
    assert!(read(2).contains("round 2"));
    assert!(!log.rotated_path(3).exists());
    assert_eq!(log.last_line().as_deref(), Some("round 3 xxxxxxxxxx"));
    assert_eq!(log.tail(8).unwrap(), "xxxxxxx\n");
    drop(capture);
    log.remove().unwrap();
    assert!(!log.path().exists() && !log.rotated_path(1).exists());
    assert!(!log.pipe_path(deploykit_logs::Stream::Stdout).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_output_with_keep_zero_is_dropped_at_rotation() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let policy = LogPolicy {
        max_bytes: 3,
        keep: 0,
        ..LogPolicy::default()
    };
    let log = InstanceLog::open(dir.path(), "a", policy).unwrap();
    let _capture = log.capture().unwrap();
    let (_out, mut err) = log.stdio().unwrap();
    err.write_all(b"hello\n").unwrap();
    eventually("the rotation", || {
        let len = std::fs::metadata(log.path()).ok()?.len();
        // Written, then rotated away: the file is new and empty.
        (len == 0 && log.tail(100).ok()?.is_empty()).then_some(())
    })
    .await;
    assert!(!log.rotated_path(1).exists());
}

#[test]
fn last_line_is_trimmed_to_200_chars() {
    let dir = tempfile::tempdir().unwrap();
    let log = InstanceLog::open(dir.path(), "a", LogPolicy::default()).unwrap();
    assert_eq!(log.last_line(), None);
    std::fs::write(log.path(), format!("first\n  {}  \n\n", "y".repeat(300))).unwrap();
    let line = log.last_line().unwrap();
    assert_eq!(line.chars().count(), 200);
    assert!(line.starts_with("yyy") && line.ends_with('…'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_exit_after_running_is_reported_at_once_and_for_the_crash_window() {
    let dir = tempfile::tempdir().unwrap();
    // Runs 300 ms, exits 1, and is restarted each time: a revision that crashes after it
    // passed readiness. Far from a crash loop (3 exits in the window) at its first exit.
    let script = "echo serving; sleep 0.3; echo 'fatal: lost the database' >&2; exit 1";
    let process = Supervised::spawn(spec(dir.path(), "flaky", script), fast());
    let first = running(&process).await;
    assert_eq!(process.unplanned_ends(), None, "nothing ended yet");
    let ends = eventually("the first exit", || process.unplanned_ends()).await;
    assert_eq!(ends.count, 1);
    assert!(!ends.unhealthy);
    // `exited with code 1 after running 301ms`
    let ran: u64 = ends
        .last
        .strip_prefix("exited with code 1 after running ")
        .and_then(|rest| rest.strip_suffix("ms"))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("{ends:?}"));
    assert!((300..1000).contains(&ran), "{ends:?}");
    assert_eq!(
        ends.output.as_deref(),
        Some("fatal: lost the database"),
        "the last output before the exit"
    );
    assert_eq!(
        ends.to_string(),
        format!(
            "{} (1 time in the last 60s); last output: fatal: lost the database",
            ends.last
        )
    );
    // Still reported once it runs again (restarted) and has printed more, and not as a crash
    // loop yet.
    let again = eventually("the restart", || process.pid().filter(|pid| *pid != first)).await;
    assert!(alive(again));
    eventually("new output", || {
        (process.log().last_line().as_deref() == Some("serving")).then_some(())
    })
    .await;
    assert_eq!(process.unplanned_ends(), Some(ends));
    process.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplanned_ends_expire_with_the_window_and_planned_restarts_do_not_count() {
    let dir = tempfile::tempdir().unwrap();
    let policy = RestartPolicy {
        crash_window: Duration::from_millis(800),
        ..fast()
    };
    let process = Supervised::spawn(spec(dir.path(), "steady", "sleep 1000"), policy);
    running(&process).await;
    process.restart(Duration::from_secs(5)).await;
    running(&process).await;
    assert_eq!(process.restarts(), 1);
    assert_eq!(
        process.unplanned_ends(),
        None,
        "an operator's restart is planned"
    );

    process
        .restart_unhealthy(
            Duration::from_secs(5),
            "restarted after failing liveness: GET /healthz returned 503",
        )
        .await;
    running(&process).await;
    let ends = process
        .unplanned_ends()
        .expect("a restart for failing counts");
    assert!(ends.unhealthy);
    assert_eq!(
        ends.to_string(),
        "restarted after failing liveness: GET /healthz returned 503 (1 time in the last 800ms)"
    );
    // After the window without another end, it is no longer reported.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(process.unplanned_ends(), None);
    process.stop(Duration::from_secs(5)).await;
}
