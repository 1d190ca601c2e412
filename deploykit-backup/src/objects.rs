//! Named objects: byte streams stored under a name the caller chooses (a PostgreSQL WAL
//! segment as `wal/000000010000000000000003`), beside the snapshots.
//!
//! The content is chunked, deduplicated, compressed and encrypted like a snapshot's files and
//! stored in packs; then the index naming those packs; then — last — `named/<name>`, an
//! encrypted list of the chunks, bound to its name. An interrupted put therefore leaves at
//! most packs nothing refers to (prune removes them), never an object that reads as complete.
//! A name is written once: putting identical content again succeeds without writing anything,
//! different content is refused. Reads check every chunk against its id and the whole content
//! against its recorded size and BLAKE3. Prune keeps every chunk a named object uses.
//!
//! Names are visible to whoever can list the target (the content is not).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::crypto::random_id;
use super::format::{BlobEntry, BlobKind, IndexFile, LockFile, PackEntry};
use super::repo::{Index, Repository, pack_key};
use super::save::PackWriter;
use deploykit_core::time::Timestamp;
use deploykit_core::{Error, Result};

/// Where named objects live in the target: `named/<name>`.
const PREFIX: &str = "named/";
/// How often a running put refreshes its lock (well within a lock's 5-minute lifetime).
const LOCK_REFRESH: Duration = Duration::from_secs(60);
/// The longest name accepted, in bytes.
const MAX_NAME: usize = 255;

/// `named/<name>`: one named object's chunks, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedFile {
    name: String,
    size: u64,
    /// BLAKE3 of the whole content.
    hash: String,
    created: Timestamp,
    chunks: Vec<ChunkRef>,
}

/// One chunk: its blob id and where it was when the object was written. A prune that repacks
/// moves blobs (the old pack is then deleted): reads fall back to the index for those.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChunkRef {
    id: String,
    pack: String,
    offset: u64,
    length: u64,
    raw_length: u64,
    compressed: bool,
}

impl ChunkRef {
    fn entry(&self) -> BlobEntry {
        BlobEntry {
            id: self.id.clone(),
            kind: BlobKind::Data,
            offset: self.offset,
            length: self.length,
            raw_length: self.raw_length,
            compressed: self.compressed,
        }
    }
}

/// A named object as the repository describes it ([`Repository::named`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NamedObject {
    /// Its name.
    pub name: String,
    /// Bytes of content.
    pub size: u64,
    /// BLAKE3 of the content, in hex.
    pub hash: String,
    /// When it was stored.
    pub created: Timestamp,
    /// How many chunks the content was cut into.
    pub chunks: u64,
}

impl From<&NamedFile> for NamedObject {
    fn from(f: &NamedFile) -> Self {
        NamedObject {
            name: f.name.clone(),
            size: f.size,
            hash: f.hash.clone(),
            created: f.created,
            chunks: f.chunks.len() as u64,
        }
    }
}

/// What [`Repository::put_named`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NamedPut {
    /// The object now under the name.
    pub object: NamedObject,
    /// `false` when the name already held exactly this content and nothing was written.
    pub written: bool,
    /// Chunks new to the repository.
    pub blobs_added: u64,
    /// Bytes written to the target (packs, after compression and encryption).
    pub bytes_stored: u64,
}

/// Check an object name: `/`-separated segments of ASCII letters, digits, `.`, `_` and `-`,
/// none empty or starting with `.`, at most 255 bytes in all.
fn check_name(name: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(Error::invalid(
            "backup.object_name",
            format!("{name:?} {reason}"),
        ))
    };
    if name.is_empty() {
        return bad("is empty");
    }
    if name.len() > MAX_NAME {
        return bad(&format!("is longer than {MAX_NAME} bytes"));
    }
    for segment in name.split('/') {
        if segment.is_empty() {
            return bad("has an empty segment (`//`, or a `/` at an end)");
        }
        if segment.starts_with('.') {
            return bad("has a segment starting with `.`");
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return bad(&format!(
                "contains {c:?} (allowed: ASCII letters, digits, `.`, `_`, `-`, and `/` between segments)"
            ));
        }
    }
    Ok(())
}

