//! Logs tour: the sample app logs JSON on this machine; a canary of a revision that logs
//! errors is rolled back by a log-based analysis (`log_count{level="error"}[30s] < 1`); all the
//! while a shipper follows the service's logs into a pipeline that redacts a secret and
//! archives the records, compressed and encrypted, to S3 (a local moto in CI); at the end the
//! archive is searched back for the bad revision's errors.
//!
//! ```sh
//! bash .ci/with-moto cargo run -p deploykit-examples --example logs_tour   # archive on moto
//! cargo run -p deploykit-examples --example logs_tour                      # archive in a directory
//! ```
//!
//! Environment: `DEPLOYKIT_S3_ENDPOINT` (the S3 endpoint; without it the archive goes to a
//! local directory, and the example says so), `DEPLOYKIT_S3_BUCKET` (default
//! `deploykit-example`, created if missing), the AWS SDK's usual credentials (moto accepts any;
//! `testing`/`testing` if none are set), and `DEPLOYKIT_SAMPLE_APP` (the sample app binary;
//! by default `deploykit-sample-app` in this example's target directory, built there with
//! `cargo build -p deploykit-cli --bin deploykit-sample-app` if it is missing or older than
//! its source). It exits non-zero if any check printed at the end fails.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use deploykit_aws::S3Target;
use deploykit_backup::{BackupTarget, LocalTarget, RepoKey, RepoOptions, Repository};
use deploykit_config::Config;
use deploykit_core::journal::JournalEvent;
use deploykit_core::{
    Actor, Clock, DeployRequest, DeploymentStatus, Digest, Orchestrator, OrchestratorConfig, Phase,
    ServiceSpec, SystemClock,
};
use deploykit_examples::{Timeline, exit_code};
use deploykit_local::loadgen::{self, LoadConfig, LoadReport};
use deploykit_local::{LocalEnvironment, LocalOptions};
use deploykit_logs::{
    ArchiveForwarder, ArchiveOptions, ArchiveQuery, FilterConfig, Level, LogMonitor, LogSelector,
    LogShipper, LogSource, Pipeline, PipelineConfig, REDACTED, Record, parse_json, search_archive,
};
use deploykit_sqlite::SqliteStore;

type Error = Box<dyn std::error::Error>;

/// The service, its environment and the canary, with `{APP}` for the sample app's command.
/// The analysis step counts v2's error lines over the last 30 s, three times a second apart.
const CONFIG: &str = r#"
application = "logs-tour"

[analyses.log-errors]
metrics = [
  { name = "error-lines", query = 'log_count{level="error"}[30s]', below = 1.0, interval = "1s", count = 3 },
]

[services.web]
command = {APP}
port = 8080
variables = { VERSION = "dev", LOG_FORMAT = "json" }
health.readiness = { http = "/healthz", period = "250ms", timeout = "200ms", failure_threshold = 2 }

[environments.production]
kind = "production"
replicas = 2
progress_deadline = "30s"

[environments.production.strategy.canary]
scale_down_delay = "1s"
steps = [
  { weight = 50 },
  { pause = "2s" },
  { analysis = "log-errors" },
  { weight = 100 },
]
"#;

/// The archive's pipeline: JSON lines parsed (level, time and fields from the app's access
/// log); the secret values it is started with are always redacted.
const PIPELINE: &str = r#"
[[stages]]
type = "parse_json"
"#;

/// Bytes that a plaintext archived record would contain (the archive writes records as JSON
/// lines with these keys and the app's fields).
const PLAINTEXT_MARKERS: [&str; 4] = [
    r#""msg":"request""#,
    r#""service":"web""#,
    r#""level":"error""#,
    "listening on",
];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    exit_code("logs_tour", run().await)
}

fn now_ns() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_nanos()).unwrap_or(i64::MAX)
}

