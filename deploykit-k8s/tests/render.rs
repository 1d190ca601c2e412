//! Rendering tests: golden YAML per strategy, schema round trips, restricted pod security,
//! minimal diffs between canary steps, errors, and secret redaction.
//!
//! Golden files live in `tests/golden/<name>.yaml`; `UPDATE_GOLDEN=1 cargo test -p
//! deploykit-k8s --test render` rewrites them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use deploykit_core::secrets::SecretString;
use deploykit_core::{
    Autoscale, CircuitBreaker, DesiredState, Digest, HeaderRoute, HealthChecks, Mirror, Probe,
    ProbeAction, Protocol, Retries, Revision, RevisionTarget, Routes, ServiceSpec, Traffic,
    TrafficPolicy, Weight,
};
use deploykit_k8s::render::{
    self, ANNOTATION_AUTOSCALE, ANNOTATION_REVISION_SPEC, ANNOTATION_TRAFFIC, Caller, EgressPeer,
    EgressRule, Issuer, IssuerKind, LABEL_MANAGED_BY, LABEL_NAME, LABEL_REVISION, MANAGED_BY, Mesh,
    MeshPolicy, NetworkOptions, Object, ParentRef, Plan, Quota, RenderOptions, RouteTls, Router,
    SecretValues,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{
    ConfigMap, LimitRange, ResourceQuota, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

mod fixtures;

use fixtures::*;

fn letsencrypt() -> RouteTls {
    RouteTls::cert_manager(Issuer::new(IssuerKind::ClusterIssuer, "letsencrypt"))
}

fn canary_routes(percent: u32) -> Routes {
    let (v1, v2) = revisions();
    let mut routes = Routes::split(&v1.id, &v2.id, Weight::new(percent).unwrap());
    routes.header = Some(HeaderRoute::new("x-canary", "always", v2.id.clone()));
    routes
}

fn two(traffic: Traffic) -> DesiredState {
    let (v1, v2) = revisions();
    DesiredState::new(
        vec![RevisionTarget::new(v1, 3), RevisionTarget::new(v2, 1)],
        traffic,
    )
}

fn render(desired: &DesiredState, options: &RenderOptions) -> Plan {
    let (v1, v2) = revisions();
    let secrets = secrets_for(&[&v1, &v2]);
    render::plan(&web().name, desired, &secrets, options).unwrap()
}

/// The plans the golden files hold.
fn scenarios() -> Vec<(&'static str, Plan)> {
    let (v1, v2) = revisions();
    let autoscale = Autoscale::builder().min_replicas(2).max_replicas(6).build();
    let rolling = options(gateway());
    let one = DesiredState::new(
        vec![RevisionTarget::new(v1.clone(), 3)],
        Traffic::ByReadyInstances,
    )
    .with_autoscale(Some(autoscale.clone()));
    let mut blue_green = Routes::all_to(&v1.id);
    blue_green.preview = Some(v2.id.clone());
    let mut preview = Routes::all_to(&v1.id);
    preview.preview = Some(v2.id.clone());
    vec![
        ("rolling_one", render(&one, &rolling)),
        (
            "rolling_two",
            render(
                &two(Traffic::ByReadyInstances).with_autoscale(Some(autoscale)),
                &rolling,
            ),
        ),
        (
            "blue_green",
            render(&two(Traffic::routed(blue_green)), &options(gateway())),
        ),
        (
            "canary_gateway",
            render(
                &two(Traffic::routed(canary_routes(25))),
                &options(gateway()),
            ),
        ),
        (
            "canary_istio",
            render(&two(Traffic::routed(canary_routes(25))), &options(istio())),
        ),
        (
            "preview_istio",
            render(&two(Traffic::routed(preview.clone())), &options(istio())),
        ),
        (
            "ingress_tls",
            render(
                &two(Traffic::routed(preview)),
                &options(ingress()).tls(letsencrypt()),
            ),
        ),
    ]
}

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.yaml"));
    if std::env::var("UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    if expected != actual {
        let line = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs from the rendering at line {}:\n  golden:   {:?}\n  rendered: {:?}\n\
             rerun with UPDATE_GOLDEN=1 and review the diff if the change is intended",
            path.display(),
            line + 1,
            expected.lines().nth(line),
            actual.lines().nth(line)
        );
    }
}

/// Every selector over a service's pods (Services, NetworkPolicies, the disruption budget,
/// Istio's policies) names deploykit as the manager besides the service's name: a pod another
/// tool labelled `app.kubernetes.io/name=web` in the namespace is never selected.
#[test]
fn no_selector_reaches_a_foreign_pod_of_the_same_name() {
    let foreign = BTreeMap::from([("app.kubernetes.io/name".to_string(), "web".to_string())]);
    let selects = |selector: &serde_json::Value| {
        selector
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| foreign.get(k).map(String::as_str) == v.as_str())
    };
    let (v1, _) = revisions();
    let one = DesiredState::new(vec![RevisionTarget::new(v1, 2)], Traffic::default());
    let mesh = render(&one, &options(istio()).mesh_policy(MeshPolicy::default()));
    let mut seen = 0;
    for plan in scenarios().into_iter().map(|(_, plan)| plan).chain([mesh]) {
        for object in &plan.objects {
            let json = object.to_json();
            let selectors = [
                &json["spec"]["selector"]["matchLabels"],
                &json["spec"]["podSelector"]["matchLabels"],
            ];
            let service_selector = (object.kind() == "Service").then(|| &json["spec"]["selector"]);
            for selector in selectors.into_iter().chain(service_selector) {
                if selector.is_object() {
                    seen += 1;
                    assert!(
                        !selects(selector),
                        "{} {} selects a foreign pod: {selector}",
                        object.kind(),
                        object.name()
                    );
                }
            }
        }
    }
    assert!(seen >= 6, "selectors checked: {seen}");
}

#[test]
fn golden_plans() {
    for (name, plan) in scenarios() {
        golden(name, &plan.to_yaml());
    }
    let namespace = RenderOptions::new("shop").quota(Quota {
        cpu_millis: 8000,
        memory_mib: 16384,
        pods: 40,
    });
    let yaml = Plan {
        objects: render::namespace_plan(&namespace),
    }
    .to_yaml();
    golden("namespace", &yaml);
}

fn kinds(plan: &Plan) -> Vec<String> {
    plan.objects
        .iter()
        .map(|o| format!("{}/{}", o.kind(), o.name()))
        .collect()
}

#[test]
fn objects_come_in_apply_order() {
    let plans: BTreeMap<&str, Plan> = scenarios().into_iter().collect();
    let (v1, v2) = revisions();
    let (r1, r2) = (&v1.id.as_str()[..8], &v2.id.as_str()[..8]);
    assert_eq!(
        kinds(&plans["rolling_one"]),
        [
            format!("ConfigMap/web-{r1}-env"),
            format!("Secret/web-{r1}-secrets"),
            format!("Deployment/web-{r1}"),
            "Service/web".into(),
            "HorizontalPodAutoscaler/web".into(),
            "PodDisruptionBudget/web".into(),
            "NetworkPolicy/web".into(),
            "HTTPRoute/web".into(),
        ]
    );
    assert_eq!(
        kinds(&plans["canary_gateway"]),
        [
            format!("ConfigMap/web-{r1}-env"),
            format!("ConfigMap/web-{r2}-env"),
            format!("Secret/web-{r1}-secrets"),
            format!("Secret/web-{r2}-secrets"),
            format!("Deployment/web-{r1}"),
            format!("Deployment/web-{r2}"),
            "Service/web".into(),
            "Service/web-canary".into(),
            "PodDisruptionBudget/web".into(),
            "NetworkPolicy/web".into(),
            "HTTPRoute/web".into(),
        ]
    );
    let blue_green = kinds(&plans["blue_green"]);
    assert!(blue_green.contains(&"Service/web-preview".to_string()));
    assert!(!blue_green.contains(&"Service/web-canary".to_string()));
    assert!(blue_green.ends_with(&["HTTPRoute/web".into(), "HTTPRoute/web-preview".into()]));
    assert!(kinds(&plans["canary_istio"]).ends_with(&["VirtualService/web".into()]));
}

/// `T` must hold every field of `json`: serde drops unknown ones, so a difference after the
/// round trip is a field the schema does not have.
fn round_trip<T: DeserializeOwned + Serialize>(json: &Value) {
    let typed: T = serde_json::from_value(json.clone()).unwrap_or_else(|e| {
        panic!(
            "{} does not parse: {e}\n{json:#}",
            std::any::type_name::<T>()
        )
    });
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(&back, json, "{} lost fields", std::any::type_name::<T>());
}

#[test]
fn every_object_fits_its_schema() {
    let mut plans: Vec<Plan> = scenarios().into_iter().map(|(_, p)| p).collect();
    plans.push(Plan {
        objects: render::namespace_plan(&RenderOptions::new("shop").quota(Quota {
            cpu_millis: 1000,
            memory_mib: 1024,
            pods: 10,
        })),
    });
    let (v1, _) = revisions();
    plans.push(render(
        &DesiredState::new(vec![RevisionTarget::new(v1.clone(), 1)], Traffic::default()),
        &options(istio())
            .mesh_policy(MeshPolicy::default().allow(vec![Caller::Service("api".into())])),
    ));
    plans.push(render(
        &DesiredState::new(vec![RevisionTarget::new(v1.clone(), 1)], Traffic::default()),
        &options(gateway()).tls(RouteTls::cert_manager(Issuer::new(
            IssuerKind::Issuer,
            "shop-ca",
        ))),
    ));
    let (plain, resilient) = revisions_with(full_policy(Protocol::Grpc));
    for router in [istio(), gateway()] {
        plans.push(render_pair(
            &plain,
            &resilient,
            Traffic::routed(canary_routes_of(&plain, &resilient, 60)),
            &options(router),
        ));
    }
    let mut seen = BTreeMap::<String, usize>::new();
    for plan in &plans {
        for object in &plan.objects {
            let json = object.to_json();
            assert_eq!(json["kind"], object.kind());
            assert_eq!(json["apiVersion"], object.api_version());
            assert_eq!(json["metadata"]["name"], object.name());
            let labels = &json["metadata"]["labels"];
            assert_eq!(labels[LABEL_MANAGED_BY], MANAGED_BY, "{}", object.name());
            let resource = object.api_resource();
            assert_eq!(resource.kind, object.kind());
            assert_eq!(resource.api_version, object.api_version());
            match object {
                Object::ConfigMap(_) => round_trip::<ConfigMap>(&json),
                Object::Secret(_) => round_trip::<Secret>(&json),
                Object::Deployment(_) => round_trip::<Deployment>(&json),
                Object::Service(_) => round_trip::<Service>(&json),
                Object::HorizontalPodAutoscaler(_) => round_trip::<HorizontalPodAutoscaler>(&json),
                Object::PodDisruptionBudget(_) => round_trip::<PodDisruptionBudget>(&json),
                Object::NetworkPolicy(_) => round_trip::<NetworkPolicy>(&json),
                Object::ResourceQuota(_) => round_trip::<ResourceQuota>(&json),
                Object::LimitRange(_) => round_trip::<LimitRange>(&json),
                Object::HttpRoute(_) => {
                    assert_eq!(resource.plural, "httproutes");
                    round_trip::<gateway_api::HttpRoute>(&json)
                }
                Object::VirtualService(_) => {
                    assert_eq!(resource.plural, "virtualservices");
                    round_trip::<istio::VirtualService>(&json)
                }
                Object::ServiceAccount(_) => round_trip::<ServiceAccount>(&json),
                Object::PeerAuthentication(_) => {
                    assert_eq!(resource.plural, "peerauthentications");
                    round_trip::<istio::Object<istio::PeerAuthentication>>(&json)
                }
                Object::AuthorizationPolicy(_) => {
                    assert_eq!(resource.plural, "authorizationpolicies");
                    round_trip::<istio::Object<istio::AuthorizationPolicy>>(&json)
                }
                Object::DestinationRule(_) => {
                    assert_eq!(resource.plural, "destinationrules");
                    round_trip::<istio::Object<istio::DestinationRule>>(&json)
                }
                Object::Ingress(_) => {
                    assert_eq!(resource.plural, "ingresses");
                    round_trip::<Ingress>(&json)
                }
                Object::Certificate(_) => {
                    assert_eq!(resource.plural, "certificates");
                    round_trip::<cert_manager::Certificate>(&json)
                }
                Object::ReferenceGrant(_) => {
                    assert_eq!(resource.plural, "referencegrants");
                    round_trip::<gateway_api::ReferenceGrant>(&json)
                }
            }
            *seen.entry(object.kind().to_string()).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), 18, "every kind is covered: {seen:?}");
}