fn named_key(name: &str) -> String {
    format!("{PREFIX}{name}")
}

fn corrupt(what: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        what: what.into(),
        source: reason.into().into(),
    }
}

/// `e` from reading chunk `i` of `what`: damage is reported as damage of `what`.
fn in_chunk(what: &str, i: usize, e: Error) -> Error {
    match e {
        Error::Corrupt {
            what: inner,
            source,
        } => Error::Corrupt {
            what: format!("{what} (chunk {i}: {inner})"),
            source,
        },
        other => other,
    }
}

/// The size and BLAKE3 of a stream.
fn hash_stream(mut content: impl Read) -> std::io::Result<(u64, String)> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        match content.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                size += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((size, hasher.finalize().to_hex().to_string()))
}

/// What chunking a stream produced: blob ids in order, size, BLAKE3.
type Chunked = (Vec<String>, u64, String);

/// The existing object if it holds content of `size` and `hash`; otherwise the refusal.
fn same_or_refuse(existing: &NamedFile, size: u64, hash: &str) -> Result<NamedObject> {
    if existing.size == size && existing.hash == hash {
        return Ok(NamedObject::from(existing));
    }
    Err(Error::AlreadyExists {
        what: format!(
            "named object {} with other content ({} bytes, BLAKE3 {}…; the content given is \
             {size} bytes, BLAKE3 {}…)",
            existing.name,
            existing.size,
            &existing.hash[..12.min(existing.hash.len())],
            &hash[..12.min(hash.len())]
        ),
    })
}

