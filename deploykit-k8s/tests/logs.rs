//! `KubeLogs`, the Kubernetes `LogSource`, over the in-memory API server: kept records merged
//! by time with their sources, selectors, following (new lines, new pods, pods still
//! starting), reconnection after dropped streams without duplicates, retries, errors, stopping
//! when the reader goes, and the `LogSource` conformance suite.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use deploykit_core::Result;
use deploykit_k8s::{KubeLogs, RetryPolicy};
use deploykit_logs::{LogSelector, LogSource, LogStream, Record, Stream};
use deploykit_testing::conformance::log_source::{self, LogWorld};
use deploykit_testing::k8s::FakeApiServer;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

const NS: &str = "shop";
const CONTAINER: &str = "app";
/// 2026-12-05T15:00:00Z, in nanoseconds.
const T0: i64 = 1_796_482_800_000_000_000;
const MS: i64 = 1_000_000;
/// How long a test waits for something that should happen at once.
const SOON: Duration = Duration::from_secs(10);

fn fast() -> RetryPolicy {
    RetryPolicy::default()
        .with_backoff(Duration::from_millis(1), Duration::from_millis(20))
        .and_then(|p| p.with_max_attempts(4))
        .expect("a valid policy")
}

fn source(server: &FakeApiServer) -> KubeLogs {
    KubeLogs::new(server.client(), NS)
        .environment("production")
        .retry(fast())
}

fn pod_json(name: &str, service: &str, revision: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {
                "app.kubernetes.io/name": service,
                "app.kubernetes.io/managed-by": "deploykit",
                "deploykit.dev/revision": revision,
            },
        },
        "spec": { "containers": [{ "name": CONTAINER, "image": "registry.example.com/web" }] },
    }))
    .expect("a valid pod")
}

/// Creates pod `name` of `service`/`revision`, its container still starting.
async fn create_starting_pod(server: &FakeApiServer, name: &str, service: &str, revision: &str) {
    let pods: Api<Pod> = Api::namespaced(server.client(), NS);
    pods.create(&PostParams::default(), &pod_json(name, service, revision))
        .await
        .unwrap_or_else(|e| panic!("create pod {name}: {e}"));
    server.set_pod_status(name, |status| {
        *status = json!({
            "phase": "Pending",
            "containerStatuses": [{
                "name": CONTAINER, "image": "", "imageID": "", "ready": false,
                "restartCount": 0, "state": { "waiting": { "reason": "ContainerCreating" } },
            }],
        });
    });
}

/// Makes the container of pod `name` run.
fn start(server: &FakeApiServer, name: &str) {
    server.set_pod_status(name, |status| {
        *status = json!({
            "phase": "Running",
            "containerStatuses": [{
                "name": CONTAINER, "image": "", "imageID": "", "ready": true, "started": true,
                "restartCount": 0, "state": { "running": { "startedAt": "2026-12-05T15:00:00Z" } },
            }],
        });
    });
}

/// Creates pod `name` of `service`/`revision`, running.
async fn create_pod(server: &FakeApiServer, name: &str, service: &str, revision: &str) {
    create_starting_pod(server, name, service, revision).await;
    start(server, name);
}

fn lines(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix} {i}")).collect()
}

fn texts(records: &[Record]) -> Vec<&str> {
    records.iter().map(|r| r.line.as_str()).collect()
}

async fn collect(logs: &KubeLogs, selector: &LogSelector) -> Vec<Record> {
    let stream = logs
        .logs(selector)
        .await
        .unwrap_or_else(|e| panic!("logs({selector:?}): {e}"));
    tokio::time::timeout(SOON, stream.collect())
        .await
        .expect("a stream that does not follow ends")
        .unwrap_or_else(|e| panic!("reading logs({selector:?}): {e}"))
}

