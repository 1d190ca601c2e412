//! Issue 14 J and K over the in-memory API server: a cluster without a router refuses canaries
//! and reports only the traffic its Services really route; autoscaled services are sized from
//! the HorizontalPodAutoscaler's live count, and the HPA is back after promotion and rollback.

use std::sync::Arc;
use std::time::Duration;

use deploykit_config::Config;
use deploykit_core::environment::Routes;
use deploykit_core::journal::JournalEvent;
use deploykit_core::strategy::{BlueGreenSpec, CanarySpec, CanaryStep};
use deploykit_core::{
    Actor, Autoscale, DeployRequest, DeploymentId, DesiredState, Digest, Environment,
    EnvironmentKind, EnvironmentSpec, Error, Orchestrator, OrchestratorConfig, Phase, Revision,
    RevisionTarget, ServiceId, ServiceSpec, StrategySpec, Traffic, TrafficSplit, Weight,
};
use deploykit_k8s::KubeEnvironment;
use deploykit_k8s::render::{ParentRef, RenderOptions, Router};
use deploykit_testing::MemoryStore;
use deploykit_testing::k8s::FakeApiServer;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

const NS: &str = "shop";

fn web() -> ServiceSpec {
    ServiceSpec::builder()
        .name("web")
        .port(8080)
        .build()
        .unwrap()
}

fn service() -> ServiceId {
    ServiceId::new("web").unwrap()
}

fn gateway() -> Router {
    Router::GatewayApi {
        parent: ParentRef::new("public"),
        hostnames: vec!["shop.example.com".into()],
    }
}

fn kube(server: &FakeApiServer, router: Router) -> KubeEnvironment {
    let options = RenderOptions::new(NS)
        .image("web", "registry.example.com/web")
        .router(router);
    KubeEnvironment::new(server.client(), options)
}

fn environment(strategy: StrategySpec, autoscale: Option<Autoscale>) -> EnvironmentSpec {
    let mut spec = EnvironmentSpec::builder()
        .name("production")
        .kind(EnvironmentKind::Production)
        .replicas(3)
        .strategy(strategy)
        .build()
        .unwrap();
    spec.autoscale = autoscale;
    spec
}

fn bounds() -> Autoscale {
    Autoscale::builder()
        .min_replicas(2)
        .max_replicas(10)
        .build()
}

fn canary(steps: Vec<CanaryStep>) -> StrategySpec {
    StrategySpec::Canary(
        CanarySpec::builder()
            .steps(steps)
            .scale_down_delay(Duration::from_millis(100))
            .build()
            .unwrap(),
    )
}

fn revision(env: &EnvironmentSpec, label: &str) -> Revision {
    Revision::new(&web(), env, artifact(label), label).unwrap()
}

fn artifact(label: &str) -> Digest {
    Digest::of_bytes(format!("web {label}").as_bytes())
}

/// `web-<first 8 hex digits>`, the revision's Deployment.
fn deployment_name(r: &Revision) -> String {
    format!("web-{}", &r.id.as_str()[..8])
}

fn request(label: &str) -> DeployRequest {
    DeployRequest::builder()
        .service(web())
        .environment("production")
        .artifact(artifact(label))
        .label(label)
        .requested_by(Actor::new("alice"))
        .build()
}

async fn open(env: &EnvironmentSpec, kube: &KubeEnvironment) -> Orchestrator {
    Orchestrator::builder(MemoryStore::new())
        .environment(env.clone(), Arc::new(kube.clone()))
        .config(
            OrchestratorConfig::builder()
                .poll_interval(Duration::from_millis(10))
                .build(),
        )
        .open()
        .await
        .unwrap()
}

async fn finish(orch: &Orchestrator, id: &DeploymentId) -> Phase {
    tokio::time::timeout(Duration::from_secs(30), orch.wait(id))
        .await
        .expect("the deployment ends within 30 s")
        .unwrap()
        .phase
}

