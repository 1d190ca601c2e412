//! One supervised instance: a child process restarted with exponential backoff, with crash-loop
//! detection, graceful group-wide stops and adoption of processes left by an earlier supervisor.
//!
//! Each run is started in its own process group (the child is the group leader), with stdin
//! from `/dev/null` and stdout/stderr appended to the instance's [`InstanceLog`]. Signals on
//! stop go to the whole group, so a shell script's children go with it.
//!
//! Children outlive their supervisor on purpose: neither dropping every [`Supervised`] handle
//! nor dropping the tokio runtime kills the process (dropping every handle just ends
//! supervision). A later supervisor can pick the process up again with [`Supervised::adopt`].
//! Children this supervisor spawned are reaped by it.
//!
//! Unix only (uses process groups and signals; tested on Linux).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::MissedTickBehavior;

use crate::logs::{Capture, InstanceLog};

/// What to run for one instance.
#[derive(Clone, Debug)]
pub struct ProcessSpec {
    /// Instance name, e.g. `web-3f2a9c1d-0`.
    pub name: String,
    /// Program to run: a path, or a name looked up in `PATH`.
    pub program: String,
    /// Arguments after the program.
    pub args: Vec<String>,
    /// Variables added to the inherited environment (including `PORT`, set by the caller).
    pub env: BTreeMap<String, String>,
    /// Working directory; `None` inherits the supervisor's.
    pub cwd: Option<PathBuf>,
    /// Where stdout and stderr go.
    pub log: InstanceLog,
}

/// When and how fast exited processes are restarted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Delay before the first restart (default 100 ms); doubles with each further restart.
    pub initial_backoff: Duration,
    /// Longest delay between restarts (default 10 s); also the delay while crash-looping.
    pub max_backoff: Duration,
    /// This many unplanned ends (exits, restarts for failing a check) within
    /// [`crash_window`](Self::crash_window) mean the instance is crash-looping (default 3).
    pub crash_loop_after: u32,
    /// Window for counting unplanned ends (default 60 s); each is reported by
    /// [`Supervised::unplanned_ends`] for this long.
    pub crash_window: Duration,
    /// A run at least this long resets the backoff to `initial_backoff` (default 30 s).
    pub reset_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            crash_loop_after: 3,
            crash_window: Duration::from_secs(60),
            reset_after: Duration::from_secs(30),
        }
    }
}

/// How a run ended.
///
/// An adopted process (not our child) has no observable exit status: its end is reported as
/// `Code(-1)`, displayed as "exited with an unknown status" (real exit codes are 0–255).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl From<ExitStatus> for Exit {
    fn from(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(signal)) => Exit::Signal(signal),
            (None, None) => Exit::Code(-1),
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(-1) => f.write_str("exited with an unknown status"),
            Exit::Code(code) => write!(f, "exited with code {code}"),
            Exit::Signal(n) => match Signal::try_from(*n) {
                Ok(signal) => write!(f, "killed by signal {n} ({})", signal.as_str()),
                Err(_) => write!(f, "killed by signal {n}"),
            },
        }
    }
}

/// Where a supervised instance is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessState {
    /// Running as `pid` (also the process group id).
    Running {
        /// The process id.
        pid: u32,
    },
    /// Exited; waiting `restart_in` before starting again.
    BackingOff {
        /// How the last run ended.
        last_exit: Exit,
        /// The delay before the restart.
        restart_in: Duration,
    },
    /// Exited too often: still restarted (after the maximum backoff), but flagged.
    CrashLooping {
        /// How the last run ended.
        last_exit: Exit,
        /// E.g. `exited with code 1 3 times in 4s; last output: panic: boom`.
        reason: String,
    },
    /// Could not be started at all (e.g. the program does not exist); retried with backoff.
    Failed {
        /// What went wrong, naming the program and the OS error.
        reason: String,
    },
    /// Stopped with [`Supervised::stop`]; no more restarts.
    Stopped {
        /// How the last run ended, if there was one.
        last_exit: Option<Exit>,
    },
}

/// Whether a process with this id exists (and, on Linux, is not a zombie).
///
/// Uses `kill(pid, 0)`: a process owned by another user counts as alive. Pid 0 and ids beyond
/// `i32::MAX` are never alive.
pub fn alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw == 0 {
        return false;
    }
    match kill(Pid::from_raw(raw), None) {
        Ok(()) | Err(Errno::EPERM) => !is_zombie(pid),
        Err(_) => false,
    }
}

