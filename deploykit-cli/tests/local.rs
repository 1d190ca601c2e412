//! The local environment's hard cases, with the real sample app behind the real proxy: a
//! health endpoint that redirects, an app that never binds its port, a crash loop, an app that
//! crashes seconds after it became ready (and was promoted), an app slow to bind its port,
//! adoption after the controller restarts, and the `Environment` conformance suite.

mod common;

use std::time::Duration;

use common::{APP, Rig};
use deploykit_core::journal::{JournalEvent, RollbackCause};
use deploykit_core::{
    Digest, Environment, EnvironmentExt, EnvironmentKind, EnvironmentSpec, FailureKind,
    HealthChecks, Phase, Probe, ProbeAction, Revision, ServiceId, ServiceSpec,
};
use deploykit_local::loadgen::{self, LoadConfig};
use deploykit_local::{LocalEnvironment, LocalOptions};
use deploykit_testing::conformance::environment::{self as conformance, EnvironmentFixture};

const CONFIG: &str = r#"
application = "hard-cases"

[services.web]
command = ["{APP}"]
port = 8080
health.readiness = { http = "/healthz", period = "200ms", timeout = "150ms", failure_threshold = 2 }

[services.slow]
command = ["{APP}"]
port = 8080

[environments.production]
kind = "production"
replicas = 2
progress_deadline = "6s"

[environments.watched-canary]
kind = "staging"
replicas = 2
progress_deadline = "30s"

[environments.watched-canary.strategy.canary]
scale_down_delay = "4s"
steps = [{ weight = 50 }]

[environments.watched-bluegreen]
kind = "staging"
replicas = 2
progress_deadline = "30s"
strategy.blue_green = { auto_promote = true, scale_down_delay = "4s" }

[environments.slowstart]
kind = "staging"
replicas = 2
progress_deadline = "30s"

[environments.patient]
kind = "staging"
replicas = 2
progress_deadline = "60s"
"#;

/// Deploy v1, then `vars` as v2 under light load; v2 must end rolled back for `cause` with a
/// reason containing each of `expect`, and every request must have been answered by v1.
async fn bad_revision_keeps_stable(
    env: &str,
    vars: &[(&str, &str)],
    cause: RollbackCause,
    expect: &[&str],
) {
    let rig = Rig::new(CONFIG).await;
    let v1 = rig
        .orchestrator
        .deploy(rig.request("web", env, "v1", &[]))
        .await
        .expect("deploy v1");
    assert_eq!(
        rig.orchestrator.wait(&v1).await.expect("v1").phase,
        Phase::Succeeded
    );

    let mut load = LoadConfig::new(rig.local.proxy_addr(), 1_000_000);
    load.rate_per_sec = Some(100);
    load.concurrency = 4;
    let load = tokio::spawn(loadgen::run(load, None));
    let started = std::time::Instant::now();
    let v2 = rig
        .orchestrator
        .deploy(rig.request("web", env, "v2", vars))
        .await
        .expect("deploy v2");
    let status = rig.orchestrator.wait(&v2).await.expect("v2");
    let took = started.elapsed();
    load.abort();

    assert_eq!(status.phase, Phase::RolledBack, "{vars:?}");
    let (got, reason) = status.rollback.expect("a rollback reason");
    assert_eq!(got, cause, "{reason}");
    for expect in expect {
        assert!(
            reason.contains(expect),
            "{reason:?} should contain {expect:?}"
        );
    }
    let observed = rig
        .local
        .observe(&ServiceId::new("web").unwrap())
        .await
        .unwrap();
    assert_eq!(observed.revisions.len(), 1, "{}", observed.summary());
    assert_eq!(observed.revisions[0].revision.label, "v1");
    assert_eq!(observed.weight_of(&observed.revisions[0].revision.id), 100);
    let v2_stats = rig
        .local
        .proxy()
        .stats(status.spec.target.id.as_str(), Duration::from_secs(600));
    assert_eq!(
        v2_stats.requests, 0,
        "no request may reach a revision that never became ready"
    );
    println!("{vars:?}: rolled back after {took:?}: {reason}");
    rig.close().await;
}