/// The next `n` records of a following stream (panics if they do not come soon).
async fn next_n(stream: &mut LogStream, n: usize) -> Vec<Record> {
    let mut records = Vec::new();
    while records.len() < n {
        match tokio::time::timeout(SOON, stream.next()).await {
            Ok(Some(Ok(record))) => records.push(record),
            Ok(Some(Err(e))) => panic!("the stream failed after {records:?}: {e}"),
            Ok(None) => panic!("the stream ended after {:?}", texts(&records)),
            Err(_) => panic!(
                "only {} of {n} records came: {:?}",
                records.len(),
                texts(&records)
            ),
        }
    }
    records
}

/// `e` and its sources, as one line.
fn chain(e: &deploykit_core::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// Asserts that nothing more comes on `stream` for a while.
async fn nothing_more(stream: &mut LogStream) {
    let extra = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(
        !matches!(extra, Ok(Some(_))),
        "nothing more was written, yet the stream brought {extra:?}"
    );
}

/// Waits until the server has `n` open follow streams.
async fn open_streams(server: &FakeApiServer, n: usize) {
    let deadline = tokio::time::Instant::now() + SOON;
    while server.open_log_streams() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} open log streams, the server has {}",
            server.open_log_streams()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn kept_records_of_two_pods_are_merged_by_time_with_their_sources() {
    let server = FakeApiServer::new();
    create_pod(&server, "web-a-0", "web", "r1").await;
    create_pod(&server, "web-a-1", "web", "r1").await;
    create_pod(&server, "api-0", "api", "r1").await;
    for round in 0..3 {
        server.append_pod_log(NS, "web-a-0", CONTAINER, [format!("a0 {round}")]);
        server.append_pod_log(NS, "web-a-1", CONTAINER, [format!("a1 {round}")]);
    }
    server.append_pod_log(NS, "api-0", CONTAINER, ["another service"]);

    let records = collect(&source(&server), &LogSelector::service("web")).await;
    assert_eq!(
        texts(&records),
        ["a0 0", "a1 0", "a0 1", "a1 1", "a0 2", "a1 2"]
    );
    assert!(
        records
            .windows(2)
            .all(|w| w[0].timestamp_ns < w[1].timestamp_ns)
    );
    for record in &records {
        let s = &record.source;
        assert_eq!(
            (
                s.service.as_str(),
                s.environment.as_str(),
                s.revision.as_str()
            ),
            ("web", "production", "r1")
        );
        let pod = if record.line.starts_with("a0") {
            "web-a-0"
        } else {
            "web-a-1"
        };
        assert_eq!(s.instance, pod, "{}", record.line);
        assert_eq!(record.stream, Stream::Stdout);
    }
    // Every log request asked for timestamps and named the container.
    let log_requests: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/log"))
        .collect();
    assert_eq!(log_requests.len(), 2);
    for r in &log_requests {
        assert_eq!(r.param("timestamps").as_deref(), Some("true"), "{r:?}");
        assert_eq!(r.param("container").as_deref(), Some(CONTAINER), "{r:?}");
    }
    // Without an environment name, records name the namespace.
    let records = collect(
        &KubeLogs::new(server.client(), NS),
        &LogSelector::service("api"),
    )
    .await;
    assert_eq!(records[0].source.environment, NS);
}

#[tokio::test]
async fn revision_and_instance_narrow_the_pods_read() {
    let server = FakeApiServer::new();
    create_pod(&server, "web-r1-0", "web", "r1").await;
    create_pod(&server, "web-r2-0", "web", "r2").await;
    create_pod(&server, "web-r2-1", "web", "r2").await;
    server.append_pod_log(NS, "web-r1-0", CONTAINER, ["one"]);
    server.append_pod_log(NS, "web-r2-0", CONTAINER, ["two"]);
    server.append_pod_log(NS, "web-r2-1", CONTAINER, ["three"]);
    let logs = source(&server);

    let r2 = collect(&logs, &LogSelector::service("web").revision("r2")).await;
    assert_eq!(texts(&r2), ["two", "three"]);
    assert!(r2.iter().all(|r| r.source.revision == "r2"));
    let one = collect(&logs, &LogSelector::service("web").instance("web-r2-1")).await;
    assert_eq!(texts(&one), ["three"]);
    assert!(
        collect(&logs, &LogSelector::service("nobody"))
            .await
            .is_empty()
    );
    let err = logs
        .logs(&LogSelector::service("web").revision("r1,evil=x"))
        .await
        .expect_err("a revision that is no label value is refused");
    assert!(err.to_string().contains("logs.selector.revision"), "{err}");
}

#[tokio::test]
async fn since_until_and_tail_are_exact() {
    let server = FakeApiServer::new();
    create_pod(&server, "web-0", "web", "r1").await;
    create_pod(&server, "web-1", "web", "r1").await;
    // Stamps within and across whole seconds, interleaved between the pods.
    let stamps = [
        ("web-0", 100),
        ("web-1", 500),
        ("web-0", 900),
        ("web-1", 1_200),
        ("web-0", 1_700),
        ("web-1", 2_300),
    ];
    for (i, (pod, ms)) in stamps.iter().enumerate() {
        server.append_pod_log_at(NS, pod, CONTAINER, T0 + ms * MS, [format!("line {i}")]);
    }
    let logs = source(&server);
    let web = || LogSelector::service("web");

    let since = collect(&logs, &web().since_ns(T0 + 500 * MS)).await;
    assert_eq!(
        texts(&since),
        ["line 1", "line 2", "line 3", "line 4", "line 5"]
    );
    assert_eq!(since[0].timestamp_ns, T0 + 500 * MS);
    let window = collect(
        &logs,
        &web().since_ns(T0 + 900 * MS).until_ns(T0 + 1_700 * MS),
    )
    .await;
    assert_eq!(texts(&window), ["line 2", "line 3"]);
    let tail = collect(&logs, &web().tail(3)).await;
    assert_eq!(texts(&tail), ["line 3", "line 4", "line 5"]);
    let since_tail = collect(&logs, &web().since_ns(T0 + 200 * MS).tail(10)).await;
    assert_eq!(since_tail.len(), 5);
    let until_tail = collect(&logs, &web().until_ns(T0 + 1_000 * MS).tail(2)).await;
    assert_eq!(texts(&until_tail), ["line 1", "line 2"]);

    // sinceTime goes out rounded down to the second; tailLines only when it is exact.
    server.clear_requests();
    collect(&logs, &web().since_ns(T0 + 1_700 * MS)).await;
    collect(&logs, &web().tail(2)).await;
    collect(&logs, &web().until_ns(T0 + 1_000 * MS).tail(2)).await;
    let params: Vec<(Option<String>, Option<String>)> = server
        .requests()
        .iter()
        .filter(|r| r.path == format!("/api/v1/namespaces/{NS}/pods/web-0/log"))
        .map(|r| (r.param("sinceTime"), r.param("tailLines")))
        .collect();
    assert_eq!(
        params,
        [
            (Some("2026-12-05T15:00:01Z".to_string()), None),
            (None, Some("2".to_string())),
            (None, None),
        ]
    );
}

#[tokio::test]
async fn following_delivers_the_kept_records_then_new_lines() {
    let server = FakeApiServer::new();
    create_pod(&server, "web-0", "web", "r1").await;
    create_pod(&server, "web-1", "web", "r1").await;
    server.append_pod_log(NS, "web-0", CONTAINER, lines("old web-0", 0..3));
    server.append_pod_log(NS, "web-1", CONTAINER, lines("old web-1", 0..3));
    let mut stream = source(&server)
        .logs(&LogSelector::service("web").tail(4).follow())
        .await
        .unwrap();
    let kept = next_n(&mut stream, 4).await;
    assert_eq!(
        texts(&kept),
        ["old web-0 2", "old web-1 0", "old web-1 1", "old web-1 2"]
    );
    open_streams(&server, 2).await;
    server.append_pod_log(NS, "web-1", CONTAINER, lines("new web-1", 0..5));
    server.append_pod_log(NS, "web-0", CONTAINER, lines("new web-0", 0..5));
    let new = next_n(&mut stream, 10).await;
    let mut per_pod: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &new {
        per_pod
            .entry(r.source.instance.clone())
            .or_default()
            .push(r.line.clone());
    }
    assert_eq!(per_pod["web-0"], lines("new web-0", 0..5));
    assert_eq!(per_pod["web-1"], lines("new web-1", 0..5));
    nothing_more(&mut stream).await;
}

#[tokio::test]
async fn pods_of_a_new_revision_are_followed_once_they_start() {
    let server = FakeApiServer::new();
    create_pod(&server, "web-r1-0", "web", "r1").await;
    server.append_pod_log(NS, "web-r1-0", CONTAINER, ["r1 before"]);
    let logs = source(&server);
    let mut all = logs
        .logs(&LogSelector::service("web").follow())
        .await
        .unwrap();
    let mut only_r2 = logs
        .logs(&LogSelector::service("web").revision("r2").follow())
        .await
        .unwrap();
    assert_eq!(texts(&next_n(&mut all, 1).await), ["r1 before"]);

    // A new revision rolls out: its Deployment's pod appears (running at once), and a pod
    // whose container is still starting.
    let deployments: Api<Deployment> = Api::namespaced(server.client(), NS);
    let labels = json!({
        "app.kubernetes.io/name": "web",
        "app.kubernetes.io/managed-by": "deploykit",
        "deploykit.dev/revision": "r2",
    });
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": "web-r2", "namespace": NS },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": labels },
            "template": {
                "metadata": { "labels": labels },
                "spec": { "containers": [{ "name": CONTAINER, "image": "web:2" }] },
            },
        },
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    server.append_pod_log(NS, "web-r2-0", CONTAINER, ["r2 first", "r2 second"]);
    create_starting_pod(&server, "web-r2-late", "web", "r2").await;

    let seen = next_n(&mut all, 2).await;
    assert_eq!(texts(&seen), ["r2 first", "r2 second"]);
    assert_eq!(seen[0].source.instance, "web-r2-0");
    assert_eq!(seen[0].source.revision, "r2");
    assert_eq!(
        texts(&next_n(&mut only_r2, 2).await),
        ["r2 first", "r2 second"]
    );

    // The late pod's container starts and writes; lines of r1 reach only the first stream.
    tokio::time::sleep(Duration::from_millis(50)).await;
    start(&server, "web-r2-late");
    server.append_pod_log(NS, "web-r2-late", CONTAINER, ["late"]);
    server.append_pod_log(NS, "web-r1-0", CONTAINER, ["r1 after"]);
    let mut seen = texts(&next_n(&mut all, 2).await)
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>();
    seen.sort();
    assert_eq!(seen, ["late", "r1 after"]);
    assert_eq!(texts(&next_n(&mut only_r2, 1).await), ["late"]);
    nothing_more(&mut all).await;
    nothing_more(&mut only_r2).await;
}

