//! What the local environment remembers across restarts, in a SQLite file: each service's last
//! applied desired state and which process runs which instance, so a restarted controller
//! adopts running instances instead of starting them again.

use std::path::Path;
use std::sync::Mutex;

use deploykit_core::{DesiredState, Error, Result, RevisionId, ServiceId};
use rusqlite::{Connection, params};

/// One instance row: which revision of which service it runs, on which port, as which process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InstanceRow {
    pub(crate) name: String,
    pub(crate) service: ServiceId,
    pub(crate) revision: RevisionId,
    pub(crate) port: u16,
    pub(crate) pid: Option<u32>,
}

/// The local environment's SQLite file.
#[derive(Debug)]
pub(crate) struct LocalState {
    db: Mutex<Connection>,
}

fn db_error(op: &str, e: impl std::fmt::Display) -> Error {
    Error::backend(format!("local state: {op}"), e.to_string())
}

impl LocalState {
    /// Open (creating if needed) the state file.
    pub(crate) fn open(path: &Path) -> Result<LocalState> {
        let db =
            Connection::open(path).map_err(|e| db_error(&format!("open {}", path.display()), e))?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS services (
                 name TEXT PRIMARY KEY,
                 desired TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS instances (
                 name TEXT PRIMARY KEY,
                 service TEXT NOT NULL,
                 revision TEXT NOT NULL,
                 port INTEGER NOT NULL,
                 pid INTEGER
             );",
        )
        .map_err(|e| db_error("create tables", e))?;
        Ok(LocalState { db: Mutex::new(db) })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every service with its last applied desired state.
    pub(crate) fn services(&self) -> Result<Vec<(ServiceId, DesiredState)>> {
        let db = self.db();
        let mut stmt = db
            .prepare("SELECT name, desired FROM services ORDER BY name")
            .map_err(|e| db_error("read services", e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| db_error("read services", e))?;
        let mut out = Vec::new();
        for row in rows {
            let (name, json) = row.map_err(|e| db_error("read services", e))?;
            let service = ServiceId::new(&name)?;
            let desired: DesiredState = serde_json::from_str(&json)
                .map_err(|e| db_error(&format!("decode the desired state of {name}"), e))?;
            out.push((service, desired));
        }
        Ok(out)
    }

    /// Remember `desired` for `service` (`None`: forget the service).
    pub(crate) fn set_desired(
        &self,
        service: &ServiceId,
        desired: Option<&DesiredState>,
    ) -> Result<()> {
        let db = self.db();
        match desired {
            Some(d) => {
                let json =
                    serde_json::to_string(d).map_err(|e| db_error("encode desired state", e))?;
                db.execute(
                    "INSERT INTO services (name, desired) VALUES (?1, ?2)
                     ON CONFLICT(name) DO UPDATE SET desired = excluded.desired",
                    params![service.as_str(), json],
                )
            }
            None => db.execute(
                "DELETE FROM services WHERE name = ?1",
                params![service.as_str()],
            ),
        }
        .map_err(|e| db_error(&format!("save the desired state of {service}"), e))?;
        Ok(())
    }

    /// Every instance row.
    pub(crate) fn instances(&self) -> Result<Vec<InstanceRow>> {
        let db = self.db();
        let mut stmt = db
            .prepare("SELECT name, service, revision, port, pid FROM instances ORDER BY rowid")
            .map_err(|e| db_error("read instances", e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, u16>(3)?,
                    r.get::<_, Option<u32>>(4)?,
                ))
            })
            .map_err(|e| db_error("read instances", e))?;
        let mut out = Vec::new();
        for row in rows {
            let (name, service, revision, port, pid) =
                row.map_err(|e| db_error("read instances", e))?;
            out.push(InstanceRow {
                name,
                service: ServiceId::new(&service)?,
                revision: RevisionId::parse(&revision)?,
                port,
                pid,
            });
        }
        Ok(out)
    }

    /// Record an instance (or its new pid).
    pub(crate) fn put_instance(&self, row: &InstanceRow) -> Result<()> {
        self.db()
            .execute(
                "INSERT INTO instances (name, service, revision, port, pid) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(name) DO UPDATE SET pid = excluded.pid, port = excluded.port",
                params![
                    row.name,
                    row.service.as_str(),
                    row.revision.as_str(),
                    row.port,
                    row.pid
                ],
            )
            .map_err(|e| db_error(&format!("save instance {}", row.name), e))?;
        Ok(())
    }

    /// Forget an instance that has stopped.
    pub(crate) fn remove_instance(&self, name: &str) -> Result<()> {
        self.db()
            .execute("DELETE FROM instances WHERE name = ?1", params![name])
            .map_err(|e| db_error(&format!("remove instance {name}"), e))?;
        Ok(())
    }
}