/// The sample app binary: `DEPLOYKIT_SAMPLE_APP`; else `deploykit-sample-app` in this
/// example's target directory if it is newer than the app's source (CI's tests built it);
/// else built there by cargo.
fn sample_app() -> Result<PathBuf, Error> {
    if let Ok(path) = std::env::var("DEPLOYKIT_SAMPLE_APP") {
        return Ok(PathBuf::from(path));
    }
    // target/<profile>/examples/logs_tour → target/<profile>/deploykit-sample-app
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("{}: not in a cargo target directory", exe.display()))?;
    let app = profile_dir.join("deploykit-sample-app");
    let source =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploykit-cli/src/bin/sample_app.rs");
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    if let (Some(built), Some(written)) = (modified(&app), modified(&source))
        && built >= written
    {
        return Ok(app);
    }
    println!("(building the sample app: cargo build -p deploykit-cli --bin deploykit-sample-app)");
    let mut build =
        std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    build
        .args(["build", "--quiet", "-p", "deploykit-cli"])
        .args(["--bin", "deploykit-sample-app"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir
        .file_name()
        .is_some_and(|name| name == "release")
    {
        build.arg("--release");
    }
    let status = build.status()?;
    if !status.success() {
        return Err(format!(
            "cargo build -p deploykit-cli --bin deploykit-sample-app failed ({status}); \
             set DEPLOYKIT_SAMPLE_APP to the sample app binary instead"
        )
        .into());
    }
    if !app.is_file() {
        return Err(format!("the sample app was built but {} is missing", app.display()).into());
    }
    Ok(app)
}

/// A secret value for this run (the app is sent it in a query string and logs it).
fn secret() -> String {
    let mut x = now_ns() as u64 ^ (u64::from(std::process::id()) << 32) | 1;
    let mut token = String::from("tok_");
    for _ in 0..20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        token.push(char::from(
            b"abcdefghijkmnpqrstuvwxyz23456789"[(x % 32) as usize],
        ));
    }
    token
}

/// Where the archive goes: S3 at `DEPLOYKIT_S3_ENDPOINT`, or else a local directory.
async fn archive_target(work: &Path) -> Result<(Arc<dyn BackupTarget>, String), Error> {
    let Ok(endpoint) = std::env::var("DEPLOYKIT_S3_ENDPOINT") else {
        let dir = work.join("archive");
        println!(
            "DEPLOYKIT_S3_ENDPOINT is not set: archiving to the directory {} instead of S3 \
             (run under `bash .ci/with-moto` for S3)",
            dir.display()
        );
        return Ok((Arc::new(LocalTarget::new(&dir)?), dir.display().to_string()));
    };
    let bucket =
        std::env::var("DEPLOYKIT_S3_BUCKET").unwrap_or_else(|_| "deploykit-example".to_string());
    let prefix = format!("logs-tour-{}/", std::process::id());
    let mut builder = S3Target::builder(&bucket)
        .endpoint_url(&endpoint)
        .force_path_style(true)
        .prefix(&prefix);
    if std::env::var("AWS_ACCESS_KEY_ID").is_err() {
        builder = builder.credentials("testing", "testing");
    }
    if std::env::var("AWS_REGION").is_err() {
        builder = builder.region("us-east-1");
    }
    let target = Arc::new(builder.build().await?);
    if let Err(e) = create_bucket(&endpoint, &bucket).await {
        eprintln!("(bucket {bucket} not created: {e}; assuming it exists)");
    }
    Ok((target, format!("s3://{bucket}/{prefix} at {endpoint}")))
}

