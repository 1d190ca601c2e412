//! The repository format: what each object holds. See `docs/ARCHITECTURE.md` ("Backup
//! repository") for the layout.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use deploykit_core::time::Timestamp;

/// The repository format version this code reads and writes.
pub const REPO_VERSION: u32 = 1;

/// `config`: plaintext, so the version is readable before any key is; its MAC (keyed with the
/// master MAC key) catches edits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RepoConfig {
    pub(super) version: u32,
    pub(super) id: String,
    pub(super) created: Timestamp,
    pub(super) chunk_min: u32,
    pub(super) chunk_avg: u32,
    pub(super) chunk_max: u32,
    pub(super) pack_size: u64,
    pub(super) compression_level: i32,
    #[serde(default)]
    pub(super) mac: String,
}

impl RepoConfig {
    pub(super) fn mac(&self, key: &[u8; 32]) -> String {
        let mut unsigned = self.clone();
        unsigned.mac = String::new();
        let json = serde_json::to_vec(&unsigned).expect("config serialises");
        blake3::keyed_hash(key, &json).to_hex().to_string()
    }
}

/// What a blob holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum BlobKind {
    /// File content.
    Data,
    /// A directory listing.
    Tree,
}

/// Where one blob is: in which pack, at which bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BlobEntry {
    pub(super) id: String,
    pub(super) kind: BlobKind,
    pub(super) offset: u64,
    pub(super) length: u64,
    /// Size of the content before compression and encryption.
    pub(super) raw_length: u64,
    pub(super) compressed: bool,
}

/// One pack and its blobs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PackEntry {
    pub(super) id: String,
    pub(super) size: u64,
    pub(super) blobs: Vec<BlobEntry>,
}

/// `index/<id>`: packs written together (by one backup, or a prune's consolidation).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IndexFile {
    pub(super) packs: Vec<PackEntry>,
    /// Index objects this one replaces (prune's consolidation); readers ignore those.
    #[serde(default)]
    pub(super) supersedes: Vec<String>,
}

/// `marks/<id>`: packs a prune found unreferenced, to delete in a later prune once no backup
/// that could have seen them as live is still running.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MarkFile {
    pub(super) marked_at: Timestamp,
    pub(super) packs: Vec<String>,
}

/// `locks/<id>`: a running backup, refreshed while it runs; expired locks are ignored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LockFile {
    pub(super) started: Timestamp,
    pub(super) refreshed: Timestamp,
    pub(super) host: String,
}

/// How a snapshot was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupKind {
    /// No parent: every file is read and chunked.
    Full,
    /// Parent = the latest snapshot of the same paths: unchanged files (size, mtime, inode)
    /// are not read.
    Incremental,
    /// Parent = the latest full snapshot of the same paths.
    Differential,
    /// A consistent point-in-time capture: pre hooks (quiesce), an incremental backup, post
    /// hooks (always).
    Snapshot,
}

impl BackupKind {
    /// `full`, `incremental`, `differential` or `snapshot`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupKind::Full => "full",
            BackupKind::Incremental => "incremental",
            BackupKind::Differential => "differential",
            BackupKind::Snapshot => "snapshot",
        }
    }
}

impl std::fmt::Display for BackupKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counts of one backup.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BackupSummary {
    /// Files in the snapshot.
    pub files: u64,
    /// Directories in the snapshot.
    pub dirs: u64,
    /// Files read and chunked (the rest were unchanged since the parent).
    pub files_read: u64,
    /// Bytes of all files in the snapshot.
    pub bytes_total: u64,
    /// Bytes read from the sources.
    pub bytes_read: u64,
    /// Blobs new to the repository.
    pub blobs_added: u64,
    /// Bytes written to the repository (packs, after compression and encryption).
    pub bytes_stored: u64,
}

/// `snapshots/<id>`: one backup, restorable on its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Snapshot {
    /// When it started (its point in time).
    pub time: Timestamp,
    /// When it finished.
    pub finished: Timestamp,
    /// Which host took it.
    pub host: String,
    /// The sources: directory paths and stream names.
    pub paths: Vec<String>,
    /// Labels for retention and search.
    pub tags: BTreeSet<String>,
    /// How it was taken.
    pub kind: BackupKind,
    /// The snapshot it was compared against, if any.
    pub parent: Option<String>,
    /// The root tree blob.
    pub tree: String,
    /// Counts.
    pub summary: BackupSummary,
}

/// What a tree node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum NodeKind {
    File,
    Dir,
    Symlink,
}

/// One entry of a directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Node {
    /// The name, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) name: Option<String>,
    /// The name's bytes in hex, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) raw_name: Option<String>,
    pub(super) kind: NodeKind,
    pub(super) mode: u32,
    /// Modification time, nanoseconds since the epoch.
    pub(super) mtime_ns: i128,
    #[serde(default)]
    pub(super) size: u64,
    #[serde(default)]
    pub(super) inode: u64,
    /// Owner and group ids (absent in snapshots that predate them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) owner: Option<(u32, u32)>,
    /// Data blobs, in order (files).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) content: Vec<String>,
    /// BLAKE3 of the whole content (files), for restore checks and drills.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) hash: Option<String>,
    /// The directory's tree blob (directories).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) subtree: Option<String>,
    /// The link target (symlinks), as hex bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) target: Option<String>,
}

/// A directory listing blob.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Tree {
    pub(super) nodes: Vec<Node>,
}
