//! Opening a repository, and reading and writing its objects and blobs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use typed_builder::TypedBuilder;

use super::BackupTarget;
use super::crypto::{KeyObject, MasterKeys, RepoKey, random_id};
use super::format::{
    BlobEntry, IndexFile, MarkFile, PackEntry, REPO_VERSION, RepoConfig, Snapshot, Tree,
};
use super::retention::{Candidate, Decision, RetentionPolicy};
use deploykit_core::time::{Clock, SystemClock};
use deploykit_core::{Error, Result};

/// Parameters of a new repository.
#[derive(Clone, Debug, TypedBuilder)]
#[non_exhaustive]
pub struct RepoOptions {
    /// Smallest chunk (default 256 KiB).
    #[builder(default = 256 * 1024)]
    pub chunk_min: u32,
    /// Average chunk (default 1 MiB: large enough that a 1 TiB repository has about a
    /// million chunks to index, small enough that a small edit rewrites little).
    #[builder(default = 1024 * 1024)]
    pub chunk_avg: u32,
    /// Largest chunk (default 4 MiB).
    #[builder(default = 4 * 1024 * 1024)]
    pub chunk_max: u32,
    /// Target pack size (default 16 MiB: few, large objects for object stores).
    #[builder(default = 16 * 1024 * 1024)]
    pub pack_size: u64,
    /// zstd level (default 3).
    #[builder(default = 3)]
    pub compression_level: i32,
    /// Argon2id cost of the first passphrase key as (memory KiB, passes); default 64 MiB and
    /// 3 passes. Tests lower it.
    #[builder(default, setter(strip_option))]
    pub kdf_cost: Option<(u32, u32)>,
}

impl Default for RepoOptions {
    fn default() -> Self {
        RepoOptions::builder().build()
    }
}

/// Where every blob is: built from the index objects.
/// How errors name a blob.
fn blob_what(pack: &str, entry: &BlobEntry) -> String {
    format!(
        "backup object {} (blob {})",
        pack_key(pack),
        &entry.id[..12]
    )
}

#[derive(Debug, Default)]
pub(super) struct Index {
    pub(super) blobs: HashMap<String, (Arc<str>, BlobEntry)>,
    pub(super) packs: BTreeMap<String, PackEntry>,
    /// The index objects read (minus superseded ones).
    pub(super) objects: Vec<String>,
}

impl Index {
    pub(super) fn add_pack(&mut self, pack: PackEntry) {
        let id: Arc<str> = pack.id.as_str().into();
        for b in &pack.blobs {
            self.blobs.insert(b.id.clone(), (id.clone(), b.clone()));
        }
        self.packs.insert(pack.id.clone(), pack);
    }
}

/// A deduplicated, compressed, encrypted backup repository over any [`BackupTarget`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> deploykit_core::Result<()> {
/// use std::sync::Arc;
/// use deploykit_backup::{BackupKind, BackupRequest, LocalTarget, RepoKey, RepoOptions, Repository, RestoreOptions};
/// let dir = std::env::temp_dir().join(format!("deploykit-doc-repo-{}", std::process::id()));
/// let source = dir.join("app");
/// std::fs::create_dir_all(&source).unwrap();
/// std::fs::write(source.join("data.txt"), b"hello").unwrap();
/// let target = Arc::new(LocalTarget::new(dir.join("repo"))?);
/// let options = RepoOptions::builder().kdf_cost((1024, 1)).build();
/// let repo = Repository::init(target, &RepoKey::passphrase("correct horse"), options).await?;
/// let (id, snapshot) = repo
///     .backup(BackupRequest::builder().paths(vec![source.clone()]).kind(BackupKind::Full).build())
///     .await?;
/// assert_eq!(snapshot.summary.files, 1);
/// repo.restore(&id, &dir.join("restored"), &RestoreOptions::default()).await?;
/// assert_eq!(std::fs::read(dir.join("restored/app/data.txt")).unwrap(), b"hello");
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Repository {
    pub(super) target: Arc<dyn BackupTarget>,
    pub(super) keys: Arc<MasterKeys>,
    pub(super) config: RepoConfig,
    pub(super) clock: Arc<dyn Clock>,
    /// Where backups and restores are counted, and the environment label they carry.
    pub(super) metrics: Option<(Arc<deploykit_telemetry::metrics::Metrics>, String)>,
}

impl fmt::Debug for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("id", &self.config.id)
            .field("target", &self.target)
            .finish()
    }
}

fn corrupt(what: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        what: what.into(),
        source: reason.into().into(),
    }
}

