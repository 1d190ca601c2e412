//! The in-memory API server behaves enough like Kubernetes for kube-rs clients.

use std::collections::BTreeMap;

use deploykit_testing::k8s::FakeApiServer;
use http_body_util::BodyExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::{Value, json};

fn cm(name: &str, labels: &[(&str, &str)], data: &[(&str, &str)]) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.into());
    cm.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    cm.data = Some(
        data.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    cm
}

fn code(err: kube::Error) -> u16 {
    match err {
        kube::Error::Api(s) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn names<K: kube::Resource>(items: &[K]) -> Vec<String> {
    items
        .iter()
        .map(|o| o.meta().name.clone().unwrap())
        .collect()
}

#[tokio::test]
async fn create_get_and_list_with_selectors() {
    let server = FakeApiServer::new();
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "shop");
    let pp = PostParams::default();
    let a = api
        .create(&pp, &cm("a", &[("app", "web"), ("tier", "front")], &[]))
        .await
        .unwrap();
    api.create(&pp, &cm("b", &[("app", "web")], &[]))
        .await
        .unwrap();
    api.create(&pp, &cm("c", &[("app", "db")], &[]))
        .await
        .unwrap();
    let other: Api<ConfigMap> = Api::namespaced(server.client(), "elsewhere");
    other
        .create(&pp, &cm("d", &[("app", "web")], &[]))
        .await
        .unwrap();

    let meta = &a.metadata;
    assert!(meta.uid.is_some() && meta.creation_timestamp.is_some());
    assert_eq!(meta.generation, Some(1));
    assert!(meta.resource_version.is_some());

    let dup = api.create(&pp, &cm("a", &[], &[])).await.unwrap_err();
    assert_eq!(code(dup), 409);
    let got = api.get("a").await.unwrap();
    assert_eq!(got.metadata.uid, a.metadata.uid);
    assert_eq!(code(api.get("missing").await.unwrap_err()), 404);
    assert!(api.get_opt("missing").await.unwrap().is_none());

    let list = |sel: &str| {
        let api = api.clone();
        let sel = sel.to_string();
        async move {
            names(
                &api.list(&ListParams::default().labels(&sel))
                    .await
                    .unwrap()
                    .items,
            )
        }
    };
    assert_eq!(list("").await, ["a", "b", "c"], "one namespace only");
    assert_eq!(list("app=web").await, ["a", "b"]);
    assert_eq!(list("app=web,tier=front").await, ["a"]);
    assert_eq!(list("tier").await, ["a"]);
    assert_eq!(list("!tier").await, ["b", "c"]);
    assert_eq!(list("app!=web").await, ["c"]);
    assert_eq!(list("app in (db,cache)").await, ["c"]);
    let by_name = api
        .list(&ListParams::default().fields("metadata.name=b"))
        .await
        .unwrap();
    assert_eq!(names(&by_name.items), ["b"]);

    let all: Api<ConfigMap> = Api::all(server.client());
    assert_eq!(
        all.list(&ListParams::default().labels("app=web"))
            .await
            .unwrap()
            .items
            .len(),
        3,
        "a cluster-wide list spans namespaces"
    );
    assert_eq!(server.objects("configmaps").len(), 4);
}

#[tokio::test]
async fn replace_checks_the_resource_version() {
    let server = FakeApiServer::new();
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let created = api
        .create(&PostParams::default(), &cm("x", &[], &[("k", "1")]))
        .await
        .unwrap();
    let mut next = created.clone();
    next.data = Some(BTreeMap::from([("k".into(), "2".into())]));
    let replaced = api
        .replace("x", &PostParams::default(), &next)
        .await
        .unwrap();
    assert_ne!(
        replaced.metadata.resource_version,
        created.metadata.resource_version
    );
    assert_eq!(replaced.metadata.uid, created.metadata.uid);
    assert_eq!(
        replaced.metadata.generation,
        Some(2),
        "a data change bumps generation"
    );

    // The same stale resourceVersion again: someone else wrote in between.
    let stale = api
        .replace("x", &PostParams::default(), &next)
        .await
        .unwrap_err();
    let kube::Error::Api(status) = stale else {
        panic!("expected a Status")
    };
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));

    // Without a resourceVersion the replace is unconditional.
    let mut blind = cm("x", &[], &[("k", "3")]);
    blind.metadata.resource_version = None;
    api.replace("x", &PostParams::default(), &blind)
        .await
        .unwrap();
    assert_eq!(
        api.get("x").await.unwrap().data.unwrap()["k"],
        "3".to_string()
    );
    assert_eq!(
        code(
            api.replace("nope", &PostParams::default(), &cm("nope", &[], &[]))
                .await
                .unwrap_err()
        ),
        404
    );
}

fn apply_cm(data: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": "cfg" },
        "data": data,
    })
}

