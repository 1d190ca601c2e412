//! Restoring a snapshot (or some of its paths) to a directory, files in parallel, bit for bit,
//! with permissions and modification times; every file is checked against its recorded hash.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Mutex;
use typed_builder::TypedBuilder;

use super::format::{BlobEntry, Node, NodeKind, Tree};
use super::repo::{Index, Repository};
use deploykit_core::{Error, Result};

/// What to restore and how.
#[derive(Clone, Debug, TypedBuilder)]
#[non_exhaustive]
pub struct RestoreOptions {
    /// Only these paths inside the snapshot (`app/config`, `db.sql`) and what is below them;
    /// everything when empty.
    #[builder(default)]
    pub include: Vec<String>,
    /// Files restored at once (default 8).
    #[builder(default = 8)]
    pub parallelism: usize,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions::builder().build()
    }
}

/// What a restore did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestoreSummary {
    /// Files written (each checked against its recorded BLAKE3).
    pub files: u64,
    /// Directories created.
    pub dirs: u64,
    /// Symbolic links created.
    pub symlinks: u64,
    /// Bytes written.
    pub bytes: u64,
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

pub(super) fn node_os_name(node: &Node) -> Result<std::ffi::OsString> {
    use std::os::unix::ffi::OsStringExt;
    let name = match (&node.name, &node.raw_name) {
        (Some(n), None) => std::ffi::OsString::from(n),
        (None, Some(raw)) => std::ffi::OsString::from_vec(
            unhex(raw).ok_or_else(|| Error::invalid("backup.tree", "a raw name is not hex"))?,
        ),
        _ => return Err(Error::invalid("backup.tree", "a node has no name")),
    };
    let bad =
        name.is_empty() || name == "." || name == ".." || name.to_string_lossy().contains('/');
    if bad {
        return Err(Error::invalid(
            "backup.tree",
            format!("{name:?} is not a file name; refusing to restore outside the target"),
        ));
    }
    Ok(name)
}

fn mtime(node: &Node) -> SystemTime {
    if node.mtime_ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(node.mtime_ns.min(u64::MAX as i128) as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos((-node.mtime_ns).min(u64::MAX as i128) as u64)
    }
}

/// Whether `rel` is selected by `include`: on or under an included path, or an ancestor of
/// one (a directory to create on the way).
fn selected(include: &[String], rel: &str) -> (bool, bool) {
    if include.is_empty() {
        return (true, false);
    }
    let mut wanted = false;
    let mut ancestor = false;
    for inc in include {
        let inc = inc.trim_matches('/');
        if rel == inc || rel.starts_with(&format!("{inc}/")) {
            wanted = true;
        } else if inc.starts_with(&format!("{rel}/")) {
            ancestor = true;
        }
    }
    (wanted, ancestor)
}

struct Plan {
    /// Nodes selected by an include path (not just created on the way to one).
    matched: u64,
    files: Vec<(PathBuf, Node)>,
    /// Directories with their node, deepest last.
    dirs: Vec<(PathBuf, Node)>,
    symlinks: u64,
}

