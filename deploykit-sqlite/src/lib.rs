//! # deploykit-sqlite
//!
//! The embedded default [`StateStore`] of deploykit: one SQLite file in WAL mode, a sibling of the
//! S3 (`deploykit-aws`) and Kubernetes (`deploykit-k8s`) stores.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};

use deploykit_core::audit::AuditEntry;
use deploykit_core::journal::{JournalEntry, JournalEvent};
use deploykit_core::model::{DeploymentId, EnvironmentName, ServiceId};
use deploykit_core::store::{Lease, StateStore, check_log_name};
use deploykit_core::time::Timestamp;
use deploykit_core::{Error, Result};

/// Version of the on-disk schema, kept in the `meta` table.
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deployments (
    id          TEXT PRIMARY KEY,
    service     TEXT NOT NULL,
    environment TEXT NOT NULL,
    active      INTEGER NOT NULL,
    next_seq    INTEGER NOT NULL,
    created_ms  INTEGER NOT NULL,
    ordinal     INTEGER NOT NULL UNIQUE
);
CREATE INDEX IF NOT EXISTS deployments_by_service ON deployments (service, environment, ordinal);
CREATE INDEX IF NOT EXISTS deployments_active ON deployments (active, ordinal);
CREATE TABLE IF NOT EXISTS journal (
    deployment TEXT NOT NULL REFERENCES deployments (id),
    seq        INTEGER NOT NULL,
    at_ms      INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    body       TEXT NOT NULL,
    PRIMARY KEY (deployment, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    key        TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq   INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    hash  TEXT NOT NULL,
    body  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    log  TEXT NOT NULL,
    seq  INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (log, seq)
) WITHOUT ROWID;
";

/// A [`StateStore`] in one SQLite file (WAL mode, `synchronous=FULL`): the journal is on disk
/// before `append` returns. Several processes may open the same file; SQLite's locking and the
/// journal's sequence check keep them consistent.
///
/// ```no_run
/// # async fn demo() -> deploykit_core::Result<()> {
/// let store = deploykit_sqlite::SqliteStore::open("deploykit.db").await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

fn store_err(operation: &str, e: rusqlite::Error) -> Error {
    let busy = matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    );
    if busy {
        Error::Transient {
            operation: format!("state store: {operation}"),
            source: Box::new(e),
        }
    } else {
        Error::Store {
            operation: operation.to_string(),
            source: Box::new(e),
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(what: impl FnOnce() -> String, body: &str) -> Result<T> {
    serde_json::from_str(body).map_err(|e| Error::Corrupt {
        what: what(),
        source: Box::new(e),
    })
}

fn encode<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Store {
        operation: "encode record".into(),
        source: Box::new(e),
    })
}

impl SqliteStore {
    /// Open (creating if needed) the store at `path`.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let p = path.clone();
        let conn = tokio::task::spawn_blocking(move || Self::open_blocking(&p))
            .await
            .map_err(|e| Error::Store {
                operation: "open".into(),
                source: Box::new(e),
            })??;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            path,
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open_blocking(path: &Path) -> Result<Connection> {
        let open = |e| store_err(&format!("open {}", path.display()), e);
        let conn = Connection::open(path).map_err(open)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(open)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open)?;
        conn.execute_batch(SCHEMA).map_err(open)?;
        let version: Option<String> = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(open)?;
        match version {
            None => {
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
                    params![SCHEMA_VERSION.to_string()],
                )
                .map_err(open)?;
            }
            Some(v) if v == SCHEMA_VERSION.to_string() => {}
            Some(v) => {
                return Err(Error::Store {
                    operation: format!("open {}", path.display()),
                    source: format!(
                        "schema version {v} is not supported (this build reads version {SCHEMA_VERSION})"
                    )
                    .into(),
                });
            }
        }
        Ok(conn)
    }

    /// Run `f` on the connection on the blocking pool.
    async fn with<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| Error::Store {
            operation: "run query".into(),
            source: Box::new(e),
        })?
    }
}

