//! Checking a repository: its metadata always; its data fully, or a sample.

use std::collections::{BTreeSet, HashSet};
use std::fmt;

use super::format::{BlobEntry, PackEntry, Tree};
use super::repo::{Index, Repository, pack_key};
use deploykit_core::{Error, Result};

/// How much data [`Repository::verify`] reads back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadData {
    /// Metadata only: config, keys, indexes, snapshots, trees, and that every pack exists with
    /// its recorded size.
    #[default]
    None,
    /// Every pack, every blob.
    All,
    /// Subset `n` of `t` (1-based): the packs whose id falls in that slice, so `t` runs with
    /// `n = 1..=t` together read everything once.
    Subset(u32, u32),
    /// About this percentage of the packs, chosen at random.
    Percent(u8),
}

/// One problem found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The object (`data/ab/ab12…`, `index/…`, `snapshots/…`, `config`).
    pub object: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.reason)
    }
}

/// What a verification found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Snapshots checked.
    pub snapshots: u64,
    /// Trees read.
    pub trees: u64,
    /// Packs read in full.
    pub packs_read: u64,
    /// Bytes read from packs.
    pub bytes_read: u64,
    /// Packs no index refers to (left by an interrupted backup; prune removes them).
    pub unreferenced_packs: u64,
    /// Problems; empty when the repository is sound.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// Whether nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

fn problem(report: &mut VerifyReport, object: impl Into<String>, reason: impl Into<String>) {
    report.problems.push(Problem {
        object: object.into(),
        reason: reason.into(),
    });
}

/// The object an error is about, for errors from reading objects.
fn error_object(e: &Error, fallback: &str) -> (String, String) {
    match e {
        Error::Corrupt { what, source } => (
            what.strip_prefix("backup object ")
                .unwrap_or(what)
                .to_string(),
            source.to_string(),
        ),
        other => (fallback.to_string(), other.chain()),
    }
}

fn selected(pack: &str, read: ReadData) -> bool {
    match read {
        ReadData::None => false,
        ReadData::All => true,
        ReadData::Subset(n, t) => {
            let t = t.max(1);
            let bucket = u32::from_str_radix(&pack[..8.min(pack.len())], 16).unwrap_or(0);
            ((u64::from(bucket) * u64::from(t)) >> 32) as u32 + 1 == n
        }
        ReadData::Percent(p) => {
            let mut raw = [0u8; 1];
            use chacha20poly1305::aead::{OsRng, rand_core::RngCore};
            OsRng.fill_bytes(&mut raw);
            u32::from(raw[0]) * 100 < u32::from(p) * 256
        }
    }
}

