//! [`LocalTarget`]: a [`BackupTarget`] over a directory on the local filesystem.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use super::{BackupTarget, ObjectMeta};
use deploykit_core::{Error, Result};

/// File names starting with this are temporary files of writes in progress: never listed, and
/// not allowed as the last segment of a key.
const TMP_PREFIX: &str = ".tmp-";

/// How much of the key's last segment goes into a temporary file's name (for debugging only).
const TMP_NAME_MAX: usize = 64;

/// Distinguishes the temporary files of concurrent writes within this process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A random number fixed for this process, in its temporary files' names: two processes with
/// one pid (in two containers sharing a directory) never pick the same name.
fn process_nonce() -> u64 {
    static NONCE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *NONCE.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        // RandomState is randomly keyed per process.
        let mut h = std::hash::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    })
}

// `ObjectMeta` is `#[non_exhaustive]`, so targets outside this crate (the in-memory one in
// `deploykit-testing`, S3 later) need a constructor to build one.
/// A [`BackupTarget`] storing each object as a file under a root directory.
///
/// The key `a/b/c` is the file `<root>/a/b/c`; parent directories are created as needed (and
/// left in place when their objects are deleted). Keys must be non-empty, must not start with
/// `/`, must not contain `.` or `..` or empty segments, a backslash or NUL, and their last
/// segment must not start with `.tmp-` (reserved for temporary files); other keys are
/// [`Error::InvalidSpec`] on `backup.key`.
///
/// Writes are atomic and durable: the data goes to a temporary file in the destination's
/// directory, is synced, and is then renamed over the destination ([`BackupTarget::put`]) or
/// hard-linked to it ([`BackupTarget::put_if_absent`], so creation fails atomically if the
/// object exists); the directory is synced afterwards. A reader sees the old object or the
/// new one, never a part. Temporary files are removed when a write fails and are never
/// listed; a process killed mid-write can leave one behind
/// (`.tmp-<pid>-<nonce>-<n>-<name>`), which is safe to delete once no process writes to the
/// directory.
///
/// As on any filesystem, a key cannot be both an object and a directory of other objects:
/// with `a/b` stored, a put of `a` fails with [`Error::Backend`] (and `a` reads as missing).
/// Hard links are required, so the root must be on a filesystem that supports them.
///
/// Blocking filesystem work runs on tokio's blocking thread pool.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> deploykit_core::Result<()> {
/// use deploykit_backup::LocalTarget;
/// use deploykit_core::{BackupTarget, Error};
///
/// let root = std::env::temp_dir().join(format!("deploykit-doc-{}", std::process::id()));
/// let target = LocalTarget::new(&root)?;
/// target.put("snapshots/1", b"hello".to_vec()).await?;
/// assert_eq!(target.get("snapshots/1").await?, b"hello");
/// assert_eq!(target.get_range("snapshots/1", 1..3).await?, b"el");
/// assert!(matches!(
///     target.put_if_absent("snapshots/1", b"other".to_vec()).await,
///     Err(Error::AlreadyExists { .. })
/// ));
/// let listed = target.list("snapshots/").await?;
/// assert_eq!(listed.len(), 1);
/// assert_eq!((listed[0].key.as_str(), listed[0].size), ("snapshots/1", 5));
/// target.delete("snapshots/1").await?;
/// assert!(matches!(target.get("snapshots/1").await, Err(Error::NotFound { .. })));
/// # std::fs::remove_dir_all(&root).ok();
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct LocalTarget {
    root: PathBuf,
}

impl LocalTarget {
    /// A target storing its objects under `root`, which is created (with its parents) if
    /// missing.
    ///
    /// Fails with [`Error::Backend`] if `root` cannot be created or is not a directory.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|e| {
            Error::backend(
                format!("create backup directory {}", root.display()),
                e.to_string(),
            )
        })?;
        Ok(LocalTarget { root })
    }

    /// The directory the objects are stored under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file of `key` (which must be valid).
    fn path_of(&self, key: &str) -> PathBuf {
        let mut path = self.root.clone();
        path.extend(key.split('/'));
        path
    }
}