fn append_blocking(
    conn: &mut Connection,
    id: &str,
    entry: &JournalEntry,
    body: &str,
) -> Result<()> {
    let err = |e| store_err(&format!("append to journal of {id}"), e);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err)?;
    let next: Option<i64> = tx
        .query_row(
            "SELECT next_seq FROM deployments WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .optional()
        .map_err(err)?;
    match (&entry.event, next) {
        (JournalEvent::Created { spec }, None) => {
            if entry.seq != 0 {
                return Err(Error::invalid("journal entry", "`created` must be entry 0"));
            }
            tx.execute(
                "INSERT INTO deployments (id, service, environment, active, next_seq, created_ms, ordinal)
                 VALUES (?1, ?2, ?3, 1, 0, ?4, (SELECT COALESCE(MAX(ordinal), 0) + 1 FROM deployments))",
                params![id, spec.service.as_str(), spec.environment.as_str(), entry.at.as_millis() as i64],
            )
            .map_err(err)?;
        }
        (JournalEvent::Created { .. }, Some(_)) => {
            return Err(Error::AlreadyExists {
                what: format!("deployment {id}"),
            });
        }
        (_, None) => return Err(Error::not_found(format!("deployment {id}"))),
        (_, Some(next)) if next as u64 != entry.seq => {
            return Err(Error::Conflict {
                deployment: id.to_string(),
                expected: entry.seq,
                actual: next as u64,
            });
        }
        _ => {}
    }
    tx.execute(
        "INSERT INTO journal (deployment, seq, at_ms, kind, body) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            id,
            entry.seq as i64,
            entry.at.as_millis() as i64,
            entry.event.kind(),
            body
        ],
    )
    .map_err(err)?;
    tx.execute(
        "UPDATE deployments SET next_seq = ?2, active = ?3 WHERE id = ?1",
        params![id, (entry.seq + 1) as i64, !entry.event.is_terminal()],
    )
    .map_err(err)?;
    tx.commit().map_err(err)
}

#[async_trait]
impl StateStore for SqliteStore {
    async fn append(&self, deployment: &DeploymentId, entry: &JournalEntry) -> Result<()> {
        let body = encode(&entry.event)?;
        let id = deployment.to_string();
        let entry = entry.clone();
        self.with(move |conn| append_blocking(conn, &id, &entry, &body))
            .await
    }

    async fn load(&self, deployment: &DeploymentId) -> Result<Option<Vec<JournalEntry>>> {
        self.load_from(deployment, 0).await
    }

