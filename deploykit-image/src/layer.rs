//! Reproducible layers: a [`Layer`] is a set of files at paths in the image, written as a
//! gzip-compressed tarball whose bytes depend on nothing but those files' paths, contents and
//! modes: entries sorted by path, every timestamp the layer's fixed `mtime`, owner and group
//! 0 (or the layer's `owner`), no user or group names, parent directories made explicit, and a
//! gzip header with no time and no name.
//!
//! ```
//! use deploykit_image::layer::Layer;
//! let mut a = Layer::new();
//! a.add_bytes("app/b.txt", b"b".to_vec(), 0o644)?;
//! a.add_bytes("app/a.txt", b"a".to_vec(), 0o644)?;
//! let mut b = Layer::new();
//! b.add_bytes("/app/a.txt", b"a".to_vec(), 0o644)?;
//! b.add_bytes("app/b.txt", b"b".to_vec(), 0o644)?;
//! let (mut one, mut two) = (Vec::new(), Vec::new());
//! assert_eq!(a.write(&mut one)?, b.write(&mut two)?);
//! assert_eq!(one, two);
//! # Ok::<(), deploykit_core::Error>(())
//! ```

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use flate2::Compression;
use sha2::{Digest as _, Sha256};

use deploykit_core::{Error, Result};

/// Where an entry's content comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Content {
    /// A directory.
    Dir,
    /// The file at this path on this machine (read when the layer is written).
    File(PathBuf),
    /// These bytes.
    Bytes(Vec<u8>),
    /// A symbolic link to this target.
    Symlink(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    content: Content,
    mode: u32,
}

/// A layer being assembled: paths in the image (relative to `/`) and what they hold.
#[derive(Clone, Debug, Default)]
pub struct Layer {
    entries: BTreeMap<String, Entry>,
    mtime: u64,
    owner: (u64, u64),
}

/// What a written layer is: the digest and size of the compressed tarball (what registries
/// store) and the digest of the uncompressed one (the image configuration's `diff_id`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LayerInfo {
    /// `sha256:` of the gzip-compressed tarball.
    pub digest: String,
    /// Size of the compressed tarball in bytes.
    pub size: u64,
    /// `sha256:` of the uncompressed tarball.
    pub diff_id: String,
    /// Files (not directories) in the layer.
    pub files: usize,
}