/// Polls until `id` reaches canary step `step`, failing after 30 s.
async fn until_step(orch: &Orchestrator, id: &DeploymentId, step: usize) {
    for _ in 0..3000 {
        let status = orch.status(id).await.unwrap();
        assert!(!status.phase.is_terminal(), "{:?}", status.phase);
        if status.progress.step >= step {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{id} never reached step {step}");
}

/// What the HorizontalPodAutoscaler controller does: set a Deployment's replicas through the
/// scale subresource, as field manager `kube-controller-manager`.
async fn autoscaler_scales(server: &FakeApiServer, name: &str, replicas: u32) {
    let api: Api<Deployment> = Api::namespaced(server.client(), NS);
    let params = PatchParams {
        field_manager: Some("kube-controller-manager".into()),
        ..PatchParams::default()
    };
    api.patch_scale(
        name,
        &params,
        &Patch::Merge(json!({ "spec": { "replicas": replicas } })),
    )
    .await
    .unwrap();
}

fn replicas(server: &FakeApiServer, name: &str) -> Option<u64> {
    server
        .object("deployments", NS, name)
        .and_then(|d| d.pointer("/spec/replicas").and_then(Value::as_u64))
}

/// The HPA's target Deployment and bounds, if the HPA exists.
fn hpa(server: &FakeApiServer) -> Option<(String, u64, u64)> {
    let h = server.object("horizontalpodautoscalers", NS, "web")?;
    Some((
        h["spec"]["scaleTargetRef"]["name"].as_str()?.to_string(),
        h["spec"]["minReplicas"].as_u64()?,
        h["spec"]["maxReplicas"].as_u64()?,
    ))
}

/// The desired states the deployment journaled, oldest first.
async fn applied(orch: &Orchestrator, id: &DeploymentId) -> Vec<DesiredState> {
    orch.journal(id)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.event {
            JournalEvent::Applied { desired, .. } => Some(desired),
            _ => None,
        })
        .collect()
}

/// Every replica count written to Deployment `name` (by apply or scale), in order.
fn replica_writes(server: &FakeApiServer, name: &str) -> Vec<u64> {
    server
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with(&format!("/deployments/{name}")))
        .filter_map(|r| r.body.as_ref()?.pointer("/spec/replicas")?.as_u64())
        .collect()
}

// ------------------------------------------------------------------------------------------
// J: no router, no canary; observed traffic is what the cluster routes
// ------------------------------------------------------------------------------------------

/// A canary on a cluster without a router is refused at deploy time, naming the setting to
/// change; rolling and blue-green (whole switches) still run, and a router makes the canary
/// acceptable.
#[tokio::test]
async fn a_canary_without_a_router_is_refused_at_deploy_time() {
    let server = FakeApiServer::new();
    let plain = kube(&server, Router::None);
    assert!(matches!(
        plain.traffic_split(),
        TrafficSplit::WholeSwitch { .. }
    ));
    let steps = vec![
        CanaryStep::pause(Duration::from_secs(60)),
        CanaryStep::weight(20).unwrap(),
    ];
    let env = environment(canary(steps.clone()), None);
    let orch = open(&env, &plain).await;
    let err = orch.deploy(request("v1")).await.unwrap_err();
    let Error::InvalidSpec { field, reason } = &err else {
        panic!("expected InvalidSpec, got {err}");
    };
    assert_eq!(field, "strategy");
    for part in [
        "steps[1]: set_weight 20",
        "environment production",
        "Router::None",
        "RenderOptions::router",
        "Router::GatewayApi",
    ] {
        assert!(reason.contains(part), "{part:?} missing from: {reason}");
    }
    assert!(server.objects("deployments").is_empty(), "nothing applied");

    // Header routes and mirrors need a router too; weights of 0 and 100 do not.
    let header = StrategySpec::Canary(
        CanarySpec::builder()
            .steps(vec![CanaryStep::SetHeaderRoute {
                name: "x-canary".into(),
                value: "1".into(),
            }])
            .build()
            .unwrap(),
    );
    assert!(header.weighted_step().is_some());
    let whole = canary(vec![
        CanaryStep::weight(0).unwrap(),
        CanaryStep::weight(100).unwrap(),
    ]);
    assert_eq!(whole.weighted_step(), None);

    // Blue-green is a whole switch: it runs without a router.
    let blue_green = StrategySpec::BlueGreen(
        BlueGreenSpec::builder()
            .scale_down_delay(Duration::from_millis(100))
            .build()
            .unwrap(),
    );
    let mut request_bg = request("v1");
    request_bg.strategy = Some(blue_green.clone());
    let id = orch.deploy(request_bg).await.unwrap();
    assert_eq!(finish(&orch, &id).await, Phase::Succeeded);
    let mut request_bg = request("v2");
    request_bg.strategy = Some(blue_green);
    let id = orch.deploy(request_bg).await.unwrap();
    assert_eq!(finish(&orch, &id).await, Phase::Succeeded);
    let v2 = revision(&env, "v2");
    let observed = plain.observe(&service()).await.unwrap();
    assert_eq!(observed.weight_of(&v2.id), 100, "{observed:?}");

    // With a router the same canary is accepted.
    let routed = FakeApiServer::new();
    let orch = open(&env, &kube(&routed, gateway())).await;
    orch.deploy(request("v1")).await.unwrap();
}

