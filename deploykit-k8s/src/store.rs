//! [`KubeStateStore`]: deploykit's [`StateStore`] on ConfigMaps and `coordination.k8s.io`
//! Leases, so orchestrators running in a cluster share deployments with no database.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deploykit_core::audit::AuditEntry;
use deploykit_core::journal::{JournalEntry, JournalEvent};
use deploykit_core::retry::{Retry, RetryError, RetryPolicy, on_conflict};
use deploykit_core::store::{Lease, StateStore, check_log_name};
use deploykit_core::{DeploymentId, EnvironmentName, Error, Result, ServiceId, Timestamp};
use k8s_openapi::api::coordination::v1::{Lease as KubeLease, LeaseSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, ListParams, PostParams};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::retry::{api_policy, classify, status_code};

/// The most a ConfigMap's `data` may hold: Kubernetes refuses a ConfigMap whose keys and
/// values add up to more than 1 MiB (etcd's object size limit is close above it).
pub const CONFIGMAP_DATA_LIMIT: usize = 1024 * 1024;

/// Audit entries per audit ConfigMap.
const AUDIT_CHUNK: u64 = 512;

const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
const STORE_LABEL: &str = "deploykit.dev/store";
const COMPONENT: &str = "deploykit.dev/component";
const SERVICE: &str = "deploykit.dev/service";
const ENVIRONMENT: &str = "deploykit.dev/environment";
const ACTIVE: &str = "deploykit.dev/active";
const DEPLOYMENT: &str = "deploykit.dev/deployment";
const CREATED_AT: &str = "deploykit.dev/created-at";
const FIRST_SEQ: &str = "deploykit.dev/first-seq";
const LEASE_KEY: &str = "deploykit.dev/lease-key";
const EXPIRES_AT: &str = "deploykit.dev/expires-at";
const LOG_NAME: &str = "deploykit.dev/log";

/// A [`StateStore`] in one Kubernetes namespace: deployment journals in ConfigMaps, leases in
/// `coordination.k8s.io/v1` Leases, the audit log in ConfigMaps — every write an optimistic
/// compare-and-swap on `metadata.resourceVersion`, so orchestrators in several pods share
/// state safely.
///
/// Layout (names start with the prefix, `deploykit` unless changed with
/// [`KubeStateStore::with_prefix`]; a name part that is not already a valid object name is
/// lower-cased, stripped of other characters and suffixed with a hash of the original):
/// - `deploykit-journal-<deployment id>`: one ConfigMap per deployment, one `data` key per
///   journal entry (the zero-padded sequence number, `000000000001`, → the entry as JSON).
///   Entry 0 creates it; later entries replace it with the `resourceVersion` it was read at,
///   so of two writers racing for a position exactly one wins and the other gets
///   [`Error::Conflict`]. Labels `app.kubernetes.io/managed-by: deploykit`,
///   `deploykit.dev/service`, `deploykit.dev/environment` and `deploykit.dev/active`
///   (`"true"` until a terminal entry) make the listings label-selector lists.
/// - `deploykit-<lease key>`: a Lease (`holderIdentity`, `leaseDurationSeconds`,
///   `acquireTime`, `renewTime`, plus the exact expiry in milliseconds in the annotation
///   `deploykit.dev/expires-at`), created when free and otherwise replaced with the
///   `resourceVersion` it was read at, so it changes hands only through a compare-and-swap.
///   Releasing clears the holder the same way, and only if the releaser still holds it.
/// - `deploykit-audit`, `deploykit-audit-1`, …: the hash-chained audit log, 512 entries per
///   ConfigMap, appended like journal entries.
///
/// **Size limit:** a ConfigMap holds at most 1 MiB ([`CONFIGMAP_DATA_LIMIT`]), so one
/// deployment's journal is limited to about that much JSON (thousands of entries in
/// practice). An append that would pass it fails with [`Error::Store`] naming the ConfigMap,
/// before anything is written.
///
/// Every API call is retried with exponential backoff on `429` and `5xx` (and connection
/// failures), at most 5 attempts by default ([`KubeStateStore::with_retry`]); a `409` is never
/// retried blindly but re-read and judged. A write whose response was lost and that is
/// retried finds its own entry and counts as done.
///
/// The service account needs `get`, `list`, `create` and `update` on `configmaps` and
/// `coordination.k8s.io` `leases` in the namespace.
///
/// ```no_run
/// # async fn f() -> deploykit_core::Result<()> {
/// use deploykit_k8s::store::KubeStateStore;
/// let client = kube::Client::try_default().await.map_err(|e| {
///     deploykit_core::Error::backend("connect to Kubernetes", e.to_string())
/// })?;
/// let store = KubeStateStore::new(client, "deploykit-system").with_prefix("shop")?;
/// # let _ = store;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct KubeStateStore {
    client: kube::Client,
    namespace: String,
    prefix: String,
    retry: RetryPolicy,
}

