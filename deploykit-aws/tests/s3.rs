//! deploykit-aws against a real S3-compatible server: moto, started by `bash .ci/test` (or by
//! hand: `moto_server -p 5055`, then `DEPLOYKIT_S3_ENDPOINT=http://127.0.0.1:5055`).
//!
//! A small loopback proxy in front of moto injects faults: 503 SlowDown, refused parts, and a
//! server that dies mid-backup.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deploykit_aws::{RetryPolicy, S3StateStore, S3Target};
use deploykit_backup::{
    BackupKind, BackupRequest, PruneOptions, ReadData, RepoKey, RepoOptions, Repository,
    RestoreOptions,
};
use deploykit_core::backup::BackupTarget;
use deploykit_core::{
    Actor, DeployRequest, Digest, EnvironmentKind, EnvironmentSpec, Error, Orchestrator,
    OrchestratorConfig, Phase, ServiceSpec, StateStore,
};
use deploykit_testing::conformance::{backup_target, state_store};
use deploykit_testing::{Behavior, SimCluster, SimConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn endpoint() -> String {
    std::env::var("DEPLOYKIT_S3_ENDPOINT").expect(
        "DEPLOYKIT_S3_ENDPOINT is not set: run the tests with `bash .ci/test`, which installs \
         and starts moto on loopback (or start `moto_server -p 5055` and set it yourself)",
    )
}

/// A fresh bucket for one test.
async fn bucket(name: &str) -> String {
    let bucket = format!("dk-{name}-{}", std::process::id()).replace('_', "-");
    target_client()
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create bucket");
    bucket
}

/// A state store on moto in `bucket`, under `prefix`.
async fn state_store_on(bucket: &str, prefix: &str) -> S3StateStore {
    S3StateStore::builder(bucket)
        .prefix(prefix)
        .configure(|b| {
            b.endpoint_url(endpoint())
                .force_path_style(true)
                .region("us-east-1")
                .credentials("testing", "testing")
        })
        .build()
        .await
        .expect("state store")
}

fn builder(bucket: &str, url: &str) -> deploykit_aws::S3Builder {
    S3Target::builder(bucket)
        .endpoint_url(url)
        .force_path_style(true)
        .region("us-east-1")
        .credentials("testing", "testing")
        .multipart_threshold(5 << 20)
        .part_size(5 << 20)
}

async fn target(name: &str) -> S3Target {
    let bucket = bucket(name).await;
    builder(&bucket, &endpoint()).build().await.expect("target")
}

/// What the proxy does with one request.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Verdict {
    Forward,
    /// Answer with this status and S3 error code.
    Fail(u16, &'static str),
    /// Close the connection without an answer (a dead server).
    Drop,
    /// Forward without the `If-None-Match` and `If-Match` headers: a store that ignores
    /// conditional writes.
    ForwardUnconditionally,
}

type Rule = Arc<dyn Fn(u64, &str) -> Verdict + Send + Sync>;

/// A loopback HTTP proxy in front of moto that applies `rule` to every request (its number,
/// counted from 0, and its request line). One request per connection (`Connection: close`).
async fn proxy(rule: Rule) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let upstream = endpoint()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let counter = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let (rule, upstream, counter) = (rule.clone(), upstream.clone(), counter.clone());
            tokio::spawn(async move {
                let _ = serve(client, &upstream, &rule, &counter).await;
            });
        }
    });
    format!("http://{addr}")
}

async fn read_message(stream: &mut TcpStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut byte).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&byte[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut byte).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&byte[..n]);
    }
    Ok(Some((head, buf)))
}