/// Without a router, observe reports the traffic the stable Service really reaches — one
/// revision — not the weights last applied.
#[tokio::test]
async fn without_a_router_observe_reports_what_the_stable_service_reaches() {
    let server = FakeApiServer::new();
    let env = kube(&server, Router::None);
    let spec = environment(StrategySpec::default(), None);
    let (v1, v2) = (revision(&spec, "v1"), revision(&spec, "v2"));
    let split = Traffic::routed(Routes::split(&v1.id, &v2.id, Weight::new(20).unwrap()));
    let state = DesiredState::new(
        vec![
            RevisionTarget::new(v1.clone(), 3),
            RevisionTarget::new(v2.clone(), 1),
        ],
        split.clone(),
    );
    env.apply(&service(), &state).await.unwrap();
    let observed = env.observe(&service()).await.unwrap();
    assert_eq!(
        observed.routing, split,
        "the routing applied is reported as such"
    );
    assert_eq!(observed.weight_of(&v1.id), 100, "{:?}", observed.traffic);
    assert_eq!(observed.weight_of(&v2.id), 0, "{:?}", observed.traffic);

    // A whole switch is served as asked.
    let all_v2 = Traffic::routed(Routes::all_to(&v2.id));
    let state = DesiredState::new(
        vec![
            RevisionTarget::new(v1.clone(), 3),
            RevisionTarget::new(v2.clone(), 3),
        ],
        all_v2,
    );
    env.apply(&service(), &state).await.unwrap();
    let observed = env.observe(&service()).await.unwrap();
    assert_eq!(observed.weight_of(&v2.id), 100, "{:?}", observed.traffic);
}

/// With a Gateway API router, a route its Gateway rejects, or whose references it cannot
/// resolve, serves nothing, and the observation says why.
#[tokio::test]
async fn a_route_its_gateway_rejects_serves_nothing() {
    let server = FakeApiServer::new();
    let env = kube(&server, gateway());
    let spec = environment(StrategySpec::default(), None);
    let (v1, v2) = (revision(&spec, "v1"), revision(&spec, "v2"));
    let state = DesiredState::new(
        vec![
            RevisionTarget::new(v1.clone(), 3),
            RevisionTarget::new(v2.clone(), 1),
        ],
        Traffic::routed(Routes::split(&v1.id, &v2.id, Weight::new(25).unwrap())),
    );
    env.apply(&service(), &state).await.unwrap();
    let accepted = |status: &'static str| {
        move |route: &mut Value| {
            let generation = route["metadata"]["generation"].clone();
            route["status"] = json!({ "parents": [{
                "parentRef": { "name": "public" },
                "controllerName": "example.com/gateway",
                "conditions": [{
                    "type": "Accepted", "status": status, "reason": "NotAllowedByListeners",
                    "observedGeneration": generation,
                }],
            }]});
        }
    };
    server.edit_object("httproutes", NS, "web", accepted("False"));
    let observed = env.observe(&service()).await.unwrap();
    assert!(observed.traffic.is_empty(), "{:?}", observed.traffic);
    assert!(
        observed.summary().contains(
            "serving nothing: Gateway public reports Accepted False for HTTPRoute web: \
             NotAllowedByListeners"
        ),
        "{}",
        observed.summary()
    );

    server.edit_object("httproutes", NS, "web", accepted("True"));
    let observed = env.observe(&service()).await.unwrap();
    assert_eq!(
        (observed.weight_of(&v1.id), observed.weight_of(&v2.id)),
        (75, 25)
    );
    assert_eq!(observed.routing_problem, None);

    // Accepted, but a backend it cannot resolve (a Service in another namespace with no
    // ReferenceGrant, say): not served either, and said why.
    server.edit_object("httproutes", NS, "web", |route| {
        let generation = route["metadata"]["generation"].clone();
        route["status"]["parents"][0]["conditions"] = json!([
            { "type": "Accepted", "status": "True", "reason": "Accepted",
              "observedGeneration": generation },
            { "type": "ResolvedRefs", "status": "False", "reason": "RefNotPermitted",
              "message": "backendRef web-canary is not permitted", "observedGeneration": generation },
        ]);
    });
    let observed = env.observe(&service()).await.unwrap();
    assert!(observed.traffic.is_empty(), "{:?}", observed.traffic);
    assert!(
        observed
            .routing_problem
            .as_deref()
            .is_some_and(|p| p.contains("ResolvedRefs False for HTTPRoute web: RefNotPermitted")),
        "{observed:?}"
    );

    // What a Gateway said of an older generation is not believed, either way.
    server.edit_object("httproutes", NS, "web", |route| {
        let older = route["metadata"]["generation"].as_i64().unwrap() - 1;
        for c in route["status"]["parents"][0]["conditions"]
            .as_array_mut()
            .unwrap()
        {
            c["observedGeneration"] = json!(older);
        }
    });
    let observed = env.observe(&service()).await.unwrap();
    assert_eq!(observed.weight_of(&v1.id), 75, "{observed:?}");
}

// ------------------------------------------------------------------------------------------
// K: autoscaled services
// ------------------------------------------------------------------------------------------

