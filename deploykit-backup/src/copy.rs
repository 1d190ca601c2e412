//! Mirroring a repository to a second target: the same repository (id, keys, packs) in two
//! places, copied object by object without decrypting, re-chunking or re-encrypting anything.
//!
//! [`Repository::mirror_to`] copies every object the mirror lacks, verified (read back, size
//! and BLAKE3 compared with the source's; content-addressed objects also checked against their
//! id before they are copied, so a damaged source object is never spread). Objects go over in
//! an order that keeps the mirror a consistent repository at every moment: key objects, then
//! `config`, then data packs, then indexes, then every other kind (named objects, marks, and
//! any kind a later version adds), and snapshots last. A reader opening the mirror at any point
//! of a copy — or after one was killed — sees only snapshots whose data is all there. The next
//! run copies only what is missing, so a killed copy resumes where it stopped.
//!
//! The source is listed in the reverse order (snapshots first, data last): everything a
//! snapshot needs was written before it, so a backup running alongside never gets a snapshot
//! into the copy without its data.
//!
//! Objects the source no longer has leave the mirror too, in the reverse order (snapshots
//! first). Snapshots, named objects and other records follow the source at once; data packs
//! and indexes (what a prune deletes) only once no snapshot or named object left in the mirror
//! needs them — a snapshot the mirror could not delete (S3 Object Lock), or data the source
//! lost by damage rather than by prune, keeps its packs — unless
//! [`MirrorOptions::force_delete`] says to delete them at once.
//!
//! `locks/` (the marks of backups running on the source) are not copied: they mean nothing in
//! the mirror. The mirror is written only by `mirror_to`: do not back up or prune into it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;
use typed_builder::TypedBuilder;

use super::BackupTarget;
use super::format::{IndexFile, PackEntry, RepoConfig};
use super::repo::{Index, Repository, pack_key};
use deploykit_core::backup::ObjectMeta;
use deploykit_core::{Error, Result};

/// Prefixes that are never copied: running backups' locks belong to the source alone.
const NOT_COPIED: &[&str] = &["locks/"];

/// Prefixes whose objects are named by the BLAKE3 of their content: checked against it.
const CONTENT_ADDRESSED: &[&str] = &["data/", "index/", "snapshots/", "marks/"];

/// How [`Repository::mirror_to_with`] runs.
#[derive(Clone, Debug, TypedBuilder)]
#[non_exhaustive]
pub struct MirrorOptions {
    /// Delete data packs and indexes the source no longer has at once, without first checking
    /// that no snapshot or named object left in the mirror needs them (the CLI's `--delete`).
    #[builder(default)]
    pub force_delete: bool,
    /// Read back every object already in the mirror and compare it with the source (by its id
    /// for content-addressed objects), replacing damaged ones; by default objects already
    /// there are compared by size only.
    #[builder(default)]
    pub check_existing: bool,
    /// Objects copied at once (default 4; at least 1).
    #[builder(default = 4)]
    pub concurrency: usize,
    /// Report what would be copied and deleted; write and delete nothing.
    #[builder(default)]
    pub dry_run: bool,
}

impl Default for MirrorOptions {
    fn default() -> Self {
        MirrorOptions::builder().build()
    }
}

/// A number of objects and their bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ObjectCount {
    /// Objects.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl ObjectCount {
    fn add(&mut self, bytes: u64) {
        self.objects += 1;
        self.bytes += bytes;
    }
}

/// An object the source no longer has that stays in the mirror, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct KeptObject {
    /// The object's key.
    pub key: String,
    /// Why it stays.
    pub reason: String,
}