async fn serve(
    mut client: TcpStream,
    upstream: &str,
    rule: &Rule,
    counter: &AtomicU64,
) -> std::io::Result<()> {
    let Some((head, request)) = read_message(&mut client).await? else {
        return Ok(());
    };
    let line = head.lines().next().unwrap_or("").to_string();
    match rule(counter.fetch_add(1, Ordering::SeqCst), &line) {
        Verdict::Drop => Ok(()),
        Verdict::Fail(status, code) => {
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected</Message></Error>"
            );
            let response = format!(
                "HTTP/1.1 {status} Injected\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            client.write_all(response.as_bytes()).await
        }
        verdict @ (Verdict::Forward | Verdict::ForwardUnconditionally) => {
            // Ask moto to close after one response, so a response ends at EOF.
            let head_end = request
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("head")
                + 4;
            let mut rewritten = String::new();
            for l in head.lines().filter(|l| !l.is_empty()) {
                let lower = l.to_ascii_lowercase();
                let dropped = lower.starts_with("connection:")
                    || (verdict == Verdict::ForwardUnconditionally
                        && (lower.starts_with("if-none-match:") || lower.starts_with("if-match:")));
                if !dropped {
                    rewritten.push_str(l);
                    rewritten.push_str("\r\n");
                }
            }
            rewritten.push_str("Connection: close\r\n\r\n");
            let mut server = TcpStream::connect(upstream).await?;
            server.write_all(rewritten.as_bytes()).await?;
            server.write_all(&request[head_end..]).await?;
            let mut response = Vec::new();
            server.read_to_end(&mut response).await?;
            client.write_all(&response).await
        }
    }
}

/// A store built on a bucket that ignores `If-None-Match` and `If-Match` (here: a proxy that
/// drops them before moto sees them) would let two orchestrators overwrite each other's journal
/// and both hold a lease: it is refused when built, saying so, and leaves no probe behind.
#[tokio::test]
async fn a_state_store_on_a_bucket_that_ignores_conditional_writes_is_refused() {
    let bucket = bucket("unconditional").await;
    let url = proxy(Arc::new(|_, _| Verdict::ForwardUnconditionally)).await;
    let e = S3StateStore::builder(&bucket)
        .prefix("state/")
        .configure(|b| {
            b.endpoint_url(&url)
                .force_path_style(true)
                .region("us-east-1")
                .credentials("testing", "testing")
        })
        .build()
        .await
        .unwrap_err();
    let text = e.chain();
    assert!(
        text.contains("accepted a write that If-None-Match: * forbids")
            && text.contains("ignores conditional writes"),
        "{text}"
    );
    let left = builder(&bucket, &endpoint()).build().await.unwrap();
    assert!(
        left.list("").await.unwrap().is_empty(),
        "the probe is removed"
    );
    // The same bucket reached directly honours them: the store builds.
    state_store_on(&bucket, "state/").await;
}

/// 409 ConditionalRequestConflict (a concurrent conditional operation on the key) wrote
/// nothing: the write is retried, as AWS documents, instead of counting as lost.
#[tokio::test]
async fn a_conditional_request_conflict_is_retried() {
    let bucket = bucket("conflict").await;
    let refused = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let once = refused.clone();
    let url = proxy(Arc::new(move |_, line: &str| {
        if line.starts_with("PUT") && !once.swap(true, Ordering::SeqCst) {
            Verdict::Fail(409, "ConditionalRequestConflict")
        } else {
            Verdict::Forward
        }
    }))
    .await;
    let target = builder(&bucket, &url)
        .retry(
            RetryPolicy::default()
                .with_backoff(Duration::from_millis(10), Duration::from_millis(50))
                .unwrap(),
        )
        .build()
        .await
        .unwrap();
    target.put_if_absent("k", vec![1]).await.unwrap();
    assert!(refused.load(Ordering::SeqCst), "the conflict was injected");
    assert_eq!(target.get("k").await.unwrap(), vec![1]);
    // A write that really lost is still a loss.
    assert!(matches!(
        target.put_if_absent("k", vec![2]).await,
        Err(Error::AlreadyExists { .. })
    ));
}

#[tokio::test]
async fn s3_target_meets_the_backup_target_contract() {
    let target = target("conformance").await;
    backup_target::run_all(&target).await;
}

