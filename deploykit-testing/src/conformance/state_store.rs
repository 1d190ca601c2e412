//! The [`StateStore`] contract. Call every check on an empty store.

use std::time::Duration;

use deploykit_core::audit::AuditEntry;
use deploykit_core::audit::{AuditAction, AuditRecord};
use deploykit_core::journal::{DeploymentSpec, JournalEntry, JournalEvent, Outcome};
use deploykit_core::store::StateStore;
use deploykit_core::{
    Actor, DeploymentId, Digest, EnvironmentKind, EnvironmentName, EnvironmentSpec, Error,
    Revision, ServiceId, ServiceSpec, Timestamp,
};

fn spec(id: &str, service: &str, environment: &str) -> DeploymentSpec {
    let svc = ServiceSpec::builder()
        .name(service)
        .build()
        .expect("service");
    let env = EnvironmentSpec::builder()
        .name(environment)
        .kind(EnvironmentKind::Staging)
        .build()
        .expect("environment");
    let target =
        Revision::new(&svc, &env, Digest::of_bytes(id.as_bytes()), "v1").expect("revision");
    DeploymentSpec::builder()
        .id(DeploymentId::new(id))
        .service(svc.name.clone())
        .environment(env.name.clone())
        .target(target)
        .replicas(2)
        .strategy(env.strategy.clone())
        .progress_deadline(Duration::from_secs(600))
        .requested_by(Actor::new("conformance"))
        .build()
}

fn at(ms: u64) -> Timestamp {
    Timestamp::from_millis(1_767_225_600_000 + ms)
}

fn created(id: &str, service: &str, environment: &str) -> JournalEntry {
    JournalEntry::new(
        0,
        at(0),
        JournalEvent::Created {
            spec: spec(id, service, environment).into(),
        },
    )
}

fn started(seq: u64) -> JournalEntry {
    JournalEntry::new(seq, at(seq), JournalEvent::Started { previous: None })
}

fn finished(seq: u64) -> JournalEntry {
    JournalEntry::new(
        seq,
        at(seq),
        JournalEvent::Finished {
            outcome: Outcome::Succeeded,
        },
    )
}

/// Run every state-store check.
pub async fn run_all(store: &dyn StateStore) {
    journal_round_trip(store).await;
    journal_sequence_is_enforced(store).await;
    active_and_listing(store).await;
    leases(store).await;
    audit_log(store).await;
    record_logs(store).await;
}

/// Record logs: created at 0, appended at the next position only (a stale or skipped
/// position conflicts and writes nothing), read back in order, listed by prefix; bad names
/// are refused.
pub async fn record_logs(store: &dyn StateStore) {
    let log = "failover/f-1";
    assert_eq!(store.records(log).await.expect("records"), None);
    let record = |i: u64| serde_json::json!({"seq": i, "what": format!("step {i}"), "nested": {"n": [i, i + 1]}});
    let missing = store.append_record(log, 1, &record(1)).await;
    assert!(
        matches!(missing, Err(Error::NotFound { .. })),
        "appending to a log that does not exist: {missing:?}"
    );
    for i in 0..3 {
        store
            .append_record(log, i, &record(i))
            .await
            .expect("append record");
    }
    let created_again = store.append_record(log, 0, &record(0)).await;
    assert!(
        matches!(created_again, Err(Error::AlreadyExists { .. })),
        "{created_again:?}"
    );
    for (seq, why) in [(2, "a stale position"), (4, "a skipped position")] {
        let e = store.append_record(log, seq, &record(9)).await;
        assert!(matches!(e, Err(Error::Conflict { .. })), "{why}: {e:?}");
    }
    assert_eq!(
        store.records(log).await.expect("records"),
        Some((0..3).map(record).collect()),
        "records load back in order, and nothing of a refused append"
    );
    store
        .append_record("failover/f-2", 0, &record(0))
        .await
        .expect("second log");
    store
        .append_record("failback/f-3", 0, &record(0))
        .await
        .expect("third log");
    assert_eq!(
        store.record_logs("failover/").await.expect("list"),
        vec!["failover/f-1".to_string(), "failover/f-2".to_string()]
    );
    assert_eq!(store.record_logs("").await.expect("list").len(), 3);
    for bad in ["", "Failover/x", "a//b", "/a", "a/", "../x", "a b"] {
        let e = store.append_record(bad, 0, &record(0)).await;
        assert!(
            matches!(e, Err(Error::InvalidSpec { .. })),
            "{bad:?} must be refused: {e:?}"
        );
    }
}

