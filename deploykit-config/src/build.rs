//! Build pipelines of command stages: [`CommandStage`] (a stage of commands, what
//! `deploykit.toml`'s `[[services.<name>.build]]` tables describe) and [`Pipeline`], which
//! validates, runs and cleans up any [`BuildStage`]s in order.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use typed_builder::TypedBuilder;

use deploykit_core::build::{Artifact, BuildContext, BuildStage};
use deploykit_core::{Digest, Error, Result};
/// A stage that runs commands: each step is a program and its arguments, run in the build's
/// working directory with the build's variables; the declared outputs become artifacts,
/// identified by the BLAKE3 digest of their content.
///
/// A step that exits non-zero, runs past the timeout or leaves a declared output missing
/// fails the stage with an error naming the stage, the step and what happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, TypedBuilder)]
#[builder(build_method(into = Result<CommandStage>))]
#[non_exhaustive]
pub struct CommandStage {
    /// The stage's name (`prepare`, `compile`, `test`, `package`, or your own).
    #[builder(setter(into))]
    pub name: String,
    /// The steps, in order: each a program and its arguments.
    pub steps: Vec<Vec<String>>,
    /// Files the stage produces, relative to the working directory.
    #[builder(default)]
    pub outputs: Vec<PathBuf>,
    /// Paths (files or directories, relative to the working directory) that `cleanup`
    /// removes.
    #[builder(default)]
    pub cleanup: Vec<PathBuf>,
    /// Longest a step may run (default 30 min).
    #[builder(default = Duration::from_secs(1800))]
    #[serde(with = "deploykit_core::time::duration_ms", rename = "timeout_ms")]
    pub timeout: Duration,
}

impl From<CommandStage> for Result<CommandStage> {
    fn from(stage: CommandStage) -> Self {
        stage.check()?;
        Ok(stage)
    }
}

