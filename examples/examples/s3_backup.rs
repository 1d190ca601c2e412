//! Back a generated directory up to S3 (or anything S3-compatible) and restore it.
//!
//! ```sh
//! bash .ci/with-moto cargo run -p deploykit-examples --example s3_backup   # a local moto
//! DEPLOYKIT_S3_ENDPOINT=https://s3.eu-central-1.amazonaws.com DEPLOYKIT_S3_BUCKET=my-bucket \
//!   cargo run -p deploykit-examples --example s3_backup                   # real S3
//! ```
//!
//! Environment: `DEPLOYKIT_S3_ENDPOINT` (default `http://127.0.0.1:5055`, a local moto),
//! `DEPLOYKIT_S3_BUCKET` (default `deploykit-example`, created if missing), `DEPLOYKIT_S3_PREFIX`
//! (default `example/`), `DEPLOYKIT_EXAMPLE_MB` (size of the generated tree, default 32), and
//! the AWS SDK's usual credentials (moto accepts any; `testing`/`testing` if none are set).
//! It exits non-zero if the restored tree differs from the source.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use deploykit_aws::S3Target;
use deploykit_backup::{
    BackupKind, BackupRequest, ReadData, RepoKey, RepoOptions, Repository, RestoreOptions,
};
use deploykit_examples::exit_code;

type Error = Box<dyn std::error::Error>;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    exit_code("s3_backup", run().await)
}

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn generate(root: &Path, mib: usize) -> std::io::Result<()> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for i in 0..mib {
        let dir = root.join(format!("part-{}", i % 8));
        std::fs::create_dir_all(&dir)?;
        let data: Vec<u8> = if i % 2 == 0 {
            (0..1 << 20)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        } else {
            format!("line {i} of a compressible log\n")
                .repeat((1 << 20) / 32)
                .into_bytes()
        };
        std::fs::write(dir.join(format!("file-{i}.bin")), data)?;
    }
    Ok(())
}

fn same(a: &Path, b: &Path) -> std::io::Result<bool> {
    for e in std::fs::read_dir(a)? {
        let e = e?;
        let other = b.join(e.file_name());
        let equal = if e.file_type()?.is_dir() {
            same(&e.path(), &other)?
        } else {
            std::fs::read(e.path())? == std::fs::read(&other)?
        };
        if !equal {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn run() -> Result<bool, Error> {
    let endpoint = var("DEPLOYKIT_S3_ENDPOINT", "http://127.0.0.1:5055");
    let bucket = var("DEPLOYKIT_S3_BUCKET", "deploykit-example");
    let prefix = var(
        "DEPLOYKIT_S3_PREFIX",
        &format!("example-{}/", std::process::id()),
    );
    let mib: usize = var("DEPLOYKIT_EXAMPLE_MB", "32").parse()?;
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

    let work = std::env::temp_dir().join(format!("deploykit-s3-example-{}", std::process::id()));
    let source = work.join("data");
    generate(&source, mib)?;
    println!(
        "backing up {mib} MiB from {} to s3://{bucket}/{prefix} at {endpoint}",
        source.display()
    );
    let repo = Repository::init(
        target,
        &RepoKey::passphrase("example passphrase"),
        RepoOptions::default(),
    )
    .await?;
    let started = Instant::now();
    let (id, snapshot) = repo
        .backup(
            BackupRequest::builder()
                .paths(vec![source.clone()])
                .kind(BackupKind::Full)
                .build(),
        )
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "full backup   {}: {} files, {:.1} MiB stored in {seconds:.2} s ({:.0} MiB/s)",
        &id[..12],
        snapshot.summary.files,
        snapshot.summary.bytes_stored as f64 / 1048576.0,
        mib as f64 / seconds
    );
    let report = repo.verify(ReadData::All).await?;
    println!(
        "verify        {} packs read back: {}",
        report.packs_read,
        if report.is_ok() { "ok" } else { "PROBLEMS" }
    );
    let started = Instant::now();
    let out = work.join("restored");
    repo.restore(&id, &out, &RestoreOptions::default()).await?;
    let seconds = started.elapsed().as_secs_f64();
    let identical = same(&source, &out.join("data"))?;
    println!(
        "restore       {seconds:.2} s ({:.0} MiB/s); identical to the source: {identical}",
        mib as f64 / seconds
    );
    std::fs::remove_dir_all(&work)?;
    Ok(identical && report.is_ok())
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