/// Appended entries load back equal and in order; unknown deployments load as `None`.
pub async fn journal_round_trip(store: &dyn StateStore) {
    let id = DeploymentId::new("rt-1");
    assert!(store.load(&id).await.expect("load").is_none());
    let entries = vec![created("rt-1", "web", "staging"), started(1), finished(2)];
    for e in &entries {
        store.append(&id, e).await.expect("append");
    }
    let loaded = store.load(&id).await.expect("load").expect("exists");
    assert_eq!(
        loaded, entries,
        "journal must load back exactly as appended"
    );
}

/// Of two writers at the same position exactly one wins; gaps, duplicates and unknown
/// deployments are refused and write nothing.
pub async fn journal_sequence_is_enforced(store: &dyn StateStore) {
    let id = DeploymentId::new("seq-1");
    store
        .append(&id, &created("seq-1", "web", "staging"))
        .await
        .expect("create");
    let dup = store.append(&id, &created("seq-1", "web", "staging")).await;
    assert!(
        matches!(dup, Err(Error::AlreadyExists { .. })),
        "creating an existing deployment must be AlreadyExists, got {dup:?}"
    );
    store.append(&id, &started(1)).await.expect("first writer");
    let second = store.append(&id, &started(1)).await;
    assert!(
        matches!(
            second,
            Err(Error::Conflict {
                expected: 1,
                actual: 2,
                ..
            })
        ),
        "second writer at the same position must conflict, got {second:?}"
    );
    let gap = store.append(&id, &finished(5)).await;
    assert!(
        matches!(gap, Err(Error::Conflict { .. })),
        "a gap must conflict, got {gap:?}"
    );
    let loaded = store.load(&id).await.expect("load").expect("exists");
    assert_eq!(loaded.len(), 2, "refused appends must write nothing");
    let unknown = store.append(&DeploymentId::new("nope"), &started(1)).await;
    assert!(
        matches!(unknown, Err(Error::NotFound { .. })),
        "appending to an unknown deployment must be NotFound, got {unknown:?}"
    );
}

/// A deployment is active until a terminal entry; listings are ordered.
pub async fn active_and_listing(store: &dyn StateStore) {
    let web = ServiceId::new("api").expect("service");
    let staging = EnvironmentName::new("qa").expect("environment");
    for id in ["ls-1", "ls-2", "ls-3"] {
        store
            .append(&DeploymentId::new(id), &created(id, "api", "qa"))
            .await
            .expect("create");
    }
    store
        .append(
            &DeploymentId::new("ls-other"),
            &created("ls-other", "db", "qa"),
        )
        .await
        .expect("create other service");
    store
        .append(&DeploymentId::new("ls-1"), &started(1))
        .await
        .expect("start");
    store
        .append(&DeploymentId::new("ls-1"), &finished(2))
        .await
        .expect("finish");
    let active: Vec<String> = store
        .list_active()
        .await
        .expect("list active")
        .into_iter()
        .map(|d| d.to_string())
        .filter(|d| d.starts_with("ls-"))
        .collect();
    assert_eq!(
        active,
        ["ls-2", "ls-3", "ls-other"],
        "active deployments, oldest first"
    );
    let listed: Vec<String> = store
        .list_deployments(&web, &staging)
        .await
        .expect("list deployments")
        .into_iter()
        .map(|d| d.to_string())
        .collect();
    assert_eq!(
        listed,
        ["ls-3", "ls-2", "ls-1"],
        "deployments of one service, newest first"
    );
}

