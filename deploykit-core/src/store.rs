//! Durable state: the [`StateStore`] trait (journals, leases, audit log). The embedded SQLite
//! store is in `deploykit-sqlite`; S3 and Kubernetes stores in `deploykit-aws` and
//! `deploykit-k8s`; an in-memory one in `deploykit-testing`.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::audit::AuditEntry;
pub use crate::audit::{AuditAction, AuditOutcome, AuditRecord};
use crate::error::{Error, Result};
use crate::journal::JournalEntry;
use crate::model::{DeploymentId, EnvironmentName, ServiceId};
use crate::time::Timestamp;

/// A held lease: `owner` may act on `key` until `expires_at` unless it renews.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Lease {
    /// What is leased (`service/environment`).
    pub key: String,
    /// Who holds it.
    pub owner: String,
    /// When it lapses.
    pub expires_at: Timestamp,
}

impl Lease {
    /// A lease record.
    pub fn new(key: impl Into<String>, owner: impl Into<String>, expires_at: Timestamp) -> Self {
        Lease {
            key: key.into(),
            owner: owner.into(),
            expires_at,
        }
    }
}

/// The durable home of deployment journals, leases, the audit log, and the record logs of
/// other procedures (failovers).
///
/// Contract (checked by `deploykit_testing::conformance::state_store`):
/// - `append` of entry 0 (which must be `created`) creates the deployment, or fails with
///   `AlreadyExists`. Later entries must carry the next sequence number, or the append fails
///   with `Conflict` and writes nothing: of two writers racing for the same position exactly one
///   wins. Appending to an unknown deployment is `NotFound`.
/// - A deployment is *active* until an entry with a terminal event is appended.
/// - `acquire_lease` grants the lease if it is free, expired, or already held by `owner` (then
///   it is renewed); otherwise it fails with `LeaseHeld`. Expiry is judged against the `now`
///   the caller passes, so every store agrees with the orchestrator's clock.
#[async_trait]
pub trait StateStore: Send + Sync + fmt::Debug {
    /// Append `entry` to the journal of `deployment` (see the contract above).
    async fn append(&self, deployment: &DeploymentId, entry: &JournalEntry) -> Result<()>;

    /// The whole journal of `deployment`, or `None` if it does not exist.
    async fn load(&self, deployment: &DeploymentId) -> Result<Option<Vec<JournalEntry>>>;

    /// The entries of `deployment`'s journal from sequence number `from` on (empty when there
    /// are none yet), or `None` if it does not exist. Drivers use it to catch up cheaply.
    async fn load_from(
        &self,
        deployment: &DeploymentId,
        from: u64,
    ) -> Result<Option<Vec<JournalEntry>>>;

    /// Every deployment that has not ended, oldest first.
    async fn list_active(&self) -> Result<Vec<DeploymentId>>;

    /// Every deployment of `service` in `environment`, newest first.
    async fn list_deployments(
        &self,
        service: &ServiceId,
        environment: &EnvironmentName,
    ) -> Result<Vec<DeploymentId>>;

    /// Every (service, environment) pair that has deployments, in no particular order.
    async fn list_environments(&self) -> Result<Vec<(ServiceId, EnvironmentName)>>;

