//! Builds: the [`BuildStage`] trait (one stage that produces artifacts identified by content
//! digest), what a stage gets ([`BuildContext`]), what it produces ([`Artifact`], of an
//! [`ArtifactKind`]) and what its result depends on ([`Fingerprint`], the build cache's key).
//! The command and image stages, the pipeline that runs stages in order and the cache are in
//! `deploykit-build`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::model::{Digest, EnvironmentName, ServiceId};

/// What an artifact is, as the specification sorts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ArtifactKind {
    /// A container image; its digest is the image manifest's `sha256:`.
    Image,
    /// Static assets (scripts, stylesheets, pages, pictures) served as they are.
    Static,
    /// Configuration files.
    Config,
    /// Documentation.
    Docs,
    /// Anything else: a binary, an archive.
    #[default]
    File,
}

impl ArtifactKind {
    /// The kind's name in `deploykit.toml` (`image`, `static`, `config`, `docs`, `file`).
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactKind::Image => "image",
            ArtifactKind::Static => "static",
            ArtifactKind::Config => "config",
            ArtifactKind::Docs => "docs",
            ArtifactKind::File => "file",
        }
    }
}

impl fmt::Display for ArtifactKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A build output, identified by the digest of its content (not by name or time), so the same
/// input always yields the same artifact id and a rebuild can be skipped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Artifact {
    /// Logical name, e.g. `web-image` or `server-binary`.
    pub name: String,
    /// What it is.
    #[serde(default)]
    pub kind: ArtifactKind,
    /// Content digest.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// Where the content is, if it is a local file.
    pub path: Option<PathBuf>,
}

impl Artifact {
    /// The artifact `name` stored in the file at `path`, of `size` bytes with content `digest`.
    pub fn in_file(name: impl Into<String>, path: PathBuf, digest: Digest, size: u64) -> Self {
        Artifact {
            name: name.into(),
            kind: ArtifactKind::File,
            digest,
            size,
            path: Some(path),
        }
    }

    /// An artifact of in-memory `content` named `name`.
    pub fn from_bytes(name: impl Into<String>, content: &[u8]) -> Self {
        Artifact {
            name: name.into(),
            kind: ArtifactKind::File,
            digest: Digest::of_bytes(content),
            size: content.len() as u64,
            path: None,
        }
    }

    /// The same artifact, of `kind`.
    pub fn of_kind(mut self, kind: ArtifactKind) -> Self {
        self.kind = kind;
        self
    }
}

/// What a stage gets: a working directory, the artifacts of earlier stages and variables.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct BuildContext {
    /// Scratch directory owned by this build.
    pub workdir: PathBuf,
    /// Artifacts produced by earlier stages.
    pub inputs: Vec<Artifact>,
    /// Build variables.
    pub variables: BTreeMap<String, String>,
}

/// The four stages the specification names, and the rest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StageKind {
    /// Fetch dependencies, generate code.
    Prepare,
    /// Compile, bundle, minify.
    Compile,
    /// Run tests.
    Test,
    /// Package the outputs: an image, an archive.
    Package,
    /// Anything else.
    #[default]
    Custom,
}

impl StageKind {
    /// The kind a stage named `name` has when none is given: `prepare`, `compile`, `test` and
    /// `package` are those kinds, anything else is custom.
    pub fn from_name(name: &str) -> Self {
        match name {
            "prepare" => StageKind::Prepare,
            "compile" => StageKind::Compile,
            "test" => StageKind::Test,
            "package" => StageKind::Package,
            _ => StageKind::Custom,
        }
    }
}

/// What a stage's result depends on, part by part (`steps`, `input src/app.js`, `tool node`,
/// `variables`, ...), each part a digest or a short value. Two runs with equal fingerprints
/// produce the same outputs, so the second can reuse the first's; the parts that differ say
/// why a stage ran again.
///
/// ```
/// use deploykit_core::build::Fingerprint;
/// let mut before = Fingerprint::default();
/// before.insert("steps", "esbuild src/app.js --bundle");
/// before.insert("input src/app.js", "blake3:aa");
/// let mut after = before.clone();
/// after.insert("input src/app.js", "blake3:bb");
/// after.insert("input src/util.js", "blake3:cc");
/// assert_ne!(before.key(), after.key());
/// assert_eq!(after.changes(&before), ["input src/app.js changed", "input src/util.js added"]);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fingerprint(BTreeMap<String, String>);

