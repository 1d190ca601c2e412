//! Backups: a deduplicated, compressed, encrypted [`Repository`] over any [`BackupTarget`]
//! (a blob store in the manner of the `object_store` crate: [`LocalTarget`] here, in-memory in
//! `deploykit-testing`, S3 in `deploykit-aws`).
//!
//! - Content-defined chunking (FastCDC, 1 MiB average), chunk ids keyed BLAKE3 (not
//!   fingerprintable without the repository's key), zstd (skipped where it does not pay),
//!   XChaCha20-Poly1305 on everything; chunks grouped into 16 MiB packs.
//! - A random master key, wrapped by Argon2id passphrases and raw key files.
//! - Full, incremental, differential and snapshot (hooked) backups of directories and of
//!   byte streams ([`BackupSource`], e.g. a database dump); every snapshot restores alone.
//! - Retention ([`RetentionPolicy`]) with a dry run, prune that is safe alongside backups,
//!   verify (metadata, all data, or a sample), parallel restore, and DR drills.
//!
//! The layout is in `docs/ARCHITECTURE.md` ("Backup repository").

mod crypto;
mod drill;
mod format;
pub mod local;
mod prune;
mod repo;
mod restore;
pub mod retention;
mod save;
mod schedule;
mod source;
mod verify;

pub use crypto::RepoKey;
pub use drill::{DrillReport, DrillTargets};
pub use format::{BackupKind, BackupSummary, REPO_VERSION, Snapshot};
pub use local::LocalTarget;
pub use prune::{PruneOptions, PruneReport};
pub use repo::{RepoOptions, Repository};
pub use restore::{RestoreOptions, RestoreSummary};
pub use retention::{Candidate, Decision, RetentionPolicy};
pub use save::{BackupRequest, Progress, ProgressFn};
pub use schedule::{BackupPolicy, RunReport, ScheduledRun, Scheduler};
pub use source::{BackupSource, CommandSource};
pub use verify::{Problem, ReadData, VerifyReport};

use std::fmt;
use std::ops::Range;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// A stored object's key and size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ObjectMeta {
    /// The object's key, `/`-separated.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
}

/// The key rules every [`BackupTarget`] enforces: a `/`-separated relative path of plain
/// names — not empty, no leading `/`, no empty, `.` or `..` segments, no backslash or NUL, and
/// no last name starting with `.tmp-` (reserved for targets' temporary files). Errors are
/// [`crate::Error::InvalidSpec`] naming the key.
pub fn check_key(key: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(crate::Error::invalid(
            "backup.key",
            format!("key {key:?} {reason}"),
        ))
    };
    if key.is_empty() {
        return bad("is empty");
    }
    if key.starts_with('/') {
        return bad("must not start with `/`");
    }
    if key.contains('\\') {
        return bad("must not contain a backslash");
    }
    if key.contains('\0') {
        return bad("must not contain NUL");
    }
    for segment in key.split('/') {
        match segment {
            "" => return bad("must not contain empty segments (`//` or a trailing `/`)"),
            "." | ".." => return bad("must not contain `.` or `..` segments"),
            _ => {}
        }
    }
    if key
        .rsplit('/')
        .next()
        .is_some_and(|name| name.starts_with(".tmp-"))
    {
        return bad("must not end in a name starting with `.tmp-` (reserved for temporary files)");
    }
    Ok(())
}

impl ObjectMeta {
    /// The metadata of the object `key` of `size` bytes.
    pub fn new(key: impl Into<String>, size: u64) -> Self {
        ObjectMeta {
            key: key.into(),
            size,
        }
    }
}

/// A flat key → bytes store. Keys are `/`-separated paths without a leading `/`.
///
/// Errors: a missing key is [`crate::Error::NotFound`]; a conditional put over an existing key
/// is [`crate::Error::AlreadyExists`]; throttling and other temporary failures are
/// [`crate::Error::Transient`].
#[async_trait]
pub trait BackupTarget: Send + Sync + fmt::Debug {
    /// Store `data` under `key`, replacing any object there. Atomic: readers see the old
    /// object or the new one, never a part.
    async fn put(&self, key: &str, data: Vec<u8>) -> Result<()>;

    /// Store `data` under `key` only if no object is there; otherwise fail with
    /// `AlreadyExists` and leave the existing object untouched.
    async fn put_if_absent(&self, key: &str, data: Vec<u8>) -> Result<()>;

    /// The whole object under `key`.
    async fn get(&self, key: &str) -> Result<Vec<u8>>;

    /// Bytes `range` of the object under `key` (the range is clipped to the object's end).
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>>;

    /// Every object whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;

    /// Remove the object under `key`. Removing a missing key is not an error.
    async fn delete(&self, key: &str) -> Result<()>;
}
