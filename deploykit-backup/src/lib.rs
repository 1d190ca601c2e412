//! Backups: a deduplicated, compressed, encrypted [`Repository`] over any [`BackupTarget`]
//! (a blob store in the manner of the `object_store` crate: [`LocalTarget`] here, in-memory in
//! `deploykit-testing`, S3 in `deploykit-aws`).
//!
//! - Content-defined chunking (FastCDC, 1 MiB average), chunk ids keyed BLAKE3 (not
//!   fingerprintable without the repository's key), zstd (skipped where it does not pay),
//!   XChaCha20-Poly1305 on everything; chunks grouped into 16 MiB packs.
//! - A random master key, wrapped by Argon2id passphrases and raw key files.
//! - Full, incremental, differential and snapshot (hooked) backups of directories and of
//!   byte streams ([`BackupSource`], e.g. a database dump); every snapshot restores alone.
//! - Retention ([`RetentionPolicy`]) with a dry run, prune that is safe alongside backups,
//!   verify (metadata, all data, or a sample), parallel restore, and DR drills.
//! - Mirrors ([`Repository::mirror_to`]): the same repository on a second target, copied
//!   incrementally and verified, consistent at every moment of the copy.
//! - The backup [`Agent`] ([`agent`]): every environment's [`BackupJob`] on its schedules, with
//!   missed runs made up at start, retries, alerts, a run history, audit records and metrics.
//!
//! The layout is in `docs/ARCHITECTURE.md` ("Backup repository").

pub mod agent;
mod copy;
mod crypto;
mod drill;
mod format;
pub mod local;
mod objects;
mod prune;
mod repo;
mod restore;
pub mod retention;
mod save;
mod schedule;
mod source;
mod verify;

pub use agent::{
    Agent, AgentBuilder, BackupJob, DrillSchedule, RehearsalSchedule, VerifySchedule, alert_rules,
    record_audit,
};
pub use copy::{KeptObject, MirrorOptions, MirrorReport, ObjectCount};
pub use crypto::RepoKey;
pub use drill::{DrillReport, DrillTargets};
pub use format::{BackupKind, BackupSummary, REPO_VERSION, Snapshot};
pub use local::LocalTarget;
pub use objects::{NamedObject, NamedPut};
pub use prune::{PruneOptions, PruneReport};
pub use repo::{RepoOptions, Repository};
pub use restore::{RestoreOptions, RestoreSummary};
pub use retention::{Candidate, Decision, RetentionPolicy};
pub use save::{BackupFinish, BackupRequest, ExcludeFn, Finish, Progress, ProgressFn};
pub use schedule::{BackupPolicy, RunReport, ScheduledRun, Scheduler, check_cron, next_occurrence};
pub use source::CommandSource;
pub use verify::{Problem, ReadData, VerifyReport};

pub use deploykit_core::backup::{BackupSource, BackupTarget, ObjectMeta, check_key};

/// Data for the crate's unit tests.
#[cfg(test)]
mod test_data {
    /// `len` pseudo-random (incompressible) bytes, the same for the same `seed`.
    pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }
}
