//! The supervisor's side of an instance's log: what the child writes to its pipes goes into
//! the log file, stamped and tagged with its stream, and the file is rotated by renaming it.
//!
//! Nothing is lost to rotation: the capture is the file's only writer, so it renames the full
//! file away and opens a new one between two writes. Nothing is lost when the supervisor goes
//! away either: the pipes are named (FIFOs in the log directory) and the child holds them open
//! for reading as well as writing, so they outlive the supervisor with whatever is unread in
//! them; the next supervisor opens them by name and reads on. What a capture has read it has
//! written to the file before it reads again, so a supervisor killed outright loses at most
//! the one read in flight. While no supervisor reads, a child that fills its pipe (1 MiB)
//! blocks on its next write instead of losing it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::Path;
use std::time::Duration;

use deploykit_logs::{Redactor, Stream};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};

use super::InstanceLog;
use super::cri::{self, MAX_RECORD};

/// How long a line without its end waits for the rest before it is written as a part (`P`).
const PARTIAL_AFTER: Duration = Duration::from_millis(200);
/// How long to wait before writing again after the file could not be written.
const WRITE_RETRY: Duration = Duration::from_secs(1);
/// How often a capture waits for another one to stop.
const LOCK_RETRY: Duration = Duration::from_millis(20);
/// The pipe size asked for (Linux's default ceiling for unprivileged processes).
const PIPE_BYTES: usize = 1 << 20;

/// A running capture, from [`InstanceLog::capture`]. Dropping it stops the capture at once
/// (what is unread stays in the pipes for the next one, and a line cut short is ended by the
/// next capture); [`Capture::child_exited`] first takes in everything the child wrote.
#[derive(Debug)]
pub struct Capture {
    requests: mpsc::UnboundedSender<oneshot::Sender<()>>,
}

impl Capture {
    /// Takes in everything in the pipes and ends the last line; returns once it is in the
    /// file. For a child that has exited: its last words are then in the log.
    pub async fn child_exited(&self) {
        let (done, written) = oneshot::channel();
        if self.requests.send(done).is_ok() {
            let _ = written.await;
        }
    }
}

/// Creates the named pipe at `path` unless it exists; an existing file that is not a pipe is
/// an error.
pub(super) fn make_fifo(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt as _;
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_fifo() => Ok(()),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a named pipe", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(io::Error::from)
        }
        Err(e) => Err(e),
    }
}

/// The child's end of a pipe: open for reading too, so the pipe always has a reader and a
/// write never fails with `EPIPE` while no supervisor reads.
pub(super) fn child_end(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    // A larger pipe lets the child go on for longer while no supervisor reads; the default
    // (64 KiB) is kept if the system refuses.
    let _ = nix::fcntl::fcntl(
        &file,
        nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_BYTES as nix::libc::c_int),
    );
    Ok(file)
}

pub(super) fn start(log: &InstanceLog) -> io::Result<Capture> {
    let open = |path: &Path| {
        pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(path)
    };
    let stdout = open(&log.pipe_path(Stream::Stdout))?;
    let stderr = open(&log.pipe_path(Stream::Stderr))?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(log.capture_lock_path())?;
    let (requests, received) = mpsc::unbounded_channel();
    tokio::spawn(run(lock, log.clone(), [stdout, stderr], received));
    Ok(Capture { requests })
}

const STREAMS: [Stream; 2] = [Stream::Stdout, Stream::Stderr];