/// Whether `/proc` says the process is a zombie (exited, not yet reaped).
fn is_zombie(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": comm may contain anything, so look after the last ')'.
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].trim_start().chars().next())
        .is_some_and(|state| matches!(state, 'Z' | 'X'))
}

/// A supervised instance: its process is restarted when it exits, until [`stop`](Self::stop).
///
/// Cheap to clone (the clones share the supervisor). Dropping every clone ends supervision but
/// leaves the current process running, so that it can be adopted later.
#[derive(Clone)]
pub struct Supervised {
    inner: Arc<Inner>,
}

struct Inner {
    spec: ProcessSpec,
    shared: Arc<Shared>,
    control: mpsc::UnboundedSender<Control>,
}

struct Shared {
    state: watch::Sender<ProcessState>,
    run: Mutex<RunInfo>,
    /// The policy's window for counting unplanned ends.
    crash_window: Duration,
}

#[derive(Default)]
struct RunInfo {
    restarts: u32,
    started_at: Option<Instant>,
    last_exit: Option<Exit>,
    /// When runs ended without being asked to, within the crash window, oldest first.
    ends: VecDeque<Instant>,
    /// The last such end: what happened, whether it was a restart for failing a check, and
    /// the last line of output before it.
    last_end: Option<(String, bool, Option<String>)>,
}

impl RunInfo {
    /// Records an unplanned end at `now`, forgetting those older than `window`; returns how
    /// many remain (this one included).
    fn record_end(
        &mut self,
        now: Instant,
        window: Duration,
        what: String,
        unhealthy: bool,
        output: Option<String>,
    ) -> usize {
        self.ends.push_back(now);
        while self
            .ends
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            self.ends.pop_front();
        }
        self.last_end = Some((what, unhealthy, output));
        self.ends.len()
    }
}

/// Runs that ended without being asked to within the crash window: the process exited by
/// itself, or it was restarted because it failed a check ([`Supervised::restart_unhealthy`]).
///
/// One such end is already evidence that a revision may be broken (an instance that exits two
/// seconds after passing readiness passes every probe in between), so it is reported at once
/// and for the whole window, not only once the exits amount to a crash loop.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnplannedEnds {
    /// How many fall within the window (at least 1).
    pub count: u32,
    /// The last one, e.g. `exited with code 1 after running 2s` or `restarted after failing
    /// liveness: GET /healthz returned 503`.
    pub last: String,
    /// Whether the last one was a restart for failing a check, rather than an exit.
    pub unhealthy: bool,
    /// The instance's last line of output before the last exit (none for restarts).
    pub output: Option<String>,
    /// The window they were counted over.
    pub window: Duration,
}

impl fmt::Display for UnplannedEnds {
    /// `exited with code 1 after running 2s (1 time in the last 60s); last output: panic: boom`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let times = if self.count == 1 { "time" } else { "times" };
        write!(
            f,
            "{} ({} {times} in the last {})",
            self.last,
            self.count,
            human_duration(self.window)
        )?;
        if let Some(line) = &self.output {
            write!(f, "; last output: {line}")?;
        }
        Ok(())
    }
}

impl Shared {
    fn run(&self) -> MutexGuard<'_, RunInfo> {
        self.run.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum Control {
    Stop {
        grace: Duration,
        reply: oneshot::Sender<Option<Exit>>,
    },
    Restart {
        grace: Duration,
        /// Why, when the restart is for a failure (it then counts as an unplanned end).
        failure: Option<String>,
        reply: oneshot::Sender<()>,
    },
    Detach,
}

impl fmt::Debug for Supervised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervised")
            .field("name", &self.inner.spec.name)
            .field("state", &self.state())
            .field("restarts", &self.restarts())
            .finish()
    }
}

impl Supervised {
    /// Starts `spec` now and supervises it: on exit the run is recorded, and the process is
    /// restarted after a backoff; repeated exits make it [`ProcessState::CrashLooping`]. A
    /// process that cannot be started at all is [`ProcessState::Failed`] and retried with
    /// backoff.
    ///
    /// Must be called within a tokio runtime.
    pub fn spawn(spec: ProcessSpec, policy: RestartPolicy) -> Supervised {
        let (supervised, mut task) = Supervised::new(spec, policy);
        let phase = task.start();
        tokio::spawn(task.run(phase));
        supervised
    }

