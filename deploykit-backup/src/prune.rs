//! Removing data no snapshot needs, safely alongside running backups: packs are first marked,
//! and deleted by a later prune only once every running backup started after the mark (and
//! so saw it and did not use them).

use std::collections::{BTreeSet, HashSet};

use super::format::{IndexFile, LockFile, MarkFile, PackEntry};
use super::repo::{Repository, pack_key};
use super::save::{LOCK_TTL, PackWriter};
use deploykit_core::Result;

/// How [`Repository::prune`] runs.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct PruneOptions {
    /// Repack a pack when less than this share of its bytes is still used (default 0.5).
    pub repack_below: f64,
    /// Report what would be done, change nothing.
    pub dry_run: bool,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            repack_below: 0.5,
            dry_run: false,
        }
    }
}

/// What a prune did (or, in a dry run, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PruneReport {
    /// Packs marked now: unused, left by interrupted backups, or repacked.
    pub marked: u64,
    /// Packs whose used blobs were copied into new packs.
    pub repacked: u64,
    /// Packs deleted now (marked by an earlier prune, still unused).
    pub deleted: u64,
    /// Bytes deleted now.
    pub bytes_deleted: u64,
    /// Marks kept for later because a backup that started before them is still running.
    pub deferred: u64,
}

impl Repository {
    /// Prune: mark unused and mostly-unused packs (repacking what they still hold), and delete
    /// packs marked by an earlier prune that are still unused, unless a backup that started
    /// before their mark is still running. Never deletes data a snapshot needs.
    pub async fn prune(&self, options: PruneOptions) -> Result<PruneReport> {
        let mut report = PruneReport::default();
        let now = self.clock.now();
        let mut index = self.load_index().await?;
        let superseded = index.objects.clone();
        let marks = self.load_marks().await?;
        let snapshots = self.snapshots().await?;
        let mut used = self.used_blobs(&index, &snapshots).await?;
        // Named objects (`objects.rs`: WAL segments) use chunks too.
        used.extend(self.named_blobs().await?);
        let mut oldest_running = None;
        for meta in self.target.list("locks/").await? {
            let Ok(raw) = self.target.get(&meta.key).await else {
                continue;
            };
            if let Ok(lock) = serde_json::from_slice::<LockFile>(&raw)
                && now.since(lock.refreshed) < LOCK_TTL
            {
                oldest_running = Some(
                    oldest_running.map_or(lock.started, |o: deploykit_core::Timestamp| {
                        o.min(lock.started)
                    }),
                );
            }
        }
        let is_used = |p: &PackEntry| p.blobs.iter().any(|b| used.contains(&b.id));

        // Phase 2: marks no running backup predates.
        let mut delete: BTreeSet<String> = BTreeSet::new();
        let mut processed_marks = Vec::new();
        let mut still_marked: HashSet<String> = HashSet::new();
        for (id, mark) in &marks {
            if oldest_running.is_some_and(|started| started <= mark.marked_at) {
                report.deferred += 1;
                still_marked.extend(mark.packs.iter().cloned());
                continue;
            }
            processed_marks.push(id.clone());
            for pack in &mark.packs {
                match index.packs.get(pack) {
                    Some(p) if is_used(p) => {} // needed again: unmarked
                    _ => {
                        delete.insert(pack.clone());
                    }
                }
            }
        }
        let stored: std::collections::HashMap<String, u64> = self
            .target
            .list("data/")
            .await?
            .into_iter()
            .map(|m| (m.key, m.size))
            .collect();
        for pack in &delete {
            report.deleted += 1;
            report.bytes_deleted += stored.get(&pack_key(pack)).copied().unwrap_or(0);
            index.packs.remove(pack);
        }

        // Phase 1: new marks, and repacking.
        let mut new_marks = Vec::new();
        let mut new_packs = Vec::new();
        let indexed: HashSet<String> = index.packs.keys().map(|p| pack_key(p)).collect();
        for key in stored.keys() {
            let id = key.rsplit('/').next().unwrap_or(key);
            if !indexed.contains(key) && !delete.contains(id) && !still_marked.contains(id) {
                // Left by an interrupted backup (or one still writing: the mark waits for it).
                new_marks.push(id.to_string());
            }
        }
        let mut writer = PackWriter::default();
        for pack in index.packs.values() {
            if still_marked.contains(&pack.id) {
                continue;
            }
            let total: u64 = pack.blobs.iter().map(|b| b.length).sum();
            let live: Vec<_> = pack.blobs.iter().filter(|b| used.contains(&b.id)).collect();
            let live_bytes: u64 = live.iter().map(|b| b.length).sum();
            if live.is_empty() {
                new_marks.push(pack.id.clone());
            } else if (live_bytes as f64) < options.repack_below * total as f64 {
                report.repacked += 1;
                new_marks.push(pack.id.clone());
                if options.dry_run {
                    continue;
                }
                let bytes = self.target.get(&pack_key(&pack.id)).await?;
                for b in live {
                    let sealed = bytes[b.offset as usize..(b.offset + b.length) as usize].to_vec();
                    writer.add(b.id.clone(), b.kind, sealed, b.raw_length, b.compressed);
                    if writer.len() as u64 >= self.config.pack_size {
                        new_packs.push(std::mem::take(&mut writer).finish(self)?);
                    }
                }
            }
        }
        if !writer.is_empty() {
            new_packs.push(writer.finish(self)?);
        }
        report.marked = new_marks.len() as u64;
        if options.dry_run {
            return Ok(report);
        }
        for (entry, bytes) in new_packs {
            match self.target.put_if_absent(&pack_key(&entry.id), bytes).await {
                Ok(()) | Err(deploykit_core::Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
            index.add_pack(entry);
        }
        // The consolidated index first: a crash after it leaves only unreferenced objects.
        self.put_object(
            "index",
            &IndexFile {
                packs: index.packs.values().cloned().collect(),
                supersedes: superseded.clone(),
            },
        )
        .await?;
        if !new_marks.is_empty() {
            self.put_object(
                "marks",
                &MarkFile {
                    marked_at: now,
                    packs: new_marks,
                },
            )
            .await?;
        }
        for id in superseded {
            self.target.delete(&format!("index/{id}")).await?;
        }
        for pack in &delete {
            self.target.delete(&pack_key(pack)).await?;
        }
        for id in processed_marks {
            self.target.delete(&format!("marks/{id}")).await?;
        }
        tracing::info!(
            marked = report.marked,
            repacked = report.repacked,
            deleted = report.deleted,
            deferred = report.deferred,
            "prune finished"
        );
        Ok(report)
    }
}