/// The HPA scaled stable to 6 while the environment says 3: the canary never shrinks stable
/// below 6 and is sized from 6, follows the HPA when it scales stable again mid-rollout, and
/// the HPA targets the serving revision again after promotion and after a rollback.
#[tokio::test]
async fn a_canary_is_sized_from_the_autoscaler_and_leaves_it_in_place() {
    let server = FakeApiServer::new();
    let cluster = kube(&server, gateway());
    let steps = vec![
        CanaryStep::weight(25).unwrap(),
        CanaryStep::pause(Duration::from_millis(100)),
        CanaryStep::weight(50).unwrap(),
    ];
    let env = environment(canary(steps), Some(bounds()));
    let orch = open(&env, &cluster).await;
    let (v1, v2, v3) = (
        revision(&env, "v1"),
        revision(&env, "v2"),
        revision(&env, "v3"),
    );
    let (d1, d2, d3) = (
        deployment_name(&v1),
        deployment_name(&v2),
        deployment_name(&v3),
    );

    let id = orch.deploy(request("v1")).await.unwrap();
    assert_eq!(finish(&orch, &id).await, Phase::Succeeded);
    assert_eq!(hpa(&server), Some((d1.clone(), 2, 10)));
    assert_eq!(replicas(&server, &d1), Some(3));

    // Under load the HPA scales v1 to 6.
    autoscaler_scales(&server, &d1, 6).await;
    assert_eq!(
        cluster.observe(&service()).await.unwrap().autoscaled,
        Some(6)
    );
    server.clear_requests();
    let id = orch.deploy(request("v2")).await.unwrap();
    assert_eq!(finish(&orch, &id).await, Phase::Succeeded);

    let states = applied(&orch, &id).await;
    let stable: Vec<u32> = states
        .iter()
        .map(|d| d.replicas_of(&v1.id))
        .filter(|n| *n > 0)
        .collect();
    assert!(
        !stable.is_empty() && stable.iter().all(|n| *n >= 6),
        "{stable:?}"
    );
    let canary_sizes: Vec<u32> = states.iter().map(|d| d.replicas_of(&v2.id)).collect();
    assert_eq!(
        canary_sizes.first(),
        Some(&2),
        "⌈6 × 25 %⌉: {canary_sizes:?}"
    );
    assert_eq!(canary_sizes.iter().max(), Some(&6), "{canary_sizes:?}");
    assert!(
        states.iter().all(|d| d.autoscale == Some(bounds())),
        "the bounds ride along"
    );
    let writes = replica_writes(&server, &d1);
    assert!(
        writes.iter().all(|n| *n >= 6),
        "v1's replicas written: {writes:?}"
    );
    // After promotion the HPA scales v2, which runs at the live count; v1 is gone.
    assert_eq!(hpa(&server), Some((d2.clone(), 2, 10)));
    assert_eq!(replicas(&server, &d2), Some(6));
    assert!(server.object("deployments", NS, &d1).is_none());

    // v3 bakes at 50 % for a minute; meanwhile the HPA keeps scaling stable, and the canary
    // follows.
    server.clear_requests();
    let mut held = request("v3");
    held.strategy = Some(canary(vec![
        CanaryStep::weight(50).unwrap(),
        CanaryStep::pause(Duration::from_secs(60)),
    ]));
    let id = orch.deploy(held).await.unwrap();
    until_step(&orch, &id, 1).await;
    assert_eq!(
        hpa(&server),
        Some((d2.clone(), 2, 10)),
        "stable stays autoscaled"
    );
    assert_eq!(replicas(&server, &d3), Some(3), "⌈6 × 50 %⌉");
    autoscaler_scales(&server, &d2, 8).await;
    let mut followed = false;
    for _ in 0..500 {
        if replicas(&server, &d3) == Some(4) {
            followed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(followed, "the canary follows the live count: ⌈8 × 50 %⌉");
    assert_eq!(replicas(&server, &d2), Some(8));

    orch.abort(&id, Actor::new("alice"), "enough")
        .await
        .unwrap();
    assert_eq!(finish(&orch, &id).await, Phase::RolledBack);
    assert_eq!(
        hpa(&server),
        Some((d2.clone(), 2, 10)),
        "the HPA after the rollback"
    );
    assert_eq!(replicas(&server, &d2), Some(8));
    assert!(server.object("deployments", NS, &d3).is_none());
    let writes = replica_writes(&server, &d2);
    assert!(
        writes.iter().all(|n| *n >= 6),
        "v2's replicas written: {writes:?}"
    );
}

/// A rolling update suspends the HPA (no single revision serves) but keeps its count: the new
/// revision ends at the live 6, not the configured 3, and the HPA is back on it.
#[tokio::test]
async fn a_rolling_update_keeps_the_autoscaler_count_while_it_is_suspended() {
    let server = FakeApiServer::new();
    let cluster = kube(&server, gateway());
    let env = environment(StrategySpec::default(), Some(bounds()));
    let orch = open(&env, &cluster).await;
    let (v1, v2) = (revision(&env, "v1"), revision(&env, "v2"));
    let (d1, d2) = (deployment_name(&v1), deployment_name(&v2));

    let id = orch.deploy(request("v1")).await.unwrap();
    assert_eq!(finish(&orch, &id).await, Phase::Succeeded);
    autoscaler_scales(&server, &d1, 6).await;
    server.clear_requests();

    let id = orch.deploy(request("v2")).await.unwrap();
    assert_eq!(finish(&orch, &id).await, Phase::Succeeded);
    let targets: Vec<u32> = applied(&orch, &id)
        .await
        .iter()
        .map(|d| d.replicas_of(&v2.id))
        .collect();
    assert_eq!(targets.iter().max(), Some(&6), "{targets:?}");
    assert_eq!(replicas(&server, &d2), Some(6));
    assert_eq!(hpa(&server), Some((d2.clone(), 2, 10)));
    let requests = server.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.method == "DELETE" && r.path.ends_with("/horizontalpodautoscalers/web")),
        "suspended during the update"
    );
    assert!(
        requests
            .iter()
            .filter_map(|r| r.body.as_ref())
            .filter_map(|b| b.pointer("/metadata/annotations/deploykit.dev~1autoscaled-replicas"))
            .all(|n| n == "6"),
        "the count recorded meanwhile"
    );
}

