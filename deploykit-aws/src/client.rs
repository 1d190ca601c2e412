//! The S3 calls deploykit makes, with one retry policy and one error mapping.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, ServerSideEncryption, StorageClass};
use bytes::Bytes;
use deploykit_core::Error;
use deploykit_core::retry::{Retry, RetryPolicy};

use crate::lock::{ObjectLock, Retention, format_time};

/// How S3 calls are retried unless the builder is given another policy: at most 8 attempts in
/// 60 s, 100 ms doubling up to 10 s, with full jitter. Throttling (503 SlowDown, 429), other
/// 5xx, timeouts and dropped connections are retried ([`Failure::retry`]); nothing else.
pub(crate) fn default_policy() -> RetryPolicy {
    RetryPolicy::default()
        .with_backoff(Duration::from_millis(100), Duration::from_secs(10))
        .and_then(|p| p.with_max_attempts(8))
        .and_then(|p| p.with_max_elapsed(Duration::from_secs(60)))
        .expect("a valid policy")
}

/// Server-side encryption of stored objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sse {
    /// SSE-S3 (AES256, keys managed by S3).
    S3,
    /// SSE-KMS with this key id or ARN.
    Kms(String),
}

/// What went wrong with one call, classified.
#[derive(Debug)]
pub(crate) enum Failure {
    /// 404 / NoSuchKey.
    NotFound,
    /// 412 PreconditionFailed: a conditional write lost.
    Precondition,
    /// 403.
    Denied(String),
    /// 416: a range past the object's end.
    InvalidRange,
    /// Worth retrying.
    Transient(String),
    /// Not worth retrying.
    Other(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NotFound => f.write_str("not found"),
            Failure::Precondition => f.write_str("precondition failed"),
            Failure::InvalidRange => f.write_str("range not satisfiable"),
            Failure::Denied(m) | Failure::Transient(m) | Failure::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Failure {}

impl Failure {
    /// Whether another attempt may help: only for [`Failure::Transient`].
    pub(crate) fn retry(&self) -> Retry {
        match self {
            Failure::Transient(_) => Retry::Yes,
            _ => Retry::No,
        }
    }
}

pub(crate) fn classify<E>(err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code().unwrap_or("");
            let message = format!(
                "{status} {code}{}",
                se.err()
                    .message()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            );
            match (status, code) {
                (404, _) | (_, "NoSuchKey") | (_, "NotFound") => Failure::NotFound,
                (412, _) => Failure::Precondition,
                // Another conditional operation on the key was in flight; S3 wrote nothing and
                // documents that the request may be retried (it then succeeds, or fails 412).
                (409, "ConditionalRequestConflict") => Failure::Transient(message),
                (403, _) => Failure::Denied(message),
                (416, _) | (_, "InvalidRange") => Failure::InvalidRange,
                (429, _) | (500..=599, _) => Failure::Transient(message),
                (_, "SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable") => {
                    Failure::Transient(message)
                }
                _ => Failure::Other(message),
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            let mut text = err.to_string();
            let mut source = std::error::Error::source(&err);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            Failure::Transient(text)
        }
        _ => Failure::Other(format!("{err}: {:?}", std::error::Error::source(&err))),
    }
}

/// The bucket, key prefix and settings every call shares.
#[derive(Clone)]
pub(crate) struct S3 {
    pub(crate) client: Client,
    pub(crate) bucket: String,
    pub(crate) prefix: String,
    pub(crate) storage_class: Option<StorageClass>,
    pub(crate) sse: Option<Sse>,
    pub(crate) retry: RetryPolicy,
    pub(crate) multipart_threshold: usize,
    pub(crate) part_size: usize,
    pub(crate) concurrency: usize,
    /// Object Lock retention on written objects (targets only; never the state store).
    pub(crate) lock: Option<ObjectLock>,
}

impl fmt::Debug for S3 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// What a conditional write requires.
#[derive(Clone, Debug)]
pub(crate) enum Condition {
    None,
    Absent,
    Matches(String),
}

impl S3 {
    pub(crate) fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub(crate) fn describe(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.full_key(key))
    }

