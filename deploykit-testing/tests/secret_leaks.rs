//! Deploy with secrets, rotate one, refuse a missing one, fail instances on them (no provider;
//! a version that no longer matches the revision's pin) — then search every log line, event,
//! notification, journal row (and the raw SQLite files), audit record, error, `Debug` output
//! and panic message for the secret values: none may appear.
//! The workload itself must have received them, or the search would prove nothing.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deploykit_core::secrets::{ExposeSecret, SecretString};
use deploykit_core::{
    Actor, DeployRequest, DesiredState, Environment, Error, FailureKind, Phase, Revision,
    RevisionTarget, ServiceSpec, StateStore, Traffic,
};
use deploykit_secrets::{FileSecretProvider, Identity, SecretsFile};
use deploykit_sqlite::SqliteStore;
use deploykit_testing::{RecordingNotifier, SimCluster};

const DB_PASSWORD: &str = "postgres://app:Xq7-db-pass-91f3@db/shop";
const TOKEN_V1: &str = "tok-live-5b2e0c7d";
const TOKEN_V2: &str = "tok-live-rotated-a41f";

/// Log lines, kept in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn service_with_secrets(extra: Option<(&str, &str)>) -> ServiceSpec {
    let mut secrets = BTreeMap::from([(
        "DATABASE_URL".to_string(),
        "production.database_url".to_string(),
    )]);
    if let Some((name, key)) = extra {
        secrets.insert(name.to_string(), key.to_string());
    }
    let mut service = common::service();
    service.secrets = secrets;
    service
}

fn request(service: ServiceSpec, label: &str) -> DeployRequest {
    DeployRequest::builder()
        .service(service)
        .environment("production")
        .artifact(common::artifact(label))
        .label(label)
        .requested_by(Actor::new("alice"))
        .build()
}