impl std::fmt::Debug for KubeStateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStateStore")
            .field("namespace", &self.namespace)
            .field("prefix", &self.prefix)
            .field("retry", &self.retry)
            .finish()
    }
}

fn seq_key(seq: u64) -> String {
    format!("{seq:012}")
}

/// FNV-1a: a hash that never changes between builds, for object names.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `raw` as part of an object name: itself if it is already a valid DNS subdomain part,
/// otherwise cleaned up and suffixed with a hash of the original (so two raw values never
/// share a name).
fn name_part(raw: &str) -> String {
    let valid = !raw.is_empty()
        && raw.len() <= 200
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && raw.starts_with(|c: char| c.is_ascii_alphanumeric())
        && raw.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        return raw.to_string();
    }
    let cleaned: String = raw
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '.') => c,
            _ => '-',
        })
        .take(180)
        .collect();
    let cleaned = cleaned.trim_matches(|c| c == '-' || c == '.');
    let hash = fnv1a(raw) as u32;
    if cleaned.is_empty() {
        format!("{hash:08x}")
    } else {
        format!("{cleaned}-{hash:08x}")
    }
}

fn corrupt(what: impl Into<String>, e: impl std::fmt::Display) -> Error {
    Error::Corrupt {
        what: what.into(),
        source: e.to_string().into(),
    }
}

/// The HTTP status of a failed call's last error.
fn code(e: &RetryError<kube::Error>) -> Option<u16> {
    status_code(e.error())
}

/// A failed, retried call as a deploykit error: [`Error::Persistent`] if its retries were
/// used up, anything else as [`Error::Store`].
fn store_error(operation: impl Into<String>, e: RetryError<kube::Error>) -> Error {
    let operation = operation.into();
    e.into_error(operation.clone(), |e| Error::Store {
        operation,
        source: Box::new(e),
    })
}

/// The result of a retried call, and whether an earlier attempt may have taken effect
/// although it failed (a 5xx or a lost connection, not a 429).
struct Attempted<T> {
    result: std::result::Result<T, RetryError<kube::Error>>,
    ambiguous: bool,
}

/// Runs `op` under `policy` (retrying what [`classify`] calls transient, never a 409), and
/// notes whether a failed attempt may have taken effect.
async fn attempted<T, F, Fut>(policy: &RetryPolicy, what: &str, op: F) -> Attempted<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, kube::Error>>,
{
    let ambiguous = AtomicBool::new(false);
    let result = policy
        .run(
            what,
            |e| {
                let verdict = classify(e);
                if verdict != Retry::No && status_code(e) != Some(429) {
                    ambiguous.store(true, Ordering::Relaxed);
                }
                verdict
            },
            op,
        )
        .await;
    Attempted {
        result,
        ambiguous: ambiguous.into_inner(),
    }
}

/// Total size of a ConfigMap's data as Kubernetes counts it.
fn data_size(data: &BTreeMap<String, String>) -> usize {
    data.iter().map(|(k, v)| k.len() + v.len()).sum()
}

impl KubeStateStore {
    /// A store in `namespace`, with object names starting `deploykit-`.
    pub fn new(client: kube::Client, namespace: impl Into<String>) -> Self {
        KubeStateStore {
            client,
            namespace: namespace.into(),
            prefix: "deploykit".to_string(),
            retry: api_policy(),
        }
    }

