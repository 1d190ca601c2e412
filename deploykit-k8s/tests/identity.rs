//! `deploykit_k8s::identity` against a mocked API server (a `tower_test` mock service, as in
//! `environment.rs`): the request is a `SelfSubjectReview` POST, and the answer's
//! `status.userInfo` becomes the identity: a kubeconfig user, a service account, and a
//! cluster too old to answer.

use std::time::Duration;

use deploykit_k8s::{ClusterIdentity, identity};
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// A client over a mock API server that expects one SelfSubjectReview and answers it with
/// `status` and `body`; the task returns the request body it received.
fn cluster(status: StatusCode, body: Value) -> (kube::Client, tokio::task::JoinHandle<Value>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let server = tokio::spawn(answer(handle, status, body));
    (client, server)
}

async fn answer(mut handle: Handle, status: StatusCode, body: Value) -> Value {
    let (request, send) = handle.next_request().await.expect("a request");
    assert_eq!(request.method(), Method::POST);
    assert_eq!(
        request.uri().path(),
        "/apis/authentication.k8s.io/v1/selfsubjectreviews"
    );
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let sent: Value = serde_json::from_slice(&bytes).unwrap();
    send.send_response(
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
    );
    sent
}

fn review(user_info: Value) -> Value {
    json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "SelfSubjectReview",
        "metadata": { "creationTimestamp": null },
        "status": { "userInfo": user_info },
    })
}

async fn ask(status: StatusCode, body: Value) -> (deploykit_core::Result<ClusterIdentity>, Value) {
    let (client, server) = cluster(status, body);
    let result = tokio::time::timeout(Duration::from_secs(5), identity(&client))
        .await
        .expect("identity answered in time");
    let sent = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the API server was asked")
        .unwrap();
    (result, sent)
}

/// The error and its sources, as a CLI shows them.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[tokio::test]
async fn a_kubeconfig_user_is_who_the_api_server_authenticated() {
    let (result, sent) = ask(
        StatusCode::CREATED,
        review(json!({
            "username": "alice@example.com",
            "uid": "b7c1e0f2-oidc",
            "groups": ["platform-team", "system:authenticated"],
        })),
    )
    .await;
    assert_eq!(sent["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(sent["kind"], "SelfSubjectReview");
    assert!(
        sent.get("status").is_none(),
        "the caller claims nothing: {sent}"
    );
    let me = result.unwrap();
    assert_eq!(
        me,
        ClusterIdentity::new(
            "alice@example.com",
            Some("b7c1e0f2-oidc".into()),
            vec!["platform-team".into(), "system:authenticated".into()],
        )
    );
    assert_eq!(me.service_account(), None);
    assert!(!me.is_anonymous());
}

#[tokio::test]
async fn a_pod_is_its_service_account() {
    let (result, _) = ask(
        StatusCode::CREATED,
        review(json!({
            "username": "system:serviceaccount:ci:deployer",
            "uid": "4a0e7d4c-3c1b-4c55-9f5e-0d6f7f0b9a11",
            "groups": [
                "system:serviceaccounts",
                "system:serviceaccounts:ci",
                "system:authenticated",
            ],
            "extra": { "authentication.kubernetes.io/pod-name": ["runner-7f9c"] },
        })),
    )
    .await;
    let me = result.unwrap();
    assert_eq!(me.username, "system:serviceaccount:ci:deployer");
    assert_eq!(me.service_account(), Some(("ci", "deployer")));
    assert_eq!(
        me.uid.as_deref(),
        Some("4a0e7d4c-3c1b-4c55-9f5e-0d6f7f0b9a11")
    );
    assert!(me.groups.contains(&"system:serviceaccounts:ci".to_string()));
}

#[tokio::test]
async fn a_cluster_before_1_28_is_named_as_too_old() {
    let (result, _) = ask(
        StatusCode::NOT_FOUND,
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "the server could not find the requested resource",
            "reason": "NotFound",
            "details": {},
            "code": 404,
        }),
    )
    .await;
    let err = result.unwrap_err();
    let text = chain(&err);
    assert!(text.contains("SelfSubjectReview"), "{text}");
    assert!(text.contains("Kubernetes 1.28 or later"), "{text}");
    assert!(!err.is_retryable(), "{err:?}");
}

#[tokio::test]
async fn an_answer_without_a_user_is_refused() {
    let (result, _) = ask(StatusCode::CREATED, review(json!({}))).await;
    let text = chain(&result.unwrap_err());
    assert!(text.contains("status.userInfo.username"), "{text}");
}

#[test]
fn only_well_formed_service_account_names_are_service_accounts() {
    let named = |u: &str| {
        ClusterIdentity::new(u, None, vec![])
            .service_account()
            .is_some()
    };
    assert!(named("system:serviceaccount:kube-system:default"));
    assert!(!named("system:serviceaccount:ci"));
    assert!(!named("system:serviceaccount::deployer"));
    assert!(!named("system:serviceaccount:ci:"));
    assert!(!named("system:serviceaccount:ci:a:b"));
    assert!(!named("system:serviceaccounts:ci"));
}
