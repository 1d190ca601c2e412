//! # deploykit-aws
//!
//! deploykit on Amazon S3 and S3-compatible stores (MinIO, R2, Ceph, moto):
//!
//! - [`S3Target`]: a [`deploykit_core::backup::BackupTarget`], so the backup engine keeps its
//!   repository in a bucket — multipart uploads with parallel parts (aborted on failure),
//!   conditional creates, pagination, storage class and server-side encryption, and S3 Object
//!   Lock retention ([`ObjectLock`]) so stolen credentials cannot delete backups early;
//! - [`S3StateStore`]: a [`deploykit_core::StateStore`], so orchestrators on several machines
//!   share deployments, leases and the audit log through conditional writes, with no database.
//!
//! Every call is retried with exponential backoff and jitter on throttling and 5xx, bounded in
//! attempts and time ([`RetryPolicy`]), then fails with an error naming the operation, bucket
//! and key. Errors map into [`deploykit_core::Error`]: not found, already exists (a lost
//! conditional write), permission denied, transient.

mod client;
mod lock;
mod state;
mod target;

pub use client::Sse;
/// How S3 calls are retried: deploykit's one [`deploykit_core::retry::RetryPolicy`].
pub use deploykit_core::retry::RetryPolicy;
pub use lock::{LockMode, ObjectLock, Retention};
pub use state::{S3StateStore, S3StateStoreBuilder};
pub use target::{S3Builder, S3Target};