/// Follows one pod whose lines carry `stamps` (several lines share a timestamp), with the
/// connection dropped after the first `cut` lines arrived (and dropped again at once after the
/// reconnection when `twice`): every line must arrive exactly once, in order.
async fn cut_after(cut: usize, stamps: &[i64], twice: bool) {
    let server = FakeApiServer::new();
    create_pod(&server, "web-0", "web", "r1").await;
    let mut stream = source(&server)
        .logs(&LogSelector::service("web").follow())
        .await
        .unwrap();
    open_streams(&server, 1).await;
    let line = |i: usize| format!("line {i}");
    for (i, stamp) in stamps.iter().enumerate().take(cut) {
        server.append_pod_log_at(NS, "web-0", CONTAINER, *stamp, [line(i)]);
    }
    let mut seen = next_n(&mut stream, cut).await;
    server.cut_log_streams();
    if twice {
        open_streams(&server, 1).await;
        server.cut_log_streams();
    }
    for (i, stamp) in stamps.iter().enumerate().skip(cut) {
        server.append_pod_log_at(NS, "web-0", CONTAINER, *stamp, [line(i)]);
    }
    seen.extend(next_n(&mut stream, stamps.len() - cut).await);
    let expected: Vec<String> = (0..stamps.len()).map(line).collect();
    assert_eq!(texts(&seen), expected, "cut after {cut} (twice: {twice})");
    nothing_more(&mut stream).await;
    open_streams(&server, 1).await;
}

