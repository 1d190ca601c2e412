//! Per-instance log files with size-based, copy-truncate rotation.
//!
//! An instance's stdout and stderr go straight into `<dir>/<instance>.log`, opened with
//! `O_APPEND` and handed to the child as its standard streams, so the child keeps logging even
//! when the supervising process dies and a later one adopts it.
//!
//! Rotation works like logrotate's `copytruncate`: when the file is larger than
//! [`LogPolicy::max_bytes`], `<instance>.log.k` becomes `<instance>.log.(k+1)` (dropping those
//! beyond [`LogPolicy::keep`]), the current file is copied to `<instance>.log.1` and then
//! truncated to zero. Writers opened with `O_APPEND` simply continue at the new end. As with
//! logrotate, output written between the copy and the truncation is lost.
//!
//! [`InstanceLog::chunk`] reads the current file by byte offset, for following a log
//! (`deploykit logs -f`): each [`LogChunk`] says where to read from next, and whether the file
//! was rotated (truncated) since the last read.
//!
//! Unix only (tested on Linux).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
    /// How many rotated files (`.1` … `.keep`) to keep (default 3); 0 keeps none, rotation then
    /// only truncates.
    pub keep: u32,
}

impl Default for LogPolicy {
    fn default() -> Self {
        LogPolicy {
            max_bytes: 10 * 1024 * 1024,
            keep: 3,
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
}

impl InstanceLog {
    /// Opens (creating `dir` and an empty file if needed) the log of `instance` in `dir`.
    ///
    /// `instance` must be non-empty, made of ASCII letters, digits, `.`, `_` and `-`, and must
    /// not start with a dot; otherwise the error is [`io::ErrorKind::InvalidInput`].
    pub fn open(dir: &Path, instance: &str, policy: LogPolicy) -> io::Result<InstanceLog> {
        validate_instance(instance)?;
        fs::create_dir_all(dir)?;
        let path = dir.join(format!("{instance}.log"));
        append(&path)?;
        Ok(InstanceLog {
            dir: dir.to_path_buf(),
            name: instance.to_string(),
            path,
            policy,
            rotation: Arc::new(Mutex::new(())),
        })
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
        let path = dir.join(format!("{instance}.log"));
        if !path.try_exists()? {
            return Ok(None);
        }
        Ok(Some(InstanceLog {
            dir: dir.to_path_buf(),
            name: instance.to_string(),
            path,
            policy,
            rotation: Arc::new(Mutex::new(())),
        }))
    }

    /// The current log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The rotation policy.
    pub fn policy(&self) -> &LogPolicy {
        &self.policy
    }

    /// The path of the `k`-th rotated file (`<instance>.log.k`, 1 being the newest).
    pub fn rotated_path(&self, k: u32) -> PathBuf {
        self.dir.join(format!("{}.log.{k}", self.name))
    }

    /// Two append-mode handles on the current file, for a child's stdout and stderr.
    pub fn stdio(&self) -> io::Result<(File, File)> {
        Ok((append(&self.path)?, append(&self.path)?))
    }

    /// Rotates when the current file is larger than [`LogPolicy::max_bytes`]; returns whether it
    /// did.
    pub fn rotate_if_needed(&self) -> io::Result<bool> {
        let _guard = self.rotation.lock().unwrap_or_else(|e| e.into_inner());
        let len = match fs::metadata(&self.path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        if len <= self.policy.max_bytes {
            return Ok(false);
        }
        let keep = self.policy.keep;
        // Files beyond `keep` (left over from a larger `keep`, or the oldest one) go.
        for (k, path) in self.rotated_files()? {
            if k >= keep {
                remove_if_exists(&path)?;
            }
        }
        if keep > 0 {
            for k in (1..keep).rev() {
                let from = self.rotated_path(k);
                if from.exists() {
                    fs::rename(&from, self.rotated_path(k + 1))?;
                }
            }
            fs::copy(&self.path, self.rotated_path(1))?;
        }
        OpenOptions::new()
            .write(true)
            .open(&self.path)?
            .set_len(0)?;
        Ok(true)
    }

    /// Up to the last `max_bytes` bytes of the log as (lossy) UTF-8: from the current file, and
    /// from the end of `.1` when the current file holds fewer bytes (it was just rotated).
    pub fn tail(&self, max_bytes: usize) -> io::Result<String> {
        let current = read_tail(&self.path, max_bytes)?;
        let mut bytes = if current.len() < max_bytes {
            let mut older = read_tail(&self.rotated_path(1), max_bytes - current.len())?;
            older.extend_from_slice(&current);
            older
        } else {
            current
        };
        // Do not start in the middle of a UTF-8 sequence.
        if bytes.len() >= max_bytes {
            let skip = bytes
                .iter()
                .take(3)
                .take_while(|b| (**b & 0xC0) == 0x80)
                .count();
            bytes.drain(..skip);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// A piece of the current file, of at most `max_bytes` bytes (at least 4 unless 0, so that
    /// a character always fits):
    ///
    /// - `from = None`: the file's last bytes (starting at a character, not inside one);
    /// - `from = Some(offset)`: from `offset` on; if the file is now shorter than `offset` (it
    ///   was rotated or truncated since), from 0 again, with [`LogChunk::truncated`] set.
    ///
    /// [`LogChunk::next`] is where to read from next time. `max_bytes = 0` reads nothing and
    /// only tells that offset (the end of the file, for `None`).
    ///
    /// A rotation is seen as such only while the file is still shorter than `offset`: a file
    /// rotated and then written past `offset` again between two reads is read on from
    /// `offset`. The error is [`io::ErrorKind::NotFound`] if the file is gone.
    pub fn chunk(&self, from: Option<u64>, max_bytes: usize) -> io::Result<LogChunk> {
        let mut file = File::open(&self.path)?;
        let len = file.metadata()?.len();
        let max = match max_bytes {
            0 => 0,
            n => n.max(MAX_CHAR_BYTES),
        };
        let (start, truncated) = match from {
            None => (len.saturating_sub(max as u64), false),
            Some(offset) if offset > len => (0, true),
            Some(offset) => (offset, false),
        };
        let mut bytes = Vec::with_capacity(max.min((len - start) as usize));
        file.seek(SeekFrom::Start(start))?;
        file.take(max as u64).read_to_end(&mut bytes)?;
        // A tail may begin inside a character: start at the next one.
        let skip = if from.is_none() && start > 0 {
            continuation_bytes(&bytes)
        } else {
            0
        };
        let end = skip + complete_prefix(&bytes[skip..]);
        Ok(LogChunk {
            text: String::from_utf8_lossy(&bytes[skip..end]).into_owned(),
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

    /// Deletes the current file and every rotated file.
    pub fn remove(&self) -> io::Result<()> {
        let _guard = self.rotation.lock().unwrap_or_else(|e| e.into_inner());
        remove_if_exists(&self.path)?;
        for (_, path) in self.rotated_files()? {
            remove_if_exists(&path)?;
        }
        Ok(())
    }

    /// Every `<instance>.log.<k>` in the directory, with its `k`.
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
        Ok(files)
    }
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

/// The length of `bytes` without a trailing incomplete character: a lead byte followed by
/// fewer continuation bytes than it announces (more may still be written). Invalid bytes are
/// kept (they are replaced when decoded), so only a character that could still complete is
/// held back.
fn complete_prefix(bytes: &[u8]) -> usize {
    let window = bytes.len().saturating_sub(MAX_CHAR_BYTES);
    let Some(lead) = (window..bytes.len())
        .rev()
        .find(|&i| !is_continuation(bytes[i]))
    else {
        return bytes.len();
    };
    let width = match bytes[lead] {
        b if b < 0x80 => 1,
        b if b & 0xE0 == 0xC0 => 2,
        b if b & 0xF0 == 0xE0 => 3,
        b if b & 0xF8 == 0xF0 => 4,
        _ => return bytes.len(),
    };
    if bytes.len() - lead < width {
        lead
    } else {
        bytes.len()
    }
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
    fn an_incomplete_trailing_character_is_held_back() {
        let euro = "€".as_bytes(); // E2 82 AC
        assert_eq!(complete_prefix(b""), 0);
        assert_eq!(complete_prefix(b"abc"), 3);
        assert_eq!(complete_prefix(euro), 3);
        assert_eq!(complete_prefix(&[b'a', euro[0]]), 1);
        assert_eq!(complete_prefix(&[b'a', euro[0], euro[1]]), 1);
        let four = "😀".as_bytes();
        assert_eq!(complete_prefix(&four[..3]), 0);
        assert_eq!(complete_prefix(four), 4);
        // Invalid bytes are not waited for: a stray continuation byte, a byte never valid.
        assert_eq!(complete_prefix(&[b'a', 0x82]), 2);
        assert_eq!(complete_prefix(&[b'a', 0xFF]), 2);
        assert_eq!(complete_prefix(&[0x82, 0x82, 0x82, 0x82, 0x82]), 5);
        assert_eq!(continuation_bytes(&euro[1..]), 2);
        assert_eq!(continuation_bytes(b"abc"), 0);
    }
}
