//! `KubeEnvironment` against a mocked API server, in the style of kube-rs' own mock tests: a
//! `tower_test` mock service stands in for the cluster and an [`ApiServerVerifier`] task
//! asserts every request in order (method, path, query, content type, body) and answers it.
//! Every test awaits the verifier with a timeout, so a missing call fails the test, and an
//! unexpected extra call fails the environment's call (the mock is closed).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use deploykit_core::environment::Routes;
use deploykit_core::{
    DesiredState, Digest, Environment, EnvironmentKind, EnvironmentSpec, FailureKind, MetricQuery,
    Monitor, Revision, RevisionTarget, ServiceId, ServiceSpec, Traffic, Weight,
};
use deploykit_k8s::render::{self, ParentRef, RenderOptions, Router};
use deploykit_k8s::{KubeEnvironment, RetryPolicy};
use deploykit_testing::k8s::RecordedRequest;
use futures::TryStreamExt;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;

// ------------------------------------------------------------------------------------------
// Fixture
// ------------------------------------------------------------------------------------------

const NS: &str = "default";
const SELECTOR: &str = "app.kubernetes.io/name=web,app.kubernetes.io/managed-by=deploykit";

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

fn revision(label: &str) -> Revision {
    let prod = EnvironmentSpec::builder()
        .name("production")
        .kind(EnvironmentKind::Production)
        .build()
        .unwrap();
    Revision::new(
        &web(),
        &prod,
        Digest::of_bytes(format!("web {label}").as_bytes()),
        label,
    )
    .unwrap()
}

fn options() -> RenderOptions {
    RenderOptions::new(NS)
        .image("web", "registry.example.com/web")
        .router(Router::GatewayApi {
            parent: ParentRef::new("public"),
            hostnames: vec!["web.example.com".into()],
        })
}

fn rev8(r: &Revision) -> &str {
    &r.id.as_str()[..8]
}

fn split(stable: &Revision, canary: &Revision, percent: u32) -> Traffic {
    Traffic::routed(Routes::split(
        &stable.id,
        &canary.id,
        Weight::new(percent).unwrap(),
    ))
}

fn desired(targets: &[(&Revision, u32)], traffic: Traffic) -> DesiredState {
    DesiredState::new(
        targets
            .iter()
            .map(|(r, n)| RevisionTarget::new((*r).clone(), *n))
            .collect(),
        traffic,
    )
}

/// `(kind, name)` of every object the plan for `desired` has, in apply order.
fn planned(desired: &DesiredState) -> Vec<Obj> {
    render::plan(&service(), desired, &BTreeMap::new(), &options())
        .unwrap()
        .objects
        .iter()
        .map(|o| obj(o.kind(), o.name()))
        .collect()
}