/// The environment reports the HPA's count within its bounds; turning autoscaling on for a
/// running revision keeps its replicas (deploykit's apply drops them only once another field
/// manager holds them), and turning it off takes them back from the HPA.
#[tokio::test]
async fn autoscaling_on_and_off_keeps_the_replicas_and_observe_reports_the_live_count() {
    let server = FakeApiServer::new();
    let cluster = kube(&server, gateway());
    let spec = environment(StrategySpec::default(), None);
    let v1 = revision(&spec, "v1");
    let d1 = deployment_name(&v1);
    let plain = DesiredState::new(
        vec![RevisionTarget::new(v1.clone(), 3)],
        Traffic::ByReadyInstances,
    );
    cluster.apply(&service(), &plain).await.unwrap();
    assert_eq!(cluster.observe(&service()).await.unwrap().autoscaled, None);
    assert_eq!(server.objects("pods").len(), 3);

    let autoscaled = plain.clone().with_autoscale(Some(bounds()));
    cluster.apply(&service(), &autoscaled).await.unwrap();
    assert_eq!(replicas(&server, &d1), Some(3));
    assert_eq!(server.objects("pods").len(), 3);
    assert_eq!(hpa(&server), Some((d1.clone(), 2, 10)));
    assert_eq!(
        cluster.observe(&service()).await.unwrap().autoscaled,
        Some(3)
    );

    // The HPA may go past what deploykit would allow only within its bounds.
    autoscaler_scales(&server, &d1, 12).await;
    assert_eq!(
        cluster.observe(&service()).await.unwrap().autoscaled,
        Some(10)
    );
    // Applying again does not fight the HPA over its target.
    cluster.apply(&service(), &autoscaled).await.unwrap();
    assert_eq!(replicas(&server, &d1), Some(12));

    // Off again: the HPA goes and deploykit's count is back, although the HPA's controller
    // still owns the field.
    cluster.apply(&service(), &plain).await.unwrap();
    assert_eq!(hpa(&server), None);
    assert_eq!(replicas(&server, &d1), Some(3));
    let observed = cluster.observe(&service()).await.unwrap();
    assert_eq!((observed.autoscaled, observed.total_ready()), (None, 3));
}

