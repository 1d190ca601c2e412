//! Backups: the contract every blob store implements ([`BackupTarget`], in the manner of the
//! `object_store` crate) and the key rules it enforces. The backup engine (a deduplicated,
//! compressed, encrypted repository over any target), `LocalTarget`, schedules and drills are
//! in `deploykit-backup`; an in-memory target is in `deploykit-testing`, S3 in
//! `deploykit-aws`, a Kubernetes object store in `deploykit-k8s`.

use std::fmt;
use std::io::Read;
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

/// A source of one stream of bytes, stored as the file `name` at the snapshot's root.
///
/// `open` is called on a blocking thread; the reader may fail at the end (a dump that exits
/// non-zero) and the backup then fails without writing a snapshot.
pub trait BackupSource: Send + Sync + fmt::Debug {
    /// The file name in the snapshot (one path segment).
    fn name(&self) -> &str;

    /// Start the stream.
    fn open(&self) -> Result<Box<dyn Read + Send>>;
}