pub(super) fn pack_key(id: &str) -> String {
    format!("data/{}/{id}", &id[..2.min(id.len())])
}

impl Repository {
    /// Create a repository in `target` with a fresh master key wrapped for `key`. Fails with
    /// [`Error::AlreadyExists`] if the target holds one.
    pub async fn init(
        target: Arc<dyn BackupTarget>,
        key: &RepoKey,
        options: RepoOptions,
    ) -> Result<Self> {
        if options.chunk_min == 0
            || options.chunk_min > options.chunk_avg
            || options.chunk_avg > options.chunk_max
        {
            return Err(Error::invalid(
                "backup.chunk_avg",
                "chunk sizes must satisfy 0 < min ≤ avg ≤ max",
            ));
        }
        match target.get("config").await {
            Ok(_) => {
                return Err(Error::AlreadyExists {
                    what: "a backup repository in this target".into(),
                });
            }
            Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let keys = MasterKeys::generate();
        let now = clock.now();
        let key_object = keys.wrap(key, now, options.kdf_cost)?;
        target
            .put_if_absent(
                &format!("keys/{}", random_id()),
                serde_json::to_vec_pretty(&key_object).expect("key object serialises"),
            )
            .await?;
        let mut config = RepoConfig {
            version: REPO_VERSION,
            id: random_id(),
            created: now,
            chunk_min: options.chunk_min,
            chunk_avg: options.chunk_avg,
            chunk_max: options.chunk_max,
            pack_size: options.pack_size,
            compression_level: options.compression_level,
            mac: String::new(),
        };
        config.mac = config.mac(&keys.mac_key);
        target
            .put_if_absent(
                "config",
                serde_json::to_vec_pretty(&config).expect("config serialises"),
            )
            .await
            .map_err(|e| match e {
                Error::AlreadyExists { .. } => Error::AlreadyExists {
                    what: "a backup repository in this target".into(),
                },
                other => other,
            })?;
        Ok(Repository {
            target,
            keys: Arc::new(keys),
            config,
            clock,
            metrics: None,
        })
    }

    /// Open the repository in `target` with `key`.
    pub async fn open(target: Arc<dyn BackupTarget>, key: &RepoKey) -> Result<Self> {
        let raw = target.get("config").await.map_err(|e| match e {
            Error::NotFound { .. } => Error::not_found("backup repository (no `config` object)"),
            other => other,
        })?;
        let value: serde_json::Value = serde_json::from_slice(&raw)
            .map_err(|e| corrupt("backup object config", format!("not JSON: {e}")))?;
        match value.get("version").and_then(serde_json::Value::as_u64) {
            Some(v) if v == u64::from(REPO_VERSION) => {}
            Some(v) => {
                return Err(Error::invalid(
                    "backup.config.version",
                    format!(
                        "repository format version {v} is not supported (this deploykit reads version {REPO_VERSION})"
                    ),
                ));
            }
            None => return Err(corrupt("backup object config", "it has no version")),
        }
        let config: RepoConfig = serde_json::from_value(value)
            .map_err(|e| corrupt("backup object config", e.to_string()))?;
        let mut reasons = Vec::new();
        let mut opened = None;
        for meta in target.list("keys/").await? {
            let object = target.get(&meta.key).await?;
            let object: KeyObject = match serde_json::from_slice(&object) {
                Ok(o) => o,
                Err(e) => {
                    reasons.push(format!("{} is damaged (not a key object: {e})", meta.key));
                    continue;
                }
            };
            match MasterKeys::unwrap(&object, key) {
                Ok(keys) => {
                    opened = Some(keys);
                    break;
                }
                Err(reason) => reasons.push(format!("{} {reason}", meta.key)),
            }
        }
        let Some(keys) = opened else {
            return Err(Error::invalid(
                "backup.key",
                if reasons.is_empty() {
                    "the repository has no key objects".to_string()
                } else {
                    format!("no key opens the repository: {}", reasons.join("; "))
                },
            ));
        };
        if config.mac != config.mac(&keys.mac_key) {
            return Err(corrupt(
                "backup object config",
                "its MAC does not match: it was edited",
            ));
        }
        Ok(Repository {
            target,
            keys: Arc::new(keys),
            config,
            clock: Arc::new(SystemClock),
            metrics: None,
        })
    }

    /// Read time from `clock` (snapshot times, locks, retention) instead of the system clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Count backups and restores in `metrics`, labelled with `environment` (bytes, durations,
    /// dedup ratio, the time of the last successful backup).
    pub fn with_metrics(
        mut self,
        metrics: Arc<deploykit_telemetry::metrics::Metrics>,
        environment: impl Into<String>,
    ) -> Self {
        self.metrics = Some((metrics, environment.into()));
        self
    }

    /// Wrap the master key for one more passphrase or key file; returns the key object's key.
    pub async fn add_key(&self, key: &RepoKey) -> Result<String> {
        let object = self.keys.wrap(key, self.clock.now(), None)?;
        let name = format!("keys/{}", random_id());
        self.target
            .put_if_absent(
                &name,
                serde_json::to_vec_pretty(&object).expect("serialises"),
            )
            .await?;
        Ok(name)
    }

    /// The repository's id.
    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// The target it lives in.
    pub fn target(&self) -> &Arc<dyn BackupTarget> {
        &self.target
    }

    /// Store an encrypted, compressed object under `<kind>/<id>`, id = BLAKE3 of its bytes.
    pub(super) async fn put_object<T: Serialize>(&self, kind: &str, value: &T) -> Result<String> {
        let json = serde_json::to_vec(value).expect("objects serialise");
        let compressed = zstd::bulk::compress(&json, self.config.compression_level)
            .map_err(|e| Error::backend("compress", e.to_string()))?;
        let sealed = self.keys.seal(&compressed, kind.as_bytes())?;
        let id = blake3::hash(&sealed).to_hex().to_string();
        match self
            .target
            .put_if_absent(&format!("{kind}/{id}"), sealed)
            .await
        {
            Ok(()) | Err(Error::AlreadyExists { .. }) => Ok(id),
            Err(e) => Err(e),
        }
    }

    /// Read and check an object written by `put_object`.
    pub(super) async fn get_object<T: DeserializeOwned>(&self, kind: &str, id: &str) -> Result<T> {
        let key = format!("{kind}/{id}");
        let sealed = self.target.get(&key).await?;
        self.decode_object(&key, kind, id, &sealed)
    }

    pub(super) fn decode_object<T: DeserializeOwned>(
        &self,
        key: &str,
        kind: &str,
        id: &str,
        sealed: &[u8],
    ) -> Result<T> {
        let what = format!("backup object {key}");
        if blake3::hash(sealed).to_hex().as_str() != id {
            return Err(corrupt(
                what,
                "its content does not match its id (damaged or truncated)",
            ));
        }
        let compressed = self
            .keys
            .open(sealed, kind.as_bytes())
            .map_err(|()| corrupt(&what, "it does not decrypt"))?;
        // Streamed, and bounded: a hostile object cannot make us allocate without limit.
        let mut json = Vec::new();
        zstd::stream::read::Decoder::new(compressed.as_slice())
            .and_then(|d| {
                std::io::Read::read_to_end(&mut std::io::Read::take(d, 1 << 30), &mut json)
            })
            .map_err(|e| corrupt(&what, format!("it does not decompress: {e}")))?;
        serde_json::from_slice(&json)
            .map_err(|e| corrupt(&what, format!("not a {kind} object: {e}")))
    }

    /// Ids of the objects of `kind` (`index`, `snapshots`, `marks`).
    pub(super) async fn list_ids(&self, kind: &str) -> Result<Vec<String>> {
        let prefix = format!("{kind}/");
        Ok(self
            .target
            .list(&prefix)
            .await?
            .into_iter()
            .filter_map(|m| m.key.strip_prefix(&prefix).map(str::to_string))
            .collect())
    }

    /// The index: every pack and blob, from the index objects not superseded by another.
    pub(super) async fn load_index(&self) -> Result<Index> {
        let mut files = Vec::new();
        for id in self.list_ids("index").await? {
            let file: IndexFile = self.get_object("index", &id).await?;
            files.push((id, file));
        }
        let superseded: HashSet<String> = files
            .iter()
            .flat_map(|(_, f)| f.supersedes.iter().cloned())
            .collect();
        let mut index = Index::default();
        for (id, file) in files {
            if superseded.contains(&id) {
                continue;
            }
            index.objects.push(id);
            for pack in file.packs {
                index.add_pack(pack);
            }
        }
        Ok(index)
    }

    /// Packs marked for deletion by a prune, with when.
    pub(super) async fn load_marks(&self) -> Result<Vec<(String, MarkFile)>> {
        let mut marks = Vec::new();
        for id in self.list_ids("marks").await? {
            marks.push((id.clone(), self.get_object::<MarkFile>("marks", &id).await?));
        }
        Ok(marks)
    }

    /// Seal one blob for a pack, appended to `out` (the pack being written): compressed if
    /// that helps, encrypted, bound to its id. Whether it was compressed.
    pub(super) fn seal_blob_into(&self, id: &str, plain: &[u8], out: &mut Vec<u8>) -> Result<bool> {
        thread_local! {
            static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
                const { std::cell::RefCell::new(None) };
        }
        let level = self.config.compression_level;
        // One compression context per thread, not one per blob.
        let compress = |data: &[u8], level: i32| {
            COMPRESSOR
                .with(|cell| {
                    let mut slot = cell.borrow_mut();
                    if slot.as_ref().is_none_or(|(l, _)| *l != level) {
                        *slot = Some((level, zstd::bulk::Compressor::new(level)?));
                    }
                    slot.as_mut().expect("just set").1.compress(data)
                })
                .map_err(|e| Error::backend("compress", e.to_string()))
        };
        // Skip compression that saves less than 1/32.
        let pays = |compressed: usize, plain: usize| compressed + plain / 32 < plain;
        // Compressing incompressible data (media, archives, encrypted files) costs as much as
        // compressing text and gains nothing: a large blob is compressed only if one of three
        // samples of it (start, middle, end) would be.
        const SAMPLE: usize = 8 << 10;
        let mut worth_trying = plain.len() < 16 * SAMPLE;
        for at in [0, plain.len() / 2, plain.len().saturating_sub(SAMPLE)] {
            if worth_trying {
                break;
            }
            worth_trying = pays(compress(&plain[at..at + SAMPLE], level)?.len(), SAMPLE);
        }
        if worth_trying {
            let compressed = compress(plain, level)?;
            if pays(compressed.len(), plain.len()) {
                self.keys.seal_into(&compressed, id.as_bytes(), out)?;
                return Ok(true);
            }
        }
        self.keys.seal_into(plain, id.as_bytes(), out)?;
        Ok(false)
    }

    /// Decrypt, decompress and check one blob's sealed bytes.
    pub(super) fn open_blob(
        &self,
        pack: &str,
        entry: &BlobEntry,
        sealed: &[u8],
    ) -> Result<Vec<u8>> {
        self.open_blob_checked(pack, entry, sealed, true)
    }

    /// [`open_blob`](Self::open_blob) for a restore that hashes the whole file and compares
    /// it with the hash recorded at backup (`file_hashed`): the blob's own keyed hash is then
    /// not computed again. Its authentication tag, which covers the blob id, is still checked.
    pub(super) fn open_blob_checked(
        &self,
        pack: &str,
        entry: &BlobEntry,
        sealed: &[u8],
        check_id: bool,
    ) -> Result<Vec<u8>> {
        let mut sealed = sealed.to_vec();
        let body = self.decrypt_blob_in_place(pack, entry, &mut sealed)?;
        let mut scratch = Vec::new();
        self.plain_blob(pack, entry, &sealed[body], check_id, &mut scratch)
            .map(<[u8]>::to_vec)
    }

    /// Decrypt one blob's sealed bytes where they are; where its body (compressed or not)
    /// now is in them. A restore opens a gigabyte this way without a buffer per blob.
    pub(super) fn decrypt_blob_in_place(
        &self,
        pack: &str,
        entry: &BlobEntry,
        sealed: &mut [u8],
    ) -> Result<std::ops::Range<usize>> {
        self.keys
            .open_in_place(sealed, entry.id.as_bytes())
            .map_err(|()| corrupt(blob_what(pack, entry), "it does not decrypt (damaged)"))
    }

    /// The plaintext of a decrypted blob `body`: decompressed into `scratch` (reused across
    /// blobs) if it was compressed, and checked against its length and (with `check_id`) its
    /// id.
    pub(super) fn plain_blob<'a>(
        &self,
        pack: &str,
        entry: &BlobEntry,
        body: &'a [u8],
        check_id: bool,
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8]> {
        let plain = if entry.compressed {
            thread_local! {
                static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
                    const { std::cell::RefCell::new(None) };
            }
            // One decompression context per thread, not one per blob.
            DECOMPRESSOR
                .with(|cell| {
                    let mut slot = cell.borrow_mut();
                    if slot.is_none() {
                        *slot = Some(zstd::bulk::Decompressor::new()?);
                    }
                    scratch.clear();
                    scratch.reserve(usize::try_from(entry.raw_length).unwrap_or(0));
                    slot.as_mut()
                        .expect("just set")
                        .decompress_to_buffer(body, scratch)
                })
                .map_err(|e| {
                    corrupt(
                        blob_what(pack, entry),
                        format!("it does not decompress: {e}"),
                    )
                })?;
            &scratch[..]
        } else {
            body
        };
        if plain.len() as u64 != entry.raw_length
            || (check_id && self.keys.blob_id(plain) != entry.id)
        {
            return Err(corrupt(
                blob_what(pack, entry),
                "its content does not match its id",
            ));
        }
        Ok(plain)
    }