// Readiness failures mean "not ready yet": these two wait for the (short) progress deadline,
// whose reason carries the last readiness failure and says when a startup probe would help.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_check_answering_301_fails_at_the_deadline_and_stable_keeps_all_traffic() {
    bad_revision_keeps_stable(
        "production",
        &[("HEALTH_STATUS", "301")],
        RollbackCause::ProgressDeadline,
        &["failed readiness: GET /healthz returned 301 Moved Permanently"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_that_never_binds_its_port_fails_at_the_deadline_and_stable_keeps_all_traffic() {
    bad_revision_keeps_stable(
        "production",
        &[("START_DELAY_MS", "600000")],
        RollbackCause::ProgressDeadline,
        &[
            "failed readiness: GET /healthz: connection refused on port",
            "if v2 is only slow to start, a startup probe (health.startup)",
        ],
    )
    .await;
}

/// Deploy v1 in `env` (a canary or blue-green with a 4 s scale-down delay), then a v2 that
/// passes readiness, is promoted, and exits 2 s after binding its port (restarted each time,
/// so between crashes it passes readiness again): v2 must be rolled back, after its
/// promotion and inside the scale-down delay, with the warm v1 instances taking all traffic
/// back — never `succeeded`.
async fn a_crash_after_promotion_rolls_back(env: &str) {
    let rig = Rig::new(CONFIG).await;
    let web = ServiceId::new("web").unwrap();
    let v1 = rig
        .orchestrator
        .deploy(rig.request("web", env, "v1", &[]))
        .await
        .expect("deploy v1");
    assert_eq!(
        rig.orchestrator.wait(&v1).await.expect("v1").phase,
        Phase::Succeeded
    );
    let v1_instances = instance_names(&rig.local.observe(&web).await.unwrap());

    let v2 = rig
        .orchestrator
        .deploy(rig.request("web", env, "v2", &[("CRASH_AFTER_MS", "2000")]))
        .await
        .expect("deploy v2");
    let status = rig.orchestrator.wait(&v2).await.expect("v2");
    assert_eq!(
        status.phase,
        Phase::RolledBack,
        "{env}: {:?}",
        status.outcome
    );
    let (cause, reason) = status.rollback.clone().expect("a rollback reason");
    assert_eq!(cause, RollbackCause::FailFast, "{reason}");
    assert!(
        reason.contains("are crash-looping: exited with code 1 after running")
            && reason.contains("crashing 2000ms after binding as asked (CRASH_AFTER_MS)"),
        "{reason}"
    );
    // Caught by the post-promotion check: promoted first, rolled back inside the delay.
    let journal = rig.orchestrator.journal(&v2).await.unwrap();
    let at = |f: fn(&JournalEvent) -> bool| journal.iter().find(|e| f(&e.event)).map(|e| e.at);
    let promoted = at(|e| matches!(e, JournalEvent::Promoted)).expect("v2 was promoted");
    let rolled = at(|e| matches!(e, JournalEvent::RollbackStarted { .. })).expect("rollback");
    let after = rolled.since(promoted);
    assert!(
        after < Duration::from_secs(4),
        "{env}: rolled back {after:?} after promotion"
    );

    let observed = rig.local.observe(&web).await.unwrap();
    assert_eq!(observed.revisions.len(), 1, "{}", observed.summary());
    assert_eq!(observed.revisions[0].revision.label, "v1");
    assert_eq!(observed.weight_of(&observed.revisions[0].revision.id), 100);
    assert_eq!(
        instance_names(&observed),
        v1_instances,
        "{env}: the warm v1 instances took the traffic back; none was started again"
    );
    println!("{env}: {reason} ({after:?} after promotion)");
    rig.close().await;
}

fn instance_names(observed: &deploykit_core::Observed) -> Vec<String> {
    let mut names: Vec<String> = observed
        .revisions
        .iter()
        .flat_map(|r| r.instances.iter().map(|i| i.name.to_string()))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_crashes_after_promotion_is_rolled_back_not_succeeded() {
    a_crash_after_promotion_rolls_back("watched-canary").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blue_green_that_crashes_after_promotion_is_rolled_back_not_succeeded() {
    a_crash_after_promotion_rolls_back("watched-bluegreen").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_slow_to_bind_its_port_is_waited_for_not_rolled_back() {
    // 2 s before the port is bound, no explicit probe (the implicit TCP readiness probe fails
    // with `connection refused` meanwhile), a 30 s progress deadline: not ready yet, not
    // broken. A first deployment and an update, rolling and canary.
    let slow = [("START_DELAY_MS", "2000")];
    for env in ["slowstart", "watched-canary"] {
        let rig = Rig::new(CONFIG).await;
        for label in ["v1", "v2"] {
            let started = std::time::Instant::now();
            let id = rig
                .orchestrator
                .deploy(rig.request("slow", env, label, &slow))
                .await
                .expect("deploy");
            let status = rig.orchestrator.wait(&id).await.expect("wait");
            assert_eq!(
                status.phase,
                Phase::Succeeded,
                "{env} {label}: {:?}",
                status.rollback
            );
            let took = started.elapsed();
            assert!(took >= Duration::from_secs(2), "{env} {label}: {took:?}");
            println!("{env} {label}: succeeded after {took:?}");
        }
        let observed = rig
            .local
            .observe(&ServiceId::new("slow").unwrap())
            .await
            .unwrap();
        assert_eq!(observed.revisions.len(), 1, "{}", observed.summary());
        assert_eq!(observed.revisions[0].revision.label, "v2");
        assert_eq!(observed.total_ready(), 2);
        rig.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_revision_is_rolled_back_before_its_deadline() {
    // The deadline is 60 s; the crash loop is detected from the process's exits long before.
    bad_revision_keeps_stable(
        "patient",
        &[("CRASH_ON_START", "1")],
        RollbackCause::FailFast,
        &[
            "are crash-looping: exited with code 1",
            "crashing on start as asked",
        ],
    )
    .await;
}

fn web_revision(env: &EnvironmentSpec, version: &str) -> Revision {
    let web = ServiceSpec::builder()
        .name("conformance")
        .command(vec![APP.to_string()])
        .port(8080)
        .variables([("VERSION".to_string(), version.to_string())].into())
        .health(
            HealthChecks::builder()
                .readiness(
                    Probe::builder()
                        .action(ProbeAction::http("/healthz"))
                        .period(Duration::from_millis(200))
                        .timeout(Duration::from_millis(150))
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .build()
        .unwrap();
    Revision::new(&web, env, Digest::of_bytes(APP.as_bytes()), version).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exits_and_liveness_restarts_are_reported_from_the_first_one() {
    // What the planners' fail-fast rule sees: an instance that exited (or was restarted for
    // failing liveness) within the crash window is failing, from the first time, even while
    // it runs and passes readiness again in between.
    let dir = tempfile::tempdir().unwrap();
    let local = LocalEnvironment::open(
        LocalOptions::new(dir.path()).listen("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let env = EnvironmentSpec::builder()
        .name("production")
        .kind(EnvironmentKind::Production)
        .build()
        .unwrap();
    let service = ServiceId::new("conformance").unwrap();
    // Probes start once the app has bound its port, so the liveness failure is the 503.
    let probe = |path: &str| {
        Probe::builder()
            .action(ProbeAction::http(path))
            .initial_delay(Duration::from_millis(300))
            .period(Duration::from_millis(100))
            .timeout(Duration::from_millis(90))
            .failure_threshold(1)
            .build()
            .unwrap()
    };
    let revision = |vars: &[(&str, &str)], health: HealthChecks| {
        let spec = ServiceSpec::builder()
            .name("conformance")
            .command(vec![APP.to_string()])
            .port(8080)
            .variables(
                vars.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
            .health(health)
            .build()
            .unwrap();
        let artifact = Digest::of_bytes(format!("{vars:?}").as_bytes());
        Revision::new(&spec, &env, artifact, "x").unwrap()
    };
    let cases = [
        (
            revision(
                &[("CRASH_AFTER_MS", "600")],
                HealthChecks::builder().readiness(probe("/healthz")).build(),
            ),
            FailureKind::CrashLoop,
            "exited with code 1 after running",
        ),
        (
            revision(
                &[("HEALTH_STATUS", "503")],
                HealthChecks::builder().liveness(probe("/healthz")).build(),
            ),
            FailureKind::Liveness,
            "restarted after failing liveness: GET /healthz returned 503 Service Unavailable",
        ),
    ];
    for (rev, kind, expect) in cases {
        let desired = deploykit_core::DesiredState::new(
            vec![deploykit_core::RevisionTarget::new(rev, 1)],
            deploykit_core::Traffic::ByReadyInstances,
        );
        local.apply(&service, &desired).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        // On a loaded machine an observation can fall between the restart and the new
        // process binding its port: the instance is then (rightly) not ready, its connection
        // refused or reset. Such a moment is skipped; any other failure is a wrong answer.
        let mut missed_the_first = false;
        let failure = loop {
            let observed = local.observe(&service).await.unwrap();
            let instance = &observed.revisions[0].instances.first().cloned();
            match instance.as_ref().and_then(|i| i.failure.clone()) {
                Some(f) if f.kind == FailureKind::Readiness && f.kind != kind => {
                    // Refused before the new process binds; reset ("connection error") when
                    // the probe meets the old one as it dies.
                    assert!(
                        f.reason.ends_with("connection refused")
                            || f.reason.contains("connection error"),
                        "{f:?}"
                    );
                    missed_the_first = true;
                }
                // Liveness has failed and the restart is under way (the old process is
                // stopping, its last output being taken in): the probe's own reason.
                Some(f) if f.kind == FailureKind::Liveness && !f.reason.starts_with(expect) => {
                    assert!(f.reason.starts_with("GET /healthz returned 503"), "{f:?}");
                }
                Some(f) => break f,
                None => {}
            }
            assert!(std::time::Instant::now() < deadline, "no failure reported");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(failure.kind, kind, "{failure:?}");
        assert!(failure.reason.starts_with(expect), "{failure:?}");
        if !missed_the_first {
            assert!(
                failure.reason.contains("(1 time in the last 60s)"),
                "{failure:?}"
            );
        }
        // Still reported once it runs (and, for the crash, passes readiness) again.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let observed = local.observe(&service).await.unwrap();
            let i = &observed.revisions[0].instances[0];
            assert!(i.restarts >= 1, "{i:?}");
            if i.failure.as_ref().map(|f| &f.kind) == Some(&kind) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{i:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        local.teardown(&service).await.unwrap();
    }
    local.shutdown(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_environment_passes_the_environment_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalEnvironment::open(
        LocalOptions::new(dir.path()).listen("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let env = EnvironmentSpec::builder()
        .name("production")
        .kind(EnvironmentKind::Production)
        .build()
        .unwrap();
    let fx = EnvironmentFixture {
        service: ServiceId::new("conformance").unwrap(),
        first: web_revision(&env, "a"),
        second: web_revision(&env, "b"),
        poll: Duration::from_millis(50),
        settle_timeout: Duration::from_secs(20),
    };
    conformance::run_all(&local, &fx).await;
    local.shutdown(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_adopts_running_instances_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let options = || {
        LocalOptions::new(dir.path())
            .listen("127.0.0.1:0".parse().unwrap())
            .grace(Duration::from_secs(3))
    };
    let env = EnvironmentSpec::builder()
        .name("production")
        .kind(EnvironmentKind::Production)
        .build()
        .unwrap();
    let service = ServiceId::new("conformance").unwrap();
    let rev = web_revision(&env, "a");
    let desired = deploykit_core::DesiredState::new(
        vec![deploykit_core::RevisionTarget::new(rev.clone(), 2)],
        deploykit_core::Traffic::ByReadyInstances,
    );

    let first = LocalEnvironment::open(options()).await.unwrap();
    first.apply(&service, &desired).await.unwrap();
    let before = first
        .wait_settled(&service, Duration::from_millis(50), Duration::from_secs(20))
        .await
        .unwrap();
    let pids: Vec<u32> = instance_pids(dir.path());
    assert_eq!(pids.len(), 2, "two instances recorded with their pids");
    // The controller goes away without stopping its instances (as if it had crashed).
    first.shutdown(false).await;
    for pid in &pids {
        assert!(
            deploykit_local::process::alive(*pid),
            "instance {pid} outlives its controller"
        );
    }

    let second = LocalEnvironment::open(options()).await.unwrap();
    let after = second
        .wait_settled(&service, Duration::from_millis(50), Duration::from_secs(20))
        .await
        .unwrap();
    let names = |o: &deploykit_core::Observed| {
        let mut n: Vec<String> = o.revisions[0]
            .instances
            .iter()
            .map(|i| i.name.to_string())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&before), names(&after), "the same instances, adopted");
    assert_eq!(
        instance_pids(dir.path()),
        pids,
        "the same processes, not restarted"
    );
    let report = loadgen::run(LoadConfig::new(second.proxy_addr(), 200), None).await;
    assert_eq!(report.failures, 0, "{:?}", report.failure_samples);
    assert_eq!(report.by_version.get("a"), Some(&200));
    // Applying the same state again changes nothing.
    second.apply(&service, &desired).await.unwrap();
    assert_eq!(instance_pids(dir.path()), pids);
    second.shutdown(true).await;
    for pid in &pids {
        assert!(
            !deploykit_local::process::alive(*pid),
            "instance {pid} stopped"
        );
    }
}

fn instance_pids(dir: &std::path::Path) -> Vec<u32> {
    let db = rusqlite::Connection::open(dir.join("local.db")).unwrap();
    let mut stmt = db
        .prepare("SELECT pid FROM instances ORDER BY name")
        .unwrap();
    stmt.query_map([], |r| r.get::<_, u32>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_the_instance_and_never_the_state_files_or_logs() {
    use deploykit_core::secrets::SecretString;
    use deploykit_secrets::{FileSecretProvider, Identity, SecretsFile};
    let dir = tempfile::tempdir().unwrap();
    let value = "s3cr3t-t0ken-7f2a";
    let mut file = SecretsFile::create(&[Identity::generate().to_recipient()]).unwrap();
    file.set("production.api_token", SecretString::from(value))
        .unwrap();
    let local = LocalEnvironment::open(
        LocalOptions::new(dir.path().join("state"))
            .listen("127.0.0.1:0".parse().unwrap())
            .workdir(dir.path())
            .secrets(std::sync::Arc::new(FileSecretProvider::new(
                "secrets.toml",
                file,
            ))),
    )
    .await
    .unwrap();
    let env = EnvironmentSpec::builder()
        .name("production")
        .kind(EnvironmentKind::Production)
        .build()
        .unwrap();
    // The instance writes the variable where the test can read it, then runs the sample app.
    let mut web = ServiceSpec::builder()
        .name("web")
        .command(vec![
            "sh".into(),
            "-c".into(),
            "printf %s \"$API_TOKEN\" > token.out; exec \"$0\"".into(),
            APP.into(),
        ])
        .port(8080)
        .build()
        .unwrap();
    web.secrets
        .insert("API_TOKEN".into(), "production.api_token".into());
    let rev = Revision::new(&web, &env, Digest::of_bytes(b"app"), "v1").unwrap();
    let service = ServiceId::new("web").unwrap();
    local
        .apply(
            &service,
            &deploykit_core::DesiredState::new(
                vec![deploykit_core::RevisionTarget::new(rev, 1)],
                deploykit_core::Traffic::ByReadyInstances,
            ),
        )
        .await
        .unwrap();
    local
        .wait_settled(&service, Duration::from_millis(50), Duration::from_secs(20))
        .await
        .unwrap();
    let observed = local.observe(&service).await.unwrap();
    assert_eq!(observed.total_ready(), 1, "{observed:?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("token.out")).unwrap(),
        value
    );
    local.shutdown(true).await;
    // Neither the state file nor any log holds the value.
    let mut leaked = Vec::new();
    let files = walk(&dir.path().join("state"));
    // Stopped instances leave no named pipe behind (reading one would block).
    let special: Vec<_> = files
        .iter()
        .filter(|path| !std::fs::symlink_metadata(path).unwrap().is_file())
        .collect();
    assert!(special.is_empty(), "not regular files: {special:?}");
    for entry in files {
        let bytes = std::fs::read(&entry).unwrap();
        if bytes.windows(value.len()).any(|w| w == value.as_bytes()) {
            leaked.push(entry);
        }
    }
    assert!(leaked.is_empty(), "the secret leaked into {leaked:?}");
}

/// Secrets are resolved once per revision, by `secrets::resolve`'s rules: after a rotation a
/// running revision's new instances get the value it was pinned to, and a revision still
/// pinned to the old version that starts now fails to start, naming variable, key and both
/// versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_keeps_running_revisions_and_refuses_a_stale_pin() {
    use deploykit_core::secrets::SecretString;
    use deploykit_secrets::{FileSecretProvider, Identity, SecretsFile};
    let dir = tempfile::tempdir().unwrap();
    let me = Identity::generate();
    let file = |value: &str| {
        let mut file = SecretsFile::create(&[me.to_recipient()]).unwrap();
        file.set("production.api_token", SecretString::from(value))
            .unwrap();
        file
    };
    let provider = FileSecretProvider::new("secrets.toml", file("tok-old"));
    let local = LocalEnvironment::open(
        LocalOptions::new(dir.path().join("state"))
            .listen("127.0.0.1:0".parse().unwrap())
            .workdir(dir.path())
            .secrets(std::sync::Arc::new(provider.clone())),
    )
    .await
    .unwrap();
    let env = EnvironmentSpec::builder()
        .name("production")
        .kind(EnvironmentKind::Production)
        .build()
        .unwrap();
    // Each instance writes the variable where the test can read it, then runs the sample app.
    let mut web = ServiceSpec::builder()
        .name("web")
        .command(vec![
            "sh".into(),
            "-c".into(),
            "printf %s \"$API_TOKEN\" > \"$DEPLOYKIT_INSTANCE.out\"; exec \"$0\"".into(),
            APP.into(),
        ])
        .port(8080)
        .build()
        .unwrap();
    web.secrets
        .insert("API_TOKEN".into(), "production.api_token".into());
    let pinned = |label: &'static str| {
        let revision = Revision::new(&web, &env, Digest::of_bytes(label.as_bytes()), label);
        let provider = provider.clone();
        async move { revision.unwrap().pin_secrets(&provider).await.unwrap() }
    };
    let v1 = pinned("v1").await;
    let stale = pinned("v1-hotfix").await;
    let old_version = provider.versions()["production.api_token"].clone();
    let service = ServiceId::new("web").unwrap();
    let desired = |targets: &[(&Revision, u32)]| {
        deploykit_core::DesiredState::new(
            targets
                .iter()
                .map(|(r, n)| deploykit_core::RevisionTarget::new((*r).clone(), *n))
                .collect(),
            deploykit_core::Traffic::ByReadyInstances,
        )
    };
    let settle = |targets: Vec<(&Revision, u32)>| {
        let state = desired(&targets);
        let (local, service) = (&local, &service);
        async move {
            local.apply(service, &state).await.unwrap();
            local
                .wait_settled(service, Duration::from_millis(50), Duration::from_secs(20))
                .await
                .unwrap()
        }
    };
    let tokens = || {
        let mut out: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "out"))
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        out.sort();
        out
    };
    let observed = settle(vec![(&v1, 1)]).await;
    assert_eq!(observed.total_ready(), 1, "{observed:?}");
    assert_eq!(tokens(), ["tok-old"]);

    provider.reload(file("tok-new"));
    let new_version = provider.versions()["production.api_token"].clone();
    assert_ne!(new_version, old_version);
    let observed = settle(vec![(&v1, 2)]).await;
    assert_eq!(observed.total_ready(), 2, "{observed:?}");
    assert_eq!(
        tokens(),
        ["tok-old", "tok-old"],
        "v1's new instance gets the value v1 started with"
    );

    let with_stale = desired(&[(&v1, 2), (&stale, 1)]);
    local.apply(&service, &with_stale).await.unwrap();
    let observed = local.observe(&service).await.unwrap();
    let stale_obs = observed
        .revisions
        .iter()
        .find(|r| r.revision.id == stale.id)
        .expect("the stale revision");
    let failure = stale_obs.instances[0].failure.clone().expect("fails");
    assert_eq!(failure.kind, FailureKind::Configuration);
    assert!(
        failure.reason.contains(&format!(
            "secret production.api_token of variable API_TOKEN changed since the revision was \
             made (pinned version {old_version}, current version {new_version})"
        )),
        "{}",
        failure.reason
    );
    assert!(!failure.reason.contains("tok-"), "{}", failure.reason);
    assert_eq!(tokens().len(), 2, "the stale revision started nothing");
    local.shutdown(true).await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