#[test]
fn pods_meet_the_restricted_standard() {
    for (name, plan) in scenarios() {
        for object in &plan.objects {
            let Object::Deployment(d) = object else {
                continue;
            };
            let spec = d.spec.as_ref().unwrap();
            let pod = spec.template.spec.as_ref().unwrap();
            let ctx = pod.security_context.as_ref().unwrap();
            assert_eq!(ctx.run_as_non_root, Some(true), "{name}");
            assert_eq!(
                ctx.seccomp_profile.as_ref().unwrap().type_,
                "RuntimeDefault"
            );
            assert_eq!(pod.automount_service_account_token, Some(false));
            assert_eq!(pod.containers.len(), 1);
            let c = &pod.containers[0];
            assert_eq!(c.name, "app");
            let sc = c.security_context.as_ref().unwrap();
            assert_eq!(sc.run_as_non_root, Some(true));
            assert_eq!(sc.read_only_root_filesystem, Some(true));
            assert_eq!(sc.allow_privilege_escalation, Some(false));
            assert_eq!(
                sc.capabilities.as_ref().unwrap().drop,
                Some(vec!["ALL".to_string()])
            );
            let mounts = c.volume_mounts.as_ref().unwrap();
            assert!(mounts.iter().any(|m| m.mount_path == "/tmp"));
            let res = c.resources.as_ref().unwrap();
            for set in [&res.requests, &res.limits] {
                let set = set.as_ref().unwrap();
                assert!(set.contains_key("cpu") && set.contains_key("memory"));
            }
            assert!(c.readiness_probe.is_some());
            assert!(c.liveness_probe.is_some());
            assert!(c.startup_probe.is_some());
            let image = c.image.as_deref().unwrap();
            let labels = d.metadata.labels.as_ref().unwrap();
            let expected_digest = if labels["app.kubernetes.io/version"] == "v1" {
                sha('a')
            } else {
                sha('b')
            };
            assert_eq!(
                image,
                format!("registry.example.com/shop/web@{expected_digest}")
            );
            let ports = c.ports.as_ref().unwrap();
            assert_eq!(ports[0].name.as_deref(), Some("http"));
            assert_eq!(ports[0].container_port, 8080);
        }
    }
}

#[test]
fn deployments_carry_labels_annotations_and_replicas() {
    let plans: BTreeMap<&str, Plan> = scenarios().into_iter().collect();
    let (v1, _) = revisions();
    let deployment = |plan: &Plan, i: usize| -> Deployment {
        let deployments: Vec<&Deployment> = plan
            .objects
            .iter()
            .filter_map(|o| match o {
                Object::Deployment(d) => Some(d),
                _ => None,
            })
            .collect();
        deployments[i].clone()
    };
    // One revision with autoscaling: the HPA owns replicas.
    let d = deployment(&plans["rolling_one"], 0);
    assert_eq!(d.spec.as_ref().unwrap().replicas, None);
    let spec = &d.metadata.annotations.as_ref().unwrap()[ANNOTATION_REVISION_SPEC];
    let parsed: Revision = serde_json::from_str(spec).unwrap();
    assert_eq!(parsed, *v1);
    let labels = d.metadata.labels.as_ref().unwrap();
    assert_eq!(labels[LABEL_NAME], "web");
    assert_eq!(labels[LABEL_REVISION], v1.id.as_str());
    let hpa = plans["rolling_one"]
        .get("HorizontalPodAutoscaler", "web")
        .unwrap()
        .to_json();
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        format!("web-{}", &v1.id.as_str()[..8])
    );
    // Two revisions: no HPA, the orchestrator's counts.
    // Two revisions by ready instances (a rolling update): no revision serves alone, so no
    // HPA; the environment sets the counts apart, and the Deployments are marked autoscaled.
    let plan = &plans["rolling_two"];
    assert!(plan.get("HorizontalPodAutoscaler", "web").is_none());
    for i in 0..2 {
        let d = deployment(plan, i);
        assert_eq!(d.spec.unwrap().replicas, None);
        let bounds = &d.metadata.annotations.as_ref().unwrap()[ANNOTATION_AUTOSCALE];
        let parsed: Autoscale = serde_json::from_str(bounds).unwrap();
        assert_eq!((parsed.min_replicas, parsed.max_replicas), (2, 6));
    }
    // Without autoscaling, the orchestrator's counts.
    let plain = render(&two(Traffic::ByReadyInstances), &options(gateway()));
    assert_eq!(deployment(&plain, 0).spec.unwrap().replicas, Some(3));
    assert_eq!(deployment(&plain, 1).spec.unwrap().replicas, Some(1));
    assert!(
        !deployment(&plain, 0)
            .metadata
            .annotations
            .unwrap()
            .contains_key(ANNOTATION_AUTOSCALE)
    );
    // By ready instances the stable Service selects every pod deploykit runs for web, and no
    // pod of another tool that happens to be labelled app.kubernetes.io/name=web.
    let svc = plan.get("Service", "web").unwrap().to_json();
    assert_eq!(
        svc["spec"]["selector"],
        serde_json::json!({ LABEL_NAME: "web", "app.kubernetes.io/managed-by": "deploykit" })
    );
    // The route carries the routing applied (the stable Service does without a router).
    let holder = plan
        .objects
        .iter()
        .find(|o| matches!(o, Object::HttpRoute(_) | Object::VirtualService(_)))
        .map_or_else(|| svc.clone(), Object::to_json);
    let traffic: Traffic = serde_json::from_str(
        holder["metadata"]["annotations"][ANNOTATION_TRAFFIC]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(traffic, Traffic::ByReadyInstances);
    // Probes: the HTTP probes as given, the startup probe derived on the named port.
    let c = &deployment(plan, 0)
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers[0];
    let ready = c.readiness_probe.as_ref().unwrap();
    let get = ready.http_get.as_ref().unwrap();
    assert_eq!(get.path.as_deref(), Some("/ready"));
    assert_eq!(get.port, IntOrString::String("http".into()));
    assert_eq!(ready.timeout_seconds, Some(2), "1.5 s rounds up");
    assert_eq!(ready.period_seconds, Some(5));
    let startup = c.startup_probe.as_ref().unwrap();
    assert_eq!(
        startup.tcp_socket.as_ref().unwrap().port,
        IntOrString::String("http".into())
    );
}

#[test]
fn routed_services_select_stable_and_canary() {
    let (v1, v2) = revisions();
    let plan = render(
        &two(Traffic::routed(canary_routes(25))),
        &options(gateway()),
    );
    let selector =
        |name: &str| plan.get("Service", name).unwrap().to_json()["spec"]["selector"].clone();
    assert_eq!(selector("web")[LABEL_REVISION], v1.id.as_str());
    assert_eq!(selector("web-canary")[LABEL_REVISION], v2.id.as_str());
    let route = plan.get("HTTPRoute", "web").unwrap().to_json();
    let rules = route["spec"]["rules"].as_array().unwrap();
    assert_eq!(rules[0]["matches"][0]["headers"][0]["name"], "x-canary");
    assert_eq!(rules[0]["backendRefs"][0]["name"], "web-canary");
    assert_eq!(rules[1]["backendRefs"][0]["weight"], 75);
    assert_eq!(rules[1]["backendRefs"][1]["weight"], 25);
    assert_eq!(route["spec"]["parentRefs"][0]["sectionName"], "https");
}

#[test]
fn route_timeouts_render_for_both_routers() {
    use deploykit_k8s::render::RouteTimeouts;
    let desired = two(Traffic::routed(canary_routes(10)));
    let timeouts = RouteTimeouts::new(Duration::from_millis(3_723_004))
        .unwrap()
        .backend_request(Duration::from_millis(2500))
        .unwrap();
    let plan = render(&desired, &options(gateway()).route_timeouts(timeouts));
    let route = plan.get("HTTPRoute", "web").unwrap().to_json();
    round_trip::<gateway_api::HttpRoute>(&route);
    for rule in route["spec"]["rules"].as_array().unwrap() {
        assert_eq!(
            rule["timeouts"],
            serde_json::json!({"request": "1h2m3s4ms", "backendRequest": "2s500ms"})
        );
    }
    let plan = render(&desired, &options(istio()).route_timeouts(timeouts));
    let vs = plan.get("VirtualService", "web").unwrap().to_json();
    round_trip::<istio::VirtualService>(&vs);
    for route in vs["spec"]["http"].as_array().unwrap() {
        assert_eq!(route["timeout"], "3723.004s");
    }
    // Without them, nothing is written.
    let plan = render(&desired, &options(gateway()));
    let route = plan.get("HTTPRoute", "web").unwrap().to_json();
    for rule in route["spec"]["rules"].as_array().unwrap() {
        assert!(rule.get("timeouts").is_none(), "{rule}");
    }
    // Bad limits are refused, naming the field.
    let e = RouteTimeouts::new(Duration::ZERO).unwrap_err().to_string();
    assert!(e.contains("route_timeouts.request"), "{e}");
    let e = RouteTimeouts::new(Duration::from_secs(1))
        .unwrap()
        .backend_request(Duration::from_secs(2))
        .unwrap_err()
        .to_string();
    assert!(e.contains("route_timeouts.backend_request"), "{e}");
}

proptest::proptest! {
    #[test]
    fn every_route_timeout_is_a_valid_gateway_api_duration(ms in 1u64..(99_999 * 3_600_000)) {
        use deploykit_k8s::render::RouteTimeouts;
        let desired = two(Traffic::routed(canary_routes(10)));
        let timeouts = RouteTimeouts::new(Duration::from_millis(ms)).unwrap();
        let plan = render(&desired, &options(gateway()).route_timeouts(timeouts));
        let route = plan.get("HTTPRoute", "web").unwrap().to_json();
        round_trip::<gateway_api::HttpRoute>(&route);
        // And it says the same time.
        let text = route["spec"]["rules"][0]["timeouts"]["request"].as_str().unwrap().to_string();
        let mut total = 0u64;
        let mut rest = text.as_str();
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let n: u64 = rest[..digits].parse().unwrap();
            let (unit, len) = if rest[digits..].starts_with("ms") { (1, 2) } else {
                (match &rest[digits..digits + 1] { "h" => 3_600_000, "m" => 60_000, _ => 1000 }, 1)
            };
            total += n * unit;
            rest = &rest[digits + len..];
        }
        proptest::prop_assert_eq!(total, ms);
    }
}