    /// Supervises `pid`, a running process-group leader left by an earlier supervisor (so not
    /// our child): it is polled every 100 ms, and when it is gone that counts as an exit with
    /// an unknown status ([`Exit::Code(-1)`](Exit::Code)), after which it is restarted as our
    /// child like [`spawn`](Self::spawn) would. If `pid` is not alive, a fresh process is
    /// started at once. The start time of an adopted run is the time of adoption.
    ///
    /// Must be called within a tokio runtime.
    pub fn adopt(spec: ProcessSpec, policy: RestartPolicy, pid: u32) -> Supervised {
        let (supervised, mut task) = Supervised::new(spec, policy);
        let phase = if alive(pid) {
            task.adopted(pid)
        } else {
            task.start()
        };
        tokio::spawn(task.run(phase));
        supervised
    }

    fn new(spec: ProcessSpec, policy: RestartPolicy) -> (Supervised, Task) {
        let (control, control_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            state: watch::Sender::new(ProcessState::Stopped { last_exit: None }),
            run: Mutex::new(RunInfo::default()),
            crash_window: policy.crash_window,
        });
        let task = Task {
            spec: spec.clone(),
            next_backoff: policy.initial_backoff,
            policy,
            shared: shared.clone(),
            control: control_rx,
            started_once: false,
            capture: match spec.log.capture() {
                Ok(capture) => Some(capture),
                Err(e) => {
                    tracing::warn!(instance = %spec.name, "cannot capture the output: {e}");
                    None
                }
            },
        };
        let inner = Inner {
            spec,
            shared,
            control,
        };
        (
            Supervised {
                inner: Arc::new(inner),
            },
            task,
        )
    }

    /// The instance name.
    pub fn name(&self) -> &str {
        &self.inner.spec.name
    }

    /// What is being run.
    pub fn spec(&self) -> &ProcessSpec {
        &self.inner.spec
    }

    /// The current process id, while running.
    pub fn pid(&self) -> Option<u32> {
        match *self.inner.shared.state.borrow() {
            ProcessState::Running { pid } => Some(pid),
            _ => None,
        }
    }

    /// The current state.
    pub fn state(&self) -> ProcessState {
        self.inner.shared.state.borrow().clone()
    }

    /// Follows the state.
    pub fn watch(&self) -> watch::Receiver<ProcessState> {
        self.inner.shared.state.subscribe()
    }

    /// How many times the process was started again after its first start (after exits and
    /// after [`restart`](Self::restart)).
    pub fn restarts(&self) -> u32 {
        self.inner.shared.run().restarts
    }

    /// When the current run started (adoption time for an adopted process); `None` when not
    /// running.
    pub fn started_at(&self) -> Option<Instant> {
        self.inner.shared.run().started_at
    }

    /// How the last run ended, if one did.
    pub fn last_exit(&self) -> Option<Exit> {
        self.inner.shared.run().last_exit.clone()
    }

    /// The runs that ended without being asked to within the crash window (exits of the
    /// process by itself, restarts for failing a check), if there were any.
    pub fn unplanned_ends(&self) -> Option<UnplannedEnds> {
        let window = self.inner.shared.crash_window;
        let run = self.inner.shared.run();
        let now = Instant::now();
        let count = run
            .ends
            .iter()
            .filter(|t| now.duration_since(**t) <= window)
            .count();
        let (last, unhealthy, output) = run.last_end.clone()?;
        (count > 0).then_some(UnplannedEnds {
            count: count as u32,
            last,
            unhealthy,
            output,
            window,
        })
    }

    /// Stops the current run gracefully (as [`stop`](Self::stop) does) and starts a new one at
    /// once; counts as a restart. While backing off, starts at once. Does nothing once stopped.
    pub async fn restart(&self, grace: Duration) {
        self.send_restart(grace, None).await;
    }

    /// Stops the current run gracefully because the instance failed a check, e.g. liveness,
    /// and starts it again after the back-off, as if it had exited: an unplanned end (see
    /// [`unplanned_ends`](Self::unplanned_ends)) that counts toward crash-loop detection,
    /// described by `why` (`restarted after failing liveness: GET /healthz returned 503`).
    /// Does nothing while backing off (nothing runs to be restarted) or once stopped.
    pub async fn restart_unhealthy(&self, grace: Duration, why: impl Into<String>) {
        self.send_restart(grace, Some(why.into())).await;
    }

    async fn send_restart(&self, grace: Duration, failure: Option<String>) {
        let (reply, done) = oneshot::channel();
        if self
            .inner
            .control
            .send(Control::Restart {
                grace,
                failure,
                reply,
            })
            .is_ok()
        {
            let _ = done.await;
        }
    }

    /// Stops for good: no more restarts. Sends SIGTERM to the process group, waits up to
    /// `grace` for the leader to exit, then SIGKILLs the group; members left after the leader
    /// exited are SIGKILLed too. Idempotent; returns how the last run ended.
    pub async fn stop(&self, grace: Duration) -> Option<Exit> {
        let (reply, done) = oneshot::channel();
        if self
            .inner
            .control
            .send(Control::Stop { grace, reply })
            .is_ok()
            && let Ok(exit) = done.await
        {
            return exit;
        }
        // Already stopped (the supervisor is gone).
        self.inner.shared.run().last_exit.clone()
    }

    /// Ends supervision without touching the process, e.g. when the supervisor shuts down and
    /// a later one will [`adopt`](Self::adopt) it: the current process keeps running, is not
    /// restarted any more, and the state is no longer updated. Later calls to
    /// [`stop`](Self::stop) and [`restart`](Self::restart) do nothing.
    pub fn detach(&self) {
        let _ = self.inner.control.send(Control::Detach);
    }

    /// The instance's log.
    pub fn log(&self) -> &InstanceLog {
        &self.inner.spec.log
    }
}