    /// Fetch and open one blob.
    pub(super) async fn read_blob(&self, index: &Index, id: &str) -> Result<Vec<u8>> {
        let (pack, entry) = index.blobs.get(id).ok_or_else(|| {
            corrupt(
                format!("blob {}", &id[..12.min(id.len())]),
                "it is in no index",
            )
        })?;
        let sealed = self
            .target
            .get_range(&pack_key(pack), entry.offset..entry.offset + entry.length)
            .await?;
        if sealed.len() as u64 != entry.length {
            return Err(corrupt(
                format!("backup object {}", pack_key(pack)),
                "it is shorter than its index says (truncated)",
            ));
        }
        self.open_blob(pack, entry, &sealed)
    }

    /// Every tree reachable from `root`, by id.
    pub(super) async fn load_trees(
        &self,
        index: &Index,
        root: &str,
    ) -> Result<HashMap<String, Tree>> {
        let mut trees = HashMap::new();
        let mut todo = vec![root.to_string()];
        while let Some(id) = todo.pop() {
            if trees.contains_key(&id) {
                continue;
            }
            let raw = self.read_blob(index, &id).await?;
            let tree: Tree = serde_json::from_slice(&raw)
                .map_err(|e| corrupt(format!("tree {}", &id[..12]), e.to_string()))?;
            todo.extend(tree.nodes.iter().filter_map(|n| n.subtree.clone()));
            trees.insert(id, tree);
        }
        Ok(trees)
    }

