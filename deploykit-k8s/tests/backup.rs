//! Export of a service's objects and their restore elsewhere, over the in-memory API server.

use std::io::Read;

use deploykit_core::Error;
use deploykit_core::backup::BackupSource;
use deploykit_k8s::backup::{export, restore};
use deploykit_k8s::fake::FakeApiServer;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Value, json};

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
    let applies: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/namespaces/shop-dr/"))
        .collect();
    assert_eq!(applies.len(), 4);
    assert!(
        applies
            .iter()
            .all(|r| r.param("fieldManager").as_deref() == Some("deploykit")
                && r.content_type.as_deref() == Some("application/apply-patch+yaml"))
    );
    // Restoring again over the restored objects is harmless.
    restore(&client, &bytes, "shop-dr").await.unwrap();
    let exported_copy = export(&client, "shop-dr", "web").await.unwrap();
    let mut a: Value = serde_json::from_slice(exported_copy.as_bytes()).unwrap();
    for o in a.as_array_mut().unwrap() {
        o["metadata"]["namespace"] = json!("shop");
    }
    assert_eq!(a, parsed, "the copy exports like the original");
}

#[tokio::test]
async fn a_malformed_snapshot_is_refused_before_anything_is_applied() {
    let server = FakeApiServer::new();
    let client = server.client();
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
    assert!(server.requests().is_empty(), "nothing was sent");
}

#[tokio::test]
async fn restoring_into_a_cluster_without_an_api_says_so() {
    let server = FakeApiServer::new();
    server.hide_api_group("networking.istio.io");
    let snapshot = json!([{
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": { "name": "web" },
        "spec": { "hosts": ["web"] },
    }]);
    let err = restore(
        &server.client(),
        &serde_json::to_vec(&snapshot).unwrap(),
        "shop",
    )
    .await
    .unwrap_err();
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