fn test_context() -> (KubeEnvironment, ApiServerVerifier) {
    let (mock_service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(mock_service, NS);
    (
        KubeEnvironment::new(client, options()),
        ApiServerVerifier::new(handle),
    )
}

async fn finish(verifier: JoinHandle<Vec<Recorded>>) -> Vec<Recorded> {
    tokio::time::timeout(Duration::from_secs(5), verifier)
        .await
        .expect("the API server did not receive every expected call in time")
        .expect("scenario completed")
}

// ------------------------------------------------------------------------------------------
// The mock API server
// ------------------------------------------------------------------------------------------

type Obj = (String, String);

fn obj(kind: &str, name: impl Into<String>) -> Obj {
    (kind.to_string(), name.into())
}

/// The kinds deploykit prunes for a service with a Gateway API router, in order.
const PRUNE_ORDER: [&str; 8] = [
    "HTTPRoute",
    "Service",
    "ConfigMap",
    "Secret",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "NetworkPolicy",
    "Deployment",
];

fn collection(kind: &str) -> String {
    let (prefix, plural) = match kind {
        "ConfigMap" => ("/api/v1", "configmaps"),
        "LimitRange" => ("/api/v1", "limitranges"),
        "ResourceQuota" => ("/api/v1", "resourcequotas"),
        "Secret" => ("/api/v1", "secrets"),
        "Service" => ("/api/v1", "services"),
        "Pod" => ("/api/v1", "pods"),
        "Deployment" => ("/apis/apps/v1", "deployments"),
        "HorizontalPodAutoscaler" => ("/apis/autoscaling/v2", "horizontalpodautoscalers"),
        "PodDisruptionBudget" => ("/apis/policy/v1", "poddisruptionbudgets"),
        "NetworkPolicy" => ("/apis/networking.k8s.io/v1", "networkpolicies"),
        "HTTPRoute" => ("/apis/gateway.networking.k8s.io/v1", "httproutes"),
        other => panic!("unexpected kind {other}"),
    };
    format!("{prefix}/namespaces/{NS}/{plural}")
}

/// One request as received, for the test to inspect after the scenario.
#[derive(Clone, Debug)]
struct Recorded {
    method: Method,
    path: String,
    query: BTreeMap<String, String>,
    body: Value,
}

impl Recorded {
    fn is_patch_of(&self, kind: &str, name: &str) -> bool {
        self.method == Method::PATCH && self.path == format!("{}/{name}", collection(kind))
    }
    fn is_delete_of(&self, kind: &str, name: &str) -> bool {
        self.method == Method::DELETE && self.path == format!("{}/{name}", collection(kind))
    }
}

/// What one `apply` should send.
#[derive(Default)]
struct ApplyCalls {
    /// The PATCHes, in order.
    patches: Vec<Obj>,
    /// The DELETEs of the prune, in order.
    deletes: Vec<Obj>,
    /// Whether the applies force conflicts.
    force: bool,
    /// Answer the first PATCH of this object with a 429 (`retryAfterSeconds`), then expect it
    /// again no sooner.
    throttle: Option<(Obj, u32)>,
    /// Answer the PATCH of this object with a 409 and this message; nothing follows.
    conflict: Option<(Obj, String)>,
}

/// Scenarios the verifier plays.
enum Scenario {
    /// One `apply`: its PATCHes, then the prune's LISTs (answered from the objects the
    /// verifier has seen applied) and DELETEs.
    Apply(ApplyCalls),
    /// Several scenarios one after another, on one cluster.
    Sequence(Vec<Scenario>),
    /// A pod watch: LIST, a WATCH answered with `410 Gone`, a re-LIST; then an `observe` that
    /// lists Deployments and reads the Service but takes Pods from the watch cache.
    WatchGone {
        before: Vec<Value>,
        after: Vec<Value>,
        deployments: Vec<Value>,
    },
    /// An `observe` without a watch: Deployments, Pods, the stable Service.
    Observe {
        deployments: Vec<Value>,
        pods: Vec<Value>,
        service: Option<Value>,
    },
    /// An `observe` of a service with no Deployments: one LIST, nothing else.
    ObserveUnknown,
    /// A `teardown`: collection deletes per kind, Services one by one.
    Teardown { services: Vec<String> },
    /// `ensure_namespace_objects`: one server-side apply per object, nothing else.
    NamespaceObjects(Vec<Obj>),
}

struct ApiServerVerifier {
    handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    /// The objects applied and not deleted, as the prune LISTs see them.
    cluster: BTreeSet<Obj>,
    recorded: Vec<Recorded>,
}

type Responder = tower_test::mock::SendResponse<Response<Body>>;

fn respond(send: Responder, status: StatusCode, body: &Value) {
    send.send_response(
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": if code < 300 { "Success" } else { "Failure" },
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn list(kind: &str, items: Vec<Value>, resource_version: &str) -> Value {
    json!({
        "kind": format!("{kind}List"),
        "apiVersion": "v1",
        "metadata": { "resourceVersion": resource_version },
        "items": items,
    })
}

impl ApiServerVerifier {
    fn new(handle: tower_test::mock::Handle<Request<Body>, Response<Body>>) -> Self {
        ApiServerVerifier {
            handle,
            cluster: BTreeSet::new(),
            recorded: Vec::new(),
        }
    }

    /// Plays `scenario` on a task; the handle yields every request received, in order.
    fn run(self, scenario: Scenario) -> JoinHandle<Vec<Recorded>> {
        tokio::spawn(async move {
            let mut this = self;
            this.play(scenario).await;
            this.recorded
        })
    }

    fn play(&mut self, scenario: Scenario) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            match scenario {
                Scenario::Apply(calls) => self.handle_apply(calls).await,
                Scenario::Sequence(all) => {
                    for s in all {
                        self.play(s).await;
                    }
                }
                Scenario::WatchGone {
                    before,
                    after,
                    deployments,
                } => self.handle_watch_gone(before, after, deployments).await,
                Scenario::Observe {
                    deployments,
                    pods,
                    service,
                } => self.handle_observe(deployments, Some(pods), service).await,
                Scenario::ObserveUnknown => {
                    let (r, send) = self.next().await;
                    assert_eq!(r.method, Method::GET);
                    assert_eq!(r.path, collection("Deployment"));
                    respond(send, StatusCode::OK, &list("Deployment", vec![], "1"));
                }
                Scenario::Teardown { services } => self.handle_teardown(services).await,
                Scenario::NamespaceObjects(objects) => {
                    for (kind, name) in objects {
                        let (r, send) = self.next().await;
                        assert_eq!(
                            (&r.method, r.path.as_str()),
                            (
                                &Method::PATCH,
                                format!("{}/{name}", collection(&kind)).as_str()
                            ),
                        );
                        assert_eq!(
                            r.query.get("fieldManager").map(String::as_str),
                            Some("deploykit")
                        );
                        assert_eq!(r.body["kind"], json!(kind));
                        assert_eq!(r.body["metadata"]["namespace"], json!(NS));
                        respond(send, StatusCode::OK, &r.body);
                    }
                }
            }
        })
    }

    /// The next request, recorded, with its body parsed.
    async fn next(&mut self) -> (Recorded, Responder) {
        let (request, send) = self
            .handle
            .next_request()
            .await
            .expect("the environment stopped calling the API server too early");
        let request = RecordedRequest::read(request).await.unwrap();
        if request.method == "PATCH" {
            assert_eq!(
                request.content_type.as_deref(),
                Some("application/apply-patch+yaml"),
                "server-side apply"
            );
        }
        let recorded = Recorded {
            method: request.method.parse().unwrap(),
            query: request.params(),
            path: request.path,
            body: request.body.unwrap_or(Value::Null),
        };
        self.recorded.push(recorded.clone());
        (recorded, send)
    }

    /// Asserts a server-side apply of `(kind, name)` by field manager `deploykit`.
    fn assert_apply(r: &Recorded, (kind, name): &Obj, force: bool) {
        assert_eq!(
            (&r.method, r.path.as_str()),
            (
                &Method::PATCH,
                format!("{}/{name}", collection(kind)).as_str()
            ),
            "expected the apply of {kind}/{name}, got {} {}",
            r.method,
            r.path
        );
        assert_eq!(
            r.query.get("fieldManager").map(String::as_str),
            Some("deploykit")
        );
        assert_eq!(
            r.query.get("force").map(String::as_str),
            force.then_some("true"),
            "force only when asked"
        );
        assert_eq!(r.body["kind"], json!(kind));
        assert_eq!(r.body["metadata"]["name"], json!(name));
        assert_eq!(r.body["metadata"]["namespace"], json!(NS));
        let labels = &r.body["metadata"]["labels"];
        assert_eq!(labels["app.kubernetes.io/name"], json!("web"));
        assert_eq!(labels["app.kubernetes.io/managed-by"], json!("deploykit"));
    }

    async fn handle_apply(&mut self, calls: ApplyCalls) {
        let mut throttle = calls.throttle;
        for expected in &calls.patches {
            let (r, send) = self.next().await;
            Self::assert_apply(&r, expected, calls.force);
            if let Some((o, message)) = &calls.conflict
                && o == expected
            {
                respond(
                    send,
                    StatusCode::CONFLICT,
                    &status_body(409, "Conflict", message),
                );
                return;
            }
            if let Some((o, seconds)) = &throttle
                && o == expected
            {
                let mut body = status_body(429, "TooManyRequests", "too many requests");
                body["details"] = json!({ "retryAfterSeconds": seconds });
                respond(send, StatusCode::TOO_MANY_REQUESTS, &body);
                let refused = Instant::now();
                let (r, send) = self.next().await;
                Self::assert_apply(&r, expected, calls.force);
                assert!(
                    refused.elapsed() >= Duration::from_secs(u64::from(*seconds)),
                    "the retry must wait the Retry-After the API server asked for"
                );
                throttle = None;
                respond(send, StatusCode::OK, &r.body);
            } else {
                respond(send, StatusCode::OK, &r.body);
            }
            self.cluster.insert(expected.clone());
        }
        // The prune: per kind a LIST by the service's labels, then DELETEs of the stale.
        let mut deletes = calls.deletes.into_iter().peekable();
        for kind in PRUNE_ORDER {
            let (r, send) = self.next().await;
            assert_eq!(
                (&r.method, r.path.as_str()),
                (&Method::GET, collection(kind).as_str()),
                "expected the prune's LIST of {kind}"
            );
            assert_eq!(
                r.query.get("labelSelector").map(String::as_str),
                Some(SELECTOR)
            );
            assert!(!r.query.contains_key("watch"));
            let items: Vec<Value> = self
                .cluster
                .iter()
                .filter(|(k, _)| k == kind)
                .map(|(_, n)| json!({ "metadata": { "name": n, "namespace": NS } }))
                .collect();
            respond(send, StatusCode::OK, &list(kind, items, "7"));
            while let Some(d) = deletes.next_if(|(k, _)| k == kind) {
                let (r, send) = self.next().await;
                assert_eq!(
                    (&r.method, r.path.as_str()),
                    (
                        &Method::DELETE,
                        format!("{}/{}", collection(kind), d.1).as_str()
                    ),
                    "expected the DELETE of {kind}/{}",
                    d.1
                );
                assert_eq!(r.body["propagationPolicy"], json!("Background"));
                respond(send, StatusCode::OK, &status_body(200, "", ""));
                self.cluster.remove(&d);
            }
        }
        assert!(
            deletes.next().is_none(),
            "expected DELETEs not made (or not in prune order)"
        );
    }

    async fn handle_observe(
        &mut self,
        deployments: Vec<Value>,
        pods: Option<Vec<Value>>,
        route: Option<Value>,
    ) {
        let (r, send) = self.next().await;
        assert_eq!(
            (&r.method, r.path.as_str()),
            (&Method::GET, collection("Deployment").as_str())
        );
        assert_eq!(
            r.query.get("labelSelector").map(String::as_str),
            Some(SELECTOR)
        );
        respond(send, StatusCode::OK, &list("Deployment", deployments, "5"));
        if let Some(pods) = pods {
            let (r, send) = self.next().await;
            assert_eq!(
                (&r.method, r.path.as_str()),
                (&Method::GET, collection("Pod").as_str())
            );
            assert_eq!(
                r.query.get("labelSelector").map(String::as_str),
                Some(SELECTOR)
            );
            respond(send, StatusCode::OK, &list("Pod", pods, "5"));
        }
        let (r, send) = self.next().await;
        assert_eq!(
            (&r.method, r.path.as_str()),
            (
                &Method::GET,
                format!("{}/web", collection("HTTPRoute")).as_str()
            ),
            "the route is read for the routing (and Pods come from the watch cache)"
        );
        match route {
            Some(s) => respond(send, StatusCode::OK, &s),
            None => respond(
                send,
                StatusCode::NOT_FOUND,
                &status_body(
                    404,
                    "NotFound",
                    "httproutes.gateway.networking.k8s.io \"web\" not found",
                ),
            ),
        }
    }

    async fn handle_watch_gone(
        &mut self,
        before: Vec<Value>,
        after: Vec<Value>,
        deployments: Vec<Value>,
    ) {
        let watch_selector = "app.kubernetes.io/managed-by=deploykit";
        // The initial LIST.
        let (r, send) = self.next().await;
        assert_eq!(
            (&r.method, r.path.as_str()),
            (&Method::GET, collection("Pod").as_str())
        );
        assert!(!r.query.contains_key("watch"), "first a LIST");
        assert_eq!(
            r.query.get("labelSelector").map(String::as_str),
            Some(watch_selector)
        );
        respond(send, StatusCode::OK, &list("Pod", before, "10"));
        // The WATCH from its resource version, answered with 410 Gone.
        let (r, send) = self.next().await;
        assert_eq!(r.path, collection("Pod"));
        assert_eq!(r.query.get("watch").map(String::as_str), Some("true"));
        assert_eq!(
            r.query.get("resourceVersion").map(String::as_str),
            Some("10")
        );
        assert_eq!(
            r.query.get("labelSelector").map(String::as_str),
            Some(watch_selector)
        );
        let gone = json!({
            "type": "ERROR",
            "object": status_body(410, "Expired", "too old resource version: 10 (42)"),
        });
        let mut line = serde_json::to_vec(&gone).unwrap();
        line.push(b'\n');
        send.send_response(Response::builder().body(Body::from(line)).unwrap());
        // The watcher starts over with a new LIST.
        let (r, send) = self.next().await;
        assert_eq!(
            (&r.method, r.path.as_str()),
            (&Method::GET, collection("Pod").as_str())
        );
        assert!(
            !r.query.contains_key("watch"),
            "after 410 Gone the watcher must re-list, not resume the watch: {:?}",
            r.query
        );
        respond(send, StatusCode::OK, &list("Pod", after, "42"));
        // observe: Deployments and the Service from the API, Pods from the cache.
        self.handle_observe(deployments, None, None).await;
    }

    async fn handle_teardown(&mut self, services: Vec<String>) {
        for kind in PRUNE_ORDER {
            if kind == "Service" {
                let (r, send) = self.next().await;
                assert_eq!(
                    (&r.method, r.path.as_str()),
                    (&Method::GET, collection(kind).as_str())
                );
                let items = services
                    .iter()
                    .map(|n| json!({ "metadata": { "name": n } }))
                    .collect();
                respond(send, StatusCode::OK, &list(kind, items, "3"));
                for name in &services {
                    let (r, send) = self.next().await;
                    assert!(r.is_delete_of(kind, name), "{} {}", r.method, r.path);
                    // Already gone: a 404 is fine.
                    respond(
                        send,
                        StatusCode::NOT_FOUND,
                        &status_body(404, "NotFound", "gone"),
                    );
                }
                continue;
            }
            let (r, send) = self.next().await;
            assert_eq!(
                (&r.method, r.path.as_str()),
                (&Method::DELETE, collection(kind).as_str()),
                "a collection DELETE of {kind}"
            );
            assert_eq!(
                r.query.get("labelSelector").map(String::as_str),
                Some(SELECTOR)
            );
            if kind == "HTTPRoute" {
                // The CRD is not installed: nothing to delete.
                respond(
                    send,
                    StatusCode::NOT_FOUND,
                    &status_body(
                        404,
                        "NotFound",
                        "the server could not find the requested resource",
                    ),
                );
            } else {
                respond(send, StatusCode::OK, &list(kind, vec![], "3"));
            }
        }
    }
}