impl Repository {
    /// Check the repository. Metadata always: every index, snapshot and tree decrypts and
    /// matches its id, every blob a snapshot needs is indexed, every indexed pack exists with
    /// its size. With `read`, packs are also read back: each must hash to its name, and every
    /// blob in it must decrypt to content matching its id. Problems name the object.
    ///
    /// Errors are for what stops the check (the target failing); damage is reported.
    pub async fn verify(&self, read: ReadData) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        if let ReadData::Subset(n, t) = read
            && (t == 0 || n == 0 || n > t)
        {
            return Err(Error::invalid(
                "backup.verify.subset",
                format!("{n}/{t}: expected n/t with 1 ≤ n ≤ t"),
            ));
        }
        if let ReadData::Percent(p) = read
            && p > 100
        {
            return Err(Error::invalid("backup.verify.percent", "at most 100"));
        }
        // Indexes, each on its own so one bad index does not hide the others.
        let mut index = Index::default();
        let mut files = Vec::new();
        for id in self.list_ids("index").await? {
            match self
                .get_object::<super::format::IndexFile>("index", &id)
                .await
            {
                Ok(f) => files.push((id, f)),
                Err(e) => {
                    let (object, reason) = error_object(&e, &format!("index/{id}"));
                    problem(&mut report, object, reason);
                }
            }
        }
        let superseded: HashSet<String> = files
            .iter()
            .flat_map(|(_, f)| f.supersedes.clone())
            .collect();
        for (id, f) in files {
            if !superseded.contains(&id) {
                for p in f.packs {
                    index.add_pack(p);
                }
            }
        }
        self.check_marks(&mut report).await?;
        // Packs: present with their size.
        let stored: std::collections::HashMap<String, u64> = self
            .target
            .list("data/")
            .await?
            .into_iter()
            .map(|m| (m.key, m.size))
            .collect();
        let indexed: HashSet<String> = index.packs.keys().map(|id| pack_key(id)).collect();
        report.unreferenced_packs = stored.keys().filter(|k| !indexed.contains(*k)).count() as u64;
        for pack in index.packs.values() {
            let key = pack_key(&pack.id);
            match stored.get(&key) {
                None => problem(&mut report, key, "missing"),
                Some(size) if *size != pack.size => problem(
                    &mut report,
                    key,
                    format!("{size} bytes, the index says {}", pack.size),
                ),
                Some(_) => {}
            }
        }
        // Snapshots and their trees.
        let mut seen_trees = HashSet::new();
        for id in self.list_ids("snapshots").await? {
            let snapshot: super::format::Snapshot = match self.get_object("snapshots", &id).await {
                Ok(s) => s,
                Err(e) => {
                    let (object, reason) = error_object(&e, &format!("snapshots/{id}"));
                    problem(&mut report, object, reason);
                    continue;
                }
            };
            report.snapshots += 1;
            let mut todo = vec![snapshot.tree.clone()];
            while let Some(tree_id) = todo.pop() {
                if !seen_trees.insert(tree_id.clone()) {
                    continue;
                }
                let tree: Tree = match self.read_blob(&index, &tree_id).await {
                    Ok(raw) => match serde_json::from_slice(&raw) {
                        Ok(t) => t,
                        Err(e) => {
                            problem(
                                &mut report,
                                format!("tree {}", &tree_id[..12]),
                                e.to_string(),
                            );
                            continue;
                        }
                    },
                    Err(e) => {
                        let (object, reason) =
                            error_object(&e, &format!("tree {} of snapshots/{id}", &tree_id[..12]));
                        problem(&mut report, object, reason);
                        continue;
                    }
                };
                report.trees += 1;
                for node in tree.nodes {
                    for blob in &node.content {
                        if !index.blobs.contains_key(blob) {
                            problem(
                                &mut report,
                                format!("snapshots/{id}"),
                                format!("data blob {} is in no index", &blob[..12]),
                            );
                        }
                    }
                    todo.extend(node.subtree);
                }
            }
        }
        // Data.
        let packs: Vec<PackEntry> = index
            .packs
            .values()
            .filter(|p| selected(&p.id, read) && stored.contains_key(&pack_key(&p.id)))
            .cloned()
            .collect();
        for pack in packs {
            self.verify_pack(&pack, &mut report).await?;
        }
        let damaged: BTreeSet<&str> = report.problems.iter().map(|p| p.object.as_str()).collect();
        if !damaged.is_empty() {
            tracing::warn!(objects = ?damaged, "verify found problems");
        }
        Ok(report)
    }

    /// Every prune mark decrypts and matches its id.
    async fn check_marks(&self, report: &mut VerifyReport) -> Result<()> {
        for id in self.list_ids("marks").await? {
            match self
                .get_object::<super::format::MarkFile>("marks", &id)
                .await
            {
                Ok(_) => {}
                Err(e) => {
                    let (object, reason) = error_object(&e, &format!("marks/{id}"));
                    problem(report, object, reason);
                }
            }
        }
        Ok(())
    }

    async fn verify_pack(&self, pack: &PackEntry, report: &mut VerifyReport) -> Result<()> {
        let key = pack_key(&pack.id);
        let bytes = match self.target.get(&key).await {
            Ok(b) => b,
            Err(Error::NotFound { .. }) => {
                problem(report, key, "missing");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        report.packs_read += 1;
        report.bytes_read += bytes.len() as u64;
        if blake3::hash(&bytes).to_hex().as_str() != pack.id {
            problem(report, &key, "its content does not match its id (damaged)");
        }
        for blob in &pack.blobs {
            let range = blob.offset as usize..(blob.offset + blob.length) as usize;
            let Some(sealed) = bytes.get(range) else {
                problem(
                    report,
                    &key,
                    format!("blob {} lies past its end (truncated)", &blob.id[..12]),
                );
                continue;
            };
            if let Err(e) = self.open_blob(&pack.id, blob, sealed) {
                let (object, reason) = error_object(&e, &key);
                problem(report, object, reason);
            }
        }
        self.verify_pack_header(&key, &bytes, &pack.blobs, report);
        Ok(())
    }

    /// The header at a pack's end must list the same blobs as the index.
    fn verify_pack_header(
        &self,
        key: &str,
        bytes: &[u8],
        blobs: &[BlobEntry],
        report: &mut VerifyReport,
    ) {
        let Some(len_at) = bytes.len().checked_sub(4) else {
            problem(report, key, "too short to hold a header");
            return;
        };
        let len = u32::from_le_bytes(bytes[len_at..].try_into().expect("4 bytes")) as usize;
        let Some(start) = len_at.checked_sub(len) else {
            problem(report, key, "its header length is wrong");
            return;
        };
        let header: Option<Vec<BlobEntry>> = self
            .keys
            .open(&bytes[start..len_at], b"pack header")
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok());
        if header.as_deref() != Some(blobs) {
            problem(report, key, "its header does not match the index");
        }
    }
}