    /// Run `call` under the retry policy; map the final failure to deploykit's error (used-up
    /// retries to [`Error::Persistent`]; a lost conditional write to
    /// [`Error::AlreadyExists`]).
    pub(crate) async fn retrying<T, F, Fut>(&self, op: &str, key: &str, call: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let what = format!("S3 {op} {}", self.describe(key));
        self.retry
            .run(&what, Failure::retry, call)
            .await
            .map_err(|e| {
                e.into_error(what.clone(), |failure| match failure {
                    Failure::NotFound => Error::not_found(self.describe(key)),
                    Failure::Precondition => Error::AlreadyExists {
                        what: self.describe(key),
                    },
                    Failure::Denied(m) => Error::PermissionDenied {
                        principal: "the configured AWS identity".into(),
                        permission: format!("{op} on {} ({m})", self.describe(key)),
                    },
                    Failure::Transient(m) => Error::transient(what, m),
                    Failure::Other(m) => Error::backend(what, m),
                    Failure::InvalidRange => Error::backend(what, "range not satisfiable"),
                })
            })
    }

    /// GET the object (or a range of it) with its ETag.
    pub(crate) async fn get(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> Result<(Vec<u8>, Option<String>), Error> {
        let full = self.full_key(key);
        self.retrying("GetObject", key, || async {
            let mut req = self.client.get_object().bucket(&self.bucket).key(&full);
            if let Some((start, end)) = range {
                req = req.range(format!("bytes={start}-{}", end - 1));
            }
            let out = match req.send().await.map_err(classify) {
                // A range past the end is an empty read for deploykit.
                Err(Failure::InvalidRange) => return Ok((Vec::new(), None)),
                other => other?,
            };
            let etag = out.e_tag().map(str::to_string);
            let body = out
                .body
                .collect()
                .await
                .map_err(|e| Failure::Transient(format!("reading the body: {e}")))?;
            Ok((body.into_bytes().to_vec(), etag))
        })
        .await
    }

    /// PUT `data` under `key` if `condition` holds. A write whose response was lost and that
    /// then sees its own object in place counts as done.
    pub(crate) async fn put(
        &self,
        key: &str,
        data: Bytes,
        condition: Condition,
    ) -> Result<(), Error> {
        if data.len() > self.multipart_threshold {
            return self.put_multipart(key, data, condition).await;
        }
        let full = self.full_key(key);
        let mut attempts = 0;
        let result = self
            .retrying("PutObject", key, || {
                attempts += 1;
                let mut req = self
                    .client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(&full)
                    .body(ByteStream::from(data.clone()))
                    .set_storage_class(self.storage_class.clone());
                req = match &self.sse {
                    Some(Sse::S3) => req.server_side_encryption(ServerSideEncryption::Aes256),
                    Some(Sse::Kms(id)) => req
                        .server_side_encryption(ServerSideEncryption::AwsKms)
                        .ssekms_key_id(id),
                    None => req,
                };
                if let Some(lock) = self.lock_for(key) {
                    // S3 wants an integrity checksum on every write with a retention.
                    req = req
                        .object_lock_mode(lock.mode().sdk())
                        .object_lock_retain_until_date(
                            lock.retain_until(std::time::SystemTime::now()),
                        )
                        .checksum_algorithm(ChecksumAlgorithm::Crc32);
                }
                req = match &condition {
                    Condition::None => req,
                    Condition::Absent => req.if_none_match("*"),
                    Condition::Matches(etag) => req.if_match(etag),
                };
                async move { req.send().await.map(|_| ()).map_err(classify) }
            })
            .await;
        self.settle(key, &data, attempts > 1, result).await
    }

    /// The retention that applies to a write of `key`, if any.
    fn lock_for(&self, key: &str) -> Option<&ObjectLock> {
        self.lock.as_ref().filter(|l| l.applies_to(key))
    }

    /// After a conditional write lost on a retry, see whether the object there is ours (the
    /// response to an earlier attempt that took effect was lost).
    async fn settle(
        &self,
        key: &str,
        data: &[u8],
        retried: bool,
        result: Result<(), Error>,
    ) -> Result<(), Error> {
        match result {
            Err(e @ Error::AlreadyExists { .. }) if retried => match self.get(key, None).await {
                Ok((existing, _)) if existing == data => Ok(()),
                _ => Err(e),
            },
            other => other,
        }
    }

    async fn put_multipart(
        &self,
        key: &str,
        data: Bytes,
        condition: Condition,
    ) -> Result<(), Error> {
        let full = self.full_key(key);
        let upload_id = self
            .retrying("CreateMultipartUpload", key, || {
                let mut req = self
                    .client
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&full)
                    .set_storage_class(self.storage_class.clone());
                req = match &self.sse {
                    Some(Sse::S3) => req.server_side_encryption(ServerSideEncryption::Aes256),
                    Some(Sse::Kms(id)) => req
                        .server_side_encryption(ServerSideEncryption::AwsKms)
                        .ssekms_key_id(id),
                    None => req,
                };
                if let Some(lock) = self.lock_for(key) {
                    req = req
                        .object_lock_mode(lock.mode().sdk())
                        .object_lock_retain_until_date(
                            lock.retain_until(std::time::SystemTime::now()),
                        )
                        .checksum_algorithm(ChecksumAlgorithm::Crc32);
                }
                async move {
                    let out = req.send().await.map_err(classify)?;
                    out.upload_id()
                        .map(str::to_string)
                        .ok_or_else(|| Failure::Other("no upload id in the response".into()))
                }
            })
            .await?;
        let result = self
            .upload_parts_and_complete(key, &full, &upload_id, &data, &condition)
            .await;
        if result.is_err() {
            // Leave no orphaned parts behind.
            let abort = self
                .retrying("AbortMultipartUpload", key, || {
                    let req = self
                        .client
                        .abort_multipart_upload()
                        .bucket(&self.bucket)
                        .key(&full)
                        .upload_id(&upload_id);
                    async move { req.send().await.map(|_| ()).map_err(classify) }
                })
                .await;
            if let Err(e) = abort {
                tracing::warn!(key, error = %e.chain(), "could not abort a failed multipart upload");
            }
            return result;
        }
        if let Some(lock) = self.lock_for(key) {
            self.ensure_retention(key, lock).await?;
        }
        Ok(())
    }