/// The backends of the HTTPRoute's weighted rule: Service name → weight.
fn route_weights(route: &Value) -> BTreeMap<String, u64> {
    let rules = route["spec"]["rules"].as_array().expect("rules");
    let rule = rules
        .iter()
        .find(|r| r.get("matches").is_none())
        .expect("a rule without matches");
    rule["backendRefs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_string(),
                b["weight"].as_u64().unwrap_or(1),
            )
        })
        .collect()
}

fn patches(recorded: &[Recorded]) -> Vec<Obj> {
    recorded
        .iter()
        .filter(|r| r.method == Method::PATCH)
        .map(|r| {
            obj(
                r.body["kind"].as_str().unwrap(),
                r.body["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect()
}

// ------------------------------------------------------------------------------------------
// Tests
// ------------------------------------------------------------------------------------------

/// 1. A first deploy applies every object in plan order with field manager `deploykit`, then
///    lists what to prune and deletes nothing.
#[tokio::test]
async fn first_deploy_applies_the_plan_in_order_then_prunes() {
    let (env, fake) = test_context();
    let v1 = revision("v1");
    let state = desired(&[(&v1, 3)], Traffic::routed(Routes::all_to(&v1.id)));
    let expected = planned(&state);
    let kinds: Vec<&str> = expected.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "HTTPRoute"
        ]
    );
    let verifier = fake.run(Scenario::Apply(ApplyCalls {
        patches: expected,
        ..ApplyCalls::default()
    }));
    env.apply(&service(), &state).await.unwrap();
    let recorded = finish(verifier).await;

    let deployment = recorded
        .iter()
        .find(|r| r.is_patch_of("Deployment", &format!("web-{}", rev8(&v1))))
        .expect("the Deployment is applied");
    let meta = &deployment.body["metadata"];
    assert_eq!(
        meta["labels"]["deploykit.dev/revision"],
        json!(v1.id.as_str())
    );
    assert_eq!(meta["labels"]["app.kubernetes.io/version"], json!("v1"));
    let spec: Revision = serde_json::from_str(
        meta["annotations"]["deploykit.dev/revision-spec"]
            .as_str()
            .expect("revision-spec annotation"),
    )
    .unwrap();
    assert_eq!(
        spec, v1,
        "observe can rebuild the revision from the annotation"
    );
    assert_eq!(deployment.body["spec"]["replicas"], json!(3));

    let route = recorded
        .iter()
        .find(|r| r.is_patch_of("HTTPRoute", "web"))
        .unwrap();
    assert_eq!(
        route_weights(&route.body),
        BTreeMap::from([("web".into(), 100)])
    );
    let traffic: Traffic = serde_json::from_str(
        route.body["metadata"]["annotations"]["deploykit.dev/traffic"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(traffic, state.traffic);
}

/// 2. A canary step 25 % → 50 % re-applies only what changed: the route (its weights, and its
///    `deploykit.dev/traffic` annotation recording the routing).
#[tokio::test]
async fn canary_step_patches_only_the_route() {
    let (env, fake) = test_context();
    let (v1, v2) = (revision("v1"), revision("v2"));
    let at25 = desired(&[(&v1, 3), (&v2, 1)], split(&v1, &v2, 25));
    let at50 = desired(&[(&v1, 3), (&v2, 1)], split(&v1, &v2, 50));
    let verifier = fake.run(Scenario::Sequence(vec![
        Scenario::Apply(ApplyCalls {
            patches: planned(&at25),
            ..ApplyCalls::default()
        }),
        Scenario::Apply(ApplyCalls {
            patches: vec![obj("HTTPRoute", "web")],
            ..ApplyCalls::default()
        }),
    ]));
    env.apply(&service(), &at25).await.unwrap();
    env.apply(&service(), &at50).await.unwrap();
    let recorded = finish(verifier).await;

    let first_route = recorded
        .iter()
        .find(|r| r.is_patch_of("HTTPRoute", "web"))
        .unwrap();
    assert_eq!(
        route_weights(&first_route.body),
        BTreeMap::from([("web".into(), 75), ("web-canary".into(), 25)])
    );
    let second_apply: Vec<&Recorded> = recorded
        .iter()
        .skip_while(|r| !r.is_patch_of("HTTPRoute", "web"))
        .skip(1)
        .filter(|r| r.method == Method::PATCH)
        .collect();
    assert_eq!(
        patches(&recorded)[planned(&at25).len()..],
        [obj("HTTPRoute", "web")],
        "the second apply patches only the route, which also records the routing"
    );
    let route = second_apply.last().unwrap();
    assert!(route.is_patch_of("HTTPRoute", "web"));
    assert_eq!(
        route_weights(&route.body),
        BTreeMap::from([("web".into(), 50), ("web-canary".into(), 50)])
    );
}

/// 3. An abort sends every request back to the stable revision in one PATCH of the route,
///    while the canary keeps running.
#[tokio::test]
async fn abort_moves_all_weight_to_stable_in_one_route_patch() {
    let (env, fake) = test_context();
    let (v1, v2) = (revision("v1"), revision("v2"));
    let at25 = desired(&[(&v1, 3), (&v2, 1)], split(&v1, &v2, 25));
    let aborted = desired(
        &[(&v1, 3), (&v2, 1)],
        Traffic::routed(Routes::all_to(&v1.id)),
    );
    let verifier = fake.run(Scenario::Sequence(vec![
        Scenario::Apply(ApplyCalls {
            patches: planned(&at25),
            ..ApplyCalls::default()
        }),
        Scenario::Apply(ApplyCalls {
            patches: vec![obj("HTTPRoute", "web")],
            ..ApplyCalls::default()
        }),
    ]));
    env.apply(&service(), &at25).await.unwrap();
    env.apply(&service(), &aborted).await.unwrap();
    let recorded = finish(verifier).await;
    let routes: Vec<&Recorded> = recorded
        .iter()
        .filter(|r| r.is_patch_of("HTTPRoute", "web"))
        .collect();
    assert_eq!(routes.len(), 2);
    assert_eq!(
        route_weights(&routes[1].body),
        BTreeMap::from([("web".into(), 100)])
    );
    assert!(
        !recorded.iter().any(|r| r.method == Method::DELETE),
        "the canary keeps running after an abort"
    );
}

/// 4. A rollback removes the canary: the route moves all traffic to stable first, then the
///    canary's Service, ConfigMap and (last) Deployment are deleted.
#[tokio::test]
async fn rollback_moves_traffic_before_deleting_the_canary() {
    let (env, fake) = test_context();
    let (v1, v2) = (revision("v1"), revision("v2"));
    let at25 = desired(&[(&v1, 3), (&v2, 1)], split(&v1, &v2, 25));
    let rolled_back = desired(&[(&v1, 3)], Traffic::routed(Routes::all_to(&v1.id)));
    let canary_deployment = format!("web-{}", rev8(&v2));
    let verifier = fake.run(Scenario::Sequence(vec![
        Scenario::Apply(ApplyCalls {
            patches: planned(&at25),
            ..ApplyCalls::default()
        }),
        Scenario::Apply(ApplyCalls {
            patches: vec![obj("HTTPRoute", "web")],
            deletes: vec![
                obj("Service", "web-canary"),
                obj("ConfigMap", format!("web-{}-env", rev8(&v2))),
                obj("Deployment", canary_deployment.clone()),
            ],
            ..ApplyCalls::default()
        }),
    ]));
    env.apply(&service(), &at25).await.unwrap();
    env.apply(&service(), &rolled_back).await.unwrap();
    let recorded = finish(verifier).await;

    let route_patch = recorded
        .iter()
        .rposition(|r| r.is_patch_of("HTTPRoute", "web"))
        .unwrap();
    let deployment_delete = recorded
        .iter()
        .position(|r| r.is_delete_of("Deployment", &canary_deployment))
        .unwrap();
    assert!(
        route_patch < deployment_delete,
        "traffic must move before the canary's Deployment is deleted"
    );
    assert_eq!(
        route_weights(&recorded[route_patch].body),
        BTreeMap::from([("web".into(), 100)])
    );
    let last_delete = recorded
        .iter()
        .rposition(|r| r.method == Method::DELETE)
        .unwrap();
    assert_eq!(
        last_delete, deployment_delete,
        "Deployments are deleted last"
    );
}

/// 5. A 409 on the Deployment's apply fails `apply` naming the object and the field manager
///    conflict, with the API's message; nothing is forced.
#[tokio::test]
async fn apply_conflict_names_the_object_and_the_field_manager() {
    let (env, fake) = test_context();
    let v1 = revision("v1");
    let state = desired(&[(&v1, 2)], Traffic::ByReadyInstances);
    let deployment = obj("Deployment", format!("web-{}", rev8(&v1)));
    let message = "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using apps/v1: \
                   .spec.replicas";
    let verifier = fake.run(Scenario::Apply(ApplyCalls {
        patches: vec![
            obj("ConfigMap", format!("web-{}-env", rev8(&v1))),
            deployment.clone(),
        ],
        conflict: Some((deployment.clone(), message.to_string())),
        ..ApplyCalls::default()
    }));
    let err = env.apply(&service(), &state).await.unwrap_err();
    finish(verifier).await;
    let text = err.chain();
    assert!(
        text.contains(&format!("Deployment/{}", deployment.1)),
        "{text}"
    );
    assert!(text.contains("field manager"), "{text}");
    assert!(text.contains(message), "{text}");
    assert!(!err.is_retryable(), "a conflict does not go away by itself");
}

/// 5b. With `force_conflicts`, applies are sent with `force=true`.
#[tokio::test]
async fn force_conflicts_forces_the_applies() {
    let (env, fake) = test_context();
    let env = env.force_conflicts(true);
    let v1 = revision("v1");
    let state = desired(&[(&v1, 2)], Traffic::routed(Routes::all_to(&v1.id)));
    let verifier = fake.run(Scenario::Apply(ApplyCalls {
        patches: planned(&state),
        force: true,
        ..ApplyCalls::default()
    }));
    env.apply(&service(), &state).await.unwrap();
    finish(verifier).await;
}

/// 6. A 429 is retried after the Retry-After the API server gives, and `apply` succeeds.
#[tokio::test]
async fn throttled_apply_is_retried() {
    let (env, fake) = test_context();
    let v1 = revision("v1");
    let state = desired(&[(&v1, 2)], Traffic::routed(Routes::all_to(&v1.id)));
    let expected = planned(&state);
    let verifier = fake.run(Scenario::Apply(ApplyCalls {
        throttle: Some((expected[1].clone(), 1)),
        patches: expected,
        ..ApplyCalls::default()
    }));
    env.apply(&service(), &state).await.unwrap();
    let recorded = finish(verifier).await;
    let deployments = recorded
        .iter()
        .filter(|r| r.is_patch_of("Deployment", &format!("web-{}", rev8(&v1))))
        .count();
    assert_eq!(deployments, 2, "refused once, then accepted");
}

/// 6b. Retries give up after the policy's attempts with a persistent error, and the failing
///     object's next attempt (in the next `apply`) waits its grown backoff.
#[tokio::test]
async fn exhausted_retries_are_persistent_and_back_off_across_calls() {
    let (mock_service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let policy = RetryPolicy::default()
        .with_backoff(Duration::from_millis(300), Duration::from_secs(10))
        .and_then(|p| p.with_max_attempts(2))
        .expect("valid policy")
        .with_jitter(false);
    let env =
        KubeEnvironment::new(kube::Client::new(mock_service, NS), options()).with_retry(policy);
    let v1 = revision("v1");
    let state = desired(&[(&v1, 1)], Traffic::ByReadyInstances);
    let verifier = tokio::spawn(async move {
        let mut times = Vec::new();
        for _ in 0..3 {
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), Method::PATCH);
            assert!(
                request
                    .uri()
                    .path()
                    .ends_with(&format!("web-{}-env", rev8(&v1)))
            );
            times.push(Instant::now());
            respond(
                send,
                StatusCode::SERVICE_UNAVAILABLE,
                &status_body(503, "ServiceUnavailable", "etcd is busy"),
            );
        }
        times
    });
    let err = env.apply(&service(), &state).await.unwrap_err();
    assert!(err.is_retryable() && err.is_persistent(), "{}", err.chain());
    assert!(err.chain().contains("ConfigMap/web-"), "{}", err.chain());
    assert!(
        err.chain().contains("gave up after 2 attempts"),
        "{}",
        err.chain()
    );
    // The next apply's first attempt already waits (600 ms: the delay after 2 failures).
    let _ = tokio::time::timeout(Duration::from_secs(3), env.apply(&service(), &state)).await;
    let times = tokio::time::timeout(Duration::from_secs(5), verifier)
        .await
        .unwrap()
        .unwrap();
    assert!(times[1] - times[0] >= Duration::from_millis(150));
    assert!(
        times[2] - times[1] >= Duration::from_millis(300),
        "the failing object backs off across calls: {:?}",
        times[2] - times[1]
    );
}

fn pod(name: &str, revision: &Revision, ready: bool) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "resourceVersion": "9",
            "labels": {
                "app.kubernetes.io/name": "web",
                "app.kubernetes.io/managed-by": "deploykit",
                "deploykit.dev/revision": revision.id.as_str(),
            },
        },
        "status": {
            "phase": "Running",
            "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }],
            "containerStatuses": [{
                "name": "web",
                "image": "registry.example.com/web",
                "imageID": "",
                "ready": ready,
                "restartCount": 0,
            }],
        },
    })
}

