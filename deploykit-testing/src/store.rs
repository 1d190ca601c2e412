//! An in-memory [`StateStore`] with the same semantics as the SQLite one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use deploykit_core::audit::AuditEntry;
use deploykit_core::journal::{JournalEntry, JournalEvent};
use deploykit_core::store::{Lease, StateStore, check_log_name};
use deploykit_core::{DeploymentId, EnvironmentName, Error, Result, ServiceId, Timestamp};

#[derive(Debug)]
struct Journal {
    id: DeploymentId,
    entries: Vec<JournalEntry>,
    active: bool,
}

#[derive(Debug, Default)]
struct Inner {
    journals: Vec<Journal>,
    index: HashMap<DeploymentId, usize>,
    by_service: HashMap<(ServiceId, EnvironmentName), Vec<usize>>,
    leases: HashMap<String, Lease>,
    audit: Vec<AuditEntry>,
    records: BTreeMap<String, Vec<serde_json::Value>>,
}

/// A [`StateStore`] in memory. Clones share data, so a test can "restart" an orchestrator by
/// opening a new one on a clone.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn append(&self, deployment: &DeploymentId, entry: &JournalEntry) -> Result<()> {
        let mut inner = self.lock();
        let existing = inner.index.get(deployment).copied();
        match (&entry.event, existing) {
            (JournalEvent::Created { spec }, None) => {
                if entry.seq != 0 {
                    return Err(Error::invalid("journal entry", "`created` must be entry 0"));
                }
                let at = inner.journals.len();
                inner.journals.push(Journal {
                    id: deployment.clone(),
                    entries: vec![entry.clone()],
                    active: true,
                });
                inner.index.insert(deployment.clone(), at);
                inner
                    .by_service
                    .entry((spec.service.clone(), spec.environment.clone()))
                    .or_default()
                    .push(at);
                Ok(())
            }
            (JournalEvent::Created { .. }, Some(_)) => Err(Error::AlreadyExists {
                what: format!("deployment {deployment}"),
            }),
            (_, None) => Err(Error::not_found(format!("deployment {deployment}"))),
            (_, Some(at)) => {
                let journal = &mut inner.journals[at];
                let next = journal.entries.len() as u64;
                if entry.seq != next {
                    return Err(Error::Conflict {
                        deployment: deployment.to_string(),
                        expected: entry.seq,
                        actual: next,
                    });
                }
                journal.entries.push(entry.clone());
                if entry.event.is_terminal() {
                    journal.active = false;
                    journal.entries.shrink_to_fit();
                }
                Ok(())
            }
        }
    }

    async fn load(&self, deployment: &DeploymentId) -> Result<Option<Vec<JournalEntry>>> {
        self.load_from(deployment, 0).await
    }

    async fn load_from(
        &self,
        deployment: &DeploymentId,
        from: u64,
    ) -> Result<Option<Vec<JournalEntry>>> {
        let inner = self.lock();
        Ok(inner.index.get(deployment).map(|&at| {
            let entries = &inner.journals[at].entries;
            entries[(from as usize).min(entries.len())..].to_vec()
        }))
    }

    async fn list_active(&self) -> Result<Vec<DeploymentId>> {
        let inner = self.lock();
        Ok(inner
            .journals
            .iter()
            .filter(|j| j.active)
            .map(|j| j.id.clone())
            .collect())
    }

    async fn list_deployments(
        &self,
        service: &ServiceId,
        environment: &EnvironmentName,
    ) -> Result<Vec<DeploymentId>> {
        let inner = self.lock();
        let key = (service.clone(), environment.clone());
        Ok(inner.by_service.get(&key).map_or_else(Vec::new, |ats| {
            ats.iter()
                .rev()
                .map(|&at| inner.journals[at].id.clone())
                .collect()
        }))
    }

    async fn list_environments(&self) -> Result<Vec<(ServiceId, EnvironmentName)>> {
        Ok(self.lock().by_service.keys().cloned().collect())
    }

    async fn acquire_lease(
        &self,
        key: &str,
        owner: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Lease> {
        let mut inner = self.lock();
        if let Some(held) = inner.leases.get(key)
            && held.owner != owner
            && held.expires_at > now
        {
            return Err(Error::LeaseHeld {
                key: key.to_string(),
                owner: held.owner.clone(),
                expires_at: held.expires_at,
            });
        }
        let lease = Lease::new(key, owner, now.plus(ttl));
        inner.leases.insert(key.to_string(), lease.clone());
        Ok(lease)
    }

    async fn lease(&self, key: &str) -> Result<Option<Lease>> {
        Ok(self.lock().leases.get(key).cloned())
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let mut inner = self.lock();
        if inner
            .leases
            .get(&lease.key)
            .is_some_and(|held| held.owner == lease.owner)
        {
            inner.leases.remove(&lease.key);
        }
        Ok(())
    }

    async fn record_audit(&self, entry: &AuditEntry) -> Result<()> {
        let mut inner = self.lock();
        let next = inner.audit.len() as u64;
        if entry.seq != next {
            return Err(Error::Conflict {
                deployment: "audit log".into(),
                expected: entry.seq,
                actual: next,
            });
        }
        inner.audit.push(entry.clone());
        Ok(())
    }

    async fn last_audit(&self) -> Result<Option<AuditEntry>> {
        Ok(self.lock().audit.last().cloned())
    }

    async fn audit_log(&self) -> Result<Vec<AuditEntry>> {
        Ok(self.lock().audit.clone())
    }

    async fn append_record(&self, log: &str, seq: u64, record: &serde_json::Value) -> Result<()> {
        check_log_name(log)?;
        let mut inner = self.lock();
        match (seq, inner.records.get_mut(log)) {
            (0, Some(_)) => Err(Error::AlreadyExists {
                what: format!("record log {log}"),
            }),
            (0, None) => {
                inner.records.insert(log.to_string(), vec![record.clone()]);
                Ok(())
            }
            (_, None) => Err(Error::not_found(format!("record log {log}"))),
            (seq, Some(records)) if seq != records.len() as u64 => Err(Error::Conflict {
                deployment: format!("record log {log}"),
                expected: seq,
                actual: records.len() as u64,
            }),
            (_, Some(records)) => {
                records.push(record.clone());
                Ok(())
            }
        }
    }

    async fn records(&self, log: &str) -> Result<Option<Vec<serde_json::Value>>> {
        check_log_name(log)?;
        Ok(self.lock().records.get(log).cloned())
    }

    async fn record_logs(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .lock()
            .records
            .keys()
            .filter(|name| name.starts_with(prefix))
            .cloned()
            .collect())
    }
}
