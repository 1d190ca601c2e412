//! `KubeStateStore` over the in-memory API server: the state-store contract, races, retries
//! and the ConfigMap size limit.

use std::sync::Arc;
use std::time::Duration;

use deploykit_core::journal::{DeploymentSpec, JournalEntry, JournalEvent};
use deploykit_core::store::StateStore;
use deploykit_core::{
    Actor, DeploymentId, Digest, EnvironmentKind, EnvironmentSpec, Error, Revision, ServiceSpec,
    Timestamp,
};
use deploykit_k8s::RetryPolicy;
use deploykit_k8s::store::{CONFIGMAP_DATA_LIMIT, KubeStateStore};
use deploykit_testing::conformance::state_store;
use deploykit_testing::k8s::FakeApiServer;

fn fast() -> RetryPolicy {
    RetryPolicy::default()
        .with_backoff(Duration::from_millis(1), Duration::from_millis(5))
        .and_then(|p| p.with_max_attempts(5))
        .expect("valid policy")
}

fn store(server: &FakeApiServer) -> KubeStateStore {
    KubeStateStore::new(server.client(), "deploykit").with_retry(fast())
}

fn created(id: &str) -> JournalEntry {
    let svc = ServiceSpec::builder().name("web").build().unwrap();
    let env = EnvironmentSpec::builder()
        .name("prod")
        .kind(EnvironmentKind::Production)
        .build()
        .unwrap();
    let target = Revision::new(&svc, &env, Digest::of_bytes(id.as_bytes()), "v1").unwrap();
    let spec = DeploymentSpec::builder()
        .id(DeploymentId::new(id))
        .service(svc.name.clone())
        .environment(env.name.clone())
        .target(target)
        .replicas(1)
        .strategy(env.strategy.clone())
        .progress_deadline(Duration::from_secs(60))
        .requested_by(Actor::new("test"))
        .build();
    JournalEntry::new(
        0,
        Timestamp::from_millis(1_000),
        JournalEvent::Created { spec: spec.into() },
    )
}

fn paused(seq: u64, reason: String) -> JournalEntry {
    JournalEntry::new(
        seq,
        Timestamp::from_millis(1_000 + seq),
        JournalEvent::Paused {
            by: Actor::new("ops"),
            reason,
        },
    )
}

#[tokio::test]
async fn conforms_to_the_state_store_contract() {
    let server = FakeApiServer::new();
    state_store::run_all(&store(&server)).await;
    // A store with another prefix in the same namespace sees none of it.
    let other = store(&server).with_prefix("other").unwrap();
    state_store::run_all(&other).await;

    // What it wrote, as Kubernetes objects.
    let journal = server
        .object("configmaps", "deploykit", "deploykit-journal-ls-1")
        .expect("one ConfigMap per journal");
    let labels = &journal["metadata"]["labels"];
    assert_eq!(labels["app.kubernetes.io/managed-by"], "deploykit");
    assert_eq!(labels["deploykit.dev/service"], "api");
    assert_eq!(labels["deploykit.dev/environment"], "qa");
    assert_eq!(labels["deploykit.dev/active"], "false");
    assert!(journal["data"]["000000000002"].is_string());
    let lease = server
        .objects("leases")
        .into_iter()
        .find(|l| l["metadata"]["annotations"]["deploykit.dev/lease-key"] == "web/staging")
        .expect("a Lease per key");
    assert_eq!(lease["spec"]["holderIdentity"], "x");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 30);
    assert!(
        server
            .object("configmaps", "deploykit", "deploykit-audit")
            .is_some()
    );
}

#[tokio::test]
async fn odd_ids_get_distinct_valid_names() {
    let server = FakeApiServer::new();
    let s = store(&server);
    let a = s.journal_name(&DeploymentId::new("Deploy_1"));
    let b = s.journal_name(&DeploymentId::new("deploy-1"));
    assert_ne!(a, b);
    assert!(a.starts_with("deploykit-journal-deploy-1-"), "{a}");
    assert_eq!(b, "deploykit-journal-deploy-1");
    assert_ne!(s.lease_name("web/prod"), s.lease_name("web-prod"));
    assert!(
        KubeStateStore::new(server.client(), "x")
            .with_prefix("Bad_")
            .is_err()
    );
}