#[tokio::test]
async fn apply_creates_then_merges_by_field_manager() {
    let server = FakeApiServer::new();
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let a = PatchParams::apply("a");
    let b = PatchParams::apply("b");
    api.patch("cfg", &a, &Patch::Apply(apply_cm(json!({"x": "1"}))))
        .await
        .unwrap();
    api.patch("cfg", &b, &Patch::Apply(apply_cm(json!({"z": "3"}))))
        .await
        .unwrap();
    let data = |c: ConfigMap| c.data.unwrap_or_default();
    let got = data(api.get("cfg").await.unwrap());
    assert_eq!(got.keys().collect::<Vec<_>>(), ["x", "z"], "applies merge");

    api.patch(
        "cfg",
        &a,
        &Patch::Apply(apply_cm(json!({"x": "1", "y": "2"}))),
    )
    .await
    .unwrap();
    // `a` stops applying `x`: it is removed; `z` belongs to `b` and stays.
    let out = api
        .patch("cfg", &a, &Patch::Apply(apply_cm(json!({"y": "2"}))))
        .await
        .unwrap();
    assert_eq!(data(out.clone()).keys().collect::<Vec<_>>(), ["y", "z"]);
    let managers: Vec<String> = out
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(managers, ["a", "b"]);

    let last = server.requests().pop().unwrap();
    assert_eq!(last.method, "PATCH");
    assert_eq!(
        last.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert_eq!(last.param("fieldManager").as_deref(), Some("a"));
    assert_eq!(last.body.unwrap()["data"]["y"], "2");
}

#[tokio::test]
async fn apply_conflicts_between_managers_unless_forced() {
    let server = FakeApiServer::new();
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    api.patch(
        "cfg",
        &PatchParams::apply("alice"),
        &Patch::Apply(apply_cm(json!({"x": "1"}))),
    )
    .await
    .unwrap();
    // The same value is no conflict: both share the field.
    api.patch(
        "cfg",
        &PatchParams::apply("bob"),
        &Patch::Apply(apply_cm(json!({"x": "1"}))),
    )
    .await
    .unwrap();
    let err = api
        .patch(
            "cfg",
            &PatchParams::apply("carol"),
            &Patch::Apply(apply_cm(json!({"x": "2"}))),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("expected a Status")
    };
    assert_eq!(status.code, 409);
    assert!(
        status.message.contains("\"alice\"") && status.message.contains(".data.x"),
        "{}",
        status.message
    );
    assert_eq!(api.get("cfg").await.unwrap().data.unwrap()["x"], "1");

    let forced = api
        .patch(
            "cfg",
            &PatchParams::apply("carol").force(),
            &Patch::Apply(apply_cm(json!({"x": "2"}))),
        )
        .await
        .unwrap();
    assert_eq!(forced.data.unwrap()["x"], "2");
    let back = api
        .patch(
            "cfg",
            &PatchParams::apply("alice"),
            &Patch::Apply(apply_cm(json!({"x": "1"}))),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&back, kube::Error::Api(s) if s.code == 409 && s.message.contains("carol")),
        "{back:?}"
    );
}

#[tokio::test]
async fn merge_patch_delete_and_collection_delete() {
    let server = FakeApiServer::new();
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let pp = PostParams::default();
    for (name, app) in [("a", "web"), ("b", "web"), ("c", "db")] {
        api.create(
            &pp,
            &cm(name, &[("app", app)], &[("k", "v"), ("gone", "1")]),
        )
        .await
        .unwrap();
    }
    let patched = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "w", "gone": null}})),
        )
        .await
        .unwrap();
    assert_eq!(
        patched.data.unwrap(),
        BTreeMap::from([("k".to_string(), "w".to_string())])
    );
    assert_eq!(
        code(
            api.patch(
                "zz",
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {}}))
            )
            .await
            .unwrap_err()
        ),
        404
    );

    // A delete whose precondition no longer holds is refused.
    let stale = DeleteParams {
        preconditions: Some(Preconditions {
            resource_version: Some("1".into()),
            uid: None,
        }),
        ..DeleteParams::default()
    };
    assert_eq!(code(api.delete("a", &stale).await.unwrap_err()), 409);
    api.delete("a", &DeleteParams::default()).await.unwrap();
    assert_eq!(
        code(api.delete("a", &DeleteParams::default()).await.unwrap_err()),
        404
    );

    let deleted = api
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("app=web"),
        )
        .await
        .unwrap();
    let deleted = deleted.left().expect("the deleted objects");
    assert_eq!(names(&deleted.items), ["b"]);
    assert_eq!(
        names(&api.list(&ListParams::default()).await.unwrap().items),
        ["c"]
    );
}

fn deployment(name: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name, "labels": { "app.kubernetes.io/name": "web" } },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name, "app.kubernetes.io/name": "web" } },
                "spec": { "containers": [{ "name": "app", "image": "web:1" }] },
            },
        },
    })
}