#[tokio::test]
async fn s3_state_store_meets_the_state_store_contract() {
    let bucket = bucket("state").await;
    let store = state_store_on(&bucket, "state").await;
    state_store::run_all(&store).await;
}

#[tokio::test]
async fn listing_pages_past_a_thousand_keys_and_prefixes_stay_apart() {
    let bucket = bucket("pages").await;
    let a = builder(&bucket, &endpoint())
        .prefix("a")
        .build()
        .await
        .unwrap();
    let b = builder(&bucket, &endpoint())
        .prefix("b")
        .build()
        .await
        .unwrap();
    for i in 0..1_234 {
        a.put(&format!("k/{i:05}"), vec![1]).await.unwrap();
    }
    b.put("k/00001", vec![2]).await.unwrap();
    let listed = a.list("k/").await.unwrap();
    assert_eq!(listed.len(), 1_234);
    assert_eq!(listed[1_233].key, "k/01233");
    assert_eq!(b.list("").await.unwrap().len(), 1);
    assert_eq!(b.get("k/00001").await.unwrap(), vec![2]);
}

#[tokio::test]
async fn large_objects_go_up_in_parallel_parts_and_conditionally() {
    let target = target("multipart").await;
    let big: Vec<u8> = (0..13 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    target.put_if_absent("big", big.clone()).await.unwrap();
    assert_eq!(target.get("big").await.unwrap(), big);
    assert_eq!(
        target.get_range("big", 6_000_000..6_000_010).await.unwrap(),
        big[6_000_000..6_000_010]
    );
    let again = target.put_if_absent("big", big.clone()).await.unwrap_err();
    assert!(matches!(again, Error::AlreadyExists { .. }), "{again}");
    target.put("big", big[..7_000_000].to_vec()).await.unwrap();
    assert_eq!(target.get("big").await.unwrap().len(), 7_000_000);
}

#[tokio::test]
async fn a_failed_multipart_upload_is_aborted() {
    let bucket = bucket("abort").await;
    // Refuse the second part for good.
    let url = proxy(Arc::new(|_, line: &str| {
        if line.contains("partNumber=2") {
            Verdict::Fail(400, "InvalidPart")
        } else {
            Verdict::Forward
        }
    }))
    .await;
    let target = builder(&bucket, &url).build().await.unwrap();
    let big = vec![7u8; 12 * 1024 * 1024];
    let err = target.put("big", big).await.unwrap_err();
    let text = err.chain();
    assert!(
        text.contains("UploadPart") && text.contains(&bucket) && text.contains("big"),
        "{text}"
    );
    let direct = target_client();
    let uploads = direct
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert!(
        uploads.uploads().is_empty(),
        "orphaned parts: {:?}",
        uploads.uploads()
    );
    assert!(matches!(
        target.get("big").await,
        Err(Error::NotFound { .. })
    ));
}

fn target_client() -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(endpoint())
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .build(),
    )
}

#[tokio::test]
async fn throttling_is_retried_until_it_passes_and_then_named() {
    let bucket = bucket("slowdown").await;
    let url = proxy(Arc::new(|n, _: &str| {
        if n < 3 {
            Verdict::Fail(503, "SlowDown")
        } else {
            Verdict::Forward
        }
    }))
    .await;
    let fast = RetryPolicy::default()
        .with_initial_backoff(Duration::from_millis(20))
        .expect("valid policy");
    let target = builder(&bucket, &url).retry(fast).build().await.unwrap();
    target
        .put("x", b"hello".to_vec())
        .await
        .expect("retried past three 503s");
    assert_eq!(target.get("x").await.unwrap(), b"hello");

    // Always throttled: bounded attempts, then a clear, retryable error naming the call.
    let url = proxy(Arc::new(|_, _: &str| Verdict::Fail(503, "SlowDown"))).await;
    let bounded = RetryPolicy::default()
        .with_max_attempts(4)
        .and_then(|p| p.with_initial_backoff(Duration::from_millis(10)))
        .expect("valid policy");
    let target = builder(&bucket, &url).retry(bounded).build().await.unwrap();
    let err = target.get("x").await.unwrap_err();
    assert!(err.is_retryable() && err.is_persistent(), "{err:?}");
    let text = err.chain();
    assert!(
        text.contains(&format!("S3 GetObject s3://{bucket}/x"))
            && text.contains("503 SlowDown")
            && text.contains("after 4 attempts"),
        "{text}"
    );
    // 403 is not retried and maps to permission denied.
    let url = proxy(Arc::new(|_, _: &str| Verdict::Fail(403, "AccessDenied"))).await;
    let denied = builder(&bucket, &url)
        .build()
        .await
        .unwrap()
        .get("x")
        .await
        .unwrap_err();
    assert!(matches!(denied, Error::PermissionDenied { .. }), "{denied}");
}