async fn run() -> Result<bool, Error> {
    let started = Instant::now();
    let run_start_ns = now_ns();
    let app = sample_app()?;
    let work = std::env::temp_dir().join(format!("deploykit-logs-tour-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let outcome = tour(&app, &work, run_start_ns).await;
    let _ = std::fs::remove_dir_all(&work);
    println!("\n(took {:.1} s)", started.elapsed().as_secs_f64());
    outcome
}

async fn tour(app: &Path, work: &Path, run_start_ns: i64) -> Result<bool, Error> {
    let command = format!("[{:?}]", app.to_string_lossy());
    let config = Config::from_toml_str("logs_tour.toml", &CONFIG.replace("{APP}", &command))?;
    let web = config.service("web")?.clone();

    // The environment: real processes behind a proxy; also the log source of their output.
    let env = LocalEnvironment::open(
        LocalOptions::new(work.join("local"))
            .listen("127.0.0.1:0".parse()?)
            .environment("production")
            .workdir(work)
            .default_service(web.name.clone())
            .grace(Duration::from_secs(5))
            .drain_timeout(Duration::from_secs(5)),
    )
    .await?;
    let outcome = tour_on(&env, &config, app, work, run_start_ns).await;
    // The instances are stopped whatever happened.
    env.shutdown(true).await;
    outcome
}

/// The tour on an open environment.
async fn tour_on(
    env: &LocalEnvironment,
    config: &Config,
    app: &Path,
    work: &Path,
    run_start_ns: i64,
) -> Result<bool, Error> {
    let secret = secret();
    let web = config.service("web")?.clone();
    let production = config.environment("production")?.clone();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    // Log queries are answered from the instances' output; health and anything else by the
    // environment itself.
    let monitor =
        LogMonitor::new(Arc::new(env.clone()), clock.clone()).with_fallback(Arc::new(env.clone()));
    let orchestrator = Orchestrator::builder(SqliteStore::open(work.join("deploykit.db")).await?)
        .environment_with_monitor(production, Arc::new(env.clone()), Arc::new(monitor))
        .config(
            OrchestratorConfig::builder()
                .poll_interval(Duration::from_millis(100))
                .build(),
        )
        .clock(clock.clone())
        .open()
        .await?;
    let mut timeline = Timeline::new(clock.now(), orchestrator.subscribe());

    // The archive: a backup repository (encrypted, compressed) on S3 or a directory.
    let (target, target_name) = archive_target(work).await?;
    let repo = Repository::init(
        target.clone(),
        // A random key in a key file (a passphrase would be stretched with Argon2id first).
        &RepoKey::generate_file(&work.join("archive.key"))?,
        RepoOptions::default(),
    )
    .await?;
    let archive = Arc::new(ArchiveForwarder::new(
        repo.clone(),
        ArchiveOptions {
            max_object_bytes: 64 * 1024,
            max_age: Duration::from_secs(5),
        },
    ));
    let pipeline = Pipeline::start(
        &PipelineConfig::from_toml_str(PIPELINE)?,
        [secret.as_str()],
        archive.clone(),
    )?;
    let shipper = LogShipper::start(
        Arc::new(env.clone()),
        vec![LogSelector::service("web")],
        pipeline.input(),
    );
    println!(
        "deploykit logs tour: the sample app (LOG_FORMAT=json) behind the proxy on http://{}/\n\
         canary 50% -> pause 2s -> analysis log_count{{level=\"error\"}}[30s] < 1 (3 x 1s) -> 100%\n\
         logs shipped into a pipeline (parse_json, secret redaction) archived to {target_name}\n",
        env.proxy_addr()
    );

    let deploy = |label: &str, error_rate: &str| {
        let mut spec: ServiceSpec = web.clone();
        spec.variables.insert("VERSION".into(), label.into());
        spec.variables
            .insert("ERROR_RATE".into(), error_rate.into());
        DeployRequest::builder()
            .service(spec)
            .environment("production")
            .artifact(Digest::of_bytes(app.to_string_lossy().as_bytes()))
            .label(label)
            .requested_by(Actor::new("logs-tour"))
            .build()
    };
    let v1 = orchestrator.deploy(deploy("v1", "0")).await?;
    let v1 = orchestrator.wait(&v1).await?;
    timeline.print();
    println!();

    // Traffic through the proxy during the canary, in rounds of 25 requests (100 a second)
    // until the deployment is over; every 10th request carries the secret in its query string,
    // which the app's access log writes out.
    let mut load = LoadConfig::new(env.proxy_addr(), 25);
    load.rate_per_sec = Some(100);
    load.concurrency = 4;
    load.slow_path = format!("/slow?ms=5&token={secret}");
    let load_stop = Arc::new(AtomicBool::new(false));
    let load_task = tokio::spawn(traffic(load, load_stop.clone()));
    let v2 = orchestrator.deploy(deploy("v2", "0.3")).await?;
    let v2 = orchestrator.wait(&v2).await;
    load_stop.store(true, Ordering::Relaxed);
    let load = load_task.await?;
    let v2 = v2?;
    timeline.print();
    let served: Vec<String> = load
        .by_version
        .iter()
        .map(|(version, n)| format!("{version} {n}"))
        .collect();
    println!(
        "\nload: {} requests through the proxy, answered by {}; {} not 2xx",
        load.requests,
        served.join(", "),
        load.failures
    );
    let v2_revision = v2.spec.target.id.to_string();
    print_verdict(&orchestrator, &v2).await?;

    // Let the shipper catch up with everything the instances wrote, then stop it and close the
    // pipeline (which flushes the archive).
    let in_source = caught_up(env, &shipper).await?;
    let shipped = shipper.stop().await?;
    let stats = pipeline.close().await?;
    let end_ns = now_ns();
    println!(
        "\nshipper: {shipped} records shipped ({in_source} in the source); pipeline: {} in, {} out, \
         {} secret values redacted; archive: {} objects written",
        stats.records_in,
        stats.records_out,
        stats.redactions,
        archive.objects_written()
    );

    // What v2 wrote, read from the environment, against what the archive gives back.
    let mut v2_records = LogSource::logs(
        env,
        &LogSelector::service("web").revision(v2_revision.as_str()),
    )
    .await?
    .collect()
    .await?;
    let v2_errors_in_source = v2_records
        .iter_mut()
        .map(is_error)
        .filter(|&error| error)
        .count();
    let query = ArchiveQuery::new("production", "web")
        .since_ns(run_start_ns)
        .until_ns(end_ns)
        .filter(FilterConfig {
            level: Some(Level::Error),
            ..FilterConfig::default()
        })
        .filter(FilterConfig {
            field: Some("version".into()),
            equals: Some("v2".into()),
            ..FilterConfig::default()
        });
    let search = search_archive(&repo, &query).await?;
    let objects_read = search.objects();
    let v2_errors = search.collect().await?;
    println!(
        "\nsearch_archive(production/web, level=error, version=v2, this run's window): \
         {} records from {objects_read} objects (v2 wrote {v2_errors_in_source} error lines)",
        v2_errors.len()
    );
    for record in v2_errors.iter().take(3) {
        println!(
            "  {} {}",
            record.source.instance,
            shorten(&record.line, 150)
        );
    }

    // Every archived record: none holds the secret; the ones that carried it say [REDACTED].
    let everything = search_archive(
        &repo,
        &ArchiveQuery::new("production", "web").since_ns(run_start_ns),
    )
    .await?
    .collect()
    .await?;
    let mut with_secret = 0;
    let mut redacted = Vec::new();
    for record in &everything {
        let mut json = Vec::new();
        record.write_json(&mut json);
        if String::from_utf8_lossy(&json).contains(secret.as_str()) {
            with_secret += 1;
        }
        if record.line.contains(REDACTED) {
            redacted.push(record);
        }
    }
    println!(
        "archived records: {}; with the secret: {with_secret}; with it redacted: {}",
        everything.len(),
        redacted.len()
    );
    if let Some(record) = redacted.first() {
        println!("  {}", shorten(&record.line, 150));
    }

    // The stored objects, read raw through the target: no plaintext.
    let objects = target.list("").await?;
    let mut stored_bytes = 0;
    let mut plaintext = Vec::new();
    for object in &objects {
        let bytes = target.get(&object.key).await?;
        stored_bytes += bytes.len();
        for marker in PLAINTEXT_MARKERS.iter().copied().chain([secret.as_str()]) {
            if contains(&bytes, marker.as_bytes()) {
                plaintext.push(format!("{} contains {marker}", object.key));
            }
        }
    }
    println!(
        "raw objects in the target: {} ({:.1} KiB); objects with plaintext log content: {}",
        objects.len(),
        stored_bytes as f64 / 1024.0,
        plaintext.len()
    );
    for finding in plaintext.iter().take(5) {
        println!("  {finding}");
    }

    orchestrator.shutdown().await?;

    let checks = [
        ("v1 deployed", v1.phase == Phase::Succeeded),
        (
            "v2's canary was rolled back by the log analysis",
            v2.phase == Phase::RolledBack,
        ),
        (
            "the archive holds every error line v2 wrote",
            v2_errors_in_source > 0 && v2_errors.len() == v2_errors_in_source,
        ),
        (
            "every record shipped reached the archive",
            shipped >= in_source && stats.records_out == stats.records_in,
        ),
        (
            "the secret is in no archived record, and was redacted where the app logged it",
            with_secret == 0 && !redacted.is_empty() && stats.redactions > 0,
        ),
        (
            "the stored objects hold no plaintext line",
            !objects.is_empty() && plaintext.is_empty(),
        ),
    ];
    println!("\nwhat this run shows:");
    for (what, holds) in &checks {
        println!("  [{}] {what}", if *holds { "ok" } else { "FAILED" });
    }
    Ok(checks.iter().all(|(_, holds)| *holds))
}

/// Sends `round` again and again until `stop` is set; what was sent and answered.
async fn traffic(round: LoadConfig, stop: Arc<AtomicBool>) -> LoadReport {
    let mut total = LoadReport::default();
    while !stop.load(Ordering::Relaxed) {
        let report = loadgen::run(round.clone(), None).await;
        total.requests += report.requests;
        total.failures += report.failures;
        for (version, n) in report.by_version {
            *total.by_version.entry(version).or_default() += n;
        }
    }
    total
}

/// Prints v2's outcome, its rollback reason and the analysis's measured values.
async fn print_verdict(
    orchestrator: &Orchestrator,
    status: &DeploymentStatus,
) -> Result<(), Error> {
    println!(
        "v2: {}{}",
        status.phase,
        status
            .rollback
            .as_ref()
            .map(|(_, reason)| format!(" ({reason})"))
            .unwrap_or_default()
    );
    for entry in orchestrator.journal(&status.spec.id).await? {
        if let JournalEvent::Measured { measurement: m } = &entry.event {
            println!(
                "  measured {} = {}: {} ({})",
                m.metric,
                m.value.map_or("no value".to_string(), |v| v.to_string()),
                m.outcome,
                m.detail
            );
        }
    }
    Ok(())
}

/// Waits (up to 10 s) until the shipper has shipped as many records as the source holds for
/// the service; returns that count.
async fn caught_up(env: &LocalEnvironment, shipper: &LogShipper) -> Result<u64, Error> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let records = LogSource::logs(env, &LogSelector::service("web"))
            .await?
            .collect()
            .await?;
        let in_source = records.len() as u64;
        if shipper.shipped() >= in_source || Instant::now() >= deadline {
            return Ok(in_source);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether the record is a JSON line at level error.
fn is_error(record: &mut Record) -> bool {
    parse_json(record) && record.level == Some(Level::Error)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

fn shorten(line: &str, max: usize) -> String {
    match line.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line.to_string(),
    }
}

/// Create the bucket if it does not exist (moto starts empty).
async fn create_bucket(endpoint: &str, bucket: &str) -> Result<(), Error> {
    let mut loader =
        aws_config::defaults(aws_config::BehaviorVersion::latest()).endpoint_url(endpoint);
    if std::env::var("AWS_ACCESS_KEY_ID").is_err() {
        loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
            "testing", "testing", None, None, "example",
        ));
    }
    if std::env::var("AWS_REGION").is_err() {
        loader = loader.region(aws_config::Region::new("us-east-1"));
    }
    let config = aws_sdk_s3::config::Builder::from(&loader.load().await)
        .force_path_style(true)
        .build();
    let client = aws_sdk_s3::Client::from_conf(config);
    match client.create_bucket().bucket(bucket).send().await {
        Ok(_) => Ok(()),
        Err(e)
            if e.as_service_error().is_some_and(|s| {
                s.is_bucket_already_owned_by_you() || s.is_bucket_already_exists()
            }) =>
        {
            Ok(())
        }
        Err(e) => Err(Box::new(e)),
    }
}
