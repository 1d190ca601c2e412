//! Provenance and compliance: for an image a [`Build`] made, an in-toto statement of its
//! SLSA provenance (the builder, every input with its digest, each stage's commands) and one
//! of its SBOM (CycloneDX: every file of the image with its SHA-256), each signed with an
//! ed25519 key in a DSSE envelope and attached to the image as an OCI referrer (in the layout,
//! and pushed beside the image). [`SignatureVerifier`] refuses to deploy an image without a
//! provenance statement signed by the key it trusts.
//!
//! ```
//! use deploykit_build::attest::{Envelope, Signer, PROVENANCE};
//! let signer = Signer::from_seed([7; 32]);
//! let statement = serde_json::json!({
//!     "_type": "https://in-toto.io/Statement/v1",
//!     "subject": [{ "name": "web", "digest": { "sha256": "ab" } }],
//!     "predicateType": PROVENANCE,
//!     "predicate": {},
//! });
//! let envelope = Envelope::sign(&statement, &signer);
//! assert_eq!(envelope.verify(&signer.public())?, statement);
//! let mut forged = envelope.clone();
//! forged.payload = Envelope::sign(&serde_json::json!({"_type": "x"}), &signer).payload;
//! assert!(forged.verify(&signer.public()).is_err());
//! # Ok::<(), deploykit_core::Error>(())
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use deploykit_core::build::{ArtifactKind, ArtifactVerifier};
use deploykit_core::{Digest, EnvironmentName, Error, Result, ServiceId};
use deploykit_image::oci::{self, Descriptor, Manifest};
use deploykit_image::{Layout, Reference, Registry};

use crate::pipeline::Build;

/// The in-toto statement type.
pub const STATEMENT: &str = "https://in-toto.io/Statement/v1";
/// SLSA provenance v1.
pub const PROVENANCE: &str = "https://slsa.dev/provenance/v1";
/// A CycloneDX SBOM.
pub const SBOM: &str = "https://cyclonedx.org/bom";
/// A DSSE envelope: the attestation layer's media type, and the referrer's artifact type.
pub const DSSE: &str = "application/vnd.dsse.envelope.v1+json";
/// The DSSE payload type of in-toto statements.
pub const IN_TOTO: &str = "application/vnd.in-toto+json";
/// The annotation naming a referrer's predicate type.
pub const PREDICATE_ANNOTATION: &str = "in-toto.io/predicate-type";
/// Who built: the builder id in provenance statements.
pub const BUILDER_ID: &str = concat!("https://deploykit.dev/builder/v", env!("CARGO_PKG_VERSION"));

/// An ed25519 signing key and its id.
#[derive(Clone)]
pub struct Signer {
    key: SigningKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", key_id(&self.public()))
    }
}

/// The id of `key`: `sha256:` of its 32 bytes, first 16 hex digits.
pub fn key_id(key: &VerifyingKey) -> String {
    format!("{:x}", Sha256::digest(key.as_bytes()))[..16].to_string()
}

impl Signer {
    /// The key of this 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Signer {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// The key in the PKCS#8 PEM file at `path` (what `openssl genpkey -algorithm ed25519`
    /// and [`Signer::generate`] write).
    pub fn from_pem_file(path: &Path) -> Result<Self> {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::invalid("build.signing_key", format!("{}: {e}", path.display())))?;
        let key = SigningKey::from_pkcs8_pem(&text).map_err(|e| {
            Error::invalid(
                "build.signing_key",
                format!(
                    "{} is not an ed25519 private key in PKCS#8 PEM: {e}",
                    path.display()
                ),
            )
        })?;
        Ok(Signer { key })
    }

    /// A new key, written to `path` (PKCS#8 PEM, mode 0600) with its public key beside it
    /// (`<path>.pub`, SPKI PEM).
    pub fn generate(path: &Path) -> Result<Self> {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        use ed25519_dalek::pkcs8::EncodePublicKey;
        use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| Error::backend("generate a key", e.to_string()))?;
        let signer = Signer::from_seed(seed);
        let failed = |e: String| Error::backend("write the signing key", e);
        let private = signer
            .key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| failed(e.to_string()))?;
        let public = signer
            .public()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| failed(e.to_string()))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| failed(e.to_string()))?;
        }
        write_private(path, private.as_bytes())
            .map_err(|e| failed(format!("{}: {e}", path.display())))?;
        let public_path = public_path(path);
        std::fs::write(&public_path, public)
            .map_err(|e| failed(format!("{}: {e}", public_path.display())))?;
        Ok(signer)
    }

    /// The public key.
    pub fn public(&self) -> VerifyingKey {
        self.key.verifying_key()
    }
}

