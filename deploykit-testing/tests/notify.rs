//! Notifications: the recorder sees every event in order; the webhook posts them over real
//! HTTP to a server on loopback, retrying server errors.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deploykit_alerting::webhook::WebhookNotifier;
use deploykit_core::analysis::{AnalysisSpec, Condition, MetricCheck};
use deploykit_core::strategy::{CanarySpec, CanaryStep};
use deploykit_core::{Orchestrator, OrchestratorConfig, Phase, StrategySpec};
use deploykit_testing::{MemoryStore, RecordingNotifier, SimCluster, SimConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::test(start_paused = true)]
async fn notifiers_receive_every_event_in_order() {
    let sim = SimCluster::new();
    let analysis = AnalysisSpec::new(vec![
        MetricCheck::threshold("error-rate", "error_rate", Condition::below(0.05))
            .build()
            .expect("metric"),
    ])
    .expect("analysis");
    let spec = CanarySpec::builder()
        .steps(vec![
            CanaryStep::weight(25).expect("w"),
            CanaryStep::analysis(analysis),
        ])
        .build()
        .expect("canary");
    let env = common::environment_with(2, StrategySpec::Canary(spec));
    let recorder = RecordingNotifier::new();
    let orch = Orchestrator::builder(MemoryStore::new())
        .environment_with_monitor(env.clone(), Arc::new(sim.clone()), Arc::new(sim.clone()))
        .notifier(Arc::new(recorder.clone()))
        .clock(Arc::new(sim.clock()))
        .config(common::config())
        .open()
        .await
        .expect("open");
    common::deploy_and_wait(&orch, "v1").await;
    let v2 = common::revision_in(&env, "v2");
    sim.set_metric(
        &common::service().name,
        Some(&v2.id),
        "error_rate",
        vec![0.5],
    );
    let (_, phase) = common::deploy_and_wait(&orch, "v2").await;
    assert_eq!(phase, Phase::RolledBack);
    orch.shutdown()
        .await
        .expect("shutdown drains notifications");
    let kinds: Vec<String> = recorder
        .events()
        .iter()
        .filter(|e| e.revision == "v2")
        .map(|e| e.entry.event.kind().to_string())
        .collect();
    let mut expected = vec![
        "created",
        "started",
        "applied",
        "applied",
        "step_reached",
        "measured",
    ];
    expected.extend(["rollback_started", "applied", "applied", "finished"]);
    assert_eq!(kinds, expected);
    let last = recorder.events().last().cloned().expect("events");
    assert_eq!(
        last.description(),
        "rolled back, verified: v1 2/2 ready, 100% of traffic"
    );
    let seqs: Vec<u64> = recorder
        .events()
        .iter()
        .filter(|e| e.revision == "v2")
        .map(|e| e.entry.seq)
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "in journal order: {seqs:?}"
    );
}

/// A small HTTP/1.1 server: answers the first `failures` requests with 503, then 200 (or always
/// `status` if given), and records each request body.
async fn server(failures: usize, status: Option<u16>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!(
        "http://{}/hooks/deploys",
        listener.local_addr().expect("addr")
    );
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    tokio::spawn(async move {
        let mut n = 0;
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let body = loop {
                let Ok(read) = conn.read(&mut chunk).await else {
                    break None;
                };
                if read == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..read]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0usize);
                    if buf.len() >= end + 4 + len {
                        break Some(text[end + 4..end + 4 + len].to_string());
                    }
                }
            };
            let Some(body) = body else { continue };
            seen.lock().expect("lock").push(body);
            let code = status.unwrap_or(if n < failures { 503 } else { 200 });
            n += 1;
            let reply =
                format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = conn.write_all(reply.as_bytes()).await;
        }
    });
    (url, bodies)
}

fn real_time_orchestrator_config() -> OrchestratorConfig {
    OrchestratorConfig::builder()
        .poll_interval(Duration::from_millis(10))
        .build()
}

#[tokio::test]
async fn the_webhook_posts_json_and_retries_server_errors() {
    let (url, bodies) = server(1, None).await;
    let mut config = SimConfig::default();
    config.start_latency = Duration::from_millis(20);
    let sim = SimCluster::with_config(config);
    let orch = Orchestrator::builder(MemoryStore::new())
        .environment(common::production(), Arc::new(sim.clone()))
        .notifier(Arc::new(WebhookNotifier::new(&url).expect("url")))
        .config(real_time_orchestrator_config())
        .open()
        .await
        .expect("open");
    let (_, phase) = common::deploy_and_wait(&orch, "v1").await;
    assert_eq!(phase, Phase::Succeeded);
    orch.shutdown().await.expect("shutdown");
    let bodies = bodies.lock().expect("lock").clone();
    let parsed: Vec<serde_json::Value> = bodies
        .iter()
        .map(|b| serde_json::from_str(b).expect("json body"))
        .collect();
    let kinds: Vec<&str> = parsed
        .iter()
        .map(|v| v["kind"].as_str().expect("kind"))
        .collect();
    // The first delivery got a 503 and was sent again.
    assert_eq!(
        kinds,
        ["created", "created", "started", "applied", "finished"]
    );
    let last = &parsed[4];
    assert_eq!(last["service"], "web");
    assert_eq!(last["environment"], "production");
    assert_eq!(last["revision"], "v1");
    assert_eq!(last["phase"], "succeeded");
    assert_eq!(last["message"], "succeeded: v1 serving");
}

