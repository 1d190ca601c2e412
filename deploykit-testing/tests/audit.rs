//! The tamper-evident audit log: a real SQLite file, edited behind deploykit's back.

mod common;

use std::sync::Arc;

use deploykit_core::audit::{AuditEntry, SignedCheckpoint, verify};
use deploykit_core::{Actor, Error, StateStore};
use deploykit_sqlite::SqliteStore;
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

/// An older copy of the log, replayed together with its older (genuinely signed) checkpoint,
/// verifies on its own; a verifier that keeps a witness of the largest log it has seen catches
/// the rollback, and a forged history of the same or greater length too.
#[tokio::test(start_paused = true)]
async fn a_log_rolled_back_with_its_old_checkpoint_is_caught_by_the_witness() {
    use deploykit_core::audit::Witness;
    let sim = SimCluster::new();
    let store: Arc<dyn StateStore> = Arc::new(deploykit_testing::MemoryStore::new());
    let orch = common::open(store.clone(), &sim, common::production(), "o1").await;
    common::deploy_and_wait(&orch, "v1").await;
    let trusted = key(1).verifying_key();
    let old_log = store.audit_log().await.expect("log");
    let old_checkpoint = orch.audit_checkpoint(&key(1)).await.expect("checkpoint");
    common::deploy_and_wait(&orch, "v2").await;
    let new_log = store.audit_log().await.expect("log");
    assert!(new_log.len() > old_log.len());

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit-witness.json");
    let now = deploykit_core::Timestamp::from_millis(1);
    let mut witness = Witness::open(&path).expect("witness");
    witness.check(&new_log, None, now).expect("the current log");
    assert_eq!(
        witness.largest().expect("remembered").count,
        new_log.len() as u64
    );

    // The replay passes the plain check ...
    verify(&old_log, Some((&old_checkpoint, &trusted))).expect("an old log with its checkpoint");
    // ... but not a witness that saw more, even one opened afresh from its file.
    let mut witness = Witness::open(&path).expect("witness");
    let (seq, reason) =
        tampered_at(witness.check(&old_log, Some((&old_checkpoint, &trusted)), now));
    assert_eq!(seq, old_log.len() as u64);
    assert!(reason.contains("rolled back"), "{reason}");

    // A rewritten history as long as the real one does not extend what was seen either.
    let mut forged: Vec<AuditEntry> = Vec::new();
    for e in &new_log {
        let mut record = e.record.clone();
        record.detail = format!("{} (edited)", record.detail);
        forged.push(AuditEntry::chain(forged.last(), record));
    }
    let (_, reason) = tampered_at(witness.check(&forged, None, now));
    assert!(reason.contains("history was rewritten"), "{reason}");

    // The real log, grown, still passes and moves the witness on.
    common::deploy_and_wait(&orch, "v3").await;
    let grown = store.audit_log().await.expect("log");
    witness.check(&grown, None, now).expect("the grown log");
    assert_eq!(witness.largest().expect("seen").count, grown.len() as u64);

    // A witness file that is not one is an error naming the file, never "nothing seen".
    std::fs::write(&path, b"garbage").expect("write");
    let err = Witness::open(&path).expect_err("garbage");
    assert!(err.to_string().contains("audit-witness.json"), "{err}");
}