fn small_repo_options() -> RepoOptions {
    RepoOptions::builder()
        .chunk_min(16 * 1024)
        .chunk_avg(64 * 1024)
        .chunk_max(256 * 1024)
        .pack_size(1 << 20)
        .kdf_cost((1024, 1))
        .build()
}

fn tree(root: &std::path::Path, seed: u8) {
    for i in 0..12u32 {
        let dir = root.join(format!("d{}", i % 3));
        std::fs::create_dir_all(&dir).unwrap();
        let content: Vec<u8> = (0..150_000u32)
            .map(|j| ((j * 31 + i * 7) as u8) ^ seed)
            .collect();
        std::fs::write(dir.join(format!("f{i}")), content).unwrap();
    }
}

fn same(a: &std::path::Path, b: &std::path::Path) -> bool {
    std::fs::read_dir(a).unwrap().all(|e| {
        let e = e.unwrap();
        let other = b.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            same(&e.path(), &other)
        } else {
            std::fs::read(e.path()).unwrap() == std::fs::read(other).unwrap()
        }
    })
}

#[tokio::test]
async fn the_backup_engine_runs_end_to_end_on_s3() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("app");
    tree(&source, 1);
    let target: Arc<dyn BackupTarget> = Arc::new(target("engine").await);
    let repo = Repository::init(
        target.clone(),
        &RepoKey::passphrase("pw"),
        small_repo_options(),
    )
    .await
    .unwrap();
    let request = |kind| {
        BackupRequest::builder()
            .paths(vec![source.clone()])
            .kind(kind)
            .build()
    };
    let (full, _) = repo.backup(request(BackupKind::Full)).await.unwrap();
    std::fs::write(source.join("d0/f0"), b"changed").unwrap();
    let (incr, s) = repo.backup(request(BackupKind::Incremental)).await.unwrap();
    assert_eq!(s.summary.files_read, 1);
    target.delete(&format!("snapshots/{full}")).await.unwrap();
    repo.prune(PruneOptions::default()).await.unwrap();
    repo.prune(PruneOptions::default()).await.unwrap();
    let report = repo.verify(ReadData::All).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    let reopened = Repository::open(target, &RepoKey::passphrase("pw"))
        .await
        .unwrap();
    let out = dir.path().join("out");
    reopened
        .restore(&incr, &out, &RestoreOptions::default())
        .await
        .unwrap();
    assert!(same(&source, &out.join("app")));
}