/// `path` as a path in the image: relative to `/`, `/`-separated, no `.`, `..` or empty
/// segment; `None` if it cannot be one.
fn image_path(path: &str) -> Option<String> {
    let mut parts = Vec::new();
    for component in Path::new(path).components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => parts.push(part.to_str()?.to_string()),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

impl Layer {
    /// An empty layer with timestamps 0 (1970-01-01) and owner root.
    pub fn new() -> Self {
        Layer::default()
    }

    /// Every entry's timestamp (seconds since the epoch), e.g. `SOURCE_DATE_EPOCH`.
    pub fn mtime(mut self, seconds: u64) -> Self {
        self.mtime = seconds;
        self
    }

    /// Every entry's owner and group (numeric), e.g. 65532 for a non-root image.
    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.owner = (uid, gid);
        self
    }

    /// Whether the layer holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The paths in the layer, sorted (directories included).
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    fn insert(&mut self, path: &str, content: Content, mode: u32) -> Result<()> {
        let Some(path) = image_path(path) else {
            return Err(Error::invalid(
                "image.layer.path",
                format!("{path:?} is not a path in the image (no `..`, not empty)"),
            ));
        };
        if mode > 0o7777 {
            return Err(Error::invalid(
                format!("image.layer.{path}.mode"),
                format!("{mode:o} is not a file mode (at most 7777 octal)"),
            ));
        }
        // Every parent becomes an explicit directory, so extraction never invents modes.
        let mut parent = String::new();
        for part in path.split('/').collect::<Vec<_>>().split_last().unwrap().1 {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            match self.entries.get(&parent) {
                Some(Entry {
                    content: Content::Dir,
                    ..
                })
                | None => {}
                Some(_) => {
                    return Err(Error::invalid(
                        format!("image.layer.{path}"),
                        format!("{parent} is a file in this layer, not a directory"),
                    ));
                }
            }
            self.entries.entry(parent.clone()).or_insert(Entry {
                content: Content::Dir,
                mode: 0o755,
            });
        }
        if content != Content::Dir && self.entries.keys().any(|k| is_under(k, &path)) {
            return Err(Error::invalid(
                format!("image.layer.{path}"),
                "is a directory in this layer already",
            ));
        }
        self.entries.insert(path, Entry { content, mode });
        Ok(())
    }

    /// `content` at `path` in the image, with `mode` (e.g. `0o644`, `0o755`).
    pub fn add_bytes(&mut self, path: &str, content: Vec<u8>, mode: u32) -> Result<()> {
        self.insert(path, Content::Bytes(content), mode)
    }

    /// The file at `source` on this machine, at `path` in the image, with `mode`. The file is
    /// read when the layer is written.
    pub fn add_file(&mut self, path: &str, source: impl Into<PathBuf>, mode: u32) -> Result<()> {
        self.insert(path, Content::File(source.into()), mode)
    }

    /// A directory at `path`, with `mode`.
    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<()> {
        self.insert(path, Content::Dir, mode)
    }

    /// A symbolic link at `path` to `target`.
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.insert(path, Content::Symlink(target.to_string()), 0o777)
    }

    /// Everything under the directory `source` on this machine, at `path` in the image:
    /// files keep only whether they are executable (mode 755, else 644), directories are 755,
    /// symbolic links stay links. The tree is read now; file contents when the layer is
    /// written.
    pub fn add_tree(&mut self, path: &str, source: &Path) -> Result<()> {
        let unreadable = |p: &Path, e: io::Error| {
            Error::invalid(
                format!("image.layer.{path}"),
                format!("cannot read {}: {e}", p.display()),
            )
        };
        let mut stack = vec![(source.to_path_buf(), path.trim_end_matches('/').to_string())];
        self.add_dir(path, 0o755)?;
        while let Some((dir, at)) = stack.pop() {
            let entries = std::fs::read_dir(&dir).map_err(|e| unreadable(&dir, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| unreadable(&dir, e))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else {
                    return Err(Error::invalid(
                        format!("image.layer.{path}"),
                        format!("{} has a name that is not UTF-8", entry.path().display()),
                    ));
                };
                let inside = format!("{at}/{name}");
                let kind = entry
                    .file_type()
                    .map_err(|e| unreadable(&entry.path(), e))?;
                if kind.is_symlink() {
                    let target = std::fs::read_link(entry.path())
                        .map_err(|e| unreadable(&entry.path(), e))?;
                    self.add_symlink(&inside, &target.to_string_lossy())?;
                } else if kind.is_dir() {
                    self.add_dir(&inside, 0o755)?;
                    stack.push((entry.path(), inside));
                } else {
                    let meta = entry.metadata().map_err(|e| unreadable(&entry.path(), e))?;
                    self.add_file(&inside, entry.path(), executable_mode(&meta))?;
                }
            }
        }
        Ok(())
    }

    /// Writes the layer, gzip-compressed, to `out`; returns its digests and size. The same
    /// entries always give the same bytes.
    pub fn write(&self, out: impl Write) -> Result<LayerInfo> {
        let failed = |e: io::Error| Error::backend("write image layer", e.to_string());
        let compressed = Hashing::new(out);
        let gzip = flate2::GzBuilder::new()
            .operating_system(255)
            .write(compressed, Compression::default());
        let mut tar = tar::Builder::new(Hashing::new(gzip));
        let mut files = 0;
        for (path, entry) in &self.entries {
            let mut header = tar::Header::new_ustar();
            header.set_mtime(self.mtime);
            header.set_uid(self.owner.0);
            header.set_gid(self.owner.1);
            header.set_mode(entry.mode);
            match &entry.content {
                Content::Dir => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    tar.append_data(&mut header, format!("{path}/"), io::empty())
                        .map_err(failed)?;
                }
                Content::Bytes(bytes) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(bytes.len() as u64);
                    tar.append_data(&mut header, path, bytes.as_slice())
                        .map_err(failed)?;
                    files += 1;
                }
                Content::File(source) => {
                    let file = std::fs::File::open(source).map_err(|e| {
                        Error::invalid(
                            format!("image.layer.{path}"),
                            format!("cannot read {}: {e}", source.display()),
                        )
                    })?;
                    let size = file.metadata().map_err(failed)?.len();
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(size);
                    // A file that changes size while it is read would corrupt the tarball;
                    // `take` keeps the entry at the size in its header, and a short read fails.
                    tar.append_data(&mut header, path, io::Read::take(file, size))
                        .map_err(|e| {
                            Error::backend(
                                "write image layer",
                                format!("{} (changed while read?): {e}", source.display()),
                            )
                        })?;
                    files += 1;
                }
                Content::Symlink(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    tar.append_link(&mut header, path, target).map_err(failed)?;
                }
            }
        }
        let (gzip, diff_id, _) = tar.into_inner().map_err(failed)?.finish();
        let (_, digest, size) = gzip.finish().map_err(failed)?.finish();
        Ok(LayerInfo {
            digest,
            size,
            diff_id,
            files,
        })
    }
}

/// Whether `path` is strictly inside directory `dir` (both image paths).
fn is_under(path: &str, dir: &str) -> bool {
    path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

#[cfg(unix)]
fn executable_mode(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o111 != 0 {
        0o755
    } else {
        0o644
    }
}

#[cfg(not(unix))]
fn executable_mode(_: &std::fs::Metadata) -> u32 {
    0o644
}

/// A writer that digests (SHA-256) and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// The inner writer, `sha256:<hex>` of what was written, and how many bytes.
    fn finish(self) -> (W, String, u64) {
        let digest = format!("sha256:{:x}", self.hasher.finalize());
        (self.inner, digest, self.count)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_and_escapes_refused() {
        assert_eq!(image_path("/app//./a"), Some("app/a".into()));
        assert_eq!(image_path("../etc/passwd"), None);
        assert_eq!(image_path("app/../../x"), None);
        assert_eq!(image_path("/"), None);
        let mut layer = Layer::new();
        let e = layer.add_bytes("a/../../x", vec![], 0o644).unwrap_err();
        assert!(e.to_string().contains("not a path in the image"), "{e}");
        let e = layer.add_bytes("x", vec![], 0o17777).unwrap_err();
        assert!(e.to_string().contains("image.layer.x.mode"), "{e}");
    }

    #[test]
    fn a_file_and_a_directory_cannot_share_a_path() {
        let mut layer = Layer::new();
        layer.add_bytes("app/run", b"x".to_vec(), 0o755).unwrap();
        let e = layer.add_bytes("app/run/inner", vec![], 0o644).unwrap_err();
        assert!(e.to_string().contains("app/run is a file"), "{e}");
        let e = layer.add_bytes("app", vec![], 0o644).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
    }
}