#[tokio::test(start_paused = true)]
async fn secret_values_never_leave_the_workload() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("one subscriber per test binary");

    let dir = tempfile::tempdir().expect("tempdir");
    let secrets_path = dir.path().join("secrets.toml");
    let ci = Identity::generate();
    let mut file = SecretsFile::create(&[ci.to_recipient()]).expect("create");
    file.set("production.database_url", SecretString::from(DB_PASSWORD))
        .expect("set");
    file.set("production.api_token", SecretString::from(TOKEN_V1))
        .expect("set");
    file.save(&secrets_path).expect("save");
    let provider = FileSecretProvider::open(&secrets_path, &ci).expect("open secrets");

    let db_path = dir.path().join("state.db");
    let store: Arc<dyn StateStore> = Arc::new(SqliteStore::open(&db_path).await.expect("store"));
    let sim = SimCluster::new();
    sim.set_secret_provider(Arc::new(provider.clone()));
    let mut env = common::production();
    env.secrets = BTreeMap::from([("API_TOKEN".to_string(), "production.api_token".to_string())]);
    let notifier = RecordingNotifier::new();
    let orch = deploykit_core::Orchestrator::builder_shared(store.clone())
        .environment(env.clone(), Arc::new(sim.clone()))
        .clock(Arc::new(sim.clock()))
        .owner("o1")
        .config(common::config())
        .secrets(Arc::new(provider.clone()))
        .notifier(Arc::new(notifier.clone()))
        .open()
        .await
        .expect("orchestrator");
    let mut events = orch.subscribe();
    let mut haystack: Vec<String> = Vec::new();
    let wait = |id| {
        let orch = &orch;
        async move {
            tokio::time::timeout(Duration::from_secs(6 * 3600), orch.wait(&id))
                .await
                .expect("ends")
                .expect("wait")
        }
    };

    // 1. Deploy with two secrets; the workload gets both values.
    let service = service_with_secrets(None);
    let first = orch
        .deploy(request(service.clone(), "v1"))
        .await
        .expect("deploy");
    let status = wait(first.clone()).await;
    assert_eq!(status.phase, Phase::Succeeded);
    let v1 = status.spec.target.clone();
    let seen = sim
        .resolved_secrets(&service.name, &v1.id)
        .expect("running")
        .expect("resolved");
    assert_eq!(seen["DATABASE_URL"].expose_secret(), DB_PASSWORD);
    assert_eq!(seen["API_TOKEN"].expose_secret(), TOKEN_V1);

    // 2. Rotate the token: the same artifact makes a new revision, which rolls out.
    file.set("production.api_token", SecretString::from(TOKEN_V2))
        .expect("rotate");
    file.save(&secrets_path).expect("save");
    provider.reload(SecretsFile::open(&secrets_path, &ci).expect("reopen"));
    let rotated = orch
        .deploy(request(service.clone(), "v1"))
        .await
        .expect("deploy");
    let status = wait(rotated.clone()).await;
    assert_eq!(status.phase, Phase::Succeeded);
    assert_ne!(
        status.spec.target.id, v1.id,
        "a new secret value is a new revision"
    );
    let seen = sim
        .resolved_secrets(&service.name, &status.spec.target.id)
        .expect("running")
        .expect("resolved");
    assert_eq!(seen["API_TOKEN"].expose_secret(), TOKEN_V2);

    // 3. A reference to a secret nobody has is refused before anything starts.
    let missing = service_with_secrets(Some(("STRIPE_KEY", "production.stripe_key")));
    let err = orch.deploy(request(missing, "v2")).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }));
    assert_eq!(
        err.to_string(),
        format!(
            "secret production.stripe_key in {} (referenced by variable STRIPE_KEY) not found",
            secrets_path.display()
        )
    );
    haystack.push(err.chain());
    haystack.push(format!("{err:?}"));

    // 4. A backend that cannot resolve a secret fails the instances, naming the key only.
    let orphan = SimCluster::new();
    let revision = Revision::new(&service, &env, common::artifact("v9"), "v9").expect("revision");
    orphan
        .apply(
            &service.name,
            &DesiredState::new(
                vec![RevisionTarget::new(revision.clone(), 1)],
                Traffic::ByReadyInstances,
            ),
        )
        .await
        .expect("apply");
    let observed = orphan.observe(&service.name).await.expect("observe");
    let failure = observed.revisions[0].instances[0]
        .failure
        .clone()
        .expect("fails");
    assert_eq!(failure.kind, FailureKind::Configuration);
    assert_eq!(
        failure.reason,
        "invalid secrets.API_TOKEN: variable API_TOKEN refers to secret production.api_token, \
         but no secret provider is configured to resolve it: use SimCluster::set_secret_provider"
    );
    haystack.push(format!("{observed:?}"));

    // 5. A revision pinned to a version the provider no longer has is not started with the
    // current value: its instances fail, naming variable, key and both versions. (The running
    // `v1` above kept the values it started with while `rotated` rolled out.)
    let elsewhere = SimCluster::new();
    elsewhere.set_secret_provider(Arc::new(provider.clone()));
    elsewhere
        .apply(
            &service.name,
            &DesiredState::new(
                vec![RevisionTarget::new(v1.clone(), 1)],
                Traffic::ByReadyInstances,
            ),
        )
        .await
        .expect("apply");
    let observed = elsewhere.observe(&service.name).await.expect("observe");
    let failure = observed.revisions[0].instances[0]
        .failure
        .clone()
        .expect("fails");
    assert_eq!(failure.kind, FailureKind::Configuration);
    let pinned = v1.config.secrets["API_TOKEN"]
        .version
        .clone()
        .expect("pinned");
    let current = provider.versions()["production.api_token"].clone();
    assert_ne!(pinned, current);
    assert!(
        failure.reason.contains(&format!(
            "secret production.api_token of variable API_TOKEN changed since the revision was \
             made (pinned version {pinned}, current version {current})"
        )),
        "{}",
        failure.reason
    );
    assert!(
        elsewhere
            .resolved_secrets(&service.name, &v1.id)
            .expect("known")
            .is_err(),
        "nothing was resolved"
    );
    haystack.push(format!("{observed:?}"));

    // Everything deploykit wrote or said.
    tokio::time::sleep(Duration::from_secs(1)).await;
    while let Ok(event) = events.try_recv() {
        haystack.push(format!("{event:?}"));
    }
    for event in notifier.events() {
        haystack.push(format!("{event:?}"));
        haystack.push(
            serde_json::to_string(&deploykit_core::Notification::from(&event))
                .expect("notification json"),
        );
    }
    for id in [&first, &rotated] {
        for entry in orch.journal(id).await.expect("journal") {
            haystack.push(serde_json::to_string(&entry).expect("entry json"));
            haystack.push(format!("{entry:?}"));
        }
    }
    // The workload prints its secrets (as apps do: a connection string at startup, a token
    // in a request dump, a JSON field): the logs it writes go through the shipping pipeline
    // to a file, a webhook backlog and the encrypted archive, and are searched back. None of
    // those outputs may hold a value the deployment resolved.
    // (The values the workload was seen to receive above.)
    let resolved: Vec<String> = [DB_PASSWORD, TOKEN_V1, TOKEN_V2]
        .map(str::to_string)
        .to_vec();
    haystack
        .extend(ship_logs_printing(&sim, dir.path(), &service.name.to_string(), &resolved).await);
    haystack.push(format!("{:?}", orch.audit_log().await.expect("audit")));
    haystack.push(format!("{:?}", orch.audit_chain().await.expect("chain")));
    haystack.push(format!("{sim:?}"));
    haystack.push(format!("{:?}", sim.history(&service.name)));
    haystack.push(format!("{:?}", sim.resolved_secrets(&service.name, &v1.id)));
    haystack.push(format!("{file:?} {provider:?} {ci:?}"));
    haystack.push(format!("{:?}", provider.versions()));
    haystack.push(file.to_toml());
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let panic = std::panic::catch_unwind(|| {
        let value = file.get("production.database_url").expect("there");
        panic!("refusing to start with {value:?}");
    })
    .expect_err("panics");
    std::panic::set_hook(hook);
    haystack.push(panic.downcast_ref::<String>().cloned().expect("message"));
    orch.shutdown().await.expect("shutdown");
    drop(store);
    for suffix in ["", "-wal", "-shm"] {
        let path = dir.path().join(format!("state.db{suffix}"));
        if let Ok(bytes) = std::fs::read(&path) {
            haystack.push(String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).expect("utf-8 logs");
    assert!(logs.lines().count() > 10, "logging was captured:\n{logs}");
    assert!(
        logs.contains("API_TOKEN") || logs.contains("deployment"),
        "{logs}"
    );
    haystack.push(logs);

    for needle in [DB_PASSWORD, "Xq7-db-pass-91f3", TOKEN_V1, TOKEN_V2] {
        for (i, hay) in haystack.iter().enumerate() {
            assert!(
                !hay.contains(needle),
                "secret {needle:?} leaked into item {i}:\n{hay}"
            );
        }
    }
    // The references are recorded, pinned to a version, so reviewers see which secrets (and
    // which versions of them) a revision runs with.
    let pinned = serde_json::to_string(&*status.spec.target).expect("revision json");
    let version = provider.versions()["production.api_token"].clone();
    assert!(
        pinned.contains(&format!(
            r#"{{"key":"production.api_token","version":"{version}"}}"#
        )),
        "{pinned}"
    );
}

/// Without pinning (no provider in the orchestrator), a secret the backend cannot resolve
/// fails the new instances with a configuration failure naming the key, and the rollout rolls
/// back fast instead of waiting for its deadline.
#[tokio::test(start_paused = true)]
async fn an_unresolvable_secret_fails_the_rollout_fast() {
    let store: Arc<dyn StateStore> = Arc::new(deploykit_testing::MemoryStore::new());
    let sim = SimCluster::new();
    let me = Identity::generate();
    let mut file = SecretsFile::create(&[me.to_recipient()]).expect("create");
    file.set(
        "production.database_url",
        SecretString::from("postgres://x"),
    )
    .expect("set");
    sim.set_secret_provider(Arc::new(FileSecretProvider::new("secrets.toml", file)));
    let orch = common::open(store, &sim, common::production(), "o1").await;
    let (_, phase) = common::deploy_and_wait(&orch, "v1").await;
    assert_eq!(phase, Phase::Succeeded);

    let broken = service_with_secrets(Some(("STRIPE_KEY", "production.stripe_key")));
    let id = orch.deploy(request(broken, "v2")).await.expect("deploy");
    let status = orch.wait(&id).await.expect("wait");
    assert_eq!(status.phase, Phase::RolledBack);
    let reason = status
        .rollback
        .as_ref()
        .map(|(_, reason)| reason.clone())
        .unwrap_or_default();
    assert!(
        reason.contains(
            "new instances could not be configured: secret production.stripe_key in secrets.toml \
             (referenced by variable STRIPE_KEY) not found"
        ),
        "{reason}"
    );
    assert!(
        status.updated_at.since(status.created_at) < Duration::from_secs(60),
        "rolled back in {:?}",
        status.updated_at.since(status.created_at)
    );
}

/// Instances print the secret values in their logs; the logs are shipped through a pipeline
/// given the resolved values to a file, a webhook that is down (its disk backlog) and an
/// encrypted archive, then searched back. Returns everything those outputs hold.
async fn ship_logs_printing(
    sim: &SimCluster,
    dir: &std::path::Path,
    service: &str,
    values: &[String],
) -> Vec<String> {
    use deploykit_backup::{LocalTarget, RepoKey, RepoOptions, Repository};
    use deploykit_logs::{
        ArchiveForwarder, ArchiveOptions, ArchiveQuery, Fanout, FileForwarder, Forwarder,
        LogSelector, LogShipper, LogSource, Pipeline, PipelineConfig, Reliable, ReliableOptions,
        Stream, WebhookForwarder, search_archive,
    };

    let config = PipelineConfig::from_toml_str(
        r#"
        [[stages]]
        type = "parse_json"
        "#,
    )
    .expect("pipeline");
    let files = dir.join("shipped");
    let file = Arc::new(FileForwarder::create(&files, "logs", 1 << 20).expect("file"));
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let webhook =
        WebhookForwarder::new(&format!("http://127.0.0.1:{closed_port}/logs")).expect("webhook");
    let backlog = dir.join("backlog");
    let reliable = Reliable::open(
        Arc::new(webhook),
        &backlog,
        ReliableOptions {
            retry: deploykit_core::retry::RetryPolicy::none(),
            ..ReliableOptions::default()
        },
    )
    .expect("reliable");
    let repo_dir = dir.join("archive");
    let options = RepoOptions::builder().kdf_cost((1024, 1)).build();
    let repo = Repository::init(
        Arc::new(LocalTarget::new(&repo_dir).expect("target")),
        &RepoKey::passphrase("pw"),
        options,
    )
    .await
    .expect("repository");
    let archive = Arc::new(ArchiveForwarder::new(
        repo.clone(),
        ArchiveOptions::default(),
    ));
    let destinations: Vec<Arc<dyn Forwarder>> = vec![file.clone(), Arc::new(reliable), archive];
    let pipeline =
        Pipeline::start(&config, values, Arc::new(Fanout::new(destinations))).expect("pipeline");
    // The cluster's own store redacts at the source, as the local capture does…
    sim.instance_logs().write(
        service,
        "r1",
        "web-1",
        Stream::Stdout,
        [format!("dsn={}", values[0])],
    );
    let kept = LogSource::logs(sim, &LogSelector::service(service))
        .await
        .expect("logs")
        .collect()
        .await
        .expect("records");
    assert!(kept.iter().any(|r| r.line == "dsn=[REDACTED]"), "{kept:?}");
    // …a source that does not (Kubernetes' pod logs) relies on the pipeline.
    let logs = deploykit_testing::SimLogs::with_clock(sim.clock());
    let shipper = LogShipper::start(
        Arc::new(logs.clone()),
        vec![LogSelector::service(service)],
        pipeline.input(),
    );
    for value in values {
        logs.write(
            service,
            "r1",
            "web-1",
            Stream::Stdout,
            [
                format!("connecting to {value}"),
                format!(r#"{{"level":"info","msg":"request","authorization":"Bearer {value}"}}"#),
            ],
        );
        logs.write(
            service,
            "r1",
            "web-1",
            Stream::Stderr,
            [format!("panic: bad config {{ url: \"{value}\" }}")],
        );
    }
    let written = logs.count(service);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(shipper.stop().await.expect("shipped"), written as u64);
    let stats = pipeline.close().await.expect("close");
    assert_eq!(stats.records_out, written as u64, "every line was shipped");
    assert!(stats.redactions >= values.len() as u64 * 3, "{stats:?}");

    let mut outputs = vec![format!("{stats:?}")];
    let read_all = |root: &std::path::Path| -> Vec<String> {
        let mut found = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(path) = stack.pop() {
            if path.is_dir() {
                stack.extend(
                    std::fs::read_dir(&path)
                        .expect("dir")
                        .map(|e| e.expect("entry").path()),
                );
            } else {
                found.push(
                    String::from_utf8_lossy(&std::fs::read(&path).expect("read")).into_owned(),
                );
            }
        }
        found
    };
    let shipped = read_all(&files);
    assert!(
        shipped.concat().contains("connecting to"),
        "the file holds the lines"
    );
    let waiting = read_all(&backlog);
    assert!(
        waiting.concat().contains("connecting to"),
        "the backlog holds the lines"
    );
    outputs.extend(shipped);
    outputs.extend(waiting);
    outputs.extend(read_all(&repo_dir));
    outputs.extend(kept.iter().map(|r| format!("{r:?}")));
    let found = search_archive(&repo, &ArchiveQuery::new("sim", service))
        .await
        .expect("search")
        .collect()
        .await
        .expect("records");
    assert_eq!(found.len(), written, "the archive holds every line");
    outputs.extend(found.iter().map(|r| format!("{} {r:?}", r.line)));
    outputs
}
