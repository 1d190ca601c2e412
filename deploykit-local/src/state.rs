//! What the local environment remembers across restarts, in a SQLite file: each service's last
//! applied desired state and which process runs which instance (and whether it was ready for
//! routing), so a restarted controller adopts running instances instead of starting them again,
//! and keeps routing to those that were ready.

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
    /// Whether the instance was ready for routing when last recorded (its process running and
    /// its readiness checks passing).
    pub(crate) ready: bool,
}

/// The local environment's SQLite file.
#[derive(Debug)]
pub(crate) struct LocalState {
    db: Mutex<Connection>,
}

fn db_error(op: &str, e: impl std::fmt::Display) -> Error {
    Error::backend(format!("local state: {op}"), e.to_string())
}

/// Add the `ready` column to an `instances` table made before readiness was recorded (its rows
/// then count as not ready, as before).
fn add_ready_column(db: &Connection) -> Result<()> {
    let has_ready: bool = db
        .query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info('instances') WHERE name = 'ready'",
            [],
            |r| r.get(0),
        )
        .map_err(|e| db_error("inspect the instances table", e))?;
    if !has_ready {
        db.execute_batch("ALTER TABLE instances ADD COLUMN ready INTEGER NOT NULL DEFAULT 0")
            .map_err(|e| db_error("add the ready column to the instances table", e))?;
    }
    Ok(())
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
                 pid INTEGER,
                 ready INTEGER NOT NULL DEFAULT 0
             );
             CREATE TABLE IF NOT EXISTS settings (
                 key TEXT PRIMARY KEY,
                 value TEXT NOT NULL
             );",
        )
        .map_err(|e| db_error("create tables", e))?;
        add_ready_column(&db)?;
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
            .prepare(
                "SELECT name, service, revision, port, pid, ready FROM instances ORDER BY rowid",
            )
            .map_err(|e| db_error("read instances", e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, u16>(3)?,
                    r.get::<_, Option<u32>>(4)?,
                    r.get::<_, bool>(5)?,
                ))
            })
            .map_err(|e| db_error("read instances", e))?;
        let mut out = Vec::new();
        for row in rows {
            let (name, service, revision, port, pid, ready) =
                row.map_err(|e| db_error("read instances", e))?;
            out.push(InstanceRow {
                name,
                service: ServiceId::new(&service)?,
                revision: RevisionId::parse(&revision)?,
                port,
                pid,
                ready,
            });
        }
        Ok(out)
    }

    /// Record an instance (or its new pid and readiness).
    pub(crate) fn put_instance(&self, row: &InstanceRow) -> Result<()> {
        self.db()
            .execute(
                "INSERT INTO instances (name, service, revision, port, pid, ready)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(name) DO UPDATE
                 SET pid = excluded.pid, port = excluded.port, ready = excluded.ready",
                params![
                    row.name,
                    row.service.as_str(),
                    row.revision.as_str(),
                    row.port,
                    row.pid,
                    row.ready
                ],
            )
            .map_err(|e| db_error(&format!("save instance {}", row.name), e))?;
        Ok(())
    }

    /// Record whether the instance `name` is ready for routing (nothing if it is not recorded:
    /// an instance being removed is not written back).
    pub(crate) fn set_ready(&self, name: &str, ready: bool) -> Result<()> {
        self.db()
            .execute(
                "UPDATE instances SET ready = ?2 WHERE name = ?1",
                params![name, ready],
            )
            .map_err(|e| db_error(&format!("save the readiness of instance {name}"), e))?;
        Ok(())
    }

    /// A setting of the environment (`None`: not set).
    pub(crate) fn setting(&self, key: &str) -> Result<Option<String>> {
        use rusqlite::OptionalExtension;
        self.db()
            .query_row(
                "SELECT value FROM settings WHERE key = ?1",
                params![key],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| db_error(&format!("read setting {key}"), e))
    }

    /// Set (`Some`) or clear (`None`) a setting of the environment.
    pub(crate) fn set_setting(&self, key: &str, value: Option<&str>) -> Result<()> {
        let db = self.db();
        match value {
            Some(v) => db.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, v],
            ),
            None => db.execute("DELETE FROM settings WHERE key = ?1", params![key]),
        }
        .map_err(|e| db_error(&format!("save setting {key}"), e))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_file_from_before_readiness_was_recorded_opens_with_nothing_ready() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("local.db");
        let revision = "a".repeat(16);
        {
            let db = Connection::open(&path).unwrap();
            db.execute_batch(
                "CREATE TABLE instances (
                     name TEXT PRIMARY KEY, service TEXT NOT NULL, revision TEXT NOT NULL,
                     port INTEGER NOT NULL, pid INTEGER
                 );",
            )
            .unwrap();
            db.execute(
                "INSERT INTO instances VALUES ('web-aaaaaaaa-0', 'web', ?1, 20000, 42)",
                params![revision],
            )
            .unwrap();
        }
        let state = LocalState::open(&path).unwrap();
        let rows = state.instances().unwrap();
        assert_eq!(rows.len(), 1);
        assert!(!rows[0].ready, "rows of an older file are not ready");

        state.set_ready("web-aaaaaaaa-0", true).unwrap();
        assert!(state.instances().unwrap()[0].ready);
        let mut row = rows[0].clone();
        row.pid = Some(43);
        row.ready = false;
        state.put_instance(&row).unwrap();
        assert_eq!(state.instances().unwrap(), vec![row]);
        // Opening it again (the column is there now) changes nothing.
        drop(state);
        assert_eq!(
            LocalState::open(&path).unwrap().instances().unwrap().len(),
            1
        );
        // An instance no longer recorded is not written back.
        let state = LocalState::open(&path).unwrap();
        state.remove_instance("web-aaaaaaaa-0").unwrap();
        state.set_ready("web-aaaaaaaa-0", true).unwrap();
        assert!(state.instances().unwrap().is_empty());
    }
}
