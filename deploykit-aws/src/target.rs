//! [`S3Target`]: a [`BackupTarget`] on an S3 bucket (AWS, MinIO, R2, Ceph, moto).

use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::types::StorageClass;
use bytes::Bytes;
use deploykit_core::backup::{BackupTarget, ObjectMeta, check_key};
use deploykit_core::retry::RetryPolicy;
use deploykit_core::{Error, Result};

use crate::client::{Condition, S3, Sse, classify, default_policy};
use crate::lock::{ObjectLock, Retention};

/// A [`BackupTarget`] on an S3 bucket, under an optional key prefix.
///
/// Objects above the multipart threshold (default 16 MiB) go up as multipart uploads, parts
/// in parallel (default 4 at a time, 8 MiB each); a failed upload is aborted so no parts are
/// left behind. `put_if_absent` is a conditional write (`If-None-Match: *`, on the final
/// `CompleteMultipartUpload` for multipart objects), which AWS S3 supports since 2024, as do
/// MinIO, R2 and moto ≥ 5.0.22. On a store without conditional writes, the backup engine is
/// still safe: its pack, index and snapshot objects are content-addressed, so two writers of
/// one key write the same bytes.
///
/// With [`S3Builder::object_lock`], every object is written with S3 Object Lock retention
/// (GOVERNANCE or COMPLIANCE, until N days after the write), so credentials that leak cannot
/// delete the backups early; a delete then fails with `PermissionDenied` naming the key, mode
/// and date (see [`ObjectLock`]).
///
/// ```no_run
/// # async fn f() -> deploykit_core::Result<()> {
/// use deploykit_aws::S3Target;
/// let target = S3Target::builder("my-backups")
///     .prefix("shop/production/")
///     .region("eu-central-1")
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct S3Target {
    pub(crate) s3: S3,
}

/// Builds an [`S3Target`] or an [`crate::S3StateStore`], in the style of aws-sdk-rust.
#[derive(Clone, Debug)]
#[must_use]
pub struct S3Builder {
    bucket: String,
    prefix: String,
    region: Option<String>,
    endpoint_url: Option<String>,
    force_path_style: bool,
    credentials: Option<(String, String)>,
    storage_class: Option<String>,
    sse: Option<Sse>,
    retry: RetryPolicy,
    multipart_threshold: usize,
    part_size: usize,
    concurrency: usize,
    timeout: Duration,
    object_lock: Option<ObjectLock>,
}

impl S3Builder {
    fn new(bucket: impl Into<String>) -> Self {
        S3Builder {
            bucket: bucket.into(),
            prefix: String::new(),
            region: None,
            endpoint_url: None,
            force_path_style: false,
            credentials: None,
            storage_class: None,
            sse: None,
            retry: default_policy(),
            multipart_threshold: 16 << 20,
            part_size: 8 << 20,
            concurrency: 4,
            timeout: Duration::from_secs(120),
            object_lock: None,
        }
    }

    /// Keep every object under this key prefix (e.g. `shop/production/`; a `/` is added if
    /// missing).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        let mut prefix = prefix.into();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        self.prefix = prefix;
        self
    }

    /// The region (default: from the environment and AWS config files, as the AWS CLI does).
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// An S3-compatible endpoint instead of AWS (MinIO, R2, Ceph, moto); also read from
    /// `AWS_ENDPOINT_URL`.
    pub fn endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.endpoint_url = Some(url.into());
        self
    }

    /// Address buckets as `endpoint/bucket/key` rather than `bucket.endpoint/key` (most
    /// S3-compatible stores want this).
    pub fn force_path_style(mut self, on: bool) -> Self {
        self.force_path_style = on;
        self
    }

    /// Static credentials instead of the usual chain (environment, profile, instance role).
    pub fn credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret: impl Into<String>,
    ) -> Self {
        self.credentials = Some((access_key_id.into(), secret.into()));
        self
    }

    /// Storage class of new objects (`STANDARD_IA`, `INTELLIGENT_TIERING`, …).
    pub fn storage_class(mut self, class: impl Into<String>) -> Self {
        self.storage_class = Some(class.into());
        self
    }

    /// Server-side encryption of new objects.
    pub fn server_side_encryption(mut self, sse: Sse) -> Self {
        self.sse = Some(sse);
        self
    }

    /// How failed calls are retried (default: at most 8 attempts in 60 s, 100 ms doubling up
    /// to 10 s, jittered). Calls that use up their retries fail with
    /// [`Error::Persistent`](deploykit_core::Error::Persistent).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Objects larger than this go up in parts (default 16 MiB; at least 5 MiB).
    pub fn multipart_threshold(mut self, bytes: usize) -> Self {
        self.multipart_threshold = bytes;
        self
    }

    /// Size of each part (default 8 MiB; S3's minimum is 5 MiB).
    pub fn part_size(mut self, bytes: usize) -> Self {
        self.part_size = bytes;
        self
    }

    /// Parts uploaded at once (default 4).
    pub fn concurrency(mut self, parts: usize) -> Self {
        self.concurrency = parts;
        self
    }

    /// Longest a single call may take before it is retried (default 120 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Write every object with S3 Object Lock retention (an [`S3Target`] only; the state
    /// store ignores it). The bucket must have Object Lock enabled: [`S3Builder::build`]
    /// checks, and fails naming the bucket if not. See [`ObjectLock`] for what deletes do.
    pub fn object_lock(mut self, lock: ObjectLock) -> Self {
        self.object_lock = Some(lock);
        self
    }

    pub(crate) async fn connect(self) -> Result<S3> {
        if self.bucket.is_empty() {
            return Err(Error::invalid("s3.bucket", "must not be empty"));
        }
        if self.part_size < 5 << 20 || self.multipart_threshold < self.part_size {
            return Err(Error::invalid(
                "s3.part_size",
                "parts are at least 5 MiB (S3's minimum) and the multipart threshold at least one part",
            ));
        }
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &self.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(url) = &self.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some((id, secret)) = &self.credentials {
            loader =
                loader.credentials_provider(Credentials::new(id, secret, None, None, "deploykit"));
        }
        let shared = loader.load().await;
        let mut config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(self.force_path_style)
            // deploykit retries with its own policy (one place, bounded in time).
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(self.timeout)
                    .connect_timeout(Duration::from_secs(10))
                    .build(),
            );
        if shared.region().is_none() {
            config = config.region(Region::new("us-east-1"));
        }
        Ok(S3 {
            client: aws_sdk_s3::Client::from_conf(config.build()),
            bucket: self.bucket,
            prefix: self.prefix,
            storage_class: self.storage_class.as_deref().map(StorageClass::from),
            sse: self.sse,
            retry: self.retry,
            multipart_threshold: self.multipart_threshold,
            part_size: self.part_size,
            concurrency: self.concurrency,
            lock: None,
        })
    }

    /// An [`S3Target`]. With [`S3Builder::object_lock`], fails with
    /// [`Error::InvalidSpec`] on `s3.object_lock` if the bucket does not have Object Lock
    /// enabled.
    pub async fn build(mut self) -> Result<S3Target> {
        let lock = self.object_lock.take();
        let mut s3 = self.connect().await?;
        if let Some(lock) = lock {
            lock.validate()?;
            check_lock_enabled(&s3).await?;
            s3.lock = Some(lock);
        }
        Ok(S3Target { s3 })
    }
}