impl Fingerprint {
    /// Sets part `part` to `value`.
    pub fn insert(&mut self, part: impl Into<String>, value: impl Into<String>) {
        self.0.insert(part.into(), value.into());
    }

    /// The parts, by name.
    pub fn parts(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// The cache key: the BLAKE3 digest (hex) of every part's name and value.
    pub fn key(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        for (part, value) in &self.0 {
            for text in [part, value] {
                hasher.update(&(text.len() as u64).to_le_bytes());
                hasher.update(text.as_bytes());
            }
        }
        hasher.finalize().to_hex().to_string()
    }

    /// What differs from `before`, a line per part: `… changed`, `… added`, `… removed`.
    pub fn changes(&self, before: &Fingerprint) -> Vec<String> {
        let mut out = Vec::new();
        for (part, value) in &self.0 {
            match before.0.get(part) {
                Some(old) if old == value => {}
                Some(_) => out.push(format!("{part} changed")),
                None => out.push(format!("{part} added")),
            }
        }
        for part in before.0.keys().filter(|p| !self.0.contains_key(*p)) {
            out.push(format!("{part} removed"));
        }
        out
    }
}

/// One stage of a build pipeline (prepare, compile, test, package, or your own).
///
/// A pipeline calls `validate` on every stage before running any, then `run` in order, then
/// `cleanup` on every stage that ran, whether the build succeeded or not. A stage with a
/// [`fingerprint`](BuildStage::fingerprint) can be skipped by a build cache: its
/// [`outputs`](BuildStage::outputs) are restored and its artifacts reused.
#[async_trait]
pub trait BuildStage: Send + Sync + fmt::Debug {
    /// The stage's name, unique within a pipeline.
    fn name(&self) -> &str;

    /// Which of the specification's stages this is.
    fn kind(&self) -> StageKind {
        StageKind::from_name(self.name())
    }

    /// What the stage's result depends on, computed before it runs; `None` (the default) if
    /// it cannot say, and then it always runs.
    async fn fingerprint(&self, ctx: &BuildContext) -> Result<Option<Fingerprint>> {
        let _ = ctx;
        Ok(None)
    }

    /// The files and directories (relative to the working directory) the stage makes, which a
    /// cache stores and restores.
    fn outputs(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    /// Whether `artifacts`, recorded by an earlier run with the same fingerprint, can be used
    /// as they are once the outputs are restored (an image stage checks that its image is
    /// still in the layout). Default: yes.
    async fn reusable(&self, ctx: &BuildContext, artifacts: &[Artifact]) -> Result<bool> {
        let _ = (ctx, artifacts);
        Ok(true)
    }

    /// Check that the stage can run with this context (tools present, inputs there) without
    /// side effects.
    async fn validate(&self, ctx: &BuildContext) -> Result<()>;

    /// Run the stage and return the artifacts it produced.
    async fn run(&self, ctx: &BuildContext) -> Result<Vec<Artifact>>;

    /// Remove whatever the stage left behind besides its artifacts. Must be idempotent.
    async fn cleanup(&self, ctx: &BuildContext) -> Result<()>;
}

impl BuildContext {
    /// A context for a build in `workdir`, with no inputs and no variables.
    pub fn new(workdir: impl Into<PathBuf>) -> Self {
        BuildContext {
            workdir: workdir.into(),
            inputs: Vec::new(),
            variables: BTreeMap::new(),
        }
    }
}

/// What may be deployed: an orchestrator with a verifier
/// ([`OrchestratorBuilder::artifact_verifier`](crate::OrchestratorBuilder::artifact_verifier))
/// asks it about every new revision's artifact (deploys, previews, releases) before a
/// deployment is created; a refusal is audited and returned, and nothing starts. Rollbacks go
/// back to revisions that were verified when they were deployed.
///
/// `deploykit-build`'s `SignatureVerifier` refuses an image without a valid signed provenance
/// statement.
#[async_trait]
pub trait ArtifactVerifier: Send + Sync + fmt::Debug {
    /// `Ok` if `artifact` may run as `service` in `environment`; otherwise an error saying why
    /// not.
    async fn verify(
        &self,
        service: &ServiceId,
        environment: &EnvironmentName,
        artifact: &Digest,
    ) -> Result<()>;
}
