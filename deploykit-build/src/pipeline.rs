//! [`Pipeline`]: stages run in order, each seeing the outputs of those before it, with an
//! optional [`BuildCache`] that skips a stage whose fingerprint it has seen, and a [`Build`]
//! report that says why each stage ran or was skipped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use deploykit_core::build::{
    Artifact, ArtifactKind, BuildContext, BuildStage, Fingerprint, StageKind,
};
use deploykit_core::{Error, Result};

use crate::cache::BuildCache;

/// What happened to one stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The stage ran, for these reasons (what changed since its last run, or why it could not
    /// be skipped).
    Ran(Vec<String>),
    /// The stage was skipped: its result under this cache key was restored.
    Reused {
        /// The fingerprint's key.
        key: String,
    },
}

impl Outcome {
    /// `ran` or `skipped`.
    pub fn verb(&self) -> &'static str {
        match self {
            Outcome::Ran(_) => "ran",
            Outcome::Reused { .. } => "skipped",
        }
    }

    /// Why, in a line.
    pub fn reason(&self) -> String {
        match self {
            Outcome::Ran(why) => why.join("; "),
            Outcome::Reused { key } => format!(
                "inputs unchanged: outputs restored from the cache (key {})",
                &key[..16.min(key.len())]
            ),
        }
    }
}

/// One stage of a finished build.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StageRun {
    /// The stage's name.
    pub name: String,
    /// Which of the specification's stages it is.
    pub kind: StageKind,
    /// Whether it ran, and why.
    pub outcome: Outcome,
    /// How long it took (running, or restoring).
    pub elapsed: Duration,
    /// What it produced.
    pub artifacts: Vec<Artifact>,
    /// What its result depends on, if it said.
    pub fingerprint: Option<Fingerprint>,
}

/// A finished build: every stage's report and every artifact, in order.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Build {
    /// The stages, in order.
    pub stages: Vec<StageRun>,
    /// The artifacts of every stage, in order.
    pub artifacts: Vec<Artifact>,
}

impl Build {
    /// The artifact a deployment runs: the last image if there is one, else the first
    /// artifact.
    pub fn deployable(&self) -> Option<&Artifact> {
        self.artifacts
            .iter()
            .rev()
            .find(|a| a.kind == ArtifactKind::Image)
            .or(self.artifacts.first())
    }

    /// One line per stage: `compile: ran (input src/app.js changed)`, `test: reused …`.
    pub fn explain(&self) -> String {
        let mut out = String::new();
        for stage in &self.stages {
            let line = match &stage.outcome {
                Outcome::Ran(why) => format!("ran ({})", why.join("; ")),
                Outcome::Reused { key } => format!(
                    "skipped: inputs unchanged, outputs restored from the cache (key {})",
                    &key[..16.min(key.len())]
                ),
            };
            out.push_str(&format!(
                "{} [{:?}]: {line} in {:.2?}\n",
                stage.name, stage.kind, stage.elapsed
            ));
        }
        out
    }
}

/// The variable holding the path of an output of stage `stage` (`dist/app.js` of `compile`
/// is `DEPLOYKIT_OUT_COMPILE_DIST_APP_JS`): later stages' commands find earlier outputs there.
pub fn output_variable(stage: &str, artifact: &str) -> String {
    let name: String = format!("{stage}_{artifact}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("DEPLOYKIT_OUT_{name}")
}

/// Stages run in order: every stage is validated before any runs; each stage gets the
/// artifacts of the stages before it (and their paths in [`output_variable`]s); every stage
/// that ran is cleaned up (last first), whether the build succeeded or not. With a cache, a
/// stage whose fingerprint was seen is skipped and its outputs restored.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> deploykit_core::Result<()> {
/// use std::sync::Arc;
/// use deploykit_build::{CommandStage, Pipeline};
/// use deploykit_core::build::BuildContext;
/// let dir = tempfile::tempdir().unwrap();
/// let package = CommandStage::builder()
///     .name("package")
///     .steps(vec![vec!["sh".into(), "-c".into(), "echo hello > app.bin".into()]])
///     .outputs(vec!["app.bin".into()])
///     .build()?;
/// let pipeline = Pipeline::new(vec![Arc::new(package)])?;
/// let build = pipeline.run(&BuildContext::new(dir.path())).await?;
/// assert_eq!(build.artifacts[0].digest, deploykit_core::Digest::of_bytes(b"hello\n"));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Pipeline {
    stages: Vec<Arc<dyn BuildStage>>,
    cache: Option<(BuildCache, String)>,
}