    /// Start every object name with `<prefix>-` instead of `deploykit-`, so several stores
    /// share a namespace without seeing each other's state. The prefix must be 1–30
    /// lowercase letters, digits and `-`, starting with a letter (it is also a label value).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Result<Self> {
        let prefix = prefix.into();
        let ok = !prefix.is_empty()
            && prefix.len() <= 30
            && prefix.starts_with(|c: char| c.is_ascii_lowercase())
            && !prefix.ends_with('-')
            && prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !ok {
            return Err(Error::invalid(
                "state store prefix",
                format!(
                    "{prefix:?} is not a valid prefix: use 1-30 lowercase letters, digits and \
                     '-', starting with a letter and not ending with '-'"
                ),
            ));
        }
        self.prefix = prefix;
        Ok(self)
    }

    /// Retry failed API calls under `policy` instead of the default (5 attempts, 100 ms
    /// doubling up to 2 s).
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The namespace holding the state.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The name of the ConfigMap holding `deployment`'s journal.
    pub fn journal_name(&self, deployment: &DeploymentId) -> String {
        format!("{}-journal-{}", self.prefix, name_part(deployment.as_str()))
    }

    /// The name of the Lease object for lease `key`.
    pub fn lease_name(&self, key: &str) -> String {
        format!("{}-{}", self.prefix, name_part(key))
    }

    /// The name of the ConfigMap holding record log `log`.
    pub fn record_log_name(&self, log: &str) -> String {
        format!("{}-log-{}", self.prefix, name_part(log))
    }

    fn audit_name(&self, chunk: u64) -> String {
        if chunk == 0 {
            format!("{}-audit", self.prefix)
        } else {
            format!("{}-audit-{chunk}", self.prefix)
        }
    }

    fn configmaps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn leases(&self) -> Api<KubeLease> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn describe(&self, name: &str) -> String {
        format!("ConfigMap {}/{name}", self.namespace)
    }

    fn labels(&self, component: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (MANAGED_BY.to_string(), "deploykit".to_string()),
            (STORE_LABEL.to_string(), self.prefix.clone()),
            (COMPONENT.to_string(), component.to_string()),
        ])
    }

    fn selector(&self, component: &str, extra: &[(&str, &str)]) -> String {
        let mut parts: Vec<String> = self
            .labels(component)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        parts.extend(extra.iter().map(|(k, v)| format!("{k}={v}")));
        parts.join(",")
    }

    async fn get_configmap(&self, name: &str, op: &str) -> Result<Option<ConfigMap>> {
        let api = self.configmaps();
        self.retry
            .run(op, classify, || api.get_opt(name))
            .await
            .map_err(|e| store_error(op, e))
    }

    async fn list_configmaps(&self, selector: &str, op: &str) -> Result<Vec<ConfigMap>> {
        let api = self.configmaps();
        let lp = ListParams::default().labels(selector);
        self.retry
            .run(op, classify, || api.list(&lp))
            .await
            .map(|l| l.items)
            .map_err(|e| store_error(op, e))
    }

    fn check_size(&self, name: &str, data: &BTreeMap<String, String>, op: &str) -> Result<()> {
        let size = data_size(data);
        if size > CONFIGMAP_DATA_LIMIT {
            return Err(Error::Store {
                operation: op.to_string(),
                source: format!(
                    "{} would hold {size} bytes of data, over the {CONFIGMAP_DATA_LIMIT} bytes \
                     (1 MiB) Kubernetes allows in a ConfigMap; nothing was written",
                    self.describe(name)
                )
                .into(),
            });
        }
        Ok(())
    }

    /// The entries in a ConfigMap's data from `from` on, checked to be contiguous from
    /// `first`.
    fn entries<T: DeserializeOwned>(
        &self,
        cm: &ConfigMap,
        first: u64,
        from: u64,
    ) -> Result<Vec<(u64, T)>> {
        let name = cm.metadata.name.clone().unwrap_or_default();
        let mut out = Vec::new();
        let data = cm.data.clone().unwrap_or_default();
        for (i, (key, value)) in data.iter().enumerate() {
            let seq: u64 = key.parse().map_err(|_| {
                corrupt(
                    self.describe(&name),
                    format!("key {key:?} is not a sequence number"),
                )
            })?;
            if seq != first + i as u64 {
                return Err(corrupt(
                    self.describe(&name),
                    format!("entry {} is missing", first + i as u64),
                ));
            }
            if seq < from {
                continue;
            }
            let entry = serde_json::from_str(value)
                .map_err(|e| corrupt(format!("entry {seq} in {}", self.describe(&name)), e))?;
            out.push((seq, entry));
        }
        Ok(out)
    }

    async fn create_configmap(&self, cm: &ConfigMap, op: &str) -> Attempted<ConfigMap> {
        let api = self.configmaps();
        let pp = PostParams::default();
        attempted(&self.retry, op, || api.create(&pp, cm)).await
    }

    async fn replace_configmap(&self, cm: &ConfigMap, op: &str) -> Attempted<ConfigMap> {
        let api = self.configmaps();
        let pp = PostParams::default();
        let name = cm.metadata.name.clone().unwrap_or_default();
        attempted(&self.retry, op, || api.replace(&name, &pp, cm)).await
    }

    async fn create_journal(
        &self,
        deployment: &DeploymentId,
        entry: &JournalEntry,
        json: String,
        op: &str,
    ) -> Result<()> {
        let JournalEvent::Created { spec } = &entry.event else {
            unreachable!("only `created` entries create journals")
        };
        if entry.seq != 0 {
            return Err(Error::invalid("journal entry", "`created` must be entry 0"));
        }
        let name = self.journal_name(deployment);
        let mut labels = self.labels("journal");
        labels.insert(SERVICE.into(), spec.service.to_string());
        labels.insert(ENVIRONMENT.into(), spec.environment.to_string());
        labels.insert(ACTIVE.into(), "true".into());
        let annotations = BTreeMap::from([
            (DEPLOYMENT.to_string(), deployment.to_string()),
            (CREATED_AT.to_string(), entry.at.as_millis().to_string()),
            (SERVICE.to_string(), spec.service.to_string()),
            (ENVIRONMENT.to_string(), spec.environment.to_string()),
        ]);
        if self
            .create_with_entry(&name, labels, annotations, 0, &json, op)
            .await?
        {
            Ok(())
        } else {
            Err(Error::AlreadyExists {
                what: format!("deployment {deployment}"),
            })
        }
    }

    /// Create the ConfigMap `name` (with `labels` and `annotations`) holding `json` as entry
    /// `seq`: `Ok(true)` when created (also when it is our own create whose response was
    /// lost), `Ok(false)` when another writer's ConfigMap of that name exists.
    async fn create_with_entry(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        annotations: BTreeMap<String, String>,
        seq: u64,
        json: &str,
        op: &str,
    ) -> Result<bool> {
        let data = BTreeMap::from([(seq_key(seq), json.to_string())]);
        self.check_size(name, &data, op)?;
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels),
                annotations: Some(annotations),
                ..ObjectMeta::default()
            },
            data: Some(data),
            ..ConfigMap::default()
        };
        let attempted = self.create_configmap(&cm, op).await;
        match attempted.result {
            Ok(_) => Ok(true),
            Err(e) if code(&e) == Some(409) => Ok(attempted.ambiguous
                && self
                    .get_configmap(name, op)
                    .await?
                    .and_then(|existing| existing.data)
                    .and_then(|mut d| d.remove(&seq_key(seq)))
                    .is_some_and(|stored| stored == json)),
            Err(e) => Err(store_error(op, e)),
        }
    }

    /// Appends `json` at `seq` to the ConfigMap `name`, whose entries start at `first`: only if
    /// it holds exactly the entries before `seq`. `touch` adjusts the object (labels) before it
    /// is written.
    async fn append_to(
        &self,
        name: &str,
        first: u64,
        seq: u64,
        json: &str,
        op: &str,
        touch: impl Fn(&mut ConfigMap),
    ) -> Result<Appended> {
        let key = seq_key(seq);
        let ambiguous = AtomicBool::new(false);
        let appended = on_conflict(op, Cas::lost, || async {
            let Some(mut cm) = self.get_configmap(name, op).await? else {
                return Ok(Appended::Missing);
            };
            let mut data = cm.data.take().unwrap_or_default();
            if ambiguous.load(Ordering::Relaxed) && data.get(&key).map(String::as_str) == Some(json)
            {
                // Our own write, whose response was lost.
                return Ok(Appended::Done);
            }
            let next = first + data.len() as u64;
            if seq != next {
                return Ok(Appended::Behind(next));
            }
            data.insert(key.clone(), json.to_string());
            self.check_size(name, &data, op)?;
            cm.data = Some(data);
            cm.metadata.managed_fields = None;
            touch(&mut cm);
            let attempted = self.replace_configmap(&cm, op).await;
            if attempted.ambiguous {
                ambiguous.store(true, Ordering::Relaxed);
            }
            match attempted.result {
                Ok(_) => Ok(Appended::Done),
                // Someone wrote in between: read again and judge.
                Err(e) if code(&e) == Some(409) => Err(Cas::Lost),
                Err(e) => Err(store_error(op, e).into()),
            }
        })
        .await;
        match appended {
            Ok(appended) => Ok(appended),
            Err(Cas::Failed(e)) => Err(e),
            Err(Cas::Lost) => Err(Error::transient(
                op,
                format!("{} keeps changing under us; try again", self.describe(name)),
            )),
        }
    }

    async fn audit_chunks(&self, op: &str) -> Result<Vec<(u64, ConfigMap)>> {
        let mut chunks = Vec::new();
        for cm in self
            .list_configmaps(&self.selector("audit", &[]), op)
            .await?
        {
            let name = cm.metadata.name.clone().unwrap_or_default();
            let first = cm
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(FIRST_SEQ))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| {
                    corrupt(self.describe(&name), format!("no {FIRST_SEQ} annotation"))
                })?;
            chunks.push((first, cm));
        }
        chunks.sort_by_key(|(first, _)| *first);
        Ok(chunks)
    }

    async fn audit_len(&self, op: &str) -> Result<u64> {
        Ok(self
            .audit_chunks(op)
            .await?
            .iter()
            .map(|(first, cm)| first + cm.data.as_ref().map_or(0, |d| d.len() as u64))
            .max()
            .unwrap_or(0))
    }

    async fn journals(&self, extra: &[(&str, &str)], op: &str) -> Result<Vec<Journal>> {
        self.list_configmaps(&self.selector("journal", extra), op)
            .await?
            .into_iter()
            .map(|cm| {
                let name = cm.metadata.name.clone().unwrap_or_default();
                let annotations = cm.metadata.annotations.unwrap_or_default();
                let get = |k: &str| {
                    annotations
                        .get(k)
                        .cloned()
                        .ok_or_else(|| corrupt(self.describe(&name), format!("no {k} annotation")))
                };
                Ok(Journal {
                    id: get(DEPLOYMENT)?,
                    created: get(CREATED_AT)?
                        .parse()
                        .map_err(|e| corrupt(self.describe(&name), e))?,
                    service: get(SERVICE)?,
                    environment: get(ENVIRONMENT)?,
                })
            })
            .collect()
    }

    async fn read_lease(&self, name: &str, op: &str) -> Result<Option<KubeLease>> {
        let api = self.leases();
        self.retry
            .run(op, classify, || api.get_opt(name))
            .await
            .map_err(|e| store_error(op, e))
    }
}

