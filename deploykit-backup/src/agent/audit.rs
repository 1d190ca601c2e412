//! Backups, restores, drills and prunes in the audit log: the same hash-chained log of the
//! store that deployments are recorded in (`deploykit audit verify` checks it).

use deploykit_core::audit::{AuditAction, AuditEntry, AuditRecord};
use deploykit_core::model::{DeploymentId, EnvironmentName, ServiceId};
use deploykit_core::retry;
use deploykit_core::store::StateStore;
use deploykit_core::time::Timestamp;
use deploykit_core::{Actor, Error, Result};

/// The name audit records of backup operations carry as their service.
pub const AUDIT_SERVICE: &str = "backup";

/// Append a record that `actor` ran `action` (backup, restore, drill or prune) for
/// `environment` at `at`, chained onto the store's last entry (again at once if another writer
/// appended first). `detail` says what it did, or why it failed.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> deploykit_core::Result<()> {
/// use deploykit_core::StateStore;
/// use deploykit_core::audit::AuditAction;
/// let store = std::sync::Arc::new(deploykit_testing::MemoryStore::new());
/// deploykit_backup::record_audit(
///     store.as_ref(),
///     &deploykit_core::Actor::new("alice"),
///     AuditAction::Backup,
///     "production",
///     deploykit_core::Timestamp::from_millis(0),
///     "snapshot 0123abcd: 3 files".into(),
/// )
/// .await?;
/// let log = store.audit_log().await?;
/// assert_eq!(log[0].record.action, AuditAction::Backup);
/// # Ok(()) }
/// ```
pub async fn record_audit(
    store: &dyn StateStore,
    actor: &Actor,
    action: AuditAction,
    environment: &str,
    at: Timestamp,
    detail: String,
) -> Result<()> {
    let environment = EnvironmentName::new(environment)?;
    let service = ServiceId::new(AUDIT_SERVICE)?;
    let mut record = AuditRecord::new(
        at,
        actor.clone(),
        action,
        DeploymentId::new(""),
        service,
        environment,
        detail,
    );
    record.deployment = None;
    retry::on_conflict(
        "chain an audit record",
        |e: &Error| matches!(e, Error::Conflict { .. }),
        || async {
            let last = store.last_audit().await?;
            let entry = AuditEntry::chain(last.as_ref(), record.clone());
            store.record_audit(&entry).await
        },
    )
    .await
}