impl CommandStage {
    fn check(&self) -> Result<()> {
        if self.name.is_empty() {
            return Err(Error::invalid("build.stage.name", "must not be empty"));
        }
        let field = |what: &str| format!("build.{}.{what}", self.name);
        if self.steps.is_empty() {
            return Err(Error::invalid(
                field("steps"),
                "a stage needs at least one step",
            ));
        }
        if let Some(i) = self.steps.iter().position(Vec::is_empty) {
            return Err(Error::invalid(
                field(&format!("steps[{i}]")),
                "a step needs a program",
            ));
        }
        deploykit_core::validate::check_duration(
            &field("timeout"),
            self.timeout,
            Duration::from_millis(1),
            deploykit_core::time::DAY,
        )?;
        for path in self.outputs.iter().chain(&self.cleanup) {
            if path.is_absolute()
                || path
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(Error::invalid(
                    field("outputs"),
                    format!(
                        "{} must stay inside the working directory (relative, no `..`)",
                        path.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn step_name(&self, i: usize) -> String {
        format!("build stage {} step {i} ({})", self.name, self.steps[i][0])
    }
}

/// Whether `program` can be run from `workdir`: a path that exists, or a name on `PATH`.
fn findable(program: &str, workdir: &Path) -> bool {
    if program.contains('/') {
        return workdir.join(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// The content digest of the file at `path`.
fn digest_file(path: &Path) -> std::io::Result<(Digest, u64)> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path)?)?;
    let size = std::fs::metadata(path)?.len();
    let digest = Digest::parse(&format!("blake3:{}", hasher.finalize().to_hex()))
        .expect("a blake3 hex digest parses");
    Ok((digest, size))
}

/// The last `n` bytes of `bytes` as text, for error messages.
fn tail(bytes: &[u8], n: usize) -> String {
    let start = bytes.len().saturating_sub(n);
    String::from_utf8_lossy(&bytes[start..]).trim().to_string()
}

#[async_trait]
impl BuildStage for CommandStage {
    fn name(&self) -> &str {
        &self.name
    }

    async fn validate(&self, ctx: &BuildContext) -> Result<()> {
        self.check()?;
        if !ctx.workdir.is_dir() {
            return Err(Error::invalid(
                format!("build.{}", self.name),
                format!("working directory {} does not exist", ctx.workdir.display()),
            ));
        }
        for (i, step) in self.steps.iter().enumerate() {
            if !findable(&step[0], &ctx.workdir) {
                return Err(Error::invalid(
                    format!("build.{}.steps[{i}]", self.name),
                    format!(
                        "program {:?} is not on PATH or in the working directory",
                        step[0]
                    ),
                ));
            }
        }
        Ok(())
    }

    async fn run(&self, ctx: &BuildContext) -> Result<Vec<Artifact>> {
        for (i, step) in self.steps.iter().enumerate() {
            let child = tokio::process::Command::new(&step[0])
                .args(&step[1..])
                .current_dir(&ctx.workdir)
                .envs(&ctx.variables)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output();
            let output = match tokio::time::timeout(self.timeout, child).await {
                Err(_) => {
                    return Err(Error::backend(
                        self.step_name(i),
                        format!("still running after {:?}; killed", self.timeout),
                    ));
                }
                Ok(Err(e)) => {
                    return Err(Error::backend(
                        self.step_name(i),
                        format!("cannot start: {e}"),
                    ));
                }
                Ok(Ok(output)) => output,
            };
            if !output.status.success() {
                return Err(Error::backend(
                    self.step_name(i),
                    format!("{}: {}", output.status, tail(&output.stderr, 2000)),
                ));
            }
        }
        let mut artifacts = Vec::new();
        for output in &self.outputs {
            let path = ctx.workdir.join(output);
            let (digest, size) = digest_file(&path).map_err(|e| {
                Error::backend(
                    format!("build stage {}", self.name),
                    format!("declared output {} was not produced: {e}", output.display()),
                )
            })?;
            artifacts.push(Artifact::in_file(
                output.display().to_string(),
                path,
                digest,
                size,
            ));
        }
        Ok(artifacts)
    }

    async fn cleanup(&self, ctx: &BuildContext) -> Result<()> {
        for path in &self.cleanup {
            let path = ctx.workdir.join(path);
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match removed {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::backend(
                        format!("build stage {} cleanup", self.name),
                        format!("cannot remove {}: {e}", path.display()),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Stages run in order: every stage is validated before any runs; each stage gets the
/// artifacts of the stages before it; every stage that ran is cleaned up (last first),
/// whether the build succeeded or not.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> deploykit_core::Result<()> {
/// use std::sync::Arc;
/// use deploykit_config::build::{CommandStage, Pipeline};
/// use deploykit_core::build::BuildContext;
/// let dir = std::env::temp_dir().join(format!("deploykit-doc-build-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let package = CommandStage::builder()
///     .name("package")
///     .steps(vec![vec!["sh".into(), "-c".into(), "echo hello > app.bin".into()]])
///     .outputs(vec!["app.bin".into()])
///     .build()?;
/// let pipeline = Pipeline::new(vec![Arc::new(package)])?;
/// let artifacts = pipeline.run(&BuildContext::new(&dir)).await?;
/// assert_eq!(artifacts[0].digest, deploykit_core::Digest::of_bytes(b"hello\n"));
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Pipeline {
    stages: Vec<Arc<dyn BuildStage>>,
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
        Ok(Pipeline { stages })
    }

    /// The stages' names, in order.
    pub fn stage_names(&self) -> impl Iterator<Item = &str> {
        self.stages.iter().map(|s| s.name())
    }

    /// Run the build; the artifacts of every stage, in order.
    pub async fn run(&self, ctx: &BuildContext) -> Result<Vec<Artifact>> {
        for stage in &self.stages {
            stage.validate(ctx).await?;
        }
        let mut ctx = ctx.clone();
        let mut produced = Vec::new();
        let mut ran = Vec::new();
        let mut outcome = Ok(());
        for stage in &self.stages {
            ran.push(stage);
            // `instrument`, not `entered()`: an entered span guard held across an await would
            // make this future `!Send` (and attach the span to whatever else the thread polls).
            let span = tracing::info_span!("build stage", stage = stage.name());
            match stage.run(&ctx).instrument(span).await {
                Ok(artifacts) => {
                    ctx.inputs.extend(artifacts.iter().cloned());
                    produced.extend(artifacts);
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
        outcome.map(|()| produced)
    }
}
