//! A registry client over the OCI distribution API (what Docker Hub, GHCR, ECR, Harbor and the
//! CNCF `distribution` registry serve): push an image from an OCI layout and pull one into it.
//!
//! - **Auth**: anonymous, or a user and password given as HTTP Basic or exchanged for a bearer
//!   token at the realm the registry's `WWW-Authenticate` challenge names (scoped to the
//!   repository and the actions: `pull` or `pull,push`); tokens are reused per scope.
//! - **Blobs**: a blob the repository has is skipped (`HEAD`); one in another repository of the
//!   same registry is mounted (`POST …?mount=&from=`) without a byte sent; others are uploaded,
//!   in one request up to the chunk size and in `PATCH` chunks above it.
//! - **Manifests** are put by digest and then by tag, and the push is reported done only once
//!   the registry answers for the manifest's digest.
//! - **Failures** that can pass (connection errors, 429, 5xx) are retried with the policy of
//!   [`deploykit_core::retry`]; the others say which request the registry refused and why.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;

use base64::Engine as _;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};

use deploykit_core::retry::{Retry, RetryPolicy};
use deploykit_core::{Error, Result};

use crate::layout::Layout;
use crate::oci::{self, Descriptor, ImageConfig, Index, Manifest, Platform};
use crate::reference::Reference;

/// Chunks of this size (8 MiB) by default; blobs up to it go in one request.
pub const DEFAULT_CHUNK: usize = 8 << 20;

/// A registry client. Cheap to share: one connection pool, one token cache.
#[derive(Debug)]
pub struct Registry {
    http: reqwest::Client,
    credentials: Option<(String, String)>,
    plain_http: Vec<String>,
    chunk: usize,
    retry: RetryPolicy,
    /// `Authorization` values by `registry repository actions`.
    auth: Mutex<HashMap<String, HeaderValue>>,
}

/// What a push did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PushReport {
    /// The pushed manifest's digest.
    pub digest: String,
    /// Blobs uploaded.
    pub uploaded: usize,
    /// Bytes uploaded.
    pub uploaded_bytes: u64,
    /// Blobs the repository had already.
    pub present: usize,
    /// Blobs mounted from another repository.
    pub mounted: usize,
}

/// An image pulled into a layout.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Pulled {
    /// The image manifest's descriptor (for the chosen platform, out of an index).
    pub descriptor: Descriptor,
    /// The manifest.
    pub manifest: Manifest,
    /// The configuration.
    pub config: ImageConfig,
}

/// One request: its method, URL, headers and body (cheap to clone, so it can be sent again).
#[derive(Clone, Debug)]
struct Call {
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: Option<bytes::Bytes>,
}

impl Call {
    fn new(method: Method, url: Url) -> Self {
        Call {
            method,
            url,
            headers: HeaderMap::new(),
            body: None,
        }
    }

    fn header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }

    fn body(mut self, body: impl Into<bytes::Bytes>) -> Self {
        self.body = Some(body.into());
        self
    }
}