#[tokio::test]
async fn a_dropped_follow_stream_is_reopened_without_duplicates_wherever_it_falls() {
    // Groups of equal timestamps, across a whole second.
    let stamps = [
        T0 + 100 * MS,
        T0 + 100 * MS,
        T0 + 100 * MS,
        T0 + 400 * MS,
        T0 + 999 * MS,
        T0 + 999 * MS,
        T0 + 1_000 * MS,
        T0 + 1_000 * MS,
        T0 + 1_500 * MS,
    ];
    for cut in 0..=stamps.len() {
        cut_after(cut, &stamps, cut % 2 == 1).await;
    }
}

#[tokio::test]
async fn many_lines_survive_repeated_cuts_exactly_once() {
    let server = FakeApiServer::new();
    create_pod(&server, "web-0", "web", "r1").await;
    create_pod(&server, "web-1", "web", "r1").await;
    let mut stream = source(&server)
        .logs(&LogSelector::service("web").follow())
        .await
        .unwrap();
    open_streams(&server, 2).await;
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for round in 0..5 {
        for pod in ["web-0", "web-1"] {
            server.append_pod_log(NS, pod, CONTAINER, lines(&format!("{pod} r{round}"), 0..40));
        }
        // Cut while the lines may still be on their way.
        server.cut_log_streams();
        for r in next_n(&mut stream, 80).await {
            seen.entry(r.source.instance.clone())
                .or_default()
                .push(r.line);
        }
    }
    for pod in ["web-0", "web-1"] {
        let expected: Vec<String> = (0..5)
            .flat_map(|round| lines(&format!("{pod} r{round}"), 0..40))
            .collect();
        assert_eq!(seen[pod], expected, "{pod}: every line once, in order");
    }
    nothing_more(&mut stream).await;
}