/// Why a read-judge-write attempt failed: it lost the compare-and-swap to another writer (read
/// again and judge: [`on_conflict`]), or something else went wrong.
#[derive(Debug)]
enum Cas {
    Lost,
    Failed(Error),
}

impl Cas {
    fn lost(&self) -> bool {
        matches!(self, Cas::Lost)
    }
}

impl From<Error> for Cas {
    fn from(e: Error) -> Self {
        Cas::Failed(e)
    }
}

impl std::fmt::Display for Cas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cas::Lost => f.write_str("lost a compare-and-swap to another writer"),
            Cas::Failed(e) => e.fmt(f),
        }
    }
}

/// What became of an append.
enum Appended {
    Done,
    /// The ConfigMap does not exist.
    Missing,
    /// The ConfigMap holds entries up to this sequence number (exclusive), not `seq`.
    Behind(u64),
}

struct Journal {
    id: String,
    created: u64,
    service: String,
    environment: String,
}

fn micro_time(t: Timestamp) -> Option<MicroTime> {
    k8s_openapi::jiff::Timestamp::from_millisecond(i64::try_from(t.as_millis()).ok()?)
        .ok()
        .map(MicroTime)
}

/// Who holds a Lease object and until when (the exact annotation, else `renewTime` plus
/// `leaseDurationSeconds`).
fn holder(lease: &KubeLease) -> (Option<String>, Timestamp) {
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.filter(|h| !h.is_empty());
    let annotated = lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(EXPIRES_AT))
        .and_then(|s| s.parse::<u64>().ok());
    let expires = annotated.unwrap_or_else(|| {
        let renewed = spec
            .renew_time
            .or(spec.acquire_time)
            .map(|t| t.0.as_millisecond().max(0) as u64)
            .unwrap_or(0);
        let duration = u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0);
        renewed + duration * 1000
    });
    (holder, Timestamp::from_millis(expires))
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("state serialises")
}

