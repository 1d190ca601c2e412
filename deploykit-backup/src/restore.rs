//! Restoring a snapshot (or some of its paths) to a directory, files in parallel, bit for bit,
//! with permissions and modification times; every file is checked against its recorded hash.

use std::collections::HashMap;
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
        let queue = Arc::new(Mutex::new(out.files));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..options.parallelism.max(1) {
            let repo = self.clone();
            let index = index.clone();
            let queue = queue.clone();
            tasks.spawn(async move {
                let mut bytes = 0u64;
                loop {
                    let Some((path, node)) = queue.lock().await.pop() else {
                        return Ok::<u64, Error>(bytes);
                    };
                    bytes += repo.restore_file(&index, &path, &node).await?;
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

    /// Write one file from its blobs, check its hash, set its metadata.
    ///
    /// Blobs that sit next to each other in one pack are fetched with one ranged read (up to
    /// 16 MiB), and each such batch is decrypted and written in one trip to a blocking thread.
    /// Files are not fsynced one by one (neither restic nor borg does; a drill reads them back).
    async fn restore_file(&self, index: &Index, path: &Path, node: &Node) -> Result<u64> {
        const BATCH: u64 = 16 << 20;
        let mut batches: Vec<(Arc<str>, u64, u64, Vec<BlobEntry>)> = Vec::new();
        for blob in &node.content {
            let (pack, entry) = index
                .blobs
                .get(blob)
                .cloned()
                .ok_or_else(|| Error::Corrupt {
                    what: format!("blob {} of {}", &blob[..12.min(blob.len())], path.display()),
                    source: "it is in no index".into(),
                })?;
            match batches.last_mut() {
                Some((p, start, end, entries))
                    if *p == pack
                        && *end == entry.offset
                        && *end - *start + entry.length <= BATCH =>
                {
                    *end += entry.length;
                    entries.push(entry);
                }
                _ => batches.push((pack, entry.offset, entry.offset + entry.length, vec![entry])),
            }
        }
        let fail =
            |e: std::io::Error| Error::backend(format!("write {}", path.display()), e.to_string());
        let mut state = Some((
            std::fs::File::create(path).map_err(fail)?,
            blake3::Hasher::new(),
            0u64,
        ));
        for (pack, start, end, entries) in batches {
            let key = super::repo::pack_key(&pack);
            let sealed = self.target.get_range(&key, start..end).await?;
            if sealed.len() as u64 != end - start {
                return Err(Error::Corrupt {
                    what: format!("backup object {key}"),
                    source: "it is shorter than its index says (truncated)".into(),
                });
            }
            let repo = self.clone();
            let (mut file, mut hasher, mut written) = state.take().expect("state");
            state = Some(
                tokio::task::spawn_blocking(move || -> Result<_> {
                    for entry in &entries {
                        let at = (entry.offset - start) as usize;
                        let plain =
                            repo.open_blob(&pack, entry, &sealed[at..at + entry.length as usize])?;
                        hasher.update(&plain);
                        std::io::Write::write_all(&mut file, &plain)
                            .map_err(|e| Error::backend("write", e.to_string()))?;
                        written += plain.len() as u64;
                    }
                    Ok((file, hasher, written))
                })
                .await
                .map_err(|e| Error::backend("restore", e.to_string()))??,
            );
        }
        let (file, hasher, written) = state.expect("state");
        let hash = hasher.finalize().to_hex().to_string();
        if node.hash.as_deref().is_some_and(|h| h != hash) {
            return Err(Error::Corrupt {
                what: format!("restored file {}", path.display()),
                source: "its content does not match the hash recorded at backup".into(),
            });
        }
        use std::os::unix::fs::PermissionsExt;
        set_owner(path, node)?;
        file.set_permissions(std::fs::Permissions::from_mode(node.mode))
            .map_err(fail)?;
        file.set_modified(mtime(node)).map_err(fail)?;
        Ok(written)
    }
}