    async fn load_from(
        &self,
        deployment: &DeploymentId,
        from: u64,
    ) -> Result<Option<Vec<JournalEntry>>> {
        let id = deployment.to_string();
        self.with(move |conn| {
            let err = |e| store_err(&format!("load journal of {id}"), e);
            let exists: Option<i64> = conn
                .query_row("SELECT 1 FROM deployments WHERE id = ?1", [&id], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(err)?;
            if exists.is_none() {
                return Ok(None);
            }
            let mut stmt = conn
                .prepare(
                    "SELECT seq, at_ms, body FROM journal WHERE deployment = ?1 AND seq >= ?2
                     ORDER BY seq",
                )
                .map_err(err)?;
            let rows = stmt
                .query_map(params![&id, from as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })
                .map_err(err)?;
            let mut entries = Vec::new();
            for row in rows {
                let (seq, at, body) = row.map_err(err)?;
                let event = decode(|| format!("journal entry {seq} of deployment {id}"), &body)?;
                entries.push(JournalEntry::new(
                    seq as u64,
                    Timestamp::from_millis(at as u64),
                    event,
                ));
            }
            Ok(Some(entries))
        })
        .await
    }

    async fn list_active(&self) -> Result<Vec<DeploymentId>> {
        self.with(|conn| {
            let err = |e| store_err("list active deployments", e);
            let mut stmt = conn
                .prepare("SELECT id FROM deployments WHERE active = 1 ORDER BY ordinal")
                .map_err(err)?;
            let ids = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(err)?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(err)?;
            Ok(ids.into_iter().map(DeploymentId::new).collect())
        })
        .await
    }

    async fn list_deployments(
        &self,
        service: &ServiceId,
        environment: &EnvironmentName,
    ) -> Result<Vec<DeploymentId>> {
        let (service, environment) = (service.to_string(), environment.to_string());
        self.with(move |conn| {
            let err = |e| store_err(&format!("list deployments of {service}/{environment}"), e);
            let mut stmt = conn
                .prepare(
                    "SELECT id FROM deployments WHERE service = ?1 AND environment = ?2
                     ORDER BY ordinal DESC",
                )
                .map_err(err)?;
            let ids = stmt
                .query_map(params![service, environment], |r| r.get::<_, String>(0))
                .map_err(err)?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(err)?;
            Ok(ids.into_iter().map(DeploymentId::new).collect())
        })
        .await
    }

    async fn list_environments(&self) -> Result<Vec<(ServiceId, EnvironmentName)>> {
        self.with(|conn| {
            let err = |e| store_err("list environments", e);
            let mut stmt = conn
                .prepare("SELECT DISTINCT service, environment FROM deployments")
                .map_err(err)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(err)?;
            let mut out = Vec::new();
            for row in rows {
                let (service, environment) = row.map_err(err)?;
                let bad = |e: Error| Error::Corrupt {
                    what: "deployments table".into(),
                    source: Box::new(e),
                };
                out.push((
                    ServiceId::new(service).map_err(bad)?,
                    EnvironmentName::new(environment).map_err(bad)?,
                ));
            }
            Ok(out)
        })
        .await
    }

    async fn lease(&self, key: &str) -> Result<Option<Lease>> {
        let key = key.to_string();
        self.with(move |conn| {
            conn.query_row(
                "SELECT owner, expires_ms FROM leases WHERE key = ?1",
                [&key],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
            )
            .optional()
            .map_err(|e| store_err(&format!("read lease {key}"), e))
            .map(|held| {
                held.map(|(owner, expires)| {
                    Lease::new(key.clone(), owner, Timestamp::from_millis(expires as u64))
                })
            })
        })
        .await
    }

    async fn acquire_lease(
        &self,
        key: &str,
        owner: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Lease> {
        let (key, owner) = (key.to_string(), owner.to_string());
        self.with(move |conn| {
            let err = |e| store_err(&format!("acquire lease {key}"), e);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err)?;
            let current: Option<(String, i64)> = tx
                .query_row(
                    "SELECT owner, expires_ms FROM leases WHERE key = ?1",
                    [&key],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(err)?;
            if let Some((holder, expires)) = current {
                let expires = Timestamp::from_millis(expires as u64);
                if holder != owner && expires > now {
                    return Err(Error::LeaseHeld {
                        key,
                        owner: holder,
                        expires_at: expires,
                    });
                }
            }
            let expires_at = now.plus(ttl);
            tx.execute(
                "INSERT INTO leases (key, owner, expires_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, expires_ms = excluded.expires_ms",
                params![key, owner, expires_at.as_millis() as i64],
            )
            .map_err(err)?;
            tx.commit().map_err(err)?;
            Ok(Lease::new(key, owner, expires_at))
        })
        .await
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let lease = lease.clone();
        self.with(move |conn| {
            conn.execute(
                "DELETE FROM leases WHERE key = ?1 AND owner = ?2",
                params![lease.key, lease.owner],
            )
            .map_err(|e| store_err(&format!("release lease {}", lease.key), e))?;
            Ok(())
        })
        .await
    }

    async fn record_audit(&self, entry: &AuditEntry) -> Result<()> {
        let body = encode(entry)?;
        let (seq, at, hash) = (
            entry.seq,
            entry.record.at.as_millis() as i64,
            entry.hash.clone(),
        );
        self.with(move |conn| {
            let err = |e| store_err("record audit", e);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err)?;
            let next: i64 = tx
                .query_row("SELECT COALESCE(MAX(seq) + 1, 0) FROM audit", [], |r| {
                    r.get(0)
                })
                .map_err(err)?;
            if next as u64 != seq {
                return Err(Error::Conflict {
                    deployment: "audit log".into(),
                    expected: seq,
                    actual: next as u64,
                });
            }
            tx.execute(
                "INSERT INTO audit (seq, at_ms, hash, body) VALUES (?1, ?2, ?3, ?4)",
                params![seq as i64, at, hash, body],
            )
            .map_err(err)?;
            tx.commit().map_err(err)
        })
        .await
    }

    async fn last_audit(&self) -> Result<Option<AuditEntry>> {
        self.with(|conn| {
            let row: Option<(i64, String)> = conn
                .query_row(
                    "SELECT seq, body FROM audit ORDER BY seq DESC LIMIT 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(|e| store_err("read audit log", e))?;
            row.map(|(seq, body)| decode(|| format!("audit record {seq}"), &body))
                .transpose()
        })
        .await
    }

    async fn audit_log(&self) -> Result<Vec<AuditEntry>> {
        self.with(|conn| {
            let err = |e| store_err("read audit log", e);
            let mut stmt = conn
                .prepare("SELECT seq, body FROM audit ORDER BY seq")
                .map_err(err)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
                .map_err(err)?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, body) = row.map_err(err)?;
                out.push(decode(|| format!("audit record {seq}"), &body)?);
            }
            Ok(out)
        })
        .await
    }