/// What a mirror run did (or, in a dry run, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MirrorReport {
    /// Objects copied, by kind: the key's first segment (`config`, `keys`, `data`, `index`,
    /// `named`, `snapshots`, …).
    pub copied: BTreeMap<String, ObjectCount>,
    /// Snapshots copied by this run (ids), now restorable from the mirror.
    pub snapshots_copied: Vec<String>,
    /// Objects already in the mirror, left alone.
    pub unchanged: u64,
    /// Mirror objects found damaged (another size, or with `check_existing` other content)
    /// and replaced by the source's.
    pub repaired: Vec<String>,
    /// Source objects that disappeared between listing and copying (a prune or forget running
    /// alongside); the next run settles them.
    pub vanished: Vec<String>,
    /// Objects deleted from the mirror because the source no longer has them, by kind.
    pub deleted: BTreeMap<String, ObjectCount>,
    /// Objects the source no longer has that stay in the mirror, and why.
    pub kept: Vec<KeptObject>,
    /// Index objects written in the mirror alone (ids): they name packs the source dropped
    /// that a snapshot kept in the mirror still needs, once no other index does, so that
    /// snapshot stays readable.
    pub mirror_indexes: Vec<String>,
    /// Whether this was a dry run.
    pub dry_run: bool,
}

impl MirrorReport {
    /// Objects copied in all.
    pub fn objects_copied(&self) -> u64 {
        self.copied.values().map(|c| c.objects).sum()
    }

    /// Bytes copied in all.
    pub fn bytes_copied(&self) -> u64 {
        self.copied.values().map(|c| c.bytes).sum()
    }

    /// Objects deleted in all.
    pub fn objects_deleted(&self) -> u64 {
        self.deleted.values().map(|c| c.objects).sum()
    }
}

/// The order objects are copied in (and deleted in, reversed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Stage {
    /// `keys/`: before `config`, so a repository that opens has a key.
    Keys,
    /// `config`: from here on the mirror opens (as an empty repository at first).
    Config,
    /// `data/`: packs, before any index names them.
    Data,
    /// `index/`: before anything that reads blobs through them.
    Index,
    /// Every other kind (`named/`, `marks/`, kinds added later): may refer to data.
    Other,
    /// `snapshots/`: last.
    Snapshots,
}

/// The stage of `key`, or `None` for keys that are not copied.
fn stage(key: &str) -> Option<Stage> {
    if NOT_COPIED.iter().any(|p| key.starts_with(p)) {
        return None;
    }
    Some(match key {
        "config" => Stage::Config,
        k if k.starts_with("keys/") => Stage::Keys,
        k if k.starts_with("data/") => Stage::Data,
        k if k.starts_with("index/") => Stage::Index,
        k if k.starts_with("snapshots/") => Stage::Snapshots,
        _ => Stage::Other,
    })
}

/// The kind a key is counted under: its first segment.
fn kind(key: &str) -> &str {
    key.split('/').next().unwrap_or(key)
}

/// The id a content-addressed key must match (its last segment), or `None`.
fn content_id(key: &str) -> Option<&str> {
    CONTENT_ADDRESSED
        .iter()
        .any(|p| key.starts_with(p))
        .then(|| key.rsplit('/').next().unwrap_or(key))
}

fn hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

fn corrupt(what: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        what: what.into(),
        source: reason.into().into(),
    }
}

/// What one object's copy came to.
enum Copied {
    /// Written and verified: its size.
    Written(u64),
    /// Already in the mirror with the same content (a concurrent writer was first).
    Present,
    /// Gone from the source before it was read.
    Vanished,
}

/// Copy `key` from `source` to `dest` (replacing what is there if `replace`), then read it
/// back and compare size and BLAKE3.
async fn copy_object(
    source: Arc<dyn BackupTarget>,
    dest: Arc<dyn BackupTarget>,
    key: String,
    replace: bool,
) -> Result<Copied> {
    let data = match source.get(&key).await {
        Ok(d) => d,
        Err(Error::NotFound { .. }) => return Ok(Copied::Vanished),
        Err(e) => return Err(e),
    };
    let expected = hash(&data);
    if let Some(id) = content_id(&key)
        && id != expected
    {
        return Err(corrupt(
            format!("source object {key} ({source:?})"),
            "its content does not match its id (damaged or truncated): not copied; run verify on the source",
        ));
    }
    let size = data.len() as u64;
    let written = if replace {
        dest.put(&key, data).await
    } else {
        dest.put_if_absent(&key, data).await
    };
    let mut present = false;
    match written {
        Ok(()) => {}
        Err(Error::AlreadyExists { .. }) => present = true,
        Err(e) => return Err(e),
    }
    let back = dest.get(&key).await?;
    let back_hash = hash(&back);
    if back.len() as u64 != size || back_hash != expected {
        if present {
            // Someone else wrote this key between our listing and our write, differently:
            // replace it with the source's.
            return Box::pin(copy_object(source, dest, key, true)).await;
        }
        return Err(corrupt(
            format!("mirror object {key} ({dest:?})"),
            format!(
                "read back {} bytes with BLAKE3 {}…, but {size} bytes with BLAKE3 {}… were written",
                back.len(),
                &back_hash[..16],
                &expected[..16]
            ),
        ));
    }
    Ok(if present {
        Copied::Present
    } else {
        Copied::Written(size)
    })
}