/// The Deployment deploykit renders for `revision`, as the API server returns it.
fn deployment(revision: &Revision, replicas: u32, created: &str) -> Value {
    let state = desired(&[(revision, replicas)], Traffic::ByReadyInstances);
    let plan = render::plan(&service(), &state, &BTreeMap::new(), &options()).unwrap();
    let mut d = plan
        .get("Deployment", &format!("web-{}", rev8(revision)))
        .unwrap()
        .to_json();
    d["metadata"]["creationTimestamp"] = json!(created);
    d["metadata"]["resourceVersion"] = json!("3");
    d
}

/// 7. The watch-backed observation: a 410 Gone on the watch makes the watcher re-list, and
///    `observe` then reads Pods from the refreshed cache (no Pod LIST of its own).
#[tokio::test]
async fn watch_gone_relists_and_observe_uses_the_cache() {
    let (env, fake) = test_context();
    let v1 = revision("v1");
    let verifier = fake.run(Scenario::WatchGone {
        before: vec![pod("web-old", &v1, true)],
        after: vec![pod("web-new", &v1, true)],
        deployments: vec![deployment(&v1, 1, "2025-01-01T00:00:00Z")],
    });
    let mut events = env.watch_pods();
    let mut saw_gone = false;
    let mut init_done = 0;
    while init_done < 2 {
        match events.try_next().await {
            Ok(Some(watcher::Event::InitDone)) => init_done += 1,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the watch stream ended"),
            Err(watcher::Error::WatchError(status)) => {
                assert_eq!(status.code, 410);
                saw_gone = true;
            }
            Err(e) => panic!("unexpected watch error {e}"),
        }
    }
    assert!(saw_gone, "the 410 is surfaced before the re-list");
    let observed = env.observe(&service()).await.unwrap();
    finish(verifier).await;
    let names: Vec<&str> = observed.revisions[0]
        .instances
        .iter()
        .map(|i| &*i.name)
        .collect();
    assert_eq!(names, ["web-new"], "the cache holds the re-listed pods");
    assert_eq!(observed.weight_of(&v1.id), 100);
    drop(events);
}

