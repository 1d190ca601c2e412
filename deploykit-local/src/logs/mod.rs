//! Per-instance logs: named pipes the instance writes to, and files its supervisor keeps.
//!
//! An instance's stdout and stderr are named pipes in the log directory
//! (`<instance>.stdout.pipe`, `<instance>.stderr.pipe`). Its supervisor's [`Capture`] reads
//! them and appends every line to `<instance>.log`, stamped with the time it was read and
//! tagged with its stream, in the container runtime interface's log format (the one the
//! kubelet writes):
//!
//! ```text
//! 2026-12-05T15:00:00.123456789Z stdout F listening on :8080
//! ```
//!
//! When the file is larger than [`LogPolicy::max_bytes`], the capture renames it to
//! `<instance>.log.1` (shifting older files up to [`LogPolicy::keep`]) and goes on in a new
//! one: no line is lost to rotation (the copy-truncate rotation of earlier versions lost the
//! lines written during the copy). The pipes outlive the supervisor, so a process adopted by a
//! later supervisor keeps logging; see the `capture` module for the exact guarantees.
//!
//! `<instance>.owner` records the service and revision the instance belongs to, so the logs
//! of instances that are gone can still be read by service and revision. A [`LogReader`]
//! reads the records of one instance (the kept ones, then new ones, across rotations);
//! [`InstanceLog::chunk`] reads the file by byte offset for the daemon's follow API.
//!
//! Unix only (tested on Linux).

mod capture;
mod cri;
mod reader;
mod retention;

pub use capture::Capture;
pub use cri::now_ns;
pub use reader::{LogOwner, LogReader, owners};
pub use retention::{RetentionReport, apply_retention};

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use deploykit_logs::{Redactor, Stream};

use serde::{Deserialize, Serialize};

/// The longest UTF-8 encoding of one character, in bytes.
const MAX_CHAR_BYTES: usize = 4;

/// A piece of an instance's log file read from a byte offset, by [`InstanceLog::chunk`] (and
/// `LocalClient::log_chunk` through the daemon).
///
/// To follow a log, read with `from = None` first, then each time from the last chunk's
/// [`next`](Self::next).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    /// The bytes read, as UTF-8 (invalid bytes replaced by `U+FFFD`); it never ends inside a
    /// character: an incomplete character at the end is left for the next chunk.
    pub text: String,
    /// The offset in the file to read from next time: just past `text`'s bytes.
    pub next: u64,
    /// The file had become shorter than the offset asked for (it was rotated or truncated), so
    /// this chunk starts again at offset 0.
    pub truncated: bool,
}

/// How large an instance's log may grow and how many rotated files are kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogPolicy {
    /// Rotate when the current file is larger than this (default 10 MiB).
    pub max_bytes: u64,
    /// How many rotated files (`.1` … `.keep`) to keep (default 3); 0 keeps none (a full file
    /// is dropped instead of rotated).
    pub keep: u32,
    /// Also rotate a file that has been written to for this long (rotation by age; default
    /// none). The file is rotated at its first write past the age, so an instance that stops
    /// writing keeps its last file until it writes again.
    pub max_age: Option<std::time::Duration>,
}

impl Default for LogPolicy {
    fn default() -> Self {
        LogPolicy {
            max_bytes: 10 * 1024 * 1024,
            keep: 3,
            max_age: None,
        }
    }
}

/// The log file of one instance, `<dir>/<instance>.log`, and its rotated predecessors.
///
/// Cheap to clone; clones share a lock so that two clones never rotate at the same time.
#[derive(Clone, Debug)]
pub struct InstanceLog {
    dir: PathBuf,
    name: String,
    path: PathBuf,
    policy: LogPolicy,
    rotation: Arc<Mutex<()>>,
    /// Secret values the capture replaces before anything is written.
    redactor: Option<Arc<Redactor>>,
}

impl InstanceLog {
    /// Opens (creating `dir`, an empty file and the instance's pipes if needed) the log of
    /// `instance` in `dir`.
    ///
    /// `instance` must be non-empty, made of ASCII letters, digits, `.`, `_` and `-`, and must
    /// not start with a dot; otherwise the error is [`io::ErrorKind::InvalidInput`].
    pub fn open(dir: &Path, instance: &str, policy: LogPolicy) -> io::Result<InstanceLog> {
        validate_instance(instance)?;
        fs::create_dir_all(dir)?;
        let log = InstanceLog::at(dir, instance, policy);
        append(&log.path)?;
        for stream in [Stream::Stdout, Stream::Stderr] {
            capture::make_fifo(&log.pipe_path(stream))?;
        }
        Ok(log)
    }

    /// The log of `instance` in `dir` if its file exists, without creating anything (`None`
    /// when it does not: no instance of that name ever ran with this log directory).
    ///
    /// `instance` must be a valid name, as for [`open`](Self::open).
    pub fn existing(
        dir: &Path,
        instance: &str,
        policy: LogPolicy,
    ) -> io::Result<Option<InstanceLog>> {
        validate_instance(instance)?;
        let log = InstanceLog::at(dir, instance, policy);
        if !log.path.try_exists()? {
            return Ok(None);
        }
        Ok(Some(log))
    }