impl Repository {
    /// Store `content` under `name` (`/`-separated segments of ASCII letters, digits, `.`,
    /// `_`, `-`): chunked, deduplicated against the whole repository, compressed and
    /// encrypted; the object itself is written last, so a put that fails or is killed leaves
    /// no object under `name`.
    ///
    /// Idempotent: if `name` holds exactly this content already, nothing is written and
    /// [`NamedPut::written`] is `false`. If it holds other content, the put fails with
    /// [`Error::AlreadyExists`] naming both sizes and hashes, and the stored object is left as
    /// it was. `content` is read on a blocking thread.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> deploykit_core::Result<()> {
    /// use std::sync::Arc;
    /// use deploykit_backup::{LocalTarget, RepoKey, RepoOptions, Repository};
    /// let dir = std::env::temp_dir().join(format!("deploykit-doc-named-{}", std::process::id()));
    /// let target = Arc::new(LocalTarget::new(&dir)?);
    /// let options = RepoOptions::builder().kdf_cost((1024, 1)).build();
    /// let repo = Repository::init(target, &RepoKey::passphrase("pw"), options).await?;
    /// let put = repo.put_named("wal/000000010000000000000001", &b"segment bytes"[..]).await?;
    /// assert!(put.written);
    /// // The same content again: nothing to do. Other content: refused.
    /// assert!(!repo.put_named("wal/000000010000000000000001", &b"segment bytes"[..]).await?.written);
    /// assert!(repo.put_named("wal/000000010000000000000001", &b"other"[..]).await.is_err());
    /// assert_eq!(repo.read_named("wal/000000010000000000000001").await?, b"segment bytes");
    /// assert_eq!(repo.list_named("wal/").await?, ["wal/000000010000000000000001"]);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok(())
    /// # }
    /// ```
    pub async fn put_named<R>(&self, name: &str, content: R) -> Result<NamedPut>
    where
        R: Read + Send + 'static,
    {
        check_name(name)?;
        if let Some(existing) = self.load_named(name).await? {
            let (size, hash) = tokio::task::spawn_blocking(move || hash_stream(content))
                .await
                .map_err(|e| Error::backend("hash named object content", e.to_string()))?
                .map_err(|e| {
                    Error::backend(
                        format!("read the content for named object {name}"),
                        e.to_string(),
                    )
                })?;
            return Ok(NamedPut {
                object: same_or_refuse(&existing, size, &hash)?,
                written: false,
                blobs_added: 0,
                bytes_stored: 0,
            });
        }
        // A lock, as a backup takes: a prune deletes no pack this put may still refer to.
        let started = self.clock.now();
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_string());
        let lock_key = format!("locks/{}", random_id());
        let lock = |refreshed| {
            serde_json::to_vec(&LockFile {
                started,
                refreshed,
                host: host.clone(),
            })
            .expect("locks serialise")
        };
        self.target.put(&lock_key, lock(started)).await?;
        let refresh = async {
            loop {
                tokio::time::sleep(LOCK_REFRESH).await;
                if let Err(e) = self.target.put(&lock_key, lock(self.clock.now())).await {
                    tracing::warn!(error = %e.chain(), "could not refresh the lock of a put");
                }
            }
        };
        let result = tokio::select! {
            r = self.put_named_locked(name, content) => r,
            () = refresh => unreachable!("the refresh loop never ends"),
        };
        if let Err(e) = self.target.delete(&lock_key).await {
            tracing::warn!(error = %e.chain(), "could not remove the lock of a put; it expires");
        }
        result
    }

    async fn put_named_locked<R>(&self, name: &str, content: R) -> Result<NamedPut>
    where
        R: Read + Send + 'static,
    {
        let mut index = self.load_index().await?;
        // Blobs in packs a prune marked are treated as absent (as a backup does), so this
        // object never refers to a pack that may be deleted.
        for (_, mark) in self.load_marks().await? {
            for pack in mark.packs {
                if let Some(p) = index.packs.remove(&pack) {
                    for b in p.blobs {
                        index.blobs.remove(&b.id);
                    }
                }
            }
        }
        let known: HashSet<String> = index.blobs.keys().cloned().collect();
        let (tx, mut rx) = mpsc::channel::<(PackEntry, Vec<u8>)>(2);
        let repo = self.clone();
        let owned_name = name.to_string();
        let work = tokio::task::spawn_blocking(move || {
            chunk_and_seal(&repo, &owned_name, content, known, tx)
        });
        let target = self.target.clone();
        let upload = async move {
            let mut packs = Vec::new();
            let mut stored = 0u64;
            while let Some((entry, bytes)) = rx.recv().await {
                stored += bytes.len() as u64;
                match target.put_if_absent(&pack_key(&entry.id), bytes).await {
                    Ok(()) | Err(Error::AlreadyExists { .. }) => packs.push(entry),
                    Err(e) => return Err(e),
                }
            }
            Ok((packs, stored))
        };
        let (work, upload) = tokio::join!(work, upload);
        // An upload failure explains the chunker's failure to hand over a pack: report it first.
        let (packs, bytes_stored) = upload?;
        let (ids, size, hash) =
            work.map_err(|e| Error::backend(format!("put named object {name}"), e.to_string()))??;
        let blobs_added: u64 = packs.iter().map(|p| p.blobs.len() as u64).sum();
        if !packs.is_empty() {
            self.put_object(
                "index",
                &IndexFile {
                    packs: packs.clone(),
                    supersedes: Vec::new(),
                },
            )
            .await?;
        }
        for pack in packs {
            index.add_pack(pack);
        }
        let chunks = ids
            .iter()
            .map(|id| {
                let (pack, entry) = index.blobs.get(id).ok_or_else(|| {
                    Error::backend(
                        format!("put named object {name}"),
                        format!("chunk {} is in no index", &id[..12]),
                    )
                })?;
                Ok(ChunkRef {
                    id: id.clone(),
                    pack: pack.to_string(),
                    offset: entry.offset,
                    length: entry.length,
                    raw_length: entry.raw_length,
                    compressed: entry.compressed,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let file = NamedFile {
            name: name.to_string(),
            size,
            hash,
            created: self.clock.now(),
            chunks,
        };
        // Last: only now does the object exist.
        match self
            .target
            .put_if_absent(&named_key(name), self.seal_named(&file)?)
            .await
        {
            Ok(()) => {
                tracing::debug!(name, size, blobs_added, bytes_stored, "stored named object");
                Ok(NamedPut {
                    object: NamedObject::from(&file),
                    written: true,
                    blobs_added,
                    bytes_stored,
                })
            }
            // Another put of the same name finished first.
            Err(Error::AlreadyExists { .. }) => {
                let existing = self.load_named(name).await?.ok_or_else(|| {
                    Error::backend(
                        format!("put named object {name}"),
                        "it existed a moment ago and is gone now",
                    )
                })?;
                Ok(NamedPut {
                    object: same_or_refuse(&existing, file.size, &file.hash)?,
                    written: false,
                    blobs_added,
                    bytes_stored,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// The named object `name`, without reading its content. [`Error::NotFound`] if there is
    /// none; [`Error::Corrupt`] naming it if its record is damaged.
    pub async fn named(&self, name: &str) -> Result<NamedObject> {
        check_name(name)?;
        self.load_named(name)
            .await?
            .map(|f| NamedObject::from(&f))
            .ok_or_else(|| Error::not_found(format!("named object {name}")))
    }

    /// The whole content of `name` (see [`Repository::read_named_to`]).
    pub async fn read_named(&self, name: &str) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.read_named_to(name, &mut out).await?;
        Ok(out)
    }

    /// Write the content of `name` to `out`, chunk by chunk, checking each chunk against its id
    /// and, at the end, the whole against its recorded size and BLAKE3. [`Error::NotFound`] if
    /// there is no such object; damage is [`Error::Corrupt`] naming the object (and the chunk
    /// and pack). On an error `out` may hold part of the content: write to a temporary file and
    /// keep it only on success.
    pub async fn read_named_to<W>(&self, name: &str, out: &mut W) -> Result<NamedObject>
    where
        W: Write + Send + ?Sized,
    {
        check_name(name)?;
        let file = self
            .load_named(name)
            .await?
            .ok_or_else(|| Error::not_found(format!("named object {name}")))?;
        let what = format!("named object {name}");
        let mut index: Option<Index> = None;
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        for (i, chunk) in file.chunks.iter().enumerate() {
            let at = chunk.offset..chunk.offset + chunk.length;
            let plain = match self.target.get_range(&pack_key(&chunk.pack), at).await {
                Ok(sealed) if sealed.len() as u64 == chunk.length => {
                    self.open_blob(&chunk.pack, &chunk.entry(), &sealed)
                }
                Ok(_) => Err(corrupt(
                    format!("backup object {}", pack_key(&chunk.pack)),
                    "it is shorter than the object's record says (truncated)",
                )),
                // Moved by a prune's repacking: the index knows where it is now.
                Err(Error::NotFound { .. }) => {
                    if index.is_none() {
                        index = Some(self.load_index().await?);
                    }
                    let index = index.as_ref().expect("just loaded");
                    self.read_blob(index, &chunk.id).await
                }
                Err(e) => Err(e),
            }
            .map_err(|e| in_chunk(&what, i, e))?;
            hasher.update(&plain);
            size += plain.len() as u64;
            out.write_all(&plain).map_err(|e| {
                Error::backend(format!("write the content of {what}"), e.to_string())
            })?;
        }
        if size != file.size || hasher.finalize().to_hex().as_str() != file.hash {
            return Err(corrupt(
                what,
                "its content does not match its recorded size and BLAKE3",
            ));
        }
        Ok(NamedObject::from(&file))
    }

    /// The names of the named objects starting with `prefix` (`""` for all), sorted.
    pub async fn list_named(&self, prefix: &str) -> Result<Vec<String>> {
        if !prefix.is_empty() {
            // A prefix is a name, or a name followed by `/`.
            check_name(prefix.strip_suffix('/').unwrap_or(prefix))?;
        }
        let mut names: Vec<String> = self
            .target
            .list(&named_key(prefix))
            .await?
            .into_iter()
            .filter_map(|m| m.key.strip_prefix(PREFIX).map(str::to_string))
            .filter(|n| check_name(n).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Remove the named object `name`; returns whether there was one. Its chunks stay until
    /// [`Repository::prune`] finds nothing else uses them.
    pub async fn delete_named(&self, name: &str) -> Result<bool> {
        check_name(name)?;
        let key = named_key(name);
        let existed = match self.target.get(&key).await {
            Ok(_) => true,
            Err(Error::NotFound { .. }) => false,
            Err(e) => return Err(e),
        };
        self.target.delete(&key).await?;
        Ok(existed)
    }

    /// Every blob a named object uses: what prune must keep besides the snapshots' blobs. A
    /// damaged object record fails the prune rather than let its chunks go.
    pub(super) async fn named_blobs(&self) -> Result<HashSet<String>> {
        let mut used = HashSet::new();
        for name in self.list_named("").await? {
            if let Some(file) = self.load_named(&name).await? {
                used.extend(file.chunks.into_iter().map(|c| c.id));
            }
        }
        Ok(used)
    }

    /// The record of `name`, if there is one.
    async fn load_named(&self, name: &str) -> Result<Option<NamedFile>> {
        match self.target.get(&named_key(name)).await {
            Ok(sealed) => self.open_named(name, &sealed).map(Some),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn seal_named(&self, file: &NamedFile) -> Result<Vec<u8>> {
        let json = serde_json::to_vec(file).expect("named objects serialise");
        let compressed = zstd::bulk::compress(&json, self.config.compression_level)
            .map_err(|e| Error::backend("compress", e.to_string()))?;
        self.keys
            .seal(&compressed, named_key(&file.name).as_bytes())
    }

    fn open_named(&self, name: &str, sealed: &[u8]) -> Result<NamedFile> {
        let key = named_key(name);
        let what = format!("named object {name}");
        let compressed = self.keys.open(sealed, key.as_bytes()).map_err(|()| {
            corrupt(
                &what,
                format!("{key} does not decrypt (damaged, or not written under this name)"),
            )
        })?;
        // Streamed, and bounded: a hostile record cannot make us allocate without limit.
        let mut json = Vec::new();
        zstd::stream::read::Decoder::new(compressed.as_slice())
            .and_then(|d| Read::read_to_end(&mut Read::take(d, 1 << 30), &mut json))
            .map_err(|e| corrupt(&what, format!("{key} does not decompress: {e}")))?;
        let file: NamedFile = serde_json::from_slice(&json)
            .map_err(|e| corrupt(&what, format!("{key} is not a named object record: {e}")))?;
        if file.name != name {
            return Err(corrupt(
                &what,
                format!("{key} records the name {:?}", file.name),
            ));
        }
        Ok(file)
    }
}

/// Cut `content` into chunks, seal those the repository lacks into packs and hand full packs
/// to `uploads`. Runs on a blocking thread.
fn chunk_and_seal(
    repo: &Repository,
    name: &str,
    content: impl Read,
    mut known: HashSet<String>,
    uploads: mpsc::Sender<(PackEntry, Vec<u8>)>,
) -> Result<Chunked> {
    let c = &repo.config;
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    let mut ids = Vec::new();
    let mut pack = PackWriter::default();
    let send = |pack: PackWriter| -> Result<()> {
        uploads.blocking_send(pack.finish(repo)?).map_err(|_| {
            Error::backend(
                format!("put named object {name}"),
                "the pack upload stopped (see the earlier error)",
            )
        })
    };
    for chunk in fastcdc::v2020::StreamCDC::new(content, c.chunk_min, c.chunk_avg, c.chunk_max) {
        let chunk = chunk.map_err(|e| {
            Error::backend(
                format!("read the content for named object {name}"),
                std::io::Error::from(e).to_string(),
            )
        })?;
        let data = chunk.data;
        hasher.update(&data);
        size += data.len() as u64;
        let id = repo.keys.blob_id(&data);
        if known.insert(id.clone()) {
            pack.seal(repo, id.clone(), BlobKind::Data, &data)?;
            if pack.len() as u64 >= c.pack_size {
                send(std::mem::take(&mut pack))?;
            }
        }
        ids.push(id);
    }
    if !pack.is_empty() {
        send(pack)?;
    }
    Ok((ids, size, hasher.finalize().to_hex().to_string()))
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;
    use std::ops::Range;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::test_data::noise;
    use crate::{BackupTarget, LocalTarget, ObjectMeta, PruneOptions, RepoKey, RepoOptions};

    /// A local target whose puts of `named/` keys fail while `fail_named` is set: a put killed
    /// just before its last write.
    #[derive(Debug)]
    struct Flaky {
        inner: LocalTarget,
        fail_named: AtomicBool,
    }

    #[async_trait]
    impl BackupTarget for Flaky {
        async fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
            self.inner.put(key, data).await
        }
        async fn put_if_absent(&self, key: &str, data: Vec<u8>) -> Result<()> {
            if key.starts_with(PREFIX) && self.fail_named.load(Ordering::SeqCst) {
                return Err(Error::transient("put", "the process was killed"));
            }
            self.inner.put_if_absent(key, data).await
        }
        async fn get(&self, key: &str) -> Result<Vec<u8>> {
            self.inner.get(key).await
        }
        async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
            self.inner.get_range(key, range).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
            self.inner.list(prefix).await
        }
        async fn delete(&self, key: &str) -> Result<()> {
            self.inner.delete(key).await
        }
    }

    /// Small chunks (16–256 KiB) so a few hundred KiB make several.
    async fn repo(dir: &std::path::Path) -> (Repository, Arc<Flaky>) {
        let target = Arc::new(Flaky {
            inner: LocalTarget::new(dir).unwrap(),
            fail_named: AtomicBool::new(false),
        });
        let options = RepoOptions::builder()
            .kdf_cost((1024, 1))
            .chunk_min(16 * 1024)
            .chunk_avg(64 * 1024)
            .chunk_max(256 * 1024)
            .build();
        let repo = Repository::init(target.clone(), &RepoKey::passphrase("pw"), options)
            .await
            .unwrap();
        (repo, target)
    }

    fn packs(dir: &std::path::Path) -> usize {
        fn walk(d: &std::path::Path) -> usize {
            std::fs::read_dir(d).map_or(0, |entries| {
                entries
                    .flatten()
                    .map(|e| {
                        if e.path().is_dir() {
                            walk(&e.path())
                        } else {
                            1
                        }
                    })
                    .sum()
            })
        }
        walk(&dir.join("data"))
    }

    #[tokio::test]
    async fn named_objects_round_trip_deduplicate_list_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, _) = repo(dir.path()).await;
        let a = noise(1_000_000, 1);
        let put = repo
            .put_named("wal/a", Cursor::new(a.clone()))
            .await
            .unwrap();
        assert!(put.written);
        assert!(put.object.chunks > 3, "{put:?}");
        assert_eq!(put.object.size, a.len() as u64);
        assert_eq!(repo.read_named("wal/a").await.unwrap(), a);
        // The same bytes under another name store nothing new.
        let again = repo
            .put_named("wal/b", Cursor::new(a.clone()))
            .await
            .unwrap();
        assert!(again.written);
        assert_eq!((again.blobs_added, again.bytes_stored), (0, 0));
        repo.put_named("other/c", &b""[..]).await.unwrap();
        assert_eq!(repo.read_named("other/c").await.unwrap(), b"");
        assert_eq!(repo.list_named("wal/").await.unwrap(), ["wal/a", "wal/b"]);
        assert_eq!(repo.list_named("").await.unwrap().len(), 3);
        let info = repo.named("wal/b").await.unwrap();
        assert_eq!(info.hash, blake3::hash(&a).to_hex().to_string());
        assert!(repo.delete_named("wal/a").await.unwrap());
        assert!(!repo.delete_named("wal/a").await.unwrap());
        assert!(matches!(
            repo.read_named("wal/a").await,
            Err(Error::NotFound { .. })
        ));
        assert_eq!(repo.read_named("wal/b").await.unwrap(), a);
        for bad in ["", "/a", "a//b", "a/", ".hidden", "a/../b", "sp ace", "ü"] {
            let e = repo.put_named(bad, &b"x"[..]).await.unwrap_err();
            assert!(e.to_string().contains("object_name"), "{bad:?}: {e}");
        }
    }

    #[tokio::test]
    async fn a_name_takes_identical_content_again_and_refuses_other_content() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, _) = repo(dir.path()).await;
        let a = noise(300_000, 2);
        assert!(
            repo.put_named("wal/x", Cursor::new(a.clone()))
                .await
                .unwrap()
                .written
        );
        let packs_before = packs(dir.path());
        let again = repo
            .put_named("wal/x", Cursor::new(a.clone()))
            .await
            .unwrap();
        assert!(!again.written);
        assert_eq!(packs(dir.path()), packs_before, "nothing written");
        let mut b = a.clone();
        b[1000] ^= 1;
        let e = repo.put_named("wal/x", Cursor::new(b)).await.unwrap_err();
        assert!(matches!(e, Error::AlreadyExists { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("named object wal/x with other content"),
            "{e}"
        );
        assert_eq!(repo.read_named("wal/x").await.unwrap(), a, "left as it was");
    }

    #[tokio::test]
    async fn an_interrupted_put_leaves_no_object_that_reads_as_complete() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, target) = repo(dir.path()).await;
        let a = noise(500_000, 3);
        // Killed after its packs and index, before the object: no object.
        target.fail_named.store(true, Ordering::SeqCst);
        assert!(
            repo.put_named("wal/k", Cursor::new(a.clone()))
                .await
                .is_err()
        );
        target.fail_named.store(false, Ordering::SeqCst);
        assert!(packs(dir.path()) > 0, "the packs were written");
        assert!(matches!(
            repo.named("wal/k").await,
            Err(Error::NotFound { .. })
        ));
        assert!(repo.list_named("").await.unwrap().is_empty());
        // A content stream that fails part-way: no object either.
        struct Broken(Vec<u8>);
        impl Read for Broken {
            fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
                if self.0.is_empty() {
                    return Err(std::io::Error::other("disk read error"));
                }
                let n = out.len().min(self.0.len()).min(100_000);
                out[..n].copy_from_slice(&self.0[..n]);
                self.0.drain(..n);
                Ok(n)
            }
        }
        let e = repo
            .put_named("wal/k", Broken(noise(400_000, 4)))
            .await
            .unwrap_err();
        assert!(
            e.chain()
                .contains("read the content for named object wal/k"),
            "{}",
            e.chain()
        );
        assert!(repo.list_named("").await.unwrap().is_empty());
        // No lock is left behind.
        assert!(
            std::fs::read_dir(dir.path().join("locks"))
                .unwrap()
                .next()
                .is_none()
        );
        // Prune removes what the killed put left (marked first, deleted by the next prune).
        repo.prune(PruneOptions::default()).await.unwrap();
        repo.prune(PruneOptions::default()).await.unwrap();
        assert_eq!(packs(dir.path()), 0);
        // And the name can be put after all.
        assert!(
            repo.put_named("wal/k", Cursor::new(a.clone()))
                .await
                .unwrap()
                .written
        );
        assert_eq!(repo.read_named("wal/k").await.unwrap(), a);
    }

    #[tokio::test]
    async fn a_damaged_object_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, _) = repo(dir.path()).await;
        let a = noise(400_000, 5);
        repo.put_named("wal/d", Cursor::new(a.clone()))
            .await
            .unwrap();
        repo.put_named("wal/e", Cursor::new(noise(10_000, 6)))
            .await
            .unwrap();
        // A flipped byte in the pack holding `wal/d`'s first chunk.
        let record = repo.load_named("wal/d").await.unwrap().unwrap();
        let pack = dir.path().join(pack_key(&record.chunks[0].pack));
        let mut bytes = std::fs::read(&pack).unwrap();
        bytes[100] ^= 0xff;
        std::fs::write(&pack, &bytes).unwrap();
        let e = repo.read_named("wal/d").await.unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
        assert!(
            e.to_string().contains("named object wal/d (chunk 0"),
            "{}",
            e.chain()
        );
        // A flipped byte in the record.
        let record = dir.path().join("named/wal/e");
        let mut bytes = std::fs::read(&record).unwrap();
        bytes[30] ^= 0xff;
        std::fs::write(&record, &bytes).unwrap();
        let e = repo.read_named("wal/e").await.unwrap_err();
        assert_eq!(e.to_string(), "corrupt named object wal/e", "{}", e.chain());
        // A record copied under another name does not pass for it.
        std::fs::copy(
            dir.path().join("named/wal/d"),
            dir.path().join("named/wal/f"),
        )
        .unwrap();
        let e = repo.named("wal/f").await.unwrap_err();
        assert!(
            e.chain().contains("not written under this name"),
            "{}",
            e.chain()
        );
        // Prune refuses to run over a damaged record rather than drop its chunks.
        assert!(repo.prune(PruneOptions::default()).await.is_err());
    }

    #[tokio::test]
    async fn prune_keeps_the_chunks_of_named_objects_until_they_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, _) = repo(dir.path()).await;
        let a = noise(600_000, 7);
        let b = noise(300_000, 8);
        repo.put_named("wal/a", Cursor::new(a.clone()))
            .await
            .unwrap();
        repo.put_named("wal/b", Cursor::new(b.clone()))
            .await
            .unwrap();
        for _ in 0..2 {
            repo.prune(PruneOptions::default()).await.unwrap();
        }
        assert_eq!(repo.read_named("wal/a").await.unwrap(), a);
        assert_eq!(repo.read_named("wal/b").await.unwrap(), b);
        assert_eq!(packs(dir.path()), 2);
        // `a` deleted: its pack goes (marked, then deleted), `b`'s stays.
        repo.delete_named("wal/a").await.unwrap();
        for _ in 0..2 {
            repo.prune(PruneOptions::default()).await.unwrap();
        }
        assert_eq!(packs(dir.path()), 1);
        assert_eq!(repo.read_named("wal/b").await.unwrap(), b);
        repo.delete_named("wal/b").await.unwrap();
        for _ in 0..2 {
            repo.prune(PruneOptions::default()).await.unwrap();
        }
        assert_eq!(packs(dir.path()), 0);
    }

    #[tokio::test]
    async fn a_chunk_no_longer_where_it_was_written_is_found_through_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, target) = repo(dir.path()).await;
        let a = noise(300_000, 9);
        repo.put_named("wal/m", Cursor::new(a.clone()))
            .await
            .unwrap();
        // As after a prune moved it: the record points at a pack that is gone.
        let mut file = repo.load_named("wal/m").await.unwrap().unwrap();
        file.chunks[0].pack = "00".repeat(32);
        target
            .put(&named_key("wal/m"), repo.seal_named(&file).unwrap())
            .await
            .unwrap();
        assert_eq!(repo.read_named("wal/m").await.unwrap(), a);
    }
}
