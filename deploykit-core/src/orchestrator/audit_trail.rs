//! The audit trail: every operator action, carried out or refused, as a record chained onto the
//! last one in the store's audit log (see [`crate::audit`] for the chain and its
//! verification).

use std::sync::Arc;

use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::access::AccessAction;
use crate::audit::{self, AuditAction, AuditEntry, AuditRecord, SignedCheckpoint, Verified};
use crate::error::{Error, Result};
use crate::journal::{Actor, DeploymentStatus};
use crate::model::{DeploymentId, EnvironmentName, ServiceId};
use crate::store::StateStore;
use crate::time::Clock;

/// Writes the audit log: builds the record of each operator action, stamped with the
/// orchestrator's clock, and chains it onto the store's last entry (retrying when another
/// writer appended first, so concurrent writers never fork the chain).
#[derive(Debug)]
pub(crate) struct AuditTrail {
    store: Arc<dyn StateStore>,
    clock: Arc<dyn Clock>,
}

impl AuditTrail {
    /// A trail written to `store`, stamped by `clock`.
    pub(crate) fn new(store: Arc<dyn StateStore>, clock: Arc<dyn Clock>) -> Self {
        AuditTrail { store, clock }
    }

    /// Record that `actor` did `action` to `status`'s deployment; `detail` says what (the
    /// revision, the reason).
    pub(crate) async fn record(
        &self,
        status: &DeploymentStatus,
        actor: Actor,
        action: AuditAction,
        detail: String,
    ) -> Result<()> {
        let record = AuditRecord::new(
            self.clock.now(),
            actor,
            action,
            status.spec.id.clone(),
            status.spec.service.clone(),
            status.spec.environment.clone(),
            detail,
        );
        self.append(record).await
    }

    /// Record that `actor` was refused `action` on `environment/service` (and on `deployment`,
    /// if the action was on one; a refused request that would have created one names none),
    /// and `why`.
    pub(crate) async fn refused(
        &self,
        actor: &Actor,
        action: AccessAction,
        environment: &EnvironmentName,
        service: &ServiceId,
        deployment: Option<&DeploymentId>,
        why: &Error,
    ) -> Result<()> {
        let mut record = AuditRecord::new(
            self.clock.now(),
            actor.clone(),
            audit_action(action),
            DeploymentId::new(""),
            service.clone(),
            environment.clone(),
            why.to_string(),
        )
        .denied();
        record.deployment = deployment.cloned();
        self.append(record).await
    }

    /// Append `record` to the chained audit log.
    async fn append(&self, record: AuditRecord) -> Result<()> {
        crate::store::append_audit(&*self.store, record).await
    }

    /// The audit log with its hash chain, oldest first.
    pub(crate) async fn log(&self) -> Result<Vec<AuditEntry>> {
        self.store.audit_log().await
    }

    /// A checkpoint of the log as it is now (record count and head hash), signed with `key`.
    pub(crate) async fn checkpoint(&self, key: &SigningKey) -> Result<SignedCheckpoint> {
        let entries = self.log().await?;
        Ok(SignedCheckpoint::sign(&entries, self.clock.now(), key))
    }

    /// Verify the log's hash chain and, if given, that it extends a signed checkpoint (made
    /// with the trusted key). The error names the first bad record.
    pub(crate) async fn verify(
        &self,
        checkpoint: Option<(&SignedCheckpoint, &VerifyingKey)>,
    ) -> Result<Verified> {
        let entries = self.log().await?;
        audit::verify(&entries, checkpoint)
    }
}