/// Runs `f` on the blocking pool; a panic in `f` resumes in the caller.
async fn blocking<T, F>(operation: String, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(Error::backend(
            operation,
            format!("blocking task failed: {e}"),
        )),
    }
}

/// An io error of reading `key`: a missing file (or a missing directory on its path) is a
/// missing object.
fn read_error(op: &str, key: &str, e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => {
            Error::not_found(format!("object {key}"))
        }
        _ => Error::backend(format!("{op} {key}"), e.to_string()),
    }
}

/// An io error of writing `key`.
fn write_error(op: &str, key: &str, e: io::Error) -> Error {
    Error::backend(format!("{op} {key}"), e.to_string())
}

/// Syncs a directory, so entries created, renamed or removed in it are durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Directories cannot be opened for syncing here; renames are as durable as the platform
/// makes them.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// Creates the directories `segments` under `root` one by one, syncing the parent of each
/// one created; returns the innermost.
fn ensure_dirs<'a>(root: &Path, segments: impl Iterator<Item = &'a str>) -> io::Result<PathBuf> {
    let mut dir = root.to_path_buf();
    for segment in segments {
        let next = dir.join(segment);
        match fs::create_dir(&next) {
            Ok(()) => {
                same_owner_as_parent(&dir, &next)?;
                sync_dir(&dir)?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        dir = next;
    }
    Ok(dir)
}

/// Give the new directory `dir` the owner of its `parent`, when they differ and this process
/// may (root writing into a repository another user owns, such as PostgreSQL's
/// `archive_command` user): a directory root made would lock that user out of it.
fn same_owner_as_parent(parent: &Path, dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let (parent_meta, meta) = (fs::metadata(parent)?, fs::metadata(dir)?);
    if (parent_meta.uid(), parent_meta.gid()) == (meta.uid(), meta.gid()) {
        return Ok(());
    }
    match std::os::unix::fs::chown(dir, Some(parent_meta.uid()), Some(parent_meta.gid())) {
        // Not allowed (not root): the directory is this user's, as any file it writes.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Ok(()),
        other => other,
    }
}

/// A temporary file, removed when dropped unless [`TmpFile::keep`] was called.
struct TmpFile {
    path: PathBuf,
    remove: bool,
}

impl TmpFile {
    /// Writes `data` to a new temporary file in `dir` and syncs it. On failure nothing is
    /// left behind.
    fn write(dir: &Path, name: &str, data: &[u8]) -> io::Result<TmpFile> {
        let mut end = name.len().min(TMP_NAME_MAX);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        let name = &name[..end];
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        // Unique without retries: no other process has this pid and nonce, no other write of
        // this process this number.
        let path = dir.join(format!(
            "{TMP_PREFIX}{}-{:016x}-{n}-{name}",
            std::process::id(),
            process_nonce()
        ));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let tmp = TmpFile { path, remove: true };
        file.write_all(data)?;
        file.sync_all()?;
        Ok(tmp)
    }

    /// The file is gone (renamed): do not remove it on drop.
    fn keep(mut self) {
        self.remove = false;
    }
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        if self.remove {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The directory and file name of `key`, creating the directory.
fn prepare(root: &Path, key: &str) -> io::Result<(PathBuf, PathBuf, String)> {
    let (parents, name) = match key.rsplit_once('/') {
        Some((parents, name)) => (Some(parents), name),
        None => (None, key),
    };
    let dir = ensure_dirs(root, parents.into_iter().flat_map(|p| p.split('/')))?;
    let dest = dir.join(name);
    Ok((dir, dest, name.to_owned()))
}

fn put_blocking(root: &Path, key: &str, data: &[u8]) -> Result<()> {
    let op = "put";
    let (dir, dest, name) = prepare(root, key).map_err(|e| write_error(op, key, e))?;
    let tmp = TmpFile::write(&dir, &name, data).map_err(|e| write_error(op, key, e))?;
    fs::rename(&tmp.path, &dest).map_err(|e| write_error(op, key, e))?;
    tmp.keep();
    sync_dir(&dir).map_err(|e| write_error(op, key, e))
}

fn put_if_absent_blocking(root: &Path, key: &str, data: &[u8]) -> Result<()> {
    let op = "put_if_absent";
    let (dir, dest, name) = prepare(root, key).map_err(|e| write_error(op, key, e))?;
    if fs::symlink_metadata(&dest).is_ok() {
        // Cheap early refusal; the hard link below is what makes the check atomic.
        return Err(already_exists(op, key, &dest));
    }
    let tmp = TmpFile::write(&dir, &name, data).map_err(|e| write_error(op, key, e))?;
    let linked = fs::hard_link(&tmp.path, &dest);
    drop(tmp);
    match linked {
        Ok(()) => sync_dir(&dir).map_err(|e| write_error(op, key, e)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(already_exists(op, key, &dest)),
        Err(e) => Err(write_error(op, key, e)),
    }
}

/// The error for a conditional put onto an existing `dest`: `AlreadyExists` if it is an
/// object, a backend error if it is a directory of other objects.
fn already_exists(op: &str, key: &str, dest: &Path) -> Error {
    match fs::symlink_metadata(dest) {
        Ok(meta) if meta.is_dir() => Error::backend(
            format!("{op} {key}"),
            "a directory of other objects is in the way",
        ),
        _ => Error::AlreadyExists {
            what: format!("object {key}"),
        },
    }
}

/// Opens the object file at `path`; a directory there is a missing object.
fn open_object(path: &Path, op: &str, key: &str) -> Result<(File, u64)> {
    let file = File::open(path).map_err(|e| read_error(op, key, e))?;
    let meta = file.metadata().map_err(|e| read_error(op, key, e))?;
    if !meta.is_file() {
        return Err(Error::not_found(format!("object {key}")));
    }
    Ok((file, meta.len()))
}

fn get_range_blocking(path: &Path, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
    let op = "get_range";
    let (mut file, len) = open_object(path, op, key)?;
    let end = range.end.min(len);
    if range.start >= end {
        return Ok(Vec::new());
    }
    let want = end - range.start;
    file.seek(SeekFrom::Start(range.start))
        .map_err(|e| read_error(op, key, e))?;
    let mut buf = Vec::with_capacity(usize::try_from(want).unwrap_or(0));
    file.take(want)
        .read_to_end(&mut buf)
        .map_err(|e| read_error(op, key, e))?;
    Ok(buf)
}

fn delete_blocking(path: &Path, key: &str) -> Result<()> {
    let op = "delete";
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(());
        }
        // A directory of other objects is not an object under `key`.
        Err(_) if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) => return Ok(()),
        Err(e) => return Err(write_error(op, key, e)),
    }
    match path.parent() {
        Some(dir) => sync_dir(dir).map_err(|e| write_error(op, key, e)),
        None => Ok(()),
    }
}

/// Collects the objects under `dir` (whose keys start with `dir_key`, empty or ending in `/`)
/// whose keys start with `prefix`, descending only into directories that can hold such keys.
fn walk(dir: &Path, dir_key: &str, prefix: &str, out: &mut Vec<ObjectMeta>) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else {
            continue; // not a key this target could have written
        };
        let file_type = match entry.file_type() {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let key = format!("{dir_key}{name}");
        if file_type.is_dir() {
            let sub = format!("{key}/");
            if sub.starts_with(prefix) || prefix.starts_with(&sub) {
                walk(&entry.path(), &sub, prefix, out)?;
            }
        } else if file_type.is_file()
            && !name.starts_with(TMP_PREFIX)
            && key.starts_with(prefix)
            && super::check_key(&key).is_ok()
        {
            let size = match entry.metadata() {
                Ok(meta) => meta.len(),
                // Deleted while we looked.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            out.push(ObjectMeta::new(key, size));
        }
    }
    Ok(())
}

#[async_trait]
impl BackupTarget for LocalTarget {
    async fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
        super::check_key(key)?;
        let root = self.root.clone();
        let key = key.to_owned();
        blocking(format!("put {key}"), move || {
            put_blocking(&root, &key, &data)
        })
        .await
    }

    async fn put_if_absent(&self, key: &str, data: Vec<u8>) -> Result<()> {
        super::check_key(key)?;
        let root = self.root.clone();
        let key = key.to_owned();
        blocking(format!("put_if_absent {key}"), move || {
            put_if_absent_blocking(&root, &key, &data)
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>> {
        super::check_key(key)?;
        let path = self.path_of(key);
        let key = key.to_owned();
        blocking(format!("get {key}"), move || {
            let (mut file, len) = open_object(&path, "get", &key)?;
            let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
            file.read_to_end(&mut buf)
                .map_err(|e| read_error("get", &key, e))?;
            Ok(buf)
        })
        .await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        super::check_key(key)?;
        let path = self.path_of(key);
        let key = key.to_owned();
        blocking(format!("get_range {key}"), move || {
            get_range_blocking(&path, &key, range)
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        blocking(format!("list {prefix}"), move || {
            let mut out = Vec::new();
            walk(&root, "", &prefix, &mut out)
                .map_err(|e| Error::backend(format!("list {prefix}"), e.to_string()))?;
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        super::check_key(key)?;
        let path = self.path_of(key);
        let key = key.to_owned();
        blocking(format!("delete {key}"), move || {
            delete_blocking(&path, &key)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Root writing into a repository another user owns (a CLI command beside PostgreSQL's
    /// `archive_command`) makes its new directories that user's, so the user can still write
    /// objects whose shard directory root made first.
    #[tokio::test]
    async fn directories_root_creates_belong_to_the_repository_owner() {
        use std::os::unix::fs::MetadataExt;
        if fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1) != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("repo");
        fs::create_dir(&repo).unwrap();
        std::os::unix::fs::chown(&repo, Some(65534), Some(65534)).unwrap();
        let target = LocalTarget::new(&repo).unwrap();
        target.put("data/ab/abcdef", b"x".to_vec()).await.unwrap();
        for made in ["data", "data/ab"] {
            let meta = fs::metadata(repo.join(made)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "{made}");
        }
        // A root-owned repository stays root's.
        let mine = dir.path().join("mine");
        LocalTarget::new(&mine)
            .unwrap()
            .put("data/cd/cdef", b"y".to_vec())
            .await
            .unwrap();
        assert_eq!(fs::metadata(mine.join("data/cd")).unwrap().uid(), 0);
    }

    #[test]
    fn temporary_files_are_named_for_this_process_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = TmpFile::write(dir.path(), "x", b"1").expect("write");
        let b = TmpFile::write(dir.path(), "x", b"2").expect("write");
        let ours = format!(
            "{TMP_PREFIX}{}-{:016x}-",
            std::process::id(),
            process_nonce()
        );
        for tmp in [&a, &b] {
            let name = tmp.path.file_name().expect("name").to_string_lossy();
            assert!(name.starts_with(&ours) && name.ends_with("-x"), "{name}");
        }
        assert_ne!(a.path, b.path);
        assert_eq!(process_nonce(), process_nonce(), "fixed for the process");
    }

    #[test]
    fn keys_are_validated() {
        for good in [
            "a",
            "a/b/c",
            "a.b",
            "..a",
            "a/.hidden",
            ".tmp-dir/x",
            "a b/c",
        ] {
            assert!(crate::check_key(good).is_ok(), "{good:?} should be valid");
        }
        for bad in [
            "", "/a", "a/", "a//b", "a/../b", "..", ".", "./a", "a\\b", "a\0b", ".tmp-x",
            "a/.tmp-1",
        ] {
            match crate::check_key(bad) {
                Err(Error::InvalidSpec { field, reason }) => {
                    assert_eq!(field, "backup.key");
                    assert!(reason.contains(&format!("{bad:?}")), "{reason}");
                }
                other => panic!("{bad:?} should be invalid, got {other:?}"),
            }
        }
    }
}