#[tokio::test]
async fn a_server_dying_mid_backup_is_a_clear_error_and_the_next_backup_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("app");
    tree(&source, 2);
    let bucket = bucket("dies").await;
    let direct: Arc<dyn BackupTarget> =
        Arc::new(builder(&bucket, &endpoint()).build().await.unwrap());
    let repo = Repository::init(
        direct.clone(),
        &RepoKey::passphrase("pw"),
        small_repo_options(),
    )
    .await
    .unwrap();
    repo.backup(
        BackupRequest::builder()
            .paths(vec![source.clone()])
            .kind(BackupKind::Full)
            .build(),
    )
    .await
    .unwrap();
    tree(&source, 3);
    // The server answers 15 requests, then is gone.
    let url = proxy(Arc::new(|n, _: &str| {
        if n < 15 {
            Verdict::Forward
        } else {
            Verdict::Drop
        }
    }))
    .await;
    let quick = RetryPolicy::default()
        .with_max_attempts(3)
        .and_then(|p| p.with_initial_backoff(Duration::from_millis(20)))
        .and_then(|p| p.with_max_elapsed(Duration::from_secs(5)))
        .expect("valid policy");
    let dying: Arc<dyn BackupTarget> =
        Arc::new(builder(&bucket, &url).retry(quick).build().await.unwrap());
    let doomed = Repository::open(dying, &RepoKey::passphrase("pw"))
        .await
        .unwrap();
    let err = doomed
        .backup(
            BackupRequest::builder()
                .paths(vec![source.clone()])
                .kind(BackupKind::Incremental)
                .build(),
        )
        .await
        .unwrap_err();
    let text = err.chain();
    assert!(
        text.contains(&format!("s3://{bucket}/")) && text.contains("gave up after"),
        "{text}"
    );
    assert_eq!(
        repo.snapshots().await.unwrap().len(),
        1,
        "no partial snapshot"
    );
    let report = repo.verify(ReadData::All).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    let (id, _) = repo
        .backup(
            BackupRequest::builder()
                .paths(vec![source.clone()])
                .kind(BackupKind::Incremental)
                .build(),
        )
        .await
        .unwrap();
    let out = dir.path().join("out");
    repo.restore(&id, &out, &RestoreOptions::default())
        .await
        .unwrap();
    assert!(same(&source, &out.join("app")));
}

/// Two orchestrators on one S3 state store: the second resumes the first's in-flight
/// deployment but never drives it while the first holds the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_orchestrators_on_s3_never_drive_the_same_deployment() {
    let bucket = bucket("race").await;
    let store: Arc<dyn StateStore> = Arc::new(state_store_on(&bucket, "").await);
    let sim = SimCluster::with_config({
        let mut c = SimConfig::default();
        c.start_latency = Duration::from_millis(200);
        c
    });
    let env = EnvironmentSpec::builder()
        .name("production")
        .kind(EnvironmentKind::Production)
        .replicas(2)
        .build()
        .unwrap();
    let config = OrchestratorConfig::builder()
        .poll_interval(Duration::from_millis(100))
        .lease_ttl(Duration::from_secs(2))
        .build();
    let open = |owner: &'static str| {
        let (store, sim, env, config) = (store.clone(), sim.clone(), env.clone(), config.clone());
        async move {
            Orchestrator::builder_shared(store)
                .environment(env, Arc::new(sim))
                .owner(owner)
                .config(config)
                .open()
                .await
                .unwrap()
        }
    };
    let web = ServiceSpec::builder().name("web").build().unwrap();
    let request = |label: &str| {
        DeployRequest::builder()
            .service(web.clone())
            .environment("production")
            .artifact(Digest::of_bytes(label.as_bytes()))
            .label(label)
            .requested_by(Actor::new("alice"))
            .build()
    };
    let a = open("host-a").await;
    let first = a.deploy(request("v1")).await.unwrap();
    assert_eq!(a.wait(&first).await.unwrap().phase, Phase::Succeeded);
    // v2 takes 5 s to start: the rollout outlives two lease periods.
    sim.set_behavior(
        &Digest::of_bytes(b"v2"),
        Behavior::SlowStart(Duration::from_secs(5)),
    );
    let id = a.deploy(request("v2")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = open("host-b").await;
    let mut b_events = b.subscribe();
    let status = tokio::time::timeout(Duration::from_secs(60), a.wait(&id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.phase, Phase::Succeeded);
    assert!(
        b_events.try_recv().is_err(),
        "host-b wrote to the journal while host-a held the lease"
    );
    let journal = store.load(&id).await.unwrap().unwrap();
    let seqs: Vec<u64> = journal.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (0..journal.len() as u64).collect::<Vec<_>>(),
        "one journal, no forks"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