/// Whether the mirror's copy of `key` matches the source's content (read back in full).
async fn same_content(
    source: &Arc<dyn BackupTarget>,
    dest: &Arc<dyn BackupTarget>,
    key: &str,
) -> Result<bool> {
    let mirrored = match dest.get(key).await {
        Ok(d) => hash(&d),
        Err(Error::NotFound { .. }) => return Ok(false),
        Err(e) => return Err(e),
    };
    if let Some(id) = content_id(key) {
        return Ok(mirrored == id);
    }
    match source.get(key).await {
        Ok(d) => Ok(hash(&d) == mirrored),
        // Gone from the source: the deletion pass decides.
        Err(Error::NotFound { .. }) => Ok(true),
        Err(e) => Err(e),
    }
}

impl Repository {
    /// Mirror this repository to `dest` with [`MirrorOptions::default`]: see
    /// [`Repository::mirror_to_with`].
    pub async fn mirror_to(&self, dest: Arc<dyn BackupTarget>) -> Result<MirrorReport> {
        self.mirror_to_with(dest, &MirrorOptions::default()).await
    }

    /// Make `dest` a mirror of this repository: the same repository (same id, keys, packs,
    /// snapshots), which opens with the same keys and restores the same data.
    ///
    /// Copies every object `dest` lacks, verified, in an order that keeps `dest` consistent at
    /// every moment (see the module documentation), so a run killed anywhere leaves a mirror
    /// that opens and restores every snapshot it lists, and the next run copies only the rest.
    /// Then deletes what the source no longer has: snapshots and other records at once; data
    /// packs and indexes only once nothing left in the mirror needs them (or at once with
    /// [`MirrorOptions::force_delete`]). A delete the mirror refuses (S3 Object Lock) keeps the
    /// object and is reported in [`MirrorReport::kept`].
    ///
    /// Fails with [`Error::InvalidSpec`] on `mirror.destination` if `dest` holds another
    /// repository or unrelated objects, and with [`Error::Corrupt`] naming the object if a
    /// source object does not match its id or a copy does not read back as written.
    pub async fn mirror_to_with(
        &self,
        dest: Arc<dyn BackupTarget>,
        options: &MirrorOptions,
    ) -> Result<MirrorReport> {
        let mut report = MirrorReport {
            dry_run: options.dry_run,
            ..MirrorReport::default()
        };
        let source = self.list_for_mirror().await?;
        let mirrored: BTreeMap<String, u64> = dest
            .list("")
            .await?
            .into_iter()
            .map(|m| (m.key, m.size))
            .collect();
        self.check_destination(&dest, &source, &mirrored).await?;

        // Copy, stage by stage.
        let mut plan: BTreeMap<Stage, Vec<(String, bool, u64)>> = BTreeMap::new();
        for meta in source.values() {
            let Some(stage) = stage(&meta.key) else {
                continue;
            };
            let replace = match mirrored.get(&meta.key) {
                None => false,
                Some(_) if meta.key == "config" => {
                    // Checked byte for byte by check_destination.
                    report.unchanged += 1;
                    continue;
                }
                Some(size) if *size != meta.size => true,
                Some(_)
                    if options.check_existing
                        && !same_content(&self.target, &dest, &meta.key).await? =>
                {
                    true
                }
                Some(_) => {
                    report.unchanged += 1;
                    continue;
                }
            };
            plan.entry(stage)
                .or_default()
                .push((meta.key.clone(), replace, meta.size));
        }
        for (_, batch) in plan {
            self.copy_batch(&dest, batch, options, &mut report).await?;
        }

        // Delete what the source no longer has, roots first.
        let mut gone: Vec<(Stage, String, u64)> = mirrored
            .iter()
            .filter(|(k, _)| !source.contains_key(*k))
            .filter_map(|(k, size)| stage(k).map(|s| (s, k.clone(), *size)))
            .collect();
        gone.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let (prunable, records): (Vec<_>, Vec<_>) = gone
            .into_iter()
            .partition(|(s, _, _)| matches!(s, Stage::Data | Stage::Index));
        let mut removed_roots = HashSet::new();
        for (stage, key, size) in records.iter().filter(|(s, _, _)| *s != Stage::Keys) {
            if self
                .delete_mirrored(&dest, key, *size, options, &mut report)
                .await?
                && *stage == Stage::Snapshots
            {
                removed_roots.insert(key.clone());
            }
        }
        if !prunable.is_empty() {
            let needed = if options.force_delete {
                HashSet::new()
            } else {
                let (needed, orphaned) = self
                    .needed_in_mirror(&dest, &mirrored, &prunable, &removed_roots)
                    .await?;
                if !orphaned.is_empty() && !options.dry_run {
                    // Before any index naming them goes: readable at every moment.
                    let id = self
                        .mirror_view(&dest)
                        .put_object(
                            "index",
                            &IndexFile {
                                packs: orphaned,
                                supersedes: Vec::new(),
                            },
                        )
                        .await?;
                    report.mirror_indexes.push(id);
                }
                needed
            };
            for (_, key, size) in &prunable {
                if needed.contains(key) {
                    report.kept.push(KeptObject {
                        key: key.clone(),
                        reason: "a snapshot or named object still in the mirror needs it".into(),
                    });
                    continue;
                }
                self.delete_mirrored(&dest, key, *size, options, &mut report)
                    .await?;
            }
        }
        for (_, key, size) in records.iter().filter(|(s, _, _)| *s == Stage::Keys) {
            self.delete_mirrored(&dest, key, *size, options, &mut report)
                .await?;
        }
        tracing::info!(
            repository = %self.config.id,
            mirror = ?dest,
            copied = report.objects_copied(),
            bytes = report.bytes_copied(),
            deleted = report.objects_deleted(),
            kept = report.kept.len(),
            dry_run = options.dry_run,
            "mirrored repository"
        );
        Ok(report)
    }