/// `autoscale` in deploykit.toml reaches the cluster: the HPA carries its bounds.
#[tokio::test]
async fn autoscale_from_deploykit_toml_reaches_the_cluster() {
    let config = Config::from_toml_str(
        "deploykit.toml",
        r#"application = "shop"

[services.web]
image = "registry.example.com/web"
port = 8080

[environments.production]
kind = "production"
replicas = 3
autoscale = { min_replicas = 2, max_replicas = 8, target_cpu_percent = 60 }
"#,
    )
    .unwrap();
    let env = config.environment("production").unwrap().clone();
    let server = FakeApiServer::new();
    let orch = open(&env, &kube(&server, gateway())).await;
    let mut first = request("v1");
    first.service = config.service("web").unwrap().clone();
    let id = orch.deploy(first).await.unwrap();
    assert_eq!(finish(&orch, &id).await, Phase::Succeeded);
    let h = server
        .object("horizontalpodautoscalers", NS, "web")
        .expect("an HPA from the file's autoscale");
    assert_eq!(h["spec"]["minReplicas"], 2);
    assert_eq!(h["spec"]["maxReplicas"], 8);
    assert_eq!(
        h["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
        60
    );
}

/// v1 at 2 pods serving everything, 10 % of its requests mirrored to v2 (1 pod); and v1.
fn mirrored_10_percent(spec: &EnvironmentSpec) -> (Revision, DesiredState) {
    let (v1, v2) = (revision(spec, "v1"), revision(spec, "v2"));
    let mut routes = Routes::all_to(&v1.id);
    routes.mirror = Some(deploykit_core::environment::Mirror::new(
        v2.id.clone(),
        Weight::new(10).unwrap(),
    ));
    let state = DesiredState::new(
        vec![
            RevisionTarget::new(v1.clone(), 2),
            RevisionTarget::new(v2, 1),
        ],
        Traffic::routed(routes),
    );
    (v1, state)
}

/// Seen: on a cluster whose Gateway API predates `requestMirror.percent` (v1.2), the field was
/// dropped without a word and every request mirrored. deploykit applies with
/// `fieldValidation=Strict`, so such a cluster refuses the route, naming the field, and the
/// mirror is never silently widened.
#[tokio::test]
async fn a_field_the_cluster_does_not_know_is_refused_never_dropped() {
    let server = FakeApiServer::new();
    server.undeclare_field("httproutes", "spec.rules.*.filters.*.requestMirror.percent");
    let env = kube(&server, gateway());
    let spec = environment(StrategySpec::default(), None);
    let (v1, state) = mirrored_10_percent(&spec);
    let e = env.apply(&service(), &state).await.unwrap_err();
    assert!(
        e.chain().contains(
            ".spec.rules[0].filters[0].requestMirror.percent: field not declared in schema"
        ),
        "{}",
        e.chain()
    );
    // Every write deploykit sends is a strict server-side apply.
    let patches: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    assert!(!patches.is_empty());
    for r in patches {
        assert_eq!(
            r.param("fieldValidation").as_deref(),
            Some("Strict"),
            "{}",
            r.path
        );
    }
    // Without the mirror, the same cluster takes the route.
    let plain = DesiredState::new(
        vec![RevisionTarget::new(v1.clone(), 2)],
        Traffic::routed(Routes::all_to(&v1.id)),
    );
    env.apply(&service(), &plain).await.unwrap();
}

/// A mesh policy's objects are applied with the service (the ServiceAccount before the pods
/// that run as it) and go with it.
#[tokio::test]
async fn a_mesh_policy_is_applied_and_torn_down_with_the_service() {
    use deploykit_k8s::render::{Caller, MeshPolicy};
    let server = FakeApiServer::new();
    let options = RenderOptions::new(NS)
        .image("web", "registry.example.com/web")
        .router(gateway())
        .mesh_policy(MeshPolicy::default().allow(vec![Caller::Service("api".into())]));
    let env = KubeEnvironment::new(server.client(), options);
    let spec = environment(StrategySpec::default(), None);
    let v1 = revision(&spec, "v1");
    let state = DesiredState::new(
        vec![RevisionTarget::new(v1.clone(), 2)],
        Traffic::routed(Routes::all_to(&v1.id)),
    );
    env.apply(&service(), &state).await.unwrap();
    for plural in [
        "serviceaccounts",
        "peerauthentications",
        "authorizationpolicies",
        "destinationrules",
    ] {
        assert!(
            server.object(plural, NS, "web").is_some(),
            "{plural} web was applied"
        );
    }
    let writes: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| r.path)
        .collect();
    let account = writes
        .iter()
        .position(|p| p.contains("/serviceaccounts/"))
        .unwrap();
    let deployment = writes
        .iter()
        .position(|p| p.contains("/deployments/"))
        .unwrap();
    assert!(account < deployment, "{writes:#?}");
    let pods = server.objects("pods");
    assert!(
        pods.iter()
            .all(|p| p["spec"]["serviceAccountName"] == "web")
    );

    env.teardown(&service()).await.unwrap();
    for plural in [
        "serviceaccounts",
        "peerauthentications",
        "authorizationpolicies",
        "destinationrules",
    ] {
        assert!(
            server.object(plural, NS, "web").is_none(),
            "{plural} web is gone"
        );
    }
}

