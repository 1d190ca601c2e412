//! The build cache: a stage's outputs and artifacts stored under the key of its
//! [`Fingerprint`], on any [`BackupTarget`] (a directory, S3, memory), so an unchanged stage is
//! skipped and its outputs restored.
//!
//! Layout under the cache's prefix:
//! - `blobs/<blake3 hex>`: one file's content, zstd-compressed, shared by every entry that has
//!   it;
//! - `entries/<key>.json`: a stage's result: its fingerprint, its output files (path, digest,
//!   mode) and its artifacts; written after its blobs, so an entry that exists is whole;
//! - `last/<scope>/<stage>.json`: the fingerprint of the stage's last run in that pipeline,
//!   which `--explain` compares against to say what changed.
//!
//! Every restored file is checked against its digest; a missing or corrupt blob makes the
//! entry unusable (the stage runs), never a wrong file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use deploykit_core::backup::BackupTarget;
use deploykit_core::build::{Artifact, Fingerprint};
use deploykit_core::{Error, Result};

use crate::files::{self, FileEntry};

/// A stage's result as the cache keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CacheEntry {
    /// The stage's name.
    pub stage: String,
    /// What the result depends on.
    pub fingerprint: Fingerprint,
    /// The output files.
    pub files: Vec<FileEntry>,
    /// The artifacts, with paths relative to the working directory.
    pub artifacts: Vec<Artifact>,
}

/// A build cache on a [`BackupTarget`].
#[derive(Clone, Debug)]
pub struct BuildCache {
    target: Arc<dyn BackupTarget>,
    prefix: String,
}

impl BuildCache {
    /// A cache in `target` under `prefix` (e.g. `build-cache/`).
    pub fn new(target: Arc<dyn BackupTarget>, prefix: impl Into<String>) -> Self {
        let mut prefix = prefix.into();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        BuildCache { target, prefix }
    }

    fn entry_key(&self, key: &str) -> String {
        format!("{}entries/{key}.json", self.prefix)
    }

    fn blob_key(&self, file: &FileEntry) -> String {
        let hex = file.digest.as_str().split_once(':').map_or("", |(_, h)| h);
        format!("{}blobs/{hex}", self.prefix)
    }

    fn last_key(&self, scope: &str, stage: &str) -> String {
        format!("{}last/{scope}/{stage}.json", self.prefix)
    }