/// The supervisor task's state.
struct Task {
    spec: ProcessSpec,
    policy: RestartPolicy,
    shared: Arc<Shared>,
    control: mpsc::UnboundedReceiver<Control>,
    next_backoff: Duration,
    started_once: bool,
    /// Moves the instance's output from its pipes into its log file; `None` if the pipes
    /// could not be opened (then starting the process fails too, with the reason).
    capture: Option<Capture>,
}

/// The current run.
struct Current {
    pid: u32,
    started: Instant,
    process: Process,
}

enum Process {
    Child(Child),
    Adopted,
}

enum Phase {
    Running(Current),
    Waiting(Duration),
    Done,
}

enum Event {
    Exited(Exit),
    Control(Option<Control>),
    Elapsed,
}

impl Task {
    async fn run(mut self, mut phase: Phase) {
        loop {
            phase = match phase {
                Phase::Running(current) => self.supervise(current).await,
                Phase::Waiting(delay) => self.wait(delay).await,
                Phase::Done => return,
            };
        }
    }

    fn set_state(&self, state: ProcessState) {
        self.shared.state.send_replace(state);
    }

    /// Starts a run, or records why it could not start and schedules a retry.
    fn start(&mut self) -> Phase {
        match self.spawn_child() {
            Ok(child) => {
                let pid = child.id().unwrap_or_default();
                tracing::info!(instance = %self.spec.name, pid, "started");
                self.begin_run(pid);
                Phase::Running(Current {
                    pid,
                    started: Instant::now(),
                    process: Process::Child(child),
                })
            }
            Err(reason) => {
                tracing::warn!(instance = %self.spec.name, %reason, "could not start");
                self.shared.run().started_at = None;
                self.set_state(ProcessState::Failed { reason });
                let delay = self.take_backoff();
                Phase::Waiting(delay)
            }
        }
    }

    fn adopted(&mut self, pid: u32) -> Phase {
        tracing::info!(instance = %self.spec.name, pid, "adopted");
        self.begin_run(pid);
        Phase::Running(Current {
            pid,
            started: Instant::now(),
            process: Process::Adopted,
        })
    }

    fn begin_run(&mut self, pid: u32) {
        {
            let mut run = self.shared.run();
            if self.started_once {
                run.restarts += 1;
            }
            run.started_at = Some(Instant::now());
        }
        self.started_once = true;
        self.set_state(ProcessState::Running { pid });
    }

    fn spawn_child(&self) -> Result<Child, String> {
        let spec = &self.spec;
        if let Some(cwd) = &spec.cwd
            && !cwd.is_dir()
        {
            return Err(format!(
                "could not start program {:?}: working directory {} does not exist",
                spec.program,
                cwd.display()
            ));
        }
        let (stdout, stderr) = spec.log.stdio().map_err(|e| {
            format!(
                "could not open log file {} for {:?}: {e}",
                spec.log.path().display(),
                spec.program
            )
        })?;
        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            .envs(&spec.env)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        if let Some(cwd) = &spec.cwd {
            command.current_dir(cwd);
        }
        command
            .spawn()
            .map_err(|e| format!("could not start program {:?}: {e}", spec.program))
    }