fn plan(
    trees: &HashMap<String, Tree>,
    tree: &str,
    dir: &Path,
    rel: &str,
    include: &[String],
    out: &mut Plan,
) -> Result<()> {
    let tree = trees
        .get(tree)
        .ok_or_else(|| Error::invalid("backup.tree", "a tree is missing"))?;
    for node in &tree.nodes {
        let name = node_os_name(node)?;
        let path = dir.join(&name);
        let rel = if rel.is_empty() {
            name.to_string_lossy().into_owned()
        } else {
            format!("{rel}/{}", name.to_string_lossy())
        };
        let (wanted, ancestor) = selected(include, &rel);
        if !wanted && !ancestor {
            continue;
        }
        if wanted {
            out.matched += 1;
        }
        match node.kind {
            NodeKind::Dir => {
                std::fs::create_dir_all(&path).map_err(|e| {
                    Error::backend(format!("create {}", path.display()), e.to_string())
                })?;
                out.dirs.push((path.clone(), node.clone()));
                if let Some(sub) = &node.subtree {
                    let inner: &[String] = if wanted { &[] } else { include };
                    plan(trees, sub, &path, &rel, inner, out)?;
                }
            }
            NodeKind::File if wanted => out.files.push((path, node.clone())),
            NodeKind::Symlink if wanted => {
                use std::os::unix::ffi::OsStringExt;
                let target = node
                    .target
                    .as_deref()
                    .and_then(unhex)
                    .ok_or_else(|| Error::invalid("backup.tree", "a symlink has no target"))?;
                let _ = std::fs::remove_file(&path);
                std::os::unix::fs::symlink(std::ffi::OsString::from_vec(target), &path).map_err(
                    |e| Error::backend(format!("symlink {}", path.display()), e.to_string()),
                )?;
                set_owner(&path, node)?;
                out.symlinks += 1;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Give `path` the recorded owner when allowed: as root it is restored, as anyone else a
/// refusal is expected and ignored (files then belong to whoever restores, as with restic).
fn set_owner(path: &Path, node: &Node) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Some((uid, gid)) = node.owner else {
        return Ok(());
    };
    // Usually the restoring user owned the files: a stat is much cheaper than a chown, which
    // writes the inode.
    if std::fs::symlink_metadata(path).is_ok_and(|m| (m.uid(), m.gid()) == (uid, gid)) {
        return Ok(());
    }
    match std::os::unix::fs::lchown(path, Some(uid), Some(gid)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Ok(()),
        Err(e) => Err(Error::backend(
            format!("set the owner of {}", path.display()),
            e.to_string(),
        )),
    }
}

fn set_metadata(path: &Path, node: &Node) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |e: std::io::Error| {
        Error::backend(format!("set metadata of {}", path.display()), e.to_string())
    };
    set_owner(path, node)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(node.mode)).map_err(fail)?;
    let file = std::fs::File::open(path).map_err(fail)?;
    file.set_modified(mtime(node)).map_err(fail)
}

impl Repository {
    /// Restore snapshot `id` (or a unique prefix) into `target`, which is created if needed.
    /// Files are written in parallel and each is checked against its recorded BLAKE3; then
    /// permissions and modification times are set (directories last, deepest first).
    pub async fn restore(
        &self,
        id: &str,
        target: &Path,
        options: &RestoreOptions,
    ) -> Result<RestoreSummary> {
        let started = std::time::Instant::now();
        let (_, snapshot) = self.snapshot(id).await?;
        let index = Arc::new(self.load_index().await?);
        let trees = self.load_trees(&index, &snapshot.tree).await?;
        std::fs::create_dir_all(target)
            .map_err(|e| Error::backend(format!("create {}", target.display()), e.to_string()))?;
        let mut out = Plan {
            matched: 0,
            files: Vec::new(),
            dirs: Vec::new(),
            symlinks: 0,
        };
        plan(
            &trees,
            &snapshot.tree,
            target,
            "",
            &options.include,
            &mut out,
        )?;
        if !options.include.is_empty() && out.matched == 0 {
            return Err(Error::not_found(format!(
                "paths {} in snapshot {}",
                options.include.join(", "),
                &id[..id.len().min(12)]
            )));
        }
        let files = out.files.len() as u64;
        let queue = Arc::new(Mutex::new(work_units(&index, out.files)?));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..options.parallelism.max(1) {
            let repo = self.clone();
            let index = index.clone();
            let queue = queue.clone();
            tasks.spawn(async move {
                let mut bytes = 0u64;
                loop {
                    let Some(work) = queue.lock().await.pop_front() else {
                        return Ok::<u64, Error>(bytes);
                    };
                    bytes += match work {
                        Work::Near(unit) => repo.restore_unit(unit).await?,
                        Work::Spread(path, node) => repo.restore_file(&index, &path, &node).await?,
                    };
                }
            });
        }
        let mut bytes = 0;
        let mut failure = None;
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(Ok(b)) => bytes += b,
                Ok(Err(e)) => {
                    failure.get_or_insert(e);
                    tasks.abort_all();
                }
                Err(e) if e.is_cancelled() => {}
                Err(e) => {
                    failure.get_or_insert(Error::backend("restore", e.to_string()));
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let dirs = out.dirs;
        let count = dirs.len() as u64;
        tokio::task::spawn_blocking(move || {
            for (path, node) in dirs.iter().rev() {
                set_metadata(path, node)?;
            }
            Ok::<(), Error>(())
        })
        .await
        .map_err(|e| Error::backend("restore", e.to_string()))??;
        if let Some((metrics, environment)) = &self.metrics {
            metrics.observe_restore(environment, bytes, started.elapsed());
        }
        Ok(RestoreSummary {
            files,
            dirs: count,
            symlinks: out.symlinks,
            bytes,
        })
    }

    /// Write the files of a unit from one ranged read of their pack, in one trip to a
    /// blocking thread.
    async fn restore_unit(&self, unit: Unit) -> Result<u64> {
        let mut sealed = match &unit.pack {
            Some(pack) => {
                let key = super::repo::pack_key(pack);
                let sealed = self.target.get_range(&key, unit.start..unit.end).await?;
                if sealed.len() as u64 != unit.end - unit.start {
                    return Err(truncated(&key));
                }
                sealed
            }
            None => Vec::new(),
        };
        let repo = self.clone();
        tokio::task::spawn_blocking(move || -> Result<u64> {
            let mut bytes = 0;
            let mut scratch = Vec::new();
            // Blobs are decrypted in place, once: a blob that several files share
            // (duplicates) is found here the second time.
            let mut decrypted: HashMap<u64, std::ops::Range<usize>> = HashMap::new();
            for (path, node, entries) in &unit.files {
                let mut file = Writing::create(path)?;
                for entry in entries {
                    let pack = unit.pack.as_deref().expect("a file with blobs has a pack");
                    let body = match decrypted.get(&entry.offset) {
                        Some(body) => body.clone(),
                        None => {
                            let at = (entry.offset - unit.start) as usize;
                            let sealed = &mut sealed[at..at + entry.length as usize];
                            let body = repo.decrypt_blob_in_place(pack, entry, sealed)?;
                            let body = at + body.start..at + body.end;
                            decrypted.insert(entry.offset, body.clone());
                            body
                        }
                    };
                    file.write(repo.plain_blob(
                        pack,
                        entry,
                        &sealed[body],
                        node.hash.is_none(),
                        &mut scratch,
                    )?)?;
                }
                bytes += file.finish(node)?;
            }
            Ok(bytes)
        })
        .await
        .map_err(|e| Error::backend("restore", e.to_string()))?
    }

    /// Write one file whose blobs are spread over packs (or far apart in one): blobs that
    /// sit next to each other are fetched with one ranged read (up to 16 MiB). Three stages
    /// run at once, so a large file restores at the speed of the slowest of them rather than
    /// their sum: the next batch is fetched while this one is decrypted and decompressed on
    /// one blocking thread, and its blobs are hashed and written, in order, on another.
    async fn restore_file(&self, index: &Index, path: &Path, node: &Node) -> Result<u64> {
        let mut batches: Vec<Batch> = Vec::new();
        for (pack, entry) in locate(index, path, node)? {
            match batches.last_mut() {
                Some(b)
                    if b.pack == pack
                        && b.end == entry.offset
                        && b.end - b.start + entry.length <= BATCH =>
                {
                    b.end += entry.length;
                    b.entries.push(entry);
                }
                _ => batches.push(Batch {
                    start: entry.offset,
                    end: entry.offset + entry.length,
                    pack,
                    entries: vec![entry],
                }),
            }
        }
        // Plain blobs go to the writer through `full`; it hands their buffers back through
        // `empty`, so at most PIPELINE + 2 buffers exist and none is allocated per blob.
        let (full, to_write) = std::sync::mpsc::sync_channel::<Vec<u8>>(PIPELINE);
        let (written, mut empty) = std::sync::mpsc::channel::<Vec<u8>>();
        let mut file = Writing::create(path)?;
        let writer = tokio::task::spawn_blocking(move || -> Result<Writing> {
            for plain in to_write {
                file.write(&plain)?;
                // The decoder may be gone (it failed); the buffer is then dropped.
                let _ = written.send(plain);
            }
            Ok(file)
        });
        let check_id = node.hash.is_none();
        let decoded = async {
            let mut batches = batches.into_iter();
            let mut next = match batches.next() {
                Some(batch) => Some(self.fetch_batch(batch).await?),
                None => None,
            };
            while let Some((batch, mut sealed)) = next.take() {
                let repo = self.clone();
                let full = full.clone();
                let decode = tokio::task::spawn_blocking(move || -> Result<_> {
                    for entry in &batch.entries {
                        let at = (entry.offset - batch.start) as usize;
                        let sealed = &mut sealed[at..at + entry.length as usize];
                        let body = repo.decrypt_blob_in_place(&batch.pack, entry, sealed)?;
                        let mut buffer = empty.try_recv().unwrap_or_default();
                        repo.plain_blob(
                            &batch.pack,
                            entry,
                            &sealed[body.clone()],
                            check_id,
                            &mut buffer,
                        )?;
                        if !entry.compressed {
                            // plain_blob checked the body where it lies; the writer needs
                            // it in a buffer of its own.
                            buffer.clear();
                            buffer.extend_from_slice(&sealed[body]);
                        }
                        if full.send(buffer).is_err() {
                            // The writer stopped: its error is the one to report.
                            return Ok(None);
                        }
                    }
                    Ok(Some(empty))
                });
                let fetch = async {
                    match batches.next() {
                        Some(batch) => self.fetch_batch(batch).await.map(Some),
                        None => Ok(None),
                    }
                };
                let (decoded, fetched) = tokio::join!(decode, fetch);
                match decoded.map_err(|e| Error::backend("restore", e.to_string()))?? {
                    Some(back) => empty = back,
                    None => return Ok(false),
                }
                next = fetched?;
            }
            Ok::<bool, Error>(true)
        }
        .await;
        drop(full);
        let file = writer
            .await
            .map_err(|e| Error::backend("restore", e.to_string()))?;
        match decoded {
            // Every blob was handed to the writer: its result is the file's.
            Ok(true) => file?.finish(node),
            Ok(false) => Err(file.err().unwrap_or_else(|| {
                Error::backend(format!("write {}", path.display()), "the writer stopped")
            })),
            Err(e) => Err(e),
        }
    }

    /// A batch's sealed bytes, checked to be as long as the index says.
    async fn fetch_batch(&self, batch: Batch) -> Result<(Batch, Vec<u8>)> {
        let key = super::repo::pack_key(&batch.pack);
        let sealed = self.target.get_range(&key, batch.start..batch.end).await?;
        if sealed.len() as u64 != batch.end - batch.start {
            return Err(truncated(&key));
        }
        Ok((batch, sealed))
    }
}

/// Blobs of one file that lie next to each other in one pack, fetched with one ranged read.
struct Batch {
    pack: Arc<str>,
    start: u64,
    end: u64,
    entries: Vec<BlobEntry>,
}

/// Plain blobs of one file decoded ahead of its writer.
const PIPELINE: usize = 4;

/// The most one ranged read of a pack fetches.
const BATCH: u64 = 16 << 20;
/// The most bytes between two files' blobs that a unit reads over rather than splitting.
const GAP: u64 = 1 << 20;

/// Files whose blobs all lie within [`BATCH`] bytes of one pack (`pack` is `None` for empty
/// files), restored from one ranged read.
struct Unit {
    pack: Option<Arc<str>>,
    start: u64,
    end: u64,
    files: Vec<(PathBuf, Node, Vec<BlobEntry>)>,
}

/// What one restore task takes from the queue.
enum Work {
    Near(Unit),
    Spread(PathBuf, Node),
}

/// Where each blob of a file is, in content order.
fn locate(index: &Index, path: &Path, node: &Node) -> Result<Vec<(Arc<str>, BlobEntry)>> {
    node.content
        .iter()
        .map(|blob| {
            index
                .blobs
                .get(blob)
                .cloned()
                .ok_or_else(|| Error::Corrupt {
                    what: format!("blob {} of {}", &blob[..12.min(blob.len())], path.display()),
                    source: "it is in no index".into(),
                })
        })
        .collect()
}

fn truncated(key: &str) -> Error {
    Error::Corrupt {
        what: format!("backup object {key}"),
        source: "it is shorter than its index says (truncated)".into(),
    }
}

/// Group files for restoring. Small files are what a tree has most of, and opening a pack,
/// a trip to a blocking thread and a task switch per file cost more than writing them: files
/// that lie close together in one pack (as a backup writes a directory's files) become one
/// [`Unit`], ordered by position in their pack, so packs are read front to back in large
/// ranges and the files of one directory are written by one thread (parallel creates in one
/// directory contend on its lock).
fn work_units(index: &Index, files: Vec<(PathBuf, Node)>) -> Result<VecDeque<Work>> {
    let mut near = Vec::new();
    let mut empty = Vec::new();
    let mut work = VecDeque::new();
    for (path, node) in files {
        let blobs = locate(index, &path, &node)?;
        let Some((pack, first)) = blobs.first() else {
            empty.push((path, node, Vec::new()));
            continue;
        };
        let start = blobs
            .iter()
            .map(|(_, e)| e.offset)
            .min()
            .unwrap_or(first.offset);
        let end = blobs
            .iter()
            .map(|(_, e)| e.offset + e.length)
            .max()
            .unwrap_or(start);
        if blobs.iter().all(|(p, _)| p == pack) && end - start <= BATCH {
            let pack = pack.clone();
            let entries = blobs.into_iter().map(|(_, e)| e).collect();
            near.push((pack, start, end, path, node, entries));
        } else {
            work.push_back(Work::Spread(path, node));
        }
    }
    near.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let mut units: Vec<Unit> = Vec::new();
    for (pack, start, end, path, node, entries) in near {
        match units.last_mut() {
            Some(u)
                if u.pack.as_ref() == Some(&pack)
                    && start <= u.end + GAP
                    && end.max(u.end) - u.start <= BATCH =>
            {
                u.end = u.end.max(end);
                u.files.push((path, node, entries));
            }
            _ => units.push(Unit {
                pack: Some(pack),
                start,
                end,
                files: vec![(path, node, entries)],
            }),
        }
    }
    while !empty.is_empty() {
        let files = empty.split_off(empty.len().saturating_sub(1024));
        units.push(Unit {
            pack: None,
            start: 0,
            end: 0,
            files,
        });
    }
    // Spread (large) files first: they take longest, and units fill the gaps at the end.
    work.extend(units.into_iter().map(Work::Near));
    Ok(work)
}

/// A file being restored: written in order, hashed as it is written.
struct Writing {
    path: PathBuf,
    file: std::fs::File,
    hasher: blake3::Hasher,
    written: u64,
}

impl Writing {
    fn create(path: &Path) -> Result<Self> {
        let file = std::fs::File::create(path).map_err(|e| write_error(path, e))?;
        Ok(Writing {
            path: path.to_path_buf(),
            file,
            hasher: blake3::Hasher::new(),
            written: 0,
        })
    }

    fn write(&mut self, plain: &[u8]) -> Result<()> {
        self.hasher.update(plain);
        std::io::Write::write_all(&mut self.file, plain).map_err(|e| write_error(&self.path, e))?;
        self.written += plain.len() as u64;
        Ok(())
    }

    /// Check the content against the hash recorded at backup, then set owner, permissions
    /// and modification time; the bytes written.
    fn finish(self, node: &Node) -> Result<u64> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let path = &self.path;
        let hash = self.hasher.finalize().to_hex().to_string();
        if node.hash.as_deref().is_some_and(|h| h != hash) {
            return Err(Error::Corrupt {
                what: format!("restored file {}", path.display()),
                source: "its content does not match the hash recorded at backup".into(),
            });
        }
        let fail = |e| write_error(path, e);
        if let Some((uid, gid)) = node.owner {
            // Usually the restoring user owned the files: a stat of the open file is much
            // cheaper than a chown, which writes the inode.
            let meta = self.file.metadata().map_err(fail)?;
            if (meta.uid(), meta.gid()) != (uid, gid) {
                match std::os::unix::fs::fchown(&self.file, Some(uid), Some(gid)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
                    Err(e) => return Err(fail(e)),
                }
            }
        }
        self.file
            .set_permissions(std::fs::Permissions::from_mode(node.mode))
            .map_err(fail)?;
        self.file.set_modified(mtime(node)).map_err(fail)?;
        Ok(self.written)
    }
}

fn write_error(path: &Path, e: std::io::Error) -> Error {
    Error::backend(format!("write {}", path.display()), e.to_string())
}
