//! Taking a backup: walk the sources, chunk what changed, store new chunks in packs, then the
//! index, then — last, so no partial snapshot is ever listed — the snapshot.

use deploykit_telemetry::metrics::BackupRecord;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::Instrument;
use typed_builder::TypedBuilder;

use super::crypto::{hex, random_id};
use super::format::{
    BackupKind, BackupSummary, BlobEntry, BlobKind, IndexFile, LockFile, Node, NodeKind, PackEntry,
    Snapshot, Tree,
};
use super::repo::{Repository, pack_key};
use crate::BackupSource;
use deploykit_core::{Error, Result};

/// How long a backup's lock lives without a refresh; a crashed backup's lock is ignored after.
pub(super) const LOCK_TTL: Duration = Duration::from_secs(300);
const LOCK_REFRESH: Duration = Duration::from_secs(60);

/// Progress of a running backup, reported through [`BackupRequest::progress`] and `tracing`.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Progress {
    /// Files (and streams) finished.
    pub files_done: u64,
    /// Files (and streams) to read.
    pub files_total: u64,
    /// Bytes read so far.
    pub bytes_done: u64,
    /// Bytes to read (streams count as they are read).
    pub bytes_total: u64,
    /// Bytes per second so far.
    pub rate: f64,
    /// Estimated time left, once the rate is known.
    pub eta: Option<Duration>,
}

/// Called with progress after every file.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Leaves paths out of a backup: called with every path found below
/// [`BackupRequest::paths`] (not with the paths themselves); `true` leaves the path out, and
/// for a directory everything below it.
pub type ExcludeFn = Arc<dyn Fn(&Path) -> bool + Send + Sync>;

/// What a [`BackupFinish`] adds to the snapshot once every file is stored.
#[derive(Clone, Debug, Default, TypedBuilder)]
#[non_exhaustive]
pub struct Finish {
    /// Small files (name, content) added at the snapshot's root, beside the paths.
    #[builder(default)]
    pub files: Vec<(String, Vec<u8>)>,
    /// Tags added to [`BackupRequest::tags`].
    #[builder(default)]
    pub tags: BTreeSet<String>,
}

/// Called once, after every file of a backup is stored and before its snapshot is written:
/// what only the end of a backup knows (a database's backup label and stop position) goes
/// into the same snapshot. An error fails the backup, and no snapshot is written.
///
/// ```
/// use deploykit_backup::{BackupFinish, Finish};
///
/// struct Label;
///
/// #[async_trait::async_trait]
/// impl BackupFinish for Label {
///     async fn finish(&self) -> deploykit_core::Result<Finish> {
///         Ok(Finish::builder()
///             .files(vec![("backup_label".into(), b"LABEL: nightly\n".to_vec())])
///             .tags(["db.stop=0/3000028".to_string()].into())
///             .build())
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait BackupFinish: Send + Sync {
    /// The files and tags to add.
    async fn finish(&self) -> Result<Finish>;
}

/// What to back up and how.
#[derive(Clone, TypedBuilder)]
#[non_exhaustive]
pub struct BackupRequest {
    /// Directories (or files) to back up; each becomes an entry at the snapshot's root, named
    /// by its last path component.
    #[builder(default)]
    pub paths: Vec<PathBuf>,
    /// Byte streams (database dumps, exports), each a file at the snapshot's root.
    #[builder(default)]
    pub sources: Vec<Arc<dyn BackupSource>>,
    /// Full, incremental, differential or snapshot (default incremental).
    #[builder(default = BackupKind::Incremental)]
    pub kind: BackupKind,
    /// Labels for retention and search.
    #[builder(default)]
    pub tags: BTreeSet<String>,
    /// The host recorded (default: the `HOSTNAME` environment variable, else `localhost`).
    #[builder(default, setter(strip_option, into))]
    pub host: Option<String>,
    /// Commands run before a [`BackupKind::Snapshot`] backup (quiesce); a failure aborts it.
    #[builder(default)]
    pub pre_hooks: Vec<Vec<String>>,
    /// Commands run after a [`BackupKind::Snapshot`] backup, whether it succeeded or not.
    #[builder(default)]
    pub post_hooks: Vec<Vec<String>>,
    /// Called with progress after every file.
    #[builder(default, setter(strip_option))]
    pub progress: Option<ProgressFn>,
    /// Paths below [`paths`](Self::paths) to leave out.
    #[builder(default, setter(strip_option))]
    pub exclude: Option<ExcludeFn>,
    /// The paths are in use while they are read (a running database's files): a file or
    /// directory that disappears between the walk and its read is left out of the snapshot
    /// instead of failing the backup. Files are read as they are at that moment, so the
    /// writer must be able to repair torn reads (PostgreSQL does from its WAL).
    #[builder(default)]
    pub live: bool,
    /// Called after every file is stored and before the snapshot is written.
    #[builder(default, setter(strip_option))]
    pub finish: Option<Arc<dyn BackupFinish>>,
}

impl fmt::Debug for BackupRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackupRequest")
            .field("paths", &self.paths)
            .field("sources", &self.sources)
            .field("kind", &self.kind)
            .field("tags", &self.tags)
            .field("host", &self.host)
            .field("live", &self.live)
            .finish_non_exhaustive()
    }
}

impl BackupRequest {
    /// What the snapshot's `paths` record: directory paths, then stream names.
    fn labels(&self) -> Vec<String> {
        self.paths
            .iter()
            .map(|p| p.display().to_string())
            .chain(self.sources.iter().map(|s| format!("stream:{}", s.name())))
            .collect()
    }
}

