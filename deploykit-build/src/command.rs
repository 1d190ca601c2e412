//! [`CommandStage`]: a stage of commands (what `deploykit.toml`'s `[[services.<name>.build]]`
//! tables describe), with the checks its outputs must pass before later stages see them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use typed_builder::TypedBuilder;

use deploykit_core::build::{
    Artifact, ArtifactKind, BuildContext, BuildStage, Fingerprint, StageKind,
};
use deploykit_core::{Error, Result};

use crate::files::{self, check_relative};

/// A file or directory a stage produces, and what kind of artifact it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Output {
    /// Relative to the working directory.
    pub path: PathBuf,
    /// What it is (default: a file).
    #[serde(default)]
    pub kind: ArtifactKind,
}

impl Output {
    /// The output at `path`, of `kind`.
    pub fn new(path: impl Into<PathBuf>, kind: ArtifactKind) -> Self {
        Output {
            path: path.into(),
            kind,
        }
    }
}

impl From<&str> for Output {
    fn from(path: &str) -> Self {
        Output::new(path, ArtifactKind::File)
    }
}

/// A check on a stage's outputs, run after its steps: a failing check fails the stage, so
/// later stages never see outputs that did not pass.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Check {
    /// The file (or directory, counting every file in it) at `path` exists and its size is
    /// within the bounds.
    Size {
        /// Relative to the working directory.
        path: PathBuf,
        /// Fewest bytes (default 1: not empty).
        #[serde(default = "one")]
        min: u64,
        /// Most bytes.
        #[serde(default)]
        max: Option<u64>,
    },
    /// A command that must exit 0 (run in the working directory with the build's variables).
    Command(Vec<String>),
}

fn one() -> u64 {
    1
}

/// A stage that runs commands: each step is a program and its arguments, run in the build's
/// working directory with the build's variables (and the paths of earlier stages' outputs);
/// then its checks run; its outputs become artifacts, identified by the BLAKE3 digest of their
/// content (a directory by the digest of its tree).
///
/// A step that exits non-zero, runs past the timeout or leaves a declared output missing
/// fails the stage with an error naming the stage, the step and what happened.
///
/// With `inputs` declared, the stage has a [`Fingerprint`] (its steps, checks, outputs,
/// variables, the content of every input file and the output of every `tools` command) and a
/// build cache can skip it; without, it always runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, TypedBuilder)]
#[builder(build_method(into = Result<CommandStage>))]
#[non_exhaustive]
pub struct CommandStage {
    /// The stage's name (`prepare`, `compile`, `test`, `package`, or your own).
    #[builder(setter(into))]
    pub name: String,
    /// Which of the specification's stages it is (default: from the name).
    #[builder(default, setter(strip_option))]
    #[serde(default)]
    pub kind: Option<StageKind>,
    /// The steps, in order: each a program and its arguments.
    pub steps: Vec<Vec<String>>,
    /// Files and directories (relative to the working directory) whose content the result
    /// depends on.
    #[builder(default)]
    #[serde(default)]
    pub inputs: Vec<PathBuf>,
    /// Commands whose output names a tool's version (`["node", "--version"]`): part of the
    /// fingerprint, so a new compiler re-runs the stage.
    #[builder(default)]
    #[serde(default)]
    pub tools: Vec<Vec<String>>,
    /// What the stage produces.
    #[builder(default)]
    #[serde(default)]
    pub outputs: Vec<Output>,
    /// Checks on the outputs.
    #[builder(default)]
    #[serde(default)]
    pub checks: Vec<Check>,
    /// Paths (files or directories, relative to the working directory) that `cleanup`
    /// removes.
    #[builder(default)]
    #[serde(default)]
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
    fn field(&self, what: &str) -> String {
        format!("build.{}.{what}", self.name)
    }

    fn check(&self) -> Result<()> {
        if self.name.is_empty() {
            return Err(Error::invalid("build.stage.name", "must not be empty"));
        }
        if self.steps.is_empty() {
            return Err(Error::invalid(
                self.field("steps"),
                "a stage needs at least one step",
            ));
        }
        for (list, what) in [(&self.steps, "steps"), (&self.tools, "tools")] {
            if let Some(i) = list
                .iter()
                .position(|s| s.first().is_none_or(|p| p.is_empty()))
            {
                return Err(Error::invalid(
                    self.field(&format!("{what}[{i}]")),
                    "a command needs a program",
                ));
            }
        }
        deploykit_core::validate::check_duration(
            &self.field("timeout"),
            self.timeout,
            Duration::from_millis(1),
            deploykit_core::time::DAY,
        )?;
        for (i, o) in self.outputs.iter().enumerate() {
            check_relative(&self.field(&format!("outputs[{i}]")), &o.path)?;
        }
        for (i, p) in self.inputs.iter().enumerate() {
            check_relative(&self.field(&format!("inputs[{i}]")), p)?;
        }
        for (i, p) in self.cleanup.iter().enumerate() {
            check_relative(&self.field(&format!("cleanup[{i}]")), p)?;
        }
        for (i, c) in self.checks.iter().enumerate() {
            let field = self.field(&format!("checks[{i}]"));
            match c {
                Check::Size { path, min, max } => {
                    check_relative(&field, path)?;
                    if max.is_some_and(|max| max < *min) {
                        return Err(Error::invalid(
                            field,
                            format!("max ({}) is below min ({min})", max.unwrap_or_default()),
                        ));
                    }
                }
                Check::Command(argv) if argv.first().is_none_or(|p| p.is_empty()) => {
                    return Err(Error::invalid(field, "a command needs a program"));
                }
                Check::Command(_) => {}
            }
        }
        Ok(())
    }

