//! Reading an instance's records back: the kept ones, then new ones as the capture writes
//! them, across rotations, each exactly once.

use std::fs::{self, File};
use std::io::{self, Read as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use deploykit_logs::{Record, Source, Stream};
use serde::{Deserialize, Serialize};

use super::{InstanceLog, LogPolicy, cri};

/// Who an instance's log belongs to, kept beside it as `<instance>.owner`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogOwner {
    /// The service.
    pub service: String,
    /// The revision the instance runs.
    pub revision: String,
}

pub(super) fn owner_path(dir: &Path, instance: &str) -> PathBuf {
    dir.join(format!("{instance}.owner"))
}

pub(super) fn write_owner(dir: &Path, instance: &str, owner: &LogOwner) -> io::Result<()> {
    let path = owner_path(dir, instance);
    let json = serde_json::to_vec(owner).map_err(io::Error::other)?;
    if fs::read(&path).ok().as_deref() == Some(&json[..]) {
        return Ok(());
    }
    let temporary = dir.join(format!(".{instance}.owner.tmp"));
    fs::write(&temporary, &json)?;
    fs::rename(&temporary, &path)
}

/// The logs in `dir` with their owners: every instance that ever logged there and recorded
/// its owner, sorted by instance name. Unreadable owner records are skipped (with a warning).
pub fn owners(dir: &Path, policy: &LogPolicy) -> io::Result<Vec<(InstanceLog, LogOwner)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(instance) = name.to_str().and_then(|n| n.strip_suffix(".owner")) else {
            continue;
        };
        if instance.starts_with('.') {
            continue;
        }
        let owner = fs::read(entry.path())
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                serde_json::from_slice::<LogOwner>(&bytes).map_err(|e| e.to_string())
            });
        match (owner, InstanceLog::existing(dir, instance, policy.clone())) {
            (Ok(owner), Ok(Some(log))) => found.push((log, owner)),
            (Err(e), _) => {
                tracing::warn!(path = %entry.path().display(), "unreadable log owner record: {e}")
            }
            _ => {}
        }
    }
    found.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    Ok(found)
}

/// Reads the records of one instance's log: [`LogReader::open`] returns the kept ones (the
/// rotated files, oldest first, then the current file), [`LogReader::poll`] the ones written
/// since, following the file through rotations (as `tail -F` does: the open file is read to
/// its end before the new one is opened), each record exactly once.
///
/// A line the capture wrote in parts (`P` records) comes back as one record, with the time
/// of its first part. Lines of a file not in the capture's format (an older version's raw
/// output) come back as stdout records with the file's modification time.
#[derive(Debug)]
pub struct LogReader {
    log: InstanceLog,
    /// The file being read (the current one when last looked), and its inode.
    file: Option<(File, u64)>,
    parser: LineParser,
}

/// Turns the bytes of log files into records.
#[derive(Debug)]
struct LineParser {
    source: Arc<Source>,
    /// Bytes after the last whole line read.
    pending: Vec<u8>,
    /// Each stream's line begun in parts: its time and text so far.
    parts: [Option<(i64, String)>; 2],
    /// The time given to lines of a file not in the capture's format.
    foreign_ns: i64,
}

impl LogReader {
    /// Opens `log`, giving its records `source`; returns the reader and the kept records.
    pub fn open(log: InstanceLog, source: Arc<Source>) -> io::Result<(LogReader, Vec<Record>)> {
        let mut reader = LogReader {
            log,
            file: None,
            parser: LineParser {
                source,
                pending: Vec::new(),
                parts: [None, None],
                foreign_ns: 0,
            },
        };
        let mut records = Vec::new();
        // The current file first, so that a rotation from here on moves it to `.1`, where it
        // is recognised by its inode and left for `poll`.
        for _attempt in 0..5 {
            records.clear();
            reader.parser.pending.clear();
            reader.parser.parts = [None, None];
            reader.file = open_with_inode(reader.log.path())?;
            let current = reader.file.as_ref().map(|(_, inode)| *inode);
            let mut rotated = Vec::new();
            for (_, path) in reader.log.rotated_files()? {
                if let Some((file, inode)) = open_with_inode(&path)?
                    && Some(inode) != current
                {
                    rotated.push(file);
                }
            }
            // Rotated twice meanwhile: the files opened may not be the ones listed; again.
            if open_with_inode(reader.log.path())?.map(|(_, inode)| inode) != current {
                continue;
            }
            for mut file in rotated {
                reader.parser.foreign_ns = modified_ns(&file);
                let mut bytes = Vec::new();
                file.read_to_end(&mut bytes)?;
                reader.parser.take(&bytes, &mut records);
                // A file ends with a whole line; anything after the last `\n` is not a record.
                reader.parser.pending.clear();
            }
            reader.poll_into(&mut records)?;
            return Ok((reader, records));
        }
        Err(io::Error::other(format!(
            "{} kept being rotated while it was read",
            reader.log.path().display()
        )))
    }

    /// The records written since the last call (or since [`open`](Self::open)).
    pub fn poll(&mut self) -> io::Result<Vec<Record>> {
        let mut records = Vec::new();
        self.poll_into(&mut records)?;
        Ok(records)
    }