#[tokio::test]
async fn dropping_the_stream_stops_every_follower() {
    let server = FakeApiServer::new();
    create_pod(&server, "web-0", "web", "r1").await;
    create_pod(&server, "web-1", "web", "r1").await;
    let stream = source(&server)
        .logs(&LogSelector::service("web").follow())
        .await
        .unwrap();
    open_streams(&server, 2).await;
    drop(stream);
    open_streams(&server, 0).await;
    // And nothing reconnects afterwards.
    server.clear_requests();
    server.append_pod_log(NS, "web-0", CONTAINER, ["after"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.open_log_streams(), 0);
    assert!(
        server.requests().iter().all(|r| !r.path.ends_with("/log")),
        "{:?}",
        server.requests()
    );
}

#[tokio::test]
async fn a_deleted_pod_ends_only_its_own_follower() {
    let server = FakeApiServer::new();
    create_pod(&server, "web-0", "web", "r1").await;
    create_pod(&server, "web-1", "web", "r1").await;
    let mut stream = source(&server)
        .logs(&LogSelector::service("web").follow())
        .await
        .unwrap();
    open_streams(&server, 2).await;
    let pods: Api<Pod> = Api::namespaced(server.client(), NS);
    pods.delete("web-0", &DeleteParams::default())
        .await
        .unwrap();
    open_streams(&server, 1).await;
    server.append_pod_log(NS, "web-1", CONTAINER, ["still here"]);
    assert_eq!(texts(&next_n(&mut stream, 1).await), ["still here"]);
    nothing_more(&mut stream).await;
}

#[tokio::test]
async fn transient_failures_are_retried_and_others_name_the_pod() {
    let server = FakeApiServer::new();
    create_pod(&server, "web-0", "web", "r1").await;
    server.append_pod_log(NS, "web-0", CONTAINER, ["hello"]);
    let log_path = format!("/api/v1/namespaces/{NS}/pods/web-0/log");
    let logs = source(&server);

    server.fail_next("GET", &log_path, 503, 2);
    server.fail_next("GET", &format!("/api/v1/namespaces/{NS}/pods"), 429, 1);
    let records = collect(&logs, &LogSelector::service("web")).await;
    assert_eq!(texts(&records), ["hello"]);

    server.fail_next("GET", &log_path, 403, 1);
    let err = logs
        .logs(&LogSelector::service("web"))
        .await
        .expect_err("a 403 is not retried");
    let message = chain(&err);
    assert!(
        message.contains("pod web-0") && message.contains("injected failure 403"),
        "{message}"
    );

    // While following, a permanent failure on reconnecting ends the stream with the error.
    let mut stream = logs
        .logs(&LogSelector::service("web").follow())
        .await
        .unwrap();
    assert_eq!(texts(&next_n(&mut stream, 1).await), ["hello"]);
    open_streams(&server, 1).await;
    server.fail_next("GET", &log_path, 403, 1);
    server.cut_log_streams();
    match tokio::time::timeout(SOON, stream.next()).await {
        Ok(Some(Err(e))) => assert!(
            chain(&e).contains("pod web-0") && chain(&e).contains("injected failure 403"),
            "{}",
            chain(&e)
        ),
        other => panic!("expected the follower's error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_container_that_has_not_started_has_no_records_yet() {
    let server = FakeApiServer::new();
    create_starting_pod(&server, "web-0", "web", "r1").await;
    let logs = source(&server);
    assert!(
        collect(&logs, &LogSelector::service("web"))
            .await
            .is_empty()
    );
    // The API's answer, as the real server words it.
    let pods: Api<Pod> = Api::namespaced(server.client(), NS);
    let err = pods
        .logs("web-0", &kube::api::LogParams::default())
        .await
        .expect_err("the container has not started");
    assert!(
        err.to_string()
            .contains(r#"container "app" in pod "web-0" is waiting to start: ContainerCreating"#),
        "{err}"
    );
    let err = pods
        .logs("nobody", &kube::api::LogParams::default())
        .await
        .expect_err("no such pod");
    assert!(err.to_string().contains("not found"), "{err}");
}

// ------------------------------------------------------------------------------------------
// The conformance suite
// ------------------------------------------------------------------------------------------

struct KubeWorld {
    server: FakeApiServer,
    logs: KubeLogs,
}

#[async_trait]
impl LogWorld for KubeWorld {
    fn source(&self) -> &dyn LogSource {
        &self.logs
    }

    fn environment(&self) -> &str {
        "production"
    }

    async fn write(
        &self,
        service: &str,
        revision: &str,
        instance: &str,
        lines: &[String],
    ) -> Result<()> {
        if self.server.object("pods", NS, instance).is_none() {
            create_pod(&self.server, instance, service, revision).await;
        }
        self.server
            .append_pod_log(NS, instance, CONTAINER, lines.iter());
        Ok(())
    }
}

#[tokio::test]
async fn conforms_to_the_log_source_contract() {
    let server = FakeApiServer::new();
    let world = KubeWorld {
        logs: source(&server),
        server,
    };
    log_source::log_source(&world).await;
}

/// The environment itself is a log source of its namespace's pods (records carry the
/// namespace as their environment).
#[tokio::test]
async fn the_environment_is_a_log_source_of_its_pods() {
    let server = FakeApiServer::new();
    let env = deploykit_k8s::KubeEnvironment::new(
        server.client(),
        deploykit_k8s::render::RenderOptions::new(NS),
    );
    create_pod(&server, "web-0", "web", "r1").await;
    server.append_pod_log(NS, "web-0", CONTAINER, ["hello from the pod"].iter());
    let records = env
        .logs(&LogSelector::service("web"))
        .await
        .expect("logs")
        .collect()
        .await
        .expect("records");
    let seen: Vec<(&str, &str, &str)> = records
        .iter()
        .map(|r| {
            (
                r.source.environment.as_str(),
                r.source.instance.as_str(),
                r.line.as_str(),
            )
        })
        .collect();
    assert_eq!(seen, [(NS, "web-0", "hello from the pod")]);
}