    fn at(dir: &Path, instance: &str, policy: LogPolicy) -> InstanceLog {
        InstanceLog {
            dir: dir.to_path_buf(),
            name: instance.to_string(),
            path: dir.join(format!("{instance}.log")),
            policy,
            rotation: Arc::new(Mutex::new(())),
            redactor: None,
        }
    }

    /// The same log, with `secrets` (the secret values the instance is given) replaced by
    /// `[REDACTED]` in every line the capture writes, so no file of the hot store, and nothing
    /// read or shipped from it, holds them. A value split by a line longer than 16 KiB (written
    /// in parts) may escape; the shipping pipeline redacts again.
    pub fn redacting<S: AsRef<str>>(
        mut self,
        secrets: impl IntoIterator<Item = S>,
    ) -> deploykit_core::Result<InstanceLog> {
        let redactor = Redactor::new(secrets, Vec::new())?;
        self.redactor = (!redactor.is_empty()).then(|| Arc::new(redactor));
        Ok(self)
    }

    /// The instance's name.
    pub fn instance(&self) -> &str {
        &self.name
    }

    /// The current log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The named pipe the instance writes `stream` to.
    pub fn pipe_path(&self, stream: Stream) -> PathBuf {
        self.dir
            .join(format!("{}.{}.pipe", self.name, stream.as_str()))
    }

    /// The lock file a capture holds while it runs.
    fn capture_lock_path(&self) -> PathBuf {
        self.dir.join(format!(".{}.capture.lock", self.name))
    }

    /// The rotation policy.
    pub fn policy(&self) -> &LogPolicy {
        &self.policy
    }

    /// The path of the `k`-th rotated file (`<instance>.log.k`, 1 being the newest).
    pub fn rotated_path(&self, k: u32) -> PathBuf {
        self.dir.join(format!("{}.log.{k}", self.name))
    }

    /// The child's stdout and stderr: its ends of the two pipes.
    pub fn stdio(&self) -> io::Result<(File, File)> {
        Ok((
            capture::child_end(&self.pipe_path(Stream::Stdout))?,
            capture::child_end(&self.pipe_path(Stream::Stderr))?,
        ))
    }

    /// Starts moving what the instance writes to its pipes into the log file (one capture per
    /// instance at a time: the supervisor's). Must be called inside a tokio runtime.
    pub fn capture(&self) -> io::Result<Capture> {
        capture::start(self)
    }

    /// Records that the instance belongs to `owner` (kept beside the log, so the logs of an
    /// instance that is gone are still found by service and revision).
    pub fn set_owner(&self, owner: &LogOwner) -> io::Result<()> {
        reader::write_owner(&self.dir, &self.name, owner)
    }

    /// Up to the last `max_bytes` bytes of the instance's output (stdout and stderr
    /// interleaved, without the time and stream of each line; from the end of the last
    /// rotated file too, if the current one holds fewer), as (lossy) UTF-8 starting at a
    /// character.
    pub fn tail(&self, max_bytes: usize) -> io::Result<String> {
        if max_bytes == 0 {
            return Ok(String::new());
        }
        // Each line carries about 40 bytes of time, stream and tag in the file.
        let want = max_bytes.saturating_mul(2).saturating_add(4096);
        let current = read_tail(&self.path, want)?;
        let raw = if current.len() < want {
            let mut older = read_tail(&self.rotated_path(1), want - current.len())?;
            older.extend_from_slice(&current);
            older
        } else {
            current
        };
        // The first line may be cut: start after its end, unless the whole file was read.
        let start = if raw.len() >= want {
            raw.iter()
                .position(|&b| b == b'\n')
                .map_or(raw.len(), |i| i + 1)
        } else {
            0
        };
        let mut text = output_text(&raw[start..]).into_bytes();
        if text.len() > max_bytes {
            text.drain(..text.len() - max_bytes);
            let skip = continuation_bytes(&text);
            text.drain(..skip);
        }
        Ok(String::from_utf8_lossy(&text).into_owned())
    }