/// The cluster's Gateway API version decides up front: on v1.2 (whose HTTPRoute has no mirror
/// percentage) a partial mirror is refused before anything is applied, saying why; on v1.3 it
/// is applied.
#[tokio::test]
async fn a_partial_mirror_is_refused_up_front_on_a_gateway_api_that_lacks_it() {
    let crd = |version: &str| {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {
                "name": "httproutes.gateway.networking.k8s.io",
                "annotations": { "gateway.networking.k8s.io/bundle-version": version },
            },
            "spec": {},
        })
    };
    let resource = kube::api::ApiResource {
        group: "apiextensions.k8s.io".into(),
        version: "v1".into(),
        api_version: "apiextensions.k8s.io/v1".into(),
        kind: "CustomResourceDefinition".into(),
        plural: "customresourcedefinitions".into(),
    };
    for (version, refused) in [("v1.2.1", true), ("v1.3.0", false)] {
        let server = FakeApiServer::new();
        let crds: Api<kube::api::DynamicObject> = Api::all_with(server.client(), &resource);
        crds.patch(
            "httproutes.gateway.networking.k8s.io",
            &PatchParams::apply("gateway-api-install"),
            &Patch::Apply(crd(version)),
        )
        .await
        .unwrap();
        server.clear_requests();
        let env = kube(&server, gateway());
        let spec = environment(StrategySpec::default(), None);
        let (_, state) = mirrored_10_percent(&spec);
        let result = env.apply(&service(), &state).await;
        if refused {
            let e = result.unwrap_err();
            assert!(
                e.to_string()
                    .contains("this cluster's Gateway API is v1.2.1")
                    && e.to_string()
                        .contains("a mirror of 10 % would copy every request"),
                "{e}"
            );
            assert!(
                server.requests().iter().all(|r| r.method != "PATCH"),
                "nothing applied"
            );
        } else {
            result.unwrap();
            let route = server.object("httproutes", NS, "web").unwrap();
            assert_eq!(
                route["spec"]["rules"][0]["filters"][0]["requestMirror"]["percent"],
                10
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// Ingress router, TLS and secrets as files
// ------------------------------------------------------------------------------------------

fn ingress() -> Router {
    Router::ingress("apps.example.com", "ingress-nginx").class("nginx")
}

/// An Ingress has no weights: the environment answers a whole switch (the orchestrator refuses
/// a canary that splits, naming the router), and observe reports what the stable Service
/// reaches — and nothing while the Ingress is missing or no controller has admitted it.
#[tokio::test]
async fn an_ingress_serves_only_the_stable_revision_once_its_controller_admitted_it() {
    let server = FakeApiServer::new();
    let env = kube(&server, ingress());
    let TrafficSplit::WholeSwitch { reason } = env.traffic_split() else {
        panic!("an Ingress cannot split");
    };
    assert!(reason.contains("Router::Ingress"), "{reason}");
    let spec = environment(canary(vec![CanaryStep::weight(20).unwrap()]), None);
    let orch = open(&spec, &env).await;
    let err = orch.deploy(request("v1")).await.unwrap_err().to_string();
    assert!(err.contains("has no weights"), "{err}");

    let (v1, v2) = (revision(&spec, "v1"), revision(&spec, "v2"));
    let split = Traffic::routed(Routes::split(&v1.id, &v2.id, Weight::new(20).unwrap()));
    let state = DesiredState::new(
        vec![
            RevisionTarget::new(v1.clone(), 3),
            RevisionTarget::new(v2.clone(), 1),
        ],
        split.clone(),
    );
    env.apply(&service(), &state).await.unwrap();
    let ingress = server.object("ingresses", NS, "web").unwrap();
    assert_eq!(
        ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"],
        "web"
    );
    // Not admitted yet: nothing is served, and the observation says why.
    let observed = env.observe(&service()).await.unwrap();
    assert_eq!(observed.routing, split);
    assert!(observed.traffic.is_empty(), "{:?}", observed.traffic);
    assert!(
        observed.summary().contains(
            "serving nothing: Ingress shop/web has no address in status.loadBalancer.ingress: \
             no controller of IngressClass nginx has admitted it yet"
        ),
        "{}",
        observed.summary()
    );
    // The controller publishes its address: the stable revision (largest weight) takes all,
    // never the 20 % the Ingress cannot apply.
    server.edit_object("ingresses", NS, "web", |ing| {
        ing["status"] = json!({ "loadBalancer": { "ingress": [{ "ip": "203.0.113.7" }] } });
    });
    let observed = env.observe(&service()).await.unwrap();
    assert_eq!(observed.routing_problem, None);
    assert_eq!(
        (observed.weight_of(&v1.id), observed.weight_of(&v2.id)),
        (100, 0),
        "{:?}",
        observed.traffic
    );
    // A whole switch is served as asked, by the same Ingress.
    let all_v2 = DesiredState::new(
        vec![
            RevisionTarget::new(v1.clone(), 3),
            RevisionTarget::new(v2.clone(), 3),
        ],
        Traffic::routed(Routes::all_to(&v2.id)),
    );
    env.apply(&service(), &all_v2).await.unwrap();
    let observed = env.observe(&service()).await.unwrap();
    assert_eq!(observed.weight_of(&v2.id), 100, "{observed:?}");
    // Deleted behind deploykit's back: not served until applied again.
    let api: Api<k8s_openapi::api::networking::v1::Ingress> = Api::namespaced(server.client(), NS);
    api.delete("web", &Default::default()).await.unwrap();
    let observed = env.observe(&service()).await.unwrap();
    assert!(observed.traffic.is_empty(), "{observed:?}");
    assert!(
        observed
            .routing_problem
            .as_deref()
            .is_some_and(|p| p.contains("Ingress shop/web does not exist")),
        "{observed:?}"
    );

    env.teardown(&service()).await.unwrap();
    assert!(server.objects("ingresses").is_empty());
}

/// TLS objects and secret files are applied with the service (the Certificate before the
/// Ingress that serves its Secret) and go with it; a Gateway of another namespace gets its
/// ReferenceGrant, which goes too.
#[tokio::test]
async fn tls_and_secret_files_are_applied_and_torn_down_with_the_service() {
    use deploykit_core::secrets::SecretString;
    use deploykit_k8s::render::{Issuer, IssuerKind, RouteTls};
    use deploykit_secrets::{FileSecretProvider, Identity, SecretsFile};

    let me = Identity::generate();
    let mut file = SecretsFile::create(&[me.to_recipient()]).unwrap();
    file.set(
        "production.database_url",
        SecretString::from("postgres://db"),
    )
    .unwrap();
    let provider = FileSecretProvider::new("secrets.toml", file);
    let server = FakeApiServer::new();
    let options = RenderOptions::new(NS)
        .image("web", "registry.example.com/web")
        .router(ingress())
        .tls(RouteTls::cert_manager(Issuer::new(
            IssuerKind::ClusterIssuer,
            "letsencrypt",
        )))
        .secret_files("/run/secrets/app");
    let env =
        KubeEnvironment::new(server.client(), options).with_secrets(Arc::new(provider.clone()));
    let with_secret = ServiceSpec::builder()
        .name("web")
        .port(8080)
        .secrets(std::collections::BTreeMap::from([(
            "DATABASE_URL".into(),
            "production.database_url".into(),
        )]))
        .build()
        .unwrap();
    let spec = environment(StrategySpec::default(), None);
    let v1 = Revision::new(&with_secret, &spec, artifact("v1"), "v1")
        .unwrap()
        .pin_secrets(&provider)
        .await
        .unwrap();
    let state = DesiredState::new(
        vec![RevisionTarget::new(v1.clone(), 2)],
        Traffic::routed(Routes::all_to(&v1.id)),
    );
    env.apply(&service(), &state).await.unwrap();
    let cert = server.object("certificates", NS, "web").unwrap();
    assert_eq!(cert["spec"]["secretName"], "web-tls");
    assert_eq!(cert["spec"]["issuerRef"]["kind"], "ClusterIssuer");
    let ingress = server.object("ingresses", NS, "web").unwrap();
    assert_eq!(ingress["spec"]["tls"][0]["secretName"], "web-tls");
    let writes: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| r.path)
        .collect();
    let cert_at = writes
        .iter()
        .position(|p| p.contains("/certificates/"))
        .unwrap();
    let ingress_at = writes
        .iter()
        .position(|p| p.contains("/ingresses/"))
        .unwrap();
    assert!(cert_at < ingress_at, "{writes:#?}");
    let deployment = server
        .object("deployments", NS, &format!("web-{}", &v1.id.as_str()[..8]))
        .unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["volumes"][1]["secret"]["defaultMode"], 0o400);
    assert_eq!(pod["containers"][0]["volumeMounts"][1]["readOnly"], true);
    assert!(!deployment.to_string().contains("secretKeyRef"));

    env.teardown(&service()).await.unwrap();
    assert!(server.object("certificates", NS, "web").is_none());
    assert!(server.object("ingresses", NS, "web").is_none());

    // Gateway API in another namespace: the grant is applied and goes with the service.
    let server = FakeApiServer::new();
    let options = RenderOptions::new(NS)
        .image("web", "registry.example.com/web")
        .router(Router::GatewayApi {
            parent: ParentRef::new("public").in_namespace("gateway"),
            hostnames: vec!["shop.example.com".into()],
        })
        .tls(RouteTls::secret("shop-cert"));
    let env = KubeEnvironment::new(server.client(), options);
    let v1 = revision(&spec, "v1");
    let state = DesiredState::new(
        vec![RevisionTarget::new(v1.clone(), 1)],
        Traffic::routed(Routes::all_to(&v1.id)),
    );
    env.apply(&service(), &state).await.unwrap();
    let grant = server.object("referencegrants", NS, "web").unwrap();
    assert_eq!(grant["spec"]["from"][0]["namespace"], "gateway");
    assert_eq!(grant["spec"]["to"][0]["name"], "shop-cert");
    assert!(
        server.objects("certificates").is_empty(),
        "the user's Secret"
    );
    env.teardown(&service()).await.unwrap();
    assert!(server.object("referencegrants", NS, "web").is_none());
}

/// Behind an Istio router without a mesh policy, a revision's circuit breaker is applied as
/// the DestinationRule `web`, and pruned once the serving revision has none.
#[tokio::test]
async fn a_circuit_breaker_s_destination_rule_is_applied_and_pruned_with_it() {
    use deploykit_core::{CircuitBreaker, TrafficPolicy};
    let server = FakeApiServer::new();
    let istio = Router::Istio {
        gateways: vec!["mesh".into()],
        hosts: vec!["web".into()],
    };
    let env = kube(&server, istio);
    let spec = environment(StrategySpec::default(), None);
    let mut guarded = web();
    guarded.traffic = TrafficPolicy::builder()
        .circuit_breaker(CircuitBreaker::builder().max_requests(32).build())
        .build()
        .unwrap();
    let v1 = Revision::new(&guarded, &spec, artifact("v1"), "v1").unwrap();
    let v2 = revision(&spec, "v2");
    let state = |serving: &Revision| {
        DesiredState::new(
            vec![
                RevisionTarget::new(v1.clone(), 1),
                RevisionTarget::new(v2.clone(), 1),
            ],
            Traffic::routed(Routes::all_to(&serving.id)),
        )
    };
    env.apply(&service(), &state(&v1)).await.unwrap();
    let rule = server
        .object("destinationrules", NS, "web")
        .expect("the breaker's DestinationRule was applied");
    assert_eq!(
        rule["spec"]["trafficPolicy"]["connectionPool"]["http"]["http2MaxRequests"],
        32
    );
    env.apply(&service(), &state(&v2)).await.unwrap();
    assert!(
        server.object("destinationrules", NS, "web").is_none(),
        "v2 has no breaker: the rule is pruned"
    );
}
