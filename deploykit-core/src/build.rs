//! Builds: the [`BuildStage`] trait (one stage that produces artifacts identified by content
//! digest), what a stage gets ([`BuildContext`]) and what it produces ([`Artifact`]). The
//! command stage and the pipeline that runs stages in order are in `deploykit-config`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::model::Digest;

/// A build output, identified by the digest of its content (not by name or time), so the same
/// input always yields the same artifact id and a rebuild can be skipped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Artifact {
    /// Logical name, e.g. `web-image` or `server-binary`.
    pub name: String,
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
            digest,
            size,
            path: Some(path),
        }
    }

    /// An artifact of in-memory `content` named `name`.
    pub fn from_bytes(name: impl Into<String>, content: &[u8]) -> Self {
        Artifact {
            name: name.into(),
            digest: Digest::of_bytes(content),
            size: content.len() as u64,
            path: None,
        }
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

/// One stage of a build pipeline (prepare, compile, test, package, or your own).
///
/// A pipeline calls `validate` on every stage before running any, then `run` in order, then
/// `cleanup` on every stage that ran, whether the build succeeded or not.
#[async_trait]
pub trait BuildStage: Send + Sync + fmt::Debug {
    /// The stage's name, unique within a pipeline.
    fn name(&self) -> &str;

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