#[tokio::test]
async fn deployments_get_pods_that_follow_replicas() {
    let server = FakeApiServer::new();
    let client = server.client();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "prod");
    let pods: Api<Pod> = Api::namespaced(client, "prod");
    let apply = PatchParams::apply("deploykit");
    let d = deployments
        .patch("web-1", &apply, &Patch::Apply(deployment("web-1", 3)))
        .await
        .unwrap();
    let status = d.status.expect("the controller sets a status");
    assert_eq!((status.replicas, status.ready_replicas), (Some(3), Some(3)));

    let listed = pods
        .list(&ListParams::default().labels("app=web-1"))
        .await
        .unwrap()
        .items;
    assert_eq!(names(&listed), ["web-1-0", "web-1-1", "web-1-2"]);
    let pod = &listed[0];
    let pod_status = pod.status.as_ref().unwrap();
    assert_eq!(pod_status.phase.as_deref(), Some("Running"));
    let ready = pod_status.conditions.as_ref().unwrap();
    assert!(
        ready
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );
    assert_eq!(
        pod_status.container_statuses.as_ref().unwrap()[0].restart_count,
        0
    );
    assert_eq!(
        pod.metadata.labels.as_ref().unwrap()["app.kubernetes.io/name"],
        "web"
    );

    deployments
        .patch("web-1", &apply, &Patch::Apply(deployment("web-1", 1)))
        .await
        .unwrap();
    assert_eq!(
        names(&pods.list(&ListParams::default()).await.unwrap().items),
        ["web-1-0"],
        "scaling down removes pods from the end"
    );

    // A crash-looping pod makes the Deployment unready.
    server.set_pod_status("web-1-0", |status| {
        status["containerStatuses"][0]["restartCount"] = json!(5);
        status["containerStatuses"][0]["ready"] = json!(false);
        status["containerStatuses"][0]["state"] = json!({
            "waiting": { "reason": "CrashLoopBackOff", "message": "back-off 5m0s" }
        });
        status["conditions"] = json!([{ "type": "Ready", "status": "False" }]);
    });
    let d = deployments.get("web-1").await.unwrap();
    assert_eq!(d.status.unwrap().ready_replicas, Some(0));
    let pod = pods.get("web-1-0").await.unwrap();
    let waiting = pod.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .waiting
        .unwrap();
    assert_eq!(waiting.reason.as_deref(), Some("CrashLoopBackOff"));

    // A deleted pod is replaced; deleting the Deployment deletes its pods.
    let uid = pods.get("web-1-0").await.unwrap().metadata.uid;
    pods.delete("web-1-0", &DeleteParams::default())
        .await
        .unwrap();
    assert_ne!(pods.get("web-1-0").await.unwrap().metadata.uid, uid);
    deployments
        .delete("web-1", &DeleteParams::default())
        .await
        .unwrap();
    assert!(server.objects("pods").is_empty());
}

#[tokio::test]
async fn injected_errors_answer_status_objects() {
    let server = FakeApiServer::new();
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    api.create(&PostParams::default(), &cm("x", &[], &[]))
        .await
        .unwrap();
    server.fail_next("GET", "/api/v1/namespaces/default/configmaps", 429, 1);
    let err = api.get("x").await.unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("expected a Status")
    };
    assert_eq!(
        (status.code, status.reason.as_str()),
        (429, "TooManyRequests")
    );
    api.get("x").await.expect("only the next request fails");

    server.fail_next("*", "/api/v1/namespaces/default/configmaps/x", 500, 2);
    assert_eq!(code(api.get("x").await.unwrap_err()), 500);
    assert_eq!(
        code(api.delete("x", &DeleteParams::default()).await.unwrap_err()),
        500
    );
    api.get("x")
        .await
        .expect("the injected failures are used up");
    let methods: Vec<String> = server.requests().into_iter().map(|r| r.method).collect();
    assert_eq!(methods, ["POST", "GET", "GET", "GET", "DELETE", "GET"]);
}

#[tokio::test]
async fn hidden_api_groups_answer_404_and_watches_stream_events() {
    let server = FakeApiServer::new();
    server.hide_api_group("networking.istio.io");
    let client = server.client();
    let gone = client
        .request_text(
            http::Request::get("/apis/networking.istio.io/v1/namespaces/default/virtualservices")
                .body(Vec::new())
                .unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(gone), 404);

    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &cm("before", &[], &[]))
        .await
        .unwrap();
    let response = client
        .send(
            http::Request::get("/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=5")
                .body(kube::client::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = response.into_body();
    let mut next_event = async || -> Value {
        let frame = body.frame().await.unwrap().unwrap();
        serde_json::from_slice(&frame.into_data().unwrap()).unwrap()
    };
    let first = next_event().await;
    assert_eq!(first["type"], "ADDED");
    assert_eq!(first["object"]["metadata"]["name"], "before");
    api.create(&PostParams::default(), &cm("after", &[], &[]))
        .await
        .unwrap();
    let second = next_event().await;
    assert_eq!(
        (
            second["type"].as_str(),
            second["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("after"))
    );
    api.delete("after", &DeleteParams::default()).await.unwrap();
    assert_eq!(next_event().await["type"], "DELETED");
}
