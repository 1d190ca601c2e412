//! `[services.<name>]`: what a service runs, its settings and health checks, and its
//! `[[services.<name>.build]]` stages.
//!
//! A service must have something to run, checked when the file loads rather than at deploy
//! time: a `command` (the program and its arguments, for the local environment), an `image`
//! (a container image repository, for Kubernetes), or build stages with `outputs` (the
//! artifact the build produces is what gets deployed, as `deploykit deploy` decides).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use super::health::{self, HealthToml};
use super::{Located, ResourcesToml, duration};
use crate::build::{CommandStage, Pipeline};
use deploykit_core::Result;
use deploykit_core::build::BuildStage;
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
    #[serde(default)]
    build: Vec<Spanned<BuildStageToml>>,
}

/// `[[services.<name>.build]]`: one build stage of commands.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BuildStageToml {
    name: String,
    steps: Vec<Vec<String>>,
    #[serde(default)]
    outputs: Vec<PathBuf>,
    #[serde(default)]
    cleanup: Vec<PathBuf>,
    timeout: Option<String>,
}

/// A service as the file describes it, validated.
pub(crate) struct LoadedService {
    /// The service.
    pub(crate) spec: ServiceSpec,
    /// Its build stages, in order.
    pub(crate) build: Vec<CommandStage>,
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
    spec.validate()
        .map_err(|e| at.error(span.clone(), &path, e))?;
    let build = stages(at, &span, &path, &s.build)?;
    let image = s
        .image
        .as_ref()
        .map(|image| repository(at, &path, image))
        .transpose()?;
    if spec.command.is_empty() && image.is_none() && !build.iter().any(|b| !b.outputs.is_empty()) {
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

/// The build stages, checked as a pipeline.
fn stages(
    at: &Located<'_>,
    span: &Range<usize>,
    path: &str,
    build: &[Spanned<BuildStageToml>],
) -> Result<Vec<CommandStage>> {
    let mut commands = Vec::new();
    for (i, stage) in build.iter().enumerate() {
        let stage_path = format!("{path}.build[{i}]");
        let b = stage.get_ref();
        let mut command = CommandStage::builder()
            .name(b.name.clone())
            .steps(b.steps.clone())
            .outputs(b.outputs.clone())
            .cleanup(b.cleanup.clone())
            .build()
            .map_err(|e| at.error(stage.span(), &stage_path, e))?;
        if let Some(t) = &b.timeout {
            command.timeout = duration(at, stage.span(), &format!("{stage_path}.timeout"), t)?;
        }
        commands.push(command);
    }
    let pipeline = commands
        .iter()
        .map(|c| Arc::new(c.clone()) as Arc<dyn BuildStage>)
        .collect();
    Pipeline::new(pipeline).map_err(|e| at.error(span.clone(), path, e))?;
    Ok(commands)
}