#[tokio::test]
async fn two_stores_race_for_a_lease() {
    let server = FakeApiServer::new();
    let a = store(&server);
    let b = store(&server);
    let now = Timestamp::from_millis(10_000);
    let ttl = Duration::from_secs(15);
    let (ra, rb) = tokio::join!(
        a.acquire_lease("web/prod", "a", now, ttl),
        b.acquire_lease("web/prod", "b", now, ttl)
    );
    let (winner, loser) = match (&ra, &rb) {
        (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w.clone(), l),
        other => panic!("exactly one store must win the lease, got {other:?}"),
    };
    assert!(
        matches!(loser, Error::LeaseHeld { owner, .. } if *owner == winner.owner),
        "{loser:?}"
    );
    assert_eq!(server.objects("leases").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_at_one_position_have_one_winner() {
    let server = FakeApiServer::new();
    let id = DeploymentId::new("race-1");
    store(&server)
        .append(&id, &created("race-1"))
        .await
        .unwrap();
    server.clear_requests();
    let writers: Vec<_> = (0..8)
        .map(|i| {
            let store = Arc::new(store(&server));
            let id = id.clone();
            tokio::spawn(async move { store.append(&id, &paused(1, format!("writer {i}"))).await })
        })
        .collect();
    let mut wins = 0;
    for w in writers {
        match w.await.unwrap() {
            Ok(()) => wins += 1,
            Err(Error::Conflict {
                expected: 1,
                actual: 2,
                ..
            }) => {}
            Err(e) => panic!("a losing writer must get Conflict, got {e:?}"),
        }
    }
    assert_eq!(wins, 1);
    let puts = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT")
        .count();
    assert!(puts >= 1, "appends are replaces with a resourceVersion");
    assert_eq!(store(&server).load(&id).await.unwrap().unwrap().len(), 2);
}

#[tokio::test]
async fn a_409_from_a_concurrent_append_is_a_conflict() {
    let server = FakeApiServer::new();
    let id = DeploymentId::new("c-1");
    let s = store(&server);
    s.append(&id, &created("c-1")).await.unwrap();
    // A conflicting PUT whose cause left the journal where it was (someone relabelled it, say)
    // is judged again after a fresh read: the append goes through.
    server.fail_next("PUT", "/api/v1/namespaces/deploykit/configmaps/", 409, 1);
    s.append(&id, &paused(1, "one".into())).await.unwrap();
    let puts = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT")
        .count();
    assert_eq!(puts, 2, "the 409 is not retried blindly but re-read");

    // Another writer appends between our read and our write: our PUT carries a stale
    // resourceVersion, the API server answers 409, and that is the store's Conflict.
    let theirs = serde_json::to_string(&paused(2, "theirs".into())).unwrap();
    server.before_next(
        "PUT",
        "/api/v1/namespaces/deploykit/configmaps/deploykit-journal-c-1",
        move |server| {
            server.edit_object("configmaps", "deploykit", "deploykit-journal-c-1", |cm| {
                cm["data"]["000000000002"] = serde_json::Value::String(theirs);
            });
        },
    );
    server.clear_requests();
    let err = s.append(&id, &paused(2, "mine".into())).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Conflict {
                expected: 2,
                actual: 3,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    let methods: Vec<String> = server.requests().into_iter().map(|r| r.method).collect();
    assert_eq!(
        methods,
        ["GET", "PUT", "GET"],
        "read, lose the swap, read again"
    );
    let journal = s.load(&id).await.unwrap().unwrap();
    assert_eq!(journal.len(), 3);
    assert!(matches!(&journal[2].event, JournalEvent::Paused { reason, .. } if reason == "theirs"));

    // A create that meets an existing journal is AlreadyExists, after one POST.
    server.clear_requests();
    let dup = s.append(&id, &created("c-1")).await.unwrap_err();
    assert!(matches!(dup, Error::AlreadyExists { .. }), "{dup:?}");
    assert_eq!(server.requests().len(), 1, "a 409 is never retried");
}

#[tokio::test]
async fn writes_whose_response_was_lost_count_as_done() {
    let server = FakeApiServer::new();
    let id = DeploymentId::new("lost-1");
    let s = store(&server);
    server.fail_next_after_commit("POST", "/api/v1/namespaces/deploykit/configmaps", 500, 1);
    s.append(&id, &created("lost-1")).await.unwrap();
    server.fail_next_after_commit("PUT", "/api/v1/namespaces/deploykit/configmaps/", 503, 1);
    s.append(&id, &paused(1, "x".into())).await.unwrap();
    assert_eq!(s.load(&id).await.unwrap().unwrap().len(), 2);
    // The same entry, not after a lost response, is a second writer.
    let again = s.append(&id, &paused(1, "x".into())).await.unwrap_err();
    assert!(matches!(again, Error::Conflict { .. }), "{again:?}");
}

#[tokio::test]
async fn throttling_is_retried_with_backoff() {
    let server = FakeApiServer::new();
    let id = DeploymentId::new("t-1");
    let s = store(&server);
    s.append(&id, &created("t-1")).await.unwrap();
    server.clear_requests();
    server.fail_next("GET", "/api/v1/namespaces/deploykit/configmaps/", 429, 2);
    let loaded = s.load(&id).await.unwrap().unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(server.requests().len(), 3, "two 429s, then success");

    server.fail_next("PUT", "/api/v1/namespaces/deploykit/configmaps/", 503, 1);
    s.append(&id, &paused(1, "x".into())).await.unwrap();
    assert_eq!(s.load(&id).await.unwrap().unwrap().len(), 2);

    // Throttled past the attempts: a persistent (retryable later, not at once) error.
    server.fail_next("GET", "/api/v1/namespaces/deploykit/configmaps/", 429, 5);
    let err = s.load(&id).await.unwrap_err();
    assert!(
        matches!(err, Error::Persistent { attempts: 5, .. }),
        "{err:?}"
    );
    assert!(err.is_retryable() && err.is_persistent());
    assert!(
        err.chain().contains("gave up after 5 attempts"),
        "{}",
        err.chain()
    );
    // Something permanent is not retried.
    server.clear_requests();
    server.fail_next("GET", "/api/v1/namespaces/deploykit/configmaps/", 403, 1);
    let err = s.load(&id).await.unwrap_err();
    assert!(matches!(err, Error::Store { .. }), "{err:?}");
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn a_journal_that_would_pass_1_mib_is_refused() {
    let server = FakeApiServer::new();
    let id = DeploymentId::new("big-1");
    let s = store(&server);
    s.append(&id, &created("big-1")).await.unwrap();
    let chunk = "x".repeat(CONFIGMAP_DATA_LIMIT / 3);
    s.append(&id, &paused(1, chunk.clone())).await.unwrap();
    s.append(&id, &paused(2, chunk.clone())).await.unwrap();
    let err = s.append(&id, &paused(3, chunk)).await.unwrap_err();
    let text = err.chain();
    assert!(matches!(err, Error::Store { .. }), "{text}");
    assert!(
        text.contains("1 MiB") && text.contains("deploykit-journal-big-1"),
        "{text}"
    );
    assert!(!err.is_retryable());
    assert_eq!(
        s.load(&id).await.unwrap().unwrap().len(),
        3,
        "nothing written"
    );
}

#[tokio::test]
async fn the_audit_log_spills_into_more_configmaps() {
    use deploykit_core::audit::AuditEntry;
    use deploykit_core::audit::{AuditAction, AuditRecord};
    use deploykit_core::{EnvironmentName, ServiceId};

    let server = FakeApiServer::new();
    let s = store(&server);
    let mut log: Vec<AuditEntry> = Vec::new();
    let record = |i: u64| {
        AuditRecord::new(
            Timestamp::from_millis(i),
            Actor::new("ops"),
            AuditAction::Deploy,
            DeploymentId::new(format!("d-{i}")),
            ServiceId::new("web").unwrap(),
            EnvironmentName::new("prod").unwrap(),
            "",
        )
    };
    // Entries 0..510 written in one go, in the documented layout (appending them one by one
    // is slow in a debug build), then the rest through the store.
    let mut data = serde_json::Map::new();
    for i in 0..510u64 {
        let entry = AuditEntry::chain(log.last(), record(i));
        data.insert(
            format!("{i:012}"),
            serde_json::to_string(&entry).unwrap().into(),
        );
        log.push(entry);
    }
    let configmaps: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(server.client(), "deploykit");
    let seeded = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": "deploykit-audit",
            "labels": {
                "app.kubernetes.io/managed-by": "deploykit",
                "deploykit.dev/store": "deploykit",
                "deploykit.dev/component": "audit",
            },
            "annotations": { "deploykit.dev/first-seq": "0" },
        },
        "data": data,
    }))
    .unwrap();
    configmaps
        .create(&Default::default(), &seeded)
        .await
        .unwrap();
    for i in 510..515u64 {
        let entry = AuditEntry::chain(log.last(), record(i));
        s.record_audit(&entry).await.unwrap();
        log.push(entry);
    }
    assert!(
        server
            .object("configmaps", "deploykit", "deploykit-audit-1")
            .is_some()
    );
    assert_eq!(s.audit_log().await.unwrap(), log);
    assert_eq!(s.last_audit().await.unwrap().as_ref(), log.last());
    // Out of sequence, in either ConfigMap: Conflict at the real length.
    for stale in [AuditEntry::chain(log.get(510), log[0].record.clone()), {
        let mut e = AuditEntry::chain(log.last(), log[0].record.clone());
        e.seq = 1024;
        e
    }] {
        let err = s.record_audit(&stale).await.unwrap_err();
        assert!(
            matches!(err, Error::Conflict { actual: 515, .. }),
            "{err:?}"
        );
    }
    deploykit_core::audit::verify(&s.audit_log().await.unwrap(), None).unwrap();
}