/// Builds packs of sealed blobs.
#[derive(Default)]
pub(super) struct PackWriter {
    buf: Vec<u8>,
    blobs: Vec<BlobEntry>,
}

impl PackWriter {
    pub(super) fn len(&self) -> usize {
        self.buf.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Compress (when it pays), seal and append one blob.
    pub(super) fn seal(
        &mut self,
        repo: &Repository,
        id: String,
        kind: BlobKind,
        plain: &[u8],
    ) -> Result<()> {
        let offset = self.buf.len();
        let compressed = repo.seal_blob_into(&id, plain, &mut self.buf)?;
        self.blobs.push(BlobEntry {
            id,
            kind,
            offset: offset as u64,
            length: (self.buf.len() - offset) as u64,
            raw_length: plain.len() as u64,
            compressed,
        });
        Ok(())
    }

    /// Append the blobs of `other` (a reader's last, partly filled pack).
    fn absorb(&mut self, other: PackWriter) {
        let base = self.buf.len() as u64;
        self.buf.extend_from_slice(&other.buf);
        self.blobs.extend(other.blobs.into_iter().map(|mut b| {
            b.offset += base;
            b
        }));
    }

    /// Append one blob sealed already.
    pub(super) fn add(
        &mut self,
        id: String,
        kind: BlobKind,
        sealed: Vec<u8>,
        raw: u64,
        compressed: bool,
    ) {
        self.blobs.push(BlobEntry {
            id,
            kind,
            offset: self.buf.len() as u64,
            length: sealed.len() as u64,
            raw_length: raw,
            compressed,
        });
        self.buf.extend_from_slice(&sealed);
    }

    /// The pack's bytes (blobs, sealed header, header length) and its entry.
    pub(super) fn finish(mut self, repo: &Repository) -> Result<(PackEntry, Vec<u8>)> {
        let header = serde_json::to_vec(&self.blobs).expect("entries serialise");
        let sealed = repo.keys.seal(&header, b"pack header")?;
        self.buf.extend_from_slice(&sealed);
        self.buf
            .extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        let id = blake3::hash(&self.buf).to_hex().to_string();
        let entry = PackEntry {
            id,
            size: self.buf.len() as u64,
            blobs: self.blobs,
        };
        Ok((entry, self.buf))
    }
}

/// Cut `reader` into content-defined chunks and hand them to `f`, in order, a window's
/// worth at a time (every chunk that lies wholly in the window).
///
/// FastCDC runs over a window of `buf` (reused across files, so no per-file allocation); a
/// chunk that reaches the window's end before the stream's end is cut again with more data,
/// so the cut points are exactly those of chunking the whole stream at once.
fn for_each_chunk(
    mut reader: impl std::io::Read,
    buf: &mut Vec<u8>,
    (min, avg, max): (u32, u32, u32),
    mut f: impl FnMut(&[&[u8]]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let window = (4 * max as usize).max(8 << 20);
    buf.resize(window, 0);
    let mut len = 0;
    let mut eof = false;
    loop {
        while !eof && len < window {
            match reader.read(&mut buf[len..window]) {
                Ok(0) => eof = true,
                Ok(n) => len += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if len == 0 {
            return Ok(());
        }
        let mut consumed = 0;
        let mut chunks = Vec::new();
        for chunk in fastcdc::v2020::FastCDC::new(&buf[..len], min, avg, max) {
            let end = chunk.offset + chunk.length;
            if end == len && !eof {
                break; // cut short by the window: cut again with more data
            }
            chunks.push(&buf[chunk.offset..end]);
            consumed = end;
        }
        if !chunks.is_empty() {
            f(&chunks)?;
        }
        buf.copy_within(consumed..len, 0);
        len -= consumed;
        if eof && len == 0 {
            return Ok(());
        }
    }
}

/// State shared by the workers of one backup. Each worker fills a pack of its own (no lock
/// around sealing, and a file's blobs stay together for restore); only the set of blobs
/// known is shared.
struct Saver {
    repo: Repository,
    known: Mutex<HashSet<String>>,
    /// The readers' last packs, partly filled: one pack with the trees, not one per reader.
    leftovers: Mutex<Vec<PackWriter>>,
    uploads: mpsc::Sender<(PackEntry, Vec<u8>)>,
    bytes_read: AtomicU64,
    /// Reader threads, and how many of them are reading a file now: a large file's chunks
    /// are sealed on every core only while some reader is idle (the end of a backup that one
    /// large file makes long), not when every core already has a file of its own.
    readers: usize,
    reading: AtomicUsize,
    files_done: AtomicU64,
    blobs_added: AtomicU64,
    /// Files and bytes to read, as the walk finds them.
    files_total: AtomicU64,
    bytes_total: AtomicU64,
    started: Instant,
    progress: Option<ProgressFn>,
}

impl Saver {
    /// Store `plain` as a blob in `pack` unless the repository has it; returns its id. A
    /// full pack is handed to the upload.
    fn add_blob(&self, pack: &mut PackWriter, kind: BlobKind, plain: &[u8]) -> Result<String> {
        let id = self.repo.keys.blob_id(plain);
        if !self.is_new(&id) {
            return Ok(id);
        }
        self.reserve(pack);
        pack.seal(&self.repo, id.clone(), kind, plain)?;
        self.added(pack)?;
        Ok(id)
    }

    /// Store the data chunks `chunks` (consecutive, of one file) unless the repository has
    /// them; their ids, in order. Each chunk's id is computed and, if the repository does
    /// not know it yet, the chunk compressed and sealed, on every core at once; then, in
    /// order, each sealed blob is appended to `pack` unless an equal chunk before it (in this
    /// window, or another reader's) was stored first, so a file's blobs stay together in
    /// content order for restore however its chunks were sealed.
    fn add_chunks(&self, pack: &mut PackWriter, chunks: &[&[u8]]) -> Result<Vec<String>> {
        use rayon::prelude::*;
        let sealed: Vec<(String, Option<Sealed>)> = chunks
            .par_iter()
            .map(|chunk| {
                let id = self.repo.keys.blob_id(chunk);
                let known = self
                    .known
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(&id);
                if known {
                    return Ok((id, None));
                }
                let mut out = Vec::with_capacity(chunk.len() / 2);
                let compressed = self.repo.seal_blob_into(&id, chunk, &mut out)?;
                Ok((id, Some((out, compressed))))
            })
            .collect::<Result<_>>()?;
        let mut ids = Vec::with_capacity(sealed.len());
        for (chunk, (id, blob)) in chunks.iter().zip(sealed) {
            if let Some((out, compressed)) = blob
                && self.is_new(&id)
            {
                self.reserve(pack);
                pack.add(
                    id.clone(),
                    BlobKind::Data,
                    out,
                    chunk.len() as u64,
                    compressed,
                );
                self.added(pack)?;
            }
            ids.push(id);
        }
        Ok(ids)
    }

    /// Whether the blob `id` is new to the repository (and now known).
    fn is_new(&self, id: &str) -> bool {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string())
    }

    /// Room in an empty `pack` for a full pack and the blob that overfills it: no regrowing
    /// copies.
    fn reserve(&self, pack: &mut PackWriter) {
        if pack.buf.capacity() == 0 {
            let c = &self.repo.config;
            pack.buf.reserve(
                usize::try_from(c.pack_size + u64::from(c.chunk_max)).unwrap_or(0) + 64 * 1024,
            );
        }
    }

    /// Count the blob just added to `pack`, and hand `pack` to the upload once full.
    fn added(&self, pack: &mut PackWriter) -> Result<()> {
        self.blobs_added.fetch_add(1, Ordering::Relaxed);
        if pack.buf.len() as u64 >= self.repo.config.pack_size {
            self.send(std::mem::take(pack))?;
        }
        Ok(())
    }

    /// Upload `pack` if it holds anything.
    fn send(&self, pack: PackWriter) -> Result<()> {
        if pack.is_empty() {
            return Ok(());
        }
        let finished = pack.finish(&self.repo)?;
        self.uploads.blocking_send(finished).map_err(|_| {
            Error::backend("backup", "the pack upload stopped (see the earlier error)")
        })
    }

    /// Read and store one file or stream; `None` if it vanished (a live backup).
    fn read(
        &self,
        job: &JobSource,
        live: bool,
        buf: &mut Vec<u8>,
        pack: &mut PackWriter,
    ) -> Result<Option<Saved>> {
        match job {
            JobSource::Path(p) => match std::fs::File::open(p) {
                Err(e) if live && e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                opened => opened
                    .and_then(|f| self.save_stream(f, buf, pack))
                    .map(Some)
                    .map_err(|e| Error::backend(format!("read {}", p.display()), e.to_string())),
            },
            JobSource::Stream(s) => s.open().and_then(|r| {
                self.save_stream(r, buf, pack).map(Some).map_err(|e| {
                    Error::backend(format!("backup source {}", s.name()), e.to_string())
                })
            }),
        }
    }

    /// Chunk and store one stream; returns its content ids, BLAKE3 and size.
    fn save_stream(
        &self,
        reader: impl std::io::Read,
        buf: &mut Vec<u8>,
        pack: &mut PackWriter,
    ) -> std::io::Result<Saved> {
        let c = &self.repo.config;
        let mut hasher = blake3::Hasher::new();
        let mut content = Vec::new();
        let mut size = 0u64;
        for_each_chunk(
            reader,
            buf,
            (c.chunk_min, c.chunk_avg, c.chunk_max),
            |chunks| {
                let bytes: usize = chunks.iter().map(|c| c.len()).sum();
                let idle = self.reading.load(Ordering::Relaxed) < self.readers;
                let stored = if idle && bytes >= PARALLEL_WINDOW && chunks.len() > 1 {
                    // A large file: its chunks sealed on every core while its hash is taken.
                    let (stored, ()) = rayon::join(
                        || self.add_chunks(pack, chunks),
                        || {
                            for c in chunks {
                                hasher.update(c);
                            }
                        },
                    );
                    stored
                } else {
                    chunks
                        .iter()
                        .map(|c| {
                            hasher.update(c);
                            self.add_blob(pack, BlobKind::Data, c)
                        })
                        .collect()
                };
                content.extend(stored.map_err(|e| std::io::Error::other(e.chain()))?);
                size += bytes as u64;
                self.bytes_read.fetch_add(bytes as u64, Ordering::Relaxed);
                Ok(())
            },
        )?;
        Ok((content, hasher.finalize().to_hex().to_string(), size))
    }

    fn report(&self) {
        let done = self.files_done.fetch_add(1, Ordering::Relaxed) + 1;
        let bytes = self.bytes_read.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { bytes as f64 / secs } else { 0.0 };
        let bytes_total = self.bytes_total.load(Ordering::Relaxed);
        let eta = (rate > 0.0 && bytes_total >= bytes)
            .then(|| Duration::from_secs_f64((bytes_total - bytes) as f64 / rate));
        let progress = Progress {
            files_done: done,
            files_total: self.files_total.load(Ordering::Relaxed),
            bytes_done: bytes,
            bytes_total,
            rate,
            eta,
        };
        tracing::trace!(files = done, bytes, rate, "backup progress");
        if let Some(f) = &self.progress {
            f(&progress);
        }
    }
}

/// A blob sealed for a pack: its bytes, and whether it was compressed.
type Sealed = (Vec<u8>, bool);

/// Chunks that make up at least this much of a window are sealed in parallel; less (small
/// files, a stream's tail) costs more to hand out than it gains.
const PARALLEL_WINDOW: usize = 4 << 20;

/// A file's stored content: blob ids, BLAKE3 of the whole, size.
type Saved = (Vec<String>, String, u64);

/// What one worker reads.
enum JobSource {
    Path(PathBuf),
    Stream(Arc<dyn BackupSource>),
}

/// A node of the walked tree, before its content or subtree id is known.
struct Entry {
    node: Node,
    children: Vec<Entry>,
    job: Option<usize>,
}

fn node_name(name: &std::ffi::OsStr) -> (Option<String>, Option<String>) {
    match name.to_str() {
        Some(s) => (Some(s.to_string()), None),
        None => {
            use std::os::unix::ffi::OsStrExt;
            (None, Some(hex(name.as_bytes())))
        }
    }
}

fn metadata_node(name: &std::ffi::OsStr, meta: &std::fs::Metadata, kind: NodeKind) -> Node {
    use std::os::unix::fs::MetadataExt;
    let (name, raw_name) = node_name(name);
    Node {
        name,
        raw_name,
        kind,
        mode: meta.mode() & 0o7777,
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        size: if kind == NodeKind::File {
            meta.len()
        } else {
            0
        },
        inode: meta.ino(),
        owner: Some((meta.uid(), meta.gid())),
        content: Vec::new(),
        hash: None,
        subtree: None,
        target: None,
    }
}

/// What the blocking part of a backup hands back.
struct Walked {
    root: String,
    files: u64,
    dirs: u64,
    files_read: u64,
    /// Bytes of every file, as the walk saw them.
    all_bytes: u64,
    /// Bytes of the files to read, as the walk saw them.
    bytes_total: u64,
    bytes_read: u64,
    tags: BTreeSet<String>,
}

struct Walk<'a> {
    parent_trees: &'a HashMap<String, Tree>,
    exclude: Option<&'a ExcludeFn>,
    live: bool,
    /// Where files to read go, numbered from 0 in the order queued.
    jobs: std::sync::mpsc::Sender<(usize, JobSource)>,
    queued: usize,
    /// Counts the files and bytes to read (for progress).
    saver: &'a Saver,
    /// Whether a reader failed: the walk stops early.
    stop: &'a dyn Fn() -> bool,
    /// Bytes of every file.
    all_bytes: u64,
    dirs: u64,
    files: u64,
    skipped: u64,
}

impl Walk<'_> {
    /// Hand a file to the readers; its job number.
    fn queue(&mut self, job: JobSource, size: u64) -> usize {
        let i = self.queued;
        self.queued += 1;
        self.saver.files_total.fetch_add(1, Ordering::Relaxed);
        self.saver.bytes_total.fetch_add(size, Ordering::Relaxed);
        // The readers are gone only after a failure, which the caller reports.
        let _ = self.jobs.send((i, job));
        i
    }

    /// Walk the request's paths and queue its streams: the snapshot's root entries.
    fn roots(
        &mut self,
        paths: &[PathBuf],
        parent_root: &HashMap<String, Node>,
        sources: Vec<Arc<dyn BackupSource>>,
    ) -> Result<Vec<Entry>> {
        let mut roots = Vec::new();
        for path in paths {
            let name = path.file_name().expect("checked above");
            let previous = parent_root.get(&*name.to_string_lossy());
            if let Some(e) = self.entry(path, name, previous)? {
                roots.push(e);
            }
        }
        for source in sources {
            let (name, raw_name) = node_name(std::ffi::OsStr::new(source.name()));
            self.files += 1;
            let job = self.queue(JobSource::Stream(source), 0);
            roots.push(Entry {
                node: Node {
                    name,
                    raw_name,
                    kind: NodeKind::File,
                    mode: 0o600,
                    mtime_ns: 0,
                    size: 0,
                    inode: 0,
                    owner: None,
                    content: Vec::new(),
                    hash: None,
                    subtree: None,
                    target: None,
                },
                children: Vec::new(),
                job: Some(job),
            });
        }
        Ok(roots)
    }

    fn entry(
        &mut self,
        path: &Path,
        name: &std::ffi::OsStr,
        parent: Option<&Node>,
    ) -> Result<Option<Entry>> {
        let io =
            |e: std::io::Error| Error::backend(format!("read {}", path.display()), e.to_string());
        let vanished = |e: &std::io::Error| self.live && e.kind() == std::io::ErrorKind::NotFound;
        let meta = match std::fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if vanished(&e) => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let ft = meta.file_type();
        if ft.is_symlink() {
            use std::os::unix::ffi::OsStrExt;
            let mut node = metadata_node(name, &meta, NodeKind::Symlink);
            node.target = Some(hex(std::fs::read_link(path)
                .map_err(io)?
                .as_os_str()
                .as_bytes()));
            return Ok(Some(Entry {
                node,
                children: Vec::new(),
                job: None,
            }));
        }
        if ft.is_file() {
            self.files += 1;
            let mut node = metadata_node(name, &meta, NodeKind::File);
            self.all_bytes += node.size;
            let unchanged = parent.filter(|p| {
                p.kind == NodeKind::File
                    && p.size == node.size
                    && p.mtime_ns == node.mtime_ns
                    && p.inode == node.inode
                    && p.hash.is_some()
            });
            let job = match unchanged {
                Some(p) => {
                    node.content = p.content.clone();
                    node.hash = p.hash.clone();
                    None
                }
                None => Some(self.queue(JobSource::Path(path.to_path_buf()), node.size)),
            };
            return Ok(Some(Entry {
                node,
                children: Vec::new(),
                job,
            }));
        }
        if ft.is_dir() {
            self.dirs += 1;
            let node = metadata_node(name, &meta, NodeKind::Dir);
            let parent_children: HashMap<&str, &Node> = parent
                .and_then(|p| p.subtree.as_ref())
                .and_then(|id| self.parent_trees.get(id))
                .map(|t| {
                    t.nodes
                        .iter()
                        .filter_map(|n| n.name.as_deref().map(|name| (name, n)))
                        .collect()
                })
                .unwrap_or_default();
            let listed = std::fs::read_dir(path).and_then(|dir| {
                dir.map(|e| e.map(|e| e.file_name()))
                    .collect::<std::io::Result<Vec<_>>>()
            });
            let mut names = match listed {
                Ok(names) => names,
                Err(e) if vanished(&e) => return Ok(None),
                Err(e) => return Err(io(e)),
            };
            names.sort();
            let mut children = Vec::new();
            for child in names {
                if (self.stop)() {
                    return Err(Error::backend("backup", "stopped: a read failed"));
                }
                let child_path = path.join(&child);
                if self.exclude.is_some_and(|exclude| exclude(&child_path)) {
                    continue;
                }
                let previous = child.to_str().and_then(|n| parent_children.get(n).copied());
                if let Some(e) = self.entry(&child_path, &child, previous)? {
                    children.push(e);
                }
            }
            return Ok(Some(Entry {
                node,
                children,
                job: None,
            }));
        }
        // Sockets, FIFOs and devices are not backed up.
        self.skipped += 1;
        tracing::warn!(path = %path.display(), "skipping a special file");
        Ok(None)
    }
}

/// Fill content from job results and store every directory's tree, bottom-up; a file that
/// vanished before it was read (a live backup) is left out.
fn finish_entry(
    saver: &Saver,
    pack: &mut PackWriter,
    mut entry: Entry,
    results: &mut [Option<Option<Saved>>],
) -> Result<Option<Node>> {
    if let Some(job) = entry.job {
        let Some((content, hash, size)) = results[job].take().expect("every job has a result")
        else {
            return Ok(None);
        };
        entry.node.content = content;
        entry.node.hash = Some(hash);
        entry.node.size = size;
    }
    if entry.node.kind == NodeKind::Dir {
        let mut nodes = Vec::with_capacity(entry.children.len());
        for child in entry.children {
            nodes.extend(finish_entry(saver, pack, child, results)?);
        }
        let tree = serde_json::to_vec(&Tree { nodes }).expect("trees serialise");
        entry.node.subtree = Some(saver.add_blob(pack, BlobKind::Tree, &tree)?);
    }
    Ok(Some(entry.node))
}

fn run_hook(argv: &[String]) -> Result<()> {
    let what = format!("backup hook {}", argv.join(" "));
    let Some((program, args)) = argv.split_first() else {
        return Err(Error::invalid("backup.hook", "a hook needs a program"));
    };
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Error::backend(&what, format!("cannot start: {e}")))?;
    if !out.status.success() {
        return Err(Error::backend(
            what,
            format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(())
}

async fn run_hooks(hooks: &[Vec<String>]) -> Result<()> {
    for hook in hooks {
        let hook = hook.clone();
        tokio::task::spawn_blocking(move || run_hook(&hook))
            .await
            .map_err(|e| Error::backend("backup hook", e.to_string()))??;
    }
    Ok(())
}

impl Repository {
    /// Take a backup and return the new snapshot's id and the snapshot.
    ///
    /// Only new objects are added (packs, an index, the snapshot, last), so concurrent backups
    /// into one repository both succeed, and a backup that fails or is killed leaves no
    /// snapshot and nothing a later backup trips over.
    pub async fn backup(&self, request: BackupRequest) -> Result<(String, Snapshot)> {
        if request.paths.is_empty() && request.sources.is_empty() {
            return Err(Error::invalid(
                "backup.paths",
                "nothing to back up: give paths or sources",
            ));
        }
        let mut names = HashSet::new();
        for name in request
            .paths
            .iter()
            .map(|p| {
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .chain(request.sources.iter().map(|s| s.name().to_string()))
        {
            if name.is_empty() || !names.insert(name.clone()) {
                return Err(Error::invalid(
                    "backup.paths",
                    format!(
                        "{name:?}: every path and source needs a distinct, non-empty last component"
                    ),
                ));
            }
        }
        let span = tracing::info_span!("backup", repository = %&self.config.id[..12], kind = %request.kind);
        let taken = async {
            if request.kind == BackupKind::Snapshot {
                // Post hooks run whatever happens: a half-done freeze must be thawed too.
                let result = match run_hooks(&request.pre_hooks).await {
                    Ok(()) => self.backup_locked(&request).await,
                    Err(e) => Err(e),
                };
                let post = run_hooks(&request.post_hooks).await;
                let taken = result?;
                post?;
                Ok(taken)
            } else {
                self.backup_locked(&request).await
            }
        }
        .instrument(span)
        .await?;
        if let Some((metrics, environment)) = &self.metrics {
            let snapshot = &taken.1;
            metrics.observe_backup(&BackupRecord {
                environment,
                kind: snapshot.kind.as_str(),
                bytes_read: snapshot.summary.bytes_read,
                bytes_stored: snapshot.summary.bytes_stored,
                bytes_total: snapshot.summary.bytes_total,
                started: snapshot.time,
                finished: snapshot.finished,
            });
        }
        Ok(taken)
    }

    async fn backup_locked(&self, request: &BackupRequest) -> Result<(String, Snapshot)> {
        let started = self.clock.now();
        let host = request
            .host
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "localhost".to_string());
        let lock_key = format!("locks/{}", random_id());
        let lock = |refreshed| {
            serde_json::to_vec(&LockFile {
                started,
                refreshed,
                host: host.clone(),
            })
            .expect("locks serialise")
        };
        self.target.put(&lock_key, lock(started)).await?;
        let refresh = async {
            loop {
                tokio::time::sleep(LOCK_REFRESH).await;
                if let Err(e) = self.target.put(&lock_key, lock(self.clock.now())).await {
                    tracing::warn!(error = %e.chain(), "could not refresh the backup lock");
                }
            }
        };
        let result = tokio::select! {
            r = self.save(request, started, &host) => r,
            () = refresh => unreachable!("the refresh loop never ends"),
        };
        if let Err(e) = self.target.delete(&lock_key).await {
            tracing::warn!(error = %e.chain(), "could not remove the backup lock; it expires");
        }
        result
    }

    async fn save(
        &self,
        request: &BackupRequest,
        started: deploykit_core::Timestamp,
        host: &str,
    ) -> Result<(String, Snapshot)> {
        let paths = request.labels();
        let mut index = self.load_index().await?;
        // Blobs in packs a prune marked are treated as absent, so this backup never refers
        // to a pack that may be deleted.
        for (_, mark) in self.load_marks().await? {
            for pack in mark.packs {
                if let Some(p) = index.packs.remove(&pack) {
                    for b in p.blobs {
                        index.blobs.remove(&b.id);
                    }
                }
            }
        }
        let parent = match request.kind {
            BackupKind::Full => None,
            kind => self.snapshots().await?.into_iter().rev().find(|(_, s)| {
                s.paths == paths
                    && s.host == host
                    && (kind != BackupKind::Differential || s.kind == BackupKind::Full)
            }),
        };
        let parent_trees = match &parent {
            Some((_, s)) => self.load_trees(&index, &s.tree).await?,
            None => HashMap::new(),
        };
        let parent_root: HashMap<String, Node> = parent
            .as_ref()
            .and_then(|(_, s)| parent_trees.get(&s.tree))
            .map(|t| {
                t.nodes
                    .iter()
                    .filter_map(|n| n.name.clone().map(|name| (name, n.clone())))
                    .collect()
            })
            .unwrap_or_default();

        // The walk runs on one thread and hands each file to read to a few reader threads as
        // it finds it (a tree of small files is read while it is still being walked); packs
        // upload here meanwhile.
        let request_paths = request.paths.clone();
        let sources = request.sources.clone();
        let exclude = request.exclude.clone();
        let live = request.live;
        let (tx, mut rx) = mpsc::channel::<(PackEntry, Vec<u8>)>(2);
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(1, 4);
        let saver = Arc::new(Saver {
            repo: self.clone(),
            known: Mutex::new(index.blobs.keys().cloned().collect()),
            leftovers: Mutex::new(Vec::new()),
            uploads: tx,
            bytes_read: AtomicU64::new(0),
            readers: workers,
            reading: AtomicUsize::new(0),
            files_done: AtomicU64::new(0),
            blobs_added: AtomicU64::new(0),
            files_total: AtomicU64::new(0),
            bytes_total: AtomicU64::new(0),
            started: Instant::now(),
            progress: request.progress.clone(),
        });
        let finisher = request.finish.clone();
        let runtime = tokio::runtime::Handle::current();
        let work = tokio::task::spawn_blocking(move || -> Result<Walked> {
            let (jobs, queue) = std::sync::mpsc::channel::<(usize, JobSource)>();
            let queue = Mutex::new(queue);
            let results: Mutex<Vec<Option<Option<Saved>>>> = Mutex::new(Vec::new());
            let failure: Mutex<Option<Error>> = Mutex::new(None);
            let fail = |e: Error| {
                failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(e);
            };
            let failed = || failure.lock().unwrap_or_else(|e| e.into_inner()).is_some();
            let walked = std::thread::scope(|scope| {
                for _ in 0..workers {
                    scope.spawn(|| {
                        let mut buf = Vec::new();
                        let mut pack = PackWriter::default();
                        loop {
                            if failed() {
                                return;
                            }
                            let next = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                            let Ok((i, job)) = next else {
                                saver
                                    .leftovers
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .push(pack);
                                return;
                            };
                            saver.reading.fetch_add(1, Ordering::Relaxed);
                            let read = saver.read(&job, live, &mut buf, &mut pack);
                            saver.reading.fetch_sub(1, Ordering::Relaxed);
                            match read {
                                Ok(saved) => {
                                    let mut results =
                                        results.lock().unwrap_or_else(|e| e.into_inner());
                                    if results.len() <= i {
                                        results.resize_with(i + 1, || None);
                                    }
                                    results[i] = Some(saved);
                                    drop(results);
                                    saver.report();
                                }
                                Err(e) => return fail(e),
                            }
                        }
                    });
                }
                let mut walk = Walk {
                    parent_trees: &parent_trees,
                    exclude: exclude.as_ref(),
                    live,
                    jobs,
                    queued: 0,
                    saver: &saver,
                    stop: &failed,
                    all_bytes: 0,
                    dirs: 0,
                    files: 0,
                    skipped: 0,
                };
                let walked = walk.roots(&request_paths, &parent_root, sources);
                // Dropping the sender (in `walk`) lets the readers finish the queue and stop.
                drop(walk.jobs);
                walked.map(|roots| (roots, walk.all_bytes, walk.dirs, walk.files))
            });
            let (roots, all_bytes, dirs, files) = match walked {
                Ok(walked) => walked,
                Err(e) => {
                    fail(e);
                    (Vec::new(), 0, 0, 0)
                }
            };
            if let Some(e) = failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
                return Err(e);
            }
            let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
            let mut pack = PackWriter::default();
            for leftover in
                std::mem::take(&mut *saver.leftovers.lock().unwrap_or_else(|e| e.into_inner()))
            {
                pack.absorb(leftover);
                if pack.buf.len() as u64 >= saver.repo.config.pack_size {
                    saver.send(std::mem::take(&mut pack))?;
                }
            }
            let mut nodes = Vec::new();
            for root in roots {
                nodes.extend(finish_entry(&saver, &mut pack, root, &mut results)?);
            }
            let finished = match &finisher {
                Some(f) => runtime.block_on(f.finish())?,
                None => Finish::default(),
            };
            for (name, data) in &finished.files {
                if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                    return Err(Error::invalid(
                        "backup.finish.files",
                        format!("{name:?} is not a file name"),
                    ));
                }
                if nodes.iter().any(|n| n.name.as_deref() == Some(name)) {
                    return Err(Error::invalid(
                        "backup.finish.files",
                        format!("{name:?} is already at the snapshot's root"),
                    ));
                }
                let (content, hash, size) = saver
                    .save_stream(data.as_slice(), &mut Vec::new(), &mut pack)
                    .map_err(|e| Error::backend(format!("store {name}"), e.to_string()))?;
                nodes.push(Node {
                    name: Some(name.clone()),
                    raw_name: None,
                    kind: NodeKind::File,
                    mode: 0o600,
                    mtime_ns: 0,
                    size,
                    inode: 0,
                    owner: None,
                    content,
                    hash: Some(hash),
                    subtree: None,
                    target: None,
                });
            }
            let tree = serde_json::to_vec(&Tree { nodes }).expect("trees serialise");
            let root = saver.add_blob(&mut pack, BlobKind::Tree, &tree)?;
            saver.send(pack)?;
            // Dropping the saver closes the upload channel.
            Ok(Walked {
                root,
                files,
                dirs,
                files_read: saver.files_total.load(Ordering::Relaxed),
                all_bytes,
                bytes_total: saver.bytes_total.load(Ordering::Relaxed),
                bytes_read: saver.bytes_read.load(Ordering::Relaxed),
                tags: finished.tags,
            })
        });
        let target = self.target.clone();
        // A few packs upload at once, so one slow write (a local fsync, an S3 round trip)
        // does not hold up the readers.
        let upload = async move {
            const AT_ONCE: usize = 3;
            let joined = |r: std::result::Result<Result<PackEntry>, tokio::task::JoinError>| {
                r.map_err(|e| Error::backend("upload a pack", e.to_string()))?
            };
            let mut packs = Vec::new();
            let mut stored = 0u64;
            let mut puts = tokio::task::JoinSet::new();
            while let Some((entry, bytes)) = rx.recv().await {
                stored += bytes.len() as u64;
                while puts.len() >= AT_ONCE {
                    let Some(done) = puts.join_next().await else {
                        break;
                    };
                    packs.push(joined(done)?);
                }
                let target = target.clone();
                puts.spawn(async move {
                    match target.put_if_absent(&pack_key(&entry.id), bytes).await {
                        Ok(()) | Err(Error::AlreadyExists { .. }) => Ok(entry),
                        Err(e) => Err(e),
                    }
                });
            }
            while let Some(done) = puts.join_next().await {
                packs.push(joined(done)?);
            }
            Ok((packs, stored))
        };
        let (work, upload) = tokio::join!(work, upload);
        // An upload failure explains a worker's failure to hand over a pack: report it first.
        let (packs, stored) = upload?;
        let Walked {
            root,
            files,
            dirs,
            files_read,
            all_bytes,
            bytes_total,
            bytes_read,
            tags: finish_tags,
        } = work.map_err(|e| Error::backend("backup", e.to_string()))??;
        let blobs_added: u64 = packs.iter().map(|p| p.blobs.len() as u64).sum();
        if !packs.is_empty() {
            self.put_object(
                "index",
                &IndexFile {
                    packs,
                    supersedes: Vec::new(),
                },
            )
            .await?;
        }
        let snapshot = Snapshot {
            time: started,
            finished: self.clock.now(),
            host: host.to_string(),
            paths,
            tags: request.tags.iter().cloned().chain(finish_tags).collect(),
            kind: request.kind,
            parent: parent.map(|(id, _)| id),
            tree: root,
            summary: BackupSummary {
                files,
                dirs,
                files_read,
                bytes_total: all_bytes + bytes_read.saturating_sub(bytes_total),
                bytes_read,
                blobs_added,
                bytes_stored: stored,
            },
        };
        let id = self.put_object("snapshots", &snapshot).await?;
        tracing::info!(
            snapshot = %id,
            kind = %snapshot.kind,
            files,
            files_read,
            bytes_stored = stored,
            "backup finished"
        );
        Ok((id, snapshot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::noise;

    /// A reader handing out a few bytes at a time, in uneven amounts.
    struct Trickle<'a>(&'a [u8], usize);

    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            self.1 = (self.1 * 7 + 3) % 100_003 + 1;
            let n = self.1.min(out.len()).min(self.0.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// A large file's chunks are sealed in parallel, yet stored as if one thread had done
    /// it: a chunk repeated within one window is stored once, and the file's blobs lie in
    /// its packs in content order, each pack one run of the file (what restore's ranged
    /// reads rely on); the file restores bit for bit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_files_chunks_sealed_in_parallel_keep_their_order_and_dedup() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let a = noise(1 << 20, 1);
        let text: Vec<u8> = (0..(2 << 20)).map(|i| b"select 1;\n"[i % 10]).collect();
        // 15 MiB: windows of 8 MiB (4 x chunk_max, at least 8 MiB) hold repeats of `a`.
        let big = [
            &a,
            &noise(3 << 20, 2),
            &a,
            &text,
            &a,
            &noise(5 << 20, 3),
            &a,
        ]
        .map(|part| part.as_slice())
        .concat();
        std::fs::write(data.join("big"), &big).unwrap();
        let target = Arc::new(crate::LocalTarget::new(dir.path().join("repo")).unwrap());
        let options = crate::RepoOptions::builder()
            .kdf_cost((1024, 1))
            .chunk_min(16 * 1024)
            .chunk_avg(64 * 1024)
            .chunk_max(256 * 1024)
            .pack_size(2 << 20)
            .build();
        let repo = Repository::init(target, &crate::RepoKey::passphrase("pw"), options)
            .await
            .unwrap();
        let (id, snapshot) = repo
            .backup(
                BackupRequest::builder()
                    .paths(vec![data.clone()])
                    .kind(crate::BackupKind::Full)
                    .build(),
            )
            .await
            .unwrap();
        let index = repo.load_index().await.unwrap();
        let trees = repo.load_trees(&index, &snapshot.tree).await.unwrap();
        let node = trees
            .values()
            .flat_map(|t| &t.nodes)
            .find(|n| n.name.as_deref() == Some("big"))
            .expect("the file is in the snapshot");
        let distinct: HashSet<&String> = node.content.iter().collect();
        assert!(
            distinct.len() + 10 < node.content.len(),
            "the repeats of `a` make equal chunks: {} of {}",
            distinct.len(),
            node.content.len()
        );
        let stored = index
            .packs
            .values()
            .flat_map(|p| &p.blobs)
            .filter(|b| distinct.contains(&b.id))
            .count();
        assert_eq!(stored, distinct.len(), "each distinct chunk stored once");
        // First occurrences, in content order: within a pack, offsets increase; and each
        // pack is one run (no pack is left and come back to).
        let mut seen = HashSet::new();
        let mut runs: Vec<(Arc<str>, u64)> = Vec::new();
        for blob in &node.content {
            if !seen.insert(blob) {
                continue;
            }
            let (pack, entry) = &index.blobs[blob];
            match runs.last_mut() {
                Some((p, last)) if p == pack => {
                    assert!(entry.offset > *last, "blobs in content order within a pack");
                    *last = entry.offset;
                }
                _ => runs.push((pack.clone(), entry.offset)),
            }
        }
        let packs: HashSet<&Arc<str>> = runs.iter().map(|(p, _)| p).collect();
        assert_eq!(
            packs.len(),
            runs.len(),
            "each pack holds one run of the file"
        );
        assert!(
            runs.len() > 2,
            "the file spans several packs: {}",
            runs.len()
        );
        let out = dir.path().join("out");
        repo.restore(&id, &out, &crate::RestoreOptions::default())
            .await
            .unwrap();
        assert!(std::fs::read(out.join("data/big")).unwrap() == big);
    }

    #[test]
    fn windowed_chunking_cuts_where_whole_stream_chunking_does() {
        let mut x = 88172645463325252u64;
        let data: Vec<u8> = (0..21_000_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let params = (256 * 1024, 1024 * 1024, 4 * 1024 * 1024);
        let whole: Vec<usize> = fastcdc::v2020::FastCDC::new(&data, params.0, params.1, params.2)
            .map(|c| c.length)
            .collect();
        let stream: Vec<usize> =
            fastcdc::v2020::StreamCDC::new(data.as_slice(), params.0, params.1, params.2)
                .map(|c| c.unwrap().length)
                .collect();
        let mut windowed = Vec::new();
        let mut buf = Vec::new();
        for_each_chunk(Trickle(&data, 1), &mut buf, params, |chunks| {
            windowed.extend(chunks.iter().map(|c| c.len()));
            Ok(())
        })
        .unwrap();
        assert_eq!(windowed, whole);
        assert_eq!(windowed, stream, "compatible with fastcdc's own streaming");
        assert!(windowed.len() > 10);
        // Empty and tiny streams.
        let mut n = 0;
        for_each_chunk(&[][..], &mut buf, params, |chunks| {
            n += chunks.len();
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 0);
        for_each_chunk(&b"tiny"[..], &mut buf, params, |chunks| {
            assert_eq!(chunks, [b"tiny"]);
            Ok(())
        })
        .unwrap();
    }
}