/// observe without a watch: revisions in creation order with their pods, failures from the
/// container statuses, routing from the stable Service, and served traffic only to revisions
/// with ready pods.
#[tokio::test]
async fn observe_lists_and_reports_failures_and_served_traffic() {
    let (env, fake) = test_context();
    let (v1, v2) = (revision("v1"), revision("v2"));
    let mut crashing = pod("web-v2-a", &v2, false);
    crashing["status"]["containerStatuses"][0]["restartCount"] = json!(5);
    crashing["status"]["containerStatuses"][0]["state"] = json!({
        "waiting": { "reason": "CrashLoopBackOff", "message": "back-off 2m40s" }
    });
    crashing["status"]["containerStatuses"][0]["lastState"] = json!({
        "terminated": { "exitCode": 3, "reason": "Error" }
    });
    let mut terminating = pod("web-v1-old", &v1, true);
    terminating["metadata"]["deletionTimestamp"] = json!("2025-01-02T00:00:00Z");
    let traffic = split(&v1, &v2, 25);
    let mut stable = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {
            "name": "web",
            "namespace": NS,
            "annotations": { "deploykit.dev/traffic": serde_json::to_string(&traffic).unwrap() },
        },
    });
    stable["spec"] = json!({ "rules": [] });
    let verifier = fake.run(Scenario::Observe {
        // Listed newest first: observe orders by creation.
        deployments: vec![
            deployment(&v2, 1, "2025-01-02T00:00:00Z"),
            deployment(&v1, 2, "2025-01-01T00:00:00Z"),
        ],
        pods: vec![
            pod("web-v1-b", &v1, true),
            crashing,
            pod("web-v1-a", &v1, false),
            terminating,
        ],
        service: Some(stable),
    });
    let observed = env.observe(&service()).await.unwrap();
    finish(verifier).await;

    assert_eq!(observed.routing, traffic);
    let labels: Vec<&str> = observed
        .revisions
        .iter()
        .map(|r| r.revision.label.as_str())
        .collect();
    assert_eq!(labels, ["v1", "v2"]);
    let r1 = &observed.revisions[0];
    assert_eq!(*r1.revision, v1);
    assert_eq!((r1.desired, r1.instances.len(), r1.ready()), (2, 2, 1));
    let r2 = &observed.revisions[1];
    let failure = r2.instances[0].failure.clone().unwrap();
    assert_eq!(failure.kind, FailureKind::CrashLoop);
    assert_eq!(
        failure.reason,
        "web: CrashLoopBackOff: back-off 2m40s (last exit code 3, Error)"
    );
    assert_eq!(r2.instances[0].restarts, 5);
    assert_eq!(
        observed.traffic,
        BTreeMap::from([(v1.id.clone(), Weight::new(100).unwrap())]),
        "served traffic only reaches revisions with a ready pod"
    );
}

