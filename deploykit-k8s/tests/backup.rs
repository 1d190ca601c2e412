//! Export of a service's objects and their restore elsewhere: round trips over the in-memory
//! API server, and the exact requests a restore sends (or does not send) over a mocked one, in
//! kube-rs' `ApiServerVerifier` style.

use std::io::Read;
use std::time::Duration;

use deploykit_backup::BackupSource;
use deploykit_core::Error;
use deploykit_k8s::backup::{export, restore};
use deploykit_testing::k8s::{FakeApiServer, RecordedRequest};
use http::{Request, Response};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tower_test::mock::{Handle, SendResponse};

fn labels() -> Value {
    json!({
        "app.kubernetes.io/name": "web",
        "app.kubernetes.io/managed-by": "deploykit",
    })
}

fn objects() -> Vec<(&'static str, &'static str, &'static str, Value)> {
    vec![
        (
            "apps",
            "v1",
            "Deployment",
            json!({
                "metadata": {
                    "name": "web-0123abcd",
                    "labels": labels(),
                    "annotations": {
                        "deploykit.dev/revision-spec": "{}",
                        "kubectl.kubernetes.io/last-applied-configuration": "{\"old\":true}",
                    },
                },
                "spec": {
                    "replicas": 2,
                    "selector": { "matchLabels": { "deploykit.dev/revision": "0123abcd" } },
                    "template": {
                        "metadata": { "labels": { "deploykit.dev/revision": "0123abcd" } },
                        "spec": { "containers": [{ "name": "app", "image": "web@sha256:00" }] },
                    },
                },
            }),
        ),
        (
            "",
            "v1",
            "Service",
            json!({
                "metadata": { "name": "web", "labels": labels() },
                "spec": {
                    "selector": { "app.kubernetes.io/name": "web" },
                    "ports": [{ "name": "http", "port": 80, "targetPort": "http" }],
                },
            }),
        ),
        (
            "",
            "v1",
            "ConfigMap",
            json!({
                "metadata": { "name": "web-0123abcd-env", "labels": labels() },
                "immutable": true,
                "data": { "GREETING": "hello" },
            }),
        ),
        (
            "",
            "v1",
            "Secret",
            json!({
                "metadata": { "name": "web-0123abcd-secrets", "labels": labels() },
                "type": "Opaque",
                "stringData": { "TOKEN": "s3cret" },
            }),
        ),
        (
            "",
            "v1",
            "ConfigMap",
            json!({
                "metadata": { "name": "someone-elses", "labels": { "app.kubernetes.io/name": "web" } },
                "data": { "x": "not managed by deploykit" },
            }),
        ),
    ]
}

fn plural(kind: &str) -> String {
    format!("{}s", kind.to_lowercase())
}

async fn seed(server: &FakeApiServer, namespace: &str) {
    for (group, version, kind, mut body) in objects() {
        body["apiVersion"] = json!(if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        });
        body["kind"] = json!(kind);
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(group, version, kind),
            &plural(kind),
        );
        let api: Api<DynamicObject> = Api::namespaced_with(server.client(), namespace, &resource);
        let name = body["metadata"]["name"].as_str().unwrap().to_string();
        api.patch(
            &name,
            &PatchParams::apply("deploykit"),
            &Patch::Apply(&body),
        )
        .await
        .unwrap();
    }
}

/// A client over a `tower_test` mock service, and the mock's other end, on which a verifier
/// task receives each request and answers it.
fn mock() -> (kube::Client, Handle<Request<Body>, Response<Body>>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), handle)
}

fn answer(send: SendResponse<Response<Body>>, code: u16, body: &Value) {
    send.send_response(
        Response::builder()
            .status(code)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

/// Awaits a verifier task, failing the test if it does not end within 5 s (a request it
/// waits for was never sent).
async fn finish<T>(verifier: JoinHandle<T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), verifier)
        .await
        .expect("the verifier saw every request it expected")
        .expect("the verifier's assertions held")
}