/// Where [`Signer::generate`] writes the public key of the private key at `path`.
pub fn public_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pub");
    name.into()
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// The public key in the SPKI PEM file at `path` (`openssl pkey -pubout`, or
/// [`Signer::generate`]'s `.pub`).
pub fn public_key_from_pem_file(path: &Path) -> Result<VerifyingKey> {
    use ed25519_dalek::pkcs8::DecodePublicKey;
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::invalid("build.verify_key", format!("{}: {e}", path.display())))?;
    VerifyingKey::from_public_key_pem(&text).map_err(|e| {
        Error::invalid(
            "build.verify_key",
            format!(
                "{} is not an ed25519 public key in PEM: {e}",
                path.display()
            ),
        )
    })
}

/// A DSSE envelope: a payload, its type, and signatures over both.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Envelope {
    /// [`IN_TOTO`].
    pub payload_type: String,
    /// The statement's JSON, base64.
    pub payload: String,
    /// Signatures.
    pub signatures: Vec<EnvelopeSignature>,
}

/// One signature of an [`Envelope`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EnvelopeSignature {
    /// The signing key's id ([`key_id`]).
    pub keyid: String,
    /// The ed25519 signature of the pre-authentication encoding, base64.
    pub sig: String,
}

/// DSSE's pre-authentication encoding of a payload.
fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

impl Envelope {
    /// `statement`, signed by `signer`.
    pub fn sign(statement: &Value, signer: &Signer) -> Self {
        let payload = serde_json::to_vec(statement).expect("a statement serializes");
        let signature = signer.key.sign(&pae(IN_TOTO, &payload));
        let b64 = base64::engine::general_purpose::STANDARD;
        Envelope {
            payload_type: IN_TOTO.to_string(),
            payload: b64.encode(&payload),
            signatures: vec![EnvelopeSignature {
                keyid: key_id(&signer.public()),
                sig: b64.encode(signature.to_bytes()),
            }],
        }
    }

    /// The statement, if a signature by `key` verifies; else why not.
    pub fn verify(&self, key: &VerifyingKey) -> Result<Value> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let bad = |why: String| Error::invalid("attestation", why);
        let payload = b64
            .decode(&self.payload)
            .map_err(|e| bad(format!("payload is not base64: {e}")))?;
        let id = key_id(key);
        let mut tried = Vec::new();
        for s in &self.signatures {
            let Ok(bytes) = b64.decode(&s.sig) else {
                continue;
            };
            let Ok(signature) = Signature::from_slice(&bytes) else {
                continue;
            };
            if key
                .verify(&pae(&self.payload_type, &payload), &signature)
                .is_ok()
            {
                return serde_json::from_slice(&payload)
                    .map_err(|e| bad(format!("payload is not JSON: {e}")));
            }
            tried.push(s.keyid.clone());
        }
        Err(bad(if tried.contains(&id) {
            format!(
                "the signature by key {id} does not verify: the statement was changed after it was signed"
            )
        } else {
            format!(
                "not signed by key {id} (signed by: {})",
                if tried.is_empty() {
                    "nobody".to_string()
                } else {
                    tried.join(", ")
                }
            )
        }))
    }
}

/// The in-toto statement that `predicate` (of `predicate_type`) is about the image `name` with
/// manifest `digest`.
pub fn statement(name: &str, digest: &str, predicate_type: &str, predicate: Value) -> Value {
    json!({
        "_type": STATEMENT,
        "subject": [{ "name": name, "digest": { "sha256": digest.trim_start_matches("sha256:") } }],
        "predicateType": predicate_type,
        "predicate": predicate,
    })
}

/// `blake3:<hex>[ (executable)]` as an in-toto digest set.
fn digest_set(value: &str) -> Value {
    let value = value.trim_end_matches(" (executable)");
    match value.split_once(':') {
        Some((alg, hex)) => json!({ alg: hex }),
        None => json!({ "value": value }),
    }
}

