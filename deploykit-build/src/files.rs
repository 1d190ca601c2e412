//! Files under a build's working directory: their content digests, one by one and as trees.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use deploykit_core::{Digest, Error, Result};

/// One file of a stage's outputs or inputs: its path relative to the working directory, its
/// content digest (BLAKE3), size and whether it is executable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FileEntry {
    /// `/`-separated path relative to the working directory.
    pub path: String,
    /// `blake3:` of the content.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// Whether any execute bit is set.
    pub executable: bool,
}

/// Checks that `path` stays inside the working directory (relative, no `..`); `field` names
/// it in the error.
pub(crate) fn check_relative(field: &str, path: &Path) -> Result<()> {
    if path.as_os_str().is_empty()
        || path.is_absolute()
        || path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::Prefix(_)))
    {
        return Err(Error::invalid(
            field,
            format!(
                "{:?} must stay inside the working directory (relative, no `..`)",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// The content digest and size of the file at `path`.
pub fn digest_file(path: &Path) -> std::io::Result<(Digest, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut file = std::fs::File::open(path)?;
    let size = std::io::copy(&mut file, &mut hasher)?;
    let digest = Digest::parse(&format!("blake3:{}", hasher.finalize().to_hex()))
        .expect("a blake3 hex digest parses");
    Ok((digest, size))
}

#[cfg(unix)]
pub(crate) fn is_executable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
pub(crate) fn is_executable(_: &std::fs::Metadata) -> bool {
    false
}

/// Every file at or under `rel` (a file or a directory, relative to `workdir`), sorted by
/// path. Symbolic links are followed; a missing path is an `io::ErrorKind::NotFound` error.
pub fn walk(workdir: &Path, rel: &Path) -> std::io::Result<Vec<FileEntry>> {
    let mut out = Vec::new();
    let mut stack = vec![rel.to_path_buf()];
    while let Some(rel) = stack.pop() {
        let full = workdir.join(&rel);
        let meta = std::fs::metadata(&full)?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&full)? {
                stack.push(rel.join(entry?.file_name()));
            }
        } else {
            let (digest, size) = digest_file(&full)?;
            out.push(FileEntry {
                path: slash_path(&rel),
                digest,
                size,
                executable: is_executable(&meta),
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// `path` with `/` separators and no `.` segments.
pub(crate) fn slash_path(path: &Path) -> String {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// One digest for a set of files: their paths, modes and contents.
pub fn tree_digest(files: &[FileEntry]) -> Digest {
    let mut hasher = blake3::Hasher::new();
    for f in files {
        hasher.update(f.path.as_bytes());
        hasher.update(&[0, u8::from(f.executable)]);
        hasher.update(f.digest.as_str().as_bytes());
        hasher.update(b"\n");
    }
    Digest::parse(&format!("blake3:{}", hasher.finalize().to_hex())).expect("a blake3 digest")
}

/// The path of `rel` under `workdir`.
pub(crate) fn under(workdir: &Path, rel: &str) -> PathBuf {
    workdir.join(rel)
}
