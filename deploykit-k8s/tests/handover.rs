//! A warm standby in another namespace, over the in-memory API server: the core's
//! `WarmStandby` keeps namespace shop-dr running what shop serves (re-made with the standby's
//! settings, at one pod), scales it on failover, and `RouteHandover` points shop's HTTPRoute
//! at shop-dr's Service with a ReferenceGrant. Verification believes the Gateway, not the
//! apply: no status, a stale generation or `ResolvedRefs: False` (no grant) keep it failing.
//! A sync leaves a standby that took over alone; the primary's next deploy takes its route
//! back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use deploykit_core::environment::{RevisionTarget, Routes};
use deploykit_core::failover::{Handover, Synced, WarmStandby};
use deploykit_core::{
    DesiredState, Digest, Environment, EnvironmentKind, EnvironmentName, EnvironmentSpec, Revision,
    ServiceId, ServiceSpec, Traffic,
};
use deploykit_k8s::KubeEnvironment;
use deploykit_k8s::handover::{ANNOTATION_HANDED_OVER, RouteHandover};
use deploykit_k8s::render::{ParentRef, RenderOptions, Router};
use deploykit_testing::k8s::FakeApiServer;
use serde_json::{Value, json};

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
        parent: ParentRef::new("public").in_namespace("gateway"),
        hostnames: vec!["shop.example.com".into()],
    }
}

fn kube(server: &FakeApiServer, namespace: &str, router: Router) -> KubeEnvironment {
    let options = RenderOptions::new(namespace)
        .image("web", "registry.example.com/web")
        .router(router);
    KubeEnvironment::new(server.client(), options)
}

fn environment(name: &str, replicas: u32, site: &str) -> EnvironmentSpec {
    EnvironmentSpec::builder()
        .name(name)
        .kind(EnvironmentKind::Production)
        .replicas(replicas)
        .variables(BTreeMap::from([("SITE".into(), site.into())]))
        .build()
        .unwrap()
}

/// `replicas` pods of `label`, serving everything.
fn alone(env: &EnvironmentSpec, label: &str, replicas: u32) -> DesiredState {
    let revision = Arc::new(
        Revision::new(
            &web(),
            env,
            Digest::of_bytes(format!("web {label}").as_bytes()),
            label,
        )
        .unwrap(),
    );
    let routes = Routes::all_to(&revision.id);
    DesiredState::new(
        vec![RevisionTarget::new(revision, replicas)],
        Traffic::routed(routes),
    )
}

struct World {
    server: FakeApiServer,
    primary: KubeEnvironment,
    standby: KubeEnvironment,
    production: EnvironmentSpec,
    warm: WarmStandby,
}

fn world(router: Router) -> World {
    let server = FakeApiServer::new();
    let primary = kube(&server, "shop", router.clone());
    let standby = kube(&server, "shop-dr", router);
    let handover = RouteHandover::same_cluster(primary.clone(), standby.clone()).unwrap();
    let warm = WarmStandby::builder()
        .from_env(EnvironmentName::new("production").unwrap())
        .to_env(EnvironmentName::new("production-dr").unwrap())
        .from(Arc::new(primary.clone()))
        .to(Arc::new(standby.clone()))
        .to_spec(environment("production-dr", 3, "dr"))
        .warm(1)
        .services(vec![service()])
        .handover(Arc::new(handover))
        .starting_grace(Duration::from_millis(300))
        .build();
    World {
        server,
        primary,
        standby,
        production: environment("production", 3, "home"),
        warm,
    }
}

/// The Deployments of `namespace`: (name, replicas, the SITE variable of its ConfigMap).
fn deployments(server: &FakeApiServer, namespace: &str) -> Vec<(String, i64)> {
    server
        .objects("deployments")
        .iter()
        .filter(|d| d["metadata"]["namespace"] == namespace)
        .map(|d| {
            (
                d["metadata"]["name"].as_str().unwrap().to_string(),
                d["spec"]["replicas"].as_i64().unwrap_or(1),
            )
        })
        .collect()
}

/// What a Gateway controller writes: one parent with `Accepted` and `ResolvedRefs`.
fn gateway_says(server: &FakeApiServer, generation_offset: i64, resolved: (&str, &str)) {
    server.edit_object("httproutes", "shop", "web", |route| {
        let generation = route["metadata"]["generation"].as_i64().unwrap() + generation_offset;
        route["status"] = json!({ "parents": [{
            "parentRef": { "name": "public", "namespace": "gateway" },
            "controllerName": "example.com/gateway",
            "conditions": [
                { "type": "Accepted", "status": "True", "reason": "Accepted",
                  "message": "", "observedGeneration": generation,
                  "lastTransitionTime": "2026-12-06T00:00:00Z" },
                { "type": "ResolvedRefs", "status": resolved.0, "reason": resolved.1,
                  "message": "backendRef web/shop-dr is not permitted", "observedGeneration": generation,
                  "lastTransitionTime": "2026-12-06T00:00:00Z" },
            ],
        }]});
    });
}

