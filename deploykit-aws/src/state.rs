//! [`S3StateStore`]: deployments, leases and the audit log in an S3 bucket, with conditional
//! writes instead of a database — Terraform's S3 backend with native locking is the model.

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use deploykit_core::audit::AuditEntry;
use deploykit_core::journal::{JournalEntry, JournalEvent};
use deploykit_core::retry::on_conflict;
use deploykit_core::store::{Lease, StateStore, check_log_name};
use deploykit_core::{DeploymentId, EnvironmentName, Error, Result, ServiceId, Timestamp};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::client::{Condition, S3};
use crate::target::S3Builder;

/// A [`StateStore`] on S3, so orchestrators on several machines share deployments with no
/// database and no Kubernetes.
///
/// Layout under the prefix:
/// - `deployments/<id>/<seq>`: one journal entry per object, created with `If-None-Match: *`
///   after checking that entry `seq − 1` exists, so of two writers racing for a position
///   exactly one wins and a journal never has a gap;
/// - `active/<created ms>-<id>` and `by-service/<service>/<environment>/<created ms>-<id>`:
///   listing markers (written after entry 0, the active one removed after a terminal entry);
/// - `leases/<key>`: `{owner, expires_at}`, taken with `If-None-Match: *` when absent and
///   renewed or taken over with `If-Match: <etag>`, so a lease changes hands only through a
///   compare-and-swap; release writes an expired record the same way;
/// - `audit/<seq>`: the hash-chained audit log, appended like journal entries;
/// - `probe/…`: a short-lived object with which [`S3StateStoreBuilder::build`] checks that the
///   bucket honours `If-None-Match` and `If-Match` (a store that ignores them is refused: it
///   would let two orchestrators overwrite each other).
///
/// `409 ConditionalRequestConflict` (another conditional operation on the key in flight) wrote
/// nothing and is retried, as AWS documents; `412 PreconditionFailed` is a lost race.
///
/// A write whose response is lost and that is retried sees its own object and counts as done.
///
/// ```no_run
/// # async fn f() -> deploykit_core::Result<()> {
/// use deploykit_aws::S3StateStore;
/// let store = S3StateStore::builder("my-deploykit-state").prefix("shop/").build().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct S3StateStore {
    s3: S3,
}

fn seq_key(seq: u64) -> String {
    format!("{seq:012}")
}

fn corrupt(what: String, e: impl std::fmt::Display) -> Error {
    Error::Corrupt {
        what,
        source: e.to_string().into(),
    }
}

impl S3StateStore {
    /// Start building a store in `bucket`.
    pub fn builder(bucket: impl Into<String>) -> S3StateStoreBuilder {
        S3StateStoreBuilder(crate::S3Target::builder(bucket))
    }