    /// A piece of the current file, of at most `max_bytes` bytes of the file (at least one
    /// line's worth is read whatever `max_bytes` is), turned into the instance's output (the
    /// time and stream of each line left out):
    ///
    /// - `from = None`: the file's last lines;
    /// - `from = Some(offset)`: from `offset` on; if the file is now shorter than `offset` (it
    ///   was rotated since), from 0 again, with [`LogChunk::truncated`] set.
    ///
    /// Only whole lines of the file are read; [`LogChunk::next`] is where to read from next
    /// time (just past the last whole line). `max_bytes = 0` reads nothing and only tells that
    /// offset (the end of the file, for `None`).
    ///
    /// A rotation is seen as such only while the new file is still shorter than `offset`; a
    /// [`LogReader`] follows rotations exactly. The error is [`io::ErrorKind::NotFound`] if
    /// the file is gone.
    pub fn chunk(&self, from: Option<u64>, max_bytes: usize) -> io::Result<LogChunk> {
        let mut file = File::open(&self.path)?;
        let len = file.metadata()?.len();
        let max = match max_bytes {
            0 => 0,
            n => n.max(cri::MAX_RECORD + 256),
        };
        let (start, truncated) = match from {
            None => (len.saturating_sub(max as u64), false),
            Some(offset) if offset > len => (0, true),
            Some(offset) => (offset, false),
        };
        let mut bytes = Vec::with_capacity(max.min((len - start) as usize));
        file.seek(SeekFrom::Start(start))?;
        file.take(max as u64).read_to_end(&mut bytes)?;
        // A tail may begin inside a line: start at the next one.
        let skip = if from.is_none() && start > 0 {
            bytes
                .iter()
                .position(|&b| b == b'\n')
                .map_or(bytes.len(), |i| i + 1)
        } else {
            0
        };
        let end = bytes
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1)
            .max(skip);
        Ok(LogChunk {
            text: output_text(&bytes[skip..end]),
            next: start + end as u64,
            truncated,
        })
    }

    /// The last non-empty line of the log, trimmed and cut to 200 characters; for failure
    /// reasons (`last output: panic: boom`).
    pub fn last_line(&self) -> Option<String> {
        let tail = self.tail(8 * 1024).ok()?;
        let line = tail.lines().map(str::trim).rfind(|l| !l.is_empty())?;
        Some(truncate_chars(line, 200))
    }

    /// Deletes the current file, every rotated file, the pipes and the owner record.
    pub fn remove(&self) -> io::Result<()> {
        let _guard = self.rotation.lock().unwrap_or_else(|e| e.into_inner());
        remove_if_exists(&self.path)?;
        for (_, path) in self.rotated_files()? {
            remove_if_exists(&path)?;
        }
        self.close_pipes()?;
        remove_if_exists(&reader::owner_path(&self.dir, &self.name))
    }

    /// Removes the pipes and the capture's lock, keeping the log: for an instance that has
    /// stopped for good (its supervisor calls it once the capture has taken in everything).
    /// A leftover named pipe would block any program that reads the directory's files.
    pub fn close_pipes(&self) -> io::Result<()> {
        for stream in [Stream::Stdout, Stream::Stderr] {
            remove_if_exists(&self.pipe_path(stream))?;
        }
        remove_if_exists(&self.capture_lock_path())
    }

    /// Every `<instance>.log.<k>` in the directory, with its `k`, oldest (largest `k`) first.
    fn rotated_files(&self) -> io::Result<Vec<(u32, PathBuf)>> {
        let prefix = format!("{}.log.", self.name);
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry?;
            let file_name = entry.file_name();
            let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
                continue;
            };
            if rest.bytes().all(|b| b.is_ascii_digit())
                && let Ok(k) = rest.parse::<u32>()
            {
                files.push((k, entry.path()));
            }
        }
        files.sort_by_key(|file| std::cmp::Reverse(file.0));
        Ok(files)
    }
}

/// The output in whole lines of a log file: each record's text, parts joined into their
/// line, one line per `\n`. Lines not in the file's format (a file of an older version) are
/// kept as they are.
fn output_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    for line in text.split_terminator('\n') {
        match cri::parse(line) {
            Some(record) => {
                out.push_str(record.text);
                if !record.partial {
                    out.push('\n');
                }
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// How many UTF-8 continuation bytes (at most 3) `bytes` starts with.
fn continuation_bytes(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .take(MAX_CHAR_BYTES - 1)
        .take_while(|b| is_continuation(**b))
        .count()
}

fn is_continuation(byte: u8) -> bool {
    byte & 0xC0 == 0x80
}

pub(crate) fn validate_instance(instance: &str) -> io::Result<()> {
    let problem = if instance.is_empty() {
        Some("must not be empty")
    } else if instance.starts_with('.') {
        Some("must not start with a dot")
    } else if !instance
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("may only contain ASCII letters, digits, '.', '_' and '-'")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid instance name {instance:?} for a log file: {problem}"),
        )),
        None => Ok(()),
    }
}

fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The last `max` bytes of a file; empty when it does not exist.
fn read_tail(path: &Path, max: usize) -> io::Result<Vec<u8>> {
    if max == 0 {
        return Ok(Vec::new());
    }
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let start = len.saturating_sub(max as u64);
    file.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::with_capacity((len - start) as usize);
    file.take(max as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// `s` cut to at most `max` characters, ending in `…` when cut.
pub(crate) fn truncate_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut cut: String = s.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_text_joins_parts_and_keeps_foreign_lines() {
        let file = "2026-12-05T15:00:00.000000001Z stdout F one\n\
                    2026-12-05T15:00:00.000000002Z stderr P tw\n\
                    2026-12-05T15:00:00.000000003Z stderr F o\n\
                    raw line of an old file\n";
        assert_eq!(
            output_text(file.as_bytes()),
            "one\ntwo\nraw line of an old file\n"
        );
        let euro = "€".as_bytes(); // E2 82 AC
        assert_eq!(continuation_bytes(&euro[1..]), 2);
        assert_eq!(continuation_bytes(b"abc"), 0);
    }
}