/// Asserts that `r` is the server-side apply (field manager `deploykit`, forced) of `name` at
/// `collection`, cleaned of server-set fields and moved into `shop-dr`.
fn assert_restore_apply(r: &RecordedRequest, collection: &str, name: &str) {
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("PATCH", format!("{collection}/{name}").as_str())
    );
    assert_eq!(
        r.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert_eq!(r.param("fieldManager").as_deref(), Some("deploykit"));
    assert_eq!(
        r.param("force").as_deref(),
        Some("true"),
        "a restore takes over fields"
    );
    let body = r.body.as_ref().expect("a JSON body");
    assert_eq!(body["metadata"]["name"], json!(name));
    assert_eq!(body["metadata"]["namespace"], json!("shop-dr"));
    assert!(
        body["metadata"].get("uid").is_none() && body.get("status").is_none(),
        "server-set fields are not sent: {body}"
    );
}

fn walk_keys(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                out.push(k.clone());
                walk_keys(c, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|c| walk_keys(c, out)),
        _ => {}
    }
}

#[tokio::test]
async fn export_cleans_server_fields_and_restore_reapplies_elsewhere() {
    let server = FakeApiServer::new();
    server.hide_api_group("networking.istio.io");
    seed(&server, "shop").await;
    // The fake set what a real API server sets.
    let stored = server
        .object("deployments", "shop", "web-0123abcd")
        .unwrap();
    assert!(stored["metadata"]["uid"].is_string() && stored["status"].is_object());
    let svc = server.object("services", "shop", "web").unwrap();
    assert!(svc["spec"]["clusterIP"].is_string());

    let client = server.client();
    let snapshot = export(&client, "shop", "web").await.unwrap();
    assert_eq!(
        snapshot.names(),
        [
            "ConfigMap/web-0123abcd-env",
            "Secret/web-0123abcd-secrets",
            "Service/web",
            "Deployment/web-0123abcd",
        ],
        "managed objects only, by kind then name; Istio's missing API is skipped"
    );
    assert_eq!(snapshot.name(), "web.k8s.json");
    let mut bytes = Vec::new();
    snapshot.open().unwrap().read_to_end(&mut bytes).unwrap();
    assert_eq!(bytes, snapshot.as_bytes());
    let parsed: Value = serde_json::from_slice(&bytes).unwrap();
    let mut keys = Vec::new();
    walk_keys(&parsed, &mut keys);
    for server_field in [
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "managedFields",
        "selfLink",
        "ownerReferences",
        "status",
        "clusterIP",
        "clusterIPs",
        "kubectl.kubernetes.io/last-applied-configuration",
    ] {
        assert!(
            !keys.iter().any(|k| k == server_field),
            "{server_field} must not be exported"
        );
    }
    let deployment = &parsed[3];
    assert_eq!(deployment["apiVersion"], "apps/v1");
    assert_eq!(
        deployment["metadata"]["annotations"],
        json!({ "deploykit.dev/revision-spec": "{}" })
    );
    // Secret data stays base64, as stored.
    assert_eq!(parsed[1]["data"]["TOKEN"], "czNjcmV0");
    // Deterministic: an unchanged service exports the same bytes.
    let again = export(&client, "shop", "web").await.unwrap();
    assert_eq!(again.as_bytes(), snapshot.as_bytes());

    let restored = restore(&client, &bytes, "shop-dr").await.unwrap();
    assert_eq!(restored, snapshot.names());
    let copy = server
        .object("deployments", "shop-dr", "web-0123abcd")
        .unwrap();
    assert_eq!(copy["spec"]["replicas"], 2);
    assert_eq!(copy["metadata"]["namespace"], "shop-dr");
    assert_ne!(copy["metadata"]["uid"], stored["metadata"]["uid"]);
    assert_eq!(
        server.objects("pods").len(),
        4,
        "the restored Deployment runs its pods too"
    );
    let secret = server
        .object("secrets", "shop-dr", "web-0123abcd-secrets")
        .unwrap();
    assert_eq!(secret["data"]["TOKEN"], "czNjcmV0");
    // Restoring again over the restored objects is harmless.
    restore(&client, &bytes, "shop-dr").await.unwrap();
    let exported_copy = export(&client, "shop-dr", "web").await.unwrap();
    let mut a: Value = serde_json::from_slice(exported_copy.as_bytes()).unwrap();
    for o in a.as_array_mut().unwrap() {
        o["metadata"]["namespace"] = json!("shop");
    }
    assert_eq!(a, parsed, "the copy exports like the original");
}