    /// Runs `argv` in the working directory; `what` names it in errors.
    async fn command(&self, ctx: &BuildContext, argv: &[String], what: &str) -> Result<Vec<u8>> {
        let child = tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .current_dir(&ctx.workdir)
            .envs(&ctx.variables)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = match tokio::time::timeout(self.timeout, child).await {
            Err(_) => {
                return Err(Error::backend(
                    what,
                    format!("still running after {:?}; killed", self.timeout),
                ));
            }
            Ok(Err(e)) => return Err(Error::backend(what, format!("cannot start: {e}"))),
            Ok(Ok(output)) => output,
        };
        if !output.status.success() {
            let mut message = tail(&output.stderr, 2000);
            if message.is_empty() {
                message = tail(&output.stdout, 2000);
            }
            return Err(Error::backend(
                what,
                format!("{}: {message}", output.status),
            ));
        }
        Ok(output.stdout)
    }

    async fn run_checks(&self, ctx: &BuildContext) -> Result<()> {
        for (i, check) in self.checks.iter().enumerate() {
            let what = format!("build stage {} check {i}", self.name);
            match check {
                Check::Size { path, min, max } => {
                    let files = files::walk(&ctx.workdir, path)
                        .map_err(|e| Error::backend(&what, format!("{}: {e}", path.display())))?;
                    let size: u64 = files.iter().map(|f| f.size).sum();
                    if size < *min {
                        return Err(Error::backend(
                            what,
                            format!(
                                "{} is {size} bytes, below the minimum {min}",
                                path.display()
                            ),
                        ));
                    }
                    if let Some(max) = max
                        && size > *max
                    {
                        return Err(Error::backend(
                            what,
                            format!(
                                "{} is {size} bytes, above the maximum {max}",
                                path.display()
                            ),
                        ));
                    }
                }
                Check::Command(argv) => {
                    self.command(ctx, argv, &format!("{what} ({})", argv.join(" ")))
                        .await?;
                }
            }
        }
        Ok(())
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

    fn kind(&self) -> StageKind {
        self.kind
            .unwrap_or_else(|| StageKind::from_name(&self.name))
    }

    async fn validate(&self, ctx: &BuildContext) -> Result<()> {
        self.check()?;
        if !ctx.workdir.is_dir() {
            return Err(Error::invalid(
                format!("build.{}", self.name),
                format!("working directory {} does not exist", ctx.workdir.display()),
            ));
        }
        let commands = self
            .steps
            .iter()
            .map(|s| ("steps", s))
            .chain(self.tools.iter().map(|t| ("tools", t)));
        for (i, (what, argv)) in commands.enumerate() {
            if !findable(&argv[0], &ctx.workdir) {
                let i = if what == "steps" {
                    i
                } else {
                    i - self.steps.len()
                };
                return Err(Error::invalid(
                    self.field(&format!("{what}[{i}]")),
                    format!(
                        "program {:?} is not on PATH or in the working directory",
                        argv[0]
                    ),
                ));
            }
        }
        Ok(())
    }

    async fn fingerprint(&self, ctx: &BuildContext) -> Result<Option<Fingerprint>> {
        if self.inputs.is_empty() {
            return Ok(None);
        }
        let mut fp = Fingerprint::default();
        fp.insert("kind", format!("{:?}", self.kind()));
        fp.insert("steps", json(&self.steps));
        fp.insert("outputs", json(&self.outputs));
        fp.insert("checks", json(&self.checks));
        for (name, value) in &ctx.variables {
            // Values may be secrets: only their digest is kept.
            fp.insert(
                format!("variable {name}"),
                blake3::hash(value.as_bytes()).to_hex().to_string(),
            );
        }
        for (i, input) in self.inputs.iter().enumerate() {
            let found = files::walk(&ctx.workdir, input).map_err(|e| {
                Error::invalid(
                    self.field(&format!("inputs[{i}]")),
                    format!("{}: {e}", input.display()),
                )
            })?;
            for f in found {
                let mode = if f.executable { " (executable)" } else { "" };
                fp.insert(format!("input {}", f.path), format!("{}{mode}", f.digest));
            }
        }
        for (i, tool) in self.tools.iter().enumerate() {
            let out = self
                .command(
                    ctx,
                    tool,
                    &format!("build stage {} tool {i} ({})", self.name, tool.join(" ")),
                )
                .await?;
            fp.insert(format!("tool {}", tool.join(" ")), tail(&out, 200));
        }
        Ok(Some(fp))
    }

    fn outputs(&self) -> Vec<PathBuf> {
        self.outputs.iter().map(|o| o.path.clone()).collect()
    }

    async fn run(&self, ctx: &BuildContext) -> Result<Vec<Artifact>> {
        for (i, step) in self.steps.iter().enumerate() {
            let what = format!("build stage {} step {i} ({})", self.name, step[0]);
            self.command(ctx, step, &what).await?;
        }
        let mut artifacts = Vec::new();
        for output in &self.outputs {
            let found = files::walk(&ctx.workdir, &output.path).map_err(|e| {
                Error::backend(
                    format!("build stage {}", self.name),
                    format!(
                        "declared output {} was not produced: {e}",
                        output.path.display()
                    ),
                )
            })?;
            let path = ctx.workdir.join(&output.path);
            let (digest, size) = if path.is_dir() {
                (
                    files::tree_digest(&found),
                    found.iter().map(|f| f.size).sum(),
                )
            } else {
                (found[0].digest.clone(), found[0].size)
            };
            artifacts.push(
                Artifact::in_file(files::slash_path(&output.path), path, digest, size)
                    .of_kind(output.kind),
            );
        }
        self.run_checks(ctx).await?;
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

/// JSON of a setting, for a fingerprint part.
fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("build settings serialize")
}
