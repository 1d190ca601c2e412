//! `[services.<name>]`: what a service runs, its settings and health checks, its
//! `[[services.<name>.build]]` stages and its `[services.<name>.package]` image.
//!
//! A service must have something to run, checked when the file loads rather than at deploy
//! time: a `command` (the program and its arguments, for the local environment), an `image`
//! (a container image repository, for Kubernetes), or build stages with `outputs` (the
//! artifact the build produces is what gets deployed, as `deploykit deploy` decides).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use super::health::{self, HealthToml};
use super::traffic::{self, TrafficToml};
use super::{Located, ResourcesToml, duration};
use deploykit_build::{Check, CommandStage, ImageStage, Output, Pipeline};
use deploykit_core::Result;
use deploykit_core::build::{ArtifactKind, BuildStage, StageKind};
use deploykit_core::model::{HealthChecks, ServiceSpec};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServiceToml {
    command: Option<Spanned<Vec<String>>>,
    /// The container image repository (no tag or digest) Kubernetes runs.
    image: Option<Spanned<String>>,
    port: Option<u16>,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    #[serde(default)]
    secrets: BTreeMap<String, String>,
    health: Option<HealthToml>,
    resources: Option<ResourcesToml>,
    traffic: Option<Spanned<TrafficToml>>,
    #[serde(default)]
    build: Vec<Spanned<BuildStageToml>>,
    package: Option<Spanned<PackageToml>>,
}

/// `[[services.<name>.build]]`: one build stage of commands.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BuildStageToml {
    name: String,
    kind: Option<StageKind>,
    steps: Vec<Vec<String>>,
    #[serde(default)]
    inputs: Vec<PathBuf>,
    #[serde(default)]
    tools: Vec<Vec<String>>,
    #[serde(default)]
    outputs: Vec<OutputToml>,
    #[serde(default)]
    checks: Vec<Check>,
    #[serde(default)]
    cleanup: Vec<PathBuf>,
    timeout: Option<String>,
}

/// An output: a path, or `{ path = "dist", kind = "static" }`.
#[derive(Deserialize)]
#[serde(untagged)]
enum OutputToml {
    Path(PathBuf),
    Typed { path: PathBuf, kind: Option<String> },
}

/// The artifact kinds by their names in the file.
const ARTIFACT_KINDS: [ArtifactKind; 5] = [
    ArtifactKind::Image,
    ArtifactKind::Static,
    ArtifactKind::Config,
    ArtifactKind::Docs,
    ArtifactKind::File,
];

/// `[services.<name>.package]`: the image the build's outputs go into.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PackageToml {
    base: Option<String>,
    /// Path in the image → file or directory of the configuration's directory.
    files: BTreeMap<String, PathBuf>,
    #[serde(default)]
    entrypoint: Vec<String>,
    #[serde(default)]
    cmd: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    workdir: Option<String>,
    user: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// Where `deploykit.toml`'s images are written (an OCI layout), relative to its directory.
pub const IMAGE_LAYOUT: &str = ".deploykit/images";

/// A service as the file describes it, validated.
pub(crate) struct LoadedService {
    /// The service.
    pub(crate) spec: ServiceSpec,
    /// Its build stages, in order (the image stage last).
    pub(crate) build: Vec<Arc<dyn BuildStage>>,
    /// Its image repository, if it names one.
    pub(crate) image: Option<String>,
}

/// Load `[services.<name>]`.
pub(crate) fn load(
    at: &Located<'_>,
    name: &str,
    spanned: &Spanned<ServiceToml>,
) -> Result<LoadedService> {
    let span = spanned.span();
    let path = format!("services.{name}");
    let s = spanned.get_ref();
    let health = match &s.health {
        Some(h) => health::checks(at, &format!("{path}.health"), h)?,
        None => HealthChecks::default(),
    };
    let command = match &s.command {
        Some(command) => program_checked(at, &path, command)?,
        None => Vec::new(),
    };
    let mut spec = ServiceSpec::builder()
        .name(name)
        .command(command)
        .variables(s.variables.clone())
        .secrets(s.secrets.clone())
        .health(health)
        .resources(
            s.resources
                .as_ref()
                .map(ResourcesToml::to_resources)
                .unwrap_or_default(),
        )
        .build()
        .map_err(|e| at.error(span.clone(), &path, e))?;
    spec.port = s.port;
    if let Some(t) = &s.traffic {
        spec.traffic = traffic::policy(at, &format!("{path}.traffic"), t)?;
    }
    spec.validate()
        .map_err(|e| at.error(span.clone(), &path, e))?;
    let mut build = stages(at, &path, &s.build)?;
    if let Some(package) = &s.package {
        build.push(Arc::new(image_stage(at, name, &path, s.port, package)?));
    }
    Pipeline::new(build.clone()).map_err(|e| at.error(span.clone(), &path, e))?;
    let image = s
        .image
        .as_ref()
        .map(|image| repository(at, &path, image))
        .transpose()?;
    if spec.command.is_empty() && image.is_none() && !build.iter().any(|b| produces(b.as_ref())) {
        let mut reason = format!(
            "a service needs something to run: a `command` (like command = [\"./{name}\"]), \
             an `image` (a container image repository, for Kubernetes) or \
             [[services.{name}.build]] stages whose `outputs` are its artifact"
        );
        if !build.is_empty() {
            reason.push_str("; its build stages declare no `outputs`");
        }
        let span = s.command.as_ref().map_or(span, Spanned::span);
        return Err(at.error(span, &format!("{path}.command"), reason));
    }
    Ok(LoadedService { spec, build, image })
}

