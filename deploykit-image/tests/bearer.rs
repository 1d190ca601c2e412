//! Bearer-token auth, as Docker Hub and GHCR do it: a gate in front of a real registry answers
//! 401 with a `Bearer realm=…,service=…` challenge, its token service hands out a token per
//! `repository:<name>:<actions>` scope for the right user and password, and only requests
//! carrying a token for the right scope reach the registry.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use deploykit_image::{Image, Layer, Layout, Reference, Registry};
use deploykit_testing::registry::LocalRegistry;

const USER: &str = "robot";
const PASSWORD: &str = "s3cret";

#[derive(Default)]
struct Gate {
    /// Issued tokens and the scope each was issued for.
    tokens: Mutex<HashMap<String, String>>,
    /// Token requests seen, by scope.
    issued: Mutex<Vec<String>>,
}

fn scope_of(method: &hyper::Method, path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v2/")?;
    let cut = ["/blobs/", "/manifests/", "/referrers/"]
        .iter()
        .filter_map(|m| rest.find(m))
        .min()?;
    let repository = &rest[..cut];
    let actions = if matches!(*method, hyper::Method::GET | hyper::Method::HEAD) {
        "pull"
    } else {
        "pull,push"
    };
    Some(format!("repository:{repository}:{actions}"))
}

async fn handle(
    gate: Arc<Gate>,
    upstream: String,
    me: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/token" {
        let query = req.uri().query().unwrap_or("").to_string();
        let params: HashMap<String, String> = url_params(&query);
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
        );
        let authorized = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            == Some(basic.as_str());
        if !authorized || params.get("service").map(String::as_str) != Some("test-registry") {
            return Ok(Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .body(Full::default())
                .unwrap());
        }
        let scope = params.get("scope").cloned().unwrap_or_default();
        let token = format!("t{}", gate.tokens.lock().unwrap().len());
        gate.tokens
            .lock()
            .unwrap()
            .insert(token.clone(), scope.clone());
        gate.issued.lock().unwrap().push(scope);
        let body = serde_json::json!({ "token": token }).to_string();
        return Ok(Response::new(Full::new(Bytes::from(body))));
    }
    let needed = scope_of(req.method(), &path);
    let presented = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| gate.tokens.lock().unwrap().get(t).cloned());
    let covers = match (&needed, &presented) {
        (Some(needed), Some(granted)) => {
            granted == needed
                || (needed.ends_with(":pull") && granted == &needed.replace(":pull", ":pull,push"))
        }
        (None, _) => true,
        _ => false,
    };
    if !covers {
        let challenge = format!(
            "Bearer realm=\"http://{me}/token\",service=\"test-registry\",scope=\"{}\"",
            needed.unwrap_or_default()
        );
        return Ok(Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header("www-authenticate", challenge)
            .body(Full::default())
            .unwrap());
    }
    // Forward to the registry.
    let client = reqwest::Client::new();
    let url = format!(
        "http://{upstream}{}",
        req.uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let mut forward = client.request(req.method().clone(), url);
    for (name, value) in req.headers() {
        if name != "host" && name != "authorization" {
            forward = forward.header(name, value);
        }
    }
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let answer = forward.body(body).send().await.unwrap();
    let mut response = Response::builder().status(answer.status().as_u16());
    for (name, value) in answer.headers() {
        let value = value
            .to_str()
            .unwrap_or("")
            .replace(&upstream, &me.to_string());
        response = response.header(name.as_str(), value);
    }
    let bytes = answer.bytes().await.unwrap();
    Ok(response.body(Full::new(bytes)).unwrap())
}

fn url_params(query: &str) -> HashMap<String, String> {
    reqwest::Url::parse(&format!("http://x/?{query}"))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

async fn start_gate(upstream: String) -> (SocketAddr, Arc<Gate>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let me = listener.local_addr().unwrap();
    let gate = Arc::new(Gate::default());
    let shared = gate.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let gate = shared.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    handle(gate.clone(), upstream.clone(), me, req)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (me, gate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_is_fetched_per_scope_and_reused() {
    let registry = LocalRegistry::start(false).expect("the registry starts");
    let (gate_addr, gate) = start_gate(registry.host().to_string()).await;
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::open_or_create(dir.path()).unwrap();
    let mut app = Layer::new();
    app.add_bytes("srv/index.html", b"<h1>hi</h1>".to_vec(), 0o644)
        .unwrap();
    let built = Image::scratch().layer(app).build(&layout, "web").unwrap();
    let target: Reference = format!("{gate_addr}/shop/web:v1").parse().unwrap();

    let e = Registry::new()
        .push(&layout, &built.descriptor, &target, &[])
        .await
        .unwrap_err();
    assert!(e.chain().contains("token service"), "{}", e.chain());
    let e = Registry::new()
        .credentials(USER, "wrong")
        .push(&layout, &built.descriptor, &target, &[])
        .await
        .unwrap_err();
    assert!(e.chain().contains("token service"), "{}", e.chain());

    let client = Registry::new().credentials(USER, PASSWORD);
    let report = client
        .push(&layout, &built.descriptor, &target, &[])
        .await
        .unwrap();
    assert_eq!(report.digest, built.descriptor.digest);
    // One token per scope, reused for every request of that scope.
    let issued = gate.issued.lock().unwrap().clone();
    assert_eq!(
        issued,
        ["repository:shop/web:pull", "repository:shop/web:pull,push"],
        "{issued:?}"
    );

    // Read back through the gate with a new client (its own tokens).
    let (found, _) = Registry::new()
        .credentials(USER, PASSWORD)
        .manifest(&target.with_digest(&report.digest).unwrap())
        .await
        .unwrap();
    assert_eq!(found.digest, report.digest);
}