impl Pipeline {
    /// A pipeline of `stages`; names must be unique.
    pub fn new(stages: Vec<Arc<dyn BuildStage>>) -> Result<Self> {
        for (i, s) in stages.iter().enumerate() {
            if stages[..i].iter().any(|o| o.name() == s.name()) {
                return Err(Error::invalid(
                    "build.stages",
                    format!("stage {} appears twice", s.name()),
                ));
            }
        }
        Ok(Pipeline {
            stages,
            cache: None,
        })
    }

    /// Skip stages whose result `cache` has; `scope` names this pipeline (the service) for
    /// explanations.
    pub fn with_cache(mut self, cache: BuildCache, scope: impl Into<String>) -> Self {
        self.cache = Some((cache, scope.into()));
        self
    }

    /// The stages' names, in order.
    pub fn stage_names(&self) -> impl Iterator<Item = &str> {
        self.stages.iter().map(|s| s.name())
    }

    /// Whether the pipeline has no stages.
    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// Run the build.
    pub async fn run(&self, ctx: &BuildContext) -> Result<Build> {
        for stage in &self.stages {
            stage.validate(ctx).await?;
        }
        let mut ctx = ctx.clone();
        let mut build = Build {
            stages: Vec::new(),
            artifacts: Vec::new(),
        };
        let mut ran = Vec::new();
        let mut outcome = Ok(());
        for stage in &self.stages {
            ran.push(stage);
            // `instrument`, not `entered()`: an entered span guard held across an await would
            // make this future `!Send` (and attach the span to whatever else the thread polls).
            let span = tracing::info_span!("build stage", stage = stage.name());
            let started = Instant::now();
            match self.stage(stage.as_ref(), &ctx).instrument(span).await {
                Ok((artifacts, result, fingerprint)) => {
                    for a in &artifacts {
                        if let Some(path) = &a.path {
                            ctx.variables.insert(
                                output_variable(stage.name(), &a.name),
                                path.display().to_string(),
                            );
                        }
                    }
                    ctx.inputs.extend(artifacts.iter().cloned());
                    build.artifacts.extend(artifacts.iter().cloned());
                    build.stages.push(StageRun {
                        name: stage.name().to_string(),
                        kind: stage.kind(),
                        outcome: result,
                        elapsed: started.elapsed(),
                        artifacts,
                        fingerprint,
                    });
                }
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        for stage in ran.into_iter().rev() {
            if let Err(e) = stage.cleanup(&ctx).await {
                tracing::warn!(stage = stage.name(), error = %e.chain(), "cleanup failed");
                if outcome.is_ok() {
                    outcome = Err(e);
                }
            }
        }
        outcome.map(|()| build)
    }

    /// One stage: reused from the cache if it can be, else run (and stored).
    async fn stage(
        &self,
        stage: &dyn BuildStage,
        ctx: &BuildContext,
    ) -> Result<(Vec<Artifact>, Outcome, Option<Fingerprint>)> {
        let fingerprint = stage.fingerprint(ctx).await?;
        let Some((cache, scope)) = &self.cache else {
            let why = vec!["no build cache".to_string()];
            return Ok((stage.run(ctx).await?, Outcome::Ran(why), fingerprint));
        };
        let Some(fingerprint) = fingerprint else {
            let why = "declares no inputs, so it is never skipped".to_string();
            return Ok((stage.run(ctx).await?, Outcome::Ran(vec![why]), None));
        };
        let key = fingerprint.key();
        let mut why = Vec::new();
        if let Some(entry) = cache.lookup(&key).await? {
            match cache.restore(&ctx.workdir, &entry, &stage.outputs()).await {
                Ok(artifacts) if stage.reusable(ctx, &artifacts).await? => {
                    cache.set_last(scope, stage.name(), &fingerprint).await?;
                    return Ok((artifacts, Outcome::Reused { key }, Some(fingerprint)));
                }
                Ok(_) => why.push("its cached result is gone from where it was kept".to_string()),
                Err(e) => why.push(format!(
                    "its cached outputs could not be restored: {}",
                    e.chain()
                )),
            }
        } else {
            match cache.last(scope, stage.name()).await? {
                None => why.push("first build with this cache".to_string()),
                Some(last) => {
                    let changes = fingerprint.changes(&last);
                    if changes.is_empty() {
                        why.push("its cache entry is missing".to_string());
                    }
                    why.extend(changes);
                }
            }
        }
        let artifacts = stage.run(ctx).await?;
        cache
            .store(
                &ctx.workdir,
                stage.name(),
                &fingerprint,
                &stage.outputs(),
                &artifacts,
            )
            .await?;
        cache.set_last(scope, stage.name(), &fingerprint).await?;
        Ok((artifacts, Outcome::Ran(why), Some(fingerprint)))
    }
}