    fn take_backoff(&mut self) -> Duration {
        let delay = self.next_backoff.min(self.policy.max_backoff);
        self.next_backoff = (delay * 2).min(self.policy.max_backoff);
        delay
    }

    /// Watches a run until it exits or a command arrives.
    async fn supervise(&mut self, mut current: Current) -> Phase {
        let mut poll = tokio::time::interval(Duration::from_millis(100));
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let event = tokio::select! {
            exit = wait_exit(&mut current, &mut poll) => Event::Exited(exit),
            control = self.control.recv() => Event::Control(control),
        };
        match event {
            Event::Exited(exit) => {
                self.take_in_output().await;
                self.exited(&current, exit)
            }
            // Detached, or every handle is gone: leave the process running, for adoption.
            Event::Control(None | Some(Control::Detach)) => Phase::Done,
            Event::Control(Some(Control::Stop { grace, reply })) => {
                let exit = terminate(current, grace).await;
                self.take_in_output().await;
                tracing::info!(instance = %self.spec.name, %exit, "stopped");
                self.finish(Some(exit.clone()));
                let _ = reply.send(Some(exit));
                Phase::Done
            }
            Event::Control(Some(Control::Restart {
                grace,
                failure,
                reply,
            })) => {
                let started = current.started;
                let exit = terminate(current, grace).await;
                self.take_in_output().await;
                tracing::info!(instance = %self.spec.name, %exit, "restarting");
                let phase = match failure {
                    // A restart for failing a check is an unplanned end: the same
                    // back-off and crash-loop detection as an exit.
                    Some(why) => self.ended(started, exit, Some(why)),
                    None => {
                        self.shared.run().last_exit = Some(exit);
                        self.start()
                    }
                };
                let _ = reply.send(());
                phase
            }
            Event::Elapsed => unreachable!("no timer in this select"),
        }
    }

    /// Waits until everything the ended run wrote is in its log (its last words are the
    /// failure's evidence).
    async fn take_in_output(&self) {
        if let Some(capture) = &self.capture {
            capture.child_exited().await;
        }
    }

    /// Records an exit and decides how long to wait before the next run.
    fn exited(&mut self, current: &Current, exit: Exit) -> Phase {
        kill_leftovers(current.pid);
        self.ended(current.started, exit, None)
    }

    /// Records an unplanned end of the run started at `started` (an exit, or with `failure`
    /// a restart for failing a check) and decides how long to wait before the next run.
    fn ended(&mut self, started: Instant, exit: Exit, failure: Option<String>) -> Phase {
        let now = Instant::now();
        let ran = now.duration_since(started);
        let unhealthy = failure.is_some();
        let output = if unhealthy {
            None
        } else {
            self.spec.log.last_line()
        };
        let what =
            failure.unwrap_or_else(|| format!("{exit} after running {}", human_duration(ran)));
        let (count, span) = {
            let mut run = self.shared.run();
            run.last_exit = Some(exit.clone());
            run.started_at = None;
            let window = self.policy.crash_window;
            let count = run.record_end(now, window, what.clone(), unhealthy, output.clone());
            (count, run.ends.front().map_or(Duration::ZERO, |t| now - *t))
        };
        if ran >= self.policy.reset_after {
            self.next_backoff = self.policy.initial_backoff;
        }
        if count >= self.policy.crash_loop_after.max(1) as usize {
            let span = human_duration(span);
            let mut reason = if unhealthy {
                format!("{what} ({count} unplanned ends in {span})")
            } else {
                format!("{exit} {count} times in {span}")
            };
            if let Some(line) = output {
                reason.push_str("; last output: ");
                reason.push_str(&line);
            }
            tracing::warn!(instance = %self.spec.name, %reason, "crash-looping");
            self.next_backoff = self.policy.max_backoff;
            self.set_state(ProcessState::CrashLooping {
                last_exit: exit,
                reason,
            });
            Phase::Waiting(self.policy.max_backoff)
        } else {
            let delay = self.take_backoff();
            tracing::info!(instance = %self.spec.name, %exit, ?delay, "exited; restarting");
            self.set_state(ProcessState::BackingOff {
                last_exit: exit,
                restart_in: delay,
            });
            Phase::Waiting(delay)
        }
    }

