//! The tamper-evident audit log: a real SQLite file, edited behind deploykit's back.

mod common;

use std::sync::Arc;

use deploykit_core::audit::{AuditEntry, SignedCheckpoint, verify};
use deploykit_core::{Actor, Error, SqliteStore, StateStore};
use deploykit_testing::SimCluster;
use ed25519_dalek::SigningKey;
use rusqlite::{Connection, params};

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn tampered_at(r: deploykit_core::Result<deploykit_core::audit::Verified>) -> (u64, String) {
    match r {
        Err(Error::AuditTampered { seq, reason }) => (seq, reason),
        other => panic!("expected tampering to be found, got {other:?}"),
    }
}

/// Rows of the audit table, oldest first.
fn rows(conn: &Connection) -> Vec<(i64, String)> {
    let mut stmt = conn
        .prepare("SELECT seq, body FROM audit ORDER BY seq")
        .expect("prepare");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

#[tokio::test(start_paused = true)]
async fn edits_truncation_and_rewrites_are_caught() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    let store: Arc<dyn StateStore> = Arc::new(SqliteStore::open(&path).await.expect("open"));
    let sim = SimCluster::new();
    let orch = common::open(store.clone(), &sim, common::production(), "o1").await;
    for v in ["v1", "v2", "v3"] {
        common::deploy_and_wait(&orch, v).await;
    }
    let svc = common::service().name;
    let env = common::production().name;
    let id = orch
        .rollback(&svc, &env, None, Actor::new("bob"))
        .await
        .expect("rollback");
    orch.wait(&id).await.expect("wait");
    let verified = orch.verify_audit(None).await.expect("intact log verifies");
    assert_eq!(verified.records, 4);
    let signer = key(7);
    let checkpoint = orch.audit_checkpoint(&signer).await.expect("checkpoint");
    let trusted = signer.verifying_key();
    orch.verify_audit(Some((&checkpoint, &trusted)))
        .await
        .expect("log matches its checkpoint");

    let conn = Connection::open(&path).expect("sqlite");
    let original = rows(&conn);

    // 1. Edit one record.
    conn.execute(
        "UPDATE audit SET body = replace(body, '\"alice\"', '\"mallory\"') WHERE seq = 1",
        [],
    )
    .expect("edit");
    let (seq, reason) = tampered_at(orch.verify_audit(None).await);
    assert_eq!(seq, 1, "{reason}");
    assert!(reason.contains("record 1 was changed"), "{reason}");
    conn.execute(
        "UPDATE audit SET body = ?1 WHERE seq = 1",
        params![original[1].1],
    )
    .expect("restore");

    // 2. Truncate the tail: the chain alone still holds, the checkpoint does not.
    conn.execute("DELETE FROM audit WHERE seq = 3", [])
        .expect("truncate");
    orch.verify_audit(None)
        .await
        .expect("a shorter chain is still a chain");
    let (seq, reason) = tampered_at(orch.verify_audit(Some((&checkpoint, &trusted))).await);
    assert_eq!(seq, 3);
    assert!(reason.contains("truncated"), "{reason}");

    // 3. Rewrite history: change record 0 and recompute every hash after it.
    let mut entries: Vec<AuditEntry> = original
        .iter()
        .map(|(_, body)| serde_json::from_str(body).expect("entry"))
        .collect();
    let mut forged = entries[0].record.clone();
    forged.detail = "nothing to see".into();
    let mut rewritten: Vec<AuditEntry> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let record = if i == 0 {
            forged.clone()
        } else {
            e.record.clone()
        };
        rewritten.push(AuditEntry::chain(rewritten.last(), record));
    }
    conn.execute("DELETE FROM audit", []).expect("clear");
    for e in &rewritten {
        conn.execute(
            "INSERT INTO audit (seq, at_ms, hash, body) VALUES (?1, ?2, ?3, ?4)",
            params![
                e.seq as i64,
                e.record.at.as_millis() as i64,
                e.hash,
                serde_json::to_string(e).expect("json")
            ],
        )
        .expect("insert");
    }
    orch.verify_audit(None)
        .await
        .expect("a consistent forgery passes the chain check alone");
    let (seq, reason) = tampered_at(orch.verify_audit(Some((&checkpoint, &trusted))).await);
    assert_eq!(seq, 3);
    assert!(reason.contains("history was rewritten"), "{reason}");

    // 4. Removed and reordered records, checked on the entries themselves.
    entries.remove(2);
    let (seq, reason) = tampered_at(verify(&entries, None));
    assert_eq!(seq, 2, "{reason}");
    let mut swapped: Vec<AuditEntry> = original
        .iter()
        .map(|(_, body)| serde_json::from_str(body).expect("entry"))
        .collect();
    swapped.swap(1, 2);
    assert_eq!(tampered_at(verify(&swapped, None)).0, 1);

    // 5. A checkpoint is only as good as the key it is checked against.
    let forged_checkpoint = SignedCheckpoint::sign(&rewritten, checkpoint.checkpoint.at, &key(9));
    let (_, reason) = tampered_at(verify(&rewritten, Some((&forged_checkpoint, &trusted))));
    assert!(reason.contains("signed by another key"), "{reason}");
}