    /// Make sure the object just completed under `key` carries `lock`'s retention: S3 sets it
    /// from CreateMultipartUpload, but some S3-compatible stores (moto) drop it there, and a
    /// locked target must not hold an unlocked object silently.
    async fn ensure_retention(&self, key: &str, lock: &ObjectLock) -> Result<(), Error> {
        if self.retention(key, None).await?.is_some() {
            return Ok(());
        }
        let full = self.full_key(key);
        let until = lock.retain_until(std::time::SystemTime::now());
        self.retrying("PutObjectRetention", key, || {
            let retention = aws_sdk_s3::types::ObjectLockRetention::builder()
                .mode(match lock.mode() {
                    crate::LockMode::Governance => {
                        aws_sdk_s3::types::ObjectLockRetentionMode::Governance
                    }
                    crate::LockMode::Compliance => {
                        aws_sdk_s3::types::ObjectLockRetentionMode::Compliance
                    }
                })
                .retain_until_date(until)
                .build();
            let req = self
                .client
                .put_object_retention()
                .bucket(&self.bucket)
                .key(&full)
                .retention(retention);
            async move { req.send().await.map(|_| ()).map_err(classify) }
        })
        .await
    }

    async fn upload_parts_and_complete(
        &self,
        key: &str,
        full: &str,
        upload_id: &str,
        data: &Bytes,
        condition: &Condition,
    ) -> Result<(), Error> {
        use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
        let parts: Vec<(i32, Bytes)> = data
            .chunks(self.part_size)
            .enumerate()
            .map(|(i, chunk)| {
                let start = chunk.as_ptr() as usize - data.as_ptr() as usize;
                ((i + 1) as i32, data.slice(start..start + chunk.len()))
            })
            .collect();
        let mut tasks = tokio::task::JoinSet::new();
        let mut done: Vec<CompletedPart> = Vec::new();
        let mut queue = parts.into_iter();
        let mut failure = None;
        loop {
            while tasks.len() < self.concurrency.max(1) && failure.is_none() {
                let Some((number, body)) = queue.next() else {
                    break;
                };
                let s3 = self.clone();
                let checksummed = self.lock_for(key).is_some();
                let (key, full, upload_id) =
                    (key.to_string(), full.to_string(), upload_id.to_string());
                tasks.spawn(async move {
                    s3.retrying("UploadPart", &key, || {
                        let req = s3
                            .client
                            .upload_part()
                            .bucket(&s3.bucket)
                            .key(&full)
                            .upload_id(&upload_id)
                            .part_number(number)
                            .body(ByteStream::from(body.clone()));
                        let req = if checksummed {
                            req.checksum_algorithm(ChecksumAlgorithm::Crc32)
                        } else {
                            req
                        };
                        async move {
                            let out = req.send().await.map_err(classify)?;
                            Ok(CompletedPart::builder()
                                .part_number(number)
                                .set_e_tag(out.e_tag().map(str::to_string))
                                .set_checksum_crc32(out.checksum_crc32().map(str::to_string))
                                .build())
                        }
                    })
                    .await
                });
            }
            match tasks.join_next().await {
                None => break,
                Some(Ok(Ok(part))) => done.push(part),
                Some(Ok(Err(e))) => {
                    failure.get_or_insert(e);
                }
                Some(Err(e)) => {
                    failure.get_or_insert(Error::backend("UploadPart", e.to_string()));
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        done.sort_by_key(|p| p.part_number());
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(done))
            .build();
        let mut attempts = 0;
        let result = self
            .retrying("CompleteMultipartUpload", key, || {
                attempts += 1;
                let mut req = self
                    .client
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(full)
                    .upload_id(upload_id)
                    .multipart_upload(completed.clone());
                req = match condition {
                    Condition::None => req,
                    Condition::Absent => req.if_none_match("*"),
                    Condition::Matches(etag) => req.if_match(etag),
                };
                async move { req.send().await.map(|_| ()).map_err(classify) }
            })
            .await;
        self.settle(key, data, attempts > 1, result).await
    }

    /// Every key under `prefix` (relative to the target's prefix) with its size, in order;
    /// follows continuation tokens past 1,000 keys.
    pub(crate) async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, Error> {
        let full = self.full_key(prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .retrying("ListObjectsV2", prefix, || {
                    let req = self
                        .client
                        .list_objects_v2()
                        .bucket(&self.bucket)
                        .prefix(&full)
                        .set_continuation_token(token.clone());
                    async move { req.send().await.map_err(classify) }
                })
                .await?;
            for object in page.contents() {
                if let Some(key) = object.key().and_then(|k| k.strip_prefix(&self.prefix)) {
                    out.push((key.to_string(), object.size().unwrap_or(0).max(0) as u64));
                }
            }
            token = page.next_continuation_token().map(str::to_string);
            if !page.is_truncated().unwrap_or(false) || token.is_none() {
                break;
            }
        }
        out.sort();
        Ok(out)
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<(), Error> {
        if self.lock.is_some() {
            return self.delete_versions(key).await;
        }
        let full = self.full_key(key);
        self.retrying("DeleteObject", key, || {
            let req = self.client.delete_object().bucket(&self.bucket).key(&full);
            async move {
                match req.send().await.map_err(classify) {
                    Ok(_) | Err(Failure::NotFound) => Ok(()),
                    Err(f) => Err(f),
                }
            }
        })
        .await
    }
}

/// One stored version of a key in a versioned bucket.
struct Version {
    id: String,
    delete_marker: bool,
    latest: bool,
}

impl S3 {
    /// The retention of `key`'s current version (or of `version`), from HeadObject's
    /// Object Lock headers (which AWS shows to identities allowed `s3:GetObjectRetention`;
    /// moto has no GetObjectRetention call but sends these headers); `None` when it has none.
    pub(crate) async fn retention(
        &self,
        key: &str,
        version: Option<&str>,
    ) -> Result<Option<Retention>, Error> {
        let full = self.full_key(key);
        let out = self
            .retrying("HeadObject", key, || {
                let req = self
                    .client
                    .head_object()
                    .bucket(&self.bucket)
                    .key(&full)
                    .set_version_id(version.map(str::to_string));
                async move { req.send().await.map_err(classify) }
            })
            .await?;
        Retention::from_sdk(
            out.object_lock_mode().map(|m| m.as_str()),
            out.object_lock_retain_until_date(),
            &self.describe(key),
        )
    }

    /// Every version and delete marker of exactly `key`.
    async fn versions(&self, key: &str) -> Result<Vec<Version>, Error> {
        let full = self.full_key(key);
        let mut out = Vec::new();
        let mut markers: (Option<String>, Option<String>) = (None, None);
        loop {
            let page = self
                .retrying("ListObjectVersions", key, || {
                    let req = self
                        .client
                        .list_object_versions()
                        .bucket(&self.bucket)
                        .prefix(&full)
                        .set_key_marker(markers.0.clone())
                        .set_version_id_marker(markers.1.clone());
                    async move { req.send().await.map_err(classify) }
                })
                .await?;
            for v in page.versions() {
                if v.key() == Some(full.as_str())
                    && let Some(id) = v.version_id()
                {
                    out.push(Version {
                        id: id.to_string(),
                        delete_marker: false,
                        latest: v.is_latest().unwrap_or(false),
                    });
                }
            }
            for m in page.delete_markers() {
                if m.key() == Some(full.as_str())
                    && let Some(id) = m.version_id()
                {
                    out.push(Version {
                        id: id.to_string(),
                        delete_marker: true,
                        latest: m.is_latest().unwrap_or(false),
                    });
                }
            }
            if !page.is_truncated().unwrap_or(false) {
                break;
            }
            markers = (
                page.next_key_marker().map(str::to_string),
                page.next_version_id_marker().map(str::to_string),
            );
            // Past our key: nothing more of it.
            if markers.0.as_deref().is_some_and(|k| k > full.as_str()) || markers.0.is_none() {
                break;
            }
        }
        Ok(out)
    }

    /// Delete `key` in a bucket with Object Lock: every version of it (so no older version
    /// comes back as current) and its delete markers — or, while any version is retained,
    /// nothing, failing with [`Error::PermissionDenied`] naming the key, mode and date. S3
    /// enforces the same on its side (a legal hold, too): its 403 is a `PermissionDenied`.
    async fn delete_versions(&self, key: &str) -> Result<(), Error> {
        let versions = self.versions(key).await?;
        let now = std::time::SystemTime::now();
        for v in versions.iter().filter(|v| !v.delete_marker) {
            if let Some(r) = self.retention(key, Some(&v.id)).await?
                && r.holds_at(now)
            {
                return Err(Error::PermissionDenied {
                    principal: "this S3 target".into(),
                    permission: format!(
                        "delete {}: S3 Object Lock ({}) retains {} until {}",
                        self.describe(key),
                        r.mode,
                        if v.latest {
                            "it".to_string()
                        } else {
                            format!("its earlier version {}", v.id)
                        },
                        format_time(r.retain_until)
                    ),
                });
            }
        }
        let full = self.full_key(key);
        // Older versions first, the current one last, delete markers after: a failure part
        // way leaves the current version readable.
        let mut order: Vec<&Version> = versions.iter().filter(|v| !v.delete_marker).collect();
        order.sort_by_key(|v| v.latest);
        order.extend(versions.iter().filter(|v| v.delete_marker));
        for v in order {
            self.retrying("DeleteObject", key, || {
                let req = self
                    .client
                    .delete_object()
                    .bucket(&self.bucket)
                    .key(&full)
                    .version_id(&v.id);
                async move {
                    match req.send().await.map_err(classify) {
                        Ok(_) | Err(Failure::NotFound) => Ok(()),
                        Err(f) => Err(f),
                    }
                }
            })
            .await?;
        }
        Ok(())
    }
}