    /// Every source object by key, listed roots first and data last (see the module
    /// documentation for why).
    async fn list_for_mirror(&self) -> Result<BTreeMap<String, ObjectMeta>> {
        let mut out = BTreeMap::new();
        let snapshots = self.target.list("snapshots/").await?;
        let everything = self.target.list("").await?;
        let indexes = self.target.list("index/").await?;
        let data = self.target.list("data/").await?;
        for meta in snapshots {
            out.insert(meta.key.clone(), meta);
        }
        for meta in everything {
            if matches!(
                stage(&meta.key),
                Some(Stage::Other | Stage::Config | Stage::Keys)
            ) {
                out.insert(meta.key.clone(), meta);
            }
        }
        for meta in indexes.into_iter().chain(data) {
            out.insert(meta.key.clone(), meta);
        }
        Ok(out)
    }

    /// Refuse a destination that holds another repository, or objects of no repository.
    async fn check_destination(
        &self,
        dest: &Arc<dyn BackupTarget>,
        source: &BTreeMap<String, ObjectMeta>,
        mirrored: &BTreeMap<String, u64>,
    ) -> Result<()> {
        let bad = |reason: String| {
            Err(Error::invalid(
                "mirror.destination",
                format!("{dest:?} {reason}"),
            ))
        };
        if mirrored.contains_key("config") {
            let theirs = dest.get("config").await?;
            let ours = self.target.get("config").await?;
            if theirs == ours {
                return Ok(());
            }
            return match serde_json::from_slice::<RepoConfig>(&theirs) {
                Ok(c) if c.id != self.config.id => bad(format!(
                    "holds another backup repository (id {}), not a mirror of this one (id {})",
                    c.id, self.config.id
                )),
                _ => bad(format!(
                    "holds a `config` that differs from this repository's (id {}): damaged or edited; remove it by hand to mirror again",
                    self.config.id
                )),
            };
        }
        // No repository there yet: only the key objects an interrupted first copy wrote.
        if let Some(stray) = mirrored
            .keys()
            .find(|k| !(k.starts_with("keys/") && source.contains_key(*k)))
        {
            return bad(format!(
                "is not empty and holds no backup repository (it has {stray:?}): refusing to mirror into it"
            ));
        }
        Ok(())
    }