#[test]
fn mirrors_render_for_both_routers() {
    let (_, v2) = revisions();
    let mut routes = canary_routes(10);
    routes.mirror = Some(Mirror::new(v2.id.clone(), Weight::new(20).unwrap()));
    let desired = two(Traffic::routed(routes));
    let plan = render(&desired, &options(gateway()));
    let route = plan.get("HTTPRoute", "web").unwrap().to_json();
    round_trip::<gateway_api::HttpRoute>(&route);
    let filter = &route["spec"]["rules"][1]["filters"][0];
    assert_eq!(filter["type"], "RequestMirror");
    assert_eq!(filter["requestMirror"]["backendRef"]["name"], "web-canary");
    assert_eq!(filter["requestMirror"]["percent"], 20);

    let plan = render(&desired, &options(istio()));
    let vs = plan.get("VirtualService", "web").unwrap().to_json();
    round_trip::<istio::VirtualService>(&vs);
    let primary = &vs["spec"]["http"][1];
    assert_eq!(primary["mirror"]["host"], "web-canary");
    assert_eq!(primary["mirrorPercentage"]["value"], 20.0);
    assert_eq!(primary["route"][0]["weight"], 90);
}

/// The objects of `a` and `b` whose JSON differs, by kind/name.
fn changed(a: &Plan, b: &Plan) -> Vec<String> {
    assert_eq!(kinds(a), kinds(b), "the same objects exist");
    a.objects
        .iter()
        .zip(&b.objects)
        .filter(|(x, y)| x.to_json() != y.to_json())
        .map(|(x, _)| format!("{}/{}", x.kind(), x.name()))
        .collect()
}

#[test]
fn canary_steps_and_abort_change_only_the_route() {
    for router in [gateway(), istio()] {
        let route = if matches!(router, Router::Istio { .. }) {
            "VirtualService/web"
        } else {
            "HTTPRoute/web"
        };
        let options = options(router);
        let at25 = render(&two(Traffic::routed(canary_routes(25))), &options);
        let at50 = render(&two(Traffic::routed(canary_routes(50))), &options);
        assert_eq!(changed(&at25, &at50), [route]);
        // Abort: all traffic back to stable; the canary revision and its Service remain.
        let (v1, _) = revisions();
        let aborted = render(&two(Traffic::routed(Routes::all_to(&v1.id))), &options);
        assert_eq!(changed(&at25, &aborted), [route]);
        assert!(aborted.get("Service", "web-canary").is_some());
        // The route records the routing applied, so the step is one object.
        let (kind, name) = route.split_once('/').unwrap();
        let annotation = |plan: &Plan| {
            plan.get(kind, name).unwrap().to_json()["metadata"]["annotations"][ANNOTATION_TRAFFIC]
                .clone()
        };
        assert!(annotation(&at25).is_string());
        assert_ne!(annotation(&at25), annotation(&at50));
    }
}

fn message(result: deploykit_core::Result<Plan>) -> String {
    result.unwrap_err().to_string()
}