    fn poll_into(&mut self, records: &mut Vec<Record>) -> io::Result<()> {
        let mut buffer = Vec::new();
        loop {
            let Some((mut file, inode)) = self
                .file
                .take()
                .map(Ok)
                .or_else(|| open_with_inode(self.log.path()).transpose())
                .transpose()?
            else {
                return Ok(());
            };
            buffer.clear();
            let read = file.read_to_end(&mut buffer);
            if !buffer.is_empty() {
                self.parser.foreign_ns = modified_ns(&file);
                self.parser.take(&buffer, records);
            }
            if let Err(e) = read {
                self.file = Some((file, inode));
                return Err(e);
            }
            // At the end of the file: if the path is another file now, this one was rotated
            // away and is complete (the capture renames before it writes to a new file); read
            // what was written between the read above and the rename, then go on with the new
            // file from its start.
            match open_with_inode(self.log.path())? {
                Some((_, now_inode)) if now_inode == inode => {
                    self.file = Some((file, inode));
                    return Ok(());
                }
                Some(_) => {
                    buffer.clear();
                    file.read_to_end(&mut buffer)?;
                    self.parser.take(&buffer, records);
                    self.parser.pending.clear();
                    self.file = self.successor(inode)?;
                }
                None => {
                    self.file = Some((file, inode));
                    return Ok(());
                }
            }
        }
    }

    /// The file written after the one with `inode` (rotated away): the next newer rotated
    /// file, or the current one. If it was rotated so often that it is gone, the oldest file
    /// still kept.
    fn successor(&self, inode: u64) -> io::Result<Option<(File, u64)>> {
        let listing = || -> io::Result<Vec<(u32, u64)>> {
            let mut inodes = Vec::new();
            for (k, path) in self.log.rotated_files()? {
                if let Ok(meta) = fs::metadata(&path) {
                    inodes.push((k, meta.ino()));
                }
            }
            Ok(inodes)
        };
        for _attempt in 0..5 {
            let before = listing()?;
            let next = match before.iter().find(|(_, i)| *i == inode) {
                Some((1, _)) => self.log.path().to_path_buf(),
                Some((k, _)) => self.log.rotated_path(k - 1),
                None => {
                    tracing::warn!(
                        log = %self.log.path().display(),
                        "the log was rotated past its kept files while being read; \
                         lines in between are not read"
                    );
                    match before.first() {
                        Some((k, _)) => self.log.rotated_path(*k),
                        None => self.log.path().to_path_buf(),
                    }
                }
            };
            let opened = open_with_inode(&next)?;
            if listing()? == before {
                return Ok(opened);
            }
        }
        open_with_inode(self.log.path())
    }

    /// The records of one whole file's `bytes`, given `source`; lines not in the capture's
    /// format get the time `modified`. A line begun in parts and not ended in the file is a
    /// record of its own.
    pub(crate) fn parse_file(
        bytes: &[u8],
        source: Arc<Source>,
        modified: std::time::SystemTime,
    ) -> Vec<Record> {
        let mut parser = LineParser {
            source,
            pending: Vec::new(),
            parts: [None, None],
            foreign_ns: modified
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
        };
        let mut records = Vec::new();
        parser.take(bytes, &mut records);
        for (stream, part) in [Stream::Stdout, Stream::Stderr]
            .into_iter()
            .zip(parser.parts)
        {
            if let Some((timestamp_ns, text)) = part {
                records.push(Record::new(
                    parser.source.clone(),
                    stream,
                    timestamp_ns,
                    text,
                ));
            }
        }
        records
    }
}

impl LineParser {
    /// Parses `bytes` (continuing the pending partial line) into records.
    fn take(&mut self, bytes: &[u8], records: &mut Vec<Record>) {
        let mut rest = bytes;
        if !self.pending.is_empty() {
            match rest.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    let mut line = std::mem::take(&mut self.pending);
                    line.extend_from_slice(&rest[..end]);
                    self.line(&line, records);
                    rest = &rest[end + 1..];
                }
                None => {
                    self.pending.extend_from_slice(rest);
                    return;
                }
            }
        }
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            self.line(&rest[..end], records);
            rest = &rest[end + 1..];
        }
        self.pending.extend_from_slice(rest);
    }

    fn line(&mut self, bytes: &[u8], records: &mut Vec<Record>) {
        let text = String::from_utf8_lossy(bytes);
        let Some(line) = cri::parse(&text) else {
            records.push(Record::new(
                self.source.clone(),
                Stream::Stdout,
                self.foreign_ns,
                text.into_owned(),
            ));
            return;
        };
        let slot = &mut self.parts[usize::from(line.stream == Stream::Stderr)];
        match (slot.as_mut(), line.partial) {
            (Some((_, so_far)), true) => so_far.push_str(line.text),
            (None, true) => *slot = Some((line.timestamp_ns, line.text.to_string())),
            (Some(_), false) => {
                let (first_ns, mut so_far) = slot.take().unwrap_or_default();
                so_far.push_str(line.text);
                records.push(Record::new(
                    self.source.clone(),
                    line.stream,
                    first_ns,
                    so_far,
                ));
            }
            (None, false) => records.push(Record::new(
                self.source.clone(),
                line.stream,
                line.timestamp_ns,
                line.text,
            )),
        }
    }
}

fn open_with_inode(path: &Path) -> io::Result<Option<(File, u64)>> {
    match File::open(path) {
        Ok(file) => {
            let inode = file.metadata()?.ino();
            Ok(Some((file, inode)))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn modified_ns(file: &File) -> i64 {
    file.metadata()
        .ok()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}