/// Leases: exclusive while live, renewable by their owner, free once expired or released, and
/// a release by a former owner does nothing.
pub async fn leases(store: &dyn StateStore) {
    let ttl = Duration::from_secs(30);
    let none = store.lease("web/prod").await.expect("read lease");
    assert_eq!(none, None, "no lease was ever taken");
    let a = store
        .acquire_lease("web/prod", "a", at(0), ttl)
        .await
        .expect("free lease");
    assert_eq!((a.owner.as_str(), a.expires_at), ("a", at(30_000)));
    let read = store.lease("web/prod").await.expect("read lease");
    assert_eq!(
        read.as_ref().map(|l| (l.owner.as_str(), l.expires_at)),
        Some(("a", at(30_000)))
    );
    let held = store.acquire_lease("web/prod", "b", at(10_000), ttl).await;
    assert!(
        matches!(&held, Err(Error::LeaseHeld { owner, .. }) if owner == "a"),
        "a live lease must be refused to others, got {held:?}"
    );
    let renewed = store
        .acquire_lease("web/prod", "a", at(20_000), ttl)
        .await
        .expect("owner renews");
    assert_eq!(renewed.expires_at, at(50_000));
    let b = store
        .acquire_lease("web/prod", "b", at(50_001), ttl)
        .await
        .expect("an expired lease goes to the next caller");
    store.release_lease(&renewed).await.expect("stale release");
    let still = store.acquire_lease("web/prod", "c", at(50_002), ttl).await;
    assert!(
        matches!(still, Err(Error::LeaseHeld { .. })),
        "a release by a former owner must not free the lease"
    );
    store.release_lease(&b).await.expect("release");
    let released = store.lease("web/prod").await.expect("read lease");
    assert!(
        released.is_none()
            || released
                .as_ref()
                .is_some_and(|l| l.expires_at <= at(50_003)),
        "a released lease reads as gone (or lapsed), got {released:?}"
    );
    store
        .acquire_lease("web/prod", "c", at(50_003), ttl)
        .await
        .expect("a released lease is free");
    store
        .acquire_lease("web/staging", "x", at(0), ttl)
        .await
        .expect("leases are per key");
}

/// Audit entries load back in order, and an entry out of sequence is refused.
pub async fn audit_log(store: &dyn StateStore) {
    assert!(store.last_audit().await.expect("last").is_none());
    let mut entries: Vec<AuditEntry> = Vec::new();
    for i in 0..3u64 {
        let record = AuditRecord::new(
            at(i),
            Actor::new(format!("user{i}")),
            [AuditAction::Deploy, AuditAction::Pause, AuditAction::Abort][i as usize],
            DeploymentId::new("audit-1"),
            ServiceId::new("web").expect("service"),
            EnvironmentName::new("prod").expect("environment"),
            format!("detail {i}"),
        );
        let entry = AuditEntry::chain(entries.last(), record);
        store.record_audit(&entry).await.expect("record audit");
        entries.push(entry);
    }
    let log = store.audit_log().await.expect("audit log");
    assert_eq!(log, entries, "audit entries load back in order");
    assert_eq!(
        store.last_audit().await.expect("last").as_ref(),
        entries.last()
    );
    let stale = AuditEntry::chain(entries.get(1), entries[2].record.clone());
    let err = store.record_audit(&stale).await;
    assert!(
        matches!(err, Err(Error::Conflict { .. })),
        "an entry that does not extend the log must conflict, got {err:?}"
    );
    assert_eq!(store.audit_log().await.expect("log").len(), 3);
    deploykit_core::audit::verify(&log, None).expect("the stored chain verifies");
}
