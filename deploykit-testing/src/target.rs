//! An in-memory [`BackupTarget`] with fault injection and corruption helpers.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use deploykit_core::{BackupTarget, Error, ObjectMeta, Result};

#[derive(Debug, Default)]
struct Inner {
    objects: BTreeMap<String, Arc<Vec<u8>>>,
    /// Successful writes left before injected faults start; `None` when healthy.
    writes_left: Option<u64>,
}

/// A [`BackupTarget`] in memory, with the key rules and errors of
/// `deploykit_backup::LocalTarget`. Clones share data.
///
/// For crash-consistency tests it can fail writes ([`MemoryTarget::fail_after`]) and damage
/// stored objects ([`MemoryTarget::corrupt`], [`MemoryTarget::truncate`]).
#[derive(Clone, Debug, Default)]
pub struct MemoryTarget {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryTarget {
    /// An empty target.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After `n_writes` more successful writes (`put`, `put_if_absent`, `delete`), every
    /// further write fails with a retryable [`Error::Transient`] and has no effect, until
    /// [`MemoryTarget::heal`]. Reads are unaffected. `fail_after(0)` fails the next write.
    pub fn fail_after(&self, n_writes: u64) {
        self.lock().writes_left = Some(n_writes);
    }

    /// Stop injecting write faults.
    pub fn heal(&self) {
        self.lock().writes_left = None;
    }

    /// Flip (XOR `0xFF`) the byte at `offset` of the object under `key`.
    ///
    /// # Panics
    ///
    /// If there is no object under `key` or `offset` is not inside it.
    pub fn corrupt(&self, key: &str, offset: usize) {
        let mut inner = self.lock();
        let object = inner
            .objects
            .get_mut(key)
            .unwrap_or_else(|| panic!("MemoryTarget::corrupt: no object under {key:?}"));
        let len = object.len();
        let byte = Arc::make_mut(object).get_mut(offset).unwrap_or_else(|| {
            panic!("MemoryTarget::corrupt: offset {offset} is outside {key:?} ({len} bytes)")
        });
        *byte ^= 0xFF;
    }

    /// Cut the object under `key` down to its first `len` bytes.
    ///
    /// # Panics
    ///
    /// If there is no object under `key` or it is shorter than `len`.
    pub fn truncate(&self, key: &str, len: usize) {
        let mut inner = self.lock();
        let object = inner
            .objects
            .get_mut(key)
            .unwrap_or_else(|| panic!("MemoryTarget::truncate: no object under {key:?}"));
        assert!(
            len <= object.len(),
            "MemoryTarget::truncate: {key:?} is {} bytes, cannot truncate to {len}",
            object.len()
        );
        Arc::make_mut(object).truncate(len);
    }

    /// Every stored key with its size in bytes, in key order.
    pub fn keys(&self) -> Vec<(String, usize)> {
        self.lock()
            .objects
            .iter()
            .map(|(k, v)| (k.clone(), v.len()))
            .collect()
    }

    /// Runs the write `apply` unless a fault is due; a successful write uses up one of the
    /// writes left before faults.
    fn write<T>(
        &self,
        op: &str,
        key: &str,
        apply: impl FnOnce(&mut BTreeMap<String, Arc<Vec<u8>>>) -> Result<T>,
    ) -> Result<T> {
        deploykit_core::backup::check_key(key)?;
        let mut inner = self.lock();
        if inner.writes_left == Some(0) {
            return Err(Error::transient(format!("{op} {key}"), "injected fault"));
        }
        let out = apply(&mut inner.objects)?;
        if let Some(left) = inner.writes_left.as_mut() {
            *left -= 1;
        }
        Ok(out)
    }

    fn object(&self, key: &str) -> Result<Arc<Vec<u8>>> {
        deploykit_core::backup::check_key(key)?;
        self.lock()
            .objects
            .get(key)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("object {key}")))
    }
}

#[async_trait]
impl BackupTarget for MemoryTarget {
    async fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
        self.write("put", key, |objects| {
            objects.insert(key.to_owned(), Arc::new(data));
            Ok(())
        })
    }

    async fn put_if_absent(&self, key: &str, data: Vec<u8>) -> Result<()> {
        self.write("put_if_absent", key, |objects| {
            if objects.contains_key(key) {
                return Err(Error::AlreadyExists {
                    what: format!("object {key}"),
                });
            }
            objects.insert(key.to_owned(), Arc::new(data));
            Ok(())
        })
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>> {
        Ok(self.object(key)?.as_ref().clone())
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        let object = self.object(key)?;
        let len = object.len() as u64;
        let end = range.end.min(len);
        if range.start >= end {
            return Ok(Vec::new());
        }
        // Both bounds are at most `len`, which came from a `usize`.
        Ok(object[range.start as usize..end as usize].to_vec())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        Ok(self
            .lock()
            .objects
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| ObjectMeta::new(k.clone(), v.len() as u64))
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.write("delete", key, |objects| {
            objects.remove(key);
            Ok(())
        })
    }
}
