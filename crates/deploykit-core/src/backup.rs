//! The [`BackupTarget`] trait: the blob store the backup engine writes its repository into, in
//! the manner of the `object_store` crate. The engine (chunking, packing, encryption) and the
//! targets (filesystem, in-memory, S3) come with the backup work; this module fixes the contract.

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