/// The command, refused if its program is an empty string.
fn program_checked(
    at: &Located<'_>,
    path: &str,
    command: &Spanned<Vec<String>>,
) -> Result<Vec<String>> {
    let argv = command.get_ref();
    if argv
        .first()
        .is_some_and(|program| program.trim().is_empty())
    {
        return Err(at.error(
            command.span(),
            &format!("{path}.command[0]"),
            format!(
                "the program to run is {:?}: the command's first element names the program, \
                 like command = [\"./web\", \"--port\", \"8080\"]",
                argv[0]
            ),
        ));
    }
    Ok(argv.clone())
}

/// The image repository, refused if empty, or if it carries a tag or digest (each revision
/// supplies its own).
fn repository(at: &Located<'_>, path: &str, image: &Spanned<String>) -> Result<String> {
    let field = format!("{path}.image");
    let text = image.get_ref();
    let last_segment = text.rsplit('/').next().unwrap_or_default();
    let problem = if text.trim().is_empty() {
        Some("is empty")
    } else if text.chars().any(char::is_whitespace) {
        Some("holds whitespace")
    } else if text.contains('@') || last_segment.contains(':') {
        Some("has a tag or digest, but each revision supplies its own")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(at.error(
            image.span(),
            &field,
            format!(
                "{text:?} {problem}: give the image repository alone, like \
                 \"ghcr.io/acme/web\""
            ),
        )),
        None => Ok(text.clone()),
    }
}

/// Whether a stage makes something to deploy: outputs, or an image.
fn produces(stage: &dyn BuildStage) -> bool {
    !stage.outputs().is_empty() || stage.kind() == StageKind::Package
}

/// The command stages.
fn stages(
    at: &Located<'_>,
    path: &str,
    build: &[Spanned<BuildStageToml>],
) -> Result<Vec<Arc<dyn BuildStage>>> {
    let mut commands: Vec<Arc<dyn BuildStage>> = Vec::new();
    for (i, stage) in build.iter().enumerate() {
        let stage_path = format!("{path}.build[{i}]");
        let b = stage.get_ref();
        let mut outputs = Vec::new();
        for (j, o) in b.outputs.iter().enumerate() {
            outputs.push(match o {
                OutputToml::Path(path) => Output::new(path.clone(), ArtifactKind::File),
                OutputToml::Typed { path, kind: None } => {
                    Output::new(path.clone(), ArtifactKind::File)
                }
                OutputToml::Typed {
                    path,
                    kind: Some(kind),
                } => {
                    let Some(kind) = ARTIFACT_KINDS.into_iter().find(|k| k.as_str() == kind) else {
                        let names: Vec<_> = ARTIFACT_KINDS.iter().map(|k| k.as_str()).collect();
                        return Err(at.error(
                            stage.span(),
                            &format!("{stage_path}.outputs[{j}].kind"),
                            format!(
                                "{kind:?} is not an artifact kind: one of {}",
                                names.join(", ")
                            ),
                        ));
                    };
                    Output::new(path.clone(), kind)
                }
            });
        }
        let mut command = CommandStage::builder()
            .name(b.name.clone())
            .steps(b.steps.clone())
            .inputs(b.inputs.clone())
            .tools(b.tools.clone())
            .outputs(outputs)
            .checks(b.checks.clone())
            .cleanup(b.cleanup.clone())
            .build()
            .map_err(|e| at.error(stage.span(), &stage_path, e))?;
        command.kind = b.kind;
        if let Some(t) = &b.timeout {
            command.timeout = duration(at, stage.span(), &format!("{stage_path}.timeout"), t)?;
        }
        commands.push(Arc::new(command));
    }
    Ok(commands)
}

/// The image stage of `[services.<name>.package]`.
fn image_stage(
    at: &Located<'_>,
    name: &str,
    path: &str,
    port: Option<u16>,
    package: &Spanned<PackageToml>,
) -> Result<ImageStage> {
    let field = format!("{path}.package");
    let p = package.get_ref();
    let base = p
        .base
        .as_ref()
        .map(|b| {
            b.parse()
                .map_err(|e| at.error(package.span(), &format!("{field}.base"), e))
        })
        .transpose()?;
    let mut builder = ImageStage::builder()
        .image_name(name)
        .layout(IMAGE_LAYOUT)
        .files(
            p.files
                .iter()
                .map(|(at, local)| (at.clone(), local.clone()))
                .collect(),
        )
        .entrypoint(p.entrypoint.clone())
        .cmd(p.cmd.clone())
        .env(p.env.clone())
        .ports(port.into_iter().collect())
        .labels(p.labels.clone())
        .build();
    builder.base = base;
    builder.workdir = p.workdir.clone();
    builder.user = p.user.clone();
    builder.check().map_err(|e| match e {
        // The stage names its fields `build.package.<field>`; here they are the table's.
        deploykit_core::Error::InvalidSpec { field: f, reason } => {
            let last = f.strip_prefix("build.package.").unwrap_or(&f);
            at.error(package.span(), &format!("{field}.{last}"), reason)
        }
        other => at.error(package.span(), &field, other),
    })?;
    Ok(builder)
}
