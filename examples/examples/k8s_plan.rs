//! Kubernetes plan: what deploykit would apply to a cluster mid-canary, rendered as YAML with
//! no cluster at all.
//!
//! Service `web` (port 8080, HTTP readiness and liveness probes, resources, variables) runs in
//! production as stable `v1` and canary `v2`, both pinned by sha256 image digest. Traffic is
//! split 75/25, and requests with `x-canary: always` go to `v2`. A Gateway API `HTTPRoute`
//! attaches to listener `https` of Gateway `gateway/public-gateway` for `shop.example.com`.
//! The example prints the namespace-wide objects (a LimitRange) and then the service's plan:
//! per-revision ConfigMaps and Deployments, the stable and canary Services, a
//! PodDisruptionBudget, a default-deny NetworkPolicy and the route. No autoscaler: with two
//! revisions the rollout owns replica counts.
//!
//! Run it with `cargo run -p deploykit-examples --example k8s_plan`.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use deploykit_core::{
    DesiredState, Digest, EnvironmentKind, EnvironmentSpec, HeaderRoute, HealthChecks, Probe,
    ProbeAction, Resources, Revision, RevisionTarget, Routes, ServiceSpec, Traffic, Weight,
};
use deploykit_examples::exit_code;
use deploykit_k8s::render::{self, NetworkOptions, ParentRef, Plan, RenderOptions, Router};

type Error = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    exit_code("k8s_plan", run())
}

fn run() -> Result<bool, Error> {
    let probe = |path: &str| {
        Probe::builder()
            .action(ProbeAction::http(path))
            .period(Duration::from_secs(5))
            .build()
    };
    let web = ServiceSpec::builder()
        .name("web")
        .port(8080)
        .variables(BTreeMap::from([("LOG_LEVEL".into(), "info".into())]))
        .health(
            HealthChecks::builder()
                .readiness(probe("/ready")?)
                .liveness(probe("/live")?)
                .build(),
        )
        .resources(
            Resources::builder()
                .cpu_request_millis(250)
                .cpu_limit_millis(1000)
                .memory_request_mib(256)
                .memory_limit_mib(512)
                .build(),
        )
        .build()?;
    let production = EnvironmentSpec::builder()
        .name("production")
        .kind(EnvironmentKind::Production)
        .replicas(4)
        .variables(BTreeMap::from([("REGION".into(), "eu-west-1".into())]))
        .build()?;
    let image = |hex: char| Digest::parse(&format!("sha256:{}", hex.to_string().repeat(64)));
    let v1 = Revision::new(&web, &production, image('1')?, "v1")?;
    let v2 = Revision::new(&web, &production, image('2')?, "v2")?;

    let mut routes = Routes::split(&v1.id, &v2.id, Weight::new(25)?);
    routes.header = Some(HeaderRoute::new("x-canary", "always", v2.id.clone()));
    let desired = DesiredState::new(
        vec![RevisionTarget::new(v1, 3), RevisionTarget::new(v2, 1)],
        Traffic::routed(routes),
    );

    let options = RenderOptions::new("shop")
        .image("web", "registry.example.com/shop/web")
        .router(Router::GatewayApi {
            parent: ParentRef::new("public-gateway")
                .in_namespace("gateway")
                .section("https"),
            hostnames: vec!["shop.example.com".into()],
        })
        .network(NetworkOptions {
            allow_from_namespaces: vec!["gateway".into()],
            ..NetworkOptions::default()
        });

    let namespace = Plan {
        objects: render::namespace_plan(&options),
    };
    let plan = render::plan(&web.name, &desired, &BTreeMap::new(), &options)?;
    print!("# namespace shop\n{}", namespace.to_yaml());
    print!("---\n# service web\n{}", plan.to_yaml());

    let summary: Vec<String> = plan
        .objects
        .iter()
        .map(|o| format!("{}/{}", o.kind(), o.name()))
        .collect();
    eprintln!("{} objects: {}", summary.len(), summary.join(", "));
    let route = plan.get("HTTPRoute", "web").map(|r| r.to_json());
    let weights = route.as_ref().map(|r| {
        let backends = &r["spec"]["rules"][1]["backendRefs"];
        (backends[0]["weight"].clone(), backends[1]["weight"].clone())
    });
    Ok(weights == Some((75.into(), 25.into()))
        && plan.get("Service", "web-canary").is_some()
        && plan.get("HorizontalPodAutoscaler", "web").is_none())
}