#[test]
fn errors_name_the_field() {
    let (v1, _) = revisions();
    let one = DesiredState::new(vec![RevisionTarget::new(v1.clone(), 1)], Traffic::default());
    let secrets = secrets_for(&[&v1]);
    let name = web().name;

    let no_image = RenderOptions::new("shop");
    let err = message(render::plan(&name, &one, &secrets, &no_image));
    assert_eq!(
        err,
        "invalid images.web: no image repository for service web: set RenderOptions::image"
    );

    // A custom probe.
    let custom = ServiceSpec::builder()
        .name("web")
        .port(8080)
        .health(
            HealthChecks::builder()
                .readiness(
                    Probe::builder()
                        .action(ProbeAction::Custom {
                            name: "warm-cache".into(),
                        })
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .build()
        .unwrap();
    let rev = Revision::new(&custom, &production(), sha('c'), "v3").unwrap();
    let desired = DesiredState::new(vec![RevisionTarget::new(rev, 1)], Traffic::default());
    let err = message(render::plan(&name, &desired, &secrets, &options(gateway())));
    assert_eq!(
        err,
        "invalid health.readiness: custom probe warm-cache cannot run on Kubernetes: use http, \
         tcp or exec"
    );

    // No port, no probes, restricted: nothing to derive probes from.
    let worker = ServiceSpec::builder().name("web").build().unwrap();
    let rev = Revision::new(&worker, &production(), sha('d'), "v4").unwrap();
    let desired = DesiredState::new(vec![RevisionTarget::new(rev, 1)], Traffic::default());
    let err = message(render::plan(&name, &desired, &secrets, &options(gateway())));
    assert!(
        err.starts_with(
            "invalid health.readiness: service web has no port, so its missing readiness probe \
             cannot be derived"
        ),
        "{err}"
    );
    // Not restricted: it renders, without Services, route or probes.
    let plan = render::plan(
        &name,
        &desired,
        &secrets,
        &options(gateway()).restricted(false),
    )
    .unwrap();
    assert_eq!(
        kinds(&plan)
            .iter()
            .map(|k| k.split('/').next().unwrap())
            .collect::<Vec<_>>(),
        [
            "ConfigMap",
            "Deployment",
            "PodDisruptionBudget",
            "NetworkPolicy"
        ]
    );
    let Some(Object::Deployment(d)) = plan.objects.get(1) else {
        panic!("a Deployment");
    };
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert!(pod.security_context.is_none());
    assert!(pod.containers[0].readiness_probe.is_none());
    assert!(pod.containers[0].ports.is_none());

    // A missing secret value.
    let err = message(render::plan(
        &name,
        &one,
        &BTreeMap::new(),
        &options(gateway()),
    ));
    assert!(
        err.starts_with(&format!("invalid secrets.{}.DATABASE_URL: no value", v1.id)),
        "{err}"
    );

    // Routes that do not fit.
    let bad_host = options(Router::GatewayApi {
        parent: ParentRef::new("gw"),
        hostnames: vec!["Shop.Example.com".into()],
    });
    assert!(
        message(render::plan(&name, &one, &secrets, &bad_host))
            .starts_with("invalid router.hostnames")
    );
    let no_hosts = options(Router::Istio {
        gateways: vec![],
        hosts: vec![],
    });
    assert!(
        message(render::plan(&name, &one, &secrets, &no_hosts)).starts_with("invalid router.hosts")
    );
    let (_, v2) = revisions();
    let mut preview = Routes::all_to(&v1.id);
    preview.preview = Some(v2.id.clone());
    let no_preview_host = options(Router::GatewayApi {
        parent: ParentRef::new("gw"),
        hostnames: vec![],
    });
    let err = message(render::plan(
        &name,
        &two(Traffic::routed(preview)),
        &secrets_for(&[&v1, &v2]),
        &no_preview_host,
    ));
    assert!(
        err.starts_with("invalid router.hostnames: a preview route"),
        "{err}"
    );
    let stray = Routes::all_to(
        &Revision::new(&web(), &production(), sha('e'), "v9")
            .unwrap()
            .id,
    );
    let err = message(render::plan(
        &name,
        &DesiredState::new(
            vec![RevisionTarget::new(v1.clone(), 1)],
            Traffic::routed(stray),
        ),
        &secrets,
        &options(gateway()),
    ));
    assert!(
        err.starts_with("invalid traffic.weights: revision"),
        "{err}"
    );

    // A label that cannot be made a label value.
    let odd = Revision::new(&web(), &production(), sha('f'), "🚀").unwrap();
    let err = message(render::plan(
        &name,
        &DesiredState::new(
            vec![RevisionTarget::new(odd.clone(), 1)],
            Traffic::default(),
        ),
        &secrets_for(&[&Arc::new(odd)]),
        &options(gateway()),
    ));
    assert!(err.starts_with("invalid revision.label"), "{err}");

    // Bad options.
    let mut bad = options(gateway());
    bad.network.allow_egress = vec![EgressRule::new("10.0.0.0/40", vec![])];
    assert!(
        message(render::plan(&name, &one, &secrets, &bad))
            .starts_with("invalid network.allow_egress[0].cidr")
    );
    let mut bad = options(gateway());
    bad.namespace = "Shop".into();
    assert!(message(render::plan(&name, &one, &secrets, &bad)).starts_with("invalid namespace"));
}

#[test]
fn secret_values_stay_out_of_yaml_and_debug() {
    let plan = render(
        &two(Traffic::routed(canary_routes(25))),
        &options(gateway()),
    );
    let yaml = plan.to_yaml();
    let debug = format!("{plan:?}");
    let encoded =
        serde_json::to_value(k8s_openapi::ByteString(SECRET_VALUE.as_bytes().to_vec())).unwrap();
    let encoded = encoded.as_str().unwrap();
    for shown in [&yaml, &debug] {
        assert!(!shown.contains(SECRET_VALUE));
        assert!(!shown.contains(encoded));
        assert!(!shown.contains("hunter2"));
    }
    assert!(yaml.contains("DATABASE_URL: <redacted>"), "{yaml}");
    assert!(debug.contains("DATABASE_URL"), "Debug names the keys");
    let secrets: Vec<&Object> = plan
        .objects
        .iter()
        .filter(|o| matches!(o, Object::Secret(_)))
        .collect();
    assert_eq!(secrets.len(), 2);
    for secret in secrets {
        let json = secret.to_json();
        assert_eq!(json["data"]["DATABASE_URL"], encoded);
        assert_eq!(json["immutable"], true);
        assert_eq!(json["type"], "Opaque");
        assert_eq!(
            secret.to_redacted_json()["data"]["DATABASE_URL"],
            "<redacted>"
        );
    }
}

#[test]
fn network_policy_denies_by_default() {
    let (v1, _) = revisions();
    let one = DesiredState::new(vec![RevisionTarget::new(v1.clone(), 1)], Traffic::default());
    let mut quiet = options(Router::None);
    quiet.network = NetworkOptions {
        allow_dns: false,
        ..NetworkOptions::default()
    };
    let plan = render(&one, &quiet);
    let policy = plan.get("NetworkPolicy", "web").unwrap().to_json();
    assert_eq!(
        policy["spec"]["policyTypes"],
        serde_json::json!(["Ingress", "Egress"])
    );
    assert!(policy["spec"].get("egress").is_none(), "no egress at all");
    let ingress = &policy["spec"]["ingress"];
    assert_eq!(ingress.as_array().unwrap().len(), 1);
    assert_eq!(
        ingress[0]["from"].as_array().unwrap().len(),
        1,
        "own pods only"
    );
    assert_eq!(ingress[0]["ports"][0]["port"], "http");
    assert!(NetworkOptions::default().allow_dns);

    let plan = render(&one, &options(Router::None));
    let policy = plan.get("NetworkPolicy", "web").unwrap().to_json();
    let egress = policy["spec"]["egress"].as_array().unwrap();
    assert_eq!(egress.len(), 2, "DNS and the CIDR");
    assert_eq!(
        egress[0]["ports"][0],
        serde_json::json!({"port": 53, "protocol": "UDP"})
    );
    assert_eq!(egress[1]["to"][0]["ipBlock"]["cidr"], "10.20.0.0/16");
    assert_eq!(
        policy["spec"]["ingress"][0]["from"][1]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "gateway"
    );
    assert!(plan.objects.iter().all(|o| !o.kind().contains("Route")));
}

#[test]
fn an_empty_desired_state_renders_nothing() {
    let plan = render(&DesiredState::default(), &options(gateway()));
    assert!(plan.objects.is_empty());
    assert_eq!(plan.to_yaml(), "");
}

/// The parts of cert-manager's `cert-manager.io/v1` `Certificate` deploykit renders (and a few
/// neighbours), from the CRD's schema: unknown fields refused.
mod cert_manager {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub(crate) struct Certificate {
        api_version: String,
        kind: String,
        metadata: ObjectMeta,
        spec: Spec,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Spec {
        /// Required.
        secret_name: String,
        /// Required.
        issuer_ref: IssuerRef,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dns_names: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        common_name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        renew_before: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usages: Option<Vec<String>>,
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    enum IssuerKind {
        Issuer,
        ClusterIssuer,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct IssuerRef {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<IssuerKind>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
    }
}

/// The parts of Gateway API v1 `HTTPRoute` deploykit renders, no more.
mod gateway_api {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use serde::{Deserialize, Serialize};

    /// `gateway.networking.k8s.io/v1beta1` `ReferenceGrant`, whole: `from` entries need
    /// group, kind and namespace; `to` entries group and kind, and optionally a name.
    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub(crate) struct ReferenceGrant {
        api_version: String,
        kind: String,
        metadata: ObjectMeta,
        spec: ReferenceGrantSpec,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct ReferenceGrantSpec {
        from: Vec<ReferenceGrantFrom>,
        to: Vec<ReferenceGrantTo>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct ReferenceGrantFrom {
        group: String,
        kind: String,
        namespace: String,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct ReferenceGrantTo {
        group: String,
        kind: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub(crate) struct HttpRoute {
        api_version: String,
        kind: String,
        metadata: ObjectMeta,
        spec: Spec,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Spec {
        parent_refs: Vec<ParentReference>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hostnames: Option<Vec<String>>,
        rules: Vec<Rule>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct ParentReference {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<String>,
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        namespace: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        section_name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Rule {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        matches: Option<Vec<Match>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        filters: Option<Vec<Filter>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backend_refs: Option<Vec<BackendRef>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeouts: Option<Timeouts>,
    }

    /// Standard since Gateway API v1.2 (GEP-1742); GEP-2257 durations.
    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Timeouts {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<Duration>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backend_request: Option<Duration>,
    }

    /// `^([0-9]{1,5}(h|m|s|ms)){1,4}$`, checked when read.
    #[derive(Serialize)]
    #[serde(transparent)]
    struct Duration(String);

    impl<'de> Deserialize<'de> for Duration {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let text = String::deserialize(d)?;
            let mut rest = text.as_str();
            let mut parts = 0;
            while !rest.is_empty() {
                let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                let unit = ["ms", "h", "m", "s"]
                    .into_iter()
                    .find(|u| rest[digits..].starts_with(u));
                match unit {
                    Some(unit) if (1..=5).contains(&digits) => {
                        rest = &rest[digits + unit.len()..];
                        parts += 1;
                    }
                    _ => {
                        return Err(serde::de::Error::custom(format!(
                            "{text:?} is not a Gateway API duration"
                        )));
                    }
                }
            }
            if !(1..=4).contains(&parts) {
                return Err(serde::de::Error::custom(format!(
                    "{text:?} is not a Gateway API duration"
                )));
            }
            Ok(Duration(text))
        }
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Match {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        headers: Option<Vec<HeaderMatch>>,
    }

    #[derive(Serialize, Deserialize)]
    enum HeaderMatchType {
        Exact,
        RegularExpression,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct HeaderMatch {
        #[serde(rename = "type")]
        type_: HeaderMatchType,
        name: String,
        value: String,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, tag = "type")]
    enum Filter {
        RequestMirror {
            #[serde(rename = "requestMirror")]
            request_mirror: RequestMirror,
        },
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct RequestMirror {
        backend_ref: BackendRef,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        percent: Option<u8>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct BackendRef {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<String>,
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        namespace: Option<String>,
        port: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        weight: Option<u32>,
    }
}

/// The parts of Istio `networking.istio.io/v1` `VirtualService` deploykit renders, no more.
mod istio {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub(crate) struct VirtualService {
        api_version: String,
        kind: String,
        metadata: ObjectMeta,
        spec: Spec,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Spec {
        hosts: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gateways: Option<Vec<String>>,
        http: Vec<HttpRoute>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct HttpRoute {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
        match_: Option<Vec<MatchRequest>>,
        route: Vec<RouteDestination>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mirror: Option<Destination>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mirror_percentage: Option<Percent>,
        /// A protobuf Duration (`10s`, `2.5s`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retries: Option<HttpRetry>,
    }

    /// `HTTPRetry`: `attempts`, `perTryTimeout`, `retryOn` (Istio also has
    /// `retryRemoteLocalities`, which deploykit does not write).
    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct HttpRetry {
        attempts: i32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        per_try_timeout: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_on: Option<RetryOn>,
    }

    /// Envoy's `x-envoy-retry-on` conditions and numeric statuses (which Istio moves to
    /// `retriable_status_codes`), comma-separated; anything else refused when read.
    #[derive(Serialize)]
    #[serde(transparent)]
    struct RetryOn(String);

    impl<'de> Deserialize<'de> for RetryOn {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            const CONDITIONS: [&str; 15] = [
                "5xx",
                "gateway-error",
                "reset",
                "reset-before-request",
                "connect-failure",
                "envoy-ratelimited",
                "retriable-4xx",
                "refused-stream",
                "retriable-status-codes",
                "retriable-headers",
                "cancelled",
                "deadline-exceeded",
                "internal",
                "resource-exhausted",
                "unavailable",
            ];
            let text = String::deserialize(d)?;
            for part in text.split(',') {
                let status = part.parse::<u16>().is_ok_and(|s| (100..=599).contains(&s));
                if !status && !CONDITIONS.contains(&part) {
                    return Err(serde::de::Error::custom(format!(
                        "{part:?} in {text:?} is not an Envoy retry condition nor a status"
                    )));
                }
            }
            Ok(RetryOn(text))
        }
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct MatchRequest {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        headers: Option<BTreeMap<String, StringMatch>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        authority: Option<StringMatch>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    enum StringMatch {
        Exact(String),
        Prefix(String),
        Regex(String),
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct RouteDestination {
        destination: Destination,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        weight: Option<i32>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Destination {
        host: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subset: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<PortSelector>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct PortSelector {
        number: u32,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Percent {
        value: f64,
    }

    /// `security.istio.io/v1` PeerAuthentication, AuthorizationPolicy and
    /// `networking.istio.io/v1` DestinationRule: the fields deploykit writes, each checked
    /// against Istio's API reference (unknown ones refused).
    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub(crate) struct Object<S> {
        api_version: String,
        kind: String,
        metadata: ObjectMeta,
        spec: S,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct WorkloadSelector {
        match_labels: BTreeMap<String, String>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub(crate) struct PeerAuthentication {
        selector: WorkloadSelector,
        mtls: Mtls,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Mtls {
        mode: MtlsMode,
    }

    #[derive(Serialize, Deserialize)]
    #[allow(clippy::upper_case_acronyms)]
    enum MtlsMode {
        UNSET,
        DISABLE,
        PERMISSIVE,
        STRICT,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub(crate) struct AuthorizationPolicy {
        selector: WorkloadSelector,
        action: Action,
        rules: Vec<Rule>,
    }

    #[derive(Serialize, Deserialize)]
    #[allow(clippy::upper_case_acronyms)]
    enum Action {
        ALLOW,
        DENY,
        AUDIT,
        CUSTOM,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Rule {
        from: Vec<From>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct From {
        source: Source,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Source {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        principals: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        namespaces: Option<Vec<String>>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub(crate) struct DestinationRule {
        host: String,
        traffic_policy: TrafficPolicy,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct TrafficPolicy {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        connection_pool: Option<ConnectionPool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        outlier_detection: Option<OutlierDetection>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tls: Option<ClientTls>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct ConnectionPool {
        http: HttpSettings,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct HttpSettings {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        http1_max_pending_requests: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        http2_max_requests: Option<u32>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct OutlierDetection {
        consecutive_5xx_errors: u32,
        interval: String,
        base_ejection_time: String,
        max_ejection_percent: u32,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct ClientTls {
        mode: String,
    }
}

#[test]
fn labels_become_label_values_and_tags() {
    let odd = Revision::new(&web(), &production(), sha('c'), "feature/Login_v2!").unwrap();
    let id = odd.id.clone();
    let one = DesiredState::new(vec![RevisionTarget::new(odd, 1)], Traffic::default());
    let plan = render::plan(
        &web().name,
        &one,
        &BTreeMap::from([(
            id,
            BTreeMap::from([("DATABASE_URL".to_string(), SecretString::from("x"))]),
        )]),
        &options(Router::None),
    )
    .unwrap();
    let Some(Object::Deployment(d)) = plan.objects.iter().find(|o| o.kind() == "Deployment") else {
        panic!("a Deployment");
    };
    let labels = d.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["app.kubernetes.io/version"], "feature-Login_v2");

    // A non-sha256 artifact is tagged with the label, which must then be a valid tag.
    let blake = Revision::new(&web(), &production(), Digest::of_bytes(b"x"), "v7").unwrap();
    let secrets = secrets_for(&[&Arc::new(blake.clone())]);
    let one = DesiredState::new(vec![RevisionTarget::new(blake, 1)], Traffic::default());
    let yaml = render::plan(&web().name, &one, &secrets, &options(Router::None))
        .unwrap()
        .to_yaml();
    assert!(
        yaml.contains("image: registry.example.com/shop/web:v7"),
        "{yaml}"
    );
    let bad = Revision::new(&web(), &production(), Digest::of_bytes(b"y"), "feature/x").unwrap();
    let secrets = secrets_for(&[&Arc::new(bad.clone())]);
    let one = DesiredState::new(vec![RevisionTarget::new(bad, 1)], Traffic::default());
    let err = message(render::plan(
        &web().name,
        &one,
        &secrets,
        &options(Router::None),
    ));
    assert!(err.starts_with("invalid revision.label"), "{err}");
}

/// With autoscaling, the HPA scales the serving revision: under routed traffic the stable
/// Service's (largest weight), so a canary keeps the stable revision autoscaled and promotion
/// moves the HPA to the new revision; a rolling update of two revisions has none.
#[test]
fn autoscaler_follows_the_serving_revision() {
    let (v1, v2) = revisions();
    let autoscale = Some(Autoscale::builder().min_replicas(2).max_replicas(6).build());
    let target = |traffic: Traffic| {
        let plan = render(
            &two(traffic).with_autoscale(autoscale.clone()),
            &options(gateway()),
        );
        plan.get("HorizontalPodAutoscaler", "web")
            .map(|h| h.to_json()["spec"]["scaleTargetRef"]["name"].clone())
    };
    let name = |r: &Revision| serde_json::json!(format!("web-{}", &r.id.as_str()[..8]));
    assert_eq!(target(Traffic::routed(canary_routes(25))), Some(name(&v1)));
    assert_eq!(
        target(Traffic::routed(Routes::all_to(&v2.id))),
        Some(name(&v2))
    );
    assert_eq!(target(Traffic::ByReadyInstances), None);
    let bad = DesiredState::new(vec![RevisionTarget::new(v1, 3)], Traffic::ByReadyInstances)
        .with_autoscale(Some(
            Autoscale::builder().min_replicas(0).max_replicas(6).build(),
        ));
    let err =
        render::plan(&web().name, &bad, &SecretValues::new(), &options(gateway())).unwrap_err();
    assert!(
        err.to_string().contains("desired.autoscale.min_replicas"),
        "{err}"
    );
}

/// The first Deployment's pod spec in `plan`.
fn pod_of(plan: &Plan) -> k8s_openapi::api::core::v1::PodSpec {
    plan.objects
        .iter()
        .find_map(|o| match o {
            Object::Deployment(d) => d.spec.as_ref()?.template.spec.clone(),
            _ => None,
        })
        .expect("a Deployment")
}

#[test]
fn stopping_pods_drain_spread_and_run_as_a_numbered_user() {
    let (v1, _) = revisions();
    let one = DesiredState::new(vec![RevisionTarget::new(v1.clone(), 3)], Traffic::default());
    let secrets = secrets_for(&[&v1]);
    let name = web().name;

    // By default: a 5 s preStop sleep inside 35 s of grace, spread over zones and nodes.
    let pod = pod_of(&render(&one, &options(gateway())));
    assert_eq!(pod.termination_grace_period_seconds, Some(35));
    let pre_stop = pod.containers[0]
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.sleep.as_ref())
        .expect("a preStop sleep");
    assert_eq!(pre_stop.seconds, 5);
    let spread = pod.topology_spread_constraints.as_ref().unwrap();
    assert_eq!(
        spread
            .iter()
            .map(|c| (
                c.topology_key.as_str(),
                c.when_unsatisfiable.as_str(),
                c.max_skew
            ))
            .collect::<Vec<_>>(),
        [
            ("topology.kubernetes.io/zone", "ScheduleAnyway", 1),
            ("kubernetes.io/hostname", "ScheduleAnyway", 1)
        ]
    );
    let selector = spread[0]
        .label_selector
        .as_ref()
        .unwrap()
        .match_labels
        .as_ref()
        .unwrap();
    assert_eq!(
        selector["deploykit.dev/revision"],
        v1.id.as_str(),
        "this revision's pods only"
    );
    let security = pod.security_context.as_ref().unwrap();
    assert_eq!(security.run_as_user, None, "the image's own numeric USER");

    // Tuned: a 1.5 s drain sleeps 2 s; none at all; no spreading; a numbered user.
    let tuned = options(gateway())
        .drain(Duration::from_millis(1500))
        .shutdown_grace(Duration::from_secs(10))
        .spread(false)
        .run_as(10001, 10002);
    let pod = pod_of(&render(&one, &tuned));
    assert_eq!(pod.termination_grace_period_seconds, Some(12));
    assert!(pod.topology_spread_constraints.is_none());
    let security = pod.security_context.as_ref().unwrap();
    assert_eq!(
        (
            security.run_as_user,
            security.run_as_group,
            security.fs_group,
            security.run_as_non_root
        ),
        (Some(10001), Some(10002), Some(10002), Some(true))
    );
    let pod = pod_of(&render(&one, &options(gateway()).drain(Duration::ZERO)));
    assert!(pod.containers[0].lifecycle.is_none());
    assert_eq!(pod.termination_grace_period_seconds, Some(30));
    // Root only outside the restricted standard.
    let pod = pod_of(&render(
        &one,
        &options(gateway()).restricted(false).run_as(0, 0),
    ));
    assert_eq!(pod.security_context.as_ref().unwrap().run_as_user, Some(0));

    for (bad, want) in [
        (
            options(gateway()).run_as(0, 0),
            "invalid run_as.user: 0 is root, which the restricted Pod Security Standard forbids",
        ),
        (
            options(gateway()).run_as(-1, 5),
            "invalid run_as: user -1 and group 5 must be 0 or more",
        ),
        (
            options(gateway()).drain(Duration::from_secs(7200)),
            "invalid drain: 7200s is more than 3600s",
        ),
        (
            options(gateway()).shutdown_grace(Duration::from_secs(u64::MAX)),
            "invalid shutdown_grace:",
        ),
    ] {
        let e = message(render::plan(&name, &one, &secrets, &bad));
        assert!(e.starts_with(want), "{e}\nwanted {want}");
    }
}

/// The NetworkPolicy of a plan rendered with `network` and `router`, as JSON.
fn policy_with(router: Router, network: NetworkOptions) -> Value {
    let (v1, _) = revisions();
    let one = DesiredState::new(vec![RevisionTarget::new(v1.clone(), 1)], Traffic::default());
    let options = RenderOptions::new("shop")
        .image("web", "registry.example.com/shop/web")
        .router(router)
        .network(network);
    render(&one, &options)
        .get("NetworkPolicy", "web")
        .unwrap()
        .to_json()
}

/// The namespaces a rule's peers select by name.
fn namespaces_of(rule: &Value) -> Vec<String> {
    rule["from"]
        .as_array()
        .or_else(|| rule["to"].as_array())
        .unwrap()
        .iter()
        .filter_map(|p| {
            p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

#[test]
fn the_network_policy_lets_the_gateway_and_the_mesh_through() {
    // Seen: with a router and nothing allowed, the Gateway's data plane was denied. Now the
    // parent Gateway's namespace may reach the app port…
    let policy = policy_with(gateway(), NetworkOptions::default());
    assert_eq!(namespaces_of(&policy["spec"]["ingress"][0]), ["gateway"]);
    // …the route's own namespace when the parent names none, the Istio gateways' (never the
    // mesh pseudo-gateway), or where the implementation runs its proxies, if told.
    let local = Router::GatewayApi {
        parent: ParentRef::new("public"),
        hostnames: vec![],
    };
    let policy = policy_with(local.clone(), NetworkOptions::default());
    assert_eq!(namespaces_of(&policy["spec"]["ingress"][0]), ["shop"]);
    let istio_gateways = Router::Istio {
        gateways: vec![
            "mesh".into(),
            "istio-ingress/public".into(),
            "istio-ingress/internal".into(),
        ],
        hosts: vec!["shop.example.com".into()],
    };
    let policy = policy_with(istio_gateways, NetworkOptions::default());
    assert_eq!(
        namespaces_of(&policy["spec"]["ingress"][0]),
        ["istio-ingress"]
    );
    let elsewhere = NetworkOptions {
        gateway_namespaces: Some(vec!["envoy-gateway-system".into()]),
        ..NetworkOptions::default()
    };
    let policy = policy_with(gateway(), elsewhere);
    assert_eq!(
        namespaces_of(&policy["spec"]["ingress"][0]),
        ["envoy-gateway-system"]
    );
    let policy = policy_with(Router::None, NetworkOptions::default());
    assert!(namespaces_of(&policy["spec"]["ingress"][0]).is_empty());

    // Seen: with Istio sidecars, egress allowed only DNS, so istio-proxy never reached istiod.
    let sidecars = NetworkOptions {
        mesh: Mesh::IstioSidecar,
        ..NetworkOptions::default()
    };
    let egress = policy_with(gateway(), sidecars)["spec"]["egress"].clone();
    assert_eq!(namespaces_of(&egress[1]), ["istio-system"]);
    assert_eq!(
        egress[1]["to"][0]["podSelector"]["matchLabels"]["app"],
        "istiod"
    );
    assert_eq!(
        egress[1]["ports"],
        serde_json::json!([{"port": 15012, "protocol": "TCP"}])
    );

    // Seen: in ambient mode, inbound 15008 (HBONE) was not allowed.
    let ambient = NetworkOptions {
        mesh: Mesh::IstioAmbient,
        ..NetworkOptions::default()
    };
    let ingress = policy_with(gateway(), ambient)["spec"]["ingress"].clone();
    assert_eq!(
        ingress[1]["ports"],
        serde_json::json!([{"port": 15008, "protocol": "TCP"}])
    );
    assert_eq!(
        namespaces_of(&ingress[1]),
        ["gateway"],
        "from the same peers"
    );
    assert!(
        ingress[0]["from"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["ipBlock"]["cidr"] == "169.254.7.127/32"),
        "kubelet probes through ztunnel: {ingress:#}"
    );

    // Seen: egress could only be an ipBlock, and DNS assumed kube-system/kube-dns.
    let selectors = NetworkOptions {
        allow_egress_to: vec![
            EgressPeer::new(Some("data"), [("app", "postgres")], vec![5432]),
            EgressPeer::new(None, [("app.kubernetes.io/name", "api")], vec![]),
        ],
        dns_namespace: "dns".into(),
        dns_labels: BTreeMap::from([("app".into(), "coredns".into())]),
        ..NetworkOptions::default()
    };
    let egress = policy_with(gateway(), selectors)["spec"]["egress"].clone();
    assert_eq!(namespaces_of(&egress[0]), ["dns"]);
    assert_eq!(
        egress[0]["to"][0]["podSelector"]["matchLabels"]["app"],
        "coredns"
    );
    assert_eq!(namespaces_of(&egress[1]), ["data"]);
    assert_eq!(
        egress[1]["to"][0]["podSelector"]["matchLabels"]["app"],
        "postgres"
    );
    assert_eq!(egress[1]["ports"][0]["port"], 5432);
    assert!(
        egress[2]["to"][0].get("namespaceSelector").is_none(),
        "this namespace"
    );
    assert!(egress[2].get("ports").is_none(), "every port");

    // Mistakes name their field.
    let (v1, _) = revisions();
    let one = DesiredState::new(vec![RevisionTarget::new(v1.clone(), 1)], Traffic::default());
    let secrets = secrets_for(&[&v1]);
    for (network, want) in [
        (
            NetworkOptions {
                allow_egress_to: vec![EgressPeer::new::<&str, &str>(None, [], vec![])],
                ..NetworkOptions::default()
            },
            "invalid network.allow_egress_to[0]: names neither a namespace nor pod labels",
        ),
        (
            NetworkOptions {
                allow_egress_to: vec![EgressPeer::new(Some("Data"), [("a", "b")], vec![])],
                ..NetworkOptions::default()
            },
            "invalid network.allow_egress_to[0].namespace: \"Data\" is not a namespace name",
        ),
        (
            NetworkOptions {
                gateway_namespaces: Some(vec!["a b".into()]),
                ..NetworkOptions::default()
            },
            "invalid network.gateway_namespaces",
        ),
        (
            NetworkOptions {
                dns_namespace: String::new(),
                ..NetworkOptions::default()
            },
            "invalid network.dns_namespace",
        ),
    ] {
        let options = options(gateway()).network(network);
        let e = message(render::plan(&web().name, &one, &secrets, &options));
        assert!(e.starts_with(want), "{e}\nwanted {want}");
    }
}

/// Seen: `Plan::to_yaml()` could not be applied, its Secret data being redacted. The applicable
/// YAML leaves the Secrets out (naming them and their keys for whoever must create them) and
/// every other object is exactly what deploykit applies.
#[test]
fn applicable_yaml_leaves_secrets_out_and_names_them() {
    let plan = render(
        &two(Traffic::routed(canary_routes(25))),
        &options(gateway()),
    );
    let yaml = plan.to_applicable_yaml();
    assert!(!yaml.contains("<redacted>"), "{yaml}");
    assert!(!yaml.contains(SECRET_VALUE));
    let secret_names: Vec<&str> = plan
        .objects
        .iter()
        .filter(|o| matches!(o, Object::Secret(_)))
        .map(Object::name)
        .collect();
    assert_eq!(secret_names.len(), 2);
    for name in &secret_names {
        assert!(
            yaml.contains(&format!("#   Secret shop/{name}: keys DATABASE_URL")),
            "{yaml}"
        );
    }
    let documents: Vec<Value> = yaml
        .split("\n---\n")
        .map(|doc| serde_saphyr::from_str(doc).expect("each document is YAML"))
        .collect();
    let applied: Vec<Value> = plan
        .objects
        .iter()
        .filter(|o| !matches!(o, Object::Secret(_)))
        .map(Object::to_json)
        .collect();
    assert_eq!(documents, applied);
}

/// Seen: no PeerAuthentication or AuthorizationPolicy, so any workload could call any service
/// in clear. With a mesh policy the service gets its own identity, requires mTLS, and answers
/// only its declared callers and the router.
#[test]
fn a_mesh_policy_gives_the_service_an_identity_mtls_and_an_allow_list() {
    let (v1, _) = revisions();
    let one = DesiredState::new(vec![RevisionTarget::new(v1.clone(), 2)], Traffic::default());
    let secrets = secrets_for(&[&v1]);
    let name = web().name;
    let policy = MeshPolicy::default().allow(vec![
        Caller::Service("api".into()),
        Caller::Namespace("monitoring".into()),
        Caller::Principal("corp.example/ns/batch/sa/reports".into()),
    ]);
    let plan = render(&one, &options(gateway()).mesh_policy(policy));
    let kinds = kinds(&plan);
    assert_eq!(kinds[0], "ServiceAccount/web", "{kinds:?}");
    let network = kinds.iter().position(|k| k == "NetworkPolicy/web").unwrap();
    assert_eq!(
        kinds[network + 1..network + 4],
        [
            "PeerAuthentication/web",
            "AuthorizationPolicy/web",
            "DestinationRule/web"
        ]
    );
    assert_eq!(kinds.last().unwrap(), "HTTPRoute/web");

    let account = plan.get("ServiceAccount", "web").unwrap().to_json();
    assert_eq!(account["automountServiceAccountToken"], false);
    for object in &plan.objects {
        if let Object::Deployment(d) = object {
            let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
            assert_eq!(pod.service_account_name.as_deref(), Some("web"));
        }
    }
    let selector = serde_json::json!({ "matchLabels": {
        "app.kubernetes.io/name": "web",
        "app.kubernetes.io/managed-by": "deploykit",
    } });
    let peer = plan.get("PeerAuthentication", "web").unwrap().to_json();
    assert_eq!(peer["apiVersion"], "security.istio.io/v1");
    assert_eq!(peer["spec"]["mtls"]["mode"], "STRICT");
    assert_eq!(peer["spec"]["selector"], selector);
    let authz = plan.get("AuthorizationPolicy", "web").unwrap().to_json();
    assert_eq!(authz["spec"]["action"], "ALLOW");
    assert_eq!(
        authz["spec"]["rules"],
        serde_json::json!([
            { "from": [{ "source": { "principals": [
                "cluster.local/ns/shop/sa/api", "corp.example/ns/batch/sa/reports"] } }] },
            { "from": [{ "source": { "namespaces": ["gateway", "monitoring"] } }] },
        ])
    );
    let rule = plan.get("DestinationRule", "web").unwrap().to_json();
    assert_eq!(rule["apiVersion"], "networking.istio.io/v1");
    assert_eq!(rule["spec"]["host"], "web.shop.svc.cluster.local");
    assert_eq!(rule["spec"]["trafficPolicy"]["tls"]["mode"], "ISTIO_MUTUAL");
    assert_eq!(
        rule["spec"]["trafficPolicy"]["outlierDetection"]["consecutive5xxErrors"],
        5
    );

    // Nobody declared and no router: the allow policy has no rule, so it lets nobody in.
    let closed = render(
        &one,
        &options(Router::None).mesh_policy(MeshPolicy::default().allow(vec![])),
    );
    let authz = closed.get("AuthorizationPolicy", "web").unwrap().to_json();
    assert_eq!(authz["spec"]["rules"], serde_json::json!([]));
    // No allow-list: no authorization policy; no mesh policy: none of it.
    let open = render(&one, &options(gateway()).mesh_policy(MeshPolicy::default()));
    assert!(open.get("AuthorizationPolicy", "web").is_none());
    let plain = render(&one, &options(gateway()));
    assert!(plain.objects.iter().all(|o| !matches!(
        o.kind(),
        "ServiceAccount" | "PeerAuthentication" | "AuthorizationPolicy" | "DestinationRule"
    )));

    for (policy, want) in [
        (
            MeshPolicy::default().allow(vec![Caller::Service("Api".into())]),
            "invalid mesh_policy.callers[0]: \"Api\" is not a service or namespace name",
        ),
        (
            MeshPolicy::default().allow(vec![Caller::Principal("api".into())]),
            "invalid mesh_policy.callers[0]: \"api\" is not a principal",
        ),
    ] {
        let e = message(render::plan(
            &name,
            &one,
            &secrets,
            &options(gateway()).mesh_policy(policy),
        ));
        assert!(e.starts_with(want), "{e}\nwanted {want}");
    }
}

/// An Ingress has no weights: with a split, the Ingress sends everything to the stable Service
/// (the largest weight), whose selector is what observe reports; the route holds no traffic
/// annotation (the stable Service does), and a preview gets its own Ingress and host.
#[test]
fn the_ingress_router_sends_everything_to_the_stable_service() {
    let (v1, v2) = revisions();
    let plan = render(
        &two(Traffic::routed(canary_routes(25))),
        &options(ingress()),
    );
    assert!(
        kinds(&plan).ends_with(&["Ingress/web".into()]),
        "{:?}",
        kinds(&plan)
    );
    let Some(Object::Ingress(ing)) = plan.get("Ingress", "web") else {
        panic!("an Ingress");
    };
    round_trip::<Ingress>(&plan.get("Ingress", "web").unwrap().to_json());
    let spec = ing.spec.as_ref().unwrap();
    assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
    assert!(spec.tls.is_none(), "no TLS unless asked");
    let rules = spec.rules.as_ref().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].host.as_deref(), Some("web.apps.example.com"));
    let paths = &rules[0].http.as_ref().unwrap().paths;
    assert_eq!(paths.len(), 1, "one backend: no weights");
    assert_eq!(paths[0].path.as_deref(), Some("/"));
    assert_eq!(paths[0].path_type, "Prefix");
    let backend = paths[0].backend.service.as_ref().unwrap();
    assert_eq!(backend.name, "web");
    assert_eq!(backend.port.as_ref().unwrap().number, Some(80));
    // The stable Service selects the largest weight, and carries the routing applied.
    let svc = plan.get("Service", "web").unwrap().to_json();
    assert_eq!(svc["spec"]["selector"][LABEL_REVISION], v1.id.as_str());
    assert!(svc["metadata"]["annotations"][ANNOTATION_TRAFFIC].is_string());
    assert!(ing.metadata.annotations.is_none());
    // A canary step changes only the stable Service's annotation: the Ingress stays put.
    let at50 = render(
        &two(Traffic::routed(canary_routes(50))),
        &options(ingress()),
    );
    assert_eq!(changed(&plan, &at50), ["Service/web"]);
    // A whole switch moves the stable Service, not the Ingress.
    let switched = render(
        &two(Traffic::routed(Routes::all_to(&v2.id))),
        &options(ingress()),
    );
    let svc = switched.get("Service", "web").unwrap().to_json();
    assert_eq!(svc["spec"]["selector"][LABEL_REVISION], v2.id.as_str());
    assert_eq!(
        plan.get("Ingress", "web").unwrap().to_json()["spec"],
        switched.get("Ingress", "web").unwrap().to_json()["spec"]
    );
    // A preview: its own Ingress and host, to the preview Service.
    let plans: BTreeMap<&str, Plan> = scenarios().into_iter().collect();
    let preview = plans["ingress_tls"]
        .get("Ingress", "web-preview")
        .unwrap()
        .to_json();
    assert_eq!(
        preview["spec"]["rules"][0]["host"],
        "web-preview.apps.example.com"
    );
    assert_eq!(
        preview["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"],
        "web-preview"
    );
    // The controller's namespace may reach the app port through the default deny.
    let policy = plan.get("NetworkPolicy", "web").unwrap().to_json();
    assert!(
        policy["spec"]["ingress"][0]["from"]
            .as_array()
            .unwrap()
            .iter()
            .any(
                |p| p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                    == "ingress-nginx"
            ),
        "{policy:#}"
    );
}

/// TLS per router: the Ingress terminates it itself (`spec.tls`), with the user's Secret or
/// the one cert-manager issues from a rendered Certificate; a Gateway of another namespace
/// gets a ReferenceGrant for exactly that Secret; an Istio gateway of the app namespace gets
/// the Certificate; what cannot work is refused naming `tls`.
#[test]
fn tls_renders_for_each_router() {
    let (v1, _) = revisions();
    let one = DesiredState::new(
        vec![RevisionTarget::new(v1.clone(), 1)],
        Traffic::routed(Routes::all_to(&v1.id)),
    );
    let secrets = secrets_for(&[&v1]);
    let name = web().name;

    // Ingress with the user's Secret: spec.tls, no Certificate, no grant.
    let plan = render(
        &one,
        &options(ingress()).tls(RouteTls::secret("wildcard-apps")),
    );
    let ing = plan.get("Ingress", "web").unwrap().to_json();
    round_trip::<Ingress>(&ing);
    assert_eq!(
        ing["spec"]["tls"],
        serde_json::json!([{ "hosts": ["web.apps.example.com"], "secretName": "wildcard-apps" }])
    );
    assert!(plan.get("Certificate", "web").is_none());
    assert!(plan.get("ReferenceGrant", "web").is_none());

    // Ingress with cert-manager: a Certificate for both hosts, before the Ingress.
    let plan = render(&one, &options(ingress()).tls(letsencrypt()));
    let cert = plan.get("Certificate", "web").unwrap().to_json();
    round_trip::<cert_manager::Certificate>(&cert);
    assert_eq!(cert["apiVersion"], "cert-manager.io/v1");
    assert_eq!(
        cert["spec"],
        serde_json::json!({
            "secretName": "web-tls",
            "dnsNames": ["web.apps.example.com", "web-preview.apps.example.com"],
            "issuerRef": { "group": "cert-manager.io", "kind": "ClusterIssuer", "name": "letsencrypt" },
        })
    );
    assert_eq!(cert["metadata"]["labels"][LABEL_NAME], "web");
    let ing = plan.get("Ingress", "web").unwrap().to_json();
    assert_eq!(ing["spec"]["tls"][0]["secretName"], "web-tls");
    assert!(kinds(&plan).ends_with(&["Certificate/web".into(), "Ingress/web".into()]));

    // Gateway API in another namespace: Certificate for the hostnames, and a grant letting
    // that namespace's Gateways read the one Secret.
    let plan = render(&one, &options(gateway()).tls(letsencrypt()));
    let cert = plan.get("Certificate", "web").unwrap().to_json();
    assert_eq!(
        cert["spec"]["dnsNames"],
        serde_json::json!(["shop.example.com"])
    );
    let grant = plan.get("ReferenceGrant", "web").unwrap().to_json();
    round_trip::<gateway_api::ReferenceGrant>(&grant);
    assert_eq!(grant["apiVersion"], "gateway.networking.k8s.io/v1beta1");
    assert_eq!(grant["metadata"]["namespace"], "shop");
    assert_eq!(
        grant["spec"],
        serde_json::json!({
            "from": [{ "group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "gateway" }],
            "to": [{ "group": "", "kind": "Secret", "name": "web-tls" }],
        })
    );
    // The HTTPRoute itself is the same: the listener terminates TLS.
    assert_eq!(
        plan.get("HTTPRoute", "web").unwrap().to_json(),
        render(&one, &options(gateway()))
            .get("HTTPRoute", "web")
            .unwrap()
            .to_json()
    );
    // The user's Secret through a Gateway of another namespace: the grant names it.
    let plan = render(&one, &options(gateway()).tls(RouteTls::secret("shop-cert")));
    assert!(plan.get("Certificate", "web").is_none());
    let grant = plan.get("ReferenceGrant", "web").unwrap().to_json();
    assert_eq!(grant["spec"]["to"][0]["name"], "shop-cert");
    // A Gateway of the app's own namespace needs no grant.
    let local = options(Router::GatewayApi {
        parent: ParentRef::new("shop-gateway"),
        hostnames: vec!["shop.example.com".into()],
    })
    .tls(letsencrypt());
    let plan = render(&one, &local);
    assert!(plan.get("Certificate", "web").is_some());
    assert!(plan.get("ReferenceGrant", "web").is_none());

    // Istio: a gateway of the app namespace gets the Certificate; elsewhere is refused.
    let local_istio = options(Router::Istio {
        gateways: vec!["shop/public".into()],
        hosts: vec!["shop.example.com".into(), "*".into()],
    })
    .tls(letsencrypt());
    let plan = render(&one, &local_istio);
    let cert = plan.get("Certificate", "web").unwrap().to_json();
    assert_eq!(
        cert["spec"]["dnsNames"],
        serde_json::json!(["shop.example.com"])
    );
    let err = message(render::plan(
        &name,
        &one,
        &secrets,
        &options(istio()).tls(letsencrypt()),
    ));
    assert!(
        err.starts_with("invalid tls: an Istio gateway reads tls.credentialName")
            && err.contains("istio-ingress/public-gateway"),
        "{err}"
    );
    // No router: nothing terminates TLS.
    let err = message(render::plan(
        &name,
        &one,
        &secrets,
        &options(Router::None).tls(letsencrypt()),
    ));
    assert!(err.starts_with("invalid tls: there is no router"), "{err}");
}

#[test]
fn tls_and_ingress_errors_name_the_field() {
    let (v1, _) = revisions();
    let one = DesiredState::new(vec![RevisionTarget::new(v1.clone(), 1)], Traffic::default());
    let secrets = secrets_for(&[&v1]);
    let name = web().name;
    let err = |options: RenderOptions| message(render::plan(&name, &one, &secrets, &options));

    let e = err(options(ingress()).tls(RouteTls::secret("")));
    assert!(e.starts_with("invalid tls.secret_name: is empty"), "{e}");
    let e = err(options(ingress()).tls(RouteTls::secret("Shop_Cert")));
    assert!(e.starts_with("invalid tls.secret_name"), "{e}");
    let e =
        err(options(ingress()).tls(RouteTls::cert_manager(Issuer::new(IssuerKind::Issuer, ""))));
    assert!(e.starts_with("invalid tls.issuer.name"), "{e}");
    let e = "issuer".parse::<IssuerKind>().unwrap_err().to_string();
    assert_eq!(
        e,
        "invalid tls.issuer.kind: \"issuer\" is not a cert-manager issuer kind: use Issuer or \
         ClusterIssuer"
    );
    assert_eq!(
        "ClusterIssuer".parse::<IssuerKind>().unwrap(),
        IssuerKind::ClusterIssuer
    );
    let e = err(options(Router::GatewayApi {
        parent: ParentRef::new("gw").in_namespace("gateway"),
        hostnames: vec![],
    })
    .tls(letsencrypt()));
    assert!(
        e.starts_with("invalid tls: cert-manager needs the names"),
        "{e}"
    );
    let e = err(options(Router::ingress(
        "Apps.Example.com",
        "ingress-nginx",
    )));
    assert!(e.starts_with("invalid router.domain"), "{e}");
    let e = err(options(Router::ingress("apps.example.com", "Ingress")));
    assert!(e.starts_with("invalid router.controller_namespace"), "{e}");
    let e = err(options(
        Router::ingress("apps.example.com", "ingress-nginx").class("Nginx!"),
    ));
    assert!(e.starts_with("invalid router.class"), "{e}");
    let timeouts = deploykit_k8s::render::RouteTimeouts::new(Duration::from_secs(5)).unwrap();
    let e = err(options(ingress()).route_timeouts(timeouts));
    assert!(e.starts_with("invalid route_timeouts: an Ingress"), "{e}");
    for bad in [
        "relative/dir",
        "/",
        "/tmp",
        "/tmp/",
        "/run/../etc",
        "/run//x",
        "/a:b",
    ] {
        let e = err(options(ingress()).secret_files(bad));
        assert!(e.starts_with("invalid secret_files"), "{bad}: {e}");
    }
}

/// Secrets as files: the revision's Secret as a `secret` volume (mode 0400, one file per key),
/// mounted read-only where asked, no `secretKeyRef` variables, and an `fsGroup` the app reads
/// them as; environment variables stay the default.
#[test]
fn secrets_mount_as_files_when_asked() {
    let (v1, _) = revisions();
    let one = DesiredState::new(vec![RevisionTarget::new(v1.clone(), 1)], Traffic::default());
    let by_env = pod_of(&render(&one, &options(gateway())));
    let c = &by_env.containers[0];
    assert!(
        c.env
            .iter()
            .flatten()
            .any(|e| e.name == "DATABASE_URL" && e.value_from.is_some())
    );
    assert_eq!(by_env.volumes.as_ref().unwrap().len(), 1, "only /tmp");
    assert_eq!(
        by_env.security_context.as_ref().unwrap().fs_group,
        None,
        "no fsGroup without secret files or run_as"
    );

    let plan = render(&one, &options(gateway()).secret_files("/run/secrets/app"));
    let pod = pod_of(&plan);
    let c = &pod.containers[0];
    assert!(
        c.env.iter().flatten().all(|e| e.value_from.is_none()),
        "{:?}",
        c.env
    );
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "secrets")
        .unwrap();
    let secret = volume.secret.as_ref().unwrap();
    assert_eq!(
        secret.secret_name.as_deref(),
        Some(format!("web-{}-secrets", &v1.id.as_str()[..8]).as_str())
    );
    assert_eq!(secret.default_mode, Some(0o400));
    assert!(secret.items.is_none(), "every key, one file each");
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "secrets")
        .unwrap();
    assert_eq!(mount.mount_path, "/run/secrets/app");
    assert_eq!(mount.read_only, Some(true));
    assert!(
        c.volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path == "/tmp")
    );
    let ctx = pod.security_context.as_ref().unwrap();
    assert_eq!(ctx.fs_group, Some(65532));
    assert_eq!(ctx.run_as_non_root, Some(true));
    // With a numbered user, its group reads them.
    let pod = pod_of(&render(
        &one,
        &options(gateway())
            .secret_files("/run/secrets/app")
            .run_as(1000, 3000),
    ));
    assert_eq!(pod.security_context.unwrap().fs_group, Some(3000));
    // The Deployment still fits its schema, and the values stay out of it.
    let deployment = plan
        .objects
        .iter()
        .find(|o| o.kind() == "Deployment")
        .unwrap()
        .to_json();
    round_trip::<Deployment>(&deployment);
    assert!(!deployment.to_string().contains(SECRET_VALUE));
    // A revision without secrets gets no volume.
    let plain = ServiceSpec::builder()
        .name("web")
        .port(8080)
        .build()
        .unwrap();
    let rev = Revision::new(&plain, &production(), sha('e'), "v5").unwrap();
    let desired = DesiredState::new(vec![RevisionTarget::new(rev, 1)], Traffic::default());
    let pod = pod_of(&render(
        &desired,
        &options(gateway()).secret_files("/run/secrets/app"),
    ));
    assert!(pod.volumes.iter().flatten().all(|v| v.name != "secrets"));
    assert_eq!(pod.security_context.unwrap().fs_group, None);
}

// ------------------------------------------------------------------------------------------
// The revision's TrafficPolicy in Kubernetes objects
// ------------------------------------------------------------------------------------------

/// `b` takes `percent` and the `x-canary: always` header route.
fn canary_routes_of(a: &Revision, b: &Revision, percent: u32) -> Routes {
    let mut routes = Routes::split(&a.id, &b.id, Weight::new(percent).unwrap());
    routes.header = Some(HeaderRoute::new("x-canary", "always", b.id.clone()));
    routes
}

fn render_pair(
    a: &Arc<Revision>,
    b: &Arc<Revision>,
    traffic: Traffic,
    options: &RenderOptions,
) -> Plan {
    let desired = DesiredState::new(
        vec![
            RevisionTarget::new(a.clone(), 3),
            RevisionTarget::new(b.clone(), 1),
        ],
        traffic,
    );
    render::plan(&web().name, &desired, &secrets_for(&[a, b]), options).unwrap()
}

fn app_protocol(plan: &Plan, service: &str) -> Value {
    plan.get("Service", service).unwrap().to_json()["spec"]["ports"][0]["appProtocol"].clone()
}

/// The default policy renders nothing new: no `appProtocol`, no retries, no DestinationRule
/// without a mesh policy, no timeouts without route timeouts (and the golden files, rendered
/// with the default policy, are unchanged byte for byte: `golden_plans`).
#[test]
fn the_default_traffic_policy_changes_no_object() {
    for (name, plan) in scenarios() {
        for object in &plan.objects {
            let json = object.to_json();
            match object {
                Object::Service(_) => {
                    assert!(
                        json["spec"]["ports"][0].get("appProtocol").is_none(),
                        "{name}"
                    )
                }
                Object::VirtualService(_) => {
                    for route in json["spec"]["http"].as_array().unwrap() {
                        assert!(route.get("retries").is_none(), "{name}: {route}");
                        assert!(route.get("timeout").is_none(), "{name}: {route}");
                    }
                }
                Object::HttpRoute(_) => {
                    for rule in json["spec"]["rules"].as_array().unwrap() {
                        assert!(rule.get("timeouts").is_none(), "{name}: {rule}");
                    }
                }
                Object::DestinationRule(_) => panic!("{name}: a DestinationRule without a breaker"),
                _ => {}
            }
        }
    }
    // A mesh policy's DestinationRule keeps its own defaults.
    let (v1, _) = revisions();
    let one = DesiredState::new(vec![RevisionTarget::new(v1, 1)], Traffic::default());
    let plan = render(&one, &options(istio()).mesh_policy(MeshPolicy::default()));
    let rule = plan.get("DestinationRule", "web").unwrap().to_json();
    assert_eq!(
        rule["spec"]["trafficPolicy"],
        serde_json::json!({
            "connectionPool": { "http": { "http1MaxPendingRequests": 1024 } },
            "outlierDetection": {
                "consecutive5xxErrors": 5,
                "interval": "10s",
                "baseEjectionTime": "30s",
                "maxEjectionPercent": 50,
            },
            "tls": { "mode": "ISTIO_MUTUAL" },
        })
    );
}

/// Each Service's port says what its revision speaks: `kubernetes.io/h2c` (KEP-3726, Gateway
/// API GEP-1911) for h2c and gRPC, or under Istio its own `http2` and `grpc`; HTTP/1.1 has
/// none. The stable Service follows the largest weight, or the first listed revision under
/// `ByReadyInstances`.
#[test]
fn protocols_become_the_app_protocol_of_each_service() {
    for (protocol, router, want) in [
        (Protocol::Grpc, gateway(), "kubernetes.io/h2c"),
        (Protocol::H2c, gateway(), "kubernetes.io/h2c"),
        (Protocol::Grpc, istio(), "grpc"),
        (Protocol::H2c, istio(), "http2"),
        (Protocol::Grpc, ingress(), "kubernetes.io/h2c"),
        (Protocol::H2c, Router::None, "kubernetes.io/h2c"),
    ] {
        let policy = TrafficPolicy::builder().protocol(protocol).build().unwrap();
        let (v1, v2) = revisions_with(policy);
        let opts = options(router);
        // v2 is the canary: only its Service says so.
        let plan = render_pair(
            &v1,
            &v2,
            Traffic::routed(canary_routes_of(&v1, &v2, 10)),
            &opts,
        );
        assert_eq!(app_protocol(&plan, "web"), Value::Null, "{protocol:?}");
        assert_eq!(app_protocol(&plan, "web-canary"), want, "{protocol:?}");
        for object in &plan.objects {
            if let Object::Service(_) = object {
                round_trip::<Service>(&object.to_json());
            }
        }
        // v2 promoted: the stable Service carries it.
        let plan = render_pair(&v1, &v2, Traffic::routed(Routes::all_to(&v2.id)), &opts);
        assert_eq!(app_protocol(&plan, "web"), want);
        assert_eq!(app_protocol(&plan, "web-canary"), Value::Null);
        // A preview of v2 is reached with its protocol.
        let mut preview = Routes::all_to(&v1.id);
        preview.preview = Some(v2.id.clone());
        if !matches!(
            opts.router,
            Router::GatewayApi { .. } | Router::Istio { .. }
        ) {
            continue;
        }
        let plan = render_pair(&v1, &v2, Traffic::routed(preview), &opts);
        assert_eq!(app_protocol(&plan, "web-preview"), want);
        // A rolling update: every pod behind one Service, which speaks the first listed's.
        let rolling = render_pair(&v2, &v1, Traffic::ByReadyInstances, &opts);
        assert_eq!(app_protocol(&rolling, "web"), want);
        let rolling = render_pair(&v1, &v2, Traffic::ByReadyInstances, &opts);
        assert_eq!(app_protocol(&rolling, "web"), Value::Null);
    }
}

/// Istio: each VirtualService route gets its revision's `timeout` and `retries`
/// (`attempts`, `perTryTimeout`, `retryOn`: connection failures, refused streams, resets when
/// attempts time out, and the statuses as numbers); the route timeouts of the options take
/// precedence over the policy's timeout.
#[test]
fn istio_routes_carry_the_revision_s_timeout_and_retries() {
    use deploykit_k8s::render::RouteTimeouts;
    let (v1, v2) = revisions_with(full_policy(Protocol::Http));
    // v1 (default policy) is stable; v2 takes 10% and the header route.
    let plan = render_pair(
        &v1,
        &v2,
        Traffic::routed(canary_routes_of(&v1, &v2, 10)),
        &options(istio()),
    );
    let vs = plan.get("VirtualService", "web").unwrap().to_json();
    round_trip::<istio::VirtualService>(&vs);
    let http = vs["spec"]["http"].as_array().unwrap();
    let (header, primary) = (&http[0], &http[1]);
    assert_eq!(header["name"], "header");
    assert_eq!(header["timeout"], "5s");
    assert_eq!(
        header["retries"],
        serde_json::json!({
            "attempts": 3,
            "perTryTimeout": "1.5s",
            "retryOn": "connect-failure,refused-stream,reset,503,504",
        })
    );
    assert!(primary.get("timeout").is_none(), "{primary}");
    assert!(primary.get("retries").is_none(), "{primary}");

    // Promoted: the primary route is v2's.
    let plan = render_pair(
        &v1,
        &v2,
        Traffic::routed(Routes::all_to(&v2.id)),
        &options(istio()),
    );
    let vs = plan.get("VirtualService", "web").unwrap().to_json();
    let primary = &vs["spec"]["http"][0];
    assert_eq!(primary["timeout"], "5s");
    assert_eq!(primary["retries"]["attempts"], 3);

    // Without a per-try timeout there is nothing to reset for: no `reset`.
    let policy = TrafficPolicy::builder()
        .retries(Retries::default())
        .build()
        .unwrap();
    let (a, b) = revisions_with(policy);
    let plan = render_pair(
        &a,
        &b,
        Traffic::routed(Routes::all_to(&b.id)),
        &options(istio()),
    );
    let vs = plan.get("VirtualService", "web").unwrap().to_json();
    round_trip::<istio::VirtualService>(&vs);
    assert_eq!(
        vs["spec"]["http"][0]["retries"],
        serde_json::json!({ "attempts": 2, "retryOn": "connect-failure,refused-stream,502,503,504" })
    );
    assert!(vs["spec"]["http"][0].get("timeout").is_none());

    // The environment's route timeouts win over the service's.
    let timeouts = RouteTimeouts::new(Duration::from_secs(20)).unwrap();
    let plan = render_pair(
        &v1,
        &v2,
        Traffic::routed(Routes::all_to(&v2.id)),
        &options(istio()).route_timeouts(timeouts),
    );
    let vs = plan.get("VirtualService", "web").unwrap().to_json();
    assert_eq!(vs["spec"]["http"][0]["timeout"], "20s");
    assert_eq!(vs["spec"]["http"][0]["retries"]["perTryTimeout"], "1.5s");
}

/// Gateway API: a rule gets its revision's timeout as `timeouts.request` (GEP-2257), unless
/// the route timeouts of the options are set, which win. Retries (experimental, GEP-1731),
/// the breaker and the rate limit are not rendered: the route is the same as without them.
#[test]
fn gateway_routes_carry_the_revision_s_timeout_only() {
    use deploykit_k8s::render::RouteTimeouts;
    let (v1, v2) = revisions_with(full_policy(Protocol::Http));
    let plan = render_pair(
        &v1,
        &v2,
        Traffic::routed(canary_routes_of(&v1, &v2, 10)),
        &options(gateway()),
    );
    let route = plan.get("HTTPRoute", "web").unwrap().to_json();
    round_trip::<gateway_api::HttpRoute>(&route);
    let rules = route["spec"]["rules"].as_array().unwrap();
    assert_eq!(rules[0]["timeouts"], serde_json::json!({ "request": "5s" }));
    assert!(rules[1].get("timeouts").is_none(), "{}", rules[1]);
    for rule in rules {
        assert!(
            rule.get("retry").is_none() && rule.get("retries").is_none(),
            "{rule}"
        );
    }
    assert!(plan.get("DestinationRule", "web").is_none());

    // A preview of v2 has v2's timeout.
    let mut preview = Routes::all_to(&v1.id);
    preview.preview = Some(v2.id.clone());
    let plan = render_pair(&v1, &v2, Traffic::routed(preview), &options(gateway()));
    let route = plan.get("HTTPRoute", "web-preview").unwrap().to_json();
    round_trip::<gateway_api::HttpRoute>(&route);
    assert_eq!(route["spec"]["rules"][0]["timeouts"]["request"], "5s");
    let route = plan.get("HTTPRoute", "web").unwrap().to_json();
    assert!(route["spec"]["rules"][0].get("timeouts").is_none());

    // The environment's route timeouts win, on every rule.
    let timeouts = RouteTimeouts::new(Duration::from_secs(20))
        .unwrap()
        .backend_request(Duration::from_secs(2))
        .unwrap();
    let plan = render_pair(
        &v1,
        &v2,
        Traffic::routed(canary_routes_of(&v1, &v2, 10)),
        &options(gateway()).route_timeouts(timeouts),
    );
    let route = plan.get("HTTPRoute", "web").unwrap().to_json();
    for rule in route["spec"]["rules"].as_array().unwrap() {
        assert_eq!(
            rule["timeouts"],
            serde_json::json!({ "request": "20s", "backendRequest": "2s" })
        );
    }

    // Ingress: neither timeouts nor anything else of the policy; the Ingress is unchanged.
    let with = render_pair(
        &v1,
        &v2,
        Traffic::routed(Routes::all_to(&v2.id)),
        &options(ingress()),
    );
    let (p1, p2) = revisions();
    let without = render_pair(
        &p1,
        &p2,
        Traffic::routed(Routes::all_to(&p2.id)),
        &options(ingress()),
    );
    assert_eq!(
        with.get("Ingress", "web").unwrap().to_json()["spec"],
        without.get("Ingress", "web").unwrap().to_json()["spec"]
    );
}

/// A circuit breaker becomes the DestinationRule's `outlierDetection` and
/// `connectionPool.http.http2MaxRequests`: behind an Istio router a DestinationRule is
/// rendered for it even without a mesh policy (no mTLS settings then), and with a mesh policy
/// the breaker overrides its defaults. Without Istio nor a mesh policy nothing carries it.
#[test]
fn a_circuit_breaker_becomes_the_destination_rule() {
    let (v1, v2) = revisions_with(full_policy(Protocol::Http));
    let promoted = Traffic::routed(Routes::all_to(&v2.id));
    let expected_outlier = serde_json::json!({
        "consecutive5xxErrors": 3,
        "interval": "10s",
        "baseEjectionTime": "45s",
        "maxEjectionPercent": 50,
    });

    let plan = render_pair(&v1, &v2, promoted.clone(), &options(istio()));
    let kinds = kinds(&plan);
    let network = kinds.iter().position(|k| k == "NetworkPolicy/web").unwrap();
    assert_eq!(kinds[network + 1], "DestinationRule/web", "{kinds:?}");
    assert!(plan.get("ServiceAccount", "web").is_none());
    let rule = plan.get("DestinationRule", "web").unwrap().to_json();
    round_trip::<istio::Object<istio::DestinationRule>>(&rule);
    assert_eq!(rule["spec"]["host"], "web.shop.svc.cluster.local");
    assert_eq!(
        rule["spec"]["trafficPolicy"],
        serde_json::json!({
            "connectionPool": { "http": { "http2MaxRequests": 64, "http1MaxPendingRequests": 64 } },
            "outlierDetection": expected_outlier,
        })
    );

    // With a mesh policy: mTLS stays, the breaker replaces the outlier defaults, and pending
    // requests are capped by the smaller of the two.
    let plan = render_pair(
        &v1,
        &v2,
        promoted.clone(),
        &options(gateway()).mesh_policy(MeshPolicy::default()),
    );
    let rule = plan.get("DestinationRule", "web").unwrap().to_json();
    round_trip::<istio::Object<istio::DestinationRule>>(&rule);
    let policy = &rule["spec"]["trafficPolicy"];
    assert_eq!(policy["outlierDetection"], expected_outlier);
    assert_eq!(
        policy["connectionPool"]["http"],
        serde_json::json!({ "http2MaxRequests": 64, "http1MaxPendingRequests": 64 })
    );
    assert_eq!(policy["tls"]["mode"], "ISTIO_MUTUAL");

    // A mesh policy that turned outlier detection off still gets the service's breaker.
    let mut off = MeshPolicy::default();
    off.outlier_consecutive_5xx = 0;
    let plan = render_pair(
        &v1,
        &v2,
        promoted.clone(),
        &options(istio()).mesh_policy(off),
    );
    let rule = plan.get("DestinationRule", "web").unwrap().to_json();
    assert_eq!(
        rule["spec"]["trafficPolicy"]["outlierDetection"],
        expected_outlier
    );

    // The breaker follows the serving revision: with v1 (no breaker) stable, no rule.
    let plan = render_pair(
        &v1,
        &v2,
        Traffic::routed(canary_routes_of(&v1, &v2, 10)),
        &options(istio()),
    );
    assert!(plan.get("DestinationRule", "web").is_none());
    // A breaker without max_requests caps nothing.
    let breaker_only = TrafficPolicy::builder()
        .circuit_breaker(CircuitBreaker::default())
        .build()
        .unwrap();
    let (a, b) = revisions_with(breaker_only);
    let plan = render_pair(
        &a,
        &b,
        Traffic::routed(Routes::all_to(&b.id)),
        &options(istio()),
    );
    let rule = plan.get("DestinationRule", "web").unwrap().to_json();
    round_trip::<istio::Object<istio::DestinationRule>>(&rule);
    assert!(
        rule["spec"]["trafficPolicy"]
            .get("connectionPool")
            .is_none(),
        "{rule}"
    );
    assert_eq!(
        rule["spec"]["trafficPolicy"]["outlierDetection"]["baseEjectionTime"],
        "30s"
    );
    // Neither Istio nor a mesh policy: nothing carries the breaker.
    for router in [gateway(), ingress(), Router::None] {
        let plan = render_pair(&v1, &v2, promoted.clone(), &options(router));
        assert!(plan.get("DestinationRule", "web").is_none());
    }
}