    /// Waits out a backoff, unless a command arrives first. A restart for failing a check
    /// changes nothing while nothing runs (the back-off stands); a plain restart starts at once.
    async fn wait(&mut self, delay: Duration) -> Phase {
        let until = tokio::time::Instant::now() + delay;
        loop {
            let event = tokio::select! {
                _ = tokio::time::sleep_until(until) => Event::Elapsed,
                control = self.control.recv() => Event::Control(control),
            };
            return match event {
                Event::Elapsed => self.start(),
                Event::Control(None | Some(Control::Detach)) => Phase::Done,
                Event::Control(Some(Control::Stop { reply, .. })) => {
                    let last_exit = self.shared.run().last_exit.clone();
                    self.finish(last_exit.clone());
                    let _ = reply.send(last_exit);
                    Phase::Done
                }
                Event::Control(Some(Control::Restart {
                    failure: Some(_),
                    reply,
                    ..
                })) => {
                    let _ = reply.send(());
                    continue;
                }
                Event::Control(Some(Control::Restart {
                    failure: None,
                    reply,
                    ..
                })) => {
                    let phase = self.start();
                    let _ = reply.send(());
                    phase
                }
                Event::Exited(_) => unreachable!("not selected while waiting"),
            };
        }
    }

    /// Records the end of supervision: stopped for good, the capture ended and the pipes
    /// removed (the log stays).
    fn finish(&mut self, last_exit: Option<Exit>) {
        self.capture = None;
        if let Err(e) = self.spec.log.close_pipes() {
            tracing::warn!(instance = %self.spec.name, "cannot remove the pipes: {e}");
        }
        {
            let mut run = self.shared.run();
            run.started_at = None;
            run.last_exit.clone_from(&last_exit);
        }
        self.set_state(ProcessState::Stopped { last_exit });
    }
}

/// Waits for the run's leader to exit (cancel safe).
async fn wait_exit(current: &mut Current, poll: &mut tokio::time::Interval) -> Exit {
    match &mut current.process {
        Process::Child(child) => match child.wait().await {
            Ok(status) => Exit::from(status),
            Err(e) => {
                tracing::warn!(pid = current.pid, "waiting for the process failed: {e}");
                Exit::Code(-1)
            }
        },
        Process::Adopted => loop {
            poll.tick().await;
            if !alive(current.pid) {
                return Exit::Code(-1);
            }
        },
    }
}

/// SIGTERM to the group, up to `grace` for the leader to exit, then SIGKILL to the group.
async fn terminate(current: Current, grace: Duration) -> Exit {
    let pid = current.pid;
    signal_group(pid, Signal::SIGTERM);
    let exit = match current.process {
        Process::Child(mut child) => match tokio::time::timeout(grace, child.wait()).await {
            Ok(Ok(status)) => Exit::from(status),
            _ => {
                signal_group(pid, Signal::SIGKILL);
                child.wait().await.map_or(Exit::Code(-1), Exit::from)
            }
        },
        Process::Adopted => {
            if wait_gone(pid, grace).await {
                Exit::Code(-1)
            } else {
                signal_group(pid, Signal::SIGKILL);
                wait_gone(pid, Duration::from_secs(5)).await;
                Exit::Signal(Signal::SIGKILL as i32)
            }
        }
    };
    kill_leftovers(pid);
    exit
}

/// Polls until `pid` is gone or `within` has passed; returns whether it is gone.
async fn wait_gone(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if !alive(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Signals the process group led by `pid`, or just `pid` if it leads no group.
fn signal_group(pid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pid) else { return };
    if raw <= 0 {
        return;
    }
    if let Err(Errno::ESRCH) = killpg(Pid::from_raw(raw), signal) {
        let _ = kill(Pid::from_raw(raw), signal);
    }
}

/// SIGKILLs what is left of the group led by `pid` once the leader has exited.
fn kill_leftovers(pid: u32) {
    let Ok(raw) = i32::try_from(pid) else { return };
    if raw <= 0 {
        return;
    }
    let group = Pid::from_raw(raw);
    if killpg(group, None).is_ok() {
        tracing::debug!(pgid = raw, "killing leftover members of the process group");
        let _ = killpg(group, Signal::SIGKILL);
    }
}

/// A short human rendering of a duration: `350ms`, `1s`, `1.5s`, `42s`, `3m5s`.
pub(crate) fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 10_000 && !ms.is_multiple_of(1000) {
        let tenths = (ms + 50) / 100;
        if tenths.is_multiple_of(10) {
            format!("{}s", tenths / 10)
        } else {
            format!("{}.{}s", tenths / 10, tenths % 10)
        }
    } else {
        let secs = (ms + 500) / 1000;
        if secs < 120 {
            format!("{secs}s")
        } else {
            format!("{}m{}s", secs / 60, secs % 60)
        }
    }
}