#[tokio::test]
async fn the_webhook_does_not_retry_client_errors() {
    let (url, bodies) = server(0, Some(400)).await;
    let hook = WebhookNotifier::new(&url).expect("url");
    let mut config = SimConfig::default();
    config.start_latency = Duration::from_millis(20);
    let sim = SimCluster::with_config(config);
    let orch = Orchestrator::builder(MemoryStore::new())
        .environment(common::production(), Arc::new(sim.clone()))
        .notifier(Arc::new(hook))
        .config(real_time_orchestrator_config())
        .open()
        .await
        .expect("open");
    common::deploy_and_wait(&orch, "v1").await;
    orch.shutdown().await.expect("shutdown");
    assert_eq!(
        bodies.lock().expect("lock").len(),
        4,
        "one attempt per event"
    );
    let err = WebhookNotifier::new("ftp://example.com/x").expect_err("scheme");
    assert!(err.to_string().contains("webhook.url"), "{err}");
}

/// One finished deployment's events, from a real orchestrator on the simulated cluster.
async fn some_events() -> Vec<deploykit_core::Event> {
    let sim = SimCluster::new();
    let recorder = RecordingNotifier::new();
    let orch = Orchestrator::builder(MemoryStore::new())
        .environment(common::production(), Arc::new(sim.clone()))
        .notifier(Arc::new(recorder.clone()))
        .clock(Arc::new(sim.clock()))
        .config(common::config())
        .open()
        .await
        .expect("orchestrator");
    common::deploy_and_wait(&orch, "v1").await;
    orch.shutdown().await.expect("shutdown");
    recorder.events()
}

#[tokio::test]
async fn a_signed_webhook_and_a_chat_message_carry_the_event_and_nothing_else() {
    use deploykit_alerting::webhook::WebhookFormat;
    use deploykit_core::Notifier;
    use deploykit_core::notify::{WEBHOOK_SIGNATURE_HEADER, verify_webhook_signature};
    let events = some_events().await;
    let last = events.last().expect("events");
    let sink = deploykit_testing::sinks::HttpSink::start()
        .await
        .expect("sink");
    let key = b"sixteen-byte-key-and-more";
    let signed = WebhookNotifier::new(&sink.url("/json"))
        .expect("hook")
        .with_signing_key(key.to_vec())
        .expect("key");
    assert!(
        WebhookNotifier::new(&sink.url("/x"))
            .expect("hook")
            .with_signing_key(b"short".to_vec())
            .is_err(),
        "a short key is refused"
    );
    signed.notify(last).await.expect("sent");
    let chat = WebhookNotifier::new(&sink.url("/chat"))
        .expect("hook")
        .with_format(WebhookFormat::Slack);
    chat.notify(last).await.expect("sent");
    let requests = sink.requests();
    assert_eq!(requests.len(), 2);
    let json = &requests[0];
    let signature = json.header(WEBHOOK_SIGNATURE_HEADER).expect("signed");
    assert!(verify_webhook_signature(key, &json.body, signature));
    let body: serde_json::Value = serde_json::from_slice(&json.body).expect("json");
    assert_eq!(body["kind"], "finished");
    assert_eq!(body["phase"], "succeeded");
    let slack: serde_json::Value = serde_json::from_slice(&requests[1].body).expect("json");
    let text = slack["text"].as_str().expect("text");
    assert!(
        text.starts_with(":white_check_mark: *web/production v1: succeeded"),
        "{text}"
    );
    assert!(requests[1].header(WEBHOOK_SIGNATURE_HEADER).is_none());
}

#[tokio::test]
async fn mail_is_retried_when_deferred_and_not_when_refused() {
    use deploykit_alerting::email::EmailNotifier;
    use deploykit_core::Notifier;
    use deploykit_core::retry::RetryPolicy;
    use deploykit_testing::sinks::SmtpSink;
    let events = some_events().await;
    let last = events.last().expect("events");
    let quick = RetryPolicy::default()
        .with_backoff(Duration::from_millis(5), Duration::from_millis(20))
        .and_then(|p| p.with_max_attempts(3))
        .expect("policy");
    let to = vec!["oncall@shop.example".to_string()];

    let ok = SmtpSink::start().await.expect("sink");
    EmailNotifier::new(&ok.addr(), "deploykit@shop.example", &to)
        .expect("mail")
        .notify(last)
        .await
        .expect("sent");
    let mails = ok.mails();
    assert_eq!(mails.len(), 1);
    assert!(
        mails[0].data.contains("event:      finished"),
        "{}",
        mails[0].data
    );

    // Deferred (4xx) is worth another attempt later; refused (5xx) is not.
    for (code, transient) in [(450, true), (550, false)] {
        let sink = SmtpSink::start_refusing(Some(code)).await.expect("sink");
        let err = EmailNotifier::new(&sink.addr(), "deploykit@shop.example", &to)
            .expect("mail")
            .with_retry(quick)
            .notify(last)
            .await
            .expect_err("refused");
        assert!(sink.mails().is_empty());
        assert_eq!(err.is_retryable(), transient, "{code}: {err}");
    }
    // Nothing listening: an error naming the relay, after the retries.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let err = EmailNotifier::new(&port.to_string(), "deploykit@shop.example", &to)
        .expect("mail")
        .with_retry(quick)
        .notify(last)
        .await
        .expect_err("no relay");
    assert!(err.to_string().contains(&port.to_string()), "{err}");
    for bad in ["nowhere", ":25", "host:99999"] {
        assert!(EmailNotifier::new(bad, "a@b.c", &to).is_err(), "{bad}");
    }
    assert!(EmailNotifier::new("127.0.0.1:25", "not an address", &to).is_err());
    assert!(EmailNotifier::new("127.0.0.1:25", "a@b.c", &[]).is_err());
}