/// Fail unless `s3`'s bucket has Object Lock enabled.
async fn check_lock_enabled(s3: &S3) -> Result<()> {
    use aws_sdk_s3::error::ProvideErrorMetadata;
    let out = s3
        .retrying("GetObjectLockConfiguration", "", || {
            let req = s3.client.get_object_lock_configuration().bucket(&s3.bucket);
            async move {
                match req.send().await {
                    Ok(out) => Ok(Some(out)),
                    Err(e)
                        if e.as_service_error().and_then(ProvideErrorMetadata::code)
                            == Some("ObjectLockConfigurationNotFoundError") =>
                    {
                        Ok(None)
                    }
                    Err(e) => Err(classify(e)),
                }
            }
        })
        .await?;
    let enabled = out
        .as_ref()
        .and_then(|o| o.object_lock_configuration())
        .and_then(|c| c.object_lock_enabled())
        .is_some_and(|e| e.as_str() == "Enabled");
    if !enabled {
        return Err(Error::invalid(
            "s3.object_lock",
            format!(
                "bucket {} does not have Object Lock enabled; create it with Object Lock (`aws s3api create-bucket --object-lock-enabled-for-bucket`) or write without retention",
                s3.bucket
            ),
        ));
    }
    Ok(())
}

impl S3Target {
    /// Start building a target on `bucket`.
    pub fn builder(bucket: impl Into<String>) -> S3Builder {
        S3Builder::new(bucket)
    }

    /// A target from the environment: `DEPLOYKIT_S3_BUCKET` (required),
    /// `DEPLOYKIT_S3_PREFIX`, `DEPLOYKIT_S3_PATH_STYLE=1`, plus the AWS SDK's usual variables
    /// (`AWS_REGION`, `AWS_ENDPOINT_URL`, credentials).
    pub async fn from_env() -> Result<Self> {
        let bucket = std::env::var("DEPLOYKIT_S3_BUCKET").map_err(|_| {
            Error::invalid(
                "DEPLOYKIT_S3_BUCKET",
                "set it to the bucket to back up into",
            )
        })?;
        let mut builder = S3Target::builder(bucket);
        if let Ok(prefix) = std::env::var("DEPLOYKIT_S3_PREFIX") {
            builder = builder.prefix(prefix);
        }
        if std::env::var("DEPLOYKIT_S3_PATH_STYLE").is_ok_and(|v| v == "1" || v == "true") {
            builder = builder.force_path_style(true);
        }
        builder.build().await
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.s3.bucket
    }

    /// The Object Lock retention new objects get, if configured.
    pub fn object_lock(&self) -> Option<&ObjectLock> {
        self.s3.lock.as_ref()
    }

    /// The Object Lock retention of the object under `key` (its current version), read back
    /// from S3; `None` if it has none. Fails with `NotFound` if there is no such object.
    pub async fn retention(&self, key: &str) -> Result<Option<Retention>> {
        check_key(key)?;
        self.s3.retention(key, None).await
    }
}

#[async_trait]
impl BackupTarget for S3Target {
    async fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
        check_key(key)?;
        self.s3.put(key, Bytes::from(data), Condition::None).await
    }

    async fn put_if_absent(&self, key: &str, data: Vec<u8>) -> Result<()> {
        check_key(key)?;
        self.s3.put(key, Bytes::from(data), Condition::Absent).await
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>> {
        check_key(key)?;
        Ok(self.s3.get(key, None).await?.0)
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        check_key(key)?;
        if range.start >= range.end {
            // Still report a missing object as missing.
            self.s3.get(key, Some((0, 1))).await?;
            return Ok(Vec::new());
        }
        Ok(self.s3.get(key, Some((range.start, range.end))).await?.0)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        Ok(self
            .s3
            .list(prefix)
            .await?
            .into_iter()
            .map(|(key, size)| ObjectMeta::new(key, size))
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        self.s3.delete(key).await
    }
}