#[async_trait]
impl StateStore for KubeStateStore {
    async fn append(&self, deployment: &DeploymentId, entry: &JournalEntry) -> Result<()> {
        let op = format!(
            "append entry {} to the journal of deployment {deployment}",
            entry.seq
        );
        let json = to_json(entry);
        if matches!(entry.event, JournalEvent::Created { .. }) {
            return self.create_journal(deployment, entry, json, &op).await;
        }
        let name = self.journal_name(deployment);
        let terminal = entry.event.is_terminal();
        let touch = |cm: &mut ConfigMap| {
            if terminal {
                cm.metadata
                    .labels
                    .get_or_insert_with(BTreeMap::new)
                    .insert(ACTIVE.into(), "false".into());
            }
        };
        match self
            .append_to(&name, 0, entry.seq, &json, &op, touch)
            .await?
        {
            Appended::Done => Ok(()),
            Appended::Missing => Err(Error::not_found(format!("deployment {deployment}"))),
            Appended::Behind(actual) => Err(Error::Conflict {
                deployment: deployment.to_string(),
                expected: entry.seq,
                actual,
            }),
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
        let op = format!("load the journal of deployment {deployment}");
        let Some(cm) = self
            .get_configmap(&self.journal_name(deployment), &op)
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(
            self.entries(&cm, 0, from)?
                .into_iter()
                .map(|(_, e)| e)
                .collect(),
        ))
    }

