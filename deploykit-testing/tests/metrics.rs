//! deploykit's own metrics: what a canary rollout and its rollback count, per-registry
//! isolation, backup metrics, and the `/metrics` endpoint over real HTTP.

mod common;

use std::sync::Arc;
use std::time::Duration;

use deploykit_backup::{BackupKind, BackupRequest, RepoKey, RepoOptions, Repository};
use deploykit_core::analysis::{AnalysisSpec, Condition, MetricCheck};
use deploykit_core::strategy::{CanarySpec, CanaryStep};
use deploykit_core::{Orchestrator, Phase, StrategySpec};
use deploykit_telemetry::metrics::{MeteredStore, Metrics, serve};
use deploykit_testing::{MemoryStore, MemoryTarget, SimCluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The value of the sample line that starts with `prefix` (name and labels).
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(start_paused = true)]
async fn a_canary_and_its_rollback_are_counted() {
    let analysis = AnalysisSpec::new(vec![
        MetricCheck::threshold("error-rate", "error_rate", Condition::below(0.05))
            .interval(Duration::from_secs(30))
            .count(2)
            .build()
            .unwrap(),
    ])
    .unwrap();
    let canary = CanarySpec::builder()
        .steps(vec![
            CanaryStep::weight(20).unwrap(),
            CanaryStep::pause(Duration::from_secs(60)),
            CanaryStep::analysis(analysis),
            CanaryStep::weight(50).unwrap(),
        ])
        .build()
        .unwrap();
    let env = common::environment_with(4, StrategySpec::Canary(canary));
    let sim = SimCluster::new();
    let metrics = Arc::new(Metrics::new());
    // Fed, not called: the event stream counts rollouts, the store wrapper journal writes.
    let orch = Orchestrator::builder(MeteredStore::new(MemoryStore::new(), metrics.clone()))
        .environment_with_monitor(env.clone(), Arc::new(sim.clone()), Arc::new(sim.clone()))
        .clock(Arc::new(sim.clock()))
        .config(common::config())
        .notifier(metrics.clone())
        .open()
        .await
        .unwrap();
    let v1 = common::revision_in(&env, "v1");
    let v2 = common::revision_in(&env, "v2");
    sim.set_metric(&v1.service, Some(&v1.id), "error_rate", vec![0.01]);
    sim.set_metric(&v2.service, Some(&v2.id), "error_rate", vec![0.2]);
    assert_eq!(
        common::deploy_and_wait(&orch, "v1").await.1,
        Phase::Succeeded
    );
    assert_eq!(
        common::deploy_and_wait(&orch, "v2").await.1,
        Phase::RolledBack
    );

    // Notifiers are fed through their own queue: wait until the last event has been counted.
    let finished = r#"deploykit_deployments_finished_total{environment="production",strategy="canary",outcome="rolled_back"}"#;
    for _ in 0..1000 {
        if sample(&metrics.encode(), finished).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let text = metrics.encode();
    let labels = r#"{environment="production",strategy="canary"}"#;
    assert_eq!(
        sample(
            &text,
            &format!("deploykit_deployments_started_total{labels}")
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"deploykit_deployments_finished_total{environment="production",strategy="canary",outcome="rolled_back"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"deploykit_deployments_finished_total{environment="production",strategy="canary",outcome="succeeded"}"#
        ),
        Some(1.0)
    );
    assert!(
        sample(
            &text,
            r#"deploykit_analysis_measurements_total{environment="production",outcome="failed"}"#
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"deploykit_rollback_latency_seconds_count{environment="production"}"#
        ),
        Some(1.0)
    );
    // The switch-back is the first action of the rollback: no time passes on the paused clock.
    assert_eq!(
        sample(
            &text,
            r#"deploykit_rollback_latency_seconds_sum{environment="production"}"#
        ),
        Some(0.0)
    );
    assert!(
        sample(
            &text,
            &format!("deploykit_step_duration_seconds_count{labels}")
        )
        .unwrap_or(0.0)
            >= 2.0
    );
    assert_eq!(
        sample(
            &text,
            &format!("deploykit_rollout_duration_seconds_count{labels}")
        ),
        Some(2.0)
    );
    assert!(sample(&text, "deploykit_journal_write_seconds_count").unwrap_or(0.0) > 10.0);

    // A second registry in the same process counts nothing of this.
    let other = Metrics::new();
    assert_eq!(
        sample(&other.encode(), "deploykit_journal_write_seconds_count"),
        Some(0.0)
    );
}

#[tokio::test]
async fn backups_and_restores_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("app");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("a"), vec![3u8; 100_000]).unwrap();
    let metrics = Arc::new(Metrics::new());
    let options = RepoOptions::builder().kdf_cost((1024, 1)).build();
    let repo = Repository::init(
        Arc::new(MemoryTarget::new()),
        &RepoKey::passphrase("pw"),
        options,
    )
    .await
    .unwrap()
    .with_metrics(metrics.clone(), "production");
    let request = |kind| {
        BackupRequest::builder()
            .paths(vec![source.clone()])
            .kind(kind)
            .build()
    };
    repo.backup(request(BackupKind::Full)).await.unwrap();
    let (id, second) = repo.backup(request(BackupKind::Full)).await.unwrap();
    repo.restore(&id, &dir.path().join("out"), &Default::default())
        .await
        .unwrap();
    let text = metrics.encode();
    assert_eq!(
        sample(
            &text,
            r#"deploykit_backup_bytes_read_total{environment="production",kind="full"}"#
        ),
        Some(200_000.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"deploykit_backup_last_success_timestamp_seconds{environment="production"}"#
        ),
        Some(second.finished.as_millis() as f64 / 1000.0)
    );
    // The second full backup stored almost nothing new.
    assert!(
        sample(
            &text,
            r#"deploykit_backup_dedup_ratio{environment="production"}"#
        )
        .unwrap()
            > 10.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"deploykit_restore_bytes_total{environment="production"}"#
        ),
        Some(100_000.0)
    );
}

#[tokio::test]
async fn the_endpoint_serves_openmetrics_over_http() {
    let metrics = Arc::new(Metrics::new());
    metrics.observe_journal_write(Duration::from_millis(3));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, metrics));
    let get = |path: &'static str| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    };
    let ok = get("/metrics").await;
    assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
    assert!(ok.contains("Content-Type: application/openmetrics-text; version=1.0.0"));
    assert!(ok.contains("deploykit_journal_write_seconds_count 1"));
    assert!(ok.ends_with("# EOF\n"));
    assert!(get("/").await.starts_with("HTTP/1.1 404"));
}
