//! Against a real cluster: `KUBECONFIG=… cargo test -p deploykit-k8s --test cluster --
//! --ignored`. Creates a namespace, rolls `nginxinc/nginx-unprivileged` from one tag to another
//! blue-green through the orchestrator (there is no router, which serves whole switches only: a
//! canary would be refused), and deletes the namespace again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deploykit_core::strategy::BlueGreenSpec;
use deploykit_core::{
    Actor, DeployRequest, Digest, Environment, EnvironmentKind, EnvironmentSpec, Orchestrator,
    Phase, ServiceSpec, StrategySpec,
};
use deploykit_core::{HealthChecks, Probe, ProbeAction};
use deploykit_k8s::KubeEnvironment;
use deploykit_k8s::render::{RenderOptions, Router};
use deploykit_sqlite::SqliteStore;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs cluster"]
async fn blue_green_of_nginx_through_the_orchestrator() {
    if std::env::var_os("KUBECONFIG").is_none() {
        eprintln!("KUBECONFIG is not set; skipping");
        return;
    }
    let client = kube::Client::try_default().await.expect("kube client");
    let suffix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let namespace = format!("deploykit-test-{suffix}");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut ns = Namespace::default();
    ns.metadata.name = Some(namespace.clone());
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");

    let outcome = run(client, &namespace).await;

    namespaces
        .delete(&namespace, &DeleteParams::background())
        .await
        .expect("delete namespace");
    outcome.expect("blue-green through the orchestrator");
}

async fn run(client: kube::Client, namespace: &str) -> Result<(), BoxError> {
    let probe = || {
        Probe::builder()
            .action(ProbeAction::http("/"))
            .period(Duration::from_secs(2))
            .build()
    };
    let web = ServiceSpec::builder()
        .name("web")
        .port(8080)
        .health(
            HealthChecks::builder()
                .readiness(probe()?)
                .liveness(probe()?)
                .startup(probe()?)
                .build(),
        )
        .build()?;
    let blue_green = BlueGreenSpec::builder()
        .scale_down_delay(Duration::from_secs(5))
        .build()?;
    let production = EnvironmentSpec::builder()
        .name("production")
        .kind(EnvironmentKind::Production)
        .replicas(2)
        .strategy(StrategySpec::BlueGreen(blue_green))
        .build()?;

    let options = RenderOptions::new(namespace)
        .image("web", "nginxinc/nginx-unprivileged")
        .router(Router::None);
    let env = KubeEnvironment::new(client, options);
    env.ensure_namespace_objects().await?;
    let watch = env.start_watching();
    let orchestrator = Orchestrator::builder(SqliteStore::open(":memory:").await?)
        .environment(production, Arc::new(env.clone()))
        .open()
        .await?;

    // Labels are image tags: the image is not pinned by digest (the artifact digests are not
    // `sha256:`), so each revision runs `nginxinc/nginx-unprivileged:<label>`.
    let request = |label: &str| {
        DeployRequest::builder()
            .service(web.clone())
            .environment("production")
            .artifact(Digest::of_bytes(format!("nginx {label}").as_bytes()))
            .label(label)
            .requested_by(Actor::new("cluster-test"))
            .build()
    };
    let mut phases = BTreeMap::new();
    for label in ["stable-alpine", "mainline-alpine"] {
        let id = orchestrator.deploy(request(label)).await?;
        let status = tokio::time::timeout(Duration::from_secs(600), orchestrator.wait(&id))
            .await
            .map_err(|_| format!("{label} did not finish in 10 minutes"))??;
        phases.insert(label, status.phase);
    }
    assert_eq!(phases["stable-alpine"], Phase::Succeeded);
    assert_eq!(phases["mainline-alpine"], Phase::Succeeded);

    let observed = env.observe(&web.name).await?;
    assert_eq!(observed.revisions.len(), 1, "{}", observed.summary());
    assert_eq!(observed.revisions[0].revision.label, "mainline-alpine");
    assert_eq!(observed.total_ready(), 2, "{}", observed.summary());

    env.teardown(&web.name).await?;
    watch.abort();
    orchestrator.shutdown().await?;
    Ok(())
}