/// Whether to send the request again: connection failures, 429 and 5xx.
fn transient(e: &Error) -> Retry {
    e.retry()
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    /// An anonymous client; HTTPS everywhere but loopback (`localhost`, `127.0.0.1`, `[::1]`).
    pub fn new() -> Self {
        Registry {
            http: reqwest::Client::builder()
                .user_agent(concat!("deploykit/", env!("CARGO_PKG_VERSION")))
                .build()
                .expect("the HTTP client builds"),
            credentials: None,
            plain_http: Vec::new(),
            chunk: DEFAULT_CHUNK,
            retry: RetryPolicy::default(),
            auth: Mutex::new(HashMap::new()),
        }
    }

    /// A client with the credentials of `DEPLOYKIT_REGISTRY_USER` and
    /// `DEPLOYKIT_REGISTRY_PASSWORD` when both are set (else anonymous): what the CLI and the
    /// image stage's base pulls use.
    pub fn from_env() -> Self {
        match (
            std::env::var("DEPLOYKIT_REGISTRY_USER"),
            std::env::var("DEPLOYKIT_REGISTRY_PASSWORD"),
        ) {
            (Ok(user), Ok(password)) => Registry::new().credentials(user, password),
            _ => Registry::new(),
        }
    }

    /// Log in as `user` with `password` (or a token as password) wherever asked.
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some((user.into(), password.into()));
        self
    }

    /// Speak plain HTTP to `host` (`host:port`), as to loopback.
    pub fn plain_http(mut self, host: impl Into<String>) -> Self {
        self.plain_http.push(host.into());
        self
    }

    /// Upload blobs above `bytes` in chunks of `bytes` (at least 1 KiB).
    pub fn chunk_size(mut self, bytes: usize) -> Result<Self> {
        if bytes < 1024 {
            return Err(Error::invalid(
                "registry.chunk_size",
                format!("{bytes} bytes is too small (at least 1024)"),
            ));
        }
        self.chunk = bytes;
        Ok(self)
    }

    /// Retry failures that can pass with `policy`.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    fn base(&self, registry: &str) -> Result<Url> {
        let host = if registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            registry
        };
        let loopback = ["localhost", "127.0.0.1", "[::1]"]
            .iter()
            .any(|l| host == *l || host.strip_prefix(l).is_some_and(|p| p.starts_with(':')));
        let scheme = if loopback || self.plain_http.iter().any(|h| h == host) {
            "http"
        } else {
            "https"
        };
        Url::parse(&format!("{scheme}://{host}/"))
            .map_err(|e| Error::invalid("image.registry", format!("{registry:?}: {e}")))
    }

    /// One request to `image`'s registry for `actions` (`pull` or `pull,push`): answered with
    /// credentials when challenged, retried when it may pass. The response is returned
    /// whatever its status but 401 (credentials refused) and 429/5xx (retries used up).
    async fn send(
        &self,
        image: &Reference,
        actions: &str,
        what: &str,
        call: Call,
    ) -> Result<reqwest::Response> {
        let Call {
            method,
            url,
            headers,
            body,
        } = call;
        let key = format!("{} {} {actions}", image.registry(), image.repository());
        let attempt = || async {
            let mut challenged = false;
            loop {
                let mut request = self
                    .http
                    .request(method.clone(), url.clone())
                    .headers(headers.clone());
                if let Some(auth) = self.auth.lock().unwrap().get(&key) {
                    request = request.header(header::AUTHORIZATION, auth.clone());
                }
                if let Some(body) = &body {
                    request = request.body(body.clone());
                }
                let response = request
                    .send()
                    .await
                    .map_err(|e| Error::transient(what, format!("{}: {}", url, error_chain(&e))))?;
                let status = response.status();
                if status == StatusCode::UNAUTHORIZED && !challenged {
                    challenged = true;
                    let auth = self.answer(image, actions, what, &response).await?;
                    self.auth.lock().unwrap().insert(key.clone(), auth);
                    continue;
                }
                if status == StatusCode::UNAUTHORIZED {
                    return Err(Error::backend(
                        what,
                        format!(
                            "{} refused {} for {} ({actions}): {}",
                            image.registry(),
                            if self.credentials.is_some() {
                                "these credentials"
                            } else {
                                "anonymous access"
                            },
                            image.repository(),
                            registry_error(response).await
                        ),
                    ));
                }
                if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                    return Err(Error::transient(
                        what,
                        format!("{url}: {status}: {}", registry_error(response).await),
                    ));
                }
                return Ok(response);
            }
        };
        self.retry
            .run(what, transient, attempt)
            .await
            .map_err(|e| e.into_error(what, |e| e))
    }

    /// The `Authorization` value that answers the challenge in `response`.
    async fn answer(
        &self,
        image: &Reference,
        actions: &str,
        what: &str,
        response: &reqwest::Response,
    ) -> Result<HeaderValue> {
        let challenge = response
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let basic = self.credentials.as_ref().map(|(user, password)| {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            HeaderValue::from_str(&format!("Basic {token}")).expect("base64 is a header value")
        });
        let (scheme, params) = challenge.split_once(' ').unwrap_or((&challenge, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return basic.ok_or_else(|| {
                Error::backend(
                    what,
                    format!(
                        "{} asks for a user and password for {}, and none was given",
                        image.registry(),
                        image.repository()
                    ),
                )
            });
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Error::backend(
                what,
                format!(
                    "{} asks for authentication deploykit does not speak: {challenge:?}",
                    image.registry()
                ),
            ));
        }
        let params = challenge_params(params);
        let realm = params.get("realm").ok_or_else(|| {
            Error::backend(
                what,
                format!(
                    "{}'s bearer challenge names no realm: {challenge:?}",
                    image.registry()
                ),
            )
        })?;
        let mut url = Url::parse(realm)
            .map_err(|e| Error::backend(what, format!("token realm {realm:?}: {e}")))?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = params.get("service") {
                query.append_pair("service", service);
            }
            query.append_pair(
                "scope",
                &format!("repository:{}:{actions}", image.repository()),
            );
        }
        let mut request = self.http.get(url.clone());
        if let Some(basic) = basic {
            request = request.header(header::AUTHORIZATION, basic);
        }
        let response = request.send().await.map_err(|e| {
            Error::transient(what, format!("token from {url}: {}", error_chain(&e)))
        })?;
        let response = expect(
            response,
            None,
            what,
            &format!("token service {realm} refused: "),
        )
        .await?;
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| Error::transient(what, format!("token from {realm}: {e}")))?;
        let token: Token = oci::parse(&format!("token from {realm}"), &body)?;
        let token = token.token.or(token.access_token).ok_or_else(|| {
            Error::backend(
                what,
                format!("token service {realm} answered without a token"),
            )
        })?;
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            Error::backend(
                what,
                format!("token service {realm} sent a token that is not a header value"),
            )
        })
    }

    fn url(&self, image: &Reference, path: &str) -> Result<Url> {
        self.base(image.registry())?
            .join(&format!("v2/{}/{path}", image.repository()))
            .map_err(|e| Error::invalid("image", e.to_string()))
    }

    /// Whether `image`'s repository has blob `digest`.
    pub async fn has_blob(&self, image: &Reference, digest: &str) -> Result<bool> {
        let what = format!("look for blob {digest} in {}", image.name());
        let url = self.url(image, &format!("blobs/{digest}"))?;
        let response = self
            .send(image, "pull", &what, Call::new(Method::HEAD, url))
            .await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(Error::backend(what, format!("{s}"))),
        }
    }

    /// Pushes the image (or index) `manifest` of `layout` to `target` (by digest, and by tag if
    /// `target` has one), trying to mount blobs from `mount_from` (repositories of the same
    /// registry) before uploading them.
    pub async fn push(
        &self,
        layout: &Layout,
        manifest: &Descriptor,
        target: &Reference,
        mount_from: &[String],
    ) -> Result<PushReport> {
        let mut report = PushReport {
            digest: manifest.digest.clone(),
            ..PushReport::default()
        };
        self.push_manifest(layout, manifest, target, mount_from, &mut report)
            .await?;
        if let Some(tag) = target.tag() {
            let bytes = layout.read_blob(&manifest.digest)?;
            self.put_manifest(target, tag, &manifest.media_type, bytes)
                .await?;
        }
        // Done only once the registry answers for the digest.
        let (found, _) = self
            .manifest(&target.with_digest(&manifest.digest)?)
            .await?;
        if found.digest != manifest.digest {
            return Err(Error::backend(
                format!("push {target}"),
                format!(
                    "the registry serves {} for {}",
                    found.digest, manifest.digest
                ),
            ));
        }
        Ok(report)
    }

    async fn push_manifest(
        &self,
        layout: &Layout,
        manifest: &Descriptor,
        target: &Reference,
        mount_from: &[String],
        report: &mut PushReport,
    ) -> Result<()> {
        let bytes = layout.read_blob(&manifest.digest)?;
        if is_index(&manifest.media_type) {
            let index: Index = oci::parse(&format!("index {}", manifest.digest), &bytes)?;
            for child in &index.manifests {
                Box::pin(self.push_manifest(layout, child, target, mount_from, report)).await?;
            }
        } else {
            let image: Manifest = oci::parse(&format!("manifest {}", manifest.digest), &bytes)?;
            for blob in std::iter::once(&image.config).chain(&image.layers) {
                self.push_blob(layout, blob, target, mount_from, report)
                    .await?;
            }
            if let Some(subject) = &image.subject {
                tracing::debug!(subject = %subject.digest, "pushing a referrer");
            }
        }
        self.put_manifest(target, &manifest.digest, &manifest.media_type, bytes)
            .await
    }

    async fn push_blob(
        &self,
        layout: &Layout,
        blob: &Descriptor,
        target: &Reference,
        mount_from: &[String],
        report: &mut PushReport,
    ) -> Result<()> {
        if self.has_blob(target, &blob.digest).await? {
            report.present += 1;
            return Ok(());
        }
        let what = format!("upload blob {} to {}", blob.digest, target.name());
        let mut session = None;
        for from in mount_from.iter().filter(|f| *f != target.repository()) {
            let mut url = self.url(target, "blobs/uploads/")?;
            url.query_pairs_mut()
                .append_pair("mount", &blob.digest)
                .append_pair("from", from);
            let response = self
                .send(target, "pull,push", &what, Call::new(Method::POST, url))
                .await?;
            match response.status() {
                StatusCode::CREATED => {
                    report.mounted += 1;
                    return Ok(());
                }
                StatusCode::ACCEPTED => {
                    session = Some(self.location(target, &what, &response)?);
                    break;
                }
                s => {
                    tracing::debug!(%s, from, "mount refused; uploading");
                }
            }
        }
        let mut location = match session {
            Some(location) => location,
            None => self.start_upload(target, &what).await?,
        };
        let path = layout.blob_path(&blob.digest)?;
        let mut file = std::fs::File::open(&path)
            .map_err(|e| Error::backend(&what, format!("{}: {e}", path.display())))?;
        let size = blob.size;
        let mut sent: u64 = 0;
        let mut last = bytes::Bytes::new();
        if size > self.chunk as u64 {
            while sent < size {
                let chunk = read_chunk(&mut file, self.chunk, &what)?;
                let end = sent + chunk.len() as u64;
                let range = HeaderValue::from_str(&format!("{sent}-{}", end - 1)).expect("digits");
                let call = Call::new(Method::PATCH, location.clone())
                    .header(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    )
                    .header(header::CONTENT_RANGE, range)
                    .body(chunk);
                let response = self.send(target, "pull,push", &what, call).await?;
                let context = format!("chunk {sent}-{end}: ");
                let response =
                    expect(response, Some(StatusCode::ACCEPTED), &what, &context).await?;
                location = self.location(target, &what, &response)?;
                sent = end;
            }
        } else {
            last = read_chunk(&mut file, size as usize, &what)?;
        }
        location
            .query_pairs_mut()
            .append_pair("digest", &blob.digest);
        let body_len = last.len() as u64;
        let call = Call::new(Method::PUT, location)
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            )
            .body(last);
        let response = self.send(target, "pull,push", &what, call).await?;
        expect(response, Some(StatusCode::CREATED), &what, "").await?;
        report.uploaded += 1;
        report.uploaded_bytes += sent + body_len;
        Ok(())
    }

    async fn start_upload(&self, target: &Reference, what: &str) -> Result<Url> {
        let url = self.url(target, "blobs/uploads/")?;
        let response = self
            .send(target, "pull,push", what, Call::new(Method::POST, url))
            .await?;
        let response = expect(
            response,
            Some(StatusCode::ACCEPTED),
            what,
            "starting the upload: ",
        )
        .await?;
        self.location(target, what, &response)
    }

    /// The upload URL a registry answered with (`Location`, absolute or relative).
    fn location(
        &self,
        target: &Reference,
        what: &str,
        response: &reqwest::Response,
    ) -> Result<Url> {
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Error::backend(what, "the registry answered without a Location"))?;
        self.base(target.registry())?
            .join(location)
            .map_err(|e| Error::backend(what, format!("Location {location:?}: {e}")))
    }

    /// Puts manifest `bytes` of `media_type` under `reference` (a tag or a digest).
    pub async fn put_manifest(
        &self,
        target: &Reference,
        reference: &str,
        media_type: &str,
        bytes: Vec<u8>,
    ) -> Result<()> {
        self.put_manifest_answered(target, reference, media_type, bytes)
            .await
            .map(drop)
    }

    /// [`Registry::put_manifest`], and the registry's answer's headers.
    async fn put_manifest_answered(
        &self,
        target: &Reference,
        reference: &str,
        media_type: &str,
        bytes: Vec<u8>,
    ) -> Result<HeaderMap> {
        let what = format!("put manifest {reference} in {}", target.name());
        let url = self.url(target, &format!("manifests/{reference}"))?;
        let content_type = HeaderValue::from_str(media_type)
            .map_err(|_| Error::invalid("image.media_type", format!("{media_type:?}")))?;
        let digest = oci::sha256(&bytes);
        let call = Call::new(Method::PUT, url)
            .header(header::CONTENT_TYPE, content_type)
            .body(bytes);
        let response = self.send(target, "pull,push", &what, call).await?;
        let response = expect(response, Some(StatusCode::CREATED), &what, "").await?;
        if let Some(answered) = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            && answered != digest
        {
            return Err(Error::backend(
                what,
                format!("the registry stored {answered}, not {digest}"),
            ));
        }
        Ok(response.headers().clone())
    }

    /// The manifest `image` names (by tag or digest): its descriptor and bytes, checked
    /// against the digest when `image` has one.
    pub async fn manifest(&self, image: &Reference) -> Result<(Descriptor, Vec<u8>)> {
        let what = format!("get manifest {image}");
        let url = self.url(image, &format!("manifests/{}", image.selector()))?;
        let call = Call::new(Method::GET, url).header(
            header::ACCEPT,
            HeaderValue::from_static(oci::MANIFEST_ACCEPT),
        );
        let response = self.send(image, "pull", &what, call).await?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Err(Error::not_found(format!("image {image}")));
        }
        if !status.is_success() {
            return Err(Error::backend(
                what,
                format!("{status}: {}", registry_error(response).await),
            ));
        }
        let media_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_string());
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Error::transient(&what, e.to_string()))?
            .to_vec();
        let mut descriptor = Descriptor::of(oci::MANIFEST, &bytes);
        if let Some(expected) = image.digest()
            && descriptor.digest != expected
        {
            return Err(Error::backend(
                what,
                format!(
                    "the registry sent content whose digest is {}",
                    descriptor.digest
                ),
            ));
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Kind {
            media_type: Option<String>,
        }
        let kind: Kind = oci::parse(&what, &bytes)?;
        descriptor.media_type = kind
            .media_type
            .or(media_type)
            .unwrap_or_else(|| oci::MANIFEST.to_string());
        Ok((descriptor, bytes))
    }

    /// Streams blob `digest` of `image` into `layout` (checking the digest) unless it is there.
    async fn fetch_blob(&self, image: &Reference, digest: &str, layout: &Layout) -> Result<()> {
        if layout.has_blob(digest) {
            return Ok(());
        }
        let what = format!("get blob {digest} of {}", image.name());
        let url = self.url(image, &format!("blobs/{digest}"))?;
        let response = self
            .send(image, "pull", &what, Call::new(Method::GET, url))
            .await?;
        let mut response = expect(response, None, &what, "").await?;
        let path = layout.blob_path(digest)?;
        let dir = path.parent().expect("blobs have a directory");
        let mut tmp = tempfile::NamedTempFile::new_in(dir)
            .map_err(|e| Error::backend(&what, e.to_string()))?;
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| Error::transient(&what, e.to_string()))?
        {
            sha2::Digest::update(&mut hasher, &chunk);
            std::io::Write::write_all(&mut tmp, &chunk)
                .map_err(|e| Error::backend(&what, e.to_string()))?;
        }
        let got = format!("sha256:{:x}", sha2::Digest::finalize(hasher));
        if got != digest {
            return Err(Error::backend(
                what,
                format!("the registry sent content whose digest is {got}"),
            ));
        }
        tmp.persist(&path)
            .map_err(|e| Error::backend(&what, e.error.to_string()))?;
        Ok(())
    }

    /// Pulls `image` into `layout`: the manifest for `platform` (out of an index), its
    /// configuration and its layers, each checked against its digest.
    pub async fn pull(
        &self,
        image: &Reference,
        layout: &Layout,
        platform: &Platform,
    ) -> Result<Pulled> {
        let (mut descriptor, mut bytes) = self.manifest(image).await?;
        if is_index(&descriptor.media_type) {
            let index: Index = oci::parse(&format!("index of {image}"), &bytes)?;
            let chosen = index
                .manifests
                .iter()
                .find(|m| {
                    m.platform.as_ref().is_some_and(|p| {
                        p.os == platform.os
                            && p.architecture == platform.architecture
                            && (platform.variant.is_none() || p.variant == platform.variant)
                    })
                })
                .ok_or_else(|| {
                    Error::not_found(format!(
                        "a {}/{} image in {image} (it has {})",
                        platform.os,
                        platform.architecture,
                        index
                            .manifests
                            .iter()
                            .filter_map(|m| m.platform.as_ref())
                            .map(|p| format!("{}/{}", p.os, p.architecture))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
            (descriptor, bytes) = self.manifest(&image.with_digest(&chosen.digest)?).await?;
        }
        let manifest: Manifest = oci::parse(&format!("manifest of {image}"), &bytes)?;
        layout.put_bytes(&descriptor.media_type, &bytes)?;
        for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
            self.fetch_blob(image, &blob.digest, layout).await?;
        }
        let config: ImageConfig = oci::parse(
            &format!("configuration of {image}"),
            &layout.read_blob(&manifest.config.digest)?,
        )?;
        Ok(Pulled {
            descriptor,
            manifest,
            config,
        })
    }
}

impl Registry {
    /// Pushes `artifact` (a manifest of `layout` whose `subject` is an image already pushed to
    /// `target`'s repository) and makes it findable from its subject: through the registry's
    /// referrers API when it has one (it answers `OCI-Subject`), else in the index tagged
    /// `sha256-<subject hex>` (the OCI 1.1 fallback `oras` and `cosign` read too).
    pub async fn push_referrer(
        &self,
        layout: &Layout,
        artifact: &Descriptor,
        target: &Reference,
    ) -> Result<()> {
        let bytes = layout.read_blob(&artifact.digest)?;
        let manifest: Manifest = oci::parse(&artifact.digest, &bytes)?;
        let subject = manifest.subject.as_ref().ok_or_else(|| {
            Error::invalid(
                "image.referrer",
                "an artifact without a subject refers to nothing",
            )
        })?;
        let mut report = PushReport::default();
        for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
            self.push_blob(layout, blob, target, &[], &mut report)
                .await?;
        }
        let headers = self
            .put_manifest_answered(target, &artifact.digest, oci::MANIFEST, bytes)
            .await?;
        if headers.contains_key("oci-subject") {
            return Ok(());
        }
        let tag = fallback_tag(&subject.digest);
        let mut index = match self
            .manifest(&format!("{}:{tag}", target.name()).parse()?)
            .await
        {
            Ok((_, bytes)) => {
                oci::parse::<Index>(&format!("{} referrers", subject.digest), &bytes)?
            }
            Err(Error::NotFound { .. }) => Index::of(Vec::new()),
            Err(e) => return Err(e),
        };
        if index.manifests.iter().any(|d| d.digest == artifact.digest) {
            return Ok(());
        }
        let mut entry = artifact.clone();
        entry.artifact_type = manifest.artifact_type.clone();
        entry.annotations = manifest.annotations.clone();
        index.manifests.push(entry);
        self.put_manifest(target, &tag, oci::INDEX, index.to_bytes())
            .await
    }

    /// The artifacts that refer to the manifest `image` pins (by digest): from the referrers
    /// API, or the `sha256-<hex>` tag where there is none.
    pub async fn referrers(&self, image: &Reference) -> Result<Vec<Descriptor>> {
        let digest = image
            .digest()
            .ok_or_else(|| Error::invalid("image", format!("{image} is not pinned by digest")))?;
        let what = format!("list the referrers of {image}");
        let url = self.url(image, &format!("referrers/{digest}"))?;
        let response = self
            .send(image, "pull", &what, Call::new(Method::GET, url))
            .await?;
        if response.status().is_success() {
            let bytes = response
                .bytes()
                .await
                .map_err(|e| Error::transient(&what, e.to_string()))?;
            return Ok(oci::parse::<Index>(&what, &bytes)?.manifests);
        }
        let tag = fallback_tag(digest);
        match self
            .manifest(&format!("{}:{tag}", image.name()).parse()?)
            .await
        {
            Ok((_, bytes)) => Ok(oci::parse::<Index>(&what, &bytes)?.manifests),
            Err(Error::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// The bytes of blob `digest` of `image`'s repository, checked against the digest.
    pub async fn blob(&self, image: &Reference, digest: &str) -> Result<Vec<u8>> {
        let what = format!("get blob {digest} of {}", image.name());
        let url = self.url(image, &format!("blobs/{digest}"))?;
        let response = self
            .send(image, "pull", &what, Call::new(Method::GET, url))
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Err(Error::not_found(format!(
                "blob {digest} in {}",
                image.name()
            )));
        }
        let response = expect(response, None, &what, "").await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Error::transient(&what, e.to_string()))?;
        if oci::sha256(&bytes) != digest {
            return Err(Error::backend(
                what,
                "the registry sent content that does not match its digest",
            ));
        }
        Ok(bytes.to_vec())
    }
}

/// The tag under which the referrers of `digest` are listed where the registry has no
/// referrers API: `sha256-<hex>`.
pub fn fallback_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

fn is_index(media_type: &str) -> bool {
    media_type == oci::INDEX || media_type == oci::DOCKER_LIST
}

fn read_chunk(file: &mut std::fs::File, n: usize, what: &str) -> Result<bytes::Bytes> {
    let mut buf = Vec::with_capacity(n);
    file.take(n as u64)
        .read_to_end(&mut buf)
        .map_err(|e| Error::backend(what, e.to_string()))?;
    Ok(buf.into())
}

/// `key="value"` pairs of a `WWW-Authenticate` challenge.
fn challenge_params(params: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = params.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.split_once('"') {
                Some((v, next)) => (v, next),
                None => (quoted, ""),
            }
        } else {
            after.split_once(',').unwrap_or((after, ""))
        };
        out.insert(key, value.to_string());
        rest = next.trim_start_matches(',').trim();
    }
    out
}