    /// Check that the bucket honours conditional writes, on an object of its own under
    /// `probe/` (removed afterwards): a second `If-None-Match: *` write of it and an `If-Match`
    /// write with a wrong ETag must both be refused. Some S3-compatible stores ignore these
    /// headers and accept every write; on such a store two orchestrators would overwrite each
    /// other's journal entries and both hold a lease (split brain), so it is refused, naming the
    /// header it ignored. [`S3StateStoreBuilder::build`] runs this.
    pub async fn check_conditional_writes(&self) -> Result<()> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let key = format!("probe/conditional-writes-{}-{nanos}", std::process::id());
        self.s3
            .put(&key, Bytes::from_static(b"first"), Condition::Absent)
            .await?;
        let absent = self
            .s3
            .put(&key, Bytes::from_static(b"second"), Condition::Absent)
            .await;
        let matches = self
            .s3
            .put(
                &key,
                Bytes::from_static(b"third"),
                Condition::Matches("\"deploykit-no-such-etag\"".into()),
            )
            .await;
        if let Err(e) = self.s3.delete(&key).await {
            tracing::warn!(key = %self.s3.describe(&key), error = %e.chain(), "could not remove the conditional-write probe");
        }
        for (header, result) in [("If-None-Match: *", absent), ("If-Match", matches)] {
            match result {
                Err(Error::AlreadyExists { .. }) => {}
                Ok(()) => {
                    return Err(Error::backend(
                        format!("check {} for conditional writes", self.s3.describe("")),
                        format!(
                            "the store accepted a write that {header} forbids: it ignores \
                             conditional writes, so orchestrators sharing it would overwrite \
                             each other's journal and leases; use a store that honours them \
                             (AWS S3, MinIO, Cloudflare R2) or another state store"
                        ),
                    ));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<(T, Option<String>)>> {
        match self.s3.get(key, None).await {
            Ok((bytes, etag)) => {
                let value = serde_json::from_slice(&bytes)
                    .map_err(|e| corrupt(self.s3.describe(key), e))?;
                Ok(Some((value, etag)))
            }
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        match self.s3.get(key, Some((0, 1))).await {
            Ok(_) => Ok(true),
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn put_json<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        condition: Condition,
    ) -> Result<()> {
        let bytes = serde_json::to_vec(value).expect("state serialises");
        self.s3.put(key, Bytes::from(bytes), condition).await
    }

    /// Append `value` at `dir/<seq>`: only if `dir/<seq − 1>` exists and `dir/<seq>` does not.
    async fn append_at<T: Serialize>(
        &self,
        dir: &str,
        seq: u64,
        value: &T,
        what: &str,
    ) -> Result<()> {
        let conflict = |actual: u64| Error::Conflict {
            deployment: what.to_string(),
            expected: seq,
            actual,
        };
        if seq > 0 && !self.exists(&format!("{dir}/{}", seq_key(seq - 1))).await? {
            return Err(conflict(self.count(dir).await?));
        }
        match self
            .put_json(&format!("{dir}/{}", seq_key(seq)), value, Condition::Absent)
            .await
        {
            Ok(()) => Ok(()),
            Err(Error::AlreadyExists { .. }) => Err(conflict(self.count(dir).await?)),
            Err(e) => Err(e),
        }
    }

    async fn count(&self, dir: &str) -> Result<u64> {
        Ok(self.s3.list(&format!("{dir}/")).await?.len() as u64)
    }

    async fn entries<T: DeserializeOwned>(&self, dir: &str, from: u64) -> Result<Vec<T>> {
        let mut out = Vec::new();
        for (key, _) in self.s3.list(&format!("{dir}/")).await? {
            let seq: u64 = key
                .rsplit('/')
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| corrupt(self.s3.describe(&key), "not a sequence number"))?;
            if seq < from {
                continue;
            }
            if seq != from + out.len() as u64 {
                return Err(corrupt(
                    self.s3.describe(dir),
                    format!("entry {} is missing", from + out.len() as u64),
                ));
            }
            let (value, _) = self
                .get_json(&key)
                .await?
                .ok_or_else(|| corrupt(self.s3.describe(&key), "listed but missing"))?;
            out.push(value);
        }
        Ok(out)
    }

    fn marker_name(created: Timestamp, id: &DeploymentId) -> String {
        format!("{:015}-{id}", created.as_millis())
    }
}

/// Builds an [`S3StateStore`]; the settings are those of [`S3Builder`].
#[derive(Clone, Debug)]
#[must_use]
pub struct S3StateStoreBuilder(S3Builder);

impl S3StateStoreBuilder {
    /// Keep every object under this key prefix.
    pub fn prefix(self, prefix: impl Into<String>) -> Self {
        S3StateStoreBuilder(self.0.prefix(prefix))
    }

    /// Change any other setting of the underlying S3 connection.
    pub fn configure(self, f: impl FnOnce(S3Builder) -> S3Builder) -> Self {
        S3StateStoreBuilder(f(self.0))
    }

    /// The store, once the bucket has shown that it honours conditional writes (see
    /// [`S3StateStore::check_conditional_writes`]): a store that ignores them is refused.
    pub async fn build(self) -> Result<S3StateStore> {
        let store = S3StateStore {
            s3: self.0.connect().await?,
        };
        store.check_conditional_writes().await?;
        Ok(store)
    }
}

#[async_trait]
impl StateStore for S3StateStore {
    async fn append(&self, deployment: &DeploymentId, entry: &JournalEntry) -> Result<()> {
        let dir = format!("deployments/{deployment}");
        if let JournalEvent::Created { spec } = &entry.event {
            if entry.seq != 0 {
                return Err(Error::invalid("journal entry", "`created` must be entry 0"));
            }
            match self
                .put_json(&format!("{dir}/{}", seq_key(0)), entry, Condition::Absent)
                .await
            {
                Ok(()) => {}
                Err(Error::AlreadyExists { .. }) => {
                    return Err(Error::AlreadyExists {
                        what: format!("deployment {deployment}"),
                    });
                }
                Err(e) => return Err(e),
            }
            let marker = Self::marker_name(entry.at, deployment);
            self.put_json(&format!("active/{marker}"), &(), Condition::None)
                .await?;
            self.put_json(
                &format!("by-service/{}/{}/{marker}", spec.service, spec.environment),
                &(),
                Condition::None,
            )
            .await?;
            return Ok(());
        }
        if !self.exists(&format!("{dir}/{}", seq_key(0))).await? {
            return Err(Error::not_found(format!("deployment {deployment}")));
        }
        self.append_at(&dir, entry.seq, entry, deployment.as_str())
            .await?;
        if entry.event.is_terminal() {
            let first: JournalEntry = self
                .get_json(&format!("{dir}/{}", seq_key(0)))
                .await?
                .map(|(e, _)| e)
                .ok_or_else(|| Error::not_found(format!("deployment {deployment}")))?;
            self.s3
                .delete(&format!(
                    "active/{}",
                    Self::marker_name(first.at, deployment)
                ))
                .await?;
        }
        Ok(())
    }

    async fn load(&self, deployment: &DeploymentId) -> Result<Option<Vec<JournalEntry>>> {
        self.load_from(deployment, 0).await
    }

    async fn load_from(
        &self,
        deployment: &DeploymentId,
        from: u64,
    ) -> Result<Option<Vec<JournalEntry>>> {
        let dir = format!("deployments/{deployment}");
        let entries: Vec<JournalEntry> = self.entries(&dir, from).await?;
        if entries.is_empty() && !self.exists(&format!("{dir}/{}", seq_key(0))).await? {
            return Ok(None);
        }
        Ok(Some(entries))
    }

    async fn list_active(&self) -> Result<Vec<DeploymentId>> {
        Ok(self
            .s3
            .list("active/")
            .await?
            .into_iter()
            .filter_map(|(key, _)| {
                let name = key.strip_prefix("active/")?;
                let (_, id) = name.split_once('-')?;
                Some(DeploymentId::new(id))
            })
            .collect())
    }

    async fn list_deployments(
        &self,
        service: &ServiceId,
        environment: &EnvironmentName,
    ) -> Result<Vec<DeploymentId>> {
        let prefix = format!("by-service/{service}/{environment}/");
        let mut ids: Vec<DeploymentId> = self
            .s3
            .list(&prefix)
            .await?
            .into_iter()
            .filter_map(|(key, _)| {
                let (_, id) = key.strip_prefix(&prefix)?.split_once('-')?;
                Some(DeploymentId::new(id))
            })
            .collect();
        ids.reverse();
        Ok(ids)
    }

    async fn list_environments(&self) -> Result<Vec<(ServiceId, EnvironmentName)>> {
        let mut pairs = BTreeSet::new();
        for (key, _) in self.s3.list("by-service/").await? {
            let mut parts = key.split('/').skip(1);
            if let (Some(s), Some(e)) = (parts.next(), parts.next()) {
                pairs.insert((s.to_string(), e.to_string()));
            }
        }
        pairs
            .into_iter()
            .map(|(s, e)| Ok((ServiceId::new(s)?, EnvironmentName::new(e)?)))
            .collect()
    }

    async fn lease(&self, key: &str) -> Result<Option<Lease>> {
        Ok(self
            .get_json::<Lease>(&format!("leases/{key}"))
            .await?
            .map(|(lease, _)| lease))
    }

    async fn acquire_lease(
        &self,
        key: &str,
        owner: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Lease> {
        let object = format!("leases/{key}");
        let lease = Lease::new(key, owner, now.plus(ttl));
        // A lost compare-and-swap means someone else wrote in between: look again.
        let lost = |e: &Error| matches!(e, Error::AlreadyExists { .. });
        let acquired = on_conflict(&format!("acquire lease {key}"), lost, || async {
            let condition = match self.get_json::<Lease>(&object).await? {
                Some((held, _)) if held.owner != owner && held.expires_at > now => {
                    return Err(Error::LeaseHeld {
                        key: key.to_string(),
                        owner: held.owner,
                        expires_at: held.expires_at,
                    });
                }
                Some((_, Some(etag))) => Condition::Matches(etag),
                Some((_, None)) => {
                    return Err(corrupt(
                        self.s3.describe(&object),
                        "the store returned no ETag",
                    ));
                }
                None => Condition::Absent,
            };
            self.put_json(&object, &lease, condition)
                .await
                .map(|()| lease.clone())
        })
        .await;
        if !matches!(&acquired, Err(e) if lost(e)) {
            return acquired;
        }
        // Lost every time: say who holds it now.
        match self.get_json::<Lease>(&object).await? {
            Some((held, _)) => Err(Error::LeaseHeld {
                key: key.to_string(),
                owner: held.owner,
                expires_at: held.expires_at,
            }),
            None => Err(Error::transient(
                format!("acquire lease {key}"),
                "the lease keeps changing hands",
            )),
        }
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let object = format!("leases/{}", lease.key);
        if let Some((held, Some(etag))) = self.get_json::<Lease>(&object).await?
            && held.owner == lease.owner
        {
            let expired = Lease::new(
                lease.key.clone(),
                lease.owner.clone(),
                Timestamp::from_millis(0),
            );
            match self
                .put_json(&object, &expired, Condition::Matches(etag))
                .await
            {
                Ok(()) | Err(Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn record_audit(&self, entry: &AuditEntry) -> Result<()> {
        self.append_at("audit", entry.seq, entry, "audit log").await
    }

    async fn last_audit(&self) -> Result<Option<AuditEntry>> {
        match self.s3.list("audit/").await?.pop() {
            Some((key, _)) => Ok(self.get_json(&key).await?.map(|(e, _)| e)),
            None => Ok(None),
        }
    }

    async fn audit_log(&self) -> Result<Vec<AuditEntry>> {
        self.entries("audit", 0).await
    }

    async fn append_record(&self, log: &str, seq: u64, record: &serde_json::Value) -> Result<()> {
        check_log_name(log)?;
        let what = format!("record log {log}");
        if seq == 0 {
            return match self
                .put_json(&record_key(log, 0), record, Condition::Absent)
                .await
            {
                Err(Error::AlreadyExists { .. }) => Err(Error::AlreadyExists { what }),
                other => other,
            };
        }
        if !self.exists(&record_key(log, 0)).await? {
            return Err(Error::not_found(what));
        }
        let conflict = |actual: u64| Error::Conflict {
            deployment: what.clone(),
            expected: seq,
            actual,
        };
        let count =
            || async { Ok::<_, Error>(self.s3.list(&record_prefix(log)).await?.len() as u64) };
        if !self.exists(&record_key(log, seq - 1)).await? {
            return Err(conflict(count().await?));
        }
        match self
            .put_json(&record_key(log, seq), record, Condition::Absent)
            .await
        {
            Err(Error::AlreadyExists { .. }) => Err(conflict(count().await?)),
            other => other,
        }
    }

    async fn records(&self, log: &str) -> Result<Option<Vec<serde_json::Value>>> {
        check_log_name(log)?;
        let mut out = Vec::new();
        for (key, _) in self.s3.list(&record_prefix(log)).await? {
            let expected = record_key(log, out.len() as u64);
            if key != expected {
                return Err(corrupt(
                    self.s3.describe(&key),
                    format!("record {} of log {log} is missing", out.len()),
                ));
            }
            let (value, _) = self
                .get_json(&key)
                .await?
                .ok_or_else(|| corrupt(self.s3.describe(&key), "listed but missing"))?;
            out.push(value);
        }
        Ok((!out.is_empty()).then_some(out))
    }

    async fn record_logs(&self, prefix: &str) -> Result<Vec<String>> {
        let mut logs: Vec<String> = self
            .s3
            .list(&format!("records/{prefix}"))
            .await?
            .into_iter()
            .filter_map(|(key, _)| {
                let (log, _) = key.strip_prefix("records/")?.rsplit_once("/_")?;
                Some(log.to_string())
            })
            .collect();
        logs.dedup();
        logs.sort();
        logs.dedup();
        Ok(logs)
    }
}

/// Where record `seq` of `log` is: `records/<log>/_<seq>`. `_` never occurs in a log name,
/// so one log's records never list under another's.
fn record_key(log: &str, seq: u64) -> String {
    format!("{}{}", record_prefix(log), seq_key(seq))
}

fn record_prefix(log: &str) -> String {
    format!("records/{log}/_")
}
