//! JSON lines in files, rotated by size without losing a line.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use deploykit_core::{Error, Result};

use super::Forwarder;
use crate::record::Record;

/// Writes records as JSON lines (see [`Record::write_json`]) to `<dir>/<name>.log`, rotated by
/// size: when the next line would take the file past `max_bytes`, the file is flushed and
/// renamed to `<dir>/<name>.<n>.log` (n = 1, 2, …) and a new `<name>.log` is opened. Every line
/// is written whole to exactly one file, so no line is lost or split by a rotation; a line
/// longer than `max_bytes` gets a file of its own.
///
/// Writes are buffered (and the buffer flushed after every batch); the I/O is blocking and
/// short, done on the calling task.
#[derive(Debug)]
pub struct FileForwarder {
    dir: PathBuf,
    name: String,
    max_bytes: u64,
    state: Mutex<FileState>,
}

#[derive(Debug)]
struct FileState {
    writer: BufWriter<File>,
    written: u64,
    next_sequence: u64,
    encoded: Vec<u8>,
}

impl FileForwarder {
    /// Opens (creating `dir` and the file, or appending to an existing `<name>.log`) a
    /// forwarder rotating at `max_bytes` (at least 1).
    pub fn create(dir: impl Into<PathBuf>, name: &str, max_bytes: u64) -> Result<Self> {
        let dir = dir.into();
        if name.is_empty() || name.contains(['/', '\\']) {
            return Err(Error::invalid(
                "forwarder.file.name",
                format!("{name:?} is not a file name"),
            ));
        }
        std::fs::create_dir_all(&dir)
            .map_err(|error| io_error("create the log directory", &dir, error))?;
        let next_sequence = rotated_files(&dir, name)?
            .last()
            .map_or(1, |(sequence, _)| sequence + 1);
        let current = dir.join(format!("{name}.log"));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&current)
            .map_err(|error| io_error("open the log file", &current, error))?;
        let written = file
            .metadata()
            .map_err(|error| io_error("read the size of", &current, error))?
            .len();
        Ok(FileForwarder {
            dir,
            name: name.to_string(),
            max_bytes: max_bytes.max(1),
            state: Mutex::new(FileState {
                writer: BufWriter::with_capacity(256 * 1024, file),
                written,
                next_sequence,
                encoded: Vec::with_capacity(4096),
            }),
        })
    }

    /// The file being written.
    pub fn current_path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.name))
    }

    /// Every file written, oldest first: the rotated ones, then the current one.
    pub fn files(&self) -> Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = rotated_files(&self.dir, &self.name)?
            .into_iter()
            .map(|(_, path)| path)
            .collect();
        files.push(self.current_path());
        Ok(files)
    }

    /// Writes `batch` synchronously (what [`Forwarder::send`] does).
    pub fn write_batch(&self, batch: &[Record]) -> Result<()> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let state = &mut *state;
        for record in batch {
            state.encoded.clear();
            record.write_json(&mut state.encoded);
            state.encoded.push(b'\n');
            let length = state.encoded.len() as u64;
            if state.written > 0 && state.written + length > self.max_bytes {
                self.rotate(state)?;
            }
            state
                .writer
                .write_all(&state.encoded)
                .map_err(|error| io_error("write", &self.current_path(), error))?;
            state.written += length;
        }
        state
            .writer
            .flush()
            .map_err(|error| io_error("write", &self.current_path(), error))
    }

    fn rotate(&self, state: &mut FileState) -> Result<()> {
        let current = self.current_path();
        state
            .writer
            .flush()
            .map_err(|error| io_error("write", &current, error))?;
        let rotated = self
            .dir
            .join(format!("{}.{}.log", self.name, state.next_sequence));
        std::fs::rename(&current, &rotated).map_err(|error| io_error("rotate", &current, error))?;
        state.next_sequence += 1;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&current)
            .map_err(|error| io_error("open the log file", &current, error))?;
        state.writer = BufWriter::with_capacity(256 * 1024, file);
        state.written = 0;
        Ok(())
    }
}

#[async_trait]
impl Forwarder for FileForwarder {
    fn name(&self) -> &str {
        "file"
    }

    async fn send(&self, batch: &[Record]) -> Result<()> {
        self.write_batch(batch)
    }

    async fn flush(&self) -> Result<()> {
        let state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state
            .writer
            .get_ref()
            .sync_data()
            .map_err(|error| io_error("sync", &self.current_path(), error))
    }
}

/// The rotated files `<name>.<n>.log` in `dir`, by `n`.
fn rotated_files(dir: &Path, name: &str) -> Result<Vec<(u64, PathBuf)>> {
    let entries = std::fs::read_dir(dir).map_err(|error| io_error("list", dir, error))?;
    let prefix = format!("{name}.");
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| io_error("list", dir, error))?;
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        let Some(sequence) = file_name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".log"))
            .and_then(|number| number.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((sequence, entry.path()));
    }
    found.sort();
    Ok(found)
}

fn io_error(action: &str, path: &Path, error: std::io::Error) -> Error {
    Error::backend(
        "logs.forward.file",
        format!("cannot {action} {}: {error}", path.display()),
    )
}