#[tokio::test]
async fn a_standby_namespace_follows_takes_the_route_when_the_gateway_accepts_and_gives_it_back() {
    let w = world(gateway());
    let web = service();
    w.primary
        .apply(&web, &alone(&w.production, "v1", 3))
        .await
        .unwrap();

    // In step: the same build with the standby's settings, at one pod; then nothing to do.
    let synced = w.warm.sync().await.unwrap();
    assert!(
        matches!(&synced[0].1, Synced::Applied(r) if r.contains("v1")),
        "{synced:?}"
    );
    let standby_deployments = deployments(&w.server, "shop-dr");
    assert_eq!(standby_deployments.len(), 1, "{standby_deployments:?}");
    assert_eq!(standby_deployments[0].1, 1);
    let config: Vec<Value> = w
        .server
        .objects("configmaps")
        .into_iter()
        .filter(|c| c["metadata"]["namespace"] == "shop-dr")
        .collect();
    assert!(
        config.iter().any(|c| c["data"]["SITE"] == "dr"),
        "the standby's variables: {config:?}"
    );
    let again = w.warm.sync().await.unwrap();
    assert!(matches!(&again[0].1, Synced::InStep(_)), "{again:?}");

    let ready = w.warm.readiness().await.unwrap();
    assert!(
        ready.starts_with("namespace shop-dr answers: web v1 (1 ready)"),
        "{ready}"
    );

    // Failover: scaled to the standby's replicas, the primary's route handed over.
    let scaled = w.warm.scale(Duration::from_secs(10)).await.unwrap();
    assert!(scaled.contains("web v1 at 3 ready"), "{scaled}");
    let switched = w.warm.switch().await.unwrap();
    assert!(
        switched.contains("HTTPRoute shop/web sends every request to shop-dr/web"),
        "{switched}"
    );
    let route = w.server.object("httproutes", "shop", "web").unwrap();
    assert_eq!(
        route["spec"]["rules"],
        json!([{ "backendRefs": [{ "name": "web", "namespace": "shop-dr", "port": 80 }] }])
    );
    assert_eq!(
        route["spec"]["parentRefs"][0]["name"], "public",
        "the parent is kept"
    );
    assert_eq!(
        route["spec"]["hostnames"],
        json!(["shop.example.com"]),
        "the hostnames are kept"
    );
    assert_eq!(
        route["metadata"]["annotations"][ANNOTATION_HANDED_OVER],
        "shop-dr"
    );
    let grant = w
        .server
        .object("referencegrants", "shop-dr", "deploykit-handover-from-shop")
        .expect("a ReferenceGrant in the standby namespace");
    assert_eq!(
        grant["spec"]["from"],
        json!([{ "group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "shop" }])
    );
    assert_eq!(
        grant["spec"]["to"],
        json!([{ "group": "", "kind": "Service" }])
    );
    // Asked again (a resumed failover), the same.
    w.warm.switch().await.unwrap();
    assert_eq!(
        w.server.object("httproutes", "shop", "web").unwrap()["spec"]["rules"],
        route["spec"]["rules"]
    );

    // Verification believes the Gateway only.
    let e = w.warm.verify().await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(
        e.chain().contains("has no status from a Gateway yet"),
        "{e}"
    );
    gateway_says(&w.server, -1, ("True", "ResolvedRefs"));
    let e = w.warm.verify().await.unwrap_err();
    assert!(e.chain().contains("has not seen generation"), "{e}");
    gateway_says(&w.server, 0, ("False", "RefNotPermitted"));
    let e = w.warm.verify().await.unwrap_err();
    assert!(
        e.chain()
            .contains("reports ResolvedRefs False for HTTPRoute web: RefNotPermitted"),
        "{e}"
    );
    gateway_says(&w.server, 0, ("True", "ResolvedRefs"));
    let verified = w.warm.verify().await.unwrap();
    assert!(
        verified
            .contains("HTTPRoute shop/web accepted with its references resolved by Gateway public"),
        "{verified}"
    );

    // The standby serves now: a sync leaves it alone.
    let synced = w.warm.sync().await.unwrap();
    assert!(
        matches!(&synced[0].1, Synced::Skipped(why) if why.contains("namespace shop-dr")),
        "{synced:?}"
    );
    assert_eq!(deployments(&w.server, "shop-dr")[0].1, 3);

    // Failback: the primary's next deploy (even of the same build) takes its route back.
    w.primary
        .apply(&web, &alone(&w.production, "v1", 3))
        .await
        .unwrap();
    let route = w.server.object("httproutes", "shop", "web").unwrap();
    assert!(
        route["metadata"]["annotations"]
            .get(ANNOTATION_HANDED_OVER)
            .is_none(),
        "{route:#}"
    );
    assert_eq!(route["spec"]["rules"][0]["backendRefs"][0]["name"], "web");
    assert!(
        route["spec"]["rules"][0]["backendRefs"][0]
            .get("namespace")
            .is_none(),
        "{route:#}"
    );
    let handover = RouteHandover::same_cluster(w.primary.clone(), w.standby.clone()).unwrap();
    assert_eq!(handover.redirected(&web).await.unwrap(), None);
}

#[tokio::test]
async fn a_standby_that_cannot_take_over_is_said_so() {
    let w = world(gateway());
    let web = service();

    // Nothing synced yet: the standby runs nothing.
    let e = w.warm.readiness().await.unwrap_err();
    assert!(e.contains("production-dr runs no revision of web"), "{e}");

    // Its pods never become ready: unhealthy after the grace, naming the service.
    w.primary
        .apply(&web, &alone(&w.production, "v1", 3))
        .await
        .unwrap();
    w.warm.sync().await.unwrap();
    let pod = w
        .server
        .objects("pods")
        .into_iter()
        .find(|p| p["metadata"]["namespace"] == "shop-dr")
        .unwrap();
    w.server
        .set_pod_status(pod["metadata"]["name"].as_str().unwrap(), |status| {
            status["conditions"] = json!([{ "type": "Ready", "status": "False" }]);
        });
    let e = w.warm.readiness().await.unwrap_err();
    assert!(
        e.contains("web on production-dr has no ready instance"),
        "{e}"
    );

    // The standby namespace cannot be read: refused, saying why.
    w.server
        .fail_next("GET", "/api/v1/namespaces/shop-dr/services", 403, 1);
    let e = w.warm.readiness().await.unwrap_err();
    assert!(
        e.contains("the standby namespace shop-dr cannot be read"),
        "{e}"
    );

    // No route in the primary yet (never deployed there with a router): a retryable error
    // that says what to do, never a success.
    let fresh = world(gateway());
    let e = fresh.warm.switch().await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(
        e.chain()
            .contains("HTTPRoute web does not exist in namespace shop: deploy web there first"),
        "{e}"
    );

    // The same namespace twice is no standby.
    let server = FakeApiServer::new();
    let e = RouteHandover::same_cluster(
        kube(&server, "shop", gateway()),
        kube(&server, "shop", gateway()),
    )
    .unwrap_err();
    assert!(e.to_string().contains("another namespace"), "{e}");
}

#[tokio::test]
async fn istio_and_no_router_and_another_cluster() {
    // Istio: the VirtualService's destination is the standby's Service by cluster name.
    let w = world(Router::Istio {
        gateways: vec!["gateway/public".into()],
        hosts: vec!["shop.example.com".into()],
    });
    let web = service();
    w.primary
        .apply(&web, &alone(&w.production, "v1", 3))
        .await
        .unwrap();
    w.warm.sync().await.unwrap();
    w.warm.switch().await.unwrap();
    let vs = w.server.object("virtualservices", "shop", "web").unwrap();
    assert_eq!(
        vs["spec"]["http"],
        json!([{ "name": "primary", "route": [{ "destination": {
            "host": "web.shop-dr.svc.cluster.local", "port": { "number": 80 } } }] }])
    );
    assert_eq!(vs["spec"]["hosts"], json!(["shop.example.com"]));
    assert!(
        w.server.objects("referencegrants").is_empty(),
        "Istio needs no grant"
    );
    let verified = w.warm.verify().await.unwrap();
    assert!(
        verified.contains("routes to web.shop-dr.svc.cluster.local"),
        "{verified}"
    );

    // No router: nothing to point; the detail says where clients must go.
    let w = world(Router::None);
    w.primary
        .apply(&web, &alone(&w.production, "v1", 3))
        .await
        .unwrap();
    w.warm.sync().await.unwrap();
    let switched = w.warm.switch().await.unwrap();
    assert!(
        switched.contains("shop has no router; clients must reach web.shop-dr.svc.cluster.local"),
        "{switched}"
    );

    // Another cluster: its own route must be accepted there; clients move by the hook.
    let server = FakeApiServer::new();
    let standby = kube(&server, "shop", gateway());
    let handover = RouteHandover::other_cluster(standby.clone());
    let production_dr = environment("production-dr", 2, "dr");
    standby
        .apply(&web, &alone(&production_dr, "v1", 2))
        .await
        .unwrap();
    let switched = handover
        .hand_over(std::slice::from_ref(&web))
        .await
        .unwrap();
    assert!(
        switched.contains("the standby serves on its own cluster (hosts shop.example.com)"),
        "{switched}"
    );
    assert_eq!(handover.redirected(&web).await.unwrap(), None);
    let e = handover.check(&web, "/healthz").await.unwrap_err();
    assert!(e.chain().contains("no status from a Gateway"), "{e}");
    gateway_says(&server, 0, ("True", "ResolvedRefs"));
    handover.check(&web, "/healthz").await.unwrap();
}