/// The audit log's name for an operator action the access gate checks.
pub(super) fn audit_action(action: AccessAction) -> AuditAction {
    match action {
        AccessAction::Deploy => AuditAction::Deploy,
        AccessAction::Rollback => AuditAction::Rollback,
        AccessAction::Abort => AuditAction::Abort,
        AccessAction::Pause => AuditAction::Pause,
        AccessAction::Resume => AuditAction::Resume,
        AccessAction::Approve => AuditAction::Approve,
        AccessAction::Reject => AuditAction::Reject,
        AccessAction::Teardown => AuditAction::Teardown,
        AccessAction::Failover => AuditAction::Failover,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use async_trait::async_trait;

    use super::*;
    use crate::audit::{AuditOutcome, GENESIS};
    use crate::journal::{DeploymentSpec, JournalEntry, JournalEvent};
    use crate::model::{
        Digest, EnvironmentKind, EnvironmentSpec, FailurePolicy, Revision, ServiceSpec,
    };
    use crate::store::Lease;
    use crate::strategy::StrategySpec;
    use crate::time::Timestamp;

    /// A store that keeps only an audit log, as the store contract says (an entry that is not
    /// the next one is a `Conflict`). `rival`, if set, is appended by "another writer" just
    /// before the next append, so that append loses the race.
    #[derive(Debug, Default)]
    struct AuditLog {
        entries: Mutex<Vec<AuditEntry>>,
        rival: Mutex<Option<AuditRecord>>,
    }

    /// The trail touches only the audit log: anything else is a failure of the test.
    fn only_the_audit_log() -> ! {
        unreachable!("the audit trail touched more of the store than its audit log")
    }

    #[async_trait]
    impl StateStore for AuditLog {
        async fn append(&self, _: &DeploymentId, _: &JournalEntry) -> Result<()> {
            only_the_audit_log()
        }
        async fn load(&self, _: &DeploymentId) -> Result<Option<Vec<JournalEntry>>> {
            only_the_audit_log()
        }
        async fn load_from(&self, _: &DeploymentId, _: u64) -> Result<Option<Vec<JournalEntry>>> {
            only_the_audit_log()
        }
        async fn list_active(&self) -> Result<Vec<DeploymentId>> {
            only_the_audit_log()
        }
        async fn list_deployments(
            &self,
            _: &ServiceId,
            _: &EnvironmentName,
        ) -> Result<Vec<DeploymentId>> {
            only_the_audit_log()
        }
        async fn list_environments(&self) -> Result<Vec<(ServiceId, EnvironmentName)>> {
            only_the_audit_log()
        }
        async fn acquire_lease(
            &self,
            _: &str,
            _: &str,
            _: Timestamp,
            _: Duration,
        ) -> Result<Lease> {
            only_the_audit_log()
        }
        async fn release_lease(&self, _: &Lease) -> Result<()> {
            only_the_audit_log()
        }
        async fn lease(&self, _: &str) -> Result<Option<Lease>> {
            only_the_audit_log()
        }
        async fn append_record(&self, _: &str, _: u64, _: &serde_json::Value) -> Result<()> {
            only_the_audit_log()
        }
        async fn records(&self, _: &str) -> Result<Option<Vec<serde_json::Value>>> {
            only_the_audit_log()
        }
        async fn record_logs(&self, _: &str) -> Result<Vec<String>> {
            only_the_audit_log()
        }
        async fn record_audit(&self, entry: &AuditEntry) -> Result<()> {
            let mut entries = self.entries.lock().unwrap();
            if let Some(record) = self.rival.lock().unwrap().take() {
                let rival = AuditEntry::chain(entries.last(), record);
                entries.push(rival);
            }
            let next = entries.len() as u64;
            if entry.seq != next {
                return Err(Error::Conflict {
                    deployment: "audit log".into(),
                    expected: entry.seq,
                    actual: next,
                });
            }
            entries.push(entry.clone());
            Ok(())
        }
        async fn last_audit(&self) -> Result<Option<AuditEntry>> {
            Ok(self.entries.lock().unwrap().last().cloned())
        }
        async fn audit_log(&self) -> Result<Vec<AuditEntry>> {
            Ok(self.entries.lock().unwrap().clone())
        }
    }

    /// A clock stopped at one instant.
    #[derive(Debug)]
    struct Stopped(Timestamp);

    impl Clock for Stopped {
        fn now(&self) -> Timestamp {
            self.0
        }
    }

    fn at() -> Timestamp {
        Timestamp::from_millis(1_700_000_000_000)
    }

    fn trail() -> (AuditTrail, Arc<AuditLog>) {
        let store = Arc::new(AuditLog::default());
        let trail = AuditTrail::new(store.clone(), Arc::new(Stopped(at())));
        (trail, store)
    }

    /// A just-created deployment of `web` v2 to production.
    fn deployment() -> DeploymentStatus {
        let service = ServiceSpec::builder().name("web").build().unwrap();
        let environment = EnvironmentSpec::builder()
            .name("production")
            .kind(EnvironmentKind::Production)
            .replicas(1)
            .build()
            .unwrap();
        let revision =
            Revision::new(&service, &environment, Digest::of_bytes(b"web"), "v2").unwrap();
        let spec = DeploymentSpec::builder()
            .id(DeploymentId::new("web-1"))
            .service(revision.service.clone())
            .environment(environment.name.clone())
            .replicas(1)
            .strategy(StrategySpec::default())
            .failure_policy(FailurePolicy::Rollback)
            .progress_deadline(Duration::from_secs(600))
            .requested_by(Actor::new("alice"))
            .target(Arc::new(revision))
            .build();
        let created = JournalEvent::Created {
            spec: Arc::new(spec),
        };
        DeploymentStatus::from_journal(&[JournalEntry::new(0, at(), created)]).unwrap()
    }

    #[tokio::test]
    async fn records_are_chained_stamped_and_verifiable() {
        let (trail, _) = trail();
        let status = deployment();
        let alice = Actor::new("alice");
        trail
            .record(&status, alice.clone(), AuditAction::Deploy, "v2".into())
            .await
            .unwrap();
        trail
            .record(&status, alice.clone(), AuditAction::Abort, "broken".into())
            .await
            .unwrap();
        let log = trail.log().await.unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!(log[0].prev_hash, GENESIS);
        assert_eq!(log[1].prev_hash, log[0].hash);
        let first = &log[0].record;
        assert_eq!(first.at, at());
        assert_eq!(first.actor, alice);
        assert_eq!(first.action, AuditAction::Deploy);
        assert_eq!(first.outcome, AuditOutcome::Allowed);
        assert_eq!(first.deployment, Some(DeploymentId::new("web-1")));
        assert_eq!(first.service.as_str(), "web");
        assert_eq!(first.environment.as_str(), "production");
        assert_eq!(first.detail, "v2");
        assert_eq!(trail.verify(None).await.unwrap().records, 2);
    }

    #[tokio::test]
    async fn a_refusal_is_recorded_as_denied_with_its_reason() {
        let (trail, _) = trail();
        let (production, web) = (
            EnvironmentName::new("production").unwrap(),
            ServiceId::new("web").unwrap(),
        );
        let why = Error::PermissionDenied {
            principal: "mallory".into(),
            permission: "deploy on production/web".into(),
        };
        let bob = Actor::new("mallory");
        trail
            .refused(&bob, AccessAction::Deploy, &production, &web, None, &why)
            .await
            .unwrap();
        let id = DeploymentId::new("web-1");
        trail
            .refused(
                &bob,
                AccessAction::Abort,
                &production,
                &web,
                Some(&id),
                &why,
            )
            .await
            .unwrap();
        let log = trail.log().await.unwrap();
        let (deploy, abort) = (&log[0].record, &log[1].record);
        assert_eq!(deploy.outcome, AuditOutcome::Denied);
        assert_eq!(deploy.action, AuditAction::Deploy);
        assert_eq!(deploy.deployment, None);
        assert_eq!(deploy.detail, why.to_string());
        assert_eq!(abort.action, AuditAction::Abort);
        assert_eq!(abort.deployment, Some(id));
    }

    #[tokio::test]
    async fn a_record_that_loses_the_race_chains_onto_the_winner() {
        let (trail, store) = trail();
        let status = deployment();
        let rival = AuditRecord::new(
            at(),
            Actor::new("bob"),
            AuditAction::Pause,
            status.spec.id.clone(),
            status.spec.service.clone(),
            status.spec.environment.clone(),
            "from another orchestrator",
        );
        *store.rival.lock().unwrap() = Some(rival);
        trail
            .record(
                &status,
                Actor::new("alice"),
                AuditAction::Deploy,
                "v2".into(),
            )
            .await
            .unwrap();
        let log = trail.log().await.unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!(log[0].record.actor, Actor::new("bob"));
        assert_eq!(log[1].record.actor, Actor::new("alice"));
        assert_eq!(trail.verify(None).await.unwrap().records, 2);
    }

    #[tokio::test]
    async fn a_checkpoint_covers_the_log_as_it_is() {
        let (trail, _) = trail();
        let key = SigningKey::from_bytes(&[7; 32]);
        let status = deployment();
        trail
            .record(
                &status,
                Actor::new("alice"),
                AuditAction::Deploy,
                "v2".into(),
            )
            .await
            .unwrap();
        let checkpoint = trail.checkpoint(&key).await.unwrap();
        trail
            .record(
                &status,
                Actor::new("alice"),
                AuditAction::Abort,
                "bad".into(),
            )
            .await
            .unwrap();
        let verified = trail
            .verify(Some((&checkpoint, &key.verifying_key())))
            .await
            .unwrap();
        assert_eq!(verified.records, 2);
    }

    #[test]
    fn every_access_action_has_its_audit_action() {
        let pairs = [
            (AccessAction::Deploy, "deploy"),
            (AccessAction::Rollback, "rollback"),
            (AccessAction::Abort, "abort"),
            (AccessAction::Pause, "pause"),
            (AccessAction::Resume, "resume"),
            (AccessAction::Approve, "approve"),
            (AccessAction::Reject, "reject"),
            (AccessAction::Teardown, "teardown"),
            (AccessAction::Failover, "failover"),
        ];
        for (access, audited) in pairs {
            assert_eq!(audit_action(access).to_string(), audited);
        }
    }
}