/// The SLSA v1 provenance predicate of `build` of `service`: the builder, the stages with
/// their commands and settings (what their fingerprints hold, secrets only as digests), and
/// every input file and base image with its digest.
pub fn provenance(service: &str, build: &Build, started: &str, finished: &str) -> Value {
    let mut dependencies = BTreeMap::new();
    let mut stages = Vec::new();
    for stage in &build.stages {
        let mut parameters = BTreeMap::new();
        for (part, value) in stage.fingerprint.iter().flat_map(|f| f.parts()) {
            if let Some(path) = part.strip_prefix("input ") {
                dependencies.insert(format!("file:{path}"), digest_set(value));
            } else if let Some(file) = part.strip_prefix("file ") {
                let source = file.split_once(" <- ").map_or(file, |(_, s)| s);
                dependencies.insert(format!("file:{source}"), digest_set(value));
            } else if part == "base" {
                let digest = value.rsplit_once('@').map_or("", |(_, d)| d);
                dependencies.insert(format!("oci://{value}"), digest_set(digest));
            } else if !part.starts_with("variable ") {
                let parsed: Value =
                    serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.clone()));
                parameters.insert(part.clone(), parsed);
            }
        }
        stages.push(json!({
            "name": stage.name,
            "kind": stage.kind,
            "outcome": stage.outcome.verb(),
            "parameters": parameters,
        }));
    }
    json!({
        "buildDefinition": {
            "buildType": "https://deploykit.dev/build/v1",
            "externalParameters": { "service": service, "stages": stages },
            "resolvedDependencies": dependencies
                .into_iter()
                .map(|(uri, digest)| json!({ "uri": uri, "digest": digest }))
                .collect::<Vec<_>>(),
        },
        "runDetails": {
            "builder": { "id": BUILDER_ID },
            "metadata": { "startedOn": started, "finishedOn": finished },
        },
    })
}

/// A CycloneDX 1.5 SBOM of the image `manifest` in `layout`: every file with its SHA-256.
pub fn sbom(name: &str, layout: &Layout, manifest: &str) -> Result<Value> {
    let files = layout.files(manifest)?;
    Ok(json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {
            "component": { "type": "container", "name": name, "version": manifest },
            "tools": { "components": [{ "type": "application", "name": "deploykit", "version": env!("CARGO_PKG_VERSION") }] },
        },
        "components": files
            .iter()
            .map(|(path, sha, size)| json!({
                "type": "file",
                "name": format!("/{path}"),
                "hashes": [{ "alg": "SHA-256", "content": sha }],
                "properties": [{ "name": "deploykit:size", "value": size.to_string() }],
            }))
            .collect::<Vec<_>>(),
    }))
}

/// Stores `envelope` (of `predicate_type`) in `layout` as a referrer of the image `subject`.
pub fn attach(
    layout: &Layout,
    subject: &Descriptor,
    envelope: &Envelope,
    predicate_type: &str,
) -> Result<Descriptor> {
    let bytes = serde_json::to_vec(envelope).expect("an envelope serializes");
    let mut layer = layout.put_bytes(DSSE, &bytes)?;
    layer
        .annotations
        .insert(PREDICATE_ANNOTATION.into(), predicate_type.into());
    layout.put_bytes(oci::EMPTY, b"{}")?;
    let mut manifest = Manifest::image(Descriptor::empty(), vec![layer]);
    manifest.artifact_type = Some(DSSE.to_string());
    manifest.subject = Some(subject.clone());
    manifest
        .annotations
        .insert(PREDICATE_ANNOTATION.into(), predicate_type.into());
    layout.put_referrer(&manifest)
}

/// Signs `build`'s image (its last [`ArtifactKind::Image`] artifact) with `signer`: a
/// provenance statement and an SBOM, attached in its layout (an image this key signed already
/// keeps the attestations it has). The referrers' descriptors, to push with
/// [`Registry::push_referrer`]; none if the build made no image.
pub fn sign_build(
    service: &str,
    build: &Build,
    signer: &Signer,
    started: &str,
    finished: &str,
) -> Result<Vec<(Layout, Descriptor)>> {
    let Some(image) = build
        .artifacts
        .iter()
        .rev()
        .find(|a| a.kind == ArtifactKind::Image)
    else {
        return Ok(Vec::new());
    };
    let (layout, subject) = crate::image_stage::image_descriptor(image)?;
    let digest = subject.digest.clone();
    // An image signed already by this key (a rebuild that changed nothing) keeps its
    // attestations: they describe the build that made it.
    let mut existing = BTreeMap::new();
    for referrer in layout.referrers(&digest)? {
        let manifest: Manifest =
            oci::parse(&referrer.digest, &layout.read_blob(&referrer.digest)?)?;
        for l in manifest.layers.iter().filter(|l| l.media_type == DSSE) {
            let envelope: Envelope = oci::parse(&l.digest, &layout.read_blob(&l.digest)?)?;
            if let Ok(statement) = envelope.verify(&signer.public())
                && let Some(kind) = statement["predicateType"].as_str()
            {
                existing.insert(kind.to_string(), referrer.clone());
            }
        }
    }
    if let (Some(p), Some(s)) = (existing.get(PROVENANCE), existing.get(SBOM)) {
        return Ok(vec![(layout.clone(), p.clone()), (layout, s.clone())]);
    }
    let provenance = statement(
        service,
        &digest,
        PROVENANCE,
        provenance(service, build, started, finished),
    );
    let sbom = statement(service, &digest, SBOM, sbom(service, &layout, &digest)?);
    let mut out = Vec::new();
    for (statement, kind) in [(provenance, PROVENANCE), (sbom, SBOM)] {
        let referrer = attach(&layout, &subject, &Envelope::sign(&statement, signer), kind)?;
        out.push((layout.clone(), referrer));
    }
    Ok(out)
}

