//! The disk backlog of a [`Reliable`](super::Reliable) forwarder: batches its destination did
//! not take, one file each, oldest first.
//!
//! A batch is the file `<dir>/<sequence, 20 digits>-<records>.jsonl`: its records as JSON
//! lines (see [`Record::write_json`]), written to a temporary file, fsync'd, renamed into
//! place and the directory fsync'd, so a crash leaves either the whole batch or none of it.
//! The files together hold at most `max_bytes`: past that the oldest records are dropped (and
//! counted), whole files first.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use deploykit_core::{Error, Result};

use crate::record::Record;

/// One batch on disk.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) sequence: u64,
    pub(crate) records: u64,
    pub(crate) bytes: u64,
    pub(crate) path: PathBuf,
}

/// The backlog directory and what it holds.
#[derive(Debug)]
pub(crate) struct Backlog {
    dir: PathBuf,
    entries: VecDeque<Entry>,
    bytes: u64,
    max_bytes: u64,
    next_sequence: u64,
}

impl Backlog {
    /// Opens `dir` (created if missing), taking up the batches a previous process left; if
    /// they exceed `max_bytes` the oldest are dropped, and their records returned as the
    /// second value.
    pub(crate) fn open(dir: &Path, max_bytes: u64) -> Result<(Backlog, u64)> {
        std::fs::create_dir_all(dir)
            .map_err(|error| io_error("create the backlog directory", dir, error))?;
        let mut entries = Vec::new();
        let listing = std::fs::read_dir(dir).map_err(|error| io_error("list", dir, error))?;
        for item in listing {
            let item = item.map_err(|error| io_error("list", dir, error))?;
            let path = item.path();
            let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
                continue;
            };
            if name.ends_with(".tmp") {
                // A batch whose write was interrupted: it was never acknowledged as taken.
                std::fs::remove_file(&path)
                    .map_err(|error| io_error("remove the partial batch", &path, error))?;
                continue;
            }
            let Some((sequence, records)) = parse_name(name) else {
                continue;
            };
            let bytes = item
                .metadata()
                .map_err(|error| io_error("read the size of", &path, error))?
                .len();
            entries.push(Entry {
                sequence,
                records,
                bytes,
                path,
            });
        }
        entries.sort_by_key(|entry| entry.sequence);
        let next_sequence = entries.last().map_or(1, |entry| entry.sequence + 1);
        let mut backlog = Backlog {
            dir: dir.to_path_buf(),
            bytes: entries.iter().map(|entry| entry.bytes).sum(),
            entries: entries.into(),
            max_bytes,
            next_sequence,
        };
        let dropped = backlog.make_room(0)?;
        Ok((backlog, dropped))
    }

    /// Whether no batch is waiting.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The oldest batch.
    pub(crate) fn front(&self) -> Option<&Entry> {
        self.entries.front()
    }

    /// Batches, records and bytes waiting.
    pub(crate) fn totals(&self) -> (u64, u64, u64) {
        let records = self.entries.iter().map(|entry| entry.records).sum();
        (self.entries.len() as u64, records, self.bytes)
    }

    /// Appends `batch` as the newest file, dropping the oldest records (files first, then the
    /// oldest records of `batch` itself if it alone is over the limit) to stay within the
    /// byte limit. Returns how many records were dropped.
    pub(crate) fn append(&mut self, batch: &[Record]) -> Result<u64> {
        let mut lines: Vec<Vec<u8>> = batch
            .iter()
            .map(|record| {
                let mut line = Vec::with_capacity(record.line.len() + 160);
                record.write_json(&mut line);
                line.push(b'\n');
                line
            })
            .collect();
        let mut dropped = 0u64;
        let mut size: u64 = lines.iter().map(|line| line.len() as u64).sum();
        let mut skip = 0;
        while size > self.max_bytes && skip < lines.len() {
            size -= lines[skip].len() as u64;
            skip += 1;
            dropped += 1;
        }
        lines.drain(..skip);
        if lines.is_empty() {
            return Ok(dropped);
        }
        dropped += self.make_room(size)?;
        let sequence = self.next_sequence;
        let name = format!("{sequence:020}-{}.jsonl", lines.len());
        let path = self.dir.join(&name);
        let temporary = self.dir.join(format!("{name}.tmp"));
        let written = (|| {
            let mut file = File::create(&temporary)?;
            for line in &lines {
                file.write_all(line)?;
            }
            file.sync_all()?;
            std::fs::rename(&temporary, &path)?;
            sync_dir(&self.dir)
        })();
        if let Err(error) = written {
            let _ = std::fs::remove_file(&temporary);
            return Err(io_error("write the backlog batch", &path, error));
        }
        self.next_sequence += 1;
        self.bytes += size;
        self.entries.push_back(Entry {
            sequence,
            records: lines.len() as u64,
            bytes: size,
            path,
        });
        Ok(dropped)
    }

    /// The records of `entry`, in order; [`Error::Corrupt`] naming the file and line if one
    /// does not decode.
    pub(crate) fn read(entry: &Entry) -> Result<Vec<Record>> {
        let text = std::fs::read_to_string(&entry.path)
            .map_err(|error| io_error("read the backlog batch", &entry.path, error))?;
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(number, line)| {
                Record::from_json(line).map_err(|error| Error::Corrupt {
                    what: format!("backlog batch {} line {}", entry.path.display(), number + 1),
                    source: error.chain().into(),
                })
            })
            .collect()
    }

    /// Removes the oldest batch (delivered or given up).
    pub(crate) fn pop_front(&mut self) -> Result<()> {
        if let Some(entry) = self.entries.pop_front() {
            self.bytes -= entry.bytes;
            match std::fs::remove_file(&entry.path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    return Err(io_error("remove the backlog batch", &entry.path, error));
                }
            }
        }
        Ok(())
    }

    /// Sets the oldest batch aside as `<file>.corrupt` (kept for inspection, no longer counted).
    pub(crate) fn quarantine_front(&mut self) -> Result<()> {
        if let Some(entry) = self.entries.pop_front() {
            self.bytes -= entry.bytes;
            let mut aside = entry.path.clone().into_os_string();
            aside.push(".corrupt");
            std::fs::rename(&entry.path, &aside)
                .map_err(|error| io_error("set aside the corrupt batch", &entry.path, error))?;
        }
        Ok(())
    }

    /// Drops the oldest files until `incoming` more bytes fit; returns the records dropped.
    fn make_room(&mut self, incoming: u64) -> Result<u64> {
        let mut dropped = 0;
        while self.bytes + incoming > self.max_bytes {
            let Some(records) = self.entries.front().map(|entry| entry.records) else {
                break;
            };
            self.pop_front()?;
            dropped += records;
        }
        Ok(dropped)
    }
}

/// `<sequence>-<records>.jsonl`.
fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".jsonl")?;
    let (sequence, records) = stem.split_once('-')?;
    Some((sequence.parse().ok()?, records.parse().ok()?))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn io_error(action: &str, path: &Path, error: std::io::Error) -> Error {
    Error::backend(
        "logs.forward.backlog",
        format!("cannot {action} {}: {error}", path.display()),
    )
}