    /// Every snapshot, oldest first.
    pub async fn snapshots(&self) -> Result<Vec<(String, Snapshot)>> {
        let mut out = Vec::new();
        for id in self.list_ids("snapshots").await? {
            let snapshot: Snapshot = self.get_object("snapshots", &id).await?;
            out.push((id, snapshot));
        }
        out.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        Ok(out)
    }

    /// One snapshot by id (or a unique prefix of at least 8 characters).
    pub async fn snapshot(&self, id: &str) -> Result<(String, Snapshot)> {
        let ids = self.list_ids("snapshots").await?;
        let matches: Vec<&String> = ids
            .iter()
            .filter(|s| id.len() >= 8 && s.starts_with(id))
            .collect();
        match matches.as_slice() {
            [one] => Ok(((*one).clone(), self.get_object("snapshots", one).await?)),
            [] => Err(Error::not_found(format!("snapshot {id}"))),
            _ => Err(Error::invalid(
                "backup.snapshot",
                format!("{id} matches {} snapshots; give more of it", matches.len()),
            )),
        }
    }

    /// Apply `policy` to the snapshots; unless `dry_run`, remove those it does not keep. The
    /// data they alone used stays until [`Repository::prune`]. An empty policy removes nothing.
    pub async fn forget(&self, policy: &RetentionPolicy, dry_run: bool) -> Result<Vec<Decision>> {
        policy.validate()?;
        let snapshots = self.snapshots().await?;
        let candidates: Vec<Candidate> = snapshots
            .iter()
            .map(|(id, s)| Candidate {
                id: id.clone(),
                time: s.time,
                tags: s.tags.clone(),
            })
            .collect();
        let decisions = policy.apply(&candidates, self.clock.now());
        if !dry_run && !policy.is_empty() {
            for d in decisions.iter().filter(|d| !d.keep) {
                self.target.delete(&format!("snapshots/{}", d.id)).await?;
                tracing::info!(snapshot = %d.id, "forgot snapshot");
            }
        }
        Ok(decisions)
    }

    /// Every blob the snapshots reference (trees and data): what prune must keep.
    pub(super) async fn used_blobs(
        &self,
        index: &Index,
        snapshots: &[(String, Snapshot)],
    ) -> Result<HashSet<String>> {
        let mut used = HashSet::new();
        let mut seen_trees = HashSet::new();
        for (_, s) in snapshots {
            let mut todo = vec![s.tree.clone()];
            while let Some(id) = todo.pop() {
                if !seen_trees.insert(id.clone()) {
                    continue;
                }
                used.insert(id.clone());
                let raw = self.read_blob(index, &id).await?;
                let tree: Tree = serde_json::from_slice(&raw)
                    .map_err(|e| corrupt(format!("tree {}", &id[..12]), e.to_string()))?;
                for n in tree.nodes {
                    used.extend(n.content);
                    todo.extend(n.subtree);
                }
            }
        }
        Ok(used)
    }
}