/// Where a [`SignatureVerifier`] finds an image's attestations.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum AttestationSource {
    /// In an OCI layout.
    Layout(std::path::PathBuf),
    /// In a registry repository (`registry/repository`), beside the images.
    Registry {
        /// The client.
        registry: Arc<Registry>,
        /// `registry/repository`.
        repository: String,
    },
}

/// An [`ArtifactVerifier`] that lets an image deploy only with a provenance statement about
/// its digest, signed by `key`: an unsigned image, one signed by another key, or one whose
/// statement was changed after signing (or is about another image) is refused, saying which.
#[derive(Clone, Debug)]
pub struct SignatureVerifier {
    key: VerifyingKey,
    source: AttestationSource,
}

impl SignatureVerifier {
    /// Trust `key`; read attestations from `source`.
    pub fn new(key: VerifyingKey, source: AttestationSource) -> Self {
        SignatureVerifier { key, source }
    }

    /// The envelopes attached to `digest`, with where each came from.
    async fn envelopes(&self, digest: &str) -> Result<Vec<(String, Envelope)>> {
        let mut out = Vec::new();
        match &self.source {
            AttestationSource::Layout(dir) => {
                let Ok(layout) = Layout::open(dir) else {
                    return Ok(out);
                };
                for referrer in layout.referrers(digest)? {
                    let manifest: Manifest =
                        oci::parse(&referrer.digest, &layout.read_blob(&referrer.digest)?)?;
                    for layer in manifest.layers.iter().filter(|l| l.media_type == DSSE) {
                        let envelope =
                            oci::parse(&layer.digest, &layout.read_blob(&layer.digest)?)?;
                        out.push((referrer.digest.clone(), envelope));
                    }
                }
            }
            AttestationSource::Registry {
                registry,
                repository,
            } => {
                let image: Reference = format!("{repository}@{digest}").parse()?;
                for referrer in registry.referrers(&image).await? {
                    let (_, bytes) = registry
                        .manifest(&image.with_digest(&referrer.digest)?)
                        .await?;
                    let manifest: Manifest = oci::parse(&referrer.digest, &bytes)?;
                    for layer in manifest.layers.iter().filter(|l| l.media_type == DSSE) {
                        let envelope = oci::parse(
                            &layer.digest,
                            &registry.blob(&image, &layer.digest).await?,
                        )?;
                        out.push((referrer.digest.clone(), envelope));
                    }
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl ArtifactVerifier for SignatureVerifier {
    async fn verify(
        &self,
        service: &ServiceId,
        environment: &EnvironmentName,
        artifact: &Digest,
    ) -> Result<()> {
        let digest = artifact.as_str();
        let refuse = |why: String| {
            Error::invalid(
                "artifact",
                format!("refusing to deploy {digest} as {service} to {environment}: {why}"),
            )
        };
        if !digest.starts_with("sha256:") {
            return Err(refuse(
                "it is not an image digest, so it carries no signature".into(),
            ));
        }
        let envelopes = self.envelopes(digest).await?;
        if envelopes.is_empty() {
            return Err(refuse(format!(
                "it is unsigned (no attestation refers to it; key {})",
                key_id(&self.key)
            )));
        }
        let mut problems = Vec::new();
        for (from, envelope) in envelopes {
            match envelope.verify(&self.key) {
                Ok(statement) => {
                    let about = statement["subject"][0]["digest"]["sha256"]
                        .as_str()
                        .unwrap_or("");
                    if statement["predicateType"] != PROVENANCE {
                        continue;
                    }
                    if format!("sha256:{about}") == digest {
                        return Ok(());
                    }
                    problems.push(format!("{from}: its statement is about sha256:{about}"));
                }
                Err(e) => problems.push(format!("{from}: {}", e.chain())),
            }
        }
        if problems.is_empty() {
            problems.push("no provenance statement among its attestations".into());
        }
        Err(refuse(problems.join("; ")))
    }
}