    async fn append_record(&self, log: &str, seq: u64, record: &serde_json::Value) -> Result<()> {
        check_log_name(log)?;
        let body = encode(record)?;
        let log = log.to_string();
        self.with(move |conn| {
            let err = |e| store_err(&format!("append to record log {log}"), e);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err)?;
            let next: Option<i64> = tx
                .query_row(
                    "SELECT MAX(seq) + 1 FROM records WHERE log = ?1",
                    [&log],
                    |r| r.get(0),
                )
                .map_err(err)?;
            match (seq, next) {
                (0, Some(_)) => {
                    return Err(Error::AlreadyExists {
                        what: format!("record log {log}"),
                    });
                }
                (0, None) => {}
                (_, None) => return Err(Error::not_found(format!("record log {log}"))),
                (seq, Some(next)) if next as u64 != seq => {
                    return Err(Error::Conflict {
                        deployment: format!("record log {log}"),
                        expected: seq,
                        actual: next as u64,
                    });
                }
                _ => {}
            }
            tx.execute(
                "INSERT INTO records (log, seq, body) VALUES (?1, ?2, ?3)",
                params![log, seq as i64, body],
            )
            .map_err(err)?;
            tx.commit().map_err(err)
        })
        .await
    }

    async fn records(&self, log: &str) -> Result<Option<Vec<serde_json::Value>>> {
        check_log_name(log)?;
        let log = log.to_string();
        let bodies = self
            .with(move |conn| {
                let err = |e| store_err(&format!("read record log {log}"), e);
                let mut stmt = conn
                    .prepare("SELECT body FROM records WHERE log = ?1 ORDER BY seq")
                    .map_err(err)?;
                let rows = stmt
                    .query_map([&log], |r| r.get::<_, String>(0))
                    .map_err(err)?;
                rows.collect::<std::result::Result<Vec<String>, _>>()
                    .map(|b| (log.clone(), b))
                    .map_err(err)
            })
            .await?;
        let (log, bodies) = bodies;
        if bodies.is_empty() {
            return Ok(None);
        }
        bodies
            .iter()
            .enumerate()
            .map(|(i, body)| decode(|| format!("record {i} of log {log}"), body))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    async fn record_logs(&self, prefix: &str) -> Result<Vec<String>> {
        let prefix = prefix.to_string();
        self.with(move |conn| {
            let err = |e| store_err("list record logs", e);
            let mut stmt = conn
                .prepare("SELECT DISTINCT log FROM records ORDER BY log")
                .map_err(err)?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(err)?;
            let mut logs = Vec::new();
            for log in rows {
                let log = log.map_err(err)?;
                if log.starts_with(&prefix) {
                    logs.push(log);
                }
            }
            Ok(logs)
        })
        .await
    }
}