/// `response` if its status is `expected` (any success for `None`); else an error for `what`
/// with `context`, the status and the registry's own error.
async fn expect(
    response: reqwest::Response,
    expected: Option<StatusCode>,
    what: &str,
    context: &str,
) -> Result<reqwest::Response> {
    let status = response.status();
    if expected.map_or(status.is_success(), |e| status == e) {
        return Ok(response);
    }
    Err(Error::backend(
        what,
        format!("{context}{status}: {}", registry_error(response).await),
    ))
}

/// The registry's error body (`{"errors":[{"code","message"}]}`) in a line, or the raw text.
async fn registry_error(response: reqwest::Response) -> String {
    let text = response.text().await.unwrap_or_default();
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<One>,
    }
    #[derive(serde::Deserialize)]
    struct One {
        code: Option<String>,
        message: Option<String>,
    }
    match serde_json::from_str::<Errors>(&text) {
        Ok(errors) if !errors.errors.is_empty() => errors
            .errors
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e.code.as_deref().unwrap_or(""),
                    e.message.as_deref().unwrap_or("")
                )
                .trim()
                .to_string()
            })
            .collect::<Vec<_>>()
            .join("; "),
        _ => text
            .chars()
            .take(300)
            .collect::<String>()
            .trim()
            .to_string(),
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_parse() {
        let p = challenge_params(
            r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        );
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/nginx:pull");
        let p = challenge_params("realm=basic-realm");
        assert_eq!(p["realm"], "basic-realm");
    }

    #[test]
    fn loopback_is_plain_http_and_the_rest_https() {
        let r = Registry::new().plain_http("registry.internal:5000");
        assert_eq!(r.base("127.0.0.1:5000").unwrap().scheme(), "http");
        assert_eq!(r.base("localhost").unwrap().scheme(), "http");
        assert_eq!(r.base("registry.internal:5000").unwrap().scheme(), "http");
        assert_eq!(r.base("ghcr.io").unwrap().scheme(), "https");
        assert_eq!(r.base("localhost.evil.com").unwrap().scheme(), "https");
        assert_eq!(
            r.base("docker.io").unwrap().as_str(),
            "https://registry-1.docker.io/"
        );
    }
}