    /// Take or renew the lease `key` for `owner` until `now + ttl`.
    async fn acquire_lease(
        &self,
        key: &str,
        owner: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Lease>;

    /// Give up `lease` if its owner still holds it; otherwise do nothing.
    async fn release_lease(&self, lease: &Lease) -> Result<()>;

    /// The lease `key` as last written (held, or expired but not yet taken over), or `None` if
    /// there is none (never taken, or released). Read-only: it never takes the lease.
    async fn lease(&self, key: &str) -> Result<Option<Lease>>;

    /// Append a chained audit entry. Its `seq` must be the next one, or the append fails with
    /// `Conflict` and writes nothing (so concurrent writers never fork the chain).
    async fn record_audit(&self, entry: &AuditEntry) -> Result<()>;

    /// The last audit entry, if any.
    async fn last_audit(&self) -> Result<Option<AuditEntry>>;

    /// Every audit entry, oldest first.
    async fn audit_log(&self) -> Result<Vec<AuditEntry>>;

    /// Append `record` at position `seq` of the record log `log`: the journals of procedures
    /// other than rollouts (a failover: `failover/<id>`). Position 0 creates the log, or fails
    /// with `AlreadyExists`; a later position must be the next one, or the append fails with
    /// `Conflict` and writes nothing (of two writers racing, exactly one wins); appending to a
    /// log that does not exist is `NotFound`. `log` is checked with [`check_log_name`].
    async fn append_record(&self, log: &str, seq: u64, record: &serde_json::Value) -> Result<()>;

    /// The records of `log`, in order, or `None` if it does not exist.
    async fn records(&self, log: &str) -> Result<Option<Vec<serde_json::Value>>>;

    /// The names of the record logs that start with `prefix`, sorted.
    async fn record_logs(&self, prefix: &str) -> Result<Vec<String>>;
}

/// Chain `record` onto the last entry of `store`'s audit log and append it; another writer may
/// have appended first, and then it is chained again onto theirs (the chain never forks).
pub(crate) async fn append_audit(store: &dyn StateStore, record: AuditRecord) -> Result<()> {
    crate::retry::on_conflict(
        "chain an audit record",
        |e| matches!(e, Error::Conflict { .. }),
        || async {
            let last = store.last_audit().await?;
            let entry = AuditEntry::chain(last.as_ref(), record.clone());
            store.record_audit(&entry).await
        },
    )
    .await
}

/// The longest record log name.
pub const LOG_NAME_MAX: usize = 200;

/// Check a record log's name: 1 to [`LOG_NAME_MAX`] characters of lowercase letters, digits,
/// `-`, `.` and `/`, not starting or ending with `/` or `.`, without `//` or `..` (every store
/// can use it as a key, an object name or, with `/` as `.`, a Kubernetes object name).
pub fn check_log_name(log: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(crate::Error::invalid(
            "record log",
            format!("{log:?} {why}"),
        ))
    };
    if log.is_empty() || log.len() > LOG_NAME_MAX {
        return bad(&format!("must have 1 to {LOG_NAME_MAX} characters"));
    }
    if let Some(c) = log
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '/')))
    {
        return bad(&format!(
            "has {c:?}: a log name is lowercase letters, digits, '-', '.' and '/'"
        ));
    }
    if log.starts_with(['/', '.']) || log.ends_with(['/', '.']) {
        return bad("must not start or end with '/' or '.'");
    }
    if log.contains("//") || log.contains("..") || log.contains("/.") || log.contains("./") {
        return bad("must not have an empty or dot segment");
    }
    Ok(())
}

/// A [`StateStore`] that wraps another and changes only some of its behaviour: implement
/// `inner` and override the methods that differ; every other method delegates to the inner
/// store. Every `StateStoreLayer` is a `StateStore`.
///
/// ```
/// use async_trait::async_trait;
/// use deploykit_core::journal::JournalEntry;
/// use deploykit_core::store::{StateStore, StateStoreLayer};
/// use deploykit_core::{DeploymentId, Result};
///
/// /// Counts journal writes; everything else is the inner store's.
/// #[derive(Debug)]
/// struct Counting<S> {
///     inner: S,
///     appends: std::sync::atomic::AtomicU64,
/// }
///
/// #[async_trait]
/// impl<S: StateStore> StateStoreLayer for Counting<S> {
///     fn inner(&self) -> &dyn StateStore {
///         &self.inner
///     }
///     async fn append(&self, deployment: &DeploymentId, entry: &JournalEntry) -> Result<()> {
///         self.appends.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///         self.inner.append(deployment, entry).await
///     }
/// }
/// ```
#[async_trait]
pub trait StateStoreLayer: Send + Sync + fmt::Debug {
    /// The store this one wraps.
    fn inner(&self) -> &dyn StateStore;

    /// See [`StateStore::append`].
    async fn append(&self, deployment: &DeploymentId, entry: &JournalEntry) -> Result<()> {
        self.inner().append(deployment, entry).await
    }

    /// See [`StateStore::load`].
    async fn load(&self, deployment: &DeploymentId) -> Result<Option<Vec<JournalEntry>>> {
        self.inner().load(deployment).await
    }

    /// See [`StateStore::load_from`].
    async fn load_from(
        &self,
        deployment: &DeploymentId,
        from: u64,
    ) -> Result<Option<Vec<JournalEntry>>> {
        self.inner().load_from(deployment, from).await
    }

    /// See [`StateStore::list_active`].
    async fn list_active(&self) -> Result<Vec<DeploymentId>> {
        self.inner().list_active().await
    }