    /// Copy one stage's objects, `options.concurrency` at a time; the first failure stops
    /// the stage (copies under way finish) and is returned.
    async fn copy_batch(
        &self,
        dest: &Arc<dyn BackupTarget>,
        batch: Vec<(String, bool, u64)>,
        options: &MirrorOptions,
        report: &mut MirrorReport,
    ) -> Result<()> {
        let record = |report: &mut MirrorReport, key: &str, replace: bool, size: u64| {
            report
                .copied
                .entry(kind(key).to_string())
                .or_default()
                .add(size);
            if replace {
                report.repaired.push(key.to_string());
            }
            if let Some(id) = key.strip_prefix("snapshots/") {
                report.snapshots_copied.push(id.to_string());
            }
        };
        if options.dry_run {
            for (key, replace, size) in batch {
                record(report, &key, replace, size);
            }
            return Ok(());
        }
        let mut queue = batch.into_iter();
        let mut tasks = tokio::task::JoinSet::new();
        let mut failure = None;
        loop {
            while failure.is_none() && tasks.len() < options.concurrency.max(1) {
                let Some((key, replace, _)) = queue.next() else {
                    break;
                };
                let (source, dest) = (self.target.clone(), dest.clone());
                tasks.spawn(async move {
                    let copied = copy_object(source, dest, key.clone(), replace).await;
                    (key, replace, copied)
                });
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            match joined {
                Ok((key, replace, Ok(Copied::Written(size)))) => {
                    tracing::debug!(key, size, "mirrored object");
                    record(report, &key, replace, size);
                }
                Ok((_, _, Ok(Copied::Present))) => report.unchanged += 1,
                Ok((key, _, Ok(Copied::Vanished))) => report.vanished.push(key),
                Ok((_, _, Err(e))) => {
                    failure.get_or_insert(e);
                }
                Err(e) => {
                    failure.get_or_insert(Error::backend("mirror: copy task", e.to_string()));
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Delete `key` from the mirror; a refusal (Object Lock) keeps it and is reported.
    /// Returns whether it is gone.
    async fn delete_mirrored(
        &self,
        dest: &Arc<dyn BackupTarget>,
        key: &str,
        size: u64,
        options: &MirrorOptions,
        report: &mut MirrorReport,
    ) -> Result<bool> {
        if !options.dry_run {
            match dest.delete(key).await {
                Ok(()) => {}
                Err(e @ Error::PermissionDenied { .. }) => {
                    tracing::warn!(key, error = %e.chain(), "the mirror refuses to delete an object the source no longer has");
                    report.kept.push(KeptObject {
                        key: key.to_string(),
                        reason: format!("the mirror refuses to delete it: {}", e.chain()),
                    });
                    return Ok(false);
                }
                Err(e) => return Err(e),
            }
        }
        report
            .deleted
            .entry(kind(key).to_string())
            .or_default()
            .add(size);
        Ok(true)
    }

    /// This repository, read and written through `dest`.
    fn mirror_view(&self, dest: &Arc<dyn BackupTarget>) -> Repository {
        Repository {
            target: dest.clone(),
            keys: self.keys.clone(),
            config: self.config.clone(),
            clock: self.clock.clone(),
            metrics: None,
        }
    }

    /// Which of the `prunable` mirror objects (data packs and indexes the source no longer
    /// has) a snapshot or named object left in the mirror still needs: the packs holding a
    /// blob they use that no pack staying in the mirror holds, and the indexes naming those
    /// packs. `removed` snapshots are not counted (a dry run leaves them in place).
    ///
    /// Also returns the needed packs no index that stays in force names (the source's
    /// consolidated index superseded the ones that did): a new mirror-only index must name
    /// them for readers to find them.
    async fn needed_in_mirror(
        &self,
        dest: &Arc<dyn BackupTarget>,
        mirrored: &BTreeMap<String, u64>,
        prunable: &[(Stage, String, u64)],
        removed: &HashSet<String>,
    ) -> Result<(HashSet<String>, Vec<PackEntry>)> {
        let mirror = self.mirror_view(dest);
        let dead: HashSet<&str> = prunable.iter().map(|(_, k, _)| k.as_str()).collect();
        let present = |key: &str| mirrored.contains_key(key);
        // Every index in the mirror, superseded or not, and where each blob can be found.
        let mut files = Vec::new();
        for id in mirror.list_ids("index").await? {
            let file: IndexFile = mirror.get_object("index", &id).await?;
            files.push((format!("index/{id}"), file));
        }
        let mut locations: HashMap<String, Vec<(String, String)>> = HashMap::new();
        let mut index = Index::default();
        // Staying indexes last, so their entries win where a blob is in two packs.
        files.sort_by_key(|(key, _)| !dead.contains(key.as_str()));
        for (index_key, file) in &files {
            for pack in &file.packs {
                let pack_key = pack_key(&pack.id);
                if !present(&pack_key) {
                    continue;
                }
                for blob in &pack.blobs {
                    locations
                        .entry(blob.id.clone())
                        .or_default()
                        .push((pack_key.clone(), index_key.clone()));
                }
                index.add_pack(pack.clone());
            }
        }
        let snapshots: Vec<_> = mirror
            .snapshots()
            .await?
            .into_iter()
            .filter(|(id, _)| !removed.contains(&format!("snapshots/{id}")))
            .collect();
        let mut used = mirror.used_blobs(&index, &snapshots).await?;
        used.extend(mirror.named_blobs().await?);
        let mut needed = HashSet::new();
        for blob in &used {
            let Some(places) = locations.get(blob) else {
                continue;
            };
            let kept_elsewhere = places
                .iter()
                .any(|(pack, idx)| !dead.contains(pack.as_str()) && !dead.contains(idx.as_str()));
            if !kept_elsewhere {
                for (pack, idx) in places {
                    needed.insert(pack.clone());
                    needed.insert(idx.clone());
                }
            }
        }
        // Indexes that stay, and those of them a staying index does not supersede.
        let stays = |key: &str| !dead.contains(key) || needed.contains(key);
        let superseded: HashSet<String> = files
            .iter()
            .filter(|(key, _)| stays(key))
            .flat_map(|(_, f)| f.supersedes.iter().map(|id| format!("index/{id}")))
            .collect();
        let in_force: HashSet<String> = files
            .iter()
            .filter(|(key, _)| stays(key) && !superseded.contains(key))
            .flat_map(|(_, f)| f.packs.iter().map(|p| pack_key(&p.id)))
            .collect();
        let mut orphaned: BTreeMap<String, PackEntry> = BTreeMap::new();
        for (_, file) in &files {
            for pack in &file.packs {
                let key = pack_key(&pack.id);
                if needed.contains(&key) && !in_force.contains(&key) {
                    orphaned.entry(key).or_insert_with(|| pack.clone());
                }
            }
        }
        Ok((needed, orphaned.into_values().collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_order_data_before_indexes_before_snapshots() {
        let mut keys = vec![
            "snapshots/aa",
            "named/wal/1",
            "index/bb",
            "data/cc/cc01",
            "config",
            "keys/dd",
            "marks/ee",
        ];
        keys.sort_by_key(|k| stage(k));
        assert_eq!(
            keys,
            [
                "keys/dd",
                "config",
                "data/cc/cc01",
                "index/bb",
                "named/wal/1",
                "marks/ee",
                "snapshots/aa"
            ]
        );
        assert_eq!(stage("locks/x"), None);
        assert_eq!(kind("data/cc/cc01"), "data");
        assert_eq!(kind("config"), "config");
        assert_eq!(content_id("data/cc/cc01"), Some("cc01"));
        assert_eq!(content_id("keys/dd"), None);
        assert_eq!(content_id("named/wal/1"), None);
    }
}
