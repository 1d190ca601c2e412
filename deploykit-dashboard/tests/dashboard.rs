//! The dashboard over HTTP, on the simulated cluster: who may look and act, what the pages
//! show of a canary at an approval gate and of a failed analysis, the live event stream, and
//! hostile requests (foreign origins, forged sessions, missing form tokens, markup in names).

use std::sync::Arc;
use std::time::Duration;

use deploykit_core::analysis::{AnalysisSpec, Condition, MetricCheck};
use deploykit_core::audit::AuditOutcome;
use deploykit_core::strategy::{CanarySpec, CanaryStep};
use deploykit_core::{
    Actor, Clock, DeployRequest, DeploymentId, Digest, EnvironmentKind, EnvironmentName,
    EnvironmentSpec, Orchestrator, OrchestratorConfig, Phase, Revision, ServiceSpec, StateStore,
    StrategySpec,
};
use deploykit_dashboard::{Dashboard, SessionKey, login_link};
use deploykit_testing::{MemoryStore, SimCluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct World {
    sim: SimCluster,
    orch: Arc<Orchestrator>,
    store: Arc<dyn StateStore>,
    key: SessionKey,
    addr: std::net::SocketAddr,
    env: EnvironmentSpec,
}

fn service() -> ServiceSpec {
    ServiceSpec::builder()
        .name("web")
        .port(8080)
        .build()
        .expect("service")
}

fn request(label: &str, by: &str) -> DeployRequest {
    DeployRequest::builder()
        .service(service())
        .environment("production")
        .artifact(Digest::of_bytes(label.as_bytes()))
        .label(label)
        .requested_by(Actor::new(by))
        .build()
}

async fn world(steps: Vec<CanaryStep>) -> World {
    let sim = SimCluster::new();
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let env = EnvironmentSpec::builder()
        .name("production")
        .kind(EnvironmentKind::Production)
        .replicas(4)
        .strategy(StrategySpec::Canary(
            CanarySpec::builder().steps(steps).build().expect("canary"),
        ))
        .build()
        .expect("environment");
    let orch = Arc::new(
        Orchestrator::builder_shared(store.clone())
            .environment_with_monitor(env.clone(), Arc::new(sim.clone()), Arc::new(sim.clone()))
            .clock(Arc::new(sim.clock()))
            .config(
                OrchestratorConfig::builder()
                    .poll_interval(Duration::from_secs(1))
                    .build(),
            )
            .open()
            .await
            .expect("orchestrator"),
    );
    let key = SessionKey::generate().expect("key");
    let dashboard = Dashboard::builder(store.clone(), orch.clone(), key.clone())
        .environment(
            EnvironmentName::new("production").unwrap(),
            Arc::new(sim.clone()),
        )
        .services([service().name])
        .clock(Arc::new(sim.clock()))
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(dashboard.serve(listener, std::future::pending()));
    World {
        sim,
        orch,
        store,
        key,
        addr,
        env,
    }
}

/// One HTTP/1.1 exchange (`Connection: close`): status, headers (lower-case names), body.
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.lines();
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_lowercase(), v.to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Signs `actor` in through a login link; the session cookie (`name=value`).
async fn sign_in(w: &World, actor: &str) -> String {
    let link = login_link(
        &format!("http://{}", w.addr),
        &w.key,
        &Actor::new(actor),
        w.sim.clock().now(),
    );
    let path = link.split_once(&w.addr.to_string()).unwrap().1.to_string();
    let (status, headers, _) = http(w.addr, "GET", &path, &[], "").await;
    assert_eq!(status, 303);
    let cookie = header(&headers, "set-cookie").expect("a session cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    cookie.split(';').next().unwrap().to_string()
}

/// The form token in a page.
fn form_token(page: &str) -> String {
    let at = page
        .find("name=\"form_token\" value=\"")
        .expect("a form on the page");
    page[at + 25..].split('"').next().unwrap().to_string()
}

async fn until(
    orch: &Orchestrator,
    id: &DeploymentId,
    what: impl Fn(&deploykit_core::DeploymentStatus) -> bool,
) {
    for _ in 0..10_000 {
        if what(&orch.status(id).await.unwrap()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("never reached: {:?}", orch.status(id).await.unwrap().phase);
}

#[tokio::test(start_paused = true)]
async fn an_approval_goes_through_sign_in_form_tokens_origin_checks_and_four_eyes() {
    let w = world(vec![
        CanaryStep::weight(25).unwrap(),
        CanaryStep::approval(),
        CanaryStep::weight(50).unwrap(),
    ])
    .await;
    let (_, v1) = ((), w.orch.deploy(request("v1", "alice")).await.unwrap());
    assert_eq!(w.orch.wait(&v1).await.unwrap().phase, Phase::Succeeded);

    // Nobody gets in without a session; a forged or foreign one is refused.
    let (status, _, body) = http(w.addr, "GET", "/", &[], "").await;
    assert_eq!(status, 401);
    assert!(body.contains("not signed in"), "{body}");
    let other = SessionKey::generate().unwrap();
    let foreign = login_link("", &other, &Actor::new("mallory"), w.sim.clock().now());
    let (status, _, body) = http(w.addr, "GET", &foreign, &[], "").await;
    assert_eq!(status, 401);
    assert!(body.contains("not signed by this dashboard"), "{body}");
    let (status, _, _) = http(
        w.addr,
        "GET",
        "/",
        &[("Cookie", "deploykit_session=bWFsbG9yeQ.99999999999999.AAAA")],
        "",
    )
    .await;
    assert_eq!(status, 401);

    let alice = sign_in(&w, "alice").await;
    let id = w.orch.deploy(request("v2", "alice")).await.unwrap();
    until(&w.orch, &id, |s| s.awaiting.is_some()).await;

    // The overview shows the canary's live split and that it waits.
    let (status, _, page) = http(w.addr, "GET", "/", &[("Cookie", &alice)], "").await;
    assert_eq!(status, 200);
    assert!(page.contains("waiting for approval of step-1"), "{page}");
    assert!(
        page.contains("data-revision=\"v2\" data-weight=\"25\"")
            && page.contains("data-revision=\"v1\" data-weight=\"75\""),
        "{page}"
    );
    assert!(page.contains("signed in as <b>alice</b>"));

    // The deployment's page: the gate, the steps, the buttons.
    let path = format!("/deployments/{id}");
    let (_, _, page) = http(w.addr, "GET", &path, &[("Cookie", &alice)], "").await;
    assert!(page.contains("id=\"awaiting\""), "{page}");
    assert!(
        page.contains("<li class=\"done\">traffic 25%</li>"),
        "{page}"
    );
    assert!(
        page.contains("<li class=\"current\">pause until approved</li>"),
        "{page}"
    );
    assert!(page.contains("data-action=\"approve\""));
    let token = form_token(&page);

    // A post without the session's form token, from another site, or with another session's
    // token is refused and changes nothing.
    let approve = format!("{path}/approve");
    let (status, _, _) = http(w.addr, "POST", &approve, &[("Cookie", &alice)], "reason=x").await;
    assert_eq!(status, 403);
    let body = format!("form_token={token}&reason=looks+good");
    let (status, _, _) = http(
        w.addr,
        "POST",
        &approve,
        &[("Cookie", &alice), ("Origin", "http://evil.example")],
        &body,
    )
    .await;
    assert_eq!(status, 403);
    let bob = sign_in(&w, "bob").await;
    let (status, _, _) = http(w.addr, "POST", &approve, &[("Cookie", &bob)], &body).await;
    assert_eq!(status, 403, "alice's token in bob's session");
    assert!(w.orch.status(&id).await.unwrap().awaiting.is_some());

    // Alice asked for v2: in production she may not approve it herself. The refusal is shown
    // and audited.
    let (status, _, page) = http(w.addr, "POST", &approve, &[("Cookie", &alice)], &body).await;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("id=\"error\""), "{page}");
    assert!(w.orch.status(&id).await.unwrap().awaiting.is_some());
    let audit = w.store.audit_log().await.unwrap();
    assert!(audit.iter().any(|e| e.record.actor.as_str() == "alice"
        && e.record.outcome == AuditOutcome::Denied));

    // Bob approves with his own page's token, while a page listens to the live stream.
    let mut events = TcpStream::connect(w.addr).await.unwrap();
    events
        .write_all(
            format!(
                "GET /events HTTP/1.1\r\nHost: {}\r\nCookie: {bob}\r\n\r\n",
                w.addr
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains(": connected") {
        let n = events.read(&mut buf).await.unwrap();
        assert!(n > 0, "the stream closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("text/event-stream"), "{seen}");
    let (_, _, page) = http(w.addr, "GET", &path, &[("Cookie", &bob)], "").await;
    let body = format!(
        "form_token={}&reason=dashboards+look+fine",
        form_token(&page)
    );
    let (status, headers, _) = http(
        w.addr,
        "POST",
        &approve,
        &[("Cookie", &bob), ("Origin", &format!("http://{}", w.addr))],
        &body,
    )
    .await;
    assert_eq!(status, 303);
    assert_eq!(header(&headers, "location"), Some(path.as_str()));
    while !seen.contains("\"kind\":\"approved\"") {
        let n = events.read(&mut buf).await.unwrap();
        assert!(n > 0, "the stream closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("event: deployment"), "{seen}");
    assert!(
        seen.contains("step-1 approved by bob: dashboards look fine"),
        "{seen}"
    );
    assert_eq!(w.orch.wait(&id).await.unwrap().phase, Phase::Succeeded);

    // The audit page verifies the chain and shows who approved.
    let (_, _, page) = http(w.addr, "GET", "/audit", &[("Cookie", &bob)], "").await;
    assert!(page.contains("hash chain intact"), "{page}");
    assert!(page.contains("step-1: dashboards look fine"), "{page}");
    // The live refresh asks for the content alone.
    let (_, _, fragment) = http(
        w.addr,
        "GET",
        "/audit",
        &[("Cookie", &bob), ("x-deploykit-fragment", "1")],
        "",
    )
    .await;
    assert!(fragment.starts_with("<h1>Audit log</h1>"), "{fragment}");

    // Bob rolls web back to v1 from its page: a new deployment, driven, shown.
    let (_, _, page) = http(
        w.addr,
        "GET",
        "/services/production/web",
        &[("Cookie", &bob)],
        "",
    )
    .await;
    assert!(page.contains("<option value=\""), "{page}");
    let body = format!("form_token={}&to=v1&reason=v2+is+slow", form_token(&page));
    let (status, headers, _) = http(
        w.addr,
        "POST",
        "/services/production/web/rollback",
        &[("Cookie", &bob)],
        &body,
    )
    .await;
    assert_eq!(status, 303);
    let created = header(&headers, "location")
        .and_then(|l| l.strip_prefix("/deployments/"))
        .expect("the new deployment's page")
        .to_string();
    let status = w.orch.wait(&DeploymentId::new(created)).await.unwrap();
    assert_eq!(status.phase, Phase::Succeeded);
    assert_eq!(status.spec.target.label, "v1");
    assert_eq!(status.spec.requested_by.as_str(), "bob");
}

#[tokio::test(start_paused = true)]
async fn a_failed_analysis_is_charted_against_its_threshold_with_the_rollback_reason() {
    let analysis = AnalysisSpec::new(vec![
        MetricCheck::threshold("error-rate", "error_rate", Condition::below(0.05))
            .interval(Duration::from_secs(30))
            .count(3)
            .unit("%")
            .build()
            .unwrap(),
    ])
    .unwrap();
    let w = world(vec![
        CanaryStep::weight(25).unwrap(),
        CanaryStep::analysis(analysis),
        CanaryStep::weight(50).unwrap(),
    ])
    .await;
    let v1 = w.orch.deploy(request("v1", "alice")).await.unwrap();
    w.orch.wait(&v1).await.unwrap();
    // A label with markup in it is shown as text.
    let label = "<img src=x onerror=alert(1)>";
    let v2 = Revision::new(
        &service(),
        &w.env,
        Digest::of_bytes(label.as_bytes()),
        label,
    )
    .unwrap();
    w.sim.set_metric(
        &service().name,
        Some(&v2.id),
        "error_rate",
        vec![0.01, 0.31],
    );
    let id = w.orch.deploy(request(label, "alice")).await.unwrap();
    assert_eq!(w.orch.wait(&id).await.unwrap().phase, Phase::RolledBack);

    let carol = sign_in(&w, "carol").await;
    let (status, _, page) = http(
        w.addr,
        "GET",
        &format!("/deployments/{id}"),
        &[("Cookie", &carol)],
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert!(!page.contains("<img src=x"), "markup in a label is escaped");
    assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;"));
    assert!(page.contains("id=\"rollback\""), "{page}");
    assert!(page.contains("analysis failed"), "{page}");
    assert!(page.contains("data-metric=\"error-rate\""), "{page}");
    assert!(page.contains("data-threshold=\"0.05\""), "{page}");
    assert!(page.contains("success &lt; 5 %"), "{page}");
    assert!(page.contains("point bad"), "{page}");
    assert!(page.contains("31 %"), "{page}");
    assert!(page.contains("<li class=\"stopped\">"), "{page}");
    assert!(
        !page.contains("data-action="),
        "an ended deployment has no buttons"
    );

    // A rollback from the service's page starts a deployment and shows it.
    let (_, _, page) = http(
        w.addr,
        "GET",
        "/services/production/web",
        &[("Cookie", &carol)],
        "",
    )
    .await;
    assert!(page.contains("rolled back"), "{page}");
    let (status, _, _) = http(
        w.addr,
        "GET",
        "/services/production/nope%2F..",
        &[("Cookie", &carol)],
        "",
    )
    .await;
    assert_eq!(
        status, 400,
        "an invalid service name is bad input, not a crash"
    );
    let (status, _, _) = http(
        w.addr,
        "GET",
        "/deployments/does-not-exist",
        &[("Cookie", &carol)],
        "",
    )
    .await;
    assert_eq!(status, 404);
    let (status, _, _) = http(w.addr, "GET", "/backups", &[("Cookie", &carol)], "").await;
    assert_eq!(status, 200);
}
