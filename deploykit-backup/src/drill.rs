//! Disaster-recovery drills: restore the newest snapshot to a scratch directory, check every
//! file against the snapshot's content hashes, and measure RTO and RPO against targets.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use super::format::{NodeKind, Tree};
use super::repo::Repository;
use super::restore::{RestoreOptions, node_os_name};
use deploykit_core::time::Timestamp;
use deploykit_core::{Error, Result};

/// Recovery objectives a drill is measured against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DrillTargets {
    /// Longest acceptable time to restore (default 1 h).
    #[serde(with = "deploykit_core::time::duration_ms", rename = "rto_ms")]
    pub rto: Duration,
    /// Oldest acceptable newest snapshot (default 5 min).
    #[serde(with = "deploykit_core::time::duration_ms", rename = "rpo_ms")]
    pub rpo: Duration,
}

impl DrillTargets {
    /// Targets of `rto` and `rpo`.
    pub fn new(rto: Duration, rpo: Duration) -> Self {
        DrillTargets { rto, rpo }
    }
}

impl Default for DrillTargets {
    fn default() -> Self {
        DrillTargets {
            rto: Duration::from_secs(3600),
            rpo: Duration::from_secs(300),
        }
    }
}

/// What a drill measured.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrillReport {
    /// The snapshot restored (the newest).
    pub snapshot: String,
    /// Its point in time.
    pub snapshot_time: Timestamp,
    /// When the drill started.
    pub started: Timestamp,
    /// Measured recovery point: the newest snapshot's age when the drill started.
    pub rpo: Duration,
    /// Measured recovery time: restore plus verification, wall clock.
    pub rto: Duration,
    /// Files restored and checked.
    pub files: u64,
    /// Bytes restored.
    pub bytes: u64,
    /// The targets.
    pub targets: DrillTargets,
}

impl DrillReport {
    /// Whether both objectives were met.
    pub fn meets_targets(&self) -> bool {
        self.rto <= self.targets.rto && self.rpo <= self.targets.rpo
    }
}

/// Check every restored file under `dir` against `tree`'s hashes; returns files checked.
fn check(trees: &HashMap<String, Tree>, tree: &str, dir: &Path) -> Result<u64> {
    let mut files = 0;
    for node in &trees[tree].nodes {
        let path = dir.join(node_os_name(node)?);
        match node.kind {
            NodeKind::File => {
                let mut hasher = blake3::Hasher::new();
                let file = std::fs::File::open(&path).map_err(|e| {
                    Error::backend(format!("drill: read {}", path.display()), e.to_string())
                })?;
                hasher.update_reader(file).map_err(|e| {
                    Error::backend(format!("drill: read {}", path.display()), e.to_string())
                })?;
                if node.hash.as_deref() != Some(hasher.finalize().to_hex().as_str()) {
                    return Err(Error::Corrupt {
                        what: format!("drill restore of {}", path.display()),
                        source: "its content does not match the snapshot's hash".into(),
                    });
                }
                files += 1;
            }
            NodeKind::Dir => {
                if let Some(sub) = &node.subtree {
                    files += check(trees, sub, &path)?;
                }
            }
            NodeKind::Symlink => {}
        }
    }
    Ok(files)
}

impl Repository {
    /// Run a drill: restore the newest snapshot into a fresh directory under `scratch`, read
    /// every file back against the snapshot's hashes, remove the copy, and report RTO and RPO
    /// against `targets`.
    pub async fn drill(&self, scratch: &Path, targets: DrillTargets) -> Result<DrillReport> {
        let started = self.clock.now();
        let (id, snapshot) = self
            .snapshots()
            .await?
            .pop()
            .ok_or_else(|| Error::not_found("a snapshot to drill with"))?;
        let dir = scratch.join(format!("drill-{}", &id[..12]));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| Error::backend(format!("clear {}", dir.display()), e.to_string()))?;
        }
        let clock = Instant::now();
        let restored = self.restore(&id, &dir, &RestoreOptions::default()).await?;
        let index = self.load_index().await?;
        let trees = self.load_trees(&index, &snapshot.tree).await?;
        let root = snapshot.tree.clone();
        let check_dir = dir.clone();
        let files = tokio::task::spawn_blocking(move || check(&trees, &root, &check_dir))
            .await
            .map_err(|e| Error::backend("drill", e.to_string()))??;
        let rto = clock.elapsed();
        let _ = std::fs::remove_dir_all(&dir);
        let report = DrillReport {
            snapshot: id,
            snapshot_time: snapshot.time,
            started,
            rpo: started.since(snapshot.time),
            rto,
            files,
            bytes: restored.bytes,
            targets,
        };
        tracing::info!(
            snapshot = %report.snapshot,
            rto_ms = report.rto.as_millis() as u64,
            rpo_ms = report.rpo.as_millis() as u64,
            met = report.meets_targets(),
            "disaster-recovery drill"
        );
        Ok(report)
    }
}
