//! PostgreSQL continuous archiving and point-in-time recovery over a deploykit backup
//! repository, in the manner of WAL-G and pgBackRest:
//!
//! - **WAL archive**: [`push_wal`] is PostgreSQL's `archive_command`, [`fetch_wal`] its
//!   `restore_command`. Each file is a named object (`wal/<file name>`) of the repository:
//!   chunked, deduplicated, compressed and encrypted, written last so an interrupted push
//!   leaves nothing that looks archived, idempotent for a retried push, checked on read.
//!   A spooler ([`spool_ahead`]) fetches the next segments into a spool while PostgreSQL
//!   replays; later runs take from it ([`take_prefetched`]) without opening the repository.
//! - **Base backups**: [`take_base_backup`] reads a running server's data directory in place
//!   (`pg_backup_start` … `pg_backup_stop`) when it is local, else runs `pg_basebackup`, and
//!   stores it as a snapshot tagged with its WAL range ([`BaseBackup`]).
//! - **Point-in-time recovery**: [`restore`] picks the newest base backup before a
//!   [`RecoveryTarget`] (a time, an LSN, a restore point, or the end of the archive), checks
//!   the archive has every segment recovery needs, restores the files and lets PostgreSQL
//!   replay the WAL and promote, then runs a verify query.
//! - **Retention**: [`prune`] keeps the newest base backups and the WAL they need.
//! - **Standby and failover**: [`seed_standby`] sets up a standby that follows the archive,
//!   [`standby_lag`] says how far behind it is, [`promote_standby`] makes it the primary and
//!   [`fence_primary`] keeps the old primary from taking writes again.
//!
//! PostgreSQL's own programs do the database work (`pg_basebackup`, `postgres`, `initdb`:
//! see [`PgBinaries`]); queries go through `tokio-postgres`. PostgreSQL refuses to run as
//! root: a root process runs it as another user ([`OsUser`]).
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> deploykit_core::Result<()> {
//! use std::sync::Arc;
//! use deploykit_backup::{LocalTarget, RepoKey, Repository};
//! use deploykit_postgres::{BaseBackupRequest, PgBinaries, RecoveryTarget, RestoreRequest};
//! let target = Arc::new(LocalTarget::new("/backups/pg")?);
//! let repo = Repository::open(target, &RepoKey::passphrase("…")).await?;
//! // archive_command = 'deploykit pg wal-push %p --repo /backups/pg' pushes the WAL; then:
//! let bins = PgBinaries::find()?;
//! deploykit_postgres::take_base_backup(
//!     &repo,
//!     &BaseBackupRequest::builder()
//!         .connection("host=127.0.0.1 user=postgres")
//!         .bins(bins.clone())
//!         .build(),
//! )
//! .await?;
//! // Later: a new data directory as of the end of the archive.
//! let report = deploykit_postgres::restore(
//!     &repo,
//!     &RestoreRequest::builder()
//!         .to("/srv/pg-restored")
//!         .target(RecoveryTarget::Latest)
//!         .restore_command("deploykit pg wal-fetch %f %p --repo /backups/pg")
//!         .bins(bins)
//!         .verify_query("SELECT count(*) FROM orders")
//!         .build(),
//! )
//! .await?;
//! println!("recovered to {} on timeline {}", report.end_lsn, report.timeline);
//! # Ok(())
//! # }
//! ```

mod archive;
mod basebackup;
mod catalog;
mod inplace;
mod prefetch;
mod restore;
mod retention;
mod server;
mod standby;
mod wal;

pub use archive::{
    ClusterIdentity, PushReport, archived_segments, fetch_wal, first_missing, push_wal,
    wal_object_name,
};
pub use basebackup::{BaseBackupReport, BaseBackupRequest, take_base_backup};
pub use catalog::{BASE_BACKUP_TAG, BaseBackup, base_backups};
pub use prefetch::{
    PREFETCH_DIR, PrefetchReport, prefetch_spool, remove_spool, spool_ahead, spool_wanted,
    spooler_running, take_prefetched, take_prefetched_waiting, wait_for_spooler,
};
pub use restore::{RecoveryTarget, RestoreReport, RestoreRequest, restore};
pub use retention::{PgPruneReport, prune};
pub use server::{
    OsUser, PgBinaries, Rows, Server, ServerOptions, chown_tree, free_port, initdb, simple_query,
};
pub use standby::{
    Fence, Promotion, StandbyLag, StandbyRequest, StandbySeed, StandbyStatus, fence_primary,
    promote_standby, seed_standby, standby_lag, standby_status,
};
pub use wal::{Lsn, SegmentHeader, WalFileKind, WalSegment, check_segment_size};

/// The PostgreSQL client used for queries, re-exported for [`Server::connect`]'s callers.
pub use tokio_postgres;