/// A restore sends one forced server-side apply per object, in the snapshot's order, into the
/// target namespace, cleaned of what the source cluster set.
#[tokio::test]
async fn restore_applies_each_object_server_side() {
    let snapshot = json!([
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": { "name": "web-0123abcd-env", "namespace": "shop", "uid": "u-1" },
            "data": { "GREETING": "hello" },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": { "name": "web-0123abcd", "namespace": "shop", "resourceVersion": "7" },
            "spec": { "replicas": 2 },
            "status": { "replicas": 2 },
        },
    ]);
    let (client, mut handle) = mock();
    let verifier = tokio::spawn(async move {
        for (collection, name) in [
            ("/api/v1/namespaces/shop-dr/configmaps", "web-0123abcd-env"),
            (
                "/apis/apps/v1/namespaces/shop-dr/deployments",
                "web-0123abcd",
            ),
        ] {
            let (request, send) = handle.next_request().await.expect("a request");
            let r = RecordedRequest::read(request).await.unwrap();
            assert_restore_apply(&r, collection, name);
            assert!(r.body.as_ref().unwrap()["metadata"]["resourceVersion"].is_null());
            answer(send, 200, r.body.as_ref().unwrap());
        }
    });
    let restored = restore(&client, &serde_json::to_vec(&snapshot).unwrap(), "shop-dr")
        .await
        .unwrap();
    finish(verifier).await;
    assert_eq!(
        restored,
        ["ConfigMap/web-0123abcd-env", "Deployment/web-0123abcd"]
    );
}

#[tokio::test]
async fn a_malformed_snapshot_is_refused_before_anything_is_applied() {
    let (client, mut handle) = mock();
    let verifier = tokio::spawn(async move {
        let mut sent = Vec::new();
        while let Some((request, _unanswered)) = handle.next_request().await {
            sent.push(format!("{} {}", request.method(), request.uri()));
        }
        sent
    });
    for (bytes, expect) in [
        (&b"not json"[..], "not JSON"),
        (br#"{"kind": "ConfigMap"}"#, "JSON array"),
        (
            br#"[{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ok"}}, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}]"#,
            "item 1 (ConfigMap) has no metadata.name",
        ),
        (
            br#"[{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}]"#,
            "not a kind deploykit backs up",
        ),
        (br#"[42]"#, "item 0 is not a JSON object"),
    ] {
        let err = restore(&client, bytes, "shop").await.unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
        assert!(err.chain().contains(expect), "{}", err.chain());
    }
    // The mock's end closes when the last client is dropped.
    drop(client);
    let sent = finish(verifier).await;
    assert!(sent.is_empty(), "nothing was sent: {sent:?}");
}

/// The API server answers 404 to a resource whose API group is not installed.
#[tokio::test]
async fn restoring_into_a_cluster_without_an_api_says_so() {
    let (client, mut handle) = mock();
    let verifier = tokio::spawn(async move {
        let (request, send) = handle.next_request().await.expect("a request");
        let r = RecordedRequest::read(request).await.unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            (
                "PATCH",
                "/apis/networking.istio.io/v1/namespaces/shop/virtualservices/web"
            )
        );
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "the server could not find the requested resource",
            "reason": "NotFound", "code": 404,
        });
        answer(send, 404, &status);
    });
    let snapshot = json!([{
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": { "name": "web" },
        "spec": { "hosts": ["web"] },
    }]);
    let err = restore(&client, &serde_json::to_vec(&snapshot).unwrap(), "shop")
        .await
        .unwrap_err();
    finish(verifier).await;
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    assert!(
        err.chain()
            .contains("networking.istio.io/v1 is not installed"),
        "{}",
        err.chain()
    );
}

#[tokio::test]
async fn export_retries_throttling_and_reports_other_failures() {
    let server = FakeApiServer::new();
    seed(&server, "shop").await;
    server.fail_next("GET", "/apis/apps/v1/namespaces/shop/deployments", 429, 1);
    let snapshot = export(&server.client(), "shop", "web").await.unwrap();
    assert_eq!(snapshot.objects().len(), 4);
    server.fail_next("GET", "/api/v1/namespaces/shop/secrets", 403, 1);
    let err = export(&server.client(), "shop", "web").await.unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
}