/// An unknown service observes as empty after one LIST.
#[tokio::test]
async fn unknown_service_observes_empty() {
    let (env, fake) = test_context();
    let verifier = fake.run(Scenario::ObserveUnknown);
    let observed = env.observe(&service()).await.unwrap();
    finish(verifier).await;
    assert!(observed.revisions.is_empty() && observed.traffic.is_empty());
}

/// teardown deletes per kind by label (Services one by one), and tolerates 404s.
#[tokio::test]
async fn teardown_deletes_every_kind_and_tolerates_missing() {
    let (env, fake) = test_context();
    let verifier = fake.run(Scenario::Teardown {
        services: vec!["web".into(), "web-canary".into()],
    });
    env.teardown(&service()).await.unwrap();
    finish(verifier).await;
}

/// The Monitor side has instance health but no metrics.
#[tokio::test]
async fn monitor_has_no_metrics() {
    let (env, _fake) = test_context();
    let err = env
        .query(&MetricQuery::new(service(), "error_rate"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("PrometheusMonitor"), "{err}");
}

/// A revision with secrets needs a provider: the error names the variable and the key, and
/// says how to give one.
#[tokio::test]
async fn secrets_need_a_provider() {
    let server = deploykit_testing::k8s::FakeApiServer::new();
    let env = KubeEnvironment::new(server.client(), options());
    let prod = EnvironmentSpec::builder()
        .name("production")
        .kind(EnvironmentKind::Production)
        .secrets(BTreeMap::from([(
            "API_TOKEN".into(),
            "production.api_token".into(),
        )]))
        .build()
        .unwrap();
    let rev = Revision::new(&web(), &prod, Digest::of_bytes(b"x"), "v1").unwrap();
    let err = env
        .apply(
            &service(),
            &desired(&[(&rev, 1)], Traffic::ByReadyInstances),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid secrets.API_TOKEN: variable API_TOKEN refers to secret production.api_token, \
         but no secret provider is configured to resolve it: use KubeEnvironment::with_secrets"
    );
    assert!(server.objects("deployments").is_empty(), "nothing applied");
}

// ------------------------------------------------------------------------------------------
// The Environment contract, over the in-memory API server
// ------------------------------------------------------------------------------------------

fn fixture() -> deploykit_testing::conformance::environment::EnvironmentFixture {
    deploykit_testing::conformance::environment::EnvironmentFixture {
        service: service(),
        first: revision("v1"),
        second: revision("v2"),
        poll: Duration::from_millis(10),
        settle_timeout: Duration::from_secs(5),
    }
}

/// `KubeEnvironment` meets the `Environment` contract, observing by LIST.
#[tokio::test]
async fn conformance_over_the_fake_api_server() {
    let server = deploykit_testing::k8s::FakeApiServer::new();
    let env = KubeEnvironment::new(server.client(), options());
    deploykit_testing::conformance::environment::run_all(&env, &fixture()).await;
    assert!(
        server.objects("deployments").is_empty() && server.objects("pods").is_empty(),
        "teardown leaves nothing behind"
    );
}

/// The same, observing Pods through the watch-fed cache.
#[tokio::test]
async fn conformance_over_the_fake_api_server_with_a_pod_watch() {
    let server = deploykit_testing::k8s::FakeApiServer::new();
    let env = KubeEnvironment::new(server.client(), options());
    let watch = env.start_watching();
    deploykit_testing::conformance::environment::run_all(&env, &fixture()).await;
    watch.abort();
    let requests = server.requests();
    let pod_lists = |selector: &str| {
        requests
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with("/pods"))
            .filter(|r| r.param("watch").is_none())
            .filter(|r| r.param("labelSelector").as_deref() == Some(selector))
            .count()
    };
    let observes = requests
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/deployments"))
        .count();
    assert_eq!(
        pod_lists("app.kubernetes.io/managed-by=deploykit"),
        1,
        "the watcher's LIST"
    );
    assert!(
        pod_lists(SELECTOR) <= 1 && observes > 10,
        "observe reads pods from the cache once it is ready: {} pod LISTs for {observes} observes",
        pod_lists(SELECTOR)
    );
}