    async fn list_active(&self) -> Result<Vec<DeploymentId>> {
        let mut journals = self
            .journals(&[(ACTIVE, "true")], "list active deployments")
            .await?;
        journals.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok(journals
            .into_iter()
            .map(|j| DeploymentId::new(j.id))
            .collect())
    }

    async fn list_deployments(
        &self,
        service: &ServiceId,
        environment: &EnvironmentName,
    ) -> Result<Vec<DeploymentId>> {
        let mut journals = self
            .journals(
                &[
                    (SERVICE, service.as_str()),
                    (ENVIRONMENT, environment.as_str()),
                ],
                &format!("list the deployments of {service} in {environment}"),
            )
            .await?;
        journals.retain(|j| j.service == service.as_str() && j.environment == environment.as_str());
        journals.sort_by(|a, b| (b.created, &b.id).cmp(&(a.created, &a.id)));
        Ok(journals
            .into_iter()
            .map(|j| DeploymentId::new(j.id))
            .collect())
    }

    async fn list_environments(&self) -> Result<Vec<(ServiceId, EnvironmentName)>> {
        let pairs: BTreeSet<(String, String)> = self
            .journals(&[], "list environments")
            .await?
            .into_iter()
            .map(|j| (j.service, j.environment))
            .collect();
        pairs
            .into_iter()
            .map(|(s, e)| Ok((ServiceId::new(s)?, EnvironmentName::new(e)?)))
            .collect()
    }

    async fn lease(&self, key: &str) -> Result<Option<Lease>> {
        let op = format!("read lease {key}");
        Ok(self
            .read_lease(&self.lease_name(key), &op)
            .await?
            .and_then(|object| match holder(&object) {
                (Some(owner), expires_at) => Some(Lease::new(key, owner, expires_at)),
                (None, _) => None,
            }))
    }