    /// See [`StateStore::list_deployments`].
    async fn list_deployments(
        &self,
        service: &ServiceId,
        environment: &EnvironmentName,
    ) -> Result<Vec<DeploymentId>> {
        self.inner().list_deployments(service, environment).await
    }

    /// See [`StateStore::list_environments`].
    async fn list_environments(&self) -> Result<Vec<(ServiceId, EnvironmentName)>> {
        self.inner().list_environments().await
    }

    /// See [`StateStore::acquire_lease`].
    async fn acquire_lease(
        &self,
        key: &str,
        owner: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Lease> {
        self.inner().acquire_lease(key, owner, now, ttl).await
    }

    /// See [`StateStore::release_lease`].
    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        self.inner().release_lease(lease).await
    }

    /// See [`StateStore::lease`].
    async fn lease(&self, key: &str) -> Result<Option<Lease>> {
        self.inner().lease(key).await
    }

    /// See [`StateStore::record_audit`].
    async fn record_audit(&self, entry: &AuditEntry) -> Result<()> {
        self.inner().record_audit(entry).await
    }

    /// See [`StateStore::last_audit`].
    async fn last_audit(&self) -> Result<Option<AuditEntry>> {
        self.inner().last_audit().await
    }

    /// See [`StateStore::audit_log`].
    async fn audit_log(&self) -> Result<Vec<AuditEntry>> {
        self.inner().audit_log().await
    }

    /// See [`StateStore::append_record`].
    async fn append_record(&self, log: &str, seq: u64, record: &serde_json::Value) -> Result<()> {
        self.inner().append_record(log, seq, record).await
    }

    /// See [`StateStore::records`].
    async fn records(&self, log: &str) -> Result<Option<Vec<serde_json::Value>>> {
        self.inner().records(log).await
    }

    /// See [`StateStore::record_logs`].
    async fn record_logs(&self, prefix: &str) -> Result<Vec<String>> {
        self.inner().record_logs(prefix).await
    }
}

#[async_trait]
impl<T: StateStoreLayer> StateStore for T {
    async fn append(&self, deployment: &DeploymentId, entry: &JournalEntry) -> Result<()> {
        StateStoreLayer::append(self, deployment, entry).await
    }
    async fn load(&self, deployment: &DeploymentId) -> Result<Option<Vec<JournalEntry>>> {
        StateStoreLayer::load(self, deployment).await
    }
    async fn load_from(
        &self,
        deployment: &DeploymentId,
        from: u64,
    ) -> Result<Option<Vec<JournalEntry>>> {
        StateStoreLayer::load_from(self, deployment, from).await
    }
    async fn list_active(&self) -> Result<Vec<DeploymentId>> {
        StateStoreLayer::list_active(self).await
    }
    async fn list_deployments(
        &self,
        service: &ServiceId,
        environment: &EnvironmentName,
    ) -> Result<Vec<DeploymentId>> {
        StateStoreLayer::list_deployments(self, service, environment).await
    }
    async fn list_environments(&self) -> Result<Vec<(ServiceId, EnvironmentName)>> {
        StateStoreLayer::list_environments(self).await
    }
    async fn acquire_lease(
        &self,
        key: &str,
        owner: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Lease> {
        StateStoreLayer::acquire_lease(self, key, owner, now, ttl).await
    }
    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        StateStoreLayer::release_lease(self, lease).await
    }
    async fn lease(&self, key: &str) -> Result<Option<Lease>> {
        StateStoreLayer::lease(self, key).await
    }
    async fn record_audit(&self, entry: &AuditEntry) -> Result<()> {
        StateStoreLayer::record_audit(self, entry).await
    }
    async fn last_audit(&self) -> Result<Option<AuditEntry>> {
        StateStoreLayer::last_audit(self).await
    }
    async fn audit_log(&self) -> Result<Vec<AuditEntry>> {
        StateStoreLayer::audit_log(self).await
    }
    async fn append_record(&self, log: &str, seq: u64, record: &serde_json::Value) -> Result<()> {
        StateStoreLayer::append_record(self, log, seq, record).await
    }
    async fn records(&self, log: &str) -> Result<Option<Vec<serde_json::Value>>> {
        StateStoreLayer::records(self, log).await
    }
    async fn record_logs(&self, prefix: &str) -> Result<Vec<String>> {
        StateStoreLayer::record_logs(self, prefix).await
    }
}