async fn run(
    lock: File,
    log: InstanceLog,
    pipes: [pipe::Receiver; 2],
    mut requests: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
) {
    // One capture per instance at a time, even across processes: another one (a supervisor
    // that is stopping, or another process's) would take lines out of the same pipes and
    // could interleave the parts of a line. The kernel releases the lock of a process that
    // dies.
    let mut lock = Some(lock);
    let _held = loop {
        let Some(file) = lock.take() else { return };
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(held) => break held,
            Err((file, Errno::EWOULDBLOCK)) => {
                lock = Some(file);
                tokio::select! {
                    request = requests.recv() => match request {
                        // Nothing of this instance's output is ours to take in yet.
                        Some(done) => { let _ = done.send(()); }
                        None => return,
                    },
                    _ = tokio::time::sleep(LOCK_RETRY) => {}
                }
            }
            Err((_, errno)) => {
                tracing::warn!(log = %log.path().display(), "cannot lock the log for capture: {errno}");
                return;
            }
        }
    };
    // Opened only now: a capture that ran until now may have rotated the file.
    let mut writer = match Writer::open(log) {
        Ok(writer) => writer,
        Err(e) => {
            tracing::warn!("cannot open an instance's log for capture: {e}");
            return;
        }
    };
    let mut chunk = vec![0u8; 64 * 1024];
    let [stdout, stderr] = &pipes;
    loop {
        let partial_wait = writer.partial_deadline();
        tokio::select! {
            biased;
            request = requests.recv() => match request {
                // The child is gone: take in the rest and end its last line.
                Some(done) => {
                    for (pipe, stream) in pipes.iter().zip(STREAMS) {
                        while let Ok(n @ 1..) = pipe.try_read(&mut chunk) {
                            writer.take(stream, &chunk[..n]).await;
                        }
                    }
                    writer.end_lines(false).await;
                    let _ = done.send(());
                }
                // Detached: a line cut short goes on in the next supervisor's capture.
                None => {
                    writer.end_lines(true).await;
                    return;
                }
            },
            ready = stdout.readable() => if ready.is_ok() {
                read_once(stdout, Stream::Stdout, &mut chunk, &mut writer).await;
            },
            ready = stderr.readable() => if ready.is_ok() {
                read_once(stderr, Stream::Stderr, &mut chunk, &mut writer).await;
            },
            _ = sleep_until(partial_wait) => writer.end_lines(true).await,
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn read_once(pipe: &pipe::Receiver, stream: Stream, chunk: &mut [u8], writer: &mut Writer) {
    match pipe.try_read(chunk) {
        Ok(0) => {}
        Ok(n) => writer.take(stream, &chunk[..n]).await,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => {
            tracing::warn!(log = %writer.log.path().display(), "reading an instance's pipe: {e}");
            tokio::time::sleep(WRITE_RETRY).await;
        }
    }
}

/// The log file's only writer.
struct Writer {
    log: InstanceLog,
    file: File,
    len: u64,
    /// When the current file was first written to (by this writer).
    since: Option<std::time::Instant>,
    /// Each stream's line begun but not ended yet, and since when.
    open_lines: [(Vec<u8>, Option<tokio::time::Instant>); 2],
    out: Vec<u8>,
}

impl Writer {
    fn open(log: InstanceLog) -> io::Result<Writer> {
        let file = super::append(log.path())?;
        let len = file.metadata()?.len();
        Ok(Writer {
            log,
            file,
            since: (len > 0).then(std::time::Instant::now),
            len,
            open_lines: Default::default(),
            out: Vec::with_capacity(128 * 1024),
        })
    }

    fn partial_deadline(&self) -> Option<tokio::time::Instant> {
        self.open_lines
            .iter()
            .filter_map(|(_, since)| since.map(|s| s + PARTIAL_AFTER))
            .min()
    }

    /// Takes `bytes` the child wrote to `stream`: whole lines are written at once, a line
    /// without its end waits (up to [`PARTIAL_AFTER`], or [`MAX_RECORD`] bytes).
    async fn take(&mut self, stream: Stream, bytes: &[u8]) {
        let now = cri::now_ns();
        let index = usize::from(stream == Stream::Stderr);
        let mut rest = bytes;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let (line, after) = rest.split_at(end);
            let open = &mut self.open_lines[index].0;
            if open.is_empty() {
                push_record(
                    &mut self.out,
                    self.log.redactor.as_deref(),
                    now,
                    stream,
                    line,
                    false,
                );
            } else {
                open.extend_from_slice(line);
                push_record(
                    &mut self.out,
                    self.log.redactor.as_deref(),
                    now,
                    stream,
                    open,
                    false,
                );
                open.clear();
            }
            self.open_lines[index].1 = None;
            rest = &after[1..];
        }
        if !rest.is_empty() {
            let (open, since) = &mut self.open_lines[index];
            open.extend_from_slice(rest);
            since.get_or_insert_with(tokio::time::Instant::now);
            while open.len() >= MAX_RECORD {
                let cut = utf8_cut(open, MAX_RECORD);
                push_record(
                    &mut self.out,
                    self.log.redactor.as_deref(),
                    now,
                    stream,
                    &open[..cut],
                    true,
                );
                open.drain(..cut);
            }
        }
        self.flush().await;
    }

    /// Writes the lines begun but not ended: as parts (`P`) that a later record goes on, or
    /// as ended lines (`F`).
    async fn end_lines(&mut self, partial: bool) {
        let now = cri::now_ns();
        for (stream, (open, since)) in STREAMS.iter().zip(self.open_lines.iter_mut()) {
            if !open.is_empty() {
                push_record(
                    &mut self.out,
                    self.log.redactor.as_deref(),
                    now,
                    *stream,
                    open,
                    partial,
                );
                open.clear();
            }
            *since = None;
        }
        self.flush().await;
    }

    /// Writes what is buffered, then rotates if the file is over its size; on an error, keeps
    /// trying (reading nothing more meanwhile, so the child is held back rather than its
    /// output lost).
    async fn flush(&mut self) {
        while !self.out.is_empty() {
            match self.write_out() {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(log = %self.log.path().display(), "writing an instance's log: {e}; retrying");
                    tokio::time::sleep(WRITE_RETRY).await;
                }
            }
        }
    }

    fn write_out(&mut self) -> io::Result<()> {
        self.file.write_all(&self.out)?;
        self.len += self.out.len() as u64;
        self.out.clear();
        let since = *self.since.get_or_insert_with(std::time::Instant::now);
        let policy = self.log.policy();
        if self.len > policy.max_bytes || policy.max_age.is_some_and(|age| since.elapsed() >= age) {
            self.rotate()?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let log = &self.log;
        let keep = log.policy().keep;
        let _guard = log.rotation.lock().unwrap_or_else(|e| e.into_inner());
        for (k, path) in log.rotated_files()? {
            if k >= keep {
                super::remove_if_exists(&path)?;
            }
        }
        for k in (1..keep).rev() {
            let from = log.rotated_path(k);
            if from.exists() {
                fs::rename(&from, log.rotated_path(k + 1))?;
            }
        }
        if keep > 0 {
            fs::rename(log.path(), log.rotated_path(1))?;
        } else {
            super::remove_if_exists(log.path())?;
        }
        self.file = super::append(log.path())?;
        self.len = 0;
        self.since = None;
        Ok(())
    }
}

/// Writes `text` as records of at most [`MAX_RECORD`] bytes: parts (`P`), then a last one
/// that is a part too when `partial`, or ends the line.
fn push_record(
    out: &mut Vec<u8>,
    redactor: Option<&Redactor>,
    timestamp_ns: i64,
    stream: Stream,
    text: &[u8],
    partial: bool,
) {
    let redacted = redactor.and_then(|r| r.redact_str(&String::from_utf8_lossy(text)));
    let mut rest = match &redacted {
        Some((clean, _)) => clean.as_bytes(),
        None => text,
    };
    while rest.len() > MAX_RECORD {
        let cut = utf8_cut(rest, MAX_RECORD);
        push_one(out, timestamp_ns, stream, &rest[..cut], true);
        rest = &rest[cut..];
    }
    push_one(out, timestamp_ns, stream, rest, partial);
}

fn push_one(out: &mut Vec<u8>, timestamp_ns: i64, stream: Stream, text: &[u8], partial: bool) {
    cri::write_prefix(out, timestamp_ns, stream, partial);
    // Output that is not UTF-8 is kept readable: invalid bytes become U+FFFD.
    match std::str::from_utf8(text) {
        Ok(_) => out.extend_from_slice(text),
        Err(_) => out.extend_from_slice(String::from_utf8_lossy(text).as_bytes()),
    }
    out.push(b'\n');
}

/// The largest length up to `max` that does not cut a UTF-8 character of `bytes` in two.
fn utf8_cut(bytes: &[u8], max: usize) -> usize {
    let mut cut = max.min(bytes.len());
    while cut > 0 && cut < bytes.len() && bytes[cut] & 0xC0 == 0x80 {
        cut -= 1;
    }
    if cut == 0 { max.min(bytes.len()) } else { cut }
}