    async fn acquire_lease(
        &self,
        key: &str,
        owner: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Lease> {
        let op = format!("acquire lease {key}");
        let name = self.lease_name(key);
        let lease = Lease::new(key, owner, now.plus(ttl));
        let duration = i32::try_from(ttl.as_millis().div_ceil(1000)).unwrap_or(i32::MAX);
        let api = self.leases();
        let annotations = BTreeMap::from([
            (LEASE_KEY.to_string(), key.to_string()),
            (
                EXPIRES_AT.to_string(),
                lease.expires_at.as_millis().to_string(),
            ),
        ]);
        // A lost compare-and-swap means someone else wrote in between: look again.
        let acquired = on_conflict(&op, Cas::lost, || async {
            match self.read_lease(&name, &op).await? {
                None => {
                    let object = KubeLease {
                        metadata: ObjectMeta {
                            name: Some(name.clone()),
                            namespace: Some(self.namespace.clone()),
                            labels: Some(self.labels("lease")),
                            annotations: Some(annotations.clone()),
                            ..ObjectMeta::default()
                        },
                        spec: Some(LeaseSpec {
                            holder_identity: Some(owner.to_string()),
                            lease_duration_seconds: Some(duration),
                            acquire_time: micro_time(now),
                            renew_time: micro_time(now),
                            lease_transitions: Some(0),
                            ..LeaseSpec::default()
                        }),
                    };
                    let pp = PostParams::default();
                    match self
                        .retry
                        .run(&op, classify, || api.create(&pp, &object))
                        .await
                    {
                        Ok(_) => Ok(lease.clone()),
                        Err(e) if code(&e) == Some(409) => Err(Cas::Lost),
                        Err(e) => Err(store_error(&op, e).into()),
                    }
                }
                Some(mut object) => {
                    let (held_by, expires_at) = holder(&object);
                    if let Some(held_by) = &held_by
                        && held_by != owner
                        && expires_at > now
                    {
                        return Err(Cas::Failed(Error::LeaseHeld {
                            key: key.to_string(),
                            owner: held_by.clone(),
                            expires_at,
                        }));
                    }
                    let mut spec = object.spec.take().unwrap_or_default();
                    if held_by.as_deref() != Some(owner) {
                        spec.acquire_time = micro_time(now);
                        spec.lease_transitions = Some(
                            spec.lease_transitions.unwrap_or(0) + i32::from(held_by.is_some()),
                        );
                    }
                    spec.holder_identity = Some(owner.to_string());
                    spec.lease_duration_seconds = Some(duration);
                    spec.renew_time = micro_time(now);
                    object.spec = Some(spec);
                    object.metadata.managed_fields = None;
                    let mut annotations = annotations.clone();
                    annotations.extend(object.metadata.annotations.take().unwrap_or_default());
                    annotations.insert(
                        EXPIRES_AT.to_string(),
                        lease.expires_at.as_millis().to_string(),
                    );
                    object.metadata.annotations = Some(annotations);
                    let pp = PostParams::default();
                    match self
                        .retry
                        .run(&op, classify, || api.replace(&name, &pp, &object))
                        .await
                    {
                        Ok(_) => Ok(lease.clone()),
                        Err(e) if code(&e) == Some(409) => Err(Cas::Lost),
                        Err(e) => Err(store_error(&op, e).into()),
                    }
                }
            }
        })
        .await;
        match acquired {
            Ok(lease) => return Ok(lease),
            Err(Cas::Failed(e)) => return Err(e),
            // Lost every time: say who holds it now.
            Err(Cas::Lost) => {}
        }
        match self.read_lease(&name, &op).await?.map(|l| holder(&l)) {
            Some((Some(held_by), expires_at)) if held_by != owner => Err(Error::LeaseHeld {
                key: key.to_string(),
                owner: held_by,
                expires_at,
            }),
            _ => Err(Error::transient(op, "the lease keeps changing hands")),
        }
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let op = format!("release lease {}", lease.key);
        let name = self.lease_name(&lease.key);
        let Some(mut object) = self.read_lease(&name, &op).await? else {
            return Ok(());
        };
        if holder(&object).0.as_deref() != Some(lease.owner.as_str()) {
            return Ok(());
        }
        // Clear the holder only if nobody wrote since we read it.
        if let Some(spec) = object.spec.as_mut() {
            spec.holder_identity = None;
        }
        object
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(EXPIRES_AT.to_string(), "0".to_string());
        object.metadata.managed_fields = None;
        let api = self.leases();
        let pp = PostParams::default();
        match self
            .retry
            .run(&op, classify, || api.replace(&name, &pp, &object))
            .await
        {
            Ok(_) => Ok(()),
            // Renewed or taken over in between, or gone: it is not ours to release any more.
            Err(e) if matches!(code(&e), Some(409 | 404)) => Ok(()),
            Err(e) => Err(store_error(&op, e)),
        }
    }

    async fn record_audit(&self, entry: &AuditEntry) -> Result<()> {
        let op = format!("record audit entry {}", entry.seq);
        let json = to_json(entry);
        let chunk = entry.seq / AUDIT_CHUNK;
        let first = chunk * AUDIT_CHUNK;
        let name = self.audit_name(chunk);
        let conflict = |actual: u64| Error::Conflict {
            deployment: "audit log".to_string(),
            expected: entry.seq,
            actual,
        };
        if entry.seq == first {
            // The first entry of a chunk creates it, once the chunk before is full.
            if chunk > 0 {
                let before = self.audit_name(chunk - 1);
                let full = self
                    .get_configmap(&before, &op)
                    .await?
                    .and_then(|cm| cm.data)
                    .is_some_and(|d| d.contains_key(&seq_key(entry.seq - 1)));
                if !full {
                    return Err(conflict(self.audit_len(&op).await?));
                }
            }
            let annotations = BTreeMap::from([(FIRST_SEQ.to_string(), first.to_string())]);
            let labels = self.labels("audit");
            return if self
                .create_with_entry(&name, labels, annotations, entry.seq, &json, &op)
                .await?
            {
                Ok(())
            } else {
                Err(conflict(self.audit_len(&op).await?))
            };
        }
        match self
            .append_to(&name, first, entry.seq, &json, &op, |_| {})
            .await?
        {
            Appended::Done => Ok(()),
            Appended::Missing | Appended::Behind(_) => Err(conflict(self.audit_len(&op).await?)),
        }
    }

    async fn last_audit(&self) -> Result<Option<AuditEntry>> {
        let op = "read the last audit entry";
        let Some((first, cm)) = self.audit_chunks(op).await?.pop() else {
            return Ok(None);
        };
        Ok(self
            .entries::<AuditEntry>(&cm, first, first)?
            .pop()
            .map(|(_, e)| e))
    }

    async fn audit_log(&self) -> Result<Vec<AuditEntry>> {
        let op = "read the audit log";
        let mut out = Vec::new();
        for (first, cm) in self.audit_chunks(op).await? {
            if first != out.len() as u64 {
                return Err(corrupt(
                    "the audit log",
                    format!("entries {}..{first} are missing", out.len()),
                ));
            }
            out.extend(
                self.entries::<AuditEntry>(&cm, first, first)?
                    .into_iter()
                    .map(|(_, e)| e),
            );
        }
        Ok(out)
    }
    async fn append_record(&self, log: &str, seq: u64, record: &serde_json::Value) -> Result<()> {
        check_log_name(log)?;
        let op = format!("append record {seq} to log {log}");
        let name = self.record_log_name(log);
        let json = to_json(record);
        if seq == 0 {
            let annotations = BTreeMap::from([(LOG_NAME.to_string(), log.to_string())]);
            let labels = self.labels("record-log");
            return if self
                .create_with_entry(&name, labels, annotations, 0, &json, &op)
                .await?
            {
                Ok(())
            } else {
                Err(Error::AlreadyExists {
                    what: format!("record log {log}"),
                })
            };
        }
        match self.append_to(&name, 0, seq, &json, &op, |_| {}).await? {
            Appended::Done => Ok(()),
            Appended::Missing => Err(Error::not_found(format!("record log {log}"))),
            Appended::Behind(actual) => Err(Error::Conflict {
                deployment: format!("record log {log}"),
                expected: seq,
                actual,
            }),
        }
    }

    async fn records(&self, log: &str) -> Result<Option<Vec<serde_json::Value>>> {
        check_log_name(log)?;
        let op = format!("read record log {log}");
        let Some(cm) = self.get_configmap(&self.record_log_name(log), &op).await? else {
            return Ok(None);
        };
        Ok(Some(
            self.entries::<serde_json::Value>(&cm, 0, 0)?
                .into_iter()
                .map(|(_, record)| record)
                .collect(),
        ))
    }

    async fn record_logs(&self, prefix: &str) -> Result<Vec<String>> {
        let mut logs: Vec<String> = self
            .list_configmaps(&self.selector("record-log", &[]), "list record logs")
            .await?
            .into_iter()
            .filter_map(|cm| cm.metadata.annotations?.remove(LOG_NAME))
            .filter(|log| log.starts_with(prefix))
            .collect();
        logs.sort();
        Ok(logs)
    }
}