/// Secrets are resolved through the provider into the revision's Secret; applying again sends
/// no PATCH for it (nor for anything else unchanged).
#[tokio::test]
async fn secrets_are_resolved_into_the_revision_secret() {
    use deploykit_core::secrets::SecretString;
    use deploykit_secrets::{FileSecretProvider, Identity, SecretsFile};
    let me = Identity::generate();
    let mut file = SecretsFile::create(&[me.to_recipient()]).unwrap();
    file.set("production.api_token", SecretString::from("tok-1"))
        .unwrap();
    let provider = FileSecretProvider::new("secrets.toml", file);
    let prod = EnvironmentSpec::builder()
        .name("production")
        .kind(EnvironmentKind::Production)
        .secrets(BTreeMap::from([(
            "API_TOKEN".into(),
            "production.api_token".into(),
        )]))
        .build()
        .unwrap();
    let rev = Revision::new(&web(), &prod, Digest::of_bytes(b"x"), "v1")
        .unwrap()
        .pin_secrets(&provider)
        .await
        .unwrap();
    let server = deploykit_testing::k8s::FakeApiServer::new();
    let env = KubeEnvironment::new(server.client(), options())
        .with_secrets(std::sync::Arc::new(provider));
    let state = desired(&[(&rev, 1)], Traffic::ByReadyInstances);
    env.apply(&service(), &state).await.unwrap();
    let secret = server
        .object("secrets", NS, &format!("web-{}-secrets", rev8(&rev)))
        .expect("the revision's Secret");
    assert_eq!(
        secret["data"]["API_TOKEN"],
        json!("dG9rLTE="),
        "base64 of tok-1"
    );
    assert!(
        !format!("{env:?}").contains("tok-1"),
        "no secret in the environment's Debug"
    );
    server.clear_requests();
    env.apply(&service(), &state).await.unwrap();
    assert!(
        !server.requests().iter().any(|r| r.method == "PATCH"),
        "nothing changed, nothing applied"
    );
}