    /// The entry stored under `key`, if there is a readable one.
    pub async fn lookup(&self, key: &str) -> Result<Option<CacheEntry>> {
        match self.target.get(&self.entry_key(key)).await {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(entry) => Ok(Some(entry)),
                Err(e) => {
                    tracing::warn!(key, error = %e, "unreadable build cache entry; ignoring it");
                    Ok(None)
                }
            },
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stores the files at `outputs` (relative to `workdir`) and `artifacts` under
    /// `fingerprint`'s key.
    pub async fn store(
        &self,
        workdir: &Path,
        stage: &str,
        fingerprint: &Fingerprint,
        outputs: &[PathBuf],
        artifacts: &[Artifact],
    ) -> Result<()> {
        let mut entries = Vec::new();
        for output in outputs {
            let found = files::walk(workdir, output).map_err(|e| {
                Error::backend("store build outputs", format!("{}: {e}", output.display()))
            })?;
            entries.extend(found);
        }
        for file in &entries {
            let content = std::fs::read(files::under(workdir, &file.path)).map_err(|e| {
                Error::backend("store build outputs", format!("{}: {e}", file.path))
            })?;
            let compressed = zstd::bulk::compress(&content, 3)
                .map_err(|e| Error::backend("store build outputs", e.to_string()))?;
            match self
                .target
                .put_if_absent(&self.blob_key(file), compressed)
                .await
            {
                Ok(()) | Err(Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let artifacts = artifacts
            .iter()
            .map(|a| {
                let mut a = a.clone();
                a.path = a
                    .path
                    .as_ref()
                    .map(|p| p.strip_prefix(workdir).unwrap_or(p).to_path_buf());
                a
            })
            .collect();
        let entry = CacheEntry {
            stage: stage.to_string(),
            fingerprint: fingerprint.clone(),
            files: entries,
            artifacts,
        };
        let json = serde_json::to_vec(&entry).expect("a cache entry serializes");
        self.target
            .put(&self.entry_key(&fingerprint.key()), json)
            .await
    }

    /// Puts `entry`'s files back under `workdir` (leaving alone those already right, removing
    /// files under its output directories that it does not have); its artifacts, with
    /// absolute paths. An error if a blob is missing or does not match its digest.
    pub async fn restore(
        &self,
        workdir: &Path,
        entry: &CacheEntry,
        outputs: &[PathBuf],
    ) -> Result<Vec<Artifact>> {
        let what = format!("restore the outputs of build stage {}", entry.stage);
        for output in outputs {
            if !workdir.join(output).is_dir() {
                continue;
            }
            let on_disk = files::walk(workdir, output).unwrap_or_default();
            for stale in on_disk
                .iter()
                .filter(|f| !entry.files.iter().any(|e| e.path == f.path))
            {
                std::fs::remove_file(files::under(workdir, &stale.path))
                    .map_err(|e| Error::backend(&what, format!("{}: {e}", stale.path)))?;
            }
        }
        for file in &entry.files {
            let path = files::under(workdir, &file.path);
            let current = files::digest_file(&path).ok();
            let mode_ok =
                std::fs::metadata(&path).is_ok_and(|m| files::is_executable(&m) == file.executable);
            if current.as_ref().is_some_and(|(d, _)| *d == file.digest) && mode_ok {
                continue;
            }
            let compressed = self.target.get(&self.blob_key(file)).await?;
            let content = zstd::bulk::decompress(&compressed, file.size as usize + 1)
                .map_err(|e| Error::backend(&what, format!("{}: {e}", file.path)))?;
            let digest = deploykit_core::Digest::parse(&format!(
                "blake3:{}",
                blake3::hash(&content).to_hex()
            ))
            .expect("a blake3 digest");
            if digest != file.digest {
                return Err(Error::backend(
                    &what,
                    format!(
                        "the cached content of {} does not match its digest",
                        file.path
                    ),
                ));
            }
            let dir = path.parent().unwrap_or(workdir);
            std::fs::create_dir_all(dir).map_err(|e| Error::backend(&what, e.to_string()))?;
            let mut tmp = tempfile::NamedTempFile::new_in(dir)
                .map_err(|e| Error::backend(&what, e.to_string()))?;
            tmp.write_all(&content)
                .map_err(|e| Error::backend(&what, e.to_string()))?;
            set_executable(tmp.as_file(), file.executable)
                .map_err(|e| Error::backend(&what, e.to_string()))?;
            tmp.persist(&path)
                .map_err(|e| Error::backend(&what, format!("{}: {}", file.path, e.error)))?;
        }
        Ok(entry
            .artifacts
            .iter()
            .map(|a| {
                let mut a = a.clone();
                a.path = a.path.as_ref().map(|p| workdir.join(p));
                a
            })
            .collect())
    }

    /// The fingerprint of `stage`'s last run in pipeline `scope`.
    pub async fn last(&self, scope: &str, stage: &str) -> Result<Option<Fingerprint>> {
        match self.target.get(&self.last_key(scope, stage)).await {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Records `fingerprint` as `stage`'s last run in pipeline `scope`.
    pub async fn set_last(
        &self,
        scope: &str,
        stage: &str,
        fingerprint: &Fingerprint,
    ) -> Result<()> {
        let json = serde_json::to_vec(fingerprint).expect("a fingerprint serializes");
        self.target.put(&self.last_key(scope, stage), json).await
    }
}

#[cfg(unix)]
fn set_executable(file: &std::fs::File, executable: bool) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(if executable {
        0o755
    } else {
        0o644
    }))
}

#[cfg(not(unix))]
fn set_executable(_: &std::fs::File, _: bool) -> std::io::Result<()> {
    Ok(())
}