/// A revision's Secret is made once, by the apply that first starts it: after the value is
/// rotated, the running revision keeps its Secret (no PATCH), a revision pinned to the new
/// version gets the new value, and one still pinned to the old version that has no Secret yet
/// is refused (`secrets::resolve`'s rule), naming variable, key and both versions, never a value.
#[tokio::test]
async fn a_rotated_secret_leaves_running_revisions_alone_and_refuses_a_stale_pin() {
    use deploykit_core::secrets::SecretString;
    use deploykit_secrets::{FileSecretProvider, Identity, SecretsFile};
    let me = Identity::generate();
    let file = |value: &str| {
        let mut file = SecretsFile::create(&[me.to_recipient()]).unwrap();
        file.set("production.api_token", SecretString::from(value))
            .unwrap();
        file
    };
    let provider = FileSecretProvider::new("secrets.toml", file("tok-1"));
    let prod = EnvironmentSpec::builder()
        .name("production")
        .kind(EnvironmentKind::Production)
        .secrets(BTreeMap::from([(
            "API_TOKEN".into(),
            "production.api_token".into(),
        )]))
        .build()
        .unwrap();
    let pinned = |label: &'static str, provider: FileSecretProvider| {
        let prod = prod.clone();
        async move {
            Revision::new(&web(), &prod, Digest::of_bytes(label.as_bytes()), label)
                .unwrap()
                .pin_secrets(&provider)
                .await
                .unwrap()
        }
    };
    let v1 = pinned("v1", provider.clone()).await;
    let stale = pinned("v1-hotfix", provider.clone()).await;
    let old_version = provider.versions()["production.api_token"].clone();
    let server = deploykit_testing::k8s::FakeApiServer::new();
    let env = KubeEnvironment::new(server.client(), options())
        .with_secrets(std::sync::Arc::new(provider.clone()));
    let secret_of = |r: &Revision| {
        server
            .object("secrets", NS, &format!("web-{}-secrets", rev8(r)))
            .map(|s| s["data"]["API_TOKEN"].clone())
    };
    env.apply(&service(), &desired(&[(&v1, 1)], Traffic::ByReadyInstances))
        .await
        .unwrap();
    assert_eq!(secret_of(&v1), Some(json!("dG9rLTE=")), "base64 of tok-1");

    provider.reload(file("tok-2"));
    let new_version = provider.versions()["production.api_token"].clone();
    assert_ne!(new_version, old_version);
    let v2 = pinned("v1", provider.clone()).await;
    assert_ne!(v2.id, v1.id, "a new value is a new revision");
    server.clear_requests();
    let both = desired(&[(&v1, 1), (&v2, 1)], Traffic::ByReadyInstances);
    env.apply(&service(), &both).await.unwrap();
    assert_eq!(secret_of(&v1), Some(json!("dG9rLTE=")), "v1 keeps tok-1");
    assert_eq!(secret_of(&v2), Some(json!("dG9rLTI=")), "base64 of tok-2");
    let v1_secret = format!("web-{}-secrets", rev8(&v1));
    assert!(
        !server
            .requests()
            .iter()
            .any(|r| r.method != "GET" && r.path.ends_with(&v1_secret)),
        "v1's Secret is left as it is"
    );
    env.apply(&service(), &both).await.unwrap();

    let err = env
        .apply(
            &service(),
            &desired(&[(&v2, 1), (&stale, 1)], Traffic::ByReadyInstances),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, deploykit_core::Error::InvalidSpec { .. }),
        "{err:?}"
    );
    let message = err.to_string();
    for part in [
        "invalid secrets.API_TOKEN: secret production.api_token of variable API_TOKEN changed",
        &format!("pinned version {old_version}, current version {new_version}"),
    ] {
        assert!(message.contains(part), "{part:?} in {message}");
    }
    assert!(
        !format!("{} {err:?}", err.chain()).contains("tok-"),
        "{err:?}"
    );
    assert_eq!(
        secret_of(&stale),
        None,
        "nothing of the stale revision was made"
    );
}

/// An object deleted behind deploykit's back is noticed by the next apply's listing and
/// applied again.
#[tokio::test]
async fn objects_deleted_behind_its_back_are_applied_again() {
    let server = deploykit_testing::k8s::FakeApiServer::new();
    let env = KubeEnvironment::new(server.client(), options());
    let v1 = revision("v1");
    let state = desired(&[(&v1, 1)], Traffic::routed(Routes::all_to(&v1.id)));
    env.apply(&service(), &state).await.unwrap();
    let configmaps: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(server.client(), NS);
    let name = format!("web-{}-env", rev8(&v1));
    configmaps.delete(&name, &Default::default()).await.unwrap();
    assert!(server.object("configmaps", NS, &name).is_none());
    env.apply(&service(), &state).await.unwrap();
    assert!(server.object("configmaps", NS, &name).is_some());
}

/// The namespace objects (the LimitRange, and the ResourceQuota when there is a quota) are
/// applied once, and not again while unchanged: the second call runs after the verifier has
/// finished, when any request would fail on the closed mock.
#[tokio::test]
async fn namespace_objects_are_applied_once() {
    let (mock_service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let options = options().quota(render::Quota {
        cpu_millis: 8000,
        memory_mib: 16384,
        pods: 40,
    });
    let env = KubeEnvironment::new(kube::Client::new(mock_service, NS), options);
    let verifier = ApiServerVerifier::new(handle).run(Scenario::NamespaceObjects(vec![
        obj("LimitRange", "deploykit-defaults"),
        obj("ResourceQuota", "deploykit-quota"),
    ]));
    env.ensure_namespace_objects().await.unwrap();
    finish(verifier).await;
    env.ensure_namespace_objects()
        .await
        .expect("unchanged namespace objects are not sent again");
}
